//! `sesame check --firewall`: the doors against the live ruleset of the current network
//! namespace. Three questions per protected port: is it closed to new connections at
//! all (otherwise the door protects nothing), are established connections accepted
//! (otherwise closing a grant or reloading the firewall cuts the operator's session),
//! and does each start command's ACCEPT land before any DROP for its port?
//!
//! The ruleset is read through [`RulesetSource`], so the analysis is tested on text
//! fixtures; [`Live`] runs `iptables-save`, `ip6tables-save` and `nft -j list ruleset`.

use super::commands::{self, Family};
use super::ruleset::{Origin, Packet, Ruleset, State, Verdict};
use super::{warning, Kind, Warning};
use crate::config::{BackendKind, Config, Door, Port};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Reading the live ruleset failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("--firewall: cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("--firewall: `{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error("--firewall: cannot read the output of `nft -j list ruleset`: {0}")]
    NftJson(String),
    #[error(
        "--firewall: none of iptables-save, ip6tables-save and nft is installed (looked in PATH, /usr/sbin, /sbin)"
    )]
    NoTools,
}

/// Where the ruleset comes from.
pub trait RulesetSource {
    /// `iptables-save` (V4) or `ip6tables-save` (V6) output; `None` when not installed.
    fn iptables_save(&self, family: Family) -> Result<Option<String>, CheckError>;
    /// `nft -j list ruleset` output; `None` when nft is not installed.
    fn nft_json(&self) -> Result<Option<String>, CheckError>;
    /// Whether iptables is iptables-nft: its tables then show in nft's ruleset as well.
    fn iptables_over_nft(&self) -> bool;
    /// Whether the host has a global IPv6 address (then IPv6 is checked too).
    fn has_ipv6(&self) -> bool;
}

/// The ruleset of the network namespace this process runs in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live;

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file());
    found
}

fn output(program: &str, args: &[&str]) -> Result<Option<String>, CheckError> {
    let Some(path) = find(program) else { return Ok(None) };
    let out = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CheckError::Spawn { program: path.display().to_string(), source })?;
    if !out.status.success() {
        return Err(CheckError::Failed {
            command: std::iter::once(path.display().to_string())
                .chain(args.iter().map(|a| a.to_string()))
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

impl RulesetSource for Live {
    fn iptables_save(&self, family: Family) -> Result<Option<String>, CheckError> {
        output(if family == Family::V4 { "iptables-save" } else { "ip6tables-save" }, &[])
    }

    fn nft_json(&self) -> Result<Option<String>, CheckError> {
        output("nft", &["-j", "list", "ruleset"])
    }

    fn iptables_over_nft(&self) -> bool {
        output("iptables-save", &["--version"]).ok().flatten().is_some_and(|v| v.contains("nf_tables"))
    }

    fn has_ipv6(&self) -> bool {
        // Columns: address, ifindex, prefix length, scope (00 = global), flags, name.
        std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default().lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6 && f[3] == "00" && f[5] != "lo"
        })
    }
}

/// The ruleset `source` shows, and the families to check.
pub fn read(source: &dyn RulesetSource) -> Result<(Ruleset, Vec<Family>), CheckError> {
    let mut ruleset = Ruleset::default();
    let mut found = false;
    for family in [Family::V4, Family::V6] {
        if let Some(text) = source.iptables_save(family)? {
            found = true;
            ruleset.add_iptables_save(family, &text);
        }
    }
    if let Some(json) = source.nft_json()? {
        found = true;
        ruleset.add_nft_json(&json, source.iptables_over_nft()).map_err(CheckError::NftJson)?;
    }
    if !found {
        return Err(CheckError::NoTools);
    }
    let families = if source.has_ipv6() { vec![Family::V4, Family::V6] } else { vec![Family::V4] };
    Ok((ruleset, families))
}

/// The ports `door` protects and the line that says so: its `open` list, or the ports
/// its start commands accept.
fn protected(door: &Door) -> (Vec<Port>, usize) {
    let l = &door.lines;
    if !door.open.is_empty() {
        return (door.open.clone(), l.or_door(l.open));
    }
    let mut ports = Vec::new();
    for cmd in [&door.start_command, &door.start_command_6].into_iter().flatten() {
        for p in commands::protected_ports(cmd) {
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    let line = if door.start_command.is_some() { l.start_command } else { l.start_command_6 };
    (ports, l.or_door(line))
}

fn families_text(families: &[Family]) -> String {
    families.iter().map(|f| f.name()).collect::<Vec<_>>().join(" and ")
}

fn by(v: &Verdict) -> String {
    match v {
        Verdict::Accept(w) => format!("accepted by {w}"),
        Verdict::Drop(w) => format!("dropped by {w}"),
        Verdict::None => "no input chain filters it".to_owned(),
    }
}

/// Every `--firewall` warning for `config` against `ruleset`, checking `families`.
///
/// Doors of the native nftables backend are skipped: sesame's own table closes their
/// ports while sesamed runs, whatever else the ruleset holds.
pub fn warnings(config: &Config, ruleset: &Ruleset, families: &[Family]) -> Vec<Warning> {
    let mut out = Vec::new();
    for door in &config.doors {
        match door.backend_in(&config.firewall) {
            None | Some(BackendKind::Nftables) => continue,
            Some(_) => {}
        }
        let (ports, line) = protected(door);
        for port in ports {
            let mut open = Vec::new();
            let mut cut = Vec::new();
            for &family in families {
                let new = ruleset.verdict(&Packet { family, port, state: State::New });
                if !matches!(new, Verdict::Drop(_)) {
                    open.push((family, new));
                    continue;
                }
                let est = ruleset.verdict(&Packet { family, port, state: State::Established });
                if matches!(est, Verdict::Drop(_)) {
                    cut.push((family, est));
                }
            }
            if !open.is_empty() {
                let fams: Vec<Family> = open.iter().map(|(f, _)| *f).collect();
                out.push(warning(
                    config,
                    line,
                    Kind::NotClosed,
                    door,
                    format!(
                        "port {port} is open to new connections from any address over {} ({}), so the door \
                         protects nothing: the port is reachable without a knock; fix: after accepting \
                         established connections, drop it: {}",
                        families_text(&fams),
                        by(&open[0].1),
                        fams.iter()
                            .map(|f| format!(
                                "{} -A INPUT -p {} --dport {} -j DROP",
                                tool(*f),
                                port.proto.name(),
                                port.port
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
            if !cut.is_empty() {
                let fams: Vec<Family> = cut.iter().map(|(f, _)| *f).collect();
                out.push(warning(
                    config,
                    line,
                    Kind::EstablishedDropped,
                    door,
                    format!(
                        "established connections to port {port} are dropped over {} ({}): when the grant \
                         closes or the firewall is reloaded, the operator's open session dies and they are \
                         locked out; fix: accept established connections before any DROP: {}",
                        families_text(&fams),
                        by(&cut[0].1),
                        fams.iter()
                            .map(|f| format!(
                                "{} -I INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                                tool(*f)
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
        }
        start_after_drop(config, door, ruleset, &mut out);
    }
    out
}

fn tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn start_after_drop(config: &Config, door: &Door, ruleset: &Ruleset, out: &mut Vec<Warning>) {
    let l = &door.lines;
    let commands = [(&door.start_command, l.start_command), (&door.start_command_6, l.start_command_6)];
    for (cmd, line) in commands {
        let Some(cmd) = cmd else { continue };
        for ins in commands::insertions(cmd) {
            let origin = if ins.nft { Origin::Nft } else { Origin::Iptables };
            let Some(table) = ruleset.table(origin, &ins.family, &ins.table) else { continue };
            let families: &[Family] = match ins.family.as_str() {
                "ip" => &[Family::V4],
                "ip6" => &[Family::V6],
                _ => &[Family::V4, Family::V6],
            };
            for &port in &ins.ports {
                let dropped = families.iter().find_map(|&family| {
                    match table.walk(&ins.chain, &Packet { family, port, state: State::New }, ins.position) {
                        Verdict::Drop(w) => Some(w),
                        _ => None,
                    }
                });
                let Some(dropped_by) = dropped else { continue };
                let at = match ins.position {
                    None => "at the end".to_owned(),
                    Some(i) => format!("at position {}", i + 1),
                };
                let fix = if ins.nft {
                    format!("nft insert rule {} {} {} ... (at the top)", ins.family, ins.table, ins.chain)
                } else {
                    format!(
                        "{} -I {} ... (at the top)",
                        if ins.family == "ip6" { "ip6tables" } else { "iptables" },
                        ins.chain
                    )
                };
                out.push(warning(
                    config,
                    l.or_door(line),
                    Kind::StartAfterDrop,
                    door,
                    format!(
                        "start command '{}' adds its ACCEPT for {port} {at} of {}, after {dropped_by}, \
                         which drops the knocker's SYN first: the knock runs the command and opens nothing; \
                         fix: {fix}",
                        ins.text,
                        table.describe(&ins.chain)
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::knockd;
    use std::path::Path;

    /// Text fixtures instead of the live programs.
    struct Fixture {
        v4: Option<&'static str>,
        v6: Option<&'static str>,
        nft: Option<&'static str>,
        over_nft: bool,
        ipv6: bool,
    }

    impl RulesetSource for Fixture {
        fn iptables_save(&self, family: Family) -> Result<Option<String>, CheckError> {
            Ok(if family == Family::V4 { self.v4 } else { self.v6 }.map(str::to_owned))
        }
        fn nft_json(&self) -> Result<Option<String>, CheckError> {
            Ok(self.nft.map(str::to_owned))
        }
        fn iptables_over_nft(&self) -> bool {
            self.over_nft
        }
        fn has_ipv6(&self) -> bool {
            self.ipv6
        }
    }

    const NONE: Fixture = Fixture { v4: None, v6: None, nft: None, over_nft: true, ipv6: false };

    /// The seed article's base policy (established accepted, 22 dropped), as iptables-save prints it.
    const BASE: &str = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                        -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                        -A INPUT -p tcp -m tcp --dport 22 -j DROP\nCOMMIT\n";
    const NO_ESTABLISHED: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\nCOMMIT\n";
    const NO_DROP: &str =
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n";

    fn door(start: &str) -> String {
        let stop = start.replace(" -A ", " -D ").replace(" -I ", " -D ");
        format!("[d]\nsequence = 31337,6111,40001\ncommand = {start}\nstop_command = {stop}\n")
    }

    const APPEND: &str = "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT";
    const INSERT: &str = "/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT";

    fn check(conf: &str, source: &Fixture) -> Vec<(usize, Kind, String)> {
        let config = knockd::parse(Path::new("k.conf"), conf).unwrap();
        let (ruleset, families) = read(source).unwrap();
        warnings(&config, &ruleset, &families).into_iter().map(|w| (w.line, w.kind, w.to_string())).collect()
    }

    fn kinds(conf: &str, source: &Fixture) -> Vec<(usize, Kind)> {
        check(conf, source).into_iter().map(|(l, k, _)| (l, k)).collect()
    }

    #[test]
    fn base_policy_with_append_warns_and_with_insert_does_not() {
        let src = Fixture { v4: Some(BASE), ..NONE };
        let w = check(&door(APPEND), &src);
        assert_eq!(w.len(), 1, "{w:?}");
        let (line, kind, text) = &w[0];
        assert_eq!((*line, *kind), (3, Kind::StartAfterDrop));
        assert!(
            text.starts_with("warning: k.conf:3: door 'd': start command '/sbin/iptables -A INPUT"),
            "{text}"
        );
        assert!(text.contains("for 22/tcp at the end of chain INPUT of iptables' filter table"), "{text}");
        assert!(text.contains("-p tcp -m tcp --dport 22 -j DROP"), "{text}");
        assert_eq!(kinds(&door(INSERT), &src), []);
        // Inserted below the DROP, it is as bad as appended.
        assert_eq!(
            kinds(&door("/sbin/iptables -I INPUT 3 -s %IP% -p tcp --dport 22 -j ACCEPT"), &src),
            [(3, Kind::StartAfterDrop)]
        );
        assert_eq!(kinds(&door("/sbin/iptables -I INPUT 2 -s %IP% -p tcp --dport 22 -j ACCEPT"), &src), []);
    }

    #[test]
    fn no_drop_protects_nothing() {
        let w = check(&door(INSERT), &Fixture { v4: Some(NO_DROP), ..NONE });
        assert_eq!(w.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(), [(3, Kind::NotClosed)]);
        assert!(
            w[0].2.contains("port 22/tcp is open to new connections from any address over IPv4"),
            "{}",
            w[0].2
        );
        assert!(w[0].2.contains("protects nothing"), "{}", w[0].2);
        // An empty ruleset too; and with IPv6 addresses, IPv6 counts.
        let src =
            Fixture { v4: Some(""), v6: Some(""), nft: Some(r#"{"nftables": []}"#), ipv6: true, ..NONE };
        let w = check(&door(INSERT), &src);
        assert_eq!(w.len(), 1);
        assert!(w[0].2.contains("over IPv4 and IPv6 (no input chain filters it)"), "{}", w[0].2);
        // IPv4 closed but IPv6 not.
        let src = Fixture { v4: Some(BASE), v6: Some(NO_DROP), ipv6: true, ..NONE };
        let w = check(&door(INSERT), &src);
        assert_eq!(w.len(), 1);
        assert!(w[0].2.contains("over IPv6 (accepted by the ACCEPT policy"), "{}", w[0].2);
    }

    #[test]
    fn dropping_established_connections_warns() {
        let w = check(&door(INSERT), &Fixture { v4: Some(NO_ESTABLISHED), ..NONE });
        assert_eq!(w.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(), [(3, Kind::EstablishedDropped)]);
        assert!(
            w[0].2.contains("established connections to port 22/tcp are dropped over IPv4"),
            "{}",
            w[0].2
        );
        assert!(
            w[0].2.contains("iptables -I INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
            "{}",
            w[0].2
        );
    }

    #[test]
    fn nft_rulesets_and_commands() {
        let base = r#"{"nftables": [{"table": {"family": "inet", "name": "filter", "handle": 1}},
 {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 2, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"drop": null}]}}]}"#;
        let src = Fixture { nft: Some(base), ipv6: true, ..NONE };
        let add = "nft add rule inet filter input ip saddr %IP% tcp dport 22 accept";
        let insert = "nft insert rule inet filter input ip saddr %IP% tcp dport 22 accept";
        let conf = |c: &str| format!("[d]\nsequence = 31337,6111,40001\ncommand = {c}\nstop_command = x\n");
        let w = check(&conf(add), &src);
        assert_eq!(w.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(), [(3, Kind::StartAfterDrop)]);
        assert!(w[0].2.contains("chain input of nft table inet filter"), "{}", w[0].2);
        assert!(w[0].2.contains("nft insert rule inet filter input"), "{}", w[0].2);
        assert_eq!(kinds(&conf(insert), &src), []);
    }

    #[test]
    fn native_doors_use_open_and_nftables_doors_are_skipped() {
        let src = Fixture { v4: Some(NO_DROP), ..NONE };
        let conf = "[d]\nsequence = 31337,6111,40001\nopen = 2222/tcp\nbackend = iptables\n";
        assert_eq!(kinds(conf, &src), [(3, Kind::NotClosed)]);
        let conf = "[d]\nsequence = 31337,6111,40001\nopen = 2222/tcp\nbackend = nftables\n";
        assert_eq!(kinds(conf, &src), []);
        // A door whose commands are scripts has no known port: nothing to say.
        assert_eq!(kinds("[d]\nsequence = 31337,6111,40001\ncommand = /usr/local/bin/open %IP%\n", &src), []);
    }

    #[test]
    fn nothing_to_read_is_an_error() {
        assert!(matches!(read(&NONE), Err(CheckError::NoTools)));
        let bad = Fixture { nft: Some("not json"), ..NONE };
        assert!(matches!(read(&bad), Err(CheckError::NftJson(_))));
    }
}
