//! The token table of DESIGN.md §2: what the verifier accepts and what it refuses.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::auth::{
    Algorithm, AuthConfig, Claims, Role, Secret, TokenError, TokenVerifier, unix_now,
};
use broker::units::Duration;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("test key present")
}

fn hs256() -> AuthConfig {
    AuthConfig {
        jwt_secret: Secret::new(SECRET),
        ..AuthConfig::default()
    }
}

fn with_public_key(alg: Algorithm, file: &str) -> AuthConfig {
    AuthConfig {
        algorithm: alg,
        public_key_file: Some(key_path(file)),
        ..AuthConfig::default()
    }
}

fn verifier(cfg: &AuthConfig) -> TokenVerifier {
    TokenVerifier::new(cfg).expect("keys load")
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "exp": unix_now() as i64 + exp_in})
}

fn sign_hs(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn sign_with(alg: jsonwebtoken::Algorithm, key: EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &key).expect("sign")
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[test]
fn valid_hs256_token_yields_its_claims() {
    let v = verifier(&hs256());
    let exp = unix_now() + 600;
    let token = sign_hs(
        &json!({"sub": "alice", "exp": exp, "role": "service"}),
        SECRET.as_bytes(),
    );
    assert_eq!(
        v.verify(&token),
        Ok(Claims {
            sub: "alice".into(),
            role: Role::Service,
            exp
        })
    );
}

#[test]
fn role_defaults_to_user_and_unknown_roles_are_refused() {
    let v = verifier(&hs256());
    let token = sign_hs(&claims("bob", 600), SECRET.as_bytes());
    assert_eq!(v.verify(&token).map(|c| c.role), Ok(Role::User));
    let bad = sign_hs(
        &json!({"sub": "bob", "exp": unix_now() + 600, "role": "root"}),
        SECRET.as_bytes(),
    );
    assert_eq!(v.verify(&bad), Err(TokenError::Malformed));
}

#[test]
fn expired_token_is_refused_beyond_the_leeway() {
    let v = verifier(&hs256());
    let token = sign_hs(&claims("alice", -60), SECRET.as_bytes());
    assert_eq!(v.verify(&token), Err(TokenError::Expired));
    // Within the 5 s default leeway, a just-expired token still passes.
    let token = sign_hs(&claims("alice", -2), SECRET.as_bytes());
    assert!(v.verify(&token).is_ok());
}

#[test]
fn bad_signature_is_refused() {
    let v = verifier(&hs256());
    let token = sign_hs(
        &claims("alice", 600),
        b"another-secret-that-is-also-32-bytes-long",
    );
    assert_eq!(v.verify(&token), Err(TokenError::BadSignature));
    // A tampered payload with the original signature.
    let good = sign_hs(&claims("alice", 600), SECRET.as_bytes());
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(claims("mallory", 600).to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));
}

#[test]
fn alg_none_is_refused() {
    let v = verifier(&hs256());
    for alg in ["none", "None", "NONE"] {
        let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &claims("alice", 600));
        assert!(v.verify(&token).is_err(), "alg {alg} accepted");
    }
}

#[test]
fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm-confusion attack: the attacker signs with HMAC using the
    // server's RSA public key as the secret.
    let v = verifier(&with_public_key(Algorithm::RS256, "rsa-public.pem"));
    let token = sign_hs(&claims("alice", 600), &key("rsa-public.pem"));
    assert_eq!(v.verify(&token), Err(TokenError::WrongAlgorithm));
}

#[test]
fn rs256_token_against_an_hs256_deployment_is_refused() {
    let v = verifier(&hs256());
    let rsa = EncodingKey::from_rsa_pem(&key("rsa-private.pem")).expect("rsa key");
    let token = sign_with(jsonwebtoken::Algorithm::RS256, rsa, &claims("alice", 600));
    assert_eq!(v.verify(&token), Err(TokenError::WrongAlgorithm));
}

#[test]
fn public_key_algorithms_verify_their_own_tokens() {
    let cases = [
        (
            Algorithm::RS256,
            "rsa-public.pem",
            jsonwebtoken::Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key("rsa-private.pem")).expect("rsa"),
        ),
        (
            Algorithm::ES256,
            "ec-public.pem",
            jsonwebtoken::Algorithm::ES256,
            EncodingKey::from_ec_pem(&key("ec-private.pem")).expect("ec"),
        ),
        (
            Algorithm::EdDSA,
            "ed-public.pem",
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&key("ed-private.pem")).expect("ed"),
        ),
    ];
    for (alg, public, jwt_alg, private) in cases {
        let v = verifier(&with_public_key(alg, public));
        let token = sign_with(jwt_alg, private, &claims("device-7", 600));
        assert_eq!(
            v.verify(&token).map(|c| c.sub),
            Ok("device-7".into()),
            "{alg:?}"
        );
        // The same deployment refuses an HS256 token made with the sample secret.
        let hs = sign_hs(
            &claims("device-7", 600),
            broker::auth::SAMPLE_JWT_SECRET.as_bytes(),
        );
        assert_eq!(v.verify(&hs), Err(TokenError::WrongAlgorithm), "{alg:?}");
    }
}

