//! Rooms and their members, and the two-member rule of private rooms.
//!
//! The rule holds under any concurrency, across processes: a seat is taken by
//! one conditional `UPDATE rooms SET member_count = member_count + 1 WHERE …
//! (kind <> 'private' OR member_count < 2)`. PostgreSQL row-locks the room and
//! re-checks the condition after a concurrent writer commits; SQLite has one
//! writer at a time. A CHECK constraint on `rooms` refuses a third member even
//! if some future code path forgot this.

use chrono::Utc;
use entity::{
    room::{self, RoomKind},
    room_member, user,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait, Set, TransactionSession, TransactionTrait,
    sea_query::{Expr, ExprTrait, Func, LikeExpr, Query},
};
use serde::Serialize;
use uuid::Uuid;

use super::{QueryError, is_unique_violation, like_pattern};

/// Outcome of adding a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    AlreadyMember,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
    "user_id": "0190d1a2-4b5d-7a10-9c00-0000000000b0", "username": "bob",
    "avatar_url": "/users/0190d1a2-4b5d-7a10-9c00-0000000000b0/avatar?v=0", "joined_at": "2025-06-01T09:32:00Z"
}))]
pub struct Member {
    pub user_id: Uuid,
    pub username: String,
    /// The avatar's versioned URL.
    pub avatar_url: String,
    pub joined_at: chrono::DateTime<Utc>,
}

/// Finds a room by its UUID or, failing that, by name (ignoring case).
pub async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<room::Model>, QueryError> {
    if key.contains('\0') {
        return Ok(None); // no name holds NUL, and databases refuse it
    }
    if let Ok(id) = Uuid::parse_str(key) {
        return Ok(room::Entity::find_by_id(id).one(db).await?);
    }
    Ok(room::Entity::find()
        .filter(
            Expr::expr(Func::lower(Expr::col(room::Column::Name)))
                .eq(Expr::val(key.to_lowercase())),
        )
        .one(db)
        .await?)
}

/// Like [`find`], but 404 when absent.
pub async fn get(db: &impl ConnectionTrait, key: &str) -> Result<room::Model, QueryError> {
    find(db, key)
        .await?
        .ok_or_else(|| QueryError::NotFound("room"))
}

pub async fn is_member(
    db: &impl ConnectionTrait,
    room_id: Uuid,
    user_id: Uuid,
) -> Result<bool, QueryError> {
    Ok(room_member::Entity::find_by_id((room_id, user_id))
        .one(db)
        .await?
        .is_some())
}

/// Creates a room owned by `owner`, who becomes its first member.
pub async fn create(
    db: &(impl ConnectionTrait + TransactionTrait),
    name: &str,
    kind: RoomKind,
    owner: Uuid,
) -> Result<room::Model, QueryError> {
    if find(db, name).await?.is_some() {
        return Err(QueryError::RoomNameTaken);
    }
    let now = Utc::now();
    let txn = db.begin().await?;
    let room = room::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.to_owned()),
        kind: Set(kind),
        owner_id: Set(Some(owner)),
        last_seq: Set(0),
        member_count: Set(1),
        created_at: Set(now),
    }
    .insert(&txn)
    .await;
    let room = match room {
        Ok(room) => room,
        Err(err) if is_unique_violation(&err) => {
            return Err(QueryError::RoomNameTaken);
        }
        Err(err) => return Err(err.into()),
    };
    room_member::ActiveModel {
        room_id: Set(room.id),
        user_id: Set(owner),
        joined_at: Set(now),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(room)
}

