//! Built-in accounts (DESIGN.md §2): `POST /v1/accounts` signs up, `POST /v1/tokens`
//! trades a user and password for a token that works on HTTP and as the MQTT
//! password. Mounted only when [`enabled`].
//!
//! A sign-in answers an unknown user and a wrong password alike, in the same time:
//! both cost one argon2 verification (an unknown user's against a dummy hash).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use broker::auth::{Algorithm, AuthConfig, KeyError, Role};
use imqtt_wire::{Account, Credentials, TokenResponse, check_id};

use super::{AppState, Json};
use crate::error::Error;
use crate::metrics::ThrottleLabels;
use crate::passwords::{MAX_PASSWORD_BYTES, check_new_password};
use crate::throttle::address_key;

/// Whether the account endpoints exist: `auth.accounts` is on and the server can
/// mint tokens (HS256; with a public key only the app backend can).
pub(super) fn enabled(auth: &AuthConfig) -> bool {
    auth.accounts && auth.algorithm == Algorithm::HS256
}

/// The client's address as throttling counts it (`throttle.rs`). A router
/// served without connection info (in-process tests) counts everyone as one.
fn client(peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| {
        address_key(p.0.0.ip())
    })
}

/// The 429 for a wait, counted.
fn too_many(state: &AppState, endpoint: &'static str, wait: Duration) -> Error {
    state
        .metrics
        .sign_in_refused
        .get_or_create(&ThrottleLabels { endpoint })
        .inc();
    tracing::info!(
        wait_ms = wait.as_millis() as u64,
        "{endpoint}: too many attempts"
    );
    Error::TooManyAttempts {
        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

/// `POST /v1/accounts {user, password}` -> `201 {user}`; 409 `user_exists`; 429
/// `too_many_attempts` past the sign-ups one address may make.
pub(super) async fn create(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(credentials): Json<Credentials>,
) -> Result<impl IntoResponse, Error> {
    let Credentials { user, password } = credentials;
    check_id(&user).map_err(|e| Error::BadRequest(e.to_string()))?;
    tracing::Span::current().record("user", user.as_str());
    check_new_password(&password)?;
    let from = client(peer);
    let now = Instant::now();
    let sign_ups = &state.sign_ins.sign_ups;
    sign_ups
        .check(&from, now)
        .map_err(|wait| too_many(&state, "accounts", wait))?;
    // Every attempt counts, a taken id's too: otherwise 409s would list the
    // accounts at full speed.
    sign_ups.count(&from, now);
    // A taken id is refused before the costly hash. (A 409 tells that the account
    // exists whatever its timing, so this early answer gives nothing away.)
    let asked = user.clone();
    if state
        .read(move |s| Ok(s.password_hash(&asked)?.is_some()))
        .await?
    {
        return Err(Error::UserExists);
    }
    let hash = state.passwords.hash(password).await?;
    let uid = user.clone();
    // Through the commit loop: a 201 means the account is durable. Two racing
    // sign-ups for one id: the store creates it once.
    let created = state
        .committer
        .write(move |r| Ok((r.create_account(&uid, hash.as_str())?, None)))
        .await?;
    if !created {
        return Err(Error::UserExists);
    }
    tracing::info!("account created");
    Ok((StatusCode::CREATED, Json(Account { user })))
}

/// `POST /v1/tokens {user, password}` -> `200 {token, expires_at}`; 401
/// `bad_credentials` for an unknown user or a wrong password; 429
/// `too_many_attempts` after too many failures (`throttle.rs`).
pub(super) async fn token(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(credentials): Json<Credentials>,
) -> Result<Json<TokenResponse>, Error> {
    let Credentials { user, password } = credentials;
    // An invalid id can name no account, so saying so reveals nothing.
    check_id(&user).map_err(|e| Error::BadRequest(e.to_string()))?;
    tracing::Span::current().record("user", user.as_str());
    // No account has a password this long, and hashing it would cost in proportion
    // to its length: refused at once, the same for every user.
    let from = client(peer);
    let account = (user.clone(), from);
    let throttle = &state.sign_ins;
    let now = Instant::now();
    // The longer wait of the two answers.
    let waits = [
        throttle.accounts.check(&account, now).err(),
        throttle.addresses.check(&from, now).err(),
    ];
    if let Some(wait) = waits.into_iter().flatten().max() {
        return Err(too_many(&state, "tokens", wait));
    }
    // Counted now and taken back if the password is right, so that concurrent
    // guesses cannot all slip in before the first of them fails.
    throttle.accounts.count(&account, now);
    throttle.addresses.count(&from, now);
    let failed = || {
        state.metrics.sign_in_failures.inc();
        tracing::info!("sign-in refused: wrong user or password");
        Error::BadCredentials
    };
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(failed());
    }
    let asked = user.clone();
    let verdict = async {
        let stored = state.read(move |s| Ok(s.password_hash(&asked)?)).await?;
        state.passwords.verify(password, stored).await
    }
    .await;
    match verdict {
        Ok(true) => throttle.accounts.clear(&account),
        Ok(false) => return Err(failed()),
        // The store or the hasher failed, not the caller: nothing is held against it.
        Err(e) => {
            throttle.accounts.refund(&account, Instant::now());
            throttle.addresses.refund(&from, Instant::now());
            return Err(e);
        }
    }
    throttle.addresses.refund(&from, Instant::now());
    let token = state
        .verifier
        .mint(&user, Role::User, state.config.auth.token_ttl.get())?;
    // `expires_at` is the token's own `exp`, read back rather than recomputed (the
    // clock may have ticked since minting).
    let expires_at = state
        .verifier
        .verify(&token)
        .map_err(|e| Error::Key(KeyError::Sign(format!("minted token does not verify: {e}"))))?
        .exp;
    Ok(Json(TokenResponse { token, expires_at }))
}
