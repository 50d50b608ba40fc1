//! The iptables backend against the real `iptables`/`ip6tables` and a real `sshd`, in
//! throw-away network namespaces (never the host's firewall).
//!
//! The server namespace gets the seed articles' knockd base policy (ESTABLISHED,RELATED
//! accepted, every other tcp/22 packet dropped) for both families. Then the backend,
//! running its tools through `ip netns exec`, has to let exactly the granted client in,
//! shut it out again, and leave the ruleset (as `iptables-save` without counters shows
//! it) exactly as it found it.

use sesame_firewall::backend::iptables::{IptablesBackend, IptablesGrant, CHAIN};
use sesame_firewall::backend::{Access, Backend, DoorRule, Port};
use sesame_lab::{require_root, ruleset, ssh_base_policy, ssh_reachable, Lab, Netns, Sshd};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// How long a banner read may take when the connection is expected to get through.
const REACH: Duration = Duration::from_secs(5);
/// How long a banner read waits when the connection is expected to be dropped.
const BLOCKED: Duration = Duration::from_millis(1500);
/// A door name that needs the comment encoding: spaces and both kinds of quote.
const DOOR: &str = "open \"SSH\" it's";
const T0: u64 = 1_700_000_000;

fn ssh_door() -> DoorRule {
    DoorRule { door: DOOR.into(), ports: vec![port("22/tcp")] }
}

fn port(s: &str) -> Port {
    s.parse().unwrap()
}

fn access(addr: IpAddr, secs: u64) -> Access {
    Access { door: DOOR.into(), addr, ports: vec![port("22/tcp")], timeout: Duration::from_secs(secs) }
}

/// The backend for `ns`, with a clock the test moves.
fn backend(ns: &Netns) -> (IptablesBackend, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(T0));
    let clock = now.clone();
    let b = IptablesBackend::new()
        .prefix(ns.exec_prefix())
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst)));
    (b, now)
}

