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
}

impl CaptureError {
    pub(crate) fn sys(op: &'static str, iface: &str, source: io::Error) -> CaptureError {
        CaptureError::Sys { op, iface: iface.to_owned(), source }
    }

    /// The OS error behind this error, if there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            CaptureError::Sys { source, .. } | CaptureError::Addresses(source) => Some(source),
            _ => None,
        }
    }
}
