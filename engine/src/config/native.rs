//! sesame's own TOML syntax: the same settings as knockd.conf, with knockd's defaults.
//!
//! ```toml
//! [options]
//! use_syslog = true
//! log_file = "/var/log/sesame.log"
//! interface = "eth0"
//!
//! [[door]]
//! name = "openSSH"
//! sequence = ["7000", "8000:tcp", "9000:udp"]   # or [7000, 8000], or "7000,8000:tcp"
//! seq_timeout = 5
//! tcp_flags = ["syn", "!ack"]                   # or "syn,!ack"
//! start_command = "/usr/sbin/iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
//! cmd_timeout = 30
//! ```
//!
//! Values checked after deserialisation are kept [`Spanned`] so that their errors still
//! point at the right line. Unknown keys are errors, which leaves room for sesame-only
//! tables later without silently accepting typos now.

use super::knockd::{parse_flags, parse_seconds, parse_target, FLAG_NAMES};
use super::{
    onetime, parse_interfaces, parse_open, parse_sequence, parse_step, spa_door, BackendKind, Config,
    ConfigError, Door, FirewallSettings, MetricsSettings, OneTimeSequences, Options, Port, Problem, Step,
    Tuning, MAX_SEQUENCE,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sesame_capture::Proto;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Parses sesame TOML `text`, read from `path` (used in errors and as `Config::source`).
///
/// Doors with `one_time_sequences` read that file now, for their current sequence.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let error = |span: Option<std::ops::Range<usize>>, problem| ConfigError {
        file: path.to_owned(),
        line: span.map_or(0, |s| line_of(text, s.start)),
        problem,
    };
    let file: FileToml = toml::from_str(text).map_err(|e| error(e.span(), toml_problem(text, &e)))?;
    let options = file.options.unwrap_or_default();
    let options = Options {
        use_syslog: options.use_syslog,
        log_file: non_empty(options.log_file).map(PathBuf::from),
        pid_file: non_empty(options.pid_file).map(PathBuf::from),
        interfaces: match options.interface {
            Some(list) => interfaces(list).map_err(|(span, problem)| error(Some(span), problem))?,
            None => Vec::new(),
        },
    };
    let lines = Lines::new(text);
    let doors = file
        .door
        .into_iter()
        .map(|d| door(d, &lines).map_err(|(span, problem)| error(Some(span), problem)))
        .collect::<Result<Vec<_>, _>>()?;
    super::check_door_count(path, &doors)?;
    let tuning = tuning(file.capture, file.limits).map_err(|(span, problem)| error(Some(span), problem))?;
    let firewall =
        firewall(file.firewall.unwrap_or_default()).map_err(|(span, problem)| error(Some(span), problem))?;
    let metrics =
        metrics(file.metrics.unwrap_or_default()).map_err(|(span, problem)| error(Some(span), problem))?;
    Ok(Config { source: path.to_owned(), options, doors, tuning, firewall, metrics })
}

/// Writes `config` as sesame TOML; [`parse`] reads it back to an equal [`Config`].
///
/// A one-time door is written with its file only: its sequence comes from the file.
pub fn to_toml(config: &Config) -> String {
    let opts = &config.options;
    let file = FileOut {
        options: OptionsOut {
            use_syslog: opts.use_syslog,
            log_file: opts.log_file.as_deref().map(|p| p.to_string_lossy().into_owned()),
            pid_file: opts.pid_file.as_deref().map(|p| p.to_string_lossy().into_owned()),
            interface: match opts.interfaces.as_slice() {
                [] => None,
                [one] => Some(InterfaceOut::One(one)),
                many => Some(InterfaceOut::Many(many)),
            },
        },
        door: config.doors.iter().map(door_out).collect(),
        capture: (config.tuning != Tuning::default()).then_some(CaptureOut {
            workers: config.tuning.workers,
            ring_block_size: config.tuning.ring_block_size,
            ring_block_count: config.tuning.ring_block_count,
        }),
        limits: (config.tuning != Tuning::default()).then_some(LimitsOut {
            memory_mib: config.tuning.memory_mib,
            log_lines_per_second: config.tuning.log_lines_per_second,
        }),
        firewall: (config.firewall != FirewallSettings::default()).then(|| {
            let f = &config.firewall;
            FirewallOut {
                backend: f.backend.name(),
                rate: f.rate,
                burst: f.burst,
                concurrency: f.concurrency,
                command_timeout: f.command_timeout,
                queue: f.queue,
                state_dir: f.state_dir.to_string_lossy().into_owned(),
                close_on_exit: f.close_on_exit,
            }
        }),
        metrics: config.metrics.listen.map(|a| MetricsOut { listen: a.to_string() }),
    };
    toml::to_string(&file).expect("a Config always serialises to TOML")
}

