//! Firewall backends under the bench: sesamed's executor limits checked from its
//! `--ops-log`, and knock → rule-in-place latency per backend (knockd beside it).
//!
//! - [`run_load`] (`sesame-bench firewall-load`): many legitimate knockers, each from
//!   its own address, knock one door whose grants go through a real backend with small
//!   limits. From the recorded operation times it checks that no window of any length
//!   `w` saw more than `burst + rate * w` operations start, that at most `concurrency`
//!   ran at once, that every accepted grant closed once and on time, and that every
//!   knocker that completed its sequence was either accepted or refused (the log's
//!   `access refused` lines); it samples sesamed's RSS once a second.
//! - [`run_latency`] (`sesame-bench firewall-latency`): one lab per backend (sesamed
//!   with `nftables`, `iptables`, `command`; knockd with the same command), knockers
//!   spaced so the limits never queue them, and the latency from the last knock to the
//!   rule being in place; also the daemon's child processes over the run.
//!
//! Times on both sides are wall-clock readings on this one machine: the generator
//! stamps each knock as it leaves, sesamed stamps each operation, and a command's
//! `echo` into the bench's FIFO is stamped as it is read.

use crate::gen::{GenConfig, GenReport};
use crate::pacing::Rate;
use crate::report::{latency_summary, LatencyMs};
use crate::run::{
    file_contains, iface_counter, iface_mac, match_outcomes, round3, tail, unix_ns_now, FifoReader,
    Generator, RssSampler,
};
use crate::stats;
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use sesame_lab::{ChildGuard, Lab, TempDir};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The door every firewall run knocks.
pub const DOOR: &str = "fwbench";
/// The port its grants open.
pub const GRANT_PORT: u16 = 22;

// ---------------------------------------------------------------------------------
// What is under test.

/// sesamed's backend for the door's grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FwBackend {
    /// The native nftables backend (netlink, kernel-timed set elements).
    Nftables,
    /// The native iptables backend (sesame's own chain, `iptables` per operation).
    Iptables,
    /// knockd-style start/stop commands (`iptables -I/-D INPUT -s %IP% ...`).
    Command,
}

impl FwBackend {
    pub fn name(self) -> &'static str {
        match self {
            FwBackend::Nftables => "nftables",
            FwBackend::Iptables => "iptables",
            FwBackend::Command => "command",
        }
    }

    /// The program the backend needs in the lab.
    fn tool(self) -> &'static str {
        match self {
            FwBackend::Nftables => "nft",
            FwBackend::Iptables | FwBackend::Command => "iptables",
        }
    }
}

/// One column of the latency table: sesamed with a backend, or knockd (commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    Sesamed(FwBackend),
    Knockd,
}

impl Subject {
    pub fn label(self) -> String {
        match self {
            Subject::Sesamed(b) => format!("sesamed {}", b.name()),
            Subject::Knockd => "knockd command".into(),
        }
    }

    /// `nftables`, `iptables`, `command` (sesamed) or `knockd`.
    pub fn parse(text: &str) -> Result<Subject, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "nftables" => Ok(Subject::Sesamed(FwBackend::Nftables)),
            "iptables" => Ok(Subject::Sesamed(FwBackend::Iptables)),
            "command" => Ok(Subject::Sesamed(FwBackend::Command)),
            "knockd" => Ok(Subject::Knockd),
            other => Err(format!("unknown backend {other:?}: nftables, iptables, command or knockd")),
        }
    }
}

/// The executor's `[firewall]` limits and the door's grant length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Operations per second, sustained.
    pub rate: u32,
    /// Operations that may start at once after a quiet spell.
    pub burst: u32,
    /// Operations running at once.
    pub concurrency: u32,
    /// Knocks admitted and waiting; past it new ones are refused.
    pub queue: u32,
    /// Seconds one operation may take (`command_timeout`).
    pub command_timeout: u32,
    /// Seconds a grant lasts (the door's `cmd_timeout`).
    pub cmd_timeout: u32,
}

impl Default for Limits {
    /// sesamed's defaults, with 5-second grants.
    fn default() -> Limits {
        Limits { rate: 100, burst: 200, concurrency: 4, queue: 4096, command_timeout: 10, cmd_timeout: 5 }
    }
}

/// The iptables commands a command door runs; the start one also echoes the knocker's
/// address into `fifo` once the rule is in, if given.
pub fn iptables_commands(iptables: &str, fifo: Option<&Path>) -> (String, String) {
    let rule = format!("-s %IP% -p tcp --dport {GRANT_PORT} -j ACCEPT");
    let mut start = format!("{iptables} -w 10 -I INPUT {rule}");
    if let Some(f) = fifo {
        start.push_str(&format!(" && echo %IP% >> {}", f.display()));
    }
    (start, format!("{iptables} -w 10 -D INPUT {rule}"))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// sesamed's config for one firewall run: the door [`DOOR`] with `ports`, its grants
/// through `backend` (`commands` = start and stop for the command backend), and the
/// limits. Grants left open at a stop stay open (`close_on_exit = false`), so that no
/// close is ever made early by the shutdown itself.
pub fn sesamed_toml(
    log_file: &Path,
    state_dir: &Path,
    backend: FwBackend,
    commands: Option<&(String, String)>,
    limits: &Limits,
    ports: &[u16],
    seq_timeout: u32,
) -> String {
    let seq = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let mut t = format!(
        "[options]\nlog_file = {log}\n\n\
         [firewall]\nbackend = {backend}\nrate = {rate}\nburst = {burst}\nconcurrency = {conc}\n\
         queue = {queue}\ncommand_timeout = {ct}\nstate_dir = {state}\nclose_on_exit = false\n\n\
         [[door]]\nname = {door}\nsequence = [{seq}]\nseq_timeout = {seq_timeout}\n\
         tcp_flags = [\"syn\"]\ncmd_timeout = {grant}\n",
        log = toml_str(&log_file.to_string_lossy()),
        backend = toml_str(backend.name()),
        rate = limits.rate,
        burst = limits.burst,
        conc = limits.concurrency,
        queue = limits.queue,
        ct = limits.command_timeout,
        state = toml_str(&state_dir.to_string_lossy()),
        door = toml_str(DOOR),
        grant = limits.cmd_timeout,
    );
    match (backend, commands) {
        (FwBackend::Command, Some((start, stop))) => {
            t.push_str(&format!("start_command = {}\nstop_command = {}\n", toml_str(start), toml_str(stop)));
        }
        _ => t.push_str(&format!("open = [\"{GRANT_PORT}/tcp\"]\n")),
    }
    t
}

/// knockd's config for the latency run: the same door with the same commands.
pub fn knockd_fw_conf(
    log_file: &Path,
    commands: &(String, String),
    ports: &[u16],
    seq_timeout: u32,
    cmd_timeout: u32,
) -> String {
    let seq = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    format!(
        "[options]\n\tLogFile = {log}\n\n[{DOOR}]\n\tsequence = {seq}\n\tseq_timeout = {seq_timeout}\n\
         \ttcpflags = syn\n\tstart_command = {start}\n\tcmd_timeout = {cmd_timeout}\n\tstop_command = {stop}\n",
        log = log_file.display(),
        start = commands.0,
        stop = commands.1,
    )
}

// ---------------------------------------------------------------------------------
// The ops log.

/// `open` or `close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Open,
    Close,
}

/// One line of sesamed's `--ops-log`: `STARTED FINISHED OP RESULT IP DOOR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// When it took its token and concurrency slot, ns since the epoch.
    pub started_ns: u64,
    /// When it gave the slot back.
    pub finished_ns: u64,
    pub op: Op,
    /// `Ok`, `Failed` or `TimedOut`.
    pub result: String,
    pub ip: IpAddr,
    pub door: String,
}

impl OpRecord {
    pub fn ok(&self) -> bool {
        self.result == "Ok"
    }
}

/// `1712345678.123456789` as ns since the epoch, without going through a float.
fn parse_unix_ns(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if frac.len() > 9 {
        return None;
    }
    let frac_ns: u64 =
        if frac.is_empty() { 0 } else { frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32) };
    secs.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Every line of an ops log; a malformed line is an error naming it.
