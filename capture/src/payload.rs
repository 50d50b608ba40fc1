//! The payload of a whole (unfragmented) UDP datagram in a frame, through the typed
//! views, without copying: what single-packet authorization reads.

use crate::wire::{ethertype, ip_proto, EthernetFrame, Ipv4Packet, Ipv6Packet, UdpPacket};
use crate::Link;

/// The UDP payload of `frame` (bounded by the UDP length field), or `None` for
/// anything else: not UDP, a fragment, truncated or malformed.
pub fn udp_payload(link: Link, frame: &[u8]) -> Option<&[u8]> {
    let ip = match link {
        Link::Ethernet => {
            let l3 = EthernetFrame::new_checked(frame).ok()?.untag().ok()?;
            match l3.ethertype {
                ethertype::IPV4 | ethertype::IPV6 => l3.payload,
                _ => return None,
            }
        }
        Link::Ip => frame,
    };
    let (protocol, l4) = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            if p.is_fragment() {
                return None;
            }
            (p.protocol(), p.payload())
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            let chain = p.header_chain().ok()?;
            if chain.fragment.is_some() {
                return None;
            }
            (chain.protocol, chain.payload)
        }
        _ => return None,
    };
    if protocol != ip_proto::UDP {
        return None;
    }
    let udp = UdpPacket::new_checked(l4).ok()?;
    Some(udp.payload())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn payload_v4_v6_ethernet() {
        let v4 = |n| IpAddr::V4(Ipv4Addr::new(198, 18, 0, n));
        let v6 = |n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        let p = sesame_lab::ip_packet_udp(v4(2), v4(1), 40000, 62201, b"hello spa");
        assert_eq!(udp_payload(Link::Ip, &p), Some(&b"hello spa"[..]));
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&p);
        frame.extend_from_slice(&[0; 6]); // Ethernet padding
        assert_eq!(udp_payload(Link::Ethernet, &frame), Some(&b"hello spa"[..]));
        let p = sesame_lab::ip_packet_udp(v6(2), v6(1), 40000, 62201, b"six");
        assert_eq!(udp_payload(Link::Ip, &p), Some(&b"six"[..]));
        let t = sesame_lab::ip_packet_tcp(v4(2), v4(1), 40000, 22, 0x02);
        assert_eq!(udp_payload(Link::Ip, &t), None);
    }
}
