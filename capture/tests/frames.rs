//! `parse_frame` and `parse_ip_packet` over real captured frames (tests/fixtures, made
//! with `tcpdump -w` on a veth between two network namespaces, see its README) and
//! over frames derived from them by cutting, tagging, or lying in a field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sesame_capture::frame::{parse_ip_packet, tcp_flags};
use sesame_capture::wire::{ethertype, ip_proto, WireError, MAX_EXT_HEADERS, MAX_VLAN_TAGS};
use sesame_capture::{parse_frame, FrameError, Knock, Proto};

const TCP4_SYN: &[u8] = include_bytes!("fixtures/tcp4_syn_7000.bin");
const TCP4_RST_ACK: &[u8] = include_bytes!("fixtures/tcp4_rst_ack.bin");
const UDP4: &[u8] = include_bytes!("fixtures/udp4_8000.bin");
const UDP4_FRAG_FIRST: &[u8] = include_bytes!("fixtures/udp4_frag_first.bin");
const UDP4_FRAG_LAST: &[u8] = include_bytes!("fixtures/udp4_frag_last.bin");
const TCP6_SYN: &[u8] = include_bytes!("fixtures/tcp6_syn_7000.bin");
const TCP6_RST_ACK: &[u8] = include_bytes!("fixtures/tcp6_rst_ack.bin");
const UDP6: &[u8] = include_bytes!("fixtures/udp6_8000.bin");
const UDP6_FRAG_FIRST: &[u8] = include_bytes!("fixtures/udp6_frag_first.bin");
const UDP6_FRAG_LAST: &[u8] = include_bytes!("fixtures/udp6_frag_last.bin");
const ARP_REQUEST: &[u8] = include_bytes!("fixtures/arp_request.bin");
const ICMP4_ECHO: &[u8] = include_bytes!("fixtures/icmp4_echo.bin");
const ICMP4_PORT_UNREACH: &[u8] = include_bytes!("fixtures/icmp4_port_unreach.bin");
const ICMP6_MLD_HBH: &[u8] = include_bytes!("fixtures/icmp6_mld_hbh.bin");
const CAPTURE_PCAP: &[u8] = include_bytes!("fixtures/capture.pcap");

/// Offset of the IP header in an untagged Ethernet frame.
const L3: usize = 14;
const EXT_LAYER: &str = "ipv6 extension header";

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn knock(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    proto: Proto,
    ports: (u16, u16),
    flags: u8,
) -> Knock {
    Knock { src: src.into(), dst: dst.into(), proto, src_port: ports.0, dst_port: ports.1, tcp_flags: flags }
}

fn tcp4_syn() -> Knock {
    knock(CLIENT4, SERVER4, Proto::Tcp, (45882, 7000), tcp_flags::SYN)
}

fn tcp6_syn() -> Knock {
    knock(CLIENT6, SERVER6, Proto::Tcp, (38606, 7000), tcp_flags::SYN)
}

fn udp6() -> Knock {
    knock(CLIENT6, SERVER6, Proto::Udp, (41724, 8000), 0)
}

fn malformed(err: WireError) -> Result<Knock, FrameError> {
    Err(FrameError::Malformed(err))
}

fn set16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The real frames whose parse succeeds, with the knock each one is.
fn good_frames() -> Vec<(&'static str, &'static [u8], Knock)> {
    vec![
        ("tcp4 syn", TCP4_SYN, tcp4_syn()),
        (
            "tcp4 rst+ack",
            TCP4_RST_ACK,
            knock(SERVER4, CLIENT4, Proto::Tcp, (7000, 45882), tcp_flags::RST | tcp_flags::ACK),
        ),
        ("udp4", UDP4, knock(CLIENT4, SERVER4, Proto::Udp, (46634, 8000), 0)),
        ("udp4 first fragment", UDP4_FRAG_FIRST, knock(CLIENT4, SERVER4, Proto::Udp, (52012, 9000), 0)),
        ("tcp6 syn", TCP6_SYN, tcp6_syn()),
        (
            "tcp6 rst+ack",
            TCP6_RST_ACK,
            knock(SERVER6, CLIENT6, Proto::Tcp, (7000, 38606), tcp_flags::RST | tcp_flags::ACK),
        ),
        ("udp6", UDP6, udp6()),
        ("udp6 first fragment", UDP6_FRAG_FIRST, knock(CLIENT6, SERVER6, Proto::Udp, (54364, 9000), 0)),
    ]
}

