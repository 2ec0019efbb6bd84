//! Test support: fresh databases on PostgreSQL or SQLite, the application on
//! port 0 in-process (`spawn_app`), and real `roomcast` processes (`spawn_node`).
//!
//! A service that is absent fails the test under `CI=true` and skips it, loudly,
//! otherwise.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use api::{Application, Config, cli::Cli};
use clap::Parser;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use uuid::Uuid;

pub const TEST_SECRET: &str = "test-secret-key-that-is-long-enough-for-hs256";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod <name> { sqlite, postgres }` tests that run `<name>(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

pub use testsupport::{TestVhost, in_ci};

/// The workspace's root (where `postman/`, `web/` and `deploy/` are).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the api crate sits in the workspace")
        .to_path_buf()
}

/// A database of its own for one test; PostgreSQL ones are dropped afterwards.
pub struct TestDb {
    pub url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

/// The backing services of one test: SQLite + the in-process broker, or
/// PostgreSQL + RabbitMQ (a database and a vhost of its own).
pub struct TestEnv {
    pub db: TestDb,
    pub vhost: Option<TestVhost>,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let vhost = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestVhost::new().await?),
        };
        Some(Self { db, vhost })
    }

    pub fn amqp_url(&self) -> Option<String> {
        self.vhost.as_ref().map(|v| v.amqp_url.clone())
    }
}

impl TestDb {
    /// Drops a PostgreSQL test database now, closing its connections (this
    /// test's alone); `false` on SQLite, whose open file cannot be taken away.
    pub async fn drop_now(&self) -> bool {
        let Some((admin_url, name)) = &self.postgres else {
            return false;
        };
        let admin = Database::connect(admin_url)
            .await
            .expect("connect as admin");
        admin
            .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .expect("drop the test database");
        admin.close().await.ok();
        true
    }

    /// `None` when the backend is unavailable outside CI.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("roomcast.db").display()
                );
                Some(Self {
                    url,
                    postgres: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let base = std::env::var("TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
                let admin_url = format!("{base}/postgres");
                let admin = match Database::connect(&admin_url).await {
                    Ok(db) => db,
                    Err(err) => {
                        if in_ci() {
                            panic!("PostgreSQL is required in CI but {admin_url} refused: {err}");
                        }
                        eprintln!(
                            "SKIPPED: PostgreSQL not reachable at {admin_url} ({err}); set TEST_POSTGRES_URL"
                        );
                        return None;
                    }
                };
                let prefix = std::env::var("ROOMCAST_TEST_RUN").unwrap_or_else(|_| "local".into());
                let name = format!("rc_{prefix}_{}", Uuid::new_v4().simple());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                Some(Self {
                    url: format!("{base}/{name}"),
                    postgres: Some((admin_url, name)),
                    _dir: None,
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop is not async: drop the database from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(db) = Database::connect(&admin_url).await {
                    let _ = db
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                    db.close().await.ok();
                }
            });
        })
        .join();
    }
}

/// The test configuration: loopback port 0, the given database, no broker.
pub fn test_config(db_url: &str) -> Config {
    let mut config = Cli::try_parse_from([
        "roomcast",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        db_url,
    ])
    .expect("test arguments parse")
    .config;
    config.amqp_url = None;
    config.secret_key = Some(TEST_SECRET.to_owned().into());
    config.admin_username = None;
    config.admin_password = None;
    config.allowed_origins = Vec::new();
    // Tests post flat out as one user, register many accounts from one
    // address, make many rooms and open many sockets; a test of a budget
    // sets its own.
    config.message_burst = TEST_BUDGET;
    config.message_rate = TEST_BUDGET;
    config.register_burst = TEST_BUDGET;
    config.room_create_burst = TEST_BUDGET;
    config.sockets_per_user = TEST_BUDGET;
    config.database_max_connections = TEST_POOL;
    config
}

/// Each pool's PostgreSQL connections in a test's node: several tests run
/// at once, some with three nodes, on one server.
pub const TEST_POOL: u32 = 8;

/// Makes `root` the admin from the configuration, password
/// [`ROOT_PASSWORD`] (`Api::login_with("root", ROOT_PASSWORD)`).
pub fn with_root(config: &mut Config) {
    config.admin_username = Some("root".into());
    config.admin_password = Some(ROOT_PASSWORD.to_owned().into());
}

pub const ROOT_PASSWORD: &str = "root-password";

/// The message, registration, room and socket budgets tests run with,
/// unless they set others.
pub const TEST_BUDGET: u32 = 1_000_000;

