//! The generator alone in a lab: a paced flood reaches the server's veth at the rate
//! asked for, and the generator stops by itself.

use sesame_bench::gen::{FloodMode, FloodProto, GenConfig};
use sesame_bench::pacing::Rate;
use sesame_bench::run::{iface_counter, iface_mac, Generator};
use sesame_lab::Lab;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn paced_flood_arrives_and_stops_by_itself() {
    if !sesame_lab::require_root("paced_flood_arrives_and_stops_by_itself") {
        return;
    }
    let lab = Lab::new("bg").unwrap();
    let cfg = GenConfig {
        iface: lab.client_if.clone(),
        src_mac: iface_mac(&lab.client, &lab.client_if).unwrap(),
        dst_mac: iface_mac(&lab.server, &lab.server_if).unwrap(),
        dst_ip: lab.server_v4,
        dst_ip6: Some(lab.server_v6),
        v6_share: 0.25,
        flood: FloodMode::Mixed,
        proto: FloodProto::Syn,
        rate: Rate::Pps(20_000),
        duration: 2.0,
        ports: vec![7000, 8000, 9000],
        legit: 5,
        knock_gap_ms: 2,
        seed: Some(42),
        batch: 128,
    };
    let rx0 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    let started = Instant::now();
    let exe = Path::new(env!("CARGO_BIN_EXE_sesame-bench"));
    let gen = Generator::start(&lab, exe, &cfg, Some(sesame_bench::stats::first_allowed_cpu())).unwrap();
    // It must stop by itself: finish() kills it and fails after the timeout.
    let report = gen.finish(Duration::from_secs(15)).unwrap();
    let took = started.elapsed();
    let rx1 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    assert!(took < Duration::from_secs(8), "the generator took {took:?} for a 2 s run");
    assert!((1.9..3.0).contains(&report.elapsed_s), "{report:?}");
    let offered = report.flood_sent + report.legit_frames_sent;
    assert!((36_000..=44_000).contains(&report.flood_sent), "flood at 20k pps for 2 s: {report:?}");
    assert_eq!(report.legit_frames_sent, 15, "5 knockers x 3 knocks");
    assert!(report.knockers.iter().all(|k| k.knocks_sent == 3 && k.last_knock_ns >= k.first_knock_ns));
    let delivered = rx1 - rx0;
    let ratio = delivered as f64 / offered as f64;
    assert!((0.9..=1.1).contains(&ratio), "delivered {delivered} of {offered} offered ({ratio:.3})");
    // Nothing more arrives once it has stopped.
    std::thread::sleep(Duration::from_millis(300));
    let rx2 = iface_counter(&lab.server, &lab.server_if, "rx_packets").unwrap();
    assert!(rx2 - rx1 < 50, "{} frames after the generator stopped", rx2 - rx1);
}
