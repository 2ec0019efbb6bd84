//! Guest tokens (`GUEST_TOKENS=true`): `POST /generate-token` gives a one-hour
//! token for one room, for quick trials from Postman or a widget.
//!
//! A guest is a passwordless account with the `guest` role; asking again with
//! the same username and email gives the same account a new token. An unknown
//! room is created as a private room owned by the guest, like a socket does.
//! Tokens are limited per client address (`GUEST_TOKEN_BURST`,
//! `GUEST_TOKENS_PER_MINUTE`), and a request refused after its account was
//! made (a full room, a group room, a bad name, a quota) takes the account
//! back: a refusal creates no account and holds no name.

use std::time::Duration;

use axum::{Json, extract::State};
use entity::user::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    access,
    client_addr::ClientAddr,
    error::{ApiError, Result},
    extract::Valid,
    queries::users,
    state::AppState,
};

pub const GUEST_TOKEN_TTL: Duration = Duration::from_secs(3600);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(generate_token))
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "visitor-7", "email": "visitor@example.com", "room_id": "public"}))]
struct GuestRequest {
    #[validate(custom(function = "crate::domain::validate_username"))]
    username: String,
    #[validate(
        email(message = "must be an email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    email: String,
    /// The room's UUID or name.
    #[validate(length(min = 1, max = 64, message = "must be 1 to 64 characters"))]
    room_id: String,
}

/// A guest token and the room it is for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "token": concat!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
        "eyJzdWIiOiIwMTkwZDFhMi00YjVjLTdkM2UtOGYwMC0wMDAwMDAwMGExMWMifQ.c2lnbmF0dXJl"
    ),
    "room_id": "0190d1a2-6c00-7000-8000-000000000001", "expires_in": 3600
}))]
struct GuestToken {
    token: String,
    room_id: Uuid,
    expires_in: u64,
}

#[utoipa::path(
    post,
    path = "/generate-token",
    tag = "auth",
    summary = "A one-hour guest token for one room (GUEST_TOKENS=true; 404 otherwise)",
    request_body = GuestRequest,
    responses(
        (status = 200, description = "The token", body = GuestToken), (status = 404),
        (status = 409), (status = 403), (status = 422),
        (status = 429, description = "Too many guest tokens from this address (`GUEST_TOKEN_BURST`, \
            `GUEST_TOKENS_PER_MINUTE`)")
    )
)]
async fn generate_token(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Valid(req): Valid<GuestRequest>,
) -> Result<Json<GuestToken>> {
    if !state.config.guest_tokens {
        return Err(ApiError::not_found("route"));
    }
    state.quotas.check_guest_token(client)?;
    let (user, created) = match users::find_by_username(&state.db, &req.username).await? {
        Some(user)
            if user.role == Role::Guest
                && user.email == req.email.to_lowercase()
                && !guessable(&user) =>
        {
            (user, false)
        }
        Some(_) => {
            return Err(ApiError::conflict(
                "username_taken",
                "that username belongs to someone else",
            ));
        }
        None => {
            let new = users::NewUser {
                username: req.username,
                email: req.email,
                password_hash: None,
                role: Role::Guest,
            };
            (users::create(&state.db, new).await?, true)
        }
    };
    let room = match access::enter_as_guest(&state, &user, &req.room_id).await {
        Ok(room) => room,
        Err(refused) => {
            // Made for this request alone: a refusal leaves no account behind.
            if created && let Err(err) = users::delete(&state.db, user.id).await {
                tracing::warn!(error = %err, user = %user.id, "guest account of a refused request not deleted");
            }
            return Err(refused);
        }
    };
    let (token, _) = state.tokens.issue(&user, GUEST_TOKEN_TTL, Some(room.id))?;
    Ok(Json(GuestToken {
        token,
        room_id: room.id,
        expires_in: GUEST_TOKEN_TTL.as_secs(),
    }))
}

/// A guest's account is given to whoever names it with its address, so an
/// address anyone can guess from the name is no key: such an account (the
/// web client made these, `<name>@guests.invalid`, before it kept a key of
/// the browser's own) is never given out again; its name answers 409.
fn guessable(guest: &entity::user::Model) -> bool {
    guest.email == format!("{}@guests.invalid", guest.username.to_lowercase())
}
