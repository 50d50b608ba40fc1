//! End-to-end acceptance tests of the first milestone, run in throw-away network
//! namespaces against a real `sshd` behind a real iptables ruleset.
//!
//! Each test builds a [`Lab`] (server and client namespaces joined by a veth), starts
//! `sshd` on port 22 in the server, applies the classic knockd base policy (accept
//! ESTABLISHED,RELATED, drop new tcp/22), starts the daemon under test on the server's
//! veth with a knockd.conf whose `LogFile` lies in a scratch directory, knocks from the
//! client, and then checks three independent things: whether a *new* TCP connection from
//! the client reads the `SSH-2.0` banner, what `iptables -S INPUT` shows, and what the
//! daemon wrote to its log file.
//!
//! The programs under test can be swapped for the real knockd ones, which is how this
//! harness itself was validated:
//!
//! - `SESAME_E2E_DAEMON=/usr/sbin/knockd` runs the daemon tests against knockd
//!   (default: the `sesamed` built from this crate);
//! - `SESAME_E2E_KNOCK=/usr/bin/knock` uses knockd's client, called without the
//!   `knock` subcommand word (default: `sesame knock`).
//!
//! A few checks are specific to one daemon; they are chosen by the daemon's file name
//! (`knockd` or not): knockd only notices an expired sequence when the next packet
//! arrives, sesamed fires the timeout from a timer.
//!
//! `cross_compat_*` always involve the real `/usr/sbin/knockd` or `/usr/bin/knock`, and
//! `log_file_is_byte_identical_to_knockd` always compares against the real knockd.
//!
//! Every test panics (fails) without root unless `SESAME_LAB=skip` is set. When a test
//! fails, its fixture prints the daemon logs, stdout/stderr, the ruleset and sshd's log.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sesame_lab::{wait_until, ChildGuard, Lab, Sshd, TempDir};

const KNOCKD: &str = "/usr/sbin/knockd";
const KNOCK: &str = "/usr/bin/knock";

/// How long a banner read may take when the connection is expected to get through.
const REACH: Duration = Duration::from_secs(3);
/// How long a banner read waits when the connection is expected to be dropped.
const BLOCKED: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------
// Programs under test
// ---------------------------------------------------------------------------------

/// A knockd-compatible daemon binary.
#[derive(Clone, Debug)]
struct DaemonBin {
    path: PathBuf,
    /// The real knockd (as opposed to sesamed): a few sesame-specific checks are skipped.
    is_knockd: bool,
}

impl DaemonBin {
    fn new(path: PathBuf) -> DaemonBin {
        let is_knockd = path.file_name().is_some_and(|n| n == "knockd");
        DaemonBin { path, is_knockd }
    }

    fn label(&self) -> &'static str {
        if self.is_knockd {
            "knockd"
        } else {
            "sesamed"
        }
    }
}

/// The daemon under test: `SESAME_E2E_DAEMON`, or this crate's `sesamed`.
fn daemon_under_test() -> DaemonBin {
    match std::env::var_os("SESAME_E2E_DAEMON") {
        Some(p) if !p.is_empty() => DaemonBin::new(PathBuf::from(p)),
        _ => DaemonBin::new(PathBuf::from(env!("CARGO_BIN_EXE_sesamed"))),
    }
}

/// The real knockd, whatever the environment says.
fn real_knockd() -> DaemonBin {
    assert!(Path::new(KNOCKD).is_file(), "{KNOCKD} is missing: apt-get install knockd");
    DaemonBin::new(PathBuf::from(KNOCKD))
}

/// A knock client: `sesame knock ...` or knockd's `knock ...`.
#[derive(Clone, Debug)]
struct ClientBin {
    path: PathBuf,
    /// Whether the `knock` subcommand word goes before the arguments.
    subcommand: bool,
}

/// The client under test: `SESAME_E2E_KNOCK` (called without a subcommand), or `sesame knock`.
fn client_under_test() -> ClientBin {
    match std::env::var_os("SESAME_E2E_KNOCK") {
        Some(p) if !p.is_empty() => ClientBin { path: PathBuf::from(p), subcommand: false },
        _ => ClientBin { path: PathBuf::from(env!("CARGO_BIN_EXE_sesame")), subcommand: true },
    }
}

