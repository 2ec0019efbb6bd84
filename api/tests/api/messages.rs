//! Messages over HTTP: ingest, history, and delivery to sockets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, spawn_app},
    ws_client::Ws,
};

/// Polls history until it holds `n` messages (the store stage is asynchronous).
pub async fn wait_for_history(api: &Api, token: &str, room: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let res = api
            .client
            .get(api.url(&format!("/rooms/{room}/messages?limit=200")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let page: Vec<Value> = res.json().await.unwrap();
        if page.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(page.len(), n, "history of {room}");
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn post(api: &Api, token: &str, body: Value) -> (u16, Value) {
    let res = api
        .client
        .post(api.url("/message"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn http_message_reaches_sockets_and_history(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    api.create_room(&alice, "chat", "group").await;
    api.client
        .post(api.url("/rooms/chat/members"))
        .bearer_auth(&alice)
        .json(&json!({"username": "bob"}))
        .send()
        .await
        .unwrap();
    let (mut ws_alice, _) = Ws::join(app.addr, "/ws/chat", &alice).await;
    let (mut ws_bob, _) = Ws::join(app.addr, "/ws/chat", &bob).await;

    let (status, accepted) =
        post(&api, &alice, json!({"room_id": "chat", "content": "hello"})).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    for ws in [&mut ws_alice, &mut ws_bob] {
        let m = ws.next_of(&["message"]).await;
        assert_eq!(m["id"], accepted["id"]);
        assert_eq!(m["seq"], 1);
        assert_eq!(m["content"], "hello");
        assert_eq!(m["sender"]["id"], alice_id.to_string());
        assert_eq!(m["sender"]["username"], "alice");
        assert_eq!(m["deleted"], false);
        assert!(m.get("replay").is_none());
    }
    // The room-scoped route does the same.
    let res = api
        .client
        .post(api.url("/rooms/chat/messages"))
        .bearer_auth(&bob)
        .json(&json!({"content": "hi alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(ws_alice.next_of(&["message"]).await["seq"], 2);

    let history = wait_for_history(&api, &bob, "chat", 2).await;
    assert_eq!(history[0]["content"], "hi alice", "newest first");
    assert_eq!(history[1]["id"], accepted["id"]);
}

async fn client_id_retry_is_stored_and_delivered_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "retry", "public").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/retry", &alice).await;
    let body = json!({"room_id": "retry", "content": "once", "client_id": "c-1"});
    let (s1, first) = post(&api, &alice, body.clone()).await;
    let (s2, second) = post(&api, &alice, body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], second["id"]);
    let (_, after) = post(
        &api,
        &alice,
        json!({"room_id": "retry", "content": "after"}),
    )
    .await;

    let m = ws.next_of(&["message"]).await;
    assert_eq!(
        (
            m["content"].as_str(),
            m["client_id"].as_str(),
            m["seq"].as_i64()
        ),
        (Some("once"), Some("c-1"), Some(1))
    );
    let m = ws.next_of(&["message"]).await;
    assert_eq!(m["id"], after["id"], "the retry is not delivered twice");
    assert_eq!(m["seq"], 2);
    wait_for_history(&api, &alice, "retry", 2).await;
}

async fn history_pages(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    api.create_room(&alice, "pages", "group").await;
    for i in 1..=5 {
        let (status, _) = post(
            &api,
            &alice,
            json!({"room_id": "pages", "content": format!("m{i}")}),
        )
        .await;
        assert_eq!(status, 202);
    }
    wait_for_history(&api, &alice, "pages", 5).await;
    let seqs = |path: &'static str| {
        let api = &api;
        let alice = &alice;
        async move {
            let page: Vec<Value> = api
                .client
                .get(api.url(path))
                .bearer_auth(alice)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page.iter()
                .map(|m| m["seq"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs("/rooms/pages/messages").await, [5, 4, 3, 2, 1]);
    assert_eq!(seqs("/rooms/pages/messages?before=4&limit=2").await, [3, 2]);
    assert_eq!(seqs("/rooms/pages/messages?after=2").await, [3, 4, 5]);
    assert_eq!(seqs("/rooms/pages/messages?after=2&limit=1").await, [3]);
    for bad in ["limit=0", "limit=201", "before=1&after=2", "limit=x"] {
        let res = api
            .client
            .get(api.url(&format!("/rooms/pages/messages?{bad}")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{bad}");
    }
    let res = api
        .client
        .get(api.url("/rooms/pages/messages"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

async fn posting_rules(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    api.create_room(&alice, "closed", "group").await;
    let cases = [
        (
            "non-member",
            &bob,
            json!({"room_id": "closed", "content": "x"}),
            403,
            "not_a_member",
        ),
        (
            "unknown room",
            &alice,
            json!({"room_id": "nowhere", "content": "x"}),
            404,
            "not_found",
        ),
        (
            "too large",
            &alice,
            json!({"room_id": "closed", "content": "x".repeat(4097)}),
            413,
            "message_too_large",
        ),
        (
            "empty",
            &alice,
            json!({"room_id": "closed", "content": "  "}),
            422,
            "validation_failed",
        ),
        (
            "long client_id",
            &alice,
            json!({"room_id": "closed", "content": "x", "client_id": "c".repeat(65)}),
            422,
            "validation_failed",
        ),
        (
            "wrong type",
            &alice,
            json!({"room_id": "closed", "content": 5}),
            422,
            "validation_failed",
        ),
        (
            "public room, any user",
            &bob,
            json!({"room_id": "public", "content": "hi all"}),
            202,
            "",
        ),
        (
            "exactly the limit",
            &alice,
            json!({"room_id": "closed", "content": "é".repeat(2048)}),
            202,
            "",
        ),
    ];
    for (what, token, body, status, code) in cases {
        let (got, body) = post(&api, token, body).await;
        assert_eq!(got, status, "{what}: {body}");
        if !code.is_empty() {
            assert_eq!(body["code"], code, "{what}");
        }
    }
    let res = api
        .client
        .post(api.url("/message"))
        .json(&json!({"room_id": "public", "content": "anon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// A `client_id` reused in another room is another message, not a retry.
async fn client_id_is_scoped_to_its_room(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "one", "public").await;
    api.create_room(&alice, "two", "public").await;
    let (s1, first) = post(
        &api,
        &alice,
        json!({"room_id": "one", "content": "a", "client_id": "k"}),
    )
    .await;
    let (s2, second) = post(
        &api,
        &alice,
        json!({"room_id": "two", "content": "b", "client_id": "k"}),
    )
    .await;
    assert_eq!((s1, s2), (202, 202));
    assert_ne!(first["id"], second["id"]);
    assert_eq!(
        wait_for_history(&api, &alice, "one", 1).await[0]["content"],
        "a"
    );
    assert_eq!(
        wait_for_history(&api, &alice, "two", 1).await[0]["content"],
        "b"
    );
}

/// The store stage checks the sender again, whatever came through ingest: a
/// message into a private room from a user who is not a member (removed
/// after the `202`, or published by hand) is dead-lettered, not stored; the
/// same user may post in a public room, and a member in the private one.
async fn store_stage_checks_membership_of_closed_rooms(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (carol_id, carol) = api.user("carol").await;
    let secret = api.create_room(&alice, "secret", "private").await;
    let hall = api.create_room(&alice, "hall", "public").await;
    for (room, sender, content) in [
        (&secret, carol_id, "let me in"),
        (&hall, carol_id, "hello hall"),
        (&secret, alice_id, "just us"),
    ] {
        // Signed as ingest signs, so the store stage trusts the sender and
        // judges membership (unsigned, it would be a system message).
        app.publish_signed(
            &json!({"room_id": room["id"], "sender_id": sender, "content": content}),
        )
        .await;
    }
    let in_hall = wait_for_history(&api, &carol, "hall", 1).await;
    assert_eq!(in_hall[0]["content"], "hello hall");
    // Published after carol's, so stored (or refused) after it.
    let in_secret = wait_for_history(&api, &alice, "secret", 1).await;
    assert_eq!(in_secret[0]["content"], "just us");
    assert_eq!(in_secret[0]["seq"], 1, "the refused message took no seq");
    // Counted when the batch is settled, just after it is committed.
    let refused = r#"roomcast_messages_dead_lettered_total{reason="not_a_member"}"#;
    api.wait_for_metric(refused, 1.0).await;
    assert_eq!(api.metric(refused).await, Some(1.0));
}

crate::on_both_backends!(
    store_stage_checks_membership_of_closed_rooms,
    http_message_reaches_sockets_and_history,
    client_id_retry_is_stored_and_delivered_once,
    client_id_is_scoped_to_its_room,
    history_pages,
    posting_rules,
);
