//! The OpenAPI description: complete, served, and matching the router.

use serde_json::Value;

use crate::helpers::{Backend, spawn_app};

/// Every route is registered through `utoipa_axum::routes!`, which puts it in
/// the description; a plain axum `.route(` would slip past it. The only
/// exception is the description itself.
#[test]
fn every_route_is_registered_with_its_description() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut files = vec![dir.join("metrics.rs")];
    files.extend(
        std::fs::read_dir(dir.join("routes"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains(".route(") && !line.contains("\"/openapi.json\"") {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes outside the OpenAPI description:\n{}",
        offenders.join("\n")
    );
}

async fn the_description_covers_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spec: Value = res.json().await.unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().unwrap();
    for expected in [
        "/auth/register",
        "/auth/login",
        "/auth/logout",
        "/generate-token",
        "/users/me",
        "/users/me/avatar",
        "/users/{id}",
        "/users/{id}/avatar",
        "/admin/users",
        "/admin/users/{id}",
        "/rooms",
        "/rooms/{room}",
        "/rooms/{room}/members",
        "/rooms/{room}/members/{user_id}",
        "/rooms/{room}/join",
        "/message",
        "/rooms/{room}/messages",
        "/messages/{id}",
        "/ws/{room}",
        "/updates/{room}",
        "/echo",
        "/echo/history",
        "/echo_ws",
        "/pub_ws",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not described");
    }
    assert!(spec["components"]["schemas"]["Problem"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    // A message says whether a null sender is a deleted account.
    let message = &spec["components"]["schemas"]["MessageView"];
    assert_eq!(
        message["properties"]["sender_deleted"]["type"], "boolean",
        "{message}"
    );
    assert!(
        message["required"]
            .as_array()
            .is_some_and(|r| r.contains(&Value::from("sender_deleted"))),
        "{message}"
    );
    // Unreadable requests and wrong media types are described where they can happen.
    assert!(paths["/auth/login"]["post"]["responses"]["415"].is_object());
    assert!(paths["/rooms"]["get"]["responses"]["400"].is_object());
    assert!(paths["/messages/{id}"]["patch"]["responses"]["400"].is_object());

    // Every described operation exists in the router: none falls through to
    // the "route not found" fallback or gets 405.
    let id = uuid::Uuid::new_v4().to_string();
    for (path, item) in paths {
        let concrete = path
            .replace("{room}", "public")
            .replace("{id}", &id)
            .replace("{user_id}", &id);
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404 && body.contains("route not found")),
                "{method} {path} is not routed"
            );
        }
    }
}

/// The values of the `src="…"` and `href="…"` attributes of an HTML page.
fn attribute_urls(html: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attr in ["src=", "href="] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            if let Some(value) = rest[1..].split(quote).next() {
                urls.push(value.to_owned());
            }
        }
    }
    urls
}

/// The targets of the `url(…)` references of a stylesheet, `data:` ones left out.
fn stylesheet_urls(css: &str) -> Vec<String> {
    css.match_indices("url(")
        .filter_map(|(at, _)| css[at + 4..].split(')').next())
        .map(|v| v.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|v| !v.starts_with("data:"))
        .collect()
}

/// Whether a URL the browser would fetch leaves `own` (`host:port`): an
/// absolute http(s) URL to another authority, or a scheme-relative one.
fn leaves_host(url: &str, own: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let authority = if let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .or_else(|| lower.strip_prefix("//"))
    {
        rest.split(['/', '?', '#']).next().unwrap_or_default()
    } else {
        return false;
    };
    authority != own
}

/// The string value of `"key": "…"` in the configuration the initializer
/// inlines (pretty JSON spliced into a JavaScript object).
fn config_field(initializer: &str, key: &str) -> Option<String> {
    let at = initializer.find(&format!("\"{key}\":"))?;
    let rest = initializer[at + key.len() + 3..].trim_start();
    let value = rest.strip_prefix('"')?;
    Some(value.split('"').next()?.to_owned())
}

async fn swagger_ui_is_served_without_other_hosts(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let own = app.addr.to_string();
    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "not the Swagger UI page");

    // Everything the page references is served here, and nothing it
    // references (nor what its stylesheets reference) is elsewhere.
    let referenced = attribute_urls(&html);
    for asset in [
        "swagger-initializer.js",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    ] {
        assert!(
            referenced.iter().any(|u| u.ends_with(asset)),
            "the page does not load {asset}: {referenced:?}"
        );
    }
    let mut initializer = None;
    for url in &referenced {
        assert!(!leaves_host(url, &own), "the page loads {url}");
        let path = format!("/docs/{}", url.trim_start_matches("./"));
        let res = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        if url.ends_with(".css") {
            let css = res.text().await.unwrap();
            for target in stylesheet_urls(&css) {
                assert!(!leaves_host(&target, &own), "{path} loads {target}");
            }
        } else if url.ends_with("swagger-initializer.js") {
            initializer = Some(res.text().await.unwrap());
        }
    }

    // The configuration: our description, no online validator, and no URL of
    // another host anywhere in the initializer (it is ours, not the bundle's).
    let initializer = initializer.expect("the initializer was fetched");
    assert_eq!(
        config_field(&initializer, "url").as_deref(),
        Some("/openapi.json"),
        "the UI does not load our description:\n{initializer}"
    );
    assert_eq!(
        config_field(&initializer, "validatorUrl").as_deref(),
        Some("none"),
        "the online validator is on:\n{initializer}"
    );
    if let Some(redirect) = config_field(&initializer, "oauth2RedirectUrl") {
        assert!(
            !leaves_host(&redirect, &own),
            "OAuth redirect to {redirect}"
        );
    }
    for scheme in ["http://", "https://"] {
        for (at, _) in initializer.match_indices(scheme) {
            let url: String = initializer[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ')' | ','))
                .collect();
            assert!(!leaves_host(&url, &own), "the initializer names {url}");
        }
    }
}

crate::on_both_backends!(
    the_description_covers_every_route,
    swagger_ui_is_served_without_other_hosts
);
