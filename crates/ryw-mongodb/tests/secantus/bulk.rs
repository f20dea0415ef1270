//! `bulk_write`: the writes in one ordered `bulkWrite` command, each applied once as if sent
//! alone. The cases that would break it: an answer lost after the command applied (a replay of the
//! whole command would insert the `_id`-less documents again and apply the `$inc`s twice), write
//! concern errors after it applied (the driver's retry, then the layer's), a write failing part
//! way (the writes before it applied: not "nothing applied"), a write the bulk does not take.

use crate::{fresh, layer, monitored, uri, LoseNextWriteResponseForTests};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, Collection};
use ryw::Session;
use ryw_mongodb::{MongoError, MongoOutput, MongoRequest, MongoService};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tower::{Layer, Service, ServiceExt};

/// Seven writes of every kind the bulk takes; `n` counts how often each applied.
fn writes() -> Vec<MongoRequest<Document>> {
    vec![
        MongoRequest::insert_one(doc! { "k": "new", "n": 1 }),
        MongoRequest::insert_one(doc! { "_id": "own", "n": 1 }),
        MongoRequest::update_one(doc! { "_id": "a" }, doc! { "$inc": { "n": 1 } }),
        MongoRequest::update_one(doc! { "_id": "u" }, doc! { "$inc": { "n": 1 } }).upsert(),
        MongoRequest::replace_one(doc! { "_id": "r" }, doc! { "n": 1 }).upsert(),
        MongoRequest::delete_one(doc! { "_id": "gone" }),
        MongoRequest::update_many(doc! { "tag": "t" }, doc! { "$inc": { "n": 1 } }),
    ]
}

async fn seeded(c: &Collection<Document>) {
    c.insert_many([
        doc! { "_id": "a", "n": 0 },
        doc! { "_id": "gone" },
        doc! { "_id": "t1", "tag": "t", "n": 0 },
        doc! { "_id": "t2", "tag": "t", "n": 0 },
    ])
    .await
    .unwrap();
}

/// The state the seven writes leave, applied once each.
async fn assert_applied_once(c: &Collection<Document>, context: &str) {
    let n = |filter: Document| {
        let c = c.clone();
        async move {
            let all: Vec<i32> = {
                let mut cursor = c.find(filter).await.unwrap();
                let mut all = Vec::new();
                while cursor.advance().await.unwrap() {
                    all.push(cursor.deserialize_current().unwrap().get_i32("n").unwrap());
                }
                all
            };
            all
        }
    };
    assert_eq!(
        n(doc! { "k": "new" }).await,
        [1],
        "{context}: insert without _id"
    );
    for id in ["own", "a", "u", "r", "t1", "t2"] {
        assert_eq!(n(doc! { "_id": id }).await, [1], "{context}: {id}");
    }
    assert_eq!(c.count_documents(doc! { "_id": "gone" }).await.unwrap(), 0);
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 7, "{context}");
}

fn outputs(output: &MongoOutput<Document>) -> &[MongoOutput<Document>] {
    match output {
        MongoOutput::Bulk(outputs) => outputs,
        other => panic!("not a bulk output: {other:?}"),
    }
}

#[tokio::test]
async fn a_bulk_write_applies_each_write_once_in_one_command() {
    let uri = secantus!();
    let (client, seen) = monitored(&uri, "ryw-bulk-wire").await;
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let c = service.collection().clone();
    seeded(&c).await;
    seen.lock().unwrap().clear();
    let mut svc = layer().layer(service);
    let session = Session::new();
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::bulk_write(writes())))
        .await
        .unwrap();
    let commands: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| c.keys().next().cloned())
        .collect();
    assert_eq!(commands, ["bulkWrite"], "one command");
    assert_eq!(
        seen.lock().unwrap()[0].get_document("writeConcern"),
        Ok(&doc! { "w": "majority" })
    );
    let write_id = out.write_id().unwrap().to_string();
    let outs = outputs(out.get_ref().output());
    assert_eq!(outs.len(), 7);
    assert!(
        matches!(&outs[0], MongoOutput::Inserted(ids) if ids == &[Bson::String(format!("{write_id}/0"))]),
        "{:?}",
        outs[0]
    );
    assert!(matches!(&outs[1], MongoOutput::Inserted(ids) if ids == &[Bson::from("own")]));
    assert!(matches!(
        &outs[2],
        MongoOutput::Updated {
            matched: 1,
            modified: 1,
            upserted: None,
            ..
        }
    ));
    assert!(
        matches!(&outs[3], MongoOutput::Updated { matched: 0, upserted: Some(id), .. } if id == &Bson::from("u")),
        "{:?}",
        outs[3]
    );
    assert!(matches!(
        &outs[4],
        MongoOutput::Updated {
            upserted: Some(_),
            ..
        }
    ));
    assert!(matches!(&outs[5], MongoOutput::Deleted(1)));
    assert!(matches!(
        &outs[6],
        MongoOutput::Updated {
            matched: 2,
            modified: 2,
            ..
        }
    ));
    assert_applied_once(&c, "sent once").await;
    // Each document carries its write's own id, `<write id>/<i>`.
    let a = c.find_one(doc! { "_id": "a" }).await.unwrap().unwrap();
    assert_eq!(
        a.get_array("ryw_write_ids").unwrap(),
        &vec![Bson::String(format!("{write_id}/2"))]
    );
    // The session reads it.
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::find(doc! {})))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(read.get_ref().documents().len(), 7);
}

