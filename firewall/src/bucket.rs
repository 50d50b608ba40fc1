//! The token bucket that limits firewall operations, all doors together.
//!
//! Kept as GCRA (a "theoretical arrival time" instead of a token count) in whole
//! nanoseconds: no floating-point drift, and the guarantee is exact: in any window of
//! length `w`, at most `burst + rate * w` operations are let through. Time is passed
//! in, so it is tested without sleeping.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Time one token takes to come back: 1 / rate.
    interval: Duration,
    /// How far ahead of time the bucket may run: (burst - 1) intervals.
    tolerance: Duration,
    /// When the bucket would be back to full, had no token been taken early.
    tat: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` tokens per second, at most `burst` at once (both at least 1).
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
        TokenBucket { interval, tolerance: interval * (burst.max(1) - 1), tat: now }
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_leaving(now, 0)
    }

    /// Takes a token if one is there at `now` with `reserve` more left behind it.
    pub fn try_take_leaving(&mut self, now: Instant, reserve: u32) -> bool {
        if now < self.ready_at_leaving(reserve) {
            return false;
        }
        self.tat = self.tat.max(now) + self.interval;
        true
    }

    /// When the next token is there (`<= now` if it is already).
    pub fn ready_at(&self) -> Instant {
        self.ready_at_leaving(0)
    }

    /// When a token is there with `reserve` more behind it.
    pub fn ready_at_leaving(&self, reserve: u32) -> Instant {
        let early = self.tolerance.saturating_sub(self.interval * reserve);
        self.tat.checked_sub(early).unwrap_or(self.tat)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bucket's promise, checked from the times operations were let through.
    pub(crate) fn assert_within_limits(times: &[Instant], rate: u32, burst: u32) {
        for i in 0..times.len() {
            for j in i..times.len() {
                let w = times[j] - times[i];
                let allowed = f64::from(burst) + f64::from(rate) * w.as_secs_f64();
                let n = (j - i + 1) as f64;
                assert!(n <= allowed + 1e-9, "{n} operations in {w:?} (rate {rate}, burst {burst})");
            }
        }
    }

    #[test]
    fn burst_at_once_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        let now_ok = (0..8).filter(|_| b.try_take(t0)).count();
        assert_eq!(now_ok, 5, "a full bucket lets `burst` through at one instant, no more");
        assert_eq!(b.ready_at(), t0 + Duration::from_millis(100));
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn sustained_rate_never_exceeds_the_limit() {
        // Greedy taker polling every millisecond for 10 s of simulated time.
        let t0 = Instant::now();
        let (rate, burst) = (100, 20);
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut times = Vec::new();
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            while b.try_take(now) {
                times.push(now);
            }
        }
        // 20 at once, then one every 10 ms: 20 + 999 (the last at 9.99 s).
        assert_eq!(times.len(), 20 + 999);
        assert_within_limits(&times, rate, burst);
    }

    #[test]
    fn a_reserve_stays_for_others() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 6, t0);
        // Three of six may go while three stay behind; the rest is the others'.
        assert_eq!((0..10).filter(|_| b.try_take_leaving(t0, 3)).count(), 3);
        assert_eq!(b.ready_at_leaving(3), t0 + Duration::from_millis(100));
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 3);
        assert!(!b.try_take(t0));
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_further() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 3, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }
}
