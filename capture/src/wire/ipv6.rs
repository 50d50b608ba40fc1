//! IPv6 headers (RFC 8200): the fixed header, and a bounded walk of the extension
//! header chain to the upper-layer header a knock's ports live in.

use std::net::Ipv6Addr;

use super::{be16, be32, ip_proto, need, WireError};

mod field {
    use std::ops::Range;

    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;

    /// Offsets inside an extension header.
    pub mod ext {
        use std::ops::Range;

        pub const NXT_HDR: usize = 0;
        pub const LENGTH: usize = 1;
        /// Fragment header: offset (13 bits), 2 reserved bits, M flag.
        pub const FRAG_OFF_M: Range<usize> = 2..4;
        pub const FRAG_IDENT: Range<usize> = 4..8;
    }
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Extension headers beyond this many are refused. Real traffic has one or two; the
/// bound keeps a crafted chain from costing more than a few reads.
pub const MAX_EXT_HEADERS: usize = 8;

/// The fragment header is 8 bytes long whatever its length byte says.
const FRAG_HEADER_LEN: usize = 8;

const LAYER: &str = "ipv6";
const EXT_LAYER: &str = "ipv6 extension header";

/// A view of an IPv6 packet.
///
/// After [`new_checked`](Self::new_checked): version is 6 and `40 + payload_len() <=
/// buffer length`; the accessors rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a malformed one.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the fixed header, the version, and that the payload length fits the buffer
    /// (a shorter payload length than the buffer is link-layer padding).
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need(LAYER, buf, HEADER_LEN)?;
        if self.version() != 6 {
            return Err(WireError::BadVersion { layer: LAYER, found: self.version() });
        }
        need(LAYER, buf, HEADER_LEN + usize::from(self.payload_len()))
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        ((be32(self.buffer.as_ref(), field::VER_TC_FLOW) >> 20) & 0xff) as u8
    }

    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Length of everything after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The first next-header value: an extension header or the upper-layer protocol.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv6Packet<&'a T> {
    /// Everything after the fixed header up to the payload length; padding excluded.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// Walks the extension headers (Hop-by-Hop, Routing, Fragment, Destination Options,
    /// AH) to the first header that is not one of them.
    ///
    /// The walk stops early at a fragment header with a non-zero offset, since what
    /// follows it is the middle of a datagram, not headers. Every header must lie whole
    /// inside the payload, and at most [`MAX_EXT_HEADERS`] are walked.
    pub fn header_chain(&self) -> Result<HeaderChain<'a>, WireError> {
        let payload = self.payload();
        let mut protocol = self.next_header();
        let mut offset = 0;
        let mut fragment = None;
        let mut ext_headers = 0;
        loop {
            let rest = payload.get(offset..).unwrap_or_default();
            let len = match protocol {
                ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS => {
                    need(EXT_LAYER, rest, 2)?;
                    (usize::from(rest[field::ext::LENGTH]) + 1) * 8
                }
                ip_proto::AH => {
                    // AH counts 4-byte words minus 2, unlike the others' 8-byte units minus 1.
                    need(EXT_LAYER, rest, 2)?;
                    (usize::from(rest[field::ext::LENGTH]) + 2) * 4
                }
                ip_proto::IPV6_FRAGMENT => FRAG_HEADER_LEN,
                _ => break,
            };
            if ext_headers == MAX_EXT_HEADERS {
                return Err(WireError::ExtChainTooLong { max: MAX_EXT_HEADERS });
            }
            need(EXT_LAYER, rest, len)?;
            ext_headers += 1;
            offset += len;
            let this = protocol;
            protocol = rest[field::ext::NXT_HDR];
            if this == ip_proto::IPV6_FRAGMENT {
                let off_m = be16(rest, field::ext::FRAG_OFF_M);
                let frag = Ipv6Fragment {
                    offset: off_m & 0xfff8,
                    more: off_m & 1 != 0,
                    ident: be32(rest, field::ext::FRAG_IDENT),
                };
                fragment = Some(frag);
                if frag.offset != 0 {
                    // What follows is the middle of the datagram, not headers.
                    break;
                }
            }
        }
        Ok(HeaderChain {
            protocol,
            offset,
            payload: payload.get(offset..).unwrap_or_default(),
            fragment,
            ext_headers,
        })
    }
}

