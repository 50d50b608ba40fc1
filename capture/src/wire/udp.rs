//! UDP headers (RFC 768): ports, and the length field bounding the payload.

use super::{be16, need, WireError};

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

const LAYER: &str = "udp";

/// A view of a UDP datagram.
///
/// After [`new_checked`](Self::new_checked): `8 <= len() <= buffer length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on a malformed one.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header is there and that the length field covers it and lies
    /// within the buffer.
    ///
    /// The first fragment of a fragmented datagram fails the last check, as its length
    /// field counts the pieces still to come; use [`check_header`](Self::check_header)
    /// to accept it.
    pub fn check_len(&self) -> Result<(), WireError> {
        self.check_header()?;
        need(LAYER, self.buffer.as_ref(), usize::from(self.len()))
    }

    /// Checks only that the header is there and that the length field covers it: all
    /// the port accessors need, and all a first fragment can offer.
    pub fn check_header(&self) -> Result<(), WireError> {
        need(LAYER, self.buffer.as_ref(), HEADER_LEN)?;
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(WireError::BadLength { layer: LAYER, len });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header and payload, in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The payload up to the length field, or to the end of the buffer if that comes
    /// first (as in a first fragment accepted by [`check_header`](Self::check_header)).
    pub fn payload(&self) -> &'a [u8] {
        let buf = self.buffer.as_ref();
        let end = usize::from(self.len()).min(buf.len());
        buf.get(HEADER_LEN..end).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UDP part of a real datagram from `knock -u 198.18.0.2 8000` (one zero byte).
    const KNOCK: [u8; 9] = [0xb6, 0x2a, 0x1f, 0x40, 0x00, 0x09, 0x8c, 0x42, 0x00];

    /// The UDP header of the first fragment of a real 2000-byte datagram.
    const FIRST_FRAGMENT: [u8; 12] = [0xcb, 0x2c, 0x23, 0x28, 0x07, 0xd8, 0xda, 0x25, 0x6b, 0x6b, 0x6b, 0x6b];

    #[test]
    fn knock_fields() {
        let udp = UdpPacket::new_checked(&KNOCK[..]).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (46634, 8000));
        assert_eq!((udp.len(), udp.checksum()), (9, 0x8c42));
        assert_eq!(udp.payload(), &[0]);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = KNOCK.to_vec();
        padded.extend_from_slice(&[0xee; 9]);
        assert_eq!(UdpPacket::new_checked(&padded[..]).unwrap().payload(), &[0]);
    }

    #[test]
    fn first_fragment() {
        let udp = UdpPacket::new_unchecked(&FIRST_FRAGMENT[..]);
        assert_eq!(udp.check_len(), Err(WireError::Truncated { layer: LAYER, need: 2008, have: 12 }));
        assert_eq!(udp.check_header(), Ok(()));
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (52012, 9000, 2008));
        assert_eq!(udp.payload(), b"kkkk");
    }

    #[test]
    fn malformed_headers() {
        for len in 0..HEADER_LEN {
            let udp = UdpPacket::new_unchecked(&KNOCK[..len]);
            let err = Err(WireError::Truncated { layer: LAYER, need: 8, have: len });
            assert_eq!(udp.check_header(), err);
            assert_eq!(udp.check_len(), err);
        }
        assert_eq!(
            UdpPacket::new_checked(&KNOCK[..8]),
            Err(WireError::Truncated { layer: LAYER, need: 9, have: 8 })
        );
        for len in 0..8u8 {
            let mut bytes = KNOCK;
            bytes[5] = len;
            let err = Err(WireError::BadLength { layer: LAYER, len: usize::from(len) });
            assert_eq!(UdpPacket::new_unchecked(bytes).check_header(), err);
            assert_eq!(UdpPacket::new_checked(bytes).map(|_| ()), err);
        }
    }
}
