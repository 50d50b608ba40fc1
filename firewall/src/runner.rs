//! Running a command line: the only way the firewall crate starts a process.
//!
//! Each command runs in a process group of its own, so that a timeout kills
//! everything it started (`sh -c 'a | b'`, a `sleep` the shell forked), not just the
//! shell.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Success,
    /// A non-zero exit status (death by signal N reads as 128 + N, as a shell reports it).
    Failed(i32),
    /// Still running after the timeout: its whole process group was killed.
    TimedOut,
}

/// Runs command lines. Production uses [`ShellRunner`]; tests record instead. Called
/// from several pool threads at once, hence `&self` and `Sync`.
pub trait CommandRunner: Send + Sync + 'static {
    /// Runs `command`, killing it (and whatever it started) after `timeout`.
    fn run(&self, command: &str, timeout: Duration) -> io::Result<Outcome>;
}

/// Runs a command with `/bin/sh -c`, as knockd does (through `system(3)`), waiting for
/// it at most the timeout. Its output goes where the daemon's goes; its stdin is closed.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShellRunner;

/// Longest pause between two looks at a running command: bounds how late a finished
/// command is noticed (and so how long its concurrency slot stays taken).
const MAX_POLL: Duration = Duration::from_millis(10);

impl CommandRunner for ShellRunner {
    fn run(&self, command: &str, timeout: Duration) -> io::Result<Outcome> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            // Its own group (pgid = its pid), so the timeout can kill the whole tree.
            .process_group(0)
            .spawn()?;
        match wait_timeout(&mut child, timeout)? {
            Some(status) => Ok(outcome(status)),
            None => {
                kill_group(&child);
                // Reap the shell; it cannot outlive SIGKILL.
                child.wait()?;
                Ok(Outcome::TimedOut)
            }
        }
    }
}

fn outcome(status: ExitStatus) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Success,
        Some(code) => Outcome::Failed(code),
        None => Outcome::Failed(128 + status.signal().unwrap_or(0)),
    }
}

/// Waits for `child` up to `timeout`; `None` if it is still running. Polls with a
/// growing pause (a quick command is noticed within about its own run time) because
/// std has no wait with a timeout and a thread per command would cost more.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// SIGKILL to the child's process group. The child is not reaped yet, so its pid (the
/// group's id) cannot have been reused. The group may already be gone: that is fine.
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn shell_runner_reports_exit_codes() {
        let r = ShellRunner;
        assert_eq!(r.run("true", LONG).unwrap(), Outcome::Success);
        assert_eq!(r.run("exit 3", LONG).unwrap(), Outcome::Failed(3));
        assert_eq!(r.run("kill -9 $$", LONG).unwrap(), Outcome::Failed(137));
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("sesame-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        // The shell forks `sleep` (it is not the last command) and writes its pid.
        let cmd = format!("sleep 3600 & echo $! > {}; wait", pid_file.display());
        let t = Instant::now();
        assert_eq!(ShellRunner.run(&cmd, Duration::from_millis(300)).unwrap(), Outcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(gone_within(pid, Duration::from_secs(5)), "sleep {pid} survived its group's kill");
    }

    /// Whether `pid` is gone or a zombie (killed, waiting for whoever reaps orphans).
    pub(crate) fn gone_within(pid: i32, limit: Duration) -> bool {
        let t = Instant::now();
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                    if matches!(state, Some("Z") | Some("X")) {
                        return true;
                    }
                }
            }
            if t.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
