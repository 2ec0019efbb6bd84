//! Register, log in (JSON or OAuth2 password form), stay signed in (refresh), log out.

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{AppendHeaders, IntoResponse},
};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use chrono::{TimeZone, Utc};
use consumer::event::{RevokeReason, UserEvent};
use entity::user::Role;
use serde::{Deserialize, Serialize};
use validator::Validate;

use utoipa_axum::{router::OpenApiRouter, routes};

use super::users::UserView;

use crate::{
    auth::{
        AuthUser, cookies, password,
        refresh::{self, Refreshed},
    },
    client_addr::ClientAddr,
    error::{ApiError, Result},
    extract::{Valid, body_bytes, is_json, parse_json},
    queries::{tokens, users},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(refresh))
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "dave", "email": "dave@example.com", "password": "correct-horse-battery"}))]
pub struct RegisterRequest {
    #[validate(custom(function = "crate::domain::validate_username"))]
    pub username: String,
    #[validate(
        email(message = "must be an email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    pub email: String,
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    pub password: String,
}

#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    summary = "Create an account",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Created", body = UserView), (status = 409), (status = 422),
        (status = 400, description = "Malformed request"),
        (status = 403, description = "A cross-site request (`origin_not_allowed`)"),
        (status = 429, description = "Rate limited (see Retry-After)"),
        (status = 503, description = "Busy hashing passwords (see Retry-After)")
    )
)]
async fn register(
    State(state): State<AppState>,
    _: SameSite,
    ClientAddr(client): ClientAddr,
    Valid(req): Valid<RegisterRequest>,
) -> Result<impl IntoResponse> {
    state.quotas.check_register(client)?;
    let password_hash = {
        let _turn = state.quotas.hashing.enter().await?;
        password::hash(req.password).await?
    };
    let user = users::create(
        &state.db,
        users::NewUser {
            username: req.username,
            email: req.email,
            password_hash: Some(password_hash),
            role: Role::User,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(UserView::private(&user))))
}

/// The JSON login body, and the OAuth2 password form (`grant_type=password`).
/// As JSON, like every body, it may hold only these fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "alice", "password": "demo-password"}))]
struct LoginRequest {
    username: String,
    password: String,
    #[serde(default)]
    grant_type: Option<String>,
    // OAuth2 clients send these; they mean nothing here.
    #[serde(default)]
    #[allow(dead_code)]
    scope: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    client_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    client_secret: Option<String>,
}

/// The OAuth2 password form, whose other parameters a token endpoint must
/// ignore (RFC 6749 §3.2).
#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    grant_type: Option<String>,
}

impl From<LoginForm> for LoginRequest {
    fn from(form: LoginForm) -> Self {
        Self {
            username: form.username,
            password: form.password,
            grant_type: form.grant_type,
            scope: None,
            client_id: None,
            client_secret: None,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "access_token": concat!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
        "eyJzdWIiOiIwMTkwZDFhMi00YjVjLTdkM2UtOGYwMC0wMDAwMDAwMGExMWMifQ.c2lnbmF0dXJl"
    ),
    "token_type": "bearer", "expires_in": 1800
}))]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    summary = "Log in (JSON or the OAuth2 password form); sets the roomcast_token cookie",
    request_body(content((LoginRequest = "application/json"), (LoginRequest = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "A bearer token", body = TokenResponse), (status = 401),
        (status = 403, description = "A cross-site request (`origin_not_allowed`)"),
        (status = 429, description = "Rate limited (see Retry-After)"), (status = 422),
        (status = 503, description = "Busy hashing passwords (see Retry-After)")
    )
)]
async fn login(
    State(state): State<AppState>,
    _: SameSite,
    ClientAddr(client): ClientAddr,
    jar: CookieJar,
    req: Request,
) -> Result<impl IntoResponse> {
    let form = is_form(req.headers());
    if !form && !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON or an application/x-www-form-urlencoded form",
        ));
    }
    let bytes = body_bytes(req, &()).await?;
    let login: LoginRequest = if form {
        serde_urlencoded::from_bytes::<LoginForm>(&bytes)
            .map_err(|e| ApiError::invalid_field("body", format!("not a valid login form: {e}")))?
            .into()
    } else {
        parse_json(&bytes)?
    };
    if login.grant_type.as_deref().is_some_and(|g| g != "password") {
        return Err(ApiError::invalid_field(
            "grant_type",
            "must be \"password\"",
        ));
    }
    if login.username.len() > 254 || login.password.len() > 128 {
        return Err(invalid_credentials());
    }
    state.limits.check_login(&login.username, client)?;

    let user = if login.username.contains('@') {
        users::find_by_email(&state.db, &login.username).await?
    } else {
        users::find_by_username(&state.db, &login.username).await?
    };
    let turn = state.quotas.hashing.enter().await?;
    let Some((user, phc)) = user.and_then(|u| u.password_hash.clone().map(|h| (u, h))) else {
        password::dummy_verify(login.password).await;
        return Err(invalid_credentials());
    };
    if !password::verify(login.password, phc).await? {
        return Err(invalid_credentials());
    }
    drop(turn);

    let refresh = refresh::issue(&state.db, user.id, None, state.config.refresh_token_ttl).await?;
    let (jar, body) = signed_in(&state, &user, jar)?;
    Ok((
        jar,
        set_cookies([cookies::refresh(refresh, state.config.refresh_token_ttl)]),
        body,
    ))
}

