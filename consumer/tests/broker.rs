//! The conformance suite of the [`Broker`] trait (DESIGN.md §2: "Both broker
//! implementations pass the same test suite").
//!
//! Every case is one `async fn <case>(kind: Kind)`. `on_both_brokers!` turns it
//! into `mod <case> { memory, amqp }`; `on_amqp_only!` into `mod <case> { amqp }`
//! for the few properties the in-process broker does not have (redelivery after
//! a consumer died, RabbitMQ's topology) — each such case says why.
//!
//! The AMQP tests run on a real RabbitMQ (`TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672`), each in a vhost of its own,
//! `rc_${ROOMCAST_TEST_RUN:-local}_<uuid>`, made, granted to `guest` and removed
//! through the management API (`TEST_RABBITMQ_API`, default
//! `http://guest:guest@127.0.0.1:15672`). A RabbitMQ that is absent fails the
//! test under `CI=true` and skips it, loudly, otherwise.
//!
//! Every await that could hang is bounded.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use consumer::{
    Broker, BrokerError, BrokerStatus,
    broker::{BoxStream, Interest, QueuedMessage, Rooms, amqp::AmqpBroker, memory::MemoryBroker},
    event::{
        DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, MESSAGES_QUEUE, PARTITION_WEIGHT, PARTITIONS_EXCHANGE,
        REASON_HEADER, partition_queue,
    },
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use testsupport::{TestVhost, enc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Bound of anything that should happen promptly (a confirm, a delivery, a
/// management API answer catching up).
const LONG: Duration = Duration::from_secs(15);
/// How long "nothing else arrives" is watched.
const QUIET: Duration = Duration::from_millis(750);
/// How soon a broker must be back after its connection was killed.
const RECONNECT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Amqp,
}

/// Generates `mod <case> { memory, amqp }` tests that run `<case>(Kind)`.
macro_rules! on_both_brokers {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case(super::Kind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn amqp() {
                super::$case(super::Kind::Amqp).await
            }
        }
    )*};
}

/// Generates `mod <case> { amqp }` for properties only RabbitMQ has.
macro_rules! on_amqp_only {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn amqp() {
                super::$case(super::Kind::Amqp).await
            }
        }
    )*};
}

on_both_brokers!(
    publish_consume_ack,
    consume_in_publish_order,
    events_reach_every_node_in_order,
    dead_letter_keeps_payload_and_reason,
    status_and_reconnect,
    publish_fails_after_close,
    joined_rooms_only,
);
on_amqp_only!(
    unacked_messages_are_redelivered,
    batch_acks_cover_each_channel_up_to_the_batch,
    topology_matches_definitions
);

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// Case 1: A published message is consumed with the same payload, once.
async fn publish_consume_ack(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let broker = env.node("a").await;

    // Published before anyone consumes: it waits in the queue.
    let early = envelope("published before the consumer");
    publish(&*broker, &early).await;
    let mut messages = broker.consume_messages(8);
    let late = envelope("héllo 👋 after the consumer");
    publish(&*broker, &late).await;

    for expected in [&early, &late] {
        let delivery = next_delivery(&mut messages, expected).await;
        assert_eq!(text(&delivery.payload), *expected);
        assert!(
            !delivery.redelivered,
            "a first delivery is not a redelivery"
        );
        within("ack", LONG, delivery.ack())
            .await
            .expect("ack succeeds");
    }
    assert_no_delivery(&mut messages, "after both messages were acked").await;
    env.close_all().await;
}

/// Case 2: Messages are consumed in publish order.
async fn consume_in_publish_order(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let broker = env.node("a").await;
    let sent: Vec<String> = (0..200)
        .map(|i| json!({"room_id": Uuid::nil(), "content": format!("message {i}")}).to_string())
        .collect();
    for message in &sent {
        publish(&*broker, message).await;
    }

    let mut messages = broker.consume_messages(32);
    let mut received = Vec::with_capacity(sent.len());
    while received.len() < sent.len() {
        let delivery = next_delivery(&mut messages, &format!("message #{}", received.len())).await;
        received.push(text(&delivery.payload));
        within("ack", LONG, delivery.ack())
            .await
            .expect("ack succeeds");
    }
    assert_eq!(received, sent, "consumed in publish order");
    assert_no_delivery(&mut messages, "after all 200 messages").await;
    env.close_all().await;
}

