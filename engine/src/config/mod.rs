//! Configuration: one model, two syntaxes.
//!
//! [`knockd`] reads `/etc/knockd.conf` exactly as knockd 0.8 does (and rejects what it
//! should have rejected); [`native`] reads sesame's TOML. Both produce a validated
//! [`Config`]; [`native::to_toml`] writes any [`Config`] back as TOML (`sesame convert`).
//! Every error names the file, the line and the offending value.

pub mod knockd;
pub mod native;
pub mod onetime;
pub mod rotation;
pub mod spa_door;
mod summary;

pub use rotation::RotatingSequence;

use sesame_capture::Proto;
pub use sesame_firewall::backend::{Port, L4};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Most ports one sequence may have (knockd's `SEQ_MAX`).
pub const MAX_SEQUENCE: usize = 32;
/// Most doors one configuration may have: the door table numbers them with 16 bits.
pub const MAX_DOORS: usize = u16::MAX as usize;
/// knockd's default `Seq_Timeout`, seconds.
pub const DEFAULT_SEQ_TIMEOUT: u32 = 25;
/// knockd's default `Cmd_Timeout`, seconds.
pub const DEFAULT_CMD_TIMEOUT: u32 = 10;
/// knockd's default interface.
pub const DEFAULT_INTERFACE: &str = "eth0";
/// knockd's default pid file.
pub const DEFAULT_PID_FILE: &str = "/var/run/knockd.pid";

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from (for messages and reloads).
    pub source: PathBuf,
    pub options: Options,
    /// Doors in file order; names need not be unique (knockd allows it).
    pub doors: Vec<Door>,
    /// sesame-only settings (native TOML `[capture]` and `[limits]`; defaults for knockd.conf).
    pub tuning: Tuning,
    /// sesame-only: the firewall executor and the default backend (TOML `[firewall]`).
    pub firewall: FirewallSettings,
    /// sesame-only: the metrics endpoint (TOML `[metrics]`).
    pub metrics: MetricsSettings,
}

/// Which firewall a door's grants go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// knockd's start/stop commands.
    Command,
    /// sesame's own nftables table, spoken to over netlink.
    Nftables,
    /// sesame's own iptables/ip6tables chain.
    Iptables,
    /// `ufw allow` / `ufw delete allow`.
    Ufw,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] =
        [BackendKind::Command, BackendKind::Nftables, BackendKind::Iptables, BackendKind::Ufw];

    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Command => "command",
            BackendKind::Nftables => "nftables",
            BackendKind::Iptables => "iptables",
            BackendKind::Ufw => "ufw",
        }
    }

    /// A backend by its config name (case-insensitive).
    pub fn parse(text: &str) -> Result<BackendKind, Problem> {
        let text = text.trim();
        BackendKind::ALL.into_iter().find(|b| b.name().eq_ignore_ascii_case(text)).ok_or_else(|| {
            Problem::Other(format!(
                "unknown backend '{text}': must be one of command, nftables, iptables, ufw"
            ))
        })
    }
}

/// The `[metrics]` section: where `/metrics` and `/healthz` are served; off when unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    pub listen: Option<std::net::SocketAddr>,
}

/// The `[firewall]` section: the executor's limits and the default backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSettings {
    /// The backend of doors with `open` and no `backend` of their own.
    pub backend: BackendKind,
    /// Firewall operations per second, all doors together (token bucket).
    pub rate: u32,
    pub burst: u32,
    /// Operations running at once.
    pub concurrency: u32,
    /// Seconds a command may run before it is killed and reported.
    pub command_timeout: u32,
    /// Pending operations; beyond it new grants are refused.
    pub queue: u32,
    /// Where the grant journal lives.
    pub state_dir: PathBuf,
    /// Close open grants on a clean stop.
    pub close_on_exit: bool,
}

impl Default for FirewallSettings {
    fn default() -> Self {
        FirewallSettings {
            backend: BackendKind::Nftables,
            rate: 100,
            burst: 200,
            concurrency: 4,
            command_timeout: 10,
            queue: 4096,
            state_dir: PathBuf::from("/var/lib/sesame"),
            close_on_exit: true,
        }
    }
}

