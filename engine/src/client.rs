//! `sesame knock`: knockd's `knock` client.
//!
//! A TCP hit is one non-blocking connect, so exactly one SYN leaves and no handshake
//! is waited for; a UDP hit is one datagram of one zero byte. Same flags, same
//! `-v` output as knock.

use crate::config::{parse_step, Step};
use crate::rotating;
use anyhow::{bail, Context};
use sesame_capture::Proto;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Which address family to knock over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

/// A knock: what `knock [-u] [-d MS] [-4|-6] [-v] HOST PORT[:tcp|:udp]...` says.
#[derive(Clone, Debug)]
pub struct KnockPlan {
    pub host: String,
    pub steps: Vec<Step>,
    pub delay: Duration,
    pub family: Family,
    pub verbose: bool,
}

impl KnockPlan {
    /// Parses the port arguments; `-u` makes every hit UDP, as in knock.
    pub fn new(host: String, ports: &[String], all_udp: bool) -> anyhow::Result<KnockPlan> {
        if ports.is_empty() {
            bail!("no ports to knock on");
        }
        let steps = ports
            .iter()
            .map(|p| {
                let mut step = parse_step(p).with_context(|| format!("invalid port argument '{p}'"))?;
                if all_udp {
                    step.proto = Proto::Udp;
                }
                Ok(step)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KnockPlan { host, steps, delay: Duration::ZERO, family: Family::Any, verbose: false })
    }

    /// A rotating door's sequence (see [`crate::rotating`]) for the step of `at`
    /// (seconds since the epoch), or of now.
    pub fn rotating(
        host: String,
        secret_file: &std::path::Path,
        params: &rotating::Params,
        at: Option<u64>,
    ) -> anyhow::Result<KnockPlan> {
        params.check(crate::config::MAX_SEQUENCE).map_err(anyhow::Error::msg)?;
        let secret = rotating::read_secret(secret_file).map_err(anyhow::Error::msg)?;
        let now =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let step = params.step_at(at.unwrap_or_else(now));
        let steps = rotating::derive(&secret, params, step)
            .into_iter()
            .map(|port| Step { port, proto: Proto::Tcp })
            .collect();
        Ok(KnockPlan { host, steps, delay: Duration::ZERO, family: Family::Any, verbose: false })
    }
}

/// Resolves the host to one address of the wanted family.
pub fn resolve(host: &str, family: Family) -> anyhow::Result<IpAddr> {
    let addrs = (host, 0).to_socket_addrs().with_context(|| format!("cannot resolve {host}"))?;
    let mut fitting = addrs.map(|a| a.ip()).filter(|ip| match family {
        Family::Any => true,
        Family::V4 => ip.is_ipv4(),
        Family::V6 => ip.is_ipv6(),
    });
    fitting.next().with_context(|| format!("{host} has no address of the requested family"))
}

/// Sends one hit.
pub fn hit(ip: IpAddr, step: Step) -> anyhow::Result<()> {
    let addr = SockAddr::from(SocketAddr::new(ip, step.port));
    let domain = Domain::for_address(SocketAddr::new(ip, step.port));
    match step.proto {
        Proto::Tcp => {
            let s =
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).context("cannot create TCP socket")?;
            s.set_nonblocking(true)?;
            // EINPROGRESS is the expected answer: the SYN is on its way and that is all we want.
            match s.connect(&addr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).with_context(|| format!("cannot knock on {ip}:{}", step.port)),
            }
        }
        Proto::Udp => {
            let s =
                Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).context("cannot create UDP socket")?;
            s.send_to(&[0u8], &addr).with_context(|| format!("cannot knock on {ip}:{}/udp", step.port))?;
        }
    }
    Ok(())
}

/// Knocks the whole plan, printing `hitting PROTO HOST:PORT` lines with `-v`.
pub fn knock(plan: &KnockPlan, out: &mut impl Write) -> anyhow::Result<()> {
    let ip = resolve(&plan.host, plan.family)?;
    for (i, step) in plan.steps.iter().enumerate() {
        if plan.verbose {
            writeln!(out, "hitting {} {}:{}", step.proto.name(), ip, step.port)?;
            out.flush()?;
        }
        hit(ip, *step)?;
        if i + 1 < plan.steps.len() && !plan.delay.is_zero() {
            std::thread::sleep(plan.delay);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn parses_ports_and_udp_flag() {
        let p = KnockPlan::new("h".into(), &["7000".into(), "8000:udp".into(), "9000:TCP".into()], false)
            .unwrap();
        assert_eq!(
            p.steps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["7000:tcp", "8000:udp", "9000:tcp"]
        );
        let p = KnockPlan::new("h".into(), &["7000".into(), "8000:tcp".into()], true).unwrap();
        assert!(p.steps.iter().all(|s| s.proto == Proto::Udp));
        assert!(KnockPlan::new("h".into(), &["70000".into()], false).is_err());
        assert!(KnockPlan::new("h".into(), &["7000:icmp".into()], false).is_err());
        assert!(KnockPlan::new("h".into(), &[], false).is_err());
    }

    #[test]
    fn hits_reach_loopback_listeners_and_verbose_says_so() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (tp, up) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
        let mut plan =
            KnockPlan::new("127.0.0.1".into(), &[tp.to_string(), format!("{up}:udp")], false).unwrap();
        plan.verbose = true;
        plan.family = Family::V4;
        let mut out = Vec::new();
        knock(&plan, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("hitting tcp 127.0.0.1:{tp}\nhitting udp 127.0.0.1:{up}\n")
        );
        let mut buf = [0u8; 8];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0u8]);
        // The SYN reached the listener: the kernel completed the handshake into its backlog.
        tcp.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let accepted = loop {
            match tcp.accept() {
                Ok((_conn, from)) => break Some(from),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => break None,
            }
        };
        assert!(accepted.is_some_and(|a| a.ip().is_loopback()), "the TCP hit never arrived");
    }
}
