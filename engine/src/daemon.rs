//! `sesamed`: config, capture workers, firewall executor and log, wired together.
//!
//! Start-up does everything that can fail for a bad config or a missing interface
//! before anything is logged or run, so a mistake exits non-zero with nothing
//! half-started.
//!
//! Each capture worker owns one TPACKET_V3 ring in a PACKET_FANOUT group whose BPF
//! program hashes the source address only, so all packets of one source reach the
//! same worker, and that worker's [`Matcher`] owns the source's attempts outright:
//! no lock and no shared write on the packet path. Successes go to the executor's
//! threads and log lines to the log thread, so neither a slow command nor a slow
//! disk holds up capture. The main thread only waits for signals and reports.

use crate::config::{Config, ConfigError, Problem, Tuning, DEFAULT_INTERFACE, DEFAULT_PID_FILE};
use crate::log::{self, Destinations, Log, LogItem};
use crate::matcher::{Doors, Event, Matcher, Secs, Sink, BATCH};
use anyhow::{bail, Context};
use crossbeam_channel::{Receiver, Sender};
use sesame_capture::filter::Program;
use sesame_capture::ring::{Fanout, FanoutMode, Ring, RingConfig, RingStats};
use sesame_capture::{fanout, iface, parse_frame, Knock};
use sesame_firewall::{Executor, ExecutorHandle, GrantRequest, ShellRunner};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the command line says (knockd's flags, plus sesame's overrides).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub config: PathBuf,
    pub interface: Option<String>,
    pub daemonize: bool,
    pub debug: bool,
    pub lookup: bool,
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub verbose: bool,
    pub ipv4_only: bool,
    /// `--workers`: overrides the config.
    pub workers: Option<u32>,
    /// `--memory-mib`: overrides the config.
    pub memory_mib: Option<u32>,
}

fn now_secs() -> Secs {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Our addresses on `interface` (IPv4 only with `-4`).
fn local_addresses(interface: &str, ipv4_only: bool) -> anyhow::Result<Vec<IpAddr>> {
    let mut addrs = iface::addresses(interface)?;
    if ipv4_only {
        addrs.retain(IpAddr::is_ipv4);
    }
    Ok(addrs)
}

/// The settings that size the capture, after command-line overrides.
#[derive(Clone, Copy, Debug)]
struct Sizing {
    workers: usize,
    /// Tracker bytes per worker.
    budget: usize,
    /// Per-packet log lines per second per worker (0 = unlimited).
    log_rate: u32,
}

impl Sizing {
    /// Splits the memory budget: the rings first (their size is fixed by the kernel
    /// interface), the rest to the workers' attempt tables, so that the whole budget
    /// is what the daemon's data can take.
    fn new(t: &Tuning, s: &Settings) -> anyhow::Result<Sizing> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = s.workers.or(t.workers).map_or(cores, |w| w as usize).max(1);
        let memory = u64::from(s.memory_mib.unwrap_or(t.memory_mib)) << 20;
        let rings = workers as u64 * u64::from(t.ring_block_size) * u64::from(t.ring_block_count);
        // Each worker's table needs at least a little room to be of any use.
        let minimum = rings + workers as u64 * (64 << 10);
        if memory < minimum {
            // A configuration mistake (exit status 2), though it may come from the flags.
            return Err(ConfigError {
                file: s.config.clone(),
                line: 0,
                problem: Problem::Other(format!(
                    "memory budget of {} MiB is too small: {} workers' capture rings take {} MiB; \
                     raise memory_mib (--memory-mib) or lower workers, ring_block_size or ring_block_count",
                    memory >> 20,
                    workers,
                    rings >> 20
                )),
            }
            .into());
        }
        let log_rate = match t.log_lines_per_second {
            0 => 0,
            n => (n / workers as u32).max(1),
        };
        Ok(Sizing { workers, budget: ((memory - rings) / workers as u64) as usize, log_rate })
    }
}