/// Case 3: Every node's event stream gets every room event, in publish order, for
/// single publishes and batches alike.
///
/// Memory: the "nodes" of one process share the in-process broker, so the two
/// subscriptions are made on it; AMQP: two `AmqpBroker`s with different node ids
/// on the same vhost, each with its own queue.
async fn events_reach_every_node_in_order(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let node_a = env.node("a").await;
    let node_b = env.node("b").await;
    let mut events_a = node_a.subscribe_events(Rooms::All);
    let mut events_b = node_b.subscribe_events(Rooms::All);
    wait_subscribed(&*node_a, &mut [&mut events_a, &mut events_b]).await;

    let rooms = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let event = |i: usize| {
        let room_id = rooms[i % rooms.len()];
        (
            room_id,
            json!({"type": "test", "room_id": room_id, "n": i}).to_string(),
        )
    };
    let singles: Vec<(Uuid, String)> = (0..30).map(event).collect();
    let batch: Vec<(Uuid, String)> = (30..80).map(event).collect();

    for (room_id, payload) in &singles {
        within(
            "publish_event",
            LONG,
            node_a.publish_event(*room_id, payload.as_bytes()),
        )
        .await
        .expect("publish_event is confirmed");
    }
    let batch_bytes: Vec<(Uuid, Vec<u8>)> = batch
        .iter()
        .map(|(room_id, payload)| (*room_id, payload.clone().into_bytes()))
        .collect();
    // The batch comes from the other node: every node publishes to the same exchange.
    within("publish_events", LONG, node_b.publish_events(&batch_bytes))
        .await
        .expect("publish_events is confirmed");

    let expected: Vec<String> = singles
        .iter()
        .chain(&batch)
        .map(|(_, p)| p.clone())
        .collect();
    for (node, events) in [("a", &mut events_a), ("b", &mut events_b)] {
        let mut received = Vec::with_capacity(expected.len());
        while received.len() < expected.len() {
            let what = format!("event #{} on node {node}", received.len());
            received.push(text(&next_event(events, &what).await));
        }
        assert_eq!(received, expected, "node {node} got every event in order");
        assert_no_event(events, &format!("node {node}, after the last event")).await;
    }
    env.close_all().await;
}

/// Case 4: A dead letter keeps its payload and carries its reason; it does not go
/// to `messages`.
async fn dead_letter_keeps_payload_and_reason(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let broker = env.node("a").await;
    let mut messages = broker.consume_messages(8);
    let letters = vec![
        (
            "not json at all".to_owned(),
            "unparseable: expected value at line 1 column 1".to_owned(),
        ),
        (
            json!({"room_id": "no-such-room", "content": "x"}).to_string(),
            "unknown room".to_owned(),
        ),
    ];
    for (payload, reason) in &letters {
        within(
            "dead_letter",
            LONG,
            broker.dead_letter(payload.as_bytes(), reason),
        )
        .await
        .expect("dead_letter is confirmed");
    }
    assert_eq!(env.dead_letters(letters.len()).await, letters);
    assert_no_delivery(&mut messages, "dead letters do not enter `messages`").await;
    env.close_all().await;
}

