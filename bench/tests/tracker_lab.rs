//! A full tracker table under a spoofed-source flood: it stays at its fixed capacity,
//! memory does not grow, and legitimate knockers still get through.
//!
//! sesamed runs with one worker and a 9 MiB budget: the worker's 8 MiB ring leaves
//! 1 MiB of table (8,192 buckets of 5 slots), far fewer slots than the flood has
//! sources, so the table is full and evicting for most of the run.

use sesame_bench::gen::{FloodMode, FloodProto};
use sesame_bench::pacing::Rate;
use sesame_bench::run::{find_sesamed, run_once, RunConfig};
use sesame_lab::TempDir;
use std::path::PathBuf;

#[test]
fn full_table_stays_at_capacity_and_lets_knockers_through() {
    if !sesame_lab::require_root("full_table_stays_at_capacity_and_lets_knockers_through") {
        return;
    }
    let test_exe = std::env::current_exe().unwrap();
    let Some(sesamed) = find_sesamed(&test_exe) else {
        panic!("no sesamed next to {}: `cargo build` builds it", test_exe.display());
    };
    let mut cfg = RunConfig::new(sesamed, PathBuf::from(env!("CARGO_BIN_EXE_sesame-bench")));
    cfg.daemon_args = ["--workers", "1", "--memory-mib", "9"].map(String::from).to_vec();
    cfg.flood = FloodMode::FirstPort;
    cfg.proto = FloodProto::Syn;
    cfg.rate = Rate::Pps(60_000);
    cfg.duration = 4.0;
    cfg.legit = 20;
    let out = TempDir::new("trk").unwrap();
    cfg.keep_logs = Some(out.join("logs"));
    cfg.verbose = true;
    let r = run_once(&cfg).unwrap();
    eprintln!("{}", sesame_bench::run::summary_line(&r));
    let stats = r.daemon_stats.clone().expect("sesamed prints its stats line");
    let (used, slots) = (stats["tracker_used"], stats["tracker_slots"]);
    assert_eq!(slots, 8192 * 5, "the table is sized from the budget: {stats:?}");
    assert!(used <= slots, "{stats:?}");
    // Evictions happen only in a full bucket; the table's use at shutdown is lower, as
    // the flood's attempts time out once it stops.
    assert!(used * 2 >= slots, "the flood filled the table: {stats:?}");
    assert!(stats["evictions"] > slots, "the table turned over at least once: {stats:?}");
    assert_eq!(stats["kernel_drops"], 0, "{stats:?}");
    assert_eq!(r.legit_succeeded, r.legit_sent, "a full table must not keep out real knockers: {r:#?}");
    // The flood's Stage lines are rate-limited and summarised; OPEN SESAME never is.
    let logs = out.join("logs");
    let log_path = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("the daemon's log was kept");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(stats["log_suppressed"] > 0, "{stats:?}");
    assert!(log.contains("rate limit: suppressed"), "no summary of suppressed lines in the log");
    let opens = log.lines().filter(|l| l.ends_with(": OPEN SESAME")).count();
    assert_eq!(opens as u64, r.legit_sent, "every OPEN SESAME is logged");
    let stages = log.lines().filter(|l| l.contains(": Stage ")).count();
    // 200 lines a second by default, over a run of well under 15 seconds.
    assert!(stages < 200 * 15, "{stages} Stage lines: the rate limit did not hold");
    // Memory is allocated up front: no growth once running, whatever the flood does.
    let first = r.rss_series_kib.first().expect("RSS sampled").1;
    let peak = r.rss_series_kib.iter().map(|&(_, kib)| kib).max().unwrap();
    assert!(peak <= first + 1024, "RSS grew from {first} KiB to {peak} KiB: {:?}", r.rss_series_kib);
    assert!(r.peak_rss_kib.unwrap() < (9 + 16) * 1024, "RSS {:?} KiB over budget + 16 MiB", r.peak_rss_kib);
}
