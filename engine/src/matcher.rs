//! The knock state machine: knockd 0.8's matching rules, driven by packet
//! timestamps and an explicit clock so every rule is tested without sleeping.
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
//!   packets not addressed to us (or to the door's Target);
//! - the sequence must complete within `seq_timeout` whole seconds of the first
//!   knock; expired attempts are dropped before the packet is looked at.
//!
//! Unlike knockd, timeouts are also fired by [`Matcher::expire`] from a timer, so
//! they are logged on time instead of at the next packet, and attempts live in a
//! bounded [`Tracker`] instead of a list that grows with a flood.
//!
//! Each capture worker owns one `Matcher` outright. What workers share is the door
//! list ([`Doors`]); only one-time doors change at run time, and a worker notices such
//! a change with one atomic load, taking a lock only when it happened.

use crate::config::onetime::{OneTimeFile, OneTimeLine};
use crate::config::{Config, ConfigError, Door, Step, TcpFlagRule};
use crate::tracker::{Inserted, Tracker, TrackerStats};
use sesame_capture::filter::FilterSpec;
use sesame_capture::{Knock, Proto};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Index of a door in the config's door list.
pub type DoorId = u16;

/// Packets whose table lookups [`Matcher::on_knocks`] overlaps.
pub const BATCH: usize = 32;

/// Time as whole seconds since the epoch: knockd compares packet timestamps truncated
/// to seconds, and so do we, to the same rounding.
pub type Secs = u64;

/// What the matcher reports. Door names and commands are looked up by the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `IP: DOOR: Stage N`
    Stage { src: IpAddr, door: DoorId, stage: u8 },
    /// `IP: DOOR: OPEN SESAME`
    Open { src: IpAddr, door: DoorId },
    /// `IP: DOOR: sequence timeout (stage N)`
    Timeout { src: IpAddr, door: DoorId, stage: u8 },
    /// A one-time door used its last sequence and is disabled.
    DoorDisabled { door: DoorId },
    /// A one-time sequence file could not be updated or read; the door is disabled
    /// rather than left open to a replay.
    OneTimeError { door: DoorId, message: String },
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

/// An attempt in progress: `stage` steps matched (at least one, fewer than all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knocking {
    stage: u8,
    started: Secs,
}

/// A completed sequence. Holding one is the only way to produce an [`Event::Open`].
#[derive(Debug, PartialEq, Eq)]
pub struct Opened;

/// Where a knock takes an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Advance {
    /// The next step matched; more to go.
    Next(Knocking),
    /// The last step matched.
    Open(Opened),
    /// Right port, wrong TCP flags: the packet does not count either way.
    Ignored(Knocking),
    /// Anything else: the attempt is invalidated and the packet consumed.
    Broken,
}

/// What a first knock gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    Knocking(Knocking),
    Open(Opened),
    No,
}

impl Knocking {
    /// An attempt as stored in the tracker.
    pub(crate) fn at(stage: u8, started: Secs) -> Knocking {
        Knocking { stage, started }
    }

    /// A packet that may begin an attempt at `door`.
    pub fn start(door: &DoorState, k: &Knock, now: Secs) -> Start {
        if !door.flags_ok(k) || !door.step_is(0, k) {
            return Start::No;
        }
        if door.sequence.len() == 1 {
            Start::Open(Opened)
        } else {
            Start::Knocking(Knocking { stage: 1, started: now })
        }
    }

    /// The next packet of this attempt.
    pub fn knock(self, door: &DoorState, k: &Knock) -> Advance {
        let flags_ok = door.flags_ok(k);
        if flags_ok && door.step_is(self.stage as usize, k) {
            let stage = self.stage + 1;
            if stage as usize >= door.sequence.len() {
                Advance::Open(Opened)
            } else {
                Advance::Next(Knocking { stage, ..self })
            }
        } else if !flags_ok {
            Advance::Ignored(self)
        } else {
            Advance::Broken
        }
    }

    pub fn stage(&self) -> u8 {
        self.stage
    }

    pub fn started(&self) -> Secs {
        self.started
    }

