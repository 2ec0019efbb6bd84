//! The store stage: `messages` → database → `room.events`.
//!
//! It takes what is waiting (up to [`BATCH_MAX`]), and stores it in steps:
//! [`judge::parse`] the envelopes; in one transaction [`batch::load_context`]
//! (rooms, kept once read; senders, memberships, and for a redelivered batch
//! what is already stored), [`judge::judge`] each message (a pure function:
//! store it, or a [`Reject`]), [`batch::allocate_seqs`] (each room's next
//! `seq`), [`insert`] the new rows (on PostgreSQL both in one statement when
//! the batch fits one; a message met again there sends the batch round once
//! more, with the look-up); then build the `message` events in order. The settler publishes them, one
//! `room.events` message per room carrying that room's events in `seq` order
//! ([`crate::event::room_batch`]; more than one when they pass
//! [`ROOM_BATCH_BYTES`]), and only then acks. A message stored before (a redelivery, a client's retry)
//! is not stored again, but its event is published again: sockets drop a
//! `seq` they already have, so nothing is lost or doubled. A message that
//! breaks a rule goes to `messages.dlq` with the reason. Every field is
//! checked before the insert; should the database still refuse a batch (not
//! a lost connection, which is retried), the batch is split until the one
//! message it refuses is found and dead-lettered, so that no message can
//! stall the stage.
//!
//! The `messages` queue has a single active consumer, so one store stage works
//! at a time cluster-wide and a room's order is one order. With
//! `MESSAGE_PARTITIONS` > 1 each partition queue has one, so each room is
//! stored by one store stage at a time; what arrives on `messages` itself
//! is sent on to its room's partition ([`route`]).

mod batch;
mod insert;
mod judge;
mod route;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::{Broker, broker::QueuedMessage, event::Reject, signing::EnvelopeKey};

pub use batch::load_senders;