pub fn parse_ops_log(text: &str) -> Result<Vec<OpRecord>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("ops log line {}: {line:?}", n + 1);
        let mut it = line.splitn(6, ' ');
        let mut next = || it.next().ok_or_else(bad);
        let started_ns = parse_unix_ns(next()?).ok_or_else(bad)?;
        let finished_ns = parse_unix_ns(next()?).ok_or_else(bad)?;
        let op = match next()? {
            "open" => Op::Open,
            "close" => Op::Close,
            _ => return Err(bad()),
        };
        let result = next()?.to_owned();
        let ip = next()?.parse().map_err(|_| bad())?;
        let door = next()?.to_owned();
        out.push(OpRecord { started_ns, finished_ns, op, result, ip, door });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The checks, on recorded times only.

/// Min, median, 99th percentile and max of signed values (nearest rank).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub samples: u64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Spread {
        samples: v.len() as u64,
        min: round3(v[0]),
        p50: round3(rank(0.5)),
        p99: round3(rank(0.99)),
        max: round3(v[v.len() - 1]),
    })
}

/// The most operations that started within any window of one length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowMax {
    pub window_s: f64,
    pub max_ops: u64,
    /// `burst + rate * window_s`.
    pub bound: f64,
}

/// The token bucket's promise, checked over every window between two recorded starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateCheck {
    pub ops: u64,
    pub rate: u32,
    pub burst: u32,
    /// The most `n - rate * w` over all windows (n operations starting within w
    /// seconds, from one recorded start to another): at most `burst` if the bound held.
    pub max_ops_beyond_rate: f64,
    /// The window where that was reached: its operations, length and bound.
    pub tightest_ops: u64,
    pub tightest_window_s: f64,
    pub tightest_bound: f64,
    /// Windows of a few fixed lengths, for reading.
    pub windows: Vec<WindowMax>,
    /// Slack for reading two clocks: sesamed takes tokens by the monotonic clock and
    /// records the wall clock read just after it, so a recorded window may be shorter
    /// than the real one by the time between the two readings (nanoseconds, unless
    /// the thread is preempted in between).
    pub clock_slack_ms: f64,
    /// Whether `n <= burst + rate * (w + clock_slack)` held in every window.
    pub ok: bool,
}

/// See [`RateCheck::clock_slack_ms`].
pub const CLOCK_SLACK: Duration = Duration::from_millis(1);

/// Checks `n <= burst + rate * w` for every pair of recorded starts (w from the first
/// to the last start of the n): O(n) by keeping the best window start so far.
pub fn check_rate(starts_ns: &[u64], rate: u32, burst: u32) -> RateCheck {
    let mut t: Vec<u64> = starts_ns.to_vec();
    t.sort_unstable();
    let r = f64::from(rate);
    let base = t.first().copied().unwrap_or(0);
    let secs: Vec<f64> = t.iter().map(|&x| (x - base) as f64 * 1e-9).collect();
    // For a window [t_i, t_j]: (j - i + 1) - r (t_j - t_i) = (j + 1 - r t_j) + (r t_i - i).
    let (mut best_start, mut best_start_i) = (f64::NEG_INFINITY, 0usize);
    let (mut best, mut bi, mut bj) = (0.0f64, 0usize, 0usize);
    for (j, &tj) in secs.iter().enumerate() {
        let v = r * tj - j as f64;
        if v > best_start {
            best_start = v;
            best_start_i = j;
        }
        let here = (j + 1) as f64 - r * tj + best_start;
        if here > best {
            (best, bi, bj) = (here, best_start_i, j);
        }
    }
    let windows = [0.01, 0.1, 1.0, 10.0]
        .into_iter()
        .map(|w| {
            let mut i = 0;
            let mut most = 0;
            for j in 0..secs.len() {
                while secs[j] - secs[i] > w + 1e-12 {
                    i += 1;
                }
                most = most.max(j - i + 1);
            }
            WindowMax { window_s: w, max_ops: most as u64, bound: f64::from(burst) + r * w }
        })
        .collect();
    let w = if secs.is_empty() { 0.0 } else { secs[bj] - secs[bi] };
    RateCheck {
        ops: t.len() as u64,
        rate,
        burst,
        max_ops_beyond_rate: (best * 1e4).round() / 1e4,
        tightest_ops: if secs.is_empty() { 0 } else { (bj - bi + 1) as u64 },
        tightest_window_s: (w * 1e6).round() / 1e6,
        tightest_bound: round3(f64::from(burst) + r * w),
        windows,
        clock_slack_ms: CLOCK_SLACK.as_secs_f64() * 1e3,
        ok: best <= f64::from(burst) + r * CLOCK_SLACK.as_secs_f64() + 1e-9,
    }
}

/// The most operations holding a slot at one instant: each holds it from `started`
/// (inclusive) to `finished` (exclusive), as the executor gives a slot back and hands
/// it on at the same instant.
pub fn max_overlap(ops: &[OpRecord]) -> u64 {
    let mut ev: Vec<(u64, i8)> = Vec::with_capacity(ops.len() * 2);
    for o in ops.iter().filter(|o| o.finished_ns > o.started_ns) {
        ev.push((o.started_ns, 1));
        ev.push((o.finished_ns, -1));
    }
    // At one instant, ends before starts.
    ev.sort_unstable();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in ev {
        now += i64::from(d);
        most = most.max(now);
    }
    most as u64
}

/// How each accepted grant went: one open, then one close at its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantCheck {
    /// Addresses with at least one open operation.
    pub accepted: u64,
    pub opens: u64,
    pub closes: u64,
    /// Operations that ended `Failed` or `TimedOut`.
    pub failed_ops: u64,
    /// Addresses whose operations were exactly one open (Ok) and then one close (Ok).
    pub open_then_close: u64,
    /// Addresses with anything else (no close, two opens, a failure...), and a few of them.
    pub irregular: u64,
    pub irregular_examples: Vec<String>,
    /// Operations for addresses that are no knocker of the run.
    pub unknown_addresses: u64,
    /// Seconds the door's grants last.
    pub cmd_timeout_s: u32,
    /// Close start minus (open start + `cmd_timeout`), ms: sesamed times a grant from
    /// the start of its open (knockd, from its start command), so this is never below
    /// `-early_tolerance_ms`. Closes go through the same token bucket and concurrency
    /// slots as opens (ahead of them), so a close can wait for a running operation or
    /// queue behind other closes: closes fall due at the pace the opens started, but
    /// the opens may have spent the bucket's burst. Never above `margin_ms` (by default
    /// 1 s + (burst + concurrency) / rate).
    pub close_after_open_ms: Option<Spread>,
    pub margin_ms: f64,
    pub late: u64,
    /// Close start minus (last knock sent + `cmd_timeout`), ms: at least the open's wait
    /// in the queue, as the grant runs from its open. Never below `-early_tolerance_ms`.
    pub close_after_knock_ms: Option<Spread>,
    pub early_tolerance_ms: f64,
    pub early: u64,
    /// Open start minus the last knock, ms: the wait in the queue.
    pub open_wait_ms: Option<Spread>,
    /// Open and close operation times (start to slot back), ms.
    pub open_op_ms: Option<Spread>,
    pub close_op_ms: Option<Spread>,
    /// Open finished to close finished, ms: how long the access was in place.
    pub access_ms: Option<Spread>,
    /// Grants whose access lasted less than a tenth of `cmd_timeout`: their open
    /// waited in the queue for nearly all of the grant's time.
    pub short_grants: u64,
    pub ok: bool,
}

