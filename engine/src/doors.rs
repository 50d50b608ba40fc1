//! The door table every worker matches against, and door identities that outlive a
//! reload.
//!
//! A door's position in the config file is only its place in one [`Doors`] table
//! ([`DoorId`], what the attempt table stores). Anything that outlives a reload
//! (events on their way to the log, grants, their stop commands) names the door by
//! its [`DoorKey`]: its name, interned so it is a `Copy` value on the packet path.
//! So a reload that reorders, adds, renames or removes doors can never make one
//! door's event or grant look like another's.

use crate::config::onetime::{OneTimeFile, OneTimeLine};
use crate::config::{BackendKind, Config, ConfigError, Door, Step, TcpFlagRule};
use crate::rotating::{ClaimStore, Live};
use sesame_capture::filter::{FilterSpec, Program};
use sesame_capture::{CaptureError, Knock, Link, Proto};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

/// A door's place in one [`Doors`] table. Valid only with that table.
pub type DoorId = u16;

// Every door of a config that parsed has an id.
const _: () = assert!(crate::config::MAX_DOORS <= DoorId::MAX as usize);

/// A door's identity: its name (and, for a name that several sections share, as
/// knockd allows, which of them it is). Equal keys are the same door across reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DoorKey(u32);

/// Every identity the process has seen: door names are few and reloads rare, so the
/// interner only ever holds what the operator wrote.
#[derive(Default)]
struct Interner {
    keys: HashMap<(Arc<str>, u32), DoorKey>,
    names: Vec<Arc<str>>,
}

fn interner() -> &'static Mutex<Interner> {
    static NAMES: OnceLock<Mutex<Interner>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

impl DoorKey {
    /// The identity of the `nth` (from 0) door called `name` in a config.
    pub fn of(name: &str, nth: u32) -> DoorKey {
        let mut i = interner().lock().unwrap_or_else(|p| p.into_inner());
        let name: Arc<str> = Arc::from(name);
        if let Some(&key) = i.keys.get(&(name.clone(), nth)) {
            return key;
        }
        let key = DoorKey(i.names.len() as u32);
        i.names.push(name.clone());
        i.keys.insert((name, nth), key);
        key
    }

    /// The door's name, as log lines show it.
    pub fn name(self) -> Arc<str> {
        let i = interner().lock().unwrap_or_else(|p| p.into_inner());
        i.names.get(self.0 as usize).cloned().unwrap_or_else(|| Arc::from("?"))
    }
}

/// The identities of a config's doors, in file order.
pub fn keys(config: &Config) -> Vec<DoorKey> {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    config
        .doors
        .iter()
        .map(|d| {
            let nth = seen.entry(d.name.as_str()).or_default();
            let key = DoorKey::of(&d.name, *nth);
            *nth += 1;
            key
        })
        .collect()
}

/// A one-time door's file and current line, shared by all workers.
#[derive(Debug)]
pub(crate) struct OneTime {
    /// Bumped each time the current sequence changes.
    pub(crate) generation: AtomicU64,
    pub(crate) state: Mutex<OneTimeState>,
}

#[derive(Debug)]
pub(crate) struct OneTimeState {
    pub(crate) file: OneTimeFile,
    /// `None` once the door is disabled.
    pub(crate) line: Option<OneTimeLine>,
}

/// The doors of one configuration, shared by every worker's matcher.
#[derive(Debug)]
pub struct Doors {
    /// The configured doors in file order, then one more for each rotating door: its
    /// previous step's sequence (see [`crate::rotating`]).
    pub(crate) initial: Vec<DoorState>,
    pub(crate) one_time: Vec<Option<OneTime>>,
    /// By place in `initial`: a rotating door's secret and used steps (its
    /// previous-step copy shares them).
    pub(crate) rotating: Vec<Option<Arc<Live>>>,
    /// By place in `initial`: a rotating door's previous-step copy.
    pub(crate) previous: Vec<Option<DoorId>>,
    /// The doors as configured (commands, timeouts), in the same order.
    config: Vec<Door>,
    /// Each door's firewall backend, `[firewall] backend` applied.
    backends: Vec<Option<BackendKind>>,
}

