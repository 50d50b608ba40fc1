//! Classic BPF programs for the capture socket: a builder for the "can this frame be
//! a knock?" filter, a tiny label assembler that keeps conditional jumps within their
//! 8-bit range, and a userspace interpreter so programs are tested without a kernel.
//!
//! The knock filter passes what knockd's pcap filter passes: IPv4 (not a non-first
//! fragment) or IPv6 to one of our addresses, with TCP or UDP to a listed port, in
//! Ethernet frames, untagged or with one in-frame 802.1Q/802.1ad tag, or, on a
//! [`Link::Ip`] ring, as bare packets starting at the IP header. IPv6 packets whose
//! first next header is an extension header pass on the address alone; userspace walks
//! the chain. Only the link-layer prologue differs between the two links.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::CaptureError;
use crate::link::Link;
use crate::sys;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// What an accepting program returns: the snap length, as pcap's default.
pub const SNAP_LEN: u32 = 262_144;

/// Classic BPF opcode parts (`linux/filter.h`, `linux/bpf_common.h`).
pub mod op {
    // Instruction classes.
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;
    // Load sizes.
    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;
    // Load modes.
    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;
    // ALU operations.
    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;
    // Jumps.
    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;
    // Operand source (ALU, JMP) and return value (RET).
    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    pub const A: u16 = 0x10;
    // MISC operations.
    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    /// A non-jump instruction (`BPF_STMT`).
    pub const fn stmt(code: u16, k: u32) -> Insn {
        Insn { code, jt: 0, jf: 0, k }
    }

    /// A jump instruction (`BPF_JUMP`).
    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    fn class(&self) -> u16 {
        self.code & 0x07
    }

    fn is_cond_jump(&self) -> bool {
        self.class() == op::JMP && self.code & 0xf0 != op::JA
    }
}

/// The interfaces' addresses and the ports of all sequences: what the filter lets through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub v4_dst: Vec<Ipv4Addr>,
    pub v6_dst: Vec<Ipv6Addr>,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
}

/// A classic BPF program, at most [`MAX_INSNS`] long, every jump inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program(Vec<Insn>);

pub(crate) const ETH_P_IP: u32 = 0x0800;
pub(crate) const ETH_P_IPV6: u32 = 0x86dd;
pub(crate) const ETH_P_8021Q: u32 = 0x8100;
pub(crate) const ETH_P_8021AD: u32 = 0x88a8;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// IPv6 extension headers that may precede TCP/UDP: hop-by-hop, routing, fragment,
/// destination options, AH. A packet starting with one passes on its address alone.
const IPV6_EXT_HEADERS: [u32; 5] = [0, 43, 44, 60, 51];
/// Leaves of the port search compare this many ports linearly.
const SEARCH_LEAF: usize = 4;
/// A port subtree this small is compiled with its own local `ret`s, so its jumps stay short.
const SEARCH_LOCAL: usize = 128;

impl Program {
    /// The filter that passes exactly the frames that can be knocks for `spec`, on a
    /// ring whose frames start as `link` says.
    pub fn knock(spec: &FilterSpec, link: Link) -> Result<Program, CaptureError> {
        let mut a = Asm::default();
        let accept = a.label();
        let reject = a.label();
        let l4 = a.label();
        let tcp = a.label();
        let udp = a.label();
        let has_v4 = !spec.v4_dst.is_empty();
        let has_v6 = !spec.v6_dst.is_empty();
        // Where an IP header may start: its IPv4 and IPv6 entry points and its offset.
        let starts = match link {
            Link::Ethernet => ethernet_prologue(&mut a, has_v4, has_v6, reject),
            Link::Ip => ip_prologue(&mut a, has_v4, has_v6, reject),
        };

        let mut v4 = spec.v4_dst.clone();
        v4.sort_unstable();
        v4.dedup();
        let mut v6 = spec.v6_dst.clone();
        v6.sort_unstable();
        v6.dedup();
        for IpStart { v4: ip4, v6: ip6, base } in starts {
            if has_v4 {
                a.bind(ip4);
                ipv4(&mut a, base, &v4, l4, reject);
            }
            if has_v6 {
                a.bind(ip6);
                ipv6(&mut a, base, &v6, l4, accept, reject);
            }
        }

        // Transport: A = protocol, X = offset of the L4 header in the frame.
        let mut tcp_ports = spec.tcp_ports.clone();
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        let mut udp_ports = spec.udp_ports.clone();
        udp_ports.sort_unstable();
        udp_ports.dedup();
        a.bind(l4);
        let tcp_to = if tcp_ports.is_empty() { To(reject) } else { To(tcp) };
        let udp_to = if udp_ports.is_empty() { To(reject) } else { To(udp) };
        a.jump(op::JEQ, IPPROTO_TCP, tcp_to, Next);
        a.jump(op::JEQ, IPPROTO_UDP, udp_to, To(reject));
        for (label, ports) in [(tcp, &tcp_ports), (udp, &udp_ports)] {
            if !ports.is_empty() {
                a.bind(label);
                // Destination port: bytes 2..4 of both the TCP and the UDP header.
                a.stmt(op::LD | op::H | op::IND, 2);
                port_search(&mut a, ports);
            }
        }
        a.bind(accept);
        a.stmt(op::RET | op::K, SNAP_LEN);
        a.bind(reject);
        a.stmt(op::RET | op::K, 0);
        Program::from_insns(a.assemble())
    }

    /// The program that passes every frame whole.
    pub fn accept_all() -> Program {
        Program(vec![Insn::stmt(op::RET | op::K, SNAP_LEN)])
    }

    /// The program that passes nothing.
    pub fn reject_all() -> Program {
        Program(vec![Insn::stmt(op::RET | op::K, 0)])
    }

