//! Over packets the real fwknop 2.6.10 client made (engine/tests/fixtures/spa, with
//! their keys and the Unix time they were made at).

use super::*;

const KEYS: &str = include_str!("../../tests/fixtures/spa/keys");
const MADE_AT: &str = include_str!("../../tests/fixtures/spa/timestamp");

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/spa/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap().trim().as_bytes().to_vec()
}

fn keys() -> SpaKeys {
    SpaKeys::parse(KEYS).unwrap()
}

fn made_at() -> i64 {
    MADE_AT.trim().parse().unwrap()
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));

fn ports(list: &[&str]) -> Vec<Port> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

fn policy(open: &[Port]) -> Policy<'_> {
    Policy { max_age: DEFAULT_MAX_AGE, allow_other_address: false, open }
}

#[test]
fn real_client_access_request() {
    let open = ports(&["22/tcp"]);
    let g = verify(&fixture("access_tcp22.spa"), CLIENT, &keys(), &policy(&open), made_at() + 5).unwrap();
    assert_eq!(g.address, CLIENT);
    assert_eq!(g.message.ports, open);
    assert_eq!(g.message.kind, 1);
    assert_eq!(g.message.version, "3.0.0");
    assert!((g.message.timestamp - made_at()).abs() <= 2);
}

#[test]
fn real_client_multi_ports_and_timeout_and_source() {
    let open = ports(&["22/tcp", "53/udp"]);
    let k = keys();
    let now = made_at();
    let g = verify(&fixture("access_multi.spa"), CLIENT, &k, &policy(&open), now).unwrap();
    assert_eq!(g.message.ports, open);
    let g = verify(&fixture("access_timeout.spa"), CLIENT, &k, &policy(&open), now).unwrap();
    assert_eq!((g.message.kind, g.message.client_timeout), (3, Some(60)));
    // -s: 0.0.0.0 means the packet's source, whatever it is.
    let g = verify(&fixture("access_source.spa"), OTHER, &k, &policy(&open), now).unwrap();
    assert_eq!(g.address, OTHER);
}

#[test]
fn refusals() {
    let open = ports(&["22/tcp"]);
    let k = keys();
    let now = made_at();
    let p = fixture("access_tcp22.spa");
    // A port the door does not open.
    let only_80 = ports(&["80/tcp"]);
    assert_eq!(verify(&p, CLIENT, &k, &policy(&only_80), now).unwrap_err(), Refusal::Port);
    let multi = fixture("access_multi.spa");
    assert_eq!(verify(&multi, CLIENT, &k, &policy(&open), now).unwrap_err(), Refusal::Port);
    // Another address without spa_allow_other_address; allowed with it.
    assert_eq!(verify(&p, OTHER, &k, &policy(&open), now).unwrap_err(), Refusal::Address);
    let allow = Policy { allow_other_address: true, ..policy(&open) };
    assert_eq!(verify(&p, OTHER, &k, &allow, now).unwrap().address, CLIENT);
    // Outside the window, both directions.
    assert_eq!(verify(&p, CLIENT, &k, &policy(&open), now + 200).unwrap_err(), Refusal::Stale);
    assert_eq!(verify(&p, CLIENT, &k, &policy(&open), now - 200).unwrap_err(), Refusal::Stale);
    assert_eq!(verify(&fixture("old.spa"), CLIENT, &k, &policy(&open), now).unwrap_err(), Refusal::Stale);
    // Command and NAT messages.
    assert_eq!(
        verify(&fixture("command.spa"), CLIENT, &k, &policy(&open), now).unwrap_err(),
        Refusal::MessageType
    );
    assert_eq!(
        verify(&fixture("nat.spa"), CLIENT, &k, &policy(&open), now).unwrap_err(),
        Refusal::MessageType
    );
    // Wrong keys.
    let wrong = SpaKeys::new(vec![1; 32], vec![2; 64]).unwrap();
    assert_eq!(verify(&p, CLIENT, &wrong, &policy(&open), now).unwrap_err(), Refusal::Hmac);
    // Right HMAC key, wrong encryption key.
    let half = SpaKeys::new(vec![1; 32], k.hmac().to_vec()).unwrap();
    assert!(matches!(
        verify(&p, CLIENT, &half, &policy(&open), now).unwrap_err(),
        Refusal::Decrypt | Refusal::Format
    ));
}

#[test]
fn every_single_bit_flip_is_refused() {
    let open = ports(&["22/tcp"]);
    let k = keys();
    let p = fixture("access_tcp22.spa");
    for i in 0..p.len() {
        for bit in 0..8 {
            let mut q = p.clone();
            q[i] ^= 1 << bit;
            assert!(verify(&q, CLIENT, &k, &policy(&open), made_at()).is_err(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn cheap_checks_reject_before_hmac() {
    assert_eq!(cheap_checks(&[b'A'; 139]), Err(Refusal::Length));
    assert_eq!(cheap_checks(&[b'A'; 1501]), Err(Refusal::Length));
    let mut p = vec![b'A'; 200];
    p[100] = b'!';
    assert_eq!(cheap_checks(&p), Err(Refusal::Alphabet));
    let mut p = b"U2FsdGVkX1".to_vec();
    p.resize(200, b'A');
    assert_eq!(cheap_checks(&p), Err(Refusal::Alphabet));
    assert_eq!(cheap_checks(&[b'A'; 200]), Ok(()));
}

#[test]
fn encoder_round_trip_v4_and_v6() {
    let k = keys();
    let open = ports(&["22/tcp"]);
    let now = made_at();
    let req = Request {
        user: "alice",
        address: Some(CLIENT),
        ipv6_source: false,
        ports: &open,
        timestamp: now,
        client_timeout: None,
    };
    let wire = encode(&k, &req, &[7; 24]);
    let g = verify(wire.as_bytes(), CLIENT, &k, &policy(&open), now).unwrap();
    assert_eq!((g.message.user.as_str(), g.address), ("alice", CLIENT));
    let v6: IpAddr = "2001:db8::2".parse().unwrap();
    let req = Request { address: None, ipv6_source: true, client_timeout: Some(45), ..req };
    let wire = encode(&k, &req, &[9; 24]);
    let g = verify(wire.as_bytes(), v6, &k, &policy(&open), now).unwrap();
    assert_eq!((g.address, g.message.kind, g.message.client_timeout), (v6, 3, Some(45)));
    let req = Request { address: Some(v6), ..req };
    let wire = encode(&k, &req, &[3; 24]);
    let g = verify(wire.as_bytes(), v6, &k, &policy(&open), now).unwrap();
    assert_eq!(g.message.address, v6);
}

#[test]
fn key_file() {
    assert!(SpaKeys::parse("KEY_BASE64: AAAA\n").is_err());
    let k = keys();
    assert_eq!(k.encryption().len(), 32);
    assert_eq!(k.hmac().len(), 64);
    assert_eq!(format!("{k:?}"), "SpaKeys(..)");
}
