//! `/users/me`, `/users/{id}` and `/admin/users`.

use serde_json::{Value, json};

use crate::{
    helpers::{Backend, ROOT_PASSWORD, spawn_app, spawn_app_with, with_root},
    messages::{post, wait_for_history},
};

async fn profile_update_and_password_change(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let patch = |body: Value| {
        api.client
            .patch(api.url("/users/me"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };

    let res = patch(json!({"email": "new@example.com", "current_password": "wrong-one"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "wrong_password");
    let res = patch(json!({"email": "new@example.com"})).await.unwrap();
    assert_eq!(res.status(), 422, "current_password is required");
    let res = patch(json!({"email": "bob@example.com", "current_password": "password123"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let res = patch(json!({"password": "short", "current_password": "password123"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = patch(json!({"email": "New@Example.com", "password": "another-password", "current_password": "password123"})).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["email"],
        "new@example.com"
    );
    let res = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"username": "alice", "password": "another-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Others see a public profile: no email.
    let res = api
        .client
        .get(api.url(&format!("/users/{alice_id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let profile: Value = res.json().await.unwrap();
    assert_eq!(profile["username"], "alice");
    assert!(profile.get("email").is_none());
    let res = api
        .client
        .get(api.url(&format!("/users/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = api
        .client
        .get(api.url("/users/not-a-uuid"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

async fn deleted_account_keeps_its_messages(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let room = api.create_room(&alice, "keep", "public").await;
    api.client
        .post(api.url("/rooms/keep/join"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    post(
        &api,
        &bob,
        json!({"room_id": "keep", "content": "bob was here"}),
    )
    .await;
    post(
        &api,
        &alice,
        json!({"room_id": "keep", "content": "alice stays"}),
    )
    .await;
    let history = wait_for_history(&api, &alice, "keep", 2).await;
    assert!(
        history.iter().all(|m| m["sender_deleted"] == false),
        "{history:?}"
    );

    let res = api
        .client
        .delete(api.url("/users/me"))
        .bearer_auth(&bob)
        .json(&json!({"current_password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the token stops working");
    // A system message (from the console: no sender) is not a deleted user's.
    app.publish_by_hand(&json!({"room_id": room["id"], "content": "maintenance at 5"}))
        .await;
    let history = wait_for_history(&api, &alice, "keep", 3).await;
    let view = |m: &Value| {
        (
            m["content"].as_str().map(str::to_owned),
            m["sender"]["username"].as_str().map(str::to_owned),
            m["sender"].is_null(),
            m["sender_deleted"].as_bool(),
        )
    };
    let text = |s: &str| Some(s.to_owned());
    assert_eq!(
        history.iter().map(view).collect::<Vec<_>>(),
        // Newest first.
        [
            (text("maintenance at 5"), None, true, Some(false)),
            (text("alice stays"), text("alice"), false, Some(false)),
            (text("bob was here"), None, true, Some(true)),
        ]
    );
    let room: Value = api
        .client
        .get(api.url("/rooms/keep"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        room["member_count"], 1,
        "the seat count follows the deleted membership"
    );
    // The name is free again.
    api.register("bob").await;
}

async fn admin_manages_users_and_roles(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_root).await else {
        return;
    };
    let api = app.api();
    let root = api.login_with("root", ROOT_PASSWORD).await;
    let (_, alice) = api.user("alice").await;

    let new_user = json!({"username": "mod1", "email": "mod1@example.com", "password": "password123", "role": "moderator"});
    let res = api
        .client
        .post(api.url("/admin/users"))
        .bearer_auth(&alice)
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "admin_only");
    let res = api
        .client
        .post(api.url("/admin/users"))
        .bearer_auth(&root)
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["role"], "moderator");
    let res = api.client.post(api.url("/admin/users")).bearer_auth(&root).json(&json!({"username": "x1", "email": "x1@example.com", "password": "password123", "role": "king"})).send().await.unwrap();
    assert_eq!(res.status(), 422);

    let id = created["id"].as_str().unwrap();
    let res = api
        .client
        .patch(api.url(&format!("/admin/users/{id}")))
        .bearer_auth(&root)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["role"], "admin");
    let res = api
        .client
        .patch(api.url(&format!("/admin/users/{id}")))
        .bearer_auth(&alice)
        .json(&json!({"role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    let me = api.me(&root).await;
    let res = api
        .client
        .patch(api.url(&format!("/admin/users/{}", me["id"].as_str().unwrap())))
        .bearer_auth(&root)
        .json(&json!({"role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "an admin cannot demote themself");
    let found: Vec<Value> = api
        .client
        .get(api.url("/admin/users?search=MOD"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["username"], "mod1");
    let all: Vec<Value> = api
        .client
        .get(api.url("/admin/users"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let res = api
        .client
        .get(api.url("/admin/users"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

/// The server always keeps an admin: the only one cannot delete their
/// account (409 `last_admin`), and two admins demoting each other at the
/// same moment leave one of them an admin, however the race falls. (Both
/// were allowed: the server was left with no admin, until an operator ran
/// the CLI.)
async fn the_last_admin_stays(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_root).await else {
        return;
    };
    let api = app.api();
    let root = api.login_with("root", ROOT_PASSWORD).await;
    let (alice_id, alice) = api.user("alice").await;
    let root_id = api.me(&root).await["id"].as_str().unwrap().to_owned();
    let set_role = |token: &str, id: &str, role: &str| {
        api.client
            .patch(api.url(&format!("/admin/users/{id}")))
            .bearer_auth(token)
            .json(&json!({ "role": role }))
            .send()
    };
    let delete_me = |token: &str, password: &str| {
        api.client
            .delete(api.url("/users/me"))
            .bearer_auth(token)
            .json(&json!({ "current_password": password }))
            .send()
    };

    let res = delete_me(&root, ROOT_PASSWORD).await.unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "last_admin");

    let alice_id = alice_id.to_string();
    for round in 0..5 {
        let res = set_role(&root, &alice_id, "admin").await.unwrap();
        assert_eq!(res.status(), 200, "round {round}: alice made an admin");
        // Each demotes the other, at once.
        let (a, b) = tokio::join!(
            set_role(&root, &alice_id, "user"),
            set_role(&alice, &root_id, "user"),
        );
        let statuses = [a.unwrap().status(), b.unwrap().status()];
        let root_admin = api.me(&root).await["role"] == "admin";
        let alice_admin = api.me(&alice).await["role"] == "admin";
        assert!(
            root_admin || alice_admin,
            "round {round}: no admin left ({statuses:?})"
        );
        // One wins; the other is refused as the last admin, or as no admin
        // any more when its request came after the first was through.
        assert_eq!(
            statuses.iter().filter(|s| s.as_u16() == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses
                .iter()
                .all(|s| matches!(s.as_u16(), 200 | 403 | 409)),
            "round {round}: {statuses:?}"
        );
        if alice_admin {
            // Root, demoted, is made an admin again by alice for the next round;
            // then alice steps down so that root starts every round alone.
            assert_eq!(
                set_role(&alice, &root_id, "admin").await.unwrap().status(),
                200
            );
            assert_eq!(
                set_role(&root, &alice_id, "user").await.unwrap().status(),
                200
            );
        }
    }
    // Past the race, alone again: root still may not leave.
    assert_eq!(delete_me(&root, ROOT_PASSWORD).await.unwrap().status(), 409);
}

crate::on_both_backends!(
    profile_update_and_password_change,
    deleted_account_keeps_its_messages,
    admin_manages_users_and_roles,
    the_last_admin_stays,
);
