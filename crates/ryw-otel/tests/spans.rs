//! The spans a request makes, as an application sees them through `tracing-opentelemetry`: one
//! `ryw.request` span per request through the layer, with its fields and events, and the store
//! service's CLIENT spans (one per database call) as its children.
//!
//! The store here is the simulated one behind a service that reports its calls as the real
//! store services do ([`DbCall`]); `ryw-dynamodb`'s tests check the same against moto.
//!
//! One test per file: `tracing` caches whether a call site is wanted across threads, and a
//! subscriber installed and dropped by a test running beside this one would disturb it.

use ryw::telemetry::{DbCall, SessionHash};
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Version};
use ryw_otel::testing::{RecordedSpan, SpanRecorder};
use ryw_sim::{LagModel, SimAdapter, SimConfig, SimError, SimRequest, SimStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

fn kind(e: &SimError) -> &'static str {
    if e.is_condition_failed() {
        "condition_failed"
    } else {
        "unavailable"
    }
}

fn requests(spans: &[RecordedSpan]) -> Vec<&RecordedSpan> {
    spans.iter().filter(|s| s.name == "ryw.request").collect()
}

fn children<'a>(spans: &'a [RecordedSpan], parent: &RecordedSpan) -> Vec<&'a RecordedSpan> {
    spans.iter().filter(|s| s.parent == parent.id).collect()
}

#[tokio::test(start_paused = true)]
async fn every_request_is_one_span_with_its_database_calls_as_children() {
    let recorder = SpanRecorder::install();
    // One replica, 500 ms behind the primary: a read right after a write is stale there.
    let store = SimStore::new(
        SimConfig::default()
            .seed(5)
            .replicas(1)
            .lag(LagModel::new(Duration::from_millis(500), Duration::ZERO)),
    );
    // The store refuses the call numbered `refuse` once (not applied): the layer retries it.
    let calls = Arc::new(AtomicU32::new(0));
    let refuse = 5;
    let client = store.client(0);
    let database = service_fn(move |request: SimRequest| {
        let mut client = client.clone();
        let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
        let operation = match request {
            SimRequest::Get(_) => "get",
            _ => "put",
        };
        let call = DbCall::new("sim", operation)
            .collection(Some("kv".to_owned()))
            .start(None);
        call.run(
            async move {
                if n == refuse {
                    return Err(SimError::Unavailable);
                }
                client.ready().await?.call(request).await
            },
            kind,
        )
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO))
                .conflict_retries(0),
        )
        .service(database);
    let session = Session::new();

    // 1 call: a write.
    svc.ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 1)))
        .await
        .unwrap();
    // 2 calls: a read of it, stale at the replica, escalated.
    svc.ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::get("k")))
        .await
        .unwrap();
    // 1 call: a conditional write that loses and is reported.
    let lost = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put_if("k", 2, Version::new(99))))
        .await
        .unwrap_err();
    assert!(lost.is_conflict(), "{lost}");
    // Calls 5 and 6: a write refused once (call 5), then retried.
    svc.ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("j", 1)))
        .await
        .unwrap();
    let spans = recorder.spans();
    let requests = requests(&spans);
    assert_eq!(requests.len(), 4, "{spans:#?}");
    let (write, read, conflict, retried) = (requests[0], requests[1], requests[2], requests[3]);

    for span in &requests {
        assert_eq!(span.kind, "internal");
        assert_eq!(span.parent, 0, "the test made no span around the call");
        assert_eq!(
            span.attribute("ryw.session.hash"),
            Some(SessionHash::of(session.id()).to_string().as_str())
        );
        let raw = session.id().to_string();
        assert!(
            span.attributes.iter().all(|a| !a.contains(&raw)),
            "the session id appears only hashed: {span:#?}"
        );
        assert_eq!(span.attribute("ryw.store.id"), Some("0"));
        assert_eq!(span.attribute("ryw.scopes"), Some("1"));
    }

    assert_eq!(write.attribute("ryw.operation"), Some("write"));
    assert_eq!(write.attribute("ryw.outcome"), Some("written"));
    assert_eq!(write.attribute("ryw.attempts"), Some("1"));
    assert!(!write.error);
    let calls = children(&spans, write);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "put kv");
    assert_eq!(calls[0].kind, "client");
    assert_eq!(calls[0].attribute("db.system.name"), Some("sim"));
    assert_eq!(calls[0].attribute("db.operation.name"), Some("put"));
    assert_eq!(calls[0].attribute("db.collection.name"), Some("kv"));

    assert_eq!(read.attribute("ryw.operation"), Some("read"));
    assert_eq!(read.attribute("ryw.outcome"), Some("guaranteed"));
    assert_eq!(read.attribute("ryw.fence.path"), Some("escalated"));
    assert_eq!(read.attribute("ryw.fence.strategy"), Some("strong"));
    assert_eq!(read.attribute("ryw.escalation.reason"), Some("stale_read"));
    assert_eq!(read.attribute("ryw.attempts"), Some("2"));
    let misses: Vec<_> = read
        .events
        .iter()
        .filter(|(name, _)| name == "fence miss")
        .collect();
    assert_eq!(misses.len(), 1, "{read:#?}");
    let miss = &misses[0].1;
    assert!(miss.contains(&"required=1".to_owned()), "{miss:?}");
    assert!(miss.contains(&"strategy=verify".to_owned()), "{miss:?}");
    assert_eq!(children(&spans, read).len(), 2, "one call per attempt");

    assert_eq!(conflict.attribute("ryw.outcome"), Some("conflict"));
    assert_eq!(conflict.attribute("error.type"), Some("conflict"));
    assert!(conflict.error);
    let calls = children(&spans, conflict);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].error);
    assert_eq!(calls[0].attribute("error.type"), Some("condition_failed"));

    assert_eq!(retried.attribute("ryw.outcome"), Some("written"));
    assert_eq!(retried.attribute("ryw.attempts"), Some("2"));
    let retries: Vec<_> = retried
        .events
        .iter()
        .filter(|(name, _)| name == "retry")
        .collect();
    assert_eq!(retries.len(), 1, "{retried:#?}");
    assert!(retries[0].1.contains(&"class=retryable".to_owned()));
    let calls = children(&spans, retried);
    assert_eq!(calls.len(), 2);
    assert!(calls[0].error && !calls[1].error);
}
