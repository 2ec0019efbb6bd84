//! The store stage: `messages` → database → `room.events`.
//!
//! It takes what is waiting (up to [`BATCH_MAX`]), checks the rules again
//! (the room exists, the sender still may post), gives each message its room's
//! next `seq`, inserts the batch in one transaction, publishes the `message`
//! events in order, and only then acks. A message stored before (a redelivery,
//! a client's retry) is not stored again, but its event is published again:
//! sockets drop a `seq` they already have, so nothing is lost or doubled.
//! A message that breaks a rule goes to `messages.dlq` with the reason.
//!
//! The `messages` queue has a single active consumer, so one store stage works
//! at a time cluster-wide and a room's order is one order.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use entity::{message, room, room_member, user};
use futures_util::{FutureExt, StreamExt};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QuerySelect, Set, Statement, TransactionTrait, Value,
    sea_query::{ArrayType, Expr, ExprTrait},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Broker,
    broker::Delivery,
    event::{Envelope, MessageView, RoomEvent, SenderView},
};

/// Messages the broker may hand over before the first is acked.
pub const PREFETCH: u16 = 512;
/// Most messages stored in one transaction.
pub const BATCH_MAX: usize = 256;
/// Ceiling for content that did not come through ingest (which applies
/// `MAX_MESSAGE_BYTES`), e.g. published by hand from the console.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
///
/// Two tasks in a pipeline: this one takes batches and writes them to the
/// database; the settler publishes each batch's events and acks it, in the
/// same order, while the next batch is being written.
pub async fn run(db: DatabaseConnection, broker: Arc<dyn Broker>, stop: CancellationToken) {
    let mut deliveries = broker.consume_messages(PREFETCH);
    let (to_settle, mut settling) = tokio::sync::mpsc::channel::<(Vec<Delivery>, Outcome)>(2);
    let settler = {
        let broker = broker.clone();
        tokio::spawn(async move {
            while let Some((batch, outcome)) = settling.recv().await {
                settle(broker.as_ref(), batch, outcome).await;
            }
        })
    };
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            next = deliveries.next() => match next {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery),
                _ => break,
            }
        }
        let Some(outcome) = persist(&db, &batch, &stop).await else {
            break;
        };
        if to_settle.send((batch, outcome)).await.is_err() {
            break;
        }
    }
    drop(to_settle);
    let _ = settler.await;
}

/// A parsed message with the id it will be stored under.
struct Incoming {
    index: usize,
    id: Uuid,
    envelope: Envelope,
}

fn has_nul(envelope: &Envelope) -> bool {
    [
        Some(envelope.room_id.as_str()),
        Some(envelope.content.as_str()),
        envelope.client_id.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|text| text.contains('\0'))
}

