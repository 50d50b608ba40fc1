//! The only unsafe code of the project: thin, safe wrappers over the syscalls the
//! capture layer needs (an `AF_PACKET` socket, its TPACKET_V3 RX ring mapping,
//! classic BPF attachment, `poll(2)` and `SO_ERROR`, `if_nametoindex(3)`,
//! `getifaddrs(3)` and the interface's link type, `sched_setaffinity(2)` for one thread),
//! and, with the `tx` feature, a TPACKET_V2 TX ring.
//!
//! Nothing here knows about knocks. Every function returns a plain `io::Error`;
//! the callers in `ring`/`iface`/`link` add which operation and interface it was about.
//! Every `unsafe` block states the invariant it relies on.

use std::ffi::{CStr, CString};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) use libc::sock_filter;

/// `TPACKET_V3` from `enum tpacket_versions` (libc only has it as an enum variant).
pub(crate) const TPACKET_V3: libc::c_int = libc::tpacket_versions::TPACKET_V3 as libc::c_int;

/// Byte offset of `hdr.bh1.block_status` in `struct tpacket_block_desc`
/// (`version: u32`, `offset_to_priv: u32`, then the union whose first field it is).
const BLOCK_STATUS_OFFSET: usize = 8;

/// An `AF_PACKET` socket (`SOCK_RAW` or `SOCK_DGRAM`); closed on drop.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// `socket(AF_PACKET, sock_type | SOCK_CLOEXEC, 0)`: `SOCK_RAW` receives frames from
    /// their link-layer header on, `SOCK_DGRAM` from their network header.
    ///
    /// Protocol 0 means the socket receives nothing until it is bound with a protocol,
    /// so the filter and ring can be installed before any packet is queued.
    pub(crate) fn open(sock_type: libc::c_int) -> io::Result<PacketSocket> {
        // SAFETY: socket(2) takes no pointers; a non-negative return value is a new file
        // descriptor that nothing else owns, so OwnedFd may take it over (and close it).
        let fd = unsafe { libc::socket(libc::AF_PACKET, sock_type | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is valid, open and exclusively ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `setsockopt` with a plain-old-data value passed by pointer and size.
    fn setsockopt<T: Copy>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` is a live reference, so the pointer is valid for reads of
        // size_of::<T>() bytes for the whole call; the kernel copies what it needs
        // (copy_from_sockptr) before returning and keeps no pointer to it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `setsockopt(level, name, &int)`.
    pub(crate) fn set_int(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        self.setsockopt(level, name, &value)
    }

    /// `sock_fprog` over `insns`, valid as long as `insns` is borrowed.
    fn fprog(insns: &[sock_filter]) -> io::Result<libc::sock_fprog> {
        let len = u16::try_from(insns.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
        // The kernel reads through `filter` only; the `*mut` is the C declaration's.
        Ok(libc::sock_fprog { len, filter: insns.as_ptr().cast_mut() })
    }

    /// `SO_ATTACH_FILTER`: attaches (or atomically replaces) the socket's classic BPF filter.
    pub(crate) fn attach_filter(&self, insns: &[sock_filter]) -> io::Result<()> {
        let prog = Self::fprog(insns)?;
        // The kernel (sk_attach_filter -> bpf_prog_create_from_user) copies the
        // `len` instructions during the call; `insns` outlives it.
        self.setsockopt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
    }

    /// `PACKET_FANOUT_DATA`: the classic BPF program of a `PACKET_FANOUT_CBPF` group.
    pub(crate) fn set_fanout_data(&self, insns: &[sock_filter]) -> io::Result<()> {
        let prog = Self::fprog(insns)?;
        // As for SO_ATTACH_FILTER, fanout_set_data_cbpf() copies the program during the call.
        self.setsockopt(libc::SOL_PACKET, libc::PACKET_FANOUT_DATA, &prog)
    }

    /// `PACKET_RX_RING` with a TPACKET_V3 request.
    pub(crate) fn set_rx_ring(&self, req: &libc::tpacket_req3) -> io::Result<()> {
        self.setsockopt(libc::SOL_PACKET, libc::PACKET_RX_RING, req)
    }

    /// `bind(2)` to one interface, receiving frames of ethertype `protocol` (host order).
    pub(crate) fn bind(&self, ifindex: u32, protocol: u16) -> io::Result<()> {
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
        // SAFETY: sockaddr_ll is plain old data (integers and a byte array), for which
        // all-zero bytes are a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: the pointer and length describe `sll`, which lives across the call;
        // packet_bind() copies the address and keeps no pointer to it.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `getsockopt(PACKET_STATISTICS)` for a TPACKET_V3 socket. The kernel resets its
    /// counters on every read.
    pub(crate) fn stats_v3(&self) -> io::Result<libc::tpacket_stats_v3> {
        let mut st = libc::tpacket_stats_v3 { tp_packets: 0, tp_drops: 0, tp_freeze_q_cnt: 0 };
        let mut len = mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are live locals; the kernel writes at most `len` bytes
        // (it clamps to the size we pass) into `st`, whose every bit pattern is valid
        // (three u32), and stores the written length in `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }

    /// `poll(2)` on this socket for `events`; returns the `revents` the kernel reported
    /// (0 on timeout). `EINTR` is an `Err` of kind `Interrupted`.
    pub(crate) fn poll_events(
        &self,
        events: libc::c_short,
        timeout_ms: libc::c_int,
    ) -> io::Result<libc::c_short> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid, live pollfd is passed with nfds = 1; the kernel writes only
        // its `revents` field.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pfd.revents)
    }

    /// `getsockopt(SO_ERROR)`: takes (and clears) the socket's pending error, e.g. the
    /// `ENETDOWN` a packet socket gets when its interface goes down.
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are live locals; the kernel writes at most `len` (4)
        // bytes into `err`, an int for which every bit pattern is valid.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
    }

    /// Maps the RX ring set up by [`PacketSocket::set_rx_ring`] with the same geometry.
    pub(crate) fn map_ring(&self, block_size: usize, block_count: usize) -> io::Result<RingMap> {
        // Every block must hold its header's status word at a 4-aligned offset.
        if block_size < BLOCK_STATUS_OFFSET + 4 || block_size & 7 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad ring block size"));
        }
        // The socket's only ring is the RX ring of `block_count` blocks of `block_size`.
        let (ptr, len) = self.map_rings(block_size, block_count)?;
        Ok(RingMap { ptr, len, block_size, block_count })
    }

    /// Maps the socket's ring(s), `count` units (blocks or frames) of `unit` bytes:
    /// read-write, shared with the kernel. Returns the start and the length.
    fn map_rings(&self, unit: usize, count: usize) -> io::Result<(NonNull<u8>, usize)> {
        let len = unit
            .checked_mul(count)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ring size overflows"))?;
        // No MAP_LOCKED: the ring's pages are allocated by the kernel (alloc_pg_vec) and
        // are never swapped, and packet_mmap() inserts them with vm_insert_page(), which
        // makes the VMA VM_MIXEDMAP, for which mmap_region() clears VM_LOCKED anyway.
        // Asking for it would only make mmap fail under a small RLIMIT_MEMLOCK.
        // SAFETY: a fresh mapping (addr = NULL) never aliases existing Rust memory; the
        // fd is a live packet socket, and packet_mmap() maps exactly its rings (the RX
        // ring, then the TX ring) and rejects any other size with EINVAL, so a mapping
        // we get back is those rings, `len` bytes.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok((ptr, len))
    }
}