/// Everything built and checked before the daemon commits to running: each worker's
/// ring and matcher (with its whole table allocated), so that `starting up` is
/// logged only once the workers can keep up with what the rings already receive.
struct Prepared {
    config: Arc<Config>,
    interface: String,
    doors: Arc<Doors>,
    sizing: Sizing,
    workers: Vec<(Ring, Matcher)>,
}

fn prepare(s: &Settings) -> anyhow::Result<Prepared> {
    let config = Config::load(&s.config)?;
    let sizing = Sizing::new(&config.tuning, s)?;
    let interface = s
        .interface
        .clone()
        .or_else(|| config.options.interface.clone())
        .unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if !iface::exists(&interface) {
        bail!("could not open {interface}: no such interface");
    }
    let local = local_addresses(&interface, s.ipv4_only)?;
    let doors = Doors::new(&config)?;
    let probe = Matcher::new(doors.clone(), local.clone(), 0);
    let program =
        Program::knock(&probe.filter_spec(!s.ipv4_only)).context("building the kernel packet filter")?;
    // A random key in the fanout hash, so nobody can pick sources that all land on one worker.
    let key = RandomState::new().hash_one(std::process::id()) as u32;
    let group_id = (std::process::id() & 0xffff) as u16;
    let mut workers = Vec::with_capacity(sizing.workers);
    for _ in 0..sizing.workers {
        let ring_config = RingConfig {
            block_size: config.tuning.ring_block_size,
            block_count: config.tuning.ring_block_count,
            fanout: (sizing.workers > 1)
                .then(|| Fanout { group_id, mode: FanoutMode::Cbpf(fanout::source_hash_program(key)) }),
            ..RingConfig::default()
        };
        let ring = Ring::open(&interface, &ring_config, &program)
            .with_context(|| format!("could not open {interface} for capture"))?;
        workers.push((ring, Matcher::new(doors.clone(), local.clone(), sizing.budget)));
    }
    Ok(Prepared { config: Arc::new(config), interface, doors, sizing, workers })
}

/// What a worker is told to do between blocks.
enum Control {
    Reload { config: Arc<Config>, doors: Arc<Doors>, local: Vec<IpAddr> },
}

/// Counters a worker publishes for the main thread; each is written by one worker only.
#[derive(Default)]
struct Published {
    suppressed: AtomicU64,
    packets: AtomicU64,
    kernel_drops: AtomicU64,
    knocks: AtomicU64,
    evictions: AtomicU64,
    rejected: AtomicU64,
    attempts: AtomicU64,
    capacity: AtomicU64,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(s: Settings) -> anyhow::Result<()> {
    let Prepared { config, interface, doors, sizing, workers: prepared } = prepare(&s)?;

    // knockd writes a pid file only when it daemonises.
    let pid_file = s.daemonize.then(|| {
        s.pid_file.clone().or_else(|| config.options.pid_file.clone()).unwrap_or(DEFAULT_PID_FILE.into())
    });
    if let Some(pid_file) = &pid_file {
        daemonize::Daemonize::new()
            .pid_file(pid_file)
            .working_directory("/")
            .umask(0o022)
            .start()
            .with_context(|| format!("could not daemonise (pid file {})", pid_file.display()))?;
    }

    let dest = Destinations {
        file: s.log_file.clone().or_else(|| config.options.log_file.clone()),
        syslog: config.options.use_syslog,
        stdout: s.verbose,
        lookup: s.lookup,
    };
    let (log, log_thread) = log::start(dest, config.clone())?;

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing signal handlers")?;

    log.text(format!("starting up, listening on {interface}"));
    for door in doors.disabled() {
        log.send(LogItem::Event(Event::DoorDisabled { door }));
    }
    let executor = Executor::start(ShellRunner, log.sender());

    let mut workers = Vec::new();
    for (n, (ring, matcher)) in prepared.into_iter().enumerate() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let published = Arc::new(Published::default());
        let worker = Worker {
            matcher,
            sink: WorkerSink {
                config: config.clone(),
                log: log.clone(),
                executor: executor.handle(),
                limiter: Limiter::new(sizing.log_rate),
                now: now_secs(),
            },
            ring,
            control: rx,
            published: published.clone(),
            debug: s.debug,
            ipv6: !s.ipv4_only,
        };
        let stop = term.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sesame-cap{n}"))
            .spawn(move || worker.run(&stop))
            .context("starting a capture worker")?;
        workers.push(WorkerHandle { handle: Some(handle), control: tx, published });
    }

