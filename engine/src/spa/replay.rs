//! The replay cache: digests of accepted messages, each kept until its timestamp has
//! left the window. Bounded; when full, new packets are refused rather than a digest
//! still inside its window forgotten. Persisted as an append-only file of
//! `HEX_DIGEST EXPIRY` lines, compacted on load.

use super::Refusal;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("SPA replay cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Digests with the time (Unix seconds) after which they cannot be replayed anyway.
#[derive(Debug)]
pub struct ReplayCache {
    entries: HashMap<[u8; 32], i64>,
    capacity: usize,
    file: Option<(PathBuf, File)>,
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ReplayCache {
    /// An in-memory cache.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache { entries: HashMap::new(), capacity, file: None }
    }

    /// A cache persisted at `path`: loads the digests still in their window at `now`,
    /// rewrites the file with only those, and appends each new digest.
    pub fn open(path: &Path, capacity: usize, now: i64) -> Result<ReplayCache, ReplayError> {
        let io = |source| ReplayError::Io { path: path.to_owned(), source };
        let mut entries = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut it = line.split_whitespace();
                    let (Some(d), Some(e)) = (it.next(), it.next()) else { continue };
                    if let (Some(d), Ok(e)) = (unhex(d), e.parse::<i64>()) {
                        if e >= now {
                            entries.insert(d, e);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).map_err(io)?;
            for (d, e) in &entries {
                writeln!(f, "{} {e}", hex(d)).map_err(io)?;
            }
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(ReplayCache { entries, capacity, file: Some((path.to_owned(), file)) })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `digest` until `expiry`, or refuses: seen before, or no room.
    /// Returns a write error separately: the digest is recorded in memory even then.
    pub fn check_and_insert(
        &mut self,
        digest: [u8; 32],
        expiry: i64,
        now: i64,
    ) -> Result<Option<ReplayError>, Refusal> {
        if let Some(&e) = self.entries.get(&digest) {
            if e >= now {
                return Err(Refusal::Replay);
            }
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| *e >= now);
            if self.entries.len() >= self.capacity {
                return Err(Refusal::ReplayFull);
            }
        }
        self.entries.insert(digest, expiry);
        if let Some((path, f)) = &mut self.file {
            if let Err(source) = writeln!(f, "{} {expiry}", hex(&digest)).and_then(|_| f.sync_data()) {
                return Ok(Some(ReplayError::Io { path: path.clone(), source }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_and_full() {
        let mut c = ReplayCache::new(2);
        assert!(c.check_and_insert([1; 32], 100, 0).is_ok());
        assert_eq!(c.check_and_insert([1; 32], 100, 50).unwrap_err(), Refusal::Replay);
        assert!(c.check_and_insert([2; 32], 100, 0).is_ok());
        assert_eq!(c.check_and_insert([3; 32], 100, 50).unwrap_err(), Refusal::ReplayFull);
        // Once the window has passed, room is made.
        assert!(c.check_and_insert([3; 32], 300, 101).is_ok());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn persisted() {
        let dir = std::env::temp_dir().join(format!("sesame-replay-{}", std::process::id()));
        let path = dir.join("spa-replay");
        let _ = std::fs::remove_file(&path);
        {
            let mut c = ReplayCache::open(&path, 10, 0).unwrap();
            assert!(c.check_and_insert([7; 32], 100, 0).unwrap().is_none());
            assert!(c.check_and_insert([8; 32], 10, 0).unwrap().is_none());
        }
        let mut c = ReplayCache::open(&path, 10, 50).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.check_and_insert([7; 32], 100, 50).unwrap_err(), Refusal::Replay);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
