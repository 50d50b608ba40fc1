//! Link types: what the frames of an interface start with, so the ring, the filter and
//! the parser agree on where the IP header is.
//!
//! Ethernet-like interfaces (physical NICs, veth, bridges, VLAN and macvlan devices,
//! `lo`) carry an Ethernet header; tunnels (tun, WireGuard, PPP, GRE, SIT, IPIP) carry
//! the IP packet alone, or a header of their own that a `SOCK_DGRAM` packet socket
//! strips. The kernel says which through the interface's `ARPHRD_*` type.

use std::fmt;

use crate::error::CaptureError;
use crate::frame::{parse_frame, parse_ip_packet, FrameError, Knock};
use crate::{iface, sys};

/// `ARPHRD_*` hardware types (`linux/if_arp.h`) that [`Link::from_arphrd`] knows; libc
/// lacks some of them.
pub mod arphrd {
    pub const ETHER: u16 = 1;
    pub const PPP: u16 = 512;
    /// Raw IP (e.g. cellular modems' `qmi_wwan` in raw-IP mode).
    pub const RAWIP: u16 = 519;
    /// IPIP tunnel.
    pub const TUNNEL: u16 = 768;
    /// IP6IP6 / ip6tnl tunnel.
    pub const TUNNEL6: u16 = 769;
    pub const LOOPBACK: u16 = 772;
    /// SIT (IPv6 in IPv4).
    pub const SIT: u16 = 776;
    pub const IPGRE: u16 = 778;
    pub const IP6GRE: u16 = 823;
    /// No hardware header: tun (`IFF_TUN`), WireGuard.
    pub const NONE: u16 = 0xfffe;
}

/// What a captured frame starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// An Ethernet header (maybe with VLAN tags in line), then the IP packet. The ring
    /// opens its socket `SOCK_RAW`.
    Ethernet,
    /// The IPv4 or IPv6 header. The ring opens its socket `SOCK_DGRAM`, so whatever
    /// link-layer header the device has is not in the frame (nor seen by the filter).
    Ip,
}

