//! sesamed's firewall backends end to end, with the real firewalls and a real sshd in
//! lab namespaces: a knock opens SSH (the banner is read), the grant closes at its
//! time and leaves the ruleset exactly as it was before the knock; and after a
//! `kill -9` with grants open, nothing stays open: nftables' kernel timeouts close
//! grants while sesamed is dead, and for the other backends a restart closes what
//! expired within a second and re-arms the rest, never adding a rule twice.

mod common;

use common::*;
use sesame_lab::{
    require_root, ruleset, ssh_base_policy, ssh_reachable, tcp_banner, wait_until, Lab, Netns, Sshd, TempDir,
    UfwJail,
};
use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a blocked connection attempt waits before it counts as blocked.
const BLOCKED: Duration = Duration::from_millis(1500);

/// A TOML config: one door `ssh` (7000,8000,9000 SYNs) opening 22/tcp through
/// `backend` for `secs` seconds, and `extra` doors.
fn config(lab: &Lab, log: &Path, backend: &str, secs: u32, extra: &str) -> String {
    let ssh = door("ssh", &["7000", "8000", "9000"], secs, &Opens::Native("22/tcp"));
    config_with(lab, log, backend, &(ssh + extra))
}

/// A TOML config listening on the lab's server interface with `doors`, whose native
/// grants go through `backend`.
fn config_with(lab: &Lab, log: &Path, backend: &str, doors: &str) -> String {
    format!(
        "[options]\nlog_file = \"{}\"\ninterface = \"{}\"\n\n[firewall]\nbackend = \"{backend}\"\n\n{doors}",
        log.display(),
        lab.server_if
    )
}

/// How a door opens: through the config's native backend, or with knockd-style
/// commands that insert (and delete) an iptables rule commented with the door's name.
enum Opens {
    Native(&'static str),
    IptablesCommands,
}

/// A `[[door]]` section: `sequence` (SYNs), a grant of `secs` seconds, opened as `opens`.
fn door(name: &str, sequence: &[&str], secs: u32, opens: &Opens) -> String {
    let how = match opens {
        Opens::Native(port) => format!("open = [\"{port}\"]\n"),
        Opens::IptablesCommands => {
            let rule = format!("INPUT -s %IP% -p tcp --dport 22 -m comment --comment {name} -j ACCEPT");
            format!("start_command = \"/usr/sbin/iptables -I {rule}\"\nstop_command = \"/usr/sbin/iptables -D {rule}\"\n")
        }
    };
    let sequence: Vec<String> = sequence.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[door]]\nname = \"{name}\"\nsequence = [{}]\nseq_timeout = 5\ntcp_flags = [\"syn\"]\n\
         cmd_timeout = {secs}\n{how}",
        sequence.join(", ")
    )
}

fn nft_ruleset(ns: &Netns) -> String {
    ns.sh_ok("nft list ruleset").expect("nft list ruleset")
}

fn server(lab: &Lab) -> IpAddr {
    IpAddr::V4(lab.server_v4)
}

/// Knocks the `ssh` door from the client and waits for the SSH banner.
fn knock_and_read_banner(lab: &Lab) -> Instant {
    let t = Instant::now();
    knock(&lab.client, server(lab), &["7000", "8000", "9000"]);
    let banner = tcp_banner(&lab.client, server(lab), 22, Duration::from_secs(5));
    assert!(banner.starts_with("SSH-2.0-"), "no SSH banner after the knock: {banner:?}");
    t
}

