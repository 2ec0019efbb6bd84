//! The WebSocket endpoint, `/ws/{room}` (alias `/updates/{room}`), as DESIGN.md §5.
//!
//! Everything that can refuse a client happens before the upgrade, as an HTTP
//! problem+json answer. After it, one task per socket: it subscribes to the
//! hub first, then replays history or `since`, so a message stored meanwhile
//! arrives both ways and the `seq` check drops the second copy.

use std::time::Duration;

use axum::{
    extract::{
        Path, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::HeaderMap,
    response::Response,
};
use chrono::Utc;
use consumer::{
    event::{MessageView, SenderView},
    hub::{CloseReason, Outbound, Subscription},
};
use entity::room;
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access,
    auth::{AuthUser, extractor::socket_user},
    error::Result,
    extract::QueryParams,
    frames::{Replayed, RoomView, ServerFrame},
    ingest,
    queries::messages::{self, Page},
    state::AppState,
};

/// Room a text frame has for its JSON envelope beyond `MAX_MESSAGE_BYTES` of
/// content: a plain-text frame over `MAX_MESSAGE_BYTES` and this is closed
/// with 1009. A JSON frame may be [`super::JSON_ESCAPE_FACTOR`] times
/// `MAX_MESSAGE_BYTES` and this (its content escaped), and its content is
/// what is checked.
const ENVELOPE_ALLOWANCE: usize = 512;
/// Bytes a socket reads from the network at a time. The library's default
/// (128 KiB, for sockets that read a lot) was most of an idle socket's cost;
/// room sockets mostly write, and a larger frame still arrives whole.
pub(super) const READ_BUFFER: usize = 4 * 1024;
/// A socket whose writes stall this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket we close waits for the client's answering close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const REPLAY_PAGE: u64 = 200;
/// Frames refused in a row for rate before the socket is closed (1008).
pub(super) const RATE_STRIKES: u32 = 20;
/// Room events written to a socket before one flush, at most.
const WRITE_BATCH: usize = 256;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connect))
        .routes(routes!(connect_updates))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    token: Option<String>,
    since: Option<i64>,
    history: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/ws/{room}",
    tag = "sockets",
    summary = "Open the room's WebSocket (see the WebSocket protocol); refusals come before the upgrade",
    params(("room" = String, Path, description = "The room's UUID or name"), WsQuery),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "Malformed request"), (status = 401), (status = 403),
        (status = 404), (status = 429, description = "Too many socket connects by this user (`rate_limited`), \
            too many rooms created (`rate_limited`), or too many open sockets (`too_many_sockets`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn connect(
    State(state): State<AppState>,
    Path(key): Path<String>,
    QueryParams(q): QueryParams<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response> {
    let user = socket_user(&state, &headers, q.token.clone()).await?;
    state.limits.check_connect(user.id)?;
    // Held for as long as the socket is open (`SOCKETS_PER_USER`).
    let slot = state.quotas.sockets.take(user.id)?;
    let room = access::enter(&state, &user, &key).await?;

    // Content of `MAX_MESSAGE_BYTES` however the client's JSON escapes it
    // (`\u0001` is six bytes for one; Python's default escapes every
    // character past ASCII): the size ingest checks is the content's.
    let limit =
        state.config.max_message_bytes as usize * super::JSON_ESCAPE_FACTOR + ENVELOPE_ALLOWANCE;
    let history = q
        .history
        .unwrap_or(state.config.history_on_connect)
        .min(REPLAY_PAGE as u32);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tracked = state.sockets.clone();
            tracked.track_future(async move {
                let session = Session { state, user, room };
                session.run(socket, q.since, history).await;
                drop(slot);
            })
        }))
}

