//! From a captured link-layer frame to a [`Knock`]: the few fields the matcher needs.

use std::net::IpAddr;

use crate::wire::{
    ethertype, ip_proto, EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, WireError,
};

/// Transport protocol of a knock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number (6 or 17).
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// Lower-case name as knockd writes it (`tcp`, `udp`).
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// TCP flag bits, as in the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// What the matcher needs to know about one packet. Plain data, no borrow of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knock {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (see [`tcp_flags`]); 0 for UDP.
    pub tcp_flags: u8,
}

/// Why a frame yields no [`Knock`]. `Copy` and allocation-free, so skipping a frame
/// costs nothing; [`reason`](Self::reason) labels it for the skip counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameError {
    /// The link layer carries something other than IPv4 or IPv6 (ARP, LLDP, ...).
    #[error("not an IP packet")]
    NotIp,
    /// IP, but the upper layer is neither TCP nor UDP (ICMP, ESP, no next header, ...).
    #[error("neither TCP nor UDP")]
    NotTcpUdp,
    /// A fragment other than the first: the ports are in the first one.
    #[error("non-first fragment, no transport header")]
    Fragment,
    /// A header is cut short or its fields contradict each other.
    #[error("malformed frame: {0}")]
    Malformed(#[from] WireError),
}

impl FrameError {
    /// Every label [`reason`](Self::reason) can return, to register counters up front.
    pub const REASONS: [&'static str; 5] = ["not_ip", "not_tcp_udp", "fragment", "truncated", "malformed"];

    /// A short fixed label for metrics: one of [`REASONS`](Self::REASONS).
    pub const fn reason(&self) -> &'static str {
        match self {
            FrameError::NotIp => "not_ip",
            FrameError::NotTcpUdp => "not_tcp_udp",
            FrameError::Fragment => "fragment",
            FrameError::Malformed(WireError::Truncated { .. }) => "truncated",
            FrameError::Malformed(_) => "malformed",
        }
    }
}

/// Parses a whole Ethernet frame as AF_PACKET captures it (link-layer header
/// included, up to [`crate::wire::MAX_VLAN_TAGS`] VLAN tags in line) into a [`Knock`].
///
/// The ethertype picks the IP version, and the version field must agree with it.
/// Trailing Ethernet padding is ignored. Never allocates or panics.
pub fn parse_frame(frame: &[u8]) -> Result<Knock, FrameError> {
    let l3 = EthernetFrame::new_checked(frame)?.untag()?;
    match l3.ethertype {
        ethertype::IPV4 => ipv4_knock(l3.payload),
        ethertype::IPV6 => ipv6_knock(l3.payload),
        _ => Err(FrameError::NotIp),
    }
}

/// Parses a packet that starts at its IPv4 or IPv6 header (a raw or cooked capture,
/// where the link layer is absent or already stripped) into a [`Knock`].
///
/// The version field picks the IP version; otherwise it is [`parse_frame`] minus the
/// link layer, down to the same functions.
pub fn parse_ip_packet(packet: &[u8]) -> Result<Knock, FrameError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => ipv4_knock(packet),
        Some(6) => ipv6_knock(packet),
        Some(found) => Err(WireError::BadVersion { layer: "ip", found }.into()),
        None => Err(WireError::Truncated { layer: "ip", need: 1, have: 0 }.into()),
    }
}

fn ipv4_knock(packet: &[u8]) -> Result<Knock, FrameError> {
    let ip = Ipv4Packet::new_checked(packet)?;
    if ip.frag_offset() != 0 {
        return Err(FrameError::Fragment);
    }
    let ends = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    transport(ends, ip.protocol(), ip.payload(), ip.more_frags())
}

fn ipv6_knock(packet: &[u8]) -> Result<Knock, FrameError> {
    let ip = Ipv6Packet::new_checked(packet)?;
    let chain = ip.header_chain()?;
    if chain.is_later_fragment() {
        return Err(FrameError::Fragment);
    }
    let ends = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
    transport(ends, chain.protocol, chain.payload, chain.fragment.is_some_and(|frag| frag.more))
}

