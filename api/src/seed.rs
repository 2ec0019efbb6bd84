//! `roomcast seed-demo`: three users and a room of each kind with a few
//! messages, to try things with (the API docs' examples use them).

use chrono::Utc;
use consumer::event::message_id;
use entity::{message, room, room::RoomKind, user::Role};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set, TransactionTrait,
    sea_query::Expr,
};
use uuid::Uuid;

use crate::{
    auth::password,
    queries::{rooms, users},
};

pub const DEMO_PASSWORD: &str = "demo-password";
const DEMO_USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Creates what is missing; running it twice changes nothing.
pub async fn seed_demo(db: &DatabaseConnection) -> anyhow::Result<()> {
    let hash = password::hash(DEMO_PASSWORD.into())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.detail))?;
    let mut ids = Vec::new();
    for name in DEMO_USERS {
        let user = match users::find_by_username(db, name).await? {
            Some(user) => user,
            None => {
                users::create(
                    db,
                    users::NewUser {
                        username: name.into(),
                        email: format!("{name}@example.com"),
                        password_hash: Some(hash.clone()),
                        role: Role::User,
                    },
                )
                .await?
            }
        };
        ids.push(user.id);
    }
    let (alice, bob, carol) = (ids[0], ids[1], ids[2]);
    for (name, kind, members, lines) in [
        (
            "lobby",
            RoomKind::Public,
            vec![bob, carol],
            vec![
                (
                    alice,
                    "Welcome to the lobby! Everyone signed in can read and post here.",
                ),
                (bob, "Hi all, bob here."),
                (
                    carol,
                    "Hello! Try the API docs at /docs: the examples use this room.",
                ),
            ],
        ),
        (
            "team",
            RoomKind::Group,
            vec![bob],
            vec![
                (alice, "This group is invite-only: alice added bob."),
                (
                    bob,
                    "Thanks! Carol cannot read this until someone adds her.",
                ),
            ],
        ),
        (
            "alice-bob",
            RoomKind::Private,
            vec![bob],
            vec![
                (alice, "A private room: just the two of us."),
                (bob, "And nobody else can join it."),
            ],
        ),
    ] {
        let room = match rooms::find(db, name).await? {
            Some(room) => room,
            None => rooms::create(db, name, kind, alice).await?,
        };
        for member in members {
            rooms::add_member(db, room.id, member).await?;
        }
        seed_messages(db, room.id, &lines).await?;
    }
    println!(
        "demo users alice, bob, carol (password: {DEMO_PASSWORD}); rooms lobby, team, alice-bob, with a few \
            messages each"
    );
    Ok(())
}

/// Writes `lines` as a room's first messages, unless it has messages
/// already. The store stage is not involved (the server need not run), so
/// the room's `seq` is taken here: only from 0, in one transaction with the
/// rows, so a server storing into the room at the same moment either went
/// first (and the room is left as it is) or goes after.
async fn seed_messages(
    db: &DatabaseConnection,
    room_id: Uuid,
    lines: &[(Uuid, &str)],
) -> anyhow::Result<()> {
    let txn = db.begin().await?;
    let claimed = room::Entity::update_many()
        .col_expr(room::Column::LastSeq, Expr::value(lines.len() as i64))
        .filter(room::Column::Id.eq(room_id))
        .filter(room::Column::LastSeq.eq(0))
        .exec(&txn)
        .await?;
    if claimed.rows_affected == 0 {
        return Ok(()); // dropping the transaction rolls it back
    }
    let start = Utc::now() - chrono::Duration::minutes(lines.len() as i64);
    let rows = lines.iter().enumerate().map(|(i, (sender, content))| {
        let client_id = format!("seed-demo-{i}");
        message::ActiveModel {
            id: Set(message_id(Some(*sender), room_id, Some(&client_id))),
            room_id: Set(room_id),
            seq: Set(i as i64 + 1),
            sender_id: Set(Some(*sender)),
            content: Set((*content).to_owned()),
            client_id: Set(Some(client_id)),
            created_at: Set(start + chrono::Duration::minutes(i as i64)),
            edited_at: Set(None),
            deleted_at: Set(None),
            sender_deleted: Set(false),
        }
    });
    message::Entity::insert_many(rows)
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}
