//! The embedded MQTT broker of imqtt.
//!
//! Modules: `auth` verifies the JWTs presented on CONNECT (and by the HTTP API),
//! `config` is the `[mqtt]` section, `units` reads human-friendly durations, sizes and
//! listen addresses from config.

pub mod auth;
pub mod config;
pub mod units;
