//! The attempt table: fixed capacity, allocated once, never reallocated.
//!
//! knockd keeps attempts in a list that grows for as long as a flood lasts. Here each
//! worker owns one table sized from the memory budget at start-up. It is
//! set-associative: a source address hashes (with a per-process random key, so an
//! attacker cannot aim sources at one bucket) to a bucket of [`WAYS`] slots, which
//! hold all of that source's attempts, one per door.
//!
//! When a new attempt finds its bucket full, the victim is the least advanced attempt,
//! the oldest among equals. A new attempt is always at stage 1, so it may only replace
//! another stage-1 attempt: a flood of first knocks from random sources churns through
//! fresh entries and never pushes out a knocker who is half-way through. If every slot
//! of the bucket holds a further-advanced attempt, the new one is rejected instead.

use crate::doors::DoorId;
use crate::knocking::{Knocking, Secs};
use std::net::IpAddr;

/// Slots per bucket.
pub const WAYS: usize = 5;

/// One bucket: two adjacent cache lines (128-byte aligned, so they are fetched as a
/// pair) holding five attempts. A lookup compares fingerprints and doors first and a
/// key only where both match.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(128))]
struct Set {
    /// Hash fingerprint of the source; 0 = empty slot.
    fp: [u8; WAYS],
    /// Stage, with bit 7 set for an IPv6 source.
    stage: [u8; WAYS],
    /// Where the search for an eviction victim starts: it moves past each victim, so
    /// attempts that tie (same stage, same second) leave in the order they came, and
    /// the newest of a busy bucket is the last to go, not the next. In the first cache
    /// line with the fields a victim is chosen by, so choosing never waits for the second.
    hand: u8,
    door: [DoorId; WAYS],
    /// Second of the first knock (u32 seconds last until 2106).
    started: [u32; WAYS],
    /// Source addresses (IPv4 in the first four bytes).
    key: [[u8; 16]; WAYS],
}

/// For each position of a bucket's hand, each way's place in the search from the hand
/// on, round the bucket (a table, so the hot path does no division).
const AFTER_HAND: [[u8; WAYS]; WAYS] = {
    let mut r = [[0; WAYS]; WAYS];
    let mut h = 0;
    while h < WAYS {
        let mut w = 0;
        while w < WAYS {
            r[h][w] = ((w + WAYS - h) % WAYS) as u8;
            w += 1;
        }
        h += 1;
    }
    r
};

/// Bytes one bucket takes.
pub const BUCKET_BYTES: usize = std::mem::size_of::<Set>();

const V6: u8 = 0x80;

/// What [`Tracker::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored in a free slot.
    Free,
    /// Stored in place of a stage-1 attempt (counted as an eviction).
    Evicted,
    /// Not stored: every slot of the bucket holds a more advanced attempt.
    Rejected,
}

/// Counters for metrics and the shutdown summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub evictions: u64,
    pub rejected: u64,
}

/// Where a source's attempts live: computed once per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    index: usize,
    key: [u8; 16],
    fp: u8,
    family: u8,
}

/// A fixed-capacity, set-associative table of attempts.
pub struct Tracker {
    sets: Box<[Set]>,
    hasher: ahash::RandomState,
    len: usize,
    stats: TrackerStats,
}

/// The table's one allocation, in huge pages where the kernel allows: lookups land
/// at random across it, and with 4 KiB pages nearly every one would also miss the TLB.
fn allocate(buckets: usize) -> Box<[Set]> {
    let mut sets = Vec::with_capacity(buckets);
    sesame_capture::hint::advise_huge_pages(sets.spare_capacity_mut());
    sets.resize(buckets, Set::default());
    sets.into_boxed_slice()
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("capacity", &self.capacity()).field("len", &self.len).finish()
    }
}

