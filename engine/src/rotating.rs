//! Rotating sequences: a door whose knock ports change with time, derived from a
//! shared secret the way RFC 6238 (TOTP) derives its codes. The whole algorithm and
//! its test vectors are in `docs/rotating.md`; the unit tests read the vectors from
//! there, so the document and the code cannot drift apart.
//!
//! For time step `T = floor(unix_time / step)`:
//!
//! - the byte stream is `B0 || B1 || B2 || ...` with `B0 = HMAC-SHA256(secret, T)` and
//!   `Bn = HMAC-SHA256(secret, T || n)` for n >= 1, `T` as 8 bytes and `n` as 4 bytes,
//!   both big-endian;
//! - it is read as 32-bit big-endian words `w`; with `N = hi - lo + 1`, a word at or
//!   above `floor(2^32 / N) * N` is skipped (no modulo bias), others give the candidate
//!   port `lo + w mod N`;
//! - a candidate is skipped if it is already in the sequence or within 1 of the port
//!   before it; a second port is skipped if no third port could turn back from it
//!   (only `LO+2` after `LO`, and `HI-2` after `HI`); a third port is skipped unless it
//!   turns back (lower than the second if the second was higher than the first, and
//!   the other way round), so no sequence is monotonic; otherwise it is the next port.
//!
//! Nothing here does I/O except [`read_secret`]; time comes in as an argument.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

type HmacSha256 = Hmac<Sha256>;

pub const DEFAULT_STEP: u32 = 30;
pub const DEFAULT_LENGTH: u8 = 4;
pub const DEFAULT_LO: u16 = 10000;
pub const DEFAULT_HI: u16 = 60000;
/// A sequence of fewer ports is always monotonic.
pub const MIN_LENGTH: u8 = 3;
/// Secrets shorter than this are refused (128 bits).
pub const MIN_SECRET: usize = 16;

/// How a door's sequences are derived: step length, ports per sequence, port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params {
    /// Seconds per time step.
    pub step: u32,
    pub length: u8,
    /// Inclusive port range.
    pub lo: u16,
    pub hi: u16,
}

impl Default for Params {
    fn default() -> Params {
        Params { step: DEFAULT_STEP, length: DEFAULT_LENGTH, lo: DEFAULT_LO, hi: DEFAULT_HI }
    }
}

impl Params {
    /// Checks what makes a derivation possible and quick: at least [`MIN_LENGTH`] ports,
    /// at most `max_length`, and a range of at least 8 ports per port of the sequence
    /// (so skipped candidates stay rare).
    pub fn check(&self, max_length: usize) -> Result<(), String> {
        if self.step == 0 {
            return Err("sequence_step must be at least 1 second".into());
        }
        if self.length < MIN_LENGTH || usize::from(self.length) > max_length {
            return Err(format!(
                "sequence_length {} is out of range: from {MIN_LENGTH} (shorter sequences are always \
                 monotonic) to {max_length}",
                self.length
            ));
        }
        if self.lo == 0 || self.lo > self.hi {
            return Err(format!("sequence_ports {}-{}: must be LO-HI with 1 <= LO <= HI", self.lo, self.hi));
        }
        let size = u32::from(self.hi) - u32::from(self.lo) + 1;
        if size < 8 * u32::from(self.length) {
            return Err(format!(
                "sequence_ports {}-{} is too narrow for {} ports: it needs at least {} ports",
                self.lo,
                self.hi,
                self.length,
                8 * u32::from(self.length)
            ));
        }
        Ok(())
    }

    /// Parses `LO-HI`.
    pub fn parse_ports(text: &str) -> Result<(u16, u16), String> {
        let bad = || format!("invalid port range '{text}': must be LO-HI, such as 10000-60000");
        let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        Ok((lo, hi))
    }

    /// The time step `unix` (seconds since the epoch) falls in.
    pub fn step_at(&self, unix: u64) -> u64 {
        unix / u64::from(self.step)
    }