    let mut reported = Reported::default();
    let result = supervise(&s, &workers, &log, &term, &hup, &mut reported);
    term.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in &mut workers {
        match w.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => errors.push(e),
            Some(Err(_)) => errors.push(anyhow::anyhow!("a capture worker panicked")),
            _ => {}
        }
    }
    // Close what is open before saying goodbye: no port stays open behind a stopped daemon.
    executor.shutdown();
    let result = result.and(errors.into_iter().next().map_or(Ok(()), Err));
    if let Err(e) = &result {
        log.text(format!("error: {e:#}"));
    }
    // The last summary, only if something was suppressed or dropped since the last one.
    reported.report(&workers, &log);
    // On stderr, not in the log: the LogFile stays line for line what knockd writes.
    eprintln!("{}", stats_line(&workers, &log));
    log.text("shutting down");
    log.flush();
    drop(log);
    log_thread.join();
    if let Some(pid_file) = pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    result
}

struct WorkerHandle {
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    control: Sender<Control>,
    published: Arc<Published>,
}

fn total(workers: &[WorkerHandle], field: impl Fn(&Published) -> &AtomicU64) -> u64 {
    workers.iter().map(|w| field(&w.published).load(Ordering::Relaxed)).sum()
}

/// The shutdown summary (`sesame-bench` reads it): totals over all workers.
fn stats_line(workers: &[WorkerHandle], log: &Log) -> String {
    format!(
        "stats: packets={} kernel_drops={} knocks={} evictions={} rejected={} log_suppressed={} \
         tracker_used={} tracker_slots={} workers={}",
        total(workers, |p| &p.packets),
        total(workers, |p| &p.kernel_drops),
        total(workers, |p| &p.knocks),
        total(workers, |p| &p.evictions),
        total(workers, |p| &p.rejected),
        total(workers, |p| &p.suppressed) + log.dropped(),
        total(workers, |p| &p.attempts),
        total(workers, |p| &p.capacity),
        workers.len(),
    )
}

/// How often the main thread reports suppressed log lines and kernel drops.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What has been reported so far, so each report covers only what is new.
#[derive(Default)]
struct Reported {
    suppressed: u64,
    drops: u64,
    since: Option<Instant>,
}

impl Reported {
    /// Logs what changed since the last report: suppressed per-packet lines and
    /// packets the kernel dropped.
    fn report(&mut self, workers: &[WorkerHandle], log: &Log) {
        let secs = self.since.map_or(0, |t| t.elapsed().as_secs());
        self.since = Some(Instant::now());
        let suppressed = total(workers, |p| &p.suppressed) + log.dropped();
        if suppressed > self.suppressed {
            log.text(format!(
                "rate limit: suppressed {} per-packet log lines (Stage/sequence timeout) in the last {secs} seconds",
                suppressed - self.suppressed
            ));
            self.suppressed = suppressed;
        }
        let drops = total(workers, |p| &p.kernel_drops);
        if drops > self.drops {
            log.text(format!(
                "warning: the kernel dropped {} packets in the last {secs} seconds: capture is falling behind",
                drops - self.drops
            ));
            self.drops = drops;
        }
    }
}

/// The main thread: reloads on SIGHUP, reports every [`REPORT_EVERY`], returns on
/// SIGTERM/SIGINT or when a worker has died.
fn supervise(
    s: &Settings,
    workers: &[WorkerHandle],
    log: &Log,
    term: &AtomicBool,
    hup: &AtomicBool,
    reported: &mut Reported,
) -> anyhow::Result<()> {
    reported.since = Some(Instant::now());
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if workers.iter().any(|w| w.handle.as_ref().is_some_and(JoinHandle::is_finished)) {
            // A worker stopped on its own: an error it returns is reported by `run`.
            return Ok(());
        }
        if hup.swap(false, Ordering::Relaxed) {
            reload(s, workers, log);
        }
        if reported.since.is_some_and(|t| t.elapsed() >= REPORT_EVERY) {
            reported.report(workers, log);
        }
    }
    Ok(())
}

