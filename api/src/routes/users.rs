//! Accounts as their owners and others see them: `/users/me`, `/users/{id}`.

use axum::{
    Json,
    extract::{DefaultBodyLimit, Multipart},
    extract::{Path, State},
    http::StatusCode,
    http::{HeaderValue, header},
    response::IntoResponse,
};
use chrono::{DateTime, Utc};
use consumer::event::avatar_url;
use consumer::event::{RevokeReason, UserEvent};
use entity::user::{self, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::{
    auth::{AuthUser, password},
    avatar::{self, AvatarError},
    client_addr::ClientAddr,
    error::{ApiError, Result},
    extract::{QueryParams, SearchPage, Valid, validate},
    queries::users,
    state::AppState,
};
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, update_me, delete_me))
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(avatar))
        .routes(routes!(upload_avatar).layer(DefaultBodyLimit::max(
            avatar::MAX_UPLOAD + MULTIPART_OVERHEAD,
        )))
}

/// A user as JSON; `email` only for the user themself and admins.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190d1a2-4b5c-7d3e-8f00-00000000a11c", "username": "alice", "email": "alice@example.com",
    "role": "user", "avatar_url": "/users/0190d1a2-4b5c-7d3e-8f00-00000000a11c/avatar?v=0",
    "created_at": "2025-06-01T09:30:00Z"
}))]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
    pub avatar_url: String,
    pub created_at: DateTime<Utc>,
}

impl UserView {
    /// With the email: for the user themself and for admins.
    pub fn private(user: &user::Model) -> Self {
        Self {
            email: Some(user.email.clone()),
            ..Self::public(user)
        }
    }

    pub fn public(user: &user::Model) -> Self {
        Self {
            id: user.id,
            username: user.username.clone(),
            email: None,
            role: user.role,
            avatar_url: avatar_url(user.id, user.avatar_version),
            created_at: user.created_at,
        }
    }

    /// From a directory listing (no email).
    pub fn listed(user: users::Listed) -> Self {
        Self {
            id: user.id,
            avatar_url: avatar_url(user.id, user.avatar_version),
            username: user.username,
            email: None,
            role: user.role,
            created_at: user.created_at,
        }
    }
}

#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    summary = "Find people by name (registered users, no emails), for \"message a person\" and adding members",
    params(SearchPage),
    responses(
        (status = 200, description = "Users, by name", body = Vec<UserView>, example = json!([{
            "id": "0190d1a2-4b5d-7a10-9c00-0000000000b0",
            "username": "bob",
            "role": "user",
            "avatar_url": "/users/0190d1a2-4b5d-7a10-9c00-0000000000b0/avatar?v=0",
            "created_at": "2025-06-01T09:30:00Z"
        }])),
        (status = 401),
        (status = 403, description = "Not allowed (guests)"),
        (status = 422)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// `GET /users?search=&limit=&offset=`: the user directory, without emails.
async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    QueryParams(q): QueryParams<SearchPage>,
) -> Result<Json<Vec<UserView>>> {
    validate(&q)?;
    caller.require_registered()?;
    let found = users::directory(
        &state.db,
        q.search.as_deref(),
        q.limit.unwrap_or(50),
        q.offset.unwrap_or(0),
    )
    .await?;
    Ok(Json(found.into_iter().map(UserView::listed).collect()))
}

