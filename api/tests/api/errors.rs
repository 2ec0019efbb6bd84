//! Bad input of every kind gets a 4xx problem+json with a code, never a 500.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app};

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

async fn bad_bodies_get_clear_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("tester").await;
    let post = |path: &str, body: &'static str, ctype: &'static str| {
        api.client
            .post(api.url(path))
            .bearer_auth(&token)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let json_ct = "application/json";
    for (what, path, body, ctype, status, code) in [
        (
            "malformed JSON",
            "/auth/register",
            "{\"username\": ",
            json_ct,
            400,
            "malformed_json",
        ),
        (
            "trailing garbage",
            "/rooms",
            "{\"name\":\"a\"} x",
            json_ct,
            400,
            "malformed_json",
        ),
        ("empty body", "/rooms", "", json_ct, 400, "malformed_json"),
        (
            "wrong type",
            "/auth/register",
            r#"{"username": 5, "email": "a@b.co", "password": "password123"}"#,
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "unknown field",
            "/rooms",
            r#"{"name": "r1", "colour": "red"}"#,
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "missing field",
            "/rooms",
            r#"{"kind": "public"}"#,
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "unknown enum value",
            "/rooms",
            r#"{"name": "r1", "kind": "secret"}"#,
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "not an object",
            "/rooms",
            "[1,2,3]",
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "wrong content type",
            "/rooms",
            r#"{"name": "r1"}"#,
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "room name with a slash",
            "/rooms",
            r#"{"name": "a/b"}"#,
            json_ct,
            422,
            "validation_failed",
        ),
        (
            "login form garbage",
            "/auth/login",
            "%%%",
            "application/x-www-form-urlencoded",
            422,
            "validation_failed",
        ),
    ] {
        let (status_got, body) = problem(post(path, body, ctype).await.unwrap()).await;
        assert_eq!(status_got.as_u16(), status, "{what}: {body}");
        assert_eq!(body["code"], code, "{what}: {body}");
    }

    // The field path is named for a wrong type.
    let (_, body) = problem(
        post(
            "/auth/register",
            r#"{"username": 5, "email": "a@b.co", "password": "password123"}"#,
            json_ct,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "username");

    // Overlong fields.
    let res = api
        .client
        .post(api.url("/auth/register"))
        .json(&json!({"username": "u".repeat(300), "email": format!("{}@example.com", "e".repeat(300)), "password": "p".repeat(200)}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(res).await;
    assert_eq!(status, 422);
    let mut fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.dedup();
    assert_eq!(fields, ["email", "password", "username"], "{body}");

    // A body over the limit.
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(200_000));
    let res = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&token)
        .header("content-type", json_ct)
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = problem(res).await;
    assert_eq!(status, 413, "{body}");
}

async fn bad_paths_and_queries_get_clear_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("prober").await;
    let get = |path: &str| api.client.get(api.url(path)).bearer_auth(&token).send();

    let (status, body) = problem(get("/no/such/route").await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str().unwrap()),
        (404, "not_found")
    );
    let (status, _) = problem(get("/rooms/no-such-room").await.unwrap()).await;
    assert_eq!(status, 404);
    let (status, _) = problem(
        api.client
            .put(api.url("/rooms"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = problem(get("/rooms?limit=abc").await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, _) = problem(get("/rooms?limit=100000").await.unwrap()).await;
    assert_eq!(status, 422);
    let (status, _) = problem(
        api.client
            .delete(api.url("/rooms/public/members/not-a-uuid"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    // Odd but harmless search text is just a search.
    let res = get("/rooms?search=%25_%5C%27%22").await.unwrap();
    assert_eq!(res.status(), 200);
}

crate::on_both_backends!(
    bad_bodies_get_clear_errors,
    bad_paths_and_queries_get_clear_errors
);

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
