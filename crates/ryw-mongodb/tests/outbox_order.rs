//! A write that may not be replayed (a MongoDB `delete_one` by a field other than `_id`), made
//! while an earlier write of its session is queued in the outbox, would apply before it (the
//! delete would find nothing, then the replayed insert would create the document the session had
//! deleted): it is refused, typed (`OutboxServiceError::QueuedBefore`).

//! "A write made while an earlier write of its session is queued is deferred behind it, so a
//! session's writes keep their order." A write that may not be replayed (`Replay::Never`, here a
//! MongoDB `delete_one` whose filter is not an `_id` equality) skips the outbox layer's ordering
//! entirely: it is sent at once, overtaking the session's queued insert. The session inserted a
//! document and then deleted it; after the replay, the document exists.
use mongodb::bson::{doc, Document};
use mongodb::Client;
use ryw::{ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_replayable_write_does_not_overtake_the_sessions_queued_write() {
    let Ok(uri) = std::env::var("RYW_MONGODB_URI") else {
        assert!(
            std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
            "RYW_REQUIRE_SERVERS is set but RYW_MONGODB_URI is not"
        );
        eprintln!("skipped: RYW_MONGODB_URI is not set (bash tests/run-all.sh starts SecantusDB)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("adv7-never-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let collection = format!("adv7_never_{}", std::process::id());
    let client = Client::with_uri_str(&uri).await.unwrap();
    let adapter = MongoAdapter::new();
    let service: MongoService<Document> = MongoService::new(&client, "ryw", &collection);
    let ryw = ReadYourWritesLayer::new(adapter.clone().documents()).layer(service);
    let outbox = Arc::new(Outbox::open(dir.join("o.redb"), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(1, Duration::from_secs(3600)));
    let mut svc = OutboxLayer::new(outbox.clone(), adapter.clone().documents())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let session = Session::new();

    // The breaker says the store is down: the insert is deferred (not sent).
    breaker.failed();
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "_id": 1, "k": "a" })))
        .await
        .unwrap();
    assert!(matches!(out, Written::Deferred(_)), "{out:?}");

    // The same session then deletes it (a delete by another field: `Replay::Never`).
    let del = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::delete_one(doc! { "k": "a" })))
        .await;
    assert!(
        matches!(
            del,
            Err(ryw_outbox::OutboxServiceError::QueuedBefore { .. })
        ),
        "refused, typed: {del:?}"
    );

    // The store answers again; the outbox is drained.
    breaker.succeeded();
    tokio::time::timeout(
        Duration::from_secs(60),
        Replayer::new(outbox.clone(), ryw)
            .breaker(breaker)
            .drain_until_empty(Duration::from_millis(100)),
    )
    .await
    .unwrap()
    .unwrap();
    let left = client
        .database("ryw")
        .collection::<Document>(&collection)
        .find_one(doc! { "k": "a" })
        .await
        .unwrap();
    let _ = client
        .database("ryw")
        .collection::<Document>(&collection)
        .drop()
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    // Either the delete was refused (it could not keep its place behind the insert), or it applied
    // after the insert; never "deleted" answered OK and the document there.
    if del.is_ok() {
        assert!(
            left.is_none(),
            "the session inserted then deleted the document (both answered OK/deferred), \
             yet after the replay it exists: {left:?}"
        );
    }
}
