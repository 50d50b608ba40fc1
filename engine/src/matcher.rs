//! The knock state machine: knockd 0.8's matching rules, driven by packet
//! timestamps and an explicit clock so every rule is tested without sleeping.
//!
//! Rules (see `knockd-behaviour.md`):
//! - one attempt per (source, door); doors sharing a prefix advance in parallel;
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
//! they are logged on time instead of at the next packet.

use crate::config::onetime::{OneTimeFile, OneTimeLine};
use crate::config::{Config, ConfigError, Door, Step, TcpFlagRule};
use sesame_capture::filter::FilterSpec;
use sesame_capture::{Knock, Proto};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Index of a door in the config's door list.
pub type DoorId = u16;

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

/// The matching-relevant part of a door, owned by the matcher (one-time doors change
/// their sequence at run time).
#[derive(Debug)]
pub struct DoorState {
    pub sequence: Vec<Step>,
    pub seq_timeout: u32,
    flags: TcpFlagRule,
    target: Option<IpAddr>,
    enabled: bool,
    one_time: Option<(OneTimeFile, OneTimeLine)>,
}

impl DoorState {
    fn from_door(door: &Door) -> Result<DoorState, ConfigError> {
        let one_time = match &door.one_time {
            None => None,
            Some(ots) => {
                let file = OneTimeFile::open(&ots.path)?;
                file.current()?.map(|line| (file, line))
            }
        };
        let sequence = match &one_time {
            Some((_, line)) => line.sequence.clone(),
            None => door.sequence.clone(),
        };
        let enabled = !sequence.is_empty();
        Ok(DoorState {
            sequence,
            seq_timeout: door.seq_timeout,
            flags: door.tcp_flags,
            target: door.target,
            enabled,
            one_time,
        })
    }

    fn flags_ok(&self, k: &Knock) -> bool {
        k.proto != Proto::Tcp || self.flags.matches(k.tcp_flags)
    }

    fn step_is(&self, i: usize, k: &Knock) -> bool {
        self.sequence.get(i).is_some_and(|s| s.port == k.dst_port && s.proto == k.proto)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
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
}

/// Attempts of every source at every door, and the doors' current sequences.
#[derive(Debug)]
pub struct Matcher {
    doors: Vec<DoorState>,
    /// Our own addresses: what "addressed to us" means for doors without a Target.
    local: Vec<IpAddr>,
    /// (protocol, port) → doors with that step, for the visibility test.
    ports: HashMap<(Proto, u16), Vec<DoorId>>,
    attempts: HashMap<(IpAddr, DoorId), Knocking>,
    /// Per door, attempts in start order: with one timeout per door, they expire in
    /// this order, so the timer only ever looks at the front.
    expiry: Vec<VecDeque<(Secs, IpAddr)>>,
    stats: MatchStats,
    /// Bumped whenever the set of knock ports changes (one-time doors), so the capture
    /// side knows to rebuild its kernel filter.
    generation: u64,
}

impl Matcher {
    /// Builds the matcher for `config`, listening on `local` addresses. Reads the
    /// one-time-sequence files.
    pub fn new(config: &Config, local: Vec<IpAddr>) -> Result<Matcher, ConfigError> {
        let doors = config.doors.iter().map(DoorState::from_door).collect::<Result<Vec<_>, _>>()?;
        assert!(doors.len() <= usize::from(DoorId::MAX), "too many doors");
        let expiry = doors.iter().map(|_| VecDeque::new()).collect();
        let mut m = Matcher {
            doors,
            local,
            ports: HashMap::new(),
            attempts: HashMap::new(),
            expiry,
            stats: MatchStats::default(),
            generation: 0,
        };
        m.reindex();
        Ok(m)
    }

    fn reindex(&mut self) {
        self.ports.clear();
        for (id, door) in self.doors.iter().enumerate().filter(|(_, d)| d.enabled) {
            for step in &door.sequence {
                let ids = self.ports.entry((step.proto, step.port)).or_default();
                if !ids.contains(&(id as DoorId)) {
                    ids.push(id as DoorId);
                }
            }
        }
        self.generation += 1;
    }

    pub fn doors(&self) -> &[DoorState] {
        &self.doors
    }

    pub fn stats(&self) -> MatchStats {
        self.stats
    }

    /// Attempts currently in progress.
    pub fn in_progress(&self) -> usize {
        self.attempts.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Doors that were disabled at start (one-time files with no sequence left).
    pub fn disabled_doors(&self) -> impl Iterator<Item = DoorId> + '_ {
        self.doors.iter().enumerate().filter(|(_, d)| !d.enabled).map(|(i, _)| i as DoorId)
    }

    /// What the kernel filter must let through: every knock port of every enabled door,
    /// to our addresses and the doors' targets.
    pub fn filter_spec(&self, ipv6: bool) -> FilterSpec {
        let mut spec = FilterSpec::default();
        let mut add = |ip: IpAddr| match ip {
            IpAddr::V4(a) if !spec.v4_dst.contains(&a) => spec.v4_dst.push(a),
            IpAddr::V6(a) if ipv6 && !spec.v6_dst.contains(&a) => spec.v6_dst.push(a),
            _ => {}
        };
        let enabled = self.doors.iter().filter(|d| d.enabled);
        if enabled.clone().any(|d| d.target.is_none()) {
            self.local.iter().copied().for_each(&mut add);
        }
        enabled.filter_map(|d| d.target).for_each(&mut add);
        for (proto, port) in self.ports.keys() {
            let list = match proto {
                Proto::Tcp => &mut spec.tcp_ports,
                Proto::Udp => &mut spec.udp_ports,
            };
            list.push(*port);
        }
        spec.tcp_ports.sort_unstable();
        spec.udp_ports.sort_unstable();
        spec
    }

