//! The store stage's steps, each on its own: judging as a table (no
//! database), and loading the context and allocating seqs on SQLite in
//! memory and on PostgreSQL (`TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432`; absent: fails under `CI=true`,
//! skips loudly otherwise).

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use entity::{message, room, room_member, user};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Set};
use uuid::Uuid;

use super::{
    batch::{RoomCache, allocate_seqs, load_context},
    judge::{Context, Incoming, Verdict, judge},
};
use crate::{
    broker::QueuedMessage,
    event::{Envelope, Reject},
};
use tokio_util::sync::CancellationToken;

fn incoming(room: &str, sender: Option<Uuid>, content: &str) -> Incoming {
    Incoming {
        index: 0,
        id: Uuid::now_v7(),
        created_at: Utc::now(),
        envelope: Envelope {
            id: None,
            room_id: room.to_owned(),
            sender_id: sender,
            content: content.to_owned(),
            client_id: None,
            created_at: None,
        },
        redelivered: false,
    }
}

/// The store stage's settings in these tests: a fixed key, the content limit.
fn settings() -> super::Settings {
    super::Settings {
        key: crate::signing::EnvelopeKey::derive(b"a secret of at least thirty-two bytes"),
        max_content_bytes: LIMIT,
    }
}

/// Stores `batch` as the store stage would, with a cache of its own.
async fn persist(db: &DatabaseConnection, batch: &[QueuedMessage]) -> super::Outcome {
    super::persist(
        db,
        batch,
        &settings(),
        &RoomCache::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("not stopped")
}

fn with(mut m: Incoming, change: impl FnOnce(&mut Incoming)) -> Incoming {
    change(&mut m);
    m
}

fn room_model(name: &str, kind: room::RoomKind) -> room::Model {
    room::Model {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        kind,
        owner_id: None,
        last_seq: 0,
        member_count: 0,
        created_at: Utc::now(),
    }
}

/// The content limit the tests judge with (`MAX_MESSAGE_BYTES`' default).
const LIMIT: usize = 4096;

/// The content limit is the one configured, whatever it is: ingest's
/// `MAX_MESSAGE_BYTES`, not a ceiling of the store stage's own.
#[test]
fn judge_takes_the_configured_limit() {
    let public = room_model("hall", room::RoomKind::Public);
    let mut ctx = Context::default();
    ctx.rooms.insert(public.id.to_string(), public.clone());
    let large = incoming(&public.id.to_string(), None, &"x".repeat(100_000));
    assert!(matches!(
        judge(&ctx, &large, 1_048_576),
        Ok(Verdict::Store(_))
    ));
    assert!(matches!(
        judge(&ctx, &large, 100_000),
        Ok(Verdict::Store(_))
    ));
    assert_eq!(
        judge(&ctx, &large, 99_999)
            .map_err(|(reason, _)| reason)
            .err(),
        Some(Reject::TooLarge)
    );
}

/// A room's events of one batch go in as many `room.events` messages as the
/// byte bound asks, each a valid batch, in `seq` order; an event larger than
/// the bound goes alone.
#[test]
fn room_batches_keep_under_the_byte_bound() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let event = |room_id, seq: i64, size: usize| super::StoredEvent {
        room_id,
        seq,
        event: format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(size)).into_bytes(),
    };
    // Room a: ten events of about 100 bytes, out of order; b: one of 1 000.
    let mut events: Vec<_> = (1..=10).rev().map(|seq| event(a, seq, 90)).collect();
    events.insert(3, event(b, 1, 1_000));
    let bound = 350;
    let batches = super::room_batches(&events, bound);
    let mut seqs: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for (room_id, bytes) in &batches {
        let frames = crate::event::room_frames(&bytes::Bytes::from(bytes.clone())).unwrap();
        assert!(
            bytes.len() <= bound || frames.len() == 1,
            "{} bytes in {} events",
            bytes.len(),
            frames.len()
        );
        for frame in frames {
            let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            seqs.entry(*room_id)
                .or_default()
                .push(v["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(seqs[&a], (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs[&b], vec![1]);
    assert_eq!(batches[0].0, a, "rooms in the order the batch names them");
    assert_eq!(
        batches.iter().filter(|(r, _)| *r == a).count(),
        4,
        "three events a message"
    );
    // Unbounded, one message a room.
    assert_eq!(super::room_batches(&events, usize::MAX).len(), 2);
}

/// A dead letter's detail is cut to a header's worth, on a character.
#[test]
fn reason_details_are_cut_short() {
    let long = "é".repeat(200_000);
    let cut = super::shorten(&long);
    assert_eq!(cut.chars().count(), super::DETAIL_CHARS + 1);
    assert!(cut.ends_with('…'));
    assert_eq!(super::shorten("short"), "short");
}

/// Every rule of `judge`, one row each: (message, expected verdict).
#[test]
fn judge_table() {
    let public = room_model("hall", room::RoomKind::Public);
    let group = room_model("crew", room::RoomKind::Group);
    let (member, outsider, ghost) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut ctx = Context::default();
    for r in [&public, &group] {
        ctx.rooms.insert(r.id.to_string(), r.clone());
        ctx.rooms.insert(r.name.clone(), r.clone());
    }
    ctx.names.insert(member, "member".into());
    ctx.names.insert(outsider, "outsider".into());
    ctx.memberships.insert((group.id, member));
    let stored = incoming(&public.id.to_string(), Some(member), "before");
    let stored_row = message::Model {
        id: stored.id,
        room_id: public.id,
        seq: 7,
        sender_id: Some(member),
        content: "before".into(),
        client_id: None,
        created_at: stored.created_at,
        edited_at: None,
        deleted_at: None,
        sender_deleted: false,
    };
    ctx.existing.insert(stored.id, stored_row.clone());
    let (p, g) = (public.id.to_string(), group.id.to_string());
    let big = "x".repeat(LIMIT + 1);
    let cases: Vec<(Incoming, Result<Option<Uuid>, Reject>)> = vec![
        (incoming(&p, Some(member), "hi"), Ok(Some(public.id))),
        (
            incoming(&p, Some(outsider), "public: anyone"),
            Ok(Some(public.id)),
        ),
        (incoming("hall", None, "by name"), Ok(Some(public.id))),
        (incoming(&g, Some(member), "member"), Ok(Some(group.id))),
        (incoming(&g, None, "console: no sender"), Ok(Some(group.id))),
        (incoming(&g, Some(outsider), "x"), Err(Reject::NotAMember)),
        (incoming(&p, Some(ghost), "x"), Err(Reject::UnknownSender)),
        (incoming("nowhere", None, "x"), Err(Reject::UnknownRoom)),
        (incoming(&p, None, " \n "), Err(Reject::EmptyContent)),
        (incoming(&p, None, "a\0b"), Err(Reject::InvalidText)),
        (incoming(&p, None, &big), Err(Reject::TooLarge)),
        (
            with(incoming(&p, None, "x"), |m| {
                m.envelope.client_id = Some("k".repeat(65))
            }),
            Err(Reject::InvalidField),
        ),
        (
            with(incoming(&p, None, "x"), |m| {
                m.envelope.client_id = Some(String::new())
            }),
            Err(Reject::InvalidField),
        ),
        (
            with(incoming(&p, None, "x"), |m| {
                m.created_at = "-5000-01-01T00:00:00Z".parse().unwrap()
            }),
            Err(Reject::InvalidField),
        ),
        (stored.clone(), Ok(None)),
    ];
    for (m, expected) in cases {
        let got = judge(&ctx, &m, LIMIT).map_err(|(reason, _)| reason);
        let what = format!("{:?} from {:?}", m.envelope.content, m.envelope.sender_id);
        match (got, expected) {
            (Ok(Verdict::Store(row)), Ok(Some(room))) => {
                assert_eq!((row.room_id, row.id, row.seq), (room, m.id, 0), "{what}");
                assert_eq!(row.content, m.envelope.content, "{what}");
                assert_eq!(row.sender_id, m.envelope.sender_id, "{what}");
            }
            (Ok(Verdict::Stored(row)), Ok(None)) => assert_eq!(row, &stored_row),
            (Err(got), Err(expected)) => assert_eq!(got, expected, "{what}"),
            (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }
}

/// A fresh migrated database; PostgreSQL ones are dropped when this goes.
struct TestDb {
    conn: DatabaseConnection,
    postgres: Option<(String, String)>,
}

impl TestDb {
    async fn sqlite() -> Self {
        let conn = Database::connect("sqlite::memory:").await.expect("sqlite");
        Migrator::up(&conn, None).await.expect("migrations");
        Self {
            conn,
            postgres: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let admin_url = format!("{base}/postgres");
        let admin = match Database::connect(&admin_url).await {
            Ok(admin) => admin,
            Err(err) if testsupport::in_ci() => {
                panic!("PostgreSQL is required in CI: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED: PostgreSQL not reachable at {admin_url} ({err})");
                return None;
            }
        };
        let run = std::env::var("ROOMCAST_TEST_RUN").unwrap_or_else(|_| "local".into());
        let name = format!("rc_{run}_{}", Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        admin.close().await.ok();
        let conn = Database::connect(format!("{base}/{name}"))
            .await
            .expect("connect");
        Migrator::up(&conn, None).await.expect("migrations");
        Some(Self {
            conn,
            postgres: Some((admin_url, name)),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = admin.execute_unprepared(&drop).await;
                    admin.close().await.ok();
                }
            });
        })
        .join();
    }
}

/// `mod <case> { sqlite, postgres }` tests that run `<case>(&DatabaseConnection)`.
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$case(&db.conn).await
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(db) = super::TestDb::postgres().await {
                    super::$case(&db.conn).await
                }
            }
        }
    )*};
}

