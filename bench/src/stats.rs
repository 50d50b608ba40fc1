//! The daemon's shutdown counters and the `/proc` figures the bench reads.
//!
//! sesamed logs one line at shutdown, in its LogFile:
//! `stats: packets=P kernel_drops=D knocks=K evictions=E rejected=R log_suppressed=S ...`,
//! which sesamed writes to stderr when it shuts down.
//! knockd logs no such line; every figure is then `None` (null in the JSON).

use std::collections::BTreeMap;

/// The `key=value` pairs of the last `stats:` line in a log, if there is one.
///
/// The line may carry knockd's `[YYYY-MM-DD HH:MM] ` prefix. Pairs whose value is not a
/// whole number are skipped; unknown keys are kept.
pub fn parse_stats_log(log: &str) -> Option<BTreeMap<String, u64>> {
    log.lines().rev().find_map(parse_stats_line)
}

/// The `key=value` pairs of one `stats:` line, `None` for any other line.
pub fn parse_stats_line(line: &str) -> Option<BTreeMap<String, u64>> {
    let line = line.trim();
    let rest = match line.strip_prefix("stats:") {
        Some(r) => r,
        None => {
            // `[2024-01-01 12:00] stats: ...`
            let after = line.strip_prefix('[')?.split_once("] ")?.1;
            after.strip_prefix("stats:")?
        }
    };
    let mut out = BTreeMap::new();
    for pair in rest.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            if let Ok(v) = v.parse::<u64>() {
                out.insert(k.to_owned(), v);
            }
        }
    }
    Some(out)
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted
/// after the last `)`: state is field 3, utime field 14, stime field 15.
pub fn parse_proc_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` figure (`VmHWM`, `VmRSS`, ...) from the text of `/proc/PID/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let v = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(v),
            _ => None,
        }
    })
}

/// The first CPU of a `Cpus_allowed_list` value (`0-1`, `2,4-7`).
pub fn parse_first_cpu(list: &str) -> Option<usize> {
    list.split(',').filter_map(|r| r.trim().split('-').next()?.trim().parse().ok()).min()
}

/// The first CPU this process may run on (from `/proc/self/status`); 0 if unknown.
pub fn first_allowed_cpu() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").and_then(parse_first_cpu)))
        .unwrap_or(0)
}

/// Every CPU of a `Cpus_allowed_list` value (`0-1`, `2,4-7`), ascending; `None` if
/// it does not parse.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let v: usize = part.parse().ok()?;
                (v, v)
            }
        };
        if hi < lo || hi - lo > 1 << 16 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// The CPUs this process may run on (from `/proc/self/status`); empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").and_then(parse_cpu_list)))
        .unwrap_or_default()
}

/// The cores of `n` generator threads, the first on `first`: `first`, then the
/// allowed cores after it, wrapping round to the ones before it, and round again
/// (threads then share cores) when `n` is more than there are.
pub fn gen_cpu_list(allowed: &[usize], first: usize, n: u32) -> Vec<usize> {
    let mut ring: Vec<usize> = vec![first];
    ring.extend(allowed.iter().copied().filter(|&c| c > first));
    ring.extend(allowed.iter().copied().filter(|&c| c < first));
    (0..n as usize).map(|i| ring[i % ring.len()]).collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that cannot be run).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU seconds (user + system) used so far by process `pid`, `None` once it is gone.
pub fn cpu_seconds(pid: u32, ticks_per_sec: u64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_ticks(&stat).map(|t| t as f64 / ticks_per_sec as f64)
}

/// A `kB` figure from `/proc/PID/status`, `None` once the process is gone.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    parse_status_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_plain_and_with_knockd_prefix() {
        let m = parse_stats_line(
            "stats: packets=120 kernel_drops=0 knocks=30 evictions=7 rejected=2 log_suppressed=11",
        )
        .unwrap();
        assert_eq!(m["packets"], 120);
        assert_eq!(m["kernel_drops"], 0);
        assert_eq!(m["knocks"], 30);
        assert_eq!(m["evictions"], 7);
        assert_eq!(m["rejected"], 2);
        assert_eq!(m["log_suppressed"], 11);
        let m = parse_stats_line("[2024-05-01 10:00] stats: packets=5 kernel_drops=3 future=9 junk bad=x")
            .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["future"], 9);
        assert!(!m.contains_key("bad"));
        assert_eq!(parse_stats_line("stats:").unwrap().len(), 0);
        assert!(parse_stats_line("[2024-05-01 10:00] 198.18.0.2: openSSH: Stage 1").is_none());
        assert!(parse_stats_line("shutting down").is_none());
        assert!(parse_stats_line("[x").is_none());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("2,4-6, 0"), Some(vec![0, 2, 4, 5, 6]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert!(!allowed_cpus().is_empty());
        // The first thread on the core asked for, the next ones on the following cores.
        assert_eq!(gen_cpu_list(&[0, 1], 0, 1), [0]);
        assert_eq!(gen_cpu_list(&[0, 1], 0, 2), [0, 1]);
        assert_eq!(gen_cpu_list(&[0, 1, 2, 3], 2, 3), [2, 3, 0]);
        // More threads than cores: they share, round robin.
        assert_eq!(gen_cpu_list(&[0, 1], 1, 3), [1, 0, 1]);
        // A core outside the allowed list is still the first (pinning it then fails loudly).
        assert_eq!(gen_cpu_list(&[0, 1], 5, 2), [5, 0]);
    }

    #[test]
    fn stats_from_a_whole_log_takes_the_last_line() {
        let log = "[2024-05-01 10:00] starting up, listening on ss1\n\
                   [2024-05-01 10:00] stats: packets=1 kernel_drops=0\n\
                   [2024-05-01 10:01] stats: packets=2 kernel_drops=4\n\
                   [2024-05-01 10:01] shutting down\n";
        let m = parse_stats_log(log).unwrap();
        assert_eq!((m["packets"], m["kernel_drops"]), (2, 4));
        assert!(parse_stats_log("[2024-05-01 10:00] starting up, listening on eth0\n").is_none());
    }

    #[test]
    fn proc_stat_ticks_with_odd_command_names() {
        let stat = "1234 (sesa me) d) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 5 0 0";
        assert_eq!(parse_proc_stat_ticks(stat), Some(325));
        assert_eq!(parse_proc_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat_ticks("garbage"), None);
        // Our own process has a parseable stat.
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_proc_stat_ticks(&own).is_some());
    }

    #[test]
    fn first_cpu_of_a_list() {
        assert_eq!(parse_first_cpu("0-1"), Some(0));
        assert_eq!(parse_first_cpu("\t2,4-7"), Some(2));
        assert_eq!(parse_first_cpu("5"), Some(5));
        assert_eq!(parse_first_cpu("8-9,3"), Some(3));
        assert_eq!(parse_first_cpu(""), None);
        let _ = first_allowed_cpu();
    }

    #[test]
    fn status_kib_figures() {
        let status = "Name:\tsesamed\nVmPeak:\t  20000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(4096));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib(status, "Vm"), None);
        assert!(status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        assert!(cpu_seconds(std::process::id(), clock_ticks()).is_some());
    }
}
