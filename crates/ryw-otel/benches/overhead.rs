//! What telemetry costs per request, measured in one run against the same layer without an
//! observer: an empty observer, `OtelObserver` with no SDK installed (the API's no-op meter), and
//! `OtelObserver` on the SDK with a reader.
//!
//!     cargo bench -p ryw-otel --bench overhead

#[path = "../../ryw/benches/common/mod.rs"]
mod common;

use common::{drive, inner, session_with_scopes, BenchAdapter, Req};
use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use ryw::telemetry::Observer;
use ryw::ReadYourWritesLayer;
use ryw_otel::OtelObserver;
use std::hint::black_box;
use tower::Layer;

/// Hears everything, does nothing.
#[derive(Debug)]
struct Empty;
impl Observer for Empty {}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("telemetry");
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let noop = opentelemetry::metrics::noop::NoopMeterProvider::new();
    let layers = [
        ("off", ReadYourWritesLayer::new(BenchAdapter)),
        (
            "empty observer",
            ReadYourWritesLayer::new(BenchAdapter).observer(Empty),
        ),
        (
            "OtelObserver, no SDK",
            ReadYourWritesLayer::new(BenchAdapter).observer(OtelObserver::new(&noop.meter("ryw"))),
        ),
        (
            "OtelObserver, SDK",
            ReadYourWritesLayer::new(BenchAdapter)
                .observer(OtelObserver::new(&provider.meter("ryw"))),
        ),
    ];
    let mut k = 0u64;
    for (name, layer) in &layers {
        for write in [false, true] {
            let mut svc = layer.layer(inner());
            let session = session_with_scopes(1);
            let what = if write { "write" } else { "read" };
            group.bench_function(format!("{what}, telemetry {name}"), |b| {
                b.iter(|| {
                    k = (k + 1) & 7;
                    let request = Req {
                        key: k,
                        write,
                        strong: false,
                        write_seq: 0,
                    };
                    black_box(drive(&mut svc, session.request(black_box(request))))
                })
            });
        }
    }

    // Spans: a subscriber with tracing-opentelemetry over an SDK tracer that records every span
    // and exports none (an exporter's own cost is the application's), no observer.
    let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("ryw")))
    };
    tracing::subscriber::with_default(subscriber, || {
        for write in [false, true] {
            let mut svc = ReadYourWritesLayer::new(BenchAdapter).layer(inner());
            let session = session_with_scopes(1);
            let what = if write { "write" } else { "read" };
            group.bench_function(format!("{what}, spans to an SDK tracer"), |b| {
                b.iter(|| {
                    k = (k + 1) & 7;
                    let request = Req {
                        key: k,
                        write,
                        strong: false,
                        write_seq: 0,
                    };
                    black_box(drive(&mut svc, session.request(black_box(request))))
                })
            });
        }
    });
    group.finish();
    drop(provider);
}

criterion_group!(benches, bench);
criterion_main!(benches);
