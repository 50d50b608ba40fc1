//! What a flood of random SPA-sized datagrams costs the worker: `spa::verify` over
//! 1024 distinct packets of 205 bytes (fwknop 2.6's usual size). Two floods: random
//! bytes (the alphabet check rejects them) and random base64 text, which passes the
//! length and alphabet checks, so HMAC-SHA256 over ~160 bytes is the gate that rejects
//! it. Neither allocates. Timed in the thread's CPU time (as the hot-path bench is), so
//! a shared, loaded machine measures what a packet costs one core, not how often the
//! bench was descheduled. Throughput is packets per CPU-second of one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nix::time::{clock_gettime, ClockId};
use sesame_engine::config::Port;
use sesame_engine::spa::{self, Policy, SpaKeys};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn cpu_now() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock").into()
}

const PACKETS: usize = 1024;
const LEN: usize = 205;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn packets(alphabet: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..PACKETS)
        .map(|_| {
            (0..LEN)
                .map(|_| {
                    let r = xorshift(&mut s);
                    match alphabet {
                        Some(a) => a[(r % a.len() as u64) as usize],
                        None => r as u8,
                    }
                })
                .collect()
        })
        .collect()
}

fn flood(c: &mut Criterion) {
    let keys = SpaKeys::parse(include_str!("../../engine/tests/fixtures/spa/keys")).unwrap();
    let open: [Port; 1] = ["22/tcp".parse().unwrap()];
    let policy = Policy { max_age: 120, allow_other_address: false, open: &open };
    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let b64: Vec<u8> = (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').chain(*b"+/").collect();
    let mut g = c.benchmark_group("spa_flood");
    g.throughput(Throughput::Elements(PACKETS as u64));
    for (name, set) in [("random_bytes", packets(None)), ("random_base64", packets(Some(&b64)))] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = cpu_now();
                for _ in 0..iters {
                    let mut refused = 0u32;
                    for p in &set {
                        refused += u32::from(spa::verify(black_box(p), src, &keys, &policy, 0).is_err());
                    }
                    assert_eq!(refused as usize, PACKETS);
                    black_box(refused);
                }
                cpu_now() - start
            })
        });
    }
    g.finish();
}

criterion_group!(benches, flood);
criterion_main!(benches);
