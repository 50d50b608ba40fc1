//! The daemon's own life cycle in the lab: daemonising with knockd's `-d -p -g`, and
//! SIGHUP reloads (a good config takes effect, a bad one is logged and the running
//! one kept: one of sesame's deliberate differences from knockd, which exits).

use sesame_lab::{wait_until, ChildGuard, Lab, TempDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");
const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A door that appends `NAME IP` to `out` when knocked.
fn door(name: &str, seq: &str, out: &Path) -> String {
    format!("[{name}]\nsequence = {seq}\nseq_timeout = 5\ncommand = echo {name} %IP% >> {}\n", out.display())
}

fn knock(lab: &Lab, ports: &[&str]) {
    let out = lab
        .client
        .command(SESAME)
        .arg("knock")
        .arg(lab.server_v4.to_string())
        .args(ports)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "knock failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts sesamed in the foreground on the lab's server side, with `flags` before
/// knockd's `-i IF -c CONF`, and waits until its log says it is listening.
fn start(lab: &Lab, conf: &Path, log: &Path, flags: &[&str]) -> ChildGuard {
    let daemon = ChildGuard::spawn(
        lab.server
            .command(SESAMED)
            .args(flags)
            .args(["-i", &lab.server_if, "-c"])
            .arg(conf)
            .arg("--state-dir")
            .arg(log.with_extension("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(log).contains("starting up")), "log: {}", read(log));
    daemon
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn daemonises_with_pid_file_and_log_file_from_the_command_line() {
    if !sesame_lab::require_root("daemonises_with_pid_file_and_log_file_from_the_command_line") {
        return;
    }
    let lab = Lab::new("dmn").unwrap();
    let dir = TempDir::new("dmn").unwrap();
    let (conf, log, pid_file, out) =
        (dir.join("k.conf"), dir.join("g.log"), dir.join("s.pid"), dir.join("out"));
    std::fs::write(&conf, format!("[options]\n{}", door("d", "7100,7200", &out))).unwrap();
    // -d returns once the daemon is detached; -g and -p override the config.
    let status = lab
        .server
        .command(SESAMED)
        .args(["-d", "-i", &lab.server_if, "-c"])
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("-p")
        .arg(&pid_file)
        .arg("-g")
        .arg(&log)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sesamed -d exited with {status}");
    assert!(wait_until(Duration::from_secs(5), || read(&log).contains("starting up")), "log: {}", read(&log));
    let pid: u32 = read(&pid_file).trim().parse().expect("the pid file holds a pid");
    assert!(pid_alive(pid), "the daemon (pid {pid}) is running");
    knock(&lab, &["7100", "7200"]);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("d 198.18.")), "log: {}", read(&log));
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)), "the daemon stops on SIGTERM");
    assert!(read(&log).ends_with("shutting down\n"), "log: {}", read(&log));
    assert!(!pid_file.exists(), "the pid file is removed on shutdown");
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_running_one_when_bad() {
    if !sesame_lab::require_root("sighup_applies_a_good_config_and_keeps_the_running_one_when_bad") {
        return;
    }
    let lab = Lab::new("hup").unwrap();
    let dir = TempDir::new("hup").unwrap();
    let (conf, log, out) = (dir.join("k.conf"), dir.join("k.log"), dir.join("out"));
    let options = format!("[options]\nLogFile = {}\n", log.display());
    std::fs::write(&conf, format!("{options}{}", door("first", "7100,7200", &out))).unwrap();
    let mut daemon = start(&lab, &conf, &log, &[]);

    // A knock half-way through a door the reload leaves alone goes on after it
    // (knockd drops every attempt on SIGHUP).
    knock(&lab, &["7100"]);
    let both = format!("{options}{}{}", door("first", "7100,7200", &out), door("second", "7300,7400", &out));
    std::fs::write(&conf, both).unwrap();
    daemon.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&log).contains("re-reading config file")));
    std::thread::sleep(Duration::from_secs(1));
    knock(&lab, &["7200"]);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("first ")), "log: {}", read(&log));
    std::fs::remove_file(&out).unwrap();

    // A good config: the new door works, the removed one is gone.
    std::fs::write(&conf, format!("{options}{}", door("second", "7300,7400", &out))).unwrap();
    daemon.signal("HUP").unwrap();
    let rereads = || read(&log).matches("re-reading config file").count();
    assert!(wait_until(Duration::from_secs(5), || rereads() == 2));
    // Workers pick a reload up between ring polls (at most 250 ms apart).
    std::thread::sleep(Duration::from_secs(1));
    knock(&lab, &["7300", "7400"]);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("second ")), "log: {}", read(&log));
    knock(&lab, &["7100", "7200"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!read(&out).contains("first "), "the removed door still opens: {}", read(&out));

    // A bad config: logged with file, line and value; the running config stays.
    std::fs::write(&conf, format!("{options}[third]\nsequence = 7500,70000\n")).unwrap();
    daemon.signal("HUP").unwrap();
    let conf_name = conf.display().to_string();
    assert!(
        wait_until(Duration::from_secs(5), || read(&log).contains("keeping the running configuration")),
        "log: {}",
        read(&log)
    );
    let text = read(&log);
    let line = text.lines().find(|l| l.contains("keeping the running configuration")).unwrap();
    assert!(line.contains(&format!("{conf_name}:4:")) && line.contains("70000"), "{line}");
    assert!(daemon.is_running(), "a bad config on SIGHUP must not stop the daemon");
    std::fs::remove_file(&out).unwrap();
    knock(&lab, &["7300", "7400"]);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("second ")), "log: {}", read(&log));
}

