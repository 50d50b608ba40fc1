//! The Debian package, end to end: built with cargo-deb (or `SESAME_DEB`), installed
//! with dpkg into a fresh Debian bookworm root (debootstrap minbase, cached under
//! target/), its unit checked with `systemd-analyze verify`, and its `ExecStartPre=`
//! and `ExecStart=` lines (parsed from the installed unit, `$SESAMED_OPTS` expanded from
//! the installed /etc/default/sesame) run in that root inside a network namespace:
//! the daemon answers a knock from a peer namespace, says `READY=1` to the test's own
//! `NOTIFY_SOCKET`, pets the watchdog, and stops petting it while one capture worker
//! thread is held stopped. Then the same root boots its own systemd (systemd-nspawn)
//! in the lab's network, runs the unit as packaged, and restarts the daemon when its
//! watchdog goes quiet because a capture worker is stuck.
//!
//! Needs root, debootstrap and systemd-nspawn; without a way to the Debian mirror
//! (first run only, then the tarball is cached) it fails, unless
//! `SESAME_DEBOOTSTRAP=skip` allows skipping.

use sesame_lab::{require_root, run, unique_name, wait_until, which, ChildGuard, Lab, Netns};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SESAME: &str = env!("CARGO_BIN_EXE_sesame");
const MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";
/// Beyond minbase: systemd (the targets the unit names, for `systemd-analyze verify
/// --root`, and PID 1 when the root is booted), procps (`/bin/kill`, the unit's
/// `ExecReload=`), and the firewalls the unit's sandbox must let each backend change.
const INCLUDE: &str = "systemd,procps,iptables,nftables,ufw";

fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debootstrap");
    std::fs::create_dir_all(&dir).expect("cache dir");
    dir
}

/// The .deb under test: `SESAME_DEB`, else one cargo-deb makes now from the very
/// binaries this test was built with (no release build needed).
fn deb(out: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("SESAME_DEB") {
        return PathBuf::from(p);
    }
    let cargo_deb = which("cargo-deb")
        .or_else(|| {
            let home = std::env::var("HOME").ok()?;
            Some(Path::new(&home).join(".cargo/bin/cargo-deb")).filter(|p| p.is_file())
        })
        .expect("cargo-deb is not installed: run `scripts/quickstart package` once, or set SESAME_DEB");
    // .../target/debug/sesame -> .../target
    let target = Path::new(SESAME).parent().and_then(Path::parent).expect("target dir");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // cargo-deb stages the binaries under the target dir: two at once (tests side by
    // side) corrupt each other's package.
    let lock = File::create(cache_dir().join("cargo-deb.lock")).expect("lock file");
    lock.lock().expect("lock cargo-deb");
    let mut cmd = Command::new(cargo_deb);
    cmd.args(["--no-build", "--profile", "dev", "--fast", "--manifest-path"])
        .arg(&manifest)
        .arg("-o")
        .arg(out)
        .env("CARGO_TARGET_DIR", target);
    let o = run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    let path = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().trim().to_owned();
    assert!(path.ends_with(".deb"), "cargo-deb said {:?}", String::from_utf8_lossy(&o.stdout));
    PathBuf::from(path)
}

/// The pristine Debian root, made once per debootstrap tarball and kept; `None` when
/// the mirror cannot be reached (and skipping is allowed).
fn base_root() -> Option<PathBuf> {
    let dir = cache_dir();
    let lock = File::create(dir.join("lock")).expect("lock file");
    lock.lock().expect("lock the debootstrap cache");
    // Named by what it holds, so a new INCLUDE makes a new tarball.
    let name = format!("{SUITE}-minbase-{}", INCLUDE.replace(',', "-"));
    let tarball = dir.join(format!("{name}.tgz"));
    if !tarball.exists() {
        let part = dir.join(format!("{name}.tgz.part"));
        let work = dir.join(unique_name("dbw"));
        let out = Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}")])
            .arg(format!("--make-tarball={}", part.display()))
            .arg(SUITE)
            .arg(&work)
            .arg(MIRROR)
            .stdin(Stdio::null())
            .output()
            .expect("run debootstrap (apt-get install debootstrap)");
        let _ = std::fs::remove_dir_all(&work);
        if !out.status.success() {
            let msg = format!(
                "debootstrap cannot fetch {SUITE} from {MIRROR}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if std::env::var("SESAME_DEBOOTSTRAP").as_deref() == Ok("skip") {
                eprintln!("SKIPPED: {msg}; SESAME_DEBOOTSTRAP=skip is set");
                return None;
            }
            panic!("{msg}\n(set SESAME_DEBOOTSTRAP=skip to skip this test where the mirror is out of reach)");
        }
        std::fs::rename(&part, &tarball).expect("keep the tarball");
    }
    let meta = std::fs::metadata(&tarball).expect("tarball");
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let key = format!("{:x}-{:x}", meta.len(), mtime.map_or(0, |d| d.as_secs()));
    let root = dir.join(format!("root-{key}"));
    if !root.join("usr/bin/dpkg").exists() {
        let part = dir.join(format!("root-{key}.part"));
        let _ = std::fs::remove_dir_all(&part);
        run(Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}")])
            .arg(format!("--unpack-tarball={}", tarball.display()))
            .arg(SUITE)
            .arg(&part)
            .arg(MIRROR))
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&part, &root).expect("keep the root");
    }
    Some(root)
}