/// Case 5: The unacked messages of a consumer that went away are delivered again,
/// marked `redelivered`; acked ones are not.
///
/// AMQP only. The in-process broker has no redelivery: its queue lives and dies
/// with the process, acks are no-ops, and `consume_messages` hands its single
/// receiver to the first caller, so a consumer that goes away takes its unacked
/// messages with it. There is nothing to test there, and nothing is faked.
async fn unacked_messages_are_redelivered(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let first = env.node("a").await;
    let mut messages = first.consume_messages(8);
    let acked = envelope("acked before the crash");
    let unacked = envelope("never acked");
    publish(&*first, &acked).await;
    publish(&*first, &unacked).await;

    let delivery = next_delivery(&mut messages, &acked).await;
    assert_eq!(text(&delivery.payload), acked);
    within("ack", LONG, delivery.ack())
        .await
        .expect("ack succeeds");
    let pending = next_delivery(&mut messages, &unacked).await;
    assert_eq!(text(&pending.payload), unacked);
    assert!(!pending.redelivered, "a first delivery is not a redelivery");

    // The node dies with `pending` unacked.
    drop(messages);
    within("close", LONG, first.close()).await;
    drop(pending);

    // The same node, restarted on the same vhost.
    let second = env.node("a").await;
    // Behind the redelivery in the queue: if the acked message came back, or
    // the unacked one did not, this would not be second in line.
    let marker = envelope("published after the restart");
    publish(&*second, &marker).await;
    let mut messages = second.consume_messages(8);

    let again = next_delivery(&mut messages, &unacked).await;
    assert_eq!(
        text(&again.payload),
        unacked,
        "the unacked message comes back first"
    );
    assert!(again.redelivered, "it is marked as redelivered");
    within("ack", LONG, again.ack())
        .await
        .expect("ack succeeds");
    let next = next_delivery(&mut messages, &marker).await;
    assert_eq!(
        text(&next.payload),
        marker,
        "the acked message does not come back"
    );
    assert!(!next.redelivered);
    within("ack", LONG, next.ack()).await.expect("ack succeeds");
    assert_no_delivery(&mut messages, "after the redelivery").await;
    env.close_all().await;
}

/// Case 5b: [`QueuedMessage::ack_batch`] acks, on each channel a batch came
/// on, every delivery up to the batch's last there, and nothing after it.
/// Sixteen rooms over four partitions: the batch spans several channels
/// (all in one partition: one chance in 4^15). The last delivery is held
/// back; after a restart it alone comes back. Acking one channel's deliveries
/// through another's tag, or through a tag past the batch, fails this.
///
/// AMQP only, like case 5: the in-process broker has no redelivery.
async fn batch_acks_cover_each_channel_up_to_the_batch(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let first = env.partitioned_node("a", 4).await;
    let mut messages = first.consume_messages(64);
    let sent: Vec<String> = (0..16).map(|i| envelope(&format!("message {i}"))).collect();
    for message in &sent {
        let room = Uuid::new_v4().to_string();
        within(
            "publish",
            LONG,
            first.publish_routed(&room, message.as_bytes(), None),
        )
        .await
        .unwrap_or_else(|err| panic!("publish of {message} is confirmed: {err}"));
    }
    let mut batch = Vec::new();
    for i in 0..sent.len() {
        batch.push(next_delivery(&mut messages, &format!("delivery {i}")).await);
    }
    let held = batch.pop().expect("sixteen deliveries");
    let held_payload = text(&held.payload);
    // Out of order on purpose: the latest of each channel is still the one acked.
    batch.reverse();
    within("ack_batch", LONG, QueuedMessage::ack_batch(batch))
        .await
        .expect("the batch is acked");

    // The node dies with `held` unacked.
    drop(messages);
    within("close", LONG, first.close()).await;
    drop(held);

    let second = env.partitioned_node("a", 4).await;
    let mut messages = second.consume_messages(64);
    let again = next_delivery(&mut messages, "the held-back delivery").await;
    assert_eq!(
        text(&again.payload),
        held_payload,
        "only the held-back delivery comes back"
    );
    assert!(again.redelivered, "it is marked as redelivered");
    within("ack", LONG, again.ack())
        .await
        .expect("ack succeeds");
    assert_no_delivery(&mut messages, "after the held-back delivery").await;
    env.close_all().await;
}

