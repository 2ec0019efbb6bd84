//! Accounts.

use chrono::Utc;
use entity::user::{self, Role};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set,
    sea_query::{Expr, ExprTrait, Func},
};
use uuid::Uuid;

use super::{QueryError, is_unique_violation};

pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password_hash: Option<String>,
    pub role: Role,
}

/// Looks a user up by name, ignoring case.
/// Text that cannot be in the database (NUL) matches nothing.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

pub async fn find_by_username(
    db: &impl ConnectionTrait,
    username: &str,
) -> Result<Option<user::Model>, QueryError> {
    if !storable(username) {
        return Ok(None);
    }
    Ok(user::Entity::find()
        .filter(
            Expr::expr(Func::lower(Expr::col(user::Column::Username)))
                .eq(Expr::val(username.to_lowercase())),
        )
        .one(db)
        .await?)
}

/// Looks a user up by email (stored lower-cased).
pub async fn find_by_email(
    db: &impl ConnectionTrait,
    email: &str,
) -> Result<Option<user::Model>, QueryError> {
    if !storable(email) {
        return Ok(None);
    }
    Ok(user::Entity::find()
        .filter(user::Column::Email.eq(email.to_lowercase()))
        .one(db)
        .await?)
}

pub async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<user::Model>, QueryError> {
    Ok(user::Entity::find_by_id(id).one(db).await?)
}

/// Creates a user; [`QueryError::UsernameTaken`] or [`QueryError::EmailTaken`] if
/// either is in use.
pub async fn create(db: &impl ConnectionTrait, new: NewUser) -> Result<user::Model, QueryError> {
    let taken = || async {
        if find_by_username(db, &new.username).await?.is_some() {
            return Ok::<_, QueryError>(Some(QueryError::UsernameTaken));
        }
        if find_by_email(db, &new.email).await?.is_some() {
            return Ok(Some(QueryError::EmailTaken));
        }
        Ok(None)
    };
    if let Some(err) = taken().await? {
        return Err(err);
    }
    let model = user::ActiveModel {
        id: Set(Uuid::now_v7()),
        username: Set(new.username.clone()),
        email: Set(new.email.to_lowercase()),
        password_hash: Set(new.password_hash.clone()),
        role: Set(new.role),
        avatar: Set(None),
        avatar_version: Set(0),
        created_at: Set(Utc::now()),
        token_generation: Set(0),
        kept_token: Set(None),
    };
    match model.insert(db).await {
        Ok(user) => Ok(user),
        // Lost a race with a concurrent registration: say which name went.
        Err(err) if is_unique_violation(&err) => {
            Err(taken().await?.unwrap_or(QueryError::UsernameTaken))
        }
        Err(err) => Err(err.into()),
    }
}

/// Changes a user's role.
pub async fn set_role(
    db: &(impl ConnectionTrait + sea_orm::TransactionTrait),
    user: user::Model,
    role: Role,
) -> Result<user::Model, QueryError> {
    use sea_orm::TransactionSession;
    let txn = db.begin().await?;
    if role != Role::Admin {
        keep_an_admin_besides(&txn, user.id).await?;
    }
    let mut active: user::ActiveModel = user.into();
    active.role = Set(role);
    let user = active.update(&txn).await.map_err(|err| match err {
        // Deleted since it was read.
        sea_orm::DbErr::RecordNotUpdated => QueryError::NotFound("user"),
        err => err.into(),
    })?;
    txn.commit().await?;
    Ok(user)
}

/// `LastAdmin` when `user` is an admin and no other admin is left, checked
/// against every admin change at once: its first statement locks the
/// admins' rows (PostgreSQL) or takes the write lock (SQLite), so that two
/// admins demoting or deleting each other at the same moment are taken one
/// after the other, and the second sees the first's change.
async fn keep_an_admin_besides(txn: &impl ConnectionTrait, user: Uuid) -> Result<(), QueryError> {
    let admins = user::Entity::update_many()
        .col_expr(user::Column::Role, Expr::col(user::Column::Role))
        .filter(user::Column::Role.eq(Role::Admin))
        .exec(txn)
        .await?
        .rows_affected;
    let is_admin = sea_orm::PaginatorTrait::count(
        user::Entity::find_by_id(user).filter(user::Column::Role.eq(Role::Admin)),
        txn,
    )
    .await?
        > 0;
    if is_admin && admins <= 1 {
        return Err(QueryError::LastAdmin);
    }
    Ok(())
}

/// Sets a new email and/or password hash. A new password moves the user to
/// the next token generation: every token issued before stops working,
/// except the one whose `jti` is `keep` (the caller's, when they changed it).
pub async fn update_account(
    db: &impl ConnectionTrait,
    user: user::Model,
    email: Option<String>,
    password_hash: Option<String>,
    keep: Option<Uuid>,
) -> Result<user::Model, QueryError> {
    let next_generation = user.token_generation.wrapping_add(1);
    let mut active: user::ActiveModel = user.into();
    if let Some(email) = email {
        active.email = Set(email.to_lowercase());
    }
    if let Some(hash) = password_hash {
        active.password_hash = Set(Some(hash));
        active.token_generation = Set(next_generation);
        active.kept_token = Set(keep);
    }
    match active.update(db).await {
        Ok(user) => Ok(user),
        Err(err) if is_unique_violation(&err) => Err(QueryError::EmailTaken),
        // Deleted since it was read.
        Err(sea_orm::DbErr::RecordNotUpdated) => Err(QueryError::NotFound("user")),
        Err(err) => Err(err.into()),
    }
}

