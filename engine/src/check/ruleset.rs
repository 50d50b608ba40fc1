//! A small model of a live firewall, read from `iptables-save` / `ip6tables-save` text
//! and `nft -j list ruleset` JSON, and the one question `sesame check --firewall`
//! asks of it: what happens to a packet from an arbitrary address to a given port,
//! new or established?
//!
//! The model is deliberately conservative. A rule counts only when every one of its
//! matches is understood and holds for that packet: a rule restricted to some source
//! addresses (a grant), to the loopback interface, or with a match this module does
//! not know (`-m recent`, a named set, a rate limit) never matches. Interfaces other
//! than `lo` and destination addresses are assumed to be the ones the packet arrives on.

use super::commands::Family;
use crate::config::Port;
use serde_json::Value;

/// The connection-tracking state of the packet asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A connection attempt (a SYN, or a first UDP datagram).
    New,
    /// A packet of a connection that was accepted before.
    Established,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::New => "new",
            State::Established => "established",
        }
    }
}

/// A packet from an arbitrary address to `port`.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub family: Family,
    pub port: Port,
    pub state: State,
}

/// Where a ruleset came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Iptables,
    Nft,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// A non-terminal statement (LOG, counter, mark).
    Continue,
    /// `ct state vmap { ... }`.
    StateMap(Vec<(String, Action)>),
    /// `tcp dport vmap { ... }`.
    PortMap(Vec<((u16, u16), Action)>),
}

#[derive(Clone, Debug, Default)]
struct Rule {
    /// How the rule is shown in messages.
    text: String,
    family: Option<Family>,
    /// (negated, protocol name)
    proto: Option<(bool, String)>,
    /// (negated, ranges)
    dports: Option<(bool, Vec<(u16, u16)>)>,
    /// (negated, state names)
    states: Option<(bool, Vec<String>)>,
    /// `--syn` (Some(true)) / `! --syn` (Some(false)): only new / only other packets.
    syn: Option<bool>,
    /// Never matches an arbitrary packet (source restriction, `lo`, unknown match).
    never: bool,
    action: Option<Action>,
}

#[derive(Clone, Debug)]
struct Chain {
    name: String,
    /// A base chain on the input hook (iptables' filter INPUT), and its policy.
    input_policy: Option<Action>,
    rules: Vec<Rule>,
}

/// One table: iptables' `*filter` of one family, or an nft table.
#[derive(Clone, Debug)]
pub struct Table {
    pub origin: Origin,
    /// `ip`, `ip6` or `inet`.
    pub family: String,
    pub name: String,
    chains: Vec<Chain>,
}

/// The whole ruleset of a network namespace.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

/// What a chain (or the ruleset) does with a packet, and the rule or policy that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept(String),
    Drop(String),
    /// Reached the end of the chain (or a RETURN) without a decision.
    None,
}

fn family_covers(family: &str, f: Family) -> bool {
    match family {
        "inet" => true,
        "ip" => f == Family::V4,
        "ip6" => f == Family::V6,
        _ => false,
    }
}

impl Rule {
    fn matches(&self, p: &Packet) -> bool {
        if self.never || self.family.is_some_and(|f| f != p.family) {
            return false;
        }
        if let Some((neg, proto)) = &self.proto {
            let same = proto == p.port.proto.name() || proto == "all";
            if same == *neg {
                return false;
            }
        }
        if let Some((neg, ranges)) = &self.dports {
            let inside = ranges.iter().any(|&(a, b)| (a..=b).contains(&p.port.port));
            if inside == *neg {
                return false;
            }
        }
        if let Some((neg, states)) = &self.states {
            let inside = states.iter().any(|s| s == p.state.name());
            if inside == *neg {
                return false;
            }
        }
        self.syn.is_none_or(|syn| syn == (p.state == State::New))
    }

