//! The per-packet hot path of one capture worker, in memory: frame parse, the
//! knock-port visibility test, and the tracker update, over three traffic mixes.
//!
//! The kernel-side BPF filter is not included (it runs in the kernel, JIT-compiled,
//! before a frame reaches the ring); the frames here are the ones it passes, plus,
//! for the random-port mix, the ones it would have dropped.
//!
//! The `metrics` group runs two of the mixes twice over, with the metrics endpoint's
//! counting on (as when sesamed has `--metrics-listen`: the matcher's per-door counters
//! and knock-to-open times, published as a worker does) and off (sesamed's default).
//! It times the bench thread's CPU time rather than the wall clock, so that a machine
//! shared with other work does not bill its time slices to one variant or the other.
//!
//! Run: `cargo bench -p sesame-bench --bench hot_path` (`-- metrics/` for that group
//! alone). Throughput is in packets (elements) per second on one core.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use nix::time::{clock_gettime, ClockId};
use sesame_capture::craft::{write_frame, FrameSpec};
use sesame_capture::frame::tcp_flags::SYN;
use sesame_capture::{parse_frame, Proto};
use sesame_engine::config::{parse_sequence, Config, Door, Options, TcpFlagRule};
use sesame_engine::daemon::{publish_matcher, DoorCounts, OpenCounts};
use sesame_engine::doors::Doors;
use sesame_engine::matcher::{Event, Matcher, Sink, BATCH};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Frames per batch: enough distinct sources to defeat caches, small enough to build fast.
const FRAMES: usize = 1 << 16;
/// One worker's tracker budget: more than a default worker's 24 MiB share ((64 MiB less
/// 16 MiB of rings) over two cores), so the table is far beyond any cache.
const BUDGET: usize = 32 << 20;
const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// With metrics on, counters are published after every this many frames. A worker
/// publishes once per wake, after up to 16 ring blocks of 128 KiB (about a thousand
/// minimum-size frames each): publishing this often overstates the cost.
const PUBLISH_EVERY: usize = 1024;

/// Counts events instead of logging them: the daemon's sink drops most per-packet
/// events under load (rate limit) and hands the rare successes to another thread.
#[derive(Default)]
struct Count(u64);

impl Sink for Count {
    fn event(&mut self, e: Event) {
        self.0 += 1 + u64::from(matches!(e, Event::Open { .. }));
    }
}

fn matcher(metrics: bool) -> Matcher {
    let mut d = Door::new("openSSH", parse_sequence("7000,8000,9000").unwrap());
    d.seq_timeout = 5;
    d.tcp_flags = TcpFlagRule { set: SYN, clear: 0 };
    let mut udp = Door::new("udp", parse_sequence("7100:udp,7200:udp").unwrap());
    udp.seq_timeout = 5;
    let config = Config {
        source: "bench".into(),
        options: Options::default(),
        doors: vec![d, udp],
        tuning: Default::default(),
        firewall: Default::default(),
        metrics: Default::default(),
    };
    let mut m = Matcher::new(Doors::new(&config).unwrap(), vec![IpAddr::V4(US)], BUDGET);
    m.set_metrics(metrics);
    m
}

/// Where a worker publishes its matcher's metrics ([`publish_matcher`]).
struct Published {
    doors: DoorCounts,
    open: OpenCounts,
}

/// xorshift64*: reproducible pseudo-random sources and ports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Frames laid out back to back, as in a ring block.
struct Frames {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

fn build(mut spec_of: impl FnMut(usize) -> (Ipv4Addr, u16)) -> Frames {
    let mut buf = vec![0u8; FRAMES * 128];
    let mut spans = Vec::with_capacity(FRAMES);
    let mut at = 0;
    for i in 0..FRAMES {
        let (src, port) = spec_of(i);
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: IpAddr::V4(src),
            dst: IpAddr::V4(US),
            proto: Proto::Tcp,
            src_port: 40000 + (i % 20000) as u16,
            dst_port: port,
            tcp_flags: SYN,
        };
        let n = write_frame(&spec, &mut buf[at..at + 128]).expect("frame fits");
        spans.push((at, n));
        at += 128;
    }
    Frames { buf, spans }
}

/// Gives every frame a new source address (the IPv4 source is at bytes 26..30), so a
/// flood mix keeps meeting sources it has not seen, as a spoofed flood does.
fn reseed(frames: &mut Frames, salt: u32) {
    for &(at, _) in &frames.spans {
        let src = &mut frames.buf[at + 26..at + 30];
        let v =
            u32::from_be_bytes([src[0], src[1], src[2], src[3]]).wrapping_add(salt.wrapping_mul(0x9E37_79B9));
        src.copy_from_slice(&v.to_be_bytes());
    }
}

