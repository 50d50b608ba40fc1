//! Fuzzes the TOML parser as the daemon and `sesame check` run it: whatever the
//! text, no panic, errors that name their line, the same answer twice, a door table
//! and a kernel filter for every accepted config, and a `sesame convert` round trip.
#![no_main]

#[path = "../common/config.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = config::text(data) {
        config::run(config::Syntax::Toml, text);
    }
});
