//! The in-process broker of the embedded default: the same three stages, joined
//! by channels instead of RabbitMQ.
//!
//! A publish is "confirmed" once it is in the queue's channel; like any
//! in-memory queue it does not survive the process. The queue is bounded: a
//! publish to a full one fails with [`BrokerError::Full`] (ingest's 503),
//! never dropped and never waited for. Dead letters are logged, and the last
//! [`KEPT_DEAD_LETTERS`] kept in memory so tests and operators can see them.
//! One process has one store stage: `MESSAGE_PARTITIONS` means nothing here
//! (every value is taken as 1, and [`Broker::publish_routed`] is a plain
//! publish).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use super::{BoxStream, Broker, BrokerError, BrokerStatus, Interest, QueuedMessage, Rooms, Settle};

/// Dead letters kept in memory: the process's memory is not a queue, and
/// users can add to them (a room deleted with its messages still queued).
pub const KEPT_DEAD_LETTERS: usize = 1000;

#[derive(Default)]
struct State {
    /// The single consumer's receiver, until it is taken.
    queue_rx: Option<mpsc::Receiver<(Bytes, Option<String>)>>,
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    /// The latest, up to [`KEPT_DEAD_LETTERS`].
    dead_letters: std::collections::VecDeque<(Bytes, String)>,
    closed: bool,
}

#[derive(Clone)]
pub struct MemoryBroker {
    queue_tx: mpsc::Sender<(Bytes, Option<String>)>,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages the queue holds by default (`INPROCESS_QUEUE_CAPACITY`).
pub const DEFAULT_CAPACITY: usize = 100_000;

impl MemoryBroker {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A broker whose `messages` queue holds at most `capacity` messages
    /// not yet taken by the store stage.
    pub fn with_capacity(capacity: usize) -> Self {
        let (queue_tx, queue_rx) = mpsc::channel(capacity.max(1));
        Self {
            queue_tx,
            state: Arc::new(Mutex::new(State {
                queue_rx: Some(queue_rx),
                ..State::default()
            })),
        }
    }

    /// The latest dead letters (up to [`KEPT_DEAD_LETTERS`]), oldest first,
    /// with their reasons.
    pub fn dead_letters(&self) -> Vec<(Bytes, String)> {
        let state = self.state.lock().expect("broker state");
        state.dead_letters.iter().cloned().collect()
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.state.lock().expect("broker state").closed {
            return Err(BrokerError::Unavailable("broker closed".into()));
        }
        Ok(())
    }
}

/// The queue's single consumer. Dropped (its store stage stopped, or
/// panicked and is about to be started again), it hands the queue back to
/// the broker, so that the next consumer takes what is still queued.
struct Consumer {
    rx: Option<mpsc::Receiver<(Bytes, Option<String>)>>,
    state: Arc<Mutex<State>>,
}

impl futures_util::Stream for Consumer {
    type Item = (Bytes, Option<String>);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let (Some(rx), Ok(mut state)) = (self.rx.take(), self.state.lock()) {
            state.queue_rx = Some(rx);
        }
    }
}

struct NoopSettle;

