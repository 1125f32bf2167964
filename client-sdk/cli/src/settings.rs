//! Which server, user and token a command uses. Each comes from its flag, else its
//! `IMQTT_*` variable (clap reads both), else the profile; the servers fall back
//! to a local imqtt. The profile's token is used only for the profile's user.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use imqtt_client::{Api, Credentials};
use serde::Deserialize;

use crate::output;
use crate::profile::{self, Profile};

/// The HTTP API when neither flag, variable nor profile names one.
pub(crate) const DEFAULT_HTTP: &str = "http://127.0.0.1:8080";
/// The MQTT listener when neither flag, variable nor profile names one.
pub(crate) const DEFAULT_MQTT: &str = "mqtt://127.0.0.1:1883";

/// The options every command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Flags {
    /// The HTTP API; several URLs separated by commas (the nodes of one
    /// server) are tried in turn, the next when one is away [default: the
    /// profile's, else http://127.0.0.1:8080]
    #[arg(long, env = "IMQTT_HTTP", global = true, value_name = "URL[,URL..]")]
    pub(crate) http: Option<String>,
    /// The MQTT listener, for listen; several URLs separated by commas are
    /// tried in turn, the next when a connection fails or breaks [default: the
    /// profile's, else mqtt://127.0.0.1:1883]
    #[arg(long, env = "IMQTT_MQTT", global = true, value_name = "URL[,URL..]")]
    pub(crate) mqtt: Option<String>,
    /// Act as this user [default: --token's subject, else the profile's]
    #[arg(long, env = "IMQTT_USER", global = true, value_name = "U")]
    pub(crate) user: Option<String>,
    /// A token to use instead of the profile's (prefer IMQTT_TOKEN: a flag is
    /// visible to other users of the machine in the process list)
    #[arg(
        long,
        env = "IMQTT_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "T"
    )]
    pub(crate) token: Option<Secret>,
    /// The profile file [default: $XDG_CONFIG_HOME/imqtt/profile.json, else
    /// ~/.config/imqtt/profile.json]
    #[arg(long, env = "IMQTT_PROFILE", global = true, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Machine output: one JSON value per command (listen: one JSON object per
    /// line)
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// A token or a password: given whole to the server, never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a server lives: each an address or several, separated by commas, as
/// given (the client library splits them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) http: String,
    pub(crate) mqtt: String,
}

/// Everything a signed-in command needs.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) server: Server,
    pub(crate) user: String,
    pub(crate) token: Secret,
    /// Where the token came from and when it expires, to explain a refusal.
    origin: String,
    expires_at: Option<u64>,
}

impl Flags {
    /// The profile file: `--profile`, `IMQTT_PROFILE` or the default place.
    pub(crate) fn profile_path(&self) -> anyhow::Result<PathBuf> {
        match self.profile.clone().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => Ok(p),
            None => profile::default_path(),
        }
    }

    /// The server of the flags, else of `profile`, else the local default.
    pub(crate) fn server(&self, profile: Option<&Profile>) -> Server {
        let pick = |flag: &Option<String>, saved: Option<&String>, default: &str| {
            given(flag)
                .or_else(|| saved.cloned())
                .unwrap_or_else(|| default.to_owned())
        };
        Server {
            http: pick(&self.http, profile.map(|p| &p.http), DEFAULT_HTTP),
            mqtt: pick(&self.mqtt, profile.map(|p| &p.mqtt), DEFAULT_MQTT),
        }
    }

    /// The user given by flag or variable, if any.
    pub(crate) fn user(&self) -> Option<String> {
        given(&self.user)
    }

    /// Server, user and token for a signed-in command. The profile is read only
    /// when the flags leave something out.
    pub(crate) fn session(&self) -> anyhow::Result<Session> {
        let token = self.token.clone().filter(|t| !t.0.is_empty());
        let complete = given(&self.http).is_some()
            && given(&self.mqtt).is_some()
            && self.user().is_some()
            && token.is_some();
        let (path, saved) = if complete {
            (None, None)
        } else {
            let path = self.profile_path()?;
            let saved = profile::load(&path)?;
            (Some(path), saved)
        };
        let server = self.server(saved.as_ref());
        let login_hint = |user: &str| {
            let path = path
                .as_ref()
                .map_or_else(String::new, |p| format!(" (profile {})", p.display()));
            format!("run `imqtt-cli login --user {user}`{path}, or give --token")
        };
        if let Some(token) = token {
            let claims = Claims::of(&token);
            // The token's own subject before the profile's user: a token given
            // alone is someone's, not necessarily the profile's.
            let user = self
                .user()
                .or_else(|| claims.sub.clone())
                .or_else(|| saved.map(|p| p.user))
                .context("the token names no user (no readable `sub` claim): give --user")?;
            return Ok(Session {
                server,
                user,
                token,
                origin: "the token given (--token or IMQTT_TOKEN)".to_owned(),
                expires_at: claims.exp,
            });
        }
        let Some(saved) = saved else {
            let user = self.user().unwrap_or_else(|| "U".to_owned());
            bail!("not logged in: {}", login_hint(&user));
        };
        let user = self.user().unwrap_or_else(|| saved.user.clone());
        if user != saved.user {
            bail!(
                "no token for {user}: the profile is {}'s; {}",
                saved.user,
                login_hint(&user)
            );
        }
        let origin = match &path {
            Some(p) => format!("the token of the profile {}", p.display()),
            None => "the profile's token".to_owned(),
        };
        Ok(Session {
            server,
            user,
            token: Secret(saved.token),
            origin,
            expires_at: Some(saved.expires_at),
        })
    }
}

