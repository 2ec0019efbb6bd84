//! The echo channel: `/echo` echoes each frame back, or relays it through
//! `ECHO_UPSTREAM_URL`; the transcript is saved when the socket closes (the
//! newest `ECHO_TRANSCRIPTS_PER_USER` of a user are kept, older ones deleted)
//! and `/echo/history` lists the caller's. Its connects count against the
//! same per-user connect rate and open-socket cap as room sockets. Also `/echo_ws` and `/pub_ws`, which
//! tell a client where the echo socket and the public room's socket are.

use axum::{
    Json,
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, header},
    response::Response,
};
use chrono::{DateTime, Utc};
use consumer::hub::CloseReason;
use entity::echo_transcript;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{AuthUser, extractor::socket_user},
    error::Result,
    extract::QueryParams,
    routes::ws::{End, timed},
    state::AppState,
};

/// Frames and bytes a transcript keeps; the rest of a long session is echoed but not saved.
const TRANSCRIPT_FRAMES: usize = 1000;
const TRANSCRIPT_BYTES: usize = 256 * 1024;
const HISTORY_LIMIT: u64 = 50;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connect))
        .routes(routes!(history))
        .routes(routes!(echo_ws))
        .routes(routes!(pub_ws))
}

/// `ws://` or `wss://` and the host the client used.
fn socket_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost:8000");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p == "https");
    format!("{}://{host}", if secure { "wss" } else { "ws" })
}

/// Where a socket is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SocketUrl {
    #[schema(example = "ws://localhost:8000/echo")]
    url: String,
}

/// Where the echo socket is, and what it does with a frame.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EchoSocket {
    #[schema(example = "ws://localhost:8000/echo")]
    url: String,
    /// `echo`: each frame comes straight back; `relay`: each goes through
    /// `ECHO_UPSTREAM_URL` and what the upstream answers comes back.
    #[schema(example = "echo")]
    mode: &'static str,
}

#[utoipa::path(
    get,
    path = "/echo_ws",
    tag = "sockets",
    summary = "The URL of the echo socket, and whether it echoes or relays upstream",
    responses((status = 200, description = "URL and mode", body = EchoSocket), (status = 401)),
    security(("bearer" = []), ("cookie" = []))
)]
async fn echo_ws(
    State(state): State<AppState>,
    _user: AuthUser,
    headers: HeaderMap,
) -> Json<EchoSocket> {
    Json(EchoSocket {
        url: format!("{}/echo", socket_base(&headers)),
        mode: if state.config.echo_upstream_url.is_some() {
            "relay"
        } else {
            "echo"
        },
    })
}

