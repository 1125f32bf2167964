//! The operator's API, for admin tokens only (403 for any other):
//! `GET /v1/admin/stats`, `GET /v1/admin/users/{uid}` and
//! `POST /v1/admin/users/{uid}/disconnect`. And `GET /v1/server`, open to anyone:
//! what a page needs to know before it connects.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use broker::auth::Role;
use imqtt_wire::{AdminStats, AdminUser, Disconnected, MqttEndpoints, ServerInfo};

use super::{AppState, Json, accounts, path_id, sync};
use crate::auth::Caller;
use crate::error::Error;

/// 403 unless the caller has the admin role.
fn require_admin(caller: &Caller) -> Result<(), Error> {
    if caller.role() == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "the admin API needs an admin token".into(),
        ))
    }
}

/// `GET /v1/admin/stats`.
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AdminStats>, Error> {
    require_admin(&caller)?;
    let b = state.broker.stats();
    // sled reads the sizes of its files; PostgreSQL answers a query.
    let store_bytes = state.read(|s| Ok(s.size_on_disk()?)).await?;
    Ok(Json(AdminStats {
        ts: crate::commit::now_ms(),
        uptime_s: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        connections: b.connections,
        sessions: b.sessions,
        subscriptions: b.subscriptions,
        retained: b.retained,
        messages_stored: state.metrics.messages_stored.get(),
        deliveries: b.publishes_sent,
        publishes_received: b.publishes_received,
        queue_drops: b.queue_drops,
        store_bytes,
        resident_bytes: crate::metrics::resident_memory(),
    }))
}

/// `GET /v1/admin/users/{uid}`: devices, presence, groups and conversations. A
/// user the server has never heard of is 404.
pub(super) async fn user(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AdminUser>, Error> {
    require_admin(&caller)?;
    let uid = path_id(path, "user")?;
    let presence = crate::presence::current(&state.broker, state.cluster.as_ref(), &uid);
    let looked_up = uid.clone();
    let (account, groups, conversations) = state
        .read(move |store| {
            let account = store.password_hash(&looked_up)?.is_some();
            let groups = store.user_groups(&looked_up, crate::groups::MAX_GROUPS)?;
            let conversations = sync::conversation_list(store, &looked_up)?;
            Ok((account, groups, conversations))
        })
        .await?;
    let known =
        account || !groups.is_empty() || !conversations.is_empty() || !presence.devices.is_empty();
    if !known {
        return Err(Error::NotFound(format!("no user {uid}")));
    }
    Ok(Json(AdminUser {
        user: uid,
        account,
        presence,
        groups,
        conversations,
    }))
}

/// `POST /v1/admin/users/{uid}/disconnect`: closes every connection of the user
/// (MQTT 5 clients are told "administrative action"); its sessions stay.
pub(super) async fn disconnect(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Disconnected>, Error> {
    require_admin(&caller)?;
    let uid = path_id(path, "user")?;
    let mut n = state.broker.disconnect_user(&uid) as u64;
    if let Some(cluster) = &state.cluster {
        n += cluster.disconnect_user(&uid).await;
    }
    tracing::info!(user = %uid, connections = n, by = %caller.uid(), "disconnected by an admin");
    Ok(Json(Disconnected {
        user: uid,
        disconnected: n,
    }))
}

/// `GET /v1/admin/cluster`: the live nodes (this one alone without a cluster).
pub(super) async fn cluster(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, Error> {
    require_admin(&caller)?;
    let nodes = match &state.cluster {
        Some(c) => c.nodes(),
        None => {
            let stats = state.broker.stats();
            vec![crate::cluster::NodeInfo {
                node: crate::cluster::node_name(&state.config.cluster),
                connections: stats.connections,
                sessions: stats.sessions,
                uptime_s: state.started.elapsed().as_secs(),
                last_seen_ms: crate::commit::now_ms(),
            }]
        }
    };
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

/// `GET /v1/server`: the version, whether built-in accounts are on, and where MQTT
/// over WebSocket listens (a port on the host that served the page).
pub(super) async fn server(State(state): State<AppState>) -> Json<ServerInfo> {
    let port = |name: &str| {
        state
            .mqtt_addrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.port())
    };
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        accounts: accounts::enabled(&state.config.auth),
        mqtt: MqttEndpoints {
            ws_port: port("mqtt.ws"),
            wss_port: port("mqtt.wss"),
            ws_path: "/mqtt".to_owned(),
        },
    })
}