/// A fresh copy of the Debian root with the package installed by dpkg, as on a real
/// machine; `None` when debootstrap may not reach the mirror (and skipping is allowed).
fn installed() -> Option<Root> {
    let base = base_root()?;
    let root = Root::copy_of(&base);
    let debs = root.join("tmp/debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = deb(&debs);
    let name = if deb.starts_with(&root.0) {
        deb.file_name().unwrap().to_str().unwrap().to_owned()
    } else {
        std::fs::copy(&deb, debs.join("sesame.deb")).unwrap();
        "sesame.deb".to_owned()
    };
    run(root.chroot().args(["dpkg", "-i", &format!("/tmp/debs/{name}")])).unwrap_or_else(|e| panic!("{e}"));
    Some(root)
}

/// What an admin does after installing: pick the interface in /etc/default/sesame, and
/// write the door's commands (here they append `open IP` / `close IP` to
/// /var/log/sesame-granted, which the unit may write).
fn configure(root: &Root, iface: &str) {
    let defaults = root.join("/etc/default/sesame");
    let mut text = root.read("/etc/default/sesame");
    text.push_str(&format!("SESAMED_OPTS=\"-i {iface} --workers 2\"\n"));
    std::fs::write(&defaults, text).unwrap();
    let conf: String = root
        .read("/etc/sesame/knockd.conf")
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("start_command") {
                "\tstart_command = echo open %IP% >> /var/log/sesame-granted".to_owned()
            } else if l.trim_start().starts_with("stop_command") {
                "\tstop_command = echo close %IP% >> /var/log/sesame-granted".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(root.join("/etc/sesame/knockd.conf"), conf + "\n").unwrap();
}

/// Knocks the package's example door from the client until `done` holds (a few tries:
/// a knock is UDP-like, one lost SYN loses it).
fn knock_until(lab: &Lab, mut done: impl FnMut() -> bool) -> bool {
    (0..5).any(|_| {
        let out = lab
            .client
            .command(SESAME)
            .args(["knock", &lab.server_v4.to_string(), "7000", "8000", "9000"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "knock: {}", String::from_utf8_lossy(&out.stderr));
        wait_until(Duration::from_secs(3), &mut done)
    })
}

/// A copy of the base root for one run, removed on drop.
struct Root(PathBuf);

impl Root {
    fn copy_of(base: &Path) -> Root {
        let path = cache_dir().join(unique_name("run"));
        let root = Root(path);
        run(Command::new("cp").arg("-a").arg(base).arg(&root.0)).unwrap_or_else(|e| panic!("{e}"));
        root
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    fn chroot(&self) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.0).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.join(p)).unwrap_or_default()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `KEY=VALUE` lines, as systemd reads an EnvironmentFile (quotes removed).
fn env_file(text: &str, env: &mut HashMap<String, String>) {
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            env.insert(k.trim().to_owned(), v.to_owned());
        }
    }
}

/// A unit's command line as systemd expands it: `${VAR}` one word, `$VAR` split.
fn expand(line: &str, env: &HashMap<String, String>) -> Vec<String> {
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            argv.extend(
                env.get(name)
                    .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
        } else {
            argv.push(word.to_owned());
        }
    }
    argv
}

fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).collect()
}

