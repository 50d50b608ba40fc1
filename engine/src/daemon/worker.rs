//! A capture worker: one thread that owns one ring per interface (its share of each
//! interface's fanout group) and the [`Matcher`] for the sources that hash to it. No
//! lock and no shared write on the packet path; successes go to the executor and log
//! lines to the log thread, so neither a slow command nor a slow disk holds it up.

use super::firewall::Firewall;
use super::limiter::Limiter;
use crate::doors::DoorKey;
use crate::doors::Doors;
use crate::log::{Log, LogItem};
use crate::matcher::{DoorStats, Event, Matcher, OpenTimes, Secs, Sink, BATCH, OPEN_BOUNDS};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use crossbeam_utils::CachePadded;
use sesame_capture::payload::udp_payload;
use sesame_capture::ring::{self, Ring, RingStats};
use sesame_capture::{iface, CaptureError, Knock, Proto};
use sesame_firewall::{ExecutorHandle, GrantRequest};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the supervisor tells a worker, between blocks. The channel is bounded
/// ([`CONTROL_QUEUE`]); the supervisor waits when it is full, which only a stuck
/// worker causes, and the supervisor notices a dead one.
pub(crate) enum Control {
    /// A new door table and the backends its doors use (SIGHUP).
    Reload(Arc<Doors>, Arc<Firewall>),
    /// The interface in `slot` is there (again): capture on `ring` from now on.
    Attach { slot: usize, ring: Ring, local: Vec<IpAddr> },
    /// The interface in `slot` is gone: its ring is dead.
    Detach { slot: usize },
    /// The interface in `slot` has new addresses.
    Addresses { slot: usize, local: Vec<IpAddr> },
}

/// Control messages that may wait for one worker.
pub(crate) const CONTROL_QUEUE: usize = 64;

/// Counters a worker publishes for the supervisor and the metrics endpoint; each is
/// written by its worker only (relaxed stores of what it counts anyway, once per wake)
/// and summed over the workers when read. Cache-padded, so workers never share a line.
pub(crate) type Shared = Arc<CachePadded<Published>>;

#[derive(Default)]
pub(crate) struct Published {
    /// False once the worker's thread has ended, however it ended.
    pub(crate) alive: AtomicBool,
    /// Frames that could not be parsed.
    pub(crate) malformed: AtomicU64,
    /// Per interface slot: packets and kernel drops of this worker's rings.
    pub(crate) interfaces: Box<[RingCounts]>,
    /// The worker's door table's counters; replaced (not changed in place) on a reload.
    pub(crate) doors: Mutex<Arc<DoorCounts>>,
    pub(crate) open_times: OpenCounts,
    pub(crate) suppressed: AtomicU64,
    pub(crate) packets: AtomicU64,
    pub(crate) kernel_drops: AtomicU64,
    pub(crate) knocks: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) capacity: AtomicU64,
    /// Turns of the worker's loop (at least one every 250 ms while it runs): the
    /// systemd watchdog is pet only while it grows.
    pub(crate) beats: AtomicU64,
    /// SPA packets refused, by [`crate::spa::Refusal::index`], and accepted.
    pub(crate) spa_refused: [AtomicU64; crate::spa::Refusal::ALL.len()],
    pub(crate) spa_accepted: AtomicU64,
}

#[derive(Default)]
pub(crate) struct RingCounts {
    pub(crate) packets: AtomicU64,
    pub(crate) drops: AtomicU64,
}

/// Per-door counters of one worker, by the worker's door index.
#[derive(Default)]
pub struct DoorCounts {
    pub(crate) keys: Vec<DoorKey>,
    /// See [`DoorCounts::values`] for the order.
    pub(crate) counts: Box<[[AtomicU64; 5]]>,
}

impl DoorCounts {
    /// Counters for `matcher`'s doors, starting from what it counted so far.
    pub fn of(matcher: &Matcher) -> DoorCounts {
        let counts = matcher.door_stats().map(|d| Self::values(&d).map(AtomicU64::new)).collect();
        DoorCounts { keys: matcher.door_keys().collect(), counts }
    }

    /// stages, completed, timeouts, wrong port, started
    pub(crate) fn values(d: &DoorStats) -> [u64; 5] {
        [d.stages, d.completed, d.timeouts, d.wrong_port, d.started]
    }

