//! The interfaces the daemon listens on, and how they change under it: one that
//! disappears (PPP redial, WireGuard restart, hot-unplug), comes back under the same
//! name, or has its addresses changed (DHCP renew, `ip addr replace`).
//!
//! Each interface keeps its slot (its place in the list) for the daemon's life. The
//! kernel is asked through [`Probe`], so the bookkeeping is tested without root.

use sesame_capture::{iface, CaptureError, Link};
use std::net::IpAddr;

/// What the daemon needs to know about an interface from the kernel.
pub trait Probe {
    /// The interface's index, or `None` if there is no interface of that name.
    fn index(&self, name: &str) -> Option<u32>;
    fn link(&self, name: &str) -> Result<Link, CaptureError>;
    fn addresses(&self, name: &str) -> Vec<IpAddr>;
}

/// The real kernel.
pub struct Kernel;

impl Probe for Kernel {
    fn index(&self, name: &str) -> Option<u32> {
        iface::index(name).ok()
    }

    fn link(&self, name: &str) -> Result<Link, CaptureError> {
        Link::of(name)
    }

    fn addresses(&self, name: &str) -> Vec<IpAddr> {
        iface::addresses(name).unwrap_or_default()
    }
}

/// One interface as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Present { index: u32, link: Link, local: Vec<IpAddr> },
    Gone,
}

/// What changed since the last look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The interface in `slot` is gone: its rings are dead.
    Gone { slot: usize },
    /// An interface of that name is there again (or was replaced by a new one under
    /// the same name): it needs new rings.
    Back { slot: usize, link: Link, local: Vec<IpAddr> },
    /// Same interface, new addresses.
    Addresses { slot: usize, local: Vec<IpAddr> },
}

#[derive(Debug)]
pub struct Interfaces {
    names: Vec<String>,
    states: Vec<State>,
    ipv4_only: bool,
}

impl Interfaces {
    /// Looks up every interface; each must be there at start, or the error names it.
    pub fn open(names: &[String], ipv4_only: bool, probe: &impl Probe) -> anyhow::Result<Interfaces> {
        let mut states = Vec::with_capacity(names.len());
        for name in names {
            let Some(index) = probe.index(name) else {
                anyhow::bail!("could not open {name}: no such interface");
            };
            let link = probe.link(name).map_err(|e| anyhow::anyhow!("could not open {name}: {e}"))?;
            states.push(State::Present { index, link, local: Self::local(probe, name, ipv4_only) });
        }
        Ok(Interfaces { names: names.to_vec(), states, ipv4_only })
    }

    fn local(probe: &impl Probe, name: &str, ipv4_only: bool) -> Vec<IpAddr> {
        let mut local = probe.addresses(name);
        if ipv4_only {
            local.retain(IpAddr::is_ipv4);
        }
        local
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, slot: usize) -> &str {
        &self.names[slot]
    }

    pub fn state(&self, slot: usize) -> &State {
        &self.states[slot]
    }

    #[allow(clippy::len_without_is_empty)] // never empty: there is at least eth0
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Marks the interface in `slot` gone, so the next [`resync`](Self::resync) tries
    /// to open it again (its rings could not be opened).
    pub fn forget(&mut self, slot: usize) {
        self.states[slot] = State::Gone;
    }