/// Parses and stores a batch, retrying database errors with backoff. `None`
/// on shutdown: the batch stays unacked and the broker redelivers it.
async fn persist(
    db: &DatabaseConnection,
    batch: &[Delivery],
    stop: &CancellationToken,
) -> Option<Outcome> {
    let mut rejected = Vec::new();
    let mut incoming = Vec::with_capacity(batch.len());
    for (index, delivery) in batch.iter().enumerate() {
        match serde_json::from_slice::<Envelope>(&delivery.payload) {
            Ok(envelope) if has_nul(&envelope) => {
                // Databases refuse NUL in text; retrying would never succeed.
                rejected.push((index, Reject::InvalidText, Some("NUL character".to_owned())));
            }
            Ok(envelope) => {
                // Hand-published messages have no id; give one now, so that
                // retries of this batch keep it.
                let id = envelope.id.unwrap_or_else(Uuid::now_v7);
                incoming.push(Incoming {
                    index,
                    id,
                    envelope,
                });
            }
            Err(err) => rejected.push((index, Reject::Unparseable, Some(err.to_string()))),
        }
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match store_batch(db, &incoming).await {
            Ok(mut outcome) => {
                outcome.rejected.extend(rejected);
                return Some(outcome);
            }
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

/// Dead-letters the rejects, publishes the events in order, then acks the
/// whole batch. On a broker error nothing more is acked: the broker
/// redelivers, and the store stage stores nothing twice.
async fn settle(broker: &dyn Broker, batch: Vec<Delivery>, outcome: Outcome) {
    for (index, reason, detail) in &outcome.rejected {
        metrics::counter!(crate::metrics::MESSAGES_DEAD_LETTERED, "reason" => reason.label())
            .increment(1);
        let header = match detail {
            Some(detail) => format!("{}: {detail}", reason.label()),
            None => reason.label().to_owned(),
        };
        if let Err(err) = broker.dead_letter(&batch[*index].payload, &header).await {
            tracing::warn!(error = %err, "store stage: cannot dead-letter; the batch will be redelivered");
            return;
        }
    }
    if let Err(err) = broker.publish_events(&outcome.events).await {
        tracing::warn!(error = %err, "store stage: cannot publish events; the batch will be redelivered");
        return;
    }
    // Acks are independent frames: send them together, not one round trip each.
    let acks = futures_util::future::join_all(batch.into_iter().map(Delivery::ack)).await;
    if let Some(Err(err)) = acks.into_iter().find(Result::is_err) {
        tracing::warn!(error = %err, "store stage: ack failed; the message will be redelivered and not stored twice");
    }
}

/// Why a message goes to `messages.dlq`: the `reason` label of
/// [`crate::metrics::MESSAGES_DEAD_LETTERED`], and the start of the
/// `x-roomcast-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not JSON, or not an envelope.
    Unparseable,
    /// Text the databases refuse (NUL).
    InvalidText,
    UnknownRoom,
    EmptyContent,
    /// Content over [`MAX_CONTENT_BYTES`].
    TooLarge,
    UnknownSender,
    /// The sender may not post in that room (any more).
    NotAMember,
}

impl Reject {
    pub const ALL: [Reject; 7] = [
        Reject::Unparseable,
        Reject::InvalidText,
        Reject::UnknownRoom,
        Reject::EmptyContent,
        Reject::TooLarge,
        Reject::UnknownSender,
        Reject::NotAMember,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::Unparseable => "unparseable",
            Reject::InvalidText => "invalid_text",
            Reject::UnknownRoom => "unknown_room",
            Reject::EmptyContent => "empty_content",
            Reject::TooLarge => "too_large",
            Reject::UnknownSender => "unknown_sender",
            Reject::NotAMember => "not_a_member",
        }
    }
}

#[derive(Default)]
struct Outcome {
    /// `(room, message event)` in batch order, for every stored message.
    events: Vec<(Uuid, Vec<u8>)>,
    /// `(index in the batch, why, detail for the header)`.
    rejected: Vec<(usize, Reject, Option<String>)>,
}

async fn store_batch(db: &DatabaseConnection, incoming: &[Incoming]) -> Result<Outcome, DbErr> {
    let mut outcome = Outcome::default();
    if incoming.is_empty() {
        return Ok(outcome);
    }
    let txn = db.begin().await?;
    let rooms = resolve_rooms(&txn, incoming).await?;
    let ids: Vec<Uuid> = incoming.iter().map(|m| m.id).collect();
    let existing: HashMap<Uuid, message::Model> = message::Entity::find()
        .filter(message::Column::Id.is_in(ids))
        .all(&txn)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let senders: HashSet<Uuid> = incoming
        .iter()
        .filter_map(|m| m.envelope.sender_id)
        .collect();
    let names: HashMap<Uuid, String> = if senders.is_empty() {
        HashMap::new()
    } else {
        user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .column(user::Column::Username)
            .filter(user::Column::Id.is_in(senders.iter().copied()))
            .into_tuple::<(Uuid, String)>()
            .all(&txn)
            .await?
            .into_iter()
            .collect()
    };
    // Only rooms that are not public ask for membership: a batch of public
    // messages makes no query for it.
    let closed_rooms: HashSet<Uuid> = rooms
        .values()
        .filter(|r| r.kind != room::RoomKind::Public)
        .map(|r| r.id)
        .collect();
    let memberships: HashSet<(Uuid, Uuid)> = if senders.is_empty() || closed_rooms.is_empty() {
        HashSet::new()
    } else {
        room_member::Entity::find()
            .filter(room_member::Column::UserId.is_in(senders.iter().copied()))
            .filter(room_member::Column::RoomId.is_in(closed_rooms.iter().copied()))
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| (m.room_id, m.user_id))
            .collect()
    };

    // Decide each message's fate, in batch order.
    enum Fate<'a> {
        Stored(&'a message::Model),
        New(message::Model),
    }
    let mut fates: Vec<Fate> = Vec::new();
    let mut seen = HashSet::new();
    let mut per_room: HashMap<Uuid, i64> = HashMap::new();
    for m in incoming {
        if !seen.insert(m.id) {
            continue; // the same id twice in one batch: once is enough
        }
        if let Some(stored) = existing.get(&m.id) {
            fates.push(Fate::Stored(stored));
            continue;
        }
        let Some(room) = rooms.get(&m.envelope.room_id) else {
            outcome.rejected.push((m.index, Reject::UnknownRoom, None));
            continue;
        };
        let content = &m.envelope.content;
        if content.trim().is_empty() {
            outcome.rejected.push((m.index, Reject::EmptyContent, None));
            continue;
        }
        if content.len() > MAX_CONTENT_BYTES {
            outcome.rejected.push((m.index, Reject::TooLarge, None));
            continue;
        }
        if let Some(sender) = m.envelope.sender_id {
            if !names.contains_key(&sender) {
                outcome
                    .rejected
                    .push((m.index, Reject::UnknownSender, None));
                continue;
            }
            if room.kind != room::RoomKind::Public && !memberships.contains(&(room.id, sender)) {
                outcome.rejected.push((m.index, Reject::NotAMember, None));
                continue;
            }
        }
        *per_room.entry(room.id).or_default() += 1;
        fates.push(Fate::New(message::Model {
            id: m.id,
            room_id: room.id,
            seq: 0, // assigned below
            sender_id: m.envelope.sender_id,
            content: content.clone(),
            client_id: m.envelope.client_id.clone(),
            created_at: m.envelope.created_at.unwrap_or_else(Utc::now),
            edited_at: None,
            deleted_at: None,
            sender_deleted: false,
        }));
    }

    // Take a block of seqs for every room of the batch in one UPDATE (which
    // row-locks them), returning where each block ends.
    let mut next_seq: HashMap<Uuid, i64> = HashMap::new();
    if !per_room.is_empty() {
        let mut blocks = per_room.iter();
        let (first, count) = blocks.next().expect("not empty");
        let mut case = Expr::case(
            room::Column::Id.eq(*first),
            Expr::col(room::Column::LastSeq).add(*count),
        );
        for (room_id, count) in blocks {
            case = case.case(
                room::Column::Id.eq(*room_id),
                Expr::col(room::Column::LastSeq).add(*count),
            );
        }
        let ends = room::Entity::update_many()
            .col_expr(
                room::Column::LastSeq,
                case.finally(Expr::col(room::Column::LastSeq)).into(),
            )
            .filter(room::Column::Id.is_in(per_room.keys().copied()))
            .exec_with_returning(&txn)
            .await?;
        for room in ends {
            next_seq.insert(room.id, room.last_seq - per_room[&room.id] + 1);
        }
    }
    let mut new_rows = Vec::new();
    for fate in &mut fates {
        if let Fate::New(model) = fate {
            let seq = next_seq
                .get_mut(&model.room_id)
                .expect("every new message's room has a block");
            model.seq = *seq;
            *seq += 1;
            new_rows.push(model.clone());
        }
    }
    insert_rows(&txn, &new_rows).await?;
    txn.commit().await?;
    metrics::counter!(crate::metrics::MESSAGES_STORED).increment(new_rows.len() as u64);

    for fate in &fates {
        let model = match fate {
            Fate::Stored(model) => model,
            Fate::New(model) => model,
        };
        let sender = model.sender_id.and_then(|id| {
            names.get(&id).map(|n| SenderView {
                id,
                username: n.clone(),
            })
        });
        let event = RoomEvent::Message(MessageView::from_model(model, sender));
        outcome.events.push((model.room_id, event.to_bytes()));
    }
    Ok(outcome)
}

