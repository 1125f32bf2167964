//! Token verification shared by the MQTT edge and the HTTP API (DESIGN.md §2).
//!
//! Tokens are JWTs checked as RFC 8725 asks: the algorithm is fixed by config, never
//! by the token (so `alg: none` and HS256-with-an-RSA-public-key are refused), `exp`
//! and `sub` are required, `iss` / `aud` are checked when configured, and `sub` must
//! be a valid id (`imqtt_wire`'s id rule) because it is embedded in topics.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use imqtt_wire::is_valid_id;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// The secret shipped in the sample config. The server refuses to start with it
/// unless `auth.allow_insecure_default = true`.
pub const SAMPLE_JWT_SECRET: &str = "imqtt-sample-secret-for-development-only-change-me";

/// HS256 keys shorter than this are refused: RFC 8725 §3.5 forbids short,
/// human-memorable HMAC keys.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A string that must not appear in logs: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The signature algorithms a deployment may choose (`auth.algorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    /// HMAC-SHA256 with `auth.jwt_secret` (the default).
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, public key in `auth.public_key_file`.
    RS256,
    /// ECDSA P-256 with SHA-256, public key in `auth.public_key_file`.
    ES256,
    /// Ed25519, public key in `auth.public_key_file`.
    EdDSA,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// The `[auth]` config section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret (at least 32 bytes).
    pub jwt_secret: Secret,
    /// Signature algorithm; anything but HS256 needs `public_key_file`.
    pub algorithm: Algorithm,
    /// PEM public key for RS256 / ES256 / EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` / `nbf`.
    pub leeway: Duration,
    /// Enables the built-in accounts, `POST /v1/accounts` (sign up) and
    /// `POST /v1/tokens` (a user token for a user and password); off, both are 404.
    /// Only with HS256, since the server mints the tokens.
    pub accounts: bool,
    /// Lifetime of tokens minted by the server (`/v1/tokens`, `imqtt token`).
    pub token_ttl: Duration,
    /// Allows starting with [`SAMPLE_JWT_SECRET`]; for development only.
    pub allow_insecure_default: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: Secret::new(SAMPLE_JWT_SECRET),
            algorithm: Algorithm::HS256,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::secs(5),
            accounts: true,
            token_ttl: Duration::secs(24 * 3600),
            allow_insecure_default: false,
        }
    }
}

impl AuthConfig {
    /// Whether the config still uses the sample secret for HS256.
    pub fn uses_sample_secret(&self) -> bool {
        self.algorithm == Algorithm::HS256 && self.jwt_secret.expose() == SAMPLE_JWT_SECRET
    }

    /// Checks that need more than one key; each problem names the key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        match self.algorithm {
            Algorithm::HS256 => {
                if self.jwt_secret.expose().len() < MIN_HMAC_SECRET_BYTES {
                    errs.push((
                        "auth.jwt_secret",
                        format!(
                            "must be at least {MIN_HMAC_SECRET_BYTES} bytes for HS256 (RFC 8725 §3.5)"
                        ),
                    ));
                }
                if self.uses_sample_secret() && !self.allow_insecure_default {
                    errs.push((
                        "auth.jwt_secret",
                        "is the published sample secret; set your own, or set \
                         auth.allow_insecure_default = true for development"
                            .to_owned(),
                    ));
                }
            }
            alg => {
                if self.public_key_file.is_none() {
                    errs.push((
                        "auth.public_key_file",
                        format!("is required when auth.algorithm = {alg:?}"),
                    ));
                }
            }
        }
        errs
    }
}

/// What a token holder may do beyond its own topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary user.
    #[default]
    User,
    /// A backend: may push to any user and manage groups.
    Service,
    /// Everything, including every MQTT topic (a superuser).
    Admin,
}

/// The verified claims of a token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The role; absent means [`Role::User`].
    #[serde(default)]
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Claims as decoded, before the required ones are known to be present: absent
/// `sub` / `exp` then surface as [`TokenError::MissingClaim`] rather than as a
/// malformed token. Wrongly typed values still fail to decode.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    #[serde(default)]
    role: Role,
    exp: Option<u64>,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "is_user")]
    role: Role,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

