//! The `imqtt` binary as an operator meets it: start on port 0, health, readiness,
//! metrics, JSON errors, shutdown.

use imqtt_tests::Server;
use serde_json::Value;

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
    assert!(stderr.contains("store"), "{stderr}");
}
