//! The MongoDB adapter against SecantusDB, a MongoDB-wire-compatible single-node replica set
//! started by `tests/run-all.sh` (`RYW_MONGODB_URI`). Without it every test prints that it
//! skipped. SecantusDB has no secondaries and does not make reads wait: what these tests prove is
//! what goes on the wire (asserted with the driver's command monitoring) and what comes back;
//! the waiting and secondary paths are for a real replica set (see docs/mongodb.md and docs/testing.md).

use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use ryw::{FenceConfig, ReadYourWritesLayer, Session};
use ryw_mongodb::{
    timestamp_of, version_of, MongoAdapter, MongoError, MongoOutput, MongoRequest, MongoResponse,
    MongoService,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

mod operation_time;
mod principal;
mod records;
mod wire_proxy;

fn uri() -> Option<String> {
    match std::env::var("RYW_MONGODB_URI") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_MONGODB_URI is not"
            );
            eprintln!(
                "skipped: RYW_MONGODB_URI is not set (bash tests/run-all.sh starts SecantusDB)"
            );
            None
        }
    }
}

/// A client whose started commands are recorded.
async fn monitored(uri: &str, app_name: &str) -> (Client, Arc<Mutex<Vec<Document>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut options = ClientOptions::parse(uri).await.unwrap();
    options.app_name = Some(app_name.to_owned());
    options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        if let CommandEvent::Started(s) = ev {
            sink.lock().unwrap().push(s.command.clone());
        }
    }));
    (Client::with_options(options).unwrap(), seen)
}

static COLLECTIONS: AtomicUsize = AtomicUsize::new(0);

fn fresh() -> String {
    format!(
        "c{}_{}",
        std::process::id(),
        COLLECTIONS.fetch_add(1, Ordering::Relaxed)
    )
}

macro_rules! secantus {
    () => {
        match uri() {
            Some(u) => u,
            None => return,
        }
    };
}

mod bulk;
mod upserts;

fn layer() -> ReadYourWritesLayer<MongoAdapter> {
    ReadYourWritesLayer::new(MongoAdapter::new().documents()).fence(FenceConfig::server_wait())
}

#[tokio::test]
async fn the_token_carries_operation_time_and_signed_cluster_time() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let adapter = MongoAdapter::new();
    let coll = fresh();
    let mut svc = layer().layer(MongoService::<Document>::new(&client, "ryw", &coll));
    let session = Session::new();
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "title": "hello" })))
        .await
        .unwrap();
    let op_time = out.get_ref().operation_time().expect("operationTime");
    assert!(out.get_ref().cluster_time().is_some());

    let token = session.token().encode().unwrap();
    let state = Session::from_encoded(&token).unwrap().snapshot();
    assert_eq!(
        state.vector().get(adapter.scope()),
        Some(version_of(op_time))
    );
    let ctx = state
        .context(ryw::StoreId::new(1))
        .expect("the cluster time travels");
    let doc = Document::from_reader(&*ctx.bytes).unwrap();
    assert!(doc.get_timestamp("clusterTime").is_ok());
    assert!(
        doc.get_document("signature").is_ok(),
        "kept whole, signature included"
    );
}

#[tokio::test]
async fn a_fresh_client_given_only_the_token_sends_after_cluster_time() {
    let uri = secantus!();
    let coll = fresh();
    let writer = Client::with_uri_str(&uri).await.unwrap();
    let session = Session::new();
    let out = layer()
        .layer(MongoService::<Document>::new(&writer, "ryw", &coll))
        .oneshot(session.request(MongoRequest::insert_one(doc! { "n": 1 })))
        .await
        .unwrap();
    let written = out.get_ref().operation_time().unwrap();
    let token = session.token().encode().unwrap();

    // Another process: a new client, a session rebuilt from the token alone.
    let (reader, seen) = monitored(&uri, "ryw-reader").await;
    let elsewhere = Session::from_encoded(&token).unwrap();
    let read = layer()
        .layer(MongoService::<Document>::new(&reader, "ryw", &coll))
        .oneshot(elsewhere.request(MongoRequest::find(doc! { "n": 1 })))
        .await
        .unwrap();
    assert_eq!(read.get_ref().documents().len(), 1);
    assert!(read.visibility().is_guaranteed());

    let commands = seen.lock().unwrap();
    let find = commands
        .iter()
        .find(|c| c.contains_key("find"))
        .expect("a find went out");
    let after = find
        .get_document("readConcern")
        .and_then(|rc| rc.get_timestamp("afterClusterTime"))
        .expect("readConcern.afterClusterTime on the wire");
    assert!(
        version_of(after) >= version_of(written),
        "{after:?} < {written:?}"
    );
    assert_eq!(
        find.get_document("readConcern")
            .unwrap()
            .get_str("level")
            .unwrap(),
        "majority"
    );
    let gossip = find
        .get_document("$clusterTime")
        .expect("$clusterTime gossiped");
    assert!(version_of(gossip.get_timestamp("clusterTime").unwrap()) >= version_of(written));
    let _ = timestamp_of(version_of(written));
}

