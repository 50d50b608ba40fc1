//! The orchestrator: one run = a fresh lab, the daemon under test in the server
//! namespace, the generator in the client namespace, and the measurements.

use crate::gen::{FloodMode, FloodProto, GenConfig, GenReport, Mac};
use crate::pacing::Rate;
use crate::report::{latency_summary, rss_growth_after, GenSummary, RunResult};
use crate::stats;
use anyhow::{anyhow, bail, Context};
use sesame_lab::{ChildGuard, Lab, TempDir};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The line the bench writes into the command FIFO to stop its reader.
const FIFO_END: &str = "__sesame_bench_end__";

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The daemon under test: sesamed, knockd, or anything with knockd's `-i`/`-c`.
    pub daemon: PathBuf,
    /// Extra arguments for the daemon, after `-i IF -c CONF`.
    pub daemon_args: Vec<String>,
    pub flood: FloodMode,
    pub proto: FloodProto,
    pub rate: Rate,
    /// Seconds of traffic (at most 900).
    pub duration: f64,
    pub legit: u32,
    pub knock_gap_ms: u64,
    pub v6_share: f64,
    pub ports: Vec<u16>,
    /// The door's `seq_timeout`.
    pub seq_timeout: u32,
    /// Core the generator's first thread is pinned to (default: the first core this
    /// process may use); its other flood threads go on the allowed cores after it
    /// ([`stats::gen_cpu_list`]). `None`: not pinned.
    pub gen_cpu: Option<usize>,
    /// Flood threads of the generator, each with its own TX ring and core.
    pub gen_cpus: u32,
    /// Cores the daemon is pinned to (a `taskset -c` list such as `1` or `1-3`);
    /// `None`: not pinned.
    pub daemon_cpus: Option<String>,
    /// How long after its last knock a knocker's command may arrive and still count.
    pub success_window: Duration,
    /// The `sesame-bench` executable to run as the generator.
    pub bench_exe: PathBuf,
    /// Where to keep the tail of the daemon's log and output (`None`: nowhere).
    pub keep_logs: Option<PathBuf>,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl RunConfig {
    /// A run of `daemon` with the defaults of the command line.
    pub fn new(daemon: PathBuf, bench_exe: PathBuf) -> RunConfig {
        RunConfig {
            daemon,
            daemon_args: Vec::new(),
            flood: FloodMode::FirstPort,
            proto: FloodProto::Syn,
            rate: Rate::Pps(0),
            duration: 10.0,
            legit: 50,
            knock_gap_ms: 2,
            v6_share: 0.0,
            ports: vec![7000, 8000, 9000],
            seq_timeout: 5,
            gen_cpu: Some(stats::first_allowed_cpu()),
            gen_cpus: 1,
            daemon_cpus: None,
            success_window: Duration::from_secs(5),
            bench_exe,
            keep_logs: None,
            verbose: false,
        }
    }

    /// The daemon's name in the results: its file name.
    pub fn daemon_name(&self) -> String {
        self.daemon.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "daemon".into())
    }
}

/// The knockd.conf both daemons read: one door whose command writes the knocker's
/// address into `fifo`.
pub fn knockd_conf(log_file: &Path, fifo: &Path, ports: &[u16], seq_timeout: u32) -> String {
    let seq = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    format!(
        "[options]\n\
         \tLogFile = {log}\n\
         \n\
         [bench]\n\
         \tsequence = {seq}\n\
         \tseq_timeout = {seq_timeout}\n\
         \ttcpflags = syn\n\
         \tstart_command = echo %IP% >> {fifo}\n",
        log = log_file.display(),
        fifo = fifo.display(),
    )
}

/// `sesamed` next to the running executable (`target/<profile>/`), or beside its
/// directory's parent when running from `target/<profile>/deps/` (a test binary).
pub fn find_sesamed(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    [dir.join("sesamed"), dir.parent()?.join("sesamed")].into_iter().find(|p| p.is_file())
}

/// One knocker's outcome, matched against the FIFO lines.
#[derive(Clone, Debug, PartialEq)]
pub struct KnockOutcome {
    pub succeeded: bool,
    pub latency: Option<Duration>,
}