    /// knockd's test: whole seconds since the first knock reach the timeout.
    pub fn expired(&self, door: &DoorState, now: Secs) -> bool {
        now.saturating_sub(self.started) >= u64::from(door.seq_timeout)
    }
}

/// A one-time door's file and current line, shared by all workers.
#[derive(Debug)]
struct OneTime {
    /// Bumped each time the current sequence changes.
    generation: AtomicU64,
    state: Mutex<OneTimeState>,
}

#[derive(Debug)]
struct OneTimeState {
    file: OneTimeFile,
    /// `None` once the door is disabled.
    line: Option<OneTimeLine>,
}

/// The doors, shared by every worker's matcher.
#[derive(Debug)]
pub struct Doors {
    initial: Vec<DoorState>,
    one_time: Vec<Option<OneTime>>,
}

impl Doors {
    /// Compiles the config's doors, reading the one-time-sequence files.
    pub fn new(config: &Config) -> Result<Arc<Doors>, ConfigError> {
        assert!(config.doors.len() <= usize::from(DoorId::MAX), "too many doors");
        let mut initial = Vec::new();
        let mut one_time = Vec::new();
        for door in &config.doors {
            let (state, ot) = DoorState::from_door(door)?;
            initial.push(state);
            one_time.push(ot);
        }
        Ok(Arc::new(Doors { initial, one_time }))
    }

    /// Doors that are disabled from the start (one-time files with no sequence left).
    pub fn disabled(&self) -> impl Iterator<Item = DoorId> + '_ {
        self.initial.iter().enumerate().filter(|(_, d)| !d.enabled).map(|(i, _)| i as DoorId)
    }

    pub fn len(&self) -> usize {
        self.initial.len()
    }

    /// The kernel filter for these doors as configured, on our addresses `local`.
    pub fn filter_spec(&self, local: &[IpAddr], ipv6: bool) -> FilterSpec {
        filter_spec(&self.initial, local, ipv6)
    }

    pub fn is_empty(&self) -> bool {
        self.initial.is_empty()
    }
}

/// What the kernel filter must let through: every knock port of every enabled door,
/// to our addresses (`local`) and the doors' targets.
fn filter_spec(doors: &[DoorState], local: &[IpAddr], ipv6: bool) -> FilterSpec {
    let mut spec = FilterSpec::default();
    let mut add = |ip: IpAddr| match ip {
        IpAddr::V4(a) if !spec.v4_dst.contains(&a) => spec.v4_dst.push(a),
        IpAddr::V6(a) if ipv6 && !spec.v6_dst.contains(&a) => spec.v6_dst.push(a),
        _ => {}
    };
    let enabled = doors.iter().filter(|d| d.enabled);
    if enabled.clone().any(|d| d.target.is_none()) {
        local.iter().copied().for_each(&mut add);
    }
    enabled.clone().filter_map(|d| d.target).for_each(&mut add);
    for step in enabled.flat_map(|d| &d.sequence) {
        match step.proto {
            Proto::Tcp => spec.tcp_ports.push(step.port),
            Proto::Udp => spec.udp_ports.push(step.port),
        }
    }
    for ports in [&mut spec.tcp_ports, &mut spec.udp_ports] {
        ports.sort_unstable();
        ports.dedup();
    }
    spec
}

/// The matching-relevant part of a door, as one worker currently sees it.
#[derive(Clone, Debug)]
pub struct DoorState {
    pub sequence: Vec<Step>,
    pub seq_timeout: u32,
    flags: TcpFlagRule,
    target: Option<IpAddr>,
    enabled: bool,
    /// For one-time doors: the shared generation this copy was made from.
    generation: u64,
}

impl DoorState {
    fn from_door(door: &Door) -> Result<(DoorState, Option<OneTime>), ConfigError> {
        let (sequence, one_time) = match &door.one_time {
            None => (door.sequence.clone(), None),
            Some(ots) => {
                let file = OneTimeFile::open(&ots.path)?;
                let line = file.current()?;
                let seq = line.as_ref().map(|l| l.sequence.clone()).unwrap_or_default();
                (
                    seq,
                    Some(OneTime {
                        generation: AtomicU64::new(0),
                        state: Mutex::new(OneTimeState { file, line }),
                    }),
                )
            }
        };
        let enabled = !sequence.is_empty();
        let state = DoorState {
            sequence,
            seq_timeout: door.seq_timeout,
            flags: door.tcp_flags,
            target: door.target,
            enabled,
            generation: 0,
        };
        Ok((state, one_time))
    }

