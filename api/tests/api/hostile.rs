//! Clients that misbehave: one that stops reading, one that floods, many that
//! connect and drop, oversized and malformed frames, a slowloris. The other
//! users of the room must not notice.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

use crate::{
    helpers::{Api, Backend, TestEnv, spawn_app, spawn_env_node},
    ws_client::Ws,
};

/// Posts `n` messages of `size` bytes to `room`, 16 at a time; all must get 202.
async fn post_many(api: &Api, token: &str, room: &str, n: usize, size: usize) {
    let body = |i: usize| {
        let mut content = format!("m{i} ");
        content.extend(std::iter::repeat_n('x', size.saturating_sub(content.len())));
        json!({"room_id": room, "content": content})
    };
    stream::iter(0..n)
        .map(|i| {
            let request = api
                .client
                .post(api.url("/message"))
                .bearer_auth(token)
                .json(&body(i));
            async move {
                let res = request.send().await.unwrap();
                assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// The node's `roomcast_slow_consumer_disconnects_total`.
async fn slow_consumer_disconnects(api: &Api) -> f64 {
    let text = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("roomcast_slow_consumer_disconnects_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_i64().unwrap())
        .collect()
}

/// A socket that stops reading fills its queue and is closed with 1013;
/// the room goes on for everyone else; `since` gives it back everything.
async fn slow_consumer_is_closed_and_recovers_with_since(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    api.create_room(&alice, "busy", "public").await;
    let (mut reader, _) = Ws::join(app.addr, "/ws/busy?history=0", &bob).await;
    let mut lazy = Ws::join_small_window(app.addr, "/ws/busy?history=0", &carol).await;

    // More than the socket's queue (1024 frames) plus what the kernel buffers
    // (several MiB on loopback): 12 MB in all.
    const N: i64 = 3000;
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            got.push(reader.next_of(&["message"]).await["seq"].as_i64().unwrap());
        }
        got
    });
    // Once the server gave up on the lazy socket (its queue filled, or a send
    // waited past its deadline), the lazy client sends a keepalive, as a
    // client that lags but lives does, and only then reads again: what was
    // sent, then the close. The server must not drop the connection with the
    // keepalive unread: that resets it, and the reset throws away the close
    // still in flight behind megabytes of frames.
    let metrics = app.api();
    let lazy_reads = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while slow_consumer_disconnects(&metrics).await < 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no slow-consumer disconnect"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lazy.try_send_json(&json!({"type": "ping"})).await;
        lazy.read_until_end_with_reason().await
    });
    post_many(&api, &alice, "busy", N as usize, 4000).await;
    // The reader is not held back by the lazy socket.
    let got = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the room stalled")
        .unwrap();
    assert_eq!(got, (1..=N).collect::<Vec<_>>());

    let (frames, close) = lazy_reads.await.unwrap();
    let before = seqs(&frames);
    let (code, reason) = close.unwrap_or_else(|| {
        panic!(
            "the lazy socket ended without a close frame, after {} frames",
            before.len()
        )
    });
    assert_eq!((code, reason.as_str()), (1013, "slow_consumer"));
    assert!((before.len() as i64) < N, "the lazy socket got everything");
    let last = before.last().copied().unwrap_or(0);
    assert_eq!(before, (1..=last).collect::<Vec<_>>());

    // Reconnecting with `since` recovers the rest, no gap, no duplicate.
    let (mut again, _) = Ws::join(app.addr, &format!("/ws/busy?since={last}"), &carol).await;
    let mut rest = Vec::new();
    while rest.last() != Some(&N) {
        rest.push(again.next_of(&["message"]).await["seq"].as_i64().unwrap());
    }
    assert_eq!(rest, (last + 1..=N).collect::<Vec<_>>());
    eprintln!(
        "slow consumer: closed ({code}) after {} of {N} frames, {} recovered with since",
        before.len(),
        rest.len()
    );
}

crate::on_both_backends!(slow_consumer_is_closed_and_recovers_with_since);

/// Latency percentile `p` (0..=100) of `samples`, in milliseconds.
fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let Some(last) = samples.len().checked_sub(1) else {
        return 0.0;
    };
    let i = ((last as f64) * p / 100.0).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Two quiet users talk while, in the second phase, every kind of hostile
