//! Sessions end everywhere at once: logout, a password change, account
//! deletion and the loss of a role revoke tokens and close sockets on every
//! node (user events through the broker), within a second; a node that
//! missed events checks its sockets again when it reconnects; sockets end
//! with their token.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, TEST_SECRET, TestEnv, spawn_app, spawn_app_with, spawn_env_node},
    ws_client::Ws,
};

/// What "at once" means for a socket on another node.
const WITHIN: Duration = Duration::from_secs(1);

/// A room socket and an echo socket of `token`.
async fn sockets(addr: std::net::SocketAddr, token: &str) -> (Ws, Ws) {
    let (room, _) = Ws::join(addr, "/ws/public?history=0", token).await;
    let echo = Ws::connect(addr, "/echo", Some(token))
        .await
        .unwrap_or_else(|r| panic!("echo refused: {r:?}"));
    (room, echo)
}

/// The socket closes with `code` within `within`.
async fn closes(ws: &mut Ws, code: u16, within: Duration, what: &str) {
    let started = Instant::now();
    let got = tokio::time::timeout(within, ws.expect_close())
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {within:?}"));
    assert_eq!(got, code, "{what} (after {:?})", started.elapsed());
}

/// The socket is still open: a ping gets its pong.
async fn stays_open(ws: &mut Ws, what: &str) {
    ws.send_json(&json!({"type": "ping"})).await;
    let pong = ws.next_of(&["pong"]).await;
    assert_eq!(pong["type"], "pong", "{what}");
}