#[async_trait]
impl Settle for NoopSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish_message(
        &self,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.check_open()?;
        let message = (
            Bytes::copy_from_slice(message),
            signature.map(str::to_owned),
        );
        self.queue_tx.try_send(message).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => BrokerError::Full,
            mpsc::error::TrySendError::Closed(_) => {
                BrokerError::Unavailable("the store stage has stopped".into())
            }
        })
    }

    async fn dead_letter(&self, message: &[u8], reason: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        tracing::warn!(%reason, "message dead-lettered");
        let mut state = self.state.lock().expect("broker state");
        if state.dead_letters.len() == KEPT_DEAD_LETTERS {
            state.dead_letters.pop_front();
        }
        state
            .dead_letters
            .push_back((Bytes::copy_from_slice(message), reason.to_owned()));
        Ok(())
    }

    async fn publish_event(&self, _room_id: Uuid, event: &[u8]) -> Result<(), BrokerError> {
        self.check_open()?;
        let event = Bytes::copy_from_slice(event);
        let mut state = self.state.lock().expect("broker state");
        state.subscribers.retain(|s| s.send(event.clone()).is_ok());
        Ok(())
    }

    async fn publish_user_event(&self, _user_id: Uuid, event: &[u8]) -> Result<(), BrokerError> {
        // One exchange, one queue per subscriber: as with RabbitMQ, user and
        // room events share the stream, in publish order.
        self.publish_event(Uuid::nil(), event).await
    }

    fn consume_messages(&self, _prefetch: u16) -> BoxStream<QueuedMessage> {
        // One active consumer, as with RabbitMQ's single-active-consumer queue:
        // a second one waits forever.
        match self.state.lock().expect("broker state").queue_rx.take() {
            Some(rx) => Consumer {
                rx: Some(rx),
                state: self.state.clone(),
            }
            .map(|(payload, signature)| {
                QueuedMessage::new(payload, signature, false, Box::new(NoopSettle))
            })
            .boxed(),
            None => futures_util::stream::pending().boxed(),
        }
    }

    fn subscribe_events(&self, rooms: Rooms) -> BoxStream<Bytes> {
        // One process, one hub: every event is this node's already, so a
        // room joined is "bound" at once.
        if let Rooms::Joined(mut interest) = rooms {
            tokio::spawn(async move {
                while let Some(change) = interest.recv().await {
                    if let Interest::Join { bound, .. } = change {
                        let _ = bound.send(());
                    }
                }
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.state
            .lock()
            .expect("broker state")
            .subscribers
            .push(tx);
        UnboundedReceiverStream::new(rx).boxed()
    }

    fn status(&self) -> BrokerStatus {
        if self.state.lock().expect("broker state").closed {
            BrokerStatus::Down("closed".into())
        } else {
            BrokerStatus::Up
        }
    }

    async fn close(&self) {
        let mut state = self.state.lock().expect("broker state");
        state.closed = true;
        state.subscribers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_and_keeps_what_it_took() {
        let broker = MemoryBroker::with_capacity(2);
        broker.publish(b"one").await.unwrap();
        broker.publish(b"two").await.unwrap();
        assert!(matches!(
            broker.publish(b"three").await,
            Err(BrokerError::Full)
        ));
        let mut queued = broker.consume_messages(16);
        assert_eq!(queued.next().await.unwrap().payload, "one");
        broker.publish(b"four").await.unwrap();
        assert_eq!(queued.next().await.unwrap().payload, "two");
        assert_eq!(queued.next().await.unwrap().payload, "four");
    }

    /// A store stage started again (after a panic) takes the queue anew,
    /// with what was still in it.
    #[tokio::test]
    async fn a_dropped_consumer_hands_the_queue_back() {
        let broker = MemoryBroker::default();
        let mut first = broker.consume_messages(16);
        broker.publish(b"one").await.unwrap();
        assert_eq!(first.next().await.unwrap().payload, "one");
        broker.publish(b"two").await.unwrap();
        drop(first);
        let mut second = broker.consume_messages(16);
        assert_eq!(second.next().await.unwrap().payload, "two");
        broker.publish(b"three").await.unwrap();
        assert_eq!(second.next().await.unwrap().payload, "three");
    }

    #[tokio::test]
    async fn only_the_latest_dead_letters_are_kept() {
        let broker = MemoryBroker::default();
        for i in 0..KEPT_DEAD_LETTERS + 5 {
            broker
                .dead_letter(format!("m{i}").as_bytes(), "unknown_room")
                .await
                .unwrap();
        }
        let kept = broker.dead_letters();
        assert_eq!(kept.len(), KEPT_DEAD_LETTERS);
        assert_eq!(kept[0].0, "m5".as_bytes());
        assert_eq!(
            kept.last().unwrap().0,
            format!("m{}", KEPT_DEAD_LETTERS + 4).as_bytes()
        );
    }
}
