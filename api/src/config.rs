//! Typed configuration from the environment (and `.env`), as DESIGN.md §6 lists it.
//!
//! clap reads every variable, so `roomcast --help` documents them all and a bad
//! value stops start-up with one line naming the variable.

use std::{fmt, net::SocketAddr, time::Duration};

use axum_client_ip::ClientIpSource;
use clap::{
    Args, ValueEnum,
    builder::{BoolishValueParser, RangedI64ValueParser},
};

/// The development key used when `SECRET_KEY` is unset and no broker is configured.
const DEV_SECRET: &str = "roomcast-development-secret-key-not-for-production-use";
/// Keys that are public: the development key and the example compose once shipped.
/// Anyone can sign tokens with them, so they serve only a loopback address.
const PLACEHOLDER_SECRETS: [&str; 2] = [
    DEV_SECRET,
    "change-me-to-a-long-random-secret-of-32-bytes-or-more",
];
/// HS256 keys shorter than the hash output weaken the signature.
const MIN_SECRET_BYTES: usize = 32;

/// Everything `roomcast` (serve) needs; also the source of `--help`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on. Any address but loopback needs a SECRET_KEY.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// sea-orm database URL: `sqlite://…?mode=rwc` or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://roomcast.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,

    /// PostgreSQL connections each of a node's two pools (requests, and the
    /// store and delivery stages) may open. Keep nodes × 2 × this under the
    /// server's `max_connections` (100 by default). SQLite keeps its own 4.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = crate::db::MAX_POSTGRES_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`); unset runs the in-process broker.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Key that signs access tokens (HS256, at least 32 bytes). Required with AMQP_URL.
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,

    /// Lifetime of access tokens, e.g. `30m`, `2h`.
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "30m", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// How long a sign-in lasts unused: the refresh cookie's lifetime, renewed
    /// at each `POST /auth/refresh`, e.g. `14d`, `12h`.
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "14d", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// This node's name in logs and broker queues; generated when unset.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Create an unknown room (as private, owned by the caller) when a socket opens it.
    #[arg(
        long,
        env = "ROOMS_AUTO_CREATE",
        default_value = "true",
        value_parser = BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub rooms_auto_create: bool,

    /// Enable `POST /generate-token` (one-room guest tokens).
    #[arg(
        long,
        env = "GUEST_TOKENS",
        default_value = "false",
        value_parser = BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub guest_tokens: bool,

    /// Messages a socket receives on connect when it gives no `since`.
    #[arg(long, env = "HISTORY_ON_CONNECT", default_value_t = 50)]
    pub history_on_connect: u32,

    /// How long a socket must stay open before its user counts as present
    /// and the room hears of them in a `presence` frame (and, when it
    /// closes, of their leaving), e.g. `1s`,
    /// `500ms`; `0s` announces at once. Sockets that connect and drop sooner
    /// cost the room nothing.
    #[arg(long, env = "PRESENCE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub presence_delay: Duration,

    /// Largest message content, in bytes, up to 512 KiB (HTTP 413; WebSocket
    /// `error message_too_large`, or close 1009 for a plain-text frame).
    #[arg(
        long,
        env = "MAX_MESSAGE_BYTES",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(consumer::event::MAX_MESSAGE_BYTES_LIMIT))
    )]
    pub max_message_bytes: u32,

    /// Partition queues the store stage is split into, by room, with
    /// RabbitMQ (needs the consistent-hash exchange plugin beyond 1); each
    /// has one active consumer, spread over the nodes. 1 is the single
    /// `messages` queue. Every node must use the same number; the in-process
    /// broker takes every value as 1.
    #[arg(long, env = "MESSAGE_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub message_partitions: u16,

    /// Seconds a client may take to send a request's headers, and a kept-alive
    /// connection may sit idle; slower connections are closed (slowloris).
    #[arg(
        long,
        env = "HTTP_HEADER_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub http_header_timeout: u64,

    /// Socket connects one user may open in a burst on one node, before
    /// `SOCKET_CONNECT_RATE` applies (429 with `Retry-After` beyond).
    #[arg(long, env = "SOCKET_CONNECT_BURST", default_value_t = 60, value_parser = count())]
    pub socket_connect_burst: u32,

    /// Socket connects a second one user may keep opening on one node.
    #[arg(long, env = "SOCKET_CONNECT_RATE", default_value_t = 10, value_parser = count())]
    pub socket_connect_rate: u32,

    /// Accounts one client address may register in a burst, before
    /// `REGISTER_PER_MINUTE` applies (429 with `Retry-After` beyond). Each
    /// account has a message budget of its own, so this bounds what one
    /// stranger can send too; a school or office behind one address may
    /// need more.
    #[arg(long, env = "REGISTER_BURST", default_value_t = 10, value_parser = count())]
    pub register_burst: u32,

    /// Accounts a minute one client address may keep registering.
    #[arg(long, env = "REGISTER_PER_MINUTE", default_value_t = 1, value_parser = count())]
    pub register_per_minute: u32,

    /// Password hashes and checks (argon2, 19 MiB each) run at once; 0 means
    /// one per core.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", default_value_t = 0, value_parser = concurrency())]
    pub password_hash_concurrency: u32,

    /// Password hashes that may wait for a free core; more get 503 `busy`
    /// with `Retry-After`.
    #[arg(long, env = "PASSWORD_HASH_QUEUE", default_value_t = 64, value_parser = queue_len())]
    pub password_hash_queue: u32,

    /// Messages and edits one user may send in a burst on one node, over
    /// HTTP and every socket together, before `MESSAGE_RATE` applies (429
    /// or `error rate_limited`, with the wait, beyond). Admins are not
    /// limited: a backend that posts for many people runs as an admin.
    #[arg(long, env = "MESSAGE_BURST", default_value_t = 30, value_parser = count())]
    pub message_burst: u32,

    /// Messages and edits a second one user may keep sending on one node.
    #[arg(long, env = "MESSAGE_RATE", default_value_t = 10, value_parser = count())]
    pub message_rate: u32,

    /// The names `MESSAGE_BURST` and `MESSAGE_RATE` had when they counted
    /// HTTP messages alone; set, they stop the start, so that an old setting
    /// is not silently ignored.
    #[arg(long, env = "HTTP_MESSAGE_BURST", hide = true)]
    pub old_http_message_burst: Option<String>,
    #[arg(long, env = "HTTP_MESSAGE_RATE", hide = true)]
    pub old_http_message_rate: Option<String>,

    /// Rooms one user may create (`POST /rooms`, or a socket opening an
    /// unknown room) in a burst on one node, before `ROOM_CREATE_PER_MINUTE`
    /// applies (429 with `Retry-After` beyond).
    #[arg(long, env = "ROOM_CREATE_BURST", default_value_t = 20, value_parser = count())]
    pub room_create_burst: u32,

    /// Rooms a minute one user may keep creating on one node.
    #[arg(long, env = "ROOM_CREATE_PER_MINUTE", default_value_t = 10, value_parser = count())]
    pub room_create_per_minute: u32,

    /// Guest tokens (`POST /generate-token`) one client address may ask for
    /// in a burst, before `GUEST_TOKENS_PER_MINUTE` applies (429 beyond).
    #[arg(long, env = "GUEST_TOKEN_BURST", default_value_t = 60, value_parser = count())]
    pub guest_token_burst: u32,

    /// Guest tokens a minute one client address may keep asking for.
    #[arg(long, env = "GUEST_TOKENS_PER_MINUTE", default_value_t = 60, value_parser = count())]
    pub guest_tokens_per_minute: u32,

    /// Avatar uploads decoded at once; 0 means one per core.
    #[arg(long, env = "AVATAR_DECODE_CONCURRENCY", default_value_t = 0, value_parser = concurrency())]
    pub avatar_decode_concurrency: u32,

    /// Avatar uploads that may wait to be decoded; more get 503 `busy` with
    /// `Retry-After`.
    #[arg(long, env = "AVATAR_DECODE_QUEUE", default_value_t = 16, value_parser = queue_len())]
    pub avatar_decode_queue: u32,

    /// Sockets (room sockets, the own `/ws`, `/echo`) one user may hold open at once on
    /// one node; one more is refused before the upgrade with 429
    /// `too_many_sockets`. A person's tabs and rooms stay far below it.
    #[arg(long, env = "SOCKETS_PER_USER", default_value_t = 100, value_parser = count())]
    pub sockets_per_user: u32,

    /// Echo transcripts kept per user; saving one more deletes the oldest.
    #[arg(
        long,
        env = "ECHO_TRANSCRIPTS_PER_USER",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub echo_transcripts_per_user: u32,

    /// Messages the in-process broker (no `AMQP_URL`) holds for the store
    /// stage; a publish beyond answers 503 `busy` with `Retry-After`.
    #[arg(
        long,
        env = "INPROCESS_QUEUE_CAPACITY",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    pub inprocess_queue_capacity: u32,

    /// Message frames one socket may send in a burst before
    /// `SOCKET_MESSAGE_RATE` applies (`error rate_limited` beyond).
    #[arg(long, env = "SOCKET_MESSAGE_BURST", default_value_t = 30, value_parser = count())]
    pub socket_message_burst: u32,

    /// Message frames a second one socket may keep sending.
    #[arg(long, env = "SOCKET_MESSAGE_RATE", default_value_t = 20, value_parser = count())]
    pub socket_message_rate: u32,

    /// Where a client's address (for login limits) comes from: `ConnectInfo`
    /// (the TCP peer) when clients connect directly; behind a proxy, the header
    /// it sets: `XRealIp`, `RightmostXForwardedFor`, `CfConnectingIp`,
    /// `TrueClientIp`, `FlyClientIp`, `CloudFrontViewerAddress` or
    /// `XEnvoyExternalAddress`. A request without that header counts as from its TCP peer.
    #[arg(long, env = "CLIENT_IP_SOURCE", default_value = "ConnectInfo", value_parser = parse_client_ip_source)]
    pub client_ip_source: ClientIpSource,

    /// Browser origins allowed to open sockets and use the cookie, comma-separated
    /// (the server's own host is always allowed).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// WebSocket URL the echo channel relays through; unset echoes locally.
    #[arg(long, env = "ECHO_UPSTREAM_URL")]
    pub echo_upstream_url: Option<String>,

    /// Username of the admin created at start-up if missing.
    #[arg(long, env = "ADMIN_USERNAME", requires = "admin_password")]
    pub admin_username: Option<String>,

    /// Password of that admin.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    /// Log output: `pretty` for people, `json` for collectors. Filter with RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// The sources `CLIENT_IP_SOURCE` accepts, as the error lists them.