#[utoipa::path(
    get,
    path = "/pub_ws",
    tag = "sockets",
    summary = "The URL of the public room's socket",
    responses((status = 200, description = "URL", body = SocketUrl), (status = 401)),
    security(("bearer" = []), ("cookie" = []))
)]
async fn pub_ws(_user: AuthUser, headers: HeaderMap) -> Json<SocketUrl> {
    Json(SocketUrl {
        url: format!("{}/ws/public", socket_base(&headers)),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EchoQuery {
    token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/echo",
    tag = "sockets",
    summary = "The echo WebSocket: each frame echoed, or relayed through ECHO_UPSTREAM_URL",
    params(EchoQuery),
    responses(
        (status = 101, description = "Switching protocols"), (status = 401), (status = 403),
        (status = 429, description = "Too many socket connects by this user (`rate_limited`), or too many open \
            sockets (`too_many_sockets`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn connect(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<EchoQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response> {
    let user = socket_user(&state, &headers, q.token).await?;
    // A guest token is for its one room, not for the echo channel.
    user.require_registered()?;
    // The same connect rate and open-socket cap as room sockets.
    state.limits.check_connect(user.id)?;
    let slot = state.quotas.sockets.take(user.id)?;
    let limit = state.config.max_message_bytes as usize + 512;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tracked = state.sockets.clone();
            tracked.track_future(async move {
                session(state, user, socket).await;
                drop(slot);
            })
        }))
}

/// What one session said, within the transcript's bounds.
#[derive(Default)]
struct Transcript {
    frames: Vec<Value>,
    bytes: usize,
}

impl Transcript {
    fn record(&mut self, dir: &str, message: &Message) {
        let text = match message {
            Message::Text(text) => text.as_str().to_owned(),
            Message::Binary(data) => format!("<{} bytes of binary>", data.len()),
            _ => return,
        };
        if self.frames.len() < TRANSCRIPT_FRAMES && self.bytes + text.len() <= TRANSCRIPT_BYTES {
            self.bytes += text.len();
            self.frames.push(json!({ "dir": dir, "text": text }));
        }
    }
}

async fn session(state: AppState, user: AuthUser, socket: WebSocket) {
    let started_at = Utc::now();
    let mut transcript = Transcript::default();
    // Ends with its token: at `exp`, or when a user event revokes it.
    let mut account = state
        .hub
        .register_socket(crate::user_events::owner(&user), None);
    let expires_in = (user.claims.exp - Utc::now().timestamp()).max(0) as u64;
    let ended = async move {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(expires_in)) => {
                close_frame(4001, "token expired")
            }
            _ = account.close.wait_for(Option::is_some) => {
                close_frame(CloseReason::TOKEN_REVOKED.code, CloseReason::TOKEN_REVOKED.reason)
            }
        }
    };
    let close = match state.config.echo_upstream_url.clone() {
        None => echo_locally(&state, socket, &mut transcript, ended).await,
        Some(url) => relay(&state, socket, &url, &mut transcript, ended).await,
    };
    if let Err(err) = close {
        tracing::debug!(error = %err, "echo session ended with an error");
    }
    let saved = echo_transcript::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user.id),
        started_at: Set(started_at),
        ended_at: Set(Utc::now()),
        frames: Set(Value::Array(transcript.frames).to_string()),
    };
    let kept = state.config.echo_transcripts_per_user as u64;
    if let Err(err) = save_transcript(&state.db, saved, kept).await {
        tracing::warn!(error = %err, "echo transcript not saved");
    }
}

/// Saves a transcript and prunes the user's oldest in one transaction, so
/// `/echo/history` never shows more than `kept`.
async fn save_transcript(
    db: &sea_orm::DatabaseConnection,
    saved: echo_transcript::ActiveModel,
    kept: u64,
) -> std::result::Result<(), sea_orm::DbErr> {
    let user = *saved.user_id.as_ref();
    let txn = db.begin().await?;
    saved.insert(&txn).await?;
    prune_transcripts(&txn, user, kept).await?;
    txn.commit().await
}

