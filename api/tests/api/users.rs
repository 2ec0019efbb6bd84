//! The user directory (`GET /users`), "message a person"
//! (`POST /users/{id}/private-room`) and avatars as senders carry them.

use std::io::Cursor;

use image::{ImageFormat, Rgba, RgbaImage};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, spawn_app, spawn_app_with},
    ws_client::Ws,
};

async fn get(api: &Api, token: &str, path: &str) -> (u16, Value) {
    let res = api
        .client
        .get(api.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn post(api: &Api, token: &str, path: &str) -> (u16, Value) {
    let res = api
        .client
        .post(api.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect()
}

async fn directory_lists_users_by_name_without_emails(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.guest_tokens = true).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    for name in ["bob", "Bobby", "carol", "dave_b", "erin"] {
        api.register(name).await;
    }
    // A guest is no one to message: not listed.
    let res = api
        .client
        .post(api.url("/generate-token"))
        .json(&json!({"username": "bob_guest", "email": "bg@example.com", "room_id": "visits"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let guest = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, all) = get(&api, &alice, "/users").await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&all),
        ["alice", "bob", "Bobby", "carol", "dave_b", "erin"]
    );
    for user in all.as_array().unwrap() {
        assert!(user.get("email").is_none(), "{user}");
        let id = user["id"].as_str().unwrap();
        assert_eq!(user["avatar_url"], format!("/users/{id}/avatar?v=0"));
    }
    // Name fragments, ignoring case; emails are not searched.
    let (_, bs) = get(&api, &alice, "/users?search=BOB").await;
    assert_eq!(names(&bs), ["bob", "Bobby"]);
    let (_, by_email) = get(&api, &alice, "/users?search=example.com").await;
    assert_eq!(names(&by_email), Vec::<&str>::new());
    let (_, literal) = get(&api, &alice, "/users?search=_b").await;
    assert_eq!(names(&literal), ["dave_b"], "_ is no wildcard");
    // Pages.
    let (_, page) = get(&api, &alice, "/users?limit=2&offset=2").await;
    assert_eq!(names(&page), ["Bobby", "carol"]);
    let (_, past) = get(&api, &alice, "/users?offset=50").await;
    assert_eq!(past, json!([]));
    // Refusals.
    for bad in [
        "/users?limit=0",
        "/users?limit=201",
        "/users?offset=-1",
        "/users?page=2",
    ] {
        let (status, body) = get(&api, &alice, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("validation_failed")),
            "{bad}"
        );
    }
    assert_eq!(get(&api, &guest, "/users").await.0, 403);
    let res = api.client.get(api.url("/users")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

async fn message_a_person_opens_one_private_room(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (bob_id, bob) = api.user("bob").await;
    let (_, carol) = api.user("carol").await;

    let (status, room) = post(&api, &alice, &format!("/users/{bob_id}/private-room")).await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["kind"], "private");
    assert_eq!(room["member_count"], 2);
    assert_eq!(room["owner_id"], alice_id.to_string());
    assert_eq!(room["peer"]["id"], bob_id.to_string());
    assert_eq!(room["peer"]["username"], "bob");
    assert_eq!(
        room["peer"]["avatar_url"],
        format!("/users/{bob_id}/avatar?v=0")
    );
    // Again, and from the other side: the same room, each seeing the other.
    let (status, again) = post(&api, &alice, &format!("/users/{bob_id}/private-room")).await;
    assert_eq!((status, &again["id"]), (200, &room["id"]));
    let (status, theirs) = post(&api, &bob, &format!("/users/{alice_id}/private-room")).await;
    assert_eq!((status, &theirs["id"]), (200, &room["id"]));
    assert_eq!(theirs["peer"]["username"], "alice");
    // Bob can use it at once.
    let (_, members) = get(
        &api,
        &bob,
        &format!("/rooms/{}/members", room["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(members.as_array().unwrap().len(), 2);

    // The room list names the other person, and only for private rooms.
    api.create_room(&alice, "plaza", "public").await;
    let (_, listed) = get(&api, &alice, "/rooms").await;
    for r in listed.as_array().unwrap() {
        if r["kind"] == "private" {
            assert_eq!(r["peer"]["username"], "bob", "{r}");
        } else {
            assert!(r.get("peer").is_none(), "{r}");
        }
    }
    let (_, one) = get(
        &api,
        &bob,
        &format!("/rooms/{}", room["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(one["peer"]["username"], "alice");

    // Carol opening hers with Bob gets a room of her own.
    let (status, carols) = post(&api, &carol, &format!("/users/{bob_id}/private-room")).await;
    assert_eq!(status, 201);
    assert_ne!(carols["id"], room["id"]);

    // Two opening the same pair's room at once share one.
    let (_, dave) = api.user("dave").await;
    let (erin_id, erin) = api.user("erin").await;
    let dave_id = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (to_erin, to_dave) = (
        format!("/users/{erin_id}/private-room"),
        format!("/users/{dave_id}/private-room"),
    );
    let (a, b) = tokio::join!(post(&api, &dave, &to_erin), post(&api, &erin, &to_dave));
    assert_eq!(a.1["id"], b.1["id"], "{a:?} {b:?}");
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 201]);

    // The pair's room seats the pair alone: a seat one of them leaves is
    // not a stranger's, nor its history; opening again makes a new room.
    let (frank_id, frank) = api.user("frank").await;
    let (status, first) = post(&api, &alice, &format!("/users/{frank_id}/private-room")).await;
    assert_eq!(status, 201);
    let name = first["name"].as_str().unwrap().to_owned();
    let said =
        crate::messages::post(&api, &frank, json!({"room_id": name, "content": "psst"})).await;
    assert_eq!(said.0, 202);
    crate::messages::wait_for_history(&api, &alice, &name, 1).await;
    let res = api
        .client
        .delete(api.url(&format!("/rooms/{name}/members/{frank_id}")))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "frank leaves");
    let carol_id = get(&api, &carol, "/users/me").await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = post(&api, &carol, &format!("/rooms/{name}/join")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("room_full")),
        "{body}"
    );
    let (status, _) = get(&api, &carol, &format!("/rooms/{name}/messages")).await;
    assert_eq!(status, 403, "no history for a stranger");
    let refused = crate::ws_client::Ws::connect(app.addr, &format!("/ws/{name}"), Some(&carol))
        .await
        .err()
        .expect("no seat on a socket either");
    assert_eq!(refused.body["code"], "room_full", "{:?}", refused.body);
    let res = api
        .client
        .post(api.url(&format!("/rooms/{name}/members")))
        .bearer_auth(&alice)
        .json(&json!({"user_id": carol_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "not even its owner seats a third");
    let (status, second) = post(&api, &alice, &format!("/users/{frank_id}/private-room")).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["peer"]["username"], "frank");
    assert_ne!(second["name"], name);
    let (status, _) = post(&api, &frank, &format!("/rooms/{name}/join")).await;
    assert_eq!(status, 200, "frank's seat is his to take again");
    // Nobody names a room like a pair's by hand.
    let res = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&carol)
        .json(&json!({"name": "dm.mine", "kind": "private"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    // Refusals: yourself, nobody, not a UUID.
    let (status, body) = post(&api, &alice, &format!("/users/{alice_id}/private-room")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let (status, _) = post(
        &api,
        &alice,
        &format!("/users/{}/private-room", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(&api, &alice, "/users/bob/private-room").await;
    assert_eq!(status, 400);
}

fn png(shade: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    RgbaImage::from_pixel(64, 64, Rgba([shade, 10, 200, 255]))
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

async fn upload(api: &Api, token: &str, bytes: Vec<u8>) -> String {
    let form = Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name("a.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let res = api
        .client
        .put(api.url("/users/me/avatar"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["avatar_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Messages (live and in history), presence, `welcome`, members and
/// profiles name the sender's avatar by a URL that changes with the avatar.
async fn senders_carry_a_versioned_avatar_url(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.presence_delay = std::time::Duration::from_millis(50)
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let v0 = format!("/users/{alice_id}/avatar?v=0");
    api.create_room(&alice, "plaza", "public").await;

    let (mut watcher, _) = Ws::join(app.addr, "/ws/plaza?history=0", &bob).await;
    let (_alice_socket, welcome) = Ws::join(app.addr, "/ws/plaza?history=0", &alice).await;
    let me = welcome["online"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(me["avatar_url"], v0);
    // Her arrival, in a coalesced presence frame.
    let joined = loop {
        let presence = watcher.next_of(&["presence"]).await;
        let alice = presence["joined"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["username"] == "alice")
            .cloned();
        if let Some(alice) = alice {
            break alice;
        }
    };
    assert_eq!(joined["avatar_url"], v0, "{joined}");
    api.post_stored(&alice, "plaza", "before").await;
    let live = watcher.next_of(&["message"]).await;
    assert_eq!(live["sender"]["avatar_url"], v0, "{live}");

    // The versioned URL is cached for good; the bare one briefly.
    let cache = |path: String| {
        let (api, token) = (&api, &bob);
        async move {
            let res = api
                .client
                .get(api.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let cache = res.headers()["cache-control"].to_str().unwrap().to_owned();
            (cache, res.bytes().await.unwrap())
        }
    };
    let (long, default) = cache(v0.clone()).await;
    assert_eq!(long, "public, max-age=31536000, immutable");
    let (short, _) = cache(format!("/users/{alice_id}/avatar")).await;
    assert_eq!(short, "private, max-age=60");

    // A new avatar, a new URL; the old URL no longer promises these bytes.
    let v1 = upload(&api, &alice, png(1)).await;
    assert_eq!(v1, format!("/users/{alice_id}/avatar?v=1"));
    let v2 = upload(&api, &alice, png(2)).await;
    assert_eq!(v2, format!("/users/{alice_id}/avatar?v=2"));
    let (long, current) = cache(v2.clone()).await;
    assert_eq!(long, "public, max-age=31536000, immutable");
    assert_ne!(current, default);
    let (stale, bytes) = cache(v0.clone()).await;
    assert_eq!((stale.as_str(), &bytes), ("private, max-age=60", &current));
    let res = api
        .client
        .get(api.url(&format!("/users/{alice_id}/avatar?v=x")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    api.post_stored(&alice, "plaza", "after").await;
    let live = watcher.next_of(&["message"]).await;
    assert_eq!(live["sender"]["avatar_url"], v2, "{live}");
    let (_, history) = get(&api, &bob, "/rooms/plaza/messages").await;
    for m in history.as_array().unwrap() {
        assert_eq!(
            m["sender"]["avatar_url"], v2,
            "history names the current avatar: {m}"
        );
    }
    let (_, profile) = get(&api, &bob, &format!("/users/{alice_id}")).await;
    assert_eq!(profile["avatar_url"], v2);
    let (_, members) = get(&api, &bob, "/rooms/plaza/members").await;
    assert_eq!(members[0]["avatar_url"], v2, "{members}");
    // A socket opened after the upload names the new one.
    let (_, welcome) = Ws::join(app.addr, "/ws/plaza?history=0", &alice).await;
    assert_eq!(welcome["user"]["avatar_url"], v2, "{welcome}");
}

crate::on_both_backends!(
    directory_lists_users_by_name_without_emails,
    message_a_person_opens_one_private_room,
    senders_carry_a_versioned_avatar_url,
);
