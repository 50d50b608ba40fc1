//! What one run measured, as written to `results.json`, and the latency summary.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Knock-to-command latency percentiles, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The p50/p99/max of `samples` (recorded in microseconds, 3 significant figures);
/// `None` without samples.
pub fn latency_summary(samples: &[Duration]) -> Option<LatencyMs> {
    if samples.is_empty() {
        return None;
    }
    // 1 µs .. 1 hour; longer values are clamped (a command never takes an hour here).
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    for s in samples {
        h.saturating_record((s.as_micros() as u64).max(1));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(LatencyMs {
        samples: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    })
}

/// One run: one daemon, one flood mode and rate, a fresh lab.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The daemon's file name (`sesamed`, `knockd`).
    pub daemon: String,
    pub daemon_path: String,
    pub daemon_args: Vec<String>,
    /// `first-port`, `random-ports`, `mixed` or `none`.
    pub flood: String,
    /// `syn` or `udp`.
    pub proto: String,
    /// The rate asked for: a number of pps, or `"max"`.
    pub target_rate: String,
    /// The rate asked for in pps, `null` for `max`.
    pub target_pps: Option<u64>,
    /// How long the generator ran, in seconds.
    pub duration_s: f64,
    /// Frames the generator sent (flood and legitimate) and their rate.
    pub offered_packets: u64,
    pub offered_pps: f64,
    /// Flood frames the generator sent per second, summed over its flood threads: the
    /// flood rate actually reached (flat out, what the generator's cores managed).
    #[serde(default)]
    pub flood_sent_pps: f64,
    /// Flood threads (cores) the generator used (`--gen-cpus`).
    #[serde(default = "one")]
    pub gen_cpus: u32,
    /// Frames the server's veth received (`rx_packets` delta) and their rate: what
    /// reached the daemon's side.
    pub delivered_packets: u64,
    pub delivered_pps: f64,
    /// `rx_dropped` delta of the server's veth.
    pub server_rx_dropped: u64,
    pub legit_sent: u64,
    pub legit_succeeded: u64,
    pub legit_success_pct: f64,
    /// Knock-to-command latency of the successful knocks; `null` without any.
    pub latency_ms: Option<LatencyMs>,
    /// Daemon user+system CPU seconds while the traffic ran (from its start to the end
    /// of the success window), and as a percentage of one core over that time.
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// From the daemon's shutdown `stats:` line; `null` when it logs none (knockd).
    pub kernel_drops: Option<u64>,
    pub evictions: Option<u64>,
    pub daemon_stats: Option<BTreeMap<String, u64>>,
    /// Whether the daemon exited by itself within 10 s of SIGTERM, and its status.
    pub daemon_exit: String,
    /// Bytes the daemon wrote to its LogFile during the run.
    pub daemon_log_bytes: u64,
    /// Commands that ran for an address that is no legitimate knocker (should be 0).
    pub unexpected_commands: u64,
    /// `VmRSS` sampled once a second: `[seconds since the daemon started, KiB]`.
    pub rss_series_kib: Vec<(f64, u64)>,
    /// Last `VmRSS` sample minus the first one taken 60 s or more after the daemon
    /// started (the RSS-flatness check of long runs); `null` for runs under a minute.
    pub rss_growth_after_60s_kib: Option<i64>,
    /// `RssAnon` (heap, stacks, tables; not program text paged in on first use)
    /// sampled with `rss_series_kib`.
    #[serde(default)]
    pub rss_anon_series_kib: Vec<(f64, u64)>,
    /// The same growth measure over `rss_anon_series_kib`.
    #[serde(default)]
    pub rss_anon_growth_after_60s_kib: Option<i64>,
    /// The generator's own counters.
    pub generator: GenSummary,
}

fn one() -> u32 {
    1
}

/// The generator's counters as kept in the results (the per-knocker detail is not).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenSummary {
    /// Summed over the flood threads.
    pub flood_sent: u64,
    pub legit_frames_sent: u64,
    pub elapsed_s: f64,
    /// Times the flood ring was full and the generator had to wait for the kernel.
    pub ring_full_waits: u64,
    /// Frames the flood's TX ring reported as not sent (wrong format / errors).
    pub tx_errors: u64,
    /// Each flood thread: its core, its share of the rate, frames sent, CPU seconds.
    #[serde(default)]
    pub flood_threads: Vec<crate::gen::FloodThreadReport>,
}

impl RunResult {
    /// Flood frames sent per second: `flood_sent_pps`, or for results written before
    /// it existed, the generator's flood count over its time.
    pub fn flood_pps(&self) -> f64 {
        if self.flood_sent_pps > 0.0 || self.generator.elapsed_s <= 0.0 {
            self.flood_sent_pps
        } else {
            (self.generator.flood_sent as f64 / self.generator.elapsed_s).round()
        }
    }

    /// The x-axis label of this run's rate: `max` or a short number (`10k`, `1.5M`).
    pub fn rate_label(&self) -> String {
        match self.target_pps {
            None => "max".into(),
            Some(n) => short_count(n),
        }
    }
}

/// The last sample minus the first sample taken at or after `after_s` seconds;
/// `None` when no sample is that late.
pub fn rss_growth_after(series: &[(f64, u64)], after_s: f64) -> Option<i64> {
    let from = series.iter().find(|(t, _)| *t >= after_s)?.1;
    let last = series.last()?.1;
    Some(last as i64 - from as i64)
}

/// `950`, `10k`, `1.5M`: a count in few characters.
pub fn short_count(n: u64) -> String {
    fn trim(v: f64) -> String {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    }
    if n >= 1_000_000 {
        format!("{}M", trim(n as f64 / 1e6))
    } else if n >= 1000 {
        format!("{}k", trim(n as f64 / 1e3))
    } else {
        n.to_string()
    }
}