    /// A program from raw instructions (e.g. a fanout program), after the structural
    /// checks the kernel also makes: not empty, not too long, every jump inside the
    /// program, ends with a `ret`.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, CaptureError> {
        if insns.len() > MAX_INSNS {
            return Err(CaptureError::FilterTooLong { len: insns.len() });
        }
        let bad = |why: String| Err(CaptureError::InvalidFilter(why));
        match insns.last() {
            None => return bad("empty program".into()),
            Some(last) if last.class() != op::RET => return bad("last instruction is not ret".into()),
            Some(_) => {}
        }
        for (pc, i) in insns.iter().enumerate() {
            let after = pc + 1;
            let targets: &[usize] = if i.class() != op::JMP {
                &[]
            } else if i.is_cond_jump() {
                &[after + usize::from(i.jt), after + usize::from(i.jf)]
            } else {
                &[after.saturating_add(i.k as usize)]
            };
            if targets.iter().any(|&t| t >= insns.len()) {
                return bad(format!("jump at {pc} leaves the program"));
            }
        }
        Ok(Program(insns))
    }

    pub fn insns(&self) -> &[Insn] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a constructed program; there for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The program as the kernel takes it.
    pub(crate) fn to_sock_filters(&self) -> Vec<sys::sock_filter> {
        self.0.iter().map(|i| sys::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect()
    }

    /// Runs the program over `packet` as the kernel's classic BPF interpreter would
    /// as a socket filter ([`Hook::Socket`]): over a linear frame starting at the MAC
    /// header. Returns its verdict (the number of bytes to keep; 0 drops). A load
    /// outside the packet ends the program with 0, as in the kernel; so do ancillary
    /// loads other than the protocol ([`skf`]), division by zero and unknown opcodes.
    pub fn run(&self, packet: &[u8]) -> u32 {
        self.run_as(packet, Hook::Socket)
    }

    /// Runs the program over a received Ethernet `frame` (as a ring captures it: from
    /// the MAC header, the outer VLAN tag already taken out) the way `hook` hands it to
    /// the program, and returns what it returns.
    ///
    /// Loads at [`skf::LL_OFF`] and [`skf::NET_OFF`] count from the MAC and network
    /// headers, and the ancillary [`skf::AD_PROTOCOL`] is the frame's ethertype (bytes
    /// 12..14, the inner tag's TPID if a tag is still in the frame), whatever the hook.
    /// The frame is taken as linear: the kernel's LL/NET-relative loads only reach the
    /// skb's linear part, and fail (the program returns 0) past it.
    pub fn run_as(&self, frame: &[u8], hook: Hook) -> u32 {
        self.run_on(frame, Link::Ethernet, hook)
    }

    /// Runs the program over a received frame of a `link` ring, the way `hook` hands it
    /// to the program; for [`Link::Ethernet`] this is [`run_as`](Self::run_as).
    ///
    /// For [`Link::Ip`], `frame` is the packet from its IP header on, as a tun or
    /// WireGuard device receives it: no link-layer header, so a `SOCK_DGRAM` socket
    /// filter and a fanout program both see it from its first byte, the MAC and network
    /// headers are both there, and `skb->protocol` follows the version nibble
    /// (`ETH_P_IP`, `ETH_P_IPV6`, else 0), as tun_get_user() sets it for `IFF_NO_PI`.
    pub fn run_on(&self, frame: &[u8], link: Link, hook: Hook) -> u32 {
        let skb = Skb::new(frame, link, hook);
        let packet = skb.data;
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; 16];
        let mut pc = 0usize;
        while let Some(&i) = self.0.get(pc) {
            pc += 1;
            let k = i.k;
            match i.class() {
                op::LD | op::LDX => {
                    let is_x = i.class() == op::LDX;
                    let size = match i.code & 0x18 {
                        op::W => 4,
                        op::H => 2,
                        op::B => 1,
                        _ => return 0,
                    };
                    let v = match (i.code & 0xe0, is_x) {
                        (op::IMM, _) => k,
                        (op::LEN, _) => packet.len() as u32,
                        (op::MEM, _) => match mem.get(k as usize) {
                            Some(&m) => m,
                            None => return 0,
                        },
                        (op::ABS, false) => match skb.load(k, size, true) {
                            Some(v) => v,
                            None => return 0,
                        },
                        (op::IND, false) => match skb.load(x.wrapping_add(k), size, false) {
                            Some(v) => v,
                            None => return 0,
                        },
                        (op::MSH, true) => match skb.load(k, 1, false) {
                            Some(v) => (v & 0xf) << 2,
                            None => return 0,
                        },
                        _ => return 0,
                    };
                    if is_x {
                        x = v;
                    } else {
                        a = v;
                    }
                }
                op::ST | op::STX => match mem.get_mut(k as usize) {
                    Some(m) => *m = if i.class() == op::ST { a } else { x },
                    None => return 0,
                },
                op::ALU => {
                    let src = if i.code & op::X != 0 { x } else { k };
                    a = match i.code & 0xf0 {
                        op::ADD => a.wrapping_add(src),
                        op::SUB => a.wrapping_sub(src),
                        op::MUL => a.wrapping_mul(src),
                        op::DIV if src == 0 => return 0,
                        op::DIV => a / src,
                        op::MOD if src == 0 => return 0,
                        op::MOD => a % src,
                        op::OR => a | src,
                        op::AND => a & src,
                        op::XOR => a ^ src,
                        op::LSH => a.checked_shl(src).unwrap_or(0),
                        op::RSH => a.checked_shr(src).unwrap_or(0),
                        op::NEG => a.wrapping_neg(),
                        _ => return 0,
                    };
                }
                op::JMP => {
                    let src = if i.code & op::X != 0 { x } else { k };
                    let taken = match i.code & 0xf0 {
                        op::JA => {
                            pc = pc.saturating_add(k as usize);
                            continue;
                        }
                        op::JEQ => a == src,
                        op::JGT => a > src,
                        op::JGE => a >= src,
                        op::JSET => a & src != 0,
                        _ => return 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                op::RET => {
                    return match i.code & 0x18 {
                        op::K => k,
                        op::A => a,
                        _ => 0,
                    }
                }
                op::MISC => match i.code & 0xf8 {
                    op::TAX => x = a,
                    op::TXA => a = x,
                    _ => return 0,
                },
                _ => return 0,
            }
        }
        // Ran off the end (cannot happen for a checked program).
        0
    }
}

/// How the kernel hands a received frame to a classic BPF program. (On a
/// [`Link::Ip`] ring both hooks see the packet from the IP header: see
/// [`Program::run_on`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A socket filter on a packet socket (`SO_ATTACH_FILTER`): `packet_rcv()` pushes
    /// the link-layer header back first for a `SOCK_RAW` socket, so offsets count from
    /// the MAC header (for `SOCK_DGRAM`, from the network header).
    Socket,
    /// A `PACKET_FANOUT_CBPF` program on receive: `packet_rcv_fanout()` runs it on the
    /// skb as it came up the receive path, so offsets count from the network header,
    /// i.e. after the 14-byte Ethernet header (the outer VLAN tag was taken out of the
    /// frame before). With a second tag still in the frame, that is at the tag's TCI.
    /// (Frames the host sends reach the group with the MAC header first instead.)
    Fanout,
}

