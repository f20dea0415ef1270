//! Serves ryw's metrics in Prometheus text format at `/metrics`, as a service would: the
//! OpenTelemetry SDK with the `opentelemetry-prometheus` exporter, and `ryw-otel`'s observer on
//! the session layer.
//!
//! ```text
//! cargo run --example prometheus                  # serves http://127.0.0.1:9464/metrics
//! curl -s http://127.0.0.1:9464/metrics | grep '^ryw_'
//! ```
//!
//! It runs a small simulated workload first (the quickstart's kind of store: replicas that lag,
//! lost responses), then serves until interrupted. `RYW_METRICS_ADDR` changes the address.
//! `tests/prometheus.rs` runs this same code and scrapes it with a real HTTP GET.

use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};
#[path = "shared/workload.rs"]
mod workload;

use ryw_sim::workload::RunReport;

/// A meter provider whose instruments the Prometheus `registry` serves.
pub fn provider(registry: &Registry) -> SdkMeterProvider {
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .expect("a fresh registry accepts the exporter");
    SdkMeterProvider::builder().with_reader(exporter).build()
}

/// `GET /metrics`: everything in `registry`, in Prometheus text format.
pub fn router(registry: Registry) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = Vec::new();
                match TextEncoder::new().encode(&registry.gather(), &mut body) {
                    Ok(()) => (
                        [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        body,
                    )
                        .into_response(),
                    Err(e) => {
                        (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    }
                }
            }
        }),
    )
}

use axum::response::IntoResponse;

/// Runs the small simulated workload through the session layer, reporting to `provider`'s
/// instruments.
pub async fn workload(provider: &SdkMeterProvider) -> RunReport {
    workload::run(provider, 7).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new();
    let provider = provider(&registry);
    let report = workload(&provider).await;
    println!(
        "ran {} reads ({} pending) through the session layer",
        report.reads, report.pending_reads
    );
    let addr = std::env::var("RYW_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "serving http://{}/metrics (Ctrl-C stops)",
        listener.local_addr()?
    );
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
