//! Clients for the end-to-end tests: [`Api`], the HTTP API as one user or another
//! (tokens minted with the test secret), and [`Device`], one MQTT connection of a
//! user, with helpers that wait under a timeout for what a test expects.

use std::collections::BTreeMap;
use std::time::Duration;

use broker::auth::Role;
use rumqttc::mqttbytes::v4::SubscribeReasonCode;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};

use crate::{Server, token};

/// How long an expected answer or MQTT message may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a device is watched to show that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(400);
/// Lifetime of the tokens the tests mint.
pub const TTL: Duration = Duration::from_secs(3600);

pub fn user(uid: &str) -> String {
    token(uid, Role::User, TTL)
}

/// One HTTP answer: its status, content type and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub text: String,
}

impl Reply {
    /// The body as JSON (panics, quoting it, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?} ({})",
                self.status, self.text, self.content_type
            )
        })
    }

    /// The body, after checking the status.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        if self.text.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Checks that this is the JSON error `{"error":{"code","message"}}` with
    /// `status` and `code`, and returns the message.
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "{status} {code}: content type {:?}, body {:?}",
            self.content_type,
            self.text
        );
        let v = self.json();
        let error = v["error"].as_object().expect("an \"error\" object");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        assert_eq!(error.len(), 2, "only code and message: {v}");
        assert_eq!(error["code"], code, "{v}");
        let message = error["message"].as_str().expect("error.message");
        assert!(!message.is_empty(), "{v}");
        message.to_owned()
    }
}

/// The HTTP API of one server.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(server: &Server) -> Api {
        Api {
            base: server.http_url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = timeout(WAIT, req.send())
            .await
            .expect("answered in time")
            .expect("request");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = r.text().await.expect("body");
        Reply {
            status,
            content_type,
            text,
        }
    }

    /// POSTs `body` as JSON to `path` with `token` (none: no header).
    pub async fn post_with(&self, token: Option<&str>, path: &str, body: &Value) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.call(req).await
    }

    /// POSTs `body` as JSON to `path` as user `uid`.
    pub async fn post(&self, uid: &str, path: &str, body: &Value) -> Reply {
        self.post_with(Some(&user(uid)), path, body).await
    }

    /// PUTs `body` as JSON to `path` as user `uid`.
    pub async fn put(&self, uid: &str, path: &str, body: &Value) -> Reply {
        let req = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(user(uid))
            .json(body);
        self.call(req).await
    }

    /// DELETEs `path` as user `uid`.
    /// `owner` creates group `gid` and adds `members` (both must succeed).
    pub async fn group(&self, owner: &str, gid: &str, members: &[&str]) {
        self.post(
            owner,
            "/v1/groups",
            &serde_json::json!({"id": gid, "name": gid}),
        )
        .await
        .expect(201);
        self.post(
            owner,
            &format!("/v1/groups/{gid}/members"),
            &serde_json::json!({ "users": members }),
        )
        .await
        .expect(200);
    }

    /// A request of any method to `path` as user `uid`, to finish and [`Api::call`].
    pub fn request(
        &self,
        method: reqwest::Method,
        uid: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(user(uid))
    }

    pub async fn delete(&self, uid: &str, path: &str) -> Reply {
        let req = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(user(uid));
        self.call(req).await
    }

    /// GETs `path` as user `uid`.
    pub async fn get(&self, uid: &str, path: &str) -> Reply {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(user(uid));
        self.call(req).await
    }

    /// `from` sends `body` to `to`: must be stored (201); gives `{id,conv,seq,ts}`.
    pub async fn send(&self, from: &str, to: &str, body: Value) -> Value {
        self.post(from, "/v1/messages", &json!({"to": to, "body": body}))
            .await
            .expect(201)
    }

    /// `uid`'s conversation list, by conversation.
    pub async fn conversations(&self, uid: &str) -> BTreeMap<String, Value> {
        let list = self.get(uid, "/v1/conversations").await.expect(200);
        list["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .map(|c| (c["conv"].as_str().expect("conv").to_owned(), c.clone()))
            .collect()
    }

    /// `uid`'s `/v1/sync?limit=N` conversations.
    pub async fn sync(&self, uid: &str, limit: u32) -> Vec<Value> {
        let sync = self
            .get(uid, &format!("/v1/sync?limit={limit}"))
            .await
            .expect(200);
        sync["conversations"]
            .as_array()
            .expect("conversations")
            .clone()
    }

    /// A page of `conv` read by `uid` with `query` (`after=0&limit=5`): its
    /// messages and `has_more`.
    pub async fn page(&self, uid: &str, conv: &str, query: &str) -> (Vec<Value>, bool) {
        let page = self
            .get(uid, &format!("/v1/conversations/{conv}/messages?{query}"))
            .await
            .expect(200);
        (
            page["messages"].as_array().expect("messages").clone(),
            page["has_more"].as_bool().expect("has_more"),
        )
    }

    /// `uid` acks `cursors`.
    pub async fn ack(&self, uid: &str, cursors: Value) -> Reply {
        self.post(uid, "/v1/ack", &json!({ "cursors": cursors }))
            .await
    }
}

pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// A message a device received.
#[derive(Debug)]
pub struct Delivered {
    pub topic: String,
    pub qos: QoS,
    pub json: Value,
}

/// One MQTT connection of a user (a phone, a laptop).
pub struct Device {
    /// The client, to subscribe or publish further.
    pub client: AsyncClient,
    events: EventLoop,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

impl Device {
    /// Connects as `uid` with client id `client_id` and subscribes to `topics` at
    /// QoS 1, returning once every subscription is acknowledged.
    pub async fn connect(server: &Server, uid: &str, client_id: &str, topics: &[&str]) -> Device {
        Device::connect_at(server, uid, client_id, topics, QoS::AtLeastOnce).await
    }

    /// Like [`Device::connect`], subscribing at `qos`.
    pub async fn connect_at(
        server: &Server,
        uid: &str,
        client_id: &str,
        topics: &[&str],
        qos: QoS,
    ) -> Device {
        let addr = server.addr("mqtt.tcp");
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_credentials(uid, user(uid));
        let (client, events) = AsyncClient::new(o, 10);
        for t in topics {
            client.subscribe(*t, qos).await.expect("subscribe");
        }
        let mut device = Device { client, events };
        let mut acked = 0;
        while acked < topics.len() {
            if let Incoming::SubAck(s) = device.next().await {
                assert_eq!(
                    s.return_codes,
                    [SubscribeReasonCode::Success(qos)],
                    "{uid} subscribing to {topics:?}"
                );
                acked += 1;
            }
        }
        device
    }

    /// Subscribes to `topic` at QoS 1 and returns the SUBACK's return code.
    pub async fn subscribe(&mut self, topic: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Incoming::SubAck(s) = self.next().await {
                return s.return_codes[0];
            }
        }
    }

    /// The next message on `topic`, skipping others.
    pub async fn message_on(&mut self, topic: &str) -> Delivered {
        loop {
            let m = self.message().await;
            if m.topic == topic {
                return m;
            }
        }
    }

    /// Publishes `payload` on `topic` at QoS 1 and drives the connection until its
    /// PUBACK; returns the messages that arrived meanwhile.
    pub async fn publish(&mut self, topic: &str, payload: &Value) -> Vec<Delivered> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish");
        let mut meanwhile = Vec::new();
        loop {
            match self.next().await {
                Incoming::PubAck(_) => return meanwhile,
                Incoming::Publish(p) => meanwhile.push(Delivered {
                    json: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                    topic: p.topic,
                    qos: p.qos,
                }),
                _ => {}
            }
        }
    }

    /// Drives the connection until the server closes it; `false` if it is still
    /// open after the harness's wait.
    pub async fn until_closed(&mut self) -> bool {
        timeout(WAIT, async { while self.events.poll().await.is_ok() {} })
            .await
            .is_ok()
    }

    /// The next packet from the server.
    pub async fn next(&mut self) -> Incoming {
        loop {
            match timeout(WAIT, self.events.poll())
                .await
                .expect("a packet in time")
            {
                Ok(Event::Incoming(i)) => return i,
                Ok(Event::Outgoing(_)) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    }

    /// The next message delivered to this device.
    pub async fn message(&mut self) -> Delivered {
        loop {
            if let Incoming::Publish(p) = self.next().await {
                let json = serde_json::from_slice(&p.payload).unwrap_or_else(|e| {
                    panic!("payload on {} is not JSON ({e}): {:?}", p.topic, p.payload)
                });
                return Delivered {
                    topic: p.topic,
                    qos: p.qos,
                    json,
                };
            }
        }
    }

    /// Watches the connection for [`QUIET`]; panics if any message arrives.
    pub async fn nothing_arrives(&mut self) {
        let until = Instant::now() + QUIET;
        while let Ok(polled) = timeout_at(until, self.events.poll()).await {
            match polled {
                Ok(Event::Incoming(Incoming::Publish(p))) => panic!(
                    "unexpected message on {}: {}",
                    p.topic,
                    String::from_utf8_lossy(&p.payload)
                ),
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    }
}

/// The text of `server`'s `/metrics`.
async fn metrics_text(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// A metric of `/metrics`, summed over its series (0 when it has none).
pub async fn metric(server: &Server, name: &str) -> f64 {
    metrics_text(server)
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let key = k.split('{').next()?;
            (key == name).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// One series of `/metrics`, named with its labels as printed
/// (`imqtt_x_total{a="b"}`); `None` when it is not there.
pub async fn series(server: &Server, series: &str) -> Option<f64> {
    metrics_text(server).await.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse::<f64>().ok())?
    })
}