#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    summary = "Your profile",
    responses((status = 200, description = "Profile", body = UserView), (status = 401)),
    security(("bearer" = []), ("cookie" = []))
)]
async fn me(State(state): State<AppState>, caller: AuthUser) -> Result<Json<UserView>> {
    let user = account(&state, &caller).await?;
    Ok(Json(UserView::private(&user)))
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "email": "alice@example.org", "current_password": "demo-password"
}))]
struct UpdateMe {
    #[validate(
        email(message = "must be an email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    email: Option<String>,
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    password: Option<String>,
    #[validate(length(max = 128, message = "must be at most 128 characters"))]
    current_password: String,
}

#[utoipa::path(
    patch,
    path = "/users/me",
    tag = "users",
    summary = "Change email and/or password (current_password required)",
    request_body = UpdateMe,
    responses(
        (status = 200, description = "Updated", body = UserView), (status = 401), (status = 403),
        (status = 409), (status = 422),
        (status = 429, description = "Too many password checks (see Retry-After)"),
        (status = 503, description = "Busy hashing passwords (see Retry-After)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// Changes email and/or password; the current password is always required.
async fn update_me(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    caller: AuthUser,
    Valid(req): Valid<UpdateMe>,
) -> Result<impl axum::response::IntoResponse> {
    caller.require_registered()?;
    let user = account(&state, &caller).await?;
    check_password(&state, client, &user, req.current_password).await?;
    if let Some(email) = &req.email
        && users::find_by_email(&state.db, email)
            .await?
            .is_some_and(|other| other.id != user.id)
    {
        return Err(ApiError::conflict(
            "email_taken",
            "that email is already registered",
        ));
    }
    let hash = match req.password {
        Some(new) => {
            let _turn = state.quotas.hashing.enter().await?;
            Some(password::hash(new).await?)
        }
        None => None,
    };
    let changed_password = hash.is_some();
    // A new password ends every other session: the caller's token is kept.
    let user =
        users::update_account(&state.db, user, req.email, hash, Some(caller.claims.jti)).await?;
    let mut cookies = Vec::new();
    if changed_password {
        // A stolen refresh cookie must not outlive the password either: every
        // sign-in's refresh tokens end, and the caller gets a fresh one.
        crate::auth::refresh::revoke_user(&state.db, user.id).await?;
        let fresh =
            crate::auth::refresh::issue(&state.db, user.id, None, state.config.refresh_token_ttl)
                .await?;
        cookies.push((
            axum::http::header::SET_COOKIE,
            crate::auth::cookies::refresh(fresh, state.config.refresh_token_ttl).to_string(),
        ));
        crate::user_events::announce(
            &state,
            UserEvent::SessionsRevoked {
                user_id: user.id,
                jti: None,
                generation: Some(user.token_generation),
                kept: Some(caller.claims.jti),
                reason: RevokeReason::PasswordChanged,
            },
        )
        .await;
    }
    Ok((
        axum::response::AppendHeaders(cookies),
        Json(UserView::private(&user)),
    ))
}

/// The caller's account; a token whose account is gone is refused (401),
/// never "not found".
async fn account(state: &AppState, caller: &AuthUser) -> Result<user::Model> {
    users::find(&state.db, caller.id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account no longer exists"))
}

/// 403 `wrong_password` unless `given` is the account's password. Throttled
/// like a login (per account and address): a stolen token must not become a
/// way to guess the password.
async fn check_password(
    state: &AppState,
    client: std::net::IpAddr,
    user: &user::Model,
    given: String,
) -> Result<()> {
    state.limits.check_login(&user.username, client)?;
    let Some(phc) = user.password_hash.clone() else {
        return Err(ApiError::forbidden(
            "wrong_password",
            "this account has no password",
        ));
    };
    let _turn = state.quotas.hashing.enter().await?;
    if !password::verify(given, phc).await? {
        return Err(ApiError::forbidden(
            "wrong_password",
            "the current password is wrong",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"current_password": "correct-horse-battery"}))]
struct DeleteMe {
    #[validate(length(max = 128, message = "must be at most 128 characters"))]
    current_password: String,
}

#[utoipa::path(
    delete,
    path = "/users/me",
    tag = "users",
    summary = "Delete your account (current_password required); messages stay with sender null",
    request_body = DeleteMe,
    responses(
        (status = 204, description = "Deleted"),
        (status = 401),
        (status = 403, description = "Wrong current password (wrong_password)"),
        (status = 409, description = "The only admin (last_admin): make another admin first"),
        (status = 422),
        (status = 429, description = "Too many password checks (see Retry-After)"),
        (status = 503, description = "Busy hashing passwords (see Retry-After)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// Deletes the account once the password confirms it (a stolen token alone
/// cannot); its messages stay, from a deleted user (`sender: null`). Every
/// node then refuses its tokens and closes its sockets. The only admin
/// stays (409 `last_admin`).
async fn delete_me(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    caller: AuthUser,
    Valid(req): Valid<DeleteMe>,
) -> Result<StatusCode> {
    caller.require_registered()?;
    let user = account(&state, &caller).await?;
    check_password(&state, client, &user, req.current_password).await?;
    users::delete(&state.db, caller.id).await?;
    crate::user_events::announce(&state, UserEvent::AccountDeleted { user_id: caller.id }).await;
    tracing::info!(user = %caller.id, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    summary = "A public profile",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Profile", body = UserView), (status = 401), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
async fn show(
    State(state): State<AppState>,
    _caller: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<UserView>> {
    let user = users::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(UserView::public(&user)))
}

/// `?v=`: the avatar version a URL names.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AvatarVersion {
    /// The version from an `avatar_url`; with the current one the image is cached for good.
    v: Option<i64>,
}

/// Where an avatar is served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"avatar_url": "/users/0190d1a2-4b5c-7d3e-8f00-00000000a11c/avatar?v=1"}))]
struct AvatarUrl {
    avatar_url: String,
}

/// The multipart form of an avatar upload (for the API description).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AvatarUpload {
    /// PNG, JPEG or WebP, at most 1 MiB.
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
}

/// Room for the multipart envelope around a file at the size limit.
const MULTIPART_OVERHEAD: usize = 16 * 1024;

#[utoipa::path(
    put,
    path = "/users/me/avatar",
    tag = "users",
    summary = "Upload an avatar: multipart part `file`, PNG/JPEG/WebP up to 1 MiB",
    request_body(content((AvatarUpload = "multipart/form-data"))),
    responses(
        (status = 200, description = "Stored", body = AvatarUrl), (status = 401), (status = 413),
        (status = 415), (status = 422),
        (status = 503, description = "Too many avatars being decoded (`AVATAR_DECODE_CONCURRENCY`, \
            `AVATAR_DECODE_QUEUE`)")
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// `PUT /users/me/avatar`, multipart with a `file` part.
async fn upload_avatar(
    State(state): State<AppState>,
    caller: AuthUser,
    mut form: Multipart,
) -> Result<Json<AvatarUrl>> {
    caller.require_registered()?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("avatars are at most {} bytes", avatar::MAX_UPLOAD),
        )
    };
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request("invalid_multipart", e.body_text())
        }
    };
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        if field.name() == Some("file") {
            file = Some(field.bytes().await.map_err(unreadable)?);
            break;
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::invalid_field("file", "send the image as the multipart part `file`")
    })?;
    if file.len() > avatar::MAX_UPLOAD {
        return Err(too_large());
    }
    // A few decodes at a time (each may take 64 MiB and a core), a few
    // more waiting; beyond, 503 `busy` with `Retry-After`.
    let _turn = state.quotas.avatars.enter().await?;
    let png = tokio::task::spawn_blocking(move || avatar::normalise(&file))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e: AvatarError| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_image",
                e.to_string(),
            )
        })?;
    let version = users::set_avatar(&state.db, caller.id, png).await?;
    // Sockets opened from now on name the new version in presence frames.
    state.caches.tokens.clear();
    Ok(Json(AvatarUrl {
        avatar_url: avatar_url(caller.id, version),
    }))
}

