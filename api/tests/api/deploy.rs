//! Running roomcast for real: nginx in front of two `roomcast` processes
//! (`deploy/`), the compose file, and the RabbitMQ definitions (`rabbitmq/`).
//!
//! The tools these tests drive (`nginx`, `docker-compose`) are Debian packages
//! that `.ci/run` installs; without one, its tests say `SKIPPED` and pass
//! locally, and fail under `CI=true`.

use std::{
    collections::HashSet,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use consumer::{Broker, BrokerStatus, broker::amqp::AmqpBroker};
use serde_json::{Value, json};

use crate::{
    helpers::{Api, Backend, TestEnv, TestVhost, client, in_ci, repo_root, spawn_env_node},
    messages::post,
    ws_client::Ws,
};

/// `preferred` if it exists, else `name` on `PATH`.
fn find_tool(name: &str, preferred: Option<&str>) -> Option<PathBuf> {
    if let Some(path) = preferred.map(PathBuf::from)
        && path.is_file()
    {
        return Some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The tool, or `None` after a `SKIPPED` line; panics in CI, which installs it.
fn require_tool(name: &str, preferred: Option<&str>) -> Option<PathBuf> {
    let found = find_tool(name, preferred);
    if found.is_none() {
        if in_ci() {
            panic!(
                "`{name}` is required in CI (.ci/run installs the Debian package) but is not installed"
            );
        }
        eprintln!("SKIPPED: `{name}` is not installed (apt-get install {name})");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// --- nginx --------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `deploy/nginx.local.conf.template` with exactly its four placeholders filled in.
fn render_template(node1: u16, node2: u16, nginx_port: u16, prefix: &Path) -> String {
    let template = fs::read_to_string(repo_root().join("deploy/nginx.local.conf.template"))
        .expect("read deploy/nginx.local.conf.template");
    let prefix = prefix.to_str().expect("a UTF-8 temp path");
    let rendered = [
        ("${NODE1_PORT}", node1.to_string()),
        ("${NODE2_PORT}", node2.to_string()),
        ("${NGINX_PORT}", nginx_port.to_string()),
        ("${NGINX_PREFIX}", prefix.to_owned()),
    ]
    .iter()
    .fold(template, |text, (placeholder, value)| {
        assert!(
            text.contains(placeholder),
            "the template uses {placeholder}"
        );
        text.replace(placeholder, value)
    });
    assert!(
        !rendered.contains("${"),
        "the template has a placeholder besides the four:\n{rendered}"
    );
    rendered
}

/// `nginx -t` on `conf` with `prefix` as its prefix; panics with nginx's words on failure.
fn nginx_test(nginx: &Path, prefix: &Path, conf: &Path) {
    let (ok, output) = run(Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(format!("{}/", prefix.display()))
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(conf));
    assert!(ok, "nginx -t -c {} failed:\n{output}", conf.display());
}

/// An nginx in the foreground on a rendered template; stopped when dropped.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    prefix: tempfile::TempDir,
}

impl Nginx {
    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| fs::read_to_string(self.prefix.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Renders the template, checks it with `nginx -t`, runs it and waits until
    /// `/healthz` answers through it. Retries on another port if the one picked
    /// was taken in the meantime.
    async fn start(nginx: &Path, node1: u16, node2: u16) -> Self {
        for attempt in 1..=3 {
            let prefix = tempfile::Builder::new()
                .prefix("roomcast-nginx-")
                .tempdir()
                .expect("temp dir");
            // nginx run as root hands its workers to `nobody`: let them reach the temp dirs.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(prefix.path(), fs::Permissions::from_mode(0o755))
                    .expect("chmod prefix");
            }
            let port = free_port();
            let conf = prefix.path().join("nginx.conf");
            fs::write(&conf, render_template(node1, node2, port, prefix.path()))
                .expect("write nginx.conf");
            nginx_test(nginx, prefix.path(), &conf);

            let stderr = fs::File::create(prefix.path().join("stderr.log")).expect("stderr log");
            let child = Command::new(nginx)
                .arg("-p")
                .arg(format!("{}/", prefix.path().display()))
                .arg("-e")
                .arg(prefix.path().join("error.log"))
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start nginx");
            let mut proxy = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                prefix,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = proxy.child.try_wait().expect("nginx status") {
                    let logs = proxy.logs();
                    if logs.contains("Address already in use") && attempt < 3 {
                        break;
                    }
                    panic!("nginx exited at start ({status}):\n{logs}");
                }
                let res = client()
                    .get(format!("http://{}/healthz", proxy.addr))
                    .send()
                    .await;
                if let Ok(res) = res {
                    assert_eq!(res.status(), 200, "/healthz through nginx");
                    return proxy;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx did not answer on {}:\n{}",
                    proxy.addr,
                    proxy.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        unreachable!("the last attempt panics or returns")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits (a SIGKILL would leave
        // the workers running, holding the port).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `text` from the first line containing `from` up to (not
/// including) the first line after it containing `to`.
fn section<'a>(text: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(from))
        .unwrap_or_else(|| panic!("no line with {from:?}"));
    let end = lines[start..]
        .iter()
        .position(|l| l.contains(to))
        .map_or(lines.len(), |i| start + i);
    lines[start..end].to_vec()
}

/// The local template proxies exactly as `deploy/nginx.conf` does: only the
/// paths, ports, upstream addresses and sizes differ.
#[test]
fn the_local_template_proxies_like_the_deployed_config() {
    let deployed = fs::read_to_string(repo_root().join("deploy/nginx.conf")).unwrap();
    let template =
        fs::read_to_string(repo_root().join("deploy/nginx.local.conf.template")).unwrap();
    for (from, to) in [
        ("log_format upstreamlog", "access_log"),
        ("client_max_body_size", "upstream roomcast {"),
        ("upstream roomcast {", "server "),
        ("keepalive 64", "listen "),
        ("server_name _;", "\u{0}"),
    ] {
        assert_eq!(
            section(&deployed, from, to),
            section(&template, from, to),
            "deploy/nginx.conf and the local template differ from {from:?} to {to:?}"
        );
    }
}

/// `deploy/nginx.conf` itself passes `nginx -t`, with the compose service names
/// (which only resolve inside compose) and the container's log and pid paths
/// pointed at loopback and a temp dir.
#[test]
fn deployed_nginx_conf_passes_nginx_t() {
    let Some(nginx) = require_tool("nginx", Some("/usr/sbin/nginx")) else {
        return;
    };
    let prefix = tempfile::tempdir().unwrap();
    let deployed = fs::read_to_string(repo_root().join("deploy/nginx.conf")).unwrap();
    for host in ["server roomcast1:8000", "server roomcast2:8000"] {
        assert!(deployed.contains(host), "deploy/nginx.conf has `{host}`");
    }
    let dir = prefix.path().display().to_string();
    let copy = deployed
        .replace("server roomcast1:", "server 127.0.0.1:")
        .replace("server roomcast2:", "server 127.0.0.1:")
        .replace("/var/log/nginx/", &format!("{dir}/"))
        .replace("/run/nginx.pid", &format!("{dir}/nginx.pid"));
    let conf = prefix.path().join("nginx.conf");
    fs::write(&conf, copy).unwrap();
    nginx_test(&nginx, prefix.path(), &conf);
}

/// Two nodes behind nginx: health, accounts, requests reaching both nodes, and
/// a WebSocket through nginx that receives messages posted through nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx() {
    let Some(nginx) = require_tool("nginx", Some("/usr/sbin/nginx")) else {
        return;
    };
    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    // The first node migrates; the second starts against the ready schema.
    let behind = ("CLIENT_IP_SOURCE", "XRealIp");
    let node1 = spawn_env_node(&env, &[("NODE_ID", "edge1"), behind]);
    let node2 = spawn_env_node(&env, &[("NODE_ID", "edge2"), behind]);
    let proxy = Nginx::start(&nginx, node1.addr.port(), node2.addr.port()).await;
    let api = Api::new(proxy.addr);

    let res = api.client.get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");

    // Metrics only on the nodes themselves, where Prometheus scrapes them.
    let res = api.client.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 404, "nginx serves /metrics to the outside");
    let direct = Api::new(node1.addr);
    assert!(direct.metrics().await.contains("roomcast_sockets"));

    // Requests reach both nodes (each /readyz names its node).
    let mut seen = HashSet::new();
    let mut answers = Vec::new();
    for _ in 0..200 {
        let res = api.client.get(api.url("/readyz")).send().await.unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if status == 200 {
            seen.insert(body["node"].as_str().unwrap_or_default().to_owned());
        }
        answers.push(format!("{status} {body}"));
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        seen,
        HashSet::from(["edge1".to_owned(), "edge2".to_owned()]),
        "requests through nginx reached both nodes; answers: {answers:?}\n{}",
        proxy.logs()
    );

    // Accounts through nginx.
    let (_, token) = api.user("edgeuser").await;
    let me: Value = api
        .client
        .get(api.url("/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "edgeuser");

    // A socket through nginx gets messages posted through nginx (whichever
    // node takes each POST).
    let (mut ws, welcome) = Ws::join(proxy.addr, "/ws/public?history=0", &token).await;
    assert_eq!(welcome["room"]["name"], "public", "{welcome}");
    for i in 0..4 {
        let (status, body) = post(
            &api,
            &token,
            json!({"room_id": "public", "content": format!("via nginx {i}")}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    for i in 0..4 {
        let frame = ws.next_of(&["message"]).await;
        assert_eq!(frame["content"], format!("via nginx {i}"), "{frame}");
        assert_eq!(frame["seq"], i + 1, "{frame}");
    }
    ws.close().await;

    // nginx logged which upstream served each request: both did.
    let access = fs::read_to_string(proxy.prefix.path().join("access.log")).unwrap_or_default();
    for node in [node1.addr, node2.addr] {
        assert!(
            access.contains(&format!("upstream={node}")),
            "no request went to {node}:\n{access}"
        );
    }
}

// --- docker compose -------------------------------------------------------------

/// The compose nodes take the client's address from the header nginx sets,
/// and nginx sets it from the connection, replacing any a client sent.
#[test]
fn compose_nodes_read_the_client_address_nginx_sends() {
    let compose = fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let nginx = fs::read_to_string(repo_root().join("deploy/nginx.conf")).unwrap();
    let source = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("CLIENT_IP_SOURCE:"))
        .map(str::trim)
        .expect("docker-compose.yml sets CLIENT_IP_SOURCE for the nodes");
    let header = match source {
        "XRealIp" => "proxy_set_header X-Real-IP         $remote_addr;",
        "RightmostXForwardedFor" => {
            "proxy_set_header X-Forwarded-For   $proxy_add_x_forwarded_for;"
        }
        other => panic!("CLIENT_IP_SOURCE: {other} is not a header deploy/nginx.conf sets"),
    };
    assert!(
        nginx.lines().any(|l| l.trim() == header),
        "deploy/nginx.conf lacks `{header}` for CLIENT_IP_SOURCE={source}"
    );
}

fn compose_config(compose: &Path, profile: Option<&str>) {
    let mut cmd = Command::new(compose);
    cmd.current_dir(repo_root())
        .args(["-f", "docker-compose.yml"]);
    if let Some(profile) = profile {
        cmd.args(["--profile", profile]);
    }
    cmd.args(["config", "-q"]);
    // The secrets compose requires (it ships none): without them it refuses.
    cmd.env_remove("SECRET_KEY").env_remove("RABBITMQ_PASSWORD");
    let (ok, output) = run(&mut cmd);
    assert!(
        !ok,
        "{cmd:?} accepted a deployment with no secrets:\n{output}"
    );
    cmd.env(
        "SECRET_KEY",
        "an-operator-chosen-secret-of-at-least-32-bytes",
    )
    .env("RABBITMQ_PASSWORD", "an-operator-chosen-broker-password");
    let (ok, output) = run(&mut cmd);
    assert!(ok, "{cmd:?} failed:\n{output}");
}

#[test]
fn compose_file_is_valid() {
    let Some(compose) = require_tool("docker-compose", None) else {
        return;
    };
    compose_config(&compose, None);
    compose_config(&compose, Some("monitoring"));
}

/// Every file the compose file mounts is in the repository.
#[test]
fn compose_mounts_exist() {
    let root = repo_root();
    let compose = fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let sources: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert!(
        sources.contains(&"rabbitmq/definitions.json") && sources.contains(&"deploy/nginx.conf"),
        "{sources:?}"
    );
    for source in sources {
        assert!(
            root.join(source).exists(),
            "docker-compose.yml mounts ./{source}, which is missing"
        );
    }
}

// --- Grafana dashboard -------------------------------------------------------

/// The `roomcast_*` metric names the dashboard's PromQL reads, histogram
/// series (`_bucket`, `_sum`, `_count`) folded into their metric.
fn dashboard_metrics() -> Vec<String> {
    let path = repo_root().join("deploy/grafana/dashboards/roomcast.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    let mut pending = vec![&dashboard];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    exprs.push(expr.clone());
                }
                pending.extend(map.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    let mut names = Vec::new();
    for expr in &exprs {
        for (at, _) in expr.match_indices("roomcast_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let metric = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            if !names.contains(&metric) {
                names.push(metric);
            }
        }
    }
    names
}

/// Every metric a panel of the dashboard queries is one a live node exports
/// (after a message went through it): a renamed metric leaves no panel empty.
async fn dashboard_reads_exported_metrics(backend: Backend) {
    let names = dashboard_metrics();
    assert!(names.len() >= 9, "the dashboard queries only {names:?}");
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    let node = spawn_env_node(&env, &[]);
    let api = Api::new(node.addr);
    let (_, token) = api.user("watcher").await;
    let (mut ws, _) = Ws::join(node.addr, "/ws/public?history=0", &token).await;
    let (status, body) = post(
        &api,
        &token,
        json!({"room_id": "public", "content": "graph me"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    ws.next_of(&["message"]).await;
    // The store stage times a batch's settle once its acks are sent, after
    // the socket may already have the message.
    api.wait_for_metric("roomcast_store_settle_seconds_count", 1.0)
        .await;

    let text = api.metrics().await;
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            let typed = text.contains(&format!("# TYPE {name} "));
            let sampled = text.lines().any(|l| {
                l.strip_prefix(name.as_str()).is_some_and(|rest| {
                    ["{", " ", "_bucket{", "_sum ", "_count "]
                        .iter()
                        .any(|p| rest.starts_with(p))
                })
            });
            !(typed && sampled)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the node does not export: {missing:?}\n{text}"
    );
}

crate::on_both_backends!(dashboard_reads_exported_metrics);

// --- RabbitMQ definitions -----------------------------------------------------

fn rabbitmq_api() -> String {
    std::env::var("TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

fn definitions_file() -> Value {
    let text = fs::read_to_string(repo_root().join("rabbitmq/definitions.json"))
        .expect("read rabbitmq/definitions.json");
    serde_json::from_str(&text).expect("rabbitmq/definitions.json is JSON")
}

/// The file's queues, exchanges and bindings, moved to `vhost` (its users,
/// permissions and vhosts stay out: the test vhost and user exist already).
fn topology_for(definitions: &Value, vhost: &str) -> Value {
    let mut out = json!({});
    for key in ["queues", "exchanges", "bindings"] {
        let items: Vec<Value> = definitions[key]
            .as_array()
            .unwrap_or_else(|| panic!("definitions.json has a `{key}` list"))
            .iter()
            .map(|item| {
                let mut item = item.clone();
                item["vhost"] = json!(vhost);
                item
            })
            .collect();
        out[key] = Value::Array(items);
    }
    out
}

async fn import(vhost: &TestVhost, topology: &Value) {
    let res = client()
        .post(format!("{}/api/definitions/{}", rabbitmq_api(), vhost.name))
        .json(topology)
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert!(
        status.is_success(),
        "import definitions: {status} {}",
        res.text().await.unwrap_or_default()
    );
}

/// `rabbitmq/definitions.json` declares what every node declares: a node
/// starts on a vhost the file set up (RabbitMQ would refuse its redeclare of a
/// queue with other arguments) and publishes into the file's `messages` queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_match_what_nodes_declare() {
    let Some(vhost) = TestVhost::new().await else {
        return;
    };
    let definitions = definitions_file();
    import(&vhost, &topology_for(&definitions, &vhost.name)).await;

    // The import itself made the topology, with the file's arguments.
    let queue = vhost
        .get(&format!("/api/queues/{}/messages", vhost.name))
        .await;
    let in_file = definitions["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "messages")
        .expect("definitions.json declares `messages`");
    assert_eq!(queue["arguments"], in_file["arguments"], "{queue}");
    assert_eq!(queue["durable"], true, "{queue}");
    let dlq = vhost
        .get(&format!("/api/queues/{}/messages.dlq", vhost.name))
        .await;
    assert_eq!(dlq["durable"], true, "{dlq}");
    let exchange = vhost
        .get(&format!("/api/exchanges/{}/room.events", vhost.name))
        .await;
    assert_eq!(exchange["type"], "topic", "{exchange}");
    assert_eq!(exchange["durable"], true, "{exchange}");

    let broker = AmqpBroker::start(&vhost.amqp_url, "definitions-check").await;
    assert_eq!(
        broker.status(),
        BrokerStatus::Up,
        "a node's declarations were refused on the topology of definitions.json"
    );
    let payload = json!({"room_id": "public", "content": "definitions check"}).to_string();
    broker
        .publish(payload.as_bytes())
        .await
        .expect("publish into the file's `messages` queue");

    // It is in the queue the file declared.
    let got: Value = client()
        .post(format!(
            "{}/api/queues/{}/messages/get",
            rabbitmq_api(),
            vhost.name
        ))
        .json(&json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got[0]["payload"], payload, "{got}");
    broker.close().await;
}

/// The check above can fail: with different arguments in the definitions, a
/// node's declaration is refused and it stays not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_with_other_arguments_are_refused() {
    let Some(vhost) = TestVhost::new().await else {
        return;
    };
    let mut topology = topology_for(&definitions_file(), &vhost.name);
    for queue in topology["queues"].as_array_mut().unwrap() {
        if queue["name"] == "messages" {
            queue["arguments"]["x-single-active-consumer"] = json!(false);
        }
    }
    import(&vhost, &topology).await;

    let broker = AmqpBroker::start(&vhost.amqp_url, "definitions-mismatch").await;
    match broker.status() {
        BrokerStatus::Down(reason) => assert!(
            reason.contains("PRECONDITION_FAILED") || reason.contains("inequivalent"),
            "{reason}"
        ),
        BrokerStatus::Up => panic!("a node declared `messages` over different arguments"),
    }
    assert!(broker.publish(b"{}").await.is_err());
    broker.close().await;
}

// --- Safe defaults ----------------------------------------------------------------

/// The lines of the compose service `name` (up to the next service).
fn compose_service(compose: &str, name: &str) -> Vec<String> {
    let start = format!("  {name}:");
    compose
        .lines()
        .skip_while(|l| *l != start)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    ") || l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The compose file ships no secret: `SECRET_KEY` and RabbitMQ's password
/// come from the environment with no default (compose refuses to start
/// without them), RabbitMQ's ports are published on loopback only, and the
/// monitoring images are pinned.
#[test]
fn compose_ships_no_secret_and_no_open_broker() {
    let compose = fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let setting = |key: &str| -> Vec<String> {
        compose
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let key = setting("SECRET_KEY");
    assert!(
        !key.is_empty() && key.iter().all(|v| v.starts_with("${SECRET_KEY:?")),
        "SECRET_KEY: {key:?}"
    );
    for amqp in setting("AMQP_URL") {
        assert!(
            amqp.contains("${RABBITMQ_PASSWORD:?"),
            "AMQP_URL has a password of its own: {amqp}"
        );
    }
    let rabbitmq = compose_service(&compose, "rabbitmq");
    assert!(!rabbitmq.is_empty(), "no rabbitmq service");
    let pass = rabbitmq
        .iter()
        .find_map(|l| l.trim().strip_prefix("RABBITMQ_DEFAULT_PASS:"))
        .expect("rabbitmq takes its password from RABBITMQ_DEFAULT_PASS");
    assert!(pass.trim().starts_with("${RABBITMQ_PASSWORD:?"), "{pass}");
    let mut ports = rabbitmq
        .iter()
        .skip_while(|l| l.trim() != "ports:")
        .skip(1)
        .take_while(|l| l.trim().starts_with("- "));
    assert!(
        ports.all(|p| p.contains("\"127.0.0.1:")),
        "rabbitmq publishes a port beyond loopback: {rabbitmq:?}"
    );
    // No account ships in the definitions either.
    let definitions = definitions_file();
    assert_eq!(
        definitions["users"],
        json!([]),
        "definitions.json has users"
    );
    for service in ["prometheus", "grafana"] {
        let image = compose_service(&compose, service)
            .iter()
            .find_map(|l| l.trim().strip_prefix("image:").map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no image for {service}"));
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{service} image is not pinned: {image}"
        );
    }
}

/// The web client opens a signed-in user's sockets with the cookie (same
/// origin), never with the token in the URL, where proxies and servers would
/// log it.
#[test]
fn the_web_client_puts_no_token_in_socket_urls() {
    let dir = repo_root().join("web/js");
    let mut scripts: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "js"))
        .collect();
    scripts.sort();
    assert!(
        scripts
            .iter()
            .any(|p| fs::read_to_string(p).unwrap().contains("new WebSocket(")),
        "no script in web/js opens a socket"
    );
    for script in scripts {
        let text = fs::read_to_string(&script).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            // A guest has no cookie (its token comes in a body): only its
            // socket may carry the token.
            let puts_token =
                code.contains("'token'") || code.contains("\"token\"") || code.contains("token=");
            assert!(
                !puts_token || code.contains("isGuest()"),
                "{} puts a signed-in user's token in a URL: {line}",
                script.display()
            );
        }
    }
}

/// nginx logs the path, not the query string: `?token=` stays out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_logs_no_query_strings() {
    let Some(nginx) = require_tool("nginx", Some("/usr/sbin/nginx")) else {
        return;
    };
    let Some(env) = TestEnv::new(Backend::Sqlite).await else {
        return;
    };
    let node = spawn_env_node(&env, &[("CLIENT_IP_SOURCE", "XRealIp")]);
    let port = node.addr.port();
    let proxy = Nginx::start(&nginx, port, port).await;
    let api = Api::new(proxy.addr);
    let (_, token) = api.user("logged").await;
    let res = api
        .client
        .get(api.url(&format!("/ws/public?token={token}")))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    // nginx writes the line once the request is finalised, which can be just
    // after the client has the answer: wait for it.
    let log = proxy.prefix.path().join("access.log");
    let mut access = String::new();
    for _ in 0..50 {
        access = fs::read_to_string(&log).unwrap_or_default();
        if access.contains("/ws/public") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(access.contains("/ws/public"), "{access}");
    assert!(!access.contains(&token), "the token is in the access log");
    assert!(!access.contains("token="), "{access}");
}
