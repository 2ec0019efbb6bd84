use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Who may enter a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Anyone signed in may read, post and join.
    #[sea_orm(string_value = "public")]
    Public,
    /// Invite-only: the owner or an admin adds members.
    #[sea_orm(string_value = "group")]
    Group,
    /// At most two members, ever.
    #[sea_orm(string_value = "private")]
    Private,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rooms")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique case-insensitively (index on `lower(name)`).
    pub name: String,
    pub kind: RoomKind,
    pub owner_id: Option<Uuid>,
    /// The `seq` of the newest stored message; the store stage advances it.
    pub last_seq: i64,
    /// Kept in step with `room_members`; a CHECK keeps private rooms at two or fewer.
    pub member_count: i32,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::room_member::Entity")]
    RoomMember,
    #[sea_orm(has_many = "super::message::Entity")]
    Message,
}

impl Related<super::room_member::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RoomMember.def()
    }
}

impl Related<super::message::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Message.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