/// Capture and resource settings knockd does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Capture workers (rings in one fanout group); `None` = one per core.
    pub workers: Option<u32>,
    /// Bytes per TPACKET_V3 ring block (a power of two, a multiple of the page size);
    /// `None` = sized from the memory budget.
    pub ring_block_size: Option<u32>,
    /// Blocks per ring; `None` = sized from the memory budget.
    pub ring_block_count: Option<u32>,
    /// Memory for all workers' rings and attempt tables together, in MiB; `None` =
    /// [`DEFAULT_MEMORY_MIB`], or more if the workers need more.
    pub memory_mib: Option<u32>,
    /// Per-packet log lines (`Stage N`, `sequence timeout`) allowed per second, all
    /// workers together; the rest are counted and summarised. 0 = no limit.
    pub log_lines_per_second: u32,
}

/// Default memory budget for rings and attempt tables: 64 MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 64;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            workers: None,
            ring_block_size: None,
            ring_block_count: None,
            memory_mib: None,
            log_lines_per_second: 200,
        }
    }
}

/// The `[options]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub use_syslog: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// `Interface`: the interfaces to listen on; empty means "not set" (the daemon then
    /// uses `-i` or eth0).
    pub interfaces: Vec<String>,
}

/// One knock: a port and its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.port, self.proto.name())
    }
}

/// Requirements on TCP flags: bits in `set` must be set, bits in `clear` must be clear,
/// others are ignored. Bits as in [`sesame_capture::frame::tcp_flags`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlagRule {
    pub set: u8,
    pub clear: u8,
}

impl TcpFlagRule {
    /// Whether a TCP packet with `flags` satisfies the rule.
    pub fn matches(self, flags: u8) -> bool {
        flags & self.set == self.set && flags & self.clear == 0
    }

    pub fn is_empty(self) -> bool {
        self.set == 0 && self.clear == 0
    }
}

/// A one-time-sequences file: one sequence per line, used lines get a `#` written
/// over their first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimeSequences {
    pub path: PathBuf,
}

/// A door: a knock sequence and what to run when it is knocked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Door {
    pub name: String,
    /// The sequence; for a one-time door, the current (first unused) line of its file.
    pub sequence: Vec<Step>,
    pub one_time: Option<OneTimeSequences>,
    /// sesame-only: ports derived per time step from a secret (`sequence` is empty then).
    pub rotating: Option<RotatingSequence>,
    /// Seconds for the whole sequence from the first knock.
    pub seq_timeout: u32,
    pub tcp_flags: TcpFlagRule,
    pub start_command: Option<String>,
    pub start_command_6: Option<String>,
    pub stop_command: Option<String>,
    pub stop_command_6: Option<String>,
    pub cmd_timeout: u32,
    pub target: Option<IpAddr>,
    /// sesame-only: what a knock opens for the knocker's address with a native backend.
    pub open: Vec<Port>,
    /// sesame-only: this door's backend, overriding `[firewall] backend`.
    pub backend: Option<BackendKind>,
    /// sesame-only: single-packet authorization instead of (or besides) a sequence.
    pub spa: Option<spa_door::SpaDoor>,
    /// Where the door and its keys were written (for `sesame check`'s warnings).
    pub lines: DoorLines,
}

/// The 1-based lines where a door and its keys were written; 0 = not written (a
/// default, or a door built in code).
///
/// Where a door was written is not part of what it means: two `DoorLines` are always
/// equal, so a door read from knockd.conf equals its TOML twin, and a reload that only
/// moves lines changes no door.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoorLines {
    /// The `[name]` header, or the `[[door]]` table.
    pub door: usize,
    /// `Sequence`, or `One_Time_Sequences` for a one-time door.
    pub sequence: usize,
    pub seq_timeout: usize,
    pub start_command: usize,
    pub start_command_6: usize,
    pub stop_command: usize,
    pub stop_command_6: usize,
    pub cmd_timeout: usize,
    /// `open` (sesame-only).
    pub open: usize,
}

impl DoorLines {
    /// `line`, or the door's own line when the key was not written.
    pub fn or_door(&self, line: usize) -> usize {
        if line == 0 {
            self.door
        } else {
            line
        }
    }
}