/// Negative load offsets the kernel gives a meaning (`linux/filter.h`).
pub mod skf {
    /// Ancillary data: `ld [AD_OFF + AD_...]`.
    pub const AD_OFF: u32 = libc::SKF_AD_OFF as u32;
    /// `ld [AD_OFF + AD_PROTOCOL]`: `skb->protocol` in host order.
    pub const AD_PROTOCOL: u32 = libc::SKF_AD_PROTOCOL as u32;
    /// Loads relative to the network header.
    pub const NET_OFF: u32 = libc::SKF_NET_OFF as u32;
    /// Loads relative to the link-layer (MAC) header.
    pub const LL_OFF: u32 = libc::SKF_LL_OFF as u32;
}

/// What a program can load from: the bytes from where the hook starts them, the MAC
/// and network headers on, and `skb->protocol`.
struct Skb<'a> {
    data: &'a [u8],
    mac: &'a [u8],
    net: &'a [u8],
    protocol: u16,
}

impl<'a> Skb<'a> {
    fn new(frame: &'a [u8], link: Link, hook: Hook) -> Skb<'a> {
        if link == Link::Ip {
            let protocol = match frame.first().map(|b| b >> 4) {
                Some(4) => ETH_P_IP as u16,
                Some(6) => ETH_P_IPV6 as u16,
                _ => 0,
            };
            return Skb { data: frame, mac: frame, net: frame, protocol };
        }
        let net = frame.get(14..).unwrap_or(&[]);
        let protocol = frame.get(12..14).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let data = match hook {
            Hook::Socket => frame,
            Hook::Fanout => net,
        };
        Skb { data, mac: frame, net, protocol }
    }

    /// Big-endian load of `size` bytes at `off`: from the data at a non-negative
    /// offset, from the MAC or network header in the `skf` ranges, ancillary data
    /// (the protocol only) for `ld` with an absolute offset. `None` (the kernel ends
    /// the program with 0) outside the bytes, or for other ancillary data.
    fn load(&self, off: u32, size: usize, ancillary: bool) -> Option<u32> {
        let (bytes, start) = if off < 0x8000_0000 {
            (self.data, off)
        } else if off >= skf::AD_OFF {
            return (ancillary && off == skf::AD_OFF + skf::AD_PROTOCOL).then_some(u32::from(self.protocol));
        } else if off >= skf::NET_OFF {
            (self.net, off - skf::NET_OFF)
        } else if off >= skf::LL_OFF {
            (self.mac, off - skf::LL_OFF)
        } else {
            return None;
        };
        let start = start as usize;
        let bytes = bytes.get(start..start.checked_add(size)?)?;
        Some(bytes.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b)))
    }
}

/// One place an IP header may start in a frame: the labels the prologue jumps to for
/// IPv4 and IPv6 there, and its offset.
struct IpStart {
    v4: Label,
    v6: Label,
    base: u32,
}

/// Ethernet: untagged, or one 802.1Q / 802.1ad tag in the frame; the IP header at 14 or 18.
fn ethernet_prologue(a: &mut Asm, has_v4: bool, has_v6: bool, reject: Label) -> Vec<IpStart> {
    let starts = [14u32, 18].map(|base| IpStart { v4: a.label(), v6: a.label(), base });
    let vlan = a.label();
    let v4_or = |l: Label| if has_v4 { To(l) } else { To(reject) };
    let v6_or = |l: Label| if has_v6 { To(l) } else { To(reject) };
    a.stmt(op::LD | op::H | op::ABS, 12);
    a.jump(op::JEQ, ETH_P_8021Q, To(vlan), Next);
    a.jump(op::JEQ, ETH_P_8021AD, To(vlan), Next);
    a.jump(op::JEQ, ETH_P_IP, v4_or(starts[0].v4), Next);
    a.jump(op::JEQ, ETH_P_IPV6, v6_or(starts[0].v6), To(reject));
    a.bind(vlan);
    a.stmt(op::LD | op::H | op::ABS, 16);
    a.jump(op::JEQ, ETH_P_IP, v4_or(starts[1].v4), Next);
    a.jump(op::JEQ, ETH_P_IPV6, v6_or(starts[1].v6), To(reject));
    starts.into()
}

/// Raw IP (a `SOCK_DGRAM` ring): the IP header at 0, its version in the high nibble of
/// the first byte (the version checks of `ipv4`/`ipv6` then see the same byte).
fn ip_prologue(a: &mut Asm, has_v4: bool, has_v6: bool, reject: Label) -> Vec<IpStart> {
    let start = IpStart { v4: a.label(), v6: a.label(), base: 0 };
    let v4 = if has_v4 { To(start.v4) } else { To(reject) };
    let v6 = if has_v6 { To(start.v6) } else { To(reject) };
    a.stmt(op::LD | op::B | op::ABS, 0);
    a.stmt(op::ALU | op::RSH | op::K, 4);
    a.jump(op::JEQ, 4, v4, Next);
    a.jump(op::JEQ, 6, v6, To(reject));
    vec![start]
}

