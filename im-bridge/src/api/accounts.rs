//! Built-in accounts (DESIGN.md §2): `POST /v1/accounts` signs up, `POST /v1/tokens`
//! trades a user and password for a token that works on HTTP and as the MQTT
//! password. Mounted only when [`enabled`].
//!
//! A sign-in answers an unknown user and a wrong password alike, in the same time:
//! both cost one argon2 verification (an unknown user's against a dummy hash).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use broker::auth::{Algorithm, AuthConfig, KeyError, Role};
use imqtt_wire::{Account, Credentials, TokenResponse, check_id};

use super::{AppState, Json};
use crate::error::Error;
use crate::passwords::{MAX_PASSWORD_BYTES, check_new_password};

/// Whether the account endpoints exist: `auth.accounts` is on and the server can
/// mint tokens (HS256; with a public key only the app backend can).
pub(super) fn enabled(auth: &AuthConfig) -> bool {
    auth.accounts && auth.algorithm == Algorithm::HS256
}

/// `POST /v1/accounts {user, password}` -> `201 {user}`; 409 `user_exists`.
pub(super) async fn create(
    State(state): State<AppState>,
    Json(credentials): Json<Credentials>,
) -> Result<impl IntoResponse, Error> {
    let Credentials { user, password } = credentials;
    check_id(&user).map_err(|e| Error::BadRequest(e.to_string()))?;
    tracing::Span::current().record("user", user.as_str());
    check_new_password(&password)?;
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
/// `bad_credentials` for an unknown user or a wrong password.
pub(super) async fn token(
    State(state): State<AppState>,
    Json(credentials): Json<Credentials>,
) -> Result<Json<TokenResponse>, Error> {
    let Credentials { user, password } = credentials;
    // An invalid id can name no account, so saying so reveals nothing.
    check_id(&user).map_err(|e| Error::BadRequest(e.to_string()))?;
    tracing::Span::current().record("user", user.as_str());
    // No account has a password this long, and hashing it would cost in proportion
    // to its length: refused at once, the same for every user.
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::BadCredentials);
    }
    let asked = user.clone();
    let stored = state.read(move |s| Ok(s.password_hash(&asked)?)).await?;
    if !state.passwords.verify(password, stored).await? {
        tracing::info!("sign-in refused: wrong user or password");
        return Err(Error::BadCredentials);
    }
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
