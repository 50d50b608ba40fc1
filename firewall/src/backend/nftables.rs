//! The native nftables backend: sesame's own table, one set per door and family, and
//! grants as set elements that the kernel times out by itself.
//!
//! # What it installs
//!
//! One table, `inet sesame`, that sesame owns whole:
//!
//! ```text
//! table inet sesame {
//!     set d4_openSSH_3f1c0a9b2e71 {          # one per door and family
//!         type ipv4_addr
//!         flags timeout
//!         comment "door openSSH"             # the door's real name, escaped
//!         elements = { 198.18.0.2 timeout 30s expires 21s }
//!     }
//!     set d6_openSSH_3f1c0a9b2e71 { type ipv6_addr; flags timeout; comment "door openSSH" }
//!
//!     chain input {
//!         type filter hook input priority filter - 10; policy accept;
//!         tcp dport 22 ct state established,related accept
//!         tcp dport 22 ip saddr @d4_openSSH_3f1c0a9b2e71 accept
//!         tcp dport 22 ip6 saddr @d6_openSSH_3f1c0a9b2e71 accept
//!         tcp dport 22 drop comment "sesame: closed until knocked"
//!     }
//! }
//! ```
//!
//! For each port a door protects, the chain accepts packets of connections that are
//! already established (or related to one), accepts packets from the sets of every door
//! that protects the port, and drops every other packet to it. The operator needs no
//! rule of their own, and the port stays closed while sesamed is not running: the table
//! outlives the daemon (fail closed).
//!
//! # Names
//!
//! Door names can hold any character, nft identifiers cannot. A set is named
//! `d4_` or `d6_`, then the door name's first 12 characters with everything but ASCII
//! letters and digits turned into `_`, then `_` and 48 bits of the name's FNV-1a hash
//! in hex ([`set_name`]): at most 28 characters, safe in nft's syntax and on old kernels.
//! The real name is kept in the set's comment (`door NAME`, with everything outside a
//! small safe alphabet written as `%XX` UTF-8 bytes; [`door_comment`]), which is how
//! [`Backend::present`] maps a set back to its door. A name whose escaped form does not
//! fit nft's 128-character comment is cut and marked (`%..`); such a door is mapped back
//! from what the last [`Backend::prepare`] of this process was given.
//!
//! # Priority
//!
//! The chain hooks `input` at priority `filter - 10` (-10): after conntrack (-200, so
//! `ct state` is known) and mangle (-150, so marks set there are seen), and just before
//! the ordinary filter chains at 0 (iptables-nft's `INPUT`, firewalld, ufw, Docker). So
//! an unknocked connection is dropped before those chains count, log or queue it, while
//! nothing sesame does hides a packet from anything that runs earlier.
//!
//! # Living with other tables
//!
//! A packet passes through every base chain on the `input` hook, each table's in
//! priority order. An `accept` ends the packet's walk through *that* chain only; the
//! chains of other tables (and other hooks later on) still see it. A `drop`, anywhere,
//! is final. Hence:
//!
//! - sesame's `accept` of a knocker does not override anything: if another table drops
//!   port 22 (or everything not explicitly allowed), that drop still wins, and the
//!   operator must let the port through there too (e.g. accept `tcp dport 22` in their
//!   own table, leaving the decision to sesame);
//! - sesame's `drop` of an unknocked new connection is final: no other table can accept
//!   it back;
//! - sesame touches only ports its doors protect; all other traffic passes its chain
//!   untouched (policy `accept`), for the other tables to decide.
//!
//! Only traffic to the gateway itself (the `input` hook) is covered, not forwarded
//! traffic.
//!
//! # Grants
//!
//! [`Backend::open`] and [`Backend::close`] never start a process: they talk nfnetlink
//! on a socket the backend keeps (the `netlink` submodule): `NFT_MSG_NEWSETELEM` with
//! the grant's timeout as the element's `NFTA_SET_ELEM_TIMEOUT`, or
//! `NFT_MSG_DELSETELEM`, each in a batch (`NFNL_MSG_BATCH_BEGIN` ... `_END`), waiting
//! for the kernel's ACK; a refusal is reported with its errno. The kernel deletes an
//! element when its timeout runs out, whether sesamed is alive or not. Opening an
//! address that is already in the set replaces its element (delete and add in one
//! batch, one transaction), so it lasts the new timeout from now; connections it let
//! in stay up through that, by the `ct state established` rule. Both look the element
//! up first (`NFT_MSG_GETSETELEM`) and send only a batch the kernel will accept: a
//! refused batch is rolled back at a cost of milliseconds, an accepted one takes tens
//! of microseconds. Grants are per address: the ports come from the door's rules given
//! to [`Backend::prepare`], not from `Access::ports`.
//!
//! [`Backend::prepare`] runs `nft -f -` once, with one atomic script; it keeps the sets
//! (and their elements, whose timeouts keep running) of doors that remain and deletes
//! those of doors that are gone.

