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
