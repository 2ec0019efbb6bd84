//! The in-process broker of the embedded default: the same three stages, joined
//! by channels instead of RabbitMQ.
//!
//! A publish is "confirmed" once it is in the queue's channel; like any
//! in-memory queue it does not survive the process. Dead letters are kept in
//! memory (and logged) so tests and operators can see them.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use super::{BoxStream, Broker, BrokerError, BrokerStatus, QueuedMessage, Settle};

#[derive(Default)]
struct State {
    /// The single consumer's receiver, until it is taken.
    queue_rx: Option<mpsc::UnboundedReceiver<(Bytes, Option<String>)>>,
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    dead_letters: Vec<(Bytes, String)>,
    closed: bool,
}

#[derive(Clone)]
pub struct MemoryBroker {
    queue_tx: mpsc::UnboundedSender<(Bytes, Option<String>)>,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    pub fn new() -> Self {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Self {
            queue_tx,
            state: Arc::new(Mutex::new(State {
                queue_rx: Some(queue_rx),
                ..State::default()
            })),
        }
    }

    /// The dead letters so far, with their reasons.
    pub fn dead_letters(&self) -> Vec<(Bytes, String)> {
        self.state
            .lock()
            .expect("broker state")
            .dead_letters
            .clone()
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.state.lock().expect("broker state").closed {
            return Err(BrokerError::Unavailable("broker closed".into()));
        }
        Ok(())
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
        self.queue_tx
            .send((
                Bytes::copy_from_slice(message),
                signature.map(str::to_owned),
            ))
            .map_err(|_| BrokerError::Unavailable("the store stage has stopped".into()))
    }

    async fn dead_letter(&self, message: &[u8], reason: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        tracing::warn!(%reason, "message dead-lettered");
        self.state
            .lock()
            .expect("broker state")
            .dead_letters
            .push((Bytes::copy_from_slice(message), reason.to_owned()));
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
            Some(rx) => UnboundedReceiverStream::new(rx)
                .map(|(payload, signature)| {
                    QueuedMessage::new(payload, signature, false, Box::new(NoopSettle))
                })
                .boxed(),
            None => futures_util::stream::pending().boxed(),
        }
    }

    fn subscribe_events(&self) -> BoxStream<Bytes> {
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
