//! `--mode raw-amqp`: RabbitMQ alone, the ceiling for roomcast's message path.
//!
//! Publishers put persistent messages into a durable queue of the run's own,
//! with publisher confirms, `concurrency` unconfirmed at a time; a consumer on
//! another connection takes them with manual acks (acking many at once) and
//! times them as subscribers do. The queue is deleted at the end (and expires
//! by itself if a run is cut short).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, timeout},
};
use uuid::Uuid;

use crate::{
    cli::Args,
    publish::{Published, Schedule},
    report::{Summary, content, histogram, now_nanos, parse_content, record_latency},
    subscribe::wait_for_deliveries,
};

/// Unacked deliveries the consumer may hold.
const PREFETCH: u16 = 1_000;
/// The consumer acks (with `multiple`) every this many deliveries.
const ACK_EVERY: u64 = 100;
/// An abandoned queue of a run disappears after this long unused (ms).
const QUEUE_EXPIRES_MS: i64 = 10 * 60 * 1_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: &Args) -> anyhow::Result<Summary> {
    let url = args.amqp_url.as_deref().context("--amqp-url")?;
    let queue = format!("bench.{}", &Uuid::new_v4().simple().to_string()[..12]);
    let publisher = connect(url, "bench publisher").await?;
    let consumer = connect(url, "bench consumer").await?;

    let channel = publisher.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    declare(&channel, &queue).await?;
    let result = measure(args, &channel, &consumer, &queue).await;

    if let Err(err) = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
    {
        eprintln!("bench: could not delete queue {queue}: {err}");
    }
    let _ = consumer.close(200, "bench done".into()).await;
    let _ = publisher.close(200, "bench done".into()).await;
    result
}

async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .context("AMQP connect timed out")?
        .with_context(|| format!("AMQP connect to {url}"))
}

/// A durable classic queue, like roomcast's `messages`.
async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .with_context(|| format!("declare queue {queue}"))?;
    Ok(())
}

async fn measure(
    args: &Args,
    channel: &Channel,
    consumer_conn: &Connection,
    queue: &str,
) -> anyhow::Result<Summary> {
    let total = args.messages;
    let consumer_channel = consumer_conn.create_channel().await?;
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let deliveries = consumer_channel
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (stop, stopped) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let consuming = tokio::spawn(consume(deliveries, total, stopped, delivered.clone()));
    eprintln!("bench: raw-amqp on queue {queue}; publishing {total} messages");

    let schedule = Arc::new(Schedule::new(total, 1, args.rate, args.publish_timeout));
    let start = schedule.start();
    let published = Arc::new(Published::new(start, 1));
    let mut publishers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (channel, schedule, published) = (channel.clone(), schedule.clone(), published.clone());
        let queue = queue.to_owned();
        let (size, max_retries) = (args.size as usize, args.max_retries);
        publishers.spawn(async move {
            while let Some(n) = schedule.next().await {
                publish_one(&channel, &queue, n, size, max_retries, &published).await;
            }
        });
    }
    while publishers.join_next().await.is_some() {}
    let accepted = published.accepted();
    eprintln!(
        "bench: {accepted}/{total} confirmed in {:.1}s; draining (up to {:?})",
        published.publish_time().as_secs_f64(),
        args.drain_timeout
    );
    wait_for_deliveries(&delivered, accepted, Instant::now() + args.drain_timeout).await;
    let end = Instant::now();
    let _ = stop.send(true);
    let tally = consuming.await.context("consumer task")?;
    let (errors, first) = published.errors();
    if let Some(first) = first {
        eprintln!("bench: {errors} publish errors; first: {first}");
    }
    if let Some(why) = &tally.ended {
        eprintln!("bench: consumer ended early: {why}");
    }
    Ok(Summary {
        mode: "raw-amqp",
        rooms: 1,
        subs: 1,
        concurrency: u64::from(args.concurrency),
        rate: args.rate,
        messages: total,
        accepted,
        publish_time: published.publish_time(),
        expected: accepted,
        delivered: tally.unique,
        lost: accepted.saturating_sub(tally.unique),
        duplicates: tally.duplicates,
        delivery_time: tally.last_new.map_or(end - start, |t| t - start),
        latency: tally.latency,
        retries: published.retries(),
        closed: u64::from(tally.ended.is_some()),
        elapsed: end - start,
    })
}

/// Publishes message `n` and waits for its confirm; a nack or an error is retried.
async fn publish_one(
    channel: &Channel,
    queue: &str,
    n: u64,
    size: usize,
    max_retries: u32,
    published: &Published,
) {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut attempt = 0;
    loop {
        let payload = content(now_nanos(), n, size);
        let confirmed = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    properties.clone(),
                )
                .await?;
            confirm.await
        };
        let why = match timeout(CONFIRM_TIMEOUT, confirmed).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => {
                published.accept(0);
                return;
            }
            Ok(Ok(_)) => "nacked".to_owned(),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no confirm within {CONFIRM_TIMEOUT:?}"),
        };
        if attempt >= max_retries {
            published.error(format!("publish: {why} after {attempt} retries"));
            return;
        }
        attempt += 1;
        published.retry();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the consumer saw.
struct ConsumerTally {
    unique: u64,
    duplicates: u64,
    latency: Histogram<u64>,
    last_new: Option<Instant>,
    ended: Option<String>,
}

/// Takes deliveries until told to stop, acking every [`ACK_EVERY`] with `multiple`.
async fn consume(
    mut deliveries: Consumer,
    total: u64,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
) -> ConsumerTally {
    let mut seen = vec![false; usize::try_from(total).unwrap_or(usize::MAX)];
    let mut tally = ConsumerTally {
        unique: 0,
        duplicates: 0,
        latency: histogram(),
        last_new: None,
        ended: None,
    };
    let mut unacked = None;
    let mut since_ack = 0;
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.changed() => break,
            delivery = deliveries.next() => delivery,
        };
        let received = now_nanos();
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                tally.ended = Some(err.to_string());
                break;
            }
            None => {
                tally.ended = Some("consumer cancelled".to_owned());
                break;
            }
        };
        let parsed = std::str::from_utf8(&delivery.data)
            .ok()
            .and_then(parse_content);
        if let Some((sent, n)) = parsed
            && let Some(slot) = usize::try_from(n).ok().and_then(|i| seen.get_mut(i))
        {
            if *slot {
                tally.duplicates += 1;
            } else {
                *slot = true;
                tally.unique += 1;
                tally.last_new = Some(Instant::now());
                delivered.fetch_add(1, Ordering::Relaxed);
                record_latency(&mut tally.latency, sent, received);
            }
        }
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            since_ack = 0;
            unacked = None;
            ack_up_to(&delivery.acker).await;
        } else {
            unacked = Some(delivery.acker);
        }
    }
    if let Some(acker) = unacked {
        ack_up_to(&acker).await;
    }
    tally
}

async fn ack_up_to(acker: &lapin::Acker) {
    let _ = acker.ack(BasicAckOptions { multiple: true }).await;
}
