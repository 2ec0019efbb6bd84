//! Logs: with `LOG_FORMAT=json` a node writes nothing but JSON objects, and
//! every answered request leaves a line with its method and path; pretty logs
//! into a pipe carry no colour codes; a clean shutdown logs no error.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, TestEnv, spawn_node_with_logs},
    ws_client::Ws,
};

async fn json_logs_are_json_and_name_each_request(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    let amqp = env.amqp_url();
    let mut vars = vec![("LOG_FORMAT", "json"), ("RUST_LOG", "info")];
    if let Some(url) = &amqp {
        vars.push(("AMQP_URL", url));
    }
    let (mut node, logs) = spawn_node_with_logs(&env.db.url, &vars);
    let api = Api::new(node.addr);
    let (_, token) = api.user("logged").await;
    let res = api
        .client
        .get(api.url("/rooms/no-such-room"))
        .bearer_auth(&token)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A bad request logs like any other; a broken body must not break a line.
    let res = api
        .client
        .post(api.url("/auth/login"))
        .header("content-type", "application/json")
        .body("{\"username\": \"a\nb\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Stop it, so start-up, requests and shutdown are all in the logs.
    terminate(&mut node).await;
    let lines = logs.lines();
    let records: Vec<Value> = lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(record) if record.is_object() => record,
            _ => panic!(
                "not a JSON object: {line:?}\nall lines:\n{}",
                lines.join("\n")
            ),
        })
        .collect();
    for record in &records {
        assert!(
            record["timestamp"].is_string() && record["level"].is_string(),
            "no timestamp or level: {record}"
        );
    }
    let said = |text: &str| {
        records
            .iter()
            .any(|r| r["message"].as_str().is_some_and(|m| m.contains(text)))
    };
    assert!(said("listening on http://"), "no start-up line");
    assert!(said("roomcast stopped"), "no shutdown line");

    // Each request: a line in its span, with method, path, status and request id.
    let request = |method: &str, path: &str| {
        records.iter().find(|r| {
            r["span"]["name"] == "http"
                && r["span"]["method"] == method
                && r["span"]["path"] == path
                && r["status"].is_number()
        })
    };
    if std::env::var_os("ROOMCAST_TEST_NODE_LOGS").is_some() {
        eprintln!("{}", lines.join("\n"));
    }
    let register = request("POST", "/auth/register")
        .unwrap_or_else(|| panic!("no line for POST /auth/register:\n{}", lines.join("\n")));
    assert_eq!(register["status"], 201, "{register}");
    assert_eq!(register["level"], "INFO", "{register}");
    let missing = request("GET", "/rooms/no-such-room").expect("a line for GET /rooms/…");
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["span"]["request_id"], "trace-me-42", "{missing}");
    let logins: Vec<&Value> = records
        .iter()
        .filter(|r| r["span"]["path"] == "/auth/login" && r["status"].is_number())
        .map(|r| &r["status"])
        .collect();
    assert_eq!(logins, [&json!(200), &json!(400)], "one line per login");
}

/// Stops `node` with SIGTERM; it must exit 0 within 15 s.
async fn terminate(node: &mut crate::helpers::Node) {
    let term = Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = node.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    // The readers may be a moment behind the exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The default (`pretty`) format written into a pipe, as a service manager
/// or `docker logs` reads it: no ANSI colour codes. And a clean shutdown,
/// with sockets open and (on PostgreSQL) the RabbitMQ connection closing,
/// says nothing at ERROR: an operator's alert on ERROR lines stays quiet.
async fn plain_logs_and_a_quiet_shutdown(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    let amqp = env.amqp_url();
    let mut vars = vec![("LOG_FORMAT", "pretty"), ("RUST_LOG", "info")];
    if let Some(url) = &amqp {
        vars.push(("AMQP_URL", url));
    }
    let (mut node, logs) = spawn_node_with_logs(&env.db.url, &vars);
    let api = Api::new(node.addr);
    let (_, token) = api.user("quiet").await;
    let (_room, _) = Ws::join(node.addr, "/ws/public", &token).await;
    let (_own, _) = Ws::join(node.addr, "/ws", &token).await;
    api.post_stored(&token, "public", "before the shutdown")
        .await;

    terminate(&mut node).await;
    let lines = logs.lines();
    let all = || lines.join("\n");
    assert!(
        lines.iter().any(|l| l.contains("roomcast stopped")),
        "no shutdown line:\n{}",
        all()
    );
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(coloured.is_empty(), "colour codes in a pipe: {coloured:?}");
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a clean shutdown: {errors:#?}\n{}",
        all()
    );
}

crate::on_both_backends!(
    json_logs_are_json_and_name_each_request,
    plain_logs_and_a_quiet_shutdown
);