mod netlink;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use self::netlink::{ElemInfo, ElemOp, Nfnl, NlError, SetInfo};
use super::{Access, Backend, BackendError, DoorRule, Port};

/// The table sesame owns, in family `inet`.
pub const TABLE: &str = "sesame";
/// The base chain on the `input` hook.
pub const CHAIN: &str = "input";
/// The chain's priority: `filter - 10` (see the module docs).
pub const PRIORITY: i32 = -10;

const BACKEND: &str = "nftables";
/// `NFTNL_UDATA_SET_COMMENT`: the TLV type of a set's comment in its userdata.
const UDATA_SET_COMMENT: u8 = 7;
/// nft's limit on a comment's length.
const COMMENT_MAX: usize = 128;
/// What starts every set comment.
const COMMENT_PREFIX: &str = "door ";
/// Marks a comment cut to fit: `%` followed by something that is not two hex digits
/// never occurs in a whole escaped name.
const CUT_MARK: &str = "%..";

pub use super::Family;

impl Family {
    fn set_prefix(self) -> &'static str {
        match self {
            Family::V4 => "d4_",
            Family::V6 => "d6_",
        }
    }

    fn nft_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    fn saddr(self) -> &'static str {
        match self {
            Family::V4 => "ip saddr",
            Family::V6 => "ip6 saddr",
        }
    }
}

/// 64-bit FNV-1a: stable across builds and Rust versions, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The set that holds `door`'s grants of `family`: `d4_` or `d6_`, a sanitized prefix
/// of the name (12 characters at most, `[A-Za-z0-9_]`), `_`, 48 bits of its FNV-1a hash.
pub fn set_name(door: &str, family: Family) -> String {
    let prefix: String =
        door.chars().take(12).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{}{prefix}_{:012x}", family.set_prefix(), fnv1a64(door.as_bytes()) & 0xffff_ffff_ffff)
}

/// Characters a comment carries as they are; every other byte is written `%XX`.
fn comment_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || " -_.:/@+,=()[]!?*~^".contains(c)
}

/// The comment of `door`'s sets: `door NAME`, NAME escaped so it is safe inside nft's
/// double quotes (no `"`, `\`, control or non-ASCII characters), cut to nft's 128
/// characters and marked `%..` if it must be.
pub fn door_comment(door: &str) -> String {
    let mut out = String::from(COMMENT_PREFIX);
    // Where each character's piece starts, to cut whole characters only.
    let mut starts = Vec::new();
    for c in door.chars() {
        starts.push(out.len());
        if comment_safe(c) {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.len() > COMMENT_MAX {
        let cut = starts.into_iter().rev().find(|&at| at + CUT_MARK.len() <= COMMENT_MAX).unwrap_or(0);
        out.truncate(cut);
        out.push_str(CUT_MARK);
    }
    out
}

/// The door name a comment made by [`door_comment`] holds; `None` for a comment that
/// was cut, or not made by it.
pub fn door_from_comment(comment: &str) -> Option<String> {
    let escaped = comment.strip_prefix(COMMENT_PREFIX)?;
    let mut bytes = Vec::with_capacity(escaped.len());
    let raw = escaped.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            bytes.push(
                u8::from_str_radix(hex, 16).ok().filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))?,
            );
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The comment in a set's userdata (libnftnl's TLVs: type, length, value).
fn comment_from_userdata(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if kind == UDATA_SET_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        rest = &rest[2 + len..];
    }
    None
}

