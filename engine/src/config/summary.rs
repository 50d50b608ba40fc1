//! The human-readable summary `sesame check FILE` prints: every setting of every door,
//! defaults included, so the operator sees what sesamed will actually do.

use super::{native::flag_names, Config, Door, DEFAULT_INTERFACE, DEFAULT_PID_FILE};
use std::fmt::Write;

impl Config {
    /// A multi-line, readable description of the whole configuration.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let doors = match self.doors.len() {
            1 => "1 door".to_owned(),
            n => format!("{n} doors"),
        };
        line(&mut out, 0, &format!("{}: {doors}", self.source.display()), "");
        let o = &self.options;
        line(&mut out, 0, "options:", "");
        line(&mut out, 2, "use syslog", if o.use_syslog { "yes" } else { "no" });
        line(
            &mut out,
            2,
            "log file",
            &o.log_file.as_ref().map_or("none".into(), |p| p.display().to_string()),
        );
        let pid =
            o.pid_file.as_ref().map_or(format!("{DEFAULT_PID_FILE} (default)"), |p| p.display().to_string());
        line(&mut out, 2, "pid file", &pid);
        let interface = match o.interfaces.as_slice() {
            [] => format!("{DEFAULT_INTERFACE} (default)"),
            list => list.join(", "),
        };
        line(&mut out, 2, if o.interfaces.len() > 1 { "interfaces" } else { "interface" }, &interface);
        for door in &self.doors {
            door_block(&mut out, door);
        }
        out
    }
}

fn door_block(out: &mut String, door: &Door) {
    line(out, 0, &format!("door {}:", door.name), "");
    let sequence = if let Some(r) = &door.rotating {
        format!(
            "rotating: {} ports in {}-{}, new every {}s, from {}",
            r.params.length,
            r.params.lo,
            r.params.hi,
            r.params.step,
            r.secret_file.display()
        )
    } else if let (true, Some(spa)) = (door.sequence.is_empty(), &door.spa) {
        let other = if spa.allow_other_address { ", any address asked for" } else { "" };
        format!(
            "none: SPA on udp/{} (keys {}, max age {}s{other})",
            spa.port,
            spa.keys_file.display(),
            spa.max_age
        )
    } else if door.sequence.is_empty() {
        "none left in the one-time file: door disabled".to_owned()
    } else {
        door.sequence.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
    };
    line(out, 2, "sequence", &sequence);
    if let Some(one_time) = &door.one_time {
        line(out, 2, "one-time file", &one_time.path.display().to_string());
    }
    line(out, 2, "seq_timeout", &format!("{}s", door.seq_timeout));
    let flags = flag_names(door.tcp_flags);
    line(out, 2, "tcp flags", &if flags.is_empty() { "any".to_owned() } else { flags.join(",") });
    let target = door.target.map_or("the interface's addresses".to_owned(), |t| t.to_string());
    line(out, 2, "target", &target);
    line(out, 2, "start command", &command(&door.start_command, None));
    line(out, 2, "start command 6", &command(&door.start_command_6, Some(&door.start_command)));
    line(out, 2, "stop command", &command(&door.stop_command, None));
    line(out, 2, "stop command 6", &command(&door.stop_command_6, Some(&door.stop_command)));
    line(out, 2, "cmd_timeout", &format!("{}s", door.cmd_timeout));
    if !door.open.is_empty() {
        line(out, 2, "opens", &door.open.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    if let Some(b) = door.backend {
        line(out, 2, "backend", b.name());
    }
}

/// `fallback` is the IPv4 command an IPv6 one falls back to when absent.
fn command(cmd: &Option<String>, fallback: Option<&Option<String>>) -> String {
    match (cmd.as_deref(), fallback) {
        (Some(""), _) => "none (empty)".to_owned(),
        (Some(c), _) => c.to_owned(),
        (None, Some(Some(v4))) if !v4.is_empty() => "same as IPv4".to_owned(),
        (None, _) => "none".to_owned(),
    }
}

fn line(out: &mut String, indent: usize, label: &str, value: &str) {
    if value.is_empty() {
        let _ = writeln!(out, "{:indent$}{label}", "");
    } else {
        let _ = writeln!(out, "{:indent$}{:<17}{value}", "", format!("{label}:"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{knockd, Step};
    use super::*;
    use sesame_capture::Proto;
    use std::path::Path;

    #[test]
    fn shows_every_door_setting() {
        let text = "[options]\nUseSyslog\n[openSSH]\nsequence = 7000,8000,9000:udp\nseq_timeout = 5\n\
                    tcpflags = syn,!ack\ncommand = open %IP%\nstop_command = close %IP%\n\
                    cmd_timeout = 30\ntarget = 198.18.0.1\n";
        let s = knockd::parse(Path::new("/etc/knockd.conf"), text).unwrap().summary();
        for want in [
            "/etc/knockd.conf: 1 door",
            "use syslog:      yes",
            "pid file:        /var/run/knockd.pid (default)",
            "interface:       eth0 (default)",
            "door openSSH:",
            "  sequence:        7000:tcp,8000:tcp,9000:udp",
            "seq_timeout:     5s",
            "tcp flags:       syn,!ack",
            "target:          198.18.0.1",
            "start command:   open %IP%",
            "start command 6: same as IPv4",
            "stop command:    close %IP%",
            "cmd_timeout:     30s",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn empty_one_time_door_says_disabled() {
        let mut door = Door::new("otp", Vec::new());
        door.one_time = Some(super::super::OneTimeSequences { path: "/etc/otp".into() });
        door.start_command_6 = Some(String::new());
        let mut config = knockd::parse(Path::new("a"), "[d]\nsequence=1\n").unwrap();
        config.doors = vec![door, Door::new("x", vec![Step { port: 1, proto: Proto::Tcp }])];
        let s = config.summary();
        assert!(s.contains("door disabled"), "{s}");
        assert!(s.contains("one-time file:   /etc/otp"), "{s}");
        assert!(s.contains("start command 6: none (empty)"), "{s}");
        assert!(s.contains("a: 2 doors"), "{s}");
    }
}
