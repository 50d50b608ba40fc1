//! The one narrow interface between sesame and a firewall: what a backend must do to
//! open a port for one address, close it again, and say what it has open. One module
//! per backend (command, nftables, iptables, ufw) implements it; the executor drives
//! them, and the logic above them is tested with a fake.

pub mod iptables;
pub mod nftables;
pub mod tool;
pub mod ufw;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Transport protocol of a port a grant opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub const fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// IPv4 or IPv6: which program (iptables, ip6tables) or set a grant goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One port a door opens: `22/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub port: u16,
    pub proto: L4,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.name())
    }
}

impl std::str::FromStr for Port {
    type Err = String;

    /// `22/tcp`, `53/udp`, or a bare `22` (TCP).
    fn from_str(s: &str) -> Result<Port, String> {
        let s = s.trim();
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p.trim(), proto.trim()),
            None => (s, "tcp"),
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => L4::Tcp,
            "udp" => L4::Udp,
            _ => return Err(format!("invalid port '{s}': the protocol must be tcp or udp")),
        };
        match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(Port { port: p, proto }),
            _ => Err(format!("invalid port '{s}': must be PORT/tcp or PORT/udp with PORT from 1 to 65535")),
        }
    }
}

/// What a door protects with a native backend: the ports it opens for a knocker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorRule {
    /// The door's identity (its name).
    pub door: String,
    pub ports: Vec<Port>,
}

/// One grant as a backend sees it: `door` opens `ports` for `addr` for `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub door: String,
    pub addr: IpAddr,
    pub ports: Vec<Port>,
    /// How long from now the grant lasts. Backends that can (nftables) hand it to the
    /// kernel, so the grant closes even if sesamed is dead by then.
    pub timeout: Duration,
}

/// Why a backend operation failed. Messages name the backend, the door and the
/// address or tool involved.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A tool or kernel feature the backend needs is missing (start-up check).
    #[error("{backend} backend: {what}")]
    Unavailable { backend: &'static str, what: String },
    /// An operation failed: the tool's exit status and stderr, or the kernel's answer.
    #[error("{backend} backend: {op} failed: {detail}")]
    Failed { backend: &'static str, op: String, detail: String },
    #[error("{backend} backend: {op}: {source}")]
    Io {
        backend: &'static str,
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// A firewall that sesame opens and closes ports in.
///
/// Every method may block (a tool runs, the kernel answers); the executor calls them
/// off the packet path, with its own timeout, concurrency and rate limits around them.
/// Implementations must be idempotent: opening what is open, or closing what is
/// closed, succeeds and leaves exactly one rule (or none).
pub trait Backend: Send + Sync + 'static {
    /// `nftables`, `iptables`, `ufw`, `command`: as the config names it.
    fn name(&self) -> &'static str;

    /// Checks that the tools and kernel support this backend needs are there, so a
    /// missing one is a start-up error, never a surprise at the first knock.
    fn check(&self) -> Result<(), BackendError>;

    /// Installs what grants hang on for exactly these doors (the nftables table, sets
    /// and chain; the iptables chain and its jump), keeping grants that are already
    /// open at doors that remain. Called at start and after a reload.
    fn prepare(&self, doors: &[DoorRule]) -> Result<(), BackendError>;

    /// Opens `access.ports` for `access.addr`; if already open, makes it last
    /// `access.timeout` from now (where the backend keeps time).
    fn open(&self, access: &Access) -> Result<(), BackendError>;

    /// Whether the backend ends a grant at its timeout by itself (nftables: in the
    /// kernel), so that a grant it holds closes on time even if sesamed dies before
    /// the journal has it. Such opens need not wait for the journal (it is still
    /// durable before the open is reported).
    fn expires_itself(&self) -> bool {
        false
    }

    /// Closes what `open` opened for (door, addr). Closing a grant that is not there
    /// succeeds.
    fn close(&self, access: &Access) -> Result<(), BackendError>;

    /// The (door, address) grants present in the firewall now, for reconciliation at
    /// start.
    fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError>;

    /// Removes everything sesame installed (the table, the chain and its jump), on
    /// purpose (`sesame firewall remove`).
    fn remove(&self) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_print() {
        assert_eq!("22/tcp".parse::<Port>(), Ok(Port { port: 22, proto: L4::Tcp }));
        assert_eq!(" 53/UDP ".parse::<Port>(), Ok(Port { port: 53, proto: L4::Udp }));
        assert_eq!("22".parse::<Port>(), Ok(Port { port: 22, proto: L4::Tcp }));
        assert_eq!(Port { port: 22, proto: L4::Tcp }.to_string(), "22/tcp");
        for bad in ["0/tcp", "70000/tcp", "22/icmp", "x/tcp", "", "+22/tcp"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
    }
}
