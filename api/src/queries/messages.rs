//! History reads.

use std::collections::HashMap;

use consumer::event::{MessageView, SenderView};
use entity::message;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::QueryError;

/// Which page of a room's history.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// The newest `limit` older than `seq` (or the newest overall), newest first.
    Before(Option<i64>),
    /// The oldest `limit` newer than `seq`, oldest first.
    After(i64),
}

pub async fn history(
    db: &impl ConnectionTrait,
    room_id: Uuid,
    page: Page,
    limit: u64,
) -> Result<Vec<MessageView>, QueryError> {
    let mut query = message::Entity::find().filter(message::Column::RoomId.eq(room_id));
    query = match page {
        Page::Before(before) => {
            if let Some(before) = before {
                query = query.filter(message::Column::Seq.lt(before));
            }
            query.order_by_desc(message::Column::Seq)
        }
        Page::After(after) => query
            .filter(message::Column::Seq.gt(after))
            .order_by_asc(message::Column::Seq),
    };
    let rows = query.limit(limit).all(db).await?;
    with_senders(db, rows).await
}

/// Attaches senders (name and avatar) to rows.
pub async fn with_senders(
    db: &impl ConnectionTrait,
    rows: Vec<message::Model>,
) -> Result<Vec<MessageView>, QueryError> {
    let ids: Vec<Uuid> = rows.iter().filter_map(|m| m.sender_id).collect();
    let names: HashMap<Uuid, (String, i32)> = consumer::store::load_senders(db, ids)
        .await?
        .into_iter()
        .map(|(id, name, avatar)| (id, (name, avatar)))
        .collect();
    Ok(rows
        .iter()
        .map(|m| {
            let sender = m.sender_id.and_then(|id| {
                names
                    .get(&id)
                    .map(|(name, avatar)| SenderView::new(id, name.as_str(), *avatar))
            });
            MessageView::from_model(m, sender)
        })
        .collect())
}

pub async fn find(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<message::Model>, QueryError> {
    Ok(message::Entity::find_by_id(id).one(db).await?)
}

/// Replaces the content and stamps `edited_at`.
pub async fn edit(
    db: &impl ConnectionTrait,
    m: message::Model,
    content: String,
) -> Result<message::Model, QueryError> {
    use sea_orm::{ActiveModelTrait, Set};
    let mut active: message::ActiveModel = m.into();
    active.content = Set(content);
    active.edited_at = Set(Some(chrono::Utc::now()));
    active.update(db).await.map_err(gone_is_not_found)
}

/// An update that matched no row lost a race with a delete (of the message,
/// or of its room): the message is gone, which is a 404, not a 500.
fn gone_is_not_found(err: sea_orm::DbErr) -> QueryError {
    match err {
        sea_orm::DbErr::RecordNotUpdated => QueryError::NotFound("message"),
        err => err.into(),
    }
}

/// Turns a message into a tombstone: it keeps its place (`seq`), loses its content.
pub async fn tombstone(
    db: &impl ConnectionTrait,
    m: message::Model,
) -> Result<message::Model, QueryError> {
    use sea_orm::{ActiveModelTrait, Set};
    let mut active: message::ActiveModel = m.into();
    active.content = Set(String::new());
    active.deleted_at = Set(Some(chrono::Utc::now()));
    active.update(db).await.map_err(gone_is_not_found)
}
