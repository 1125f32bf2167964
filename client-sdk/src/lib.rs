//! The Rust client of imqtt. `wire` is the `imqtt-wire` crate: the JSON and topic
//! formats of DESIGN.md §3-5 (envelope, events, presence, HTTP bodies,
//! conversation ids, topic builders) as plain serde types, which the server uses
//! too.
//!
//! The library: [`Client`] (one device: MQTT connection, subscriptions, catch-up and
//! gap fill, [`Events`] in which every conversation's messages come exactly once
//! and in seq order, batched acks), [`Api`] (the HTTP API as typed calls, with
//! idempotent retried sends), [`CursorStore`] with [`MemoryCursors`] and
//! [`FileCursors`], [`RetryPolicy`], [`Credentials`] and [`TokenRefresh`], and one
//! [`Error`]. Inside: `session` (the MQTT loop and the driver), `order` (dedupe,
//! ordering, what to fetch), `acks`, `servers` (the lists of server addresses
//! and failover between them). The `imqtt-cli` and `imqtt-bench` binaries
//! are crates of their own, in `client-sdk/cli/` and `client-sdk/bench/`.
//!
//! ```no_run
//! use imqtt_client::{Client, ClientConfig, ClientEvent, Credentials};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), imqtt_client::Error> {
//! let config = ClientConfig::new(
//!     "mqtt://127.0.0.1:1883",
//!     "http://127.0.0.1:8080",
//!     "alice",
//!     "phone",
//!     Credentials::Password("correct horse battery".into()),
//! );
//! let (client, mut events) = Client::connect(config).await?;
//! client.send("bob", json!({"text": "hello"})).await?;
//! while let Some(event) = events.next().await {
//!     if let ClientEvent::Message(m) = event {
//!         println!("{} #{} from {}: {}", m.conv, m.seq, m.from, m.body);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub use imqtt_wire as wire;

mod acks;
mod api;
mod client;
mod cursors;
mod error;
mod ids;
mod order;
mod retry;
mod servers;
mod session;
mod token;

pub use api::{Api, Sent, sign_in_at, sign_up};
pub use client::{Client, ClientConfig, ClientEvent, Events, GroupEvent};
pub use cursors::{CursorStore, FileCursors, MemoryCursors};
pub use error::Error;
pub use ids::new_client_msg_id;
pub use retry::RetryPolicy;
pub use token::{Credentials, TokenFuture, TokenRefresh};
