//! The ScyllaDB adapter on the wire: the real `scylla` driver talks to scripted CQL nodes
//! (ScyllaDB's `scylla-proxy` in dry mode, see `scripted_node.rs`), and the tests assert the
//! timestamp and consistency of every QUERY, EXECUTE and BATCH frame, and feed back rows.
//!
//! No Scylla or Cassandra server runs on this project's machines; a real cluster is exercised by
//! `testcontainers/tests/scylla.rs` where Docker exists.

mod adversary;
mod out_of_order;
mod paging;
mod paging_adversary;
mod scripted_node;

use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService, ScyllaStatement, Values};
use scripted_node::{Cell, CqlType, FixedClock, Reply, Script, ScriptedScyllaNode, NOW};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::Consistency;
use scylla_proxy::RequestOpcode;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type Stack = ryw::ReadYourWrites<ScyllaService, ScyllaAdapter>;

async fn stack(node: &ScriptedScyllaNode) -> Stack {
    let driver = node.session().await;
    ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
        )
        .service(ScyllaService::new(Arc::new(driver)))
}

/// One request through the stack.
async fn call(
    service: &mut Stack,
    session: &Session,
    request: ScyllaRequest,
) -> Result<ryw::SessionResponse<ryw_scylla::ScyllaResponse>, ryw::Error<ryw_scylla::ScyllaError>> {
    service
        .ready()
        .await
        .expect("the service is ready")
        .call(session.request(request))
        .await
}

fn rows(writetime: i64) -> Reply {
    Reply::Rows {
        columns: vec![
            ("body", CqlType::Text),
            ("writetime(body)", CqlType::BigInt),
        ],
        rows: vec![vec![Cell::Text("hello"), Cell::BigInt(writetime)]],
    }
}

/// A write of the row `u1` (`app.posts` is keyed by `user_id` alone: the clustering key is
/// empty).
fn insert() -> ScyllaRequest {
    ScyllaRequest::write(
        "INSERT INTO app.posts (user_id, body) VALUES ('u1', 'hello')",
        (),
    )
    .row(b"u1", b"")
}

