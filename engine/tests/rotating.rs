//! Rotating doors in the matcher, on a simulated clock: which step's sequence opens,
//! which is refused, how the kernel filter follows the step, and what a reload keeps.

use sesame_capture::frame::tcp_flags::SYN;
use sesame_capture::{Knock, Proto};
use sesame_engine::config::{Config, Door, Options, RotatingSequence};
use sesame_engine::doors::{DoorKey, Doors};
use sesame_engine::matcher::{Event, Matcher, Secs};
use sesame_engine::rotating::{derive, Params, Secret};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

const US: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3));
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 4));

const STEP: u32 = 30;
/// Step 1000 of 30 s starts here.
const T0: Secs = 30_000;

fn secret() -> Secret {
    Secret::new(*b"rotating matcher test secret....")
}

fn params() -> Params {
    Params { step: STEP, ..Params::default() }
}

fn config(name: &str) -> Config {
    let mut door = Door::new(name, Vec::new());
    door.seq_timeout = 10;
    door.rotating = Some(RotatingSequence {
        secret_file: PathBuf::from("/dev/null"),
        secret: secret(),
        params: params(),
    });
    Config {
        source: PathBuf::from("test.toml"),
        options: Options::default(),
        doors: vec![door, Door::new("fixed", sesame_engine::config::parse_sequence("7000,8000").unwrap())],
        tuning: Default::default(),
        firewall: Default::default(),
        metrics: Default::default(),
    }
}

fn matcher(name: &str, now: Secs) -> Matcher {
    Matcher::new(Doors::new_at(&config(name), now).unwrap(), vec![US], 1 << 20)
}

fn ports(step: u64) -> Vec<u16> {
    derive(&secret(), &params(), step)
}

/// Knocks `seq` from `src`, one port a second from `at`.
fn knock(m: &mut Matcher, src: IpAddr, seq: &[u16], at: Secs) -> Vec<Event> {
    let mut out = Vec::new();
    for (i, &port) in seq.iter().enumerate() {
        let k = Knock { src, dst: US, proto: Proto::Tcp, src_port: 40000, dst_port: port, tcp_flags: SYN };
        m.on_knock(&k, at + i as Secs, &mut out);
    }
    out
}

fn opened(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Open { .. }))
}

fn replayed(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Replayed { .. }))
}

#[test]
fn current_opens_once_previous_opens_two_back_is_refused() {
    let name = "rot-accept";
    let mut m = matcher(name, T0);
    let step = T0 / Secs::from(STEP);
    let ev = knock(&mut m, A, &ports(step), T0 + 2);
    assert!(opened(&ev), "the current sequence opens: {ev:?}");
    assert!(ev.contains(&Event::Open { src: A, door: DoorKey::of(name, 0) }));
    // The same packets again in this step, from the knocker or an eavesdropper.
    for src in [A, B] {
        let ev = knock(&mut m, src, &ports(step), T0 + 10);
        assert!(!opened(&ev) && replayed(&ev), "a replay in the step opens nothing: {ev:?}");
    }
    let ev = knock(&mut m, C, &ports(step - 2), T0 + 14);
    assert!(!opened(&ev) && !replayed(&ev), "two steps back is not a sequence at all: {ev:?}");
    let ev = knock(&mut m, C, &ports(step - 1), T0 + 18);
    assert!(opened(&ev), "the previous step's sequence opens: {ev:?}");
    let ev = knock(&mut m, B, &ports(step - 1), T0 + 22);
    assert!(replayed(&ev) && !opened(&ev), "and only once: {ev:?}");
    assert_eq!(m.stats().opened, 2);
    assert_eq!(m.stats().replayed, 3);
}

#[test]
fn the_door_follows_the_clock_and_a_used_sequence_stays_used_as_the_previous_one() {
    let mut m = matcher("rot-follow", T0);
    let step = T0 / Secs::from(STEP);
    assert!(opened(&knock(&mut m, A, &ports(step), T0 + 1)));
    // Next step: the used sequence is now the previous one, and still used.
    let t1 = T0 + Secs::from(STEP);
    let ev = knock(&mut m, B, &ports(step), t1 + 1);
    assert!(replayed(&ev) && !opened(&ev), "{ev:?}");
    assert!(opened(&knock(&mut m, B, &ports(step + 1), t1 + 6)), "the new step's sequence opens");
    // Two steps on, the first sequence is not even seen.
    let t2 = t1 + Secs::from(STEP);
    let ev = knock(&mut m, C, &ports(step), t2 + 1);
    assert!(ev.is_empty(), "{ev:?}");
    // An unused previous sequence opens in the next step.
    assert!(opened(&knock(&mut m, C, &ports(step + 2), t2 + 5)));
    let t3 = t2 + Secs::from(STEP);
    assert!(!opened(&knock(&mut m, A, &ports(step + 2), t3 + 1)), "used in its own step");
    assert!(opened(&knock(&mut m, A, &ports(step + 3), t3 + 6)));
}

#[test]
fn an_attempt_begun_before_the_boundary_completes_after_it() {
    let mut m = matcher("rot-straddle", T0);
    let step = T0 / Secs::from(STEP);
    let boundary = T0 + Secs::from(STEP);
    // Two ports before the boundary, two after: the sequence is the previous one by then.
    let ev = knock(&mut m, A, &ports(step), boundary - 2);
    assert!(opened(&ev), "{ev:?}");
}

#[test]
fn the_kernel_filter_passes_previous_current_and_next_step() {
    let mut m = matcher("rot-filter", T0);
    let step = T0 / Secs::from(STEP);
    let spec = |m: &Matcher| m.filter_spec(0, true).tcp_ports;
    let want = |steps: &[u64]| {
        let mut p: Vec<u16> = steps.iter().flat_map(|&s| ports(s)).chain([7000, 8000]).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    assert_eq!(spec(&m), want(&[step - 1, step, step + 1]));
    let generation = m.generation();
    // The timer moves the door on at the boundary even without packets.
    m.expire(T0 + Secs::from(STEP) - 1, &mut Vec::new());
    assert_eq!(m.generation(), generation, "nothing changes within the step");
    m.expire(T0 + Secs::from(STEP), &mut Vec::new());
    assert!(m.generation() > generation, "the workers rebuild their filters");
    assert_eq!(spec(&m), want(&[step, step + 1, step + 2]));
    // A clock that jumps back a long way brings the door back with it.
    m.expire(T0 - 10 * Secs::from(STEP), &mut Vec::new());
    assert_eq!(spec(&m), want(&[step - 11, step - 10, step - 9]));
    assert!(opened(&knock(&mut m, A, &ports(step - 10), T0 - 10 * Secs::from(STEP) + 1)));
}

#[test]
fn a_reload_keeps_the_used_steps_of_an_unchanged_door() {
    let name = "rot-reload";
    let mut m = matcher(name, T0);
    let step = T0 / Secs::from(STEP);
    let old = Doors::new_at(&config(name), T0).unwrap();
    let mut m2 = Matcher::new(old.clone(), vec![US], 1 << 20);
    assert!(opened(&knock(&mut m2, A, &ports(step), T0 + 1)));
    let new = Doors::new_at(&config(name), T0 + 5).unwrap();
    new.carry_over(&old);
    m2.reload(new.clone());
    assert!(replayed(&knock(&mut m2, B, &ports(step), T0 + 6)), "still used after the reload");
    // Workers share the used steps: another matcher on the same doors refuses too.
    m.reload(new);
    assert!(replayed(&knock(&mut m, C, &ports(step), T0 + 8)));
}
