//! User administration, for admins only: create with a role, change a role, search.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use consumer::event::UserEvent;
use entity::user::Role;
use serde::Deserialize;
use uuid::Uuid;
use validator::Validate;

use super::users::UserView;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{AuthUser, password},
    error::{ApiError, Result},
    extract::SearchPage,
    extract::{Json as JsonBody, QueryParams, Valid, validate},
    queries::users,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(set_role))
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "username": "erin", "email": "erin@example.com", "password": "erin-long-password", "role": "moderator"
}))]
struct NewUser {
    #[validate(custom(function = "crate::domain::validate_username"))]
    username: String,
    #[validate(
        email(message = "must be an email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    email: String,
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    password: String,
    #[schema(value_type = String, example = "moderator")]
    role: Role,
}

#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "admin",
    summary = "Create a user with a role",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserView), (status = 401), (status = 403),
        (status = 409), (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    Valid(req): Valid<NewUser>,
) -> Result<impl IntoResponse> {
    caller.require_admin()?;
    if req.role == Role::Guest {
        return Err(ApiError::invalid_field(
            "role",
            "guests are made by /generate-token",
        ));
    }
    let hash = password::hash(req.password).await?;
    let user = users::create(
        &state.db,
        users::NewUser {
            username: req.username,
            email: req.email,
            password_hash: Some(hash),
            role: req.role,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(UserView::private(&user))))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "moderator"}))]
struct RoleChange {
    #[schema(value_type = String, example = "moderator")]
    role: Role,
}

#[utoipa::path(
    patch,
    path = "/admin/users/{id}",
    tag = "admin",
    summary = "Change a user's role",
    request_body = RoleChange,
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Updated", body = UserView), (status = 401), (status = 403),
        (status = 404),
        (status = 409, description = "Conflict: your own role (own_role), a guest's (guest_account), or the only other admin's (last_admin)"),
        (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn set_role(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
    JsonBody(req): JsonBody<RoleChange>,
) -> Result<Json<UserView>> {
    caller.require_admin()?;
    if req.role == Role::Guest {
        return Err(ApiError::invalid_field(
            "role",
            "a registered user cannot become a guest",
        ));
    }
    if id == caller.id {
        // Otherwise the last admin could leave the server with none.
        return Err(ApiError::conflict(
            "own_role",
            "admins cannot change their own role",
        ));
    }
    let user = users::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if user.role == Role::Guest {
        return Err(ApiError::conflict(
            "guest_account",
            "guest accounts have no role to change",
        ));
    }
    let before = user.role;
    let user = users::set_role(&state.db, user, req.role).await?;
    crate::user_events::announce(
        &state,
        UserEvent::RoleChanged {
            user_id: user.id,
            role: format!("{:?}", req.role).to_lowercase(),
            demoted: rank(req.role) < rank(before),
        },
    )
    .await;
    tracing::info!(user = %id, role = ?req.role, by = %caller.id, "role changed");
    Ok(Json(UserView::private(&user)))
}

/// How much a role may do beyond its own rooms: losing rank closes the
/// user's sockets (they reconnect under the new role's rules).
fn rank(role: Role) -> u8 {
    match role {
        Role::Guest => 0,
        Role::User => 1,
        Role::Moderator => 2,
        Role::Admin => 3,
    }
}

#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "admin",
    summary = "Search users",
    params(SearchPage),
    responses(
        (status = 200, description = "Users", body = Vec<UserView>), (status = 401), (status = 403),
        (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    QueryParams(q): QueryParams<SearchPage>,
) -> Result<Json<Vec<UserView>>> {
    caller.require_admin()?;
    validate(&q)?;
    let found = users::search(
        &state.db,
        q.search.as_deref(),
        q.limit.unwrap_or(50),
        q.offset.unwrap_or(0),
    )
    .await?;
    Ok(Json(found.iter().map(UserView::private).collect()))
}
