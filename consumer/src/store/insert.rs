//! Inserting a batch's new rows: one statement shape per backend, and on
//! PostgreSQL, for a batch that fits one statement, the seqs and the rows in
//! one round trip ([`write_at_once`]).

use std::collections::HashMap;

use entity::message;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, Set, Statement, Value,
    sea_query::{ArrayType, OnConflict},
};
use uuid::Uuid;

/// Largest estimated payload of one insert statement sent to PostgreSQL: a
/// batch under it is written in one round trip ([`write_at_once`]), a larger
/// one in statements of about this size. Only a bound on one statement's
/// size: the database driver turns Nagle's algorithm off on its TCP
/// connections (from 0.9.1 on). Before that, a statement too big for one
/// write waited for the server's delayed ACK of the first part, 40 ms, and
/// this was 6 KiB.
pub(super) const STATEMENT_BYTES: usize = 1024 * 1024;

/// Inserts a batch's new messages but those whose id is stored already;
/// returns how many it inserted.
///
/// On PostgreSQL, `INSERT … SELECT FROM UNNEST(…)` with an array per column:
/// seven parameters whatever the number of rows, so the statement is parsed
/// and planned once per connection; as many statements as
/// [`STATEMENT_BYTES`] asks. SQLite, in-process, takes a plain multi-row
/// insert.
pub(super) async fn insert_rows(
    txn: &DatabaseTransaction,
    rows: &[message::Model],
) -> Result<u64, DbErr> {
    let mut inserted = 0;
    if txn.get_database_backend() != DbBackend::Postgres {
        let stored_before = OnConflict::column(message::Column::Id)
            .do_nothing()
            .to_owned();
        for chunk in rows.chunks(500) {
            inserted += message::Entity::insert_many(chunk.iter().map(to_active))
                .on_conflict(stored_before.clone())
                .exec_without_returning(txn)
                .await?;
        }
        return Ok(inserted);
    }
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        let mut bytes = size(&rows[start]);
        while end < rows.len() && bytes + size(&rows[end]) <= STATEMENT_BYTES {
            bytes += size(&rows[end]);
            end += 1;
        }
        inserted += insert_unnest(txn, &rows[start..end]).await?;
        start = end;
    }
    Ok(inserted)
}

/// On PostgreSQL, when the rows fit one statement ([`STATEMENT_BYTES`]):
/// takes each room's block of seqs and inserts the rows, numbered in their
/// order within their room, in one statement (a data-modifying `WITH`), in
/// place of [`allocate_seqs`](super::batch::allocate_seqs) and
/// [`insert_rows`]: one round trip instead of two, which at a steady rate is
/// a third of a batch's. Returns each room's first seq (a room that no
/// longer exists has none, and its rows are not inserted) and how many rows
/// went in (fewer: one was stored before). `None`: not PostgreSQL, or too
/// large; take the two steps.
pub(super) async fn write_at_once(
    txn: &DatabaseTransaction,
    rows: &[&message::Model],
) -> Result<Option<(HashMap<Uuid, i64>, u64)>, DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres
        || rows.is_empty()
        || rows.iter().map(|m| size(m)).sum::<usize>() > STATEMENT_BYTES
    {
        return Ok(None);
    }
    let mut counts: HashMap<Uuid, i64> = HashMap::new();
    let ordinals: Vec<i64> = rows
        .iter()
        .map(|m| {
            let n = counts.entry(m.room_id).or_default();
            *n += 1;
            *n
        })
        .collect();
    let (room_ids, room_counts): (Vec<Value>, Vec<Value>) = counts
        .iter()
        .map(|(id, n)| (Value::Uuid(Some(*id)), Value::BigInt(Some(*n))))
        .unzip();
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH blocks AS ( \
           UPDATE rooms SET last_seq = rooms.last_seq + b.n \
           FROM UNNEST($1::uuid[], $2::int8[]) AS b(id, n) WHERE rooms.id = b.id \
           RETURNING rooms.id, rooms.last_seq - b.n AS base), \
         inserted AS ( \
           INSERT INTO messages (id, room_id, seq, sender_id, content, client_id, created_at) \
           SELECT x.i, x.r, blocks.base + x.o, NULLIF(x.u, '')::uuid, x.c, NULLIF(x.k, ''), x.t \
           FROM UNNEST($3::uuid[], $4::uuid[], $5::int8[], $6::text[], $7::text[], $8::text[], \
             $9::timestamptz[]) AS x(i, r, o, u, c, k, t) \
           JOIN blocks ON blocks.id = x.r \
           ON CONFLICT (id) DO NOTHING RETURNING 1) \
         SELECT blocks.id, blocks.base + 1 AS first, (SELECT count(*) FROM inserted) AS inserted FROM blocks",
        {
            let ordinals = ordinals
                .into_iter()
                .map(|o| Value::BigInt(Some(o)))
                .collect();
            let mut values = vec![
                array(ArrayType::Uuid, room_ids),
                array(ArrayType::BigInt, room_counts),
            ];
            values.extend(row_arrays(rows, ordinals));
            values
        },
    );
    let mut first_seqs = HashMap::new();
    let mut inserted = 0;
    for row in txn.query_all_raw(statement).await? {
        first_seqs.insert(
            row.try_get::<Uuid>("", "id")?,
            row.try_get::<i64>("", "first")?,
        );
        inserted = u64::try_from(row.try_get::<i64>("", "inserted")?).unwrap_or_default();
    }
    Ok(Some((first_seqs, inserted)))
}

/// The rows as the seven arrays both statements take: id, room, `third`
/// (seqs, or numbers within the room), sender, content, client id, time.
fn row_arrays<M: std::borrow::Borrow<message::Model>>(rows: &[M], third: Vec<Value>) -> Vec<Value> {
    let column = |f: fn(&message::Model) -> Value| -> Vec<Value> {
        rows.iter().map(|m| f(m.borrow())).collect()
    };
    vec![
        array(ArrayType::Uuid, column(|m| Value::Uuid(Some(m.id)))),
        array(ArrayType::Uuid, column(|m| Value::Uuid(Some(m.room_id)))),
        array(ArrayType::BigInt, third),
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
    ]
}

fn array(ty: ArrayType, values: Vec<Value>) -> Value {
    Value::Array(ty, Some(Box::new(values)))
}

/// Array elements cannot be NULL through the driver: the optional columns
/// travel as text, '' for none.
fn text(s: Option<String>) -> Value {
    Value::String(Some(s.unwrap_or_default()))
}

/// A row's estimated share of a statement: ids, room, seq, sender, time and
/// the arrays' per-element headers, and its text.
fn size(m: &message::Model) -> usize {
    100 + m.content.len() + m.client_id.as_ref().map_or(0, String::len)
}

/// One `INSERT … SELECT FROM UNNEST(…)` of `rows` (PostgreSQL); how many
/// it inserted.
async fn insert_unnest(txn: &DatabaseTransaction, rows: &[message::Model]) -> Result<u64, DbErr> {
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        // Array elements cannot be NULL through the driver: the optional
        // columns travel as text, '' for none.
        "INSERT INTO messages (id, room_id, seq, sender_id, content, client_id, created_at) \
         SELECT i, r, s, NULLIF(u, '')::uuid, c, NULLIF(k, ''), t \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], \
         $6::text[], $7::timestamptz[]) AS x(i, r, s, u, c, k, t) \
         ON CONFLICT (id) DO NOTHING",
        row_arrays(
            rows,
            rows.iter().map(|m| Value::BigInt(Some(m.seq))).collect(),
        ),
    );
    Ok(txn.execute_raw(statement).await?.rows_affected())
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