/// Waits until new SSH connections from the client fail again; returns when.
fn wait_closed(lab: &Lab, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if !ssh_reachable(&lab.client, server(lab), BLOCKED) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "SSH still reachable {within:?} later");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn nftables_alone_keeps_ssh_closed_until_a_knock_and_closes_it_by_itself() {
    if !require_root("nftables_alone_keeps_ssh_closed_until_a_knock_and_closes_it_by_itself") {
        return;
    }
    let lab = Lab::new("fnf").unwrap();
    let dir = TempDir::new("fnf").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    assert_eq!(nft_ruleset(&lab.server).trim(), "", "the lab starts with no rule at all");
    assert!(ssh_reachable(&lab.client, server(&lab), Duration::from_secs(5)), "sshd answers before sesamed");
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, "nftables", 3, "")).unwrap();
    let mut daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    // sesame's table alone keeps 22 closed: no other rule exists in the namespace.
    assert!(!ssh_reachable(&lab.client, server(&lab), BLOCKED), "22 must be closed before the knock");
    let before = nft_ruleset(&lab.server);
    assert!(before.contains("table inet sesame"), "{before}");
    let knocked = knock_and_read_banner(&lab);
    let closed = wait_closed(&lab, Duration::from_secs(8));
    let lasted = closed - knocked;
    eprintln!("nftables: open for {lasted:?} (cmd_timeout 3 s)");
    assert!(lasted >= Duration::from_millis(2500), "closed early: {lasted:?}");
    assert_eq!(
        nft_ruleset(&lab.server),
        before,
        "the ruleset after the grant is what it was before the knock"
    );
    // No process per grant: the daemon has no child now, and ran none (no `nft` line).
    assert!(!daemon.log().contains("running command"), "{}", daemon.log());
    // Fail closed: with sesamed stopped the port stays closed...
    assert_eq!(daemon.stop().code(), Some(0));
    assert!(!ssh_reachable(&lab.client, server(&lab), BLOCKED), "22 must stay closed when sesamed stops");
    // ...until the operator takes sesame's table away on purpose.
    let out = lab
        .server
        .command(SESAME)
        .args(["firewall", "remove", "nftables"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "sesame firewall remove: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(nft_ruleset(&lab.server).trim(), "");
    assert!(ssh_reachable(&lab.client, server(&lab), Duration::from_secs(5)));
}

#[test]
fn iptables_opens_over_the_base_policy_and_restores_the_ruleset_exactly() {
    if !require_root("iptables_opens_over_the_base_policy_and_restores_the_ruleset_exactly") {
        return;
    }
    let lab = Lab::new("fip").unwrap();
    let dir = TempDir::new("fip").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    ssh_base_policy(&lab.server).unwrap();
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, "iptables", 3, "")).unwrap();
    let _daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    assert!(!ssh_reachable(&lab.client, server(&lab), BLOCKED), "the base policy drops 22");
    let before = ruleset(&lab.server).unwrap();
    let knocked = knock_and_read_banner(&lab);
    let during = ruleset(&lab.server).unwrap();
    assert!(during.contains("sesame door=ssh"), "{during}");
    let closed = wait_closed(&lab, Duration::from_secs(8));
    eprintln!("iptables: open for {:?} (cmd_timeout 3 s)", closed - knocked);
    assert!(wait_until(Duration::from_secs(2), || ruleset(&lab.server).unwrap() == before));
    assert_eq!(ruleset(&lab.server).unwrap(), before, "iptables-save after the grant is what it was before");
}

#[test]
fn ufw_opens_in_a_private_ufw_and_restores_its_status_exactly() {
    if !require_root("ufw_opens_in_a_private_ufw_and_restores_its_status_exactly") {
        return;
    }
    let lab = Lab::new("fuw").unwrap();
    let dir = TempDir::new("fuw").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let jail = UfwJail::new(&lab.server).unwrap();
    jail.ufw(&["default", "deny", "incoming"]).unwrap();
    jail.ufw(&["--force", "enable"]).unwrap();
    // Let ufw write its files once, so the baseline is its steady state.
    jail.ufw(&["allow", "9/udp"]).unwrap();
    jail.ufw(&["delete", "allow", "9/udp"]).unwrap();
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, "ufw", 4, "")).unwrap();
    // sesamed runs inside the jail, so its `ufw` is the jail's.
    let _daemon = spawn_in_jail(&jail, &conf, &dir.join("state"), &dir.join("stderr"));
    let up = wait_until(START, || read(&log).contains("starting up"));
    assert!(up, "sesamed did not start: {}\n{}", read(&log), read(&dir.join("stderr")));
    assert!(!ssh_reachable(&lab.client, server(&lab), BLOCKED), "ufw denies 22");
    let status = || jail.ufw(&["status", "verbose"]).unwrap();
    let (before, before_rules) = (status(), ruleset(&lab.server).unwrap());
    let knocked = knock_and_read_banner(&lab);
    assert!(status().contains(&lab.client_v4.to_string()), "{}", status());
    let closed = wait_closed(&lab, Duration::from_secs(10));
    eprintln!("ufw: open for {:?} (cmd_timeout 4 s)", closed - knocked);
    assert!(wait_until(Duration::from_secs(3), || status() == before), "{}", status());
    assert_eq!(ruleset(&lab.server).unwrap(), before_rules);
}

