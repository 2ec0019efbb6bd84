//! Rooms: create, list and search, get, delete, members, join.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use consumer::event::{RoomEvent, RoomRemovedReason, UserEvent};
use entity::room::{self, RoomKind};
use serde::Deserialize;
use uuid::Uuid;
use validator::Validate;

use super::announce;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access,
    auth::AuthUser,
    error::{ApiError, Result},
    extract::SearchPage,
    extract::{Json as JsonBody, QueryParams, Valid},
    queries::{
        QueryError,
        rooms::{self, Added},
        users,
    },
    state::AppState,
    user_events,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, remove))
        .routes(routes!(members, add_member))
        .routes(routes!(remove_member))
        .routes(routes!(join))
        .routes(routes!(private_room))
}

/// A room as JSON (shared with the `room_added` frame of `GET /ws`).
pub use consumer::event::RoomView;

/// Rooms as `user` sees them.
async fn views(state: &AppState, user: Uuid, found: Vec<room::Model>) -> Result<Vec<RoomView>> {
    Ok(rooms::views(&state.db, user, found).await?)
}

/// One room as `user` sees it.
async fn view(state: &AppState, user: Uuid, room: room::Model) -> Result<RoomView> {
    Ok(rooms::view(&state.db, user, room).await?)
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "general", "kind": "group"}))]
struct CreateRoom {
    #[validate(custom(function = "crate::domain::validate_room_name"))]
    name: String,
    /// public, group (default) or private.
    #[serde(default = "default_kind")]
    #[schema(value_type = String, example = "group")]
    kind: RoomKind,
}

fn default_kind() -> RoomKind {
    RoomKind::Group
}

#[utoipa::path(
    post,
    path = "/rooms",
    tag = "rooms",
    summary = "Create a room; you become its owner and first member",
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Created", body = RoomView), (status = 401), (status = 403),
        (status = 409), (status = 422),
        (status = 429, description = "Too many rooms created by this user (`ROOM_CREATE_BURST`, \
            `ROOM_CREATE_PER_MINUTE`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Valid(req): Valid<CreateRoom>,
) -> Result<impl IntoResponse> {
    user.require_registered()?;
    state.quotas.check_room_create(user.id)?;
    let room = rooms::create(&state.db, &req.name, req.kind, user.id).await?;
    if room.kind == RoomKind::Public {
        // In everyone's list: every user's own socket hears of it.
        let listed = UserEvent::RoomListed {
            user_id: user.id,
            room: RoomView::from(room.clone()),
        };
        user_events::announce(&state, listed).await;
    } else {
        // The creator's other tabs list it too.
        user_events::room_added(&state, user.id, room.id).await;
    }
    Ok((StatusCode::CREATED, Json(RoomView::from(room))))
}

