//! The crate's error enum and its one mapping to HTTP: status, error code, the
//! JSON body `{"error":{"code","message"}}` of DESIGN.md §5 (the wire module's
//! [`ErrorBody`]) and the headers that go with a status (`WWW-Authenticate` on 401,
//! `Retry-After` on 429).
//!
//! Each variant's message is complete and reads as one line: a variant that quotes
//! an underlying error in its message does not also return it as its `source()`,
//! so a `{:#}` chain (anyhow's) never prints the same cause twice.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker::auth::{KeyError, TokenError};
use imqtt_wire::ErrorBody;

use crate::config::ConfigErrors;
use crate::ratelimit::Refused;
use crate::store::StoreError;

/// Everything that can go wrong in the bridge, from a bad request to a failed bind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (bad JSON, wrong types, invalid id).
    #[error("{0}")]
    BadRequest(String),
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token (Authorization: Bearer <jwt>)")]
    MissingToken,
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// An edit or recall of someone else's message.
    #[error("only the sender may change its message")]
    NotSender,
    /// An edit or recall of a recalled message.
    #[error("the message was recalled")]
    Recalled,
    /// An edit or recall after `limits.edit_window` / `recall_window`.
    #[error("the message is too old to {0}")]
    WindowPassed(&'static str),
    /// The caller is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotAMember,
    /// No such resource (or route).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, with other methods.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body is over `http.max_body`.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The caller is sending faster than `limits.rate_per_user` allows: 429, with
    /// `Retry-After`.
    #[error("too many messages: retry after {retry_after_secs} s")]
    RateLimited {
        /// Whole seconds until the refused sends would pass (at least 1).
        retry_after_secs: u64,
    },
    /// Too many failed sign-ins or sign-ups from here lately: 429, with
    /// `Retry-After`.
    #[error("too many attempts: retry after {retry_after_secs} s")]
    TooManyAttempts {
        /// Whole seconds until an attempt is taken again (at least 1).
        retry_after_secs: u64,
    },
    /// One request asks for more sends than `limits.rate_burst`, which no wait would
    /// ever allow: 413, so that a client splits the batch rather than retrying it
    /// forever as it would a 429.
    #[error(
        "{cost} sends in one request exceed the per-user burst of {burst}; send at most {burst} at once"
    )]
    OverRateBurst {
        /// The sends asked for.
        cost: u32,
        /// `limits.rate_burst`.
        burst: u32,
    },
    /// The body is not declared as JSON.
    #[error("expected a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The request took longer than `http.request_timeout`.
    #[error("request timed out")]
    Timeout,
    /// The server is starting or draining.
    #[error("server is not ready")]
    NotReady,
    /// A group's id is taken.
    #[error("group {0:?} exists")]
    GroupExists(String),
    /// A group at `limits.max_group_size`.
    #[error("the group has {limit} members, the most it may have (limits.max_group_size)")]
    GroupFull {
        /// The configured limit.
        limit: usize,
    },
    /// A change that the group's state does not allow (the owner leaving, say).
    #[error("{0}")]
    Conflict(String),
    /// Sign-up with a user id that already has an account.
    #[error("user exists")]
    UserExists,
    /// Sign-in with an unknown user or a wrong password (one answer for both, so
    /// that it does not tell which accounts exist).
    #[error("wrong user or password")]
    BadCredentials,
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// Token keys could not be loaded, or a token could not be minted.
    #[error("{0}")]
    Key(KeyError),
    /// A listener could not be bound.
    #[error("{}", bind_message(key, addr, cause))]
    Bind {
        /// The config key of the listener (`mqtt.tcp`, `http.listen`, ...).
        key: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The broker could not start (other than a bind failure).
    #[error(transparent)]
    Broker(broker::StartError),
    /// Another process holds the store's lock (sled locks `store.path`).
    #[error("store.path {path:?} is in use by another imqtt process")]
    StoreInUse {
        /// The configured `store.path`.
        path: PathBuf,
    },
    /// The store could not be opened for another reason.
    #[error("cannot open store.path {path:?}: {}", sled_reason(cause))]
    StoreOpen {
        /// The configured `store.path`.
        path: PathBuf,
        /// sled's error.
        cause: sled::Error,
    },
    /// The durable store failed.
    #[error("store: {0}")]
    Store(sled::Error),
    /// The PostgreSQL database at `store.url` cannot be used (unreachable at
    /// startup, a newer schema, tables imqtt did not make). The URL's password
    /// is never in it.
    #[error("store.url {url:?}: {message}")]
    Database {
        /// `store.url`, its password redacted.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The cluster link could not start (`cluster.*`).
    #[error("{0}")]
    Cluster(String),
    /// A store operation failed.
    #[error("{0}")]
    Storage(StoreError),
    /// Hashing or verifying a password failed (a corrupt stored hash, a lost
    /// blocking task); never the password or the hash itself.
    #[error("password hashing: {0}")]
    PasswordHash(String),
    /// Some other I/O failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// A message body is over `limits.max_body_bytes`.
    #[error("message body is larger than {limit} bytes (limits.max_body_bytes)")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The server is stopping and takes no more writes.
    #[error("the server is stopping")]
    Stopping,
}

impl From<crate::commit::Refusal> for Error {
    fn from(r: crate::commit::Refusal) -> Self {
        match r {
            crate::commit::Refusal::NotAMember(_) => Error::NotAMember,
        }
    }
}

impl From<crate::commit::CommitError> for Error {
    fn from(e: crate::commit::CommitError) -> Self {
        match e {
            crate::commit::CommitError::Store(e) => Error::from(e),
            crate::commit::CommitError::Stopped => Error::Stopping,
        }
    }
}

// By hand rather than `#[from]`, which would also make the inner error the
// `source()` of a message that already quotes it.
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Storage(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::RetryAfter(wait) => Error::RateLimited {
                retry_after_secs: wait.secs(),
            },
            Refused::OverBurst { cost, burst } => Error::OverRateBurst { cost, burst },
        }
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::Key(e)
    }
}

