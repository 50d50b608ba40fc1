//! The executor's threads: a timer owning the [`GrantTable`] and a runner executing
//! commands one at a time, in the order the timer queued them.
//!
//! The capture threads only ever send a [`GrantRequest`], which never blocks on a
//! command. A slow start command delays later commands but not the timer, so every
//! stop is queued on time; since one runner executes in order, a grant's stop can
//! never overtake its start.

use crate::grants::{GrantTable, OpenAction};
use crate::runner::{CommandRunner, Outcome};
use crate::substitute;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::net::IpAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A successful knock, as the matcher reports it to the firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRequest {
    /// The door's identity: grants are keyed by it, never by its place in the file.
    pub door_name: String,
    pub ip: IpAddr,
    /// Command templates with `%IP%` not yet substituted.
    pub start: Option<String>,
    pub stop: Option<String>,
    pub timeout: Duration,
}

/// What the executor did, for the log. Each maps to one knockd log line or a
/// sesame-only line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `DOOR: running command: COMMAND`
    Running { door_name: String, command: String },
    /// `DOOR: command returned non-zero status code (N)`
    Failed { door_name: String, code: i32 },
    /// The shell could not be started at all (knockd: `error: command fork failed!`).
    SpawnFailed { door_name: String, error: String },
    /// `IP: DOOR: command timeout`, just before the stop command runs.
    Timeout { ip: IpAddr, door_name: String },
    /// A repeat knock while the grant was open: it now lasts `secs` more seconds.
    Extended { ip: IpAddr, door_name: String, secs: u64 },
    /// Shutdown closes a grant before its time.
    ClosingOnShutdown { ip: IpAddr, door_name: String },
}

enum Msg {
    Open(GrantRequest),
    Shutdown,
}

struct Job {
    door_name: String,
    command: String,
}

/// Handle to the executor threads. Dropping it without [`Executor::shutdown`] also
/// shuts down, closing every open grant.
pub struct Executor {
    tx: Sender<Msg>,
    timer: Option<JoinHandle<()>>,
    runner: Option<JoinHandle<()>>,
}

impl Executor {
    /// Starts the timer and runner threads; reports go to `reports`, which may be any
    /// channel whose items are made from a [`Report`] (so the daemon can merge them
    /// into its log queue, in order).
    pub fn start<T: From<Report> + Send + 'static>(
        runner: impl CommandRunner,
        reports: Sender<T>,
    ) -> Executor {
        let (tx, rx) = unbounded();
        let (job_tx, job_rx) = unbounded();
        let timer_reports = reports.clone();
        let timer = std::thread::Builder::new()
            .name("sesame-timer".into())
            .spawn(move || timer_loop(rx, job_tx, timer_reports))
            .expect("spawn timer thread");
        let runner = std::thread::Builder::new()
            .name("sesame-runner".into())
            .spawn(move || runner_loop(runner, job_rx, reports))
            .expect("spawn runner thread");
        Executor { tx, timer: Some(timer), runner: Some(runner) }
    }

    /// Hands a successful knock over. Never waits for a command.
    pub fn open(&self, request: GrantRequest) {
        // The timer thread only stops after shutdown, which takes `self`.
        let _ = self.tx.send(Msg::Open(request));
    }

    /// A cloneable handle for other threads (one per capture worker).
    pub fn handle(&self) -> ExecutorHandle {
        ExecutorHandle { tx: self.tx.clone() }
    }

    /// Closes every open grant now (running their stop commands), runs what is
    /// queued, and waits for both threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        if let Some(r) = self.runner.take() {
            let _ = r.join();
        }
    }
}

/// Lets a capture worker hand successes to the executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    tx: Sender<Msg>,
}