/// SIGHUP: re-read the config. A bad config is logged and the running one kept.
fn reload(s: &Settings, workers: &[WorkerHandle], log: &Log) {
    log.text(format!("re-reading config file: {}", s.config.display()));
    let attempt = || -> anyhow::Result<(Config, Arc<Doors>, Vec<IpAddr>)> {
        let config = Config::load(&s.config)?;
        let interface = s.interface.clone().or_else(|| config.options.interface.clone());
        let doors = Doors::new(&config)?;
        let local = local_addresses(&interface.unwrap_or_else(|| DEFAULT_INTERFACE.into()), s.ipv4_only)?;
        // Check the filter builds before any worker switches.
        Program::knock(&doors.filter_spec(&local, !s.ipv4_only))?;
        Ok((config, doors, local))
    };
    match attempt() {
        Ok((config, doors, local)) => {
            let config = Arc::new(config);
            // The log learns the new door names before any worker can use them.
            log.send(LogItem::Config(config.clone()));
            for door in doors.disabled() {
                log.send(LogItem::Event(Event::DoorDisabled { door }));
            }
            for w in workers {
                let _ = w.control.send(Control::Reload {
                    config: config.clone(),
                    doors: doors.clone(),
                    local: local.clone(),
                });
            }
        }
        Err(e) => log.text(format!("error: {e:#}; keeping the running configuration")),
    }
}

/// A token bucket for per-packet log lines: `rate` per second, bursts of one second's worth.
struct Limiter {
    rate: u32,
    tokens: u32,
    refilled: Secs,
    suppressed: u64,
}

impl Limiter {
    fn new(rate: u32) -> Limiter {
        Limiter { rate, tokens: rate, refilled: 0, suppressed: 0 }
    }

