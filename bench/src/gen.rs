//! The traffic generator: runs inside the client namespace (a packet socket belongs
//! to the namespace it was made in) and sends
//! - a spoofed-source flood from `--gen-cpus N` threads, each pinned to its own core
//!   (`--pin-cpus`) with its own `PACKET_QDISC_BYPASS` TX ring and its own random
//!   stream, each paced by [`Pacer`] to its share of the rate ([`split_rate`]) or
//!   flat out, and
//! - the legitimate knockers' sequences from a second, small TX ring, each knock
//!   flushed on its own, interleaved with the first flood thread's batches on the
//!   main thread,
//!
//! for a bounded time, then prints one JSON line ([`GenReport`]: the frames of all
//! threads summed, and each thread's own count) and exits.
//!
//! Addresses: flood sources are random in 198.18.0.0/15 (and optionally 2001:db8::/32)
//! but never in [`LEGIT_NET`], the legitimate knockers' 198.19.192.0/18, so the flood
//! can never disturb a legitimate knocker's sequence by accident.

use crate::pacing::{Pacer, Rate};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest run the generator accepts, in seconds.
pub const MAX_DURATION_SECS: f64 = 900.0;

/// Most flood threads (`--gen-cpus`).
pub const MAX_GEN_CPUS: u32 = 64;

/// The legitimate knockers' network: 198.19.192.0/18 (16382 usable sources).
pub const LEGIT_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 192, 0), 18);

/// Where the flood is aimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FloodMode {
    /// Every flood frame to the first knock port (every one starts a knock attempt).
    FirstPort,
    /// Every flood frame to a random port.
    RandomPorts,
    /// Half to the first knock port, half to random ports.
    Mixed,
}

impl FloodMode {
    pub fn name(self) -> &'static str {
        match self {
            FloodMode::FirstPort => "first-port",
            FloodMode::RandomPorts => "random-ports",
            FloodMode::Mixed => "mixed",
        }
    }
}

/// What the flood frames are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FloodProto {
    /// TCP segments with only SYN set.
    Syn,
    /// UDP datagrams (one zero byte of payload, as `knock -u` sends).
    Udp,
}

impl FloodProto {
    pub fn name(self) -> &'static str {
        match self {
            FloodProto::Syn => "syn",
            FloodProto::Udp => "udp",
        }
    }
}

/// The generator's command line (`sesame-bench gen ...`).
#[derive(Clone, Debug, clap::Args)]
pub struct GenConfig {
    /// Interface to send on (the client's veth).
    #[arg(long)]
    pub iface: String,
    /// Source MAC of every frame (the client veth's).
    #[arg(long, value_parser = parse_mac)]
    pub src_mac: Mac,
    /// Destination MAC of every frame (the server veth's).
    #[arg(long, value_parser = parse_mac)]
    pub dst_mac: Mac,
    /// The server's IPv4 address: destination of the knocks and the IPv4 flood.
    #[arg(long)]
    pub dst_ip: Ipv4Addr,
    /// The server's IPv6 address: destination of the IPv6 share of the flood.
    #[arg(long)]
    pub dst_ip6: Option<Ipv6Addr>,
    /// Fraction (0..1) of flood frames with random 2001:db8::/32 sources (needs --dst-ip6).
    #[arg(long, default_value_t = 0.0)]
    pub v6_share: f64,
    /// Where the flood goes.
    #[arg(long, value_enum, default_value = "first-port")]
    pub flood: FloodMode,
    /// TCP SYN or UDP flood.
    #[arg(long, value_enum, default_value = "syn")]
    pub proto: FloodProto,
    /// Flood rate in packets per second, or `max` (0: no flood, knockers only).
    #[arg(long, default_value = "0")]
    pub rate: Rate,
    /// How long to run, in seconds (at most 900).
    #[arg(long)]
    pub duration: f64,
    /// The knock sequence (TCP ports), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "7000,8000,9000")]
    pub ports: Vec<u16>,
    /// Number of legitimate knockers (distinct sources from 198.19.192.1 up).
    #[arg(long, default_value_t = 0)]
    pub legit: u32,
    /// Milliseconds between one knocker's knocks.
    #[arg(long, default_value_t = 2)]
    pub knock_gap_ms: u64,
    /// Seed for the flood's random addresses and ports (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most flood frames queued per flush.
    #[arg(long, default_value_t = 128)]
    pub batch: u32,
    /// Flood threads, each with its own TX ring and its share of the rate (`max`: each
    /// flat out). The first also sends the legitimate knocks.
    #[arg(long, default_value_t = 1)]
    pub gen_cpus: u32,
    /// Cores to pin the threads to, comma separated: thread i (0 is the main thread, the
    /// one that also knocks) runs on the i-th, modulo their number. Empty: not pinned.
    #[arg(long, value_delimiter = ',')]
    pub pin_cpus: Vec<usize>,
}