/// The service is built from the client alone: the layer attaches its adapter's configuration to
/// every request. A request sent straight to the service, without the layer, goes out as it is:
/// no write id, no session times, the client's read preference.
#[tokio::test]
async fn the_service_takes_its_configuration_from_the_layer() {
    let uri = secantus!();
    let (client, seen) = monitored(&uri, "ryw-bare").await;
    let coll = fresh();
    let bare = MongoService::new(&client, "ryw", &coll);
    let out = bare
        .clone()
        .oneshot(MongoRequest::insert_one(doc! { "k": "plain" }))
        .await
        .unwrap();
    let MongoOutput::Inserted(ids) = out.output() else {
        panic!("{out:?}")
    };
    assert!(
        matches!(ids[0], Bson::ObjectId(_)),
        "the driver's _id: {ids:?}"
    );
    let read = bare
        .clone()
        .oneshot(MongoRequest::find(doc! { "k": "plain" }))
        .await
        .unwrap();
    assert_eq!(read.documents().len(), 1);
    assert!(
        !read.documents()[0].contains_key("ryw_write_ids"),
        "no write id without the layer"
    );

    // The same service under the layer: its writes carry their write id, its reads the adapter's
    // read preference and the session's operation time.
    let session = Session::new();
    let mut layered = layer().layer(bare);
    let out = layered
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "k": "stamped" })))
        .await
        .unwrap();
    let MongoOutput::Inserted(ids) = out.get_ref().output() else {
        panic!("{out:?}")
    };
    assert_eq!(ids[0], Bson::String(out.write_id().unwrap().to_string()));
    layered
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::find(doc! { "k": "stamped" })))
        .await
        .unwrap();

    let commands = seen.lock().unwrap();
    let finds: Vec<&Document> = commands
        .iter()
        .filter(|c| c.get_str("find") == Ok(coll.as_str()))
        .collect();
    assert_eq!(finds.len(), 2, "{finds:?}");
    let waits = |find: &Document| {
        find.get_document("readConcern")
            .is_ok_and(|rc| rc.contains_key("afterClusterTime"))
    };
    // Without the layer: the client's read preference (the primary, not on the wire).
    assert!(!finds[0].contains_key("$readPreference"), "{:?}", finds[0]);
    assert!(!waits(finds[0]), "{:?}", finds[0]);
    // Through the layer: the adapter's.
    let mode = finds[1]
        .get_document("$readPreference")
        .and_then(|p| p.get_str("mode"));
    assert_eq!(mode, Ok("secondaryPreferred"), "{:?}", finds[1]);
    assert!(waits(finds[1]), "{:?}", finds[1]);
}

type Fut = Pin<Box<dyn Future<Output = Result<MongoResponse<Document>, MongoError>> + Send>>;

/// TEST ONLY. Loses the response of the next write after the server applied it.
#[derive(Clone)]
struct LoseNextWriteResponseForTests<S> {
    inner: S,
    armed: Arc<AtomicUsize>,
}

impl<S> Service<MongoRequest<Document>> for LoseNextWriteResponseForTests<S>
where
    S: Service<
        MongoRequest<Document>,
        Response = MongoResponse<Document>,
        Error = MongoError,
        Future = Fut,
    >,
{
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = Fut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: MongoRequest<Document>) -> Fut {
        let armed = self.armed.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await?;
            if armed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(MongoError::Network(
                    "response lost by the test layer".into(),
                ));
            }
            Ok(out)
        })
    }
}

#[tokio::test]
async fn writes_replayed_from_another_attempt_apply_once() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    let lossy = LoseNextWriteResponseForTests {
        inner: service.clone(),
        armed: Arc::new(AtomicUsize::new(1)),
    };
    let mut svc = layer().layer(lossy.clone());
    let session = Session::new();

    // insert_one without _id: the retry meets its own deterministic _id.
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "k": "a" })))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    assert_eq!(
        service
            .collection()
            .count_documents(doc! { "k": "a" })
            .await
            .unwrap(),
        1
    );
    let MongoOutput::Inserted(ids) = out.get_ref().output() else {
        panic!()
    };
    assert_eq!(ids[0], Bson::String(out.write_id().unwrap().to_string()));

    // update_one with $inc: the retry excludes the document it already changed.
    lossy.armed.store(1, Ordering::Relaxed);
    let bump = MongoRequest::update_one(doc! { "k": "a" }, doc! { "$inc": { "hits": 1 } });
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(bump))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    let d = service
        .collection()
        .find_one(doc! { "k": "a" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("hits").unwrap(), 1, "applied once");
}

