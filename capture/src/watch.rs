//! Telling the daemon at once when interfaces come and go or their addresses change
//! (hot-plugged NICs, a tunnel brought up, a DHCP renew, `ip addr replace`), so it
//! reopens rings and rebuilds filters then instead of polling.
//!
//! [`LinkWatcher`] is an rtnetlink socket subscribed to the link and interface-address
//! groups of the network namespace it was opened in. It only says *what kind* of thing
//! changed; the caller re-reads what it needs with [`crate::iface`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::CaptureError;
use crate::sys;

/// Largest datagram read at once. A notification is one message of a few hundred
/// bytes (an address) to a few KiB (a link with its statistics); a longer one is
/// truncated, which still leaves its header, all we read.
const RECV_BUF: usize = 32 * 1024;

/// Length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Most datagrams one [`LinkWatcher::wait`] reads: a flapping link cannot hold the
/// caller in the drain loop for ever (what is left is read by the next call).
const MAX_DRAIN: usize = 4096;

/// What changed since the last [`LinkWatcher::wait`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// An interface appeared, disappeared, or changed state (up/down, name, carrier).
    pub links: bool,
    /// An IPv4 or IPv6 address was added to or removed from some interface.
    pub addresses: bool,
    /// ENOBUFS: notifications were lost, resync everything.
    pub overflow: bool,
}

impl Changes {
    /// Whether anything needs looking at.
    pub fn any(&self) -> bool {
        self.links || self.addresses || self.overflow
    }
}

/// An rtnetlink socket subscribed to `RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR` and
/// `RTMGRP_IPV6_IFADDR` in the caller's network namespace. Needs no privilege.
pub struct LinkWatcher {
    sock: Socket,
    buf: Box<[u8]>,
}

impl std::fmt::Debug for LinkWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatcher").field("fd", &self.sock.as_raw_fd()).finish()
    }
}

impl LinkWatcher {
    /// Opens the socket and joins the groups; notifications queue from here on.
    pub fn open() -> Result<LinkWatcher, CaptureError> {
        let err = |op| move |source| CaptureError::Netlink { op, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(err("socket(AF_NETLINK, NETLINK_ROUTE)"))?;
        let groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        sock.bind(&SocketAddr::new(0, groups))
            .map_err(err("bind(RTMGRP_LINK|RTMGRP_IPV4_IFADDR|RTMGRP_IPV6_IFADDR)"))?;
        Ok(LinkWatcher { sock, buf: vec![0u8; RECV_BUF].into_boxed_slice() })
    }

    /// Waits up to `timeout` for notifications and drains every one pending.
    ///
    /// Returns what kind of change they announced; nothing (`!any()`) on timeout, or
    /// when a signal interrupted the wait. [`Changes::overflow`] when the socket's
    /// buffer overflowed since the last call (the kernel dropped notifications and
    /// said so with `ENOBUFS`): then anything may have changed.
    pub fn wait(&mut self, timeout: Duration) -> Result<Changes, CaptureError> {
        let mut changes = Changes::default();
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = [libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        match sys::poll(&mut pfd, ms) {
            Ok(0) => return Ok(changes),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(changes),
            Err(source) => return Err(CaptureError::Netlink { op: "poll", source }),
        }
        for _ in 0..MAX_DRAIN {
            match self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                // MSG_TRUNC: the datagram's real length, which may exceed the buffer.
                Ok(n) => classify(&self.buf[..n.min(self.buf.len())], &mut changes),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // The kernel reports a dropped notification once, as this error;
                    // later notifications queue again.
                    Some(libc::ENOBUFS) => changes.overflow = true,
                    _ => return Err(CaptureError::Netlink { op: "recv", source: e }),
                },
            }
        }
        Ok(changes)
    }
}

/// The socket, for callers that multiplex it with `poll`/`epoll`: readable when a
/// notification is pending. Read it only through [`LinkWatcher::wait`].
impl AsFd for LinkWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Adds what the messages of one datagram announce to `changes`. A message cut short
/// by the buffer still counts by its header; anything malformed ends the walk.
fn classify(datagram: &[u8], changes: &mut Changes) {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let (kind, len) = match NetlinkBuffer::new_checked(rest) {
            Ok(msg) => (msg.message_type(), msg.length() as usize),
            // Truncated by our buffer: its header is whole, and it is the last one.
            Err(_) => (NetlinkBuffer::new(rest).message_type(), rest.len()),
        };
        match kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => changes.links = true,
            libc::RTM_NEWADDR | libc::RTM_DELADDR => changes.addresses = true,
            _ => {}
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let next = len.checked_add(3).map(|l| l & !3).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || next >= rest.len() {
            break;
        }
        rest = &rest[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header of type `kind`, then `payload` bytes of zeros, padded.
    fn msg(kind: u16, payload: usize) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    fn changes_of(datagram: &[u8]) -> Changes {
        let mut c = Changes::default();
        classify(datagram, &mut c);
        c
    }

    #[test]
    fn message_types() {
        let link = Changes { links: true, ..Changes::default() };
        let addr = Changes { addresses: true, ..Changes::default() };
        assert_eq!(changes_of(&msg(libc::RTM_NEWLINK, 16)), link);
        assert_eq!(changes_of(&msg(libc::RTM_DELLINK, 16)), link);
        assert_eq!(changes_of(&msg(libc::RTM_NEWADDR, 9)), addr);
        assert_eq!(changes_of(&msg(libc::RTM_DELADDR, 9)), addr);
        // Routes, neighbours, NLMSG_DONE: not ours.
        for kind in [libc::RTM_NEWROUTE, libc::RTM_NEWNEIGH, libc::NLMSG_DONE as u16] {
            assert!(!changes_of(&msg(kind, 12)).any(), "{kind}");
        }
        assert!(!changes_of(&[]).any());
        assert!(!Changes::default().any());
        assert!(Changes { overflow: true, ..Changes::default() }.any());
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut d = msg(libc::RTM_NEWROUTE, 3);
        d.extend(msg(libc::RTM_NEWADDR, 5));
        d.extend(msg(libc::RTM_DELLINK, 0));
        assert_eq!(changes_of(&d), Changes { links: true, addresses: true, overflow: false });
    }

    #[test]
    fn truncated_and_malformed_datagrams() {
        // Cut by the buffer: the header still counts.
        let long = msg(libc::RTM_NEWLINK, 5000);
        assert!(changes_of(&long[..100]).links);
        // A length below the header size ends the walk, even with more bytes after it.
        let mut bad = msg(libc::RTM_NEWROUTE, 0);
        bad[..4].copy_from_slice(&3u32.to_ne_bytes());
        bad.extend(msg(libc::RTM_NEWLINK, 0));
        assert!(!changes_of(&bad).any());
        // A huge length: one message, no overflow in the arithmetic.
        let mut huge = msg(libc::RTM_NEWADDR, 4);
        huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(changes_of(&huge).addresses);
        // Fewer bytes than a header: nothing.
        assert!(!changes_of(&msg(libc::RTM_NEWLINK, 0)[..15]).any());
    }

    #[test]
    fn a_quiet_watcher_times_out() {
        // Opening needs no privilege; in the test's namespace nothing may change during
        // the wait, but if something does the answer is still well-formed.
        let mut w = LinkWatcher::open().unwrap();
        let start = std::time::Instant::now();
        let c = w.wait(Duration::from_millis(30)).unwrap();
        assert!(c.any() || start.elapsed() >= Duration::from_millis(30));
    }
}
