//! `sesamed`: the daemon, with knockd's command line.
//!
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad command line
//! or a bad configuration (nothing has been opened then), 1 for any other failure
//! (interface missing, capture socket refused, ...).

use clap::{ArgAction, Parser};
use sesame_engine::daemon::{self, Settings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "sesamed",
    version = concat!(env!("CARGO_PKG_VERSION"), " (knockd 0.8 compatible)"),
    about = "sesamed: port-knock daemon, a drop-in replacement for knockd",
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    /// network interface to listen on (default "eth0"); repeat it (or separate names
    /// with commas) to listen on several
    #[arg(short = 'i', long = "interface", value_name = "int", action = ArgAction::Append,
          value_delimiter = ',', value_parser = interface_name)]
    interface: Vec<String>,
    /// run as a daemon
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// use an alternate config file
    #[arg(short = 'c', long = "config", value_name = "file", default_value = "/etc/knockd.conf")]
    config: PathBuf,
    /// output debug messages
    #[arg(short = 'D', long = "debug")]
    debug: bool,
    /// lookup DNS names (may be a security risk)
    #[arg(short = 'l', long = "lookup")]
    lookup: bool,
    /// use an alternate pidfile
    #[arg(short = 'p', long = "pidfile", value_name = "file")]
    pidfile: Option<PathBuf>,
    /// use an alternate logfile
    #[arg(short = 'g', long = "logfile", value_name = "file")]
    logfile: Option<PathBuf>,
    /// be verbose
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// only capture ipv4 packets
    #[arg(short = '4', long = "only-ip-v4")]
    only_ipv4: bool,
    /// capture workers (sesame only; default: the config's, else one per core)
    #[arg(long = "workers", value_name = "n", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// attempt-table memory for all workers, MiB (sesame only; default: the config's, else 64)
    #[arg(long = "memory-mib", value_name = "mib", value_parser = clap::value_parser!(u32).range(1..=1048576))]
    memory_mib: Option<u32>,
    /// where the grant journal lives (sesame only; default: the config's, else /var/lib/sesame)
    #[arg(long = "state-dir", value_name = "dir")]
    state_dir: Option<PathBuf>,
    /// write one line per firewall operation (start, end, result) to this file (sesame only)
    #[arg(long = "ops-log", value_name = "file")]
    ops_log: Option<PathBuf>,
    /// serve /metrics (Prometheus) and /healthz on ADDR:PORT (sesame only; default: the config's [metrics] listen, else off)
    #[arg(long = "metrics-listen", value_name = "addr:port")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// display version
    #[arg(short = 'V', long = "version", action = ArgAction::Version)]
    version: Option<bool>,
    /// this help
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
}

/// `-i NAME`: a name the kernel could accept, checked before anything is opened.
fn interface_name(name: &str) -> Result<String, String> {
    match sesame_engine::config::parse_interfaces([name]).map_err(|p| p.to_string())?.pop() {
        Some(name) => Ok(name),
        None => Err("empty interface name".to_owned()),
    }
}

fn main() -> ExitCode {
    // Read, then removed while this is the only thread, so that the commands the doors
    // run do not inherit systemd's socket.
    let notify = daemon::Notifier::from_env();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(var);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let settings = Settings {
        config: args.config,
        interfaces: args.interface,
        daemonize: args.daemon,
        debug: args.debug,
        lookup: args.lookup,
        pid_file: args.pidfile,
        log_file: args.logfile,
        verbose: args.verbose || args.debug,
        ipv4_only: args.only_ipv4,
        workers: args.workers,
        memory_mib: args.memory_mib,
        state_dir: args.state_dir,
        ops_log: args.ops_log,
        metrics_listen: args.metrics_listen,
        notify,
    };
    match daemon::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesamed: {e:#}");
            ExitCode::from(sesame_engine::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn accepts_knockd_flags_combined_as_getopt_does() {
        let a = Args::try_parse_from([
            "sesamed",
            "-dv4",
            "-i",
            "eth1",
            "-c",
            "/tmp/k.conf",
            "-p",
            "/run/p",
            "-g",
            "/l",
        ])
        .unwrap();
        assert!(a.daemon && a.verbose && a.only_ipv4 && !a.debug && !a.lookup);
        assert_eq!(a.interface, ["eth1"]);
        assert_eq!(a.config, PathBuf::from("/tmp/k.conf"));
        let a = Args::try_parse_from(["sesamed", "-i", "eth0", "-i", "wg0,ppp0"]).unwrap();
        assert_eq!(a.interface, ["eth0", "wg0", "ppp0"]);
        assert!(Args::try_parse_from(["sesamed", "-i", "a/b"]).is_err());
        assert!(Args::try_parse_from(["sesamed", "-i", ""]).is_err());
        let a = Args::try_parse_from(["sesamed", "-D", "-l"]).unwrap();
        assert!(a.debug && a.lookup);
        assert_eq!(a.config, PathBuf::from("/etc/knockd.conf"));
        assert!(Args::try_parse_from(["sesamed", "-x"]).is_err());
    }
}