#[utoipa::path(
    get,
    path = "/users/{id}/avatar",
    tag = "users",
    summary = "The avatar (a generated one until one is set)",
    params(("id" = uuid::Uuid, Path, description = "User id"), AvatarVersion),
    responses(
        (status = 200, description = "PNG image; cached for a year when `v` is the current version, briefly \
            otherwise", body = Vec<u8>, content_type = "image/png"),
        (status = 401), (status = 404)
    ),
    security(("bearer" = []), ("cookie" = []))
)]
/// `GET /users/{id}/avatar?v=<n>`: the uploaded image, or a generated one.
async fn avatar(
    State(state): State<AppState>,
    _caller: AuthUser,
    Path(id): Path<Uuid>,
    QueryParams(q): QueryParams<AvatarVersion>,
) -> Result<impl IntoResponse> {
    let user = users::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    // A URL naming the current version names these bytes for good; any other
    // (none, or an old version whose image is gone) gets the current image,
    // to be asked again soon.
    let cache = if q.v == Some(i64::from(user.avatar_version)) {
        "public, max-age=31536000, immutable"
    } else {
        "private, max-age=60"
    };
    let png = match user.avatar {
        Some(png) => png,
        None => tokio::task::spawn_blocking(move || avatar::generated(id))
            .await
            .map_err(ApiError::internal)?,
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        png,
    ))
}
