//! [`AuthUser`]: the caller of an authenticated route, from a bearer token or the cookie.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
use axum_extra::extract::CookieJar;
use entity::user::Role;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait, Query},
};
use uuid::Uuid;

use super::{COOKIE_NAME, Claims};
use crate::{config::Config, error::ApiError, state::AppState};

/// Where a request's token came from; cookies need the cross-site check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// An authenticated caller: the token checked, not revoked, and the account still there.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    /// The version in the avatar's URL, for the sender this user is on sockets.
    pub avatar_version: i32,
    pub claims: Claims,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_moderator_or_admin(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Moderator)
    }

    /// Refuses guests, whose token is good for one room's socket and messages only.
    pub fn require_registered(&self) -> Result<(), ApiError> {
        if self.role == Role::Guest {
            return Err(ApiError::forbidden(
                "guest_not_allowed",
                "guest tokens cannot do this",
            ));
        }
        Ok(())
    }

    /// Refuses anyone but admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if !self.is_admin() {
            return Err(ApiError::forbidden(
                "admin_only",
                "only an admin can do this",
            ));
        }
        Ok(())
    }

    /// Checks a raw token fully: signature, expiry, revocation, account.
    pub async fn from_token(state: &AppState, token: &str) -> Result<Self, ApiError> {
        let claims = state.tokens.verify(token)?;
        // Signature and expiry are checked on every call; the account and
        // revocation come from the cache while fresh, unless a user event
        // revoked them since (checked again after a read that may have
        // started before the event).
        state.caches.refuse(&claims)?;
        let user = state
            .caches
            .tokens
            .get_or_fetch(claims.jti, || Self::from_database(state, claims.clone()))
            .await?;
        state.caches.refuse(&user.claims)?;
        Ok(user)
    }

    /// Checks verified `claims` against the database alone (no cache): for
    /// sockets that may have missed a user event.
    pub async fn recheck(state: &AppState, claims: Claims) -> Result<Self, ApiError> {
        Self::from_database(state, claims).await
    }

    /// The account of verified `claims`, if the token is not revoked.
    async fn from_database(state: &AppState, claims: Claims) -> Result<Self, ApiError> {
        // One query on the common path: the account, if the token is not revoked.
        let not_revoked = Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(entity::revoked_token::Entity)
                .and_where(entity::revoked_token::Column::Jti.eq(claims.jti))
                .to_owned(),
        )
        .not();
        let user = entity::User::find_by_id(claims.sub)
            .filter(not_revoked)
            .one(&state.db)
            .await?;
        let Some(user) = user else {
            // Say which: logged out, or the account is gone.
            if entity::RevokedToken::find_by_id(claims.jti)
                .one(&state.db)
                .await?
                .is_some()
            {
                return Err(ApiError::unauthorized(
                    "token_revoked",
                    "the token was logged out",
                ));
            }
            return Err(ApiError::unauthorized(
                "invalid_token",
                "the account no longer exists",
            ));
        };
        if claims.generation != user.token_generation && user.kept_token != Some(claims.jti) {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "the password was changed since this token was issued",
            ));
        }
        Ok(Self {
            id: user.id,
            username: user.username,
            role: user.role,
            avatar_version: user.avatar_version,
            claims,
        })
    }
}

/// The token of a request: `Authorization: Bearer` first, then the cookie.
pub fn token_from_headers(headers: &HeaderMap) -> Option<(String, TokenSource)> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some((token.trim().to_owned(), TokenSource::Header));
        }
    }
    CookieJar::from_headers(headers)
        .get(COOKIE_NAME)
        .map(|c| (c.value().to_owned(), TokenSource::Cookie))
}

/// True if the request's `Origin` (if any) may act with the user's cookie: the
/// server's own host, or one listed in `ALLOWED_ORIGINS` (`*` allows all).
pub fn origin_allowed(headers: &HeaderMap, config: &Config) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser, or a same-origin GET
    };
    if config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (token, source) = token_from_headers(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "send a bearer token or log in for the cookie",
            )
        })?;
        if source == TokenSource::Cookie && !origin_allowed(&parts.headers, &state.config) {
            return Err(ApiError::forbidden(
                "origin_not_allowed",
                "cross-site requests cannot use the cookie",
            ));
        }
        Self::from_token(state, &token).await
    }
}

/// Authenticates a WebSocket upgrade: the token from the `Authorization`
/// header, then the `token` query parameter, then the cookie; and a browser
/// `Origin` must be allowed whatever the token's source.
pub async fn socket_user(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<String>,
) -> Result<AuthUser, ApiError> {
    if !origin_allowed(headers, &state.config) {
        return Err(ApiError::forbidden(
            "origin_not_allowed",
            "this Origin may not open sockets here",
        ));
    }
    let token = token_from_headers(headers)
        .filter(|(_, source)| *source == TokenSource::Header)
        .map(|(token, _)| token)
        .or(query_token)
        .or_else(|| token_from_headers(headers).map(|(token, _)| token))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "send a bearer token, a token query parameter, or the cookie",
            )
        })?;
    AuthUser::from_token(state, &token).await
}
