//! knockd's log lines, byte for byte, and the thread that writes them.
//!
//! Log parsers (fail2ban filters, logwatch) key on these strings, so every message
//! knockd writes is formatted here and only here. knockd's `LogFile` lines are
//! `[YYYY-MM-DD HH:MM] message\n` in local time; some of its format strings end in
//! `\n` themselves (`running command`, `sequence timeout`), which leaves an empty
//! line after them in the file. We reproduce that too.
//!
//! The capture thread never formats or writes: it sends [`LogItem`]s over a
//! channel and this thread turns them into text.

use crate::matcher::Event;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use sesame_firewall::Report;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One message in knockd's words. `newline` marks knockd format strings that end in
/// `\n`, whose LogFile entry is followed by an empty line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub newline: bool,
}

impl Message {
    fn plain(text: String) -> Message {
        Message { text, newline: false }
    }
}

/// How a knocker is named: `IP`, or `IP (host)` with `-l`.
fn who(ip: IpAddr, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("{ip} ({h})"),
        None => ip.to_string(),
    }
}

/// knockd's text for a matcher event.
pub fn event_message(event: &Event, door_name: &str, host: Option<&str>) -> Message {
    match event {
        Event::Stage { src, stage, .. } => Message::plain(format!("{}: {door_name}: Stage {stage}", who(*src, host))),
        Event::Open { src, .. } => Message::plain(format!("{}: {door_name}: OPEN SESAME", who(*src, host))),
        Event::Replayed { src, .. } => Message::plain(format!(
            "{}: {door_name}: sequence already used in this time step, not opened",
            who(*src, host)
        )),
        Event::Timeout { src, stage, .. } => Message {
            text: format!("{}: {door_name}: sequence timeout (stage {stage})", who(*src, host)),
            newline: true,
        },
        Event::DoorDisabled { .. } => Message::plain(format!(
            "no more sequences left in the one time sequences file for door {door_name} --> disabling the door"
        )),
        Event::OneTimeError { message, .. } => Message::plain(format!(
            "error: one time sequences file for door {door_name}: {message} --> disabling the door"
        )),
        Event::ClaimUnsaved { message, .. } => Message::plain(format!(
            "error: door {door_name}: {message}: the used rotating sequence is remembered only until sesamed restarts"
        )),
    }
}

/// knockd's text for an executor report; `None` for reports that are records, not
/// log lines (per-operation timings, grant counts for metrics).
pub fn report_message(report: &Report, host: Option<&str>) -> Option<Message> {
    let plain = |text: String| Some(Message::plain(text));
    match report {
        Report::Running { door_name, command } => {
            Some(Message { text: format!("{door_name}: running command: {command}"), newline: true })
        }
        Report::Failed { door_name, code } => {
            plain(format!("{door_name}: command returned non-zero status code ({code})"))
        }
        Report::SpawnFailed { door_name, error } => {
            // knockd's exact words; the cause goes to stderr, where knockd also reports it.
            eprintln!("{door_name}: cannot run command: {error}");
            plain("error: command fork failed!".to_owned())
        }
        Report::Timeout { ip, door_name } => {
            plain(format!("{}: {door_name}: command timeout", who(*ip, host)))
        }
        Report::Extended { ip, door_name, secs } => {
            plain(format!("{}: {door_name}: access already open, extended by {secs} seconds", who(*ip, host)))
        }
        Report::ClosingOnShutdown { ip, door_name } => {
            plain(format!("{}: {door_name}: closing on shutdown", who(*ip, host)))
        }
        Report::Refused { ip, door_name, reason } => {
            plain(format!("{}: {door_name}: access refused: {reason}", who(*ip, host)))
        }
        Report::CommandTimedOut { door_name, command, after } => plain(format!(
            "error: {door_name}: command killed after {} seconds: {command}",
            after.as_secs_f64().round()
        )),
        Report::BackendRunning { door_name, ip, backend, op } => {
            plain(format!("{}: {door_name}: {backend}: {}", who(*ip, host), op.name()))
        }
        Report::BackendFailed { door_name, ip, backend, op, error, attempt } => plain(format!(
            "error: {}: {door_name}: {backend}: {} failed (attempt {attempt}): {error}",
            who(*ip, host),
            op.name()
        )),
        Report::BackendTimedOut { door_name, ip, backend, op, after } => plain(format!(
            "error: {}: {door_name}: {backend}: {} has not returned after {} seconds",
            who(*ip, host),
            op.name(),
            after.as_secs_f64().round()
        )),
        Report::Retrying { door_name, ip, op, attempt, after } => plain(format!(
            "{}: {door_name}: trying {} again in {:.1} seconds (attempt {attempt})",
            who(*ip, host),
            op.name(),
            after.as_secs_f64()
        )),
        Report::GaveUp { door_name, ip, op, attempts } => plain(format!(
            "error: {}: {door_name}: gave up on {} after {attempts} attempts",
            who(*ip, host),
            op.name()
        )),
        Report::Rearmed { ip, door_name, secs } => plain(format!(
            "{}: {door_name}: access open from before the restart, closing in {secs} seconds",
            who(*ip, host)
        )),
        Report::ExpiredWhileDown { ip, door_name } => plain(format!(
            "{}: {door_name}: access expired while sesamed was not running, closing it now",
            who(*ip, host)
        )),
        Report::UnknownBackend { ip, door_name, backend } => plain(format!(
            "error: {}: {door_name}: the grant journal names backend '{backend}', which this sesamed \
             does not run; the grant is kept for a later start",
            who(*ip, host)
        )),
        Report::JournalFailed { error } => plain(format!("error: grant journal: {error}")),
        Report::Operation { .. } | Report::Opened { .. } | Report::GrantOpen { .. } => None,
    }
}

