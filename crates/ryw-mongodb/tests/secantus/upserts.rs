//! Upserts (`update_one`, `update_many`, `replace_one` with `.upsert()`) and `find` options.
//!
//! What an upsert promises: it inserts or updates once. By `_id`, a replay after a lost answer
//! finds the document its first attempt inserted by the write id it carries; a replay that finds
//! neither that document nor one its filter matches inserts nothing and is `Error::Ambiguous`,
//! since its first attempt may have inserted a document that another session deleted since. By
//! any other filter an upsert is never replayed (a first attempt arriving after its replay would
//! insert a second document): a lost answer is `Error::Ambiguous`, applied at most once. The cases that would break it: a filter not by `_id` (a replay with the plain
//! "not yet" filter inserts a second document), an `update_many` (the first attempt's document no
//! longer matches "not yet", so the upsert inserts again), a write concern error after the write
//! applied (the driver's own retry, then the layer's replay in a new session), a delete in
//! between.

use crate::{fresh, layer, uri, LoseNextWriteResponseForTests};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, Collection};
use ryw::{Session, SessionRequest, StampedWrite};
use ryw_mongodb::{MongoError, MongoOutput, MongoRequest, MongoService};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tower::{Layer, Service, ServiceExt};

/// Every kind of upsert, each incrementing `n` (a replacement sets `n: 1`), by `_id` or by
/// another field.
fn upserts(id: &str) -> Vec<(&'static str, MongoRequest<Document>, Document)> {
    let inc = doc! { "$inc": { "n": 1 } };
    vec![
        (
            "update_one by _id",
            MongoRequest::update_one(doc! { "_id": id }, inc.clone()).upsert(),
            doc! { "_id": id },
        ),
        (
            "update_one by another field",
            MongoRequest::update_one(doc! { "email": id }, inc.clone()).upsert(),
            doc! { "email": id },
        ),
        (
            "update_many",
            MongoRequest::update_many(doc! { "tag": id }, inc).upsert(),
            doc! { "tag": id },
        ),
        (
            "replace_one by _id",
            MongoRequest::replace_one(doc! { "_id": id }, doc! { "n": 1 }).upsert(),
            doc! { "_id": id },
        ),
        (
            "replace_one by another field",
            MongoRequest::replace_one(doc! { "email": id }, doc! { "email": id, "n": 1 }).upsert(),
            doc! { "email": id },
        ),
    ]
}

/// Whether the layer replays the upsert `case` of [`upserts`]: by `_id` only.
fn replayable(case: &str) -> bool {
    case.ends_with("by _id")
}

/// Every document `filter` matches.
async fn all(c: &Collection<Document>, filter: &Document) -> Vec<Document> {
    let mut cursor = c.find(filter.clone()).await.unwrap();
    let mut all = Vec::new();
    while cursor.advance().await.unwrap() {
        all.push(cursor.deserialize_current().unwrap());
    }
    all
}

async fn collection(uri: &str) -> (MongoService<Document>, Collection<Document>) {
    let client = Client::with_uri_str(uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &fresh());
    let raw = service.collection().clone();
    (service, raw)
}

#[tokio::test]
async fn an_upsert_inserts_with_the_filters_fields_then_updates() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let mut svc = layer().layer(service);
    let session = Session::new();
    for (case, request, filter) in upserts("a") {
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request.clone()))
            .await
            .unwrap();
        assert!(out.visibility().is_guaranteed(), "{case}");
        let &MongoOutput::Updated {
            matched,
            ref upserted,
            ..
        } = out.get_ref().output()
        else {
            panic!("{case}: {:?}", out.get_ref().output())
        };
        assert_eq!(matched, 0, "{case}");
        let doc = c.find_one(filter.clone()).await.unwrap().expect(case);
        assert_eq!(
            upserted.as_ref(),
            doc.get("_id"),
            "{case}: the inserted _id"
        );
        assert_eq!(doc.get_i32("n"), Ok(1), "{case}");
        let ids = doc.get_array("ryw_write_ids").expect(case);
        assert_eq!(
            ids,
            &vec![Bson::String(out.write_id().unwrap().to_string())],
            "{case}"
        );
        // Again: it matches the document it inserted, and inserts nothing.
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await
            .unwrap();
        let &MongoOutput::Updated {
            matched,
            ref upserted,
            ..
        } = out.get_ref().output()
        else {
            panic!("{case}")
        };
        assert_eq!((matched, upserted), (1, &None), "{case}");
        assert_eq!(
            c.count_documents(filter.clone()).await.unwrap(),
            1,
            "{case}"
        );
        c.delete_many(filter).await.unwrap();
    }
}