#[utoipa::path(
    get,
    path = "/updates/{room}",
    tag = "sockets",
    summary = "Alias of /ws/{room}",
    params(("room" = String, Path, description = "The room's UUID or name"), WsQuery),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "Malformed request"), (status = 401), (status = 403),
        (status = 404), (status = 429, description = "Too many socket connects by this user (`rate_limited`), \
            too many rooms created (`rate_limited`), or too many open sockets (`too_many_sockets`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn connect_updates(
    state: State<AppState>,
    room: Path<String>,
    query: QueryParams<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response> {
    connect(state, room, query, headers, upgrade).await
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Message {
        content: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Ping,
}

struct Session {
    state: AppState,
    user: AuthUser,
    room: room::Model,
}

pub(super) type Sink = SplitSink<WebSocket, Message>;

/// Why the loop ended, and what to tell the client.
pub(super) enum End {
    Close(u16, &'static str),
    /// A write waited past `SEND_TIMEOUT`: the client stopped reading.
    Stalled,
    /// The client closed; the protocol layer has queued the answering close.
    ClosedByPeer,
    Gone,
}

impl Session {
    async fn run(self, socket: WebSocket, since: Option<i64>, history: u32) {
        let (mut sink, mut stream) = socket.split();
        let mut sub = self.state.hub.subscribe(self.room.id, self.user.id);
        // Among the user's sockets too: a user event (logout, password
        // change, deletion) closes it through the subscription's signal.
        let _account = self
            .state
            .hub
            .register_socket(crate::user_events::owner(&self.user), Some(sub.closer()));
        let _gauge = SocketGauge::open();
        // The room's events come to this node before `welcome` says so; a
        // socket that would miss them is told to come back.
        let end = if !sub.bound().await {
            tracing::warn!(room = %self.room.id, "the room's events could not be bound; closing the socket 1013");
            End::Close(1013, "try again later")
        } else {
            match self.start(&mut sink, since, history).await {
                Ok(last_seq) => self.serve(&mut sink, &mut stream, &mut sub, last_seq).await,
                Err(end) => end,
            }
        };
        let end = match end {
            End::Stalled => {
                // The hub counts the sockets it closes for a full queue; a
                // stalled write often comes after that, for the same socket.
                if *sub.close.borrow() != Some(CloseReason::SLOW_CONSUMER) {
                    metrics::counter!(consumer::metrics::SLOW_CONSUMER_DISCONNECTS).increment(1);
                }
                End::Close(
                    CloseReason::SLOW_CONSUMER.code,
                    CloseReason::SLOW_CONSUMER.reason,
                )
            }
            end => end,
        };
        drop(sub);
        finish(sink, stream, end).await;
    }

    /// Sends `welcome` and the replay; returns the last `seq` sent.
    async fn start(&self, sink: &mut Sink, since: Option<i64>, history: u32) -> Result<i64, End> {
        let (online, me) = (self.online(), self.me());
        let welcome = ServerFrame::Welcome {
            room: RoomView {
                id: self.room.id,
                name: &self.room.name,
                kind: self.room.kind,
            },
            user: &me,
            online: &online,
        };
        send_frame(sink, &welcome).await?;

        let db_error = |_| End::Close(1011, "internal error");
        let mut last_seq = since.unwrap_or(0).max(0);
        if since.is_some() {
            loop {
                let page = messages::history(
                    &self.state.db,
                    self.room.id,
                    Page::After(last_seq),
                    REPLAY_PAGE,
                )
                .await
                .map_err(db_error)?;
                let Some(last) = page.last() else { break };
                last_seq = last.seq;
                self.replay(sink, &page).await?;
            }
        } else if history > 0 {
            let mut page = messages::history(
                &self.state.db,
                self.room.id,
                Page::Before(None),
                u64::from(history),
            )
            .await
            .map_err(db_error)?;
            page.reverse();
            last_seq = page.last().map_or(0, |m| m.seq);
            self.replay(sink, &page).await?;
        }
        Ok(last_seq)
    }

    /// A page of history, written out as one flush.
    async fn replay(&self, sink: &mut Sink, page: &[MessageView]) -> Result<(), End> {
        let write = async {
            for message in page {
                let frame = ServerFrame::Message(Replayed {
                    message,
                    replay: true,
                });
                sink.feed(Message::Text(frame.to_text().into())).await?;
            }
            sink.flush().await
        };
        timed(write).await
    }

    /// The socket's life after the replay.
    async fn serve(
        &self,
        sink: &mut Sink,
        stream: &mut SplitStream<WebSocket>,
        sub: &mut Subscription,
        mut last_seq: i64,
    ) -> End {
        let config = &self.state.config;
        let limiter =
            crate::limits::socket_limiter(config.socket_message_burst, config.socket_message_rate);
        let mut refused_in_a_row = 0u32;
        let expires_in = (self.user.claims.exp - Utc::now().timestamp()).max(0) as u64;
        let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
        tokio::pin!(expiry);
        // Counted in the room's presence once the socket has lasted; the
        // count (and so the room's `left`) goes with this function's end.
        let settle = tokio::time::sleep(self.state.config.presence_delay);
        tokio::pin!(settle);
        // Made once, not on each turn of the loop: a socket of a busy room
        // turns it for every event, and each new wait on the shutdown token
        // takes a lock that every socket of the node shares.
        let stopping = self.state.stop.cancelled();
        tokio::pin!(stopping);
        let closing = close_reason(&mut sub.close);
        tokio::pin!(closing);
        let mut present = None;
        loop {
            // Biased: a close (shutdown, expiry, removal, full queue) wins
            // over sending what is still queued.
            tokio::select! {
                biased;
                () = &mut stopping => return End::Close(1012, "server shutting down"),
                () = &mut expiry => return End::Close(4001, "token expired"),
                () = &mut settle, if present.is_none() => {
                    present = Some(self.state.presence.arrive(self.room.id, self.me()));
                }
                reason = &mut closing => return End::Close(reason.code, reason.reason),
                outbound = sub.events.recv() => {
                    let Some(outbound) = outbound else { return End::Gone };
                    if let Err(end) = write_events(sink, outbound, &mut sub.events, &mut last_seq).await {
                        return end;
                    }
                }
                inbound = stream.next() => {
                    // Frames that are already buffered come without a wait:
                    // a flooding client would keep this task on its worker
                    // thread for thousands of them. This yields every
                    // budget's worth (128), so other sockets get their turn.
                    tokio::task::consume_budget().await;
                    let reply = match inbound {
                        None => return End::Gone,
                        Some(Err(err)) => return closing_error(&err),
                        // Plain text escapes nothing: over the limit, the
                        // frame is too big, as the contract has it.
                        Some(Ok(Message::Text(text)))
                            if !is_json(&text)
                                && text.len()
                                    > self.state.config.max_message_bytes as usize
                                        + ENVELOPE_ALLOWANCE =>
                        {
                            return End::Close(1009, "message too big");
                        }
                        Some(Ok(Message::Text(text))) => match limiter.check() {
                            Err(wait) => {
                                refused_in_a_row += 1;
                                if refused_in_a_row > RATE_STRIKES {
                                    return End::Close(1008, "rate limit exceeded");
                                }
                                Some(rate_limited(named_client_id(text.as_str()).as_deref(), wait))
                            }
                            Ok(()) => {
                                refused_in_a_row = 0;
                                self.handle_text(text.as_str()).await
                            }
                        },
                        Some(Ok(Message::Binary(_))) => return End::Close(1003, "binary frames are not supported"),
                        Some(Ok(Message::Close(_))) => return End::ClosedByPeer,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    };
                    if let Some(reply) = reply
                        && let Err(end) = send(sink, Message::Text(reply.into())).await
                    {
                        return end;
                    }
                }
            }
        }
    }

    /// One client text frame; returns the reply frame, if any.
    async fn handle_text(&self, text: &str) -> Option<String> {
        let frame = if is_json(text) {
            match serde_json::from_str::<Value>(text) {
                Err(err) => {
                    let detail = format!("not valid JSON: {err}");
                    return Some(ServerFrame::error("malformed_json", &detail, None).to_text());
                }
                Ok(value) => match serde_json::from_value::<ClientFrame>(value.clone()) {
                    Ok(frame) => frame,
                    Err(err) => {
                        let client_id = value.get("client_id").and_then(Value::as_str);
                        let code = if value
                            .get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t == "message" || t == "ping")
                        {
                            "invalid_frame"
                        } else {
                            "unknown_type"
                        };
                        let detail = err.to_string();
                        return Some(ServerFrame::error(code, &detail, client_id).to_text());
                    }
                },
            }
        } else {
            // Plain text is content as it stands, for people typing into a terminal client.
            ClientFrame::Message {
                content: text.to_owned(),
                client_id: None,
            }
        };
        match frame {
            ClientFrame::Ping => Some(ServerFrame::Pong.to_text()),
            ClientFrame::Message { content, client_id } => {
                // The user's budget, shared with HTTP and their other sockets.
                if let Err(wait) = self.state.quotas.take_message(&self.user) {
                    return Some(rate_limited(client_id.as_deref(), wait));
                }
                // Asked for every message: a member removed (or a guest
                // whose seat went) cannot post through a socket still open.
                let posted = match access::can_post(&self.state, &self.user, &self.room).await {
                    Ok(room) => {
                        ingest::publish(&self.state, &room, content, client_id.clone()).await
                    }
                    Err(err) => Err(err),
                };
                match posted {
                    Ok(accepted) => Some(
                        ServerFrame::Ack {
                            client_id: client_id.as_deref(),
                            id: accepted.id,
                        }
                        .to_text(),
                    ),
                    // A wait comes with a busy queue or broker (503 over
                    // HTTP), so that the client sends the frame again then.
                    Err(err) => Some(
                        ServerFrame::Error {
                            code: err.code,
                            detail: &err.detail,
                            client_id: client_id.as_deref(),
                            retry_after_ms: err.retry_after.map(|secs| secs * 1000),
                        }
                        .to_text(),
                    ),
                }
            }
        }
    }

    fn me(&self) -> SenderView {
        SenderView::new(
            self.user.id,
            self.user.username.as_str(),
            self.user.avatar_version,
        )
    }

    /// The users present in this room on this node, and this socket's own.
    fn online(&self) -> Vec<SenderView> {
        let mut online = self.state.presence.online(self.room.id);
        if !online.iter().any(|u| u.id == self.user.id) {
            online.push(self.me());
        }
        online
    }
}

/// Ends a socket as `end` says: our close frame (then [`linger`]), or the
/// answer to the client's close. A stall is a close 1013 (`slow_consumer`).
pub(super) async fn finish(mut sink: Sink, mut stream: SplitStream<WebSocket>, end: End) {
    let end = match end {
        End::Stalled => End::Close(
            CloseReason::SLOW_CONSUMER.code,
            CloseReason::SLOW_CONSUMER.reason,
        ),
        end => end,
    };
    match end {
        End::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let sent =
                tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
            if matches!(sent, Ok(Ok(()))) {
                linger(&mut stream).await;
            }
        }
        // Flushing sends the queued close and then ends the TCP connection.
        End::ClosedByPeer => {
            let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
        }
        End::Stalled | End::Gone => {}
    }
}

/// After our close: reads, and drops, what the client still sends until it
/// answers the close or goes, for at most `CLOSE_LINGER`. Dropping the
/// connection with the client's frames unread would reset it, and a reset
/// throws away the close frame if it is still on its way, queued behind what
/// a slow reader has not read yet.
async fn linger(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            tokio::task::consume_budget().await;
        }
    })
    .await;
}