impl Tracker {
    /// A table of at most `budget` bytes (and at least one bucket).
    pub fn for_budget(budget: usize) -> Tracker {
        Tracker::with_buckets((budget / BUCKET_BYTES).max(1), ahash::RandomState::new())
    }

    /// A table of `buckets` buckets with the given hash key.
    pub fn with_buckets(buckets: usize, hasher: ahash::RandomState) -> Tracker {
        assert!(buckets > 0, "a table needs a bucket");
        Tracker { sets: allocate(buckets), hasher, len: 0, stats: TrackerStats::default() }
    }

    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Bytes the table holds, fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        self.sets.len() * BUCKET_BYTES
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// The bucket of `src`.
    pub fn bucket(&self, src: IpAddr) -> Bucket {
        let (key, family) = match src {
            IpAddr::V4(a) => {
                let mut k = [0u8; 16];
                k[..4].copy_from_slice(&a.octets());
                (k, 0)
            }
            IpAddr::V6(a) => (a.octets(), V6),
        };
        let h = self.hasher.hash_one((key, family));
        // The low byte: the bucket index comes from the high bits.
        let fp = (h as u8).max(1);
        // The high half of a 64x64-bit product maps the hash onto any bucket count
        // evenly, so the whole budget is used, not just its largest power of two.
        let index = ((u128::from(h) * self.sets.len() as u128) >> 64) as usize;
        Bucket { index, key, fp, family }
    }

    /// Starts loading the bucket's two lines into the cache, so a batch of packets
    /// waits for its cache misses together rather than one after the other.
    pub fn prefetch(&self, b: &Bucket) {
        let set = &self.sets[b.index];
        sesame_capture::hint::prefetch(set);
        sesame_capture::hint::prefetch(&set.key[WAYS - 1]);
    }

    fn find(&self, b: &Bucket, door: DoorId) -> Option<usize> {
        let m = &self.sets[b.index];
        (0..WAYS).find(|&w| {
            m.fp[w] == b.fp && m.door[w] == door && m.stage[w] & V6 == b.family && m.key[w] == b.key
        })
    }

    fn attempt(&self, b: &Bucket, w: usize) -> Knocking {
        let m = &self.sets[b.index];
        Knocking::at(m.stage[w] & !V6, Secs::from(m.started[w]))
    }

    /// Removes and returns the attempt of (bucket's source, door).
    pub fn take(&mut self, b: &Bucket, door: DoorId) -> Option<Knocking> {
        let w = self.find(b, door)?;
        let att = self.attempt(b, w);
        self.sets[b.index].fp[w] = 0;
        self.len -= 1;
        Some(att)
    }

    /// The attempt of (source, door), if any.
    pub fn get(&self, b: &Bucket, door: DoorId) -> Option<Knocking> {
        self.find(b, door).map(|w| self.attempt(b, w))
    }

    /// Stores an attempt for (bucket's source, door), which must not have one.
    pub fn insert(&mut self, b: &Bucket, door: DoorId, att: Knocking) -> Inserted {
        debug_assert!(self.find(b, door).is_none(), "insert over an existing attempt");
        let m = &self.sets[b.index];
        let (w, outcome) = match m.fp.iter().position(|&fp| fp == 0) {
            Some(w) => (w, Inserted::Free),
            None => {
                // Full: the least advanced, oldest attempt goes, but never for a less
                // advanced one; among equals, the first from the hand on.
                // One packed key per way, compared as integers: stage, then second, then
                // place after the hand.
                let pos = &AFTER_HAND[usize::from(m.hand)];
                let key = |w: usize| {
                    u64::from(m.stage[w] & !V6) << 40 | u64::from(m.started[w]) << 8 | u64::from(pos[w])
                };
                let mut w = 0;
                let mut best = key(0);
                for i in 1..WAYS {
                    let k = key(i);
                    if k < best {
                        (w, best) = (i, k);
                    }
                }
                if m.stage[w] & !V6 > att.stage() {
                    self.stats.rejected += 1;
                    return Inserted::Rejected;
                }
                self.stats.evictions += 1;
                (w, Inserted::Evicted)
            }
        };
        let m = &mut self.sets[b.index];
        if outcome == Inserted::Evicted {
            m.hand = ((w + 1) % WAYS) as u8;
        }
        m.fp[w] = b.fp;
        m.stage[w] = att.stage() | b.family;
        m.door[w] = door;
        m.started[w] = att.started().min(u64::from(u32::MAX)) as u32;
        m.key[w] = b.key;
        if outcome == Inserted::Free {
            self.len += 1;
        }
        outcome
    }

