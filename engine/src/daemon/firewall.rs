//! The firewall backends the doors use, built and checked at start so that a missing
//! `nft`, `iptables` or `ufw` (or a kernel without nf_tables) is a start-up error
//! naming the door and the backend, never a surprise at the first knock.

use crate::config::{BackendKind, Config, Door};
use anyhow::Context;
use sesame_firewall::backend::iptables::IptablesBackend;
use sesame_firewall::backend::nftables::NftablesBackend;
use sesame_firewall::backend::ufw::UfwBackend;
use sesame_firewall::backend::{Backend, DoorRule};
use sesame_firewall::Action;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// One backend of each kind that some door uses.
#[derive(Clone, Default)]
pub struct Firewall {
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
}

fn build(kind: BackendKind) -> Option<Arc<dyn Backend>> {
    Some(match kind {
        BackendKind::Command => return None,
        BackendKind::Nftables => Arc::new(NftablesBackend::new()),
        BackendKind::Iptables => Arc::new(IptablesBackend::new()),
        BackendKind::Ufw => Arc::new(UfwBackend::new()),
    })
}

/// `sesame firewall remove BACKEND`: takes sesame's table or chain away on purpose
/// (with the nftables backend the protected ports stay closed until this is run).
pub fn remove(kind: BackendKind) -> anyhow::Result<()> {
    let Some(b) = build(kind) else { anyhow::bail!("the command backend installs nothing to remove") };
    b.remove().with_context(|| format!("removing what sesame installed in {}", kind.name()))?;
    Ok(())
}

/// `sesame firewall list BACKEND`: the (door, address) grants open in it now.
pub fn list(kind: BackendKind) -> anyhow::Result<Vec<(String, IpAddr)>> {
    let Some(b) = build(kind) else {
        anyhow::bail!("the command backend keeps no list: see the grant journal")
    };
    Ok(b.present()?)
}

impl Firewall {
    /// Builds and checks the backends `config`'s doors use, and prepares each for its
    /// doors (sesame's table or chain, keeping grants still open from before).
    /// `running` are the backends of the configuration being replaced (a reload),
    /// reused so their state carries over.
    pub fn for_config(config: &Config, running: Option<&Firewall>) -> anyhow::Result<Firewall> {
        let mut backends: BTreeMap<&'static str, Arc<dyn Backend>> = BTreeMap::new();
        let mut rules: BTreeMap<&'static str, Vec<DoorRule>> = BTreeMap::new();
        for door in &config.doors {
            let Some(kind) = door.backend_in(&config.firewall) else { continue };
            let name = kind.name();
            if kind == BackendKind::Command {
                continue;
            }
            if !backends.contains_key(name) {
                let backend = match running.and_then(|f| f.backends.get(name)) {
                    Some(b) => b.clone(),
                    None => {
                        let b = build(kind).expect("a native backend");
                        b.check()
                            .with_context(|| format!("door {}: cannot use backend {name}", door.name))?;
                        b
                    }
                };
                backends.insert(name, backend);
            }
            rules
                .entry(name)
                .or_default()
                .push(DoorRule { door: door.name.clone(), ports: door.open.clone() });
        }
        // Backends no door uses any more still get `prepare(&[])`, which removes the
        // sets or rules of their doors.
        if let Some(old) = running {
            for (name, b) in &old.backends {
                if !backends.contains_key(name) {
                    b.prepare(&[])
                        .with_context(|| format!("backend {name}: removing doors no longer configured"))?;
                }
            }
        }
        for (name, b) in &backends {
            let doors = rules.get(name).map_or(&[][..], Vec::as_slice);
            b.prepare(doors).with_context(|| {
                let names: Vec<&str> = doors.iter().map(|d| d.door.as_str()).collect();
                format!("backend {name}: preparing for door(s) {}", names.join(", "))
            })?;
        }
        Ok(Firewall { backends })
    }

    /// The backend called `name` (the grant journal names backends).
    pub fn backend(&self, name: &str) -> Option<Arc<dyn Backend>> {
        self.backends.get(name).cloned()
    }

    /// How a success at `door` from `ip` opens: its native backend and ports, or its
    /// commands; `None` for a door that only logs.
    pub fn action(&self, door: &Door, config_backend: Option<BackendKind>, ip: IpAddr) -> Option<Action> {
        match config_backend? {
            BackendKind::Command => Some(Action::Commands {
                start: door.start_command_for(ip).map(str::to_owned),
                stop: door.stop_command_for(ip).map(str::to_owned),
            }),
            kind => Some(Action::Native { backend: self.backend(kind.name())?, ports: door.open.clone() }),
        }
    }
}
