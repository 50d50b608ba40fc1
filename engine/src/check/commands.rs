//! What knockd-style start and stop commands do to the firewall, read from their
//! text: which port they open, where their rule lands (`iptables -A` / `-I N`, `nft add`
//! / `insert`), and what would undo them. Only iptables, ip6tables, nft and ufw are
//! understood; any other program (a script) is opaque and draws no warning.

use crate::config::{Port, L4};

/// The address family a firewall command works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Iptables(Family),
    Nft,
    Ufw,
}

/// One command of a shell line: the tool it runs and its words after the program.
struct Invocation<'a> {
    tool: Tool,
    program: &'a str,
    args: Vec<&'a str>,
}

fn words(cmd: &str) -> Vec<&str> {
    cmd.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The iptables/ip6tables/nft/ufw invocations in `cmd` (`a && b; c` is three).
fn invocations(cmd: &str) -> Vec<Invocation<'_>> {
    let mut out = Vec::new();
    let all = words(cmd);
    for segment in all.split(|w| matches!(*w, ";" | "&&" | "||" | "|")) {
        let Some(at) = segment.iter().position(|w| tool_of(w).is_some()) else { continue };
        let program = segment[at];
        let tool = tool_of(program).expect("found above");
        out.push(Invocation { tool, program, args: segment[at + 1..].to_vec() });
    }
    out
}

fn tool_of(word: &str) -> Option<Tool> {
    let base = word.rsplit('/').next().unwrap_or(word);
    Some(match base {
        "iptables" | "iptables-nft" | "iptables-legacy" => Tool::Iptables(Family::V4),
        "ip6tables" | "ip6tables-nft" | "ip6tables-legacy" => Tool::Iptables(Family::V6),
        "nft" => Tool::Nft,
        "ufw" => Tool::Ufw,
        _ => return None,
    })
}

fn value_of<'a>(args: &[&'a str], names: &[&str]) -> Option<&'a str> {
    args.iter().position(|a| names.contains(a)).and_then(|i| args.get(i + 1).copied())
}

fn has(args: &[&str], names: &[&str]) -> bool {
    args.iter().any(|a| names.contains(a))
}

fn iptables_accepts(args: &[&str]) -> bool {
    value_of(args, &["-j", "--jump"]) == Some("ACCEPT")
}

/// Whether `cmd` only removes rules (`iptables -D`, `ufw delete`, `nft delete`): a
/// "closing" command, which opens nothing.
pub fn closes(cmd: &str) -> bool {
    let inv = invocations(cmd);
    !inv.is_empty()
        && inv.iter().all(|i| match i.tool {
            Tool::Iptables(_) => has(&i.args, &["-D", "--delete", "-F", "--flush"]),
            Tool::Nft => has(&i.args, &["delete", "flush", "destroy"]),
            Tool::Ufw => has(&i.args, &["delete"]),
        })
}

/// A stop command undoing `start`: each `iptables -A/-I CHAIN [N]` becomes `-D CHAIN`,
/// `ufw allow` / `ufw insert N allow` becomes `ufw delete allow`. `None` when some part
/// cannot be undone that way (nft rules are deleted by handle; scripts are opaque).
pub fn stop_for(start: &str) -> Option<String> {
    let all = words(start);
    let mut out: Vec<String> = Vec::with_capacity(all.len());
    let mut tool = None;
    let mut undone = false;
    let mut i = 0;
    while i < all.len() {
        let w = all[i];
        if matches!(w, ";" | "&&" | "||" | "|") {
            tool = None;
        } else if let Some(t) = tool_of(w) {
            tool = Some(t);
            out.push(w.to_owned());
            i += 1;
            continue;
        }
        match tool {
            Some(Tool::Iptables(_)) if matches!(w, "-A" | "--append" | "-I" | "--insert") => {
                out.push("-D".into());
                if let Some(chain) = all.get(i + 1) {
                    out.push((*chain).to_owned());
                    i += 1;
                }
                if matches!(w, "-I" | "--insert") && all.get(i + 1).is_some_and(|n| n.parse::<u32>().is_ok())
                {
                    i += 1;
                }
                undone = true;
            }
            Some(Tool::Ufw) if w == "allow" => {
                out.push("delete".into());
                out.push("allow".into());
                undone = true;
            }
            Some(Tool::Ufw) if w == "insert" => {
                // `ufw insert N allow ...`: the position goes with it.
                if all.get(i + 1).is_some_and(|n| n.parse::<u32>().is_ok()) {
                    i += 1;
                }
            }
            Some(Tool::Nft) => return None,
            _ => out.push(w.to_owned()),
        }
        i += 1;
    }
    undone.then(|| out.join(" "))
}