/// Largest estimated payload of one insert statement sent to PostgreSQL.
///
/// The database driver leaves Nagle's algorithm on for its TCP connections:
/// a statement too big for one write goes out in two, the second waits for
/// the server's ACK of the first, and the server delays that ACK by 40 ms
/// (measured: a 127-message insert took 45 ms over TCP, 1.4 ms over a Unix
/// socket). Statements under this size go out in one write.
const STATEMENT_BYTES: usize = 6 * 1024;

/// Inserts a batch's new messages.
///
/// On PostgreSQL, `INSERT … SELECT FROM UNNEST(…)` with an array per column:
/// seven parameters whatever the number of rows, so the statement is parsed
/// and planned once per connection; as many statements as
/// [`STATEMENT_BYTES`] asks. SQLite, in-process, takes a plain multi-row
/// insert.
async fn insert_rows(txn: &DatabaseTransaction, rows: &[message::Model]) -> Result<(), DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres {
        for chunk in rows.chunks(500) {
            message::Entity::insert_many(chunk.iter().map(to_active))
                .exec_without_returning(txn)
                .await?;
        }
        return Ok(());
    }
    // Ids, room, seq, sender, time and the arrays' per-element headers.
    let size =
        |m: &message::Model| 100 + m.content.len() + m.client_id.as_ref().map_or(0, String::len);
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        let mut bytes = size(&rows[start]);
        while end < rows.len() && bytes + size(&rows[end]) <= STATEMENT_BYTES {
            bytes += size(&rows[end]);
            end += 1;
        }
        insert_unnest(txn, &rows[start..end]).await?;
        start = end;
    }
    Ok(())
}