/// A read of the row `u1`.
fn select() -> ScyllaRequest {
    ScyllaRequest::read(
        "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = 'u1'",
        (),
    )
    .row(b"u1", b"")
    .track("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_frames_carry_the_session_clock_and_the_consistency() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        Script::query("SELECT body", vec![rows(NOW as i64)]),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    for _ in 0..2 {
        call(&mut service, &session, insert()).await.unwrap();
    }
    let read = call(&mut service, &session, select()).await.unwrap();
    let seen = node.seen();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    // Writes: the hybrid clock (the wall clock, then strictly after it), at LOCAL_QUORUM.
    assert_eq!(seen[0].opcode, RequestOpcode::Query);
    assert_eq!(seen[0].timestamp, Some(NOW as i64));
    assert_eq!(
        seen[1].timestamp,
        Some(NOW as i64 + 1),
        "monotonic per session"
    );
    assert_eq!(seen[0].consistency, Some(Consistency::LocalQuorum));
    // The read: LOCAL_ONE, no timestamp; it shows the first write only, so it was re-read.
    assert_eq!(seen[2].consistency, Some(Consistency::LocalOne));
    assert_eq!(seen[2].timestamp, None);
    // The session requires NOW + 1 of the row: the read showing NOW is stale, re-read at
    // LOCAL_QUORUM, which also shows NOW: pending (the script has no fresher row).
    assert_eq!(seen[3].consistency, Some(Consistency::LocalQuorum));
    assert!(read.visibility().is_pending(), "{:?}", read.visibility());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_is_reread_at_local_quorum_and_then_guaranteed() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        // A replica that has an older write of the row, then the quorum with ours.
        Script::query(
            "SELECT body",
            vec![rows(NOW as i64 - 5_000), rows(NOW as i64)],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    call(&mut service, &session, insert()).await.unwrap();
    let read = call(&mut service, &session, select()).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(read.get_ref().writetime(), Some(NOW as i64));
    let seen = node.seen();
    let reads: Vec<_> = seen.iter().skip(1).map(|s| s.consistency).collect();
    assert_eq!(
        reads,
        vec![Some(Consistency::LocalOne), Some(Consistency::LocalQuorum)]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_stays_stale_is_pending_and_an_unfenced_read_is_cheap() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        Script::query("SELECT body", vec![rows(NOW as i64 - 5_000)]),
    ])
    .await;
    let mut service = stack(&node).await;

    // A session that never wrote: one cheap read, guaranteed (nothing to fence).
    let stranger = Session::new();
    let read = call(&mut service, &stranger, select()).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert_eq!(node.seen().len(), 1);

    let session = Session::new();
    call(&mut service, &session, insert()).await.unwrap();
    let read = call(&mut service, &session, select()).await.unwrap();
    let Visibility::Pending(stale) = read.visibility() else {
        panic!("{:?}", read.visibility());
    };
    assert_eq!(stale.staleness.required.get(), NOW);
    assert_eq!(stale.staleness.observed.map(|v| v.get()), Some(NOW - 5_000));
    assert_eq!(stale.attempts, 2);

    // A read without `.partition()` cannot be fenced: unscoped, never guaranteed.
    let unscoped = ScyllaRequest::read(
        "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = 'u1'",
        (),
    )
    .track("body");
    let read = call(&mut service, &session, unscoped).await.unwrap();
    assert_eq!(read.visibility(), &Visibility::Unscoped);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_carries_the_same_timestamp() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query(
            "INSERT INTO app.posts",
            vec![Reply::WriteTimeout, Reply::Void],
        ),
        Script::query("UPDATE app.counters", vec![Reply::WriteTimeout]),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let response = call(&mut service, &session, insert()).await.unwrap();
    assert!(response.attempts() >= 2);
    let seen = node.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].timestamp, Some(NOW as i64));
    assert_eq!(
        seen[1].timestamp, seen[0].timestamp,
        "pinned across the retry"
    );
    assert_eq!(seen[1].consistency, Some(Consistency::LocalQuorum));

    // A counter update is not idempotent: after a write timeout it is not sent again.
    let counter =
        ScyllaRequest::write("UPDATE app.counters SET n = n + 1 WHERE user_id = 'u1'", ())
            .partition(b"u1")
            .not_idempotent();
    let counting = Session::new();
    let error = call(&mut service, &counting, counter).await.unwrap_err();
    assert!(matches!(error, ryw::Error::Ambiguous { .. }), "{error:?}");
    assert_eq!(node.seen().len(), 1, "sent once");
    // It may have applied: the session requires what it gives its partition if it did (its
    // timestamp), so the next read there shows it or goes to the strong level.
    let required: Vec<u64> = counting
        .snapshot()
        .vector()
        .entries()
        .map(|e| e.version.get())
        .collect();
    assert!(
        !required.is_empty() && required.iter().all(|v| *v == NOW),
        "{required:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_and_batch_frames_carry_the_timestamp_and_consistency() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::prepare(
            "UPDATE app.posts SET body",
            Reply::Prepared {
                id: b"ryw-prepared-1",
                markers: vec![("body", CqlType::Text), ("user_id", CqlType::Text)],
            },
        ),
        Script::execute("ryw-prepared-1", vec![Reply::Void]),
        Script::batch("INSERT INTO app.batched", vec![Reply::Void]),
    ])
    .await;
    let driver = Arc::new(node.session().await);
    let prepared = driver
        .prepare("UPDATE app.posts SET body = ? WHERE user_id = ?")
        .await
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(ReadYourWritesLayer::new(ScyllaAdapter::new()).clock(FixedClock(NOW)))
        .service(ScyllaService::new(driver));
    let session = Session::new();
    let update = ScyllaRequest::write(ScyllaStatement::Prepared(prepared), ("edited", "u1"))
        .partition(b"u1");
    call(&mut service, &session, update).await.unwrap();

    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement("INSERT INTO app.batched (user_id, n) VALUES ('u1', 1)");
    batch.append_statement("INSERT INTO app.batched (user_id, n) VALUES ('u2', 2)");
    let values: Vec<Values> = vec![Arc::new(()), Arc::new(())];
    let request = ScyllaRequest::batch(batch, values)
        .row(b"u1", b"")
        .row(b"u2", b"");
    call(&mut service, &session, request).await.unwrap();

    let seen = node.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].opcode, RequestOpcode::Execute);
    assert_eq!(seen[0].text, "ryw-prepared-1");
    assert_eq!(seen[0].timestamp, Some(NOW as i64));
    assert_eq!(seen[0].consistency, Some(Consistency::LocalQuorum));
    assert_eq!(seen[1].opcode, RequestOpcode::Batch);
    assert_eq!(seen[1].batch.len(), 2);
    assert_eq!(seen[1].timestamp, Some(NOW as i64 + 1));
    assert_eq!(seen[1].consistency, Some(Consistency::LocalQuorum));
    // The update named partition u1 (its scope and every row read of it); the batch's rows and
    // their partitions now require the batch's timestamp.
    let state = session.snapshot();
    assert_eq!(state.vector().len(), 5);
    assert_eq!(
        state
            .vector()
            .entries()
            .filter(|e| e.version.get() == NOW + 1)
            .count(),
        4
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lightweight_transaction_not_applied_is_a_conflict_with_the_current_row() {
    let mut node = ScriptedScyllaNode::start(vec![Script::query(
        "IF NOT EXISTS",
        vec![
            Reply::Rows {
                columns: vec![
                    ("[applied]", CqlType::Boolean),
                    ("user_id", CqlType::Text),
                    ("body", CqlType::Text),
                ],
                rows: vec![vec![
                    Cell::Boolean(false),
                    Cell::Text("u1"),
                    Cell::Text("first"),
                ]],
            },
            Reply::Rows {
                columns: vec![("[applied]", CqlType::Boolean)],
                rows: vec![vec![Cell::Boolean(true)]],
            },
        ],
    )])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let lwt = || {
        ScyllaRequest::conditional(
            "INSERT INTO app.posts (user_id, body) VALUES ('u1', 'second') IF NOT EXISTS",
            (),
        )
        .partition(b"u1")
    };
    let error = call(&mut service, &session, lwt()).await.unwrap_err();
    let ryw::Error::Conflict(conflict) = error else {
        panic!("{error:?}");
    };
    let row = conflict
        .current_item::<scylla::value::Row>()
        .expect("the current row");
    assert_eq!(
        row.columns[1],
        Some(scylla::value::CqlValue::Text("first".into()))
    );
    let seen = node.seen();
    assert_eq!(seen.len(), 1, "a lost condition is not retried");
    assert_eq!(seen[0].timestamp, None, "Scylla assigns an LWT's timestamp");

    // Applied: the session now requires its own clock reading of the partition (and of every
    // row read of it: a partition write may touch any row).
    let ok = call(&mut service, &session, lwt()).await.unwrap();
    assert!(ok.visibility().is_guaranteed());
    assert_eq!(session.snapshot().vector().len(), 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_classified_for_the_retry_policy() {
    let mut node = ScriptedScyllaNode::start(vec![
        // Unavailable: nothing was written, so even a counter update is retried.
        Script::query("UPDATE app.counters", vec![Reply::Unavailable, Reply::Void]),
        Script::query("SELECT nonsense", vec![Reply::SyntaxError]),
        Script::query("SELECT body", vec![Reply::ReadTimeout, rows(1)]),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let counter =
        ScyllaRequest::write("UPDATE app.counters SET n = n + 1 WHERE user_id = 'u1'", ())
            .partition(b"u1")
            .not_idempotent();
    let done = call(&mut service, &session, counter).await.unwrap();
    assert_eq!(done.attempts(), 2);
    assert_eq!(node.seen().len(), 2);

    let bad = ScyllaRequest::read("SELECT nonsense FROM app.posts", ())
        .row(b"u1", b"")
        .track("nonsense");
    let error = call(&mut service, &session, bad).await.unwrap_err();
    let ryw::Error::Store { source, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(!source.is_timeout() && !source.is_unavailable());
    assert_eq!(source.class(), ryw::adapter::ErrorClass::Permanent);
    assert!(matches!(
        source.db_error(),
        Some(scylla::errors::DbError::SyntaxError)
    ));
    assert_eq!(node.seen().len(), 1, "a syntax error is not retried");

    // A read timeout is retried.
    let read = call(&mut service, &Session::new(), select()).await.unwrap();
    assert_eq!(read.get_ref().writetime(), Some(1));
    node.stop().await;
}

/// A tower `TimeoutLayer` under the session layer: the first answer is held back after the node
/// answered, the timeout fires, and the layer replays the write with the same timestamp (an
/// idempotent write), or reports a counter update ambiguous without sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_timed_out_by_middleware_is_replayed_with_its_timestamp() {
    use ryw::error::MiddlewareError;
    use ryw::retry::{Backoff, RetryPolicy};

    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void, Reply::Void]),
        Script::query("UPDATE app.counters", vec![Reply::Void]),
    ])
    .await;
    let driver = Arc::new(node.session().await);
    let layered = || {
        ServiceBuilder::new()
            .layer(
                ReadYourWritesLayer::new(ScyllaAdapter::new())
                    .clock(FixedClock(NOW))
                    .retry(RetryPolicy::new().backoff(Backoff::new(
                        Duration::from_millis(1),
                        Duration::from_millis(5),
                    ))),
            )
            .timeout(Duration::from_millis(300))
            .layer(ryw_sim::fault::HoldResponses::first(
                1,
                Duration::from_secs(2),
            ))
            .service(ScyllaService::new(driver.clone()))
    };
    let session = Session::new();

    let response = layered()
        .ready()
        .await
        .unwrap()
        .call(session.request(insert()))
        .await
        .expect("replayed, not failed");
    assert_eq!(response.attempts(), 2);
    let seen = node.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].timestamp, Some(NOW as i64));
    assert_eq!(seen[1].timestamp, seen[0].timestamp, "the same write");

    let counter =
        ScyllaRequest::write("UPDATE app.counters SET n = n + 1 WHERE user_id = 'u1'", ())
            .partition(b"u1")
            .not_idempotent();
    let error = layered()
        .ready()
        .await
        .unwrap()
        .call(session.request(counter))
        .await
        .unwrap_err();
    assert!(error.is_ambiguous(), "{error:?}");
    assert!(
        matches!(
            error.store_error(),
            Some(ryw_scylla::ScyllaError::Middleware(
                MiddlewareError::TimedOut
            ))
        ),
        "{error:?}"
    );
    assert_eq!(node.seen().len(), 1, "sent once");
    node.stop().await;
}

