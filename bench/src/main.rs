//! `bench`: a load generator for roomcast.
//!
//! It sets up a run of its own on a roomcast server (a publisher account,
//! subscriber accounts and public rooms, all named after a fresh prefix so
//! reruns against the same database do not collide), opens `--subs`
//! WebSocket subscribers in each of `--rooms` rooms, publishes `--messages`
//! messages round-robin over the rooms — through `POST /message` or WebSocket
//! `message` frames, flat out with `--concurrency` in flight or paced at
//! `--rate` — and counts what every socket receives. `--mode raw-amqp`
//! measures RabbitMQ alone the same way, as the ceiling, and `--mode
//! raw-ws-fanout` WebSocket fan-out alone with one flush per frame. The result is one
//! line on stdout (`--json`: one JSON object instead):
//!
//! ```text
//! mode=http rooms=2 subs=2 messages=2000 publish_rate=1316.2/s deliveries=2628.2/s delivered/expected=4000/4000 (1.000) lost=0 dup=0 latency_ms p50=34.5 p90=46.0 p99=64.2 max=69.8 retries=0 failed=0 closed=0 elapsed=1.5s
//! ```
//!
//! - `publish_rate`: accepted messages (202, `ack`, or broker confirm) per
//!   second, from the first send to the last acceptance.
//! - `deliveries`: distinct messages received, summed over sockets, per
//!   second from the first send to the last new delivery.
//! - `expected`: accepted messages of each room × its subscribers; `lost`:
//!   what a socket expected and never got; `dup`: frames whose message id the
//!   socket had already seen.
//! - `latency_ms`: receive time − send time, the send time being written into
//!   the content (`"<unix_nanos> <n>"`) when the request or frame goes out.
//! - `retries`: 503s (after their `Retry-After`), transport errors and rate
//!   refusals that were tried again; `failed`: messages never accepted;
//!   `closed`: subscriber sockets that ended before the run did.
//!
//! Modules: [`cli`] the options, [`setup`] the server and the accounts,
//! [`publish`] the senders, [`subscribe`] the receivers, [`raw`] the broker
//! alone, [`raw_ws`] socket fan-out alone, [`report`] time stamps, histograms and the summary.

#![warn(clippy::too_many_lines)]

mod cli;
mod publish;
mod raw;
mod raw_ws;
mod report;
mod setup;
mod subscribe;

use std::{process::ExitCode, sync::Arc};

use anyhow::anyhow;
use clap::Parser;
use tokio::time::Instant;

