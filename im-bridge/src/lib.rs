//! The IM side of imqtt and the wiring of the `imqtt` server.
//!
//! Modules: `config` loads the typed config, `api` is the HTTP surface
//! (`api::app(state)`), `auth` the bearer-token extractor, `passwords` the bounded
//! argon2id hashing of account passwords, `metrics` the Prometheus registry, `store`
//! the durable store and its engines (sled, PostgreSQL), `commit` the group-commit
//! loop every write goes through, `cache` the membership and contact answers the
//! broker asks for, `copy` moving a sled store into PostgreSQL, `sending` what a send must be, `delivery` publishing after commit,
//! `outbox` sends over MQTT, `groups` who may change a group and how, `access` the
//! broker's group and presence questions, `presence` retained presence from
//! connection events, `retained` MQTT retained messages kept in the store,
//! `ratelimit` the per-user limit on message sends, `error` the crate's error enum
//! and its HTTP mapping, `server` binds every listener, serves and shuts down,
//! `shutdown` turns SIGTERM/SIGINT into a stop request. The
//! JSON bodies, events, ids and topics shared with clients come from the
//! `imqtt-wire` crate (`client-sdk/wire/`).

pub mod access;
pub mod api;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod copy;
pub mod delivery;
pub mod error;
pub mod groups;
pub mod metrics;
pub mod outbox;
pub mod passwords;
pub mod presence;
pub mod ratelimit;
pub mod receipts;
pub mod retained;
pub mod revisions;
pub mod sending;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod throttle;
pub mod webhooks;

pub use error::{Error, Result};