#[test]
fn ipv6_knocks_run_the_ipv6_command() {
    if !sesame_lab::require_root("ipv6_knocks_run_the_ipv6_command") {
        return;
    }
    let lab = Lab::new("six").unwrap();
    let dir = TempDir::new("six").unwrap();
    let (conf, log, out) = (dir.join("k.conf"), dir.join("k.log"), dir.join("out"));
    std::fs::write(
        &conf,
        format!(
            "[options]\nLogFile = {}\n[both]\nsequence = 7100,7200:udp\nseq_timeout = 5\n\
             command = echo four %IP% >> {o}\ncommand_6 = echo six %IP% >> {o}\n",
            log.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let _daemon = start(&lab, &conf, &log, &[]);
    let v6 = lab.server_v6.to_string();
    let knock6 = lab.client.command(SESAME).args(["knock", "-6", &v6, "7100", "7200:udp"]).output().unwrap();
    assert!(knock6.status.success(), "{}", String::from_utf8_lossy(&knock6.stderr));
    let want = format!("six {}", lab.client_v6);
    assert!(
        wait_until(Duration::from_secs(5), || read(&out).contains(&want)),
        "out: {} log: {}",
        read(&out),
        read(&log)
    );
    assert!(read(&log).contains(&format!("{}: both: OPEN SESAME", lab.client_v6)), "log: {}", read(&log));
    knock(&lab, &["7100", "7200:udp"]);
    let want = format!("four {}", lab.client_v4);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains(&want)), "out: {}", read(&out));
}

#[test]
fn use_syslog_without_a_syslog_daemon_still_runs() {
    if !sesame_lab::require_root("use_syslog_without_a_syslog_daemon_still_runs") {
        return;
    }
    // Debian's stock knockd.conf says UseSyslog; knockd runs on when nothing listens on
    // /dev/log, and so must sesamed (whether or not this machine runs a syslog daemon).
    let lab = Lab::new("slg").unwrap();
    let dir = TempDir::new("slg").unwrap();
    let (conf, log, out) = (dir.join("k.conf"), dir.join("k.log"), dir.join("out"));
    let text = format!("[options]\nUseSyslog\nLogFile = {}\n{}", log.display(), door("d", "7100,7200", &out));
    std::fs::write(&conf, text).unwrap();
    let mut daemon = start(&lab, &conf, &log, &[]);
    knock(&lab, &["7100", "7200"]);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("d 198.18.")), "log: {}", read(&log));
    assert!(daemon.is_running());
}

#[test]
fn only_ipv4_with_dash_4() {
    if !sesame_lab::require_root("only_ipv4_with_dash_4") {
        return;
    }
    let lab = Lab::new("v4o").unwrap();
    let dir = TempDir::new("v4o").unwrap();
    let (conf, log, out) = (dir.join("k.conf"), dir.join("k.log"), dir.join("out"));
    std::fs::write(
        &conf,
        format!("[options]\nLogFile = {}\n{}", log.display(), door("d", "7100,7200", &out)),
    )
    .unwrap();
    let _daemon = start(&lab, &conf, &log, &["-4"]);
    let v6 = lab.server_v6.to_string();
    let knock6 = lab.client.command(SESAME).args(["knock", "-6", &v6, "7100", "7200"]).output().unwrap();
    assert!(knock6.status.success());
    knock(&lab, &["7100", "7200"]);
    let want = format!("d {}", lab.client_v4);
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains(&want)), "log: {}", read(&log));
    assert!(!read(&log).contains(&lab.client_v6.to_string()), "-4 ignores IPv6: {}", read(&log));
    assert_eq!(read(&out).lines().count(), 1, "{}", read(&out));
}
