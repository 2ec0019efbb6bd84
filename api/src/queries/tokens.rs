//! Revoked tokens: a row per logged-out token, kept until the token would
//! have expired anyway, then pruned.

use chrono::{DateTime, Utc};
use entity::revoked_token;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::{QueryError, is_unique_violation};

/// Records `jti` as logged out until `expires_at`; twice is fine.
pub async fn revoke(
    db: &impl ConnectionTrait,
    jti: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), QueryError> {
    let revoked = revoked_token::ActiveModel {
        jti: Set(jti),
        expires_at: Set(expires_at),
    }
    .insert(db)
    .await;
    match revoked {
        Ok(_) => Ok(()),
        Err(err) if is_unique_violation(&err) => Ok(()), // logged out twice at once
        Err(err) => Err(err.into()),
    }
}

/// Deletes the rows of tokens past their expiry (they are refused for that
/// alone); returns how many went.
pub async fn prune_expired(db: &impl ConnectionTrait) -> Result<u64, QueryError> {
    // The token's own leeway: a row goes only once no clock can accept it.
    let before = Utc::now() - chrono::Duration::seconds(crate::auth::token::LEEWAY_SECS as i64);
    let deleted = revoked_token::Entity::delete_many()
        .filter(revoked_token::Column::ExpiresAt.lt(before))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}