/// One `INSERT … SELECT FROM UNNEST(…)` of `rows` (PostgreSQL).
async fn insert_unnest(txn: &DatabaseTransaction, rows: &[message::Model]) -> Result<(), DbErr> {
    let array = |ty: ArrayType, values: Vec<Value>| Value::Array(ty, Some(Box::new(values)));
    let column = |f: fn(&message::Model) -> Value| rows.iter().map(f).collect::<Vec<_>>();
    fn text(s: Option<String>) -> Value {
        Value::String(Some(s.unwrap_or_default()))
    }
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        // Array elements cannot be NULL through the driver: the optional
        // columns travel as text, '' for none.
        "INSERT INTO messages (id, room_id, seq, sender_id, content, client_id, created_at) \
         SELECT i, r, s, NULLIF(u, '')::uuid, c, NULLIF(k, ''), t \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], \
         $6::text[], $7::timestamptz[]) AS x(i, r, s, u, c, k, t)",
        [
            array(ArrayType::Uuid, column(|m| Value::Uuid(Some(m.id)))),
            array(ArrayType::Uuid, column(|m| Value::Uuid(Some(m.room_id)))),
            array(ArrayType::BigInt, column(|m| Value::BigInt(Some(m.seq)))),
            array(
                ArrayType::String,
                column(|m| text(m.sender_id.map(|u| u.to_string()))),
            ),
            array(ArrayType::String, column(|m| text(Some(m.content.clone())))),
            array(ArrayType::String, column(|m| text(m.client_id.clone()))),
            array(
                ArrayType::ChronoDateTimeUtc,
                column(|m| Value::ChronoDateTimeUtc(Some(m.created_at))),
            ),
        ],
    );
    let inserted = txn.execute_raw(statement).await?.rows_affected();
    if inserted != rows.len() as u64 {
        return Err(DbErr::Custom(format!(
            "inserted {inserted} of {} messages",
            rows.len()
        )));
    }
    Ok(())
}

fn to_active(m: &message::Model) -> message::ActiveModel {
    message::ActiveModel {
        id: Set(m.id),
        room_id: Set(m.room_id),
        seq: Set(m.seq),
        sender_id: Set(m.sender_id),
        content: Set(m.content.clone()),
        client_id: Set(m.client_id.clone()),
        created_at: Set(m.created_at),
        edited_at: Set(m.edited_at),
        deleted_at: Set(m.deleted_at),
        sender_deleted: Set(m.sender_deleted),
    }
}

/// The batch's rooms by the key each message gave: a UUID, or (by hand) a name.
async fn resolve_rooms(
    txn: &impl sea_orm::ConnectionTrait,
    incoming: &[Incoming],
) -> Result<HashMap<String, room::Model>, DbErr> {
    let keys: HashSet<&str> = incoming
        .iter()
        .map(|m| m.envelope.room_id.as_str())
        .collect();
    let ids: Vec<Uuid> = keys
        .iter()
        .filter_map(|k| Uuid::parse_str(k).ok())
        .collect();
    let mut by_key = HashMap::new();
    for room in room::Entity::find()
        .filter(room::Column::Id.is_in(ids))
        .all(txn)
        .await?
    {
        for key in &keys {
            if Uuid::parse_str(key).ok() == Some(room.id) {
                by_key.insert((*key).to_owned(), room.clone());
            }
        }
    }
    for key in keys.iter().filter(|k| Uuid::parse_str(k).is_err()) {
        let found = room::Entity::find()
            .filter(
                sea_orm::sea_query::Func::lower(Expr::col(room::Column::Name))
                    .eq(Expr::val(key.to_lowercase())),
            )
            .one(txn)
            .await?;
        if let Some(room) = found {
            by_key.insert((*key).to_owned(), room);
        }
    }
    Ok(by_key)
}
