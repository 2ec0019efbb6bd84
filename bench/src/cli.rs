//! The command line.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

/// Load generator for roomcast: publishes messages into rooms, receives them on
/// WebSocket subscribers, and prints one summary line with throughput,
/// delivery, loss, duplicates and ingest-to-delivery latency.
///
/// It targets a running server (`--url`) or starts one (`--spawn`), and with
/// `--mode raw-amqp` measures the broker alone, `--mode raw-ws-fanout` socket
/// fan-out alone (one flush per frame): the ceilings. Loopback only.
/// Progress goes to stderr, the summary to stdout. The exit status is 0 when
/// every expected delivery arrived once, 2 when something was lost, duplicated
/// or not accepted, 1 when the run could not be done at all.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about)]
pub struct Args {
    /// What to measure: the whole server, or RabbitMQ alone.
    #[arg(long, value_enum, default_value_t = Mode::Roomcast)]
    pub mode: Mode,

    /// Base URL of a running roomcast (loopback only). Ignored with `--spawn`.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// Start this roomcast binary on a loopback port for the run, and stop it after.
    #[arg(long, value_name = "PATH")]
    pub spawn: Option<PathBuf>,

    /// DATABASE_URL of the spawned server.
    #[arg(long, default_value = "sqlite:///tmp/roomcast-bench.db?mode=rwc")]
    pub database_url: String,

    /// AMQP_URL of the spawned server (unset: its in-process broker); the
    /// broker of `--mode raw-amqp`.
    #[arg(long)]
    pub amqp_url: Option<String>,

    /// SECRET_KEY of the spawned server (at least 32 bytes); default: a random one.
    #[arg(long, hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Extra environment for the spawned server, e.g. `--spawn-env HISTORY_ON_CONNECT=0`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub spawn_env: Vec<(String, String)>,

    /// Copy the spawned server's log lines to stderr.
    #[arg(long)]
    pub spawn_logs: bool,

    /// Rooms to publish into (round-robin).
    #[arg(long, short = 'r', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rooms: u32,

    /// WebSocket subscribers per room.
    #[arg(long, short = 's', default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub subs: u32,

    /// Subscriber accounts the sockets are spread over (one user may hold many sockets).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sub_users: u32,

    /// Messages to publish in all.
    #[arg(long, short = 'm', default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub messages: u64,

    /// How messages go in: `POST /message` or WebSocket `message` frames.
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,

    /// Publishes in flight at once (HTTP requests, unacked WS frames, or
    /// unconfirmed AMQP publishes).
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Most messages per second one WebSocket publisher socket sends (`--via
    /// ws`); the server refuses frames past 20/s per socket. 0: no cap.
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate_or_zero)]
    pub ws_socket_rate: f64,

    /// Frames one WebSocket publisher socket may have unacked (`--via ws`);
    /// each room gets `ceil(concurrency / (rooms × window))` publisher sockets.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ws_window: u32,

    /// Publish at this many messages per second (interval pacing) instead of flat out.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Pad each message's content to this many bytes.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub size: u32,

    /// After publishing, how long to wait for the deliveries still missing.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest publishing phase; messages not sent by then count as failed.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Times one message is retried (503 + Retry-After, or a transport error) before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,

    /// Print the summary as one JSON line instead of the text line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Through roomcast: HTTP or WebSocket in, WebSocket out.
    Roomcast,
    /// RabbitMQ alone: publish with confirms to a queue of the run, consume with manual acks.
    RawAmqp,
    /// WebSocket fan-out alone, in this process: `--messages` frames to
    /// `--subs` sockets, each frame written and flushed on its own.
    RawWsFanout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Http,
    Ws,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Ws => "ws",
        }
    }
}

impl Args {
    /// Refuses what the run must not do: leave loopback, or miss what a mode needs.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.mode {
            Mode::Roomcast if self.spawn.is_none() => ensure_loopback("--url", &self.url)?,
            Mode::Roomcast => {}
            Mode::RawAmqp if self.amqp_url.is_none() => bail!("--mode raw-amqp needs --amqp-url"),
            Mode::RawAmqp | Mode::RawWsFanout => {}
        }
        if let Some(url) = &self.amqp_url {
            ensure_loopback("--amqp-url", url)?;
        }
        if let Some(key) = &self.secret_key
            && key.len() < 32
        {
            bail!("--secret-key must be at least 32 bytes");
        }
        Ok(())
    }
}

/// The host of `scheme://[user[:pass]@]host[:port][/...]`.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(host_port.split(':').next().unwrap_or(host_port))
}

fn ensure_loopback(flag: &str, url: &str) -> anyhow::Result<()> {
    let host = host_of(url).with_context(|| format!("{flag}: cannot read a host in {url}"))?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{flag}: {host} is not a loopback address; bench only runs on this machine");
    }
    Ok(())
}

/// `30s`, `2m`, `500ms`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("a positive number of messages per second".into()),
    }
}

fn parse_rate_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => parse_rate(s),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("http://127.0.0.1:8000"), Some("127.0.0.1"));
        assert_eq!(
            host_of("amqp://guest:guest@localhost:5672/%2f"),
            Some("localhost")
        );
        assert_eq!(host_of("http://[::1]:80/x"), Some("::1"));
        assert!(ensure_loopback("--url", "http://10.0.0.1:8000").is_err());
        assert!(ensure_loopback("--url", "http://127.0.0.2").is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_rate("0").is_err());
    }
}
