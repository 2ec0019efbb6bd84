//! `roomcast seed-demo`: three users and a room of each kind, to try things with.

use entity::{room::RoomKind, user::Role};
use sea_orm::DatabaseConnection;

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
    for (name, kind, members) in [
        ("lobby", RoomKind::Public, vec![bob, carol]),
        ("team", RoomKind::Group, vec![bob]),
        ("alice-bob", RoomKind::Private, vec![bob]),
    ] {
        let room = match rooms::find(db, name).await? {
            Some(room) => room,
            None => rooms::create(db, name, kind, alice).await?,
        };
        for member in members {
            rooms::add_member(db, room.id, member).await?;
        }
    }
    println!(
        "demo users alice, bob, carol (password: {DEMO_PASSWORD}); rooms lobby, team, alice-bob"
    );
    Ok(())
}
