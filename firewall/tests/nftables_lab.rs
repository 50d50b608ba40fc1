//! Lab tests of the nftables backend against a real `sshd`, in throw-away namespaces
//! whose only firewall is the table the backend installs.
//!
//! Each test builds a [`Lab`] (server and client namespaces joined by a veth, no rule
//! anywhere), starts `sshd` on port 22 in the server, and drives the backend from an
//! *agent*: this test binary started again inside the server namespace
//! (`ip netns exec SERVER <this binary> agent --exact` with `SESAME_NFT_AGENT=1`), so
//! the backend's netlink socket and every `nft` it runs live in that namespace and
//! nowhere else. The agent refuses to run in the host's namespace. It reads one command
//! a line on stdin and answers on stdout with a line starting `@@agent `.
//!
//! What is checked from outside: whether a *new* TCP connection from the client reads
//! the `SSH-2.0` banner, whether an established one still gets answers, `nft list
//! ruleset` in the server namespace, and what the backend reports.
//!
//! Every test panics (fails) without root unless `SESAME_LAB=skip` is set.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sesame_firewall::backend::nftables::NftablesBackend;
use sesame_firewall::backend::{Access, Backend, DoorRule};
use sesame_lab::{require_root, tcp_banner, wait_until, ChildGuard, Lab, Netns, Sshd, TempDir};

const AGENT_ENV: &str = "SESAME_NFT_AGENT";
/// The agent runs `nft` from here when set (a symlink the no-fork test removes).
const AGENT_NFT_ENV: &str = "SESAME_NFT_AGENT_NFT";
/// The namespace the agent must be in (its name under /run/netns), and the inode of
/// the test's own namespace, which it must not be in.
const AGENT_NETNS_ENV: &str = "SESAME_NFT_AGENT_NETNS";
const AGENT_TEST_NS_ENV: &str = "SESAME_NFT_AGENT_TEST_NS";
const MARK: &str = "@@agent ";

/// A door name with everything nft's syntax would choke on.
const SSH_DOOR: &str = "ssh \"door\"; } drop %41 ✓";

/// How long a banner read may take when the connection is expected to get through.
const REACH: Duration = Duration::from_secs(3);
/// How long a banner read waits when the connection is expected to be dropped.
const BLOCKED: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------
// The agent (inside the server namespace)
// ---------------------------------------------------------------------------------

/// Not a test by itself: the backend's side of the lab tests below, which start this
/// binary with `agent --exact` and `SESAME_NFT_AGENT=1` inside their server namespace.
/// Without that variable it returns at once.
#[test]
fn agent() {
    if std::env::var_os(AGENT_ENV).is_none() {
        return;
    }
    // Only ever inside the namespace the test made, never in the test's own.
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).unwrap_or_else(|e| panic!("stat {p}: {e}"));
    let me = ino("/proc/self/ns/net");
    let want = std::env::var(AGENT_NETNS_ENV).expect("the test names the agent's namespace");
    assert_eq!(
        me,
        ino(&format!("/run/netns/{want}")),
        "the agent is not in namespace {want}; refusing to run"
    );
    let test_ns: u64 = std::env::var(AGENT_TEST_NS_ENV).expect("the test's namespace").parse().unwrap();
    assert_ne!(me, test_ns, "the agent runs in the test's network namespace; refusing to touch its firewall");
    let backend = match std::env::var_os(AGENT_NFT_ENV) {
        Some(p) => NftablesBackend::with_nft(PathBuf::from(p)),
        None => NftablesBackend::new(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("read a command");
        let answer = match serve(&backend, &line) {
            Ok(fields) => std::iter::once("ok".to_owned()).chain(fields).collect::<Vec<_>>().join("\t"),
            Err(e) => format!("err\t{}", e.replace(['\n', '\t'], " ")),
        };
        writeln!(out, "{MARK}{answer}").and_then(|()| out.flush()).expect("answer");
    }
}