impl GenConfig {
    /// Checks the limits before anything is opened.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_SECS) {
            return Err(format!(
                "duration {} s: must be more than 0 and at most {MAX_DURATION_SECS} s",
                self.duration
            ));
        }
        if self.ports.is_empty() {
            return Err("empty knock sequence".into());
        }
        if !(0.0..=1.0).contains(&self.v6_share) {
            return Err(format!("v6 share {} is not between 0 and 1", self.v6_share));
        }
        if self.v6_share > 0.0 && self.dst_ip6.is_none() {
            return Err("an IPv6 share of the flood needs --dst-ip6".into());
        }
        if self.legit as u64 > legit_capacity() {
            return Err(format!("at most {} legitimate knockers", legit_capacity()));
        }
        if self.batch == 0 {
            return Err("batch must be at least 1".into());
        }
        if !(1..=MAX_GEN_CPUS).contains(&self.gen_cpus) {
            return Err(format!("gen-cpus {}: must be from 1 to {MAX_GEN_CPUS}", self.gen_cpus));
        }
        Ok(())
    }

    /// The arguments after `gen` that reproduce this configuration.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--iface".into(),
            self.iface.clone(),
            "--src-mac".into(),
            self.src_mac.to_string(),
            "--dst-mac".into(),
            self.dst_mac.to_string(),
            "--dst-ip".into(),
            self.dst_ip.to_string(),
        ];
        if let Some(ip6) = self.dst_ip6 {
            a.extend(["--dst-ip6".into(), ip6.to_string()]);
        }
        a.extend([
            "--v6-share".into(),
            self.v6_share.to_string(),
            "--flood".into(),
            self.flood.name().into(),
            "--proto".into(),
            self.proto.name().into(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--ports".into(),
            self.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
            "--legit".into(),
            self.legit.to_string(),
            "--knock-gap-ms".into(),
            self.knock_gap_ms.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--gen-cpus".into(),
            self.gen_cpus.to_string(),
        ]);
        if !self.pin_cpus.is_empty() {
            a.extend([
                "--pin-cpus".into(),
                self.pin_cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
            ]);
        }
        if let Some(seed) = self.seed {
            a.extend(["--seed".into(), seed.to_string()]);
        }
        a
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("invalid MAC address {s:?}"));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 {
            return Err(format!("invalid MAC address {s:?}"));
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
    }
    Ok(Mac(m))
}

/// What the generator did, printed as one JSON line at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenReport {
    /// Flood frames the kernel took, summed over the flood threads.
    pub flood_sent: u64,
    pub legit_frames_sent: u64,
    /// From the common start to the last thread's end (its ring drained).
    pub elapsed_s: f64,
    /// Summed over the flood threads.
    pub ring_full_waits: u64,
    /// Summed over the flood threads.
    pub tx_errors: u64,
    /// Flood threads asked for (`--gen-cpus`).
    #[serde(default = "one")]
    pub gen_cpus: u32,
    /// Each flood thread's own counters, thread 0 first (none without a flood).
    #[serde(default)]
    pub flood_threads: Vec<FloodThreadReport>,
    pub knockers: Vec<KnockerReport>,
}

fn one() -> u32 {
    1
}

/// One flood thread: where it ran, what it was asked for and what it sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodThreadReport {
    /// The core it was pinned to (`null`: not pinned).
    pub cpu: Option<usize>,
    /// Its share of the rate (`max`, or pps).
    pub rate: String,
    /// Flood frames the kernel took from its ring.
    pub sent: u64,
    pub ring_full_waits: u64,
    pub tx_errors: u64,
    /// From the common start to its ring drained.
    pub elapsed_s: f64,
    /// CPU seconds (user + system) the thread used, including the receive work the
    /// veth does on the sending core; `null` if `/proc` could not tell.
    pub cpu_s: Option<f64>,
}

/// Thread `i`'s share of `rate` split over `n` threads: flat out stays flat out for
/// each; a number of pps is split as evenly as whole numbers allow (the first
/// `rate % n` threads send one more), so the shares add up to exactly `rate`.
pub fn split_rate(rate: Rate, n: u32, i: u32) -> Rate {
    match rate {
        Rate::Max => Rate::Max,
        Rate::Pps(r) => {
            let n = n.max(1) as u64;
            Rate::Pps(r / n + u64::from((i as u64) < r % n))
        }
    }
}

