//! Built-in accounts (DESIGN.md §2): `POST /v1/accounts` and `POST /v1/tokens` take
//! a user and a password; a sign-up is answered with `{user}`, a token request with
//! `{token, expires_at}`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `{user, password}`: the body of `POST /v1/accounts` (sign up) and
/// `POST /v1/tokens` (sign in). `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user id.
    pub user: String,
    /// The password, in clear over the (TLS) connection; stored argon2id-hashed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `{user}`: the body of `201 Created` from `POST /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The new account's user id.
    pub user: String,
}

/// `{token, expires_at}`: a bearer token for HTTP and the MQTT password. `Debug`
/// does not print the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
    /// When it expires: Unix seconds, the token's `exp` claim.
    pub expires_at: u64,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_hide_the_password() {
        let c = Credentials {
            user: "alice".to_owned(),
            password: "hunter2".to_owned(),
        };
        let text = r#"{"user":"alice","password":"hunter2"}"#;
        assert_eq!(serde_json::to_string(&c).expect("serialize"), text);
        assert_eq!(serde_json::from_str::<Credentials>(text).expect("parse"), c);
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(serde_json::from_str::<Credentials>(r#"{"user":"alice"}"#).is_err());
    }

    #[test]
    fn account_round_trips() {
        let a = Account {
            user: "alice".to_owned(),
        };
        let text = r#"{"user":"alice"}"#;
        assert_eq!(serde_json::to_string(&a).expect("serialize"), text);
        assert_eq!(serde_json::from_str::<Account>(text).expect("parse"), a);
    }

    #[test]
    fn token_response_round_trips_and_hides_the_token() {
        let t = TokenResponse {
            token: "eyJ.secret.sig".to_owned(),
            expires_at: 1_732_348_800,
        };
        let text = r#"{"token":"eyJ.secret.sig","expires_at":1732348800}"#;
        assert_eq!(serde_json::to_string(&t).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<TokenResponse>(text).expect("parse"),
            t
        );
        assert!(!format!("{t:?}").contains("secret"));
    }
}
