//! sesame's engine: configuration, the knock state machine, logging and the daemon
//! that glues capture, matching and the firewall together.
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod log;
pub mod matcher;
pub mod tracker;
