//! The operator's API and the embedded web pages over real HTTP, without a
//! browser (the browser suite, `browser.rs`, drives the pages themselves):
//! admin-only endpoints refuse every other token, count what happens, look users
//! up and disconnect them; the pages come with their content types, compression,
//! ETags and security headers.

use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::Server;
use imqtt_tests::client::{Api, Device};
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH,
};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

fn admin() -> String {
    imqtt_tests::token("root", Role::Admin, Duration::from_secs(3600))
}

async fn admin_get(api: &Api, path: &str) -> imqtt_tests::client::Reply {
    api.call(
        api.http
            .get(format!("{}{path}", api.base))
            .bearer_auth(admin()),
    )
    .await
}

/// Polls the stats until `check` holds (the gauges follow connections as they
/// are attached and detached).
async fn stats_until(api: &Api, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = admin_get(api, "/v1/admin/stats").await.expect(200);
        if check(&s) || Instant::now() > deadline {
            return s;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_admin_api_refuses_every_other_token() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let service = imqtt_tests::token("svc", Role::Service, Duration::from_secs(60));
    for (post, path) in [
        (false, "/v1/admin/stats"),
        (false, "/v1/admin/users/alice"),
        (true, "/v1/admin/users/alice/disconnect"),
    ] {
        let url = format!("{}{path}", api.base);
        let req = |t: Option<&str>| {
            let r = if post {
                api.http.post(&url)
            } else {
                api.http.get(&url)
            };
            match t {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        api.call(req(Some(&imqtt_tests::client::user("alice"))))
            .await
            .error(403, "forbidden");
        api.call(req(Some(&service))).await.error(403, "forbidden");
        api.call(req(None)).await.error(401, "unauthorized");
    }
}

#[tokio::test]
async fn the_admin_api_counts_looks_up_and_disconnects() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let s = stats_until(&api, |_| true).await;
    assert_eq!(s["connections"], 0, "{s}");
    assert_eq!(s["messages_stored"], 0, "{s}");
    assert!(s["resident_bytes"].as_u64().unwrap_or(0) > 0, "{s}");

    let mut bob = Device::connect(&server, "bob", "bob-phone", &["users/bob/inbox"]).await;
    for i in 0..3 {
        api.send("alice", "bob", json!({"text": format!("m{i}")}))
            .await;
    }
    for _ in 0..3 {
        bob.message_on("users/bob/inbox").await;
    }
    let s = stats_until(&api, |s| s["connections"] == 1 && s["deliveries"] == 3).await;
    assert_eq!(s["connections"], 1, "{s}");
    assert_eq!(s["messages_stored"], 3, "{s}");
    // Answered 201, so flushed: the store has bytes on disk (a new one may have
    // none before its first flush).
    assert!(s["store_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    // Three to bob's phone; alice's copies had no subscriber.
    assert_eq!(s["deliveries"], 3, "{s}");
    assert!(s["subscriptions"].as_u64().unwrap_or(0) >= 1, "{s}");

    let u = admin_get(&api, "/v1/admin/users/bob").await.expect(200);
    assert_eq!(u["user"], "bob");
    assert_eq!(u["account"], false);
    assert_eq!(u["presence"]["status"], "online", "{u}");
    assert_eq!(u["presence"]["devices"], json!(["bob-phone"]), "{u}");
    assert_eq!(u["conversations"][0]["conv"], "dm:alice:bob", "{u}");
    assert_eq!(u["conversations"][0]["head"], 3, "{u}");
    assert_eq!(u["groups"], json!([]), "{u}");

    let r = api
        .call(
            api.http
                .post(format!("{}/v1/admin/users/bob/disconnect", api.base))
                .bearer_auth(admin()),
        )
        .await
        .expect(200);
    assert_eq!(r, json!({"user": "bob", "disconnected": 1}));
    assert!(bob.until_closed().await, "bob's connection is still open");
    let s = stats_until(&api, |s| s["connections"] == 0).await;
    assert_eq!(s["connections"], 0, "{s}");

    admin_get(&api, "/v1/admin/users/nobody")
        .await
        .error(404, "not_found");
    admin_get(&api, "/v1/admin/users/no%20body")
        .await
        .error(400, "bad_request");
}

#[tokio::test]
async fn the_pages_are_served_from_the_binary() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let info = api
        .call(api.http.get(format!("{}/v1/server", api.base)))
        .await
        .expect(200);
    assert_eq!(
        info["mqtt"]["ws_port"].as_u64(),
        Some(u64::from(server.addr("mqtt.ws").port())),
        "{info}"
    );
    assert_eq!(info["mqtt"]["ws_path"], "/mqtt");
    assert_eq!(info["accounts"], true);

    let get = |path: &str| api.http.get(format!("{}{path}", api.base));
    let page = get("/").send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    assert!(
        h[CONTENT_SECURITY_POLICY]
            .to_str()
            .is_ok_and(|v| v.contains("script-src 'self'")),
        "{h:?}"
    );
    let html = page.text().await.expect("body");
    assert!(html.contains("/assets/mqtt-5.16.0.min.js"), "{html}");
    let admin = get("/admin").send().await.expect("GET /admin");
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.expect("body").contains("imqtt admin"));

    // mqtt.js: gzipped when asked, cached for a year, 304 on its ETag.
    let plain = get("/assets/mqtt-5.16.0.min.js").send().await.expect("GET");
    assert_eq!(
        plain.headers()[CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    let etag = plain.headers()[ETAG].clone();
    assert!(
        plain.headers()[CACHE_CONTROL]
            .to_str()
            .is_ok_and(|v| v.contains("immutable"))
    );
    let plain_len = plain.bytes().await.expect("body").len();
    let gz = get("/assets/mqtt-5.16.0.min.js")
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET gzip");
    assert_eq!(gz.headers()[CONTENT_ENCODING], "gzip");
    let gz_len = gz.bytes().await.expect("body").len();
    assert!(gz_len * 2 < plain_len, "gzip {gz_len} of {plain_len}");
    let again = get("/assets/mqtt-5.16.0.min.js")
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("GET again");
    assert_eq!(again.status(), 304);

    api.call(get("/assets/nope.js"))
        .await
        .error(404, "not_found");
    api.call(get("/assets/..%2Fsrc%2Fmain.rs"))
        .await
        .error(404, "not_found");
}