/// The knock in an upper-layer header. `first_fragment` relaxes the UDP length
/// check, since a first fragment's length field counts bytes still to come.
fn transport(
    (src, dst): (IpAddr, IpAddr),
    protocol: u8,
    payload: &[u8],
    first_fragment: bool,
) -> Result<Knock, FrameError> {
    match protocol {
        ip_proto::TCP => {
            let tcp = TcpPacket::new_checked(payload)?;
            Ok(Knock {
                src,
                dst,
                proto: Proto::Tcp,
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                tcp_flags: tcp.flags(),
            })
        }
        ip_proto::UDP => {
            let udp = UdpPacket::new_unchecked(payload);
            if first_fragment {
                udp.check_header()?;
            } else {
                udp.check_len()?;
            }
            Ok(Knock {
                src,
                dst,
                proto: Proto::Udp,
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
                tcp_flags: 0,
            })
        }
        _ => Err(FrameError::NotTcpUdp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A real SYN from `knock 198.18.0.2 7000`, as captured on a veth with `tcpdump -w`.
    const SYN4: [u8; 74] = [
        0x5a, 0xcd, 0x23, 0x02, 0x05, 0x32, 0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6, 0x08, 0x00, 0x45, 0x00, 0x00,
        0x3c, 0xc4, 0xe7, 0x40, 0x00, 0x40, 0x06, 0xe9, 0xac, 0xc6, 0x12, 0x00, 0x01, 0xc6, 0x12, 0x00, 0x02,
        0xb3, 0x3a, 0x1b, 0x58, 0x58, 0x2d, 0x96, 0xb1, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x8c,
        0x56, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xbf, 0xa9, 0xe8, 0x67, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// A real datagram from `knock -6 -u 2001:db8::2 8000`.
    const UDP6: [u8; 63] = [
        0x5a, 0xcd, 0x23, 0x02, 0x05, 0x32, 0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6, 0x86, 0xdd, 0x60, 0x06, 0x7f,
        0xe1, 0x00, 0x09, 0x11, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0xa2, 0xfc, 0x1f, 0x40, 0x00, 0x09, 0x5b, 0x8f, 0x00,
    ];

    #[test]
    fn tcp_over_ipv4() {
        let knock = parse_frame(&SYN4).unwrap();
        assert_eq!(
            knock,
            Knock {
                src: Ipv4Addr::new(198, 18, 0, 1).into(),
                dst: Ipv4Addr::new(198, 18, 0, 2).into(),
                proto: Proto::Tcp,
                src_port: 45882,
                dst_port: 7000,
                tcp_flags: tcp_flags::SYN,
            }
        );
        assert_eq!(parse_ip_packet(&SYN4[14..]), Ok(knock));
    }

    #[test]
    fn udp_over_ipv6() {
        let knock = parse_frame(&UDP6).unwrap();
        assert_eq!(
            knock,
            Knock {
                src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
                dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
                proto: Proto::Udp,
                src_port: 41724,
                dst_port: 8000,
                tcp_flags: 0,
            }
        );
        assert_eq!(parse_ip_packet(&UDP6[14..]), Ok(knock));
    }

    #[test]
    fn ethertype_and_version_must_agree() {
        let mut v6_in_v4 = UDP6;
        v6_in_v4[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(
            parse_frame(&v6_in_v4),
            Err(FrameError::Malformed(WireError::BadVersion { layer: "ipv4", found: 6 }))
        );
        let mut v4_in_v6 = SYN4;
        v4_in_v6[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        assert_eq!(
            parse_frame(&v4_in_v6),
            Err(FrameError::Malformed(WireError::BadVersion { layer: "ipv6", found: 4 }))
        );
    }

    #[test]
    fn ip_packet_versions() {
        assert_eq!(
            parse_ip_packet(&[]),
            Err(FrameError::Malformed(WireError::Truncated { layer: "ip", need: 1, have: 0 }))
        );
        for version in [0u8, 5, 7, 15] {
            let mut bytes = SYN4[14..].to_vec();
            bytes[0] = version << 4 | 5;
            assert_eq!(
                parse_ip_packet(&bytes),
                Err(FrameError::Malformed(WireError::BadVersion { layer: "ip", found: version }))
            );
        }
    }

    #[test]
    fn reasons() {
        let truncated = WireError::Truncated { layer: "tcp", need: 20, have: 3 };
        let cases = [
            (FrameError::NotIp, "not_ip"),
            (FrameError::NotTcpUdp, "not_tcp_udp"),
            (FrameError::Fragment, "fragment"),
            (FrameError::Malformed(truncated), "truncated"),
            (FrameError::Malformed(WireError::BadLength { layer: "udp", len: 3 }), "malformed"),
            (FrameError::Malformed(WireError::ExtChainTooLong { max: 8 }), "malformed"),
        ];
        for (err, reason) in cases {
            assert_eq!(err.reason(), reason);
            assert!(FrameError::REASONS.contains(&reason));
        }
        assert_eq!(
            FrameError::from(truncated).to_string(),
            "malformed frame: tcp: truncated, need 20 bytes, have 3"
        );
    }
}
