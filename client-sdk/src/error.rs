//! The client's one error type: what an application can act on when a call fails.

use std::time::Duration;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with its JSON error body (DESIGN.md §5): `status` is the
    /// HTTP status, `code` the machine-readable code (`not_a_member`, ...).
    #[error("{status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code of the body (`"http_{status}"` when the body had none).
        code: String,
        /// The server's explanation.
        message: String,
        /// `Retry-After` of a 429 or 503, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached or the exchange broke off (refused,
    /// reset, timed out): worth retrying.
    #[error("transport: {0}")]
    Transport(String),
    /// The server's answer was not what the API promises (not JSON, wrong shape).
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// The MQTT connection was refused or broke before it was first established.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// The credentials were refused and no refresh could get new ones.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// A configuration value is unusable (bad URL, invalid id, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The cursor store failed to read or write.
    #[error("cursor store: {0}")]
    Cursors(String),
    /// The user's presence may not be watched by this user (not a contact, no
    /// group in common), or the user is unknown.
    #[error("the presence of {0} is not visible to this user")]
    NotVisible(String),
    /// The client was closed (or all its handles dropped).
    #[error("the client is closed")]
    Closed,
    /// Every retry of a send failed; the last error is inside.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// How many requests were made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
}

impl Error {
    /// Whether the same request may succeed if made again later: transport
    /// failures, 408, 429 and 5xx. A 4xx other than those will fail the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// The server's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, for [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        if e.is_decode() {
            Error::Decode(e.to_string())
        } else {
            // Connect, timeout, body and request errors: the exchange itself failed.
            Error::Transport(chain(&e))
        }
    }
}

/// `e` and its sources, as one line (reqwest's own text leaves out the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
