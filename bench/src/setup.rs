//! Getting ready: a roomcast to talk to (started here with `--spawn`, or
//! already running), the accounts, their tokens and the rooms.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdout, Command},
    sync::oneshot,
};
use uuid::Uuid;

/// How long a spawned server may take to print its address (it migrates first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Setup requests (register, login, create room) run this many at a time.
const SETUP_PARALLEL: usize = 16;
/// 429s a login (or a room creation) waits out before setup gives up.
const LOGIN_RETRIES: u32 = 10;
const PASSWORD: &str = "bench-password-1234";

/// A roomcast process of this run; killed when stopped or dropped.
pub struct Server {
    pub base: String,
    child: Child,
}

impl Server {
    /// Starts `binary` on a loopback port and waits for its `listening on` line.
    pub async fn spawn(
        binary: &Path,
        database_url: &str,
        amqp_url: Option<&str>,
        secret_key: &str,
        extra_env: &[(String, String)],
        echo_logs: bool,
    ) -> anyhow::Result<Self> {
        // Resolved here: the process starts in the temporary directory.
        let binary = &std::fs::canonicalize(binary)
            .with_context(|| format!("cannot find {}", binary.display()))?;
        let mut child = command(binary, database_url, amqp_url, secret_key, extra_env)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let addr = tokio::select! {
            addr = listening_address(stdout, echo_logs) => addr.ok(),
            () = tokio::time::sleep(START_TIMEOUT) => None,
        };
        let Some(addr) = addr else {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill().await;
            bail!(
                "{} did not print `listening on http://…` ({})",
                binary.display(),
                status.map_or("timed out".to_owned(), |s| format!("exited: {s}"))
            );
        };
        Ok(Self {
            base: format!("http://{addr}"),
            child,
        })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The budgets a spawned server runs with (a server started by hand for
/// the bench needs the same).
pub const BUDGETS: [(&str, &str); 5] = [
    ("MESSAGE_BURST", "1000000"),
    ("MESSAGE_RATE", "1000000"),
    ("REGISTER_BURST", "1000000"),
    ("ROOM_CREATE_BURST", "1000000"),
    ("SOCKETS_PER_USER", "1000000"),
];

/// The server's command: on a loopback port, with JSON logs and long-lived
/// tokens, and nothing from the caller's environment deciding where it
/// listens or what it joins.
fn command(
    binary: &Path,
    database_url: &str,
    amqp_url: Option<&str>,
    secret_key: &str,
    extra_env: &[(String, String)],
) -> Command {
    let mut cmd = Command::new(binary);
    for var in [
        "AMQP_URL",
        "DATABASE_URL",
        "BIND",
        "ADMIN_USERNAME",
        "ADMIN_PASSWORD",
        "NODE_ID",
        "RUST_LOG",
        "LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("BIND", "127.0.0.1:0")
        .env("DATABASE_URL", database_url)
        .env("SECRET_KEY", secret_key)
        .env("LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            "info,sqlx=warn,sea_orm=warn,lapin=warn,tower_http=warn",
        )
        // Sockets close when their token expires; outlast any run.
        .env("ACCESS_TOKEN_TTL", "12h");
    // One account makes the rooms and posts everything, the subscribers'
    // accounts register from one address and hold up to a thousand sockets
    // each: the shipped per-user and per-address budgets would pace the
    // run, not measure the server.
    for (var, value) in BUDGETS {
        cmd.env(var, value);
    }
    if let Some(url) = amqp_url {
        cmd.env("AMQP_URL", url);
    }
    cmd.envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // No `.env` file of some checkout is picked up.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// The address of the server's start-up line; the server's stdout is
/// drained after it (echoed with `echo_logs`) so the pipe never fills.
fn listening_address(stdout: ChildStdout, echo_logs: bool) -> oneshot::Receiver<String> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("listening on http://").nth(1)
                && let Some(tx) = tx.take()
            {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
                    .collect();
                let _ = tx.send(addr);
            }
            if echo_logs {
                eprintln!("[roomcast] {line}");
            }
        }
    });
    rx
}

/// The resident memory of process `pid` (`VmRSS`), in KiB; Linux only.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A random key for a spawned server: 64 hex characters.
pub fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// The HTTP client every request of the run goes through.
pub fn http_client(pool: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")
}

/// The server's API, as far as setup needs it.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

/// A logged-in account.
#[derive(Debug, Clone)]
pub struct User {
    pub token: String,
}

/// A room of the run.
#[derive(Debug, Clone)]
pub struct Room {
    pub id: String,
}

/// What a run of roomcast publishes as and subscribes with.
pub struct World {
    /// Unique to this run, in every name it creates.
    pub prefix: String,
    pub publisher: User,
    pub subscribers: Vec<User>,
    pub rooms: Vec<Room>,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `ws://host:port` for the same server.
    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    /// Waits (up to 30 s) for `/healthz`.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let last = match self.client.get(self.url("/healthz")).send().await {
                Ok(res) if res.status().is_success() => return Ok(()),
                Ok(res) => format!("HTTP {}", res.status()),
                Err(err) => err.to_string(),
            };
            if tokio::time::Instant::now() > deadline {
                bail!("{} is not healthy: {last}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<(u16, Value, Option<u64>)> {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        let body = res.json().await.unwrap_or(Value::Null);
        Ok((status, body, retry_after))
    }

    /// Registers `name` and logs in.
    pub async fn user(&self, name: &str) -> anyhow::Result<User> {
        let (status, body, _) = self
            .post_json(
                "/auth/register",
                None,
                json!({"username": name, "email": format!("{name}@bench.example.com"), "password": PASSWORD}),
            )
            .await?;
        if status != 201 {
            bail!("register {name}: HTTP {status} {body}");
        }
        // Logins are throttled per address: wait as a 429 asks, a few times.
        let mut attempts = 0;
        let token = loop {
            let (status, body, retry_after) = self
                .post_json(
                    "/auth/login",
                    None,
                    json!({"username": name, "password": PASSWORD}),
                )
                .await?;
            match body["access_token"].as_str() {
                Some(token) if status == 200 => break token.to_owned(),
                _ if status == 429 && attempts < LOGIN_RETRIES => {
                    attempts += 1;
                    let secs = retry_after.unwrap_or(1).clamp(1, 10);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                _ => bail!("login {name}: HTTP {status} {body}"),
            }
        };
        Ok(User { token })
    }

    /// Creates a public room owned by `owner`. Room creations are limited
    /// per user (`ROOM_CREATE_BURST`, 20 by default; a spawned server has
    /// [`BUDGETS`]): past it, waits as a
    /// 429 asks, a few times.
    pub async fn create_room(&self, owner: &User, name: &str) -> anyhow::Result<Room> {
        let mut attempts = 0;
        let (status, body) = loop {
            let (status, body, retry_after) = self
                .post_json(
                    "/rooms",
                    Some(&owner.token),
                    json!({"name": name, "kind": "public"}),
                )
                .await?;
            if status != 429 || attempts >= LOGIN_RETRIES {
                break (status, body);
            }
            attempts += 1;
            let secs = retry_after.unwrap_or(1).clamp(1, 10);
            tokio::time::sleep(Duration::from_secs(secs)).await;
        };
        let id = body["id"]
            .as_str()
            .filter(|_| status == 201)
            .ok_or_else(|| anyhow!("create room {name}: HTTP {status} {body}"))?;
        Ok(Room { id: id.to_owned() })
    }

    /// One publisher, `sub_users` subscribers and `rooms` public rooms, all
    /// named after a fresh run prefix.
    pub async fn world(&self, sub_users: u32, rooms: u32) -> anyhow::Result<World> {
        let prefix = format!("b{}", &Uuid::new_v4().simple().to_string()[..10]);
        let publisher = self.user(&format!("{prefix}-pub")).await?;
        let subscribers: Vec<User> = stream::iter(0..sub_users)
            .map(|i| {
                let name = format!("{prefix}-sub{i}");
                async move { self.user(&name).await }
            })
            .buffered(SETUP_PARALLEL)
            .try_collect()
            .await?;
        let rooms: Vec<Room> = stream::iter(0..rooms)
            .map(|i| {
                let name = format!("{prefix}-room{i}");
                let publisher = &publisher;
                async move { self.create_room(publisher, &name).await }
            })
            .buffered(SETUP_PARALLEL)
            .try_collect()
            .await?;
        Ok(World {
            prefix,
            publisher,
            subscribers,
            rooms,
        })
    }
}
