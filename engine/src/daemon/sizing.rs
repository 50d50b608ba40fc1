//! How many capture workers, how large their rings, how large their attempt tables:
//! all derived from one memory budget so that a config with no tuning starts on any
//! machine, from 1 core to many, and says what it chose.
//!
//! The budget pays for the rings first (one per worker per interface; their size is
//! fixed by the kernel interface), the rest is split between the workers' attempt
//! tables. Unless set, ring sizes follow the budget: 64 blocks of 128 KiB per ring
//! (8 MiB: plenty for a 10 GbE flood of knock-sized frames) when the budget holds them and a
//! minimal table per worker, smaller when many workers or interfaces share it, down
//! to 256 KiB. An unset budget is 64 MiB, raised as far as
//! the workers need; a budget that is set and too small is an error naming it.

use super::Settings;
use crate::config::{Tuning, DEFAULT_MEMORY_MIB};
use std::path::Path;

/// The largest ring chosen on its own: 64 blocks of 128 KiB.
const DEFAULT_RING: u64 = 8 << 20;
/// The smallest ring chosen on its own: 4 blocks of 64 KiB.
const MIN_RING: u64 = 256 << 10;
/// The largest block chosen on its own. The kernel hands a block over 1 ms after its
/// first packet ([`RingConfig::block_timeout_ms`]), full or not, for a low knock
/// latency; many small blocks keep the ring deep in time at any packet rate: 64
/// blocks last at least 64 ms of a stalled worker, and about 1,000 knock-sized frames
/// fill one.
///
/// [`RingConfig::block_timeout_ms`]: sesame_capture::ring::RingConfig::block_timeout_ms
const MAX_BLOCK: u64 = 128 << 10;
/// Blocks in the smallest rings: with fewer, one block held by the worker is too much
/// of the ring.
const MIN_BLOCKS: u64 = 4;
/// The smallest attempt table worth having (512 buckets of 5 slots).
const MIN_TABLE: u64 = 64 << 10;
/// Workers when nothing says how many: one per core, up to this many.
pub const MAX_DEFAULT_WORKERS: usize = 64;

/// A setting that cannot be met; nothing has been opened (exit status 2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct SizingError {
    /// The flag or config key, as the operator wrote it (`--memory-mib 8`,
    /// `memory_mib = 8 in /etc/sesame.toml`).
    pub setting: String,
    pub reason: String,
}

/// Geometry of one TPACKET_V3 ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSize {
    pub block_size: u32,
    pub block_count: u32,
}

impl RingSize {
    pub fn bytes(self) -> u64 {
        u64::from(self.block_size) * u64::from(self.block_count)
    }
}

/// The capture's dimensions, after command-line overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub workers: usize,
    /// Interfaces listened on: each worker has one ring per interface.
    pub interfaces: usize,
    pub ring: RingSize,
    /// Attempt-table bytes per worker.
    pub table: usize,
    /// The whole budget, bytes.
    pub memory: u64,
    /// The budget was not set and the workers needed more than the default.
    pub raised: bool,
    /// Per-packet log lines per second per worker (0 = unlimited).
    pub log_rate: u32,
}