#[tokio::test]
async fn a_retryable_write_interrupted_by_fail_command_lands_once() {
    let uri = secantus!();
    // The fail point is scoped to this client: tests run in parallel on one server.
    let (client, seen) = monitored(&uri, "ryw-failpoint-test").await;
    let coll = fresh();
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": {
                "failCommands": ["insert"],
                "appName": "ryw-failpoint-test",
                "errorCode": 262,
                "errorLabels": ["RetryableWriteError"],
            },
        })
        .await
        .expect("failCommand (SecantusDB with --enable-test-commands)");
    let out = layer()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .oneshot(Session::new().request(MongoRequest::insert_one(doc! { "once": true })))
        .await
        .unwrap();
    let attempts = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.get_str("insert").is_ok())
        .count();
    assert!(
        attempts >= 2,
        "the fail point interrupted the first attempt ({attempts} inserts sent)"
    );
    assert!(out.visibility().is_guaranteed());
    let n = client
        .database("ryw")
        .collection::<Document>(&coll)
        .count_documents(doc! { "once": true })
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn errors_are_typed() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let mut svc = layer().layer(MongoService::<Document>::new(&client, "ryw", &coll));
    let session = Session::new();

    let no_operators = MongoRequest::update_one(doc! {}, doc! { "plain": 1 });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(no_operators))
        .await
        .unwrap_err();
    assert!(err.store_error().unwrap().is_invalid(), "{err:?}");

    let first = MongoRequest::insert_one(doc! { "_id": 7 });
    svc.ready()
        .await
        .unwrap()
        .call(session.request(first))
        .await
        .unwrap();
    let again = MongoRequest::insert_one(doc! { "_id": 7 });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(again))
        .await
        .unwrap_err();
    assert!(err.store_error().unwrap().is_duplicate_key(), "{err:?}");
    assert!(!err.is_transient());
}

type Layered = ryw::ReadYourWrites<MongoService<Document>, MongoAdapter>;

/// One continuation of a token: its own client (an app instance), a layered service.
async fn instance(uri: &str, coll: &str) -> (Layered, MongoService<Document>) {
    let client = Client::with_uri_str(uri).await.unwrap();
    let raw = MongoService::<Document>::new(&client, "ryw", coll);
    (layer().layer(raw.clone()), raw)
}

