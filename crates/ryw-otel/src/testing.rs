//! Reading recorded metrics and spans back, for tests and examples (feature `testing`): what
//! the OpenTelemetry SDK's in-memory exporters hold, as plain values.
//!
//! Metrics, read back with [`data_points`]:
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
//!
//! Spans: [`SpanRecorder`] sends the `tracing` spans of the current thread to OpenTelemetry
//! through `tracing-opentelemetry`, as an application would, and reads them back:
//!
//! ```
//! let recorder = ryw_otel::testing::SpanRecorder::install();
//! tracing::info_span!("work", otel.kind = "client", table = "t").in_scope(|| {});
//! let spans = recorder.spans();
//! assert_eq!(spans[0].name, "work");
//! assert_eq!(spans[0].kind, "client");
//! assert!(spans[0].attributes.contains(&"table=t".to_owned()));
//! ```

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

/// Every data point of the instrument `name`, as its attributes (`key=value`, sorted) and its
/// value: a counter's sum, a gauge's value, or a histogram's count. Sorted.
pub fn data_points(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<String>, u64)> {
    let mut out = Vec::new();
    for metric in metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
    {
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                for p in sum.data_points() {
                    out.push((sorted(p.attributes()), p.value()));
                }
            }
            AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                for p in h.data_points() {
                    out.push((sorted(p.attributes()), p.count()));
                }
            }
            AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                for p in h.data_points() {
                    out.push((sorted(p.attributes()), p.count()));
                }
            }
            AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                for p in g.data_points() {
                    out.push((sorted(p.attributes()), p.value()));
                }
            }
            _ => {}
        }
    }
    out.sort();
    out
}

/// The spans of the current thread, recorded in memory while the recorder lives: a local
/// `tracing` subscriber (not the global one) with a `tracing-opentelemetry` layer over an SDK
/// tracer provider and its in-memory exporter.
#[derive(Debug)]
pub struct SpanRecorder {
    exporter: opentelemetry_sdk::trace::InMemorySpanExporter,
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

/// One finished span, as plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedSpan {
    /// The span's name (`otel.name` when it was set).
    pub name: String,
    /// `client`, `internal`, `server`, `producer` or `consumer`.
    pub kind: &'static str,
    /// The span's id.
    pub id: u64,
    /// The parent's id, 0 for a root span.
    pub parent: u64,
    /// Attributes as `key=value`, sorted.
    pub attributes: Vec<String>,
    /// Events, each as its name and its attributes (`key=value`, sorted).
    pub events: Vec<(String, Vec<String>)>,
    /// The status was set to error.
    pub error: bool,
}

impl RecordedSpan {
    /// The value of attribute `key`, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
    }
}

impl SpanRecorder {
    /// Records the current thread's spans (every level) until the recorder is dropped.
    pub fn install() -> Self {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("ryw-test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let guard = tracing::subscriber::set_default(subscriber);
        SpanRecorder {
            exporter,
            provider,
            _guard: guard,
        }
    }

    /// Every span finished so far, in the order they ended.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        use opentelemetry::trace::{SpanKind, Status};
        let _ = self.provider.force_flush();
        let spans = self.exporter.get_finished_spans().unwrap_or_default();
        spans
            .into_iter()
            .map(|s| RecordedSpan {
                name: s.name.to_string(),
                kind: match s.span_kind {
                    SpanKind::Client => "client",
                    SpanKind::Server => "server",
                    SpanKind::Producer => "producer",
                    SpanKind::Consumer => "consumer",
                    SpanKind::Internal => "internal",
                },
                id: u64::from_be_bytes(s.span_context.span_id().to_bytes()),
                parent: u64::from_be_bytes(s.parent_span_id.to_bytes()),
                attributes: sorted(s.attributes.iter()),
                events: s
                    .events
                    .iter()
                    .map(|e| (e.name.to_string(), sorted(e.attributes.iter())))
                    .collect(),
                error: matches!(s.status, Status::Error { .. }),
            })
            .collect()
    }
}

fn sorted<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<String> {
    let mut out: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
    out.sort();
    out
}
