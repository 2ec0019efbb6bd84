//! Abuse limits: login throttling, socket flooding, body sizes.

use serde_json::{Value, json};

use crate::{
    helpers::{Backend, spawn_app},
    ws_client::Ws,
};

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
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "retry after {retry}");
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "rate_limited");
    // Another account from the same address is not locked out.
    assert_eq!(login("other", "password123").await.unwrap().status(), 200);
    // The lock is short: one slot frees every 6 s.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    assert_eq!(login("victim", "password123").await.unwrap().status(), 200);
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

/// Socket connects are limited per user: a burst of 60, then 429 with
/// `Retry-After`; another user is not affected.
async fn socket_connects_are_limited_per_user(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let api = app.api();
    let (_, hasty) = api.user("hasty").await;
    let (_, calm) = api.user("calm").await;
    let started = std::time::Instant::now();
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
    a_flooding_socket_is_told_then_closed,
    socket_connects_are_limited_per_user,
);
