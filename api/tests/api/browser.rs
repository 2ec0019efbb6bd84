//! The web client in a real browser: two `roomcast` processes on PostgreSQL
//! and RabbitMQ, and `web/e2e/chat.spec.mjs` driving Debian's chromium
//! (through playwright-core) as two users, one on each node.
//!
//! Needs `node`, `/usr/bin/chromium` and `web/e2e/node_modules` (`npm ci
//! --prefix web/e2e`); without them the test says `SKIPPED` and passes
//! locally, and fails under `CI=true`. The script saves a screenshot of each
//! window under the target directory (`e2e/`); with `ROOMCAST_UPDATE_SCREENSHOT=1`
//! Alice's replaces the one the README shows, `docs/screenshot.png`, so a run
//! leaves the committed tree as it was unless asked.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use crate::helpers::{Backend, TestEnv, spawn_env_node};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script gives itself 60 s; this is the backstop if node itself hangs.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the api crate sits in the workspace")
        .to_path_buf()
}

/// Where the run saves Alice's and Bob's windows.
fn screenshots(root: &Path) -> (PathBuf, PathBuf) {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the shots sit beside it.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the tmp dir sits in the target dir")
        .join("e2e");
    let wide = if std::env::var("ROOMCAST_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        root.join("docs/screenshot.png")
    } else {
        target.join("screenshot.png")
    };
    (wide, target.join("screenshot-narrow.png"))
}

/// Fails unless `path` is a PNG written after `since`.
fn assert_fresh_png(path: &Path, since: SystemTime) {
    let meta = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    let modified = meta.modified().expect("file times");
    assert!(
        modified >= since,
        "{} was not written by this run",
        path.display()
    );
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG ({} bytes)",
        path.display(),
        bytes.len()
    );
}

/// What the browser test needs that is not there, if anything.
fn missing_prerequisites(e2e: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("`node` on PATH".to_owned());
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if !e2e
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!(
            "{}/node_modules (npm ci --prefix web/e2e)",
            e2e.display()
        ));
    }
    missing
}

/// Alice on node 1 and Bob on node 2 register, Bob logs out and back in
/// through the login form, they meet in a public room, talk, edit, delete,
/// reconnect and scroll back, all through the web client; Bob's 390 px window
/// keeps the composer on screen and never scrolls sideways; the login page and
/// the room pass the script's accessibility checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_across_two_nodes_in_chromium() {
    let root = repo_root();
    let e2e = root.join("web/e2e");
    let missing = missing_prerequisites(&e2e);
    if !missing.is_empty() {
        let what = missing.join(", ");
        if in_ci() {
            panic!("the browser test needs {what}; .ci/run installs them");
        }
        eprintln!("SKIPPED: browser test needs {what}");
        return;
    }

    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    // The first node migrates the database; the second starts on the ready schema.
    let node1 = spawn_env_node(&env, &[("NODE_ID", "web1")]);
    let node2 = spawn_env_node(&env, &[("NODE_ID", "web2")]);
    let url1 = format!("http://{}", node1.addr);
    let url2 = format!("http://{}", node2.addr);

    let (screenshot, narrow) = screenshots(&root);
    // File times can be coarser than the clock: allow a second.
    let written_after = SystemTime::now() - Duration::from_secs(1);
    // A stale shot cannot pass for a new one (the README's is only replaced).
    for shot in [&screenshot, &narrow] {
        if *shot != root.join("docs/screenshot.png") {
            let _ = std::fs::remove_file(shot);
        }
    }
    let started = Instant::now();
    let mut script = tokio::process::Command::new("node");
    script
        .arg(e2e.join("chat.spec.mjs"))
        .current_dir(&e2e)
        .env("ROOMCAST_NODE1_URL", &url1)
        .env("ROOMCAST_NODE2_URL", &url2)
        .env("ROOMCAST_SCREENSHOT", &screenshot)
        .env("ROOMCAST_SCREENSHOT_NARROW", &narrow)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = script.spawn().expect("start node");
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!(
            "web/e2e/chat.spec.mjs did not finish in {} s (nodes {url1} and {url2})",
            SCRIPT_TIMEOUT.as_secs()
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "web/e2e/chat.spec.mjs failed ({}) after {:.1} s against {url1} and {url2}:\n{stderr}",
        output.status,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        stdout.contains("PASSED"),
        "the script exited 0 without saying PASSED:\n{stdout}"
    );
    assert_fresh_png(&screenshot, written_after);
    assert_fresh_png(&narrow, written_after);
    drop((node1, node2));
}
