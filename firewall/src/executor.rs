//! The executor's threads, around the (private) scheduler that decides:
//!
//! - capture threads call [`ExecutorHandle::open`], which never blocks: it admits the
//!   knock if fewer than `queue` are pending, and refuses (reports and counts) it if not;
//! - one scheduler thread owns every grant, fires stops at their time and starts
//!   operations within the rate and concurrency limits;
//! - each operation runs on a thread of its own (at most `concurrency` hold a slot), so
//!   a hung command or backend call delays nothing but its own grant: a command is
//!   killed with its process group at `command_timeout`; a backend call, which cannot
//!   be killed, gives its slot back at that time;
//! - one journal thread makes grants durable (group commit) before they open.
//!
//! Every queue is bounded: knocks by `queue` (refused when full), operations by
//! `concurrency`, their results by the same, journal writes by `queue` (an open whose
//! record cannot be queued fails and is retried; an extension or close record that
//! cannot be is counted as a journal error: after a crash that grant closes earlier,
//! or is closed twice, both harmless). Reports wait for the log, except `Refused`
//! (sent by capture threads) and `Operation`, which are dropped and counted when the
//! log is behind.

use crate::backend::{Backend, Port};
use crate::journal::{self, Journal, JournalError, Record};
use crate::runner::CommandRunner;
use crate::scheduler::{Effect, Job, JobResult, Limits, Now, Recovered, Scheduler, Task};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Limits and state of the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Firewall operations (opens and closes, all doors together) per second, sustained.
    pub rate: u32,
    /// Operations that may start at once after a quiet spell.
    pub burst: u32,
    /// Operations running at once.
    pub concurrency: usize,
    /// A command still running after this is killed with its process group; a backend
    /// call still running gives its concurrency slot back.
    pub command_timeout: Duration,
    /// Knocks admitted but not started yet; past this new ones are refused.
    pub queue: usize,
    /// Where the grant journal lives; `None`: no journal (a crash leaves grants open).
    pub state_dir: Option<PathBuf>,
    /// At a clean shutdown, close every open grant (otherwise the journal keeps them and
    /// the next start re-arms them).
    pub close_on_exit: bool,
}

impl Default for ExecutorConfig {
    fn default() -> ExecutorConfig {
        ExecutorConfig {
            rate: 100,
            burst: 200,
            concurrency: 4,
            command_timeout: Duration::from_secs(10),
            queue: 4096,
            state_dir: Some(PathBuf::from("/var/lib/sesame")),
            close_on_exit: true,
        }
    }
}

/// What a door does for a successful knock, chosen per door by the engine.
#[derive(Clone)]
pub enum Action {
    /// knockd's templates, `%IP%` not yet substituted. No start: nothing happens. A
    /// start without a stop: it runs on every success and no grant is kept.
    Commands { start: Option<String>, stop: Option<String> },
    /// A firewall backend opens `ports` for the knocker and closes them at the end.
    Native { backend: Arc<dyn Backend>, ports: Vec<Port> },
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Commands { start, stop } => {
                f.debug_struct("Commands").field("start", start).field("stop", stop).finish()
            }
            Action::Native { backend, ports } => {
                f.debug_struct("Native").field("backend", &backend.name()).field("ports", ports).finish()
            }
        }
    }
}

/// A successful knock, as the matcher reports it to the firewall.
#[derive(Clone, Debug)]
pub struct GrantRequest {
    /// The door's identity: grants are keyed by it, never by its place in the file.
    pub door_name: String,
    pub ip: IpAddr,
    pub action: Action,
    /// How long the grant lasts (knockd's `cmd_timeout`).
    pub timeout: Duration,
}

/// Which way an operation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Open,
    Close,
}

impl OpKind {
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Open => "open",
            OpKind::Close => "close",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    Ok,
    Failed,
    TimedOut,
}

/// Why a knock got no grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `queue` knocks were already waiting.
    QueueFull,
    /// The executor is shutting down (or gone).
    ShuttingDown,
    /// It waited (behind the rate limit) for longer than the grant would have lasted.
    Expired,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::QueueFull => "the firewall queue is full",
            Refusal::ShuttingDown => "shutting down",
            Refusal::Expired => "its time ran out while it waited for the firewall",
        })
    }
}

