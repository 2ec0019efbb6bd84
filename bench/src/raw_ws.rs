//! `--mode raw-ws-fanout`: WebSocket fan-out alone, the ceiling for
//! roomcast's delivery to one room's sockets with one flush per frame.
//!
//! A server in this process, on a loopback port, accepts `--subs` sockets;
//! for each of `--messages` frames (serialised once, shared by every socket)
//! it hands the frame to every socket's task, which sends it with one write
//! and one flush each (`send`, not `feed` then `flush`). The clients, in this
//! process too, count what they receive and time it from the frame's send
//! time, as subscribers do. No broker, no database, no roomcast: what one
//! box does when every frame costs a flush.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    net::TcpListener,
    sync::mpsc,
    task::JoinSet,
    time::{Instant, timeout},
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::{
    cli::Args,
    report::{Summary, content, histogram, now_nanos, parse_content, record_latency},
    subscribe::wait_for_deliveries,
};

/// Frames a socket's task may fall behind by; the server waits beyond.
const SOCKET_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: &Args) -> anyhow::Result<Summary> {
    let clients = u64::from(args.subs);
    let total = args.messages;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let accepting = tokio::spawn(accept(listener, args.subs as usize));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = JoinSet::new();
    for _ in 0..clients {
        let (socket, _) = timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .context("connect timed out")??;
        receivers.spawn(receive(socket, total, delivered.clone()));
    }
    let senders = accepting.await.context("accept task")??;
    eprintln!("bench: raw-ws-fanout to {clients} sockets; sending {total} frames");

    let start = Instant::now();
    let pace = args.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    for seq in 0..total {
        let frame = Utf8Bytes::from(format!(
            r#"{{"type":"message","seq":{seq},"content":"{}"}}"#,
            content(now_nanos(), seq, args.size as usize)
        ));
        for sender in &senders {
            // A closed socket is counted by its receiver, not here.
            let _ = sender.send(frame.clone()).await;
        }
        if let Some(pace) = pace {
            tokio::time::sleep_until(start + pace * (seq as u32 + 1)).await;
        }
    }
    let publish_time = start.elapsed();
    let expected = total * clients;
    wait_for_deliveries(&delivered, expected, Instant::now() + args.drain_timeout).await;
    let end = Instant::now();
    drop(senders);
    let mut latency = histogram();
    let (mut unique, mut duplicates, mut closed, mut last_new) = (0, 0, 0, None);
    while let Some(tally) = receivers.join_next().await {
        let tally = tally.context("receiver task")?;
        latency.add(&tally.latency).context("latency histograms")?;
        unique += tally.unique;
        duplicates += tally.duplicates;
        closed += u64::from(tally.unique < total);
        last_new = last_new.max(tally.last_new);
    }
    Ok(Summary {
        mode: "raw-ws-fanout",
        rooms: 1,
        subs: clients,
        concurrency: 1,
        rate: args.rate,
        messages: total,
        accepted: total,
        publish_time,
        expected,
        delivered: unique,
        lost: expected.saturating_sub(unique),
        duplicates,
        delivery_time: last_new.map_or(end - start, |t| t - start),
        latency,
        retries: 0,
        closed,
        elapsed: end - start,
    })
}

/// Accepts `n` sockets; each gets a task that sends what its queue holds,
/// one flush per frame. Returns their queues.
async fn accept(listener: TcpListener, n: usize) -> anyhow::Result<Vec<mpsc::Sender<Utf8Bytes>>> {
    let mut senders = Vec::with_capacity(n);
    while senders.len() < n {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let mut socket = tokio_tungstenite::accept_async(stream).await?;
        let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(SOCKET_QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if socket.send(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            let _ = socket.close(None).await;
        });
        senders.push(tx);
    }
    Ok(senders)
}

struct Tally {
    unique: u64,
    duplicates: u64,
    latency: Histogram<u64>,
    last_new: Option<Instant>,
}

/// Counts the frames one client receives until it has `total` or the socket ends.
async fn receive(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    total: u64,
    delivered: Arc<AtomicU64>,
) -> Tally {
    let mut seen = HashSet::new();
    let mut tally = Tally {
        unique: 0,
        duplicates: 0,
        latency: histogram(),
        last_new: None,
    };
    while tally.unique < total {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            break;
        };
        let received = now_nanos();
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let Some((sent, seq)) = frame["content"].as_str().and_then(parse_content) else {
            continue;
        };
        if seen.insert(seq) {
            tally.unique += 1;
            tally.last_new = Some(Instant::now());
            record_latency(&mut tally.latency, sent, received);
            delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.duplicates += 1;
        }
    }
    tally
}