/// A null pointer argument for ptrace (variadic: a plain `0` would be an int).
fn null() -> *mut libc::c_void {
    std::ptr::null_mut()
}

/// Holds one thread of another process stopped (ptrace: a SIGSTOP would stop every
/// thread of the process, the supervisor with them); lets it go on drop.
struct Held(libc::pid_t);

impl Held {
    fn stop(tid: libc::pid_t) -> Held {
        // SAFETY: plain ptrace/waitpid calls on a thread id; no memory is shared.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, null(), null()),
                0,
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            );
            let held = Held(tid);
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, null(), null()), 0, "PTRACE_INTERRUPT");
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "waitpid {tid}");
            assert!(libc::WIFSTOPPED(status), "thread {tid} did not stop: status {status:#x}");
            held
        }
    }
}

impl Held {
    /// Whether the held thread has exited (its process killed), reaping it if so. A
    /// traced thread's exit is reported to its tracer, and until the tracer reaps it
    /// the process is not reported dead to its parent: systemd would wait on this test.
    fn exited(&self) -> bool {
        let mut status = 0;
        // SAFETY: as above.
        let r = unsafe { libc::waitpid(self.0, &mut status, libc::__WALL | libc::WNOHANG) };
        (r == self.0 && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)))
            || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.0, null(), null());
        }
    }
}

/// The thread of `pid` whose name is `comm`.
fn thread(pid: u32, comm: &str) -> Option<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (name.trim() == comm).then(|| t.file_name().to_str()?.parse().ok()).flatten()
    })
}

/// What arrived on the notify socket, with when.
fn receive(sock: &UnixDatagram, got: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        for line in String::from_utf8_lossy(&buf[..n]).lines() {
            got.push((Instant::now(), line.to_owned()));
        }
    }
}

fn pets_between(got: &[(Instant, String)], from: Instant, to: Instant) -> usize {
    got.iter().filter(|(t, m)| m == "WATCHDOG=1" && *t >= from && *t < to).count()
}

