//! SIGHUP: re-read the config and switch every worker to the new door table. A bad
//! config is logged with its file, line and value, and the running one kept.

use super::firewall::Firewall;
use super::interfaces::{Interfaces, State};
use super::supervisor::WorkerHandle;
use super::worker::Control;
use super::Settings;
use crate::config::Config;
use crate::doors::Doors;
use crate::log::{Log, LogItem};
use crate::matcher::Event;
use std::sync::Arc;

/// Returns the new door table and backends, or `None` if the running ones are kept.
pub(crate) fn reload(
    s: &Settings,
    interfaces: &Interfaces,
    running: &Doors,
    firewall: &Firewall,
    workers: &[WorkerHandle],
    log: &Log,
) -> Option<(Arc<Doors>, Arc<Firewall>)> {
    log.text(format!("re-reading config file: {}", s.config.display()));
    let attempt = || -> anyhow::Result<(Config, Arc<Doors>, Arc<Firewall>)> {
        let config = Config::load(&s.config)?;
        let doors = Doors::new(&config)?;
        // A used rotating sequence stays used across the reload, and the restart after.
        doors.carry_over(running);
        doors.persist_claims(&super::spa::ReplayClaims::store());
        // Every interface's filter must build before any worker switches.
        for slot in 0..interfaces.len() {
            if let State::Present { link, local, .. } = interfaces.state(slot) {
                doors.filter_program(local, !s.ipv4_only, *link)?;
            }
        }
        // Last: preparing the backends changes the firewall.
        let firewall = Arc::new(Firewall::for_config(&config, Some(firewall))?);
        Ok((config, doors, firewall))
    };
    match attempt() {
        Ok((config, doors, firewall)) => {
            if s.interfaces(&config) != interfaces.names() {
                log.text("warning: the config names other interfaces; they take effect at the next start");
            }
            for door in doors.disabled() {
                log.send(LogItem::Event(Event::DoorDisabled { door }));
            }
            for w in workers {
                // Fails only for a worker that has stopped, which the supervisor notices.
                let _ = w.control.send(Control::Reload(doors.clone(), firewall.clone()));
            }
            Some((doors, firewall))
        }
        Err(e) => {
            log.text(format!("error: {e:#}; keeping the running configuration"));
            None
        }
    }
}
