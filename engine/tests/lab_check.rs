//! `sesame check` against the real world, in lab namespaces (root needed):
//!
//! - a real `nmap -r -sS` scan from the client opens the seed articles' door (sequence
//!   7000,8000,9000, iptables -I start command) on sesamed in the server namespace, and
//!   `sesame check` warns about exactly that weakness: a monotonic sequence;
//! - `sesame check --firewall` run inside a namespace reads the namespace's real
//!   iptables and nftables rulesets: the seed's base policy with an `-A` start command
//!   warns and with `-I` does not; no DROP for the port warns "protects nothing"; no
//!   established-accept warns about the lockout.

mod common;

use common::*;
use sesame_lab::{require_root, ssh_base_policy, wait_until, which, Lab, Netns, TempDir};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What `sesame check ARGS CONF` run in `ns` said: exit status and the warning lines.
fn check_in(ns: &Netns, conf: &Path, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let out = ns
        .command(SESAME)
        .arg("check")
        .args(args)
        .arg(conf)
        .stdin(Stdio::null())
        .output()
        .expect("run sesame check");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let warnings: Vec<String> =
        err.lines().filter(|l| l.starts_with("warning: ")).map(str::to_owned).collect();
    // Anything else on stderr is an error (e.g. a ruleset that could not be read).
    let other: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning: ")).collect();
    if out.status.code() == Some(0) || args.contains(&"--strict") {
        assert!(
            other.iter().all(|l| l.contains("--strict")),
            "sesame check {args:?} printed more than warnings: {err}"
        );
    }
    (out.status.code(), warnings)
}

/// The lines of `warnings` that are about `what` (a phrase of one warning kind).
fn about<'a>(warnings: &'a [String], what: &str) -> Vec<&'a String> {
    warnings.iter().filter(|w| w.contains(what)).collect()
}

