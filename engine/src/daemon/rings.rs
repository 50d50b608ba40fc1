//! Opening one interface's rings: one per worker, in one PACKET_FANOUT group whose
//! program hashes the source address only, so every packet of a source reaches the
//! same worker.

use super::sizing::Sizing;
use anyhow::Context;
use sesame_capture::filter::Program;
use sesame_capture::ring::{Fanout, FanoutMode, Ring, RingConfig};
use sesame_capture::{fanout, Link};
use std::hash::{BuildHasher, RandomState};

/// Opens rings with the daemon's sizing, each interface in a fanout group of its own.
pub(crate) struct RingFactory {
    sizing: Sizing,
    /// The fanout hash key: random per process, so nobody can pick sources that all
    /// land on one worker. The same for every interface, so a source that knocks over
    /// two interfaces reaches the same worker on both.
    key: u32,
    /// Group ids are per network namespace: a fresh one for every group this process
    /// makes, since a re-created interface cannot join the group of its dead
    /// predecessor while a worker still holds one of its rings.
    next_group: u16,
}

impl RingFactory {
    pub(crate) fn new(sizing: Sizing) -> RingFactory {
        let key = RandomState::new().hash_one(std::process::id()) as u32;
        RingFactory { sizing, key, next_group: (std::process::id() & 0xffff) as u16 }
    }

    /// One ring per worker on `ifname`, in worker order (which is the order they join
    /// the group, and so the worker a source hashes to), all with `filter`.
    pub(crate) fn open(&mut self, ifname: &str, link: Link, filter: &Program) -> anyhow::Result<Vec<Ring>> {
        let workers = self.sizing.workers;
        let group_id = self.next_group;
        self.next_group = self.next_group.wrapping_add(1);
        let config = RingConfig {
            block_size: self.sizing.ring.block_size,
            block_count: self.sizing.ring.block_count,
            link,
            fanout: (workers > 1)
                .then(|| Fanout { group_id, mode: FanoutMode::Cbpf(fanout::source_hash_program(self.key)) }),
            ..RingConfig::default()
        };
        (0..workers)
            .map(|_| {
                Ring::open(ifname, &config, filter)
                    .with_context(|| format!("could not open {ifname} for capture"))
            })
            .collect()
    }
}
