//! The ufw backend: a grant is one ufw rule per port,
//!
//! ```text
//! ufw allow from ADDR to any port PORT proto PROTO comment 'sesame door=NAME'
//! ```
//!
//! closed by the exact `ufw delete allow ...` of that rule. `NAME` is the door's name
//! percent-encoded ([`encode_door`](super::tool::encode_door)): ufw refuses `'` in a comment, and the encoded name
//! has none. Comments need ufw 0.35 or later; the backend asks `ufw version` once. With
//! an older ufw, rules carry no comment, so sesame cannot tell its rules from the
//! admin's: [`Backend::present`] then reports nothing and `close` deletes the plain rule.
//!
//! What is open is read from `ufw status` (which also says whether ufw is active):
//!
//! ```text
//! 22/tcp                     ALLOW       198.18.5.2                 # sesame door=openSSH
//! ```
//!
//! ufw has no expiry, so [`Access::timeout`] is not used here: the executor's timer closes
//! the grant. Two pitfalls of ufw are handled: `ufw allow` of a rule that exists with
//! another comment would take that rule over (and sesame's close would then delete the
//! admin's rule), so `open` adds nothing for a port some rule already opens to the
//! address; and ufw rewrites its rules files under `/etc/ufw` on every change, so it must
//! run where those are writable (not under systemd's `ProtectSystem=full`).
//!
//! The program (`/usr/sbin/ufw`) and an argv prefix are configurable, so the lab can run
//! ufw inside a network namespace over private copies of its files.

use super::tool::{decode_door, door_for_comment, Run, SystemRunner, Tool};
use super::{Access, Backend, BackendError, DoorRule, Port};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

const NAME: &str = "ufw";

/// One rule `ufw status` lists that has the shape of a grant: `PORT/PROTO ALLOW ADDR`,
/// with its comment if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UfwRule {
    pub port: Port,
    pub from: IpAddr,
    pub comment: Option<String>,
}

impl UfwRule {
    /// The door of a rule sesame added (its comment is `sesame door=NAME`).
    pub fn door(&self) -> Option<String> {
        decode_door(self.comment.as_deref()?.strip_prefix("sesame door=")?)
    }
}

/// What `ufw status` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UfwStatus {
    /// `Status: active`.
    pub active: bool,
    /// The rules shaped like grants (other rules are left out).
    pub rules: Vec<UfwRule>,
}

/// The ufw backend. See the [module documentation](self).
pub struct UfwBackend {
    tool: Tool,
    ufw: String,
    comments: OnceLock<bool>,
    lock: Mutex<()>,
}

impl fmt::Debug for UfwBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UfwBackend")
            .field("ufw", &self.ufw)
            .field("prefix", &self.tool.prefix)
            .field("comments", &self.comments.get())
            .finish_non_exhaustive()
    }
}

impl Default for UfwBackend {
    fn default() -> UfwBackend {
        UfwBackend::new()
    }
}

impl UfwBackend {
    /// Where Debian and Ubuntu install ufw.
    pub const DEFAULT_PROGRAM: &'static str = "/usr/sbin/ufw";

    /// Runs [`UfwBackend::DEFAULT_PROGRAM`] with a [`SystemRunner`].
    pub fn new() -> UfwBackend {
        UfwBackend::with_runner(SystemRunner::new())
    }

    /// Runs its commands through `runner` (a fake in unit tests).
    pub fn with_runner(runner: impl Run) -> UfwBackend {
        UfwBackend {
            tool: Tool::new(NAME, Arc::new(runner)),
            ufw: Self::DEFAULT_PROGRAM.into(),
            comments: OnceLock::new(),
            lock: Mutex::new(()),
        }
    }

    /// The ufw program to run (a path, or a name looked up in `PATH`).
    pub fn program(mut self, ufw: impl Into<String>) -> UfwBackend {
        self.ufw = ufw.into();
        self
    }

    /// An argv put before every command, e.g. one that enters a namespace.
    pub fn prefix<I, S>(mut self, prefix: I) -> UfwBackend
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tool.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// Whether rules carry `comment 'sesame door=NAME'`, instead of asking `ufw version`.
    pub fn comments(self, on: bool) -> UfwBackend {
        let _ = self.comments.set(on);
        self
    }

