//! What the tool-driven backends (iptables, ufw) share: the one narrow interface they
//! touch the system through ([`Run`]: run an argv, get its output), the real runner
//! ([`SystemRunner`]: the program itself, no shell, with a timeout), and the way a door's
//! name is written into a rule's comment so it reads back exactly.

use super::BackendError;
use std::io::{self, Read};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs one command given as an argv (`argv[0]` is the program) and returns how it
/// ended, whatever its exit status. Production uses [`SystemRunner`]; unit tests pass a
/// fake that records the argv and answers from fixtures.
pub trait Run: Send + Sync + 'static {
    fn run(&self, argv: &[&str]) -> io::Result<Output>;
}

impl<T: Run + ?Sized> Run for Arc<T> {
    fn run(&self, argv: &[&str]) -> io::Result<Output> {
        (**self).run(argv)
    }
}

impl<T: Run + ?Sized> Run for Box<T> {
    fn run(&self, argv: &[&str]) -> io::Result<Output> {
        (**self).run(argv)
    }
}

/// Runs the program directly (no shell: every argument reaches it as one argv element),
/// with stdin closed, stdout and stderr captured, and `LC_ALL=C` so the tools answer in
/// the words the backends parse. A command still running after the timeout is killed
/// and reported as [`io::ErrorKind::TimedOut`].
#[derive(Clone, Debug)]
pub struct SystemRunner {
    timeout: Duration,
}

impl SystemRunner {
    /// The default timeout: generous, since ufw is a Python program that reloads its
    /// whole ruleset on a busy machine.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new() -> SystemRunner {
        SystemRunner { timeout: Self::DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(timeout: Duration) -> SystemRunner {
        SystemRunner { timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for SystemRunner {
    fn default() -> SystemRunner {
        SystemRunner::new()
    }
}

impl Run for SystemRunner {
    fn run(&self, argv: &[&str]) -> io::Result<Output> {
        let (program, args) =
            argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Drain both pipes on their own threads, so a chatty tool never blocks on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if let Some(mut pipe) = pipe {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = pipe.read_to_end(&mut buf);
                    let _ = tx.send(buf);
                });
            } else {
                let _ = tx.send(Vec::new());
            }
            rx
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("`{}` did not finish within {:?} and was killed", argv.join(" "), self.timeout),
                ));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        // The pipes close when the program exits, unless a child it left behind holds
        // them; do not wait for such a straggler past the deadline.
        let grace = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let stdout = stdout.recv_timeout(grace).unwrap_or_default();
        let stderr = stderr.recv_timeout(grace).unwrap_or_default();
        Ok(Output { status, stdout, stderr })
    }
}

/// A runner, the argv prefix put before every program (`ip netns exec NAME`, say), and
/// the backend's name for messages: how a backend calls its tools.
#[derive(Clone)]
pub(crate) struct Tool {
    pub backend: &'static str,
    pub runner: Arc<dyn Run>,
    pub prefix: Vec<String>,
}

/// What a finished command said.
pub(crate) struct Said {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Said {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl Tool {
    pub fn new(backend: &'static str, runner: Arc<dyn Run>) -> Tool {
        Tool { backend, runner, prefix: Vec::new() }
    }

