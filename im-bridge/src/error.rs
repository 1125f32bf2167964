//! The crate's error enum and its one mapping to HTTP: status, error code and the
//! JSON body `{"error":{"code","message"}}` of DESIGN.md §5.

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker::auth::{KeyError, TokenError};
use serde_json::json;

use crate::config::ConfigErrors;

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
    /// The body is not declared as JSON.
    #[error("expected a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The request took longer than `http.request_timeout`.
    #[error("request timed out")]
    Timeout,
    /// The server is starting or draining.
    #[error("server is not ready")]
    NotReady,
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// Token keys could not be loaded, or a token could not be minted.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A listener could not be bound.
    #[error("cannot bind {listener} on {addr}: {source}")]
    Bind {
        /// The config key of the listener.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker could not start.
    #[error(transparent)]
    Broker(#[from] broker::StartError),
    /// The durable store failed.
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    /// Some other I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
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
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Error::Config(_)
            | Error::Key(_)
            | Error::Bind { .. }
            | Error::Broker(_)
            | Error::Store(_)
            | Error::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // The details stay in the log, inside the request's span; the client
            // gets no storage or OS error text.
            tracing::error!(error = %self, "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
