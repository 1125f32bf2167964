//! Where the client's token comes from, and how it gets a new one when the server
//! refuses the old (HTTP 401, MQTT CONNACK "not authorized").

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Error;

/// A future that yields a fresh token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// The application's token-refresh callback: asked for a new token whenever the
/// server refuses the current one (expired, revoked), e.g. from the app's backend.
#[derive(Clone)]
pub struct TokenRefresh(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenRefresh {
    /// Wraps `f`, called once per refusal.
    pub fn new<F, Fut>(f: F) -> TokenRefresh
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        TokenRefresh(Arc::new(move || Box::pin(f())))
    }

    pub(crate) fn call(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenRefresh(..)")
    }
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// A JWT minted elsewhere (the app's backend, `imqtt token`); pair it with a
    /// [`TokenRefresh`] when it can expire while the app runs.
    Token(String),
    /// A password of the server's built-in accounts: the client signs in with
    /// `POST /v1/tokens` and signs in again whenever its token is refused.
    Password(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}