/// The TOML names of the flags in `rule`, in bit order: `["syn", "!ack"]`.
pub(crate) fn flag_names(rule: super::TcpFlagRule) -> Vec<String> {
    FLAG_NAMES
        .iter()
        .filter_map(|&(name, bit)| {
            if rule.set & bit != 0 {
                Some(name.to_owned())
            } else if rule.clear & bit != 0 {
                Some(format!("!{name}"))
            } else {
                None
            }
        })
        .collect()
}

type Span = std::ops::Range<usize>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    options: Option<OptionsToml>,
    #[serde(default)]
    door: Vec<Spanned<DoorToml>>,
    capture: Option<CaptureToml>,
    limits: Option<LimitsToml>,
    firewall: Option<FirewallToml>,
    metrics: Option<MetricsToml>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsToml {
    listen: Option<Spanned<String>>,
}

fn metrics(m: MetricsToml) -> Result<MetricsSettings, (Span, Problem)> {
    let mut s = MetricsSettings::default();
    if let Some(l) = m.listen {
        let addr = l.get_ref().parse().map_err(|_| {
            (
                l.span(),
                Problem::Other(format!(
                    "invalid listen address '{}' in [metrics]: must be ADDR:PORT",
                    l.get_ref()
                )),
            )
        })?;
        s.listen = Some(addr);
    }
    Ok(s)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirewallToml {
    backend: Option<Spanned<String>>,
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    command_timeout: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
    state_dir: Option<Spanned<String>>,
    close_on_exit: Option<bool>,
}

fn firewall(f: FirewallToml) -> Result<FirewallSettings, (Span, Problem)> {
    let mut s = FirewallSettings::default();
    if let Some(b) = f.backend {
        s.backend = BackendKind::parse(b.get_ref()).map_err(|p| (b.span(), p))?;
    }
    if let Some(v) = f.rate {
        s.rate = bounded("rate", v, 1, 1_000_000)?;
    }
    if let Some(v) = f.burst {
        s.burst = bounded("burst", v, 1, 1_000_000)?;
    }
    if let Some(v) = f.concurrency {
        s.concurrency = bounded("concurrency", v, 1, 256)?;
    }
    if let Some(v) = f.command_timeout {
        s.command_timeout = bounded("command_timeout", v, 1, 86_400)?;
    }
    if let Some(v) = f.queue {
        s.queue = bounded("queue", v, 1, 1 << 24)?;
    }
    if let Some(dir) = f.state_dir {
        if !Path::new(dir.get_ref()).is_absolute() {
            let problem = Problem::Other(format!("state_dir '{}' must be an absolute path", dir.get_ref()));
            return Err((dir.span(), problem));
        }
        s.state_dir = PathBuf::from(dir.into_inner());
    }
    if let Some(c) = f.close_on_exit {
        s.close_on_exit = c;
    }
    Ok(s)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureToml {
    workers: Option<Spanned<i64>>,
    ring_block_size: Option<Spanned<i64>>,
    ring_block_count: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsToml {
    memory_mib: Option<Spanned<i64>>,
    log_lines_per_second: Option<Spanned<i64>>,
}

/// A whole number from `min` to `max` for `key`.
fn bounded(key: &str, value: Spanned<i64>, min: i64, max: i64) -> Result<u32, (Span, Problem)> {
    let v = *value.get_ref();
    if v < min || v > max {
        return Err((
            value.span(),
            Problem::Other(format!(
                "invalid value {v} for {key}: must be a whole number from {min} to {max}"
            )),
        ));
    }
    Ok(v as u32)
}

fn tuning(capture: Option<CaptureToml>, limits: Option<LimitsToml>) -> Result<Tuning, (Span, Problem)> {
    let (c, l) = (capture.unwrap_or_default(), limits.unwrap_or_default());
    let mut t = Tuning::default();
    if let Some(v) = c.workers {
        t.workers = Some(bounded("workers", v, 1, 1024)?);
    }
    if let Some(v) = c.ring_block_size {
        let span = v.span();
        let size = bounded("ring_block_size", v, 4096, 1 << 30)?;
        if !size.is_power_of_two() {
            return Err((span, Problem::Other(format!("ring_block_size {size} is not a power of two"))));
        }
        t.ring_block_size = Some(size);
    }
    if let Some(v) = c.ring_block_count {
        t.ring_block_count = Some(bounded("ring_block_count", v, 2, 1 << 16)?);
    }
    if let Some(v) = l.memory_mib {
        t.memory_mib = Some(bounded("memory_mib", v, 1, 1 << 20)?);
    }
    if let Some(v) = l.log_lines_per_second {
        t.log_lines_per_second = bounded("log_lines_per_second", v, 0, 1 << 30)?;
    }
    Ok(t)
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsToml {
    #[serde(default)]
    use_syslog: bool,
    log_file: Option<String>,
    pid_file: Option<String>,
    interface: Option<Spanned<List>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DoorToml {
    name: Spanned<String>,
    sequence: Option<Spanned<List>>,
    one_time_sequences: Option<Spanned<String>>,
    sequence_secret_file: Option<Spanned<String>>,
    sequence_step: Option<Spanned<i64>>,
    sequence_length: Option<Spanned<i64>>,
    sequence_ports: Option<Spanned<String>>,
    seq_timeout: Option<Spanned<i64>>,
    tcp_flags: Option<Spanned<List>>,
    start_command: Option<Spanned<String>>,
    start_command_6: Option<Spanned<String>>,
    stop_command: Option<Spanned<String>>,
    stop_command_6: Option<Spanned<String>>,
    cmd_timeout: Option<Spanned<i64>>,
    target: Option<Spanned<String>>,
    open: Option<Spanned<List>>,
    backend: Option<Spanned<String>>,
    spa_keys: Option<Spanned<String>>,
    spa_port: Option<Spanned<i64>>,
    spa_max_age: Option<Spanned<i64>>,
    spa_allow_other_address: Option<Spanned<bool>>,
}

/// A list written either as a TOML array (each element spanned, so errors find its
/// line) or as one knockd-style comma-separated string.
enum List {
    Text(String),
    Items(Vec<Spanned<Item>>),
}

/// An array element: sequences may use bare port numbers.
enum Item {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = List;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array or a comma-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<List, E> {
                Ok(List::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List::Items(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
                Ok(Item::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
                Ok(i64::try_from(v).map_or_else(|_| Item::Text(v.to_string()), Item::Int))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `lines` indexes the whole file, to turn the door's spans into the lines it remembers.
fn door(spanned: Spanned<DoorToml>, lines: &Lines) -> Result<Door, (Span, Problem)> {
    let table_span = spanned.span();
    let d = spanned.into_inner();
    let name_span = d.name.span();
    let name = d.name.into_inner();
    if name.trim().is_empty() {
        return Err((name_span, Problem::Syntax("door name must not be empty".into())));
    }
    let mut door = Door::new(name, Vec::new());
    let line = |span: Span| lines.line_of(span.start);
    door.lines.door = lines.door_header_line(line(table_span.clone()));
    let mut sequence_span = None;
    if let Some(seq) = d.sequence {
        sequence_span = Some(seq.span());
        door.lines.sequence = line(seq.span());
        door.sequence = sequence(seq)?;
    }
    let has_other = d.one_time_sequences.is_some() || !door.sequence.is_empty();
    let rotation_keys = (d.sequence_secret_file, d.sequence_step, d.sequence_length, d.sequence_ports);
    if let Some(line) = rotation(rotation_keys, &mut door, has_other, lines)? {
        door.lines.sequence = line;
    }
    if let Some(path) = d.one_time_sequences {
        let span = path.span();
        door.lines.sequence = line(span.clone());
        let path = PathBuf::from(path.into_inner());
        door.sequence = onetime::initial_sequence(&path).map_err(|p| (span, p))?;
        door.one_time = Some(OneTimeSequences { path });
    } else if door.sequence.is_empty() && d.spa_keys.is_none() && door.rotating.is_none() {
        return Err((sequence_span.unwrap_or(table_span), Problem::EmptySequence(door.name)));
    }
    if let Some(t) = d.seq_timeout {
        door.lines.seq_timeout = line(t.span());
        door.seq_timeout = seconds("seq_timeout", t)?;
    }
    if let Some(t) = d.cmd_timeout {
        door.lines.cmd_timeout = line(t.span());
        door.cmd_timeout = seconds("cmd_timeout", t)?;
    }
    if let Some(flags) = d.tcp_flags {
        let span = flags.span();
        let names = words(flags, &[',', '|'], |n| Problem::BadFlag(n.to_string()))?;
        door.tcp_flags = parse_flags(names.iter().map(String::as_str)).map_err(|p| (span, p))?;
    }
    if let Some(target) = d.target {
        door.target = Some(parse_target(target.get_ref()).map_err(|p| (target.span(), p))?);
    }
    let command = |c: Option<Spanned<String>>, at: &mut usize| {
        c.map(|c| {
            *at = line(c.span());
            c.into_inner()
        })
    };
    let lines = &mut door.lines;
    door.start_command = command(d.start_command, &mut lines.start_command);
    door.start_command_6 = command(d.start_command_6, &mut lines.start_command_6);
    door.stop_command = command(d.stop_command, &mut lines.stop_command);
    door.stop_command_6 = command(d.stop_command_6, &mut lines.stop_command_6);
    let mut firewall_span = table_span;
    if let Some(open) = d.open {
        firewall_span = open.span();
        door.lines.open = line(open.span());
        // Bare numbers are TCP ports, as in sequences.
        let ports: Vec<String> = match open.into_inner() {
            List::Text(text) => text.split(',').map(str::to_owned).collect(),
            List::Items(items) => items
                .iter()
                .map(|i| match i.get_ref() {
                    Item::Int(n) => n.to_string(),
                    Item::Text(s) => s.clone(),
                })
                .collect(),
        };
        door.open = parse_open(ports.iter().map(String::as_str)).map_err(|p| (firewall_span.clone(), p))?;
    }
    if let Some(b) = d.backend {
        door.backend = Some(BackendKind::parse(b.get_ref()).map_err(|p| (b.span(), p))?);
        firewall_span = b.span();
    }
    door.check_backend().map_err(|p| (firewall_span.clone(), p))?;
    let spa_span = d.spa_keys.as_ref().map_or(firewall_span, |k| k.span());
    let spa = [
        ("keys", d.spa_keys.map(|v| v.into_inner())),
        ("port", d.spa_port.map(|v| v.into_inner().to_string())),
        ("max_age", d.spa_max_age.map(|v| v.into_inner().to_string())),
        ("allow_other_address", d.spa_allow_other_address.map(|v| v.into_inner().to_string())),
    ];
    for (name, value) in spa {
        if let Some(value) = value {
            spa_door::set(&mut door, name, &value).map_err(|p| (spa_span.clone(), p))?;
        }
    }
    spa_door::finish(&mut door).map_err(|p| (spa_span, p))?;
    Ok(door)
}

/// The rotating-sequence keys (see [`super::rotation`]); the line of the first one, if any.
type RotationToml =
    (Option<Spanned<String>>, Option<Spanned<i64>>, Option<Spanned<i64>>, Option<Spanned<String>>);

fn rotation(
    (secret_file, step, length, ports): RotationToml,
    door: &mut Door,
    has_other: bool,
    lines: &Lines,
) -> Result<Option<usize>, (Span, Problem)> {
    use super::rotation::{RotationKey, RotationKeys};
    let mut keys = RotationKeys::default();
    let mut first: Option<Span> = None;
    let mut set = |key: RotationKey, value: String, span: Span| {
        first = Some(first.take().filter(|f| f.start < span.start).unwrap_or(span.clone()));
        keys.set(key, &value, lines.line_of(span.start)).map_err(|p| (span, p))
    };
    if let Some(v) = &secret_file {
        set(RotationKey::SecretFile, v.get_ref().clone(), v.span())?;
    }
    for (key, v) in [(RotationKey::Step, &step), (RotationKey::Length, &length)] {
        if let Some(v) = v {
            set(key, v.get_ref().to_string(), v.span())?;
        }
    }
    if let Some(v) = &ports {
        set(RotationKey::Ports, v.get_ref().clone(), v.span())?;
    }
    let Some(span) = first else { return Ok(None) };
    let line = lines.line_of(span.start);
    keys.finish(door, has_other).map_err(|p| (span, p))?;
    Ok(Some(line))
}

/// A list's words: a string split at `separators`, or an array's strings (an integer
/// in the array is the error `not_text` makes of it).
fn words(
    list: Spanned<List>,
    separators: &[char],
    not_text: impl Fn(i64) -> Problem,
) -> Result<Vec<String>, (Span, Problem)> {
    match list.into_inner() {
        List::Text(text) => Ok(text.split(separators).map(str::to_owned).collect()),
        List::Items(items) => items
            .into_iter()
            .map(|item| match item.get_ref() {
                Item::Text(t) => Ok(t.clone()),
                Item::Int(n) => Err((item.span(), not_text(*n))),
            })
            .collect(),
    }
}

fn interfaces(list: Spanned<List>) -> Result<Vec<String>, (Span, Problem)> {
    let span = list.span();
    let names = words(list, &[','], |n| Problem::Other(format!("invalid interface name '{n}'")))?;
    parse_interfaces(names.iter().map(String::as_str)).map_err(|p| (span, p))
}

fn sequence(seq: Spanned<List>) -> Result<Vec<Step>, (Span, Problem)> {
    let span = seq.span();
    let steps = match seq.into_inner() {
        List::Text(text) => return parse_sequence(&text).map_err(|p| (span, p)),
        List::Items(items) => items
            .into_iter()
            .map(|item| {
                let step = match item.get_ref() {
                    Item::Int(n) => u16::try_from(*n)
                        .map(|port| Step { port, proto: Proto::Tcp })
                        .map_err(|_| Problem::BadPort(n.to_string())),
                    Item::Text(t) => parse_step(t),
                };
                step.map_err(|p| (item.span(), p))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if steps.len() > MAX_SEQUENCE {
        return Err((span, Problem::SequenceTooLong(steps.len())));
    }
    Ok(steps)
}

fn seconds(key: &str, value: Spanned<i64>) -> Result<u32, (Span, Problem)> {
    parse_seconds(key, &value.get_ref().to_string()).map_err(|p| (value.span(), p))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// [`line_of`] and the `[[door]]` header line, for every door of one file, in
/// logarithmic and constant time: computed per door from the start of the text, they
/// made a file with many doors quadratic (65,536 doors, 2 MB: unfinished after 9 CPU
/// minutes in a debug test build; now some 20 s there, on a busy machine).
pub(crate) struct Lines {
    /// Byte offset where each line starts (line 1 at 0).
    starts: Vec<usize>,
    /// For each line (index 0 = line 1), the last `[[` header line at or above it, or 0.
    header_at_or_above: Vec<usize>,
    len: usize,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1))
            .collect();
        let mut last = 0;
        let header_at_or_above = (0..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).map_or(text.len(), |&e| e);
                if text[starts[i]..end].trim_start().starts_with("[[") {
                    last = i + 1;
                }
                last
            })
            .collect();
        Lines { starts, header_at_or_above, len: text.len() }
    }

    /// As [`line_of`].
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.len);
        self.starts.partition_point(|&s| s <= offset)
    }

    /// The line of the `[[door]]` header of a table whose span starts on `line` (toml's
    /// table spans may start at the first key rather than at the header): the last line
    /// up to `line` that starts with `[[`, or `line` itself when there is none.
    pub(crate) fn door_header_line(&self, line: usize) -> usize {
        match line.min(self.header_at_or_above.len()).checked_sub(1) {
            Some(i) if self.header_at_or_above[i] != 0 => self.header_at_or_above[i],
            _ => line,
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// toml reports unknown keys as "unknown field `k`, expected ..."; those become
/// [`Problem::UnknownKey`] like in knockd.conf, everything else a syntax error.
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim();
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    let line = e.span().map_or(usize::MAX, |s| line_of(text, s.start));
    if text.lines().nth(line.wrapping_sub(1)).is_some_and(|l| l.trim() == "[door]") {
        return Problem::Syntax("doors are an array of tables: write [[door]], not [door]".into());
    }
    match key {
        Some(key) => Problem::UnknownKey { key, section: section_at(text, line) },
        None => Problem::Syntax(message.lines().map(str::trim).collect::<Vec<_>>().join("; ")),
    }
}

/// The table that holds a key reported on `line`: the last header before it, or, when
/// the key is itself a table header (`[capture]`), that header's parent.
fn section_at(text: &str, line: usize) -> String {
    let top = || "top level".to_owned();
    let lines: Vec<&str> = text.lines().take(line).collect();
    if let Some(own) = lines.last().and_then(|l| header(l)) {
        return own.rsplit_once('.').map_or_else(top, |(parent, _)| parent.trim().to_owned());
    }
    lines.iter().rev().find_map(|l| header(l)).map_or_else(top, str::to_owned)
}

/// The name inside a `[table]` or `[[array]]` header line.
fn header(line: &str) -> Option<&str> {
    let l = line.trim();
    let inner = l.strip_prefix("[[").and_then(|l| l.split_once("]]")).map(|(n, _)| n);
    inner.or_else(|| l.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(n, _)| n)).map(str::trim)
}

#[derive(Serialize)]
struct FileOut<'a> {
    options: OptionsOut<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    door: Vec<DoorOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capture: Option<CaptureOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall: Option<FirewallOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsOut>,
}

#[derive(Serialize)]
struct MetricsOut {
    listen: String,
}

#[derive(Serialize)]
struct FirewallOut {
    backend: &'static str,
    rate: u32,
    burst: u32,
    concurrency: u32,
    command_timeout: u32,
    queue: u32,
    state_dir: String,
    close_on_exit: bool,
}

#[derive(Serialize)]
struct CaptureOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_block_count: Option<u32>,
}

#[derive(Serialize)]
struct LimitsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mib: Option<u32>,
    log_lines_per_second: u32,
}

/// One interface as a string (as knockd users write it), several as an array.
#[derive(Serialize)]
#[serde(untagged)]
enum InterfaceOut<'a> {
    One(&'a str),
    Many(&'a [String]),
}

#[derive(Serialize)]
struct OptionsOut<'a> {
    use_syslog: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<InterfaceOut<'a>>,
}

#[derive(Serialize)]
struct DoorOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    one_time_sequences: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_step: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_length: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_ports: Option<String>,
    seq_timeout: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tcp_flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_command_6: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_command_6: Option<&'a str>,
    cmd_timeout: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    open: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spa_keys: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spa_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spa_max_age: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spa_allow_other_address: Option<bool>,
}

fn door_out(door: &Door) -> DoorOut<'_> {
    DoorOut {
        name: &door.name,
        sequence: (door.one_time.is_none()
            && door.rotating.is_none()
            && !(door.spa.is_some() && door.sequence.is_empty()))
        .then(|| door.sequence.iter().map(Step::to_string).collect()),
        one_time_sequences: door.one_time.as_ref().map(|o| o.path.to_string_lossy().into_owned()),
        sequence_secret_file: door.rotating.as_ref().map(|r| r.secret_file.to_string_lossy().into_owned()),
        sequence_step: door.rotating.as_ref().map(|r| r.params.step),
        sequence_length: door.rotating.as_ref().map(|r| r.params.length),
        sequence_ports: door.rotating.as_ref().map(|r| format!("{}-{}", r.params.lo, r.params.hi)),
        seq_timeout: door.seq_timeout,
        tcp_flags: flag_names(door.tcp_flags),
        target: door.target.map(|t| t.to_string()),
        start_command: door.start_command.as_deref(),
        start_command_6: door.start_command_6.as_deref(),
        stop_command: door.stop_command.as_deref(),
        stop_command_6: door.stop_command_6.as_deref(),
        cmd_timeout: door.cmd_timeout,
        open: door.open.iter().map(Port::to_string).collect(),
        backend: door.backend.map(BackendKind::name),
        spa_keys: door.spa.as_ref().map(|s| s.keys_file.to_string_lossy().into_owned()),
        spa_port: door.spa.as_ref().map(|s| s.port),
        spa_max_age: door.spa.as_ref().map(|s| s.max_age),
        spa_allow_other_address: door.spa.as_ref().map(|s| s.allow_other_address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.toml"), text)
    }

    /// What [`Lines::door_header_line`] replaced: a scan from the start for each door.
    fn door_header_line(text: &str, line: usize) -> usize {
        let lines: Vec<&str> = text.lines().take(line).collect();
        lines.iter().rposition(|l| l.trim_start().starts_with("[[")).map_or(line, |i| i + 1)
    }

    #[test]
    fn line_index_agrees_with_scanning_from_the_start() {
        let texts =
            ["", "\n", "a", "a\n", "[[door]]\nx\n\n  [[door]]\r\ny", "x\n[[a]]\n[[b]]\n\n", "\n\n[[\n"];
        for text in texts {
            let lines = Lines::new(text);
            for offset in 0..=text.len() + 2 {
                assert_eq!(lines.line_of(offset), line_of(text, offset), "{text:?} at {offset}");
            }
            for line in 0..=text.lines().count() + 2 {
                assert_eq!(
                    lines.door_header_line(line),
                    door_header_line(text, line),
                    "{text:?} line {line}"
                );
            }
        }
    }

    /// As in knockd.conf: one door more than the door table can number is an error
    /// at that door's `[[door]]`, not a panic in `Doors::new`.
    #[test]
    fn too_many_doors_is_an_error_at_the_first_door_too_many() {
        let text = "[[door]]\nname = \"d\"\nsequence = [1]\n".repeat(super::super::MAX_DOORS + 1);
        let e = parse_str(&text).unwrap_err();
        assert_eq!((e.line, &e.problem), (3 * 65_535 + 1, &Problem::TooManyDoors("d".into())));
    }

    #[test]
    fn sequence_forms_agree() {
        let a = parse_str("[[door]]\nname = \"d\"\nsequence = [7000, \"8000:UDP\", \"9000:tcp\"]\n").unwrap();
        let b = parse_str("[[door]]\nname = \"d\"\nsequence = \"7000,8000:udp,9000\"\n").unwrap();
        assert_eq!(a.doors, b.doors);
        assert_eq!(a.doors[0].sequence[1], Step { port: 8000, proto: Proto::Udp });
    }

    #[test]
    fn doors_remember_their_lines() {
        let c = parse_str(
            "[options]\n\n[[door]]\nname = \"a\"\nsequence = [\n  1,\n  2,\n]\nseq_timeout = 5\n\
             start_command = \"x\"\n\n[[door]]\n# b\nname = \"b\"\nsequence = \"4\"\nstop_command = \"y\"\n\
             cmd_timeout = 3\nstart_command_6 = \"z\"\nstop_command_6 = \"w\"\n",
        )
        .unwrap();
        let (a, b) = (c.doors[0].lines, c.doors[1].lines);
        assert_eq!((a.door, a.sequence, a.seq_timeout, a.start_command, a.stop_command), (3, 5, 9, 10, 0));
        assert_eq!(
            (b.door, b.sequence, b.stop_command, b.cmd_timeout, b.start_command_6, b.stop_command_6),
            (12, 15, 16, 17, 18, 19)
        );
    }

    #[test]
    fn element_errors_point_at_the_element_line() {
        let e = parse_str("[[door]]\nname = \"d\"\nsequence = [\n  7000,\n  -1,\n]\n").unwrap_err();
        assert_eq!((e.line, e.problem), (5, Problem::BadPort("-1".into())));
        let e =
            parse_str("[[door]]\nname = \"d\"\nsequence = [1]\ntcp_flags = [\"syn\",\n 6]\n").unwrap_err();
        assert_eq!((e.line, e.problem), (5, Problem::BadFlag("6".into())));
    }

    #[test]
    fn empty_sequence_without_the_key_points_at_the_door() {
        let e = parse_str("[options]\n\n[[door]]\nname = \"d\"\n").unwrap_err();
        assert_eq!(e.problem, Problem::EmptySequence("d".into()));
        assert!((3..=4).contains(&e.line), "line {}", e.line);
    }

    #[test]
    fn metrics_listen_parses_round_trips_and_blames_its_line() {
        let c = parse_str("[metrics]\nlisten = \"127.0.0.1:9105\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9105".parse().unwrap()));
        assert_eq!(parse_str(&to_toml(&c)).unwrap().metrics, c.metrics);
        assert_eq!(parse_str("").unwrap().metrics.listen, None, "off unless set");
        let e = parse_str("[options]\n[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.to_string().starts_with("test.toml:3: invalid listen address 'localhost' in [metrics]"),
            "{e}"
        );
    }

    #[test]
    fn capture_and_limits_tables_tune_and_validate() {
        let c =
            parse_str("[capture]\nworkers = 4\nring_block_size = 65536\n[limits]\nmemory_mib = 8\n").unwrap();
        assert_eq!(c.tuning.workers, Some(4));
        assert_eq!(c.tuning.ring_block_size, Some(65536));
        assert_eq!(c.tuning.memory_mib, Some(8));
        assert_eq!(c.tuning.ring_block_count, Tuning::default().ring_block_count);
        let back = parse_str(&to_toml(&c)).unwrap();
        assert_eq!(back.tuning, c.tuning);
        for (text, value) in [
            ("[capture]\nworkers = 0\n", "0"),
            ("[capture]\nring_block_size = 65537\n", "65537"),
            ("[limits]\nmemory_mib = -1\n", "-1"),
        ] {
            let e = parse_str(text).unwrap_err();
            assert_eq!(e.line, 2, "{e}");
            assert!(e.to_string().contains(value), "{e}");
        }
    }

    #[test]
    fn firewall_table_and_door_open_round_trip() {
        let text = "[firewall]\nbackend = \"iptables\"\nrate = 50\nburst = 60\nconcurrency = 2\n\
                    command_timeout = 5\nqueue = 100\nstate_dir = \"/tmp/s\"\nclose_on_exit = false\n\
                    [[door]]\nname = \"ssh\"\nsequence = [1, 2, 3]\nopen = [\"22/tcp\", \"60001/udp\"]\n\
                    backend = \"nftables\"\ncmd_timeout = 30\n";
        let c = parse_str(text).unwrap();
        assert_eq!(c.firewall.backend, BackendKind::Iptables);
        assert_eq!((c.firewall.rate, c.firewall.burst, c.firewall.concurrency), (50, 60, 2));
        assert_eq!((c.firewall.command_timeout, c.firewall.queue, c.firewall.close_on_exit), (5, 100, false));
        assert_eq!(c.doors[0].open.len(), 2);
        assert_eq!(c.doors[0].backend_in(&c.firewall), Some(BackendKind::Nftables));
        assert_eq!(parse_str(&to_toml(&c)).unwrap(), Config { source: "test.toml".into(), ..c });
        let e = parse_str("[firewall]\nrate = 0\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse_str("[firewall]\nbackend = \"pf\"\n").unwrap_err();
        assert!(e.to_string().contains("'pf'"), "{e}");
        let e = parse_str("[[door]]\nname = \"d\"\nsequence = [1]\n\nopen = [\"22/sctp\"]\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = parse_str("[[door]]\nname = \"d\"\nsequence = [1]\nstart_command = \"x\"\nopen = [22]\n")
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn interfaces_are_a_string_or_a_list() {
        let c = parse_str("[options]\ninterface = \"eth0\"\n").unwrap();
        assert_eq!(c.options.interfaces, ["eth0"]);
        let c = parse_str("[options]\ninterface = [\"eth0\", \"wg0\"]\n").unwrap();
        assert_eq!(c.options.interfaces, ["eth0", "wg0"]);
        assert_eq!(parse_str(&to_toml(&c)).unwrap().options.interfaces, ["eth0", "wg0"]);
        let c = parse_str("[options]\ninterface = \"eth0, wg0\"\n").unwrap();
        assert_eq!(c.options.interfaces, ["eth0", "wg0"]);
        let e =
            parse_str("[options]\nuse_syslog = true\ninterface = [\"eth0\", \"bad name\"]\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("'bad name'"), "{e}");
    }

    #[test]
    fn unknown_keys_name_their_table() {
        let e = parse_str("[options]\nuse_syslog = true\nlogfile = \"x\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.problem),
            (3, Problem::UnknownKey { key: "logfile".into(), section: "options".into() })
        );
        let e = parse_str("[capture]\nworkers = 4\nthreads = 2\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("threads"), "{e}");
        let e = parse_str("[tuning]\nworkers = 4\n").unwrap_err();
        assert_eq!(
            (e.line, e.problem),
            (1, Problem::UnknownKey { key: "tuning".into(), section: "top level".into() })
        );
        let e = parse_str("[options]\n[door]\nname = \"d\"\n").unwrap_err();
        assert!(matches!(&e.problem, Problem::Syntax(m) if m.contains("[[door]]")), "{e}");
        let e = parse_str("verbose = true\n").unwrap_err();
        assert_eq!(
            (e.line, e.problem),
            (1, Problem::UnknownKey { key: "verbose".into(), section: "top level".into() })
        );
    }

    #[test]
    fn toml_errors_carry_their_line() {
        let e = parse_str("[options]\nuse_syslog = \"yes\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(matches!(e.problem, Problem::Syntax(_)));
        let e = parse_str("[[door]]\nsequence = [1]\n").unwrap_err();
        assert!(matches!(&e.problem, Problem::Syntax(m) if m.contains("name")), "{e}");
    }

    #[test]
    fn strings_needing_escapes_survive() {
        let mut door = Door::new("quote\"d \\ door", vec![Step { port: 1, proto: Proto::Udp }]);
        door.start_command = Some("echo 'a' \"b\" \\n\ttab %IP% --x=y # not a comment".into());
        let config = Config {
            source: "x.conf".into(),
            options: Options::default(),
            doors: vec![door],
            tuning: Tuning::default(),
            firewall: Default::default(),
            metrics: Default::default(),
        };
        let back = parse(Path::new("x.toml"), &to_toml(&config)).unwrap();
        assert_eq!(back.doors, config.doors);
    }
}