#[test]
fn nftables_grants_close_on_time_while_sesamed_is_dead() {
    if !require_root("nftables_grants_close_on_time_while_sesamed_is_dead") {
        return;
    }
    let lab = Lab::new("fnk").unwrap();
    let dir = TempDir::new("fnk").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, "nftables", 4, "")).unwrap();
    let daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    let knocked = knock_and_read_banner(&lab);
    daemon.child.signal("KILL").unwrap();
    // The element is the kernel's: it goes at its time with nobody to remove it.
    let closed = wait_closed(&lab, Duration::from_secs(10));
    let lasted = closed - knocked;
    eprintln!("nftables after kill -9: closed {lasted:?} after the knock (cmd_timeout 4 s)");
    assert!(lasted >= Duration::from_millis(3500), "{lasted:?}");
    let rules = nft_ruleset(&lab.server);
    assert!(!rules.contains(&lab.client_v4.to_string()), "the element is gone: {rules}");
}

/// kill -9 with two grants open (one expiring while sesamed is dead, one after its
/// restart), then a restart on the same journal. `backend` is `iptables` or `command`.
fn restart_after_kill(tag: &str, backend: &str) {
    let lab = Lab::new(tag).unwrap();
    let dir = TempDir::new(tag).unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    ssh_base_policy(&lab.server).unwrap();
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    // `ssh` lasts 2 s (it expires while sesamed is dead), `long` 14 s.
    let opens = if backend == "command" { Opens::IptablesCommands } else { Opens::Native("22/tcp") };
    let doors =
        door("ssh", &["7000", "8000", "9000"], 2, &opens) + &door("long", &["7100", "7200"], 14, &opens);
    let text = config_with(&lab, &log, "iptables", &doors);
    std::fs::write(&conf, text).unwrap();
    let daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    let count = |door: &str| {
        let rules = ruleset(&lab.server).unwrap();
        let marker =
            if backend == "command" { format!("--comment {door} ") } else { format!("door={door} ") };
        rules.lines().filter(|l| l.contains(&marker)).count()
    };
    knock(&lab.client, server(&lab), &["7000", "8000", "9000"]);
    knock(&lab.client, server(&lab), &["7100", "7200"]);
    let knocked = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || count("ssh") == 1 && count("long") == 1),
        "{}",
        ruleset(&lab.server).unwrap()
    );
    daemon.child.signal("KILL").unwrap();
    drop(daemon);
    // Dead past `ssh`'s time: its rule is still there (nobody removed it).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count("ssh"), 1, "the rule outlived the dead daemon, as it must without a restart");
    // Restart on the same journal.
    let restarted = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || count("ssh") == 0), "{}", ruleset(&lab.server).unwrap());
    let closed_after = started.elapsed();
    eprintln!("{backend}: the expired grant closed {closed_after:?} after the restart's `starting up`");
    assert!(closed_after <= Duration::from_secs(1), "{closed_after:?}");
    // The live one is re-armed, not opened again, and closes at its own time.
    let mut worst = 0;
    let deadline = knocked + Duration::from_secs(25);
    while count("long") > 0 {
        worst = worst.max(count("long"));
        assert!(Instant::now() < deadline, "the long grant never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lasted = knocked.elapsed();
    eprintln!("{backend}: the live grant closed {lasted:?} after the knock (cmd_timeout 14 s)");
    assert!(worst <= 1, "a rule was present twice");
    assert!(lasted >= Duration::from_secs(13) && lasted <= Duration::from_secs(18), "{lasted:?}");
    assert!(restarted.log().contains("long: access open from before the restart"), "{}", restarted.log());
}

#[test]
fn iptables_grants_are_reconciled_after_kill_9() {
    if !require_root("iptables_grants_are_reconciled_after_kill_9") {
        return;
    }
    restart_after_kill("fik", "iptables");
}

#[test]
fn command_grants_are_reconciled_after_kill_9() {
    if !require_root("command_grants_are_reconciled_after_kill_9") {
        return;
    }
    restart_after_kill("fck", "command");
}

#[test]
fn a_hung_command_is_killed_and_does_not_hold_up_another_door() {
    if !require_root("a_hung_command_is_killed_and_does_not_hold_up_another_door") {
        return;
    }
    let lab = Lab::new("fhg").unwrap();
    let dir = TempDir::new("fhg").unwrap();
    let (conf, log, out, pid) = (dir.join("s.toml"), dir.join("s.log"), dir.join("out"), dir.join("pid"));
    std::fs::write(
        &conf,
        format!(
            "[options]\nlog_file = \"{log}\"\ninterface = \"{iface}\"\n[firewall]\ncommand_timeout = 3\n\
             [[door]]\nname = \"hang\"\nsequence = [\"7000\", \"8000\"]\nseq_timeout = 5\n\
             start_command = \"echo $$ > {pid}; exec sleep 3600\"\n\
             [[door]]\nname = \"fine\"\nsequence = [\"7100\", \"7200\"]\nseq_timeout = 5\n\
             start_command = \"echo fine %IP% >> {out}\"\n",
            log = log.display(),
            iface = lab.server_if,
            pid = pid.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    knock(&lab.client, server(&lab), &["7000", "8000"]);
    assert!(
        wait_until(Duration::from_secs(3), || !read(&pid).trim().is_empty()),
        "the hung command never started"
    );
    let t = Instant::now();
    knock(&lab.client, server(&lab), &["7100", "7200"]);
    assert!(wait_until(Duration::from_secs(3), || has_line(&out, &format!("fine {}", lab.client_v4))));
    let other = t.elapsed();
    eprintln!("the other door's command ran {other:?} after its knock while `sleep 3600` hung");
    assert!(other < Duration::from_secs(1), "{other:?}");
    let sleeper: u32 = read(&pid).trim().parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(6), || !Path::new(&format!("/proc/{sleeper}")).exists()),
        "the hung command was not killed"
    );
    assert!(
        wait_until(Duration::from_secs(2), || daemon.log().contains("hang: command killed after 3 seconds")),
        "{}",
        daemon.log()
    );
}

/// sesamed inside `jail` (so its `ufw` is the jail's), writing its stderr to `stderr`.
fn spawn_in_jail(jail: &UfwJail, conf: &Path, state: &Path, stderr: &Path) -> sesame_lab::ChildGuard {
    let prefix = jail.prefix();
    let mut cmd = std::process::Command::new(&prefix[0]);
    cmd.args(&prefix[1..]).arg(SESAMED).arg("-c").arg(conf).arg("--state-dir").arg(state);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(stderr).unwrap());
    sesame_lab::ChildGuard::spawn(&mut cmd).unwrap()
}