/// Messages the broker may hand over before the first is acked.
pub const PREFETCH: u16 = 512;
/// Most messages stored in one transaction.
pub const BATCH_MAX: usize = 256;
/// What the store stage checks envelopes against.
#[derive(Clone)]
pub struct Settings {
    /// Checks the envelopes' signatures ([`crate::signing`]).
    pub key: EnvelopeKey,
    /// The largest content stored, in bytes: ingest's `MAX_MESSAGE_BYTES`,
    /// so that nothing ingest accepted is refused here as too large. What
    /// comes from elsewhere (the console) over it is dead-lettered
    /// `too_large`.
    pub max_content_bytes: usize,
}
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
///
/// Two tasks in a pipeline: this one takes batches and writes them to the
/// database; the settler publishes each batch's events and acks it, in the
/// same order, while the next batch is being written.
pub async fn run(
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    settings: Settings,
    stop: CancellationToken,
) {
    let mut queued = broker.consume_messages(PREFETCH);
    let rooms = batch::RoomCache::default();
    let (to_settle, mut settling) = tokio::sync::mpsc::channel::<(Vec<QueuedMessage>, Outcome)>(2);
    let mut settler = {
        let (broker, stop) = (broker.clone(), stop.clone());
        tokio::spawn(async move {
            while let Some((batch, outcome)) = settling.recv().await {
                let started = std::time::Instant::now();
                if !settle(broker.as_ref(), batch, outcome, &stop).await {
                    // Stopping: what follows stays unacked too, and is
                    // delivered again after the batch left unsettled.
                    break;
                }
                metrics::histogram!(crate::metrics::STORE_SETTLE_SECONDS).record(started.elapsed());
            }
        })
    };
    // The settler's end, if it came first (it stops only on shutdown, or
    // by panicking).
    let mut settled = None;
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            done = &mut settler => {
                settled = Some(done);
                break;
            }
            next = queued.next() => match next {
                Some(message) => message,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queued.next().now_or_never() {
                Some(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let (unrouted, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|m| m.unrouted);
        if !unrouted.is_empty() && !route::route(&db, broker.as_ref(), unrouted, &stop).await {
            break;
        }
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!(crate::metrics::STORE_BATCH_MESSAGES).record(batch.len() as f64);
        let started = std::time::Instant::now();
        let Some(outcome) = persist(&db, &batch, &settings, &rooms, &stop).await else {
            break;
        };
        metrics::histogram!(crate::metrics::STORE_BATCH_SECONDS).record(started.elapsed());
        if to_settle.send((batch, outcome)).await.is_err() {
            break;
        }
    }
    drop(to_settle);
    // A settler that panicked takes the stage with it, at once, so that the
    // node's supervisor starts it again rather than think it stopped.
    let settled = match settled {
        Some(done) => done,
        None => settler.await,
    };
    if let Err(err) = settled
        && err.is_panic()
    {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// A message refused: its index in the batch, why, and a detail for the header.
type Rejected = (usize, Reject, Option<String>);

/// The `message` event of a stored message.
struct StoredEvent {
    room_id: uuid::Uuid,
    seq: i64,
    event: Vec<u8>,
}

/// What a stored batch leaves to the settler.
#[derive(Default)]
struct Outcome {
    /// In batch order, for every stored message.
    events: Vec<StoredEvent>,
    rejected: Vec<Rejected>,
}

/// Most bytes of one `room.events` message, but for a single event larger
/// than this (which goes alone). A room's events of one batch are split
/// over as many messages as this asks: the broker refuses a message over its
/// limit (4 MiB in the shipped `rabbitmq.conf`) and the settler would try it
/// again for ever, holding up every batch behind it. 256 messages of 4 KiB
/// of content that JSON escapes six-fold come to about 6 MiB.
const ROOM_BATCH_BYTES: usize = 512 * 1024;

/// `room.events` messages: each room's events of the batch, in `seq` order,
/// as [`room_batch`](crate::event::room_batch)es of at most `max_bytes`
/// (one per room unless the room's events are larger); rooms in the order
/// the batch first names them.
fn room_batches(events: &[StoredEvent], max_bytes: usize) -> Vec<(uuid::Uuid, Vec<u8>)> {
    let mut rooms: Vec<(uuid::Uuid, Vec<&StoredEvent>)> = Vec::new();
    let mut place = std::collections::HashMap::new();
    for event in events {
        let i = *place.entry(event.room_id).or_insert_with(|| {
            rooms.push((event.room_id, Vec::new()));
            rooms.len() - 1
        });
        rooms[i].1.push(event);
    }
    let mut batches = Vec::new();
    for (room_id, mut events) in rooms {
        events.sort_by_key(|e| e.seq);
        let mut rest = events.as_slice();
        while !rest.is_empty() {
            // `[`, `]` and a comma between each two.
            let mut bytes = 2 + rest[0].event.len();
            let mut n = 1;
            while n < rest.len() && bytes + 1 + rest[n].event.len() <= max_bytes {
                bytes += 1 + rest[n].event.len();
                n += 1;
            }
            let (part, after) = rest.split_at(n);
            let batch = crate::event::room_batch(part.iter().map(|e| e.event.as_slice()));
            batches.push((room_id, batch));
            rest = after;
        }
    }
    batches
}

/// Parses and stores a batch. A part of it the database refuses is split in
/// two until the message it refuses is alone, and that one is dead-lettered:
/// one bad message never holds up the others. `None` on shutdown: the batch
/// stays unacked and the broker redelivers it.
async fn persist(
    db: &DatabaseConnection,
    batch: &[QueuedMessage],
    settings: &Settings,
    rooms: &batch::RoomCache,
    stop: &CancellationToken,
) -> Option<Outcome> {
    let (incoming, rejected) = judge::parse(batch, &settings.key);
    let mut outcome = Outcome {
        events: Vec::new(),
        rejected,
    };
    // The parts still to store, the next on top: halves keep batch order.
    let mut parts: Vec<&[judge::Incoming]> = vec![&incoming];
    while let Some(part) = parts.pop() {
        match store_retrying(db, part, settings.max_content_bytes, rooms, stop).await? {
            Ok(stored) => {
                outcome.events.extend(stored.events);
                outcome.rejected.extend(stored.rejected);
            }
            Err(err) if part.len() == 1 => {
                tracing::warn!(error = %err, "store stage: the database refuses a message; dead-lettering it");
                outcome
                    .rejected
                    .push((part[0].index, Reject::Refused, Some(err.to_string())));
            }
            Err(err) => {
                tracing::warn!(error = %err, messages = part.len(), "store stage: the database refuses a batch; \
                    splitting it");
                let (first, second) = part.split_at(part.len() / 2);
                parts.push(second);
                parts.push(first);
            }
        }
    }
    Some(outcome)
}

/// Stores a part of a batch, retrying with backoff what may pass later
/// (see [`is_transient`]). `None` on shutdown; `Some(Err)` when the database
/// refuses what the part holds.
async fn store_retrying(
    db: &DatabaseConnection,
    part: &[judge::Incoming],
    max_content: usize,
    rooms: &batch::RoomCache,
    stop: &CancellationToken,
) -> Option<Result<Outcome, DbErr>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match batch::store_batch(db, part, max_content, rooms).await {
            Ok(outcome) => return Some(Ok(outcome)),
            Err(err) if !is_transient(&err) => return Some(Err(err)),
            Err(err) => {
                tracing::warn!(error = %err, "store stage: database error; retrying in {backoff:?}");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// True when a database error says "not now" rather than "not this message":
/// the connection, the pool, or the database's own state (a deadlock, a
/// serialization conflict, resources, an operator, a busy SQLite file).
/// Anything else is a refusal of what the batch holds.
fn is_transient(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error};
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = err
    else {
        return matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_));
    };
    match &**err {
        Error::Database(db) if db.try_downcast_ref::<sea_orm::SqlxSqliteError>().is_some() => {
            // Primary result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
            db.code()
                .and_then(|code| code.parse::<u32>().ok())
                .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 10 | 13 | 14))
        }
        // SQLSTATE classes: connection exception, transaction rollback,
        // insufficient resources, operator intervention, system error.
        Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58"))),
        Error::Io(_)
        | Error::Tls(_)
        | Error::Protocol(_)
        | Error::PoolTimedOut
        | Error::PoolClosed
        | Error::WorkerCrashed
        | Error::BeginFailed => true,
        _ => false,
    }
}

/// Dead-letters the rejects, publishes the events in order, then acks the
/// whole batch. What the broker refuses (a nack, a confirm that does not
/// come, a lost link) is tried again here, with backoff, from where it
/// stopped: the next batches wait, so a room's events still go out in `seq`
/// order (a batch handed back to the broker would come after later ones, and
/// sockets drop a `seq` lower than one they have). On shutdown the batch is
/// left unacked (`false`), and so are the batches after it: the broker
/// delivers them again, and the store stage stores nothing twice but
/// publishes their events again.
///
/// The batch is acked in one go per channel ([`QueuedMessage::ack_batch`]):
/// everything taken before it is settled, since batches settle in order.
async fn settle(
    broker: &dyn Broker,
    batch: Vec<QueuedMessage>,
    outcome: Outcome,
    stop: &CancellationToken,
) -> bool {
    let mut dead_lettered = 0;
    let mut backoff = Duration::from_millis(100);
    while let Err(err) = publish_outcome(broker, &batch, &outcome, &mut dead_lettered).await {
        if stop.is_cancelled() {
            tracing::warn!(error = %err, "store stage: stopping with a batch unsettled; it will be redelivered");
            return false;
        }
        tracing::warn!(error = %err, "store stage: cannot settle a batch; retrying in {backoff:?}");
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    if let Err(err) = QueuedMessage::ack_batch(batch).await {
        tracing::warn!(error = %err, "store stage: ack failed; the batch will be redelivered and not stored twice");
    }
    true
}

/// Most characters of a detail in a dead letter's reason header. The detail
/// may quote what the message held (the JSON parser's error quotes a string
/// it did not expect, whole), and a header travels in one frame: a header
/// over the broker's frame size (128 KiB) closes the whole connection, and
/// the dead letter would be tried again, on every node, for ever.
const DETAIL_CHARS: usize = 500;

/// `detail` cut to [`DETAIL_CHARS`], with `…` where it was cut.
fn shorten(detail: &str) -> std::borrow::Cow<'_, str> {
    match detail.char_indices().nth(DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &detail[..end]).into(),
        None => detail.into(),
    }
}

/// The dead letters and the room events of a stored batch, confirmed; the
/// dead letters from `dead_lettered` on (those before went out on an earlier
/// try).
async fn publish_outcome(
    broker: &dyn Broker,
    batch: &[QueuedMessage],
    outcome: &Outcome,
    dead_lettered: &mut usize,
) -> Result<(), crate::BrokerError> {
    for (index, reason, detail) in &outcome.rejected[*dead_lettered..] {
        let header = match detail {
            Some(detail) => format!("{}: {}", reason.label(), shorten(detail)),
            None => reason.label().to_owned(),
        };
        broker.dead_letter(&batch[*index].payload, &header).await?;
        *dead_lettered += 1;
        metrics::counter!(crate::metrics::MESSAGES_DEAD_LETTERED, "reason" => reason.label())
            .increment(1);
    }
    let batches = room_batches(&outcome.events, ROOM_BATCH_BYTES);
    broker.publish_events(&batches).await?;
    metrics::counter!(crate::metrics::ROOM_EVENT_BATCHES).increment(batches.len() as u64);
    Ok(())
}
