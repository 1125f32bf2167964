//! The PostgreSQL engine against a real PostgreSQL: an outage (PostgreSQL stopped
//! under load, then started again), a crash of PostgreSQL itself (SIGKILL during
//! sends), and two imqtt processes sending into one conversation of one
//! database. Each test starts a PostgreSQL of its own; without PostgreSQL
//! installed they say so and pass, except under `CI=true`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::client::{Api, Device, WAIT, user};
use imqtt_tests::postgres::Postgres;
use imqtt_tests::{Server, token};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep};

/// A server on `url`.
async fn server_on(url: &str) -> Server {
    Server::start_env(
        "",
        &[
            ("IMQTT_STORE__ENGINE", "postgres"),
            ("IMQTT_STORE__URL", url),
            ("IMQTT_STORE__POOL", "4"),
        ],
    )
    .await
}

/// What the servers acknowledged: client_msg_id -> (id, seq).
type Acked = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// Sends as `from` to `to` through `urls` in turn until `stop`, each message
/// retried with its client_msg_id until it gets a 2xx (a 503 during an outage,
/// a refused connection); records every answer. Returns how many 503
/// `store_unavailable` it met, each checked for `Retry-After`.
async fn sender(
    urls: Vec<String>,
    from: String,
    to: String,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> usize {
    let client = reqwest::Client::new();
    let bearer = token(&from, Role::User, Duration::from_secs(600));
    let mut unavailable = 0;
    let mut n = 0;
    'messages: while !stop.load(Ordering::Relaxed) {
        let cmid = format!("{from}-{n}");
        n += 1;
        for attempt in 0.. {
            let url = &urls[attempt % urls.len()];
            let sent = client
                .post(format!("{url}/v1/messages"))
                .bearer_auth(&bearer)
                .json(&json!({"to": to, "body": {"cmid": cmid}, "client_msg_id": cmid}))
                .timeout(Duration::from_secs(15))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.expect("json");
                    let id = v["id"].as_str().expect("id").to_owned();
                    let seq = v["seq"].as_u64().expect("seq");
                    let before = acked.lock().await.insert(cmid.clone(), (id.clone(), seq));
                    if let Some(earlier) = before {
                        assert_eq!(earlier, (id, seq), "a retry answers the original");
                    }
                    continue 'messages;
                }
                Ok(r) if r.status() == 503 => {
                    assert!(
                        r.headers().contains_key("retry-after"),
                        "a 503 says when to retry"
                    );
                    let v: Value = r.json().await.expect("json");
                    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
                    unavailable += 1;
                }
                Ok(r) => panic!("unexpected {}: {:?}", r.status(), r.text().await),
                // Timed out or cut: unknown, so retried with the same id.
                Err(_) => {}
            }
            sleep(Duration::from_millis(50)).await;
            if stop.load(Ordering::Relaxed) && attempt > 600 {
                panic!("{cmid} never stored");
            }
        }
    }
    unavailable
}

/// Every message of `conv` as `reader` sees it, in pages.
async fn history(api: &Api, reader: &str, conv: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().and_then(|m| m["seq"].as_u64()).unwrap_or(0);
        let page = api
            .get(
                reader,
                &format!("/v1/conversations/{conv}/messages?after={after}&limit=1000"),
            )
            .await
            .expect(200);
        let messages = page["messages"].as_array().expect("messages").clone();
        let more = page["has_more"].as_bool().expect("has_more");
        out.extend(messages);
        if !more {
            return out;
        }
    }
}

/// Every acknowledged message is in `messages` at its seq with its id, the seqs
/// are 1..=N with no gap, and no client_msg_id is stored twice.
fn check_nothing_lost_or_doubled(messages: &[Value], acked: &HashMap<String, (String, u64)>) {
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    let mut by_cmid: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for m in messages {
        by_cmid
            .entry(m["client_msg_id"].as_str().expect("cmid"))
            .or_default()
            .push((
                m["id"].as_str().expect("id"),
                m["seq"].as_u64().expect("seq"),
            ));
    }
    for (cmid, stored) in &by_cmid {
        assert_eq!(stored.len(), 1, "{cmid} stored once: {stored:?}");
    }
    for (cmid, (id, seq)) in acked {
        assert_eq!(
            by_cmid.get(cmid.as_str()).map(|s| s[0]),
            Some((id.as_str(), *seq)),
            "{cmid} was answered 2xx"
        );
    }
}

