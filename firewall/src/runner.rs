//! Running a command line: the only way the firewall crate touches the system.

use std::io;
use std::process::{Command, Stdio};

/// How a finished command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Success,
    /// A non-zero exit status (a shell reports death by signal N as 128 + N).
    Failed(i32),
}

/// Runs command lines. Production uses [`ShellRunner`]; tests may record instead.
pub trait CommandRunner: Send + 'static {
    fn run(&mut self, command: &str) -> io::Result<Outcome>;
}

/// Runs a command with `/bin/sh -c`, as knockd does (through `system(3)`), waiting for it.
/// Its output goes where the daemon's goes; its stdin is closed.
#[derive(Debug, Default)]
pub struct ShellRunner;

impl CommandRunner for ShellRunner {
    fn run(&mut self, command: &str) -> io::Result<Outcome> {
        let status = Command::new("/bin/sh").arg("-c").arg(command).stdin(Stdio::null()).status()?;
        Ok(match status.code() {
            Some(0) => Outcome::Success,
            Some(code) => Outcome::Failed(code),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Outcome::Failed(128 + status.signal().unwrap_or(0))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_runner_reports_exit_codes() {
        let mut r = ShellRunner;
        assert_eq!(r.run("true").unwrap(), Outcome::Success);
        assert_eq!(r.run("exit 3").unwrap(), Outcome::Failed(3));
        assert_eq!(r.run("kill -9 $$").unwrap(), Outcome::Failed(137));
    }
}
