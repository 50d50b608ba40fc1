//! What the daemon lab tests share: the daemon as a process with its files, its log
//! read back as knockd's messages, and knocks sent with `sesame knock`.
#![allow(dead_code)] // each test binary uses its own part

use sesame_lab::{wait_until, ChildGuard, Netns};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");
pub const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

/// How long a daemon may take to log `starting up` (a loaded 2-core CI machine).
pub const START: Duration = Duration::from_secs(10);
/// How long a knock that should open may take to show its command's output.
pub const OPEN: Duration = Duration::from_secs(5);

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether `path` has a line that is exactly `line`.
pub fn has_line(path: &Path, line: &str) -> bool {
    read(path).lines().any(|l| l == line)
}

/// The messages of a LogFile: each `[YYYY-MM-DD HH:MM] ` prefix removed (lines without
/// one, such as knockd's empty lines, are kept as they are).
pub fn messages(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let b = line.as_bytes();
            let prefixed = b.len() >= 19 && b[0] == b'[' && b[17] == b']' && b[18] == b' ';
            if prefixed {
                line[19..].to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect()
}

/// One sesamed process and the files it writes; prints them all if the test fails.
/// Declare it after the namespaces it runs in, so it is dropped (killed) first.
pub struct Daemon {
    pub child: ChildGuard,
    pub conf: PathBuf,
    pub log: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Daemon {
    /// Spawns `sesamed ARGS -c CONF` in `ns`; stdout and stderr go to files beside `log`.
    pub fn spawn(ns: &Netns, args: &[&str], conf: &Path, log: &Path) -> Daemon {
        let stdout = log.with_extension("stdout");
        let stderr = log.with_extension("stderr");
        let mut cmd = ns.command(SESAMED);
        cmd.args(args)
            .arg("-c")
            .arg(conf)
            .arg("--state-dir")
            .arg(log.with_extension("state"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let child = ChildGuard::spawn(&mut cmd).unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Daemon { child, conf: conf.to_owned(), log: log.to_owned(), stdout, stderr }
    }

    /// Spawns the daemon and waits until it logs `starting up, listening on {listening}`.
    pub fn start(ns: &Netns, args: &[&str], conf: &Path, log: &Path, listening: &str) -> Daemon {
        let mut d = Daemon::spawn(ns, args, conf, log);
        let want = format!("starting up, listening on {listening}");
        let up = wait_until(START, || d.has_message(&want) || !d.child.is_running());
        let running = d.child.is_running();
        assert!(up && running, "sesamed {args:?} did not log {want:?} within {START:?} (running: {running})");
        d
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    pub fn messages(&self) -> Vec<String> {
        messages(&self.log())
    }

    pub fn has_message(&self, msg: &str) -> bool {
        self.messages().iter().any(|m| m == msg)
    }

    pub fn count_messages(&self, msg: &str) -> usize {
        self.messages().iter().filter(|m| *m == msg).count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to 10 s for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.child.signal("TERM").expect("kill -TERM");
        match self.child.wait_timeout(Duration::from_secs(10)).expect("wait") {
            Some(status) => status,
            None => panic!("sesamed still runs 10 s after SIGTERM"),
        }
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "===== sesamed (pid {}) config {}:\n{}\n----- log {}:\n{}\n----- stdout:\n{}\n----- stderr:\n{}",
            self.pid(),
            self.conf.display(),
            read(&self.conf),
            self.log.display(),
            self.log(),
            read(&self.stdout),
            read(&self.stderr)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n#### diagnostics:\n{}", self.diagnostics());
        }
    }
}

/// `sesame knock [-6] DST PORTS...` from `ns`; panics unless it exits 0.
pub fn knock(ns: &Netns, dst: IpAddr, ports: &[&str]) {
    let mut cmd = ns.command("timeout");
    cmd.arg("20").arg(SESAME).arg("knock");
    if dst.is_ipv6() {
        cmd.arg("-6");
    }
    cmd.arg(dst.to_string()).args(ports).stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Knocks again and again (waiting up to 400 ms after each) until `opened` holds or
/// `within` has passed since `since`; returns whether it held.
pub fn knock_until(
    ns: &Netns,
    dst: IpAddr,
    ports: &[&str],
    since: Instant,
    within: Duration,
    mut opened: impl FnMut() -> bool,
) -> bool {
    let deadline = since + within;
    loop {
        knock(ns, dst, ports);
        let left = deadline.saturating_duration_since(Instant::now());
        if wait_until(left.min(Duration::from_millis(400)), &mut opened) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}