/// IPv4 at frame offset `base`: destination, fragment offset, then to `l4` with
/// A = protocol and X = offset of the L4 header.
fn ipv4(a: &mut Asm, base: u32, dsts: &[Ipv4Addr], l4: Label, reject: Label) {
    let ok = a.label();
    // Version 4 with a header length of at least 5 words: first byte 0x45..=0x4f.
    a.stmt(op::LD | op::B | op::ABS, base);
    a.jump(op::JGE, 0x45, Next, To(reject));
    a.jump(op::JGT, 0x4f, To(reject), Next);
    a.stmt(op::LD | op::W | op::ABS, base + 16);
    for (n, d) in dsts.iter().enumerate() {
        let miss = if n + 1 == dsts.len() { To(reject) } else { Next };
        a.jump(op::JEQ, u32::from(*d), To(ok), miss);
    }
    a.bind(ok);
    // Fragment offset (low 13 bits of bytes 6..8) non-zero: no L4 header here.
    a.stmt(op::LD | op::H | op::ABS, base + 6);
    a.jump(op::JSET, 0x1fff, To(reject), Next);
    a.stmt(op::LDX | op::B | op::MSH, base);
    a.stmt(op::MISC | op::TXA, 0);
    a.stmt(op::ALU | op::ADD | op::K, base);
    a.stmt(op::MISC | op::TAX, 0);
    a.stmt(op::LD | op::B | op::ABS, base + 9);
    a.ja(l4);
}

/// IPv6 at frame offset `base`: destination, then extension headers to `accept`, or to
/// `l4` with A = next header and X = offset of the L4 header.
fn ipv6(a: &mut Asm, base: u32, dsts: &[Ipv6Addr], l4: Label, accept: Label, reject: Label) {
    let ok = a.label();
    a.stmt(op::LD | op::B | op::ABS, base);
    a.jump(op::JGE, 0x60, Next, To(reject));
    a.jump(op::JGT, 0x6f, To(reject), Next);
    for (n, d) in dsts.iter().enumerate() {
        let miss = if n + 1 == dsts.len() { reject } else { a.label() };
        let o = d.octets();
        for w in 0..4 {
            let word = u32::from_be_bytes([o[4 * w], o[4 * w + 1], o[4 * w + 2], o[4 * w + 3]]);
            a.stmt(op::LD | op::W | op::ABS, base + 24 + 4 * w as u32);
            let hit = if w == 3 { To(ok) } else { Next };
            a.jump(op::JEQ, word, hit, To(miss));
        }
        if miss != reject {
            a.bind(miss);
        }
    }
    a.bind(ok);
    a.stmt(op::LDX | op::W | op::IMM, base + 40);
    a.stmt(op::LD | op::B | op::ABS, base + 6);
    for nh in IPV6_EXT_HEADERS {
        a.jump(op::JEQ, nh, To(accept), Next);
    }
    a.ja(l4);
}

/// A = port: a binary search over the sorted, deduplicated `ports`, ending in `ret`s
/// of its own (every subtree of at most [`SEARCH_LOCAL`] ports gets a pair).
fn port_search(a: &mut Asm, ports: &[u16]) {
    if ports.len() <= SEARCH_LOCAL {
        // Small enough that every jump inside stays short with returns right after it.
        let (acc, rej) = (a.label(), a.label());
        search_tree(a, ports, acc, rej);
        a.bind(acc);
        a.stmt(op::RET | op::K, SNAP_LEN);
        a.bind(rej);
        a.stmt(op::RET | op::K, 0);
        return;
    }
    let right = a.label();
    let mid = ports.len() / 2;
    a.jump(op::JGE, u32::from(ports[mid]), To(right), Next);
    port_search(a, &ports[..mid]);
    a.bind(right);
    port_search(a, &ports[mid..]);
}

fn search_tree(a: &mut Asm, ports: &[u16], accept: Label, reject: Label) {
    if ports.len() <= SEARCH_LEAF {
        for (n, p) in ports.iter().enumerate() {
            let miss = if n + 1 == ports.len() { To(reject) } else { Next };
            a.jump(op::JEQ, u32::from(*p), To(accept), miss);
        }
        return;
    }
    let right = a.label();
    let mid = ports.len() / 2;
    a.jump(op::JGE, u32::from(ports[mid]), To(right), Next);
    search_tree(a, &ports[..mid], accept, reject);
    a.bind(right);
    search_tree(a, &ports[mid..], accept, reject);
}

/// A forward jump target of the assembler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Where a conditional jump goes on one side.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// The instruction after the jump.
    Next,
    To(Label),
}
use Target::{Next, To};

#[derive(Clone, Copy, Debug)]
enum Item {
    Stmt(Insn),
    Ja(Label),
    Cond { code: u16, k: u32, jt: Target, jf: Target },
    Bind(Label),
}

