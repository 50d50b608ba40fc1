//! A door's rotating-sequence keys (sesame-only), read the same way from knockd.conf
//! (`Sequence_Secret_File`, `Sequence_Step`, `Sequence_Length`, `Sequence_Ports`) and
//! from TOML (`sequence_secret_file`, ...). See [`crate::rotating`].

use super::{Door, Problem, MAX_SEQUENCE};
use crate::rotating::{read_secret, Params, Secret};
use std::path::PathBuf;

/// A rotating sequence: ports derived for each time step from a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotatingSequence {
    pub secret_file: PathBuf,
    /// Read when the config is: a file group or others may read is refused then.
    pub secret: Secret,
    pub params: Params,
}

/// Which key of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RotationKey {
    SecretFile,
    Step,
    Length,
    Ports,
}

impl RotationKey {
    /// From a key name in upper case (knockd.conf) or lower case (TOML).
    pub(crate) fn of(name: &str) -> Option<RotationKey> {
        Some(match name.to_ascii_uppercase().as_str() {
            "SEQUENCE_SECRET_FILE" => RotationKey::SecretFile,
            "SEQUENCE_STEP" => RotationKey::Step,
            "SEQUENCE_LENGTH" => RotationKey::Length,
            "SEQUENCE_PORTS" => RotationKey::Ports,
            _ => return None,
        })
    }
}

/// The keys as written in one door, with the line of the first one (for errors that
/// concern them together).
#[derive(Clone, Debug, Default)]
pub(crate) struct RotationKeys {
    secret_file: Option<PathBuf>,
    params: Params,
    pub(crate) line: Option<usize>,
}

impl RotationKeys {
    pub(crate) fn set(&mut self, key: RotationKey, value: &str, line: usize) -> Result<(), Problem> {
        let value = value.trim();
        self.line.get_or_insert(line);
        let number = |name: &str, max: u32| {
            value.parse::<u32>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                Problem::Other(format!("invalid {name} '{value}': must be a whole number from 1 to {max}"))
            })
        };
        match key {
            RotationKey::SecretFile => {
                if value.is_empty() {
                    return Err(Problem::MissingValue { key: "sequence_secret_file".into() });
                }
                self.secret_file = Some(PathBuf::from(value));
            }
            RotationKey::Step => self.params.step = number("sequence_step", 86400)?,
            RotationKey::Length => self.params.length = number("sequence_length", MAX_SEQUENCE as u32)? as u8,
            RotationKey::Ports => {
                let (lo, hi) = Params::parse_ports(value).map_err(Problem::Other)?;
                self.params.lo = lo;
                self.params.hi = hi;
            }
        }
        Ok(())
    }

    /// Makes `door` rotating if a secret file was given: checks the parameters, reads
    /// the secret, and refuses a fixed or one-time sequence beside it. Any other key of
    /// the family without a secret file is an error too.
    pub(crate) fn finish(self, door: &mut Door, has_other_sequence: bool) -> Result<(), Problem> {
        if self.line.is_none() {
            return Ok(());
        }
        let Some(secret_file) = self.secret_file else {
            return Err(Problem::Other(format!(
                "door '{}' has sequence_step, sequence_length or sequence_ports but no sequence_secret_file",
                door.name
            )));
        };
        if has_other_sequence {
            return Err(Problem::Other(format!(
                "door '{}' has both a sequence_secret_file and a fixed or one-time sequence: choose one",
                door.name
            )));
        }
        self.params.check(MAX_SEQUENCE).map_err(Problem::Other)?;
        let secret = read_secret(&secret_file).map_err(Problem::Other)?;
        door.rotating = Some(RotatingSequence { secret_file, secret, params: self.params });
        Ok(())
    }
}