fn addr(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0; 16];
    octets.copy_from_slice(bytes);
    Ipv6Addr::from(octets)
}

/// A fragment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Fragment {
    /// Offset of this piece in the datagram, in bytes (the field counts 8-byte units).
    pub offset: u16,
    /// The M flag: more pieces follow.
    pub more: bool,
    pub ident: u32,
}

/// Where the extension header walk of [`Ipv6Packet::header_chain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderChain<'a> {
    /// The first header that is not a walked extension header: 6 (TCP), 17 (UDP),
    /// 58 (ICMPv6), 50 (ESP), 59 (no next header), ... For a later fragment it is the
    /// datagram's, but its header is in the first fragment, not here.
    pub protocol: u8,
    /// Offset of that header from the start of the IPv6 payload.
    pub offset: usize,
    /// The bytes from that header to the end of the IPv6 payload.
    pub payload: &'a [u8],
    /// The fragment header, if one was walked.
    pub fragment: Option<Ipv6Fragment>,
    /// How many extension headers were walked.
    pub ext_headers: usize,
}

impl HeaderChain<'_> {
    /// Whether this is a fragment other than the first, which holds no upper-layer header.
    pub fn is_later_fragment(&self) -> bool {
        self.fragment.is_some_and(|frag| frag.offset != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv6 part of a real SYN from `knock -6 2001:db8::2 7000`, captured on a veth.
    const SYN: [u8; 80] = [
        0x60, 0x02, 0x2d, 0x74, 0x00, 0x28, 0x06, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x96, 0xce, 0x1b, 0x58, 0x4a, 0xa0, 0xfa, 0x71, 0x00, 0x00, 0x00,
        0x00, 0xa0, 0x02, 0xfd, 0x20, 0x5b, 0xa3, 0x00, 0x00, 0x02, 0x04, 0x05, 0xa0, 0x04, 0x02, 0x08, 0x0a,
        0x01, 0xc0, 0xcf, 0x9b, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// A real MLDv2 report as the kernel sends it: a Hop-by-Hop header carrying the
    /// router alert option, then ICMPv6.
    const MLD_REPORT: [u8; 96] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x38, 0x00, 0x01, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xdc,
        0x9a, 0x06, 0xff, 0xfe, 0xad, 0x4a, 0xa6, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x16, 0x3a, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00, 0x8f, 0x00, 0xf6,
        0xac, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xad, 0x4a, 0xa6,
    ];

    /// Real IPv6 UDP fragments (the first and last piece of a 2000-byte datagram).
    const FRAG_FIRST: &[u8] = include_bytes!("../../tests/fixtures/udp6_frag_first.bin");
    const FRAG_LAST: &[u8] = include_bytes!("../../tests/fixtures/udp6_frag_last.bin");

    const HBH_PADN: &[u8] = &[0, 0, 1, 4, 0, 0, 0, 0];
    const DEST_OPTS_16: &[u8] = &[0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    /// Type 2 routing header (RFC 6275), 24 bytes.
    const ROUTING_24: &[u8] =
        &[0, 2, 2, 1, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    /// AH: length byte 4 means (4 + 2) * 4 = 24 bytes (SPI, sequence, 12-byte ICV).
    const AH_24: &[u8] = &[0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn fragment(offset: u16, more: bool) -> Vec<u8> {
        let off_m = offset | u16::from(more);
        let mut h = vec![0, 0];
        h.extend_from_slice(&off_m.to_be_bytes());
        h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        h
    }

    /// The SYN with extension headers inserted in front of TCP, next-header fields and
    /// payload length fixed up. Each header is (its protocol number, its bytes).
    fn chained(exts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = SYN[..40].to_vec();
        let mut next_at = field::NXT_HDR;
        for (proto, bytes) in exts {
            out[next_at] = *proto;
            next_at = out.len();
            out.extend_from_slice(bytes);
        }
        out[next_at] = ip_proto::TCP;
        out.extend_from_slice(&SYN[40..]);
        let payload_len = u16::try_from(out.len() - 40).unwrap();
        out[4..6].copy_from_slice(&payload_len.to_be_bytes());
        out
    }

    #[test]
    fn syn_header_fields() {
        let ip = Ipv6Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.traffic_class(), 0);
        assert_eq!(ip.flow_label(), 0x22d74);
        assert_eq!(ip.payload_len(), 40);
        assert_eq!(ip.next_header(), ip_proto::TCP);
        assert_eq!(ip.hop_limit(), 64);
        assert_eq!(ip.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.payload(), &SYN[40..]);
        let chain = ip.header_chain().unwrap();
        assert_eq!(
            chain,
            HeaderChain {
                protocol: ip_proto::TCP,
                offset: 0,
                payload: &SYN[40..],
                fragment: None,
                ext_headers: 0
            }
        );
    }

    #[test]
    fn real_hop_by_hop() {
        let ip = Ipv6Packet::new_checked(&MLD_REPORT[..]).unwrap();
        assert_eq!(ip.next_header(), ip_proto::HOP_BY_HOP);
        let chain = ip.header_chain().unwrap();
        assert_eq!((chain.protocol, chain.offset, chain.ext_headers), (ip_proto::ICMPV6, 8, 1));
        assert_eq!(chain.payload[0], 143, "MLDv2 report type");
    }

    #[test]
    fn real_fragments() {
        let first = Ipv6Packet::new_checked(&FRAG_FIRST[14..]).unwrap();
        let chain = first.header_chain().unwrap();
        assert_eq!((chain.protocol, chain.offset), (ip_proto::UDP, 8));
        assert_eq!(chain.fragment, Some(Ipv6Fragment { offset: 0, more: true, ident: 0x168e12e2 }));
        assert!(!chain.is_later_fragment());
        assert_eq!(&chain.payload[2..4], &9000u16.to_be_bytes());

        let last = Ipv6Packet::new_checked(&FRAG_LAST[14..]).unwrap();
        let chain = last.header_chain().unwrap();
        assert_eq!(chain.protocol, ip_proto::UDP);
        assert_eq!(chain.fragment, Some(Ipv6Fragment { offset: 1448, more: false, ident: 0x168e12e2 }));
        assert!(chain.is_later_fragment());
    }

    #[test]
    fn walks_every_kind() {
        let frag0 = fragment(0, true);
        let bytes = chained(&[
            (ip_proto::HOP_BY_HOP, HBH_PADN),
            (ip_proto::IPV6_DEST_OPTS, DEST_OPTS_16),
            (ip_proto::IPV6_ROUTING, ROUTING_24),
            (ip_proto::IPV6_FRAGMENT, &frag0),
            (ip_proto::AH, AH_24),
            (ip_proto::IPV6_DEST_OPTS, DEST_OPTS_16),
        ]);
        let ip = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        let chain = ip.header_chain().unwrap();
        assert_eq!(chain.protocol, ip_proto::TCP);
        assert_eq!(chain.offset, 8 + 16 + 24 + 8 + 24 + 16);
        assert_eq!(chain.ext_headers, 6);
        assert_eq!(chain.payload, &SYN[40..]);
        assert_eq!(chain.fragment.map(|f| (f.offset, f.more)), Some((0, true)));
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        // Bytes after a later fragment's header are data, even if they look like headers.
        let frag = fragment(1448, false);
        let bytes = chained(&[(ip_proto::IPV6_FRAGMENT, &frag), (ip_proto::IPV6_DEST_OPTS, &[0, 200])]);
        let chain = Ipv6Packet::new_checked(&bytes[..]).unwrap().header_chain().unwrap();
        assert_eq!((chain.protocol, chain.offset, chain.ext_headers), (ip_proto::IPV6_DEST_OPTS, 8, 1));
        assert!(chain.is_later_fragment());
    }

    #[test]
    fn chain_bound() {
        let exts = [(ip_proto::IPV6_DEST_OPTS, HBH_PADN); MAX_EXT_HEADERS + 1];
        let bytes = chained(&exts[..MAX_EXT_HEADERS]);
        let chain = Ipv6Packet::new_checked(&bytes[..]).unwrap().header_chain().unwrap();
        assert_eq!((chain.protocol, chain.ext_headers), (ip_proto::TCP, MAX_EXT_HEADERS));
        let bytes = chained(&exts);
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..]).unwrap().header_chain(),
            Err(WireError::ExtChainTooLong { max: MAX_EXT_HEADERS })
        );
    }

    #[test]
    fn ending_headers() {
        for end in [ip_proto::ESP, ip_proto::IPV6_NO_NEXT, ip_proto::ICMPV6, 135] {
            let mut bytes = chained(&[(ip_proto::HOP_BY_HOP, HBH_PADN)]);
            bytes[40] = end;
            let chain = Ipv6Packet::new_checked(&bytes[..]).unwrap().header_chain().unwrap();
            assert_eq!((chain.protocol, chain.offset, chain.ext_headers), (end, 8, 1));
        }
    }

    #[test]
    fn truncated_chains() {
        // A header whose length byte runs past the payload, for each kind.
        for (proto, bytes) in [
            (ip_proto::HOP_BY_HOP, HBH_PADN),
            (ip_proto::IPV6_ROUTING, ROUTING_24),
            (ip_proto::IPV6_DEST_OPTS, DEST_OPTS_16),
            (ip_proto::AH, AH_24),
        ] {
            let mut long = bytes.to_vec();
            long[1] = 200;
            let packet = chained(&[(proto, &long)]);
            let need = if proto == ip_proto::AH { 202 * 4 } else { 201 * 8 };
            let have = packet.len() - 40;
            assert_eq!(
                Ipv6Packet::new_checked(&packet[..]).unwrap().header_chain(),
                Err(WireError::Truncated { layer: EXT_LAYER, need, have })
            );
        }
        // The payload ends inside a header: cut the payload length short at every byte.
        let frag = fragment(0, false);
        let full = chained(&[(ip_proto::HOP_BY_HOP, HBH_PADN), (ip_proto::IPV6_FRAGMENT, &frag)]);
        for payload_len in 0..16u16 {
            let mut cut = full.clone();
            cut[4..6].copy_from_slice(&payload_len.to_be_bytes());
            let ip = Ipv6Packet::new_checked(&cut[..]).unwrap();
            match ip.header_chain() {
                Err(WireError::Truncated { layer: EXT_LAYER, .. }) => {}
                other => panic!("payload length {payload_len}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_headers() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Ipv6Packet::new_checked(&SYN[..len]),
                Err(WireError::Truncated { layer: LAYER, need: 40, have: len })
            );
        }
        let mut v4 = SYN;
        v4[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&v4[..]), Err(WireError::BadVersion { layer: LAYER, found: 4 }));
        assert_eq!(
            Ipv6Packet::new_checked(&SYN[..79]),
            Err(WireError::Truncated { layer: LAYER, need: 80, have: 79 })
        );
        let mut padded = SYN.to_vec();
        padded.extend_from_slice(&[0xee; 8]);
        assert_eq!(Ipv6Packet::new_checked(&padded[..]).unwrap().payload(), &SYN[40..]);
    }
}
