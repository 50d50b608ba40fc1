//! A door's single-packet-authorization settings (`spa_keys`, `spa_port`,
//! `spa_max_age`, `spa_allow_other_address`; knockd.conf: `SPA_Keys`, ...). A door
//! with `spa_keys` needs no sequence: it opens its `open` ports for an fwknop packet.

use super::{Door, Problem};
use crate::spa::{SpaKeys, DEFAULT_MAX_AGE, DEFAULT_PORT};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaDoor {
    pub keys_file: PathBuf,
    /// Read when the config is; `None` until [`finish`] ran.
    pub keys: Option<SpaKeys>,
    pub port: u16,
    pub max_age: u32,
    pub allow_other_address: bool,
}

impl Default for SpaDoor {
    fn default() -> SpaDoor {
        SpaDoor {
            keys_file: PathBuf::new(),
            keys: None,
            port: DEFAULT_PORT,
            max_age: DEFAULT_MAX_AGE,
            allow_other_address: false,
        }
    }
}

/// Sets one `spa_*` key (lower-case name without the prefix: `keys`, `port`,
/// `max_age`, `allow_other_address`); `false` for a name that is not one.
pub fn set(door: &mut Door, name: &str, value: &str) -> Result<bool, Problem> {
    let bad = |what: &str| Problem::Other(format!("spa_{name} = '{value}': {what}"));
    let spa = door.spa.get_or_insert_with(SpaDoor::default);
    let value = value.trim();
    match name {
        "keys" => spa.keys_file = PathBuf::from(value),
        "port" => {
            spa.port = value.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("a UDP port 1-65535"))?
        }
        "max_age" => {
            spa.max_age = value
                .parse()
                .ok()
                .filter(|s| (1..=86400).contains(s))
                .ok_or_else(|| bad("1-86400 seconds"))?
        }
        "allow_other_address" => {
            spa.allow_other_address = match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => return Err(bad("true or false")),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Checks an SPA door once all its keys are read and loads its key file (refused if
/// group or others may read it). A door without `spa_*` keys passes untouched.
pub fn finish(door: &mut Door) -> Result<(), Problem> {
    let Some(spa) = &mut door.spa else { return Ok(()) };
    if spa.keys_file.as_os_str().is_empty() {
        return Err(Problem::Other(format!("door {}: spa_* settings need spa_keys = \"FILE\"", door.name)));
    }
    if door.open.is_empty() {
        return Err(Problem::Other(format!(
            "door {}: an SPA door needs `open`: the ports a packet may ask for",
            door.name
        )));
    }
    spa.keys = Some(SpaKeys::load(&spa.keys_file).map_err(|e| Problem::Other(e.to_string()))?);
    Ok(())
}
