//! Errors of the capture layer: every failing syscall is reported with the
//! operation it was and the interface it was for, next to the OS error.

use std::io;

/// Why opening, configuring or reading a capture ring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// A syscall or socket option failed; `op` names it (`"socket(AF_PACKET)"`,
    /// `"setsockopt(PACKET_RX_RING)"`, ...).
    #[error("{op} on interface {iface}: {source}")]
    Sys {
        op: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },

    /// No interface of that name exists (in this network namespace).
    #[error("no such network interface: {0:?}")]
    NoSuchInterface(String),

    /// The name cannot be an interface name (empty, too long, or contains NUL or `/`).
    #[error("invalid interface name: {0:?}")]
    InvalidInterfaceName(String),

    /// A generated classic BPF program exceeds the kernel limit of 4096 instructions.
    #[error("BPF filter has {len} instructions, the kernel accepts at most {max}", max = crate::filter::MAX_INSNS)]
    FilterTooLong { len: usize },

    /// A classic BPF program is malformed (empty, a jump leaving it, no final `ret`).
    #[error("invalid BPF program: {0}")]
    InvalidFilter(String),

    /// The ring geometry is not something the kernel accepts.
    #[error("invalid ring configuration: {0}")]
    InvalidConfig(String),

    /// Listing the interface addresses (`getifaddrs`) failed.
    #[error("getifaddrs: {0}")]
    Addresses(#[source] io::Error),

    /// The interface's hardware type (`ARPHRD_*`) is neither Ethernet-like nor one
    /// that carries bare IP packets, so no filter or parser fits its frames.
    #[error("interface {ifname} has link type {arphrd} (ARPHRD_*), neither Ethernet nor raw IP")]
    UnsupportedLink { ifname: String, arphrd: u16 },

    /// The ring's interface went down or was deleted: the kernel set `ENETDOWN` on the
    /// socket. Reported once; if the interface comes back up (same index) the ring
    /// receives again, if it was deleted it never will.
    #[error("interface {ifname} went down or was removed")]
    InterfaceDown { ifname: String },

    /// The rtnetlink socket of the link watcher failed; `op` names the call.
    #[error("{op} on the rtnetlink socket: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl CaptureError {
    pub(crate) fn sys(op: &'static str, iface: &str, source: io::Error) -> CaptureError {
        CaptureError::Sys { op, iface: iface.to_owned(), source }
    }

    /// The OS error behind this error, if there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            CaptureError::Sys { source, .. }
            | CaptureError::Addresses(source)
            | CaptureError::Netlink { source, .. } => Some(source),
            _ => None,
        }
    }
}