/// A running application and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The app's broker, to publish as an operator would (no sender).
    pub broker: std::sync::Arc<dyn consumer::Broker>,
    /// Kept alive for as long as the app runs.
    pub env: TestEnv,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the application in this process with a config the caller may adjust.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let env = TestEnv::new(backend).await?;
    let mut config = test_config(&env.db.url);
    config.amqp_url = env.amqp_url();
    adjust(&mut config);
    let app = Application::build(config)
        .await
        .expect("application builds");
    let addr = app.local_addr();
    let broker = app.state().broker.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Some(TestApp {
        addr,
        client: client(),
        broker,
        env,
        stop: Some(stop),
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestApp {
    /// Sends the shutdown signal, as SIGTERM would.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Publishes `payload` into `messages` with no sender, as from the
    /// RabbitMQ console (through it, on RabbitMQ).
    pub async fn publish_by_hand(&self, payload: &Value) {
        let payload = payload.to_string();
        match &self.env.vhost {
            Some(vhost) => vhost.publish_by_hand("messages", &payload).await,
            None => self
                .broker
                .publish(payload.as_bytes())
                .await
                .expect("publish into the in-process broker"),
        }
    }

    /// Publishes into `messages` signed with the test key, as ingest would:
    /// the store stage trusts the envelope's `sender_id`.
    pub async fn publish_signed(&self, payload: &Value) {
        let payload = payload.to_string();
        let key = consumer::signing::EnvelopeKey::derive(TEST_SECRET.as_bytes());
        let signature = key.sign(payload.as_bytes());
        self.broker
            .publish_message(payload.as_bytes(), Some(&signature))
            .await
            .expect("a signed publish into messages");
    }

    /// Publishes raw bytes (not necessarily JSON, nor UTF-8) into `messages`
    /// with no sender, as from the RabbitMQ console.
    pub async fn publish_bytes_by_hand(&self, payload: &[u8]) {
        match &self.env.vhost {
            Some(vhost) => publish_bytes_by_hand(vhost, "messages", payload).await,
            None => self
                .broker
                .publish(payload)
                .await
                .expect("publish into the in-process broker"),
        }
    }

    /// The RabbitMQ vhost of the app (`None` on the in-process broker).
    pub fn vhost(&self) -> Option<&TestVhost> {
        self.env.vhost.as_ref()
    }
}

/// What tests do against any roomcast base URL (in-process or a process).
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: client(),
        }
    }

    /// Posts `content` to `room` as the holder of `token` and waits (up to
    /// 20 s) until the room's history has it; returns its id.
    pub async fn post_stored(&self, token: &str, room: &str, content: &str) -> String {
        let path = self.url(&format!("/rooms/{room}/messages"));
        let res = self
            .client
            .post(&path)
            .bearer_auth(token)
            .json(&serde_json::json!({"content": content}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let id = res.json::<Value>().await.unwrap()["id"].clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page: Value = self
                .client
                .get(format!("{path}?limit=200"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if page
                .as_array()
                .is_some_and(|p| p.iter().any(|m| m["id"] == id))
            {
                return id.as_str().unwrap().to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id} not stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200, "/metrics");
        res.text().await.unwrap()
    }

    /// One series of `/metrics` (`name` or `name{labels}`), if shown.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    /// Scrapes until `series` reaches `at_least` (15 s at most).
    pub async fn wait_for_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.metrics().await;
            let value = sample(&text, series);
            if value.is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {value:?}, not {at_least}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn register(&self, username: &str) -> Value {
        let res = self
            .client
            .post(self.url("/auth/register"))
            .json(&json!({"username": username, "email": format!("{username}@example.com"), "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            201,
            "register {username}: {}",
            res.text().await.unwrap()
        );
        res.json().await.unwrap()
    }

    pub async fn login(&self, username: &str) -> String {
        self.login_with(username, "password123").await
    }

    /// Logs in with that password (an admin made from the configuration);
    /// returns the access token.
    pub async fn login_with(&self, username: &str, password: &str) -> String {
        let res = self
            .client
            .post(self.url("/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "login {username}");
        res.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Registers and logs in; returns (user id, token).
    /// `GET /users/me` as `token`.
    pub async fn me(&self, token: &str) -> Value {
        self.client
            .get(self.url("/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn user(&self, username: &str) -> (Uuid, String) {
        let user = self.register(username).await;
        let id = user["id"].as_str().unwrap().parse().unwrap();
        (id, self.login(username).await)
    }

    pub async fn create_room(&self, token: &str, name: &str, kind: &str) -> Value {
        let res = self
            .client
            .post(self.url("/rooms"))
            .bearer_auth(token)
            .json(&json!({"name": name, "kind": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create room {name}");
        res.json().await.unwrap()
    }
}

impl TestApp {
    pub fn api(&self) -> Api {
        Api::new(self.addr)
    }
}

/// A `roomcast` process; killed when dropped.
pub struct Node {
    pub addr: SocketAddr,
    /// The start-up line the address was read from, as printed.
    pub startup_line: String,
    child: Child,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a `roomcast` process on the test's database and broker.
pub fn spawn_env_node(test_env: &TestEnv, extra: &[(&str, &str)]) -> Node {
    let amqp = test_env.amqp_url();
    let mut env: Vec<(&str, &str)> = amqp
        .as_deref()
        .map(|url| vec![("AMQP_URL", url)])
        .unwrap_or_default();
    env.extend_from_slice(extra);
    spawn_node(&test_env.db.url, &env)
}

/// Starts the real binary on a loopback port against `db_url`, with `env` on top.
pub fn spawn_node(db_url: &str, env: &[(&str, &str)]) -> Node {
    start_node(db_url, env, None)
}

/// Every line a node wrote to stdout or stderr, so far.
#[derive(Clone, Default)]
pub struct NodeLogs(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl NodeLogs {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log lines").clone()
    }

    fn push(&self, line: String) {
        self.0.lock().expect("log lines").push(line);
    }
}

/// [`spawn_node`], keeping every line the node writes to stdout and stderr.
pub fn spawn_node_with_logs(db_url: &str, env: &[(&str, &str)]) -> (Node, NodeLogs) {
    let logs = NodeLogs::default();
    (start_node(db_url, env, Some(logs.clone())), logs)
}

fn start_node(db_url: &str, env: &[(&str, &str)], keep: Option<NodeLogs>) -> Node {
    // ROOMCAST_TEST_BIN runs another build (a release one for soak figures).
    let bin = std::env::var("ROOMCAST_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_roomcast").to_owned());
    let mut cmd = Command::new(bin);
    for var in [
        "AMQP_URL",
        "DATABASE_URL",
        "BIND",
        "ADMIN_USERNAME",
        "ADMIN_PASSWORD",
        "NODE_ID",
        "ALLOWED_ORIGINS",
        "CLIENT_IP_SOURCE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("BIND", "127.0.0.1:0")
        .env("DATABASE_URL", db_url)
        .env("SECRET_KEY", TEST_SECRET)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("MESSAGE_BURST", TEST_BUDGET.to_string())
        .env("MESSAGE_RATE", TEST_BUDGET.to_string())
        .env("REGISTER_BURST", TEST_BUDGET.to_string())
        .env("ROOM_CREATE_BURST", TEST_BUDGET.to_string())
        .env("SOCKETS_PER_USER", TEST_BUDGET.to_string())
        .env("DATABASE_MAX_CONNECTIONS", TEST_POOL.to_string())
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(if keep.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
    let mut child = cmd.spawn().expect("start roomcast");
    let stdout = child.stdout.take().expect("piped stdout");
    if let (Some(stderr), Some(keep)) = (child.stderr.take(), keep.clone()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.push(line);
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // Read the address from the start-up line, then keep draining so the pipe never fills.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1)
                && let Some(tx) = tx.take()
            {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                let _ = tx.send((addr, line.clone()));
            }
            if std::env::var_os("ROOMCAST_TEST_NODE_LOGS").is_some() {
                eprintln!("{line}");
            }
            if let Some(keep) = &keep {
                keep.push(line);
            }
        }
    });
    let (addr, startup_line) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("roomcast printed its address");
    Node {
        addr: addr.parse().expect("address"),
        startup_line,
        child,
    }
}

/// The value of one series (`name` or `name{labels}`) in a Prometheus text page.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Publishes raw bytes by hand into `queue` of `vhost` (base64 through the
/// management API).
pub async fn publish_bytes_by_hand(vhost: &TestVhost, queue: &str, payload: &[u8]) {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
    let res = client()
        .post(format!(
            "{}/api/exchanges/{}/amq.default/publish",
            vhost.api,
            testsupport::enc(&vhost.name)
        ))
        .json(
            &json!({"properties": {"delivery_mode": 2}, "routing_key": queue,
            "payload": encoded, "payload_encoding": "base64"}),
        )
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["routed"], true, "published by hand: {body}");
}