#[utoipa::path(
    get,
    path = "/rooms",
    tag = "rooms",
    summary = "Public rooms and yours, by name",
    params(SearchPage),
    responses(
        (status = 200, description = "Rooms", body = Vec<RoomView>), (status = 401), (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(q): QueryParams<SearchPage>,
) -> Result<Json<Vec<RoomView>>> {
    crate::extract::validate(&q)?;
    user.require_registered()?;
    let found = rooms::list(
        &state.db,
        user.id,
        user.is_admin(),
        q.search.as_deref(),
        q.limit.unwrap_or(50),
        q.offset.unwrap_or(0),
    )
    .await?;
    Ok(Json(views(&state, user.id, found).await?))
}

#[utoipa::path(
    get,
    path = "/rooms/{room}",
    tag = "rooms",
    summary = "A room",
    params(("room" = String, Path, description = "The room's UUID or name", example = "lobby")),
    responses(
        (status = 200, description = "The room", body = RoomView), (status = 401), (status = 403),
        (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
) -> Result<Json<RoomView>> {
    let room = rooms::get(&state.db, &key).await?;
    access::can_read(&state, &user, &room).await?;
    Ok(Json(view(&state, user.id, room).await?))
}

#[utoipa::path(
    delete,
    path = "/rooms/{room}",
    tag = "rooms",
    summary = "Delete a room (owner or admin); its sockets close with 4404",
    params(("room" = String, Path, description = "The room's UUID or name", example = "general")),
    responses(
        (status = 204, description = "Deleted"), (status = 401), (status = 403), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
) -> Result<StatusCode> {
    let room = rooms::get(&state.db, &key).await?;
    access::can_manage(&user, &room)?;
    let public = room.kind == RoomKind::Public;
    // A public room leaves everyone's list; another, its members' lists.
    let members = if public {
        Vec::new()
    } else {
        rooms::members(&state.db, room.id).await?
    };
    rooms::delete(&state.db, room.id).await?;
    state.caches.room_deleted();
    tracing::info!(room = %room.id, by = %user.id, "room deleted");
    announce(&state, RoomEvent::RoomDeleted { room_id: room.id }).await;
    if public {
        let unlisted = UserEvent::RoomUnlisted {
            user_id: user.id,
            room_id: room.id,
        };
        user_events::announce(&state, unlisted).await;
    } else {
        let members = members.into_iter().map(|m| m.user_id).collect();
        user_events::room_deleted(&state, room.id, members).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/rooms/{room}/members",
    tag = "rooms",
    summary = "Members",
    params(("room" = String, Path, description = "The room's UUID or name", example = "lobby")),
    responses(
        (status = 200, description = "Members", body = Vec<crate::queries::rooms::Member>),
        (status = 401), (status = 403), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn members(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
) -> Result<Json<Vec<rooms::Member>>> {
    let room = rooms::get(&state.db, &key).await?;
    access::can_read(&state, &user, &room).await?;
    Ok(Json(rooms::members(&state.db, room.id).await?))
}

/// `{user_id}` or `{username}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "carol"}))]
struct AddMember {
    user_id: Option<Uuid>,
    username: Option<String>,
}

#[utoipa::path(
    post,
    path = "/rooms/{room}/members",
    tag = "rooms",
    summary = "Add a member (owner or admin)",
    request_body = AddMember,
    params(("room" = String, Path, description = "The room's UUID or name", example = "team")),
    responses(
        (status = 201, description = "Added", body = crate::queries::rooms::Member), (status = 401),
        (status = 403), (status = 404), (status = 409), (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn add_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<AddMember>,
) -> Result<impl IntoResponse> {
    let room = rooms::get(&state.db, &key).await?;
    access::can_manage(&user, &room)?;
    let target = match (req.user_id, req.username.as_deref()) {
        (Some(id), None) => users::find(&state.db, id).await?,
        (None, Some(name)) => {
            // No account has a name these rules refuse: say why, not "not found".
            crate::domain::validate_username(name)
                .map_err(|e| ApiError::invalid_field("username", e.to_string()))?;
            users::find_by_username(&state.db, name).await?
        }
        _ => {
            return Err(ApiError::invalid_field(
                "body",
                "give exactly one of user_id or username",
            ));
        }
    }
    .ok_or_else(|| ApiError::not_found("user"))?;
    if !access::pair_seat_open(&state, &room, target.id).await? {
        return Err(QueryError::RoomFull.into());
    }
    match rooms::add_member(&state.db, room.id, target.id).await? {
        Added::Added => user_events::room_added(&state, target.id, room.id).await,
        Added::AlreadyMember => {
            return Err(ApiError::conflict(
                "already_member",
                "that user is already a member",
            ));
        }
    }
    let member = rooms::members(&state.db, room.id)
        .await?
        .into_iter()
        .find(|m| m.user_id == target.id)
        .ok_or_else(|| {
            ApiError::conflict("member_removed", "the member was removed concurrently")
        })?;
    Ok((StatusCode::CREATED, Json(member)))
}

#[utoipa::path(
    delete,
    path = "/rooms/{room}/members/{user_id}",
    tag = "rooms",
    summary = "Remove a member (owner, admin, or self); their sockets close with 4403",
    params(
        ("room" = String, Path, description = "The room's UUID or name", example = "team"),
        ("user_id" = uuid::Uuid, Path, description = "User id")
    ),
    responses(
        (status = 204, description = "Removed"), (status = 401), (status = 403), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path((key, user_id)): Path<(String, Uuid)>,
) -> Result<StatusCode> {
    let room = rooms::get(&state.db, &key).await?;
    if user.id != user_id {
        access::can_manage(&user, &room)?;
    }
    let removed = rooms::remove_member(&state.db, room.id, user_id).await?;
    state.caches.members.invalidate(&(room.id, user_id));
    if !removed {
        return Err(ApiError::not_found("member"));
    }
    announce(
        &state,
        RoomEvent::MemberRemoved {
            room_id: room.id,
            user_id,
        },
    )
    .await;
    let reason = if user.id == user_id {
        RoomRemovedReason::Left
    } else {
        RoomRemovedReason::Removed
    };
    user_events::room_removed(&state, user_id, room.id, reason).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/rooms/{room}/join",
    tag = "rooms",
    summary = "Join a public room, or a private one with a free seat",
    params(("room" = String, Path, description = "The room's UUID or name", example = "lobby")),
    responses(
        (status = 200, description = "Joined", body = RoomView), (status = 401), (status = 403),
        (status = 404), (status = 409)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn join(
    State(state): State<AppState>,
    user: AuthUser,
    Path(key): Path<String>,
) -> Result<Json<RoomView>> {
    user.require_registered()?;
    let room = rooms::get(&state.db, &key).await?;
    access::join(&state, &user, &room).await?;
    Ok(Json(
        rooms::get(&state.db, &room.id.to_string()).await?.into(),
    ))
}

#[utoipa::path(
    post,
    path = "/users/{id}/private-room",
    tag = "rooms",
    summary = "Message a person: your private room with them, opened if there is none",
    description = "Returns the private room you and that user are both members of (200), or creates \
        one with the two of you as its members (201), named `dm.` and a digest of the pair. The room \
        carries `peer`, the other person.",
    params(("id" = uuid::Uuid, Path, description = "The other person's user id")),
    responses(
        (status = 200, description = "Your existing private room with them", body = RoomView),
        (status = 201, description = "A new private room with the two of you", body = RoomView),
        (status = 401),
        (status = 403, description = "Not allowed (guests)"),
        (status = 404, description = "No such user (or a guest)"),
        (status = 422, description = "That is you"),
        (status = 429, description = "Too many rooms created by this user \
            (`ROOM_CREATE_BURST`, `ROOM_CREATE_PER_MINUTE`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// `POST /users/{id}/private-room`: find or open the caller's private room with a user.
async fn private_room(
    State(state): State<AppState>,
    user: AuthUser,
    Path(peer_id): Path<Uuid>,
) -> Result<impl IntoResponse> {
    user.require_registered()?;
    if peer_id == user.id {
        return Err(ApiError::invalid_field(
            "id",
            "a private room is with someone else",
        ));
    }
    let peer = users::find(&state.db, peer_id)
        .await?
        .filter(|p| p.role != entity::user::Role::Guest)
        .ok_or_else(|| ApiError::not_found("user"))?;
    if let Some(room) = rooms::find_private(&state.db, user.id, peer.id).await? {
        return Ok((StatusCode::OK, Json(view(&state, user.id, room).await?)));
    }
    state.quotas.check_room_create(user.id)?;
    let name = crate::domain::pair_room_name(user.id, peer.id);
    let created = match rooms::create_private(&state.db, &name, user.id, peer.id).await {
        Ok(room) => room,
        Err(QueryError::RoomNameTaken) => {
            // Either the other one opened it a moment ago, or it is the
            // pair's earlier room, which one of them has left (or a room
            // named so by hand before such names were kept): then a name
            // of its own.
            if let Some(room) = rooms::find_private(&state.db, user.id, peer.id).await? {
                return Ok((StatusCode::OK, Json(view(&state, user.id, room).await?)));
            }
            let unique = format!("{name}.{}", &Uuid::new_v4().simple().to_string()[..8]);
            rooms::create_private(&state.db, &unique, user.id, peer.id).await?
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(room = %created.id, by = %user.id, peer = %peer.id, "private room opened");
    // Both lists show it at once, the other person's as well as the opener's other tabs.
    for member in [peer.id, user.id] {
        user_events::room_added(&state, member, created.id).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(view(&state, user.id, created).await?),
    ))
}