/// What a capture worker does with a ring block: parse each frame, then hand the
/// knocks to the matcher in batches; and publish the matcher's metrics, as a worker
/// does between blocks (which does nothing when the matcher keeps none).
fn run(m: &mut Matcher, frames: &Frames, sink: &mut Count, published: &Published) {
    let mut batch = Vec::with_capacity(BATCH);
    for block in frames.spans.chunks(PUBLISH_EVERY) {
        for chunk in block.chunks(BATCH) {
            batch.clear();
            for &(at, n) in chunk {
                if let Ok(k) = parse_frame(&frames.buf[at..at + n]) {
                    batch.push((k, 1_000));
                }
            }
            m.on_knocks(0, &batch, sink);
        }
        publish_matcher(m, &published.doors, &published.open);
    }
}

/// How a round is timed.
#[derive(Clone, Copy)]
enum Clock {
    Wall,
    /// CPU time of the bench thread only.
    ThreadCpu,
}

impl Clock {
    fn now(self) -> Duration {
        match self {
            Clock::Wall => START.with(|s| s.elapsed()),
            Clock::ThreadCpu => {
                clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock").into()
            }
        }
    }
}

thread_local! {
    static START: Instant = Instant::now();
}

/// One matcher fed one mix, round after round.
struct Bench {
    m: Matcher,
    published: Published,
    sink: Count,
    /// Rounds so far: what a flood mix's sources are reseeded from.
    salt: u32,
    /// New sources every round (a flood).
    fresh: bool,
}

impl Bench {
    /// A new matcher, its table filled first, so that the flood mixes measure the
    /// steady state: full, evicting.
    fn new(frames: &mut Frames, fresh: bool) -> Bench {
        let m = matcher(false);
        let published = Published { doors: DoorCounts::of(&m), open: OpenCounts::default() };
        let mut b = Bench { m, published, sink: Count::default(), salt: 0, fresh };
        for _ in 0..(b.m.tracker().capacity() / FRAMES + 2) {
            b.next(frames);
            b.round(frames);
        }
        b
    }

    /// Readies the next round: new sources for a flood (not timed).
    fn next(&mut self, frames: &mut Frames) {
        self.salt += 1;
        if self.fresh {
            reseed(frames, self.salt);
        }
    }

    fn round(&mut self, frames: &Frames) {
        run(&mut self.m, black_box(frames), &mut self.sink, &self.published);
    }

    /// Benchmarks further rounds as `name` in `g`, with metrics on or off.
    fn measure(
        &mut self,
        g: &mut BenchmarkGroup<WallTime>,
        name: &str,
        frames: &mut Frames,
        metrics: bool,
        clock: Clock,
    ) {
        self.m.set_metrics(metrics);
        let stages = |m: &Matcher| m.door_stats().map(|d| d.stages).sum::<u64>();
        let before = stages(&self.m);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    self.next(frames);
                    let t = clock.now();
                    self.round(frames);
                    spent += clock.now() - t;
                }
                spent
            })
        });
        let m = &self.m;
        assert!(m.tracker().len() <= m.tracker().capacity());
        let counted = stages(m) - before;
        // The variants differ in what they count, and in nothing else.
        assert_eq!(counted > 0, metrics, "{name}: {counted} stages counted");
        eprintln!(
            "{name}: tracker {} of {} slots, {} evictions, {} rejected, {counted} stages counted",
            m.tracker().len(),
            m.tracker().capacity(),
            m.stats().tracker.evictions,
            m.stats().tracker.rejected
        );
        black_box(self.sink.0);
    }
}

fn hot_path(c: &mut Criterion) {
    let mut rng = Rng(0x5e5a_3e00_0000_0001);
    // All legitimate: 1/3 of FRAMES sources, each knocking 7000, 8000, 9000 in order.
    let legit = build(|i| {
        let src = Ipv4Addr::from(0xC613_0000 + (i / 3) as u32);
        (src, [7000, 8000, 9000][i % 3])
    });
    let first_port = build(|_| (Ipv4Addr::from(rng.next() as u32), 7000));
    let mut rng = Rng(0x5e5a_3e00_0000_0002);
    let random_ports = build(|_| {
        let r = rng.next();
        (Ipv4Addr::from(r as u32), (r >> 32) as u16)
    });

    let mut mixes = [
        ("legit", legit, false),
        ("flood_first_port", first_port, true),
        ("flood_random_ports", random_ports, true),
    ];

    // sesamed's default: no metrics endpoint, so no metrics counted.
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for (name, frames, fresh) in &mut mixes {
        Bench::new(frames, *fresh).measure(&mut g, name, frames, false, Clock::Wall);
    }
    g.finish();

    // Metrics off, then on, one after the other on the same matcher (the same table, in
    // the same memory), in one group.
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.measurement_time(Duration::from_secs(10));
    for (name, frames, fresh) in mixes.iter_mut().take(2) {
        let mut bench = Bench::new(frames, *fresh);
        for (variant, on) in [("off", false), ("on", true)] {
            bench.measure(&mut g, &format!("{name}/{variant}"), frames, on, Clock::ThreadCpu);
        }
    }
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
