//! The sending side: which message goes when ([`Schedule`]), what was
//! accepted ([`Published`]), and the publishers over HTTP and WebSocket.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use serde_json::json;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    report::{content, now_nanos},
    setup::{Api, World},
    subscribe::{self, Frame},
};

/// How long a WebSocket publish waits for its `ack`.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The wait before retrying after a transport error or a 503 without Retry-After.
const RETRY_DEFAULT: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The wait after a WebSocket frame was refused for rate (the server frees a
/// slot every 50 ms).
const RATE_LIMITED_WAIT: Duration = Duration::from_millis(100);

/// Hands out message numbers `0..total`, message `n` going to room `n % rooms`,
/// each no earlier than `n / rate` seconds after the start when a rate is set.
pub struct Schedule {
    total: u64,
    rooms: u64,
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
    next: AtomicU64,
    next_in_room: Vec<AtomicU64>,
}

impl Schedule {
    /// Starts the clock now; nothing is handed out after `limit`.
    pub fn new(total: u64, rooms: u64, rate: Option<f64>, limit: Duration) -> Self {
        let start = Instant::now();
        Self {
            total,
            rooms,
            rate,
            start,
            deadline: start + limit,
            next: AtomicU64::new(0),
            next_in_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// The next message of the run, whatever its room; waits for its turn.
    pub async fn next(&self) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.admit(n).await
    }

    /// The next message of `room`; waits for its turn.
    pub async fn next_in(&self, room: usize) -> Option<u64> {
        let k = self.next_in_room[room].fetch_add(1, Ordering::Relaxed);
        self.admit(k.saturating_mul(self.rooms).saturating_add(room as u64))
            .await
    }

    async fn admit(&self, n: u64) -> Option<u64> {
        if n >= self.total || Instant::now() >= self.deadline {
            return None;
        }
        if let Some(rate) = self.rate {
            let at = self.start + Duration::from_secs_f64(n as f64 / rate);
            if at >= self.deadline {
                return None;
            }
            tokio::time::sleep_until(at).await;
        }
        Some(n)
    }
}

/// What the publishers achieved, shared between them.
pub struct Published {
    start: Instant,
    accepted: AtomicU64,
    per_room: Vec<AtomicU64>,
    retries: AtomicU64,
    /// Microseconds from the start to the last acceptance.
    last_accept_us: AtomicU64,
    first_error: Mutex<Option<String>>,
    errors: AtomicU64,
}

impl Published {
    pub fn new(start: Instant, rooms: usize) -> Self {
        Self {
            start,
            accepted: AtomicU64::new(0),
            per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            retries: AtomicU64::new(0),
            last_accept_us: AtomicU64::new(0),
            first_error: Mutex::new(None),
            errors: AtomicU64::new(0),
        }
    }

    pub fn accept(&self, room: usize) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.per_room[room].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_accept_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A message given up on (or a publisher that stopped), with why.
    pub fn error(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("error slot");
        first.get_or_insert(why);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn accepted_in(&self, room: usize) -> u64 {
        self.per_room[room].load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// From the start to the last acceptance.
    pub fn publish_time(&self) -> Duration {
        Duration::from_micros(self.last_accept_us.load(Ordering::Relaxed))
    }

    /// How many things went wrong, and the first of them.
    pub fn errors(&self) -> (u64, Option<String>) {
        (
            self.errors.load(Ordering::Relaxed),
            self.first_error.lock().expect("error slot").clone(),
        )
    }
}

/// What every publisher needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run prefix, in every `client_id`.
    pub prefix: String,
    /// Content padded to this many bytes.
    pub size: usize,
    pub max_retries: u32,
    pub concurrency: usize,
    /// Most messages per second one publisher socket sends.
    pub ws_socket_rate: Option<f64>,
    /// Most frames one publisher socket has unacked.
    pub ws_window: usize,
}

impl Plan {
    fn client_id(&self, n: u64) -> String {
        format!("{}-{n}", self.prefix)
    }
}

/// `concurrency` tasks posting `POST /message`, each one request at a time.
pub async fn over_http(
    api: &Api,
    world: &World,
    plan: &Plan,
    schedule: Arc<Schedule>,
    published: Arc<Published>,
) {
    let rooms: Arc<Vec<String>> = Arc::new(world.rooms.iter().map(|r| r.id.clone()).collect());
    let token: Arc<str> = world.publisher.token.as_str().into();
    let plan = Arc::new(plan.clone());
    let mut tasks = JoinSet::new();
    for _ in 0..plan.concurrency {
        let (api, rooms, token, plan, schedule, published) = (
            api.clone(),
            rooms.clone(),
            token.clone(),
            plan.clone(),
            schedule.clone(),
            published.clone(),
        );
        tasks.spawn(async move {
            let url = api.url("/message");
            while let Some(n) = schedule.next().await {
                let room = (n % rooms.len() as u64) as usize;
                let client_id = plan.client_id(n);
                let mut attempt = 0;
                loop {
                    let body = json!({
                        "room_id": rooms[room],
                        "content": content(now_nanos(), n, plan.size),
                        "client_id": client_id,
                    });
                    let res = api
                        .client
                        .post(&url)
                        .bearer_auth(&*token)
                        .json(&body)
                        .send()
                        .await;
                    // Retrying is safe: the same client_id gives the same message id.
                    let (wait, why) = match res {
                        Ok(res) if res.status() == 202 => {
                            // Read the body so the connection goes back to the pool.
                            let _ = res.bytes().await;
                            published.accept(room);
                            break;
                        }
                        // 503: the broker's backlog; 429: past the user's
                        // message budget (`MESSAGE_BURST`, `MESSAGE_RATE`).
                        Ok(res) if matches!(res.status().as_u16(), 429 | 503) => {
                            let why = format!("HTTP {}", res.status().as_u16());
                            (retry_after(res.headers()), why)
                        }
                        Ok(res) => {
                            let status = res.status();
                            let body = res.text().await.unwrap_or_default();
                            published.error(format!("POST /message: HTTP {status} {body}"));
                            break;
                        }
                        Err(err) => (RETRY_DEFAULT, err.to_string()),
                    };
                    if attempt >= plan.max_retries {
                        published.error(format!("POST /message: {why} after {attempt} retries"));
                        break;
                    }
                    attempt += 1;
                    published.retry();
                    tokio::time::sleep(wait).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The wait a 429 or 503 asks for (`Retry-After`), within reason.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .unwrap_or(RETRY_DEFAULT)
        .min(RETRY_MAX)
}

/// Publisher sockets, opened before the clock starts: `ceil(concurrency /
/// (rooms × window))` in each room, since a socket publishes only into its
/// own room and has at most `window` frames unacked.
pub struct WsPublishers {
    sockets: Vec<(usize, subscribe::Socket)>,
}

impl WsPublishers {
    pub async fn open(
        api: &Api,
        world: &World,
        concurrency: usize,
        window: usize,
    ) -> anyhow::Result<Self> {
        let per_room = concurrency
            .div_ceil(world.rooms.len() * window.max(1))
            .max(1);
        let ws_base = api.ws_base();
        let token = &world.publisher.token;
        let plan: Vec<usize> = (0..world.rooms.len())
            .flat_map(|room| std::iter::repeat_n(room, per_room))
            .collect();
        let sockets = stream::iter(plan)
            .map(|room| {
                let ws_base = &ws_base;
                async move {
                    subscribe::open(ws_base, &world.rooms[room].id, token)
                        .await
                        .map(|socket| (room, socket))
                }
            })
            .buffer_unordered(32)
            .try_collect()
            .await
            .context("publisher sockets")?;
        Ok(Self { sockets })
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Each socket sends `message` frames for its room, at most
    /// `plan.ws_window` unacked; a semaphore keeps at most `concurrency`
    /// unacked over all of them.
    pub async fn run(self, plan: &Plan, schedule: Arc<Schedule>, published: Arc<Published>) {
        let plan = Arc::new(plan.clone());
        let in_flight = Arc::new(Semaphore::new(plan.concurrency));
        let mut tasks = JoinSet::new();
        for (room, socket) in self.sockets {
            let publisher = WsPublisher {
                room,
                plan: plan.clone(),
                schedule: schedule.clone(),
                published: published.clone(),
                in_flight: in_flight.clone(),
            };
            tasks.spawn(publisher.run(socket));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// One publisher socket.
struct WsPublisher {
    room: usize,
    plan: Arc<Plan>,
    schedule: Arc<Schedule>,
    published: Arc<Published>,
    in_flight: Arc<Semaphore>,
}

/// A message sent and not yet acked, or waiting to be sent again.
struct Pending {
    n: u64,
    attempt: u32,
    /// Its places in the socket's window and in the run's `concurrency`.
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// What the reader hands back to the sender: a message to send again, when.
struct Resend {
    at: Instant,
    pending: Pending,
}

/// The socket's unacked messages by `client_id`, shared by its sender and reader.
type Unacked = Arc<Mutex<HashMap<String, Pending>>>;

/// What the reader shares with the sender.
struct Replies {
    unacked: Unacked,
    /// Notified when the last unacked message is answered.
    settled: Arc<Notify>,
    resend: mpsc::UnboundedSender<Resend>,
}

/// The sender's side of one publisher socket.
struct Sender {
    /// Messages the reader hands back to be sent again.
    resend: mpsc::UnboundedReceiver<Resend>,
    /// Places for unacked messages on this socket.
    window: Arc<Semaphore>,
    unacked: Unacked,
    /// Woken by the reader when the socket has nothing unacked.
    settled: Arc<Notify>,
    /// The schedule has no more messages for this room.
    exhausted: bool,
    /// Not before this instant: the socket's pacing and the server's `Retry-After`.
    next_send: Instant,
}

impl Sender {
    fn again(&mut self, again: Resend) -> Pending {
        self.next_send = self.next_send.max(again.at);
        again.pending
    }
}

impl WsPublisher {
    /// A sender loop and a reader task: the reader matches `ack` and
    /// `error` frames to unacked messages by `client_id` (and drains the
    /// room's broadcasts, which a publisher gets too), freeing their places
    /// or handing them back to be sent again.
    async fn run(self, socket: subscribe::Socket) {
        let (mut sink, source) = socket.split();
        let unacked: Unacked = Arc::default();
        let settled = Arc::new(Notify::new());
        let (resend_tx, resend) = mpsc::unbounded_channel::<Resend>();
        let reader = tokio::spawn(read_replies(
            source,
            Replies {
                unacked: unacked.clone(),
                settled: settled.clone(),
                resend: resend_tx,
            },
            self.plan.clone(),
            self.published.clone(),
            self.room,
        ));
        let mut sender = Sender {
            resend,
            window: Arc::new(Semaphore::new(self.plan.ws_window.max(1))),
            unacked: unacked.clone(),
            settled,
            exhausted: false,
            next_send: Instant::now(),
        };
        // Keep under the server's per-socket message rate, so frames are not refused.
        let spacing = self
            .plan
            .ws_socket_rate
            .map(|rate| Duration::from_secs_f64(1.0 / rate));
        while let Some(pending) = self.next_pending(&mut sender).await {
            tokio::time::sleep_until(sender.next_send).await;
            if let Some(spacing) = spacing {
                sender.next_send = Instant::now() + spacing;
            }
            let client_id = self.plan.client_id(pending.n);
            let frame = json!({
                "type": "message",
                "content": content(now_nanos(), pending.n, self.plan.size),
                "client_id": client_id,
            });
            unacked.lock().expect("unacked").insert(client_id, pending);
            if let Err(err) = sink.send(Message::Text(frame.to_string().into())).await {
                self.published.error(format!("publisher socket: {err}"));
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        reader.abort();
    }

    /// The next message to send: one handed back first, then a new one while
    /// the schedule has any; then `None` once the last acks are in (or the
    /// reader is gone, or nothing came for [`ACK_TIMEOUT`]).
    async fn next_pending(&self, sender: &mut Sender) -> Option<Pending> {
        loop {
            if let Ok(again) = sender.resend.try_recv() {
                return Some(sender.again(again));
            }
            if !sender.exhausted {
                // Waiting for a place in the window must not keep this task
                // from the messages handed back, which hold places themselves.
                let next = tokio::select! {
                    again = sender.resend.recv() => Ok(again),
                    permits = self.permits(&sender.window) => Err(permits),
                };
                match next {
                    Ok(again) => return again.map(|again| sender.again(again)),
                    Err(Some(permits)) => match self.schedule.next_in(self.room).await {
                        Some(n) => {
                            let _permits = permits;
                            return Some(Pending {
                                n,
                                attempt: 0,
                                _permits,
                            });
                        }
                        None => sender.exhausted = true,
                    },
                    Err(None) => {
                        let stuck = sender.unacked.lock().expect("unacked").len();
                        self.published.error(format!(
                            "WS publish: stalled, no ack for {ACK_TIMEOUT:?} ({stuck} unacked on the socket)"
                        ));
                        sender.exhausted = true;
                    }
                }
                continue;
            }
            if sender.unacked.lock().expect("unacked").is_empty() {
                return None;
            }
            let settled = sender.settled.clone();
            let next = tokio::select! {
                again = sender.resend.recv() => Some(again),
                () = settled.notified() => None,
                () = tokio::time::sleep(ACK_TIMEOUT) => {
                    let stuck = sender.unacked.lock().expect("unacked").len();
                    self.published.error(format!(
                        "WS publish: {stuck} messages unacked after {ACK_TIMEOUT:?} without a reply"
                    ));
                    return None;
                }
            };
            match next {
                // The reader is gone: nothing more will be acked.
                Some(None) => return None,
                Some(Some(again)) => return Some(sender.again(again)),
                None => continue,
            }
        }
    }

    /// A place in the socket's window and then in the run's `concurrency`;
    /// `None` when they stay taken for [`ACK_TIMEOUT`] (no acks: a stall).
    async fn permits(
        &self,
        window: &Arc<Semaphore>,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let places = async {
            let mine = window.clone().acquire_owned().await.ok()?;
            let run = self.in_flight.clone().acquire_owned().await.ok()?;
            Some((mine, run))
        };
        tokio::time::timeout(ACK_TIMEOUT, places).await.ok()?
    }
}

/// Reads the socket: an `ack` accepts its message; a `rate_limited` or
/// `broker_unavailable` error hands it back to be sent again after the wait
/// the server asks for; any other error fails it. An error without a
/// `client_id` (an older server's rate refusal) is about the one unacked
/// message when there is one, and otherwise cannot be matched: the message it
/// was about stays unacked, which is how a publisher with many frames in
/// flight stalled against such a server.
async fn read_replies(
    mut source: futures_util::stream::SplitStream<subscribe::Socket>,
    replies: Replies,
    plan: Arc<Plan>,
    published: Arc<Published>,
    room: usize,
) {
    let Replies {
        unacked,
        settled,
        resend,
    } = replies;
    while let Some(Ok(frame)) = source.next().await {
        let Message::Text(text) = frame else { continue };
        // Cheap filter first: most frames are the room's broadcasts.
        if !(text.contains("\"ack\"") || text.contains("\"error\"")) {
            continue;
        }
        let Ok(reply) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        let mut unacked_now = unacked.lock().expect("unacked");
        let key = match reply.client_id.clone() {
            Some(id) => id,
            None if reply.kind == "error" && unacked_now.len() == 1 => {
                unacked_now.keys().next().cloned().unwrap_or_default()
            }
            None if reply.kind == "error" => {
                published.error(format!(
                    "WS publish: error {} without a client_id, {} unacked: cannot tell which to resend",
                    reply.code.as_deref().unwrap_or_default(),
                    unacked_now.len()
                ));
                continue;
            }
            None => continue,
        };
        let Some(mut pending) = unacked_now.remove(&key) else {
            continue;
        };
        if unacked_now.is_empty() {
            settled.notify_one();
        }
        drop(unacked_now);
        if reply.kind == "ack" {
            published.accept(room);
            continue;
        }
        let wait = match retry_wait(&reply) {
            Ok(wait) => wait,
            Err(why) => {
                published.error(why);
                continue;
            }
        };
        if pending.attempt >= plan.max_retries {
            published.error(format!(
                "WS publish: {} after {} retries",
                reply.code.as_deref().unwrap_or_default(),
                pending.attempt
            ));
            continue;
        }
        pending.attempt += 1;
        published.retry();
        let again = Resend {
            at: Instant::now() + wait,
            pending,
        };
        if resend.send(again).is_err() {
            return;
        }
    }
}

/// How long to wait before sending a refused message again, or why not to.
fn retry_wait(reply: &Frame) -> Result<Duration, String> {
    match reply.code.as_deref() {
        Some("rate_limited") => Ok(reply
            .retry_after_ms
            .map_or(RATE_LIMITED_WAIT, Duration::from_millis)),
        Some("broker_unavailable") => Ok(RETRY_DEFAULT),
        code => Err(format!(
            "WS publish: error {} {}",
            code.unwrap_or_default(),
            reply.detail.as_deref().unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_message_once_whether_by_room_or_not() {
        let by_room = Schedule::new(10, 3, None, Duration::from_secs(5));
        let mut seen = Vec::new();
        for room in 0..3 {
            while let Some(n) = by_room.next_in(room).await {
                assert_eq!(n % 3, room as u64);
                seen.push(n);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());

        let any = Schedule::new(4, 3, None, Duration::from_secs(5));
        let mut all = Vec::new();
        while let Some(n) = any.next().await {
            all.push(n);
        }
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_rate_spaces_messages_out() {
        let paced = Schedule::new(5, 1, Some(50.0), Duration::from_secs(60));
        while paced.next().await.is_some() {}
        let took = paced.start().elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }
}
