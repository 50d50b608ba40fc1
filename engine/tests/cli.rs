//! The binaries' command lines: validation before anything is opened, exit codes,
//! `sesame check` and `sesame convert`. No root needed.

use sesame_lab::TempDir;
use std::path::Path;
use std::process::{Command, Output};

const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");
const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("run binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config whose door `[d]` has `line` as its third line, with a LogFile in `dir`.
fn bad_config(dir: &TempDir, line: &str) -> (String, String) {
    let log = dir.join("knockd.log");
    let conf = dir.join("bad.conf");
    std::fs::write(&conf, format!("[options]\nLogFile = {}\n[d]\n{line}\ncommand = true\n", log.display()))
        .unwrap();
    (conf.display().to_string(), log.display().to_string())
}

#[test]
fn sesamed_rejects_bad_configs_with_file_line_and_value_before_opening_anything() {
    let cases = [
        ("sequence = 7000,70000", "70000"),
        ("sequence = 7000,abc", "abc"),
        ("sequence = 7000:icmp", "icmp"),
        ("tcpflags = syn,bogus", "bogus"),
        ("frobnicate = 1", "frobnicate"),
        ("sequence =", "empty knock sequence"),
        ("seq_timeout = soon", "soon"),
    ];
    for (line, value) in cases {
        let dir = TempDir::new("cli").unwrap();
        let (conf, log) = bad_config(&dir, line);
        // `lo` exists everywhere: the failure must come from the config, not the interface.
        let out = run(SESAMED, &["-i", "lo", "-c", &conf]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(err.contains(&format!("{conf}:4:")), "{line}: no file:line in {err}");
        assert!(err.contains(value), "{line}: value {value} not named in {err}");
        assert!(!Path::new(&log).exists(), "{line}: the log file was opened for a bad config");
    }
}

#[test]
fn sesamed_exit_codes_for_missing_config_interface_and_bad_flags() {
    let out = run(SESAMED, &["-c", "/nonexistent/knockd.conf", "-i", "lo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/knockd.conf"), "{}", stderr(&out));

    let out = run(SESAMED, &["-c", &fixture("ufw.conf"), "-i", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nosuchif0"), "{}", stderr(&out));

    // 64 workers' smallest rings alone take 16 MiB: the error names the flag, not a
    // line of the config file.
    let out = run(SESAMED, &["-c", &fixture("ufw.conf"), "-i", "lo", "--workers", "64", "--memory-mib", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--memory-mib 1: 1 MiB is too small for 64 workers"), "{err}");
    assert!(!err.contains("ufw.conf:"), "{err}");
    // The same from the TOML config names the key and the file.
    let dir = TempDir::new("cli").unwrap();
    let toml = dir.join("small.toml");
    std::fs::write(
        &toml,
        "[limits]\nmemory_mib = 2\n[capture]\nworkers = 32\n[[door]]\nname = \"d\"\nsequence = [1, 2]\n",
    )
    .unwrap();
    let out = run(SESAMED, &["-c", &toml.display().to_string(), "-i", "lo"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("memory_mib = 2 in {}", toml.display())), "{err}");
    // -i takes interface names only.
    let out = run(SESAMED, &["-c", &fixture("ufw.conf"), "-i", "a/b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'a/b'"), "{}", stderr(&out));

    let out = run(SESAMED, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(SESAMED, &["-V"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("knockd 0.8 compatible"));
    let out = run(SESAMED, &["-h"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for flag in ["-i", "-d", "-c", "-D", "-l", "-p", "-g", "-v", "-4", "-V", "-h"] {
        assert!(
            help.contains(&format!("{flag},")) || help.contains(&format!("{flag} ")),
            "{flag} missing: {help}"
        );
    }
}

#[test]
fn check_summarises_doors_and_rejects_bad_files() {
    let out = run(SESAME, &["check", &fixture("ufw.conf")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("door openSSH"), "{text}");
    assert!(text.contains("7000:tcp,8000:tcp,9000:tcp"), "{text}");
    assert!(text.contains("ufw delete allow from %IP%"), "{text}");
    assert!(text.contains("OK"), "{text}");

    let dir = TempDir::new("cli").unwrap();
    let (conf, _) = bad_config(&dir, "sequence = 7000,70000");
    let out = run(SESAME, &["check", &conf]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{conf}:4:")) && stderr(&out).contains("70000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn convert_prints_toml_that_checks_and_means_the_same() {
    let dir = TempDir::new("cli").unwrap();
    for name in ["debian.conf", "ufw.conf", "openssh_iptables.conf", "every_key.conf"] {
        let out = run(SESAME, &["convert", &fixture(name)]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let toml = dir.join(&format!("{name}.toml"));
        std::fs::write(&toml, &out.stdout).unwrap();
        let original = sesame_engine::config::Config::load(Path::new(&fixture(name))).unwrap();
        let converted = sesame_engine::config::Config::load(&toml).unwrap();
        assert_eq!(original.options, converted.options, "{name}");
        assert_eq!(original.doors, converted.doors, "{name}");
        let out = run(SESAME, &["check", &toml.display().to_string()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
    }
}

/// `sesame check [--strict] FILE` on `text` written to `dir/name`: (status, stderr
/// warnings, stdout, path).
fn check_text(
    dir: &TempDir,
    name: &str,
    text: &str,
    strict: bool,
) -> (Option<i32>, Vec<String>, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    let mut args = vec!["check", path.as_str()];
    if strict {
        args.push("--strict");
    }
    let out = run(SESAME, &args);
    let warnings = stderr(&out).lines().filter(|l| l.starts_with("warning: ")).map(str::to_owned).collect();
    (out.status.code(), warnings, String::from_utf8_lossy(&out.stdout).into_owned(), path)
}

#[test]
fn check_warns_about_the_debian_default_config_and_strict_fails() {
    let conf = fixture("debian.conf");
    let out = run(SESAME, &["check", &conf]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "warnings alone do not fail: {err}");
    for (line, want) in [
        (5, "door 'openSSH': sequence 7000,8000,9000 is an example from knockd's documentation"),
        (5, "door 'openSSH': sequence 7000,8000,9000 is in rising port order"),
        (7, "appends its ACCEPT rule with /sbin/iptables -A INPUT"),
        (7, "has no stop command, so what it opens stays open for ever"),
        (11, "door 'closeSSH': sequence 9000,8000,7000 is an example"),
        (11, "door 'closeSSH': sequence 9000,8000,7000 is in falling port order"),
    ] {
        let prefix = format!("warning: {conf}:{line}: ");
        assert!(
            err.lines().any(|l| l.starts_with(&prefix) && l.contains(want)),
            "no {prefix}...{want} in\n{err}"
        );
    }
    assert!(err.contains("fix: insert it at the top instead: /sbin/iptables -I INPUT"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK, 7 warnings"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(SESAME, &["check", "--strict", &conf]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--strict"), "{}", stderr(&out));
}

#[test]
fn check_warns_once_per_weakness_with_its_line_in_both_syntaxes() {
    let dir = TempDir::new("cli").unwrap();
    let good = "sequence = 31337,6111,40001\nseq_timeout = 10\ncommand = /usr/sbin/iptables -I INPUT -s %IP% -p tcp \
                --dport 22 -j ACCEPT\nstop_command = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n";
    let (code, warnings, stdout, _) = check_text(&dir, "good.conf", &format!("[d]\n{good}"), true);
    assert_eq!((code, warnings.len()), (Some(0), 0), "{warnings:?}");
    assert!(stdout.ends_with(": OK\n"), "{stdout}");
    // Each case changes one line of the good door (line 2 = sequence, 3 = seq_timeout,
    // 4 = command, 5 = stop_command) and must draw exactly one warning, on that line
    // (knockd's examples all rise or fall, so they also draw the monotonic one).
    let cases = [
        ("sequence = 31337,6111,40001", "sequence = 9000,8000,7000", 2, "example from knockd's", 2),
        ("sequence = 31337,6111,40001", "sequence = 2222,3333,4444", 2, "example from knockd's", 2),
        ("sequence = 31337,6111,40001", "sequence = 1000,2000,3000,4000", 2, "rising port order", 1),
        ("sequence = 31337,6111,40001", "sequence = 40001,6111", 2, "has 2 knocks", 1),
        (
            "sequence = 31337,6111,40001",
            "sequence = 31337,3389,40001",
            2,
            "3389 (rdp), the port of a common service",
            1,
        ),
        (
            "sequence = 31337,6111,40001",
            "sequence = 31337,6111,6111,40001",
            2,
            "knocks 6111:tcp twice in a row",
            1,
        ),
        ("seq_timeout = 10", "seq_timeout = 3", 3, "seq_timeout 3 s is under 5 s", 1),
        ("seq_timeout = 10", "seq_timeout = 300", 3, "seq_timeout 300 s is over 60 s", 1),
        (
            "stop_command = /usr/sbin/iptables -D",
            "# stop_command = /usr/sbin/iptables -D",
            4,
            "stays open for ever",
            1,
        ),
    ];
    for (from, to, line, want, count) in cases {
        let text = format!("[d]\n{}", good.replace(from, to));
        let (code, warnings, _, path) = check_text(&dir, "one.conf", &text, false);
        assert_eq!(code, Some(0), "{to}");
        assert_eq!(warnings.len(), count, "{to}: {warnings:?}");
        let prefix = format!("warning: {path}:{line}: door 'd': ");
        assert!(warnings.iter().all(|w| w.starts_with(&prefix)), "{to}: {warnings:?}");
        assert!(warnings[0].contains(want), "{to}: {warnings:?}");
        assert!(warnings.iter().all(|w| w.contains("; fix: ")), "a warning says how to fix it: {warnings:?}");
        let (code, _, _, _) = check_text(&dir, "one.conf", &text, true);
        assert_eq!(code, Some(1), "{to} with --strict");
    }
    // -A (an ACCEPT appended after the DROP) on the command line, line 4.
    let text = format!("[d]\n{}", good.replace("iptables -I INPUT", "iptables -A INPUT"));
    let (_, warnings, _, path) = check_text(&dir, "append.conf", &text, false);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!("warning: {path}:4: ")) && warnings[0].contains("-A INPUT"),
        "{warnings:?}"
    );
    // The same weaknesses in TOML point at the TOML lines.
    let toml = "[options]\n\n[[door]]\nname = \"ssh\"\nsequence = [\n  7000,\n  8000,\n  9000,\n]\nseq_timeout = 4\n\
                start_command = \"iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\"\n";
    let (_, warnings, _, path) = check_text(&dir, "s.toml", toml, false);
    let lines: Vec<&str> = warnings
        .iter()
        .map(|w| w.strip_prefix(&format!("warning: {path}:")).unwrap().split(':').next().unwrap())
        .collect();
    assert_eq!(lines, ["5", "5", "10", "11", "11"], "{warnings:?}");
}