    /// The action for `p`, resolving verdict maps; `None` = no decision here.
    fn action_for(&self, p: &Packet) -> Option<Action> {
        match self.action.as_ref()? {
            Action::StateMap(map) => map.iter().find(|(s, _)| s == p.state.name()).map(|(_, a)| a.clone()),
            Action::PortMap(map) => {
                map.iter().find(|((a, b), _)| (*a..=*b).contains(&p.port.port)).map(|(_, a)| a.clone())
            }
            a => Some(a.clone()),
        }
    }
}

const MAX_DEPTH: usize = 16;

impl Table {
    fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// Runs `p` through the first `limit` rules of `chain` (all when `None`), following
    /// jumps; [`Verdict::None`] when it falls off the end (the policy is not applied).
    pub fn walk(&self, chain: &str, p: &Packet, limit: Option<usize>) -> Verdict {
        self.walk_depth(chain, p, limit, 0)
    }

    fn walk_depth(&self, chain: &str, p: &Packet, limit: Option<usize>, depth: usize) -> Verdict {
        let Some(c) = self.chain(chain) else { return Verdict::None };
        if depth > MAX_DEPTH {
            return Verdict::None;
        }
        let rules = &c.rules[..limit.unwrap_or(c.rules.len()).min(c.rules.len())];
        for rule in rules {
            if !rule.matches(p) {
                continue;
            }
            let where_ = || format!("'{}' in {}", rule.text, self.describe(chain));
            match rule.action_for(p) {
                Some(Action::Accept) => return Verdict::Accept(where_()),
                Some(Action::Drop) => return Verdict::Drop(where_()),
                Some(Action::Return) => return Verdict::None,
                Some(Action::Jump(target)) => match self.walk_depth(&target, p, None, depth + 1) {
                    Verdict::None => {}
                    decided => return decided,
                },
                Some(Action::Goto(target)) => return self.walk_depth(&target, p, None, depth + 1),
                _ => {}
            }
        }
        Verdict::None
    }

    /// "chain INPUT of iptables' filter table (IPv4)", "chain input of nft table inet filter".
    pub fn describe(&self, chain: &str) -> String {
        match self.origin {
            Origin::Iptables => {
                let tool = if self.family == "ip6" { "ip6tables" } else { "iptables" };
                format!("chain {chain} of {tool}' {} table", self.name)
            }
            Origin::Nft => format!("chain {chain} of nft table {} {}", self.family, self.name),
        }
    }

    /// The verdict of each input base chain of this table for `p`, policy applied.
    fn input_verdicts(&self, p: &Packet) -> Vec<Verdict> {
        if !family_covers(&self.family, p.family) {
            return Vec::new();
        }
        self.chains
            .iter()
            .filter_map(|c| {
                let policy = c.input_policy.as_ref()?;
                Some(match self.walk(&c.name, p, None) {
                    Verdict::None if *policy == Action::Drop => {
                        Verdict::Drop(format!("the DROP policy of {}", self.describe(&c.name)))
                    }
                    Verdict::None => {
                        Verdict::Accept(format!("the ACCEPT policy of {}", self.describe(&c.name)))
                    }
                    v => v,
                })
            })
            .collect()
    }
}

impl Ruleset {
    /// Whether the ruleset has any input base chain for `family` at all.
    pub fn filters(&self, family: Family) -> bool {
        self.tables
            .iter()
            .any(|t| family_covers(&t.family, family) && t.chains.iter().any(|c| c.input_policy.is_some()))
    }

    /// What happens to `p` on the input path: every input base chain must accept it,
    /// so the first drop decides; accepted (by "no rule") when no chain drops it.
    pub fn verdict(&self, p: &Packet) -> Verdict {
        let all: Vec<Verdict> = self.tables.iter().flat_map(|t| t.input_verdicts(p)).collect();
        if let Some(drop) = all.iter().find(|v| matches!(v, Verdict::Drop(_))) {
            return drop.clone();
        }
        all.into_iter().next().unwrap_or(Verdict::None)
    }