impl Link {
    /// Reads the interface's ARPHRD type (ioctl `SIOCGIFHWADDR` on a socket, in sys.rs:
    /// correct in any network namespace, unlike `/sys`).
    ///
    /// [`CaptureError::UnsupportedLink`] for a type that carries neither Ethernet nor
    /// bare IP (InfiniBand, CAN, IEEE 802.15.4, ...).
    pub fn of(ifname: &str) -> Result<Link, CaptureError> {
        if !iface::valid_name(ifname) {
            return Err(CaptureError::InvalidInterfaceName(ifname.to_owned()));
        }
        let arphrd = sys::link_type(ifname).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => CaptureError::NoSuchInterface(ifname.to_owned()),
            _ => CaptureError::sys("ioctl(SIOCGIFHWADDR)", ifname, e),
        })?;
        Link::from_arphrd(arphrd)
            .ok_or_else(|| CaptureError::UnsupportedLink { ifname: ifname.to_owned(), arphrd })
    }

    /// The link type of frames from an interface of hardware type `arphrd`, if known.
    pub const fn from_arphrd(arphrd: u16) -> Option<Link> {
        match arphrd {
            arphrd::ETHER | arphrd::LOOPBACK => Some(Link::Ethernet),
            arphrd::NONE
            | arphrd::PPP
            | arphrd::RAWIP
            | arphrd::TUNNEL
            | arphrd::TUNNEL6
            | arphrd::SIT
            | arphrd::IPGRE
            | arphrd::IP6GRE => Some(Link::Ip),
            _ => None,
        }
    }

    /// Ethernet -> [`parse_frame`]; Ip -> [`parse_ip_packet`].
    #[inline]
    pub fn parse(self, frame: &[u8]) -> Result<Knock, FrameError> {
        match self {
            Link::Ethernet => parse_frame(frame),
            Link::Ip => parse_ip_packet(frame),
        }
    }

    /// For logs: "ethernet" / "raw IP".
    pub const fn name(self) -> &'static str {
        match self {
            Link::Ethernet => "ethernet",
            Link::Ip => "raw IP",
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::frame::{tcp_flags, Proto};
    use crate::wire::WireError;

    #[test]
    fn arphrd_types() {
        for t in [arphrd::ETHER, arphrd::LOOPBACK] {
            assert_eq!(Link::from_arphrd(t), Some(Link::Ethernet), "{t}");
        }
        for t in [
            arphrd::NONE,
            arphrd::PPP,
            arphrd::RAWIP,
            arphrd::TUNNEL,
            arphrd::TUNNEL6,
            arphrd::SIT,
            arphrd::IPGRE,
            arphrd::IP6GRE,
        ] {
            assert_eq!(Link::from_arphrd(t), Some(Link::Ip), "{t}");
        }
        // InfiniBand, CAN, IEEE 802.15.4, ARPHRD_VOID.
        for t in [32u16, 280, 804, 0xffff] {
            assert_eq!(Link::from_arphrd(t), None, "{t}");
        }
        // Kept in step with libc where it has them.
        assert_eq!(arphrd::ETHER, libc::ARPHRD_ETHER);
        assert_eq!(arphrd::LOOPBACK, libc::ARPHRD_LOOPBACK);
        assert_eq!(arphrd::NONE, libc::ARPHRD_NONE);
        assert_eq!(arphrd::PPP, libc::ARPHRD_PPP);
        assert_eq!(arphrd::TUNNEL6, libc::ARPHRD_TUNNEL6);
        assert_eq!(arphrd::SIT, libc::ARPHRD_SIT);
        assert_eq!(arphrd::IPGRE, libc::ARPHRD_IPGRE);
    }

    #[test]
    fn loopback_is_ethernet() {
        assert_eq!(Link::of("lo").unwrap(), Link::Ethernet);
    }

    #[test]
    fn missing_and_invalid_interfaces() {
        assert!(
            matches!(Link::of("sesame-nope0"), Err(CaptureError::NoSuchInterface(n)) if n == "sesame-nope0")
        );
        for bad in ["", "a/b", "sixteen-chars-xx"] {
            assert!(matches!(Link::of(bad), Err(CaptureError::InvalidInterfaceName(_))), "{bad:?}");
        }
        let err = CaptureError::UnsupportedLink { ifname: "ib0".into(), arphrd: 32 };
        let msg = err.to_string();
        assert!(msg.contains("ib0") && msg.contains("32"), "{msg}");
    }

    #[test]
    fn names() {
        assert_eq!(Link::Ethernet.name(), "ethernet");
        assert_eq!(Link::Ip.to_string(), "raw IP");
    }

    #[test]
    fn parse_per_link() {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
        let packet = sesame_lab::ip_packet_tcp(src, dst, 40000, 7000, tcp_flags::SYN);
        let knock =
            Knock { src, dst, proto: Proto::Tcp, src_port: 40000, dst_port: 7000, tcp_flags: tcp_flags::SYN };
        assert_eq!(Link::Ip.parse(&packet), Ok(knock));
        let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend_from_slice(&packet);
        assert_eq!(Link::Ethernet.parse(&frame), Ok(knock));
        // Each link's parser on the other's frames.
        assert!(Link::Ip.parse(&frame).is_err());
        assert!(Link::Ethernet.parse(&packet).is_err());

        let src6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let dst6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let udp = sesame_lab::ip_packet_udp(src6, dst6, 40001, 9000, b"knock");
        assert_eq!(
            Link::Ip.parse(&udp),
            Ok(Knock {
                src: src6,
                dst: dst6,
                proto: Proto::Udp,
                src_port: 40001,
                dst_port: 9000,
                tcp_flags: 0
            })
        );
        assert_eq!(
            Link::Ip.parse(&[]),
            Err(FrameError::Malformed(WireError::Truncated { layer: "ip", need: 1, have: 0 }))
        );
    }
}