/// Where a setting came from, for messages.
fn origin(
    flag: Option<u32>,
    key: &str,
    config: Option<u32>,
    file: &Path,
    flag_name: &str,
) -> Option<(u32, String)> {
    match (flag, config) {
        (Some(v), _) => Some((v, format!("{flag_name} {v}"))),
        (None, Some(v)) => Some((v, format!("{key} = {v} in {}", file.display()))),
        (None, None) => None,
    }
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

impl Sizing {
    /// Sizes the capture for `interfaces` interfaces on a machine with `cores` cores.
    pub fn new(t: &Tuning, s: &Settings, interfaces: usize, cores: usize) -> Result<Sizing, SizingError> {
        let interfaces = interfaces.max(1);
        let workers =
            s.workers.or(t.workers).map_or(cores.clamp(1, MAX_DEFAULT_WORKERS), |w| w as usize).max(1);
        let budget = origin(s.memory_mib, "memory_mib", t.memory_mib, &s.config, "--memory-mib");
        let rings = (workers * interfaces) as u64;
        let explicit_ring = t.ring_block_size.is_some() || t.ring_block_count.is_some();
        let ring = if explicit_ring {
            // The one not set makes the default 8 MiB ring with the one that is.
            let block_size = t.ring_block_size.unwrap_or(MAX_BLOCK as u32);
            let count = (DEFAULT_RING / u64::from(block_size.max(1))).max(MIN_BLOCKS);
            RingSize { block_size, block_count: t.ring_block_count.unwrap_or(count as u32) }
        } else {
            // Rings first, as large as the budget allows once every table has its
            // minimum, a power of two each, within bounds.
            let memory = budget.as_ref().map_or(u64::from(DEFAULT_MEMORY_MIB), |(v, _)| u64::from(*v)) << 20;
            let share = (memory.saturating_sub(workers as u64 * MIN_TABLE) / rings).max(1);
            let bytes = (1u64 << (63 - share.leading_zeros())).clamp(MIN_RING, DEFAULT_RING);
            let block = (bytes / MIN_BLOCKS).min(MAX_BLOCK);
            RingSize { block_size: block as u32, block_count: (bytes / block) as u32 }
        };
        let ring_total = rings * ring.bytes();
        let needed = ring_total + workers as u64 * MIN_TABLE;
        let (memory, raised) = match &budget {
            Some((v, setting)) => {
                let memory = u64::from(*v) << 20;
                if memory < needed {
                    let rings_from = if explicit_ring {
                        "ring_block_size x ring_block_count"
                    } else {
                        "the smallest rings"
                    };
                    return Err(SizingError {
                        setting: setting.clone(),
                        reason: format!(
                            "{} is too small for {workers} workers on {interfaces} interface(s): their capture \
                             rings ({}, {rings_from}) and attempt tables (at least {} each) need {} MiB; \
                             raise it or lower workers (--workers)",
                            mib(memory),
                            mib(ring_total),
                            mib(MIN_TABLE),
                            needed.div_ceil(1 << 20),
                        ),
                    });
                }
                (memory, false)
            }
            None => {
                let default = u64::from(DEFAULT_MEMORY_MIB) << 20;
                let memory = default.max(needed.div_ceil(1 << 20) << 20);
                (memory, memory > default)
            }
        };
        let log_rate = match t.log_lines_per_second {
            0 => 0,
            n => (n / workers as u32).max(1),
        };
        let table = ((memory - ring_total) / workers as u64) as usize;
        Ok(Sizing { workers, interfaces, ring, table, memory, raised, log_rate })
    }

    /// The start-up line that says what was chosen.
    pub fn describe(&self) -> String {
        format!(
            "capture: {} worker(s) x {} interface(s), rings of {} x {} ({} each), attempt tables of {} per \
             worker; memory budget {}{}",
            self.workers,
            self.interfaces,
            self.ring.block_count,
            mib(u64::from(self.ring.block_size)),
            mib(self.ring.bytes()),
            mib(self.table as u64),
            mib(self.memory),
            if self.raised { " (raised from the default 64 MiB for this many workers)" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(workers: Option<u32>, memory: Option<u32>) -> Settings {
        Settings { workers, memory_mib: memory, config: "/etc/sesame.toml".into(), ..Settings::default() }
    }

    #[test]
    fn two_workers_keep_the_measured_defaults() {
        let z = Sizing::new(&Tuning::default(), &settings(None, None), 1, 2).unwrap();
        assert_eq!(z.ring, RingSize { block_size: 128 << 10, block_count: 64 });
        // 64 MiB less 2 x 8 MiB of rings, split over 2 workers.
        assert_eq!((z.workers, z.table, z.memory, z.raised), (2, 24 << 20, 64 << 20, false));
        assert_eq!(z.log_rate, 100);
    }

    #[test]
    fn any_core_count_starts_with_no_tuning() {
        for cores in [1, 2, 3, 8, 16, 48, 64, 128, 1024] {
            let z = Sizing::new(&Tuning::default(), &settings(None, None), 1, cores).unwrap();
            assert_eq!(z.workers, cores.min(MAX_DEFAULT_WORKERS));
            assert!(z.ring.bytes() >= MIN_RING && z.table as u64 >= MIN_TABLE, "{cores}: {z:?}");
            assert!(z.ring.bytes() * z.workers as u64 + z.table as u64 * z.workers as u64 <= z.memory);
            assert_eq!(z.memory, 64 << 20, "{cores} cores fit the default budget: {z:?}");
        }
        for workers in [1, 2, 16, 64, 300, 1024] {
            for interfaces in [1, 3] {
                let z =
                    Sizing::new(&Tuning::default(), &settings(Some(workers), None), interfaces, 2).unwrap();
                let rings = z.ring.bytes() * (z.workers * interfaces) as u64;
                assert!(rings + z.table as u64 * z.workers as u64 <= z.memory, "{z:?}");
                assert!(z.table as u64 >= MIN_TABLE, "{z:?}");
                assert_eq!(z.raised, z.memory > 64 << 20);
            }
        }
        let z = Sizing::new(&Tuning::default(), &settings(Some(1024), None), 1, 2).unwrap();
        assert!(z.raised && z.describe().contains("raised"), "{}", z.describe());
    }

    #[test]
    fn a_small_budget_keeps_full_rings_while_the_tables_keep_their_minimum() {
        // One worker in 9 MiB: the 8 MiB ring and a 1 MiB table.
        let z = Sizing::new(&Tuning::default(), &settings(Some(1), Some(9)), 1, 2).unwrap();
        assert_eq!((z.ring, z.table), (RingSize { block_size: 128 << 10, block_count: 64 }, 1 << 20));
        let z = Sizing::new(&Tuning::default(), &settings(Some(1), Some(8)), 1, 2).unwrap();
        assert_eq!((z.ring.bytes(), z.table), (4 << 20, 4 << 20));
    }

    #[test]
    fn sixteen_workers_share_the_default_budget() {
        let z = Sizing::new(&Tuning::default(), &settings(Some(16), None), 1, 2).unwrap();
        // 16 x 8 MiB of rings do not fit: 2 MiB each.
        assert_eq!(z.ring, RingSize { block_size: 128 << 10, block_count: 16 });
        assert_eq!(z.table, 2 << 20);
        let z = Sizing::new(&Tuning::default(), &settings(Some(64), None), 2, 2).unwrap();
        assert_eq!(z.ring, RingSize { block_size: 64 << 10, block_count: 4 });
    }

    #[test]
    fn a_budget_that_is_set_and_too_small_names_its_setting() {
        let e = Sizing::new(&Tuning::default(), &settings(Some(64), Some(1)), 1, 2).unwrap_err();
        assert_eq!(e.setting, "--memory-mib 1");
        assert!(e.to_string().starts_with("--memory-mib 1: 1 MiB is too small for 64 workers"), "{e}");
        let t = Tuning { memory_mib: Some(4), workers: Some(32), ..Tuning::default() };
        let e = Sizing::new(&t, &settings(None, None), 1, 2).unwrap_err();
        assert_eq!(e.setting, "memory_mib = 4 in /etc/sesame.toml");
        // Rings set by hand that the budget cannot hold.
        let t = Tuning { memory_mib: Some(16), ring_block_size: Some(1 << 20), ..Tuning::default() };
        let e = Sizing::new(&t, &settings(Some(2), None), 1, 2).unwrap_err();
        assert!(e.to_string().contains("ring_block_size x ring_block_count"), "{e}");
        // The flag wins over the config.
        assert!(Sizing::new(&t, &settings(Some(2), Some(64)), 1, 2).is_ok());
    }

    #[test]
    fn rings_set_by_hand_are_kept() {
        let t = Tuning { ring_block_size: Some(65536), ring_block_count: Some(16), ..Tuning::default() };
        let z = Sizing::new(&t, &settings(Some(2), None), 1, 2).unwrap();
        assert_eq!(z.ring, RingSize { block_size: 65536, block_count: 16 });
        assert_eq!(z.table, (64 << 20) / 2 - (1 << 20));
    }
}
