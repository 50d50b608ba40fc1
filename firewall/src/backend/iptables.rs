//! The iptables backend: sesame's own chain `SESAME` in the filter table, jumped to
//! from the first rule of `INPUT`, for IPv4 (`iptables`) and IPv6 (`ip6tables`).
//!
//! A grant is one rule per port in the chain:
//!
//! ```text
//! -A SESAME -s ADDR -p PROTO --dport PORT -m comment --comment "sesame door=NAME expires=UNIXTIME" -j ACCEPT
//! ```
//!
//! `NAME` is the door's name percent-encoded ([`encode_door`]), so any name survives the
//! round trip through `iptables -S`; `UNIXTIME` is when the grant ends, in seconds since
//! the epoch, so a restarted sesamed can tell what is stale. Because the jump comes first,
//! grants work on top of the classic knockd base policy (ESTABLISHED accepted, new tcp/22
//! dropped) without touching its rules.
//!
//! Every command passes `-w 10`, so concurrent iptables users (other daemons, an admin)
//! are serialized by the xtables lock; the backend's own operations are serialized by a
//! mutex, so concurrent opens of one grant never leave two rules. Rules in the chain that
//! do not read back as sesame grants are never touched (except by `remove`, which flushes
//! the chain).

use super::tool::{decode_door, door_for_comment, encode_door, Run, SystemRunner, Tool};
use super::{Access, Backend, BackendError, DoorRule, Port, L4};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The chain sesame owns in the filter table of both families.
pub const CHAIN: &str = "SESAME";

const NAME: &str = "iptables";
/// `-w 10`: wait up to 10 s for the xtables lock rather than fail at once.
const WAIT: [&str; 2] = ["-w", "10"];
/// The rule that sends input traffic through the chain.
const JUMP_LINE: &str = "-A INPUT -j SESAME";

pub use super::Family;

/// One grant rule as read back from the chain: `door` opens `port` for `addr` until
/// `expires` (seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesGrant {
    pub door: String,
    pub addr: IpAddr,
    pub port: Port,
    pub expires: u64,
}

impl IptablesGrant {
    /// The rule's comment: `sesame door=NAME expires=UNIXTIME`.
    pub fn comment(&self) -> String {
        format!("sesame door={} expires={}", encode_door(&self.door), self.expires)
    }

    /// The rule specification after `-A SESAME` / `-D SESAME`.
    pub fn spec(&self) -> Vec<String> {
        vec![
            "-s".into(),
            self.addr.to_string(),
            "-p".into(),
            self.port.proto.name().into(),
            "--dport".into(),
            self.port.port.to_string(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            self.comment(),
            "-j".into(),
            "ACCEPT".into(),
        ]
    }

    fn is(&self, door: &str, addr: IpAddr) -> bool {
        self.door == door && self.addr == addr
    }
}

type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The iptables/ip6tables backend. See the [module documentation](self).
pub struct IptablesBackend {
    tool: Tool,
    iptables: String,
    ip6tables: String,
    clock: Clock,
    lock: Mutex<()>,
}

impl fmt::Debug for IptablesBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IptablesBackend")
            .field("iptables", &self.iptables)
            .field("ip6tables", &self.ip6tables)
            .field("prefix", &self.tool.prefix)
            .finish_non_exhaustive()
    }
}

impl Default for IptablesBackend {
    fn default() -> IptablesBackend {
        IptablesBackend::new()
    }
}

impl IptablesBackend {
    /// Runs `iptables` and `ip6tables` from `PATH` with a [`SystemRunner`].
    pub fn new() -> IptablesBackend {
        IptablesBackend::with_runner(SystemRunner::new())
    }

    /// Runs its commands through `runner` (a fake in unit tests).
    pub fn with_runner(runner: impl Run) -> IptablesBackend {
        IptablesBackend {
            tool: Tool::new(NAME, Arc::new(runner)),
            iptables: "iptables".into(),
            ip6tables: "ip6tables".into(),
            clock: Box::new(SystemTime::now),
            lock: Mutex::new(()),
        }
    }

    /// The programs to run for IPv4 and IPv6 (names looked up in `PATH`, or paths).
    pub fn programs(mut self, iptables: impl Into<String>, ip6tables: impl Into<String>) -> IptablesBackend {
        self.iptables = iptables.into();
        self.ip6tables = ip6tables.into();
        self
    }

