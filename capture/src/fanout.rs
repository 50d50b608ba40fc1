//! `PACKET_FANOUT` by source address only: a classic BPF fanout program
//! ([`crate::ring::FanoutMode::Cbpf`]) that sends every packet of one source to the
//! same ring, whatever its ports, destination or protocol, so one worker sees a
//! knocker's whole sequence.
//!
//! The program returns a keyed hash of the source address; the kernel takes it modulo
//! the number of rings in the group (`fanout_demux_bpf()`), and the ring of that index
//! (rings are numbered in the order they joined) gets the packet. The key is a secret
//! per process ([`random_key`]), so an attacker cannot pick sources that land on the
//! worker of someone else's address: for IPv6 every word of the address is mixed into
//! the hash in turn (a plain XOR of the four words would let anyone holding a /64
//! choose interface identifiers that hash exactly like a victim's address, key or not).
//!
//! What the program sees: `packet_rcv_fanout()` runs it on the skb as it came up the
//! receive path, without pushing the MAC header back as `packet_rcv()` does for socket
//! filters, so its offsets count from the network header ([`Hook::Fanout`]); the outer
//! VLAN tag is already out of the frame (in the skb's metadata), and with a second tag
//! still in the frame, that header starts at its TCI, `skb->protocol` being its TPID.
//! The program reads the protocol from ancillary data and the address with plain
//! data-relative loads, which read through page fragments on any kernel
//! (`skb_copy_bits`). `SKF_NET_OFF`/`SKF_LL_OFF` loads go through
//! `bpf_internal_load_pointer_neg_helper()`, which on older kernels reaches only the
//! skb's linear part, and how much of a frame is linear is up to the driver.
//!
//! The same program serves a [`Link::Ip`](crate::Link::Ip) ring (tun, WireGuard, PPP):
//! there the network header is where the packet starts, and the device sets
//! `skb->protocol` to `ETH_P_IP`/`ETH_P_IPV6` (tun with `IFF_NO_PI` from the version
//! nibble), so the program reads the same protocol and the same offsets.
//!
//! Frames the host sends pass through the group too (the fanout hook does not honour a
//! member's `PACKET_IGNORE_OUTGOING`; only `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` on the
//! group keeps them out), with offsets counting from the MAC header: they hash on other
//! bytes, which is harmless as long as the members' filters drop them.

use std::io::Read;
use std::net::IpAddr;

use crate::filter::Target::{Next, To};
use crate::filter::{op, skf, Asm, Hook, Program, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6};

/// Multipliers of the mixing rounds (MurmurHash3's `c1`, `c2` and `fmix32` constants).
const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const F1: u32 = 0x85eb_ca6b;
const F2: u32 = 0xc2b2_ae35;

/// The fanout program that hashes the source address with `key`: the value of
/// [`source_hash`]`(key, source)` for IPv4 and IPv6 packets, untagged or with one VLAN
/// tag in the frame; 0 for anything else (ARP, a third tag, a frame too short to hold
/// the source address).
pub fn source_hash_program(key: u32) -> Program {
    let mut a = Asm::default();
    let (vlan, fin, zero) = (a.label(), a.label(), a.label());
    // [v4, v6] x [untagged, tagged]
    let paths = [[a.label(), a.label()], [a.label(), a.label()]];
    // A = skb->protocol: the ethertype, or the TPID of a tag still in the frame.
    a.stmt(op::LD | op::H | op::ABS, skf::AD_OFF + skf::AD_PROTOCOL);
    a.jump(op::JEQ, ETH_P_IP, To(paths[0][0]), Next);
    a.jump(op::JEQ, ETH_P_IPV6, To(paths[1][0]), Next);
    a.jump(op::JEQ, ETH_P_8021Q, To(vlan), Next);
    a.jump(op::JEQ, ETH_P_8021AD, To(vlan), To(zero));
    // A tag in the frame: its TCI, then the ethertype, then the IP header.
    a.bind(vlan);
    a.stmt(op::LD | op::H | op::ABS, 2);
    a.jump(op::JEQ, ETH_P_IP, To(paths[0][1]), Next);
    a.jump(op::JEQ, ETH_P_IPV6, To(paths[1][1]), To(zero));
    for (tagged, base) in [0u32, 4].into_iter().enumerate() {
        // IPv4: the source address is at 12.
        a.bind(paths[0][tagged]);
        a.stmt(op::LD | op::W | op::ABS, base + 12);
        round(&mut a, key, true);
        a.ja(fin);
        // IPv6: the source address is the four words from 8.
        a.bind(paths[1][tagged]);
        for w in 0..4 {
            a.stmt(op::LD | op::W | op::ABS, base + 8 + 4 * w);
            round(&mut a, key, w == 0);
            if w < 3 {
                a.stmt(op::ST, 0);
            }
        }
        a.ja(fin);
    }
    a.bind(fin);
    for (shift, mul) in [(16, Some(F1)), (13, Some(F2)), (16, None)] {
        xor_shift(&mut a, shift);
        if let Some(m) = mul {
            a.stmt(op::ALU | op::MUL | op::K, m);
        }
    }
    a.stmt(op::RET | op::A, 0);
    a.bind(zero);
    a.stmt(op::RET | op::K, 0);
    Program::from_insns(a.assemble()).expect("the source hash program is well formed")
}

