//! knockd.conf syntax, as knockd 0.8 reads it, with the validation knockd lacks.
//!
//! knockd uses `atoi` for ports and timeouts and ignores what it cannot read; here every
//! value is checked and an error names the file, the 1-based line and the value.

use super::{
    onetime, parse_sequence, Config, ConfigError, Door, OneTimeSequences, Options, Problem, TcpFlagRule,
};
use sesame_capture::frame::tcp_flags;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// TCP flag names in bit order, as written in `TCPFlags` (and in the native syntax).
pub(crate) const FLAG_NAMES: [(&str, u8); 6] = [
    ("fin", tcp_flags::FIN),
    ("syn", tcp_flags::SYN),
    ("rst", tcp_flags::RST),
    ("psh", tcp_flags::PSH),
    ("ack", tcp_flags::ACK),
    ("urg", tcp_flags::URG),
];

/// Parses knockd.conf `text`, read from `path` (used in errors and as `Config::source`).
///
/// Doors with `One_Time_Sequences` read that file now, for their current sequence.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut parser = Parser { file: path, options: Options::default(), doors: Vec::new(), section: None };
    for (index, raw) in text.lines().enumerate() {
        parser.line(index + 1, raw.trim())?;
    }
    parser.finish_door()?;
    super::check_door_count(path, &parser.doors)?;
    Ok(Config {
        source: path.to_owned(),
        options: parser.options,
        doors: parser.doors,
        tuning: Default::default(),
        firewall: Default::default(),
        metrics: Default::default(),
    })
}

/// Parses a `TCPFlags` value: `f,!g,...` (`|` also separates), names case-insensitive.
pub(crate) fn parse_flags<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<TcpFlagRule, Problem> {
    let mut rule = TcpFlagRule::default();
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        let (clear, name) = match item.strip_prefix('!') {
            Some(name) => (true, name.trim()),
            None => (false, item),
        };
        let (canonical, bit) = FLAG_NAMES
            .iter()
            .copied()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| Problem::BadFlag(item.to_owned()))?;
        let (this, other) = if clear { (&mut rule.clear, rule.set) } else { (&mut rule.set, rule.clear) };
        if other & bit != 0 {
            return Err(Problem::ContradictoryFlag(canonical.to_owned()));
        }
        *this |= bit;
    }
    Ok(rule)
}

/// Parses a timeout in whole seconds; `key` is named in the error as the user wrote it.
pub(crate) fn parse_seconds(key: &str, value: &str) -> Result<u32, Problem> {
    let bad = || Problem::BadNumber { key: key.to_owned(), value: value.to_owned() };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

pub(crate) fn parse_target(value: &str) -> Result<IpAddr, Problem> {
    value.parse().map_err(|_| Problem::BadAddress(value.to_owned()))
}

struct Parser<'a> {
    file: &'a Path,
    options: Options,
    doors: Vec<Door>,
    section: Option<Section>,
}

enum Section {
    Options,
    Door(Box<Draft>),
}

