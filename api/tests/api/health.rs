//! Liveness, readiness and metrics; readiness with a dependency gone.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestVhost, sample, spawn_app, spawn_app_with};

/// `/readyz`: status, body, `Retry-After`.
async fn readyz(app: &TestApp) -> (u16, Value, Option<String>) {
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null), retry)
}

/// Polls `/readyz` until it answers `status` (up to `within`).
async fn readyz_becomes(app: &TestApp, status: u16, within: Duration) -> (Value, Option<String>) {
    let deadline = Instant::now() + within;
    loop {
        let (got, body, retry) = readyz(app).await;
        if got == status {
            return (body, retry);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 503 `not_ready` whose detail names `down` and only it.
fn assert_not_ready(body: &Value, retry: Option<String>, down: &str, up: &str) {
    assert_eq!(body["code"], "not_ready", "{body}");
    assert_eq!(body["status"], 503, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with(&format!("{down}: ")), "{body}");
    assert!(!detail.contains(&format!("{up}: ")), "{body}");
    assert!(
        retry.is_some_and(|r| r.parse::<u64>().is_ok()),
        "no Retry-After"
    );
}

async fn healthz_and_readyz(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["database"], "up");
}

async fn public_room_exists_after_migration(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("pubwatcher").await;
    let res = api
        .client
        .get(api.url("/rooms/public"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let room: serde_json::Value = res.json().await.unwrap();
    assert_eq!(room["kind"], "public");
}

/// A node whose broker is gone answers 503 naming the broker, and is ready
/// again once the broker is back. "Gone" is this test's vhost deleted:
/// RabbitMQ closes the node's connection and refuses its reconnects, and no
/// other test notices. Both database backends, each with RabbitMQ.
async fn readyz_names_the_broker_while_it_is_down(backend: Backend) {
    let Some(vhost) = TestVhost::new().await else {
        return;
    };
    let url = vhost.amqp_url.clone();
    let Some(app) = spawn_app_with(backend, |config| config.amqp_url = Some(url)).await else {
        return;
    };
    let (body, _) = readyz_becomes(&app, 200, Duration::from_secs(10)).await;
    assert_eq!(body["broker"], "up", "{body}");

    vhost.remove().await;
    let (body, retry) = readyz_becomes(&app, 503, Duration::from_secs(15)).await;
    assert_not_ready(&body, retry, "broker", "database");
    // /healthz is liveness: the process is fine, so it stays 200.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    vhost.restore().await;
    let (body, _) = readyz_becomes(&app, 200, Duration::from_secs(20)).await;
    assert_eq!(body["broker"], "up", "{body}");
}

/// A node started while its broker is unreachable (nothing listens on the
/// port) starts anyway, not ready, and says why.
async fn readyz_names_an_unreachable_broker_at_start(backend: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", closed.local_addr().unwrap());
    drop(closed);
    let Some(app) = spawn_app_with(backend, |config| config.amqp_url = Some(url)).await else {
        return;
    };
    let (status, body, retry) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_not_ready(&body, retry, "broker", "database");
}

/// A node whose database is gone answers 503 naming the database.
/// PostgreSQL only: the test drops its own database (closing the node's
/// connections); an SQLite database is a file the process holds open, which
/// cannot be taken away from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_database_while_it_is_gone() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let (body, _) = readyz_becomes(&app, 200, Duration::from_secs(10)).await;
    assert_eq!(body["database"], "up", "{body}");
    assert!(app.env.db.drop_now().await);
    let (body, retry) = readyz_becomes(&app, 503, Duration::from_secs(30)).await;
    assert_not_ready(&body, retry, "database", "broker");
}

/// Anyone may ask `/readyz`: it says what is down, never the driver's error
/// (which names hosts, ports and users).
async fn readyz_shows_no_driver_error(backend: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    let url = format!("amqp://mq-user:mq-pass@127.0.0.1:{port}/%2f");
    drop(closed);
    let Some(app) = spawn_app_with(backend, |config| config.amqp_url = Some(url)).await else {
        return;
    };
    let (status, body, _) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["detail"], "broker: unavailable", "{body}");
    let text = body.to_string();
    for leak in [
        &port.to_string()[..],
        "mq-user",
        "os error",
        "refused",
        "127.0.0.1",
    ] {
        assert!(!text.contains(leak), "/readyz shows {leak}: {text}");
    }
}

crate::on_both_backends!(
    readyz_shows_no_driver_error,
    healthz_and_readyz,
    public_room_exists_after_migration,
    readyz_names_the_broker_while_it_is_down,
    readyz_names_an_unreachable_broker_at_start,
);

/// The metric names README.md lists, with `{a,b}` expanded.
pub fn documented_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let start = readme
        .find("- **Metrics**")
        .expect("README has a Metrics item");
    let item = &readme[start..];
    let item = &item[..item.find("\n- ").unwrap_or(item.len())];
    let mut names = Vec::new();
    for quoted in item.split('`').skip(1).step_by(2) {
        if !quoted.starts_with("roomcast_") {
            continue;
        }
        match (quoted.find('{'), quoted.find('}')) {
            (Some(open), Some(close)) => {
                for part in quoted[open + 1..close].split(',') {
                    names.push(format!("{}{part}{}", &quoted[..open], &quoted[close + 1..]));
                }
            }
            _ => names.push(quoted.to_owned()),
        }
    }
    names
}

const DEAD_LETTERED_UNPARSEABLE: &str =
    r#"roomcast_messages_dead_lettered_total{reason="unparseable"}"#;

async fn metrics_are_exported(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let documented = documented_metrics();
    assert_eq!(documented.len(), 12, "README lists {documented:?}");

    // Counters and the gauge show from start-up, at zero.
    let text = app.api().metrics().await;
    for series in [
        "roomcast_messages_accepted_total",
        "roomcast_messages_stored_total",
        "roomcast_messages_delivered_total",
        "roomcast_broker_reconnects_total",
        "roomcast_slow_consumer_disconnects_total",
        "roomcast_sockets",
        DEAD_LETTERED_UNPARSEABLE,
    ] {
        assert_eq!(
            sample(&text, series),
            Some(0.0),
            "{series} at start:\n{text}"
        );
    }

    let api = app.api();
    let (_, token) = api.user("counter").await;
    let (mut ws, _) = crate::ws_client::Ws::join(app.addr, "/ws/public?history=0", &token).await;
    let (status, _) = crate::messages::post(
        &api,
        &token,
        json!({"room_id": "public", "content": "count me"}),
    )
    .await;
    assert_eq!(status, 202);
    ws.next_of(&["message"]).await;
    // The hub counts a hand-over after it: the socket may be faster.
    app.api()
        .wait_for_metric("roomcast_messages_delivered_total", 1.0)
        .await;

    // A message that is not JSON, published by hand, is dead-lettered.
    match app.vhost() {
        Some(vhost) => vhost.publish_by_hand("messages", "this is not json").await,
        None => app.broker.publish(b"this is not json").await.unwrap(),
    }
    app.api()
        .wait_for_metric(DEAD_LETTERED_UNPARSEABLE, 1.0)
        .await;

    // A broker connection closed under the node is re-established and counted.
    if let Some(vhost) = app.vhost() {
        vhost.wait_for_connections(1).await;
        assert!(vhost.close_connections().await > 0);
        app.api()
            .wait_for_metric("roomcast_broker_reconnects_total", 1.0)
            .await;
    }

    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for name in &documented {
        let histogram = name.ends_with("_seconds");
        let series = if histogram {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "/metrics lacks {series}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no description"
        );
    }
    for series in [
        "roomcast_messages_accepted_total",
        "roomcast_messages_stored_total",
        "roomcast_messages_delivered_total",
        "roomcast_delivery_latency_seconds_count",
    ] {
        assert!(
            sample(&text, series).is_some_and(|v| v >= 1.0),
            "{series} did not count the message"
        );
    }
    // Routes are labelled by pattern, never by raw path.
    assert!(
        text.contains(r#"route="/rooms/{room}""#) || text.contains(r#"route="/auth/register""#)
    );
    assert!(
        !text.contains("route=\"/ws/public"),
        "a raw path became a label"
    );
}

crate::on_both_backends!(metrics_are_exported);