    /// The table an insertion goes to.
    pub fn table(&self, origin: Origin, family: &str, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.origin == origin && t.family == family && t.name == name)
    }

    /// Adds the `*filter` table of `iptables-save` (`family` V4) or `ip6tables-save` output.
    /// Other tables (nat, mangle, raw) are skipped.
    pub fn add_iptables_save(&mut self, family: Family, text: &str) {
        let fam = match family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let mut table: Option<Table> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = Some(Table {
                    origin: Origin::Iptables,
                    family: fam.into(),
                    name: name.into(),
                    chains: Vec::new(),
                });
            } else if line == "COMMIT" {
                if let Some(t) = table.take() {
                    if t.name == "filter" {
                        self.tables.push(t);
                    }
                }
            } else if let (Some(t), Some(decl)) = (table.as_mut(), line.strip_prefix(':')) {
                let mut parts = decl.split_whitespace();
                let name = parts.next().unwrap_or_default().to_owned();
                let policy = match parts.next() {
                    Some("DROP") if name == "INPUT" => Some(Action::Drop),
                    Some(_) if name == "INPUT" => Some(Action::Accept),
                    _ => None,
                };
                t.chains.push(Chain { name, input_policy: policy, rules: Vec::new() });
            } else if let (Some(t), Some(rest)) = (table.as_mut(), line.strip_prefix("-A ")) {
                let tokens = tokenize(rest);
                let Some((chain, args)) = tokens.split_first() else { continue };
                let chains: Vec<String> = t.chains.iter().map(|c| c.name.clone()).collect();
                let rule = iptables_rule(line, args, &chains);
                if let Some(c) = t.chains.iter_mut().find(|c| &c.name == chain) {
                    c.rules.push(rule);
                }
            }
        }
    }

    /// Adds the tables of `nft -j list ruleset`. With `skip_xtables`, the `ip`/`ip6`
    /// tables that iptables-nft owns (filter, nat, mangle, raw, security) are left out:
    /// `iptables-save` shows them already, in a form this module reads.
    pub fn add_nft_json(&mut self, json: &str, skip_xtables: bool) -> Result<(), String> {
        let value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let items = value.get("nftables").and_then(Value::as_array).ok_or("no \"nftables\" array")?;
        let skipped = |family: &str, name: &str| {
            skip_xtables
                && matches!(family, "ip" | "ip6")
                && matches!(name, "filter" | "nat" | "mangle" | "raw" | "security")
        };
        let mut tables: Vec<Table> = Vec::new();
        for item in items {
            let str_of = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            if let Some(t) = item.get("table") {
                let (family, name) = (str_of(t, "family"), str_of(t, "name"));
                if !skipped(&family, &name) {
                    tables.push(Table { origin: Origin::Nft, family, name, chains: Vec::new() });
                }
            } else if let Some(c) = item.get("chain") {
                let (family, table, name) = (str_of(c, "family"), str_of(c, "table"), str_of(c, "name"));
                let input = str_of(c, "hook") == "input" && str_of(c, "type") == "filter";
                let policy =
                    input.then(|| if str_of(c, "policy") == "drop" { Action::Drop } else { Action::Accept });
                if let Some(t) = tables.iter_mut().find(|t| t.family == family && t.name == table) {
                    t.chains.push(Chain { name, input_policy: policy, rules: Vec::new() });
                }
            } else if let Some(r) = item.get("rule") {
                let (family, table, chain) = (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"));
                let Some(t) = tables.iter_mut().find(|t| t.family == family && t.name == table) else {
                    continue;
                };
                let exprs = r.get("expr").and_then(Value::as_array).cloned().unwrap_or_default();
                let rule = nft_rule(&exprs);
                if let Some(c) = t.chains.iter_mut().find(|c| c.name == chain) {
                    c.rules.push(rule);
                }
            }
        }
        self.tables.extend(tables);
        Ok(())
    }
}

/// Splits an iptables-save rule into words; `"..."` quotes (with `\"` inside) are one word.
fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

fn port_ranges(text: &str) -> Option<Vec<(u16, u16)>> {
    text.split(',')
        .map(|part| {
            let mut it = part.split(':');
            let a: u16 = it.next()?.trim().parse().ok()?;
            let b: u16 = match it.next() {
                Some("") => u16::MAX,
                Some(b) => b.trim().parse().ok()?,
                None => a,
            };
            Some((a, b))
        })
        .collect()
}

