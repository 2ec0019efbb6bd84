//! This node's event queue: every user event, and the events of the rooms
//! this node has sockets in.
//!
//! The queue is exclusive to the node's connection and goes with it. It is
//! bound to `user.*` and, for each room a socket here is in, to that room's
//! key (`room.<id>`; `room.*` for [`Rooms::All`]). So a node is sent only the
//! events of the rooms it serves, and one more node adds no work to the
//! others. The [`Hub`](crate::Hub) says which rooms as sockets come and go
//! ([`Interest`]); the changes are applied in their order on the queue's own
//! channel, those waiting together (their binds sent at once), and a
//! socket's join is answered once its room is bound, before its `welcome`.
//! On every new link the queue is declared again and bound to every room
//! held; while there is no link, joins are answered at once (no
//! event flows anywhere then) and bound when the link is back.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{Inner, Link, next_link};
use crate::{
    broker::{BoxStream, Interest, Rooms},
    event::{EVENTS_EXCHANGE, routing_key},
};

/// The node's event stream, fed by a task that outlives reconnects.
pub(super) fn subscribe(inner: Arc<Inner>, queue: String, rooms: Rooms) -> BoxStream<Bytes> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(inner, queue, rooms, tx));
    ReceiverStream::new(rx).boxed()
}

/// Most changes applied together, their binds sent at once.
const CHANGES_AT_ONCE: usize = 1024;

/// What the queue is bound to: every room, or the rooms held.
struct Bindings {
    all: bool,
    held: HashSet<Uuid>,
    interest: Option<mpsc::UnboundedReceiver<Interest>>,
    /// Joins to answer once their rooms are bound (a bind failed: on the
    /// next channel, which binds every room held).
    waiting: Vec<oneshot::Sender<()>>,
}

impl Bindings {
    /// The next change the hub sends; `None` once it sends no more (the
    /// delivery stage that asked is gone). Never, for [`Rooms::All`].
    async fn next_change(&mut self) -> Option<Interest> {
        match &mut self.interest {
            Some(interest) => interest.recv().await,
            None => std::future::pending().await,
        }
    }

    /// `first` and the changes waiting behind it, up to [`CHANGES_AT_ONCE`].
    fn with_waiting(&mut self, first: Interest) -> Vec<Interest> {
        let mut changes = vec![first];
        if let Some(interest) = &mut self.interest {
            while changes.len() < CHANGES_AT_ONCE {
                match interest.try_recv() {
                    Ok(change) => changes.push(change),
                    Err(_) => break,
                }
            }
        }
        changes
    }

    /// Applies changes in their order: the rooms newly held are bound and
    /// those left unbound, all at once (a room joined and left again within
    /// the changes is neither); then the joins are answered. On an error the
    /// joins wait for the next channel.
    async fn apply(
        &mut self,
        channel: &Channel,
        queue: &str,
        changes: Vec<Interest>,
    ) -> Result<(), lapin::Error> {
        let mut was_held = HashMap::new();
        for change in changes {
            let (room_id, joined) = match change {
                Interest::Join { room_id, bound } => {
                    self.waiting.push(bound);
                    (room_id, true)
                }
                Interest::Leave(room_id) => (room_id, false),
            };
            was_held
                .entry(room_id)
                .or_insert_with(|| self.held.contains(&room_id));
            if joined {
                self.held.insert(room_id);
            } else {
                self.held.remove(&room_id);
            }
        }
        if !self.all {
            let moves = was_held
                .into_iter()
                .filter(|(room_id, was)| *was != self.held.contains(room_id))
                .map(|(room_id, was)| {
                    let key = routing_key(room_id);
                    async move {
                        if was {
                            let args = FieldTable::default();
                            let unbind = channel.queue_unbind(
                                queue.into(),
                                EVENTS_EXCHANGE.into(),
                                key.into(),
                                args,
                            );
                            unbind.await
                        } else {
                            bind(channel, queue, &key).await
                        }
                    }
                });
            futures_util::future::try_join_all(moves).await?;
        }
        self.answer_waiting();
        Ok(())
    }

