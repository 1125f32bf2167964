//! Authentication of HTTP requests: the `Caller` extractor reads
//! `Authorization: Bearer <jwt>` and verifies it with the server's keys.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use broker::auth::{Claims, Role};

use crate::api::AppState;
use crate::error::Error;

/// The verified identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub Claims);

impl Caller {
    /// The caller's user id.
    pub fn uid(&self) -> &str {
        &self.0.sub
    }

    /// The caller's role.
    pub fn role(&self) -> Role {
        self.0.role
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::MissingToken)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::MissingToken)?;
        let claims = state.verifier.verify(token).inspect_err(|e| {
            tracing::debug!(reason = %e, "token refused");
        })?;
        tracing::Span::current().record("user", claims.sub.as_str());
        Ok(Caller(claims))
    }
}
