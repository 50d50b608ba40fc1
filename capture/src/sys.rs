//! The only unsafe code of the project: thin, safe wrappers over the syscalls the
//! capture layer needs (an `AF_PACKET` socket, its TPACKET_V3 RX ring mapping,
//! classic BPF attachment, `poll(2)`, `if_nametoindex(3)` and `getifaddrs(3)`).
//!
//! Nothing here knows about knocks. Every function returns a plain `io::Error`;
//! the callers in `ring`/`iface` add which operation and interface it was about.
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

/// An `AF_PACKET`/`SOCK_RAW` socket; closed on drop.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// `socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)`.
    ///
    /// Protocol 0 means the socket receives nothing until it is bound with a protocol,
    /// so the filter and ring can be installed before any packet is queued.
    pub(crate) fn open() -> io::Result<PacketSocket> {
        // SAFETY: socket(2) takes no pointers; a non-negative return value is a new file
        // descriptor that nothing else owns, so OwnedFd may take it over (and close it).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
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

    /// `poll(2)` for `POLLIN` on this socket. Returns whether it is readable;
    /// `EINTR` is an `Err` of kind `Interrupted`.
    pub(crate) fn poll_in(&self, timeout_ms: libc::c_int) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid, live pollfd is passed with nfds = 1; the kernel writes only
        // its `revents` field.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if pfd.revents & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(rc > 0)
    }

    /// Maps the RX ring set up by [`PacketSocket::set_rx_ring`] with the same geometry.
    pub(crate) fn map_ring(&self, block_size: usize, block_count: usize) -> io::Result<RingMap> {
        // Every block must hold its header's status word at a 4-aligned offset.
        if block_size < BLOCK_STATUS_OFFSET + 4 || block_size & 7 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad ring block size"));
        }
        let len = block_size
            .checked_mul(block_count)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ring size overflows"))?;
        // No MAP_LOCKED: the ring's pages are allocated by the kernel (alloc_pg_vec) and
        // are never swapped, and packet_mmap() inserts them with vm_insert_page(), which
        // makes the VMA VM_MIXEDMAP, for which mmap_region() clears VM_LOCKED anyway.
        // Asking for it would only make mmap fail under a small RLIMIT_MEMLOCK.
        // SAFETY: a fresh mapping (addr = NULL) never aliases existing Rust memory; the
        // fd is a live packet socket with an RX ring of exactly `len` bytes (packet_mmap
        // rejects any other size with EINVAL).
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
        Ok(RingMap { ptr, len, block_size, block_count })
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