#[tokio::test]
async fn an_upsert_whose_answer_is_lost_inserts_once() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let lossy = LoseNextWriteResponseForTests {
        inner: service,
        armed: Arc::new(AtomicUsize::new(0)),
    };
    let mut svc = layer().layer(lossy.clone());
    let session = Session::new();
    for (case, request, filter) in upserts("lost") {
        lossy.armed.store(1, std::sync::atomic::Ordering::Relaxed);
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await;
        if replayable(case) {
            let out = out.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(
                out.get_ref().was_replayed(),
                "{case}: recognised as applied"
            );
        } else {
            let err = out.unwrap_err();
            assert!(err.is_ambiguous(), "{case}: {err}");
        }
        let all = all(&c, &filter).await;
        assert_eq!(all.len(), 1, "{case}: inserted once: {all:?}");
        assert_eq!(all[0].get_i32("n"), Ok(1), "{case}: applied once");
        c.delete_many(filter).await.unwrap();
    }
}

/// A stamped write as the layer would keep it, without sending it.
fn stamped(
    session: &Session,
    request: MongoRequest<Document>,
) -> StampedWrite<MongoRequest<Document>> {
    let keeper = layer().layer(tower::service_fn(|_: MongoRequest<Document>| async {
        Err::<ryw_mongodb::MongoResponse<Document>, MongoError>(MongoError::Invalid(
            "never sent".into(),
        ))
    }));
    let kept = keeper.stamp(&session.request(request)).expect("a write");
    StampedWrite::new(kept.stamp(), kept.request, false)
}

fn replay_of(write: &StampedWrite<MongoRequest<Document>>) -> StampedWrite<MongoRequest<Document>> {
    StampedWrite::new(write.stamp(), write.request.clone(), true)
}

#[tokio::test]
async fn a_replayed_upsert_with_no_trace_of_its_write_inserts_nothing() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let mut svc = layer().layer(service);
    let session = Session::new();
    for (case, request, filter) in upserts("gone") {
        // Sent, applied, its answer lost; another session deletes the document; the replay must
        // not insert it again.
        let write = stamped(&session, request.clone());
        svc.ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(session.clone(), write.clone()))
            .await
            .unwrap();
        c.delete_many(filter.clone()).await.unwrap();
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(
                session.clone(),
                replay_of(&write),
            ))
            .await
            .unwrap_err();
        assert!(err.is_ambiguous(), "{case}: {err}");
        assert_eq!(
            c.count_documents(filter.clone()).await.unwrap(),
            0,
            "{case}"
        );

        // Sent, never applied (its answer lost on the way there): the replay cannot tell it from
        // the case above, and inserts nothing either.
        let write = stamped(&session, request);
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(
                session.clone(),
                replay_of(&write),
            ))
            .await
            .unwrap_err();
        assert!(err.is_ambiguous(), "{case}: {err}");
        assert_eq!(c.count_documents(filter).await.unwrap(), 0, "{case}");
    }
}

#[tokio::test]
async fn a_replayed_upsert_that_never_applied_meets_a_document_inserted_since() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let mut svc = layer().layer(service);
    let session = Session::new();
    for (case, request, filter) in upserts("since") {
        let write = stamped(&session, request);
        let mut theirs = filter.clone();
        theirs.insert("n", 10);
        c.insert_one(theirs).await.unwrap();
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(
                session.clone(),
                replay_of(&write),
            ))
            .await;
        let all_now = all(&c, &filter).await;
        assert_eq!(all_now.len(), 1, "{case}: {all_now:?}");
        if !replayable(case) {
            // Not by `_id`: never replayed. Ambiguous, nothing sent.
            let err = out.unwrap_err();
            assert!(err.is_ambiguous(), "{case}: {err}");
            assert_eq!(all_now[0].get_i32("n"), Ok(10), "{case}");
        } else {
            let out = out.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(!out.get_ref().was_replayed(), "{case}: applied now");
            let expected = if case.starts_with("replace") { 1 } else { 11 };
            assert_eq!(all_now[0].get_i32("n"), Ok(expected), "{case}");
        }
        c.delete_many(filter).await.unwrap();
    }
}

