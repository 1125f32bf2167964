//! Webhooks (`[[webhooks]]`): imqtt tells an application's backend what happened,
//! above all that a message waits for a user with no device online, so that the
//! backend can push it through APNs or FCM (imqtt never talks to those itself).
//!
//! A `message.*` event is queued durably in the same commit round as its message
//! (`Tracked::append` in the commit loop calls [`Hooks::on_append`]), so a crash,
//! a restart or a receiver that is down loses none. One task per webhook sends
//! the queue in order, up to 100 events a POST, signed; a 2xx removes them from
//! the queue, anything else is retried after 1 s, doubling up to 5 min, until an
//! event is older than the webhook's `max_age` (then dropped and counted). The
//! queue holds at most `max_queued` events; past it the oldest are dropped and
//! counted. Delivery is at least once: each event has a unique `id`.
//!
//! The signature: `X-Imqtt-Timestamp: <unix seconds>` and `X-Imqtt-Signature:
//! sha256=<hex HMAC-SHA256 of "{timestamp}.{body}" under the secret>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use imqtt_wire::{ConvKind, Envelope};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::Sha256;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::config::{WebhookConfig, WebhookEvent};
use crate::store::{Appended, Round, Store, StoreError};

/// Events per POST.
const BATCH: usize = 100;
/// The first wait after a failed POST; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a node that does not send a webhook's queue asks again whether it
/// may (the one that did may have died).
const LEAD_RETRY: Duration = Duration::from_secs(2);
/// How long a receiver has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Labels of the per-webhook metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// The webhook's url.
    pub webhook: String,
}

/// The per-webhook metrics.
#[derive(Clone, Debug, Default)]
pub struct HookMetrics {
    queued: Family<HookLabels, Gauge>,
    delivered: Family<HookLabels, Counter>,
    retried: Family<HookLabels, Counter>,
    dropped: Family<HookLabels, Counter>,
}

impl HookMetrics {
    /// Registers them in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_events_queued",
            "Events waiting in each webhook's queue",
            self.queued.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Events each webhook's receiver took (answered 2xx)",
            self.delivered.clone(),
        );
        registry.register(
            "webhook_events_retried",
            "Events of each webhook whose POST failed and that are sent again",
            self.retried.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Events each webhook dropped: older than max_age, or past max_queued",
            self.dropped.clone(),
        );
    }
}

/// One webhook at run time.
#[derive(Debug)]
struct Hook {
    config: WebhookConfig,
    labels: HookLabels,
    /// Events in the queue, as this process counts them.
    queued: AtomicUsize,
    /// Wakes the delivery task when events are queued.
    wake: Notify,
}

/// Every webhook of the server.
#[derive(Debug, Default)]
pub struct Hooks {
    hooks: Vec<Hook>,
    metrics: HookMetrics,
    /// Envelopes larger than this go without their body in `message.offline`.
    inline_max: usize,
    /// Presence changes on their way to the queues, in order (`user.*`).
    users: std::sync::OnceLock<tokio::sync::mpsc::Sender<(WebhookEvent, Vec<u8>)>>,
}

/// Presence changes waiting to be queued; past it they are dropped (counted).
const USER_EVENTS: usize = 10_000;

/// Who is online now, for `message.offline`.
pub type Online = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// What a round queued, per webhook (index), to count once it is durable.
pub type Queued = Vec<(usize, usize)>;

impl Hooks {
    pub fn new(configs: &[WebhookConfig], metrics: HookMetrics, inline_max: usize) -> Hooks {
        Hooks {
            hooks: configs
                .iter()
                .map(|c| Hook {
                    config: c.clone(),
                    labels: HookLabels {
                        webhook: c.url.clone(),
                    },
                    queued: AtomicUsize::new(0),
                    wake: Notify::new(),
                })
                .collect(),
            metrics,
            inline_max,
            users: std::sync::OnceLock::new(),
        }
    }

    /// Whether some webhook wants `user.online` or `user.offline`.
    pub fn wants_users(&self) -> bool {
        self.hooks.iter().any(|h| {
            h.config.wants(WebhookEvent::UserOnline) || h.config.wants(WebhookEvent::UserOffline)
        })
    }

