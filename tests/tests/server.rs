//! The `imqtt` binary as an operator meets it: start on port 0, health, readiness,
//! metrics, JSON errors, shutdown.

use std::time::Duration;

use imqtt_tests::{Launch, Server};
use serde_json::Value;
use tokio::time::Instant;

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("JSON error body");
    v["error"]["code"].as_str().expect("error.code").to_owned()
}

#[tokio::test]
async fn binary_on_port_zero_prints_addresses_and_answers_healthz() {
    let server = Server::start().await;
    for name in ["mqtt.tcp", "mqtt.ws", "http"] {
        assert_ne!(server.addr(name).port(), 0, "{name}");
    }
    let (status, body) = get(&format!("{}/healthz", server.http_url())).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["status"],
        "ok"
    );
    let (status, _) = get(&format!("{}/readyz", server.http_url())).await;
    assert_eq!(status, 200);
    let log = server.log();
    for name in ["mqtt.tcp", "mqtt.ws", "http"] {
        let line = format!("listener=\"{name}\" addr={}", server.addr(name));
        assert!(log.contains(&line), "no log line {line:?} in\n{log}");
    }
}

#[tokio::test]
async fn disabled_websocket_listener_is_not_printed() {
    let server = Server::start_env("", &[("IMQTT_MQTT__WS", "")]).await;
    assert!(!server.addrs.contains_key("mqtt.ws"), "{:?}", server.addrs);
    assert!(server.addrs.contains_key("mqtt.tcp"));
}

#[tokio::test]
async fn unknown_route_wrong_method_and_huge_body_get_json_errors() {
    let server = Server::start().await;
    let base = server.http_url();
    let (status, body) = get(&format!("{base}/no/such/route")).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));

    let client = reqwest::Client::new();
    let r = client
        .delete(format!("{base}/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        error_code(&r.text().await.expect("body")),
        "method_not_allowed"
    );

    // Over the 4 MiB default of http.max_body.
    let huge = vec![b'x'; 5 << 20];
    let r = client
        .post(format!("{base}/v1/messages"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        error_code(&r.text().await.expect("body")),
        "payload_too_large"
    );

    // The server is unharmed.
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests() {
    let server = Server::start().await;
    let base = server.http_url();
    get(&format!("{base}/healthz")).await;
    get(&format!("{base}/missing")).await;
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE imqtt_http_requests counter"),
        "{text}"
    );
    assert!(
        text.contains("imqtt_http_requests_total{method=\"GET\",status=\"404\"} 1"),
        "{text}"
    );
    let rss_line = text
        .lines()
        .find(|l| l.starts_with("imqtt_process_resident_memory_bytes "))
        .expect("rss gauge");
    let rss: u64 = rss_line
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("number");
    assert!(rss > 1 << 20, "{rss_line}");
}

#[tokio::test]
async fn sigterm_stops_the_server_with_exit_code_zero() {
    let mut server = Server::start().await;
    let url = format!("{}/healthz", server.http_url());
    assert_eq!(get(&url).await.0, 200);
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("store flushed"), "{}", server.log());
    assert!(
        reqwest::get(&url).await.is_err(),
        "still serving after exit"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = Server::start().await;
    let out = tokio::process::Command::new(imqtt_tests::imqtt_bin())
        .env("IMQTT_AUTH__JWT_SECRET", imqtt_tests::TEST_SECRET)
        .env("IMQTT_STORE__PATH", server.data_dir())
        .env("IMQTT_MQTT__TCP", "127.0.0.1:0")
        .env("IMQTT_MQTT__WS", "")
        .env("IMQTT_HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .expect("run second imqtt");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "imqtt: store.path {:?} is in use by another imqtt process",
        server.data_dir()
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("imqtt:")).collect();
    assert_eq!(errors, [expected.as_str()], "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
    for noise in ["Os {", "WouldBlock", "IO error", "lock"] {
        assert!(!stderr.contains(noise), "{noise:?} in:\n{stderr}");
    }
}

#[tokio::test]
async fn a_port_in_use_is_one_line_naming_the_config_key() {
    let server = Server::start().await;
    for (var, key, addr) in [
        ("IMQTT_HTTP__LISTEN", "http.listen", server.addr("http")),
        ("IMQTT_MQTT__TCP", "mqtt.tcp", server.addr("mqtt.tcp")),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = tokio::process::Command::new(imqtt_tests::imqtt_bin())
            .env("IMQTT_AUTH__JWT_SECRET", imqtt_tests::TEST_SECRET)
            .env("IMQTT_STORE__PATH", dir.path().join("data"))
            .env("IMQTT_MQTT__TCP", "127.0.0.1:0")
            .env("IMQTT_MQTT__WS", "")
            .env("IMQTT_HTTP__LISTEN", "127.0.0.1:0")
            .env(var, addr.to_string())
            .output()
            .await
            .expect("run second imqtt");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!("imqtt: {key} \"{addr}\" is already in use by another process");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("imqtt:")).collect();
        assert_eq!(errors, [expected.as_str()], "{stderr}");
        assert!(!stderr.contains("os error"), "{stderr}");
    }
}

/// When, during startup, a test sends SIGTERM.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// As soon as the process has a SIGTERM handler: the earliest instant any
    /// program can act on the signal (before its `main`, the default action
    /// kills it, so no program can exit 0 from there).
    AsSoonAsHandled,
    /// This long after the spawn (or when the handler appears, if later).
    AfterSpawn(Duration),
    /// Right after the `--print-addrs` lines were read.
    AfterAddresses,
}

