//! `sesame check`'s lockout and exposure warnings.
//!
//! [`lint`] reads a validated [`Config`] alone: weak sequences, timeouts, commands that
//! open for ever or add their rule where it never matches. [`firewall`] compares the
//! doors with the live ruleset of the current network namespace (`--firewall`).
//! Each [`Warning`] names the file and the line of the door or key it is about, says
//! why it matters and how to fix it.

pub mod commands;
pub mod firewall;
pub mod ruleset;

use crate::config::{Config, Door};
use sesame_capture::Proto;
use std::fmt;
use std::path::PathBuf;

/// Shortest `seq_timeout` that real networks allow for, seconds: a knock client that
/// waits between hits, a retransmitted SYN (1 s) or a slow mobile link need that much.
pub const MIN_SEQ_TIMEOUT: u32 = 5;

/// Longest `seq_timeout` before a brute force is easy, seconds.
///
/// The rule: ports that belong to no door never reset an attempt, so an attacker who
/// sends a SYN to every one of the 65,536 ports in a random order completes a sequence
/// of k distinct ports whenever those k come out in the right order, that is once in k!
/// sweeps (once in 6 for three knocks), provided a sweep fits in `seq_timeout`. At 60 s
/// a sweep needs about 1,100 SYNs per second (some 70 kB/s, any home line); beyond
/// that it needs less, so anything longer is refused as "easy to brute force".
pub const MAX_SEQ_TIMEOUT: u32 = 60;

/// Fewest knocks a sequence should have.
pub const MIN_KNOCKS: usize = 3;

/// knockd's example sequences (its default knockd.conf and its man page): the first
/// ones anybody tries.
pub const WELL_KNOWN_SEQUENCES: [&[u16]; 3] = [&[7000, 8000, 9000], &[9000, 8000, 7000], &[2222, 3333, 4444]];

/// Ports of common services: knocks there reach a real service (or a scanner's probe
/// of it), so they are neither secret nor quiet.
pub const SERVICE_PORTS: [(u16, &str); 29] = [
    (20, "ftp-data"),
    (21, "ftp"),
    (22, "ssh"),
    (23, "telnet"),
    (25, "smtp"),
    (53, "dns"),
    (80, "http"),
    (110, "pop3"),
    (111, "rpcbind"),
    (123, "ntp"),
    (135, "msrpc"),
    (139, "netbios"),
    (143, "imap"),
    (161, "snmp"),
    (443, "https"),
    (445, "smb"),
    (465, "smtps"),
    (587, "submission"),
    (993, "imaps"),
    (995, "pop3s"),
    (1433, "mssql"),
    (1723, "pptp"),
    (3306, "mysql"),
    (3389, "rdp"),
    (5432, "postgresql"),
    (5900, "vnc"),
    (6379, "redis"),
    (8080, "http-alt"),
    (8443, "https-alt"),
];

/// What a warning is about (for tests and for tools that filter them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// knockd's example sequence (7000,8000,9000 or its reverse, ...).
    WellKnownSequence,
    /// Strictly rising or falling ports: a scan in port order completes it.
    Monotonic,
    /// Fewer than [`MIN_KNOCKS`] knocks.
    FewKnocks,
    /// A knock on a common service's port.
    ServicePort,
    /// The same knock twice in a row.
    RepeatedKnock,
    /// `seq_timeout` under [`MIN_SEQ_TIMEOUT`].
    ShortTimeout,
    /// `seq_timeout` over [`MAX_SEQ_TIMEOUT`].
    LongTimeout,
    /// A start command with no stop command: open for ever.
    OpenForever,
    /// `iptables -A ... -j ACCEPT`: appended after the DROP, never matches.
    AppendAccept,
    /// `--firewall`: nothing in the ruleset drops new connections to the protected port.
    NotClosed,
    /// `--firewall`: established connections to the protected port are dropped.
    EstablishedDropped,
    /// `--firewall`: the start command's rule lands after a DROP for its port.
    StartAfterDrop,
}

/// One warning: where, what, why and the fix, in `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    /// 1-based line of the door or key the warning is about.
    pub line: usize,
    pub kind: Kind,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}:{}: {}", self.file.display(), self.line, self.message)
    }
}

pub(crate) fn warning(config: &Config, line: usize, kind: Kind, door: &Door, text: String) -> Warning {
    Warning { file: config.source.clone(), line, kind, message: format!("door '{}': {text}", door.name) }
}

/// Every static warning for `config`, door by door in file order.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    for door in &config.doors {
        sequence_warnings(config, door, &mut out);
        timeout_warnings(config, door, &mut out);
        command_warnings(config, door, &mut out);
    }
    out
}