/// The LogFile form of a message: `[YYYY-MM-DD HH:MM] text\n`, plus `\n` where knockd
/// writes one.
pub fn file_line(msg: &Message, now: chrono::DateTime<chrono::Local>) -> String {
    format!("[{}] {}\n{}", now.format("%Y-%m-%d %H:%M"), msg.text, if msg.newline { "\n" } else { "" })
}

/// What travels from the other threads to the log thread.
#[derive(Debug)]
pub enum LogItem {
    Event(Event),
    Report(Report),
    /// A line of the daemon's own (`starting up, ...`, `shutting down`, errors).
    Text(Message),
    /// Write everything so far and acknowledge.
    Flush(Sender<()>),
}

impl From<Report> for LogItem {
    fn from(r: Report) -> LogItem {
        LogItem::Report(r)
    }
}

/// Where log lines go.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    pub file: Option<PathBuf>,
    pub syslog: bool,
    /// `-v`: every message also on stdout, as knockd's `vprint` writes it.
    pub stdout: bool,
    /// `-l`: name knockers by reverse lookup.
    pub lookup: bool,
    /// `--ops-log`: one line per firewall operation with its times, for checking the
    /// executor's limits and latencies from outside.
    pub ops: Option<PathBuf>,
    /// Sees every executor report first (`--metrics-listen` counts grants and operations).
    pub on_report: Option<ReportHook>,
}

/// A cheap callback the log thread runs on each executor [`Report`] it receives.
#[derive(Clone)]
pub struct ReportHook(pub Arc<dyn Fn(&Report) + Send + Sync>);

impl std::fmt::Debug for ReportHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportHook")
    }
}

/// Sending side of the log, cheap to clone.
#[derive(Clone, Debug)]
pub struct Log {
    tx: Sender<LogItem>,
    dropped: Arc<AtomicU64>,
}

impl Log {
    /// Sends an item that must not be lost (waits if the queue is full).
    pub fn send(&self, item: LogItem) {
        let _ = self.tx.send(item);
    }

    /// Sends a per-packet item; if the log is behind, the item is counted and dropped
    /// instead of stalling the capture thread.
    pub fn offer(&self, item: LogItem) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(item) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn text(&self, text: impl Into<String>) {
        self.send(LogItem::Text(Message::plain(text.into())));
    }

    /// Waits until everything sent so far is written.
    pub fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(LogItem::Flush(tx));
        let _ = rx.recv();
    }

    /// Per-packet items dropped because the log thread was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The counter behind [`Log::dropped`], for a reader that must not keep the log open.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    pub fn sender(&self) -> Sender<LogItem> {
        self.tx.clone()
    }
}

/// The log thread's handle; joining it writes out what is queued.
pub struct LogThread {
    handle: Option<JoinHandle<()>>,
}

impl LogThread {
    /// Waits for the thread to finish, which it does once every [`Log`] is dropped.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How many items may wait for the log thread before per-packet items are dropped.
const QUEUE: usize = 65_536;

/// Opens the destinations and starts the log thread. Fails if the log file cannot be
/// opened, so that a daemon never runs without the log its config asks for.
pub fn start(dest: Destinations) -> std::io::Result<(Log, LogThread)> {
    let file = match &dest.file {
        Some(p) => Some(open_log_file(p)?),
        None => None,
    };
    let syslog = dest.syslog.then(Syslog::connect);
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let ops = match &dest.ops {
        Some(p) => Some(std::io::BufWriter::new(open_log_file(p)?)),
        None => None,
    };
    let mut writer =
        Writer { file, ops, syslog, stdout: dest.stdout, lookup: dest.lookup, on_report: dest.on_report };
    let handle = std::thread::Builder::new()
        .name("sesame-log".into())
        .spawn(move || writer.run(rx))
        .expect("spawn log thread");
    Ok((Log { tx, dropped: Arc::new(AtomicU64::new(0)) }, LogThread { handle: Some(handle) }))
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display())))
}