/// The refusal of a frame over the socket's frame rate or the user's
/// message budget (`MESSAGE_BURST`, `MESSAGE_RATE`). It names the
/// frame's `client_id`, so that a client with several frames unacked knows
/// which one to send again, and when (`retry_after_ms`); without it such a
/// client waits for an `ack` that never comes.
fn rate_limited(client_id: Option<&str>, wait: Duration) -> String {
    ServerFrame::Error {
        code: "rate_limited",
        detail: "too many messages; send this one again after retry_after_ms",
        client_id,
        // Rounded up: a client that waits exactly this long gets in.
        retry_after_ms: Some(wait.as_micros().div_ceil(1000).max(1) as u64),
    }
    .to_text()
}

/// The `client_id` of a frame refused before it was read, if it names one.
fn named_client_id(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow, default)]
        client_id: Option<std::borrow::Cow<'a, str>>,
    }
    is_json(text)
        .then(|| serde_json::from_str::<Named>(text).ok())
        .flatten()
        .and_then(|named| named.client_id)
}

/// A client frame that starts with `{` is JSON; any other is content as it
/// stands.
fn is_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// A read error's close.
pub(super) fn closing_error(err: &axum::Error) -> End {
    read_error_close(err).map_or(End::Gone, |(code, reason)| End::Close(code, reason))
}