on_both_databases!(
    seq_blocks_follow_last_seq,
    context_feeds_judge,
    a_refused_message_is_split_out,
    a_message_stored_before_is_not_stored_again,
    a_retry_from_a_sender_who_left_is_found_stored,
    small_and_large_batches_number_each_room_in_order,
    a_cached_room_deleted_since_is_unknown,
    a_cached_group_room_deleted_since_is_unknown,
);

async fn add_room(
    db: &DatabaseConnection,
    name: &str,
    kind: room::RoomKind,
    last_seq: i64,
) -> Uuid {
    let mut model = room_model(name, kind);
    model.last_seq = last_seq;
    let id = model.id;
    room::ActiveModel::from(model)
        .insert(db)
        .await
        .expect("room");
    id
}

async fn add_member(db: &DatabaseConnection, room_id: Uuid, user_id: Uuid) {
    let member = room_member::ActiveModel {
        room_id: Set(room_id),
        user_id: Set(user_id),
        joined_at: Set(Utc::now()),
    };
    member.insert(db).await.expect("member");
}

async fn add_user(db: &DatabaseConnection, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    user::ActiveModel {
        id: Set(id),
        username: Set(name.to_owned()),
        email: Set(format!("{name}@example.com")),
        password_hash: Set(None),
        role: Set(user::Role::User),
        avatar: Set(None),
        avatar_version: Set(0),
        created_at: Set(Utc::now()),
        token_generation: Set(0),
        kept_token: Set(None),
    }
    .insert(db)
    .await
    .expect("user");
    id
}