const CLIENT_IP_SOURCES: &str = "ConnectInfo, XRealIp, RightmostXForwardedFor, CfConnectingIp, \
     TrueClientIp, FlyClientIp, CloudFrontViewerAddress, XEnvoyExternalAddress";

/// A count of requests, sockets or tokens: 1 to a million.
fn count() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=1_000_000)
}

/// How many at once: 0 (as many as there are cores) to 1024.
fn concurrency() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=1024)
}

/// How many may wait: 0 to 100 000.
fn queue_len() -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(0..=100_000)
}

fn parse_client_ip_source(value: &str) -> Result<ClientIpSource, String> {
    value
        .parse()
        .map_err(|_| format!("expected one of {CLIENT_IP_SOURCES}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A string that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Config {
    /// Checks the rules that span variables; the error is one line naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        match &self.secret_key {
            None if self.amqp_url.is_some() => {
                return Err(
                    "SECRET_KEY: required when AMQP_URL is set (every node must share it)".into(),
                );
            }
            Some(key) if key.expose().len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "SECRET_KEY: must be at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            _ => {}
        }
        if !(self.database_url.starts_with("sqlite:") || self.database_url.starts_with("postgres"))
        {
            return Err("DATABASE_URL: must start with sqlite: or postgres://".into());
        }
        if let Some(url) = &self.amqp_url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return Err("AMQP_URL: must start with amqp:// or amqps://".into());
        }
        if self.old_http_message_burst.is_some() || self.old_http_message_rate.is_some() {
            return Err(
                "HTTP_MESSAGE_BURST, HTTP_MESSAGE_RATE: renamed MESSAGE_BURST and \
                 MESSAGE_RATE, which count a user's socket messages and edits too"
                    .into(),
            );
        }
        if self.access_token_ttl < Duration::from_secs(10) {
            return Err("ACCESS_TOKEN_TTL: must be at least 10s".into());
        }
        Ok(())
    }

    /// The signing key; the development key when none is configured.
    pub fn signing_key(&self) -> &str {
        self.secret_key.as_ref().map_or(DEV_SECRET, Secret::expose)
    }

    /// Checks what only serving needs: a public signing key (none, or a
    /// placeholder) is refused unless the server listens on loopback alone,
    /// where nobody else can reach it. The error is one line naming `SECRET_KEY`.
    pub fn validate_serving(&self) -> Result<(), String> {
        if self.bind.ip().is_loopback() {
            return Ok(());
        }
        match &self.secret_key {
            None => Err(format!(
                "SECRET_KEY: required to listen on {} (anything but loopback); \
                 set it to a random string of at least {MIN_SECRET_BYTES} bytes",
                self.bind
            )),
            Some(key) if is_placeholder(key.expose()) => Err(format!(
                "SECRET_KEY: a public placeholder cannot sign tokens on {}; \
                 set it to a random string of at least {MIN_SECRET_BYTES} bytes",
                self.bind
            )),
            Some(_) => Ok(()),
        }
    }

    /// True when tokens are signed with the public development key.
    pub fn uses_dev_secret(&self) -> bool {
        self.secret_key.is_none()
    }

    /// True when the configured key is public (see [`is_placeholder`]).
    pub fn uses_placeholder_secret(&self) -> bool {
        self.secret_key
            .as_ref()
            .is_some_and(|key| is_placeholder(key.expose()))
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("node-{}", &id[..8])
        })
    }
}