impl From<broker::StartError> for Error {
    fn from(e: broker::StartError) -> Self {
        match e {
            // One wording for every listener, MQTT or HTTP.
            broker::StartError::Bind {
                listener,
                addr,
                source,
            } => Error::Bind {
                key: listener,
                addr,
                cause: source,
            },
            other => Error::Broker(other),
        }
    }
}

/// sled's reason without its "IO error: " prefix.
fn sled_reason(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// `http.listen "0.0.0.0:8080" is already in use by another process`, or the OS's
/// reason in words.
fn bind_message(key: &str, addr: &SocketAddr, cause: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let addr = addr.to_string();
    match cause.kind() {
        ErrorKind::AddrInUse => {
            format!("{key} {addr:?} is already in use by another process")
        }
        ErrorKind::AddrNotAvailable => {
            format!("{key} {addr:?} is not an address of this machine")
        }
        ErrorKind::PermissionDenied => {
            format!("{key} {addr:?}: permission denied (ports below 1024 need privileges)")
        }
        _ => format!("cannot listen on {key} {addr:?}: {cause}"),
    }
}

impl Error {
    /// The HTTP status and stable error code for this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::MissingToken => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Token(TokenError::Expired) => (StatusCode::UNAUTHORIZED, "token_expired"),
            Error::Token(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotAMember => (StatusCode::FORBIDDEN, "not_a_member"),
            Error::NotSender => (StatusCode::FORBIDDEN, "not_sender"),
            Error::Recalled => (StatusCode::CONFLICT, "recalled"),
            Error::WindowPassed(_) => (StatusCode::CONFLICT, "window_passed"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Error::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Error::OverRateBurst { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "over_rate_burst"),
            Error::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Error::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::UserExists => (StatusCode::CONFLICT, "user_exists"),
            Error::GroupExists(_) => (StatusCode::CONFLICT, "group_exists"),
            Error::GroupFull { .. } => (StatusCode::CONFLICT, "group_full"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            Error::Storage(StoreError::AboveHead { .. }) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::Storage(StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            Error::Config(_)
            | Error::Key(_)
            | Error::Bind { .. }
            | Error::Broker(_)
            | Error::StoreInUse { .. }
            | Error::StoreOpen { .. }
            | Error::Database { .. }
            | Error::Cluster(_)
            | Error::Store(_)
            | Error::Storage(_)
            | Error::PasswordHash(_)
            | Error::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match self {
            Error::RateLimited { retry_after_secs }
            | Error::TooManyAttempts { retry_after_secs } => Some(retry_after_secs),
            // The database is away: the client tries again a moment later.
            Error::Storage(StoreError::Unavailable(_)) => Some(STORE_RETRY_AFTER_SECS),
            _ => None,
        };
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The details stay in the log, inside the request's span; the client
            // gets no storage or OS error text.
            tracing::error!(error = %self, "request failed");
            "internal error".to_owned()
        } else if let Error::Storage(StoreError::Unavailable(why)) = &self {
            // The database's own words stay in the log.
            tracing::warn!(error = %why, "store unavailable");
            "the store is unavailable; retry shortly".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody::new(code, message))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// `Retry-After` of a 503 `store_unavailable`, seconds.
const STORE_RETRY_AFTER_SECS: u64 = 1;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    #[test]
    fn a_bind_failure_names_the_config_key_in_words() {
        let addr: SocketAddr = "127.0.0.1:1883".parse().expect("addr");
        let e = Error::from(broker::StartError::Bind {
            listener: "mqtt.tcp",
            addr,
            source: std::io::Error::from(ErrorKind::AddrInUse),
        });
        assert_eq!(
            e.to_string(),
            "mqtt.tcp \"127.0.0.1:1883\" is already in use by another process"
        );
        let e = Error::Bind {
            key: "http.listen",
            addr,
            cause: std::io::Error::from(ErrorKind::PermissionDenied),
        };
        assert!(
            e.to_string()
                .starts_with("http.listen \"127.0.0.1:1883\": permission denied")
        );
    }

    #[test]
    fn a_cause_quoted_in_the_message_is_not_also_the_source() {
        let errors = [
            Error::from(std::io::Error::other("disk on fire")),
            Error::from(sled::Error::Unsupported("x".to_owned())),
            Error::from(StoreError::Engine("disk on fire".to_owned())),
            Error::Bind {
                key: "http.listen",
                addr: "127.0.0.1:1".parse().expect("addr"),
                cause: std::io::Error::other("odd"),
            },
            Error::StoreInUse {
                path: PathBuf::from("data"),
            },
        ];
        for e in errors {
            assert!(std::error::Error::source(&e).is_none(), "{e:?}");
            let line = e.to_string();
            assert_eq!(format!("{:#}", anyhow::Error::new(e)), line);
        }
    }
}
