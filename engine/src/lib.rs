//! sesame's engine: configuration, the knock state machine, logging and the daemon
//! that glues capture, matching and the firewall together.
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod log;
pub mod matcher;
pub mod tracker;

/// The binaries' exit-status policy: 2 for a bad configuration (nothing has been
/// opened then), 1 for any other failure. A bad command line is 2 as well, which clap
/// reports before anything runs.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let config = error.downcast_ref::<config::LoadError>().is_some()
        || error.downcast_ref::<config::ConfigError>().is_some();
    if config {
        2
    } else {
        1
    }
}