/// knockd's own client, whatever the environment says.
fn real_knock() -> ClientBin {
    assert!(Path::new(KNOCK).is_file(), "{KNOCK} is missing: apt-get install knockd");
    ClientBin { path: PathBuf::from(KNOCK), subcommand: false }
}

// ---------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------

/// One daemon run: the process and the files it writes.
struct Daemon {
    bin: DaemonBin,
    child: ChildGuard,
    conf: PathBuf,
    log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A lab with sshd and the base policy, plus the daemons started in it.
///
/// Field order is drop order: daemons, then sshd, then the namespaces (which kills
/// anything left in them, e.g. knockd's sleeping stop-command children), then the
/// scratch directory.
struct Fixture {
    daemons: Vec<Daemon>,
    sshd: Sshd,
    lab: Lab,
    dir: TempDir,
}

impl Fixture {
    /// Builds the lab, starts sshd in the server and applies the base policy.
    fn new(tag: &str) -> Fixture {
        let dir = TempDir::new("e2e").expect("scratch directory");
        let lab = Lab::new(tag).expect("lab namespaces");
        let sshd = Sshd::start(&lab.server).expect("sshd in the server namespace");
        sesame_lab::ssh_base_policy(&lab.server).expect("base policy");
        Fixture { daemons: Vec::new(), sshd, lab, dir }
    }

    fn server_ip(&self) -> IpAddr {
        IpAddr::V4(self.lab.server_v4)
    }

    fn client_ip(&self) -> String {
        self.lab.client_v4.to_string()
    }

    /// The rule the test doors add for the client, as `iptables -S` prints it.
    fn accept_rule(&self) -> String {
        format!("-A INPUT -s {}/32 -p tcp -m tcp --dport 22 -j ACCEPT", self.client_ip())
    }