/// Makes `user_id` a member; [`QueryError::RoomFull`] if the room is private and has two.
pub async fn add_member(
    db: &(impl ConnectionTrait + TransactionTrait),
    room_id: Uuid,
    user_id: Uuid,
) -> Result<Added, QueryError> {
    if is_member(db, room_id, user_id).await? {
        return Ok(Added::AlreadyMember);
    }
    let txn = db.begin().await?;
    let seat = room::Entity::update_many()
        .col_expr(
            room::Column::MemberCount,
            Expr::col(room::Column::MemberCount).add(1),
        )
        .filter(room::Column::Id.eq(room_id))
        .filter(
            room::Column::Kind
                .ne(RoomKind::Private)
                .or(room::Column::MemberCount.lt(2)),
        )
        .exec(&txn)
        .await;
    match seat {
        Ok(result) if result.rows_affected == 1 => {}
        Ok(_) => return Err(QueryError::RoomFull),
        // The CHECK constraint caught what the condition should have.
        Err(err) if err.to_string().to_lowercase().contains("check constraint") => {
            return Err(QueryError::RoomFull);
        }
        Err(err) => return Err(err.into()),
    }
    let inserted = room_member::ActiveModel {
        room_id: Set(room_id),
        user_id: Set(user_id),
        joined_at: Set(Utc::now()),
    }
    .insert(&txn)
    .await;
    match inserted {
        Ok(_) => {
            txn.commit().await?;
            Ok(Added::Added)
        }
        // The same user joined concurrently: their seat stands, ours rolls back.
        Err(err) if is_unique_violation(&err) => Ok(Added::AlreadyMember),
        // The user (or the room) was deleted meanwhile.
        Err(err) if super::is_foreign_key_violation(&err) => {
            Err(QueryError::NotFound("user or room"))
        }
        Err(err) => Err(err.into()),
    }
}

/// Removes a member; true if they were one.
pub async fn remove_member(
    db: &(impl ConnectionTrait + TransactionTrait),
    room_id: Uuid,
    user_id: Uuid,
) -> Result<bool, QueryError> {
    let txn = db.begin().await?;
    let deleted = room_member::Entity::delete_by_id((room_id, user_id))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 1 {
        room::Entity::update_many()
            .col_expr(
                room::Column::MemberCount,
                Expr::col(room::Column::MemberCount).sub(1),
            )
            .filter(room::Column::Id.eq(room_id))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(deleted.rows_affected == 1)
}

/// Members with their names, oldest first.
pub async fn members(db: &impl ConnectionTrait, room_id: Uuid) -> Result<Vec<Member>, QueryError> {
    let rows: Vec<(Uuid, String, i32, chrono::DateTime<Utc>)> = room_member::Entity::find()
        .select_only()
        .column(room_member::Column::UserId)
        .column(user::Column::Username)
        .column(user::Column::AvatarVersion)
        .column(room_member::Column::JoinedAt)
        .join(JoinType::InnerJoin, room_member::Relation::User.def())
        .filter(room_member::Column::RoomId.eq(room_id))
        .order_by_asc(room_member::Column::JoinedAt)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, username, avatar_version, joined_at)| Member {
            user_id,
            username,
            avatar_url: consumer::event::avatar_url(user_id, avatar_version),
            joined_at,
        })
        .collect())
}

