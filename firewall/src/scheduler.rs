//! The executor's decisions: a single-threaded state machine with time passed in, so
//! that limits, ordering, retries and reconciliation are unit-tested with a simulated
//! clock and no threads. The executor's threads only feed it events and carry out the
//! [`Effect`]s it asks for.
//!
//! Each (door, address) has one [`Slot`]: what is wanted (open until a time, or
//! closed) and what the firewall has. At most one operation per slot runs at a time
//! and the next one is chosen from the slot's state when it is its turn, so a close
//! never overtakes its open, a repeat knock extends instead of opening twice, and a
//! knock during a close opens again after it.
//!
//! Work waits in two lanes: `internal` (closes, retries, follow-ups: never refused,
//! bounded by the slots) goes before `fresh` (new knocks: bounded by the `queue`
//! admission count the handles keep). An operation starts when a concurrency slot is
//! free and the token bucket has a token.

use crate::backend::{Access, Backend, Port};
use crate::bucket::TokenBucket;
use crate::executor::{Action, Counters, GrantRequest, OpKind, OpResult, Refusal, Report};
use crate::journal::{CloseBy, Entry, Record};
use crate::pace::{Pace, CLOSE_ALL_WITHIN};
use crate::runner::Outcome;
use crate::substitute;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Tries of one operation before it is given up (the first one included).
pub const TRIES: u32 = 3;
/// Pause before the first retry; it doubles for each one after.
pub const RETRY_BASE: Duration = Duration::from_millis(500);
/// A native grant is refreshed in its backend only when a knock moves its end by more.
const REFRESH_SLACK: Duration = Duration::from_secs(1);
/// An extension is journaled only when it moves the journaled end by more.
const JOURNAL_SLACK: Duration = Duration::from_secs(1);

/// The time, both ways: monotonic for deciding, wall-clock for the journal and reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn real() -> Now {
        Now { mono: Instant::now(), wall: SystemTime::now() }
    }

    #[cfg(test)]
    pub fn after(self, d: Duration) -> Now {
        Now { mono: self.mono + d, wall: self.wall + d }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub rate: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub command_timeout: Duration,
    pub close_on_exit: bool,
}

type Key = (String, IpAddr);

/// How a grant opens and closes; commands are already substituted.
#[derive(Clone)]
enum Kind {
    /// `start` is `None` for a grant recovered from the journal, which is never opened
    /// again by itself: only a knock (which brings its start command) does that.
    Commands {
        start: Option<String>,
        stop: String,
    },
    Native {
        backend: Arc<dyn Backend>,
        ports: Vec<Port>,
    },
}

