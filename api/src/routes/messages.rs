//! Messages over HTTP: ingest (`POST /message`, `POST /rooms/{room}/messages`)
//! and history (`GET /rooms/{room}/messages`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use consumer::event::{MessageView, RoomEvent};
use serde::Deserialize;
use uuid::Uuid;

use super::announce;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access,
    auth::AuthUser,
    error::{ApiError, Result},
    extract::{Json as JsonBody, QueryParams},
    ingest,
    queries::{
        messages::{self, Page},
        rooms,
    },
    state::AppState,
};

pub const HISTORY_DEFAULT: u64 = 50;
pub const HISTORY_MAX: u64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_message))
        .routes(routes!(post_room_message, history))
        .routes(routes!(edit, remove))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"room_id": "lobby", "content": "Hello, everyone!", "client_id": "web-5f2c-1"}))]
struct NewMessage {
    /// The room's UUID or name.
    room_id: String,
    content: String,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"content": "Hello, everyone!", "client_id": "web-5f2c-2"}))]
struct NewRoomMessage {
    content: String,
    #[serde(default)]
    client_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/message",
    tag = "messages",
    summary = "Publish a message; 202 once the broker confirmed it",
    request_body = NewMessage,
    responses(
        (status = 202, description = "Accepted", body = crate::ingest::Accepted), (status = 401),
        (status = 403), (status = 404), (status = 413), (status = 422),
        (status = 429, description = "Too many messages and edits from this user (`MESSAGE_BURST`, `MESSAGE_RATE`)"),
        (status = 503)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn post_message(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(req): JsonBody<NewMessage>,
) -> Result<impl IntoResponse> {
    accept(&state, &user, &req.room_id, req.content, req.client_id).await
}

#[utoipa::path(
    post,
    path = "/rooms/{room}/messages",
    tag = "messages",
    summary = "Publish a message to this room",
    request_body = NewRoomMessage,
    params(("room" = String, Path, description = "The room's UUID or name", example = "lobby")),
    responses(
        (status = 202, description = "Accepted", body = crate::ingest::Accepted), (status = 401),
        (status = 403), (status = 404), (status = 413), (status = 422),
        (status = 429, description = "Too many messages and edits from this user (`MESSAGE_BURST`, `MESSAGE_RATE`)"),
        (status = 503)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn post_room_message(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<NewRoomMessage>,
) -> Result<impl IntoResponse> {
    accept(&state, &user, &key, req.content, req.client_id).await
}

async fn accept(
    state: &AppState,
    user: &AuthUser,
    key: &str,
    content: String,
    client_id: Option<String>,
) -> Result<(StatusCode, Json<ingest::Accepted>)> {
    state.quotas.check_message(user)?;
    let room = access::room(state, key).await?;
    let room = access::can_post(state, user, &room).await?;
    let accepted = ingest::publish(state, &room, content, client_id).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<u64>,
    before: Option<i64>,
    after: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/rooms/{room}/messages",
    tag = "messages",
    summary = "History: `before` newest first, `after` oldest first",
    params(("room" = String, Path, description = "The room's UUID or name", example = "lobby"), HistoryQuery),
    responses(
        (status = 200, description = "Messages", body = Vec<MessageView>), (status = 401),
        (status = 403), (status = 404), (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<Vec<MessageView>>> {
    let limit = q.limit.unwrap_or(HISTORY_DEFAULT);
    if !(1..=HISTORY_MAX).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be 1 to {HISTORY_MAX}"),
        ));
    }
    for (field, seq) in [("before", q.before), ("after", q.after)] {
        if seq.is_some_and(|seq| seq < 0) {
            return Err(ApiError::invalid_field(field, "must be 0 or more"));
        }
    }
    let page = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "before",
                "give before or after, not both",
            ));
        }
        (before, None) => Page::Before(before),
        (None, Some(after)) => Page::After(after),
    };
    let room = rooms::get(&state.db, &key).await?;
    access::can_read(&state, &user, &room).await?;
    Ok(Json(
        messages::history(&state.db, room.id, page, limit).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"content": "Hello, everyone! (edited)"}))]
struct Edit {
    content: String,
}

#[utoipa::path(
    patch,
    path = "/messages/{id}",
    tag = "messages",
    summary = "Edit your message; sockets get message_edited",
    request_body = Edit,
    params(("id" = uuid::Uuid, Path, description = "Message id")),
    responses(
        (status = 200, description = "Edited", body = MessageView), (status = 401), (status = 403),
        (status = 404), (status = 409), (status = 413), (status = 422),
        (status = 429, description = "Too many messages and edits from this user (`MESSAGE_BURST`, `MESSAGE_RATE`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// The author, while they may still post in the room, changes their
/// message's content; every node's sockets get `message_edited`.
async fn edit(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    JsonBody(req): JsonBody<Edit>,
) -> Result<Json<MessageView>> {
    // Each edit goes out to every socket of the room, like a message.
    state.quotas.check_message(&user)?;

    let message = messages::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let room = rooms::get(&state.db, &message.room_id.to_string()).await?;
    access::can_edit_message(&state, &user, message.sender_id, &room).await?;
    if message.deleted_at.is_some() {
        return Err(ApiError::conflict(
            "message_deleted",
            "a deleted message cannot be edited",
        ));
    }
    ingest::check_content(&state, &req.content)?;
    let message = messages::edit(&state.db, message, req.content).await?;
    let view = messages::with_senders(&state.db, vec![message])
        .await?
        .remove(0);
    announce(&state, RoomEvent::MessageEdited(view.clone())).await;
    Ok(Json(view))
}

#[utoipa::path(
    delete,
    path = "/messages/{id}",
    tag = "messages",
    summary = "Delete a message (author, moderator, admin or room owner); sockets get message_deleted",
    params(("id" = uuid::Uuid, Path, description = "Message id")),
    responses(
        (status = 204, description = "Deleted"), (status = 401), (status = 403), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// The author, a moderator, an admin or the room's owner deletes a message;
/// it stays in history as a tombstone and sockets get `message_deleted`.
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let message = messages::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let room = rooms::get(&state.db, &message.room_id.to_string()).await?;
    if !access::may_delete_message((&user).into(), message.sender_id, &room) {
        return Err(ApiError::forbidden(
            "not_allowed",
            "only the author, a moderator, an admin or the room owner can delete",
        ));
    }
    if message.deleted_at.is_none() {
        let message = messages::tombstone(&state.db, message).await?;
        let view = messages::with_senders(&state.db, vec![message])
            .await?
            .remove(0);
        announce(&state, RoomEvent::MessageDeleted(view)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
