//! `--metrics-listen`: `/metrics` (Prometheus text format) and `/healthz`, served by a
//! small `mio` listener on its own thread.
//!
//! Nothing here touches the packet path: each scrape sums what the workers already
//! publish ([`Published`], one relaxed store per counter per wake), reads the
//! executor's [`Stats`](sesame_firewall::Stats), and what the log thread counted from
//! the executor's reports ([`FirewallSeries`]). The text is rendered here rather than
//! through `metrics-exporter-prometheus`: its recorder takes observations one by one,
//! while these series are totals kept elsewhere (and histograms already bucketed per
//! worker), which it has no way to be handed at scrape time.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] at once (more are closed at once), requests of
//! at most [`MAX_REQUEST`] bytes, and a connection lives at most [`DEADLINE`].

use super::supervisor::WorkerHandle;
use super::worker::Shared;
use crate::doors::DoorKey;
use crate::matcher::OPEN_BOUNDS;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use sesame_firewall::{ExecutorHandle, OpKind, OpResult, Report};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections served at once; one more is accepted and closed straight away.
pub(crate) const MAX_CONNECTIONS: usize = 4;
/// Largest request (line and headers) read; a longer one gets 431.
pub(crate) const MAX_REQUEST: usize = 4096;
/// How long a connection may take, from accept to the last byte of the answer.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} (--metrics-listen or [metrics] listen): {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Upper bounds (seconds) of `sesame_firewall_operation_duration_seconds`.
const OP_BOUNDS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    /// Per bucket of [`OP_BOUNDS`] and +Inf, not cumulative.
    buckets: [u64; OP_BOUNDS.len() + 1],
    sum: f64,
}

#[derive(Default)]
struct GrantCounts {
    open: u64,
    opened: u64,
    extended: u64,
    refused: u64,
}

#[derive(Default)]
struct FirewallInner {
    grants: BTreeMap<String, GrantCounts>,
    ops: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    durations: BTreeMap<&'static str, Histogram>,
}

/// What the log thread counts from the executor's reports (written by it alone).
///
/// Reports the log could not take (`reports_dropped` of the executor's stats) are not
/// counted, so under overload these can fall behind the executor's own totals.
#[derive(Default)]
pub(crate) struct FirewallSeries(Mutex<FirewallInner>);

impl FirewallSeries {
    pub(crate) fn on_report(&self, r: &Report) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Report::Operation { door_name, backend, op, started, finished, result, .. } => {
                let op_name = match op {
                    OpKind::Open => "open",
                    OpKind::Close => "close",
                };
                let res = match result {
                    OpResult::Ok => "ok",
                    OpResult::Failed => "error",
                    OpResult::TimedOut => "timeout",
                };
                *f.ops.entry((backend, op_name, res)).or_default() += 1;
                let secs = finished.duration_since(*started).unwrap_or_default().as_secs_f64();
                let h = f.durations.entry(backend).or_default();
                let i = OP_BOUNDS.iter().position(|&b| secs <= b).unwrap_or(OP_BOUNDS.len());
                h.buckets[i] += 1;
                h.sum += secs;
                // Named here so that the door shows up with its first operation.
                grant(&mut f, door_name);
            }
            Report::Opened { door_name } => grant(&mut f, door_name).opened += 1,
            Report::GrantOpen { door_name, open: true } => grant(&mut f, door_name).open += 1,
            Report::GrantOpen { door_name, open: false } => {
                let g = grant(&mut f, door_name);
                g.open = g.open.saturating_sub(1);
            }
            Report::Extended { door_name, .. } => grant(&mut f, door_name).extended += 1,
            Report::Refused { door_name, .. } => grant(&mut f, door_name).refused += 1,
            _ => {}
        }
    }
}

fn grant<'a>(f: &'a mut FirewallInner, door: &str) -> &'a mut GrantCounts {
    if !f.grants.contains_key(door) {
        f.grants.insert(door.to_owned(), GrantCounts::default());
    }
    f.grants.get_mut(door).expect("just inserted")
}

/// Reloads, counted by the supervisor.
#[derive(Default)]
pub(crate) struct Reloads {
    pub(crate) ok: AtomicU64,
    pub(crate) error: AtomicU64,
}

/// Everything a scrape reads.
pub(crate) struct Sources {
    pub(crate) workers: Vec<Shared>,
    /// Interface names by slot.
    pub(crate) interfaces: Vec<String>,
    pub(crate) executor: ExecutorHandle,
    /// Per-packet log lines the log thread could not take ([`crate::log::Log::dropped`]).
    pub(crate) log_dropped: Arc<AtomicU64>,
    pub(crate) firewall: Arc<FirewallSeries>,
    pub(crate) reloads: Arc<Reloads>,
}