impl Kind {
    fn close_by(&self) -> CloseBy {
        match self {
            Kind::Commands { stop, .. } => CloseBy::Command(stop.clone()),
            Kind::Native { backend, ports } => {
                CloseBy::Native { backend: backend.name().to_owned(), ports: ports.clone() }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Open { until: Instant, wall: SystemTime },
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Have {
    Closed,
    Open,
    /// An open was tried and failed or timed out: it may have half-happened, so it is
    /// closed at its time like an open grant.
    Unsure,
}

/// What a slot needs done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Open,
    /// A native grant extended by a knock: open again with the new timeout.
    Refresh,
    Close,
}

struct Slot {
    kind: Kind,
    /// How long the grant lasts once its open starts (the last knock's `cmd_timeout`).
    duration: Duration,
    /// The kind a knock during a running close brings: used for the open after it.
    next_kind: Option<Kind>,
    want: Want,
    have: Have,
    /// The end a native backend was given at the last open or refresh.
    applied: Option<Instant>,
    /// The end the journal holds an `open` record with, if it holds one.
    journaled: Option<SystemTime>,
    /// The operation running for this slot.
    busy: Option<u64>,
    /// In the fresh lane already (never twice in one lane).
    in_fresh: bool,
    /// In the internal lane already. A slot may be in both: a close must not wait
    /// behind the fresh lane; whichever entry comes second finds nothing to do.
    in_internal: bool,
    /// Waiting to retry a failed operation until then.
    retry_at: Option<Instant>,
    /// Failed tries of the current operation.
    failures: u32,
    /// Opening failed for good: wait for the close (or the next knock) instead.
    open_given_up: bool,
}

impl Slot {
    fn expires_itself(&self) -> bool {
        matches!(&self.kind, Kind::Native { backend, .. } if backend.expires_itself())
    }

    fn need(&self) -> Option<Need> {
        match (self.want, self.have) {
            (Want::Open { .. }, Have::Closed | Have::Unsure) if !self.open_given_up => match &self.kind {
                Kind::Commands { start: None, .. } => None,
                _ => Some(Need::Open),
            },
            (Want::Open { until, .. }, Have::Open) => match (&self.kind, self.applied) {
                (Kind::Native { .. }, Some(applied)) if until > applied + REFRESH_SLACK => {
                    Some(Need::Refresh)
                }
                _ => None,
            },
            (Want::Closed, Have::Open | Have::Unsure) => Some(Need::Close),
            _ => None,
        }
    }

    fn is_open(&self) -> bool {
        self.have != Have::Closed
    }

    /// Nothing open, nothing wanted, nothing running: the slot can go.
    fn is_done(&self) -> bool {
        self.want == Want::Closed && self.have == Have::Closed && self.busy.is_none()
    }
}

/// A start command without a stop command: run on every success, no grant kept.
#[derive(Clone, Debug)]
struct Once {
    door_name: String,
    ip: IpAddr,
    command: String,
    failures: u32,
}

enum Work {
    Grant(Key),
    Once(Once),
}

/// What a running operation is for.
enum Purpose {
    Grant { key: Key, need: Need, target: Option<Instant> },
    Once(Once),
}

struct Flight {
    purpose: Purpose,
    door_name: String,
    ip: IpAddr,
    op: OpKind,
    started: SystemTime,
    since: Instant,
    /// The command it runs, or the backend it calls.
    what: What,
    /// Native calls cannot be killed: past this their concurrency slot is given back.
    release_at: Option<Instant>,
    released: bool,
}

#[derive(Clone)]
enum What {
    Command(String),
    Backend(&'static str),
}

impl What {
    /// The backend's name for reports and metrics: `command` for knockd's commands.
    fn backend(&self) -> &'static str {
        match self {
            What::Backend(b) => b,
            What::Command(_) => "command",
        }
    }
}

/// What a pool thread runs.
pub(crate) enum Task {
    Command(String),
    Open(Arc<dyn Backend>, Access),
    Close(Arc<dyn Backend>, Access),
}

/// An operation to run off this thread; `journal`, if any, must be durable first.
pub(crate) struct Job {
    pub id: u64,
    pub task: Task,
    pub journal: Option<Record>,
}

/// How an operation ended, as the pool thread saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JobResult {
    Command(Outcome),
    SpawnFailed(String),
    BackendFailed(String),
    /// The grant could not be journaled, so it was not opened (or, with a backend that
    /// [expires grants itself](crate::backend::Backend::expires_itself), it was and
    /// ends at its timeout without sesamed).
    JournalFailed(String),
    Backend,
}

/// What the scheduler asks its threads to do.
pub(crate) enum Effect {
    Dispatch(Job),
    Report(Report),
    /// A journal record nobody waits for (extensions, closes).
    Journal(Record),
}

/// A journaled grant found at start, with its backend if it has one and it is known.
pub(crate) struct Recovered {
    pub entry: Entry,
    pub backend: Option<Arc<dyn Backend>>,
}

pub(crate) struct Scheduler {
    limits: Limits,
    counters: Arc<Counters>,
    bucket: TokenBucket,
    /// The firewall's measured cost per operation, which bounds the grants falling due
    /// together.
    pace: Pace,
    /// Until when the new grant at the front of the fresh lane is held by the bound
    /// on grants falling due together (as last found by `dispatch`).
    fresh_wait: Option<Instant>,
    slots: HashMap<Key, Slot>,
    internal: VecDeque<Work>,
    /// New knocks; each entry holds one unit of the handles' admission count.
    fresh: VecDeque<Work>,
    retries: BTreeMap<(Instant, u64), Work>,
    deadlines: BTreeSet<(Instant, Key)>,
    flights: HashMap<u64, Flight>,
    /// Operations holding a concurrency slot.
    running: usize,
    /// Native calls past their timeout that have not returned (their slot was given back).
    stuck: usize,
    next_id: u64,
    shutting_down: bool,
    effects: Vec<Effect>,
}

fn secs_between(later: Instant, now: Instant) -> u64 {
    later.saturating_duration_since(now).as_secs_f64().round() as u64
}

impl Scheduler {
    /// A scheduler with the grants `recovered` from the journal: those past their time
    /// are closed at once, the others re-armed to close at their time; none is opened.
    pub fn new(limits: Limits, counters: Arc<Counters>, now: Now, recovered: Vec<Recovered>) -> Scheduler {
        let mut s = Scheduler {
            limits,
            counters,
            bucket: TokenBucket::new(limits.rate, limits.burst, now.mono),
            pace: Pace::new(),
            fresh_wait: None,
            slots: HashMap::new(),
            internal: VecDeque::new(),
            fresh: VecDeque::new(),
            retries: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            flights: HashMap::new(),
            running: 0,
            stuck: 0,
            next_id: 0,
            shutting_down: false,
            effects: Vec::new(),
        };
        for r in recovered {
            s.recover(r, now);
        }
        s.publish();
        s
    }

    fn recover(&mut self, r: Recovered, now: Now) {
        let Entry { door_name, ip, until, close } = r.entry;
        let kind = match (close, r.backend) {
            (CloseBy::Command(stop), _) => Kind::Commands { start: None, stop },
            (CloseBy::Native { ports, .. }, Some(backend)) => Kind::Native { backend, ports },
            (CloseBy::Native { backend, .. }, None) => {
                // Kept in the journal (no close record is written), so a later start
                // that knows the backend closes it.
                self.report(Report::UnknownBackend { ip, door_name, backend });
                return;
            }
        };
        let key = (door_name.clone(), ip);
        let left = until.duration_since(now.wall).ok().filter(|d| !d.is_zero());
        let want = match left {
            Some(d) => Want::Open { until: now.mono + d, wall: until },
            None => Want::Closed,
        };
        let slot = Slot {
            kind,
            duration: left.unwrap_or_default(),
            next_kind: None,
            want,
            have: Have::Open,
            // The backend holds the end it was given; do not refresh before a knock.
            applied: left.map(|d| now.mono + d),
            journaled: Some(until),
            busy: None,
            in_fresh: false,
            in_internal: false,
            retry_at: None,
            failures: 0,
            open_given_up: false,
        };
        self.counters.open_grants.fetch_add(1, Relaxed);
        self.report(Report::GrantOpen { door_name: door_name.clone(), open: true });
        self.slots.insert(key.clone(), slot);
        match left {
            Some(d) => {
                self.deadlines.insert((now.mono + d, key));
                self.report(Report::Rearmed { ip, door_name, secs: d.as_secs_f64().round() as u64 });
            }
            None => {
                self.report(Report::ExpiredWhileDown { ip, door_name });
                self.schedule(&key, false);
            }
        }
    }

    /// The effects asked for since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn report(&mut self, r: Report) {
        self.effects.push(Effect::Report(r));
    }

    /// Releases one unit of the handles' admission count.
    fn admitted_done(&self) {
        self.counters.pending.fetch_sub(1, Relaxed);
    }

    /// A knock that a handle admitted (and counted in `pending`).
    pub fn request(&mut self, req: GrantRequest, now: Now) {
        let GrantRequest { door_name, ip, action, timeout } = req;
        if self.shutting_down {
            self.admitted_done();
            self.refuse(door_name, ip, Refusal::ShuttingDown);
            return;
        }
        let ip_text = ip.to_string();
        let kind = match action {
            Action::Commands { start: None, .. } => {
                // knockd: no start command, nothing at all (not even the stop).
                self.admitted_done();
                return;
            }
            Action::Commands { start: Some(start), stop: None } => {
                let command = substitute(&start, &ip_text);
                self.fresh.push_back(Work::Once(Once { door_name, ip, command, failures: 0 }));
                self.publish();
                return;
            }
            Action::Commands { start: Some(start), stop: Some(stop) } => Kind::Commands {
                start: Some(substitute(&start, &ip_text)),
                stop: substitute(&stop, &ip_text),
            },
            Action::Native { backend, ports } => Kind::Native { backend, ports },
        };
        let key = (door_name, ip);
        let until = now.mono + timeout;
        let wall = now.wall + timeout;
        let Some(slot) = self.slots.get_mut(&key) else {
            self.slots.insert(
                key.clone(),
                Slot {
                    kind,
                    duration: timeout,
                    next_kind: None,
                    want: Want::Open { until, wall },
                    have: Have::Closed,
                    applied: None,
                    journaled: None,
                    busy: None,
                    in_fresh: false,
                    in_internal: false,
                    retry_at: None,
                    failures: 0,
                    open_given_up: false,
                },
            );
            self.deadlines.insert((until, key.clone()));
            if !self.schedule(&key, true) {
                self.admitted_done();
            }
            self.publish();
            return;
        };
        // A knock tries a failed open again.
        slot.open_given_up = false;
        slot.duration = timeout;
        if slot.have == Have::Closed && slot.busy.is_none() {
            slot.kind = kind;
        } else {
            slot.next_kind = Some(kind);
        }
        let closing_now = slot.want == Want::Closed && slot.busy.is_some();
        let was_wanted = matches!(slot.want, Want::Open { .. });
        let (new_until, new_wall) = match slot.want {
            Want::Open { until: u, wall: w } => (u.max(until), w.max(wall)),
            Want::Closed => (until, wall),
        };
        if let Want::Open { until: old, .. } = slot.want {
            self.deadlines.remove(&(old, key.clone()));
        }
        slot.want = Want::Open { until: new_until, wall: new_wall };
        self.deadlines.insert((new_until, key.clone()));
        if slot.retry_at.is_some() && slot.have != Have::Closed && slot.busy.is_none() {
            // A close waiting to retry is called off: the grant stays.
            slot.retry_at = None;
            slot.failures = 0;
        }
        // The journal keeps the end of a command grant (a native one is journaled by
        // its refresh, before the backend hears of it).
        let mut journal = None;
        if let (Kind::Commands { .. }, Some(j)) = (&slot.kind, slot.journaled) {
            if !closing_now && new_wall > j + JOURNAL_SLACK {
                slot.journaled = Some(new_wall);
                journal = Some(Record::Open(Entry {
                    door_name: key.0.clone(),
                    ip,
                    until: new_wall,
                    close: slot.kind.close_by(),
                }));
            }
        }
        // Open or opening; or a close that had not started yet, now called off.
        let extended = was_wanted || (!closing_now && slot.is_open());
        if let Some(r) = journal {
            self.effects.push(Effect::Journal(r));
        }
        if extended {
            let secs = secs_between(new_until, now.mono);
            self.report(Report::Extended { ip, door_name: key.0.clone(), secs });
        }
        if !self.schedule(&key, true) {
            self.admitted_done();
        }
        self.publish();
    }

    fn refuse(&mut self, door_name: String, ip: IpAddr, reason: Refusal) {
        self.counters.refused.fetch_add(1, Relaxed);
        self.report(Report::Refused { ip, door_name, reason });
    }

    /// Puts the slot in a lane if it needs work and is free to get it. Returns whether
    /// it did; a `fresh` entry then holds the caller's admission unit.
    fn schedule(&mut self, key: &Key, fresh: bool) -> bool {
        let Some(slot) = self.slots.get_mut(key) else { return false };
        let queued = if fresh { slot.in_fresh } else { slot.in_internal };
        if queued || slot.busy.is_some() || slot.retry_at.is_some() || slot.need().is_none() {
            return false;
        }
        *(if fresh { &mut slot.in_fresh } else { &mut slot.in_internal }) = true;
        let lane = if fresh { &mut self.fresh } else { &mut self.internal };
        lane.push_back(Work::Grant(key.clone()));
        true
    }

    fn remove_if_done(&mut self, key: &Key) {
        if self
            .slots
            .get(key)
            .is_some_and(|s| s.is_done() && !s.in_fresh && !s.in_internal && s.retry_at.is_none())
        {
            self.slots.remove(key);
        }
    }

    /// Sets what the backend has; a grant that became open or closed is counted, and
    /// reported (for metrics) into `effects`.
    fn set_have(counters: &Counters, effects: &mut Vec<Effect>, key: &Key, slot: &mut Slot, have: Have) {
        let open = match (slot.is_open(), have != Have::Closed) {
            (false, true) => {
                counters.open_grants.fetch_add(1, Relaxed);
                Some(true)
            }
            (true, false) => {
                counters.open_grants.fetch_sub(1, Relaxed);
                Some(false)
            }
            _ => None,
        };
        if let Some(open) = open {
            effects.push(Effect::Report(Report::GrantOpen { door_name: key.0.clone(), open }));
        }
        slot.have = have;
    }

    /// Fires what is due at `now` and starts what may start.
    pub fn tick(&mut self, now: Now) {
        self.fire_deadlines(now);
        self.fire_retries(now);
        self.fire_watchdogs(now);
        self.dispatch(now);
        self.publish();
    }

    fn fire_deadlines(&mut self, now: Now) {
        while let Some((t, _)) = self.deadlines.first() {
            if *t > now.mono {
                break;
            }
            let (_, key) = self.deadlines.pop_first().expect("first exists");
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            let gave_up = slot.open_given_up;
            slot.want = Want::Closed;
            slot.retry_at = None;
            slot.failures = 0;
            slot.open_given_up = false;
            slot.next_kind = None;
            if slot.is_open() || slot.busy.is_some() {
                self.report(Report::Timeout { ip: key.1, door_name: key.0.clone() });
                self.schedule(&key, false);
            } else {
                if !gave_up && slot.in_fresh {
                    // Never opened: its open waited in the lane past its whole time.
                    let (door_name, ip) = key.clone();
                    self.refuse(door_name, ip, Refusal::Expired);
                }
                self.remove_if_done(&key);
            }
        }
    }

    fn fire_retries(&mut self, now: Now) {
        while let Some((&(t, _), _)) = self.retries.first_key_value() {
            if t > now.mono {
                break;
            }
            let (_, work) = self.retries.pop_first().expect("first exists");
            match work {
                Work::Once(o) => self.internal.push_back(Work::Once(o)),
                Work::Grant(key) => {
                    // A stale timer (the retry was called off) finds another time or none.
                    let Some(slot) = self.slots.get_mut(&key) else { continue };
                    if slot.retry_at != Some(t) {
                        continue;
                    }
                    slot.retry_at = None;
                    self.schedule(&key, false);
                    self.remove_if_done(&key);
                }
            }
        }
    }

    fn fire_watchdogs(&mut self, now: Now) {
        let due: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| !f.released && f.release_at.is_some_and(|t| t <= now.mono))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            // Bounded: past `concurrency` stuck calls the slot stays taken (and so the
            // pool shrinks) rather than piling up blocked threads without end.
            if self.stuck >= self.limits.concurrency {
                break;
            }
            let f = self.flights.get_mut(&id).expect("due flight exists");
            f.released = true;
            self.stuck += 1;
            self.running -= 1;
            self.pace.running(self.running, now.mono);
            self.counters.timed_out.fetch_add(1, Relaxed);
            let (door_name, ip, op, started) = (f.door_name.clone(), f.ip, f.op, f.started);
            let backend = f.what.backend();
            let after = self.limits.command_timeout;
            self.report(Report::BackendTimedOut { door_name: door_name.clone(), ip, backend, op, after });
            self.report(Report::Operation {
                door_name,
                ip,
                backend,
                op,
                started,
                finished: now.wall,
                result: OpResult::TimedOut,
            });
        }
    }

    /// Until when the next new grant must wait, if it must: the grants falling due
    /// within [`CLOSE_ALL_WITHIN`] before its end are already as many as the firewall
    /// closes in that time. (It may go when the first of them leaves that window, or
    /// sooner if a measure changes.) Grants the backend expires itself (nftables) are
    /// never held: the kernel ends them on time whatever the executor's backlog.
    fn fresh_hold(&self, now: Instant) -> Option<Instant> {
        let Some(Work::Grant(key)) = self.fresh.front() else { return None };
        let slot = self.slots.get(key)?;
        if slot.need() != Some(Need::Open) || slot.expires_itself() {
            return None;
        }
        let end = now + slot.duration;
        let from = end.checked_sub(CLOSE_ALL_WITHIN).unwrap_or(now);
        let most = self.pace.most_due(self.limits.concurrency);
        // Grants open or opening; knocks still waiting have no close to come yet.
        let mut due = self
            .deadlines
            .range((from, (String::new(), IpAddr::V4(Ipv4Addr::UNSPECIFIED)))..)
            .take_while(|(t, _)| *t <= end)
            .filter(|(_, k)| self.slots.get(k).is_some_and(|s| s.have != Have::Closed || s.busy.is_some()))
            .map(|(t, _)| *t);
        let first = due.next()?;
        let held = 1 + due.take(most.saturating_sub(1)).count() >= most;
        held.then(|| now + (first - from) + Duration::from_nanos(1))
    }

    /// Tokens a new grant leaves in the bucket for the closes: every open brings a
    /// close, and a run of opens that took the whole burst would fall due as a run of
    /// closes with no burst left to start them on time.
    fn reserve(&self) -> u32 {
        self.limits.burst / 2
    }

    fn dispatch(&mut self, now: Now) {
        // Found afresh each time, so a hold from an earlier pass never outlives its grant.
        self.fresh_wait = None;
        let stops = self.shutting_stops();
        while self.running < self.limits.concurrency {
            let internal = !self.internal.is_empty();
            let lane = if internal { &self.internal } else { &self.fresh };
            // Entries that need nothing any more go without a token.
            let live = match lane.front() {
                None => break,
                Some(Work::Once(_)) => true,
                Some(Work::Grant(key)) => self
                    .slots
                    .get(key)
                    .is_some_and(|s| s.busy.is_none() && s.retry_at.is_none() && s.need().is_some()),
            };
            let reserve = if internal { 0 } else { self.reserve() };
            if live && !internal {
                self.fresh_wait = self.fresh_hold(now.mono);
            }
            if live
                && (stops
                    || (!internal && self.fresh_wait.is_some())
                    || !self.bucket.try_take_leaving(now.mono, reserve))
            {
                break;
            }
            let work = self.pop(internal);
            if live {
                self.start(work, now);
            } else if let Work::Grant(key) = work {
                self.remove_if_done(&key);
            }
        }
    }

    /// Takes the front of a lane (which must have one), giving back what it held.
    fn pop(&mut self, internal: bool) -> Work {
        let work = if internal { self.internal.pop_front() } else { self.fresh.pop_front() };
        let work = work.expect("lane has a front");
        if !internal {
            self.admitted_done();
        }
        if let Work::Grant(key) = &work {
            if let Some(s) = self.slots.get_mut(key) {
                *(if internal { &mut s.in_internal } else { &mut s.in_fresh }) = false;
            }
        }
        work
    }

    /// Shutting down without closing: nothing new starts.
    fn shutting_stops(&self) -> bool {
        self.shutting_down && !self.limits.close_on_exit
    }

    fn start(&mut self, work: Work, now: Now) {
        let id = self.next_id;
        self.next_id += 1;
        let (flight, task, journal) = match work {
            Work::Once(o) => {
                self.report(Report::Running { door_name: o.door_name.clone(), command: o.command.clone() });
                let flight = Flight {
                    door_name: o.door_name.clone(),
                    ip: o.ip,
                    op: OpKind::Open,
                    started: now.wall,
                    since: now.mono,
                    what: What::Command(o.command.clone()),
                    release_at: None,
                    released: false,
                    purpose: Purpose::Once(o.clone()),
                };
                (flight, Task::Command(o.command), None)
            }
            Work::Grant(key) => {
                let slot = self.slots.get_mut(&key).expect("dispatched slot exists");
                let need = slot.need().expect("dispatched slot needs work");
                slot.busy = Some(id);
                // A grant runs for its whole time from its open, as knockd's does from
                // its start command: an open that waited behind the rate limit neither
                // shortens the access nor makes its close fall due at the knocks' pace,
                // which may be faster than the firewall's (closes would queue, late).
                if let (Need::Open, Want::Open { until, .. }) = (need, slot.want) {
                    let (from_now, wall) = (now.mono + slot.duration, now.wall + slot.duration);
                    if from_now > until {
                        self.deadlines.remove(&(until, key.clone()));
                        self.deadlines.insert((from_now, key.clone()));
                        slot.want = Want::Open { until: from_now, wall };
                    }
                }
                let (door_name, ip) = (key.0.clone(), key.1);
                let (until, wall) = match slot.want {
                    Want::Open { until, wall } => (Some(until), Some(wall)),
                    Want::Closed => (None, None),
                };
                // Opens are journaled before they happen: a crash after the open never
                // leaves a grant nobody will close.
                let journal = match (need, wall) {
                    (Need::Open | Need::Refresh, Some(wall)) => {
                        slot.journaled = Some(wall);
                        Some(Record::Open(Entry {
                            door_name: door_name.clone(),
                            ip,
                            until: wall,
                            close: slot.kind.close_by(),
                        }))
                    }
                    _ => None,
                };
                let op = if need == Need::Close { OpKind::Close } else { OpKind::Open };
                let (task, what, release_at) = match (&slot.kind, need) {
                    (Kind::Commands { start, stop }, _) => {
                        let command = if need == Need::Close {
                            stop.clone()
                        } else {
                            start.clone().unwrap_or_default()
                        };
                        (Task::Command(command.clone()), What::Command(command), None)
                    }
                    (Kind::Native { backend, ports }, _) => {
                        let timeout =
                            until.map(|u| u.saturating_duration_since(now.mono)).unwrap_or_default();
                        let access =
                            Access { door: door_name.clone(), addr: ip, ports: ports.clone(), timeout };
                        let task = if need == Need::Close {
                            Task::Close(backend.clone(), access)
                        } else {
                            Task::Open(backend.clone(), access)
                        };
                        (task, What::Backend(backend.name()), Some(now.mono + self.limits.command_timeout))
                    }
                };
                match &what {
                    What::Command(command) => self
                        .report(Report::Running { door_name: door_name.clone(), command: command.clone() }),
                    What::Backend(backend) => {
                        self.report(Report::BackendRunning { door_name: door_name.clone(), ip, backend, op })
                    }
                }
                let flight = Flight {
                    purpose: Purpose::Grant { key, need, target: until },
                    door_name,
                    ip,
                    op,
                    started: now.wall,
                    since: now.mono,
                    what,
                    release_at,
                    released: false,
                };
                (flight, task, journal)
            }
        };
        self.flights.insert(id, flight);
        self.running += 1;
        self.effects.push(Effect::Dispatch(Job { id, task, journal }));
        self.pace.running(self.running, now.mono);
    }

    /// An operation ended.
    pub fn done(&mut self, id: u64, result: JobResult, now: Now) {
        let Some(f) = self.flights.remove(&id) else { return };
        let ok = matches!(result, JobResult::Command(Outcome::Success) | JobResult::Backend);
        if f.released {
            self.stuck -= 1;
        } else {
            self.running -= 1;
            self.pace.running(self.running, now.mono);
            self.pace.finished(now.mono);
            if f.op == OpKind::Close {
                self.pace.closed(now.mono.saturating_duration_since(f.since));
            }
            let r = match &result {
                _ if ok => OpResult::Ok,
                JobResult::Command(Outcome::TimedOut) => OpResult::TimedOut,
                _ => OpResult::Failed,
            };
            self.report(Report::Operation {
                door_name: f.door_name.clone(),
                ip: f.ip,
                backend: f.what.backend(),
                op: f.op,
                started: f.started,
                finished: now.wall,
                result: r,
            });
        }
        // Per-try reports, in knockd's words where knockd has them.
        let door_name = f.door_name.clone();
        let failures = match &f.purpose {
            Purpose::Once(o) => o.failures,
            Purpose::Grant { key, .. } => self.slots.get(key).map_or(0, |s| s.failures),
        };
        // A timed-out try is not tried again: it has held a slot for the whole
        // timeout already, and what hung once usually hangs again.
        let mut retryable = !f.released;
        // A knockd command that exits non-zero is reported in knockd's words and not
        // run again: knockd runs it once, and the command may not be idempotent.
        let mut knockd_once = false;
        match (&result, &f.what) {
            (JobResult::Command(Outcome::Success) | JobResult::Backend, _) => {}
            (JobResult::Command(Outcome::Failed(code)), _) => {
                retryable = false;
                knockd_once = true;
                self.report(Report::Failed { door_name: door_name.clone(), code: *code })
            }
            (JobResult::Command(Outcome::TimedOut), What::Command(command)) => {
                self.counters.timed_out.fetch_add(1, Relaxed);
                retryable = false;
                self.report(Report::CommandTimedOut {
                    door_name: door_name.clone(),
                    command: command.clone(),
                    after: self.limits.command_timeout,
                });
            }
            (JobResult::Command(Outcome::TimedOut), What::Backend(_)) => retryable = false,
            (JobResult::SpawnFailed(error), _) => {
                self.report(Report::SpawnFailed { door_name: door_name.clone(), error: error.clone() })
            }
            (JobResult::BackendFailed(error), What::Backend(backend)) => self.report(Report::BackendFailed {
                door_name: door_name.clone(),
                ip: f.ip,
                backend,
                op: f.op,
                error: error.clone(),
                attempt: failures + 1,
            }),
            (JobResult::BackendFailed(error), What::Command(_)) => {
                self.report(Report::SpawnFailed { door_name: door_name.clone(), error: error.clone() })
            }
            (JobResult::JournalFailed(error), _) => self.report(Report::JournalFailed {
                error: format!("{door_name}: {}: not opened: {error}", f.ip),
            }),
        }
        let retry_after = (!ok && retryable && failures + 1 < TRIES).then(|| RETRY_BASE * (1 << failures));
        if let Some(after) = retry_after {
            self.counters.retried.fetch_add(1, Relaxed);
            self.report(Report::Retrying {
                door_name: door_name.clone(),
                ip: f.ip,
                op: f.op,
                attempt: failures + 2,
                after,
            });
        } else if knockd_once {
            self.counters.failed.fetch_add(1, Relaxed);
        } else if !ok {
            self.counters.failed.fetch_add(1, Relaxed);
            self.report(Report::GaveUp {
                door_name: door_name.clone(),
                ip: f.ip,
                op: f.op,
                attempts: failures + 1,
            });
        }
        match f.purpose {
            Purpose::Once(mut o) => {
                if ok {
                    self.counters.opened.fetch_add(1, Relaxed);
                    self.report(Report::Opened { door_name: o.door_name.clone() });
                } else if let Some(after) = retry_after {
                    o.failures += 1;
                    let seq = self.next_id;
                    self.next_id += 1;
                    self.retries.insert((now.mono + after, seq), Work::Once(o));
                }
            }
            Purpose::Grant { key, need, target } => {
                self.grant_done(key, need, target, ok, retry_after, &result, now);
            }
        }
        self.dispatch(now);
        self.publish();
    }

    #[allow(clippy::too_many_arguments)]
    fn grant_done(
        &mut self,
        key: Key,
        need: Need,
        target: Option<Instant>,
        ok: bool,
        retry_after: Option<Duration>,
        result: &JobResult,
        now: Now,
    ) {
        let counters = self.counters.clone();
        let Some(slot) = self.slots.get_mut(&key) else { return };
        slot.busy = None;
        let mut close_record = false;
        match (need, ok) {
            (Need::Open | Need::Refresh, true) => {
                if need == Need::Open {
                    counters.opened.fetch_add(1, Relaxed);
                    self.effects.push(Effect::Report(Report::Opened { door_name: key.0.clone() }));
                }
                Self::set_have(&counters, &mut self.effects, &key, slot, Have::Open);
                slot.applied = target;
                slot.failures = 0;
            }
            (Need::Close, true) => {
                counters.closed.fetch_add(1, Relaxed);
                Self::set_have(&counters, &mut self.effects, &key, slot, Have::Closed);
                slot.failures = 0;
                slot.applied = None;
                if let Some(k) = slot.next_kind.take() {
                    slot.kind = k;
                }
                close_record = slot.journaled.take().is_some();
            }
            (_, false) => {
                // An open that was not journaled did not run: nothing may be open.
                let ran = !matches!(result, JobResult::JournalFailed(_));
                if need == Need::Open && ran {
                    Self::set_have(&counters, &mut self.effects, &key, slot, Have::Unsure);
                }
                match retry_after {
                    Some(after) => {
                        slot.failures += 1;
                        let at = now.mono + after;
                        slot.retry_at = Some(at);
                        self.retries.insert((at, self.next_id), Work::Grant(key.clone()));
                        self.next_id += 1;
                    }
                    None => {
                        slot.failures = 0;
                        match need {
                            Need::Open => slot.open_given_up = true,
                            // Keep what the backend has; its own timeout ends it.
                            Need::Refresh => slot.applied = target,
                            // Given up: the journal keeps the grant (no close record),
                            // so the next start tries again.
                            Need::Close => {
                                Self::set_have(&counters, &mut self.effects, &key, slot, Have::Closed);
                                slot.journaled = None;
                                if let Some(k) = slot.next_kind.take() {
                                    slot.kind = k;
                                }
                            }
                        }
                    }
                }
            }
        }
        if close_record {
            self.effects.push(Effect::Journal(Record::Close { door_name: key.0.clone(), ip: key.1 }));
        }
        self.schedule(&key, false);
        self.remove_if_done(&key);
    }

    /// Starts shutting down: with `close_on_exit`, every grant closes now; without,
    /// nothing new starts and the journal keeps what is open for the next start.
    /// Knocks not yet started are dropped either way.
    pub fn shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        for work in std::mem::take(&mut self.fresh) {
            self.admitted_done();
            match work {
                Work::Once(o) => self.refuse(o.door_name, o.ip, Refusal::ShuttingDown),
                Work::Grant(key) => {
                    if let Some(s) = self.slots.get_mut(&key) {
                        s.in_fresh = false;
                    }
                }
            }
        }
        let retries = std::mem::take(&mut self.retries);
        for ((t, seq), work) in retries {
            match work {
                Work::Once(o) => self.refuse(o.door_name, o.ip, Refusal::ShuttingDown),
                w @ Work::Grant(_) if self.limits.close_on_exit => {
                    self.retries.insert((t, seq), w);
                }
                Work::Grant(_) => {}
            }
        }
        self.internal.retain(|w| matches!(w, Work::Grant(_)));
        self.deadlines.clear();
        if self.limits.close_on_exit {
            let keys: Vec<Key> = self.slots.keys().cloned().collect();
            for key in keys {
                let slot = self.slots.get_mut(&key).expect("listed");
                if slot.is_open() || slot.busy.is_some() {
                    self.effects.push(Effect::Report(Report::ClosingOnShutdown {
                        ip: key.1,
                        door_name: key.0.clone(),
                    }));
                }
                if matches!(slot.want, Want::Open { .. }) {
                    // A retry pending is an open's: call it off, close instead.
                    slot.retry_at = None;
                    slot.failures = 0;
                }
                slot.want = Want::Closed;
                slot.next_kind = None;
                slot.open_given_up = false;
                self.schedule(&key, false);
                self.remove_if_done(&key);
            }
        } else {
            for w in std::mem::take(&mut self.internal) {
                if let Work::Grant(key) = w {
                    if let Some(s) = self.slots.get_mut(&key) {
                        s.in_internal = false;
                    }
                }
            }
        }
        self.tick(now);
    }

    /// Shutdown is complete: nothing runs (but stuck native calls, which are left
    /// behind) and, with `close_on_exit`, nothing is left to close.
    pub fn finished(&self) -> bool {
        self.shutting_down
            && self.running == 0
            && (!self.limits.close_on_exit || (self.internal.is_empty() && self.retries.is_empty()))
    }

    /// When `tick` has something to do next, if ever.
    pub fn next_wake(&self) -> Option<Instant> {
        let mut wake = self.deadlines.first().map(|(t, _)| *t);
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some((&(t, _), _)) = self.retries.first_key_value() {
            at(t);
        }
        // Past the bound on stuck calls no slot is given back, so there is nothing to
        // wake for (waking would spin).
        if self.stuck < self.limits.concurrency {
            for f in self.flights.values() {
                if let (false, Some(t)) = (f.released, f.release_at) {
                    at(t);
                }
            }
        }
        let work = !self.internal.is_empty() || !self.fresh.is_empty();
        if work && self.running < self.limits.concurrency && !self.shutting_stops() {
            if !self.internal.is_empty() {
                at(self.bucket.ready_at());
            } else {
                at(self.fresh_wait.unwrap_or(self.bucket.ready_at_leaving(self.reserve())));
            }
        }
        wake
    }

    fn publish(&self) {
        let c = &self.counters;
        c.waiting.store((self.internal.len() + self.retries.len()) as u64, Relaxed);
        c.running.store(self.running as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, DoorRule, L4};
    use crate::bucket::tests::assert_within_limits;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))
    }

    fn limits() -> Limits {
        Limits { rate: 1000, burst: 1000, concurrency: 4, command_timeout: 10 * S, close_on_exit: true }
    }

    /// A backend the scheduler only names: the simulation decides how its calls end.
    struct Fake(&'static str);
    impl Backend for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn prepare(&self, _: &[DoorRule]) -> Result<(), BackendError> {
            Ok(())
        }
        fn open(&self, _: &Access) -> Result<(), BackendError> {
            unreachable!("the simulation runs nothing")
        }
        fn close(&self, _: &Access) -> Result<(), BackendError> {
            unreachable!("the simulation runs nothing")
        }
        fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError> {
            Ok(Vec::new())
        }
        fn remove(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    fn cmds(door: &str, ip: IpAddr, start: &str, stop: Option<&str>, timeout: Duration) -> GrantRequest {
        GrantRequest {
            door_name: door.into(),
            ip,
            action: Action::Commands { start: Some(start.into()), stop: stop.map(Into::into) },
            timeout,
        }
    }

    fn native(door: &str, ip: IpAddr, timeout: Duration) -> GrantRequest {
        GrantRequest {
            door_name: door.into(),
            ip,
            action: Action::Native {
                backend: Arc::new(Fake("fake")),
                ports: vec![Port { port: 22, proto: L4::Tcp }],
            },
            timeout,
        }
    }

    /// One operation as the simulation saw it, in simulated time.
    #[derive(Clone, Debug)]
    struct Op {
        label: String,
        start: Instant,
        end: Option<Instant>,
        journal: Option<Record>,
    }

    type Script = Box<dyn FnMut(&str, u32) -> (Duration, JobResult)>;

    /// A discrete-event simulation: the scheduler, a simulated clock, and a pool whose
    /// operations take and end as `script` says (given the label and how many times that
    /// label ran before).
    struct Sim {
        s: Scheduler,
        t0: Instant,
        now: Now,
        counters: Arc<Counters>,
        script: Script,
        running: Vec<(u64, Instant, JobResult, usize)>,
        ops: Vec<Op>,
        reports: Vec<(Duration, Report)>,
        journal: Vec<Record>,
    }

    fn ok_after(d: Duration) -> Script {
        Box::new(move |_, _| (d, JobResult::Command(Outcome::Success)))
    }

    impl Sim {
        fn new(limits: Limits, script: Script) -> Sim {
            Sim::recovering(limits, script, Vec::new())
        }

        fn recovering(limits: Limits, script: Script, recovered: Vec<Recovered>) -> Sim {
            let now = Now::real();
            let counters = Arc::new(Counters::default());
            let s = Scheduler::new(limits, counters.clone(), now, recovered);
            let mut sim = Sim {
                s,
                t0: now.mono,
                now,
                counters,
                script,
                running: Vec::new(),
                ops: Vec::new(),
                reports: Vec::new(),
                journal: Vec::new(),
            };
            sim.collect();
            sim
        }

        fn at(&self) -> Duration {
            self.now.mono - self.t0
        }

        /// A knock, admitted as a handle admits it.
        fn knock(&mut self, req: GrantRequest) {
            self.counters.pending.fetch_add(1, Relaxed);
            self.s.request(req, self.now);
            self.collect();
            self.s.tick(self.now);
            self.collect();
        }

        fn collect(&mut self) {
            for e in self.s.take_effects() {
                match e {
                    Effect::Dispatch(job) => {
                        let label = match &job.task {
                            Task::Command(c) => c.clone(),
                            Task::Open(b, a) => {
                                format!("{} open {} {}s", b.name(), a.addr, a.timeout.as_secs())
                            }
                            Task::Close(b, a) => format!("{} close {}", b.name(), a.addr),
                        };
                        let before = self.ops.iter().filter(|o| o.label == label).count() as u32;
                        let (d, result) = (self.script)(&label, before);
                        if let Some(r) = &job.journal {
                            self.journal.push(r.clone());
                        }
                        self.ops.push(Op { label, start: self.now.mono, end: None, journal: job.journal });
                        self.running.push((job.id, self.now.mono + d, result, self.ops.len() - 1));
                    }
                    Effect::Report(r) => self.reports.push((self.at(), r)),
                    Effect::Journal(r) => self.journal.push(r),
                }
            }
        }

        /// Runs the simulation up to `t0 + until`.
        fn run_to(&mut self, until: Duration) {
            let limit = self.t0 + until;
            loop {
                self.s.tick(self.now);
                self.collect();
                let next_done = self.running.iter().map(|r| r.1).min();
                let next = [self.s.next_wake(), next_done].into_iter().flatten().min();
                match next {
                    Some(t) if t <= limit => {
                        let t = t.max(self.now.mono);
                        self.now = self.now.after(t - self.now.mono);
                        let (due, rest): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|r| r.1 <= t);
                        self.running = rest;
                        for (id, _, result, op) in due {
                            self.ops[op].end = Some(t);
                            self.s.done(id, result, self.now);
                            self.collect();
                        }
                    }
                    _ => {
                        self.now = self.now.after(limit.saturating_duration_since(self.now.mono));
                        self.s.tick(self.now);
                        self.collect();
                        return;
                    }
                }
            }
        }

        fn labels(&self) -> Vec<&str> {
            self.ops.iter().map(|o| o.label.as_str()).collect()
        }

        fn started(&self, label: &str) -> Vec<Duration> {
            self.ops.iter().filter(|o| o.label == label).map(|o| o.start - self.t0).collect()
        }

        fn reported(&self, f: impl Fn(&Report) -> bool) -> Vec<(Duration, Report)> {
            self.reports.iter().filter(|(_, r)| f(r)).cloned().collect()
        }
    }

    #[test]
    fn rate_and_burst_hold_for_every_window_of_recorded_times() {
        let (rate, burst) = (100, 20);
        let l = Limits { rate, burst, concurrency: 1000, ..limits() };
        let mut sim = Sim::new(l, ok_after(MS));
        for n in 0..300 {
            sim.knock(cmds("d", ip(n), "open %IP%", Some("close %IP%"), 30 * S));
        }
        sim.run_to(120 * S);
        let times: Vec<Instant> = sim.ops.iter().map(|o| o.start).collect();
        assert_eq!(times.len(), 600, "every open and every close ran");
        // New grants take half the burst at once: the other half stays for closes.
        assert_eq!(
            times.iter().filter(|&&t| t == sim.t0).count(),
            burst as usize / 2,
            "half the burst at once"
        );
        assert_within_limits(&times, rate, burst);
        // Closes come on time for the early grants, and none is lost.
        assert_eq!(sim.counters.opened.load(Relaxed), 300);
        assert_eq!(sim.counters.closed.load(Relaxed), 300);
        assert_eq!(sim.counters.pending.load(Relaxed), 0, "every admission unit given back");
        let last = times.iter().max().unwrap().duration_since(sim.t0);
        println!("600 operations at rate {rate} burst {burst}: the last started at {last:?}");
    }

    #[test]
    fn closes_go_before_waiting_opens() {
        // Rate 10/s: 50 knocks need 5 s to open; the first grant's close (due at 1 s)
        // must not wait behind them.
        let l = Limits { rate: 10, burst: 1, ..limits() };
        let mut sim = Sim::new(l, ok_after(MS));
        sim.knock(cmds("a", IP, "open a", Some("close a"), S));
        for n in 0..50 {
            sim.knock(cmds("b", ip(n), "open %IP%", Some("close %IP%"), 60 * S));
        }
        sim.run_to(3 * S);
        let close = sim.started("close a");
        assert_eq!(close.len(), 1);
        assert!(close[0] <= S + 100 * MS, "closed at {:?}", close[0]);
    }

    #[test]
    fn grants_run_their_whole_time_from_the_open_and_closes_keep_pace_with_slow_operations() {
        // Operations take 1 s, one at a time: the firewall manages 1/s while knocks come
        // at 2/s. Each grant that opens lasts its 5 s from its open, and its close starts
        // then, or once the operation running at that moment ends; the opens that waited
        // past their whole time are refused, not run.
        let mut sim = Sim::new(Limits { concurrency: 1, ..limits() }, ok_after(S));
        for i in 0..20u32 {
            sim.run_to(500 * MS * i);
            sim.knock(native("ssh", ip(i), 5 * S));
        }
        sim.run_to(60 * S);
        let (mut opened, mut closed) = (0, 0);
        for i in 0..20u32 {
            let open = sim.started(&format!("fake open {} 5s", ip(i)));
            let close = sim.started(&format!("fake close {}", ip(i)));
            match (&open[..], &close[..]) {
                ([], []) => {}
                ([o], [c]) => {
                    opened += 1;
                    closed += 1;
                    assert!(*c >= *o + 5 * S && *c <= *o + 6 * S, "{}: open {o:?}, close {c:?}", ip(i));
                }
                other => panic!("{}: {other:?}", ip(i)),
            }
        }
        let refused = sim.reported(|r| matches!(r, Report::Refused { reason: Refusal::Expired, .. })).len();
        assert!(opened >= 5, "{opened} opened");
        assert_eq!(opened + refused, 20, "{opened} opened, {refused} refused");
        assert_eq!(closed, opened);
        assert_eq!(sim.counters.pending.load(Relaxed), 0);
    }

    /// For the native grants of addresses `0..n` lasting `t`: when each that opened
    /// fell due (its open's start plus `t`), and the latest start of a close after
    /// that. Each opened once and closed once, never early; the rest never opened.
    fn due_and_late(sim: &Sim, n: u32, t: Duration) -> (Vec<Duration>, Duration) {
        let (mut due, mut late) = (vec![], Duration::ZERO);
        for i in 0..n {
            let open = sim.started(&format!("fake open {} {}s", ip(i), t.as_secs()));
            let close = sim.started(&format!("fake close {}", ip(i)));
            if let ([o], [c]) = (&open[..], &close[..]) {
                assert!(*c >= *o + t, "{}: open {o:?}, close {c:?}", ip(i));
                late = late.max(*c - (*o + t));
                due.push(*o + t);
            } else {
                assert!(open.is_empty() && close.is_empty(), "{}: {open:?} {close:?}", ip(i));
            }
        }
        (due, late)
    }

    #[test]
    fn no_more_grants_fall_due_together_than_the_firewall_closes_in_a_second() {
        // One operation at a time, opens 10 ms, closes 50 ms (an iptables -D searching
        // a long chain). Knocks come at 40 a second for 10 s: opened as they come, their
        // closes would fall due at 40 a second, twice what the firewall closes. Held to
        // 20 a second, every close starts within about 1 s of its time, and the knocks
        // that could not be opened in time are refused, not lost.
        let script: Script = Box::new(|label, _| {
            let d = if label.starts_with("fake close") { 50 * MS } else { 10 * MS };
            (d, JobResult::Command(Outcome::Success))
        });
        let mut sim = Sim::new(Limits { concurrency: 1, ..limits() }, script);
        for i in 0..400u32 {
            sim.run_to(25 * MS * i);
            sim.knock(native("ssh", ip(i), 5 * S));
        }
        sim.run_to(60 * S);
        let (mut due, late) = due_and_late(&sim, 400, 5 * S);
        let opened = due.len();
        due.sort();
        let most = due.iter().map(|t| due.iter().filter(|u| *u >= t && **u <= *t + S).count()).max();
        assert!(most <= Some(20), "{most:?} fall due within a second");
        assert!(late <= 1200 * MS, "a close started {late:?} late");
        let refused = sim.reported(|r| matches!(r, Report::Refused { reason: Refusal::Expired, .. })).len();
        assert!(opened >= 100, "{opened} opened");
        assert_eq!(opened + refused, 400, "{opened} opened, {refused} refused");
        assert_eq!(sim.counters.pending.load(Relaxed), 0);
    }

    #[test]
    fn closes_keep_their_time_when_knocks_outrun_the_rate() {
        // A fast firewall (1 ms), knocks at twice the rate for 20 s: the rate limits
        // the opens, and every close still starts within 50 ms of its time (the
        // burst's other half is there for a run of closes falling due together).
        let l = Limits { rate: 100, burst: 200, ..limits() };
        let mut sim = Sim::new(l, ok_after(MS));
        let n = 4000u32;
        for i in 0..n {
            sim.run_to(5 * MS * i);
            sim.knock(native("ssh", ip(i), 5 * S));
        }
        sim.run_to(60 * S);
        let (due, late) = due_and_late(&sim, n, 5 * S);
        let opened = due.len();
        assert!(opened >= 1000, "{opened} opened");
        assert!(late <= 50 * MS, "a close started {late:?} late");
        let times: Vec<Instant> = sim.ops.iter().map(|o| o.start).collect();
        assert_within_limits(&times, 100, 200);
    }

    #[test]
    fn never_more_than_concurrency_at_once() {
        let l = Limits { concurrency: 4, ..limits() };
        let mut sim = Sim::new(l, ok_after(100 * MS));
        for n in 0..20 {
            sim.knock(cmds("d", ip(n), "open %IP%", Some("close %IP%"), 10 * S));
        }
        sim.run_to(30 * S);
        assert_eq!(sim.ops.len(), 40);
        // At each start, count the operations that overlap it.
        let mut max = 0;
        for o in &sim.ops {
            let at_once = sim.ops.iter().filter(|p| p.start <= o.start && o.start < p.end.unwrap()).count();
            max = max.max(at_once);
        }
        assert_eq!(max, 4);
        // 20 opens of 100 ms, 4 at a time: the last starts at 0.4 s. (The bound on
        // grants falling due together, 20 until closes have been seen, is not passed.)
        assert_eq!(sim.started("open 198.18.0.19"), [400 * MS]);
    }

    #[test]
    fn repeat_knock_extends_instead_of_starting_again() {
        let mut sim = Sim::new(limits(), ok_after(MS));
        sim.knock(cmds("ssh", IP, "open %IP%", Some("close %IP%"), 10 * S));
        sim.run_to(8 * S);
        sim.knock(cmds("ssh", IP, "open %IP%", Some("close %IP%"), 10 * S));
        sim.run_to(30 * S);
        assert_eq!(sim.labels(), ["open 198.18.0.2", "close 198.18.0.2"]);
        assert_eq!(sim.started("close 198.18.0.2"), [18 * S], "the old deadline no longer closes it");
        let ext = sim.reported(|r| matches!(r, Report::Extended { .. }));
        assert_eq!(ext.len(), 1);
        assert!(matches!(ext[0].1, Report::Extended { secs: 10, .. }), "{ext:?}");
        // The journal holds the new end: write-ahead open, extension, close.
        let ends: Vec<String> = sim
            .journal
            .iter()
            .map(|r| match r {
                Record::Open(e) => {
                    format!("open {}", (e.until.duration_since(sim.now.wall - 30 * S).unwrap()).as_secs())
                }
                Record::Close { .. } => "close".into(),
            })
            .collect();
        assert_eq!(ends, ["open 10", "open 18", "close"]);
        // After it closed, a new knock opens again.
        sim.knock(cmds("ssh", IP, "open %IP%", Some("close %IP%"), 10 * S));
        assert_eq!(sim.labels().len(), 3);
    }

    #[test]
    fn close_never_overtakes_a_slow_open() {
        // The open takes 5 s; the grant lasts 1 s.
        let script: Script = Box::new(|label, _| {
            let d = if label.starts_with("open") { 5 * S } else { MS };
            (d, JobResult::Command(Outcome::Success))
        });
        let mut sim = Sim::new(limits(), script);
        sim.knock(cmds("ssh", IP, "open", Some("close"), S));
        sim.run_to(20 * S);
        assert_eq!(sim.labels(), ["open", "close"]);
        let (open, close) = (&sim.ops[0], &sim.ops[1]);
        assert!(close.start >= open.end.unwrap(), "close started before its open ended");
        // The timeout report came on time; the close waited for the open.
        let t = sim.reported(|r| matches!(r, Report::Timeout { .. }));
        assert_eq!(t[0].0, S);
        assert_eq!(close.start - sim.t0, 5 * S);
    }

    #[test]
    fn a_knock_during_a_close_opens_again_after_it() {
        let script: Script = Box::new(|label, _| {
            let d = if label.starts_with("close") { 2 * S } else { MS };
            (d, JobResult::Command(Outcome::Success))
        });
        let mut sim = Sim::new(limits(), script);
        sim.knock(cmds("ssh", IP, "open", Some("close"), S));
        sim.run_to(S + 500 * MS); // the close runs from 1 s to 3 s
        sim.knock(cmds("ssh", IP, "open", Some("close"), 10 * S));
        sim.run_to(30 * S);
        assert_eq!(sim.labels(), ["open", "close", "open", "close"]);
        assert_eq!(sim.ops[2].start - sim.t0, 3 * S, "reopened right after the close");
        assert_eq!(sim.ops[3].start - sim.t0, 13 * S, "10 s from the open, not from the knock");
    }

    #[test]
    fn a_knock_before_a_queued_close_runs_cancels_it() {
        // Rate 1/s: at the deadline the close must wait for a token; a knock comes first.
        let l = Limits { rate: 1, burst: 1, ..limits() };
        let mut sim = Sim::new(l, ok_after(MS));
        sim.knock(cmds("ssh", IP, "open", Some("close"), 500 * MS)); // token at 0 s
        sim.run_to(600 * MS); // deadline at 0.5 s, next token at 1 s
        sim.knock(cmds("ssh", IP, "open", Some("close"), 10 * S));
        sim.run_to(5 * S);
        assert_eq!(sim.labels(), ["open"], "neither closed nor opened twice");
        assert_eq!(sim.counters.open_grants.load(Relaxed), 1);
    }

    #[test]
    fn a_failing_knockd_command_runs_once_as_in_knockd() {
        let script: Script = Box::new(|label, _| {
            let r = if label == "open" { Outcome::Failed(4) } else { Outcome::Success };
            (10 * MS, JobResult::Command(r))
        });
        let mut sim = Sim::new(limits(), script);
        sim.knock(cmds("ssh", IP, "open", Some("close"), 30 * S));
        sim.run_to(60 * S);
        assert_eq!(sim.labels(), ["open", "close"], "not run again; still closed at its time");
        assert_eq!(sim.started("close"), [30 * S]);
        assert_eq!(sim.reported(|r| matches!(r, Report::Failed { code: 4, .. })).len(), 1);
        assert!(sim.reported(|r| matches!(r, Report::Retrying { .. } | Report::GaveUp { .. })).is_empty());
        assert_eq!(sim.counters.failed.load(Relaxed), 1);
    }

    #[test]
    fn backend_failures_are_retried_with_backoff_then_succeed() {
        let mut opens = 0;
        let script: Script = Box::new(move |label, _| {
            let open = label.starts_with("fake open");
            opens += u32::from(open);
            if open && opens <= 2 {
                (10 * MS, JobResult::BackendFailed("EBUSY".into()))
            } else {
                (10 * MS, JobResult::Backend)
            }
        });
        let mut sim = Sim::new(limits(), script);
        sim.knock(native("ssh", IP, 30 * S));
        sim.run_to(10 * S);
        // Tries at 0, then 500 ms after the first ended, then 1 s after the second; the
        // grant runs its whole time from the try that worked.
        assert_eq!(sim.started("fake open 198.18.0.2 30s"), [Duration::ZERO, 510 * MS, 1520 * MS]);
        sim.run_to(60 * S);
        assert_eq!(sim.started("fake close 198.18.0.2"), [31520 * MS]);
        assert_eq!(sim.reported(|r| matches!(r, Report::BackendFailed { .. })).len(), 2);
        assert_eq!(sim.reported(|r| matches!(r, Report::Retrying { .. })).len(), 2);
        assert_eq!(sim.counters.retried.load(Relaxed), 2);
        assert_eq!(sim.counters.failed.load(Relaxed), 0);
        assert_eq!(sim.counters.opened.load(Relaxed), 1);
    }

    #[test]
    fn a_backend_open_that_keeps_failing_is_given_up_and_still_closed_at_its_time() {
        let script: Script = Box::new(|label, _| {
            if label.starts_with("fake open") {
                (MS, JobResult::BackendFailed("EPERM".into()))
            } else {
                (MS, JobResult::Backend)
            }
        });
        let mut sim = Sim::new(limits(), script);
        sim.knock(native("ssh", IP, 30 * S));
        sim.run_to(60 * S);
        let opens = sim.labels().iter().filter(|l| l.starts_with("fake open")).count();
        assert_eq!(opens as u32, TRIES, "{:?}", sim.labels());
        // The last try started at 1.502 s: a half-done open is cleaned up at its time.
        assert_eq!(sim.started("fake close 198.18.0.2"), [31502 * MS]);
        let gave_up = sim.reported(|r| matches!(r, Report::GaveUp { .. }));
        assert!(
            matches!(gave_up[..], [(_, Report::GaveUp { op: OpKind::Open, attempts: TRIES, .. })]),
            "{gave_up:?}"
        );
        assert_eq!(sim.counters.failed.load(Relaxed), 1);
    }

    #[test]
    fn a_timed_out_command_is_reported_and_not_retried() {
        let script: Script = Box::new(|label, _| {
            if label == "hang" {
                (10 * S, JobResult::Command(Outcome::TimedOut))
            } else {
                (MS, JobResult::Command(Outcome::Success))
            }
        });
        let mut sim = Sim::new(Limits { concurrency: 1, ..limits() }, script);
        sim.knock(cmds("a", IP, "hang", None, S));
        sim.run_to(60 * S);
        assert_eq!(sim.labels(), ["hang"]);
        let t = sim.reported(|r| matches!(r, Report::CommandTimedOut { .. }));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, 10 * S);
        assert_eq!(sim.counters.timed_out.load(Relaxed), 1);
    }

    #[test]
    fn a_hung_backend_call_gives_its_slot_back_at_the_timeout() {
        // One slot. Door a's backend never answers; door b's knock comes 1 s later.
        let script: Script = Box::new(|label, _| {
            let d = if label.starts_with("hung") { 3600 * S } else { MS };
            (d, JobResult::Backend)
        });
        let l = Limits { concurrency: 1, command_timeout: 2 * S, ..limits() };
        let mut sim = Sim::new(l, script);
        let mut a = native("a", IP, 60 * S);
        a.action = Action::Native { backend: Arc::new(Fake("hung")), ports: vec![] };
        sim.knock(a);
        sim.run_to(S);
        sim.knock(native("b", IP2, 60 * S));
        sim.run_to(10 * S);
        // Knocked at 1 s for 60 s, opened at 2 s: the grant runs 60 s from its open.
        assert_eq!(sim.started("fake open 198.18.0.3 60s"), [2 * S], "b waits for the timeout, no longer");
        let t = sim.reported(|r| matches!(r, Report::BackendTimedOut { backend: "hung", .. }));
        assert_eq!(t.len(), 1);
        assert_eq!(sim.counters.timed_out.load(Relaxed), 1);
        // The hung grant stays busy: its close cannot overtake the open still running.
        sim.run_to(120 * S);
        assert!(sim.started("hung close 198.18.0.2").is_empty());
    }

    #[test]
    fn native_grants_open_close_and_refresh_through_the_backend() {
        let mut sim = Sim::new(limits(), ok_after(MS));
        let sim_ok: Script = Box::new(|_, _| (MS, JobResult::Backend));
        sim.script = sim_ok;
        sim.knock(native("ssh", IP, 30 * S));
        sim.run_to(10 * S);
        sim.knock(native("ssh", IP, 30 * S));
        sim.run_to(60 * S);
        // The backend is told the new end (it keeps time itself), then closes at it.
        assert_eq!(
            sim.labels(),
            ["fake open 198.18.0.2 30s", "fake open 198.18.0.2 30s", "fake close 198.18.0.2"]
        );
        assert_eq!(sim.started("fake close 198.18.0.2"), [40 * S]);
        assert_eq!(sim.counters.opened.load(Relaxed), 1, "a refresh is not a second grant");
        // The records metrics count: one grant opened, open from 0 s to its close.
        let records = sim.reported(|r| matches!(r, Report::Opened { .. } | Report::GrantOpen { .. }));
        let records: Vec<Report> = records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            records,
            [
                Report::Opened { door_name: "ssh".into() },
                Report::GrantOpen { door_name: "ssh".into(), open: true },
                Report::GrantOpen { door_name: "ssh".into(), open: false },
            ]
        );
        match &sim.ops[1].journal {
            Some(Record::Open(e)) => assert_eq!(
                e.close,
                CloseBy::Native { backend: "fake".into(), ports: vec![Port { port: 22, proto: L4::Tcp }] }
            ),
            other => panic!("refresh not journaled first: {other:?}"),
        }
    }

    #[test]
    fn start_without_stop_runs_every_time_and_no_start_does_nothing() {
        let mut sim = Sim::new(limits(), ok_after(MS));
        for _ in 0..3 {
            sim.knock(cmds("once", IP, "run %IP%", None, S));
        }
        sim.knock(GrantRequest {
            door_name: "none".into(),
            ip: IP,
            action: Action::Commands { start: None, stop: Some("stop".into()) },
            timeout: S,
        });
        sim.run_to(10 * S);
        assert_eq!(sim.labels(), ["run 198.18.0.2"; 3]);
        let opened = sim.reported(|r| matches!(r, Report::Opened { .. }));
        assert_eq!(opened.len(), 3, "each run is a knock that took effect");
        assert!(sim.reported(|r| matches!(r, Report::GrantOpen { .. })).is_empty(), "no grant stays open");
        assert!(sim.journal.is_empty(), "nothing to close, nothing journaled");
        assert_eq!(sim.counters.pending.load(Relaxed), 0);
    }

    fn entry(door: &str, ip: IpAddr, until: SystemTime, close: CloseBy) -> Recovered {
        Recovered { entry: Entry { door_name: door.into(), ip, until, close }, backend: None }
    }

    #[test]
    fn reconciliation_closes_the_expired_at_once_and_rearms_the_live() {
        let wall = SystemTime::now();
        let native_entry = |backend: &str| CloseBy::Native { backend: backend.into(), ports: vec![] };
        let mut live_native = entry("n", IP, wall + 20 * S, native_entry("fake"));
        live_native.backend = Some(Arc::new(Fake("fake")));
        let recovered = vec![
            entry("old", IP, wall - 3600 * S, CloseBy::Command("stop old".into())),
            entry("live", IP, wall + 30 * S, CloseBy::Command("stop live".into())),
            live_native,
            entry("lost", IP2, wall + 30 * S, native_entry("ufw")),
        ];
        let mut sim = Sim::recovering(limits(), ok_after(MS), recovered);
        // `Sim::recovering` takes its own `now`; the entries were made a moment before.
        assert_eq!(sim.counters.open_grants.load(Relaxed), 3);
        sim.run_to(Duration::ZERO);
        assert_eq!(sim.started("stop old"), [Duration::ZERO], "expired: closed at once");
        sim.run_to(60 * S);
        let live = sim.started("stop live")[0];
        assert!(live <= 30 * S && live >= 29 * S, "closed at its original time, not {live:?}");
        assert_eq!(sim.started("fake close 198.18.0.2").len(), 1);
        assert!(
            sim.ops.iter().all(|o| !o.label.contains("open")),
            "nothing opened again: {:?}",
            sim.labels()
        );
        assert_eq!(sim.reported(|r| matches!(r, Report::UnknownBackend { .. })).len(), 1);
        assert_eq!(sim.reported(|r| matches!(r, Report::Rearmed { .. })).len(), 2);
        assert_eq!(sim.reported(|r| matches!(r, Report::ExpiredWhileDown { .. })).len(), 1);
        assert_eq!(sim.counters.open_grants.load(Relaxed), 0);
        // The unknown one got no close record: the journal keeps it.
        let closes: Vec<&str> = sim
            .journal
            .iter()
            .filter_map(|r| match r {
                Record::Close { door_name, .. } => Some(door_name.as_str()),
                Record::Open(_) => None,
            })
            .collect();
        assert_eq!(closes, ["old", "n", "live"]);
    }

    #[test]
    fn a_knock_on_a_rearmed_grant_extends_it() {
        let wall = SystemTime::now();
        let recovered = vec![entry("live", IP, wall + 30 * S, CloseBy::Command("stop".into()))];
        let mut sim = Sim::recovering(limits(), ok_after(MS), recovered);
        sim.knock(cmds("live", IP, "start", Some("stop"), 60 * S));
        sim.run_to(120 * S);
        assert_eq!(sim.labels(), ["stop"], "not opened twice");
        assert_eq!(sim.started("stop"), [60 * S]);
    }

    #[test]
    fn shutdown_closes_everything_open_including_what_is_opening() {
        let script: Script = Box::new(|label, _| {
            let d = if label == "open b" { 2 * S } else { MS };
            (d, JobResult::Command(Outcome::Success))
        });
        let l = Limits { rate: 1, burst: 4, ..limits() };
        let mut sim = Sim::new(l, script);
        sim.knock(cmds("a", IP, "open a", Some("close a"), 60 * S));
        sim.knock(cmds("b", IP, "open b", Some("close b"), 60 * S));
        sim.knock(cmds("c", IP, "open c", Some("close c"), 60 * S)); // waits for a token
        sim.run_to(100 * MS);
        sim.s.shutdown(sim.now);
        sim.collect();
        sim.run_to(30 * S);
        assert!(sim.s.finished());
        assert_eq!(sim.labels(), ["open a", "open b", "close a", "close b"]);
        assert!(sim.ops[3].start >= sim.ops[1].end.unwrap());
        assert_eq!(sim.reported(|r| matches!(r, Report::ClosingOnShutdown { .. })).len(), 2);
        assert_eq!(
            sim.reported(|r| matches!(r, Report::Refused { reason: Refusal::ShuttingDown, .. })).len(),
            0
        );
        assert_eq!(sim.counters.pending.load(Relaxed), 0);
    }

    #[test]
    fn shutdown_without_closing_waits_for_what_runs_and_closes_nothing() {
        let script: Script = Box::new(|label, _| {
            let d = if label == "open b" { 2 * S } else { MS };
            (d, JobResult::Command(Outcome::Success))
        });
        let l = Limits { close_on_exit: false, ..limits() };
        let mut sim = Sim::new(l, script);
        sim.knock(cmds("a", IP, "open a", Some("close a"), S));
        sim.knock(cmds("b", IP, "open b", Some("close b"), 60 * S));
        sim.run_to(100 * MS);
        sim.s.shutdown(sim.now);
        sim.collect();
        assert!(!sim.s.finished(), "open b still runs");
        sim.run_to(30 * S);
        assert!(sim.s.finished());
        assert_eq!(sim.labels(), ["open a", "open b"]);
        assert_eq!(sim.journal.iter().filter(|r| matches!(r, Record::Close { .. })).count(), 0);
    }

    #[test]
    fn an_open_that_waits_past_its_whole_time_is_refused_not_run() {
        // One operation a second; three knocks at once for 2 s each. Tokens at 0 s
        // (opens 0), 1 s (opens 1), 2 s: 2's time is up, so close 0 (due at 2 s) gets it.
        let l = Limits { rate: 1, burst: 1, ..limits() };
        let mut sim = Sim::new(l, ok_after(MS));
        for n in 0..3 {
            sim.knock(cmds("d", ip(n), "open %IP%", Some("close %IP%"), 2 * S));
        }
        sim.run_to(30 * S);
        assert_eq!(
            sim.labels(),
            ["open 198.18.0.0", "open 198.18.0.1", "close 198.18.0.0", "close 198.18.0.1"]
        );
        let expired = sim.reported(|r| matches!(r, Report::Refused { reason: Refusal::Expired, .. }));
        assert!(
            matches!(&expired[..], [(t, Report::Refused { ip: who, .. })] if *t == 2 * S && *who == ip(2)),
            "{expired:?}"
        );
        assert_eq!(sim.counters.refused.load(Relaxed), 1);
        assert_eq!(sim.counters.pending.load(Relaxed), 0, "its admission unit was given back");
        assert_eq!(sim.counters.open_grants.load(Relaxed), 0);
        assert_eq!(sim.journal.iter().filter(|r| matches!(r, Record::Open(_))).count(), 2, "never journaled");
    }

    #[test]
    fn stuck_calls_are_bounded_and_do_not_spin() {
        let script: Script = Box::new(|_, _| (3600 * S, JobResult::Backend));
        let l = Limits { concurrency: 1, command_timeout: S, ..limits() };
        let mut sim = Sim::new(l, script);
        for n in 0..3 {
            sim.knock(native("d", ip(n), 7200 * S));
        }
        sim.run_to(10 * S);
        // One stuck call gave its slot back; the second then holds it (the bound is 1).
        assert_eq!(sim.ops.len(), 2);
        // Nothing to wake for until a call returns but the grants' ends (7200 s).
        let wake = sim.s.next_wake().unwrap();
        assert!(wake > sim.now.mono + 7000 * S, "would spin: wake at {:?}", wake - sim.t0);
        sim.run_to(3601 * S);
        assert_eq!(sim.ops.len(), 3);
    }
}