    /// Runs `program args`, whatever its exit status; only a failure to run it at all
    /// (not found, timed out) is an error.
    pub fn run(&self, op: &str, program: &str, args: &[&str]) -> Result<Said, BackendError> {
        let mut argv: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        argv.push(program);
        argv.extend_from_slice(args);
        match self.runner.run(&argv) {
            Ok(out) => Ok(Said {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Err(source) => Err(BackendError::Io {
                backend: self.backend,
                op: format!("{op}: running `{}`", argv.join(" ")),
                source,
            }),
        }
    }

    /// Runs `program args` and fails unless it exits with status 0; returns its stdout.
    pub fn ok(&self, op: &str, program: &str, args: &[&str]) -> Result<String, BackendError> {
        let said = self.run(op, program, args)?;
        if said.ok() {
            Ok(said.stdout)
        } else {
            Err(self.failed(op, program, args, &said))
        }
    }

    /// The error for a command that ran and failed.
    pub fn failed(&self, op: &str, program: &str, args: &[&str], said: &Said) -> BackendError {
        let status = match said.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_owned(),
        };
        let mut detail = format!("`{program} {}` ended with {status}", args.join(" "));
        let msg = if said.stderr.trim().is_empty() { said.stdout.trim() } else { said.stderr.trim() };
        if !msg.is_empty() {
            detail.push_str(": ");
            detail.push_str(msg);
        }
        BackendError::Failed { backend: self.backend, op: op.to_owned(), detail }
    }
}

/// The longest comment iptables takes (the kernel keeps 256 bytes with the final NUL).
pub const MAX_COMMENT: usize = 255;

/// The longest encoded door name that fits a comment whatever the expiry:
/// `sesame door=NAME expires=` and up to 20 digits.
pub const MAX_ENCODED_DOOR: usize = MAX_COMMENT - "sesame door= expires=".len() - 20;

/// A door's name as written into a comment: letters, digits and `-._~` stay, every other
/// byte (space, quotes, `%`, `#`, non-ASCII UTF-8) becomes `%XX`. The result has no
/// character a shell, iptables' quoting or ufw's comment parser treats specially, and
/// [`decode_door`] gives back exactly the name.
pub fn encode_door(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_door`]; `None` for anything it could not have written
/// (lowercase hex, a needless escape), so what decodes re-encodes to the very same text.
pub fn decode_door(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (encode_door(&name) == encoded).then_some(name)
}

/// Encodes a door's name, refusing one too long for a rule's comment.
pub(crate) fn door_for_comment(backend: &'static str, door: &str) -> Result<String, BackendError> {
    let enc = encode_door(door);
    if enc.len() > MAX_ENCODED_DOOR {
        return Err(BackendError::Unavailable {
            backend,
            what: format!(
                "door name {door:?} is too long for a rule comment ({} bytes encoded, at most {MAX_ENCODED_DOOR})",
                enc.len()
            ),
        });
    }
    Ok(enc)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A [`Run`] that records every argv and answers from a responder.
    use super::Run;
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};
    use std::sync::Mutex;

    /// An answer: exit code, stdout, stderr. `Err` for a program that cannot be run.
    pub type Reply = io::Result<(i32, String, String)>;

    pub fn ok(stdout: &str) -> Reply {
        Ok((0, stdout.to_owned(), String::new()))
    }

    pub fn fail(code: i32, stderr: &str) -> Reply {
        Ok((code, String::new(), stderr.to_owned()))
    }

    type Responder = Box<dyn FnMut(&str) -> Reply + Send>;

    pub struct Fake {
        calls: Mutex<Vec<Vec<String>>>,
        respond: Mutex<Responder>,
    }

    impl Fake {
        /// `respond` gets the argv joined with spaces.
        pub fn new(respond: impl FnMut(&str) -> Reply + Send + 'static) -> Fake {
            Fake { calls: Mutex::new(Vec::new()), respond: Mutex::new(Box::new(respond)) }
        }

        /// Every argv run so far, joined with spaces, and forgets them.
        pub fn take(&self) -> Vec<String> {
            self.take_raw().iter().map(|a| a.join(" ")).collect()
        }

        /// Every argv run so far, element by element (to check quoting), and forgets them.
        pub fn take_raw(&self) -> Vec<Vec<String>> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Run for Fake {
        fn run(&self, argv: &[&str]) -> io::Result<Output> {
            self.calls.lock().unwrap().push(argv.iter().map(|s| s.to_string()).collect());
            let (code, stdout, stderr) = (self.respond.lock().unwrap())(&argv.join(" "))?;
            Ok(Output {
                status: ExitStatus::from_raw(code << 8),
                stdout: stdout.into_bytes(),
                stderr: stderr.into_bytes(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_names_round_trip_through_comments() {
        for name in ["openSSH", "open SSH", "a\"b\\c'd", "100%", "#x", "ドア", "", "-._~"] {
            let enc = encode_door(name);
            assert!(
                enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "{name:?} -> {enc:?}"
            );
            assert_eq!(decode_door(&enc).as_deref(), Some(name), "{enc}");
        }
        assert_eq!(encode_door("open SSH"), "open%20SSH");
        assert_eq!(encode_door("a\"b'c"), "a%22b%27c");
        assert_eq!(encode_door("ä"), "%C3%A4");
        for bad in ["a b", "%", "%4", "%zz", "a\"", "%FF", "%41", "%c3%a4", "%2"] {
            assert_eq!(decode_door(bad), None, "{bad}");
        }
    }

    #[test]
    fn long_door_names_are_refused() {
        let fits = "d".repeat(MAX_ENCODED_DOOR);
        assert!(door_for_comment("iptables", &fits).is_ok());
        let err = door_for_comment("iptables", &format!("{fits}d")).unwrap_err().to_string();
        assert!(err.starts_with("iptables backend: door name"), "{err}");
        assert!(err.contains("too long"), "{err}");
        // Three bytes per space once encoded.
        assert!(door_for_comment("ufw", &" ".repeat(MAX_ENCODED_DOOR / 3 + 1)).is_err());
        let comment = format!("sesame door={fits} expires={}", u64::MAX);
        assert_eq!(comment.len(), MAX_COMMENT);
    }

    #[test]
    fn system_runner_runs_argv_without_a_shell() {
        let r = SystemRunner::new();
        let out = r.run(&["printf", "%s|%s", "a b", "$HOME;`x`"]).unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|$HOME;`x`");
        let out = r.run(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
        let out = r.run(&["sh", "-c", "echo $LC_ALL"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "C\n");
        let err = r.run(&["/nonexistent/sesame-tool"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(r.run(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn system_runner_kills_at_the_timeout() {
        let r = SystemRunner::with_timeout(Duration::from_millis(200));
        let start = Instant::now();
        let err = r.run(&["sleep", "30"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("`sleep 30` did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    }

    #[test]
    fn tool_errors_name_backend_op_and_command() {
        let fake = Arc::new(fake::Fake::new(|argv| {
            if argv.ends_with("missing") {
                Err(io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
            } else {
                fake::fail(1, "iptables: Bad rule.\n")
            }
        }));
        let mut tool = Tool::new("iptables", fake.clone());
        tool.prefix = vec!["ip".into(), "netns".into(), "exec".into(), "x".into()];
        let err = tool.ok("open", "iptables", &["-w", "10", "-D", "SESAME"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: open failed: `iptables -w 10 -D SESAME` ended with exit status 1: iptables: Bad rule."
        );
        let err = tool.ok("check", "missing", &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: check: running `ip netns exec x missing`: No such file or directory"
        );
        assert_eq!(fake.take(), ["ip netns exec x iptables -w 10 -D SESAME", "ip netns exec x missing"]);
    }
}
