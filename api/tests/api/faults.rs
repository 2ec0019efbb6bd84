//! Faults under a steady stream of messages: a node killed with SIGKILL,
//! RabbitMQ stopped and started, PostgreSQL stopped and started. In every
//! case, each message that got a 202 or an `ack` ends up in history exactly
//! once, and subscribers see every `seq` with no gap.
//!
//! The `outage_*` tests stop a service the whole machine shares, so nextest
//! runs them alone (`.config/nextest.toml`); a guard restarts the service
//! even when the test fails.

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::Instant};

use crate::{
    helpers::{Api, Backend, TestEnv, spawn_env_node},
    ws_client::Ws,
};

/// What one attempt to publish got.
#[derive(Debug, Clone)]
enum Outcome {
    /// 202 or `ack`: the message id.
    Accepted(String),
    /// A clear refusal: 503 with its `code`, or a WebSocket `error`.
    Refused(String),
    /// No answer: the node is gone.
    NoAnswer,
}

/// Every attempt of one publisher, with its time.
type Log = Vec<(Instant, Outcome)>;

/// Posts `POST /message` round-robin over the nodes still marked alive,
/// every `gap`, until `stop`; keeps the slowest answer's milliseconds in
/// `slowest`.
fn http_publisher(
    apis: Arc<Vec<Api>>,
    alive: Arc<Vec<AtomicBool>>,
    token: String,
    room: &'static str,
    gap: Duration,
    stop: Arc<AtomicBool>,
    slowest: Arc<AtomicU64>,
) -> JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Log::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let n = i % apis.len();
            i += 1;
            if !alive[n].load(Ordering::Relaxed) {
                continue;
            }
            let api = &apis[n];
            let started = Instant::now();
            let sent = api
                .client
                .post(api.url("/message"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(15))
                .json(&json!({"room_id": room, "content": format!("h{i}")}))
                .send()
                .await;
            let outcome = match sent {
                Err(_) => Outcome::NoAnswer,
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res.headers().contains_key("retry-after");
                    let body: Value = res.json().await.unwrap_or(Value::Null);
                    match status {
                        202 => Outcome::Accepted(body["id"].as_str().unwrap().to_owned()),
                        503 => {
                            assert!(retry_after, "a 503 without Retry-After: {body}");
                            Outcome::Refused(body["code"].as_str().unwrap().to_owned())
                        }
                        other => panic!("POST /message answered {other}: {body}"),
                    }
                }
            };
            let took = started.elapsed().as_millis() as u64;
            slowest.fetch_max(took, Ordering::Relaxed);
            log.push((Instant::now(), outcome));
            tokio::time::sleep(gap).await;
        }
        log
    })
}

/// Sends `message` frames on one socket, each waiting for its `ack` or
/// `error`, every `gap` (under the socket's rate limit), until `stop` or
/// until the socket dies.
fn ws_publisher(
    mut ws: Ws,
    tag: &'static str,
    gap: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Log> {
    tokio::spawn(async move {
        let mut log = Log::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let client_id = format!("{tag}-{i}");
            let frame = json!({"type": "message", "content": client_id, "client_id": client_id});
            if !ws.try_send_json(&frame).await {
                log.push((Instant::now(), Outcome::NoAnswer));
                break;
            }
            let outcome = loop {
                match ws.poll_json(Duration::from_secs(15)).await {
                    Err(()) | Ok(None) => break Outcome::NoAnswer,
                    Ok(Some(reply)) if reply["client_id"] != client_id => {}
                    Ok(Some(reply)) if reply["type"] == "ack" => {
                        break Outcome::Accepted(reply["id"].as_str().unwrap().to_owned());
                    }
                    Ok(Some(reply)) => {
                        assert_eq!(reply["type"], "error", "{reply}");
                        break Outcome::Refused(reply["code"].as_str().unwrap().to_owned());
                    }
                }
            };
            let dead = matches!(outcome, Outcome::NoAnswer);
            log.push((Instant::now(), outcome));
            if dead {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        log
    })
}

/// What a subscriber saw: each message's `seq` and when it came, and
/// whether its socket died.
struct Seen {
    seqs: Vec<(i64, Instant)>,
    dropped: bool,
}

/// Records message frames until the socket dies, or until `until` is set and
/// the last seen `seq` reaches it (giving up 30 s after `until` is set).
fn subscriber(mut ws: Ws, until: tokio::sync::watch::Receiver<Option<i64>>) -> JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut give_up: Option<Instant> = None;
        loop {
            if let Some(target) = *until.borrow() {
                let give_up =
                    *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                let reached = seqs.last().is_some_and(|&(seq, _)| seq >= target);
                if reached || Instant::now() > give_up {
                    return Seen {
                        seqs,
                        dropped: false,
                    };
                }
            }
            match ws.poll_json(Duration::from_millis(250)).await {
                Err(()) => {
                    return Seen {
                        seqs,
                        dropped: true,
                    };
                }
                Ok(Some(frame)) if frame["type"] == "message" => {
                    seqs.push((frame["seq"].as_i64().unwrap(), Instant::now()));
                }
                Ok(_) => {}
            }
        }
    })
}

