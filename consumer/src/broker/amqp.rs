//! The RabbitMQ broker, through lapin.
//!
//! A supervisor task owns the connection: it connects, declares the topology
//! (the same as `rabbitmq/definitions.json`), publishes the live link on a
//! `watch` channel, and when the connection dies clears it and reconnects with
//! backoff. Publishers fail fast with `Unavailable` while there is no link,
//! so ingest answers 503 rather than a false 202. Consumers are tasks that
//! re-subscribe on every new link; unacked messages of a dead link are
//! redelivered by RabbitMQ and stored once thanks to idempotent ids.
//!
//! With `MESSAGE_PARTITIONS` > 1 the store stage's queues are partitions by
//! room, spread over the nodes: see [`partitions`].

mod events;
pub mod partitions;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{BoxStream, Broker, BrokerError, BrokerStatus, QueuedMessage, Rooms};
use crate::event::{
    DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, MESSAGES_QUEUE, PARTITION_WEIGHT, PARTITIONS_EXCHANGE,
    REASON_HEADER, partition_queue, routing_key, user_routing_key,
};
use crate::signing::SIGNATURE_HEADER;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a publish waits for its confirm before the caller is told 503.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the store stage's consumer fails (its queue deleted by hand)
/// before it declares the topology again. Meanwhile ingest's publishes come
/// back unroutable and answer 503; a channel's failure alone never drops
/// the link.
pub(crate) const REDECLARE_AFTER: Duration = Duration::from_secs(2);

/// The arguments of the `messages` queue; `rabbitmq/definitions.json` declares
/// the same, and RabbitMQ refuses a redeclare with different ones.
pub fn messages_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(DEAD_LETTER_QUEUE)),
    );
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    args
}

fn classic_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    args
}

/// A live connection and its confirm-mode publishing channel.
struct Link {
    connection: Connection,
    publisher: Channel,
}

impl Link {
    /// Both the connection and the publishing channel are open: the link
    /// serves. (Consumers' channels come and go on their own.)
    fn is_alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

struct Inner {
    url: String,
    node_id: String,
    /// `MESSAGE_PARTITIONS`: 1 for `messages` alone.
    partitions: u16,
    link: watch::Sender<Option<Arc<Link>>>,
    last_error: std::sync::Mutex<String>,
    stop: CancellationToken,
    /// Times this node's event queue was bound (see [`Broker::rebinds`]).
    rebinds: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl AmqpBroker {
    /// Starts the connection supervisor; waits up to `CONNECT_TIMEOUT` for the
    /// first link but returns either way (the node then starts not ready).
    pub async fn start(url: &str, node_id: &str) -> Self {
        Self::start_partitioned(url, node_id, 1).await
    }

    /// [`AmqpBroker::start`] with the store stage split into `partitions`
    /// queues by room (1: `messages` alone, as before partitions).
    pub async fn start_partitioned(url: &str, node_id: &str, partitions: u16) -> Self {
        let (link, mut ready) = watch::channel(None);
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            node_id: node_id.to_owned(),
            partitions: partitions.max(1),
            link,
            last_error: std::sync::Mutex::new("connecting".into()),
            stop: CancellationToken::new(),
            rebinds: watch::channel(0).0,
        });
        tokio::spawn(supervise(inner.clone()));
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, ready.wait_for(Option::is_some)).await;
        Self { inner }
    }

    /// Name of this node's exclusive event queue.
    pub fn node_queue(&self) -> String {
        format!("{EVENTS_EXCHANGE}.{}", self.inner.node_id)
    }

    /// Declares the topology again on a channel of its own (a declare that
    /// fails closes its channel, which must not be the publisher's).
    async fn declare_again(&self) -> Result<(), BrokerError> {
        let link = self.link()?;
        let unavailable = |e: lapin::Error| BrokerError::Unavailable(e.to_string());
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let declared = declare_topology(&channel, self.inner.partitions).await;
        let _ = channel.close(200, "declared".into()).await;
        declared.map_err(unavailable)
    }

    fn link(&self) -> Result<Arc<Link>, BrokerError> {
        self.inner.link.borrow().clone().ok_or_else(|| {
            BrokerError::Unavailable(self.inner.last_error.lock().expect("error slot").clone())
        })
    }

    /// Publishes and waits for the confirm. A `mandatory` publish that no
    /// queue takes comes back (a return, then an ack): that is an error too,
    /// [`BrokerError::Returned`], never a silent drop.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let link = self.link()?;
        let unavailable = |e: lapin::Error| BrokerError::Unavailable(e.to_string());
        let confirm = async {
            let confirm = link
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    properties,
                )
                .await
                .map_err(unavailable)?;
            confirm.await.map_err(unavailable)
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            // An ack may carry the message back: acked, but routed nowhere.
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(BrokerError::Returned(format!(
                "{} {}",
                returned.reply_code, returned.reply_text
            ))),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(_)) => Err(BrokerError::Nacked),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(BrokerError::Unavailable(
                "no confirm from the broker in time".into(),
            )),
        }
    }
}

fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

/// Persistent JSON with ingest's `signature` in its header, if any.
fn signed_json(signature: Option<&str>) -> BasicProperties {
    let properties = persistent_json();
    let Some(signature) = signature else {
        return properties;
    };
    let mut headers = FieldTable::default();
    headers.insert(
        SIGNATURE_HEADER.into(),
        AMQPValue::LongString(LongString::from(signature)),
    );
    properties.with_headers(headers)
}

/// Connects, declares, serves the link until the connection dies; repeats.
async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        match open_link(&inner).await {
            Ok(link) => {
                backoff = Duration::from_millis(100);
                if connected_before {
                    metrics::counter!(crate::metrics::BROKER_RECONNECTS).increment(1);
                }
                connected_before = true;
                let mut events = link.connection.events_listener();
                let link = Arc::new(link);
                inner.link.send_replace(Some(link.clone()));
                tracing::info!(node = %inner.node_id, "broker connected");
                // Wait for the connection to fail (or for shutdown).
                let mut poll = tokio::time::interval(Duration::from_millis(500));
                let reason = loop {
                    tokio::select! {
                        () = inner.stop.cancelled() => break None,
                        event = events.next() => match event {
                            // A consumer's channel failing (its queue gone)
                            // is that consumer's to retry, not a lost link.
                            Some(Event::Error(err)) if link.is_alive() => {
                                tracing::debug!(error = %err, "broker channel error");
                            }
                            Some(Event::Error(err)) => break Some(err.to_string()),
                            Some(_) => {}
                            None => break Some("connection closed".to_owned()),
                        },
                        _ = poll.tick() => {
                            if !link.is_alive() {
                                break Some("connection lost".to_owned());
                            }
                        }
                    }
                };
                inner.link.send_replace(None);
                match reason {
                    // Shutting down: `close()` closes the connection.
                    None => return,
                    Some(reason) => {
                        // The publishing channel may have failed alone (a
                        // publish the broker refused, an exchange deleted):
                        // the connection is closed all the same, so that the
                        // consumers on it move to the new one with everyone
                        // else, binding again what they hold, rather than
                        // stay on an old connection no one else uses.
                        if link.connection.status().connected() {
                            let close = link.connection.close(200, "reconnecting".into());
                            let _ = tokio::time::timeout(CONNECT_TIMEOUT, close).await;
                        }
                        tracing::warn!(node = %inner.node_id, %reason, "broker connection lost; reconnecting");
                        *inner.last_error.lock().expect("error slot") = reason;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(node = %inner.node_id, error = %err, "broker connect failed; retrying in {backoff:?}");
                *inner.last_error.lock().expect("error slot") = err;
            }
        }
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn open_link(inner: &Inner) -> Result<Link, String> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("roomcast {}", inner.node_id).into());
    let connection =
        tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&inner.url, properties))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
    let setup = async {
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&publisher, inner.partitions).await?;
        Ok::<_, lapin::Error>(publisher)
    };
    match setup.await {
        Ok(publisher) => Ok(Link {
            connection,
            publisher,
        }),
        Err(err) => {
            let _ = connection.close(200, "setup failed".into()).await;
            Err(err.to_string())
        }
    }
}

