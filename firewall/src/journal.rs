//! The grant journal: every open grant, on disk, so that a crash never leaves a door
//! open for ever.
//!
//! One file, `grants.journal` under the state directory, appended to and fsynced:
//! an `open` record (door, address, expiry as UNIX time, and exactly how to close:
//! the substituted stop command, or the backend's name and ports) is durable before
//! the grant is opened; a `close` record follows a successful close. The latest
//! record for a (door, address) wins. Each line carries a checksum, so a record torn
//! by a crash mid-write (or damaged later) is skipped, never fatal. When the file
//! holds many more records than live grants it is compacted: a new file with the live
//! set, fsync, rename over the old one, fsync the directory.

use crate::backend::Port;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The journal's file name in the state directory.
pub const FILE: &str = "grants.journal";
const HEADER: &str = "sesame-grants 1";
/// Compact when the file holds more than `2 * live + SLACK` records.
const SLACK: usize = 64;

/// How to close a journaled grant, exactly as it will be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseBy {
    /// The stop command, `%IP%` already substituted.
    Command(String),
    /// `backend.close` for these ports; the backend is found again by name.
    Native { backend: String, ports: Vec<Port> },
}

/// An open grant as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub door_name: String,
    pub ip: IpAddr,
    /// When the grant closes, in wall-clock time (kept to the millisecond).
    pub until: SystemTime,
    pub close: CloseBy,
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Open(Entry),
    Close { door_name: String, ip: IpAddr },
}

type Key = (String, IpAddr);

