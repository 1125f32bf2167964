//! The client's two tasks. [`mqtt_loop`] polls the MQTT connection, reconnects
//! (to the next of the server's addresses, with backoff once each has failed; with
//! a new token when the old one is refused) and has the [`Driver`] react to what
//! arrives; the driver's own task reacts to the answers
//! of its HTTP requests and to the client's calls. The driver owns everything
//! else: subscriptions (inbox, events, the
//! user's groups, watched presences, made again on every connection), the catch-up
//! after each subscription is in place, the [`Order`] of each conversation and the
//! fetches it asks for, and the events handed to the application.
//!
//! Why the catch-up comes after the SUBACK: a message committed before the
//! subscription existed was never pushed to this connection, and one committed
//! after it will be; `GET /v1/conversations` read after the SUBACK sees the heads
//! of all of the first kind, so together nothing falls between.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, Publish};
use rumqttc::{AsyncClient, ConnectionError, EventLoop, MqttOptions, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::{ClientEvent, GroupEvent};
use crate::order::{Fetch, Order};
use crate::servers::MqttServers;
use crate::wire::{
    self, ConversationList, Envelope, Event, GroupList, LiveMessage, MessagesPage, MessagesQuery,
    Presence, Topic,
};
use crate::{Api, Error};

/// Inputs waiting for the driver; when full the MQTT loop waits (TCP backpressure).
pub(crate) const INPUT_CAPACITY: usize = 1024;
/// Pages fetched at once.
const MAX_FETCHES: usize = 4;
/// Messages per page (the server allows up to 1000).
const PAGE: u32 = 500;
/// The pause before a failed request is made again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Reconnect backoff.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the driver reacts to.
#[derive(Debug)]
pub(crate) enum Input {
    Connected,
    Disconnected(String),
    SubAck,
    Publish(Publish),
    Page(Fetch, Result<MessagesPage, Error>),
    Heads(Result<ConversationList, Error>),
    /// The user's groups, asked for on connection `generation`.
    Groups(u64, Result<GroupList, Error>),
    RetryHeads,
    RetryGroups(u64),
    RetryFetch(wire::ConvId),
    /// Start (true) or stop watching a user's presence.
    Watch(String, bool),
    /// This device's send was stored at this seq.
    OwnSent(wire::ConvId, u64),
}

/// The MQTT servers, and the options of a connection to the one in use. rumqttc's
/// options name one broker, so moving to another is new options for the same
/// event loop (whose request queue the driver's [`AsyncClient`] feeds).
#[derive(Debug)]
pub(crate) struct Dialer {
    servers: MqttServers,
    device: String,
    keep_alive: Duration,
}

impl Dialer {
    pub(crate) fn new(servers: MqttServers, device: String, keep_alive: Duration) -> Dialer {
        Dialer {
            servers,
            device,
            keep_alive,
        }
    }

    /// The options of a connection to the server in use, as `user` with `token`.
    pub(crate) fn options(&self, user: &str, token: String) -> MqttOptions {
        let (host, port) = self.servers.current();
        let mut options = MqttOptions::new(self.device.clone(), host, port);
        options
            .set_credentials(user, token)
            .set_keep_alive(self.keep_alive)
            .set_clean_session(true)
            // An envelope can carry a 64 KiB body (limits.max_body_bytes), and
            // a big one comes as a hint anyway: 1 MiB covers every push.
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_request_channel_capacity(256);
        options
    }

    /// `host:port` of the server in use, for errors and logs.
    fn server(&self) -> String {
        let (host, port) = self.servers.current();
        format!("{host}:{port}")
    }
}

/// Polls the MQTT connection until `shutdown`. The first connection's outcome
/// goes to `first` (an error once every server has failed once); after that,
/// failures are reported and retried forever. A connection that cannot be made
/// or breaks moves to the next server at once; the backoff comes after a whole
/// round of failures, and after a refused token (asked of the same server again,
/// with a new one).
pub(crate) async fn mqtt_loop(
    mut eventloop: EventLoop,
    mut dialer: Dialer,
    api: Api,
    driver: SharedDriver,
    mut shutdown: watch::Receiver<bool>,
    first: oneshot::Sender<Result<(), Error>>,
) {
    let mut first = Some(first);
    let mut connected = false;
    let mut backoff = MIN_BACKOFF;
    // Servers failed since the last CONNACK, and (before the first) what each said.
    let mut failures = 0usize;
    let mut first_errors = Vec::new();
    loop {
        let polled = tokio::select! {
            p = eventloop.poll() => p,
            _ = shutdown.changed() => return,
        };
        let forward = match polled {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                backoff = MIN_BACKOFF;
                failures = 0;
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                Input::Connected
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => Input::Publish(p),
            Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => Input::SubAck,
            // Client::close: the DISCONNECT is written, the session ends cleanly.
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                let refused = matches!(
                    e,
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
                    )
                );
                let server = dialer.server();
                if std::mem::take(&mut connected)
                    && !driver
                        .lock()
                        .await
                        .react(Input::Disconnected(e.to_string()), &mut shutdown)
                        .await
                {
                    return;
                }
                tracing::debug!(error = %e, server, ?backoff, "mqtt connection failed");
                if !refused {
                    // The server is away (a refused token is no reason to
                    // think so): the next one.
                    failures += 1;
                    dialer.servers.advance();
                    if first.is_some() {
                        first_errors.push(format!("{server}: {e}"));
                    }
                    if failures >= dialer.servers.len()
                        && let Some(f) = first.take()
                    {
                        let _ = f.send(Err(Error::Mqtt(first_errors.join("; "))));
                        return;
                    }
                }
                let stale = eventloop
                    .mqtt_options
                    .credentials()
                    .map(|login| login.password);
                let token = if refused {
                    // Refused credentials get one new token per refusal, the
                    // first connection's included (an app may start with a
                    // stale one).
                    api.refresh_token(stale.as_deref()).await
                } else {
                    // The HTTP side may have refreshed it meanwhile.
                    api.token().await
                };
                let token = match token {
                    Ok(t) => t,
                    Err(refresh) => {
                        if let Some(f) = first.take() {
                            // The broker's refusal says why (the token was
                            // refused); the refresh's error why it stays so.
                            let _ = f.send(Err(match refresh {
                                Error::Unauthorized(why) => {
                                    Error::Unauthorized(format!("{e}; {why}"))
                                }
                                other => other,
                            }));
                            return;
                        }
                        let e = refresh;
                        tracing::warn!(error = %e, "no token for the reconnection");
                        stale.unwrap_or_default()
                    }
                };
                eventloop.mqtt_options = dialer.options(api.user(), token);
                // Each connection subscribes afresh (clean session): requests
                // left from the broken one would only duplicate that.
                eventloop.pending.clear();
                if refused || failures.is_multiple_of(dialer.servers.len()) {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
        };
        // Handled here rather than passed to the driver's task: a push reaches
        // the application through one task less (the library's cost over a
        // plain subscriber is mostly waiting for the CPU between tasks).
        if !driver.lock().await.react(forward, &mut shutdown).await {
            return;
        }
    }
}

/// The driver, shared by the MQTT loop (what arrives over MQTT) and the driver's
/// own task (answers of HTTP requests, the client's calls). One lock, held while
/// the events an input produced are handed to the application, so that they
/// reach it in the order the driver made them.
pub(crate) type SharedDriver = Arc<tokio::sync::Mutex<Driver>>;

/// The client's state and its reactions; see the module's comment.
#[derive(Debug)]
pub(crate) struct Driver {
    me: String,
    api: Api,
    mqtt: AsyncClient,
    order: Order,
    events: mpsc::Sender<ClientEvent>,
    /// For the tasks the driver starts, which answer through its inputs.
    input: mpsc::Sender<Input>,
    groups: BTreeSet<String>,
    watched: BTreeSet<String>,
    connected: bool,
    generation: u64,
    heads_in_flight: bool,
    heads_again: bool,
}

impl Driver {
    pub(crate) fn new(
        me: String,
        api: Api,
        mqtt: AsyncClient,
        order: Order,
        events: mpsc::Sender<ClientEvent>,
        input: mpsc::Sender<Input>,
    ) -> Driver {
        Driver {
            me,
            api,
            mqtt,
            order,
            events,
            input,
            groups: BTreeSet::new(),
            watched: BTreeSet::new(),
            connected: false,
            generation: 0,
            heads_in_flight: false,
            heads_again: false,
        }
    }

    /// The driver's task: reacts to the inputs of HTTP requests and of the
    /// client's calls until `shutdown`.
    pub(crate) async fn run(
        driver: SharedDriver,
        mut inputs: mpsc::Receiver<Input>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let input = tokio::select! {
                i = inputs.recv() => i,
                _ = shutdown.changed() => return,
            };
            let Some(input) = input else { return };
            if !driver.lock().await.react(input, &mut shutdown).await {
                return;
            }
        }
    }

    /// Handles `input`, hands what it produced to the application, and starts
    /// the requests the new state asks for. False when the client is shutting
    /// down or the application has gone.
    pub(crate) async fn react(
        &mut self,
        input: Input,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut ready = Vec::new();
        let mut out = Vec::new();
        self.handle(input, &mut ready, &mut out);
        out.extend(ready.into_iter().map(|e| match e.kind {
            Some(wire::Kind::Edit) => ClientEvent::Edit(e),
            Some(wire::Kind::Recall) => ClientEvent::Recall(e),
            None => ClientEvent::Message(e),
        }));
        for event in out {
            tokio::select! {
                sent = self.events.send(event) => if sent.is_err() { return false },
                _ = shutdown.changed() => return false,
            }
        }
        if self.order.needs_heads() {
            self.ask_heads();
        }
        for fetch in self.order.next_fetches(MAX_FETCHES) {
            self.start_fetch(fetch);
        }
        true
    }

    /// Reacts to `input`: messages now in order go to `ready`, other events
    /// (which come before them) to `out`.
    fn handle(&mut self, input: Input, ready: &mut Vec<Envelope>, out: &mut Vec<ClientEvent>) {
        match input {
            Input::Connected => {
                self.connected = true;
                self.generation += 1;
                out.push(ClientEvent::Connected);
                let mut topics = vec![
                    topic(wire::topic::inbox(&self.me)),
                    topic(wire::topic::events(&self.me)),
                ];
                topics.extend(self.watched.iter().map(|u| topic(wire::topic::presence(u))));
                self.subscribe(topics.into_iter().flatten().collect());
                self.ask_groups(self.generation);
            }
            Input::Disconnected(reason) => {
                self.connected = false;
                out.push(ClientEvent::Disconnected { reason });
            }
            Input::SubAck => self.ask_heads(),
            Input::Publish(p) => self.publish(p, ready, out),
            Input::Page(fetch, Ok(page)) => self.order.page(&fetch, page, ready),
            Input::Page(fetch, Err(e)) => {
                if matches!(e.status(), Some(403 | 404)) {
                    tracing::debug!(error = %e, conv = %fetch.conv, "conversation not readable");
                    self.order.give_up(&fetch);
                } else {
                    tracing::debug!(error = %e, conv = %fetch.conv, "fetch failed");
                    self.order.fetch_failed(&fetch);
                    self.later(Input::RetryFetch(fetch.conv));
                }
            }
            Input::RetryFetch(conv) => self.order.want(&conv),
            Input::Heads(result) => {
                self.heads_in_flight = false;
                match result {
                    Ok(list) => self.order.heads(&list.conversations, ready),
                    Err(e) => {
                        tracing::debug!(error = %e, "conversations failed");
                        self.later(Input::RetryHeads);
                        return;
                    }
                }
                if std::mem::take(&mut self.heads_again) {
                    self.ask_heads();
                }
            }
            Input::RetryHeads => self.ask_heads(),
            Input::Groups(generation, result) => {
                if generation != self.generation || !self.connected {
                    return;
                }
                match result {
                    Ok(list) => {
                        let fresh: BTreeSet<String> =
                            list.groups.into_iter().map(|g| g.id).collect();
                        let topics = fresh
                            .iter()
                            .filter_map(|g| topic(wire::topic::group(g)))
                            .collect();
                        self.groups = fresh;
                        self.subscribe(topics);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "groups failed");
                        self.later(Input::RetryGroups(generation));
                    }
                }
            }
            Input::RetryGroups(generation) => {
                if generation == self.generation && self.connected {
                    self.ask_groups(generation);
                }
            }
            Input::OwnSent(conv, seq) => self.order.own_sent(&conv, seq, ready),
            Input::Watch(uid, true) => {
                if self.watched.insert(uid.clone()) && self.connected {
                    self.subscribe(topic(wire::topic::presence(&uid)).into_iter().collect());
                }
            }
            Input::Watch(uid, false) => {
                if self.watched.remove(&uid) {
                    self.unsubscribe(topic(wire::topic::presence(&uid)));
                }
            }
        }
    }

    /// One push, by its topic.
    fn publish(&mut self, p: Publish, ready: &mut Vec<Envelope>, out: &mut Vec<ClientEvent>) {
        match Topic::parse(&p.topic) {
            Some(Topic::Inbox(_) | Topic::Group(_)) => match parse_message(&p.payload) {
                Some(Pushed::Stored(env)) => self.order.push(env, ready),
                Some(Pushed::Live(m)) => out.push(ClientEvent::Live(m)),
                None => tracing::warn!(topic = p.topic, "unreadable message push, ignored"),
            },
            Some(Topic::Events(_)) => match serde_json::from_slice::<Event>(&p.payload) {
                Ok(e) => self.event(e, out),
                Err(e) => tracing::debug!(error = %e, "unknown event, ignored"),
            },
            Some(Topic::Presence(_)) => {
                // An empty retained payload clears the topic: nothing to tell.
                if p.payload.is_empty() {
                    return;
                }
                match serde_json::from_slice::<Presence>(&p.payload) {
                    Ok(pr) => out.push(ClientEvent::Presence(pr)),
                    Err(e) => tracing::debug!(error = %e, "unreadable presence, ignored"),
                }
            }
            Some(Topic::Outbox(_)) | None => {
                tracing::debug!(topic = p.topic, "push on an unexpected topic, ignored");
            }
        }
    }

    fn event(&mut self, e: Event, out: &mut Vec<ClientEvent>) {
        match e {
            Event::Sync { conv, seq } => self.order.hint(&conv, seq),
            Event::Sent { .. } | Event::Error { .. } => out.push(ClientEvent::Outbox(e)),
            Event::MemberAdded { group, user, by } => {
                if user == self.me && self.groups.insert(group.clone()) {
                    if self.connected {
                        self.subscribe(topic(wire::topic::group(&group)).into_iter().collect());
                    }
                    // The join's cursor, while the group is still listed: a
                    // message sent before the subscription is in place, by a
                    // member who leaves soon after, is then still fetched.
                    self.ask_heads();
                }
                out.push(ClientEvent::Group(GroupEvent::MemberAdded {
                    group,
                    user,
                    by,
                }));
            }
            Event::MemberRemoved { group, user, by } => {
                if user == self.me && self.groups.remove(&group) {
                    self.unsubscribe(topic(wire::topic::group(&group)));
                    // What was sent up to the removal stays readable: fetch
                    // whatever of it has not come yet (an empty page ends it).
                    if let Ok(conv) = wire::ConvId::group(&group) {
                        self.order.drain_known(&conv);
                    }
                }
                out.push(ClientEvent::Group(GroupEvent::MemberRemoved {
                    group,
                    user,
                    by,
                }));
            }
            Event::GroupDeleted { group, by } => {
                if self.groups.remove(&group) {
                    self.unsubscribe(topic(wire::topic::group(&group)));
                }
                out.push(ClientEvent::Group(GroupEvent::GroupDeleted { group, by }));
            }
            Event::Read {
                conv,
                user,
                seq,
                ts,
            } => out.push(ClientEvent::Read {
                conv,
                user,
                seq,
                ts,
            }),
            Event::Resync => {
                // The connection stayed up, but the server's node may have lost
                // pushes and membership events while cut off from its cluster:
                // the catch-up of a new connection, on this one. The heads show
                // every stored message; the group list, groups joined meanwhile
                // (subscribed on its answer, whose SUBACK reads the heads again,
                // so nothing sent before the subscription falls between).
                self.ask_groups(self.generation);
                self.ask_heads();
                out.push(ClientEvent::Resync);
            }
        }
    }

    /// Subscribes `topics` at QoS 1 in one SUBSCRIBE. Done from a task: the
    /// request queue is drained by the MQTT loop, which may itself be waiting
    /// for the driver.
    fn subscribe(&self, topics: Vec<String>) {
        if topics.is_empty() {
            return;
        }
        let mqtt = self.mqtt.clone();
        let filters: Vec<SubscribeFilter> = topics
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
            .collect();
        tokio::spawn(async move {
            if let Err(e) = mqtt.subscribe_many(filters).await {
                tracing::debug!(error = %e, "subscribe not sent");
            }
        });
    }

    fn unsubscribe(&self, topic: Option<String>) {
        let Some(topic) = topic else { return };
        let mqtt = self.mqtt.clone();
        tokio::spawn(async move {
            if let Err(e) = mqtt.unsubscribe(topic).await {
                tracing::debug!(error = %e, "unsubscribe not sent");
            }
        });
    }

    /// Asks for the heads, or for another round once the one under way answers.
    fn ask_heads(&mut self) {
        if self.heads_in_flight {
            self.heads_again = true;
            return;
        }
        self.heads_in_flight = true;
        let (api, input) = (self.api.clone(), self.input.clone());
        tokio::spawn(async move {
            let _ = input.send(Input::Heads(api.conversations().await)).await;
        });
    }

    fn ask_groups(&self, generation: u64) {
        let (api, input) = (self.api.clone(), self.input.clone());
        tokio::spawn(async move {
            let _ = input
                .send(Input::Groups(generation, api.groups().await))
                .await;
        });
    }

    fn start_fetch(&self, fetch: Fetch) {
        let (api, input) = (self.api.clone(), self.input.clone());
        tokio::spawn(async move {
            let q = MessagesQuery {
                after: Some(fetch.after),
                before: None,
                limit: Some(PAGE),
            };
            let page = api.messages(&fetch.conv, q).await;
            let _ = input.send(Input::Page(fetch, page)).await;
        });
    }

    /// Feeds `input` back after [`RETRY_PAUSE`].
    fn later(&self, input: Input) {
        let tx = self.input.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_PAUSE).await;
            let _ = tx.send(input).await;
        });
    }
}