/// A door being read, with the lines its checks at the end of the section report.
struct Draft {
    door: Door,
    header_line: usize,
    sequence_line: Option<usize>,
    one_time: Option<(PathBuf, usize)>,
    /// sesame-only: `Sequence_Secret_File` and the keys that go with it.
    rotation: super::rotation::RotationKeys,
    /// The line of the last sesame-only `Open`/`Backend` key, for their errors.
    firewall_line: Option<usize>,
    /// The first `SPA_*` key's line.
    spa_line: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    UseSyslog,
    LogFile,
    PidFile,
    Interface,
    Sequence,
    OneTimeSequences,
    SeqTimeout,
    TcpFlags,
    StartCommand,
    StartCommand6,
    StopCommand,
    StopCommand6,
    CmdTimeout,
    Target,
    Open,
    Backend,
    Spa(&'static str),
    Rotation(super::rotation::RotationKey),
}

impl Key {
    fn of(upper: &str) -> Option<Key> {
        Some(match upper {
            "USESYSLOG" => Key::UseSyslog,
            "LOGFILE" => Key::LogFile,
            "PIDFILE" => Key::PidFile,
            "INTERFACE" => Key::Interface,
            "SEQUENCE" => Key::Sequence,
            "ONE_TIME_SEQUENCES" => Key::OneTimeSequences,
            "SEQ_TIMEOUT" | "TIMEOUT" => Key::SeqTimeout,
            "TCPFLAGS" => Key::TcpFlags,
            "START_COMMAND" | "COMMAND" => Key::StartCommand,
            "START_COMMAND_6" | "COMMAND_6" => Key::StartCommand6,
            "STOP_COMMAND" => Key::StopCommand,
            "STOP_COMMAND_6" => Key::StopCommand6,
            "CMD_TIMEOUT" => Key::CmdTimeout,
            "TARGET" => Key::Target,
            // sesame-only.
            "OPEN" => Key::Open,
            "BACKEND" => Key::Backend,
            "SPA_KEYS" => Key::Spa("keys"),
            "SPA_PORT" => Key::Spa("port"),
            "SPA_MAX_AGE" => Key::Spa("max_age"),
            "SPA_ALLOW_OTHER_ADDRESS" => Key::Spa("allow_other_address"),
            _ => Key::Rotation(super::rotation::RotationKey::of(upper)?),
        })
    }

    fn in_options(self) -> bool {
        matches!(self, Key::UseSyslog | Key::LogFile | Key::PidFile | Key::Interface)
    }
}

impl Parser<'_> {
    fn error(&self, line: usize, problem: Problem) -> ConfigError {
        ConfigError { file: self.file.to_owned(), line, problem }
    }

    fn line(&mut self, n: usize, line: &str) -> Result<(), ConfigError> {
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        if line.starts_with('[') {
            return self.header(n, line);
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        if key.is_empty() {
            return Err(self.error(n, Problem::Syntax(format!("missing key before '=' in '{line}'"))));
        }
        let section_name = match &self.section {
            None => return Err(self.error(n, Problem::KeyOutsideSection(key.to_owned()))),
            Some(Section::Options) => "options".to_owned(),
            Some(Section::Door(d)) => d.door.name.clone(),
        };
        let unknown = || Problem::UnknownKey { key: key.to_owned(), section: section_name.clone() };
        let Some(known) = Key::of(&key.to_ascii_uppercase()) else {
            return Err(self.error(n, unknown()));
        };
        let Some(value) = value else {
            // knockd accepts a bare UseSyslog in any section; it is always global.
            if known == Key::UseSyslog {
                self.options.use_syslog = true;
                return Ok(());
            }
            let in_section = known.in_options() == matches!(self.section, Some(Section::Options));
            let problem = if in_section { Problem::MissingValue { key: key.to_owned() } } else { unknown() };
            return Err(self.error(n, problem));
        };
        if known == Key::UseSyslog {
            let problem = Problem::Syntax(format!("'{key}' takes no value: write it alone, not '{line}'"));
            return Err(self.error(n, problem));
        }
        let result = match self.section.as_mut() {
            Some(Section::Options) if known.in_options() => Self::option(&mut self.options, known, value),
            Some(Section::Door(draft)) if !known.in_options() => Self::door_key(draft, n, known, key, value),
            _ => Err(unknown()),
        };
        result.map_err(|p| self.error(n, p))
    }

    fn header(&mut self, n: usize, line: &str) -> Result<(), ConfigError> {
        let name = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')).ok_or_else(|| {
            self.error(n, Problem::Syntax(format!("section header '{line}' does not end with ']'")))
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(self.error(n, Problem::Syntax(format!("empty section name '{line}'"))));
        }
        self.finish_door()?;
        self.section = Some(if name == "options" {
            Section::Options
        } else {
            let mut door = Door::new(name, Vec::new());
            door.lines.door = n;
            Section::Door(Box::new(Draft {
                door,
                header_line: n,
                sequence_line: None,
                one_time: None,
                rotation: Default::default(),
                firewall_line: None,
                spa_line: None,
            }))
        });
        Ok(())
    }