    /// What `ufw status` says now.
    pub fn status(&self) -> Result<UfwStatus, BackendError> {
        self.status_for("status")
    }

    fn status_for(&self, op: &str) -> Result<UfwStatus, BackendError> {
        Ok(parse_status(&self.tool.ok(op, &self.ufw, &["status"])?))
    }

    /// Whether this ufw takes comments (0.35 and later), asked once.
    fn with_comments(&self, op: &str) -> Result<bool, BackendError> {
        if let Some(&on) = self.comments.get() {
            return Ok(on);
        }
        let version = self.tool.ok(op, &self.ufw, &["version"])?;
        let on = parse_version(&version).is_some_and(|v| v >= (0, 35));
        Ok(*self.comments.get_or_init(|| on))
    }

    /// `ufw [delete] allow from ADDR to any port PORT proto PROTO [comment 'sesame door=NAME']`.
    fn rule(
        &self,
        op: &str,
        delete: bool,
        addr: IpAddr,
        port: Port,
        comment: Option<&str>,
    ) -> Result<(), BackendError> {
        let (addr, num) = (addr.to_string(), port.port.to_string());
        let mut args: Vec<&str> = Vec::with_capacity(13);
        if delete {
            args.push("delete");
        }
        args.extend(["allow", "from", &addr, "to", "any", "port", &num, "proto", port.proto.name()]);
        if let Some(c) = comment {
            args.extend(["comment", c]);
        }
        self.tool.ok(op, &self.ufw, &args).map(drop)
    }

    /// Makes sesame's rules `want` (as (door, address, port)), given the status: adds
    /// the missing ones first (skipping a port some rule already opens to the address),
    /// then deletes sesame's rules that are not wanted.
    fn converge(
        &self,
        op: &str,
        status: &UfwStatus,
        want: &[(String, IpAddr, Port)],
    ) -> Result<(), BackendError> {
        for (door, addr, port) in want {
            if !status.rules.iter().any(|r| r.from == *addr && r.port == *port) {
                let comment = format!("sesame door={}", door_for_comment(NAME, door)?);
                self.rule(op, false, *addr, *port, Some(&comment))?;
            }
        }
        for r in &status.rules {
            let Some(door) = r.door() else { continue };
            if !want.iter().any(|(d, a, p)| *d == door && *a == r.from && *p == r.port) {
                self.rule(op, true, r.from, r.port, r.comment.as_deref())?;
            }
        }
        Ok(())
    }
}