/// Declares the shared topology; idempotent, with the same arguments as
/// `rabbitmq/definitions.json`. With `partitions` > 1, also the
/// consistent-hash exchange and the partition queues bound to it (which
/// needs the `rabbitmq_consistent_hash_exchange` plugin).
pub async fn declare_topology(channel: &Channel, partitions: u16) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .queue_declare(MESSAGES_QUEUE.into(), durable, messages_queue_arguments())
        .await?;
    channel
        .queue_declare(DEAD_LETTER_QUEUE.into(), durable, classic_queue_arguments())
        .await?;
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    if partitions <= 1 {
        return Ok(());
    }
    channel
        .exchange_declare(
            PARTITIONS_EXCHANGE.into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    for partition in 0..partitions {
        let queue = partition_queue(partition);
        channel
            .queue_declare(queue.as_str().into(), durable, messages_queue_arguments())
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                PARTITIONS_EXCHANGE.into(),
                PARTITION_WEIGHT.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn publish_message(
        &self,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<(), BrokerError> {
        let properties = signed_json(signature);
        // Mandatory: with the queue gone (deleted, or an unbound topology)
        // the publish comes back, and ingest answers 503, not a false 202.
        self.publish_confirmed("", MESSAGES_QUEUE, message, properties, true)
            .await
    }

    async fn publish_routed(
        &self,
        routing_key: &str,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<(), BrokerError> {
        if self.inner.partitions <= 1 {
            return self.publish_message(message, signature).await;
        }
        self.publish_confirmed(
            PARTITIONS_EXCHANGE,
            routing_key,
            message,
            signed_json(signature),
            true,
        )
        .await
    }

    async fn dead_letter(&self, message: &[u8], reason: &str) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = persistent_json().with_headers(headers);
        // Mandatory: were `messages.dlq` deleted, the message would vanish.
        // It comes back instead; the queue is declared again and the publish
        // tried once more. Should that fail too, the batch is not acked.
        let publish =
            || self.publish_confirmed("", DEAD_LETTER_QUEUE, message, properties.clone(), true);
        match publish().await {
            Err(BrokerError::Returned(why)) => {
                tracing::warn!(%why, "{DEAD_LETTER_QUEUE} is missing; declaring it again");
                self.declare_again().await?;
                publish().await
            }
            other => other,
        }
    }

    async fn publish_event(&self, room_id: Uuid, event: &[u8]) -> Result<(), BrokerError> {
        let properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        // Not mandatory: a room event with no node listening is no loss.
        self.publish_confirmed(
            EVENTS_EXCHANGE,
            &routing_key(room_id),
            event,
            properties,
            false,
        )
        .await
    }

    async fn publish_user_event(&self, user_id: Uuid, event: &[u8]) -> Result<(), BrokerError> {
        let properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        self.publish_confirmed(
            EVENTS_EXCHANGE,
            &user_routing_key(user_id),
            event,
            properties,
            false,
        )
        .await
    }

    async fn publish_events(&self, events: &[(Uuid, Vec<u8>)]) -> Result<(), BrokerError> {
        // Each publish waits until the connection's I/O thread has written
        // it: awaited one by one, a batch to n rooms made n hand-offs to that
        // thread and back. Joined, they are polled first in order, and each
        // queues its frames before it waits, so they still go out in order,
        // written together; then the confirms are waited for together.
        let link = self.link()?;
        let unavailable = |e: lapin::Error| BrokerError::Unavailable(e.to_string());
        let properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        let publishes = events.iter().map(|(room_id, event)| {
            link.publisher.basic_publish(
                EVENTS_EXCHANGE.into(),
                routing_key(*room_id).into(),
                BasicPublishOptions::default(),
                event,
                properties.clone(),
            )
        });
        let confirms = futures_util::future::try_join_all(publishes)
            .await
            .map_err(unavailable)?;
        let all = async {
            for confirm in confirms {
                if !confirm.await.map_err(unavailable)?.is_ack() {
                    return Err(BrokerError::Nacked);
                }
            }
            Ok(())
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, all)
            .await
            .map_err(|_| BrokerError::Unavailable("no confirm from the broker in time".into()))?
    }

    fn consume_messages(&self, prefetch: u16) -> BoxStream<QueuedMessage> {
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        let partitions = self.inner.partitions;
        let mut queues = vec![partitions::Queue::new(
            MESSAGES_QUEUE.to_owned(),
            partitions > 1,
        )];
        if partitions > 1 {
            let split: Vec<_> = (0..partitions)
                .map(|p| partitions::Queue::new(partition_queue(p), false))
                .collect();
            tokio::spawn(partitions::rebalance(
                self.inner.clone(),
                split.clone(),
                tx.clone(),
            ));
            queues.extend(split);
        }
        for queue in queues {
            let consume = partitions::consume(self.inner.clone(), queue, prefetch, tx.clone());
            tokio::spawn(consume);
        }
        ReceiverStream::new(rx).boxed()
    }

    fn subscribe_events(&self, rooms: Rooms) -> BoxStream<Bytes> {
        events::subscribe(self.inner.clone(), self.node_queue(), rooms)
    }

    fn rebinds(&self) -> watch::Receiver<u64> {
        self.inner.rebinds.subscribe()
    }

    fn status(&self) -> BrokerStatus {
        match self.link() {
            Ok(_) => BrokerStatus::Up,
            Err(err) => BrokerStatus::Down(err.to_string()),
        }
    }

    async fn close(&self) {
        // Take the link before stopping the supervisor, which would clear
        // it; then say "down" at once and close it here.
        let link = self.inner.link.send_replace(None);
        self.inner.stop.cancel();
        if let Some(link) = link {
            // Bounded: a broker that does not answer must not hold up shutdown.
            let connection = &link.connection;
            let closed = async {
                let _ = connection.close(200, "shutting down".into()).await;
                // Until the broker has let go, it may still hand this node messages.
                while !(connection.status().closed() || connection.status().errored()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, closed).await;
        }
    }
}

/// The next live link: the current one if it is new to this consumer, or
/// the next to come. `None` on shutdown.
async fn next_link(
    links: &mut watch::Receiver<Option<Arc<Link>>>,
    stop: &CancellationToken,
) -> Option<Arc<Link>> {
    loop {
        if let Some(link) = links.borrow_and_update().clone()
            && link.connection.status().connected()
        {
            return Some(link);
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            changed = links.changed() => if changed.is_err() { return None },
        }
    }
}
