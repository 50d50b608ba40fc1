//! A mini benchmark run end to end against sesamed: 10 legitimate knockers during a
//! 3-second flood at 50,000 pps aimed at the first knock port.

use sesame_bench::gen::{FloodMode, FloodProto};
use sesame_bench::pacing::Rate;
use sesame_bench::report::{read_results, write_results};
use sesame_bench::run::{find_sesamed, run_once, RunConfig};
use sesame_lab::TempDir;
use std::path::PathBuf;

#[test]
fn ten_knockers_get_through_a_first_port_flood() {
    if !sesame_lab::require_root("ten_knockers_get_through_a_first_port_flood") {
        return;
    }
    let test_exe = std::env::current_exe().unwrap();
    let Some(sesamed) = find_sesamed(&test_exe) else {
        eprintln!(
            "SKIPPED: no sesamed next to {} (run `cargo build` first; `cargo test --workspace` builds it)",
            test_exe.display()
        );
        return;
    };
    let mut cfg = RunConfig::new(sesamed, PathBuf::from(env!("CARGO_BIN_EXE_sesame-bench")));
    cfg.flood = FloodMode::FirstPort;
    cfg.proto = FloodProto::Syn;
    cfg.rate = Rate::Pps(50_000);
    cfg.duration = 3.0;
    cfg.legit = 10;
    let out = TempDir::new("sbe").unwrap();
    cfg.keep_logs = Some(out.join("logs"));
    cfg.verbose = true;
    let r = run_once(&cfg).unwrap();
    eprintln!("{}", sesame_bench::run::summary_line(&r));
    assert_eq!(r.daemon, "sesamed");
    assert_eq!(r.legit_sent, 10);
    assert_eq!(r.legit_succeeded, 10, "{r:#?}");
    assert_eq!(r.unexpected_commands, 0);
    let lat = r.latency_ms.as_ref().expect("latency recorded");
    assert_eq!(lat.samples, 10);
    assert!(lat.p50 > 0.0 && lat.p50 <= lat.p99 && lat.p99 <= lat.max && lat.max < 5000.0, "{lat:?}");
    assert!(r.offered_pps > 40_000.0, "{r:#?}");
    assert!(r.delivered_packets > 0 && r.cpu_seconds >= 0.0);
    assert!(r.peak_rss_kib.unwrap_or(0) > 0);
    assert!(!r.rss_series_kib.is_empty());
    assert!(r.daemon_exit.contains("exit status: 0"), "{}", r.daemon_exit);

    let json = out.join("results.json");
    write_results(&json, std::slice::from_ref(&r)).unwrap();
    assert_eq!(read_results(&json).unwrap(), vec![r.clone()]);
    let svg = out.join("chart.svg");
    sesame_bench::chart::write_svg(&svg, &[r]).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "{}", &text[..text.len().min(300)]);
}
