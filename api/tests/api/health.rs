use crate::helpers::{Backend, spawn_app};

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

crate::on_both_backends!(healthz_and_readyz, public_room_exists_after_migration);

async fn metrics_are_exported(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("counter").await;
    let (mut ws, _) = crate::ws_client::Ws::join(app.addr, "/ws/public?history=0", &token).await;
    let (status, _) = crate::messages::post(
        &api,
        &token,
        serde_json::json!({"room_id": "public", "content": "count me"}),
    )
    .await;
    assert_eq!(status, 202);
    ws.next_of(&["message"]).await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for name in [
        "roomcast_messages_accepted_total",
        "roomcast_messages_stored_total",
        "roomcast_messages_delivered_total",
        "roomcast_delivery_latency_seconds_bucket",
        "roomcast_sockets",
        "roomcast_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
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
