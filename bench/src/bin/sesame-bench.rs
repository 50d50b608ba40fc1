//! `sesame-bench`: load-test sesamed (or any knockd-compatible daemon) in a lab of
//! network namespaces, under a spoofed-source flood, with legitimate knockers.
//!
//! ```text
//! sesame-bench run   [--daemon PATH]... [--rate PPS|max] [--duration S] [--legit N] [--out DIR]
//! sesame-bench sweep [--daemon PATH]... --rates 0,1000,10k,max [...]
//! sesame-bench chart --results DIR/results.json [--svg FILE]
//! sesame-bench firewall-load [--backend nftables|iptables|command] [--knockers N] [--rate R] ...
//! sesame-bench firewall-latency [--backends nftables,iptables,command,knockd] [--knockers N] ...
//! ```
//! Needs root (namespaces, packet sockets). Floods stay on the lab's veth pair.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sesame_bench::chart;
use sesame_bench::firewall::{
    latency_table, load_summary, run_latency, run_load, FwBackend, LatencyConfig, Limits, LoadConfig, Subject,
};
use sesame_bench::gen::{self, FloodMode, FloodProto, GenConfig};
use sesame_bench::pacing::{parse_rates, Rate};
use sesame_bench::report::{read_results, write_results, RunResult};
use sesame_bench::run::{find_sesamed, run_once, summary_line, RunConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "sesame-bench", version, about = "Load tests for sesamed and knockd-compatible daemons")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One run per daemon at one flood rate.
    Run {
        #[command(flatten)]
        common: Common,
        /// Flood rate in packets per second (`10000`, `10k`), `max` (flat out), or 0.
        #[arg(long, default_value = "max")]
        rate: Rate,
    },
    /// One run per daemon and rate, each in a fresh lab.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// Comma-separated flood rates.
        #[arg(long, default_value = "0,1000,10000,100000,max", value_parser = parse_rates)]
        rates: std::vec::Vec<Rate>,
    },
    /// Redraws the chart from a results.json.
    Chart {
        /// The results to draw.
        #[arg(long)]
        results: PathBuf,
        /// Where to write the SVG (default: chart.svg beside the results).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Firewall limits under load: many knockers, small limits, checks from sesamed's --ops-log.
    FirewallLoad(FwLoadArgs),
    /// Knock → rule-in-place latency of each firewall backend, and of knockd.
    FirewallLatency(FwLatencyArgs),
    /// The traffic generator (started by `run`/`sweep` inside the client namespace).
    #[command(hide = true)]
    Gen(GenConfig),
}

