//! A TPACKET_V3 `AF_PACKET` RX ring on one interface, read in place.
//!
//! The kernel fills fixed-size blocks with frames that passed the socket's classic BPF
//! filter and hands each block over when it is full or `block_timeout_ms` passed.
//! [`Ring::next_block`] waits for the next block and returns it as a [`Block`] guard;
//! its frames borrow the mapping (no copy), and dropping the guard gives the block back
//! to the kernel. Every offset the kernel wrote is bounds-checked before use.
//!
//! A ring's socket is `SOCK_RAW` on an [`Link::Ethernet`] link and `SOCK_DGRAM` on a
//! [`Link::Ip`] one, so its frames start at the Ethernet header or at the IP header.
//! When the interface goes down or is deleted the kernel sets `ENETDOWN` on the socket;
//! [`Ring::next_block`] and [`wait_any`] report it once ([`CaptureError::InterfaceDown`]
//! or a bit of [`Ready::errored`]) and clear it, so waiting on a dead ring sleeps
//! instead of spinning on `POLLERR`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::CaptureError;
use crate::filter::Program;
use crate::iface;
use crate::link::Link;
use crate::sys::{self, PacketSocket, RingMap};

/// Size of `struct tpacket_block_desc` with its `tpacket_hdr_v1`: where the block
/// header ends (the kernel puts the first packet at or after this offset).
const BLOCK_HDR_LEN: usize = 48;
/// Size of `struct tpacket3_hdr`.
const PKT_HDR_LEN: usize = 48;
/// `ETH_P_ALL`: every ethertype (the BPF filter does the selection).
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
/// Most rings [`wait_any`] waits on (the width of [`Ready::errored`]).
pub const MAX_WAIT_RINGS: usize = 64;

/// Geometry and options of a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block: a power of two, a multiple of the page size. Default 1 MiB.
    pub block_size: u32,
    /// Number of blocks. Default 8.
    pub block_count: u32,
    /// `tp_frame_size`: TPACKET_V3 packs frames of any size, so this only sets the
    /// nominal frame count the kernel checks; a multiple of 16, at most `block_size`.
    /// Default 2048.
    pub frame_size: u32,
    /// `tp_retire_blk_tov`: a block that is not full is handed over after this many
    /// milliseconds if it holds a packet. 0 lets the kernel pick from the link speed.
    /// Default 1: a knock waits at most this long in a block before the worker can see
    /// it (the firewall's knock-to-open latency starts here). The kernel's timer runs
    /// this often whatever the traffic, which costs next to nothing.
    pub block_timeout_ms: u32,
    /// Join a fanout group, to spread the interface's packets over several rings.
    pub fanout: Option<Fanout>,
    /// What the frames start with; pick it with [`Link::of`] and build the filter for
    /// the same link. Default [`Link::Ethernet`].
    pub link: Link,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            block_size: 1 << 20,
            block_count: 8,
            frame_size: 2048,
            block_timeout_ms: 1,
            fanout: None,
            link: Link::Ethernet,
        }
    }
}

impl RingConfig {
    /// Checks what the kernel would reject (or what would waste memory) up front, with
    /// a readable reason.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let bad = |why: String| Err(CaptureError::InvalidConfig(why));
        let page = sys::page_size();
        let bs = self.block_size as usize;
        if !self.block_size.is_power_of_two() || bs & (page - 1) != 0 {
            return bad(format!(
                "block_size {} is not a power of two multiple of the page size {page}",
                self.block_size
            ));
        }
        if self.block_count == 0 {
            return bad("block_count is 0".into());
        }
        if !matches!(self.block_size.checked_mul(self.block_count), Some(total) if total <= i32::MAX as u32) {
            return bad(format!("ring of {} x {} bytes is too large", self.block_count, self.block_size));
        }
        let min_frame = (libc::TPACKET3_HDRLEN + 15) & !15;
        if self.frame_size & 15 != 0
            || (self.frame_size as usize) < min_frame
            || self.frame_size > self.block_size
        {
            return bad(format!(
                "frame_size {} must be a multiple of 16 between {min_frame} and block_size",
                self.frame_size
            ));
        }
        Ok(())
    }
}

