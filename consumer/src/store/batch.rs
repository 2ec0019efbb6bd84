//! One batch through the database: load its context, judge it, allocate
//! seqs, insert, and build its events.

use std::collections::{HashMap, HashSet};

use entity::{message, room, room_member, user};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, JoinType, QueryFilter,
    QuerySelect, RelationTrait, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func, IntoCondition},
};
use uuid::Uuid;

use super::{
    Outcome, StoredEvent,
    insert::{insert_rows, write_at_once},
    judge::{Context, Incoming, Verdict, judge},
};
use crate::event::{MessageView, Reject, RoomEvent, SenderView};

/// Stores a batch in one transaction; returns its events in batch order and
/// what it rejected (content over `max_content` bytes among it).
///
/// Most batches hold only new messages, so the look-up of those stored
/// before is left to the insert (`ON CONFLICT (id) DO NOTHING`), which
/// finds them for nothing. A batch the broker delivered before, one with a
/// message refused, or one whose insert meets a stored id (a client's
/// retry), is stored again with the look-up, and nothing of the first try
/// is kept.
pub(super) async fn store_batch(
    db: &DatabaseConnection,
    incoming: &[Incoming],
    max_content: usize,
    rooms: &RoomCache,
) -> Result<Outcome, DbErr> {
    if incoming.is_empty() {
        return Ok(Outcome::default());
    }
    if !incoming.iter().any(|m| m.redelivered)
        && let Some(outcome) = try_store(db, incoming, max_content, rooms, false).await?
    {
        return Ok(outcome);
    }
    try_store(db, incoming, max_content, rooms, true)
        .await?
        .ok_or_else(|| DbErr::Custom("a message of the batch was stored meanwhile".into()))
}

/// One try of [`store_batch`]: `None` when, without the look-up, a message
/// is refused or the insert meets one stored before (then nothing is kept).
async fn try_store(
    db: &DatabaseConnection,
    incoming: &[Incoming],
    max_content: usize,
    rooms: &RoomCache,
    look_up_stored: bool,
) -> Result<Option<Outcome>, DbErr> {
    let mut outcome = Outcome::default();
    // One connection for the whole batch: each statement outside the
    // transaction would take one from the pool, and that costs a round trip.
    let txn = db.begin().await?;
    let ctx = load_context(&txn, incoming, rooms, look_up_stored).await?;
    let (slots, mut new_rows) = judge_all(&ctx, incoming, max_content, &mut outcome);
    if !look_up_stored && !outcome.rejected.is_empty() {
        // A message refused may be one stored before (a client's retry
        // from a sender no longer a member): judged again with the look-up,
        // it is found stored, not dead-lettered.
        txn.rollback().await?;
        return Ok(None);
    }

    let models: Vec<&message::Model> = new_rows.iter().map(|(row, _)| row).collect();
    let (mut next_seq, inserted) = match write_at_once(&txn, &models).await? {
        Some((first_seqs, inserted)) => (first_seqs, Some(inserted)),
        None => {
            let mut per_room: HashMap<Uuid, i64> = HashMap::new();
            for row in &models {
                *per_room.entry(row.room_id).or_default() += 1;
            }
            (allocate_seqs(&txn, &per_room).await?, None)
        }
    };
    // A room deleted since it was read gets no block: its messages go as
    // to an unknown room.
    let mut kept = Vec::with_capacity(new_rows.len());
    let mut gone = HashSet::new();
    for (mut row, index) in new_rows.drain(..) {
        match next_seq.get_mut(&row.room_id) {
            Some(seq) => {
                row.seq = *seq;
                *seq += 1;
                kept.push(row);
            }
            None => {
                rooms.forget(row.room_id);
                gone.insert(index);
                outcome.rejected.push((index, Reject::UnknownRoom, None));
            }
        }
    }
    let inserted = match inserted {
        Some(inserted) => inserted,
        None => insert_rows(&txn, &kept).await?,
    };
    if inserted < kept.len() as u64 {
        txn.rollback().await?;
        return Ok(None);
    }
    txn.commit().await?;
    metrics::counter!(crate::metrics::MESSAGES_STORED).increment(kept.len() as u64);

    let mut new = kept.iter();
    outcome.events = slots
        .into_iter()
        .filter(|slot| !matches!(slot, Slot::New(index) if gone.contains(index)))
        .map(|slot| match slot {
            Slot::Stored(id) => event(&ctx, ctx.existing.get(&id).expect("judged stored")),
            Slot::New(_) => event(&ctx, new.next().expect("one row per new slot")),
        })
        .collect();
    Ok(Some(outcome))
}