#[test]
fn es256_token_against_an_rs256_deployment_is_refused() {
    let v = verifier(&with_public_key(Algorithm::RS256, "rsa-public.pem"));
    let ec = EncodingKey::from_ec_pem(&key("ec-private.pem")).expect("ec");
    let token = sign_with(jsonwebtoken::Algorithm::ES256, ec, &claims("alice", 600));
    assert_eq!(v.verify(&token), Err(TokenError::WrongAlgorithm));
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let cfg = AuthConfig {
        issuer: Some("https://auth.example.com".into()),
        audience: Some("imqtt".into()),
        ..hs256()
    };
    let v = verifier(&cfg);
    let exp = unix_now() + 600;
    let sign = |c: Value| sign_hs(&c, SECRET.as_bytes());
    let good =
        sign(json!({"sub": "a", "exp": exp, "iss": "https://auth.example.com", "aud": "imqtt"}));
    assert!(v.verify(&good).is_ok());
    let wrong_iss =
        sign(json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "imqtt"}));
    assert_eq!(v.verify(&wrong_iss), Err(TokenError::WrongIssuer));
    let wrong_aud =
        sign(json!({"sub": "a", "exp": exp, "iss": "https://auth.example.com", "aud": "other"}));
    assert_eq!(v.verify(&wrong_aud), Err(TokenError::WrongAudience));
    let no_iss = sign(json!({"sub": "a", "exp": exp, "aud": "imqtt"}));
    assert_eq!(
        v.verify(&no_iss),
        Err(TokenError::MissingClaim("iss".into()))
    );
    let no_aud = sign(json!({"sub": "a", "exp": exp, "iss": "https://auth.example.com"}));
    assert_eq!(
        v.verify(&no_aud),
        Err(TokenError::MissingClaim("aud".into()))
    );
}

#[test]
fn exp_of_the_wrong_type_is_refused() {
    // CVE-2026-25537: an `exp` string must not skip the time check.
    let v = verifier(&hs256());
    for exp in [json!("9999999999"), json!(null), json!(1.5e10), json!([1])] {
        let token = sign_hs(&json!({"sub": "alice", "exp": exp}), SECRET.as_bytes());
        assert!(v.verify(&token).is_err(), "exp {exp} accepted");
    }
}

#[test]
fn missing_claims_are_refused() {
    let v = verifier(&hs256());
    let no_sub = sign_hs(&json!({"exp": unix_now() + 600}), SECRET.as_bytes());
    assert_eq!(
        v.verify(&no_sub),
        Err(TokenError::MissingClaim("sub".into()))
    );
    let no_exp = sign_hs(&json!({"sub": "alice"}), SECRET.as_bytes());
    assert_eq!(
        v.verify(&no_exp),
        Err(TokenError::MissingClaim("exp".into()))
    );
}

#[test]
fn subject_must_be_a_valid_id() {
    let v = verifier(&hs256());
    for sub in ["a/b", "#", "users/+", "", "x y", &"z".repeat(65)] {
        let token = sign_hs(&claims(sub, 600), SECRET.as_bytes());
        assert!(v.verify(&token).is_err(), "sub {sub:?} accepted");
    }
    let token = sign_hs(&claims("a/b", 600), SECRET.as_bytes());
    assert_eq!(v.verify(&token), Err(TokenError::BadSubject));
}

#[test]
fn garbage_is_malformed() {
    let v = verifier(&hs256());
    for t in ["", "abc", "a.b.c", "....", "eyJ.eyJ.sig", "\u{0}\u{1}"] {
        assert!(v.verify(t).is_err(), "{t:?} accepted");
    }
}

#[test]
fn minted_tokens_verify_and_carry_issuer_and_audience() {
    let cfg = AuthConfig {
        issuer: Some("imqtt-test".into()),
        audience: Some("apps".into()),
        leeway: Duration::secs(0),
        ..hs256()
    };
    let v = verifier(&cfg);
    let token = v
        .mint("alice", Role::Admin, std::time::Duration::from_secs(3600))
        .expect("mint");
    let c = v.verify(&token).expect("own token verifies");
    assert_eq!((c.sub.as_str(), c.role), ("alice", Role::Admin));
    assert!(c.exp >= unix_now() + 3590);
    assert!(
        v.mint("a/b", Role::User, std::time::Duration::from_secs(60))
            .is_err()
    );
    let rs = verifier(&with_public_key(Algorithm::RS256, "rsa-public.pem"));
    assert!(
        rs.mint("alice", Role::User, std::time::Duration::from_secs(60))
            .is_err()
    );
}

#[test]
fn unreadable_or_wrong_public_key_is_a_startup_error() {
    let missing = with_public_key(Algorithm::RS256, "does-not-exist.pem");
    assert!(TokenVerifier::new(&missing).is_err());
    let wrong = with_public_key(Algorithm::RS256, "ec-public.pem");
    assert!(TokenVerifier::new(&wrong).is_err());
}
