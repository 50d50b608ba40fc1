//! The harness of the lab tests (ring_lab.rs, tx_lab.rs, fanout_lab.rs, link_lab.rs),
//! which need packet sockets inside a throw-away lab (needs root).
//!
//! A packet socket belongs to the network namespace it was created in: each test
//! re-runs itself (this test binary, `--exact` that test) inside the lab's server
//! namespace with `ip netns exec`, and that copy, the server run, may run the test a
//! third time inside the client namespace ([`Env::start_client`]), for a packet socket
//! there too. The roles come from the environment. The outer copy owns the lab
//! (dropped, with both namespaces, whatever happens), bounds the server run in time and
//! prints its output. A client run prints its results as `@@ key=value ...` lines for
//! the server run ([`Client::finish`]).
//!
//! A test that needs no second namespace runs alone in a fresh one instead
//! ([`LabTests::run_alone`]); the outer copy may work in that namespace meanwhile
//! (create devices, inject traffic), and the two meet through signal files ([`Outer`],
//! [`Alone`]).

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[cfg(feature = "tx")]
use sesame_capture::craft::FrameSpec;
#[cfg(feature = "tx")]
use sesame_capture::Proto;
use sesame_lab::{ChildGuard, Lab, Netns, TempDir};

const ROLE: &str = "SESAME_CAPTURE_LAB_ROLE";
/// How long a client run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

/// The lab tests of one test binary.
pub struct LabTests {
    /// Names the labs' namespaces and scratch directories.
    pub tag: &'static str,
    /// How long a server run may take before it is killed and the test fails.
    pub server_timeout: Duration,
}

impl LabTests {
    /// Runs lab test `test`: `server` in the server namespace of a fresh lab, which may
    /// start `client` in the client namespace with [`Env::start_client`] (see the
    /// module doc).
    pub fn run(&self, test: &str, server: fn(&Env), client: Option<fn(&Env)>) {
        match std::env::var(ROLE).as_deref() {
            Ok("server") => return server(&Env::from_env()),
            Ok("client") => return client.expect("a test with a client run")(&Env::from_env()),
            _ => {}
        }
        if !sesame_lab::require_root(test) {
            return;
        }
        let lab = Lab::new(self.tag).expect("build lab");
        let dir = TempDir::new(&format!("{}lab", self.tag)).unwrap();
        let log_path = dir.join("server.log");
        let log = File::create(&log_path).unwrap();
        let mut cmd = lab.server.command(std::env::current_exe().unwrap());
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "server")
            .env("RUST_BACKTRACE", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in [
            ("TEST", test.to_owned()),
            ("DIR", dir.path().display().to_string()),
            ("SERVER_IF", lab.server_if.clone()),
            ("CLIENT_IF", lab.client_if.clone()),
            ("CLIENT_NS", lab.client.name().to_owned()),
            ("SERVER_V4", lab.server_v4.to_string()),
            ("CLIENT_V4", lab.client_v4.to_string()),
            ("SERVER_V6", lab.server_v6.to_string()),
            ("CLIENT_V6", lab.client_v6.to_string()),
        ] {
            cmd.env(format!("{ROLE}_{k}"), v);
        }
        let mut child = ChildGuard::spawn(&mut cmd).expect("start server run");
        let status = child.wait_timeout(self.server_timeout).unwrap();
        check_inner_run(test, "server", lab.server.name(), status, &log_path, self.server_timeout);
    }

    /// Runs lab test `test` alone in a fresh namespace of its own (only `lo` in it):
    /// `inner` runs there, in a copy of this test binary. `outer`, if given, runs here
    /// meanwhile with the namespace: it may set things up, pass arguments, start the
    /// inner run ([`Outer::start`], else it starts when `outer` returns), meet it at
    /// signals, and wait for it ([`Outer::finish`], else after `outer` returns).
    pub fn run_alone(&self, test: &str, inner: fn(&Alone), outer: Option<fn(&mut Outer)>) {
        if std::env::var(ROLE).as_deref() == Ok("alone") {
            return inner(&Alone { dir: var("DIR").into() });
        }
        if !sesame_lab::require_root(test) {
            return;
        }
        let ns = Netns::new(&format!("{}a", self.tag)).expect("build namespace");
        let dir = TempDir::new(&format!("{}lab", self.tag)).unwrap();
        let mut o = Outer {
            test,
            ns: &ns,
            dir: dir.path(),
            timeout: self.server_timeout,
            args: Vec::new(),
            run: None,
            finished: false,
        };
        if let Some(outer) = outer {
            outer(&mut o);
        }
        o.finish();
    }
}