/// The seed of flood thread `i`'s random stream: `seed` scrambled with the thread
/// number, so every thread draws its own sequence of sources and ports (SplitMix64
/// streams from nearby seeds would otherwise be the same stream shifted by one step).
pub fn thread_seed(seed: u64, i: u32) -> u64 {
    Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// The core thread `i` is pinned to: the `i`-th of `cpus`, modulo their number
/// (`None` without any).
pub fn thread_cpu(cpus: &[usize], i: u32) -> Option<usize> {
    (!cpus.is_empty()).then(|| cpus[i as usize % cpus.len()])
}

/// One legitimate knocker: its source and when (wall clock, ns since the Unix epoch)
/// its first and last knocks left the generator.
///
/// Wall-clock time is used because the bench reads the command FIFO in another process;
/// both read the same kernel clock, and a run is far too short for it to be stepped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnockerReport {
    pub ip: Ipv4Addr,
    pub first_knock_ns: u64,
    pub last_knock_ns: u64,
    /// Knocks actually sent (less than the sequence only if the run was cut short).
    pub knocks_sent: u32,
}

/// How many legitimate knockers [`LEGIT_NET`] holds.
pub fn legit_capacity() -> u64 {
    (1u64 << (32 - LEGIT_NET.1)) - 2
}

/// The source address of legitimate knocker `i` (0-based): 198.19.192.1 upwards.
pub fn legit_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(LEGIT_NET.0) + 1 + i)
}

/// Whether `ip` lies in [`LEGIT_NET`].
pub fn is_legit_net(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - LEGIT_NET.1);
    u32::from(ip) & mask == u32::from(LEGIT_NET.0)
}

/// One knock to send: when (since the start), which knocker, which knock of its sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnockEvent {
    pub at: Duration,
    pub knocker: u32,
    pub step: u32,
}

/// The legitimate knocks in send order: knocker `i` starts at
/// `first + (0.8 * duration - first) * i / n`, where `first` is a tenth of the run but
/// at most 10 s (so in long runs the daemon has met knockers well inside the first
/// minute, and what comes after measures its steady state), the last one finishing
/// well before the flood stops; each knocks every `gap`.
pub fn legit_schedule(n: u32, steps: u32, duration: Duration, gap: Duration) -> Vec<KnockEvent> {
    let mut ev = Vec::with_capacity(n as usize * steps as usize);
    let first = duration.mul_f64(0.1).min(Duration::from_secs(10));
    let span = duration.mul_f64(0.8).saturating_sub(first);
    for k in 0..n {
        let start = first + span.mul_f64(k as f64 / n.max(1) as f64);
        for s in 0..steps {
            ev.push(KnockEvent { at: start + gap * s, knocker: k, step: s });
        }
    }
    ev.sort_by_key(|e| (e.at, e.knocker, e.step));
    ev
}

/// SplitMix64: a fast, small, good-enough generator for addresses and ports.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random flood source in 198.18.0.0/15 outside [`LEGIT_NET`].
pub fn flood_source_v4(r: u64) -> Ipv4Addr {
    let mut off = (r & 0x1_FFFF) as u32;
    // 198.19.192.0/18 is offsets 0x1C000..=0x1FFFF of the /15; fold it onto 198.19.128.0/18.
    if off >= 0x1_C000 {
        off -= 0x4000;
    }
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + off)
}

/// A random flood source in 2001:db8::/32.
pub fn flood_source_v6(hi: u64, lo: u64) -> Ipv6Addr {
    let bits = ((0x2001_0db8u128) << 96) | ((hi as u128 & 0xFFFF_FFFF) << 64) | lo as u128;
    Ipv6Addr::from(bits)
}