/// Collects notifications for `d`.
fn collect(sock: &UnixDatagram, got: &mut Vec<(Instant, String)>, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        receive(sock, got);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn package_installs_into_a_fresh_debian_and_its_unit_runs_with_watchdog() {
    if !require_root("package_installs_into_a_fresh_debian_and_its_unit_runs_with_watchdog") {
        return;
    }
    let Some(root) = installed() else { return };
    let conffiles = run(root.chroot().args(["dpkg-query", "-W", "-f=${Conffiles}", "sesame"])).unwrap();
    let conffiles = String::from_utf8_lossy(&conffiles.stdout);
    for f in ["/etc/sesame/knockd.conf", "/etc/default/sesame"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    for f in [
        "/usr/sbin/sesamed",
        "/usr/bin/sesame",
        "/lib/systemd/system/sesamed.service",
        "/usr/share/man/man8/sesamed.8.gz",
        "/usr/share/man/man1/sesame.1.gz",
        "/usr/share/doc/sesame/runbook.md",
        "/usr/share/doc/sesame/grafana/sesame-dashboard.json",
    ] {
        assert!(root.join(f).exists(), "the package did not install {f}");
    }

    // The unit as systemd reads it, against the installed root.
    let analyze = which("systemd-analyze").expect("systemd-analyze (apt-get install systemd)");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.0.display()))
        .arg("/lib/systemd/system/sesamed.service")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);

    let lab = Lab::new("pk").unwrap();
    configure(&root, &lab.server_if);

    let unit = root.read("/lib/systemd/system/sesamed.service");
    let mut env = HashMap::new();
    for e in unit_values(&unit, "Environment") {
        env_file(e, &mut env);
    }
    for f in unit_values(&unit, "EnvironmentFile") {
        env_file(&root.read(f.trim_start_matches('-')), &mut env);
    }
    let pre = expand(unit_values(&unit, "ExecStartPre")[0], &env);
    let start = expand(unit_values(&unit, "ExecStart")[0], &env);
    assert_eq!(start[..3], ["/usr/sbin/sesamed", "-c", "/etc/sesame/knockd.conf"], "{start:?}");
    assert!(start.contains(&lab.server_if), "SESAMED_OPTS not expanded: {start:?}");
    run(root.chroot().args(&pre)).unwrap_or_else(|e| panic!("ExecStartPre: {e}"));

    // The service's main process: in the server namespace, chrooted into the root (with
    // /proc and that namespace's /sys mounted there, in `ip netns exec`'s own mount
    // namespace, so nothing outlives it), under the test's NOTIFY_SOCKET.
    let sock_path = root.join("/run/sesame-notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && exec chroot {r} \"$@\"",
        r = root.0.display()
    );
    let stderr = root.join("/var/log/sesamed.stderr");
    let mut daemon = ChildGuard::spawn(
        lab.server
            .command("/bin/sh")
            .args(["-c", &script, "sh"])
            .args(&start)
            .env("NOTIFY_SOCKET", "/run/sesame-notify.sock")
            .env("WATCHDOG_USEC", "2000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap()),
    )
    .unwrap();
    let diag = |root: &Root| {
        format!(
            "log:\n{}\nstderr:\n{}",
            root.read("/var/log/sesame.log"),
            root.read("/var/log/sesamed.stderr")
        )
    };
    let mut got = Vec::new();
    let ready = wait_until(Duration::from_secs(15), || {
        receive(&sock, &mut got);
        got.iter().any(|(_, m)| m == "READY=1")
    });
    assert!(ready, "no READY=1; got {got:?}\n{}", diag(&root));
    assert!(daemon.is_running());
    let pid = daemon.id();

    // It answers a knock from the peer namespace.
    let granted = root.join("/var/log/sesame-granted");
    let want = format!("open {}", lab.client_v4);
    let opened = knock_until(&lab, || std::fs::read_to_string(&granted).unwrap_or_default().contains(&want));
    assert!(opened, "no grant in {}\n{}", granted.display(), diag(&root));

    // Pets every second (WATCHDOG_USEC/2) while all is well.
    let t0 = Instant::now();
    collect(&sock, &mut got, Duration::from_secs(5));
    let healthy = pets_between(&got, t0, Instant::now());
    assert!(healthy >= 2, "only {healthy} WATCHDOG=1 in 5 s: {got:?}\n{}", diag(&root));

    // One capture worker held stopped: the petting stops within a few periods, while
    // the rest of the daemon runs on (it says so in its log).
    let tid = thread(pid, "sesame-cap1").unwrap_or_else(|| panic!("no sesame-cap1 thread in {pid}"));
    let held = Held::stop(tid);
    let stopped_at = Instant::now();
    collect(&sock, &mut got, Duration::from_secs(3));
    let quiet_from = Instant::now();
    collect(&sock, &mut got, Duration::from_secs(6));
    let while_stuck = pets_between(&got, quiet_from, Instant::now());
    assert_eq!(while_stuck, 0, "WATCHDOG=1 went on with a worker stopped: {got:?}\n{}", diag(&root));
    assert!(
        root.read("/var/log/sesame.log")
            .contains("warning: watchdog: a capture worker or the firewall executor is stuck"),
        "{}",
        diag(&root)
    );
    assert!(daemon.is_running());
    eprintln!(
        "watchdog: {healthy} pets in 5 s healthy; last pet {:?} after the stop; none for 6 s from {:?}",
        got.iter()
            .rev()
            .find(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| t.saturating_duration_since(stopped_at)),
        quiet_from - stopped_at
    );

    // Let go: it pets again.
    drop(held);
    let resumed = Instant::now();
    let again = wait_until(Duration::from_secs(10), || {
        receive(&sock, &mut got);
        pets_between(&got, resumed, Instant::now()) > 0
    });
    assert!(again, "no WATCHDOG=1 after the worker went on: {got:?}\n{}", diag(&root));

    // `systemctl reload` (ExecReload= sends SIGHUP): RELOADING=1, then READY=1 again.
    let before = got.len();
    daemon.signal("HUP").unwrap();
    let reloaded = wait_until(Duration::from_secs(10), || {
        receive(&sock, &mut got);
        let after: Vec<&str> =
            got[before..].iter().map(|(_, m)| m.as_str()).filter(|m| *m != "WATCHDOG=1").collect();
        after.starts_with(&["RELOADING=1", "READY=1"])
    });
    assert!(reloaded, "no RELOADING=1, READY=1 after SIGHUP: {:?}\n{}", &got[before..], diag(&root));

    // Stop as systemd does: SIGTERM, STOPPING=1, exit 0.
    daemon.signal("TERM").unwrap();
    let status = daemon.wait_timeout(Duration::from_secs(15)).unwrap().expect("sesamed exits after SIGTERM");
    receive(&sock, &mut got);
    assert!(status.success(), "{status}\n{}", diag(&root));
    assert!(got.iter().any(|(_, m)| m == "STOPPING=1"), "no STOPPING=1: {got:?}");
}

