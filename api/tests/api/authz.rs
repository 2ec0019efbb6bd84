//! Who may do what: every endpoint and socket tried by every kind of caller
//! against a public, a group and a private room (DESIGN.md §4, §5 and the
//! twin's §8), the cookie's cross-site rule, and forged or stale tokens.

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{Api, Backend, TEST_SECRET, TestApp, spawn_app, spawn_app_with},
    ws_client::Ws,
};

/// The callers, in the order of a row's expectations: anonymous; a guest
/// whose token is for another room; a registered user in none of the rooms;
/// a former member (added, then removed); a member; the owner; a moderator
/// and an admin, neither in the rooms.
const CALLERS: [&str; 8] = [
    "anon", "guest", "user", "ex", "member", "owner", "mod", "admin",
];
const KINDS: [&str; 3] = ["public", "group", "private"];

/// How the caller's token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bearer,
    Query,
    Cookie,
}

/// What a row changes, and so needs anew for every cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    Nothing,
    /// A room of the row's kind, with the same members as the shared one.
    Room,
    /// A message of the member's in the shared room.
    Message,
    /// A registered user to act on (`{user}`).
    User,
    /// A new token of the caller's, since the row revokes it.
    Token,
}

/// One request, tried by each caller. `expect` has one entry per caller:
/// `status`, `status:code`, `-` (not tried), or `a|b|c` for the public, group
/// and private room. Templates know `{room}` (name), `{room_id}`, `{msg}`,
/// `{member}` (the member's id), `{user}` and `{fresh}` (an unused name).
#[derive(Debug, Clone, Copy)]
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    via: Via,
    fresh: Fresh,
    expect: &'static str,
}

const fn row(method: &'static str, path: &'static str, expect: &'static str) -> Row {
    Row {
        method,
        path,
        body: None,
        via: Via::Bearer,
        fresh: Fresh::Nothing,
        expect,
    }
}

impl Row {
    const fn body(self, body: &'static str) -> Self {
        Row {
            body: Some(body),
            ..self
        }
    }
    const fn via(self, via: Via) -> Self {
        Row { via, ..self }
    }
    const fn fresh(self, fresh: Fresh) -> Self {
        Row { fresh, ..self }
    }

    /// Runs once per room kind, rather than once.
    fn per_room(&self) -> bool {
        let uses = |s: &str| s.contains("{room") || s.contains("{msg}");
        uses(self.path) || self.body.is_some_and(uses)
    }

    /// The expected status and code for a caller (and a room kind).
    fn expected(&self, caller: usize, kind: usize) -> Option<(u16, Option<&'static str>)> {
        let entries: Vec<&str> = self.expect.split_whitespace().collect();
        assert_eq!(
            entries.len(),
            CALLERS.len(),
            "{}: {}",
            self.path,
            self.expect
        );
        let alternatives: Vec<&str> = entries[caller].split('|').collect();
        let entry = match alternatives.len() {
            1 => alternatives[0],
            3 if self.per_room() => alternatives[kind],
            _ => panic!("{}: bad entry {}", self.path, entries[caller]),
        };
        if entry == "-" {
            return None;
        }
        let (status, code) = entry
            .split_once(':')
            .map_or((entry, None), |(s, c)| (s, Some(c)));
        Some((status.parse().expect("a status"), code))
    }
}

/// Readable by members; public rooms by every registered user; group rooms
/// also by admins; private rooms by their two members only.
const READ: &str = "401:missing_token 403:not_a_member \
    200|403:not_a_member|403:not_a_member 200|403|403 200 200 200|403|403 200|200|403:not_a_member";
/// Posting: members, and any registered user in a public room.
const POST: &str = "401:missing_token 403:not_a_member \
    202|403:not_a_member|403:not_a_member 202|403|403 202 202 202|403|403 202|403:not_a_member|403";
/// Sockets: a full private room refuses a third user whoever they are.
const SOCKET: &str = "401:missing_token 403:not_a_member \
    101|403:not_a_member|403:room_full 101|403|403:room_full 101 101 \
    101|403|403:room_full 101|403:not_a_member|403:room_full";
const ANYONE: &str = "200 200 200 200 200 200 200 200";
const SIGNED_IN: &str = "401:missing_token 200 200 200 200 200 200 200";
const REGISTERED: &str = "401:missing_token 403:guest_not_allowed 200 200 200 200 200 200";
const ADMIN: &str = "401:missing_token 403:admin_only 403 403 403 403 403:admin_only 200";
const MULTIPART: &str = "<multipart>";

