//! Abuse limits: login throttling, socket flooding, body sizes.

use serde_json::{Value, json};

use std::time::{Duration, Instant};

use axum_client_ip::ClientIpSource;

use crate::{
    helpers::{Api, Backend, ROOT_PASSWORD, TestApp, spawn_app, spawn_app_with},
    ws_client::Ws,
};

/// The app with `CLIENT_IP_SOURCE=XRealIp`, as behind nginx, so a test can
/// speak from any address.
async fn spawn_behind_proxy(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |config| {
        config.client_ip_source = ClientIpSource::XRealIp;
    })
    .await
}

/// Logs in as `user` from `address` (an `X-Real-IP`); returns the response.
async fn login_from(api: &Api, address: &str, user: &str, password: &str) -> reqwest::Response {
    api.client
        .post(api.url("/auth/login"))
        .header("x-real-ip", address)
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn login_is_throttled_per_account(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    api.register("victim").await;
    api.register("other").await;
    let login = |user: &'static str, password: &'static str| {
        api.client
            .post(api.url("/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            login("victim", "guessing-wrong")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
    let res = login("victim", "password123").await.unwrap();
    assert_eq!(
        res.status(),
        429,
        "even the right password waits out the limit"
    );
    let retry = retry_after(&res);
    assert!((1..=6).contains(&retry), "retry after {retry}");
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "rate_limited");
    // Another account from the same address is not locked out.
    assert_eq!(login("other", "password123").await.unwrap().status(), 200);
    // The lock is short: one slot frees every 6 s.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(login("victim", "password123").await.unwrap().status(), 200);
}

/// One address spraying many accounts: a burst of 30, then one a second;
/// another address is not affected.
async fn login_is_throttled_per_address(backend: Backend) {
    let Some(app) = spawn_behind_proxy(backend).await else {
        return;
    };
    let api = app.api();
    api.register("sprayed").await;
    let started = Instant::now();
    let mut allowed = 0;
    let refused = loop {
        // Eight accounts in turn: each stays far below its own limit of 10.
        let user = format!("sprayed{}", allowed % 8);
        let res = login_from(&api, "198.51.100.7", &user, "guessing-wrong").await;
        if res.status() != 401 {
            break res;
        }
        allowed += 1;
        assert!(allowed <= 200, "no limit after {allowed} attempts");
    };
    let most = 30 + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (30..=most).contains(&allowed),
        "{allowed} attempts allowed, at most {most} expected"
    );
    assert_eq!(refused.status(), 429);
    assert!((1..=2).contains(&retry_after(&refused)));
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "rate_limited"
    );
    // The limit is the address's, not the accounts': a real login from the
    // same address waits too, one from elsewhere does not.
    let same = login_from(&api, "198.51.100.7", "sprayed", "password123").await;
    assert_eq!(same.status(), 429);
    let elsewhere = login_from(&api, "198.51.100.8", "sprayed", "password123").await;
    assert_eq!(elsewhere.status(), 200);
}

/// An attacker guessing from address A locks only A out of the account: its
/// owner, from address B, logs in.
async fn a_hammered_account_still_logs_in_from_another_address(backend: Backend) {
    let Some(app) = spawn_behind_proxy(backend).await else {
        return;
    };
    let api = app.api();
    api.register("owner").await;
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let res = login_from(&api, "192.0.2.66", "owner", "guessing-wrong").await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert!(statuses[11..].iter().all(|&s| s == 429), "{statuses:?}");
    let attacker = login_from(&api, "192.0.2.66", "owner", "password123").await;
    assert_eq!(attacker.status(), 429);
    let owner = login_from(&api, "203.0.113.5", "owner", "password123").await;
    assert_eq!(owner.status(), 200, "the owner was locked out");
    // Through an IPv6 proxy too; and case does not make a new account.
    let owner = login_from(&api, "2001:db8::5", "OWNER", "password123").await;
    assert_eq!(owner.status(), 200);
}

/// Guesses at one account from many addresses, each within its own limits,
/// are capped for the account as a whole: a burst of 100, then one a second.
async fn login_is_capped_per_account_across_addresses(backend: Backend) {
    let Some(app) = spawn_behind_proxy(backend).await else {
        return;
    };
    let api = app.api();
    api.register("popular").await;
    let started = Instant::now();
    let mut allowed = 0;
    let refused = loop {
        // Five attempts per address: below both the address's and the pair's limits.
        let address = format!("198.18.{}.{}", allowed / 5 / 250, allowed / 5 % 250 + 1);
        let res = login_from(&api, &address, "popular", "guessing-wrong").await;
        if res.status() != 401 {
            break res;
        }
        allowed += 1;
        assert!(
            allowed <= 1000,
            "no account-wide limit after {allowed} attempts"
        );
    };
    let most = 100 + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (100..=most).contains(&allowed),
        "{allowed} attempts allowed, at most {most} expected"
    );
    assert_eq!(refused.status(), 429);
    assert!((1..=2).contains(&retry_after(&refused)));
    // The cap is short: a second later the owner gets in.
    tokio::time::sleep(Duration::from_secs(retry_after(&refused))).await;
    let owner = login_from(&api, "203.0.113.5", "popular", "password123").await;
    assert_eq!(owner.status(), 200);
}

