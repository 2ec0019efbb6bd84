//! With `MESSAGE_PARTITIONS` > 1: what arrives on `messages` itself (a
//! message published by hand from the console, or one left there from before
//! the partitions) is sent on to its room's partition, and stored there.
//!
//! A room's messages must all go through one partition, or two store stages
//! could publish its events out of `seq` order. Ingest routes by the room's
//! id; a console message may name its room by name, so the name is read here
//! and the message routed by the id it names. What names no room, or does
//! not parse, is routed by what it gives: the store stage of the partition it
//! reaches dead-letters it with the reason, as it would have before.

use std::time::Duration;

use entity::room;
use sea_orm::{
    DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait, Func},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Broker, broker::QueuedMessage, event::Envelope};

/// Routes each message on to its partition, then acks it. On a broker error
/// the rest stays unacked (the broker sends it again); `false` on shutdown.
pub(super) async fn route(
    db: &DatabaseConnection,
    broker: &dyn Broker,
    messages: Vec<QueuedMessage>,
    stop: &CancellationToken,
) -> bool {
    for message in messages {
        let Some(key) = routing_key(db, &message.payload, stop).await else {
            return false;
        };
        let signature = message.signature.as_deref();
        if let Err(err) = broker
            .publish_routed(&key, &message.payload, signature)
            .await
        {
            tracing::warn!(error = %err, "store stage: cannot route a console message; it will be redelivered");
            return true;
        }
        if let Err(err) = message.ack().await {
            tracing::warn!(error = %err, "store stage: ack of a routed message failed; it may be routed twice \
                and is stored once");
        }
    }
    true
}

/// The room id the message names, as ingest routes by it; what it gives
/// when that names no room (or is not an envelope). `None` on shutdown;
/// a database error is retried.
async fn routing_key(
    db: &DatabaseConnection,
    payload: &[u8],
    stop: &CancellationToken,
) -> Option<String> {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) else {
        return Some(String::new());
    };
    if let Ok(id) = Uuid::parse_str(&envelope.room_id) {
        return Some(id.to_string());
    }
    loop {
        match room_by_name(db, &envelope.room_id).await {
            Ok(found) => {
                return Some(found.map_or(envelope.room_id, |id| id.to_string()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "store stage: cannot read a room's name to route by; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

async fn room_by_name(db: &DatabaseConnection, name: &str) -> Result<Option<Uuid>, DbErr> {
    // A name longer than any room's names none.
    if name.chars().count() > 64 {
        return Ok(None);
    }
    room::Entity::find()
        .select_only()
        .column(room::Column::Id)
        .filter(Func::lower(Expr::col(room::Column::Name)).eq(Expr::val(name.to_lowercase())))
        .into_tuple::<Uuid>()
        .one(db)
        .await
}
