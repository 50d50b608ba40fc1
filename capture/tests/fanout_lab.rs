//! `PACKET_FANOUT` by source address ([`sesame_capture::fanout`]) against a real
//! kernel, in a throw-away lab (needs root).
//!
//! Rings on the server's veth join fanout groups with classic BPF programs; the client
//! sends crafted frames from a TX ring (and a few from its own IP stack). As in
//! tx_lab.rs, each test runs in the server namespace (the receiver), which runs it a
//! third time in the client namespace (the sender); see `common/mod.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::time::Duration;

use common::{arg, mac_of, poll_settled, Env, LabTests};
use sesame_capture::craft::{write_frame, FrameSpec};
use sesame_capture::fanout::{member_for, random_key, source_hash, source_hash_program};
use sesame_capture::filter::{op, skf, FilterSpec, Insn, Program};
use sesame_capture::frame::tcp_flags;
use sesame_capture::ring::{Fanout, FanoutMode, Ring, RingConfig};
use sesame_capture::tx::{TxConfig, TxRing};
use sesame_capture::{parse_frame, Link, Proto};

const LAB: LabTests = LabTests { tag: "fo", server_timeout: Duration::from_secs(60) };

// ---- the test -----------------------------------------------------------------------

/// Rings in the source-hash group.
const MEMBERS: u32 = 3;
/// Crafted sources per member and address family.
const PER_MEMBER: usize = 8;
/// Frames per crafted source.
const PER_SOURCE: usize = 8;
/// Frames from the client's own addresses: 4 crafted and 4 from its IP stack, each family.
const OWN: usize = 16;

/// The crafted sources: IPv4 in 198.19.0.0/16, IPv6 in 2001:db8:beef::/48, taken in
/// order until each member of the group has `PER_MEMBER` of each family under `key`
/// (so every ring is sure to get some).
fn sources(key: u32) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut count = [[0usize; MEMBERS as usize]; 2];
    for i in 1u32.. {
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, (i >> 16) as u16, i as u16));
        for (family, src) in [v4, v6].into_iter().enumerate() {
            let m = (source_hash(key, src) % MEMBERS) as usize;
            if count[family][m] < PER_MEMBER {
                count[family][m] += 1;
                out.push(src);
            }
        }
        if count.iter().flatten().all(|&c| c == PER_MEMBER) {
            return out;
        }
    }
    unreachable!()
}

/// 802.1Q/802.1ad tags to insert after the MAC addresses: (TPID, TCI), outermost first.
type Tags = &'static [(u16, u16)];

/// The `PER_SOURCE` frames of source number `n`: TCP with different flags and UDP, to
/// the listed ports from varying source ports; one with a single 802.1Q tag (which the
/// receiving kernel takes out of the frame) and two double-tagged (whose inner tag
/// stays in the frame).
fn frames_of(env: &Env, src_mac: [u8; 6], n: usize, src: IpAddr) -> Vec<(FrameSpec, Tags)> {
    let dst = env.server_addr(src);
    let f = |proto, dst_port, flags, k: u16| FrameSpec {
        src_mac,
        dst_mac: env.server_mac,
        src,
        dst,
        proto,
        src_port: 20_000 + 1000 * k + n as u16,
        dst_port,
        tcp_flags: flags,
    };
    vec![
        (f(Proto::Tcp, 7000, tcp_flags::SYN, 0), &[]),
        (f(Proto::Tcp, 8000, tcp_flags::SYN, 1), &[]),
        (f(Proto::Udp, 9000, 0, 2), &[]),
        (f(Proto::Tcp, 7000, tcp_flags::ACK | tcp_flags::PSH, 3), &[]),
        (f(Proto::Udp, 9000, 0, 4), &[(0x8100, 100)]),
        (f(Proto::Udp, 9000, 0, 5), &[(0x88a8, 200), (0x8100, 300)]),
        (f(Proto::Tcp, 8000, tcp_flags::SYN, 6), &[(0x8100, 5), (0x8100, 6)]),
        (f(Proto::Udp, 9000, 0, 7), &[]),
    ]
}

/// Writes `spec` with `tags` into `buf`; returns the length.
fn write_tagged(spec: &FrameSpec, tags: Tags, buf: &mut [u8]) -> usize {
    let n = write_frame(spec, buf).unwrap();
    let t = 4 * tags.len();
    buf.copy_within(12..n, 12 + t);
    for (i, (tpid, tci)) in tags.iter().enumerate() {
        buf[12 + 4 * i..14 + 4 * i].copy_from_slice(&tpid.to_be_bytes());
        buf[14 + 4 * i..16 + 4 * i].copy_from_slice(&tci.to_be_bytes());
    }
    n + t
}