fn access(door: &str, addr: &str, timeout_ms: &str) -> Result<Access, String> {
    Ok(Access {
        door: door.to_owned(),
        addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        ports: Vec::new(),
        timeout: Duration::from_millis(timeout_ms.parse().map_err(|e| format!("{timeout_ms}: {e}"))?),
    })
}

/// Runs one command (tab-separated fields) and returns the fields of the answer.
fn serve(b: &NftablesBackend, line: &str) -> Result<Vec<String>, String> {
    let f: Vec<&str> = line.split('\t').collect();
    let e = |e: sesame_firewall::backend::BackendError| e.to_string();
    match f.as_slice() {
        ["check"] => b.check().map_err(e).map(|()| vec![]),
        ["prepare", rest @ ..] => {
            let doors = rest
                .chunks(2)
                .map(|c| DoorRule {
                    door: c[0].to_owned(),
                    ports: c[1].split(',').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect(),
                })
                .collect::<Vec<_>>();
            b.prepare(&doors).map_err(e).map(|()| vec![])
        }
        ["open", door, addr, ms] => {
            let a = access(door, addr, ms)?;
            let t = Instant::now();
            b.open(&a).map_err(e)?;
            Ok(vec![t.elapsed().as_micros().to_string()])
        }
        ["close", door, addr] => b.close(&access(door, addr, "0")?).map_err(e).map(|()| vec![]),
        ["present"] => {
            Ok(b.present().map_err(e)?.into_iter().flat_map(|(d, a)| [d, a.to_string()]).collect())
        }
        ["elements"] => Ok(b
            .elements()
            .map_err(e)?
            .into_iter()
            .flat_map(|el| {
                let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
                [el.door, el.addr.to_string(), ms(el.timeout), ms(el.expires)]
            })
            .collect()),
        ["remove"] => b.remove().map_err(e).map(|()| vec![]),
        ["nft_gone"] => {
            // Take `nft` away: the symlink the backend was given, and PATH.
            let link = std::env::var_os(AGENT_NFT_ENV).ok_or("no nft symlink to remove")?;
            std::fs::remove_file(&link).map_err(|e| format!("remove {link:?}: {e}"))?;
            std::env::set_var("PATH", "");
            let by_path = Command::new("nft").arg("--version").output().is_ok();
            let by_link = Command::new(&link).arg("--version").output().is_ok();
            Ok(vec![format!("nft_runnable={}", by_path || by_link)])
        }
        ["bench", door, n] => {
            let n: u32 = n.parse().map_err(|e| format!("{n}: {e}"))?;
            let before = children();
            let mut phases = Vec::new();
            // First every address is new, then every one is opened again (the
            // delete-and-add refresh path).
            for phase in ["new", "refresh"] {
                let mut lat = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let addr = format!("198.19.{}.{}", i / 250, i % 250 + 1);
                    let a = access(door, &addr, "60000")?;
                    let t = Instant::now();
                    b.open(&a).map_err(e)?;
                    lat.push(t.elapsed());
                    if !children().is_empty() {
                        return Err(format!("a child process exists after open #{i}"));
                    }
                }
                lat.sort();
                let us = |d: Duration| d.as_micros().to_string();
                phases.extend([
                    phase.to_owned(),
                    us(lat[lat.len() / 2]),
                    us(lat[lat.len() * 99 / 100]),
                    us(lat[lat.len() - 1]),
                ]);
            }
            let after = children();
            phases.push(format!("children_before={}", before.len()));
            phases.push(format!("children_after={}", after.len()));
            Ok(phases)
        }
        _ => Err(format!("unknown command {line:?}")),
    }
}

/// The pids of this process's children, from every thread's `children` list.
fn children() -> Vec<String> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task").flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(s.split_whitespace().map(str::to_owned));
        }
    }
    pids
}

// ---------------------------------------------------------------------------------
// The test side
// ---------------------------------------------------------------------------------

/// The agent process: killed on drop (and with its namespace in any case).
struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
}

