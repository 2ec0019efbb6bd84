use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What a user may do beyond their own rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "moderator")]
    Moderator,
    #[sea_orm(string_value = "admin")]
    Admin,
    /// A holder of a one-room guest token; has no password.
    #[sea_orm(string_value = "guest")]
    Guest,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// As the user typed it; unique case-insensitively (index on `lower(username)`).
    pub username: String,
    /// Stored lower-cased; unique.
    pub email: String,
    /// argon2id PHC string; `None` for guests.
    pub password_hash: Option<String>,
    pub role: Role,
    pub avatar: Option<Vec<u8>>,
    /// Uploads so far: the version in the avatar's URL.
    pub avatar_version: i32,
    pub created_at: DateTimeUtc,
    /// Tokens carry the generation they were issued in; only the current
    /// one's are valid. A password change moves to the next generation.
    pub token_generation: i32,
    /// The `jti` of the token that changed the password: it stays valid
    /// while the others of earlier generations do not.
    pub kept_token: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::room_member::Entity")]
    RoomMember,
}

impl Related<super::room_member::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RoomMember.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
