//! Built-in accounts through the real `imqtt` binary: sign up, sign in, the token
//! as MQTT password, refusals that do not tell which accounts exist, bad input,
//! the `auth.accounts` switch, and accounts kept across a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};
use imqtt_tests::client::series;
use imqtt_tests::{Launch, Server, TEST_SECRET};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

/// POSTs `body` as JSON; the status and the JSON answer (`Null` if none).
async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    answer(r).await
}

/// POSTs `body` as it is, declared as `content_type`.
async fn post_raw(base: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    answer(r).await
}

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn creds(user: &str, password: &str) -> Value {
    json!({"user": user, "password": password})
}

fn verifier() -> TokenVerifier {
    TokenVerifier::new(&AuthConfig {
        jwt_secret: Secret::new(TEST_SECRET),
        ..AuthConfig::default()
    })
    .expect("verifier")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Connects over MQTT 3.1.1 as `user` with `password`; the CONNACK's code.
async fn mqtt_connect(server: &Server, user: &str, password: &str) -> ConnectReturnCode {
    let addr = server.addr("mqtt.tcp");
    let mut o = MqttOptions::new(format!("{user}-phone"), addr.ip().to_string(), addr.port());
    o.set_credentials(user, password);
    let (client, mut el) = AsyncClient::new(o, 10);
    let code = loop {
        match timeout(WAIT, el.poll()).await.expect("CONNACK in time") {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => break ack.code,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
            Err(e) => panic!("connection failed: {e}"),
        }
    };
    // The user's own inbox is open to it, as to any token holder.
    client
        .subscribe(format!("users/{user}/inbox"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match timeout(WAIT, el.poll()).await.expect("SUBACK in time") {
            Ok(Event::Incoming(Incoming::SubAck(s))) => {
                assert_eq!(
                    s.return_codes,
                    [rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(
                        QoS::AtLeastOnce
                    )]
                );
                return code;
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_signed_up_user_gets_a_token_that_works_as_its_mqtt_password() {
    let server = Server::start().await;
    let base = server.http_url();
    let password = "correct horse battery staple";

    let (status, body) = post(&base, "/v1/accounts", &creds("alice", password)).await;
    assert_eq!((status, &body), (201, &json!({"user": "alice"})));

    let (status, body) = post(&base, "/v1/accounts", &creds("alice", "another password")).await;
    assert_eq!((status, code(&body)), (409, "user_exists"), "{body}");

    let before = unix_now();
    let (status, body) = post(&base, "/v1/tokens", &creds("alice", password)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let expires_at = body["expires_at"].as_u64().expect("expires_at");
    // A user token for alice, valid for auth.token_ttl (24 h by default), whose
    // `exp` is the `expires_at` of the answer.
    let claims = verifier()
        .verify(&token)
        .expect("a token of the server's key");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.role, Role::User);
    assert_eq!(claims.exp, expires_at);
    let day = 24 * 3600;
    assert!(
        (before + day..=unix_now() + day).contains(&expires_at),
        "{expires_at}"
    );

    assert_eq!(
        mqtt_connect(&server, "alice", &token).await,
        ConnectReturnCode::Success
    );

    let log = server.log();
    assert!(log.contains("account created"), "{log}");
    for secret in [password, "another password", "$argon2", token.as_str()] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer_in_a_similar_time() {
    let server = Server::start().await;
    let base = server.http_url();
    let (status, _) = post(&base, "/v1/accounts", &creds("bob", "bob's password")).await;
    assert_eq!(status, 201);

    let wrong = post(&base, "/v1/tokens", &creds("bob", "not bob's password")).await;
    let unknown = post(&base, "/v1/tokens", &creds("nobody", "bob's password")).await;
    assert_eq!(wrong.0, 401);
    assert_eq!(code(&wrong.1), "bad_credentials");
    assert_eq!(wrong, unknown, "the answers tell the two apart");
    // A password over the 1024-byte limit is refused alike, without hashing it.
    let long = post(&base, "/v1/tokens", &creds("bob", &"p".repeat(1025))).await;
    assert_eq!(long, wrong);

    // Both cost one argon2 verification: an unknown user's answer is not the
    // instant one a skipped hash would give (alternated, so that both see the same
    // machine load; medians, so that one stall does not decide).
    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    for i in 0..7 {
        // Each round from an address of its own, below the sign-in throttle's
        // free tries.
        let client = client_from(&format!("127.0.0.{}", 10 + i));
        for (user, times) in [("bob", &mut wrong_times), ("nobody", &mut unknown_times)] {
            let t = Instant::now();
            let (status, _, _) = sign_in(&client, &base, user, "a wrong password").await;
            times.push(t.elapsed());
            assert_eq!(status, 401);
        }
    }
    wrong_times.sort();
    unknown_times.sort();
    let (w, u) = (wrong_times[3], unknown_times[3]);
    assert!(
        u * 3 > w && w * 3 > u,
        "median wrong password {w:?}, median unknown user {u:?}"
    );
}

#[tokio::test]
async fn invalid_ids_passwords_and_bodies_are_400() {
    let server = Server::start().await;
    let base = server.http_url();
    let long_id = "x".repeat(65);
    for user in ["", "a/b", "a+b", "a#", "$SYS", "dm:a", "a b", "é", &long_id] {
        for path in ["/v1/accounts", "/v1/tokens"] {
            let (status, body) = post(&base, path, &creds(user, "long enough password")).await;
            assert_eq!(
                (status, code(&body)),
                (400, "bad_request"),
                "{path} {user:?}"
            );
        }
    }
    for password in ["", "1234567", &"p".repeat(1025)] {
        let (status, body) = post(&base, "/v1/accounts", &creds("carol", password)).await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{} bytes",
            password.len()
        );
    }
    // 8 and 1024 bytes are both fine.
    let (status, _) = post(&base, "/v1/accounts", &creds("carol", "12345678")).await;
    assert_eq!(status, 201);
    let (status, _) = post(&base, "/v1/accounts", &creds("dave", &"p".repeat(1024))).await;
    assert_eq!(status, 201);
    let (status, _) = post(&base, "/v1/tokens", &creds("dave", &"p".repeat(1024))).await;
    assert_eq!(status, 200);

    for path in ["/v1/accounts", "/v1/tokens"] {
        for bad in [
            "not json",
            "{",
            "[]",
            "null",
            r#"{"user":"erin"}"#,
            r#"{"password":"long enough password"}"#,
            r#"{"user":7,"password":"long enough password"}"#,
            r#"{"user":"erin","password":null}"#,
        ] {
            let (status, body) = post_raw(&base, path, "application/json", bad).await;
            assert_eq!((status, code(&body)), (400, "bad_request"), "{path} {bad}");
        }
        let (status, body) = post_raw(
            &base,
            path,
            "text/plain",
            r#"{"user":"erin","password":"long enough password"}"#,
        )
        .await;
        assert_eq!((status, code(&body)), (415, "unsupported_media_type"));
        let r = reqwest::get(format!("{base}{path}")).await.expect("GET");
        assert_eq!(r.status().as_u16(), 405, "GET {path}");
    }
    // None of that created an account.
    let (status, _) = post(&base, "/v1/tokens", &creds("erin", "long enough password")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn racing_sign_ups_for_one_id_create_it_once() {
    let server = Server::start().await;
    let base = server.http_url();
    let tries = (0..6).map(|i| {
        let base = base.clone();
        tokio::spawn(async move {
            let password = format!("password number {i}");
            let (status, _) = post(&base, "/v1/accounts", &creds("frank", &password)).await;
            (status, password)
        })
    });
    let mut created = Vec::new();
    for t in tries {
        let (status, password) = t.await.expect("join");
        match status {
            201 => created.push(password),
            409 => {}
            other => panic!("sign-up answered {other}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    // The password that won is the account's.
    let (status, _) = post(&base, "/v1/tokens", &creds("frank", &created[0])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn with_accounts_off_both_endpoints_are_unknown_routes() {
    let server = Server::start_env("", &[("IMQTT_AUTH__ACCOUNTS", "false")]).await;
    let base = server.http_url();
    for path in ["/v1/accounts", "/v1/tokens"] {
        let (status, body) = post(&base, path, &creds("grace", "long enough password")).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{path}");
    }
}

#[tokio::test]
async fn an_account_survives_a_restart_on_the_same_data_directory() {
    let mut server = Server::start().await;
    let (status, _) = post(
        &server.http_url(),
        "/v1/accounts",
        &creds("heidi", "heidi's password"),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(server.terminate().await.code(), Some(0), "{}", server.log());
    let (_, dir) = server.stopped().await;

    let again = Launch::spawn_in(dir, "", &[]).into_server().await;
    let base = again.http_url();
    let (status, body) = post(&base, "/v1/tokens", &creds("heidi", "heidi's password")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token");
    assert_eq!(verifier().verify(token).expect("valid").sub, "heidi");
    let (status, body) = post(&base, "/v1/accounts", &creds("heidi", "a new password")).await;
    assert_eq!((status, code(&body)), (409, "user_exists"));
    let (status, _) = post(&base, "/v1/tokens", &creds("heidi", "a new password")).await;
    assert_eq!(status, 401);
}

/// A client whose connections come from `ip` (any of 127.0.0.0/8 is loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

/// A sign-in from `client`: the status, `Retry-After` and the JSON answer.
async fn sign_in(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> (u16, Option<u64>, Value) {
    let r = client
        .post(format!("{base}/v1/tokens"))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .expect("sign-in");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (status, body) = answer(r).await;
    (status, retry, body)
}

#[tokio::test]
async fn password_guessing_waits_longer_and_longer_and_the_owner_still_signs_in() {
    let server = Server::start().await;
    let base = server.http_url();
    assert_eq!(
        post(
            &base,
            "/v1/accounts",
            &json!({"user": "ann", "password": "right password"})
        )
        .await
        .0,
        201
    );
    // 32 guesses at once from one machine: a few are checked, the rest wait.
    let attacker = client_from("127.0.0.2");
    let guesses = (0..32).map(|i| {
        let (attacker, base) = (attacker.clone(), base.clone());
        tokio::spawn(async move { sign_in(&attacker, &base, "ann", &format!("guess {i}")).await })
    });
    let mut checked = 0;
    let mut waits = Vec::new();
    for g in guesses {
        let (status, retry, body) = g.await.expect("task");
        match status {
            401 => checked += 1,
            429 => {
                assert_eq!(body["error"]["code"], "too_many_attempts", "{body}");
                waits.push(retry.expect("Retry-After on a 429"));
            }
            other => panic!("guess answered {other}: {body}"),
        }
    }
    assert!(checked >= 5, "the free tries are checked: {checked}");
    assert!(
        waits.len() >= 20,
        "only {} of 32 guesses waited",
        waits.len()
    );
    assert!(waits.iter().all(|w| (1..=30).contains(w)), "{waits:?}");

    // Meanwhile the owner, on its own machine, is not held up.
    let owner = client_from("127.0.0.1");
    let (status, _, body) = sign_in(&owner, &base, "ann", "right password").await;
    assert_eq!(status, 200, "{body}");

    // The attacker's next guesses, each after its wait, wait twice as long.
    let mut next = Vec::new();
    for _ in 0..2 {
        let (_, retry, _) = sign_in(&attacker, &base, "ann", "still waiting").await;
        if let Some(wait) = retry {
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        let (status, _, _) = sign_in(&attacker, &base, "ann", "one more guess").await;
        assert_eq!(status, 401, "after the wait a guess is checked again");
        let (status, retry, _) = sign_in(&attacker, &base, "ann", "too soon").await;
        assert_eq!(status, 429);
        next.push(retry.expect("Retry-After"));
    }
    assert!(next[1] > next[0], "the waits grow: {next:?}");
    // After the wait, the right password works from there too.
    tokio::time::sleep(Duration::from_secs(next[1])).await;
    let (status, _, body) = sign_in(&attacker, &base, "ann", "right password").await;
    assert_eq!(status, 200, "{body}");

    let refused = series(&server, "imqtt_sign_in_refused_total{endpoint=\"tokens\"}").await;
    assert!(refused.unwrap_or(0.0) >= 20.0, "{refused:?}");
    let failures = series(&server, "imqtt_sign_in_failures_total").await;
    assert!(failures.unwrap_or(0.0) >= 7.0, "{failures:?}");
}

#[tokio::test]
async fn one_address_signs_up_a_few_accounts_then_waits() {
    let server = Server::start().await;
    let base = server.http_url();
    let signer = client_from("127.0.0.3");
    let mut answers = Vec::new();
    for i in 0..12 {
        let r = signer
            .post(format!("{base}/v1/accounts"))
            .json(&json!({"user": format!("bulk{i}"), "password": "a fine password"}))
            .send()
            .await
            .expect("sign-up");
        answers.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
    }
    assert!(answers[..10].iter().all(|a| a.0 == 201), "{answers:?}");
    assert_eq!(answers[11], (429, true), "{answers:?}");
    // Another address is not held up.
    assert_eq!(
        post(
            &base,
            "/v1/accounts",
            &json!({"user": "elsewhere", "password": "a fine password"})
        )
        .await
        .0,
        201
    );
}
