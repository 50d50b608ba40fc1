//! `sesamed`: config, capture workers, firewall executor and log, wired together.
//!
//! Start-up does everything that can fail for a bad config, an impossible setting or
//! a missing interface before anything is logged or run, so a mistake exits non-zero
//! with nothing half-started. Then each worker ([`worker`]) captures on its rings,
//! and the main thread ([`supervisor`]) follows the interfaces, reloads ([`reload`])
//! and reports.

mod firewall;
mod interfaces;
mod limiter;
mod metrics;
mod notify;
mod reload;
mod rings;
mod settings;
mod sizing;
mod spa;
mod supervisor;
mod worker;

pub use firewall::{list as list_grants, remove as remove_firewall, Firewall};
pub use notify::Notifier;
pub use settings::Settings;
pub use sizing::{RingSize, Sizing, SizingError};
pub use worker::{publish_matcher, DoorCounts, OpenCounts};

use crate::config::{Config, DEFAULT_PID_FILE};
use crate::doors::Doors;
use crate::log::{self, Destinations, Log, LogItem, ReportHook};
use crate::matcher::{Event, Matcher};
use anyhow::Context;
use interfaces::{Interfaces, Kernel, State};
use limiter::Limiter;
use rings::RingFactory;
use sesame_capture::ring::Ring;
use sesame_firewall::{Executor, ExecutorConfig, ShellRunner};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use supervisor::{total, Reported, Supervisor, WorkerHandle};
use worker::{now_secs, Alive, Published, Worker, WorkerSink, CONTROL_QUEUE};

/// Everything built and checked before the daemon commits to running: each worker's
/// rings and matcher (with its whole table allocated), so that `starting up` is
/// logged only once the workers can keep up with what the rings already receive.
struct Prepared {
    config: Config,
    interfaces: Interfaces,
    doors: Arc<Doors>,
    sizing: Sizing,
    factory: RingFactory,
    firewall: Arc<Firewall>,
    /// Held for the daemon's life: one sesamed per grant journal.
    state_lock: std::fs::File,
    /// Per worker: its matcher and its ring on each interface (slot, ring).
    workers: Vec<(Matcher, Vec<(usize, Ring)>)>,
    /// The metrics endpoint's socket, when asked for.
    metrics: Option<metrics::Bound>,
}

fn prepare(s: &Settings) -> anyhow::Result<Prepared> {
    let config = Config::load(&s.config)?;
    let names = s.interfaces(&config);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sizing = Sizing::new(&config.tuning, s, names.len(), cores)?;
    let interfaces = Interfaces::open(&names, s.ipv4_only, &Kernel)?;
    let doors = Doors::new(&config)?;
    let mut factory = RingFactory::new(sizing);
    let mut workers: Vec<(Matcher, Vec<(usize, Ring)>)> = Vec::with_capacity(sizing.workers);
    for _ in 0..sizing.workers {
        let mut matcher = Matcher::new(doors.clone(), Vec::new(), sizing.table);
        for slot in 0..interfaces.len() {
            if let State::Present { local, .. } = interfaces.state(slot) {
                matcher.set_local(slot, local.clone());
            }
        }
        workers.push((matcher, Vec::new()));
    }
    for slot in 0..interfaces.len() {
        let State::Present { link, local, .. } = interfaces.state(slot) else { continue };
        let name = interfaces.name(slot);
        let program = doors
            .filter_program(local, !s.ipv4_only, *link)
            .with_context(|| format!("building the kernel packet filter for {name}"))?;
        let rings = factory.open(name, *link, &program)?;
        for ((_, mine), ring) in workers.iter_mut().zip(rings) {
            mine.push((slot, ring));
        }
    }
    let state_lock = lock_state_dir(&s.state_dir(&config))?;
    spa::init(&s.state_dir(&config), worker::now_secs() as i64)?;
    doors.persist_claims(&spa::ReplayClaims::store());
    let metrics = s.metrics_listen.or(config.metrics.listen).map(metrics::bind).transpose()?;
    // Last, as it changes the firewall: sesame's table or chain, ports closed.
    let firewall = Arc::new(Firewall::for_config(&config, None)?);
    Ok(Prepared { config, interfaces, doors, sizing, factory, workers, firewall, state_lock, metrics })
}