/// A read of several rows of a partition cannot be verified by any of their write times (a
/// replica can hold a later row's write and miss an earlier row's): once the session wrote to
/// the partition, the read goes to `LOCAL_QUORUM` up front, one read on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_several_rows_is_never_verified_by_the_newest_one() {
    let two_rows = |older: i64, newer: i64| Reply::Rows {
        columns: vec![
            ("body", CqlType::Text),
            ("writetime(body)", CqlType::BigInt),
        ],
        rows: vec![
            vec![Cell::Text("first"), Cell::BigInt(older)],
            vec![Cell::Text("second"), Cell::BigInt(newer)],
        ],
    };
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        // A replica whose newest row is past the session's write: it proves nothing of the row
        // the session wrote.
        Script::query_at(
            "WHERE user_id = 'u1'",
            Consistency::LocalOne,
            vec![two_rows(NOW as i64 - 5_000, NOW as i64 + 7)],
        ),
        Script::query_at(
            "WHERE user_id = 'u1'",
            Consistency::LocalQuorum,
            vec![two_rows(NOW as i64, NOW as i64 + 7)],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    call(&mut service, &session, insert()).await.unwrap();
    let feed = ScyllaRequest::read(
        "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = 'u1'",
        (),
    )
    .partition(b"u1")
    .track("body");
    let read = call(&mut service, &session, feed).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    let seen = node.seen();
    let reads: Vec<_> = seen.iter().skip(1).map(|s| s.consistency).collect();
    assert_eq!(reads, vec![Some(Consistency::LocalQuorum)]);
    node.stop().await;
}

