//! The HTTP surface: `app(state)` builds the router; one file per resource.
//!
//! Every response that is not a success carries the JSON error body of DESIGN.md §5,
//! including unknown routes (404), wrong methods (405) and oversized bodies (413).

mod accounts;
mod admin;
mod cors;
mod groups;
mod health;
mod json;
mod messages;
mod presence;
mod sync;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use broker::BrokerHandle;
use broker::auth::TokenVerifier;
use http_body_util::BodyExt;
use tower_http::trace::TraceLayer;

pub use json::Json;

use crate::commit::Committer;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::passwords::Passwords;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// What every handler can reach. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The loaded config.
    pub config: Arc<Config>,
    /// Verifies bearer tokens.
    pub verifier: Arc<TokenVerifier>,
    /// The durable store, for reads ([`AppState::read`]); every write goes
    /// through `committer`.
    pub store: Arc<dyn Store>,
    /// Memberships and contacts as the broker's `Authorizer` sees them, cached.
    pub access: crate::access::Access,
    /// MQTT retained messages changed but not yet written to the store.
    pub retained: crate::retained::Shared,
    /// Where message writes go: the group-commit loop.
    pub committer: Committer,
    /// The broker, for delivery after commit.
    pub broker: BrokerHandle,
    /// This node's part of a cluster (`cluster.nats`), if it is in one.
    pub cluster: Option<crate::cluster::Cluster>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Hashes and verifies account passwords, a bounded number at a time.
    pub passwords: Passwords,
    /// The per-user limit on message sends (`limits.rate_per_user`,
    /// `limits.rate_burst`), one limiter for every way of sending: a send costs 1, a
    /// batch of N sends N.
    pub send_limit: Arc<RateLimiter>,
    /// Set when the server starts serving (every listener bound, the store open,
    /// before any request can be answered); cleared when shutdown begins, so load
    /// balancers stop sending new work.
    pub ready: Arc<AtomicBool>,
    /// When the server started, for its uptime.
    pub started: Instant,
    /// Read receipts being coalesced (`delivery.read_receipts`).
    pub receipts: Arc<crate::receipts::Receipts>,
    /// Failed sign-ins and sign-ups counted, to slow guessing down.
    pub sign_ins: Arc<crate::throttle::SignIns>,
    /// The bound MQTT listeners, keyed as in `--print-addrs` (`mqtt.ws`, ...): the
    /// web page learns from `GET /v1/server` where to connect.
    pub mqtt_addrs: Arc<[(&'static str, SocketAddr)]>,
}

impl AppState {
    /// Whether the server is serving (from start until shutdown begins).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs `read` (store reads, which may wait on a disk or a database) on the
    /// blocking pool, never on an async worker.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&*store))
            .await
            .map_err(|_| Error::Stopping)?
    }
}

/// The whole HTTP API as a router over `state`; the caller binds it to a listener.
/// The account endpoints exist only when `auth.accounts` is on (and the server can
/// mint tokens); otherwise they are unknown routes, 404.
pub fn app(state: AppState) -> Router {
    let max_body = state.config.http.max_body;
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/messages", post(messages::send))
        .route("/v1/messages/batch", post(messages::batch))
        .route("/v1/notify", post(messages::notify))
        .route("/v1/sync", get(sync::sync))
        .route("/v1/conversations", get(sync::conversations))
        .route("/v1/conversations/{conv}/messages", get(sync::messages))
        .route("/v1/conversations/{conv}/reads", get(sync::reads))
        .route(
            "/v1/conversations/{conv}/messages/{seq}",
            patch(messages::edit).delete(messages::recall),
        )
        .route("/v1/ack", post(sync::ack))
        .route("/v1/groups", post(groups::create).get(groups::mine))
        .route("/v1/groups/{gid}", get(groups::info).delete(groups::delete))
        .route("/v1/groups/{gid}/members", post(groups::add))
        .route(
            "/v1/groups/{gid}/members/{uid}",
            put(groups::set_role).delete(groups::remove),
        )
        .route("/v1/contacts", get(presence::list))
        .route(
            "/v1/contacts/{uid}",
            put(presence::put).delete(presence::delete),
        )
        .route("/v1/presence", get(presence::presence))
        .route("/v1/server", get(admin::server))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/v1/admin/cluster", get(admin::cluster))
        .route("/v1/admin/users/{uid}", get(admin::user))
        .route("/v1/admin/users/{uid}/disconnect", post(admin::disconnect))
        .route("/", get(web::chat))
        .route("/admin", get(web::admin))
        .route("/assets/{name}", get(web::asset));
    if accounts::enabled(&state.config.auth) {
        router = router
            .route("/v1/accounts", post(accounts::create))
            .route("/v1/tokens", post(accounts::token));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body.as_usize()))
        .layer(middleware::from_fn_with_state(
            Arc::new(cors::Cors::new(&state.config.http.cors_origins)),
            cors::cors,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                user = tracing::field::Empty,
            )
        }))
        .with_state(state)
}

/// Oversized bodies up to this size are read and discarded before the 413.
const DRAIN_MAX: u64 = 64 << 20;

/// Runs around every request: refuses a declared body over the limit before any
/// routing, bounds the request's time, and counts the answer.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let limit = state.config.http.max_body.0;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if let Some(n) = declared.filter(|n| *n > limit) {
        // Reading a moderately oversized body to its end lets the client, which is
        // usually still sending, see the 413 instead of a broken pipe; beyond
        // DRAIN_MAX the connection is simply closed after the answer.
        if n <= DRAIN_MAX {
            let drain = async {
                let mut body = req.into_body();
                while let Some(Ok(_)) = body.frame().await {}
            };
            let _ = tokio::time::timeout(state.config.http.request_timeout.get(), drain).await;
        }
        Error::PayloadTooLarge { limit }.into_response()
    } else {
        let timeout = state.config.http.request_timeout.get();
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => Error::Timeout.into_response(),
        }
    };
    state
        .metrics
        .http_request(&method, response.status().as_u16());
    response
}

/// A user id from the path, checked against the id pattern (400 naming `what`).
fn path_id(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    what: &str,
) -> Result<String, Error> {
    let axum::extract::Path(uid) = path.map_err(|e| Error::BadRequest(e.to_string()))?;
    imqtt_wire::check_id(&uid).map_err(|e| Error::BadRequest(format!("{what}: {e}")))?;
    Ok(uid)
}

async fn not_found(req: Request) -> Error {
    Error::NotFound(format!("no route for {}", req.uri().path()))
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