#[test]
fn real_frames() {
    for (name, frame, expected) in good_frames() {
        assert_eq!(parse_frame(frame), Ok(expected), "{name}");
        assert_eq!(parse_ip_packet(&frame[L3..]), Ok(expected), "{name} without its link layer");
    }
    let skipped = [
        ("arp", ARP_REQUEST, FrameError::NotIp),
        ("icmp echo", ICMP4_ECHO, FrameError::NotTcpUdp),
        // It quotes the UDP header it answers; that must not read as a knock.
        ("icmp port unreachable", ICMP4_PORT_UNREACH, FrameError::NotTcpUdp),
        ("mld report behind hop-by-hop", ICMP6_MLD_HBH, FrameError::NotTcpUdp),
        ("udp4 last fragment", UDP4_FRAG_LAST, FrameError::Fragment),
        ("udp6 last fragment", UDP6_FRAG_LAST, FrameError::Fragment),
    ];
    for (name, frame, expected) in skipped {
        assert_eq!(parse_frame(frame), Err(expected), "{name}");
    }
    assert_eq!(FrameError::Fragment.reason(), "fragment");
}

/// Every frame of the capture the fixtures were cut from, read with a minimal pcap reader.
#[test]
fn whole_capture() {
    let pcap = CAPTURE_PCAP;
    assert_eq!(&pcap[..4], &0xa1b2_c3d4u32.to_le_bytes(), "little-endian microsecond pcap");
    assert_eq!(u32::from_le_bytes(pcap[20..24].try_into().unwrap()), 1, "linktype Ethernet");
    let mut at = 24;
    let (mut knocks, mut not_ip, mut not_tcp_udp, mut fragments) = (Vec::new(), 0, 0, 0);
    while at < pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let wirelen = u32::from_le_bytes(pcap[at + 12..at + 16].try_into().unwrap()) as usize;
        assert_eq!(caplen, wirelen, "captured whole");
        let frame = &pcap[at + 16..at + 16 + caplen];
        at += 16 + caplen;
        match parse_frame(frame) {
            Ok(knock) => knocks.push(knock),
            Err(FrameError::NotIp) => not_ip += 1,
            Err(FrameError::NotTcpUdp) => not_tcp_udp += 1,
            Err(FrameError::Fragment) => fragments += 1,
            Err(err) => panic!("real frame rejected: {err}"),
        }
    }
    assert_eq!(at, pcap.len());
    assert_eq!((knocks.len(), not_ip, not_tcp_udp, fragments), (8, 2, 14, 2));
    let good: Vec<Knock> = good_frames().into_iter().map(|(_, _, knock)| knock).collect();
    for knock in &knocks {
        assert!(good.contains(knock), "{knock:?}");
    }
}

#[test]
fn every_prefix_is_truncated() {
    for (name, frame, expected) in good_frames() {
        for len in 0..frame.len() {
            match parse_frame(&frame[..len]) {
                Err(err @ FrameError::Malformed(WireError::Truncated { have, .. })) => {
                    assert_eq!(err.reason(), "truncated");
                    assert!(have <= len, "{name} cut to {len}: {err}");
                }
                other => panic!("{name} cut to {len} bytes: {other:?}"),
            }
        }
        assert_eq!(parse_frame(frame), Ok(expected), "{name}");
        let packet = &frame[L3..];
        for len in 0..packet.len() {
            let result = parse_ip_packet(&packet[..len]);
            assert!(
                matches!(result, Err(FrameError::Malformed(WireError::Truncated { .. }))),
                "{name} {len}"
            );
        }
    }
}