    fn option(options: &mut Options, key: Key, value: &str) -> Result<(), Problem> {
        let path = (!value.is_empty()).then(|| PathBuf::from(value));
        match key {
            Key::LogFile => options.log_file = path,
            Key::PidFile => options.pid_file = path,
            // sesame: several interfaces, comma-separated (`eth0, wg0`).
            Key::Interface => options.interfaces = super::parse_interfaces(value.split(','))?,
            _ => unreachable!("not an [options] key"),
        }
        Ok(())
    }

    fn door_key(draft: &mut Draft, n: usize, key: Key, written: &str, value: &str) -> Result<(), Problem> {
        let door = &mut draft.door;
        let lines = &mut door.lines;
        match key {
            Key::Sequence => {
                door.sequence = parse_sequence(value)?;
                draft.sequence_line = Some(n);
                lines.sequence = n;
            }
            Key::OneTimeSequences => draft.one_time = Some((PathBuf::from(value), n)),
            Key::SeqTimeout => {
                door.seq_timeout = parse_seconds(written, value)?;
                lines.seq_timeout = n;
            }
            Key::CmdTimeout => {
                door.cmd_timeout = parse_seconds(written, value)?;
                lines.cmd_timeout = n;
            }
            Key::TcpFlags => door.tcp_flags = parse_flags(value.split([',', '|']))?,
            Key::StartCommand => {
                door.start_command = Some(value.to_owned());
                lines.start_command = n;
            }
            Key::StartCommand6 => {
                door.start_command_6 = Some(value.to_owned());
                lines.start_command_6 = n;
            }
            Key::StopCommand => {
                door.stop_command = Some(value.to_owned());
                lines.stop_command = n;
            }
            Key::StopCommand6 => {
                door.stop_command_6 = Some(value.to_owned());
                lines.stop_command_6 = n;
            }
            Key::Target => door.target = Some(parse_target(value)?),
            Key::Open => {
                door.open = super::parse_open(value.split(','))?;
                draft.firewall_line = Some(n);
                lines.open = n;
            }
            Key::Backend => {
                door.backend = Some(super::BackendKind::parse(value)?);
                draft.firewall_line = Some(n);
            }
            Key::Spa(name) => {
                super::spa_door::set(door, name, value)?;
                draft.spa_line.get_or_insert(n);
            }
            Key::Rotation(key) => draft.rotation.set(key, value, n)?,
            Key::UseSyslog | Key::LogFile | Key::PidFile | Key::Interface => {
                unreachable!("not a door key")
            }
        }
        Ok(())
    }

    /// Closes the current door section: resolves its one-time file and checks that it
    /// has a sequence (errors go to the line that set it, or to the `[name]` header).
    fn finish_door(&mut self) -> Result<(), ConfigError> {
        let Some(Section::Door(draft)) = self.section.take() else {
            return Ok(());
        };
        let mut door = draft.door;
        if let Some(line) = draft.rotation.line {
            let other = draft.one_time.is_some() || !door.sequence.is_empty();
            draft.rotation.finish(&mut door, other).map_err(|p| self.error(line, p))?;
            door.lines.sequence = line;
        }
        if let Some((path, line)) = draft.one_time {
            door.sequence = onetime::initial_sequence(&path).map_err(|p| self.error(line, p))?;
            door.one_time = Some(OneTimeSequences { path });
            door.lines.sequence = line;
        } else if door.sequence.is_empty() && door.spa.is_none() && door.rotating.is_none() {
            let line = draft.sequence_line.unwrap_or(draft.header_line);
            return Err(self.error(line, Problem::EmptySequence(door.name)));
        }
        door.check_backend().map_err(|p| self.error(draft.firewall_line.unwrap_or(draft.header_line), p))?;
        super::spa_door::finish(&mut door)
            .map_err(|p| self.error(draft.spa_line.unwrap_or(draft.header_line), p))?;
        self.doors.push(door);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_capture::Proto;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.conf"), text)
    }

