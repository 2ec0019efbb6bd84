//! Editing and deleting messages.

use serde_json::{Value, json};

use crate::{
    helpers::{Backend, ROOT_PASSWORD, spawn_app_with, with_root},
    messages::{post, wait_for_history},
    ws_client::Ws,
};

async fn edit_and_delete_rules_and_events(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_root).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;
    api.create_room(&alice, "edits", "public").await; // alice owns it
    let (mut ws, _) = Ws::join(app.addr, "/ws/edits?history=0", &carol).await;
    let (_, by_bob) = post(
        &api,
        &bob,
        json!({"room_id": "edits", "content": "first draft"}),
    )
    .await;
    let (_, by_carol) = post(
        &api,
        &carol,
        json!({"room_id": "edits", "content": "carol's"}),
    )
    .await;
    wait_for_history(&api, &bob, "edits", 2).await;
    let bob_msg = by_bob["id"].as_str().unwrap();
    let carol_msg = by_carol["id"].as_str().unwrap();

    let patch = |token: &str, id: &str, body: Value| {
        api.client
            .patch(api.url(&format!("/messages/{id}")))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let res = patch(&alice, bob_msg, json!({"content": "hijacked"}))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        403,
        "only the author edits, not even the room owner"
    );
    let res = patch(&bob, bob_msg, json!({"content": ""})).await.unwrap();
    assert_eq!(res.status(), 422);
    let res = patch(&bob, bob_msg, json!({"content": "x".repeat(5000)}))
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let res = patch(
        &bob,
        &uuid::Uuid::new_v4().to_string(),
        json!({"content": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 404);
    let res = patch(&bob, bob_msg, json!({"content": "final text"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let edited: Value = res.json().await.unwrap();
    assert_eq!(edited["content"], "final text");
    assert!(edited["edited_at"].is_string());

    let event = ws.next_of(&["message_edited"]).await;
    assert_eq!(
        (event["id"].as_str(), event["content"].as_str()),
        (Some(bob_msg), Some("final text"))
    );

    let delete = |token: &str, id: &str| {
        api.client
            .delete(api.url(&format!("/messages/{id}")))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(
        delete(&bob, carol_msg).await.unwrap().status(),
        403,
        "not the author, owner or a moderator"
    );
    assert_eq!(
        delete(&alice, carol_msg).await.unwrap().status(),
        204,
        "the room owner may"
    );
    let event = ws.next_of(&["message_deleted"]).await;
    assert_eq!(
        (
            event["id"].as_str(),
            event["deleted"].as_bool(),
            &event["content"]
        ),
        (Some(carol_msg), Some(true), &Value::Null)
    );
    assert_eq!(
        delete(&alice, carol_msg).await.unwrap().status(),
        204,
        "idempotent"
    );
    assert_eq!(
        patch(&carol, carol_msg, json!({"content": "undo"}))
            .await
            .unwrap()
            .status(),
        409
    );

    let root = api.login_with("root", ROOT_PASSWORD).await;
    assert_eq!(
        delete(&root, bob_msg).await.unwrap().status(),
        204,
        "an admin may"
    );

    // History keeps tombstones in place.
    let history = wait_for_history(&api, &bob, "edits", 2).await;
    assert!(
        history
            .iter()
            .all(|m| m["deleted"] == true && m["content"].is_null()),
        "{history:?}"
    );
}

crate::on_both_backends!(edit_and_delete_rules_and_events);

/// An author edits only while they may still post in the room: a member
/// removed from a group room can no longer rewrite what the others read.
async fn a_removed_member_edits_no_more(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    api.create_room(&alice, "crew", "group").await;
    let res = api
        .client
        .post(api.url("/rooms/crew/members"))
        .bearer_auth(&alice)
        .json(&json!({"user_id": bob_id}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let (_, by_bob) = post(&api, &bob, json!({"room_id": "crew", "content": "v1"})).await;
    wait_for_history(&api, &alice, "crew", 1).await;
    let url = api.url(&format!("/messages/{}", by_bob["id"].as_str().unwrap()));
    let edit = |content: &str| {
        api.client
            .patch(url.clone())
            .bearer_auth(bob.clone())
            .json(&json!({"content": content}))
            .send()
    };
    assert_eq!(edit("v2").await.unwrap().status(), 200, "a member edits");

    let res = api
        .client
        .delete(api.url(&format!("/rooms/crew/members/{bob_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = edit("v3 after removal").await.unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "not_a_member", "{body}");
    let history = wait_for_history(&api, &alice, "crew", 1).await;
    assert_eq!(history[0]["content"], "v2");
}

crate::on_both_backends!(a_removed_member_edits_no_more);
