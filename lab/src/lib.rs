//! The test lab: throw-away network namespaces joined by veth pairs, tun devices to
//! inject raw IP packets through, and real programs (sshd, iptables, knockd, sesamed)
//! started inside them; plus builders for IP packets with correct checksums.
//!
//! Every resource is owned by a guard whose `Drop` removes it, so a failing or
//! panicking test still cleans up. Names carry the process id and a counter, so
//! tests running in parallel (threads or processes) never collide. Addresses come
//! from the benchmarking ranges 198.18.0.0/15 and 2001:db8::/32 only, and no
//! default route is ever added.
#![deny(unsafe_code)]

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

    /// The argv that runs a program inside this namespace (`ip netns exec NAME`), for
    /// tools that take a command prefix.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].map(str::to_owned).to_vec()
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

/// Creates a veth pair, `a_if` in `a` and `b_if` in `b`, straight inside the
/// namespaces, so nothing ever appears in the host's namespace, not even for a moment.
/// It goes away with them.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> io::Result<()> {
    let args =
        ["link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()];
    run(Command::new("ip").args(args)).map(drop)
}

impl Lab {
    /// Builds the two namespaces and the veth pair. `tag` (a few letters) names them.
    pub fn new(tag: &str) -> io::Result<Lab> {
        let server = Netns::new(&format!("{tag}s"))?;
        let client = Netns::new(&format!("{tag}c"))?;
        let server_if = unique_name("ss");
        let client_if = unique_name("sc");
        veth_pair(&server, &server_if, &client, &client_if)?;
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

/// A tun device (`IFF_TUN | IFF_NO_PI`) inside a namespace, created persistent with
/// `ip tuntap add`, removed on drop (with the namespace, if that goes first).
///
/// Nothing holds it open between [`Tun::inject`] calls, so its carrier is off then;
/// that does not stop it from being brought up and given addresses, or from capturing.
#[derive(Debug)]
pub struct Tun {
    ns: String,
    name: String,
}

/// Writes each hex line of stdin as one packet into the tun named by argv[1], after
/// attaching to it with TUNSETIFF (IFF_TUN | IFF_NO_PI). The ifreq is padded to its
/// full 40 bytes: the kernel copies that much.
const TUN_INJECT_PY: &str = r#"import fcntl, os, struct, sys
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', sys.argv[1].encode(), 0x0001 | 0x1000))
for line in sys.stdin:
    line = line.strip()
    if line:
        os.write(fd, bytes.fromhex(line))
os.close(fd)
"#;

impl Tun {
    /// Creates tun `name` in `ns`, down and without addresses (`ns.ip(...)` sets those).
    pub fn create(ns: &Netns, name: &str) -> io::Result<Tun> {
        ns.ip(&["tuntap", "add", "dev", name, "mode", "tun"])?;
        Ok(Tun { ns: ns.name().to_owned(), name: name.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Injects each packet (starting at its IPv4/IPv6 header) as if received on the
    /// tun: attaches with TUNSETIFF and writes it (with python3, in the namespace). The
    /// tun must be up, or the kernel refuses the writes (EIO). Returns once every packet
    /// was written; the kernel processes them right after (in softirq context).
    pub fn inject(&self, packets: &[Vec<u8>]) -> io::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "python3", "-c", TUN_INJECT_PY, &self.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut input = String::new();
        for p in packets {
            for b in p {
                input.push_str(&format!("{b:02x}"));
            }
            input.push('\n');
        }
        let written = child.stdin.take().expect("piped stdin").write_all(input.as_bytes());
        let out = child.wait_with_output()?;
        if !out.status.success() || written.is_err() {
            return Err(io::Error::other(format!(
                "injecting {} packets into tun {} in {} failed with {}: {}",
                packets.len(),
                self.name,
                self.ns,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "tuntap", "del", "dev", &self.name, "mode", "tun"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An IPv4 or IPv6 packet carrying a bare 20-byte TCP header with `flags` (SYN is
/// 0x02) from `src`:`sport` to `dst`:`dport`, checksums correct: what a tun or a
/// `SOCK_DGRAM` capture holds. Panics if `src` and `dst` are of different families.
pub fn ip_packet_tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // sequence number
    tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
    tcp.extend_from_slice(&[0x50, flags]); // data offset 5 words, flags
    tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    ip_packet(src, dst, 6, tcp, 16)
}

/// An IPv4 or IPv6 packet carrying a UDP datagram with `payload` from `src`:`sport` to
/// `dst`:`dport`, checksums correct. Panics if `src` and `dst` are of different families.
pub fn ip_packet_udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP datagram fits in 64 KiB");
    let mut udp = Vec::with_capacity(usize::from(len));
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // checksum
    udp.extend_from_slice(payload);
    ip_packet(src, dst, 17, udp, 6)
}

/// `l4` (its checksum field, at `csum_at`, zero) behind an IP header, with the
/// transport checksum over the pseudo-header filled in.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let len = u16::try_from(l4.len()).expect("transport segment fits in 64 KiB");
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&len.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("source {src} and destination {dst} are of different IP families"),
    }
    let mut sum = ones_sum(&pseudo, 0);
    sum = ones_sum(&l4, sum);
    let mut csum = !fold(sum);
    // A computed UDP checksum of 0 is sent as all ones (0 means "none").
    if proto == 17 && csum == 0 {
        csum = 0xffff;
    }
    l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    let mut p = Vec::with_capacity(40 + l4.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + len;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0]); // identification 0, DF
            p.extend_from_slice(&[64, proto, 0, 0]); // TTL, protocol, checksum
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let hcsum = !fold(ones_sum(&p, 0));
            p[10..12].copy_from_slice(&hcsum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => unreachable!("families checked above"),
    }
    p.extend_from_slice(&l4);
    p
}

/// The 32-bit running sum of `bytes` as big-endian 16-bit words (odd length padded).
fn ones_sum(bytes: &[u8], mut sum: u32) -> u32 {
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
    }
    sum
}

/// Folds the carries of a running sum into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
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

/// ufw confined to a lab namespace, over private copies of everything it reads and writes.
///
/// Every command runs inside the namespace (`ip netns exec`), then in a fresh private
/// mount namespace (`unshare --mount --propagation private`) in which a shell bind-mounts
/// the jail's scratch copies and `exec`s the program:
///
/// | scratch copy (`dir()/...`) | mounted over       | what ufw keeps there                      |
/// |----------------------------|--------------------|-------------------------------------------|
/// | `etc-ufw`                  | `/etc/ufw`         | `ufw.conf`, `user*.rules`, before/after   |
/// | `default-ufw`              | `/etc/default/ufw` | default policies, IPv6, sysctl and modules |
/// | `lib-ufw`                  | `/lib/ufw`         | `ufw-init` (its state directory)          |
/// | `run`                      | `/run`             | `ufw.lock` (and iptables' `xtables.lock`) |
///
/// and `TMPDIR` points at `dir()/tmp`, where ufw writes each rules file before copying
/// it into place.
///
/// The mounts live only as long as the command's process; the host's `/etc`, `/lib` and
/// `/run` are never written, and the shared `run` copy keeps the jail's own ufw commands
/// serialized by ufw's lock while keeping them off the host's. The copies start from the
/// host's files with: the packaged empty user rules, `ENABLED=no`, `LOGLEVEL=off`, and
/// `IPT_SYSCTL=` / `IPT_MODULES=""` (so enabling ufw writes no sysctl and loads no module).
/// The scratch directory is removed on drop; the rules ufw installed go with the namespace.
#[derive(Debug)]
pub struct UfwJail {
    ns: String,
    dir: TempDir,
}

/// Bind-mounts the jail's copies (`$1` is the jail directory), then runs the rest of argv.
const UFW_JAIL_SH: &str = r#"set -e
d=$1
shift
mount --bind "$d/etc-ufw" /etc/ufw
mount --bind "$d/default-ufw" /etc/default/ufw
mount --bind "$d/lib-ufw" /lib/ufw
mount --bind "$d/run" /run
export TMPDIR="$d/tmp"
exec "$@"
"#;

impl UfwJail {
    /// The ufw program the jail runs.
    pub const UFW: &'static str = "/usr/sbin/ufw";

    /// Makes the scratch copies for a jail in `ns`. ufw must be installed.
    pub fn new(ns: &Netns) -> io::Result<UfwJail> {
        for p in ["/etc/ufw", "/etc/default/ufw", "/lib/ufw", Self::UFW] {
            if !Path::new(p).exists() {
                return Err(io::Error::other(format!(
                    "{p} is missing: is ufw installed? (apt-get install ufw)"
                )));
            }
        }
        let dir = TempDir::new("ufwjail")?;
        for (from, to) in
            [("/etc/ufw", "etc-ufw"), ("/etc/default/ufw", "default-ufw"), ("/lib/ufw/.", "lib-ufw")]
        {
            run(Command::new("cp").arg("-a").arg(from).arg(dir.join(to)))?;
        }
        std::fs::create_dir(dir.join("run"))?;
        std::fs::create_dir(dir.join("tmp"))?;
        for name in ["user.rules", "user6.rules"] {
            let template = Path::new("/usr/share/ufw/iptables").join(name);
            if template.is_file() {
                std::fs::copy(&template, dir.join("etc-ufw").join(name))?;
            }
        }
        let set = |file: PathBuf, values: &[(&str, &str)]| -> io::Result<()> {
            let mut text: String = std::fs::read_to_string(&file)?
                .lines()
                .filter(|l| !values.iter().any(|(k, _)| l.starts_with(&format!("{k}="))))
                .map(|l| format!("{l}\n"))
                .collect();
            for (k, v) in values {
                text.push_str(&format!("{k}={v}\n"));
            }
            std::fs::write(file, text)
        };
        set(dir.join("etc-ufw").join("ufw.conf"), &[("ENABLED", "no"), ("LOGLEVEL", "off")])?;
        set(dir.join("default-ufw"), &[("IPV6", "yes"), ("IPT_SYSCTL", ""), ("IPT_MODULES", "\"\"")])?;
        Ok(UfwJail { ns: ns.name().to_owned(), dir })
    }

    /// The scratch directory holding the copies.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where ufw's lock file lands inside the jail (`/run/ufw.lock` as ufw sees it).
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("run").join("ufw.lock")
    }

    /// The argv that runs a program inside the jail: put it before `/usr/sbin/ufw ARGS`.
    pub fn prefix(&self) -> Vec<String> {
        let mut p: Vec<String> =
            ["ip", "netns", "exec", &self.ns, "unshare", "--mount", "--propagation", "private"]
                .map(str::to_owned)
                .to_vec();
        p.extend(["/bin/sh".to_owned(), "-c".to_owned(), UFW_JAIL_SH.to_owned(), "ufw-jail".to_owned()]);
        p.push(self.dir.path().display().to_string());
        p
    }

    /// A command running `program` inside the jail, in the C locale.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let prefix = self.prefix();
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(program).env("LC_ALL", "C").env("LANG", "C");
        c
    }

    /// Runs `ufw ARGS` in the jail and returns its stdout, failing on non-zero exit.
    pub fn ufw(&self, args: &[&str]) -> io::Result<String> {
        let out = run(self.command(Self::UFW).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `iptables-save` then `ip6tables-save` in `ns`, without the `#` comment lines (they
/// carry the time) and without packet counters (`[0:0]`): two snapshots are equal when
/// the rulesets are.
pub fn ruleset(ns: &Netns) -> io::Result<String> {
    let mut out = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        out.push_str(&format!("## {tool}\n"));
        for line in ns.sh_ok(tool)?.lines().filter(|l| !l.starts_with('#')) {
            // `:CHAIN POLICY [packets:bytes]`: drop the counters.
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') && line.ends_with(']') => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
    }

    /// The ones'-complement sum over the pseudo-header and segment of a packet with a
    /// correct checksum is 0xffff.
    fn l4_checks_out(p: &[u8]) -> bool {
        let (pseudo, l4) = if p[0] >> 4 == 4 {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let l4 = &p[ihl..];
            let mut ph = p[12..20].to_vec();
            ph.extend_from_slice(&[0, p[9]]);
            ph.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            (ph, l4)
        } else {
            let l4 = &p[40..];
            let mut ph = p[8..40].to_vec();
            ph.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, p[6]]);
            (ph, l4)
        };
        fold(ones_sum(l4, ones_sum(&pseudo, 0))) == 0xffff
    }

    #[test]
    fn ipv4_packets() {
        let syn = ip_packet_tcp(v4(2), v4(1), 40000, 7000, 0x02);
        assert_eq!(syn.len(), 40);
        assert_eq!(&syn[..4], &[0x45, 0, 0, 40]);
        assert_eq!(syn[9], 6);
        assert_eq!(&syn[12..20], &[198, 18, 0, 2, 198, 18, 0, 1]);
        assert_eq!(&syn[20..24], &[0x9c, 0x40, 0x1b, 0x58]);
        assert_eq!(syn[33], 0x02);
        assert_eq!(fold(ones_sum(&syn[..20], 0)), 0xffff, "IPv4 header checksum");
        assert!(l4_checks_out(&syn));
        let udp = ip_packet_udp(v4(2), v4(1), 40000, 9000, b"knock");
        assert_eq!(udp.len(), 20 + 8 + 5);
        assert_eq!((udp[9], &udp[24..26]), (17, &[0u8, 13][..]));
        assert_eq!(fold(ones_sum(&udp[..20], 0)), 0xffff);
        assert!(l4_checks_out(&udp));
        assert_ne!(&udp[26..28], &[0, 0], "UDP over IPv4 carries a checksum too");
    }

    #[test]
    fn ipv6_packets() {
        let syn = ip_packet_tcp(v6(2), v6(1), 40000, 7000, 0x02);
        assert_eq!(syn.len(), 60);
        assert_eq!(&syn[..8], &[0x60, 0, 0, 0, 0, 20, 6, 64]);
        assert_eq!(&syn[8..24], &Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
        assert!(l4_checks_out(&syn));
        // Odd payload length: the pad byte counts as zero.
        let udp = ip_packet_udp(v6(2), v6(1), 40000, 9000, b"odd");
        assert_eq!(udp.len(), 40 + 8 + 3);
        assert_eq!(&udp[4..7], &[0, 11, 17]);
        assert!(l4_checks_out(&udp));
    }

    #[test]
    #[should_panic(expected = "different IP families")]
    fn mixed_families_panic() {
        ip_packet_udp(v4(1), v6(1), 1, 2, b"");
    }
}