/// Moves the user to the next token generation with no token kept: every
/// access token issued before stops working (log out everywhere).
pub async fn end_sessions(
    db: &impl ConnectionTrait,
    user: user::Model,
) -> Result<user::Model, QueryError> {
    let next_generation = user.token_generation.wrapping_add(1);
    let mut active: user::ActiveModel = user.into();
    active.token_generation = Set(next_generation);
    active.kept_token = Set(None);
    active.update(db).await.map_err(|err| match err {
        sea_orm::DbErr::RecordNotUpdated => QueryError::NotFound("user"),
        err => err.into(),
    })
}

/// Deletes a user. Their memberships go; their messages stay with no sender
/// (marked `sender_deleted`, unlike system messages), their rooms with no
/// owner (foreign keys do both on either backend).
pub async fn delete(
    db: &(impl ConnectionTrait + sea_orm::TransactionTrait),
    id: Uuid,
) -> Result<(), QueryError> {
    use entity::{message, room, room_member};
    use sea_orm::{QuerySelect, TransactionSession, sea_query::ExprTrait as _};
    let txn = db.begin().await?;
    // A write first, so that SQLite takes its write lock at the start.
    keep_an_admin_besides(&txn, id).await?;
    // Keep each room's seat count in step with the memberships that vanish.
    let memberships = sea_orm::sea_query::Query::select()
        .column(room_member::Column::RoomId)
        .from(room_member::Entity)
        .and_where(room_member::Column::UserId.eq(id))
        .to_owned();
    room::Entity::update_many()
        .col_expr(
            room::Column::MemberCount,
            Expr::col(room::Column::MemberCount).sub(1),
        )
        .filter(room::Column::Id.in_subquery(memberships))
        .exec(&txn)
        .await?;
    // Lock the user before marking their messages: on PostgreSQL a message
    // being stored meanwhile (its foreign key holds the row) then either
    // committed already, and is marked below, or waits and then fails as from
    // an unknown sender. SQLite has one writer at a time, which is already us.
    user::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&txn)
        .await?;
    message::Entity::update_many()
        .col_expr(message::Column::SenderDeleted, Expr::value(true))
        .filter(message::Column::SenderId.eq(id))
        .exec(&txn)
        .await?;
    user::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Users whose name or email contains `search`, by name, without their
/// avatar images (`avatar` is `None`; the URL needs only its version).
pub async fn search(
    db: &impl ConnectionTrait,
    search: Option<&str>,
    limit: u64,
    offset: u64,
) -> Result<Vec<user::Model>, QueryError> {
    use sea_orm::{Condition, Iterable, QueryOrder, QuerySelect, sea_query::LikeExpr};
    // Every column but the avatar image (a listing shows its URL): a page
    // of 50 users would otherwise read up to 50 images.
    let mut query = user::Entity::find()
        .select_only()
        .columns(user::Column::iter().filter(|c| !matches!(c, user::Column::Avatar)))
        .column_as(Expr::cust("NULL"), "avatar");
    if let Some(search) = search.filter(|s| !s.is_empty()) {
        let pattern = super::like_pattern(search);
        query = query.filter(
            Condition::any()
                .add(
                    Expr::expr(Func::lower(Expr::col(user::Column::Username)))
                        .like(LikeExpr::new(pattern.clone()).escape('\\')),
                )
                .add(Expr::col(user::Column::Email).like(LikeExpr::new(pattern).escape('\\'))),
        );
    }
    Ok(query
        .order_by_asc(Expr::expr(Func::lower(Expr::col(user::Column::Username))))
        .limit(limit)
        .offset(offset)
        .all(db)
        .await?)
}

/// Registered users (no guests) whose name contains `search`, by name: the
/// directory every user may search. Emails are neither searched nor shown,
/// so the directory cannot be probed for who registered with which address.
/// The avatar images stay in the database: only the columns a listing shows
/// are read.
pub async fn directory(
    db: &impl ConnectionTrait,
    search: Option<&str>,
    limit: u64,
    offset: u64,
) -> Result<Vec<Listed>, QueryError> {
    use sea_orm::{QueryOrder, QuerySelect, sea_query::LikeExpr};
    let mut query = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::Username)
        .column(user::Column::Role)
        .column(user::Column::AvatarVersion)
        .column(user::Column::CreatedAt)
        .filter(user::Column::Role.ne(Role::Guest));
    if let Some(search) = search.filter(|s| !s.is_empty()) {
        query = query.filter(
            Expr::expr(Func::lower(Expr::col(user::Column::Username)))
                .like(LikeExpr::new(super::like_pattern(search)).escape('\\')),
        );
    }
    Ok(query
        .order_by_asc(Expr::expr(Func::lower(Expr::col(user::Column::Username))))
        .order_by_asc(user::Column::Id)
        .limit(limit)
        .offset(offset)
        .into_model::<Listed>()
        .all(db)
        .await?)
}

/// A user as a listing shows them: no email, no image.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct Listed {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub avatar_version: i32,
    pub created_at: chrono::DateTime<Utc>,
}

/// Stores a user's avatar (already normalised PNG bytes) and counts the
/// version up in the same statement; returns the new version.
pub async fn set_avatar(
    db: &impl ConnectionTrait,
    id: Uuid,
    png: Vec<u8>,
) -> Result<i32, QueryError> {
    let updated = user::Entity::update_many()
        .col_expr(user::Column::Avatar, Expr::value(png))
        .col_expr(
            user::Column::AvatarVersion,
            Expr::col(user::Column::AvatarVersion).add(1),
        )
        .filter(user::Column::Id.eq(id))
        .exec_with_returning(db)
        .await?;
    updated
        .first()
        .map(|u| u.avatar_version)
        .ok_or(QueryError::NotFound("user"))
}