impl ExecutorHandle {
    /// Hands a successful knock over. Never waits for a command; after shutdown the
    /// request is dropped (the daemon stops capturing before it shuts the executor down).
    pub fn open(&self, request: GrantRequest) {
        let _ = self.tx.send(Msg::Open(request));
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn timer_loop<T: From<Report>>(rx: Receiver<Msg>, jobs: Sender<Job>, reports: Sender<T>) {
    let mut table = GrantTable::new();
    loop {
        let msg = match table.next_deadline() {
            Some(deadline) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Open(req)) => {
                let ip = req.ip.to_string();
                let start = req.start.as_deref().map(|c| substitute(c, &ip));
                let stop = req.stop.as_deref().map(|c| substitute(c, &ip));
                let key = (req.door_name.clone(), req.ip);
                match table.open(Instant::now(), key, start, stop, req.timeout) {
                    Some(OpenAction::Start { command, .. }) | Some(OpenAction::RunOnce { command }) => {
                        let _ = jobs.send(Job { door_name: req.door_name, command });
                    }
                    Some(OpenAction::Extended { until }) => {
                        let secs =
                            until.saturating_duration_since(Instant::now()).as_secs_f64().round() as u64;
                        let _ = reports
                            .send(Report::Extended { ip: req.ip, door_name: req.door_name, secs }.into());
                    }
                    None => {}
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                for e in table.drain() {
                    let _ = reports.send(
                        Report::ClosingOnShutdown { ip: e.key.1, door_name: e.grant.door_name.clone() }
                            .into(),
                    );
                    let _ = jobs.send(Job { door_name: e.grant.door_name, command: e.grant.stop_command });
                }
                return; // dropping `jobs` lets the runner finish its queue and stop
            }
        }
        for e in table.expire(Instant::now()) {
            let _ =
                reports.send(Report::Timeout { ip: e.key.1, door_name: e.grant.door_name.clone() }.into());
            let _ = jobs.send(Job { door_name: e.grant.door_name, command: e.grant.stop_command });
        }
    }
}

fn runner_loop<T: From<Report>>(mut runner: impl CommandRunner, jobs: Receiver<Job>, reports: Sender<T>) {
    for job in jobs {
        let _ = reports
            .send(Report::Running { door_name: job.door_name.clone(), command: job.command.clone() }.into());
        let report = match runner.run(&job.command) {
            Ok(Outcome::Success) => None,
            Ok(Outcome::Failed(code)) => Some(Report::Failed { door_name: job.door_name, code }),
            Err(e) => Some(Report::SpawnFailed { door_name: job.door_name, error: e.to_string() }),
        };
        if let Some(r) = report {
            let _ = reports.send(r.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ShellRunner;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

    /// Records command lines instead of running them (the real shell is tested in
    /// `runner` and in the lab).
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl CommandRunner for Recorder {
        fn run(&mut self, command: &str) -> std::io::Result<Outcome> {
            self.0.lock().unwrap().push(command.to_owned());
            Ok(if command.starts_with("fail") { Outcome::Failed(2) } else { Outcome::Success })
        }
    }

    fn req(start: &str, stop: Option<&str>, ms: u64) -> GrantRequest {
        GrantRequest {
            door_name: "ssh".into(),
            ip: IP,
            start: Some(start.into()),
            stop: stop.map(Into::into),
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn start_runs_now_and_stop_after_the_timeout() {
        let rec = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(rec.clone(), tx);
        ex.open(req("open %IP%", Some("close %IP%"), 300));
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(r, Report::Running { door_name: "ssh".into(), command: "open 198.18.0.2".into() });
        // The timeout report comes from the timer, then the stop runs.
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(r, Report::Timeout { ip: IP, door_name: "ssh".into() });
        let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(r, Report::Running { door_name: "ssh".into(), command: "close 198.18.0.2".into() });
        ex.shutdown();
        assert_eq!(*rec.0.lock().unwrap(), ["open 198.18.0.2", "close 198.18.0.2"]);
    }

    #[test]
    fn repeat_knock_extends_and_runs_start_once() {
        let rec = Recorder::default();
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(rec.clone(), tx);
        ex.open(req("open", Some("close"), 60_000));
        ex.open(req("open", Some("close"), 60_000));
        let reports: Vec<Report> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        assert!(reports.contains(&Report::Running { door_name: "ssh".into(), command: "open".into() }));
        assert!(reports.iter().any(|r| matches!(r, Report::Extended { secs: 60, .. })), "{reports:?}");
        // Shutdown closes the grant at once instead of leaving the port open.
        ex.shutdown();
        let rest: Vec<Report> = rx.try_iter().collect();
        assert_eq!(
            rest,
            vec![
                Report::ClosingOnShutdown { ip: IP, door_name: "ssh".into() },
                Report::Running { door_name: "ssh".into(), command: "close".into() },
            ]
        );
        assert_eq!(*rec.0.lock().unwrap(), ["open", "close"]);
    }

    #[test]
    fn failures_are_reported_with_their_code() {
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(Recorder::default(), tx);
        ex.open(req("fail", None, 0));
        ex.shutdown();
        let all: Vec<Report> = rx.try_iter().collect();
        assert_eq!(
            all,
            vec![
                Report::Running { door_name: "ssh".into(), command: "fail".into() },
                Report::Failed { door_name: "ssh".into(), code: 2 },
            ]
        );
    }

    #[test]
    fn real_shell_commands_run_in_order_off_the_caller_thread() {
        let dir = std::env::temp_dir().join(format!("sesame-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("out");
        let (tx, rx) = unbounded::<Report>();
        let ex = Executor::start(ShellRunner, tx);
        let t = Instant::now();
        ex.open(req(
            &format!("sleep 0.3; echo start %IP% >> {}", file.display()),
            Some(&format!("echo stop %IP% >> {}", file.display())),
            100,
        ));
        assert!(t.elapsed() < Duration::from_millis(250), "open() must not wait for the command");
        // Both commands have run once the second Running report and its command are done.
        let mut running = 0;
        while running < 2 {
            if let Report::Running { .. } = rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                running += 1;
            }
        }
        ex.shutdown();
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "start 198.18.0.2\nstop 198.18.0.2\n", "stop must not overtake a slow start");
    }
}