impl Sources {
    pub(crate) fn new(
        workers: &[WorkerHandle],
        interfaces: Vec<String>,
        executor: ExecutorHandle,
        log_dropped: Arc<AtomicU64>,
        firewall: Arc<FirewallSeries>,
        reloads: Arc<Reloads>,
    ) -> Sources {
        let workers = workers.iter().map(|w| w.published.clone()).collect();
        Sources { workers, interfaces, executor, log_dropped, firewall, reloads }
    }

    /// Every capture worker and the executor are running.
    pub(crate) fn healthy(&self) -> bool {
        self.workers.iter().all(|w| w.alive.load(Ordering::Relaxed)) && self.executor.stats().alive
    }

    fn total(&self, field: impl Fn(&super::worker::Published) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| field(w).load(Ordering::Relaxed)).sum()
    }

    /// The Prometheus text exposition of every series.
    pub(crate) fn render(&self) -> String {
        let mut t = Text::default();
        t.family("sesame_build_info", "gauge", "sesame's version; always 1.");
        t.sample("sesame_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

        t.family(
            "sesame_capture_packets_total",
            "counter",
            "Frames the kernel filter passed, per interface.",
        );
        let per_if = |f: fn(&super::worker::RingCounts) -> &AtomicU64, slot: usize| -> u64 {
            self.workers
                .iter()
                .filter_map(|w| w.interfaces.get(slot))
                .map(|r| f(r).load(Ordering::Relaxed))
                .sum()
        };
        for (slot, name) in self.interfaces.iter().enumerate() {
            t.sample("sesame_capture_packets_total", &[("interface", name)], per_if(|r| &r.packets, slot));
        }
        t.family(
            "sesame_capture_drops_total",
            "counter",
            "Frames the kernel dropped for want of ring space.",
        );
        for (slot, name) in self.interfaces.iter().enumerate() {
            t.sample("sesame_capture_drops_total", &[("interface", name)], per_if(|r| &r.drops, slot));
        }
        t.family("sesame_packets_malformed_total", "counter", "Captured frames that could not be parsed.");
        t.sample("sesame_packets_malformed_total", &[], self.total(|p| &p.malformed));

        // Per door, by name: each worker's door index mapped through its own table.
        let mut doors: BTreeMap<DoorKey, [u64; 5]> = BTreeMap::new();
        for w in &self.workers {
            let table = w.doors.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (key, counts) in table.keys.iter().zip(table.counts.iter()) {
                let sum = doors.entry(*key).or_default();
                for (s, c) in sum.iter_mut().zip(counts) {
                    *s += c.load(Ordering::Relaxed);
                }
            }
        }
        let named: Vec<(String, [u64; 5])> =
            doors.into_iter().map(|(k, c)| (k.name().to_string(), c)).collect();
        // Doors sharing a name (knockd allows it) add up under it.
        let mut by_name: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
        for (name, c) in &named {
            let sum = by_name.entry(name).or_default();
            for (s, v) in sum.iter_mut().zip(c) {
                *s += v;
            }
        }
        t.family(
            "sesame_attempts_started_total",
            "counter",
            "Knock attempts begun: first knocks of a source with no attempt at the door.",
        );
        for (door, c) in &by_name {
            t.sample("sesame_attempts_started_total", &[("door", door)], c[4]);
        }
        t.family("sesame_knock_stages_total", "counter", "Knocks that moved a sequence on by one stage.");
        for (door, c) in &by_name {
            t.sample("sesame_knock_stages_total", &[("door", door)], c[0]);
        }
        t.family("sesame_sequences_completed_total", "counter", "Knock sequences completed.");
        for (door, c) in &by_name {
            t.sample("sesame_sequences_completed_total", &[("door", door)], c[1]);
        }
        t.family(
            "sesame_sequences_failed_total",
            "counter",
            "Knock sequences that timed out or hit a wrong port.",
        );
        for (door, c) in &by_name {
            t.sample("sesame_sequences_failed_total", &[("door", door), ("reason", "timeout")], c[2]);
            t.sample("sesame_sequences_failed_total", &[("door", door), ("reason", "wrong_port")], c[3]);
        }

        t.family("sesame_tracker_slots", "gauge", "Attempt slots, all workers together.");
        t.sample("sesame_tracker_slots", &[], self.total(|p| &p.capacity));
        t.family("sesame_tracker_used", "gauge", "Attempts in progress.");
        t.sample("sesame_tracker_used", &[], self.total(|p| &p.attempts));
        t.family("sesame_tracker_evictions_total", "counter", "Attempts evicted to make room.");
        t.sample("sesame_tracker_evictions_total", &[], self.total(|p| &p.evictions));
        t.family("sesame_tracker_rejected_total", "counter", "New attempts refused for want of room.");
        t.sample("sesame_tracker_rejected_total", &[], self.total(|p| &p.rejected));

        let stats = self.executor.stats();
        {
            let f = self.firewall.0.lock().unwrap_or_else(|p| p.into_inner());
            let mut grant_doors: Vec<&str> = by_name.keys().copied().collect();
            grant_doors.extend(f.grants.keys().map(String::as_str));
            grant_doors.sort_unstable();
            grant_doors.dedup();
            let zero = GrantCounts::default();
            let g = |d: &str| f.grants.get(d).unwrap_or(&zero);
            t.family(
                "sesame_grants_open",
                "gauge",
                "Grants open now, per door (knockd command doors without a stop have none).",
            );
            for d in &grant_doors {
                t.sample("sesame_grants_open", &[("door", d)], g(d).open);
            }
            t.family(
                "sesame_grants_total",
                "counter",
                "Successful knocks handed to the firewall, by outcome.",
            );
            for d in &grant_doors {
                t.sample("sesame_grants_total", &[("door", d), ("result", "opened")], g(d).opened);
                t.sample("sesame_grants_total", &[("door", d), ("result", "extended")], g(d).extended);
                t.sample("sesame_grants_total", &[("door", d), ("result", "refused")], g(d).refused);
            }
            t.family(
                "sesame_firewall_operations_total",
                "counter",
                "Firewall operations (each try), by result.",
            );
            for ((backend, op, result), n) in &f.ops {
                t.sample(
                    "sesame_firewall_operations_total",
                    &[("backend", backend), ("op", op), ("result", result)],
                    n,
                );
            }
            t.family("sesame_firewall_queue_depth", "gauge", "Firewall operations waiting to start.");
            t.sample("sesame_firewall_queue_depth", &[], stats.queued);
            t.family(
                "sesame_firewall_operation_duration_seconds",
                "histogram",
                "Time from an operation's start to its end.",
            );
            for (backend, h) in &f.durations {
                let mut cumulative = 0;
                for (i, n) in h.buckets.iter().enumerate() {
                    cumulative += n;
                    let le = OP_BOUNDS.get(i).map_or("+Inf".to_owned(), f64::to_string);
                    t.sample(
                        "sesame_firewall_operation_duration_seconds_bucket",
                        &[("backend", backend), ("le", &le)],
                        cumulative,
                    );
                }
                t.sample("sesame_firewall_operation_duration_seconds_sum", &[("backend", backend)], h.sum);
                t.sample(
                    "sesame_firewall_operation_duration_seconds_count",
                    &[("backend", backend)],
                    cumulative,
                );
            }
        }

        t.family(
            "sesame_knock_to_open_seconds",
            "histogram",
            "Whole seconds from a sequence's first knock to its last.",
        );
        let mut cumulative = 0;
        for i in 0..=OPEN_BOUNDS.len() {
            cumulative += self.total(|p| &p.open_times.buckets[i]);
            let le = OPEN_BOUNDS.get(i).map_or("+Inf".to_owned(), u64::to_string);
            t.sample("sesame_knock_to_open_seconds_bucket", &[("le", &le)], cumulative);
        }
        t.sample("sesame_knock_to_open_seconds_sum", &[], self.total(|p| &p.open_times.sum));
        t.sample("sesame_knock_to_open_seconds_count", &[], cumulative);

        t.family(
            "sesame_log_lines_suppressed_total",
            "counter",
            "Per-packet log lines rate-limited or dropped.",
        );
        t.sample(
            "sesame_log_lines_suppressed_total",
            &[],
            self.total(|p| &p.suppressed) + self.log_dropped.load(Ordering::Relaxed),
        );
        t.family("sesame_spa_accepted_total", "counter", "SPA packets accepted (grants requested).");
        t.sample("sesame_spa_accepted_total", &[], self.total(|p| &p.spa_accepted));
        t.family("sesame_spa_refused_total", "counter", "SPA packets refused, by reason.");
        for r in crate::spa::Refusal::ALL {
            t.sample(
                "sesame_spa_refused_total",
                &[("reason", r.name())],
                self.total(|p| &p.spa_refused[r.index()]),
            );
        }
        t.family("sesame_config_reloads_total", "counter", "SIGHUP reloads, by result.");
        t.sample("sesame_config_reloads_total", &[("result", "ok")], self.reloads.ok.load(Ordering::Relaxed));
        t.sample(
            "sesame_config_reloads_total",
            &[("result", "error")],
            self.reloads.error.load(Ordering::Relaxed),
        );
        t.0
    }
}

