//! SPA doors on the capture workers: a UDP datagram to an SPA door's port is checked
//! here (cheapest first; nothing allocated before the HMAC passes) and an accepted one
//! becomes a grant like a completed knock. Refusals are counted by reason and logged
//! under the log rate limit. The replay cache is shared by the workers (only packets
//! with a valid HMAC reach its lock) and persisted under `state_dir`.

use super::worker::WorkerSink;
use crate::log::{LogItem, Message};
use crate::matcher::Event;
use crate::spa::{self, Policy, Refusal, ReplayCache};
use sesame_firewall::GrantRequest;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Digests the replay cache holds at most (each for at most its door's window).
pub(crate) const REPLAY_CAPACITY: usize = 65_536;
/// The replay cache's file under `state_dir`.
pub(crate) const REPLAY_FILE: &str = "spa-replay";

/// The process's SPA counters and replay cache.
pub(crate) struct Shared {
    pub(crate) refused: [AtomicU64; Refusal::ALL.len()],
    pub(crate) accepted: AtomicU64,
    replay: Mutex<ReplayCache>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The counters (zero until [`init`]).
pub(crate) fn shared() -> &'static Shared {
    SHARED.get_or_init(|| Shared {
        refused: Default::default(),
        accepted: AtomicU64::new(0),
        replay: Mutex::new(ReplayCache::new(REPLAY_CAPACITY)),
    })
}

/// Loads the persisted replay cache; call before the workers start.
pub(crate) fn init(state_dir: &Path, now: i64) -> Result<(), spa::ReplayError> {
    let cache = ReplayCache::open(&state_dir.join(REPLAY_FILE), REPLAY_CAPACITY, now)?;
    *shared().replay.lock().unwrap_or_else(|p| p.into_inner()) = cache;
    Ok(())
}

/// Checks one datagram to SPA port `port` from `src`.
pub(crate) fn handle(sink: &mut WorkerSink, src: IpAddr, port: u16, payload: &[u8]) {
    let now = sink.now as i64;
    if let Err(r) = spa::cheap_checks(payload) {
        return refuse(sink, src, None, r);
    }
    let doors = sink.doors.clone();
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
            Err(r) => return refuse(sink, src, Some(&door.name), r),
        };
        let expiry = grant.message.timestamp + i64::from(settings.max_age);
        let stored = shared().replay.lock().unwrap_or_else(|p| p.into_inner()).check_and_insert(
            grant.message.digest,
            expiry,
            now,
        );
        match stored {
            Err(r) => return refuse(sink, src, Some(&door.name), r),
            Ok(Some(e)) => {
                sink.log.send(LogItem::Text(Message { text: format!("error: {e}"), newline: false }))
            }
            Ok(None) => {}
        }
        shared().accepted.fetch_add(1, Ordering::Relaxed);
        let ports: Vec<String> = grant.message.ports.iter().map(|p| p.to_string()).collect();
        sink.log.send(LogItem::Text(Message {
            text: format!(
                "{src}: {}: SPA accepted (user {}, for {}: {})",
                door.name,
                grant.message.user.escape_debug(),
                grant.address,
                ports.join(",")
            ),
            newline: false,
        }));
        // knockd's line, for the address opened.
        sink.log.send(LogItem::Event(Event::Open { src: grant.address, door: key }));
        let Some((d, kind)) = doors.get(key) else { return };
        let Some(action) = sink.firewall.action(d, kind, grant.address) else { return };
        let _ = sink.executor.open(GrantRequest {
            door_name: d.name.clone(),
            ip: grant.address,
            action,
            timeout: Duration::from_secs(u64::from(d.cmd_timeout)),
        });
        return;
    }
    refuse(sink, src, None, Refusal::Hmac);
}

fn refuse(sink: &mut WorkerSink, src: IpAddr, door: Option<&str>, reason: Refusal) {
    shared().refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    if sink.limiter.allow(sink.now) {
        let text = match door {
            Some(d) => format!("{src}: {d}: SPA refused: {reason}"),
            None => format!("{src}: SPA refused: {reason}"),
        };
        sink.log.offer(LogItem::Text(Message { text, newline: false }));
    }
}
