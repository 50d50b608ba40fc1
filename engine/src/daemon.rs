//! `sesamed`: config, capture ring, matcher, firewall executor and log, wired together.
//!
//! Start-up does everything that can fail for a bad config or a missing interface
//! before anything is opened or logged, so a mistake exits non-zero with nothing
//! half-started. The capture loop runs on the calling thread; commands run on the
//! executor's threads and log lines are written by the log thread, so neither a slow
//! command nor a slow disk ever holds up packet processing.

use crate::config::{Config, DEFAULT_INTERFACE, DEFAULT_PID_FILE};
use crate::log::{self, Destinations, Log, LogItem};
use crate::matcher::{Event, Matcher, Secs};
use anyhow::{bail, Context};
use sesame_capture::filter::Program;
use sesame_capture::ring::{Ring, RingConfig};
use sesame_capture::{iface, parse_frame, Knock};
use sesame_firewall::{Executor, GrantRequest, ShellRunner};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the command line says (knockd's flags).
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
}

/// Everything prepared before the daemon commits to running.
struct Prepared {
    config: Arc<Config>,
    interface: String,
    matcher: Matcher,
    ring: Ring,
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

fn build_matcher(config: &Config, local: Vec<IpAddr>, ipv4_only: bool) -> anyhow::Result<(Matcher, Program)> {
    let matcher = Matcher::new(config, local)?;
    let program =
        Program::knock(&matcher.filter_spec(!ipv4_only)).context("building the kernel packet filter")?;
    Ok((matcher, program))
}

fn prepare(s: &Settings) -> anyhow::Result<Prepared> {
    let config = Config::load(&s.config)?;
    let interface = s
        .interface
        .clone()
        .or_else(|| config.options.interface.clone())
        .unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if !iface::exists(&interface) {
        bail!("could not open {interface}: no such interface");
    }
    let local = local_addresses(&interface, s.ipv4_only)?;
    let (matcher, program) = build_matcher(&config, local, s.ipv4_only)?;
    let ring = Ring::open(&interface, &RingConfig::default(), &program)
        .with_context(|| format!("could not open {interface} for capture"))?;
    Ok(Prepared { config: Arc::new(config), interface, matcher, ring })
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(s: Settings) -> anyhow::Result<()> {
    let Prepared { config, interface, matcher, mut ring } = prepare(&s)?;

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
    for door in matcher.disabled_doors() {
        log.send(LogItem::Event(Event::DoorDisabled { door }));
    }
    let executor = Executor::start(ShellRunner, log.sender());

    let mut worker =
        Worker { config, matcher, log: log.clone(), executor, debug: s.debug, events: Vec::new() };
    let result = worker.capture(&mut ring, &term, &hup, &s);

    // Close what is open before saying goodbye: no port stays open behind a stopped daemon.
    let Worker { executor, .. } = worker;
    executor.shutdown();
    if let Err(e) = &result {
        log.text(format!("error: {e:#}"));
    }
    log.text("shutting down");
    log.flush();
    drop(log);
    log_thread.join();
    if let Some(pid_file) = pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    result
}

struct Worker {
    config: Arc<Config>,
    matcher: Matcher,
    log: Log,
    executor: Executor,
    debug: bool,
    events: Vec<Event>,
}

impl Worker {
    fn capture(
        &mut self,
        ring: &mut Ring,
        term: &AtomicBool,
        hup: &AtomicBool,
        s: &Settings,
    ) -> anyhow::Result<()> {
        let mut generation = self.matcher.generation();
        while !term.load(Ordering::Relaxed) {
            if hup.swap(false, Ordering::Relaxed) {
                self.reload(ring, s);
                generation = self.matcher.generation();
            }
            // Wake at the next second boundary at the latest: sequence timeouts are
            // whole seconds, and this is when they become due.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let wait = Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
                + Duration::from_millis(2);
            if let Some(block) = ring.next_block(wait.min(Duration::from_millis(250)))? {
                for frame in block.packets() {
                    match parse_frame(frame.data) {
                        Ok(knock) => {
                            if self.debug {
                                debug_knock(&knock);
                            }
                            self.matcher.on_knock(&knock, Secs::from(frame.ts_sec), &mut self.events);
                        }
                        Err(e) if self.debug => println!("skipping frame of {} bytes: {e}", frame.data.len()),
                        Err(_) => {}
                    }
                }
            }
            self.matcher.expire(now_secs(), &mut self.events);
            self.dispatch();
            if self.matcher.generation() != generation {
                // A one-time door moved to its next sequence (or was disabled).
                generation = self.matcher.generation();
                ring.set_filter(&Program::knock(&self.matcher.filter_spec(!s.ipv4_only))?)?;
            }
        }
        Ok(())
    }

    /// Sends the matcher's events to the log and successes to the executor.
    fn dispatch(&mut self) {
        for event in self.events.drain(..) {
            match event {
                Event::Open { src, door } => {
                    self.log.send(LogItem::Event(event.clone()));
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
                Event::Stage { .. } | Event::Timeout { .. } => self.log.offer(LogItem::Event(event)),
                Event::DoorDisabled { .. } | Event::OneTimeError { .. } => {
                    self.log.send(LogItem::Event(event))
                }
            }
        }
    }

    /// SIGHUP: re-read the config. A bad config is logged and the running one kept.
    fn reload(&mut self, ring: &Ring, s: &Settings) {
        self.log.text(format!("re-reading config file: {}", s.config.display()));
        let attempt = || -> anyhow::Result<(Config, Matcher, Program)> {
            let config = Config::load(&s.config)?;
            let local = local_addresses(ring.ifname(), s.ipv4_only)?;
            let (matcher, program) = build_matcher(&config, local, s.ipv4_only)?;
            Ok((config, matcher, program))
        };
        match attempt().and_then(|(c, m, p)| ring.set_filter(&p).map(|()| (c, m)).map_err(Into::into)) {
            Ok((config, matcher)) => {
                self.config = Arc::new(config);
                self.matcher = matcher;
                self.log.send(LogItem::Config(self.config.clone()));
                for door in self.matcher.disabled_doors() {
                    self.log.send(LogItem::Event(Event::DoorDisabled { door }));
                }
            }
            Err(e) => self.log.text(format!("error: {e:#}; keeping the running configuration")),
        }
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
