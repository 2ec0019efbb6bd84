//! The message pipeline against what reaches `messages` without ingest:
//! hand-published (console) envelopes of every hostile shape never stall the
//! store stage.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    helpers::{Backend, TestApp, spawn_app},
    ws_client::Ws,
};

/// How soon the next good message must be delivered after a hostile one.
const NEXT_GOOD_WITHIN: Duration = Duration::from_secs(1);

/// Hostile payloads for `messages`, each with what makes it hostile. `R` is
/// the room's id.
fn hostile_table(room: &str) -> Vec<(&'static str, Vec<u8>)> {
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let obj = |extra: Value| {
        let mut m = json!({"room_id": room, "content": "hostile"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m.to_string().into_bytes()
    };
    vec![
        (
            "client_id over the column",
            obj(json!({"client_id": "k".repeat(65)})),
        ),
        (
            "client_id of 64 characters, 128 bytes",
            obj(json!({"client_id": "é".repeat(64)})),
        ),
        ("client_id empty", obj(json!({"client_id": ""}))),
        ("client_id a number", obj(json!({"client_id": 12}))),
        ("content an object", obj(json!({"content": {"a": 1}}))),
        ("content a huge number", obj(json!({"content": 1e300}))),
        (
            "content over the limit",
            obj(json!({"content": "x".repeat(70_000)})),
        ),
        ("content whitespace", obj(json!({"content": " \n\t "}))),
        ("content with NUL", obj(json!({"content": "a\u{0}b"}))),
        (
            "created_at before PostgreSQL's range",
            obj(json!({"created_at": "-5000-01-01T00:00:00Z"})),
        ),
        (
            "created_at after year 9999",
            obj(json!({"created_at": "+200000-01-01T00:00:00Z"})),
        ),
        (
            "created_at not a time",
            obj(json!({"created_at": "yesterday"})),
        ),
        ("created_at a number", obj(json!({"created_at": 1e308}))),
        ("id not a uuid", obj(json!({"id": "xyz"}))),
        // The parser's error quotes it whole: the reason header must not.
        (
            "a long JSON string",
            format!("\"{}\"", "A".repeat(200_000)).into_bytes(),
        ),
        (
            "id a huge number",
            br#"{"room_id":"R","content":"x","id":1e400}"#.to_vec(),
        ),
        ("sender_id not a uuid", obj(json!({"sender_id": "root"}))),
        (
            "room_id unknown",
            obj(json!({"room_id": uuid::Uuid::nil()})),
        ),
        ("room_id a number", obj(json!({"room_id": 5}))),
        (
            "room_id a long name",
            obj(json!({"room_id": "r".repeat(10_000)})),
        ),
        ("room_id with NUL", obj(json!({"room_id": "a\u{0}"}))),
        (
            "no content",
            format!(r#"{{"room_id":"{room}"}}"#).into_bytes(),
        ),
        ("an array", b"[1,2,3]".to_vec()),
        ("a string", br#""hello""#.to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("deep JSON", deep(100_000).into_bytes()),
        (
            "bad UTF-8",
            [
                &br#"{"room_id":""#[..],
                room.as_bytes(),
                br#"","content":"\xff\xfe"}"#,
            ]
            .concat(),
        ),
        (
            "lone surrogate",
            format!(r#"{{"room_id":"{room}","content":"\ud800"}}"#).into_bytes(),
        ),
    ]
}

/// Every hostile envelope is dead-lettered, and the good message published
/// right after it is delivered within a second; history has only the good ones.
async fn hostile_envelopes_never_stall(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "ops", "public").await;
    let room_id = room["id"].as_str().unwrap().to_owned();
    let (mut ws, _) = Ws::join(app.addr, "/ws/ops?history=0", &alice).await;
    let table = hostile_table(&room_id);
    // Not hostile after all: an unknown field is ignored however deep it is.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let harmless = format!(r#"{{"room_id":"{room_id}","content":"deep extra","z":{deep}}}"#);
    app.publish_bytes_by_hand(harmless.as_bytes()).await;
    assert_eq!(ws.next_of(&["message"]).await["content"], "deep extra");
    let mut slowest = Duration::ZERO;
    for (i, (what, payload)) in table.iter().enumerate() {
        app.publish_bytes_by_hand(payload).await;
        let good = format!("good after {what}");
        app.publish_by_hand(&json!({"room_id": room_id, "content": good}))
            .await;
        let published = Instant::now();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next_of(&["message"]))
            .await
            .unwrap_or_else(|_| panic!("case {i} ({what}): the store stage stalled"));
        let took = published.elapsed();
        assert_eq!(m["content"], good, "case {i} ({what}) was delivered");
        assert!(took < NEXT_GOOD_WITHIN, "case {i} ({what}): {took:?}");
        slowest = slowest.max(took);
    }
    eprintln!(
        "{} hostile envelopes; slowest next good message: {slowest:?}",
        table.len()
    );
    assert_dead_letters(&app, table.len()).await;
}

/// On RabbitMQ, `messages.dlq` holds exactly the hostile envelopes.
async fn assert_dead_letters(app: &TestApp, n: usize) {
    let Some(vhost) = app.vhost() else { return };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let q = vhost
            .get(&format!("/api/queues/{}/messages.dlq", vhost.name))
            .await;
        if q["messages"].as_u64() == Some(n as u64) {
            return;
        }
        assert!(Instant::now() < deadline, "dead letters: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

crate::on_both_backends!(hostile_envelopes_never_stall);

/// Publishes `payload` into `messages` with `signature` in its header, as
/// someone with broker access but not the key would.
async fn publish_with_signature(app: &TestApp, payload: &Value, signature: &str) {
    let body = payload.to_string();
    match app.vhost() {
        Some(vhost) => {
            let res = crate::helpers::client()
                .post(format!(
                    "{}/api/exchanges/{}/amq.default/publish",
                    vhost.api,
                    testsupport::enc(&vhost.name)
                ))
                .json(&json!({"properties": {"delivery_mode": 2,
                    "headers": {"x-roomcast-signature": signature}},
                    "routing_key": "messages", "payload": body, "payload_encoding": "string"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.json::<Value>().await.unwrap()["routed"], true);
        }
        None => app
            .broker
            .publish_message(body.as_bytes(), Some(signature))
            .await
            .unwrap(),
    }
}

/// An envelope published by hand that claims a sender (unsigned, or signed
/// with anything but the key) is stored as a system message; what ingest
/// publishes keeps its sender.
async fn console_cannot_impersonate(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (alice_id, alice) = api.user("alice").await;
    let room = api.create_room(&alice, "ops", "group").await;
    let room_id = room["id"].as_str().unwrap().to_owned();
    let (mut ws, _) = Ws::join(app.addr, "/ws/ops?history=0", &alice).await;
    let claim =
        |content: &str| json!({"room_id": room_id, "sender_id": alice_id, "content": content});
    app.publish_by_hand(&claim("unsigned claim")).await;
    publish_with_signature(&app, &claim("forged claim"), &"0".repeat(64)).await;
    publish_with_signature(&app, &claim("garbage signature"), "not hex").await;
    for content in ["unsigned claim", "forged claim", "garbage signature"] {
        let m = ws.next_of(&["message"]).await;
        assert_eq!(m["content"], content);
        assert_eq!(m["sender"], Value::Null, "{content}: stored as {m}");
    }
    let (status, _) = crate::messages::post(
        &api,
        &alice,
        json!({"room_id": "ops", "content": "really alice"}),
    )
    .await;
    assert_eq!(status, 202);
    let m = ws.next_of(&["message"]).await;
    assert_eq!(m["sender"]["id"], alice_id.to_string(), "{m}");
}

crate::on_both_backends!(console_cannot_impersonate);

/// Content of `n` bytes that JSON escapes in no way.
fn content_of(n: usize, tag: &str) -> String {
    let mut content = format!("{tag}:");
    content.push_str(&"x".repeat(n - content.len()));
    content
}

/// What ingest accepts is stored: with `MAX_MESSAGE_BYTES` above 64 KiB, a
/// message above 64 KiB posted over HTTP or sent on a socket is acked,
/// stored and delivered whole, not dead-lettered by the store stage. Over
/// the limit it is refused at once (413), never acked.
async fn what_was_accepted_is_stored(backend: Backend) {
    const LIMIT: u32 = 200_000;
    let Some(app) = crate::helpers::spawn_app_with(backend, |c| c.max_message_bytes = LIMIT).await
    else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "big", "public").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/big?history=0", &alice).await;
    let by_http = content_of(100_000, "http");
    let (status, body) =
        crate::messages::post(&api, &alice, json!({"room_id": "big", "content": by_http})).await;
    assert_eq!(status, 202, "{body}");
    let m = ws.next_of(&["message"]).await;
    assert_eq!(m["content"].as_str().map(str::len), Some(100_000));
    let by_socket = content_of(LIMIT as usize, "socket");
    ws.send_json(&json!({"type": "message", "content": by_socket, "client_id": "s1"}))
        .await;
    assert_eq!(ws.next_of(&["ack", "error"]).await["type"], "ack");
    let m = ws.next_of(&["message"]).await;
    assert_eq!(m["content"], json!(by_socket));
    let (status, body) = crate::messages::post(
        &api,
        &alice,
        json!({"room_id": "big", "content": content_of(LIMIT as usize + 1, "over")}),
    )
    .await;
    assert_eq!((status, &body["code"]), (413, &json!("message_too_large")));
    let history: Value = api
        .client
        .get(api.url("/rooms/big/messages"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lengths: Vec<usize> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().len())
        .collect();
    assert_eq!(
        lengths,
        [LIMIT as usize, 100_000],
        "stored whole, newest first"
    );
    assert_dead_letters(&app, 0).await;
}

crate::on_both_backends!(what_was_accepted_is_stored);

/// With the `messages` queue gone (deleted by an operator, in this test's
/// own vhost), a publish reaches no queue: RabbitMQ returns it. Ingest says
/// so (503 with a code and `Retry-After`, an `error` frame on the socket),
/// never 202 or `ack` for a message that went nowhere; the link stays up,
/// and once the store stage has declared the queue again (2 s) messages are
/// accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_refused() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "void", "public").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/void?history=0", &alice).await;
    delete_queue(&app, "messages").await;
    let res = api
        .client
        .post(api.url("/message"))
        .bearer_auth(&alice)
        .json(&json!({"room_id": "void", "content": "into the void"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "broker_unavailable", "{body}");
    ws.send_json(&json!({"type": "message", "content": "also lost", "client_id": "c1"}))
        .await;
    let reply = ws.next_of(&["ack", "error"]).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(
        (&reply["code"], &reply["client_id"]),
        (&json!("broker_unavailable"), &json!("c1"))
    );
    let accepted = api.metric("roomcast_messages_accepted_total").await;
    assert!(
        accepted.is_none_or(|n| n == 0.0),
        "counted as accepted: {accepted:?}"
    );
    // Refused for the missing queue, not for a lost connection.
    assert_eq!(app.broker.status(), consumer::BrokerStatus::Up);
    // The publish itself says so: it came back.
    let returned = app
        .broker
        .publish(br#"{"room_id":"void","content":"x"}"#)
        .await;
    assert!(
        matches!(returned, Err(consumer::BrokerError::Returned(_))),
        "{returned:?}"
    );
    // The store stage's consumer declares the queue again; then a message is
    // accepted, and delivered.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) =
            crate::messages::post(&api, &alice, json!({"room_id": "void", "content": "back"}))
                .await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the queue never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ws.next_of(&["message"]).await["content"], "back");
}

/// With `messages.dlq` gone (deleted by an operator, in this test's own
/// vhost), a message the store stage refuses is not lost on the way to it:
/// the dead-letter publish is mandatory, comes back, and the queue is
/// declared again before the message goes into it with its reason. The
/// room's next good message is delivered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_queue_loses_nothing() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let vhost = app.vhost().expect("RabbitMQ");
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "hall", "public").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/hall?history=0", &alice).await;
    delete_queue(&app, "messages.dlq").await;

    // Published by hand into `messages`: a room that does not exist.
    app.broker
        .publish(br#"{"room_id":"no-such-room","content":"refused"}"#)
        .await
        .expect("messages takes it");
    let (status, _) =
        crate::messages::post(&api, &alice, json!({"room_id": "hall", "content": "after"})).await;
    assert_eq!(status, 202);
    assert_eq!(ws.next_of(&["message"]).await["content"], "after");

    assert_dead_letters(&app, 1).await;
    let got = crate::helpers::client()
        .post(format!(
            "{}/api/queues/{}/messages.dlq/get",
            vhost.api,
            testsupport::enc(&vhost.name)
        ))
        .json(&json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        got[0]["payload"],
        r#"{"room_id":"no-such-room","content":"refused"}"#
    );
    let reason = got[0]["properties"]["headers"]["x-roomcast-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.starts_with("unknown_room"), "{got}");
}

/// An operator deletes the `room.events` exchange (in this test's own
/// vhost). The next event publish is refused, which fails the publishing
/// channel: the node closes its connection and opens a new one, which
/// declares the exchange again and binds this node's queue to its rooms
/// again, so the room's socket hears the message; no old connection is
/// left open beside the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_exchange_comes_back_with_its_bindings() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let vhost = app.vhost().expect("RabbitMQ");
    let api = app.api();
    let (_, alice) = api.user("alice").await;
    api.create_room(&alice, "hall", "public").await;
    let (mut ws, _) = Ws::join(app.addr, "/ws/hall?history=0", &alice).await;
    let say = |content: &'static str| {
        crate::messages::post(&api, &alice, json!({"room_id": "hall", "content": content}))
    };
    assert_eq!(say("before").await.0, 202);
    assert_eq!(ws.next_of(&["message"]).await["content"], "before");
    vhost.wait_for_connections(1).await;
    let before = vhost.connections().await;

    vhost.delete("exchanges/room.events").await;
    // An event published meanwhile (the socket's presence) may be the one
    // refused, and a publish on the connection being replaced then gets 503
    // `broker_unavailable`: sent again, as a client does, with its client_id.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after = json!({"room_id": "hall", "content": "after", "client_id": "after"});
        match crate::messages::post(&api, &alice, after).await {
            (202, _) => break,
            (503, body) if Instant::now() < deadline => {
                assert_eq!(body["code"], "broker_unavailable", "{body}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (status, body) => panic!("after: {status} {body}"),
        }
    }
    assert_eq!(ws.next_of(&["message"]).await["content"], "after");

    // The management API lists connections a few seconds late.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = vhost.connections().await;
        if now.len() == before.len() && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections before {before:?}, now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes `queue` in the test's own vhost, as an operator would by hand.
async fn delete_queue(app: &TestApp, queue: &str) {
    let vhost = app.vhost().expect("RabbitMQ");
    vhost.delete(&format!("queues/{queue}")).await;
}