impl Backend for UfwBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self) -> Result<(), BackendError> {
        let unavailable = |what: String| BackendError::Unavailable { backend: NAME, what };
        let said = match self.tool.run("check", &self.ufw, &["status"]) {
            Err(BackendError::Io { source, .. }) => {
                return Err(unavailable(if source.kind() == std::io::ErrorKind::NotFound {
                    format!("`{}` not found (install the ufw package, or configure its path)", self.ufw)
                } else {
                    format!("cannot run `{}`: {source}", self.ufw)
                }))
            }
            Err(e) => return Err(e),
            Ok(said) => said,
        };
        if !said.ok() {
            let detail = match self.tool.failed("check", &self.ufw, &["status"], &said) {
                BackendError::Failed { detail, .. } => detail,
                other => other.to_string(),
            };
            return Err(unavailable(format!("`{} status` does not work: {detail}", self.ufw)));
        }
        let first = said.stdout.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        if first == "Status: inactive" {
            return Err(unavailable(format!(
                "ufw is inactive (`{} status` says \"Status: inactive\"), so rules sesame adds would \
                 have no effect; enable it with `ufw enable` (after allowing your own access)",
                self.ufw
            )));
        }
        if first != "Status: active" {
            return Err(unavailable(format!(
                "cannot tell whether ufw is active: `{} status` says {first:?}",
                self.ufw
            )));
        }
        self.with_comments("check")?;
        Ok(())
    }

    fn prepare(&self, doors: &[DoorRule]) -> Result<(), BackendError> {
        for d in doors {
            door_for_comment(NAME, &d.door)?;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.with_comments("prepare")? {
            return Ok(());
        }
        // Grants of doors that remain now open the door's ports; those of doors that
        // are gone are deleted.
        let status = self.status_for("prepare")?;
        let mut want: Vec<(String, IpAddr, Port)> = Vec::new();
        for r in &status.rules {
            let Some(name) = r.door() else { continue };
            let Some(door) = doors.iter().find(|d| d.door == name) else { continue };
            for p in &door.ports {
                let w = (name.clone(), r.from, *p);
                if !want.contains(&w) {
                    want.push(w);
                }
            }
        }
        self.converge("prepare", &status, &want)
    }

    fn open(&self, access: &Access) -> Result<(), BackendError> {
        let comment = format!("sesame door={}", door_for_comment(NAME, &access.door)?);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.with_comments("open")? {
            for &p in &access.ports {
                self.rule("open", false, access.addr, p, None)?;
            }
            return Ok(());
        }
        let status = self.status_for("open")?;
        if !status.active {
            return Err(BackendError::Failed {
                backend: NAME,
                op: "open".into(),
                detail: format!("ufw is inactive (`{} status`), a rule would have no effect", self.ufw),
            });
        }
        let mut done: Vec<Port> = Vec::new();
        for &p in &access.ports {
            // A rule for this address and port, sesame's or anyone's, already lets it in;
            // `ufw allow` with another comment would take that rule over.
            if done.contains(&p) || status.rules.iter().any(|r| r.from == access.addr && r.port == p) {
                continue;
            }
            self.rule("open", false, access.addr, p, Some(&comment))?;
            done.push(p);
        }
        Ok(())
    }

    fn close(&self, access: &Access) -> Result<(), BackendError> {
        let comment = format!("sesame door={}", door_for_comment(NAME, &access.door)?);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.with_comments("close")? {
            for &p in &access.ports {
                self.rule("close", true, access.addr, p, None)?;
            }
            return Ok(());
        }
        // The door's ports, and any other port this grant has (from before a reload that
        // changed them). With the comment, ufw deletes only sesame's rule for the door,
        // and a missing one is no error ("Could not delete non-existent rule").
        let status = self.status_for("close")?;
        let mut ports: Vec<Port> = Vec::new();
        let theirs = status
            .rules
            .iter()
            .filter(|r| r.from == access.addr && r.door().as_deref() == Some(access.door.as_str()))
            .map(|r| r.port);
        for p in access.ports.iter().copied().chain(theirs) {
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        for p in ports {
            self.rule("close", true, access.addr, p, Some(&comment))?;
        }
        Ok(())
    }

    fn present(&self) -> Result<Vec<(String, IpAddr)>, BackendError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.with_comments("present")? {
            return Ok(Vec::new());
        }
        let mut out: Vec<(String, IpAddr)> = Vec::new();
        for r in self.status_for("present")?.rules {
            if let Some(door) = r.door() {
                if !out.iter().any(|(d, a)| *d == door && *a == r.from) {
                    out.push((door, r.from));
                }
            }
        }
        Ok(out)
    }

    fn remove(&self) -> Result<(), BackendError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.with_comments("remove")? {
            return Ok(());
        }
        let status = self.status_for("remove")?;
        self.converge("remove", &status, &[])
    }
}

/// `ufw 0.36.2` (the first line of `ufw version`) → (0, 36).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.lines().next()?.trim().strip_prefix("ufw ")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let minor = minor[..minor.find(|c: char| !c.is_ascii_digit()).unwrap_or(minor.len())].parse().ok()?;
    Some((major, minor))
}

/// Reads `ufw status` (plain, not `verbose`; in the C locale).
pub fn parse_status(text: &str) -> UfwStatus {
    let active = text.lines().map(str::trim).find(|l| !l.is_empty()) == Some("Status: active");
    let rules = text.lines().filter_map(parse_status_line).collect();
    UfwStatus { active, rules }
}

/// `22/tcp  ALLOW  198.18.5.2  # sesame door=x` → a rule; `None` for headers, rules
/// for anywhere or a network, rules without a protocol, and anything else.
fn parse_status_line(line: &str) -> Option<UfwRule> {
    let (rule, comment) = match line.split_once(" # ") {
        Some((rule, comment)) => (rule, Some(comment.trim().to_owned())),
        None => (line, None),
    };
    let words: Vec<&str> = rule.split_whitespace().collect();
    let (to, from) = match words[..] {
        [to, "ALLOW", from] | [to, "ALLOW", "IN", from] => (to, from),
        _ => return None,
    };
    if !to.contains('/') {
        return None;
    }
    Some(UfwRule { port: to.parse().ok()?, from: from.parse().ok()?, comment })
}