#[test]
fn nmap_sequential_scan_opens_the_seed_door_and_check_warns_monotonic() {
    if !require_root("nmap_sequential_scan_opens_the_seed_door_and_check_warns_monotonic") {
        return;
    }
    let nmap =
        which("nmap").expect("this test needs nmap: apt-get install -y nmap (scripts/quickstart test does)");
    let lab = Lab::new("ckn").unwrap();
    let dir = TempDir::new("ckn").unwrap();
    ssh_base_policy(&lab.server).unwrap();
    let (conf, log) = (dir.join("knockd.conf"), dir.join("knockd.log"));
    // The seed articles' door, with -I (so a grant really opens) and a stop command.
    // seq_timeout 20: a 2,021-port scan on a loaded 2-core machine must fit in it.
    let rule = "INPUT -s %IP% -p tcp --dport 22 -j ACCEPT";
    let text = format!(
        "[options]\n\tLogFile = {}\n\n[openSSH]\n\tsequence    = 7000,8000,9000\n\tseq_timeout = 20\n\
         \ttcpflags    = syn\n\tstart_command = /usr/sbin/iptables -I {rule}\n\tcmd_timeout = 60\n\
         \tstop_command = /usr/sbin/iptables -D {rule}\n",
        log.display()
    );
    std::fs::write(&conf, text).unwrap();
    let accept = format!("-A INPUT -s {}/32 -p tcp -m tcp --dport 22 -j ACCEPT", lab.client_v4);
    let save = || lab.server.sh_ok("iptables-save").unwrap();
    assert!(!save().contains(&accept), "no grant before the scan:\n{}", save());

    // check: exactly the weaknesses of this sequence, the monotonic one among them.
    let (code, warnings) = check_in(&lab.server, &conf, &[]);
    assert_eq!(code, Some(0), "{warnings:?}");
    let prefix = format!("warning: {}:5: door 'openSSH': ", conf.display());
    assert!(warnings.iter().all(|w| w.starts_with(&prefix)), "{warnings:?}");
    let monotonic = about(&warnings, "is in rising port order");
    assert_eq!(monotonic.len(), 1, "{warnings:?}");
    assert!(monotonic[0].contains("nmap -r"), "{warnings:?}");
    assert_eq!(about(&warnings, "is an example from knockd's documentation").len(), 1, "{warnings:?}");
    assert_eq!(warnings.len(), 2, "nothing else is wrong with this door: {warnings:?}");

    // The scan: nmap in port order over the sequence's range, from the client.
    let daemon = Daemon::start(&lab.server, &["-i", &lab.server_if], &conf, &log, &lab.server_if);
    let started = Instant::now();
    let out = lab
        .client
        .command("timeout")
        .arg("120")
        .arg(&nmap)
        .args(["-n", "-Pn", "-r", "-sS", "-p", "6990-9010", &lab.server_v4.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let scan = started.elapsed();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "nmap failed: {report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("2021 closed"), "nmap saw every port closed: {report}");
    eprintln!("nmap -r -sS -p 6990-9010 took {scan:?}");
    let opened = wait_until(Duration::from_secs(10), || save().contains(&accept));
    assert!(opened, "the scan did not open the door: no {accept:?} in\n{}\n{}", save(), daemon.diagnostics());
    assert!(daemon.has_message(&format!("{}: openSSH: OPEN SESAME", lab.client_v4)), "{}", daemon.log());
}

/// A door with nothing wrong in itself, opening 22/tcp with `start` (closing with
/// `stop`), as a knockd.conf in `dir`.
fn door_conf(dir: &TempDir, name: &str, start: &str, stop: &str) -> std::path::PathBuf {
    let conf = dir.join(name);
    let text = format!(
        "[ssh]\nsequence = 31337,6111,40001\nseq_timeout = 10\ntcpflags = syn\nstart_command = {start}\n\
         cmd_timeout = 30\nstop_command = {stop}\n"
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

const IPT_RULE: &str = "INPUT -s %IP% -p tcp --dport 22 -j ACCEPT";

/// Empties every table of the namespace (iptables-nft's included).
fn flush(ns: &Netns) {
    ns.sh_ok("nft flush ruleset").unwrap();
}

#[test]
fn check_firewall_reads_the_real_iptables_ruleset() {
    if !require_root("check_firewall_reads_the_real_iptables_ruleset") {
        return;
    }
    let lab = Lab::new("cki").unwrap();
    let dir = TempDir::new("cki").unwrap();
    let ns = &lab.server;
    let append = door_conf(
        &dir,
        "append.conf",
        &format!("/usr/sbin/iptables -A {IPT_RULE}"),
        &format!("/usr/sbin/iptables -D {IPT_RULE}"),
    );
    let insert = door_conf(
        &dir,
        "insert.conf",
        &format!("/usr/sbin/iptables -I {IPT_RULE}"),
        &format!("/usr/sbin/iptables -D {IPT_RULE}"),
    );

    // The seed's base policy (established accepted, 22 dropped; IPv4 and IPv6).
    ssh_base_policy(ns).unwrap();
    let (code, w) = check_in(ns, &append, &["--firewall"]);
    assert_eq!(code, Some(0), "{w:?}");
    let after = about(&w, "adds its ACCEPT for 22/tcp at the end of chain INPUT of iptables' filter table");
    assert_eq!(after.len(), 1, "{w:?}");
    assert!(after[0].contains("-A INPUT -p tcp -m tcp --dport 22 -j DROP"), "names the DROP: {w:?}");
    assert!(after[0].starts_with(&format!("warning: {}:5: door 'ssh': ", append.display())), "{w:?}");
    assert_eq!(about(&w, "appends its ACCEPT rule").len(), 1, "and the static -A warning: {w:?}");
    assert_eq!(w.len(), 2, "{w:?}");
    let (code, w) = check_in(ns, &insert, &["--firewall", "--strict"]);
    assert_eq!((code, w.len()), (Some(0), 0), "-I over the base policy is right: {w:?}");

    // No DROP for 22 at all: the door protects nothing (over both families).
    flush(ns);
    for tool in ["iptables", "ip6tables"] {
        ns.sh_ok(&format!("{tool} -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")).unwrap();
    }
    let (code, w) = check_in(ns, &insert, &["--firewall", "--strict"]);
    assert_eq!(code, Some(1), "{w:?}");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("port 22/tcp is open to new connections from any address over IPv4 and IPv6"),
        "{w:?}"
    );
    assert!(w[0].contains("protects nothing"), "{w:?}");

    // A DROP but no established-accept: closing the grant cuts the session.
    flush(ns);
    for tool in ["iptables", "ip6tables"] {
        ns.sh_ok(&format!("{tool} -A INPUT -p tcp --dport 22 -j DROP")).unwrap();
    }
    let (_, w) = check_in(ns, &insert, &["--firewall"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("established connections to port 22/tcp are dropped over IPv4 and IPv6"), "{w:?}");
    assert!(w[0].contains("locked out"), "{w:?}");
}

/// An nft ruleset: `table inet filter` with an input chain made of `rules`.
fn nft_table(ns: &Netns, rules: &str) {
    flush(ns);
    let script = format!(
        "table inet filter {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n{rules}\n }}\n}}\n"
    );
    ns.sh_ok(&format!("nft -f - <<'EOF'\n{script}EOF\n")).unwrap();
}

#[test]
fn check_firewall_reads_the_real_nftables_ruleset() {
    if !require_root("check_firewall_reads_the_real_nftables_ruleset") {
        return;
    }
    let lab = Lab::new("ckf").unwrap();
    let dir = TempDir::new("ckf").unwrap();
    let ns = &lab.server;
    let rule = "inet filter input ip saddr %IP% tcp dport 22 accept";
    let add = door_conf(&dir, "add.conf", &format!("/usr/sbin/nft add rule {rule}"), "/usr/bin/true");
    let insert =
        door_conf(&dir, "insert.conf", &format!("/usr/sbin/nft insert rule {rule}"), "/usr/bin/true");
    let established = "  ct state established,related accept";
    let drop22 = "  tcp dport 22 drop";

    nft_table(ns, &format!("{established}\n{drop22}"));
    let (code, w) = check_in(ns, &add, &["--firewall"]);
    assert_eq!(code, Some(0), "{w:?}");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("adds its ACCEPT for 22/tcp at the end of chain input of nft table inet filter"),
        "{w:?}"
    );
    assert!(w[0].contains("tcp dport 22 drop"), "names the drop: {w:?}");
    let (code, w) = check_in(ns, &insert, &["--firewall", "--strict"]);
    assert_eq!((code, w.len()), (Some(0), 0), "{w:?}");

    nft_table(ns, established);
    let (_, w) = check_in(ns, &insert, &["--firewall"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("open to new connections from any address over IPv4 and IPv6"), "{w:?}");
    assert!(w[0].contains("protects nothing"), "{w:?}");

    nft_table(ns, drop22);
    let (_, w) = check_in(ns, &insert, &["--firewall"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("established connections to port 22/tcp are dropped over IPv4 and IPv6"), "{w:?}");
}
