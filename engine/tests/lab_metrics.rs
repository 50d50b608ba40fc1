//! `--metrics-listen` against a real Prometheus: sesamed serves `/metrics` and
//! `/healthz` in a lab namespace, a Prometheus in the same namespace scrapes it every
//! second, and its HTTP API must then show every series sesame documents, with the
//! sequences completed equal to the correct knocks sent and those failed equal to the
//! wrong ones (by reason). `promtool check metrics` must accept a scrape, and the alert
//! rules in `grafana/sesame-alerts.yml` must load and evaluate cleanly, and every query
//! of `grafana/sesame-dashboard.json` must return data.
//!
//! Then a short flood over the veth (first knocks from spoofed sources of
//! 198.19.0.0/16, each followed by a wrong port) must put the flood and scan alerts
//! into `pending` or `firing` in Prometheus' `/api/v1/alerts` while it lasts; before
//! it, no alert is pending or firing.
//!
//! Needs `prometheus` (with `promtool`), `curl` and `python3` (`scripts/quickstart
//! test` installs them). Namespaces, addresses (198.18.0.0/15, 2001:db8::/32) and processes are the
//! test's own and go away with its guards, also when it fails.

mod common;

use common::*;
use sesame_lab::{wait_until, ChildGuard, Lab, Netns, TempDir};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:9105";
const PROMETHEUS: &str = "127.0.0.1:9190";
/// The alert rules shipped with sesame, loaded into the test's Prometheus.
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/sesame-alerts.yml");
/// The Grafana dashboard shipped with sesame: each of its queries must work.
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/sesame-dashboard.json");

/// Every series of the issue, as Prometheus stores them (histograms by their `_count`).
const SERIES: &[&str] = &[
    "sesame_build_info",
    "sesame_capture_packets_total",
    "sesame_capture_drops_total",
    "sesame_packets_malformed_total",
    "sesame_knock_stages_total",
    "sesame_attempts_started_total",
    "sesame_sequences_completed_total",
    "sesame_sequences_failed_total",
    "sesame_tracker_slots",
    "sesame_tracker_used",
    "sesame_tracker_evictions_total",
    "sesame_tracker_rejected_total",
    "sesame_grants_open",
    "sesame_grants_total",
    "sesame_firewall_operations_total",
    "sesame_firewall_queue_depth",
    "sesame_knock_to_open_seconds_count",
    "sesame_firewall_operation_duration_seconds_count",
    "sesame_log_lines_suppressed_total",
    "sesame_config_reloads_total",
];

/// `curl -sf ARGS` inside `ns`; its stdout, or `None` if it failed.
fn curl(ns: &Netns, args: &[&str]) -> Option<String> {
    let out =
        ns.command("curl").args(["-sf", "--max-time", "5"]).args(args).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The values of an instant query's result vector, in order (`"value":[TS,"V"]`).
fn query(ns: &Netns, promql: &str) -> Option<Vec<f64>> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let body = curl(ns, &["--get", "--data-urlencode", &format!("query={promql}"), &url])?;
    if !body.contains("\"status\":\"success\"") {
        return None;
    }
    let mut values = Vec::new();
    for part in body.split("\"value\":[").skip(1) {
        let v = part.split('"').nth(1)?;
        values.push(v.parse().ok()?);
    }
    Some(values)
}

/// The single value of `promql`, if Prometheus has it.
fn scalar(ns: &Netns, promql: &str) -> Option<f64> {
    query(ns, promql).and_then(|v| v.first().copied())
}

/// Every alert in Prometheus' `/api/v1/alerts` (pending or firing) as (name, state).
fn alerts(ns: &Netns) -> Option<Vec<(String, String)>> {
    let body = curl(ns, &[&format!("http://{PROMETHEUS}/api/v1/alerts")])?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let list = v["data"]["alerts"].as_array()?;
    Some(
        list.iter()
            .map(|a| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (s(&a["labels"]["alertname"]), s(&a["state"]))
            })
            .collect(),
    )
}

