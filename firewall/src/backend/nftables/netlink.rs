//! The nfnetlink half of the nftables backend: the few `nf_tables` messages it sends
//! itself, one socket to send them on, and the kernel's answers.
//!
//! Changes go in batches (`NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`),
//! which the kernel applies as one transaction; every message in them asks for an ACK
//! (`NLM_F_ACK`), so a batch is done when each one is acknowledged or one is refused.
//! Reads (`NFT_MSG_GETSET`, `NFT_MSG_GETSETELEM`) are dumps outside batches.
//!
//! The messages are built and parsed with `netlink-packet-netfilter`; the unit tests
//! below pin their bytes against fixtures written from the kernel's
//! `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkMessage, NetlinkPayload, Parseable, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_SUBSYS_NFTABLES`: the `res_id` of a batch's begin and end messages names the
/// subsystem the batch is for.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;
/// `NLMSG_HDRLEN`.
const NLMSG_HDRLEN: usize = 16;
/// How long to wait for the kernel's answer. It answers while we send (nfnetlink runs
/// in the sender's context), so this only bounds a kernel that misbehaves.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer: a dump part is at most a few pages.
const RECV_BUF: usize = 128 * 1024;

/// One change to a set, as a batch message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ElemOp {
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE | NLM_F_EXCL` and
    /// `NFTA_SET_ELEM_TIMEOUT` in milliseconds: fails with `EEXIST` if the element is
    /// there, so an existing element's timeout is never silently left as it was.
    Add { timeout_ms: u64 },
    /// `NFT_MSG_DELSETELEM`: fails with `ENOENT` if the element is not there.
    Delete,
}

/// A batch being built: the begin message is in, [`Batch::finish`] adds the end.
#[derive(Debug)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    first: u32,
    next: u32,
    /// Sequence numbers of the messages that asked for an ACK.
    acks: Vec<u32>,
}

impl Batch {
    /// Starts a batch whose messages are numbered from `seq` (the begin message).
    pub(super) fn new(seq: u32) -> Batch {
        let mut b = Batch { bytes: Vec::with_capacity(256), first: seq, next: seq, acks: Vec::new() };
        b.push(control(ControlMessage::BatchBegin), NLM_F_REQUEST);
        b
    }

    fn push(&mut self, msg: NetfilterMessage, flags: u16) -> u32 {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        let mut msg = NetlinkMessage::from(msg);
        msg.header.flags = flags;
        msg.header.sequence_number = seq;
        msg.finalize();
        let start = self.bytes.len();
        // Every part is a multiple of 4 bytes (NLMSG_ALIGN), so messages follow each
        // other without padding.
        self.bytes.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut self.bytes[start..]);
        if flags & NLM_F_ACK != 0 {
            self.acks.push(seq);
        }
        seq
    }

    /// Adds or deletes `addr` in `table`'s `set` (family `inet`).
    pub(super) fn element(&mut self, table: &str, set: &str, addr: IpAddr, op: ElemOp) -> u32 {
        let mut elem = vec![SetElementAttribute::Key(DataAttribute::Value(key(addr)))];
        let (kind, flags) = match op {
            ElemOp::Add { timeout_ms } => {
                elem.push(SetElementAttribute::Timeout(timeout_ms));
                (
                    NfTablesMessage::NewSetElement as fn(SetElementMessage) -> NfTablesMessage,
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
            }
            ElemOp::Delete => (
                NfTablesMessage::DeleteSetElement as fn(SetElementMessage) -> NfTablesMessage,
                NLM_F_REQUEST | NLM_F_ACK,
            ),
        };
        let body = SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.to_owned()),
                SetElementList::Set(set.to_owned()),
                SetElementList::Elements(vec![ListAttribute::Element(elem)]),
            ],
        };
        self.push(nft(kind(body)), flags)
    }

    /// Deletes `table` (family `inet`) with everything in it.
    pub(super) fn delete_table(&mut self, table: &str) -> u32 {
        let body = TableMessage { attributes: vec![TableAttribute::Name(table.to_owned())] };
        self.push(nft(NfTablesMessage::DeleteTable(body)), NLM_F_REQUEST | NLM_F_ACK)
    }

    /// Closes the batch; the bytes are ready to send in one datagram.
    pub(super) fn finish(mut self) -> Sealed {
        self.push(control(ControlMessage::BatchEnd), NLM_F_REQUEST);
        Sealed {
            bytes: self.bytes,
            first: self.first,
            count: self.next.wrapping_sub(self.first),
            acks: self.acks,
        }
    }
}

/// A finished batch.
#[derive(Debug)]
pub(super) struct Sealed {
    pub(super) bytes: Vec<u8>,
    first: u32,
    count: u32,
    acks: Vec<u32>,
}

impl Sealed {
    fn contains(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.first) < self.count
    }

    /// The index of message `seq` in the batch (0 is the begin message).
    fn index(&self, seq: u32) -> u32 {
        seq.wrapping_sub(self.first)
    }
}

/// A control message (batch begin or end) for the nf_tables subsystem.
fn control(msg: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, NFNETLINK_V0, NFNL_SUBSYS_NFTABLES),
        msg,
    )
}

/// An nf_tables message for family `inet`.
fn nft(msg: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, NFNETLINK_V0, 0), msg)
}

/// The dump request for the sets of `table`.
pub(super) fn get_sets(table: &str) -> NetfilterMessage {
    nft(NfTablesMessage::GetSet(SetMessage { attributes: vec![SetAttribute::Table(table.to_owned())] }))
}

/// The request for one element: answered with the element, or `ENOENT`.
pub(super) fn get_element(table: &str, set: &str, addr: IpAddr) -> NetfilterMessage {
    nft(NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_owned()),
            SetElementList::Set(set.to_owned()),
            SetElementList::Elements(vec![ListAttribute::Element(vec![SetElementAttribute::Key(
                DataAttribute::Value(key(addr)),
            )])]),
        ],
    }))
}

/// An address as a set element's key: its bytes in network order.
fn key(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The dump request for the elements of `table`'s `set`.
pub(super) fn get_elements(table: &str, set: &str) -> NetfilterMessage {
    nft(NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![SetElementList::Table(table.to_owned()), SetElementList::Set(set.to_owned())],
    }))
}

/// What a set dump says about one set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SetInfo {
    pub(super) name: String,
    pub(super) flags: u32,
    pub(super) key_len: u32,
    /// `NFTA_SET_USERDATA`: libnftnl's TLVs (the set's comment among them).
    pub(super) userdata: Vec<u8>,
}

impl SetInfo {
    pub(super) fn from_message(msg: &NetfilterMessage) -> Option<SetInfo> {
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewSet(SetMessage { attributes })) = &msg.inner
        else {
            return None;
        };
        let mut info = SetInfo::default();
        for a in attributes {
            match a {
                SetAttribute::Name(n) => info.name.clone_from(n),
                SetAttribute::Flags(f) => info.flags = f.bits(),
                SetAttribute::KeyLen(l) => info.key_len = *l,
                SetAttribute::UserData(u) => info.userdata.clone_from(u),
                _ => {}
            }
        }
        Some(info)
    }

    pub(super) fn has_timeout(&self) -> bool {
        self.flags & SetFlags::Timeout.bits() != 0
    }
}

/// One element of a set dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ElemInfo {
    pub(super) addr: IpAddr,
    /// `NFTA_SET_ELEM_TIMEOUT`: the timeout it was added with.
    pub(super) timeout: Option<Duration>,
    /// `NFTA_SET_ELEM_EXPIRATION`: how long until the kernel removes it.
    pub(super) expires: Option<Duration>,
}

impl ElemInfo {
    /// The elements one `NFT_MSG_NEWSETELEM` dump message carries (keys of 4 or 16
    /// bytes; anything else is skipped).
    pub(super) fn from_message(msg: &NetfilterMessage) -> Vec<ElemInfo> {
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(SetElementMessage { attributes })) =
            &msg.inner
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for list in attributes {
            let SetElementList::Elements(elems) = list else { continue };
            for elem in elems {
                let ListAttribute::Element(attrs) = elem else { continue };
                let mut addr = None;
                let (mut timeout, mut expires) = (None, None);
                for a in attrs {
                    match a {
                        SetElementAttribute::Key(DataAttribute::Value(k)) => {
                            addr = match k.len() {
                                4 => <[u8; 4]>::try_from(&k[..]).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(&k[..]).ok().map(IpAddr::from),
                                _ => None,
                            }
                        }
                        SetElementAttribute::Timeout(ms) => timeout = Some(Duration::from_millis(*ms)),
                        SetElementAttribute::Expiration(ms) => expires = Some(Duration::from_millis(*ms)),
                        _ => {}
                    }
                }
                if let Some(addr) = addr {
                    out.push(ElemInfo { addr, timeout, expires });
                }
            }
        }
        out
    }
}

/// Why a request failed.
#[derive(Debug)]
pub(super) enum NlError {
    /// The socket failed (`op`: what it was doing).
    Io { op: &'static str, source: io::Error },
    /// The kernel refused message `index` of the batch (0 is the begin message), or the
    /// dump, with this errno.
    Kernel { errno: i32, index: u32 },
    /// The kernel did not answer in time, or answered with something unreadable.
    Protocol(String),
}

impl NlError {
    pub(super) fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Io { op, source } => write!(f, "netlink {op}: {source}"),
            NlError::Kernel { errno, index } => {
                write!(
                    f,
                    "the kernel answered {} ({})",
                    errno_name(*errno),
                    io::Error::from_raw_os_error(*errno)
                )?;
                if *index > 0 {
                    write!(f, " to message {index} of the batch")?;
                }
                Ok(())
            }
            NlError::Protocol(what) => write!(f, "netlink: {what}"),
        }
    }
}

/// The symbolic name of the errnos nf_tables answers with.
pub(super) fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::EAGAIN => "EAGAIN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::E2BIG => "E2BIG",
        libc::ENOTDIR => "ENOTDIR",
        _ => "errno",
    }
}

/// An `NETLINK_NETFILTER` socket with its sequence counter.
#[derive(Debug)]
pub(super) struct Nfnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    /// Opens the socket (in the caller's network namespace) with a kernel-chosen port id.
    pub(super) fn open() -> Result<Nfnl, NlError> {
        let io = |op| move |source| NlError::Io { op, source };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("socket(AF_NETLINK, NETLINK_NETFILTER)"))?;
        sock.bind_auto().map_err(io("bind"))?;
        // Answers are queued before send returns; never block on a missing one.
        sock.set_non_blocking(true).map_err(io("set O_NONBLOCK"))?;
        // Start somewhere else than a previous run, so a late answer to it cannot be
        // mistaken for one to us (it would also go to its own port id).
        let seq =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        Ok(Nfnl { sock, seq, buf: vec![0; RECV_BUF] })
    }

    /// A new batch numbered after everything sent so far.
    pub(super) fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
    }

    /// Sends `batch` and waits for the kernel's verdict on it: `Ok` when every message
    /// that asked for an ACK got one, the first refusal otherwise.
    pub(super) fn commit(&mut self, batch: Batch) -> Result<(), NlError> {
        let batch = batch.finish();
        self.seq = batch.first.wrapping_add(batch.count);
        self.send(&batch.bytes)?;
        let mut pending = batch.acks.clone();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while !pending.is_empty() {
            let n = self.recv(deadline)?;
            let mut refusal = None;
            walk(&self.buf[..n], |kind, seq, payload| {
                if kind != NLMSG_ERROR || !batch.contains(seq) || refusal.is_some() {
                    return Ok(());
                }
                let err = parse_error(payload)?;
                match err.code {
                    None => pending.retain(|&s| s != seq),
                    Some(code) => {
                        refusal = Some(NlError::Kernel { errno: -code.get(), index: batch.index(seq) })
                    }
                }
                Ok(())
            })?;
            if let Some(e) = refusal {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends the request `req` and hands each message of the answer to `each`. A
    /// request for sets or elements *of* something (`NFT_MSG_GETSET` with a table,
    /// `NFT_MSG_GETSETELEM` without elements) is a dump, ended by `NLMSG_DONE`; one
    /// naming elements is a plain get, answered by the elements and then an ACK.
    ///
    /// Returns `Ok(false)` when the kernel flagged a dump as interrupted by a change
    /// (`NLM_F_DUMP_INTR`): the caller should ask again.
    pub(super) fn request(
        &mut self,
        req: NetfilterMessage,
        mut each: impl FnMut(&NetfilterMessage),
    ) -> Result<bool, NlError> {
        let is_dump = !matches!(
            &req.inner,
            NetfilterMessageInner::NfTables(NfTablesMessage::GetSetElement(SetElementMessage { attributes }))
                if attributes.iter().any(|a| matches!(a, SetElementList::Elements(_)))
        );
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(req);
        msg.header.flags = NLM_F_REQUEST | if is_dump { NLM_F_DUMP } else { NLM_F_ACK };
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.send(&bytes)?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut consistent = true;
        loop {
            let n = self.recv(deadline)?;
            let mut done = None;
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let nl = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| NlError::Protocol(format!("malformed answer: {e}")))?;
                let len = nl.length() as usize;
                let (kind, mseq, flags) = (nl.message_type(), nl.sequence_number(), nl.flags());
                if mseq == seq && done.is_none() {
                    if flags & NLM_F_DUMP_INTR != 0 {
                        consistent = false;
                    }
                    if kind == NLMSG_DONE {
                        done = Some(Ok(()));
                    } else if kind == NLMSG_ERROR {
                        done = Some(match parse_error(nl.payload())?.code {
                            None => Ok(()),
                            Some(code) => Err(NlError::Kernel { errno: -code.get(), index: 0 }),
                        });
                    } else {
                        match NetlinkMessage::<NetfilterMessage>::deserialize(&rest[..len]) {
                            Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(m), .. }) => each(&m),
                            Ok(_) => {}
                            Err(e) => return Err(NlError::Protocol(format!("unreadable answer: {e}"))),
                        }
                    }
                }
                let next = (len + 3) & !3;
                if next >= rest.len() {
                    break;
                }
                rest = &rest[next..];
            }
            if let Some(end) = done {
                return end.map(|()| consistent);
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NlError> {
        let n = self
            .sock
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| NlError::Io { op: "send", source })?;
        if n != bytes.len() {
            return Err(NlError::Protocol(format!("sent {n} of {} bytes", bytes.len())));
        }
        Ok(())
    }

    /// Receives one datagram into the buffer; waits (polling) until `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<usize, NlError> {
        loop {
            match self.sock.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    return Err(NlError::Protocol(format!(
                        "an answer of {n} bytes did not fit the {} byte buffer",
                        self.buf.len()
                    )))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(NlError::Protocol(format!(
                            "no answer from the kernel within {ANSWER_TIMEOUT:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(NlError::Io { op: "recv", source }),
            }
        }
    }
}

/// Calls `f(type, seq, payload)` for each message of a datagram.
fn walk(datagram: &[u8], mut f: impl FnMut(u16, u32, &[u8]) -> Result<(), NlError>) -> Result<(), NlError> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let nl = NetlinkBuffer::new_checked(rest)
            .map_err(|e| NlError::Protocol(format!("malformed answer: {e}")))?;
        let len = nl.length() as usize;
        f(nl.message_type(), nl.sequence_number(), nl.payload())?;
        let next = (len + 3) & !3;
        if next >= rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    Ok(())
}