#[tokio::test]
async fn a_bulk_write_whose_answer_is_lost_applies_each_write_once() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let c = service.collection().clone();
    seeded(&c).await;
    let lossy = LoseNextWriteResponseForTests {
        inner: service,
        armed: Arc::new(AtomicUsize::new(1)),
    };
    let out = layer()
        .layer(lossy)
        .oneshot(Session::new().request(MongoRequest::bulk_write(writes())))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    assert_eq!(outputs(out.get_ref().output()).len(), 7);
    assert_applied_once(&c, "answer lost, replayed").await;
}

/// The server applies the bulk and answers a write concern error twice: the driver's own retry
/// meets it again, and the layer replays the bulk write by write in a new session.
#[tokio::test]
async fn a_bulk_write_behind_write_concern_errors_applies_each_write_once() {
    let uri = secantus!();
    let (client, seen) = monitored(&uri, "ryw-bulk-wce").await;
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let c = service.collection().clone();
    seeded(&c).await;
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 2 },
            "data": {
                "failCommands": ["bulkWrite"],
                "appName": "ryw-bulk-wce",
                "writeConcernError": {
                    "code": 64,
                    "errmsg": "waiting for replication timed out",
                    "errorLabels": ["RetryableWriteError"],
                },
            },
        })
        .await
        .expect("failCommand (SecantusDB with --enable-test-commands)");
    let out = layer()
        .layer(service)
        .oneshot(Session::new().request(MongoRequest::bulk_write(writes())))
        .await;
    let bulks = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.contains_key("bulkWrite"))
        .count();
    assert!(bulks >= 1, "{bulks}");
    assert_applied_once(&c, "write concern errors").await;
    let out = out.unwrap();
    assert!(out.get_ref().was_replayed());
}

#[tokio::test]
async fn a_bulk_write_failing_part_way_says_the_writes_before_it_applied() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let c = service.collection().clone();
    c.insert_one(doc! { "_id": "taken" }).await.unwrap();
    let mut svc = layer().layer(service);
    let session = Session::new();
    let insert = |id: &str| MongoRequest::insert_one(doc! { "_id": id });

    // Stops at the second write: the first applied, the third was never sent.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::bulk_write([
            insert("x1"),
            insert("taken"),
            insert("x2"),
        ])))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert!(err.may_have_applied());
    assert!(err.to_string().contains("write 1"), "{err}");
    assert_eq!(c.count_documents(doc! { "_id": "x1" }).await.unwrap(), 1);
    assert_eq!(c.count_documents(doc! { "_id": "x2" }).await.unwrap(), 0);

    // Stops at the first write: its own error, nothing applied.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::bulk_write([insert("taken"), insert("x3")])))
        .await
        .unwrap_err();
    assert!(
        matches!(err.store_error(), Some(MongoError::DuplicateKey { .. })),
        "{err}"
    );
    assert!(!err.may_have_applied());
    assert_eq!(c.count_documents(doc! { "_id": "x3" }).await.unwrap(), 0);
}

#[tokio::test]
async fn a_bulk_write_of_a_write_it_does_not_take_is_refused_and_nothing_is_sent() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let c = service.collection().clone();
    let mut svc = layer().layer(service);
    let session = Session::new();
    let ok = || MongoRequest::insert_one(doc! { "x": 1 });
    let refused = [
        MongoRequest::bulk_write([ok(), MongoRequest::find(doc! {})]),
        MongoRequest::bulk_write([ok(), MongoRequest::insert_many(vec![doc! {}])]),
        MongoRequest::bulk_write([
            ok(),
            MongoRequest::find_one_and_update(doc! {}, doc! { "$set": { "y": 1 } }),
        ]),
        MongoRequest::bulk_write([ok(), MongoRequest::bulk_write([ok()])]),
        MongoRequest::bulk_write([ok(), MongoRequest::insert_one(doc! {}).limit(1)]),
        // Built from the operation itself, past the constructor's check.
        MongoRequest::from(ryw_mongodb::MongoOperation::BulkWrite {
            writes: vec![ryw_mongodb::MongoOperation::Aggregate { pipeline: vec![] }],
        }),
    ];
    for (i, request) in refused.into_iter().enumerate() {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await
            .unwrap_err();
        assert!(
            matches!(err.store_error(), Some(MongoError::Invalid(_))),
            "{i}: {err}"
        );
        assert!(!err.may_have_applied(), "{i}");
    }
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 0);
    // An empty bulk writes nothing and succeeds.
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::bulk_write([])))
        .await
        .unwrap();
    assert!(outputs(out.get_ref().output()).is_empty());
}