/// The layer each prefix length of the IPv4 SYN is cut in.
#[test]
fn truncation_names_the_layer() {
    let layer_at = |len: usize| match parse_frame(&TCP4_SYN[..len]) {
        Err(FrameError::Malformed(WireError::Truncated { layer, .. })) => layer,
        other => panic!("{len}: {other:?}"),
    };
    assert_eq!(layer_at(13), "ethernet");
    // The IPv4 header is cut, then its total length (60) is missing bytes.
    assert_eq!(layer_at(14), "ipv4");
    assert_eq!(layer_at(73), "ipv4");
    let layer_at = |len: usize| match parse_frame(&UDP6[..len]) {
        Err(FrameError::Malformed(WireError::Truncated { layer, .. })) => layer,
        other => panic!("{len}: {other:?}"),
    };
    assert_eq!(layer_at(0), "ethernet");
    assert_eq!(layer_at(53), "ipv6");
    assert_eq!(layer_at(62), "ipv6");
}

#[test]
fn ethernet_padding_is_ignored() {
    // Frames shorter than 60 bytes are padded on the wire; the receive side sees it.
    for frame in [TCP4_RST_ACK, UDP4, UDP6] {
        let mut padded = frame.to_vec();
        padded.resize(padded.len().max(60) + 4, 0);
        assert_eq!(parse_frame(&padded), parse_frame(frame));
        assert!(parse_frame(&padded).is_ok());
    }
}

#[test]
fn ipv4_bad_ihl() {
    for ihl in 0..5u8 {
        let mut frame = TCP4_SYN.to_vec();
        frame[L3] = 0x40 | ihl;
        let len = usize::from(ihl) * 4;
        assert_eq!(parse_frame(&frame), malformed(WireError::BadHeaderLength { layer: "ipv4", len }));
        assert_eq!(parse_frame(&frame).unwrap_err().reason(), "malformed");
    }
    // IHL beyond the packet: 60 header bytes announced, 29 there.
    let mut frame = UDP4.to_vec();
    frame[L3] = 0x4f;
    assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "ipv4", need: 60, have: 29 }));
    // IHL inside the padded frame, but beyond the total length.
    frame[L3] = 0x48;
    frame.resize(L3 + 60, 0);
    assert_eq!(parse_frame(&frame), malformed(WireError::BadLength { layer: "ipv4", len: 29 }));
    // IHL 6 eats the first 4 bytes of UDP as options; the 5 bytes left are not a header.
    frame[L3] = 0x46;
    assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "udp", need: 8, have: 5 }));
}

#[test]
fn ipv4_bad_version() {
    for version in [0u8, 5, 6, 15] {
        let mut frame = TCP4_SYN.to_vec();
        frame[L3] = version << 4 | 5;
        assert_eq!(parse_frame(&frame), malformed(WireError::BadVersion { layer: "ipv4", found: version }));
    }
}

#[test]
fn ipv4_total_length_lies() {
    let total_len_at = L3 + 2;
    let with_total = |total: u16| {
        let mut frame = TCP4_SYN.to_vec();
        set16(&mut frame, total_len_at, total);
        parse_frame(&frame)
    };
    assert_eq!(with_total(61), malformed(WireError::Truncated { layer: "ipv4", need: 61, have: 60 }));
    assert_eq!(with_total(0xffff), malformed(WireError::Truncated { layer: "ipv4", need: 0xffff, have: 60 }));
    for total in [0, 1, 19] {
        assert_eq!(
            with_total(total),
            malformed(WireError::BadLength { layer: "ipv4", len: usize::from(total) })
        );
    }
    // Shorter than the TCP header with its options: TCP must not read past the total length.
    assert_eq!(with_total(20), malformed(WireError::Truncated { layer: "tcp", need: 20, have: 0 }));
    assert_eq!(with_total(59), malformed(WireError::Truncated { layer: "tcp", need: 40, have: 39 }));
    assert_eq!(with_total(60), Ok(tcp4_syn()));
    // Total length short in a padded frame: the same, the padding is not TCP.
    let mut padded = TCP4_SYN.to_vec();
    padded.extend_from_slice(&[0; 30]);
    set16(&mut padded, total_len_at, 50);
    assert_eq!(parse_frame(&padded), malformed(WireError::Truncated { layer: "tcp", need: 40, have: 30 }));
}