    /// Writes a knockd.conf (`[options]` with a LogFile in the scratch directory, then
    /// `doors` verbatim), starts `bin -i IFACE -c CONF -v` in the server namespace and
    /// waits until it logs `starting up, listening on IFACE`.
    fn start_daemon(&mut self, bin: &DaemonBin, doors: &str) {
        let n = self.daemons.len();
        let label = bin.label();
        let conf = self.dir.join(&format!("{n}-{label}.conf"));
        let log = self.dir.join(&format!("{n}-{label}.log"));
        let stdout = self.dir.join(&format!("{n}-{label}.stdout"));
        let stderr = self.dir.join(&format!("{n}-{label}.stderr"));
        let text = format!("[options]\n\tLogFile = {}\n\n{doors}", log.display());
        std::fs::write(&conf, text).expect("write knockd.conf");
        let mut cmd = self.lab.server.command(&bin.path);
        cmd.arg("-i").arg(&self.lab.server_if).arg("-c").arg(&conf).arg("-v");
        if !bin.is_knockd {
            // Each sesamed keeps its grant journal in the test's own directory.
            cmd.arg("--state-dir").arg(self.dir.join(&format!("{n}-state")));
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let child = ChildGuard::spawn(&mut cmd).unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.daemons.push(Daemon { bin: bin.clone(), child, conf, log, stdout, stderr });
        let ready = format!("starting up, listening on {}", self.lab.server_if);
        let started = Instant::now();
        let up = wait_until(Duration::from_secs(5), || {
            self.log().contains(&ready) || !self.daemons.last_mut().unwrap().child.is_running()
        });
        let exited = self.daemons.last_mut().unwrap().child.wait_timeout(Duration::ZERO).ok().flatten();
        assert!(up && exited.is_none(), "{label} did not log {ready:?} within 5 s (exited: {exited:?})");
        eprintln!("{label} up after {:?}", started.elapsed());
        // The line is written once the capture is set up; give the first packets a
        // little slack anyway.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Stops the newest daemon with SIGTERM and waits up to 5 s for it to exit;
    /// `None` if it is still running then.
    fn stop_daemon(&mut self) -> Option<ExitStatus> {
        let d = self.daemons.last_mut().expect("a daemon was started");
        d.child.signal("TERM").expect("kill -TERM");
        let exited = d.child.wait_timeout(Duration::from_secs(5)).expect("wait");
        if exited.is_none() {
            // Still running: it may still be writing its last lines.
            std::thread::sleep(Duration::from_millis(200));
        }
        exited
    }

    /// The newest daemon's log file.
    fn log(&self) -> String {
        self.daemons.last().map(|d| read(&d.log)).unwrap_or_default()
    }

    /// Waits until the newest daemon's log contains `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// `iptables -S INPUT` in the server namespace.
    fn rules(&self) -> String {
        self.lab.server.sh_ok("iptables -S INPUT").expect("iptables -S INPUT")
    }

    fn wait_rules(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> bool {
        wait_until(timeout, || pred(&self.rules()))
    }

    /// Whether a new TCP connection from the client reads sshd's banner.
    fn reachable(&self, timeout: Duration) -> bool {
        sesame_lab::ssh_reachable(&self.lab.client, self.server_ip(), timeout)
    }

    /// Runs the client in the client namespace against the server's IPv4 address:
    /// `CLIENT [knock] OPTS... HOST PORTS...`. Panics unless it exits 0.
    fn knock(&self, client: &ClientBin, opts: &[&str], ports: &[&str]) -> Output {
        let mut cmd = self.lab.client.command("timeout");
        cmd.arg("20").arg(&client.path);
        if client.subcommand {
            cmd.arg("knock");
        }
        cmd.args(opts).arg(self.server_ip().to_string()).args(ports).stdin(Stdio::null());
        let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "knock client failed: {cmd:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Everything useful for diagnosing a failure.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            let _ = writeln!(
                s,
                "===== {} ({}) config {}:\n{}",
                d.bin.label(),
                d.bin.path.display(),
                d.conf.display(),
                read(&d.conf)
            );
            let _ = writeln!(s, "----- log file {}:\n{}", d.log.display(), read(&d.log));
            let _ = writeln!(s, "----- stdout:\n{}", read(&d.stdout));
            let _ = writeln!(s, "----- stderr:\n{}", read(&d.stderr));
        }
        let script =
            "echo '# iptables -S INPUT'; iptables -S INPUT; echo '# ip6tables -S INPUT'; ip6tables -S INPUT";
        let rules = self.lab.server.sh(script).map(|o| o.stdout);
        let _ = writeln!(s, "===== server ruleset:\n{}", String::from_utf8_lossy(&rules.unwrap_or_default()));
        let _ = writeln!(s, "===== sshd log:\n{}", self.sshd.log());
        s
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n#### diagnostics (lab {} / {}):\n{}",
                self.lab.server.name(),
                self.lab.client.name(),
                self.diagnostics()
            );
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<cannot read {}: {e}>", p.display()))
}

/// The messages of a LogFile: each `[YYYY-MM-DD HH:MM] ` prefix checked and removed.
/// Lines without a prefix (knockd's empty lines) are kept as they are.
fn log_messages(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                return String::new();
            }
            let b = line.as_bytes();
            let shape = b.len() >= 19
                && b[0] == b'['
                && b[5] == b'-'
                && b[8] == b'-'
                && b[11] == b' '
                && b[14] == b':'
                && b[17] == b']'
                && b[18] == b' '
                && [1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16].iter().all(|&i| b[i].is_ascii_digit());
            assert!(shape, "log line without a `[YYYY-MM-DD HH:MM] ` prefix: {line:?}");
            line[19..].to_owned()
        })
        .collect()
}

/// Asserts that `wanted` occur, each as a whole message, in this order in the log.
fn assert_log_sequence(log: &str, wanted: &[String]) {
    let msgs = log_messages(log);
    let mut from = 0;
    for w in wanted {
        match msgs[from..].iter().position(|m| m == w) {
            Some(i) => from += i + 1,
            None => panic!("log lacks {w:?} (in order after message #{from}); messages: {msgs:#?}"),
        }
    }
}

/// The seed's two doors, with `-I` so the ACCEPT lands before the DROP.
const OPEN_CLOSE_DOORS: &str = "\
[openSSH]
\tsequence    = 7000,8000,9000
\tseq_timeout = 5
\tcommand     = /usr/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\ttcpflags    = syn