/// Each message's fate, in batch order.
enum Slot {
    /// Stored before, under this id.
    Stored(Uuid),
    /// New: the batch index of its row.
    New(usize),
}

/// Judges every message of the batch; the rejected go to `outcome`. Returns
/// the slots in batch order and the new rows with their batch index.
fn judge_all(
    ctx: &Context,
    incoming: &[Incoming],
    max_content: usize,
    outcome: &mut Outcome,
) -> (Vec<Slot>, Vec<(message::Model, usize)>) {
    let mut slots = Vec::with_capacity(incoming.len());
    let mut new_rows = Vec::new();
    let mut seen = HashSet::new();
    for m in incoming {
        if !seen.insert(m.id) {
            continue; // the same id twice in one batch: once is enough
        }
        match judge(ctx, m, max_content) {
            Ok(Verdict::Stored(model)) => slots.push(Slot::Stored(model.id)),
            Ok(Verdict::Store(model)) => {
                slots.push(Slot::New(m.index));
                new_rows.push((model, m.index));
            }
            Err((reason, detail)) => outcome.rejected.push((m.index, reason, detail)),
        }
    }
    (slots, new_rows)
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

/// Reads what judging the batch needs: its rooms, the senders' names, their
/// memberships of the rooms that are not public, and (when
/// `look_up_stored`) the messages already stored.
pub(super) async fn load_context(
    conn: &impl ConnectionTrait,
    incoming: &[Incoming],
    cache: &RoomCache,
    look_up_stored: bool,
) -> Result<Context, DbErr> {
    let keys: HashSet<&str> = incoming
        .iter()
        .map(|m| m.envelope.room_id.as_str())
        .collect();
    // The look-up pass reads its rooms afresh: a cached room deleted since
    // (its members gone with it) is then `unknown_room`, not `not_a_member`.
    let mut rooms = rooms_by_id(conn, &keys, cache, look_up_stored).await?;
    // Rooms named by name (by hand, from the console): rare, one by one.
    rooms.extend(rooms_by_name(conn, &keys).await?);
    let existing = if look_up_stored {
        let ids = incoming.iter().map(|m| m.id);
        let found = message::Entity::find()
            .filter(message::Column::Id.is_in(ids))
            .all(conn)
            .await?;
        found.into_iter().map(|m| (m.id, m)).collect()
    } else {
        HashMap::new()
    };
    let senders: HashSet<Uuid> = incoming
        .iter()
        .filter_map(|m| m.envelope.sender_id)
        .collect();
    // Only rooms that are not public ask for membership: a batch of public
    // messages reads its senders alone.
    let closed_rooms: Vec<Uuid> = rooms
        .values()
        .filter(|r| r.kind != room::RoomKind::Public)
        .map(|r| r.id)
        .collect();
    let (found, memberships) = load_senders_and_memberships(conn, &senders, closed_rooms).await?;
    let avatars = found.iter().map(|(id, _, v)| (*id, *v)).collect();
    let names = found.into_iter().map(|(id, name, _)| (id, name)).collect();
    Ok(Context {
        rooms,
        existing,
        names,
        avatars,
        memberships,
    })
}

/// These senders, as [`load_senders`] reads them, and their `(room, user)`
/// memberships in these rooms: one query (a sender joined to their
/// memberships in `rooms`, a row each, or one row without a room).
async fn load_senders_and_memberships(
    conn: &impl ConnectionTrait,
    senders: &HashSet<Uuid>,
    rooms: Vec<Uuid>,
) -> Result<(Vec<(Uuid, String, i32)>, HashSet<(Uuid, Uuid)>), DbErr> {
    if rooms.is_empty() || senders.is_empty() {
        let found = load_senders(conn, senders.iter().copied()).await?;
        return Ok((found, HashSet::new()));
    }
    let in_rooms = user::Relation::RoomMember
        .def()
        .on_condition(move |_, member| {
            Expr::col((member, room_member::Column::RoomId))
                .is_in(rooms.clone())
                .into_condition()
        });
    let rows = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::Username)
        .column(user::Column::AvatarVersion)
        .column(room_member::Column::RoomId)
        .join(JoinType::LeftJoin, in_rooms)
        .filter(user::Column::Id.is_in(senders.iter().copied()))
        .into_tuple::<(Uuid, String, i32, Option<Uuid>)>()
        .all(conn)
        .await?;
    let mut found = HashMap::new();
    let mut memberships = HashSet::new();
    for (id, name, avatar, room_id) in rows {
        if let Some(room_id) = room_id {
            memberships.insert((room_id, id));
        }
        found.entry(id).or_insert((name, avatar));
    }
    let found = found
        .into_iter()
        .map(|(id, (name, avatar))| (id, name, avatar))
        .collect();
    Ok((found, memberships))
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

/// The rooms the store stage has read, by id, so that a batch to rooms it
/// knows reads none: a room's id and kind, all that judging asks of it,
/// never change (its other fields here may be old). A room deleted since is
/// found out when its seqs are taken (no block: `unknown_room`), and
/// forgotten. Emptied when it holds [`RoomCache::MAX`] rooms.
#[derive(Default)]
pub struct RoomCache(std::sync::Mutex<HashMap<Uuid, room::Model>>);

impl RoomCache {
    const MAX: usize = 10_000;

    fn get(&self, id: &Uuid) -> Option<room::Model> {
        self.0.lock().expect("room cache").get(id).cloned()
    }

    fn keep(&self, rooms: impl IntoIterator<Item = room::Model>) {
        let mut cache = self.0.lock().expect("room cache");
        for room in rooms {
            if cache.len() >= Self::MAX {
                cache.clear();
            }
            cache.insert(room.id, room);
        }
    }

    fn forget(&self, id: Uuid) {
        self.0.lock().expect("room cache").remove(&id);
    }

    #[cfg(test)]
    pub(super) fn contains(&self, id: Uuid) -> bool {
        self.0.lock().expect("room cache").contains_key(&id)
    }
}

/// The batch's rooms named by UUID, by the key each message gave: from the
/// cache, and the rest read (and kept); all read when `fresh` (and those
/// gone forgotten).
async fn rooms_by_id(
    conn: &impl ConnectionTrait,
    keys: &HashSet<&str>,
    cache: &RoomCache,
    fresh: bool,
) -> Result<HashMap<String, room::Model>, DbErr> {
    // One room may be given in two spellings (upper and lower case).
    let mut ids: HashMap<Uuid, Vec<&str>> = HashMap::new();
    for key in keys {
        if let Ok(id) = Uuid::parse_str(key) {
            ids.entry(id).or_default().push(key);
        }
    }
    let (mut found, mut missing) = (Vec::new(), HashSet::new());
    for id in ids.keys() {
        match cache.get(id).filter(|_| !fresh) {
            Some(room) => found.push(room),
            None => {
                missing.insert(*id);
            }
        }
    }
    if !missing.is_empty() {
        let read = room::Entity::find()
            .filter(room::Column::Id.is_in(missing.iter().copied()))
            .all(conn)
            .await?;
        for room in &read {
            missing.remove(&room.id);
        }
        for gone in missing {
            cache.forget(gone);
        }
        cache.keep(read.iter().cloned());
        found.extend(read);
    }
    let mut by_key = HashMap::new();
    for room in found {
        for key in &ids[&room.id] {
            by_key.insert((*key).to_owned(), room.clone());
        }
    }
    Ok(by_key)
}

/// The batch's rooms named by name (by hand), by that name.
async fn rooms_by_name(
    conn: &impl ConnectionTrait,
    keys: &HashSet<&str>,
) -> Result<HashMap<String, room::Model>, DbErr> {
    let mut by_key = HashMap::new();
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