impl Session {
    /// The HTTP API as this session's user. Sends are retried (idempotently)
    /// under [`crate::RETRY`]; a refused token is final (there is no password to
    /// sign in again with).
    pub(crate) fn api(&self) -> anyhow::Result<Api> {
        Ok(Api::new(
            &self.server.http,
            &self.user,
            Credentials::Token(self.token.0.clone()),
            None,
            crate::RETRY,
        )?)
    }

    /// `e`, with what to do about it when the server refused the token.
    pub(crate) fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let refused = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<imqtt_client::Error>(),
                Some(
                    imqtt_client::Error::Unauthorized(_)
                        | imqtt_client::Error::Api { status: 401, .. }
                )
            )
        });
        if !refused {
            return e;
        }
        let why = match self.expires_at {
            Some(exp) if exp <= now_secs() => {
                format!(
                    "{} expired at {}",
                    self.origin,
                    output::utc(exp.saturating_mul(1000))
                )
            }
            _ => format!("{} was refused", self.origin),
        };
        anyhow!("{e:#} ({why}: run `imqtt-cli login --user {}`)", self.user)
    }
}

/// The claims of a token the CLI reads to name its user and explain its
/// expiry. Not verified: the server does that.
#[derive(Debug, Default, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
}

impl Claims {
    fn of(token: &Secret) -> Claims {
        jsonwebtoken::dangerous::insecure_decode_claims(token.expose()).unwrap_or_default()
    }
}

/// A flag's value, an empty one counting as absent (`IMQTT_USER= imqtt-cli ...`).
fn given(flag: &Option<String>) -> Option<String> {
    flag.clone().filter(|v| !v.is_empty())
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    /// The flags of `args` alone: the variables of the shell running the tests
    /// are not read.
    fn flags(args: &[&str]) -> Flags {
        use clap::{CommandFactory, FromArgMatches};
        let mut argv = vec!["imqtt-cli"];
        argv.extend_from_slice(args);
        let command = Cli::command().mut_args(|a| a.env(None::<&str>));
        let matches = command.try_get_matches_from(argv).expect("parse");
        Cli::from_arg_matches(&matches).expect("flags").flags
    }

    fn save(dir: &tempfile::TempDir, user: &str) -> String {
        let path = dir.path().join("profile.json");
        let p = Profile {
            http: "http://10.0.0.1:8080".to_owned(),
            mqtt: "mqtt://10.0.0.1:1883".to_owned(),
            user: user.to_owned(),
            token: "saved-token".to_owned(),
            expires_at: 1,
        };
        profile::save(&path, &p).expect("save");
        path.display().to_string()
    }

    #[test]
    fn flags_override_the_profile_value_by_value() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(&dir, "alice");
        let s = flags(&["--profile", &path, "--http", "http://h:1"])
            .session()
            .expect("session");
        assert_eq!(s.server.http, "http://h:1");
        assert_eq!(s.server.mqtt, "mqtt://10.0.0.1:1883");
        assert_eq!(s.user, "alice");
        assert_eq!(s.token.expose(), "saved-token");
        let s = flags(&["--profile", &path, "--token", "other"])
            .session()
            .expect("session");
        assert_eq!(s.token.expose(), "other");
        assert_eq!(
            s.user, "alice",
            "an unreadable token keeps the profile's user"
        );
    }

    #[test]
    fn server_lists_pass_through_and_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(&dir, "alice");
        let s = flags(&["--profile", &path, "--http", "http://h:1, http://h:2"])
            .session()
            .expect("session");
        assert_eq!(s.server.http, "http://h:1, http://h:2");
        assert_eq!(s.api().expect("api").base_url(), "http://h:1");
        let s = flags(&["--profile", &path, "--http", "http://h:1,,http://h:2"])
            .session()
            .expect("session");
        let err = s.api().expect_err("an empty address");
        assert!(format!("{err:#}").contains("empty address"), "{err:#}");
    }

    #[test]
    fn the_profile_token_belongs_to_the_profile_user_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(&dir, "alice");
        let err = flags(&["--profile", &path, "--user", "bob"])
            .session()
            .expect_err("bob has no token");
        let text = format!("{err:#}");
        assert!(text.contains("no token for bob"), "{text}");
        assert!(!text.contains("saved-token"), "{text}");
    }

    #[test]
    fn without_a_profile_the_user_comes_from_the_token() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("none.json").display().to_string();
        let err = flags(&["--profile", &missing])
            .session()
            .expect_err("nobody");
        assert!(format!("{err:#}").contains("not logged in"), "{err:#}");
        // {"sub":"carol","exp":2000000000}, unsigned: the CLI only reads it.
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYXJvbCIsImV4cCI6MjAwMDAwMDAwMH0.x";
        let s = flags(&["--profile", &missing, "--token", token])
            .session()
            .expect("session");
        assert_eq!(s.user, "carol");
        assert_eq!(s.server.http, DEFAULT_HTTP);
        assert_eq!(s.server.mqtt, DEFAULT_MQTT);
        assert!(!format!("{s:?}").contains(token));
    }

    #[test]
    fn a_refused_expired_token_says_so() {
        let dir = tempfile::tempdir().expect("dir");
        let path = save(&dir, "alice");
        let s = flags(&["--profile", &path]).session().expect("session");
        let refused = anyhow::Error::new(imqtt_client::Error::Unauthorized("no".to_owned()));
        let text = format!("{:#}", s.explain(refused));
        assert!(text.contains("expired at 1970-01-01 00:00:01Z"), "{text}");
        assert!(text.contains("imqtt-cli login --user alice"), "{text}");
    }
}