[closeSSH]
\tsequence    = 9000,8000,7000
\tseq_timeout = 5
\tcommand     = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\ttcpflags    = syn
";

// ---------------------------------------------------------------------------------
// 1. correct knock opens, reverse knock closes
// ---------------------------------------------------------------------------------

#[test]
fn correct_knock_opens_ssh_and_reverse_knock_closes_it() {
    if !sesame_lab::require_root("correct_knock_opens_ssh_and_reverse_knock_closes_it") {
        return;
    }
    let mut fx = Fixture::new("ok");
    let base = fx.rules();
    assert!(!fx.reachable(BLOCKED), "the base policy must block new SSH connections before any knock");
    fx.start_daemon(&daemon_under_test(), OPEN_CLOSE_DOORS);
    assert_eq!(fx.rules(), base, "starting the daemon must not touch the ruleset");

    fx.knock(&client_under_test(), &["-d", "100"], &["7000", "8000", "9000"]);
    let rule = fx.accept_rule();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "no {rule:?} after the knock");
    // -I puts it first, before the conntrack ACCEPT and the DROP.
    assert_eq!(fx.rules().lines().nth(1), Some(rule.as_str()), "the ACCEPT must be the first rule");
    assert!(fx.reachable(REACH), "SSH banner not readable after a correct knock");

    let ip = fx.client_ip();
    let cmd = format!("/usr/sbin/iptables -I INPUT -s {ip} -p tcp --dport 22 -j ACCEPT");
    assert_log_sequence(
        &fx.log(),
        &[
            format!("{ip}: openSSH: Stage 1"),
            format!("{ip}: openSSH: Stage 2"),
            format!("{ip}: openSSH: Stage 3"),
            format!("{ip}: openSSH: OPEN SESAME"),
            format!("openSSH: running command: {cmd}"),
        ],
    );

    // closeSSH: the same ports backwards remove the rule again.
    fx.knock(&client_under_test(), &["-d", "100"], &["9000", "8000", "7000"]);
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r == base), "closeSSH did not restore the ruleset");
    assert!(!fx.reachable(BLOCKED), "SSH still reachable after closeSSH");
    let cmd = format!("/usr/sbin/iptables -D INPUT -s {ip} -p tcp --dport 22 -j ACCEPT");
    assert_log_sequence(
        &fx.log(),
        &[format!("{ip}: closeSSH: OPEN SESAME"), format!("closeSSH: running command: {cmd}")],
    );
}

// ---------------------------------------------------------------------------------
// 2. wrong order
// ---------------------------------------------------------------------------------

#[test]
fn wrong_order_leaves_ssh_closed_and_ruleset_unchanged() {
    if !sesame_lab::require_root("wrong_order_leaves_ssh_closed_and_ruleset_unchanged") {
        return;
    }
    let mut fx = Fixture::new("wo");
    fx.start_daemon(&daemon_under_test(), OPEN_CLOSE_DOORS);
    let before = fx.rules();

    fx.knock(&client_under_test(), &["-d", "100"], &["8000", "7000", "9000"]);
    // 7000 starts openSSH; the daemon has seen the knock once it logs that.
    let ip = fx.client_ip();
    assert!(fx.wait_log(&format!("{ip}: openSSH: Stage 1"), Duration::from_secs(3)), "7000 not seen");
    std::thread::sleep(Duration::from_millis(700));
    assert!(!fx.reachable(BLOCKED), "SSH reachable after a knock in the wrong order");
    assert_eq!(fx.rules(), before, "a wrong knock changed the ruleset");
    let log = fx.log();
    assert!(!log.contains("OPEN SESAME") && !log.contains("running command"), "a wrong knock opened a door");

    // Control: the same client, daemon and door do open with the right order, so the
    // refusal above was the daemon's doing.
    fx.knock(&client_under_test(), &["-d", "100"], &["7000", "8000", "9000"]);
    let rule = fx.accept_rule();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "control knock did not open");
}

// ---------------------------------------------------------------------------------
// 3. too slow
// ---------------------------------------------------------------------------------

