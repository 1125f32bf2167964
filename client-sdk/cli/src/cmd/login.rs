//! `login`: sign in with a password of the server's built-in accounts (creating
//! the account first with `--signup`) and save server, user and token to the
//! profile.

use anyhow::Context;
use imqtt_client::{Api, Credentials};
use serde_json::json;

use crate::output::{self, Out};
use crate::password;
use crate::profile::{self, Profile};
use crate::settings::{Flags, Secret};

#[derive(Debug, clap::Args)]
pub(crate) struct Login {
    /// The password [default: IMQTT_PASSWORD, else asked on the terminal, else the
    /// first line of stdin]
    #[arg(long, env = "IMQTT_PASSWORD", hide_env_values = true, value_name = "P")]
    password: Option<Secret>,
    /// Create the account first (POST /v1/accounts; passwords are 8 to 1024 bytes)
    #[arg(long)]
    signup: bool,
}

/// Signs in and saves the profile. The user is `--user` (or IMQTT_USER), else
/// the profile's, to sign in again; the server likewise.
pub(crate) async fn run(flags: &Flags, args: Login, out: Out) -> anyhow::Result<()> {
    let path = flags.profile_path()?;
    // A broken profile is about to be replaced: it only loses its defaults.
    let saved = profile::load(&path).ok().flatten();
    let server = flags.server(saved.as_ref());
    let user = flags
        .user()
        .or_else(|| saved.map(|p| p.user))
        .context("who? give --user U (or set IMQTT_USER)")?;
    // Checks the URL and the user id before a password is asked for.
    Api::new(
        &server.http,
        &user,
        Credentials::Token(String::new()),
        None,
        crate::RETRY,
    )?;
    let password = match args.password.filter(|p| !p.expose().is_empty()) {
        Some(p) => p,
        None => {
            let who = user.clone();
            tokio::task::spawn_blocking(move || password::ask(&who))
                .await
                .context("asking for the password")??
        }
    };
    if args.signup {
        imqtt_client::sign_up(&server.http, &user, password.expose()).await?;
    }
    let signed = imqtt_client::sign_in_at(&server.http, &user, password.expose()).await?;
    let profile = Profile {
        http: server.http,
        mqtt: server.mqtt,
        user,
        token: signed.token,
        expires_at: signed.expires_at,
    };
    profile::save(&path, &profile)?;
    if out.json() {
        // The one place the token is printed: asked for, by a script.
        out.value(&json!({
            "user": profile.user,
            "http": profile.http,
            "mqtt": profile.mqtt,
            "expires_at": profile.expires_at,
            "profile": path,
            "token": profile.token,
        }))
    } else {
        let created = if args.signup { "signed up and " } else { "" };
        out.line(&format!(
            "{created}logged in as {} at {}; token saved to {}, valid until {}",
            profile.user,
            profile.http,
            path.display(),
            output::utc(profile.expires_at.saturating_mul(1000))
        ))
    }
}