    /// `uid`'s first device came online (`online`) or its last went: queued
    /// for the webhooks that want it, through the commit loop, in order.
    pub fn user_changed(&self, uid: &str, online: bool, devices: &[String]) {
        let Some(tx) = self.users.get() else { return };
        let (kind, which) = if online {
            ("user.online", WebhookEvent::UserOnline)
        } else {
            ("user.offline", WebhookEvent::UserOffline)
        };
        let event = serde_json::json!({
            "id": ulid::Ulid::new().to_string(),
            "type": kind,
            "ts": crate::commit::now_ms(),
            "user": uid,
            "devices": devices,
        });
        let Ok(json) = serde_json::to_vec(&event) else {
            return;
        };
        if tx.try_send((which, json)).is_err() {
            for h in &self.hooks {
                self.metrics.dropped.get_or_create(&h.labels).inc();
            }
            tracing::warn!(uid, "webhook presence events behind; one dropped");
        }
    }

    /// Queues presence events as they come, a commit round for what arrived
    /// meanwhile.
    fn spawn_users(self: &Arc<Self>, committer: crate::commit::WeakCommitter) {
        if !self.wants_users() {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(USER_EVENTS);
        if self.users.set(tx).is_err() {
            return;
        }
        let hooks = self.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let Some(committer) = committer.upgrade() else {
                    return;
                };
                let wanted: Vec<(usize, String, Vec<Vec<u8>>)> = hooks
                    .hooks
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let events = batch
                            .iter()
                            .filter(|(which, _)| h.config.wants(*which))
                            .map(|(_, e)| e.clone())
                            .collect();
                        (i, h.config.url.clone(), events)
                    })
                    .filter(|(_, _, e): &(usize, String, Vec<Vec<u8>>)| !e.is_empty())
                    .collect();
                let queued: Queued = wanted.iter().map(|(i, _, e)| (*i, e.len())).collect();
                let written = committer
                    .write(move |r| {
                        for (_, url, events) in &wanted {
                            r.enqueue_events(url, events)?;
                        }
                        Ok(((), None))
                    })
                    .await;
                match written {
                    Ok(()) => hooks.queued(&queued),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot queue presence events for webhooks")
                    }
                }
            }
        });
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Queues the events of newly stored messages in the same round; returns
    /// what it queued, for [`Hooks::queued`] after the commit.
    pub fn on_append(
        &self,
        round: &mut dyn Round,
        appended: &[Appended],
        online: &Online,
    ) -> Result<Queued, StoreError> {
        let mut queued = Vec::new();
        let now = crate::commit::now_ms();
        let fresh: Vec<&Appended> = appended.iter().filter(|a| !a.duplicate).collect();
        // Who of each message's recipients is offline: asked once, whichever
        // webhooks want it.
        let mut offline: Vec<Vec<String>> = Vec::new();
        if self
            .hooks
            .iter()
            .any(|h| h.config.wants(WebhookEvent::MessageOffline))
        {
            for a in &fresh {
                let mut users = recipients(round, &a.envelope)?;
                users.retain(|u| !online(u));
                offline.push(users);
            }
        }
        for (i, hook) in self.hooks.iter().enumerate() {
            let mut events = Vec::new();
            for (k, a) in fresh.iter().enumerate() {
                if hook.config.wants(WebhookEvent::MessageStored) {
                    events.push(event("message.stored", now, None, &a.json));
                }
                let users = offline.get(k).map_or(&[][..], Vec::as_slice);
                if hook.config.wants(WebhookEvent::MessageOffline) && !users.is_empty() {
                    let json = self.offline_json(a);
                    for u in users {
                        events.push(event("message.offline", now, Some(u), &json));
                    }
                }
            }
            if !events.is_empty() {
                round.enqueue_events(&hook.config.url, &events)?;
                queued.push((i, events.len()));
            }
        }
        Ok(queued)
    }

    /// The envelope as `message.offline` carries it: without its body when it
    /// is larger than `delivery.inline_max_bytes`.
    fn offline_json(&self, a: &Appended) -> Bytes {
        if a.json.len() <= self.inline_max {
            return a.json.clone();
        }
        let mut bare = a.envelope.clone();
        bare.body = serde_json::Value::Null;
        serde_json::to_vec(&bare).map_or_else(|_| a.json.clone(), Bytes::from)
    }

    /// Counts what a durable round queued and wakes the delivery tasks.
    pub fn queued(&self, queued: &Queued) {
        for (i, n) in queued {
            if let Some(h) = self.hooks.get(*i) {
                h.queued.fetch_add(*n, Ordering::Relaxed);
                self.metrics
                    .queued
                    .get_or_create(&h.labels)
                    .inc_by(*n as i64);
                h.wake.notify_one();
            }
        }
    }

    /// Starts one delivery task per webhook.
    pub fn spawn(self: &Arc<Self>, store: Arc<dyn Store>, committer: crate::commit::WeakCommitter) {
        self.spawn_users(committer.clone());
        let client = match reqwest::Client::builder().timeout(ANSWER_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the webhooks' HTTP client");
                return;
            }
        };
        for i in 0..self.hooks.len() {
            let (hooks, store, committer, client) = (
                self.clone(),
                store.clone(),
                committer.clone(),
                client.clone(),
            );
            let span = tracing::info_span!("webhook", url = %hooks.hooks[i].config.url);
            tokio::spawn(
                async move { hooks.deliver(i, store, committer, client).await }.instrument(span),
            );
        }
    }

    /// The delivery loop of webhook `i`.
    async fn deliver(
        self: Arc<Self>,
        i: usize,
        store: Arc<dyn Store>,
        committer: crate::commit::WeakCommitter,
        client: reqwest::Client,
    ) {
        let Some(hook) = self.hooks.get(i) else {
            return;
        };
        let url = hook.config.url.clone();
        // What the store holds from before this start.
        let reader = store.clone();
        let u = url.clone();
        if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || reader.count_events(&u)).await {
            hook.queued.store(n, Ordering::Relaxed);
            self.metrics
                .queued
                .get_or_create(&hook.labels)
                .set(n as i64);
        }
        let mut backoff = FIRST_BACKOFF;
        let mut lease: Option<Box<dyn crate::store::Lease>> = None;
        let job = format!("webhook {url}");
        loop {
            // One process of those sharing the store sends a queue.
            if !lease.as_ref().is_some_and(|l| l.held()) {
                let (s, j) = (store.clone(), job.clone());
                lease = match tokio::task::spawn_blocking(move || s.lead(&j)).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %url, "cannot claim the webhook");
                        None
                    }
                    Err(_) => return,
                };
                if lease.is_none() {
                    tokio::time::sleep(LEAD_RETRY).await;
                    continue;
                }
            }
            let Some(committer) = committer.upgrade() else {
                return;
            };
            let reader = store.clone();
            let u = url.clone();
            let batch =
                match tokio::task::spawn_blocking(move || reader.queued_events(&u, BATCH)).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, %url, "cannot read the webhook's queue");
                        drop(committer);
                        tokio::time::sleep(FIRST_BACKOFF).await;
                        continue;
                    }
                    Err(_) => return,
                };
            if batch.is_empty() {
                drop(committer);
                // Woken by new events; a periodic look covers other processes'.
                let _ = tokio::time::timeout(Duration::from_secs(1), hook.wake.notified()).await;
                continue;
            }
            // Too old, or past the bound: dropped, counted.
            let now = crate::commit::now_ms();
            let max_age = u64::try_from(hook.config.max_age.get().as_millis()).unwrap_or(u64::MAX);
            let over = hook
                .queued
                .load(Ordering::Relaxed)
                .saturating_sub(hook.config.max_queued);
            let (stale, fresh): (Vec<_>, Vec<_>) =
                batch.into_iter().enumerate().partition(|(k, (_, e))| {
                    *k < over || event_ts(e).is_some_and(|ts| now.saturating_sub(ts) > max_age)
                });
            if !stale.is_empty() {
                let ids: Vec<u64> = stale.iter().map(|(_, (id, _))| *id).collect();
                let n = ids.len();
                let u = url.clone();
                if committer
                    .write(move |r| Ok((r.drop_events(&u, &ids)?, None)))
                    .await
                    .is_ok()
                {
                    self.forget(hook, n);
                    self.metrics
                        .dropped
                        .get_or_create(&hook.labels)
                        .inc_by(n as u64);
                    tracing::warn!(events = n, %url, "webhook events dropped (too old, or over max_queued)");
                }
                continue;
            }
            let ids: Vec<u64> = fresh.iter().map(|(_, (id, _))| *id).collect();
            let body = batch_body(fresh.iter().map(|(_, (_, e))| e));
            match post(&client, &hook.config, body).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    let n = ids.len();
                    let u = url.clone();
                    match committer
                        .write(move |r| Ok((r.drop_events(&u, &ids)?, None)))
                        .await
                    {
                        Ok(()) => {
                            self.forget(hook, n);
                            self.metrics
                                .delivered
                                .get_or_create(&hook.labels)
                                .inc_by(n as u64);
                        }
                        // Delivered but still queued: sent again later (at least once).
                        Err(e) => {
                            tracing::warn!(error = %e, %url, "cannot forget delivered events")
                        }
                    }
                }
                Err(why) => {
                    self.metrics
                        .retried
                        .get_or_create(&hook.labels)
                        .inc_by(ids.len() as u64);
                    tracing::info!(%url, why, retry_in_ms = backoff.as_millis() as u64, "webhook POST failed");
                    drop(committer);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn forget(&self, hook: &Hook, n: usize) {
        let _ = hook
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
        self.metrics
            .queued
            .get_or_create(&hook.labels)
            .dec_by(n as i64);
    }
}