impl Doors {
    /// Compiles the config's doors, reading the one-time-sequence files; rotating doors
    /// start at the time step of the clock.
    pub fn new(config: &Config) -> Result<Arc<Doors>, ConfigError> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Doors::new_at(config, now)
    }

    /// Compiles the config's doors with rotating doors at the time step of `now`
    /// (seconds since the epoch).
    pub fn new_at(config: &Config, now: u64) -> Result<Arc<Doors>, ConfigError> {
        // The parsers refuse this already; a `Config` built in code is refused here.
        crate::config::check_door_count(&config.source, &config.doors)?;
        // A rotating door takes a second id, for its previous step's copy.
        let rotating_doors = config.doors.iter().filter(|d| d.rotating.is_some()).count();
        if config.doors.len() + rotating_doors > usize::from(DoorId::MAX) {
            let last = config.doors.iter().rev().find(|d| d.rotating.is_some()).expect("a rotating door");
            return Err(ConfigError {
                file: config.source.clone(),
                line: last.lines.door,
                problem: crate::config::Problem::TooManyDoors(last.name.clone()),
            });
        }
        let mut initial = Vec::new();
        let mut one_time = Vec::new();
        let mut rotating = Vec::new();
        for (door, key) in config.doors.iter().zip(keys(config)) {
            let (state, ot) = DoorState::from_door(door, key)?;
            initial.push(state);
            one_time.push(ot);
            rotating.push(door.rotating.as_ref().map(|r| Arc::new(Live::new(r.secret.clone(), r.params))));
        }
        let mut previous = vec![None; initial.len()];
        for id in 0..config.doors.len() {
            let Some(live) = rotating[id].clone() else { continue };
            let step = live.params.step_at(now);
            let mut prev = initial[id].clone();
            initial[id].rotate_to(&live, step, false);
            prev.rotate_to(&live, step.saturating_sub(1), true);
            previous[id] = Some(initial.len() as DoorId);
            initial.push(prev);
            one_time.push(None);
            rotating.push(Some(live));
            previous.push(None);
        }
        let backends = config.doors.iter().map(|d| d.backend_in(&config.firewall)).collect();
        Ok(Arc::new(Doors { initial, one_time, rotating, previous, config: config.doors.clone(), backends }))
    }

    /// Carries the used steps of rotating doors over from `old` (a reload) where the door
    /// derives the same sequences: a reload must not make a used sequence usable again.
    pub fn carry_over(&self, old: &Doors) {
        for (id, live) in self.rotating.iter().enumerate() {
            let Some(live) = live else { continue };
            let key = self.initial[id].key;
            let same = old.initial.iter().zip(&old.rotating).find_map(|(d, r)| {
                r.as_ref().filter(|r| d.key == key && r.secret == live.secret && r.params == live.params)
            });
            if let Some(same) = same {
                live.set_used(same.used());
            }
        }
    }

    /// Has every rotating door record its used steps in `store` too, so that a restart
    /// keeps them.
    pub(crate) fn persist_claims(&self, store: &Arc<dyn ClaimStore>) {
        for (d, live) in self.initial.iter().zip(&self.rotating) {
            if let Some(live) = live {
                live.persist_in(store.clone(), &d.key.name());
            }
        }
    }

    /// Doors that are disabled from the start (one-time files with no sequence left).
    pub fn disabled(&self) -> impl Iterator<Item = DoorKey> + '_ {
        self.initial.iter().filter(|d| !d.enabled && d.spa_port.is_none()).map(|d| d.key)
    }

    /// The configured door with identity `key`, and the backend its grants go through.
    pub fn get(&self, key: DoorKey) -> Option<(&Door, Option<BackendKind>)> {
        self.initial.iter().position(|d| d.key == key).map(|i| (&self.config[i], self.backends[i]))
    }

    /// The SPA doors: key, door and its SPA settings.
    pub(crate) fn spa(
        &self,
    ) -> impl Iterator<Item = (DoorKey, &Door, &crate::config::spa_door::SpaDoor)> + '_ {
        self.initial.iter().zip(&self.config).filter_map(|(s, d)| d.spa.as_ref().map(|spa| (s.key, d, spa)))
    }

    /// The UDP ports SPA doors listen on.
    pub(crate) fn spa_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.spa().map(|(_, _, s)| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    pub fn len(&self) -> usize {
        self.initial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.initial.is_empty()
    }

    /// The kernel filter for these doors as configured, on an interface with
    /// addresses `local`.
    pub fn filter_spec(&self, local: &[IpAddr], ipv6: bool) -> FilterSpec {
        crate::filter_spec::spec(&self.initial, local, ipv6)
    }

    /// The kernel filter program for these doors as configured, on an interface with
    /// addresses `local` and link type `link`.
    pub fn filter_program(&self, local: &[IpAddr], ipv6: bool, link: Link) -> Result<Program, CaptureError> {
        crate::filter_spec::program(&self.initial, local, ipv6, link)
    }
}

/// The matching-relevant part of a door, as one worker currently sees it.
#[derive(Clone, Debug)]
pub struct DoorState {
    pub key: DoorKey,
    pub sequence: Vec<Step>,
    pub seq_timeout: u32,
    pub(crate) flags: TcpFlagRule,
    pub(crate) target: Option<IpAddr>,
    pub(crate) enabled: bool,
    /// An SPA door's UDP port, which the kernel filter passes.
    pub(crate) spa_port: Option<u16>,
    /// For one-time doors: the shared generation this copy was made from.
    pub(crate) generation: u64,
    /// For rotating doors: the time step `sequence` belongs to.
    pub(crate) step: Option<u64>,
    /// A rotating door's copy for the previous step.
    pub(crate) previous: bool,
    /// For a rotating door (not its previous-step copy): the next step's sequence, which
    /// the kernel filter already passes so that no knock is lost while a worker has not
    /// yet noticed that the step changed. The matcher does not see these ports.
    pub(crate) lookahead: Vec<Step>,
}

