//! User events on the api's side (DESIGN.md §2, "User events"): announcing an
//! account change, or a change to a user's list of rooms, to every node
//! before it is answered, applying those that arrive to this node's caches,
//! and, after the broker connection was lost,
//! checking every open socket's token again, since events may have been
//! missed meanwhile.

use consumer::{
    event::{RoomRemovedReason, UserEvent},
    hub::{CloseReason, user_sockets::SocketOwner},
};
use futures_util::StreamExt;
use sea_orm::EntityTrait;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::{
    error::ApiError,
    queries::{QueryError, rooms},
    state::AppState,
};

/// Applies `event` on this node at once (caches, and the sockets it
/// closes), then publishes it to every node and waits for the broker's
/// confirm. The user's own streams here get it from the broker's copy, as
/// every node's do, so they get it once. If the broker cannot take it, the
/// change stands (the database holds it): other nodes read it within a
/// second, and check their sockets again when they reconnect; a stream
/// misses it, and its client reads its list of rooms again when it
/// reconnects.
pub async fn announce(state: &AppState, event: UserEvent) {
    let frame = event.to_bytes();
    state.caches.apply(&event);
    state.hub.close_for(&event);
    if let Err(err) = state
        .broker
        .publish_user_event(event.user_id(), &frame)
        .await
    {
        tracing::warn!(
            error = %err,
            user = %event.user_id(),
            "user event not published; other nodes read the change from the database"
        );
    }
}

/// Tells `user_id`'s own sockets (`GET /ws`), on every node, that the room
/// is in their list now, as they see it (`room_added`). A room that cannot
/// be read now goes unannounced: the client reads its list again whenever
/// its socket (re)connects.
pub async fn room_added(state: &AppState, user_id: Uuid, room_id: Uuid) {
    match seen_by(state, user_id, room_id).await {
        Ok(Some(room)) => announce(state, UserEvent::RoomAdded { user_id, room }).await,
        Ok(None) => {}
        Err(err) => {
            let err = ApiError::from(err);
            tracing::warn!(code = err.code, room = %room_id, "room_added not announced");
        }
    }
}

/// The room as `user_id` sees it now, if it still exists.
async fn seen_by(
    state: &AppState,
    user_id: Uuid,
    room_id: Uuid,
) -> Result<Option<consumer::event::RoomView>, QueryError> {
    let Some(room) = entity::Room::find_by_id(room_id).one(&state.db).await? else {
        return Ok(None);
    };
    rooms::view(&state.db, user_id, room).await.map(Some)
}

/// Tells `user_id`'s own sockets that the room left their list (`room_removed`).
pub async fn room_removed(
    state: &AppState,
    user_id: Uuid,
    room_id: Uuid,
    reason: RoomRemovedReason,
) {
    let event = UserEvent::RoomRemoved {
        user_id,
        room_id,
        reason,
    };
    announce(state, event).await;
}

/// Tells each of a deleted room's `members` that it is gone, a few at a time.
pub async fn room_deleted(state: &AppState, room_id: Uuid, members: Vec<Uuid>) {
    futures_util::stream::iter(members)
        .for_each_concurrent(DELETED_ROOM_FANOUT, |user_id| {
            room_removed(state, user_id, room_id, RoomRemovedReason::Deleted)
        })
        .await;
}

/// `room_removed` events of a deleted room published at once.
const DELETED_ROOM_FANOUT: usize = 16;

/// Runs until `state.stop`: applies the user events the hub hears to the
/// caches, and checks every socket again after each (re)bind of the node's
/// event queue.
pub async fn run(state: AppState) {
    let mut events = state.hub.user_events();
    let mut rebinds = state.broker.rebinds();
    let mut rebinds_open = true;
    loop {
        tokio::select! {
            () = state.stop.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => state.caches.apply(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "user events missed; forgetting cached tokens");
                    state.caches.events_missed();
                }
                Err(RecvError::Closed) => return,
            },
            changed = rebinds.changed(), if rebinds_open => {
                if changed.is_err() {
                    rebinds_open = false;
                    continue;
                }
                state.caches.events_missed();
                recheck_sockets(&state).await;
            }
        }
    }
}

/// Closes (4001) every socket whose token the database no longer accepts.
pub async fn recheck_sockets(state: &AppState) {
    let owners = state.hub.socket_owners();
    let mut closed = 0;
    for owner in owners {
        match still_valid(state, owner).await {
            Ok(true) => {}
            Ok(false) => {
                state
                    .hub
                    .close_token(owner.user_id, owner.jti, CloseReason::TOKEN_REVOKED);
                closed += 1;
            }
            // The database cannot say now; the next rebind or request will.
            Err(err) => tracing::warn!(code = err.code, "socket token not rechecked"),
        }
    }
    if closed > 0 {
        tracing::info!(closed, "sockets closed after a recheck of their tokens");
    }
}

/// The database's word on a socket's token: its account exists, it was not
/// logged out, and no password change since revoked it.
async fn still_valid(state: &AppState, owner: SocketOwner) -> Result<bool, ApiError> {
    let Some(user) = entity::User::find_by_id(owner.user_id)
        .one(&state.db)
        .await?
    else {
        return Ok(false);
    };
    if user.token_generation != owner.generation && user.kept_token != Some(owner.jti) {
        return Ok(false);
    }
    Ok(entity::RevokedToken::find_by_id(owner.jti)
        .one(&state.db)
        .await?
        .is_none())
}

/// The registry's view of a socket's caller.
pub fn owner(user: &crate::auth::AuthUser) -> SocketOwner {
    SocketOwner {
        user_id: user.id,
        jti: user.claims.jti,
        generation: user.claims.generation,
    }
}