#[tokio::test]
async fn two_continuations_of_one_token_lose_no_acknowledged_write() {
    // The reproduction: a token continued twice at once (two instances, a lost response, a second
    // tab), each continuation running every write operation on the same documents. Before write
    // ids had lanes, both stamped the same ids and one side's writes were reported as replays of
    // the other's: acknowledged, never applied.
    let uri = secantus!();
    let coll = fresh();
    let (a, raw) = instance(&uri, &coll).await;
    let (b, _) = instance(&uri, &coll).await;
    raw.collection()
        .insert_many([
            doc! { "_id": "counter", "n": 0, "log": [] },
            doc! { "_id": "replaced", "v": "none" },
            doc! { "_id": "m1", "grp": 1, "m": 0 },
            doc! { "_id": "m2", "grp": 1, "m": 0 },
        ])
        .await
        .unwrap();
    let rounds = 5;
    let mut increments = 0;
    let mut many_increments = 0;
    let mut expected_log = Vec::new();
    let mut expected_ids = Vec::new();
    for round in 0..rounds {
        let origin = Session::new();
        let mut first = a.clone();
        first
            .ready()
            .await
            .unwrap()
            .call(origin.request(MongoRequest::insert_one(doc! { "origin": round })))
            .await
            .unwrap();
        let token = origin.token().encode().unwrap();
        let run = |svc: Layered, who: &'static str| {
            let token = token.clone();
            async move {
                let mut svc = svc;
                let session = Session::from_encoded(&token).unwrap();
                let tag = format!("{who}{round}");
                let requests = vec![
                    MongoRequest::update_one(
                        doc! { "_id": "counter" },
                        doc! { "$inc": { "n": 1 }, "$push": { "log": &tag } },
                    ),
                    MongoRequest::insert_one(doc! { "tag": &tag }),
                    MongoRequest::insert_many(vec![
                        doc! { "tag": format!("{tag}/0") },
                        doc! { "tag": format!("{tag}/1") },
                    ]),
                    MongoRequest::find_one_and_update(
                        doc! { "_id": "counter" },
                        doc! { "$inc": { "n": 1 } },
                    ),
                    MongoRequest::update_many(doc! { "grp": 1 }, doc! { "$inc": { "m": 1 } }),
                    MongoRequest::replace_one(doc! { "_id": "replaced" }, doc! { "v": &tag }),
                ];
                let mut outs = Vec::new();
                for r in requests {
                    let out = svc
                        .ready()
                        .await
                        .unwrap()
                        .call(session.request(r))
                        .await
                        .unwrap();
                    outs.push(out);
                }
                (tag, outs)
            }
        };
        let ((ta, oa), (tb, ob)) = tokio::join!(run(a.clone(), "a"), run(b.clone(), "b"));
        for (tag, outs) in [(ta, oa), (tb, ob)] {
            for out in &outs {
                assert!(
                    !out.get_ref().was_replayed(),
                    "{tag}: a first attempt reported as a replay: {:?}",
                    out.get_ref().output()
                );
            }
            let MongoOutput::Document(Some(d)) = outs[3].get_ref().output() else {
                panic!("{tag}: find_one_and_update found nothing")
            };
            assert_eq!(d.get_str("_id").unwrap(), "counter");
            let &MongoOutput::Updated { modified, .. } = outs[4].get_ref().output() else {
                panic!()
            };
            assert_eq!(modified, 2, "{tag}: update_many");
            let &MongoOutput::Updated { modified, .. } = outs[5].get_ref().output() else {
                panic!()
            };
            assert_eq!(modified, 1, "{tag}: replace_one");
            increments += 2;
            many_increments += 1;
            expected_log.push(tag.clone());
            expected_ids.extend([tag.clone(), format!("{tag}/0"), format!("{tag}/1")]);
        }
    }
    let c = raw.collection();
    let counter = c
        .find_one(doc! { "_id": "counter" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counter.get_i32("n").unwrap(),
        increments,
        "every acknowledged $inc applied once"
    );
    let mut log: Vec<String> = counter
        .get_array("log")
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    log.sort();
    expected_log.sort();
    assert_eq!(log, expected_log);
    for tag in &expected_ids {
        assert_eq!(
            c.count_documents(doc! { "tag": tag }).await.unwrap(),
            1,
            "{tag}"
        );
    }
    for id in ["m1", "m2"] {
        let d = c.find_one(doc! { "_id": id }).await.unwrap().unwrap();
        assert_eq!(d.get_i32("m").unwrap(), many_increments, "{id}");
    }
    let ids = counter.get_array("ryw_write_ids").unwrap();
    assert!(ids.len() <= ryw_mongodb::RECENT_WRITE_IDS);
}

/// TEST ONLY. After the server applied the next write, another session updates the same document,
/// then the write's response is lost: the layer retries.
#[derive(Clone)]
struct InterleaveThenLoseForTests {
    inner: MongoService<Document>,
    other: Layered,
    armed: Arc<AtomicUsize>,
}

impl Service<MongoRequest<Document>> for InterleaveThenLoseForTests {
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = Fut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: MongoRequest<Document>) -> Fut {
        let armed = self.armed.clone();
        let other = self.other.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await?;
            if armed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let stranger = Session::new();
                let update = MongoRequest::update_one(
                    doc! { "_id": "doc" },
                    doc! { "$inc": { "n": 100 }, "$push": { "log": "other" } },
                );
                other
                    .oneshot(stranger.request(update))
                    .await
                    .expect("the other session's update");
                return Err(MongoError::Network(
                    "response lost by the test layer".into(),
                ));
            }
            Ok(out)
        })
    }
}

#[tokio::test]
async fn a_retry_after_another_sessions_update_applies_once() {
    // Before the bounded list of write ids, the document kept only the last writer's id: the
    // retry no longer recognised itself and applied again (`n` 102, log [mine, other, mine]).
    let uri = secantus!();
    let coll = fresh();
    let (other, raw) = instance(&uri, &coll).await;
    raw.collection()
        .insert_one(doc! { "_id": "doc", "n": 0, "log": [] })
        .await
        .unwrap();
    let armed = Arc::new(AtomicUsize::new(1));
    let mut svc = layer().layer(InterleaveThenLoseForTests {
        inner: raw.clone(),
        other,
        armed: armed.clone(),
    });
    let session = Session::new();
    for (update, log) in [
        (
            doc! { "$inc": { "n": 1 }, "$push": { "log": "mine" } },
            "mine",
        ),
        (
            doc! { "$inc": { "n": 1 }, "$push": { "log": "again" } },
            "again",
        ),
    ] {
        armed.store(1, Ordering::Relaxed);
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(MongoRequest::update_one(doc! { "_id": "doc" }, update)))
            .await
            .unwrap();
        assert!(out.get_ref().was_replayed(), "{log}: recognised as applied");
        assert_eq!(out.attempts(), 2);
    }
    // find_one_and_update too: the retry returns the document, applied once.
    armed.store(1, Ordering::Relaxed);
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::find_one_and_update(
            doc! { "_id": "doc" },
            doc! { "$inc": { "n": 1 }, "$push": { "log": "found" } },
        )))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    let d = raw
        .collection()
        .find_one(doc! { "_id": "doc" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.get_i32("n").unwrap(),
        303,
        "three updates once, three others"
    );
    let log: Vec<&str> = d
        .get_array("log")
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(log, ["mine", "other", "again", "other", "found", "other"]);
}