fn any_address(a: &str) -> bool {
    matches!(a, "0.0.0.0/0" | "::/0" | "0/0")
}

/// One `-A CHAIN ...` rule (`args` after the chain name); `chains` are the table's
/// chains, for telling a jump from a target extension.
fn iptables_rule(line: &str, args: &[String], chains: &[String]) -> Rule {
    let mut rule = Rule { text: line.to_owned(), ..Rule::default() };
    let mut neg = false;
    let mut i = 0;
    let next = |i: &mut usize| -> Option<&String> {
        *i += 1;
        args.get(*i)
    };
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-p" | "--protocol" => {
                rule.proto = next(&mut i).map(|p| (neg, p.to_ascii_lowercase()));
            }
            "-s" | "--source" => {
                let v = next(&mut i).map(String::as_str).unwrap_or_default();
                if !neg && !any_address(v) {
                    rule.never = true;
                }
            }
            "-d" | "--destination" | "-o" | "--out-interface" | "--comment" => {
                next(&mut i);
            }
            "-i" | "--in-interface" => {
                if next(&mut i).is_some_and(|v| v == "lo") && !neg {
                    rule.never = true;
                }
            }
            "-m" | "--match" => {
                let m = next(&mut i).map(String::as_str).unwrap_or_default();
                if !matches!(m, "tcp" | "udp" | "conntrack" | "state" | "multiport" | "comment") {
                    rule.never = true;
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                match next(&mut i).and_then(|v| port_ranges(v)) {
                    Some(r) => rule.dports = Some((neg, r)),
                    None => rule.never = true,
                }
            }
            "--ctstate" | "--state" => {
                let states = next(&mut i).map(|v| v.split(',').map(|s| s.to_ascii_lowercase()).collect());
                rule.states = states.map(|s| (neg, s));
            }
            "--syn" => rule.syn = Some(!neg),
            "-j" | "--jump" | "-g" | "--goto" => {
                let target = next(&mut i).cloned().unwrap_or_default();
                rule.action = Some(match target.as_str() {
                    "ACCEPT" => Action::Accept,
                    "DROP" | "REJECT" => Action::Drop,
                    "RETURN" => Action::Return,
                    t if chains.iter().any(|c| c == t) => {
                        if matches!(a, "-g" | "--goto") {
                            Action::Goto(target)
                        } else {
                            Action::Jump(target)
                        }
                    }
                    _ => Action::Continue,
                });
                break; // the rest are the target's options
            }
            _ => rule.never = true,
        }
        neg = false;
        i += 1;
    }
    rule
}

fn verdict_of(v: &Value) -> Option<Action> {
    let obj = v.as_object()?;
    let (key, val) = obj.iter().next()?;
    let target = || val.get("target").and_then(Value::as_str).map(str::to_owned);
    Some(match key.as_str() {
        "accept" => Action::Accept,
        "drop" | "reject" => Action::Drop,
        "return" => Action::Return,
        "jump" => Action::Jump(target()?),
        "goto" => Action::Goto(target()?),
        _ => return None,
    })
}

/// Port values: a number, `{"range": [a, b]}`, `{"set": [...]}`; `None` for a named set.
fn nft_ports(v: &Value) -> Option<Vec<(u16, u16)>> {
    if let Some(n) = v.as_u64() {
        let n = u16::try_from(n).ok()?;
        return Some(vec![(n, n)]);
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let a = u16::try_from(r.first()?.as_u64()?).ok()?;
        let b = u16::try_from(r.get(1)?.as_u64()?).ok()?;
        return Some(vec![(a, b)]);
    }
    if let Some(set) = v.get("set").and_then(Value::as_array) {
        let mut out = Vec::new();
        for item in set {
            out.extend(nft_ports(item)?);
        }
        return Some(out);
    }
    None
}

/// State names: `"established"`, `["established", "related"]`, `{"set": [...]}`.
fn nft_names(v: &Value) -> Option<Vec<String>> {
    if let Some(s) = v.as_str() {
        return Some(vec![s.to_owned()]);
    }
    let list = v.as_array().or_else(|| v.get("set").and_then(Value::as_array))?;
    list.iter().map(|s| s.as_str().map(str::to_owned)).collect()
}

