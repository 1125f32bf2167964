//! Liveness, readiness and metrics: the endpoints an operator's tooling polls.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{AppState, Json};
use crate::error::Error;

/// `GET /healthz`: the process is up and serving HTTP.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: every listener is bound and the store is open, and the server is
/// not shutting down.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    if !state.is_ready() {
        Err(Error::NotReady)
    } else if !state.store.is_available() {
        Err(Error::Storage(crate::store::StoreError::Unavailable(
            "the database does not answer".into(),
        )))
    } else {
        Ok(Json(json!({"status": "ready"})))
    }
}

/// `GET /metrics`: Prometheus text (OpenMetrics).
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
