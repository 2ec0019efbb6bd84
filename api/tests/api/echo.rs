//! The echo channel, locally and through an upstream relay.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{
    helpers::{Backend, spawn_app, spawn_app_with},
    ws_client::Ws,
};

/// A loopback WebSocket server that answers each text frame in upper case,
/// so a test can tell relayed frames from local echoes.
async fn upstream_shouter() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    if ws
                        .send(Message::Text(text.to_uppercase().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn transcripts(api: &crate::helpers::Api, token: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list: Vec<Value> = api
            .client
            .get(api.url("/echo/history"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(list.len(), n);
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echoes_and_keeps_a_transcript(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("echoer").await;
    let url: Value = api
        .client
        .get(api.url("/echo_ws"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(url["url"], format!("ws://{}/echo", app.addr));
    assert_eq!(url["mode"], "echo", "no upstream: the server echoes");
    let url: Value = api
        .client
        .get(api.url("/pub_ws"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(url["url"], format!("ws://{}/ws/public", app.addr));
    assert_eq!(
        api.client
            .get(api.url("/echo_ws"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        Ws::connect(app.addr, "/echo", None)
            .await
            .err()
            .unwrap()
            .status,
        401
    );

    let mut ws = Ws::connect(app.addr, "/echo", Some(&token)).await.unwrap();
    ws.send_text(r#"{"hello":"there"}"#).await;
    assert_eq!(ws.next_json().await["hello"], "there");
    ws.send_text(r#"{"n":2}"#).await;
    assert_eq!(ws.next_json().await["n"], 2);
    ws.close().await;

    let list = transcripts(&api, &token, 1).await;
    let frames = list[0]["frames"].as_array().unwrap();
    let dirs: Vec<&str> = frames.iter().map(|f| f["dir"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["in", "out", "in", "out"]);
    assert_eq!(frames[0]["text"], r#"{"hello":"there"}"#);
    // Others' transcripts are not yours.
    let (_, other) = api.user("nosy").await;
    let theirs: Vec<Value> = api
        .client
        .get(api.url("/echo/history"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(theirs.is_empty());
}

async fn relays_through_the_upstream(backend: Backend) {
    let upstream = upstream_shouter().await;
    let Some(app) = spawn_app_with(backend, |c| {
        c.echo_upstream_url = Some(format!("ws://{upstream}"))
    })
    .await
    else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("relayed").await;
    let info: Value = api
        .client
        .get(api.url("/echo_ws"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["mode"], "relay", "{info}");
    let mut ws = Ws::connect(app.addr, "/echo", Some(&token)).await.unwrap();
    ws.send_text(r#"{"say":"quiet"}"#).await;
    assert_eq!(ws.next_json().await["SAY"], "QUIET");
    ws.close().await;
    let list = transcripts(&api, &token, 1).await;
    assert_eq!(list[0]["frames"][1]["text"], r#"{"SAY":"QUIET"}"#);
}

/// A client that sends and never reads blocks the echo's writes; the socket
/// is dropped once a write has waited the send timeout (10 s), and its slot
/// is free again: it cannot outlive its token, a logout or a shutdown.
async fn an_echo_client_that_never_reads_is_dropped(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.sockets_per_user = 1).await else {
        return;
    };
    let api = app.api();
    let (_, token) = api.user("mute").await;
    // A tiny receive window, so the server's writes back up at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let mut request = format!("ws://{}/echo", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let (mut tx, _rx) = ws.split();
    let frame = "e".repeat(4000);
    let mut sent = 0;
    while sent < 20_000 {
        let send = tx.send(Message::Text(frame.clone().into()));
        if tokio::time::timeout(Duration::from_millis(500), send)
            .await
            .is_err()
        {
            break; // the server stopped reading: it is stuck writing to us
        }
        sent += 1;
    }
    assert!(sent < 20_000, "the server never pushed back");
    assert!(
        Ws::connect(app.addr, "/echo", Some(&token)).await.is_err(),
        "one socket per user, and it is held"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Ws::connect(app.addr, "/echo", Some(&token)).await {
            Ok(ws) => {
                ws.close().await;
                break;
            }
            Err(refused) => assert!(
                tokio::time::Instant::now() < deadline,
                "the stuck socket still holds its slot: {refused:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

crate::on_both_backends!(
    echoes_and_keeps_a_transcript,
    relays_through_the_upstream,
    an_echo_client_that_never_reads_is_dropped
);