    fn store(&self, stats: impl Iterator<Item = DoorStats>) {
        for (c, d) in self.counts.iter().zip(stats) {
            for (a, v) in c.iter().zip(Self::values(&d)) {
                a.store(v, Ordering::Relaxed);
            }
        }
    }
}

/// The knock-to-open histogram ([`OpenTimes`]) as atomics.
#[derive(Default)]
pub struct OpenCounts {
    pub(crate) buckets: [AtomicU64; OPEN_BOUNDS.len() + 1],
    pub(crate) sum: AtomicU64,
}

impl OpenCounts {
    fn store(&self, open: &OpenTimes) {
        for (a, v) in self.buckets.iter().zip(open.buckets) {
            a.store(v, Ordering::Relaxed);
        }
        self.sum.store(open.sum, Ordering::Relaxed);
    }
}

/// What a worker hands the metrics endpoint of its matcher's own counters, once per
/// wake: one relaxed store per counter, by the worker alone, into counters no other
/// worker writes. Nothing when the matcher keeps no metrics ([`Matcher::set_metrics`]),
/// as when sesamed serves none. Public so that the hot-path benchmark measures exactly
/// this.
pub fn publish_matcher(matcher: &Matcher, doors: &DoorCounts, open: &OpenCounts) {
    if matcher.metrics() {
        doors.store(matcher.door_stats());
        open.store(matcher.open_times());
    }
}

impl Published {
    pub(crate) fn new(interfaces: usize, matcher: &Matcher) -> Shared {
        Arc::new(CachePadded::new(Published {
            alive: AtomicBool::new(true),
            interfaces: (0..interfaces).map(|_| RingCounts::default()).collect(),
            doors: Mutex::new(Arc::new(DoorCounts::of(matcher))),
            ..Published::default()
        }))
    }
}

/// Clears [`Published::alive`] when dropped: hold it for the worker thread's life.
pub(crate) struct Alive(pub(crate) Shared);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