/// The accepted ids in publisher logs, and how many refusals of each kind.
fn tally(logs: &[Log]) -> (Vec<String>, Vec<(Instant, Outcome)>) {
    let mut accepted = Vec::new();
    let mut all: Vec<(Instant, Outcome)> = logs.iter().flatten().cloned().collect();
    all.sort_by_key(|(t, _)| *t);
    for (_, outcome) in &all {
        if let Outcome::Accepted(id) = outcome {
            accepted.push(id.clone());
        }
    }
    (accepted, all)
}

/// The room's whole history (id, seq), oldest first, once it holds at least
/// `n` messages or 60 s have passed.
async fn history(api: &Api, token: &str, room: &str, n: usize) -> Vec<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let res = api
                .client
                .get(api.url(&format!("/rooms/{room}/messages?after={after}&limit=200")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let page: Vec<Value> = res.json().await.unwrap();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_i64().unwrap();
            all.extend(page.iter().map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["seq"].as_i64().unwrap(),
                )
            }));
        }
        if all.len() >= n || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every accepted id is stored exactly once; seqs run 1..=n with no gap.
fn assert_stored_once(accepted: &[String], stored: &[(String, i64)]) {
    let ids: HashSet<&String> = stored.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), stored.len(), "a message was stored twice");
    let lost: Vec<&String> = accepted.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} accepted messages lost: {lost:?}",
        lost.len()
    );
    let seqs: Vec<i64> = stored.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "history has a gap"
    );
}

/// A subscriber's seqs run from its first to `last` with no gap and no
/// duplicate; returns the longest pause between two deliveries.
fn assert_contiguous(who: &str, seen: &[(i64, Instant)], last: i64) -> Duration {
    assert!(!seen.is_empty(), "{who} received nothing");
    let first = seen[0].0;
    let seqs: Vec<i64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (first..=last).collect::<Vec<_>>(),
        "{who}: a gap or a duplicate"
    );
    seen.windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default()
}

/// Three nodes under a stream of HTTP posts and socket messages; node 0 —
/// the first, so the store stage's active consumer — is killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_under_stream_loses_nothing() {
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    let mut nodes = vec![spawn_env_node(&env, &[("NODE_ID", "node0")])];
    for i in 1..3 {
        nodes.push(spawn_env_node(&env, &[("NODE_ID", &format!("node{i}"))]));
    }
    let apis: Arc<Vec<Api>> = Arc::new(nodes.iter().map(|n| Api::new(n.addr)).collect());
    let alive: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(true)).collect());
    let (_, alice) = apis[0].user("alice").await;
    let (_, bob) = apis[0].user("bob").await;
    apis[0].create_room(&alice, "steady", "public").await;

    let (until_tx, until) = tokio::sync::watch::channel(None);
    let mut subs = Vec::new();
    for node in &nodes {
        let (ws, _) = Ws::join(node.addr, "/ws/steady?history=0", &bob).await;
        subs.push(subscriber(ws, until.clone()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = vec![http_publisher(
        apis.clone(),
        alive.clone(),
        alice.clone(),
        "steady",
        Duration::from_millis(5),
        stop.clone(),
        Arc::default(),
    )];
    for (n, tag) in [(0, "ws0"), (1, "ws1")] {
        let (ws, _) = Ws::join(nodes[n].addr, "/ws/steady?history=0", &alice).await;
        publishers.push(ws_publisher(
            ws,
            tag,
            Duration::from_millis(70),
            stop.clone(),
        ));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    alive[0].store(false, Ordering::Relaxed);
    let killed_at = Instant::now();
    nodes[0].kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);

    let mut logs = Vec::new();
    for p in publishers {
        logs.push(p.await.unwrap());
    }
    let (accepted, all) = tally(&logs);
    let stored = history(&apis[1], &alice, "steady", accepted.len()).await;
    assert_stored_once(&accepted, &stored);
    let last = stored.last().unwrap().1;

    // Node 0's subscriber lost its socket; it comes back on node 1 with `since`.
    let first = subs.remove(0).await.unwrap();
    assert!(first.dropped, "node 0's socket outlived node 0");
    let since = first.seqs.last().map_or(0, |s| s.0);
    let (ws, _) = Ws::join(nodes[1].addr, &format!("/ws/steady?since={since}"), &bob).await;
    until_tx.send(Some(last)).unwrap();
    let again = subscriber(ws, until.clone()).await.unwrap();
    let mut moved = first.seqs;
    moved.extend(again.seqs);
    assert_contiguous("node 0's subscriber after reconnecting", &moved, last);
    // The survivors' subscribers never lost their sockets nor a message.
    let mut longest = Duration::ZERO;
    for (i, sub) in subs.into_iter().enumerate() {
        let seen_by = sub.await.unwrap();
        assert!(!seen_by.dropped, "node {}'s socket dropped", i + 1);
        let pause = assert_contiguous(&format!("node {}'s subscriber", i + 1), &seen_by.seqs, last);
        longest = longest.max(pause);
    }
    let no_answer = all
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NoAnswer))
        .count();
    eprintln!(
        "node loss: {} accepted ({} after the kill), {no_answer} without answer, \
         {} stored once each; longest delivery pause on the survivors {longest:?}",
        accepted.len(),
        all.iter()
            .filter(|(t, o)| *t > killed_at && matches!(o, Outcome::Accepted(_)))
            .count(),
        stored.len(),
    );
    assert!(
        longest < Duration::from_secs(5),
        "the survivors stopped delivering for {longest:?}"
    );
}

