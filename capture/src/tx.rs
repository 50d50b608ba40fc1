//! A TPACKET_V2 `AF_PACKET` TX ring on one interface: a zero-copy traffic generator.
//!
//! Frames are written straight into the ring's slots ([`TxRing::queue`]), marked
//! `TP_STATUS_SEND_REQUEST`, and sent in ring order when the kernel is kicked
//! ([`TxRing::flush`], a `send(fd, NULL, 0, MSG_DONTWAIT)`). The kernel hands a slot
//! back (`TP_STATUS_AVAILABLE`) when the frame's skb is freed, i.e. once the driver
//! is done with it; [`TxRing::sent`] counts those.
//!
//! The kernel refuses a frame that is shorter than an Ethernet header or longer than
//! the MTU allows by marking its slot `TP_STATUS_WRONG_FORMAT` and failing the send;
//! without `PACKET_LOSS` it then stops at that slot for good. [`TxRing::queue`] checks
//! both limits up front (counted in [`TxStats::rejected`]); if the kernel refuses a frame
//! anyway (say the MTU shrank), [`TxRing::flush`] drops that frame, counts it in
//! [`TxStats::wrong_format`], moves the frames queued behind it up one slot (keeping
//! their order) and sends them.

use std::time::{Duration, Instant};

use crate::error::CaptureError;
use crate::iface;
use crate::sys::{self, PacketSocket, TxMap};

/// Ethernet header length: the shortest frame the kernel sends (`dev_validate_header`).
const MIN_FRAME_LEN: usize = 14;
/// Link-layer header the kernel allows on top of the MTU for `SOCK_RAW` frames
/// (`dev->hard_header_len` of an Ethernet device).
const LL_HEADER_LEN: usize = 14;
/// Largest block the ring is laid out in (blocks hold whole frames; see `layout`).
const MAX_BLOCK: usize = 4 << 20;
/// Largest ring.
const MAX_RING: usize = 1 << 30;
/// Longest single sleep of the wait loops: they re-kick the kernel and re-check at
/// least this often, since `POLLOUT` only reflects the slot at the kernel's head.
const POLL_SLICE: Duration = Duration::from_millis(5);

/// Geometry and options of a TX ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxConfig {
    /// Bytes per slot, header (32 bytes) included: a multiple of 16, from 64 to 65536.
    /// Default 2048 (frames up to 2016 bytes).
    pub frame_size: u32,
    /// Number of slots; rounded up to a whole number of blocks (see
    /// [`TxRing::capacity`]). Default 4096.
    pub frame_count: u32,
    /// `PACKET_QDISC_BYPASS`: hand frames straight to the driver, skipping the qdisc
    /// (and its shaping and drops), and the sending host's packet taps: `tcpdump` on
    /// the interface does not see them (the receiving end does). Default true.
    pub qdisc_bypass: bool,
}

impl Default for TxConfig {
    fn default() -> TxConfig {
        TxConfig { frame_size: 2048, frame_count: 4096, qdisc_bypass: true }
    }
}

impl TxConfig {
    /// Checks what the kernel would reject, with a readable reason.
    pub fn validate(&self) -> Result<(), CaptureError> {
        self.layout().map(|_| ())
    }