/// Cookies set after the jar's: the access cookie stays the first
/// `Set-Cookie` of a response, whatever else it sets.
fn set_cookies<const N: usize>(
    cookies: [Cookie<'static>; N],
) -> AppendHeaders<Vec<(header::HeaderName, String)>> {
    AppendHeaders(
        cookies
            .into_iter()
            .map(|c| (header::SET_COOKIE, c.to_string()))
            .collect(),
    )
}

/// The answer to a login or a refresh: a new access token, in the body and
/// in the cookie.
fn signed_in(
    state: &AppState,
    user: &entity::user::Model,
    jar: CookieJar,
) -> Result<(CookieJar, Json<TokenResponse>)> {
    let ttl = state.config.access_token_ttl;
    let (token, _) = state.tokens.issue(user, ttl, None)?;
    let cookie = cookies::access(token.clone(), ttl);
    let body = TokenResponse {
        access_token: token,
        token_type: "bearer",
        expires_in: ttl.as_secs(),
    };
    Ok((jar.add(cookie), Json(body)))
}

#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    summary = "Stay signed in: a new access token for the refresh cookie, which is rotated",
    description = "Login sets an HttpOnly `roomcast_refresh` cookie (path `/auth`, `SameSite=Strict`, \
        lifetime `REFRESH_TOKEN_TTL`, 14 days by default). This call exchanges it for a new access token \
        (body and `roomcast_token` cookie, as login gives) and a new refresh cookie; the old one is spent. \
        A spent refresh token used again more than 10 s after its rotation ends that sign-in everywhere \
        (`token_reused`); within 10 s (two tabs refreshing at once) it gets an access token and no new \
        refresh cookie. Logout revokes the sign-in's refresh tokens.",
    responses(
        (status = 200, description = "A new access token", body = TokenResponse),
        (status = 401, description = "No refresh cookie (`missing_token`), or one that is unknown \
            (`invalid_token`), expired (`token_expired`), revoked by logout (`token_revoked`) or reused \
            (`token_reused`)"),
        (status = 403, description = "A cross-site request (`origin_not_allowed`)")
    ),
    security(("refresh_cookie" = []))
)]
/// `POST /auth/refresh`: rotates the refresh cookie and issues an access token.
async fn refresh(
    State(state): State<AppState>,
    _: SameSite,
    jar: CookieJar,
) -> Result<impl IntoResponse> {
    let token = jar
        .get(cookies::REFRESH_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing_token", "no refresh cookie: log in"))?;
    let refreshed = refresh::refresh(&state.db, &token, state.config.refresh_token_ttl).await;
    let (user_id, next) = match refreshed {
        Ok(Refreshed::Rotated { user_id, token }) => (user_id, Some(token)),
        Ok(Refreshed::Concurrent { user_id }) => (user_id, None),
        // A dead refresh cookie is of no use to keep.
        Err(err) => return Ok((set_cookies([cookies::cleared_refresh()]), err).into_response()),
    };
    let user = users::find(&state.db, user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account no longer exists"))?;
    let (jar, body) = signed_in(&state, &user, jar)?;
    Ok(match next {
        Some(token) => (
            jar,
            set_cookies([cookies::refresh(token, state.config.refresh_token_ttl)]),
            body,
        )
            .into_response(),
        None => (jar, body).into_response(),
    })
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "wrong username or password")
}

/// A request from this site's pages, from a site in `ALLOWED_ORIGINS`, or
/// from a client that sends no `Origin` (curl, Postman, backends); another
/// site's is refused (403 `origin_not_allowed`) before its body is read. A
/// page elsewhere must not sign its visitor in as someone else (login CSRF:
/// their cookies would be the attacker's account), nor spend or end the
/// refresh cookie.
struct SameSite;

impl axum::extract::FromRequestParts<AppState> for SameSite {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self> {
        same_site(&parts.headers, state).map(|()| SameSite)
    }
}

/// What [`SameSite`] asks, for a handler that asks it only sometimes.
fn same_site(headers: &HeaderMap, state: &AppState) -> Result<()> {
    if crate::auth::extractor::origin_allowed(headers, &state.config) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "origin_not_allowed",
            "cross-site requests cannot sign in or use the cookie",
        ))
    }
}

