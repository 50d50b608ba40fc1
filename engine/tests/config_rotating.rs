//! The rotating-sequence keys in knockd.conf and TOML: the same door from both, the
//! secret file's checks (named, never shown), and what may not go together.

use sesame_engine::config::{native, Config};
use sesame_engine::rotating::Params;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("sesame-cfgrot-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn secret(&self, mode: u32) -> PathBuf {
        let p = self.0.join(format!("secret-{mode:o}"));
        std::fs::write(&p, "config test secret of some length\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn knockd(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("t.conf"), text).map_err(|e| e.to_string())
}

fn toml(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("t.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn both_syntaxes_read_the_same_rotating_door_and_toml_writes_it_back() {
    let dir = Dir::new("same");
    let secret = dir.secret(0o600);
    let a = knockd(&format!(
        "[options]\n[rot]\nSequence_Secret_File = {}\nSequence_Step = 20\nsequence_length = 5\n\
         Sequence_Ports = 20000-30000\nCommand = true\n",
        secret.display()
    ))
    .unwrap();
    let b = toml(&format!(
        "[[door]]\nname = \"rot\"\nsequence_secret_file = \"{}\"\nsequence_step = 20\nsequence_length = 5\n\
         sequence_ports = \"20000-30000\"\nstart_command = \"true\"\n",
        secret.display()
    ))
    .unwrap();
    assert_eq!(a.doors, b.doors);
    let r = a.doors[0].rotating.as_ref().unwrap();
    assert_eq!(r.params, Params { step: 20, length: 5, lo: 20000, hi: 30000 });
    assert!(a.doors[0].sequence.is_empty());
    let written = native::to_toml(&a);
    assert!(written.contains("sequence_secret_file"), "{written}");
    assert!(!written.contains("config test secret"), "the secret is never written: {written}");
    assert_eq!(toml(&written).unwrap().doors, a.doors);
    // Defaults.
    let c =
        toml(&format!("[[door]]\nname = \"d\"\nsequence_secret_file = \"{}\"\n", secret.display())).unwrap();
    assert_eq!(c.doors[0].rotating.as_ref().unwrap().params, Params::default());
    assert!(!format!("{c:?}").contains("config test secret"), "Debug never shows the secret");
}

#[test]
fn a_readable_secret_file_is_refused_by_name_at_its_line() {
    let dir = Dir::new("perm");
    let secret = dir.secret(0o640);
    let e = knockd(&format!("[options]\n[rot]\nSequence_Secret_File = {}\n", secret.display())).unwrap_err();
    assert!(e.starts_with("t.conf:3:") && e.contains(&secret.display().to_string()), "{e}");
    assert!(e.contains("0640") && !e.contains("config test secret"), "{e}");
    let e = toml(&format!("[[door]]\nname = \"d\"\n\nsequence_secret_file = \"{}\"\n", secret.display()))
        .unwrap_err();
    assert!(e.starts_with("t.toml:4:") && e.contains("group or others"), "{e}");
}

#[test]
fn what_does_not_go_together_is_refused() {
    let dir = Dir::new("bad");
    let secret = dir.secret(0o600);
    let s = secret.display();
    for (text, want) in [
        (format!("[options]\n[d]\nSequence = 1,2,3\nSequence_Secret_File = {s}\n"), "choose one"),
        ("[options]\n[d]\nSequence_Step = 5\n".to_string(), "no sequence_secret_file"),
        (format!("[options]\n[d]\nSequence_Secret_File = {s}\nSequence_Length = 2\n"), "sequence_length"),
        (format!("[options]\n[d]\nSequence_Secret_File = {s}\nSequence_Ports = 1000-1010\n"), "too narrow"),
        (format!("[options]\n[d]\nSequence_Secret_File = {s}\nSequence_Ports = 1000\n"), "LO-HI"),
        (format!("[options]\n[d]\nSequence_Secret_File = {s}\nSequence_Step = 0\n"), "sequence_step"),
    ] {
        let e = knockd(&text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    let e = toml(&format!("[[door]]\nname = \"d\"\nsequence = [1, 2, 3]\nsequence_secret_file = \"{s}\"\n"))
        .unwrap_err();
    assert!(e.contains("choose one"), "{e}");
}