    /// (block size, block count, frames per block): the smallest block that is a
    /// multiple of both the page size and `frame_size`, so frames lie back to back.
    fn layout(&self) -> Result<(usize, usize, usize), CaptureError> {
        let bad = |why: String| Err(CaptureError::InvalidConfig(why));
        let fs = self.frame_size as usize;
        if fs & 15 != 0 || !(64..=65536).contains(&fs) {
            return bad(format!("TX frame_size {fs} must be a multiple of 16 from 64 to 65536"));
        }
        if self.frame_count == 0 {
            return bad("TX frame_count is 0".into());
        }
        let page = sys::page_size();
        let block = fs / gcd(fs, page) * page;
        if block > MAX_BLOCK {
            return bad(format!("TX frame_size {fs} needs {block}-byte blocks; use a power of two"));
        }
        let per_block = block / fs;
        let blocks = (self.frame_count as usize).div_ceil(per_block);
        if !matches!(blocks.checked_mul(block), Some(total) if total <= MAX_RING) {
            return bad(format!("TX ring of {} x {fs} bytes is too large", self.frame_count));
        }
        Ok((block, blocks, per_block))
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Counters since the ring was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames marked for sending.
    pub queued: u64,
    /// Frames the kernel took and has finished with (handed to the driver, which may
    /// still have dropped them: a veth whose peer is overrun, a NIC with no link).
    pub sent: u64,
    /// Frames the kernel refused (`TP_STATUS_WRONG_FORMAT`) and that were dropped.
    pub wrong_format: u64,
    /// Frames refused before queueing: a length shorter than an Ethernet header.
    pub rejected: u64,
}

/// A TPACKET_V2 TX ring bound to one interface. Dropping it unmaps the ring and closes
/// the socket; frames still queued then are not sent.
#[derive(Debug)]
pub struct TxRing {
    // Field order is drop order: unmap first, then close.
    map: TxMap,
    sock: PacketSocket,
    ifname: String,
    ifindex: u32,
    /// The next slot to fill.
    next: usize,
    /// The oldest slot handed to the kernel and not yet seen back.
    tail: usize,
    /// Slots from `tail` up to `next`: handed to the kernel.
    in_flight: usize,
    /// The longest frame the kernel takes: the slot size, or the MTU plus the
    /// Ethernet header if that is less.
    max_len: usize,
    stats: TxStats,
}

impl TxRing {
    /// Opens a TX ring on `ifname`. The socket is bound with protocol 0, so it receives
    /// nothing.
    pub fn open(ifname: &str, cfg: &TxConfig) -> Result<TxRing, CaptureError> {
        let (block_size, block_count, per_block) = cfg.layout()?;
        let ifindex = iface::index(ifname)?;
        let err = |op: &'static str| move |e| CaptureError::sys(op, ifname, e);
        let sock = PacketSocket::open(libc::SOCK_RAW).map_err(err("socket(AF_PACKET, SOCK_RAW)"))?;
        sock.set_int(libc::SOL_PACKET, libc::PACKET_VERSION, sys::TPACKET_V2)
            .map_err(err("setsockopt(PACKET_VERSION, TPACKET_V2)"))?;
        if cfg.qdisc_bypass {
            sock.set_int(libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
                .map_err(err("setsockopt(PACKET_QDISC_BYPASS)"))?;
        }
        let frame_count = block_count * per_block;
        let req = libc::tpacket_req {
            tp_block_size: block_size as u32,
            tp_block_nr: block_count as u32,
            tp_frame_size: cfg.frame_size,
            tp_frame_nr: frame_count as u32,
        };
        sock.set_tx_ring(&req).map_err(err("setsockopt(PACKET_TX_RING)"))?;
        let map =
            sock.map_tx_ring(cfg.frame_size as usize, frame_count).map_err(err("mmap(PACKET_TX_RING)"))?;
        sock.bind(ifindex, 0).map_err(err("bind(AF_PACKET)"))?;
        let mut ring = TxRing {
            max_len: 0,
            map,
            sock,
            ifname: ifname.to_owned(),
            ifindex,
            next: 0,
            tail: 0,
            in_flight: 0,
            stats: TxStats::default(),
        };
        ring.refresh_max_len()?;
        Ok(ring)
    }

    /// Re-reads the MTU and so the longest frame the kernel takes.
    fn refresh_max_len(&mut self) -> Result<(), CaptureError> {
        let mtu = self
            .sock
            .mtu(&self.ifname)
            .map_err(|e| CaptureError::sys("ioctl(SIOCGIFMTU)", &self.ifname, e))?;
        self.max_len = self.map.data_len().min(mtu as usize + LL_HEADER_LEN);
        Ok(())
    }

    /// Fills up to `max` free slots: for each, calls `write` with the slot's frame area
    /// (zero-copy: the frame is written straight into the ring; [`max_frame_len`]
    /// bytes, holding whatever an earlier frame left there) and queues the frame of the
    /// length it returns. Returns how many frames were queued: 0 if the ring is full.
    ///
    /// `write` returning 0 means it has nothing more to send: the slot stays free and
    /// `queue` returns. A length below an Ethernet header (14) is counted in
    /// [`TxStats::rejected`] and the slot is offered to the next call. `write` is called
    /// at most `max` times. Nothing is sent until [`flush`](Self::flush).
    ///
    /// # Panics
    /// If `write` returns more than the length of the area it was given.
    ///
    /// [`max_frame_len`]: Self::max_frame_len
    pub fn queue(&mut self, max: usize, mut write: impl FnMut(&mut [u8]) -> usize) -> usize {
        self.reclaim();
        let mut queued = 0;
        let mut calls = 0;
        while calls < max && self.in_flight < self.map.frame_count() {
            let index = self.next;
            let max_len = self.max_len;
            let Some(area) = self.map.frame_mut(index) else {
                // Cannot happen: slots from `next` round to `tail` are ours.
                debug_assert!(false, "TX slot {index} not ours");
                break;
            };
            calls += 1;
            let len = write(&mut area[..max_len]);
            assert!(len <= max_len, "TX frame of {len} bytes written into {max_len}");
            if len == 0 {
                break;
            }
            if len < MIN_FRAME_LEN {
                self.stats.rejected += 1;
                continue;
            }
            let submitted = self.map.submit(index, len);
            debug_assert!(submitted);
            self.next = (index + 1) % self.map.frame_count();
            self.in_flight += 1;
            self.stats.queued += 1;
            queued += 1;
        }
        queued
    }

    /// Kicks the kernel into sending every queued frame (`send(fd, NULL, 0,
    /// MSG_DONTWAIT)`), then counts the slots it handed back. Frames the kernel cannot
    /// take right now (socket send buffer full) stay queued for the next kick.
    ///
    /// A frame the kernel refuses is dropped and counted ([`TxStats::wrong_format`]),
    /// and the frames behind it are sent. Other failures (interface down or gone) are
    /// errors; the frames stay queued.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        // Each round either ends or drops one refused frame.
        for _ in 0..=self.map.frame_count() {
            if self.in_flight == 0 {
                break;
            }
            match self.sock.send_ring(true) {
                Ok(_) => break,
                Err(e) if is_transient(&e) => break,
                Err(e) => {
                    if self.drop_wrong_format() {
                        continue;
                    }
                    self.reclaim();
                    return Err(CaptureError::sys("send(PACKET_TX_RING)", &self.ifname, e));
                }
            }
        }
        self.reclaim();
        Ok(())
    }