/// Creates the grant journal's directory (readable by root only) and takes its lock,
/// so that two daemons never share one journal.
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the state directory {} is in use by another sesamed (its grant journal cannot be shared); \
             give this one its own with --state-dir or [firewall] state_dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(s: Settings) -> anyhow::Result<()> {
    let Prepared {
        config,
        interfaces,
        doors,
        sizing,
        factory,
        workers: prepared,
        firewall,
        state_lock,
        metrics,
    } = prepare(&s)?;

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

    let firewall_series = Arc::new(metrics::FirewallSeries::default());
    let on_report = metrics.as_ref().map(|_| {
        let series = firewall_series.clone();
        ReportHook(Arc::new(move |r: &sesame_firewall::Report| series.on_report(r)))
    });
    let dest = Destinations {
        file: s.log_file.clone().or_else(|| config.options.log_file.clone()),
        syslog: config.options.use_syslog,
        stdout: s.verbose,
        lookup: s.lookup,
        ops: s.ops_log.clone(),
        on_report,
    };
    let (log, log_thread) = log::start(dest)?;

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing signal handlers")?;

    // knockd's line, with every interface; what was sized goes to stderr, so the
    // LogFile stays line for line what knockd writes.
    log.text(format!("starting up, listening on {}", supervisor::describe(&interfaces)));
    eprintln!("sesamed: {}", sizing.describe());
    for door in doors.disabled() {
        log.send(LogItem::Event(Event::DoorDisabled { door }));
    }
    let fw = &config.firewall;
    let executor_config = ExecutorConfig {
        rate: fw.rate,
        burst: fw.burst,
        concurrency: fw.concurrency as usize,
        command_timeout: Duration::from_secs(u64::from(fw.command_timeout)),
        queue: fw.queue as usize,
        state_dir: Some(s.state_dir(&config)),
        close_on_exit: fw.close_on_exit,
    };
    // Starting reconciles with the journal: grants that expired while sesamed was not
    // running close now, live ones close at their time.
    let executor =
        match Executor::start(executor_config, ShellRunner, &|name| firewall.backend(name), log.sender()) {
            Ok(e) => e,
            Err(e) => {
                log.text(format!("error: cannot start the firewall executor: {e}"));
                log.flush();
                return Err(e).context("starting the firewall executor");
            }
        };

    let mut workers = Vec::new();
    for (n, (mut matcher, rings)) in prepared.into_iter().enumerate() {
        // Without the endpoint, nobody reads the per-door counters: none are kept.
        matcher.set_metrics(metrics.is_some());
        let (tx, rx) = crossbeam_channel::bounded(CONTROL_QUEUE);
        let published = Published::new(interfaces.len(), &matcher);
        let sink = WorkerSink {
            doors: doors.clone(),
            firewall: firewall.clone(),
            log: log.clone(),
            executor: executor.handle(),
            limiter: Limiter::new(sizing.log_rate),
            now: now_secs(),
            spa: Default::default(),
        };
        let worker = Worker::new(matcher, sink, rings, rx, published.clone(), s.debug, !s.ipv4_only);
        let stop = term.clone();
        let alive = Alive(published.clone());
        let handle = std::thread::Builder::new()
            .name(format!("sesame-cap{n}"))
            .spawn(move || {
                let _alive = alive;
                worker.run(&stop)
            })
            .context("starting a capture worker")?;
        workers.push(WorkerHandle { handle: Some(handle), control: tx, published });
    }

    let reloads = Arc::new(metrics::Reloads::default());
    let server = match metrics {
        Some(bound) => {
            let names = (0..interfaces.len()).map(|slot| interfaces.name(slot).to_owned()).collect();
            let sources = metrics::Sources::new(
                &workers,
                names,
                executor.handle(),
                log.dropped_counter(),
                firewall_series.clone(),
                reloads.clone(),
            );
            match metrics::Server::start(bound, sources) {
                Ok(server) => {
                    eprintln!("sesamed: metrics: serving /metrics and /healthz on {}", server.addr);
                    Some(server)
                }
                // Bound already: only a thread or poll that cannot be made gets here.
                Err(e) => {
                    log.text(format!("error: {e}; running without the metrics endpoint"));
                    None
                }
            }
        }
        None => None,
    };
    let failing = vec![false; interfaces.len()];
    // Capture is up: every worker runs on its rings.
    if let Err(e) = s.notify.notify("READY=1\nSTATUS=capturing") {
        log.text(format!("warning: cannot notify systemd ({e})"));
    }
    let mut supervisor = Supervisor {
        settings: &s,
        log: &log,
        workers: &workers,
        interfaces,
        factory,
        doors,
        firewall,
        reported: Reported::default(),
        failing,
        reloads,
        executor: executor.handle(),
        watchdog: s.notify.watchdog().map(notify::Watchdog::new),
    };
    let result = supervisor.run(&term, &hup);
    let _ = s.notify.notify("STOPPING=1");
    if let Some(server) = server {
        server.stop();
    }
    let mut reported = std::mem::take(&mut supervisor.reported);
    drop(supervisor);
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
    drop(state_lock);
    result
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
