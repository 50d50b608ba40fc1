//! Fuzzes the SPA parser (`sesame_engine::spa`) with the fixture keys of
//! engine/tests/fixtures/spa: whatever the bytes, `verify` returns and never panics;
//! the cheap checks agree with it; whatever it accepts has a valid HMAC and asks only
//! for ports the door opens. Seeds: fuzz/seeds/parse_spa (the fixtures). Random input
//! does not get past the HMAC; the layers behind it are covered by the unit tests'
//! every-bit-flip test and by the fixtures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sesame_engine::config::Port;
use sesame_engine::spa::{self, Policy, Refusal, SpaKeys};
use std::net::{IpAddr, Ipv4Addr};

const KEYS: &str = include_str!("../../engine/tests/fixtures/spa/keys");
const MADE_AT: &str = include_str!("../../engine/tests/fixtures/spa/timestamp");

fuzz_target!(|data: &[u8]| {
    let keys = SpaKeys::parse(KEYS).unwrap();
    let now: i64 = MADE_AT.trim().parse().unwrap();
    let open: [Port; 1] = ["22/tcp".parse().unwrap()];
    let policy = Policy { max_age: 120, allow_other_address: false, open: &open };
    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let result = spa::verify(data, src, &keys, &policy, now);
    match spa::cheap_checks(data) {
        Err(r) => assert_eq!(result.as_ref().err(), Some(&r)),
        Ok(()) => {
            if let Ok(grant) = &result {
                assert!(spa::check_hmac(data, &keys).is_ok());
                assert!(grant.message.ports.iter().all(|p| open.contains(p)));
                assert_eq!(grant.address, src);
            }
        }
    }
    assert!(result.is_ok() || Refusal::ALL.contains(&result.unwrap_err()));
});