/// The mmap'ed TPACKET_V3 RX ring: `block_count` blocks of `block_size` bytes, each
/// owned either by the kernel (status `TP_STATUS_KERNEL`) or by us (`TP_STATUS_USER`).
///
/// Invariants: `ptr` is the start of a live `MAP_SHARED` mapping of `len =
/// block_size * block_count` bytes (page aligned, so every block header is 8-byte
/// aligned), unmapped only in `Drop`. The kernel writes into a block only while its
/// status is `TP_STATUS_KERNEL`; a block we saw as `TP_STATUS_USER` (Acquire) is
/// ours, unchanging, until we store `TP_STATUS_KERNEL` in [`RingMap::release_block`],
/// which takes `&mut self`, so no slice from [`RingMap::user_block`] outlives it.
#[derive(Debug)]
pub(crate) struct RingMap {
    ptr: NonNull<u8>,
    len: usize,
    block_size: usize,
    block_count: usize,
}

// SAFETY: the mapping is plain shared memory, not tied to the thread that created it;
// moving the owner to another thread moves the only handle that can unmap it.
unsafe impl Send for RingMap {}
// SAFETY: `&self` methods only load the status words atomically and hand out shared
// slices of user-owned blocks; the one writer, release_block, needs `&mut self`.
unsafe impl Sync for RingMap {}