/// A label assembler for classic BPF. Conditional jumps have 8-bit offsets; a side
/// whose target ends up further away gets a trampoline right after the jump (an
/// unconditional `ja`, which has a 32-bit offset, or a copy of the target if that
/// is a `ret`), found by iterating the layout to a fixed point. The knock filter and
/// the fanout program ([`crate::fanout`]) are both written with it.
#[derive(Debug, Default)]
pub(crate) struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    pub(crate) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    pub(crate) fn bind(&mut self, l: Label) {
        self.items.push(Item::Bind(l));
    }

    pub(crate) fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Stmt(Insn::stmt(code, k)));
    }

    pub(crate) fn ja(&mut self, l: Label) {
        self.items.push(Item::Ja(l));
    }

    pub(crate) fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Cond { code: op::JMP | code | op::K, k, jt, jf });
    }

    /// Lays the items out and resolves every label. Panics on an unbound label or a
    /// backward jump: both are bugs of the generator, not of its input.
    pub(crate) fn assemble(&self) -> Vec<Insn> {
        // far[i] = (jt needs a trampoline, jf needs one), for Cond items.
        let mut far = vec![(false, false); self.items.len()];
        let (pos, label_pos) = loop {
            let (pos, label_pos) = self.layout(&far);
            let mut changed = false;
            for (i, item) in self.items.iter().enumerate() {
                if let Item::Cond { jt, jf, .. } = *item {
                    let after = pos[i] + 1;
                    for (side, target) in [(0, jt), (1, jf)] {
                        let flag = if side == 0 { &mut far[i].0 } else { &mut far[i].1 };
                        if let To(l) = target {
                            let t = Self::resolve(&label_pos, l);
                            assert!(t >= after, "backward jump to label {l:?}");
                            if !*flag && t - after > usize::from(u8::MAX) {
                                *flag = true;
                                changed = true;
                            }
                        }
                    }
                }
            }
            if !changed {
                break (pos, label_pos);
            }
        };
        // What a label's instruction is, for ret trampolines.
        let mut at_label: Vec<Option<Insn>> = vec![None; self.labels];
        let mut pending = Vec::new();
        for item in &self.items {
            match item {
                Item::Bind(l) => pending.push(*l),
                Item::Stmt(s) => {
                    for l in pending.drain(..) {
                        at_label[l.0] = Some(*s);
                    }
                }
                _ => pending.clear(),
            }
        }
        let mut out = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            debug_assert!(matches!(item, Item::Bind(_)) || out.len() == pos[i]);
            match *item {
                Item::Bind(_) => {}
                Item::Stmt(s) => out.push(s),
                Item::Ja(l) => {
                    let t = Self::resolve(&label_pos, l);
                    assert!(t > pos[i], "backward ja to label {l:?}");
                    out.push(Insn::stmt(op::JMP | op::JA, (t - pos[i] - 1) as u32));
                }
                Item::Cond { code, k, jt, jf } => {
                    let (ft, ff) = far[i];
                    let after = pos[i] + 1;
                    let next = after + usize::from(ft) + usize::from(ff);
                    let off = |target: Target, is_far: bool, tramp: usize| -> u8 {
                        if is_far {
                            return tramp as u8;
                        }
                        let t = match target {
                            Next => next,
                            To(l) => Self::resolve(&label_pos, l),
                        };
                        u8::try_from(t - after).expect("short jump checked by layout")
                    };
                    out.push(Insn::jump(code, k, off(jt, ft, 0), off(jf, ff, usize::from(ft))));
                    for (is_far, target) in [(ft, jt), (ff, jf)] {
                        if let (true, To(l)) = (is_far, target) {
                            let here = out.len();
                            let t = Self::resolve(&label_pos, l);
                            match at_label[l.0] {
                                Some(ret) if ret.class() == op::RET => out.push(ret),
                                _ => out.push(Insn::stmt(op::JMP | op::JA, (t - here - 1) as u32)),
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Position of every item (a label binds to the next instruction) for the given
    /// trampoline choices.
    fn layout(&self, far: &[(bool, bool)]) -> (Vec<usize>, Vec<Option<usize>>) {
        let mut pos = Vec::with_capacity(self.items.len());
        let mut label_pos = vec![None; self.labels];
        let mut p = 0usize;
        for (i, item) in self.items.iter().enumerate() {
            pos.push(p);
            match item {
                Item::Bind(l) => label_pos[l.0] = Some(p),
                Item::Stmt(_) | Item::Ja(_) => p += 1,
                Item::Cond { .. } => p += 1 + usize::from(far[i].0) + usize::from(far[i].1),
            }
        }
        (pos, label_pos)
    }

    fn resolve(label_pos: &[Option<usize>], l: Label) -> usize {
        label_pos[l.0].unwrap_or_else(|| panic!("label {l:?} never bound"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    const LINK6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1234, 0x56ff, 0xfe78, 0x9abc);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

    fn spec() -> FilterSpec {
        FilterSpec {
            v4_dst: vec![SERVER4],
            v6_dst: vec![SERVER6, LINK6],
            tcp_ports: vec![7000, 8000],
            udp_ports: vec![9000],
        }
    }

    /// Ethernet header with an optional 802.1Q tag.
    fn eth(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        if let Some(tci) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// TCP (20-byte header, SYN) or UDP (8-byte header) to `dport`.
    fn l4(proto: u8, dport: u16) -> Vec<u8> {
        let mut h = 40000u16.to_be_bytes().to_vec();
        h.extend_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            h.extend_from_slice(&[0, 8, 0, 0]);
        }
        h
    }

    struct V4 {
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        frag: u16,
        options: usize,
        vlan: Option<u16>,
    }

    impl Default for V4 {
        fn default() -> V4 {
            V4 { dst: SERVER4, proto: 6, dport: 7000, frag: 0, options: 0, vlan: None }
        }
    }

    fn v4(p: V4) -> Vec<u8> {
        let mut f = eth(0x0800, p.vlan);
        let payload = l4(p.proto, p.dport);
        let ihl = 5 + p.options / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&p.frag.to_be_bytes());
        f.extend_from_slice(&[64, p.proto, 0, 0]);
        f.extend_from_slice(&CLIENT4.octets());
        f.extend_from_slice(&p.dst.octets());
        f.extend_from_slice(&vec![1u8; p.options]); // NOP options
        f.extend_from_slice(&payload);
        f
    }

    /// IPv6 to `dst`; with `hop_by_hop`, an 8-byte hop-by-hop header precedes the L4 header.
    fn v6(dst: Ipv6Addr, proto: u8, dport: u16, hop_by_hop: bool) -> Vec<u8> {
        let mut f = eth(0x86dd, None);
        let mut payload = Vec::new();
        if hop_by_hop {
            payload.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
        }
        payload.extend_from_slice(&l4(proto, dport));
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.push(if hop_by_hop { 0 } else { proto });
        f.push(64);
        f.extend_from_slice(&CLIENT6.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&payload);
        f
    }

    /// Both links: the tests build Ethernet frames, and a [`Link::Ip`] ring holds
    /// them without their (untagged) Ethernet header.
    const LINKS: [Link; 2] = [Link::Ethernet, Link::Ip];

    /// `frame`, built with an untagged Ethernet header, as a `link` ring holds it.
    fn as_link(frame: &[u8], link: Link) -> &[u8] {
        match link {
            Link::Ethernet => frame,
            Link::Ip => &frame[14..],
        }
    }

    /// Whether `p`, the socket filter of a `link` ring, passes `frame` (built with an
    /// untagged Ethernet header).
    fn passes_on(p: &Program, link: Link, frame: &[u8]) -> bool {
        p.run_on(as_link(frame, link), link, Hook::Socket) != 0
    }

    fn passes(p: &Program, frame: &[u8]) -> bool {
        passes_on(p, Link::Ethernet, frame)
    }

    #[test]
    fn knock_to_listed_tcp_port_passes() {
        for link in LINKS {
            let p = Program::knock(&spec(), link).unwrap();
            let frame = v4(V4::default());
            assert_eq!(p.run_on(as_link(&frame, link), link, Hook::Socket), SNAP_LEN, "{link}");
            assert!(passes_on(&p, link, &v4(V4 { dport: 8000, ..V4::default() })), "{link}");
            assert!(passes_on(&p, link, &v4(V4 { proto: 17, dport: 9000, ..V4::default() })), "{link}");
        }
    }

    #[test]
    fn unlisted_port_wrong_dst_and_wrong_protocol_are_rejected() {
        for link in LINKS {
            let p = Program::knock(&spec(), link).unwrap();
            let passes = |f: &[u8]| passes_on(&p, link, f);
            assert!(!passes(&v4(V4 { dport: 7001, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { dport: 9000, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { dst: OTHER4, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { proto: 17, dport: 7000, ..V4::default() })), "{link}");
            // ICMP to us.
            assert!(!passes(&v4(V4 { proto: 1, ..V4::default() })), "{link}");
        }
    }

    #[test]
    fn one_vlan_tag_is_looked_through() {
        let p = Program::knock(&spec(), Link::Ethernet).unwrap();
        assert!(passes(&p, &v4(V4 { vlan: Some(100), ..V4::default() })));
        assert!(!passes(&p, &v4(V4 { vlan: Some(100), dport: 7001, ..V4::default() })));
        let mut ad = v4(V4 { vlan: Some(100), ..V4::default() });
        ad[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        assert!(passes(&p, &ad));
        // Two tags (QinQ) are not looked through.
        let mut qinq = eth(0x8100, Some(100));
        qinq.extend_from_slice(&v4(V4 { vlan: Some(200), ..V4::default() })[12..]);
        assert!(!passes(&p, &qinq));
    }

    #[test]
    fn fragments_and_options() {
        for link in LINKS {
            let p = Program::knock(&spec(), link).unwrap();
            let passes = |f: &[u8]| passes_on(&p, link, f);
            // Non-first fragment: rejected, whatever its bytes look like.
            assert!(!passes(&v4(V4 { frag: 0x0001, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { frag: 0x2000 | 0x0100, ..V4::default() })), "{link}");
            // First fragment (MF set, offset 0) carries the header: passes.
            assert!(passes(&v4(V4 { frag: 0x2000, ..V4::default() })), "{link}");
            // DF does not matter.
            assert!(passes(&v4(V4 { frag: 0x4000, ..V4::default() })), "{link}");
            // IHL 6: the port is found after the options.
            assert!(passes(&v4(V4 { options: 4, ..V4::default() })), "{link}");
            assert!(passes(&v4(V4 { options: 40, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { options: 4, dport: 7001, ..V4::default() })), "{link}");
            // IHL < 5 is not IPv4.
            let mut bad = v4(V4::default());
            bad[14] = 0x44;
            assert!(!passes(&bad), "{link}");
        }
        let p = Program::knock(&spec(), Link::Ethernet).unwrap();
        assert!(passes(&p, &v4(V4 { options: 40, vlan: Some(5), ..V4::default() })));
    }

    #[test]
    fn ipv6() {
        for link in LINKS {
            let p = Program::knock(&spec(), link).unwrap();
            let passes = |f: &[u8]| passes_on(&p, link, f);
            assert!(passes(&v6(SERVER6, 6, 7000, false)), "{link}");
            assert!(passes(&v6(LINK6, 17, 9000, false)), "{link}");
            assert!(!passes(&v6(SERVER6, 6, 7001, false)), "{link}");
            assert!(!passes(&v6(SERVER6, 17, 8000, false)), "{link}");
            assert!(!passes(&v6(CLIENT6, 6, 7000, false)), "{link}");
            // Extension header: the address decides, userspace walks the chain.
            assert!(passes(&v6(SERVER6, 6, 7000, true)), "{link}");
            assert!(passes(&v6(SERVER6, 6, 1, true)), "{link}");
            assert!(!passes(&v6(CLIENT6, 6, 7000, true)), "{link}");
            // ICMPv6 (58) is not a knock.
            assert!(!passes(&v6(SERVER6, 58, 7000, false)), "{link}");
        }
    }

    #[test]
    fn empty_address_families_pass_nothing() {
        for link in LINKS {
            let only6 = Program::knock(&FilterSpec { v4_dst: vec![], ..spec() }, link).unwrap();
            assert!(!passes_on(&only6, link, &v4(V4::default())), "{link}");
            assert!(passes_on(&only6, link, &v6(SERVER6, 6, 7000, false)), "{link}");
            let only4 = Program::knock(&FilterSpec { v6_dst: vec![], ..spec() }, link).unwrap();
            assert!(passes_on(&only4, link, &v4(V4::default())), "{link}");
            assert!(!passes_on(&only4, link, &v6(SERVER6, 6, 7000, false)), "{link}");
            let no_udp = Program::knock(&FilterSpec { udp_ports: vec![], ..spec() }, link).unwrap();
            assert!(!passes_on(&no_udp, link, &v4(V4 { proto: 17, dport: 9000, ..V4::default() })), "{link}");
            assert!(passes_on(&no_udp, link, &v4(V4::default())), "{link}");
            let nothing = Program::knock(&FilterSpec::default(), link).unwrap();
            assert!(!passes_on(&nothing, link, &v4(V4::default())), "{link}");
        }
    }

    #[test]
    fn arp_and_truncated_frames_are_rejected() {
        for link in LINKS {
            let p = Program::knock(&spec(), link).unwrap();
            let run = |f: &[u8]| p.run_on(f, link, Hook::Socket) != 0;
            let mut arp = eth(0x0806, None);
            arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            arp.extend_from_slice(&[0; 20]);
            assert!(!run(as_link(&arp, link)), "{link}");
            let full = v4(V4::default());
            let full = as_link(&full, link);
            let l3 = full.len() - 20 - 20;
            // Cut anywhere before the end of the destination port: rejected.
            for len in 0..l3 + 20 + 4 {
                assert!(!run(&full[..len]), "{link}: truncated to {len}");
            }
            assert!(run(&full[..l3 + 20 + 4]), "{link}");
            let full6 = v6(SERVER6, 17, 9000, false);
            let full6 = as_link(&full6, link);
            let l3 = full6.len() - 40 - 8;
            for len in 0..l3 + 40 + 4 {
                assert!(!run(&full6[..len]), "{link}: truncated to {len}");
            }
            assert!(!run(&[]), "{link}");
        }
    }

    /// What only a raw-IP ring sees: the version nibble is all there is to go by.
    #[test]
    fn raw_ip_versions() {
        let p = Program::knock(&spec(), Link::Ip).unwrap();
        let good = v4(V4::default());
        let good6 = v6(SERVER6, 6, 7000, false);
        for version in [0u8, 1, 5, 7, 15] {
            let mut bad = good[14..].to_vec();
            bad[0] = version << 4 | 5;
            assert_eq!(p.run_on(&bad, Link::Ip, Hook::Socket), 0, "version {version}");
        }
        // An IPv6 packet labelled 4 (and the reverse) fails the other family's checks.
        let mut v6_as_4 = good6[14..].to_vec();
        v6_as_4[0] = 0x45;
        assert_eq!(p.run_on(&v6_as_4, Link::Ip, Hook::Socket), 0);
        let mut v4_as_6 = good[14..].to_vec();
        v4_as_6[0] = 0x65;
        assert_eq!(p.run_on(&v4_as_6, Link::Ip, Hook::Socket), 0);
        // Each link's program on the other link's frames: nothing passes.
        let eth_prog = Program::knock(&spec(), Link::Ethernet).unwrap();
        for f in [&good, &good6] {
            assert_ne!(eth_prog.run(f), 0);
            assert_eq!(eth_prog.run(&f[14..]), 0);
            assert_ne!(p.run_on(&f[14..], Link::Ip, Hook::Socket), 0);
            assert_eq!(p.run_on(f, Link::Ip, Hook::Socket), 0);
        }
        // The raw-IP program is the Ethernet one minus its link-layer prologue: shorter.
        assert!(p.len() < eth_prog.len(), "{} vs {}", p.len(), eth_prog.len());
        check_structure(&p);
    }

    /// Every jump inside the program, and the program reaches its end only through `ret`s.
    fn check_structure(p: &Program) {
        assert!(p.len() <= MAX_INSNS);
        assert_eq!(&Program::from_insns(p.insns().to_vec()).unwrap(), p);
    }

    #[test]
    fn a_thousand_ports_build_and_work() {
        let tcp: Vec<u16> = (0..1000).map(|i| 10_000 + 3 * i).collect();
        let udp: Vec<u16> = (0..1000).map(|i| 20_001 + 7 * i).collect();
        let s = FilterSpec { tcp_ports: tcp.clone(), udp_ports: udp.clone(), ..spec() };
        for link in LINKS {
            let p = Program::knock(&s, link).unwrap();
            check_structure(&p);
            let passes = |f: &[u8]| passes_on(&p, link, f);
            // About 1.3 instructions per port, plus the fixed part.
            assert!(p.len() < 3000, "{link}: {} instructions", p.len());
            for &port in &tcp {
                assert!(passes(&v4(V4 { dport: port, ..V4::default() })), "{link}: tcp {port}");
                assert!(!passes(&v4(V4 { dport: port + 1, ..V4::default() })), "{link}: tcp {}", port + 1);
                assert!(!passes(&v4(V4 { proto: 17, dport: port, ..V4::default() })), "{link}: udp {port}");
            }
            for &port in &udp {
                assert!(passes(&v6(SERVER6, 17, port, false)), "{link}: udp {port}");
                assert!(!passes(&v6(SERVER6, 17, port - 1, false)), "{link}: udp {}", port - 1);
            }
            assert!(!passes(&v4(V4 { dport: 0, ..V4::default() })), "{link}");
            assert!(!passes(&v4(V4 { dport: u16::MAX, ..V4::default() })), "{link}");
        }
    }

    #[test]
    fn too_many_ports_is_an_error() {
        let s = FilterSpec { tcp_ports: (0..5000).map(|i| 2 * i).collect(), ..spec() };
        for link in LINKS {
            match Program::knock(&s, link) {
                Err(CaptureError::FilterTooLong { len }) => assert!(len > MAX_INSNS),
                other => panic!("expected FilterTooLong, got {other:?}"),
            }
        }
    }

    #[test]
    fn duplicates_and_order_do_not_matter() {
        for link in LINKS {
            let a =
                Program::knock(&FilterSpec { tcp_ports: vec![8000, 7000, 8000], ..spec() }, link).unwrap();
            let b = Program::knock(&spec(), link).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn assembler_inserts_trampolines_for_far_targets() {
        let mut a = Asm::default();
        let far = a.label();
        let ret = a.label();
        a.stmt(op::LD | op::B | op::ABS, 0);
        a.jump(op::JEQ, 1, To(far), To(ret));
        for _ in 0..300 {
            a.stmt(op::ALU | op::ADD | op::K, 1);
        }
        a.bind(far);
        a.stmt(op::ALU | op::ADD | op::K, 5);
        a.stmt(op::RET | op::A, 0);
        a.bind(ret);
        a.stmt(op::RET | op::K, 7);
        let p = Program::from_insns(a.assemble()).unwrap();
        // ld, jeq, `ja far`, a copy of `ret #7`, 300 adds, add, ret a, ret 7.
        assert_eq!(p.len(), 2 + 2 + 300 + 3);
        assert_eq!(p.insns()[1], Insn::jump(op::JMP | op::JEQ, 1, 0, 1));
        assert_eq!(p.insns()[2], Insn::stmt(op::JMP | op::JA, 301));
        assert_eq!(p.insns()[3], Insn::stmt(op::RET | op::K, 7));
        assert_eq!(p.run(&[1]), 6);
        assert_eq!(p.run(&[2]), 7);
        assert_eq!(p.run(&[]), 0);
    }

    #[test]
    fn interpreter_basics() {
        let p = Program::from_insns(vec![
            Insn::stmt(op::LDX | op::B | op::MSH, 0),
            Insn::stmt(op::LD | op::H | op::IND, 0),
            Insn::stmt(op::ST, 3),
            Insn::stmt(op::LD | op::W | op::LEN, 0),
            Insn::stmt(op::LDX | op::MEM, 3),
            Insn::stmt(op::ALU | op::ADD | op::X, 0),
            Insn::jump(op::JMP | op::JSET | op::K, 0x8000_0000, 0, 1),
            Insn::stmt(op::RET | op::K, 1),
            Insn::stmt(op::RET | op::A, 0),
        ])
        .unwrap();
        // X = 4 * (0x41 & 0xf) = 4; A = half word at 4 = 0x0102; len 6.
        assert_eq!(p.run(&[0x41, 0, 0, 0, 1, 2]), 0x0102 + 6);
        // Half word at 4 out of bounds: 0.
        assert_eq!(p.run(&[0x41, 0, 0, 0, 1]), 0);
        assert!(Program::from_insns(vec![]).is_err());
        assert!(Program::from_insns(vec![Insn::jump(op::JMP | op::JEQ, 0, 1, 0)]).is_err());
        assert!(Program::from_insns(vec![Insn::stmt(op::JMP | op::JA, 1), Insn::stmt(op::RET, 0)]).is_err());
        assert_eq!(Program::accept_all().run(&[]), SNAP_LEN);
        assert_eq!(Program::reject_all().run(&[1, 2, 3]), 0);
    }

    #[test]
    fn interpreter_hooks_and_negative_offsets() {
        let frame = v4(V4::default());
        let ld = |code: u16, k: u32| {
            Program::from_insns(vec![Insn::stmt(code, k), Insn::stmt(op::RET | op::A, 0)])
        };
        let first = ld(op::LD | op::B | op::ABS, 0).unwrap();
        // A socket filter sees the destination MAC first, a fanout program the IP header.
        assert_eq!(first.run(&frame), 2);
        assert_eq!(first.run_as(&frame, Hook::Socket), 2);
        assert_eq!(first.run_as(&frame, Hook::Fanout), 0x45);
        let len = ld(op::LD | op::W | op::LEN, 0).unwrap();
        assert_eq!(len.run_as(&frame, Hook::Socket), frame.len() as u32);
        assert_eq!(len.run_as(&frame, Hook::Fanout), frame.len() as u32 - 14);
        // MAC- and network-relative loads do not depend on the hook.
        for hook in [Hook::Socket, Hook::Fanout] {
            let ethertype = ld(op::LD | op::H | op::ABS, skf::LL_OFF + 12).unwrap();
            assert_eq!(ethertype.run_as(&frame, hook), 0x0800);
            let src = ld(op::LD | op::W | op::ABS, skf::NET_OFF + 12).unwrap();
            assert_eq!(src.run_as(&frame, hook), u32::from(CLIENT4));
            let proto = ld(op::LD | op::H | op::ABS, skf::AD_OFF + skf::AD_PROTOCOL).unwrap();
            assert_eq!(proto.run_as(&frame, hook), 0x0800);
            assert_eq!(proto.run_as(&v6(SERVER6, 6, 7000, false), hook), 0x86dd);
            // An in-frame tag: the protocol is its TPID.
            assert_eq!(proto.run_as(&v4(V4 { vlan: Some(7), ..V4::default() }), hook), 0x8100);
            // Other ancillary data, and a protocol load through X, end the program.
            let ifindex = ld(op::LD | op::W | op::ABS, skf::AD_OFF + 8).unwrap();
            assert_eq!(ifindex.run_as(&frame, hook), 0);
            let ind = ld(op::LD | op::H | op::IND, skf::AD_OFF).unwrap();
            assert_eq!(ind.run_as(&frame, hook), 0);
            // Past the end of the MAC view.
            let far = ld(op::LD | op::B | op::ABS, skf::LL_OFF + frame.len() as u32).unwrap();
            assert_eq!(far.run_as(&frame, hook), 0);
        }
        // Below the link-layer range: nothing.
        assert_eq!(ld(op::LD | op::B | op::ABS, skf::LL_OFF - 1).unwrap().run(&frame), 0);
        // A runt: no network header, no protocol.
        let proto = ld(op::LD | op::H | op::ABS, skf::AD_OFF + skf::AD_PROTOCOL).unwrap();
        assert_eq!(proto.run_as(&frame[..10], Hook::Fanout), 0);
        assert_eq!(first.run_as(&frame[..14], Hook::Fanout), 0);
    }

    /// On a raw-IP (tun) link, every view starts at the IP header and the protocol comes
    /// from the version nibble.
    #[test]
    fn interpreter_on_raw_ip() {
        let frame = v4(V4::default());
        let packet = &frame[14..];
        let ld = |code: u16, k: u32| {
            Program::from_insns(vec![Insn::stmt(code, k), Insn::stmt(op::RET | op::A, 0)]).unwrap()
        };
        let proto = ld(op::LD | op::H | op::ABS, skf::AD_OFF + skf::AD_PROTOCOL);
        for hook in [Hook::Socket, Hook::Fanout] {
            assert_eq!(ld(op::LD | op::B | op::ABS, 0).run_on(packet, Link::Ip, hook), 0x45);
            assert_eq!(ld(op::LD | op::W | op::LEN, 0).run_on(packet, Link::Ip, hook), packet.len() as u32);
            assert_eq!(ld(op::LD | op::B | op::ABS, skf::LL_OFF).run_on(packet, Link::Ip, hook), 0x45);
            let src = ld(op::LD | op::W | op::ABS, skf::NET_OFF + 12);
            assert_eq!(src.run_on(packet, Link::Ip, hook), u32::from(CLIENT4));
            assert_eq!(proto.run_on(packet, Link::Ip, hook), 0x0800);
            let six = v6(SERVER6, 6, 7000, false);
            assert_eq!(proto.run_on(&six[14..], Link::Ip, hook), 0x86dd);
            // tun drops other versions; were one to get here, it would have no protocol.
            assert_eq!(proto.run_on(&[0x50, 0, 0, 0], Link::Ip, hook), 0);
            assert_eq!(proto.run_on(&[], Link::Ip, hook), 0);
        }
    }
}
