//! Fuzzes the SPA parser (`sesame_engine::spa`) with the fixture keys of
//! engine/tests/fixtures/spa: whatever the bytes, `verify` returns and never panics;
//! the cheap checks agree with it; whatever it accepts has a valid HMAC and asks only
//! for ports the door opens. Random input does not get past the HMAC, so the same bytes
//! are also sealed (`spa::seal`: encrypted and signed with the keys) and opened, which
//! fuzzes the plaintext decoder behind it. Seeds: fuzz/seeds/parse_spa (the fixtures'
//! packets, and a few plaintexts of the encoder).
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

    // Behind the HMAC: the same bytes as a plaintext, sealed with the keys, reach the
    // decoder; it must refuse or accept without panicking, and anything it accepts
    // carries a digest that matches.
    if data.len() <= 1200 {
        let sealed = spa::seal(&keys, data, [7; 8]);
        if let Ok(message) = spa::open(sealed.as_bytes(), &keys) {
            let text = std::str::from_utf8(data).unwrap();
            let signed = &text[..text.rfind(':').unwrap()];
            use sha2::Digest;
            assert_eq!(message.digest, <[u8; 32]>::from(sha2::Sha256::digest(signed.as_bytes())));
            assert!(matches!(message.kind, 1 | 3));
        }
    }
});
