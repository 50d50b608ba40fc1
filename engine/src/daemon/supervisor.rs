//! The main thread once the daemon runs: it follows the interfaces (rtnetlink
//! notifications, with a slow poll behind them), reloads on SIGHUP, reports what was
//! suppressed or dropped, and returns on SIGTERM/SIGINT or when a worker has died.
//!
//! When an interface disappears it says so once and tells the workers to drop their
//! rings; nothing spins while it is gone. When an interface of that name appears
//! again, it opens new rings (same filter, a new fanout group) and hands one to each
//! worker. Address changes reach the workers' matchers and kernel filters at once.

use super::firewall::Firewall;
use super::interfaces::{Change, Interfaces, Kernel, State};
use super::metrics::Reloads;
use super::notify::Watchdog;
use super::reload::reload;
use super::rings::RingFactory;
use super::worker::{Control, Published, Shared};
use super::Settings;
use crate::doors::Doors;
use crate::log::Log;
use crossbeam_channel::Sender;
use sesame_capture::watch::{Changes, LinkWatcher};
use sesame_firewall::ExecutorHandle;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the supervisor looks at signals and workers.
const TICK: Duration = Duration::from_millis(50);
/// How often the interfaces are compared with the kernel even without a notification
/// (notifications can be lost when the socket overflows, and an interface whose rings
/// could not be opened is tried again).
const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// How often suppressed log lines and kernel drops are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct WorkerHandle {
    pub(crate) handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub(crate) control: Sender<Control>,
    pub(crate) published: Shared,
}

pub(crate) fn total(workers: &[WorkerHandle], field: impl Fn(&Published) -> &AtomicU64) -> u64 {
    workers.iter().map(|w| field(&w.published).load(Ordering::Relaxed)).sum()
}

/// What has been reported so far, so each report covers only what is new.
#[derive(Default)]
pub(crate) struct Reported {
    suppressed: u64,
    drops: u64,
    since: Option<Instant>,
}

impl Reported {
    /// Logs what changed since the last report: suppressed per-packet lines and
    /// packets the kernel dropped.
    pub(crate) fn report(&mut self, workers: &[WorkerHandle], log: &Log) {
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

pub(crate) struct Supervisor<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) log: &'a Log,
    pub(crate) workers: &'a [WorkerHandle],
    pub(crate) interfaces: Interfaces,
    pub(crate) factory: RingFactory,
    /// The door table the workers run now: reopened rings get its filter.
    pub(crate) doors: Arc<Doors>,
    /// The backends the doors use now: a reload prepares them anew.
    pub(crate) firewall: Arc<Firewall>,
    pub(crate) reported: Reported,
    /// Per interface slot: its rings could not be opened at the last try (said once).
    pub(crate) failing: Vec<bool>,
    pub(crate) reloads: Arc<Reloads>,
    /// Its loop's turns are watched, as the workers' are.
    pub(crate) executor: ExecutorHandle,
    /// systemd's watchdog, when it asked for one.
    pub(crate) watchdog: Option<Watchdog>,
}

