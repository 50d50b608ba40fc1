//! A token bucket for per-packet log lines, so a flood cannot flood the log.

use crate::matcher::Secs;

/// `rate` lines per second, bursts of one second's worth; what it refuses is counted.
pub(crate) struct Limiter {
    rate: u32,
    tokens: u32,
    refilled: Secs,
    pub(crate) suppressed: u64,
}

impl Limiter {
    /// `rate` 0 means no limit.
    pub(crate) fn new(rate: u32) -> Limiter {
        Limiter { rate, tokens: rate, refilled: 0, suppressed: 0 }
    }

    pub(crate) fn allow(&mut self, now: Secs) -> bool {
        if self.rate == 0 {
            return true;
        }
        if now != self.refilled {
            self.refilled = now;
            self.tokens = self.rate;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_its_rate_per_second_and_counts_the_rest() {
        let mut l = Limiter::new(3);
        let allowed = (0..10).filter(|_| l.allow(100)).count();
        assert_eq!((allowed, l.suppressed), (3, 7));
        // A new second refills the bucket.
        assert!(l.allow(101));
        assert_eq!((0..10).filter(|_| l.allow(101)).count(), 2);
        assert_eq!(l.suppressed, 15);
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut l = Limiter::new(0);
        assert!((0..10_000).all(|_| l.allow(1)));
        assert_eq!(l.suppressed, 0);
    }
}