impl PartialEq for DoorLines {
    fn eq(&self, _: &DoorLines) -> bool {
        true
    }
}

impl Eq for DoorLines {}

impl Door {
    /// A door with knockd's defaults and the given sequence.
    pub fn new(name: impl Into<String>, sequence: Vec<Step>) -> Door {
        Door {
            name: name.into(),
            sequence,
            one_time: None,
            rotating: None,
            seq_timeout: DEFAULT_SEQ_TIMEOUT,
            tcp_flags: TcpFlagRule::default(),
            start_command: None,
            start_command_6: None,
            stop_command: None,
            stop_command_6: None,
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
            target: None,
            open: Vec::new(),
            backend: None,
            spa: None,
            lines: DoorLines::default(),
        }
    }

    /// The backend this door's grants go through: its own, else `[firewall] backend`
    /// for a door with `open`, else knockd's commands; `None` for a door that only logs.
    pub fn backend_in(&self, firewall: &FirewallSettings) -> Option<BackendKind> {
        if !self.open.is_empty() {
            Some(self.backend.unwrap_or(firewall.backend))
        } else if self.backend.is_some() {
            self.backend
        } else if self.start_command.is_some() || self.start_command_6.is_some() {
            Some(BackendKind::Command)
        } else {
            None
        }
    }

    /// Whether `open` and `backend` agree with the commands: a door opens either through
    /// a native backend (`open`) or through commands, never both, never neither half.
    pub fn check_backend(&self) -> Result<(), Problem> {
        let commands = self.start_command.is_some() || self.start_command_6.is_some();
        match (self.backend, self.open.is_empty()) {
            (Some(BackendKind::Command), false) => Err(Problem::Other(format!(
                "door '{}' has open = ... with backend command: open needs a native backend \
                 (nftables, iptables, ufw); a command door opens with start_command",
                self.name
            ))),
            (Some(b), true) if b != BackendKind::Command => Err(Problem::Other(format!(
                "door '{}' has backend {} but nothing to open: add open = 22/tcp (the ports a knock opens)",
                self.name,
                b.name()
            ))),
            (_, false) if commands => Err(Problem::Other(format!(
                "door '{}' has both open = ... and a start command: a door opens either through a \
                 native backend (open) or through commands, not both",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// The start command for a knocker at `ip` (IPv6 falls back to the IPv4 command).
    pub fn start_command_for(&self, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V6(_) => self.start_command_6.as_deref().or(self.start_command.as_deref()),
            IpAddr::V4(_) => self.start_command.as_deref(),
        }
        .filter(|c| !c.is_empty())
    }

    /// The stop command for a knocker at `ip` (IPv6 falls back to the IPv4 command).
    pub fn stop_command_for(&self, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V6(_) => self.stop_command_6.as_deref().or(self.stop_command.as_deref()),
            IpAddr::V4(_) => self.stop_command.as_deref(),
        }
        .filter(|c| !c.is_empty())
    }
}

/// What is wrong, without the where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("unknown key '{key}' in section [{section}]")]
    UnknownKey { key: String, section: String },
    #[error("key '{0}' appears before any [section]")]
    KeyOutsideSection(String),
    #[error("key '{key}' needs a value ('{key} = ...')")]
    MissingValue { key: String },
    #[error("invalid port '{0}': must be a whole number from 0 to 65535")]
    BadPort(String),
    #[error("unknown protocol '{0}': must be tcp or udp")]
    BadProtocol(String),
    #[error(
        "unknown TCP flag '{0}': must be one of fin, syn, rst, psh, ack, urg, optionally prefixed by '!'"
    )]
    BadFlag(String),
    #[error("TCP flag '{0}' is both required and forbidden")]
    ContradictoryFlag(String),
    #[error("invalid number '{value}' for {key}: must be a whole number of seconds from 0 to 4294967295")]
    BadNumber { key: String, value: String },
    #[error("invalid IP address '{0}' for Target")]
    BadAddress(String),
    #[error("section '{0}' has an empty knock sequence")]
    EmptySequence(String),
    #[error("sequence has {0} ports; at most 32 are allowed")]
    SequenceTooLong(usize),
    #[error("door '{0}' is one door too many: at most 65535 are allowed")]
    TooManyDoors(String),
    #[error("one-time sequences file {path}: {reason}")]
    OneTimeFile { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// A configuration error: file, line (1-based; 0 when it concerns the whole file) and problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {problem}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub problem: Problem,
}

/// Reading a file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Which syntax a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Knockd,
    Toml,
}

