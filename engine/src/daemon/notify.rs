//! systemd's readiness and watchdog protocol (`sd_notify(3)`), with std only: one
//! datagram per state change to `$NOTIFY_SOCKET` (a path, or an abstract socket when
//! it starts with `@`). `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, naming this
//! process) asks for `WATCHDOG=1` at least that often; the supervisor sends it only
//! while every capture worker and the firewall executor show they are turning
//! ([`Health`]), so a stuck thread makes systemd restart the daemon.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where to send notifications, if anywhere, and how often the watchdog wants one.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    pub fn from_env() -> Notifier {
        Self::from_vars(|k| std::env::var(k).ok(), std::process::id())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>, pid: u32) -> Notifier {
        let target = var("NOTIFY_SOCKET").filter(|s| !s.is_empty()).map(|s| match s.strip_prefix('@') {
            Some(name) => Target::Abstract(name.as_bytes().to_vec()),
            None => Target::Path(PathBuf::from(s)),
        });
        let for_me = var("WATCHDOG_PID").is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_me && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Whether anything listens (`NOTIFY_SOCKET` was set).
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd asked for, if it asked.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=VALUE`s); errors are returned, not fatal.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        let addr = match target {
            Target::Path(p) => SocketAddr::from_pathname(p)?,
            Target::Abstract(name) => SocketAddr::from_abstract_name(name)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    }

    /// `RELOADING=1`: with `Type=notify` (not `notify-reload`) systemd needs no
    /// `MONOTONIC_USEC` with it.
    pub fn reloading(&self) -> std::io::Result<()> {
        self.notify("RELOADING=1")
    }
}

/// Whether every thread the watchdog vouches for has turned its loop recently: each
/// publishes a counter that grows at least every few hundred milliseconds while it
/// runs; one that has not grown for `stale` is stuck (or stopped).
pub(crate) struct Health {
    stale: Duration,
    /// Per watched thread: the counter last seen and when it last changed.
    seen: Vec<(u64, Instant)>,
}

impl Health {
    pub(crate) fn new(stale: Duration) -> Health {
        Health { stale, seen: Vec::new() }
    }

    /// Takes the counters as they are now (in a fixed order); true when all of them
    /// changed within `stale`.
    pub(crate) fn check(&mut self, beats: impl Iterator<Item = u64>, now: Instant) -> bool {
        let mut healthy = true;
        let mut n = 0;
        for (i, b) in beats.enumerate() {
            n = i + 1;
            match self.seen.get_mut(i) {
                Some((last, at)) if *last == b => healthy &= now.saturating_duration_since(*at) < self.stale,
                Some(entry) => *entry = (b, now),
                None => self.seen.push((b, now)),
            }
        }
        self.seen.truncate(n);
        healthy
    }
}

/// When the watchdog is pet: every half of its timeout (what sd_watchdog_enabled(3)
/// advises), and only while the threads are healthy.
pub(crate) struct Watchdog {
    every: Duration,
    last: Option<Instant>,
    pub(crate) health: Health,
    /// Whether the last look found a thread stuck (said once per episode).
    pub(crate) stuck: bool,
}

impl Watchdog {
    pub(crate) fn new(timeout: Duration) -> Watchdog {
        let every = timeout / 2;
        // A thread counts as stuck when it has not turned for half the timeout (at
        // least 1.5 s: they turn every 250-500 ms, and a loaded machine delays them):
        // petting stops, and systemd acts one timeout after the last pet.
        let stale = every.max(Duration::from_millis(1500));
        Watchdog { every, last: None, health: Health::new(stale), stuck: false }
    }

    /// Whether to send `WATCHDOG=1` now; `healthy` is this look's [`Health::check`].
    pub(crate) fn due(&mut self, healthy: bool, now: Instant) -> bool {
        if !healthy || self.last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(v: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| v.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn reads_the_environment_as_systemd_sets_it() {
        let n = Notifier::from_vars(vars(&[]), 7);
        assert!(!n.enabled() && n.watchdog().is_none());
        n.notify("READY=1").unwrap();
        let n = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", "/run/x"), ("WATCHDOG_USEC", "3000000")]), 7);
        assert!(n.enabled());
        assert_eq!(n.watchdog(), Some(Duration::from_secs(3)));
        let n = Notifier::from_vars(
            vars(&[("NOTIFY_SOCKET", "@abc"), ("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "8")]),
            7,
        );
        assert!(matches!(n.target, Some(Target::Abstract(ref a)) if a == b"abc"));
        assert_eq!(n.watchdog(), None, "the watchdog is for another process");
        let n = Notifier::from_vars(vars(&[("WATCHDOG_USEC", "3000000")]), 7);
        assert_eq!(n.watchdog(), None, "nowhere to send it");
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("sesame-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", path.to_str().unwrap())]), 1);
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("sesame-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", &format!("@{name}"))]), 1);
        n.reloading().unwrap();
        let len = listener.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..len]).unwrap().starts_with("RELOADING=1"));
    }

    #[test]
    fn a_thread_that_stops_turning_is_unhealthy_after_stale() {
        let t0 = Instant::now();
        let s = Duration::from_secs(2);
        let mut h = Health::new(s);
        assert!(h.check([1, 1].into_iter(), t0));
        assert!(h.check([2, 1].into_iter(), t0 + Duration::from_secs(1)));
        assert!(
            !h.check([3, 1].into_iter(), t0 + Duration::from_secs(2)),
            "the second has not turned for 2 s"
        );
        assert!(h.check([4, 2].into_iter(), t0 + Duration::from_secs(3)), "it turned again");
    }

    #[test]
    fn pets_every_half_timeout_while_healthy() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_secs(4));
        assert!(w.due(true, t0));
        assert!(!w.due(true, t0 + Duration::from_secs(1)));
        assert!(w.due(true, t0 + Duration::from_secs(2)));
        assert!(!w.due(false, t0 + Duration::from_secs(5)));
        assert!(w.due(true, t0 + Duration::from_secs(5)));
    }
}
