//! Ingest: the first stage of the message path, shared by `POST /message` and
//! WebSocket `message` frames. Checks the content (who may post where is
//! `access.rs`'s, and a [`PostableRoom`] says it was asked), gives the message
//! its id and time, publishes it to `messages`, and returns only once the
//! broker confirmed it.

use chrono::Utc;
use consumer::{
    BrokerError,
    event::{Envelope, message_id},
    rules::{self, ContentError},
    signing::EnvelopeKey,
};
use serde::Serialize;
use uuid::Uuid;

use crate::{access::PostableRoom, error::ApiError, state::AppState};

/// Longest `client_id` accepted.
pub const MAX_CLIENT_ID: usize = rules::MAX_CLIENT_ID_BYTES;

/// What a 202 or an `ack` reports.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190d1a3-1f00-7000-8000-00000000000a", "room_id": "0190d1a2-6c00-7000-8000-000000000001",
    "status": "queued"
}))]
pub struct Accepted {
    pub id: Uuid,
    pub room_id: Uuid,
    pub status: &'static str,
}

/// Content must have something in it, no NUL, and fit `MAX_MESSAGE_BYTES`
/// (the rules of [`consumer::rules`], which the store stage applies too).
pub fn check_content(state: &AppState, content: &str) -> Result<(), ApiError> {
    let max = state.config.max_message_bytes as usize;
    rules::check_content(content, max).map_err(|err| match err {
        ContentError::TooLarge(_) => ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            err.to_string(),
        ),
        ContentError::Empty | ContentError::Nul => {
            ApiError::invalid_field("content", err.to_string())
        }
    })
}

/// Checks content and client id, then publishes and waits for the confirm.
pub async fn publish(
    state: &AppState,
    room: &PostableRoom,
    content: String,
    client_id: Option<String>,
) -> Result<Accepted, ApiError> {
    check_content(state, &content)?;
    if let Some(client_id) = &client_id
        && !rules::client_id_ok(client_id)
    {
        return Err(ApiError::invalid_field(
            "client_id",
            format!("must be 1 to {MAX_CLIENT_ID} bytes"),
        ));
    }
    let id = message_id(Some(room.sender_id()), room.room_id(), client_id.as_deref());
    let envelope = Envelope {
        id: Some(id),
        room_id: room.room_id().to_string(),
        sender_id: Some(room.sender_id()),
        content,
        client_id,
        created_at: Some(Utc::now()),
    };
    let payload = serde_json::to_vec(&envelope).map_err(ApiError::internal)?;
    // Signed, so the store stage trusts `sender_id` (no one else can post as a user).
    let signature = EnvelopeKey::derive(state.config.signing_key().as_bytes()).sign(&payload);
    // Routed by the room, so that one partition stores all of a room's messages.
    let routing_key = room.room_id().to_string();
    let published = state
        .broker
        .publish_routed(&routing_key, &payload, Some(&signature));
    published.await.map_err(|err| {
        tracing::warn!(error = %err, "publish failed");
        match err {
            BrokerError::Full => {
                ApiError::unavailable("busy", "the message queue is full; retry shortly", 1)
            }
            // Returned: the broker has no `messages` queue to put it in.
            BrokerError::Unavailable(_) | BrokerError::Nacked | BrokerError::Returned(_) => {
                ApiError::unavailable(
                    "broker_unavailable",
                    "the message broker is unavailable; retry shortly",
                    1,
                )
            }
        }
    })?;
    metrics::counter!(crate::metrics::MESSAGES_ACCEPTED).increment(1);
    Ok(Accepted {
        id,
        room_id: room.room_id(),
        status: "queued",
    })
}