#[test]
fn ufw_grants_are_reconciled_after_kill_9() {
    if !require_root("ufw_grants_are_reconciled_after_kill_9") {
        return;
    }
    let lab = Lab::new("fuk").unwrap();
    let dir = TempDir::new("fuk").unwrap();
    let jail = UfwJail::new(&lab.server).unwrap();
    jail.ufw(&["default", "deny", "incoming"]).unwrap();
    jail.ufw(&["--force", "enable"]).unwrap();
    jail.ufw(&["allow", "9/udp"]).unwrap();
    jail.ufw(&["delete", "allow", "9/udp"]).unwrap();
    let (conf, log, state) = (dir.join("s.toml"), dir.join("s.log"), dir.join("state"));
    // Another port: ufw holds one rule per address and port, whatever its comment.
    let long = door("long", &["7100", "7200"], 14, &Opens::Native("2222/tcp"));
    // ufw takes about half a second a call: `ssh` lasts 5 s, long enough to see both
    // grants open before the kill, and expires while sesamed is dead.
    std::fs::write(&conf, config(&lab, &log, "ufw", 5, &long)).unwrap();
    let client = lab.client_v4.to_string();
    let count = |door: &str| {
        let status = jail.ufw(&["status"]).unwrap();
        status.lines().filter(|l| l.contains(&client) && l.contains(&format!("door={door}"))).count()
    };
    let first = spawn_in_jail(&jail, &conf, &state, &dir.join("1.stderr"));
    assert!(wait_until(START, || read(&log).contains("starting up")), "{}", read(&dir.join("1.stderr")));
    knock(&lab.client, server(&lab), &["7000", "8000", "9000"]);
    knock(&lab.client, server(&lab), &["7100", "7200"]);
    let knocked = Instant::now();
    let both = wait_until(Duration::from_secs(8), || count("ssh") == 1 && count("long") == 1);
    assert!(both, "{}\n{}\n{}", jail.ufw(&["status"]).unwrap(), read(&log), read(&dir.join("1.stderr")));
    first.signal("KILL").unwrap();
    drop(first);
    std::thread::sleep((knocked + Duration::from_secs(6)).saturating_duration_since(Instant::now()));
    assert_eq!(count("ssh"), 1, "nobody closed it while sesamed was dead");
    let before = read(&log).matches("starting up").count();
    let _second = spawn_in_jail(&jail, &conf, &state, &dir.join("2.stderr"));
    assert!(wait_until(START, || read(&log).matches("starting up").count() > before));
    let started = Instant::now();
    // ufw takes about half a second per call, and the check itself calls it.
    assert!(wait_until(Duration::from_secs(5), || count("ssh") == 0), "{}", jail.ufw(&["status"]).unwrap());
    let closed_after = started.elapsed();
    eprintln!("ufw: the expired grant was gone {closed_after:?} after the restart's `starting up`");
    let mut worst = 0;
    while count("long") > 0 {
        worst = worst.max(count("long"));
        assert!(knocked.elapsed() < Duration::from_secs(25), "the long grant never closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let lasted = knocked.elapsed();
    eprintln!("ufw: the live grant closed {lasted:?} after the knock (cmd_timeout 14 s)");
    assert!(worst <= 1, "a rule was present twice");
    assert!(lasted >= Duration::from_secs(13) && lasted <= Duration::from_secs(19), "{lasted:?}");
    // Measured from the outside, with ufw's own half-second calls in between.
    assert!(closed_after <= Duration::from_secs(2), "{closed_after:?}");
}

#[test]
fn a_missing_or_inactive_firewall_is_a_start_up_error_naming_door_and_backend() {
    if !require_root("a_missing_or_inactive_firewall_is_a_start_up_error_naming_door_and_backend") {
        return;
    }
    let lab = Lab::new("fms").unwrap();
    let dir = TempDir::new("fms").unwrap();
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    // iptables that cannot be found.
    std::fs::write(&conf, config(&lab, &log, "iptables", 3, "")).unwrap();
    let out = lab
        .server
        .command("/usr/bin/env")
        .arg("PATH=/nonexistent")
        .arg(SESAMED)
        .arg("-c")
        .arg(&conf)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("door ssh: cannot use backend iptables"), "{err}");
    assert!(err.contains("`iptables` not found"), "{err}");
    assert!(!read(&log).contains("starting up"), "nothing may start: {}", read(&log));
    // ufw installed but not enabled (in a jail, so the host's ufw is not asked).
    let jail = UfwJail::new(&lab.server).unwrap();
    std::fs::write(&conf, config(&lab, &log, "ufw", 3, "")).unwrap();
    let stderr = dir.join("ufw.stderr");
    let mut child = spawn_in_jail(&jail, &conf, &dir.join("state2"), &stderr);
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap().expect("sesamed exits");
    let err = read(&stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("door ssh: cannot use backend ufw") && err.contains("inactive"), "{err}");
}
