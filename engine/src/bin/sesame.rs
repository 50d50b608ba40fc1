//! `sesame`: the knock client and the config tools.
//!
//! Exit status: 0 on success, 2 for a bad command line or an invalid config, 1 for
//! anything else (a host that does not resolve, a socket error, `check --strict` with
//! warnings).

use clap::{Parser, Subcommand};
use sesame_engine::check;
use sesame_engine::client::{self, Family, KnockPlan};
use sesame_engine::config::{native, BackendKind, Config};
use sesame_engine::daemon;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "sesame", version, about = "sesame: port-knocking client and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `sesame knock --spa`: one fwknop-compatible SPA packet instead of a sequence.
#[derive(clap::Args, Debug)]
struct SpaArgs {
    /// send a single-packet-authorization packet (fwknop 2.6 compatible)
    #[arg(long, requires_all = ["keys", "access"], conflicts_with = "udp")]
    spa: bool,
    /// key file with the KEY_BASE64: and HMAC_KEY_BASE64: lines (`fwknop --key-gen`)
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// what to open, as fwknop's -A: tcp/22[,udp/53...]
    #[arg(short = 'A', long = "access", value_name = "PROTO/PORT")]
    access: Option<String>,
    /// the address to open for (default: the packet's source)
    #[arg(short = 'a', long = "allow-ip", value_name = "ADDR")]
    allow_ip: Option<std::net::IpAddr>,
    /// the SPA port
    #[arg(long, value_name = "PORT", default_value_t = sesame_engine::spa::DEFAULT_PORT)]
    spa_port: u16,
    /// ask for this many seconds open (fwknop's -f)
    #[arg(short = 'f', long = "fw-timeout", value_name = "SECS")]
    fw_timeout: Option<u32>,
}

/// `sesame knock --secret-file FILE HOST`: a rotating door's current sequence.
#[derive(clap::Args, Debug)]
struct RotatingArgs {
    /// knock the current sequence of a rotating door with this secret file
    #[arg(long, value_name = "FILE", conflicts_with = "udp")]
    secret_file: Option<PathBuf>,
    /// the door's sequence_step, seconds [default: 30]
    #[arg(long, value_name = "S", requires = "secret_file")]
    step: Option<u32>,
    /// the door's sequence_length [default: 4]
    #[arg(long, value_name = "N", requires = "secret_file")]
    length: Option<u8>,
    /// the door's sequence_ports [default: 10000-60000]
    #[arg(long = "ports", value_name = "LO-HI", requires = "secret_file")]
    port_range: Option<String>,
    /// knock the sequence of the step this time falls in (seconds since the epoch)
    /// instead of now's, e.g. to test that an old one is refused
    #[arg(long, value_name = "UNIX", requires = "secret_file")]
    at: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Knock on HOST's ports, like knockd's `knock`.
    Knock {
        /// make all port hits use UDP (default is TCP)
        #[arg(short = 'u', long = "udp")]
        udp: bool,
        /// wait <t> milliseconds between port hits
        #[arg(short = 'd', long = "delay", value_name = "t", default_value_t = 0)]
        delay: u64,
        /// force usage of IPv4
        #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
        ipv4: bool,
        /// force usage of IPv6
        #[arg(short = '6', long = "ipv6")]
        ipv6: bool,
        /// be verbose
        #[arg(short = 'v', long = "verbose")]
        verbose: bool,
        /// host to knock on
        host: String,
        /// ports, each PORT[:tcp|:udp]
        #[arg(required_unless_present_any = ["spa", "secret_file"], conflicts_with = "secret_file")]
        ports: Vec<String>,
        #[command(flatten)]
        spa: SpaArgs,
        #[command(flatten)]
        rotating: RotatingArgs,
    },
    /// Validate a config file (knockd.conf or .toml), summarise its doors and warn about
    /// weak sequences and commands that lock out or expose (`warning: FILE:LINE: ...`).
    Check {
        file: PathBuf,
        /// exit with status 1 when anything was warned about
        #[arg(long)]
        strict: bool,
        /// also check the live ruleset of this network namespace (iptables-save,
        /// ip6tables-save, nft): is each protected port closed, are established
        /// connections accepted, does each start rule land before the DROP?
        #[arg(long)]
        firewall: bool,
    },
    /// Print a knockd.conf as sesame's native TOML.
    Convert { file: PathBuf },
    /// sesame's own firewall structures (nftables table, iptables chain, ufw rules).
    Firewall {
        #[command(subcommand)]
        action: FirewallCommand,
    },
}

