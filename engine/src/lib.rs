//! sesame's engine: the knock core (door table, state machine, attempt table, port
//! index, kernel filter spec), free of I/O, plus the daemon that wires capture,
//! matching, the firewall and the log together, and the configuration.
#![deny(unsafe_code)]

pub mod check;
pub mod client;
pub mod config;
pub mod daemon;
pub mod doors;
mod filter_spec;
pub mod knocking;
pub mod log;
pub mod matcher;
mod port_index;
pub mod rotating;
pub mod spa;
pub mod spa_client;
pub mod tracker;

/// The binaries' exit-status policy: 2 for a bad configuration or an impossible
/// setting (nothing has been opened then), 1 for any other failure. A bad command line
/// is 2 as well, which clap reports before anything runs.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let config = error.downcast_ref::<config::LoadError>().is_some()
        || error.downcast_ref::<config::ConfigError>().is_some()
        || error.downcast_ref::<daemon::SizingError>().is_some();
    if config {
        2
    } else {
        1
    }
}
