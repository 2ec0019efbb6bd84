use sea_orm::entity::prelude::*;

/// One echo-channel session, saved when its socket closed.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "echo_transcripts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub started_at: DateTimeUtc,
    pub ended_at: DateTimeUtc,
    /// JSON array of `{"dir": "in" | "out", "text": …}` in order.
    #[sea_orm(column_type = "Text")]
    pub frames: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