#[test]
fn knock_slower_than_seq_timeout_is_refused() {
    if !sesame_lab::require_root("knock_slower_than_seq_timeout_is_refused") {
        return;
    }
    let mut fx = Fixture::new("to");
    let bin = daemon_under_test();
    fx.start_daemon(
        &bin,
        "[slowSSH]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 2\n\ttcpflags = syn\n\
         \tcommand = /usr/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n",
    );
    let before = fx.rules();
    let ip = fx.client_ip();
    let timeout_msg = format!("{ip}: slowSSH: sequence timeout (stage 1)");

    // First hit, then nothing for longer than seq_timeout (2.6 s, as `knock -d 2600`
    // would), then the rest.
    let client = client_under_test();
    fx.knock(&client, &[], &["7000"]);
    let t0 = Instant::now();
    assert!(fx.wait_log(&format!("{ip}: slowSSH: Stage 1"), Duration::from_secs(2)), "7000 not seen");
    if bin.is_knockd {
        // knockd notices the expiry only when the next packet arrives.
        std::thread::sleep(Duration::from_millis(2600).saturating_sub(t0.elapsed()));
    } else {
        // sesamed fires the timeout from a timer, without waiting for another packet.
        assert!(fx.wait_log(&timeout_msg, Duration::from_millis(3500)), "no timely {timeout_msg:?}");
        let after = t0.elapsed();
        assert!(after >= Duration::from_millis(900), "sequence timeout logged too early, after {after:?}");
        std::thread::sleep(Duration::from_millis(2600).saturating_sub(t0.elapsed()));
    }
    fx.knock(&client, &["-d", "100"], &["8000", "9000"]);
    // Both daemons have logged the timeout by now (knockd on the 8000 packet).
    assert!(fx.wait_log(&timeout_msg, Duration::from_secs(2)), "no {timeout_msg:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!fx.reachable(BLOCKED), "SSH reachable after a too slow knock");
    assert_eq!(fx.rules(), before, "a too slow knock changed the ruleset");
    let log = fx.log();
    assert!(!log.contains("Stage 2") && !log.contains("OPEN SESAME"), "a too slow knock progressed");

    // Control: the same door opens for a knock within seq_timeout.
    fx.knock(&client, &["-d", "100"], &["7000", "8000", "9000"]);
    let rule = fx.accept_rule();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "control knock did not open");
    assert!(fx.reachable(REACH), "SSH banner not readable after the control knock");
}

// ---------------------------------------------------------------------------------
// 4. start/stop commands with Cmd_Timeout
// ---------------------------------------------------------------------------------

#[test]
fn start_and_stop_command_close_again_after_cmd_timeout() {
    if !sesame_lab::require_root("start_and_stop_command_close_again_after_cmd_timeout") {
        return;
    }
    let mut fx = Fixture::new("ct");
    fx.start_daemon(
        &daemon_under_test(),
        "[openSSH]\n\
         \tsequence      = 7000,8000,9000\n\
         \tseq_timeout   = 5\n\
         \ttcpflags      = syn\n\
         \tstart_command = iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\
         \tcmd_timeout   = 3\n\
         \tstop_command  = iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n",
    );
    let before = fx.rules();
    let rule = fx.accept_rule();

    fx.knock(&client_under_test(), &["-d", "100"], &["7000", "8000", "9000"]);
    let knocked = Instant::now();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "no {rule:?} after the knock");
    assert!(fx.reachable(REACH), "SSH banner not readable after a correct knock");

    assert!(fx.wait_rules(Duration::from_secs(8), |r| !r.contains(&rule)), "rule still there after 8 s");
    let closed = knocked.elapsed();
    assert!(closed >= Duration::from_millis(2500), "stop command ran too early, after {closed:?}");
    assert_eq!(fx.rules(), before, "the stop command did not restore the ruleset");
    assert!(!fx.reachable(BLOCKED), "a new SSH connection got through after the stop command");

    let ip = fx.client_ip();
    assert_log_sequence(
        &fx.log(),
        &[
            format!("{ip}: openSSH: OPEN SESAME"),
            format!("openSSH: running command: iptables -I INPUT -s {ip} -p tcp --dport 22 -j ACCEPT"),
            format!("{ip}: openSSH: command timeout"),
            format!("openSSH: running command: iptables -D INPUT -s {ip} -p tcp --dport 22 -j ACCEPT"),
        ],
    );
}

