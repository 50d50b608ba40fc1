//! Building knock frames: Ethernet + IPv4/IPv6 + TCP/UDP, with correct checksums,
//! written into a caller's buffer (a TX ring slot, a stack array) without allocating.
//!
//! The frames are what `knock` puts on the wire, minus the TCP options: a TCP segment
//! with a bare 20-byte header and the given flags, or a UDP datagram with one zero byte
//! of payload. IPv4 headers carry DF, identification 0 (RFC 6864 allows it for atomic
//! datagrams) and TTL 64; IPv6 headers hop limit 64 and flow label 0. No Ethernet
//! padding is added: a NIC pads short frames itself, a veth carries them as they are.

use std::net::IpAddr;

use crate::frame::{Knock, Proto};
use crate::wire::tcp::FLAGS_MASK;

/// Ethernet header length (no VLAN tag).
const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
/// UDP header plus the one zero byte of payload `knock` sends.
const UDP_LEN: usize = 8 + 1;

/// The longest frame [`write_frame`] writes (Ethernet + IPv6 + TCP): a buffer this
/// long holds any of them.
pub const MAX_FRAME_LEN: usize = ETH_LEN + IPV6_LEN + TCP_LEN;

/// TTL / hop limit of crafted packets.
const TTL: u8 = 64;
/// TCP window of crafted segments (what Linux advertises in a SYN on Ethernet).
const TCP_WINDOW: u16 = 64240;
/// Sequence number of crafted segments.
const TCP_SEQ: u32 = 1;

/// Everything that varies between crafted frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Source and destination must be of the same family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (see [`crate::frame::tcp_flags`]); ignored for UDP.
    pub tcp_flags: u8,
}

impl FrameSpec {
    /// The frame that carries `knock` between two MAC addresses.
    pub fn from_knock(knock: &Knock, src_mac: [u8; 6], dst_mac: [u8; 6]) -> FrameSpec {
        FrameSpec {
            src_mac,
            dst_mac,
            src: knock.src,
            dst: knock.dst,
            proto: knock.proto,
            src_port: knock.src_port,
            dst_port: knock.dst_port,
            tcp_flags: knock.tcp_flags,
        }
    }

    /// What [`crate::parse_frame`] makes of the written frame: the flags as the parser
    /// reports them (FIN..URG; ECE and CWR are written but not reported), 0 for UDP.
    pub fn knock(&self) -> Knock {
        Knock {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            src_port: self.src_port,
            dst_port: self.dst_port,
            tcp_flags: if self.proto == Proto::Tcp { self.tcp_flags & FLAGS_MASK } else { 0 },
        }
    }
}

/// Length of the frame [`write_frame`] writes for `spec`: 43 (IPv4/UDP), 54 (IPv4/TCP),
/// 63 (IPv6/UDP) or 74 (IPv6/TCP) bytes; 0 when source and destination families
/// differ (there is no such frame).
pub fn frame_len(spec: &FrameSpec) -> usize {
    let ip = match (spec.src, spec.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => IPV4_LEN,
        (IpAddr::V6(_), IpAddr::V6(_)) => IPV6_LEN,
        _ => return 0,
    };
    ETH_LEN + ip + l4_len(spec.proto)
}

fn l4_len(proto: Proto) -> usize {
    match proto {
        Proto::Tcp => TCP_LEN,
        Proto::Udp => UDP_LEN,
    }
}