impl Record {
    fn key(&self) -> Key {
        match self {
            Record::Open(e) => (e.door_name.clone(), e.ip),
            Record::Close { door_name, ip } => (door_name.clone(), *ip),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("grant journal {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What reading the journal at start found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The grants that were open, one per (door, address).
    pub entries: Vec<Entry>,
    /// Lines skipped as torn or damaged.
    pub skipped: usize,
}

/// The journal file, open for appending, with the live set it describes.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    live: HashMap<Key, Entry>,
    /// Records in the file now (compaction compares this with `live`).
    records: usize,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, replays it, and rewrites it with
    /// just the live grants, which also drops a torn tail before anything is appended.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(FILE);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| JournalError::Io { path, op, source }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| {
            JournalError::Io { path: dir.to_owned(), op: "creating the directory", source }
        })?;
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading")(e)),
        };
        let (live, skipped) = replay(&text);
        let file = open_append(&path).map_err(io("opening"))?;
        let mut journal = Journal { dir: dir.to_owned(), path, file, live, records: 0 };
        journal.compact()?;
        let mut entries: Vec<Entry> = journal.live.values().cloned().collect();
        entries.sort_by(|a, b| (a.until, &a.door_name, a.ip).cmp(&(b.until, &b.door_name, b.ip)));
        Ok((journal, Replay { entries, skipped }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` and fsyncs once; compacts if the file has grown much larger
    /// than the live set. On error the live set is unchanged.
    pub fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let mut buf = String::new();
        for r in records {
            buf.push_str(&line(r));
        }
        let path = &self.path;
        let io = |op: &'static str| move |source| JournalError::Io { path: path.clone(), op, source };
        self.file.write_all(buf.as_bytes()).map_err(io("appending"))?;
        self.file.sync_data().map_err(io("fsync"))?;
        self.records += records.len();
        for r in records {
            match r {
                Record::Open(e) => {
                    self.live.insert(r.key(), e.clone());
                }
                Record::Close { .. } => {
                    self.live.remove(&r.key());
                }
            }
        }
        if self.records > 2 * self.live.len() + SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// The grants open according to the journal.
    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.live.values()
    }

    /// Records in the file now.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Writes the live set to a new file, fsyncs it, renames it over the journal and
    /// fsyncs the directory, so that a crash leaves either the old file or the new one.
    fn compact(&mut self) -> Result<(), JournalError> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |path: &Path, op: &'static str| {
            let path = path.to_owned();
            move |source| JournalError::Io { path, op, source }
        };
        let mut entries: Vec<&Entry> = self.live.values().collect();
        entries.sort_by(|a, b| (a.until, &a.door_name, a.ip).cmp(&(b.until, &b.door_name, b.ip)));
        let mut text = format!("{HEADER}\n");
        for e in &entries {
            text.push_str(&line(&Record::Open((*e).clone())));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp, "creating"))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp, "writing"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path, "renaming the compacted file over"))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir, "fsync of the directory"))?;
        self.file = open_append(&self.path).map_err(io(&self.path, "opening"))?;
        self.records = entries.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// The live set a journal's bytes describe, and how many lines were skipped.
fn replay(bytes: &[u8]) -> (HashMap<Key, Entry>, usize) {
    let mut live = HashMap::new();
    let mut skipped = 0;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // The piece after the last newline is empty, or a record torn mid-write.
    if lines.pop().is_some_and(|tail| !tail.is_empty()) {
        skipped += 1;
    }
    for raw in lines {
        let Ok(text) = std::str::from_utf8(raw) else {
            skipped += 1;
            continue;
        };
        if text == HEADER || text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Some(Record::Open(e)) => {
                live.insert((e.door_name.clone(), e.ip), e);
            }
            Some(Record::Close { door_name, ip }) => {
                live.remove(&(door_name, ip));
            }
            None => skipped += 1,
        }
    }
    (live, skipped)
}

/// FNV-1a, 64 bits: enough to tell a torn or damaged line from a whole one.
fn checksum(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn line(r: &Record) -> String {
    let payload = payload(r);
    format!("{:016x} {payload}\n", checksum(&payload))
}

fn payload(r: &Record) -> String {
    match r {
        Record::Open(e) => {
            let ms = e.until.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
            let until = format!("{}.{:03}", ms / 1000, ms % 1000);
            let how = match &e.close {
                CloseBy::Command(c) => format!("cmd\t{}", escape(c)),
                CloseBy::Native { backend, ports } => {
                    let ports: Vec<String> = ports.iter().map(Port::to_string).collect();
                    format!("native\t{}\t{}", escape(backend), ports.join(","))
                }
            };
            format!("open\t{}\t{}\t{until}\t{how}", escape(&e.door_name), e.ip)
        }
        Record::Close { door_name, ip } => format!("close\t{}\t{ip}", escape(door_name)),
    }
}

fn parse_line(text: &str) -> Option<Record> {
    let (sum, payload) = text.split_once(' ')?;
    if u64::from_str_radix(sum, 16).ok()? != checksum(payload) {
        return None;
    }
    let f: Vec<&str> = payload.split('\t').collect();
    match f.as_slice() {
        ["close", door, ip] => Some(Record::Close { door_name: unescape(door)?, ip: ip.parse().ok()? }),
        ["open", door, ip, until, how @ ..] => {
            let (secs, ms) = until.split_once('.')?;
            let until = UNIX_EPOCH
                + Duration::from_secs(secs.parse().ok()?)
                + Duration::from_millis(ms.parse().ok()?);
            let close = match how {
                ["cmd", c] => CloseBy::Command(unescape(c)?),
                ["native", backend, ports] => CloseBy::Native {
                    backend: unescape(backend)?,
                    ports: if ports.is_empty() {
                        Vec::new()
                    } else {
                        ports.split(',').map(str::parse).collect::<Result<_, _>>().ok()?
                    },
                },
                _ => return None,
            };
            Some(Record::Open(Entry { door_name: unescape(door)?, ip: ip.parse().ok()?, until, close }))
        }
        _ => None,
    }
}

/// Tabs and newlines separate fields and records; door names and commands may hold them.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

/// A write for the journal thread. `ack`, if any, gets the outcome once the record is
/// durable (or failed); without one, a failure is reported by the thread itself.
pub(crate) struct Write {
    pub(crate) record: Record,
    pub(crate) ack: Option<Sender<Result<(), String>>>,
}

/// Records written with one fsync at most (group commit).
const BATCH: usize = 256;

/// The journal thread's loop: takes what is queued, writes it with one fsync, answers.
/// Ends when every sender is gone. `failed` is told about failures nobody waits for.
pub(crate) fn writer_loop(mut journal: Journal, rx: Receiver<Write>, failed: impl Fn(String)) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let records: Vec<Record> = batch.iter().map(|w| w.record.clone()).collect();
        let result = journal.append(&records).map_err(|e| e.to_string());
        let mut unheard = false;
        for w in batch.drain(..) {
            match w.ack {
                Some(ack) => unheard |= ack.send(result.clone()).is_err() && result.is_err(),
                None => unheard |= result.is_err(),
            }
        }
        if let (true, Err(e)) = (unheard, &result) {
            failed(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::L4;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const IP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("sesame-journal-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    fn cmd(door: &str, ip: IpAddr, until: SystemTime, stop: &str) -> Entry {
        Entry { door_name: door.into(), ip, until, close: CloseBy::Command(stop.into()) }
    }

    #[test]
    fn lines_round_trip_including_awkward_text() {
        let records = [
            Record::Open(cmd("door\twith\\odd\nname", IP, at(1_700_000_000, 5), "iptables -D\t%x \\n")),
            Record::Open(Entry {
                door_name: "ssh".into(),
                ip: IP6,
                until: at(1_700_000_001, 999),
                close: CloseBy::Native {
                    backend: "nftables".into(),
                    ports: vec![Port { port: 22, proto: L4::Tcp }, Port { port: 53, proto: L4::Udp }],
                },
            }),
            Record::Close { door_name: "ssh".into(), ip: IP6 },
        ];
        for r in records {
            let l = line(&r);
            assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l:?}");
            assert_eq!(parse_line(l.trim_end_matches('\n')), Some(r));
        }
    }

    #[test]
    fn write_then_replay_keeps_the_latest_record_per_grant() {
        let d = Dir::new("replay");
        let (mut j, r) = Journal::open(&d.0).unwrap();
        assert!(r.entries.is_empty());
        j.append(&[Record::Open(cmd("a", IP, at(100, 0), "stop a"))]).unwrap();
        j.append(&[Record::Open(cmd("b", IP, at(50, 0), "stop b"))]).unwrap();
        // An extension rewrites a's expiry; b is closed.
        j.append(&[
            Record::Open(cmd("a", IP, at(200, 0), "stop a")),
            Record::Close { door_name: "b".into(), ip: IP },
        ])
        .unwrap();
        drop(j);
        let (j, r) = Journal::open(&d.0).unwrap();
        assert_eq!(r.entries, vec![cmd("a", IP, at(200, 0), "stop a")]);
        assert_eq!(r.skipped, 0);
        assert_eq!(j.records(), 1, "opening rewrites the file with the live set only");
        let text = std::fs::read_to_string(d.0.join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_cut_off() {
        let d = Dir::new("torn");
        let (mut j, _) = Journal::open(&d.0).unwrap();
        j.append(&[Record::Open(cmd("a", IP, at(100, 0), "stop a"))]).unwrap();
        drop(j);
        // A crash in the middle of writing the next record.
        let full = line(&Record::Open(cmd("b", IP, at(100, 0), "stop b")));
        let mut f = OpenOptions::new().append(true).open(d.0.join(FILE)).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);
        let (mut j, r) = Journal::open(&d.0).unwrap();
        assert_eq!(r.entries, vec![cmd("a", IP, at(100, 0), "stop a")]);
        assert_eq!(r.skipped, 1);
        // What is appended next is whole, not glued to the torn piece.
        j.append(&[Record::Open(cmd("c", IP, at(100, 0), "stop c"))]).unwrap();
        drop(j);
        let (_, r) = Journal::open(&d.0).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.skipped, 0);
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_skipped_not_fatal() {
        let d = Dir::new("damaged");
        std::fs::create_dir_all(&d.0).unwrap();
        let good = line(&Record::Open(cmd("a", IP, at(100, 0), "stop a")));
        let bad = line(&Record::Open(cmd("b", IP, at(100, 0), "stop b"))).replace("stop b", "stop X");
        std::fs::write(d.0.join(FILE), format!("{HEADER}\n{bad}garbage\n{good}")).unwrap();
        let (_, r) = Journal::open(&d.0).unwrap();
        assert_eq!(r.entries, vec![cmd("a", IP, at(100, 0), "stop a")]);
        assert_eq!(r.skipped, 2);
    }

    #[test]
    fn compaction_keeps_the_file_near_the_live_set() {
        let d = Dir::new("compact");
        let (mut j, _) = Journal::open(&d.0).unwrap();
        let mut max_records = 0;
        // 1000 short grants open and close; 3 stay open.
        for i in 0..1000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i));
            j.append(&[Record::Open(cmd("a", ip, at(100, 0), "stop"))]).unwrap();
            if i % 400 != 0 {
                j.append(&[Record::Close { door_name: "a".into(), ip }]).unwrap();
            }
            max_records = max_records.max(j.records());
        }
        assert_eq!(j.live().count(), 3);
        assert!(max_records <= 2 * 3 + SLACK + 1, "{max_records}");
        let lines = std::fs::read_to_string(d.0.join(FILE)).unwrap().lines().count();
        assert!(lines <= 1 + 2 * 3 + SLACK, "{lines} lines");
        assert!(!d.0.join(format!("{FILE}.tmp")).exists());
        drop(j);
        let (_, r) = Journal::open(&d.0).unwrap();
        assert_eq!(r.entries.len(), 3);
    }

    #[test]
    fn writer_thread_acknowledges_once_durable() {
        let d = Dir::new("writer");
        let (j, _) = Journal::open(&d.0).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let t = std::thread::spawn(move || writer_loop(j, rx, |e| panic!("{e}")));
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        tx.send(Write { record: Record::Open(cmd("a", IP, at(100, 0), "stop a")), ack: Some(ack_tx) })
            .unwrap();
        assert_eq!(ack_rx.recv().unwrap(), Ok(()));
        // Durable now: a fresh reader sees it while the writer still runs.
        let text = std::fs::read_to_string(d.0.join(FILE)).unwrap();
        assert!(text.contains("stop a"), "{text}");
        drop(tx);
        t.join().unwrap();
    }
}
