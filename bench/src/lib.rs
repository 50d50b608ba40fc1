//! `sesame-bench`: load tests for sesamed and any knockd-compatible daemon.
//!
//! A run builds a fresh lab (server and client namespaces joined by a veth), starts
//! the daemon under test in the server namespace, and starts the generator ([`gen`])
//! in the client namespace: a spoofed-source flood from an `AF_PACKET` TX ring, plus
//! legitimate knockers sending real sequences from distinct sources. The orchestrator
//! ([`run`]) measures offered and delivered rates, legitimate successes and their
//! knock-to-command latency, daemon CPU and memory, and the daemon's own counters,
//! and writes them as JSON ([`report`]) and an SVG chart ([`chart`]). [`firewall`] checks
//! sesamed's firewall backends: their limits under load and their latency.
#![deny(unsafe_code)]

pub mod chart;
pub mod firewall;
pub mod gen;
pub mod pacing;
pub mod report;
pub mod run;
pub mod stats;
