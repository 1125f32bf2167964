//! The embedded MQTT broker of imqtt.
//!
//! Modules: `auth` verifies the JWTs presented on CONNECT (and by the HTTP API),
//! `config` is the `[mqtt]` section, `listener` binds the MQTT listeners, `units`
//! reads human-friendly durations, sizes and listen addresses from config, `error` is
//! the crate's error enum.

pub mod auth;
pub mod config;
pub mod error;
pub mod listener;
pub mod units;

pub use error::Error;