fn rules(ns: &Netns, tool: &str, chain: &str) -> Vec<String> {
    ns.sh_ok(&format!("{tool} -w 10 -S {chain}"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn blocked(lab: &Lab) -> (bool, bool) {
    (
        !ssh_reachable(&lab.client, IpAddr::V4(lab.server_v4), BLOCKED),
        !ssh_reachable(&lab.client, IpAddr::V6(lab.server_v6), BLOCKED),
    )
}

#[test]
fn iptables_grants_ssh_over_the_base_policy_and_leaves_no_trace() {
    if !require_root("iptables_grants_ssh_over_the_base_policy_and_leaves_no_trace") {
        return;
    }
    let lab = Lab::new("ipt").expect("build lab");
    let mut sshd = Sshd::start(&lab.server).expect("start sshd");
    ssh_base_policy(&lab.server).expect("base policy");
    let (c4, c6) = (IpAddr::V4(lab.client_v4), IpAddr::V6(lab.client_v6));
    let (b, now) = backend(&lab.server);

    let before_prepare = ruleset(&lab.server).unwrap();
    assert_eq!(blocked(&lab), (true, true), "the base policy must block new SSH connections");
    b.check().expect("check");

    // prepare: the chain and one jump, first in INPUT, for both families; twice is once.
    b.prepare(&[ssh_door()]).expect("prepare");
    b.prepare(&[ssh_door()]).expect("prepare again");
    let after_prepare = ruleset(&lab.server).unwrap();
    for tool in ["iptables", "ip6tables"] {
        let input = rules(&lab.server, tool, "INPUT");
        assert_eq!(input[0], "-A INPUT -j SESAME", "{tool}: {input:#?}");
        assert_eq!(input.iter().filter(|l| l.contains("-j SESAME")).count(), 1, "{tool}: {input:#?}");
        assert_eq!(input.len(), 3, "the jump and the base policy's two rules: {input:#?}");
        assert!(rules(&lab.server, tool, CHAIN).is_empty());
    }
    // Exactly two lines more per family: the chain and the jump before the base policy.
    let added = |l: &&str| *l == ":SESAME -" || *l == "-A INPUT -j SESAME";
    assert_eq!(after_prepare.lines().filter(added).count(), 4, "{after_prepare}");
    let without: Vec<&str> = after_prepare.lines().filter(|l| !added(l)).collect();
    assert_eq!(without, before_prepare.lines().collect::<Vec<_>>());
    assert_eq!(b.present().unwrap(), []);
    assert_eq!(blocked(&lab), (true, true), "prepare alone opens nothing");

    // open, twice for IPv4 (the second later, with a fresh expiry), once for IPv6.
    b.open(&access(c4, 30)).expect("open v4");
    now.store(T0 + 5, Ordering::SeqCst);
    b.open(&access(c4, 30)).expect("open v4 again");
    b.open(&access(c6, 30)).expect("open v6");
    assert_eq!(b.present().unwrap(), [(DOOR.to_owned(), c4), (DOOR.to_owned(), c6)]);
    assert_eq!(
        b.grants().unwrap(),
        [
            IptablesGrant { door: DOOR.into(), addr: c4, port: port("22/tcp"), expires: T0 + 35 },
            IptablesGrant { door: DOOR.into(), addr: c6, port: port("22/tcp"), expires: T0 + 35 },
        ]
    );
    let v4_rules = rules(&lab.server, "iptables", CHAIN);
    assert_eq!(
        v4_rules,
        [format!(
            "-A SESAME -s {c4}/32 -p tcp -m tcp --dport 22 -m comment --comment \
             \"sesame door=open%20%22SSH%22%20it%27s expires={}\" -j ACCEPT",
            T0 + 35
        )]
    );
    assert_eq!(rules(&lab.server, "ip6tables", CHAIN).len(), 1);
    assert!(ssh_reachable(&lab.client, IpAddr::V4(lab.server_v4), REACH), "v4 SSH after open");
    assert!(ssh_reachable(&lab.client, IpAddr::V6(lab.server_v6), REACH), "v6 SSH after open");

    // close: new connections fail again, and the ruleset is as prepare left it.
    b.close(&access(c4, 30)).expect("close v4");
    b.close(&access(c6, 30)).expect("close v6");
    b.close(&access(c4, 30)).expect("closing what is closed");
    assert_eq!(b.present().unwrap(), []);
    assert_eq!(ruleset(&lab.server).unwrap(), after_prepare);
    assert_eq!(blocked(&lab), (true, true), "closed grants must block new SSH connections");

    // remove: exactly the ruleset before prepare; twice is once.
    b.remove().expect("remove");
    b.remove().expect("remove again");
    assert_eq!(ruleset(&lab.server).unwrap(), before_prepare);
    assert_eq!(b.present().unwrap(), [], "no chain: nothing present");
    assert!(sshd.is_running(), "sshd died: {}", sshd.log());
}

#[test]
fn iptables_reload_keeps_grants_and_foreign_rules() {
    if !require_root("iptables_reload_keeps_grants_and_foreign_rules") {
        return;
    }
    let lab = Lab::new("ipr").expect("build lab");
    ssh_base_policy(&lab.server).expect("base policy");
    let c4 = IpAddr::V4(lab.client_v4);
    let other: IpAddr = "198.19.0.9".parse().unwrap();
    let (b, _) = backend(&lab.server);
    b.prepare(&[ssh_door()]).unwrap();
    // A rule sesame did not write, in its chain, and a jump put before it by hand.
    lab.server
        .sh_ok("iptables -w 10 -A SESAME -s 198.19.0.1 -p tcp --dport 80 -j ACCEPT && iptables -w 10 -I INPUT 1 -p icmp -j ACCEPT")
        .unwrap();
    let web = Access {
        door: "web".into(),
        addr: other,
        ports: vec![port("80/tcp")],
        timeout: Duration::from_secs(60),
    };
    b.open(&access(c4, 30)).unwrap();
    b.open(&web).unwrap();

    // Reload: door ssh now opens 22 and 2222, door web is gone; the jump goes first again.
    let ssh2 = DoorRule { door: DOOR.into(), ports: vec![port("22/tcp"), port("2222/tcp")] };
    b.prepare(&[ssh2]).unwrap();
    let input = rules(&lab.server, "iptables", "INPUT");
    assert_eq!(input[0], "-A INPUT -j SESAME", "{input:#?}");
    assert_eq!(input.iter().filter(|l| l.contains("-j SESAME")).count(), 1, "{input:#?}");
    assert_eq!(
        b.grants().unwrap(),
        [
            IptablesGrant { door: DOOR.into(), addr: c4, port: port("22/tcp"), expires: T0 + 30 },
            IptablesGrant { door: DOOR.into(), addr: c4, port: port("2222/tcp"), expires: T0 + 30 },
        ]
    );
    b.close(&access(c4, 30)).unwrap();
    assert_eq!(
        rules(&lab.server, "iptables", CHAIN),
        ["-A SESAME -s 198.19.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT"],
        "only the foreign rule stays"
    );
    b.remove().unwrap();
    assert!(!lab.server.sh_ok("iptables -w 10 -S").unwrap().contains("SESAME"));
}