/// client goes at the same node. The quiet users lose nothing, are never
/// disconnected, and their latency is reported for both phases.
async fn hostile_clients_do_not_disturb_the_room(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    // A short header deadline, so that the slowloris is cut within the test.
    let node = spawn_env_node(&env, &[("HTTP_HEADER_TIMEOUT", "3")]);
    let addr = node.addr;
    let api = Arc::new(Api::new(addr));
    let (_, alice) = api.user("alice").await;
    let mut quiet = Vec::new();
    for name in ["bob", "dave"] {
        let (_, token) = api.user(name).await;
        quiet.push(token);
    }
    // One account per attacker: socket connects are limited per user.
    let mut attacker = Vec::new();
    for name in ["eve", "frank", "grace", "heidi"] {
        attacker.push(api.user(name).await.1);
    }
    api.create_room(&alice, "town", "public").await;

    // The quiet users: each records when each message came.
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    for token in &quiet {
        let (mut ws, _) = Ws::join(addr, "/ws/town?history=0", token).await;
        let stop = stop.clone();
        listeners.push(tokio::spawn(async move {
            let mut got: Vec<(String, i64, Instant)> = Vec::new();
            let mut quiet_for = Duration::ZERO;
            // Until the stream stopped and nothing came for two seconds.
            while !(stop.load(Ordering::Relaxed) && quiet_for > Duration::from_secs(2)) {
                match ws.poll_json(Duration::from_millis(250)).await {
                    Err(()) => panic!("a quiet user was disconnected"),
                    Ok(None) => quiet_for += Duration::from_millis(250),
                    Ok(Some(frame)) => {
                        quiet_for = Duration::ZERO;
                        if frame["type"] == "message" {
                            got.push((
                                frame["content"].as_str().unwrap().to_owned(),
                                frame["seq"].as_i64().unwrap(),
                                Instant::now(),
                            ));
                        }
                    }
                }
            }
            got
        }));
    }
    // Alice posts 20 messages a second over HTTP all along.
    let sent: Sent = Arc::default();
    let publisher = {
        let (api, sent, stop, alice) = (api.clone(), sent.clone(), stop.clone(), alice.clone());
        tokio::spawn(async move {
            let mut i = 0;
            let mut every = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                i += 1;
                let content = format!("q{i}");
                sent.lock().unwrap().insert(content.clone(), Instant::now());
                let res = api
                    .client
                    .post(api.url("/message"))
                    .bearer_auth(&alice)
                    .json(&json!({"room_id": "town", "content": content}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
            }
            i
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let hostile_from = Instant::now();
    let rss_quiet = peak_rss_mib(node.pid());
    let hostile = Arc::new(AtomicBool::new(true));
    let attackers = vec![
        tokio::spawn(flooder(addr, attacker[0].clone(), hostile.clone())),
        tokio::spawn(never_reads(addr, attacker[1].clone(), hostile.clone())),
        tokio::spawn(churn(addr, attacker[2].clone(), 1000, hostile.clone())),
        tokio::spawn(bad_frames(addr, attacker[3].clone(), hostile.clone())),
        tokio::spawn(slowloris(addr, 100, hostile.clone())),
    ];
    tokio::time::sleep(attack_phase()).await;
    hostile.store(false, Ordering::Relaxed);
    let hostile_until = Instant::now();
    let mut report = Vec::new();
    for attacker in attackers {
        report.push(attacker.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let rss_peak = peak_rss_mib(node.pid());

    let sent = sent.lock().unwrap().clone();
    let mut figures = Vec::new();
    for (who, listener) in ["bob", "dave"].iter().zip(listeners) {
        let got = listener.await.unwrap();
        let seqs: Vec<i64> = got.iter().map(|(_, seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=published).collect::<Vec<_>>(),
            "{who} missed or repeated a message"
        );
        let (mut calm, mut storm) = (Vec::new(), Vec::new());
        for (content, _, at) in &got {
            let sent_at = sent[content];
            let latency = *at - sent_at;
            if sent_at < hostile_from {
                calm.push(latency);
            } else if sent_at < hostile_until {
                storm.push(latency);
            }
        }
        figures.push(format!(
            "{who}: quiet p50 {:.1} ms p99 {:.1} ms ({} msgs), under attack p50 {:.1} ms p99 {:.1} ms ({} msgs)",
            percentile(&mut calm, 50.0),
            percentile(&mut calm, 99.0),
            calm.len(),
            percentile(&mut storm, 50.0),
            percentile(&mut storm, 99.0),
            storm.len(),
        ));
    }
    eprintln!(
        "hostile clients ({backend:?}): {}; {}; peak RSS {rss_quiet:.0} MiB before, \
         {rss_peak:.0} MiB after",
        figures.join("; "),
        report.join("; "),
    );
    assert!(rss_peak < 512.0, "peak RSS {rss_peak:.0} MiB");
}

/// Sends pings as fast as it can, without reading; must be closed with 1008
/// each time (or reset, when the close frame is lost to the flood still in
/// flight). Reconnects until the phase ends.
async fn flooder(addr: SocketAddr, token: String, on: Arc<AtomicBool>) -> String {
    let (mut closed, mut reset) = (0, 0);
    while on.load(Ordering::Relaxed) {
        let mut ws = enter(addr, &token).await;
        for _ in 0..2000 {
            if !ws.try_send_json(&json!({"type": "ping"})).await {
                break;
            }
        }
        match ws.read_until_end().await.1 {
            Some(code) => {
                assert_eq!(code, 1008, "the flooder's close code");
                closed += 1;
            }
            None => reset += 1,
        }
    }
    assert!(closed + reset > 0);
    format!(
        "flooder cut off {} times ({closed} with 1008, {reset} reset)",
        closed + reset
    )
}

/// Joins and never reads a frame again.
async fn never_reads(addr: SocketAddr, token: String, on: Arc<AtomicBool>) -> String {
    let _lazy = Ws::join_small_window(addr, "/ws/town?history=0", &token).await;
    while on.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    "one socket never read".to_owned()
}

/// Opens a socket, waiting out `429`s (socket connects are limited per user).
async fn enter(addr: SocketAddr, token: &str) -> Ws {
    loop {
        match Ws::try_join(addr, "/ws/town?history=0", token).await {
            Ok((ws, _)) => return ws,
            Err(refused) => assert_eq!(refused.status, 429, "{:?}", refused.body),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tries to open sockets in rounds of `n`, 8 at a time, each dropped right
/// after its `welcome`; at least one round, more while the attack lasts.
/// Past the per-user connect limit, most attempts get a `429`.
async fn churn(addr: SocketAddr, token: String, n: usize, on: Arc<AtomicBool>) -> String {
    let (mut opened, mut refused) = (0, 0);
    while opened + refused == 0 || on.load(Ordering::Relaxed) {
        let outcomes: Vec<bool> = stream::iter(0..n)
            .map(|_| {
                let token = token.clone();
                async move {
                    match Ws::try_join(addr, "/ws/town?history=0", &token).await {
                        Ok(_) => true,
                        Err(r) if r.status == 429 => false,
                        Err(r) => panic!("churn refused with {}: {:?}", r.status, r.body),
                    }
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let ok = outcomes.iter().filter(|&&ok| ok).count();
        opened += ok;
        refused += outcomes.len() - ok;
    }
    format!(
        "{} socket connects ({opened} opened and dropped, {refused} refused 429)",
        opened + refused
    )
}

/// How long the attack lasts: 8 s in the suite; `ROOMCAST_SOAK_SECS` makes
/// it a longer soak (RELIABILITY.md has the figures of a 120 s one).
fn attack_phase() -> Duration {
    let secs = std::env::var("ROOMCAST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// Oversized, binary and malformed frames, each on a fresh socket, in a loop.
async fn bad_frames(addr: SocketAddr, token: String, on: Arc<AtomicBool>) -> String {
    let mut rounds = 0;
    while on.load(Ordering::Relaxed) {
        let mut ws = enter(addr, &token).await;
        ws.send_text(&"x".repeat(64 * 1024)).await;
        assert_eq!(ws.read_until_close().await.1, 1009, "oversized frame");
        let mut ws = enter(addr, &token).await;
        ws.send_binary(vec![0xff; 100]).await;
        assert_eq!(ws.read_until_close().await.1, 1003, "binary frame");
        let mut ws = enter(addr, &token).await;
        ws.send_text("{\"type\": \"message\", \"content\": ").await;
        assert_eq!(ws.next_of(&["error"]).await["code"], "malformed_json");
        ws.send_json(&json!({"type": "message", "content": 42}))
            .await;
        assert_eq!(ws.next_of(&["error"]).await["code"], "invalid_frame");
        ws.close().await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    format!("{rounds} rounds of oversized, binary and malformed frames")
}

/// `n` HTTP connections that send a request's headers one byte a second;
/// the server must cut every one (its header deadline is 3 s here).
async fn slowloris(addr: SocketAddr, n: usize, on: Arc<AtomicBool>) -> String {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(tcp);
    }
    let mut dropped = 0;
    while on.load(Ordering::Relaxed) && !conns.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = conns.len();
        let mut alive = Vec::new();
        for mut tcp in conns {
            if tcp.write_all(b"X").await.is_ok() {
                alive.push(tcp);
            }
        }
        conns = alive;
        dropped += before - conns.len();
    }
    assert_eq!(dropped, n, "slowloris connections still open");
    format!("{n} slowloris connections, all cut by the server")
}

crate::on_both_backends!(hostile_clients_do_not_disturb_the_room);
