//! Fuzzes the raw-IP link (`Link::Ip`, a tun or `SOCK_DGRAM` ring): whatever the bytes,
//! `Link::Ip.parse` must return, never panic, agree with `parse_ip_packet`, and any
//! knock it returns must be self-consistent. For such a knock, the raw-IP knock filter
//! (in the userspace interpreter) must judge the packet as the Ethernet filter judges
//! it behind an Ethernet header: the two differ only in their link-layer prologue.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_capture::filter::{FilterSpec, Hook, Program};
use sesame_capture::frame::parse_ip_packet;
use sesame_capture::{Link, Proto};

fuzz_target!(|data: &[u8]| {
    let result = Link::Ip.parse(data);
    assert_eq!(result, parse_ip_packet(data));
    match result {
        Ok(knock) => {
            assert_eq!(knock.src.is_ipv4(), knock.dst.is_ipv4());
            assert_eq!(knock.tcp_flags & !0x3f, 0);
            if knock.proto == Proto::Udp {
                assert_eq!(knock.tcp_flags, 0);
            }
            // Filters built for exactly this knock: both links agree on it.
            let mut spec = FilterSpec::default();
            match knock.dst {
                std::net::IpAddr::V4(a) => spec.v4_dst.push(a),
                std::net::IpAddr::V6(a) => spec.v6_dst.push(a),
            }
            match knock.proto {
                Proto::Tcp => spec.tcp_ports.push(knock.dst_port),
                Proto::Udp => spec.udp_ports.push(knock.dst_port),
            }
            let ip = Program::knock(&spec, Link::Ip).unwrap();
            let eth = Program::knock(&spec, Link::Ethernet).unwrap();
            let ethertype: [u8; 2] = if knock.src.is_ipv4() { [0x08, 0x00] } else { [0x86, 0xdd] };
            let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, ethertype[0], ethertype[1]];
            frame.extend_from_slice(data);
            assert_eq!(ip.run_on(data, Link::Ip, Hook::Socket) != 0, eth.run(&frame) != 0);
        }
        // Labels are what the daemon counts by; they must stay in the known set.
        Err(err) => assert!(sesame_capture::FrameError::REASONS.contains(&err.reason())),
    }
});