fn sequence_text(door: &Door) -> String {
    door.sequence.iter().map(|s| s.port.to_string()).collect::<Vec<_>>().join(",")
}

fn sequence_warnings(config: &Config, door: &Door, out: &mut Vec<Warning>) {
    let seq = &door.sequence;
    if seq.is_empty() {
        return; // a one-time door with no sequence left is disabled
    }
    let line = door.lines.or_door(door.lines.sequence);
    let ports: Vec<u16> = seq.iter().map(|s| s.port).collect();
    let text = sequence_text(door);
    let mut warn = |kind, message: String| out.push(warning(config, line, kind, door, message));
    if WELL_KNOWN_SEQUENCES.contains(&ports.as_slice()) {
        warn(
            Kind::WellKnownSequence,
            format!(
                "sequence {text} is an example from knockd's documentation and default knockd.conf, \
                 the first sequence anyone tries; fix: choose your own ports"
            ),
        );
    }
    let rising = ports.windows(2).all(|w| w[0] < w[1]);
    let falling = ports.windows(2).all(|w| w[0] > w[1]);
    // Two knocks always rise or fall: FewKnocks says what matters then.
    if ports.len() >= MIN_KNOCKS && (rising || falling) {
        let how = if rising { "rising" } else { "falling" };
        warn(
            Kind::Monotonic,
            format!(
                "sequence {text} is in {how} port order, so a port scan in that order (nmap -r, or any \
                 sequential scanner) completes it: ports in no door do not reset an attempt; fix: knock \
                 the ports out of order, e.g. {}",
                shuffled(&ports)
            ),
        );
    }
    if seq.len() < MIN_KNOCKS {
        let n = seq.len();
        let s = if n == 1 { "" } else { "s" };
        warn(
            Kind::FewKnocks,
            format!(
                "sequence {text} has {n} knock{s}: a scan of every port in a random order completes it \
                 {}; fix: use at least {MIN_KNOCKS} knocks (4 or more is better)",
                if n == 1 { "every time" } else { "every other time" }
            ),
        );
    }
    let services: Vec<String> = seq
        .iter()
        .filter_map(|s| SERVICE_PORTS.iter().find(|(p, _)| *p == s.port).map(|(p, n)| format!("{p} ({n})")))
        .collect();
    if !services.is_empty() {
        warn(
            Kind::ServicePort,
            format!(
                "sequence {text} knocks on {}, the port{} of a common service: every scanner and client \
                 of that service sends packets there, which reset and advance attempts, and the knock is \
                 no secret; fix: use unused high ports (1024-65535) instead",
                services.join(", "),
                if services.len() == 1 { "" } else { "s" }
            ),
        );
    }
    if let Some(w) = seq.windows(2).find(|w| w[0] == w[1]) {
        warn(
            Kind::RepeatedKnock,
            format!(
                "sequence {text} knocks {} twice in a row: a retransmitted SYN (TCP resends an unanswered \
                 one after 1 s) or a duplicated packet counts as the second knock, and the repeat adds no \
                 secret; fix: use a different port for each knock",
                step_name(w[0].port, w[0].proto)
            ),
        );
    }
}

fn step_name(port: u16, proto: Proto) -> String {
    format!("{port}:{}", proto.name())
}