/// A key anyone may know: a shipped placeholder, or one character repeated.
pub fn is_placeholder(key: &str) -> bool {
    let mut chars = key.chars();
    let first = chars.next();
    PLACEHOLDER_SECRETS.contains(&key) || chars.all(|c| Some(c) == first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the shipped defaults let one stranger do: ten accounts from an
    /// address at once, then one a minute; from each a person's pace of
    /// messages (30 at once, then 10 a second on a node) and of new rooms
    /// (20 at once, then 10 a minute), and 100 open sockets.
    #[test]
    fn the_shipped_budgets_pace_a_stranger() {
        use clap::Parser;
        let config = crate::cli::Cli::try_parse_from(["roomcast"])
            .unwrap()
            .config;
        assert_eq!((config.register_burst, config.register_per_minute), (10, 1));
        assert_eq!((config.message_burst, config.message_rate), (30, 10));
        assert_eq!(
            (config.room_create_burst, config.room_create_per_minute),
            (20, 10)
        );
        assert_eq!(config.sockets_per_user, 100);
    }

    #[test]
    fn placeholders_are_recognised() {
        assert!(is_placeholder(DEV_SECRET));
        assert!(is_placeholder(
            "change-me-to-a-long-random-secret-of-32-bytes-or-more"
        ));
        assert!(is_placeholder(&"x".repeat(64)));
        assert!(!is_placeholder(
            "a-long-random-secret-nobody-has-guessed-yet-9f3"
        ));
    }
}
