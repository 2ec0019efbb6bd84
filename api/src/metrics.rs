//! Prometheus metrics: the exporter, `GET /metrics`, and the HTTP timing layer.
//!
//! Every metric name starts with `roomcast_`; the broker-side ones are named
//! in `consumer::metrics`. One recorder serves the whole process.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

/// Messages accepted by ingest (the broker confirmed them).
pub const MESSAGES_ACCEPTED: &str = "roomcast_messages_accepted_total";
/// Open sockets on this node.
pub const SOCKETS: &str = "roomcast_sockets";
/// HTTP request durations by method, route and status.
pub const HTTP_DURATION: &str = "roomcast_http_request_duration_seconds";

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the store stage's batch sizes (messages).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's exporter, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(consumer::metrics::STORE_BATCH_MESSAGES.into()),
                    &BATCH_BUCKETS,
                )
            })
            .expect("constant buckets are valid");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder owns the process (a host program's): keep ours private.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Describes every metric of the process and registers the counters and the
/// gauge at zero (see [`consumer::metrics::register`]).
pub fn register() {
    metrics::describe_counter!(
        MESSAGES_ACCEPTED,
        "Messages accepted by ingest (the broker confirmed them)"
    );
    metrics::describe_gauge!(SOCKETS, "Open sockets on this node");
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request durations by method, route and status"
    );
    metrics::counter!(MESSAGES_ACCEPTED).increment(0);
    metrics::gauge!(SOCKETS).increment(0.0);
    consumer::metrics::register();
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(render))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
/// `GET /metrics`: Prometheus text format.
async fn render() -> impl IntoResponse {
    let handle = handle();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
}

/// Times every request, labelled by its route pattern (never the raw path,
/// which would make a label per room and per message) and its method, one
/// of the standard ones or `other`: a label takes memory for good, so none
/// may come from what a client invents.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the method if it is a standard one, else `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    #[test]
    fn a_made_up_method_is_labelled_other() {
        assert_eq!(super::method_label(&Method::PATCH), "PATCH");
        assert_eq!(super::method_label(&Method::GET), "GET");
        let invented = Method::from_bytes(b"ZZZ-1234").unwrap();
        assert_eq!(super::method_label(&invented), "other");
    }
}
