//! The web client in a real browser: two `roomcast` processes on PostgreSQL
//! and RabbitMQ, and the scripts in `web/e2e/` driving Debian's chromium
//! (through playwright-core) as users on both nodes: `chat.spec.mjs` the
//! chat itself, `screens.spec.mjs` every other screen (admin panel,
//! members, moderation, avatars, account, echo, guest link).
//!
//! Needs `node`, `/usr/bin/chromium` and `web/e2e/node_modules` (`npm ci
//! --prefix web/e2e`); without them the test says `SKIPPED` and passes
//! locally, and fails under `CI=true`. The scripts save screenshots under the
//! target directory (`e2e/`); with `ROOMCAST_UPDATE_SCREENSHOT=1` they replace
//! the ones in `docs/` (`docs/screenshot.png`, the README's chat, and
//! `docs/screens/*.png`), so a run leaves the committed tree as it was unless asked.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Backend, TestEnv, in_ci, repo_root, spawn_env_node};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The chat script gives itself 60 s; this is the backstop if node itself hangs.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The screens script gives itself 210 s.
const SCREENS_TIMEOUT: Duration = Duration::from_secs(270);
/// The bootstrap admin's password in the screens run.
const ADMIN_PASSWORD: &str = "admin-password-for-the-browser";

fn update_docs() -> bool {
    std::env::var("ROOMCAST_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1")
}

fn target_e2e() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the shots sit beside it.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the tmp dir sits in the target dir")
        .join("e2e")
}

/// Where the run saves Alice's and Bob's windows.
fn screenshots(root: &Path) -> (PathBuf, PathBuf) {
    let target = target_e2e();
    let wide = if update_docs() {
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

/// Whether the browser test can run here; if not, it says `SKIPPED` (or
/// fails under CI).
fn prerequisites_or_skip(e2e: &Path) -> bool {
    let missing = missing_prerequisites(e2e);
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if in_ci() {
        panic!("the browser test needs {what}; .ci/run installs them");
    }
    eprintln!("SKIPPED: browser test needs {what}");
    false
}

/// Runs `web/e2e/<script>` with `env` against the two nodes; fails unless it
/// exits 0 having said `PASSED`.
async fn run_script(e2e: &Path, script: &str, env: &[(&str, String)], timeout: Duration) {
    let started = Instant::now();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(e2e.join(script))
        .current_dir(e2e)
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start node");
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!(
            "web/e2e/{script} did not finish in {} s ({env:?})",
            timeout.as_secs()
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "web/e2e/{script} failed ({}) after {:.1} s ({env:?}):\n{stderr}",
        output.status,
        started.elapsed().as_secs_f64(),
    );
    assert!(
        stdout.contains("PASSED"),
        "web/e2e/{script} exited 0 without saying PASSED:\n{stdout}"
    );
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
    if !prerequisites_or_skip(&e2e) {
        return;
    }
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    // The first node migrates the database; the second starts on the ready schema.
    let node1 = spawn_env_node(&env, &[("NODE_ID", "web1")]);
    let node2 = spawn_env_node(&env, &[("NODE_ID", "web2")]);

    let (screenshot, narrow) = screenshots(&root);
    // File times can be coarser than the clock: allow a second.
    let written_after = SystemTime::now() - Duration::from_secs(1);
    // A stale shot cannot pass for a new one (the README's is only replaced).
    for shot in [&screenshot, &narrow] {
        if *shot != root.join("docs/screenshot.png") {
            let _ = std::fs::remove_file(shot);
        }
    }
    let env_vars = [
        ("ROOMCAST_NODE1_URL", format!("http://{}", node1.addr)),
        ("ROOMCAST_NODE2_URL", format!("http://{}", node2.addr)),
        ("ROOMCAST_SCREENSHOT", screenshot.display().to_string()),
        ("ROOMCAST_SCREENSHOT_NARROW", narrow.display().to_string()),
    ];
    run_script(&e2e, "chat.spec.mjs", &env_vars, SCRIPT_TIMEOUT).await;
    assert_fresh_png(&screenshot, written_after);
    assert_fresh_png(&narrow, written_after);
    drop((node1, node2));
}

/// A loopback WebSocket server that answers each text frame in capitals:
/// node 2's echo upstream, so the browser can tell a relay from an echo.
async fn upstream_shouter() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    if ws
                        .send(Message::Text(text.to_uppercase().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Every screen besides the chat, in chromium, with users on two nodes:
/// alice (the bootstrap admin, node 1) pages and searches users, makes carol
/// a moderator and creates a user in the admin panel, which bob (node 2)
/// neither sees nor may open; alice adds bob to a group room from a
/// suggestion and it appears in his list at once (his own socket, `/ws`), a
/// private room refuses a third member; opening a public room joins it; the
/// owner and a moderator delete bob's messages, the owner removes him and
/// deletes the room after a confirm step; carol messages alice ("Message a
/// person"), and the private chat appears in alice's list at once by carol's
/// name and avatar, and refuses a third member; avatars show on members, the
/// online list and messages, and alice's new avatar reaches bob's screen;
/// dave, on a third node whose access tokens last 10 s, stays signed in
/// through the run and talks at its end, his quick messages waiting out a
/// small message budget by themselves; the account page says 413 and 415
/// plainly, changes email and password and deletes carol's account only
/// with her password; the echo page echoes on
/// node 1 and relays upstream on node 2; a guest link lets a visitor talk.
/// Each screen passes the accessibility checks and works 390 px wide; a
/// screenshot of each is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_screen_across_two_nodes_in_chromium() {
    let root = repo_root();
    let e2e = root.join("web/e2e");
    if !prerequisites_or_skip(&e2e) {
        return;
    }
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    let upstream = format!("ws://{}", upstream_shouter().await);
    let common = [
        ("ADMIN_USERNAME", "alice"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("GUEST_TOKENS", "true"),
    ];
    let mut first = common.to_vec();
    first.push(("NODE_ID", "screens1"));
    let node1 = spawn_env_node(&env, &first);
    let mut second = common.to_vec();
    second.extend([
        ("NODE_ID", "screens2"),
        ("ECHO_UPSTREAM_URL", upstream.as_str()),
    ]);
    let node2 = spawn_env_node(&env, &second);
    // Access tokens of 10 s (the least allowed): dave stays signed in there;
    // and a small message budget, which his quick messages wait out.
    let mut third = common.to_vec();
    third.extend([
        ("NODE_ID", "screens3"),
        ("ACCESS_TOKEN_TTL", "10s"),
        ("MESSAGE_BURST", "2"),
        ("MESSAGE_RATE", "1"),
    ]);
    let node3 = spawn_env_node(&env, &third);

    let dir = if update_docs() {
        root.join("docs/screens")
    } else {
        target_e2e().join("screens")
    };
    let written_after = SystemTime::now() - Duration::from_secs(1);
    let env_vars = [
        ("ROOMCAST_NODE1_URL", format!("http://{}", node1.addr)),
        ("ROOMCAST_NODE2_URL", format!("http://{}", node2.addr)),
        ("ROOMCAST_NODE3_URL", format!("http://{}", node3.addr)),
        ("ROOMCAST_SCREENSHOT_DIR", dir.display().to_string()),
        ("ROOMCAST_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
    ];
    run_script(&e2e, "screens.spec.mjs", &env_vars, SCREENS_TIMEOUT).await;
    for screen in [
        "admin",
        "members",
        "private",
        "account",
        "account-narrow",
        "echo",
        "guest",
    ] {
        assert_fresh_png(&dir.join(format!("{screen}.png")), written_after);
    }
    drop((node1, node2, node3));
}
