//! Refresh tokens: "stay signed in" without long-lived access tokens.
//!
//! A login starts a family; `POST /auth/refresh` exchanges a token for a new
//! access token and the family's next refresh token, marking the old one
//! used. A used token presented again means it was copied: the whole family
//! is revoked, the thief's copy and the owner's alike. The one exception is
//! a token used again within [`GRACE`] of its rotation — two tabs of one
//! browser refreshing at once —, which gets an access token but no new
//! refresh token (the browser already holds the successor).

use chrono::{DateTime, Utc};
use entity::refresh_token;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set,
    TransactionSession, TransactionTrait, sea_query::Expr,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

/// How long a rotated token still answers without counting as reuse.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a refresh gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The token was current: here is its successor.
    Rotated { user_id: Uuid, token: String },
    /// The token was rotated a moment ago (a concurrent refresh): an access
    /// token only.
    Concurrent { user_id: Uuid },
}

/// A new random token: 244 random bits (two UUIDv4s from the OS's generator), hex.
fn new_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts a family (a login) or continues one; returns the token.
pub async fn issue(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    family_id: Option<Uuid>,
    ttl: std::time::Duration,
) -> Result<String, ApiError> {
    let token = new_token();
    let now = Utc::now();
    refresh_token::ActiveModel {
        hash: Set(digest(&token)),
        user_id: Set(user_id),
        family_id: Set(family_id.unwrap_or_else(Uuid::now_v7)),
        created_at: Set(now),
        expires_at: Set(expires(now, ttl)),
        used_at: Set(None),
        revoked_at: Set(None),
    }
    .insert(db)
    .await
    .map_err(|err| match err {
        // The user was deleted meanwhile.
        err if crate::queries::is_foreign_key_violation(&err) => {
            ApiError::unauthorized("invalid_token", "the account no longer exists")
        }
        err => err.into(),
    })?;
    Ok(token)
}

fn expires(now: DateTime<Utc>, ttl: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Exchanges `token` for its successor (valid `ttl` from now).
pub async fn refresh(
    db: &(impl ConnectionTrait + TransactionTrait),
    token: &str,
    ttl: std::time::Duration,
) -> Result<Refreshed, ApiError> {
    let hash = digest(token);
    let now = Utc::now();
    let find = || async {
        refresh_token::Entity::find_by_id(hash.clone())
            .one(db)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid_token", "unknown refresh token"))
    };
    let row = find().await?;
    if let State::Concurrent = check(db, &row, now).await? {
        return Ok(Refreshed::Concurrent {
            user_id: row.user_id,
        });
    }
    let txn = db.begin().await?;
    // Claim it: of two refreshes racing with one token, one wins here.
    let claimed = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::Hash.eq(hash.clone()))
        .filter(refresh_token::Column::UsedAt.is_null())
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if claimed.rows_affected == 0 {
        // Lost the race (or the family was revoked meanwhile): judge again.
        txn.rollback().await?;
        let row = find().await?;
        return match check(db, &row, Utc::now()).await? {
            State::Concurrent => Ok(Refreshed::Concurrent {
                user_id: row.user_id,
            }),
            State::Current => Err(ApiError::unauthorized(
                "invalid_token",
                "the refresh token changed meanwhile",
            )),
        };
    }
    let token = issue(&txn, row.user_id, Some(row.family_id), ttl).await?;
    txn.commit().await?;
    Ok(Refreshed::Rotated {
        user_id: row.user_id,
        token,
    })
}

/// Where a token stands, if it may be used at all.
enum State {
    Current,
    /// Rotated within [`GRACE`]: a concurrent refresh.
    Concurrent,
}

/// Refuses a revoked or expired token, and a rotated one used again after
/// [`GRACE`], which revokes its family.
async fn check(
    db: &impl ConnectionTrait,
    row: &refresh_token::Model,
    now: DateTime<Utc>,
) -> Result<State, ApiError> {
    if row.revoked_at.is_some() {
        return Err(ApiError::unauthorized(
            "token_revoked",
            "this sign-in was ended; log in again",
        ));
    }
    if row.expires_at <= now {
        return Err(ApiError::unauthorized(
            "token_expired",
            "the refresh token expired; log in again",
        ));
    }
    let Some(used) = row.used_at else {
        return Ok(State::Current);
    };
    if (now - used).to_std().ok().is_none_or(|age| age < GRACE) {
        return Ok(State::Concurrent);
    }
    revoke_family(db, row.family_id).await?;
    tracing::warn!(user = %row.user_id, family = %row.family_id, "rotated refresh token reused; family revoked");
    Err(ApiError::unauthorized(
        "token_reused",
        "this refresh token was already used; every session of this sign-in is ended",
    ))
}

/// Revokes every token of a family.
pub async fn revoke_family(db: &impl ConnectionTrait, family_id: Uuid) -> Result<(), ApiError> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(refresh_token::Column::FamilyId.eq(family_id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// Revokes the family `token` belongs to (logout); unknown tokens are ignored.
pub async fn revoke_family_of(db: &impl ConnectionTrait, token: &str) -> Result<(), ApiError> {
    if let Some(row) = refresh_token::Entity::find_by_id(digest(token))
        .one(db)
        .await?
    {
        revoke_family(db, row.family_id).await?;
    }
    Ok(())
}

/// Revokes every refresh token of a user (log out everywhere).
pub async fn revoke_user(db: &impl ConnectionTrait, user_id: Uuid) -> Result<(), ApiError> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(refresh_token::Column::UserId.eq(user_id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), a);
        assert_eq!(digest(&a).len(), 64);
    }
}
