//! Bad input of every kind gets a 4xx problem+json with a code, never a 500.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{Api, Backend, spawn_app, spawn_app_with},
    ws_client::Ws,
};

async fn problem(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "status {status}"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["code"].is_string() && body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    (status, body)
}

/// Who sends a row: nobody; `tester`, who owns the group room `mine` and a
/// message in it; or the admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Anon,
    User,
    Admin,
}

const JSON: &str = "application/json";
/// One byte over the router's 64 KiB body limit, as a JSON string.
fn over_limit() -> String {
    format!(r#"{{"x": "{}"}}"#, "x".repeat(64 * 1024))
}

/// One bad request and the answer it must get: `"status code"`, then the
/// invalid fields (`errors[].field`, comma-separated) for `validation_failed`.
struct Row {
    by: By,
    method: &'static str,
    path: String,
    input: &'static str,
    /// Content type and body.
    body: Option<(&'static str, String)>,
    expect: &'static str,
}

fn row(
    by: By,
    method: &'static str,
    path: impl Into<String>,
    input: &'static str,
    expect: &'static str,
) -> Row {
    Row {
        by,
        method,
        path: path.into(),
        input,
        body: None,
        expect,
    }
}

impl Row {
    fn body(self, content_type: &'static str, body: impl Into<String>) -> Self {
        Row {
            body: Some((content_type, body.into())),
            ..self
        }
    }
    fn json(self, body: impl Into<String>) -> Self {
        self.body(JSON, body)
    }
}

/// The six bad bodies of a JSON endpoint: the three that read the same
/// everywhere, and `own`, a wrong type, an unknown field and an overlong
/// string made for its fields.
fn bad_bodies(
    by: By,
    method: &'static str,
    path: &str,
    own: [(&'static str, String, &'static str); 3],
) -> Vec<Row> {
    let mut rows = vec![
        row(by, method, path, "malformed JSON", "400 malformed_json").json(r#"{"a": "#),
        row(
            by,
            method,
            path,
            "body over 64 KiB",
            "413 payload_too_large",
        )
        .json(over_limit()),
        row(
            by,
            method,
            path,
            "JSON as text/plain",
            "415 unsupported_media_type",
        )
        .body("text/plain", "{}"),
    ];
    for (input, body, expect) in own {
        rows.push(row(by, method, path, input, expect).json(body));
    }
    rows
}

/// Every JSON-body endpoint with every kind of bad body, the path parameters
/// with a non-UUID and an unknown UUID, history's query with values out of
/// range and not numbers, and every authenticated endpoint without a token.
fn rows(msg: &str, other: Uuid) -> Vec<Row> {
    use By::*;
    let x = |n: usize| "x".repeat(n);
    let unknown = Uuid::new_v4();
    let too_long = "4097 bytes of content";
    let mut rows = Vec::new();
    for (by, method, path, own) in [
        (Anon, "POST", "/auth/register".to_owned(), [
            ("wrong type", r#"{"username": 5, "email": "n@example.com", "password": "password123"}"#.to_owned(), "422 validation_failed username"),
            ("unknown field", r#"{"username": "newbie", "email": "n@example.com", "password": "password123", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("33-char username", json!({"username": x(33), "email": "n@example.com", "password": "password123"}).to_string(), "422 validation_failed username"),
        ]),
        (Anon, "POST", "/auth/login".to_owned(), [
            ("wrong type", r#"{"username": 5, "password": "password123"}"#.to_owned(), "422 validation_failed username"),
            ("unknown field", r#"{"username": "tester", "password": "password123", "remember": true}"#.to_owned(), "422 validation_failed remember"),
            // Login never says which part is wrong, not even for this.
            ("255-char username", json!({"username": x(255), "password": "password123"}).to_string(), "401 invalid_credentials"),
        ]),
        (User, "POST", "/rooms".to_owned(), [
            ("wrong type", r#"{"name": 5}"#.to_owned(), "422 validation_failed name"),
            ("unknown field", r#"{"name": "r1", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("65-char name", json!({"name": x(65)}).to_string(), "422 validation_failed name"),
        ]),
        (User, "POST", "/rooms/mine/members".to_owned(), [
            ("wrong type", r#"{"user_id": 5}"#.to_owned(), "422 validation_failed user_id"),
            ("unknown field", r#"{"username": "other", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("65-char username", json!({"username": x(65)}).to_string(), "422 validation_failed username"),
        ]),
        (User, "POST", "/message".to_owned(), [
            ("wrong type", r#"{"room_id": "public", "content": 5}"#.to_owned(), "422 validation_failed content"),
            ("unknown field", r#"{"room_id": "public", "content": "hi", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            (too_long, json!({"room_id": "public", "content": x(4097)}).to_string(), "413 message_too_large"),
        ]),
        (User, "POST", "/rooms/public/messages".to_owned(), [
            ("wrong type", r#"{"content": ["hi"]}"#.to_owned(), "422 validation_failed content"),
            ("unknown field", r#"{"content": "hi", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            (too_long, json!({"content": x(4097)}).to_string(), "413 message_too_large"),
        ]),
        (User, "PATCH", format!("/messages/{msg}"), [
            ("wrong type", r#"{"content": 5}"#.to_owned(), "422 validation_failed content"),
            ("unknown field", r#"{"content": "hi", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            (too_long, json!({"content": x(4097)}).to_string(), "413 message_too_large"),
        ]),
        (User, "PATCH", "/users/me".to_owned(), [
            ("wrong type", r#"{"email": 5, "current_password": "password123"}"#.to_owned(), "422 validation_failed email"),
            ("unknown field", r#"{"current_password": "password123", "nickname": "t"}"#.to_owned(), "422 validation_failed nickname"),
            ("300-char email", json!({"email": format!("{}@example.com", x(300)), "current_password": "password123"}).to_string(), "422 validation_failed email"),
        ]),
        (Admin, "POST", "/admin/users".to_owned(), [
            ("wrong type", r#"{"username": "staff", "email": "s@example.com", "password": 12345678, "role": "user"}"#.to_owned(), "422 validation_failed password"),
            ("unknown field", r#"{"username": "staff", "email": "s@example.com", "password": "password123", "role": "user", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("33-char username", json!({"username": x(33), "email": "s@example.com", "password": "password123", "role": "user"}).to_string(), "422 validation_failed username"),
        ]),
        (Admin, "PATCH", format!("/admin/users/{other}"), [
            ("wrong type", r#"{"role": 5}"#.to_owned(), "422 validation_failed role"),
            ("unknown field", r#"{"role": "moderator", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("300-char role", json!({"role": x(300)}).to_string(), "422 validation_failed role"),
        ]),
        (Anon, "POST", "/generate-token".to_owned(), [
            ("wrong type", r#"{"username": "guest1", "email": "g@example.com", "room_id": 5}"#.to_owned(), "422 validation_failed room_id"),
            ("unknown field", r#"{"username": "guest1", "email": "g@example.com", "room_id": "public", "colour": "red"}"#.to_owned(), "422 validation_failed colour"),
            ("65-char room_id", json!({"username": "guest1", "email": "g@example.com", "room_id": x(65)}).to_string(), "422 validation_failed room_id"),
        ]),
    ] {
        rows.extend(bad_bodies(by, method, &path, own));
    }

    // More bodies of the wrong shape.
    rows.extend([
        row(User, "POST", "/rooms", "trailing garbage", "400 malformed_json").json(r#"{"name": "a"} x"#),
        row(User, "POST", "/rooms", "empty body", "400 malformed_json").json(""),
        row(User, "POST", "/rooms", "not an object", "422 validation_failed body").json("[1,2,3]"),
        row(User, "POST", "/rooms", "missing field", "422 validation_failed name").json(r#"{"kind": "public"}"#),
        row(User, "POST", "/rooms", "unknown enum value", "422 validation_failed kind").json(r#"{"name": "r1", "kind": "secret"}"#),
        row(User, "POST", "/rooms", "name with a slash", "422 validation_failed name").json(r#"{"name": "a/b"}"#),
        row(Anon, "POST", "/auth/register", "3 overlong fields", "422 validation_failed email,password,username")
            .json(json!({"username": x(300), "email": format!("{}@example.com", x(300)), "password": x(200)}).to_string()),
        row(Anon, "POST", "/auth/login", "form garbage", "422 validation_failed body")
            .body("application/x-www-form-urlencoded", "%%%"),
    ]);

    // Path parameters.
    let edit = r#"{"content": "edited"}"#;
    rows.extend([
        row(
            User,
            "PATCH",
            "/messages/not-a-uuid",
            "non-UUID id",
            "400 bad_request",
        )
        .json(edit),
        row(
            User,
            "PATCH",
            format!("/messages/{unknown}"),
            "unknown id",
            "404 not_found",
        )
        .json(edit),
        row(
            User,
            "DELETE",
            "/messages/not-a-uuid",
            "non-UUID id",
            "400 bad_request",
        ),
        row(
            User,
            "DELETE",
            format!("/messages/{unknown}"),
            "unknown id",
            "404 not_found",
        ),
        row(
            Admin,
            "PATCH",
            "/admin/users/not-a-uuid",
            "non-UUID id",
            "400 bad_request",
        )
        .json(r#"{"role": "moderator"}"#),
        row(
            Admin,
            "PATCH",
            format!("/admin/users/{unknown}"),
            "unknown id",
            "404 not_found",
        )
        .json(r#"{"role": "moderator"}"#),
        row(
            User,
            "GET",
            "/users/not-a-uuid",
            "non-UUID id",
            "400 bad_request",
        ),
        row(
            User,
            "GET",
            format!("/users/{unknown}"),
            "unknown id",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            "/users/not-a-uuid/avatar",
            "non-UUID id",
            "400 bad_request",
        ),
        row(
            User,
            "GET",
            format!("/users/{unknown}/avatar"),
            "unknown id",
            "404 not_found",
        ),
        row(
            User,
            "DELETE",
            "/rooms/mine/members/not-a-uuid",
            "non-UUID user_id",
            "400 bad_request",
        ),
        row(
            User,
            "DELETE",
            format!("/rooms/mine/members/{unknown}"),
            "unknown user_id",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            "/rooms/no-such-room",
            "unknown room",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            format!("/rooms/{unknown}"),
            "unknown room id",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            "/rooms/no-such-room/messages",
            "unknown room",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            format!("/rooms/{unknown}/messages"),
            "unknown room id",
            "404 not_found",
        ),
        row(
            User,
            "GET",
            "/no/such/route",
            "unknown route",
            "404 not_found",
        ),
        row(
            User,
            "PUT",
            "/rooms",
            "wrong method",
            "405 method_not_allowed",
        ),
    ]);

    // Query parameters: every value that is not the parameter's is 422,
    // naming it, whether it is no number or a number out of range.
    for (query, input, expect) in [
        ("limit=0", "limit 0", "422 validation_failed limit"),
        ("limit=201", "limit 201", "422 validation_failed limit"),
        ("limit=-1", "limit -1", "422 validation_failed limit"),
        (
            "limit=abc",
            "limit not a number",
            "422 validation_failed limit",
        ),
        (
            "limit=1.5",
            "limit not an integer",
            "422 validation_failed limit",
        ),
        ("limit=", "limit empty", "422 validation_failed limit"),
        (
            "limit=99999999999999999999",
            "limit over u64",
            "422 validation_failed limit",
        ),
        (
            "before=abc",
            "before not a number",
            "422 validation_failed before",
        ),
        ("before=-1", "before -1", "422 validation_failed before"),
        (
            "before=99999999999999999999",
            "before over i64",
            "422 validation_failed before",
        ),
        (
            "after=abc",
            "after not a number",
            "422 validation_failed after",
        ),
        ("after=-1", "after -1", "422 validation_failed after"),
        (
            "before=3&after=1",
            "before and after",
            "422 validation_failed before",
        ),
        (
            "colour=red",
            "unknown parameter",
            "422 validation_failed colour",
        ),
    ] {
        rows.push(row(
            User,
            "GET",
            format!("/rooms/public/messages?{query}"),
            input,
            expect,
        ));
    }
    rows.extend([
        row(
            User,
            "GET",
            "/rooms?limit=abc",
            "limit not a number",
            "422 validation_failed limit",
        ),
        row(
            User,
            "GET",
            "/rooms?limit=100000",
            "limit 100000",
            "422 validation_failed limit",
        ),
        row(
            User,
            "GET",
            "/rooms?offset=-1",
            "offset -1",
            "422 validation_failed offset",
        ),
        row(
            User,
            "GET",
            "/users?limit=0",
            "limit 0",
            "422 validation_failed limit",
        ),
        row(
            User,
            "GET",
            "/users?search=%25_%5C%27%22",
            "LIKE wildcards",
            "200",
        ),
        row(
            Admin,
            "GET",
            "/admin/users?limit=0",
            "limit 0",
            "422 validation_failed limit",
        ),
        row(
            User,
            "GET",
            "/ws/public?since=abc",
            "since not a number",
            "422 validation_failed since",
        ),
        // Odd but harmless search text is just a search.
        row(
            User,
            "GET",
            "/rooms?search=%25_%5C%27%22",
            "LIKE wildcards",
            "200",
        ),
    ]);

    // No token.
    for (method, path) in [
        ("POST", "/auth/logout".to_owned()),
        ("GET", "/users/me".to_owned()),
        ("PATCH", "/users/me".to_owned()),
        ("DELETE", "/users/me".to_owned()),
        ("PUT", "/users/me/avatar".to_owned()),
        ("GET", "/users".to_owned()),
        ("GET", format!("/users/{other}")),
        ("GET", format!("/users/{other}/avatar")),
        ("POST", format!("/users/{other}/private-room")),
        ("GET", "/admin/users".to_owned()),
        ("POST", "/admin/users".to_owned()),
        ("PATCH", format!("/admin/users/{other}")),
        ("GET", "/rooms".to_owned()),
        ("POST", "/rooms".to_owned()),
        ("GET", "/rooms/public".to_owned()),
        ("DELETE", "/rooms/mine".to_owned()),
        ("GET", "/rooms/public/members".to_owned()),
        ("POST", "/rooms/mine/members".to_owned()),
        ("DELETE", format!("/rooms/mine/members/{other}")),
        ("POST", "/rooms/public/join".to_owned()),
        ("POST", "/message".to_owned()),
        ("GET", "/rooms/public/messages".to_owned()),
        ("POST", "/rooms/public/messages".to_owned()),
        ("PATCH", format!("/messages/{msg}")),
        ("DELETE", format!("/messages/{msg}")),
        ("GET", "/echo_ws".to_owned()),
        ("GET", "/pub_ws".to_owned()),
        ("GET", "/echo/history".to_owned()),
        ("WS", "/echo".to_owned()),
        ("WS", "/ws/public".to_owned()),
        ("WS", "/updates/public".to_owned()),
    ] {
        rows.push(row(Anon, method, path, "no token", "401 missing_token"));
    }
    rows
}

/// What a row got, in the form of its `expect`; a `!` marks an answer that
/// is not problem+json with a string `code`, `title` and `detail`.
async fn answer(
    api: &Api,
    app: &crate::helpers::TestApp,
    row: &Row,
    token: Option<&str>,
) -> String {
    let (status, body, problem_json) = if row.method == "WS" {
        match Ws::connect_with(app.addr, &row.path, token, &[]).await {
            Ok(ws) => {
                ws.close().await;
                (101, Value::Null, true)
            }
            Err(refused) => (refused.status, refused.body, true),
        }
    } else {
        let method = reqwest::Method::from_bytes(row.method.as_bytes()).unwrap();
        let mut req = api.client.request(method, api.url(&row.path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some((content_type, body)) = &row.body {
            req = req.header("content-type", *content_type).body(body.clone());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let problem_json = res
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let body = res.json().await.unwrap_or(Value::Null);
        (status, body, problem_json)
    };
    if status < 400 {
        return status.to_string();
    }
    let shaped = problem_json
        && body["status"] == status
        && ["code", "title", "detail"]
            .iter()
            .all(|k| body[k].is_string());
    let mut got = format!("{status} {}", body["code"].as_str().unwrap_or("-"));
    if let Some(errors) = body["errors"].as_array() {
        let mut fields: Vec<&str> = errors.iter().filter_map(|e| e["field"].as_str()).collect();
        fields.dedup();
        got = format!("{got} {}", fields.join(","));
    }
    if !shaped {
        got.push('!');
    }
    got
}

/// Sends every row, prints the table, and lists every answer that is not
/// the row's.
async fn every_endpoint_refuses_bad_input(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.guest_tokens = true;
        c.admin_username = Some("root".into());
        c.admin_password = Some("password123".to_owned().into());
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, user) = api.user("tester").await;
    let (other, _) = api.user("other").await;
    let admin = api.login("root").await;
    api.create_room(&user, "mine", "group").await;
    let msg = api.post_stored(&user, "mine", "to edit").await;

    let rows = rows(&msg, other);
    let mut table = format!(
        "{:<6} {:<40} {:<22} {}",
        "", "endpoint", "input", "status code fields"
    );
    let mut wrong = Vec::new();
    for row in &rows {
        let token = match row.by {
            By::Anon => None,
            By::User => Some(user.as_str()),
            By::Admin => Some(admin.as_str()),
        };
        let got = answer(&api, &app, row, token).await;
        let endpoint = format!("{} {}", row.method, row.path);
        let endpoint = endpoint.get(..60).unwrap_or(&endpoint);
        let mark = if got == row.expect { "" } else { "  <- want " };
        table.push_str(&format!(
            "\n{:<6} {endpoint:<40} {:<22} {got}{mark}{}",
            format!("{:?}", row.by),
            row.input,
            if mark.is_empty() { "" } else { row.expect }
        ));
        if got != row.expect {
            wrong.push(format!(
                "{endpoint} ({}, as {:?}): got {got}, want {}",
                row.input, row.by, row.expect
            ));
        }
    }
    println!("{table}\n{} rows ({backend:?})", rows.len());
    assert!(
        wrong.is_empty(),
        "{} rows answered wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

crate::on_both_backends!(every_endpoint_refuses_bad_input);

/// NUL cannot be stored as text; every way of sending it is refused up front
/// (found by schema fuzzing: it used to reach the database and give a 500).
async fn nul_characters_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("nulls").await;
    for path in [
        "/rooms?search=%00x",
        "/rooms/a%00b",
        "/rooms/public/messages?limit=5&x=%00",
    ] {
        let res = api
            .client
            .get(api.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, body) = problem(res).await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str()),
            (400, Some("invalid_characters")),
            "{path}"
        );
    }
    for (path, body) in [
        (
            "/message",
            r#"{"room_id": "public", "content": "a\u0000b"}"#,
        ),
        (
            "/auth/login",
            r#"{"username": "nul\u0000ls", "password": "password123"}"#,
        ),
        ("/rooms", r#"{"name": "x\u0000"}"#),
    ] {
        let res = api
            .client
            .post(api.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, _) = problem(res).await;
        assert_eq!(status, 422, "{path}");
    }
    let res = api
        .client
        .post(api.url("/auth/login"))
        .form(&[("username", "nul\0ls"), ("password", "password123")])
        .send()
        .await
        .unwrap();
    let (status, _) = problem(res).await;
    assert_eq!(status, 401);
    // And the server is fine afterwards.
    let res = api
        .client
        .get(api.url("/rooms?search=pub"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

crate::on_both_backends!(nul_characters_are_refused);