/// `ports` reordered so that the direction changes at every step: lowest, highest,
/// second lowest, second highest, ... (7000,9000,8000 for three), which no scan in
/// either port order completes.
fn shuffled(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let mut order: Vec<u16> = Vec::with_capacity(sorted.len());
    let (mut lo, mut hi) = (0usize, sorted.len());
    let mut take_low = true;
    while lo < hi {
        // Alternate ends; for three ports that is a, c, b: up, then down.
        if take_low {
            order.push(sorted[lo]);
            lo += 1;
        } else {
            hi -= 1;
            order.push(sorted[hi]);
        }
        take_low = !take_low;
    }
    order.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn timeout_warnings(config: &Config, door: &Door, out: &mut Vec<Warning>) {
    let line = door.lines.or_door(door.lines.seq_timeout);
    let t = door.seq_timeout;
    if t < MIN_SEQ_TIMEOUT {
        out.push(warning(
            config,
            line,
            Kind::ShortTimeout,
            door,
            format!(
                "seq_timeout {t} s is under {MIN_SEQ_TIMEOUT} s: on a real network (a knock client's \
                 delay, a retransmitted SYN after 1 s, a mobile link) the sequence often fails, and the \
                 operator is locked out; fix: seq_timeout = {MIN_SEQ_TIMEOUT} to 15"
            ),
        ));
    } else if t > MAX_SEQ_TIMEOUT {
        let rate = 65_536 / u64::from(t);
        out.push(warning(
            config,
            line,
            Kind::LongTimeout,
            door,
            format!(
                "seq_timeout {t} s is over {MAX_SEQ_TIMEOUT} s: a sweep of all 65536 ports in random \
                 order fits in it at only {rate} SYNs/s, and ports in no door never reset an attempt, so \
                 one sweep in k! (k = the number of knocks) completes the sequence: easy to brute force; \
                 fix: seq_timeout = 15 (at most {MAX_SEQ_TIMEOUT})"
            ),
        ));
    }
}

fn command_warnings(config: &Config, door: &Door, out: &mut Vec<Warning>) {
    let l = &door.lines;
    let non_empty = |c: &Option<String>| c.as_deref().filter(|c| !c.trim().is_empty()).map(str::to_owned);
    // (start, its line, the stop command that follows it, the stop key's name)
    let v4 = non_empty(&door.start_command)
        .map(|c| (c, l.start_command, non_empty(&door.stop_command), "stop_command"));
    let v6 = non_empty(&door.start_command_6).map(|c| {
        let stop = non_empty(&door.stop_command_6).or_else(|| non_empty(&door.stop_command));
        (c, l.start_command_6, stop, "stop_command_6")
    });
    for (start, line, stop, stop_key) in v4.into_iter().chain(v6) {
        let line = l.or_door(line);
        if stop.is_none() && !commands::closes(&start) {
            let fix = match commands::stop_for(&start) {
                Some(stop) => format!("{stop_key} = {stop} (and cmd_timeout = 30)"),
                None => format!("a {stop_key} that undoes it (and cmd_timeout = 30)"),
            };
            out.push(warning(
                config,
                line,
                Kind::OpenForever,
                door,
                format!(
                    "start command '{start}' has no stop command, so what it opens stays open for ever \
                     (knockd runs the stop command cmd_timeout seconds after the start command; a door that \
                     closes on another knock, like closeSSH, only closes if someone knocks it); fix: add \
                     {fix}"
                ),
            ));
        }
        for append in commands::appended_accepts(&start) {
            out.push(warning(
                config,
                line,
                Kind::AppendAccept,
                door,
                format!(
                    "start command '{start}' appends its ACCEPT rule with {} -A {}: it lands after any \
                     DROP for the port already in the chain (the usual base policy) and never matches, so the knock opens nothing; fix: insert \
                     it at the top instead: {}",
                    append.program, append.chain, append.fixed
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::knockd;
    use std::path::Path;

    fn kinds(text: &str) -> Vec<(usize, Kind)> {
        let config = knockd::parse(Path::new("k.conf"), text).unwrap();
        lint(&config).into_iter().map(|w| (w.line, w.kind)).collect()
    }

    /// A door with nothing to warn about, but `key = value` on line 3 (after the header
    /// and the sequence lines).
    fn door_with(line: &str) -> String {
        format!(
            "[d]\nsequence = 31337,6111,40001\n{line}\nseq_timeout = 10\ncommand = /usr/sbin/iptables -I \
             INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\nstop_command = /usr/sbin/iptables -D INPUT -s %IP% \
             -p tcp --dport 22 -j ACCEPT\n"
        )
    }

    #[test]
    fn a_good_door_has_no_warning() {
        assert_eq!(kinds(&door_with("tcpflags = syn")), []);
    }

    #[test]
    fn debian_default_warns_about_its_sequence_append_and_open_for_ever() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/debian.conf"))
                .unwrap();
        let k = kinds(&text);
        for want in [
            (5, Kind::WellKnownSequence),
            (5, Kind::Monotonic),
            (7, Kind::AppendAccept),
            (7, Kind::OpenForever),
            (11, Kind::WellKnownSequence),
            (11, Kind::Monotonic),
        ] {
            assert!(k.contains(&want), "{want:?} missing in {k:?}");
        }
        // closeSSH deletes: it opens nothing, so it is not "open for ever".
        assert!(!k.contains(&(13, Kind::OpenForever)), "{k:?}");
    }

    #[test]
    fn sequence_warnings_one_by_one() {
        let seq = |s: &str| kinds(&door_with("tcpflags = syn").replace("31337,6111,40001", s));
        assert_eq!(seq("9000,8000,7000"), [(2, Kind::WellKnownSequence), (2, Kind::Monotonic)]);
        assert_eq!(seq("1000,2000,3000,4000"), [(2, Kind::Monotonic)]);
        assert_eq!(seq("4000,3000,2000,1000"), [(2, Kind::Monotonic)]);
        assert_eq!(seq("5000,1000,3000,1000"), [], "only strictly monotonic sequences are");
        assert_eq!(seq("40001,6111"), [(2, Kind::FewKnocks)]);
        assert_eq!(seq("40001"), [(2, Kind::FewKnocks)]);
        assert_eq!(seq("40001,22,6111"), [(2, Kind::ServicePort)]);
        assert_eq!(seq("40001,3389,6111"), [(2, Kind::ServicePort)]);
        assert_eq!(seq("40001,6111,6111,50000"), [(2, Kind::RepeatedKnock)]);
        assert_eq!(seq("40001,6111:udp,6111,50000"), [], "a different protocol is another knock");
        assert_eq!(seq("40001,6111,40001"), [], "the same port, but not in a row");
    }

    #[test]
    fn timeout_bounds() {
        let t = |v: u32| {
            kinds(&door_with("tcpflags = syn").replace("seq_timeout = 10", &format!("seq_timeout = {v}")))
        };
        assert_eq!(t(4), [(4, Kind::ShortTimeout)]);
        assert_eq!(t(0), [(4, Kind::ShortTimeout)]);
        assert_eq!(t(5), []);
        assert_eq!(t(60), []);
        assert_eq!(t(61), [(4, Kind::LongTimeout)]);
        // knockd's default (25 s) is within bounds.
        assert_eq!(kinds(&door_with("").replace("seq_timeout = 10", "")), []);
    }

    #[test]
    fn open_for_ever_and_append_accept() {
        let text = "[a]\nsequence = 31337,6111,40001\ncommand = /sbin/iptables -A INPUT -s %IP% -p tcp \
                    --dport 22 -j ACCEPT\n";
        let config = knockd::parse(Path::new("k.conf"), text).unwrap();
        let w = lint(&config);
        assert_eq!(
            w.iter().map(|w| (w.line, w.kind)).collect::<Vec<_>>(),
            [(3, Kind::OpenForever), (3, Kind::AppendAccept)]
        );
        let forever = w[0].to_string();
        assert!(
            forever.starts_with("warning: k.conf:3: door 'a': start command '/sbin/iptables -A"),
            "{forever}"
        );
        assert!(
            forever.contains("stop_command = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"),
            "{forever}"
        );
        let append = w[1].to_string();
        assert!(append.contains("/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"), "{append}");
        // A stop command, or a command that only deletes, is not open for ever; an IPv6
        // start falls back to the IPv4 stop command.
        assert_eq!(kinds("[a]\nsequence = 31337,6111,40001\ncommand = x %IP%\nstop_command = y %IP%\n"), []);
        assert_eq!(kinds("[a]\nsequence = 31337,6111,40001\ncommand = ufw delete allow from %IP%\n"), []);
        assert_eq!(kinds("[a]\nsequence = 31337,6111,40001\nstart_command_6 = x\nstop_command = y\n"), []);
        assert_eq!(
            kinds("[a]\nsequence = 31337,6111,40001\nstart_command_6 = ip6tables --append INPUT -j ACCEPT\n"),
            [(3, Kind::OpenForever), (3, Kind::AppendAccept)]
        );
        // -A with another target (a LOG rule) is fine.
        assert_eq!(
            kinds("[a]\nsequence = 31337,6111,40001\ncommand = iptables -A INPUT -s %IP% -j LOG\nstop_command = y\n"),
            []
        );
    }

    #[test]
    fn toml_doors_warn_at_their_lines() {
        let text = "[[door]]\nname = \"ssh\"\nsequence = [7000, 8000, 9000]\nseq_timeout = 2\n\n\
                    start_command = \"iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\"\n";
        let config = crate::config::native::parse(Path::new("s.toml"), text).unwrap();
        let got: Vec<_> = lint(&config).into_iter().map(|w| (w.line, w.kind)).collect();
        assert_eq!(
            got,
            [
                (3, Kind::WellKnownSequence),
                (3, Kind::Monotonic),
                (4, Kind::ShortTimeout),
                (6, Kind::OpenForever),
                (6, Kind::AppendAccept)
            ]
        );
    }

    #[test]
    fn shuffled_is_never_monotonic() {
        assert_eq!(shuffled(&[7000, 8000, 9000]), "7000,9000,8000");
        assert_eq!(shuffled(&[4, 3, 2, 1]), "1,4,2,3");
    }
}