/// The close a read error calls for (RFC 6455 §7.4.1): 1009 over the size
/// limit, 1007 for text that is not UTF-8, 1002 for any other protocol
/// violation; `None` when the client is already gone.
pub(super) fn read_error_close(err: &axum::Error) -> Option<(u16, &'static str)> {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::{Error, error::ProtocolError};
    match err.source()?.downcast_ref::<Error>()? {
        Error::Capacity(_) => Some((1009, "message too big")),
        Error::Utf8(_) => Some((1007, "invalid UTF-8")),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some((1002, "protocol error")),
        _ => None,
    }
}

async fn send_frame(sink: &mut Sink, frame: &ServerFrame<'_>) -> Result<(), End> {
    send(sink, Message::Text(frame.to_text().into())).await
}

pub(super) async fn send(sink: &mut Sink, message: Message) -> Result<(), End> {
    timed(sink.send(message)).await
}

/// A write that must end within `SEND_TIMEOUT` (room and echo sockets).
pub(super) async fn timed<E>(write: impl Future<Output = Result<(), E>>) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Stalled),
    }
}

/// Writes `first` and the room events queued behind it (up to
/// [`WRITE_BATCH`]), then flushes once: a burst costs the socket one write to
/// the network, not one per frame. Each event's bytes are the ones the hub
/// handed to every socket of the room; nothing is serialised here. An event
/// whose `seq` the socket already sent (replay overlap, redelivery) is skipped.
async fn write_events<S>(
    sink: &mut S,
    first: Outbound,
    queue: &mut mpsc::Receiver<Outbound>,
    last_seq: &mut i64,
) -> Result<(), End>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let write = async {
        let (mut next, mut written) = (Some(first), 0);
        while let Some(outbound) = next.take() {
            if let Some(text) = fresh(outbound, last_seq) {
                sink.feed(Message::Text(text)).await?;
                written += 1;
            }
            if written < WRITE_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if written > 0 {
            sink.flush().await?;
        }
        Ok::<(), S::Error>(())
    };
    timed(write).await
}

