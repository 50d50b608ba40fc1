//! The test lab: throw-away network namespaces joined by veth pairs, and real
//! programs (sshd, iptables, knockd, sesamed) started inside them.
//!
//! Every resource is owned by a guard whose `Drop` removes it, so a failing or
//! panicking test still cleans up. Names carry the process id and a counter, so
//! tests running in parallel (threads or processes) never collide. Addresses come
//! from the benchmarking ranges 198.18.0.0/15 and 2001:db8::/32 only, and no
//! default route is ever added.
#![deny(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `{prefix}{pid}x{n}`, at most 15 bytes
/// so it is also a valid interface name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = format!("{prefix}{pid}x{n}");
    assert!(name.len() <= 15, "lab name {name:?} is longer than an interface name may be");
    name
}

/// Whether the lab can be built here: root (for namespaces) and `ip` on PATH.
///
/// Lab tests call this first. Without root they must not pass silently: they
/// print why and are skipped only when `SESAME_LAB=skip` says so; otherwise they fail.
pub fn require_root(test: &str) -> bool {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if euid == "0" {
        return true;
    }
    let msg = format!("lab test `{test}` needs root to create network namespaces (euid {euid})");
    if std::env::var("SESAME_LAB").as_deref() == Ok("skip") {
        eprintln!("SKIPPED: {msg}; SESAME_LAB=skip is set");
        false
    } else {
        panic!("{msg}; run the suite as root, or set SESAME_LAB=skip to skip lab tests");
    }
}

/// Finds a program in PATH or the sbin directories (which a non-login root shell may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// Runs a command to completion; an error names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed with {}: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A network namespace, deleted (with every process still in it killed) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named from `prefix` and brings its loopback up.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `ip ARGS` inside the namespace (`ip -n`), failing on non-zero exit.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a shell snippet inside the namespace and returns its output, whatever its status.
    pub fn sh(&self, script: &str) -> io::Result<Output> {
        self.command("/bin/sh").args(["-c", script]).stdin(Stdio::null()).output()
    }

    /// Runs a shell snippet inside the namespace, failing on non-zero exit.
    pub fn sh_ok(&self, script: &str) -> io::Result<String> {
        let out = self.sh(script)?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "in {}: `{script}` failed with {}: {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running program in the namespace; it is killed when the guard drops.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<ChildGuard> {
        let mut full = self.command(cmd.get_program());
        full.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => full.env(k, v),
                None => full.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            full.current_dir(dir);
        }
        full.stdin(Stdio::null());
        ChildGuard::spawn(&mut full)
    }

    /// Pids of every process still in the namespace.
    fn pids(&self) -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes keep a namespace (and its veths) alive; kill them first.
        let pids = self.pids();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&pids).status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.pids().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        Ok(ChildGuard { child: Some(cmd.spawn()?) })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, sig: &str) -> io::Result<()> {
        run(Command::new("kill").arg(format!("-{sig}")).arg(self.id().to_string())).map(drop)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("child present until drop");
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two namespaces, `server` and `client`, joined by one veth pair on a /24 and a /64.
///
/// Server is 198.18.N.1 / 2001:db8:N::1, client .2 / ::2, where N is taken from the
/// counter so parallel labs are also distinct on paper. No default routes.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: the client goes first, then the server (and the veth with it).
    pub client: Netns,
    pub server: Netns,
    pub server_if: String,
    pub client_if: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
}

