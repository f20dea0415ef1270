//! The spans of requests through the layer and `DynamoService` against moto, as an application
//! sees them through `tracing-opentelemetry`: each DynamoDB call is a CLIENT span named per the
//! semantic conventions (`GetItem {table}`), child of its request's `ryw.request` span.
//!
//! Its own test binary, with one test: `tracing` caches whether a call site is wanted across
//! threads, and the suite's other tests, running beside it without a subscriber, would disturb
//! it. Without `RYW_DYNAMODB_ENDPOINT` it prints that it skipped.

#[path = "moto/support.rs"]
mod support;

use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
use ryw_otel::testing::{RecordedSpan, SpanRecorder};
use std::time::Duration;
use support::{client, endpoint, fresh_table, s, StaleReplicaForTests};
use tower::{Layer, Service, ServiceExt};

/// Names, ids and parents, for assertion messages.
fn tree(spans: &[RecordedSpan]) -> Vec<(&str, u64, u64)> {
    spans
        .iter()
        .map(|s| (s.name.as_str(), s.id, s.parent))
        .collect()
}

fn children<'a>(spans: &'a [RecordedSpan], parent: &RecordedSpan) -> Vec<&'a RecordedSpan> {
    spans.iter().filter(|s| s.parent == parent.id).collect()
}

#[tokio::test]
async fn every_dynamodb_call_is_a_client_span_under_its_request() {
    let Some(endpoint) = endpoint() else { return };
    let client = client(&endpoint);
    let table = fresh_table(&client).await;
    let recorder = SpanRecorder::install();
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc =
        ReadYourWritesLayer::new(DynamoAdapter::new().table(TableSchema::new(&table, "pk")))
            .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO))
            .layer(stale.clone());
    let session = Session::new();

    let put: DynamoRequest = PutItemInput::builder()
        .table_name(&table)
        .item("pk", s("p"))
        .item("body", s("hello"))
        .into();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put))
        .await
        .unwrap();
    // The replica has not seen the item for one eventually consistent read: escalated.
    stale.hold("p", None, 1);
    let get: DynamoRequest = GetItemInput::builder()
        .table_name(&table)
        .key("pk", s("p"))
        .into();
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(get))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    let missing: DynamoRequest = GetItemInput::builder()
        .table_name("no_such_table")
        .key("pk", s("p"))
        .into();
    let failed = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(missing))
        .await;
    assert!(failed.is_err());

    let spans = recorder.spans();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "ryw.request").collect();
    assert_eq!(requests.len(), 3, "{:?}", tree(&spans));

    let calls = children(&spans, requests[0]);
    assert_eq!(calls.len(), 1, "{:?}", tree(&spans));
    assert_eq!(calls[0].name, format!("PutItem {table}"));
    assert_eq!(calls[0].kind, "client");
    assert_eq!(calls[0].attribute("db.system.name"), Some("aws.dynamodb"));
    assert_eq!(calls[0].attribute("db.operation.name"), Some("PutItem"));
    assert_eq!(
        calls[0].attribute("db.collection.name"),
        Some(table.as_str())
    );
    assert!(!calls[0].error);

    // Two calls: the eventually consistent read (answered stale), then the strong one.
    assert_eq!(requests[1].attribute("ryw.fence.path"), Some("escalated"));
    let calls = children(&spans, requests[1]);
    assert_eq!(calls.len(), 2, "{:?}", tree(&spans));
    assert!(calls.iter().all(|c| c.name == format!("GetItem {table}")));
    assert_eq!(
        calls[0].attribute("aws.dynamodb.consistent_read"),
        Some("false")
    );
    assert_eq!(
        calls[1].attribute("aws.dynamodb.consistent_read"),
        Some("true")
    );
    // The AWS SDK's own spans nest under the call.
    assert!(
        spans
            .iter()
            .any(|s| s.name == "DynamoDB.GetItem" && s.parent == calls[1].id),
        "{:?}",
        tree(&spans)
    );

    assert!(requests[2].error);
    let calls = children(&spans, requests[2]);
    assert_eq!(calls.len(), 1, "{:?}", tree(&spans));
    assert!(calls[0].error);
    assert_eq!(calls[0].attribute("error.type"), Some("resource_not_found"));
    assert_eq!(
        calls[0].attribute("aws.dynamodb.consistent_read"),
        Some("false")
    );
}