fn parse_error(payload: &[u8]) -> Result<ErrorMessage, NlError> {
    ErrorBuffer::new_checked(&payload)
        .and_then(|b| ErrorMessage::parse(&b))
        .map_err(|e| NlError::Protocol(format!("malformed NLMSG_ERROR: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Hex with whitespace and `#` comments to the end of a line.
    fn hex(s: &str) -> Vec<u8> {
        let digits: String = s
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.chars().filter(|c| c.is_ascii_hexdigit()))
            .collect();
        (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
    }

    const BEGIN_SEQ_100: &str = "
        14000000 1000 0100 64000000 00000000   # len 20, NFNL_MSG_BATCH_BEGIN, REQUEST, seq 100
        00 00 000a                              # AF_UNSPEC, V0, res_id NFNL_SUBSYS_NFTABLES (BE)
    ";

    #[test]
    fn add_element_batch_matches_fixture() {
        let mut b = Batch::new(100);
        let seq = b.element(
            "sesame",
            "d4_x",
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            ElemOp::Add { timeout_ms: 3000 },
        );
        assert_eq!(seq, 101);
        let sealed = b.finish();
        let expected = hex(&format!(
            "{BEGIN_SEQ_100}
            4c000000                 # len 76
            0c0a                     # (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM (12)
            0506                     # REQUEST | ACK | EXCL | CREATE
            65000000 00000000        # seq 101, port id 0
            01 00 0000               # NFPROTO_INET, V0, res_id 0
            0b00 0100 73657361 6d650000      # NFTA_SET_ELEM_LIST_TABLE \"sesame\\0\" + pad
            0900 0200 64345f78 00000000      # NFTA_SET_ELEM_LIST_SET \"d4_x\\0\" + pad
            2000 0380                # NFTA_SET_ELEM_LIST_ELEMENTS, nested, len 32
              1c00 0180              # NFTA_LIST_ELEM, nested, len 28
                0c00 0180            # NFTA_SET_ELEM_KEY, nested, len 12
                  0800 0100 c6120002 # NFTA_DATA_VALUE 198.18.0.2
                0c00 0400 00000000 00000bb8  # NFTA_SET_ELEM_TIMEOUT 3000 ms (BE u64)
            14000000 1100 0100 66000000 00000000   # NFNL_MSG_BATCH_END, seq 102
            00 00 000a
            "
        ));
        assert_eq!(sealed.bytes, expected);
        assert_eq!(sealed.acks, vec![101]);
        assert!(
            sealed.contains(100) && sealed.contains(102) && !sealed.contains(103) && !sealed.contains(99)
        );
    }

    #[test]
    fn delete_element_batch_matches_fixture() {
        let mut b = Batch::new(100);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        b.element("sesame", "d6_x", IpAddr::V6(v6), ElemOp::Delete);
        let expected = hex(&format!(
            "{BEGIN_SEQ_100}
            4c000000                 # len 76
            0e0a                     # NFT_MSG_DELSETELEM (14)
            0500                     # REQUEST | ACK
            65000000 00000000
            01 00 0000
            0b00 0100 73657361 6d650000
            0900 0200 64365f78 00000000      # \"d6_x\"
            2000 0380
              1c00 0180
                1800 0180            # NFTA_SET_ELEM_KEY, len 24
                  1400 0100 20010db8 00000000 00000000 00000002   # 2001:db8::2
            14000000 1100 0100 66000000 00000000
            00 00 000a
            "
        ));
        assert_eq!(b.finish().bytes, expected);
    }

    #[test]
    fn refresh_is_delete_then_add_in_one_batch() {
        let mut b = Batch::new(7);
        let a = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(b.element("sesame", "d4_x", a, ElemOp::Delete), 8);
        assert_eq!(b.element("sesame", "d4_x", a, ElemOp::Add { timeout_ms: 1 }), 9);
        let s = b.finish();
        assert_eq!(s.acks, vec![8, 9]);
        assert_eq!((s.first, s.count), (7, 4));
        // The messages' types in order: begin, DELSETELEM, NEWSETELEM, end.
        let mut kinds = Vec::new();
        walk(&s.bytes, |k, _, _| {
            kinds.push(k);
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds, vec![0x10, 0x0a0e, 0x0a0c, 0x11]);
    }

    #[test]
    fn delete_table_matches_fixture() {
        let mut b = Batch::new(100);
        b.delete_table("sesame");
        let expected = hex(&format!(
            "{BEGIN_SEQ_100}
            20000000 020a 0500 65000000 00000000   # len 32, NFT_MSG_DELTABLE (2), REQUEST|ACK
            01 00 0000
            0b00 0100 73657361 6d650000            # NFTA_TABLE_NAME \"sesame\"
            14000000 1100 0100 66000000 00000000
            00 00 000a
            "
        ));
        assert_eq!(b.finish().bytes, expected);
    }

    #[test]
    fn dump_requests_match_fixtures() {
        let mut msg = NetlinkMessage::from(get_elements("sesame", "d4_x"));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = 5;
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let expected = hex("
            2c000000 0d0a 0103 05000000 00000000   # len 44, NFT_MSG_GETSETELEM (13), REQUEST|DUMP
            01 00 0000
            0b00 0100 73657361 6d650000
            0900 0200 64345f78 00000000
        ");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn get_element_request_matches_fixture() {
        let mut msg =
            NetlinkMessage::from(get_element("sesame", "d4_x", IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        msg.header.sequence_number = 6;
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let expected = hex("
            40000000 0d0a 0500 06000000 00000000   # len 64, NFT_MSG_GETSETELEM, REQUEST|ACK
            01 00 0000
            0b00 0100 73657361 6d650000
            0900 0200 64345f78 00000000
            1400 0380                              # elements, len 20
              1000 0180                            # one element, len 16
                0c00 0180 0800 0100 c6120002       # key 198.18.0.2
        ");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn parses_an_element_dump_message() {
        // What the kernel sends for `198.18.0.2 timeout 3s expires 2.5s` in a dump.
        let raw = hex("
            58000000 0c0a 0200 05000000 00000000   # len 88, NEWSETELEM, MULTI, seq 5
            01 00 0000
            0b00 0100 73657361 6d650000
            0900 0200 64345f78 00000000
            2c00 0380                              # elements, len 44
              2800 0180                            # one element, len 40
                0c00 0180 0800 0100 c6120002
                0c00 0400 00000000 00000bb8        # timeout 3000
                0c00 0500 00000000 000009c4        # expiration 2500
        ");
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&raw).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else { panic!("not an inner message") };
        assert_eq!(
            ElemInfo::from_message(&m),
            vec![ElemInfo {
                addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
                timeout: Some(Duration::from_millis(3000)),
                expires: Some(Duration::from_millis(2500)),
            }]
        );
    }

    #[test]
    fn parses_a_set_dump_message() {
        let raw = hex("
            48000000 090a 0200 05000000 00000000   # len 72, NEWSET, MULTI, seq 5
            01 00 0000
            0b00 0100 73657361 6d650000            # NFTA_SET_TABLE
            0900 0200 64345f78 00000000            # NFTA_SET_NAME d4_x
            0800 0300 00000010                     # NFTA_SET_FLAGS NFT_SET_TIMEOUT
            0800 0500 00000004                     # NFTA_SET_KEY_LEN 4
            0a00 0d00 0704 61626300 0000           # NFTA_SET_USERDATA: TLV 7, len 4, \"abc\\0\"
        ");
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&raw).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else { panic!("not an inner message") };
        let info = SetInfo::from_message(&m).unwrap();
        assert_eq!(info.name, "d4_x");
        assert!(info.has_timeout());
        assert_eq!(info.key_len, 4);
        assert_eq!(info.userdata, vec![0x07, 0x04, b'a', b'b', b'c', 0]);
    }

    #[test]
    fn errors_name_the_errno() {
        let e = NlError::Kernel { errno: libc::ENOENT, index: 1 };
        assert!(e.to_string().starts_with("the kernel answered ENOENT (No such file or directory"), "{e}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }
}