/// An `iptables -A CHAIN ... -j ACCEPT` in a start command, and the same command with
/// `-I` (insert at the top) instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendAccept {
    pub program: String,
    pub chain: String,
    pub fixed: String,
}

/// Every `-A ... -j ACCEPT` of iptables/ip6tables in `cmd`.
pub fn appended_accepts(cmd: &str) -> Vec<AppendAccept> {
    let mut out = Vec::new();
    for inv in invocations(cmd) {
        let Tool::Iptables(_) = inv.tool else { continue };
        let Some(chain) = value_of(&inv.args, &["-A", "--append"]) else { continue };
        if !iptables_accepts(&inv.args) {
            continue;
        }
        let fixed = words(cmd)
            .iter()
            .map(|w| if matches!(*w, "-A" | "--append") { "-I" } else { w })
            .collect::<Vec<_>>()
            .join(" ");
        out.push(AppendAccept { program: inv.program.to_owned(), chain: chain.to_owned(), fixed });
    }
    out
}

/// Where a start command's ACCEPT rule lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insertion {
    /// `iptables -A`/`-I`, or `nft add`/`insert`.
    pub nft: bool,
    /// For iptables the family its program works on; for nft the table's family
    /// (`ip`, `ip6`, `inet`; `ip` when not written).
    pub family: String,
    pub table: String,
    pub chain: String,
    /// 0-based index of the new rule in the chain; `None` = appended at the end.
    pub position: Option<usize>,
    /// The ports the rule accepts.
    pub ports: Vec<Port>,
    /// The invocation, for messages.
    pub text: String,
}

/// Every rule-adding, accepting iptables or nft invocation in `cmd`.
pub fn insertions(cmd: &str) -> Vec<Insertion> {
    let mut out = Vec::new();
    for inv in invocations(cmd) {
        let text = std::iter::once(inv.program).chain(inv.args.iter().copied()).collect::<Vec<_>>().join(" ");
        let args = &inv.args;
        match inv.tool {
            Tool::Iptables(family) => {
                if !iptables_accepts(args) {
                    continue;
                }
                let table = value_of(args, &["-t", "--table"]).unwrap_or("filter").to_owned();
                let (chain, position) = if let Some(chain) = value_of(args, &["-A", "--append"]) {
                    (chain, None)
                } else if let Some(i) = args.iter().position(|a| matches!(*a, "-I" | "--insert")) {
                    let Some(chain) = args.get(i + 1) else { continue };
                    let n = args.get(i + 2).and_then(|n| n.parse::<usize>().ok()).unwrap_or(1);
                    (*chain, Some(n.saturating_sub(1)))
                } else {
                    continue;
                };
                let family = match family {
                    Family::V4 => "ip",
                    Family::V6 => "ip6",
                };
                let ports = iptables_ports(args);
                out.push(Insertion {
                    nft: false,
                    family: family.into(),
                    table,
                    chain: chain.into(),
                    position,
                    ports,
                    text,
                });
            }
            Tool::Nft => {
                let Some(verb) = args.iter().position(|a| matches!(*a, "add" | "insert")) else { continue };
                if args.get(verb + 1) != Some(&"rule") || !has(args, &["accept"]) {
                    continue;
                }
                if has(args, &["position", "index", "handle"]) {
                    continue; // relative to a rule this check cannot see
                }
                let mut rest = &args[verb + 2..];
                let family = match rest.first().copied() {
                    Some(f @ ("ip" | "ip6" | "inet")) => {
                        rest = &rest[1..];
                        f.to_owned()
                    }
                    Some("arp" | "bridge" | "netdev") => continue,
                    _ => "ip".to_owned(),
                };
                let (Some(table), Some(chain)) = (rest.first(), rest.get(1)) else { continue };
                let position = (args[verb] == "insert").then_some(0);
                out.push(Insertion {
                    nft: true,
                    family,
                    table: (*table).to_owned(),
                    chain: (*chain).to_owned(),
                    position,
                    ports: nft_ports(&rest[2..]),
                    text,
                });
            }
            Tool::Ufw => {}
        }
    }
    out
}