/// The test's own cgroup in each hierarchy that systemd-nspawn and the systemd it boots
/// use (the named v1 `systemd` one and the unified v2 one, whichever the host mounts):
/// nspawn puts its `supervisor` and `payload` cgroups under it rather than at the
/// host's root. On drop every process still in it is killed (a container's init
/// outlives nspawn's death) and the directories are removed.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn new(name: &str) -> Cgroups {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
        let mut dirs = Cgroups(Vec::new());
        for line in mounts.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (point, kind, opts) = (f[1], f[2], f[3]);
            if kind == "cgroup2" || (kind == "cgroup" && opts.split(',').any(|o| o == "name=systemd")) {
                let dir = Path::new(point).join(name);
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                dirs.0.push(dir);
            }
        }
        assert!(!dirs.0.is_empty(), "no cgroup2 or name=systemd hierarchy mounted:\n{mounts}");
        dirs
    }

    /// Every directory of the trees, deepest first.
    fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
            out.push(dir.to_owned());
        }
        let mut out = Vec::new();
        for d in &self.0 {
            walk(d, &mut out);
        }
        out
    }

    fn procs(&self) -> Vec<libc::pid_t> {
        let mut pids: Vec<libc::pid_t> = self
            .tree()
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.procs();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) on a pid listed in the test's own cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..50 {
            for d in self.tree() {
                let _ = std::fs::remove_dir(&d);
            }
            if self.0.iter().all(|d| !d.exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: cgroups left behind: {:?}", self.0);
    }
}

/// The installed root booted with its own systemd as PID 1, by systemd-nspawn, in a
/// lab namespace's network (nspawn shares its caller's). nspawn runs in a mount
/// namespace of its own with a tmpfs over /run, so its /run/systemd/nspawn is not the
/// host's (not `ip netns exec`'s, whose fresh /sys has no cgroup hierarchies for
/// nspawn). nspawn keeps CAP_NET_ADMIN only for a network it made itself, so it is
/// granted here, as a real machine's systemd has it (the firewall backends need it).
/// Dropped, everything in the container is killed.
struct Booted {
    nspawn: ChildGuard,
    /// The container's PID 1, as the host sees it.
    init: u32,
    _cgroups: Cgroups,
}

impl Booted {
    fn boot(root: &Root, ns: &Netns) -> Booted {
        let nspawn = which("systemd-nspawn").expect("systemd-nspawn (apt-get install systemd-container)");
        let cgroups = Cgroups::new(&unique_name("nsp"));
        let script = r#"root=$1; nspawn=$2; shift 2
for cg in "$@"; do echo $$ > "$cg/cgroup.procs"; done
mount -t tmpfs -o mode=0755 sesame-lab /run
exec "$nspawn" -q -D "$root" --register=no --keep-unit --boot --console=pipe --capability=CAP_NET_ADMIN"#;
        let console = File::create(root.join("/var/log/nspawn-console")).unwrap();
        let guard = ChildGuard::spawn(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .args(["unshare", "--mount", "--propagation", "slave", "/bin/sh", "-c", script, "sh"])
                .arg(&root.0)
                .arg(nspawn)
                .args(&cgroups.0)
                .stdin(Stdio::null())
                .stdout(console.try_clone().unwrap())
                .stderr(console),
        )
        .unwrap();
        let mut booted = Booted { nspawn: guard, init: 0, _cgroups: cgroups };
        let pid = booted.nspawn.id();
        let found = wait_until(Duration::from_secs(30), || {
            booted.init = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
                .find(|c| {
                    std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "systemd")
                })
                .unwrap_or(0);
            booted.init != 0
        });
        assert!(found, "systemd-nspawn started no systemd:\n{}", root.read("/var/log/nspawn-console"));
        let mut state = String::new();
        let up = wait_until(Duration::from_secs(60), || {
            state = booted.output(&["systemctl", "is-system-running"]);
            matches!(state.trim(), "running" | "degraded")
        });
        assert!(up, "the container's systemd is {state:?}:\n{}", root.read("/var/log/nspawn-console"));
        if state.trim() == "degraded" {
            eprintln!("container degraded: {}", booted.output(&["systemctl", "--failed", "--no-pager"]));
        }
        booted
    }

    /// A command in the container (every namespace of its PID 1).
    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-a"])
            .args(argv)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        c
    }

    fn output(&self, argv: &[&str]) -> String {
        let out = self.command(argv).output().expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit's properties, from `systemctl show`.
    fn show(&self, unit: &str) -> HashMap<String, String> {
        self.output(&["systemctl", "show", unit, "-p", "ActiveState,SubState,MainPID,NRestarts,Result"])
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    /// Asserts that `unit` runs on as `main_pid` with `restarts` restarts for `d`.
    fn stays_up(
        &self,
        unit: &str,
        main_pid: &str,
        restarts: &str,
        d: Duration,
        diag: &dyn Fn(&Booted) -> String,
    ) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let p = self.show(unit);
            let now = (p["ActiveState"].as_str(), p["MainPID"].as_str(), p["NRestarts"].as_str());
            assert_eq!(now, ("active", main_pid, restarts), "{unit} did not stay up: {p:?}\n{}", diag(self));
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn journal(&self, unit: &str) -> String {
        self.output(&["journalctl", "-u", unit, "--no-pager", "-o", "short-monotonic"])
    }

    /// The host's pid of the container's process `inner` (the last `NSpid:` field of a
    /// process in the container's pid namespace).
    fn host_pid(&self, inner: &str) -> Option<u32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init)).ok()?;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()? != ns {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            (nspid.split_whitespace().last()? == inner).then_some(pid)
        })
    }
}