#[derive(Subcommand, Debug)]
enum FirewallCommand {
    /// List the grants open now: door and address.
    List {
        /// nftables, iptables or ufw
        backend: String,
    },
    /// Remove sesame's table or chain (and with it every grant): with the nftables
    /// backend the protected ports stay closed after sesamed stops until this runs.
    Remove {
        /// nftables, iptables or ufw
        backend: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame: {e:#}");
            ExitCode::from(sesame_engine::exit_code(&e))
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Knock { ipv4, ipv6, verbose, host, spa, .. } if spa.spa => {
            let plan = sesame_engine::spa_client::SpaPlan {
                host,
                keys: spa.keys.unwrap_or_default(),
                access: spa.access.unwrap_or_default(),
                allow: spa.allow_ip,
                port: spa.spa_port,
                family: if ipv4 {
                    Family::V4
                } else if ipv6 {
                    Family::V6
                } else {
                    Family::Any
                },
                client_timeout: spa.fw_timeout,
                verbose,
            };
            sesame_engine::spa_client::send(&plan).map(|_| ())
        }
        Command::Knock { udp, delay, ipv4, ipv6, verbose, host, ports, rotating, .. } => {
            let mut plan = match &rotating.secret_file {
                Some(file) => {
                    use sesame_engine::rotating::Params;
                    let mut params = Params::default();
                    if let Some(range) = &rotating.port_range {
                        (params.lo, params.hi) = Params::parse_ports(range).map_err(anyhow::Error::msg)?;
                    }
                    params.step = rotating.step.unwrap_or(params.step);
                    params.length = rotating.length.unwrap_or(params.length);
                    KnockPlan::rotating(host, file, &params, rotating.at)?
                }
                None => {
                    let r = &rotating;
                    if r.step.is_some() || r.length.is_some() || r.port_range.is_some() || r.at.is_some() {
                        anyhow::bail!("--step, --length, --ports and --at go with --secret-file");
                    }
                    KnockPlan::new(host, &ports, udp)?
                }
            };
            plan.delay = Duration::from_millis(delay);
            plan.family = if ipv4 {
                Family::V4
            } else if ipv6 {
                Family::V6
            } else {
                Family::Any
            };
            plan.verbose = verbose;
            client::knock(&plan, &mut std::io::stdout())
        }
        Command::Check { file, strict, firewall } => {
            let config = Config::load(&file)?;
            print!("{}", config.summary());
            let mut warnings = check::lint(&config);
            if firewall {
                let (ruleset, families) = check::firewall::read(&check::firewall::Live)?;
                warnings.extend(check::firewall::warnings(&config, &ruleset, &families));
            }
            warnings.sort_by_key(|w| w.line);
            for w in &warnings {
                eprintln!("{w}");
            }
            match warnings.len() {
                0 => println!("{}: OK", file.display()),
                1 => println!("{}: OK, 1 warning", file.display()),
                n => println!("{}: OK, {n} warnings", file.display()),
            }
            if strict && !warnings.is_empty() {
                anyhow::bail!("{}: {} warning(s) and --strict", file.display(), warnings.len());
            }
            Ok(())
        }
        Command::Convert { file } => {
            let config = Config::load(&file)?;
            print!("{}", native::to_toml(&config));
            Ok(())
        }
        Command::Firewall { action } => {
            let kind = |name: &str| BackendKind::parse(name).map_err(|p| anyhow::anyhow!("{p}"));
            match action {
                FirewallCommand::List { backend } => {
                    for (door, addr) in daemon::list_grants(kind(&backend)?)? {
                        println!("{door}\t{addr}");
                    }
                }
                FirewallCommand::Remove { backend } => daemon::remove_firewall(kind(&backend)?)?,
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn knock_takes_knocks_flags() {
        let c =
            Cli::try_parse_from(["sesame", "knock", "-u", "-d", "10", "-4", "-v", "h", "7000", "8000:udp"])
                .unwrap();
        match c.command {
            Command::Knock { udp, delay, ipv4, ipv6, verbose, host, ports, .. } => {
                assert!(udp && ipv4 && !ipv6 && verbose);
                assert_eq!((delay, host.as_str(), ports.len()), (10, "h", 2));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sesame", "knock", "-4", "-6", "h", "1"]).is_err());
    }

    #[test]
    fn knock_takes_a_secret_file_instead_of_ports() {
        let c = Cli::try_parse_from(["sesame", "knock", "--secret-file", "s", "--step", "5", "h"]).unwrap();
        match c.command {
            Command::Knock { ports, rotating, .. } => {
                assert!(ports.is_empty());
                assert_eq!(rotating.secret_file, Some(PathBuf::from("s")));
                assert_eq!((rotating.step, rotating.length, rotating.port_range), (Some(5), None, None));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sesame", "knock", "h"]).is_err(), "ports or a secret file");
        assert!(Cli::try_parse_from(["sesame", "knock", "--secret-file", "s", "h", "7000"]).is_err());
    }

    #[test]
    fn check_takes_strict_and_firewall() {
        match Cli::try_parse_from(["sesame", "check", "--strict", "--firewall", "/etc/knockd.conf"])
            .unwrap()
            .command
        {
            Command::Check { file, strict, firewall } => {
                assert!(strict && firewall);
                assert_eq!(file, PathBuf::from("/etc/knockd.conf"));
            }
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["sesame", "check", "a.toml"]).unwrap().command {
            Command::Check { strict, firewall, .. } => assert!(!strict && !firewall),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sesame", "knock", "h"]).is_err());
    }
}
