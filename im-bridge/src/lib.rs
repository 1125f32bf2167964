//! The IM side of imqtt and the wiring of the `imqtt` server.
//!
//! Modules: `config` loads the typed config, `api` is the HTTP surface (`app(state)`),
//! `metrics` the Prometheus registry, `error` the crate's error enum and its HTTP
//! mapping, `server` binds every listener, serves and shuts down.

pub mod config;