    fn problem(text: &str) -> (usize, Problem) {
        let e = parse_str(text).unwrap_err();
        (e.line, e.problem)
    }

    /// The door table numbers doors with 16 bits: one door more was a panic in
    /// `Doors::new` (found while writing the config fuzz targets; 65,536 doors take
    /// about 1 MB, beyond the fuzzer's input sizes).
    #[test]
    fn too_many_doors_is_an_error_at_the_first_door_too_many() {
        let door = |i: usize| format!("[d{i}]\nsequence = 1\n");
        let mut text: String = (0..crate::config::MAX_DOORS).map(door).collect();
        assert_eq!(parse_str(&text).unwrap().doors.len(), 65_535);
        text.push_str(&door(65_535));
        let e = parse_str(&text).unwrap_err();
        assert_eq!((e.line, &e.problem), (131_071, &Problem::TooManyDoors("d65535".into())));
        assert_eq!(
            e.to_string(),
            "test.conf:131071: door 'd65535' is one door too many: at most 65535 are allowed"
        );
    }

    #[test]
    fn flags_parse_with_either_separator() {
        let rule = parse_flags("SYN|!ack, urg".split([',', '|'])).unwrap();
        assert_eq!(rule.set, tcp_flags::SYN | tcp_flags::URG);
        assert_eq!(rule.clear, tcp_flags::ACK);
        assert_eq!(parse_flags(["syn", "!syn"]), Err(Problem::ContradictoryFlag("syn".into())));
        assert_eq!(parse_flags(["!FIN", "fin"]), Err(Problem::ContradictoryFlag("fin".into())));
        assert_eq!(parse_flags(["syn", "foo"]), Err(Problem::BadFlag("foo".into())));
        assert_eq!(parse_flags(["!"]), Err(Problem::BadFlag("!".into())));
    }