// ---------------------------------------------------------------------------------
// 5. UDP knocks
// ---------------------------------------------------------------------------------

#[test]
fn udp_knocks_open_and_close() {
    if !sesame_lab::require_root("udp_knocks_open_and_close") {
        return;
    }
    let mut fx = Fixture::new("ud");
    fx.start_daemon(
        &daemon_under_test(),
        "[openUDP]\n\tsequence = 7100:udp,7200:udp,7300:udp\n\tseq_timeout = 5\n\
         \tcommand = /usr/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\n\
         [closeUDP]\n\tsequence = 7300:UDP,7200:UDP,7100:UDP\n\tseq_timeout = 5\n\
         \tcommand = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n",
    );
    let before = fx.rules();
    let rule = fx.accept_rule();
    let client = client_under_test();

    // -u: every hit is UDP.
    fx.knock(&client, &["-u", "-d", "100"], &["7100", "7200", "7300"]);
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "no {rule:?} after the UDP knock");
    assert!(fx.reachable(REACH), "SSH banner not readable after a UDP knock");
    let ip = fx.client_ip();
    assert_log_sequence(
        &fx.log(),
        &[format!("{ip}: openUDP: Stage 3"), format!("{ip}: openUDP: OPEN SESAME")],
    );

    // PORT:udp per hit.
    fx.knock(&client, &["-d", "100"], &["7300:udp", "7200:udp", "7100:udp"]);
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r == before), "closeUDP did not restore the ruleset");
    assert!(!fx.reachable(BLOCKED), "SSH still reachable after closeUDP");
}

// ---------------------------------------------------------------------------------
// 6. cross-compatibility with knockd's own programs
// ---------------------------------------------------------------------------------

/// Knocks `client` against `daemon` with the seed's openSSH door; expects access.
fn cross_check(tag: &str, daemon: &DaemonBin, client: &ClientBin) {
    let mut fx = Fixture::new(tag);
    fx.start_daemon(daemon, OPEN_CLOSE_DOORS);
    fx.knock(client, &["-d", "100"], &["7000", "8000", "9000"]);
    let rule = fx.accept_rule();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "no {rule:?} after the knock");
    assert!(fx.reachable(REACH), "SSH banner not readable after the knock");
    assert!(fx.log().contains(&format!("{}: openSSH: OPEN SESAME", fx.client_ip())));
}

#[test]
fn cross_compat_knockd_client_drives_daemon_under_test() {
    if !sesame_lab::require_root("cross_compat_knockd_client_drives_daemon_under_test") {
        return;
    }
    cross_check("xk", &daemon_under_test(), &real_knock());
}

#[test]
fn cross_compat_client_under_test_drives_knockd() {
    if !sesame_lab::require_root("cross_compat_client_under_test_drives_knockd") {
        return;
    }
    cross_check("xc", &real_knockd(), &client_under_test());
}

// ---------------------------------------------------------------------------------
// 7. log format, and the -A lockout trap
// ---------------------------------------------------------------------------------

/// One short scenario: a door whose command succeeds, one whose command fails, one
/// sequence that times out, then SIGTERM. Returns the log file's messages and how the
/// daemon exited (`None`: still running 5 s after SIGTERM).
fn log_scenario(fx: &mut Fixture, bin: &DaemonBin) -> (Vec<String>, Option<ExitStatus>) {
    fx.start_daemon(
        bin,
        "[good]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\tcommand = true\n\n\
         [bad]\n\tsequence = 7001:udp,8001,9001\n\tseq_timeout = 5\n\tcommand = false\n\n\
         [slow]\n\tsequence = 7002,8002\n\tseq_timeout = 1\n\tcommand = true\n",
    );
    let client = real_knock();
    let ip = fx.client_ip();
    fx.knock(&client, &["-d", "100"], &["7000", "8000", "9000"]);
    assert!(fx.wait_log("good: running command: true", Duration::from_secs(3)), "[good] did not run");
    std::thread::sleep(Duration::from_millis(300));
    fx.knock(&client, &["-d", "100"], &["7001:udp", "8001", "9001"]);
    let failed = "bad: command returned non-zero status code (1)";
    assert!(fx.wait_log(failed, Duration::from_secs(3)), "[bad] did not report its failure");
    std::thread::sleep(Duration::from_millis(300));
    // Half a sequence, a pause longer than seq_timeout (whole seconds), then a packet to
    // a door port that starts nothing (8000 is no door's first port): knockd logs the
    // timeout only then, sesamed already before; either way no attempt is left open.
    fx.knock(&client, &[], &["7002"]);
    assert!(fx.wait_log(&format!("{ip}: slow: Stage 1"), Duration::from_secs(2)), "7002 not seen");
    std::thread::sleep(Duration::from_millis(2500));
    fx.knock(&client, &[], &["8000"]);
    assert!(fx.wait_log("sequence timeout (stage 1)", Duration::from_secs(2)), "no sequence timeout");
    std::thread::sleep(Duration::from_millis(500));
    let exited = fx.stop_daemon();
    (log_messages(&fx.log()), exited)
}