    /// An argv put before every command, e.g. `["ip", "netns", "exec", "NAME"]`.
    pub fn prefix<I, S>(mut self, prefix: I) -> IptablesBackend
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tool.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// Where expiry times come from (the system clock unless a test says otherwise).
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> IptablesBackend {
        self.clock = Box::new(now);
        self
    }

    /// Every grant rule in the chain, IPv4 first, in chain order (one per port).
    pub fn grants(&self) -> Result<Vec<IptablesGrant>, BackendError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = Vec::new();
        for fam in [Family::V4, Family::V6] {
            all.extend(self.list("list grants", fam)?.unwrap_or_default());
        }
        Ok(all)
    }

    fn program(&self, fam: Family) -> &str {
        match fam {
            Family::V4 => &self.iptables,
            Family::V6 => &self.ip6tables,
        }
    }

    /// Runs `PROGRAM -w 10 ARGS`, failing on a non-zero exit; returns stdout.
    fn ipt(&self, op: &str, fam: Family, args: &[&str]) -> Result<String, BackendError> {
        let mut full: Vec<&str> = WAIT.to_vec();
        full.extend_from_slice(args);
        self.tool.ok(op, self.program(fam), &full)
    }

    /// The grants in the chain, or `None` when the chain does not exist.
    fn list(&self, op: &str, fam: Family) -> Result<Option<Vec<IptablesGrant>>, BackendError> {
        let args = [WAIT[0], WAIT[1], "-S", CHAIN];
        let said = self.tool.run(op, self.program(fam), &args)?;
        if said.ok() {
            return Ok(Some(parse_chain(&said.stdout)));
        }
        // A missing chain is an error to `-S SESAME` (worded differently by iptables-nft
        // and iptables-legacy); tell it from other failures by listing the table.
        let exists = self.ipt(op, fam, &["-S"]).map(|all| all.lines().any(|l| l.trim() == "-N SESAME"));
        match exists {
            Ok(false) => Ok(None),
            _ => Err(self.tool.failed(op, self.program(fam), &args, &said)),
        }
    }

    /// Makes the chain's jump the first rule of INPUT, present exactly once.
    fn ensure_jump(&self, op: &str, fam: Family) -> Result<(), BackendError> {
        let input = self.ipt(op, fam, &["-S", "INPUT"])?;
        let mut at: Vec<usize> = input
            .lines()
            .filter(|l| l.starts_with("-A INPUT "))
            .enumerate()
            .filter(|(_, l)| l.trim_end() == JUMP_LINE)
            .map(|(i, _)| i + 1)
            .collect();
        if at.first() != Some(&1) {
            self.ipt(op, fam, &["-I", "INPUT", "1", "-j", CHAIN])?;
            at = std::iter::once(1).chain(at.into_iter().map(|n| n + 1)).collect();
        }
        // Extra jumps (left by hand, or by two sesameds starting at once) go by number,
        // highest first so the numbers below stay valid.
        for n in at[1..].iter().rev() {
            self.ipt(op, fam, &["-D", "INPUT", &n.to_string()])?;
        }
        Ok(())
    }

    /// Makes the chain's grants `want`: appends the rules missing first (so a grant
    /// being replaced never has a gap), then deletes every rule not wanted, and every
    /// duplicate. Rules that are not sesame grants are not in `current` and stay.
    fn converge(
        &self,
        op: &str,
        fam: Family,
        current: &[IptablesGrant],
        want: &[IptablesGrant],
    ) -> Result<(), BackendError> {
        let mut add: Vec<&IptablesGrant> = Vec::new();
        for w in want {
            if !current.contains(w) && !add.contains(&w) {
                add.push(w);
            }
        }
        let mut kept: Vec<&IptablesGrant> = Vec::new();
        let mut delete: Vec<&IptablesGrant> = Vec::new();
        for c in current {
            if want.contains(c) && !kept.contains(&c) {
                kept.push(c);
            } else {
                delete.push(c);
            }
        }
        for (verb, rules) in [("-A", add), ("-D", delete)] {
            for g in rules {
                let spec = g.spec();
                let mut args = vec![verb, CHAIN];
                args.extend(spec.iter().map(String::as_str));
                self.ipt(op, fam, &args)?;
            }
        }
        Ok(())
    }

    fn expiry(&self, access: &Access) -> u64 {
        let now = (self.clock)().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t = access.timeout;
        now.saturating_add(t.as_secs()).saturating_add(u64::from(t.subsec_nanos() > 0))
    }
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self) -> Result<(), BackendError> {
        for fam in [Family::V4, Family::V6] {
            let program = self.program(fam);
            let args = [WAIT[0], WAIT[1], "-S"];
            let unavailable = |what: String| BackendError::Unavailable { backend: NAME, what };
            match self.tool.run("check", program, &args) {
                Err(BackendError::Io { source, .. }) => {
                    return Err(unavailable(if source.kind() == std::io::ErrorKind::NotFound {
                        format!("`{program}` not found (install the iptables package, or configure its path)")
                    } else {
                        format!("cannot run `{program}`: {source}")
                    }))
                }
                Err(e) => return Err(e),
                Ok(said) if !said.ok() => {
                    let e = self.tool.failed("check", program, &args, &said);
                    let detail = match e {
                        BackendError::Failed { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    return Err(unavailable(format!("`{program} -S` does not work: {detail}")));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    fn prepare(&self, doors: &[DoorRule]) -> Result<(), BackendError> {
        for d in doors {
            door_for_comment(NAME, &d.door)?;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for fam in [Family::V4, Family::V6] {
            let current = match self.list("prepare", fam)? {
                Some(g) => g,
                None => {
                    self.ipt("prepare", fam, &["-N", CHAIN])?;
                    Vec::new()
                }
            };
            self.ensure_jump("prepare", fam)?;
            // Keep each (door, address) grant of a door that remains, with its latest
            // expiry, on the door's ports now; drop grants of doors that are gone.
            let mut want: Vec<IptablesGrant> = Vec::new();
            for g in &current {
                let Some(door) = doors.iter().find(|d| d.door == g.door) else { continue };
                if want.iter().any(|w| w.is(&g.door, g.addr)) {
                    continue;
                }
                let expires = current.iter().filter(|c| c.is(&g.door, g.addr)).map(|c| c.expires).max();
                for port in dedup(&door.ports) {
                    want.push(IptablesGrant {
                        door: g.door.clone(),
                        addr: g.addr,
                        port,
                        expires: expires.unwrap_or(g.expires),
                    });
                }
            }
            self.converge("prepare", fam, &current, &want)?;
        }
        Ok(())
    }

    fn open(&self, access: &Access) -> Result<(), BackendError> {
        door_for_comment(NAME, &access.door)?;
        let fam = Family::of(access.addr);
        let expires = self.expiry(access);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.list("open", fam)?.ok_or_else(|| BackendError::Failed {
            backend: NAME,
            op: "open".into(),
            detail: format!(
                "chain {CHAIN} does not exist in {}'s filter table (prepare has not run)",
                self.program(fam)
            ),
        })?;
        let mut want: Vec<IptablesGrant> =
            current.iter().filter(|g| !g.is(&access.door, access.addr)).cloned().collect();
        for port in dedup(&access.ports) {
            want.push(IptablesGrant { door: access.door.clone(), addr: access.addr, port, expires });
        }
        self.converge("open", fam, &current, &want)
    }

    fn close(&self, access: &Access) -> Result<(), BackendError> {
        let fam = Family::of(access.addr);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = self.list("close", fam)? else { return Ok(()) };
        let want: Vec<IptablesGrant> =
            current.iter().filter(|g| !g.is(&access.door, access.addr)).cloned().collect();
        self.converge("close", fam, &current, &want)
    }

    fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, IpAddr)> = Vec::new();
        for fam in [Family::V4, Family::V6] {
            for g in self.list("present", fam)?.unwrap_or_default() {
                if !out.iter().any(|(d, a)| *d == g.door && *a == g.addr) {
                    out.push((g.door, g.addr));
                }
            }
        }
        Ok(out)
    }

    fn remove(&self) -> Result<(), BackendError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for fam in [Family::V4, Family::V6] {
            let input = self.ipt("remove", fam, &["-S", "INPUT"])?;
            for _ in input.lines().filter(|l| l.trim_end() == JUMP_LINE) {
                self.ipt("remove", fam, &["-D", "INPUT", "-j", CHAIN])?;
            }
            if self.list("remove", fam)?.is_some() {
                self.ipt("remove", fam, &["-F", CHAIN])?;
                self.ipt("remove", fam, &["-X", CHAIN])?;
            }
        }
        Ok(())
    }
}

/// `ports` without repeats, in order.
fn dedup(ports: &[Port]) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::with_capacity(ports.len());
    for p in ports {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}

/// The sesame grants in `iptables -S SESAME` output; other lines are skipped.
pub fn parse_chain(listing: &str) -> Vec<IptablesGrant> {
    listing.lines().filter_map(parse_rule).collect()
}

/// One `-A SESAME ...` line as `iptables -S` prints a grant rule, or `None` for anything
/// else (another chain, a rule sesame did not write, an unknown option).
pub fn parse_rule(line: &str) -> Option<IptablesGrant> {
    let words = split_words(line)?;
    let mut it = words.iter().map(String::as_str);
    if it.next()? != "-A" || it.next()? != CHAIN {
        return None;
    }
    let (mut addr, mut proto, mut port, mut comment, mut target) = (None, None, None, None, None);
    while let Some(opt) = it.next() {
        let val = it.next()?;
        match opt {
            "-s" => {
                let (a, len) = val.split_once('/').unwrap_or((val, ""));
                let a: IpAddr = a.parse().ok()?;
                let full = if a.is_ipv4() { "32" } else { "128" };
                if !(len.is_empty() || len == full) {
                    return None;
                }
                addr = Some(a);
            }
            "-p" => {
                proto = Some(match val {
                    "tcp" => L4::Tcp,
                    "udp" => L4::Udp,
                    _ => return None,
                })
            }
            "-m" if matches!(val, "tcp" | "udp" | "comment") => {}
            "--dport" => port = Some(val.parse::<u16>().ok().filter(|p| *p != 0)?),
            "--comment" => comment = Some(val),
            "-j" => target = Some(val),
            _ => return None,
        }
    }
    if target? != "ACCEPT" {
        return None;
    }
    let (door, expires) = parse_comment(comment?)?;
    Some(IptablesGrant { door, addr: addr?, port: Port { port: port?, proto: proto? }, expires })
}

/// `sesame door=NAME expires=UNIXTIME` → (door, expiry).
fn parse_comment(comment: &str) -> Option<(String, u64)> {
    let rest = comment.strip_prefix("sesame door=")?;
    let (enc, expires) = rest.split_once(" expires=")?;
    // Digits as sesame writes them (no sign, no leading zero), so the comment re-renders
    // to the very text the rule holds, and deleting by it finds the rule.
    let secs: u64 = expires.parse().ok()?;
    if secs.to_string() != expires {
        return None;
    }
    Some((decode_door(enc)?, secs))
}

/// Splits a line of `iptables -S` into words: whitespace separates them, and a word in
/// double quotes may hold spaces, `\"` and `\\` (how iptables saves a comment).
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else { return Some(words) };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => word.push(chars.next()?),
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tool::fake::{fail, ok, Fake, Reply};
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    const T0: u64 = 1_700_000_000;

    /// Door `ssh` opens 22/tcp; `dns` opens 53/udp and 53/tcp.
    fn ssh() -> DoorRule {
        DoorRule { door: "ssh".into(), ports: vec!["22/tcp".parse().unwrap()] }
    }

    fn v4() -> IpAddr {
        "198.18.0.2".parse().unwrap()
    }

    fn v6() -> IpAddr {
        "2001:db8::2".parse().unwrap()
    }

    fn access(door: &str, addr: IpAddr, ports: &[&str], secs: u64) -> Access {
        Access {
            door: door.into(),
            addr,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            timeout: Duration::from_secs(secs),
        }
    }

    /// A backend whose runner answers `argv` (joined by spaces) from `answers`, and
    /// succeeds with empty output for anything else.
    fn backend(answers: &[(&str, Reply)]) -> (IptablesBackend, Arc<Fake>) {
        let mut map: HashMap<String, Vec<Reply>> = HashMap::new();
        for (argv, reply) in answers {
            let r = match reply {
                Ok(x) => Ok(x.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            map.entry((*argv).to_owned()).or_default().push(r);
        }
        let fake = Arc::new(Fake::new(move |argv| match map.get_mut(argv) {
            // Answers for one argv are used in order; the last one repeats.
            Some(list) if list.len() > 1 => list.remove(0),
            Some(list) => match &list[0] {
                Ok(x) => Ok(x.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            },
            None => ok(""),
        }));
        let b = IptablesBackend::with_runner(fake.clone()).clock(|| UNIX_EPOCH + Duration::from_secs(T0));
        (b, fake)
    }

    const SSH_V4_RULE: &str = "-A SESAME -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1700000030\" -j ACCEPT";

    fn chain(rules: &[&str]) -> String {
        let mut s = String::from("-N SESAME\n");
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    #[test]
    fn parses_iptables_s_output() {
        // As iptables-nft 1.8.9 prints it, with a rule sesame did not write mixed in.
        let listing = "\
-N SESAME
-A SESAME -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1700000030\" -j ACCEPT
-A SESAME -s 198.18.0.2/32 -p udp -m udp --dport 53 -m comment --comment \"sesame door=open%20DNS%22%5C expires=7\" -j ACCEPT
-A SESAME -s 198.18.0.3/32 -p tcp -m tcp --dport 22 -m comment --comment \"hand made\" -j ACCEPT
-A SESAME -s 198.18.0.0/24 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1\" -j ACCEPT
-A SESAME -s 198.18.0.4/32 -i eth0 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1\" -j ACCEPT
-A SESAME -s 198.18.0.5/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1\" -j DROP
-A SESAME -s 198.18.0.6/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=a b expires=1\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=+1\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=01\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=%73sh expires=1\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p tcp -m tcp --dport 0 -m comment --comment \"sesame door=ssh expires=1\" -j ACCEPT
-A SESAME -s 198.18.0.7/32 -p icmp -m comment --comment \"sesame door=ssh expires=1\" -j ACCEPT
-A INPUT -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1\" -j ACCEPT
-A SESAME -s 2001:db8::2/128 -p tcp -m tcp --dport 2222 -m comment --comment \"sesame door=ssh expires=1700000030\" -j ACCEPT
";
        let g = parse_chain(listing);
        assert_eq!(
            g,
            [
                IptablesGrant {
                    door: "ssh".into(),
                    addr: v4(),
                    port: "22/tcp".parse().unwrap(),
                    expires: T0 + 30
                },
                IptablesGrant {
                    door: "open DNS\"\\".into(),
                    addr: v4(),
                    port: "53/udp".parse().unwrap(),
                    expires: 7
                },
                IptablesGrant {
                    door: "ssh".into(),
                    addr: v6(),
                    port: "2222/tcp".parse().unwrap(),
                    expires: T0 + 30
                },
            ]
        );
        // What iptables prints is what sesame writes, so a rule deletes by its own spec.
        assert_eq!(
            g[0].spec().join(" "),
            "-s 198.18.0.2 -p tcp --dport 22 -m comment --comment sesame door=ssh expires=1700000030 -j ACCEPT"
        );
        assert_eq!(
            split_words(r#"-A X --comment "a \"q\" \\ b" -j Y"#).unwrap(),
            ["-A", "X", "--comment", "a \"q\" \\ b", "-j", "Y"]
        );
        assert_eq!(split_words(r#"-A X --comment "unterminated"#), None);
    }

    #[test]
    fn comment_carries_any_door_name_as_one_argv_element() {
        let (b, fake) = backend(&[("iptables -w 10 -S SESAME", ok("-N SESAME\n"))]);
        let door = "it's \"open\" now; rm -rf /";
        b.open(&access(door, v4(), &["22/tcp"], 30)).unwrap();
        let raw = fake.take_raw();
        let add = raw.iter().find(|a| a.get(3).map(String::as_str) == Some("-A")).unwrap();
        let comment = &add[add.iter().position(|w| w == "--comment").unwrap() + 1];
        assert_eq!(comment, "sesame door=it%27s%20%22open%22%20now%3B%20rm%20-rf%20%2F expires=1700000030");
        // Read back through iptables' own quoting, it is the same door.
        let line = format!("-A SESAME -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"{comment}\" -j ACCEPT");
        assert_eq!(parse_rule(&line).unwrap().door, door);
        // Too long for a comment: refused before anything runs.
        let err = b.open(&access(&"x".repeat(300), v4(), &["22/tcp"], 30)).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert!(fake.take().is_empty());
    }

    #[test]
    fn prepare_creates_chain_and_first_jump() {
        let none = "iptables v1.8.9 (nf_tables): chain `SESAME' in table `filter' is incompatible, use 'nft' tool.\n";
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", fail(1, none)),
            ("iptables -w 10 -S", ok("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n")),
            ("iptables -w 10 -S INPUT", ok("-P INPUT ACCEPT\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\n")),
            ("ip6tables -w 10 -S SESAME", fail(1, "ip6tables: No chain/target/match by that name.\n")),
            ("ip6tables -w 10 -S", ok("-P INPUT ACCEPT\n")),
            ("ip6tables -w 10 -S INPUT", ok("-P INPUT ACCEPT\n")),
        ]);
        b.prepare(&[ssh()]).unwrap();
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME",
                "iptables -w 10 -S",
                "iptables -w 10 -N SESAME",
                "iptables -w 10 -S INPUT",
                "iptables -w 10 -I INPUT 1 -j SESAME",
                "ip6tables -w 10 -S SESAME",
                "ip6tables -w 10 -S",
                "ip6tables -w 10 -N SESAME",
                "ip6tables -w 10 -S INPUT",
                "ip6tables -w 10 -I INPUT 1 -j SESAME",
            ]
        );
    }

    #[test]
    fn prepare_is_idempotent_and_fixes_the_jump() {
        // Everything in place: only looks.
        let input_ok = "-P INPUT ACCEPT\n-A INPUT -j SESAME\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\n";
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", ok(&chain(&[SSH_V4_RULE]))),
            ("iptables -w 10 -S INPUT", ok(input_ok)),
            ("ip6tables -w 10 -S SESAME", ok("-N SESAME\n")),
            ("ip6tables -w 10 -S INPUT", ok(input_ok)),
        ]);
        b.prepare(&[ssh()]).unwrap();
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME",
                "iptables -w 10 -S INPUT",
                "ip6tables -w 10 -S SESAME",
                "ip6tables -w 10 -S INPUT"
            ]
        );
        // The jump is not first, and there twice: a new first one, the others go by number.
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", ok("-N SESAME\n")),
            (
                "iptables -w 10 -S INPUT",
                ok("-P INPUT ACCEPT\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\n-A INPUT -j SESAME\n-A INPUT -j SESAME\n"),
            ),
            ("ip6tables -w 10 -S SESAME", ok("-N SESAME\n")),
            ("ip6tables -w 10 -S INPUT", ok("-P INPUT ACCEPT\n-A INPUT -j SESAME\n-A INPUT -j SESAME\n")),
        ]);
        b.prepare(&[]).unwrap();
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME",
                "iptables -w 10 -S INPUT",
                "iptables -w 10 -I INPUT 1 -j SESAME",
                "iptables -w 10 -D INPUT 4",
                "iptables -w 10 -D INPUT 3",
                "ip6tables -w 10 -S SESAME",
                "ip6tables -w 10 -S INPUT",
                "ip6tables -w 10 -D INPUT 2",
            ]
        );
    }

    #[test]
    fn prepare_keeps_grants_of_remaining_doors_on_their_current_ports() {
        let gone = "-A SESAME -s 198.18.0.9/32 -p tcp -m tcp --dport 80 -m comment --comment \"sesame door=web expires=1700000050\" -j ACCEPT";
        let old = "-A SESAME -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1700000010\" -j ACCEPT";
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", ok(&chain(&[SSH_V4_RULE, gone, old, "-A SESAME -j LOG"]))),
            ("iptables -w 10 -S INPUT", ok("-A INPUT -j SESAME\n")),
            ("ip6tables -w 10 -S SESAME", ok("-N SESAME\n")),
            ("ip6tables -w 10 -S INPUT", ok("-A INPUT -j SESAME\n")),
        ]);
        // Door ssh now opens 2222/tcp; door web is gone.
        let moved = DoorRule { door: "ssh".into(), ports: vec!["2222/tcp".parse().unwrap()] };
        b.prepare(&[moved]).unwrap();
        let c = "-m comment --comment sesame door=ssh expires=1700000030 -j ACCEPT";
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME".to_owned(),
                "iptables -w 10 -S INPUT".to_owned(),
                format!("iptables -w 10 -A SESAME -s 198.18.0.2 -p tcp --dport 2222 {c}"),
                format!("iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 {c}"),
                "iptables -w 10 -D SESAME -s 198.18.0.9 -p tcp --dport 80 -m comment --comment sesame door=web expires=1700000050 -j ACCEPT".to_owned(),
                "iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 -m comment --comment sesame door=ssh expires=1700000010 -j ACCEPT".to_owned(),
                "ip6tables -w 10 -S SESAME".to_owned(),
                "ip6tables -w 10 -S INPUT".to_owned(),
            ]
        );
    }

    #[test]
    fn open_appends_one_rule_per_port() {
        let (b, fake) = backend(&[("ip6tables -w 10 -S SESAME", ok("-N SESAME\n"))]);
        b.open(&access("dns", v6(), &["53/udp", "53/tcp", "53/udp"], 30)).unwrap();
        let c = "-m comment --comment sesame door=dns expires=1700000030 -j ACCEPT";
        assert_eq!(
            fake.take(),
            [
                "ip6tables -w 10 -S SESAME".to_owned(),
                format!("ip6tables -w 10 -A SESAME -s 2001:db8::2 -p udp --dport 53 {c}"),
                format!("ip6tables -w 10 -A SESAME -s 2001:db8::2 -p tcp --dport 53 {c}"),
            ]
        );
        // A fraction of a second counts as a whole one.
        let mut a = access("dns", v6(), &["53/udp"], 0);
        a.timeout = Duration::from_millis(1500);
        b.open(&a).unwrap();
        assert!(fake.take()[1].contains("expires=1700000002"));
    }

    #[test]
    fn reopening_replaces_the_rule_with_a_fresh_expiry() {
        let other_door = "-A SESAME -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=other expires=1700000005\" -j ACCEPT";
        let (b, fake) =
            backend(&[("iptables -w 10 -S SESAME", ok(&chain(&[SSH_V4_RULE, other_door, SSH_V4_RULE])))]);
        // Same expiry as present: nothing new, only the duplicate goes.
        b.open(&access("ssh", v4(), &["22/tcp"], 30)).unwrap();
        let c30 = "-m comment --comment sesame door=ssh expires=1700000030 -j ACCEPT";
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME".to_owned(),
                format!("iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 {c30}"),
            ]
        );
        // Later expiry: the new rule first, then the old ones; the other door's stays.
        b.open(&access("ssh", v4(), &["22/tcp"], 60)).unwrap();
        let c60 = "-m comment --comment sesame door=ssh expires=1700000060 -j ACCEPT";
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME".to_owned(),
                format!("iptables -w 10 -A SESAME -s 198.18.0.2 -p tcp --dport 22 {c60}"),
                format!("iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 {c30}"),
                format!("iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 {c30}"),
            ]
        );
    }

    #[test]
    fn open_without_the_chain_says_prepare_has_not_run() {
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", fail(1, "iptables: No chain/target/match by that name.\n")),
            ("iptables -w 10 -S", ok("-P INPUT ACCEPT\n")),
        ]);
        let err = b.open(&access("ssh", v4(), &["22/tcp"], 30)).unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: open failed: chain SESAME does not exist in iptables's filter table (prepare has not run)"
        );
        assert_eq!(fake.take(), ["iptables -w 10 -S SESAME", "iptables -w 10 -S"]);
        // A failing listing that is not a missing chain is reported as it is.
        let (b, _) = backend(&[
            ("iptables -w 10 -S SESAME", fail(4, "Another app is currently holding the xtables lock.\n")),
            ("iptables -w 10 -S", fail(4, "Another app is currently holding the xtables lock.\n")),
        ]);
        let err = b.open(&access("ssh", v4(), &["22/tcp"], 30)).unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: open failed: `iptables -w 10 -S SESAME` ended with exit status 4: Another app is currently holding the xtables lock."
        );
    }

    #[test]
    fn close_removes_exactly_its_rules_and_is_idempotent() {
        let other_addr = "-A SESAME -s 198.18.0.3/32 -p tcp -m tcp --dport 22 -m comment --comment \"sesame door=ssh expires=1700000030\" -j ACCEPT";
        let other_port = "-A SESAME -s 198.18.0.2/32 -p udp -m udp --dport 53 -m comment --comment \"sesame door=ssh expires=1700000020\" -j ACCEPT";
        let (b, fake) =
            backend(&[("iptables -w 10 -S SESAME", ok(&chain(&[other_addr, SSH_V4_RULE, other_port])))]);
        b.close(&access("ssh", v4(), &["22/tcp"], 30)).unwrap();
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S SESAME",
                "iptables -w 10 -D SESAME -s 198.18.0.2 -p tcp --dport 22 -m comment --comment sesame door=ssh expires=1700000030 -j ACCEPT",
                "iptables -w 10 -D SESAME -s 198.18.0.2 -p udp --dport 53 -m comment --comment sesame door=ssh expires=1700000020 -j ACCEPT",
            ]
        );
        // Nothing there: only looks; no chain at all: fine too.
        let (b, fake) = backend(&[("iptables -w 10 -S SESAME", ok(&chain(&[other_addr])))]);
        b.close(&access("ssh", v4(), &["22/tcp"], 30)).unwrap();
        assert_eq!(fake.take(), ["iptables -w 10 -S SESAME"]);
        let (b, fake) = backend(&[
            ("iptables -w 10 -S SESAME", fail(1, "iptables: No chain/target/match by that name.\n")),
            ("iptables -w 10 -S", ok("-P INPUT ACCEPT\n")),
        ]);
        b.close(&access("ssh", v4(), &["22/tcp"], 30)).unwrap();
        assert_eq!(fake.take(), ["iptables -w 10 -S SESAME", "iptables -w 10 -S"]);
    }

    #[test]
    fn present_lists_door_and_address_once() {
        let (b, fake) = backend(&[
            (
                "iptables -w 10 -S SESAME",
                ok(&chain(&[
                    SSH_V4_RULE,
                    "-A SESAME -s 198.18.0.2/32 -p udp -m udp --dport 53 -m comment --comment \"sesame door=ssh expires=1700000030\" -j ACCEPT",
                    "-A SESAME -s 198.18.0.2/32 -p udp -m udp --dport 53 -m comment --comment \"sesame door=open%20dns expires=1700000030\" -j ACCEPT",
                ])),
            ),
            ("ip6tables -w 10 -S SESAME", fail(1, "x")),
            ("ip6tables -w 10 -S", ok("-P INPUT ACCEPT\n")),
        ]);
        assert_eq!(b.present().unwrap(), [("ssh".to_owned(), v4()), ("open dns".to_owned(), v4())]);
        assert_eq!(
            fake.take(),
            ["iptables -w 10 -S SESAME", "ip6tables -w 10 -S SESAME", "ip6tables -w 10 -S"]
        );
        assert_eq!(b.grants().unwrap().len(), 3);
    }

    #[test]
    fn remove_deletes_every_jump_then_the_chain_and_is_idempotent() {
        let (b, fake) = backend(&[
            (
                "iptables -w 10 -S INPUT",
                ok("-P INPUT DROP\n-A INPUT -j SESAME\n-A INPUT -j DROP\n-A INPUT -j SESAME\n"),
            ),
            ("iptables -w 10 -S SESAME", ok(&chain(&[SSH_V4_RULE]))),
            ("ip6tables -w 10 -S INPUT", ok("-P INPUT ACCEPT\n")),
            ("ip6tables -w 10 -S SESAME", fail(1, "gone")),
            ("ip6tables -w 10 -S", ok("-P INPUT ACCEPT\n")),
        ]);
        b.remove().unwrap();
        assert_eq!(
            fake.take(),
            [
                "iptables -w 10 -S INPUT",
                "iptables -w 10 -D INPUT -j SESAME",
                "iptables -w 10 -D INPUT -j SESAME",
                "iptables -w 10 -S SESAME",
                "iptables -w 10 -F SESAME",
                "iptables -w 10 -X SESAME",
                "ip6tables -w 10 -S INPUT",
                "ip6tables -w 10 -S SESAME",
                "ip6tables -w 10 -S",
            ]
        );
    }

    #[test]
    fn check_names_what_is_missing() {
        let (b, fake) = backend(&[
            ("iptables -w 10 -S", ok("-P INPUT ACCEPT\n")),
            ("ip6tables -w 10 -S", Err(std::io::Error::new(std::io::ErrorKind::NotFound, "nope"))),
        ]);
        let err = b.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: `ip6tables` not found (install the iptables package, or configure its path)"
        );
        assert_eq!(fake.take(), ["iptables -w 10 -S", "ip6tables -w 10 -S"]);
        let (b, _) = backend(&[(
            "iptables -w 10 -S",
            fail(3, "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"),
        )]);
        let err = b.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables backend: `iptables -S` does not work: `iptables -w 10 -S` ended with exit status 3: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
        );
        let (b, _) = backend(&[]);
        b.check().unwrap();
    }

    #[test]
    fn prefix_and_programs_are_used() {
        let (b, fake) = backend(&[]);
        let b = b
            .programs("/usr/sbin/iptables-legacy", "/usr/sbin/ip6tables-legacy")
            .prefix(["ip", "netns", "exec", "n1"]);
        b.check().unwrap();
        assert_eq!(
            fake.take(),
            [
                "ip netns exec n1 /usr/sbin/iptables-legacy -w 10 -S",
                "ip netns exec n1 /usr/sbin/ip6tables-legacy -w 10 -S"
            ]
        );
        assert_eq!(b.name(), "iptables");
    }
}
