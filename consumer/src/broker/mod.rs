//! The [`Broker`]: the one interface between roomcast and its message broker.
//!
//! Two first-class implementations pass the same conformance suite
//! (`consumer/tests/broker.rs`): [`amqp::AmqpBroker`] on RabbitMQ, chosen when
//! `AMQP_URL` is set, and [`memory::MemoryBroker`], the embedded default.

pub mod amqp;
pub mod memory;

use std::{
    collections::{HashMap, hash_map::Entry},
    pin::Pin,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Not connected right now; the caller may retry shortly.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the publish (a negative confirm).
    #[error("broker refused the message")]
    Nacked,
    /// The broker routed the message to no queue and returned it (a
    /// mandatory publish with `messages` deleted or unbound).
    #[error("the message reached no queue: {0}")]
    Returned(String),
    /// The queue is full (the in-process broker's bound); retry shortly.
    #[error("the message queue is full")]
    Full,
}

/// Which rooms' events a node's event stream carries; user events always come.
pub enum Rooms {
    /// Every room's, for tools and tests that watch everything.
    All,
    /// Only those of the rooms this node has sockets in, as its
    /// [`Hub`](crate::Hub) says ([`Hub::room_interest`](crate::Hub::room_interest)):
    /// a node is not sent the events of rooms it does not serve.
    Joined(mpsc::UnboundedReceiver<Interest>),
}

/// A change in the rooms a node has sockets in, sent by the
/// [`Hub`](crate::Hub) in the order the changes happen.
#[derive(Debug)]
pub enum Interest {
    /// A socket here is in the room; `bound` is answered once the room's
    /// events come to this node (at once if they already do).
    Join {
        room_id: Uuid,
        bound: oneshot::Sender<()>,
    },
    /// The last socket here in the room has left it.
    Leave(Uuid),
}

/// Whether the broker can take work now, for `/readyz` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStatus {
    Up,
    Down(String),
}

/// Settles one delivery from the `messages` queue.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The message is handled; the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;

    /// Where the broker can ack a delivery together with every earlier one
    /// of the same channel (AMQP's `multiple`): the channel's key and the
    /// delivery's tag, tags rising in delivery order. `None` (the default):
    /// each delivery is acked alone.
    fn channel_position(&self) -> Option<(u64, u64)> {
        None
    }

    /// Acks this delivery and every earlier one of its channel not acked
    /// yet ([`channel_position`](Self::channel_position)); by default, this
    /// one alone.
    async fn ack_with_earlier(self: Box<Self>) -> Result<(), BrokerError> {
        self.ack().await
    }
}

/// One message taken from the `messages` queue, to be acked once handled.
pub struct QueuedMessage {
    pub payload: Bytes,
    /// Ingest's signature of the payload ([`crate::signing`]), if it has one.
    pub signature: Option<String>,
    /// The broker delivered it before (the earlier consumer died before acking).
    pub redelivered: bool,
    /// It came from `messages` while the store stage is split into partitions
    /// (`MESSAGE_PARTITIONS` > 1): a console message, to be sent on to its
    /// room's partition ([`Broker::publish_routed`]) rather than stored here.
    pub unrouted: bool,
    settle: Box<dyn Settle>,
}

impl QueuedMessage {
    pub fn new(
        payload: Bytes,
        signature: Option<String>,
        redelivered: bool,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            payload,
            signature,
            redelivered,
            unrouted: false,
            settle,
        }
    }

    /// Marks it [`unrouted`](Self::unrouted).
    pub fn unrouted(mut self) -> Self {
        self.unrouted = true;
        self
    }

    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Acks a batch: one ack per channel, through the batch's latest
    /// delivery there, where the broker can ([`Settle::ack_with_earlier`]);
    /// else one ack per message. So every delivery taken from those channels
    /// before the batch must be settled already: the store stage settles its
    /// batches one after the other, in the order it took them.
    pub async fn ack_batch(batch: Vec<Self>) -> Result<(), BrokerError> {
        let mut last_of_channel: HashMap<u64, Self> = HashMap::new();
        let mut alone = Vec::new();
        for message in batch {
            match message.settle.channel_position() {
                Some((channel, tag)) => match last_of_channel.entry(channel) {
                    Entry::Occupied(mut last) => {
                        // The earlier of the two is dropped here: the
                        // later one's ack covers it, and the later one
                        // counts as in flight until that ack is sent.
                        if last
                            .get()
                            .settle
                            .channel_position()
                            .is_some_and(|(_, t)| t < tag)
                        {
                            last.insert(message);
                        }
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(message);
                    }
                },
                None => alone.push(message.settle.ack()),
            }
        }
        let through = last_of_channel
            .into_values()
            .map(|last| last.settle.ack_with_earlier());
        let acks = futures_util::future::join_all(through.chain(alone)).await;
        acks.into_iter().collect()
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes a persistent message to `messages` with its `signature`
    /// ([`crate::signing`]) if any; returns once the broker confirmed it.
    async fn publish_message(
        &self,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<(), BrokerError>;

    /// Publishes a message for the store stage like
    /// [`publish_message`](Self::publish_message), routed by `routing_key`
    /// (the room's id) to the partition that stores that room when the
    /// store stage is split (`MESSAGE_PARTITIONS` > 1); to `messages`
    /// otherwise. Returns once the broker confirmed it.
    async fn publish_routed(
        &self,
        routing_key: &str,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<(), BrokerError> {
        let _ = routing_key;
        self.publish_message(message, signature).await
    }

    /// Publishes with no signature, as an operator would from the console.
    async fn publish(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.publish_message(message, None).await
    }

    /// Publishes to `messages.dlq` with `reason` in a header; returns once confirmed.
    async fn dead_letter(&self, message: &[u8], reason: &str) -> Result<(), BrokerError>;

    /// Publishes a room event to `room.events` (routing key `room.<room_id>`).
    async fn publish_event(&self, room_id: Uuid, event: &[u8]) -> Result<(), BrokerError>;

    /// Publishes a user event to `room.events` (routing key `user.<user_id>`),
    /// which every node's event queue receives; returns once confirmed.
    async fn publish_user_event(&self, user_id: Uuid, event: &[u8]) -> Result<(), BrokerError>;

    /// Publishes several room events, in order; returns once all are confirmed.
    async fn publish_events(&self, events: &[(Uuid, Vec<u8>)]) -> Result<(), BrokerError> {
        for (room_id, event) in events {
            self.publish_event(*room_id, event).await?;
        }
        Ok(())
    }

    /// Consumes `messages` with manual acks, up to `prefetch` unacked at a time
    /// (per queue: with partitions, the partitions this node holds, and
    /// `messages` itself, whose deliveries are [`unrouted`](QueuedMessage::unrouted)).
    /// The stream outlives reconnects: it resumes when the broker is back.
    fn consume_messages(&self, prefetch: u16) -> BoxStream<QueuedMessage>;

    /// Every user event, and the events of the [`Rooms`] asked for, through
    /// this node's own queue. Outlives reconnects.
    fn subscribe_events(&self, rooms: Rooms) -> BoxStream<Bytes>;

    /// Counts the times this node's event queue was bound, from 1 for the
    /// first time. A change after that means events published meanwhile may
    /// have been missed: what depends on them (open sockets' tokens) is
    /// checked again. A broker that never loses events never changes it.
    fn rebinds(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(1).1
    }

    fn status(&self) -> BrokerStatus;

    /// Closes connections; in-flight publishes fail with `Unavailable`.
    async fn close(&self);
}
