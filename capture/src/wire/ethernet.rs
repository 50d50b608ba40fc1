//! Ethernet II frames, and the 802.1Q / 802.1ad VLAN tags that may sit between the
//! MAC addresses and the ethertype of the real payload.
//!
//! A frame captured with VLAN offload on has its tag moved to packet metadata by the
//! kernel and arrives untagged; one captured with it off (or a QinQ frame's inner tag)
//! still carries tags in line, which [`EthernetFrame::untag`] skips.

use super::{be16, need, WireError};

/// Ethertypes this crate names.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service VLAN tag (the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag, still emitted by some switches.
    pub const QINQ_LEGACY: u16 = 0x9100;

    /// Whether the ethertype announces a VLAN tag rather than a payload.
    pub const fn is_vlan_tag(ethertype: u16) -> bool {
        matches!(ethertype, VLAN | QINQ | QINQ_LEGACY)
    }
}

/// Stacked tags beyond this are refused: QinQ needs two, and a bound keeps the walk short.
pub const MAX_VLAN_TAGS: usize = 2;

mod field {
    use std::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;

    /// Offsets inside a 4-byte VLAN tag (after the TPID that announced it).
    pub mod tag {
        use std::ops::Range;

        pub const TCI: Range<usize> = 0..2;
        pub const ETHERTYPE: Range<usize> = 2..4;
        pub const PAYLOAD: usize = 4;
    }
}

/// Length of the untagged Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// Length of one VLAN tag (TCI and inner ethertype; its TPID is the previous ethertype).
pub const VLAN_TAG_LEN: usize = field::tag::PAYLOAD;

/// A view of an Ethernet II frame: destination, source, ethertype, payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it; accessors panic if it is shorter than 14 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after checking that it holds the 14-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need("ethernet", self.buffer.as_ref(), HEADER_LEN)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::DST])
    }

    pub fn src_addr(&self) -> [u8; 6] {
        mac(&self.buffer.as_ref()[field::SRC])
    }

    /// The outer ethertype: a VLAN TPID if the frame is tagged.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// Everything after the 14-byte header (VLAN tags included, if any).
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// Skips the VLAN tags, at most [`MAX_VLAN_TAGS`] of them, to the real ethertype
    /// and its payload.
    pub fn untag(&self) -> Result<Untagged<'a>, WireError> {
        let mut ethertype = self.ethertype();
        let mut payload = self.payload();
        let mut vlans = VlanIds::default();
        while ethertype::is_vlan_tag(ethertype) {
            if vlans.len() == MAX_VLAN_TAGS {
                return Err(WireError::TooManyVlanTags { max: MAX_VLAN_TAGS });
            }
            let tag = VlanTag::new_checked(payload)?;
            vlans.push(tag.vlan_id());
            ethertype = tag.ethertype();
            payload = tag.payload();
        }
        Ok(Untagged { ethertype, vlans, payload })
    }
}

fn mac(bytes: &[u8]) -> [u8; 6] {
    let mut addr = [0; 6];
    addr.copy_from_slice(bytes);
    addr
}

/// A view of one VLAN tag, starting right after the TPID that announced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer without checking it; accessors panic if it is shorter than 4 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps a buffer after checking that it holds the 4-byte tag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let tag = Self::new_unchecked(buffer);
        need("vlan", tag.buffer.as_ref(), VLAN_TAG_LEN)?;
        Ok(tag)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn tci(&self) -> u16 {
        be16(self.buffer.as_ref(), field::tag::TCI)
    }

    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// The 12-bit VLAN identifier.
    pub fn vlan_id(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The ethertype after this tag: another TPID for QinQ, else the payload's.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::tag::ETHERTYPE)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> VlanTag<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::tag::PAYLOAD..]
    }
}

/// The VLAN ids of the tags skipped, outermost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VlanIds {
    ids: [u16; MAX_VLAN_TAGS],
    len: usize,
}

impl VlanIds {
    fn push(&mut self, id: u16) {
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[u16] {
        self.ids.get(..self.len).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The outermost tag's id (the service VLAN of a QinQ frame).
    pub fn outer(&self) -> Option<u16> {
        self.as_slice().first().copied()
    }

    /// The innermost tag's id (the customer VLAN of a QinQ frame; the only one otherwise).
    pub fn inner(&self) -> Option<u16> {
        self.as_slice().last().copied()
    }
}

/// A frame with its VLAN tags skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Untagged<'a> {
    /// The ethertype of `payload`.
    pub ethertype: u16,
    pub vlans: VlanIds,
    /// The layer-3 packet; it may end in Ethernet padding, which IP length fields exclude.
    pub payload: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ARP request, captured on a veth with `tcpdump -w` (198.18.0.1 asks for .2).
    const ARP_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6, 0x08, 0x06, 0x00, 0x01, 0x08,
        0x00, 0x06, 0x04, 0x00, 0x01, 0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6, 0xc6, 0x12, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0xc6, 0x12, 0x00, 0x02,
    ];

