//! This node's event queue: every user event, and the events of the rooms
//! this node has sockets in.
//!
//! The queue is exclusive to the node's connection and goes with it. It is
//! bound to `user.*` and, for each room a socket here is in, to that room's
//! key (`room.<id>`; `room.*` for [`Rooms::All`]). So a node is sent only the
//! events of the rooms it serves, and one more node adds no work to the
//! others. The [`Hub`](crate::Hub) says which rooms as sockets come and go
//! ([`Interest`]); the changes are applied in their order on the queue's own
//! channel, and a socket's join is answered once its room is bound, before
//! its `welcome`. On every new link the queue is declared again and bound to
//! every room held; while there is no link, joins are answered at once (no
//! event flows anywhere then) and bound when the link is back.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::sync::mpsc;
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

/// What the queue is bound to: every room, or the rooms held.
struct Bindings {
    all: bool,
    held: HashSet<Uuid>,
    interest: Option<mpsc::UnboundedReceiver<Interest>>,
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
        },
        Rooms::Joined(interest) => Bindings {
            all: false,
            held: HashSet::new(),
            interest: Some(interest),
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
                    Some(change) => note(&mut bindings.held, change),
                    None => return,
                },
            }
        };
        let Some(link) = link else { return };
        let (channel, mut consumer) = match open(&link, &queue, &bindings).await {
            Ok(opened) => {
                inner.rebinds.send_modify(|n| *n += 1);
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
                    if let Err(err) = apply(&channel, &queue, &mut bindings, change).await {
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

/// Notes a change while there is no link to bind on.
fn note(held: &mut HashSet<Uuid>, change: Interest) {
    match change {
        Interest::Join { room_id, bound } => {
            held.insert(room_id);
            let _ = bound.send(());
        }
        Interest::Leave(room_id) => {
            held.remove(&room_id);
        }
    }
}

/// Binds a room newly held, or unbinds one left; answers a join once bound.
async fn apply(
    channel: &Channel,
    queue: &str,
    bindings: &mut Bindings,
    change: Interest,
) -> Result<(), lapin::Error> {
    match change {
        Interest::Join { room_id, bound } => {
            if bindings.held.insert(room_id) && !bindings.all {
                let bind = channel
                    .queue_bind(
                        queue.into(),
                        EVENTS_EXCHANGE.into(),
                        routing_key(room_id).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await;
                // Answered either way: on an error the channel is opened
                // again at once, bound to every room held, this one too.
                let _ = bound.send(());
                return bind;
            }
            let _ = bound.send(());
        }
        Interest::Leave(room_id) => {
            if bindings.held.remove(&room_id) && !bindings.all {
                channel
                    .queue_unbind(
                        queue.into(),
                        EVENTS_EXCHANGE.into(),
                        routing_key(room_id).into(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
    }
    Ok(())
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
    let binds = patterns.iter().map(|pattern| {
        channel.queue_bind(
            queue.into(),
            EVENTS_EXCHANGE.into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
    });
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