#[derive(Args, Debug)]
struct Common {
    /// A daemon under test (repeat for several; default: sesamed beside this program).
    /// It is run as `DAEMON -i SERVER_IF -c CONF [--daemon-arg...]`.
    #[arg(long = "daemon", value_name = "PATH")]
    daemons: Vec<PathBuf>,
    /// The sesamed to use when no --daemon is given.
    #[arg(long, value_name = "PATH")]
    sesamed: Option<PathBuf>,
    /// An extra argument for every daemon (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// An extra argument only for daemons whose name starts with `sesamed`
    /// (e.g. `--sesamed-arg=--workers --sesamed-arg=2`).
    #[arg(long = "sesamed-arg", value_name = "ARG", allow_hyphen_values = true)]
    sesamed_args: Vec<String>,
    /// Where the flood goes.
    #[arg(long, value_enum, default_value = "first-port")]
    flood: FloodMode,
    /// TCP SYN or UDP flood frames.
    #[arg(long, value_enum, default_value = "syn")]
    proto: FloodProto,
    /// Fraction (0..1) of flood frames from random 2001:db8::/32 sources.
    #[arg(long, default_value_t = 0.0)]
    v6_share: f64,
    /// Seconds of traffic per run (at most 900).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Legitimate knockers per run, each from its own source address.
    #[arg(long, default_value_t = 50)]
    legit: u32,
    /// Milliseconds between one knocker's knocks.
    #[arg(long, default_value_t = 2)]
    knock_gap_ms: u64,
    /// The knock sequence.
    #[arg(long, value_delimiter = ',', default_value = "7000,8000,9000")]
    sequence: Vec<u16>,
    /// Seconds after its last knock within which a knocker's command must run.
    #[arg(long, default_value_t = 5.0)]
    success_window: f64,
    /// Core to pin the generator to (`none`: no pinning; default: the first core allowed).
    /// With --gen-cpus N, the first of its N cores.
    #[arg(long)]
    gen_cpu: Option<String>,
    /// Flood threads of the generator, each pinned to its own core (--gen-cpu, then the
    /// allowed cores after it) with its own TX ring and its own share of --rate (`max`:
    /// each flat out). The legitimate knockers stay on the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=gen::MAX_GEN_CPUS as i64))]
    gen_cpus: u32,
    /// Cores to pin the daemon to (a `taskset -c` list, e.g. `1` or `1-3`; default: not pinned).
    #[arg(long, value_name = "LIST")]
    daemon_cpus: Option<String>,
    /// Output directory for results.json, chart.svg and the daemons' log tails.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Less chatter on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct FwCommon {
    /// The sesamed to test (default: sesamed beside this program).
    #[arg(long, value_name = "PATH")]
    sesamed: Option<PathBuf>,
    /// Seconds the generator runs; knockers start from 10% to 80% of it (at most 900;
    /// default: 60 for firewall-load, 20 for firewall-latency).
    #[arg(long)]
    duration: Option<f64>,
    /// Milliseconds between one knocker's knocks.
    #[arg(long, default_value_t = 2)]
    knock_gap_ms: u64,
    /// The knock sequence.
    #[arg(long, value_delimiter = ',', default_value = "7000,8000,9000")]
    sequence: Vec<u16>,
    /// `[firewall] rate`: operations per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// `[firewall] burst`.
    #[arg(long, default_value_t = 200)]
    burst: u32,
    /// `[firewall] concurrency`.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// `[firewall] queue`.
    #[arg(long, default_value_t = 4096)]
    queue: u32,
    /// `[firewall] command_timeout`, seconds.
    #[arg(long, default_value_t = 10)]
    command_timeout: u32,
    /// The door's `cmd_timeout`: seconds a grant lasts.
    #[arg(long, default_value_t = 5)]
    cmd_timeout: u32,
    /// Core to pin the generator to (`none`: no pinning; default: the first core allowed).
    #[arg(long)]
    gen_cpu: Option<String>,
    /// Cores to pin the daemon to (a `taskset -c` list).
    #[arg(long, value_name = "LIST")]
    daemon_cpus: Option<String>,
    /// Output directory (JSON and the daemons' logs).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Less chatter on stderr.
    #[arg(long, short)]
    quiet: bool,
}

impl FwCommon {
    fn limits(&self) -> Limits {
        Limits {
            rate: self.rate,
            burst: self.burst,
            concurrency: self.concurrency,
            queue: self.queue,
            command_timeout: self.command_timeout,
            cmd_timeout: self.cmd_timeout,
        }
    }

    fn sesamed(&self, exe: &Path) -> anyhow::Result<PathBuf> {
        self.sesamed.clone().or_else(|| find_sesamed(exe)).context(
            "no sesamed beside sesame-bench (build it with `cargo build --release`), and no --sesamed given",
        )
    }

    fn gen_cpu(&self) -> anyhow::Result<Option<usize>> {
        Ok(match self.gen_cpu.as_deref() {
            None => Some(sesame_bench::stats::first_allowed_cpu()),
            Some("none") => None,
            Some(n) => Some(n.parse().with_context(|| format!("--gen-cpu {n:?}: a core number or `none`"))?),
        })
    }
}