#[test]
fn tcp_bad_data_offset() {
    let data_off_at = L3 + 20 + 12;
    for off in 0..5u8 {
        let mut frame = TCP4_SYN.to_vec();
        frame[data_off_at] = off << 4;
        let len = usize::from(off) * 4;
        assert_eq!(parse_frame(&frame), malformed(WireError::BadHeaderLength { layer: "tcp", len }));
    }
    // Beyond the segment: 60 or 44 bytes announced, 40 there.
    for (off, need) in [(15u8, 60), (11, 44)] {
        let mut frame = TCP4_SYN.to_vec();
        frame[data_off_at] = off << 4;
        assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "tcp", need, have: 40 }));
    }
    // Within the frame's padding, still beyond the segment.
    let mut padded = TCP4_SYN.to_vec();
    padded.extend_from_slice(&[0; 20]);
    padded[data_off_at] = 0xf0;
    assert_eq!(parse_frame(&padded), malformed(WireError::Truncated { layer: "tcp", need: 60, have: 40 }));
    // Data offset 5 is valid: the options become data.
    let mut frame = TCP4_SYN.to_vec();
    frame[data_off_at] = 0x50;
    assert_eq!(parse_frame(&frame), Ok(tcp4_syn()));
}

#[test]
fn tcp_flags_are_the_low_six_bits() {
    let flags_at = L3 + 20 + 13;
    let mut frame = TCP4_SYN.to_vec();
    // ECE and CWR, as a SYN asking for ECN carries them.
    frame[flags_at] = 0xc2;
    assert_eq!(parse_frame(&frame).unwrap().tcp_flags, tcp_flags::SYN);
    frame[flags_at] = 0xff;
    assert_eq!(parse_frame(&frame).unwrap().tcp_flags, 0x3f);
    let frame6_flags_at = L3 + 40 + 13;
    let mut frame = TCP6_SYN.to_vec();
    frame[frame6_flags_at] = tcp_flags::FIN | tcp_flags::PSH | tcp_flags::URG;
    assert_eq!(parse_frame(&frame).unwrap().tcp_flags, 0x29);
}

#[test]
fn udp_bad_length() {
    let len_at = L3 + 20 + 4;
    for len in [0u16, 7] {
        let mut frame = UDP4.to_vec();
        set16(&mut frame, len_at, len);
        assert_eq!(
            parse_frame(&frame),
            malformed(WireError::BadLength { layer: "udp", len: usize::from(len) })
        );
    }
    let mut frame = UDP4.to_vec();
    set16(&mut frame, len_at, 10);
    assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "udp", need: 10, have: 9 }));
    set16(&mut frame, len_at, 8);
    assert!(parse_frame(&frame).is_ok(), "the UDP length may stop short of the IP payload");
    // In a first fragment the length counts the later pieces too, and that is fine.
    assert_eq!(u16::from_be_bytes([UDP4_FRAG_FIRST[len_at], UDP4_FRAG_FIRST[len_at + 1]]), 2008);
    assert!(parse_frame(UDP4_FRAG_FIRST).is_ok());
    // Without MF, the same length field lies.
    let mut not_fragment = UDP4_FRAG_FIRST.to_vec();
    not_fragment[L3 + 6] &= !0x20;
    assert_eq!(
        parse_frame(&not_fragment),
        malformed(WireError::Truncated { layer: "udp", need: 2008, have: 1480 })
    );
}