/// The service reports every request: `db.client.operation.duration` with `db.system.name`
/// `cassandra`, the CQL command, the consistency level and the error type of a failure, read back
/// through the OpenTelemetry SDK's in-memory exporter on a local provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_client_operation_duration_is_recorded_per_request() {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        Script::query("SELECT body", vec![rows(NOW as i64)]),
        Script::query("SELEKT", vec![Reply::SyntaxError]),
    ])
    .await;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let observer = Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
    let driver = Arc::new(node.session().await);
    let mut service = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .observer(observer.clone()),
        )
        .service(ScyllaService::new(driver).observer(observer));
    let session = Session::new();
    service
        .ready()
        .await
        .unwrap()
        .call(session.request(insert()))
        .await
        .unwrap();
    service
        .ready()
        .await
        .unwrap()
        .call(session.request(select()))
        .await
        .unwrap();
    let bad = ScyllaRequest::read("SELEKT body FROM app.posts", ())
        .row(b"u1", b"")
        .track("body");
    assert!(service
        .ready()
        .await
        .unwrap()
        .call(session.request(bad))
        .await
        .is_err());

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().unwrap();
    let seen: Vec<(String, u64)> =
        ryw_otel::testing::data_points(metrics, "db.client.operation.duration")
            .into_iter()
            .map(|(attrs, count)| (attrs.join(" "), count))
            .collect();
    assert_eq!(
        seen,
        [
            ("cassandra.consistency.level=local_one db.operation.name=OTHER db.system.name=cassandra error.type=syntax_error".to_owned(), 1),
            ("cassandra.consistency.level=local_one db.operation.name=SELECT db.system.name=cassandra".to_owned(), 1),
            ("cassandra.consistency.level=local_quorum db.operation.name=INSERT db.system.name=cassandra".to_owned(), 1),
        ]
    );
    node.stop().await;
}
