//! One batch through the database: load its context, judge it, allocate
//! seqs, insert, and build its events.

use std::collections::{HashMap, HashSet};

use entity::{message, room, room_member, user};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, Func},
};
use uuid::Uuid;

use super::{
    Outcome, StoredEvent,
    insert::insert_rows,
    judge::{Context, Incoming, Verdict, judge},
};
use crate::event::{MessageView, RoomEvent, SenderView};

/// Stores a batch in one transaction; returns its events in batch order and
/// what it rejected (content over `max_content` bytes among it).
pub(super) async fn store_batch(
    db: &DatabaseConnection,
    incoming: &[Incoming],
    max_content: usize,
) -> Result<Outcome, DbErr> {
    let mut outcome = Outcome::default();
    if incoming.is_empty() {
        return Ok(outcome);
    }
    let txn = db.begin().await?;
    let ctx = load_context(&txn, incoming).await?;

    // Each message's fate, in batch order; a new row's place in `new_rows`.
    enum Slot<'c> {
        Stored(&'c message::Model),
        New(usize),
    }
    let mut slots = Vec::with_capacity(incoming.len());
    let mut new_rows = Vec::new();
    let mut seen = HashSet::new();
    for m in incoming {
        if !seen.insert(m.id) {
            continue; // the same id twice in one batch: once is enough
        }
        match judge(&ctx, m, max_content) {
            Ok(Verdict::Stored(model)) => slots.push(Slot::Stored(model)),
            Ok(Verdict::Store(model)) => {
                slots.push(Slot::New(new_rows.len()));
                new_rows.push(model);
            }
            Err((reason, detail)) => outcome.rejected.push((m.index, reason, detail)),
        }
    }

    let mut per_room: HashMap<Uuid, i64> = HashMap::new();
    for row in &new_rows {
        *per_room.entry(row.room_id).or_default() += 1;
    }
    let mut next_seq = allocate_seqs(&txn, &per_room).await?;
    for row in &mut new_rows {
        let seq = next_seq
            .get_mut(&row.room_id)
            .expect("every new message's room has a block");
        row.seq = *seq;
        *seq += 1;
    }
    insert_rows(&txn, &new_rows).await?;
    txn.commit().await?;
    metrics::counter!(crate::metrics::MESSAGES_STORED).increment(new_rows.len() as u64);

    outcome.events = slots
        .iter()
        .map(|slot| match slot {
            Slot::Stored(model) => event(&ctx, model),
            Slot::New(i) => event(&ctx, &new_rows[*i]),
        })
        .collect();
    Ok(outcome)
}

/// The `message` event of a stored row.
fn event(ctx: &Context, model: &message::Model) -> StoredEvent {
    let sender = model.sender_id.and_then(|id| {
        ctx.names
            .get(&id)
            .map(|n| SenderView::new(id, n.as_str(), ctx.avatars.get(&id).copied().unwrap_or(0)))
    });
    let event = RoomEvent::Message(MessageView::from_model(model, sender));
    StoredEvent {
        room_id: model.room_id,
        seq: model.seq,
        event: event.to_bytes(),
    }
}

/// Reads what judging the batch needs: its rooms, the messages already
/// stored, the senders' names and, for rooms that are not public, their
/// memberships.
pub(super) async fn load_context(
    conn: &impl ConnectionTrait,
    incoming: &[Incoming],
) -> Result<Context, DbErr> {
    let rooms = resolve_rooms(conn, incoming).await?;
    let ids: Vec<Uuid> = incoming.iter().map(|m| m.id).collect();
    let existing = message::Entity::find()
        .filter(message::Column::Id.is_in(ids))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let senders: HashSet<Uuid> = incoming
        .iter()
        .filter_map(|m| m.envelope.sender_id)
        .collect();
    let found = load_senders(conn, senders.iter().copied()).await?;
    let avatars = found.iter().map(|(id, _, v)| (*id, *v)).collect();
    let names = found.into_iter().map(|(id, name, _)| (id, name)).collect();
    // Only rooms that are not public ask for membership: a batch of public
    // messages makes no query for it.
    let closed_rooms: HashSet<Uuid> = rooms
        .values()
        .filter(|r| r.kind != room::RoomKind::Public)
        .map(|r| r.id)
        .collect();
    let memberships = if senders.is_empty() || closed_rooms.is_empty() {
        HashSet::new()
    } else {
        room_member::Entity::find()
            .filter(room_member::Column::UserId.is_in(senders.iter().copied()))
            .filter(room_member::Column::RoomId.is_in(closed_rooms.iter().copied()))
            .all(conn)
            .await?
            .into_iter()
            .map(|m| (m.room_id, m.user_id))
            .collect()
    };
    Ok(Context {
        rooms,
        existing,
        names,
        avatars,
        memberships,
    })
}

/// Takes a block of `count` seqs for each room in one UPDATE (which
/// row-locks the rooms until the transaction ends); returns each block's
/// first seq.
pub(super) async fn allocate_seqs(
    conn: &impl ConnectionTrait,
    per_room: &HashMap<Uuid, i64>,
) -> Result<HashMap<Uuid, i64>, DbErr> {
    let mut blocks = per_room.iter();
    let Some((first, count)) = blocks.next() else {
        return Ok(HashMap::new());
    };
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
        .exec_with_returning(conn)
        .await?;
    Ok(ends
        .into_iter()
        .map(|room| (room.id, room.last_seq - per_room[&room.id] + 1))
        .collect())
}

/// The batch's rooms by the key each message gave: a UUID, or (by hand) a name.
async fn resolve_rooms(
    conn: &impl ConnectionTrait,
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
        .all(conn)
        .await?
    {
        for key in &keys {
            if Uuid::parse_str(key).ok() == Some(room.id) {
                by_key.insert((*key).to_owned(), room.clone());
            }
        }
    }
    // A name longer than any room's (64 characters) names none: no query.
    let names = keys
        .iter()
        .filter(|k| Uuid::parse_str(k).is_err() && k.chars().count() <= 64);
    for key in names {
        let found = room::Entity::find()
            .filter(Func::lower(Expr::col(room::Column::Name)).eq(Expr::val(key.to_lowercase())))
            .one(conn)
            .await?;
        if let Some(room) = found {
            by_key.insert((*key).to_owned(), room);
        }
    }
    Ok(by_key)
}

/// `(id, username, avatar version)` of each of these users that exists: what
/// a message's `sender` is built from, for the store stage and history alike.
/// No query when there is no one to look up.
pub async fn load_senders(
    conn: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = Uuid>,
) -> Result<Vec<(Uuid, String, i32)>, DbErr> {
    let ids: Vec<Uuid> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::Username)
        .column(user::Column::AvatarVersion)
        .filter(user::Column::Id.is_in(ids))
        .into_tuple::<(Uuid, String, i32)>()
        .all(conn)
        .await
}
