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
