//! Single-packet authorization end to end, interop both ways, in lab namespaces: the
//! real fwknop 2.6 client opens SSH through sesamed (banner read), `sesame knock
//! --spa` opens a real fwknopd; and what must be refused is, logged with its reason,
//! with nothing opened: a replay (also after a restart), a flipped bit, a packet older
//! than the window, a port the door does not open, another address.

mod common;

use common::*;
use sesame_lab::{
    require_root, ssh_reachable, tcp_banner, wait_until, ChildGuard, Lab, Netns, Sshd, TempDir,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// sesamed's metrics endpoint inside the server namespace.
const METRICS: &str = "127.0.0.1:9106";

fn scrape(ns: &Netns) -> String {
    let url = format!("http://{METRICS}/metrics");
    let out = ns.command("curl").args(["-sf", "--max-time", "5", &url]).stdin(Stdio::null()).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// How long a blocked connection attempt waits before it counts as blocked.
const BLOCKED: Duration = Duration::from_millis(1500);

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether fwknop (and fwknopd) are installed; the test is skipped (loudly) if not.
fn require_fwknop(test: &str, server: bool) -> bool {
    let ok = have("fwknop") && (!server || have("fwknopd"));
    if !ok {
        eprintln!(
            "SKIPPED {test}: fwknop-client/fwknop-server not installed (scripts/quickstart installs them)"
        );
    }
    ok
}

/// Fresh keys from `fwknop --key-gen` in `dir` (mode 600): (file, KEY_BASE64, HMAC_KEY_BASE64).
fn keygen(dir: &TempDir) -> (PathBuf, String, String) {
    let file = dir.join("spa.keys");
    let out = Command::new("fwknop")
        .args(["--key-gen", "--no-rc-file", "-K"])
        .arg(&file)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("fwknop --key-gen");
    assert!(out.status.success(), "fwknop --key-gen: {}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    (file.clone(), value("KEY_BASE64:"), value("HMAC_KEY_BASE64:"))
}

/// Runs the real fwknop client in `ns` (HOME = `dir`) with `extra` arguments; the
/// packet is also saved to `save`.
fn fwknop(ns: &Netns, dir: &TempDir, keys: &(PathBuf, String, String), extra: &[&str], save: &Path) {
    let mut cmd = ns.command("timeout");
    cmd.args(["20", "fwknop"])
        .args(extra)
        .args(["--key-base64-rijndael", &keys.1, "--key-base64-hmac", &keys.2])
        .args(["--no-rc-file", "--no-save-args", "-B"])
        .arg(save)
        .env("HOME", dir.path())
        .stdin(Stdio::null());
    let out = cmd.output().expect("run fwknop");
    assert!(out.status.success(), "fwknop {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sends the text of `packet` (one datagram) from `ns` to `dst`:62201.
fn send_raw(ns: &Netns, dst: IpAddr, packet: &str) {
    let script = format!("exec 3>/dev/udp/{dst}/62201 && printf %s '{packet}' >&3");
    let out = ns.command("bash").arg("-c").arg(script).stdin(Stdio::null()).output().expect("bash");
    assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
}

fn saved(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

fn config(lab: &Lab, log: &Path, keys: &Path, secs: u32) -> String {
    format!(
        "[options]\nlog_file = \"{}\"\ninterface = \"{}\"\n\n[firewall]\nbackend = \"nftables\"\n\n\
         [[door]]\nname = \"spa\"\nspa_keys = \"{}\"\nopen = [\"22/tcp\"]\ncmd_timeout = {secs}\n",
        log.display(),
        lab.server_if,
        keys.display()
    )
}

/// Runs `send`, then waits for one more log line `CLIENT: spa: SPA refused: REASON`
/// (`CLIENT: SPA refused: hmac` for a packet that fits no door's key)
/// and checks that SSH stays closed.
fn refused(lab: &Lab, daemon: &Daemon, reason: &str, send: impl FnOnce()) {
    // A packet no door's HMAC key fits is no door's.
    let door = if reason == "hmac" { "" } else { "spa: " };
    let line = format!("{}: {door}SPA refused: {reason}", lab.client_v4);
    let n = daemon.count_messages(&line) + 1;
    send();
    let seen = wait_until(Duration::from_secs(5), || daemon.count_messages(&line) >= n);
    assert!(seen, "no {line:?} (#{n}) in the log");
    assert!(
        !ssh_reachable(&lab.client, IpAddr::V4(lab.server_v4), BLOCKED),
        "SSH must stay closed after a refused packet ({reason})"
    );
}

fn wait_closed(lab: &Lab, within: Duration) {
    let ok = wait_until(within, || !ssh_reachable(&lab.client, IpAddr::V4(lab.server_v4), BLOCKED));
    assert!(ok, "SSH still open {within:?} later");
}

#[test]
fn fwknop_client_opens_ssh_through_sesamed_and_refusals_open_nothing() {
    let test = "fwknop_client_opens_ssh_through_sesamed_and_refusals_open_nothing";
    if !require_root(test) || !require_fwknop(test, false) {
        return;
    }
    let lab = Lab::new("spa").unwrap();
    let dir = TempDir::new("spa").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let server = IpAddr::V4(lab.server_v4);
    let client = lab.client_v4.to_string();
    let srv = lab.server_v4.to_string();
    let keys = keygen(&dir);
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));

    // A group-readable key file: sesamed refuses to start.
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = dir.join("loose.keys");
        std::fs::copy(&keys.0, &loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&conf, config(&lab, &log, &loose, 3)).unwrap();
        let mut d = Daemon::spawn(&lab.server, &[], &conf, &dir.join("loose.log"));
        let status = d.child.wait_timeout(START).unwrap().expect("sesamed must exit");
        assert_eq!(status.code(), Some(2), "{}", d.diagnostics());
        assert!(read(&d.stderr).contains("readable by group or others"), "{}", d.diagnostics());
        assert!(!read(&d.stderr).contains(&keys.1) && !read(&d.stderr).contains(&keys.2));
    }

    std::fs::write(&conf, config(&lab, &log, &keys.0, 3)).unwrap();
    let mut daemon = Daemon::start(&lab.server, &["--metrics-listen", METRICS], &conf, &log, &lab.server_if);
    assert!(!ssh_reachable(&lab.client, server, BLOCKED), "22 must be closed before SPA");

    // Refusals first, while nothing is open.
    let old = dir.join("old.spa");
    refused(&lab, &daemon, "stale", || {
        fwknop(
            &lab.client,
            &dir,
            &keys,
            &["-A", "tcp/22", "-a", &client, "-D", &srv, "--time-offset-minus", "300s"],
            &old,
        )
    });
    let port = dir.join("port.spa");
    refused(&lab, &daemon, "port", || {
        fwknop(&lab.client, &dir, &keys, &["-A", "tcp/2222", "-a", &client, "-D", &srv], &port)
    });
    let other = dir.join("other.spa");
    refused(&lab, &daemon, "address", || {
        fwknop(&lab.client, &dir, &keys, &["-A", "tcp/22", "-a", "198.18.99.99", "-D", &srv], &other)
    });

    // A legitimate packet, made but not sent: one bit flipped first.
    let good = dir.join("good.spa");
    fwknop(&lab.client, &dir, &keys, &["-A", "tcp/22", "-a", &client, "-D", &srv, "-T"], &good);
    let packet = saved(&good);
    let mut flipped = packet.clone().into_bytes();
    // One bit, in the middle of the packet, where the result is still base64 (B <-> C, 0 <-> 1, ...).
    let mid = flipped.len() / 2;
    let i = (mid..flipped.len())
        .find(|&i| (flipped[i] ^ 1).is_ascii_alphanumeric())
        .expect("a character whose last bit can flip within the alphabet");
    flipped[i] ^= 1;
    assert_eq!(flipped.iter().zip(packet.as_bytes()).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>(), 1);
    let flipped = String::from_utf8(flipped).unwrap();
    refused(&lab, &daemon, "hmac", || send_raw(&lab.client, server, &flipped));

    // Each refusal counted by its reason (the counters are published once per wake).
    let counted = wait_until(Duration::from_secs(5), || {
        let text = scrape(&lab.server);
        ["stale", "port", "address", "hmac"]
            .iter()
            .all(|r| text.lines().any(|l| l == format!("sesame_spa_refused_total{{reason=\"{r}\"}} 1")))
    });
    assert!(counted, "{}", scrape(&lab.server));

    // The real client opens SSH.
    send_raw(&lab.client, server, &packet);
    let banner = tcp_banner(&lab.client, server, 22, Duration::from_secs(5));
    assert!(banner.starts_with("SSH-2.0-"), "no SSH banner after SPA: {banner:?}");
    assert!(daemon.has_message(&format!("{client}: spa: OPEN SESAME")), "{}", daemon.log());
    // And fwknop sending by itself (not -T) works too.
    let sent = dir.join("sent.spa");
    fwknop(&lab.client, &dir, &keys, &["-A", "tcp/22", "-a", &client, "-D", &srv], &sent);
    let accepted = format!("{client}: spa: SPA accepted (user ");
    let for_client = format!(", for {client}: 22/tcp)");
    let count =
        || daemon.messages().iter().filter(|m| m.starts_with(&accepted) && m.ends_with(&for_client)).count();
    assert!(wait_until(Duration::from_secs(5), || count() >= 2), "{}", daemon.log());
    wait_closed(&lab, Duration::from_secs(10));

    // Replayed: refused, and nothing opens.
    refused(&lab, &daemon, "replay", || send_raw(&lab.client, server, &packet));
    // Also after a restart (the replay cache is in the state directory).
    assert_eq!(daemon.stop().code(), Some(0));
    drop(daemon);
    // Same log path (so the same state directory), the first run's lines moved away
    // so that `starting up` is the new process's.
    std::fs::rename(&log, dir.join("s.log.1")).unwrap();
    let daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    refused(&lab, &daemon, "replay", || send_raw(&lab.client, server, &packet));
    refused(&lab, &daemon, "replay", || send_raw(&lab.client, server, &saved(&sent)));
    // Keys never reach the log.
    let text = daemon.log();
    assert!(!text.contains(&keys.1) && !text.contains(&keys.2));
}

/// fwknopd's configuration in `dir`: an empty fwknopd.conf and one access.conf stanza.
fn fwknopd_config(dir: &TempDir, keys: &(PathBuf, String, String)) -> (PathBuf, PathBuf) {
    let conf = dir.join("fwknopd.conf");
    let access = dir.join("access.conf");
    std::fs::write(&conf, "# sesame lab\n").unwrap();
    std::fs::write(
        &access,
        format!("SOURCE ANY\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\nFW_ACCESS_TIMEOUT 30\n", keys.1, keys.2),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in [&conf, &access] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (conf, access)
}

#[test]
fn sesame_knock_spa_opens_a_real_fwknopd() {
    let test = "sesame_knock_spa_opens_a_real_fwknopd";
    if !require_root(test) || !require_fwknop(test, true) {
        return;
    }
    let lab = Lab::new("fwk").unwrap();
    let dir = TempDir::new("fwk").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let server = IpAddr::V4(lab.server_v4);
    let keys = keygen(&dir);
    let (conf, access) = fwknopd_config(&dir, &keys);
    // 22 closed by a plain iptables rule; fwknopd inserts its own chain before it.
    lab.server.sh_ok("iptables -A INPUT -p tcp --dport 22 -j DROP").unwrap();
    assert!(!ssh_reachable(&lab.client, server, BLOCKED));
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let out = std::fs::File::create(dir.join("fwknopd.out")).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = lab.server.command("fwknopd");
    cmd.arg("-f")
        .args(["-i", &lab.server_if])
        .arg("-c")
        .arg(&conf)
        .arg("-a")
        .arg(&access)
        .arg("-d")
        .arg(dir.join("digest.cache"))
        .arg("-p")
        .arg(dir.join("fwknopd.pid"))
        .arg("-r")
        .arg(&run)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let _fwknopd = ChildGuard::spawn(&mut cmd).expect("spawn fwknopd");
    let started = wait_until(Duration::from_secs(10), || {
        read(&dir.join("fwknopd.out")).contains("Starting fwknopd")
            || lab.server.sh_ok("iptables -S FWKNOP_INPUT").is_ok()
    });
    assert!(started, "fwknopd did not start: {}", read(&dir.join("fwknopd.out")));
    // fwknopd sniffs with pcap: give it a moment after start-up, then knock (again if needed).
    let client = lab.client_v4.to_string();
    let opened = wait_until(Duration::from_secs(15), || {
        let out = lab
            .client
            .command(SESAME)
            .args(["knock", "--spa", "--keys"])
            .arg(&keys.0)
            .args(["-A", "tcp/22", "-a", &client, &lab.server_v4.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "sesame knock --spa: {}", String::from_utf8_lossy(&out.stderr));
        wait_until(Duration::from_secs(2), || {
            lab.server
                .sh_ok("iptables -S FWKNOP_INPUT")
                .is_ok_and(|r| r.contains(&client) && r.contains("22"))
        })
    });
    assert!(
        opened,
        "fwknopd added no rule: {}\n{}",
        read(&dir.join("fwknopd.out")),
        lab.server.sh_ok("iptables -S").unwrap_or_default()
    );
    let banner = tcp_banner(&lab.client, server, 22, Duration::from_secs(5));
    assert!(banner.starts_with("SSH-2.0-"), "no SSH banner after fwknopd opened: {banner:?}");
}

#[test]
fn sesame_knock_spa_over_ipv6_opens_ssh_through_sesamed() {
    let test = "sesame_knock_spa_over_ipv6_opens_ssh_through_sesamed";
    if !require_root(test) || !require_fwknop(test, false) {
        return;
    }
    let lab = Lab::new("sp6").unwrap();
    let dir = TempDir::new("sp6").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let server = IpAddr::V6(lab.server_v6);
    let keys = keygen(&dir);
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, &keys.0, 30)).unwrap();
    let daemon = Daemon::start(&lab.server, &[], &conf, &log, &lab.server_if);
    assert!(!ssh_reachable(&lab.client, server, BLOCKED), "22 must be closed over IPv6 before SPA");
    let client = lab.client_v6.to_string();
    let out = lab
        .client
        .command(SESAME)
        .args(["knock", "--spa", "-6", "--keys"])
        .arg(&keys.0)
        .args(["-A", "tcp/22", "-a", &client, &lab.server_v6.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "sesame knock --spa -6: {}", String::from_utf8_lossy(&out.stderr));
    let banner = tcp_banner(&lab.client, server, 22, Duration::from_secs(5));
    assert!(banner.starts_with("SSH-2.0-"), "no SSH banner over IPv6 after SPA: {banner:?}");
    assert!(
        wait_until(Duration::from_secs(5), || daemon.has_message(&format!("{client}: spa: OPEN SESAME"))),
        "{}",
        daemon.log()
    );
}

/// sesamed's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_random_spa_packets_costs_no_memory_and_a_real_packet_still_opens() {
    let test = "a_flood_of_random_spa_packets_costs_no_memory_and_a_real_packet_still_opens";
    if !require_root(test) || !require_fwknop(test, false) || !have("python3") {
        return;
    }
    let lab = Lab::new("spf").unwrap();
    let dir = TempDir::new("spf").unwrap();
    let _sshd = Sshd::start(&lab.server).unwrap();
    let server = IpAddr::V4(lab.server_v4);
    let keys = keygen(&dir);
    let (conf, log) = (dir.join("s.toml"), dir.join("s.log"));
    std::fs::write(&conf, config(&lab, &log, &keys.0, 30)).unwrap();
    let daemon = Daemon::start(&lab.server, &["--metrics-listen", METRICS], &conf, &log, &lab.server_if);
    // Random base64 text of fwknop's usual length: it passes the length and alphabet
    // checks, so every packet costs the HMAC.
    let flood = format!(
        "import os,socket,time,base64\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         pk=[base64.b64encode(os.urandom(160)).rstrip(b'=')[:205] for _ in range(4096)]\n\
         end=time.time()+float(os.environ['SECS'])\nn=0\n\
         while time.time()<end:\n\
         \x20for p in pk[:512]:\n\
         \x20\x20s.sendto(p,('{}',62201)); n+=1\n\
         \x20pk=pk[512:]+pk[:512]\n\
         print(n)\n",
        lab.server_v4
    );
    let run = |secs: &str| {
        let out = lab
            .client
            .command("python3")
            .arg("-c")
            .arg(&flood)
            .env("SECS", secs)
            .stdin(Stdio::null())
            .output();
        let out = out.unwrap();
        assert!(out.status.success(), "flood: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0)
    };
    // A first flood touches every page of the rings (mapped memory that counts in RSS
    // once touched); the second one is measured.
    run("3");
    let before = rss_kib(daemon.pid());
    let sent = run("4");
    // While the flood's tail is still being taken, a real packet opens.
    let real = dir.join("real.spa");
    let client = lab.client_v4.to_string();
    fwknop(
        &lab.client,
        &dir,
        &keys,
        &["-A", "tcp/22", "-a", &client, "-D", &lab.server_v4.to_string()],
        &real,
    );
    let banner = tcp_banner(&lab.client, server, 22, Duration::from_secs(5));
    assert!(banner.starts_with("SSH-2.0-"), "no SSH banner after the flood: {banner:?}");
    let after = rss_kib(daemon.pid());
    let refused = wait_until(Duration::from_secs(5), || {
        scrape(&lab.server)
            .lines()
            .find_map(|l| l.strip_prefix("sesame_spa_refused_total{reason=\"hmac\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0)
    });
    let text = scrape(&lab.server);
    let hmac =
        text.lines().find(|l| l.starts_with("sesame_spa_refused_total{reason=\"hmac\"}")).unwrap_or("");
    eprintln!(
        "flood: {sent} random SPA packets sent in 4 s; {hmac}; sesamed RSS {before} KiB -> {after} KiB"
    );
    assert!(refused, "{text}");
    // The ring drops what the workers cannot take; whatever they took cost no memory.
    assert!(after <= before + 2048, "sesamed grew from {before} KiB to {after} KiB under the flood");
    // Refusals are logged under the rate limit, not once per packet.
    let lines = daemon.messages().iter().filter(|m| m.ends_with("SPA refused: hmac")).count() as u64;
    assert!(lines < sent / 2 || sent < 1000, "{lines} refusal lines for {sent} packets");
}