#[test]
fn ipv4_fragments() {
    let flags_at = L3 + 6;
    let mut frame = TCP4_SYN.to_vec();
    // MF with offset 0: a first fragment, ports present.
    set16(&mut frame, flags_at, 0x2000);
    assert_eq!(parse_frame(&frame), Ok(tcp4_syn()));
    // Any non-zero offset, with or without MF.
    for flags_off in [0x0001u16, 0x2001, 0x00b9, 0x1fff, 0x5fff] {
        set16(&mut frame, flags_at, flags_off);
        assert_eq!(parse_frame(&frame), Err(FrameError::Fragment), "{flags_off:#06x}");
    }
}

#[test]
fn other_ethertypes_and_protocols() {
    assert_eq!(parse_frame(ARP_REQUEST).unwrap_err().reason(), "not_ip");
    for ethertype in [0x88cc_u16, 0x8035, 0x0600, 0x002e, 0x88e5] {
        let mut frame = TCP4_SYN.to_vec();
        set16(&mut frame, 12, ethertype);
        assert_eq!(parse_frame(&frame), Err(FrameError::NotIp), "{ethertype:#06x}");
    }
    for proto in [ip_proto::ICMP, ip_proto::ESP, ip_proto::AH, 2, 47, 132, 255] {
        let mut frame = TCP4_SYN.to_vec();
        frame[L3 + 9] = proto;
        assert_eq!(parse_frame(&frame), Err(FrameError::NotTcpUdp), "{proto}");
    }
    assert_eq!(parse_frame(ICMP4_ECHO).unwrap_err().reason(), "not_tcp_udp");
}

