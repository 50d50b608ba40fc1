//! What the command line says: knockd's flags, plus sesame's overrides.

use crate::config::{Config, DEFAULT_INTERFACE};
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub config: PathBuf,
    /// `-i`, repeatable: overrides the config's `Interface`.
    pub interfaces: Vec<String>,
    pub daemonize: bool,
    pub debug: bool,
    pub lookup: bool,
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub verbose: bool,
    pub ipv4_only: bool,
    /// `--workers`: overrides the config.
    pub workers: Option<u32>,
    /// `--memory-mib`: overrides the config.
    pub memory_mib: Option<u32>,
    /// `--state-dir`: where the grant journal lives; overrides `[firewall] state_dir`.
    pub state_dir: Option<PathBuf>,
    /// `--ops-log`: where to write one line per firewall operation.
    pub ops_log: Option<PathBuf>,
    /// `--metrics-listen`: where to serve `/metrics` and `/healthz`; overrides `[metrics] listen`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// systemd's notification socket and watchdog, when run as a `Type=notify` service.
    pub notify: super::notify::Notifier,
}

impl Settings {
    /// The grant journal's directory: `--state-dir`, else the config's.
    pub fn state_dir(&self, config: &Config) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| config.firewall.state_dir.clone())
    }

    /// The interfaces to listen on: `-i`, else the config's `Interface`, else knockd's
    /// default, eth0.
    pub fn interfaces(&self, config: &Config) -> Vec<String> {
        if !self.interfaces.is_empty() {
            self.interfaces.clone()
        } else if !config.options.interfaces.is_empty() {
            config.options.interfaces.clone()
        } else {
            vec![DEFAULT_INTERFACE.to_owned()]
        }
    }
}
