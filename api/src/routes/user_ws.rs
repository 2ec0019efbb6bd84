//! The user's own socket, `GET /ws` (DESIGN.md §5, "The user's socket"): what
//! happens to the caller's list of rooms (`room_added`, `room_removed`, and
//! public rooms' `room_listed`, `room_unlisted`), pushed as it happens on any node.
//!
//! It is a stream in the hub's per-user registry
//! ([`Hub::register_stream`](consumer::hub::Hub::register_stream)): every
//! node hears each user event, and the node holding the socket writes the
//! ones meant for it as they were published. It closes like a room socket
//! when its token expires or is revoked (4001).

use std::time::Duration;

use axum::{
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::HeaderMap,
    response::Response,
};
use chrono::Utc;
use consumer::hub::{Outbound, user_sockets::UserSocket};
use futures_util::{StreamExt, stream::SplitStream};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ws::{End, RATE_STRIKES, READ_BUFFER, Sink, SocketGauge, closing_error, finish, send};
use crate::{
    auth::{AuthUser, extractor::socket_user},
    error::Result,
    extract::QueryParams,
    frames::{ServerFrame, UserFrame},
    state::AppState,
};

/// Largest frame a client sends here (a `ping`): anything bigger is not one.
const CLIENT_FRAME_LIMIT: usize = 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(connect))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UserWsQuery {
    /// The access token, for a client that cannot send a header or the cookie.
    token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/ws",
    tag = "sockets",
    summary = "Open your own WebSocket: changes to your list of rooms as they happen (see the WebSocket protocol)",
    description = "Sends `welcome {user}`, then `room_added {room}` when you become a member of a room \
        (added by its owner, a private room opened with you, or you joined or created it) and \
        `room_removed {room_id, reason}` when you no longer are (`removed`, `left`, `deleted`); to everyone, \
        `room_listed {room}` and `room_unlisted {room_id}` when a public room is created or deleted. Answers \
        `{\"type\":\"ping\"}` with `pong`. Closes 4001 when the token expires or is revoked, 1012 on \
        shutdown. Guests are refused (403).",
    params(UserWsQuery),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "Malformed request"), (status = 401), (status = 403),
        (status = 429, description = "Too many socket connects by this user (`rate_limited`), or too many open \
            sockets (`too_many_sockets`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn connect(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<UserWsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response> {
    let user = socket_user(&state, &headers, q.token).await?;
    // A guest has one room and no list of rooms.
    user.require_registered()?;
    state.limits.check_connect(user.id)?;
    // Counts towards SOCKETS_PER_USER like room and echo sockets.
    let slot = state.quotas.sockets.take(user.id)?;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(CLIENT_FRAME_LIMIT)
        .max_frame_size(CLIENT_FRAME_LIMIT)
        .on_upgrade(move |socket| {
            let tracked = state.sockets.clone();
            tracked.track_future(async move {
                run(state, user, socket).await;
                drop(slot);
            })
        }))
}

async fn run(state: AppState, user: AuthUser, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut registered = state.hub.register_stream(crate::user_events::owner(&user));
    let mut events = registered.events.take().expect("a stream has its events");
    let _gauge = SocketGauge::open();
    let me = consumer::event::SenderView::new(user.id, user.username.as_str(), user.avatar_version);
    let welcome = UserFrame::Welcome { user: &me }.to_text();
    let end = match send(&mut sink, Message::Text(welcome.into())).await {
        Ok(()) => {
            serve(
                &state,
                &user,
                &mut sink,
                &mut stream,
                &mut registered,
                &mut events,
            )
            .await
        }
        Err(end) => end,
    };
    drop(registered);
    finish(sink, stream, end).await;
}

/// The socket's life after `welcome`: the user's events out, `ping` in.
async fn serve(
    state: &AppState,
    user: &AuthUser,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    registered: &mut UserSocket,
    events: &mut mpsc::Receiver<Outbound>,
) -> End {
    let config = &state.config;
    let limiter =
        crate::limits::socket_limiter(config.socket_message_burst, config.socket_message_rate);
    let mut refused_in_a_row = 0u32;
    let expires_in = (user.claims.exp - Utc::now().timestamp()).max(0) as u64;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            () = state.stop.cancelled() => return End::Close(1012, "server shutting down"),
            () = &mut expiry => return End::Close(4001, "token expired"),
            _ = registered.close.changed() => {
                if let Some(reason) = *registered.close.borrow() {
                    return End::Close(reason.code, reason.reason);
                }
            }
            outbound = events.recv() => {
                let Some(outbound) = outbound else { return End::Gone };
                let Ok(text) = axum::extract::ws::Utf8Bytes::try_from(outbound.frame) else {
                    continue;
                };
                if let Err(end) = send(sink, Message::Text(text)).await {
                    return end;
                }
            }
            inbound = stream.next() => {
                let reply = match inbound {
                    None => return End::Gone,
                    Some(Err(err)) => return closing_error(&err),
                    Some(Ok(Message::Text(text))) => {
                        if limiter.check().is_err() {
                            refused_in_a_row += 1;
                            if refused_in_a_row > RATE_STRIKES {
                                return End::Close(1008, "rate limit exceeded");
                            }
                            continue;
                        }
                        refused_in_a_row = 0;
                        answer(text.as_str())
                    }
                    Some(Ok(Message::Binary(_))) => return End::Close(1003, "binary frames are not supported"),
                    Some(Ok(Message::Close(_))) => return End::ClosedByPeer,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                };
                if let Err(end) = send(sink, Message::Text(reply.into())).await {
                    return end;
                }
            }
        }
    }
}

/// The reply to a client frame: `pong` to a `ping`, an `error` otherwise
/// (this socket takes no messages; they go to a room's socket).
fn answer(text: &str) -> String {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    match serde_json::from_str::<Typed>(text) {
        Ok(typed) if typed.kind == "ping" => ServerFrame::Pong.to_text(),
        Ok(_) => ServerFrame::error(
            "unknown_type",
            "this socket takes only {\"type\":\"ping\"}; messages go to a room's socket",
            None,
        )
        .to_text(),
        Err(err) => {
            let detail = format!("not a JSON frame with a type: {err}");
            ServerFrame::error("malformed_json", &detail, None).to_text()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_gets_a_pong_and_anything_else_an_error() {
        assert_eq!(answer(r#"{"type":"ping"}"#), r#"{"type":"pong"}"#);
        let refused: serde_json::Value =
            serde_json::from_str(&answer(r#"{"type":"message","content":"hi"}"#)).unwrap();
        assert_eq!(refused["code"], "unknown_type");
        let malformed: serde_json::Value = serde_json::from_str(&answer("hello")).unwrap();
        assert_eq!(malformed["code"], "malformed_json");
    }
}