/// Fails the test unless an inner run (`role`) of `test` exited successfully and ran it;
/// prints its output either way.
fn check_inner_run(
    test: &str,
    role: &str,
    ns: &str,
    status: Option<std::process::ExitStatus>,
    log: &Path,
    timeout: Duration,
) {
    let out = std::fs::read_to_string(log).unwrap_or_default();
    println!("---- {role} run of {test} in {ns} ----\n{out}");
    match status {
        Some(st) if st.success() => assert!(out.contains("1 passed"), "{role} run did not run {test}"),
        Some(st) => panic!("{role} run of {test} failed ({st})"),
        None => panic!("{role} run of {test} did not finish in {timeout:?}"),
    }
}

/// The outer side of a [`LabTests::run_alone`] test.
pub struct Outer<'a> {
    test: &'a str,
    /// The namespace the inner run runs in.
    pub ns: &'a Netns,
    dir: &'a Path,
    timeout: Duration,
    args: Vec<(String, String)>,
    run: Option<(ChildGuard, Instant)>,
    finished: bool,
}

impl Outer<'_> {
    /// An argument for the inner run to read with [`arg`]; before [`Outer::start`].
    pub fn arg(&mut self, k: &str, v: impl Into<String>) {
        assert!(self.run.is_none(), "arguments go before the inner run starts");
        self.args.push((k.to_owned(), v.into()));
    }

    /// Starts the inner run in the namespace (once).
    pub fn start(&mut self) {
        if self.run.is_some() || self.finished {
            return;
        }
        let log = File::create(self.dir.join("alone.log")).unwrap();
        let mut cmd = self.ns.command(std::env::current_exe().unwrap());
        cmd.args([self.test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "alone")
            .env(format!("{ROLE}_DIR"), self.dir)
            .env("RUST_BACKTRACE", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.args {
            cmd.env(format!("{ROLE}_ARG_{k}"), v);
        }
        self.run = Some((ChildGuard::spawn(&mut cmd).expect("start inner run"), Instant::now()));
    }

    /// Waits for the inner run to raise `signal` ([`Alone::signal`]); fails the test
    /// (with the inner run's output) if it does not within `timeout` or exits first.
    pub fn wait_for(&mut self, signal: &str, timeout: Duration) {
        self.start();
        let path = self.dir.join(format!("signal-{signal}"));
        let (child, _) = self.run.as_mut().expect("started");
        let seen = sesame_lab::wait_until(timeout, || path.exists() || !child.is_running());
        if !(seen && path.exists()) {
            let out = std::fs::read_to_string(self.dir.join("alone.log")).unwrap_or_default();
            panic!("inner run of {} did not signal {signal:?}:\n{out}", self.test);
        }
    }

    /// Raises `signal` for the inner run ([`Alone::wait_for`]).
    pub fn signal(&self, signal: &str) {
        File::create(self.dir.join(format!("signal-{signal}"))).unwrap();
    }

    /// Waits for the inner run to finish (starting it first if need be) and fails the
    /// test if it failed. Once; later calls do nothing.
    pub fn finish(&mut self) {
        self.start();
        let Some((mut child, started)) = self.run.take() else { return };
        self.finished = true;
        let status = child.wait_timeout(self.timeout.saturating_sub(started.elapsed())).unwrap();
        check_inner_run(
            self.test,
            "inner",
            self.ns.name(),
            status,
            &self.dir.join("alone.log"),
            self.timeout,
        );
    }
}

/// The inner side of a [`LabTests::run_alone`] test, in its own namespace.
pub struct Alone {
    dir: PathBuf,
}

impl Alone {
    /// Raises `signal` for the outer run ([`Outer::wait_for`]).
    pub fn signal(&self, signal: &str) {
        File::create(self.dir.join(format!("signal-{signal}"))).unwrap();
    }

    /// Waits up to `timeout` for the outer run to raise `signal`.
    pub fn wait_for(&self, signal: &str, timeout: Duration) -> bool {
        let path = self.dir.join(format!("signal-{signal}"));
        sesame_lab::wait_until(timeout, || path.exists())
    }
}

/// The lab as the inner runs see it.
#[derive(Clone, Debug)]
pub struct Env {
    pub test: String,
    /// A scratch directory of the outer run's (which removes it).
    pub dir: PathBuf,
    pub server_if: String,
    pub client_if: String,
    pub client_ns: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
    /// The server's MAC address (read by the server run, passed to the client run).
    pub server_mac: [u8; 6],
}

fn var(k: &str) -> String {
    std::env::var(format!("{ROLE}_{k}")).unwrap_or_else(|_| panic!("{k} not set"))
}

/// An argument the server run gave the client run.
pub fn arg(k: &str) -> String {
    var(&format!("ARG_{k}"))
}

impl Env {
    fn from_env() -> Env {
        let server_if = var("SERVER_IF");
        let server_mac = match std::env::var(format!("{ROLE}_SERVER_MAC")) {
            Ok(m) => parse_mac(&m),
            Err(_) => mac_of(&server_if),
        };
        Env {
            test: var("TEST"),
            dir: var("DIR").into(),
            server_if,
            client_if: var("CLIENT_IF"),
            client_ns: var("CLIENT_NS"),
            server_v4: var("SERVER_V4").parse().unwrap(),
            client_v4: var("CLIENT_V4").parse().unwrap(),
            server_v6: var("SERVER_V6").parse().unwrap(),
            client_v6: var("CLIENT_V6").parse().unwrap(),
            server_mac,
        }
    }

    /// Starts this test's client run in the client namespace, its output going to a
    /// file; `args` are for it to read with [`arg`]. It finds the lab in the
    /// environment it inherits from this run, and the server's MAC address besides.
    pub fn start_client(&self, args: &[(&str, String)]) -> Client {
        let log = self.dir.join("client.log");
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client_ns])
            .arg(std::env::current_exe().unwrap())
            .args([self.test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "client")
            .env(format!("{ROLE}_SERVER_MAC"), mac_text(&self.server_mac))
            .env("RUST_BACKTRACE", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in args {
            cmd.env(format!("{ROLE}_ARG_{k}"), v);
        }
        Client { child: ChildGuard::spawn(&mut cmd).expect("start client run"), log, started: Instant::now() }
    }

    /// The server's address of the family of `like`.
    pub fn server_addr(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => IpAddr::V4(self.server_v4),
            IpAddr::V6(_) => IpAddr::V6(self.server_v6),
        }
    }

    /// A UDP knock on the server's port 9000 from `src_port` of `src` (at `src_mac`),
    /// to the server's address of the same family.
    #[cfg(feature = "tx")]
    pub fn udp_knock(&self, src_mac: [u8; 6], src: IpAddr, src_port: u16) -> FrameSpec {
        FrameSpec {
            src_mac,
            dst_mac: self.server_mac,
            src,
            dst: self.server_addr(src),
            proto: Proto::Udp,
            src_port,
            dst_port: 9000,
            tcp_flags: 0,
        }
    }
}

