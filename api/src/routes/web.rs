//! The web client: static files from `web/`, built into the binary.
//!
//! No build step: `/` (index.html, also served at `/admin`, the admin
//! panel's address), `/style.css`, and the client's JavaScript modules under
//! `/js/`, one per screen ([`MODULES`]; a new file there is listed there too).
//! Every answer carries a Content-Security-Policy that allows only this
//! origin (plus WebSocket connections to it), so the page can load nothing
//! from anywhere else and runs no inline script or style.

use axum::{
    extract::Path,
    http::{HeaderName, HeaderValue, header},
    response::IntoResponse,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{ApiError, Result},
    state::AppState,
};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const STYLE_CSS: &str = include_str!("../../../web/style.css");

/// The client's ES modules, served at `/js/<name>`: `main.js` is the entry.
const MODULES: &[(&str, &str)] = &[
    ("account.js", include_str!("../../../web/js/account.js")),
    ("admin.js", include_str!("../../../web/js/admin.js")),
    ("api.js", include_str!("../../../web/js/api.js")),
    ("auth.js", include_str!("../../../web/js/auth.js")),
    ("chat.js", include_str!("../../../web/js/chat.js")),
    ("dom.js", include_str!("../../../web/js/dom.js")),
    ("echo.js", include_str!("../../../web/js/echo.js")),
    ("guest.js", include_str!("../../../web/js/guest.js")),
    ("main.js", include_str!("../../../web/js/main.js")),
    ("members.js", include_str!("../../../web/js/members.js")),
    ("people.js", include_str!("../../../web/js/people.js")),
    ("rooms.js", include_str!("../../../web/js/rooms.js")),
];

/// Only this origin; sockets to it (`ws:`/`wss:`, as `'self'` does not cover
/// them in every browser); `data:` images for the empty favicon.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; font-src 'self'; \
    manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'; object-src 'none'";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(admin))
        .routes(routes!(module))
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
/// The web client's page; it loads `/js/main.js` (which imports the other
/// modules) and `/style.css`, and nothing from elsewhere.
async fn index() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), INDEX_HTML)
}

#[utoipa::path(
    get,
    path = "/admin",
    tag = "web",
    summary = "The web client's admin panel (the same page; the client shows the panel to admins only)",
    responses((status = 200, description = "The web client's page", body = String, content_type = "text/html"))
)]
async fn admin() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), INDEX_HTML)
}

#[utoipa::path(
    get,
    path = "/js/{name}",
    tag = "web",
    summary = "One of the web client's JavaScript modules",
    params(("name" = String, Path, description = "The module's file name, e.g. `main.js`")),
    responses(
        (status = 200, description = "JavaScript", body = String, content_type = "text/javascript"),
        (status = 404)
    ),
)]
async fn module(Path(name): Path<String>) -> Result<impl IntoResponse> {
    MODULES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, source)| (headers("text/javascript; charset=utf-8"), *source))
        .ok_or_else(|| ApiError::not_found("module"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The relative imports (`from './x.js'`) of a module.
    fn imports(source: &str) -> Vec<&str> {
        source
            .match_indices("from './")
            .filter_map(|(at, _)| source[at + 8..].split('\'').next())
            .collect()
    }

    #[test]
    fn every_module_the_client_imports_is_served() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/js/main.js">"#));
        let served: Vec<&str> = MODULES.iter().map(|(name, _)| *name).collect();
        for (name, source) in MODULES {
            for import in imports(source) {
                assert!(
                    served.contains(&import),
                    "{name} imports {import}, which is not served"
                );
            }
        }
    }

    #[test]
    fn every_file_in_web_js_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/js");
        for entry in std::fs::read_dir(&dir).expect("web/js") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                MODULES.iter().any(|(file, _)| *file == name),
                "web/js/{name} is not in MODULES"
            );
        }
    }
}
