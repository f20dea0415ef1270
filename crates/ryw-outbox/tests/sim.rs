//! The outbox on the simulated store through a real outage (the primary unreachable for 30 s of
//! simulated time): writes made during it are deferred, reads of what they wrote say `Queued`,
//! and after it every deferred write applies exactly once, each session's in order.

mod common;

use common::TempDir;
use ryw::{ReadYourWritesLayer, Session, Visibility};
use ryw_outbox::{Breaker, DeferReason, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn store() -> SimStore {
    SimStore::new(
        SimConfig::default()
            .seed(11)
            .replicas(1)
            .partition(Partition {
                start: Duration::from_secs(1),
                end: Duration::from_secs(31),
                kind: PartitionKind::PrimaryUnreachable,
            }),
    )
}

#[tokio::test(start_paused = true)]
async fn writes_during_an_outage_are_deferred_then_applied_exactly_once_in_order() {
    let dir = TempDir::new();
    let outbox =
        Arc::new(Outbox::open(dir.path().join("outbox"), OutboxConfig::default()).unwrap());
    let store = store();
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let breaker = Arc::new(Breaker::new(2, Duration::from_secs(1)));
    let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let (a, b) = (Session::new(), Session::new());

    // Before the outage: applied.
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::put("x", 1)))
        .await
        .unwrap();
    assert!(matches!(first, Written::Applied(_)));

    tokio::time::sleep(Duration::from_secs(2)).await;
    // During it: A's write fails past its retries and is kept; A's next write queues behind it
    // (not sent); B's writes are kept too.
    let mut deferred = Vec::new();
    for (session, key, value) in [(&a, "x", 2), (&a, "y", 3), (&b, "z", 4), (&b, "x", 5)] {
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(SimRequest::put(key, value)))
            .await
            .unwrap();
        let d = *out.deferred().expect("deferred during the outage");
        deferred.push(d);
    }
    assert_eq!(deferred[0].reason, DeferReason::Failed);
    assert_eq!(deferred[1].reason, DeferReason::Behind);
    assert_eq!(outbox.len(), 4);
    assert!(store
        .log()
        .iter()
        .all(|e| e.value == 1 || e.write_id.is_none()));

    // A read of what A wrote cannot show it: queued, never guaranteed. A read of something A did
    // not write is fenced as usual.
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::get("x")))
        .await
        .unwrap()
        .applied()
        .unwrap();
    assert_eq!(read.visibility(), &Visibility::Queued(deferred[0].write_id));
    // What the read cannot show, for a caller that wants to show it anyway.
    let x = [SimAdapter::new().scope("x")];
    let queued = outbox.queued_requests::<SimRequest>(a.id(), &x).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0, deferred[0].write_id);
    assert_eq!(queued[0].1.key().as_ref(), "x");
    assert!(matches!(&queued[0].1, SimRequest::Put(p) if p.value == 2));
    let other = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::get("w")))
        .await
        .unwrap()
        .applied()
        .unwrap();
    assert!(other.visibility().is_guaranteed());

    // A replay during the outage leaves everything queued.
    let mut replayer = Replayer::new(outbox.clone(), ryw.clone()).breaker(breaker.clone());
    let pass = replayer.drain().await.unwrap();
    assert_eq!((pass.applied, pass.dead_lettered), (0, 0));
    assert_eq!(outbox.len(), 4);

    // After it: every deferred write applied once, each session's in the order it was made.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let done = tokio::time::timeout(
        Duration::from_secs(600),
        replayer.drain_until_empty(Duration::from_secs(1)),
    )
    .await
    .expect("drained within 10 minutes of simulated time")
    .unwrap();
    assert_eq!((done.applied, done.dead_lettered), (4, 0));
    assert!(outbox.is_empty());
    let log = store.log();
    for d in &deferred {
        let applied: Vec<_> = log
            .iter()
            .filter(|e| e.write_id == Some(d.write_id))
            .collect();
        assert_eq!(applied.len(), 1, "{d:?} applied once: {log:?}");
    }
    let position = |d: &ryw_outbox::Deferred| {
        log.iter()
            .find(|e| e.write_id == Some(d.write_id))
            .unwrap()
            .position
    };
    assert!(position(&deferred[0]) < position(&deferred[1]), "A's order");
    assert!(position(&deferred[2]) < position(&deferred[3]), "B's order");

    // A's session now sees its replayed write, guaranteed: the replay went through its live
    // session.
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::get("x")))
        .await
        .unwrap()
        .applied()
        .unwrap();
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    assert!(read.get_ref().value() == Some(2) || read.get_ref().value() == Some(5));

    // And a new write goes straight to the store again.
    let after = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::put("x", 6)))
        .await
        .unwrap();
    assert!(matches!(after, Written::Applied(_)));
}