/// Rooms `user_id` may see (public ones and their own; all for admins),
/// optionally filtered by a case-insensitive name fragment.
pub async fn list(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    all: bool,
    search: Option<&str>,
    limit: u64,
    offset: u64,
) -> Result<Vec<room::Model>, QueryError> {
    let mut query = room::Entity::find();
    if !all {
        let mine = Query::select()
            .column(room_member::Column::RoomId)
            .from(room_member::Entity)
            .and_where(room_member::Column::UserId.eq(user_id))
            .to_owned();
        query = query.filter(
            room::Column::Kind
                .eq(RoomKind::Public)
                .or(room::Column::Id.in_subquery(mine)),
        );
    }
    if let Some(search) = search.filter(|s| !s.is_empty()) {
        query = query.filter(
            Expr::expr(Func::lower(Expr::col(room::Column::Name)))
                .like(LikeExpr::new(like_pattern(search)).escape('\\')),
        );
    }
    Ok(query
        .order_by_asc(Expr::expr(Func::lower(Expr::col(room::Column::Name))))
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

pub async fn delete(db: &impl ConnectionTrait, room_id: Uuid) -> Result<(), QueryError> {
    room::Entity::delete_by_id(room_id).exec(db).await?;
    Ok(())
}

/// The private room `a` and `b` are both members of, the oldest if several.
pub async fn find_private(
    db: &impl ConnectionTrait,
    a: Uuid,
    b: Uuid,
) -> Result<Option<room::Model>, QueryError> {
    let member_of = |user: Uuid| {
        Query::select()
            .column(room_member::Column::RoomId)
            .from(room_member::Entity)
            .and_where(room_member::Column::UserId.eq(user))
            .to_owned()
    };
    Ok(room::Entity::find()
        .filter(room::Column::Kind.eq(RoomKind::Private))
        .filter(room::Column::Id.in_subquery(member_of(a)))
        .filter(room::Column::Id.in_subquery(member_of(b)))
        .order_by_asc(room::Column::CreatedAt)
        .order_by_asc(room::Column::Id)
        .one(db)
        .await?)
}

/// Creates the private room of `owner` and `peer`, both members, in one
/// transaction: nobody ever sees it with one seat free.
pub async fn create_private(
    db: &(impl ConnectionTrait + TransactionTrait),
    name: &str,
    owner: Uuid,
    peer: Uuid,
) -> Result<room::Model, QueryError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let room = room::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.to_owned()),
        kind: Set(RoomKind::Private),
        owner_id: Set(Some(owner)),
        last_seq: Set(0),
        member_count: Set(2),
        created_at: Set(now),
    }
    .insert(&txn)
    .await;
    let room = match room {
        Ok(room) => room,
        Err(err) if is_unique_violation(&err) => return Err(QueryError::RoomNameTaken),
        Err(err) => return Err(err.into()),
    };
    for user_id in [owner, peer] {
        let inserted = room_member::ActiveModel {
            room_id: Set(room.id),
            user_id: Set(user_id),
            joined_at: Set(now),
        }
        .insert(&txn)
        .await;
        match inserted {
            Ok(_) => {}
            // One of the two was deleted meanwhile.
            Err(err) if super::is_foreign_key_violation(&err) => {
                return Err(QueryError::NotFound("user"));
            }
            Err(err) => return Err(err.into()),
        }
    }
    txn.commit().await?;
    Ok(room)
}

/// For each of `rooms` (private ones), its member other than `user`, as a
/// sender: how a private room is shown to `user`.
pub async fn peers(
    db: &impl ConnectionTrait,
    user: Uuid,
    rooms: Vec<Uuid>,
) -> Result<std::collections::HashMap<Uuid, consumer::event::SenderView>, QueryError> {
    if rooms.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(Uuid, Uuid, String, i32)> = room_member::Entity::find()
        .select_only()
        .column(room_member::Column::RoomId)
        .column(room_member::Column::UserId)
        .column(user::Column::Username)
        .column(user::Column::AvatarVersion)
        .join(JoinType::InnerJoin, room_member::Relation::User.def())
        .filter(room_member::Column::RoomId.is_in(rooms))
        .filter(room_member::Column::UserId.ne(user))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(room, id, name, avatar)| (room, consumer::event::SenderView::new(id, name, avatar)))
        .collect())
}

/// Rooms as `user` sees them: private ones name the other member (`peer`).
pub async fn views(
    db: &impl ConnectionTrait,
    user: Uuid,
    found: Vec<room::Model>,
) -> Result<Vec<consumer::event::RoomView>, QueryError> {
    let private = found
        .iter()
        .filter(|r| r.kind == RoomKind::Private)
        .map(|r| r.id)
        .collect();
    let mut peers = peers(db, user, private).await?;
    Ok(found
        .into_iter()
        .map(|r| {
            let peer = peers.remove(&r.id);
            consumer::event::RoomView {
                peer,
                ..consumer::event::RoomView::from(r)
            }
        })
        .collect())
}

/// One room as `user` sees it.
pub async fn view(
    db: &impl ConnectionTrait,
    user: Uuid,
    room: room::Model,
) -> Result<consumer::event::RoomView, QueryError> {
    Ok(views(db, user, vec![room])
        .await?
        .pop()
        .expect("one room in, one out"))
}