/// Each room's block starts after its `last_seq`, and `last_seq` moves to
/// the block's end; a second allocation continues from there.
async fn seq_blocks_follow_last_seq(db: &DatabaseConnection) {
    let a = add_room(db, "a", room::RoomKind::Public, 0).await;
    let b = add_room(db, "b", room::RoomKind::Group, 41).await;
    let untouched = add_room(db, "c", room::RoomKind::Public, 5).await;
    assert!(allocate_seqs(db, &HashMap::new()).await.unwrap().is_empty());
    let first = allocate_seqs(db, &HashMap::from([(a, 3), (b, 1)]))
        .await
        .unwrap();
    assert_eq!(first, HashMap::from([(a, 1), (b, 42)]));
    let second = allocate_seqs(db, &HashMap::from([(a, 2)])).await.unwrap();
    assert_eq!(second, HashMap::from([(a, 4)]));
    let last = |id| async move {
        room::Entity::find_by_id(id)
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .last_seq
    };
    assert_eq!(
        (last(a).await, last(b).await, last(untouched).await),
        (5, 42, 5)
    );
    // A room that no longer exists gets no block.
    let gone = allocate_seqs(db, &HashMap::from([(Uuid::now_v7(), 2)]))
        .await
        .unwrap();
    assert!(gone.is_empty());
}