/// What the executor did, for the log. The first six map to knockd log lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `DOOR: running command: COMMAND`
    Running { door_name: String, command: String },
    /// `DOOR: command returned non-zero status code (N)`
    Failed { door_name: String, code: i32 },
    /// The shell could not be started at all (knockd: `error: command fork failed!`).
    SpawnFailed { door_name: String, error: String },
    /// `IP: DOOR: command timeout`, just before the stop runs.
    Timeout { ip: IpAddr, door_name: String },
    /// A repeat knock while the grant was open: it now lasts `secs` more seconds.
    Extended { ip: IpAddr, door_name: String, secs: u64 },
    /// Shutdown closes a grant before its time.
    ClosingOnShutdown { ip: IpAddr, door_name: String },
    /// A knock got no grant.
    Refused { ip: IpAddr, door_name: String, reason: Refusal },
    /// A command ran past `command_timeout`; its process group was killed.
    CommandTimedOut { door_name: String, command: String, after: Duration },
    /// A backend call starts (the native counterpart of `Running`).
    BackendRunning { door_name: String, ip: IpAddr, backend: &'static str, op: OpKind },
    /// A backend call failed; `attempt` counts from 1.
    BackendFailed {
        door_name: String,
        ip: IpAddr,
        backend: &'static str,
        op: OpKind,
        error: String,
        attempt: u32,
    },
    /// A backend call has not returned after `command_timeout`: its slot is given back,
    /// the grant waits for it.
    BackendTimedOut { door_name: String, ip: IpAddr, backend: &'static str, op: OpKind, after: Duration },
    /// A failed operation will be tried again (try number `attempt`) after `after`.
    Retrying { door_name: String, ip: IpAddr, op: OpKind, attempt: u32, after: Duration },
    /// An operation failed `attempts` times and is given up. A failed open still closes
    /// at its time; a failed close stays in the journal for the next start.
    GaveUp { door_name: String, ip: IpAddr, op: OpKind, attempts: u32 },
    /// At start: a journaled grant still has `secs` to go and will close at its time.
    Rearmed { ip: IpAddr, door_name: String, secs: u64 },
    /// At start: a journaled grant ran out while sesamed was down; it closes now.
    ExpiredWhileDown { ip: IpAddr, door_name: String },
    /// At start: a journaled grant needs a backend this daemon does not have; it stays
    /// in the journal.
    UnknownBackend { ip: IpAddr, door_name: String, backend: String },
    /// The journal could not be read or written (the text names the file and grant).
    JournalFailed { error: String },
    /// One firewall operation, for checking limits from recorded times: `started` is
    /// when it took its token and concurrency slot, `finished` when it gave the slot back.
    Operation {
        door_name: String,
        ip: IpAddr,
        /// The backend's name, `command` for knockd's commands.
        backend: &'static str,
        op: OpKind,
        started: SystemTime,
        finished: SystemTime,
        result: OpResult,
    },
    /// For metrics: a knock took effect (its grant opened, or its knockd command ran).
    /// A refresh of an open grant is not one.
    Opened { door_name: String },
    /// For metrics: a grant of this door became open (`true`) or closed (`false`),
    /// counting grants re-armed from the journal at start.
    GrantOpen { door_name: String, open: bool },
}

impl Report {
    /// Reports that are records for metrics or `--ops-log`, not log lines; the executor
    /// offers them without ever waiting for the log.
    pub fn is_record(&self) -> bool {
        matches!(self, Report::Operation { .. } | Report::Opened { .. } | Report::GrantOpen { .. })
    }
}

/// Counters the executor's threads keep; [`Stats`] is their snapshot.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Knocks admitted and not yet started (the `queue` bound).
    pub pending: AtomicU64,
    /// Internal work waiting: closes, retries, follow-ups.
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub timed_out: AtomicU64,
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub open_grants: AtomicU64,
    pub reports_dropped: AtomicU64,
    pub journal_errors: AtomicU64,
    /// Set when the scheduler thread ends, however it ends.
    pub stopped: std::sync::atomic::AtomicBool,
    /// Turns of the scheduler thread's loop: it turns at least every [`HEARTBEAT`].
    pub beats: AtomicU64,
}

/// The longest the scheduler thread waits without turning its loop, so that a
/// watchdog can tell a thread that waits from one that is stuck ([`ExecutorHandle::beats`]).
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// The executor's counters at one moment, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations waiting to start (knocks admitted, closes, retries).
    pub queued: u64,
    pub running: u64,
    /// Knocks refused (queue full, shutting down, expired while waiting).
    pub refused: u64,
    /// Operations given up after their last try.
    pub failed: u64,
    /// Tries repeated after a failure.
    pub retried: u64,
    /// Commands killed, and backend calls given up on, at `command_timeout`.
    pub timed_out: u64,
    pub opened: u64,
    pub closed: u64,
    /// Grants open now (as far as the executor knows).
    pub open_grants: u64,
    /// `Refused` and `Operation` reports dropped because the log was behind.
    pub reports_dropped: u64,
    /// Journal records that could not be queued.
    pub journal_errors: u64,
    /// Whether the scheduler thread still runs (it stops only at shutdown, or by a panic).
    pub alive: bool,
}

