//! How long the firewall takes per operation, measured, and how many grants may fall
//! due together because of it.
//!
//! Every open brings a close when its time is up, and closes go first. If more grants
//! fall due within a short time than the firewall can close in it, the closes queue,
//! and the last ones start late, with the port still open. The configured `rate`
//! cannot prevent that when the firewall is slower than `rate` (iptables rewriting a
//! long chain manages a few dozen operations a second). So the executor measures the
//! firewall and lets a new grant open only while the grants falling due within
//! [`CLOSE_ALL_WITHIN`] before its own end can be closed in that time; a knock beyond
//! that waits, and is refused if its time runs out first. Knocks spread out in time
//! are never held: only a run of them that the firewall could not close again.
//!
//! The measures are busy time (at least one operation running) per operation
//! finished, exact for a firewall that does one thing at a time (iptables' lock), and
//! a close's whole time from its start to its end, on the safe side (too long) for
//! commands that could run side by side.

use std::time::{Duration, Instant};

/// Operations per measurement.
const SAMPLE: u32 = 16;
/// The grants falling due within this time are kept to what the firewall closes in it.
pub const CLOSE_ALL_WITHIN: Duration = Duration::from_secs(1);
/// Until this many closes have been measured, at most [`COLD_MOST`] grants fall due
/// within [`CLOSE_ALL_WITHIN`] (a close is taken to cost 50 ms): what a close costs
/// cannot be told from the opens, as an iptables `-D` searches the chain the opens
/// grew (seen here: opens 4 ms, closes 54 ms with a few hundred rules).
const COLD_CLOSES: u32 = 4;
const COLD_MOST: usize = 20;

#[derive(Debug)]
pub(crate) struct Pace {
    /// When the current busy spell (at least one operation running) began.
    busy_from: Option<Instant>,
    /// Busy time and operations finished in the current sample.
    busy: Duration,
    done: u32,
    /// Busy seconds per operation, smoothed; `None` until the first sample.
    cost: Option<f64>,
    /// Seconds a close took from its start to its end (waiting for the firewall
    /// included), smoothed. Closes are what must keep up, and on a firewall whose
    /// chain grows with the grants open they cost more than opens.
    close: Option<f64>,
    /// Closes seen so far (up to [`COLD_CLOSES`]).
    closes: u32,
}

impl Pace {
    pub fn new() -> Pace {
        Pace { busy_from: None, busy: Duration::ZERO, done: 0, cost: None, close: None, closes: 0 }
    }

    /// The number of operations running changed to `running`.
    pub fn running(&mut self, running: usize, now: Instant) {
        match (running > 0, self.busy_from) {
            (true, None) => self.busy_from = Some(now),
            (false, Some(from)) => {
                self.busy += now.saturating_duration_since(from);
                self.busy_from = None;
            }
            _ => {}
        }
    }

    /// An operation finished (successfully or not).
    pub fn finished(&mut self, now: Instant) {
        self.done += 1;
        if self.done < SAMPLE {
            return;
        }
        let mut busy = self.busy;
        if let Some(from) = self.busy_from {
            busy += now.saturating_duration_since(from);
            self.busy_from = Some(now);
        }
        let sample = busy.as_secs_f64() / f64::from(self.done);
        self.cost = Some(self.cost.map_or(sample, |c| (c + sample) / 2.0));
        self.done = 0;
        self.busy = Duration::ZERO;
    }

    /// A close took `took`, from its start to its end.
    pub fn closed(&mut self, took: Duration) {
        let t = took.as_secs_f64();
        self.close = Some(self.close.map_or(t, |c| 0.9 * c + 0.1 * t));
        self.closes = (self.closes + 1).min(COLD_CLOSES);
    }

    /// How many grants may fall due within [`CLOSE_ALL_WITHIN`]: what the firewall
    /// closes in that time by the slower of its busy time per operation and a
    /// close's whole time, at most [`COLD_MOST`] until closes have been seen, never fewer than
    /// `floor` (the concurrency).
    pub fn most_due(&self, floor: usize) -> usize {
        let cold = if self.closes < COLD_CLOSES { COLD_MOST } else { usize::MAX };
        let cost = self.cost.unwrap_or(0.0).max(self.close.unwrap_or(0.0));
        if cost <= 0.0 {
            return cold.max(floor);
        }
        // (The epsilon keeps an exact quotient from rounding down.)
        ((CLOSE_ALL_WITHIN.as_secs_f64() / cost + 1e-6) as usize).min(cold).max(floor)
    }

    #[cfg(test)]
    pub fn cost(&self) -> Option<f64> {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_at_a_time_the_cost_is_each_operations_time() {
        let mut t = Instant::now();
        let mut p = Pace::new();
        assert_eq!(p.most_due(4), COLD_MOST, "cold until measured");
        for _ in 0..SAMPLE {
            p.running(1, t);
            t += 25 * MS;
            p.running(0, t);
            p.finished(t);
            t += 100 * MS; // idle time is not the firewall's
        }
        let cost = p.cost().expect("measured");
        assert!((cost - 0.025).abs() < 1e-9, "{cost}");
        // Until closes have been seen, at most COLD_MOST.
        assert_eq!(p.most_due(4), COLD_MOST);
        for _ in 0..COLD_CLOSES {
            p.closed(20 * MS);
        }
        assert_eq!(p.most_due(4), 40);
        assert_eq!(p.most_due(64), 64);
        // Closes that take longer than the firewall's busy time per operation (they
        // waited for it) bound it instead.
        for _ in 0..50 {
            p.closed(100 * MS);
        }
        assert_eq!(p.most_due(4), 10);
    }

    #[test]
    fn overlapping_operations_count_their_busy_time_once() {
        let mut t = Instant::now();
        let mut p = Pace::new();
        // Two at a time, 20 ms each: 10 ms of the firewall's time each.
        for _ in 0..SAMPLE / 2 {
            p.running(1, t);
            p.running(2, t);
            t += 20 * MS;
            p.running(1, t);
            p.finished(t);
            p.running(0, t);
            p.finished(t);
        }
        let cost = p.cost().expect("measured");
        assert!((cost - 0.010).abs() < 1e-9, "{cost}");
        for _ in 0..COLD_CLOSES {
            p.closed(MS);
        }
        assert_eq!(p.most_due(4), 100);
    }

    #[test]
    fn samples_are_smoothed() {
        let mut t = Instant::now();
        let mut p = Pace::new();
        for each in [10 * MS, 30 * MS] {
            for _ in 0..SAMPLE {
                p.running(1, t);
                t += each;
                p.running(0, t);
                p.finished(t);
            }
        }
        assert!((p.cost().unwrap() - 0.020).abs() < 1e-9);
    }
}
