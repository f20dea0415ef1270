//! A scripted run on the simulated store, recorded by the OpenTelemetry SDK's in-memory exporter
//! on a local meter provider (not the global one): every instrument holds exactly what the run
//! did.

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Version};
use ryw_otel::OtelObserver;
use ryw_sim::{LagModel, SimAdapter, SimConfig, SimRequest, SimStore};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The data points of `name`, without the store id every ryw instrument carries.
fn points(metrics: &ResourceMetrics, name: &str) -> Vec<(Vec<String>, u64)> {
    ryw_otel::testing::data_points(metrics, name)
        .into_iter()
        .map(|(mut attrs, value)| {
            attrs.retain(|a| !a.starts_with("ryw.store.id="));
            (attrs, value)
        })
        .collect()
}

fn point(attrs: &[&str], value: u64) -> (Vec<String>, u64) {
    let mut a: Vec<String> = attrs.iter().map(|s| s.to_string()).collect();
    a.sort();
    (a, value)
}

#[tokio::test(start_paused = true)]
async fn a_scripted_run_records_exactly_what_it_did() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    // One replica, 500 ms behind the primary: a read right after a write is stale there.
    let store = SimStore::new(
        SimConfig::default()
            .seed(5)
            .replicas(1)
            .lag(LagModel::new(Duration::from_millis(500), Duration::ZERO)),
    );
    let mut svc = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO))
                .conflict_retries(0)
                .observer(OtelObserver::new(&provider.meter("ryw"))),
        )
        .service(store.client(0));
    let session = Session::new();

    // A write; a read of it, stale at the replica and escalated; an unfenced read; a
    // conditional write that loses and is reported.
    svc.ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 1)))
        .await
        .unwrap();
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::get("k")))
        .await
        .unwrap();
    assert_eq!(read.get_ref().value(), Some(1));
    svc.ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::get("other")))
        .await
        .unwrap();
    let lost = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put_if("k", 2, Version::new(99))))
        .await
        .unwrap_err();
    assert!(lost.is_conflict(), "{lost}");

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().expect("one export");

    assert_eq!(
        points(metrics, "ryw.writes"),
        [
            point(&["error.type=conflict", "ryw.outcome=conflict"], 1),
            point(&["ryw.outcome=written"], 1),
        ]
    );
    assert_eq!(
        points(metrics, "ryw.reads"),
        [
            point(
                &["ryw.fence.path=escalated", "ryw.visibility=guaranteed"],
                1
            ),
            point(&["ryw.fence.path=unfenced", "ryw.visibility=guaranteed"], 1),
        ]
    );
    assert_eq!(
        points(metrics, "ryw.escalations"),
        [point(&["ryw.escalation.reason=stale_read"], 1)]
    );
    assert_eq!(
        points(metrics, "ryw.fence.misses"),
        [point(&["ryw.fence.strategy=verify"], 1)]
    );
    assert_eq!(
        points(metrics, "ryw.read.version_gap"),
        [point(&["ryw.fence.strategy=verify"], 1)]
    );
    assert_eq!(
        points(metrics, "ryw.conflicts"),
        [point(&["ryw.conflict.resolution=reported"], 1)]
    );
    assert_eq!(
        points(metrics, "ryw.request.duration"),
        [
            point(&["ryw.operation=read"], 2),
            point(&["ryw.operation=write"], 2),
        ]
    );
    // The escalated read missed its fence once: it took two attempts to see the write.
    assert_eq!(
        points(metrics, "ryw.read.catch_up.duration"),
        [point(&["ryw.visibility=guaranteed"], 1)]
    );
    assert!(points(metrics, "ryw.retries").is_empty());
    assert!(points(metrics, "ryw.rereads").is_empty());
}

