//! The key file `fwknop --key-gen` writes: `KEY_BASE64: ...` and `HMAC_KEY_BASE64: ...`.
//! Keys never appear in `Debug` output, logs or command lines.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::Hmac;
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};

/// A door's two keys, decoded, and the HMAC already keyed (its padded key blocks
/// hashed once, not per packet: a copy of this state is all a packet's check starts from).
#[derive(Clone)]
pub struct SpaKeys {
    encryption: Vec<u8>,
    hmac: Vec<u8>,
    keyed: Hmac<Sha256>,
}

impl PartialEq for SpaKeys {
    fn eq(&self, other: &SpaKeys) -> bool {
        self.encryption == other.encryption && self.hmac == other.hmac
    }
}

impl Eq for SpaKeys {}

impl fmt::Debug for SpaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpaKeys(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("SPA key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("SPA key file {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("SPA key file {path}: {problem}")]
    Content { path: PathBuf, problem: &'static str },
}

impl SpaKeys {
    /// Keys from their raw bytes (encryption key at most 32 bytes).
    pub fn new(encryption: Vec<u8>, hmac: Vec<u8>) -> Option<SpaKeys> {
        if encryption.is_empty() || encryption.len() > 32 || hmac.is_empty() {
            return None;
        }
        let keyed = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&hmac).ok()?;
        Some(SpaKeys { encryption, hmac, keyed })
    }

    /// The HMAC keyed with the HMAC key, ready for `update`.
    pub(crate) fn keyed_hmac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }

    pub fn encryption(&self) -> &[u8] {
        &self.encryption
    }

    pub fn hmac(&self) -> &[u8] {
        &self.hmac
    }

    /// Parses the file's text (other lines, as fwknoprc stanzas have, are ignored).
    pub fn parse(text: &str) -> Result<SpaKeys, &'static str> {
        let mut enc = None;
        let mut mac = None;
        for line in text.lines() {
            let line = line.trim();
            let (name, value) = match line.split_once(':').or_else(|| line.split_once(char::is_whitespace)) {
                Some(kv) => kv,
                None => continue,
            };
            let value = value.trim();
            match name.trim() {
                "KEY_BASE64" => enc = Some(STANDARD.decode(value).map_err(|_| "KEY_BASE64 is not base64")?),
                "HMAC_KEY_BASE64" => {
                    mac = Some(STANDARD.decode(value).map_err(|_| "HMAC_KEY_BASE64 is not base64")?)
                }
                _ => {}
            }
        }
        let enc = enc.ok_or("no KEY_BASE64 line")?;
        let mac = mac.ok_or("no HMAC_KEY_BASE64 line (sesame needs HMAC keys)")?;
        SpaKeys::new(enc, mac).ok_or("KEY_BASE64 must decode to 1..=32 bytes, HMAC_KEY_BASE64 to at least 1")
    }

    /// Reads a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<SpaKeys, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Mode { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        SpaKeys::parse(&text).map_err(|problem| KeyError::Content { path: path.to_owned(), problem })
    }
}
