//! A request through ryw against SecantusDB, and the raw driver call, in the same run.
//!
//! `RYW_MONGODB_URI='mongodb://127.0.0.1:PORT/?replicaSet=secantus' cargo bench -p ryw-mongodb --bench secantus`
//! (`tests/servers.sh` shows how to start SecantusDB). Without the variable it prints that it
//! skipped.

use criterion::{criterion_group, criterion_main, Criterion};
use mongodb::bson::{doc, Document};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::Client;
use ryw::{FenceConfig, ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn bench(c: &mut Criterion) {
    let Ok(uri) = std::env::var("RYW_MONGODB_URI") else {
        eprintln!("skipped: RYW_MONGODB_URI is not set");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(Client::with_uri_str(&uri)).unwrap();
    let coll_name = format!("bench_{}", std::process::id());
    // The raw calls use the same concerns as the service: majority reads and writes.
    let raw = client.database("ryw").collection::<Document>(&coll_name);
    let adapter = MongoAdapter::new();
    let layer =
        ReadYourWritesLayer::new(adapter.documents::<Document>()).fence(FenceConfig::server_wait());
    let service = MongoService::<Document>::new(&client, "ryw", &coll_name);
    let session = Session::new();
    rt.block_on(
        layer
            .layer(service.clone())
            .oneshot(session.request(MongoRequest::insert_one(doc! { "k": 1 }))),
    )
    .unwrap();

    let mut group = c.benchmark_group("mongodb on secantus");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("find_one, raw driver (majority)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = client.start_session().await.unwrap();
                raw.find_one(doc! { "k": 1 })
                    .read_concern(ReadConcern::majority())
                    .session(&mut s)
                    .await
                    .unwrap()
            })
        })
    });
    group.bench_function("find_one, through ryw (server-wait fence)", |b| {
        b.iter(|| {
            rt.block_on(
                layer
                    .layer(service.clone())
                    .oneshot(session.request(MongoRequest::find_one(doc! { "k": 1 }))),
            )
            .unwrap()
        })
    });
    group.bench_function("insert_one, raw driver (w: majority)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = client.start_session().await.unwrap();
                raw.insert_one(doc! { "k": 2 })
                    .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                    .session(&mut s)
                    .await
                    .unwrap()
            })
        })
    });
    group.bench_function("insert_one, through ryw (stamped)", |b| {
        b.iter(|| {
            rt.block_on(
                layer
                    .layer(service.clone())
                    .oneshot(session.request(MongoRequest::insert_one(doc! { "k": 2 }))),
            )
            .unwrap()
        })
    });
    group.finish();
    rt.block_on(async { raw.drop().await }).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
