//! The store stage's queues on RabbitMQ, and how their single active
//! consumers spread over the nodes.
//!
//! With `MESSAGE_PARTITIONS` = 1 the store stage consumes `messages` alone.
//! With N > 1 it consumes the N partition queues `messages.0` … that the
//! consistent-hash exchange `messages.rooms` fills by room, and `messages`
//! too, whose deliveries (console messages) are marked
//! [`unrouted`](QueuedMessage::unrouted) for the store stage to send on to
//! their room's partition.
//!
//! Every node registers one consumer on every queue, and every queue has a
//! single active consumer: RabbitMQ alone decides who stores a partition,
//! and hands it to a waiting node the moment its holder's connection dies.
//! What RabbitMQ 3.x does not do is spread them: the first node to register
//! stays active everywhere, and consumer priorities do not choose the single
//! active consumer (they do only from 4.0, on quorum queues). So each node,
//! every [`REBALANCE_EVERY`], publishes a probe into each partition — only
//! the active consumer receives it, which is how a node learns what it holds
//! — and counts the nodes (the consumers of a partition queue). A node that
//! holds more than its share (N / nodes, rounded up) releases the excess
//! ([`Queue::hand_over`]): it stops taking that partition's deliveries, waits
//! until the store stage has acked what it took, closes the partition's
//! channel (what RabbitMQ had sent and it had not taken goes back, in order)
//! and registers again, behind the waiting nodes; RabbitMQ makes one of
//! them active.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio::sync::{Notify, mpsc};

use super::{Inner, Link, next_link};
use crate::{
    broker::{BrokerError, QueuedMessage, Settle},
    signing::SIGNATURE_HEADER,
};

/// How often a node probes the partitions and weighs its share.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// A partition counts as held while a delivery came from it this recently.
const HELD_FOR: Duration = Duration::from_secs(3);
/// After releasing, how long a node waits before it weighs its share again
/// (so that it counts what it holds after the hand-over, not before).
const CALM_AFTER_RELEASE: Duration = Duration::from_secs(5);
/// Header that marks a probe; its value is the probing node.
pub const PROBE_HEADER: &str = "x-roomcast-probe";

/// One queue this node consumes for the store stage.
pub(super) struct Queue {
    pub name: String,
    /// Deliveries are console messages to route on (`messages` beside partitions).
    unrouted: bool,
    /// Messages handed to the store stage and not yet acked (or dropped).
    in_flight: Arc<AtomicUsize>,
    /// When a delivery (a probe or a message) last came from it.
    last_delivery: Mutex<Option<Instant>>,
    release: Notify,
}

impl Queue {
    pub fn new(name: String, unrouted: bool) -> Arc<Self> {
        Arc::new(Self {
            name,
            unrouted,
            in_flight: Arc::default(),
            last_delivery: Mutex::new(None),
            release: Notify::new(),
        })
    }

    /// True while this node is its active consumer, as far as it can tell.
    fn held(&self) -> bool {
        self.last_delivery
            .lock()
            .expect("delivery time")
            .is_some_and(|at| at.elapsed() < HELD_FOR)
    }

    fn delivered(&self) {
        *self.last_delivery.lock().expect("delivery time") = Some(Instant::now());
    }

    /// A delivery as the store stage takes it, counted until it is settled.
    fn message(&self, d: Delivery, channel: u64) -> QueuedMessage {
        let signature = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(SIGNATURE_HEADER))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            });
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let settle = AmqpSettle {
            acker: d.acker,
            channel,
            tag: d.delivery_tag,
            in_flight: self.in_flight.clone(),
        };
        let message = QueuedMessage::new(
            Bytes::from(d.data),
            signature,
            d.redelivered,
            Box::new(settle),
        );
        if self.unrouted {
            message.unrouted()
        } else {
            message
        }
    }

    /// Gives the queue up: once what the store stage took is settled, closes
    /// the channel, which sends back what it had not taken (RabbitMQ puts it
    /// back in its place). A lost connection ends the wait: that channel is
    /// gone, and RabbitMQ has sent everything back already.
    async fn hand_over(&self, channel: &Channel) {
        while self.in_flight.load(Ordering::SeqCst) > 0 && channel.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = channel.close(200, "partition released".into()).await;
        *self.last_delivery.lock().expect("delivery time") = None;
    }
}

/// Acks one delivery; counts it settled when dropped, acked or not (a
/// message dropped unacked comes back when its channel closes).
struct AmqpSettle {
    acker: lapin::Acker,
    /// The channel it came on ([`CHANNELS`]) and its delivery tag there.
    channel: u64,
    tag: u64,
    in_flight: Arc<AtomicUsize>,
}

/// Numbers each channel the store stage consumes on, process-wide, so that
/// deliveries of different channels (or of one channel and its successor
/// after a reconnect, which starts its tags again) are never acked together.
static CHANNELS: AtomicU64 = AtomicU64::new(0);

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    fn channel_position(&self) -> Option<(u64, u64)> {
        Some((self.channel, self.tag))
    }

    async fn ack_with_earlier(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }
}

