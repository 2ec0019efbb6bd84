use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Api, Backend, TestDb, spawn_app, spawn_node};

async fn create_list_search_get_delete(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;

    let room = api.create_room(&alice, "General", "public").await;
    assert_eq!(room["owner_id"], alice_id.to_string());
    assert_eq!(room["member_count"], 1);
    let team = api.create_room(&alice, "team-x", "group").await;
    let res = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&bob)
        .json(&json!({"name": "general"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "name_taken");
    // Kind defaults to group.
    let room2: Value = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&bob)
        .json(&json!({"name": "bobs"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(room2["kind"], "group");

    // Bob sees public rooms and his own, not Alice's group.
    let names = |rooms: Value| -> Vec<String> {
        rooms
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let list: Value = api
        .client
        .get(api.url("/rooms"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(list), ["bobs", "General", "public"]);
    let list: Value = api
        .client
        .get(api.url("/rooms?search=GEN"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(list), ["General"]);
    let list: Value = api
        .client
        .get(api.url("/rooms?limit=1&offset=1"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(list), ["public"]);

    // By name (any case) or id.
    let res = api
        .client
        .get(api.url("/rooms/general"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = team["id"].as_str().unwrap();
    let res = api
        .client
        .get(api.url(&format!("/rooms/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_a_member");
    let res = api
        .client
        .get(api.url(&format!("/rooms/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Only the owner (or an admin) deletes.
    let res = api
        .client
        .delete(api.url("/rooms/General"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = api
        .client
        .delete(api.url("/rooms/General"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = api
        .client
        .get(api.url("/rooms/General"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn members_and_join_rules(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (carol_id, carol) = api.user("carol").await;
    api.create_room(&alice, "team", "group").await;
    api.create_room(&alice, "open", "public").await;
    api.create_room(&alice, "dm", "private").await;

    let post = |path: &str, token: &str, body: Value| {
        api.client
            .post(api.url(path))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };

    // Group rooms are invite-only.
    let res = post("/rooms/team/join", &bob, json!({})).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "invite_only");
    let res = post("/rooms/team/members", &bob, json!({"user_id": carol_id}))
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "only the owner adds");
    let res = post("/rooms/team/members", &alice, json!({"username": "BOB"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["user_id"],
        bob_id.to_string()
    );
    let res = post("/rooms/team/members", &alice, json!({"user_id": bob_id}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "already_member");
    let res = post("/rooms/team/members", &alice, json!({"username": "nobody"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let members: Value = api
        .client
        .get(api.url("/rooms/team/members"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let res = api
        .client
        .get(api.url("/rooms/team/members"))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // Public rooms: anyone joins, joining twice is fine.
    for _ in 0..2 {
        let res = post("/rooms/open/join", &carol, json!({})).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["member_count"], 2);
    }

    // Private: one free seat.
    let res = post("/rooms/dm/join", &bob, json!({})).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = post("/rooms/dm/join", &carol, json!({})).await.unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "room_full");
    let res = post("/rooms/dm/members", &alice, json!({"user_id": carol_id}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);

    // Leaving frees the seat; others cannot remove you, the owner can.
    let res = api
        .client
        .delete(api.url(&format!("/rooms/dm/members/{bob_id}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = api
        .client
        .delete(api.url(&format!("/rooms/dm/members/{bob_id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = post("/rooms/dm/join", &carol, json!({})).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = api
        .client
        .delete(api.url(&format!("/rooms/dm/members/{carol_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = api
        .client
        .delete(api.url(&format!("/rooms/dm/members/{carol_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// Registers `n` users concurrently on `api`; returns their tokens.
async fn many_users(api: &Api, prefix: &str, n: usize) -> Vec<String> {
    join_all((0..n).map(|i| async move { api.user(&format!("{prefix}{i}")).await.1 })).await
}

/// Races `tokens` to join `room`, each through the next of `apis`; checks that
/// exactly one gets the free seat and every other gets 409 room_full.
async fn race_joins(apis: &[Api], tokens: &[String], room: &str) {
    let results = join_all(tokens.iter().enumerate().map(|(i, token)| {
        let api = &apis[i % apis.len()];
        async move {
            let res = api
                .client
                .post(api.url(&format!("/rooms/{room}/join")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (status, body["code"].as_str().map(str::to_owned))
        }
    }))
    .await;
    let joined = results.iter().filter(|(s, _)| *s == 200).count();
    let full = results
        .iter()
        .filter(|(s, c)| *s == 409 && c.as_deref() == Some("room_full"))
        .count();
    assert_eq!((joined, full), (1, tokens.len() - 1), "{results:?}");
}

async fn private_room_race_in_one_process(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, owner) = api.user("owner").await;
    let room = api.create_room(&owner, "duo", "private").await;
    let tokens = many_users(&api, "racer", 20).await;
    race_joins(std::slice::from_ref(&api), &tokens, "duo").await;
    let res: Value = api
        .client
        .get(api.url("/rooms/duo"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["member_count"], 2);
    let members: Value = api
        .client
        .get(api.url(&format!("/rooms/{}/members", room["id"].as_str().unwrap())))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members.as_array().unwrap().len(), 2);
}

crate::on_both_backends!(
    create_list_search_get_delete,
    members_and_join_rules,
    private_room_race_in_one_process
);

/// Three roomcast processes share one PostgreSQL database; 20 users race for
/// the one free seat of a private room through all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_room_race_across_three_processes_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let nodes: Vec<_> = (0..3).map(|_| spawn_node(&db.url, &[])).collect();
    let apis: Vec<Api> = nodes.iter().map(|n| Api::new(n.addr)).collect();
    let (_, owner) = apis[0].user("owner").await;
    apis[1].create_room(&owner, "duo", "private").await;
    let tokens = many_users(&apis[2], "racer", 20).await;
    for round in 0..3 {
        // Each round: free the seat again, race again.
        race_joins(&apis, &tokens, "duo").await;
        let members: Value = apis[0]
            .client
            .get(apis[0].url("/rooms/duo/members"))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let members = members.as_array().unwrap();
        assert_eq!(members.len(), 2, "round {round}: {members:?}");
        let winner = members.iter().find(|m| m["username"] != "owner").unwrap()["user_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = apis[round % 3]
            .client
            .delete(apis[round % 3].url(&format!("/rooms/duo/members/{winner}")))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }
}