    fn flags_ok(&self, k: &Knock) -> bool {
        k.proto != Proto::Tcp || self.flags.matches(k.tcp_flags)
    }

    fn step_is(&self, i: usize, k: &Knock) -> bool {
        self.sequence.get(i).is_some_and(|s| s.port == k.dst_port && s.proto == k.proto)
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
    pub broken: u64,
    pub timeouts: u64,
    pub tracker: TrackerStats,
}

/// (protocol, port) → the doors with that step, as a dense table: one load per packet.
struct PortIndex {
    /// Index into `lists` + 1 for each (protocol, port); 0 = no door.
    slots: Box<[u16]>,
    lists: Vec<Vec<DoorId>>,
}

impl PortIndex {
    fn new(doors: &[DoorState]) -> PortIndex {
        let mut index = PortIndex { slots: vec![0u16; 2 * 65536].into_boxed_slice(), lists: Vec::new() };
        for (id, door) in doors.iter().enumerate().filter(|(_, d)| d.enabled) {
            for step in &door.sequence {
                let slot = Self::slot(step.proto, step.port);
                if index.slots[slot] == 0 {
                    index.lists.push(Vec::new());
                    index.slots[slot] = index.lists.len() as u16;
                }
                let list = &mut index.lists[usize::from(index.slots[slot]) - 1];
                if !list.contains(&(id as DoorId)) {
                    list.push(id as DoorId);
                }
            }
        }
        index
    }

    fn slot(proto: Proto, port: u16) -> usize {
        usize::from(proto == Proto::Udp) << 16 | usize::from(port)
    }

    fn doors(&self, proto: Proto, port: u16) -> &[DoorId] {
        match self.slots[Self::slot(proto, port)] {
            0 => &[],
            n => &self.lists[usize::from(n) - 1],
        }
    }

    fn ports(&self) -> impl Iterator<Item = (Proto, u16)> + '_ {
        self.slots.iter().enumerate().filter(|(_, &n)| n != 0).map(|(i, _)| {
            let proto = if i >> 16 == 1 { Proto::Udp } else { Proto::Tcp };
            (proto, i as u16)
        })
    }
}

impl std::fmt::Debug for PortIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports()).finish()
    }
}

/// One worker's matcher: its view of the doors and its share of the attempts.
#[derive(Debug)]
pub struct Matcher {
    shared: Arc<Doors>,
    doors: Vec<DoorState>,
    /// Our own addresses: what "addressed to us" means for doors without a Target.
    local: Vec<IpAddr>,
    ports: PortIndex,
    attempts: Tracker,
    stats: MatchStats,
    /// Whether any door is one-time (only then is the shared state polled).
    has_one_time: bool,
    /// Bumped whenever the set of knock ports changes (one-time doors), so the capture
    /// side knows to rebuild its kernel filter.
    generation: u64,
    /// The second of the last sweep: timeouts are whole seconds, so one sweep per
    /// second is on time, and more would only burn memory bandwidth.
    swept: Secs,
}

impl Matcher {
    /// A matcher with a tracker of at most `budget` bytes, listening on `local`.
    pub fn new(doors: Arc<Doors>, local: Vec<IpAddr>, budget: usize) -> Matcher {
        Matcher::with_tracker(doors, local, Tracker::for_budget(budget))
    }

    pub fn with_tracker(doors: Arc<Doors>, local: Vec<IpAddr>, attempts: Tracker) -> Matcher {
        let mine = doors.initial.clone();
        let has_one_time = doors.one_time.iter().any(Option::is_some);
        Matcher {
            ports: PortIndex::new(&mine),
            shared: doors,
            doors: mine,
            local,
            attempts,
            stats: MatchStats::default(),
            has_one_time,
            generation: 0,
            swept: 0,
        }
    }

