//! The `roomcast` binary itself: configuration errors, subcommands, signals.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{Api, Backend, TEST_SECRET, TestDb, TestEnv, spawn_env_node, spawn_node};

/// `roomcast <args>` with a clean environment plus `env`.
fn roomcast(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ROOMCAST")
            || [
                "AMQP_URL",
                "DATABASE_URL",
                "BIND",
                "SECRET_KEY",
                "ADMIN_USERNAME",
                "ADMIN_PASSWORD",
                "CLIENT_IP_SOURCE",
            ]
            .contains(&key.as_str())
        {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run roomcast")
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_it() {
    for (var, value) in [
        ("BIND", "not-an-address"),
        ("MAX_MESSAGE_BYTES", "abc"),
        ("MAX_MESSAGE_BYTES", "0"),
        // JSON escaped six-fold, more would not fit the broker's 4 MiB.
        ("MAX_MESSAGE_BYTES", "524289"),
        ("ACCESS_TOKEN_TTL", "forever"),
        ("ROOMS_AUTO_CREATE", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("CLIENT_IP_SOURCE", "X-Real-IP"),
        ("SECRET_KEY", "short"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("AMQP_URL", "http://localhost"),
        // Renamed when they came to count sockets and edits too.
        ("HTTP_MESSAGE_BURST", "1000"),
        ("HTTP_MESSAGE_RATE", "10000"),
    ] {
        let out = roomcast(
            &[],
            &[
                (var, value),
                (
                    "SECRET_KEY",
                    if var == "SECRET_KEY" {
                        value
                    } else {
                        TEST_SECRET
                    },
                ),
            ],
        );
        assert!(!out.status.success(), "{var}={value} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") && first.contains(var),
            "{var}={value}: {stderr}"
        );
    }
    // A broker needs a shared key.
    let out = roomcast(&[], &[("AMQP_URL", "amqp://127.0.0.1:5672")]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: SECRET_KEY"));
}

/// The variables README.md's configuration table lists (the backticked
/// names of its first column).
fn documented_variables() -> Vec<String> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let table = readme
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("README has the configuration table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn help(args: &[&str]) -> String {
    let out = roomcast(args, &[]);
    assert!(out.status.success(), "roomcast {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_documents_commands_and_variables() {
    let variables = documented_variables();
    assert!(
        variables.len() >= 19
            && variables
                .iter()
                .all(|v| v.chars().all(|c| c.is_ascii_uppercase() || c == '_')),
        "README's table lists {variables:?}"
    );
    let top = help(&["--help"]);
    for command in ["migrate", "seed-demo", "admin"] {
        assert!(
            top.contains(&format!("\n  {command} ")),
            "--help lacks {command}"
        );
    }
    for variable in &variables {
        // An option shows its variable as `[env: NAME`; RUST_LOG is read by
        // the log filter, not by an option, and is named in LOG_FORMAT's help.
        let named = if variable == "RUST_LOG" {
            top.contains(variable.as_str())
        } else {
            top.contains(&format!("[env: {variable}"))
        };
        assert!(named, "--help lacks {variable}");
    }
    // Each subcommand says what it works on.
    for command in [
        &["migrate", "--help"][..],
        &["seed-demo", "--help"],
        &["admin", "--help"],
    ] {
        let text = help(command);
        assert!(
            text.contains("DATABASE_URL"),
            "{command:?} does not name DATABASE_URL:\n{text}"
        );
    }
    let text = help(&["admin", "create", "--help"]);
    for word in [
        "--username",
        "--email",
        "--password",
        "ROOMCAST_NEW_ADMIN_PASSWORD",
    ] {
        assert!(text.contains(word), "admin create --help lacks {word}");
    }
}

/// The start-up line says where to go (the web client, the API docs, the
/// metrics) and what the node runs on, and gives away no credential.
async fn start_up_line_names_urls_database_and_broker(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    let node = spawn_env_node(&env, &[]);
    let line = &node.startup_line;
    let event: Value = serde_json::from_str(line).expect("a JSON log line");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("http://{}", node.addr)), "{line}");
    for (what, path) in [
        ("web client", "/"),
        ("API docs", "/docs"),
        ("metrics", "/metrics"),
    ] {
        assert!(
            message.contains(&format!("{what} {path}")),
            "{what} {path} in {line}"
        );
    }
    let (database, broker) = match backend {
        Backend::Sqlite => ("sqlite", "in-process"),
        Backend::Postgres => ("postgres", "rabbitmq"),
    };
    assert_eq!(event["database"], database, "{line}");
    assert_eq!(event["broker"], broker, "{line}");
    let mut secrets = vec![env.db.url.clone(), TEST_SECRET.to_owned()];
    if let Some(amqp) = env.amqp_url() {
        let userinfo = amqp["amqp://".len()..]
            .split('@')
            .next()
            .unwrap()
            .to_owned();
        secrets.extend([amqp, userinfo]);
    }
    for secret in &secrets {
        assert!(
            !line.contains(secret.as_str()),
            "the start-up line shows {secret}: {line}"
        );
    }
    assert!(
        !line.contains("amqp://") && !line.contains("postgres://"),
        "{line}"
    );
}

crate::on_both_backends!(start_up_line_names_urls_database_and_broker);

async fn migrate_up_down_status(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let env = [("DATABASE_URL", db.url.as_str())];
    let out = roomcast(&["migrate", "up"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = |out: std::process::Output| {
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let listed = status(roomcast(&["migrate", "status"], &env));
    assert!(
        listed.contains("m20261122_000002_public_room") && listed.contains("Applied"),
        "{listed}"
    );
    assert!(roomcast(&["migrate", "down"], &env).status.success());
    let listed = status(roomcast(&["migrate", "status"], &env));
    assert!(listed.contains("Pending"), "{listed}");
    assert!(roomcast(&["migrate", "up"], &env).status.success());
}

async fn seed_demo_and_admin_create(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let env = [("DATABASE_URL", db.url.as_str())];
    for _ in 0..2 {
        let out = roomcast(&["seed-demo"], &env);
        assert!(
            out.status.success(),
            "seed-demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = roomcast(
        &[
            "admin",
            "create",
            "--username",
            "boss",
            "--email",
            "boss@example.com",
            "--password",
            "boss-password",
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "admin create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let node = spawn_node(&db.url, &[]);
    let api = Api::new(node.addr);
    let login = |user: &'static str, password: &'static str| {
        let api = &api;
        async move {
            let res = api
                .client
                .post(api.url("/auth/login"))
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{user}");
            res.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let alice = login("alice", "demo-password").await;
    let rooms: Vec<Value> = api
        .client
        .get(api.url("/rooms"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = rooms.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice-bob", "lobby", "public", "team"]);
    // A few messages in each demo room, once however often it ran, in order
    // and from their members.
    for room in ["lobby", "team", "alice-bob"] {
        let history: Vec<Value> = api
            .client
            .get(api.url(&format!("/rooms/{room}/messages?after=0")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!((2..=5).contains(&history.len()), "{room}: {history:?}");
        let seqs: Vec<i64> = history.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=history.len() as i64).collect::<Vec<_>>(),
            "{room}"
        );
        assert!(
            history.iter().all(|m| m["sender"]["username"].is_string()),
            "{room}"
        );
    }
    // The server goes on from there.
    api.post_stored(&alice, "lobby", "after the seed").await;
    let boss = login("boss", "boss-password").await;
    let me: Value = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&boss)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
}

crate::on_both_backends!(migrate_up_down_status, seed_demo_and_admin_create);

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let mut node = spawn_node(&db.url, &[]);
    let status = Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(code) = node.try_wait() {
            assert!(code.success(), "exit status {code}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) for `child` to exit; its status.
async fn exit_status(child: &mut std::process::Child, after: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after {after}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `roomcast` run from a fresh directory with nothing configured but what
/// `.env` there says (BIND): it serves on the embedded SQLite default, creates
/// `roomcast.db` beside it, warns loudly about the development key, and stops
/// cleanly on SIGINT.
#[tokio::test]
async fn a_fresh_directory_serves_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    std::fs::write(dir.path().join(".env"), format!("BIND=127.0.0.1:{port}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomcast");
    let log = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|pipe| {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    })
    .collect();

    let http = crate::helpers::client();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = http.get(&url).send().await {
            assert_eq!(res.status(), 200);
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("roomcast exited ({status}):\n{}", log.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "no answer on {url} (.env not read?):\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dir.path().join("roomcast.db").is_file(),
        "no roomcast.db in the working directory"
    );

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = exit_status(&mut child, "SIGINT").await;
    for reader in readers {
        reader.join().unwrap();
    }
    let log = log.lock().unwrap();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        log.contains("SECRET_KEY is not set") && log.contains("PUBLIC DEVELOPMENT KEY"),
        "no development-key warning:\n{log}"
    );
    assert!(log.contains("roomcast stopped"), "{log}");
}

/// A public signing key (none at all, the development key, the compose file's
/// old default, one character repeated) serves loopback alone: on any other
/// address the server refuses to start, with one line naming `SECRET_KEY`.
#[test]
fn a_public_signing_key_serves_only_loopback() {
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/r.db?mode=rwc", db.path().display());
    let repeated = "x".repeat(48);
    for key in [
        None,
        Some("roomcast-development-secret-key-not-for-production-use"),
        Some("change-me-to-a-long-random-secret-of-32-bytes-or-more"),
        Some(repeated.as_str()),
    ] {
        let mut env = vec![("BIND", "0.0.0.0:0"), ("DATABASE_URL", url.as_str())];
        env.extend(key.map(|k| ("SECRET_KEY", k)));
        let out = roomcast(&[], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with SECRET_KEY={key:?}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: SECRET_KEY:") && stderr.lines().count() == 1,
            "SECRET_KEY={key:?}: {stderr}"
        );
    }
    // Subcommands that do not serve do not need it.
    let out = roomcast(
        &["migrate", "up"],
        &[("BIND", "0.0.0.0:0"), ("DATABASE_URL", url.as_str())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On loopback a placeholder still serves, with a loud warning.
    let (node, logs) = crate::helpers::spawn_node_with_logs(
        &url,
        &[(
            "SECRET_KEY",
            "change-me-to-a-long-random-secret-of-32-bytes-or-more",
        )],
    );
    assert!(node.addr.ip().is_loopback());
    let warned = || {
        logs.lines()
            .iter()
            .any(|l| l.contains("PUBLIC PLACEHOLDER"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !warned() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(warned(), "no warning: {:?}", logs.lines());
}

/// `--help` names the variables but never shows the values they hold.
#[test]
fn help_hides_connection_strings_and_keys() {
    let secrets = [
        ("DATABASE_URL", "postgres://app:db-pass-4711@db.internal/rc"),
        ("AMQP_URL", "amqp://app:amqp-pass-4711@mq.internal:5672/%2f"),
        (
            "SECRET_KEY",
            "secret-key-4711-that-is-long-enough-for-hs256",
        ),
        ("ADMIN_PASSWORD", "admin-pass-4711"),
    ];
    let out = roomcast(&["--help"], &secrets);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for (var, value) in secrets {
        assert!(text.contains(var), "--help names {var}");
        assert!(
            !text.contains("4711"),
            "--help shows {var}'s value:\n{text}"
        );
        assert!(!text.contains(value));
    }
}

/// `admin create` on a name that exists changes nothing and says so, naming
/// `--promote`; with it, the account becomes admin with the given password.
async fn admin_create_on_an_existing_user(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let node = spawn_node(&db.url, &[]);
    let api = Api::new(node.addr);
    let (_, _) = api.user("squatter").await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let create = |extra: &[&str]| {
        let mut args = vec![
            "admin",
            "create",
            "--username",
            "squatter",
            "--email",
            "boss@example.com",
            "--password",
            "boss-password",
        ];
        args.extend_from_slice(extra);
        roomcast(&args, &env)
    };
    let out = create(&[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("created"), "{stdout}");
    assert!(
        stderr.contains("already exists") && stderr.contains("--promote"),
        "{stderr}"
    );
    let login = |password: &'static str| {
        let api = &api;
        async move {
            api.client
                .post(api.url("/auth/login"))
                .json(&json!({"username": "squatter", "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(login("boss-password").await.status(), 401);
    // The squatter's own sign-in, with its refresh cookie.
    let res = login("password123").await;
    assert_eq!(res.status(), 200);
    let squatters_refresh = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("roomcast_refresh="))
        .expect("a refresh cookie");

    let out = create(&["--promote"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("promoted"));
    let res = login("boss-password").await;
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin", "{me}");
    // The sign-in from before the reset cannot refresh into the admin.
    let res = api
        .client
        .post(api.url("/auth/refresh"))
        .header("cookie", &squatters_refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "{}", res.text().await.unwrap());
}

crate::on_both_backends!(admin_create_on_an_existing_user);