#[tokio::test]
async fn a_replay_never_changes_a_second_document_matching_its_filter() {
    // The case: with a filter several documents match ("claim the next
    // pending job"), the replay after a lost response skipped the document its first attempt
    // changed and changed another one: two jobs claimed, two documents deleted.
    let uri = secantus!();
    let coll = fresh();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    let lossy = LoseNextWriteResponseForTests {
        inner: service.clone(),
        armed: Arc::new(AtomicUsize::new(0)),
    };
    let mut svc = layer().layer(lossy.clone());
    let session = Session::new();
    let c = service.collection();
    c.insert_many((0..8).map(|i| doc! { "job": i, "status": "pending" }))
        .await
        .unwrap();
    let pending = || async {
        c.count_documents(doc! { "status": "pending" })
            .await
            .unwrap()
    };
    let claims = [
        MongoRequest::update_one(
            doc! { "status": "pending" },
            doc! { "$set": { "status": "claimed" } },
        ),
        MongoRequest::find_one_and_update(
            doc! { "status": "pending" },
            doc! { "$set": { "status": "claimed" } },
        ),
        MongoRequest::replace_one(doc! { "status": "pending" }, doc! { "status": "replaced" }),
    ];
    let mut left = 8;
    for claim in claims {
        lossy.armed.store(1, Ordering::Relaxed);
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(claim))
            .await
            .unwrap();
        assert!(out.get_ref().was_replayed());
        left -= 1;
        assert_eq!(pending().await, left, "{:?}", out.get_ref().output());
    }
    // A delete by a filter other than `_id` keeps no trace: ambiguous, not replayed.
    lossy.armed.store(1, Ordering::Relaxed);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::delete_one(doc! { "status": "pending" })))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(pending().await, left - 1, "deleted once");
    // By `_id` alone it is replayed: the document is gone either way, nothing is claimed.
    let id = c
        .find_one(doc! { "status": "pending" })
        .await
        .unwrap()
        .unwrap();
    let id = id.get("_id").unwrap().clone();
    lossy.armed.store(1, Ordering::Relaxed);
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::delete_one(doc! { "_id": id.clone() })))
        .await
        .unwrap();
    assert_eq!(out.attempts(), 2);
    assert!(!out.get_ref().was_replayed());
    assert_eq!(c.count_documents(doc! { "_id": id }).await.unwrap(), 0);
}

#[tokio::test]
async fn a_replay_with_no_trace_of_its_write_is_ambiguous_never_applied_elsewhere() {
    // The case: the update claimed job 1, its response was lost,
    // another session deleted job 1, and the replay (finding no document with its id) claimed
    // job 2. Likewise an insert with the caller's own `_id` whose replay meets the first
    // attempt's document, and a conditional delete whose replay finds the document gone.
    let uri = secantus!();
    let coll = fresh();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    let c = service.collection();
    c.insert_many((1..=3).map(|i| doc! { "_id": i, "status": "pending" }))
        .await
        .unwrap();
    let session = Session::new();
    let claim = MongoRequest::update_one(
        doc! { "status": "pending" },
        doc! { "$set": { "status": "claimed", "n": 0 } },
    );
    let lossy = LoseNextWriteResponseForTests {
        inner: service.clone(),
        armed: Arc::new(AtomicUsize::new(1)),
    };
    // First attempt lands on job 1, response lost; job 1 is then deleted by someone else.
    let deleter = c.clone();
    let svc = layer().layer(DeleteAfterLoss {
        inner: lossy,
        coll: deleter,
    });
    let err = svc.oneshot(session.request(claim)).await.unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(
        c.count_documents(doc! { "status": "pending" })
            .await
            .unwrap(),
        2,
        "no second job claimed"
    );

    // An insert with the caller's own `_id`, response lost: the replay meets the first
    // attempt's document, which carries the write id, and is recognised as applied (before the
    // document carried it, this was reported ambiguous; never a permanent error, never twice).
    let lossy = LoseNextWriteResponseForTests {
        inner: service.clone(),
        armed: Arc::new(AtomicUsize::new(1)),
    };
    let out = layer()
        .layer(lossy)
        .oneshot(session.request(MongoRequest::insert_one(doc! { "_id": "post-7" })))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    assert_eq!(
        c.count_documents(doc! { "_id": "post-7" }).await.unwrap(),
        1
    );

    // A conditional delete by `_id` that applied, response lost: ambiguous, not `Deleted(0)`.
    let lossy = LoseNextWriteResponseForTests {
        inner: service.clone(),
        armed: Arc::new(AtomicUsize::new(1)),
    };
    let err = layer()
        .layer(lossy)
        .oneshot(session.request(MongoRequest::delete_one(
            doc! { "_id": 2, "status": "pending" },
        )))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(c.count_documents(doc! { "_id": 2 }).await.unwrap(), 0);
}

