//! The latency scenario's recipient, three ways, so that one run can say what each
//! layer costs: `bench`, the bench's own MQTT reader (a bare socket and the v4
//! codec); `rumqttc`, a plain rumqttc subscriber, what an application without the
//! client library would run; `sdk`, the client library (`imqtt_client::Client`:
//! its own subscriptions, dedupe and ordering per conversation, batched acks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use imqtt_client::{Client, ClientConfig, ClientEvent, Credentials, Events};
use rumqttc::{AsyncClient, EventLoop, Incoming, MqttOptions, QoS};
use tokio::time::Instant;

use super::timed::{self, Tally};
use super::{BenchError, Connection, Target};

/// Which client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReceiverKind {
    /// The bench's own reader: a socket and the v4 codec.
    Bench,
    /// A rumqttc `AsyncClient` subscribed to the inbox at QoS 1.
    Rumqttc,
    /// The client library, as an application uses it.
    Sdk,
}

/// A connected, subscribed recipient.
pub(crate) enum Receiver {
    Bench(Connection),
    Rumqttc {
        /// Kept so that the event loop's request channel stays open.
        _client: AsyncClient,
        events: Box<EventLoop>,
    },
    Sdk(Client, Events),
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Receiver::Bench(_) => "Receiver::Bench",
            Receiver::Rumqttc { .. } => "Receiver::Rumqttc",
            Receiver::Sdk(..) => "Receiver::Sdk",
        })
    }
}

impl Receiver {
    /// Connects `user` as `kind` and subscribes it to `inbox` (the client library
    /// subscribes by itself); `http_base` is the HTTP API, for the library.
    pub(crate) async fn connect(
        kind: ReceiverKind,
        target: &Target,
        http_base: &str,
        user: &str,
        inbox: &str,
        read_chunk: usize,
    ) -> Result<Receiver, BenchError> {
        match kind {
            ReceiverKind::Bench => {
                let mut sub = target
                    .connect("bench-latency-r", user, None, None, read_chunk)
                    .await?;
                target.subscribe(&mut sub, inbox, 1).await?;
                Ok(Receiver::Bench(sub))
            }
            ReceiverKind::Rumqttc => {
                let token = token(target, user)?;
                let mut o = MqttOptions::new(
                    "bench-latency-r",
                    target.server.ip().to_string(),
                    target.server.port(),
                );
                o.set_credentials(user, token)
                    .set_keep_alive(Duration::from_secs(u64::from(target.keep_alive)))
                    .set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut events) = AsyncClient::new(o, 16);
                client
                    .subscribe(inbox, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| BenchError::Unexpected(e.to_string()))?;
                let subscribed = async {
                    loop {
                        match events.poll().await {
                            Ok(rumqttc::Event::Incoming(Incoming::SubAck(_))) => return Ok(()),
                            Ok(_) => {}
                            Err(e) => return Err(BenchError::Unexpected(e.to_string())),
                        }
                    }
                };
                target.step("SUBACK", subscribed).await?;
                Ok(Receiver::Rumqttc {
                    _client: client,
                    events: Box::new(events),
                })
            }
            ReceiverKind::Sdk => {
                let token = token(target, user)?;
                let config = ClientConfig::new(
                    format!("mqtt://{}", target.server),
                    http_base,
                    user,
                    "bench-latency-sdk",
                    Credentials::Token(token),
                );
                let (client, events) = Client::connect(config)
                    .await
                    .map_err(|e| BenchError::Unexpected(format!("client library: {e}")))?;
                Ok(Receiver::Sdk(client, events))
            }
        }
    }

    /// Receives until `tally` has every message, timing each from the stamp
    /// `stamp` reads in an inbox payload (the envelope JSON).
    pub(crate) async fn receive(
        &mut self,
        inbox: &str,
        start: Instant,
        tally: &mut Tally,
        arrived: &AtomicUsize,
        stamp: fn(&Bytes) -> Option<(u64, usize)>,
        body_stamp: fn(&serde_json::Value) -> Option<(u64, usize)>,
    ) -> Result<(), BenchError> {
        match self {
            Receiver::Bench(conn) => {
                timed::receive_with(conn, inbox, start, tally, arrived, stamp).await
            }
            Receiver::Rumqttc { events, .. } => {
                while tally.received < tally.expected() {
                    match events.poll().await {
                        Ok(rumqttc::Event::Incoming(Incoming::Publish(p))) if p.topic == inbox => {
                            let now = start.elapsed().as_micros() as u64;
                            let (sent, seq) =
                                stamp(&p.payload).ok_or_else(|| not_ours(&p.payload))?;
                            tally.record(sent, seq, now)?;
                            arrived.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(BenchError::Unexpected(format!("subscriber: {e}"))),
                    }
                }
                Ok(())
            }
            Receiver::Sdk(_, events) => {
                while tally.received < tally.expected() {
                    match events.next().await {
                        Some(ClientEvent::Message(m)) => {
                            let now = start.elapsed().as_micros() as u64;
                            let (sent, seq) = body_stamp(&m.body).ok_or_else(|| {
                                BenchError::Unexpected(format!(
                                    "message body {} not the bench's",
                                    m.body
                                ))
                            })?;
                            tally.record(sent, seq, now)?;
                            arrived.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => return Err(BenchError::Closed),
                    }
                }
                Ok(())
            }
        }
    }

    /// Closes the client library's client (sending its last acks).
    pub(crate) async fn close(self) {
        if let Receiver::Sdk(client, _) = self {
            client.close().await;
        }
    }
}

fn token(target: &Target, user: &str) -> Result<String, BenchError> {
    let secret = target.jwt_secret.as_ref().ok_or_else(|| {
        BenchError::Unexpected("no --jwt-secret for the recipient's token".into())
    })?;
    Ok(secret.token(user, None)?)
}

fn not_ours(payload: &Bytes) -> BenchError {
    BenchError::Unexpected(format!(
        "subscriber: payload of {} bytes, not the bench's",
        payload.len()
    ))
}