    /// The first second of time step `step + 1`.
    pub fn next_boundary(&self, step: u64) -> u64 {
        step.saturating_add(1).saturating_mul(u64::from(self.step))
    }
}

/// A secret, never shown: `Debug` prints its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret from its bytes (tests, test vectors).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
}

/// Reads a secret file: its bytes, trailing whitespace (the newline) removed. Refuses
/// a file that group or others may read or write, and a secret shorter than
/// [`MIN_SECRET`] bytes. Errors name the file, never the secret.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(format!(
            "secret file {} may be read or written by group or others (mode {mode:04o}): chmod 600 it",
            path.display()
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET {
        return Err(format!(
            "secret file {} holds {} bytes; at least {MIN_SECRET} are needed (e.g. `openssl rand -base64 32`)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(Secret(bytes))
}

/// Block `n` of step `step`'s byte stream.
fn block(secret: &Secret, step: u64, n: u32) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(&step.to_be_bytes());
    if n > 0 {
        mac.update(&n.to_be_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// The ports of time step `step` (TCP, in knock order). `params` must have passed
/// [`Params::check`].
pub fn derive(secret: &Secret, params: &Params, step: u64) -> Vec<u16> {
    let length = usize::from(params.length);
    let size = u32::from(params.hi) - u32::from(params.lo) + 1;
    // Words at or above `limit` would favour the low ports of the range.
    let limit = (1u64 << 32) / u64::from(size) * u64::from(size);
    let mut ports: Vec<u16> = Vec::with_capacity(length);
    let mut n = 0u32;
    while ports.len() < length {
        let b = block(secret, step, n);
        n += 1;
        for word in b.chunks_exact(4) {
            let w = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            if u64::from(w) >= limit {
                continue;
            }
            let port = params.lo + (w % size) as u16;
            if ports.contains(&port) || ports.last().is_some_and(|&p| p.abs_diff(port) <= 1) {
                continue;
            }
            match ports.as_slice() {
                // The second port must leave room for a third that turns back.
                [first]
                    if (port > *first && port < params.lo + 3) || (port < *first && port > params.hi - 3) =>
                {
                    continue
                }
                // The third port turns back: no sequence is monotonic.
                [a, b] if (a < b) == (*b < port) => continue,
                _ => {}
            }
            ports.push(port);
            if ports.len() == length {
                break;
            }
        }
    }
    ports
}

/// Where used steps are recorded beyond the process, so that a restart does not make
/// a used sequence usable again. The daemon gives one backed by the replay file under
/// its state directory; this module itself does no I/O.
pub(crate) trait ClaimStore: fmt::Debug + Send + Sync {
    /// Records `id` until `until` (Unix seconds): `Ok(true)` if it was new, `Ok(false)`
    /// if it was recorded before (a step used before a restart), `Err` with why it
    /// could not be kept.
    fn record(&self, id: [u8; 32], until: u64) -> Result<bool, String>;
}

/// What [`Live::claim`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Not used before: it opens.
    Fresh,
    /// Used before in this step (here, or before a restart): it does not open.
    Used,
    /// Not used before, and it opens, but the store could not keep the mark (a restart
    /// would forget it); why. Refusing would lock the operator out on a full disk.
    Unsaved(String),
}

/// A rotating door's secret and parameters, and the steps whose sequence has opened
/// it, shared by every worker: a sequence opens its door once in its step, whoever
/// knocks it.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) secret: Secret,
    pub(crate) params: Params,
    used: Mutex<Vec<u64>>,
    /// The store and the door's name, once the daemon has given them.
    store: OnceLock<(Arc<dyn ClaimStore>, String)>,
}

impl Live {
    pub(crate) fn new(secret: Secret, params: Params) -> Live {
        Live { secret, params, used: Mutex::new(Vec::new()), store: OnceLock::new() }
    }

    pub(crate) fn ports(&self, step: u64) -> Vec<u16> {
        derive(&self.secret, &self.params, step)
    }

    /// Records every claim in `store` too, under the door's name (a first store stays).
    pub(crate) fn persist_in(&self, store: Arc<dyn ClaimStore>, door: &str) {
        let _ = self.store.set((store, door.to_owned()));
    }

    /// What names `step` of this door in the store: the door, its secret and parameters
    /// and the step, hashed (the secret is not kept in the clear on disk). A door whose
    /// secret or parameters change derives other sequences, and gets other names.
    fn claim_id(&self, door: &str, step: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sesame rotating claim\0");
        h.update((door.len() as u64).to_be_bytes());
        h.update(door.as_bytes());
        h.update((self.secret.0.len() as u64).to_be_bytes());
        h.update(&self.secret.0);
        h.update(self.params.step.to_be_bytes());
        h.update([self.params.length]);
        h.update(self.params.lo.to_be_bytes());
        h.update(self.params.hi.to_be_bytes());
        h.update(step.to_be_bytes());
        h.finalize().into()
    }

    /// Marks `step`'s sequence used, unless it already was, in this process or (with a
    /// store) before a restart. Steps older than the one before `step` are forgotten:
    /// they cannot open anything any more.
    pub(crate) fn claim(&self, step: u64) -> Claim {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let newest = used.iter().copied().max().unwrap_or(step).max(step);
        used.retain(|&s| s + 1 >= newest);
        if used.contains(&step) {
            return Claim::Used;
        }
        let claim = match self.store.get() {
            // The sequence opens in its step and the next: the mark must last as long.
            Some((store, door)) => {
                match store.record(self.claim_id(door, step), self.params.next_boundary(step + 1)) {
                    Ok(true) => Claim::Fresh,
                    Ok(false) => Claim::Used,
                    Err(e) => Claim::Unsaved(e),
                }
            }
            None => Claim::Fresh,
        };
        if claim != Claim::Used {
            used.push(step);
        }
        claim
    }

    /// The steps marked used, for a reload to carry over when the door is unchanged.
    pub(crate) fn used(&self) -> Vec<u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_used(&self, steps: Vec<u64>) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = steps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of `docs/rotating.md`: the `secret`, `step`, `length`, `ports` lines
    /// that precede the table, then `| T | unix time | ports |` rows.
    struct Vectors {
        secret: Secret,
        params: Params,
        rows: Vec<(u64, u64, Vec<u16>)>,
    }

    fn doc_vectors() -> Vectors {
        let text = include_str!("../../docs/rotating.md");
        let section =
            text.split("## Test vectors").nth(1).expect("docs/rotating.md has a Test vectors section");
        let value = |key: &str| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("- {key}: ")))
                .map(|v| v.split('`').nth(1).unwrap_or(v).trim().to_owned())
                .unwrap_or_else(|| panic!("docs/rotating.md: no '- {key}:' line"))
        };
        let (lo, hi) = Params::parse_ports(&value("sequence_ports")).unwrap();
        let params = Params {
            step: value("sequence_step").parse().unwrap(),
            length: value("sequence_length").parse().unwrap(),
            lo,
            hi,
        };
        let secret = Secret::new(value("secret").into_bytes());
        let rows = section
            .lines()
            .filter(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                let step: u64 = cells.first()?.parse().ok()?;
                let unix: u64 = cells.get(1)?.parse().ok()?;
                let ports = cells.get(2)?.split(',').map(|p| p.trim().parse().unwrap()).collect();
                Some((step, unix, ports))
            })
            .collect();
        Vectors { secret, params, rows }
    }

    #[test]
    fn the_documented_vectors_hold() {
        let v = doc_vectors();
        assert!(v.rows.len() >= 5, "docs/rotating.md lists at least five vectors");
        for (step, unix, ports) in &v.rows {
            assert_eq!(v.params.step_at(*unix), *step, "unix time {unix}");
            assert_eq!(&derive(&v.secret, &v.params, *step), ports, "step {step}");
        }
    }

    /// Prints the vectors for the document (`cargo test -- --nocapture print_vectors`).
    #[test]
    fn print_vectors() {
        let v = doc_vectors();
        for unix in [0u64, 59, 1_700_000_000, 1_700_000_030, 1_700_000_060, 2_000_000_000, 4_102_444_800] {
            let step = v.params.step_at(unix);
            let ports: Vec<String> = derive(&v.secret, &v.params, step).iter().map(u16::to_string).collect();
            println!("| {step} | {unix} | {} |", ports.join(", "));
        }
    }

    fn monotonic(ports: &[u16]) -> bool {
        ports.windows(2).all(|w| w[0] < w[1]) || ports.windows(2).all(|w| w[0] > w[1])
    }

    fn check_properties(ports: &[u16], p: &Params) {
        assert_eq!(ports.len(), usize::from(p.length));
        assert!(ports.iter().all(|&x| (p.lo..=p.hi).contains(&x)), "{ports:?} in {}-{}", p.lo, p.hi);
        for (i, a) in ports.iter().enumerate() {
            assert!(!ports[i + 1..].contains(a), "{ports:?} repeats {a}");
        }
        assert!(ports.windows(2).all(|w| w[0].abs_diff(w[1]) > 1), "{ports:?} has adjacent ports");
        assert!(!monotonic(ports), "{ports:?} is monotonic");
    }

    #[test]
    fn sequences_are_in_range_without_repeats_or_neighbours_and_never_monotonic() {
        let secret = Secret::new(*b"a property-test secret, 32 bytes");
        for params in [
            Params::default(),
            Params { step: 5, length: 3, lo: 2000, hi: 2023 },
            Params { step: 30, length: 8, lo: 40000, hi: 40063 },
            Params { step: 1, length: 32, lo: 1, hi: 65535 },
        ] {
            params.check(32).unwrap();
            for step in 0..3000u64 {
                check_properties(&derive(&secret, &params, 1_000_000 + step), &params);
            }
        }
    }

    #[test]
    fn steps_and_secrets_give_other_sequences() {
        let p = Params::default();
        let a = Secret::new(*b"0123456789abcdef");
        let b = Secret::new(*b"0123456789abcdeg");
        assert_ne!(derive(&a, &p, 7), derive(&a, &p, 8));
        assert_ne!(derive(&a, &p, 7), derive(&b, &p, 7));
        assert_eq!(derive(&a, &p, 7), derive(&a, &p, 7));
        // Over many steps the first port is spread over the range, not stuck low.
        let firsts: Vec<u16> = (0..2000).map(|s| derive(&a, &p, s)[0]).collect();
        let high = firsts.iter().filter(|&&x| x > 35000).count();
        assert!((800..1200).contains(&high), "{high} of 2000 first ports in the upper half");
    }

    #[test]
    fn params_are_checked() {
        assert!(Params::default().check(32).is_ok());
        let bad = [
            Params { step: 0, ..Params::default() },
            Params { length: 2, ..Params::default() },
            Params { length: 33, ..Params::default() },
            Params { lo: 0, ..Params::default() },
            Params { lo: 5000, hi: 4000, ..Params::default() },
            Params { lo: 5000, hi: 5030, length: 4, step: 30 },
        ];
        for p in bad {
            assert!(p.check(32).is_err(), "{p:?}");
        }
        assert_eq!(Params::parse_ports("10000-60000"), Ok((10000, 60000)));
        assert_eq!(Params::parse_ports(" 1 - 2 "), Ok((1, 2)));
        assert!(Params::parse_ports("10000").is_err());
        assert!(Params::parse_ports("1-70000").is_err());
    }

    #[test]
    fn steps_follow_the_clock() {
        let p = Params { step: 30, ..Params::default() };
        assert_eq!(p.step_at(0), 0);
        assert_eq!(p.step_at(29), 0);
        assert_eq!(p.step_at(30), 1);
        assert_eq!(p.next_boundary(1), 60);
    }

    #[test]
    fn a_step_is_claimed_once_and_old_steps_are_forgotten() {
        let live = Live::new(Secret::new(*b"0123456789abcdef"), Params::default());
        assert_eq!(live.claim(10), Claim::Fresh);
        assert_eq!(live.claim(10), Claim::Used);
        assert_eq!(live.claim(9), Claim::Fresh, "the previous step is its own sequence");
        assert_eq!(live.claim(9), Claim::Used);
        assert_eq!(live.claim(11), Claim::Fresh);
        assert_eq!(
            {
                let mut u = live.used();
                u.sort();
                u
            },
            [10, 11],
            "step 9 can no longer open anything, so it is forgotten"
        );
    }

    /// A store as the daemon's replay file is: it outlives the `Live` (the process).
    #[derive(Debug, Default)]
    struct Kept {
        ids: Mutex<Vec<([u8; 32], u64)>>,
        broken: bool,
    }

    impl ClaimStore for Kept {
        fn record(&self, id: [u8; 32], until: u64) -> Result<bool, String> {
            if self.broken {
                return Err("disk full".into());
            }
            let mut ids = self.ids.lock().unwrap();
            if ids.iter().any(|(i, _)| *i == id) {
                return Ok(false);
            }
            ids.push((id, until));
            Ok(true)
        }
    }

    #[test]
    fn a_stored_claim_survives_a_restart_and_names_door_secret_and_step() {
        let params = Params { step: 30, ..Params::default() };
        let store = Arc::new(Kept::default());
        let before = Live::new(Secret::new(*b"0123456789abcdef"), params);
        before.persist_in(store.clone(), "ssh");
        assert_eq!(before.claim(10), Claim::Fresh);
        // It is kept through the next step, when the sequence can still open.
        assert_eq!(store.ids.lock().unwrap()[0].1, params.next_boundary(11));
        // The restarted daemon: a new `Live`, nothing in memory, the same store.
        let after = Live::new(Secret::new(*b"0123456789abcdef"), params);
        after.persist_in(store.clone(), "ssh");
        assert_eq!(after.claim(10), Claim::Used, "used before the restart");
        assert_eq!(after.claim(11), Claim::Fresh);
        // Another door, or another secret, derives other sequences: its own marks.
        let other = Live::new(Secret::new(*b"0123456789abcdef"), params);
        other.persist_in(store.clone(), "rdp");
        assert_eq!(other.claim(10), Claim::Fresh);
        let rekeyed = Live::new(Secret::new(*b"fedcba9876543210"), params);
        rekeyed.persist_in(store.clone(), "ssh");
        assert_eq!(rekeyed.claim(10), Claim::Fresh);
        // A store that cannot keep the mark: it opens, says why, and the mark holds in
        // memory.
        let broken = Live::new(Secret::new(*b"0123456789abcdef"), params);
        broken.persist_in(Arc::new(Kept { broken: true, ..Kept::default() }), "ssh");
        assert_eq!(broken.claim(12), Claim::Unsaved("disk full".into()));
        assert_eq!(broken.claim(12), Claim::Used);
    }

    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sesame-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdefXYZ\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&path).unwrap_err();
        assert!(e.contains(&path.display().to_string()) && e.contains("0644"), "{e}");
        assert!(!e.contains("0123456789"), "the secret never appears in an error");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), Secret::new(*b"0123456789abcdefXYZ"));
        assert_eq!(format!("{:?}", read_secret(&path).unwrap()), "Secret(19 bytes)");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_secret(&path).unwrap_err().contains("at least 16"));
        assert!(read_secret(&dir.join("absent")).unwrap_err().contains("absent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