/// The ports a start command opens: from iptables' `-p P --dport N` / `--dports a,b`,
/// nft's `tcp dport N` / `{ a, b }`, ufw's `port N proto P` or `N/P`.
pub fn protected_ports(cmd: &str) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    for inv in invocations(cmd) {
        let ports = match inv.tool {
            Tool::Iptables(_)
                if iptables_accepts(&inv.args) && has(&inv.args, &["-A", "--append", "-I", "--insert"]) =>
            {
                iptables_ports(&inv.args)
            }
            Tool::Nft if has(&inv.args, &["accept"]) && !has(&inv.args, &["delete"]) => nft_ports(&inv.args),
            Tool::Ufw if has(&inv.args, &["allow"]) && !has(&inv.args, &["delete"]) => ufw_ports(&inv.args),
            _ => Vec::new(),
        };
        for p in ports {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn l4(name: &str) -> Option<L4> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Some(L4::Tcp),
        "udp" | "17" => Some(L4::Udp),
        _ => None,
    }
}

/// The first port of `N` or `N:M` / `N-M`.
fn first_port(text: &str) -> Option<u16> {
    text.split([':', '-']).next().and_then(|p| p.trim().parse().ok())
}

fn iptables_ports(args: &[&str]) -> Vec<Port> {
    let Some(proto) = value_of(args, &["-p", "--protocol"]).and_then(l4) else { return Vec::new() };
    let list = value_of(args, &["--dport", "--destination-port"])
        .or_else(|| value_of(args, &["--dports", "--destination-ports"]))
        .unwrap_or("");
    list.split(',').filter_map(first_port).map(|port| Port { port, proto }).collect()
}

fn nft_ports(args: &[&str]) -> Vec<Port> {
    let mut out = Vec::new();
    for (i, w) in args.iter().enumerate() {
        let Some(proto) = l4(w) else { continue };
        if args.get(i + 1) != Some(&"dport") {
            continue;
        }
        let mut rest = args[i + 2..].iter().copied();
        match rest.next() {
            Some(first) if first.starts_with('{') => {
                let mut set = first.trim_start_matches('{').to_owned();
                if !first.contains('}') {
                    for w in rest.by_ref() {
                        set.push(' ');
                        set.push_str(w);
                        if w.contains('}') {
                            break;
                        }
                    }
                }
                let set = set.trim_end_matches('}');
                out.extend(set.split([',', ' ']).filter_map(first_port).map(|port| Port { port, proto }));
            }
            Some(one) => out.extend(first_port(one).map(|port| Port { port, proto })),
            None => {}
        }
    }
    out
}