pub(crate) fn now_secs() -> Secs {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where a worker's matcher events go.
pub(crate) struct WorkerSink {
    /// The doors the matcher matches against now: what an opening runs comes from here.
    pub(crate) doors: Arc<Doors>,
    pub(crate) firewall: Arc<Firewall>,
    pub(crate) log: Log,
    pub(crate) executor: ExecutorHandle,
    pub(crate) limiter: Limiter,
    /// The current second, set by the worker once per block rather than read per event.
    pub(crate) now: Secs,
    /// This worker's SPA counts (published with the other counters).
    pub(crate) spa: super::spa::Counts,
}

impl Sink for WorkerSink {
    fn event(&mut self, event: Event) {
        match event {
            Event::Open { src, door } => {
                // Never rate-limited: OPEN SESAME and the commands always reach the log.
                self.log.send(LogItem::Event(event));
                let Some((d, kind)) = self.doors.get(door) else { return };
                let Some(action) = self.firewall.action(d, kind, src) else { return };
                // A refusal (queue full) is reported and counted by the executor.
                let _ = self.executor.open(GrantRequest {
                    door_name: d.name.clone(),
                    ip: src,
                    action,
                    timeout: Duration::from_secs(u64::from(d.cmd_timeout)),
                });
            }
            Event::Stage { .. } | Event::Timeout { .. } | Event::Replayed { .. } => {
                if self.limiter.allow(self.now) {
                    self.log.offer(LogItem::Event(event));
                }
            }
            Event::DoorDisabled { .. } | Event::OneTimeError { .. } | Event::ClaimUnsaved { .. } => {
                self.log.send(LogItem::Event(event))
            }
        }
    }
}

/// Blocks taken from one ring before the next ring's turn.
const BLOCKS_PER_TURN: usize = 16;

pub(crate) struct Worker {
    matcher: Matcher,
    sink: WorkerSink,
    /// One ring per interface that is there; `wait_any` takes them side by side.
    rings: Vec<Ring>,
    /// The interface slot of each ring, in step with `rings`.
    slots: Vec<usize>,
    /// Per interface slot: counters of rings already closed, so totals never go backwards.
    closed: Vec<RingStats>,
    /// Frames that could not be parsed.
    malformed: u64,
    /// Where this worker's per-door counters are published (a new one after a reload).
    door_counts: Arc<DoorCounts>,
    control: Receiver<Control>,
    published: Shared,
    debug: bool,
    ipv6: bool,
    /// The UDP ports of SPA doors: datagrams to them go to [`super::spa::handle`].
    spa_ports: Vec<u16>,
}

impl Worker {
    pub(crate) fn new(
        matcher: Matcher,
        sink: WorkerSink,
        rings: Vec<(usize, Ring)>,
        control: Receiver<Control>,
        published: Shared,
        debug: bool,
        ipv6: bool,
    ) -> Worker {
        let door_counts = published.doors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut w = Worker {
            matcher,
            sink,
            rings: Vec::new(),
            slots: Vec::new(),
            closed: vec![RingStats::default(); published.interfaces.len()],
            malformed: 0,
            door_counts,
            control,
            published,
            debug,
            ipv6,
            spa_ports: Vec::new(),
        };
        w.spa_ports = w.sink.doors.spa_ports();
        for (slot, ring) in rings {
            w.attach(slot, ring);
        }
        w
    }

    pub(crate) fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut generation = self.matcher.generation();
        let mut batch = Vec::with_capacity(BATCH);
        let mut refilter = false;
        while !stop.load(Ordering::Relaxed) {
            while let Ok(c) = self.control.try_recv() {
                refilter |= self.apply(c);
            }
            if refilter || self.matcher.generation() != generation {
                // Doors, addresses or a one-time door's sequence changed.
                generation = self.matcher.generation();
                self.refilter()?;
                refilter = false;
            }
            // Wake at the next second boundary at the latest: sequence timeouts are
            // whole seconds, and this is when they become due.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let wait = (Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
                + Duration::from_millis(2))
            .min(Duration::from_millis(250));
            if self.rings.is_empty() {
                // Every interface is gone: sleep until the supervisor attaches a ring.
                match self.control.recv_timeout(wait) {
                    Ok(c) => refilter |= self.apply(c),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                let ready = ring::wait_any(&self.rings, wait)?;
                if ready.errored != 0 {
                    self.drop_dead(ready.errored);
                }
                for i in 0..self.rings.len() {
                    self.drain(i, &mut batch)?;
                }
            }
            self.sink.now = now_secs();
            self.matcher.expire(self.sink.now, &mut self.sink);
            self.publish();
        }
        self.publish();
        Ok(())
    }

    /// Returns whether the rings' filters need rebuilding.
    fn apply(&mut self, c: Control) -> bool {
        match c {
            Control::Reload(doors, firewall) => {
                // Knocks in progress at doors the reload left alone go on (knockd drops
                // them all); the table is reused, not allocated again.
                self.matcher.reload(doors.clone());
                // Off the packet path: a new table, published with the counters carried over.
                self.door_counts = Arc::new(DoorCounts::of(&self.matcher));
                *self.published.doors.lock().unwrap_or_else(|p| p.into_inner()) = self.door_counts.clone();
                self.spa_ports = doors.spa_ports();
                self.sink.doors = doors;
                self.sink.firewall = firewall;
                true
            }
            Control::Attach { slot, ring, local } => {
                self.matcher.set_local(slot, local);
                self.attach(slot, ring);
                true
            }
            Control::Detach { slot } => {
                if let Some(i) = self.slots.iter().position(|&s| s == slot) {
                    self.close(i);
                }
                false
            }
            Control::Addresses { slot, local } => {
                self.matcher.set_local(slot, local);
                true
            }
        }
    }

    fn attach(&mut self, slot: usize, ring: Ring) {
        if let Some(i) = self.slots.iter().position(|&s| s == slot) {
            self.close(i);
        }
        self.rings.push(ring);
        self.slots.push(slot);
    }

    fn close(&mut self, i: usize) {
        let ring = self.rings.remove(i);
        let slot = self.slots.remove(i);
        if let (Ok(s), Some(closed)) = (ring.stats(), self.closed.get_mut(slot)) {
            closed.packets += s.packets;
            closed.drops += s.drops;
            closed.freeze_q_cnt += s.freeze_q_cnt;
        }
    }

    /// Rings whose socket reported an error: those whose interface is gone (not just
    /// down, which the kernel resumes from by itself) are closed at once.
    fn drop_dead(&mut self, errored: u64) {
        for i in (0..self.rings.len()).rev() {
            if errored & (1 << i) != 0 && !attached(&self.rings[i]) {
                self.close(i);
            }
        }
    }

    fn refilter(&mut self) -> anyhow::Result<()> {
        for (ring, &slot) in self.rings.iter().zip(&self.slots) {
            ring.set_filter(&self.matcher.filter_program(slot, self.ipv6, ring.link())?)?;
        }
        Ok(())
    }

    /// Takes the blocks ring `i` has ready, up to [`BLOCKS_PER_TURN`], so that one busy
    /// interface cannot starve the others.
    fn drain(&mut self, i: usize, batch: &mut Vec<(Knock, Secs)>) -> anyhow::Result<()> {
        let Some(&slot) = self.slots.get(i) else { return Ok(()) };
        let ring = &mut self.rings[i];
        let link = ring.link();
        for _ in 0..BLOCKS_PER_TURN {
            let block = match ring.next_block(Duration::ZERO) {
                Ok(Some(block)) => block,
                Ok(None) => break,
                // Its interface went down or away: the supervisor sorts out which.
                Err(CaptureError::InterfaceDown { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            self.sink.now = now_secs();
            let mut frames = block.packets();
            loop {
                // Parse a batch, then match it: the matcher overlaps the batch's
                // table lookups (see `Matcher::on_knocks`).
                batch.clear();
                let mut taken = 0;
                for frame in frames.by_ref().take(BATCH) {
                    taken += 1;
                    match link.parse(frame.data) {
                        Ok(knock) => {
                            if self.debug {
                                debug_knock(&knock);
                            }
                            if knock.proto == Proto::Udp && self.spa_ports.contains(&knock.dst_port) {
                                if let Some(payload) = udp_payload(link, frame.data) {
                                    super::spa::handle(&mut self.sink, knock.src, knock.dst_port, payload);
                                }
                                continue;
                            }
                            batch.push((knock, Secs::from(frame.ts_sec)));
                        }
                        Err(e) => {
                            self.malformed += 1;
                            if self.debug {
                                println!("skipping frame of {} bytes: {e}", frame.data.len());
                            }
                        }
                    }
                }
                if taken == 0 {
                    break;
                }
                self.matcher.on_knocks(slot, batch, &mut self.sink);
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let p = &self.published;
        p.beats.fetch_add(1, Ordering::Relaxed);
        let mut ring = RingStats::default();
        for (slot, (closed, out)) in self.closed.iter().zip(p.interfaces.iter()).enumerate() {
            let (mut packets, mut drops) = (closed.packets, closed.drops);
            for (r, _) in self.rings.iter().zip(&self.slots).filter(|(_, &s)| s == slot) {
                if let Ok(s) = r.stats() {
                    packets += s.packets;
                    drops += s.drops;
                }
            }
            out.packets.store(packets, Ordering::Relaxed);
            out.drops.store(drops, Ordering::Relaxed);
            ring.packets += packets;
            ring.drops += drops;
        }
        let m = self.matcher.stats();
        publish_matcher(&self.matcher, &self.door_counts, &p.open_times);
        p.malformed.store(self.malformed, Ordering::Relaxed);
        p.suppressed.store(self.sink.limiter.suppressed, Ordering::Relaxed);
        p.packets.store(ring.packets, Ordering::Relaxed);
        p.kernel_drops.store(ring.drops, Ordering::Relaxed);
        p.knocks.store(m.knocks, Ordering::Relaxed);
        p.evictions.store(m.tracker.evictions, Ordering::Relaxed);
        p.rejected.store(m.tracker.rejected, Ordering::Relaxed);
        p.attempts.store(self.matcher.in_progress() as u64, Ordering::Relaxed);
        p.capacity.store(self.matcher.tracker().capacity() as u64, Ordering::Relaxed);
        for (a, v) in p.spa_refused.iter().zip(self.sink.spa.refused) {
            a.store(v, Ordering::Relaxed);
        }
        p.spa_accepted.store(self.sink.spa.accepted, Ordering::Relaxed);
    }
}

/// Whether the ring's interface is still the one it was bound to.
fn attached(ring: &Ring) -> bool {
    iface::index(ring.ifname()).ok() == Some(ring.ifindex())
}

fn debug_knock(k: &Knock) {
    println!(
        "{}: {}:{} -> {}:{} flags 0x{:02x}",
        k.proto.name(),
        k.src,
        k.src_port,
        k.dst,
        k.dst_port,
        k.tcp_flags
    );
}
