//! The TPACKET_V2 TX ring and the frame crafter against real kernels, in a throw-away
//! lab (needs root).
//!
//! These tests need a packet socket on each side: each test runs again in the lab's
//! server namespace, to receive, and a third time in the client namespace, to send (see
//! `common/mod.rs`). The sender prints its results as `@@ key=value ...` lines for the
//! receiver.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{mac_of, poll_settled, Env, LabTests};
use sesame_capture::craft::{write_frame, FrameSpec};
use sesame_capture::filter::{FilterSpec, Program};
use sesame_capture::frame::tcp_flags;
use sesame_capture::ring::{Ring, RingConfig};
use sesame_capture::tx::{TxConfig, TxRing};
use sesame_capture::{parse_frame, CaptureError, Knock, Link, Proto};

const LAB: LabTests = LabTests { tag: "tx", server_timeout: Duration::from_secs(60) };

// ---- helpers of these tests --------------------------------------------------------

/// Reads frames from `ring` into `state` with `each` until `done` holds, then `settle`
/// more for stragglers (or `timeout` in all).
fn read_ring<S>(
    ring: &mut Ring,
    timeout: Duration,
    settle: Duration,
    state: &mut S,
    mut each: impl FnMut(&mut S, &[u8]),
    mut done: impl FnMut(&S) -> bool,
) {
    poll_settled(timeout, settle, |left| {
        if let Some(block) = ring.next_block(left.min(Duration::from_millis(50))).unwrap() {
            for f in block.packets() {
                each(state, f.data);
            }
        }
        done(state)
    });
}

/// `/proc/net/snmp` and `/proc/net/snmp6` of this namespace, as `Udp.NoPorts`,
/// `Udp6NoPorts`, ... to values.
fn snmp() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let v4 = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let lines: Vec<&str> = v4.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                m.insert(format!("{proto}.{n}"), v);
            }
        }
    }
    for line in std::fs::read_to_string("/proc/net/snmp6").unwrap().lines() {
        if let Some((n, v)) = line.split_once(char::is_whitespace) {
            if let Ok(v) = v.trim().parse() {
                m.insert(n.to_owned(), v);
            }
        }
    }
    m
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

fn link_stat(ifname: &str, stat: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{stat}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A ring on the server's veth passing knocks to the server's addresses.
fn server_ring(env: &Env, cfg: &RingConfig, tcp: &[u16], udp: &[u16]) -> Ring {
    let spec = FilterSpec {
        v4_dst: vec![env.server_v4],
        v6_dst: vec![env.server_v6],
        tcp_ports: tcp.to_vec(),
        udp_ports: udp.to_vec(),
    };
    Ring::open(&env.server_if, cfg, &Program::knock(&spec, Link::Ethernet).unwrap()).unwrap()
}

/// Queues and sends `frames` (a frame and whether to spoil its L4 checksum), waiting
/// for room whenever the ring is full, then drains the ring. Returns the time it took.
fn send_all(ring: &mut TxRing, frames: &[(FrameSpec, bool)]) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    while i < frames.len() {
        let queued = ring.queue(frames.len() - i, |buf| {
            let (spec, spoil) = &frames[i];
            let n = write_frame(spec, buf).expect("slot holds a frame");
            if *spoil {
                // Flip the checksum's bits: every other byte stays right.
                let at = if spec.proto == Proto::Udp { n - 3 } else { n - 4 };
                buf[at] ^= 0xff;
            }
            i += 1;
            n
        });
        ring.flush().unwrap();
        if queued == 0 {
            assert!(ring.wait_writable(Duration::from_secs(2)).unwrap(), "no slot came back in 2 s");
        }
    }
    assert!(ring.drain(Duration::from_secs(5)).unwrap(), "ring not drained: {:?}", ring.stats());
    start.elapsed()
}

fn report(ring: &TxRing, took: Duration) {
    let st = ring.stats();
    println!(
        "@@ queued={} sent={} wrong_format={} rejected={} micros={}",
        st.queued,
        st.sent,
        st.wrong_format,
        st.rejected,
        took.as_micros()
    );
}

fn num(results: &BTreeMap<String, String>, k: &str) -> u64 {
    results.get(k).unwrap_or_else(|| panic!("client did not report {k}")).parse().unwrap()
}

// ---- every frame arrives, and the receiving IP stack accepts its checksums --------------

const UDP4_FRAMES: u16 = 20_000;
const EACH_OTHER: u16 = 500;
const SPOILED: u16 = 7;