impl Supervisor<'_> {
    pub(crate) fn run(&mut self, term: &AtomicBool, hup: &AtomicBool) -> anyhow::Result<()> {
        let mut watcher = match LinkWatcher::open() {
            Ok(w) => Some(w),
            Err(e) => {
                self.log.text(format!(
                    "warning: cannot follow interface changes as they happen ({e}); looking every {} seconds",
                    RESYNC_EVERY.as_secs()
                ));
                None
            }
        };
        // Whatever changed between start-up and now is picked up at once.
        let mut resynced: Option<Instant> = None;
        self.reported.since = Some(Instant::now());
        while !term.load(Ordering::Relaxed) {
            let changes = match &mut watcher {
                Some(w) => match w.wait(TICK) {
                    Ok(c) => c,
                    Err(e) => {
                        self.log.text(format!(
                            "warning: lost the interface notifications ({e}); looking every {} seconds",
                            RESYNC_EVERY.as_secs()
                        ));
                        watcher = None;
                        Changes::default()
                    }
                },
                None => {
                    std::thread::sleep(TICK);
                    Changes::default()
                }
            };
            if self.workers.iter().any(|w| w.handle.as_ref().is_some_and(JoinHandle::is_finished)) {
                // A worker stopped on its own: an error it returns is reported by `run`.
                return Ok(());
            }
            if hup.swap(false, Ordering::Relaxed) {
                let _ = self.settings.notify.reloading();
                let reloaded = reload(
                    self.settings,
                    &self.interfaces,
                    &self.doors,
                    &self.firewall,
                    self.workers,
                    self.log,
                );
                // READY=1 also when the running configuration was kept: it still runs.
                let _ = self.settings.notify.notify("READY=1");
                if let Some((doors, firewall)) = reloaded {
                    self.doors = doors;
                    self.firewall = firewall;
                    self.reloads.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.reloads.error.fetch_add(1, Ordering::Relaxed);
                }
            }
            if changes.any() || resynced.is_none_or(|t| t.elapsed() >= RESYNC_EVERY) {
                resynced = Some(Instant::now());
                self.resync();
            }
            if self.reported.since.is_some_and(|t| t.elapsed() >= REPORT_EVERY) {
                self.reported.report(self.workers, self.log);
            }
            self.pet_watchdog();
        }
        Ok(())
    }

    /// Sends `WATCHDOG=1` when it is due and every capture worker and the executor's
    /// scheduler have turned their loops lately: a stuck (or stopped) thread stops the
    /// petting, and systemd restarts the daemon one watchdog timeout later.
    fn pet_watchdog(&mut self) {
        let Some(w) = &mut self.watchdog else { return };
        let beats = self
            .workers
            .iter()
            .map(|w| w.published.beats.load(Ordering::Relaxed))
            .chain(std::iter::once(self.executor.beats()));
        let now = Instant::now();
        let healthy = w.health.check(beats, now);
        if healthy == w.stuck {
            w.stuck = !healthy;
            self.log.text(if healthy {
                "watchdog: every capture worker and the firewall executor turn again".to_owned()
            } else {
                "warning: watchdog: a capture worker or the firewall executor is stuck; not petting the systemd watchdog".to_owned()
            });
        }
        if w.due(healthy, now) {
            let _ = self.settings.notify.notify("WATCHDOG=1");
        }
    }

    fn tell(&self, control: impl Fn() -> Control) {
        for w in self.workers {
            // Fails only for a worker that has stopped, which `run` notices.
            let _ = w.control.send(control());
        }
    }

    /// Brings the workers in line with the interfaces as the kernel has them now.
    fn resync(&mut self) {
        for change in self.interfaces.resync(&Kernel) {
            match change {
                Change::Gone { slot } => {
                    let name = self.interfaces.name(slot);
                    self.log.text(format!("interface {name} disappeared; waiting for it to come back"));
                    self.tell(|| Control::Detach { slot });
                }
                Change::Back { slot, link, local } => {
                    let name = self.interfaces.name(slot).to_owned();
                    let opened = self
                        .doors
                        .filter_program(&local, !self.settings.ipv4_only, link)
                        .map_err(anyhow::Error::from)
                        .and_then(|program| self.factory.open(&name, link, &program));
                    match opened {
                        Ok(rings) => {
                            for (w, ring) in self.workers.iter().zip(rings) {
                                let _ = w.control.send(Control::Attach { slot, ring, local: local.clone() });
                            }
                            self.failing[slot] = false;
                            self.log.text(format!("interface {name} is back; capturing again"));
                        }
                        Err(e) => {
                            // Tried again at the next look; said once until it works.
                            self.interfaces.forget(slot);
                            if !std::mem::replace(&mut self.failing[slot], true) {
                                self.log.text(format!("error: {e:#}; will keep trying"));
                            }
                        }
                    }
                }
                Change::Addresses { slot, local } => {
                    let name = self.interfaces.name(slot);
                    self.log.text(format!("interface {name}: addresses now {}", list(&local)));
                    self.tell(|| Control::Addresses { slot, local: local.clone() });
                }
            }
        }
    }
}

fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// The interfaces and their link types, for the start-up line.
pub(crate) fn describe(interfaces: &Interfaces) -> String {
    (0..interfaces.len())
        .map(|slot| match interfaces.state(slot) {
            State::Present { .. } => interfaces.name(slot).to_owned(),
            State::Gone => format!("{} (gone)", interfaces.name(slot)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