    /// Visits every attempt; those for which `expired` returns true are removed.
    pub fn sweep(&mut self, mut expired: impl FnMut(IpAddr, DoorId, Knocking) -> bool) {
        for m in self.sets.iter_mut() {
            for w in 0..WAYS {
                if m.fp[w] == 0 {
                    continue;
                }
                let key = m.key[w];
                let ip = if m.stage[w] & V6 != 0 {
                    IpAddr::from(key)
                } else {
                    IpAddr::from([key[0], key[1], key[2], key[3]])
                };
                let att = Knocking::at(m.stage[w] & !V6, Secs::from(m.started[w]));
                if expired(ip, m.door[w], att) {
                    m.fp[w] = 0;
                    self.len -= 1;
                }
            }
        }
    }

    /// Renumbers doors in place (a config reload): `map` gives an attempt's new door,
    /// or `None` to drop it.
    pub fn remap(&mut self, map: impl Fn(DoorId) -> Option<DoorId>) {
        for m in self.sets.iter_mut() {
            for w in 0..WAYS {
                if m.fp[w] == 0 {
                    continue;
                }
                match map(m.door[w]) {
                    Some(d) => m.door[w] = d,
                    None => {
                        m.fp[w] = 0;
                        self.len -= 1;
                    }
                }
            }
        }
    }