    /// Notes a change while there is no link to bind on: a join is answered
    /// at once (no event flows anywhere), and bound with the rest.
    fn note(&mut self, change: Interest) {
        match change {
            Interest::Join { room_id, bound } => {
                self.held.insert(room_id);
                let _ = bound.send(());
            }
            Interest::Leave(room_id) => {
                self.held.remove(&room_id);
            }
        }
    }

    /// Answers the joins waiting: their rooms are bound.
    fn answer_waiting(&mut self) {
        for bound in self.waiting.drain(..) {
            let _ = bound.send(());
        }
    }

    /// The routing keys the queue is bound to, `user.*` first.
    fn patterns(&self) -> Vec<String> {
        let rooms = if self.all {
            vec!["room.*".to_owned()]
        } else {
            self.held.iter().map(|room| routing_key(*room)).collect()
        };
        std::iter::once("user.*".to_owned()).chain(rooms).collect()
    }
}

async fn run(inner: Arc<Inner>, queue: String, rooms: Rooms, tx: mpsc::Sender<Bytes>) {
    let mut bindings = match rooms {
        Rooms::All => Bindings {
            all: true,
            held: HashSet::new(),
            interest: None,
            waiting: Vec::new(),
        },
        Rooms::Joined(interest) => Bindings {
            all: false,
            held: HashSet::new(),
            interest: Some(interest),
            waiting: Vec::new(),
        },
    };
    let mut links = inner.link.subscribe();
    loop {
        // Until there is a link, note the changes: they are bound with the
        // rest. A link first: a join is not answered before it is bound.
        let link = loop {
            tokio::select! {
                biased;
                link = next_link(&mut links, &inner.stop) => break link,
                change = bindings.next_change() => match change {
                    Some(change) => bindings.note(change),
                    None => return,
                },
            }
        };
        let Some(link) = link else { return };
        let (channel, mut consumer) = match open(&link, &queue, &bindings).await {
            Ok(opened) => {
                inner.rebinds.send_modify(|n| *n += 1);
                bindings.answer_waiting();
                opened
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot subscribe to room events yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let done = loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(Ok(delivery)) = delivery else { break false };
                    if tx.send(Bytes::from(delivery.data)).await.is_err() {
                        break true; // the stream is dropped
                    }
                }
                change = bindings.next_change() => {
                    let Some(change) = change else { break true };
                    let changes = bindings.with_waiting(change);
                    if let Err(err) = bindings.apply(&channel, &queue, changes).await {
                        tracing::warn!(error = %err, "cannot change the rooms of the event queue; subscribing again");
                        break false;
                    }
                }
            }
        };
        // The consumer must be gone before another takes the (exclusive) queue.
        let _ = channel.close(200, "unsubscribing".into()).await;
        if done {
            return;
        }
    }
}

/// Binds the queue to one routing key on `room.events`.
async fn bind(channel: &Channel, queue: &str, key: &str) -> Result<(), lapin::Error> {
    let args = FieldTable::default();
    let options = QueueBindOptions::default();
    channel
        .queue_bind(
            queue.into(),
            EVENTS_EXCHANGE.into(),
            key.into(),
            options,
            args,
        )
        .await
}

/// Declares the queue on a new channel, binds it, and consumes it.
async fn open(
    link: &Link,
    queue: &str,
    bindings: &Bindings,
) -> Result<(Channel, Consumer), lapin::Error> {
    let channel = link.connection.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), exclusive, FieldTable::default())
        .await?;
    // The binds are independent: sent together, not one round trip each.
    let patterns = bindings.patterns();
    let binds = patterns
        .iter()
        .map(|pattern| bind(&channel, queue, pattern));
    futures_util::future::try_join_all(binds).await?;
    // Events are not acked one by one: a node that dies loses only what its
    // sockets will fetch again with `since`.
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(queue.into(), "".into(), no_ack, FieldTable::default())
        .await?;
    Ok((channel, consumer))
}