/// The context read from the database is what judge needs: rooms by id and
/// by name, senders, memberships of closed rooms, stored messages. A sender
/// in several rooms has each membership, and only those of the batch's rooms.
async fn context_feeds_judge(db: &DatabaseConnection) {
    let hall = add_room(db, "Hall", room::RoomKind::Public, 0).await;
    let crew = add_room(db, "crew", room::RoomKind::Group, 0).await;
    let band = add_room(db, "band", room::RoomKind::Private, 0).await;
    let elsewhere = add_room(db, "elsewhere", room::RoomKind::Group, 0).await;
    let (alice, bob) = (add_user(db, "alice").await, add_user(db, "bob").await);
    let carol = add_user(db, "carol").await;
    for room in [crew, band, elsewhere] {
        add_member(db, room, alice).await;
    }
    add_member(db, elsewhere, carol).await;
    let old = incoming(&hall.to_string(), Some(bob), "old");
    message::ActiveModel {
        id: Set(old.id),
        room_id: Set(hall),
        seq: Set(1),
        sender_id: Set(Some(bob)),
        content: Set("old".into()),
        client_id: Set(None),
        created_at: Set(Utc::now()),
        edited_at: Set(None),
        deleted_at: Set(None),
        sender_deleted: Set(false),
    }
    .insert(db)
    .await
    .expect("message");
    let batch = vec![
        old.clone(),
        incoming("hall", Some(bob), "by name"),
        incoming(&crew.to_string(), Some(alice), "member"),
        incoming(&crew.to_string(), Some(bob), "outsider"),
        incoming(&crew.to_string(), Some(Uuid::now_v7()), "nobody"),
        incoming("nowhere", None, "lost"),
        incoming(&band.to_string(), Some(alice), "member of two"),
        incoming(&band.to_string(), Some(carol), "member elsewhere"),
    ];
    let ctx = load_context(db, &batch, &RoomCache::default(), true)
        .await
        .unwrap();
    let verdicts: Vec<Result<&str, Reject>> = batch
        .iter()
        .map(|m| {
            judge(&ctx, m, LIMIT).map_err(|(r, _)| r).map(|v| match v {
                Verdict::Stored(_) => "stored",
                Verdict::Store(_) => "store",
            })
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            Ok("stored"),
            Ok("store"),
            Ok("store"),
            Err(Reject::NotAMember),
            Err(Reject::UnknownSender),
            Err(Reject::UnknownRoom),
            Ok("store"),
            Err(Reject::NotAMember),
        ]
    );
    assert_eq!(ctx.names.get(&bob).map(String::as_str), Some("bob"));
    assert_eq!(ctx.names.get(&alice).map(String::as_str), Some("alice"));
    assert_eq!(
        ctx.memberships,
        HashSet::from([(crew, alice), (band, alice)])
    );
}

struct NoSettle;

#[async_trait::async_trait]
impl crate::broker::Settle for NoSettle {
    async fn ack(self: Box<Self>) -> Result<(), crate::BrokerError> {
        Ok(())
    }
}

