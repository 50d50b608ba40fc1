//! The generator alone in a lab: a paced flood reaches the server's veth at the rate
//! asked for, from one flood thread or split over two, and the generator stops by
//! itself.

use sesame_bench::gen::{FloodMode, FloodProto, GenConfig, GenReport};
use sesame_bench::pacing::Rate;
use sesame_bench::run::{iface_counter, iface_mac, Generator};
use sesame_lab::Lab;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(lab: &Lab, rate: Rate, duration: f64, legit: u32, gen_cpus: u32) -> GenConfig {
    GenConfig {
        iface: lab.client_if.clone(),
        src_mac: iface_mac(&lab.client, &lab.client_if).unwrap(),
        dst_mac: iface_mac(&lab.server, &lab.server_if).unwrap(),
        dst_ip: lab.server_v4,
        dst_ip6: Some(lab.server_v6),
        v6_share: 0.25,
        flood: FloodMode::Mixed,
        proto: FloodProto::Syn,
        rate,
        duration,
        ports: vec![7000, 8000, 9000],
        legit,
        knock_gap_ms: 2,
        seed: Some(42),
        batch: 128,
        gen_cpus,
        pin_cpus: Vec::new(),
    }
}

/// Runs the generator once in `lab` (pinned from the first allowed core on); returns
/// its report, the frames the server's veth received meanwhile, and how long it took.
fn run_gen(lab: &Lab, cfg: &GenConfig) -> (GenReport, u64, Duration) {
    let rx0 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    let started = Instant::now();
    let exe = Path::new(env!("CARGO_BIN_EXE_sesame-bench"));
    let gen = Generator::start(lab, exe, cfg, Some(sesame_bench::stats::first_allowed_cpu())).unwrap();
    // It must stop by itself: finish() kills it and fails after the timeout.
    let report = gen.finish(Duration::from_secs_f64(cfg.duration) + Duration::from_secs(13)).unwrap();
    let took = started.elapsed();
    let rx1 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    (report, rx1 - rx0, took)
}

/// Checks a paced 2 s run of 20k pps with 5 knockers, then that nothing more arrives.
fn check_paced_run(lab: &Lab, gen_cpus: u32) -> GenReport {
    let cfg = config(lab, Rate::Pps(20_000), 2.0, 5, gen_cpus);
    let (report, delivered, took) = run_gen(lab, &cfg);
    assert!(took < Duration::from_secs(8), "the generator took {took:?} for a 2 s run");
    assert!((1.9..3.0).contains(&report.elapsed_s), "{report:?}");
    let offered = report.flood_sent + report.legit_frames_sent;
    assert!((36_000..=44_000).contains(&report.flood_sent), "flood at 20k pps for 2 s: {report:?}");
    assert_eq!(report.legit_frames_sent, 15, "5 knockers x 3 knocks");
    assert!(report.knockers.iter().all(|k| k.knocks_sent == 3 && k.last_knock_ns >= k.first_knock_ns));
    assert_eq!(report.gen_cpus, gen_cpus);
    assert_eq!(report.flood_threads.len(), gen_cpus as usize, "{report:?}");
    assert_eq!(report.flood_threads.iter().map(|t| t.sent).sum::<u64>(), report.flood_sent);
    let ratio = delivered as f64 / offered as f64;
    assert!((0.9..=1.1).contains(&ratio), "delivered {delivered} of {offered} offered ({ratio:.3})");
    // Nothing more arrives once it has stopped.
    let rx1 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rx2 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    assert!(rx2 - rx1 < 50, "{} frames after the generator stopped", rx2 - rx1);
    report
}

#[test]
fn paced_flood_arrives_and_stops_by_itself() {
    if !sesame_lab::require_root("paced_flood_arrives_and_stops_by_itself") {
        return;
    }
    let lab = Lab::new("bg").unwrap();
    let report = check_paced_run(&lab, 1);
    assert_eq!(report.flood_threads[0].rate, "20000");
}

#[test]
fn two_flood_threads_split_the_rate() {
    if !sesame_lab::require_root("two_flood_threads_split_the_rate") {
        return;
    }
    let lab = Lab::new("bg2").unwrap();
    let report = check_paced_run(&lab, 2);
    // Each thread sends its half, from its own ring, on its own core when there are two.
    let t = &report.flood_threads;
    assert_eq!((t[0].rate.as_str(), t[1].rate.as_str()), ("10000", "10000"));
    for th in t {
        assert!((18_000..=22_000).contains(&th.sent), "10k pps for 2 s: {report:?}");
    }
    let allowed = sesame_bench::stats::allowed_cpus();
    let first = sesame_bench::stats::first_allowed_cpu();
    assert_eq!(t[0].cpu, Some(first));
    if allowed.len() >= 2 {
        assert_ne!(t[0].cpu, t[1].cpu, "{report:?}");
    }
}

/// Flat out from one flood thread and from two, the generator alone on the veth (no
/// daemon): prints what each sent and what the server's veth received. A measurement,
/// not a check: `cargo test -p sesame-bench --release --test generator_lab -- --ignored
/// --nocapture` (SESAME_GEN_SECS sets the seconds per run, default 5, at most 30).
#[test]
#[ignore]
fn flat_out_one_and_two_flood_threads() {
    if !sesame_lab::require_root("flat_out_one_and_two_flood_threads") {
        return;
    }
    let secs: f64 = std::env::var("SESAME_GEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let secs = secs.clamp(0.5, 30.0);
    let lab = Lab::new("bgm").unwrap();
    for gen_cpus in [1, 2, 1, 2] {
        let cfg = GenConfig {
            v6_share: 0.5,
            flood: FloodMode::FirstPort,
            ..config(&lab, Rate::Max, secs, 0, gen_cpus)
        };
        let drop0 = iface_counter(&lab.server, &lab.server_if, "rx_dropped").unwrap();
        let (report, delivered, _) = run_gen(&lab, &cfg);
        let drop1 = iface_counter(&lab.server, &lab.server_if, "rx_dropped").unwrap();
        let e = report.elapsed_s;
        let threads: Vec<String> = report
            .flood_threads
            .iter()
            .map(|t| {
                format!(
                    "cpu {:?}: {:.0} pps, {:.2} cpu s",
                    t.cpu,
                    t.sent as f64 / t.elapsed_s,
                    t.cpu_s.unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "gen-cpus {gen_cpus}: sent {:.0} pps, server veth received {:.0} pps (rx_dropped {}), {:.2} s [{}]",
            report.flood_sent as f64 / e,
            delivered as f64 / e,
            drop1 - drop0,
            e,
            threads.join("; ")
        );
        assert!(report.flood_sent > 0 && delivered > 0, "{report:?}");
    }
}