/// TEST ONLY. When the inner service fails (a lost response), someone else deletes every
/// claimed document before the error reaches the layer.
#[derive(Clone)]
struct DeleteAfterLoss {
    inner: LoseNextWriteResponseForTests<MongoService<Document>>,
    coll: mongodb::Collection<Document>,
}

impl Service<MongoRequest<Document>> for DeleteAfterLoss {
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = Fut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: MongoRequest<Document>) -> Fut {
        let fut = self.inner.call(req);
        let coll = self.coll.clone();
        Box::pin(async move {
            let out = fut.await;
            if out.is_err() {
                coll.delete_many(doc! { "status": "claimed" })
                    .await
                    .unwrap();
            }
            out
        })
    }
}

#[tokio::test]
async fn revocation_is_shared_by_every_instance() {
    // Two instances, each with its own client, sharing the application's own collection.
    use ryw::revocation::{OutagePolicy, SharedRevocationList};
    use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
    use ryw_mongodb::MongoRevocations;
    use std::time::{Duration, Instant};

    let uri = secantus!();
    let coll = fresh();
    let (client_a, client_b) = (
        Client::with_uri_str(&uri).await.unwrap(),
        Client::with_uri_str(&uri).await.unwrap(),
    );
    let backend_a = MongoRevocations::new(&client_a, "ryw", &coll);
    backend_a.ensure_ttl_index().await.unwrap();
    let backend_b = MongoRevocations::new(&client_b, "ryw", &coll);
    let every = Duration::from_millis(300);
    let list = |backend: MongoRevocations| {
        Arc::new(
            SharedRevocationList::new(Arc::new(backend))
                .refresh_every(every)
                .token_ttl(Duration::from_secs(3600), Duration::from_secs(60)),
        )
    };
    let (list_a, list_b) = (list(backend_a), list(backend_b));
    list_a.refresh().await.unwrap();
    list_b.refresh().await.unwrap();
    let authority = |list: Arc<SharedRevocationList>| {
        TokenAuthority::new(KeyRing::new(SigningKey::new(1, [6u8; 32]).unwrap()))
            .token_ttl(Duration::from_secs(3600))
            .revocation_list(list)
    };
    let (a, b) = (authority(list_a.clone()), authority(list_b.clone()));
    let refresher = tokio::spawn(list_b.clone().run_refresher());

    let victim = Session::new();
    let token = a.issue(&victim.snapshot(), None).unwrap();
    assert!(b.verify(&token, None).is_ok());
    list_a.revoke_session(victim.id()).await.unwrap();
    assert!(
        a.verify(&token, None).unwrap_err().is_revoked(),
        "at once at A"
    );
    let revoked_at = Instant::now();
    while b.verify(&token, None).is_ok() {
        assert!(
            revoked_at.elapsed() < every + Duration::from_secs(2),
            "B still accepts a session revoked {:?} ago",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation reached B after {:?}", revoked_at.elapsed());

    // The epoch survives a refresh at B; a later epoch never lowers it.
    let first = a.issue(&Session::new().snapshot(), None).unwrap();
    let started = b.verify(&first, None).unwrap().state().started_at();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let refreshed = b
        .issue(b.verify(&first, None).unwrap().state(), None)
        .unwrap();
    list_a.revoke_started_before(started + 1).await.unwrap();
    list_a.revoke_started_before(started - 100).await.unwrap();
    list_b.refresh().await.unwrap();
    assert!(b.verify(&refreshed, None).unwrap_err().is_revoked());
    refresher.abort();

    // The server unreachable: fail closed past the bound, fail open goes on.
    let options = mongodb::options::ClientOptions::builder()
        .hosts(vec![mongodb::options::ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: Some(9),
        }])
        .server_selection_timeout(Duration::from_millis(300))
        .build();
    let down = Client::with_options(options).unwrap();
    let closed = Arc::new(
        SharedRevocationList::new(Arc::new(MongoRevocations::new(&down, "ryw", &coll)))
            .on_outage(OutagePolicy::FailClosed, Duration::ZERO),
    );
    assert!(closed.refresh().await.is_err());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = a.issue(&Session::new().snapshot(), None).unwrap();
    assert!(authority(closed)
        .verify(&fresh, None)
        .unwrap_err()
        .is_revoked());
    let open = Arc::new(
        SharedRevocationList::new(Arc::new(MongoRevocations::new(&down, "ryw", &coll)))
            .on_outage(OutagePolicy::FailOpen, Duration::ZERO),
    );
    assert!(authority(open).verify(&fresh, None).is_ok());
}

/// A tower `TimeoutLayer` under the session layer: the first write's response is held back after
/// SecantusDB applied it, the timeout fires, and the layer replays the write under its write id.
#[tokio::test]
async fn a_write_timed_out_by_middleware_is_replayed_never_duplicated() {
    use ryw::error::MiddlewareError;
    use ryw::retry::{Backoff, RetryPolicy};
    use std::time::Duration;

    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    let layered = |retries: u32| {
        tower::ServiceBuilder::new()
            .layer(
                layer().retry(
                    RetryPolicy::new()
                        .max_retries(retries)
                        .backoff(Backoff::new(
                            Duration::from_millis(1),
                            Duration::from_millis(5),
                        )),
                ),
            )
            .timeout(Duration::from_millis(300))
            .layer(ryw_sim::fault::HoldResponses::first(
                1,
                Duration::from_secs(2),
            ))
            .service(service.clone())
    };
    let session = Session::new();
    service
        .collection()
        .insert_one(doc! { "_id": "c", "hits": 0 })
        .await
        .unwrap();
    let bump = || MongoRequest::update_one(doc! { "_id": "c" }, doc! { "$inc": { "hits": 1 } });
    let hits = || async {
        service
            .collection()
            .find_one(doc! { "_id": "c" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("hits")
            .unwrap()
    };

    let out = layered(3)
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .expect("replayed, not failed");
    assert!(
        out.get_ref().was_replayed(),
        "the replay found its own write id"
    );
    assert_eq!(out.attempts(), 2);
    assert_eq!(hits().await, 1, "applied once");

    // With no retry left, the timeout is a typed, transient error, and the write applied once.
    let err = layered(0)
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(
            err.store_error(),
            Some(MongoError::Middleware(MiddlewareError::TimedOut))
        ),
        "{err:?}"
    );
    assert_eq!(hits().await, 2);
}

/// The case: `delete_one` by `{_id: {$in: [..]}}` was taken for a
/// delete by `_id` and replayed after a timeout, deleting a second document.
#[tokio::test]
async fn a_delete_one_by_an_id_operator_is_never_replayed() {
    use std::time::Duration;

    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    service
        .collection()
        .insert_many(vec![
            doc! { "_id": "a" },
            doc! { "_id": "b" },
            doc! { "_id": "c" },
        ])
        .await
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer())
        .timeout(Duration::from_millis(300))
        .layer(ryw_sim::fault::HoldResponses::first(
            1,
            Duration::from_secs(2),
        ))
        .service(service.clone());
    let delete = MongoRequest::delete_one(doc! { "_id": { "$in": ["a", "b"] } });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(delete))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(
        service.collection().count_documents(doc! {}).await.unwrap(),
        2,
        "one delete_one deletes one document"
    );
}