/// One mixing round: A = word; h = M[0] (or `key` for the first word);
/// A = ((A ^ h) * C1 ^ ... >> 15) * C2.
fn round(a: &mut Asm, key: u32, first: bool) {
    if first {
        a.stmt(op::ALU | op::XOR | op::K, key);
    } else {
        a.stmt(op::LDX | op::MEM, 0);
        a.stmt(op::ALU | op::XOR | op::X, 0);
    }
    a.stmt(op::ALU | op::MUL | op::K, C1);
    xor_shift(a, 15);
    a.stmt(op::ALU | op::MUL | op::K, C2);
}

/// A ^= A >> shift (through X).
fn xor_shift(a: &mut Asm, shift: u32) {
    a.stmt(op::MISC | op::TAX, 0);
    a.stmt(op::ALU | op::RSH | op::K, shift);
    a.stmt(op::ALU | op::XOR | op::X, 0);
}

/// What [`source_hash_program`]`(key)` returns for a packet from `src`: the address's
/// 32-bit words (one for IPv4, four for IPv6), each mixed into the running hash
/// (starting from `key`) by `h = ((w ^ h) * C1 ^ >> 15) * C2`, then MurmurHash3's
/// finaliser.
pub fn source_hash(key: u32, src: IpAddr) -> u32 {
    let round = |h: u32, w: u32| {
        let a = (w ^ h).wrapping_mul(C1);
        (a ^ (a >> 15)).wrapping_mul(C2)
    };
    let h = match src {
        IpAddr::V4(a) => round(key, u32::from(a)),
        IpAddr::V6(a) => {
            let o = a.octets();
            o.chunks_exact(4).fold(key, |h, w| round(h, u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        }
    };
    let mut a = h;
    a ^= a >> 16;
    a = a.wrapping_mul(F1);
    a ^= a >> 13;
    a = a.wrapping_mul(F2);
    a ^ (a >> 16)
}

/// Which member of a fanout group of `members` rings running `program` gets `frame`, a
/// received frame as a ring captures it (from the MAC header, an outer VLAN tag
/// already taken out); members count from 0 in the order they joined. 0 when the group
/// is empty. Runs the program in the userspace interpreter ([`Hook::Fanout`]).
pub fn member_for(program: &Program, frame: &[u8], members: u32) -> u32 {
    match members {
        0 => 0,
        n => program.run_as(frame, Hook::Fanout) % n,
    }
}

/// A fresh random key from `/dev/urandom`, for one process's fanout group.
pub fn random_key() -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::craft::{write_frame, FrameSpec, MAX_FRAME_LEN};
    use crate::frame::{tcp_flags, Proto};
    use crate::link::Link;

    const KEY: u32 = 0x5eed_1234;

    /// A small xorshift generator: deterministic test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn v4(&mut self) -> IpAddr {
            IpAddr::V4(Ipv4Addr::from(self.next() as u32))
        }

        fn v6(&mut self) -> IpAddr {
            IpAddr::V6(Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next())))
        }
    }

    fn frame(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, dport: u16) -> Vec<u8> {
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src,
            dst,
            proto,
            src_port: sport,
            dst_port: dport,
            tcp_flags: tcp_flags::SYN,
        };
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = write_frame(&spec, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn dst_for(src: IpAddr) -> IpAddr {
        match src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        }
    }

    /// `frame` with one 802.1Q tag inserted after the MAC addresses.
    fn tagged(frame: &[u8], tpid: u16) -> Vec<u8> {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&0x0064u16.to_be_bytes());
        f.extend_from_slice(&frame[12..]);
        f
    }

    #[test]
    fn program_computes_the_source_hash() {
        let p = source_hash_program(KEY);
        assert!(p.len() < 128, "{} instructions", p.len());
        assert_eq!(Program::from_insns(p.insns().to_vec()).unwrap(), p);
        let mut rng = Rng(1);
        for i in 0..2000 {
            let src = if i % 2 == 0 { rng.v4() } else { rng.v6() };
            let f = frame(src, dst_for(src), Proto::Udp, 1, 2);
            let want = source_hash(KEY, src);
            assert_eq!(p.run_as(&f, Hook::Fanout), want, "{src}");
            // One tag still in the frame (802.1Q or 802.1ad TPID): the same.
            assert_eq!(p.run_as(&tagged(&f, 0x8100), Hook::Fanout), want, "{src} tagged");
            assert_eq!(p.run_as(&tagged(&f, 0x88a8), Hook::Fanout), want, "{src} tagged");
        }
    }

    /// On a raw-IP link (tun: no link-layer header, skb->protocol from the version
    /// nibble) the program, unchanged, hashes the same source the same way.
    #[test]
    fn raw_ip_links_hash_the_same() {
        let p = source_hash_program(KEY);
        let mut rng = Rng(6);
        for i in 0..1000 {
            let src = if i % 2 == 0 { rng.v4() } else { rng.v6() };
            let f = frame(src, dst_for(src), if i % 3 == 0 { Proto::Tcp } else { Proto::Udp }, 1, 2);
            let packet = &f[14..];
            assert_eq!(p.run_on(packet, Link::Ip, Hook::Fanout), source_hash(KEY, src), "{src}");
        }
        // Cut before the end of the source address: member 0, as for Ethernet.
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7));
        let f = frame(src, dst_for(src), Proto::Tcp, 1, 2);
        assert_eq!(p.run_on(&f[14..14 + 15], Link::Ip, Hook::Fanout), 0);
        assert_eq!(p.run_on(&f[14..14 + 16], Link::Ip, Hook::Fanout), source_hash(KEY, src));
    }

    #[test]
    fn only_the_source_counts() {
        let p = source_hash_program(KEY);
        let mut rng = Rng(2);
        for i in 0..500 {
            let src = if i % 2 == 0 { rng.v4() } else { rng.v6() };
            let want = source_hash(KEY, src);
            let other_dst = match src {
                IpAddr::V4(_) => rng.v4(),
                IpAddr::V6(_) => rng.v6(),
            };
            for dst in [dst_for(src), other_dst] {
                for proto in [Proto::Tcp, Proto::Udp] {
                    let (sp, dp) = (rng.next() as u16, rng.next() as u16);
                    assert_eq!(p.run_as(&frame(src, dst, proto, sp, dp), Hook::Fanout), want);
                }
            }
            // Not even TCP or UDP (ICMP, protocol 1): the same, the header is not read.
            let mut icmp = frame(src, dst_for(src), Proto::Udp, 0, 0);
            let proto_at = if src.is_ipv4() { 14 + 9 } else { 14 + 6 };
            icmp[proto_at] = 1;
            assert_eq!(p.run_as(&icmp, Hook::Fanout), want);
        }
    }

    #[test]
    fn everything_else_goes_to_member_zero() {
        let p = source_hash_program(KEY);
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7));
        let f = frame(src, dst_for(src), Proto::Tcp, 1, 2);
        // ARP, LLDP.
        for ethertype in [0x0806u16, 0x88cc] {
            let mut g = f.clone();
            g[12..14].copy_from_slice(&ethertype.to_be_bytes());
            assert_eq!(p.run_as(&g, Hook::Fanout), 0);
        }
        // Two tags in the frame; a tag around something that is not IP.
        assert_eq!(p.run_as(&tagged(&tagged(&f, 0x8100), 0x88a8), Hook::Fanout), 0);
        let mut g = tagged(&f, 0x8100);
        g[16..18].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(p.run_as(&g, Hook::Fanout), 0);
        // Cut before the end of the source address.
        assert_eq!(p.run_as(&f[..14 + 15], Hook::Fanout), 0);
        assert_ne!(p.run_as(&f[..14 + 16], Hook::Fanout), 0);
        let src6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));
        let f6 = frame(src6, dst_for(src6), Proto::Udp, 1, 2);
        assert_eq!(p.run_as(&f6[..14 + 23], Hook::Fanout), 0);
        assert_eq!(p.run_as(&f6[..14 + 24], Hook::Fanout), source_hash(KEY, src6));
        assert_eq!(member_for(&p, &f6, 0), 0);
    }

    /// How many of `n` members each of the sources maps to.
    fn spread(p: &Program, srcs: &[IpAddr], n: u32) -> Vec<usize> {
        let mut counts = vec![0usize; n as usize];
        for &src in srcs {
            counts[member_for(p, &frame(src, dst_for(src), Proto::Tcp, 1, 2), n) as usize] += 1;
        }
        counts
    }

    #[test]
    fn sources_spread_evenly() {
        let p = source_hash_program(KEY);
        let mut rng = Rng(3);
        let v4: Vec<IpAddr> = (0..10_000).map(|_| rng.v4()).collect();
        let v6: Vec<IpAddr> = (0..10_000).map(|_| rng.v6()).collect();
        // Sources that differ only in their last bits, as from one client network.
        let net4: Vec<IpAddr> = (0..10_000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))).collect();
        let net6: Vec<IpAddr> =
            (0..10_000u128).map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i))).collect();
        for (name, srcs) in [("v4", &v4), ("v6", &v6), ("198.18/16", &net4), ("2001:db8::/96", &net6)] {
            for n in [2u32, 3, 4] {
                let counts = spread(&p, srcs, n);
                let even = srcs.len() as f64 / f64::from(n);
                println!("{name} over {n}: {counts:?}");
                for &c in &counts {
                    assert!((c as f64 - even).abs() <= 0.2 * even, "{name} over {n}: {counts:?}");
                }
            }
        }
    }

    #[test]
    fn the_key_changes_the_mapping() {
        let mut rng = Rng(4);
        let srcs: Vec<IpAddr> = (0..1000).map(|i| if i % 2 == 0 { rng.v4() } else { rng.v6() }).collect();
        let (a, b) = (source_hash_program(KEY), source_hash_program(KEY ^ 1));
        assert_ne!(a, b);
        let mut moved = 0;
        for &src in &srcs {
            let f = frame(src, dst_for(src), Proto::Udp, 1, 2);
            if member_for(&a, &f, 2) != member_for(&b, &f, 2) {
                moved += 1;
            }
        }
        // A new key is a new, unrelated mapping: about half the sources change member.
        assert!((400..=600).contains(&moved), "{moved} of 1000 moved");
        // And the hash values are all different.
        let distinct: HashSet<u32> =
            srcs.iter().map(|&s| source_hash(KEY, s) ^ source_hash(KEY ^ 1, s)).collect();
        assert!(!distinct.contains(&0));
    }

    /// A /64 holder cannot make its addresses hash like a victim's without the key:
    /// addresses whose words XOR to the victim's (which would collide under an XOR fold)
    /// land anywhere.
    #[test]
    fn xor_fold_collisions_do_not_collide() {
        let victim = Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1);
        let fold = |a: Ipv6Addr| {
            a.octets().chunks_exact(4).fold(0u32, |h, w| h ^ u32::from_be_bytes(w.try_into().unwrap()))
        };
        let mut rng = Rng(5);
        let mut same = 0;
        for _ in 0..1000 {
            // 2001:db8:bbbb:0:w2:w3 with w2 ^ w3 chosen so the fold equals the victim's.
            let w2 = rng.next() as u32;
            let prefix: u128 = 0x2001_0db8_bbbb_0000 << 64;
            let w3 = fold(victim) ^ fold(Ipv6Addr::from(prefix)) ^ w2;
            let a = Ipv6Addr::from(prefix | u128::from(w2) << 32 | u128::from(w3));
            assert_eq!(fold(a), fold(victim));
            if source_hash(KEY, IpAddr::V6(a)) % 4 == source_hash(KEY, IpAddr::V6(victim)) % 4 {
                same += 1;
            }
        }
        assert!((150..=350).contains(&same), "{same} of 1000 on the victim's member");
    }

    #[test]
    fn random_keys_differ() {
        let keys: HashSet<u32> = (0..8).map(|_| random_key().unwrap()).collect();
        assert!(keys.len() > 1);
    }
}
