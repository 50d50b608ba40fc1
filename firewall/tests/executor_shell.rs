//! The executor with the real shell (`/bin/sh`), no root needed: a hung command is
//! killed with its process group without holding up another door, and the grant
//! journal brings grants through a crash.

use crossbeam_channel::{unbounded, Receiver};
use sesame_firewall::{Action, Executor, ExecutorConfig, GrantRequest, Report, ShellRunner, Stats};
use sesame_lab::{wait_until, TempDir};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

fn no_backends(_: &str) -> Option<Arc<dyn sesame_firewall::backend::Backend>> {
    None
}

fn knock(door: &str, start: String, stop: Option<String>, timeout: Duration) -> GrantRequest {
    GrantRequest {
        door_name: door.into(),
        ip: IP,
        action: Action::Commands { start: Some(start), stop },
        timeout,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Whether `pid` is gone (or a zombie: dead, waiting for whoever reaps orphans).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, Some("Z") | Some("X"))
        }
    }
}

fn timed_out(rx: &Receiver<Report>, limit: Duration) -> Option<Report> {
    let deadline = Instant::now() + limit;
    while let Ok(r) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if matches!(r, Report::CommandTimedOut { .. }) {
            return Some(r);
        }
    }
    None
}

#[test]
fn a_hung_command_is_killed_and_holds_up_no_other_door() {
    let dir = TempDir::new("sfw").unwrap();
    let (pid_file, b_file) = (dir.join("a.pid"), dir.join("b.out"));
    let timeout = Duration::from_secs(2);
    let config = ExecutorConfig { command_timeout: timeout, state_dir: None, ..ExecutorConfig::default() };
    let (tx, rx) = unbounded();
    let ex = Executor::start(config, ShellRunner, &no_backends, tx).unwrap();

    // Door A hangs: the shell forks `sleep` (so it is not the shell itself) and waits.
    let a_cmd = format!("sleep 3600 & echo $! > {}; wait", pid_file.display());
    let a_at = Instant::now();
    ex.open(knock("a", a_cmd.clone(), None, Duration::from_secs(60))).unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&pid_file).ends_with('\n')), "door a never started");
    let pid: i32 = read(&pid_file).trim().parse().unwrap();

    // Door B's knock while A hangs: its start command runs at once.
    let b_at = Instant::now();
    let b_cmd = format!("echo open %IP% > {}", b_file.display());
    ex.open(knock("b", b_cmd, Some("true".into()), Duration::from_secs(60))).unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&b_file) == "open 198.18.0.2\n"));
    let b_took = b_at.elapsed();
    println!("door b applied {b_took:?} after its request, while door a hung");
    assert!(b_took < Duration::from_secs(1), "door b waited {b_took:?}");
    assert!(!gone(pid), "a's sleep should still run at this point");

    // A is killed at its timeout, whole group included, and reported.
    let report = timed_out(&rx, Duration::from_secs(15)).expect("no CommandTimedOut report");
    let a_took = a_at.elapsed();
    println!("door a reported timed out {a_took:?} after its request");
    assert_eq!(report, Report::CommandTimedOut { door_name: "a".into(), command: a_cmd, after: timeout });
    assert!(a_took >= timeout, "killed early, after {a_took:?}");
    assert!(wait_until(Duration::from_secs(5), || gone(pid)), "sleep {pid} outlived its command's timeout");
    let stats = ex.stats();
    assert_eq!((stats.timed_out, stats.opened), (1, 1), "{stats:?}");
    ex.shutdown();
}

#[test]
fn grants_survive_a_crash_and_each_stop_runs_once() {
    let dir = TempDir::new("sfw").unwrap();
    let state = dir.join("state");
    let out = dir.join("out");
    let config = ExecutorConfig {
        state_dir: Some(state.clone()),
        close_on_exit: false, // the crash: nothing is closed on the way out
        ..ExecutorConfig::default()
    };
    let door = |name: &str, secs| {
        knock(
            name,
            format!("echo open {name} >> {}", out.display()),
            Some(format!("echo stop {name} %IP% >> {}", out.display())),
            Duration::from_secs(secs),
        )
    };
    let (tx, _rx) = unbounded::<Report>();
    let first = Executor::start(config.clone(), ShellRunner, &no_backends, tx).unwrap();
    let t0 = Instant::now();
    first.open(door("x", 1)).unwrap(); // runs out while no daemon runs
    first.open(door("y", 4)).unwrap(); // still open at the restart
    assert!(wait_until(Duration::from_secs(5), || first.stats().opened == 2));
    first.shutdown();
    let mut lines: Vec<String> = read(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["open x", "open y"]);

    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed()));
    let (tx, rx) = unbounded();
    let restart = Instant::now();
    let second = Executor::start(
        ExecutorConfig { close_on_exit: true, ..config.clone() },
        ShellRunner,
        &no_backends,
        tx,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&out).contains("stop x")));
    let x_took = restart.elapsed();
    assert!(wait_until(Duration::from_secs(10), || read(&out).contains("stop y")));
    let y_at = t0.elapsed();
    println!("after the restart: x closed {x_took:?} after start, y {y_at:?} after its knock (timeout 4 s)");
    assert!(x_took < Duration::from_secs(1), "the expired grant closed {x_took:?} after start");
    assert!(
        y_at >= Duration::from_millis(3900) && y_at < Duration::from_secs(5),
        "the live grant closed at {y_at:?}, not at its time"
    );
    let reports: Vec<Report> = rx.try_iter().collect();
    assert!(reports.contains(&Report::ExpiredWhileDown { ip: IP, door_name: "x".into() }), "{reports:?}");
    assert!(reports.iter().any(|r| matches!(r, Report::Rearmed { door_name, .. } if door_name == "y")));
    // The stop command's line is written before its operation's end reaches the
    // scheduler thread, which counts it: wait for the count, do not race it.
    let counted = |s: Stats| (s.opened, s.closed, s.open_grants) == (0, 2, 0);
    wait_until(Duration::from_secs(5), || counted(second.stats()));
    let stats = second.stats();
    assert_eq!((stats.opened, stats.closed, stats.open_grants), (0, 2, 0), "{stats:?}");
    second.shutdown();

    // Each exactly once, nothing opened again; a third start finds nothing to do.
    let (tx, _rx) = unbounded::<Report>();
    let third = Executor::start(config, ShellRunner, &no_backends, tx).unwrap();
    assert_eq!(third.stats().open_grants, 0);
    third.shutdown();
    let mut lines: Vec<String> = read(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["open x", "open y", "stop x 198.18.0.2", "stop y 198.18.0.2"]);
}