/// Writes `runs` as a pretty JSON array to `path` (through a temporary file, so a
/// reader never sees half a file).
pub fn write_results(path: &Path, runs: &[RunResult]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(runs)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads a `results.json` written by [`write_results`].
pub fn read_results(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[cfg(test)]
pub(crate) fn sample_run(daemon: &str, rate: Option<u64>, ok: u64, cpu: f64) -> RunResult {
    RunResult {
        daemon: daemon.into(),
        daemon_path: format!("/x/{daemon}"),
        daemon_args: vec![],
        flood: "first-port".into(),
        proto: "syn".into(),
        target_rate: rate.map(|r| r.to_string()).unwrap_or("max".into()),
        target_pps: rate,
        duration_s: 10.0,
        offered_packets: 100,
        offered_pps: 10.0,
        flood_sent_pps: 9.0,
        gen_cpus: 1,
        delivered_packets: 100,
        delivered_pps: 10.0,
        server_rx_dropped: 0,
        legit_sent: 50,
        legit_succeeded: ok,
        legit_success_pct: ok as f64 * 2.0,
        latency_ms: latency_summary(&[Duration::from_millis(3)]),
        cpu_seconds: cpu,
        cpu_percent: cpu * 10.0,
        peak_rss_kib: Some(4096),
        kernel_drops: Some(0),
        evictions: None,
        daemon_stats: None,
        daemon_exit: "exit status: 0".into(),
        unexpected_commands: 0,
        daemon_log_bytes: 0,
        rss_series_kib: vec![(0.0, 1000), (1.0, 1200)],
        rss_growth_after_60s_kib: None,
        rss_anon_series_kib: vec![(0.0, 800), (1.0, 900)],
        rss_anon_growth_after_60s_kib: None,
        generator: GenSummary::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_samples() {
        assert_eq!(latency_summary(&[]), None);
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = latency_summary(&samples).unwrap();
        assert_eq!(l.samples, 100);
        // 3 significant figures: within 0.1 % of the exact order statistics.
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        let one = latency_summary(&[Duration::from_micros(1500)]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (1.5, 1.5, 1.5));
        // Sub-microsecond values count as 1 µs instead of being lost.
        assert_eq!(latency_summary(&[Duration::ZERO]).unwrap().max, 0.001);
    }

    #[test]
    fn rss_growth_after_the_first_minute() {
        let series: Vec<(f64, u64)> =
            (0..=120).map(|t| (t as f64 + 0.01, 1000 + t.min(60) as u64 * 10)).collect();
        assert_eq!(rss_growth_after(&series, 60.0), Some(0), "flat after the first minute");
        let growing: Vec<(f64, u64)> = (0..=120).map(|t| (t as f64, 1000 + t as u64)).collect();
        assert_eq!(rss_growth_after(&growing, 60.0), Some(60));
        let shrinking = [(0.0, 500), (61.0, 900), (90.0, 800)];
        assert_eq!(rss_growth_after(&shrinking, 60.0), Some(-100));
        assert_eq!(rss_growth_after(&series[..30], 60.0), None);
        assert_eq!(rss_growth_after(&[], 60.0), None);
    }

    #[test]
    fn short_counts() {
        assert_eq!(short_count(0), "0");
        assert_eq!(short_count(950), "950");
        assert_eq!(short_count(10_000), "10k");
        assert_eq!(short_count(1_500), "1.5k");
        assert_eq!(short_count(1_000_000), "1M");
        assert_eq!(short_count(2_340_000), "2.3M");
    }

    #[test]
    fn json_schema_round_trips_and_has_the_documented_fields() {
        let runs = vec![sample_run("sesamed", None, 50, 1.5), sample_run("knockd", Some(10_000), 20, 9.0)];
        let dir = std::env::temp_dir().join(format!("sesame-bench-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.json");
        write_results(&path, &runs).unwrap();
        assert_eq!(read_results(&path).unwrap(), runs);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let first = &v.as_array().unwrap()[0];
        for key in [
            "daemon",
            "flood",
            "target_rate",
            "offered_pps",
            "flood_sent_pps",
            "gen_cpus",
            "delivered_pps",
            "legit_sent",
            "legit_succeeded",
            "latency_ms",
            "cpu_seconds",
            "peak_rss_kib",
            "kernel_drops",
            "evictions",
            "rss_series_kib",
        ] {
            assert!(first.get(key).is_some(), "missing {key}");
        }
        assert_eq!(first["target_rate"], "max");
        assert!(first["target_pps"].is_null());
        assert!(first["evictions"].is_null());
        // 3 ms, within the histogram's 3 significant figures.
        assert!((first["latency_ms"]["p50"].as_f64().unwrap() - 3.0).abs() < 0.005);
        assert_eq!(first["rss_series_kib"][1], serde_json::json!([1.0, 1200]));
        assert_eq!(runs[0].rate_label(), "max");
        // Results from before `flood_sent_pps` and `gen_cpus`: the rate from the
        // generator's counts, one core.
        let mut old = first.clone();
        let o = old.as_object_mut().unwrap();
        o.remove("flood_sent_pps");
        o.remove("gen_cpus");
        o["generator"]["flood_sent"] = serde_json::json!(5000);
        o["generator"]["elapsed_s"] = serde_json::json!(2.0);
        let old: RunResult = serde_json::from_value(old).unwrap();
        assert_eq!((old.gen_cpus, old.flood_sent_pps, old.flood_pps()), (1, 0.0, 2500.0));
        assert_eq!(runs[0].flood_pps(), 9.0);
        assert_eq!(runs[1].rate_label(), "10k");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
