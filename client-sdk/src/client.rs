//! [`Client`]: one user's device on an imqtt server. It holds an MQTT connection
//! (re-established on its own, on the next of the server's addresses when the one
//! in use fails), subscribes the user's inbox, events and groups, and
//! turns pushes, hints and HTTP pages into [`Events`] in which each conversation's
//! messages come exactly once and in seq order; it acks what the application took,
//! and sends over HTTP with idempotent retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::AsyncClient;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::acks::Acks;
use crate::servers::MqttServers;
use crate::session::{self, Dialer, Input};
use crate::wire::{self, BatchResponse, Envelope, Event, LiveMessage, Presence, SendResult};
use crate::{Api, CursorStore, Error, MemoryCursors, RetryPolicy, Sent, TokenRefresh};
use crate::{Credentials, wire::SendRequest};

/// Events waiting for the application; when it is full the client stops
/// reading from the server (TCP backpressure) until the application catches up.
const EVENTS_CAPACITY: usize = 1024;
/// How long [`Client::close`] waits for the DISCONNECT to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Everything [`Client::connect`] needs.
///
/// A server may be given several addresses (the nodes of a cluster, a standby),
/// for MQTT and for HTTP each: [`ClientConfig::with_servers`], or commas in the
/// strings given to [`ClientConfig::new`] (`"mqtt://a:1883,mqtt://b:1883"`).
/// The MQTT connection goes to the first address; when a connection cannot be
/// made or breaks, the next one is tried at once, round robin, and the
/// reconnection backoff comes after a whole round has failed. Each connection
/// subscribes afresh and catches up (heads, gaps, duplicates dropped by seq),
/// so a move to another address loses and repeats nothing. HTTP requests move
/// on likewise ([`Api::with_servers`] says when).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The MQTT listeners, in the order they are tried: each
    /// `mqtt://host:port` (or `tcp://`; port 1883 when absent), and an item may
    /// hold several separated by commas. At least one.
    pub mqtt_urls: Vec<String>,
    /// The HTTP API's roots, in the order they are tried: each
    /// `http://host:port`, and an item may hold several separated by commas.
    /// At least one.
    pub http_urls: Vec<String>,
    /// The user id.
    pub user: String,
    /// This device's name: the MQTT client id, and the device in presence. A
    /// second connection with the same device name replaces the first.
    pub device: String,
    /// A token, or a password of the server's built-in accounts.
    pub credentials: Credentials,
    /// Asked for a new token when the server refuses the current one.
    pub token_refresh: Option<TokenRefresh>,
    /// Where the highest seq taken per conversation is kept (in memory unless
    /// set; [`crate::FileCursors`] resumes a restarted app exactly).
    pub cursors: Arc<dyn CursorStore>,
    /// Ack each message once the application has taken it (batched). Off, the
    /// application acks with [`Api::ack`] itself.
    pub auto_ack: bool,
    /// MQTT keepalive.
    pub keep_alive: Duration,
    /// Retries of sends and of the client's own requests.
    pub retry: RetryPolicy,
    /// How long [`Client::connect`] waits for the first connection.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A config with the defaults: memory cursors, auto-ack, 30 s keepalive.
    /// `mqtt_url` and `http_url` are one address each, or several separated
    /// by commas.
    pub fn new(
        mqtt_url: impl Into<String>,
        http_url: impl Into<String>,
        user: impl Into<String>,
        device: impl Into<String>,
        credentials: Credentials,
    ) -> ClientConfig {
        ClientConfig::with_servers([mqtt_url], [http_url], user, device, credentials)
    }

    /// A config with the defaults, for a server with several MQTT and HTTP
    /// addresses, tried in the order given (see [`ClientConfig`]).
    pub fn with_servers<M, H>(
        mqtt_urls: impl IntoIterator<Item = M>,
        http_urls: impl IntoIterator<Item = H>,
        user: impl Into<String>,
        device: impl Into<String>,
        credentials: Credentials,
    ) -> ClientConfig
    where
        M: Into<String>,
        H: Into<String>,
    {
        ClientConfig {
            mqtt_urls: mqtt_urls.into_iter().map(Into::into).collect(),
            http_urls: http_urls.into_iter().map(Into::into).collect(),
            user: user.into(),
            device: device.into(),
            credentials,
            token_refresh: None,
            cursors: Arc::new(MemoryCursors::default()),
            auto_ack: true,
            keep_alive: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the application hears from the client.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The MQTT connection is up (again), to whichever of the server's MQTT
    /// addresses answered; a catch-up follows on its own.
    Connected,
    /// The MQTT connection broke (or a reconnection failed on every address);
    /// the client reconnects by itself, trying the next address first.
    Disconnected {
        /// Why, as the MQTT library put it.
        reason: String,
    },
    /// A stored message: per conversation exactly once, in seq order, this
    /// device's own sends included. A conversation the device has no cursor for
    /// starts after the user's cursor on the server (what any of its devices
    /// acked).
    Message(Envelope),
    /// An edit of message `ref_seq` of its conversation, which this device
    /// has (or will have first, in seq order): replace that message's body
    /// with this one's `body`. Like a message, once and in seq order.
    Edit(Envelope),
    /// A recall of message `ref_seq` of its conversation: show it as recalled,
    /// without its body. Like a message, once and in seq order.
    Recall(Envelope),
    /// A qos 0 message (typing, live signals): at most once, no seq.
    Live(LiveMessage),
    /// A presence change of a user this device watches.
    Presence(Presence),
    /// A change of a group the user is in (member added or removed, deleted).
    Group(GroupEvent),
    /// The result of one of the user's sends over the MQTT outbox (`sent` or
    /// `error`), from whichever of its devices sent it.
    Outbox(Event),
    /// The other party of a direct conversation has read it up to `seq` (at
    /// `ts`, Unix milliseconds): for the ticks beside one's sent messages. At
    /// most one a second per conversation; the latest seq.
    Read {
        /// The direct conversation.
        conv: wire::ConvId,
        /// Who read (the other party).
        user: String,
        /// Read up to and including this seq.
        seq: u64,
        /// When.
        ts: u64,
    },
    /// The server said it may have missed pushes to this device (its node was
    /// cut off from the rest of the cluster and is back; the connection itself
    /// stayed up). The client catches up by itself, as after a reconnection:
    /// it reads the heads and the groups again and fetches what is missing,
    /// which then comes as [`ClientEvent::Message`]s, once and in order like
    /// any other. Nothing to do for the messages; an application showing other
    /// server state (group lists, presence) may want to read it again, since
    /// membership events and presence changes sent meanwhile may be lost too.
    Resync,
}

/// A group membership change, as announced on `users/{uid}/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// `user` joined `group`, added by `by`.
    MemberAdded {
        /// The group.
        group: String,
        /// The member.
        user: String,
        /// Who added them.
        by: String,
    },
    /// `user` left or was removed from `group`.
    MemberRemoved {
        /// The group.
        group: String,
        /// The member.
        user: String,
        /// Who removed them (the member itself when leaving).
        by: String,
    },
    /// `group` was deleted.
    GroupDeleted {
        /// The group.
        group: String,
        /// Who deleted it.
        by: String,
    },
}