impl RingMap {
    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    pub(crate) fn block_count(&self) -> usize {
        self.block_count
    }

    /// The status word of block `index` (`index < block_count`, else panics).
    fn status_word(&self, index: usize) -> &AtomicU32 {
        assert!(index < self.block_count, "ring block {index} out of range");
        let off = index * self.block_size + BLOCK_STATUS_OFFSET;
        debug_assert!(off + 4 <= self.len);
        // SAFETY: `off + 4 <= len` (index < block_count, and map_ring() made sure that
        // block_size >= BLOCK_STATUS_OFFSET + 4), so the pointer is inside the live
        // mapping for as long as `&self`; blocks start at multiples of block_size (a
        // multiple of 8) from a page-aligned base, so `off` is 4-aligned as AtomicU32
        // requires. The kernel accesses this word only with single, whole 32-bit loads
        // and stores (BLOCK_STATUS() in af_packet.c), never partially, so treating it
        // as an atomic is sound.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) }
    }

    /// Status of block `index`, loaded with Acquire ordering.
    pub(crate) fn block_status(&self, index: usize) -> u32 {
        // Acquire pairs with the smp_wmb() the kernel issues in prb_close_block() before
        // it stores TP_STATUS_USER: once we see USER, the block's packets and header,
        // written before that barrier, are visible to us.
        self.status_word(index).load(Ordering::Acquire)
    }

    /// The whole block `index` as bytes, if the kernel has handed it to user space.
    pub(crate) fn user_block(&self, index: usize) -> Option<&[u8]> {
        if self.block_status(index) & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the block lies inside the mapping (index < block_count was checked by
        // status_word), and we observed TP_STATUS_USER with Acquire above, so the kernel
        // has finished writing it and will not write it again until release_block()
        // stores TP_STATUS_KERNEL, which needs `&mut self` and therefore cannot happen
        // while this shared borrow of `self` (and so the slice) is alive.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(index * self.block_size), self.block_size)
        })
    }

    /// Hands block `index` back to the kernel: stores `TP_STATUS_KERNEL` with Release
    /// ordering, so every read we made of the block happens before the kernel refills it.
    pub(crate) fn release_block(&mut self, index: usize) {
        // Release pairs with the smp_rmb() in the kernel's prb_open_block(), which runs
        // after prb_curr_blk_in_use() saw the status no longer TP_STATUS_USER.
        self.status_word(index).store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in map_ring(), unmapped only
        // here; every slice into it borrowed `self`, so none is alive any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The system page size (`sysconf(_SC_PAGESIZE)`), 4096 if it cannot be read.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers and has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// Pins the calling thread to CPU `cpu`: `sched_setaffinity(0, ...)` with a set of that
/// one CPU (pid 0 is the calling thread, not the whole process). Fails with
/// `InvalidInput` for a CPU number the set cannot hold, and with the kernel's `EINVAL`
/// for a CPU that is offline or outside this thread's cpuset.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is a plain array of integers, for which all zero bits is a valid
    // value (the empty set); CPU_SET writes one bit of the set we own mutably, at an index
    // checked above to be below CPU_SETSIZE, the set's size in bits.
    let set = unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: the pointer and size describe `set`, alive and initialised for the call;
    // the kernel only reads it.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` over `fds`; returns how many have events (0 on timeout). `EINTR` is an
/// `Err` of kind `Interrupted`. A pollfd with a closed or negative fd is harmless: the
/// kernel reports `POLLNVAL` or skips it.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let nfds = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many pollfds"))?;
    // SAFETY: the pointer and count describe the live, mutably borrowed slice; the kernel
    // copies the pollfds in, and on return writes back only their `revents` fields,
    // within those `nfds` entries (do_sys_poll copies exactly nfds structs each way).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout_ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// An `ifreq` naming `ifname`, the rest zero.
fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    // SAFETY: ifreq is plain old data (a byte array and a union of integers, arrays,
    // sockaddrs and a pointer), for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    // The name is shorter than IFNAMSIZ, so the zero after it terminates it.
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The hardware type (`ARPHRD_*`, `dev->type`) of interface `ifname` in the caller's
/// network namespace, from `SIOCGIFHWADDR`; `ENODEV` when there is no such interface.
///
/// Asked through a throw-away `AF_UNIX` socket: any socket's ioctl reaches
/// `dev_ioctl()` in the namespace the socket was created in (unlike `/sys`, which shows
/// the namespace it was mounted in), and `AF_UNIX` needs no privilege and no IP stack.
pub(crate) fn link_type(ifname: &str) -> io::Result<u16> {
    let mut ifr = ifreq(ifname)?;
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor
    // that nothing else owns, so OwnedFd takes it over (and closes it on return).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above: `fd` is valid, open and exclusively ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifr` is a live ifreq whose name is NUL-terminated (see ifreq()).
    // unix_ioctl() does not know SIOCGIFHWADDR, so sock_do_ioctl() hands it to
    // dev_ioctl() -> dev_get_mac_address(), which reads the name and writes only
    // `ifr_ifru.ifru_hwaddr` (a sockaddr inside the union) before it is copied back.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel stored the device type in `ifru_hwaddr.sa_family`;
    // every bit pattern is a valid u16, and the union was zero-initialised anyway.
    Ok(unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
}

fn ifname_cstring(ifname: &str) -> io::Result<CString> {
    CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))
}

