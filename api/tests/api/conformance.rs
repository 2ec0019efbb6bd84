//! RFC 6455 conformance of `/echo` and `/ws/{room}`: the cases of
//! Autobahn|Testsuite's sections 1–7, each on a connection of its own, sent
//! by a frame-level client so a case can break any rule it likes.
//!
//! # Layout
//! - `codec`: frames, the opening handshake, one connection.
//! - `cases`: the table, per endpoint.
//! - here: the runner, the results table and one test per endpoint.
//!
//! Where the RFC leaves a choice (which code fails a bad close reason, which
//! code echoes a close), a case accepts every permitted answer.

mod cases;
mod codec;

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

use self::{
    cases::{Case, Endpoint, Expect, SECTIONS, Send},
    codec::{CLOSE, Conn, Frame, TEXT, close_code, close_payload},
};
use crate::helpers::{Backend, spawn_app_with};

/// Large enough for 64-bit lengths (over 65535 bytes).
const MAX_MESSAGE_BYTES: u32 = 65536;
/// What both sockets allow beyond `MAX_MESSAGE_BYTES` for a frame. The room
/// socket reads a frame six times that (its JSON may escape its content;
/// the cases' text frames are JSON pings): a plain-text frame over the
/// smaller bound is closed by the session instead, which `ws.rs` tests.
const ALLOWANCE: usize = 512;
/// A case that takes longer than this has hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_socket() {
    conformance(Endpoint::Echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_socket() {
    conformance(Endpoint::Room).await;
}

/// Where a case connects.
struct Target {
    endpoint: Endpoint,
    addr: std::net::SocketAddr,
    path: String,
    token: String,
}

async fn conformance(endpoint: Endpoint) {
    // The protocol layer does not depend on the database: SQLite is enough.
    // Every case is a connect by the same user: lift the per-user connect limit.
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.max_message_bytes = MAX_MESSAGE_BYTES;
        c.socket_connect_burst = 10_000;
    })
    .await
    .expect("SQLite is always available");
    let api = app.api();
    let (_, token) = api.user("conformer").await;
    let path = match endpoint {
        Endpoint::Echo => "/echo".to_owned(),
        Endpoint::Room => {
            api.create_room(&token, "conformance", "group").await;
            "/ws/conformance".to_owned()
        }
    };
    let target = Target {
        endpoint,
        addr: app.addr,
        path,
        token,
    };

    let limit = match endpoint {
        Endpoint::Echo => MAX_MESSAGE_BYTES as usize + ALLOWANCE,
        Endpoint::Room => MAX_MESSAGE_BYTES as usize * 6 + ALLOWANCE,
    };
    let cases = cases::all(endpoint, limit);
    let mut tally: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let outcome = tokio::time::timeout(CASE_TIMEOUT, run(&target, case))
            .await
            .unwrap_or_else(|_| Err(format!("no outcome within {CASE_TIMEOUT:?}")));
        let counts = tally.entry(case.section).or_default();
        counts.0 += 1;
        match outcome {
            Ok(()) => counts.1 += 1,
            Err(why) => failures.push(format!("{} {}: {why}", case.id, case.what)),
        }
    }

    println!(
        "\nRFC 6455 conformance (Autobahn sections 1-7), {}",
        target.path
    );
    println!(
        "{:<22} {:<18} {:>6} {:>7}",
        "section", "endpoint", "cases", "passed"
    );
    for (section, name) in SECTIONS {
        let (total, passed) = tally.get(&section).copied().unwrap_or_default();
        println!(
            "{:<22} {:<18} {total:>6} {passed:>7}",
            format!("{section} {name}"),
            target.path
        );
    }
    let passed: usize = tally.values().map(|(_, p)| p).sum();
    println!(
        "{:<22} {:<18} {:>6} {passed:>7}",
        "all",
        target.path,
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed on {}:\n{}",
        failures.len(),
        cases.len(),
        target.path,
        failures.join("\n")
    );
}

/// One case on a fresh connection: its frames, then its expectations in
/// order; a case that does not end in a close ends with a clean close
/// handshake, which also catches anything unexpected the server sent.
async fn run(target: &Target, case: &Case) -> Result<(), String> {
    let mut conn = Conn::open(target.addr, &target.path, &target.token).await?;
    if target.endpoint == Endpoint::Room {
        match next(&mut conn, target).await? {
            Some(f) if f.opcode == TEXT && json_type(&f).as_deref() == Some("welcome") => {}
            other => {
                return Err(format!(
                    "expected the welcome, got {}",
                    show(other.as_ref())
                ));
            }
        }
    }
    for Send(frame, chunk) in &case.send {
        // The server may rightly have given up already; the expectations say.
        if conn.send(frame, *chunk).await.is_err() {
            break;
        }
    }
    let closed_by_us = case.send.iter().any(|Send(f, _)| f.opcode == CLOSE);
    for expect in &case.expect {
        match expect {
            Expect::Frame(opcode, payload) => {
                let got = next(&mut conn, target).await?;
                if !got
                    .as_ref()
                    .is_some_and(|f| f.opcode == *opcode && f.payload == *payload)
                {
                    let wanted = Frame::new(*opcode, payload.clone());
                    return Err(format!(
                        "expected {}, got {}",
                        wanted.describe(),
                        show(got.as_ref())
                    ));
                }
            }
            Expect::Close(codes) => return closing(&mut conn, target, codes, closed_by_us).await,
        }
    }
    let bye = Frame::new(CLOSE, close_payload(1000, b""));
    conn.send(&bye, 0)
        .await
        .map_err(|err| format!("the final close could not be sent: {err}"))?;
    closing(&mut conn, target, &[1000], true).await
}

/// Expects a close frame with one of `codes`, answers it unless we closed
/// first, then expects the server to end the TCP connection.
async fn closing(
    conn: &mut Conn,
    target: &Target,
    codes: &[u16],
    closed_by_us: bool,
) -> Result<(), String> {
    let got = next(conn, target).await?;
    let frame = match got {
        Some(frame) if frame.opcode == CLOSE => frame,
        other => {
            return Err(format!(
                "expected close {codes:?}, got {}",
                show(other.as_ref())
            ));
        }
    };
    let code = close_code(&frame.payload).map_err(|err| format!("the server's close has {err}"))?;
    if !codes.contains(&code) {
        return Err(format!(
            "expected close {codes:?}, got {}",
            frame.describe()
        ));
    }
    if !closed_by_us {
        // The server may already be gone; only what it does next matters.
        let _ = conn
            .send(&Frame::new(CLOSE, close_payload(1000, b"")), 0)
            .await;
    }
    match next(conn, target).await {
        Ok(None) => Ok(()),
        Ok(Some(late)) => Err(format!("{} after the close", late.describe())),
        Err(err) => Err(format!("after the close: {err}")),
    }
}

/// The next frame or message, leaving out the room events (`presence`)
/// that a room's socket may receive at any time.
async fn next(conn: &mut Conn, target: &Target) -> Result<Option<Frame>, String> {
    loop {
        let frame = conn.next().await?;
        let event = target.endpoint == Endpoint::Room
            && frame.as_ref().is_some_and(|f| {
                f.opcode == TEXT && matches!(json_type(f).as_deref(), Some("presence"))
            });
        if !event {
            return Ok(frame);
        }
    }
}

fn json_type(frame: &Frame) -> Option<String> {
    let value: Value = serde_json::from_slice(&frame.payload).ok()?;
    value["type"].as_str().map(str::to_owned)
}

fn show(frame: Option<&Frame>) -> String {
    frame.map_or_else(|| "the end of the connection".to_owned(), Frame::describe)
}
