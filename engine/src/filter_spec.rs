//! The kernel packet filter for a set of doors on one interface: built here and only
//! here, so the rings a worker opens at start, after a reload, after an interface
//! came back or its addresses changed, and after a one-time door moved on all pass
//! exactly what the matcher can see.

use crate::doors::DoorState;
use sesame_capture::filter::{FilterSpec, Program};
use sesame_capture::{CaptureError, Link, Proto};
use std::net::IpAddr;

/// What the kernel filter must let through: every knock port of every enabled door,
/// to the interface's addresses (`local`) and the doors' targets.
pub(crate) fn spec(doors: &[DoorState], local: &[IpAddr], ipv6: bool) -> FilterSpec {
    let mut spec = FilterSpec::default();
    let mut add = |ip: IpAddr| match ip {
        IpAddr::V4(a) if !spec.v4_dst.contains(&a) => spec.v4_dst.push(a),
        IpAddr::V6(a) if ipv6 && !spec.v6_dst.contains(&a) => spec.v6_dst.push(a),
        _ => {}
    };
    let enabled = doors.iter().filter(|d| d.enabled || d.spa_port.is_some());
    // SPA doors: their UDP port.
    spec.udp_ports.extend(doors.iter().filter_map(|d| d.spa_port));
    if enabled.clone().any(|d| d.target.is_none()) {
        local.iter().copied().for_each(&mut add);
    }
    enabled.clone().filter_map(|d| d.target).for_each(&mut add);
    // A rotating door's next sequence too: see `DoorState::lookahead`.
    for step in enabled.flat_map(|d| d.sequence.iter().chain(&d.lookahead)) {
        match step.proto {
            Proto::Tcp => spec.tcp_ports.push(step.port),
            Proto::Udp => spec.udp_ports.push(step.port),
        }
    }
    for ports in [&mut spec.tcp_ports, &mut spec.udp_ports] {
        ports.sort_unstable();
        ports.dedup();
    }
    spec
}

/// The classic BPF program for `doors` on an interface with addresses `local` and
/// link type `link`.
pub(crate) fn program(
    doors: &[DoorState],
    local: &[IpAddr],
    ipv6: bool,
    link: Link,
) -> Result<Program, CaptureError> {
    Program::knock(&spec(doors, local, ipv6), link)
}
