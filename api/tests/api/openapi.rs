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

async fn swagger_ui_is_served_without_other_hosts(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "not the Swagger UI page");
    let mut assets = vec![html.clone()];
    for asset in [
        "swagger-initializer.js",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    ] {
        let res = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(html.contains(asset), "the page does not load {asset}");
        assets.push(res.text().await.unwrap());
    }
    // The page and what it loads point at no other host.
    for text in &assets[..2] {
        for scheme in ["http://", "https://"] {
            assert!(
                !text.contains(&format!("src=\"{scheme}"))
                    && !text.contains(&format!("href=\"{scheme}")),
                "a link to another host"
            );
        }
    }
    assert!(
        assets[1].contains("/openapi.json"),
        "the UI does not load our description"
    );
}

crate::on_both_backends!(
    the_description_covers_every_route,
    swagger_ui_is_served_without_other_hosts
);
