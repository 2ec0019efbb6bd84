//! The receiving side: WebSocket subscribers that count every `message`
//! frame, per socket, and time it against the send time in its content.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::{net::TcpStream, sync::watch, task::JoinHandle, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};
use uuid::Uuid;

use crate::{
    report::{self, histogram, now_nanos, parse_content},
    setup::{User, World},
};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting and receiving `welcome` may take.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Sockets opened at once.
const CONNECT_PARALLEL: usize = 32;
/// 429s one socket's connect waits out before setup gives up.
const CONNECT_RETRIES: u32 = 60;

/// Opens `{ws_base}/ws/{room}?history=0` with `token` and reads its
/// `welcome`. A 429 (one user opening sockets faster than
/// `SOCKET_CONNECT_BURST`/`SOCKET_CONNECT_RATE` allow) is waited out as its
/// `Retry-After` asks, up to [`CONNECT_RETRIES`] times.
pub async fn open(ws_base: &str, room: &str, token: &str) -> anyhow::Result<Socket> {
    let mut attempts = 0;
    loop {
        let opened = tokio::time::timeout(WELCOME_TIMEOUT, handshake(ws_base, room, token))
            .await
            .with_context(|| format!("room {room}: no welcome within {WELCOME_TIMEOUT:?}"))??;
        match opened {
            Ok(socket) => return Ok(socket),
            Err(_) if attempts >= CONNECT_RETRIES => {
                bail!("room {room}: connects still refused (429) after {attempts} retries")
            }
            Err(wait) => {
                attempts += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One attempt: the socket, or the wait a 429 asks for.
async fn handshake(
    ws_base: &str,
    room: &str,
    token: &str,
) -> anyhow::Result<Result<Socket, Duration>> {
    let mut request = format!("{ws_base}/ws/{room}?history=0").into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let mut socket = match connect_async_with_config(request, None, true).await {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(res)) if res.status() == 429 => {
            return Ok(Err(crate::publish::retry_after(res.headers())));
        }
        Err(err) => bail!("WebSocket to room {room}: {err}"),
    };
    while let Some(frame) = socket.next().await {
        if let Message::Text(text) = frame? {
            let frame: Frame = serde_json::from_str(&text)?;
            if frame.kind == "welcome" {
                return Ok(Ok(socket));
            }
            bail!("expected welcome in room {room}, got {text}");
        }
    }
    bail!("room {room}: socket closed before welcome")
}

/// The parts of a server frame bench reads.
#[derive(Debug, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub replay: bool,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    /// With `rate_limited`: how long to wait before sending that frame again.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// What one socket saw.
pub struct SocketTally {
    pub room: usize,
    /// Distinct message ids received.
    pub unique: u64,
    /// Frames whose id the socket already had.
    pub duplicates: u64,
    pub latency: Histogram<u64>,
    /// When this socket last got a new message.
    pub last_new: Option<Instant>,
    /// Why the socket ended before it was told to stop.
    pub ended: Option<String>,
}

/// Every subscriber socket of the run, receiving in tasks of their own.
pub struct Subscribers {
    tasks: Vec<JoinHandle<SocketTally>>,
    stop: watch::Sender<bool>,
    /// Distinct deliveries so far, over all sockets.
    pub delivered: Arc<AtomicU64>,
}

impl Subscribers {
    /// Opens `subs` sockets in each room, spread over the subscriber users, and
    /// starts counting once every one of them has its `welcome`.
    pub async fn open_all(ws_base: &str, world: &World, subs: u32) -> anyhow::Result<Self> {
        let users = &world.subscribers;
        let plan: Vec<(usize, &User)> = (0..world.rooms.len())
            .flat_map(|room| (0..subs as usize).map(move |j| (room, j)))
            .map(|(room, j)| (room, &users[(room * subs as usize + j) % users.len()]))
            .collect();
        let sockets: Vec<(usize, Socket)> = stream::iter(plan)
            .map(|(room, user)| async move {
                open(ws_base, &world.rooms[room].id, &user.token)
                    .await
                    .map(|socket| (room, socket))
            })
            .buffer_unordered(CONNECT_PARALLEL)
            .try_collect()
            .await?;
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let tasks = sockets
            .into_iter()
            .map(|(room, socket)| {
                tokio::spawn(receive(room, socket, stopped.clone(), delivered.clone()))
            })
            .collect();
        Ok(Self {
            tasks,
            stop,
            delivered,
        })
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Tells every socket to stop and collects what each saw.
    pub async fn finish(self) -> Vec<SocketTally> {
        let _ = self.stop.send(true);
        let mut tallies = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(tally) = task.await {
                tallies.push(tally);
            }
        }
        tallies
    }
}

/// Reads one socket until told to stop or until it ends.
async fn receive(
    room: usize,
    mut socket: Socket,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
) -> SocketTally {
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut tally = SocketTally {
        room,
        unique: 0,
        duplicates: 0,
        latency: histogram(),
        last_new: None,
        ended: None,
    };
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = socket.next() => frame,
        };
        let received = now_nanos();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                tally.ended = Some(close.map_or("closed".to_owned(), |c| {
                    format!("closed {} {}", u16::from(c.code), c.reason)
                }));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                tally.ended = Some(err.to_string());
                break;
            }
            None => {
                tally.ended = Some("connection ended".to_owned());
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        if frame.kind != "message" || frame.replay {
            continue;
        }
        let Some(id) = frame.id else { continue };
        if !seen.insert(id) {
            tally.duplicates += 1;
            continue;
        }
        tally.unique += 1;
        tally.last_new = Some(Instant::now());
        delivered.fetch_add(1, Ordering::Relaxed);
        if let Some((sent, _)) = frame.content.as_deref().and_then(parse_content) {
            report::record_latency(&mut tally.latency, sent, received);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    tally
}

/// Waits until `delivered` reaches `expected` or `deadline` passes.
pub async fn wait_for_deliveries(delivered: &AtomicU64, expected: u64, deadline: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tick.tick().await;
    }
}