impl DoorState {
    fn from_door(door: &Door, key: DoorKey) -> Result<(DoorState, Option<OneTime>), ConfigError> {
        let (sequence, one_time) = match &door.one_time {
            None => (door.sequence.clone(), None),
            Some(ots) => {
                let file = OneTimeFile::open(&ots.path)?;
                let line = file.current()?;
                let seq = line.as_ref().map(|l| l.sequence.clone()).unwrap_or_default();
                (
                    seq,
                    Some(OneTime {
                        generation: AtomicU64::new(0),
                        state: Mutex::new(OneTimeState { file, line }),
                    }),
                )
            }
        };
        let enabled = !sequence.is_empty();
        let state = DoorState {
            key,
            sequence,
            seq_timeout: door.seq_timeout,
            flags: door.tcp_flags,
            target: door.target,
            enabled: enabled || door.rotating.is_some(),
            spa_port: door.spa.as_ref().map(|s| s.port),
            generation: 0,
            step: None,
            previous: false,
            lookahead: Vec::new(),
        };
        Ok((state, one_time))
    }

    /// Sets a rotating door's sequence (and, unless `previous`, its lookahead) for `step`.
    pub(crate) fn rotate_to(&mut self, live: &Live, step: u64, previous: bool) {
        let tcp = |ports: Vec<u16>| ports.into_iter().map(|port| Step { port, proto: Proto::Tcp }).collect();
        self.sequence = tcp(live.ports(step));
        self.lookahead = if previous { Vec::new() } else { tcp(live.ports(step + 1)) };
        self.step = Some(step);
        self.previous = previous;
    }

    /// Whether a reload may carry this door's attempts over to `next`: the same door,
    /// matching the same way.
    pub(crate) fn same_as(&self, next: &DoorState) -> bool {
        self.key == next.key
            && self.enabled
            && next.enabled
            && self.sequence == next.sequence
            && self.flags == next.flags
            && self.target == next.target
            && self.seq_timeout == next.seq_timeout
            && self.step == next.step
            && self.previous == next.previous
    }

    pub(crate) fn flags_ok(&self, k: &Knock) -> bool {
        k.proto != Proto::Tcp || self.flags.matches(k.tcp_flags)
    }

    pub(crate) fn step_is(&self, i: usize, k: &Knock) -> bool {
        self.sequence.get(i).is_some_and(|s| s.port == k.dst_port && s.proto == k.proto)
    }

    /// Whether a packet to `dst` (which is one of the receiving interface's addresses
    /// iff `local`) addresses this door.
    pub(crate) fn addressed_by(&self, dst: IpAddr, local: bool) -> bool {
        match self.target {
            Some(t) => t == dst,
            None => local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sequence, Options};

    fn config(names: &[&str]) -> Config {
        Config {
            source: "t".into(),
            options: Options::default(),
            doors: names.iter().map(|n| Door::new(*n, parse_sequence("1,2").unwrap())).collect(),
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        }
    }

    #[test]
    fn a_door_is_its_name_whatever_its_position() {
        let a = keys(&config(&["doorA-k", "doorB-k"]));
        let b = keys(&config(&["doorB-k", "new-k", "doorA-k"]));
        assert_eq!(a[0], b[2]);
        assert_eq!(a[1], b[0]);
        assert!(!a.contains(&b[1]));
        assert_eq!(&*a[0].name(), "doorA-k");
        assert_eq!(&*b[1].name(), "new-k");
    }

    #[test]
    fn sections_sharing_a_name_are_told_apart_in_order() {
        let k = keys(&config(&["dup-k", "dup-k", "other-k"]));
        assert_ne!(k[0], k[1]);
        assert_eq!(&*k[1].name(), "dup-k");
        assert_eq!(keys(&config(&["dup-k", "dup-k"])), k[..2]);
    }

    /// Was `assert!(... "too many doors")`: a panic for a config built in code.
    #[test]
    fn more_doors_than_ids_is_an_error() {
        let e = Doors::new(&config(&vec!["many-k"; crate::config::MAX_DOORS + 1])).unwrap_err();
        assert!(e.to_string().contains("one door too many"), "{e}");
        assert!(Doors::new(&config(&vec!["many-k"; crate::config::MAX_DOORS])).is_ok());
    }

    #[test]
    fn doors_are_found_by_identity() {
        let c = config(&["x-k", "y-k"]);
        let doors = Doors::new(&c).unwrap();
        let y = keys(&c)[1];
        assert_eq!(doors.get(y).map(|(d, _)| d.name.as_str()), Some("y-k"));
        assert!(doors.get(DoorKey::of("absent-k", 0)).is_none());
    }
}