impl Syntax {
    /// `.toml` files are native; everything else is knockd.conf syntax.
    pub fn of(path: &Path) -> Syntax {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
            Syntax::Toml
        } else {
            Syntax::Knockd
        }
    }
}

impl Config {
    /// Reads and validates a config file, choosing the syntax by [`Syntax::of`].
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
        Ok(Config::parse(path, &text)?)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        match Syntax::of(path) {
            Syntax::Knockd => knockd::parse(path, text),
            Syntax::Toml => native::parse(path, text),
        }
    }
}

/// Refuses more than [`MAX_DOORS`] doors, at the first door too many.
pub(crate) fn check_door_count(path: &Path, doors: &[Door]) -> Result<(), ConfigError> {
    match doors.get(MAX_DOORS) {
        None => Ok(()),
        Some(door) => Err(ConfigError {
            file: path.to_owned(),
            line: door.lines.door,
            problem: Problem::TooManyDoors(door.name.clone()),
        }),
    }
}

/// Checks a list of interface names (`Interface = eth0,wg0`, `-i`, TOML's list):
/// each a name the kernel could accept, none empty, none twice.
pub fn parse_interfaces<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, Problem> {
    let names: Vec<&str> = names.into_iter().map(str::trim).collect();
    if names.len() == 1 && names[0].is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if name.is_empty() {
            return Err(Problem::Other("empty interface name in the interface list".into()));
        }
        if !sesame_capture::iface::valid_name(name) {
            return Err(Problem::Other(format!(
                "invalid interface name '{name}': 1 to 15 characters, no '/', ':' or spaces"
            )));
        }
        if out.iter().any(|n| n == name) {
            return Err(Problem::Other(format!("interface '{name}' is listed twice")));
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// Parses `open`: ports as `PORT/tcp` or `PORT/udp` (a bare port is TCP), no port twice.
pub fn parse_open<'a>(ports: impl IntoIterator<Item = &'a str>) -> Result<Vec<Port>, Problem> {
    let mut out: Vec<Port> = Vec::new();
    for text in ports {
        if text.trim().is_empty() {
            continue;
        }
        let port: Port = text.parse().map_err(Problem::Other)?;
        if out.contains(&port) {
            return Err(Problem::Other(format!("port {port} is listed twice in open")));
        }
        out.push(port);
    }
    Ok(out)
}

/// Parses one sequence element `PORT[:tcp|:udp]` (protocol case-insensitive, tcp by default).
pub fn parse_step(text: &str) -> Result<Step, Problem> {
    let text = text.trim();
    let (port, proto) = match text.split_once(':') {
        Some((p, proto)) => (p.trim(), Some(proto.trim())),
        None => (text, None),
    };
    let proto = match proto {
        None => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("tcp") => Proto::Tcp,
        Some(p) if p.eq_ignore_ascii_case("udp") => Proto::Udp,
        Some(p) => return Err(Problem::BadProtocol(p.to_owned())),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::BadPort(port.to_owned()));
    }
    let port: u16 = port.parse().map_err(|_| Problem::BadPort(port.to_owned()))?;
    Ok(Step { port, proto })
}

/// Parses a whole sequence `p[:proto],p[:proto],...` (at most [`MAX_SEQUENCE`]).
pub fn parse_sequence(text: &str) -> Result<Vec<Step>, Problem> {
    let steps =
        text.split(',').filter(|s| !s.trim().is_empty()).map(parse_step).collect::<Result<Vec<_>, _>>()?;
    if steps.len() > MAX_SEQUENCE {
        return Err(Problem::SequenceTooLong(steps.len()));
    }
    Ok(steps)
}