    /// Waits up to `timeout` until at least one slot is free, kicking the kernel
    /// meanwhile. `Ok(true)` when one is; `Ok(false)` on timeout or when a signal
    /// interrupted the wait. A zero timeout only checks (after one kick).
    pub fn wait_writable(&mut self, timeout: Duration) -> Result<bool, CaptureError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            self.reclaim();
            if self.free_slots() > 0 {
                return Ok(true);
            }
            self.flush()?;
            if self.free_slots() > 0 {
                return Ok(true);
            }
            let Some(wait) = remaining(deadline) else { return Ok(false) };
            // POLLOUT: the slot at the kernel's head is free, which (everything being
            // kicked) is our oldest one; the kernel wakes us from the skb destructor.
            match self.poll(libc::POLLOUT, wait.min(POLL_SLICE)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
                Err(e) => return Err(CaptureError::sys("poll", &self.ifname, e)),
            }
        }
    }

    /// Sends everything queued and waits up to `timeout` until the kernel has handed
    /// every slot back. `Ok(true)` when it has (then [`sent`](Self::sent) counts every
    /// queued frame but the refused ones); `Ok(false)` on timeout.
    pub fn drain(&mut self, timeout: Duration) -> Result<bool, CaptureError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut nap = Duration::from_micros(20);
        loop {
            self.flush()?;
            if self.in_flight == 0 {
                return Ok(true);
            }
            let Some(wait) = remaining(deadline) else { return Ok(false) };
            // Completions come from the driver (a TX interrupt, or at once on a veth);
            // POLLOUT does not report them once the kernel's head slot is free, so nap.
            std::thread::sleep(nap.min(wait));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    /// `poll` for `events` up to `wait`; a socket error (`POLLERR`, e.g. the interface
    /// went down) is returned as the error.
    fn poll(&mut self, events: libc::c_short, wait: Duration) -> std::io::Result<()> {
        let ms = wait.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let revents = self.sock.poll_events(events, ms)?;
        if revents & libc::POLLNVAL != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        if revents & libc::POLLERR != 0 {
            if let Some(e) = self.sock.take_error()? {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Counts the slots the kernel handed back, oldest first (in order: a slot handed
    /// back out of order is counted when the ones before it are back too).
    fn reclaim(&mut self) {
        while self.in_flight > 0 {
            let st = self.map.status(self.tail);
            if st & (libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING | libc::TP_STATUS_WRONG_FORMAT)
                != 0
            {
                break;
            }
            self.tail = (self.tail + 1) % self.map.frame_count();
            self.in_flight -= 1;
            self.stats.sent += 1;
        }
    }

    /// After a failed kick: finds the slot the kernel refused, drops its frame and moves
    /// the frames queued behind it up one slot, in order, so the kernel (whose head
    /// stays at the refused slot) sends them next. Returns whether there was one.
    fn drop_wrong_format(&mut self) -> bool {
        let n = self.map.frame_count();
        let Some(k) = (0..self.in_flight)
            .find(|&k| self.map.status((self.tail + k) % n) & libc::TP_STATUS_WRONG_FORMAT != 0)
        else {
            return false;
        };
        let bad = (self.tail + k) % n;
        // The kernel stopped at `bad` and has not looked past it: everything behind it
        // is still requested. Make sure before moving anything.
        let behind = self.in_flight - k - 1;
        if (1..=behind).any(|d| self.map.status((bad + d) % n) != libc::TP_STATUS_SEND_REQUEST) {
            return false;
        }
        let mut hole = bad;
        for d in 1..=behind {
            let from = (bad + d) % n;
            let moved = self.map.withdraw(from) && self.map.copy_frame(from, hole) && {
                let len = self.map.frame_len(hole);
                self.map.submit(hole, len)
            };
            debug_assert!(moved, "moving TX slot {from} to {hole}");
            hole = from;
        }
        self.map.release(hole);
        self.next = hole;
        self.in_flight -= 1;
        self.stats.wrong_format += 1;
        // Whatever the MTU is now, check frames against it before they are queued.
        let _ = self.refresh_max_len();
        true
    }

    /// Frames the kernel took and handed back (see [`TxStats::sent`]), as of the last
    /// call that looked ([`queue`](Self::queue), [`flush`](Self::flush), the waits).
    pub fn sent(&self) -> u64 {
        self.stats.sent
    }

    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Frames queued or handed to the kernel and not handed back yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Slots [`queue`](Self::queue) can fill now (as of the last look).
    pub fn free_slots(&self) -> usize {
        self.map.frame_count() - self.in_flight
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.map.frame_count()
    }

    /// The longest frame a slot takes: the slot's frame area, or the interface MTU plus
    /// the 14-byte Ethernet header if that is less (as of opening, or of the last
    /// refused frame). A VLAN-tagged frame is held to the same limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_len
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

/// Errors of a kick that only mean "not now": no socket buffer space
/// (`sock_alloc_send_skb`), a driver queue that pushed back, or a signal.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR))
}

/// Time left until `deadline` (`None`: no time left; no deadline: a long time).
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        Some(d) => Some(d.saturating_duration_since(Instant::now())).filter(|w| !w.is_zero()),
        None => Some(Duration::from_secs(3600)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_and_layout() {
        let page = sys::page_size();
        assert!(TxConfig::default().validate().is_ok());
        let (block, blocks, per) = TxConfig::default().layout().unwrap();
        assert_eq!(block % page, 0);
        assert_eq!(block, per * 2048);
        assert!(blocks * per >= 4096);
        // A frame count that is not a multiple of the frames per block is rounded up.
        let (_, blocks, per) = TxConfig { frame_count: 3, ..TxConfig::default() }.layout().unwrap();
        assert!(blocks * per >= 3 && blocks == 3usize.div_ceil(per));
        // Frames larger than a page: blocks of whole frames.
        let (block, _, per) = TxConfig { frame_size: 3 * 4096, ..TxConfig::default() }.layout().unwrap();
        assert_eq!(block % (3 * 4096), 0);
        assert_eq!(block, per * 3 * 4096);
        for bad in [
            TxConfig { frame_size: 2040, ..TxConfig::default() },
            TxConfig { frame_size: 48, ..TxConfig::default() },
            TxConfig { frame_size: 1 << 17, ..TxConfig::default() },
            TxConfig { frame_count: 0, ..TxConfig::default() },
            TxConfig { frame_size: 65536, frame_count: 1 << 16, ..TxConfig::default() },
            // 65520 = 16 * 4095: a block holding whole frames and whole pages is huge.
            TxConfig { frame_size: 65520, ..TxConfig::default() },
        ] {
            assert!(matches!(bad.validate(), Err(CaptureError::InvalidConfig(_))), "{bad:?}");
        }
    }

    #[test]
    fn missing_interface() {
        let err = TxRing::open("sesame-nope0", &TxConfig::default()).unwrap_err();
        assert!(matches!(err, CaptureError::NoSuchInterface(_)), "{err}");
        let err = TxRing::open("bad/name", &TxConfig::default()).unwrap_err();
        assert!(matches!(err, CaptureError::InvalidInterfaceName(_)), "{err}");
    }

    #[test]
    fn tx_ring_is_send() {
        fn send<T: Send>() {}
        send::<TxRing>();
    }
}