fn is_probe(d: &Delivery) -> bool {
    d.properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(PROBE_HEADER))
}

/// Consumes `queue` into `tx` on every new link, and again after each
/// release, until the store stage stops (`tx` closed) or the broker is
/// closed. Probes are acked here; the store stage never sees them.
pub(super) async fn consume(
    inner: Arc<Inner>,
    queue: Arc<Queue>,
    prefetch: u16,
    tx: mpsc::Sender<QueuedMessage>,
) {
    let mut links = inner.link.subscribe();
    // Since when consuming has failed (the queue deleted by hand): after
    // `REDECLARE_AFTER`, the topology is declared again first.
    let mut failing_since: Option<Instant> = None;
    loop {
        let Some(link) = next_link(&mut links, &inner.stop).await else {
            return;
        };
        let redeclare = failing_since
            .is_some_and(|t| t.elapsed() >= super::REDECLARE_AFTER)
            .then_some(inner.partitions);
        let opened = open(&link, &inner.node_id, &queue.name, prefetch, redeclare).await;
        let channel_key = CHANNELS.fetch_add(1, Ordering::Relaxed);
        let (channel, mut consumer) = match opened {
            Ok(opened) => {
                failing_since = None;
                opened
            }
            Err(err) => {
                tracing::warn!(error = %err, queue = %queue.name, "cannot consume messages yet");
                failing_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let released = loop {
            tokio::select! {
                () = queue.release.notified() => break true,
                delivery = consumer.next() => {
                    let Some(Ok(d)) = delivery else { break false };
                    queue.delivered();
                    if is_probe(&d) {
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    } else if tx.send(queue.message(d, channel_key)).await.is_err() {
                        return; // the store stage stopped
                    }
                }
            }
        };
        if released {
            tracing::info!(queue = %queue.name, "store stage: partition handed over to another node");
            queue.hand_over(&channel).await;
        }
    }
}

async fn open(
    link: &Link,
    node_id: &str,
    queue: &str,
    prefetch: u16,
    redeclare: Option<u16>,
) -> Result<(Channel, Consumer), lapin::Error> {
    let channel = link.connection.create_channel().await?;
    if let Some(partitions) = redeclare {
        super::declare_topology(&channel, partitions).await?;
    }
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("store-{node_id}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Every [`REBALANCE_EVERY`] while the store stage runs (`tx` open): probes
/// the partitions, counts the nodes, and releases what this node holds
/// beyond its share.
pub(super) async fn rebalance(
    inner: Arc<Inner>,
    partitions: Vec<Arc<Queue>>,
    tx: mpsc::Sender<QueuedMessage>,
) {
    let mut tick = tokio::time::interval(REBALANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calm_until = Instant::now();
    loop {
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tx.closed() => return,
            _ = tick.tick() => {}
        }
        let Some(link) = inner.link.borrow().clone() else {
            continue;
        };
        let nodes = match probe_and_count(&link, &inner.node_id, &partitions).await {
            Ok(nodes) => nodes.max(1),
            Err(err) => {
                tracing::debug!(error = %err, "store stage: cannot probe the partitions now");
                continue;
            }
        };
        let held: Vec<&Arc<Queue>> = partitions.iter().filter(|q| q.held()).collect();
        metrics::gauge!(crate::metrics::PARTITIONS_HELD).set(held.len() as f64);
        let share = partitions.len().div_ceil(nodes);
        if held.len() > share && Instant::now() >= calm_until {
            tracing::info!(
                held = held.len(),
                share,
                nodes,
                "store stage: releasing partitions beyond this node's share"
            );
            for queue in held.iter().rev().take(held.len() - share) {
                queue.release.notify_one();
            }
            calm_until = Instant::now() + CALM_AFTER_RELEASE;
        }
    }
}

/// Publishes a probe into each partition; returns the most consumers any
/// partition has (every node registers one on each: the number of nodes).
async fn probe_and_count(
    link: &Link,
    node_id: &str,
    partitions: &[Arc<Queue>],
) -> Result<usize, lapin::Error> {
    let mut headers = FieldTable::default();
    headers.insert(
        PROBE_HEADER.into(),
        AMQPValue::LongString(node_id.to_owned().into()),
    );
    let probe = BasicProperties::default().with_headers(headers);
    // A channel of its own: a passive declare of a missing queue closes it.
    let channel = link.connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut nodes = 0;
    let counted = async {
        for queue in partitions {
            // Its confirm is not waited for: a lost probe only delays the next count.
            let confirm = link
                .publisher
                .basic_publish(
                    "".into(),
                    queue.name.as_str().into(),
                    BasicPublishOptions::default(),
                    b"",
                    probe.clone(),
                )
                .await?;
            drop(confirm);
            let declared = channel
                .queue_declare(queue.name.as_str().into(), passive, FieldTable::default())
                .await?;
            nodes = nodes.max(declared.consumer_count() as usize);
        }
        Ok::<_, lapin::Error>(())
    };
    let result = counted.await;
    let _ = channel.close(200, "counted".into()).await;
    result.map(|()| nodes)
}