fn is_user(r: &Role) -> bool {
    *r == Role::User
}

/// Why a token was refused. Callers map every variant to 401 / CONNACK "not
/// authorized"; the variant only makes the log and the error message precise.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not a well-formed JWT or its claims have the wrong types.
    #[error("malformed token")]
    Malformed,
    /// The token is signed with another algorithm than the configured one.
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is absent.
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// `iss` differs from `auth.issuer`.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` differs from `auth.audience`.
    #[error("wrong token audience")]
    WrongAudience,
    /// `sub` is not a valid id.
    #[error("token subject is not a valid id")]
    BadSubject,
}

/// A failure to build keys from config or to mint a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key file could not be read.
    #[error("auth.public_key_file {path}: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is not valid PEM for the algorithm.
    #[error("auth.public_key_file {path}: not a {alg:?} public key in PEM: {reason}")]
    Parse {
        /// The configured path.
        path: PathBuf,
        /// The configured algorithm.
        alg: Algorithm,
        /// What the parser said.
        reason: String,
    },
    /// Minting needs the secret; with a public key only the app backend can mint.
    #[error(
        "tokens can be minted only with HS256 (auth.algorithm is {0:?}; mint with the private key instead)"
    )]
    CannotMint(Algorithm),
    /// `sub` is not a valid id.
    #[error("{0:?} is not a valid id (^[A-Za-z0-9_.-]{{1,64}}$)")]
    BadSubject(String),
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Verifies (and, with HS256, mints) tokens with the configured key.
pub struct TokenVerifier {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Builds the verifier, reading the public key file if one is configured.
    pub fn new(cfg: &AuthConfig) -> Result<Self, KeyError> {
        let alg = cfg.algorithm;
        let (decoding, encoding) = match alg {
            Algorithm::HS256 => {
                let secret = cfg.jwt_secret.expose().as_bytes();
                (
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            _ => {
                let path = cfg.public_key_file.clone().unwrap_or_default();
                let pem = std::fs::read(&path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                let key = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| KeyError::Parse {
                    path,
                    alg,
                    reason: e.to_string(),
                })?;
                (key, None)
            }
        };
        // Only the configured algorithm is accepted: the token's header never chooses.
        let mut validation = Validation::new(alg.jwt());
        validation.leeway = cfg.leeway.get().as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` / `aud` only when present unless they are
        // required, so a configured issuer or audience must also be a required claim.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(TokenVerifier {
            decoding,
            encoding,
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::WrongAlgorithm
                }
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                _ => TokenError::Malformed,
            })?;
        let RawClaims { sub, role, exp } = data.claims;
        let sub = sub.ok_or_else(|| TokenError::MissingClaim("sub".to_owned()))?;
        let exp = exp.ok_or_else(|| TokenError::MissingClaim("exp".to_owned()))?;
        if !is_valid_id(&sub) {
            return Err(TokenError::BadSubject);
        }
        Ok(Claims { sub, role, exp })
    }

    /// Mints a token for `sub` valid for `ttl`, carrying the configured `iss` / `aud`.
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        ttl: std::time::Duration,
    ) -> Result<String, KeyError> {
        let Some(key) = &self.encoding else {
            return Err(KeyError::CannotMint(Algorithm::RS256));
        };
        if !is_valid_id(sub) {
            return Err(KeyError::BadSubject(sub.to_owned()));
        }
        let now = unix_now();
        let claims = MintClaims {
            sub,
            role,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::HS256), &claims, key)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let cfg = AuthConfig {
            jwt_secret: Secret::new("super-secret-value-that-must-not-leak"),
            ..AuthConfig::default()
        };
        let shown = format!("{cfg:?} {}", cfg.jwt_secret);
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn sample_secret_is_refused_unless_allowed() {
        let cfg = AuthConfig::default();
        assert!(cfg.validate().iter().any(|(k, _)| *k == "auth.jwt_secret"));
        let dev = AuthConfig {
            allow_insecure_default: true,
            ..AuthConfig::default()
        };
        assert!(dev.validate().is_empty());
        let short = AuthConfig {
            jwt_secret: Secret::new("short"),
            ..AuthConfig::default()
        };
        assert!(short.validate()[0].1.contains("32 bytes"));
    }
}