/// One grant in the kernel, as [`NftablesBackend::elements`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub door: String,
    pub addr: IpAddr,
    /// The timeout the element was added with.
    pub timeout: Option<Duration>,
    /// How long until the kernel removes it.
    pub expires: Option<Duration>,
}

/// The `nft -f -` script that makes the table hold exactly `doors` (already checked
/// and merged by name), given the sets the table has now (`existing`).
///
/// One transaction: the chain is emptied, deleted and made anew (so a chain from an
/// older version with other settings is replaced too), sets of doors that remain are
/// declared again (a no-op that keeps their elements), sets of doors that are gone are
/// deleted, and the rules are written. At no point of it is a port open: the old rules
/// stay in force until the kernel commits the whole script.
fn script(doors: &BTreeMap<String, Vec<Port>>, existing: &[String]) -> String {
    let mut s = String::new();
    let table = format!("inet {TABLE}");
    s.push_str(&format!("add table {table}\n"));
    // Make sure the chain exists, so the flush and delete below cannot fail.
    s.push_str(&format!("add chain {table} {CHAIN}\n"));
    s.push_str(&format!("flush chain {table} {CHAIN}\n"));
    s.push_str(&format!("delete chain {table} {CHAIN}\n"));
    let mut wanted = Vec::new();
    for door in doors.keys() {
        let comment = door_comment(door);
        for fam in [Family::V4, Family::V6] {
            let set = set_name(door, fam);
            s.push_str(&format!(
                "add set {table} {set} {{ type {}; flags timeout; comment \"{comment}\"; }}\n",
                fam.nft_type()
            ));
            wanted.push(set);
        }
    }
    for set in existing {
        if !wanted.contains(set) {
            s.push_str(&format!("delete set {table} {set}\n"));
        }
    }
    s.push_str(&format!(
        "add chain {table} {CHAIN} {{ type filter hook input priority {PRIORITY}; policy accept; }}\n"
    ));
    // Port by port: every door protecting it gets its accept rules before the drop.
    let mut ports: BTreeMap<Port, Vec<&str>> = BTreeMap::new();
    for (door, door_ports) in doors {
        for p in door_ports {
            ports.entry(*p).or_default().push(door);
        }
    }
    for (port, doors) in &ports {
        let m = format!("{} dport {}", port.proto.name(), port.port);
        let rule = format!("add rule {table} {CHAIN} {m}");
        s.push_str(&format!("{rule} ct state established,related accept\n"));
        for door in doors {
            for fam in [Family::V4, Family::V6] {
                s.push_str(&format!("{rule} {} @{} accept\n", fam.saddr(), set_name(door, fam)));
            }
        }
        s.push_str(&format!("{rule} drop comment \"sesame: closed until knocked\"\n"));
    }
    s
}

/// The doors by name with their ports merged, sorted; an error if two names share a set.
fn merge_doors(doors: &[DoorRule]) -> Result<BTreeMap<String, Vec<Port>>, String> {
    let mut merged: BTreeMap<String, Vec<Port>> = BTreeMap::new();
    for d in doors {
        let ports = merged.entry(d.door.clone()).or_default();
        for p in &d.ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
    }
    let mut by_set: HashMap<String, &str> = HashMap::new();
    for door in merged.keys() {
        if let Some(other) = by_set.insert(set_name(door, Family::V4), door) {
            return Err(format!("doors {other:?} and {door:?} map to the same set name; rename one"));
        }
    }
    Ok(merged)
}

/// Where to look for `nft` besides `PATH` (a non-login root shell may lack sbin).
const SBIN: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// The native nftables backend. See the module docs.
///
/// Opening the netlink socket is deferred to the first call that needs it; it is made
/// in the network namespace of the thread making that call, and `nft` runs in the
/// namespace of the thread calling [`Backend::prepare`] or [`Backend::check`].
#[derive(Debug, Default)]
pub struct NftablesBackend {
    /// `nft` to run; `None`: found on `PATH` or in the sbin directories at each use.
    nft: Option<PathBuf>,
    nl: Mutex<Option<Nfnl>>,
    /// Set name → door, from the last `prepare`.
    known: Mutex<HashMap<String, String>>,
}

