//! One worker's matcher: knockd 0.8's matching rules over the worker's share of the
//! sources, driven by packet timestamps and an explicit clock so every rule is tested
//! without sleeping.
//!
//! Rules (see `knockd-behaviour.md`):
//! - one attempt per (source, door); doors sharing a prefix advance in parallel;
//! - a packet from a source with a live attempt only acts on its attempts: new
//!   attempts begin only from a source that has none;
//! - the door's next step (port, protocol, flags) advances the attempt;
//! - right port but wrong TCP flags: ignored;
//! - any other knock port invalidates the attempt, and that packet is consumed
//!   (it does not start a new attempt of the same door);
//! - ports of no door are invisible (knockd filters them in the kernel), and so are
//!   packets not addressed to the receiving interface (or to the door's Target);
//! - the sequence must complete within `seq_timeout` whole seconds of the first
//!   knock; expired attempts are dropped before the packet is looked at.
//!
//! Unlike knockd, timeouts are also fired by [`Matcher::expire`] from a timer, so
//! they are logged on time instead of at the next packet, and attempts live in a
//! bounded [`Tracker`] instead of a list that grows with a flood.
//!
//! Each capture worker owns one `Matcher` outright. What workers share is the door
//! table ([`Doors`]); only one-time doors change at run time, and a worker notices such
//! a change with one atomic load, taking a lock only when it happened.

use crate::doors::{DoorId, DoorKey, DoorState, Doors};
use crate::filter_spec;
use crate::knocking::{Advance, Knocking, Opened, Start};
use crate::port_index::PortIndex;
use crate::rotating::Claim;
use crate::tracker::{Bucket, Inserted, Tracker, TrackerStats};
use sesame_capture::filter::{FilterSpec, Program};
use sesame_capture::{CaptureError, Knock, Link};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use crate::knocking::Secs;

/// Packets whose table lookups [`Matcher::on_knocks`] overlaps.
pub const BATCH: usize = 32;

/// What the matcher reports, naming doors by identity: an event may reach the log
/// after a reload has moved its door elsewhere in the file, or removed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `IP: DOOR: Stage N`
    Stage { src: IpAddr, door: DoorKey, stage: u8 },
    /// `IP: DOOR: OPEN SESAME`
    Open { src: IpAddr, door: DoorKey },
    /// `IP: DOOR: sequence timeout (stage N)`
    Timeout { src: IpAddr, door: DoorKey, stage: u8 },
    /// A one-time door used its last sequence and is disabled.
    DoorDisabled { door: DoorKey },
    /// A one-time sequence file could not be updated or read; the door is disabled
    /// rather than left open to a replay.
    OneTimeError { door: DoorKey, message: String },
    /// `IP: DOOR: sequence already used in this time step, not opened`: a rotating
    /// sequence completed again in the step in which it had opened.
    Replayed { src: IpAddr, door: DoorKey },
    /// A rotating sequence opened, but that it was used could not be stored: a restart
    /// within its step would let it open again.
    ClaimUnsaved { door: DoorKey, message: String },
}

impl Event {
    pub fn door(&self) -> DoorKey {
        match self {
            Event::Stage { door, .. }
            | Event::Open { door, .. }
            | Event::Timeout { door, .. }
            | Event::Replayed { door, .. }
            | Event::DoorDisabled { door }
            | Event::OneTimeError { door, .. }
            | Event::ClaimUnsaved { door, .. } => *door,
        }
    }
}

/// Where events go. The daemon's sink rate-limits per-packet events and hands
/// successes to the firewall; tests collect into a `Vec`.
pub trait Sink {
    fn event(&mut self, event: Event);
}

impl Sink for Vec<Event> {
    fn event(&mut self, event: Event) {
        self.push(event);
    }
}

/// Counters of what the matcher saw, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Packets that reached a door (knockd's kernel filter would have passed them).
    pub knocks: u64,
    /// Packets no door would see: other ports, other destinations, flags no door wants.
    pub invisible: u64,
    pub opened: u64,
    /// Rotating sequences completed again in the step in which they had opened.
    pub replayed: u64,
    pub broken: u64,
    pub timeouts: u64,
    pub tracker: TrackerStats,
}

/// Counters of one door in one matcher (metrics), kept by the matcher's door index
/// while [`Matcher::set_metrics`] is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorStats {
    /// Attempts begun: first knocks (of a source with no attempt at this door) that
    /// the attempt table took, including a one-port door's whole sequence.
    pub started: u64,
    /// Knocks that reached a stage (`Stage N` events, rate-limited in the log or not).
    pub stages: u64,
    pub completed: u64,
    pub timeouts: u64,
    /// Attempts broken by a knock at another knock port.
    pub wrong_port: u64,
}

/// What a matcher counts per door while metrics are on, from which [`DoorStats`] is
/// derived: each knock costs one increment at most (a completion adds the
/// knock-to-open time).
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    started: u64,
    /// Attempts moved on to a stage short of the last.
    advanced: u64,
    completed: u64,
    /// Of `completed`, those done by their first knock (one-port doors): that knock
    /// is one stage, not two.
    opened_at_start: u64,
    timeouts: u64,
    wrong_port: u64,
}

impl Counts {
    fn stats(&self) -> DoorStats {
        DoorStats {
            started: self.started,
            stages: self.started + self.advanced + self.completed - self.opened_at_start,
            completed: self.completed,
            timeouts: self.timeouts,
            wrong_port: self.wrong_port,
        }
    }
}

/// Upper bounds, in whole seconds, of the knock-to-open histogram's buckets (a last
/// bucket, +Inf, follows). Knock times are whole seconds, as knockd keeps them.
pub const OPEN_BOUNDS: [u64; 8] = [0, 1, 2, 3, 5, 10, 30, 60];

/// Seconds from a sequence's first knock to its last, over the sequences completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenTimes {
    /// Per bucket of [`OPEN_BOUNDS`] and +Inf, not cumulative.
    pub buckets: [u64; OPEN_BOUNDS.len() + 1],
    pub sum: u64,
}

impl OpenTimes {
    fn observe(&mut self, secs: u64) {
        let i = OPEN_BOUNDS.iter().position(|&b| secs <= b).unwrap_or(OPEN_BOUNDS.len());
        self.buckets[i] += 1;
        self.sum += secs;
    }
}