    fn addressed_to(&self, door: &DoorState, dst: IpAddr) -> bool {
        match door.target {
            Some(t) => t == dst,
            None => self.local.contains(&dst),
        }
    }

    /// Whether knockd's kernel filter would pass `k`: some enabled door has this
    /// (protocol, port), is addressed by it, and accepts its flags.
    fn visible(&self, k: &Knock) -> bool {
        self.ports.get(&(k.proto, k.dst_port)).is_some_and(|ids| {
            ids.iter().any(|&id| {
                let d = &self.doors[usize::from(id)];
                d.flags_ok(k) && self.addressed_to(d, k.dst)
            })
        })
    }

    /// Feeds one packet, seen at `now`; events are appended to `out`.
    pub fn on_knock(&mut self, k: &Knock, now: Secs, out: &mut Vec<Event>) {
        if !self.visible(k) {
            self.stats.invisible += 1;
            return;
        }
        self.stats.knocks += 1;
        for id in 0..self.doors.len() {
            let door = &self.doors[id];
            if !door.enabled || !self.addressed_to(door, k.dst) {
                continue;
            }
            let id = id as DoorId;
            let key = (k.src, id);
            if let Some(att) = self.attempts.remove(&key) {
                if att.expired(door, now) {
                    self.stats.timeouts += 1;
                    out.push(Event::Timeout { src: k.src, door: id, stage: att.stage });
                    // Expired before this packet: the packet may begin a new attempt.
                } else {
                    match att.knock(door, k) {
                        Advance::Next(next) => {
                            out.push(Event::Stage { src: k.src, door: id, stage: next.stage });
                            self.attempts.insert(key, next);
                        }
                        Advance::Open(opened) => {
                            out.push(Event::Stage { src: k.src, door: id, stage: att.stage + 1 });
                            self.open(opened, k.src, id, out);
                        }
                        Advance::Ignored(same) => {
                            self.attempts.insert(key, same);
                        }
                        Advance::Broken => self.stats.broken += 1,
                    }
                    continue;
                }
            }
            let door = &self.doors[usize::from(id)];
            match Knocking::start(door, k, now) {
                Start::Knocking(att) => {
                    out.push(Event::Stage { src: k.src, door: id, stage: 1 });
                    self.expiry[usize::from(id)].push_back((now, k.src));
                    self.attempts.insert(key, att);
                }
                Start::Open(opened) => {
                    out.push(Event::Stage { src: k.src, door: id, stage: 1 });
                    self.open(opened, k.src, id, out);
                }
                Start::No => {}
            }
        }
    }

    fn open(&mut self, _proof: Opened, src: IpAddr, id: DoorId, out: &mut Vec<Event>) {
        self.stats.opened += 1;
        out.push(Event::Open { src, door: id });
        if self.doors[usize::from(id)].one_time.is_some() {
            self.next_one_time(id, out);
        }
    }

    /// Marks the used one-time sequence and loads the next; disables the door when
    /// none is left or the file cannot be updated (a sequence that cannot be marked
    /// used must not stay valid).
    fn next_one_time(&mut self, id: DoorId, out: &mut Vec<Event>) {
        let door = &mut self.doors[usize::from(id)];
        let Some((file, line)) = door.one_time.take() else { return };
        let next = match file.mark_used(&line) {
            Err(e) => Err(format!("cannot mark line {} used: {e}", line.line)),
            Ok(()) => file.current().map_err(|e| e.to_string()),
        };
        match next {
            Ok(Some(next)) => {
                door.sequence = next.sequence.clone();
                door.one_time = Some((file, next));
            }
            Ok(None) => {
                door.enabled = false;
                out.push(Event::DoorDisabled { door: id });
            }
            Err(message) => {
                door.enabled = false;
                out.push(Event::OneTimeError { door: id, message });
            }
        }
        // Attempts at the old sequence must not complete the new one.
        self.attempts.retain(|(_, d), _| *d != id);
        self.expiry[usize::from(id)].clear();
        self.reindex();
    }

    /// Fires every sequence timeout due at `now`.
    pub fn expire(&mut self, now: Secs, out: &mut Vec<Event>) {
        for (id, queue) in self.expiry.iter_mut().enumerate() {
            let timeout = u64::from(self.doors[id].seq_timeout);
            while let Some(&(started, src)) = queue.front() {
                if now.saturating_sub(started) < timeout {
                    break;
                }
                queue.pop_front();
                let key = (src, id as DoorId);
                // The queue may hold attempts that already completed or broke, or an
                // older start of a source that has since begun again.
                if self.attempts.get(&key).is_some_and(|a| a.started == started) {
                    let att = self.attempts.remove(&key).expect("checked above");
                    self.stats.timeouts += 1;
                    out.push(Event::Timeout { src, door: id as DoorId, stage: att.stage });
                }
            }
        }
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
        let config = Config { source: PathBuf::from("test.conf"), options: Options::default(), doors };
        Matcher::new(&config, vec![US, OTHER_US]).unwrap()
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
        };
        let mut m = Matcher::new(&config, vec![US, v6us]).unwrap();
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
