//! The lab builds, connects its two namespaces, and leaves nothing behind.

use sesame_lab::{require_root, Lab};
use std::process::Command;

#[test]
fn lab_pings_across_veth_and_cleans_up() {
    if !require_root("lab_pings_across_veth_and_cleans_up") {
        return;
    }
    let names;
    {
        let lab = Lab::new("lab").expect("build lab");
        names = (lab.server.name().to_owned(), lab.client.name().to_owned());
        let v4 = lab.client.sh(&format!("ping -c1 -W2 {}", lab.server_v4)).unwrap();
        assert!(v4.status.success(), "{}", String::from_utf8_lossy(&v4.stdout));
        let v6 = lab.client.sh(&format!("ping -6 -c1 -W2 {}", lab.server_v6)).unwrap();
        assert!(v6.status.success(), "{}", String::from_utf8_lossy(&v6.stdout));
        let routes = lab.server.sh_ok("ip route show default; ip -6 route show default").unwrap();
        assert!(routes.trim().is_empty(), "lab must never have a default route: {routes}");
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains(&names.0) && !list.contains(&names.1), "namespaces left: {list}");
}

/// A tun takes injected IPv4 and IPv6 packets as received traffic, and goes on drop.
#[test]
fn tun_injects_and_cleans_up() {
    use sesame_lab::{ip_packet_tcp, ip_packet_udp, Netns, Tun};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if !require_root("tun_injects_and_cleans_up") {
        return;
    }
    let ns = Netns::new("tun").expect("namespace");
    let name = sesame_lab::unique_name("tn");
    let rx = |ns: &Netns| -> u64 {
        ns.sh_ok(&format!("cat /sys/class/net/{name}/statistics/rx_packets")).unwrap().trim().parse().unwrap()
    };
    {
        let tun = Tun::create(&ns, &name).expect("tun");
        assert_eq!(tun.name(), name);
        let info = ns.ip(&["-d", "link", "show", "dev", &name]).unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("tun type tun pi off"), "{info}");
        assert!(!info.contains(",UP"), "created down: {info}");
        ns.ip(&["addr", "add", "198.18.0.1/32", "dev", &name]).unwrap();
        ns.ip(&["link", "set", &name, "up"]).unwrap();
        let (s4, d4) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        let s6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let d6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let before = rx(&ns);
        tun.inject(&[
            ip_packet_tcp(s4, d4, 40000, 7000, 0x02),
            ip_packet_udp(s4, d4, 40000, 9000, b"knock"),
            ip_packet_udp(s6, d6, 40000, 9000, b"knock"),
        ])
        .expect("inject");
        assert!(sesame_lab::wait_until(std::time::Duration::from_secs(5), || rx(&ns) >= before + 3));
        assert_eq!(rx(&ns), before + 3);
    }
    let gone = ns.ip(&["link", "show", "dev", &name]);
    assert!(gone.is_err(), "tun {name} left behind");
    // Injecting into a tun that is down fails with the kernel's error, not silently.
    let tun = Tun::create(&ns, &name).expect("tun again");
    let err = tun.inject(&[vec![0x45; 20]]).unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}