#[cfg(test)]
mod tests {
    use super::super::tool::fake::{fail, ok, Fake, Reply};
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    const UFW: &str = "/usr/sbin/ufw";

    /// `ufw status` as ufw 0.36.2 prints it (C locale), with an admin's rules mixed in.
    const STATUS: &str = "\
Status: active

To                         Action      From
--                         ------      ----
22/tcp                     ALLOW       198.18.5.2                 # sesame door=open%20SSH
53/udp                     ALLOW       198.18.5.2                 # sesame door=dns
80                         ALLOW       198.18.5.7                 # sesame door=web
443/tcp                    ALLOW       Anywhere
8080/tcp                   ALLOW       198.18.5.0/24              # sesame door=web
2222/tcp                   ALLOW       198.18.5.3                 # admin's # own
22/tcp                     ALLOW       2001:db8:5::2              # sesame door=open%20SSH
443/tcp (v6)               ALLOW       Anywhere (v6)

";

    fn v4() -> IpAddr {
        "198.18.5.2".parse().unwrap()
    }

    fn v6() -> IpAddr {
        "2001:db8:5::2".parse().unwrap()
    }

    fn port(s: &str) -> Port {
        s.parse().unwrap()
    }

    fn access(door: &str, addr: IpAddr, ports: &[&str]) -> Access {
        Access {
            door: door.into(),
            addr,
            ports: ports.iter().map(|p| port(p)).collect(),
            timeout: Duration::from_secs(30),
        }
    }

    fn active(rules: &[&str]) -> String {
        let mut s = String::from("Status: active\n\nTo                         Action      From\n--                         ------      ----\n");
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
        s.push('\n');
        s
    }

    /// A backend answering `ufw status` with `status` and `ufw version` with 0.36.2;
    /// anything else succeeds with empty output.
    fn backend(status: &str) -> (UfwBackend, Arc<Fake>) {
        backend_with(&[(&format!("{UFW} status"), ok(status))])
    }

    fn backend_with(answers: &[(&str, Reply)]) -> (UfwBackend, Arc<Fake>) {
        let mut map: HashMap<String, (i32, String, String)> = HashMap::new();
        let mut missing = Vec::new();
        for (argv, reply) in answers {
            match reply {
                Ok(r) => drop(map.insert((*argv).to_owned(), r.clone())),
                Err(_) => missing.push((*argv).to_owned()),
            }
        }
        map.entry(format!("{UFW} version")).or_insert((
            0,
            "ufw 0.36.2\nCopyright 2008-2023 Canonical Ltd.\n".into(),
            String::new(),
        ));
        let fake = Arc::new(Fake::new(move |argv| {
            if missing.iter().any(|m| m == argv) {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"));
            }
            Ok(map.get(argv).cloned().unwrap_or_default())
        }));
        (UfwBackend::with_runner(fake.clone()), fake)
    }

    #[test]
    fn parses_ufw_status() {
        let st = parse_status(STATUS);
        assert!(st.active);
        let c = |s: &str| Some(s.to_owned());
        assert_eq!(
            st.rules,
            [
                UfwRule { port: port("22/tcp"), from: v4(), comment: c("sesame door=open%20SSH") },
                UfwRule { port: port("53/udp"), from: v4(), comment: c("sesame door=dns") },
                UfwRule {
                    port: port("2222/tcp"),
                    from: "198.18.5.3".parse().unwrap(),
                    comment: c("admin's # own")
                },
                UfwRule { port: port("22/tcp"), from: v6(), comment: c("sesame door=open%20SSH") },
            ]
        );
        assert_eq!(st.rules[0].door().as_deref(), Some("open SSH"));
        assert_eq!(st.rules[2].door(), None);
        assert_eq!(parse_status("Status: inactive\n"), UfwStatus { active: false, rules: vec![] });
        // `ufw status verbose` says `ALLOW IN`.
        let verbose = "22/tcp                     ALLOW IN    198.18.5.2                 # sesame door=dns";
        assert_eq!(parse_status_line(verbose).unwrap().door().as_deref(), Some("dns"));
        assert_eq!(parse_version("ufw 0.36.2\nCopyright"), Some((0, 36)));
        assert_eq!(parse_version("ufw 0.34~rc-0ubuntu2"), Some((0, 34)));
        assert_eq!(parse_version("ufw: command not found"), None);
    }