/// `ld [k]; ret a` with a byte load: returns the byte at `k` the program sees.
fn byte_probe(k: u32) -> Program {
    Program::from_insns(vec![Insn::stmt(op::LD | op::B | op::ABS, k), Insn::stmt(op::RET | op::A, 0)])
        .unwrap()
}

#[test]
fn fanout_by_source_address() {
    LAB.run("fanout_by_source_address", fanout_server, Some(fanout_client));
}

fn fanout_client(env: &Env) {
    let key: u32 = arg("KEY").parse().unwrap();
    let src_mac = mac_of(&env.client_if);
    let srcs = sources(key);
    let per_source: Vec<Vec<(FrameSpec, Tags)>> =
        srcs.iter().enumerate().map(|(n, &src)| frames_of(env, src_mac, n, src)).collect();
    // Round robin over the sources, so one source's frames are spread out in time.
    let mut frames: Vec<(FrameSpec, Tags)> =
        (0..PER_SOURCE).flat_map(|k| per_source.iter().map(move |f| f[k])).collect();
    // From the client's own addresses, untagged.
    for (i, src) in [IpAddr::V4(env.client_v4), IpAddr::V6(env.client_v6)].into_iter().enumerate() {
        for k in 0..4u16 {
            frames.push((env.udp_knock(src_mac, src, 50_000 + 10 * i as u16 + k), &[]));
        }
    }
    let mut ring =
        TxRing::open(&env.client_if, &TxConfig { frame_count: 256, ..TxConfig::default() }).unwrap();
    let mut i = 0;
    while i < frames.len() {
        let queued = ring.queue(frames.len() - i, |buf| {
            let (spec, tags) = &frames[i];
            i += 1;
            write_tagged(spec, tags, buf)
        });
        ring.flush().unwrap();
        if queued == 0 {
            assert!(ring.wait_writable(Duration::from_secs(2)).unwrap());
        }
    }
    assert!(ring.drain(Duration::from_secs(5)).unwrap());
    // And the same number from the IP stack, as any client would send them.
    for dst in [IpAddr::V4(env.server_v4), IpAddr::V6(env.server_v6)] {
        let bind: IpAddr = if dst.is_ipv4() { env.client_v4.into() } else { env.client_v6.into() };
        let s = UdpSocket::bind((bind, 0)).unwrap();
        for _ in 0..4 {
            s.send_to(b"k", (dst, 9000)).unwrap();
        }
    }
    let st = ring.stats();
    println!("@@ sent={} sources={}", st.sent, srcs.len());
    assert_eq!(st.sent, frames.len() as u64);
}

/// One frame as a ring of a group got it.
struct Got {
    ring: usize,
    data: Vec<u8>,
    src: IpAddr,
    src_port: u16,
}

/// Rings on the server's veth with the knock filter, joined to fanout group `id` with
/// `program`, in order.
fn group(env: &Env, id: u16, program: &Program, members: u32) -> Vec<Ring> {
    let spec = FilterSpec {
        v4_dst: vec![env.server_v4],
        v6_dst: vec![env.server_v6],
        tcp_ports: vec![7000, 8000],
        udp_ports: vec![9000],
    };
    let filter = Program::knock(&spec, Link::Ethernet).unwrap();
    let cfg = RingConfig {
        block_size: 1 << 16,
        block_count: 8,
        fanout: Some(Fanout { group_id: id, mode: FanoutMode::Cbpf(program.clone()) }),
        ..RingConfig::default()
    };
    (0..members).map(|_| Ring::open(&env.server_if, &cfg, &filter).unwrap()).collect()
}