/// The frames of `every_frame_arrives_with_good_checksums`: 20,000 UDP/IPv4, 500 each
/// of TCP SYN/IPv4, UDP/IPv6 and TCP SYN/IPv6, and 7 UDP/IPv4 with a spoiled checksum;
/// all from the client's addresses to the server's, every source port different.
fn plan(env: &Env, src_mac: [u8; 6]) -> Vec<(FrameSpec, bool)> {
    let v4 = (IpAddr::V4(env.client_v4), IpAddr::V4(env.server_v4));
    let v6 = (IpAddr::V6(env.client_v6), IpAddr::V6(env.server_v6));
    let spec = |(src, dst): (IpAddr, IpAddr), proto, src_port| FrameSpec {
        src_mac,
        dst_mac: env.server_mac,
        src,
        dst,
        proto,
        src_port,
        dst_port: if proto == Proto::Udp { 9000 } else { 7000 },
        tcp_flags: tcp_flags::SYN,
    };
    let mut v = Vec::new();
    for i in 0..UDP4_FRAMES {
        v.push((spec(v4, Proto::Udp, 10_000 + i), false));
    }
    for i in 0..EACH_OTHER {
        v.push((spec(v4, Proto::Tcp, 40_000 + i), false));
        v.push((spec(v6, Proto::Udp, 41_000 + i), false));
        v.push((spec(v6, Proto::Tcp, 42_000 + i), false));
    }
    for i in 0..SPOILED {
        v.push((spec(v4, Proto::Udp, 60_000 + i), true));
    }
    v
}

#[test]
fn every_frame_arrives_with_good_checksums() {
    LAB.run("every_frame_arrives_with_good_checksums", every_frame_server, Some(every_frame_client));
}

fn every_frame_client(env: &Env) {
    let frames = plan(env, mac_of(&env.client_if));
    let mut ring = TxRing::open(&env.client_if, &TxConfig::default()).unwrap();
    println!("{} slots, frames up to {} bytes", ring.capacity(), ring.max_frame_len());
    let took = send_all(&mut ring, &frames);
    report(&ring, took);
    let st = ring.stats();
    assert_eq!(
        (st.queued, st.sent, st.wrong_format, st.rejected),
        (frames.len() as u64, frames.len() as u64, 0, 0)
    );
    assert_eq!(ring.in_flight(), 0);
}

fn every_frame_server(env: &Env) {
    let expected: Vec<Knock> = plan(env, [0; 6]).iter().map(|(s, _)| s.knock()).collect();
    // Blocks hand over when full (about 8,000 of these frames each) or after 100 ms,
    // not every millisecond: with the default 1 ms, the ~180 frames/ms burst fills all
    // 8 blocks whenever this reader is off the CPU for 8 ms, and a loaded machine drops
    // frames. What is tested here is the frames, not the ring's pace. The last block
    // comes at most 100 ms after the client is done, well inside the 1 s settle.
    let cfg = RingConfig { block_timeout_ms: 100, ..RingConfig::default() };
    let mut ring = server_ring(env, &cfg, &[7000], &[9000]);
    let before = snmp();
    let mut client = env.start_client(&[]);
    let mut state: (Vec<Knock>, usize) = (Vec::new(), 0);
    read_ring(
        &mut ring,
        Duration::from_secs(30),
        Duration::from_secs(1),
        &mut state,
        |(got, unparsed), f| match parse_frame(f) {
            Ok(k) => got.push(k),
            Err(_) => *unparsed += 1,
        },
        |(got, unparsed)| got.len() + unparsed >= expected.len() || !client.is_running(),
    );
    let (got, unparsed) = state;
    let results = client.finish();
    std::thread::sleep(Duration::from_millis(100));
    let after = snmp();
    let stats = ring.stats().unwrap();
    println!("ring: {} knocks, {unparsed} unparsed, {stats:?}", got.len());
    for k in
        ["Udp.NoPorts", "Udp.InErrors", "Udp.InCsumErrors", "Tcp.InSegs", "Tcp.InCsumErrors", "Tcp.OutRsts"]
    {
        println!("{k}: +{}", delta(&before, &after, k));
    }
    for k in ["Udp6NoPorts", "Udp6InErrors", "Udp6InCsumErrors"] {
        println!("{k}: +{}", delta(&before, &after, k));
    }

    // Every frame arrived once, in the order sent, and parses back to what was crafted.
    assert_eq!(stats.drops, 0, "{stats:?}");
    assert_eq!(unparsed, 0);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "frames differ from what was sent");
    assert_eq!(num(&results, "sent"), expected.len() as u64);

    // The IP stack verified every checksum: the good datagrams reached the port lookup
    // (no socket: NoPorts), the spoiled ones were counted as checksum errors, and every
    // SYN was answered with a reset.
    let (udp4, other, spoiled) = (u64::from(UDP4_FRAMES), u64::from(EACH_OTHER), u64::from(SPOILED));
    assert_eq!(delta(&before, &after, "Udp.NoPorts"), udp4);
    assert_eq!(delta(&before, &after, "Udp.InCsumErrors"), spoiled);
    assert_eq!(delta(&before, &after, "Udp6NoPorts"), other);
    assert_eq!(delta(&before, &after, "Udp6InCsumErrors"), 0);
    // The TCP MIB counts IPv4 and IPv6 together.
    assert_eq!(delta(&before, &after, "Tcp.InCsumErrors"), 0);
    assert!(delta(&before, &after, "Tcp.InSegs") >= 2 * other);
    assert!(delta(&before, &after, "Tcp.OutRsts") >= 2 * other);
}

