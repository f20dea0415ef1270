//! The adapter's own work per request (session clock, stamping, consistency, `WRITETIME`
//! check), against a scripted CQL node, beside the raw driver call in the same run.
//!
//! `cargo bench -p ryw-scylla --bench proxy`
//!
//! The node is ScyllaDB's `scylla-proxy` in dry mode on loopback (see
//! `tests/proxy/scripted_node.rs`): the round trip is real, the server's work is nil, so the
//! difference between the pairs is what ryw adds.

#[path = "../tests/proxy/scripted_node.rs"]
mod scripted_node;

use criterion::{criterion_group, criterion_main, Criterion};
use ryw::{FenceConfig, ReadYourWritesLayer, Session};
use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
use scripted_node::{Cell, CqlType, FixedClock, Reply, Script, ScriptedScyllaNode, NOW};
use scylla::statement::{Consistency, Statement};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

const INSERT: &str = "INSERT INTO app.posts (user_id, body) VALUES ('u1', 'hello')";
const SELECT: &str = "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = 'u1'";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (node, driver) = rt.block_on(async {
        let node = ScriptedScyllaNode::start(vec![
            Script::query("INSERT INTO app.posts", vec![Reply::Void]),
            Script::query(
                "SELECT body",
                vec![Reply::Rows {
                    columns: vec![
                        ("body", CqlType::Text),
                        ("writetime(body)", CqlType::BigInt),
                    ],
                    rows: vec![vec![Cell::Text("hello"), Cell::BigInt(NOW as i64)]],
                }],
            ),
        ])
        .await;
        let driver = Arc::new(node.session().await);
        (node, driver)
    });
    let service = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
        )
        .service(ScyllaService::new(driver.clone()));

    // A session whose one write (at NOW) every read must reflect: the reads verify on the cheap
    // path.
    let reader = Session::new();
    rt.block_on(
        service
            .clone()
            .oneshot(reader.request(ScyllaRequest::write(INSERT, ()).row(b"u1", b""))),
    )
    .unwrap();
    let writer = Session::new();

    let mut group = c.benchmark_group("scylla");
    group.bench_function("raw driver read (LOCAL_ONE)", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = Statement::new(SELECT);
            s.set_consistency(Consistency::LocalOne);
            let rows = driver
                .query_unpaged(s, ())
                .await
                .unwrap()
                .into_rows_result();
            std::hint::black_box(rows.unwrap());
        })
    });
    group.bench_function("raw driver read, rows read as dynamic values", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = Statement::new(SELECT);
            s.set_consistency(Consistency::LocalOne);
            let rows = driver
                .query_unpaged(s, ())
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            let n = rows
                .rows::<scylla::value::Row>()
                .unwrap()
                .filter_map(Result::ok)
                .count();
            std::hint::black_box((rows, n));
        })
    });
    group.bench_function("ryw read (fenced, WRITETIME verified)", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = service.clone();
            let request = reader.request(
                ScyllaRequest::read(SELECT, ())
                    .row(b"u1", b"")
                    .track("body"),
            );
            async move {
                let r = service.ready().await.unwrap().call(request).await.unwrap();
                assert!(r.visibility().is_guaranteed());
                std::hint::black_box(r);
            }
        })
    });
    group.bench_function("raw driver write (LOCAL_QUORUM, timestamp)", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = Statement::new(INSERT);
            s.set_consistency(Consistency::LocalQuorum);
            s.set_timestamp(Some(NOW as i64));
            std::hint::black_box(driver.query_unpaged(s, ()).await.unwrap());
        })
    });
    group.bench_function("ryw write (stamped with the session clock)", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = service.clone();
            let request = writer.request(ScyllaRequest::write(INSERT, ()).row(b"u1", b""));
            async move {
                std::hint::black_box(service.ready().await.unwrap().call(request).await.unwrap());
            }
        })
    });
    group.finish();
    rt.block_on(node.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
