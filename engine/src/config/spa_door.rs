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

#[cfg(test)]
mod tests {
    use super::super::{knockd, native};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// The fixture keys copied to a private temporary file with `mode`.
    fn key_file(tag: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sesame-spa-door-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, include_str!("../../tests/fixtures/spa/keys")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn toml_and_knockd_conf_agree() {
        let keys = key_file("agree", 0o600);
        let toml = format!(
            "[[door]]\nname = \"spa\"\nspa_keys = \"{}\"\nspa_port = 62202\nspa_max_age = 60\n\
             spa_allow_other_address = true\nopen = [\"22/tcp\"]\n",
            keys.display()
        );
        let a = native::parse(Path::new("s.toml"), &toml).unwrap();
        let conf = format!(
            "[spa]\n  SPA_Keys = {}\n  SPA_Port = 62202\n  SPA_Max_Age = 60\n  SPA_Allow_Other_Address = yes\n  Open = 22/tcp\n",
            keys.display()
        );
        let b = knockd::parse(Path::new("knockd.conf"), &conf).unwrap();
        assert_eq!(a.doors, b.doors);
        let spa = a.doors[0].spa.as_ref().unwrap();
        assert_eq!((spa.port, spa.max_age, spa.allow_other_address), (62202, 60, true));
        assert!(spa.keys.is_some());
        // And back to TOML.
        let again = native::parse(Path::new("s.toml"), &native::to_toml(&a)).unwrap();
        assert_eq!(again.doors, a.doors);
        let _ = std::fs::remove_dir_all(keys.parent().unwrap());
    }

    #[test]
    fn refused_settings() {
        let loose = key_file("loose", 0o644);
        let door = |extra: &str| format!("[[door]]\nname = \"spa\"\nopen = [\"22/tcp\"]\n{extra}");
        let err = native::parse(Path::new("s.toml"), &door(&format!("spa_keys = \"{}\"\n", loose.display())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by group or others"), "{err}");
        assert!(native::parse(Path::new("s.toml"), &door("spa_port = 1000\n")).is_err());
        let keys = key_file("refused", 0o600);
        let no_open = format!("[[door]]\nname = \"spa\"\nspa_keys = \"{}\"\n", keys.display());
        assert!(native::parse(Path::new("s.toml"), &no_open).is_err());
        let _ = std::fs::remove_dir_all(loose.parent().unwrap());
        let _ = std::fs::remove_dir_all(keys.parent().unwrap());
    }
}