/// Matches the FIFO lines (address, wall-clock arrival in ns since the epoch) to the
/// knockers: a knocker succeeded if its address arrived no earlier than its first knock
/// and at most `window` after its last. Also returns how many lines matched no knocker.
pub fn match_outcomes(
    knockers: &[crate::gen::KnockerReport],
    lines: &[(String, u64)],
    window: Duration,
) -> (Vec<KnockOutcome>, u64) {
    let mut by_ip: HashMap<&str, Vec<u64>> = HashMap::new();
    for (ip, t) in lines {
        by_ip.entry(ip.as_str()).or_default().push(*t);
    }
    let known: std::collections::HashSet<String> = knockers.iter().map(|k| k.ip.to_string()).collect();
    let stray = lines.iter().filter(|(ip, _)| !known.contains(ip)).count() as u64;
    let outcomes = knockers
        .iter()
        .map(|k| {
            if k.knocks_sent == 0 {
                return KnockOutcome { succeeded: false, latency: None };
            }
            let ip = k.ip.to_string();
            let hit = by_ip.get(ip.as_str()).and_then(|ts| {
                ts.iter()
                    .copied()
                    .filter(|&t| t >= k.first_knock_ns && t <= k.last_knock_ns + window.as_nanos() as u64)
                    .min()
            });
            match hit {
                Some(t) => KnockOutcome {
                    succeeded: true,
                    latency: Some(Duration::from_nanos(t.saturating_sub(k.last_knock_ns))),
                },
                None => KnockOutcome { succeeded: false, latency: None },
            }
        })
        .collect();
    (outcomes, stray)
}

pub(crate) fn unix_ns_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Reads one `statistics/` counter of an interface inside the lab namespace.
pub fn iface_counter(ns: &sesame_lab::Netns, ifname: &str, counter: &str) -> anyhow::Result<u64> {
    let out = ns.sh_ok(&format!("cat /sys/class/net/{ifname}/statistics/{counter}"))?;
    out.trim().parse().with_context(|| format!("{ifname} {counter}: {out:?}"))
}

pub fn iface_mac(ns: &sesame_lab::Netns, ifname: &str) -> anyhow::Result<Mac> {
    let out = ns.sh_ok(&format!("cat /sys/class/net/{ifname}/address"))?;
    crate::gen::parse_mac(&out).map_err(anyhow::Error::msg)
}

/// The last `max` bytes of a file, lossily as text.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether `path` has a line containing `needle` (read from the start, at most 1 MiB).
pub(crate) fn file_contains(path: &Path, needle: &str) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut buf = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut buf);
    buf.contains(needle)
}

/// A generator started in the client namespace.
pub struct Generator {
    pid: u32,
    done: mpsc::Receiver<std::io::Result<std::process::Output>>,
}