impl Agent {
    fn start(ns: &Netns, nft: Option<&Path>) -> Agent {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = ns.command(&exe);
        cmd.args(["agent", "--exact", "--nocapture", "--test-threads=1"])
            .env(AGENT_ENV, "1")
            .env(AGENT_NETNS_ENV, ns.name())
            .env(
                AGENT_TEST_NS_ENV,
                std::fs::metadata("/proc/self/ns/net").expect("own netns").ino().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        match nft {
            Some(p) => cmd.env(AGENT_NFT_ENV, p),
            None => cmd.env_remove(AGENT_NFT_ENV),
        };
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn agent {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness's `test agent ... ` may stand before the first answer.
                if let Some(at) = line.find(MARK) {
                    if tx.send(line[at + MARK.len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Agent { child, stdin, answers }
    }

    /// Sends one command; `Ok(fields)` or `Err(message)` as the agent answered.
    fn call(&mut self, fields: &[&str]) -> Result<Vec<String>, String> {
        let line = fields.join("\t");
        let stdin = self.stdin.as_mut().expect("agent stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("send to agent");
        let answer = self
            .answers
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no answer from the agent to {line:?}: {e}"));
        let mut parts = answer.split('\t').map(str::to_owned);
        match parts.next().as_deref() {
            Some("ok") => Ok(parts.collect()),
            _ => Err(parts.collect::<Vec<_>>().join(" ")),
        }
    }

    fn ok(&mut self, fields: &[&str]) -> Vec<String> {
        self.call(fields).unwrap_or_else(|e| panic!("agent {fields:?} failed: {e}"))
    }

    fn prepare(&mut self, doors: &[(&str, &str)]) {
        let mut f = vec!["prepare"];
        for (d, p) in doors {
            f.extend([*d, *p]);
        }
        self.ok(&f);
    }

    fn open(&mut self, door: &str, addr: IpAddr, timeout: Duration) {
        self.ok(&["open", door, &addr.to_string(), &timeout.as_millis().to_string()]);
    }

    fn present(&mut self) -> BTreeSet<(String, IpAddr)> {
        let f = self.ok(&["present"]);
        f.chunks(2).map(|c| (c[0].clone(), c[1].parse().expect("address"))).collect()
    }

    /// (door, address, timeout ms, expires ms) of every element.
    fn elements(&mut self) -> Vec<(String, IpAddr, u64, u64)> {
        let f = self.ok(&["elements"]);
        f.chunks(4)
            .map(|c| (c[0].clone(), c[1].parse().unwrap(), c[2].parse().unwrap(), c[3].parse().unwrap()))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // EOF ends the agent; kill it if it does not go.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lab with sshd in the server, nothing else, and the agent.
///
/// Field order is drop order: the agent, sshd, then the namespaces (which kills
/// anything left in them, the table going with the server's), then the scratch dir.
struct Fixture {
    agent: Agent,
    sshd: Sshd,
    lab: Lab,
    dir: TempDir,
}

impl Fixture {
    /// `None` when not root and `SESAME_LAB=skip`.
    fn new(test: &str, tag: &str) -> Option<Fixture> {
        Fixture::with_nft(test, tag, |_| None)
    }

    /// `nft`: what the agent runs as `nft`, given the scratch directory.
    fn with_nft(test: &str, tag: &str, nft: impl FnOnce(&TempDir) -> Option<PathBuf>) -> Option<Fixture> {
        if !require_root(test) {
            return None;
        }
        let dir = TempDir::new("nftlab").expect("scratch directory");
        let lab = Lab::new(tag).expect("lab namespaces");
        assert_eq!(ruleset(&lab.server), "", "a fresh namespace has no rules");
        let sshd = Sshd::start(&lab.server).expect("sshd in the server namespace");
        let agent = Agent::start(&lab.server, nft(&dir).as_deref());
        Some(Fixture { agent, sshd, lab, dir })
    }

    fn client(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.lab.client_v6)
        } else {
            IpAddr::V4(self.lab.client_v4)
        }
    }

    fn server(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.lab.server_v6)
        } else {
            IpAddr::V4(self.lab.server_v4)
        }
    }

    /// Whether a new connection from the client reads the SSH banner.
    fn reachable(&self, v6: bool) -> bool {
        tcp_banner(&self.lab.client, self.server(v6), 22, REACH).starts_with("SSH-2.0")
    }

    /// Whether a new connection from the client gets nothing within [`BLOCKED`].
    fn blocked(&self, v6: bool) -> bool {
        tcp_banner(&self.lab.client, self.server(v6), 22, BLOCKED).is_empty()
    }

    fn ruleset(&self) -> String {
        ruleset(&self.lab.server)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nft list ruleset (server) ---\n{}", self.ruleset());
            eprintln!("--- sshd log ---\n{}", self.sshd.log());
        }
    }
}

fn ruleset(ns: &Netns) -> String {
    ns.sh_ok("nft list ruleset").expect("nft list ruleset")
}

/// An established SSH connection from the client, held by a small Python program: it
/// reads the banner, drains what else comes, waits for the `go` file, then sends its
/// own identification and reports how many bytes sshd answered with (its KEXINIT).
struct Session {
    _child: ChildGuard,
    out: PathBuf,
    go: PathBuf,
}

const SESSION_PY: &str = r#"import os, socket, sys, time
addr, go, out = sys.argv[1], sys.argv[2], sys.argv[3]
def say(s):
    with open(out, "a") as f:
        f.write(s + "\n")
s = socket.create_connection((addr, 22), timeout=5)
say("BANNER " + s.recv(8).decode(errors="replace"))
s.settimeout(0.5)
try:
    while s.recv(65536):
        pass
except socket.timeout:
    pass
say("DRAINED")
deadline = time.time() + 120
while not os.path.exists(go):
    if time.time() > deadline:
        say("NOGO")
        sys.exit(1)
    time.sleep(0.05)
s.settimeout(5)
s.sendall(b"SSH-2.0-sesame_lab\r\n")
try:
    say("AFTER %d" % len(s.recv(65536)))
except socket.timeout:
    say("AFTER timeout")
"#;

impl Session {
    fn start(fx: &Fixture, server: IpAddr, name: &str) -> Session {
        let out = fx.dir.join(&format!("{name}.out"));
        let go = fx.dir.join(&format!("{name}.go"));
        let python = if Path::new("/usr/bin/python3").is_file() { "/usr/bin/python3" } else { "python3" };
        let child = fx
            .lab
            .client
            .spawn(Command::new(python).arg("-c").arg(SESSION_PY).arg(server.to_string()).arg(&go).arg(&out))
            .expect("start the session");
        Session { _child: child, out, go }
    }

    /// The first line of output starting with `prefix`, waiting up to `timeout`.
    fn line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = std::fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(prefix))
                .map(str::to_owned);
            found.is_some()
        });
        found
    }

    fn go(&self) {
        std::fs::write(&self.go, "").expect("touch go");
    }
}