/// Membership of a `PACKET_FANOUT` group: every ring of one group (same id, same
/// interface, same mode) gets a share of the packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fanout {
    pub group_id: u16,
    pub mode: FanoutMode,
}

/// How a fanout group picks the ring for a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanoutMode {
    /// By the kernel's flow hash (addresses and ports: the knocks of one client to
    /// different ports may land on different rings).
    Hash,
    /// By the CPU that received the packet.
    Cpu,
    /// Round robin.
    Lb,
    /// By a classic BPF program's return value, modulo the group size
    /// (`PACKET_FANOUT_CBPF`), e.g. a hash of the source address only.
    Cbpf(Program),
}

/// Ring counters since the ring was opened (the kernel's counters reset on every
/// read; the ring adds them up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames that passed the filter, including the dropped ones.
    pub packets: u64,
    /// Frames that passed the filter but found no room in the ring.
    pub drops: u64,
    /// Times the ring was full ("frozen") because user space held every block.
    pub freeze_q_cnt: u64,
}

/// A TPACKET_V3 RX ring bound to one interface. Dropping it unmaps the ring and
/// closes the socket.
#[derive(Debug)]
pub struct Ring {
    // Field order is drop order: unmap first, then close.
    map: RingMap,
    sock: PacketSocket,
    ifname: String,
    ifindex: u32,
    link: Link,
    /// The block the kernel fills next, and the one we wait for.
    current: usize,
    totals: Mutex<RingStats>,
}