    /// Compares every interface with what the kernel says now, records it, and returns
    /// what changed. An interface deleted and re-created since the last look (a new
    /// index) is reported gone, then back.
    pub fn resync(&mut self, probe: &impl Probe) -> Vec<Change> {
        let mut changes = Vec::new();
        for slot in 0..self.names.len() {
            let name = &self.names[slot];
            let now = probe.index(name);
            let was = &self.states[slot];
            match (was, now) {
                (State::Gone, None) => {}
                (State::Present { .. }, None) => {
                    self.states[slot] = State::Gone;
                    changes.push(Change::Gone { slot });
                }
                (State::Present { index, local, .. }, Some(i)) if *index == i => {
                    let fresh = Self::local(probe, name, self.ipv4_only);
                    if fresh != *local {
                        changes.push(Change::Addresses { slot, local: fresh.clone() });
                        if let State::Present { local, .. } = &mut self.states[slot] {
                            *local = fresh;
                        }
                    }
                }
                (was, Some(index)) => {
                    if matches!(was, State::Present { .. }) {
                        changes.push(Change::Gone { slot });
                    }
                    self.states[slot] = State::Gone;
                    // Between its appearance and its first address the link type is
                    // already known; a failure here means it vanished again meanwhile.
                    if let Ok(link) = probe.link(name) {
                        let local = Self::local(probe, name, self.ipv4_only);
                        self.states[slot] = State::Present { index, link, local: local.clone() };
                        changes.push(Change::Back { slot, link, local });
                    }
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A kernel made of a table: name -> (index, addresses).
    #[derive(Default)]
    struct Fake(RefCell<HashMap<String, (u32, Vec<IpAddr>)>>);

    impl Fake {
        fn set(&self, name: &str, index: u32, addrs: &[&str]) {
            let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
            self.0.borrow_mut().insert(name.into(), (index, addrs));
        }
        fn remove(&self, name: &str) {
            self.0.borrow_mut().remove(name);
        }
    }

    impl Probe for Fake {
        fn index(&self, name: &str) -> Option<u32> {
            self.0.borrow().get(name).map(|e| e.0)
        }
        fn link(&self, name: &str) -> Result<Link, CaptureError> {
            match self.index(name) {
                Some(_) if name.starts_with("wg") => Ok(Link::Ip),
                Some(_) => Ok(Link::Ethernet),
                None => Err(CaptureError::NoSuchInterface(name.into())),
            }
        }
        fn addresses(&self, name: &str) -> Vec<IpAddr> {
            self.0.borrow().get(name).map(|e| e.1.clone()).unwrap_or_default()
        }
    }

    fn ips(a: &[&str]) -> Vec<IpAddr> {
        a.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn every_interface_must_be_there_at_start() {
        let k = Fake::default();
        k.set("eth0", 2, &["198.18.0.1"]);
        let e = Interfaces::open(&["eth0".into(), "wg0".into()], false, &k).unwrap_err();
        assert_eq!(e.to_string(), "could not open wg0: no such interface");
        k.set("wg0", 3, &["198.19.0.1", "2001:db8::1"]);
        let i = Interfaces::open(&["eth0".into(), "wg0".into()], true, &k).unwrap();
        assert_eq!(i.state(1), &State::Present { index: 3, link: Link::Ip, local: ips(&["198.19.0.1"]) });
    }

    #[test]
    fn gone_back_and_new_addresses_are_each_reported_once() {
        let k = Fake::default();
        k.set("eth0", 2, &["198.18.0.1"]);
        k.set("wg0", 3, &["198.19.0.1"]);
        let mut i = Interfaces::open(&["eth0".into(), "wg0".into()], false, &k).unwrap();
        assert!(i.resync(&k).is_empty());
        k.remove("wg0");
        assert_eq!(i.resync(&k), vec![Change::Gone { slot: 1 }]);
        assert!(i.resync(&k).is_empty(), "said once");
        k.set("wg0", 9, &[]);
        assert_eq!(i.resync(&k), vec![Change::Back { slot: 1, link: Link::Ip, local: vec![] }]);
        k.set("wg0", 9, &["198.19.0.2"]);
        k.set("eth0", 2, &["198.18.0.1", "198.18.0.7"]);
        assert_eq!(
            i.resync(&k),
            vec![
                Change::Addresses { slot: 0, local: ips(&["198.18.0.1", "198.18.0.7"]) },
                Change::Addresses { slot: 1, local: ips(&["198.19.0.2"]) },
            ]
        );
        assert!(i.resync(&k).is_empty());
    }

    #[test]
    fn an_interface_replaced_between_two_looks_is_gone_then_back() {
        let k = Fake::default();
        k.set("ppp0", 4, &["198.18.0.1"]);
        let mut i = Interfaces::open(&["ppp0".into()], false, &k).unwrap();
        k.set("ppp0", 5, &["198.18.0.9"]);
        assert_eq!(
            i.resync(&k),
            vec![
                Change::Gone { slot: 0 },
                Change::Back { slot: 0, link: Link::Ethernet, local: ips(&["198.18.0.9"]) }
            ]
        );
        // Rings that cannot be opened: forget it, and the next look tries again.
        i.forget(0);
        assert!(matches!(i.resync(&k).as_slice(), [Change::Back { slot: 0, .. }]));
    }
}