async fn status(
    api: &Api,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = api.client.request(method, api.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn me(api: &Api, token: &str) -> (u16, Value) {
    status(api, "GET", "/users/me", token, None).await
}

async fn login(api: &Api, username: &str, password: &str) -> reqwest::Response {
    api.client
        .post(api.url("/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The claims of a token, unverified.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Logout closes the sockets of that token (room and echo) at once, and
/// only those.
async fn logout_closes_that_tokens_sockets(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, first) = api.user("ann").await;
    let second = api.login("ann").await;
    let (mut room, mut echo) = sockets(app.addr, &first).await;
    let (mut other_room, mut other_echo) = sockets(app.addr, &second).await;
    assert_eq!(me(&api, &first).await.0, 200);

    let (code, _) = status(&api, "POST", "/auth/logout", &first, None).await;
    assert_eq!(code, 204);
    let (code, body) = me(&api, &first).await;
    assert_eq!((code, body["code"].as_str()), (401, Some("token_revoked")));
    closes(
        &mut room,
        4001,
        WITHIN,
        "room socket of the logged-out token",
    )
    .await;
    closes(
        &mut echo,
        4001,
        WITHIN,
        "echo socket of the logged-out token",
    )
    .await;
    stays_open(&mut other_room, "the other token's room socket").await;
    other_echo.send_text("still here").await;
    assert_eq!(me(&api, &second).await.0, 200);
    other_room.close().await;
    other_echo.close().await;
}

/// A password change revokes every other token of the user (HTTP and
/// sockets); the token that made it stays, and the new password logs in.
async fn password_change_revokes_other_tokens(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, changer) = api.user("ann").await;
    let stolen = api.login("ann").await;
    let (mut room, mut echo) = sockets(app.addr, &stolen).await;
    let (mut own_room, _own_echo) = sockets(app.addr, &changer).await;
    assert_eq!(me(&api, &stolen).await.0, 200);

    let (code, body) = status(
        &api,
        "PATCH",
        "/users/me",
        &changer,
        Some(json!({"password": "a-brand-new-password", "current_password": "password123"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = me(&api, &stolen).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("token_revoked")),
        "{body}"
    );
    closes(&mut room, 4001, WITHIN, "room socket of another token").await;
    closes(&mut echo, 4001, WITHIN, "echo socket of another token").await;
    stays_open(&mut own_room, "the changer's own socket").await;
    assert_eq!(me(&api, &changer).await.0, 200);
    assert_eq!(login(&api, "ann", "password123").await.status(), 401);
    let res = login(&api, "ann", "a-brand-new-password").await;
    assert_eq!(res.status(), 200);
    let fresh = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&api, &fresh).await.0, 200);
    own_room.close().await;
}

/// Deleting an account takes its password (a token alone cannot); then its
/// token gets 401 on every route, never 404, and its sockets close.
async fn deleted_accounts_token_is_401_on_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (id, token) = api.user("ann").await;
    let (mut room, mut echo) = sockets(app.addr, &token).await;

    let (code, body) = status(&api, "DELETE", "/users/me", &token, None).await;
    assert!(code == 415 || code == 422, "no password: {code} {body}");
    let (code, body) = status(
        &api,
        "DELETE",
        "/users/me",
        &token,
        Some(json!({"current_password": "not-the-password"})),
    )
    .await;
    assert_eq!((code, body["code"].as_str()), (403, Some("wrong_password")));
    assert_eq!(me(&api, &token).await.0, 200, "nothing was deleted");

    let (code, body) = status(
        &api,
        "DELETE",
        "/users/me",
        &token,
        Some(json!({"current_password": "password123"})),
    )
    .await;
    assert_eq!(code, 204, "{body}");
    closes(
        &mut room,
        4001,
        WITHIN,
        "room socket of the deleted account",
    )
    .await;
    closes(
        &mut echo,
        4001,
        WITHIN,
        "echo socket of the deleted account",
    )
    .await;
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/users/me".into(), None),
        (
            "PATCH",
            "/users/me".into(),
            Some(json!({"current_password": "password123"})),
        ),
        (
            "DELETE",
            "/users/me".into(),
            Some(json!({"current_password": "password123"})),
        ),
        ("GET", format!("/users/{id}"), None),
        ("GET", format!("/users/{id}/avatar"), None),
        ("GET", "/rooms".into(), None),
        (
            "POST",
            "/rooms".into(),
            Some(json!({"name": "ghost-room", "kind": "group"})),
        ),
        ("GET", "/rooms/public".into(), None),
        ("GET", "/rooms/public/messages".into(), None),
        (
            "POST",
            "/message".into(),
            Some(json!({"room_id": "public", "content": "boo"})),
        ),
        ("GET", "/echo_ws".into(), None),
        ("GET", "/echo/history".into(), None),
        ("POST", "/auth/logout".into(), None),
    ];
    for (method, path, body) in routes {
        let (code, answer) = status(&api, method, &path, &token, body).await;
        assert_eq!(code, 401, "{method} {path}: {answer}");
    }
    for path in ["/ws/public", "/echo"] {
        let refused = Ws::connect(app.addr, path, Some(&token)).await.err();
        assert_eq!(refused.map(|r| r.status), Some(401), "{path}");
    }
}

/// Losing a role closes the user's sockets (they reconnect under the new
/// role's rules); gaining one does not.
async fn demotion_closes_sockets(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.admin_username = Some("root".into());
        c.admin_password = Some("password123".to_owned().into());
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let root = api.login("root").await;
    let (id, token) = api.user("mod").await;
    let (mut room, mut echo) = sockets(app.addr, &token).await;
    let set_role = |role: &'static str| {
        let (api, root) = (&api, &root);
        async move {
            let (code, body) = status(
                api,
                "PATCH",
                &format!("/admin/users/{id}"),
                root,
                Some(json!({"role": role})),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
    };
    set_role("moderator").await;
    stays_open(&mut room, "a promotion closes nothing").await;
    set_role("user").await;
    closes(&mut room, 4001, WITHIN, "room socket after the demotion").await;
    closes(&mut echo, 4001, WITHIN, "echo socket after the demotion").await;
    let (code, body) = me(&api, &token).await;
    assert_eq!((code, body["role"].as_str()), (200, Some("user")));
}

/// An echo socket closes (4001) when its token expires, like a room socket.
async fn echo_sockets_expire_with_their_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("ann").await;
    let mut short = claims(&token);
    short["exp"] = json!(short["iat"].as_i64().unwrap() + 2);
    let short = jsonwebtoken::encode(
        &Header::default(),
        &short,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    let mut echo = Ws::connect(app.addr, "/echo", Some(&short))
        .await
        .unwrap_or_else(|r| panic!("echo refused: {r:?}"));
    closes(
        &mut echo,
        4001,
        Duration::from_secs(6),
        "echo socket at exp",
    )
    .await;
}

crate::on_both_backends!(
    logout_closes_that_tokens_sockets,
    password_change_revokes_other_tokens,
    deleted_accounts_token_is_401_on_every_route,
    demotion_closes_sockets,
    echo_sockets_expire_with_their_token,
);

/// How long the other node may take to hear a user event: the publisher's
/// confirm says the broker has it, not that every node read it yet. Its
/// cache would answer for a second without the event.
const HEARD: Duration = Duration::from_millis(500);

/// GET `path` on `api` until it answers 401, within [`HEARD`]; never a 404.
async fn refused_soon(api: &Api, token: &str, path: &str, what: &str) {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let (code, _) = status(api, "GET", path, token, None).await;
        seen.push(code);
        assert_ne!(code, 404, "{what}, {path}: {seen:?}");
        if code == 401 {
            return;
        }
        assert!(
            started.elapsed() < HEARD,
            "{what}, {path}: still {seen:?} after {HEARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two nodes: what one node is told, the other applies at once — a token it
/// has just cached is refused right after the change (not a second later),
/// and its sockets close within a second. A deleted account's token is 401
/// there too, never 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_every_node() {
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    let a = spawn_env_node(&env, &[("NODE_ID", "ue-a")]);
    let b = spawn_env_node(&env, &[("NODE_ID", "ue-b")]);
    let (api_a, api_b) = (Api::new(a.addr), Api::new(b.addr));
    let (_, leaver) = api_a.user("ann").await;
    let changer = api_a.login("ann").await;
    let other = api_a.login("ann").await;

    // Logout on A: B refuses the token it has just cached.
    let (mut room, mut echo) = sockets(b.addr, &leaver).await;
    assert_eq!(me(&api_b, &leaver).await.0, 200);
    assert_eq!(
        status(&api_a, "POST", "/auth/logout", &leaver, None)
            .await
            .0,
        204
    );
    refused_soon(&api_b, &leaver, "/users/me", "node B after a logout on A").await;
    closes(
        &mut room,
        4001,
        WITHIN,
        "B's room socket after a logout on A",
    )
    .await;
    closes(
        &mut echo,
        4001,
        WITHIN,
        "B's echo socket after a logout on A",
    )
    .await;

    // Password change on A: B refuses the other token at once.
    let (mut room, _echo) = sockets(b.addr, &other).await;
    assert_eq!(me(&api_b, &other).await.0, 200);
    let (code, body) = status(
        &api_a,
        "PATCH",
        "/users/me",
        &changer,
        Some(json!({"password": "a-brand-new-password", "current_password": "password123"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    refused_soon(
        &api_b,
        &other,
        "/users/me",
        "node B after a password change on A",
    )
    .await;
    closes(
        &mut room,
        4001,
        WITHIN,
        "B's socket after a password change on A",
    )
    .await;

    // Deletion on A: the kept token is 401 on B at once, never 404.
    let (mut room, _echo) = sockets(b.addr, &changer).await;
    assert_eq!(me(&api_b, &changer).await.0, 200);
    let (code, body) = status(
        &api_a,
        "DELETE",
        "/users/me",
        &changer,
        Some(json!({"current_password": "a-brand-new-password"})),
    )
    .await;
    assert_eq!(code, 204, "{body}");
    for path in ["/users/me", "/rooms", "/echo/history"] {
        refused_soon(&api_b, &changer, path, "node B after a deletion on A").await;
    }
    closes(&mut room, 4001, WITHIN, "B's socket after a deletion on A").await;
}

/// A node whose broker connection was lost may have missed user events: when
/// it binds its event queue again it checks every socket's token against the
/// database and closes those no longer valid. Here the token is revoked in
/// the database alone, so no event could tell the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_node_rechecks_its_sockets() {
    use sea_orm::{ActiveModelTrait, Set};
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let api = app.api();
    let (_, revoked) = api.user("ann").await;
    let kept = api.login("ann").await;
    let (mut room, mut echo) = sockets(app.addr, &revoked).await;
    let (mut other, _other_echo) = sockets(app.addr, &kept).await;

    let jti: uuid::Uuid = claims(&revoked)["jti"].as_str().unwrap().parse().unwrap();
    let db = sea_orm::Database::connect(&app.env.db.url).await.unwrap();
    entity::revoked_token::ActiveModel {
        jti: Set(jti),
        expires_at: Set(chrono::Utc::now() + chrono::Duration::hours(1)),
    }
    .insert(&db)
    .await
    .unwrap();
    db.close().await.ok();
    stays_open(&mut room, "no event told the node yet").await;

    let vhost = app.vhost().expect("a RabbitMQ vhost");
    vhost.wait_for_connections(1).await;
    assert!(vhost.close_connections().await > 0);
    // Reconnecting takes the supervisor's backoff (up to 5 s).
    closes(
        &mut room,
        4001,
        Duration::from_secs(12),
        "room socket after the rebind",
    )
    .await;
    closes(&mut echo, 4001, WITHIN, "echo socket after the rebind").await;
    stays_open(&mut other, "a valid token's socket").await;
}