use crate::{
    cli::{Args, Mode, Via},
    publish::{Plan, Published, Schedule, WsPublishers},
    report::{Summary, histogram},
    setup::{Api, Server, World},
    subscribe::{SocketTally, Subscribers, wait_for_deliveries},
};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = args.check() {
        eprintln!("bench: {err:#}");
        return ExitCode::from(1);
    }
    let run = async {
        match args.mode {
            Mode::Roomcast => roomcast(&args).await,
            Mode::RawAmqp => raw::run(&args).await,
            Mode::RawWsFanout => raw_ws::run(&args).await,
        }
    };
    // Dropping the run on Ctrl-C also kills a spawned server.
    let result = tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    match result {
        Ok(summary) => {
            if args.json {
                println!("{}", summary.json());
            } else {
                println!("{}", summary.line());
            }
            if summary.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// A run through roomcast, on a server of its own when `--spawn` says so.
async fn roomcast(args: &Args) -> anyhow::Result<Summary> {
    let client = setup::http_client(args.concurrency as usize + 16)?;
    let server = match &args.spawn {
        Some(binary) => {
            let secret = args.secret_key.clone().unwrap_or_else(setup::random_secret);
            let server = Server::spawn(
                binary,
                &args.database_url,
                args.amqp_url.as_deref(),
                &secret,
                &args.spawn_env,
                args.spawn_logs,
            )
            .await?;
            eprintln!("bench: started {} at {}", binary.display(), server.base);
            Some(server)
        }
        None => None,
    };
    let base = server.as_ref().map_or_else(
        || args.url.trim_end_matches('/').to_owned(),
        |s| s.base.clone(),
    );
    let pid = server.as_ref().and_then(Server::pid);
    let result = measure(args, &Api { base, client }, pid).await;
    if let Some(server) = server {
        server.stop().await;
    }
    result
}

/// Sets up, publishes, drains and counts; `server`: the process id of a
/// server bench started, whose memory it reports.
async fn measure(args: &Args, api: &Api, server: Option<u32>) -> anyhow::Result<Summary> {
    api.wait_healthy().await?;
    let (world, subscribers, publishers) = prepare(args, api, server).await?;
    let plan = Plan {
        prefix: world.prefix.clone(),
        size: args.size as usize,
        max_retries: args.max_retries,
        concurrency: args.concurrency as usize,
        ws_socket_rate: Some(args.ws_socket_rate).filter(|&rate| rate > 0.0),
        ws_window: args.ws_window as usize,
    };
    let rooms = world.rooms.len();
    let schedule = Arc::new(Schedule::new(
        args.messages,
        rooms as u64,
        args.rate,
        args.publish_timeout,
    ));
    let start = schedule.start();
    let published = Arc::new(Published::new(start, rooms));
    match publishers {
        Some(publishers) => publishers.run(&plan, schedule, published.clone()).await,
        None => publish::over_http(api, &world, &plan, schedule, published.clone()).await,
    }
    eprintln!(
        "bench: {}/{} accepted in {:.1}s; draining (up to {:?})",
        published.accepted(),
        args.messages,
        published.publish_time().as_secs_f64(),
        args.drain_timeout
    );

    let subs = u64::from(args.subs);
    let expected: u64 = (0..rooms).map(|r| published.accepted_in(r) * subs).sum();
    wait_for_deliveries(
        &subscribers.delivered,
        expected,
        Instant::now() + args.drain_timeout,
    )
    .await;
    let end = Instant::now();
    let tallies = subscribers.finish().await;
    summarize(args, &published, tallies, expected, start, end)
}

/// The run's accounts and rooms, its subscriber sockets and, publishing over
/// WebSocket, its publisher sockets: all open before the clock starts.
async fn prepare(
    args: &Args,
    api: &Api,
    server: Option<u32>,
) -> anyhow::Result<(World, Subscribers, Option<WsPublishers>)> {
    let setup_start = Instant::now();
    let world = api
        .world(args.sub_users.min(args.rooms * args.subs), args.rooms)
        .await?;
    let rss_before = server.and_then(setup::rss_kib);
    let subscribers = Subscribers::open_all(&api.ws_base(), &world, args.subs).await?;
    if let (Some(pid), Some(before)) = (server, rss_before) {
        // Let the sockets' first frames and buffers settle before reading.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Some(after) = setup::rss_kib(pid) {
            eprintln!(
                "bench: server RSS {:.1} MiB before the subscriber sockets, {:.1} MiB with {} ({:.1} KiB each)",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                subscribers.len(),
                after.saturating_sub(before) as f64 / subscribers.len().max(1) as f64,
            );
        }
    }
    let publishers = match args.via {
        Via::Ws => Some(
            WsPublishers::open(
                api,
                &world,
                args.concurrency as usize,
                args.ws_window as usize,
            )
            .await?,
        ),
        Via::Http => None,
    };
    eprintln!(
        "bench: run {}: {} rooms, {} subscriber sockets{} ready in {:.1}s; publishing {} messages via {}",
        world.prefix,
        world.rooms.len(),
        subscribers.len(),
        publishers.as_ref().map_or(String::new(), |p| format!(
            ", {} publisher sockets (at most {}/s and {} unacked each)",
            p.len(),
            args.ws_socket_rate,
            args.ws_window
        )),
        setup_start.elapsed().as_secs_f64(),
        args.messages,
        args.via.as_str(),
    );
    Ok((world, subscribers, publishers))
}

/// What the sockets counted, against what was accepted.
fn summarize(
    args: &Args,
    published: &Published,
    tallies: Vec<SocketTally>,
    expected: u64,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Summary> {
    let mut latency = histogram();
    let (mut delivered, mut duplicates, mut lost, mut closed) = (0, 0, 0, 0);
    let mut last_new = None;
    let mut first_end = None;
    for tally in tallies {
        delivered += tally.unique;
        duplicates += tally.duplicates;
        lost += published
            .accepted_in(tally.room)
            .saturating_sub(tally.unique);
        latency.add(&tally.latency)?;
        last_new = last_new.max(tally.last_new);
        if let Some(why) = tally.ended {
            closed += 1;
            first_end.get_or_insert(why);
        }
    }
    let (errors, first_error) = published.errors();
    if let Some(first) = first_error {
        eprintln!("bench: {errors} publish errors; first: {first}");
    }
    if let Some(why) = first_end {
        eprintln!("bench: {closed} subscriber sockets ended early; first: {why}");
    }
    Ok(Summary {
        mode: args.via.as_str(),
        rooms: u64::from(args.rooms),
        subs: u64::from(args.subs),
        concurrency: u64::from(args.concurrency),
        rate: args.rate,
        messages: args.messages,
        accepted: published.accepted(),
        publish_time: published.publish_time(),
        expected,
        delivered,
        lost,
        duplicates,
        delivery_time: last_new.map_or(end - start, |t| t - start),
        latency,
        retries: published.retries(),
        closed,
        elapsed: end - start,
    })
}