// ---- flat out -----------------------------------------------------------------------

#[test]
fn flat_out_rate() {
    LAB.run("flat_out_rate", flat_out_server, Some(flat_out_client));
}

/// Sends for `secs` as fast as the ring goes, 64 distinct source ports round robin.
fn flat_out(ring: &mut TxRing, base: FrameSpec, secs: f64) -> (u64, Duration) {
    let before = ring.sent();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut i = 0u16;
    while Instant::now() < end {
        let queued = ring.queue(usize::MAX, |buf| {
            i = i.wrapping_add(1);
            write_frame(&FrameSpec { src_port: 10_000 + (i & 63), ..base }, buf).unwrap()
        });
        ring.flush().unwrap();
        if queued == 0 {
            ring.wait_writable(Duration::from_millis(100)).unwrap();
        }
    }
    assert!(ring.drain(Duration::from_secs(5)).unwrap());
    (ring.sent() - before, start.elapsed())
}

fn flat_out_client(env: &Env) {
    let base = env.udp_knock(mac_of(&env.client_if), IpAddr::V4(env.client_v4), 10_000);
    let tx_dropped = link_stat(&env.client_if, "tx_dropped");
    let mut ring = TxRing::open(&env.client_if, &TxConfig::default()).unwrap();
    // To the server: the receiving side (veth, IP stack up to the port lookup) runs in
    // the sender's softirq, on the sender's CPU, so it is part of the cost.
    let (n, took) = flat_out(&mut ring, base, 1.0);
    let rate = n as f64 / took.as_secs_f64();
    println!("to the server: {n} frames in {took:?}: {:.0} frames/s ({:.2} Mpps)", rate, rate / 1e6);
    println!("@@ to_server={n} to_server_micros={}", took.as_micros());
    // To a MAC nobody has: the server's veth drops them before the IP layer.
    let (m, took2) = flat_out(&mut ring, FrameSpec { dst_mac: [0x02, 0, 0, 0, 0, 0x01], ..base }, 0.5);
    let rate2 = m as f64 / took2.as_secs_f64();
    println!("to nobody: {m} frames in {took2:?}: {:.0} frames/s ({:.2} Mpps)", rate2, rate2 / 1e6);
    println!("@@ to_nobody={m}");
    println!("@@ tx_dropped={}", link_stat(&env.client_if, "tx_dropped") - tx_dropped);
    report(&ring, took + took2);
    let st = ring.stats();
    assert_eq!(st.sent, st.queued);
    assert_eq!((st.wrong_format, st.rejected), (0, 0));
}

fn flat_out_server(env: &Env) {
    let (rx0, drop0) = (link_stat(&env.server_if, "rx_packets"), link_stat(&env.server_if, "rx_dropped"));
    let before = snmp();
    let results = env.start_client(&[]).finish();
    std::thread::sleep(Duration::from_millis(100));
    let after = snmp();
    let rx = link_stat(&env.server_if, "rx_packets") - rx0;
    let dropped = link_stat(&env.server_if, "rx_dropped") - drop0;
    let (to_server, to_nobody) = (num(&results, "to_server"), num(&results, "to_nobody"));
    let tx_dropped = num(&results, "tx_dropped");
    let no_ports = delta(&before, &after, "Udp.NoPorts");
    println!(
        "sent {to_server} + {to_nobody}, client veth tx_dropped +{tx_dropped}; \
         server veth rx_packets +{rx}, rx_dropped +{dropped}; Udp.NoPorts +{no_ports}"
    );
    // No speed assertion; only that what was sent arrived. (rx_packets also counts the
    // client kernel's own few frames, ARP and neighbour discovery answers.)
    assert!(to_server > 0 && to_nobody > 0);
    assert!(rx + dropped + tx_dropped >= to_server + to_nobody);
    assert_eq!(no_ports + dropped + tx_dropped, to_server, "datagrams to the server lost");
}