/// Who a stored message is for, besides its sender: a DM's peer, a notice's
/// user, each current member of a group.
fn recipients(round: &mut dyn Round, e: &Envelope) -> Result<Vec<String>, StoreError> {
    Ok(match e.conv.kind() {
        ConvKind::Group { gid } => round
            .members(gid)?
            .into_iter()
            .filter(|(u, m)| m.is_current() && *u != e.from)
            .map(|(u, _)| u)
            .collect(),
        _ => crate::delivery::recipients(&e.conv, &e.from)
            .into_iter()
            .filter(|u| *u != e.from)
            .map(str::to_owned)
            .collect(),
    })
}

/// One event's JSON: `{"id","type","ts","user"?,"message"}`.
fn event(kind: &str, ts: u64, user: Option<&str>, message: &[u8]) -> Vec<u8> {
    let id = ulid::Ulid::new().to_string();
    let mut out = format!(r#"{{"id":"{id}","type":"{kind}","ts":{ts}"#).into_bytes();
    if let Some(u) = user {
        out.extend_from_slice(br#","user":"#);
        out.extend_from_slice(serde_json::to_string(u).unwrap_or_default().as_bytes());
    }
    out.extend_from_slice(br#","message":"#);
    out.extend_from_slice(message);
    out.push(b'}');
    out
}

/// An event's `ts`.
fn event_ts(e: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: u64,
    }
    serde_json::from_slice::<Ts>(e).ok().map(|t| t.ts)
}

/// `{"events":[...]}` of stored event JSONs.
fn batch_body<'a>(events: impl Iterator<Item = &'a Bytes>) -> Vec<u8> {
    let mut body = br#"{"events":["#.to_vec();
    for (k, e) in events.enumerate() {
        if k > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    body
}

/// `sha256=<hex>` of `"{ts}.{body}"` under `secret`.
pub fn signature(secret: &str, ts: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// POSTs one batch; `Err` says why it did not take.
async fn post(client: &reqwest::Client, hook: &WebhookConfig, body: Vec<u8>) -> Result<(), String> {
    let ts = crate::commit::now_ms() / 1000;
    let sig = signature(&hook.secret, ts, &body);
    let answer = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-imqtt-timestamp", ts.to_string())
        .header("x-imqtt-signature", sig)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", answer.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let sig = signature("Jefe", 0, b"what do ya want for nothing?");
        // `printf '0.what do ya want for nothing?' | openssl dgst -sha256 -hmac Jefe`
        assert_eq!(
            sig,
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(sig, signature("Jefe", 1, b"what do ya want for nothing?"));
        assert_ne!(sig, signature("jefe", 0, b"what do ya want for nothing?"));
    }

    #[test]
    fn an_event_is_json_with_its_message_inside() {
        let e = event("message.offline", 7, Some("bo\"b"), br#"{"seq":1}"#);
        let v: serde_json::Value = serde_json::from_slice(&e).expect("json");
        assert_eq!(v["type"], "message.offline");
        assert_eq!(v["user"], "bo\"b");
        assert_eq!(v["ts"], 7);
        assert_eq!(v["message"]["seq"], 1);
        assert_eq!(v["id"].as_str().map(str::len), Some(26));
        let body = batch_body([Bytes::from(e.clone()), Bytes::from(e)].iter());
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["events"].as_array().map(Vec::len), Some(2));
    }
}