/// The destination port of a flood frame: the first knock port, or a random port
/// from 1024 up (mixed: each with probability 1/2).
pub fn flood_port(mode: FloodMode, first: u16, r: u64) -> u16 {
    let random = 1024 + (r >> 16) as u16 % (65535 - 1024);
    match mode {
        FloodMode::FirstPort => first,
        FloodMode::RandomPorts => random,
        FloodMode::Mixed => {
            if r & 1 == 0 {
                first
            } else {
                random
            }
        }
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What the next flood frame is.
fn next_flood_frame(cfg: &GenConfig, rng: &mut Rng) -> (IpAddr, IpAddr, u16, u16) {
    let r = rng.next_u64();
    let r2 = rng.next_u64();
    let dport = flood_port(cfg.flood, cfg.ports[0], r2);
    let sport = 1024 + (r2 >> 40) as u16 % (65535 - 1024);
    let v6 = cfg.v6_share > 0.0 && ((r >> 40) as f64 / (1u64 << 24) as f64) < cfg.v6_share;
    match (v6, cfg.dst_ip6) {
        (true, Some(dst6)) => {
            (IpAddr::V6(flood_source_v6(r, r2 ^ r.rotate_left(17))), IpAddr::V6(dst6), sport, dport)
        }
        _ => (IpAddr::V4(flood_source_v4(r)), IpAddr::V4(cfg.dst_ip), sport, dport),
    }
}

pub use tx::run;

mod tx {
    use super::*;
    use sesame_capture::craft::{write_frame, FrameSpec};
    use sesame_capture::frame::tcp_flags::SYN;
    use sesame_capture::hint::pin_current_thread;
    use sesame_capture::tx::{TxConfig, TxRing};
    use sesame_capture::Proto;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Condvar, Mutex};

    /// Where the flood threads wait, their rings open, until the main thread starts
    /// them all at once (or calls the run off).
    #[derive(Default)]
    struct Gate {
        /// Threads arrived, and the main thread's word: `Some(true)` go, `Some(false)` stop.
        state: Mutex<(u32, Option<bool>)>,
        cv: Condvar,
    }

    impl Gate {
        /// A flood thread: says it is ready and waits for the word.
        fn arrive(&self) -> bool {
            let mut st = self.state.lock().expect("gate lock");
            st.0 += 1;
            self.cv.notify_all();
            loop {
                if let Some(go) = st.1 {
                    return go;
                }
                st = self.cv.wait(st).expect("gate lock");
            }
        }

        /// The main thread: waits until `n` threads have arrived.
        fn wait_for(&self, n: u32) {
            let mut st = self.state.lock().expect("gate lock");
            while st.0 < n {
                st = self.cv.wait(st).expect("gate lock");
            }
        }

        fn open(&self, go: bool) {
            self.state.lock().expect("gate lock").1 = Some(go);
            self.cv.notify_all();
        }
    }

    /// One flood thread's ring, random stream and pacing.
    struct FloodShard {
        ring: TxRing,
        rng: Rng,
        pacer: Pacer,
        rate: Rate,
        proto: Proto,
        flags: u8,
        /// Frames queued so far (the pacer's count).
        queued: u64,
        ring_full_waits: u64,
    }

    impl FloodShard {
        /// Opens the shard's ring; `None` for a zero share (nothing to send).
        fn open(cfg: &GenConfig, rate: Rate, seed: u64) -> anyhow::Result<Option<FloodShard>> {
            if rate.is_zero() {
                return Ok(None);
            }
            // Frames are at most 74 bytes: 128-byte slots (32 of them header) keep the ring small.
            let ring_cfg = TxConfig { frame_size: 128, frame_count: 8192, qdisc_bypass: true };
            let (proto, flags) = match cfg.proto {
                FloodProto::Syn => (Proto::Tcp, SYN),
                FloodProto::Udp => (Proto::Udp, 0),
            };
            Ok(Some(FloodShard {
                ring: TxRing::open(&cfg.iface, &ring_cfg)?,
                rng: Rng::new(seed),
                pacer: Pacer::new(rate, cfg.batch as u64),
                rate,
                proto,
                flags,
                queued: 0,
                ring_full_waits: 0,
            }))
        }

        /// Queues and sends what is due at `now` (since the start). Returns when the next
        /// frame falls due if nothing was (the caller may sleep until then), `None` if it
        /// sent something or the ring was full.
        fn step(&mut self, cfg: &GenConfig, now: Duration) -> anyhow::Result<Option<Duration>> {
            let allowed = self.pacer.allowed(now, self.queued);
            if allowed == 0 {
                return Ok(self.pacer.next_due(self.queued));
            }
            let (rng, proto, flags) = (&mut self.rng, self.proto, self.flags);
            let n = self.ring.queue(allowed as usize, |slot| {
                let (src, dst, sport, dport) = next_flood_frame(cfg, rng);
                let spec = FrameSpec {
                    src_mac: cfg.src_mac.0,
                    dst_mac: cfg.dst_mac.0,
                    src,
                    dst,
                    proto,
                    src_port: sport,
                    dst_port: dport,
                    tcp_flags: flags,
                };
                write_frame(&spec, slot).unwrap_or(0)
            });
            self.queued += n as u64;
            self.ring.flush()?;
            if (n as u64) < allowed {
                self.ring_full_waits += 1;
                self.ring.wait_writable(Duration::from_millis(2))?;
            }
            Ok(None)
        }

        /// Lets the ring drain and takes the kernel's count.
        fn finish(mut self, cpu: Option<usize>, start: Instant) -> anyhow::Result<FloodThreadReport> {
            self.ring.drain(Duration::from_secs(2))?;
            let st = self.ring.stats();
            Ok(FloodThreadReport {
                cpu,
                rate: self.rate.to_string(),
                sent: st.sent,
                ring_full_waits: self.ring_full_waits,
                tx_errors: st.wrong_format
                    + st.rejected
                    + self.queued.saturating_sub(st.sent + st.wrong_format),
                elapsed_s: start.elapsed().as_secs_f64(),
                cpu_s: None,
            })
        }
    }

    /// A finished flood thread's report, or the empty one of a thread with no share.
    fn idle_thread(cpu: Option<usize>, rate: Rate, start: Instant) -> FloodThreadReport {
        FloodThreadReport {
            cpu,
            rate: rate.to_string(),
            elapsed_s: start.elapsed().as_secs_f64(),
            ..FloodThreadReport::default()
        }
    }

    /// CPU seconds the calling thread has used (`/proc/thread-self/stat`).
    fn thread_cpu_seconds(ticks_per_sec: u64) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        crate::stats::parse_proc_stat_ticks(&stat).map(|t| t as f64 / ticks_per_sec as f64)
    }

    fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
        if let Some(c) = cpu {
            pin_current_thread(c)
                .map_err(|e| anyhow::anyhow!("pinning a generator thread to CPU {c}: {e}"))?;
        }
        Ok(())
    }

    /// Flood thread `i` (from 1): pins itself, opens its ring, waits at `gate` for the
    /// main thread's word, then floods until `duration` has passed since the common
    /// start, or until `stop` is set (the main thread failed).
    fn flood_thread(
        cfg: &GenConfig,
        i: u32,
        seed: u64,
        gate: &Gate,
        stop: &AtomicBool,
        ticks: u64,
    ) -> anyhow::Result<FloodThreadReport> {
        let cpu = thread_cpu(&cfg.pin_cpus, i);
        let rate = split_rate(cfg.rate, cfg.gen_cpus, i);
        let opened = pin(cpu).and_then(|()| FloodShard::open(cfg, rate, thread_seed(seed, i)));
        // Every thread arrives, whether it could open its ring or not.
        if !gate.arrive() {
            opened?;
            anyhow::bail!("flood thread {i}: the run was called off");
        }
        let start = Instant::now();
        let duration = Duration::from_secs_f64(cfg.duration);
        let Some(mut shard) = opened? else { return Ok(idle_thread(cpu, rate, start)) };
        loop {
            let now = start.elapsed();
            if now >= duration || stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(due) = shard.step(cfg, now)? {
                sleep_until(start, due.min(duration));
            }
        }
        let mut r = shard.finish(cpu, start)?;
        r.cpu_s = thread_cpu_seconds(ticks);
        Ok(r)
    }

    /// Runs the generator as configured and returns its report.
    pub fn run(cfg: &GenConfig) -> anyhow::Result<GenReport> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let seed = cfg.seed.unwrap_or_else(|| unix_ns(SystemTime::now()) ^ (std::process::id() as u64) << 32);
        let ticks = crate::stats::clock_ticks();
        let gate = Gate::default();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (gate, stop) = (&gate, &stop);
            let mut others = Vec::new();
            for i in 1..cfg.gen_cpus {
                let t = std::thread::Builder::new()
                    .name(format!("flood-{i}"))
                    .spawn_scoped(s, move || flood_thread(cfg, i, seed, gate, stop, ticks));
                match t {
                    Ok(t) => others.push(t),
                    Err(e) => {
                        gate.open(false);
                        return Err(anyhow::anyhow!("starting flood thread {i}: {e}"));
                    }
                }
            }
            let main = main_thread(cfg, seed, gate, others.len() as u32, ticks);
            stop.store(main.is_err(), Ordering::Relaxed);
            let mut threads = Vec::with_capacity(cfg.gen_cpus as usize);
            let mut report = main?;
            threads.append(&mut report.flood_threads);
            for t in others {
                threads.push(t.join().map_err(|_| anyhow::anyhow!("a flood thread panicked"))??);
            }
            report.gen_cpus = cfg.gen_cpus;
            report.flood_sent = threads.iter().map(|t| t.sent).sum();
            report.ring_full_waits = threads.iter().map(|t| t.ring_full_waits).sum();
            report.tx_errors = threads.iter().map(|t| t.tx_errors).sum();
            report.elapsed_s = threads.iter().map(|t| t.elapsed_s).fold(report.elapsed_s, f64::max);
            if cfg.rate.is_zero() {
                threads.clear();
            }
            report.flood_threads = threads;
            Ok(report)
        })
    }

    /// The main thread: thread 0's flood share, interleaved with the legitimate knocks.
    /// Its report holds thread 0's counters in `flood_threads`.
    fn main_thread(
        cfg: &GenConfig,
        seed: u64,
        gate: &Gate,
        others: u32,
        ticks: u64,
    ) -> anyhow::Result<GenReport> {
        let duration = Duration::from_secs_f64(cfg.duration);
        let mut rng = Rng::new(seed);
        let cpu = thread_cpu(&cfg.pin_cpus, 0);
        let rate = split_rate(cfg.rate, cfg.gen_cpus, 0);
        let legit_cfg = TxConfig { frame_size: 128, frame_count: 64, qdisc_bypass: true };
        let opened = pin(cpu).and_then(|()| {
            let flood = FloodShard::open(cfg, rate, thread_seed(seed, 0))?;
            let legit = if cfg.legit > 0 { Some(TxRing::open(&cfg.iface, &legit_cfg)?) } else { None };
            Ok((flood, legit))
        });
        // Start every thread at once, with its ring open; or none if this one failed.
        gate.wait_for(others);
        gate.open(opened.is_ok());
        let (mut flood, mut legit_ring) = opened?;
        let steps = cfg.ports.len() as u32;
        let schedule = legit_schedule(cfg.legit, steps, duration, Duration::from_millis(cfg.knock_gap_ms));
        let mut knockers: Vec<KnockerReport> = (0..cfg.legit)
            .map(|i| KnockerReport {
                ip: legit_source(i),
                first_knock_ns: 0,
                last_knock_ns: 0,
                knocks_sent: 0,
            })
            .collect();
        let legit_sport: Vec<u16> = (0..cfg.legit).map(|_| 1024 + (rng.next_u64() % 60000) as u16).collect();
        let mut report = GenReport::default();
        let mut next_ev = 0usize;
        let start = Instant::now();
        loop {
            let now = start.elapsed();
            if now >= duration {
                break;
            }
            // Legitimate knocks first: each is flushed on its own, so its timestamp is
            // when the kernel took it.
            while next_ev < schedule.len() && schedule[next_ev].at <= now {
                let ev = schedule[next_ev];
                next_ev += 1;
                let ring = legit_ring.as_mut().expect("legit ring open when knockers exist");
                let spec = FrameSpec {
                    src_mac: cfg.src_mac.0,
                    dst_mac: cfg.dst_mac.0,
                    src: IpAddr::V4(legit_source(ev.knocker)),
                    dst: IpAddr::V4(cfg.dst_ip),
                    proto: Proto::Tcp,
                    src_port: legit_sport[ev.knocker as usize],
                    dst_port: cfg.ports[ev.step as usize],
                    tcp_flags: SYN,
                };
                let mut sent = 0;
                for _ in 0..100 {
                    sent = ring.queue(1, |slot| write_frame(&spec, slot).unwrap_or(0));
                    if sent == 1 {
                        break;
                    }
                    ring.flush()?;
                    ring.wait_writable(Duration::from_millis(1))?;
                }
                ring.flush()?;
                if sent == 1 {
                    let t = unix_ns(SystemTime::now());
                    let k = &mut knockers[ev.knocker as usize];
                    if k.knocks_sent == 0 {
                        k.first_knock_ns = t;
                    }
                    k.last_knock_ns = t;
                    k.knocks_sent += 1;
                    report.legit_frames_sent += 1;
                }
            }
            let next_legit = schedule.get(next_ev).map(|e| e.at).unwrap_or(duration);
            match flood.as_mut() {
                Some(shard) => {
                    if let Some(due) = shard.step(cfg, now)? {
                        sleep_until(start, due.min(next_legit).min(duration));
                    }
                }
                None => sleep_until(start, next_legit.min(duration)),
            }
        }
        // Let the rings drain, then take the kernel's count.
        let mut mine = match flood {
            Some(shard) => shard.finish(cpu, start)?,
            None => idle_thread(cpu, rate, start),
        };
        mine.cpu_s = thread_cpu_seconds(ticks);
        report.elapsed_s = mine.elapsed_s;
        if let Some(ring) = legit_ring.as_mut() {
            ring.drain(Duration::from_secs(1))?;
        }
        report.flood_threads = vec![mine];
        report.knockers = knockers;
        Ok(report)
    }

    /// Sleeps until `at` (since `start`); short waits spin-yield for precision.
    fn sleep_until(start: Instant, at: Duration) {
        loop {
            let now = start.elapsed();
            if now >= at {
                return;
            }
            let left = at - now;
            if left > Duration::from_micros(200) {
                std::thread::sleep(left - Duration::from_micros(100));
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let m = parse_mac("02:1a:ff:00:9B:0c").unwrap();
        assert_eq!(m.0, [2, 0x1a, 0xff, 0, 0x9b, 0x0c]);
        assert_eq!(m.to_string(), "02:1a:ff:00:9b:0c");
        for bad in ["", "02:1a:ff:00:9b", "02:1a:ff:00:9b:0c:1", "02:1a:ff:00:9b:xyz", "0:1:2:3:4:g"] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn legit_sources_and_flood_sources_never_meet() {
        assert_eq!(legit_source(0), Ipv4Addr::new(198, 19, 192, 1));
        assert_eq!(legit_source(299), Ipv4Addr::new(198, 19, 193, 44));
        assert!(is_legit_net(legit_source(legit_capacity() as u32 - 1)));
        // The last one is just below the /18's broadcast address.
        assert_eq!(legit_source(legit_capacity() as u32 - 1), Ipv4Addr::new(198, 19, 255, 254));
        let mut rng = Rng::new(1);
        for _ in 0..200_000 {
            let ip = flood_source_v4(rng.next_u64());
            let o = ip.octets();
            assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19), "{ip}");
            assert!(!is_legit_net(ip), "{ip}");
        }
        assert_eq!(flood_source_v4(0x1_FFFF), Ipv4Addr::new(198, 19, 191, 255));
        assert_eq!(flood_source_v4(0), Ipv4Addr::new(198, 18, 0, 0));
        let v6 = flood_source_v6(u64::MAX, 5);
        assert_eq!(v6.segments()[..2], [0x2001, 0x0db8]);
    }

    #[test]
    fn rate_splits_over_threads_add_up() {
        for (rate, n) in [(20_000u64, 1u32), (20_000, 2), (100_001, 2), (10, 3), (1, 4), (0, 2), (999_999, 7)]
        {
            let shares: Vec<u64> = (0..n).map(|i| split_rate(Rate::Pps(rate), n, i).pps().unwrap()).collect();
            assert_eq!(shares.iter().sum::<u64>(), rate, "{rate} over {n}: {shares:?}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{rate} over {n}: {shares:?}");
        }
        assert_eq!(split_rate(Rate::Pps(100_001), 2, 0), Rate::Pps(50_001));
        assert_eq!(split_rate(Rate::Pps(100_001), 2, 1), Rate::Pps(50_000));
        // Fewer pps than threads: the last threads get nothing (and open no ring).
        assert!(split_rate(Rate::Pps(1), 4, 3).is_zero());
        // Flat out: every thread flat out.
        assert!((0..4).all(|i| split_rate(Rate::Max, 4, i) == Rate::Max));
    }

    #[test]
    fn thread_streams_differ_and_stay_out_of_the_legit_net() {
        for seed in [0u64, 42, u64::MAX] {
            let seeds: Vec<u64> = (0..8).map(|i| thread_seed(seed, i)).collect();
            let mut uniq = seeds.clone();
            uniq.sort_unstable();
            uniq.dedup();
            assert_eq!(uniq.len(), seeds.len(), "seed {seed}: {seeds:?}");
            // No stream is another one shifted by a few steps (SplitMix64 states one
            // gamma apart would be): the first frames of two threads share no source.
            let cfg = base_cfg();
            let firsts: Vec<std::collections::HashSet<IpAddr>> = seeds
                .iter()
                .map(|&s| {
                    let mut rng = Rng::new(s);
                    (0..64).map(|_| next_flood_frame(&cfg, &mut rng).0).collect()
                })
                .collect();
            for a in 0..firsts.len() {
                for b in a + 1..firsts.len() {
                    assert!(firsts[a].intersection(&firsts[b]).count() <= 1, "threads {a} and {b}");
                }
            }
            for &s in &seeds {
                let mut rng = Rng::new(s);
                for _ in 0..20_000 {
                    match next_flood_frame(&cfg, &mut rng).0 {
                        IpAddr::V4(ip) => assert!(!is_legit_net(ip), "{ip}"),
                        IpAddr::V6(ip) => assert_eq!(ip.segments()[..2], [0x2001, 0x0db8]),
                    }
                }
            }
        }
        // The same seed gives the same streams (a run can be repeated).
        assert_eq!(thread_seed(7, 1), thread_seed(7, 1));
        assert_ne!(thread_seed(7, 1), thread_seed(8, 1));
    }

    #[test]
    fn threads_are_pinned_round_robin() {
        assert_eq!(thread_cpu(&[], 0), None);
        assert_eq!(thread_cpu(&[3], 2), Some(3));
        assert_eq!(
            (0..4).map(|i| thread_cpu(&[0, 1], i)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(0), Some(1)]
        );
    }

    #[test]
    fn flood_ports() {
        let mut rng = Rng::new(7);
        let (mut first, mut other) = (0, 0);
        for _ in 0..10_000 {
            let r = rng.next_u64();
            assert_eq!(flood_port(FloodMode::FirstPort, 7000, r), 7000);
            assert!(flood_port(FloodMode::RandomPorts, 7000, r) >= 1024);
            if flood_port(FloodMode::Mixed, 7000, r) == 7000 {
                first += 1
            } else {
                other += 1
            }
        }
        assert!((4000..6000).contains(&first) && first + other == 10_000, "{first}");
    }

    #[test]
    fn schedule_spreads_knockers_over_the_run() {
        let d = Duration::from_secs(10);
        let ev = legit_schedule(50, 3, d, Duration::from_millis(2));
        assert_eq!(ev.len(), 150);
        assert!(ev.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(ev[0], KnockEvent { at: Duration::from_secs(1), knocker: 0, step: 0 });
        let last = ev.last().unwrap();
        assert_eq!(last.knocker, 49);
        assert_eq!(last.step, 2);
        assert!(last.at < d.mul_f64(0.8) + Duration::from_millis(5), "{last:?}");
        // Each knocker's steps are in order, `gap` apart.
        let k7: Vec<_> = ev.iter().filter(|e| e.knocker == 7).collect();
        assert_eq!(k7.iter().map(|e| e.step).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(k7[2].at - k7[0].at, Duration::from_millis(4));
        assert!(legit_schedule(0, 3, d, Duration::ZERO).is_empty());
        // Long runs start knocking at 10 s, within the first minute.
        let long = legit_schedule(50, 3, Duration::from_secs(600), Duration::from_millis(2));
        assert_eq!(long[0].at, Duration::from_secs(10));
        assert!(long.last().unwrap().at < Duration::from_secs(481));
    }

    fn base_cfg() -> GenConfig {
        GenConfig {
            iface: "sc1".into(),
            src_mac: Mac([2, 0, 0, 0, 0, 1]),
            dst_mac: Mac([2, 0, 0, 0, 0, 2]),
            dst_ip: Ipv4Addr::new(198, 18, 1, 1),
            dst_ip6: Some("2001:db8:1::1".parse().unwrap()),
            v6_share: 0.5,
            flood: FloodMode::FirstPort,
            proto: FloodProto::Syn,
            rate: Rate::Max,
            duration: 1.0,
            ports: vec![7000, 8000, 9000],
            legit: 0,
            knock_gap_ms: 2,
            seed: Some(1),
            batch: 128,
            gen_cpus: 1,
            pin_cpus: vec![],
        }
    }

    #[test]
    fn config_limits_and_args_round_trip() {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            g: GenConfig,
        }
        let base = [
            "x",
            "--iface",
            "sc1",
            "--src-mac",
            "02:00:00:00:00:01",
            "--dst-mac",
            "02:00:00:00:00:02",
            "--dst-ip",
            "198.18.1.1",
            "--duration",
            "2",
            "--rate",
            "20k",
            "--legit",
            "10",
        ];
        let g = W::try_parse_from(base).unwrap().g;
        g.validate().unwrap();
        assert_eq!(g.rate, Rate::Pps(20_000));
        assert_eq!(g.ports, [7000, 8000, 9000]);
        let again = W::try_parse_from(std::iter::once("x".to_string()).chain(g.to_args())).unwrap().g;
        assert_eq!(again.to_args(), g.to_args());
        let mut long = g.clone();
        long.duration = 901.0;
        assert!(long.validate().unwrap_err().contains("900"));
        let mut v6 = g.clone();
        v6.v6_share = 0.5;
        assert!(v6.validate().is_err());
        v6.dst_ip6 = Some("2001:db8:1::1".parse().unwrap());
        v6.validate().unwrap();
        assert_eq!(g.gen_cpus, 1);
        assert!(g.pin_cpus.is_empty() && !g.to_args().contains(&"--pin-cpus".to_string()));
        let mut multi = g.clone();
        multi.gen_cpus = 2;
        multi.pin_cpus = vec![0, 1];
        let again = W::try_parse_from(std::iter::once("x".to_string()).chain(multi.to_args())).unwrap().g;
        assert_eq!((again.gen_cpus, again.pin_cpus.clone()), (2, vec![0, 1]));
        for bad in [0, MAX_GEN_CPUS + 1] {
            multi.gen_cpus = bad;
            assert!(multi.validate().unwrap_err().contains("gen-cpus"));
        }
    }
}
