use sea_orm::entity::prelude::*;

/// A refresh token (its SHA-256): one link of a login's rotation chain.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refresh_tokens")]
pub struct Model {
    /// Hex SHA-256 of the token; the token itself is never stored.
    #[sea_orm(primary_key, auto_increment = false)]
    pub hash: String,
    pub user_id: Uuid,
    /// Every token rotated from one login shares it.
    pub family_id: Uuid,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    /// Set when the token was exchanged for its successor.
    pub used_at: Option<DateTimeUtc>,
    /// Set when its family was revoked (logout, or reuse of a rotated token).
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
