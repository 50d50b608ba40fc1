//! The harness of the lab tests (ring_lab.rs, tx_lab.rs, fanout_lab.rs), which need
//! packet sockets inside a throw-away lab (needs root).
//!
//! A packet socket belongs to the network namespace it was created in: each test
//! re-runs itself (this test binary, `--exact` that test) inside the lab's server
//! namespace with `ip netns exec`, and that copy, the server run, may run the test a
//! third time inside the client namespace ([`Env::start_client`]), for a packet socket
//! there too. The roles come from the environment. The outer copy owns the lab
//! (dropped, with both namespaces, whatever happens), bounds the server run in time and
//! prints its output. A client run prints its results as `@@ key=value ...` lines for
//! the server run ([`Client::finish`]).

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sesame_capture::craft::FrameSpec;
use sesame_capture::Proto;
use sesame_lab::{ChildGuard, Lab, TempDir};

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
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        println!("---- server run of {test} in {} ----\n{out}", lab.server.name());
        match status {
            Some(st) if st.success() => assert!(out.contains("1 passed"), "server run did not run {test}"),
            Some(st) => panic!("server run of {test} failed ({st})"),
            None => panic!("server run of {test} did not finish in {:?}", self.server_timeout),
        }
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
