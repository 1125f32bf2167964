//! The client library (client-sdk) against the real server: while the test takes
//! the device's connection over and kills the server with SIGKILL mid-stream, the
//! application sees every accepted message exactly once and in seq order; a
//! restarted app resumes from its cursor file; group membership, large-message
//! hints, live messages, presence and token refresh work through the client; a
//! `resync` event makes it fetch what lost pushes left out.
//!
//! `IMQTT_SDK_ROUNDS` sets how many disruptions (a takeover, then a SIGKILL, in
//! turn) the first test makes: 4 by default, more for a soak.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use broker::auth::Role;
use imqtt_client::wire::{AckRequest, ConvId, Envelope, PresenceStatus, ReadsQuery};
use imqtt_client::{
    Api, Client, ClientConfig, ClientEvent, Credentials, Events, FileCursors, GroupEvent,
    RetryPolicy, TokenRefresh,
};
use imqtt_tests::client::{self as tc, Device, QUIET, WAIT, user};
use imqtt_tests::{Launch, Server};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::timeout;

/// Retries that outlast a server restart.
fn patient() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(90),
    }
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    tcp: SocketAddr,
    ws: SocketAddr,
    http: SocketAddr,
}

impl Ports {
    fn of(server: &Server) -> Ports {
        Ports {
            tcp: server.addr("mqtt.tcp"),
            ws: server.addr("mqtt.ws"),
            http: server.addr("http"),
        }
    }

    fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn mqtt_url(&self) -> String {
        format!("mqtt://{}", self.tcp)
    }
}

/// A client config for `uid`'s `device` with a valid token.
fn config(ports: Ports, uid: &str, device: &str) -> ClientConfig {
    let mut c = ClientConfig::new(
        ports.mqtt_url(),
        ports.http_url(),
        uid,
        device,
        Credentials::Token(user(uid)),
    );
    c.keep_alive = Duration::from_secs(5);
    c.retry = patient();
    c
}

fn api(ports: Ports, uid: &str) -> Api {
    Api::new(
        &ports.http_url(),
        uid,
        Credentials::Token(user(uid)),
        None,
        patient(),
    )
    .expect("api")
}

/// Kills `server` with SIGKILL and starts another on the same data and ports.
async fn crash_and_restart(mut server: Server, ports: Ports) -> Server {
    server.kill().await;
    let (_, dir) = server.stopped().await;
    let (tcp, ws, http) = (
        ports.tcp.to_string(),
        ports.ws.to_string(),
        ports.http.to_string(),
    );
    let env = [
        ("IMQTT_MQTT__TCP", tcp.as_str()),
        ("IMQTT_MQTT__WS", ws.as_str()),
        ("IMQTT_HTTP__LISTEN", http.as_str()),
        ("IMQTT_LIMITS__RATE_PER_USER", "0"),
    ];
    Launch::spawn_in(dir, "", &env).into_server().await
}

/// What the application saw: every message in arrival order per conversation,
/// and the connection changes.
#[derive(Debug, Default)]
struct Seen {
    messages: HashMap<ConvId, Vec<Envelope>>,
    connected: usize,
    disconnected: usize,
}

/// Takes every event, as an application would.
fn collect(mut events: Events) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let mut s = s.lock().await;
            match e {
                ClientEvent::Message(m) => s.messages.entry(m.conv.clone()).or_default().push(m),
                ClientEvent::Connected => s.connected += 1,
                ClientEvent::Disconnected { .. } => s.disconnected += 1,
                _ => {}
            }
        }
    });
    (seen, task)
}