#[tokio::test(start_paused = true)]
async fn an_entry_replayed_again_after_a_crash_applies_once() {
    let dir = TempDir::new();
    let path = dir.path().join("outbox");
    let store = store();
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let session = Session::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let entry = {
        let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw.clone());
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(SimRequest::put("k", 9)))
            .await
            .unwrap();
        assert!(out.deferred().is_some());
        outbox.pending().unwrap().remove(0).1
        // The process "crashes" here: the outbox is closed with the entry in it.
    };
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Restarted: another outbox object on the same file, no live session.
    let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
    assert_eq!(outbox.pending().unwrap().len(), 1);
    let mut replayer = Replayer::new(outbox.clone(), ryw.clone());
    assert_eq!(replayer.drain().await.unwrap().applied, 1);
    // A crash between the apply and the removal: the entry is there again.
    outbox.append(&entry).unwrap();
    assert_eq!(replayer.drain().await.unwrap().applied, 1, "recognised");
    let applied: Vec<_> = store
        .log()
        .into_iter()
        .filter(|e| e.write_id == Some(entry.write_id))
        .collect();
    assert_eq!(applied.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_outbox_refuses_with_a_typed_error_and_keeps_the_cause() {
    let dir = TempDir::new();
    let outbox = Arc::new(
        Outbox::open(dir.path().join("o"), OutboxConfig::default().max_entries(1)).unwrap(),
    );
    let store = store();
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (Session::new(), Session::new());
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(SimRequest::put("k", 1)))
        .await
        .unwrap();
    assert!(first.deferred().is_some());
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call(b.request(SimRequest::put("j", 1)))
        .await
        .unwrap_err();
    match refused {
        ryw_outbox::OutboxServiceError::Outbox { error, cause } => {
            assert!(matches!(error, ryw_outbox::OutboxError::Full { .. }));
            assert!(cause.is_some_and(|c| c.is_transient()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outbox.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn what_the_outbox_does_is_counted() {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use ryw::Version;

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let observer = Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
    let dir = TempDir::new();
    let outbox = Arc::new(
        Outbox::open(dir.path().join("o"), OutboxConfig::default().max_entries(4)).unwrap(),
    );
    let store = store();
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .conflict_retries(0)
        .layer(store.client(0));
    // Two failures open the breaker.
    let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(Arc::new(Breaker::new(2, Duration::from_secs(60))))
        .observer(observer.clone())
        .layer(ryw.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b, c, d) = (
        Session::new(),
        Session::new(),
        Session::new(),
        Session::new(),
    );
    // Deferred: failed, then behind it; a conditional write that will lose (failed: the breaker
    // opens); one not sent (store down); then the outbox is full.
    for (session, request) in [
        (&a, SimRequest::put("x", 1)),
        (&a, SimRequest::put("y", 2)),
        (&b, SimRequest::put_if("x", 3, Version::new(77))),
        (&c, SimRequest::put("z", 4)),
        (&d, SimRequest::put("w", 5)),
    ] {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let report = Replayer::new(outbox.clone(), ryw)
        .observer(observer)
        .drain()
        .await
        .unwrap();
    assert_eq!((report.applied, report.dead_lettered), (3, 1));
    assert!(outbox.dead_letters().unwrap()[0]
        .reason
        .starts_with("conflict"));

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let points = ryw_otel::testing::data_points(exported.last().unwrap(), "ryw.outbox.writes");
    let p = |o: &str, r: &str, n: u64| {
        (
            vec![
                format!("ryw.outbox.outcome={o}"),
                format!("ryw.outbox.reason={r}"),
            ],
            n,
        )
    };
    assert_eq!(
        points,
        [
            p("dead_lettered", "conflict", 1),
            p("deferred", "behind", 1),
            p("deferred", "failed", 2),
            p("deferred", "store_down", 1),
            p("refused", "full", 1),
            p("replayed", "none", 3),
        ]
    );
}
