//! Reading recorded metrics back, for tests and examples (feature `testing`): what the
//! OpenTelemetry SDK's in-memory exporter holds, as plain values.
//!
//! ```
//! use opentelemetry::metrics::MeterProvider;
//! use opentelemetry::KeyValue;
//! use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
//!
//! let exporter = InMemoryMetricExporter::default();
//! let provider = SdkMeterProvider::builder()
//!     .with_reader(PeriodicReader::builder(exporter.clone()).build())
//!     .build();
//! let counter = provider.meter("test").u64_counter("hits").build();
//! counter.add(2, &[KeyValue::new("route", "/a")]);
//! provider.force_flush().unwrap();
//! let metrics = exporter.get_finished_metrics().unwrap();
//! let points = ryw_otel::testing::data_points(metrics.last().unwrap(), "hits");
//! assert_eq!(points, [(vec!["route=/a".to_owned()], 2)]);
//! ```

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

/// Every data point of the instrument `name`, as its attributes (`key=value`, sorted) and its
/// value: a counter's sum, or a histogram's count. Sorted.
pub fn data_points(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<String>, u64)> {
    fn attributes<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<String> {
        let mut out: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
        out.sort();
        out
    }
    let mut out = Vec::new();
    for metric in metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
    {
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                for p in sum.data_points() {
                    out.push((attributes(p.attributes()), p.value()));
                }
            }
            AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                for p in h.data_points() {
                    out.push((attributes(p.attributes()), p.count()));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out
}
