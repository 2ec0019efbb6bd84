//! The field's reference WebSocket test suite, Autobahn|Testsuite, run as it
//! is: its `wstest` fuzzing client plays sections 1–7 (framing, pings and
//! pongs, reserved bits, opcodes, fragmentation, UTF-8, the closing
//! handshake) against `/echo`, and every case must come out as the suite
//! counts a pass: `OK`, `NON-STRICT` or `INFORMATIONAL`, with a clean close.
//!
//! `wstest` is Python 2 code. `$WSTEST` names a command that runs it (`.ci/run`
//! installs the suite for a Python 2.7 it finds and writes such a command);
//! without it the test says `SKIPPED` and passes locally, and fails under
//! `CI=true`. `conformance.rs` runs the same sections with a client of ours,
//! on `/ws/{room}` too, whose chat protocol is no echo.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};

use crate::helpers::{Backend, in_ci, spawn_app_with};

/// What the suite counts as passed, for the case and for its close.
const PASSED: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];
const CLOSED_WELL: [&str; 2] = ["OK", "INFORMATIONAL"];
/// Sections 1–7 hold about 250 cases; fewer means the suite ran short.
const MIN_CASES: usize = 240;
/// Section 1 sends up to 65 536 bytes in one message.
const MAX_MESSAGE_BYTES: u32 = 65_536;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_passes_the_reference_suite() {
    let Some(wstest) = std::env::var_os("WSTEST").filter(|w| !w.is_empty()) else {
        let why = "WSTEST is not set (see .ci/run for installing Autobahn|Testsuite)";
        assert!(
            !in_ci(),
            "the reference WebSocket suite must run in CI: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return;
    };
    // The protocol layer does not depend on the database: SQLite is enough.
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.max_message_bytes = MAX_MESSAGE_BYTES;
        // Every case is a connect by the same user.
        c.socket_connect_burst = 10_000;
    })
    .await
    .expect("SQLite is always available");
    let (_, token) = app.api().user("autobahn").await;

    let work = tempfile::tempdir().expect("temp dir");
    let reports = work.path().join("reports");
    let spec = json!({
        "outdir": reports,
        "servers": [{"agent": "roomcast", "url": format!("ws://{}/echo?token={token}", app.addr)}],
        "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*"],
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    std::fs::write(work.path().join("spec.json"), spec.to_string()).expect("spec written");
    let run = tokio::process::Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s", "spec.json"])
        .current_dir(work.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("wstest finished within 240 s")
        .expect("wstest started");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wstest failed ({}):\n{log}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let index: Value = serde_json::from_slice(
        &std::fs::read(reports.join("index.json")).expect("wstest wrote index.json"),
    )
    .expect("index.json is JSON");
    let cases = index["roomcast"].as_object().expect("results for roomcast");
    // Per section: cases, and how each outcome counted.
    let mut sections: BTreeMap<u32, BTreeMap<String, usize>> = BTreeMap::new();
    let mut failed = Vec::new();
    for (id, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        let section = id
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        *sections
            .entry(section)
            .or_default()
            .entry(behavior.to_owned())
            .or_default() += 1;
        if !PASSED.contains(&behavior) || !CLOSED_WELL.contains(&close) {
            failed.push(format!("{id}: {behavior}, close {close}"));
        }
    }
    println!("\nAutobahn|Testsuite, wstest fuzzingclient, sections 1-7, /echo");
    for (section, outcomes) in &sections {
        let total: usize = outcomes.values().sum();
        println!("section {section}: {total} cases, {outcomes:?}");
    }
    println!("all: {} cases, {} failed", cases.len(), failed.len());
    assert!(failed.is_empty(), "cases failed:\n{}", failed.join("\n"));
    assert!(
        cases.len() >= MIN_CASES,
        "only {} cases ran:\n{log}",
        cases.len()
    );
}