#[tokio::test]
async fn sigterm_at_any_moment_of_startup_exits_zero_and_leaves_a_reusable_store() {
    // How long a start takes here, to spread the delays over the whole of it.
    let spawned = Instant::now();
    let mut server = Server::start().await;
    let startup = spawned.elapsed();
    assert_eq!(server.terminate().await.code(), Some(0), "{}", server.log());

    let mut moments = vec![Moment::AsSoonAsHandled];
    for percent in [2, 5, 10, 20, 35, 50, 70, 90, 100] {
        moments.push(Moment::AfterSpawn(startup * percent / 100));
    }
    moments.push(Moment::AfterAddresses);
    for moment in moments {
        let spawned = Instant::now();
        let mut launch = Launch::spawn("", &[]);
        match moment {
            Moment::AsSoonAsHandled => launch.sigterm_handled().await,
            Moment::AfterSpawn(delay) => {
                launch.sigterm_handled().await;
                tokio::time::sleep_until(spawned + delay).await;
            }
            Moment::AfterAddresses => {
                assert!(launch.read_addrs().await.is_some(), "{}", launch.log());
            }
        }
        launch.sigterm();
        let status = launch.wait().await;
        let log = launch.log();
        assert_eq!(status.code(), Some(0), "{moment:?}: {status}; log:\n{log}");
        if log.contains("store opened") {
            assert!(log.contains("store flushed"), "{moment:?}; log:\n{log}");
        }
        // The lock is released: a second server opens the same store and serves.
        let mut again = Launch::spawn_in(launch.into_dir(), "", &[])
            .into_server()
            .await;
        let readyz = format!("{}/readyz", again.http_url());
        assert_eq!(get(&readyz).await.0, 200, "{moment:?}");
        assert_eq!(again.terminate().await.code(), Some(0), "{}", again.log());
    }
}

#[tokio::test]
async fn readyz_answers_200_as_soon_as_the_addresses_are_printed() {
    for _ in 0..10 {
        let mut server = Server::start().await;
        let (status, body) = get(&format!("{}/readyz", server.http_url())).await;
        assert_eq!(status, 200, "{body}; log:\n{}", server.log());
        let log = server.log();
        assert!(log.lines().any(|l| l.ends_with(" ready")), "{log}");
        assert_eq!(server.terminate().await.code(), Some(0), "{}", server.log());
    }
}

/// A browser's CORS exchange with `/v1`: the preflight, then the request.
async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/messages"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight")
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn a_listed_origin_may_call_the_api_from_a_browser_and_no_other_may() {
    let server = Server::start_env(
        "",
        &[(
            "IMQTT_HTTP__CORS_ORIGINS",
            r#"["https://app.example", "http://localhost:5173"]"#,
        )],
    )
    .await;
    let base = server.http_url();

    let r = preflight(&base, "https://app.example").await;
    assert_eq!(r.status().as_u16(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let methods = h["access-control-allow-methods"].to_str().expect("text");
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"].to_str().expect("text");
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    assert!(
        h["access-control-max-age"]
            .to_str()
            .expect("text")
            .parse::<u32>()
            .expect("secs")
            > 0
    );
    assert!(!h.contains_key("access-control-allow-credentials"));

    // The request itself, with a token, as the page sends it.
    let jwt = imqtt_tests::token("ann", broker::auth::Role::User, Duration::from_secs(600));
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .header("origin", "http://localhost:5173")
        .bearer_auth(&jwt)
        .json(&serde_json::json!({"to": "ben", "body": {"text": "hi"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let vary = r
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("origin"), "{vary}");

    // An unlisted origin: no CORS header on the preflight or the request, so its
    // browser keeps the answer from the page.
    let r = preflight(&base, "https://evil.example").await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    assert_ne!(r.status().as_u16(), 204);
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/conversations"))
        .header("origin", "https://evil.example")
        .bearer_auth(&jwt)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    // Nothing outside /v1 is offered.
    let r = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("metrics");
    assert_eq!(cors_headers(&r), Vec::<String>::new());
}

#[tokio::test]
async fn by_default_no_origin_is_allowed_and_a_star_allows_every_one() {
    let server = Server::start().await;
    let r = preflight(&server.http_url(), "https://app.example").await;
    assert_eq!(r.status().as_u16(), 405, "as any OPTIONS without CORS");
    assert_eq!(cors_headers(&r), Vec::<String>::new());

    let server = Server::start_env("", &[("IMQTT_HTTP__CORS_ORIGINS", r#"["*"]"#)]).await;
    let r = preflight(&server.http_url(), "https://anything.example").await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}
