//! Grant bookkeeping: which (door, address) pairs are open and when they close.
//!
//! knockd forks a sleeping child per success, so repeat knocks stack up duplicate
//! rules and nothing can cancel a pending close. Here a grant is one table entry:
//! a repeat knock while it is open moves its deadline instead of running the start
//! command again, and the timer fires each close exactly once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Identifies a grant: the door, by name (its identity, which survives a reload that
/// moves it in the file), and the knocker's address.
pub type GrantKey = (String, IpAddr);

/// What the caller must do after [`GrantTable::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenAction {
    /// Run this (already substituted) start command; the grant closes at `until`.
    Start { command: String, until: Instant },
    /// The grant was already open; it now closes at `until`. Nothing to run.
    Extended { until: Instant },
    /// A door without a stop command: run the start command, keep no grant.
    RunOnce { command: String },
}

/// An open grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub door_name: String,
    pub stop_command: String,
    pub until: Instant,
}

/// A grant whose time is up: its stop command must run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub key: GrantKey,
    pub grant: Grant,
}

#[derive(Debug, Default)]
pub struct GrantTable {
    open: HashMap<GrantKey, Grant>,
}

impl GrantTable {
    pub fn new() -> GrantTable {
        GrantTable::default()
    }

    /// A successful knock at `now`. `start`/`stop` are substituted command lines.
    /// Returns `None` when there is nothing to run (no start command: knockd then runs
    /// no stop command either).
    pub fn open(
        &mut self,
        now: Instant,
        key: GrantKey,
        start: Option<String>,
        stop: Option<String>,
        timeout: Duration,
    ) -> Option<OpenAction> {
        let command = start?;
        let Some(stop_command) = stop else {
            return Some(OpenAction::RunOnce { command });
        };
        let until = now + timeout;
        if let Some(g) = self.open.get_mut(&key) {
            // Never shorten a grant that a later knock is extending.
            g.until = g.until.max(until);
            return Some(OpenAction::Extended { until: g.until });
        }
        let door_name = key.0.clone();
        self.open.insert(key, Grant { door_name, stop_command, until });
        Some(OpenAction::Start { command, until })
    }

    /// The earliest deadline, if any grant is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|g| g.until).min()
    }

    /// Removes and returns every grant due at `now`, earliest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let due: Vec<GrantKey> =
            self.open.iter().filter(|(_, g)| g.until <= now).map(|(k, _)| k.clone()).collect();
        let mut out: Vec<Expired> = due
            .into_iter()
            .filter_map(|key| self.open.remove(&key).map(|grant| Expired { key, grant }))
            .collect();
        out.sort_by_key(|e| e.grant.until);
        out
    }

    /// Removes and returns every open grant (shutdown: close everything now).
    pub fn drain(&mut self) -> Vec<Expired> {
        let mut out: Vec<Expired> = self.open.drain().map(|(key, grant)| Expired { key, grant }).collect();
        out.sort_by_key(|e| e.grant.until);
        out
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn get(&self, key: &GrantKey) -> Option<&Grant> {
        self.open.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));

    fn s(x: &str) -> Option<String> {
        Some(x.to_owned())
    }

    #[test]
    fn start_then_stop_at_the_deadline() {
        let t0 = Instant::now();
        let mut g = GrantTable::new();
        let a = g.open(t0, ("ssh".into(), IP), s("open"), s("close"), Duration::from_secs(30));
        assert_eq!(
            a,
            Some(OpenAction::Start { command: "open".into(), until: t0 + Duration::from_secs(30) })
        );
        assert_eq!(g.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert!(g.expire(t0 + Duration::from_secs(29)).is_empty());
        let due = g.expire(t0 + Duration::from_secs(30));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].grant.stop_command, "close");
        assert!(g.is_empty());
        assert!(g.expire(t0 + Duration::from_secs(99)).is_empty(), "fires once");
    }

    #[test]
    fn repeat_knock_extends_instead_of_starting_again() {
        let t0 = Instant::now();
        let mut g = GrantTable::new();
        g.open(t0, ("ssh".into(), IP), s("open"), s("close"), Duration::from_secs(10));
        let a = g.open(
            t0 + Duration::from_secs(8),
            ("ssh".into(), IP),
            s("open"),
            s("close"),
            Duration::from_secs(10),
        );
        assert_eq!(a, Some(OpenAction::Extended { until: t0 + Duration::from_secs(18) }));
        assert!(g.expire(t0 + Duration::from_secs(10)).is_empty(), "the old deadline no longer closes it");
        assert_eq!(g.expire(t0 + Duration::from_secs(18)).len(), 1);
        // After it closed, a new knock starts again.
        let a = g.open(
            t0 + Duration::from_secs(20),
            ("ssh".into(), IP),
            s("open"),
            s("close"),
            Duration::from_secs(10),
        );
        assert!(matches!(a, Some(OpenAction::Start { .. })));
    }

    #[test]
    fn grants_are_per_door_and_address() {
        let t0 = Instant::now();
        let mut g = GrantTable::new();
        let d = Duration::from_secs(5);
        assert!(matches!(g.open(t0, ("a".into(), IP), s("o"), s("c"), d), Some(OpenAction::Start { .. })));
        assert!(matches!(g.open(t0, ("a".into(), IP2), s("o"), s("c"), d), Some(OpenAction::Start { .. })));
        assert!(matches!(g.open(t0, ("b".into(), IP), s("o"), s("c"), d), Some(OpenAction::Start { .. })));
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn no_stop_command_runs_every_time_without_a_grant() {
        let t0 = Instant::now();
        let mut g = GrantTable::new();
        for _ in 0..2 {
            let a = g.open(t0, ("close".into(), IP), s("iptables -D ..."), None, Duration::from_secs(5));
            assert_eq!(a, Some(OpenAction::RunOnce { command: "iptables -D ...".into() }));
        }
        assert!(g.is_empty());
    }

    #[test]
    fn no_start_command_means_nothing_at_all() {
        let mut g = GrantTable::new();
        assert_eq!(g.open(Instant::now(), ("x".into(), IP), None, s("stop"), Duration::from_secs(5)), None);
        assert!(g.is_empty());
    }

    #[test]
    fn drain_returns_everything_open() {
        let t0 = Instant::now();
        let mut g = GrantTable::new();
        g.open(t0, ("a".into(), IP), s("o"), s("c1"), Duration::from_secs(50));
        g.open(t0, ("a".into(), IP2), s("o"), s("c2"), Duration::from_secs(5));
        let all = g.drain();
        assert_eq!(all.iter().map(|e| e.grant.stop_command.as_str()).collect::<Vec<_>>(), ["c2", "c1"]);
        assert!(g.is_empty());
    }
}