#[test]
fn log_file_is_byte_identical_to_knockd() {
    if !sesame_lab::require_root("log_file_is_byte_identical_to_knockd") {
        return;
    }
    // Both daemons run, one after the other, in the same lab: same interface, same
    // addresses, so the logs can be compared as they are once the timestamps are gone.
    let mut fx = Fixture::new("lf");
    let (reference, knockd_exit) = log_scenario(&mut fx, &real_knockd());
    assert!(knockd_exit.is_some(), "knockd did not exit within 5 s of SIGTERM");
    let bin = daemon_under_test();
    let (candidate, exit) = log_scenario(&mut fx, &bin);
    if reference != candidate {
        let mut diff = String::new();
        for i in 0..reference.len().max(candidate.len()) {
            let r = reference.get(i).map(String::as_str);
            let c = candidate.get(i).map(String::as_str);
            let mark = if r == c { ' ' } else { '!' };
            let _ = writeln!(diff, "{mark} {i:3} knockd: {r:?}\n        test:   {c:?}");
        }
        panic!("log messages differ from knockd's:\n{diff}");
    }
    // The comparison must have compared something: the scenario's key lines, including
    // knockd's empty line after `running command` and `sequence timeout`.
    let ip = fx.client_ip();
    let iface = fx.lab.server_if.clone();
    let expected = [
        format!("starting up, listening on {iface}"),
        format!("{ip}: good: OPEN SESAME"),
        "good: running command: true".to_owned(),
        String::new(),
        format!("{ip}: bad: OPEN SESAME"),
        "bad: running command: false".to_owned(),
        String::new(),
        "bad: command returned non-zero status code (1)".to_owned(),
        format!("{ip}: slow: sequence timeout (stage 1)"),
        String::new(),
        "shutting down".to_owned(),
    ];
    let mut from = 0;
    for w in &expected {
        match reference[from..].iter().position(|m| m == w) {
            Some(i) => from += i + 1,
            None => panic!("knockd's log lacks {w:?} after message #{from}: {reference:#?}"),
        }
    }
    assert!(exit.is_some(), "{} did not exit within 5 s of SIGTERM", bin.label());
}

#[test]
fn append_rule_after_drop_is_a_lockout_trap() {
    if !sesame_lab::require_root("append_rule_after_drop_is_a_lockout_trap") {
        return;
    }
    let mut fx = Fixture::new("ap");
    // The seed's door verbatim (but /usr/sbin): `-A` appends the ACCEPT after the DROP.
    fx.start_daemon(
        &daemon_under_test(),
        "[openSSH]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\
         \tcommand = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\ttcpflags = syn\n",
    );
    fx.knock(&client_under_test(), &["-d", "100"], &["7000", "8000", "9000"]);
    let rule = fx.accept_rule();
    assert!(fx.wait_rules(Duration::from_secs(3), |r| r.contains(&rule)), "no {rule:?} after the knock");
    let rules = fx.rules();
    assert_eq!(rules.lines().last(), Some(rule.as_str()), "-A must append the rule at the end");
    assert!(
        !fx.reachable(BLOCKED),
        "the appended ACCEPT comes after the DROP, so SSH must stay blocked although the rule exists"
    );
}