/// `if_nametoindex(3)`; `ENODEV` when there is no such interface.
pub(crate) fn if_nametoindex(ifname: &str) -> io::Result<u32> {
    let name = ifname_cstring(ifname)?;
    // SAFETY: `name` is a NUL-terminated string alive across the call, only read.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Every IPv4/IPv6 address of every interface, as (interface name, address), from
/// `getifaddrs(3)`. Entries without an address, or of other families, are skipped.
pub(crate) fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is ours until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, which stays
        // allocated until freeifaddrs below; we only read it.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list (checked non-null).
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        // SAFETY: ifa_addr is non-null and points at a sockaddr at least as large as
        // the `sa_family` field we read first.
        let family = libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: glibc stores a full sockaddr_in for AF_INET entries; read unaligned
                // because the list gives no alignment promise beyond sockaddr's.
                let sin = unsafe { ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in>()) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: glibc stores a full sockaddr_in6 for AF_INET6 entries.
                let sin6 = unsafe { ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in6>()) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, addr));
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once; `ifa`
    // references do not escape the loop above.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

// ---------------------------------------------------------------------------------
// TX: a TPACKET_V2 `PACKET_TX_RING`, the kick that makes the kernel send it, and the
// interface MTU the kernel checks frames against: only with the `tx` feature (the
// load generator), never in the daemon.

#[cfg(feature = "tx")]
pub(crate) use tx::{TxMap, TPACKET_V2};

#[cfg(feature = "tx")]
mod tx {
    use super::*;

    /// `TPACKET_V2` from `enum tpacket_versions`.
    pub(crate) const TPACKET_V2: libc::c_int = libc::tpacket_versions::TPACKET_V2 as libc::c_int;

    /// Where the frame starts in a TPACKET_V2 TX slot: `tpacket_parse_header()` takes the
    /// data at `tp_hdrlen - sizeof(struct sockaddr_ll)` = `TPACKET2_HDRLEN - 20` = 32 bytes
    /// (the aligned `tpacket2_hdr`) unless `PACKET_TX_HAS_OFF` is set, which it never is here.
    pub(crate) const TX_DATA_OFFSET: usize = libc::TPACKET2_HDRLEN - mem::size_of::<libc::sockaddr_ll>();

    /// Byte offset of `tp_len` in `struct tpacket2_hdr` (`tp_status` is at 0).
    const TX_LEN_OFFSET: usize = 4;

    /// Slot states in which the kernel owns a TX slot: user space may neither write it nor
    /// count it as done.
    const TX_KERNEL_OWNED: u32 = libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING;

    impl PacketSocket {
        /// `PACKET_TX_RING` with a TPACKET_V1/V2 request (`PACKET_VERSION` set before).
        pub(crate) fn set_tx_ring(&self, req: &libc::tpacket_req) -> io::Result<()> {
            self.setsockopt(libc::SOL_PACKET, libc::PACKET_TX_RING, req)
        }

