//! The user's own socket, `GET /ws`: the rooms that enter and leave a user's
//! list, pushed from whichever node made the change.

use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, TestDb, TestEnv, TestVhost, client, spawn_env_node},
    ws_client::Ws,
};

/// A request's status and JSON body.
async fn call(
    api: &Api,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method.parse().unwrap(), api.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The next frame of `ws` that is one of the user's room events.
async fn room_event(ws: &mut Ws) -> Value {
    ws.next_of(&["room_added", "room_removed", "room_listed", "room_unlisted"])
        .await
}

/// Bob's socket is on node B; olive, the owner, changes his rooms on node A.
/// Each change reaches him at once, as his own frame: added, removed, added
/// again, the room deleted, a private room opened with him, a public room
/// listed, joined and unlisted. A room of olive's he is not in sends him
/// nothing; logging out closes it with 4001.
async fn room_list_changes_reach_the_users_socket_on_another_node(backend: Backend) {
    // Two processes on one database and one RabbitMQ vhost, whichever the database.
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let Some(vhost) = TestVhost::new().await else {
        return;
    };
    let env = TestEnv {
        db,
        vhost: Some(vhost),
    };
    let a = spawn_env_node(&env, &[("NODE_ID", "uw-a")]);
    let b = spawn_env_node(&env, &[("NODE_ID", "uw-b")]);
    let (api_a, api_b) = (Api::new(a.addr), Api::new(b.addr));
    let (olive_id, olive) = api_a.user("olive").await;
    let (bob_id, bob) = api_b.user("bob").await;

    let (mut ws, welcome) = Ws::join(b.addr, "/ws", &bob).await;
    assert_eq!(welcome["user"]["id"], json!(bob_id), "{welcome}");

    api_a.create_room(&olive, "team", "group").await;
    api_a.create_room(&olive, "solo", "group").await;
    let (status, body) = call(
        &api_a,
        "POST",
        "/rooms/team/members",
        &olive,
        Some(json!({"username": "bob"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let added = room_event(&mut ws).await;
    assert_eq!(added["type"], "room_added", "{added}");
    assert_eq!(added["room"]["name"], "team", "{added}");
    assert_eq!(added["room"]["member_count"], 2, "{added}");
    let team = added["room"]["id"].clone();

    let removal = format!("/rooms/team/members/{bob_id}");
    let (status, body) = call(&api_a, "DELETE", &removal, &olive, None).await;
    assert_eq!(status, 204, "{body}");
    let removed = room_event(&mut ws).await;
    assert_eq!(
        (&removed["type"], &removed["room_id"], &removed["reason"]),
        (&json!("room_removed"), &team, &json!("removed")),
        "{removed}"
    );

    let (status, body) = call(
        &api_a,
        "POST",
        "/rooms/team/members",
        &olive,
        Some(json!({"user_id": bob_id})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(room_event(&mut ws).await["type"], "room_added");
    let (status, body) = call(&api_a, "DELETE", "/rooms/team", &olive, None).await;
    assert_eq!(status, 204, "{body}");
    let deleted = room_event(&mut ws).await;
    assert_eq!(
        (&deleted["type"], &deleted["room_id"], &deleted["reason"]),
        (&json!("room_removed"), &team, &json!("deleted")),
        "{deleted}"
    );

    // A private room olive opens with him: listed under her name.
    let (status, body) = call(
        &api_a,
        "POST",
        &format!("/users/{bob_id}/private-room"),
        &olive,
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let private = room_event(&mut ws).await;
    assert_eq!(private["type"], "room_added", "{private}");
    assert_eq!(private["room"]["kind"], "private", "{private}");
    assert_eq!(private["room"]["peer"]["id"], json!(olive_id), "{private}");
    assert_eq!(private["room"]["peer"]["username"], "olive", "{private}");

    // A public room is in everyone's list: its creation and deletion reach
    // him though he is no member.
    let plaza = api_a.create_room(&olive, "plaza", "public").await;
    let listed = room_event(&mut ws).await;
    assert_eq!(listed["type"], "room_listed", "{listed}");
    assert_eq!(listed["room"]["name"], "plaza", "{listed}");
    // Joining it on B tells his own socket too (his other tabs).
    let (status, body) = call(&api_b, "POST", "/rooms/plaza/join", &bob, None).await;
    assert_eq!(status, 200, "{body}");
    let joined = room_event(&mut ws).await;
    assert_eq!(joined["room"]["name"], "plaza", "{joined}");
    let (status, body) = call(&api_a, "DELETE", "/rooms/plaza", &olive, None).await;
    assert_eq!(status, 204, "{body}");
    let unlisted = room_event(&mut ws).await;
    assert_eq!(unlisted["type"], "room_unlisted", "{unlisted}");
    assert_eq!(unlisted["room_id"], plaza["id"], "{unlisted}");

    // Nothing about `solo` came between; a ping is answered.
    ws.send_json(&json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");

    let (status, body) = call(&api_b, "POST", "/auth/logout", &bob, None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(ws.expect_close().await, 4001);
}

crate::on_both_backends!(room_list_changes_reach_the_users_socket_on_another_node);