async fn a_flooding_socket_is_told_then_closed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("flooder").await;
    // A burst past the limit: told, not closed.
    let (mut ws, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
    for _ in 0..40 {
        ws.send_json(&json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 40 {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if frame["code"] == "rate_limited" => limited += 1,
            _ => {}
        }
    }
    assert!(
        pongs >= 30 && limited >= 1,
        "pongs {pongs}, limited {limited}"
    );
    // Going on regardless: closed with 1008.
    for _ in 0..200 {
        if !ws.try_send_json(&json!({"type": "ping"})).await {
            break;
        }
    }
    assert_eq!(ws.expect_close().await, 1008);
}

/// A publisher with many frames unacked that goes past the burst is told
/// which frames were refused and when to send them again; doing so, it gets
/// every message accepted, once. (A refusal used to name no frame: such a
/// publisher waited for acks that never came, and stalled.)
async fn a_refused_frame_is_named_and_can_be_sent_again(backend: Backend) {
    // A small limit, so that the burst is over before the first frames are
    // stored whatever the backend's speed, and the refusals stay under the 20
    // in a row that close the socket.
    const SENT: usize = 15;
    let Some(app) = spawn_app_with(backend, |c| {
        c.socket_message_burst = 5;
        c.socket_message_rate = 2;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("eager").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
    let frame = |i: usize| json!({"type": "message", "content": format!("m{i}"), "client_id": format!("c{i}")});
    for i in 0..SENT {
        ws.send_json(&frame(i)).await;
    }
    let mut acked = std::collections::HashSet::new();
    let mut refused = Vec::new();
    while acked.len() + refused.len() < SENT {
        let reply = ws.next_json().await;
        match reply["type"].as_str() {
            Some("ack") => assert!(acked.insert(reply["client_id"].as_str().unwrap().to_owned())),
            Some("error") => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                let id = reply["client_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no client_id: {reply}"));
                let wait = reply["retry_after_ms"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no wait: {reply}"));
                assert!((1..=500).contains(&wait), "{reply}");
                refused.push((id.to_owned(), wait));
            }
            _ => {} // the room's broadcasts of our own messages
        }
    }
    assert!(
        acked.len() >= 5 && !refused.is_empty(),
        "{} acked, {refused:?}",
        acked.len()
    );
    // Sent again after the wait each refusal asks for: accepted.
    for (id, mut wait) in refused {
        let i: usize = id[1..].parse().unwrap();
        for attempt in 0.. {
            assert!(attempt < 10, "{id} never accepted");
            tokio::time::sleep(Duration::from_millis(wait)).await;
            ws.send_json(&frame(i)).await;
            let reply = ws.next_of(&["ack", "error"]).await;
            assert_eq!(reply["client_id"], json!(id), "{reply}");
            if reply["type"] == "ack" {
                break;
            }
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            wait = reply["retry_after_ms"].as_u64().unwrap();
        }
        acked.insert(id);
    }
    assert_eq!(acked.len(), SENT);
    // Acked is stored, once each (the store stage takes a moment).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stored: Value = api
            .client
            .get(api.url("/rooms/public/messages?limit=200"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let contents: Vec<&str> = stored
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        let distinct: std::collections::HashSet<&&str> = contents.iter().collect();
        assert_eq!(distinct.len(), contents.len(), "a duplicate: {stored}");
        if contents.len() == SENT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {SENT} stored",
            contents.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publisher that keeps to the documented rate (a burst of 30, then 20 a
/// second) with many frames unacked is never refused and never waits on an
/// ack that does not come.
async fn a_publisher_within_the_rate_is_never_refused(backend: Backend) {
    const SENT: usize = 70;
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("steady").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
    let start = tokio::time::Instant::now();
    let mut acked = 0;
    for i in 0..SENT {
        // 30 at once, then one every 55 ms (a little under 20 a second).
        if i >= 30 {
            tokio::time::sleep_until(start + Duration::from_millis(55 * (i as u64 - 29))).await;
        }
        ws.send_json(
            &json!({"type": "message", "content": format!("s{i}"), "client_id": format!("s{i}")}),
        )
        .await;
        // Read what has come meanwhile, without waiting.
        while let Ok(Some(reply)) = ws.poll_json(Duration::from_millis(1)).await {
            match reply["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => panic!("refused within the rate: {reply}"),
                _ => {}
            }
        }
    }
    while acked < SENT {
        let reply = ws.next_of(&["ack", "error"]).await;
        assert_eq!(reply["type"], "ack", "{reply}");
        acked += 1;
    }
}

/// Socket connects are limited per user: a burst of 60, then 429 with
/// `Retry-After`; another user is not affected.
async fn socket_connects_are_limited_per_user(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, hasty) = api.user("hasty").await;
    let (_, calm) = api.user("calm").await;
    let started = Instant::now();
    let mut opened = 0;
    let refused = loop {
        match Ws::try_join(app.addr, "/ws/public?history=0", &hasty).await {
            Ok((ws, _)) => {
                opened += 1;
                ws.close().await;
                assert!(opened <= 1000, "no limit after {opened} connects");
            }
            Err(refused) => break refused,
        }
    };
    // The burst, plus what refilled (10 a second) while we went on.
    let allowed = 60 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (60..=allowed).contains(&opened),
        "{opened} connects, {allowed} allowed"
    );
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["code"], "rate_limited");
    assert!(
        Ws::try_join(app.addr, "/ws/public?history=0", &calm)
            .await
            .is_ok()
    );
}

crate::on_both_backends!(
    login_is_throttled_per_account,
    login_is_throttled_per_address,
    a_hammered_account_still_logs_in_from_another_address,
    login_is_capped_per_account_across_addresses,
    a_flooding_socket_is_told_then_closed,
    a_refused_frame_is_named_and_can_be_sent_again,
    a_publisher_within_the_rate_is_never_refused,
    socket_connects_are_limited_per_user,
);

async fn register_as(api: &Api, name: &str) -> reqwest::Response {
    api.client
        .post(api.url("/auth/register"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "password123"}))
        .send()
        .await
        .unwrap()
}

fn retry_secs(res: &reqwest::Response) -> Option<u64> {
    res.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Registration is limited per client address, like login.
async fn registration_is_limited_per_address(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.register_burst = 3;
        c.register_per_minute = 1;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    for i in 0..3 {
        assert_eq!(register_as(&api, &format!("user{i}")).await.status(), 201);
    }
    let res = register_as(&api, "user3").await;
    assert_eq!(res.status(), 429);
    assert!(retry_secs(&res).is_some_and(|s| s >= 1));
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "rate_limited");
}

/// Password hashing runs a few at a time; beyond its queue the answer is
/// 503 `busy` with `Retry-After`, not one more 19 MiB hash in memory.
async fn password_hashing_is_bounded(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.password_hash_concurrency = 1;
        c.password_hash_queue = 1;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let answers = futures_util::future::join_all((0..12).map(|i| {
        let api = &api;
        async move {
            let res = register_as(api, &format!("hasher{i}")).await;
            (res.status().as_u16(), retry_secs(&res))
        }
    }))
    .await;
    assert!(
        answers.iter().any(|(s, _)| *s == 503),
        "no 503: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(s, r)| *s == 201 || (*s == 503 && r.is_some())),
        "{answers:?}"
    );
}

/// `PATCH /users/me` password checks are throttled like logins.
async fn password_checks_are_throttled(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("ann").await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let res = api
            .client
            .patch(api.url("/users/me"))
            .bearer_auth(&token)
            .json(&json!({"email": "x@example.com", "current_password": "guess-guess"}))
            .send()
            .await
            .unwrap();
        codes.push(res.status().as_u16());
    }
    assert_eq!(codes[0], 403, "{codes:?}");
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
}

crate::on_both_backends!(
    registration_is_limited_per_address,
    password_hashing_is_bounded,
    password_checks_are_throttled,
);

/// A 429 as every limit answers it: problem+json `code`, and `Retry-After`.
async fn assert_limited(res: reqwest::Response, code: &str) {
    assert_eq!(res.status(), 429);
    assert!(retry_secs(&res).is_some_and(|s| s >= 1), "no Retry-After");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
}

async fn post_message(api: &Api, token: &str, content: &str) -> reqwest::Response {
    api.client
        .post(api.url("/message"))
        .bearer_auth(token)
        .json(&json!({"room_id": "public", "content": content}))
        .send()
        .await
        .unwrap()
}

/// One budget per user (`MESSAGE_BURST`, `MESSAGE_RATE`) counts their
/// messages over HTTP and over every socket, and their edits: a second
/// socket, the other path or an edit loop does not get round it. Refusals
/// say when to try again; another user and an admin are not affected. (It
/// counted HTTP alone, with no limit on edits: one account could post 20
/// frames a second on each of 1 000 sockets, or rewrite a message to every
/// socket of `public` as fast as it liked.)
async fn messages_and_edits_share_one_budget_per_user(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.message_burst = 4;
        c.message_rate = 1;
        crate::helpers::with_root(c);
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, chatty) = api.user("chatty").await;
    let (_, quiet) = api.user("quiet").await;
    let root = api.login_with("root", ROOT_PASSWORD).await;
    let (mut first, _) = Ws::join(app.addr, "/ws/public?history=0", &chatty).await;
    let (mut second, _) = Ws::join(app.addr, "/ws/public?history=0", &chatty).await;

    // The burst of four: two over HTTP, one on each socket.
    let res = post_message(&api, &chatty, "over http").await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(post_message(&api, &chatty, "again").await.status(), 202);
    for (ws, client_id) in [(&mut first, "a"), (&mut second, "b")] {
        ws.send_json(&json!({"type": "message", "content": client_id, "client_id": client_id}))
            .await;
        let reply = ws.next_of(&["ack", "error"]).await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }

    // Past it, on every path.
    assert_limited(
        post_message(&api, &chatty, "one too many").await,
        "rate_limited",
    )
    .await;
    second
        .send_json(&json!({"type": "message", "content": "c", "client_id": "c"}))
        .await;
    let refused = second.next_of(&["ack", "error"]).await;
    assert_eq!(
        (&refused["code"], &refused["client_id"]),
        (&json!("rate_limited"), &json!("c")),
        "{refused}"
    );
    let wait = refused["retry_after_ms"].as_u64().expect("a wait");
    assert!((1..=1000).contains(&wait), "{refused}");
    let edit = |token: &str| {
        api.client
            .patch(api.url(&format!("/messages/{id}")))
            .bearer_auth(token)
            .json(&json!({"content": "edited"}))
            .send()
    };
    assert_limited(edit(&chatty).await.unwrap(), "rate_limited").await;

    // Others are counted on their own; admins not at all.
    assert_eq!(post_message(&api, &quiet, "mine").await.status(), 202);
    for i in 0..10 {
        let res = post_message(&api, &root, &format!("notice {i}")).await;
        assert_eq!(res.status(), 202, "admin message {i}");
    }

    // After the wait the refusal named, the socket's message goes through,
    // and an edit counts as one.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    second
        .send_json(&json!({"type": "message", "content": "c", "client_id": "c"}))
        .await;
    let reply = second.next_of(&["ack", "error"]).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(edit(&chatty).await.unwrap().status(), 200);
    assert_limited(edit(&chatty).await.unwrap(), "rate_limited").await;
}

