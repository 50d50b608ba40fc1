//! IPv4 headers (RFC 791): addresses, protocol, fragmentation, and the payload
//! bounded by the total length field (so Ethernet padding never reaches TCP/UDP).

use std::net::Ipv4Addr;

use super::{be16, need, WireError};

mod field {
    use std::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of the header without options (IHL 5).
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const LAYER: &str = "ipv4";

/// A view of an IPv4 packet.
///
/// After [`new_checked`](Self::new_checked): version is 4, `20 <= header_len() <=
/// total_len() <= buffer length`; the accessors rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a malformed one.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version, that the IHL covers at least the fixed header and fits the
    /// buffer, and that the total length covers the header and fits the buffer.
    ///
    /// A total length shorter than the buffer is fine (link-layer padding); a longer
    /// one is reported as truncation, as a short snap length would cause it.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need(LAYER, buf, HEADER_LEN)?;
        if self.version() != 4 {
            return Err(WireError::BadVersion { layer: LAYER, found: self.version() });
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength { layer: LAYER, len: header_len });
        }
        need(LAYER, buf, header_len)?;
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::BadLength { layer: LAYER, len: total_len });
        }
        need(LAYER, buf, total_len)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length in bytes, header included.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    /// The DF flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x4000 != 0
    }

    /// The MF flag: more fragments follow this one.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x2000 != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff) << 3
    }

    /// Whether this packet is a piece of a fragmented datagram (first piece included).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The payload's IP protocol number (see [`super::ip_proto`]).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The options between the fixed header and the payload (often empty).
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload up to the total length; padding after it is excluded.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

fn addr(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto;

    /// The IPv4 part of a real SYN from `knock 198.18.0.2 7000`, captured on a veth.
    const SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0xc4, 0xe7, 0x40, 0x00, 0x40, 0x06, 0xe9, 0xac, 0xc6, 0x12, 0x00, 0x01, 0xc6,
        0x12, 0x00, 0x02, 0xb3, 0x3a, 0x1b, 0x58, 0x58, 0x2d, 0x96, 0xb1, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
        0xfa, 0xf0, 0x8c, 0x56, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xbf, 0xa9, 0xe8,
        0x67, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// IPv4 headers of the two pieces of a real 2000-byte UDP datagram sent over a
    /// 1500-byte MTU: the first (MF set, offset 0) and the last (offset 1480).
    const FRAG_FIRST: [u8; 20] = [
        0x45, 0x00, 0x05, 0xdc, 0x2e, 0x67, 0x20, 0x00, 0x40, 0x11, 0x9a, 0x82, 0xc6, 0x12, 0x00, 0x01, 0xc6,
        0x12, 0x00, 0x02,
    ];
    const FRAG_LAST: [u8; 20] = [
        0x45, 0x00, 0x02, 0x24, 0x2e, 0x67, 0x00, 0xb9, 0x40, 0x11, 0xbd, 0x81, 0xc6, 0x12, 0x00, 0x01, 0xc6,
        0x12, 0x00, 0x02,
    ];

    #[test]
    fn syn_header_fields() {
        let ip = Ipv4Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(ip.version(), 4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!((ip.dscp(), ip.ecn()), (0, 0));
        assert_eq!(ip.total_len(), 60);
        assert_eq!(ip.ident(), 0xc4e7);
        assert!(ip.dont_frag());
        assert!(!ip.more_frags());
        assert_eq!(ip.frag_offset(), 0);
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), 64);
        assert_eq!(ip.protocol(), ip_proto::TCP);
        assert_eq!(ip.checksum(), 0xe9ac);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert!(ip.options().is_empty());
        assert_eq!(ip.payload(), &SYN[20..]);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = SYN.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let ip = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(ip.payload(), &SYN[20..]);
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6: three NOPs and an end-of-options list.
        let mut bytes = SYN.to_vec();
        bytes.splice(20..20, [1, 1, 1, 0]);
        bytes[0] = 0x46;
        bytes[3] += 4;
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert_eq!(ip.options(), &[1, 1, 1, 0]);
        assert_eq!(ip.payload(), &SYN[20..]);
    }

    #[test]
    fn fragment_fields() {
        let first = Ipv4Packet::new_unchecked(&FRAG_FIRST[..]);
        assert!(first.more_frags() && !first.dont_frag());
        assert_eq!(first.frag_offset(), 0);
        assert!(first.is_fragment());
        assert_eq!(first.protocol(), ip_proto::UDP);
        let last = Ipv4Packet::new_unchecked(&FRAG_LAST[..]);
        assert!(!last.more_frags());
        assert_eq!(last.frag_offset(), 1480);
        assert!(last.is_fragment());
        // Header alone: the total lengths (1500, 548) announce bytes that are not there.
        assert_eq!(
            Ipv4Packet::new_checked(&FRAG_FIRST[..]),
            Err(WireError::Truncated { layer: LAYER, need: 1500, have: 20 })
        );
    }

    #[test]
    fn malformed_headers() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&SYN[..len]),
                Err(WireError::Truncated { layer: LAYER, need: 20, have: len })
            );
        }
        let with = |at: usize, byte: u8| {
            let mut bytes = SYN;
            bytes[at] = byte;
            Ipv4Packet::new_checked(bytes).map(|_| ())
        };
        assert_eq!(with(0, 0x65), Err(WireError::BadVersion { layer: LAYER, found: 6 }));
        assert_eq!(with(0, 0x05), Err(WireError::BadVersion { layer: LAYER, found: 0 }));
        for ihl in 0..5u8 {
            let len = usize::from(ihl) * 4;
            assert_eq!(with(0, 0x40 | ihl), Err(WireError::BadHeaderLength { layer: LAYER, len }));
        }
        // IHL 15 (60 bytes) fits this 60-byte buffer, but then the total length of 60
        // leaves no payload, which is still well formed.
        assert_eq!(with(0, 0x4f), Ok(()));
        assert_eq!(
            Ipv4Packet::new_checked(&SYN[..56]).map(|_| ()),
            Err(WireError::Truncated { layer: LAYER, need: 60, have: 56 })
        );
        assert_eq!(with(3, 19), Err(WireError::BadLength { layer: LAYER, len: 19 }));
        assert_eq!(with(3, 61), Err(WireError::Truncated { layer: LAYER, need: 61, have: 60 }));
        let mut ihl_beyond = SYN;
        ihl_beyond[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&ihl_beyond[..40]),
            Err(WireError::Truncated { layer: LAYER, need: 60, have: 40 })
        );
    }
}
