//! Fuzzes the frame parser: whatever the bytes, `parse_frame` and `parse_ip_packet`
//! must return, never panic, and any knock they return must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_capture::frame::parse_ip_packet;
use sesame_capture::{parse_frame, Proto};

fuzz_target!(|data: &[u8]| {
    for result in [parse_frame(data), parse_ip_packet(data)] {
        match result {
            Ok(knock) => {
                assert_eq!(knock.src.is_ipv4(), knock.dst.is_ipv4());
                assert_eq!(knock.tcp_flags & !0x3f, 0);
                if knock.proto == Proto::Udp {
                    assert_eq!(knock.tcp_flags, 0);
                }
            }
            // Labels are what the daemon counts by; they must stay in the known set.
            Err(err) => assert!(sesame_capture::FrameError::REASONS.contains(&err.reason())),
        }
    }
});