#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The endpoint's socket, bound at start-up so that a bad address fails before anything runs.
pub(crate) struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

pub(crate) fn bind(addr: SocketAddr) -> Result<Bound, MetricsError> {
    let listener = TcpListener::bind(addr).map_err(|source| MetricsError::Listen { addr, source })?;
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// The endpoint's thread; [`Server::stop`] (or dropping it) ends it.
pub(crate) struct Server {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Serves on `listener` (see [`bind`]) from a new thread.
    pub(crate) fn start(listener: Bound, sources: Sources) -> Result<Server, MetricsError> {
        let Bound { mut listener, addr } = listener;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let looper = Looper { poll, listener, conns: Default::default(), sources, stop: stop.clone() };
        let thread = std::thread::Builder::new().name("sesame-metrics".into()).spawn(move || looper.run())?;
        Ok(Server { waker, stop, thread: Some(thread), addr })
    }

    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.waker.wake();
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    /// The answer, once the request is complete, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

struct Looper {
    poll: Poll,
    listener: TcpListener,
    conns: [Option<Conn>; MAX_CONNECTIONS],
    sources: Sources,
    stop: Arc<AtomicBool>,
}

impl Looper {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(500))) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("sesamed: metrics endpoint stopped: {e}");
                return;
            }
            for ev in &events {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(i) => self.step(i),
                }
            }
            let now = Instant::now();
            for c in &mut self.conns {
                if c.as_ref().is_some_and(|c| c.deadline <= now) {
                    *c = None;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(i) = self.conns.iter().position(Option::is_none) else {
                        // Full: closed at once (dropped).
                        continue;
                    };
                    if self.poll.registry().register(&mut stream, Token(i), Interest::READABLE).is_ok() {
                        self.conns[i] = Some(Conn {
                            stream,
                            request: Vec::new(),
                            answer: None,
                            deadline: Instant::now() + DEADLINE,
                        });
                        // Data may have arrived with the connection.
                        self.step(i);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Out of descriptors, a reset before accept: try at the next event.
                Err(_) => return,
            }
        }
    }

    /// Reads, answers or writes on connection `i`; closes it when done or broken.
    fn step(&mut self, i: usize) {
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let done = match advance(conn, &self.sources) {
            Ok(Step::Wait) => false,
            Ok(Step::Write) => {
                self.poll.registry().reregister(&mut conn.stream, Token(i), Interest::WRITABLE).is_err()
                    || matches!(advance(conn, &self.sources), Ok(Step::Done) | Err(_))
            }
            Ok(Step::Done) | Err(_) => true,
        };
        if done {
            if let Some(mut c) = self.conns[i].take() {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

enum Step {
    Wait,
    Write,
    Done,
}

fn advance(conn: &mut Conn, sources: &Sources) -> std::io::Result<Step> {
    if conn.answer.is_none() {
        let mut buf = [0u8; 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Ok(Step::Done),
                Ok(n) => {
                    conn.request.extend_from_slice(&buf[..n]);
                    if conn.request.len() > MAX_REQUEST {
                        conn.answer = Some((response(431, "text/plain", "request too large\n", false), 0));
                        return Ok(Step::Write);
                    }
                    if conn.request.windows(4).any(|w| w == b"\r\n\r\n") {
                        conn.answer = Some((answer(&conn.request, sources), 0));
                        return Ok(Step::Write);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Wait),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    let Some((out, written)) = &mut conn.answer else { return Ok(Step::Done) };
    while *written < out.len() {
        match conn.stream.write(&out[*written..]) {
            Ok(0) => return Ok(Step::Done),
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Wait),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Step::Done)
}

/// The answer to one request (`GET` or `HEAD` of `/metrics` or `/healthz`).
fn answer(request: &[u8], sources: &Sources) -> Vec<u8> {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head = method == "HEAD";
    if method != "GET" && !head {
        return response(405, "text/plain", "only GET and HEAD\n", head);
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => response(200, "text/plain; version=0.0.4; charset=utf-8", &sources.render(), head),
        "/healthz" if sources.healthy() => response(200, "text/plain", "ok\n", head),
        "/healthz" => {
            response(503, "text/plain", "a capture worker or the firewall executor has stopped\n", head)
        }
        _ => response(404, "text/plain", "not found: try /metrics or /healthz\n", head),
    }
}

fn response(status: u16, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sequence, Config, Door};
    use crate::doors::Doors;
    use crate::matcher::Matcher;
    use sesame_firewall::{Executor, ExecutorConfig, ShellRunner};
    use std::io::{Read, Write};
    use std::time::SystemTime;

    fn sources(executor: &Executor) -> (Sources, Shared) {
        let mut config = Config {
            source: "t.conf".into(),
            options: Default::default(),
            doors: vec![Door::new("ssh \"x\"", parse_sequence("7000,8000").unwrap())],
            tuning: Default::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        config.doors[0].seq_timeout = 5;
        let matcher = Matcher::new(Doors::new(&config).unwrap(), Vec::new(), 1 << 16);
        let published = super::super::worker::Published::new(1, &matcher);
        let s = Sources {
            workers: vec![published.clone()],
            interfaces: vec!["eth0".into()],
            executor: executor.handle(),
            log_dropped: Arc::new(AtomicU64::new(3)),
            firewall: Arc::new(FirewallSeries::default()),
            reloads: Arc::new(Reloads::default()),
        };
        (s, published)
    }

    fn executor() -> Executor {
        let (tx, _rx) = crossbeam_channel::bounded::<Report>(16);
        let config = ExecutorConfig {
            rate: 10,
            burst: 10,
            concurrency: 1,
            command_timeout: Duration::from_secs(1),
            queue: 4,
            state_dir: None,
            close_on_exit: false,
        };
        Executor::start(config, ShellRunner, &|_| None, tx).unwrap()
    }

    #[test]
    fn renders_every_series_with_escaped_labels() {
        let ex = executor();
        let (s, published) = sources(&ex);
        published.doors.lock().unwrap().counts[0][1].store(2, Ordering::Relaxed);
        published.doors.lock().unwrap().counts[0][4].store(5, Ordering::Relaxed);
        published.interfaces[0].packets.store(7, Ordering::Relaxed);
        let t0 = SystemTime::now();
        s.firewall.on_report(&Report::Operation {
            door_name: "ssh \"x\"".into(),
            ip: "198.18.0.2".parse().unwrap(),
            backend: "command",
            op: OpKind::Open,
            started: t0,
            finished: t0 + Duration::from_millis(20),
            result: OpResult::Ok,
        });
        s.firewall.on_report(&Report::Opened { door_name: "ssh \"x\"".into() });
        for open in [true, true, false] {
            s.firewall.on_report(&Report::GrantOpen { door_name: "ssh \"x\"".into(), open });
        }
        let text = s.render();
        for line in [
            "sesame_capture_packets_total{interface=\"eth0\"} 7",
            "sesame_sequences_completed_total{door=\"ssh \\\"x\\\"\"} 2",
            "sesame_sequences_failed_total{door=\"ssh \\\"x\\\"\",reason=\"wrong_port\"} 0",
            "sesame_attempts_started_total{door=\"ssh \\\"x\\\"\"} 5",
            "sesame_grants_open{door=\"ssh \\\"x\\\"\"} 1",
            "sesame_grants_total{door=\"ssh \\\"x\\\"\",result=\"opened\"} 1",
            "sesame_firewall_operations_total{backend=\"command\",op=\"open\",result=\"ok\"} 1",
            "sesame_firewall_operation_duration_seconds_bucket{backend=\"command\",le=\"0.01\"} 0",
            "sesame_firewall_operation_duration_seconds_bucket{backend=\"command\",le=\"0.025\"} 1",
            "sesame_firewall_operation_duration_seconds_count{backend=\"command\"} 1",
            "sesame_knock_to_open_seconds_bucket{le=\"+Inf\"} 0",
            "sesame_log_lines_suppressed_total 3",
            "sesame_config_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        ex.shutdown();
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may close first (full, or the request too large): read what it said.
        let _ = c.write_all(request.as_bytes());
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_metrics_and_health_and_refuses_the_rest() {
        let ex = executor();
        let (s, published) = sources(&ex);
        let server = Server::start(bind("127.0.0.1:0".parse().unwrap()).unwrap(), s).unwrap();
        let addr = server.addr;
        let m = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("\nsesame_build_info{version=\""), "{m}");
        assert!(get(addr, "GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 "));
        assert!(get(addr, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let big = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert!(get(addr, &big).starts_with("HTTP/1.1 431 "));
        // Idle connections fill the slots; one more is closed at once, yet they end.
        let idle: Vec<_> =
            (0..MAX_CONNECTIONS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get(addr, "GET /healthz HTTP/1.0\r\n\r\n"), "", "past the limit: closed");
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        published.alive.store(false, Ordering::Relaxed);
        assert!(get(addr, "GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 503 "));
        server.stop();
        ex.shutdown();
    }
}