    /// Removes every attempt at `door`.
    pub fn forget_door(&mut self, door: DoorId) {
        self.sweep(|_, d, _| d == door);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key() -> ahash::RandomState {
        ahash::RandomState::with_seeds(1, 2, 3, 4)
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 + n))
    }

    #[test]
    fn slots_are_small_and_the_budget_is_respected() {
        assert_eq!(BUCKET_BYTES, 128, "two cache lines");
        for budget in [1 << 20, 64 << 20, 3_000_000] {
            let t = Tracker::for_budget(budget);
            assert!(t.memory_bytes() <= budget, "{budget}");
            assert!(t.memory_bytes() + BUCKET_BYTES > budget, "{budget}: uses the whole budget");
        }
        assert_eq!(Tracker::for_budget(0).capacity(), WAYS, "never zero buckets");
    }

    #[test]
    fn insert_get_take() {
        let mut t = Tracker::with_buckets(4, key());
        let a = v4(1);
        let b = t.bucket(a);
        assert_eq!(t.insert(&b, 0, Knocking::at(1, 100)), Inserted::Free);
        assert_eq!(t.insert(&b, 1, Knocking::at(2, 100)), Inserted::Free);
        assert_eq!(t.get(&b, 0), Some(Knocking::at(1, 100)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.take(&b, 1), Some(Knocking::at(2, 100)));
        assert_eq!(t.take(&b, 1), None);
        assert_eq!(t.len(), 1);
        // The same address in the other family is another source.
        let v6 = IpAddr::V6(Ipv6Addr::from([0xC6, 0x12, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(t.get(&t.bucket(v6), 0), None);
    }

    #[test]
    fn a_flood_of_first_knocks_never_evicts_an_advanced_attempt() {
        // One bucket only, so every source collides.
        let mut t = Tracker::with_buckets(1, key());
        let knocker = v4(7);
        let kb = t.bucket(knocker);
        t.insert(&kb, 0, Knocking::at(2, 10));
        for n in 0..10_000 {
            let b = t.bucket(v4(100 + n));
            t.insert(&b, 0, Knocking::at(1, 10 + u64::from(n)));
            assert!(t.len() <= t.capacity());
        }
        assert_eq!(t.get(&kb, 0), Some(Knocking::at(2, 10)), "the half-way knocker survived");
        assert_eq!(t.len(), t.capacity(), "the table stays full, not larger");
        assert_eq!(t.stats().evictions, 10_000 - (WAYS as u64 - 1));
    }

    #[test]
    fn attempts_of_the_same_second_leave_in_the_order_they_came() {
        // A bucket full of first knocks from the same second: a newcomer must outlive
        // the WAYS - 1 knocks that follow it, not be the next to go.
        let mut t = Tracker::with_buckets(1, key());
        for n in 0..WAYS as u32 {
            t.insert(&t.bucket(v4(n)), 0, Knocking::at(1, 50));
        }
        let knocker = t.bucket(v4(1000));
        assert_eq!(t.insert(&knocker, 0, Knocking::at(1, 50)), Inserted::Evicted);
        for n in 0..WAYS as u32 - 1 {
            t.insert(&t.bucket(v4(2000 + n)), 0, Knocking::at(1, 50));
            assert!(t.get(&knocker, 0).is_some(), "evicted by flood knock {n}");
        }
        t.insert(&t.bucket(v4(3000)), 0, Knocking::at(1, 50));
        assert!(t.get(&knocker, 0).is_none(), "then it is the oldest, and goes");
    }

    #[test]
    fn oldest_first_stage_goes_first() {
        let mut t = Tracker::with_buckets(1, key());
        for n in 0..WAYS as u32 {
            let b = t.bucket(v4(n));
            t.insert(&b, 0, Knocking::at(1, 100 + u64::from(n)));
        }
        let b = t.bucket(v4(1000));
        assert_eq!(t.insert(&b, 0, Knocking::at(1, 200)), Inserted::Evicted);
        assert_eq!(t.get(&t.bucket(v4(0)), 0), None, "the oldest went");
        assert!(t.get(&t.bucket(v4(1)), 0).is_some(), "the next oldest stayed");
    }

    #[test]
    fn a_bucket_of_advanced_attempts_rejects_new_ones() {
        let mut t = Tracker::with_buckets(1, key());
        for n in 0..WAYS as u32 {
            let b = t.bucket(v4(n));
            t.insert(&b, 0, Knocking::at(2, 100));
        }
        let b = t.bucket(v4(1000));
        assert_eq!(t.insert(&b, 0, Knocking::at(1, 200)), Inserted::Rejected);
        assert_eq!(t.stats().rejected, 1);
        assert_eq!(t.len(), WAYS);
    }

    #[test]
    fn sweep_removes_what_the_predicate_says() {
        let mut t = Tracker::with_buckets(8, key());
        for n in 0..20 {
            let b = t.bucket(v4(n));
            t.insert(&b, (n % 2) as DoorId, Knocking::at(1, u64::from(n)));
        }
        let mut seen = 0;
        t.sweep(|ip, door, att| {
            seen += 1;
            assert_eq!(u64::from(door), att.started() % 2);
            assert!(matches!(ip, IpAddr::V4(_)));
            att.started() < 10
        });
        assert_eq!(seen, 20);
        assert_eq!(t.len(), 10);
        t.forget_door(1);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn different_keys_place_sources_differently() {
        let a = Tracker::with_buckets(1024, ahash::RandomState::with_seeds(1, 2, 3, 4));
        let b = Tracker::with_buckets(1024, ahash::RandomState::with_seeds(5, 6, 7, 8));
        let same = (0..1000).filter(|&n| a.bucket(v4(n)).index == b.bucket(v4(n)).index).count();
        assert!(same < 50, "{same} of 1000 sources share a bucket under both keys");
    }
}