impl Counters {
    fn stats(&self) -> Stats {
        Stats {
            queued: self.pending.load(Relaxed) + self.waiting.load(Relaxed),
            running: self.running.load(Relaxed),
            refused: self.refused.load(Relaxed),
            failed: self.failed.load(Relaxed),
            retried: self.retried.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            opened: self.opened.load(Relaxed),
            closed: self.closed.load(Relaxed),
            open_grants: self.open_grants.load(Relaxed),
            reports_dropped: self.reports_dropped.load(Relaxed),
            journal_errors: self.journal_errors.load(Relaxed),
            alive: !self.stopped.load(Relaxed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("firewall executor: invalid configuration: {0}")]
    Config(String),
    #[error("firewall executor: {0}")]
    Journal(#[from] JournalError),
    #[error("firewall executor: cannot start its {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Finds a backend by the name its journal entries carry (at start).
pub type BackendResolver<'a> = &'a dyn Fn(&str) -> Option<Arc<dyn Backend>>;

enum Msg {
    Open(GrantRequest),
    Done { id: u64, result: JobResult },
    Shutdown,
}

/// Sends a report without ever waiting (capture threads, `Operation`s).
type Offer = Arc<dyn Fn(Report) + Send + Sync>;

/// The executor. Dropping it without [`Executor::shutdown`] shuts down the same way.
pub struct Executor {
    handle: ExecutorHandle,
    scheduler: Option<JoinHandle<()>>,
    journal: Option<JoinHandle<()>>,
}

impl Executor {
    /// Reads the journal in `config.state_dir` (if any), closes the grants in it whose
    /// time has passed and re-arms the others (backends found by name with
    /// `backends`), then starts the threads. Reports go to `reports`, any channel whose
    /// items are made from a [`Report`] (so the daemon merges them into its log queue).
    pub fn start<T: From<Report> + Send + 'static>(
        config: ExecutorConfig,
        runner: impl CommandRunner,
        backends: BackendResolver<'_>,
        reports: Sender<T>,
    ) -> Result<Executor, ExecutorError> {
        validate(&config)?;
        let counters = Arc::new(Counters::default());
        let offer: Offer = {
            let (tx, counters) = (reports.clone(), counters.clone());
            Arc::new(move |r: Report| {
                if tx.try_send(r.into()).is_err() {
                    counters.reports_dropped.fetch_add(1, Relaxed);
                }
            })
        };
        // The journal first: what it holds decides what the scheduler starts with.
        let mut recovered = Vec::new();
        let mut journal_tx = None;
        let mut journal_thread = None;
        if let Some(dir) = &config.state_dir {
            let (journal, replay) = Journal::open(dir)?;
            if replay.skipped > 0 {
                let error = format!(
                    "{}: skipped {} torn or damaged record(s)",
                    journal.path().display(),
                    replay.skipped
                );
                let _ = reports.send(Report::JournalFailed { error }.into());
            }
            for entry in replay.entries {
                let backend = match &entry.close {
                    journal::CloseBy::Native { backend, .. } => backends(backend),
                    journal::CloseBy::Command(_) => None,
                };
                recovered.push(Recovered { entry, backend });
            }
            let (tx, rx) = bounded(config.queue.max(64));
            let (offer, counters) = (offer.clone(), counters.clone());
            let failed = move |error: String| {
                counters.journal_errors.fetch_add(1, Relaxed);
                offer(Report::JournalFailed { error });
            };
            journal_thread = Some(
                std::thread::Builder::new()
                    .name("sesame-journal".into())
                    .spawn(move || journal::writer_loop(journal, rx, failed))
                    .map_err(|source| ExecutorError::Thread { thread: "journal", source })?,
            );
            journal_tx = Some(tx);
        }
        let limits = Limits {
            rate: config.rate,
            burst: config.burst,
            concurrency: config.concurrency,
            command_timeout: config.command_timeout,
            close_on_exit: config.close_on_exit,
        };
        let scheduler = Scheduler::new(limits, counters.clone(), Now::real(), recovered);
        // Knocks (at most `queue`), results (one per operation: at most `concurrency`
        // holding a slot plus as many stuck) and the shutdown word all fit.
        let (tx, rx) = bounded(config.queue + 2 * config.concurrency + 8);
        let pool = Pool::new(runner, tx.clone(), journal_tx, &config, counters.clone());
        let looper =
            Looper { scheduler, rx, pool, reports, offer: offer.clone(), counters: counters.clone() };
        let scheduler = std::thread::Builder::new()
            .name("sesame-exec".into())
            .spawn(move || looper.run())
            .map_err(|source| ExecutorError::Thread { thread: "scheduler", source })?;
        let handle = ExecutorHandle { tx, counters, offer, queue: config.queue as u64 };
        Ok(Executor { handle, scheduler: Some(scheduler), journal: journal_thread })
    }

    /// Hands a successful knock over; see [`ExecutorHandle::open`].
    pub fn open(&self, request: GrantRequest) -> Result<(), Refusal> {
        self.handle.open(request)
    }

    /// A cloneable handle for other threads (one per capture worker).
    pub fn handle(&self) -> ExecutorHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Stops taking knocks, drops those not started, waits for what runs, then (with
    /// `close_on_exit`) closes every open grant; waits for all of it and for the
    /// journal. A backend call that has not returned after `command_timeout` is left
    /// behind.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.scheduler.take() {
            let _ = self.handle.tx.send(Msg::Shutdown);
            let _ = t.join();
        }
        if let Some(t) = self.journal.take() {
            // The scheduler thread held the journal's only sender: the writer finishes
            // what is queued and stops.
            let _ = t.join();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lets a capture worker hand successes to the executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    offer: Offer,
    queue: u64,
}

impl ExecutorHandle {
    /// Hands a successful knock over. Never blocks and never waits for a command: if
    /// `queue` knocks are already pending (or the executor is shutting down) the knock
    /// is refused, reported and counted, and the reason returned.
    pub fn open(&self, request: GrantRequest) -> Result<(), Refusal> {
        let pending = self.counters.pending.fetch_add(1, Relaxed);
        let (request, refusal) = if pending >= self.queue {
            (request, Refusal::QueueFull)
        } else {
            match self.tx.try_send(Msg::Open(request)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(Msg::Open(r))) => (r, Refusal::QueueFull),
                Err(TrySendError::Disconnected(Msg::Open(r))) => (r, Refusal::ShuttingDown),
                Err(_) => unreachable!("the message sent was an Open"),
            }
        };
        self.counters.pending.fetch_sub(1, Relaxed);
        self.counters.refused.fetch_add(1, Relaxed);
        (self.offer)(Report::Refused { ip: request.ip, door_name: request.door_name, reason: refusal });
        Err(refusal)
    }

    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// How many turns the scheduler thread's loop has made: it grows at least every
    /// [`HEARTBEAT`] while the thread runs, and stops growing when it is stuck or gone.
    pub fn beats(&self) -> u64 {
        self.counters.beats.load(Relaxed)
    }
}

fn validate(c: &ExecutorConfig) -> Result<(), ExecutorError> {
    let bad = |what: &str| Err(ExecutorError::Config(what.to_owned()));
    if c.rate == 0 {
        return bad("rate must be at least 1 operation per second");
    }
    if c.burst == 0 {
        return bad("burst must be at least 1");
    }
    if c.concurrency == 0 {
        return bad("concurrency must be at least 1");
    }
    if c.queue == 0 {
        return bad("queue must be at least 1");
    }
    if c.command_timeout.is_zero() {
        return bad("command_timeout must be more than 0");
    }
    Ok(())
}

/// Runs jobs on threads that are kept, not started per operation: nothing is spawned
/// on a grant's path, and the threads (with their allocator arenas) are a fixed set.
/// A job goes to an idle thread, or to a new one when every thread is busy, so a hung
/// operation never holds up another. The scheduler bounds what is in flight (at most
/// `concurrency` holding a slot, and as many stuck past `command_timeout`), and with
/// it the threads: a thread is only added while all others are taken.
struct Pool<R> {
    runner: Arc<R>,
    done: Sender<Msg>,
    journal: Option<Sender<journal::Write>>,
    timeout: Duration,
    counters: Arc<Counters>,
    /// Jobs for the threads: never more than the threads not yet idle, so bounded by
    /// what the scheduler keeps in flight; full means that bound broke (a bug), and
    /// the job fails as if no thread could start.
    jobs: Sender<Started>,
    jobs_rx: Receiver<Started>,
    /// Threads waiting for a job and not yet promised one.
    idle: Arc<AtomicUsize>,
    threads: usize,
}

/// A job whose journal record (if any) is on its way.
struct Started {
    id: u64,
    task: Task,
    ack: Option<Receiver<Result<(), String>>>,
    /// The backend ends the grant by itself: run it while the record is written.
    early: bool,
}

impl<R: CommandRunner> Pool<R> {
    fn new(
        runner: R,
        done: Sender<Msg>,
        journal: Option<Sender<journal::Write>>,
        config: &ExecutorConfig,
        counters: Arc<Counters>,
    ) -> Pool<R> {
        let (jobs, jobs_rx) = bounded(2 * config.concurrency + 2);
        Pool {
            runner: Arc::new(runner),
            done,
            journal,
            timeout: config.command_timeout,
            counters,
            jobs,
            jobs_rx,
            idle: Arc::new(AtomicUsize::new(0)),
            threads: 0,
        }
    }

    /// Starts `job`; `Err` carries its result if it could not start.
    fn run(&mut self, job: Job) -> Result<(), (u64, JobResult)> {
        let Job { id, task, journal } = job;
        // Queue the journal record here, in the order the scheduler asked: a later
        // record for the same grant (its close) is queued only after this one.
        let ack = match (journal, &self.journal) {
            (Some(record), Some(tx)) => {
                let (ack_tx, ack_rx) = bounded(1);
                match tx.try_send(journal::Write { record, ack: Some(ack_tx) }) {
                    Ok(()) => Some(ack_rx),
                    Err(_) => {
                        self.counters.journal_errors.fetch_add(1, Relaxed);
                        return Err((id, JobResult::JournalFailed("the journal queue is full".into())));
                    }
                }
            }
            _ => None,
        };
        let early = matches!(&task, Task::Open(b, _) if b.expires_itself());
        // Promise the job to an idle thread, or start one.
        if self.idle.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_err() {
            self.spawn().map_err(|e| (id, JobResult::SpawnFailed(format!("cannot start a thread: {e}"))))?;
        }
        self.jobs
            .try_send(Started { id, task, ack, early })
            .map_err(|_| (id, JobResult::SpawnFailed("every operation thread is taken".into())))
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let (runner, done, timeout) = (self.runner.clone(), self.done.clone(), self.timeout);
        let (jobs, idle) = (self.jobs_rx.clone(), self.idle.clone());
        std::thread::Builder::new().name(format!("sesame-op{}", self.threads)).spawn(move || {
            // Ends when the pool is gone (the scheduler thread ended).
            while let Ok(job) = jobs.recv() {
                let result = job.perform(&*runner, timeout);
                // Idle before the scheduler hears of it, so the job it starts next
                // finds this thread instead of starting another.
                idle.fetch_add(1, Relaxed);
                if done.send(Msg::Done { id: job.id, result }).is_err() {
                    return;
                }
            }
        })?;
        self.threads += 1;
        Ok(())
    }
}

impl Started {
    fn perform(&self, runner: &dyn CommandRunner, timeout: Duration) -> JobResult {
        let journaled = || match self.ack.as_ref().map(|a| a.recv_timeout(timeout)) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(JobResult::JournalFailed(e)),
            Some(Err(_)) => {
                Err(JobResult::JournalFailed(format!("no answer from the journal in {timeout:?}")))
            }
        };
        if self.early {
            let result = perform(runner, &self.task, timeout);
            journaled().err().unwrap_or(result)
        } else {
            match journaled() {
                Ok(()) => perform(runner, &self.task, timeout),
                Err(failed) => failed,
            }
        }
    }
}

fn perform(runner: &dyn CommandRunner, task: &Task, timeout: Duration) -> JobResult {
    match task {
        Task::Command(command) => match runner.run(command, timeout) {
            Ok(outcome) => JobResult::Command(outcome),
            Err(e) => JobResult::SpawnFailed(e.to_string()),
        },
        Task::Open(backend, access) => match backend.open(access) {
            Ok(()) => JobResult::Backend,
            Err(e) => JobResult::BackendFailed(e.to_string()),
        },
        Task::Close(backend, access) => match backend.close(access) {
            Ok(()) => JobResult::Backend,
            Err(e) => JobResult::BackendFailed(e.to_string()),
        },
    }
}

/// The scheduler thread.
struct Looper<R, T> {
    scheduler: Scheduler,
    rx: Receiver<Msg>,
    pool: Pool<R>,
    reports: Sender<T>,
    offer: Offer,
    counters: Arc<Counters>,
}

impl<R: CommandRunner, T: From<Report> + Send + 'static> Looper<R, T> {
    fn run(mut self) {
        /// Marks the executor stopped when the thread ends, also by a panic.
        struct Stopped(Arc<Counters>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.stopped.store(true, Relaxed);
            }
        }
        let _stopped = Stopped(self.counters.clone());
        let mut shutting_down = false;
        loop {
            self.counters.beats.fetch_add(1, Relaxed);
            self.scheduler.tick(Now::real());
            self.apply();
            if shutting_down && self.scheduler.finished() {
                return;
            }
            // At least once per HEARTBEAT, even with nothing to do: the turn is the heartbeat.
            let wait = self
                .scheduler
                .next_wake()
                .map_or(HEARTBEAT, |at| at.saturating_duration_since(Instant::now()).min(HEARTBEAT));
            let msg = self.rx.recv_timeout(wait);
            match msg {
                Ok(Msg::Open(req)) => self.scheduler.request(req, Now::real()),
                Ok(Msg::Done { id, result }) => self.scheduler.done(id, result, Now::real()),
                // (Never disconnected: the pool holds a sender.)
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    if !shutting_down {
                        shutting_down = true;
                        self.scheduler.shutdown(Now::real());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.apply();
        }
    }

    /// Carries out what the scheduler asked for.
    fn apply(&mut self) {
        loop {
            let effects = self.scheduler.take_effects();
            if effects.is_empty() {
                return;
            }
            for e in effects {
                match e {
                    Effect::Dispatch(job) => {
                        if let Err((id, result)) = self.pool.run(job) {
                            // Its effects are picked up by the next turn of this loop.
                            self.scheduler.done(id, result, Now::real());
                        }
                    }
                    Effect::Report(r) if r.is_record() => (self.offer)(r),
                    Effect::Report(r) => {
                        let _ = self.reports.send(r.into());
                    }
                    Effect::Journal(record) => self.journal(record),
                }
            }
        }
    }

    fn journal(&self, record: Record) {
        if let Some(tx) = &self.pool.journal {
            if tx.try_send(journal::Write { record, ack: None }).is_err() {
                self.counters.journal_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Access, BackendError, DoorRule, L4};
    use crate::runner::Outcome;
    use crossbeam_channel::unbounded;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    const WAIT: Duration = Duration::from_secs(10);

    /// Records command lines instead of running them; `fail…` fails, `gate…` waits for
    /// the gate to open (or the timeout).
    #[derive(Clone, Default)]
    struct Recorder {
        ran: Arc<Mutex<Vec<String>>>,
        /// The threads that ran them.
        threads: Arc<Mutex<std::collections::BTreeSet<String>>>,
        gate: Option<Receiver<()>>,
        started: Option<Sender<()>>,
    }

    impl CommandRunner for Recorder {
        fn run(&self, command: &str, timeout: Duration) -> std::io::Result<Outcome> {
            self.ran.lock().unwrap().push(command.to_owned());
            let me = std::thread::current();
            let thread = format!("{} {:?}", me.name().unwrap_or("?"), me.id());
            self.threads.lock().unwrap().insert(thread);
            if command.starts_with("gate") {
                if let Some(s) = &self.started {
                    let _ = s.send(());
                }
                if let Some(g) = &self.gate {
                    if g.recv_timeout(timeout).is_err() {
                        return Ok(Outcome::TimedOut);
                    }
                }
            }
            Ok(if command.starts_with("fail") { Outcome::Failed(2) } else { Outcome::Success })
        }
    }

    impl Recorder {
        fn ran(&self) -> Vec<String> {
            self.ran.lock().unwrap().clone()
        }
    }

    fn no_backends(_: &str) -> Option<Arc<dyn Backend>> {
        None
    }

    fn config() -> ExecutorConfig {
        ExecutorConfig { state_dir: None, ..ExecutorConfig::default() }
    }

    fn req(start: &str, stop: Option<&str>, ms: u64) -> GrantRequest {
        GrantRequest {
            door_name: "ssh".into(),
            ip: IP,
            action: Action::Commands { start: Some(start.into()), stop: stop.map(Into::into) },
            timeout: Duration::from_millis(ms),
        }
    }

    /// The next report that is not a record ([`Report::is_record`]).
    fn next(rx: &Receiver<Report>) -> Report {
        loop {
            match rx.recv_timeout(WAIT).expect("a report in time") {
                r if r.is_record() => {}
                r => return r,
            }
        }
    }

    fn wait_for(mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < WAIT, "condition not met in {WAIT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn start_runs_now_and_stop_after_the_timeout() {
        let rec = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(config(), rec.clone(), &no_backends, tx).unwrap();
        ex.open(req("open %IP%", Some("close %IP%"), 300)).unwrap();
        assert_eq!(next(&rx), Report::Running { door_name: "ssh".into(), command: "open 198.18.0.2".into() });
        assert_eq!(next(&rx), Report::Timeout { ip: IP, door_name: "ssh".into() });
        assert_eq!(
            next(&rx),
            Report::Running { door_name: "ssh".into(), command: "close 198.18.0.2".into() }
        );
        wait_for(|| ex.stats().closed == 1);
        let stats = ex.stats();
        ex.shutdown();
        assert_eq!(rec.ran(), ["open 198.18.0.2", "close 198.18.0.2"]);
        assert_eq!(
            (stats.opened, stats.closed, stats.open_grants, stats.queued, stats.running),
            (1, 1, 0, 0, 0)
        );
    }

    #[test]
    fn repeat_knock_extends_and_shutdown_closes() {
        let rec = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(config(), rec.clone(), &no_backends, tx).unwrap();
        ex.open(req("open", Some("close"), 60_000)).unwrap();
        ex.open(req("open", Some("close"), 60_000)).unwrap();
        let reports = [next(&rx), next(&rx)];
        assert!(reports.contains(&Report::Running { door_name: "ssh".into(), command: "open".into() }));
        assert!(reports.iter().any(|r| matches!(r, Report::Extended { secs: 60, .. })), "{reports:?}");
        ex.shutdown();
        let rest: Vec<Report> = rx.try_iter().filter(|r| !r.is_record()).collect();
        assert_eq!(
            rest,
            [
                Report::ClosingOnShutdown { ip: IP, door_name: "ssh".into() },
                Report::Running { door_name: "ssh".into(), command: "close".into() },
            ]
        );
        assert_eq!(rec.ran(), ["open", "close"]);
    }

    #[test]
    fn a_failing_command_is_reported_once_in_knockds_words() {
        let (tx, rx) = unbounded::<Report>();
        let rec = Recorder::default();
        let ex = Executor::start(config(), rec.clone(), &no_backends, tx).unwrap();
        ex.open(req("fail", None, 0)).unwrap();
        wait_for(|| ex.stats().failed == 1);
        let stats = ex.stats();
        ex.shutdown();
        let all: Vec<Report> = rx.try_iter().filter(|r| !r.is_record()).collect();
        assert_eq!(
            all,
            [
                Report::Running { door_name: "ssh".into(), command: "fail".into() },
                Report::Failed { door_name: "ssh".into(), code: 2 },
            ]
        );
        assert_eq!((stats.failed, stats.retried), (1, 0));
        assert_eq!(rec.ran(), ["fail"]);
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_counts() {
        let (gate_tx, gate_rx) = bounded(16);
        let (started_tx, started_rx) = bounded(16);
        let rec = Recorder { gate: Some(gate_rx), started: Some(started_tx), ..Recorder::default() };
        let (tx, rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { queue: 3, concurrency: 1, ..config() };
        let ex = Executor::start(cfg, rec.clone(), &no_backends, tx).unwrap();
        let h = ex.handle();
        let knock = |n: u8| GrantRequest {
            door_name: "d".into(),
            ip: IpAddr::V4(Ipv4Addr::new(198, 18, 1, n)),
            action: Action::Commands { start: Some("gate %IP%".into()), stop: None },
            timeout: Duration::from_secs(1),
        };
        // The first runs (and holds the only slot); three wait; the fifth is refused.
        h.open(knock(1)).unwrap();
        started_rx.recv_timeout(WAIT).unwrap();
        for n in 2..=4 {
            h.open(knock(n)).unwrap();
        }
        let t = Instant::now();
        assert_eq!(h.open(knock(5)), Err(Refusal::QueueFull));
        assert!(t.elapsed() < Duration::from_secs(1), "refusing must not wait");
        let stats = h.stats();
        assert_eq!((stats.refused, stats.queued, stats.running), (1, 3, 1));
        let refused: Vec<Report> = rx.try_iter().filter(|r| matches!(r, Report::Refused { .. })).collect();
        let who = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 5));
        assert_eq!(refused, [Report::Refused { ip: who, door_name: "d".into(), reason: Refusal::QueueFull }]);
        // Once they have run, there is room again.
        for _ in 0..4 {
            gate_tx.send(()).unwrap();
        }
        wait_for(|| h.stats().opened == 4);
        h.open(knock(6)).unwrap();
        gate_tx.send(()).unwrap();
        wait_for(|| h.stats().opened == 5);
        ex.shutdown();
        assert_eq!(h.open(knock(7)), Err(Refusal::ShuttingDown));
    }

    #[test]
    fn operations_run_on_kept_threads_never_more_than_in_flight() {
        let rec = Recorder::default();
        let (tx, _rx) = unbounded::<Report>();
        let ex =
            Executor::start(ExecutorConfig { concurrency: 3, ..config() }, rec.clone(), &no_backends, tx)
                .unwrap();
        for n in 0..60u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 2, n));
            let action = Action::Commands { start: Some("go %IP%".into()), stop: None };
            ex.open(GrantRequest { door_name: "d".into(), ip, action, timeout: Duration::from_secs(1) })
                .unwrap();
        }
        wait_for(|| rec.ran().len() == 60 && ex.stats().running == 0);
        ex.shutdown();
        let threads = rec.threads.lock().unwrap().clone();
        assert!((1..=3).contains(&threads.len()), "{threads:?}");
        assert!(threads.iter().all(|t| t.starts_with("sesame-op")), "{threads:?}");
    }

    /// A backend that records calls; `block` makes `open` wait until told.
    struct Recording {
        calls: Mutex<Vec<String>>,
        block: Mutex<Option<Receiver<()>>>,
    }

    impl Backend for Recording {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn check(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn prepare(&self, _: &[DoorRule]) -> Result<(), BackendError> {
            Ok(())
        }
        fn open(&self, a: &Access) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push(format!("open {} {}", a.door, a.addr));
            let gate = self.block.lock().unwrap().take();
            if let Some(g) = gate {
                let _ = g.recv();
            }
            Ok(())
        }
        fn close(&self, a: &Access) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push(format!("close {} {}", a.door, a.addr));
            Ok(())
        }
        fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError> {
            Ok(Vec::new())
        }
        fn remove(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn a_hung_backend_call_does_not_hold_up_another_door() {
        let (release, gate) = bounded(1);
        let backend = Arc::new(Recording { calls: Mutex::default(), block: Mutex::new(Some(gate)) });
        let (tx, rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { concurrency: 1, command_timeout: Duration::from_millis(300), ..config() };
        let ex = Executor::start(cfg, Recorder::default(), &no_backends, tx).unwrap();
        let ports = vec![Port { port: 22, proto: L4::Tcp }];
        let native = |door: &str, ip| GrantRequest {
            door_name: door.into(),
            ip,
            action: Action::Native { backend: backend.clone(), ports: ports.clone() },
            timeout: Duration::from_secs(60),
        };
        ex.open(native("a", IP)).unwrap();
        wait_for(|| backend.calls.lock().unwrap().len() == 1);
        let t = Instant::now();
        ex.open(native("b", IP2)).unwrap();
        wait_for(|| backend.calls.lock().unwrap().len() == 2);
        let waited = t.elapsed();
        assert!(waited < Duration::from_secs(3), "b waited {waited:?}");
        assert_eq!(ex.stats().timed_out, 1);
        let timed_out: Vec<Report> =
            rx.try_iter().filter(|r| matches!(r, Report::BackendTimedOut { .. })).collect();
        assert_eq!(timed_out.len(), 1, "{timed_out:?}");
        // The hung call returns; shutdown closes both.
        release.send(()).unwrap();
        wait_for(|| ex.stats().opened == 2);
        ex.shutdown();
        let mut calls = backend.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(
            calls,
            ["close a 198.18.0.2", "close b 198.18.0.3", "open a 198.18.0.2", "open b 198.18.0.3"]
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sesame-exec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_crash_leaves_the_journal_for_the_next_start() {
        let dir = temp_dir("crash");
        let snapshot = temp_dir("crash-copy");
        let (tx, _rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { state_dir: Some(dir.clone()), ..config() };
        let first = Recorder::default();
        let ex = Executor::start(cfg.clone(), first.clone(), &no_backends, tx).unwrap();
        let knock = |door: &str, ms| GrantRequest {
            door_name: door.into(),
            ip: IP,
            action: Action::Commands {
                start: Some(format!("open {door}")),
                stop: Some(format!("close {door}")),
            },
            timeout: Duration::from_millis(ms),
        };
        ex.open(knock("short", 500)).unwrap();
        ex.open(knock("long", 60_000)).unwrap();
        wait_for(|| ex.stats().opened == 2);
        let knocked = Instant::now();
        // The crash: the disk as it is now, while the grants are open.
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::copy(dir.join(journal::FILE), snapshot.join(journal::FILE)).unwrap();
        ex.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
        std::thread::sleep(Duration::from_millis(600).saturating_sub(knocked.elapsed()));

        let second = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { state_dir: Some(snapshot.clone()), ..config() };
        let t = Instant::now();
        let ex = Executor::start(cfg.clone(), second.clone(), &no_backends, tx).unwrap();
        wait_for(|| ex.stats().closed == 1);
        assert!(t.elapsed() < Duration::from_secs(1), "expired grant closed after {:?}", t.elapsed());
        assert_eq!(second.ran(), ["close short"], "closed, and nothing opened again");
        let stats = ex.stats();
        assert_eq!((stats.open_grants, stats.opened), (1, 0));
        let rearmed: Vec<Report> = rx.try_iter().filter(|r| matches!(r, Report::Rearmed { .. })).collect();
        assert!(matches!(&rearmed[..], [Report::Rearmed { secs: 59 | 60, .. }]), "{rearmed:?}");
        // A knock on the re-armed grant extends it.
        ex.open(knock("long", 60_000)).unwrap();
        wait_for(|| rx.try_iter().any(|r| matches!(r, Report::Extended { .. })));
        ex.shutdown();
        assert_eq!(second.ran(), ["close short", "close long"]);

        // Everything was closed: a third start finds nothing.
        let third = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(cfg, third.clone(), &no_backends, tx).unwrap();
        assert_eq!(ex.stats().open_grants, 0);
        ex.shutdown();
        assert!(third.ran().is_empty());
        assert_eq!(rx.try_iter().count(), 0);
        std::fs::remove_dir_all(&snapshot).unwrap();
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        let (tx, _rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { rate: 0, ..config() };
        let err = Executor::start(cfg, Recorder::default(), &no_backends, tx).err().unwrap();
        assert_eq!(
            err.to_string(),
            "firewall executor: invalid configuration: rate must be at least 1 operation per second"
        );
    }

    #[test]
    fn a_native_grant_whose_backend_is_unknown_is_kept_for_a_start_that_knows_it() {
        let dir = temp_dir("unknown");
        let backend = Arc::new(Recording { calls: Mutex::default(), block: Mutex::new(None) });
        let known = {
            let b = backend.clone();
            move |name: &str| (name == "fake").then(|| b.clone() as Arc<dyn Backend>)
        };
        let cfg = ExecutorConfig { state_dir: Some(dir.clone()), close_on_exit: false, ..config() };
        let (tx, _rx) = unbounded::<Report>();
        let ex = Executor::start(cfg.clone(), Recorder::default(), &known, tx).unwrap();
        ex.open(GrantRequest {
            door_name: "n".into(),
            ip: IP,
            action: Action::Native {
                backend: backend.clone(),
                ports: vec![Port { port: 22, proto: L4::Tcp }],
            },
            timeout: Duration::from_millis(200),
        })
        .unwrap();
        wait_for(|| ex.stats().opened == 1);
        ex.shutdown();
        std::thread::sleep(Duration::from_millis(300));

        // A start without that backend: reported, left alone, kept.
        let (tx, rx) = unbounded::<Report>();
        let cfg = ExecutorConfig { close_on_exit: true, ..cfg };
        let ex = Executor::start(cfg.clone(), Recorder::default(), &no_backends, tx).unwrap();
        ex.shutdown();
        let unknown: Vec<Report> = rx.try_iter().collect();
        assert_eq!(
            unknown,
            [Report::UnknownBackend { ip: IP, door_name: "n".into(), backend: "fake".into() }]
        );
        assert_eq!(backend.calls.lock().unwrap().len(), 1);

        // A start that has it closes it, with the ports it was opened with.
        let (tx, _rx) = unbounded::<Report>();
        let ex = Executor::start(cfg, Recorder::default(), &known, tx).unwrap();
        wait_for(|| ex.stats().closed == 1);
        ex.shutdown();
        assert_eq!(*backend.calls.lock().unwrap(), ["open n 198.18.0.2", "close n 198.18.0.2"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