async fn create_room_as(api: &Api, token: &str, name: &str) -> reqwest::Response {
    api.client
        .post(api.url("/rooms"))
        .bearer_auth(token)
        .json(&json!({"name": name, "kind": "group"}))
        .send()
        .await
        .unwrap()
}

/// Room creation is limited per user (`ROOM_CREATE_BURST`,
/// `ROOM_CREATE_PER_MINUTE`): by hand, by opening a private room with a
/// person, and by opening a socket to an unknown room.
async fn room_creation_is_limited_per_user(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.room_create_burst = 2;
        c.room_create_per_minute = 1;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, builder) = api.user("builder").await;
    let (peer, other) = api.user("other").await;
    for name in ["first", "second"] {
        assert_eq!(create_room_as(&api, &builder, name).await.status(), 201);
    }
    assert_limited(
        create_room_as(&api, &builder, "third").await,
        "rate_limited",
    )
    .await;
    let res = api
        .client
        .post(api.url(&format!("/users/{peer}/private-room")))
        .bearer_auth(&builder)
        .send()
        .await
        .unwrap();
    assert_limited(res, "rate_limited").await;
    let refused = Ws::try_join(app.addr, "/ws/made-up?history=0", &builder)
        .await
        .err()
        .expect("an unknown room is not created past the limit");
    assert_eq!(
        (refused.status, &refused.body["code"]),
        (429, &json!("rate_limited"))
    );
    assert!(refused.retry_after.is_some());
    // An existing room still opens, and another user still creates.
    assert!(
        Ws::try_join(app.addr, "/ws/first?history=0", &builder)
            .await
            .is_ok()
    );
    assert_eq!(create_room_as(&api, &other, "theirs").await.status(), 201);
}

