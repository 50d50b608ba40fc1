//! Rate pacing for the generator: a target rate in packets per second, or flat out.
//!
//! The pacer is a token bucket anchored at the start of the run: by `elapsed` the
//! generator may have sent `floor(rate * elapsed)` frames. Being anchored (rather
//! than refilled per tick) keeps the long-run rate exact whatever the loop's jitter;
//! `max_burst` caps how much a stalled loop may catch up in one go.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A flood rate: a number of packets per second, or as fast as the generator can go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    Pps(u64),
    Max,
}

impl Rate {
    /// The rate in packets per second, `None` for flat out.
    pub fn pps(self) -> Option<u64> {
        match self {
            Rate::Pps(n) => Some(n),
            Rate::Max => None,
        }
    }

    /// Whether this rate sends no flood at all.
    pub fn is_zero(self) -> bool {
        self == Rate::Pps(0)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Pps(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `max`, or a whole number of packets per second with an optional `k` or `m`
    /// suffix (`10000`, `10k`, `1.5m`).
    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim().to_ascii_lowercase();
        if t == "max" {
            return Ok(Rate::Max);
        }
        let (num, mult) = match t.strip_suffix('k') {
            Some(n) => (n, 1e3),
            None => match t.strip_suffix('m') {
                Some(n) => (n, 1e6),
                None => (t.as_str(), 1.0),
            },
        };
        let v: f64 =
            num.parse().map_err(|_| format!("invalid rate {s:?}: expected a number of pps or 'max'"))?;
        let pps = v * mult;
        if !(0.0..=1e9).contains(&pps) || pps.fract() != 0.0 {
            return Err(format!("invalid rate {s:?}: must be a whole number of pps from 0 to 1e9, or 'max'"));
        }
        Ok(Rate::Pps(pps as u64))
    }
}

/// Parses a comma-separated list of rates (`0,1000,10k,max`).
pub fn parse_rates(s: &str) -> Result<Vec<Rate>, String> {
    let rates: Vec<Rate> =
        s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    if rates.is_empty() {
        return Err("empty list of rates".into());
    }
    Ok(rates)
}

/// Token-bucket pacing anchored at the start of the run.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: Rate,
    max_burst: u64,
}

impl Pacer {
    pub fn new(rate: Rate, max_burst: u64) -> Pacer {
        Pacer { rate, max_burst: max_burst.max(1) }
    }

    /// Frames due by `elapsed` in total (saturating; flat out: unbounded).
    pub fn due(&self, elapsed: Duration) -> u64 {
        match self.rate {
            Rate::Max => u64::MAX,
            // u128 nanoseconds: exact for any rate and run length we allow.
            Rate::Pps(r) => ((r as u128 * elapsed.as_nanos()) / 1_000_000_000) as u64,
        }
    }

    /// How many frames may be sent now, `sent` having been sent already: what is due,
    /// at most `max_burst`.
    pub fn allowed(&self, elapsed: Duration, sent: u64) -> u64 {
        self.due(elapsed).saturating_sub(sent).min(self.max_burst)
    }

    /// When (since the start) frame number `sent + 1` falls due: the time to sleep
    /// until when nothing is allowed now. `None` for a zero rate (never) and `Some(0)`
    /// for flat out.
    pub fn next_due(&self, sent: u64) -> Option<Duration> {
        match self.rate {
            Rate::Max => Some(Duration::ZERO),
            Rate::Pps(0) => None,
            Rate::Pps(r) => {
                // Smallest t (ns) with floor(r * t / 1e9) >= sent + 1.
                let need = (sent as u128 + 1) * 1_000_000_000;
                let ns = need.div_ceil(r as u128);
                Some(Duration::from_nanos(ns.min(u64::MAX as u128) as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!(" MAX ".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("0".parse::<Rate>(), Ok(Rate::Pps(0)));
        assert_eq!("20000".parse::<Rate>(), Ok(Rate::Pps(20_000)));
        assert_eq!("10k".parse::<Rate>(), Ok(Rate::Pps(10_000)));
        assert_eq!("1.5m".parse::<Rate>(), Ok(Rate::Pps(1_500_000)));
        for bad in ["", "-1", "fast", "1.5", "1e12", "nan", "0.0001k"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_rates("0,1000,10k,100000,max").unwrap(),
            vec![Rate::Pps(0), Rate::Pps(1000), Rate::Pps(10_000), Rate::Pps(100_000), Rate::Max]
        );
        assert!(parse_rates(",").is_err());
        assert!(parse_rates("1,x").is_err());
        assert_eq!(Rate::Max.to_string(), "max");
        assert_eq!(Rate::Pps(42).to_string(), "42");
    }

    #[test]
    fn due_is_anchored_and_exact() {
        let p = Pacer::new(Rate::Pps(20_000), 1 << 20);
        assert_eq!(p.due(Duration::ZERO), 0);
        assert_eq!(p.due(Duration::from_micros(49)), 0);
        assert_eq!(p.due(Duration::from_micros(50)), 1);
        assert_eq!(p.due(Duration::from_secs(1)), 20_000);
        assert_eq!(p.due(Duration::from_secs(900)), 18_000_000);
        // Odd rates do not drift: 3 pps for 10 s is exactly 30.
        assert_eq!(Pacer::new(Rate::Pps(3), 100).due(Duration::from_secs(10)), 30);
        assert_eq!(Pacer::new(Rate::Pps(0), 100).due(Duration::from_secs(10)), 0);
    }

    #[test]
    fn allowed_is_capped_and_never_negative() {
        let p = Pacer::new(Rate::Pps(1000), 64);
        assert_eq!(p.allowed(Duration::from_millis(10), 0), 10);
        assert_eq!(p.allowed(Duration::from_millis(10), 10), 0);
        assert_eq!(p.allowed(Duration::from_millis(10), 50), 0, "ahead of schedule");
        assert_eq!(p.allowed(Duration::from_secs(1), 0), 64, "burst cap after a stall");
        let max = Pacer::new(Rate::Max, 256);
        assert_eq!(max.allowed(Duration::ZERO, 1 << 40), 256);
    }

    #[test]
    fn next_due_matches_due() {
        let p = Pacer::new(Rate::Pps(7), 10);
        for sent in 0..50u64 {
            let t = p.next_due(sent).unwrap();
            assert_eq!(p.due(t), sent + 1, "at sent={sent}");
            assert_eq!(p.due(t - Duration::from_nanos(1)), sent, "at sent={sent}");
        }
        assert_eq!(Pacer::new(Rate::Pps(0), 1).next_due(0), None);
        assert_eq!(Pacer::new(Rate::Max, 1).next_due(5), Some(Duration::ZERO));
        assert_eq!(Pacer::new(Rate::Pps(20_000), 1).next_due(0), Some(Duration::from_micros(50)));
    }
}
