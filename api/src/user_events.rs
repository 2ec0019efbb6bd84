//! User events on the api's side (DESIGN.md §2, "User events"): announcing an
//! account change to every node before it is answered, applying those that
//! arrive to this node's caches, and, after the broker connection was lost,
//! checking every open socket's token again, since events may have been
//! missed meanwhile.

use bytes::Bytes;
use consumer::{
    event::UserEvent,
    hub::{CloseReason, user_sockets::SocketOwner},
};
use sea_orm::EntityTrait;
use tokio::sync::broadcast::error::RecvError;

use crate::{error::ApiError, state::AppState};

/// Applies `event` on this node at once, then publishes it to every node
/// and waits for the broker's confirm. If the broker cannot take it, the
/// change stands (the database holds it): other nodes read it within a
/// second, and check their sockets again when they reconnect.
pub async fn announce(state: &AppState, event: UserEvent) {
    let frame = event.to_bytes();
    state.caches.apply(&event);
    state
        .hub
        .apply_user_event(&event, Bytes::from(frame.clone()));
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