async fn guest_token(api: &Api, address: &str, username: &str, room: &str) -> reqwest::Response {
    api.client
        .post(api.url("/generate-token"))
        .header("x-real-ip", address)
        .json(&json!({"username": username, "email": format!("{username}@example.com"), "room_id": room}))
        .send()
        .await
        .unwrap()
}

/// `/generate-token` is limited per client address (`GUEST_TOKEN_BURST`,
/// `GUEST_TOKENS_PER_MINUTE`).
async fn guest_tokens_are_limited_per_address(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.client_ip_source = ClientIpSource::XRealIp;
        c.guest_tokens = true;
        c.guest_token_burst = 2;
        c.guest_tokens_per_minute = 1;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    for i in 0..2 {
        let res = guest_token(&api, "198.51.100.20", &format!("visitor{i}"), "public").await;
        assert_eq!(res.status(), 200);
    }
    let res = guest_token(&api, "198.51.100.20", "visitor2", "public").await;
    assert_limited(res, "rate_limited").await;
    let res = guest_token(&api, "198.51.100.21", "visitor2", "public").await;
    assert_eq!(res.status(), 200, "another address is not affected");
}

/// A guest request refused after its account was made (here: the room is a
/// full private room, 409) leaves no account behind: the name is still free.
async fn a_refused_guest_request_creates_no_account(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.guest_tokens = true).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let (_, bob) = api.user("bob").await;
    let res = api
        .client
        .post(api.url("/rooms"))
        .bearer_auth(&alice)
        .json(&json!({"name": "den", "kind": "private"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = api
        .client
        .post(api.url("/rooms/den/join"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "bob takes the second seat");
    let res = guest_token(&api, "127.0.0.1", "visitor", "den").await;
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "room_full");
    assert_eq!(
        register_as(&api, "visitor").await.status(),
        201,
        "the refused guest request kept the name"
    );
}

crate::on_both_backends!(
    messages_and_edits_share_one_budget_per_user,
    room_creation_is_limited_per_user,
    guest_tokens_are_limited_per_address,
    a_refused_guest_request_creates_no_account,
);

/// A PNG that takes a while to decode and scale: 2 000 × 2 000 pixels.
fn large_png() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(2000, 2000, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Avatar decoding runs under a gate: one at a time and none waiting here,
/// so uploads at once get 503 `busy` with `Retry-After` beyond it.
async fn avatar_decoding_is_bounded(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.avatar_decode_concurrency = 1;
        c.avatar_decode_queue = 0;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("painter").await;
    let png = large_png();
    assert!(png.len() < 1024 * 1024, "{} bytes", png.len());
    let answers = futures_util::future::join_all((0..6).map(|_| {
        let (api, token, png) = (&api, &token, png.clone());
        async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(png)
                    .file_name("avatar.png")
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
            let retry = retry_secs(&res);
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (status, body["code"].clone(), retry)
        }
    }))
    .await;
    assert!(answers.iter().any(|(s, ..)| *s == 200), "{answers:?}");
    assert!(
        answers.iter().any(|(s, ..)| *s == 503),
        "no 503: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(s, code, r)| *s == 200 || (*s == 503 && code == "busy" && r.is_some())),
        "{answers:?}"
    );
}

/// `/echo` connects count against the same per-user connect limit as room
/// sockets.
async fn echo_connects_share_the_connect_limit(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.socket_connect_burst = 3;
        c.socket_connect_rate = 1;
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("echoer").await;
    for _ in 0..2 {
        let (ws, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
        ws.close().await;
    }
    let ws = Ws::connect(app.addr, "/echo", Some(&token)).await.unwrap();
    ws.close().await;
    let refused = Ws::connect(app.addr, "/echo", Some(&token))
        .await
        .err()
        .expect("the fourth connect is over the limit");
    assert_eq!(
        (refused.status, &refused.body["code"]),
        (429, &json!("rate_limited"))
    );
    assert!(refused.retry_after.is_some());
}

/// Echo transcripts are capped per user (`ECHO_TRANSCRIPTS_PER_USER`): the
/// oldest goes when one more is saved.
async fn echo_transcripts_are_capped_per_user(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.echo_transcripts_per_user = 2).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("talker").await;
    let said = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| t["frames"][0]["text"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let text = |word: &str| json!({ "say": word }).to_string();
    for word in ["one", "two", "three"] {
        let mut ws = Ws::connect(app.addr, "/echo", Some(&token)).await.unwrap();
        ws.send_text(&text(word)).await;
        assert_eq!(ws.next_json().await["say"], word);
        ws.close().await;
        // Saved when the session ends: wait for it before the next.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list: Value = api
                .client
                .get(api.url("/echo/history"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if said(&list).first() == Some(&text(word)) {
                break;
            }
            assert!(Instant::now() < deadline, "{word} not saved: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let list: Value = api
        .client
        .get(api.url("/echo/history"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        said(&list),
        [text("three"), text("two")],
        "the oldest was pruned"
    );
}

/// Each user's open sockets are capped (`SOCKETS_PER_USER`), room sockets,
/// the user's own socket and echo together: one more is refused with 429 `too_many_sockets`
/// before the upgrade; once one closes, there is room again.
async fn open_sockets_are_capped_per_user(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sockets_per_user = 3).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("hoarder").await;
    let (_, other) = api.user("other").await;
    let (first, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
    let _own = Ws::connect(app.addr, "/ws", Some(&token)).await.unwrap();
    let _echo = Ws::connect(app.addr, "/echo", Some(&token)).await.unwrap();
    for path in ["/ws/public?history=0", "/ws", "/echo"] {
        let refused = Ws::connect(app.addr, path, Some(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{path}: a fourth socket opened"));
        assert_eq!(
            (refused.status, &refused.body["code"]),
            (429, &json!("too_many_sockets")),
            "{path}"
        );
        assert!(refused.retry_after.is_some());
    }
    assert!(
        Ws::try_join(app.addr, "/ws/public?history=0", &other)
            .await
            .is_ok()
    );
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Ws::try_join(app.addr, "/ws/public?history=0", &token)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the closed socket's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

crate::on_both_backends!(
    avatar_decoding_is_bounded,
    echo_connects_share_the_connect_limit,
    echo_transcripts_are_capped_per_user,
    open_sockets_are_capped_per_user,
);

/// The in-process broker's queue is bounded (`INPROCESS_QUEUE_CAPACITY`):
/// with the store stage held up (the SQLite file locked by another writer),
/// publishes past the bound answer 503 `busy` with `Retry-After`; every one
/// that was accepted is stored once the stage goes on. (The in-process
/// broker serves SQLite; RabbitMQ has its own bounds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inprocess_queue_answers_503() {
    use sea_orm::sqlx::{Connection, Executor, sqlite::SqliteConnection};
    let Some(app) = spawn_app_with(Backend::Sqlite, |c| c.inprocess_queue_capacity = 2).await
    else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("flooder").await;
    let mut writer = SqliteConnection::connect(&app.env.db.url).await.unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    let (mut accepted, mut refused) = (0, None);
    for i in 0..50 {
        let res = post_message(&api, &token, &format!("queued {i}")).await;
        if res.status() == 202 {
            accepted += 1;
            // Let the store stage take the first one and wait on the lock.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        refused = Some(res);
        break;
    }
    let refused = refused.expect("the queue never filled");
    assert_eq!(refused.status(), 503);
    assert!(retry_secs(&refused).is_some());
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "busy");
    // A socket's message meets the same full queue: `error busy`, with the
    // wait before sending it again.
    let (mut ws, _) = Ws::join(app.addr, "/ws/public?history=0", &token).await;
    ws.send_json(&json!({"type": "message", "content": "over a socket", "client_id": "full"}))
        .await;
    let busy = ws.next_of(&["ack", "error"]).await;
    assert_eq!(
        (&busy["code"], &busy["client_id"], &busy["retry_after_ms"]),
        (&json!("busy"), &json!("full"), &json!(1000)),
        "{busy}"
    );
    assert!((2..=10).contains(&accepted), "{accepted} accepted");
    writer.execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored: Value = api
            .client
            .get(api.url("/rooms/public/messages?limit=200"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = stored.as_array().unwrap().len();
        if n == accepted {
            break;
        }
        assert!(n < accepted, "more stored than accepted: {stored}");
        assert!(Instant::now() < deadline, "{n} of {accepted} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
