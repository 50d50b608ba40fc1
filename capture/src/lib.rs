//! Packet capture for sesame: everything between the wire and a [`Knock`].
//!
//! Layers, bottom up:
//! - `sys` (private): the only unsafe code in the project: AF_PACKET sockets,
//!   the TPACKET_V3 ring mapping, BPF attachment, `poll`, interface queries.
//! - [`link`]: what an interface's frames start with (an Ethernet header or the IP
//!   header), read from the kernel, and the matching parser.
//! - [`ring`]: a safe TPACKET_V3 RX ring; blocks are walked in place and handed
//!   back to the kernel when their guard drops. [`ring::wait_any`] waits on many.
//! - [`filter`]: a classic BPF program builder that passes only frames that can be
//!   knocks, per link type, plus a small interpreter so the programs are tested
//!   without root.
//! - [`wire`]: typed zero-copy views over Ethernet, IPv4, IPv6, TCP and UDP headers.
//! - [`frame`]: a whole frame to a [`Knock`] summary, or a counted reason to skip it.
//! - [`fanout`]: the PACKET_FANOUT program that sends each source to one worker.
//! - [`iface`], [`watch`]: interface indexes and addresses, and an rtnetlink watcher
//!   that says when they may have changed.
//! - `tx`, `craft` (feature `tx`, off by default): a TX ring and frame builder for the
//!   load generator; the daemon is built without them.
#![deny(unsafe_code)]

#[cfg(any(test, feature = "tx"))]
pub mod craft;
pub mod error;
pub mod fanout;
pub mod filter;
pub mod frame;
pub mod iface;
pub mod link;
pub mod payload;
pub mod ring;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "tx")]
pub mod tx;
pub mod watch;
pub mod wire;

pub use error::CaptureError;

/// CPU placement and memory hints for the packet path.
pub mod hint {
    pub use crate::sys::{advise_huge_pages, pin_current_thread, prefetch};
}
pub use frame::{parse_frame, FrameError, Knock, Proto};
pub use link::Link;