/// The syslog destination. Like knockd (whose `syslog(3)` drops messages silently
/// while no syslog daemon listens), the daemon keeps running when `/dev/log` is not
/// there; it says so once on stderr and reconnects when syslog comes back.
struct Syslog {
    logger: Option<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
    retry_at: std::time::Instant,
    warned: bool,
}

impl Syslog {
    fn connect() -> Syslog {
        let mut s = Syslog { logger: None, retry_at: std::time::Instant::now(), warned: false };
        s.reconnect();
        s
    }

    fn reconnect(&mut self) {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_USER,
            hostname: None,
            // The ident knockd logs under, so syslog filters written for knockd keep working.
            process: "knockd".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(l) => self.logger = Some(l),
            Err(e) => {
                if !self.warned {
                    eprintln!("sesamed: syslog is not available ({e}); will keep trying");
                    self.warned = true;
                }
                self.retry_at = std::time::Instant::now() + std::time::Duration::from_secs(10);
            }
        }
    }

    fn notice(&mut self, text: String) {
        if self.logger.is_none() && std::time::Instant::now() >= self.retry_at {
            self.reconnect();
        }
        if let Some(l) = &mut self.logger {
            if l.notice(text).is_err() {
                // The syslog daemon went away: try again later.
                self.logger = None;
                self.retry_at = std::time::Instant::now() + std::time::Duration::from_secs(10);
            }
        }
    }
}

struct Writer {
    file: Option<File>,
    ops: Option<std::io::BufWriter<File>>,
    syslog: Option<Syslog>,
    stdout: bool,
    lookup: bool,
    on_report: Option<ReportHook>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<LogItem>) {
        for item in rx {
            let msg = match item {
                LogItem::Event(e) => {
                    // By identity: the event may come from before a reload that moved
                    // or removed its door.
                    let name = e.door().name();
                    let host = self.host(event_ip(&e));
                    event_message(&e, &name, host.as_deref())
                }
                LogItem::Report(r) => {
                    if let Some(hook) = &self.on_report {
                        (hook.0)(&r);
                    }
                    if let (Some(ops), Report::Operation { .. }) = (&mut self.ops, &r) {
                        let _ = ops.write_all(operation_line(&r).as_bytes());
                        continue;
                    }
                    let host = self.host(report_ip(&r));
                    match report_message(&r, host.as_deref()) {
                        Some(m) => m,
                        None => continue,
                    }
                }
                LogItem::Text(m) => m,
                LogItem::Flush(ack) => {
                    if let Some(o) = &mut self.ops {
                        let _ = o.flush();
                    }
                    if let Some(f) = &mut self.file {
                        let _ = f.flush();
                    }
                    let _ = std::io::stdout().flush();
                    let _ = ack.send(());
                    continue;
                }
            };
            self.write(&msg);
        }
    }

    fn host(&self, ip: Option<IpAddr>) -> Option<String> {
        if !self.lookup {
            return None;
        }
        ip.and_then(|ip| dns_lookup::lookup_addr(&ip).ok()).filter(|h| h.parse::<IpAddr>().is_err())
    }

    fn write(&mut self, msg: &Message) {
        if let Some(f) = &mut self.file {
            // A full disk must not stop the daemon; the other destinations still get the line.
            let _ = f.write_all(file_line(msg, chrono::Local::now()).as_bytes());
        }
        if let Some(s) = &mut self.syslog {
            s.notice(if msg.newline { format!("{}\n", msg.text) } else { msg.text.clone() });
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", msg.text);
            let _ = out.flush();
        }
    }
}

fn event_ip(e: &Event) -> Option<IpAddr> {
    match e {
        Event::Stage { src, .. }
        | Event::Open { src, .. }
        | Event::Timeout { src, .. }
        | Event::Replayed { src, .. } => Some(*src),
        Event::DoorDisabled { .. } | Event::OneTimeError { .. } | Event::ClaimUnsaved { .. } => None,
    }
}

/// `--ops-log`'s line for an operation: `STARTED FINISHED OP RESULT IP DOOR`, times as
/// seconds since the epoch with nanoseconds (the door last: it may contain spaces).
fn operation_line(r: &Report) -> String {
    let Report::Operation { door_name, ip, op, started, finished, result, .. } = r else {
        return String::new();
    };
    let secs =
        |t: &std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    format!("{:.9} {:.9} {} {:?} {ip} {door_name}\n", secs(started), secs(finished), op.name(), result)
}