    pub fn stats(&self) -> MatchStats {
        MatchStats { tracker: self.attempts.stats(), ..self.stats }
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

    /// What the kernel filter must let through for this worker's doors now.
    pub fn filter_spec(&self, ipv6: bool) -> FilterSpec {
        filter_spec(&self.doors, &self.local, ipv6)
    }

    /// Whether a packet to `dst` (which is one of ours iff `local`) addresses `door`.
    fn addressed_to(door: &DoorState, dst: IpAddr, local: bool) -> bool {
        match door.target {
            Some(t) => t == dst,
            None => local,
        }
    }

    fn is_local(&self, dst: IpAddr) -> bool {
        self.local.contains(&dst)
    }

    /// Whether knockd's kernel filter would pass `k`: some enabled door has this
    /// (protocol, port), is addressed by it, and accepts its flags.
    fn visible(&self, k: &Knock, local: bool) -> bool {
        self.ports.doors(k.proto, k.dst_port).iter().any(|&id| {
            let d = &self.doors[usize::from(id)];
            d.flags_ok(k) && Self::addressed_to(d, k.dst, local)
        })
    }

    /// Feeds one packet, seen at `now`.
    pub fn on_knock(&mut self, k: &Knock, now: Secs, out: &mut impl Sink) {
        if self.has_one_time {
            self.refresh_one_time();
        }
        let local = self.is_local(k.dst);
        if !self.visible(k, local) {
            self.stats.invisible += 1;
            return;
        }
        let bucket = self.attempts.bucket(k.src);
        self.apply(k, now, local, &bucket, out);
    }

    /// Feeds a batch of packets in order, as [`Matcher::on_knock`] would one by one.
    ///
    /// Under a flood from random sources nearly every packet's bucket is a cache miss.
    /// Prefetching all the batch's buckets first lets those misses overlap instead of
    /// queueing one behind the other.
    pub fn on_knocks(&mut self, knocks: &[(Knock, Secs)], out: &mut impl Sink) {
        if self.has_one_time {
            self.refresh_one_time();
        }
        let mut buckets = [None; BATCH];
        for chunk in knocks.chunks(BATCH) {
            for ((k, _), slot) in chunk.iter().zip(buckets.iter_mut()) {
                let local = self.is_local(k.dst);
                *slot = self.visible(k, local).then(|| (self.attempts.bucket(k.src), local));
                if let Some((b, _)) = slot {
                    self.attempts.prefetch(b);
                }
            }
            let generation = self.generation;
            for ((k, now), slot) in chunk.iter().zip(buckets.iter()) {
                // A one-time door that moved on mid-batch changes which ports count.
                let slot = if self.generation == generation {
                    *slot
                } else {
                    let local = self.is_local(k.dst);
                    self.visible(k, local).then(|| (self.attempts.bucket(k.src), local))
                };
                match slot {
                    Some((b, local)) => self.apply(k, *now, local, &b, out),
                    None => self.stats.invisible += 1,
                }
            }
        }
    }

    /// One visible packet, its source's bucket already found.
    fn apply(
        &mut self,
        k: &Knock,
        now: Secs,
        local: bool,
        bucket: &crate::tracker::Bucket,
        out: &mut impl Sink,
    ) {
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
            if !door.enabled || !Self::addressed_to(door, k.dst, local) {
                continue;
            }
            let id = id as DoorId;
            let Some(att) = self.attempts.take(&bucket, id) else { continue };
            if att.expired(door, now) {
                // Expired before this packet: dropped first, as knockd does.
                self.stats.timeouts += 1;
                out.event(Event::Timeout { src: k.src, door: id, stage: att.stage });
                continue;
            }
            live = true;
            match att.knock(door, k) {
                Advance::Next(next) => {
                    out.event(Event::Stage { src: k.src, door: id, stage: next.stage });
                    // Taken just now, so its slot is free: this cannot be refused.
                    self.attempts.insert(&bucket, id, next);
                }
                Advance::Open(opened) => {
                    out.event(Event::Stage { src: k.src, door: id, stage: att.stage + 1 });
                    self.open(opened, k.src, id, out);
                }
                Advance::Ignored(same) => {
                    self.attempts.insert(&bucket, id, same);
                }
                Advance::Broken => self.stats.broken += 1,
            }
        }
        if live {
            return;
        }
        for id in 0..self.doors.len() {
            let door = &self.doors[id];
            if !door.enabled || !Self::addressed_to(door, k.dst, local) {
                continue;
            }
            let id = id as DoorId;
            match Knocking::start(door, k, now) {
                Start::Knocking(att) => {
                    if self.attempts.insert(&bucket, id, att) != Inserted::Rejected {
                        out.event(Event::Stage { src: k.src, door: id, stage: 1 });
                    }
                }
                Start::Open(opened) => {
                    out.event(Event::Stage { src: k.src, door: id, stage: 1 });
                    self.open(opened, k.src, id, out);
                }
                Start::No => {}
            }
        }
    }