impl Lab {
    /// Builds the two namespaces and the veth pair. `tag` (a few letters) names them.
    pub fn new(tag: &str) -> io::Result<Lab> {
        let server = Netns::new(&format!("{tag}s"))?;
        let client = Netns::new(&format!("{tag}c"))?;
        let server_if = unique_name("ss");
        let client_if = unique_name("sc");
        // Create the pair straight inside the namespaces, so nothing ever appears in
        // the host's namespace, not even for a moment.
        run(Command::new("ip").args([
            "link",
            "add",
            &server_if,
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            client.name(),
        ]))?;
        let n = (COUNTER.load(Ordering::Relaxed) % 250) as u8 + 1;
        let server_v4 = Ipv4Addr::new(198, 18, n, 1);
        let client_v4 = Ipv4Addr::new(198, 18, n, 2);
        let server_v6: Ipv6Addr = format!("2001:db8:{n:x}::1").parse().expect("valid v6");
        let client_v6: Ipv6Addr = format!("2001:db8:{n:x}::2").parse().expect("valid v6");
        for (ns, ifname, v4, v6) in
            [(&server, &server_if, server_v4, server_v6), (&client, &client_if, client_v4, client_v6)]
        {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(Lab { client, server, server_if, client_if, server_v4, client_v4, server_v6, client_v6 })
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real OpenSSH server listening on port 22 (IPv4 and IPv6) inside a namespace,
/// with a throw-away ed25519 host key. Killed (and its key removed) on drop.
#[derive(Debug)]
pub struct Sshd {
    // Field order is drop order: the process goes first, then its directory.
    child: ChildGuard,
    dir: TempDir,
}

impl Sshd {
    /// Generates a host key, starts `/usr/sbin/sshd -D -e` in `ns` with no config file
    /// (built-in defaults, no PAM) and waits up to 5 s until port 22 listens.
    pub fn start(ns: &Netns) -> io::Result<Sshd> {
        let sshd = which("sshd")
            .ok_or_else(|| io::Error::other("sshd not found (apt-get install openssh-server)"))?;
        let keygen = which("ssh-keygen").ok_or_else(|| io::Error::other("ssh-keygen not found"))?;
        let dir = TempDir::new("sshd")?;
        let key = dir.join("hostkey");
        run(Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "sesame-lab", "-f"])
            .arg(&key))?;
        // Privilege separation directory; sshd refuses to start without it.
        std::fs::create_dir_all("/run/sshd")?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let mut cmd = ns.command(&sshd);
        cmd.args(["-D", "-e", "-f", "/dev/null"])
            .arg("-o")
            .arg(format!("HostKey={}", key.display()))
            .args(["-o", "ListenAddress=0.0.0.0", "-o", "ListenAddress=::", "-o", "PidFile=none"])
            .args(["-o", "UsePAM=no", "-o", "UseDNS=no", "-o", "MaxStartups=100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let listening = wait_until(Duration::from_secs(5), || {
            let out =
                ns.sh("ss -Hltn 'sport = :22'").map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            // One line per listening socket: 0.0.0.0:22 and [::]:22.
            out.map(|s| s.lines().count() >= 2).unwrap_or(false)
        });
        if !listening || !child.is_running() {
            let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            return Err(io::Error::other(format!("sshd did not come up in {}: {log}", ns.name())));
        }
        Ok(Sshd { child, dir })
    }

    /// What sshd wrote to stdout/stderr so far (`-e`: its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Whether sshd is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

/// The base policy of the classic knockd set-up, for both iptables and ip6tables:
/// accept ESTABLISHED,RELATED, drop every other tcp/22 packet. New SSH connections
/// fail until a rule accepting the knocker is put *before* the DROP.
pub fn ssh_base_policy(ns: &Netns) -> io::Result<()> {
    for tool in ["iptables", "ip6tables"] {
        ns.sh_ok(&format!(
            "{tool} -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
             {tool} -A INPUT -p tcp --dport 22 -j DROP"
        ))?;
    }
    Ok(())
}

/// Opens a TCP connection from `ns` to `addr:port` and reads the first 8 bytes the
/// server sends, giving up after `timeout`. Returns what was read (empty when the
/// connection could not be made, e.g. because a firewall dropped the SYN).
pub fn tcp_banner(ns: &Netns, addr: std::net::IpAddr, port: u16, timeout: Duration) -> String {
    let script = format!(
        "exec timeout {:.1} bash -c 'exec 3<>/dev/tcp/{addr}/{port} && head -c 8 <&3' 2>/dev/null",
        timeout.as_secs_f64()
    );
    ns.sh(&script).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Whether a new SSH connection from `ns` to `addr` gets through: port 22 answers with
/// an `SSH-2.0` banner within `timeout`.
pub fn ssh_reachable(ns: &Netns, addr: std::net::IpAddr, timeout: Duration) -> bool {
    tcp_banner(ns, addr, 22, timeout).starts_with("SSH-2.0")
}