/// A client run in progress.
pub struct Client {
    child: ChildGuard,
    log: PathBuf,
    started: Instant,
}

impl Client {
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Waits for the client run, fails the test if it failed, and returns its
    /// `@@ key=value` results.
    pub fn finish(mut self) -> BTreeMap<String, String> {
        let left = CLIENT_TIMEOUT.saturating_sub(self.started.elapsed());
        let status = self.child.wait_timeout(left).unwrap();
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        println!("---- client run ----\n{out}---- end of client run ----");
        match status {
            Some(st) if st.success() => assert!(out.contains("1 passed"), "client run did not run the test"),
            Some(st) => panic!("client run failed ({st})"),
            None => panic!("client run did not finish in {CLIENT_TIMEOUT:?}"),
        }
        out.lines()
            .filter_map(|l| l.split_once("@@ ").map(|(_, kv)| kv))
            .flat_map(|l| l.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Calls `poll` with the time left until it returns true (enough has come), and for
/// `settle` after that (for stragglers); `timeout` in all.
pub fn poll_settled(timeout: Duration, settle: Duration, mut poll: impl FnMut(Duration) -> bool) {
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = settle_until.unwrap_or(deadline).min(deadline);
        if now >= until {
            return;
        }
        if poll(until - now) && settle_until.is_none() {
            settle_until = Some(Instant::now() + settle);
        }
    }
}

/// A MAC address as `ip` and sysfs write it: `02:00:5e:00:00:01`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    let bytes: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    bytes.join(":")
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.trim().split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap_or_else(|v| panic!("bad MAC {v:?}"))
}

/// The MAC address of an interface of this namespace (`ip netns exec` mounts a sysfs
/// of the namespace).
pub fn mac_of(ifname: &str) -> [u8; 6] {
    parse_mac(&std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).unwrap())
}