/// One worker's matcher: its view of the doors and its share of the attempts.
#[derive(Debug)]
pub struct Matcher {
    shared: Arc<Doors>,
    doors: Vec<DoorState>,
    /// Each interface's own addresses, by interface slot: what "addressed to us" means
    /// for doors without a Target, for a packet that arrived on that interface.
    local: Vec<Vec<IpAddr>>,
    ports: PortIndex,
    attempts: Tracker,
    stats: MatchStats,
    /// Whether `per_door` and `open_times` are kept: the metrics endpoint's series,
    /// off (not counted at all) when sesamed serves no metrics.
    metrics: bool,
    /// Per door, by index in `doors`.
    per_door: Vec<Counts>,
    open_times: OpenTimes,
    /// Whether any door is one-time (only then is the shared state polled).
    has_one_time: bool,
    /// Bumped whenever the set of knock ports changes (one-time doors), so the capture
    /// side knows to rebuild its kernel filter.
    generation: u64,
    /// The second of the last sweep: timeouts are whole seconds, so one sweep per
    /// second is on time, and more would only burn memory bandwidth.
    swept: Secs,
    /// Rotating doors keep their sequences while the clock is within `[from, until)`;
    /// outside it they move to the clock's step (`0..MAX` without rotating doors).
    steady: std::ops::Range<Secs>,
}

impl Matcher {
    /// A matcher with a tracker of at most `budget` bytes, for one interface (slot 0)
    /// with addresses `local`.
    pub fn new(doors: Arc<Doors>, local: Vec<IpAddr>, budget: usize) -> Matcher {
        Matcher::with_tracker(doors, local, Tracker::for_budget(budget))
    }

    pub fn with_tracker(doors: Arc<Doors>, local: Vec<IpAddr>, attempts: Tracker) -> Matcher {
        let mine = doors.initial.clone();
        let has_one_time = doors.one_time.iter().any(Option::is_some);
        Matcher {
            metrics: false,
            per_door: vec![Counts::default(); mine.len()],
            open_times: OpenTimes::default(),
            ports: PortIndex::new(&mine),
            shared: doors,
            doors: mine,
            local: vec![local],
            attempts,
            stats: MatchStats::default(),
            has_one_time,
            generation: 0,
            swept: 0,
            steady: 0..Secs::MAX,
        }
        .with_steady_window()
    }

    fn with_steady_window(mut self) -> Matcher {
        self.steady = self.steady_window();
        self
    }

    /// While no rotating door's step changes: from the start of the previous step (a
    /// packet stamped a little before the boundary the matcher already passed belongs
    /// there) to the next boundary.
    fn steady_window(&self) -> std::ops::Range<Secs> {
        let mut window = 0..Secs::MAX;
        for (door, live) in self.doors.iter().zip(&self.shared.rotating) {
            let (Some(live), Some(step), false) = (live, door.step, door.previous) else { continue };
            let step_secs = Secs::from(live.params.step);
            window.start = window.start.max(step.saturating_sub(1).saturating_mul(step_secs));
            window.end = window.end.min(live.params.next_boundary(step));
        }
        window
    }

    /// Moves every rotating door whose step is not the clock's to it: the current
    /// sequence becomes the previous one (attempts at it go along), the previous one's
    /// attempts end, and the kernel filter is rebuilt (`generation`).
    fn rotate(&mut self, now: Secs) {
        let mut map: Vec<Option<DoorId>> = (0..self.doors.len()).map(|i| Some(i as DoorId)).collect();
        let mut changed = false;
        for id in 0..self.doors.len() {
            let (Some(live), Some(prev)) = (&self.shared.rotating[id], self.shared.previous[id]) else {
                continue;
            };
            let (prev, step) = (usize::from(prev), live.params.step_at(now));
            let old = self.doors[id].step.unwrap_or(0);
            if step == old || step + 1 == old {
                continue;
            }
            if step == old + 1 {
                self.doors[prev].sequence = std::mem::take(&mut self.doors[id].sequence);
                self.doors[prev].step = Some(old);
                map[id] = Some(prev as DoorId);
            } else {
                self.doors[prev].rotate_to(live, step.saturating_sub(1), true);
                map[id] = None;
            }
            map[prev] = None;
            let live = live.clone();
            self.doors[id].rotate_to(&live, step, false);
            changed = true;
        }
        if changed {
            self.attempts.remap(|door| map.get(usize::from(door)).copied().flatten());
            self.ports = PortIndex::new(&self.doors);
            self.generation += 1;
        }
        self.steady = self.steady_window();
    }

    /// Sets the addresses of the interface in `slot` (its place in the daemon's list).
    pub fn set_local(&mut self, slot: usize, local: Vec<IpAddr>) {
        if self.local.len() <= slot {
            self.local.resize(slot + 1, Vec::new());
        }
        self.local[slot] = local;
    }

    /// Keeps (or stops keeping) the per-door counters and the knock-to-open times:
    /// what only the metrics endpoint reads. Off when a matcher is made. The counters
    /// kept so far stay as they are.
    pub fn set_metrics(&mut self, on: bool) {
        self.metrics = on;
    }

    /// Whether [`Matcher::door_stats`] and [`Matcher::open_times`] are being kept.
    pub fn metrics(&self) -> bool {
        self.metrics
    }

    pub fn stats(&self) -> MatchStats {
        MatchStats { tracker: self.attempts.stats(), ..self.stats }
    }

