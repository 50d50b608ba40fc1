//! `sesame knock --spa`: sends one fwknop-compatible SPA datagram.

use crate::client::{resolve, Family};
use crate::config::Port;
use crate::spa::{self, Request, SpaKeys};
use anyhow::{bail, Context};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;

/// What `sesame knock --spa --keys FILE -A tcp/22 [-a ADDR] HOST` asks for.
#[derive(Clone, Debug)]
pub struct SpaPlan {
    pub host: String,
    pub keys: PathBuf,
    /// `tcp/22,udp/53` (fwknop's `-A`).
    pub access: String,
    /// The address to open; `None` asks for the packet's source.
    pub allow: Option<IpAddr>,
    pub port: u16,
    pub family: Family,
    /// Ask for this many seconds open (message type 3).
    pub client_timeout: Option<u32>,
    pub verbose: bool,
}

/// fwknop's `-A` list: `tcp/22,udp/53`.
pub fn parse_access(text: &str) -> anyhow::Result<Vec<Port>> {
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((proto, port)) = part.split_once('/') else { bail!("access '{part}' is not PROTO/PORT") };
        ports.push(format!("{port}/{proto}").parse::<Port>().map_err(anyhow::Error::msg)?);
    }
    if ports.is_empty() {
        bail!("no ports to ask for (-A tcp/22)");
    }
    Ok(ports)
}

/// Builds and sends the packet; returns where it went.
pub fn send(plan: &SpaPlan) -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string(&plan.keys)
        .with_context(|| format!("reading the key file {}", plan.keys.display()))?;
    let keys = SpaKeys::parse(&text).map_err(|p| anyhow::anyhow!("key file {}: {p}", plan.keys.display()))?;
    let ports = parse_access(&plan.access)?;
    let ip = resolve(&plan.host, plan.family)?;
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom")?;
    let user = std::env::var("USER").unwrap_or_else(|_| "sesame".to_owned());
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let request = Request {
        user: &user,
        address: plan.allow,
        ipv6_source: ip.is_ipv6(),
        ports: &ports,
        timestamp,
        client_timeout: plan.client_timeout,
    };
    let wire = spa::encode(&keys, &request, &random);
    let to = SocketAddr::new(ip, plan.port);
    let bind: SocketAddr = if ip.is_ipv6() { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
    let socket = UdpSocket::bind(bind).context("opening a UDP socket")?;
    socket.send_to(wire.as_bytes(), to).with_context(|| format!("sending the SPA packet to {to}"))?;
    if plan.verbose {
        println!("sent an SPA packet of {} bytes to {to}", wire.len());
    }
    Ok(to)
}
