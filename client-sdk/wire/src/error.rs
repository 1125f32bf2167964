//! The error body of DESIGN.md §5, `{"error":{"code","message"}}`: what every HTTP
//! error answers with, what a failed send in a batch is, and (its inner part) what
//! an `error` event on `users/{uid}/events` carries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The JSON body of every HTTP error response: `{"error":{"code","message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A stable, machine-readable error code plus a short human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code that clients may match on, e.g. `not_a_member`.
    pub code: String,
    /// A short explanation for people; never a backtrace or a storage error's text.
    pub message: String,
}

impl ErrorBody {
    /// The body for `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail::new(code, message),
        }
    }
}

impl ErrorDetail {
    /// The error `code` with `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorDetail {
        ErrorDetail {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_error_body_round_trips_exactly() {
        let text = r#"{"error":{"code":"not_a_member","message":"..."}}"#;
        let body = ErrorBody::new("not_a_member", "...");
        assert_eq!(serde_json::to_string(&body).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<ErrorBody>(text).expect("parse"),
            body
        );
        assert_eq!(body.to_string(), "not_a_member: ...");
    }

    #[test]
    fn an_error_body_without_its_parts_is_an_error() {
        for bad in [
            r#"{}"#,
            r#"{"error":{}}"#,
            r#"{"error":{"code":"x"}}"#,
            r#"{"error":"x"}"#,
            r#"{"error":{"code":1,"message":"m"}}"#,
        ] {
            assert!(serde_json::from_str::<ErrorBody>(bad).is_err(), "{bad}");
        }
    }
}