/// What a match's left-hand side is about.
enum Left {
    Dport(Option<String>),
    Source,
    Ignored,
    Proto,
    NfProto,
    Iif,
    CtState,
    Unknown,
}

fn left_of(v: &Value) -> Left {
    if let Some(p) = v.get("payload") {
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or_default();
        let field = p.get("field").and_then(Value::as_str).unwrap_or_default();
        return match (proto, field) {
            ("tcp" | "udp", "dport") => Left::Dport(Some(proto.to_owned())),
            ("th", "dport") => Left::Dport(None),
            ("ip" | "ip6", "saddr") => Left::Source,
            ("ip" | "ip6", "daddr") => Left::Ignored,
            ("ip", "protocol") | ("ip6", "nexthdr") => Left::Proto,
            _ => Left::Unknown,
        };
    }
    if let Some(m) = v.get("meta") {
        return match m.get("key").and_then(Value::as_str) {
            Some("l4proto") => Left::Proto,
            Some("nfproto") => Left::NfProto,
            Some("iifname" | "iif") => Left::Iif,
            _ => Left::Unknown,
        };
    }
    if v.get("ct").and_then(|c| c.get("key")).and_then(Value::as_str) == Some("state") {
        return Left::CtState;
    }
    Left::Unknown
}

fn nft_rule(exprs: &[Value]) -> Rule {
    let mut rule = Rule { text: nft_text(exprs), ..Rule::default() };
    for e in exprs {
        if let Some(m) = e.get("match") {
            let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
            let neg = match op {
                "==" | "in" => false,
                "!=" => true,
                _ => {
                    rule.never = true;
                    continue;
                }
            };
            let right = m.get("right").unwrap_or(&Value::Null);
            match left_of(m.get("left").unwrap_or(&Value::Null)) {
                Left::Dport(proto) => {
                    if let Some(p) = proto {
                        rule.proto = Some((false, p));
                    }
                    match nft_ports(right) {
                        Some(r) => rule.dports = Some((neg, r)),
                        None => rule.never = true,
                    }
                }
                Left::Source => rule.never |= !neg,
                Left::Ignored => {}
                Left::Proto => match right.as_str() {
                    Some(p) => rule.proto = Some((neg, p.to_owned())),
                    None => rule.never = true,
                },
                Left::NfProto => match right.as_str() {
                    Some("ipv4") if !neg => rule.family = Some(Family::V4),
                    Some("ipv6") if !neg => rule.family = Some(Family::V6),
                    _ => rule.never = true,
                },
                Left::Iif => rule.never |= right.as_str() == Some("lo") && !neg,
                Left::CtState => match nft_names(right) {
                    Some(s) => rule.states = Some((neg, s)),
                    None => rule.never = true,
                },
                Left::Unknown => rule.never = true,
            }
        } else if let Some(vmap) = e.get("vmap") {
            let key = vmap.get("key").unwrap_or(&Value::Null);
            let pairs = vmap.get("data").and_then(|d| d.get("set")).and_then(Value::as_array);
            let pairs: Vec<(&Value, Option<Action>)> = pairs
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p.get(0)?, verdict_of(p.get(1)?))))
                .collect();
            rule.action = match left_of(key) {
                Left::CtState => Some(Action::StateMap(
                    pairs.iter().filter_map(|(k, a)| Some((k.as_str()?.to_owned(), a.clone()?))).collect(),
                )),
                Left::Dport(proto) => {
                    if let Some(p) = proto {
                        rule.proto = Some((false, p));
                    }
                    let mut map = Vec::new();
                    for (k, a) in pairs {
                        if let (Some(ranges), Some(a)) = (nft_ports(k), a) {
                            map.extend(ranges.into_iter().map(|r| (r, a.clone())));
                        }
                    }
                    Some(Action::PortMap(map))
                }
                _ => {
                    rule.never = true;
                    None
                }
            };
        } else if let Some(action) = verdict_of(e) {
            rule.action = Some(action);
        } else if e.get("counter").is_some() || e.get("log").is_some() || e.get("comment").is_some() {
            // neutral statements
        } else {
            rule.never = true; // xt compat matches, limits, quotas, unknown expressions
        }
    }
    rule
}