fn fanout_server(env: &Env) {
    let key = random_key().unwrap();
    println!("key {key:#010x}");
    let program = source_hash_program(key);
    let srcs = sources(key);
    let expected = srcs.len() * PER_SOURCE + OWN;
    // The group under test, and two probes: what offset 0 is to a fanout program (the
    // IP header's first byte: the network header), and whether a MAC-relative load
    // reaches the IP header of a frame that came from a TX ring.
    let net_probe = byte_probe(0);
    let ll_probe = byte_probe(skf::LL_OFF + 14);
    let mut groups = [
        group(env, 0x5e5, &program, MEMBERS),
        group(env, 0x5e6, &net_probe, 2),
        group(env, 0x5e7, &ll_probe, 2),
    ];

    let mut client = env.start_client(&[("KEY", key.to_string())]);
    let mut got: Vec<Vec<Got>> = vec![Vec::new(), Vec::new(), Vec::new()];
    poll_settled(Duration::from_secs(20), Duration::from_millis(300), |_| {
        for (g, rings) in groups.iter_mut().enumerate() {
            for (r, ring) in rings.iter_mut().enumerate() {
                if let Some(block) = ring.next_block(Duration::from_millis(2)).unwrap() {
                    for f in block.packets() {
                        let k = parse_frame(f.data).expect("a knock");
                        got[g].push(Got { ring: r, data: f.data.to_vec(), src: k.src, src_port: k.src_port });
                    }
                }
            }
        }
        got.iter().all(|g| g.len() >= expected) || !client.is_running()
    });
    let results = client.finish();
    assert_eq!(results["sources"], srcs.len().to_string());
    for (g, rings) in groups.iter().enumerate() {
        let drops: u64 = rings.iter().map(|r| r.stats().unwrap().drops).sum();
        println!("group {g}: {} frames, {drops} dropped", got[g].len());
        assert_eq!(drops, 0);
        assert_eq!(got[g].len(), expected, "group {g}");
    }

    // Every source's frames all went to one ring, the one the interpreter predicts from
    // the captured bytes, which is the source hash modulo the group size: the kernel
    // numbers members in the order they joined.
    let mut rings_of: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    let mut frames_of: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut inner_tagged = 0;
    for f in &got[0] {
        assert_eq!(f.ring as u32, member_for(&program, &f.data, MEMBERS), "{} {:02x?}", f.src, &f.data[..18]);
        assert_eq!(f.ring as u32, source_hash(key, f.src) % MEMBERS);
        rings_of.entry(f.src).or_default().insert(f.ring);
        *frames_of.entry(f.src).or_default() += 1;
        inner_tagged += usize::from(f.data[12..14] == [0x81, 0x00]);
    }
    assert!(rings_of.values().all(|r| r.len() == 1), "{rings_of:?}");
    for src in &srcs {
        assert_eq!(frames_of.get(src), Some(&PER_SOURCE), "{src}");
    }
    assert_eq!(rings_of.len(), srcs.len() + 2, "the crafted sources and the client's two addresses");
    // The inner tag of the double-tagged frames stayed in the frame (the outer one went
    // to the metadata), so the program's tagged path was taken in the kernel too.
    assert_eq!(inner_tagged, 2 * srcs.len());
    let mut per_ring = vec![0usize; MEMBERS as usize];
    for r in rings_of.values() {
        per_ring[*r.first().unwrap()] += 1;
    }
    println!("sources per ring: {per_ring:?}");
    assert!(per_ring.iter().all(|&n| n >= 2 * PER_MEMBER), "{per_ring:?}");

    // Offset 0 of a fanout program is the network header: 0x45 for IPv4 (odd: ring 1),
    // 0x60 for IPv6 (even: ring 0), the TCI for an inner tag. The interpreter's
    // Hook::Fanout view agrees frame by frame.
    for f in &got[1] {
        assert_eq!(f.ring as u32, member_for(&net_probe, &f.data, 2), "{:02x?}", &f.data[..18]);
        if f.data[12..14] == [0x08, 0x00] {
            assert_eq!(f.ring, 1);
        }
    }

    // MAC-relative loads, for the record: whether `ld [SKF_LL_OFF + 14]` reaches the IP
    // header depends on the kernel (older ones only load from the skb's linear part) and
    // on where the sender's frames put it. Reported, not asserted (on 6.18 every IPv4
    // frame, from the TX ring or the IP stack, went to ring 1: 0x45 is odd).
    let mut ll: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for f in &got[2] {
        if f.data[12..14] == [0x08, 0x00] {
            // The client's IP stack picks ephemeral ports; crafted own frames use 50000..
            let stack = f.src == IpAddr::V4(env.client_v4) && !(50_000..50_020).contains(&f.src_port);
            let from = if stack { "ip stack" } else { "tx ring" };
            *ll.entry((from, f.ring)).or_default() += 1;
        }
    }
    println!("IPv4 frames by sender and ring of `ld [SKF_LL_OFF + 14]`: {ll:?}");
}
