//! The HTTP building blocks through `app(state)` and a router over the same state:
//! bearer authentication, JSON rejections and the send limiter's refusals map to the
//! API's error bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};
use http_body_util::BodyExt;
use im_bridge::Error;
use im_bridge::api::{AppState, Json, app};
use im_bridge::auth::Caller;
use im_bridge::config::Config;
use im_bridge::metrics::Metrics;
use im_bridge::passwords::Passwords;
use im_bridge::ratelimit::RateLimiter;
use im_bridge::store::SledStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "api-test-secret-0123456789abcdef0123456789";

async fn state() -> AppState {
    let store: Arc<dyn im_bridge::store::Store> =
        Arc::new(SledStore::temporary(std::time::Duration::from_secs(60)).expect("store"));
    // A bound broker that serves no one: these tests never publish.
    let broker = broker::Broker::bind(
        broker::config::MqttConfig {
            tcp: broker::units::ListenAddr::on("127.0.0.1:0".parse().expect("addr")),
            ws: broker::units::ListenAddr::default(),
            ..Default::default()
        },
        Arc::new(
            TokenVerifier::new(&AuthConfig {
                jwt_secret: Secret::new(SECRET),
                ..AuthConfig::default()
            })
            .expect("verifier"),
        ),
        Arc::new(broker::DenyAll),
        Arc::new(broker::BrokerMetrics::unregistered()),
    )
    .await
    .expect("broker");
    let mut config = Config {
        auth: AuthConfig {
            jwt_secret: Secret::new(SECRET),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    config.http.max_body = broker::units::ByteSize(1024);
    config.limits.rate_per_user = 1;
    config.limits.rate_burst = 5;
    let cache = Arc::new(im_bridge::cache::AccessCache::default());
    AppState {
        access: im_bridge::access::Access::new(store.clone(), cache.clone()),
        retained: Default::default(),
        send_limit: Arc::new(RateLimiter::from_config(&config.limits)),
        verifier: Arc::new(TokenVerifier::new(&config.auth).expect("verifier")),
        config: Arc::new(config),
        committer: im_bridge::commit::Committer::start(
            store.clone(),
            im_bridge::commit::FlushPolicy::Always,
            cache,
            Box::new(|_| {}),
        ),
        broker: broker.handle(),
        cluster: None,
        store,
        metrics: Arc::new(Metrics::new(|_| {})),
        passwords: Passwords::default(),
        ready: Arc::new(AtomicBool::new(true)),
        started: std::time::Instant::now(),
        sign_ins: Default::default(),
        receipts: im_bridge::receipts::Receipts::new(broker.handle(), true),
        mqtt_addrs: broker.local_addrs().into(),
    }
}

fn probe_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|c: Caller| async move { Json(json!({"uid": c.uid(), "role": c.role()})) }),
        )
        .route(
            "/echo",
            post(|_: Caller, Json(v): Json<Value>| async move { Json(v) }),
        )
        .with_state(state)
}

/// A router whose `POST /send/{n}` charges the caller `n` sends, all at `now` (a
/// fixed instant, so the waits are exact).
fn send_router(state: AppState, now: Instant) -> Router {
    Router::new()
        .route(
            "/send/{n}",
            post(
                move |State(s): State<AppState>, c: Caller, Path(n): Path<u32>| async move {
                    s.send_limit.check(c.uid(), n, now)?;
                    Ok::<_, Error>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .with_state(state)
}

async fn call(router: Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn bearer(uid: &str, role: Role) -> String {
    let v = TokenVerifier::new(&AuthConfig {
        jwt_secret: Secret::new(SECRET),
        ..AuthConfig::default()
    })
    .expect("verifier");
    format!(
        "Bearer {}",
        v.mint(uid, role, std::time::Duration::from_secs(60))
            .expect("mint")
    )
}

#[tokio::test]
async fn valid_bearer_token_identifies_the_caller() {
    let req = Request::get("/whoami")
        .header(header::AUTHORIZATION, bearer("alice", Role::Admin))
        .body(Body::empty())
        .expect("request");
    let (status, body) = call(probe_router(state().await), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"uid": "alice", "role": "admin"}));
}

#[tokio::test]
async fn missing_and_bad_tokens_get_401_with_a_code() {
    let cases = [
        (None, "unauthorized"),
        (Some("Basic abc".to_owned()), "unauthorized"),
        (Some("Bearer ".to_owned()), "unauthorized"),
        (Some("Bearer not.a.jwt".to_owned()), "invalid_token"),
    ];
    for (auth, code) in cases {
        let mut req = Request::get("/whoami");
        if let Some(a) = &auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let (status, body) = call(
            probe_router(state().await),
            req.body(Body::empty()).expect("req"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["error"]["code"], code, "{auth:?}");
    }
}

#[tokio::test]
async fn expired_token_gets_token_expired() {
    let old = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": broker::auth::unix_now() - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let req = Request::get("/whoami")
        .header(header::AUTHORIZATION, format!("Bearer {old}"))
        .body(Body::empty())
        .expect("req");
    let (status, body) = call(probe_router(state().await), req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "token_expired");
}

#[tokio::test]
async fn json_rejections_are_api_errors() {
    let auth = bearer("alice", Role::User);
    let send = |ctype: &'static str, body: Vec<u8>| {
        Request::post("/echo")
            .header(header::AUTHORIZATION, auth.clone())
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("req")
    };
    let (status, body) = call(
        probe_router(state().await),
        send("application/json", b"{\"a\":1}".to_vec()),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"a": 1})));

    let (status, body) = call(
        probe_router(state().await),
        send("application/json", b"{bad".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");

    let (status, body) = call(
        probe_router(state().await),
        send("text/plain", b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(2048)).into_bytes();
    let router = probe_router(state().await).layer(axum::extract::DefaultBodyLimit::max(1024));
    let (status, body) = call(router, send("application/json", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn rate_limited_sends_get_429_with_retry_after_and_oversized_batches_413() {
    let state = state().await;
    let now = Instant::now();
    let send = |uid: &str, n: u32| {
        Request::post(format!("/send/{n}"))
            .header(header::AUTHORIZATION, bearer(uid, Role::User))
            .body(Body::empty())
            .expect("req")
    };
    let answer = |req: Request<Body>| {
        let router = send_router(state.clone(), now);
        async move {
            let resp = router.oneshot(req).await.expect("infallible");
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().expect("ascii").to_owned());
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, retry_after, body["error"]["code"].clone())
        }
    };

    // rate_per_user = 1, rate_burst = 5: the whole burst passes.
    let (status, retry, _) = answer(send("alice", 5)).await;
    assert_eq!((status, retry), (StatusCode::NO_CONTENT, None));

    // 3 more need 3 seconds of refill.
    let (status, retry, code) = answer(send("alice", 3)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("3"));
    assert_eq!(code, "rate_limited");

    // More than the burst at once never passes: 413, and no Retry-After to wait on.
    let (status, retry, code) = answer(send("alice", 6)).await;
    assert_eq!((status, retry), (StatusCode::PAYLOAD_TOO_LARGE, None));
    assert_eq!(code, "over_rate_burst");

    // Another user has a bucket of its own.
    let (status, _, _) = answer(send("bob", 1)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn readyz_follows_the_ready_flag() {
    let state = state().await;
    let req = || Request::get("/readyz").body(Body::empty()).expect("req");
    let (status, _) = call(app(state.clone()), req()).await;
    assert_eq!(status, StatusCode::OK);
    state.ready.store(false, Ordering::Release);
    let (status, body) = call(app(state), req()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "not_ready");
}
