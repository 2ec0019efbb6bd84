//! API fuzzing: schemathesis generates requests from `/openapi.json` and sends
//! them to one `roomcast` process on PostgreSQL + RabbitMQ (guest tokens on),
//! authenticated, and checks every answer: no 5xx, and status code, content
//! type, headers and body as the description says. At least 2 000 cases in
//! all, from a fixed seed.
//!
//! The runs go one after the other, each with a bearer token of its own, so
//! that no operation takes the others' credentials away:
//!
//! 1. a registered user (owner of a public room) on every operation but the
//!    two that end its own token — `POST /auth/logout` revokes it and
//!    `DELETE /users/me` deletes the account, after which every call would
//!    be a 401 and test nothing;
//! 2. the bootstrap admin (`ADMIN_USERNAME`) on the `admin` operations, so
//!    they get past the role check; an admin cannot change its own role
//!    (409 `own_role`), so its token stays an admin's throughout;
//! 3. `POST /auth/logout` with a throwaway user's token, and
//! 4. `DELETE /users/me` with another one's.
//!
//! Needs schemathesis (`$SCHEMATHESIS`, else `schemathesis` on `PATH`; CI
//! installs it in `.ci/run`): without it the test says `SKIPPED` and passes
//! locally, and fails under `CI=true`.

use std::{
    ffi::OsString,
    process::Stdio,
    time::{Duration, Instant},
};

use crate::helpers::{Api, Backend, TestEnv, client, in_ci, spawn_env_node};

/// The schemathesis executable: `$SCHEMATHESIS`, else the one on `PATH`.
fn schemathesis() -> OsString {
    std::env::var_os("SCHEMATHESIS")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "schemathesis".into())
}

const ADMIN: &str = "fuzzadmin";
const ADMIN_PASSWORD: &str = "admin-password-123";

/// The same seed every run, so that a failure shows again on the next run.
const SEED: &str = "20240601";

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// All the runs together; nextest ends a test at 5 minutes.
const BUDGET: Duration = Duration::from_secs(240);

/// The fewest generated cases the runs must add up to.
const MIN_CASES: u64 = 2000;

/// Waits (up to 30 s) until `/readyz` answers 200: database and broker are up.
async fn wait_ready(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = client().get(format!("{base}/readyz")).send().await;
        if res.as_ref().is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} not ready: {res:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs in over HTTP; returns the bearer token.
async fn login(api: &Api, username: &str, password: &str) -> String {
    let res = api
        .client
        .post(api.url("/auth/login"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{username} logs in");
    let body: serde_json::Value = res.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// The number of cases a run generated, from its summary
/// (`Test cases:` then `  N generated, …`).
fn generated(output: &str) -> Option<u64> {
    let mut lines = output.lines();
    lines.find(|l| l.trim() == "Test cases:")?;
    lines
        .next()?
        .trim()
        .split_once(" generated")?
        .0
        .parse()
        .ok()
}

/// What CPython 3.11 prints when its AST recursion tracking goes wrong.
const INTERPRETER_FAULT: &str = "AST constructor recursion depth mismatch";

/// One schemathesis process, bounded by `deadline`.
async fn schemathesis_once(
    name: &str,
    base: &str,
    token: &str,
    max_examples: u32,
    filters: &[&str],
    deadline: Instant,
    work: &tempfile::TempDir,
) -> std::process::Output {
    let run = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--seed", SEED])
        .args(["--max-examples", &max_examples.to_string()])
        // Two cores: two workers keep the server and schemathesis both busy.
        .args(["--workers", "2"])
        .args(["--request-timeout", "20"])
        // Data generation slows down on a busy machine; that is not a failure.
        .args(["--suppress-health-check", "too_slow"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(filters)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "schemathesis ({name}) did not finish within the {} s budget",
                BUDGET.as_secs()
            )
        })
        .expect("schemathesis started")
}

/// One schemathesis run against `base` as the holder of `token`, on the
/// operations `filters` select, with up to `max_examples` cases per operation
/// and phase. Asserts it passed before `deadline`; returns how many cases it
/// generated.
async fn run(
    name: &str,
    base: &str,
    token: &str,
    max_examples: u32,
    filters: &[&str],
    deadline: Instant,
) -> u64 {
    // Its working directory: nothing is written into the repository.
    let work = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let mut attempt = 0;
    let (stdout, stderr, out) = loop {
        attempt += 1;
        let out =
            schemathesis_once(name, base, token, max_examples, filters, deadline, &work).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // A known fault of CPython 3.11 under threads (python/cpython#106905),
        // raised inside schemathesis, not an answer of the server: again, up
        // to three times (it has struck twice in a row).
        if attempt < 4 && format!("{stdout}{stderr}").contains(INTERPRETER_FAULT) {
            eprintln!("schemathesis ({name}) hit the interpreter's AST fault; running it again");
            continue;
        }
        break (stdout, stderr, out);
    };
    assert!(
        out.status.success(),
        "schemathesis ({name}) found failures ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Shown by the test runner on failure (or with --no-capture).
    let summary = stdout
        .find("= SUMMARY =")
        .and_then(|at| stdout[..at].rfind('\n'))
        .map_or(&*stdout, |at| &stdout[at + 1..]);
    println!(
        "--- schemathesis, {name} ({:.1} s) ---\n{summary}",
        started.elapsed().as_secs_f64()
    );
    generated(&stdout)
        .unwrap_or_else(|| panic!("no case count in schemathesis ({name}) output:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_schema_mismatch() {
    let version = std::process::Command::new(schemathesis())
        .arg("--version")
        .output();
    match version {
        Ok(out) if out.status.success() => {}
        other => {
            let why = match other {
                Ok(out) => format!("`schemathesis --version` failed: {}", out.status),
                Err(err) => format!("schemathesis is not installed ({err}); set SCHEMATHESIS"),
            };
            if in_ci() {
                panic!("schemathesis must run in CI, but {why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    }

    let Some(env) = TestEnv::new(Backend::Postgres).await else {
        return;
    };
    let node = spawn_env_node(
        &env,
        &[
            ("ADMIN_USERNAME", ADMIN),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("GUEST_TOKENS", "true"),
        ],
    );
    let base = format!("http://{}", node.addr);
    wait_ready(&base).await;
    let api = Api::new(node.addr);

    let (_, user) = api.user("fuzzer").await;
    api.create_room(&user, "fuzz-room", "public").await;
    let admin = login(&api, ADMIN, ADMIN_PASSWORD).await;
    let (_, leaving) = api.user("fuzzleaving").await;
    let (_, deleting) = api.user("fuzzdeleting").await;

    let started = Instant::now();
    let deadline = started + BUDGET;
    let mut cases = 0;
    cases += run(
        "user, all but logout and account deletion",
        &base,
        &user,
        60,
        &[
            "--exclude-operation-id",
            "logout",
            "--exclude-operation-id",
            "delete_me",
        ],
        deadline,
    )
    .await;
    cases += run(
        "admin, admin operations",
        &base,
        &admin,
        60,
        &["--include-tag", "admin"],
        deadline,
    )
    .await;
    cases += run(
        "throwaway user, logout",
        &base,
        &leaving,
        20,
        &["--include-operation-id", "logout"],
        deadline,
    )
    .await;
    cases += run(
        "throwaway user, account deletion",
        &base,
        &deleting,
        20,
        &["--include-operation-id", "delete_me"],
        deadline,
    )
    .await;
    println!(
        "schemathesis: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cases >= MIN_CASES,
        "only {cases} cases generated, fewer than {MIN_CASES}"
    );
}
