//! Exports ryw's metrics over OTLP (HTTP, protobuf) to an OpenTelemetry Collector, or any
//! backend that takes OTLP, as a service would: the OpenTelemetry SDK with the
//! `opentelemetry-otlp` exporter, and `ryw-otel`'s observer on the session layer.
//!
//! ```text
//! cargo run --example otlp     # sends to http://127.0.0.1:4318/v1/metrics
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 cargo run --example otlp
//! ```
//!
//! It runs a small simulated workload (replicas that lag, lost responses), then shuts the meter
//! provider down, which sends what it recorded. In a service, keep the provider for the life of
//! the process and shut it down on exit. `tests/otlp.rs` runs this same code against an OTLP
//! receiver and decodes what arrived.

use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
#[path = "shared/workload.rs"]
mod workload;

use ryw_sim::workload::RunReport;
use std::time::Duration;

/// A meter provider that sends its instruments to the OTLP/HTTP receiver at `endpoint` (for
/// example `http://127.0.0.1:4318`) every `interval`, and when it shuts down.
pub fn provider(
    endpoint: &str,
    interval: Duration,
) -> Result<SdkMeterProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    Ok(SdkMeterProvider::builder().with_reader(reader).build())
}

/// Runs the small simulated workload through the session layer, reporting to `provider`'s
/// instruments.
pub async fn workload(provider: &SdkMeterProvider) -> RunReport {
    workload::run(provider, 11).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4318".into());
    let provider = provider(&endpoint, Duration::from_secs(10))?;
    let report = workload(&provider).await;
    println!(
        "ran {} reads ({} pending) through the session layer; sending to {endpoint}",
        report.reads, report.pending_reads
    );
    // The exporter's HTTP client blocks: shut down off the async workers.
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    println!("sent");
    Ok(())
}