impl NftablesBackend {
    /// The backend, finding `nft` on `PATH` (or in /usr/sbin, /sbin, /usr/local/sbin)
    /// when it needs it. Opens nothing yet.
    pub fn new() -> NftablesBackend {
        NftablesBackend::default()
    }

    /// The backend, running exactly `program` as `nft`.
    pub fn with_nft(program: impl Into<PathBuf>) -> NftablesBackend {
        NftablesBackend { nft: Some(program.into()), ..NftablesBackend::default() }
    }

    /// Every grant in the kernel now, with its timeout and time left. An absent table
    /// has none. Sets whose door cannot be told (not made by sesame, or a cut comment
    /// of a door this process was not given) are left out.
    pub fn elements(&self) -> Result<Vec<Element>, BackendError> {
        let known = lock(&self.known).clone();
        for _attempt in 0..3 {
            let mut out = Vec::new();
            let mut consistent = true;
            let sets = match self.sets() {
                Ok((sets, ok)) => {
                    consistent &= ok;
                    sets
                }
                Err(e) => return Err(failed("list the sets of table inet sesame", e)),
            };
            for set in sets.into_iter().filter(SetInfo::has_timeout) {
                let fam = match set.key_len {
                    4 => Family::V4,
                    16 => Family::V6,
                    _ => continue,
                };
                let door = known.get(&set.name).cloned().or_else(|| {
                    comment_from_userdata(&set.userdata)
                        .and_then(|c| door_from_comment(&c))
                        .filter(|d| set_name(d, fam) == set.name)
                });
                let Some(door) = door else { continue };
                let mut elems = Vec::new();
                let res = self.with_nl(|nl| {
                    nl.request(netlink::get_elements(TABLE, &set.name), |m| {
                        elems.extend(ElemInfo::from_message(m))
                    })
                });
                match res {
                    Ok(ok) => consistent &= ok,
                    // Deleted since the set dump.
                    Err(e) if e.errno() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(failed(&format!("list the elements of set {}", set.name), e)),
                }
                out.extend(elems.into_iter().map(|e| Element {
                    door: door.clone(),
                    addr: e.addr,
                    timeout: e.timeout,
                    expires: e.expires,
                }));
            }
            if consistent {
                out.sort_by(|a, b| (&a.door, a.addr).cmp(&(&b.door, b.addr)));
                return Ok(out);
            }
        }
        Err(BackendError::Failed {
            backend: BACKEND,
            op: "list grants".into(),
            detail: "the table kept changing during three dumps in a row".into(),
        })
    }

