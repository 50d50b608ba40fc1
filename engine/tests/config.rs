//! Acceptance tests for configuration: the seed knockd.conf files, both syntaxes' errors,
//! knockd.conf → TOML → Config round trips, and one-time sequences files.

use sesame_capture::frame::tcp_flags::{ACK, FIN, RST, SYN};
use sesame_capture::Proto;
use sesame_engine::config::onetime::OneTimeFile;
use sesame_engine::config::{
    knockd, native, Config, ConfigError, Door, OneTimeSequences, Options, Problem, Step, TcpFlagRule,
    DEFAULT_CMD_TIMEOUT, DEFAULT_SEQ_TIMEOUT,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const GOOD_KNOCKD: [&str; 4] = ["debian.conf", "openssh_iptables.conf", "ufw.conf", "every_key.conf"];
const GOOD_TOML: [&str; 2] = ["debian.toml", "every_key.toml"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str) -> Config {
    Config::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn tcp(port: u16) -> Step {
    Step { port, proto: Proto::Tcp }
}

fn udp(port: u16) -> Step {
    Step { port, proto: Proto::Udp }
}

fn syn_only() -> TcpFlagRule {
    TcpFlagRule { set: SYN, clear: 0 }
}

/// A door as knockd.conf would give it, for comparing whole structs.
fn door(name: &str, sequence: Vec<Step>, seq_timeout: u32, start: &str) -> Door {
    let mut d = Door::new(name, sequence);
    d.seq_timeout = seq_timeout;
    d.tcp_flags = syn_only();
    d.start_command = Some(start.to_owned());
    d
}

/// A scratch directory unique to one test, removed when the test ends.
fn scratch(_test: &str) -> sesame_lab::TempDir {
    sesame_lab::TempDir::new("cfg").unwrap()
}

fn same_except_source(a: &Config, b: &Config) -> bool {
    a.options == b.options && a.doors == b.doors
}

// ---- the seed configurations -------------------------------------------------------

#[test]
fn debian_default_knockd_conf() {
    let c = load("debian.conf");
    assert_eq!(c.source, fixture("debian.conf"));
    assert_eq!(
        c.options,
        Options { use_syslog: true, log_file: None, pid_file: None, interfaces: Vec::new() }
    );
    let iptables = "/sbin/iptables";
    assert_eq!(
        c.doors,
        vec![
            door(
                "openSSH",
                vec![tcp(7000), tcp(8000), tcp(9000)],
                5,
                &format!("{iptables} -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT")
            ),
            door(
                "closeSSH",
                vec![tcp(9000), tcp(8000), tcp(7000)],
                5,
                &format!("{iptables} -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT")
            ),
            door(
                "openHTTPS",
                vec![tcp(12345), tcp(54321), tcp(24680), tcp(13579)],
                5,
                "/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%"
            ),
        ]
    );
    for d in &c.doors {
        assert_eq!(d.cmd_timeout, DEFAULT_CMD_TIMEOUT);
        assert_eq!((d.stop_command.as_ref(), d.start_command_6.as_ref(), d.target), (None, None, None));
        assert_eq!(d.one_time, None);
    }
}

#[test]
fn seed_openssh_closessh_with_iptables_append() {
    let c = load("openssh_iptables.conf");
    assert!(c.options.use_syslog);
    assert_eq!(
        c.doors,
        vec![
            door(
                "openSSH",
                vec![tcp(7000), tcp(8000), tcp(9000)],
                5,
                "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
            ),
            door(
                "closeSSH",
                vec![tcp(9000), tcp(8000), tcp(7000)],
                5,
                "/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
            ),
        ]
    );
}

#[test]
fn seed_ufw_with_stop_command() {
    let c = load("ufw.conf");
    assert_eq!(c.options, Options { use_syslog: true, ..Options::default() });
    let mut want = door(
        "openSSH",
        vec![tcp(7000), tcp(8000), tcp(9000)],
        5,
        "/usr/sbin/ufw allow from %IP% to any port 22 proto tcp",
    );
    want.cmd_timeout = 30;
    want.stop_command = Some("/usr/sbin/ufw delete allow from %IP% to any port 22 proto tcp".into());
    assert_eq!(c.doors, vec![want]);
}

#[test]
fn every_key_with_case_aliases_and_odd_values() {
    let c = load("every_key.conf");
    assert_eq!(
        c.options,
        Options {
            use_syslog: true,
            log_file: Some("/var/log/knockd.log".into()),
            pid_file: Some("/run/knockd.pid".into()),
            interfaces: vec!["wlan0".into()],
        }
    );
    let smtp = Door {
        name: "opencloseSMTP".into(),
        sequence: vec![udp(2222), tcp(3333), udp(4444)],
        one_time: None,
        rotating: None,
        seq_timeout: 15,
        tcp_flags: TcpFlagRule { set: FIN, clear: ACK | RST },
        start_command: Some(
            "/usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT # not a comment".into(),
        ),
        start_command_6: Some("/usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 25 -j ACCEPT".into()),
        stop_command: Some("/usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT".into()),
        stop_command_6: Some("/usr/sbin/ip6tables -D INPUT -s %IP% -p tcp --dport 25 -j ACCEPT".into()),
        cmd_timeout: 5,
        target: Some("2001:db8::1".parse().unwrap()),
        open: Vec::new(),
        backend: None,
        spa: None,
        lines: Default::default(),
    };
    let wake = Door {
        name: "wake up".into(),
        sequence: vec![tcp(0), udp(65535)],
        seq_timeout: 0,
        start_command: Some("/usr/bin/logger --tag=knock --priority=user.notice a=b=c".into()),
        start_command_6: Some(String::new()),
        target: Some("198.18.0.1".parse().unwrap()),
        ..Door::new("", vec![])
    };
    assert_eq!(c.doors, vec![smtp, wake]);
    // An empty IPv6 command means "do nothing" rather than "use the IPv4 one".
    let v6: IpAddr = "2001:db8::9".parse().unwrap();
    assert_eq!(c.doors[1].start_command_for(v6), None);
}

#[test]
fn native_fixtures_mean_the_same_as_their_knockd_twins() {
    for (conf, toml) in [("debian.conf", "debian.toml"), ("every_key.conf", "every_key.toml")] {
        let (a, b) = (load(conf), load(toml));
        assert!(same_except_source(&a, &b), "{conf} vs {toml}:\n{a:#?}\n{b:#?}");
    }
}

#[test]
fn defaults_when_keys_are_absent() {
    let c = knockd::parse(Path::new("k.conf"), "[d]\nsequence = 1\n").unwrap();
    assert_eq!(c.options, Options::default());
    assert_eq!(c.doors, vec![Door::new("d", vec![tcp(1)])]);
    assert_eq!((c.doors[0].seq_timeout, c.doors[0].cmd_timeout), (DEFAULT_SEQ_TIMEOUT, DEFAULT_CMD_TIMEOUT));
    let n = native::parse(Path::new("k.toml"), "[[door]]\nname = \"d\"\nsequence = [1]\n").unwrap();
    assert!(same_except_source(&c, &n));
    assert!(native::parse(Path::new("empty.toml"), "").unwrap().doors.is_empty());
}

// ---- syntax details ----------------------------------------------------------------

#[test]
fn knockd_keys_are_case_insensitive_and_aliases_work() {
    let a = "[options]\nUseSyslog\n[d]\nSequence = 1\nSeq_Timeout = 3\nStart_Command = a\n\
             Start_Command_6 = b\nCmd_Timeout = 4\n";
    let b =
        "[options]\nusesyslog\n[d]\nSEQUENCE = 1\ntimeout = 3\ncommand = a\nCOMMAND_6 = b\ncmd_TIMEOUT = 4\n";
    let (a, b) = (knockd::parse(Path::new("a"), a).unwrap(), knockd::parse(Path::new("a"), b).unwrap());
    assert_eq!(a, b);
    assert!(a.options.use_syslog);
    assert_eq!(a.doors[0].seq_timeout, 3);
    assert_eq!(a.doors[0].start_command_6.as_deref(), Some("b"));
}

#[test]
fn knockd_values_keep_equals_and_hashes_and_options_is_case_sensitive() {
    let text = "[Options]\nsequence = 1\ncommand = run --x=y #1 a==b\n";
    let c = knockd::parse(Path::new("a"), text).unwrap();
    // Only the exact "[options]" is global; "[Options]" is a door, as in knockd.
    assert_eq!(c.doors[0].name, "Options");
    assert_eq!(c.doors[0].start_command.as_deref(), Some("run --x=y #1 a==b"));
}

#[test]
fn knockd_one_time_sequences_override_sequence() {
    let dir = scratch("override");
    let otp = dir.join("otp");
    std::fs::write(&otp, "# used up\n 1111:udp,2222\n3333\n").unwrap();
    let text = format!("[d]\nsequence = 7000\none_time_sequences = {}\n", otp.display());
    let c = knockd::parse(Path::new("a.conf"), &text).unwrap();
    assert_eq!(c.doors[0].sequence, vec![udp(1111), tcp(2222)]);
    assert_eq!(c.doors[0].one_time, Some(OneTimeSequences { path: otp.clone() }));

    let toml = format!("[[door]]\nname = \"d\"\none_time_sequences = {:?}\n", otp.display().to_string());
    let n = native::parse(Path::new("a.toml"), &toml).unwrap();
    assert!(same_except_source(&c, &n));
}

#[test]
fn exhausted_one_time_file_gives_an_empty_sequence_not_an_error() {
    let dir = scratch("exhausted");
    let otp = dir.join("otp");
    std::fs::write(&otp, "#000\n# \n\n").unwrap();
    let c =
        knockd::parse(Path::new("a.conf"), &format!("[d]\none_time_sequences={}\n", otp.display())).unwrap();
    assert!(c.doors[0].sequence.is_empty());
    assert!(c.doors[0].one_time.is_some());
    assert!(c.summary().contains("door disabled"));
    let back = native::parse(Path::new("a.toml"), &native::to_toml(&c)).unwrap();
    assert!(same_except_source(&c, &back));
}

#[test]
fn one_time_file_problems_point_at_the_config_line_and_name_the_file() {
    let dir = scratch("otp-errors");
    let missing = dir.join("missing");
    let text = format!("[d]\n\none_time_sequences = {}\n", missing.display());
    let e = knockd::parse(Path::new("a.conf"), &text).unwrap_err();
    assert_eq!((e.file.as_path(), e.line), (Path::new("a.conf"), 3));
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");

    let bad = dir.join("bad");
    std::fs::write(&bad, "#used\n7000,abc\n").unwrap();
    let text = format!("[d]\none_time_sequences = {}\n", bad.display());
    let e = knockd::parse(Path::new("a.conf"), &text).unwrap_err();
    let shown = e.to_string();
    assert_eq!(e.line, 2);
    for want in ["a.conf:2:", &bad.display().to_string(), "line 2", "'abc'"] {
        assert!(shown.contains(want), "{want:?} not in {shown}");
    }
    let toml = format!("[[door]]\nname = \"d\"\n\none_time_sequences = {:?}\n", bad.display().to_string());
    let e = native::parse(Path::new("a.toml"), &toml).unwrap_err();
    assert_eq!(e.line, 4);
    assert!(e.to_string().contains("'abc'"), "{e}");
}

// ---- errors: file, line and value, for both syntaxes ------------------------------

struct Bad {
    what: &'static str,
    knockd: &'static str,
    knockd_line: usize,
    toml: &'static str,
    toml_line: usize,
    problem: Problem,
    /// Text the message must show: the offending value.
    value: &'static str,
}

fn bad_inputs() -> Vec<Bad> {
    let ports33 = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33";
    let toml33 =
        "[options]\n[[door]]\nname = \"d\"\nsequence = \"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,\
                  20,21,22,23,24,25,26,27,28,29,30,31,32,33\"\n";
    assert_eq!(ports33.split(',').count(), 33);
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        Bad {
            what: "port 70000",
            knockd: "[options]\nUseSyslog\n\n[openSSH]\nsequence = 7000,70000,9000\n",
            knockd_line: 5,
            toml: "[[door]]\nname = \"openSSH\"\nsequence = [\n  7000,\n  70000,\n  9000,\n]\n",
            toml_line: 5,
            problem: Problem::BadPort("70000".into()),
            value: "70000",
        },
        Bad {
            what: "port abc",
            knockd: "[openSSH]\n# comment\nsequence = 7000,abc\n",
            knockd_line: 3,
            toml: "[[door]]\nname = \"openSSH\"\nsequence = [\"7000\", \"abc\"]\n",
            toml_line: 3,
            problem: Problem::BadPort("abc".into()),
            value: "abc",
        },
        Bad {
            what: "unknown key",
            knockd: "[openSSH]\nsequence = 1\nfrobnicate = 3\n",
            knockd_line: 3,
            toml: "[[door]]\nname = \"openSSH\"\nsequence = [1]\nfrobnicate = 3\n",
            toml_line: 4,
            problem: Problem::UnknownKey { key: "frobnicate".into(), section: "openSSH".into() },
            value: "frobnicate",
        },
        Bad {
            what: "empty sequence",
            knockd: "[options]\nUseSyslog\n[openSSH]\nseq_timeout = 5\ncommand = x\n",
            knockd_line: 3,
            toml: "[options]\nuse_syslog = true\n[[door]]\nname = \"openSSH\"\nsequence = []\n",
            toml_line: 5,
            problem: Problem::EmptySequence("openSSH".into()),
            value: "openSSH",
        },
        Bad {
            what: "unknown protocol",
            knockd: "[d]\nsequence = 7000:icmp,8000\n",
            knockd_line: 2,
            toml: "[[door]]\nname = \"d\"\nsequence = [\"7000:icmp\", \"8000\"]\n",
            toml_line: 3,
            problem: Problem::BadProtocol("icmp".into()),
            value: "icmp",
        },
        Bad {
            what: "bad flag",
            knockd: "[d]\nsequence = 1\ntcpflags = syn,foo\n",
            knockd_line: 3,
            toml: "[[door]]\nname = \"d\"\nsequence = [1]\ntcp_flags = [\"syn\", \"foo\"]\n",
            toml_line: 4,
            problem: Problem::BadFlag("foo".into()),
            value: "foo",
        },
        Bad {
            what: "bad timeout",
            knockd: "[d]\nsequence = 1\nseq_timeout = -5\n",
            knockd_line: 3,
            toml: "[[door]]\nname = \"d\"\nsequence = [1]\nseq_timeout = -5\n",
            toml_line: 4,
            problem: Problem::BadNumber { key: "seq_timeout".into(), value: "-5".into() },
            value: "-5",
        },
        Bad {
            what: "bad target",
            knockd: "[d]\nsequence = 1\ntarget = 198.18.0.300\n",
            knockd_line: 3,
            toml: "[[door]]\nname = \"d\"\nsequence = [1]\ntarget = \"198.18.0.300\"\n",
            toml_line: 4,
            problem: Problem::BadAddress("198.18.0.300".into()),
            value: "198.18.0.300",
        },
        Bad {
            what: "key outside section",
            knockd: "# top\nsequence = 1\n[d]\nsequence = 1\n",
            knockd_line: 2,
            toml: "# top\nsequence = [1]\n[[door]]\nname = \"d\"\nsequence = [1]\n",
            toml_line: 2,
            // TOML has a top level, so there the key is simply unknown there.
            problem: Problem::KeyOutsideSection("sequence".into()),
            value: "sequence",
        },
        Bad {
            what: "33 ports",
            knockd: leak(format!("[d]\n\nsequence = {ports33}\n")),
            knockd_line: 3,
            toml: toml33,
            toml_line: 4,
            problem: Problem::SequenceTooLong(33),
            value: "33",
        },
    ]
}

fn check_error(what: &str, e: &ConfigError, file: &Path, line: usize, value: &str) {
    assert_eq!(e.file, file, "{what}");
    assert_eq!(e.line, line, "{what}: {e}");
    let shown = e.to_string();
    let location = format!("{}:{line}:", file.display());
    assert!(shown.starts_with(&location), "{what}: {shown:?} does not start with {location:?}");
    assert!(shown.contains(value), "{what}: {shown:?} does not name {value:?}");
}

#[test]
fn knockd_errors_name_file_line_and_value() {
    let file = Path::new("/etc/knockd.conf");
    for bad in bad_inputs() {
        let e = knockd::parse(file, bad.knockd).expect_err(bad.what);
        assert_eq!(e.problem, bad.problem, "{}", bad.what);
        check_error(bad.what, &e, file, bad.knockd_line, bad.value);
    }
}

#[test]
fn toml_errors_name_file_line_and_value() {
    let file = Path::new("/etc/sesame/sesame.toml");
    for bad in bad_inputs() {
        let e = native::parse(file, bad.toml).expect_err(bad.what);
        let want = match bad.problem {
            Problem::UnknownKey { key, .. } => Problem::UnknownKey { key, section: "door".into() },
            Problem::KeyOutsideSection(key) => Problem::UnknownKey { key, section: "top level".into() },
            p => p,
        };
        assert_eq!(e.problem, want, "{}", bad.what);
        check_error(bad.what, &e, file, bad.toml_line, bad.value);
    }
}

#[test]
fn config_parse_picks_the_syntax_by_extension() {
    for bad in bad_inputs() {
        assert!(Config::parse(Path::new("x.conf"), bad.knockd).is_err());
        assert!(Config::parse(Path::new("x.TOML"), bad.toml).is_err());
    }
    let text = std::fs::read_to_string(fixture("debian.toml")).unwrap();
    assert!(Config::parse(Path::new("x.conf"), &text).is_err());
    assert!(Config::parse(Path::new("x.toml"), &text).is_ok());
}

#[test]
fn more_knockd_errors() {
    let cases: [(&str, usize, &str); 8] = [
        ("[d\nsequence = 1\n", 1, "[d"),
        ("[]\n", 1, "[]"),
        ("[d]\nsequence = 1\ntcpflags = syn,!syn\n", 3, "syn"),
        ("[d]\nsequence = 1\ncmd_timeout = 4294967296\n", 3, "4294967296"),
        ("[d]\nsequence = 7000x\n", 2, "7000x"),
        ("[d]\nsequence = 1:\n", 2, "''"),
        ("[options]\nsequence = 1\n", 2, "sequence"),
        ("[d]\nsequence = 1\nInterface = eth1\n", 3, "Interface"),
    ];
    for (text, line, value) in cases {
        let e = knockd::parse(Path::new("k.conf"), text).expect_err(text);
        check_error(text, &e, Path::new("k.conf"), line, value);
    }
}

// ---- knockd.conf → TOML → Config ---------------------------------------------------

#[test]
fn knockd_to_toml_round_trips() {
    for name in GOOD_KNOCKD {
        let original = load(name);
        let toml = native::to_toml(&original);
        let back = native::parse(Path::new("converted.toml"), &toml)
            .unwrap_or_else(|e| panic!("{name}: {e}\n--- converted ---\n{toml}"));
        assert!(same_except_source(&original, &back), "{name}\n{toml}");
        assert_eq!(back.source, Path::new("converted.toml"));
    }
}

#[test]
fn toml_to_toml_round_trips() {
    for name in GOOD_TOML {
        let original = load(name);
        let back = native::parse(Path::new("again.toml"), &native::to_toml(&original)).unwrap();
        assert!(same_except_source(&original, &back), "{name}");
    }
}

#[test]
fn converted_toml_reads_naturally() {
    let toml = native::to_toml(&load("every_key.conf"));
    for want in [
        "[options]\nuse_syslog = true\n",
        "[[door]]\nname = \"opencloseSMTP\"\n",
        "sequence = [\"2222:udp\", \"3333:tcp\", \"4444:udp\"]",
        "tcp_flags = [\"fin\", \"!rst\", \"!ack\"]",
        "target = \"2001:db8::1\"",
        "start_command_6 = \"\"",
        "cmd_timeout = 5",
    ] {
        assert!(toml.contains(want), "{want:?} not in\n{toml}");
    }
}

#[test]
fn summary_lists_options_and_every_door() {
    let s = load("ufw.conf").summary();
    for want in [
        "ufw.conf: 1 door",
        "use syslog:      yes",
        "door openSSH:",
        "sequence:        7000:tcp,8000:tcp,9000:tcp",
        "seq_timeout:     5s",
        "tcp flags:       syn",
        "start command:   /usr/sbin/ufw allow from %IP% to any port 22 proto tcp",
        "stop command:    /usr/sbin/ufw delete allow from %IP% to any port 22 proto tcp",
        "cmd_timeout:     30s",
    ] {
        assert!(s.contains(want), "{want:?} not in\n{s}");
    }
    assert_eq!(load("debian.conf").summary().matches("door ").count(), 3);
}

// ---- one-time sequences files --------------------------------------------------------

#[test]
fn one_time_current_mark_next_and_exhaustion() {
    let dir = scratch("onetime");
    let path = dir.join("smtp_sequences");
    let text = "# one-time sequences\n 7000,8000:udp,9000\n\n 1111:udp,2222\n   # retired by hand\n3333\n";
    std::fs::write(&path, text).unwrap();
    let file = OneTimeFile::open(&path).unwrap();
    assert_eq!(file.path(), path);

    let first = file.current().unwrap().unwrap();
    assert_eq!((first.line, first.offset), (2, "# one-time sequences\n".len() as u64));
    assert_eq!(first.sequence, vec![tcp(7000), udp(8000), tcp(9000)]);
    // current() does not consume anything.
    assert_eq!(file.current().unwrap(), Some(first.clone()));

    file.mark_used(&first).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after.len(), text.len(), "length kept");
    let diff: Vec<usize> = (0..after.len()).filter(|&i| after[i] != text.as_bytes()[i]).collect();
    assert_eq!(diff, vec![first.offset as usize], "exactly one byte changed");
    assert_eq!(after[first.offset as usize], b'#');

    let second = file.current().unwrap().unwrap();
    assert_eq!((second.line, second.sequence.clone()), (4, vec![udp(1111), tcp(2222)]));
    file.mark_used(&second).unwrap();

    // Without a leading space the first digit is overwritten, as with knockd.
    let third = file.current().unwrap().unwrap();
    assert_eq!((third.line, third.sequence.clone()), (6, vec![tcp(3333)]));
    file.mark_used(&third).unwrap();
    assert_eq!(file.current().unwrap(), None);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "# one-time sequences\n#7000,8000:udp,9000\n\n#1111:udp,2222\n   # retired by hand\n#333\n"
    );
}

#[test]
fn one_time_bad_line_names_the_file_and_line() {
    let dir = scratch("onetime-bad");
    let path = dir.join("seqs");
    std::fs::write(&path, "#used\n\n7000,70000\n8000\n").unwrap();
    let e = OneTimeFile::open(&path).unwrap().current().unwrap_err();
    assert_eq!(
        (e.file.as_path(), e.line, e.problem.clone()),
        (path.as_path(), 3, Problem::BadPort("70000".into()))
    );
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{}:3:", path.display())) && shown.contains("70000"), "{shown}");
}

#[test]
fn one_time_missing_file_is_an_error() {
    let missing_dir = scratch("onetime-missing");
    let path = missing_dir.join("nope");
    let e = OneTimeFile::open(&path).unwrap_err();
    assert_eq!((e.file.as_path(), e.line), (path.as_path(), 0));
    assert!(e.to_string().contains(&path.display().to_string()));
}