// ---- refused frames, short frames, a link that goes down -----------------------------

#[test]
fn refused_frames_are_dropped_and_the_rest_sent() {
    LAB.run("refused_frames_are_dropped_and_the_rest_sent", refused_server, Some(refused_client));
}

fn refused_client(env: &Env) {
    let base = env.udp_knock(mac_of(&env.client_if), IpAddr::V4(env.client_v4), 0);
    let frame = |port: u16| FrameSpec { src_port: port, ..base };
    let sh = |script: &str| {
        let st = Command::new("/bin/sh").args(["-c", script]).status().unwrap();
        assert!(st.success(), "`{script}` failed");
    };
    let cfg = TxConfig { frame_count: 64, ..TxConfig::default() };
    let mut ring = TxRing::open(&env.client_if, &cfg).unwrap();
    assert_eq!(ring.max_frame_len(), 1500 + 14);

    // The MTU shrinks behind the ring's back: a 1400-byte frame, fine when queued, is
    // refused by the kernel (TP_STATUS_WRONG_FORMAT) with ten frames queued behind it.
    sh(&format!("ip link set dev {} mtu 1280", env.client_if));
    let mut port = 1u16;
    let queued = ring.queue(21, |buf| {
        let n = write_frame(&frame(port), buf).unwrap();
        port += 1;
        if port == 12 {
            // The 11th frame: padded far past its IP length (the receiver would trim it).
            buf[n..1400].fill(0);
            return 1400;
        }
        n
    });
    assert_eq!(queued, 21);
    ring.flush().unwrap();
    assert!(ring.drain(Duration::from_secs(5)).unwrap());
    let st = ring.stats();
    println!("after the refused frame: {st:?}");
    assert_eq!((st.queued, st.sent, st.wrong_format), (21, 20, 1));
    // The limit follows the new MTU.
    assert_eq!(ring.max_frame_len(), 1280 + 14);

    // Lengths shorter than an Ethernet header are refused before queueing; 0 ends.
    let mut lens = [5usize, 0].into_iter();
    let mut port = 22u16;
    let queued = ring.queue(10, |buf| match lens.next() {
        Some(n) => n,
        None => {
            let n = write_frame(&frame(port), buf).unwrap();
            port += 1;
            n
        }
    });
    assert_eq!(queued, 0, "0 ends the batch");
    assert_eq!(ring.stats().rejected, 1);
    let queued = ring.queue(3, |buf| {
        let n = write_frame(&frame(port), buf).unwrap();
        port += 1;
        n
    });
    assert_eq!(queued, 3);
    ring.flush().unwrap();
    assert!(ring.drain(Duration::from_secs(5)).unwrap());

    // Link down: the kick fails and says why; the frames stay queued and go out once the
    // link is back.
    sh(&format!("ip link set dev {} down", env.client_if));
    let queued = ring.queue(2, |buf| {
        let n = write_frame(&frame(port), buf).unwrap();
        port += 1;
        n
    });
    assert_eq!(queued, 2);
    let err = ring.flush().unwrap_err();
    println!("flush with the link down: {err}");
    assert!(matches!(&err, CaptureError::Sys { op: "send(PACKET_TX_RING)", .. }), "{err:?}");
    assert_eq!(err.io_error().and_then(|e| e.raw_os_error()), Some(libc::ENETDOWN));
    assert_eq!(ring.in_flight(), 2);
    sh(&format!("ip link set dev {} up", env.client_if));
    assert!(ring.drain(Duration::from_secs(5)).unwrap());
    report(&ring, Duration::ZERO);
    let st = ring.stats();
    assert_eq!((st.queued, st.sent, st.wrong_format, st.rejected), (26, 25, 1, 1));
}

fn refused_server(env: &Env) {
    let mut ring = server_ring(env, &RingConfig::default(), &[], &[9000]);
    let mut client = env.start_client(&[]);
    let mut ports = Vec::new();
    read_ring(
        &mut ring,
        Duration::from_secs(30),
        Duration::from_millis(300),
        &mut ports,
        |ports, f| ports.push(parse_frame(f).map(|k| k.src_port)),
        |_| !client.is_running(),
    );
    let results = client.finish();
    println!("{ports:?}");
    assert_eq!(num(&results, "sent"), 25);
    // All but the refused 11th, in the order queued.
    let expected: Vec<_> = (1..=10).chain(12..=26).map(Ok).collect();
    assert_eq!(ports, expected);
}
