//! The Prometheus example (`examples/prometheus.rs`), scraped with a real HTTP GET: after a
//! simulated workload through the session layer, `/metrics` serves ryw's instruments in
//! Prometheus text format, and the reads it counts are the reads the workload made.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The sum of every sample of `metric` (any labels) in a Prometheus text exposition.
fn total(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_what_the_workload_did() {
    let registry = prometheus::Registry::new();
    let provider = example::provider(&registry);
    let report = example::workload(&provider).await;
    assert!(report.reads > 0);
    assert!(report.check.violations.is_empty());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, example::router(registry)).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<axum::body::Bytes>>();
    let response = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();

    assert!(body.contains("# TYPE ryw_reads_total counter"), "{body}");
    assert_eq!(
        total(&body, "ryw_reads_total"),
        report.reads as f64,
        "{body}"
    );
    let pending: f64 = body
        .lines()
        .filter(|l| l.starts_with("ryw_reads_total{") && l.contains("ryw_visibility=\"pending\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(pending, report.pending_reads as f64, "{body}");
    assert!(total(&body, "ryw_writes_total") > 0.0, "{body}");
    assert!(
        body.contains("# TYPE ryw_request_duration_seconds histogram"),
        "{body}"
    );
    // Never a session id, key or token as a label.
    assert!(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("session") && !l.contains("token")),
        "{body}"
    );
}