/// A service of this machine that an `outage_*` test stops and starts.
#[derive(Clone, Copy, Debug)]
enum Service {
    RabbitMq,
    Postgres,
}

impl Service {
    /// The commands that stop and start it, or why it cannot be done here.
    fn commands(self) -> Result<[Vec<String>; 2], String> {
        let found = |program: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        match self {
            Service::RabbitMq => {
                if !found("rabbitmqctl") {
                    return Err("rabbitmqctl is not installed".into());
                }
                let ctl = |what: &str| vec!["rabbitmqctl".into(), "-q".into(), what.into()];
                Ok([ctl("stop_app"), ctl("start_app")])
            }
            Service::Postgres => {
                if !found("pg_ctlcluster") {
                    return Err("pg_ctlcluster is not installed".into());
                }
                let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
                    .map_err(|e| format!("no local PostgreSQL cluster: {e}"))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                let [version] = versions.as_slice() else {
                    return Err(format!(
                        "expected one PostgreSQL version, found {versions:?}"
                    ));
                };
                let ctl = |what: &str, extra: &[&str]| {
                    let mut cmd: Vec<String> = [
                        "pg_ctlcluster",
                        "--skip-systemctl-redirect",
                        version,
                        "main",
                        what,
                    ]
                    .map(String::from)
                    .to_vec();
                    cmd.extend(extra.iter().map(|s| s.to_string()));
                    cmd
                };
                Ok([ctl("stop", &["-m", "fast"]), ctl("start", &[])])
            }
        }
    }
}