        /// Maps the TX ring set up by [`PacketSocket::set_tx_ring`], which must be the only
        /// ring of the socket and laid out as `frame_count` slots of `frame_size` bytes back
        /// to back (each block a whole number of frames, so no gap between blocks).
        pub(crate) fn map_tx_ring(&self, frame_size: usize, frame_count: usize) -> io::Result<TxMap> {
            // Status and length words must be 4-aligned in every slot, and a slot must hold
            // its header.
            if frame_size & 15 != 0 || frame_size <= TX_DATA_OFFSET {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad TX frame size"));
            }
            // The socket's only ring is the TX ring of `frame_count` slots of `frame_size`.
            let (ptr, len) = self.map_rings(frame_size, frame_count)?;
            Ok(TxMap { ptr, len, frame_size, frame_count })
        }

        /// `send(fd, NULL, 0, flags)`: on a socket with a TX ring this makes the kernel
        /// (`tpacket_snd()`) send every slot marked `TP_STATUS_SEND_REQUEST`, in ring order
        /// from its own head, until the first slot that is not. Returns the bytes it sent.
        /// With `dontwait` it neither blocks for socket buffer space nor waits for the sent
        /// frames to complete.
        pub(crate) fn send_ring(&self, dontwait: bool) -> io::Result<usize> {
            let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: a NULL buffer of length 0 is never dereferenced (the kernel builds an
            // empty iov_iter); with a TX ring, tpacket_snd() reads the frames from the ring,
            // not from the message.
            let rc = unsafe { libc::send(self.fd.as_raw_fd(), ptr::null(), 0, flags) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(rc as usize)
        }

        /// The MTU of interface `ifname` (`SIOCGIFMTU`), in this socket's network namespace.
        pub(crate) fn mtu(&self, ifname: &str) -> io::Result<u32> {
            let mut ifr = ifreq(ifname)?;
            // SAFETY: `ifr` is a live ifreq whose name is NUL-terminated (see ifreq());
            // SIOCGIFMTU reads the name and writes only `ifr_ifru.ifru_mtu` inside it
            // (dev_ifsioc_locked).
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: on success the kernel stored the MTU in `ifru_mtu`; every bit pattern
            // is a valid c_int, and the union was zero-initialised anyway.
            let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
            u32::try_from(mtu).map_err(|_| io::Error::other("negative MTU"))
        }
    }

    /// The mmap'ed TPACKET_V2 TX ring: `frame_count` slots of `frame_size` bytes, back to
    /// back. Each slot starts with a `tpacket2_hdr` (status word at 0, `tp_len` at 4) and
    /// carries its frame from [`TX_DATA_OFFSET`].
    ///
    /// Ownership of a slot follows its status word: `TP_STATUS_AVAILABLE` (or
    /// `TP_STATUS_WRONG_FORMAT`, a frame the kernel refused) is ours; after we store
    /// `TP_STATUS_SEND_REQUEST` the kernel may take it (`TP_STATUS_SENDING`) and
    /// hands it back by storing `TP_STATUS_AVAILABLE` once the frame's skb is freed
    /// (tpacket_destruct_skb). On a TX slot the kernel writes nothing but that status word:
    /// the frame pages are only read (and referenced by the skb, zero-copy), `tp_len` only
    /// read, and the timestamp fields are written only with `PACKET_TIMESTAMP`, which is
    /// never set on our sockets.
    ///
    /// Invariants: `ptr` is the start of a live `MAP_SHARED` mapping of `len = frame_size *
    /// frame_count` bytes (page aligned; `frame_size` is a multiple of 16, so every status
    /// and length word is 4-aligned), unmapped only in `Drop`. Slices handed out by
    /// [`TxMap::frame_mut`] borrow `self` mutably, so none outlives a status change we make.
    #[derive(Debug)]
    pub(crate) struct TxMap {
        ptr: NonNull<u8>,
        len: usize,
        frame_size: usize,
        frame_count: usize,
    }

    // SAFETY: the mapping is plain shared memory, not tied to the thread that created it;
    // moving the owner moves the only handle that can unmap it.
    unsafe impl Send for TxMap {}
    // SAFETY: `&self` methods only load status words atomically; every write needs `&mut self`.
    unsafe impl Sync for TxMap {}

    impl TxMap {
        pub(crate) fn frame_count(&self) -> usize {
            self.frame_count
        }

        /// Bytes of frame a slot holds: `frame_size - TX_DATA_OFFSET`.
        pub(crate) fn data_len(&self) -> usize {
            self.frame_size - TX_DATA_OFFSET
        }

        /// The 32-bit header word at byte `off` (0: status, 4: length) of slot `index`
        /// (`index < frame_count`, else panics).
        fn word(&self, index: usize, off: usize) -> &AtomicU32 {
            assert!(index < self.frame_count, "TX slot {index} out of range");
            let at = index * self.frame_size + off;
            debug_assert!(at + 4 <= self.len && off + 4 <= TX_DATA_OFFSET);
            // SAFETY: `at + 4 <= len` (index < frame_count and off + 4 <= TX_DATA_OFFSET <
            // frame_size), so the pointer lies inside the live mapping for as long as `&self`;
            // slots start at multiples of frame_size (a multiple of 16) from a page-aligned
            // base and `off` is 0 or 4, so it is 4-aligned as AtomicU32 requires. The kernel
            // accesses these words only as whole 32-bit values (READ_ONCE/WRITE_ONCE of
            // tp_status in __packet_get_status/__packet_set_status, a plain load of tp_len),
            // never partially, so treating them as atomics is sound.
            unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(at).cast::<u32>()) }
        }