/// The event's text, unless it is a message the socket already has.
fn fresh(outbound: Outbound, last_seq: &mut i64) -> Option<Utf8Bytes> {
    if let Some(seq) = outbound.seq {
        if seq <= *last_seq {
            return None;
        }
        *last_seq = seq;
    }
    Utf8Bytes::try_from(outbound.frame).ok()
}

/// The reason the hub gives once it wants the socket closed.
async fn close_reason(close: &mut watch::Receiver<Option<CloseReason>>) -> CloseReason {
    loop {
        if let Some(reason) = *close.borrow_and_update() {
            return reason;
        }
        if close.changed().await.is_err() {
            // The hub keeps the sender while the socket is subscribed.
            std::future::pending::<()>().await;
        }
    }
}

/// Counts an open socket in `roomcast_sockets` for as long as it lives.
pub(super) struct SocketGauge;

impl SocketGauge {
    pub(super) fn open() -> Self {
        metrics::gauge!(crate::metrics::SOCKETS).increment(1.0);
        Self
    }
}

impl Drop for SocketGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::SOCKETS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use bytes::Bytes;

    use super::*;

    /// A sink that keeps what it is given and counts its flushes.
    #[derive(Default)]
    struct Recorder {
        frames: Vec<String>,
        flushes: usize,
    }

    impl futures_util::Sink<Message> for Recorder {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            if let Message::Text(text) = item {
                self.frames.push(text.to_string());
            }
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn event(seq: Option<i64>, text: &str) -> Outbound {
        Outbound {
            seq,
            frame: Bytes::from(text.to_owned()),
        }
    }

    /// What is queued goes out in order with one flush, without the messages
    /// the socket already has; a queue longer than a batch takes more flushes.
    #[tokio::test]
    async fn queued_events_go_out_with_one_flush() {
        let (tx, mut rx) = mpsc::channel(1024);
        for (seq, text) in [
            (Some(2), "m2"),
            (None, "edit"),
            (Some(3), "m3"),
            (Some(4), "m4"),
        ] {
            tx.try_send(event(seq, text)).unwrap();
        }
        let (mut sink, mut last_seq) = (Recorder::default(), 2);
        let first = event(Some(1), "m1");
        assert!(
            write_events(&mut sink, first, &mut rx, &mut last_seq)
                .await
                .is_ok()
        );
        assert_eq!(sink.frames, ["edit", "m3", "m4"]);
        assert_eq!((sink.flushes, last_seq), (1, 4));

        for seq in 5..(5 + WRITE_BATCH as i64 + 10) {
            tx.try_send(event(Some(seq), "m")).unwrap();
        }
        let mut sink = Recorder::default();
        while let Ok(first) = rx.try_recv() {
            assert!(
                write_events(&mut sink, first, &mut rx, &mut last_seq)
                    .await
                    .is_ok()
            );
        }
        assert_eq!((sink.frames.len(), sink.flushes), (WRITE_BATCH + 10, 2));
    }
}