/// Sends `count` messages with the client library's retries, as `from` to `to`
/// (or to group `to` when `group`); records what was accepted.
async fn send_all(
    api: Api,
    to: &'static str,
    group: bool,
    count: usize,
    accepted: Arc<AtomicUsize>,
) -> Vec<(ConvId, u64, String)> {
    let mut ok = Vec::new();
    for n in 0..count {
        let body = json!({"from": api.user(), "n": n});
        let sent = if group {
            api.send_group(to, body).await
        } else {
            api.send_to(to, body).await
        };
        match sent {
            Ok(r) => {
                ok.push((r.conv, r.seq, r.id));
                accepted.fetch_add(1, Ordering::SeqCst);
            }
            // Not accepted: it may or may not be stored, and either way the
            // application must see what is stored once and in order.
            Err(e) => eprintln!("{} send {n} not accepted: {e}", api.user()),
        }
        // Paced, so that the takeovers and crashes fall mid-stream.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ok
}

async fn wait_accepted(accepted: &AtomicUsize, at_least: usize) {
    timeout(Duration::from_secs(120), async {
        while accepted.load(Ordering::SeqCst) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("senders make progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_message_reaches_the_app_once_in_order_across_takeovers_and_sigkills() {
    let server = Server::start_env("", &[("IMQTT_LIMITS__RATE_PER_USER", "0")]).await;
    let ports = Ports::of(&server);
    let http = tc::Api::new(&server);
    http.post("dave", "/v1/groups", &json!({"id": "g", "name": "g"}))
        .await
        .expect(201);
    http.post("dave", "/v1/groups/g/members", &json!({"users": ["bob"]}))
        .await
        .expect(200);

    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = config(ports, "bob", "phone");
    cfg.cursors = Arc::new(FileCursors::open(dir.path().join("cursors")).expect("cursors"));
    let (bob, events) = Client::connect(cfg).await.expect("bob connects");
    let (seen, collector) = collect(events);

    let rounds: usize = std::env::var("IMQTT_SDK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4)
        .max(1);
    // Every sender sends 50 messages per disruption round, so that each
    // round falls mid-stream.
    let each: usize = 50 * (rounds + 1);
    let accepted = Arc::new(AtomicUsize::new(0));
    let senders = [
        tokio::spawn(send_all(
            api(ports, "alice"),
            "bob",
            false,
            each,
            accepted.clone(),
        )),
        tokio::spawn(send_all(
            api(ports, "carol"),
            "bob",
            false,
            each,
            accepted.clone(),
        )),
        tokio::spawn(send_all(
            api(ports, "dave"),
            "g",
            true,
            each,
            accepted.clone(),
        )),
    ];

    // Drops and crashes while the messages flow: a takeover of bob's device by
    // another connection with its client id, then a SIGKILL, in turn; each once
    // bob's client is connected again after the one before.
    let mut server = server;
    let connected = || async { seen.lock().await.connected };
    for round in 0..rounds {
        // Accepted sends (of all three senders) before this round's disruption.
        let at = 150 * round + 75;
        wait_accepted(&accepted, at).await;
        let before = connected().await;
        if round % 2 == 0 {
            // Subscribing makes it wait until it is connected.
            let intruder = Device::connect(&server, "bob", "phone", &["users/bob/events"]).await;
            drop(intruder);
        } else {
            server = crash_and_restart(server, ports).await;
        }
        timeout(Duration::from_secs(60), async {
            while connected().await <= before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("bob's client reconnects");
    }

    let mut acked: Vec<(ConvId, u64, String)> = Vec::new();
    for s in senders {
        acked.extend(s.await.expect("sender"));
    }
    assert!(
        acked.len() >= 3 * each - rounds,
        "only {} of {} sends accepted",
        acked.len(),
        3 * each
    );

    assert_every_message_once_in_order(&seen, &api(ports, "bob"), &acked, 3).await;
    let s = seen.lock().await;
    assert!(
        s.disconnected >= rounds && s.connected > rounds,
        "connection changes seen: {} disconnected, {} connected",
        s.disconnected,
        s.connected
    );
    drop(s);
    bob.close().await;
    let _ = timeout(WAIT, collector).await;
}

/// Waits until the application has taken every message up to the heads that
/// `reader` (its user) sees on the server now, in `convs` conversations; then
/// checks that each came once, in seq order, the accepted sends at their seqs,
/// and that no send (sender, `n` of its body) was stored twice.
async fn assert_every_message_once_in_order(
    seen: &Mutex<Seen>,
    reader: &Api,
    acked: &[(ConvId, u64, String)],
    convs: usize,
) {
    let heads: BTreeMap<ConvId, u64> = reader
        .conversations()
        .await
        .expect("conversations")
        .conversations
        .into_iter()
        .map(|c| (c.conv, c.head))
        .collect();
    assert_eq!(heads.len(), convs, "{heads:?}");
    let caught_up = timeout(Duration::from_secs(60), async {
        loop {
            {
                let s = seen.lock().await;
                if heads
                    .iter()
                    .all(|(conv, head)| s.messages.get(conv).map_or(0, |m| m.len() as u64) >= *head)
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Anything late would be a duplicate: give it a moment to show.
    tokio::time::sleep(QUIET).await;
    let s = seen.lock().await;
    let counts: BTreeMap<&ConvId, usize> = s.messages.iter().map(|(c, m)| (c, m.len())).collect();
    assert!(
        caught_up.is_ok(),
        "the app did not catch up: heads {heads:?}, seen {counts:?}"
    );
    for (conv, head) in &heads {
        let got: Vec<u64> = s.messages[conv].iter().map(|m| m.seq).collect();
        assert_eq!(
            got,
            (1..=*head).collect::<Vec<_>>(),
            "{conv}: every seq once, in order"
        );
    }
    for (conv, seq, id) in acked {
        let m = &s.messages[conv][(*seq - 1) as usize];
        assert_eq!(&m.id, id, "{conv} #{seq} is the accepted message");
    }
    // Retries across the failures stored nothing twice: each send (sender,
    // number) is in its conversation once.
    for (conv, messages) in &s.messages {
        let mut sends: Vec<(String, u64)> = messages
            .iter()
            .map(|m| (m.from.clone(), m.body["n"].as_u64().unwrap_or(u64::MAX)))
            .collect();
        let total = sends.len();
        sends.sort();
        sends.dedup();
        assert_eq!(sends.len(), total, "{conv}: a send stored twice");
    }
}

/// The next message event, skipping others.
async fn next_message(events: &mut Events) -> Envelope {
    timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(ClientEvent::Message(m)) => return m,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("a message within WAIT")
}

/// Asserts that no message comes within [`QUIET`].
async fn no_message(events: &mut Events) {
    let got = timeout(QUIET, async {
        loop {
            match events.next().await {
                Some(ClientEvent::Message(m)) => return m,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    if let Ok(m) = got {
        panic!("unexpected message {} #{}", m.conv, m.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_app_resumes_from_its_cursor_file_and_acks_reach_the_server() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let http = tc::Api::new(&server);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bob.cursors");
    let dm = ConvId::dm("alice", "bob").expect("conv");
    let cfg = |auto_ack: bool| {
        let mut c = config(ports, "bob", "laptop");
        c.cursors = Arc::new(FileCursors::open(&path).expect("cursors"));
        c.auto_ack = auto_ack;
        c
    };

    let (first, mut events) = Client::connect(cfg(true)).await.expect("connect");
    for n in 1..=10 {
        http.send("alice", "bob", json!(n)).await;
    }
    for n in 1..=10 {
        assert_eq!(next_message(&mut events).await.seq, n);
    }
    first.close().await;
    // close() sent the batched ack: the server's cursor is where the app is.
    assert_eq!(http.conversations("bob").await[dm.as_str()]["cursor"], 10);

    for n in 11..=15 {
        http.send("alice", "bob", json!(n)).await;
    }
    // An app that takes 11..=13 and dies before any ack leaves.
    let (second, mut events) = Client::connect(cfg(false)).await.expect("connect");
    for n in 11..=13 {
        assert_eq!(next_message(&mut events).await.seq, n);
    }
    drop(events);
    drop(second);
    assert_eq!(http.conversations("bob").await[dm.as_str()]["cursor"], 10);

    // Restarted on the same file: 14 and 15, nothing it already took.
    let (third, mut events) = Client::connect(cfg(true)).await.expect("connect");
    assert_eq!(next_message(&mut events).await.seq, 14);
    assert_eq!(next_message(&mut events).await.seq, 15);
    no_message(&mut events).await;
    third.close().await;
    assert_eq!(http.conversations("bob").await[dm.as_str()]["cursor"], 15);

    // A new device without a cursor file starts at the server's cursor.
    let (fresh, mut events) = Client::connect(config(ports, "bob", "tablet"))
        .await
        .expect("connect");
    no_message(&mut events).await;
    http.send("alice", "bob", json!(16)).await;
    assert_eq!(next_message(&mut events).await.seq, 16);
    fresh.close().await;
}

/// The next event that `pick` accepts, skipping others.
async fn expect_event<T>(events: &mut Events, mut pick: impl FnMut(ClientEvent) -> Option<T>) -> T {
    timeout(WAIT, async {
        loop {
            let e = events.next().await.expect("events ended");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
    .expect("the expected event within WAIT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_large_messages_live_messages_and_presence_reach_the_app() {
    let server = Server::start_with("[delivery]\ninline_max_bytes = 300\n").await;
    let ports = Ports::of(&server);
    let http = tc::Api::new(&server);
    let (bob, mut events) = Client::connect(config(ports, "bob", "phone"))
        .await
        .expect("connect");

    // Added to a group after connecting: the client subscribes on the event.
    http.post(
        "alice",
        "/v1/groups",
        &json!({"id": "team", "name": "Team"}),
    )
    .await
    .expect(201);
    http.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["bob"]}),
    )
    .await
    .expect(200);
    let added = expect_event(&mut events, |e| match e {
        ClientEvent::Group(g @ GroupEvent::MemberAdded { .. }) => Some(g),
        _ => None,
    })
    .await;
    assert_eq!(
        added,
        GroupEvent::MemberAdded {
            group: "team".into(),
            user: "bob".into(),
            by: "alice".into()
        }
    );
    let sent = api(ports, "alice")
        .send_group("team", json!({"text": "welcome"}))
        .await
        .expect("group send");
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.conv.as_str(), m.seq, m.id.as_str()),
        ("group:team", 1, sent.id.as_str())
    );

    // Too large to push: announced by a hint, pulled by the client.
    let big = "x".repeat(2000);
    http.send("alice", "bob", json!({"text": big})).await;
    let m = next_message(&mut events).await;
    assert_eq!(m.conv.as_str(), "dm:alice:bob");
    assert_eq!(m.body["text"].as_str().map(str::len), Some(2000));

    // qos 0: live only, no seq.
    let live = http
        .post(
            "alice",
            "/v1/messages",
            &json!({"to": "bob", "body": "typing", "qos": 0}),
        )
        .await
        .expect(202);
    let got = expect_event(&mut events, |e| match e {
        ClientEvent::Live(l) => Some(l),
        _ => None,
    })
    .await;
    assert_eq!(
        (got.id.as_str(), &got.body),
        (live["id"].as_str().expect("id"), &json!("typing"))
    );

    // Presence of a contact, live.
    // Neither a contact nor a co-member: refused, and said so.
    let refused = bob.watch_presence("zed").await.expect_err("not visible");
    assert!(
        matches!(refused, imqtt_client::Error::NotVisible(ref u) if u == "zed"),
        "{refused}"
    );
    http.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    bob.watch_presence("alice").await.expect("watch");
    let alice = Device::connect(&server, "alice", "web", &["users/alice/events"]).await;
    expect_event(&mut events, |e| match e {
        ClientEvent::Presence(p) if p.user == "alice" && p.status == PresenceStatus::Online => {
            Some(())
        }
        _ => None,
    })
    .await;
    drop(alice);
    expect_event(&mut events, |e| match e {
        ClientEvent::Presence(p) if p.user == "alice" && p.status == PresenceStatus::Offline => {
            Some(())
        }
        _ => None,
    })
    .await;

    // Removed: told, and no longer subscribed.
    http.delete("alice", "/v1/groups/team/members/bob")
        .await
        .expect(204);
    let removed = expect_event(&mut events, |e| match e {
        ClientEvent::Group(g @ GroupEvent::MemberRemoved { .. }) => Some(g),
        _ => None,
    })
    .await;
    assert!(matches!(removed, GroupEvent::MemberRemoved { ref user, .. } if user == "bob"));
    api(ports, "alice")
        .send_group("team", json!("after"))
        .await
        .expect("send");
    no_message(&mut events).await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_for_mqtt_and_http() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let refreshes = Arc::new(AtomicUsize::new(0));
    let r = refreshes.clone();
    let mut cfg = config(ports, "bob", "phone");
    cfg.credentials = Credentials::Token("not-a-valid-token".into());
    cfg.token_refresh = Some(TokenRefresh::new(move || {
        r.fetch_add(1, Ordering::SeqCst);
        async { Ok(user("bob")) }
    }));
    let (bob, mut events) = Client::connect(cfg).await.expect("connect after a refresh");
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
    tc::Api::new(&server)
        .send("alice", "bob", json!("hi"))
        .await;
    assert_eq!(next_message(&mut events).await.body, json!("hi"));
    bob.close().await;

    // Over HTTP: a 401 gets one refresh and the call goes through.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let http = Api::new(
        &ports.http_url(),
        "bob",
        Credentials::Token("expired".into()),
        Some(TokenRefresh::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(user("bob")) }
        })),
        RetryPolicy::NONE,
    )
    .expect("api");
    let list = http.conversations().await.expect("conversations");
    assert_eq!(list.conversations.len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Without a way to refresh, the refusal is the error.
    let mut cfg = config(ports, "bob", "phone");
    cfg.credentials = Credentials::Token("not-a-valid-token".into());
    let err = Client::connect(cfg).await.expect_err("refused");
    assert!(matches!(err, imqtt_client::Error::Unauthorized(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_account_signs_in_with_its_password() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    imqtt_client::sign_up(&ports.http_url(), "erin", "correct horse battery")
        .await
        .expect("sign up");
    let mut cfg = config(ports, "erin", "phone");
    cfg.credentials = Credentials::Password("correct horse battery".into());
    let (erin, mut events) = Client::connect(cfg).await.expect("connect");
    let sent = erin.send("frank", json!("hello")).await.expect("send");
    // Her own send comes back to her devices.
    let m = next_message(&mut events).await;
    assert_eq!((m.id, m.seq), (sent.id, 1));
    erin.close().await;

    let mut cfg = config(ports, "erin", "phone");
    cfg.credentials = Credentials::Password("wrong password".into());
    let err = Client::connect(cfg).await.expect_err("refused");
    assert!(matches!(err, imqtt_client::Error::Unauthorized(_)), "{err}");
}

/// A TCP proxy in front of the MQTT listener that can lose the server's PUBLISH
/// packets, as a node cut off from its cluster loses pushes: the connection stays
/// up, and neither end is told. Everything else passes through unchanged.
struct LossyProxy {
    addr: SocketAddr,
    lose: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    async fn start(upstream: SocketAddr) -> LossyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (lose, lost) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let (l, n) = (lose.clone(), Arc::clone(&lost));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (l, n) = (l.clone(), Arc::clone(&n));
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_rx, client_tx) = client.into_split();
                    let (server_rx, mut server_tx) = server.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut server_tx);
                    tokio::select! {
                        _ = up => {}
                        _ = Self::down(server_rx, client_tx, l, n) => {}
                    }
                });
            }
        });
        LossyProxy {
            addr,
            lose,
            lost,
            task,
        }
    }

    /// Server to client, packet by packet (MQTT's fixed header: a type byte and
    /// a variable-length remaining length), leaving out the PUBLISHes while
    /// `lose` is set.
    async fn down(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        lose: Arc<AtomicBool>,
        lost: Arc<AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while let Some(len) = packet_len(&buf) {
                let packet: Vec<u8> = buf.drain(..len).collect();
                if packet[0] >> 4 == 3 && lose.load(Ordering::SeqCst) {
                    lost.fetch_add(1, Ordering::SeqCst);
                } else if to.write_all(&packet).await.is_err() {
                    return;
                }
            }
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The length of the whole MQTT packet at the start of `buf`, once all of it is
/// there.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 1 + (i + 1) + remaining;
            return (buf.len() >= len).then_some(len);
        }
    }
    None
}

/// Publishes `{"type":"resync"}` on `users/{uid}/events` as the server's node
/// does when its cluster link comes back, from an admin connection (admins may
/// publish on every topic but the outboxes).
async fn publish_resync(server: &Server, uid: &str) {
    let addr = server.addr("mqtt.tcp");
    let mut o = rumqttc::MqttOptions::new("ops-resync", addr.ip().to_string(), addr.port());
    o.set_credentials("ops", imqtt_tests::token("ops", Role::Admin, tc::TTL));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 10);
    client
        .publish(
            format!("users/{uid}/events"),
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"type":"resync"}"#,
        )
        .await
        .expect("queue the resync");
    timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("admin connection: {e}"),
            }
        }
    })
    .await
    .expect("the resync is acknowledged");
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_event_fetches_the_messages_whose_pushes_were_lost() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let proxy = LossyProxy::start(ports.tcp).await;
    let mut cfg = config(ports, "bob", "phone");
    cfg.mqtt_urls = vec![proxy.url()];
    let (bob, mut events) = Client::connect(cfg).await.expect("connect");
    let http = tc::Api::new(&server);
    http.send("alice", "bob", json!(1)).await;
    assert_eq!(next_message(&mut events).await.seq, 1);

    // #2's push is lost on the way: the connection stays up, the client is
    // not told, and nothing else would make it look.
    proxy.lose.store(true, Ordering::SeqCst);
    let lost = http.send("alice", "bob", json!(2)).await;
    timeout(WAIT, async {
        while proxy.lost.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the push of #2 reaches the proxy");
    proxy.lose.store(false, Ordering::SeqCst);
    no_message(&mut events).await;

    publish_resync(&server, "bob").await;
    expect_event(&mut events, |e| (e == ClientEvent::Resync).then_some(())).await;
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.seq, m.id.as_str()),
        (2, lost["id"].as_str().expect("id"))
    );

    // Pushes flow on as before, and nothing comes twice.
    http.send("alice", "bob", json!(3)).await;
    assert_eq!(next_message(&mut events).await.seq, 3);
    no_message(&mut events).await;
    bob.close().await;
}

/// A loopback address nothing listens on: bound to port 0, noted and let go
/// (the kernel does not hand the same ephemeral port out again at once).
fn refusing_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// An API as `uid` over the `http` roots, in that order, with retries that
/// outlast a server restart.
fn api_over(http: &[String], uid: &str) -> Api {
    Api::with_servers(http, uid, Credentials::Token(user(uid)), None, patient()).expect("api")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_refuses_is_passed_over_for_the_next_on_mqtt_and_http() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let dead = refusing_addr();
    let mqtt = vec![format!("mqtt://{dead}"), ports.mqtt_url()];
    let http = vec![format!("http://{dead}"), ports.http_url()];
    let mut cfg = config(ports, "bob", "phone");
    (cfg.mqtt_urls, cfg.http_urls) = (mqtt, http.clone());
    let (bob, mut events) = Client::connect(cfg)
        .await
        .expect("connects past the dead address");
    let alice = api_over(&http, "alice");

    // Both sides send, each through its own list; every send is stored once.
    let mut sent = Vec::new();
    for n in 0..30 {
        let r = if n % 3 == 2 {
            bob.send("alice", json!({"n": n})).await
        } else {
            alice.send_to("bob", json!({"n": n})).await
        };
        let r = r.expect("send");
        sent.push((r.seq, r.id));
    }
    assert_eq!(
        sent.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    for (seq, id) in &sent {
        let m = next_message(&mut events).await;
        assert_eq!((m.seq, &m.id), (*seq, id), "every message once, in order");
    }
    no_message(&mut events).await;
    assert_eq!(
        alice.base_url(),
        ports.http_url(),
        "the API stays on the one that works"
    );
    assert_eq!(bob.api().base_url(), ports.http_url());
    bob.close().await;

    // Every address refusing: the first connection fails, naming each.
    let mut cfg = config(ports, "bob", "phone");
    let other = refusing_addr();
    cfg.mqtt_urls = vec![format!("mqtt://{dead},mqtt://{other}")];
    let err = Client::connect(cfg).await.expect_err("nobody answers");
    let text = err.to_string();
    assert!(
        text.contains(&dead.to_string()) && text.contains(&other.to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_its_server_dies_the_client_moves_to_the_next_address_and_loses_nothing() {
    let server = Server::start_env("", &[("IMQTT_LIMITS__RATE_PER_USER", "0")]).await;
    let a = Ports::of(&server);
    // The second address: nothing there until the store's next server starts
    // on it, after the first dies.
    let (b_tcp, b_http) = (refusing_addr(), refusing_addr());
    let mqtt = vec![a.mqtt_url(), format!("mqtt://{b_tcp}")];
    let http = vec![a.http_url(), format!("http://{b_http}")];
    let mut cfg = config(a, "bob", "phone");
    (cfg.mqtt_urls, cfg.http_urls) = (mqtt, http.clone());
    let (bob, events) = Client::connect(cfg).await.expect("bob connects");
    let (seen, collector) = collect(events);

    let accepted = Arc::new(AtomicUsize::new(0));
    let senders = [
        tokio::spawn(send_all(
            api_over(&http, "alice"),
            "bob",
            false,
            200,
            accepted.clone(),
        )),
        tokio::spawn(send_all(
            api_over(&http, "carol"),
            "bob",
            false,
            200,
            accepted.clone(),
        )),
    ];
    wait_accepted(&accepted, 100).await;

    let mut server = server;
    server.kill().await;
    let (_, dir) = server.stopped().await;
    let (tcp, http_addr) = (b_tcp.to_string(), b_http.to_string());
    let env = [
        ("IMQTT_MQTT__TCP", tcp.as_str()),
        ("IMQTT_MQTT__WS", "127.0.0.1:0"),
        ("IMQTT_HTTP__LISTEN", http_addr.as_str()),
        ("IMQTT_LIMITS__RATE_PER_USER", "0"),
    ];
    let next = Launch::spawn_in(dir, "", &env).into_server().await;
    timeout(Duration::from_secs(60), async {
        while seen.lock().await.connected < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bob's client reconnects, to the second address");

    // Bounded: senders stuck on the dead address would retry for minutes.
    let mut acked = Vec::new();
    for s in senders {
        let sent = timeout(Duration::from_secs(120), s).await;
        acked.extend(sent.expect("the senders finish").expect("sender"));
    }
    assert_eq!(
        acked.len(),
        400,
        "every send is accepted, on one server or the other"
    );
    let reader = api_over(&[next.http_url()], "bob");
    assert_every_message_once_in_order(&seen, &reader, &acked, 2).await;
    assert_eq!(bob.api().base_url(), next.http_url());
    bob.close().await;
    let _ = timeout(WAIT, collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_cluster_the_client_moves_from_a_killed_node_to_another_and_loses_nothing() {
    let Some(mut cluster) = imqtt_tests::cluster::Cluster::start(3).await else {
        return;
    };
    let ports: Vec<Ports> = cluster.nodes.iter().map(Ports::of).collect();
    // bob's client starts on node 1; the senders go through every node.
    let order = [1, 2, 0];
    let mqtt: Vec<String> = order.iter().map(|&i| ports[i].mqtt_url()).collect();
    let http: Vec<String> = order.iter().map(|&i| ports[i].http_url()).collect();
    let mut cfg = config(ports[1], "bob", "phone");
    (cfg.mqtt_urls, cfg.http_urls) = (mqtt, http.clone());
    let (bob, events) = Client::connect(cfg).await.expect("bob connects");
    let (seen, collector) = collect(events);
    let accepted = Arc::new(AtomicUsize::new(0));
    let via = |first: usize| -> Vec<String> {
        (0..3).map(|k| ports[(first + k) % 3].http_url()).collect()
    };
    let senders = [
        tokio::spawn(send_all(
            api_over(&via(0), "alice"),
            "bob",
            false,
            200,
            accepted.clone(),
        )),
        tokio::spawn(send_all(
            api_over(&via(1), "carol"),
            "bob",
            false,
            200,
            accepted.clone(),
        )),
    ];
    wait_accepted(&accepted, 100).await;
    // The node bob's client is on dies, in the middle of the sends.
    cluster.nodes[1].kill().await;
    timeout(Duration::from_secs(60), async {
        while seen.lock().await.connected < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("bob's client reconnects, to another node");
    let mut acked = Vec::new();
    for s in senders {
        let sent = timeout(Duration::from_secs(120), s).await;
        acked.extend(sent.expect("the senders finish").expect("sender"));
    }
    assert_eq!(acked.len(), 400, "every send is accepted by some node");
    let reader = api_over(&[ports[0].http_url()], "bob");
    assert_every_message_once_in_order(&seen, &reader, &acked, 2).await;
    assert_ne!(
        bob.api().base_url(),
        ports[1].http_url(),
        "still on the dead node"
    );
    bob.close().await;
    let _ = timeout(WAIT, collector).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_hears_how_far_the_other_party_has_read() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let (alice, mut events) = Client::connect(config(ports, "alice", "phone"))
        .await
        .expect("connect");
    let http = tc::Api::new(&server);
    http.send("alice", "bob", json!("one")).await;
    http.send("alice", "bob", json!("two")).await;
    let bob = api(ports, "bob");
    let conv: ConvId = "dm:alice:bob".parse().expect("conv");
    bob.ack(&AckRequest {
        cursors: BTreeMap::from([(conv.clone(), 2)]),
    })
    .await
    .expect("ack");
    let (user, seq) = expect_event(&mut events, |e| match e {
        ClientEvent::Read {
            conv: c, user, seq, ..
        } if c == conv => Some((user, seq)),
        _ => None,
    })
    .await;
    assert_eq!((user.as_str(), seq), ("bob", 2));

    let reads = api(ports, "alice")
        .reads(&conv, ReadsQuery::default())
        .await
        .expect("reads");
    let got: Vec<(&str, u64)> = reads
        .reads
        .iter()
        .map(|r| (r.user.as_str(), r.seq))
        .collect();
    assert_eq!(got, vec![("alice", 2), ("bob", 2)]);
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_recalls_come_as_such_in_seq_order() {
    let server = Server::start().await;
    let ports = Ports::of(&server);
    let (alice, _alice_events) = Client::connect(config(ports, "alice", "phone"))
        .await
        .expect("connect");
    let (bob, mut events) = Client::connect(config(ports, "bob", "phone"))
        .await
        .expect("connect");
    let sent = alice
        .send("bob", json!({"text": "helo"}))
        .await
        .expect("send");
    let conv = sent.conv.clone();
    let edit = alice
        .edit(&conv, sent.seq, json!({"text": "hello"}))
        .await
        .expect("edit");
    let recall = alice.recall(&conv, sent.seq).await.expect("recall");
    assert_eq!((edit.seq, recall.seq), (2, 3));

    assert_eq!(next_message(&mut events).await.seq, 1);
    let e = expect_event(&mut events, |e| match e {
        ClientEvent::Edit(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!((e.seq, e.ref_seq), (2, Some(1)));
    assert_eq!(e.body, json!({"text": "hello"}));
    let r = expect_event(&mut events, |e| match e {
        ClientEvent::Recall(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!((r.seq, r.ref_seq, r.body.is_null()), (3, Some(1), true));
    // Bob may not edit alice's message.
    let refused = bob.edit(&conv, 1, json!("mine")).await;
    assert!(
        matches!(&refused, Err(imqtt_client::Error::Api { code, .. }) if code == "not_sender"),
        "{refused:?}"
    );
    alice.close().await;
    bob.close().await;
}