/// `ryw.record.operations` and `ryw.record.fallbacks` read an instance's `SessionRecords`: a load
/// of what another instance wrote, a cache hit, and a load of a later version while the record
/// store is down (counted as a load, and as a fallback).
#[tokio::test]
async fn record_operations_and_fallbacks_are_counted() {
    use ryw::record::{InMemoryRecordStore, SessionRecords};
    use ryw::version::{ScopeKey, StoreId};
    use std::sync::Arc;

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let store = Arc::new(InMemoryRecordStore::new());
    let (a, b) = (
        Arc::new(SessionRecords::new(store.clone())),
        Arc::new(SessionRecords::new(store.clone())),
    );
    ryw_otel::observe_records(&provider.meter("ryw"), b.clone());
    let session = Session::new();
    session.with_state(|s| {
        s.vector_mut().set_cap(1);
        for n in 0u8..3 {
            s.advance(
                ScopeKey::new(StoreId::new(1), &[n]),
                Version::new(1 + u64::from(n)),
            );
        }
    });
    a.flush(&session).await;
    let token = session.token().encode().unwrap();
    b.load(&Session::from_encoded(&token).unwrap()).await;
    b.load(&Session::from_encoded(&token).unwrap()).await;
    // More coarsened and written by instance a; instance b cannot reach the store for it.
    session.with_state(|s| {
        s.advance(ScopeKey::new(StoreId::new(1), &[9]), Version::new(9));
    });
    a.flush(&session).await;
    let token = session.token().encode().unwrap();
    store.set_unavailable(true);
    b.load(&Session::from_encoded(&token).unwrap()).await;

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().unwrap();
    let mut ops = points(metrics, "ryw.record.operations");
    ops.sort();
    assert_eq!(
        ops,
        [
            point(&["ryw.record.operation=cache_hit"], 1),
            point(&["ryw.record.operation=load"], 2),
            point(&["ryw.record.operation=write"], 0),
        ]
    );
    let mut fallbacks = points(metrics, "ryw.record.fallbacks");
    fallbacks.sort();
    assert_eq!(
        fallbacks,
        [
            point(&["ryw.record.reason=failure"], 1),
            point(&["ryw.record.reason=untrusted"], 0),
        ]
    );
}

/// The outbox's depth, size and dead letters, read at each collection: two writes queued,
/// then one replayed and one dead-lettered.
#[test]
fn the_outbox_depth_is_read_at_each_collection() {
    use ryw::clock::HybridTimestamp;
    use ryw::version::{ScopeKey, StoreId};
    use ryw::{SessionId, WriteId};
    use ryw_outbox::entry::Entry;
    use ryw_outbox::{Outbox, OutboxConfig};
    use std::sync::Arc;

    let dir = std::env::temp_dir().join(format!("ryw-otel-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).unwrap());
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    ryw_otel::observe_outbox(&provider.meter("ryw"), outbox.clone());
    let gauges = |exporter: &InMemoryMetricExporter| {
        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let metrics = exported.last().unwrap();
        [
            "ryw.outbox.depth",
            "ryw.outbox.size",
            "ryw.outbox.dead_letters",
        ]
        .map(|name| points(metrics, name).iter().map(|(_, v)| *v).sum::<u64>())
    };
    assert_eq!(gauges(&exporter), [0, 0, 0]);

    let entry = |seq: u64| Entry {
        write_id: WriteId::new(SessionId::from_u128(7), 1, seq),
        timestamp: HybridTimestamp::new(seq),
        may_have_applied: false,
        deferred_at: 0,
        scopes: vec![ScopeKey::new(StoreId::new(0), b"k")],
        session: String::new(),
        request: vec![0; 100],
    };
    let first = outbox.append(&entry(1)).unwrap();
    let second = outbox.append(&entry(2)).unwrap();
    let [depth, size, dead] = gauges(&exporter);
    assert_eq!((depth, dead), (2, 0));
    assert_eq!(size, outbox.bytes());
    assert!(size >= 200, "two entries of over 100 bytes: {size}");

    assert!(outbox.remove(first).unwrap());
    outbox.dead_letter(second, "expired").unwrap();
    assert_eq!(gauges(&exporter), [0, 0, 1]);
    drop(outbox);
    std::fs::remove_dir_all(&dir).unwrap();
}