fn door_set(entries: &[(&str, IpAddr)]) -> BTreeSet<(String, IpAddr)> {
    entries.iter().map(|(d, a)| ((*d).to_owned(), *a)).collect()
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

/// (1) sesame's table alone keeps port 22 closed.
#[test]
fn prepare_alone_closes_the_port() {
    let Some(mut fx) = Fixture::new("prepare_alone_closes_the_port", "np") else { return };
    assert!(fx.reachable(false) && fx.reachable(true), "sshd answers while there is no rule at all");
    fx.agent.ok(&["check"]);
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp")]);
    let rules = fx.ruleset();
    println!("after prepare:\n{rules}");
    assert!(rules.contains("table inet sesame {"), "{rules}");
    assert!(rules.contains("type filter hook input priority filter - 10; policy accept;"), "{rules}");
    assert!(rules.contains("tcp dport 22 ct state established,related accept"), "{rules}");
    assert!(rules.contains("tcp dport 22 drop"), "{rules}");
    assert!(rules.contains("comment \"door ssh %22door%22%3B %7D drop %2541 %E2%9C%93\""), "{rules}");
    assert!(fx.blocked(false), "IPv4 SSH is closed by sesame's table alone");
    assert!(fx.blocked(true), "IPv6 SSH is closed by sesame's table alone");
    assert_eq!(fx.agent.present(), BTreeSet::new());
}

/// (2), (3) An opened address gets in; the kernel closes it at its timeout with no call
/// to `close`, while an established session carries on.
fn kernel_expires_the_grant(test: &str, tag: &str, v6: bool) {
    let Some(mut fx) = Fixture::new(test, tag) else { return };
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp")]);
    assert!(fx.blocked(v6), "closed before the grant");
    let client = fx.client(v6);
    let timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    fx.agent.open(SSH_DOOR, client, timeout);
    let opened_in = t0.elapsed();
    // While the grant runs: it is listed, a session gets established, new connections
    // get the banner.
    let present = fx.agent.present();
    let listed_at = t0.elapsed();
    assert_eq!(present, door_set(&[(SSH_DOOR, client)]));
    let session = Session::start(&fx, fx.server(v6), "session");
    let banner = session.line("BANNER", Duration::from_secs(2));
    let session_at = t0.elapsed();
    assert_eq!(banner.as_deref(), Some("BANNER SSH-2.0-"), "a session is established during the grant");
    let banner = tcp_banner(&fx.lab.client, fx.server(v6), 22, REACH);
    let banner_at = t0.elapsed();
    assert!(banner.starts_with("SSH-2.0"), "a new connection reads the banner during the grant: {banner:?}");
    assert!(
        banner_at < timeout,
        "the checks during the grant took {banner_at:?}, longer than the grant; the machine is too slow for this test"
    );
    assert!(session.line("DRAINED", Duration::from_secs(5)).is_some());
    // The kernel removes the element at its time. No close is ever sent.
    let mut gone_at = None;
    wait_until(timeout + Duration::from_secs(7), || {
        let empty = fx.agent.present().is_empty();
        if empty {
            gone_at = Some(t0.elapsed());
        }
        empty
    });
    let gone_at = gone_at.expect("the kernel removed the element within 7 s after its timeout");
    assert!(
        gone_at + Duration::from_millis(20) >= timeout,
        "the element went after {gone_at:?}, before its timeout of {timeout:?}"
    );
    assert!(fx.blocked(v6), "new connections fail again after the timeout");
    assert!(fx.ruleset().contains("tcp dport 22 drop"));
    // The session established during the grant still gets answers.
    session.go();
    let after = session.line("AFTER", Duration::from_secs(10));
    println!(
        "{}: open took {opened_in:?}; listed at {listed_at:?}, session at {session_at:?}, new banner at \
         {banner_at:?}; element gone at {gone_at:?} (timeout {timeout:?}); session after expiry: {after:?}",
        if v6 { "IPv6" } else { "IPv4" }
    );
    let n: usize =
        after.as_deref().and_then(|l| l.strip_prefix("AFTER ")).and_then(|n| n.parse().ok()).unwrap_or_else(
            || panic!("the established session got no answer after the grant expired: {after:?}"),
        );
    assert!(n > 0, "sshd answered the session with {n} bytes");
}

#[test]
fn kernel_expires_ipv4_grant() {
    kernel_expires_the_grant("kernel_expires_ipv4_grant", "n4", false);
}

#[test]
fn kernel_expires_ipv6_grant() {
    kernel_expires_the_grant("kernel_expires_ipv6_grant", "n6", true);
}

/// (4) `close` closes at once; `present` lists exactly what is open.
#[test]
fn close_is_immediate_and_present_is_exact() {
    let Some(mut fx) = Fixture::new("close_is_immediate_and_present_is_exact", "nc") else { return };
    // A name too long for a set comment maps back through what prepare was given.
    let long = format!("long {}", "é".repeat(100));
    fx.agent.prepare(&[
        (SSH_DOOR, "22/tcp"),
        ("web", "80/tcp,443/tcp"),
        ("dns", "53/udp"),
        (&long, "8080/tcp"),
    ]);
    let (c4, c6) = (fx.client(false), fx.client(true));
    let other: IpAddr = "198.18.200.7".parse().unwrap();
    let t = Duration::from_secs(120);
    fx.agent.open(SSH_DOOR, c4, t);
    fx.agent.open(SSH_DOOR, c6, t);
    fx.agent.open("web", other, t);
    fx.agent.open(&long, other, t);
    // Opening again refreshes, it does not add a second element.
    fx.agent.open(SSH_DOOR, c4, t);
    let mapped: IpAddr = format!("::ffff:{}", fx.lab.client_v4).parse().unwrap();
    fx.agent.open(SSH_DOOR, mapped, t);
    assert_eq!(
        fx.agent.present(),
        door_set(&[(SSH_DOOR, c4), (SSH_DOOR, c6), ("web", other), (&long, other)])
    );
    assert!(fx.reachable(false) && fx.reachable(true));

    let t = Instant::now();
    fx.agent.ok(&["close", SSH_DOOR, &c4.to_string()]);
    let closed_in = t.elapsed();
    assert!(fx.blocked(false), "IPv4 is closed right after close");
    assert!(fx.reachable(true), "IPv6 stays open");
    assert_eq!(fx.agent.present(), door_set(&[(SSH_DOOR, c6), ("web", other), (&long, other)]));
    // Closing what is closed, or at a door never opened, succeeds.
    fx.agent.ok(&["close", SSH_DOOR, &c4.to_string()]);
    fx.agent.ok(&["close", "dns", &c6.to_string()]);
    fx.agent.ok(&["close", "no such door", &c6.to_string()]);
    // Opening at a door that was never prepared says so.
    let err = fx.agent.call(&["open", "no such door", &c4.to_string(), "1000"]).unwrap_err();
    println!("close took {closed_in:?}; open at an unprepared door: {err}");
    assert!(err.contains("ENOENT") && err.contains("prepared"), "{err}");
    fx.agent.ok(&["close", SSH_DOOR, &c6.to_string()]);
    assert!(fx.blocked(true));
    fx.agent.ok(&["close", &long, &other.to_string()]);
    assert_eq!(fx.agent.present(), door_set(&[("web", other)]));
}

/// (5) `prepare` again (a restart, a reload) keeps live elements and their running
/// timeouts, drops the sets of doors that are gone, and is idempotent.
#[test]
fn prepare_again_keeps_live_grants() {
    let Some(mut fx) = Fixture::new("prepare_again_keeps_live_grants", "nr") else { return };
    // A table of an older layout: its chain at another priority, a set no door has.
    fx.lab
        .server
        .sh_ok(
            "nft add table inet sesame && \
             nft add chain inet sesame input '{ type filter hook input priority 0; policy drop; }' && \
             nft add set inet sesame d4_stale_000000000000 '{ type ipv4_addr; }' && \
             nft add rule inet sesame input ip saddr @d4_stale_000000000000 accept",
        )
        .expect("an older table");
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp"), ("old", "2222/tcp")]);
    let rules = fx.ruleset();
    assert!(!rules.contains("stale") && !rules.contains("policy drop"), "the older layout is gone: {rules}");
    assert!(rules.contains("priority filter - 10; policy accept;"), "{rules}");
    let client = fx.client(false);
    let timeout = Duration::from_secs(20);
    let t0 = Instant::now();
    fx.agent.open(SSH_DOOR, client, timeout);
    fx.agent.open("old", client, timeout);
    std::thread::sleep(Duration::from_secs(3));
    let slept = t0.elapsed();
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp"), ("new", "80/tcp")]);
    let els = fx.agent.elements();
    println!("after {slept:?} and a second prepare: {els:?}");
    assert_eq!(els.len(), 1, "only the remaining door's element: {els:?}");
    let (door, addr, tmo, expires) = els[0].clone();
    assert_eq!((door.as_str(), addr, tmo), (SSH_DOOR, client, 20_000));
    // A timer started anew would show about 20 s left; this one has run for 3 s.
    assert!(
        expires <= 20_000 - 3_000 + 100,
        "the element's timeout kept running across prepare: {expires} ms left after {slept:?}"
    );
    assert!(expires > 5_000, "{expires} ms left");
    assert!(fx.reachable(false), "the grant still lets the client in");
    let rules = fx.ruleset();
    assert!(
        !rules.contains("door old") && !rules.contains("dport 2222"),
        "the gone door's sets and rules went: {rules}"
    );
    assert!(rules.contains("door new") && rules.contains("tcp dport 80 drop"), "{rules}");
    // Idempotent: the same doors again give the same ruleset (elements aside).
    let terse = || fx.lab.server.sh_ok("nft -t list ruleset").expect("nft -t list ruleset");
    let before = terse();
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp"), ("new", "80/tcp")]);
    assert_eq!(terse(), before);
    assert_eq!(fx.agent.present(), door_set(&[(SSH_DOOR, client)]));
}

/// (6) `remove` leaves the ruleset exactly as it was (empty).
#[test]
fn remove_restores_the_ruleset() {
    let Some(mut fx) = Fixture::new("remove_restores_the_ruleset", "nx") else { return };
    let before = fx.ruleset();
    assert_eq!(before, "");
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp"), ("dns", "53/udp")]);
    fx.agent.open(SSH_DOOR, fx.client(false), Duration::from_secs(60));
    assert_ne!(fx.ruleset(), before);
    fx.agent.ok(&["remove"]);
    assert_eq!(fx.ruleset(), before, "remove leaves nothing behind");
    fx.agent.ok(&["remove"]);
    assert_eq!(fx.agent.present(), BTreeSet::new(), "no table: nothing present");
    assert!(fx.reachable(false), "with the table gone nothing closes the port");
    // And the closing port comes back with the next prepare.
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp")]);
    assert!(fx.blocked(false));
}

/// (7) No process is started per grant: after `prepare`, `nft` is taken away (the
/// symlink the backend runs, and PATH) and hundreds of opens still work, with no child
/// process at any point. Also measures the latency of `open`.
#[test]
fn opens_fork_nothing_and_are_fast() {
    let nft = sesame_lab::which("nft").expect("nft is installed");
    let Some(mut fx) = Fixture::with_nft("opens_fork_nothing_and_are_fast", "nf", |dir| {
        let link = dir.join("nft");
        std::os::unix::fs::symlink(&nft, &link).expect("symlink nft");
        Some(link)
    }) else {
        return;
    };
    fx.agent.prepare(&[(SSH_DOOR, "22/tcp")]);
    let gone = fx.agent.ok(&["nft_gone"]);
    assert_eq!(gone, vec!["nft_runnable=false"], "the agent can no longer run nft");
    let err = fx.agent.call(&["check"]).unwrap_err();
    assert!(err.contains("nftables backend") && err.contains("nft"), "check names what is missing: {err}");
    let n = 300;
    let r = fx.agent.ok(&["bench", SSH_DOOR, &n.to_string()]);
    // new p50 p99 max refresh p50 p99 max children_before children_after
    assert_eq!(r.len(), 10, "{r:?}");
    println!(
        "{n} opens with nft unreachable: new address p50 {} µs, p99 {} µs, max {} µs; \
         refresh p50 {} µs, p99 {} µs, max {} µs; {}, {}",
        r[1], r[2], r[3], r[5], r[6], r[7], r[8], r[9]
    );
    assert_eq!((r[8].as_str(), r[9].as_str()), ("children_before=0", "children_after=0"));
    assert_eq!(fx.agent.present().len(), n, "every open is in the kernel");
    let p99: [u64; 2] = [r[2].parse().unwrap(), r[6].parse().unwrap()];
    // The target is well under 2 ms; this bound only catches a gross regression on a
    // loaded machine.
    assert!(p99.iter().all(|&us| us < 10_000), "p99 {p99:?} µs");
    // And the grant still works for a real client.
    fx.agent.open(SSH_DOOR, fx.client(false), Duration::from_secs(60));
    assert!(fx.reachable(false));
}