    fn open(&mut self, _proof: Opened, src: IpAddr, id: DoorId, out: &mut impl Sink) {
        self.stats.opened += 1;
        out.event(Event::Open { src, door: id });
        if self.shared.one_time[usize::from(id)].is_some() {
            self.next_one_time(id, out);
        }
    }

    /// Marks the used one-time sequence and loads the next, for every worker; disables
    /// the door when none is left or the file cannot be updated (a sequence that cannot
    /// be marked used must not stay valid).
    fn next_one_time(&mut self, id: DoorId, out: &mut impl Sink) {
        let Some(ot) = &self.shared.one_time[usize::from(id)] else { return };
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
            Ok(None) => out.event(Event::DoorDisabled { door: id }),
            Err(message) => out.event(Event::OneTimeError { door: id, message }),
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

    /// Switches to a reloaded configuration in place, keeping the table (no second
    /// allocation), the counters, and the attempts whose door is still there: same
    /// name, sequence, flags, target and timeout. `old_names` and `names` are the two
    /// configurations' door names. Attempts at changed or removed doors end.
    pub fn reload(&mut self, doors: Arc<Doors>, local: Vec<IpAddr>, old_names: &[String], names: &[String]) {
        let next = doors.initial.clone();
        let same = |a: &DoorState, b: &DoorState| {
            a.enabled
                && b.enabled
                && a.sequence == b.sequence
                && a.flags == b.flags
                && a.target == b.target
                && a.seq_timeout == b.seq_timeout
        };
        let mut taken = vec![false; next.len()];
        let map: Vec<Option<DoorId>> = self
            .doors
            .iter()
            .zip(old_names)
            .map(|(od, on)| {
                let i = (0..next.len()).find(|&i| !taken[i] && names[i] == *on && same(od, &next[i]))?;
                taken[i] = true;
                Some(i as DoorId)
            })
            .collect();
        self.attempts.remap(|door| map.get(usize::from(door)).copied().flatten());
        self.ports = PortIndex::new(&next);
        self.doors = next;
        self.has_one_time = doors.one_time.iter().any(Option::is_some);
        self.shared = doors;
        self.local = local;
        self.generation += 1;
    }

    /// Fires every sequence timeout due at `now`.
    pub fn expire(&mut self, now: Secs, out: &mut impl Sink) {
        if self.has_one_time {
            self.refresh_one_time();
        }
        if now == self.swept {
            return;
        }
        self.swept = now;
        let doors = &self.doors;
        let mut fired = 0;
        self.attempts.sweep(|src, door, att| {
            let expired = att.expired(&doors[usize::from(door)], now);
            if expired {
                fired += 1;
                out.event(Event::Timeout { src, door, stage: att.stage });
            }
            expired
        });
        self.stats.timeouts += fired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sequence, Options, TcpFlagRule};
    use sesame_capture::frame::tcp_flags::{ACK, SYN};
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

    fn opens(events: &[Event]) -> Vec<(IpAddr, DoorId)> {
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
                Event::Stage { src: A, door: 0, stage: 1 },
                Event::Stage { src: A, door: 0, stage: 2 },
                Event::Stage { src: A, door: 0, stage: 3 },
                Event::Open { src: A, door: 0 },
            ]
        );
        assert_eq!(m.in_progress(), 0, "a completed attempt is removed");
    }

    #[test]
    fn single_port_door_opens_on_first_knock() {
        let mut m = matcher(vec![door("one", "1234:udp", 5)]);
        let ev = run(&mut m, &[(1, udp(A, 1234))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: 0, stage: 1 }, Event::Open { src: A, door: 0 }]);
    }

    #[test]
    fn wrong_order_resets_silently() {
        let mut m = matcher(vec![door("openSSH", "7000,8000,9000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 8000, SYN)), (1, tcp(A, 7000, SYN)), (1, tcp(A, 9000, SYN))]);
        // 8000 is no first port: nothing; 7000 starts; 9000 breaks it, silently.
        assert_eq!(ev, vec![Event::Stage { src: A, door: 0, stage: 1 }]);
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
            vec![Event::Stage { src: A, door: 0, stage: 1 }, Event::Stage { src: A, door: 0, stage: 2 }]
        );
    }

    #[test]
    fn duplicate_knock_invalidates() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: 0, stage: 1 }]);
    }

    #[test]
    fn wrong_flags_are_ignored_not_reset() {
        let mut m = matcher(vec![syn_only(door("d", "7000,8000,9000", 5))]);
        let ev = run(
            &mut m,
            &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, ACK)), (1, tcp(A, 8000, SYN)), (1, tcp(A, 9000, SYN))],
        );
        assert_eq!(opens(&ev), vec![(A, 0)]);
        // An ACK to the first port does not start anything either.
        let ev = run(&mut m, &[(2, tcp(B, 7000, ACK))]);
        assert!(ev.is_empty());
    }

    #[test]
    fn plain_flag_means_set_and_others_ignored() {
        // `syn` also matches SYN+ACK; `!ack` forbids it.
        let mut m = matcher(vec![syn_only(door("d", "7000", 5))]);
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN | ACK))])), vec![(A, 0)]);
        let mut d = door("d", "7000", 5);
        d.tcp_flags = TcpFlagRule { set: SYN, clear: ACK };
        let mut m = matcher(vec![d]);
        assert!(run(&mut m, &[(1, tcp(A, 7000, SYN | ACK))]).is_empty());
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN))])), vec![(A, 0)]);
    }

    #[test]
    fn tcp_flags_do_not_apply_to_udp_steps() {
        let mut m = matcher(vec![syn_only(door("d", "7000,8000:udp", 5))]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, udp(A, 8000))]);
        assert_eq!(opens(&ev), vec![(A, 0)]);
    }

    #[test]
    fn wrong_protocol_on_a_knock_port_invalidates() {
        // 8000 is a knock port for TCP (door d) and for UDP (door u): a UDP 8000 is
        // visible, and it is not d's next step.
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5), door("u", "1,8000:udp", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, udp(A, 8000)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: 0, stage: 1 }]);
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
        assert_eq!(opens(&ev), vec![(A, 0)]);
        assert_eq!(m.stats().invisible, 2);
    }

    #[test]
    fn packets_invisible_by_flags_do_not_reset_other_doors() {
        // knockd's kernel filter for port 5000 requires SYN (door s), so a bare ACK to
        // 5000 never reaches door n's attempt.
        let mut m = matcher(vec![syn_only(door("s", "5000,5001", 5)), door("n", "7000,8000", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, ACK)), (1, tcp(A, 5000, ACK)), (1, tcp(A, 8000, ACK))]);
        assert_eq!(opens(&ev), vec![(A, 1)]);
    }

    #[test]
    fn any_other_door_port_resets() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5), door("e", "1111,2222", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 2222, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(ev, vec![Event::Stage { src: A, door: 0, stage: 1 }]);
    }

    #[test]
    fn doors_sharing_a_prefix_advance_in_parallel() {
        let mut m = matcher(vec![door("ssh", "7000,8000,9000", 5), door("pfx", "7000,8000,9100:udp", 5)]);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN)), (1, udp(A, 9100))]);
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: 0, stage: 1 },
                Event::Stage { src: A, door: 1, stage: 1 },
                Event::Stage { src: A, door: 0, stage: 2 },
                Event::Stage { src: A, door: 1, stage: 2 },
                Event::Stage { src: A, door: 1, stage: 3 },
                Event::Open { src: A, door: 1 },
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
        assert_eq!(opens(&ev), vec![(A, 0)]);
        assert!(!ev.contains(&Event::Stage { src: A, door: 1, stage: 1 }), "{ev:?}");
        let close = [9000, 8000, 7000].map(|p| (2, tcp(A, p, SYN)));
        assert_eq!(opens(&run(&mut m, &close)), vec![(A, 1)]);
    }

    #[test]
    fn a_wrong_knock_at_one_door_never_starts_another() {
        // knockd: `7000 9000 8000 7000` gives `open: Stage 1` twice and nothing else.
        let mut m = matcher(vec![door("open", "7000,8000,9000", 5), door("close", "9000,8000,7000", 5)]);
        let ev = run(&mut m, &[7000, 9000, 8000, 7000].map(|p| (1, tcp(A, p, SYN))));
        assert_eq!(
            ev,
            vec![Event::Stage { src: A, door: 0, stage: 1 }, Event::Stage { src: A, door: 0, stage: 1 }]
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
        batched.on_knocks(&input, &mut got);
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
        };
        (dir, path, config)
    }

    #[test]
    fn one_time_sequences_are_used_once_and_then_the_door_closes() {
        let (_dir, path, config) = one_time("7000,8000\n7100,8100\n");
        let mut m = Matcher::new(Doors::new(&config).unwrap(), vec![US], 1 << 20);
        let ev = run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))]);
        assert_eq!(opens(&ev), vec![(A, 0)]);
        // knockd's mark: '#' over the first byte, the file keeps its length.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#000,8000\n7100,8100\n");
        // The used sequence no longer opens; the next one does, from any source.
        assert!(opens(&run(&mut m, &[(2, tcp(B, 7000, SYN)), (2, tcp(B, 8000, SYN))])).is_empty());
        let ev = run(&mut m, &[(3, tcp(B, 7100, SYN)), (3, tcp(B, 8100, SYN))]);
        assert_eq!(opens(&ev), vec![(B, 0)]);
        assert!(ev.contains(&Event::DoorDisabled { door: 0 }), "no sequence left: {ev:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "#000,8000\n#100,8100\n");
        assert!(run(&mut m, &[(4, tcp(A, 7100, SYN)), (4, tcp(A, 8100, SYN))]).is_empty());
        assert!(m.filter_spec(true).tcp_ports.is_empty(), "a disabled door's ports leave the filter");
    }

    #[test]
    fn a_one_time_sequence_used_on_one_worker_is_gone_on_every_worker() {
        let (_dir, _path, config) = one_time("7000,8000\n7100,8100\n");
        let doors = Doors::new(&config).unwrap();
        let mut w1 = Matcher::new(doors.clone(), vec![US], 1 << 20);
        let mut w2 = Matcher::new(doors, vec![US], 1 << 20);
        assert_eq!(opens(&run(&mut w1, &[(1, tcp(A, 7000, SYN)), (1, tcp(A, 8000, SYN))])), vec![(A, 0)]);
        let generation = w2.generation();
        assert!(opens(&run(&mut w2, &[(2, tcp(B, 7000, SYN)), (2, tcp(B, 8000, SYN))])).is_empty());
        assert_ne!(w2.generation(), generation, "the other worker rebuilds its filter");
        assert_eq!(w2.filter_spec(true).tcp_ports, vec![7100, 8100]);
        assert_eq!(opens(&run(&mut w2, &[(3, tcp(B, 7100, SYN)), (3, tcp(B, 8100, SYN))])), vec![(B, 0)]);
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
            doors: new_doors.clone(),
            tuning: Default::default(),
        };
        let names = |d: &[Door]| d.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        let capacity = old.tracker().capacity();
        let mut new = old;
        new.reload(
            Doors::new(&config).unwrap(),
            vec![US, OTHER_US],
            &["keep".into(), "change".into()],
            &names(&new_doors),
        );
        assert_eq!(new.tracker().capacity(), capacity, "the same table, not a new one");
        assert_eq!(new.in_progress(), 1, "only the unchanged door's attempt carries over");
        let ev = run(&mut new, &[(2, tcp(A, 8000, SYN)), (2, tcp(A, 9000, SYN))]);
        assert_eq!(opens(&ev), vec![(A, 2)], "the knock continues at `keep`, now door 2: {ev:?}");
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
        assert_eq!(opens(&ev), vec![(A, 0)]);
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
        };
        let mut m = Matcher::new(Doors::new(&config).unwrap(), vec![US, v6us], 1 << 20);
        let k =
            |p| Knock { src: v6a, dst: v6us, proto: Proto::Tcp, src_port: 1, dst_port: p, tcp_flags: SYN };
        assert_eq!(opens(&run(&mut m, &[(1, k(7000)), (1, k(8000))])), vec![(v6a, 0)]);
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
        assert_eq!(opens(&run(&mut m, &[(1, tcp(A, 7000, SYN)), (1, second)])), vec![(A, 0)]);
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
        assert_eq!(ev, vec![Event::Stage { src: A, door: 1, stage: 1 }]);
        // ...and knocks to the target do nothing for the local door.
        let ev = run(&mut m, &[(2, to_target(7000)), (2, to_target(9000)), (2, to_target(8000))]);
        assert!(ev.contains(&Event::Open { src: A, door: 0 }), "{ev:?}");
        assert!(!ev.iter().any(|e| matches!(e, Event::Open { door: 1, .. })));
    }

    #[test]
    fn timeout_counts_whole_seconds_from_the_first_knock() {
        let mut m = matcher(vec![door("d", "7000,8000,9000", 5)]);
        // 104 - 100 = 4 < 5: still in time, although the knocks are spread out.
        let ev = run(&mut m, &[(100, tcp(A, 7000, SYN)), (103, tcp(A, 8000, SYN)), (104, tcp(A, 9000, SYN))]);
        assert_eq!(opens(&ev), vec![(A, 0)]);
        // 105 - 100 = 5 >= 5: too late, even though the previous knock was recent.
        let ev = run(&mut m, &[(100, tcp(B, 7000, SYN)), (104, tcp(B, 8000, SYN)), (105, tcp(B, 9000, SYN))]);
        assert!(opens(&ev).is_empty());
        assert!(ev.contains(&Event::Timeout { src: B, door: 0, stage: 2 }), "{ev:?}");
    }

    #[test]
    fn an_expired_attempt_is_dropped_before_the_packet_so_it_may_restart() {
        let mut m = matcher(vec![door("d", "7000,8000", 5)]);
        let ev = run(&mut m, &[(10, tcp(A, 7000, SYN)), (20, tcp(A, 7000, SYN)), (21, tcp(A, 8000, SYN))]);
        assert_eq!(
            ev,
            vec![
                Event::Stage { src: A, door: 0, stage: 1 },
                Event::Timeout { src: A, door: 0, stage: 1 },
                Event::Stage { src: A, door: 0, stage: 1 },
                Event::Stage { src: A, door: 0, stage: 2 },
                Event::Open { src: A, door: 0 },
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
        assert_eq!(out, vec![Event::Timeout { src: A, door: 0, stage: 2 }]);
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
        assert_eq!(out, vec![Event::Timeout { src: A, door: 0, stage: 1 }]);
    }

    #[test]
    fn filter_spec_lists_ports_addresses_and_targets() {
        let target = IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5));
        let mut t = door("t", "6000:udp", 5);
        t.target = Some(target);
        let m = matcher(vec![door("d", "7000,8000:udp,9000", 5), t]);
        let spec = m.filter_spec(true);
        assert_eq!(spec.tcp_ports, vec![7000, 9000]);
        assert_eq!(spec.udp_ports, vec![6000, 8000]);
        assert_eq!(
            spec.v4_dst,
            vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 5, 5)]
        );
    }
}