/// The server applies the upsert and answers with a write concern error; the driver does not
/// retry (`retryWrites=false`: its own retry would be recognised by the server within the same
/// session), so the layer replays the write in a new session, where only the write id tells that
/// it applied.
#[tokio::test]
async fn an_upsert_applied_behind_a_write_concern_error_inserts_once() {
    let uri = secantus!();
    let mut options = mongodb::options::ClientOptions::parse(&uri).await.unwrap();
    options.app_name = Some("ryw-upsert-wce".into());
    options.retry_writes = Some(false);
    let client = Client::with_options(options).unwrap();
    let coll = fresh();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    let c = service.collection().clone();
    let mut svc = layer().layer(service);
    let session = Session::new();
    for (case, request, filter) in upserts("wce") {
        client
            .database("admin")
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": { "times": 1 },
                "data": {
                    "failCommands": ["update"],
                    "appName": "ryw-upsert-wce",
                    "writeConcernError": {
                        "code": 64,
                        "errmsg": "waiting for replication timed out",
                        "errorLabels": ["RetryableWriteError"],
                    },
                },
            })
            .await
            .expect("failCommand (SecantusDB with --enable-test-commands)");
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await;
        let all = all(&c, &filter).await;
        assert_eq!(all.len(), 1, "{case}: inserted once: {all:?} ({out:?})");
        assert_eq!(all[0].get_i32("n"), Ok(1), "{case}: applied once");
        if replayable(case) {
            let out = out.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(out.visibility().is_guaranteed(), "{case}");
            assert!(
                out.get_ref().was_replayed(),
                "{case}: the layer's replay found it"
            );
        } else if let Err(err) = out {
            // Not replayed by the layer: the driver's own retry may still have succeeded.
            assert!(err.is_ambiguous(), "{case}: {err}");
        }
        c.delete_many(filter).await.unwrap();
    }
    client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .unwrap();
}

#[tokio::test]
async fn find_options_sort_skip_limit_and_project_a_fenced_read() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let mut svc = layer().layer(service);
    let session = Session::new();
    for n in 1..=5 {
        svc.ready()
            .await
            .unwrap()
            .call(session.request(MongoRequest::insert_one(doc! { "n": n, "thread": 1 })))
            .await
            .unwrap();
    }
    let page = MongoRequest::find(doc! { "thread": 1 })
        .sort(doc! { "n": -1 })
        .skip(1)
        .limit(2)
        .projection(doc! { "_id": 0, "n": 1 });
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(page))
        .await
        .unwrap();
    assert!(out.visibility().is_guaranteed(), "{:?}", out.visibility());
    assert_eq!(
        out.get_ref().documents(),
        [doc! { "n": 4 }, doc! { "n": 3 }],
        "sorted, skipped, limited, projected (without the write ids)"
    );
    let newest = MongoRequest::find_one(doc! { "thread": 1 })
        .sort(doc! { "n": -1 })
        .skip(0)
        .projection(doc! { "_id": 0, "n": 1 });
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(newest))
        .await
        .unwrap();
    assert!(out.visibility().is_guaranteed());
    assert_eq!(out.get_ref().documents(), [doc! { "n": 5 }]);
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 5);
}

#[tokio::test]
async fn an_option_the_operation_does_not_take_is_refused_and_nothing_is_sent() {
    let uri = secantus!();
    let (service, c) = collection(&uri).await;
    let mut svc = layer().layer(service);
    let session = Session::new();
    let refused: Vec<(&str, MongoRequest<Document>)> = vec![
        (
            "limit on an insert",
            MongoRequest::insert_one(doc! { "x": 1 }).limit(3),
        ),
        (
            "upsert on an insert",
            MongoRequest::insert_one(doc! { "x": 1 }).upsert(),
        ),
        (
            "upsert on a delete",
            MongoRequest::delete_many(doc! { "x": 1 }).upsert(),
        ),
        (
            "limit on a find_one",
            MongoRequest::find_one(doc! {}).limit(3),
        ),
        (
            "sort on an update",
            MongoRequest::update_one(doc! { "x": 1 }, doc! { "$set": { "y": 1 } })
                .upsert()
                .sort(doc! { "x": 1 }),
        ),
        ("upsert on a find", MongoRequest::find(doc! {}).upsert()),
    ];
    for (case, request) in refused {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await
            .unwrap_err();
        assert!(
            matches!(err.store_error(), Some(MongoError::Invalid(_))),
            "{case}: {err}"
        );
        assert!(!err.may_have_applied(), "{case}");
    }
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 0);
}
