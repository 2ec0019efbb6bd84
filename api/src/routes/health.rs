//! Liveness and readiness.

use axum::{Json, extract::State};
use consumer::BrokerStatus;
use serde::Serialize;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, state::AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    #[schema(example = "up")]
    database: &'static str,
    #[schema(example = "up")]
    broker: &'static str,
    /// This node's NODE_ID.
    #[schema(example = "node-a")]
    node: String,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses((status = 200, description = "The process is up", body = Health))
)]
/// The process is up.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness: database and broker",
    responses((status = 200, description = "Ready", body = Ready), (status = 503))
)]
/// The process can do its work: the database answers and the broker is connected.
/// Anyone may ask, so the answer names what is down and no more: the
/// driver's own error (hosts, user names, paths) goes to the log.
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let mut down = Vec::new();
    if let Err(err) = state.db.ping().await {
        tracing::warn!(error = %err, "not ready: database");
        down.push("database: unavailable");
    }
    if let BrokerStatus::Down(reason) = state.broker.status() {
        tracing::warn!(%reason, "not ready: broker");
        down.push("broker: unavailable");
    }
    if !down.is_empty() {
        return Err(ApiError::unavailable("not_ready", down.join("; "), 1));
    }
    Ok(Json(Ready {
        status: "ready",
        database: "up",
        broker: "up",
        node: state.node_id.to_string(),
    }))
}