/// Case 6: `status` is `Up` while connected. On RabbitMQ, after the connection is
/// killed from the management API, a publish fails with `Unavailable` until
/// the broker reconnected (a publish that returns `Ok` really was confirmed:
/// it is consumed), the status is `Up` again within 10 s, and streams opened
/// before the drop carry what is published after the reconnect.
///
/// The in-process broker has no connection to lose: it is `Up` until closed
/// (closing is case 8).
async fn status_and_reconnect(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let broker = env.node("a").await;
    assert_eq!(broker.status(), BrokerStatus::Up);

    // Both streams are live before the drop: something went through each.
    let mut messages = broker.consume_messages(8);
    let mut events = broker.subscribe_events(Rooms::All);
    let before = envelope("before the drop");
    publish(&*broker, &before).await;
    let delivery = next_delivery(&mut messages, &before).await;
    assert_eq!(text(&delivery.payload), before);
    within("ack", LONG, delivery.ack())
        .await
        .expect("ack succeeds");
    wait_subscribed(&*broker, &mut [&mut events]).await;
    assert_eq!(broker.status(), BrokerStatus::Up);

    let Some(vhost) = &env.vhost else {
        env.close_all().await;
        return;
    };

    let old = vhost.connections_eventually().await;
    let killed_at = Instant::now();
    for name in &old {
        vhost.close_connection(name).await;
    }

    // Publish until one is confirmed; every failure must be `Unavailable`.
    let mut failed = Vec::new();
    let confirmed = loop {
        // The reconnect bound, plus time for the confirm itself.
        let limit = RECONNECT + Duration::from_secs(5);
        assert!(
            killed_at.elapsed() < limit,
            "no publish was confirmed within {limit:?} of the drop ({} failed)",
            failed.len()
        );
        let payload = envelope(&format!("after the drop, attempt {}", failed.len()));
        match within(
            "publish during the outage",
            LONG,
            broker.publish(payload.as_bytes()),
        )
        .await
        {
            Ok(()) => break payload,
            Err(BrokerError::Unavailable(_)) => {
                failed.push(payload);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("a publish during the outage must fail with Unavailable: {err}"),
        }
    };
    wait_up_by(
        &*broker,
        killed_at + RECONNECT,
        "after the connection was killed",
    )
    .await;

    // It really reconnected: a new connection, none of the old ones.
    let reconnected = within("a new connection in the management API", LONG, async {
        loop {
            let now = vhost.connections().await;
            if !now.is_empty() && now.iter().all(|name| !old.contains(name)) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    eprintln!(
        "reconnected after {:?}: {old:?} -> {reconnected:?}; {} publish(es) failed with Unavailable meanwhile",
        killed_at.elapsed(),
        failed.len()
    );

    // The consumer opened before the drop gets the confirmed message. One whose
    // publish failed may still have reached the queue (no confirm is not proof
    // of loss), nothing else may.
    loop {
        let delivery = next_delivery(&mut messages, &confirmed).await;
        let payload = text(&delivery.payload);
        within("ack", LONG, delivery.ack())
            .await
            .expect("ack succeeds");
        if payload == confirmed {
            break;
        }
        assert!(
            failed.contains(&payload),
            "unexpected message after the reconnect: {payload}"
        );
    }

    // So does the event subscription opened before the drop.
    wait_subscribed(&*broker, &mut [&mut events]).await;
    let room_id = Uuid::new_v4();
    let event = json!({"type": "test", "room_id": room_id, "after": "reconnect"}).to_string();
    within(
        "publish_event",
        LONG,
        broker.publish_event(room_id, event.as_bytes()),
    )
    .await
    .expect("publish_event is confirmed after the reconnect");
    assert_eq!(text(&next_event(&mut events, &event).await), event);
    assert_eq!(broker.status(), BrokerStatus::Up);
    env.close_all().await;
}

/// Case 7: The topology the broker declares is the one `rabbitmq/definitions.json`
/// loads (RabbitMQ refuses a redeclare with other arguments, so they must
/// agree to the letter).
///
/// AMQP only: the in-process broker has no queues or exchanges to compare.
async fn topology_matches_definitions(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let vhost = env.vhost.as_ref().expect("an AMQP case has a vhost");
    let definitions: Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rabbitmq/definitions.json"
    )))
    .expect("rabbitmq/definitions.json parses");

    let defined_queues = definitions["queues"].as_array().expect("queues");
    let mut names: Vec<&str> = defined_queues
        .iter()
        .map(|q| q["name"].as_str().expect("queue name"))
        .collect();
    names.sort_unstable();
    // The file declares the partitions of the compose file's MESSAGE_PARTITIONS;
    // a node started with that many declares the same.
    let partitions: Vec<String> = (0..names.len() as u16 - 2).map(partition_queue).collect();
    let mut expected: Vec<&str> = [MESSAGES_QUEUE, DEAD_LETTER_QUEUE]
        .into_iter()
        .chain(partitions.iter().map(String::as_str))
        .collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert!(partitions.len() > 1, "definitions.json declares partitions");
    let _broker = env.partitioned_node("a", partitions.len() as u16).await;
    for defined in defined_queues {
        let name = defined["name"].as_str().expect("queue name");
        let live = vhost
            .get_ok(&format!("/api/queues/{}/{}", enc(&vhost.name), enc(name)))
            .await;
        assert_eq!(live["name"], defined["name"]);
        assert_eq!(live["durable"], defined["durable"], "{name}: durable");
        assert_eq!(
            live["auto_delete"], defined["auto_delete"],
            "{name}: auto_delete"
        );
        assert_eq!(live["arguments"], defined["arguments"], "{name}: arguments");
        assert_eq!(
            live["type"], defined["arguments"]["x-queue-type"],
            "{name}: queue type"
        );
    }
    // And no other queue (the node's event queue exists only while subscribed).
    let mut live_names: Vec<String> = vhost
        .get_ok(&format!("/api/queues/{}", enc(&vhost.name)))
        .await
        .as_array()
        .expect("queue list")
        .iter()
        .map(|q| q["name"].as_str().expect("queue name").to_owned())
        .collect();
    live_names.sort_unstable();
    assert_eq!(live_names, names);

    let defined_exchanges = definitions["exchanges"].as_array().expect("exchanges");
    let mut names: Vec<&str> = defined_exchanges
        .iter()
        .map(|e| e["name"].as_str().expect("exchange name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, [PARTITIONS_EXCHANGE, EVENTS_EXCHANGE]);
    for defined in defined_exchanges {
        let name = defined["name"].as_str().expect("exchange name");
        let live = vhost
            .get_ok(&format!(
                "/api/exchanges/{}/{}",
                enc(&vhost.name),
                enc(name)
            ))
            .await;
        assert_eq!(live["name"], defined["name"]);
        for field in ["type", "durable", "auto_delete", "internal", "arguments"] {
            assert_eq!(live[field], defined[field], "{name}: {field}");
        }
    }
    let mut live_names: Vec<String> = vhost
        .get_ok(&format!("/api/exchanges/{}", enc(&vhost.name)))
        .await
        .as_array()
        .expect("exchange list")
        .iter()
        .map(|e| e["name"].as_str().expect("exchange name").to_owned())
        .filter(|name| !name.is_empty() && !name.starts_with("amq."))
        .collect();
    live_names.sort_unstable();
    assert_eq!(live_names, names, "no other exchange is declared");

    // Each partition is bound to the consistent-hash exchange with the
    // file's weight, and nothing else is bound to it.
    let binding = |b: &Value| {
        let field = |f: &str| b[f].as_str().unwrap_or_default().to_owned();
        (field("source"), field("destination"), field("routing_key"))
    };
    let mut defined: Vec<_> = definitions["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(binding)
        .collect();
    defined.sort();
    let expected: Vec<_> = partitions
        .iter()
        .map(|q| {
            (
                PARTITIONS_EXCHANGE.to_owned(),
                q.clone(),
                PARTITION_WEIGHT.to_owned(),
            )
        })
        .collect();
    assert_eq!(defined, expected);
    let mut live: Vec<_> = vhost
        .get_ok(&format!(
            "/api/exchanges/{}/{}/bindings/source",
            enc(&vhost.name),
            PARTITIONS_EXCHANGE
        ))
        .await
        .as_array()
        .expect("binding list")
        .iter()
        .map(binding)
        .collect();
    live.sort();
    assert_eq!(live, defined, "bindings of {PARTITIONS_EXCHANGE}");
    env.close_all().await;
}

/// Case 8: After `close()` the broker is down and every publish fails with
/// `Unavailable`.
async fn publish_fails_after_close(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let broker = env.node("a").await;
    publish(&*broker, &envelope("before close")).await;
    within("close", LONG, broker.close()).await;

    assert!(
        matches!(broker.status(), BrokerStatus::Down(_)),
        "status after close: {:?}",
        broker.status()
    );
    let room_id = Uuid::new_v4();
    let results = [
        (
            "publish",
            within("publish", LONG, broker.publish(b"{}")).await,
        ),
        (
            "publish_event",
            within("publish_event", LONG, broker.publish_event(room_id, b"{}")).await,
        ),
        (
            "publish_events",
            within(
                "publish_events",
                LONG,
                broker.publish_events(&[(room_id, b"{}".to_vec())]),
            )
            .await,
        ),
        (
            "dead_letter",
            within("dead_letter", LONG, broker.dead_letter(b"{}", "reason")).await,
        ),
    ];
    for (what, result) in results {
        assert!(
            matches!(result, Err(BrokerError::Unavailable(_))),
            "{what} after close must fail with Unavailable, got {result:?}"
        );
    }
    env.close_all().await;
}

/// Case 9: With [`Rooms::Joined`], a join is answered once the room's events
/// come; they come, and no other room's do; a room left stops coming; user
/// events always come; after the connection is killed, the rooms held are
/// bound again.
///
/// The in-process broker serves one process, whose hub is every room's: it
/// answers joins and sends every event, the other rooms' too.
async fn joined_rooms_only(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let node = env.node("a").await;
    let (interest, changes) = mpsc::unbounded_channel();
    let mut events = node.subscribe_events(Rooms::Joined(changes));
    let (here, elsewhere) = (Uuid::new_v4(), Uuid::new_v4());
    let event = |room: Uuid, n: u32| json!({"type": "test", "room_id": room, "n": n}).to_string();
    join(&interest, here).await;

    // Published in this order: were `elsewhere` bound, its event would come first.
    publish_event(&*node, elsewhere, &event(elsewhere, 1)).await;
    publish_event(&*node, here, &event(here, 2)).await;
    if kind == Kind::Memory {
        assert_eq!(
            text(&next_event(&mut events, "elsewhere").await),
            event(elsewhere, 1)
        );
    }
    assert_eq!(
        text(&next_event(&mut events, "the room joined").await),
        event(here, 2)
    );

    // Left: its events stop; a user's still come. The join after the leave
    // is answered only once the leave is done: changes apply in order.
    interest
        .send(Interest::Leave(here))
        .expect("the stream takes changes");
    join(&interest, Uuid::new_v4()).await;
    publish_event(&*node, here, &event(here, 3)).await;
    let user = json!({"type": "test_user", "n": 4}).to_string();
    within(
        "publish_user_event",
        LONG,
        node.publish_user_event(Uuid::new_v4(), user.as_bytes()),
    )
    .await
    .expect("publish_user_event is confirmed");
    if kind == Kind::Memory {
        assert_eq!(
            text(&next_event(&mut events, "the room left").await),
            event(here, 3)
        );
    }
    assert_eq!(text(&next_event(&mut events, "a user event").await), user);

    let Some(vhost) = &env.vhost else {
        env.close_all().await;
        return;
    };
    // Joined again, then the connection is killed: bound again on the new one.
    join(&interest, here).await;
    let mut rebinds = node.rebinds();
    let before = *rebinds.borrow_and_update();
    for name in &vhost.connections_eventually().await {
        vhost.close_connection(name).await;
    }
    within(
        "the event queue bound again",
        LONG,
        rebinds.wait_for(|n| *n > before),
    )
    .await
    .expect("the broker lives");
    wait_up_by(
        &*node,
        Instant::now() + RECONNECT,
        "after the connection was killed",
    )
    .await;
    publish_event(&*node, elsewhere, &event(elsewhere, 5)).await;
    publish_event(&*node, here, &event(here, 6)).await;
    assert_eq!(
        text(&next_event(&mut events, "after the reconnect").await),
        event(here, 6)
    );
    assert_no_event(&mut events, "after the last event").await;
    env.close_all().await;
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// The broker side of one test: the in-process broker, or a vhost of its own.
struct Env {
    memory: MemoryBroker,
    vhost: Option<TestVhost>,
    started: Mutex<Vec<Arc<dyn Broker>>>,
}

impl Env {
    /// `None` when RabbitMQ is unavailable outside CI (the test is skipped).
    async fn new(kind: Kind) -> Option<Self> {
        let vhost = match kind {
            Kind::Memory => None,
            Kind::Amqp => Some(TestVhost::new().await?),
        };
        Some(Self {
            memory: MemoryBroker::new(),
            vhost,
            started: Mutex::new(Vec::new()),
        })
    }

    /// A node's broker, connected. Memory: every node of the process shares the
    /// one in-process broker; AMQP: a new `AmqpBroker` (its own connection) on
    /// the test's vhost.
    async fn node(&self, node_id: &str) -> Arc<dyn Broker> {
        self.partitioned_node(node_id, 1).await
    }

    /// [`Env::node`] with the store stage split into `partitions` (AMQP only).
    async fn partitioned_node(&self, node_id: &str, partitions: u16) -> Arc<dyn Broker> {
        let broker: Arc<dyn Broker> = match &self.vhost {
            None => Arc::new(self.memory.clone()),
            Some(vhost) => Arc::new(
                within(
                    "AmqpBroker::start",
                    LONG,
                    AmqpBroker::start_partitioned(&vhost.amqp_url, node_id, partitions),
                )
                .await,
            ),
        };
        self.started.lock().expect("brokers").push(broker.clone());
        wait_up_by(&*broker, Instant::now() + LONG, "a new broker").await;
        broker
    }

    /// The dead letters, oldest first, as (payload, reason); `expected` is how
    /// many there should be (RabbitMQ's queue statistics lag behind).
    async fn dead_letters(&self, expected: usize) -> Vec<(String, String)> {
        match &self.vhost {
            None => self
                .memory
                .dead_letters()
                .into_iter()
                .map(|(payload, reason)| (text(&payload), reason))
                .collect(),
            Some(vhost) => vhost.dead_letters(expected).await,
        }
    }

    /// Closes every broker this test started (before its vhost goes).
    async fn close_all(&self) {
        let brokers = std::mem::take(&mut *self.started.lock().expect("brokers"));
        for broker in brokers {
            within("close", LONG, broker.close()).await;
        }
    }
}

async fn within<F: Future>(what: &str, limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A message as ingest would publish it, unique per call.
fn envelope(content: &str) -> String {
    json!({
        "id": Uuid::new_v4(),
        "room_id": Uuid::new_v4(),
        "sender_id": Uuid::new_v4(),
        "content": content,
    })
    .to_string()
}

async fn publish(broker: &dyn Broker, message: &str) {
    within("publish", LONG, broker.publish(message.as_bytes()))
        .await
        .unwrap_or_else(|err| panic!("publish of {message} is confirmed: {err}"));
}

async fn wait_up_by(broker: &dyn Broker, deadline: Instant, what: &str) {
    loop {
        match broker.status() {
            BrokerStatus::Up => return,
            BrokerStatus::Down(why) if Instant::now() >= deadline => {
                panic!("{what}: broker still down: {why}")
            }
            BrokerStatus::Down(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn next_delivery(messages: &mut BoxStream<QueuedMessage>, what: &str) -> QueuedMessage {
    within(what, LONG, messages.next())
        .await
        .unwrap_or_else(|| panic!("the message stream ended while waiting for {what}"))
}

async fn assert_no_delivery(messages: &mut BoxStream<QueuedMessage>, what: &str) {
    match tokio::time::timeout(QUIET, messages.next()).await {
        Err(_) => {}
        Ok(Some(delivery)) => panic!(
            "{what}: unexpected delivery {} (redelivered: {})",
            text(&delivery.payload),
            delivery.redelivered
        ),
        Ok(None) => panic!("{what}: the message stream ended"),
    }
}

/// Events published by `wait_subscribed`; `next_event` skips them.
const PROBE: &[u8] = b"{\"probe\":";

fn is_probe(event: &[u8]) -> bool {
    event.starts_with(PROBE)
}

/// Publishes probe events until each stream got one. A subscription is bound
/// in the background and events published before that are not for it; all the
/// probes are confirmed before anything the test publishes next, so they all
/// come first. Publishes that fail with `Unavailable` (a reconnect) are retried.
async fn wait_subscribed(publisher: &dyn Broker, streams: &mut [&mut BoxStream<Bytes>]) {
    let room_id = Uuid::new_v4();
    let mut sent = 0u32;
    for stream in streams.iter_mut() {
        within("the event subscription to be bound", LONG, async {
            loop {
                sent += 1;
                let probe = format!("{{\"probe\":{sent}}}");
                match publisher.publish_event(room_id, probe.as_bytes()).await {
                    Ok(()) | Err(BrokerError::Unavailable(_)) => {}
                    Err(err) => panic!("probe event: {err}"),
                }
                match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                    Ok(Some(event)) => {
                        assert!(is_probe(&event), "unexpected event: {}", text(&event));
                        return;
                    }
                    Ok(None) => panic!("the event stream ended"),
                    Err(_) => {}
                }
            }
        })
        .await;
    }
}

/// Says a socket joined `room_id`; returns once the stream says it is bound.
async fn join(interest: &mpsc::UnboundedSender<Interest>, room_id: Uuid) {
    let (bound, answer) = oneshot::channel();
    interest
        .send(Interest::Join { room_id, bound })
        .expect("the stream takes changes");
    within("the join to be answered", LONG, answer)
        .await
        .expect("a join is answered");
}

/// Publishes a room event, retrying while the broker reconnects.
async fn publish_event(broker: &dyn Broker, room_id: Uuid, event: &str) {
    within("publish_event", LONG, async {
        loop {
            match broker.publish_event(room_id, event.as_bytes()).await {
                Ok(()) => return,
                Err(BrokerError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(err) => panic!("publish_event: {err}"),
            }
        }
    })
    .await;
}

async fn next_event(events: &mut BoxStream<Bytes>, what: &str) -> Bytes {
    within(what, LONG, async {
        loop {
            match events.next().await {
                Some(event) if is_probe(&event) => {}
                Some(event) => return event,
                None => panic!("the event stream ended while waiting for {what}"),
            }
        }
    })
    .await
}

async fn assert_no_event(events: &mut BoxStream<Bytes>, what: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return,
            Ok(Some(event)) if is_probe(&event) => {}
            Ok(Some(event)) => panic!("{what}: unexpected event {}", text(&event)),
            Ok(None) => panic!("{what}: the event stream ended"),
        }
    }
}

/// What the broker tests ask of their vhost beyond the shared helpers.
trait VhostExt {
    async fn get_ok(&self, path: &str) -> Value;
    async fn dead_letters(&self, expected: usize) -> Vec<(String, String)>;
    async fn connections_eventually(&self) -> Vec<String>;
}

impl VhostExt for TestVhost {
    /// GETs `path`, retrying until it answers 200 (the management API catches
    /// up with the broker asynchronously).
    async fn get_ok(&self, path: &str) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            let (status, body) = self.get_with_status(path).await;
            if status.is_success() {
                return body;
            }
            assert!(Instant::now() < deadline, "GET {path}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The dead letters in `messages.dlq`, once it holds `expected` messages,
    /// read without consuming them.
    async fn dead_letters(&self, expected: usize) -> Vec<(String, String)> {
        let path = format!("/api/queues/{}/{}", enc(&self.name), enc(DEAD_LETTER_QUEUE));
        let deadline = Instant::now() + LONG;
        loop {
            let (status, queue) = self.get_with_status(&path).await;
            if status.is_success() && queue["messages"].as_u64() == Some(expected as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{DEAD_LETTER_QUEUE} should hold {expected} messages: {status} {queue}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // One more than expected, to see any extra.
        let res = testsupport::http()
            .post(format!("{}{path}/get", self.api))
            .json(
                &json!({"count": expected + 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
            )
            .send()
            .await
            .expect("get from messages.dlq");
        assert!(res.status().is_success(), "get: {}", res.status());
        let got: Value = res.json().await.expect("get answers JSON");
        got.as_array()
            .unwrap_or_else(|| panic!("get answers a list: {got}"))
            .iter()
            .map(|m| {
                assert_eq!(m["payload_encoding"], "string", "{m}");
                assert_eq!(m["properties"]["delivery_mode"], 2, "persistent: {m}");
                let reason = m["properties"]["headers"][REASON_HEADER]
                    .as_str()
                    .unwrap_or_else(|| panic!("no {REASON_HEADER} header: {m}"));
                let payload = m["payload"].as_str().expect("payload");
                (payload.to_owned(), reason.to_owned())
            })
            .collect()
    }

    /// The connections, once the management API lists at least one.
    async fn connections_eventually(&self) -> Vec<String> {
        within("a connection in the management API", LONG, async {
            loop {
                let names = self.connections().await;
                if !names.is_empty() {
                    return names;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
    }
}
