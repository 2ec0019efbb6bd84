//! Test support shared by the workspace's test suites (`api/tests` and
//! `consumer/tests`): whether this run is CI, where a missing service fails
//! a test instead of skipping it, and a RabbitMQ vhost of a test's own, made
//! and removed through the management API. Never a dependency of the server.

#![warn(clippy::too_many_lines)]

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

/// True under `CI=true` (or `1`): a service a test needs must be there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Percent-encodes one path segment of a management API URL.
pub fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A client for the management API.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// A RabbitMQ vhost of its own for one test, made and removed through the
/// management API (`TEST_RABBITMQ_API`); dropped with the test.
pub struct TestVhost {
    pub name: String,
    /// `TEST_AMQP_URL` with this vhost.
    pub amqp_url: String,
    /// The management API's base URL.
    pub api: String,
    http: reqwest::Client,
}

impl TestVhost {
    /// A new vhost, or `None` (the test is skipped, loudly) when the
    /// management API is not reachable outside CI; in CI that fails the test.
    pub async fn new() -> Option<Self> {
        let api = std::env::var("TEST_RABBITMQ_API")
            .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into());
        let run = std::env::var("ROOMCAST_TEST_RUN").unwrap_or_else(|_| "local".into());
        let name = format!("rc_{run}_{}", Uuid::new_v4().simple());
        let base = std::env::var("TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
        let vhost = Self {
            amqp_url: format!("{}/{}", base.trim_end_matches('/'), enc(&name)),
            name,
            api,
            http: http(),
        };
        // From here on, `Drop` removes the vhost even if this fails.
        if let Err(why) = vhost.create().await {
            if in_ci() {
                panic!("RabbitMQ (with the management plugin) is required in CI: {why}");
            }
            eprintln!(
                "SKIPPED: RabbitMQ management API not reachable at {} ({why}); set TEST_RABBITMQ_API",
                vhost.api
            );
            return None;
        }
        Some(vhost)
    }

    fn vhost_url(&self) -> String {
        format!("{}/api/vhosts/{}", self.api, enc(&self.name))
    }

    /// Creates the vhost and lets `guest` use it.
    async fn create(&self) -> Result<(), String> {
        match self.http.put(self.vhost_url()).send().await {
            Ok(res) if res.status().is_success() => {}
            Ok(res) => return Err(format!("HTTP {}", res.status())),
            Err(err) => return Err(err.to_string()),
        }
        let res = self
            .http
            .put(format!(
                "{}/api/permissions/{}/guest",
                self.api,
                enc(&self.name)
            ))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .expect("set vhost permissions");
        assert!(
            res.status().is_success(),
            "vhost permissions: {}",
            res.status()
        );
        Ok(())
    }

    /// Deletes the vhost: RabbitMQ closes its connections and refuses new
    /// ones, as if the broker were gone, for this test alone.
    pub async fn remove(&self) {
        let res = self.http.delete(self.vhost_url()).send().await.unwrap();
        assert!(res.status().is_success(), "delete vhost: {}", res.status());
    }

    /// Creates the vhost again (empty) after [`TestVhost::remove`].
    pub async fn restore(&self) {
        self.create().await.expect("recreate the vhost");
    }

    /// GETs a management API path (e.g. `/api/queues/{vhost}/messages`): the
    /// status and the JSON answer (null if none).
    pub async fn get_with_status(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"));
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// GETs a management API path; its JSON answer.
    pub async fn get(&self, path: &str) -> Value {
        self.get_with_status(path).await.1
    }

    /// Names of the client connections to this vhost.
    pub async fn connections(&self) -> Vec<String> {
        let list = self
            .get(&format!("/api/vhosts/{}/connections", enc(&self.name)))
            .await;
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to 15 s) until the management API lists `n` connections to
    /// this vhost; its listing lags behind the broker by a few seconds.
    pub async fn wait_for_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let listed = self.connections().await.len();
            if listed >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {listed} of {n} connections listed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Force-closes a client connection, as an operator (or a crash) would.
    pub async fn close_connection(&self, name: &str) {
        let res = self
            .http
            .delete(format!("{}/api/connections/{}", self.api, enc(name)))
            .send()
            .await
            .expect("DELETE connection");
        assert!(
            res.status().is_success(),
            "close connection {name}: {}",
            res.status()
        );
    }

    /// Force-closes every client connection to this vhost; how many there were.
    pub async fn close_connections(&self) -> usize {
        let names = self.connections().await;
        for name in &names {
            // One may have gone on its own meanwhile.
            let _ = self
                .http
                .delete(format!("{}/api/connections/{}", self.api, enc(name)))
                .send()
                .await;
        }
        names.len()
    }

    /// Deletes `what` (`queues/<name>` or `exchanges/<name>`) in this vhost,
    /// as an operator would from the console.
    pub async fn delete(&self, what: &str) {
        let (kind, name) = what
            .split_once('/')
            .expect("queues/<name> or exchanges/<name>");
        let res = self
            .http
            .delete(format!(
                "{}/api/{kind}/{}/{}",
                self.api,
                enc(&self.name),
                enc(name)
            ))
            .send()
            .await
            .unwrap_or_else(|err| panic!("DELETE {what}: {err}"));
        assert!(res.status().is_success(), "delete {what}: {}", res.status());
    }

    /// Publishes a message by hand into `queue`, as an operator would from the console.
    pub async fn publish_by_hand(&self, queue: &str, payload: &str) {
        let res = self
            .http
            .post(format!(
                "{}/api/exchanges/{}/amq.default/publish",
                self.api,
                enc(&self.name)
            ))
            .json(
                &json!({"properties": {"delivery_mode": 2}, "routing_key": queue,
                "payload": payload, "payload_encoding": "string"}),
            )
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["routed"], true, "published by hand: {body}");
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let url = self.vhost_url();
        // A runtime of its own: this may run while the test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = http().delete(url).send().await;
            });
        })
        .join();
    }
}
