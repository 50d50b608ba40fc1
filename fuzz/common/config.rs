//! What both config targets check, whatever the text: the daemon's own path
//! (`Config::parse`, as `Config::load` calls it after `read_to_string`, then
//! `Doors::new` and the kernel filter as `sesamed` builds them at start and reload)
//! and `sesame check`'s (`summary` and `check::lint`), plus `sesame convert`'s round trip.

use sesame_capture::Link;
use sesame_engine::check;
use sesame_engine::config::{native, Config};
use sesame_engine::doors::Doors;
use std::net::IpAddr;
use std::path::Path;

/// Which syntax, by file name as `Syntax::of` chooses it (each target uses one).
#[allow(dead_code)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Knockd,
    Toml,
}

/// The bytes the daemon would get: `Config::load` reads with `read_to_string`, so
/// anything but UTF-8 is an I/O error before any parser runs. `None` also for texts
/// naming a one-time-sequences file under /dev, /proc or /sys: parsing reads that file,
/// and `/dev/zero` or a FIFO would hang the fuzzer, not the parser.
pub fn text(data: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(data).ok()?;
    let lower = text.to_ascii_lowercase();
    let special = ["/dev", "/proc", "/sys"].iter().any(|p| lower.contains(p));
    (!(special && lower.contains("one_time"))).then_some(text)
}

pub fn run(syntax: Syntax, text: &str) {
    let path = Path::new(match syntax {
        Syntax::Knockd => "/etc/knockd.conf",
        Syntax::Toml => "/etc/sesame.toml",
    });
    let result = Config::parse(path, text);
    // Same input, same answer (a reload of an unchanged file changes nothing).
    assert_eq!(result, Config::parse(path, text), "parsing the same text twice differs");
    if std::env::var_os("FUZZ_PRINT").is_some() {
        // To see what a seed or a corpus entry does: FUZZ_PRINT=1 target -runs=0 FILE.
        match &result {
            Ok(c) => eprintln!("ok: {} door(s), {} warning(s)", c.doors.len(), check::lint(c).len()),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    let lines = text.lines().count();
    let config = match result {
        Err(e) => {
            let message = e.to_string();
            let problem = e.problem.to_string();
            assert!(!problem.trim().is_empty(), "empty problem: {e:?}");
            assert!(message.starts_with(&format!("{}:{}: ", path.display(), e.line)), "{message}");
            match syntax {
                // Every knockd.conf error is about one line of the file.
                Syntax::Knockd => {
                    assert!((1..=lines).contains(&e.line), "line {} of {lines}: {message}", e.line)
                }
                // toml may point just past the last newline (an unterminated value).
                Syntax::Toml => assert!(e.line <= lines + 1, "line {} of {lines}: {message}", e.line),
            }
            return;
        }
        Ok(config) => config,
    };
    assert_eq!(config.source, path);
    for door in &config.doors {
        assert!(!door.name.is_empty());
        assert!(
            !door.sequence.is_empty() || door.one_time.is_some(),
            "door '{}' without sequence",
            door.name
        );
        assert!(door.sequence.len() <= 32, "door '{}': {} steps", door.name, door.sequence.len());
        assert!((1..=lines).contains(&door.lines.door), "door '{}' at line {}", door.name, door.lines.door);
    }

    // The door table and the kernel filter, as sesamed builds them.
    match Doors::new(&config) {
        Ok(doors) => {
            assert_eq!(doors.len(), config.doors.len());
            let local: [IpAddr; 2] = ["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
            for link in [Link::Ethernet, Link::Ip] {
                for ipv6 in [false, true] {
                    let _ = doors.filter_program(&local, ipv6, link);
                }
            }
        }
        // Only a one-time-sequences file (read again here) can fail.
        Err(e) => assert!(config.doors.iter().any(|d| d.one_time.is_some()), "{e}"),
    }

    // sesame check.
    let summary = config.summary();
    assert!(summary.starts_with(&path.display().to_string()), "{summary}");
    for w in check::lint(&config) {
        assert!(!w.message.is_empty());
        assert!((1..=lines).contains(&w.line), "warning at line {} of {lines}: {w}", w.line);
    }

    // sesame convert: the TOML it writes reads back to the same configuration.
    let toml = native::to_toml(&config);
    let back_path = Path::new("/etc/converted.toml");
    match native::parse(back_path, &toml) {
        Ok(back) => {
            assert_eq!(back, Config { source: back_path.to_owned(), ..config }, "round trip of\n{toml}")
        }
        Err(e) => panic!("converted TOML does not parse: {e}\n{toml}"),
    }
}