fn report_ip(r: &Report) -> Option<IpAddr> {
    match r {
        Report::Timeout { ip, .. }
        | Report::Extended { ip, .. }
        | Report::ClosingOnShutdown { ip, .. }
        | Report::Refused { ip, .. }
        | Report::BackendRunning { ip, .. }
        | Report::BackendFailed { ip, .. }
        | Report::BackendTimedOut { ip, .. }
        | Report::Retrying { ip, .. }
        | Report::GaveUp { ip, .. }
        | Report::Rearmed { ip, .. }
        | Report::ExpiredWhileDown { ip, .. }
        | Report::UnknownBackend { ip, .. }
        | Report::Operation { ip, .. } => Some(*ip),
        Report::Running { .. }
        | Report::Failed { .. }
        | Report::SpawnFailed { .. }
        | Report::CommandTimedOut { .. }
        | Report::JournalFailed { .. }
        | Report::Opened { .. }
        | Report::GrantOpen { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

    fn key() -> crate::doors::DoorKey {
        crate::doors::DoorKey::of("openSSH", 0)
    }

    fn at() -> chrono::DateTime<chrono::Local> {
        chrono::Local.with_ymd_and_hms(2026, 11, 21, 8, 16, 59).unwrap()
    }

    fn line(m: Message) -> String {
        file_line(&m, at())
    }

    #[test]
    fn matcher_events_read_as_knockd_writes_them() {
        assert_eq!(
            line(event_message(&Event::Stage { src: IP, door: key(), stage: 2 }, "openSSH", None)),
            "[2026-11-21 08:16] 198.18.0.2: openSSH: Stage 2\n"
        );
        assert_eq!(
            line(event_message(&Event::Open { src: IP, door: key() }, "openSSH", None)),
            "[2026-11-21 08:16] 198.18.0.2: openSSH: OPEN SESAME\n"
        );
        assert_eq!(
            line(event_message(&Event::Timeout { src: IP, door: key(), stage: 2 }, "openSSH", None)),
            "[2026-11-21 08:16] 198.18.0.2: openSSH: sequence timeout (stage 2)\n\n"
        );
        assert_eq!(
            line(event_message(&Event::DoorDisabled { door: key() }, "otp", None)),
            "[2026-11-21 08:16] no more sequences left in the one time sequences file for door otp --> disabling the door\n"
        );
    }

    #[test]
    fn lookups_name_the_host_in_parentheses() {
        assert_eq!(
            event_message(&Event::Stage { src: IP, door: key(), stage: 1 }, "d", Some("client.example")).text,
            "198.18.0.2 (client.example): d: Stage 1"
        );
    }

    #[test]
    fn executor_reports_read_as_knockd_writes_them() {
        let running = Report::Running {
            door_name: "openSSH".into(),
            command: "iptables -I INPUT -s 198.18.0.2".into(),
        };
        assert_eq!(
            line(report_message(&running, None).unwrap()),
            "[2026-11-21 08:16] openSSH: running command: iptables -I INPUT -s 198.18.0.2\n\n"
        );
        assert_eq!(
            line(report_message(&Report::Failed { door_name: "openSSH".into(), code: 1 }, None).unwrap()),
            "[2026-11-21 08:16] openSSH: command returned non-zero status code (1)\n"
        );
        assert_eq!(
            line(report_message(&Report::Timeout { ip: IP, door_name: "openSSH".into() }, None).unwrap()),
            "[2026-11-21 08:16] 198.18.0.2: openSSH: command timeout\n"
        );
    }

    #[test]
    fn log_thread_writes_the_file_in_order() {
        let dir = std::env::temp_dir().join(format!("sesame-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("knockd.log");
        let (log, thread) = start(Destinations { file: Some(path.clone()), ..Default::default() }).unwrap();
        log.text("starting up, listening on eth0");
        log.offer(LogItem::Event(Event::Stage { src: IP, door: key(), stage: 1 }));
        log.send(LogItem::Report(Report::Running { door_name: "openSSH".into(), command: "true".into() }));
        log.flush();
        drop(log);
        thread.join();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let stripped: Vec<&str> = text.lines().map(|l| l.get(19..).unwrap_or(l)).collect();
        assert_eq!(
            stripped,
            [
                "starting up, listening on eth0",
                "198.18.0.2: openSSH: Stage 1",
                "openSSH: running command: true",
                ""
            ]
        );
    }
}