    #[test]
    fn seconds_must_be_whole_and_in_range() {
        assert_eq!(parse_seconds("t", "0"), Ok(0));
        assert_eq!(parse_seconds("t", "4294967295"), Ok(u32::MAX));
        for bad in ["", "-1", "+5", "5s", "1.5", "4294967296", " 5"] {
            assert_eq!(
                parse_seconds("t", bad),
                Err(Problem::BadNumber { key: "t".into(), value: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bare_usesyslog_counts_in_a_door_too() {
        let c = parse_str("[d]\nsequence = 1\nUseSyslog\n").unwrap();
        assert!(c.options.use_syslog);
    }

    #[test]
    fn usesyslog_with_a_value_is_rejected() {
        let (line, p) = problem("[options]\nUseSyslog = yes\n");
        assert_eq!(line, 2);
        assert!(matches!(p, Problem::Syntax(m) if m.contains("UseSyslog = yes")));
    }

    #[test]
    fn known_key_without_value() {
        assert_eq!(problem("[d]\nsequence\n"), (2, Problem::MissingValue { key: "sequence".into() }));
        assert_eq!(
            problem("[options]\nsequence\n"),
            (2, Problem::UnknownKey { key: "sequence".into(), section: "options".into() })
        );
    }

    #[test]
    fn headers() {
        assert!(matches!(problem("[open\n"), (1, Problem::Syntax(_))));
        assert!(matches!(problem("# c\n[ ]\n"), (2, Problem::Syntax(_))));
        assert!(matches!(problem("= 5\n"), (1, Problem::Syntax(_))));
        let c = parse_str("[ spaced name ]\nsequence=1\n[options]\ninterface = wlan0\n").unwrap();
        assert_eq!(c.doors[0].name, "spaced name");
        assert_eq!(c.options.interfaces, ["wlan0"]);
    }

    #[test]
    fn open_and_backend_are_sesame_only_door_keys() {
        let c = parse_str("[ssh]\nsequence = 1,2,3\nOpen = 22/tcp, 53/udp\nBackend = iptables\n").unwrap();
        let d = &c.doors[0];
        assert_eq!(
            d.open,
            [super::super::Port { port: 22, proto: super::super::L4::Tcp }, "53/udp".parse().unwrap()]
        );
        assert_eq!(d.backend, Some(super::super::BackendKind::Iptables));
        // With no Backend, `[firewall] backend` (nftables by default) applies.
        let c = parse_str("[ssh]\nsequence = 1,2,3\nopen = 22\n").unwrap();
        assert_eq!(c.doors[0].backend_in(&c.firewall), Some(super::super::BackendKind::Nftables));
        assert!(
            matches!(problem("[d]\nsequence = 1\nopen = 22/icmp\n"), (3, Problem::Other(m)) if m.contains("22/icmp"))
        );
        assert!(
            matches!(problem("[d]\nsequence = 1\nbackend = pf\n"), (3, Problem::Other(m)) if m.contains("'pf'"))
        );
        assert!(
            matches!(problem("[d]\nsequence = 1\nopen = 22\ncommand = x\n"), (3, Problem::Other(m)) if m.contains("not both"))
        );
        assert!(
            matches!(problem("[d]\nsequence = 1\nbackend = ufw\n"), (3, Problem::Other(m)) if m.contains("nothing to open"))
        );
        assert!(
            matches!(problem("[d]\nsequence = 1\nbackend = command\nopen = 22\n"), (4, Problem::Other(m)) if m.contains("native"))
        );
    }

    #[test]
    fn several_interfaces_are_comma_separated() {
        let c = parse_str(
            "[options]
interface = eth0, wg0 ,ppp0
[d]
sequence=1
",
        )
        .unwrap();
        assert_eq!(c.options.interfaces, ["eth0", "wg0", "ppp0"]);
        assert!(matches!(problem("[options]
interface = eth0,,wg0
"), (2, Problem::Other(m)) if m.contains("empty")));
        assert!(matches!(problem("[options]
\ninterface = eth0, a/b
"), (3, Problem::Other(m)) if m.contains("'a/b'")));
        assert!(matches!(problem("[options]
interface = eth0,eth0
"), (2, Problem::Other(m)) if m.contains("twice")));
    }

    #[test]
    fn empty_sequence_points_at_the_sequence_line_when_there_is_one() {
        assert_eq!(
            problem("[a]\nsequence = 1\n[b]\n\nsequence =\n"),
            (5, Problem::EmptySequence("b".into()))
        );
        assert_eq!(problem("[a]\ntcpflags = syn\n"), (1, Problem::EmptySequence("a".into())));
    }

    #[test]
    fn repeated_key_last_wins_and_empty_commands_are_kept() {
        let c = parse_str("[d]\nsequence = 1\nsequence = 2:udp\ncommand =\n").unwrap();
        assert_eq!(c.doors[0].sequence, vec![super::super::Step { port: 2, proto: Proto::Udp }]);
        assert_eq!(c.doors[0].start_command.as_deref(), Some(""));
    }

    #[test]
    fn doors_remember_their_lines() {
        let c = parse_str(
            "[options]\nUseSyslog\n\n[a]\nsequence = 1,2,3\nseq_timeout = 5\ncommand = x\n\
             cmd_timeout = 9\nstop_command = y\n[b]\n# c\nstart_command_6 = z\nstop_command_6 = w\nsequence = 4\n",
        )
        .unwrap();
        let (a, b) = (c.doors[0].lines, c.doors[1].lines);
        assert_eq!(
            (a.door, a.sequence, a.seq_timeout, a.start_command, a.cmd_timeout, a.stop_command),
            (4, 5, 6, 7, 8, 9)
        );
        assert_eq!((b.door, b.start_command_6, b.stop_command_6, b.sequence), (10, 12, 13, 14));
        assert_eq!((b.seq_timeout, b.or_door(b.start_command)), (0, 10));
    }

    #[test]
    fn empty_option_values_are_unset() {
        let c = parse_str("[options]\nlogfile =\npidfile=\ninterface = \n[d]\nsequence=1\n").unwrap();
        assert_eq!(c.options, Options::default());
    }
}
