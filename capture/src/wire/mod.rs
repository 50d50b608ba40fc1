//! Typed, zero-copy views over the headers a knock travels in: Ethernet (with
//! 802.1Q/802.1ad tags), IPv4, IPv6 (with its extension header chain), TCP and UDP.
//!
//! Every view wraps a `T: AsRef<[u8]>` and follows one rule: `new_checked` validates
//! the lengths and length fields once, after which every accessor is a cheap read
//! that cannot panic. `new_unchecked` skips the validation; its accessors may then
//! panic on a short buffer, so it is only for buffers already known to be well formed.
//! Nothing here allocates.

use std::ops::Range;

pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use ethernet::{ethertype, EthernetFrame, Untagged, VlanIds, VlanTag, MAX_VLAN_TAGS};
pub use ipv4::Ipv4Packet;
pub use ipv6::{HeaderChain, Ipv6Fragment, Ipv6Packet, MAX_EXT_HEADERS};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// IP protocol numbers (IPv4 `protocol`, IPv6 `next header`) that this crate names.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NO_NEXT: u8 = 59;
    pub const IPV6_DEST_OPTS: u8 = 60;
}

/// Why a buffer is not a well-formed header of the expected kind.
///
/// `Copy` and free of heap data, so the hot path can return and count it for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header (or the length its fields announce) does.
    #[error("{layer}: truncated, need {need} bytes, have {have}")]
    Truncated { layer: &'static str, need: usize, have: usize },
    /// The IP version nibble is not the one the header kind (or the ethertype) implies.
    #[error("{layer}: bad IP version {found}")]
    BadVersion { layer: &'static str, found: u8 },
    /// A header length field (IPv4 IHL, TCP data offset) is below the fixed header size.
    #[error("{layer}: header length {len} bytes is below the minimum")]
    BadHeaderLength { layer: &'static str, len: usize },
    /// A total length field (IPv4 total length, UDP length) is smaller than the header itself.
    #[error("{layer}: length field {len} is smaller than the header")]
    BadLength { layer: &'static str, len: usize },
    /// More stacked VLAN tags than [`MAX_VLAN_TAGS`].
    #[error("more than {max} stacked VLAN tags")]
    TooManyVlanTags { max: usize },
    /// More IPv6 extension headers than [`MAX_EXT_HEADERS`].
    #[error("IPv6 extension header chain longer than {max}")]
    ExtChainTooLong { max: usize },
}

impl WireError {
    /// Whether the error only says the buffer is too short (as opposed to a field lying).
    pub const fn is_truncated(&self) -> bool {
        matches!(self, WireError::Truncated { .. })
    }
}

/// Checks that `buf` holds at least `need` bytes; the error names `layer`.
#[inline]
pub(crate) fn need(layer: &'static str, buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated { layer, need, have: buf.len() })
    } else {
        Ok(())
    }
}

/// Big-endian u16 at a two-byte field. Callers pass fields inside a validated length.
#[inline]
pub(crate) fn be16(buf: &[u8], field: Range<usize>) -> u16 {
    u16::from_be_bytes([buf[field.start], buf[field.start + 1]])
}

/// Big-endian u32 at a four-byte field. Callers pass fields inside a validated length.
#[inline]
pub(crate) fn be32(buf: &[u8], field: Range<usize>) -> u32 {
    let b = &buf[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
