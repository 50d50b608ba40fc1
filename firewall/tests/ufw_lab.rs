//! The ufw backend against the real `ufw` and a real `sshd`, with ufw confined to a lab
//! namespace and to private copies of its files ([`UfwJail`]): it is enabled there with a
//! default-deny incoming policy and nothing allowed for port 22, so SSH is closed until
//! the backend opens it. The host's ufw files and `/run` are checked to be untouched.

use sesame_firewall::backend::ufw::UfwBackend;
use sesame_firewall::backend::{Access, Backend, DoorRule, Port};
use sesame_lab::{require_root, ruleset, ssh_reachable, Lab, Sshd, UfwJail};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const REACH: Duration = Duration::from_secs(5);
const BLOCKED: Duration = Duration::from_millis(1500);
/// A door name that needs the comment encoding (ufw refuses `'` in a comment).
const DOOR: &str = "open SSH's door";

fn port(s: &str) -> Port {
    s.parse().unwrap()
}

fn access(addr: IpAddr) -> Access {
    Access { door: DOOR.into(), addr, ports: vec![port("22/tcp")], timeout: Duration::from_secs(30) }
}

/// A file's path, contents, mode and modification time.
type FileState = (PathBuf, Vec<u8>, u32, SystemTime);

/// Every file under the host's ufw paths with its contents, mode and modification time,
/// and whether the host's `/run/ufw.lock` exists.
fn host_ufw_state() -> (Vec<FileState>, bool) {
    fn walk(p: &Path, out: &mut Vec<FileState>) {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(p).unwrap();
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for e in entries {
                walk(&e, out);
            }
        }
        let contents = if meta.is_file() { std::fs::read(p).unwrap() } else { Vec::new() };
        out.push((p.to_owned(), contents, meta.permissions().mode(), meta.modified().unwrap()));
    }
    let mut files = Vec::new();
    for p in ["/etc/ufw", "/etc/default/ufw", "/lib/ufw"] {
        walk(Path::new(p), &mut files);
    }
    (files, Path::new("/run/ufw.lock").exists())
}

#[test]
fn ufw_grants_ssh_in_a_private_ufw_and_leaves_no_trace() {
    if !require_root("ufw_grants_ssh_in_a_private_ufw_and_leaves_no_trace") {
        return;
    }
    let host_before = host_ufw_state();
    {
        let lab = Lab::new("ufw").expect("build lab");
        let mut sshd = Sshd::start(&lab.server).expect("start sshd");
        let jail = UfwJail::new(&lab.server).expect("ufw jail");
        let b = UfwBackend::new().prefix(jail.prefix());
        let (s4, s6) = (IpAddr::V4(lab.server_v4), IpAddr::V6(lab.server_v6));
        let (c4, c6) = (IpAddr::V4(lab.client_v4), IpAddr::V6(lab.client_v6));

        // Installed but not enabled: check says so.
        let err = b.check().unwrap_err().to_string();
        assert!(err.contains("ufw is inactive"), "{err}");
        assert!(ssh_reachable(&lab.client, s4, REACH), "no firewall yet: SSH gets through");

        jail.ufw(&["default", "deny", "incoming"]).expect("default deny");
        let out = jail.ufw(&["--force", "enable"]).expect("enable");
        assert!(out.contains("Firewall is active"), "{out}");
        b.check().expect("check");
        // The packaged user6.rules lacks the ufw6-user-limit rules ufw writes into it the
        // first time it saves it; let ufw save both files once (a rule added and deleted,
        // on another port), so the baseline is ufw's steady state, not the package's.
        jail.ufw(&["allow", "9/udp"]).unwrap();
        jail.ufw(&["delete", "allow", "9/udp"]).unwrap();
        assert!(!ssh_reachable(&lab.client, s4, BLOCKED), "ufw's default deny must block SSH (v4)");
        assert!(!ssh_reachable(&lab.client, s6, BLOCKED), "ufw's default deny must block SSH (v6)");
        let status_before = jail.ufw(&["status"]).unwrap();
        let ruleset_before = ruleset(&lab.server).unwrap();
        assert_eq!(status_before.trim(), "Status: active", "nothing allowed yet: {status_before}");

        b.prepare(&[DoorRule { door: DOOR.into(), ports: vec![port("22/tcp")] }]).expect("prepare");
        assert_eq!(jail.ufw(&["status"]).unwrap(), status_before, "prepare adds nothing");

        b.open(&access(c4)).expect("open v4");
        b.open(&access(c4)).expect("open v4 again");
        b.open(&access(c6)).expect("open v6");
        assert_eq!(b.present().unwrap(), [(DOOR.to_owned(), c4), (DOOR.to_owned(), c6)]);
        let status = jail.ufw(&["status"]).unwrap();
        let lines: Vec<&str> = status.lines().filter(|l| l.starts_with("22/tcp")).collect();
        assert_eq!(lines.len(), 2, "one rule per address: {status}");
        for (line, addr) in lines.iter().zip([c4, c6]) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                words,
                ["22/tcp", "ALLOW", &addr.to_string(), "#", "sesame", "door=open%20SSH%27s%20door"],
                "{status}"
            );
        }
        assert!(ssh_reachable(&lab.client, s4, REACH), "v4 SSH after open: {status}");
        assert!(ssh_reachable(&lab.client, s6, REACH), "v6 SSH after open: {status}");

        b.close(&access(c4)).expect("close v4");
        b.close(&access(c6)).expect("close v6");
        b.close(&access(c4)).expect("closing what is closed");
        assert_eq!(b.present().unwrap(), []);
        assert_eq!(jail.ufw(&["status"]).unwrap(), status_before);
        assert_eq!(ruleset(&lab.server).unwrap(), ruleset_before, "the live ruleset is as before");
        assert!(!ssh_reachable(&lab.client, s4, BLOCKED), "closed: SSH blocked again (v4)");
        assert!(!ssh_reachable(&lab.client, s6, BLOCKED), "closed: SSH blocked again (v6)");
        assert!(sshd.is_running(), "sshd died: {}", sshd.log());

        // ufw ran in the jail: it locked the jail's /run, and wrote the jail's ufw.conf.
        assert!(jail.lock_file().is_file(), "no {}", jail.lock_file().display());
        let conf = std::fs::read_to_string(jail.dir().join("etc-ufw/ufw.conf")).unwrap();
        assert!(conf.contains("ENABLED=yes"), "{conf}");
    }
    assert!(
        host_before == host_ufw_state(),
        "the host's /etc/ufw, /etc/default/ufw, /lib/ufw or /run changed"
    );
}
