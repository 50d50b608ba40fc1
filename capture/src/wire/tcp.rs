//! TCP headers (RFC 9293): the ports and flags a knock is matched on, and the data
//! offset that says where options end.

use super::{be16, be32, need, WireError};

mod field {
    use std::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset in the high nibble; the low bit is the obsolete NS flag.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of the header without options (data offset 5).
pub const HEADER_LEN: usize = field::URGENT.end;

/// The flags [`crate::frame::tcp_flags`] names (FIN..URG); ECE and CWR lie above them.
pub const FLAGS_MASK: u8 = 0x3f;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const LAYER: &str = "tcp";

/// A view of a TCP segment.
///
/// After [`new_checked`](Self::new_checked): `20 <= header_len() <= buffer length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on a malformed one.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed header is there and that the data offset covers it and
    /// lies within the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need(LAYER, buf, HEADER_LEN)?;
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength { layer: LAYER, len: header_len });
        }
        need(LAYER, buf, header_len)
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

    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// FIN, SYN, RST, PSH, ACK and URG, as the bits of [`crate::frame::tcp_flags`].
    ///
    /// ECE and CWR are masked off: a SYN that negotiates ECN carries both, and it is
    /// still a SYN to a knock sequence.
    pub fn flags(&self) -> u8 {
        self.raw_flags() & FLAGS_MASK
    }

    /// The whole flags byte, ECE and CWR included.
    pub fn raw_flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    fn flag(&self, bit: u8) -> bool {
        self.raw_flags() & bit != 0
    }

    pub fn fin(&self) -> bool {
        self.flag(crate::frame::tcp_flags::FIN)
    }

    pub fn syn(&self) -> bool {
        self.flag(crate::frame::tcp_flags::SYN)
    }

    pub fn rst(&self) -> bool {
        self.flag(crate::frame::tcp_flags::RST)
    }

    pub fn psh(&self) -> bool {
        self.flag(crate::frame::tcp_flags::PSH)
    }

    pub fn ack(&self) -> bool {
        self.flag(crate::frame::tcp_flags::ACK)
    }

    pub fn urg(&self) -> bool {
        self.flag(crate::frame::tcp_flags::URG)
    }

    pub fn ece(&self) -> bool {
        self.flag(ECE)
    }

    pub fn cwr(&self) -> bool {
        self.flag(CWR)
    }

    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TcpPacket<&'a T> {
    /// The options between the fixed header and the data (often empty).
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The segment's data.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tcp_flags;

    /// The TCP part of a real SYN from `knock 198.18.0.2 7000` (Linux options: MSS,
    /// SACK permitted, timestamps, window scale).
    const SYN: [u8; 40] = [
        0xb3, 0x3a, 0x1b, 0x58, 0x58, 0x2d, 0x96, 0xb1, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x8c,
        0x56, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xbf, 0xa9, 0xe8, 0x67, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// The TCP part of the RST+ACK the closed port 7000 answered with.
    const RST_ACK: [u8; 20] = [
        0x1b, 0x58, 0xb3, 0x3a, 0x00, 0x00, 0x00, 0x00, 0x58, 0x2d, 0x96, 0xb2, 0x50, 0x14, 0x00, 0x00, 0x66,
        0x36, 0x00, 0x00,
    ];

    #[test]
    fn syn_fields() {
        let tcp = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (45882, 7000));
        assert_eq!((tcp.seq_number(), tcp.ack_number()), (0x582d_96b1, 0));
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), tcp_flags::SYN);
        assert!(tcp.syn() && !tcp.ack() && !tcp.fin() && !tcp.rst() && !tcp.psh() && !tcp.urg());
        assert_eq!((tcp.window_len(), tcp.checksum(), tcp.urgent_at()), (64240, 0x8c56, 0));
        assert_eq!(tcp.options(), &SYN[20..]);
        assert!(tcp.payload().is_empty());
    }

    #[test]
    fn rst_ack_fields() {
        let tcp = TcpPacket::new_checked(&RST_ACK[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (7000, 45882));
        assert_eq!(tcp.ack_number(), 0x582d_96b2);
        assert_eq!(tcp.flags(), tcp_flags::RST | tcp_flags::ACK);
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert!(tcp.options().is_empty() && tcp.payload().is_empty());
    }

    #[test]
    fn ecn_bits_are_masked() {
        let mut ecn_syn = SYN;
        ecn_syn[field::FLAGS] = 0xc2;
        let tcp = TcpPacket::new_checked(&ecn_syn[..]).unwrap();
        assert_eq!(tcp.raw_flags(), 0xc2);
        assert_eq!(tcp.flags(), tcp_flags::SYN);
        assert!(tcp.ece() && tcp.cwr());
    }

    #[test]
    fn payload_after_options() {
        let mut with_data = SYN.to_vec();
        with_data.extend_from_slice(b"open");
        let tcp = TcpPacket::new_checked(&with_data[..]).unwrap();
        assert_eq!(tcp.payload(), b"open");
    }

    #[test]
    fn malformed_headers() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]),
                Err(WireError::Truncated { layer: LAYER, need: 20, have: len })
            );
        }
        for len in HEADER_LEN..SYN.len() {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]),
                Err(WireError::Truncated { layer: LAYER, need: 40, have: len })
            );
        }
        for off in 0..5u8 {
            let mut bytes = RST_ACK;
            bytes[field::DATA_OFF] = off << 4;
            let len = usize::from(off) * 4;
            assert_eq!(TcpPacket::new_checked(bytes), Err(WireError::BadHeaderLength { layer: LAYER, len }));
        }
        let mut beyond = SYN;
        beyond[field::DATA_OFF] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(beyond),
            Err(WireError::Truncated { layer: LAYER, need: 60, have: 40 })
        );
    }
}