/// Checks every address's operations against its knock: `last_knock_ns` maps each
/// knocker to when its last knock left the generator.
pub fn check_grants(
    ops: &[OpRecord],
    last_knock_ns: &HashMap<IpAddr, u64>,
    cmd_timeout: Duration,
    margin: Duration,
    early_tolerance: Duration,
) -> GrantCheck {
    let mut by_ip: BTreeMap<IpAddr, Vec<&OpRecord>> = BTreeMap::new();
    for o in ops {
        by_ip.entry(o.ip).or_default().push(o);
    }
    let ms = |ns: i128| ns as f64 / 1e6;
    let t_ns = cmd_timeout.as_nanos() as i128;
    let mut c = GrantCheck {
        accepted: 0,
        opens: ops.iter().filter(|o| o.op == Op::Open).count() as u64,
        closes: ops.iter().filter(|o| o.op == Op::Close).count() as u64,
        failed_ops: ops.iter().filter(|o| !o.ok()).count() as u64,
        open_then_close: 0,
        irregular: 0,
        irregular_examples: Vec::new(),
        unknown_addresses: 0,
        cmd_timeout_s: cmd_timeout.as_secs() as u32,
        close_after_open_ms: None,
        margin_ms: margin.as_secs_f64() * 1e3,
        late: 0,
        close_after_knock_ms: None,
        early_tolerance_ms: early_tolerance.as_secs_f64() * 1e3,
        early: 0,
        open_wait_ms: None,
        open_op_ms: None,
        close_op_ms: None,
        access_ms: None,
        short_grants: 0,
        ok: false,
    };
    let (mut vs_knock, mut vs_open, mut wait, mut open_op, mut close_op, mut access) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (ip, mut list) in by_ip {
        list.sort_by_key(|o| (o.started_ns, o.finished_ns));
        if list.iter().any(|o| o.op == Op::Open) {
            c.accepted += 1;
        }
        let Some(&knock) = last_knock_ns.get(&ip) else {
            c.unknown_addresses += 1;
            continue;
        };
        let regular =
            matches!(list.as_slice(), [o, cl] if o.op == Op::Open && o.ok() && cl.op == Op::Close && cl.ok());
        if !regular {
            c.irregular += 1;
            if c.irregular_examples.len() < 10 {
                let ops: Vec<String> = list.iter().map(|o| format!("{:?} {}", o.op, o.result)).collect();
                c.irregular_examples.push(format!("{ip}: {}", ops.join(", ")));
            }
            continue;
        }
        c.open_then_close += 1;
        let (open, close) = (list[0], list[1]);
        let (knock, o_s, o_f, c_s, c_f) = (
            knock as i128,
            open.started_ns as i128,
            open.finished_ns as i128,
            close.started_ns as i128,
            close.finished_ns as i128,
        );
        let after_knock = c_s - (knock + t_ns);
        let after_open = c_s - (o_s + t_ns);
        let tolerance = early_tolerance.as_nanos() as i128;
        if after_knock < -tolerance || after_open < -tolerance || c_s < o_f {
            c.early += 1;
        }
        if after_open > margin.as_nanos() as i128 {
            c.late += 1;
        }
        vs_knock.push(ms(after_knock));
        vs_open.push(ms(after_open));
        wait.push(ms(o_s - knock));
        open_op.push(ms(o_f - o_s));
        close_op.push(ms(c_f - c_s));
        access.push(ms(c_f - o_f));
        if (c_f - o_f) * 10 < t_ns {
            c.short_grants += 1;
        }
    }
    c.close_after_knock_ms = spread(vs_knock);
    c.close_after_open_ms = spread(vs_open);
    c.open_wait_ms = spread(wait);
    c.open_op_ms = spread(open_op);
    c.close_op_ms = spread(close_op);
    c.access_ms = spread(access);
    c.ok = c.irregular == 0 && c.unknown_addresses == 0 && c.failed_ops == 0 && c.early == 0 && c.late == 0;
    c
}

/// What the daemon's LogFile says about the door, line by line.
#[derive(Clone, Debug, Default)]
pub struct LogCounts {
    /// Addresses that completed the sequence (`IP: DOOR: OPEN SESAME`).
    pub completed: HashSet<IpAddr>,
    /// Addresses refused a grant, with the reason (`IP: DOOR: access refused: ...`).
    pub refused: HashMap<IpAddr, String>,
    /// Operations begun, from `IP: DOOR: BACKEND: open|close` or
    /// `DOOR: running command: ...` (`-I INPUT` opens, `-D INPUT` closes).
    pub open_starts: u64,
    pub close_starts: u64,
}

impl LogCounts {
    /// Takes one LogFile line (`[YYYY-MM-DD HH:MM] message`).
    pub fn line(&mut self, line: &str) {
        let msg = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((_, m)) => m,
            None => line,
        };
        if let Some(cmd) = msg.strip_prefix(DOOR).and_then(|m| m.strip_prefix(": running command: ")) {
            if cmd.contains(" -I INPUT ") {
                self.open_starts += 1;
            } else if cmd.contains(" -D INPUT ") {
                self.close_starts += 1;
            }
            return;
        }
        let Some((ip, rest)) = msg.split_once(": ") else { return };
        let Ok(ip) = ip.parse::<IpAddr>() else { return };
        let Some(rest) = rest.strip_prefix(DOOR).and_then(|r| r.strip_prefix(": ")) else { return };
        if rest == "OPEN SESAME" {
            self.completed.insert(ip);
        } else if let Some(reason) = rest.strip_prefix("access refused: ") {
            self.refused.insert(ip, reason.to_owned());
        } else if rest.strip_suffix(": open").is_some_and(|b| !b.contains(' ')) {
            self.open_starts += 1;
        } else if rest.strip_suffix(": close").is_some_and(|b| !b.contains(' ')) {
            self.close_starts += 1;
        }
    }

    pub fn of(text: &str) -> LogCounts {
        let mut c = LogCounts::default();
        text.lines().for_each(|l| c.line(l));
        c
    }
}

/// Reads what a log file gained since the last call, whole lines only.
struct Follower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follower {
    fn new(path: &Path) -> Follower {
        Follower { path: path.to_owned(), offset: 0, partial: String::new() }
    }

    fn poll(&mut self, counts: &mut LogCounts) {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        if let Some(end) = self.partial.rfind('\n') {
            let whole: String = self.partial.drain(..=end).collect();
            whole.lines().for_each(|l| counts.line(l));
        }
    }
}

/// How the completed knockers were answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    /// Knockers the generator sent the whole sequence for.
    pub knockers_sent: u64,
    /// Of those, the ones the daemon logged `OPEN SESAME` for.
    pub completed: u64,
    /// Completed and given a grant (an open operation in the ops log).
    pub accepted: u64,
    /// Completed and refused (`access refused` in the log), by reason.
    pub refused: u64,
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Addresses both accepted and refused (should be none).
    pub accepted_and_refused: u64,
    /// Whether every completed knocker was accepted or refused, and none both.
    pub ok: bool,
    /// Knockers sent whose sequence the daemon never completed (their knocks lost on
    /// the way, or missed); see [`Delivery`].
    pub lost_sequences: u64,
}

/// Where knocks went, to tell a lost knock from a missed one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Knock frames the generator sent.
    pub frames_sent: u64,
    /// `rx_packets` and `rx_dropped` deltas of the server's veth over the run.
    pub server_rx_packets: u64,
    pub server_rx_dropped: u64,
    /// Packets and ring drops from sesamed's shutdown `stats:` line.
    pub daemon_packets: Option<u64>,
    pub daemon_kernel_drops: Option<u64>,
}

fn account(knockers_sent: u64, log: &LogCounts, ops: &[OpRecord]) -> Accounting {
    let accepted: HashSet<IpAddr> = ops.iter().filter(|o| o.op == Op::Open).map(|o| o.ip).collect();
    let refused: HashSet<IpAddr> = log.refused.keys().copied().collect();
    let mut by_reason = BTreeMap::new();
    for reason in log.refused.values() {
        *by_reason.entry(reason.clone()).or_insert(0) += 1;
    }
    let both = accepted.intersection(&refused).count() as u64;
    let answered: HashSet<IpAddr> = accepted.union(&refused).copied().collect();
    let completed = log.completed.len() as u64;
    Accounting {
        knockers_sent,
        completed,
        accepted: accepted.len() as u64,
        refused: refused.len() as u64,
        refused_by_reason: by_reason,
        accepted_and_refused: both,
        ok: both == 0
            && answered == log.completed
            && accepted.len() as u64 + refused.len() as u64 == completed,
        lost_sequences: knockers_sent.saturating_sub(completed),
    }
}

// ---------------------------------------------------------------------------------
// Running a daemon in the lab.

fn progress(verbose: bool, msg: impl AsRef<str>) {
    if verbose {
        eprintln!("sesame-bench: {}", msg.as_ref());
    }
}

/// Starts `daemon -i IF -c CONF ARGS` in the server namespace and waits for its
/// `starting up` line.
fn start_daemon(
    lab: &Lab,
    daemon: &Path,
    conf: &Path,
    args: &[String],
    cpus: Option<&str>,
    log_file: &Path,
    out_file: &Path,
) -> anyhow::Result<ChildGuard> {
    let out = std::fs::File::create(out_file)?;
    // `ip netns exec` and `taskset` exec the daemon: the child's pid is the daemon's.
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = lab.server.command("taskset");
            c.arg("-c").arg(cpus).arg(daemon);
            c
        }
        None => lab.server.command(daemon),
    };
    cmd.arg("-i").arg(&lab.server_if).arg("-c").arg(conf).args(args);
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let mut guard = ChildGuard::spawn(&mut cmd).with_context(|| format!("starting {}", daemon.display()))?;
    let up = sesame_lab::wait_until(Duration::from_secs(15), || {
        file_contains(log_file, "starting up, listening on") || !guard.is_running()
    });
    if !up || !guard.is_running() {
        bail!("{} did not start up: {}{}", daemon.display(), tail(log_file, 2000), tail(out_file, 2000));
    }
    Ok(guard)
}

