//! The OpenAPI description: complete, served, and matching the router.

use serde_json::Value;

use crate::helpers::{Backend, spawn_app, spawn_app_with};

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
        "/users",
        "/users/{id}",
        "/users/{id}/private-room",
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
        "/ws",
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

/// The description as served at `/openapi.json`.
fn description() -> Value {
    serde_json::to_value(api::routes::api().1).unwrap()
}

/// `schema`, or the component it names with `$ref`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Every operation as (method, path, operation).
fn operations(spec: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

/// Whether a schema (resolved) carries an example, itself or on every property.
fn has_example(spec: &Value, schema: &Value) -> bool {
    let schema = resolve(spec, schema);
    let own = schema.get("example").is_some()
        || schema["examples"].as_array().is_some_and(|e| !e.is_empty());
    if own {
        return true;
    }
    match schema["properties"].as_object() {
        Some(props) if !props.is_empty() => props.values().all(|p| has_example(spec, p)),
        _ => false,
    }
}

/// Clients and schemathesis start from the examples: every JSON request body
/// has one, on its schema or on each of its fields.
#[test]
fn every_json_request_body_has_an_example() {
    let spec = description();
    let mut offenders = Vec::new();
    let mut bodies = 0;
    for (method, path, op) in operations(&spec) {
        let Some(content) = op["requestBody"]["content"].as_object() else {
            continue;
        };
        for (media, body) in content {
            if media != "application/json" {
                continue;
            }
            bodies += 1;
            let example = body.get("example").is_some()
                || body["examples"].as_object().is_some_and(|e| !e.is_empty());
            if !example && !has_example(&spec, &body["schema"]) {
                offenders.push(format!("{method} {path}: {}", body["schema"]));
            }
        }
    }
    assert!(bodies >= 10, "only {bodies} JSON request bodies found");
    assert!(
        offenders.is_empty(),
        "JSON request bodies without an example:\n{}",
        offenders.join("\n")
    );
}

/// Every schema of the description shows what it looks like; only the
/// multipart avatar upload, a file, has none to show.
#[test]
fn every_schema_has_an_example() {
    let spec = description();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for name in [
        "UserView",
        "TokenResponse",
        "RoomView",
        "Member",
        "MessageView",
        "Accepted",
        "GuestToken",
        "Problem",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let offenders: Vec<_> = schemas
        .iter()
        .filter(|(name, schema)| *name != "AvatarUpload" && !has_example(&spec, schema))
        .map(|(name, _)| name)
        .collect();
    assert!(
        offenders.is_empty(),
        "schemas without an example: {offenders:?}"
    );
}

/// The example of the component schema `name`.
fn example(spec: &Value, name: &str) -> Value {
    let example = spec["components"]["schemas"][name]["example"].clone();
    assert!(example.is_object(), "{name} has no example");
    example
}

/// The field names of a JSON object, sorted.
fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// Sends `body` (with `token` unless it is empty); returns the status and the answer.
async fn send(
    app: &crate::helpers::TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).json(body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The request examples pass the server's own validation, in the order a
/// client would send them, and the response examples have the fields the
/// server really sends.
async fn the_examples_are_accepted(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.guest_tokens = true;
        c.admin_username = Some("root".into());
        c.admin_password = Some("password123".to_owned().into());
    })
    .await
    else {
        return;
    };
    let spec = description();
    let api = app.api();
    use reqwest::Method;
    // The examples are written for `roomcast seed-demo`'s data, so that the
    // docs' "Try it out" works as shown on a demo server.
    let db = sea_orm::Database::connect(&app.env.db.url).await.unwrap();
    api::seed::seed_demo(&db).await.unwrap();
    let room_example = |path: &str, method: &str| {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "room")
            .and_then(|p| p["example"].as_str())
            .unwrap_or_else(|| panic!("{method} {path}: no example room"))
            .to_owned()
    };

    let (status, user) = send(
        &app,
        Method::POST,
        "/auth/register",
        "",
        &example(&spec, "RegisterRequest"),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(keys(&user), keys(&example(&spec, "UserView")));
    let (status, token) = send(
        &app,
        Method::POST,
        "/auth/login",
        "",
        &example(&spec, "LoginRequest"),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(keys(&token), keys(&example(&spec, "TokenResponse")));
    let alice = token["access_token"].as_str().unwrap().to_owned();

    let (status, room) = send(
        &app,
        Method::POST,
        "/rooms",
        &alice,
        &example(&spec, "CreateRoom"),
    )
    .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(keys(&room), keys(&example(&spec, "RoomView")));
    let team = room_example("/rooms/{room}/members", "post");
    let (status, answer) = send(
        &app,
        Method::POST,
        &format!("/rooms/{team}/members"),
        &alice,
        &example(&spec, "AddMember"),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let lobby = room_example("/rooms/{room}/members", "get");
    let (status, members) = send(
        &app,
        Method::GET,
        &format!("/rooms/{lobby}/members"),
        &alice,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{members}");
    assert_eq!(keys(&members[0]), keys(&example(&spec, "Member")));

    let new_message = example(&spec, "NewMessage");
    assert_eq!(
        new_message["room_id"],
        room_example("/rooms/{room}/messages", "post"),
        "the message examples are for one room"
    );
    let (status, accepted) = send(&app, Method::POST, "/message", &alice, &new_message).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(keys(&accepted), keys(&example(&spec, "Accepted")));
    assert_eq!(accepted["status"], example(&spec, "Accepted")["status"]);
    let room_path = format!("/rooms/{}", room_example("/rooms/{room}/messages", "post"));
    let (status, accepted) = send(
        &app,
        Method::POST,
        &format!("{room_path}/messages"),
        &alice,
        &example(&spec, "NewRoomMessage"),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    // The store stage writes the message a moment after the 202.
    let edit_path = format!("/messages/{}", accepted["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, edited) = loop {
        let (status, edited) = send(
            &app,
            Method::PATCH,
            &edit_path,
            &alice,
            &example(&spec, "Edit"),
        )
        .await;
        if status != 404 || std::time::Instant::now() > deadline {
            break (status, edited);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "{edited}");
    assert_eq!(keys(&edited), keys(&example(&spec, "MessageView")));
    assert_eq!(keys(&edited["sender"]), keys(&example(&spec, "SenderView")));

    let (status, me) = send(
        &app,
        Method::PATCH,
        "/users/me",
        &alice,
        &example(&spec, "UpdateMe"),
    )
    .await;
    assert_eq!(status, 200, "{me}");

    let root = api.login("root").await;
    let (status, created) = send(
        &app,
        Method::POST,
        "/admin/users",
        &root,
        &example(&spec, "NewUser"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let role_path = format!("/admin/users/{}", created["id"].as_str().unwrap());
    let (status, changed) = send(
        &app,
        Method::PATCH,
        &role_path,
        &root,
        &example(&spec, "RoleChange"),
    )
    .await;
    assert_eq!(status, 200, "{changed}");

    let (status, guest) = send(
        &app,
        Method::POST,
        "/generate-token",
        "",
        &example(&spec, "GuestRequest"),
    )
    .await;
    assert_eq!(status, 200, "{guest}");
    assert_eq!(keys(&guest), keys(&example(&spec, "GuestToken")));
}

/// Every documented failure is a problem: `application/problem+json`, with
/// the `Problem` schema and nothing else.
#[test]
fn every_error_response_is_a_problem() {
    let spec = description();
    let mut offenders = Vec::new();
    let mut errors = 0;
    for (method, path, op) in operations(&spec) {
        for (status, response) in op["responses"].as_object().unwrap() {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            errors += 1;
            let content = response["content"].as_object();
            let problem = content.is_some_and(|c| {
                c.len() == 1
                    && c.get("application/problem+json")
                        .is_some_and(|m| m["schema"]["$ref"] == "#/components/schemas/Problem")
            });
            if !problem {
                offenders.push(format!("{method} {path} {status}: {response}"));
            }
        }
    }
    assert!(errors >= 50, "only {errors} error responses found");
    assert!(
        offenders.is_empty(),
        "error responses that are not problem+json with the Problem schema:\n{}",
        offenders.join("\n")
    );
}

crate::on_both_backends!(
    the_description_covers_every_route,
    the_examples_are_accepted,
    swagger_ui_is_served_without_other_hosts
);
