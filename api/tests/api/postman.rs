//! The Postman collection (`postman/roomcast.postman_collection.json`), run by
//! newman against one `roomcast` process on PostgreSQL + RabbitMQ with guest
//! tokens on and an admin: the README's walk-through, then members, joining,
//! private rooms, avatar, account, admin and echo, request by request, with
//! the checks the collection carries; it deletes the rooms it creates.
//!
//! Needs node and `postman/node_modules` (`npm ci --prefix postman`): without
//! them the test says `SKIPPED` and passes locally, and fails under `CI=true`.

use std::{process::Stdio, time::Duration};

use crate::helpers::{Backend, TestEnv, client, in_ci, repo_root, spawn_env_node};

/// Waits (up to 30 s) until `/readyz` answers 200: database and broker are up.
async fn wait_ready(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = client().get(format!("{base}/readyz")).send().await;
        if res.as_ref().is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} not ready: {res:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postman_collection_passes_under_newman() {
    let root = repo_root();
    let postman = root.join("postman");
    let newman = postman.join("node_modules/newman/bin/newman.js");
    let node_runs = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let missing = if !node_runs {
        Some("node is not installed".to_owned())
    } else if !newman.is_file() {
        Some(format!(
            "newman is not installed ({} is missing; run `npm ci --prefix postman`)",
            newman.display()
        ))
    } else {
        None
    };
    if let Some(why) = missing {
        if in_ci() {
            panic!("the Postman collection must run in CI, but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return;
    }

    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    // The admin the collection signs in as (its environment names the same).
    let node = spawn_env_node(
        &env,
        &[
            ("GUEST_TOKENS", "true"),
            ("ADMIN_USERNAME", "admin"),
            ("ADMIN_PASSWORD", "postman-admin-password"),
        ],
    );
    let base = format!("http://{}", node.addr);
    wait_ready(&base).await;

    let run = tokio::process::Command::new("node")
        .arg(&newman)
        .arg("run")
        .arg(postman.join("roomcast.postman_collection.json"))
        .arg("-e")
        .arg(postman.join("local.postman_environment.json"))
        .arg("--env-var")
        .arg(format!("baseUrl={base}"))
        .args(["--bail", "--color", "off"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("newman finished within 180 s")
        .expect("newman started");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the test runner on failure (or with --no-capture).
    println!("{stdout}");
    assert!(
        out.status.success(),
        "newman failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for step in [
        "Post as alice",
        "History shows the tombstone",
        "Add bob to the group",
        "Bob joins the public room",
        "Upload an avatar",
        "Change the email",
        "Create a moderator",
        "Echo history",
        "Delete the public room",
    ] {
        assert!(
            stdout.contains(step),
            "newman ran the whole story (no {step:?}):\n{stdout}"
        );
    }
}