        /// Status of slot `index`, loaded with Acquire ordering: pairs with the kernel's
        /// WRITE_ONCE of TP_STATUS_AVAILABLE in tpacket_destruct_skb(), which follows the
        /// skb's last use of the slot's pages (its release is ordered by the skb refcount
        /// drop), so after we see AVAILABLE nothing in the kernel reads the slot any more.
        pub(crate) fn status(&self, index: usize) -> u32 {
            self.word(index, 0).load(Ordering::Acquire)
        }

        /// Whether we own slot `index` (not requested, not being sent).
        pub(crate) fn is_user_owned(&self, index: usize) -> bool {
            self.status(index) & TX_KERNEL_OWNED == 0
        }

        /// The frame area of slot `index`, if we own it.
        pub(crate) fn frame_mut(&mut self, index: usize) -> Option<&mut [u8]> {
            if !self.is_user_owned(index) {
                return None;
            }
            let start = index * self.frame_size + TX_DATA_OFFSET;
            // SAFETY: the area [start, start + data_len) lies inside the mapping (index <
            // frame_count was checked by status()) and after the slot's header words, so it
            // overlaps no AtomicU32 we hand out. We own the slot (status neither
            // SEND_REQUEST nor SENDING, loaded with Acquire), and the kernel never writes a
            // TX frame area; it reads it only after we store SEND_REQUEST, which needs
            // `&mut self` and so cannot happen while this slice (which borrows `self`
            // mutably) is alive. No other slice into the mapping is alive either.
            Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), self.data_len()) })
        }

        /// Hands slot `index`, holding a frame of `len` bytes, to the kernel: stores
        /// `tp_len`, then `TP_STATUS_SEND_REQUEST` with Release ordering, so the frame and
        /// its length are visible before the status that lets the kernel read them (it reads
        /// status first, in tpacket_snd() -> packet_current_frame(), and the header and
        /// frame after; the send() that sets it going comes after this store anyway).
        /// Returns false (and does nothing) if we do not own the slot or `len`
        /// does not fit in it.
        pub(crate) fn submit(&mut self, index: usize, len: usize) -> bool {
            if !self.is_user_owned(index) || len > self.data_len() {
                return false;
            }
            self.word(index, TX_LEN_OFFSET).store(len as u32, Ordering::Relaxed);
            self.word(index, 0).store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            true
        }

        /// Takes back slot `index` from `TP_STATUS_SEND_REQUEST` (CAS to AVAILABLE).
        ///
        /// Only meaningful while the kernel cannot be sending from this ring: it takes
        /// requested slots only inside tpacket_snd(), i.e. inside a send() on this socket,
        /// and stops for good at a slot it marked `TP_STATUS_WRONG_FORMAT` (its head stays
        /// there, and it only proceeds once that very slot is requested again). The caller
        /// makes sure of that; memory safety does not depend on it (the kernel only reads
        /// frame areas).
        pub(crate) fn withdraw(&mut self, index: usize) -> bool {
            self.word(index, 0)
                .compare_exchange(
                    libc::TP_STATUS_SEND_REQUEST,
                    libc::TP_STATUS_AVAILABLE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        }

        /// Marks a slot we own `TP_STATUS_AVAILABLE` again (after `WRONG_FORMAT`).
        pub(crate) fn release(&mut self, index: usize) -> bool {
            if !self.is_user_owned(index) {
                return false;
            }
            self.word(index, 0).store(libc::TP_STATUS_AVAILABLE, Ordering::Release);
            true
        }

        /// Copies the frame (and `tp_len`) of slot `from` into slot `to`, both ours and
        /// distinct. Returns false (nothing copied) otherwise.
        pub(crate) fn copy_frame(&mut self, from: usize, to: usize) -> bool {
            if from == to || !self.is_user_owned(from) || !self.is_user_owned(to) {
                return false;
            }
            let len = (self.word(from, TX_LEN_OFFSET).load(Ordering::Relaxed) as usize).min(self.data_len());
            let src = from * self.frame_size + TX_DATA_OFFSET;
            let dst = to * self.frame_size + TX_DATA_OFFSET;
            // SAFETY: both areas lie inside the mapping (indices checked by status()), are
            // `len <= data_len` bytes long and do not overlap (distinct slots, each area
            // inside its own slot). Both slots are ours (see frame_mut), so the kernel
            // neither writes nor reads them now, and no slice into the mapping is alive
            // (they all borrow `self` mutably).
            unsafe {
                ptr::copy_nonoverlapping(self.ptr.as_ptr().add(src), self.ptr.as_ptr().add(dst), len);
            }
            self.word(to, TX_LEN_OFFSET).store(len as u32, Ordering::Relaxed);
            true
        }

        /// The `tp_len` of slot `index`, as we last stored it.
        pub(crate) fn frame_len(&self, index: usize) -> usize {
            self.word(index, TX_LEN_OFFSET).load(Ordering::Relaxed) as usize
        }
    }

    impl Drop for TxMap {
        fn drop(&mut self) {
            // SAFETY: ptr/len are exactly the mapping created in map_tx_ring(), unmapped
            // only here; every slice into it borrowed `self`, so none is alive any more.
            // Frames still in flight keep their own page references (tpacket_fill_skb()
            // takes one per page), so unmapping does not pull pages from under the kernel.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.len);
            }
        }
    }
}

