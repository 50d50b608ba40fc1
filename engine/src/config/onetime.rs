//! One-time sequences files, as knockd keeps them.
//!
//! One sequence per line in `Sequence` syntax; blank lines and lines starting with `#`
//! (after leading whitespace) are skipped. A used line is retired by writing `#` over
//! its first byte in place, so the file keeps its length and the operator can see what
//! was used (knockd's man page recommends starting each line with a space for this).

use super::{parse_sequence, ConfigError, Problem, Step};
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A one-time sequences file. Holds only the path: the file is re-read on every
/// [`current`](OneTimeFile::current) so that a marked line is never served again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimeFile {
    path: PathBuf,
}

/// An unused line of a one-time sequences file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimeLine {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the line's first byte (where `#` goes).
    pub offset: u64,
    pub sequence: Vec<Step>,
}

impl OneTimeFile {
    /// Checks that `path` can be read.
    pub fn open(path: &Path) -> Result<OneTimeFile, ConfigError> {
        let file = OneTimeFile { path: path.to_owned() };
        file.read()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first unused line; `Ok(None)` when every line is used. A line that does
    /// not parse is an error naming this file and that line.
    pub fn current(&self) -> Result<Option<OneTimeLine>, ConfigError> {
        let bytes = self.read()?;
        let mut offset = 0u64;
        for (index, raw) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let start = offset;
            offset += raw.len() as u64;
            match parse_line(raw) {
                Ok(None) => continue,
                Ok(Some(sequence)) => return Ok(Some(OneTimeLine { line, offset: start, sequence })),
                Err(problem) => return Err(self.error(line, problem)),
            }
        }
        Ok(None)
    }

    /// Retires `line` by writing `#` over its first byte, in place.
    ///
    /// The line is read back first: if the file was edited since `line` was found and
    /// that offset no longer holds the same sequence, nothing is written (an
    /// `InvalidData` error) rather than corrupting some other line.
    pub fn mark_used(&self, line: &OneTimeLine) -> io::Result<()> {
        let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        file.seek(SeekFrom::Start(line.offset))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)?;
        let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |n| n + 1);
        if !matches!(parse_line(&rest[..end]), Ok(Some(ref s)) if *s == line.sequence) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: line {} changed since it was read; not marking it used",
                    self.path.display(),
                    line.line
                ),
            ));
        }
        file.seek(SeekFrom::Start(line.offset))?;
        file.write_all(b"#")?;
        file.sync_data()
    }

    fn read(&self) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(&self.path).map_err(|e| {
            self.error(
                0,
                Problem::OneTimeFile { path: self.path.display().to_string(), reason: e.to_string() },
            )
        })
    }

    fn error(&self, line: usize, problem: Problem) -> ConfigError {
        ConfigError { file: self.path.clone(), line, problem }
    }
}

/// The sequence a one-time door starts with when its config is loaded: the file's
/// current line, or empty when all are used (the daemon then reports the door disabled).
/// Problems are phrased for the config line that names the file, so they carry the
/// one-time file's own path and line.
pub(crate) fn initial_sequence(path: &Path) -> Result<Vec<Step>, Problem> {
    let current = OneTimeFile::open(path).and_then(|f| f.current()).map_err(|e| match e.problem {
        p @ Problem::OneTimeFile { .. } => p,
        p => {
            Problem::OneTimeFile { path: path.display().to_string(), reason: format!("line {}: {p}", e.line) }
        }
    })?;
    Ok(current.map(|l| l.sequence).unwrap_or_default())
}

/// `Ok(None)` for a blank, comment or used line.
fn parse_line(raw: &[u8]) -> Result<Option<Vec<Step>>, Problem> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Problem::Syntax(format!("not UTF-8: '{}'", String::from_utf8_lossy(raw).trim())))?;
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let sequence = parse_sequence(text)?;
    if sequence.is_empty() {
        return Err(Problem::Syntax(format!("no ports in '{text}'")));
    }
    Ok(Some(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_capture::Proto;

    /// A file in a scratch directory that is removed when the returned guard drops.
    fn temp(name: &str, text: &str) -> (sesame_lab::TempDir, PathBuf) {
        let dir = sesame_lab::TempDir::new("otp").unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn skips_comments_and_blanks_and_reports_offsets() {
        let (_dir, path) = temp("skip", "# header\n\n   #used\n 7000,8000:udp\n9000\n");
        let file = OneTimeFile::open(&path).unwrap();
        let cur = file.current().unwrap().unwrap();
        assert_eq!(cur.line, 4);
        assert_eq!(cur.offset, "# header\n\n   #used\n".len() as u64);
        assert_eq!(
            cur.sequence,
            vec![Step { port: 7000, proto: Proto::Tcp }, Step { port: 8000, proto: Proto::Udp }]
        );
    }

    #[test]
    fn crlf_lines_parse() {
        let (_dir, path) = temp("crlf", "7000,8000\r\n9000\r\n");
        let file = OneTimeFile::open(&path).unwrap();
        let cur = file.current().unwrap().unwrap();
        assert_eq!(cur.sequence.len(), 2);
        file.mark_used(&cur).unwrap();
        let next = file.current().unwrap().unwrap();
        assert_eq!((next.line, next.offset), (2, 11));
    }

    #[test]
    fn refuses_to_mark_a_line_that_changed() {
        let (_dir, path) = temp("changed", "7000\n8000\n");
        let file = OneTimeFile::open(&path).unwrap();
        let cur = file.current().unwrap().unwrap();
        std::fs::write(&path, "9000\n8000\n").unwrap();
        let err = file.mark_used(&cur).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "9000\n8000\n");
    }

    #[test]
    fn missing_file_is_an_error_on_that_file() {
        let path = std::env::temp_dir().join("sesame-onetime-unit-does-not-exist");
        let err = OneTimeFile::open(&path).unwrap_err();
        assert_eq!((err.file.as_path(), err.line), (path.as_path(), 0));
        assert!(matches!(err.problem, Problem::OneTimeFile { .. }));
    }
}