#[derive(Args, Debug)]
struct FwLoadArgs {
    #[command(flatten)]
    common: FwCommon,
    /// The backend of the door's grants.
    #[arg(long, value_enum, default_value = "nftables")]
    backend: FwBackend,
    /// Knockers, each from its own address (at most 16382).
    #[arg(long, default_value_t = 10_000)]
    knockers: u32,
    /// Most a close may start after its time, seconds (default: 1 + (burst + concurrency) / rate).
    #[arg(long)]
    close_margin: Option<f64>,
    /// Most sesamed's RSS may grow from its first sample to its peak, MiB.
    #[arg(long, default_value_t = 16)]
    rss_growth_mib: u64,
}

#[derive(Args, Debug)]
struct FwLatencyArgs {
    #[command(flatten)]
    common: FwCommon,
    /// What to measure, in order: sesamed's nftables, iptables and command backends, knockd.
    #[arg(long, value_delimiter = ',', default_value = "nftables,iptables,command,knockd", value_parser = Subject::parse)]
    backends: Vec<Subject>,
    /// knockd to compare with.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/knockd")]
    knockd: PathBuf,
    /// Knockers per backend, each from its own address.
    #[arg(long, default_value_t = 200)]
    knockers: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Gen(cfg) => run_gen(&cfg),
        Cmd::Run { common, rate } => run_matrix(&common, &[rate]),
        Cmd::Sweep { common, rates } => run_matrix(&common, &rates),
        Cmd::Chart { results, svg } => redraw(&results, svg),
        Cmd::FirewallLoad(a) => firewall_load(&a),
        Cmd::FirewallLatency(a) => firewall_latency(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_gen(cfg: &GenConfig) -> anyhow::Result<()> {
    let report = gen::run(cfg)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn firewall_load(a: &FwLoadArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let exe = std::env::current_exe().context("locating sesame-bench")?;
    let mut cfg = LoadConfig::new(c.sesamed(&exe)?, exe);
    cfg.backend = a.backend;
    cfg.limits = c.limits();
    cfg.knockers = a.knockers;
    cfg.duration = c.duration.unwrap_or(60.0);
    cfg.ports = c.sequence.clone();
    cfg.knock_gap_ms = c.knock_gap_ms;
    if let Some(m) = a.close_margin {
        if !(0.0..=600.0).contains(&m) {
            bail!("--close-margin {m}: must be from 0 to 600 seconds");
        }
        cfg.close_margin = Some(Duration::from_secs_f64(m));
    }
    cfg.rss_growth_limit_kib = a.rss_growth_mib * 1024;
    cfg.gen_cpu = c.gen_cpu()?;
    cfg.daemon_cpus = c.daemon_cpus.clone();
    cfg.keep_logs = Some(c.out.join("logs"));
    cfg.verbose = !c.quiet;
    std::fs::create_dir_all(&c.out).with_context(|| format!("creating {}", c.out.display()))?;
    let r = run_load(&cfg)?;
    println!("{}", load_summary(&r));
    let json = c.out.join(format!("firewall-load-{}.json", a.backend.name()));
    std::fs::write(&json, serde_json::to_string_pretty(&r)? + "\n")?;
    eprintln!("sesame-bench: wrote {}", json.display());
    if !r.passed() {
        bail!("{} check(s) failed", r.failures.len());
    }
    Ok(())
}

fn firewall_latency(a: &FwLatencyArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let exe = std::env::current_exe().context("locating sesame-bench")?;
    let mut cfg = LatencyConfig::new(c.sesamed(&exe)?, a.knockd.clone(), exe);
    cfg.subjects = a.backends.clone();
    cfg.knockers = a.knockers;
    cfg.duration = c.duration.unwrap_or(20.0);
    cfg.limits = c.limits();
    cfg.ports = c.sequence.clone();
    cfg.knock_gap_ms = c.knock_gap_ms;
    cfg.gen_cpu = c.gen_cpu()?;
    cfg.daemon_cpus = c.daemon_cpus.clone();
    cfg.keep_logs = Some(c.out.join("logs"));
    cfg.verbose = !c.quiet;
    std::fs::create_dir_all(&c.out).with_context(|| format!("creating {}", c.out.display()))?;
    let rows = run_latency(&cfg)?;
    print!("{}", latency_table(&rows));
    let json = c.out.join("firewall-latency.json");
    std::fs::write(&json, serde_json::to_string_pretty(&rows)? + "\n")?;
    eprintln!("sesame-bench: wrote {}", json.display());
    Ok(())
}

fn redraw(results: &Path, svg: Option<PathBuf>) -> anyhow::Result<()> {
    let runs = read_results(results).with_context(|| format!("reading {}", results.display()))?;
    let svg = svg.unwrap_or_else(|| results.with_file_name("chart.svg"));
    chart::write_svg(&svg, &runs)?;
    eprintln!("sesame-bench: wrote {}", svg.display());
    Ok(())
}

fn run_matrix(c: &Common, rates: &[Rate]) -> anyhow::Result<()> {
    if !(c.duration > 0.0 && c.duration <= gen::MAX_DURATION_SECS) {
        bail!(
            "--duration {}: must be more than 0 and at most {} seconds",
            c.duration,
            gen::MAX_DURATION_SECS
        );
    }
    if !(c.success_window >= 0.0 && c.success_window <= 600.0) {
        bail!("--success-window {}: must be from 0 to 600 seconds", c.success_window);
    }
    let exe = std::env::current_exe().context("locating sesame-bench")?;
    let daemons = if c.daemons.is_empty() {
        vec![c.sesamed.clone().or_else(|| find_sesamed(&exe)).context(
            "no sesamed beside sesame-bench (build it with `cargo build --release`), and no --daemon/--sesamed given",
        )?]
    } else {
        c.daemons.clone()
    };
    let gen_cpu = match c.gen_cpu.as_deref() {
        None => Some(sesame_bench::stats::first_allowed_cpu()),
        Some("none") => None,
        Some(n) => Some(n.parse().with_context(|| format!("--gen-cpu {n:?}: a core number or `none`"))?),
    };
    std::fs::create_dir_all(&c.out).with_context(|| format!("creating {}", c.out.display()))?;
    let json = c.out.join("results.json");
    let svg = c.out.join("chart.svg");
    let mut runs: Vec<RunResult> = Vec::new();
    let mut failures = 0;
    for &rate in rates {
        for daemon in &daemons {
            let mut cfg = RunConfig::new(daemon.clone(), exe.clone());
            cfg.daemon_args = c.daemon_args.clone();
            if cfg.daemon_name().starts_with("sesamed") {
                cfg.daemon_args.extend(c.sesamed_args.iter().cloned());
            }
            cfg.flood = c.flood;
            cfg.proto = c.proto;
            cfg.v6_share = c.v6_share;
            cfg.rate = rate;
            cfg.duration = c.duration;
            cfg.legit = c.legit;
            cfg.knock_gap_ms = c.knock_gap_ms;
            cfg.ports = c.sequence.clone();
            cfg.gen_cpu = gen_cpu;
            cfg.gen_cpus = c.gen_cpus;
            cfg.daemon_cpus = c.daemon_cpus.clone();
            cfg.success_window = Duration::from_secs_f64(c.success_window);
            cfg.keep_logs = Some(c.out.join("logs"));
            cfg.verbose = !c.quiet;
            match run_once(&cfg) {
                Ok(r) => {
                    println!("{}", summary_line(&r));
                    runs.push(r);
                    write_results(&json, &runs)?;
                    chart::write_svg(&svg, &runs)?;
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("sesame-bench: run of {} at {rate} pps failed: {e:#}", daemon.display());
                }
            }
        }
    }
    write_results(&json, &runs)?;
    chart::write_svg(&svg, &runs)?;
    eprintln!("sesame-bench: wrote {} and {}", json.display(), svg.display());
    if failures > 0 {
        bail!("{failures} run(s) failed");
    }
    Ok(())
}