/// Inserts VLAN tags (TPID, VLAN id) after the MAC addresses.
fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for &(tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

#[test]
fn vlan_tagged() {
    let dot1q = tagged(TCP4_SYN, &[(ethertype::VLAN, 100)]);
    assert_eq!(parse_frame(&dot1q), Ok(tcp4_syn()));
    let qinq = tagged(UDP6, &[(ethertype::QINQ, 200), (ethertype::VLAN, 300)]);
    assert_eq!(parse_frame(&qinq), Ok(udp6()));
    let qinq = tagged(TCP6_SYN, &[(ethertype::QINQ_LEGACY, 4095), (ethertype::VLAN, 0)]);
    assert_eq!(parse_frame(&qinq), Ok(tcp6_syn()));
    assert_eq!(parse_frame(&tagged(ARP_REQUEST, &[(ethertype::VLAN, 7)])), Err(FrameError::NotIp));
    assert_eq!(parse_frame(&tagged(ICMP4_ECHO, &[(ethertype::VLAN, 7)])), Err(FrameError::NotTcpUdp));

    let too_many = tagged(TCP4_SYN, &[(ethertype::QINQ, 1), (ethertype::VLAN, 2), (ethertype::VLAN, 3)]);
    assert_eq!(parse_frame(&too_many), malformed(WireError::TooManyVlanTags { max: MAX_VLAN_TAGS }));
    // Tagged frames cut anywhere before their end.
    let qinq = tagged(UDP6, &[(ethertype::QINQ, 200), (ethertype::VLAN, 300)]);
    for len in 0..qinq.len() {
        let err = parse_frame(&qinq[..len]).unwrap_err();
        assert_eq!(err.reason(), "truncated", "{len}: {err}");
    }
}

/// The real IPv6 SYN with extension headers inserted before TCP, the next-header
/// fields and payload length fixed up. Each header is (its protocol number, its bytes).
fn ipv6_chain(exts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut frame = TCP6_SYN[..L3 + 40].to_vec();
    let mut next_at = L3 + 6;
    for (proto, bytes) in exts {
        frame[next_at] = *proto;
        next_at = frame.len();
        frame.extend_from_slice(bytes);
    }
    frame[next_at] = ip_proto::TCP;
    frame.extend_from_slice(&TCP6_SYN[L3 + 40..]);
    let payload_len = u16::try_from(frame.len() - L3 - 40).unwrap();
    set16(&mut frame, L3 + 4, payload_len);
    frame
}

const HBH: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0];
/// Router alert (MLD) in a Hop-by-Hop header, as the kernel writes it.
const HBH_ROUTER_ALERT: &[u8] = &[0, 0, 5, 2, 0, 0, 1, 0];
const DEST_OPTS: &[u8] = &[0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// A type 2 routing header (RFC 6275), 24 bytes.
const ROUTING: &[u8] = &[0, 2, 2, 1, 0, 0, 0, 0, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
/// AH counts in 4-byte words minus 2: length byte 4 is 24 bytes.
const AH: &[u8] = &[0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn fragment_header(offset: u16, more: bool) -> [u8; 8] {
    let [hi, lo] = (offset | u16::from(more)).to_be_bytes();
    [0, 0, hi, lo, 0xca, 0xfe, 0xf0, 0x0d]
}

#[test]
fn ipv6_extension_chains() {
    let frame = ipv6_chain(&[
        (ip_proto::HOP_BY_HOP, HBH_ROUTER_ALERT),
        (ip_proto::IPV6_DEST_OPTS, DEST_OPTS),
        (ip_proto::IPV6_ROUTING, ROUTING),
    ]);
    assert_eq!(frame.len(), TCP6_SYN.len() + 8 + 16 + 24);
    assert_eq!(parse_frame(&frame), Ok(tcp6_syn()));
    assert_eq!(parse_ip_packet(&frame[L3..]), Ok(tcp6_syn()));

    let frame = ipv6_chain(&[(ip_proto::AH, AH)]);
    assert_eq!(parse_frame(&frame), Ok(tcp6_syn()));
    let frame =
        ipv6_chain(&[(ip_proto::HOP_BY_HOP, HBH), (ip_proto::AH, AH), (ip_proto::IPV6_DEST_OPTS, DEST_OPTS)]);
    assert_eq!(parse_frame(&frame), Ok(tcp6_syn()));

    // The upper layer ends up behind the walk, not TCP: ESP, no next header, ICMPv6.
    for end in [ip_proto::ESP, ip_proto::IPV6_NO_NEXT, ip_proto::ICMPV6] {
        let mut frame = ipv6_chain(&[(ip_proto::HOP_BY_HOP, HBH), (ip_proto::AH, AH)]);
        frame[L3 + 40 + 8] = end;
        assert_eq!(parse_frame(&frame), Err(FrameError::NotTcpUdp), "{end}");
        let mut frame = TCP6_SYN.to_vec();
        frame[L3 + 6] = end;
        assert_eq!(parse_frame(&frame), Err(FrameError::NotTcpUdp), "{end}");
    }
}

#[test]
fn ipv6_fragment_headers() {
    for more in [false, true] {
        let frag = fragment_header(0, more);
        let frame = ipv6_chain(&[(ip_proto::IPV6_FRAGMENT, &frag)]);
        assert_eq!(parse_frame(&frame), Ok(tcp6_syn()), "offset 0, more {more}");
        let frame = ipv6_chain(&[(ip_proto::HOP_BY_HOP, HBH), (ip_proto::IPV6_FRAGMENT, &frag)]);
        assert_eq!(parse_frame(&frame), Ok(tcp6_syn()));
    }
    for offset in [8, 1448, 0xfff8] {
        for more in [false, true] {
            let frag = fragment_header(offset, more);
            let frame = ipv6_chain(&[(ip_proto::IPV6_FRAGMENT, &frag)]);
            assert_eq!(parse_frame(&frame), Err(FrameError::Fragment), "offset {offset}, more {more}");
            let frame = ipv6_chain(&[(ip_proto::HOP_BY_HOP, HBH), (ip_proto::IPV6_FRAGMENT, &frag)]);
            assert_eq!(parse_frame(&frame), Err(FrameError::Fragment));
        }
    }
    // A later fragment with so little data that the TCP header could not fit: still Fragment.
    let frag = fragment_header(1448, false);
    let mut frame = ipv6_chain(&[(ip_proto::IPV6_FRAGMENT, &frag)]);
    frame.truncate(L3 + 40 + 8 + 3);
    set16(&mut frame, L3 + 4, 11);
    assert_eq!(parse_frame(&frame), Err(FrameError::Fragment));
    // The UDP length of a first fragment counts the later pieces.
    assert!(parse_frame(UDP6_FRAG_FIRST).is_ok());
}

#[test]
fn ipv6_chain_bound() {
    let exts = [(ip_proto::IPV6_DEST_OPTS, HBH); MAX_EXT_HEADERS + 1];
    assert_eq!(parse_frame(&ipv6_chain(&exts[..MAX_EXT_HEADERS])), Ok(tcp6_syn()));
    let too_long = ipv6_chain(&exts);
    assert_eq!(parse_frame(&too_long), malformed(WireError::ExtChainTooLong { max: MAX_EXT_HEADERS }));
    assert_eq!(parse_frame(&too_long).unwrap_err().reason(), "malformed");
    // A long chain of a mix of kinds.
    let frag = fragment_header(0, true);
    let mixed = [
        (ip_proto::HOP_BY_HOP, HBH),
        (ip_proto::IPV6_DEST_OPTS, DEST_OPTS),
        (ip_proto::IPV6_ROUTING, ROUTING),
        (ip_proto::IPV6_FRAGMENT, &frag[..]),
        (ip_proto::AH, AH),
        (ip_proto::IPV6_ROUTING, ROUTING),
        (ip_proto::IPV6_DEST_OPTS, DEST_OPTS),
        (ip_proto::AH, AH),
        (ip_proto::IPV6_DEST_OPTS, DEST_OPTS),
    ];
    assert_eq!(parse_frame(&ipv6_chain(&mixed[..8])), Ok(tcp6_syn()));
    assert_eq!(parse_frame(&ipv6_chain(&mixed)), malformed(WireError::ExtChainTooLong { max: 8 }));
}

#[test]
fn ipv6_truncated_chains() {
    let frag = fragment_header(0, false);
    let exts = [
        (ip_proto::HOP_BY_HOP, HBH),
        (ip_proto::IPV6_DEST_OPTS, DEST_OPTS),
        (ip_proto::IPV6_ROUTING, ROUTING),
        (ip_proto::AH, AH),
        (ip_proto::IPV6_FRAGMENT, &frag[..]),
    ];
    let full = ipv6_chain(&exts);
    let chain_len: usize = exts.iter().map(|(_, bytes)| bytes.len()).sum();
    // The payload length ends inside the chain: at every byte of it.
    for payload_len in 0..chain_len {
        let mut frame = full.clone();
        set16(&mut frame, L3 + 4, u16::try_from(payload_len).unwrap());
        match parse_frame(&frame) {
            Err(FrameError::Malformed(WireError::Truncated { layer: EXT_LAYER, have, .. })) => {
                assert!(have < 24, "{payload_len}: have {have}")
            }
            other => panic!("payload length {payload_len}: {other:?}"),
        }
    }
    // Chain whole, TCP header cut.
    let mut frame = full.clone();
    set16(&mut frame, L3 + 4, u16::try_from(chain_len + 10).unwrap());
    assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "tcp", need: 20, have: 10 }));
    // A length byte pointing past the payload, for each kind that has one.
    for (i, need) in [(0, 201 * 8), (1, 201 * 8), (2, 201 * 8), (3, 202 * 4)] {
        let mut long = exts[i].1.to_vec();
        long[1] = 200;
        let frame = ipv6_chain(&[(exts[i].0, &long)]);
        let have = frame.len() - L3 - 40;
        assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: EXT_LAYER, need, have }));
    }
    // The IPv6 payload length itself lies.
    let mut frame = TCP6_SYN.to_vec();
    set16(&mut frame, L3 + 4, 41);
    assert_eq!(parse_frame(&frame), malformed(WireError::Truncated { layer: "ipv6", need: 81, have: 80 }));
}