/// Deletes `user`'s transcripts but the newest `kept` (`ECHO_TRANSCRIPTS_PER_USER`).
async fn prune_transcripts(
    db: &impl sea_orm::ConnectionTrait,
    user: Uuid,
    kept: u64,
) -> std::result::Result<(), sea_orm::DbErr> {
    // Ids are UUIDv7: their order is the order the sessions were saved in.
    // At most one over the cap, so all of them are read (an OFFSET alone is
    // not SQL every backend takes).
    let ids: Vec<Uuid> = echo_transcript::Entity::find()
        .select_only()
        .column(echo_transcript::Column::Id)
        .filter(echo_transcript::Column::UserId.eq(user))
        .order_by_desc(echo_transcript::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let old: Vec<Uuid> = ids.into_iter().skip(kept as usize).collect();
    if !old.is_empty() {
        echo_transcript::Entity::delete_many()
            .filter(echo_transcript::Column::Id.is_in(old))
            .exec(db)
            .await?;
    }
    Ok(())
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// The close a read error deserves, as on `/ws/{room}`.
fn close_for(err: &axum::Error) -> Message {
    let (code, reason) = super::ws::read_error_close(err).unwrap_or((1002, "protocol error"));
    close_frame(code, reason)
}

async fn echo_locally(
    state: &AppState,
    mut socket: WebSocket,
    transcript: &mut Transcript,
    ended: impl std::future::Future<Output = Message>,
) -> anyhow::Result<()> {
    tokio::pin!(ended);
    loop {
        let message = tokio::select! {
            () = state.stop.cancelled() => {
                within(socket.send(close_frame(1012, "server shutting down"))).await?;
                return Ok(());
            }
            close = &mut ended => {
                within(socket.send(close)).await?;
                return Ok(());
            }
            message = socket.recv() => message,
        };
        match message {
            None => return Ok(()),
            // Flushing sends the close the protocol layer queued in answer.
            Some(Ok(Message::Close(_))) => {
                let _ = within(socket.close()).await;
                return Ok(());
            }
            Some(Err(err)) => {
                let _ = within(socket.send(close_for(&err))).await;
                return Err(err.into());
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                transcript.record("in", &message);
                transcript.record("out", &message);
                within(socket.send(message)).await?;
            }
            Some(Ok(_)) => {} // pings are answered by the protocol layer
        }
    }
}

/// A write that must end within the room sockets' send timeout
/// ([`timed`]): a client (or upstream) that stops reading must not hold
/// the socket, and its slot, past its token's end, a logout or a shutdown,
/// which are only seen between writes.
async fn within<E>(write: impl std::future::Future<Output = Result<(), E>>) -> anyhow::Result<()> {
    timed(write).await.map_err(|end| match end {
        End::Stalled => anyhow::anyhow!("the peer stopped reading"),
        _ => anyhow::anyhow!("the peer is gone"),
    })
}

async fn relay(
    state: &AppState,
    socket: WebSocket,
    url: &str,
    transcript: &mut Transcript,
    ended: impl std::future::Future<Output = Message>,
) -> anyhow::Result<()> {
    tokio::pin!(ended);
    let (mut client_tx, mut client_rx) = socket.split();
    let upstream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    let Ok(Ok((upstream, _))) = upstream else {
        let _ = within(client_tx.send(close_frame(1011, "echo upstream unavailable"))).await;
        anyhow::bail!("echo upstream {url} unavailable");
    };
    let (mut up_tx, mut up_rx) = upstream.split();
    loop {
        tokio::select! {
            () = state.stop.cancelled() => {
                let _ = within(up_tx.close()).await;
                within(client_tx.send(close_frame(1012, "server shutting down"))).await?;
                return Ok(());
            }
            close = &mut ended => {
                let _ = within(up_tx.close()).await;
                within(client_tx.send(close)).await?;
                return Ok(());
            }
            from_client = client_rx.next() => match from_client {
                None | Some(Ok(Message::Close(_))) => {
                    let _ = within(up_tx.close()).await;
                    let _ = within(client_tx.close()).await;
                    return Ok(());
                }
                Some(Err(err)) => {
                    let _ = within(client_tx.send(close_for(&err))).await;
                    return Err(err.into());
                }
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    transcript.record("in", &message);
                    let forwarded = match message {
                        Message::Text(text) => tungstenite::Message::Text(text.as_str().into()),
                        Message::Binary(data) => tungstenite::Message::Binary(data),
                        _ => unreachable!("matched above"),
                    };
                    within(up_tx.send(forwarded)).await?;
                }
                Some(Ok(_)) => {}
            },
            from_upstream = up_rx.next() => match from_upstream {
                None | Some(Ok(tungstenite::Message::Close(_))) | Some(Err(_)) => {
                    within(client_tx.send(close_frame(1011, "echo upstream closed"))).await?;
                    return Ok(());
                }
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let message = Message::Text(text.as_str().into());
                    transcript.record("out", &message);
                    within(client_tx.send(message)).await?;
                }
                Some(Ok(tungstenite::Message::Binary(data))) => {
                    let message = Message::Binary(data);
                    transcript.record("out", &message);
                    within(client_tx.send(message)).await?;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190d1a4-2a00-7000-8000-0000000000e1", "started_at": "2025-06-01T09:40:00Z",
    "ended_at": "2025-06-01T09:40:05Z",
    "frames": [{"dir": "in", "text": "ping"}, {"dir": "out", "text": "ping"}]
}))]
struct TranscriptView {
    id: Uuid,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    frames: Value,
}

#[utoipa::path(
    get,
    path = "/echo/history",
    tag = "sockets",
    summary = "Your echo transcripts, newest first",
    responses(
        (status = 200, description = "Transcripts", body = Vec<TranscriptView>), (status = 401),
        (status = 403)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// The caller's transcripts, newest first.
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<TranscriptView>>> {
    user.require_registered()?;
    let rows = echo_transcript::Entity::find()
        .filter(echo_transcript::Column::UserId.eq(user.id))
        .order_by_desc(echo_transcript::Column::StartedAt)
        .limit(HISTORY_LIMIT)
        .all(&state.db)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|t| TranscriptView {
                id: t.id,
                started_at: t.started_at,
                ended_at: t.ended_at,
                frames: serde_json::from_str(&t.frames).unwrap_or(Value::Array(Vec::new())),
            })
            .collect(),
    ))
}