/// Asks the CPU to start loading the cache line that holds `value`, without waiting
/// for it. A hint only: it changes no state a program can observe, and on targets
/// without a prefetch instruction it does nothing.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults, reads nothing into registers and writes nothing;
    // the address comes from a live reference in any case. `_mm_prefetch` needs SSE,
    // which every x86_64 CPU has (it is part of the x86_64 baseline).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Asks the kernel to back `region` with transparent huge pages (MADV_HUGEPAGE), so
/// that a large table touched at random costs one TLB entry per 2 MiB instead of
/// per 4 KiB. Best effort: kernels without THP, or with it disabled, just say no.
/// Call it before the region is first written, so the pages are born huge.
pub fn advise_huge_pages<T>(region: &mut [std::mem::MaybeUninit<T>]) -> bool {
    const HUGE: usize = 2 << 20;
    let start = region.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(region);
    // madvise wants page-aligned bounds; only whole huge pages can be huge anyway.
    let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if from >= to {
        return false;
    }
    // SAFETY: [from, to) lies inside `region`, which we borrow mutably, so it is mapped
    // memory owned by the caller. MADV_HUGEPAGE changes only how the kernel backs the
    // range (the same bytes, in larger pages); it never unmaps or alters contents.
    unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Cpus_allowed_list` of the calling thread.
    fn allowed_list() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned()
    }

    #[test]
    fn pins_only_the_calling_thread() {
        let before = allowed_list();
        // The first CPU this thread may use: the lowest number of the list.
        let first: usize = before.split([',', '-']).next().unwrap().parse().unwrap();
        let pinned = std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            allowed_list()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, first.to_string());
        // The test's own thread is untouched.
        assert_eq!(allowed_list(), before);
        let err = pin_current_thread(libc::CPU_SETSIZE as usize).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