#[test]
fn under_systemd_the_watchdog_restarts_sesamed_when_a_capture_worker_or_the_executor_is_stuck() {
    if !require_root(
        "under_systemd_the_watchdog_restarts_sesamed_when_a_capture_worker_or_the_executor_is_stuck",
    ) {
        return;
    }
    let Some(root) = installed() else { return };
    let lab = Lab::new("pw").unwrap();
    configure(&root, &lab.server_if);
    // The packaged WatchdogSec=30s, shortened by a drop-in as an operator would, so
    // the test does not wait half a minute.
    let dropin = root.join("/etc/systemd/system/sesamed.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(dropin.join("watchdog.conf"), "[Service]\nWatchdogSec=3s\n").unwrap();

    let os = Booted::boot(&root, &lab.server);
    let enable = os.command(&["systemctl", "enable", "--now", "sesamed.service"]).output().unwrap();
    let diag = |os: &Booted| {
        format!(
            "journal:\n{}\nsesame.log:\n{}",
            os.journal("sesamed.service"),
            root.read("/var/log/sesame.log")
        )
    };
    assert!(
        enable.status.success(),
        "systemctl enable --now: {}\n{}",
        String::from_utf8_lossy(&enable.stderr),
        diag(&os)
    );
    let props = os.show("sesamed.service");
    assert_eq!(props["ActiveState"], "active", "{props:?}\n{}", diag(&os));
    let first = props["MainPID"].clone();
    let host_first = os.host_pid(&first).unwrap_or_else(|| panic!("no host pid for MainPID {first}"));

    // It answers a knock under the hardened unit.
    let granted = root.join("/var/log/sesame-granted");
    let want = format!("open {}", lab.client_v4);
    assert!(
        knock_until(&lab, || std::fs::read_to_string(&granted).unwrap_or_default().contains(&want)),
        "no grant\n{}",
        diag(&os)
    );

    // Healthy, it pets in time: no restart over twice WatchdogSec.
    os.stays_up("sesamed.service", &first, "0", Duration::from_secs(6), &diag);

    // Hold one capture worker: the daemon stops petting, systemd's watchdog fires,
    // kills it (SIGABRT) and restarts it.
    let tid = thread(host_first, "sesame-cap1").unwrap_or_else(|| panic!("no sesame-cap1 in {host_first}"));
    let held = Held::stop(tid);
    let stopped = Instant::now();
    let mut props = HashMap::new();
    let restarted = wait_until(Duration::from_secs(40), || {
        held.exited();
        props = os.show("sesamed.service");
        props["NRestarts"] != "0" && props["ActiveState"] == "active" && props["MainPID"] != first
    });
    let took = stopped.elapsed();
    assert!(restarted, "not restarted: {props:?}\n{}", diag(&os));
    drop(held);
    let journal = os.journal("sesamed.service");
    for line in [
        "sesamed.service: Watchdog timeout (limit 3s)!",
        "Killing process",
        "with signal SIGABRT",
        "sesamed.service: Failed with result 'watchdog'.",
        "sesamed.service: Scheduled restart job",
    ] {
        assert!(journal.contains(line), "no {line:?} in the journal\n{}", diag(&os));
    }
    assert_eq!(props["NRestarts"], "1", "{props:?}");
    assert!(!Path::new(&format!("/proc/{host_first}")).exists(), "the stuck sesamed {host_first} still runs");
    let log = root.read("/var/log/sesame.log");
    assert!(
        log.contains("warning: watchdog: a capture worker or the firewall executor is stuck"),
        "{}",
        diag(&os)
    );
    eprintln!(
        "watchdog: sesamed {first} (host {host_first}) restarted as {} {took:?} after its worker stopped\n{}",
        props["MainPID"],
        journal.lines().filter(|l| l.contains("systemd[1]")).collect::<Vec<_>>().join("\n")
    );

    // The new daemon took over the grant from the journal (StateDirectory= survives
    // the restart) and answers the next knock.
    let took_over = wait_until(Duration::from_secs(10), || {
        root.read("/var/log/sesame.log").contains("openSSH: access open from before the restart")
    });
    assert!(took_over, "the restarted daemon did not take over the grant\n{}", diag(&os));
    assert!(
        knock_until(&lab, || root
            .read("/var/log/sesame.log")
            .contains("openSSH: access already open, extended")),
        "the restarted daemon did not answer a knock\n{}",
        diag(&os)
    );

    let second = props["MainPID"].clone();
    os.stays_up("sesamed.service", &second, "1", Duration::from_secs(6), &diag);

    // Hold the firewall executor of the new daemon (its capture workers run on): the
    // watchdog fires again and systemd restarts it a second time.
    let host_second = os.host_pid(&second).unwrap_or_else(|| panic!("no host pid for MainPID {second}"));
    let tid = thread(host_second, "sesame-exec").unwrap_or_else(|| panic!("no sesame-exec in {host_second}"));
    let held = Held::stop(tid);
    let stopped = Instant::now();
    let restarted = wait_until(Duration::from_secs(40), || {
        held.exited();
        props = os.show("sesamed.service");
        props["NRestarts"] == "2" && props["ActiveState"] == "active" && props["MainPID"] != second
    });
    let took = stopped.elapsed();
    assert!(restarted, "not restarted with the executor stuck: {props:?}\n{}", diag(&os));
    drop(held);
    let journal = os.journal("sesamed.service");
    assert_eq!(
        journal.matches("sesamed.service: Failed with result 'watchdog'.").count(),
        2,
        "two watchdog failures expected\n{}",
        diag(&os)
    );
    assert!(
        !Path::new(&format!("/proc/{host_second}")).exists(),
        "the stuck sesamed {host_second} still runs"
    );
    eprintln!(
        "watchdog: sesamed {second} restarted as {} {took:?} after its executor stopped",
        props["MainPID"]
    );
    let third = props["MainPID"].clone();
    let want_open = format!("{}: openSSH: OPEN SESAME", lab.client_v4);
    let opens_before = root.read("/var/log/sesame.log").matches(&want_open).count();
    assert!(
        knock_until(&lab, || root.read("/var/log/sesame.log").matches(&want_open).count() > opens_before),
        "the daemon restarted after the executor hold did not answer a knock\n{}",
        diag(&os)
    );
    os.stays_up("sesamed.service", &third, "2", Duration::from_secs(4), &diag);

    // `systemctl stop`: a clean stop, not a failure.
    let stop = os.command(&["systemctl", "stop", "sesamed.service"]).output().unwrap();
    assert!(stop.status.success(), "systemctl stop: {}", String::from_utf8_lossy(&stop.stderr));
    let props = os.show("sesamed.service");
    assert_eq!(
        (props["ActiveState"].as_str(), props["Result"].as_str()),
        ("inactive", "success"),
        "{props:?}\n{}",
        diag(&os)
    );
}

/// The lab's door as a TOML config whose grants go through `backend` (the interface
/// comes from SESAMED_OPTS): 4 s grants of 22/tcp after the knock `knock_until` sends.
fn backend_config(backend: &str) -> String {
    format!(
        "[options]\nlog_file = \"/var/log/sesame.log\"\n\n[firewall]\nbackend = \"{backend}\"\n\n\
         [[door]]\nname = \"ssh\"\nsequence = [\"7000\", \"8000\", \"9000\"]\nseq_timeout = 5\n\
         tcp_flags = [\"syn\"]\ncmd_timeout = 4\nopen = [\"22/tcp\"]\n"
    )
}

#[test]
fn under_systemd_the_hardened_unit_lets_every_backend_open_and_close() {
    if !require_root("under_systemd_the_hardened_unit_lets_every_backend_open_and_close") {
        return;
    }
    let Some(root) = installed() else { return };
    let lab = Lab::new("pb").unwrap();
    configure(&root, &lab.server_if);
    let mut defaults = root.read("/etc/default/sesame");
    defaults.push_str("SESAME_CONFIG=/etc/sesame/lab.toml\n");
    std::fs::write(root.join("/etc/default/sesame"), defaults).unwrap();
    // The container's /proc/sys is read-only and it loads no modules: ufw is told to
    // do neither (as the lab's ufw jail does), and to log nothing.
    let ufw_defaults: String = root
        .read("/etc/default/ufw")
        .lines()
        .filter(|l| !l.starts_with("IPT_SYSCTL=") && !l.starts_with("IPT_MODULES="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(root.join("/etc/default/ufw"), ufw_defaults + "IPT_SYSCTL=\nIPT_MODULES=\"\"\n").unwrap();

    let os = Booted::boot(&root, &lab.server);
    let diag = |os: &Booted| {
        format!(
            "journal:\n{}\nsesame.log:\n{}",
            os.journal("sesamed.service"),
            root.read("/var/log/sesame.log")
        )
    };
    let sh = |script: &str| {
        let out = os.command(&["/bin/sh", "-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let client = lab.client_v4.to_string();
    let systemctl = |args: &[&str]| {
        let out = os.command(&[&["systemctl"], args].concat()).output().unwrap();
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            diag(&os)
        );
    };

    for (backend, list) in
        [("nftables", "nft list ruleset"), ("iptables", "iptables-save"), ("ufw", "ufw status")]
    {
        if backend == "ufw" {
            sh("ufw default deny incoming && ufw --force enable");
        }
        std::fs::write(root.join("/etc/sesame/lab.toml"), backend_config(backend)).unwrap();
        systemctl(&["restart", "sesamed.service"]);
        let open = || sh(list).contains(&client);
        let opened = Instant::now();
        assert!(knock_until(&lab, open), "{backend}: no grant under the unit:\n{}\n{}", sh(list), diag(&os));
        let closed = wait_until(Duration::from_secs(15), || !open());
        assert!(closed, "{backend}: the grant did not close:\n{}\n{}", sh(list), diag(&os));
        eprintln!("{backend}: opened and closed under the hardened unit in {:?}", opened.elapsed());
        let log = root.read("/var/log/sesame.log");
        assert!(!log.contains("error:"), "{backend}: {}", diag(&os));
        systemctl(&["stop", "sesamed.service"]);
        assert_eq!(os.show("sesamed.service")["Result"], "success", "{}", diag(&os));
    }

    // The seed article's failure, for contrast: Debian's knockd unit has
    // ProtectSystem=full, which leaves /etc read-only; without /etc/ufw among the
    // write paths, ufw cannot write its rules file and the knock opens nothing.
    let dropin = root.join("/etc/systemd/system/sesamed.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("knockd-like.conf"),
        "[Service]\nProtectSystem=full\nReadWritePaths=\nReadWritePaths=/var/lib/sesame /var/log /run\n",
    )
    .unwrap();
    systemctl(&["daemon-reload"]);
    systemctl(&["restart", "sesamed.service"]);
    let failed = knock_until(&lab, || root.read("/var/log/sesame.log").contains("ssh: ufw: open failed"));
    assert!(failed, "ufw did not fail with /etc/ufw read-only:\n{}", diag(&os));
    assert!(!sh("ufw status").contains(&client), "{}", sh("ufw status"));
    let line =
        root.read("/var/log/sesame.log").lines().find(|l| l.contains("ufw: open failed")).unwrap().to_owned();
    eprintln!("with ProtectSystem=full and no /etc/ufw: {line}");
}