/// The stream of [`ClientEvent`]s of one [`Client`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
    cursors: Arc<dyn CursorStore>,
    acks: Option<Arc<Acks>>,
}

impl Events {
    /// The next event; `None` once the client is closed. Taking a message
    /// records it in the cursor store and, with auto-ack, queues its ack.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        let event = self.rx.recv().await?;
        if let ClientEvent::Message(m) | ClientEvent::Edit(m) | ClientEvent::Recall(m) = &event {
            if let Err(e) = self.cursors.save(&m.conv, m.seq) {
                tracing::error!(error = %e, conv = %m.conv, seq = m.seq, "cannot save cursor");
            }
            if let Some(acks) = &self.acks {
                acks.record(&m.conv, m.seq);
            }
        }
        Some(event)
    }
}

/// A connected device. Cheap to clone; the connection closes when
/// [`Client::close`] is called or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    api: Api,
    input: mpsc::Sender<Input>,
    mqtt: AsyncClient,
    acks: Option<Arc<Acks>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Client {
    /// Connects `config.device` of `config.user`: signs in when the credentials
    /// are a password, opens the MQTT connection and waits (up to
    /// `connect_timeout`) for the server to accept it, trying its addresses in
    /// turn; the error of each, when all failed. From then on the client
    /// reconnects by itself, and each (re)connection is followed by a catch-up.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), Error> {
        wire::check_id(&config.device).map_err(|e| Error::Config(format!("device: {e}")))?;
        let servers = MqttServers::parse(&config.mqtt_urls)?;
        let api = Api::with_servers(
            &config.http_urls,
            &config.user,
            config.credentials.clone(),
            config.token_refresh.clone(),
            config.retry,
        )?;
        let token = api.token().await?;
        let cursors = config.cursors.load()?;

        let dialer = Dialer::new(servers, config.device.clone(), config.keep_alive);
        let (mqtt, eventloop) = AsyncClient::new(dialer.options(&config.user, token), 256);

        let (shutdown, _) = watch::channel(false);
        let (input_tx, input_rx) = mpsc::channel(session::INPUT_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
        let (first_tx, first_rx) = oneshot::channel();
        let acks = config.auto_ack.then(|| Arc::new(Acks::default()));

        let driver = Arc::new(tokio::sync::Mutex::new(session::Driver::new(
            config.user.clone(),
            api.clone(),
            mqtt.clone(),
            crate::order::Order::new(cursors),
            events_tx,
            input_tx.clone(),
        )));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(session::mqtt_loop(
            eventloop,
            dialer,
            api.clone(),
            driver.clone(),
            shutdown.subscribe(),
            first_tx,
        )));
        tasks.push(tokio::spawn(session::Driver::run(
            driver,
            input_rx,
            shutdown.subscribe(),
        )));
        if let Some(acks) = &acks {
            let (acks, api, stop) = (acks.clone(), api.clone(), shutdown.subscribe());
            tasks.push(tokio::spawn(async move { acks.run(api, stop).await }));
        }
        let client = Client {
            inner: Arc::new(Inner {
                api,
                input: input_tx,
                mqtt,
                acks: acks.clone(),
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        };
        match tokio::time::timeout(config.connect_timeout, first_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                return Err(Error::Mqtt(format!(
                    "no connection within {:?}",
                    config.connect_timeout
                )));
            }
        }
        let events = Events {
            rx: events_rx,
            cursors: config.cursors,
            acks,
        };
        Ok((client, events))
    }

    /// The HTTP API as this user (history, groups, contacts, presence, ...).
    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    /// A direct message to `to`: stored, retried idempotently until the server
    /// has it (see [`Api::send`]).
    pub async fn send(&self, to: &str, body: Value) -> Result<SendResult, Error> {
        let r = self.inner.api.send_to(to, body).await?;
        self.own_sent(&r).await;
        Ok(r)
    }

    /// Tells the driver, so that the application's stream carries this
    /// device's own messages too (see `Order::own_sent`).
    async fn own_sent(&self, r: &SendResult) {
        let _ = self
            .inner
            .input
            .send(Input::OwnSent(r.conv.clone(), r.seq))
            .await;
    }

    /// A message to group `gid`, stored, retried idempotently.
    pub async fn send_group(&self, gid: &str, body: Value) -> Result<SendResult, Error> {
        let r = self.inner.api.send_group(gid, body).await?;
        self.own_sent(&r).await;
        Ok(r)
    }

    /// Edits this user's message `seq` of `conv` (see [`Api::edit`]); the edit
    /// comes back on the stream as a [`ClientEvent::Edit`] too.
    pub async fn edit(
        &self,
        conv: &wire::ConvId,
        seq: u64,
        body: Value,
    ) -> Result<SendResult, Error> {
        let r = self.inner.api.edit(conv, seq, body).await?;
        self.own_sent(&r).await;
        Ok(r)
    }

    /// Recalls message `seq` of `conv` (see [`Api::recall`]); the recall comes
    /// back on the stream as a [`ClientEvent::Recall`] too.
    pub async fn recall(&self, conv: &wire::ConvId, seq: u64) -> Result<SendResult, Error> {
        let r = self.inner.api.recall(conv, seq).await?;
        self.own_sent(&r).await;
        Ok(r)
    }

    /// Any send (qos 0 for live signals, an own `client_msg_id`, ...), retried
    /// idempotently.
    pub async fn send_request(&self, req: SendRequest) -> Result<Sent, Error> {
        let sent = self.inner.api.send(req).await?;
        if let Sent::Stored(r) = &sent {
            self.own_sent(r).await;
        }
        Ok(sent)
    }

    /// A notice to each of `to` (service and admin tokens only).
    pub async fn notify(&self, to: &[&str], body: Value) -> Result<BatchResponse, Error> {
        self.inner.api.notify(to, body).await
    }

    /// Watches `uid`'s presence (its contacts and co-members may): its retained
    /// state comes at once as a [`ClientEvent::Presence`], then every change,
    /// across reconnects. [`Error::NotVisible`] when the server would refuse
    /// the subscription (asked over HTTP first: a refused MQTT subscription
    /// says nothing the client could tell the application).
    pub async fn watch_presence(&self, uid: &str) -> Result<(), Error> {
        wire::check_id(uid).map_err(|e| Error::Config(e.to_string()))?;
        let visible = self.inner.api.presence(&[uid]).await?;
        if !visible.presence.iter().any(|p| p.user == uid) {
            return Err(Error::NotVisible(uid.to_owned()));
        }
        self.inner
            .input
            .send(Input::Watch(uid.to_owned(), true))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Stops watching `uid`'s presence.
    pub async fn unwatch_presence(&self, uid: &str) -> Result<(), Error> {
        self.inner
            .input
            .send(Input::Watch(uid.to_owned(), false))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends the acks still waiting, disconnects (a DISCONNECT, so the server
    /// sees a normal close) and stops the client's tasks.
    pub async fn close(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tasks = tasks.into_iter();
        if let Some(mqtt_loop) = tasks.next() {
            // The loop ends once it has written the DISCONNECT; a connection
            // that is down has nothing to say goodbye on.
            if self.inner.mqtt.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(CLOSE_GRACE, mqtt_loop).await;
            }
        }
        let _ = self.inner.shutdown.send(true);
        for t in tasks {
            let _ = t.await;
        }
        if let Some(acks) = &self.inner.acks {
            acks.flush(&self.inner.api).await;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