impl Generator {
    /// Starts `exe gen ARGS` in the client namespace. Unless `cfg` names the cores
    /// itself (`pin_cpus`), its first thread is pinned to `cpu` if given and its other
    /// flood threads to the allowed cores after it ([`stats::gen_cpu_list`]); each
    /// thread pins itself.
    pub fn start(lab: &Lab, exe: &Path, cfg: &GenConfig, cpu: Option<usize>) -> anyhow::Result<Generator> {
        let mut cfg = cfg.clone();
        if let (Some(first), true) = (cpu, cfg.pin_cpus.is_empty()) {
            cfg.pin_cpus = stats::gen_cpu_list(&stats::allowed_cpus(), first, cfg.gen_cpus);
        }
        let mut cmd = lab.client.command(exe);
        cmd.arg("gen").args(cfg.to_args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().context("starting the generator")?;
        let pid = child.id();
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Ok(Generator { pid, done })
    }

    /// Waits up to `timeout` for the generator to finish by itself (killing it after
    /// that) and parses its report.
    pub fn finish(self, timeout: Duration) -> anyhow::Result<GenReport> {
        let out = match self.done.recv_timeout(timeout) {
            Ok(out) => out.context("waiting for the generator")?,
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(self.pid.to_string()).status();
                let _ = self.done.recv_timeout(Duration::from_secs(5));
                bail!("the generator did not stop by itself within {timeout:?}; killed it");
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("the generator failed with {}: {}", out.status, stderr.trim());
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| anyhow!("the generator printed no report: {stdout}{stderr}"))?;
        serde_json::from_str(line).with_context(|| format!("parsing the generator's report {line:?}"))
    }
}

/// Reads the command FIFO on a thread, stamping each line with the wall clock.
pub(crate) struct FifoReader {
    lines: Arc<Mutex<Vec<(String, u64)>>>,
    writer: std::fs::File,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoReader {
    pub(crate) fn open(path: &Path) -> anyhow::Result<FifoReader> {
        sesame_lab::run(Command::new("mkfifo").arg("-m").arg("0600").arg(path))?;
        // Read and write: the FIFO then always has a writer (us), so the reader never
        // sees end-of-file between the daemon's commands, and opening never blocks.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let writer = file.try_clone()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(file).lines() {
                let t = unix_ns_now();
                let Ok(line) = line else { break };
                let line = line.trim().to_owned();
                if line == FIFO_END {
                    break;
                }
                if !line.is_empty() {
                    sink.lock().expect("fifo lines lock").push((line, t));
                }
            }
        });
        Ok(FifoReader { lines, writer, thread: Some(thread) })
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, u64)> {
        self.lines.lock().expect("fifo lines lock").clone()
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        let _ = writeln!(self.writer, "{FIFO_END}");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Largest the daemon's log may grow before the sampler empties it (a knockd under a
/// long flood logs a line per packet). The daemon appends, so emptying is safe.
const LOG_CAP_BYTES: u64 = 256 << 20;

/// The RSS series and the log bytes emptied away.
/// `VmRSS` and `RssAnon` series, and the bytes of log emptied along the way.
pub(crate) type SamplerOut = (Vec<(f64, u64)>, Vec<(f64, u64)>, u64);

/// Samples the daemon's VmRSS (and its anonymous part, RssAnon: heap, stacks, tables,
/// as opposed to program text paged in on first use) once a second on a thread, and keeps its log file
/// under [`LOG_CAP_BYTES`].
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<SamplerOut>>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32, t0: Instant, log: PathBuf) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut series = Vec::new();
            let mut anon = Vec::new();
            let mut emptied = 0u64;
            let mut next = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                if t0.elapsed() >= next {
                    let t = round3(t0.elapsed().as_secs_f64());
                    match stats::status_kib(pid, "VmRSS") {
                        Some(kib) => series.push((t, kib)),
                        None => break,
                    }
                    if let Some(kib) = stats::status_kib(pid, "RssAnon") {
                        anon.push((t, kib));
                    }
                    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                    if size > LOG_CAP_BYTES
                        && std::fs::OpenOptions::new()
                            .write(true)
                            .open(&log)
                            .and_then(|f| f.set_len(0))
                            .is_ok()
                    {
                        emptied += size;
                    }
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (series, anon, emptied)
        });
        RssSampler { stop, thread: Some(thread) }
    }

    pub(crate) fn finish(mut self) -> SamplerOut {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

fn progress(cfg: &RunConfig, msg: impl AsRef<str>) {
    if cfg.verbose {
        eprintln!("sesame-bench: {}", msg.as_ref());
    }
}

/// Runs the daemon once under the configured traffic, in a fresh lab.
pub fn run_once(cfg: &RunConfig) -> anyhow::Result<RunResult> {
    if !(cfg.duration > 0.0 && cfg.duration <= crate::gen::MAX_DURATION_SECS) {
        bail!(
            "duration {} s: must be more than 0 and at most {} s",
            cfg.duration,
            crate::gen::MAX_DURATION_SECS
        );
    }
    if !cfg.daemon.is_file() {
        bail!("daemon {} not found", cfg.daemon.display());
    }
    let name = cfg.daemon_name();
    let flood = if cfg.rate.is_zero() {
        "no flood".to_string()
    } else {
        format!("{} {} flood at {} pps", cfg.flood.name(), cfg.proto.name(), cfg.rate)
    };
    progress(cfg, format!("{name}: {flood}, {} knockers, {} s", cfg.legit, cfg.duration));
    let lab = Lab::new("bn").context("building the lab")?;
    let tmp = TempDir::new("sbr")?;
    let log_file = tmp.join("daemon.log");
    let fifo_path = tmp.join("commands.fifo");
    let conf = tmp.join("knockd.conf");
    std::fs::write(&conf, knockd_conf(&log_file, &fifo_path, &cfg.ports, cfg.seq_timeout))?;
    let fifo = FifoReader::open(&fifo_path)?;

    let server_mac = iface_mac(&lab.server, &lab.server_if)?;
    let client_mac = iface_mac(&lab.client, &lab.client_if)?;

    // The daemon: `ip netns exec` execs it, so the child's pid is the daemon's.
    let out_file = tmp.join("daemon.out");
    let out = std::fs::File::create(&out_file)?;
    // `taskset` execs the daemon too, so the pid stays the daemon's.
    let mut cmd = match &cfg.daemon_cpus {
        Some(cpus) => {
            let mut c = lab.server.command("taskset");
            c.arg("-c").arg(cpus).arg(&cfg.daemon);
            c
        }
        None => lab.server.command(&cfg.daemon),
    };
    cmd.arg("-i").arg(&lab.server_if).arg("-c").arg(&conf).args(&cfg.daemon_args);
    if !cfg.daemon.ends_with("knockd") {
        // sesamed's grant journal stays in the run's scratch directory.
        cmd.arg("--state-dir").arg(tmp.join("state"));
    }
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let t0 = Instant::now();
    let mut daemon =
        ChildGuard::spawn(&mut cmd).with_context(|| format!("starting {}", cfg.daemon.display()))?;
    let pid = daemon.id();
    let up = sesame_lab::wait_until(Duration::from_secs(10), || {
        file_contains(&log_file, "starting up, listening on") || !daemon.is_running()
    });
    if !up || !daemon.is_running() {
        bail!(
            "{name} did not start up (no `starting up, listening on` in its log): {}{}",
            tail(&log_file, 2000),
            tail(&out_file, 2000)
        );
    }
    progress(cfg, format!("{name} is up (pid {pid})"));
    let sampler = RssSampler::start(pid, t0, log_file.clone());
    let ticks = stats::clock_ticks();

    let gen_cfg = GenConfig {
        iface: lab.client_if.clone(),
        src_mac: client_mac,
        dst_mac: server_mac,
        dst_ip: lab.server_v4,
        dst_ip6: Some(lab.server_v6),
        v6_share: cfg.v6_share,
        flood: cfg.flood,
        proto: cfg.proto,
        rate: cfg.rate,
        duration: cfg.duration,
        ports: cfg.ports.clone(),
        legit: cfg.legit,
        knock_gap_ms: cfg.knock_gap_ms,
        seed: None,
        batch: 128,
        gen_cpus: cfg.gen_cpus,
        pin_cpus: Vec::new(),
    };
    gen_cfg.validate().map_err(anyhow::Error::msg)?;
    let rx0 = iface_counter(&lab.server, &lab.server_if, "rx_packets")?;
    let drop0 = iface_counter(&lab.server, &lab.server_if, "rx_dropped")?;
    let cpu0 = stats::cpu_seconds(pid, ticks).ok_or_else(|| anyhow!("{name} exited"))?;
    let traffic_start = Instant::now();
    let gen = Generator::start(&lab, &cfg.bench_exe, &gen_cfg, cfg.gen_cpu)?;
    let report = gen.finish(Duration::from_secs_f64(cfg.duration) + Duration::from_secs(30))?;
    let rx1 = iface_counter(&lab.server, &lab.server_if, "rx_packets")?;
    let drop1 = iface_counter(&lab.server, &lab.server_if, "rx_dropped")?;
    progress(
        cfg,
        format!(
            "generator: {} flood + {} knock frames in {:.2} s from {} flood thread(s): {}",
            report.flood_sent,
            report.legit_frames_sent,
            report.elapsed_s,
            report.gen_cpus,
            report
                .flood_threads
                .iter()
                .map(|t| format!(
                    "cpu {} sent {} ({} cpu s)",
                    t.cpu.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    t.sent,
                    t.cpu_s.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    // Give the last knockers their window, or less if every one has been heard.
    let expected: Vec<String> =
        report.knockers.iter().filter(|k| k.knocks_sent > 0).map(|k| k.ip.to_string()).collect();
    let last = report.knockers.iter().map(|k| k.last_knock_ns).max().unwrap_or(0);
    let deadline_ns = last + cfg.success_window.as_nanos() as u64;
    loop {
        let seen: std::collections::HashSet<String> = fifo.snapshot().into_iter().map(|(ip, _)| ip).collect();
        if expected.iter().all(|ip| seen.contains(ip)) || unix_ns_now() >= deadline_ns || !daemon.is_running()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu1 = stats::cpu_seconds(pid, ticks);
    let wall = traffic_start.elapsed().as_secs_f64();
    let peak = stats::status_kib(pid, "VmHWM");
    let (rss_series, rss_anon_series, log_emptied) = sampler.finish();
    let running = daemon.is_running();

    let exit = if running {
        daemon.signal("TERM")?;
        match daemon.wait_timeout(Duration::from_secs(10))? {
            Some(st) => st.to_string(),
            None => "did not exit within 10 s of SIGTERM".into(),
        }
    } else {
        format!(
            "died during the run: {}",
            daemon.wait_timeout(Duration::ZERO)?.map(|s| s.to_string()).unwrap_or_default()
        )
    };
    drop(daemon);
    let lines = fifo.snapshot();
    drop(fifo);
    let log_tail = tail(&log_file, 64 * 1024);
    let log_bytes = log_emptied + std::fs::metadata(&log_file).map(|m| m.len()).unwrap_or(0);
    // sesamed writes its shutdown `stats:` line to stderr (the daemon's output file),
    // keeping its LogFile line for line what knockd writes.
    let daemon_stats = stats::parse_stats_log(&tail(&out_file, 64 * 1024));
    if let Some(dir) = &cfg.keep_logs {
        std::fs::create_dir_all(dir)?;
        let stem = format!("{name}-{}-{}", cfg.flood.name(), cfg.rate);
        std::fs::write(dir.join(format!("{stem}.log")), &log_tail)?;
        std::fs::write(dir.join(format!("{stem}.out")), tail(&out_file, 64 * 1024))?;
    }

    let (outcomes, stray) = match_outcomes(&report.knockers, &lines, cfg.success_window);
    if stray > 0 {
        progress(cfg, format!("{stray} commands ran for addresses that are no legitimate knocker"));
    }
    let latencies: Vec<Duration> = outcomes.iter().filter_map(|o| o.latency).collect();
    let legit_sent =
        report.knockers.iter().filter(|k| k.knocks_sent as usize == cfg.ports.len()).count() as u64;
    let legit_succeeded = outcomes.iter().filter(|o| o.succeeded).count() as u64;
    let elapsed = report.elapsed_s.max(1e-9);
    let offered = report.flood_sent + report.legit_frames_sent;
    let delivered = rx1.saturating_sub(rx0);
    let cpu_seconds = cpu1.map(|c| c - cpu0).unwrap_or(f64::NAN);
    let result = RunResult {
        daemon: name,
        daemon_path: cfg.daemon.display().to_string(),
        daemon_args: cfg.daemon_args.clone(),
        flood: if cfg.rate.is_zero() { "none".into() } else { cfg.flood.name().into() },
        proto: cfg.proto.name().into(),
        target_rate: cfg.rate.to_string(),
        target_pps: cfg.rate.pps(),
        duration_s: round3(report.elapsed_s),
        offered_packets: offered,
        offered_pps: (offered as f64 / elapsed).round(),
        flood_sent_pps: (report.flood_sent as f64 / elapsed).round(),
        gen_cpus: report.gen_cpus,
        delivered_packets: delivered,
        delivered_pps: (delivered as f64 / elapsed).round(),
        server_rx_dropped: drop1.saturating_sub(drop0),
        legit_sent,
        legit_succeeded,
        legit_success_pct: if legit_sent == 0 {
            0.0
        } else {
            round3(100.0 * legit_succeeded as f64 / legit_sent as f64)
        },
        latency_ms: latency_summary(&latencies),
        cpu_seconds: round3(cpu_seconds),
        cpu_percent: round3(100.0 * cpu_seconds / wall.max(1e-9)),
        peak_rss_kib: peak,
        kernel_drops: daemon_stats.as_ref().and_then(|m| m.get("kernel_drops").copied()),
        evictions: daemon_stats.as_ref().and_then(|m| m.get("evictions").copied()),
        daemon_stats,
        daemon_exit: exit,
        unexpected_commands: stray,
        daemon_log_bytes: log_bytes,
        rss_growth_after_60s_kib: rss_growth_after(&rss_series, 60.0),
        rss_anon_growth_after_60s_kib: rss_growth_after(&rss_anon_series, 60.0),
        rss_series_kib: rss_series,
        rss_anon_series_kib: rss_anon_series,
        generator: GenSummary {
            flood_sent: report.flood_sent,
            legit_frames_sent: report.legit_frames_sent,
            elapsed_s: round3(report.elapsed_s),
            ring_full_waits: report.ring_full_waits,
            tx_errors: report.tx_errors,
            flood_threads: report.flood_threads.clone(),
        },
    };
    if !running {
        progress(cfg, format!("{} died during the run: {}", result.daemon, tail(&out_file, 2000)));
    }
    drop(lab);
    Ok(result)
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The one-line summary of a run printed after it.
pub fn summary_line(r: &RunResult) -> String {
    let lat = r
        .latency_ms
        .as_ref()
        .map(|l| format!("p50 {:.1} ms p99 {:.1} ms max {:.1} ms", l.p50, l.p99, l.max))
        .unwrap_or_else(|| "no latency samples".into());
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let growth = match (r.rss_growth_after_60s_kib, r.rss_anon_growth_after_60s_kib) {
        (Some(g), Some(a)) => format!(", rss growth after 60 s {g:+} KiB (anonymous {a:+} KiB)"),
        (Some(g), None) => format!(", rss growth after 60 s {g:+} KiB"),
        _ => String::new(),
    };
    format!(
        "{:<8} {:>6} pps: flood sent {:.0} pps from {} gen cpu(s), offered {:.0} pps, delivered {:.0} pps, \
         legit {}/{}, {lat}, cpu {:.2} s ({:.0}%), peak rss {} KiB, kernel drops {}, evictions {}{growth}",
        r.daemon,
        r.target_rate,
        r.flood_sent_pps,
        r.gen_cpus,
        r.offered_pps,
        r.delivered_pps,
        r.legit_succeeded,
        r.legit_sent,
        r.cpu_seconds,
        r.cpu_percent,
        opt(r.peak_rss_kib),
        opt(r.kernel_drops),
        opt(r.evictions),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::KnockerReport;
    use std::net::Ipv4Addr;

    #[test]
    fn conf_is_knockd_syntax() {
        let c = knockd_conf(Path::new("/tmp/x/log"), Path::new("/tmp/x/f"), &[7000, 8000, 9000], 5);
        assert!(c.contains("LogFile = /tmp/x/log"));
        assert!(c.contains("sequence = 7000,8000,9000"));
        assert!(c.contains("start_command = echo %IP% >> /tmp/x/f"));
        assert!(c.contains("tcpflags = syn"));
        // sesame's own parser reads it.
        let dir = TempDir::new("sbc").unwrap();
        let path = dir.join("knockd.conf");
        std::fs::write(&path, &c).unwrap();
        let cfg = sesame_engine::config::Config::load(&path).unwrap();
        assert_eq!(cfg.doors.len(), 1);
    }

    fn k(ip: [u8; 4], first: u64, last: u64) -> KnockerReport {
        KnockerReport { ip: Ipv4Addr::from(ip), first_knock_ns: first, last_knock_ns: last, knocks_sent: 3 }
    }

    #[test]
    fn outcomes_match_addresses_within_the_window() {
        let s = 1_000_000_000u64;
        let knockers = vec![
            k([198, 19, 192, 1], 10 * s, 10 * s + 4_000_000),
            k([198, 19, 192, 2], 11 * s, 11 * s),
            k([198, 19, 192, 3], 12 * s, 12 * s),
            KnockerReport { knocks_sent: 0, ..k([198, 19, 192, 4], 0, 0) },
        ];
        let lines = vec![
            ("198.19.192.1".to_string(), 10 * s + 7_000_000),
            ("198.19.192.1".to_string(), 10 * s + 9_000_000),
            ("198.19.192.2".to_string(), 17 * s), // too late
            ("198.19.192.3".to_string(), 11 * s), // before it knocked
            ("198.18.5.5".to_string(), 12 * s),
        ];
        let (o, stray) = match_outcomes(&knockers, &lines, Duration::from_secs(5));
        assert_eq!(stray, 1);
        assert_eq!(o[0], KnockOutcome { succeeded: true, latency: Some(Duration::from_millis(3)) });
        assert!(!o[1].succeeded && !o[2].succeeded && !o[3].succeeded);
    }

    #[test]
    fn sesamed_is_found_from_a_test_binary_path() {
        let dir = TempDir::new("sbf").unwrap();
        std::fs::create_dir_all(dir.join("deps")).unwrap();
        assert_eq!(find_sesamed(&dir.join("deps/test-123")), None);
        std::fs::write(dir.join("sesamed"), "").unwrap();
        assert_eq!(find_sesamed(&dir.join("deps/test-123")), Some(dir.join("sesamed")));
        assert_eq!(find_sesamed(&dir.join("sesame-bench")), Some(dir.join("sesamed")));
    }
}
