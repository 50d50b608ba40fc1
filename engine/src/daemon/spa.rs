//! SPA doors on the capture workers: a UDP datagram to an SPA door's port is checked
//! here (cheapest first; nothing allocated before the HMAC passes) and an accepted one
//! becomes a grant like a completed knock. Refusals are counted by reason and logged
//! under the log rate limit. The replay cache is shared by the workers (only packets
//! with a valid HMAC reach its lock) and persisted under `state_dir`.

use super::worker::WorkerSink;
use crate::doors::{DoorKey, Doors};
use crate::log::{LogItem, Message};
use crate::matcher::Event;
use crate::rotating::ClaimStore;
use crate::spa::{self, Grant, Policy, Refusal, ReplayCache};
use sesame_firewall::GrantRequest;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Digests the replay cache holds at most (each for at most its door's window).
pub(crate) const REPLAY_CAPACITY: usize = 65_536;
/// The replay cache's file under `state_dir`.
pub(crate) const REPLAY_FILE: &str = "spa-replay";

/// One worker's SPA counts: plain numbers on the packet path, published with the
/// worker's other counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) refused: [u64; Refusal::ALL.len()],
    pub(crate) accepted: u64,
}

/// The replay cache, shared by the workers: only packets with a valid HMAC reach it.
static REPLAY: OnceLock<Mutex<ReplayCache>> = OnceLock::new();

fn replay() -> &'static Mutex<ReplayCache> {
    REPLAY.get_or_init(|| Mutex::new(ReplayCache::new(REPLAY_CAPACITY)))
}

/// Loads the persisted replay cache; call before the workers start. Done whatever the
/// config, so that an SPA or rotating door added by a reload is persisted too.
pub(crate) fn init(state_dir: &Path, now: i64) -> Result<(), spa::ReplayError> {
    let cache = ReplayCache::open(&state_dir.join(REPLAY_FILE), REPLAY_CAPACITY, now)?;
    *replay().lock().unwrap_or_else(|p| p.into_inner()) = cache;
    Ok(())
}

/// The replay cache as the rotating doors' [`ClaimStore`]: a step's mark is kept in the
/// same file as SPA digests, until its sequence can no longer open, so a sequence used
/// before a restart stays used after it.
#[derive(Debug)]
pub(crate) struct ReplayClaims;

impl ReplayClaims {
    pub(crate) fn store() -> Arc<dyn ClaimStore> {
        Arc::new(ReplayClaims)
    }
}

impl ClaimStore for ReplayClaims {
    fn record(&self, id: [u8; 32], until: u64) -> Result<bool, String> {
        let now = super::worker::now_secs() as i64;
        let until = i64::try_from(until).unwrap_or(i64::MAX);
        match replay().lock().unwrap_or_else(|p| p.into_inner()).check_and_insert(id, until, now) {
            Ok(None) => Ok(true),
            Ok(Some(e)) => Err(e.to_string()),
            Err(Refusal::Replay) => Ok(false),
            Err(r) => Err(format!("replay cache: {r}")),
        }
    }
}

/// What became of one datagram.
enum Outcome {
    Refused(Option<DoorKey>, Refusal),
    Accepted(DoorKey, Grant),
    /// Accepted, but the replay cache's file could not be written.
    AcceptedUnsaved(DoorKey, Grant, spa::ReplayError),
}

/// Checks one datagram against the SPA doors on `port`. No allocation and no shared
/// write before some door's HMAC key fits.
fn check(doors: &Doors, src: IpAddr, port: u16, payload: &[u8], now: i64) -> Outcome {
    if let Err(r) = spa::cheap_checks(payload) {
        return Outcome::Refused(None, r);
    }
    for (key, door, settings) in doors.spa().filter(|(_, _, s)| s.port == port) {
        let Some(keys) = &settings.keys else { continue };
        if spa::check_hmac(payload, keys).is_err() {
            continue;
        }
        let policy = Policy {
            max_age: settings.max_age,
            allow_other_address: settings.allow_other_address,
            open: &door.open,
        };
        let grant = match spa::open(payload, keys).and_then(|m| spa::check_policy(m, src, &policy, now)) {
            Ok(g) => g,
            Err(r) => return Outcome::Refused(Some(key), r),
        };
        let expiry = grant.message.timestamp.saturating_add(i64::from(settings.max_age));
        let stored = replay().lock().unwrap_or_else(|p| p.into_inner()).check_and_insert(
            grant.message.digest,
            expiry,
            now,
        );
        return match stored {
            Err(r) => Outcome::Refused(Some(key), r),
            Ok(None) => Outcome::Accepted(key, grant),
            Ok(Some(e)) => Outcome::AcceptedUnsaved(key, grant, e),
        };
    }
    Outcome::Refused(None, Refusal::Hmac)
}

/// Checks one datagram to SPA port `port` from `src`, and grants or refuses.
pub(crate) fn handle(sink: &mut WorkerSink, src: IpAddr, port: u16, payload: &[u8]) {
    let (key, grant) = match check(&sink.doors, src, port, payload, sink.now as i64) {
        Outcome::Refused(door, reason) => return refuse(sink, src, door, reason),
        Outcome::Accepted(key, grant) => (key, grant),
        Outcome::AcceptedUnsaved(key, grant, e) => {
            sink.log.send(LogItem::Text(Message { text: format!("error: {e}"), newline: false }));
            (key, grant)
        }
    };
    sink.spa.accepted += 1;
    let ports: Vec<String> = grant.message.ports.iter().map(|p| p.to_string()).collect();
    sink.log.send(LogItem::Text(Message {
        text: format!(
            "{src}: {}: SPA accepted (user {}, for {}: {})",
            key.name(),
            grant.message.user.escape_debug(),
            grant.address,
            ports.join(",")
        ),
        newline: false,
    }));
    // knockd's line, for the address opened; never rate-limited.
    sink.log.send(LogItem::Event(Event::Open { src: grant.address, door: key }));
    let Some((d, kind)) = sink.doors.get(key) else { return };
    let Some(action) = sink.firewall.action(d, kind, grant.address) else { return };
    // A refusal (queue full) is reported and counted by the executor.
    let _ = sink.executor.open(GrantRequest {
        door_name: d.name.clone(),
        ip: grant.address,
        action,
        timeout: Duration::from_secs(u64::from(d.cmd_timeout)),
    });
}

fn refuse(sink: &mut WorkerSink, src: IpAddr, door: Option<DoorKey>, reason: Refusal) {
    sink.spa.refused[reason.index()] += 1;
    if sink.limiter.allow(sink.now) {
        let text = match door {
            Some(d) => format!("{src}: {}: SPA refused: {reason}", d.name()),
            None => format!("{src}: SPA refused: {reason}"),
        };
        sink.log.offer(LogItem::Text(Message { text, newline: false }));
    }
}