fn run(cmd: &[String]) {
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Starts the service again when dropped, even if the test panicked.
struct Revive(Option<Vec<String>>);

impl Revive {
    fn now(mut self) {
        if let Some(cmd) = self.0.take() {
            run(&cmd);
        }
    }
}

impl Drop for Revive {
    fn drop(&mut self) {
        if let Some(cmd) = self.0.take() {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
    }
}

/// Two nodes under a stream; `service` is stopped for five seconds, then
/// started again. Returns nothing; prints the figures.
async fn outage(service: Service) {
    let [stop_cmd, start_cmd] = match service.commands() {
        Ok(cmds) => cmds,
        Err(why) if crate::helpers::in_ci() => panic!("{service:?} outage test: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {service:?} outage test: {why}");
            return;
        }
    };
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    let nodes = [
        spawn_env_node(&env, &[("NODE_ID", "node0")]),
        spawn_env_node(&env, &[("NODE_ID", "node1")]),
    ];
    let apis: Arc<Vec<Api>> = Arc::new(nodes.iter().map(|n| Api::new(n.addr)).collect());
    let alive: Arc<Vec<AtomicBool>> = Arc::new((0..2).map(|_| AtomicBool::new(true)).collect());
    let (_, alice) = apis[0].user("alice").await;
    let (_, bob) = apis[0].user("bob").await;
    apis[0].create_room(&alice, "steady", "public").await;

    let (until_tx, until) = tokio::sync::watch::channel(None);
    let mut subs = Vec::new();
    for node in &nodes {
        let (ws, _) = Ws::join(node.addr, "/ws/steady?history=0", &bob).await;
        subs.push(subscriber(ws, until.clone()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let mut publishers = vec![http_publisher(
        apis.clone(),
        alive,
        alice.clone(),
        "steady",
        Duration::from_millis(10),
        stop.clone(),
        slowest.clone(),
    )];
    for (n, tag) in [(0, "ws0"), (1, "ws1")] {
        let (ws, _) = Ws::join(nodes[n].addr, "/ws/steady?history=0", &alice).await;
        publishers.push(ws_publisher(
            ws,
            tag,
            Duration::from_millis(70),
            stop.clone(),
        ));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let revive = Revive(Some(start_cmd));
    let stopping = Instant::now();
    tokio::task::spawn_blocking(move || run(&stop_cmd))
        .await
        .unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let starting = Instant::now();
    tokio::task::spawn_blocking(move || revive.now())
        .await
        .unwrap();
    let started_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);

    let mut logs = Vec::new();
    for p in publishers {
        logs.push(p.await.unwrap());
    }
    let (accepted, all) = tally(&logs);
    // The HTTP publisher's log comes first.
    let http_accepted_during = logs[0]
        .iter()
        .filter(|(t, o)| *t > stopped_at && *t < starting && matches!(o, Outcome::Accepted(_)))
        .count();
    let stored = history(&apis[1], &alice, "steady", accepted.len()).await;
    assert_stored_once(&accepted, &stored);
    let last = stored.last().unwrap().1;
    until_tx.send(Some(last)).unwrap();

    let mut resumed = Duration::ZERO;
    let mut gaps = 0;
    for (i, sub) in subs.into_iter().enumerate() {
        let seen = sub.await.unwrap();
        assert!(!seen.dropped, "node {i}'s subscriber lost its socket");
        let seqs: Vec<i64> = seen.seqs.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "node {i}: a duplicate or out of order"
        );
        assert_eq!(
            seqs.last(),
            Some(&last),
            "node {i}'s subscriber missed the end"
        );
        gaps += seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        if matches!(service, Service::Postgres) {
            assert_contiguous(&format!("node {i}'s subscriber"), &seen.seqs, last);
        }
        let first_after = seen
            .seqs
            .iter()
            .find(|(_, t)| *t > started_at)
            .map(|(_, t)| *t - started_at);
        resumed = resumed.max(first_after.expect("deliveries resumed"));
    }
    let during: Vec<&Outcome> = all
        .iter()
        .filter(|(t, _)| *t > stopped_at && *t < starting)
        .map(|(_, o)| o)
        .collect();
    let refused: HashSet<String> = during
        .iter()
        .filter_map(|o| match o {
            Outcome::Refused(code) => Some(code.clone()),
            _ => None,
        })
        .collect();
    let accepted_during = during
        .iter()
        .filter(|o| matches!(o, Outcome::Accepted(_)))
        .count();
    let no_answer = all
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NoAnswer))
        .count();
    let ingest_back = all
        .iter()
        .find(|(t, o)| *t > started_at && matches!(o, Outcome::Accepted(_)))
        .map(|(t, _)| *t - started_at);
    eprintln!(
        "{service:?} outage: stop took {:?}, start took {:?}; while down {} attempts: \
         {accepted_during} accepted ({http_accepted_during} over HTTP), refused with {refused:?}; \
         {no_answer} without answer; \
         slowest HTTP answer {} ms; \
         after the start, ingest accepted again in {ingest_back:?} and every subscriber had \
         a delivery within {resumed:?}; {} accepted, {} stored once each; {gaps} seq gaps \
         seen live by subscribers",
        stopped_at - stopping,
        started_at - starting,
        during.len(),
        slowest.load(Ordering::Relaxed),
        accepted.len(),
        stored.len(),
    );
    assert_eq!(no_answer, 0, "ingest must answer while {service:?} is down");
    match service {
        Service::RabbitMq => {
            assert_eq!(accepted_during, 0, "a 202 or ack while the broker was down");
            assert!(refused.contains("broker_unavailable"), "{refused:?}");
        }
        Service::Postgres => {
            // Sockets in a public room publish without the database: the
            // broker holds the backlog until the store stage can write again.
            assert!(
                accepted_during > http_accepted_during,
                "no socket message accepted while PostgreSQL was down"
            );
            // A user and room ingest has just seen are cached (api/src/cache.rs):
            // HTTP ingest goes on without the database too.
            assert!(
                http_accepted_during > 0,
                "no HTTP message accepted while PostgreSQL was down"
            );
        }
    }
    assert!(ingest_back.is_some(), "ingest never accepted again");
}

/// RabbitMQ stopped (`rabbitmqctl stop_app`) and started under the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_broker_restart_loses_nothing() {
    outage(Service::RabbitMq).await;
}

/// PostgreSQL stopped and started under the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_database_restart_loses_nothing() {
    outage(Service::Postgres).await;
}