/// Sends SIGTERM and waits; the exit status as text.
fn stop_daemon(guard: &mut ChildGuard, wait: Duration) -> anyhow::Result<String> {
    if !guard.is_running() {
        return Ok(format!(
            "died during the run: {}",
            guard.wait_timeout(Duration::ZERO)?.map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    guard.signal("TERM")?;
    Ok(match guard.wait_timeout(wait)? {
        Some(st) => st.to_string(),
        None => format!("did not exit within {} s of SIGTERM", wait.as_secs()),
    })
}

fn gen_config(
    lab: &Lab,
    knockers: u32,
    duration: f64,
    ports: &[u16],
    gap_ms: u64,
) -> anyhow::Result<GenConfig> {
    let cfg = GenConfig {
        iface: lab.client_if.clone(),
        src_mac: iface_mac(&lab.client, &lab.client_if)?,
        dst_mac: iface_mac(&lab.server, &lab.server_if)?,
        dst_ip: lab.server_v4,
        dst_ip6: None,
        v6_share: 0.0,
        flood: crate::gen::FloodMode::FirstPort,
        proto: crate::gen::FloodProto::Syn,
        rate: Rate::Pps(0),
        duration,
        ports: ports.to_vec(),
        legit: knockers,
        knock_gap_ms: gap_ms,
        seed: None,
        batch: 128,
        gen_cpus: 1,
        pin_cpus: Vec::new(),
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn full_knockers(report: &GenReport, steps: usize) -> Vec<&crate::gen::KnockerReport> {
    report.knockers.iter().filter(|k| k.knocks_sent as usize == steps).collect()
}

fn require_tool(name: &str) -> anyhow::Result<String> {
    sesame_lab::which(name)
        .map(|p| p.display().to_string())
        .ok_or_else(|| anyhow!("`{name}` is not installed (needed in the lab)"))
}

/// `cminflt`, `cutime + cstime` of a process (fields 11, 16, 17 of `/proc/PID/stat`):
/// what its reaped children cost. Any child that ran a program adds page faults.
pub fn children_totals(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some((field(11)?, field(16)? + field(17)?))
}

fn read_children_totals(pid: u32) -> Option<(u64, u64)> {
    children_totals(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Collects the pids of a process's children every 2 ms
/// (`/proc/PID/task/*/children`).
struct ChildSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(HashSet<u32>, u64)>>,
}

impl ChildSampler {
    fn start(pid: u32) -> ChildSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut samples = 0u64;
            let dir = format!("/proc/{pid}/task");
            while !flag.load(Ordering::Relaxed) {
                let Ok(tasks) = std::fs::read_dir(&dir) else { break };
                for t in tasks.flatten() {
                    if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                        seen.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (seen, samples)
        });
        ChildSampler { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> (HashSet<u32>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------
// firewall-load

/// One `firewall-load` run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub sesamed: PathBuf,
    pub bench_exe: PathBuf,
    pub backend: FwBackend,
    pub limits: Limits,
    /// Knockers, each from its own address, spread by the generator's schedule over
    /// 10% to 80% of `duration`.
    pub knockers: u32,
    pub duration: f64,
    pub ports: Vec<u16>,
    pub seq_timeout: u32,
    pub knock_gap_ms: u64,
    /// Most a close may start after its time (default: 1 s + (burst + concurrency) / rate).
    pub close_margin: Option<Duration>,
    /// Most a close may start before its time, as judged from the knock's send time.
    pub early_tolerance: Duration,
    /// Most sesamed's RSS may grow from its first sample to its peak, KiB.
    pub rss_growth_limit_kib: u64,
    pub gen_cpu: Option<usize>,
    pub daemon_cpus: Option<String>,
    /// Where to copy the daemon's log, output and ops log.
    pub keep_logs: Option<PathBuf>,
    pub verbose: bool,
}

impl LoadConfig {
    pub fn new(sesamed: PathBuf, bench_exe: PathBuf) -> LoadConfig {
        LoadConfig {
            sesamed,
            bench_exe,
            backend: FwBackend::Nftables,
            limits: Limits::default(),
            knockers: 10_000,
            duration: 60.0,
            ports: vec![7000, 8000, 9000],
            seq_timeout: 5,
            knock_gap_ms: 2,
            close_margin: None,
            early_tolerance: Duration::from_millis(100),
            rss_growth_limit_kib: 16 * 1024,
            gen_cpu: Some(stats::first_allowed_cpu()),
            daemon_cpus: None,
            keep_logs: None,
            verbose: false,
        }
    }

    pub fn margin(&self) -> Duration {
        self.close_margin.unwrap_or_else(|| {
            let l = &self.limits;
            Duration::from_secs(1)
                + Duration::from_secs_f64(f64::from(l.burst + l.concurrency) / f64::from(l.rate.max(1)))
        })
    }
}

/// sesamed's memory over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// VmRSS at the first one-second sample (after start-up) and at its highest, KiB.
    pub rss_first_kib: u64,
    pub rss_peak_kib: u64,
    /// VmHWM just before the stop, KiB.
    pub vm_hwm_kib: Option<u64>,
    pub growth_limit_kib: u64,
    pub ok: bool,
    pub rss_series_kib: Vec<(f64, u64)>,
}

/// What `firewall-load` found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    pub daemon_path: String,
    pub backend: FwBackend,
    pub limits: Limits,
    pub knockers: u32,
    pub duration_s: f64,
    /// Knockers per second while they knocked.
    pub knock_rate: f64,
    pub ops: u64,
    pub rate: RateCheck,
    pub max_concurrent: u64,
    pub concurrency_ok: bool,
    pub grants: GrantCheck,
    pub accounting: Accounting,
    pub delivery: Delivery,
    pub memory: Memory,
    pub daemon_exit: String,
    pub daemon_stats: Option<BTreeMap<String, u64>>,
    /// Every check that failed, in words; empty when all held.
    pub failures: Vec<String>,
    /// What is worth a look but checks nothing about the firewall (knock sequences
    /// that never completed).
    pub warnings: Vec<String>,
}

impl LoadResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs sesamed under `cfg.knockers` knockers in a fresh lab and checks its ops log.
pub fn run_load(cfg: &LoadConfig) -> anyhow::Result<LoadResult> {
    let l = cfg.limits;
    if !(cfg.duration > 0.0 && cfg.duration <= crate::gen::MAX_DURATION_SECS) {
        bail!(
            "duration {} s: must be more than 0 and at most {} s",
            cfg.duration,
            crate::gen::MAX_DURATION_SECS
        );
    }
    if !cfg.sesamed.is_file() {
        bail!("sesamed {} not found", cfg.sesamed.display());
    }
    let iptables = require_tool(cfg.backend.tool())?;
    let lab = Lab::new("fl").context("building the lab")?;
    let tmp = TempDir::new("sfl")?;
    let (log_file, out_file, ops_file) =
        (tmp.join("daemon.log"), tmp.join("daemon.out"), tmp.join("ops.log"));
    let state = tmp.join("state");
    let commands = (cfg.backend == FwBackend::Command).then(|| iptables_commands(&iptables, None));
    let conf = tmp.join("sesamed.toml");
    std::fs::write(
        &conf,
        sesamed_toml(&log_file, &state, cfg.backend, commands.as_ref(), &l, &cfg.ports, cfg.seq_timeout),
    )?;
    let args: Vec<String> = vec![
        "--state-dir".into(),
        state.display().to_string(),
        "--ops-log".into(),
        ops_file.display().to_string(),
    ];
    progress(
        cfg.verbose,
        format!(
            "firewall-load: sesamed {} backend, {} knockers over {} s, rate {} burst {} concurrency {} queue {} \
             cmd_timeout {} s",
            cfg.backend.name(),
            cfg.knockers,
            cfg.duration,
            l.rate,
            l.burst,
            l.concurrency,
            l.queue,
            l.cmd_timeout
        ),
    );
    let t0 = Instant::now();
    let mut daemon =
        start_daemon(&lab, &cfg.sesamed, &conf, &args, cfg.daemon_cpus.as_deref(), &log_file, &out_file)?;
    let pid = daemon.id();
    let sampler = RssSampler::start(pid, t0, log_file.clone());
    let gen_cfg = gen_config(&lab, cfg.knockers, cfg.duration, &cfg.ports, cfg.knock_gap_ms)?;
    let rx0 = iface_counter(&lab.server, &lab.server_if, "rx_packets")?;
    let drop0 = iface_counter(&lab.server, &lab.server_if, "rx_dropped")?;
    let gen = Generator::start(&lab, &cfg.bench_exe, &gen_cfg, cfg.gen_cpu)?;
    let report = gen.finish(Duration::from_secs_f64(cfg.duration) + Duration::from_secs(60))?;
    let full = full_knockers(&report, cfg.ports.len());
    progress(
        cfg.verbose,
        format!("generator: {} of {} knockers sent their sequence", full.len(), cfg.knockers),
    );

    let rx1 = iface_counter(&lab.server, &lab.server_if, "rx_packets")?;
    let drop1 = iface_counter(&lab.server, &lab.server_if, "rx_dropped")?;

    // Wait until every completed knock has been refused or its grant's close has begun
    // (then SIGTERM lets what runs finish, and starts nothing). A sequence not
    // complete 2 s after the last knock was sent never will be.
    let last_sent = full.iter().map(|k| k.last_knock_ns).max().unwrap_or(0);
    let backlog = Duration::from_secs_f64(2.0 * f64::from(l.queue) / f64::from(l.rate.max(1)));
    let deadline = Instant::now() + Duration::from_secs(u64::from(l.cmd_timeout) + 30) + backlog;
    let mut follower = Follower::new(&log_file);
    let mut live = LogCounts::default();
    loop {
        follower.poll(&mut live);
        let answered = live.close_starts + live.refused.len() as u64;
        let heard = live.completed.len() >= full.len() || unix_ns_now() > last_sent + 2_000_000_000;
        if (heard && answered >= live.completed.len() as u64)
            || Instant::now() >= deadline
            || !daemon.is_running()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = stats::status_kib(pid, "VmHWM");
    let (rss_series, _, _) = sampler.finish();
    let exit = stop_daemon(&mut daemon, Duration::from_secs(u64::from(l.command_timeout) + 15))?;
    drop(daemon);
    if let Some(dir) = &cfg.keep_logs {
        std::fs::create_dir_all(dir)?;
        let stem = format!("firewall-load-{}", cfg.backend.name());
        for (src, ext) in [(&log_file, "log"), (&out_file, "out"), (&ops_file, "ops")] {
            let _ = std::fs::copy(src, dir.join(format!("{stem}.{ext}")));
        }
    }
    let ops_text = std::fs::read_to_string(&ops_file).unwrap_or_default();
    let ops = parse_ops_log(&ops_text).map_err(anyhow::Error::msg)?;
    let ops: Vec<OpRecord> = ops.into_iter().filter(|o| o.door == DOOR).collect();
    let log = LogCounts::of(&std::fs::read_to_string(&log_file).unwrap_or_default());
    let daemon_stats = stats::parse_stats_log(&tail(&out_file, 64 * 1024));
    drop(lab);

    let last_knock: HashMap<IpAddr, u64> = full.iter().map(|k| (IpAddr::V4(k.ip), k.last_knock_ns)).collect();
    let starts: Vec<u64> = ops.iter().map(|o| o.started_ns).collect();
    let rate = check_rate(&starts, l.rate, l.burst);
    let max_concurrent = max_overlap(&ops);
    let grants = check_grants(
        &ops,
        &last_knock,
        Duration::from_secs(u64::from(l.cmd_timeout)),
        cfg.margin(),
        cfg.early_tolerance,
    );
    let accounting = account(full.len() as u64, &log, &ops);
    let delivery = Delivery {
        frames_sent: report.legit_frames_sent,
        server_rx_packets: rx1.saturating_sub(rx0),
        server_rx_dropped: drop1.saturating_sub(drop0),
        daemon_packets: daemon_stats.as_ref().and_then(|m| m.get("packets").copied()),
        daemon_kernel_drops: daemon_stats.as_ref().and_then(|m| m.get("kernel_drops").copied()),
    };
    let rss_first = rss_series.first().map(|s| s.1).unwrap_or(0);
    let rss_peak = rss_series.iter().map(|s| s.1).max().unwrap_or(0);
    let memory = Memory {
        rss_first_kib: rss_first,
        rss_peak_kib: rss_peak,
        vm_hwm_kib: hwm,
        growth_limit_kib: cfg.rss_growth_limit_kib,
        ok: rss_first > 0 && rss_peak - rss_first <= cfg.rss_growth_limit_kib,
        rss_series_kib: rss_series,
    };
    let (first_knock, last) = (
        full.iter().map(|k| k.first_knock_ns).min().unwrap_or(0),
        full.iter().map(|k| k.last_knock_ns).max().unwrap_or(0),
    );
    let knock_rate = full.len() as f64 / ((last.saturating_sub(first_knock)) as f64 * 1e-9).max(1e-3);
    let mut failures = Vec::new();
    if ops.is_empty() {
        failures.push("the ops log has no operation".to_owned());
    }
    if !rate.ok {
        failures.push(format!(
            "{} operations started within {} s, more than burst + rate * w = {}",
            rate.tightest_ops, rate.tightest_window_s, rate.tightest_bound
        ));
    }
    let concurrency_ok = max_concurrent <= u64::from(l.concurrency);
    if !concurrency_ok {
        failures.push(format!("{max_concurrent} operations overlapped (concurrency {})", l.concurrency));
    }
    if !grants.ok {
        failures.push(format!(
            "grants: {} irregular (e.g. {:?}), {} failed operations, {} closes early, {} late (margin {} ms), \
             {} unknown addresses",
            grants.irregular,
            grants.irregular_examples.first(),
            grants.failed_ops,
            grants.early,
            grants.late,
            grants.margin_ms,
            grants.unknown_addresses
        ));
    }
    if !accounting.ok {
        failures.push(format!(
            "accounting: {} completed, {} accepted + {} refused ({} both)",
            accounting.completed, accounting.accepted, accounting.refused, accounting.accepted_and_refused
        ));
    }
    let mut warnings = Vec::new();
    if accounting.lost_sequences > 0 {
        warnings.push(format!(
            "{} of {} knockers' sequences never completed: {} knock frames sent, the server's veth received \
             {} and dropped {}, sesamed counted {} packets and {} ring drops",
            accounting.lost_sequences,
            accounting.knockers_sent,
            delivery.frames_sent,
            delivery.server_rx_packets,
            delivery.server_rx_dropped,
            delivery.daemon_packets.map_or("-".into(), |v| v.to_string()),
            delivery.daemon_kernel_drops.map_or("-".into(), |v| v.to_string()),
        ));
    }
    if !memory.ok {
        failures.push(format!(
            "RSS grew from {} KiB to {} KiB (limit +{} KiB)",
            memory.rss_first_kib, memory.rss_peak_kib, memory.growth_limit_kib
        ));
    }
    if !exit.contains("exit status: 0") {
        failures.push(format!("sesamed: {exit}"));
    }
    Ok(LoadResult {
        daemon_path: cfg.sesamed.display().to_string(),
        backend: cfg.backend,
        limits: l,
        knockers: cfg.knockers,
        duration_s: round3(report.elapsed_s),
        knock_rate: round3(knock_rate),
        ops: ops.len() as u64,
        rate,
        max_concurrent,
        concurrency_ok,
        grants,
        accounting,
        delivery,
        memory,
        daemon_exit: exit,
        daemon_stats,
        failures,
        warnings,
    })
}

fn fmt_spread(s: &Option<Spread>) -> String {
    match s {
        Some(s) => format!("min {} / p50 {} / p99 {} / max {} ms", s.min, s.p50, s.p99, s.max),
        None => "no samples".into(),
    }
}

/// The summary printed after a `firewall-load` run.
pub fn load_summary(r: &LoadResult) -> String {
    let l = &r.limits;
    let a = &r.accounting;
    let g = &r.grants;
    let mut s = format!(
        "firewall-load: sesamed, {} backend; rate {} burst {} concurrency {} queue {} cmd_timeout {} s\n\
         knockers: {} sent their sequence ({:.0}/s), {} completed, {} accepted, {} refused {:?}{}\n\
         operations: {} ({} opens, {} closes, {} failed)\n\
         rate: max n - rate*w over all windows {} (burst {}): tightest window {} ops in {} s, bound {}{}\n",
        r.backend.name(),
        l.rate,
        l.burst,
        l.concurrency,
        l.queue,
        l.cmd_timeout,
        a.knockers_sent,
        r.knock_rate,
        a.completed,
        a.accepted,
        a.refused,
        a.refused_by_reason,
        if a.ok { " (accepted + refused = completed)" } else { " MISMATCH" },
        r.ops,
        g.opens,
        g.closes,
        g.failed_ops,
        r.rate.max_ops_beyond_rate,
        r.rate.burst,
        r.rate.tightest_ops,
        r.rate.tightest_window_s,
        r.rate.tightest_bound,
        if r.rate.ok { " ok" } else { " EXCEEDED" },
    );
    for w in &r.rate.windows {
        s.push_str(&format!(
            "  most ops in any {} s window: {} (bound {})\n",
            w.window_s, w.max_ops, w.bound
        ));
    }
    s.push_str(&format!(
        "concurrency: at most {} at once (limit {}){}\n\
         grants: {} of {} accepted opened once and closed once{}\n\
         \x20 close start minus (open start + cmd_timeout): {} ({} later than the margin {} ms)\n\
         \x20 close start minus (last knock + cmd_timeout): {} ({} earlier than -{} ms)\n\
         \x20 wait from last knock to open: {}\n\
         \x20 access in place (open finished to close finished): {}; {} grants under a tenth of cmd_timeout\n\
         \x20 open op: {}; close op: {}\n\
         memory: VmRSS first {} KiB, peak {} KiB, VmHWM {} KiB{}\n\
         sesamed: {}\n{}",
        r.max_concurrent,
        l.concurrency,
        if r.concurrency_ok { " ok" } else { " EXCEEDED" },
        g.open_then_close,
        g.accepted,
        if g.irregular == 0 { "" } else { " (SOME NOT)" },
        fmt_spread(&g.close_after_open_ms),
        g.late,
        g.margin_ms,
        fmt_spread(&g.close_after_knock_ms),
        g.early,
        g.early_tolerance_ms,
        fmt_spread(&g.open_wait_ms),
        fmt_spread(&g.access_ms),
        g.short_grants,
        fmt_spread(&g.open_op_ms),
        fmt_spread(&g.close_op_ms),
        r.memory.rss_first_kib,
        r.memory.rss_peak_kib,
        r.memory.vm_hwm_kib.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        if r.memory.ok { "" } else { " GREW TOO MUCH" },
        r.daemon_exit,
        if r.passed() { "all checks held".to_owned() } else { format!("FAILED: {}", r.failures.join("; ")) },
    ));
    for w in &r.warnings {
        s.push_str(&format!("\nnote: {w}"));
    }
    s
}

// ---------------------------------------------------------------------------------
// firewall-latency

/// One `firewall-latency` run (every subject gets a fresh lab).
#[derive(Clone, Debug)]
pub struct LatencyConfig {
    pub sesamed: PathBuf,
    pub knockd: PathBuf,
    pub bench_exe: PathBuf,
    pub subjects: Vec<Subject>,
    pub knockers: u32,
    pub duration: f64,
    pub limits: Limits,
    pub ports: Vec<u16>,
    pub seq_timeout: u32,
    pub knock_gap_ms: u64,
    /// How long after its last knock a knocker's rule may come and still count.
    pub window: Duration,
    pub gen_cpu: Option<usize>,
    pub daemon_cpus: Option<String>,
    pub keep_logs: Option<PathBuf>,
    pub verbose: bool,
}

impl LatencyConfig {
    pub fn new(sesamed: PathBuf, knockd: PathBuf, bench_exe: PathBuf) -> LatencyConfig {
        LatencyConfig {
            sesamed,
            knockd,
            bench_exe,
            subjects: vec![
                Subject::Sesamed(FwBackend::Nftables),
                Subject::Sesamed(FwBackend::Iptables),
                Subject::Sesamed(FwBackend::Command),
                Subject::Knockd,
            ],
            knockers: 200,
            duration: 20.0,
            limits: Limits::default(),
            ports: vec![7000, 8000, 9000],
            seq_timeout: 5,
            knock_gap_ms: 2,
            window: Duration::from_secs(5),
            gen_cpu: Some(stats::first_allowed_cpu()),
            daemon_cpus: None,
            keep_logs: None,
            verbose: false,
        }
    }
}

/// One row of the latency table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyRow {
    /// `sesamed nftables`, ..., `knockd command`.
    pub subject: String,
    pub daemon_path: String,
    pub knockers: u64,
    /// Knockers whose rule was in place within the window after their last knock.
    pub rule_in_place: u64,
    /// Last knock sent → rule in place.
    pub latency_ms: Option<LatencyMs>,
    /// Where "rule in place" was read.
    pub measured_by: String,
    /// Grants opened (sesamed: open operations; knockd: start commands seen).
    pub grants: u64,
    /// Distinct child processes of the daemon seen while knockers knocked and grants
    /// closed (sampled every 2 ms, so very short-lived ones may be missed).
    pub child_processes_seen: u64,
    /// Minor page faults and CPU ms of the children the daemon reaped in that time
    /// (`cminflt`, `cutime + cstime`): not sampled, so no child escapes them.
    pub children_minor_faults: u64,
    pub children_cpu_ms: u64,
    pub daemon_exit: String,
}

/// Runs every subject in its own lab, one after the other.
pub fn run_latency(cfg: &LatencyConfig) -> anyhow::Result<Vec<LatencyRow>> {
    let mut rows = Vec::new();
    for &s in &cfg.subjects {
        let row = run_latency_one(cfg, s).with_context(|| s.label())?;
        progress(cfg.verbose, latency_line(&row));
        rows.push(row);
    }
    Ok(rows)
}

fn run_latency_one(cfg: &LatencyConfig, subject: Subject) -> anyhow::Result<LatencyRow> {
    let iptables = require_tool("iptables")?;
    let (daemon, backend) = match subject {
        Subject::Sesamed(b) => {
            require_tool(b.tool())?;
            (cfg.sesamed.clone(), Some(b))
        }
        Subject::Knockd => (cfg.knockd.clone(), None),
    };
    if !daemon.is_file() {
        bail!("{} not found", daemon.display());
    }
    let l = cfg.limits;
    let lab = Lab::new("fx").context("building the lab")?;
    let tmp = TempDir::new("sfx")?;
    let (log_file, out_file, ops_file) =
        (tmp.join("daemon.log"), tmp.join("daemon.out"), tmp.join("ops.log"));
    let state = tmp.join("state");
    let by_command = backend.is_none_or(|b| b == FwBackend::Command);
    let fifo_path = tmp.join("commands.fifo");
    let fifo = if by_command { Some(FifoReader::open(&fifo_path)?) } else { None };
    let commands = iptables_commands(&iptables, by_command.then_some(fifo_path.as_path()));
    let (conf, args) = match backend {
        Some(b) => {
            let conf = tmp.join("sesamed.toml");
            let cmds = (b == FwBackend::Command).then_some(&commands);
            std::fs::write(&conf, sesamed_toml(&log_file, &state, b, cmds, &l, &cfg.ports, cfg.seq_timeout))?;
            let args = vec![
                "--state-dir".to_owned(),
                state.display().to_string(),
                "--ops-log".into(),
                ops_file.display().to_string(),
            ];
            (conf, args)
        }
        None => {
            let conf = tmp.join("knockd.conf");
            std::fs::write(
                &conf,
                knockd_fw_conf(&log_file, &commands, &cfg.ports, cfg.seq_timeout, l.cmd_timeout),
            )?;
            (conf, Vec::new())
        }
    };
    progress(
        cfg.verbose,
        format!("firewall-latency: {}, {} knockers over {} s", subject.label(), cfg.knockers, cfg.duration),
    );
    let mut guard =
        start_daemon(&lab, &daemon, &conf, &args, cfg.daemon_cpus.as_deref(), &log_file, &out_file)?;
    let pid = guard.id();
    // From here on nothing but grants makes the daemon start a process.
    let children0 = read_children_totals(pid).ok_or_else(|| anyhow!("the daemon exited"))?;
    let sampler = ChildSampler::start(pid);
    let gen_cfg = gen_config(&lab, cfg.knockers, cfg.duration, &cfg.ports, cfg.knock_gap_ms)?;
    let gen = Generator::start(&lab, &cfg.bench_exe, &gen_cfg, cfg.gen_cpu)?;
    let report = gen.finish(Duration::from_secs_f64(cfg.duration) + Duration::from_secs(60))?;
    let full = full_knockers(&report, cfg.ports.len());
    // Every grant opened and closed again: its rule is in, its stop has run.
    let last = full.iter().map(|k| k.last_knock_ns).max().unwrap_or(0);
    let settle_ns = last + (u64::from(l.cmd_timeout) + 3) * 1_000_000_000;
    let deadline = Instant::now() + Duration::from_secs(u64::from(l.cmd_timeout) + 30);
    let mut follower = Follower::new(&log_file);
    let mut live = LogCounts::default();
    loop {
        follower.poll(&mut live);
        let closed = live.close_starts + live.refused.len() as u64 >= live.completed.len() as u64;
        if (unix_ns_now() >= settle_ns && live.completed.len() >= full.len() && closed)
            || Instant::now() >= deadline
            || !guard.is_running()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last stop command may still be running.
    std::thread::sleep(Duration::from_millis(500));
    let children1 = read_children_totals(pid).unwrap_or(children0);
    let (seen, _) = sampler.finish();
    let exit = stop_daemon(&mut guard, Duration::from_secs(u64::from(l.command_timeout) + 15))?;
    drop(guard);
    let lines = fifo.as_ref().map(FifoReader::snapshot).unwrap_or_default();
    drop(fifo);
    if let Some(dir) = &cfg.keep_logs {
        std::fs::create_dir_all(dir)?;
        let stem = format!("firewall-latency-{}", subject.label().replace(' ', "-"));
        for (src, ext) in [(&log_file, "log"), (&out_file, "out"), (&ops_file, "ops")] {
            let _ = std::fs::copy(src, dir.join(format!("{stem}.{ext}")));
        }
    }
    let log = LogCounts::of(&std::fs::read_to_string(&log_file).unwrap_or_default());
    drop(lab);

    let window_ns = cfg.window.as_nanos() as u64;
    let (latencies, grants, measured_by): (Vec<Duration>, u64, String) = match backend {
        Some(b) if b != FwBackend::Command => {
            let ops = parse_ops_log(&std::fs::read_to_string(&ops_file).unwrap_or_default())
                .map_err(anyhow::Error::msg)?;
            let mut first_open: HashMap<IpAddr, u64> = HashMap::new();
            for o in ops.iter().filter(|o| o.op == Op::Open && o.ok()) {
                let e = first_open.entry(o.ip).or_insert(o.finished_ns);
                *e = (*e).min(o.finished_ns);
            }
            let lat = full
                .iter()
                .filter_map(|k| {
                    let t = *first_open.get(&IpAddr::V4(k.ip))?;
                    (t >= k.first_knock_ns && t <= k.last_knock_ns + window_ns)
                        .then(|| Duration::from_nanos(t.saturating_sub(k.last_knock_ns)))
                })
                .collect();
            (lat, first_open.len() as u64, "`finished` of the address's open in sesamed's --ops-log".into())
        }
        _ => {
            let knockers: Vec<crate::gen::KnockerReport> = full.iter().map(|k| (*k).clone()).collect();
            let (outcomes, _) = match_outcomes(&knockers, &lines, cfg.window);
            (
                outcomes.iter().filter_map(|o| o.latency).collect(),
                log.open_starts,
                "the start command's `echo %IP%` after `iptables -I`, stamped when the bench reads its FIFO"
                    .into(),
            )
        }
    };
    let ticks = stats::clock_ticks();
    Ok(LatencyRow {
        subject: subject.label(),
        daemon_path: daemon.display().to_string(),
        knockers: full.len() as u64,
        rule_in_place: latencies.len() as u64,
        latency_ms: latency_summary(&latencies),
        measured_by,
        grants,
        child_processes_seen: seen.len() as u64,
        children_minor_faults: children1.0.saturating_sub(children0.0),
        children_cpu_ms: children1.1.saturating_sub(children0.1) * 1000 / ticks.max(1),
        daemon_exit: exit,
    })
}

fn latency_line(r: &LatencyRow) -> String {
    let lat = r
        .latency_ms
        .as_ref()
        .map(|l| format!("p50 {:.2} ms p99 {:.2} ms max {:.2} ms", l.p50, l.p99, l.max))
        .unwrap_or_else(|| "no samples".into());
    format!(
        "{}: {}/{} rules in place, {lat}; {} grants, {} child processes seen, children's minor faults {}",
        r.subject, r.rule_in_place, r.knockers, r.grants, r.child_processes_seen, r.children_minor_faults
    )
}

/// The latency table, in Markdown.
pub fn latency_table(rows: &[LatencyRow]) -> String {
    let mut s = String::from(
        "| daemon and backend | rules in place | knock→rule p50 | p99 | max | child processes seen | children's page faults / CPU |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (p50, p99, max) = match &r.latency_ms {
            Some(l) => (format!("{:.2} ms", l.p50), format!("{:.2} ms", l.p99), format!("{:.2} ms", l.max)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {}/{} | {p50} | {p99} | {max} | {} | {} / {} ms |\n",
            r.subject,
            r.rule_in_place,
            r.knockers,
            r.child_processes_seen,
            r.children_minor_faults,
            r.children_cpu_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn op(start: f64, end: f64, kind: Op, ip: [u8; 4]) -> OpRecord {
        OpRecord {
            started_ns: (start * 1e9) as u64,
            finished_ns: (end * 1e9) as u64,
            op: kind,
            result: "Ok".into(),
            ip: IpAddr::V4(Ipv4Addr::from(ip)),
            door: DOOR.into(),
        }
    }

    #[test]
    fn ops_log_lines_parse_exactly() {
        let text = "1712345678.000000001 1712345678.250000000 open Ok 198.19.192.1 fwbench\n\
                    1712345683.5 1712345683.75 close TimedOut 2001:db8::7 a door with spaces\n\n";
        let ops = parse_ops_log(text).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].started_ns, 1_712_345_678_000_000_001);
        assert_eq!(ops[0].finished_ns, 1_712_345_678_250_000_000);
        assert_eq!((ops[0].op, ops[0].ok()), (Op::Open, true));
        assert_eq!(ops[1].started_ns, 1_712_345_683_500_000_000);
        assert_eq!(ops[1].result, "TimedOut");
        assert_eq!(ops[1].ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(ops[1].door, "a door with spaces");
        for bad in [
            "1.0 2.0 open Ok 198.19.192.1",
            "1.0 2.0 shut Ok 198.19.192.1 d",
            "x 2.0 open Ok 198.19.192.1 d",
            "1.0 2.0 open Ok nothing d",
            "1.0000000001 2.0 open Ok 198.19.192.1 d",
        ] {
            assert!(parse_ops_log(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rate_check_finds_the_tightest_window() {
        // 5 at once, then one every 100 ms: exactly burst 5 at rate 10.
        let mut t: Vec<u64> = vec![0; 5];
        t.extend((1..=20).map(|i| i * 100_000_000));
        let c = check_rate(&t, 10, 5);
        assert!(c.ok, "{c:?}");
        assert_eq!(c.ops, 25);
        assert!((c.max_ops_beyond_rate - 5.0).abs() < 1e-6, "{c:?}");
        assert_eq!(c.windows[2].max_ops, 5 + 10, "{:?}", c.windows);
        assert_eq!(c.windows[2].bound, 15.0);
        // One more in the middle breaks it, and the window that shows it is found.
        t.push(1_050_000_000);
        let c = check_rate(&t, 10, 5);
        assert!(!c.ok);
        assert!(c.max_ops_beyond_rate > 5.0);
        assert!(c.tightest_ops as f64 > c.tightest_bound, "{c:?}");
        // The same by brute force over every pair.
        let mut s = t.clone();
        s.sort();
        let mut worst = f64::MIN;
        for i in 0..s.len() {
            for j in i..s.len() {
                worst = worst.max((j - i + 1) as f64 - 10.0 * (s[j] - s[i]) as f64 * 1e-9);
            }
        }
        assert!((worst - c.max_ops_beyond_rate).abs() < 1e-3, "{worst} {c:?}");
        assert!(check_rate(&[], 10, 5).ok);
    }

    #[test]
    fn overlap_counts_slots_handed_on_at_one_instant_once() {
        let ip = [198, 19, 192, 1];
        let ops = vec![
            op(0.0, 1.0, Op::Open, ip),
            op(0.5, 1.5, Op::Open, ip),
            op(1.0, 2.0, Op::Open, ip), // takes the first one's slot as it is given back
            op(1.2, 1.3, Op::Close, ip),
        ];
        assert_eq!(max_overlap(&ops), 3);
        assert_eq!(max_overlap(&ops[..1]), 1);
        assert_eq!(max_overlap(&[]), 0);
    }

    #[test]
    fn grants_close_at_their_time_or_are_reported() {
        let a = [198, 19, 192, 1];
        let b = [198, 19, 192, 2];
        let c = [198, 19, 192, 3];
        let d = [198, 19, 192, 4];
        let e = [198, 19, 192, 5];
        let f = [198, 19, 192, 6];
        let s = 1_000_000_000u64;
        let knocks: HashMap<IpAddr, u64> =
            [a, b, c, d, e, f].into_iter().map(|ip| (IpAddr::V4(Ipv4Addr::from(ip)), 10 * s)).collect();
        let ops = vec![
            // On time: knock at 10, opened at 10.01 for 5 s, closed at 15.02.
            op(10.01, 10.02, Op::Open, a),
            op(15.02, 15.03, Op::Close, a),
            // Its open waited 6 s in the queue; the grant still lasts 5 s from it.
            op(16.0, 16.01, Op::Open, b),
            op(21.01, 21.02, Op::Close, b),
            // Early: before the knock's time was up.
            op(10.01, 10.02, Op::Open, c),
            op(14.0, 14.01, Op::Close, c),
            // Never closed.
            op(10.01, 10.02, Op::Open, d),
            // Late: 1.49 s after its time (from the open), more than the margin.
            op(10.01, 10.02, Op::Open, e),
            op(16.5, 16.51, Op::Close, e),
            // Early: after the knock's time, but 1 s before the open's.
            op(12.0, 12.01, Op::Open, f),
            op(16.0, 16.01, Op::Close, f),
        ];
        let g = check_grants(
            &ops,
            &knocks,
            5 * Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_millis(100),
        );
        assert_eq!(g.accepted, 6);
        assert_eq!(g.open_then_close, 5);
        assert_eq!(g.short_grants, 0);
        assert_eq!((g.irregular, g.early, g.late), (1, 2, 1));
        assert!(g.irregular_examples[0].starts_with("198.19.192.4: Open Ok"), "{g:?}");
        assert!(!g.ok);
        let k = g.close_after_knock_ms.as_ref().unwrap();
        assert!((k.min + 1000.0).abs() < 1e-3 && (k.max - 6010.0).abs() < 1e-3, "{k:?}");
        let o = g.close_after_open_ms.as_ref().unwrap();
        assert!((o.min + 1010.0).abs() < 1e-3 && (o.max - 1490.0).abs() < 1e-3, "{o:?}");
        let ok = check_grants(
            &ops[..4],
            &knocks,
            Duration::from_secs(5),
            Duration::from_secs(1),
            Duration::from_millis(100),
        );
        assert!(ok.ok, "{ok:?}");
        let vs = ok.close_after_open_ms.unwrap();
        assert!((vs.min - 10.0).abs() < 1e-3 && (vs.max - 10.0).abs() < 1e-3, "{vs:?}");
        assert!((ok.open_wait_ms.unwrap().max - 6000.0).abs() < 1e-3);
    }

    #[test]
    fn log_lines_are_counted_by_kind() {
        let log = "[2026-01-01 10:00] starting up, listening on ss1\n\
                   [2026-01-01 10:00] 198.19.192.1: fwbench: Stage 1\n\
                   [2026-01-01 10:00] 198.19.192.1: fwbench: OPEN SESAME\n\
                   [2026-01-01 10:00] 198.19.192.1: fwbench: nftables: open\n\
                   [2026-01-01 10:00] 198.19.192.2: fwbench: OPEN SESAME\n\
                   [2026-01-01 10:00] 198.19.192.2: fwbench: access refused: the firewall queue is full\n\
                   [2026-01-01 10:00] fwbench: running command: /usr/sbin/iptables -w 10 -I INPUT -s 198.19.192.3 -p tcp\n\
                   \n\
                   [2026-01-01 10:00] fwbench: running command: /usr/sbin/iptables -w 10 -D INPUT -s 198.19.192.3 -p tcp\n\
                   [2026-01-01 10:00] 198.19.192.1: fwbench: command timeout\n\
                   [2026-01-01 10:00] 198.19.192.1: fwbench: nftables: close\n\
                   [2026-01-01 10:00] 198.19.192.9: other: OPEN SESAME\n";
        let c = LogCounts::of(log);
        assert_eq!(c.completed.len(), 2);
        assert_eq!(c.refused.len(), 1);
        assert_eq!(c.refused.values().next().unwrap(), "the firewall queue is full");
        assert_eq!((c.open_starts, c.close_starts), (2, 2));
        let one = IpAddr::V4(Ipv4Addr::new(198, 19, 192, 1));
        let ops = vec![op(1.0, 1.1, Op::Open, [198, 19, 192, 1])];
        let a = account(2, &c, &ops);
        assert!(a.ok, "{a:?}");
        assert!(c.completed.contains(&one));
        let lost = account(3, &c, &ops);
        assert!(lost.ok && lost.lost_sequences == 1, "{lost:?}");
        assert!(!account(2, &c, &[]).ok);
    }

    #[test]
    fn configs_are_what_the_parsers_read() {
        let dir = TempDir::new("sfc").unwrap();
        let (start, stop) = iptables_commands("/usr/sbin/iptables", Some(Path::new("/tmp/x/f")));
        assert_eq!(
            start,
            "/usr/sbin/iptables -w 10 -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT && echo %IP% >> /tmp/x/f"
        );
        assert_eq!(stop, "/usr/sbin/iptables -w 10 -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT");
        let l =
            Limits { rate: 200, burst: 50, concurrency: 4, queue: 500, command_timeout: 10, cmd_timeout: 2 };
        for b in [FwBackend::Nftables, FwBackend::Iptables, FwBackend::Command] {
            let text = sesamed_toml(
                Path::new("/tmp/x/log"),
                Path::new("/tmp/x/state"),
                b,
                Some(&(start.clone(), stop.clone())),
                &l,
                &[7000, 8000, 9000],
                5,
            );
            let path = dir.join("s.toml");
            std::fs::write(&path, &text).unwrap();
            let cfg = sesame_engine::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(cfg.doors.len(), 1);
            let d = &cfg.doors[0];
            assert_eq!(d.cmd_timeout, 2);
            assert_eq!((cfg.firewall.rate, cfg.firewall.burst, cfg.firewall.queue), (200, 50, 500));
            assert!(!cfg.firewall.close_on_exit);
            assert_eq!(d.backend_in(&cfg.firewall).unwrap().name(), b.name(), "{text}");
            assert_eq!(d.start_command.is_some(), b == FwBackend::Command);
        }
        let k = knockd_fw_conf(Path::new("/tmp/x/log"), &(start, stop), &[7000, 8000, 9000], 5, 5);
        let path = dir.join("knockd.conf");
        std::fs::write(&path, &k).unwrap();
        let cfg = sesame_engine::config::Config::load(&path).unwrap();
        assert_eq!(cfg.doors[0].cmd_timeout, 5);
        assert!(cfg.doors[0].stop_command.is_some());
    }

    #[test]
    fn children_totals_from_proc_stat() {
        let stat = "42 (sesa med) S 1 42 42 0 -1 4194560 100 7 0 0 250 75 3 4 20 0 3 0 5 0 0";
        assert_eq!(children_totals(stat), Some((7, 7)));
        assert!(children_totals(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
    }

    #[test]
    fn spreads_and_subjects() {
        assert_eq!(spread(vec![]), None);
        let s = spread((1..=100).map(f64::from).rev().collect()).unwrap();
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 50.0, 99.0, 100.0));
        assert_eq!(Subject::parse("knockd").unwrap(), Subject::Knockd);
        assert_eq!(Subject::parse(" NFTables").unwrap(), Subject::Sesamed(FwBackend::Nftables));
        assert!(Subject::parse("ufw").is_err());
        assert_eq!(Subject::Sesamed(FwBackend::Command).label(), "sesamed command");
    }
}
