//! The OTLP example (`examples/otlp.rs`) against an OTLP/HTTP receiver: after a simulated
//! workload through the session layer, what arrives at `/v1/metrics` decodes as OTLP protobuf,
//! names ryw's instruments, and counts the reads the workload made.

#[path = "../examples/otlp.rs"]
#[allow(dead_code)]
mod example;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, Metric};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/HTTP receiver on a free port, keeping every metrics export it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<ExportMetricsServiceRequest>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
                keep.lock().unwrap().push(request);
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

/// The sum of the data points of the sum `name`, with `filter` on their attributes.
fn total(metrics: &[&Metric], name: &str, filter: impl Fn(&[(String, String)]) -> bool) -> i64 {
    metrics
        .iter()
        .filter(|m| m.name == name)
        .filter_map(|m| match &m.data {
            Some(Data::Sum(sum)) => Some(&sum.data_points),
            _ => None,
        })
        .flatten()
        .filter(|p| {
            let attrs: Vec<(String, String)> = p
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), value)
                })
                .collect();
            filter(&attrs)
        })
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(n)) => n,
            Some(number_data_point::Value::AsDouble(x)) => x as i64,
            None => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_sends_what_the_workload_did() {
    let (endpoint, received) = receiver().await;
    // A long interval: what arrives is sent at shutdown.
    let provider = example::provider(&endpoint, Duration::from_secs(3600)).unwrap();
    let report = example::workload(&provider).await;
    assert!(report.reads > 0);
    assert!(report.check.violations.is_empty());
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();

    let received = received.lock().unwrap();
    let last = received.last().expect("an export arrived");
    let metrics: Vec<&Metric> = last
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .filter(|s| s.scope.as_ref().is_some_and(|s| s.name == "ryw"))
        .flat_map(|s| &s.metrics)
        .collect();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"ryw.reads"), "{names:?}");
    assert!(names.contains(&"ryw.writes"), "{names:?}");
    assert!(names.contains(&"ryw.request.duration"), "{names:?}");
    assert_eq!(total(&metrics, "ryw.reads", |_| true), report.reads as i64);
    let pending = total(&metrics, "ryw.reads", |attrs| {
        attrs.contains(&("ryw.visibility".into(), "pending".into()))
    });
    assert_eq!(pending, report.pending_reads as i64);
    assert!(total(&metrics, "ryw.writes", |_| true) > 0);
}
