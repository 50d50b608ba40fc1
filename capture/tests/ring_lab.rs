//! The TPACKET_V3 ring against a real kernel, in a throw-away lab (needs root).
//!
//! Each test runs in the lab's server namespace (see `common/mod.rs`), where it opens
//! rings on the server's veth, and sends from the client namespace with python3.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{mac_text, poll_settled, Env, LabTests};
use sesame_capture::filter::{op, FilterSpec, Insn, Program};
use sesame_capture::iface;
use sesame_capture::ring::{Fanout, FanoutMode, Ring, RingConfig};
use sesame_capture::{parse_frame, Knock, Link, Proto};
use sesame_lab::ChildGuard;

const LAB: LabTests = LabTests { tag: "rl", server_timeout: Duration::from_secs(40) };

/// Runs `body` inside the server namespace of a fresh lab.
fn in_server_ns(test: &str, body: fn(&Env)) {
    LAB.run(test, body, None);
}

/// What these tests do in the client namespace.
impl Env {
    /// Runs a python3 program in the client namespace; fails the test if it fails.
    fn client_py(&self, program: &str) -> Output {
        let out = self.client_cmd("python3").args(["-c", program]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "client python failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn client_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns, program]);
        c
    }

    fn client_sh(&self, script: &str) {
        let out = self.client_cmd("/bin/sh").args(["-c", script]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One captured frame, copied out of the ring.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Captured {
    data: Vec<u8>,
    vlan_tci: Option<u16>,
}

impl Captured {
    fn knock(&self) -> Option<Knock> {
        parse_frame(&self.data).ok()
    }
}

/// What a ring read delivered.
#[derive(Debug, Default)]
struct Collected {
    frames: Vec<Captured>,
    blocks: usize,
}

impl Collected {
    fn knocks(&self) -> Vec<Knock> {
        self.frames.iter().filter_map(Captured::knock).collect()
    }

    fn ports(&self) -> Vec<(Proto, u16)> {
        let mut p: Vec<_> = self.knocks().iter().map(|k| (k.proto, k.dst_port)).collect();
        p.sort();
        p
    }
}

/// Reads blocks until `enough` holds (then `settle` more, for stragglers) or `timeout`.
fn collect(ring: &mut Ring, timeout: Duration, enough: impl Fn(&Collected) -> bool) -> Collected {
    let mut got = Collected::default();
    poll_settled(timeout, Duration::from_millis(150), |left| {
        let Some(block) = ring.next_block(left).unwrap() else { return false };
        got.blocks += 1;
        let n = block.len();
        let before = got.frames.len();
        got.frames.extend(block.packets().map(|f| Captured { data: f.data.to_vec(), vlan_tci: f.vlan_tci }));
        assert_eq!(got.frames.len() - before, n, "walk yields num_pkts frames");
        drop(block);
        enough(&got)
    });
    got
}

/// Empties the ring of whatever is in it.
fn drain(ring: &mut Ring) {
    collect(ring, Duration::from_millis(100), |_| true);
}

/// python3 helpers: `tcp(dst, port)` (a connect, refused: one SYN), `udp(dst, port)`,
/// and `raw(ifname, frame)`, which sends a whole Ethernet frame from an AF_PACKET socket.
/// A `dst` of `fe80::..%ifname` is scoped to that interface.
const PY_PRELUDE: &str = r#"import socket, struct
def addr(dst, port):
    if ':' not in dst:
        return socket.AF_INET, (dst, port)
    host, _, scope = dst.partition('%')
    return socket.AF_INET6, (host, port, 0, socket.if_nametoindex(scope) if scope else 0)
def tcp(dst, port):
    fam, a = addr(dst, port)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try: s.connect(a)
    except OSError: pass
    s.close()
def udp(dst, port):
    fam, a = addr(dst, port)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.sendto(b'knock', a)
    s.close()
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def udp4(src, dst, sport, dport, payload=b'knock'):
    u = struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(u), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + u
def raw(ifname, frame):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    s.send(frame)
    s.close()
"#;

/// A python3 program that sends TCP SYNs and UDP datagrams to `dst`.
fn sender(dst: &str, sends: &[(&str, u16)]) -> String {
    let mut s = String::from(PY_PRELUDE);
    for (proto, port) in sends {
        s.push_str(&format!("{proto}('{dst}', {port})\n"));
    }
    s
}

fn spec(env: &Env, tcp: &[u16], udp: &[u16]) -> FilterSpec {
    let mut s = FilterSpec { tcp_ports: tcp.to_vec(), udp_ports: udp.to_vec(), ..FilterSpec::default() };
    for a in iface::addresses(&env.server_if).unwrap() {
        match a {
            IpAddr::V4(a) => s.v4_dst.push(a),
            IpAddr::V6(a) => s.v6_dst.push(a),
        }
    }
    s
}

fn knock_ring(env: &Env, cfg: &RingConfig, tcp: &[u16], udp: &[u16]) -> Ring {
    let program = Program::knock(&spec(env, tcp, udp), Link::Ethernet).unwrap();
    Ring::open(&env.server_if, cfg, &program).unwrap()
}

#[test]
fn interface_queries() {
    in_server_ns("interface_queries", |env| {
        assert!(iface::exists(&env.server_if));
        assert!(!iface::exists(&env.client_if), "the client's end is in the other namespace");
        assert!(iface::index(&env.server_if).unwrap() > 1);
        let addrs = iface::addresses(&env.server_if).unwrap();
        assert!(addrs.contains(&IpAddr::V4(env.server_v4)), "{addrs:?}");
        assert!(addrs.contains(&IpAddr::V6(env.server_v6)), "{addrs:?}");
        assert!(!addrs.contains(&IpAddr::V4(env.client_v4)), "{addrs:?}");
        // The kernel adds the link-local address when the link comes up.
        let ll = addrs.iter().any(|a| matches!(a, IpAddr::V6(v) if v.segments()[0] == 0xfe80));
        assert!(ll, "no IPv6 link-local address in {addrs:?}");
    });
}

#[test]
fn captures_exactly_the_listed_knocks() {
    in_server_ns("captures_exactly_the_listed_knocks", |env| {
        let mut ring = knock_ring(env, &RingConfig::default(), &[7000, 8000], &[9000]);
        assert_eq!(ring.ifname(), env.server_if);
        let dst = env.server_v4.to_string();
        env.client_py(&sender(&dst, &[("tcp", 7000), ("udp", 9000), ("tcp", 5555), ("udp", 7000)]));
        let got = collect(&mut ring, Duration::from_secs(3), |c| c.frames.len() >= 2);
        let knocks = got.knocks();
        println!("{} frames in {} blocks: {knocks:?}", got.frames.len(), got.blocks);
        assert_eq!(got.frames.len(), 2, "only the two listed knocks pass: {:?}", got.frames);
        assert_eq!(knocks.len(), 2, "both parse as knocks");
        assert_eq!(got.ports(), vec![(Proto::Tcp, 7000), (Proto::Udp, 9000)]);
        for k in &knocks {
            assert_eq!(k.dst, IpAddr::V4(env.server_v4));
            assert_eq!(k.src, IpAddr::V4(env.client_v4));
        }
        let syn = knocks.iter().find(|k| k.proto == Proto::Tcp).unwrap();
        assert_eq!(syn.tcp_flags, sesame_capture::frame::tcp_flags::SYN);
        let st = ring.stats().unwrap();
        assert_eq!((st.packets, st.drops), (2, 0), "{st:?}");
        // Counters are cumulative although the kernel resets its own on every read.
        assert_eq!(ring.stats().unwrap(), st);
    });
}

#[test]
fn many_datagrams_cross_blocks_without_drops() {
    in_server_ns("many_datagrams_cross_blocks_without_drops", |env| {
        const N: usize = 2000;
        // Blocks hand over when full (about 170 of these frames) or after 50 ms: with
        // the default 1 ms, each block would hold a dozen frames and the four would be
        // full whenever the reader is off the CPU for 4 ms, as on a loaded machine.
        let cfg = RingConfig {
            block_size: 4096 * 4,
            block_count: 4,
            block_timeout_ms: 50,
            ..RingConfig::default()
        };
        let mut ring = knock_ring(env, &cfg, &[], &[9000]);
        // Paced a little (2 ms every 25) so a debug-build reader keeps up on 2 cores.
        let program = format!(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for i in range({N}):\n    s.sendto(b'k%05d' % i, ('{}', 9000))\n    if i % 25 == 24: time.sleep(0.002)\n",
            env.server_v4
        );
        let mut sender =
            ChildGuard::spawn(env.client_cmd("python3").args(["-c", &program]).stdin(Stdio::null())).unwrap();
        let got = collect(&mut ring, Duration::from_secs(10), |c| c.frames.len() >= N);
        let st = sender.wait_timeout(Duration::from_secs(5)).unwrap().expect("sender finished");
        assert!(st.success());
        let stats = ring.stats().unwrap();
        println!("{} frames in {} blocks; {stats:?}", got.frames.len(), got.blocks);
        assert_eq!(stats.drops, 0, "{stats:?}");
        assert_eq!(got.frames.len(), N);
        assert!(got.frames.iter().all(|f| f.knock().map(|k| k.dst_port) == Some(9000)));
        // Every datagram once, in order.
        let seq: Vec<usize> = got
            .frames
            .iter()
            .map(|f| std::str::from_utf8(&f.data[14 + 20 + 8 + 1..14 + 20 + 8 + 6]).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seq, (0..N).collect::<Vec<_>>());
        // Four blocks cannot hold 2000 frames: blocks went back to the kernel and came round again.
        assert!(got.blocks > 2 * cfg.block_count as usize, "only {} blocks", got.blocks);
        assert_eq!(stats.packets, N as u64);
    });
}

/// A reader that falls behind: the kernel freezes the ring, counts what it drops, and
/// carries on once the blocks come back.
#[test]
fn overflow_is_counted_and_the_ring_recovers() {
    in_server_ns("overflow_is_counted_and_the_ring_recovers", |env| {
        const N: usize = 2000;
        let cfg = RingConfig { block_size: 4096 * 4, block_count: 4, ..RingConfig::default() };
        let mut ring = knock_ring(env, &cfg, &[], &[9000]);
        // Nobody reads while all of these are sent.
        env.client_py(&format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for i in range({N}): s.sendto(b'flood', ('{}', 9000))\n",
            env.server_v4
        ));
        let got = collect(&mut ring, Duration::from_millis(500), |_| false);
        let st = ring.stats().unwrap();
        println!("{} frames in {} blocks; {st:?}", got.frames.len(), got.blocks);
        assert!(st.drops > 0 && st.freeze_q_cnt > 0, "{st:?}");
        assert!(st.packets <= N as u64);
        assert_eq!(got.frames.len() as u64, st.packets - st.drops, "{st:?}");
        assert!(got.blocks <= cfg.block_count as usize + 1, "at most the ring's worth was kept");

        env.client_py(&sender(&env.server_v4.to_string(), &[("udp", 9000); 10]));
        let got = collect(&mut ring, Duration::from_secs(3), |c| c.frames.len() >= 10);
        assert_eq!(got.frames.len(), 10);
        assert_eq!(ring.stats().unwrap().drops, st.drops, "no new drops");
    });
}

#[test]
fn ipv6_knocks_arrive() {
    in_server_ns("ipv6_knocks_arrive", |env| {
        let mut ring = knock_ring(env, &RingConfig::default(), &[7000], &[9000]);
        let ll = iface::addresses(&env.server_if)
            .unwrap()
            .into_iter()
            .find_map(|a| match a {
                IpAddr::V6(v) if v.segments()[0] == 0xfe80 => Some(v),
                _ => None,
            })
            .expect("server link-local address");
        // A static neighbour entry and a link-local source without DAD, so the client
        // need not wait for duplicate address detection on either side.
        env.client_sh(&format!(
            "ip neigh replace {ll} lladdr {mac} dev {c} && ip addr add fe80::beef/64 dev {c} nodad",
            mac = mac_text(&env.server_mac),
            c = env.client_if
        ));
        let global = env.server_v6.to_string();
        let scoped = format!("{ll}%{}", env.client_if);
        env.client_py(&format!(
            "{}{}",
            sender(&global, &[("udp", 9000), ("udp", 9001), ("tcp", 7000)]),
            sender(&scoped, &[("udp", 9000)]).lines().last().unwrap()
        ));
        let got = collect(&mut ring, Duration::from_secs(3), |c| c.frames.len() >= 3);
        let knocks = got.knocks();
        println!("{knocks:?}");
        assert_eq!(got.frames.len(), 3, "{:?}", got.frames);
        assert_eq!(got.ports(), vec![(Proto::Tcp, 7000), (Proto::Udp, 9000), (Proto::Udp, 9000)]);
        let dsts: Vec<IpAddr> = knocks.iter().filter(|k| k.proto == Proto::Udp).map(|k| k.dst).collect();
        assert!(dsts.contains(&IpAddr::V6(env.server_v6)), "{dsts:?}");
        assert!(dsts.contains(&IpAddr::V6(ll)), "{dsts:?}");
    });
}

#[test]
fn set_filter_changes_what_is_captured() {
    in_server_ns("set_filter_changes_what_is_captured", |env| {
        let mut ring = knock_ring(env, &RingConfig::default(), &[7000], &[]);
        let dst = env.server_v4.to_string();
        let sends = sender(&dst, &[("tcp", 7000), ("udp", 9000)]);
        env.client_py(&sends);
        let got = collect(&mut ring, Duration::from_secs(3), |c| !c.frames.is_empty());
        assert_eq!(got.ports(), vec![(Proto::Tcp, 7000)]);

        ring.set_filter(&Program::knock(&spec(env, &[], &[9000]), Link::Ethernet).unwrap()).unwrap();
        drain(&mut ring);
        env.client_py(&sends);
        let got = collect(&mut ring, Duration::from_secs(3), |c| !c.frames.is_empty());
        assert_eq!(got.ports(), vec![(Proto::Udp, 9000)]);

        ring.set_filter(&Program::reject_all()).unwrap();
        drain(&mut ring);
        env.client_py(&sends);
        let got = collect(&mut ring, Duration::from_millis(500), |_| false);
        assert!(got.frames.is_empty(), "{:?}", got.frames);
    });
}

/// The kernel's verdicts on real traffic equal the userspace interpreter's.
#[test]
fn kernel_and_interpreter_agree() {
    in_server_ns("kernel_and_interpreter_agree", |env| {
        let program = Program::knock(&spec(env, &[7000, 8000], &[9000]), Link::Ethernet).unwrap();
        let mut all = Ring::open(&env.server_if, &RingConfig::default(), &Program::accept_all()).unwrap();
        let mut knock = Ring::open(&env.server_if, &RingConfig::default(), &program).unwrap();
        let v4 = env.server_v4.to_string();
        let v6 = env.server_v6.to_string();
        let mut py = sender(&v4, &[("tcp", 7000), ("tcp", 8000), ("udp", 9000), ("udp", 8000), ("tcp", 1)]);
        py.push_str(&sender(&v6, &[("tcp", 8000), ("udp", 9000), ("udp", 7000), ("tcp", 9000)]));
        // A datagram larger than the MTU: its second fragment must not pass.
        py.push_str(&format!(
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x' * 3000, ('{v4}', 9000))\n"
        ));
        env.client_py(&py);
        env.client_sh(&format!("ping -c 1 -W 1 {v4} >/dev/null 2>&1 || true"));
        std::thread::sleep(Duration::from_millis(100));
        let everything = collect(&mut all, Duration::from_millis(300), |_| true);
        let passed = collect(&mut knock, Duration::from_millis(300), |_| true);
        let count = |frames: Vec<&Captured>| {
            let mut m: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
            for f in frames {
                *m.entry(f.data.clone()).or_default() += 1;
            }
            m
        };
        let expected = count(everything.frames.iter().filter(|f| program.run(&f.data) != 0).collect());
        let actual = count(passed.frames.iter().collect());
        println!(
            "{} frames seen, {} passed the kernel filter, {} the interpreter",
            everything.frames.len(),
            passed.frames.len(),
            expected.values().sum::<usize>()
        );
        assert_eq!(actual, expected);
        // PACKET_IGNORE_OUTGOING: the server's own replies (RSTs, ICMP) are not captured.
        assert!(
            everything.frames.iter().all(|f| f.data[6..12] != env.server_mac),
            "an outgoing frame was captured"
        );
        // The 5 listed v4 knocks minus udp 8000 and tcp 1, the first fragment of the big
        // datagram, and v6 tcp 8000 + udp 9000.
        assert_eq!(passed.frames.len(), 3 + 1 + 2, "{:?}", passed.knocks());
        assert!(everything.frames.len() > passed.frames.len());
    });
}

/// Frames that arrive tagged: the receive path moves the outer 802.1Q/802.1ad tag into
/// metadata (`TP_STATUS_VLAN_VALID`) before packet sockets see the frame, even with no
/// VLAN device configured; a second (inner) tag stays in the frame.
#[test]
fn vlan_tags() {
    in_server_ns("vlan_tags", |env| {
        let mut ring = knock_ring(env, &RingConfig::default(), &[], &[9000]);
        // Hand-made tagged frames from an AF_PACKET socket on the client's veth
        // (this kernel has no 8021q module for a VLAN device).
        let mac = mac_text(&env.server_mac).replace(':', "");
        let (src, dst) = (env.client_v4, env.server_v4);
        let program = format!(
            "{PY_PRELUDE}\
             eth = bytes.fromhex('{mac}') + bytes.fromhex('020000000002')\n\
             def tag(tpid, vid): return struct.pack('!HH', tpid, vid)\n\
             ip = lambda port: b'\\x08\\x00' + udp4('{src}', '{dst}', 40000, port)\n\
             raw('{c}', eth + tag(0x8100, 100) + ip(9000))\n\
             raw('{c}', eth + tag(0x8100, 101) + ip(9001))\n\
             raw('{c}', eth + tag(0x88a8, 200) + tag(0x8100, 300) + ip(9000))\n\
             raw('{c}', eth + tag(0x88a8, 400) + ip(9000))\n",
            c = env.client_if
        );
        env.client_py(&program);
        let got = collect(&mut ring, Duration::from_secs(3), |c| c.frames.len() >= 3);
        for f in &got.frames {
            println!("tci {:?}, ethertype {:02x?}, {:?}", f.vlan_tci, &f.data[12..14], f.knock());
        }
        let mut seen: Vec<_> =
            got.frames.iter().map(|f| (f.vlan_tci.map(|t| t & 0xfff), f.data[12..14].to_vec())).collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![(Some(100), vec![0x08, 0x00]), (Some(200), vec![0x81, 0x00]), (Some(400), vec![0x08, 0x00]),]
        );
        for f in &got.frames {
            let k = f.knock().expect("parses");
            assert_eq!((k.dst, k.dst_port), (IpAddr::V4(dst), 9000));
        }
    });
}

#[test]
fn fanout_groups_share_the_packets() {
    in_server_ns("fanout_groups_share_the_packets", |env| {
        let program = Program::knock(&spec(env, &[], &[9000]), Link::Ethernet).unwrap();
        let dst = env.server_v4.to_string();
        let ten: Vec<(&str, u16)> = vec![("udp", 9000); 10];
        // Two rings join group `group_id`, ten datagrams come; how many each ring got.
        let share = |group_id: u16, mode: FanoutMode| {
            let cfg = RingConfig { fanout: Some(Fanout { group_id, mode }), ..RingConfig::default() };
            let mut a = Ring::open(&env.server_if, &cfg, &program).unwrap();
            let mut b = Ring::open(&env.server_if, &cfg, &program).unwrap();
            env.client_py(&sender(&dst, &ten));
            std::thread::sleep(Duration::from_millis(50));
            let (ga, gb) = (
                collect(&mut a, Duration::from_millis(300), |_| true),
                collect(&mut b, Duration::from_millis(300), |_| true),
            );
            (ga.frames.len(), gb.frames.len())
        };

        // Round robin: both members get some, nothing is lost or doubled.
        let (a, b) = share(7, FanoutMode::Lb);
        println!("lb: {a} + {b}");
        assert_eq!(a + b, 10);
        assert!(a > 0 && b > 0);

        // A classic BPF fanout program returning 1 sends everything to the second member.
        let one = Program::from_insns(vec![Insn::stmt(op::RET | op::K, 1)]).unwrap();
        let (a, b) = share(8, FanoutMode::Cbpf(one));
        println!("cbpf: {a} + {b}");
        assert_eq!((a, b), (0, 10));
    });
}

#[test]
fn big_filters_load_and_errors_name_the_interface() {
    in_server_ns("big_filters_load_and_errors_name_the_interface", |env| {
        // A 1000-port program (with long-jump trampolines) is accepted by the kernel's checker.
        let tcp: Vec<u16> = (0..1000).map(|i| 10_000 + 3 * i).collect();
        let mut ring = knock_ring(env, &RingConfig::default(), &tcp, &[9000]);
        env.client_py(&sender(&env.server_v4.to_string(), &[("tcp", 10_000 + 3 * 999), ("tcp", 10_001)]));
        let got = collect(&mut ring, Duration::from_secs(3), |c| !c.frames.is_empty());
        assert_eq!(got.ports(), vec![(Proto::Tcp, 10_000 + 3 * 999)]);

        let err = Ring::open("nosuchif0", &RingConfig::default(), &Program::accept_all()).unwrap_err();
        assert!(matches!(err, sesame_capture::CaptureError::NoSuchInterface(_)), "{err}");
        // No time out: a zero timeout only looks.
        let start = Instant::now();
        assert!(ring.next_block(Duration::ZERO).unwrap().is_none());
        assert!(ring.next_block(Duration::from_millis(30)).unwrap().is_none());
        assert!(start.elapsed() >= Duration::from_millis(30));
    });
}