#[test]
fn ipv6_bad_version() {
    for version in [0u8, 4, 7] {
        let mut frame = UDP6.to_vec();
        frame[L3] = version << 4;
        assert_eq!(parse_frame(&frame), malformed(WireError::BadVersion { layer: "ipv6", found: version }));
    }
}

/// xorshift64*: enough randomness to wander through the parser, no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Random bytes, random bytes behind a real Ethernet + IP prefix, and real frames with
/// a few bytes changed and a random length: none may panic, and whatever parses must
/// be a consistent knock.
#[test]
fn random_frames_never_panic() {
    let seeds: Vec<Vec<u8>> = good_frames()
        .into_iter()
        .map(|(_, frame, _)| frame.to_vec())
        .chain([
            ipv6_chain(&[(ip_proto::HOP_BY_HOP, HBH), (ip_proto::AH, AH), (ip_proto::IPV6_ROUTING, ROUTING)]),
            ipv6_chain(&[(ip_proto::IPV6_FRAGMENT, &fragment_header(0, true)[..])]),
            tagged(UDP6, &[(ethertype::QINQ, 200), (ethertype::VLAN, 300)]),
            tagged(TCP4_SYN, &[(ethertype::VLAN, 100)]),
        ])
        .collect();
    let mut rng = XorShift(0x5e5a_3e5a_3e5a_3e5a);
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let mut buf = Vec::with_capacity(2048);
    for round in 0..6000 {
        buf.clear();
        match round % 3 {
            0 => {
                let len = rng.below(160);
                buf.extend((0..len).map(|_| rng.byte()));
                if rng.below(2) == 0 && buf.len() >= 14 {
                    let ethertype = [ethertype::IPV4, ethertype::IPV6, ethertype::VLAN][rng.below(3)];
                    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
                }
            }
            1 => {
                let seed = &seeds[rng.below(seeds.len())];
                let keep = rng.below(seed.len().min(L3 + 48));
                buf.extend_from_slice(&seed[..keep]);
                let len = keep + rng.below(64);
                while buf.len() < len {
                    buf.push(rng.byte());
                }
            }
            _ => {
                let seed = &seeds[rng.below(seeds.len())];
                buf.extend_from_slice(seed);
                for _ in 0..1 + rng.below(4) {
                    // Headers are where the parser looks: mutate mostly there.
                    let at = rng.below(buf.len().min(L3 + 120));
                    buf[at] = rng.byte();
                }
                buf.truncate(rng.below(buf.len() + 16));
            }
        }
        let outcome = match parse_frame(&buf) {
            Ok(knock) => {
                if knock.proto == Proto::Udp {
                    assert_eq!(knock.tcp_flags, 0);
                }
                assert_eq!(knock.tcp_flags & !0x3f, 0);
                assert_eq!(knock.src.is_ipv4(), knock.dst.is_ipv4());
                "ok"
            }
            Err(err) => err.reason(),
        };
        *outcomes.entry(outcome).or_default() += 1;
        if buf.len() > L3 {
            let _ = parse_ip_packet(&buf[L3..]);
        }
        let _ = parse_ip_packet(&buf);
    }
    // The generator must have reached every outcome, or the test proves little.
    for reason in FrameError::REASONS.iter().chain(&["ok"]) {
        assert!(outcomes.get(reason).copied().unwrap_or(0) > 0, "{reason} never reached: {outcomes:?}");
    }
}