/// The alert rules of the flood and of the scan (`grafana/sesame-alerts.yml`).
const FLOOD_ALERTS: [&str; 2] = ["SesameKnockFlood", "SesameKnockScan"];
/// Spoofed sources in the flood; each sends a first knock, then a wrong port.
const FLOOD_SOURCES: u32 = 30_000;
/// Packets per second the flood is paced at (so it lasts 20 s at least), and the
/// longest it may run.
const FLOOD_RATE: u32 = 3_000;
const FLOOD_MAX: Duration = Duration::from_secs(90);

/// Sends the 40-byte IPv4 packets laid end to end in the file argv[1] through a raw
/// socket (its own IP headers, so spoofed sources) to argv[2], at most argv[3] per
/// second, stopping after argv[4] seconds at the latest.
const FLOOD_PY: &str = r#"import socket, sys, time
data = open(sys.argv[1], 'rb').read()
dst, rate, limit = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
start = time.monotonic()
for i in range(len(data) // 40):
    s.sendto(data[40 * i:40 * (i + 1)], (dst, 0))
    if i % 50 == 49:
        now = time.monotonic()
        if now - start > limit:
            break
        ahead = start + (i + 1) / rate - now
        if ahead > 0:
            time.sleep(ahead)
print(i + 1, 'packets in', round(time.monotonic() - start, 1), 's')
"#;

#[test]
fn prometheus_scrapes_every_series_and_counts_correct_and_wrong_knocks() {
    if !sesame_lab::require_root("prometheus_scrapes_every_series_and_counts_correct_and_wrong_knocks") {
        return;
    }
    for tool in ["prometheus", "promtool", "curl", "python3"] {
        assert!(
            sesame_lab::which(tool).is_some(),
            "{tool} is missing: `scripts/quickstart test` installs it (apt: prometheus, curl)"
        );
    }
    let lab = Lab::new("mtr").unwrap();
    let dir = TempDir::new("mtr").unwrap();
    let out = dir.join("out");
    let grants = dir.join("grants");
    let log = dir.join("sesamed.log");
    let conf = dir.join("knockd.conf");
    std::fs::write(
        &conf,
        format!(
            "[options]\nLogFile = {}\n\n[open]\nsequence = 7000,8000,9000\nseq_timeout = 2\ntcpflags = syn\n\
             command = echo open %IP% >> {}\n\n[grant]\nsequence = 6000,6001\nseq_timeout = 2\ntcpflags = syn\n\
             start_command = echo start %IP% >> {g}\nstop_command = echo stop %IP% >> {g}\ncmd_timeout = 4\n",
            log.display(),
            out.display(),
            g = grants.display()
        ),
    )
    .unwrap();

    let prom_conf = dir.join("prometheus.yml");
    std::fs::write(
        &prom_conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {RULES}\n\
             scrape_configs:\n  - job_name: sesame\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut cmd = lab.server.command("/usr/bin/prometheus");
    cmd.arg(format!("--config.file={}", prom_conf.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(prom_log.try_clone().unwrap())
        .stderr(prom_log);
    // Killed by its guard (and with the namespace) whatever happens.
    let mut prometheus = ChildGuard::spawn(&mut cmd).unwrap();
    let prom_diag = || read(&dir.join("prometheus.log"));

    let mut daemon = Daemon::start(
        &lab.server,
        &["-i", &lab.server_if, "--metrics-listen", METRICS],
        &conf,
        &log,
        &lab.server_if,
    );
    assert!(
        wait_until(Duration::from_secs(10), || curl(&lab.server, &[&format!("http://{METRICS}/healthz")])
            .is_some_and(|b| b == "ok\n")),
        "/healthz did not answer 200 ok"
    );
    assert!(
        wait_until(Duration::from_secs(30), || curl(&lab.server, &[&format!("http://{PROMETHEUS}/-/ready")])
            .is_some()),
        "prometheus did not become ready (running: {}): {}",
        prometheus.is_running(),
        prom_diag()
    );

    // Prometheus applies new targets a few seconds after it starts: wait for its first
    // scrape, so that a gauge's short-lived value is seen.
    assert!(
        wait_until(Duration::from_secs(30), || scalar(&lab.server, "up{job=\"sesame\"}") == Some(1.0)),
        "prometheus did not scrape sesamed: {}",
        prom_diag()
    );

    // Correct knocks, each seen through: over IPv4, IPv4 again, and IPv6.
    let server = [IpAddr::V4(lab.server_v4), IpAddr::V4(lab.server_v4), IpAddr::V6(lab.server_v6)];
    for (n, dst) in server.iter().enumerate() {
        knock(&lab.client, *dst, &["7000", "8000", "9000"]);
        assert!(
            wait_until(OPEN, || read(&out).lines().count() == n + 1),
            "correct knock {} to {dst} did not open: {}",
            n + 1,
            read(&out)
        );
    }
    let correct = server.len() as f64;
    // A door with a grant: open for 4 s, then closed by its stop command.
    knock(&lab.client, IpAddr::V4(lab.server_v4), &["6000", "6001"]);
    assert!(wait_until(OPEN, || !read(&grants).is_empty()), "the grant door did not open");
    let grant = "door=\"grant\"";
    let open_now = format!("sesame_grants_open{{{grant}}}");
    assert!(
        wait_until(Duration::from_secs(10), || scalar(&lab.server, &open_now) == Some(1.0)),
        "{open_now} never showed 1: {:?}\n{}",
        scalar(&lab.server, &open_now),
        curl(&lab.server, &[&format!("http://{METRICS}/metrics")]).unwrap_or_default()
    );
    assert!(
        wait_until(Duration::from_secs(10), || read(&grants).contains("stop")),
        "the grant did not close"
    );

    // Wrong knocks: a port of the sequence out of turn breaks the attempt (twice), and
    // one first knock alone runs out its 2 s.
    let wrong_port = 2.0;
    for _ in 0..2 {
        knock(&lab.client, IpAddr::V4(lab.server_v4), &["7000", "9000"]);
    }
    knock(&lab.client, IpAddr::V4(lab.server_v4), &["7000"]);
    let timeouts = 1.0;

    let door = "door=\"open\"";
    let want = [
        (format!("sesame_sequences_completed_total{{{door}}}"), correct),
        (format!("sesame_sequences_failed_total{{{door},reason=\"wrong_port\"}}"), wrong_port),
        (format!("sesame_sequences_failed_total{{{door},reason=\"timeout\"}}"), timeouts),
        (format!("sum(sesame_sequences_failed_total{{{door}}})"), wrong_port + timeouts),
        // 3 per correct sequence, 1 for each wrong one's first knock (then broken or left).
        (format!("sesame_knock_stages_total{{{door}}}"), 3.0 * correct + 3.0),
        // Each sequence, correct or wrong, began with one first knock.
        (format!("sesame_attempts_started_total{{{door}}}"), correct + wrong_port + timeouts),
        (format!("sesame_attempts_started_total{{{grant}}}"), 1.0),
        (format!("sesame_grants_total{{{door},result=\"opened\"}}"), correct),
        (format!("sesame_sequences_completed_total{{{grant}}}"), 1.0),
        (format!("sesame_knock_stages_total{{{grant}}}"), 2.0),
        (format!("sesame_grants_total{{{grant},result=\"opened\"}}"), 1.0),
        (format!("sesame_grants_open{{{grant}}}"), 0.0),
        (format!("max_over_time(sesame_grants_open{{{grant}}}[5m])"), 1.0),
        (
            "sesame_firewall_operations_total{backend=\"command\",op=\"open\",result=\"ok\"}".into(),
            correct + 1.0,
        ),
        ("sesame_firewall_operations_total{backend=\"command\",op=\"close\",result=\"ok\"}".into(), 1.0),
        ("sesame_firewall_operation_duration_seconds_count{backend=\"command\"}".into(), correct + 2.0),
        ("sesame_knock_to_open_seconds_count".into(), correct + 1.0),
        ("sesame_firewall_queue_depth".into(), 0.0),
        ("sesame_tracker_used".into(), 0.0),
        ("sesame_config_reloads_total{result=\"ok\"}".into(), 0.0),
        ("sum(up{job=\"sesame\"})".into(), 1.0),
    ];
    let settled =
        wait_until(Duration::from_secs(20), || want.iter().all(|(q, v)| scalar(&lab.server, q) == Some(*v)));
    let seen: Vec<String> =
        want.iter().map(|(q, v)| format!("{q} = {:?} (want {v})", scalar(&lab.server, q))).collect();
    assert!(
        settled,
        "Prometheus does not show the knocks sent:\n{}\n{}",
        seen.join("\n"),
        daemon.diagnostics()
    );
    for line in &seen {
        eprintln!("{line}");
    }

    for name in SERIES {
        let found = query(&lab.server, name).unwrap_or_default();
        assert!(!found.is_empty(), "Prometheus has no series {name}");
    }
    let packets = scalar(&lab.server, "sum(sesame_capture_packets_total)").unwrap_or(0.0);
    assert!(packets >= 3.0 * correct + 5.0, "packets captured: {packets}");
    eprintln!("sum(sesame_capture_packets_total) = {packets}");

    // Labels never carry addresses.
    let text = curl(&lab.server, &[&format!("http://{METRICS}/metrics")]).expect("scrape /metrics");
    for addr in [lab.client_v4.to_string(), lab.client_v6.to_string()] {
        assert!(!text.contains(&addr), "{addr} appears in /metrics:\n{text}");
    }
    let lint = lab
        .server
        .sh(&format!("curl -sf http://{METRICS}/metrics | promtool check metrics"))
        .expect("run promtool");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // The shipped alert rules: valid, evaluated without error, none firing here, and
    // naming only series sesamed has.
    let check = Command::new("promtool").args(["check", "rules", RULES]).output().expect("run promtool");
    assert!(check.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&check.stdout));
    let rules_text = std::fs::read_to_string(RULES).unwrap();
    for word in rules_text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let name = word.trim_end_matches("_bucket");
        if name.starts_with("sesame_") {
            assert!(text.contains(&format!("\n{name}")), "the rules name {name}, which /metrics lacks");
        }
    }
    let evaluated = wait_until(Duration::from_secs(10), || {
        curl(&lab.server, &[&format!("http://{PROMETHEUS}/api/v1/rules")])
            .is_some_and(|r| r.matches("\"health\":\"ok\"").count() == 10)
    });
    let rules = curl(&lab.server, &[&format!("http://{PROMETHEUS}/api/v1/rules")]).unwrap_or_default();
    assert!(evaluated, "not every rule evaluated cleanly: {rules}");
    for name in FLOOD_ALERTS {
        assert!(rules.contains(&format!("\"name\":\"{name}\"")), "Prometheus lacks the rule {name}: {rules}");
    }
    assert_eq!(query(&lab.server, "ALERTS").unwrap_or_default(), [] as [f64; 0], "alerts fire: {rules}");
    let before = alerts(&lab.server).expect("/api/v1/alerts answers");
    assert!(before.is_empty(), "alerts pending or firing before the flood: {before:?}");

    // The flood, over the veth only: first knocks at 7000 from spoofed sources, each
    // then knocking 9000, which breaks its attempt (a wrong port).
    let started_before = scalar(&lab.server, "sum(sesame_attempts_started_total)").unwrap_or(f64::NAN);
    let mut packets = Vec::with_capacity(2 * FLOOD_SOURCES as usize);
    for i in 0..FLOOD_SOURCES {
        let src = IpAddr::V4(std::net::Ipv4Addr::from(0xC613_0000 + 1 + i)); // 198.19.0.1 on
        for port in [7000, 9000] {
            let p = sesame_lab::ip_packet_tcp(src, IpAddr::V4(lab.server_v4), 40000, port, 0x02);
            assert_eq!(p.len(), 40);
            packets.extend_from_slice(&p);
        }
    }
    let flood_file = dir.join("flood.bin");
    std::fs::write(&flood_file, &packets).unwrap();
    let flood_out = dir.join("flood.out");
    let mut cmd = lab.client.command("python3");
    cmd.args(["-c", FLOOD_PY])
        .arg(&flood_file)
        .arg(lab.server_v4.to_string())
        .arg(FLOOD_RATE.to_string())
        .arg(FLOOD_MAX.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&flood_out).unwrap())
        .stderr(std::fs::File::create(dir.join("flood.err")).unwrap());
    let flood_start = Instant::now();
    // Killed by its guard once the alerts are seen, or by the namespace's.
    let mut flood = ChildGuard::spawn(&mut cmd).unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut during = true;
    let raised = wait_until(FLOOD_MAX, || {
        seen = alerts(&lab.server).unwrap_or_default();
        during = flood.is_running();
        FLOOD_ALERTS
            .iter()
            .all(|name| seen.iter().any(|(n, state)| n == name && (state == "pending" || state == "firing")))
            || !during
    });
    let took = flood_start.elapsed();
    drop(flood);
    let flood_diag = || {
        format!(
            "flood sender: {} {}\nfirst knocks counted: {:?} before, {:?} now\n{}",
            read(&flood_out),
            read(&dir.join("flood.err")),
            started_before,
            scalar(&lab.server, "sum(sesame_attempts_started_total)"),
            curl(&lab.server, &[&format!("http://{PROMETHEUS}/api/v1/alerts")]).unwrap_or_default()
        )
    };
    assert!(
        raised && during,
        "the flood alerts were not pending or firing during the flood ({took:?}, flood running: {during}): \
         {seen:?}\n{}",
        flood_diag()
    );
    eprintln!("during the flood, after {took:?}: {seen:?}\n{}", flood_diag());

    // The dashboard's queries (Grafana's interval variables made concrete) all return data.
    let dashboard = std::fs::read_to_string(DASHBOARD).unwrap();
    let exprs: Vec<String> = dashboard
        .split("\"expr\": \"")
        .skip(1)
        .map(|rest| {
            rest.split('"')
                .next()
                .unwrap_or_default()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
        })
        .collect();
    assert!(exprs.len() >= 20, "the dashboard has {} queries", exprs.len());
    for expr in &exprs {
        let url = format!("http://{PROMETHEUS}/api/v1/query");
        let body = curl(&lab.server, &["--get", "--data-urlencode", &format!("query={expr}"), &url]);
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains("\"status\":\"success\"") && !b.contains("\"result\":[]")),
            "dashboard query {expr} gave {body:?}"
        );
    }

    // A reload is counted, and the per-door counters carry over it.
    daemon.child.signal("HUP").unwrap();
    let reloaded = wait_until(Duration::from_secs(15), || {
        scalar(&lab.server, "sesame_config_reloads_total{result=\"ok\"}") == Some(1.0)
            && scalar(&lab.server, "sesame_sequences_completed_total{door=\"open\"}") == Some(correct)
            && scalar(&lab.server, "resets(sesame_sequences_completed_total{door=\"open\"}[5m])") == Some(0.0)
    });
    assert!(
        reloaded,
        "the reload was not counted, or the counters did not survive it\n{}",
        daemon.diagnostics()
    );

    // A second daemon cannot have the same address: it fails at start, naming the flag.
    let log2 = dir.join("second.log");
    let mut second =
        Daemon::spawn(&lab.server, &["-i", &lab.server_if, "--metrics-listen", METRICS], &conf, &log2);
    let status = second.child.wait_timeout(START).unwrap().expect("the second sesamed exits");
    let stderr = read(&second.stderr);
    assert!(!status.success(), "the second sesamed started: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {METRICS} (--metrics-listen or [metrics] listen)")),
        "{stderr}"
    );

    let status = daemon.stop();
    assert!(status.success(), "sesamed exited with {status}");
    drop(prometheus);
}
