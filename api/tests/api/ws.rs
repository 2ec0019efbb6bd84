//! The WebSocket protocol of DESIGN.md §5.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{
    helpers::{Backend, TEST_SECRET, spawn_app, spawn_app_with},
    messages::{post, wait_for_history},
    ws_client::Ws,
};

async fn refusals_happen_before_the_upgrade(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.rooms_auto_create = false).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    api.create_room(&alice, "team", "group").await;
    api.create_room(&alice, "duo", "private").await;
    api.client
        .post(api.url("/rooms/duo/join"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();

    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("no token", "/ws/public", None, vec![], 401, "missing_token"),
        (
            "bad token",
            "/ws/public",
            Some("nope"),
            vec![],
            401,
            "invalid_token",
        ),
        (
            "unknown room, auto-create off",
            "/ws/nowhere",
            Some(&alice),
            vec![],
            404,
            "not_found",
        ),
        (
            "group, not a member",
            "/ws/team",
            Some(&carol),
            vec![],
            403,
            "not_a_member",
        ),
        (
            "private, full",
            "/ws/duo",
            Some(&carol),
            vec![],
            403,
            "room_full",
        ),
        (
            "cross-site origin",
            "/ws/public",
            Some(&alice),
            vec![("origin", "https://evil.example")],
            403,
            "origin_not_allowed",
        ),
        (
            "unknown query parameter",
            "/ws/public?bogus=1",
            Some(&alice),
            vec![],
            422,
            "validation_failed",
        ),
    ];
    for (what, path, token, headers, status, code) in cases {
        let refused = Ws::connect_with(app.addr, path, token, &headers)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: upgraded"));
        assert_eq!(refused.status, status, "{what}: {:?}", refused.body);
        assert_eq!(refused.body["code"], code, "{what}");
    }
    // Token by query parameter and by cookie work too; the same origin is fine.
    let (mut ws, _) = Ws::join(app.addr, &format!("/ws/public?token={alice}"), "").await;
    ws.send_json(&json!({"type": "ping"})).await;
    assert_eq!(ws.next_of(&["pong"]).await["type"], "pong");
    let cookie = format!("roomcast_token={bob}");
    let origin = format!("http://{}", app.addr);
    let mut ws = Ws::connect_with(
        app.addr,
        "/updates/public",
        None,
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .unwrap();
    assert_eq!(ws.next_json().await["type"], "welcome");
}

async fn frames_in_and_out(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (mut ws, welcome) = Ws::join(app.addr, "/ws/public", &alice).await;
    assert_eq!(welcome["room"]["name"], "public");
    assert_eq!(welcome["user"]["id"], alice_id.to_string());

    ws.send_json(&json!({"type": "message", "content": "hi", "client_id": "k1"}))
        .await;
    let ack = ws.next_of(&["ack"]).await;
    assert_eq!(ack["client_id"], "k1");
    let message = ws.next_of(&["message"]).await;
    assert_eq!(message["id"], ack["id"]);
    assert_eq!(message["content"], "hi");

    ws.send_text("typed by a person").await;
    assert_eq!(
        ws.next_of(&["message"]).await["content"],
        "typed by a person"
    );

    ws.send_text("{not json").await;
    let error = ws.next_of(&["error"]).await;
    assert_eq!(error["code"], "malformed_json");
    ws.send_json(&json!({"type": "dance"})).await;
    assert_eq!(ws.next_of(&["error"]).await["code"], "unknown_type");
    ws.send_json(&json!({"type": "message", "content": "", "client_id": "k2"}))
        .await;
    let error = ws.next_of(&["error"]).await;
    assert_eq!(
        (error["code"].as_str(), error["client_id"].as_str()),
        (Some("validation_failed"), Some("k2"))
    );
    ws.send_json(&json!({"type": "message", "content": "y".repeat(4097)}))
        .await;
    assert_eq!(ws.next_of(&["error"]).await["code"], "message_too_large");
    // Still open after all that.
    ws.send_json(&json!({"type": "ping"})).await;
    assert_eq!(ws.next_of(&["pong"]).await["type"], "pong");

    ws.send_binary(vec![1, 2, 3]).await;
    assert_eq!(ws.expect_close().await, 1003);

    // Content within the limit, sent as JSON that escapes every character
    // (as Python's default does): six bytes on the wire for each.
    let (mut ws, _) = Ws::join(app.addr, "/ws/public", &alice).await;
    let escaped: String = std::iter::repeat_n("\\u0436", 2000).collect();
    ws.send_text(&format!(
        r#"{{"type":"message","content":"{escaped}","client_id":"k9"}}"#
    ))
    .await;
    assert_eq!(ws.next_of(&["ack"]).await["client_id"], "k9");
    assert_eq!(
        ws.next_of(&["message"]).await["content"]
            .as_str()
            .map(|c| c.chars().count()),
        Some(2000)
    );
    // A JSON frame past what any content within the limit needs: closed.
    let content = "z".repeat(6 * 4096 + 600);
    ws.send_text(&format!(r#"{{"type":"message","content":"{content}"}}"#))
        .await;
    assert_eq!(ws.expect_close().await, 1009);

    // Plain text escapes nothing: over the limit and the envelope's room, closed.
    let (mut ws, _) = Ws::join(app.addr, "/ws/public", &alice).await;
    ws.send_text(&"z".repeat(4096 + 600)).await;
    assert_eq!(ws.expect_close().await, 1009);
}

async fn since_replays_without_gap_then_live(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "log", "group").await;
    for i in 1..=5 {
        post(
            &api,
            &alice,
            json!({"room_id": "log", "content": format!("m{i}")}),
        )
        .await;
    }
    wait_for_history(&api, &alice, "log", 5).await;

    let (mut ws, _) = Ws::join(app.addr, "/ws/log?since=2", &alice).await;
    for seq in 3..=5 {
        let m = ws.next_of(&["message"]).await;
        assert_eq!(
            (m["seq"].as_i64(), m["replay"].as_bool()),
            (Some(seq), Some(true))
        );
    }
    post(&api, &alice, json!({"room_id": "log", "content": "live"})).await;
    let m = ws.next_of(&["message"]).await;
    assert_eq!((m["seq"].as_i64(), m.get("replay")), (Some(6), None));

    // Without since: the latest `history` messages, oldest first.
    let (mut ws, _) = Ws::join(app.addr, "/ws/log?history=2", &alice).await;
    let seqs = [
        ws.next_of(&["message"]).await["seq"].as_i64(),
        ws.next_of(&["message"]).await["seq"].as_i64(),
    ];
    assert_eq!(seqs, [Some(5), Some(6)]);
    let (mut ws, _) = Ws::join(app.addr, "/ws/log?history=0", &alice).await;
    assert!(
        ws.try_next_json(Duration::from_millis(300))
            .await
            .is_none_or(|f| f["type"] != "message")
    );
}

async fn auto_created_private_room_admits_two(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let (_, welcome) = Ws::join(app.addr, "/ws/alice-and-bob", &alice).await;
    assert_eq!(welcome["room"]["kind"], "private");
    let (_ws, _) = Ws::join(app.addr, "/ws/alice-and-bob", &bob).await;
    let refused = Ws::connect(app.addr, "/ws/alice-and-bob", Some(&carol))
        .await
        .err()
        .expect("a third user is refused");
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (403, Some("room_full"))
    );
    // A user may hold several sockets.
    let (_again, _) = Ws::join(app.addr, "/ws/alice-and-bob", &bob).await;
}

fn online_names(welcome: &Value) -> Vec<String> {
    let mut names: Vec<String> = welcome["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The `presence` frames that come within `wait`, each as the names it
/// says joined and left.
async fn presence_within(ws: &mut Ws, wait: Duration) -> Vec<(Vec<String>, Vec<String>)> {
    let until = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        match ws.poll_json(left).await.expect("the socket stays open") {
            None => break,
            Some(frame) if frame["type"] == "presence" => seen.push(presence_names(&frame)),
            Some(_) => {}
        }
    }
    seen
}

/// A `presence` frame's joined and left users, by name.
fn presence_names(frame: &Value) -> (Vec<String>, Vec<String>) {
    let names = |member: &str| -> Vec<String> {
        frame[member]
            .as_array()
            .unwrap_or_else(|| panic!("no {member}: {frame}"))
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    (names("joined"), names("left"))
}

/// A user is announced once a socket of theirs has lasted `PRESENCE_DELAY`
/// (1 s), once however many sockets they hold, and leaves with the last one,
/// in `presence` frames (`joined`, `left`). A socket that drops sooner is
/// never announced.
async fn join_and_leave_are_announced(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    let (mut ws_alice, welcome) = Ws::join(app.addr, "/ws/public", &alice).await;
    assert_eq!(online_names(&welcome), ["alice"], "{welcome}");
    let own = ws_alice.next_of(&["presence"]).await;
    assert_eq!(
        presence_names(&own),
        (vec!["alice".to_owned()], vec![]),
        "her own arrival comes first: {own}"
    );

    // Carol comes and goes before the delay: the room never hears of her.
    let (quick, welcome) = Ws::join(app.addr, "/ws/public", &carol).await;
    assert_eq!(online_names(&welcome), ["alice", "carol"]);
    quick.close().await;

    let (ws_bob, welcome) = Ws::join(app.addr, "/ws/public", &bob).await;
    assert_eq!(online_names(&welcome), ["alice", "bob"], "{welcome}");
    let (bob_again, _) = Ws::join(app.addr, "/ws/public", &bob).await;
    let join = ws_alice.next_of(&["presence"]).await;
    assert_eq!(
        presence_names(&join),
        (vec!["bob".to_owned()], vec![]),
        "{join}"
    );
    // Both of Bob's sockets have lasted: one arrival, and closing one is no departure.
    assert_eq!(
        presence_within(&mut ws_alice, Duration::from_millis(1500)).await,
        []
    );
    ws_bob.close().await;
    assert_eq!(
        presence_within(&mut ws_alice, Duration::from_millis(1500)).await,
        []
    );
    bob_again.close().await;
    let leave = ws_alice.next_of(&["presence"]).await;
    assert_eq!(
        presence_names(&leave),
        (vec![], vec!["bob".to_owned()]),
        "{leave}"
    );
    assert_eq!(
        presence_within(&mut ws_alice, Duration::from_millis(1500)).await,
        []
    );
}

/// Many sockets arriving at once, and a user reconnecting over and over, are
/// at most a few `presence` frames, not one per socket.
async fn churn_is_coalesced(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.presence_delay = Duration::ZERO).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (mut ws_alice, _) = Ws::join(app.addr, "/ws/public", &alice).await;
    ws_alice.next_of(&["presence"]).await;
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(api.user(&format!("crowd{i}")).await.1);
    }
    let mut sockets = Vec::new();
    for token in &users {
        sockets.push(Ws::join(app.addr, "/ws/public", token).await.0);
    }
    for _ in 0..5 {
        let (again, _) = Ws::join(app.addr, "/ws/public", &users[0]).await;
        again.close().await;
    }
    let frames = presence_within(&mut ws_alice, Duration::from_millis(1500)).await;
    let joined: Vec<&String> = frames.iter().flat_map(|(joined, _)| joined).collect();
    assert_eq!(joined.len(), 8, "each user joins once: {frames:?}");
    assert!(frames.iter().all(|(_, left)| left.is_empty()), "{frames:?}");
    assert!(frames.len() < 8, "coalesced: {frames:?}");
    drop(sockets);
}

async fn guest_flow(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.guest_tokens = true).await else {
        return;
    };
    let api = app.api();
    let res = api
        .client
        .post(api.url("/generate-token"))
        .json(&json!({"username": "visitor", "email": "v@example.com", "room_id": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let room_id = body["room_id"].as_str().unwrap().to_owned();

    let (mut ws, _) = Ws::join(app.addr, &format!("/updates/{room_id}"), &token).await;
    let (status, accepted) = post(
        &api,
        &token,
        json!({"room_id": room_id, "content": "hello from Postman"}),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let m = ws.next_of(&["message"]).await;
    assert_eq!(
        (m["content"].as_str(), m["sender"]["username"].as_str()),
        (Some("hello from Postman"), Some("visitor"))
    );

    // The guest token is good for that room only, and not for other things.
    let (status, _) = post(
        &api,
        &token,
        json!({"room_id": "public", "content": "elsewhere"}),
    )
    .await;
    assert_eq!(status, 403);
    let res = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&token)
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The same name and address is the same guest again; an address made
    // from the name is no key, and its guest is not given out again.
    let ask = |username: &'static str, email: &'static str| {
        api.client
            .post(api.url("/generate-token"))
            .json(&json!({"username": username, "email": email, "room_id": "support"}))
            .send()
    };
    assert_eq!(ask("visitor", "v@example.com").await.unwrap().status(), 200);
    assert_eq!(
        ask("visitor", "other@example.com").await.unwrap().status(),
        409
    );
    assert_eq!(
        ask("kim", "kim@guests.invalid").await.unwrap().status(),
        200
    );
    assert_eq!(
        ask("kim", "kim@guests.invalid").await.unwrap().status(),
        409
    );
    // A registered user's name cannot be taken by a guest.
    api.register("alice").await;
    let res = api
        .client
        .post(api.url("/generate-token"))
        .json(&json!({"username": "alice", "email": "x@example.com", "room_id": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
}

async fn guest_tokens_are_off_by_default(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let res = app
        .client
        .post(app.url("/generate-token"))
        .json(&json!({"username": "visitor", "email": "v@example.com", "room_id": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn token_expiry_closes_4001(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (id, _) = api.user("alice").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": id, "name": "alice", "role": "user", "iat": now, "exp": now + 2, "jti": uuid::Uuid::new_v4()});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap();
    let (mut ws, _) = Ws::join(app.addr, "/ws/public", &token).await;
    assert_eq!(ws.expect_close().await, 4001);
}

async fn logged_out_token_cannot_open_a_socket(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("alice").await;
    api.client
        .post(api.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let refused = Ws::connect(app.addr, "/ws/public", Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (401, Some("token_revoked"))
    );
}

async fn shutdown_closes_sockets_1012(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let (_, token) = app.api().user("alice").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/public", &token).await;
    app.shutdown();
    assert_eq!(ws.expect_close().await, 1012);
}

crate::on_both_backends!(
    refusals_happen_before_the_upgrade,
    frames_in_and_out,
    since_replays_without_gap_then_live,
    auto_created_private_room_admits_two,
    join_and_leave_are_announced,
    churn_is_coalesced,
    guest_flow,
    guest_tokens_are_off_by_default,
    token_expiry_closes_4001,
    logged_out_token_cannot_open_a_socket,
    shutdown_closes_sockets_1012,
);

async fn removal_and_deletion_close_sockets(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.create_room(&alice, "club", "group").await;
    api.client
        .post(api.url("/rooms/club/members"))
        .bearer_auth(&alice)
        .json(&json!({"user_id": bob_id}))
        .send()
        .await
        .unwrap();
    let (mut ws_alice, _) = Ws::join(app.addr, "/ws/club", &alice).await;
    let (mut ws_bob, _) = Ws::join(app.addr, "/ws/club", &bob).await;
    let res = api
        .client
        .delete(api.url(&format!("/rooms/club/members/{bob_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(ws_bob.expect_close().await, 4403);
    let removed = ws_alice.next_of(&["member_removed"]).await;
    assert_eq!(removed["user_id"], bob_id.to_string());
    // Bob cannot come back in.
    let refused = Ws::connect(app.addr, "/ws/club", Some(&bob))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);

    let res = api
        .client
        .delete(api.url("/rooms/club"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(ws_alice.expect_close().await, 4404);
}

crate::on_both_backends!(removal_and_deletion_close_sockets);