    /// Per-door counters, in the order of [`Matcher::door_keys`] (zero unless
    /// [`Matcher::set_metrics`] is on).
    pub fn door_stats(&self) -> impl ExactSizeIterator<Item = DoorStats> + '_ {
        self.per_door.iter().map(Counts::stats)
    }

    /// The identity of each door, by the matcher's door index.
    pub fn door_keys(&self) -> impl Iterator<Item = DoorKey> + '_ {
        self.doors.iter().map(|d| d.key)
    }

    pub fn open_times(&self) -> &OpenTimes {
        &self.open_times
    }

    /// Attempts currently in progress.
    pub fn in_progress(&self) -> usize {
        self.attempts.len()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.attempts
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn local(&self, slot: usize) -> &[IpAddr] {
        self.local.get(slot).map_or(&[], Vec::as_slice)
    }

    /// What the kernel filter of the interface in `slot` must let through now.
    pub fn filter_spec(&self, slot: usize, ipv6: bool) -> FilterSpec {
        filter_spec::spec(&self.doors, self.local(slot), ipv6)
    }

    /// The kernel filter program for the interface in `slot`, of link type `link`.
    pub fn filter_program(&self, slot: usize, ipv6: bool, link: Link) -> Result<Program, CaptureError> {
        filter_spec::program(&self.doors, self.local(slot), ipv6, link)
    }

    /// Whether knockd's kernel filter would pass `k`: some enabled door has this
    /// (protocol, port), is addressed by it, and accepts its flags.
    fn visible(&self, k: &Knock, local: bool) -> bool {
        self.ports.doors(k.proto, k.dst_port).iter().any(|&id| {
            let d = &self.doors[usize::from(id)];
            d.flags_ok(k) && d.addressed_by(k.dst, local)
        })
    }

    /// Feeds one packet that arrived on interface 0, seen at `now`.
    pub fn on_knock(&mut self, k: &Knock, now: Secs, out: &mut impl Sink) {
        self.on_knocks(0, &[(*k, now)], out);
    }

    /// Feeds a batch of packets that arrived on the interface in `slot`, in order, as
    /// they would be one by one.
    ///
    /// Under a flood from random sources nearly every packet's bucket is a cache miss.
    /// Prefetching all the batch's buckets first lets those misses overlap instead of
    /// queueing one behind the other.
    pub fn on_knocks(&mut self, slot: usize, knocks: &[(Knock, Secs)], out: &mut impl Sink) {
        if self.has_one_time {
            self.refresh_one_time();
        }
        // The interface's addresses, held outside `self` for the batch (no copy, no
        // allocation): one load per packet instead of two.
        let local = self.local.get_mut(slot).map(std::mem::take).unwrap_or_default();
        self.on_knocks_to(&local, knocks, out);
        if let Some(l) = self.local.get_mut(slot) {
            *l = local;
        }
    }

    fn on_knocks_to(&mut self, local_addrs: &[IpAddr], knocks: &[(Knock, Secs)], out: &mut impl Sink) {
        let mut buckets = [None; BATCH];
        for chunk in knocks.chunks(BATCH) {
            for ((k, _), entry) in chunk.iter().zip(buckets.iter_mut()) {
                let local = local_addrs.contains(&k.dst);
                *entry = self.visible(k, local).then(|| (self.attempts.bucket(k.src), local));
                if let Some((b, _)) = entry {
                    self.attempts.prefetch(b);
                }
            }
            let generation = self.generation;
            for ((k, now), entry) in chunk.iter().zip(buckets.iter()) {
                if !self.steady.contains(now) {
                    self.rotate(*now);
                }
                // A one-time door that moved on mid-batch, or a rotating door that
                // moved to the next step, changes which ports count.
                let entry = if self.generation == generation {
                    *entry
                } else {
                    let local = local_addrs.contains(&k.dst);
                    self.visible(k, local).then(|| (self.attempts.bucket(k.src), local))
                };
                match entry {
                    Some((b, local)) => self.apply(k, *now, local, &b, out),
                    None => self.stats.invisible += 1,
                }
            }
        }
    }

    /// One visible packet, its source's bucket already found.
    fn apply(&mut self, k: &Knock, now: Secs, local: bool, bucket: &Bucket, out: &mut impl Sink) {
        self.stats.knocks += 1;
        let bucket = *bucket;
        // knockd's rule: a source with a live attempt (at a door this packet addresses)
        // has the packet applied to its attempts only; new attempts begin only from a
        // source with none. So the knock that completes `openSSH` at 9000 does not also
        // begin `closeSSH` (9000,8000,7000), and a wrong knock at one door never starts
        // another.
        let mut live = false;
        for id in 0..self.doors.len() {
            let door = &self.doors[id];
            if !door.enabled || !door.addressed_by(k.dst, local) {
                continue;
            }
            let key = door.key;
            let Some(att) = self.attempts.take(&bucket, id as DoorId) else { continue };
            if att.expired(door, now) {
                // Expired before this packet: dropped first, as knockd does.
                self.stats.timeouts += 1;
                if self.metrics {
                    self.per_door[id].timeouts += 1;
                }
                out.event(Event::Timeout { src: k.src, door: key, stage: att.stage() });
                continue;
            }
            live = true;
            match att.knock(door, k) {
                Advance::Next(next) => {
                    if self.metrics {
                        self.per_door[id].advanced += 1;
                    }
                    out.event(Event::Stage { src: k.src, door: key, stage: next.stage() });
                    // Taken just now, so its slot is free: this cannot be refused.
                    self.attempts.insert(&bucket, id as DoorId, next);
                }
                Advance::Open(opened) => {
                    // Its stage is counted as a completion, by `open`.
                    out.event(Event::Stage { src: k.src, door: key, stage: att.stage() + 1 });
                    self.open(opened, k.src, id as DoorId, now.saturating_sub(att.started()), out);
                }
                Advance::Ignored(same) => {
                    self.attempts.insert(&bucket, id as DoorId, same);
                }
                Advance::Broken => {
                    self.stats.broken += 1;
                    if self.metrics {
                        self.per_door[id].wrong_port += 1;
                    }
                }
            }
        }
        if live {
            return;
        }
        for id in 0..self.doors.len() {
            let door = &self.doors[id];
            if !door.enabled || !door.addressed_by(k.dst, local) {
                continue;
            }
            let key = door.key;
            match Knocking::start(door, k, now) {
                Start::Knocking(att) => {
                    if self.attempts.insert(&bucket, id as DoorId, att) != Inserted::Rejected {
                        if self.metrics {
                            self.per_door[id].started += 1;
                        }
                        out.event(Event::Stage { src: k.src, door: key, stage: 1 });
                    }
                }
                Start::Open(opened) => {
                    if self.metrics {
                        let d = &mut self.per_door[id];
                        d.started += 1;
                        d.opened_at_start += 1;
                    }
                    out.event(Event::Stage { src: k.src, door: key, stage: 1 });
                    self.open(opened, k.src, id as DoorId, 0, out);
                }
                Start::No => {}
            }
        }
    }

    /// A sequence completed, `took` seconds after its first knock.
    fn open(&mut self, _proof: Opened, src: IpAddr, id: DoorId, took: Secs, out: &mut impl Sink) {
        if let (Some(live), Some(step)) =
            (&self.shared.rotating[usize::from(id)], self.doors[usize::from(id)].step)
        {
            // A rotating sequence opens once in its step, whoever knocks it: a replay of
            // what an eavesdropper saw is refused.
            match live.claim(step) {
                Claim::Fresh => {}
                Claim::Used => {
                    self.stats.replayed += 1;
                    out.event(Event::Replayed { src, door: self.doors[usize::from(id)].key });
                    return;
                }
                Claim::Unsaved(message) => {
                    out.event(Event::ClaimUnsaved { door: self.doors[usize::from(id)].key, message })
                }
            }
        }
        self.stats.opened += 1;
        if self.metrics {
            self.per_door[usize::from(id)].completed += 1;
            self.open_times.observe(took);
        }
        out.event(Event::Open { src, door: self.doors[usize::from(id)].key });
        if self.shared.one_time[usize::from(id)].is_some() {
            self.next_one_time(id, out);
        }
    }

    /// Marks the used one-time sequence and loads the next, for every worker; disables
    /// the door when none is left or the file cannot be updated (a sequence that cannot
    /// be marked used must not stay valid).
    fn next_one_time(&mut self, id: DoorId, out: &mut impl Sink) {
        let Some(ot) = &self.shared.one_time[usize::from(id)] else { return };
        let key = self.doors[usize::from(id)].key;
        let mut state = ot.state.lock().unwrap_or_else(|p| p.into_inner());
        if ot.generation.load(Ordering::Acquire) != self.doors[usize::from(id)].generation {
            // Another worker moved on first; this success used a sequence that was
            // current when it was knocked, and there is nothing more to mark.
            drop(state);
            self.refresh_one_time();
            return;
        }
        let result = match state.line.take() {
            None => Ok(None),
            Some(line) => match state.file.mark_used(&line) {
                Err(e) => Err(format!("cannot mark line {} used: {e}", line.line)),
                Ok(()) => state.file.current().map_err(|e| e.to_string()),
            },
        };
        match result {
            Ok(Some(next)) => state.line = Some(next),
            Ok(None) => out.event(Event::DoorDisabled { door: key }),
            Err(message) => out.event(Event::OneTimeError { door: key, message }),
        }
        ot.generation.fetch_add(1, Ordering::AcqRel);
        drop(state);
        self.refresh_one_time();
    }

    /// Picks up one-time doors that any worker moved to their next sequence.
    fn refresh_one_time(&mut self) {
        let mut changed = false;
        for (id, ot) in self.shared.one_time.iter().enumerate() {
            let Some(ot) = ot else { continue };
            let generation = ot.generation.load(Ordering::Acquire);
            if generation == self.doors[id].generation {
                continue;
            }
            let state = ot.state.lock().unwrap_or_else(|p| p.into_inner());
            let door = &mut self.doors[id];
            door.sequence = state.line.as_ref().map(|l| l.sequence.clone()).unwrap_or_default();
            door.enabled = !door.sequence.is_empty();
            door.generation = ot.generation.load(Ordering::Acquire);
            drop(state);
            // Attempts at the old sequence must not complete the new one.
            self.attempts.forget_door(id as DoorId);
            changed = true;
        }
        if changed {
            self.ports = PortIndex::new(&self.doors);
            self.generation += 1;
        }
    }

    /// Switches to a reloaded door table in place, keeping the attempt table (no second
    /// allocation), the counters, the interfaces' addresses, and the attempts whose door
    /// is still there: the same identity, matching the same way (sequence, flags,
    /// target, timeout), wherever it now stands in the file. Attempts at changed or
    /// removed doors end.
    pub fn reload(&mut self, doors: Arc<Doors>) {
        let next = doors.initial.clone();
        let map: Vec<Option<DoorId>> = self
            .doors
            .iter()
            .map(|old| next.iter().position(|new| old.same_as(new)).map(|i| i as DoorId))
            .collect();
        self.attempts.remap(|door| map.get(usize::from(door)).copied().flatten());
        // Counters follow the door's identity, wherever it now stands.
        self.per_door = next
            .iter()
            .map(|new| {
                self.doors
                    .iter()
                    .position(|old| old.key == new.key && old.previous == new.previous)
                    .map(|i| self.per_door[i])
                    .unwrap_or_default()
            })
            .collect();
        self.ports = PortIndex::new(&next);
        self.doors = next;
        self.has_one_time = doors.one_time.iter().any(Option::is_some);
        self.shared = doors;
        self.generation += 1;
        self.steady = self.steady_window();
    }

    /// Fires every sequence timeout due at `now`.
    pub fn expire(&mut self, now: Secs, out: &mut impl Sink) {
        if self.has_one_time {
            self.refresh_one_time();
        }
        if !self.steady.contains(&now) {
            self.rotate(now);
        }
        if now == self.swept {
            return;
        }
        self.swept = now;
        let doors = &self.doors;
        let per_door = &mut self.per_door;
        let metrics = self.metrics;
        let mut fired = 0;
        self.attempts.sweep(|src, id, att| {
            let door = &doors[usize::from(id)];
            let expired = att.expired(door, now);
            if expired {
                fired += 1;
                if metrics {
                    per_door[usize::from(id)].timeouts += 1;
                }
                out.event(Event::Timeout { src, door: door.key, stage: att.stage() });
            }
            expired
        });
        self.stats.timeouts += fired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sequence, Config, Door, Options, TcpFlagRule};
    use sesame_capture::frame::tcp_flags::{ACK, SYN};
    use sesame_capture::Proto;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::PathBuf;

    const US: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    const OTHER_US: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100));
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3));

    fn door(name: &str, seq: &str, timeout: u32) -> Door {
        let mut d = Door::new(name, parse_sequence(seq).unwrap());
        d.seq_timeout = timeout;
        d
    }

    fn syn_only(mut d: Door) -> Door {
        d.tcp_flags = TcpFlagRule { set: SYN, clear: 0 };
        d
    }

    fn matcher(doors: Vec<Door>) -> Matcher {
        let config = Config {
            source: PathBuf::from("test.conf"),
            options: Options::default(),
            doors,
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        Matcher::new(Doors::new(&config).unwrap(), vec![US, OTHER_US], 1 << 20)
    }

    fn tcp(src: IpAddr, port: u16, flags: u8) -> Knock {
        Knock { src, dst: US, proto: Proto::Tcp, src_port: 40000, dst_port: port, tcp_flags: flags }
    }

    fn udp(src: IpAddr, port: u16) -> Knock {
        Knock { src, dst: US, proto: Proto::Udp, src_port: 40000, dst_port: port, tcp_flags: 0 }
    }

    /// Feeds `(seconds, knock)` pairs and returns every event.
    fn run(m: &mut Matcher, knocks: &[(Secs, Knock)]) -> Vec<Event> {
        let mut out = Vec::new();
        for (t, k) in knocks {
            m.on_knock(k, *t, &mut out);
        }
        out
    }

    fn k(name: &str) -> DoorKey {
        DoorKey::of(name, 0)
    }

    fn opens(events: &[Event]) -> Vec<(IpAddr, DoorKey)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Open { src, door } => Some((*src, *door)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stages_advance_and_open() {
        let mut m = matcher(vec![door("openSSH", "7000,8000,9000", 5)]);
        let ev = run(&mut m, &[(100, tcp(A, 7000, SYN)), (101, tcp(A, 8000, SYN)), (102, tcp(A, 9000, SYN))]);
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: k("openSSH"), stage: 1 },
                Event::Stage { src: A, door: k("openSSH"), stage: 2 },
                Event::Stage { src: A, door: k("openSSH"), stage: 3 },
                Event::Open { src: A, door: k("openSSH") },
            ]
        );
        assert_eq!(m.in_progress(), 0, "a completed attempt is removed");
    }

    #[test]
    fn per_door_counters_follow_stages_successes_failures_and_reloads() {
        let mut m = matcher(vec![door("a", "7000,8000,9000", 5), door("b", "6000,6001", 5)]);
        m.set_metrics(true);
        run(&mut m, &[(100, tcp(A, 7000, SYN)), (101, tcp(A, 8000, SYN)), (102, tcp(A, 9000, SYN))]);
        // Wrong port: 7000 then 9000 breaks the attempt at `a`.
        run(&mut m, &[(103, tcp(B, 7000, SYN)), (103, tcp(B, 9000, SYN))]);
        // Timeout: `b` begun and left.
        run(&mut m, &[(104, tcp(A, 6000, SYN))]);
        m.expire(110, &mut Vec::new());
        let a = DoorStats { started: 2, stages: 4, completed: 1, timeouts: 0, wrong_port: 1 };
        let b = DoorStats { started: 1, stages: 1, completed: 0, timeouts: 1, wrong_port: 0 };
        assert_eq!(m.door_stats().collect::<Vec<_>>(), [a, b]);
        assert_eq!(m.door_keys().collect::<Vec<_>>(), [k("a"), k("b")]);
        assert_eq!(m.open_times().sum, 2);
        assert_eq!(m.open_times().buckets[2], 1, "2 s falls in the le=2 bucket");
        // Swapped on reload: each door's counters go with its name; a new door starts at 0.
        let config = Config {
            source: PathBuf::from("test.conf"),
            options: Options::default(),
            doors: vec![door("c", "5000", 5), door("b", "6000,6001", 5), door("a", "7000,8000,9000", 5)],
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        m.reload(Doors::new(&config).unwrap());
        assert_eq!(m.door_stats().collect::<Vec<_>>(), [DoorStats::default(), b, a]);
    }

    #[test]
    fn without_metrics_nothing_is_counted_and_matching_is_the_same() {
        let doors = || vec![door("a", "7000,8000,9000", 5), door("one", "1234:udp", 5)];
        let knocks = [
            (100, tcp(A, 7000, SYN)),
            (101, tcp(A, 8000, SYN)),
            (102, tcp(A, 9000, SYN)),
            (103, tcp(B, 7000, SYN)),
            (103, tcp(B, 9000, SYN)),
            (104, udp(B, 1234)),
            (104, tcp(A, 7000, SYN)),
        ];
        let mut on = matcher(doors());
        on.set_metrics(true);
        let mut off = matcher(doors());
        assert!(!off.metrics(), "off unless asked for");
        let (mut ev_on, mut ev_off) = (run(&mut on, &knocks), run(&mut off, &knocks));
        on.expire(120, &mut ev_on);
        off.expire(120, &mut ev_off);
        assert_eq!(ev_on, ev_off);
        assert_eq!(on.stats(), off.stats(), "the summary's counters do not depend on metrics");
        let a = DoorStats { started: 3, stages: 5, completed: 1, timeouts: 1, wrong_port: 1 };
        let one = DoorStats { started: 1, stages: 1, completed: 1, timeouts: 0, wrong_port: 0 };
        assert_eq!(on.door_stats().collect::<Vec<_>>(), [a, one]);
        assert_eq!(on.open_times().buckets.iter().sum::<u64>(), 2);
        assert_eq!(off.door_stats().collect::<Vec<_>>(), [DoorStats::default(); 2]);
        assert_eq!(*off.open_times(), OpenTimes::default());
    }

    #[test]
    fn single_port_door_opens_on_first_knock() {
        let mut m = matcher(vec![door("one", "1234:udp", 5)]);
        let ev = run(&mut m, &[(1, udp(A, 1234))]);
        assert_eq!(
            ev,
            vec![Event::Stage { src: A, door: k("one"), stage: 1 }, Event::Open { src: A, door: k("one") }]
        );
    }

    #[test]
    fn wrong_order_resets_silently() {
        let mut m = matcher(vec![door("openSSH", "7000,8000,9000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 8000, SYN)), (1, tcp(A, 7000, SYN)), (1, tcp(A, 9000, SYN))]);
        // 8000 is no first port: nothing; 7000 starts; 9000 breaks it, silently.
        assert_eq!(ev, vec![Event::Stage { src: A, door: k("openSSH"), stage: 1 }]);
        assert_eq!(m.in_progress(), 0);
        assert_eq!(m.stats().broken, 1);
    }

    #[test]
    fn restart_mid_sequence_fails() {
        // The 7000 that breaks the attempt is consumed: it does not start a new one.
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        let seq = [7000, 8000, 7000, 8000, 9000].map(|p| (1, tcp(A, p, SYN)));
        let ev = run(&mut m, &seq);
        assert!(opens(&ev).is_empty(), "{ev:?}");
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: k("d"), stage: 1 },
                Event::Stage { src: A, door: k("d"), stage: 2 }
            ]
        );
    }

    #[test]
    fn duplicate_knock_invalidates() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: k("d"), stage: 1 }]);
    }

    #[test]
    fn wrong_flags_are_ignored_not_reset() {
        let mut m = matcher(vec![syn_only(door("d", "7000,8000,9000", 5))]);
        let ev = run(
            &mut m,
            &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, ACK)), (1, tcp(A, 8000, SYN)), (1, tcp(A, 9000, SYN))],
        );
        assert_eq!(opens(&ev), vec![(A, k("d"))]);
        // An ACK to the first port does not start anything either.
        let ev = run(&mut m, &[(2, tcp(B, 7000, ACK))]);
        assert!(ev.is_empty());
    }

    #[test]
    fn plain_flag_means_set_and_others_ignored() {
        // `syn` also matches SYN+ACK; `!ack` forbids it.
        let mut m = matcher(vec![syn_only(door("d", "7000", 5))]);
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN | ACK))])), vec![(A, k("d"))]);
        let mut d = door("d", "7000", 5);
        d.tcp_flags = TcpFlagRule { set: SYN, clear: ACK };
        let mut m = matcher(vec![d]);
        assert!(run(&mut m, &[(1, tcp(A, 7000, SYN | ACK))]).is_empty());
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN))])), vec![(A, k("d"))]);
    }

    #[test]
    fn tcp_flags_do_not_apply_to_udp_steps() {
        let mut m = matcher(vec![syn_only(door("d", "7000,8000:udp", 5))]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, udp(A, 8000))]);
        assert_eq!(opens(&ev), vec![(A, k("d"))]);
    }

    #[test]
    fn wrong_protocol_on_a_knock_port_invalidates() {
        // 8000 is a knock port for TCP (door d) and for UDP (door u): a UDP 8000 is
        // visible, and it is not d's next step.
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5), door("u", "1,8000:udp", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, udp(A, 8000)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: k("d"), stage: 1 }]);
    }

    #[test]
    fn ports_of_no_door_never_reset() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        let ev = run(
            &mut m,
            &[
                (1, tcp(A, 7000, SYN)),
                (1, tcp(A, 22, SYN)),
                (1, udp(A, 7000)), // right port, protocol of no door: invisible too
                (1, tcp(A, 8000, SYN)),
                (1, tcp(A, 9000, SYN)),
            ],
        );
        assert_eq!(opens(&ev), vec![(A, k("d"))]);
        assert_eq!(m.stats().invisible, 2);
    }

    #[test]
    fn packets_invisible_by_flags_do_not_reset_other_doors() {
        // knockd's kernel filter for port 5000 requires SYN (door s), so a bare ACK to
        // 5000 never reaches door n's attempt.
        let mut m = matcher(vec![syn_only(door("s", "5000,5001", 5)), door("n", "7000,8000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, ACK)), (1, tcp(A, 5000, ACK)), (1, tcp(A, 8000, ACK))]);
        assert_eq!(opens(&ev), vec![(A, k("n"))]);
    }

    #[test]
    fn any_other_door_port_resets() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5), door("e", "1111,2222", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 2222, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: k("d"), stage: 1 }]);
    }

    #[test]
    fn doors_sharing_a_prefix_advance_in_parallel() {
        let mut m = matcher(vec![door("ssh", "7000,8000,9000", 5), door("pfx", "7000,8000,9100:udp", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN)), (1, udp(A, 9100))]);
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: k("ssh"), stage: 1 },
                Event::Stage { src: A, door: k("pfx"), stage: 1 },
                Event::Stage { src: A, door: k("ssh"), stage: 2 },
                Event::Stage { src: A, door: k("pfx"), stage: 2 },
                Event::Stage { src: A, door: k("pfx"), stage: 3 },
                Event::Open { src: A, door: k("pfx") },
            ]
        );
    }

    #[test]
    fn the_knock_that_completes_one_door_does_not_begin_another() {
        // The seed's openSSH/closeSSH pair: 9000 ends openSSH and is closeSSH's first port.
        let mut m =
            matcher(vec![door("openSSH", "7000,8000,9000", 5), door("closeSSH", "9000,8000,7000", 5)]);
        let open = [7000, 8000, 9000].map(|p| (1, tcp(A, p, SYN)));
        let ev = run(&mut m, &open);
        assert_eq!(opens(&ev), vec![(A, k("openSSH"))]);
        assert!(!ev.contains(&Event::Stage { src: A, door: k("closeSSH"), stage: 1 }), "{ev:?}");
        let close = [9000, 8000, 7000].map(|p| (2, tcp(A, p, SYN)));
        assert_eq!(opens(&run(&mut m, &close)), vec![(A, k("closeSSH"))]);
    }

    #[test]
    fn a_wrong_knock_at_one_door_never_starts_another() {
        // knockd: `7000 9000 8000 7000` gives `open: Stage 1` twice and nothing else.
        let mut m = matcher(vec![door("open", "7000,8000,9000", 5), door("close", "9000,8000,7000", 5)]);
        let ev = run(&mut m, &[7000, 9000, 8000, 7000].map(|p| (1, tcp(A, p, SYN))));
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: k("open"), stage: 1 },
                Event::Stage { src: A, door: k("open"), stage: 1 }
            ]
        );
    }

    #[test]
    fn a_batch_matches_one_by_one() {
        let doors = || vec![door("open", "7000,8000,9000", 5), door("close", "9000,8000,7000", 5)];
        let mut rng = 0x1234_5678_9abc_def1u64;
        let knocks: Vec<(Secs, Knock)> = (0..500)
            .map(|i| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let src = IpAddr::V4(Ipv4Addr::new(198, 18, 1, (rng % 5) as u8));
                let port = [7000, 8000, 9000, 22][(rng >> 8) as usize % 4];
                (100 + i / 50, tcp(src, port, SYN))
            })
            .collect();
        let mut one = matcher(doors());
        let expected = run(&mut one, &knocks);
        let mut batched = matcher(doors());
        let mut got = Vec::new();
        let input: Vec<(Knock, Secs)> = knocks.iter().map(|(t, k)| (*k, *t)).collect();
        batched.on_knocks(0, &input, &mut got);
        assert_eq!(got, expected);
        assert!(opens(&got).len() > 3, "the sample exercises opens: {}", opens(&got).len());
    }

    /// A one-time door over `lines`, in a scratch directory kept alive by the guard.
    fn one_time(lines: &str) -> (sesame_lab::TempDir, std::path::PathBuf, Config) {
        let dir = sesame_lab::TempDir::new("otm").unwrap();
        let path = dir.join("otp");
        std::fs::write(&path, lines).unwrap();
        let mut d = door("otp", "1", 5);
        d.sequence.clear();
        d.one_time = Some(crate::config::OneTimeSequences { path: path.clone() });
        let config = Config {
            source: "t".into(),
            options: Options::default(),
            doors: vec![d],
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        (dir, path, config)
    }

    #[test]
    fn one_time_sequences_are_used_once_and_then_the_door_closes() {
        let (_dir, path, config) = one_time("7000,8000\n7100,8100\n");
        let mut m = Matcher::new(Doors::new(&config).unwrap(), vec![US], 1 << 20);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(opens(&ev), vec![(A, k("otp"))]);
        // knockd's mark: '#' over the first byte, the file keeps its length.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#000,8000\n7100,8100\n");
        // The used sequence no longer opens; the next one does, from any source.
        assert!(opens(&run(&mut m, &[(2, tcp(B, 7000, SYN)), (2, tcp(B, 8000, SYN))])).is_empty());
        let ev = run(&mut m, &[(3, tcp(B, 7100, SYN)), (3, tcp(B, 8100, SYN))]);
        assert_eq!(opens(&ev), vec![(B, k("otp"))]);
        assert!(ev.contains(&Event::DoorDisabled { door: k("otp") }), "no sequence left: {ev:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#000,8000\n#100,8100\n");
        assert!(run(&mut m, &[(4, tcp(A, 7100, SYN)), (4, tcp(A, 8100, SYN))]).is_empty());
        assert!(m.filter_spec(0, true).tcp_ports.is_empty(), "a disabled door's ports leave the filter");
    }

    #[test]
    fn a_one_time_sequence_used_on_one_worker_is_gone_on_every_worker() {
        let (_dir, _path, config) = one_time("7000,8000\n7100,8100\n");
        let doors = Doors::new(&config).unwrap();
        let mut w1 = Matcher::new(doors.clone(), vec![US], 1 << 20);
        let mut w2 = Matcher::new(doors, vec![US], 1 << 20);
        assert_eq!(
            opens(&run(&mut w1, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))])),
            vec![(A, k("otp"))]
        );
        let generation = w2.generation();
        assert!(opens(&run(&mut w2, &[(2, tcp(B, 7000, SYN)), (2, tcp(B, 8000, SYN))])).is_empty());
        assert_ne!(w2.generation(), generation, "the other worker rebuilds its filter");
        assert_eq!(w2.filter_spec(0, true).tcp_ports, vec![7100, 8100]);
        assert_eq!(
            opens(&run(&mut w2, &[(3, tcp(B, 7100, SYN)), (3, tcp(B, 8100, SYN))])),
            vec![(B, k("otp"))]
        );
    }

    #[test]
    fn a_reload_keeps_attempts_at_unchanged_doors_only() {
        let old_doors = vec![door("keep", "7000,8000,9000", 5), door("change", "7000,8100", 5)];
        let mut old = matcher(old_doors);
        run(&mut old, &[(1, tcp(A, 7000, SYN))]);
        assert_eq!(old.in_progress(), 2);
        // The new config reorders the doors, changes one and adds one.
        let new_doors = vec![
            door("new", "6000,6100", 5),
            door("change", "7000,8200", 5),
            door("keep", "7000,8000,9000", 5),
        ];
        let config = Config {
            source: "t".into(),
            options: Options::default(),
            doors: new_doors,
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        let capacity = old.tracker().capacity();
        let mut new = old;
        new.reload(Doors::new(&config).unwrap());
        assert_eq!(new.tracker().capacity(), capacity, "the same table, not a new one");
        assert_eq!(new.in_progress(), 1, "only the unchanged door's attempt carries over");
        let ev = run(&mut new, &[(2, tcp(A, 8000, SYN)), (2, tcp(A, 9000, SYN))]);
        assert_eq!(
            opens(&ev),
            vec![(A, k("keep"))],
            "the knock continues at `keep`, now third in the file: {ev:?}"
        );
    }

    #[test]
    fn sources_are_independent() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        let ev = run(
            &mut m,
            &[
                (1, tcp(A, 7000, SYN)),
                (1, tcp(B, 7000, SYN)),
                (1, tcp(B, 9000, SYN)), // breaks B only
                (1, tcp(A, 8000, SYN)),
                (1, tcp(A, 9000, SYN)),
            ],
        );
        assert_eq!(opens(&ev), vec![(A, k("d"))]);
    }

    #[test]
    fn ipv6_knocker() {
        let v6us = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let v6a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let config = Config {
            source: PathBuf::from("t"),
            options: Options::default(),
            doors: vec![door("d", "7000,8000", 5)],
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        let mut m = Matcher::new(Doors::new(&config).unwrap(), vec![US, v6us], 1 << 20);
        let kn =
            |p| Knock { src: v6a, dst: v6us, proto: Proto::Tcp, src_port: 1, dst_port: p, tcp_flags: SYN };
        assert_eq!(opens(&run(&mut m, &[(1, kn(7000)), (1, kn(8000))])), vec![(v6a, k("d"))]);
    }

    #[test]
    fn only_packets_to_us_count() {
        let mut m = matcher(vec![door("d", "7000,8000", 5)]);
        let mut elsewhere = tcp(A, 7000, SYN);
        elsewhere.dst = IpAddr::V4(Ipv4Addr::new(198, 19, 9, 9));
        assert!(run(&mut m, &[(1, elsewhere)]).is_empty());
        // Any of our addresses will do, and they may differ between knocks.
        let mut second = tcp(A, 8000, SYN);
        second.dst = OTHER_US;
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, second)])), vec![(A, k("d"))]);
    }

    #[test]
    fn target_replaces_our_addresses() {
        let target = IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5));
        let mut d = door("t", "7000,8000", 5);
        d.target = Some(target);
        let mut m = matcher(vec![d, door("local", "7000,9000", 5)]);
        let to_target = |p| Knock { dst: target, ..tcp(A, p, SYN) };
        // Knocks to our own address do nothing for the Target door...
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: k("local"), stage: 1 }]);
        // ...and knocks to the target do nothing for the local door.
        let ev = run(&mut m, &[(2, to_target(7000)), (2, to_target(9000)), (2, to_target(8000))]);
        assert!(ev.contains(&Event::Open { src: A, door: k("t") }), "{ev:?}");
        assert!(!ev.iter().any(|e| matches!(e, Event::Open { door, .. } if *door == k("local"))));
    }

    #[test]
    fn timeout_counts_whole_seconds_from_the_first_knock() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        // 104 - 100 = 4 < 5: still in time, although the knocks are spread out.
        let ev = run(&mut m, &[(100, tcp(A, 7000, SYN)), (103, tcp(A, 8000, SYN)), (104, tcp(A, 9000, SYN))]);
        assert_eq!(opens(&ev), vec![(A, k("d"))]);
        // 105 - 100 = 5 >= 5: too late, even though the previous knock was recent.
        let ev = run(&mut m, &[(100, tcp(B, 7000, SYN)), (104, tcp(B, 8000, SYN)), (105, tcp(B, 9000, SYN))]);
        assert!(opens(&ev).is_empty());
        assert!(ev.contains(&Event::Timeout { src: B, door: k("d"), stage: 2 }), "{ev:?}");
    }

    #[test]
    fn an_expired_attempt_is_dropped_before_the_packet_so_it_may_restart() {
        let mut m = matcher(vec![door("d", "7000,8000", 5)]);
        let ev = run(&mut m, &[(10, tcp(A, 7000, SYN)), (20, tcp(A, 7000, SYN)), (21, tcp(A, 8000, SYN))]);
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: k("d"), stage: 1 },
                Event::Timeout { src: A, door: k("d"), stage: 1 },
                Event::Stage { src: A, door: k("d"), stage: 1 },
                Event::Stage { src: A, door: k("d"), stage: 2 },
                Event::Open { src: A, door: k("d") },
            ]
        );
    }

    #[test]
    fn timer_fires_timeouts_on_time_and_not_before() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5), door("e", "7000,1", 2)]);
        let mut out = run(&mut m, &[(100, tcp(A, 7000, SYN)), (101, tcp(A, 8000, SYN))]);
        out.clear();
        m.expire(101, &mut out);
        assert!(out.is_empty());
        m.expire(102, &mut out);
        // e broke at 8000 already: nothing to time out. d is still in time.
        assert!(out.is_empty(), "{out:?}");
        m.expire(104, &mut out);
        assert!(out.is_empty());
        m.expire(105, &mut out);
        assert_eq!(out, vec![Event::Timeout { src: A, door: k("d"), stage: 2 }]);
        assert_eq!(m.in_progress(), 0);
        out.clear();
        m.expire(1000, &mut out);
        assert!(out.is_empty(), "fired once only");
    }

    #[test]
    fn timer_ignores_attempts_that_restarted() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        // Begun at 100, broken at 101, begun again at 103.
        let mut out =
            run(&mut m, &[(100, tcp(A, 7000, SYN)), (101, tcp(A, 9000, SYN)), (103, tcp(A, 7000, SYN))]);
        out.clear();
        m.expire(105, &mut out);
        assert!(out.is_empty(), "the attempt begun at 103 is not due at 105: {out:?}");
        m.expire(108, &mut out);
        assert_eq!(out, vec![Event::Timeout { src: A, door: k("d"), stage: 1 }]);
    }

    #[test]
    fn a_packet_is_ours_only_on_the_interface_whose_address_it_names() {
        let mut m = matcher(vec![door("d", "7000,8000", 5)]);
        let wg = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));
        m.set_local(1, vec![wg]);
        let to_wg = |p| Knock { dst: wg, ..tcp(A, p, SYN) };
        let mut out = Vec::new();
        // Interface 0's address arriving on interface 1, and the reverse: not knocks.
        m.on_knocks(1, &[(tcp(A, 7000, SYN), 1), (tcp(A, 8000, SYN), 1)], &mut out);
        m.on_knocks(0, &[(to_wg(7000), 1), (to_wg(8000), 1)], &mut out);
        assert!(out.is_empty(), "{out:?}");
        m.on_knocks(1, &[(to_wg(7000), 2), (to_wg(8000), 2)], &mut out);
        assert_eq!(opens(&out), vec![(A, k("d"))]);
        assert_eq!(m.filter_spec(1, true).v4_dst, vec![Ipv4Addr::new(198, 19, 0, 1)]);
        // New addresses count at once.
        let added = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2));
        m.set_local(1, vec![wg, added]);
        let mut out = Vec::new();
        let to_added = |p| Knock { dst: added, ..tcp(B, p, SYN) };
        m.on_knocks(1, &[(to_added(7000), 3), (to_added(8000), 3)], &mut out);
        assert_eq!(opens(&out), vec![(B, k("d"))]);
    }

    #[test]
    fn a_reload_that_swaps_two_doors_keeps_each_attempt_at_its_own_door() {
        let mut m = matcher(vec![door("doorA", "7001,7002,7003", 5), door("doorB", "7004,7005,7006", 5)]);
        run(&mut m, &[(1, tcp(A, 7001, SYN)), (1, tcp(B, 7004, SYN))]);
        let config = Config {
            source: "t".into(),
            options: Options::default(),
            doors: vec![door("doorB", "7004,7005,7006", 5), door("doorA", "7001,7002,7003", 5)],
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        m.reload(Doors::new(&config).unwrap());
        assert_eq!(m.in_progress(), 2);
        let ev = run(
            &mut m,
            &[(2, tcp(A, 7002, SYN)), (2, tcp(A, 7003, SYN)), (2, tcp(B, 7005, SYN)), (2, tcp(B, 7006, SYN))],
        );
        assert_eq!(opens(&ev), vec![(A, k("doorA")), (B, k("doorB"))]);
    }

    #[test]
    fn filter_spec_lists_ports_addresses_and_targets() {
        let target = IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5));
        let mut t = door("t", "6000:udp", 5);
        t.target = Some(target);
        let m = matcher(vec![door("d", "7000,8000:udp,9000", 5), t]);
        let spec = m.filter_spec(0, true);
        assert_eq!(spec.tcp_ports, vec![7000, 9000]);
        assert_eq!(spec.udp_ports, vec![6000, 8000]);
        assert_eq!(
            spec.v4_dst,
            vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 5, 5)]
        );
    }
}