impl Ring {
    /// Opens a ring on `ifname` that receives only what `filter` passes.
    ///
    /// The filter is attached before the socket is bound, so no unfiltered frame is
    /// ever queued; it sees the frames as the ring will hold them, so it must be built
    /// for `cfg.link`. Outgoing frames are not captured (kernel 4.20 and later; on older
    /// kernels they are, and the filter's destination check drops most of them).
    ///
    /// An interface that is down when the ring opens makes the first wait report
    /// [`CaptureError::InterfaceDown`]; the ring receives once it comes up.
    pub fn open(ifname: &str, cfg: &RingConfig, filter: &Program) -> Result<Ring, CaptureError> {
        cfg.validate()?;
        let ifindex = iface::index(ifname)?;
        let err = |op: &'static str| move |e| CaptureError::sys(op, ifname, e);
        // SOCK_DGRAM: tpacket_rcv() then neither pushes the link-layer header back for
        // the filter nor copies it into the ring (tp_mac == tp_net), so the filter and
        // the frame both start at the network header, whatever header the device has.
        let (sock_type, op) = match cfg.link {
            Link::Ethernet => (libc::SOCK_RAW, "socket(AF_PACKET, SOCK_RAW)"),
            Link::Ip => (libc::SOCK_DGRAM, "socket(AF_PACKET, SOCK_DGRAM)"),
        };
        // Protocol 0: nothing is received until bind() below.
        let sock = PacketSocket::open(sock_type).map_err(err(op))?;
        sock.attach_filter(&filter.to_sock_filters()).map_err(err("setsockopt(SO_ATTACH_FILTER)"))?;
        sock.set_int(libc::SOL_PACKET, libc::PACKET_VERSION, sys::TPACKET_V3)
            .map_err(err("setsockopt(PACKET_VERSION, TPACKET_V3)"))?;
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.block_size,
            tp_block_nr: cfg.block_count,
            tp_frame_size: cfg.frame_size,
            tp_frame_nr: (cfg.block_size / cfg.frame_size) * cfg.block_count,
            tp_retire_blk_tov: cfg.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: libc::TP_FT_REQ_FILL_RXHASH,
        };
        sock.set_rx_ring(&req).map_err(err("setsockopt(PACKET_RX_RING)"))?;
        let map = sock
            .map_ring(cfg.block_size as usize, cfg.block_count as usize)
            .map_err(err("mmap(PACKET_RX_RING)"))?;
        match sock.set_int(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1) {
            Ok(()) => {}
            // Before 4.20: no such option; we also see what we send.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => return Err(CaptureError::sys("setsockopt(PACKET_IGNORE_OUTGOING)", ifname, e)),
        }
        sock.bind(ifindex, ETH_P_ALL).map_err(err("bind(AF_PACKET)"))?;
        if let Some(f) = &cfg.fanout {
            let (mode, prog) = match &f.mode {
                FanoutMode::Hash => (libc::PACKET_FANOUT_HASH, None),
                FanoutMode::Cpu => (libc::PACKET_FANOUT_CPU, None),
                FanoutMode::Lb => (libc::PACKET_FANOUT_LB, None),
                FanoutMode::Cbpf(p) => (libc::PACKET_FANOUT_CBPF, Some(p)),
            };
            // PACKET_FANOUT takes the group id in the low 16 bits, mode and flags above.
            let arg = u32::from(f.group_id) | (mode << 16);
            sock.set_int(libc::SOL_PACKET, libc::PACKET_FANOUT, arg as libc::c_int)
                .map_err(err("setsockopt(PACKET_FANOUT)"))?;
            if let Some(p) = prog {
                sock.set_fanout_data(&p.to_sock_filters()).map_err(err("setsockopt(PACKET_FANOUT_DATA)"))?;
            }
        }
        Ok(Ring {
            map,
            sock,
            ifname: ifname.to_owned(),
            ifindex,
            link: cfg.link,
            current: 0,
            totals: Mutex::new(RingStats::default()),
        })
    }

    /// Replaces the socket's filter (e.g. on a configuration reload). The kernel swaps
    /// the program atomically; frames already in the ring stay there.
    pub fn set_filter(&self, filter: &Program) -> Result<(), CaptureError> {
        self.sock
            .attach_filter(&filter.to_sock_filters())
            .map_err(|e| CaptureError::sys("setsockopt(SO_ATTACH_FILTER)", &self.ifname, e))
    }

    /// Waits up to `timeout` for the kernel to hand over the next block.
    ///
    /// `Ok(None)` on timeout, and also when a signal interrupted the wait (`EINTR`),
    /// so the caller can look at its flags. A zero timeout only checks (and does not
    /// look for socket errors: [`wait_any`] does).
    ///
    /// Blocks already handed over come first; then, if the interface went down or was
    /// deleted, [`CaptureError::InterfaceDown`], once: the error is cleared, so the next
    /// call waits normally (and receives again if the interface comes back up).
    pub fn next_block(&mut self, timeout: Duration) -> Result<Option<Block<'_>>, CaptureError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.has_block() {
                let index = self.current;
                return Ok(Some(Block { ring: self, index }));
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if wait.is_zero() {
                return Ok(None);
            }
            match self.sock.poll_events(libc::POLLIN, poll_ms(wait)) {
                Ok(revents) if revents & libc::POLLNVAL != 0 => {
                    return Err(CaptureError::sys(
                        "poll",
                        &self.ifname,
                        std::io::Error::from_raw_os_error(libc::EBADF),
                    ))
                }
                // sk_err stays set, and poll keeps saying POLLERR, until SO_ERROR reads it:
                // take it now, or this loop would spin. (POLLERR with no error pending
                // would need a non-empty error queue, which only TX timestamps fill.)
                Ok(revents) if revents & libc::POLLERR != 0 => {
                    if let Some(e) = self.take_socket_error()? {
                        return Err(e);
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(CaptureError::sys("poll", &self.ifname, e)),
            }
        }
    }

    /// Whether the kernel has handed over the block we read next.
    fn has_block(&self) -> bool {
        self.map.block_status(self.current) & libc::TP_STATUS_USER != 0
    }

    /// Reads and clears the socket's pending error (`SO_ERROR`): `ENETDOWN`, set by the
    /// kernel's packet_notifier() on NETDEV_DOWN and NETDEV_UNREGISTER (and by bind()
    /// on a down interface), is [`CaptureError::InterfaceDown`].
    fn take_socket_error(&self) -> Result<Option<CaptureError>, CaptureError> {
        match self.sock.take_error() {
            Ok(None) => Ok(None),
            Ok(Some(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => {
                Ok(Some(CaptureError::InterfaceDown { ifname: self.ifname.clone() }))
            }
            Ok(Some(e)) => Ok(Some(CaptureError::sys("socket error (SO_ERROR)", &self.ifname, e))),
            Err(e) => Err(CaptureError::sys("getsockopt(SO_ERROR)", &self.ifname, e)),
        }
    }

    /// Counters since the ring was opened (`PACKET_STATISTICS`, accumulated).
    pub fn stats(&self) -> Result<RingStats, CaptureError> {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let st = self
            .sock
            .stats_v3()
            .map_err(|e| CaptureError::sys("getsockopt(PACKET_STATISTICS)", &self.ifname, e))?;
        totals.packets += u64::from(st.tp_packets);
        totals.drops += u64::from(st.tp_drops);
        totals.freeze_q_cnt += u64::from(st.tp_freeze_q_cnt);
        Ok(*totals)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// What the ring's frames start with (as configured).
    pub fn link(&self) -> Link {
        self.link
    }

    /// Bytes per block, as configured.
    pub fn block_size(&self) -> usize {
        self.map.block_size()
    }
}

/// The socket, for callers that multiplex several rings with `poll`/`epoll`: it is
/// readable when a block is waiting. Read blocks only through [`Ring::next_block`].
impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Milliseconds for `poll`, rounded up so a sub-millisecond rest does not turn into a
/// busy loop; at most `i32::MAX` (about 25 days).
fn poll_ms(wait: Duration) -> libc::c_int {
    wait.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
}

/// What [`wait_any`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Bit `i`: ring `i` had a socket error, now read and cleared (`ENETDOWN`: its
    /// interface went down or away).
    pub errored: u64,
}

/// Waits until one of `rings` (at most [`MAX_WAIT_RINGS`]) has a block for user space
/// or a socket error, `timeout` passes, or a signal interrupts the wait (`EINTR`), for a
/// worker that owns one ring per interface. Then call `ring.next_block(Duration::ZERO)`
/// on each ring.
///
/// A socket error is read and cleared (`SO_ERROR`) here; bit `i` of
/// [`Ready::errored`] says ring `i` had one (`ENETDOWN`: its interface went down or
/// away; the kernel sets no other error on a packet socket that only receives). A ring
/// with a block already waiting makes this only check for errors. One `poll` call; the
/// pollfds live on the stack.
pub fn wait_any(rings: &[Ring], timeout: Duration) -> Result<Ready, CaptureError> {
    if rings.len() > MAX_WAIT_RINGS {
        return Err(CaptureError::InvalidConfig(format!(
            "wait_any takes at most {MAX_WAIT_RINGS} rings, got {}",
            rings.len()
        )));
    }
    let mut fds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; MAX_WAIT_RINGS];
    let mut waiting = false;
    for (pfd, ring) in fds.iter_mut().zip(rings) {
        *pfd = libc::pollfd { fd: ring.sock.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        waiting |= ring.has_block();
    }
    let ms = if waiting { 0 } else { poll_ms(timeout) };
    let fds = &mut fds[..rings.len()];
    let names = || rings.iter().map(Ring::ifname).collect::<Vec<_>>().join(",");
    match sys::poll(fds, ms) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(Ready::default()),
        Err(e) => return Err(CaptureError::sys("poll", &names(), e)),
    }
    let mut ready = Ready::default();
    for (i, (pfd, ring)) in fds.iter().zip(rings).enumerate() {
        if pfd.revents & libc::POLLNVAL != 0 {
            return Err(CaptureError::sys(
                "poll",
                &ring.ifname,
                std::io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        if pfd.revents & libc::POLLERR != 0 && ring.take_socket_error()?.is_some() {
            ready.errored |= 1 << i;
        }
    }
    Ok(ready)
}

/// One block handed over by the kernel. Dropping it hands the block back.
#[derive(Debug)]
pub struct Block<'r> {
    ring: &'r mut Ring,
    index: usize,
}

impl Block<'_> {
    /// The block's bytes (the whole `block_size`). Always present while the guard
    /// lives: only the guard's drop gives the block back.
    fn bytes(&self) -> &[u8] {
        self.ring.map.user_block(self.index).unwrap_or(&[])
    }

    fn u32_at(&self, off: usize) -> u32 {
        read_u32(self.bytes(), off).unwrap_or(0)
    }

    /// The frames of the block, in arrival order.
    pub fn packets(&self) -> Packets<'_> {
        let bytes = self.bytes();
        Packets {
            block: bytes,
            offset: self.u32_at(16) as usize, // offset_to_first_pkt
            remaining: self.u32_at(12),       // num_pkts
        }
    }

    /// Number of frames the kernel says the block holds (`num_pkts`).
    pub fn len(&self) -> usize {
        self.u32_at(12) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block's sequence number (counts up across the ring's life).
    pub fn seq_num(&self) -> u64 {
        let lo = u64::from(self.u32_at(24));
        let hi = u64::from(self.u32_at(28));
        if cfg!(target_endian = "little") {
            lo | hi << 32
        } else {
            hi | lo << 32
        }
    }

    /// Whether the kernel handed the block over because of the timeout, not full.
    pub fn timed_out(&self) -> bool {
        self.u32_at(8) & libc::TP_STATUS_BLK_TMO != 0
    }

    /// Whether frames were dropped (ring full) since the last statistics read.
    pub fn losing(&self) -> bool {
        self.u32_at(8) & libc::TP_STATUS_LOSING != 0
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        self.ring.map.release_block(self.index);
        self.ring.current = (self.index + 1) % self.ring.map.block_count();
    }
}