/// Fails the first call without sending it (as load shedding would), passes the others on.
#[derive(Clone)]
struct ShedFirstForTests<S> {
    inner: S,
    shed: Arc<AtomicUsize>,
}

impl<S> Service<MongoRequest<Document>> for ShedFirstForTests<S>
where
    S: Service<
        MongoRequest<Document>,
        Response = MongoResponse<Document>,
        Error = MongoError,
        Future = Fut,
    >,
{
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = Fut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: MongoRequest<Document>) -> Fut {
        if self
            .shed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let shed: ryw::error::SharedError = Arc::new(std::io::Error::other("shed"));
            return Box::pin(async move {
                Err(MongoError::Middleware(
                    ryw::error::MiddlewareError::NotSent(shed),
                ))
            });
        }
        self.inner.call(req)
    }
}

/// The case: a hedge (a clone of the request in flight at once)
/// claiming "one pending job" by `{_id: {$in: [..]}}`, whose original was shed and retried,
/// claimed two jobs.
#[tokio::test]
async fn a_hedged_claim_never_claims_two_jobs() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let service = MongoService::<Document>::new(&client, "ryw", &coll);
    for by_id in [true, false] {
        service.collection().delete_many(doc! {}).await.unwrap();
        service
            .collection()
            .insert_many(vec![
                doc! { "_id": "j1", "status": "pending" },
                doc! { "_id": "j2", "status": "pending" },
            ])
            .await
            .unwrap();
        let mut svc = layer().layer(ShedFirstForTests {
            inner: service.clone(),
            shed: Arc::new(AtomicUsize::new(1)),
        });
        let filter = if by_id {
            doc! { "_id": { "$in": ["j1", "j2"] }, "status": "pending" }
        } else {
            doc! { "status": "pending" }
        };
        let claim = MongoRequest::update_one(filter, doc! { "$set": { "status": "claimed" } });
        let original = Session::new().request(claim);
        let hedge = original.clone();
        let a = svc.ready().await.unwrap().call(original);
        let b = svc.ready().await.unwrap().call(hedge);
        let (a, b) = tokio::join!(a, b);
        let claimed = service
            .collection()
            .count_documents(doc! { "status": "claimed" })
            .await
            .unwrap();
        assert!(
            claimed <= 1,
            "by_id {by_id}: {claimed} jobs claimed: {a:?} {b:?}"
        );
        let succeeded = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert!(
            claimed == 1 || succeeded == 0,
            "by_id {by_id}: a success claims the job: {a:?} {b:?}"
        );
    }
}

