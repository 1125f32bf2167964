//! The profile: what `login` saves (server, user, token) and the other commands
//! read, as JSON. It holds a bearer token, so it is written readable by its owner
//! only, and replaced whole (temporary file, then rename): a crash mid-write
//! leaves the old profile, never half of one.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One signed-in user of one server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// The HTTP API, `http://host:port`, or several separated by commas.
    pub(crate) http: String,
    /// The MQTT listener, `mqtt://host:port`, or several separated by commas.
    pub(crate) mqtt: String,
    /// The user id.
    pub(crate) user: String,
    /// The bearer token (also the MQTT password).
    pub(crate) token: String,
    /// When the token expires, Unix seconds (as `POST /v1/tokens` said).
    pub(crate) expires_at: u64,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("http", &self.http)
            .field("mqtt", &self.mqtt)
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `$XDG_CONFIG_HOME/imqtt/profile.json`, else `~/.config/imqtt/profile.json`.
pub(crate) fn default_path() -> anyhow::Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    // The XDG spec ignores a relative XDG_CONFIG_HOME.
    let config = match var("XDG_CONFIG_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => match var("HOME") {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!(
                "no profile location: neither XDG_CONFIG_HOME nor HOME is set; give --profile FILE"
            ),
        },
    };
    Ok(config.join("imqtt").join("profile.json"))
}

/// The profile at `path`; `None` when there is no such file.
pub(crate) fn load(path: &Path) -> anyhow::Result<Option<Profile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("profile {}", path.display())),
    };
    serde_json::from_str(&text).map(Some).with_context(|| {
        format!(
            "profile {}: not a profile (run `imqtt-cli login` to write a new one)",
            path.display()
        )
    })
}

/// Writes `profile` to `path`, creating its directory.
pub(crate) fn save(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    let context = || format!("saving the profile {}", path.display());
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("profile {}: not a file path", path.display());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    private_dir(dir).with_context(context)?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut text = serde_json::to_string_pretty(profile).with_context(context)?;
    text.push('\n');
    // A leftover from a crash may have other permissions: start from nothing, so
    // that the mode below is the one the file gets.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(context),
    }
    let mut file = private_file(&tmp).with_context(context)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(context)?;
    std::fs::rename(&tmp, path).with_context(context)
}

/// Creates `dir` (and its parents) if needed; a new one is the owner's only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A new file at `path`, readable and writable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Profile {
        Profile {
            http: "http://127.0.0.1:8080".to_owned(),
            mqtt: "mqtt://127.0.0.1:1883".to_owned(),
            user: "alice".to_owned(),
            token: "eyJ.secret.sig".to_owned(),
            expires_at: 1_732_348_800,
        }
    }

    #[test]
    fn a_saved_profile_loads_back_and_only_its_owner_may_read_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nested").join("profile.json");
        assert_eq!(load(&path).expect("no file is no profile"), None);
        save(&path, &alice()).expect("save");
        let replaced = Profile {
            user: "bob".to_owned(),
            ..alice()
        };
        save(&path, &replaced).expect("save again");
        assert_eq!(load(&path).expect("load"), Some(replaced));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{:?}", alice()).contains("secret"));
    }

    #[test]
    fn a_broken_profile_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("profile.json");
        std::fs::write(&path, "{\"user\":").expect("write");
        let err = load(&path).expect_err("broken");
        assert!(format!("{err:#}").contains("profile.json"), "{err:#}");
    }
}