const ROWS: &[Row] = &[
    row("GET", "/healthz", ANYONE),
    row("GET", "/readyz", ANYONE),
    row("GET", "/metrics", ANYONE),
    row("GET", "/openapi.json", ANYONE),
    row("GET", "/", ANYONE),
    row("POST", "/auth/register", "201 201 201 201 201 201 201 201").body(
        r#"{"username":"{fresh}","email":"{fresh}@example.com","password":"password123"}"#,
    ),
    row("POST", "/auth/login", ANYONE).body(r#"{"username":"bob","password":"password123"}"#),
    row("POST", "/auth/logout", "401:missing_token 204 204 204 204 204 204 204")
        .fresh(Fresh::Token),
    row("GET", "/users/me", SIGNED_IN),
    row("PATCH", "/users/me", "401:missing_token 403:guest_not_allowed 403:wrong_password 403 403 403 403 403:wrong_password")
        .body(r#"{"email":"{fresh}@example.com","current_password":"not-the-password"}"#),
    row("DELETE", "/users/me", "401:missing_token - - - - - - -"),
    row("PUT", "/users/me/avatar", "401:missing_token 403:guest_not_allowed 415:unsupported_image 415 415 415 415 415")
        .body(MULTIPART),
    row("GET", "/users", REGISTERED),
    row("GET", "/users?search=bo&limit=5", REGISTERED).via(Via::Cookie),
    // Bob is the member; Alice, the owner, already shares the private room with him.
    row("POST", "/users/{member}/private-room", "401:missing_token 403:guest_not_allowed 201 201 \
        422:validation_failed 200 201 201"),
    row("GET", "/users/{member}", SIGNED_IN),
    row("GET", "/users/{member}/avatar", SIGNED_IN),
    row("GET", "/rooms", REGISTERED),
    row("POST", "/rooms", "401:missing_token 403:guest_not_allowed 201 201 201 201 201 201")
        .body(r#"{"name":"{fresh}","kind":"group"}"#),
    row("GET", "/echo_ws", SIGNED_IN),
    row("GET", "/pub_ws", SIGNED_IN),
    row("GET", "/echo/history", REGISTERED),
    row("WS", "/echo", "401:missing_token 403:guest_not_allowed 101 101 101 101 101 101"),
    row("WS", "/echo", "401:missing_token 403:guest_not_allowed 101 101 101 101 101 101")
        .via(Via::Query),
    // The user's own socket: a guest has no list of rooms.
    row("WS", "/ws", "401:missing_token 403:guest_not_allowed 101 101 101 101 101 101"),
    row("WS", "/ws", "401:missing_token 403:guest_not_allowed 101 101 101 101 101 101")
        .via(Via::Cookie),
    row("GET", "/admin/users", ADMIN),
    row("POST", "/admin/users", "401:missing_token 403:admin_only 403 403 403 403 403:admin_only 201")
        .body(r#"{"username":"{fresh}","email":"{fresh}@example.com","password":"password123","role":"user"}"#),
    row("PATCH", "/admin/users/{user}", ADMIN)
        .body(r#"{"role":"moderator"}"#)
        .fresh(Fresh::User),
    // Per room.
    row("GET", "/rooms/{room}", READ),
    row("GET", "/rooms/{room_id}/members", READ),
    row("GET", "/rooms/{room}/messages", READ),
    row("GET", "/rooms/{room_id}/messages?after=0", READ).via(Via::Cookie),
    row("POST", "/message", POST).body(r#"{"room_id":"{room_id}","content":"hello"}"#),
    row("POST", "/rooms/{room}/messages", POST).body(r#"{"content":"hello"}"#),
    row("PATCH", "/messages/{msg}", "401:missing_token 403:not_author 403 403 200 403:not_author 403 403:not_author")
        .body(r#"{"content":"edited"}"#),
    row("DELETE", "/messages/{msg}", "401:missing_token 403:not_allowed 403:not_allowed 403 204 204 204 204")
        .fresh(Fresh::Message),
    row("POST", "/rooms/{room}/join", "401:missing_token 403:guest_not_allowed \
        200|403:invite_only|409:room_full 200|403|409 200 200 200|403|409 200|403:invite_only|409:room_full")
        .fresh(Fresh::Room),
    row("POST", "/rooms/{room}/members", "401:missing_token 403:not_owner 403:not_owner 403 403 \
        201|201|409:room_full 403:not_owner 201|201|409:room_full")
        .body(r#"{"username":"erin"}"#)
        .fresh(Fresh::Room),
    row("DELETE", "/rooms/{room}/members/{member}", "401:missing_token 403:not_owner 403:not_owner 403 204 204 403:not_owner 204")
        .fresh(Fresh::Room),
    row("DELETE", "/rooms/{room}", "401:missing_token 403:not_owner 403:not_owner 403 403 204 403:not_owner 204")
        .fresh(Fresh::Room),
    // Anyone may ask for a guest token, but not into a closed room.
    row("POST", "/generate-token", "200|403:invite_only|409:room_full 200|403|409 200|403|409 200|403|409 \
        200|403|409 200|403|409 200|403|409 200|403|409")
        .body(r#"{"username":"{fresh}","email":"{fresh}@example.com","room_id":"{room}"}"#),
    row("WS", "/ws/{room}", SOCKET),
    row("WS", "/updates/{room_id}?history=0", SOCKET).via(Via::Query),
    row("WS", "/ws/{room}?since=0", SOCKET).via(Via::Cookie),
];

/// A caller: their token and what a fresh token of theirs says.
struct Caller {
    token: Option<String>,
    claims: Value,
}

/// A room and what rows act on in it.
struct Fixture {
    name: String,
    id: String,
    /// A message of the member's.
    msg: String,
}

/// The application, the callers, and a shared room of each kind.
struct World {
    app: TestApp,
    api: Api,
    callers: Vec<Caller>,
    member: String,
    rooms: Vec<Fixture>,
    counter: AtomicUsize,
}

const OWNER: usize = 5;
const MEMBER: usize = 4;
const EX: usize = 3;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn mint(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

/// Claims as the server issues them, living ten minutes.
fn claims_for(me: &Value, room: Option<&str>) -> Value {
    let now = unix_now();
    let mut claims = json!({"sub": me["id"], "name": me["username"], "role": me["role"],
        "iat": now, "exp": now + 600, "jti": Uuid::new_v4()});
    if let Some(room) = room {
        claims["room"] = json!(room);
    }
    claims
}

impl World {
    async fn new(backend: Backend) -> Option<Self> {
        let app = spawn_app_with(backend, |c| {
            c.guest_tokens = true;
            c.admin_username = Some("root".into());
            c.admin_password = Some("password123".to_owned().into());
        })
        .await?;
        let api = app.api();
        let (_, owner) = api.user("alice").await;
        let (member_id, member) = api.user("bob").await;
        let (_, user) = api.user("carol").await;
        let (_, ex) = api.user("dave").await;
        api.register("erin").await;
        let admin = api.login("root").await;
        let moderator = json!({"username": "mod1", "email": "mod1@example.com", "password": "password123", "role": "moderator"});
        let (status, _) = send(
            &api,
            "POST",
            "/admin/users",
            Some(&admin),
            &[],
            Some(moderator),
        )
        .await;
        assert_eq!(status, 201);
        let moderator = api.login("mod1").await;
        let guest = json!({"username": "visitor", "email": "visitor@example.com", "room_id": "guest-lobby"});
        let (_, guest) = send(&api, "POST", "/generate-token", None, &[], Some(guest)).await;
        let guest_room = guest["room_id"].as_str().unwrap().to_owned();
        let guest = guest["token"].as_str().unwrap().to_owned();

        let mut callers = vec![Caller {
            token: None,
            claims: Value::Null,
        }];
        for token in [guest, user, ex, member, owner, moderator, admin] {
            let (_, me) = send(&api, "GET", "/users/me", Some(&token), &[], None).await;
            let room = (me["role"] == "guest").then_some(guest_room.as_str());
            callers.push(Caller {
                claims: claims_for(&me, room),
                token: Some(token),
            });
        }
        let mut world = Self {
            app,
            api,
            callers,
            member: member_id.to_string(),
            rooms: Vec::new(),
            counter: AtomicUsize::new(0),
        };
        for kind in KINDS {
            let mut room = world.room(kind, &format!("shared-{kind}")).await;
            room.msg = world.message(&room).await;
            world.rooms.push(room);
        }
        Some(world)
    }

    fn token(&self, caller: usize) -> &str {
        self.callers[caller].token.as_deref().unwrap()
    }

    fn fresh_name(&self) -> String {
        format!("fresh-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        send(&self.api, method, path, Some(token), &[], body).await
    }

    /// A room owned by the owner, the member in it, the former member out of it
    /// (a private room's seats are two, so the former member leaves first).
    async fn room(&self, kind: &str, name: &str) -> Fixture {
        let room = self.api.create_room(self.token(OWNER), name, kind).await;
        let id = room["id"].as_str().unwrap().to_owned();
        let members = format!("/rooms/{id}/members");
        let owner = self.token(OWNER);
        let ex_id = self.callers[EX].claims["sub"].as_str().unwrap().to_owned();
        for (method, path, body, want) in [
            (
                "POST",
                members.clone(),
                Some(json!({"username": "dave"})),
                201,
            ),
            ("DELETE", format!("{members}/{ex_id}"), None, 204),
            (
                "POST",
                members.clone(),
                Some(json!({"username": "bob"})),
                201,
            ),
        ] {
            let (status, body) = self.send(method, &path, owner, body).await;
            assert_eq!(status, want, "{method} {path}: {body}");
        }
        Fixture {
            name: name.to_owned(),
            id,
            msg: String::new(),
        }
    }

    /// A message of the member's in `room`, once it is stored.
    async fn message(&self, room: &Fixture) -> String {
        self.api
            .post_stored(self.token(MEMBER), &room.id.to_string(), "the member's")
            .await
    }

    /// Prepares what the row needs, then sends it as `caller`.
    async fn cell(&self, row: &Row, caller: usize, kind: usize) -> (u16, Value) {
        let fresh = self.fresh_name();
        let mut token = self.callers[caller].token.clone();
        let mut user = self.member.clone();
        let made;
        let room = match row.fresh {
            Fresh::Room if row.per_room() => {
                made = self.room(KINDS[kind], &fresh).await;
                Some(&made)
            }
            Fresh::Message => {
                let shared = &self.rooms[kind];
                made = Fixture {
                    msg: self.message(shared).await,
                    name: shared.name.clone(),
                    id: shared.id.clone(),
                };
                Some(&made)
            }
            _ => row.per_room().then(|| &self.rooms[kind]),
        };
        match row.fresh {
            Fresh::User => {
                user = self.api.register(&self.fresh_name()).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
            Fresh::Token if token.is_some() => {
                let mut claims = self.callers[caller].claims.clone();
                claims["jti"] = json!(Uuid::new_v4());
                token = Some(mint(&claims, Algorithm::HS256, TEST_SECRET.as_bytes()));
            }
            _ => {}
        }
        let fill = |template: &str| {
            let mut s = template
                .replace("{fresh}", &fresh)
                .replace("{member}", &self.member)
                .replace("{user}", &user);
            if let Some(room) = room {
                s = s
                    .replace("{room_id}", &room.id)
                    .replace("{room}", &room.name)
                    .replace("{msg}", &room.msg);
            }
            s
        };
        let path = fill(row.path);
        let body = row.body.map(fill);
        if row.method == "WS" {
            self.socket(&path, token.as_deref(), row.via).await
        } else {
            self.http(row.method, &path, token.as_deref(), row.via, body)
                .await
        }
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        via: Via,
        body: Option<String>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.api.client.request(method, self.api.url(path));
        req = match (token, via) {
            (None, _) => req,
            (Some(t), Via::Cookie) => req.header("cookie", format!("roomcast_token={t}")),
            (Some(t), _) => req.bearer_auth(t),
        };
        req = match body.as_deref() {
            None => req,
            Some(MULTIPART) => {
                let part = reqwest::multipart::Part::bytes(b"not an image".to_vec())
                    .file_name("avatar.png")
                    .mime_str("image/png")
                    .unwrap();
                req.multipart(reqwest::multipart::Form::new().part("file", part))
            }
            Some(json) => req
                .header("content-type", "application/json")
                .body(json.to_owned()),
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn socket(&self, path: &str, token: Option<&str>, via: Via) -> (u16, Value) {
        let cookie = token.map(|t| format!("roomcast_token={t}"));
        let (path, bearer, headers) = match (token, via) {
            (None, _) => (path.to_owned(), None, vec![]),
            (Some(t), Via::Bearer) => (path.to_owned(), Some(t), vec![]),
            (Some(t), Via::Query) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                (format!("{path}{sep}token={t}"), None, vec![])
            }
            (Some(_), Via::Cookie) => (
                path.to_owned(),
                None,
                vec![("cookie", cookie.as_deref().unwrap())],
            ),
        };
        match Ws::connect_with(self.app.addr, &path, bearer, &headers).await {
            Ok(ws) => {
                ws.close().await;
                (101, Value::Null)
            }
            Err(refused) => (refused.status, refused.body),
        }
    }
}

/// Every row as every caller; prints the table and lists every answer that
/// is not the rule's.
async fn matrix(backend: Backend) {
    let Some(world) = World::new(backend).await else {
        return;
    };
    let started = std::time::Instant::now();
    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut table = format!("{:<52} {:<8}", "request", "room");
    for name in CALLERS {
        table.push_str(&format!(" {name:>7}"));
    }
    for row in ROWS {
        let kinds = if row.per_room() { 0..KINDS.len() } else { 0..1 };
        for kind in kinds {
            let via = match row.via {
                Via::Bearer => "",
                Via::Query => " (?token)",
                Via::Cookie => " (cookie)",
            };
            let request = format!("{} {}{via}", row.method, row.path);
            let room = if row.per_room() { KINDS[kind] } else { "" };
            table.push_str(&format!("\n{request:<52} {room:<8}"));
            for (caller, name) in CALLERS.iter().enumerate() {
                let Some((status, code)) = row.expected(caller, kind) else {
                    table.push_str(&format!(" {:>7}", "-"));
                    continue;
                };
                checked += 1;
                let (got, body) = world.cell(row, caller, kind).await;
                let code_ok = code.is_none_or(|c| body["code"] == c);
                let ok = got == status && code_ok;
                table.push_str(&format!(
                    " {:>7}",
                    format!("{got}{}", if ok { "" } else { "!" })
                ));
                if !ok {
                    wrong.push(format!(
                        "{request} [{room}] as {name}: got {got} {}, want {status} {}",
                        body["code"],
                        code.unwrap_or("")
                    ));
                }
            }
        }
    }
    println!(
        "{table}\n{checked} cells in {:.1?} ({backend:?})",
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} cells break the rules:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Nor does a search name the private room to anyone but its two members
    // (admins, who list every room to manage them, aside).
    let private = &world.rooms[2].name;
    for (caller, name) in CALLERS.iter().enumerate().skip(1) {
        if *name == "admin" {
            continue;
        }
        let (status, rooms) = world
            .send(
                "GET",
                &format!("/rooms?search={private}"),
                world.token(caller),
                None,
            )
            .await;
        let listed = rooms
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == *private));
        let members = caller == MEMBER || caller == OWNER;
        assert_eq!(listed, members, "{name} lists {private}: {status}");
    }
}

/// A guest's token names one room, but it is the membership that counts: a
/// guest removed from the room has no more business there than anyone else.
async fn removed_guest_loses_the_room(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.guest_tokens = true).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.register("carol").await;
    api.create_room(&alice, "dm", "private").await;
    api.create_room(&alice, "team", "group").await;
    let guest = async |name: &str, room: &str| {
        let body =
            json!({"username": name, "email": format!("{name}@example.com"), "room_id": room});
        let (status, body) = send(&api, "POST", "/generate-token", None, &[], Some(body)).await;
        assert_eq!(status, 200, "guest token for {room}: {body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let add = async |room: &str, username: &str| {
        let path = format!("/rooms/{room}/members");
        let body = json!({ "username": username });
        let (status, _) = send(&api, "POST", &path, Some(&alice), &[], Some(body)).await;
        assert_eq!(status, 201, "add {username} to {room}");
    };
    let remove = async |room: &str, token: &str| {
        let (_, me) = send(&api, "GET", "/users/me", Some(token), &[], None).await;
        let path = format!("/rooms/{room}/members/{}", me["id"].as_str().unwrap());
        assert_eq!(
            send(&api, "DELETE", &path, Some(&alice), &[], None).await.0,
            204
        );
    };
    let reads = async |room: &str, token: &str| {
        let path = format!("/rooms/{room}/messages");
        send(&api, "GET", &path, Some(token), &[], None).await.0
    };

    // The private room: the guest takes the second seat, is removed, and
    // carol takes the seat.
    let visitor = guest("visitor", "dm").await;
    assert_eq!(reads("dm", &visitor).await, 200);
    remove("dm", &visitor).await;
    add("dm", "carol").await;
    // The group room: the owner invites the guest's account, then removes it.
    guest("drifter", "public").await;
    add("team", "drifter").await;
    let drifter = guest("drifter", "team").await;
    assert_eq!(reads("team", &drifter).await, 200);
    remove("team", &drifter).await;

    for (room, token, socket) in [
        ("dm", &visitor, "room_full"),
        ("team", &drifter, "not_a_member"),
    ] {
        for path in ["", "/members", "/messages"] {
            let path = format!("/rooms/{room}{path}");
            let (status, body) = send(&api, "GET", &path, Some(token), &[], None).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("not_a_member")),
                "{path}"
            );
        }
        let body = json!({"room_id": room, "content": "still here?"});
        let (status, _) = send(&api, "POST", "/message", Some(token), &[], Some(body)).await;
        assert_eq!(status, 403, "removed guest posts to {room}");
        let refused = Ws::connect(app.addr, &format!("/ws/{room}"), Some(token))
            .await
            .err()
            .unwrap_or_else(|| panic!("removed guest opened /ws/{room}"));
        assert_eq!(
            (refused.status, refused.body["code"].as_str()),
            (403, Some(socket))
        );
    }
}

/// The socket asks what HTTP asks, for every message: a guest removed from a
/// public room cannot open a socket there again, and a membership that goes
/// while a socket is open (here straight from the database, as when the
/// removal's event does not reach the node) stops that socket's posts within
/// the ingest cache's second, for a guest and for a member alike.
async fn sockets_post_only_as_http_would(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.guest_tokens = true).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.create_room(&alice, "lobby", "public").await;
    api.create_room(&alice, "team", "group").await;
    let members = "/rooms/team/members";
    let body = json!({"username": "bob"});
    assert_eq!(
        send(&api, "POST", members, Some(&alice), &[], Some(body))
            .await
            .0,
        201
    );
    let guest = async |name: &str| {
        let body =
            json!({"username": name, "email": format!("{name}@example.com"), "room_id": "lobby"});
        let (status, body) = send(&api, "POST", "/generate-token", None, &[], Some(body)).await;
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        let (_, me) = send(&api, "GET", "/users/me", Some(&token), &[], None).await;
        (me["id"].as_str().unwrap().to_owned(), token)
    };

    // Removed over HTTP: no new socket, no post.
    let (visitor_id, visitor) = guest("visitor").await;
    let path = format!("/rooms/lobby/members/{visitor_id}");
    assert_eq!(
        send(&api, "DELETE", &path, Some(&alice), &[], None).await.0,
        204
    );
    let body = json!({"room_id": "lobby", "content": "still here?"});
    let (status, _) = send(&api, "POST", "/message", Some(&visitor), &[], Some(body)).await;
    assert_eq!(status, 403, "removed guest posts over HTTP");
    let refused = Ws::connect(app.addr, "/ws/lobby", Some(&visitor))
        .await
        .err()
        .expect("a removed guest opened /ws/lobby");
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (403, Some("not_a_member"))
    );

    // Removed while the socket is open, with no event to close it.
    use sea_orm::EntityTrait as _;
    let db = sea_orm::Database::connect(&app.env.db.url).await.unwrap();
    let (drifter_id, drifter) = guest("drifter").await;
    for (who, token, room, user_id) in [
        ("guest", drifter.as_str(), "lobby", drifter_id.clone()),
        ("member", bob.as_str(), "team", bob_id.to_string()),
    ] {
        let (mut ws, welcome) = Ws::join(app.addr, &format!("/ws/{room}"), token).await;
        let room_id = welcome["room"]["id"].as_str().unwrap().to_owned();
        ws.send_json(&json!({"type": "message", "content": "in", "client_id": "in"}))
            .await;
        assert_eq!(ws.next_of(&["ack", "error"]).await["type"], "ack", "{who}");
        let seat = (
            room_id.parse::<Uuid>().unwrap(),
            user_id.parse::<Uuid>().unwrap(),
        );
        let gone = entity::room_member::Entity::delete_by_id(seat)
            .exec(&db)
            .await
            .unwrap();
        assert_eq!(gone.rows_affected, 1, "{who}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut n = 0;
        let refusal = loop {
            n += 1;
            let client_id = format!("out-{n}");
            ws.send_json(&json!({"type": "message", "content": "out", "client_id": client_id}))
                .await;
            let reply = ws.next_of(&["ack", "error"]).await;
            assert_eq!(reply["client_id"], client_id.as_str(), "{who}: {reply}");
            if reply["type"] == "error" {
                break reply;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{who}: the open socket still posts after its seat went"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert_eq!(refusal["code"], "not_a_member", "{who}: {refusal}");
        ws.close().await;
    }
}

/// The cookie is an ambient credential: a page on another origin must not be
/// able to use it, on a socket or on HTTP. A bearer token is not ambient.
async fn cookie_is_refused_cross_site(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, bearer) = api.user("alice").await;
    let login = json!({"username": "alice", "password": "password123"});
    let res = api
        .client
        .post(api.url("/auth/login"))
        .json(&login)
        .send()
        .await
        .unwrap();
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("roomcast_token=ey"), "{cookie}");

    let same = format!("http://{}", app.addr);
    let look_alike = format!("http://{}.evil.example", app.addr);
    let origins: [(Option<&str>, bool); 6] = [
        (None, true),
        (Some(&same), true),
        (Some("https://app.example"), true),
        (Some("http://evil.example"), false),
        (Some("null"), false),
        (Some(&look_alike), false),
    ];
    for (i, (origin, allowed)) in origins.into_iter().enumerate() {
        let what = format!("cookie from {origin:?}");
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        match Ws::connect_with(app.addr, "/ws/public", None, &headers).await {
            Ok(mut ws) => {
                assert!(allowed, "{what}: socket upgraded");
                assert_eq!(ws.next_json().await["type"], "welcome");
                ws.close().await;
            }
            Err(refused) => {
                assert!(!allowed, "{what}: {refused:?}");
                let code = refused.body["code"].as_str();
                assert_eq!((refused.status, code), (403, Some("origin_not_allowed")));
            }
        }
        // Reads and writes alike; refused ones change nothing.
        let name = format!("cross-site-{i}");
        let mut requests = vec![
            ("GET", "/users/me", None, 200),
            (
                "POST",
                "/rooms",
                Some(json!({"name": name, "kind": "public"})),
                201,
            ),
            (
                "POST",
                "/message",
                Some(json!({"room_id": "public", "content": "hi"})),
                202,
            ),
            (
                "PATCH",
                "/users/me",
                Some(json!({"current_password": "password123"})),
                200,
            ),
        ];
        if !allowed {
            // Would end the session the next origins need, were they allowed.
            requests.extend([
                ("POST", "/auth/logout", None, 204),
                (
                    "DELETE",
                    "/users/me",
                    Some(json!({"current_password": "password123"})),
                    204,
                ),
            ]);
        }
        for (method, path, body, ok) in requests {
            let (status, body) = send(&api, method, path, None, &headers, body).await;
            let want = if allowed {
                (ok, None)
            } else {
                (403, Some("origin_not_allowed"))
            };
            let got = (status, body["code"].as_str().filter(|_| !allowed));
            assert_eq!(got, want, "{what}: {method} {path}");
        }
        // A bearer token is added by the page's own script, not by the
        // browser, so it may come from anywhere over HTTP; a socket upgrade
        // with a foreign Origin is refused whatever its token.
        if let Some(origin) = origin {
            let headers = [("origin", origin)];
            let (status, _) = send(&api, "GET", "/users/me", Some(&bearer), &headers, None).await;
            assert_eq!(status, 200, "bearer from {origin}");
            let socket = Ws::connect_with(app.addr, "/ws/public", Some(&bearer), &headers).await;
            assert_eq!(socket.is_ok(), allowed, "bearer socket from {origin}");
        }
    }
    let (status, _) = send(&api, "GET", "/users/me", None, &[("cookie", &cookie)], None).await;
    assert_eq!(
        status, 200,
        "the cross-site logout and deletion did nothing"
    );
}

/// Forged, confused, tampered, stale and malformed tokens: 401 on HTTP and
/// on the socket, by header and by query parameter.
async fn jwt_attacks(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, good) = api.user("mallory").await;
    let (victim, _) = api.user("victim").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (_, me) = send(&api, "GET", "/users/me", Some(&good), &[], None).await;
    let claims = claims_for(&me, None);
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let secret = TEST_SECRET.as_bytes();
    let hs256 = |claims: &Value| mint(claims, Algorithm::HS256, secret);
    // Header and claims as given, signed with the secret by `alg` or not at all.
    let by_hand = |alg: &str, claims: &Value, sign: Option<Algorithm>| {
        let header = b64.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let input = format!("{header}.{}", b64.encode(claims.to_string()));
        let signature = sign.map_or(String::new(), |sign| {
            let key = EncodingKey::from_secret(secret);
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, sign).unwrap()
        });
        format!("{input}.{signature}")
    };

    // Control: a token made the server's way is accepted, so each refusal
    // below is for what that case changes.
    let control = hs256(&claims);
    let (status, _) = send(&api, "GET", "/users/me", Some(&control), &[], None).await;
    assert_eq!(status, 200);
    let ws = Ws::connect(app.addr, "/ws/public", Some(&control)).await;
    ws.unwrap().close().await;

    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
    payload["sub"] = json!(victim);
    parts[1] = b64.encode(payload.to_string());
    let tampered = parts.join(".");
    let unsigned = by_hand("none", &claims, None);
    let none_signed = format!("{unsigned}{}", good.rsplit('.').next().unwrap());
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let expired = hs256(&with("exp", json!(unix_now() - 60)));
    let revoked = hs256(&with("jti", json!(Uuid::new_v4())));
    let (status, _) = send(&api, "POST", "/auth/logout", Some(&revoked), &[], None).await;
    assert_eq!(status, 204);
    let (_, deleted) = api.user("ghost").await;
    let (status, _) = send(
        &api,
        "DELETE",
        "/users/me",
        Some(&deleted),
        &[],
        Some(json!({"current_password": "password123"})),
    )
    .await;
    assert_eq!(status, 204);

    const BAD: &str = "invalid_token";
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned, BAD),
        ("alg None", by_hand("None", &claims, None), BAD),
        ("alg none, signature kept", none_signed, BAD),
        ("HS256, no signature", by_hand("HS256", &claims, None), BAD),
        (
            "HS512 with the secret",
            mint(&claims, Algorithm::HS512, secret),
            BAD,
        ),
        (
            "HS384 with the secret",
            mint(&claims, Algorithm::HS384, secret),
            BAD,
        ),
        (
            "RS256 header, HMAC signature",
            by_hand("RS256", &claims, Some(Algorithm::HS256)),
            BAD,
        ),
        ("sub changed, signature kept", tampered, BAD),
        (
            "another key",
            mint(
                &claims,
                Algorithm::HS256,
                b"another-key-of-32-bytes-or-more!",
            ),
            BAD,
        ),
        ("expired a minute ago", expired, "token_expired"),
        ("no exp", hs256(&no_exp), BAD),
        ("sub not a uuid", hs256(&with("sub", json!("admin"))), BAD),
        ("logged out", revoked, "token_revoked"),
        ("account deleted", deleted, BAD),
        ("garbage", "not.a.jwt".into(), BAD),
        ("one segment", "eyJhbGciOiJIUzI1NiJ9".into(), BAD),
        ("empty bearer", String::new(), "missing_token"),
    ];
    for (what, token, code) in &cases {
        let header = format!("Bearer {token}");
        let auth = [("authorization", header.as_str())];
        let (status, body) = send(&api, "GET", "/users/me", None, &auth, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some(*code)),
            "HTTP, {what}"
        );
        let mut tries = vec![("header", "/ws/public".to_owned(), &auth[..])];
        if !token.is_empty() {
            tries.push(("query", format!("/ws/public?token={token}"), &[]));
        }
        for (how, path, headers) in tries {
            let refused = Ws::connect_with(app.addr, &path, None, headers)
                .await
                .err()
                .unwrap_or_else(|| panic!("socket by {how}, {what}: upgraded"));
            let got = (refused.status, refused.body["code"].as_str());
            assert_eq!(got, (401, Some(*code)), "socket by {how}, {what}");
        }
        println!("{what:<30} HTTP and socket: 401 {code}");
    }
}

/// Sends a request with a bearer `token`, `headers` and a JSON `body`, each
/// if given; the status and the JSON answer (null if none).
async fn send(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = api.client.request(method, api.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

crate::on_both_backends!(
    matrix,
    removed_guest_loses_the_room,
    sockets_post_only_as_http_would,
    cookie_is_refused_cross_site,
    jwt_attacks
);