#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    summary = "Revoke this token and this sign-in's refresh tokens; clear both cookies",
    description = "With an access token that no longer works (expired), the refresh cookie alone \
        is enough: its sign-in is ended all the same, so a tab left open past its token's life \
        still signs out.",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Neither a working access token nor a refresh cookie"),
        (status = 403, description = "A cross-site request with only the refresh cookie (`origin_not_allowed`)")
    ),
    security(("bearer" = []), ("cookie" = []), ("refresh_cookie" = []))
)]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: std::result::Result<AuthUser, ApiError>,
    jar: CookieJar,
) -> Result<impl IntoResponse> {
    let user = match user {
        Ok(user) => user,
        // No working access token: the refresh cookie still names a sign-in
        // to end (a token expires while its tab stays open; that sign-in
        // would otherwise outlive the logout by its 14 days).
        Err(refused) => {
            let Some(refresh) = jar
                .get(cookies::REFRESH_COOKIE)
                .filter(|c| !c.value().is_empty())
            else {
                return Err(refused);
            };
            same_site(&headers, &state)?;
            refresh::revoke_family_of(&state.db, refresh.value()).await?;
            return Ok(signed_out(jar).into_response());
        }
    };
    let expires_at = Utc
        .timestamp_opt(user.claims.exp, 0)
        .single()
        .unwrap_or_else(Utc::now);
    tokens::revoke(&state.db, user.claims.jti, expires_at).await?;
    // Rows of tokens that expired since are dead weight: logouts are rare
    // enough to sweep them each time (a timer does too).
    if let Err(err) = tokens::prune_expired(&state.db).await {
        tracing::warn!(error = %err, "pruning expired revoked tokens failed");
    }
    // Every node refuses it, and closes its sockets, before this answers.
    crate::user_events::announce(
        &state,
        UserEvent::SessionsRevoked {
            user_id: user.id,
            jti: Some(user.claims.jti),
            generation: None,
            kept: None,
            reason: RevokeReason::Logout,
        },
    )
    .await;
    // This sign-in's refresh tokens end with it.
    if let Some(refresh) = jar.get(cookies::REFRESH_COOKIE) {
        refresh::revoke_family_of(&state.db, refresh.value()).await?;
    }
    Ok(signed_out(jar).into_response())
}

#[utoipa::path(
    post,
    path = "/auth/logout-all",
    tag = "auth",
    summary = "Log out everywhere: every token and refresh cookie of the caller stops working",
    responses((status = 204, description = "Every sign-in ended"), (status = 401)),
    security(("bearer" = []), ("cookie" = []))
)]
/// Ends every sign-in of the caller: all access tokens (the next token
/// generation), all refresh tokens, and every open socket on every node.
async fn logout_all(
    State(state): State<AppState>,
    caller: AuthUser,
    jar: CookieJar,
) -> Result<impl IntoResponse> {
    caller.require_registered()?;
    let user = users::find(&state.db, caller.id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the account no longer exists"))?;
    let user = users::end_sessions(&state.db, user).await?;
    refresh::revoke_user(&state.db, user.id).await?;
    crate::user_events::announce(
        &state,
        UserEvent::SessionsRevoked {
            user_id: user.id,
            jti: None,
            generation: Some(user.token_generation),
            kept: None,
            reason: RevokeReason::LogoutEverywhere,
        },
    )
    .await;
    Ok(signed_out(jar))
}

/// A 204 that clears both cookies, whether or not the request carried them.
fn signed_out(jar: CookieJar) -> impl IntoResponse {
    (
        jar.add(cookies::cleared_access()),
        set_cookies([cookies::cleared_refresh()]),
        StatusCode::NO_CONTENT,
    )
}