/// Iterator over the frames of a [`Block`].
///
/// It follows `tp_next_offset` from `offset_to_first_pkt`, `num_pkts` times, and stops
/// early at the first header or frame that would not lie inside the block.
#[derive(Clone, Debug)]
pub struct Packets<'b> {
    block: &'b [u8],
    offset: usize,
    remaining: u32,
}

impl<'b> Iterator for Packets<'b> {
    type Item = Frame<'b>;

    fn next(&mut self) -> Option<Frame<'b>> {
        if self.remaining == 0 {
            return None;
        }
        let frame = parse_packet(self.block, self.offset);
        let Some((frame, next_offset)) = frame else {
            self.remaining = 0;
            return None;
        };
        self.remaining -= 1;
        // The kernel leaves tp_next_offset 0 on the last frame; a 0 (or a jump out of
        // the block) before num_pkts frames were seen ends the walk instead of looping.
        if self.remaining > 0 {
            if next_offset == 0 || next_offset % 4 != 0 {
                self.remaining = 0;
            } else {
                self.offset += next_offset;
            }
        }
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// The `tpacket3_hdr` at `off` and its frame, both checked to lie inside `block`.
fn parse_packet(block: &[u8], off: usize) -> Option<(Frame<'_>, usize)> {
    if off < BLOCK_HDR_LEN {
        return None;
    }
    let hdr = block.get(off..off.checked_add(PKT_HDR_LEN)?)?;
    let next_offset = read_u32(hdr, 0)? as usize;
    let ts_sec = read_u32(hdr, 4)?;
    let ts_nsec = read_u32(hdr, 8)?;
    let snaplen = read_u32(hdr, 12)? as usize;
    let wire_len = read_u32(hdr, 16)?;
    let status = read_u32(hdr, 20)?;
    let mac = usize::from(read_u16(hdr, 24)?);
    // hv1: tp_rxhash at 28, tp_vlan_tci (u32) at 32, tp_vlan_tpid (u16) at 36.
    let vlan_tci = read_u32(hdr, 32)?;
    let start = off.checked_add(mac)?;
    let data = block.get(start..start.checked_add(snaplen)?)?;
    let vlan_tci = (status & libc::TP_STATUS_VLAN_VALID != 0).then_some(vlan_tci as u16);
    Some((Frame { data, wire_len, ts_sec, ts_nsec, vlan_tci }, next_offset))
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

/// One captured frame, borrowed from the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'b> {
    /// The frame as much as was captured (`tp_snaplen`): from its link-layer header on
    /// for a [`Link::Ethernet`] ring, from its IP header on for a [`Link::Ip`] one.
    pub data: &'b [u8],
    /// The frame's length on the wire (`tp_len`); more than `data.len()` if truncated.
    pub wire_len: u32,
    pub ts_sec: u32,
    pub ts_nsec: u32,
    /// The VLAN tag control information the NIC or the kernel took out of the frame
    /// (`TP_STATUS_VLAN_VALID`); such a tag is not in `data`.
    pub vlan_tci: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block image: header, then `frames` laid out as the kernel does.
    fn block(frames: &[&[u8]], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let first = 64usize;
        b[12..16].copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&(first as u32).to_ne_bytes());
        let mut off = first;
        for (i, f) in frames.iter().enumerate() {
            let mac = 80usize;
            let total = (mac + f.len() + 15) & !15;
            let next = if i + 1 == frames.len() { 0 } else { total as u32 };
            b[off..off + 4].copy_from_slice(&next.to_ne_bytes());
            b[off + 4..off + 8].copy_from_slice(&(i as u32 + 100).to_ne_bytes());
            b[off + 12..off + 16].copy_from_slice(&(f.len() as u32).to_ne_bytes());
            b[off + 16..off + 20].copy_from_slice(&(f.len() as u32 + 4).to_ne_bytes());
            let status = if i == 1 { libc::TP_STATUS_VLAN_VALID } else { 0 };
            b[off + 20..off + 24].copy_from_slice(&status.to_ne_bytes());
            b[off + 24..off + 26].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[off + 32..off + 36].copy_from_slice(&42u32.to_ne_bytes());
            b[off + mac..off + mac + f.len()].copy_from_slice(f);
            off += total;
        }
        b
    }