    /// All sets of the table (none if it does not exist), and whether the dump was
    /// consistent.
    fn sets(&self) -> Result<(Vec<SetInfo>, bool), NlError> {
        let mut sets = Vec::new();
        let res = self.with_nl(|nl| {
            nl.request(netlink::get_sets(TABLE), |m| {
                if let Some(s) = SetInfo::from_message(m) {
                    sets.push(s);
                }
            })
        });
        match res {
            Ok(ok) => Ok((sets, ok)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok((Vec::new(), true)),
            Err(e) => Err(e),
        }
    }

    /// Whether `set` holds `addr` now (an absent set or table holds nothing).
    fn has_element(&self, set: &str, addr: IpAddr) -> Result<bool, NlError> {
        let mut found = false;
        match self.with_nl(|nl| {
            nl.request(netlink::get_element(TABLE, set, addr), |m| {
                found |= !ElemInfo::from_message(m).is_empty()
            })
        }) {
            Ok(_) => Ok(found),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on the socket, opening it first if need be. A socket that failed (as
    /// opposed to a request the kernel refused) is dropped, and the next call opens a
    /// new one.
    fn with_nl<T>(&self, f: impl FnOnce(&mut Nfnl) -> Result<T, NlError>) -> Result<T, NlError> {
        let mut guard = lock(&self.nl);
        if guard.is_none() {
            *guard = Some(Nfnl::open()?);
        }
        let res = f(guard.as_mut().expect("opened above"));
        if matches!(res, Err(NlError::Io { .. } | NlError::Protocol(_))) {
            *guard = None;
        }
        res
    }

    /// Sends a batch built by `build` and waits for the kernel's verdict.
    fn commit(&self, build: impl FnOnce(&mut netlink::Batch)) -> Result<(), NlError> {
        self.with_nl(|nl| {
            let mut b = nl.batch();
            build(&mut b);
            nl.commit(b)
        })
    }

    /// The `nft` program: the configured one, or the first on `PATH` and in sbin.
    fn nft(&self) -> Result<PathBuf, BackendError> {
        if let Some(p) = &self.nft {
            return Ok(p.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SBIN.iter().map(PathBuf::from))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
            .ok_or_else(|| BackendError::Unavailable {
                backend: BACKEND,
                what: format!(
                    "the `nft` program was found neither on PATH nor in {} (install nftables)",
                    SBIN.join(", ")
                ),
            })
    }

    /// Runs `nft ARGS` with `stdin`, returning its stdout; a failure carries its stderr.
    fn run_nft(&self, op: &str, args: &[&str], stdin: &str) -> Result<String, BackendError> {
        let nft = self.nft()?;
        let io = |source| BackendError::Io {
            backend: BACKEND,
            op: format!("{op}: run {}", nft.display()),
            source,
        };
        let mut child = Command::new(&nft)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    BackendError::Unavailable {
                        backend: BACKEND,
                        what: format!("the `nft` program {} is missing (install nftables)", nft.display()),
                    }
                } else {
                    io(e)
                }
            })?;
        let written = child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes());
        let out = child.wait_with_output().map_err(io)?;
        if !out.status.success() || written.is_err() {
            return Err(BackendError::Failed {
                backend: BACKEND,
                op: op.to_owned(),
                detail: format!(
                    "`{} {}` exited with {}: {}",
                    nft.display(),
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves nothing half-done that matters here.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn failed(op: &str, e: NlError) -> BackendError {
    BackendError::Failed { backend: BACKEND, op: op.to_owned(), detail: e.to_string() }
}

/// The element key for `addr`: IPv4-mapped IPv6 addresses are IPv4 (that is how their
/// packets reach the input hook).
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// A grant's timeout for the kernel, in whole milliseconds, rounded up and at least 1:
/// an element with timeout 0 would never expire.
fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1)
}

impl Backend for NftablesBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// Every element carries its timeout: the kernel removes it on time, sesamed or not.
    fn expires_itself(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), BackendError> {
        self.run_nft("check", &["list", "tables"], "").map_err(|e| match e {
            BackendError::Failed { detail, .. } => BackendError::Unavailable {
                backend: BACKEND,
                what: format!("the kernel does not answer for nf_tables: {detail}"),
            },
            other => other,
        })?;
        self.sets().map(drop).map_err(|e| BackendError::Unavailable {
            backend: BACKEND,
            what: format!("nf_tables over netlink: {e}"),
        })
    }

    fn prepare(&self, doors: &[DoorRule]) -> Result<(), BackendError> {
        let doors = merge_doors(doors).map_err(|detail| BackendError::Failed {
            backend: BACKEND,
            op: "prepare".into(),
            detail,
        })?;
        let (existing, _) =
            self.sets().map_err(|e| failed("prepare: list the sets of table inet sesame", e))?;
        let existing: Vec<String> = existing.into_iter().map(|s| s.name).collect();
        self.run_nft("prepare", &["-f", "-"], &script(&doors, &existing))?;
        let mut known = lock(&self.known);
        known.clear();
        for door in doors.keys() {
            for fam in [Family::V4, Family::V6] {
                known.insert(set_name(door, fam), door.clone());
            }
        }
        Ok(())
    }

    fn open(&self, access: &Access) -> Result<(), BackendError> {
        let addr = canonical(access.addr);
        let set = set_name(&access.door, Family::of(addr));
        let add = ElemOp::Add { timeout_ms: timeout_ms(access.timeout) };
        let op = || format!("open door {:?} for {addr}", access.door);
        // Look first, then change what is there: a batch the kernel refuses is rolled
        // back at a cost of milliseconds (it waits for an RCU grace period), one it
        // accepts takes microseconds. A new element is added; an existing one is
        // replaced (delete and add in one transaction) so it lasts `timeout` from now.
        // Should it come or go between the look and the change, look again.
        let mut last = None;
        for _ in 0..3 {
            let exists = self.has_element(&set, addr).map_err(|e| failed(&op(), e))?;
            let res = self.commit(|b| {
                if exists {
                    b.element(TABLE, &set, addr, ElemOp::Delete);
                }
                b.element(TABLE, &set, addr, add);
            });
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::EEXIST) && !exists => last = Some(e),
                Err(e) if e.errno() == Some(libc::ENOENT) && exists => last = Some(e),
                Err(e) if e.errno() == Some(libc::ENOENT) => {
                    return Err(BackendError::Failed {
                        backend: BACKEND,
                        op: op(),
                        detail: format!("{e}: no set {set} in table inet {TABLE} (was the door prepared?)"),
                    })
                }
                Err(e) => return Err(failed(&op(), e)),
            }
        }
        Err(failed(&op(), last.expect("the loop ends only after a refusal")))
    }

    fn close(&self, access: &Access) -> Result<(), BackendError> {
        let addr = canonical(access.addr);
        let set = set_name(&access.door, Family::of(addr));
        let op = || format!("close door {:?} for {addr}", access.door);
        // Not there (no element, set or table): closed already. Looking first spares
        // the kernel a refused batch when the element just expired.
        if !self.has_element(&set, addr).map_err(|e| failed(&op(), e))? {
            return Ok(());
        }
        match self.commit(|b| {
            b.element(TABLE, &set, addr, ElemOp::Delete);
        }) {
            Err(e) if e.errno() != Some(libc::ENOENT) => Err(failed(&op(), e)),
            _ => Ok(()),
        }
    }

    fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError> {
        Ok(self.elements()?.into_iter().map(|e| (e.door, e.addr)).collect())
    }

    fn remove(&self) -> Result<(), BackendError> {
        match self.commit(|b| {
            b.delete_table(TABLE);
        }) {
            Err(e) if e.errno() != Some(libc::ENOENT) => {
                Err(failed(&format!("delete table inet {TABLE}"), e))
            }
            _ => {
                lock(&self.known).clear();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::L4;

    fn door(name: &str, ports: &[&str]) -> DoorRule {
        DoorRule { door: name.into(), ports: ports.iter().map(|p| p.parse().unwrap()).collect() }
    }

    #[test]
    fn set_names_are_safe_short_and_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let h = format!("{:012x}", fnv1a64(b"ssh door") & 0xffff_ffff_ffff);
        assert_eq!(set_name("ssh door", Family::V4), format!("d4_ssh_door_{h}"));
        assert_eq!(set_name("ssh door", Family::V6), format!("d6_ssh_door_{h}"));
        assert_eq!(&set_name("a-very-long-door-name", Family::V4)[..16], "d4_a_very_long__");
        for name in [
            "openSSH",
            "ssh door",
            "a\"b\\c;d{e}",
            "ünïcødé ✓",
            "",
            "x".repeat(300).as_str(),
            "tab\there\nnl",
        ] {
            for fam in [Family::V4, Family::V6] {
                let s = set_name(name, fam);
                assert!(s.len() <= 28, "{s}");
                assert!(s.starts_with(fam.set_prefix()));
                assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{s}");
            }
        }
        assert_ne!(set_name("a b", Family::V4), set_name("a_b", Family::V4), "same prefix, different hash");
        assert_ne!(set_name("x", Family::V4), set_name("x", Family::V6));
    }

    #[test]
    fn comments_round_trip_any_name() {
        for name in ["openSSH", "ssh door", "a\"b\\c;d{e}%41", "ünïcødé ✓", "", "tab\there\nnl", "'$#"]
        {
            let c = door_comment(name);
            assert!(c.len() <= COMMENT_MAX);
            assert!(!c.contains(['"', '\\', '\n', '\t', '\'', '$', '#', ';', '{', '}']), "{c}");
            assert!(c.is_ascii());
            assert_eq!(door_from_comment(&c).as_deref(), Some(name), "{c}");
        }
        assert_eq!(door_comment("ssh door"), "door ssh door");
        assert_eq!(door_comment("a\"b"), "door a%22b");
        assert_eq!(door_comment("é"), "door %C3%A9");
    }

    #[test]
    fn long_names_are_cut_and_marked() {
        let mixed = |x: usize| format!("{}{}", "x".repeat(x), "é".repeat(40));
        for name in
            ["x".repeat(200), "é".repeat(100), format!("{}é", "x".repeat(121)), mixed(1), mixed(2), mixed(3)]
        {
            let c = door_comment(&name);
            assert!(c.len() <= COMMENT_MAX, "{} {c}", c.len());
            assert!(c.ends_with(CUT_MARK), "{c}");
            assert_eq!(door_from_comment(&c), None);
            // No escape was split.
            let body = c.strip_suffix(CUT_MARK).unwrap();
            assert!(door_from_comment(body).is_some(), "{body}");
        }
        let fits = "x".repeat(COMMENT_MAX - COMMENT_PREFIX.len());
        assert_eq!(door_from_comment(&door_comment(&fits)), Some(fits));
    }

    #[test]
    fn foreign_comments_map_to_nothing() {
        for c in ["", "openSSH", "door %4", "door %zz", "door %C3"] {
            assert_eq!(door_from_comment(c), None, "{c:?}");
        }
    }

    #[test]
    fn userdata_comment_is_found_among_tlvs() {
        // KEYBYTEORDER (0) then COMMENT (7), as nft writes them.
        let mut u = vec![0, 4, 2, 0, 0, 0];
        u.extend_from_slice(&[7, 13]);
        u.extend_from_slice(b"door openSSH\0");
        assert_eq!(comment_from_userdata(&u).as_deref(), Some("door openSSH"));
        assert_eq!(comment_from_userdata(&[0, 4, 2, 0, 0, 0]), None);
        assert_eq!(comment_from_userdata(&[7, 40, b'x']), None, "truncated TLV");
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(Duration::ZERO), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_ms(Duration::from_secs(3)), 3000);
        assert_eq!(timeout_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let a: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
        assert_eq!(canonical(a), "198.18.0.2".parse::<IpAddr>().unwrap());
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(canonical(b), b);
    }

    #[test]
    fn script_groups_rules_by_port_and_drops_stale_sets() {
        let doors = merge_doors(&[door("ssh door", &["22/tcp"]), door("b", &["22/tcp", "53/udp"])]).unwrap();
        let s = script(&doors, &[set_name("b", Family::V4), "d4_gone_000000000000".into()]);
        let b4 = set_name("b", Family::V4);
        let b6 = set_name("b", Family::V6);
        let s4 = set_name("ssh door", Family::V4);
        let expected = format!(
            "add table inet sesame
add chain inet sesame input
flush chain inet sesame input
delete chain inet sesame input
add set inet sesame {b4} {{ type ipv4_addr; flags timeout; comment \"door b\"; }}
add set inet sesame {b6} {{ type ipv6_addr; flags timeout; comment \"door b\"; }}
add set inet sesame {s4} {{ type ipv4_addr; flags timeout; comment \"door ssh door\"; }}
add set inet sesame {s6} {{ type ipv6_addr; flags timeout; comment \"door ssh door\"; }}
delete set inet sesame d4_gone_000000000000
add chain inet sesame input {{ type filter hook input priority -10; policy accept; }}
add rule inet sesame input tcp dport 22 ct state established,related accept
add rule inet sesame input tcp dport 22 ip saddr @{b4} accept
add rule inet sesame input tcp dport 22 ip6 saddr @{b6} accept
add rule inet sesame input tcp dport 22 ip saddr @{s4} accept
add rule inet sesame input tcp dport 22 ip6 saddr @{s6} accept
add rule inet sesame input tcp dport 22 drop comment \"sesame: closed until knocked\"
add rule inet sesame input udp dport 53 ct state established,related accept
add rule inet sesame input udp dport 53 ip saddr @{b4} accept
add rule inet sesame input udp dport 53 ip6 saddr @{b6} accept
add rule inet sesame input udp dport 53 drop comment \"sesame: closed until knocked\"
",
            s6 = set_name("ssh door", Family::V6),
        );
        assert_eq!(s, expected);
    }

    #[test]
    fn doors_merge_by_name() {
        let m = merge_doors(&[door("a", &["22/tcp"]), door("a", &["22/tcp", "80/tcp"])]).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"], vec![Port { port: 22, proto: L4::Tcp }, Port { port: 80, proto: L4::Tcp }]);
    }

    #[test]
    fn backend_is_named_nftables() {
        assert_eq!(NftablesBackend::new().name(), "nftables");
    }
}
