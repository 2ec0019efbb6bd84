//! The web client: static files from `web/`, built into the binary.
//!
//! Three files, no build step: `/` (index.html), `/app.js` and `/style.css`.
//! Every answer carries a Content-Security-Policy that allows only this
//! origin (plus WebSocket connections to it), so the page can load nothing
//! from anywhere else and runs no inline script or style.

use axum::{
    http::{HeaderName, HeaderValue, header},
    response::IntoResponse,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../web/style.css");

/// Only this origin; sockets to it (`ws:`/`wss:`, as `'self'` does not cover
/// them in every browser); `data:` images for the empty favicon.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; font-src 'self'; \
    manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'; object-src 'none'";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(app_js))
        .routes(routes!(style_css))
}

/// The headers every web client file is served with.
fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: revalidate rather than trust a stale copy.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

#[utoipa::path(
    get,
    path = "/",
    tag = "web",
    summary = "The web client",
    responses((status = 200, description = "The web client's page", body = String, content_type = "text/html"))
)]
/// The web client's page; it loads `/app.js` and `/style.css` and nothing from elsewhere.
async fn index() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), INDEX_HTML)
}

#[utoipa::path(
    get,
    path = "/app.js",
    tag = "web",
    summary = "The web client's script",
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
)]
async fn app_js() -> impl IntoResponse {
    (headers("text/javascript; charset=utf-8"), APP_JS)
}

#[utoipa::path(
    get,
    path = "/style.css",
    tag = "web",
    summary = "The web client's style sheet",
    responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
)]
async fn style_css() -> impl IntoResponse {
    (headers("text/css; charset=utf-8"), STYLE_CSS)
}