/// A readable one-line rendering of an nft rule's expressions, for messages.
fn nft_text(exprs: &[Value]) -> String {
    let mut parts = Vec::new();
    for e in exprs {
        if let Some(m) = e.get("match") {
            let left = m.get("left").map(compact).unwrap_or_default();
            let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
            let right = m.get("right").map(compact).unwrap_or_default();
            parts.push(if op == "==" || op == "in" {
                format!("{left} {right}")
            } else {
                format!("{left} {op} {right}")
            });
        } else if let Some((k, _)) = e.as_object().and_then(|o| o.iter().next()) {
            match k.as_str() {
                "counter" => {}
                "jump" | "goto" => parts.push(format!("{k} {}", e[k]["target"].as_str().unwrap_or_default())),
                "vmap" => parts.push(format!("{} vmap {}", compact(&e[k]["key"]), compact(&e[k]["data"]))),
                k => parts.push(k.to_owned()),
            }
        }
    }
    parts.join(" ")
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join(","),
        Value::Object(o) => match o.iter().next() {
            Some((k, inner)) if k == "payload" => format!(
                "{} {}",
                inner["protocol"].as_str().unwrap_or_default(),
                inner["field"].as_str().unwrap_or_default()
            ),
            Some((k, inner)) if k == "meta" || k == "ct" => {
                format!("{k} {}", inner["key"].as_str().unwrap_or_default())
            }
            Some((k, inner)) if k == "set" => format!("{{ {} }}", compact(inner)),
            Some((k, inner)) if k == "range" => {
                format!("{}-{}", compact(&inner[0]), compact(&inner[1]))
            }
            Some((k, inner)) => format!("{k} {}", compact(inner)),
            None => String::new(),
        },
        Value::Null | Value::Bool(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::L4;

    fn pkt(family: Family, port: u16, state: State) -> Packet {
        Packet { family, port: Port { port, proto: L4::Tcp }, state }
    }

    fn new22() -> Packet {
        pkt(Family::V4, 22, State::New)
    }

    fn est22() -> Packet {
        pkt(Family::V4, 22, State::Established)
    }

    /// The seed article's base policy, as `iptables-save` prints it, plus noise.
    pub(crate) const SEED_SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 22 -j DROP
COMMIT
*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:knock - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 198.18.0.9/32 -p tcp -m tcp --dport 22 -m comment --comment \"a \\\"grant\\\"\" -j ACCEPT
-A INPUT -m recent --name x --rcheck -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -j knock
-A INPUT -p tcp -m tcp --dport 22 -j DROP
-A knock -p udp -j LOG --log-prefix \"knock \"
-A knock -p tcp -m multiport --dports 80,443 -j RETURN
COMMIT
";

    #[test]
    fn iptables_save_base_policy() {
        let mut r = Ruleset::default();
        r.add_iptables_save(Family::V4, SEED_SAVE);
        assert_eq!(r.tables.len(), 1, "only the filter table");
        let t = &r.tables[0];
        assert!(matches!(r.verdict(&new22()), Verdict::Drop(w) if w.contains("--dport 22 -j DROP")));
        assert!(matches!(r.verdict(&est22()), Verdict::Accept(w) if w.contains("ESTABLISHED")));
        assert!(
            matches!(r.verdict(&pkt(Family::V4, 80, State::New)), Verdict::Accept(w) if w.contains("policy"))
        );
        assert_eq!(r.verdict(&pkt(Family::V6, 22, State::New)), Verdict::None, "no IPv6 table");
        // The first 4 rules (before the jump and the DROP) decide nothing for a new SYN.
        assert_eq!(t.walk("INPUT", &new22(), Some(4)), Verdict::None);
        assert!(matches!(t.walk("INPUT", &new22(), Some(6)), Verdict::Drop(_)));
        assert!(t.describe("INPUT").contains("iptables' filter table"));
    }

    #[test]
    fn iptables_policy_drop_and_user_chains() {
        let save = "*filter\n:INPUT DROP [0:0]\n:guard - [0:0]\n-A INPUT -p tcp -m multiport --dports 20:25,80 -j guard\n\
                    -A guard -m state --state NEW -j REJECT --reject-with tcp-reset\n-A guard -j ACCEPT\nCOMMIT\n";
        let mut r = Ruleset::default();
        r.add_iptables_save(Family::V6, save);
        let p = |port, state| pkt(Family::V6, port, state);
        assert!(
            matches!(r.verdict(&p(22, State::New)), Verdict::Drop(w) if w.contains("REJECT") && w.contains("chain guard"))
        );
        assert!(matches!(r.verdict(&p(22, State::Established)), Verdict::Accept(_)));
        assert!(
            matches!(r.verdict(&p(443, State::Established)), Verdict::Drop(w) if w.contains("DROP policy"))
        );
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! -p udp ! --syn --dport 22 -j DROP\nCOMMIT\n";
        let mut r = Ruleset::default();
        r.add_iptables_save(Family::V4, save);
        assert!(matches!(r.verdict(&new22()), Verdict::Accept(_)), "! --syn: not for a SYN");
        assert!(matches!(r.verdict(&est22()), Verdict::Drop(_)));
    }

    const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "ip", "name": "filter", "handle": 2}},
 {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"xt": {"type": "match", "name": "conntrack"}}, {"accept": null}]}},
 {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"drop": null}]}},
 {"table": {"family": "inet", "name": "filter", "handle": 1}},
 {"set": {"family": "inet", "name": "allowed", "table": "filter", "type": "ipv4_addr", "handle": 3}},
 {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
 {"chain": {"family": "inet", "table": "filter", "name": "foo", "handle": 2}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 7, "expr": [{"vmap": {"key": {"ct": {"key": "state"}}, "data": {"set": [["invalid", {"drop": null}], ["established", {"accept": null}]]}}}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@allowed"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 11, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, {"range": [2000, 3000]}]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"jump": {"target": "foo"}}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "foo", "handle": 14, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new", "untracked"]}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}}
]}"#;

    #[test]
    fn nft_json_rules_sets_maps_and_jumps() {
        let mut r = Ruleset::default();
        r.add_nft_json(NFT, true).unwrap();
        assert_eq!(r.tables.len(), 1, "iptables-nft's ip filter is skipped");
        assert!(
            matches!(r.verdict(&new22()), Verdict::Drop(w) if w.contains("reject") && w.contains("chain foo"))
        );
        assert!(matches!(r.verdict(&pkt(Family::V6, 22, State::New)), Verdict::Drop(_)), "inet covers IPv6");
        assert!(matches!(r.verdict(&est22()), Verdict::Accept(w) if w.contains("vmap")));
        assert!(
            matches!(r.verdict(&pkt(Family::V4, 2500, State::New)), Verdict::Drop(w) if w.contains("2000-3000"))
        );
        assert!(
            matches!(r.verdict(&pkt(Family::V4, 443, State::New)), Verdict::Accept(w) if w.contains("policy"))
        );
        // Without skipping, the ip filter table counts too (its xt rule never matches).
        let mut r = Ruleset::default();
        r.add_nft_json(NFT, false).unwrap();
        assert_eq!(r.tables.len(), 2);
        assert!(r.filters(Family::V4) && r.filters(Family::V6));
        assert!(Ruleset::default().add_nft_json("{", true).is_err());
        assert!(Ruleset::default().add_nft_json("{}", true).is_err());
    }

    #[test]
    fn tokenizer_keeps_quoted_comments_whole() {
        assert_eq!(
            tokenize(r#"INPUT -m comment --comment "a \"b\" c" -j ACCEPT"#),
            ["INPUT", "-m", "comment", "--comment", "a \"b\" c", "-j", "ACCEPT"]
        );
    }
}
