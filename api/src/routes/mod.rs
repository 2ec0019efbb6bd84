//! The HTTP surface: one module per resource, each with its own `router()`.

mod admin;
mod auth;
mod echo;
mod guest;
mod health;
mod messages;
mod problem;
pub mod rooms;
mod user_ws;
mod users;
mod web;
mod ws;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::DefaultBodyLimit,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
};

use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::{auth::cookies::REFRESH_COOKIE, error::ApiError, state::AppState};

/// Largest JSON body any route reads, unless `MAX_MESSAGE_BYTES` asks for more.
const BODY_LIMIT: usize = 64 * 1024;

/// The most bytes JSON may write for one byte of content (`\u0001`).
const JSON_ESCAPE_FACTOR: usize = 6;

/// The body limit: [`BODY_LIMIT`], or room for a message of
/// `MAX_MESSAGE_BYTES` however its JSON escapes it, so that every message
/// ingest would accept can be sent.
fn body_limit(max_message_bytes: u32) -> usize {
    BODY_LIMIT.max(max_message_bytes as usize * JSON_ESCAPE_FACTOR + 4096)
}
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Publishes a room event to every node's sockets. The change it reports is
/// already committed, so a broker outage only delays the sockets' reaction
/// (they learn of it when they reconnect); it is logged, not returned.
pub(crate) async fn announce(state: &AppState, event: consumer::event::RoomEvent) {
    if let Err(err) = state
        .broker
        .publish_event(event.room_id(), &event.to_bytes())
        .await
    {
        tracing::warn!(error = %err, room = %event.room_id(), "room event not published");
    }
}

/// The description of the API, completed by every route's annotation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "roomcast",
        description = "Real-time rooms over WebSocket, with every message through a broker. \
                       Errors are application/problem+json with a stable `code`."
    ),
    modifiers(&Security),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "auth", description = "Accounts, tokens, guests"),
        (name = "users", description = "Profiles and avatars"),
        (name = "admin", description = "User administration (admins)"),
        (name = "rooms", description = "Rooms and members"),
        (name = "messages", description = "Publishing and history"),
        (name = "sockets", description = "WebSocket endpoints and the echo channel"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::COOKIE_NAME))),
        );
        components.add_security_scheme(
            "refresh_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(REFRESH_COOKIE))),
        );
    }
}

/// Answers every operation can give without its annotation saying so: 400
/// when the request cannot be read (bad JSON, a bad path parameter); 422 for
/// a body or query parameter of the wrong shape; and, for operations with a
/// body, 415 for a body of the wrong media type. And what every error answer
/// is: an annotation names the status (`(status = 403)`), and this gives it
/// the problem+json body and, unless the annotation has its own, the usual
/// description.
struct CommonErrors;

/// The description of an error status an annotation leaves without one.
fn error_description(status: &str) -> &'static str {
    match status {
        "400" => "The request cannot be read",
        "401" => "No valid token",
        "403" => "Not allowed",
        "404" => "Not found",
        "409" => "Conflict",
        "413" => "Too large",
        "415" => "Unsupported media type",
        "422" => "Invalid input",
        "429" => "Rate limited (see Retry-After)",
        "503" => "Unavailable (see Retry-After)",
        _ => "Error",
    }
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let readable = operation.request_body.is_some() || operation.parameters.is_some();
                let queried = operation.parameters.iter().flatten().any(|p| {
                    matches!(p, utoipa::openapi::RefOr::T(p)
                            if p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                });
                let responses = &mut operation.responses.responses;
                for (status, response) in responses.iter_mut() {
                    let utoipa::openapi::RefOr::T(response) = response else {
                        continue;
                    };
                    if !(status.starts_with('4') || status.starts_with('5')) {
                        continue;
                    }
                    if response.description.is_empty() {
                        response.description = error_description(status).to_owned();
                    }
                    if response.content.is_empty() {
                        response.content = problem("").content;
                    }
                }
                if readable {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| problem("The request cannot be read").into());
                }
                if operation.request_body.is_some() || queried {
                    responses
                        .entry("422".into())
                        .or_insert_with(|| problem("Invalid input").into());
                }
                if operation.request_body.is_some() {
                    responses
                        .entry("415".into())
                        .or_insert_with(|| problem("Unsupported media type").into());
                }
            }
        }
    }
}

/// Every route of the API, with its OpenAPI description; a route cannot be
/// added without one (see the `openapi` tests).
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(auth::router())
        .merge(users::router())
        .merge(admin::router())
        .merge(rooms::router())
        .merge(messages::router())
        .merge(guest::router())
        .merge(ws::router())
        .merge(user_ws::router())
        .merge(echo::router())
        .merge(web::router())
        .merge(crate::metrics::router())
        .split_for_parts();
    // After the merge: the routes' operations exist only now.
    CommonErrors.modify(&mut spec);
    (router, spec)
}

/// The Swagger UI at `/docs` loads only from this server: its default
/// validator badge would send the description to an outside validator
/// whenever the page is not served from localhost.
fn swagger_config() -> utoipa_swagger_ui::Config<'static> {
    utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none")
}

/// The whole application's router.
pub fn router(state: AppState) -> Router {
    let (api, spec) = api();
    let spec = Arc::new(spec);
    Router::new()
        .merge(api)
        .route("/openapi.json", get(move || async move { Json(spec.as_ref().clone()) }))
        .merge(SwaggerUi::new("/docs").config(swagger_config()))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .route_layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(DefaultBodyLimit::max(body_limit(state.config.max_message_bytes)))
        .layer(axum::middleware::from_fn(problem::refuse_nul))
        .layer(axum::middleware::map_response(problem::ensure_problem_json))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        // One line per answered request at info (status, latency, and the span's
        // method, path and request id): the access log.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Tells `ClientAddr` where the client's address comes from.
        .layer(state.config.client_ip_source.clone().into_extension())
        .with_state(state)
}