/// A message the database refuses for a reason no check foresaw (here a
/// rule added to the table) is found by splitting its batch and rejected
/// alone; the others are stored and their events keep batch order.
async fn a_refused_message_is_split_out(db: &DatabaseConnection) {
    let refuse = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => {
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.content = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
        }
        _ => "ALTER TABLE messages ADD CONSTRAINT poison CHECK (content <> 'poison')",
    };
    db.execute_unprepared(refuse)
        .await
        .expect("the refusing rule");
    let hall = add_room(db, "hall", room::RoomKind::Public, 0).await;
    let contents = ["a", "b", "poison", "c", "d", "e", "poison", "f"];
    let batch: Vec<QueuedMessage> = contents
        .iter()
        .map(|content| {
            let body = serde_json::json!({"room_id": hall, "content": content});
            QueuedMessage::new(body.to_string().into(), None, false, Box::new(NoSettle))
        })
        .collect();
    let outcome = persist(db, &batch).await;
    let refused: Vec<(usize, Reject)> = outcome.rejected.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(refused, [(2, Reject::Refused), (6, Reject::Refused)]);
    assert!(outcome.rejected[0].2.as_deref().unwrap().contains("poison"));
    let delivered: Vec<(String, i64)> = outcome
        .events
        .iter()
        .map(|stored| {
            let event: serde_json::Value = serde_json::from_slice(&stored.event).unwrap();
            (
                event["content"].as_str().unwrap().to_owned(),
                event["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .zip(1..)
        .map(|(c, seq)| ((*c).to_owned(), seq))
        .collect();
    assert_eq!(delivered, expected, "gap-free seqs in batch order");
}

/// A message met again that the broker does not flag as redelivered (a
/// client's retry, a copy published by hand) is found by the insert: it is
/// not stored twice, its event comes again with its first `seq`, and the
/// rest of its batch is stored with gap-free seqs. Flagged, it is looked up
/// before the insert, with the same outcome.
async fn a_message_stored_before_is_not_stored_again(db: &DatabaseConnection) {
    let hall = add_room(db, "hall", room::RoomKind::Public, 0).await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let queued = |i: usize, redelivered: bool| {
        let body = serde_json::json!({"id": ids[i], "room_id": hall, "content": format!("m{i}")});
        QueuedMessage::new(
            body.to_string().into(),
            None,
            redelivered,
            Box::new(NoSettle),
        )
    };
    let settings = settings();
    let settings = &settings;
    let stored = |batch: Vec<QueuedMessage>| async move {
        let outcome = super::persist(
            db,
            &batch,
            settings,
            &Default::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("not stopped");
        assert!(outcome.rejected.is_empty(), "nothing is rejected");
        outcome
            .events
            .iter()
            .map(|e| {
                let event: serde_json::Value = serde_json::from_slice(&e.event).unwrap();
                (event["content"].as_str().unwrap().to_owned(), e.seq)
            })
            .collect::<Vec<_>>()
    };
    let m = |i: usize, seq: i64| (format!("m{i}"), seq);
    assert_eq!(
        stored(vec![queued(0, false), queued(1, false)]).await,
        [m(0, 1), m(1, 2)]
    );
    assert_eq!(
        stored(vec![queued(2, false), queued(1, false)]).await,
        [m(2, 3), m(1, 2)]
    );
    assert_eq!(
        stored(vec![queued(0, true), queued(3, true)]).await,
        [m(0, 1), m(3, 4)]
    );
    let rows = message::Entity::find().all(db).await.unwrap();
    assert_eq!(rows.len(), 4, "each message stored once");
    let last_seq = room::Entity::find_by_id(hall)
        .one(db)
        .await
        .unwrap()
        .unwrap()
        .last_seq;
    assert_eq!(last_seq, 4, "no seq was lost to the retried try");
}

/// A batch small enough for one statement (on PostgreSQL, seqs and rows in
/// one round trip) and one too large for it (seqs, then the rows in several
/// inserts) both number each room's messages in batch order, gap-free,
/// following on from the room's last seq.
async fn small_and_large_batches_number_each_room_in_order(db: &DatabaseConnection) {
    let (a, b) = (
        add_room(db, "a", room::RoomKind::Public, 0).await,
        add_room(db, "b", room::RoomKind::Public, 10).await,
    );
    let settings = settings();
    let mut expected: HashMap<Uuid, i64> = HashMap::from([(a, 0), (b, 10)]);
    // 6 short messages (one statement), then enough of 4 000 bytes to pass
    // the size of one statement (several).
    let large = super::insert::STATEMENT_BYTES / 4000 + 20;
    for (count, size) in [(6, 10), (large, 4000)] {
        let batch: Vec<QueuedMessage> = (0..count)
            .map(|i| {
                let room = if i % 3 == 0 { b } else { a };
                let content = format!("{i:0>size$}");
                let body = serde_json::json!({"room_id": room, "content": content});
                QueuedMessage::new(body.to_string().into(), None, false, Box::new(NoSettle))
            })
            .collect();
        let outcome = super::persist(
            db,
            &batch,
            &settings,
            &Default::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("not stopped");
        assert!(outcome.rejected.is_empty());
        assert_eq!(outcome.events.len(), count);
        for (i, stored) in outcome.events.iter().enumerate() {
            let room = if i % 3 == 0 { b } else { a };
            let next = expected.get_mut(&room).unwrap();
            *next += 1;
            assert_eq!(
                (stored.room_id, stored.seq),
                (room, *next),
                "message {i} of {count}"
            );
        }
    }
    let last = |id| async move {
        let room = room::Entity::find_by_id(id).one(db).await.unwrap().unwrap();
        room.last_seq
    };
    assert_eq!((last(a).await, last(b).await), (expected[&a], expected[&b]));
    let rows = message::Entity::find().all(db).await.unwrap();
    assert_eq!(rows.len(), 6 + large);
}

/// The store stage keeps the rooms it has read; a room deleted since is
/// found out when its seqs are taken: its message is rejected
/// `unknown_room` (not refused by the database, nor a panic), and the room
/// is forgotten.
async fn a_cached_room_deleted_since_is_unknown(db: &DatabaseConnection) {
    let hall = add_room(db, "hall", room::RoomKind::Public, 0).await;
    let body = serde_json::json!({"room_id": hall, "content": "hi"}).to_string();
    refused_once_deleted(db, hall, &body, None).await;
}

/// A cached group room deleted since: its members went with it, so the
/// cached room would make the sender a non-member; the pass that follows a
/// refusal reads its rooms afresh, finds it gone: `unknown_room`, forgotten.
async fn a_cached_group_room_deleted_since_is_unknown(db: &DatabaseConnection) {
    let crew = add_room(db, "crew", room::RoomKind::Group, 0).await;
    let bob = add_user(db, "bob").await;
    add_member(db, crew, bob).await;
    let body = serde_json::json!({"room_id": crew, "sender_id": bob, "content": "hi"});
    let body = body.to_string();
    let signature = settings().key.sign(body.as_bytes());
    refused_once_deleted(db, crew, &body, Some(signature)).await;
}

/// Stores `body` in `room` (kept in the cache), deletes the room, then
/// stores it twice more with the same cache: each time `unknown_room`,
/// nothing stored, the room forgotten.
async fn refused_once_deleted(
    db: &DatabaseConnection,
    room_id: Uuid,
    body: &str,
    signature: Option<String>,
) {
    let (settings, rooms, stop) = (settings(), RoomCache::default(), CancellationToken::new());
    let batch = || {
        let payload = body.to_owned().into();
        let message = QueuedMessage::new(payload, signature.clone(), false, Box::new(NoSettle));
        vec![message]
    };
    let first = super::persist(db, &batch(), &settings, &rooms, &stop)
        .await
        .unwrap();
    assert_eq!(first.events.len(), 1);
    assert!(rooms.contains(room_id), "kept after the first read");
    room::Entity::delete_by_id(room_id)
        .exec(db)
        .await
        .expect("deleted");
    for _ in 0..2 {
        let again = super::persist(db, &batch(), &settings, &rooms, &stop)
            .await
            .unwrap();
        let refused: Vec<Reject> = again.rejected.iter().map(|r| r.1).collect();
        assert_eq!(refused, [Reject::UnknownRoom]);
        assert!(again.events.is_empty());
        assert!(!rooms.contains(room_id), "forgotten");
    }
}

/// A retry (same id, not flagged redelivered) from a sender who has left
/// the group room since it was stored is found stored and its event sent
/// again, not dead-lettered `not_a_member`.
async fn a_retry_from_a_sender_who_left_is_found_stored(db: &DatabaseConnection) {
    let settings = &settings();
    let crew = add_room(db, "crew", room::RoomKind::Group, 0).await;
    let bob = add_user(db, "bob").await;
    add_member(db, crew, bob).await;
    let by_bob =
        serde_json::json!({"id": Uuid::now_v7(), "room_id": crew, "sender_id": bob, "content": "bob's"})
            .to_string();
    let signed = || {
        let signature = settings.key.sign(by_bob.as_bytes());
        QueuedMessage::new(
            by_bob.clone().into(),
            Some(signature),
            false,
            Box::new(NoSettle),
        )
    };
    let (rooms, stop) = (RoomCache::default(), CancellationToken::new());
    let store = async || {
        let outcome = super::persist(db, &[signed()], settings, &rooms, &stop).await;
        let outcome = outcome.expect("not stopped");
        let refused: Vec<Reject> = outcome.rejected.iter().map(|r| r.1).collect();
        (
            outcome.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            refused,
        )
    };
    assert_eq!(store().await, (vec![1], vec![]), "stored");
    room_member::Entity::delete_many()
        .exec(db)
        .await
        .expect("bob leaves");
    let again = store().await;
    assert_eq!(again, (vec![1], vec![]), "found stored, not refused");
}

/// A broker that counts the `room.events` messages published through it,
/// and refuses the first `refusals` batches of events.
struct Counting {
    inner: std::sync::Arc<dyn crate::Broker>,
    published: std::sync::Mutex<Vec<Uuid>>,
    refusals: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::Broker for Counting {
    async fn publish_message(&self, m: &[u8], s: Option<&str>) -> Result<(), crate::BrokerError> {
        self.inner.publish_message(m, s).await
    }
    async fn dead_letter(&self, m: &[u8], reason: &str) -> Result<(), crate::BrokerError> {
        self.inner.dead_letter(m, reason).await
    }
    async fn publish_event(&self, room_id: Uuid, event: &[u8]) -> Result<(), crate::BrokerError> {
        self.published.lock().unwrap().push(room_id);
        self.inner.publish_event(room_id, event).await
    }
    async fn publish_events(&self, events: &[(Uuid, Vec<u8>)]) -> Result<(), crate::BrokerError> {
        use std::sync::atomic::Ordering;
        let refuse = self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refuse.is_ok() {
            return Err(crate::BrokerError::Nacked);
        }
        let rooms = events.iter().map(|(room_id, _)| *room_id);
        self.published.lock().unwrap().extend(rooms);
        self.inner.publish_events(events).await
    }
    async fn publish_user_event(&self, user: Uuid, event: &[u8]) -> Result<(), crate::BrokerError> {
        self.inner.publish_user_event(user, event).await
    }
    fn consume_messages(&self, prefetch: u16) -> crate::broker::BoxStream<QueuedMessage> {
        self.inner.consume_messages(prefetch)
    }
    fn subscribe_events(
        &self,
        rooms: crate::broker::Rooms,
    ) -> crate::broker::BoxStream<bytes::Bytes> {
        self.inner.subscribe_events(rooms)
    }
    fn status(&self) -> crate::BrokerStatus {
        self.inner.status()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// Two nodes' brokers on one broker: the in-process one (shared), or two
/// RabbitMQ connections on a vhost of their own. `None`: RabbitMQ is absent
/// outside CI (skipped).
async fn two_nodes(
    amqp: bool,
) -> Option<(
    Option<testsupport::TestVhost>,
    [std::sync::Arc<dyn crate::Broker>; 2],
)> {
    use crate::broker::{amqp::AmqpBroker, memory::MemoryBroker};
    if !amqp {
        let broker: std::sync::Arc<dyn crate::Broker> = std::sync::Arc::new(MemoryBroker::new());
        return Some((None, [broker.clone(), broker]));
    }
    let vhost = testsupport::TestVhost::new().await?;
    let a = AmqpBroker::start(&vhost.amqp_url, "a").await;
    let b = AmqpBroker::start(&vhost.amqp_url, "b").await;
    Some((
        Some(vhost),
        [std::sync::Arc::new(a), std::sync::Arc::new(b)],
    ))
}

/// A batch of N messages to one room (and a few to another) is one
/// `room.events` message per room, and every node's sockets of the room get
/// the N in `seq` order, each once. SQLite with the in-process broker,
/// PostgreSQL with RabbitMQ.
async fn a_batch_is_one_event_message_per_room(db: &DatabaseConnection, amqp: bool) {
    use std::time::Duration;
    let Some((vhost, nodes)) = two_nodes(amqp).await else {
        return;
    };
    let (hall, side) = (
        add_room(db, "hall", room::RoomKind::Public, 0).await,
        add_room(db, "side", room::RoomKind::Public, 0).await,
    );
    let stop = CancellationToken::new();
    let mut sockets = Vec::new();
    for broker in &nodes {
        let hub = crate::Hub::new();
        sockets.push(hub.subscribe(hall, Uuid::new_v4()));
        tokio::spawn(crate::delivery::run(broker.clone(), hub, stop.clone()));
    }
    // Until each node's event queue is bound, probe (a kind sockets pass on).
    let probe = format!(r#"{{"type":"probe","room_id":"{hall}"}}"#);
    for socket in &mut sockets {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let _ = nodes[0].publish_event(hall, probe.as_bytes()).await;
                let got = tokio::time::timeout(Duration::from_millis(200), socket.events.recv());
                if let Ok(Some(_)) = got.await {
                    return;
                }
            }
        })
        .await
        .expect("event queues bound");
    }
    let n = 50;
    let batch: Vec<QueuedMessage> = (0..n + 3)
        .map(|i| {
            let room = if i % 20 == 7 { side } else { hall };
            let body = serde_json::json!({"room_id": room, "content": format!("m{i}")});
            QueuedMessage::new(body.to_string().into(), None, false, Box::new(NoSettle))
        })
        .collect();
    let settings = settings();
    let outcome = super::persist(db, &batch, &settings, &Default::default(), &stop)
        .await
        .expect("stored");
    let counting = Counting {
        inner: nodes[0].clone(),
        published: Default::default(),
        refusals: Default::default(),
    };
    super::settle(&counting, batch, outcome, &stop).await;
    assert_eq!(
        *counting.published.lock().unwrap(),
        [hall, side],
        "one room.events message per room"
    );
    for (node, socket) in sockets.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let got = tokio::time::timeout(Duration::from_secs(15), socket.events.recv())
                .await
                .unwrap_or_else(|_| panic!("node {node}: only {seqs:?}"))
                .expect("subscribed");
            seqs.extend(got.seq);
        }
        assert_eq!(seqs, (1..=n as i64).collect::<Vec<_>>(), "node {node}");
        let more = tokio::time::timeout(Duration::from_millis(300), socket.events.recv()).await;
        assert!(more.is_err(), "node {node}: more than the batch");
    }
    stop.cancel();
    for broker in &nodes {
        broker.close().await;
    }
    drop(vhost);
}

mod a_batch_is_one_event_message_per_room {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_memory() {
        let db = super::TestDb::sqlite().await;
        super::a_batch_is_one_event_message_per_room(&db.conn, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_amqp() {
        if let Some(db) = super::TestDb::postgres().await {
            super::a_batch_is_one_event_message_per_room(&db.conn, true).await
        }
    }
}

/// A batch whose events the broker refuses (the link still up) is settled
/// again until the broker takes them: its event is published, it is stored
/// once, and `messages` is empty after. Before, it stayed unacked for as
/// long as the channel lived, and its event never came. PostgreSQL and
/// RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_settle_is_tried_again() {
    use crate::Broker;
    use std::{sync::Arc, time::Duration};
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Some(vhost) = testsupport::TestVhost::new().await else {
        return;
    };
    let db = &db.conn;
    let hall = add_room(db, "hall", room::RoomKind::Public, 0).await;
    let inner: Arc<dyn Broker> =
        Arc::new(crate::broker::amqp::AmqpBroker::start(&vhost.amqp_url, "a").await);
    let broker = Arc::new(Counting {
        inner: inner.clone(),
        published: Default::default(),
        refusals: 1.into(),
    });
    // With its id, as ingest gives one.
    let body =
        serde_json::json!({"id": Uuid::now_v7(), "room_id": hall, "content": "refused once"});
    broker
        .publish(body.to_string().as_bytes())
        .await
        .expect("published");
    let settings = settings();
    let stop = CancellationToken::new();
    let stage = tokio::spawn(super::run(
        db.clone(),
        broker.clone(),
        settings,
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(15), async {
        while broker.published.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the refused events were published on a later try");
    assert_eq!(*broker.published.lock().unwrap(), [hall]);
    assert_eq!(broker.refusals.load(std::sync::atomic::Ordering::SeqCst), 0);
    let rows = message::Entity::find().all(db).await.unwrap();
    assert_eq!(rows.len(), 1, "stored once");
    let queue = format!("/api/queues/{}/messages", testsupport::enc(&vhost.name));
    tokio::time::timeout(Duration::from_secs(15), async {
        // The management API's counts lag behind the broker.
        while vhost.get(&queue).await["messages"] != 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("messages is empty: the batch was acked after the second try");
    stop.cancel();
    let _ = stage.await;
    inner.close().await;
}