    fn walk(b: &[u8]) -> Vec<Frame<'_>> {
        Packets { block: b, offset: read_u32(b, 16).unwrap() as usize, remaining: read_u32(b, 12).unwrap() }
            .collect()
    }

    #[test]
    fn walks_frames_in_a_block() {
        let b = block(&[b"one", b"second", b"3"], 4096);
        let frames = walk(&b);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].data, b"one");
        assert_eq!(frames[1].data, b"second");
        assert_eq!(frames[2].data, b"3");
        assert_eq!(frames[0].wire_len, 7);
        assert_eq!(frames[2].ts_sec, 102);
        assert_eq!(frames[0].vlan_tci, None);
        assert_eq!(frames[1].vlan_tci, Some(42));
    }

    #[test]
    fn bad_offsets_stop_the_walk() {
        // num_pkts larger than the chain: stops at the zero next_offset.
        let mut b = block(&[b"one", b"two"], 4096);
        b[12..16].copy_from_slice(&50u32.to_ne_bytes());
        assert_eq!(walk(&b).len(), 2);
        // next_offset out of the block.
        let mut b = block(&[b"one", b"two"], 4096);
        b[64..68].copy_from_slice(&100_000u32.to_ne_bytes());
        assert_eq!(walk(&b).len(), 1);
        // snaplen beyond the block.
        let mut b = block(&[b"one", b"two"], 4096);
        b[64 + 12..64 + 16].copy_from_slice(&5000u32.to_ne_bytes());
        assert_eq!(walk(&b).len(), 0);
        // tp_mac beyond the block.
        let mut b = block(&[b"one"], 4096);
        b[64 + 24..64 + 26].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(walk(&b).len(), 0);
        // First packet inside the block header, or past the end.
        let mut b = block(&[b"one"], 4096);
        b[16..20].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(walk(&b).len(), 0);
        b[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(walk(&b).len(), 0);
        // Header cut by the block end.
        let b = block(&[b"one"], 4096);
        assert_eq!(walk(&b[..64 + 40]).len(), 0);
    }

    #[test]
    fn config_validation() {
        assert!(RingConfig::default().validate().is_ok());
        let ok = RingConfig { block_size: 4096 * 4, block_count: 4, ..RingConfig::default() };
        assert!(ok.validate().is_ok());
        for bad in [
            RingConfig { block_size: 3 * 4096, ..RingConfig::default() },
            RingConfig { block_size: 1024, frame_size: 1024, ..RingConfig::default() },
            RingConfig { block_count: 0, ..RingConfig::default() },
            RingConfig { frame_size: 2040, ..RingConfig::default() },
            RingConfig { frame_size: 16, ..RingConfig::default() },
            RingConfig { block_size: 4096, frame_size: 8192, ..RingConfig::default() },
            RingConfig { block_size: 1 << 30, block_count: 4, ..RingConfig::default() },
        ] {
            assert!(matches!(bad.validate(), Err(CaptureError::InvalidConfig(_))), "{bad:?}");
        }
    }

    #[test]
    fn ring_is_send() {
        fn send<T: Send>() {}
        send::<Ring>();
    }
}