    #[test]
    fn open_adds_one_commented_rule_per_port() {
        let (b, fake) = backend(&active(&[]));
        b.open(&access("open SSH", v4(), &["22/tcp", "53/udp", "22/tcp"])).unwrap();
        let raw = fake.take_raw();
        let argv: Vec<Vec<&str>> = raw.iter().map(|a| a.iter().map(String::as_str).collect()).collect();
        assert_eq!(
            argv,
            [
                vec![UFW, "version"],
                vec![UFW, "status"],
                vec![
                    UFW,
                    "allow",
                    "from",
                    "198.18.5.2",
                    "to",
                    "any",
                    "port",
                    "22",
                    "proto",
                    "tcp",
                    "comment",
                    "sesame door=open%20SSH"
                ],
                vec![
                    UFW,
                    "allow",
                    "from",
                    "198.18.5.2",
                    "to",
                    "any",
                    "port",
                    "53",
                    "proto",
                    "udp",
                    "comment",
                    "sesame door=open%20SSH"
                ],
            ]
        );
        b.open(&access("x'y", v6(), &["22/tcp"])).unwrap();
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} status"),
                format!("{UFW} allow from 2001:db8:5::2 to any port 22 proto tcp comment sesame door=x%27y"),
            ]
        );
    }

    #[test]
    fn reopening_adds_nothing_and_never_takes_over_a_rule() {
        let (b, fake) = backend(STATUS);
        // Already open (sesame's own rule): only looks.
        b.open(&access("open SSH", v4(), &["22/tcp"])).unwrap();
        assert_eq!(fake.take(), [format!("{UFW} version"), format!("{UFW} status")]);
        // The admin's rule already opens 2222/tcp to .3: left as it is, not re-commented.
        b.open(&access("ssh", "198.18.5.3".parse().unwrap(), &["2222/tcp"])).unwrap();
        assert_eq!(fake.take(), [format!("{UFW} status")]);
    }

    #[test]
    fn open_refuses_when_ufw_is_inactive() {
        let (b, fake) = backend("Status: inactive\n");
        let err = b.open(&access("ssh", v4(), &["22/tcp"])).unwrap_err().to_string();
        assert_eq!(
            err,
            "ufw backend: open failed: ufw is inactive (`/usr/sbin/ufw status`), a rule would have no effect"
        );
        assert_eq!(fake.take(), [format!("{UFW} version"), format!("{UFW} status")]);
    }

    #[test]
    fn close_deletes_exactly_its_rules() {
        let (b, fake) = backend(STATUS);
        // The door's port, plus a port it had before a reload (53/udp is door dns's).
        b.close(&access("open SSH", v4(), &["2200/tcp"])).unwrap();
        let c = "comment sesame door=open%20SSH";
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} version"),
                format!("{UFW} status"),
                format!("{UFW} delete allow from 198.18.5.2 to any port 2200 proto tcp {c}"),
                format!("{UFW} delete allow from 198.18.5.2 to any port 22 proto tcp {c}"),
            ]
        );
        b.close(&access("dns", v4(), &["53/udp"])).unwrap();
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} status"),
                format!(
                    "{UFW} delete allow from 198.18.5.2 to any port 53 proto udp comment sesame door=dns"
                ),
            ]
        );
    }

    #[test]
    fn present_lists_sesame_rules_only() {
        let (b, _) = backend(STATUS);
        assert_eq!(
            b.present().unwrap(),
            [("open SSH".to_owned(), v4()), ("dns".to_owned(), v4()), ("open SSH".to_owned(), v6())]
        );
    }

    #[test]
    fn prepare_moves_grants_to_the_doors_ports_and_drops_gone_doors() {
        let (b, fake) = backend(STATUS);
        let doors = [DoorRule { door: "open SSH".into(), ports: vec![port("22/tcp"), port("2222/tcp")] }];
        b.prepare(&doors).unwrap();
        let c = "comment sesame door=open%20SSH";
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} version"),
                format!("{UFW} status"),
                format!("{UFW} allow from 198.18.5.2 to any port 2222 proto tcp {c}"),
                format!("{UFW} allow from 2001:db8:5::2 to any port 2222 proto tcp {c}"),
                format!(
                    "{UFW} delete allow from 198.18.5.2 to any port 53 proto udp comment sesame door=dns"
                ),
            ]
        );
        let err = b.prepare(&[DoorRule { door: "d".repeat(500), ports: vec![] }]).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn remove_deletes_every_sesame_rule() {
        let (b, fake) = backend(STATUS);
        b.remove().unwrap();
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} version"),
                format!("{UFW} status"),
                format!("{UFW} delete allow from 198.18.5.2 to any port 22 proto tcp comment sesame door=open%20SSH"),
                format!("{UFW} delete allow from 198.18.5.2 to any port 53 proto udp comment sesame door=dns"),
                format!("{UFW} delete allow from 2001:db8:5::2 to any port 22 proto tcp comment sesame door=open%20SSH"),
            ]
        );
        let (b, fake) = backend(&active(&[]));
        b.remove().unwrap();
        assert_eq!(fake.take(), [format!("{UFW} version"), format!("{UFW} status")]);
    }

    #[test]
    fn without_comment_support_rules_are_plain() {
        let (b, fake) = backend_with(&[(&format!("{UFW} version"), ok("ufw 0.34\n"))]);
        b.open(&access("ssh", v4(), &["22/tcp"])).unwrap();
        b.close(&access("ssh", v4(), &["22/tcp"])).unwrap();
        assert_eq!(b.present().unwrap(), []);
        b.prepare(&[]).unwrap();
        b.remove().unwrap();
        assert_eq!(
            fake.take(),
            [
                format!("{UFW} version"),
                format!("{UFW} allow from 198.18.5.2 to any port 22 proto tcp"),
                format!("{UFW} delete allow from 198.18.5.2 to any port 22 proto tcp"),
            ]
        );
        // Forced on: no question asked.
        let (b, fake) = backend(&active(&[]));
        let b = b.comments(true);
        b.present().unwrap();
        assert_eq!(fake.take(), [format!("{UFW} status")]);
    }

    #[test]
    fn check_says_when_ufw_is_missing_inactive_or_failing() {
        let (b, fake) = backend(&active(&[]));
        b.check().unwrap();
        assert_eq!(fake.take(), [format!("{UFW} status"), format!("{UFW} version")]);
        let (b, _) = backend("Status: inactive\n");
        let err = b.check().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "ufw backend: ufw is inactive (`/usr/sbin/ufw status` says \"Status: inactive\")"
            ),
            "{err}"
        );
        assert!(err.contains("enable it with `ufw enable`"), "{err}");
        let (b, _) = backend_with(&[(&format!("{UFW} status"), Err(std::io::Error::other("x")))]);
        assert_eq!(
            b.check().unwrap_err().to_string(),
            "ufw backend: `/usr/sbin/ufw` not found (install the ufw package, or configure its path)"
        );
        let (b, _) = backend_with(&[(
            &format!("{UFW} status"),
            fail(1, "ERROR: You need to be root to run this script\n"),
        )]);
        assert_eq!(
            b.check().unwrap_err().to_string(),
            "ufw backend: `/usr/sbin/ufw status` does not work: `/usr/sbin/ufw status` ended with exit status 1: ERROR: You need to be root to run this script"
        );
    }

    #[test]
    fn program_and_prefix_are_used() {
        let fake = Arc::new(Fake::new(|_| ok("Status: active\n")));
        let b = UfwBackend::with_runner(fake.clone())
            .program("/opt/ufw")
            .prefix(["ip", "netns", "exec", "n1"])
            .comments(true);
        b.check().unwrap();
        assert_eq!(fake.take(), ["ip netns exec n1 /opt/ufw status"]);
        assert_eq!(b.name(), "ufw");
    }
}