async fn wait_for_acks(acked: &Acked, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().await.len() < at_least {
        assert!(
            Instant::now() < deadline,
            "only {} acks",
            acked.lock().await.len()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn status_of(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_is_503_store_unavailable_and_heals_without_a_restart() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let server = server_on(&pg.database()).await;
    let api = Api::new(&server);
    api.send("ann", "bob", json!("before")).await;
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(sender(
                vec![server.http_url()],
                format!("s{i}"),
                "bob".into(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    wait_for_acks(&acked, 40).await;

    pg.stop();
    let stopped_at = acked.lock().await.len();
    // Reads and writes answer 503 store_unavailable; the process serves the rest.
    let reply = api
        .post("ann", "/v1/messages", &json!({"to": "bob", "body": 1}))
        .await;
    reply.error(503, "store_unavailable");
    api.ack("bob", json!({"dm:ann:bob": 1}))
        .await
        .error(503, "store_unavailable");
    api.get("bob", "/v1/conversations")
        .await
        .error(503, "store_unavailable");
    let readyz = format!("{}/readyz", server.http_url());
    let deadline = Instant::now() + WAIT;
    while status_of(&readyz).await != 503 {
        assert!(Instant::now() < deadline, "/readyz never said 503");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status_of(&format!("{}/healthz", server.http_url())).await,
        200
    );
    sleep(Duration::from_millis(500)).await;
    assert!(
        acked.lock().await.len() <= stopped_at + 4,
        "no send is answered 2xx while the database is down (beyond those in flight)"
    );

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(&readyz).await != 200 {
        assert!(Instant::now() < deadline, "/readyz never healed");
        sleep(Duration::from_millis(50)).await;
    }
    wait_for_acks(&acked, stopped_at + 40).await;
    // The MQTT connection stayed up through it: a new message reaches it.
    let sent = api.send("ann", "bob", json!("after")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = bob.message_on("users/bob/inbox").await;
        if m.json["id"] == sent["id"] {
            break;
        }
        assert!(Instant::now() < deadline, "the message after the outage");
    }

    stop.store(true, Ordering::Relaxed);
    let mut unavailable = 0;
    for s in senders {
        unavailable += s.await.expect("sender");
    }
    assert!(unavailable > 0, "the senders met the outage");
    let acked = acked.lock().await.clone();
    for i in 0..4 {
        let sent: HashMap<String, (String, u64)> = acked
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("s{i}-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let conv = format!("dm:bob:s{i}");
        check_nothing_lost_or_doubled(&history(&api, "bob", &conv).await, &sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_answered_2xx_is_lost_when_postgres_is_killed_during_sends() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let server = server_on(&pg.database()).await;
    let api = Api::new(&server);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Eight senders into one conversation: a round holds many of them.
    let senders: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(sender(
                vec![server.http_url()],
                format!("k{i}"),
                "sink".into(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for round in 1..=2 {
        wait_for_acks(&acked, 150 * round).await;
        pg.kill();
        sleep(Duration::from_millis(300)).await;
        pg.restart();
    }
    let before_stop = acked.lock().await.len();
    wait_for_acks(&acked, before_stop + 50).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }
    let acked = acked.lock().await.clone();
    let total = AtomicUsize::new(0);
    for i in 0..8 {
        let sent: HashMap<String, (String, u64)> = acked
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("k{i}-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        total.fetch_add(sent.len(), Ordering::Relaxed);
        let conv = format!("dm:k{i}:sink");
        check_nothing_lost_or_doubled(&history(&api, "sink", &conv).await, &sent);
    }
    assert!(total.load(Ordering::Relaxed) >= 350);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_database_keep_one_conversation_contiguous_and_retries_exact() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database();
    let (one, two) = (server_on(&url).await, server_on(&url).await);
    let urls = vec![one.http_url(), two.http_url()];
    // Six senders, each alternating between the processes, into one conversation.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..6)
        .map(|i| {
            let mut mine = urls.clone();
            mine.rotate_left(i % 2);
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                // Each sender is "ann" under its own prefix of client_msg_ids.
                let client = reqwest::Client::new();
                let bearer = user("ann");
                for n in 0..60 {
                    let cmid = format!("p{i}-{n}");
                    let url = &mine[n % 2];
                    let r = client
                        .post(format!("{url}/v1/messages"))
                        .bearer_auth(&bearer)
                        .json(&json!({"to": "bob", "body": n, "client_msg_id": cmid}))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().await.expect("json");
                    acked.lock().await.insert(
                        cmid,
                        (
                            v["id"].as_str().expect("id").to_owned(),
                            v["seq"].as_u64().expect("seq"),
                        ),
                    );
                }
                drop(stop);
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    // The same send to both processes at once: one message, one answer.
    let both = |n: u32| {
        let urls = urls.clone();
        async move {
            let client = reqwest::Client::new();
            let bearer = user("ann");
            let body = json!({"to": "bob", "body": "twice", "client_msg_id": format!("both-{n}")});
            let (a, b) = tokio::join!(
                client
                    .post(format!("{}/v1/messages", urls[0]))
                    .bearer_auth(&bearer)
                    .json(&body)
                    .send(),
                client
                    .post(format!("{}/v1/messages", urls[1]))
                    .bearer_auth(&bearer)
                    .json(&body)
                    .send(),
            );
            let (a, b) = (a.expect("a"), b.expect("b"));
            let mut statuses = [a.status().as_u16(), b.status().as_u16()];
            statuses.sort_unstable();
            assert_eq!(statuses, [200, 201], "one stores, the other finds it");
            let (a, b): (Value, Value) = (a.json().await.expect("a"), b.json().await.expect("b"));
            assert_eq!((&a["id"], &a["seq"]), (&b["id"], &b["seq"]));
            (
                format!("both-{n}"),
                (
                    a["id"].as_str().expect("id").to_owned(),
                    a["seq"].as_u64().expect("seq"),
                ),
            )
        }
    };
    for n in 0..20 {
        let (cmid, place) = both(n).await;
        acked.lock().await.insert(cmid, place);
    }
    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), 6 * 60 + 20);
    // Both processes read the same conversation.
    for server in [&one, &two] {
        let messages = history(&Api::new(server), "bob", "dm:ann:bob").await;
        assert_eq!(messages.len(), acked.len());
        check_nothing_lost_or_doubled(&messages, &acked);
    }
}

/// `imqtt --config FILE store copy --to URL`: its exit status and output.
fn store_copy(config: &std::path::Path, url: &str) -> (bool, String) {
    let out = std::process::Command::new(imqtt_tests::imqtt_bin())
        .arg("--config")
        .arg(config)
        .args(["store", "copy", "--to", url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run imqtt store copy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_copy_moves_a_stopped_embedded_store_into_an_empty_database() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.database();
    // An embedded server with a little of everything.
    let mut server = Server::start_env("", &[("IMQTT_STORE__ENGINE", "sled")]).await;
    let api = Api::new(&server);
    api.post_with(
        None,
        "/v1/accounts",
        &json!({"user": "ann", "password": "correct horse"}),
    )
    .await
    .expect(201);
    let mut sent = Vec::new();
    for n in 0..3 {
        let r = api
            .post(
                "ann",
                "/v1/messages",
                &json!({"to": "bob", "body": n, "client_msg_id": format!("c{n}")}),
            )
            .await
            .expect(201);
        sent.push(r["id"].as_str().expect("id").to_owned());
    }
    api.ack("bob", json!({"dm:ann:bob": 2})).await.expect(204);
    api.post("ann", "/v1/groups", &json!({"id": "team", "name": "Team"}))
        .await
        .expect(201);
    api.post("ann", "/v1/groups/team/members", &json!({"users": ["bob"]}))
        .await
        .expect(200);
    api.post(
        "ann",
        "/v1/messages",
        &json!({"group": "team", "body": "hi"}),
    )
    .await
    .expect(201);
    api.put("ann", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    let config = server.data_dir().with_file_name("imqtt.toml");

    // Not while the server holds the store.
    let (ok, text) = store_copy(&config, &url);
    assert!(!ok, "copied from a running server: {text}");
    assert!(text.contains("in use"), "{text}");

    server.terminate().await;
    let (ok, text) = store_copy(&config, &url);
    assert!(ok, "{text}");
    for line in [
        "4 messages",
        "1 accounts",
        "1 groups",
        "2 memberships",
        "1 contacts",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    assert!(!text.contains("s3cret"));
    // Once only.
    let (ok, text) = store_copy(&config, &url);
    assert!(!ok);
    assert!(text.contains("already holds imqtt data"), "{text}");

    // A server on the database has it all.
    let moved = server_on(&url).await;
    let api = Api::new(&moved);
    let messages = history(&api, "bob", "dm:ann:bob").await;
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    let convs = api.conversations("bob").await;
    assert_eq!(convs["dm:ann:bob"]["cursor"], 2);
    assert_eq!(convs["group:team"]["head"], 1);
    let retry = api
        .post(
            "ann",
            "/v1/messages",
            &json!({"to": "bob", "body": 0, "client_msg_id": "c0"}),
        )
        .await
        .expect(200);
    assert_eq!(
        retry["id"],
        sent[0].as_str(),
        "its idempotency key came along"
    );
    api.post_with(
        None,
        "/v1/tokens",
        &json!({"user": "ann", "password": "correct horse"}),
    )
    .await
    .expect(200);
    let contacts = api.get("ann", "/v1/contacts").await.expect(200);
    assert_eq!(contacts["contacts"], json!(["bob"]));
    let group = api.get("bob", "/v1/groups/team").await.expect(200);
    assert_eq!(group["members"].as_array().map(Vec::len), Some(2));
}