/// What a push on an inbox or a group topic carries.
enum Pushed {
    Stored(Envelope),
    Live(LiveMessage),
}

/// A stored envelope has a seq; a qos 0 message has none. The common case, a
/// well-formed envelope, costs one parse.
fn parse_message(payload: &[u8]) -> Option<Pushed> {
    if let Ok(env) = serde_json::from_slice::<Envelope>(payload) {
        return Some(Pushed::Stored(env));
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        seq: Option<serde::de::IgnoredAny>,
    }
    // A payload with a seq that is not an envelope is garbage, not a live message.
    match serde_json::from_slice::<Probe>(payload) {
        Ok(Probe { seq: None }) => serde_json::from_slice(payload).ok().map(Pushed::Live),
        _ => None,
    }
}

fn topic(t: Result<String, wire::InvalidId>) -> Option<String> {
    t.map_err(|e| tracing::warn!(error = %e, "no topic for this id"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_parse_by_shape_and_garbage_is_refused() {
        let stored =
            br#"{"id":"1","conv":"dm:a:b","seq":3,"from":"a","to":"b","ts":1,"qos":1,"body":{}}"#;
        assert!(matches!(parse_message(stored), Some(Pushed::Stored(e)) if e.seq == 3));
        let live =
            br#"{"id":"1","conv":"dm:a:b","from":"a","to":"b","ts":1,"qos":0,"body":"typing"}"#;
        assert!(matches!(parse_message(live), Some(Pushed::Live(m)) if m.body == "typing"));
        for bad in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"seq":"x"}"#,
            br#"{"id":"1","conv":"nope","seq":3,"from":"a","to":"b","ts":1,"qos":1,"body":{}}"#,
            b"\xff\xfe",
        ] {
            assert!(parse_message(bad).is_none());
        }
    }
}