fn ufw_ports(args: &[&str]) -> Vec<Port> {
    if let Some(port) = value_of(args, &["port"]).and_then(first_port) {
        let proto = value_of(args, &["proto"]).and_then(l4).unwrap_or(L4::Tcp);
        return vec![Port { port, proto }];
    }
    // `ufw allow 22/tcp`, `ufw allow from %IP% to any app OpenSSH` (opaque).
    args.iter()
        .filter_map(|a| a.split_once('/'))
        .filter_map(|(p, proto)| Some(Port { port: p.parse().ok()?, proto: l4(proto)? }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT";

    fn tcp(port: u16) -> Port {
        Port { port, proto: L4::Tcp }
    }

    #[test]
    fn stop_commands_undo_iptables_and_ufw() {
        assert_eq!(stop_for(DEBIAN).unwrap(), "/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT");
        assert_eq!(
            stop_for("iptables -I INPUT 3 -s %IP% -p tcp --dport 22 -j ACCEPT && logger opened").unwrap(),
            "iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT && logger opened"
        );
        assert_eq!(
            stop_for("/usr/sbin/ufw allow from %IP% to any port 22 proto tcp").unwrap(),
            "/usr/sbin/ufw delete allow from %IP% to any port 22 proto tcp"
        );
        assert_eq!(stop_for("ufw insert 1 allow from %IP%").unwrap(), "ufw delete allow from %IP%");
        assert_eq!(stop_for("nft add rule inet f input ip saddr %IP% accept"), None);
        assert_eq!(stop_for("/usr/local/bin/open-door %IP%"), None);
    }

    #[test]
    fn closing_commands() {
        assert!(closes("/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"));
        assert!(closes("ufw delete allow from %IP%"));
        assert!(closes("nft delete rule inet f input handle 5"));
        assert!(!closes(DEBIAN));
        assert!(!closes("/usr/local/bin/close-door %IP%"), "scripts are opaque");
    }

    #[test]
    fn appends_are_found_and_fixed() {
        let a = appended_accepts(DEBIAN);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].program.as_str(), a[0].chain.as_str()), ("/sbin/iptables", "INPUT"));
        assert_eq!(a[0].fixed, "/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT");
        assert!(appended_accepts("iptables -I INPUT -s %IP% -j ACCEPT").is_empty());
        assert!(appended_accepts("iptables -A INPUT -s %IP% -j DROP").is_empty());
        assert!(appended_accepts("echo -A INPUT -j ACCEPT").is_empty());
    }

    #[test]
    fn ports_from_each_tool() {
        assert_eq!(protected_ports(DEBIAN), [tcp(22)]);
        assert_eq!(
            protected_ports("iptables -I INPUT -s %IP% -p udp -m multiport --dports 53,1194:1195 -j ACCEPT"),
            [Port { port: 53, proto: L4::Udp }, Port { port: 1194, proto: L4::Udp }]
        );
        assert_eq!(
            protected_ports("nft add rule inet filter input ip saddr %IP% tcp dport 2222 accept"),
            [tcp(2222)]
        );
        assert_eq!(
            protected_ports("nft insert rule inet filter input ip saddr %IP% tcp dport { 22, 443 } accept"),
            [tcp(22), tcp(443)]
        );
        assert_eq!(protected_ports("/usr/sbin/ufw allow from %IP% to any port 22 proto tcp"), [tcp(22)]);
        assert_eq!(
            protected_ports("ufw allow from %IP% to any port 60001 proto udp"),
            [Port { port: 60001, proto: L4::Udp }]
        );
        assert_eq!(protected_ports("/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%"), []);
        assert_eq!(protected_ports("iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"), []);
    }

    #[test]
    fn insertion_points() {
        let i = &insertions(DEBIAN)[0];
        assert_eq!(
            (i.nft, i.family.as_str(), i.table.as_str(), i.chain.as_str(), i.position),
            (false, "ip", "filter", "INPUT", None)
        );
        assert_eq!(i.ports, [tcp(22)]);
        let i = &insertions("ip6tables -t filter -I INPUT 4 -s %IP% -p tcp --dport 22 -j ACCEPT")[0];
        assert_eq!((i.family.as_str(), i.position), ("ip6", Some(3)));
        assert_eq!(insertions("iptables -I INPUT -s %IP% -j ACCEPT")[0].position, Some(0));
        let i = &insertions("nft add rule inet filter input ip saddr %IP% tcp dport 22 accept")[0];
        assert_eq!(
            (i.nft, i.family.as_str(), i.table.as_str(), i.chain.as_str(), i.position),
            (true, "inet", "filter", "input", None)
        );
        let i = &insertions("nft insert rule filter input ip saddr %IP% tcp dport 22 accept")[0];
        assert_eq!((i.family.as_str(), i.table.as_str(), i.position), ("ip", "filter", Some(0)));
        assert!(insertions("nft add rule inet filter input position 4 ip saddr %IP% accept").is_empty());
        assert!(insertions("iptables -A INPUT -s %IP% -j LOG").is_empty());
    }
}