    /// The first 18 bytes of a real UDP knock frame (Ethernet header and the start of IPv4).
    const IPV4_START: [u8; 18] = [
        0x5a, 0xcd, 0x23, 0x02, 0x05, 0x32, 0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6, 0x08, 0x00, 0x45, 0x00, 0x00,
        0x1d,
    ];

    /// Inserts a tag (TPID, TCI) after the MAC addresses, as a switch port would.
    fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        for &(tpid, tci) in tags {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        out.extend_from_slice(&frame[12..]);
        out
    }

    #[test]
    fn arp_header_fields() {
        let frame = EthernetFrame::new_checked(&ARP_REQUEST[..]).unwrap();
        assert_eq!(frame.dst_addr(), [0xff; 6]);
        assert_eq!(frame.src_addr(), [0xde, 0x9a, 0x06, 0xad, 0x4a, 0xa6]);
        assert_eq!(frame.ethertype(), ethertype::ARP);
        assert_eq!(frame.payload().len(), 28);
        let l3 = frame.untag().unwrap();
        assert_eq!(l3.ethertype, ethertype::ARP);
        assert!(l3.vlans.is_empty());
        assert_eq!(l3.vlans.outer(), None);
        assert_eq!(l3.payload, &ARP_REQUEST[14..]);
    }

    #[test]
    fn short_frames_are_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_REQUEST[..len]),
                Err(WireError::Truncated { layer: "ethernet", need: 14, have: len })
            );
        }
        // A bare header is a frame with an empty payload.
        let frame = EthernetFrame::new_checked(&ARP_REQUEST[..14]).unwrap();
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn single_8021q_tag() {
        // PCP 5, DEI 1, VID 100.
        let bytes = tagged(&IPV4_START, &[(ethertype::VLAN, 0xb064)]);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.ethertype(), ethertype::VLAN);
        let tag = VlanTag::new_checked(frame.payload()).unwrap();
        assert_eq!((tag.pcp(), tag.dei(), tag.vlan_id()), (5, true, 100));
        assert_eq!(tag.ethertype(), ethertype::IPV4);
        let l3 = frame.untag().unwrap();
        assert_eq!(l3.ethertype, ethertype::IPV4);
        assert_eq!(l3.vlans.as_slice(), &[100]);
        assert_eq!(l3.payload, &IPV4_START[14..]);
    }

    #[test]
    fn qinq_tags() {
        for outer in [ethertype::QINQ, ethertype::QINQ_LEGACY, ethertype::VLAN] {
            let bytes = tagged(&IPV4_START, &[(outer, 200), (ethertype::VLAN, 300)]);
            let l3 = EthernetFrame::new_checked(&bytes[..]).unwrap().untag().unwrap();
            assert_eq!(l3.ethertype, ethertype::IPV4);
            assert_eq!(l3.vlans.as_slice(), &[200, 300]);
            assert_eq!((l3.vlans.outer(), l3.vlans.inner()), (Some(200), Some(300)));
            assert_eq!(l3.payload, &IPV4_START[14..]);
        }
    }

    #[test]
    fn too_many_tags() {
        let bytes = tagged(&IPV4_START, &[(ethertype::QINQ, 1), (ethertype::VLAN, 2), (ethertype::VLAN, 3)]);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.untag(), Err(WireError::TooManyVlanTags { max: MAX_VLAN_TAGS }));
    }

    #[test]
    fn truncated_tag() {
        let bytes = tagged(&IPV4_START, &[(ethertype::QINQ, 200), (ethertype::VLAN, 300)]);
        for len in [14, 15, 17, 18, 21] {
            let frame = EthernetFrame::new_checked(&bytes[..len]).unwrap();
            match frame.untag() {
                Err(WireError::Truncated { layer: "vlan", need: 4, .. }) => {}
                other => panic!("{len} bytes: {other:?}"),
            }
        }
        // Both tags whole, nothing after them: fine here, the IP layer will complain.
        let l3 = EthernetFrame::new_checked(&bytes[..22]).unwrap().untag().unwrap();
        assert!(l3.payload.is_empty());
    }
}
