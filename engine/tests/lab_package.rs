//! The Debian package, end to end: built with cargo-deb (or `SESAME_DEB`), installed
//! with dpkg into a fresh Debian bookworm root (debootstrap minbase, cached under
//! target/), its unit checked with `systemd-analyze verify`, and its `ExecStartPre=`
//! and `ExecStart=` lines (parsed from the installed unit, `$SESAMED_OPTS` expanded from
//! the installed /etc/default/sesame) run in that root inside a network namespace:
//! the daemon answers a knock from a peer namespace, says `READY=1` to the test's own
//! `NOTIFY_SOCKET`, pets the watchdog, and stops petting it while one capture worker
//! thread is held stopped.
//!
//! Needs root and debootstrap; without a way to the Debian mirror (first run only,
//! then the tarball is cached) it fails, unless `SESAME_DEBOOTSTRAP=skip` allows
//! skipping.

use sesame_lab::{require_root, run, unique_name, wait_until, which, ChildGuard, Lab};
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
/// --root`) and procps (`/bin/kill`, the unit's `ExecReload=`).
const INCLUDE: &str = "systemd,procps";

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
    let tarball = dir.join(format!("{SUITE}-minbase-systemd.tgz"));
    if !tarball.exists() {
        let part = dir.join(format!("{SUITE}-minbase-systemd.tgz.part"));
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
    let Some(base) = base_root() else { return };
    let root = Root::copy_of(&base);
    let debs = root.join("tmp/debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = deb(&debs);
    if !deb.starts_with(&root.0) {
        std::fs::copy(&deb, debs.join("sesame.deb")).unwrap();
    }
    let inside = format!(
        "/tmp/debs/{}",
        if deb.starts_with(&root.0) {
            deb.file_name().unwrap().to_str().unwrap().to_owned()
        } else {
            "sesame.deb".to_owned()
        }
    );

    // dpkg, as on a real machine: in the fresh root.
    run(root.chroot().args(["dpkg", "-i", &inside])).unwrap_or_else(|e| panic!("{e}"));
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
    // What an admin does: pick the interface, write the door's command.
    let defaults = root.join("/etc/default/sesame");
    let mut text = root.read("/etc/default/sesame");
    text.push_str(&format!("SESAMED_OPTS=\"-i {} --workers 2\"\n", lab.server_if));
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
    let opened = (0..5).any(|_| {
        let out = lab
            .client
            .command(SESAME)
            .args(["knock", &lab.server_v4.to_string(), "7000", "8000", "9000"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "knock: {}", String::from_utf8_lossy(&out.stderr));
        wait_until(Duration::from_secs(3), || {
            std::fs::read_to_string(&granted).unwrap_or_default().contains(&want)
        })
    });
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