    fn allow(&mut self, now: Secs) -> bool {
        if self.rate == 0 {
            return true;
        }
        if now != self.refilled {
            self.refilled = now;
            self.tokens = self.rate;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Where a worker's matcher events go.
struct WorkerSink {
    config: Arc<Config>,
    log: Log,
    executor: ExecutorHandle,
    limiter: Limiter,
    /// The current second, set by the worker once per block rather than read per event.
    now: Secs,
}

impl Sink for WorkerSink {
    fn event(&mut self, event: Event) {
        match event {
            Event::Open { src, door } => {
                // Never rate-limited: OPEN SESAME and the commands always reach the log.
                self.log.send(LogItem::Event(event));
                let d = &self.config.doors[usize::from(door)];
                self.executor.open(GrantRequest {
                    door,
                    door_name: d.name.clone(),
                    ip: src,
                    start: d.start_command_for(src).map(str::to_owned),
                    stop: d.stop_command_for(src).map(str::to_owned),
                    timeout: Duration::from_secs(u64::from(d.cmd_timeout)),
                });
            }
            Event::Stage { .. } | Event::Timeout { .. } => {
                if self.limiter.allow(self.now) {
                    self.log.offer(LogItem::Event(event));
                }
            }
            Event::DoorDisabled { .. } | Event::OneTimeError { .. } => self.log.send(LogItem::Event(event)),
        }
    }
}

struct Worker {
    matcher: Matcher,
    sink: WorkerSink,
    ring: Ring,
    control: Receiver<Control>,
    published: Arc<Published>,
    debug: bool,
    ipv6: bool,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut generation = self.matcher.generation();
        let mut stats = RingStats::default();
        let mut batch = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Control::Reload { config, doors, local }) = self.control.try_recv() {
                // Knocks in progress at doors the reload left alone go on (knockd drops
                // them all); the table is reused, not allocated again.
                let names = |c: &Config| c.doors.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
                let (old_names, new_names) = (names(&self.sink.config), names(&config));
                self.matcher.reload(doors, local, &old_names, &new_names);
                self.ring.set_filter(&Program::knock(&self.matcher.filter_spec(self.ipv6))?)?;
                self.sink.config = config;
                generation = self.matcher.generation();
            }
            // Wake at the next second boundary at the latest: sequence timeouts are
            // whole seconds, and this is when they become due.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let wait = Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
                + Duration::from_millis(2);
            if let Some(block) = self.ring.next_block(wait.min(Duration::from_millis(250)))? {
                self.sink.now = now_secs();
                let mut frames = block.packets();
                loop {
                    // Parse a batch, then match it: the matcher overlaps the batch's
                    // table lookups (see `Matcher::on_knocks`).
                    batch.clear();
                    let mut taken = 0;
                    for frame in frames.by_ref().take(BATCH) {
                        taken += 1;
                        match parse_frame(frame.data) {
                            Ok(knock) => {
                                if self.debug {
                                    debug_knock(&knock);
                                }
                                batch.push((knock, Secs::from(frame.ts_sec)));
                            }
                            Err(e) if self.debug => {
                                println!("skipping frame of {} bytes: {e}", frame.data.len())
                            }
                            Err(_) => {}
                        }
                    }
                    if taken == 0 {
                        break;
                    }
                    self.matcher.on_knocks(&batch, &mut self.sink);
                }
            }
            self.sink.now = now_secs();
            self.matcher.expire(self.sink.now, &mut self.sink);
            if self.matcher.generation() != generation {
                // A one-time door moved to its next sequence (or was disabled).
                generation = self.matcher.generation();
                self.ring.set_filter(&Program::knock(&self.matcher.filter_spec(self.ipv6))?)?;
            }
            if let Ok(s) = self.ring.stats() {
                stats = s;
            }
            self.publish(&stats);
        }
        self.publish(&self.ring.stats().unwrap_or(stats));
        Ok(())
    }

    fn publish(&self, ring: &RingStats) {
        let m = self.matcher.stats();
        let p = &self.published;
        p.suppressed.store(self.sink.limiter.suppressed, Ordering::Relaxed);
        p.packets.store(ring.packets, Ordering::Relaxed);
        p.kernel_drops.store(ring.drops, Ordering::Relaxed);
        p.knocks.store(m.knocks, Ordering::Relaxed);
        p.evictions.store(m.tracker.evictions, Ordering::Relaxed);
        p.rejected.store(m.tracker.rejected, Ordering::Relaxed);
        p.attempts.store(self.matcher.in_progress() as u64, Ordering::Relaxed);
        p.capacity.store(self.matcher.tracker().capacity() as u64, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_its_rate_per_second_and_counts_the_rest() {
        let mut l = Limiter::new(3);
        let allowed = (0..10).filter(|_| l.allow(100)).count();
        assert_eq!((allowed, l.suppressed), (3, 7));
        // A new second refills the bucket.
        assert!(l.allow(101));
        assert_eq!((0..10).filter(|_| l.allow(101)).count(), 2);
        assert_eq!(l.suppressed, 15);
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut l = Limiter::new(0);
        assert!((0..10_000).all(|_| l.allow(1)));
        assert_eq!(l.suppressed, 0);
    }

    #[test]
    fn the_memory_budget_pays_for_the_rings_first() {
        let t = Tuning { workers: Some(2), ..Tuning::default() };
        let s = Settings::default();
        let z = Sizing::new(&t, &s).unwrap();
        // 64 MiB less 2 workers x 8 x 1 MiB of ring, split over 2 workers.
        assert_eq!((z.workers, z.budget), (2, 24 << 20));
        assert_eq!(z.log_rate, 100);
        let small = Settings { memory_mib: Some(16), ..Settings::default() };
        assert!(Sizing::new(&t, &small).is_err(), "16 MiB holds the rings but no table");
    }
}