/// Writes the frame for `spec` at the start of `buf`, with correct IPv4 header and
/// TCP/UDP checksums, and returns its length ([`frame_len`]). Bytes of `buf` past the
/// frame are left alone. `None` (and `buf` untouched) if `buf` is too short or the
/// source and destination families differ. Never panics, never allocates.
pub fn write_frame(spec: &FrameSpec, buf: &mut [u8]) -> Option<usize> {
    let len = frame_len(spec);
    if len == 0 {
        return None;
    }
    let frame = buf.get_mut(..len)?;
    let l4_len = l4_len(spec.proto);
    frame[0..6].copy_from_slice(&spec.dst_mac);
    frame[6..12].copy_from_slice(&spec.src_mac);
    let (eth, rest) = frame.split_at_mut(ETH_LEN);
    match (spec.src, spec.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut rest[..IPV4_LEN];
            ip[0] = 0x45; // version 4, IHL 5
            ip[1] = 0; // DSCP/ECN
            ip[2..4].copy_from_slice(&((IPV4_LEN + l4_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]); // identification
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
            ip[8] = TTL;
            ip[9] = spec.proto.number();
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = finish(sum_words(0, ip));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            eth[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut rest[..IPV6_LEN];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes()); // version 6, TC 0, flow 0
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[6] = spec.proto.number();
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
        }
        // frame_len() returned 0 above.
        _ => return None,
    };
    let pseudo = pseudo_header_sum(spec.src, spec.dst, spec.proto, l4_len);
    let ip_len = len - ETH_LEN - l4_len;
    let l4 = &mut rest[ip_len..];
    l4[0..2].copy_from_slice(&spec.src_port.to_be_bytes());
    l4[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
    match spec.proto {
        Proto::Tcp => {
            l4[4..8].copy_from_slice(&TCP_SEQ.to_be_bytes());
            l4[8..12].copy_from_slice(&[0; 4]); // acknowledgment number
            l4[12] = (TCP_LEN as u8 / 4) << 4; // data offset, no options
            l4[13] = spec.tcp_flags;
            l4[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
            l4[16..20].copy_from_slice(&[0; 4]); // checksum (for now), urgent pointer
            let sum = finish(sum_words(pseudo, l4));
            l4[16..18].copy_from_slice(&sum.to_be_bytes());
        }
        Proto::Udp => {
            l4[4..6].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
            // Checksum (for now) and the payload byte.
            l4[6..9].copy_from_slice(&[0; 3]);
            // A computed 0 is sent as 0xffff: 0 means "no checksum" (and is invalid in IPv6).
            let sum = match finish(sum_words(pseudo, l4)) {
                0 => 0xffff,
                s => s,
            };
            l4[6..8].copy_from_slice(&sum.to_be_bytes());
        }
    }
    Some(len)
}

/// The unfolded sum over the pseudo-header the TCP and UDP checksums cover: both
/// addresses, the protocol and the L4 length (RFC 793/768 for IPv4, RFC 8200 8.1).
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: Proto, l4_len: usize) -> u32 {
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    // The length is 16 bits in IPv4's pseudo-header and 32 in IPv6's; ours fit in 16.
    addrs + u32::from(proto.number()) + l4_len as u32
}

/// Adds `data` to a one's complement sum as big-endian 16-bit words (an odd last byte
/// is the high byte of a word), unfolded: up to 32 KiB of data cannot overflow.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits and complements it: the Internet checksum (RFC 1071).
fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::frame::tcp_flags;
    use crate::parse_frame;

    const A: [u8; 6] = [0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6];
    const B: [u8; 6] = [0x5a, 0xcd, 0x23, 0x02, 0x05, 0x32];
    const V4_1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const V4_2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const V6_1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const V6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    fn spec(src: IpAddr, dst: IpAddr, proto: Proto) -> FrameSpec {
        FrameSpec {
            src_mac: A,
            dst_mac: B,
            src,
            dst,
            proto,
            src_port: 40000,
            dst_port: 7000,
            tcp_flags: tcp_flags::SYN,
        }
    }

    fn all_kinds() -> Vec<FrameSpec> {
        let mut v = Vec::new();
        for (s, d) in [(IpAddr::V4(V4_1), IpAddr::V4(V4_2)), (IpAddr::V6(V6_1), IpAddr::V6(V6_2))] {
            for p in [Proto::Tcp, Proto::Udp] {
                v.push(spec(s, d, p));
            }
        }
        v
    }

    /// An independent checker: a plain byte-pair sum, folded, over a whole header plus
    /// pseudo-header must come out as 0xffff.
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut s: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            s += if i % 2 == 0 { u64::from(*b) << 8 } else { u64::from(*b) };
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Checks the IPv4 header checksum and the L4 checksum with its pseudo-header.
    fn checksums_ok(frame: &[u8]) {
        let l4_len_field;
        let (pseudo, l4): (Vec<u8>, &[u8]) = match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => {
                let ip = &frame[14..34];
                assert_eq!(ones_sum(&[ip]), 0xffff, "IPv4 header checksum");
                let l4 = &frame[34..];
                l4_len_field = l4.len() as u16;
                ([&ip[12..20], &[0, ip[9]], &l4_len_field.to_be_bytes()[..]].concat(), l4)
            }
            0x86dd => {
                let ip = &frame[14..54];
                let l4 = &frame[54..];
                assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), l4.len());
                ([&ip[8..40], &(l4.len() as u32).to_be_bytes()[..], &[0, 0, 0, ip[6]]].concat(), l4)
            }
            other => panic!("ethertype {other:#x}"),
        };
        assert_eq!(ones_sum(&[&pseudo, l4]), 0xffff, "L4 checksum of {frame:02x?}");
    }

    #[test]
    fn round_trip_through_the_parser() {
        for s in all_kinds() {
            let mut buf = [0u8; MAX_FRAME_LEN];
            let n = write_frame(&s, &mut buf).unwrap();
            assert_eq!(n, frame_len(&s));
            assert_eq!(parse_frame(&buf[..n]), Ok(s.knock()), "{s:?}");
            assert_eq!(&buf[0..6], &B);
            assert_eq!(&buf[6..12], &A);
            checksums_ok(&buf[..n]);
        }
        let lens: Vec<usize> = all_kinds().iter().map(frame_len).collect();
        assert_eq!(lens, vec![54, 43, 74, 63]);
        assert_eq!(lens.iter().max(), Some(&MAX_FRAME_LEN));
    }

    #[test]
    fn flags_ports_and_knock_conversion() {
        let mut s = spec(IpAddr::V4(V4_1), IpAddr::V4(V4_2), Proto::Tcp);
        for flags in [0u8, tcp_flags::SYN, tcp_flags::ACK | tcp_flags::FIN, 0xff] {
            for (sp, dp) in [(0u16, 0u16), (1, 65535), (65535, 1), (0x1234, 0xfedc)] {
                s.tcp_flags = flags;
                s.src_port = sp;
                s.dst_port = dp;
                let mut buf = [0u8; MAX_FRAME_LEN];
                let n = write_frame(&s, &mut buf).unwrap();
                let k = parse_frame(&buf[..n]).unwrap();
                assert_eq!(k, s.knock());
                assert_eq!(FrameSpec::from_knock(&k, A, B), FrameSpec { tcp_flags: flags & 0x3f, ..s });
                assert_eq!(buf[14 + 20 + 13], flags, "ECE and CWR are written");
                checksums_ok(&buf[..n]);
            }
        }
        // UDP ignores the flags.
        s.proto = Proto::Udp;
        assert_eq!(s.knock().tcp_flags, 0);
    }

    /// Many different addresses, ports and flags, so that the sums carry in every way.
    #[test]
    fn checksums_over_many_frames() {
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for i in 0..20_000u32 {
            let (src, dst) = if i % 2 == 0 {
                (IpAddr::V4(Ipv4Addr::from(next())), IpAddr::V4(Ipv4Addr::from(next())))
            } else {
                let a = u128::from(next()) << 96 | u128::from(next()) << 32 | u128::from(next());
                (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(!a)))
            };
            let proto = if i % 4 < 2 { Proto::Tcp } else { Proto::Udp };
            let r = next();
            let s = FrameSpec {
                src_port: r as u16,
                dst_port: (r >> 16) as u16,
                tcp_flags: (r >> 8) as u8,
                ..spec(src, dst, proto)
            };
            let mut buf = [0xaau8; MAX_FRAME_LEN + 1];
            let n = write_frame(&s, &mut buf).unwrap();
            assert!(buf[n..].iter().all(|&b| b == 0xaa), "wrote past the frame");
            checksums_ok(&buf[..n]);
            assert_eq!(parse_frame(&buf[..n]), Ok(s.knock()));
        }
    }

    #[test]
    fn a_udp_sum_of_zero_is_sent_as_ffff() {
        // Search a source port that makes the computed UDP checksum 0.
        let base = spec(IpAddr::V4(V4_1), IpAddr::V4(V4_2), Proto::Udp);
        let s = (0..=u16::MAX)
            .map(|p| FrameSpec { src_port: p, ..base })
            .find(|s| {
                let mut buf = [0u8; MAX_FRAME_LEN];
                let n = write_frame(s, &mut buf).unwrap();
                buf[n - 3..n - 1] == [0xff, 0xff]
            })
            .expect("some port gives a zero sum");
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = write_frame(&s, &mut buf).unwrap();
        checksums_ok(&buf[..n]);
    }

    /// Folds a sum to 16 bits without complementing it: what a sender that offloads
    /// the checksum (`CHECKSUM_PARTIAL`) leaves in the field for the NIC to finish.
    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The captured fixtures come from a veth, where the kernel offloads the L4
    /// checksum and the peer accepts the frame as `CHECKSUM_PARTIAL`: their checksum
    /// field holds only the folded pseudo-header sum, not a real checksum. So they check
    /// our pseudo-header (and every other byte), while `checksums_ok` checks the rest.
    fn same_as_fixture(fixture: &[u8], ip_fields: &[(usize, usize)]) {
        let k = parse_frame(fixture).unwrap();
        let s =
            FrameSpec::from_knock(&k, fixture[6..12].try_into().unwrap(), fixture[0..6].try_into().unwrap());
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = write_frame(&s, &mut buf).unwrap();
        assert_eq!(n, fixture.len());
        checksums_ok(&buf[..n]);
        let csum = if s.proto == Proto::Tcp { n - TCP_LEN + 16 } else { n - UDP_LEN + 6 };
        let partial = fold(pseudo_header_sum(s.src, s.dst, s.proto, l4_len(s.proto)));
        assert_eq!(partial.to_be_bytes(), fixture[csum..csum + 2], "pseudo-header sum");
        // Every other byte is equal, but for the fields the kernel chose differently.
        let mut differ = vec![(csum, csum + 2)];
        differ.extend_from_slice(ip_fields);
        if s.proto == Proto::Tcp {
            differ.push((n - TCP_LEN + 4, n - TCP_LEN + 16)); // seq, ack, offset, flags, window
        }
        for i in 0..n {
            if !differ.iter().any(|&(from, to)| (from..to).contains(&i)) {
                assert_eq!(buf[i], fixture[i], "byte {i}: {:02x?} vs {fixture:02x?}", &buf[..n]);
            }
        }
    }

    #[test]
    fn matches_frames_the_kernel_sent() {
        // knock -u to IPv4: identification and so the header checksum differ.
        same_as_fixture(include_bytes!("../tests/fixtures/udp4_8000.bin"), &[(18, 20), (24, 26)]);
        // knock -6 -u: the flow label differs.
        same_as_fixture(include_bytes!("../tests/fixtures/udp6_8000.bin"), &[(15, 18)]);
        // A kernel RST-ACK over IPv6, a bare 20-byte TCP header.
        same_as_fixture(include_bytes!("../tests/fixtures/tcp6_rst_ack.bin"), &[(15, 18)]);
    }

    #[test]
    fn short_buffers_and_mixed_families() {
        for s in all_kinds() {
            let len = frame_len(&s);
            for short in 0..len {
                let mut buf = vec![0x55u8; short];
                assert_eq!(write_frame(&s, &mut buf), None, "{short} bytes");
                assert!(buf.iter().all(|&b| b == 0x55), "buffer touched");
            }
            let mut exact = vec![0u8; len];
            assert_eq!(write_frame(&s, &mut exact), Some(len));
        }
        let mixed = spec(IpAddr::V4(V4_1), IpAddr::V6(V6_2), Proto::Tcp);
        assert_eq!(frame_len(&mixed), 0);
        assert_eq!(write_frame(&mixed, &mut [0u8; 128]), None);
        let mixed = spec(IpAddr::V6(V6_1), IpAddr::V4(V4_2), Proto::Udp);
        assert_eq!(write_frame(&mixed, &mut [0u8; 128]), None);
    }
}