/// The service reports every MongoDB call: `db.client.operation.duration` with the semantic
/// conventions' attributes, read back through the OpenTelemetry SDK's in-memory exporter on a
/// local provider.
#[tokio::test]
async fn db_client_operation_duration_is_recorded_per_call() {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let observer = Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
    let service = MongoService::<Document>::new(&client, "ryw", &coll).observer(observer.clone());
    let mut svc = layer().observer(observer).layer(service);
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "_id": "m" })))
        .await
        .unwrap();
    // The same _id again: a duplicate key.
    assert!(svc
        .ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::insert_one(doc! { "_id": "m", "x": 1 })))
        .await
        .is_err());
    svc.ready()
        .await
        .unwrap()
        .call(session.request(MongoRequest::find_one(doc! { "_id": "m" })))
        .await
        .unwrap();

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().unwrap();
    let seen: Vec<(String, u64)> =
        ryw_otel::testing::data_points(metrics, "db.client.operation.duration")
            .into_iter()
            .map(|(attrs, count)| (attrs.join(" "), count))
            .collect();
    let mut expected = vec![
        (format!("db.collection.name={coll} db.namespace=ryw db.operation.name=find_one db.system.name=mongodb"), 1),
        (format!("db.collection.name={coll} db.namespace=ryw db.operation.name=insert_one db.system.name=mongodb"), 1),
        (format!("db.collection.name={coll} db.namespace=ryw db.operation.name=insert_one db.system.name=mongodb error.type=duplicate_key"), 1),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

/// An insert with the caller's own `_id`, sent again as a replay after it applied (a lost answer,
/// or an outbox entry replayed twice after a crash), is recognised by the write id the document
/// carries: applied once, not reported ambiguous. Another write's replay meeting that `_id` is
/// still not taken for its own.
#[tokio::test]
async fn a_replayed_insert_with_its_own_id_is_recognised_by_its_write_id() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let mut svc = layer().layer(MongoService::<Document>::new(&client, "ryw", &coll));
    let session = Session::new();
    let request = session.request(MongoRequest::insert_one(doc! { "_id": "mine", "v": 1 }));
    let keep = request.clone();
    svc.ready().await.unwrap().call(request).await.unwrap();
    let stamped = keep.stamped().expect("sent");
    let replay = ryw::SessionRequest::from_stamped(
        session.clone(),
        ryw::StampedWrite::new(stamped.stamp(), stamped.request, true),
    );
    let out = svc.ready().await.unwrap().call(replay).await.unwrap();
    assert!(out.get_ref().was_replayed(), "recognised as applied");
    let raw = client.database("ryw").collection::<Document>(&coll);
    assert_eq!(raw.count_documents(doc! {}).await.unwrap(), 1);

    // Another session's insert of the same `_id`, replayed: not its document.
    let other = Session::new();
    let request = other.request(MongoRequest::insert_one(doc! { "_id": "mine", "v": 2 }));
    let stamped = layer()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .stamp(&request)
        .unwrap();
    let replay = ryw::SessionRequest::from_stamped(
        other,
        ryw::StampedWrite::new(stamped.stamp(), stamped.request, true),
    );
    let err = svc.ready().await.unwrap().call(replay).await.unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(
        raw.find_one(doc! { "_id": "mine" })
            .await
            .unwrap()
            .unwrap()
            .get_i32("v")
            .unwrap(),
        1
    );
}
