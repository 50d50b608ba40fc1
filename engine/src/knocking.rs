//! One attempt's state machine: knockd 0.8's rules for what a packet does to an
//! attempt at one door, with states as types so that only a completed sequence can
//! produce an opening.

use crate::doors::DoorState;
use sesame_capture::Knock;

/// Time as whole seconds since the epoch: knockd compares packet timestamps truncated
/// to seconds, and so do we, to the same rounding.
pub type Secs = u64;

/// An attempt in progress: `stage` steps matched (at least one, fewer than all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knocking {
    stage: u8,
    started: Secs,
}

/// A completed sequence. Holding one is the only way to produce an opening.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened;

/// Where a knock takes an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Advance {
    /// The next step matched; more to go.
    Next(Knocking),
    /// The last step matched.
    Open(Opened),
    /// Right port, wrong TCP flags: the packet does not count either way.
    Ignored(Knocking),
    /// Anything else: the attempt is invalidated and the packet consumed.
    Broken,
}

/// What a first knock gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    Knocking(Knocking),
    Open(Opened),
    No,
}

impl Knocking {
    /// An attempt as stored in the tracker.
    pub(crate) fn at(stage: u8, started: Secs) -> Knocking {
        Knocking { stage, started }
    }

    /// A packet that may begin an attempt at `door`.
    pub fn start(door: &DoorState, k: &Knock, now: Secs) -> Start {
        if !door.flags_ok(k) || !door.step_is(0, k) {
            return Start::No;
        }
        if door.sequence.len() == 1 {
            Start::Open(Opened)
        } else {
            Start::Knocking(Knocking { stage: 1, started: now })
        }
    }

    /// The next packet of this attempt.
    pub fn knock(self, door: &DoorState, k: &Knock) -> Advance {
        let flags_ok = door.flags_ok(k);
        if flags_ok && door.step_is(self.stage as usize, k) {
            let stage = self.stage + 1;
            if stage as usize >= door.sequence.len() {
                Advance::Open(Opened)
            } else {
                Advance::Next(Knocking { stage, ..self })
            }
        } else if !flags_ok {
            Advance::Ignored(self)
        } else {
            Advance::Broken
        }
    }

    pub fn stage(&self) -> u8 {
        self.stage
    }

    pub fn started(&self) -> Secs {
        self.started
    }

    /// knockd's test: whole seconds since the first knock reach the timeout.
    pub fn expired(&self, door: &DoorState, now: Secs) -> bool {
        now.saturating_sub(self.started) >= u64::from(door.seq_timeout)
    }
}
