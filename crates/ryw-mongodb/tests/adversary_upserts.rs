//! Adversarial scenarios for upserts, find options and `_id` filters against SecantusDB
//! (`RYW_MONGODB_URI`, started by `tests/run-all.sh`; without it every test prints that it
//! skipped): answers lost after the write applied, first attempts arriving after their replay,
//! kept writes delivered by two processes, write concern errors, concurrent sessions, hostile
//! filters and updates. Each doc comment states the scenario and what the promise requires.

use mongodb::bson::{doc, Bson, Document, Regex};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use ryw::{Error, FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_mongodb::{
    MongoAdapter, MongoError, MongoOutput, MongoRequest, MongoResponse, MongoService,
};
use ryw_outbox::entry::DurableRequest;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tower::{Service, ServiceBuilder, ServiceExt};

const DB: &str = "ryw_adversary";

fn uri() -> String {
    std::env::var("RYW_MONGODB_URI").expect("RYW_MONGODB_URI")
}

/// Whether SecantusDB is there; prints that the test skipped when it is not (and fails when
/// `RYW_REQUIRE_SERVERS` is set).
fn servers() -> bool {
    match std::env::var("RYW_MONGODB_URI") {
        Ok(u) if !u.is_empty() => true,
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_MONGODB_URI is not"
            );
            eprintln!(
                "skipped: RYW_MONGODB_URI is not set (bash tests/run-all.sh starts SecantusDB)"
            );
            false
        }
    }
}

fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}_{t}_{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn client(app: &str) -> Client {
    let mut o = ClientOptions::parse(uri()).await.unwrap();
    o.app_name = Some(app.to_string());
    Client::with_options(o).unwrap()
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The answer a late first attempt got, once it has landed.
type LateAnswer = Arc<Mutex<Option<Result<MongoResponse<Document>, MongoError>>>>;

/// What happens between a write that applied and the network error its caller sees.
#[derive(Clone)]
enum Between {
    Nothing,
    /// Another session deletes what matches.
    Delete(Document),
}

/// Returns a network error for the first write after the inner call succeeded (the answer is
/// lost after the write applied), after running `between`.
#[derive(Clone)]
struct LoseFirstWriteAnswer {
    inner: MongoService,
    raw: Collection<Document>,
    between: Between,
    lost: Arc<AtomicUsize>,
}

fn is_write(r: &MongoRequest<Document>) -> bool {
    !matches!(
        r.operation(),
        ryw_mongodb::MongoOperation::Find { .. }
            | ryw_mongodb::MongoOperation::FindOne { .. }
            | ryw_mongodb::MongoOperation::Aggregate { .. }
    )
}

impl Service<MongoRequest<Document>> for LoseFirstWriteAnswer {
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = BoxFut<Result<MongoResponse<Document>, MongoError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, r: MongoRequest<Document>) -> Self::Future {
        let mut inner = self.inner.clone();
        let lose = is_write(&r) && self.lost.fetch_add(1, Ordering::SeqCst) == 0;
        let raw = self.raw.clone();
        let between = self.between.clone();
        Box::pin(async move {
            let out = inner.call(r).await;
            if lose && out.is_ok() {
                match between {
                    Between::Nothing => {}
                    Between::Delete(f) => {
                        raw.delete_many(f).await.unwrap();
                    }
                }
                return Err(MongoError::Network("connection reset (answer lost)".into()));
            }
            out
        })
    }
}

/// Holds back the first write (the caller sees a network error at once) and delivers it to the
/// server only after the replay: a first attempt that reaches the server late, after its caller
/// gave up on it and the layer replayed it.
#[derive(Clone)]
struct DelayFirstWrite {
    inner: MongoService,
    held: Arc<Mutex<Option<MongoRequest<Document>>>>,
    seen: Arc<AtomicUsize>,
    late: LateAnswer,
}

impl Service<MongoRequest<Document>> for DelayFirstWrite {
    type Response = MongoResponse<Document>;
    type Error = MongoError;
    type Future = BoxFut<Result<MongoResponse<Document>, MongoError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, r: MongoRequest<Document>) -> Self::Future {
        let mut inner = self.inner.clone();
        let n = if is_write(&r) {
            self.seen.fetch_add(1, Ordering::SeqCst)
        } else {
            usize::MAX
        };
        let held = self.held.clone();
        let late = self.late.clone();
        Box::pin(async move {
            if n == 0 {
                *held.lock().unwrap() = Some(r);
                return Err(MongoError::Network(
                    "timed out (first attempt still in flight)".into(),
                ));
            }
            let out = inner.call(r).await;
            if n == 1 {
                let first = held.lock().unwrap().take();
                if let Some(first) = first {
                    let res = inner.call(first).await;
                    *late.lock().unwrap() = Some(res);
                }
            }
            out
        })
    }
}

struct Fixture {
    client: Client,
    raw: Collection<Document>,
    coll: String,
}

async fn fixture(name: &str) -> Fixture {
    let app = unique(name);
    let client = client(&app).await;
    let coll = unique(name);
    let raw = client.database(DB).collection::<Document>(&coll);
    Fixture { client, raw, coll }
}

impl Fixture {
    fn service(&self) -> MongoService {
        MongoService::new(&self.client, DB, &self.coll)
    }
    fn layer(&self) -> ReadYourWritesLayer<MongoAdapter> {
        ReadYourWritesLayer::new(MongoAdapter::new()).fence(FenceConfig::server_wait())
    }
    fn lossy(&self, between: Between) -> LoseFirstWriteAnswer {
        LoseFirstWriteAnswer {
            inner: self.service(),
            raw: self.raw.clone(),
            between,
            lost: Arc::new(AtomicUsize::new(0)),
        }
    }
    async fn all(&self) -> Vec<Document> {
        use futures_lite_stream::collect;
        collect(
            self.raw
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap(),
        )
        .await
    }
}

mod futures_lite_stream {
    use mongodb::bson::Document;
    pub(super) async fn collect(mut c: mongodb::Cursor<Document>) -> Vec<Document> {
        let mut v = Vec::new();
        while c.advance().await.unwrap() {
            v.push(c.deserialize_current().unwrap());
        }
        v
    }
}

async fn call<S>(
    svc: &mut S,
    session: &Session,
    r: MongoRequest<Document>,
) -> Result<ryw::SessionResponse<MongoResponse<Document>>, Error<MongoError>>
where
    S: Service<
        ryw::SessionRequest<MongoRequest<Document>>,
        Response = ryw::SessionResponse<MongoResponse<Document>>,
        Error = Error<MongoError>,
    >,
{
    svc.ready().await?.call(session.request(r)).await
}

fn ids(docs: &[Document]) -> Vec<Bson> {
    docs.iter()
        .map(|d| d.get("_id").cloned().unwrap())
        .collect()
}

/// `delete_one({_id: /^a/})` (a BSON regular expression as the `_id` value, which matches
/// several documents) whose answer is lost after it deleted one document. A regular expression is
/// not an `_id` equality, so the delete is not replayable: `Error::Ambiguous`, one document left
/// (a replay would delete a second one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_one_by_an_id_regex_is_never_replayed() {
    if !servers() {
        return;
    }
    let f = fixture("del_regex").await;
    f.raw
        .insert_many(vec![doc! { "_id": "a1" }, doc! { "_id": "a2" }])
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(f.layer())
        .service(f.lossy(Between::Nothing));
    let session = Session::new();
    let filter = doc! { "_id": Regex { pattern: "^a".into(), options: String::new() } };
    let out = call(&mut svc, &session, MongoRequest::delete_one(filter)).await;
    let left = f.all().await;
    assert!(
        matches!(out, Err(Error::Ambiguous { .. })) && left.len() == 1,
        "expected Ambiguous with one document left; got {:?} and documents {:?}",
        out.map(|r| r.into_inner().into_output()),
        ids(&left)
    );
}

/// `update_one({_id: /^a/}, {$inc: {n: 1}}).upsert()` whose answer is lost after it updated
/// `a1`; another session then deletes `a1`. Not by `_id` equality: `Error::Ambiguous`, and `a2`
/// untouched (a replay would apply the increment to a second document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_by_an_id_regex_never_changes_a_second_document() {
    if !servers() {
        return;
    }
    let f = fixture("upd_regex").await;
    f.raw
        .insert_many(vec![
            doc! { "_id": "a1", "n": 0 },
            doc! { "_id": "a2", "n": 0 },
        ])
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(f.layer())
        .service(f.lossy(Between::Delete(doc! { "_id": "a1" })));
    let session = Session::new();
    let filter = doc! { "_id": Regex { pattern: "^a".into(), options: String::new() } };
    let out = call(
        &mut svc,
        &session,
        MongoRequest::update_one(filter, doc! { "$inc": { "n": 1 } }).upsert(),
    )
    .await;
    let left = f.all().await;
    let a2 = left.iter().find(|d| d.get_str("_id") == Ok("a2")).unwrap();
    assert!(
        matches!(out, Err(Error::Ambiguous { .. })) && a2.get_i32("n") == Ok(0),
        "expected Ambiguous and a2 untouched; got {:?} and documents {:?}",
        out.map(|r| r.into_inner().into_output()),
        left
    );
}

/// `update_many({grp: "g"}, {$inc: {n: 1}}).upsert()` over one existing document, whose first
/// attempt reaches the server late: its caller saw a timeout and the first attempt lands after
/// whatever the layer does next. A replay would update the document (pushing the write id), and
/// the late first attempt, whose filter `{grp: "g", ryw_write_ids: {$ne: w}}` then matches
/// nothing, would insert a second document. Not by `_id`, the upsert is never replayed: the
/// caller gets `Error::Ambiguous`, and the write applies at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_many_upsert_whose_first_attempt_arrives_late_applies_at_most_once() {
    if !servers() {
        return;
    }
    let f = fixture("many_race").await;
    f.raw
        .insert_one(doc! { "_id": "x", "grp": "g", "n": 0 })
        .await
        .unwrap();
    let delayed = DelayFirstWrite {
        inner: f.service(),
        held: Default::default(),
        seen: Default::default(),
        late: Default::default(),
    };
    let late = delayed.late.clone();
    let mut svc = ServiceBuilder::new().layer(f.layer()).service(delayed);
    let session = Session::new();
    let out = call(
        &mut svc,
        &session,
        MongoRequest::update_many(doc! { "grp": "g" }, doc! { "$inc": { "n": 1 } }).upsert(),
    )
    .await;
    let docs = f.all().await;
    let total: i32 = docs.iter().map(|d| d.get_i32("n").unwrap_or(0)).sum();
    assert!(
        matches!(out, Err(Error::Ambiguous { .. })) && docs.len() == 1 && total <= 1,
        "expected Ambiguous and one document with n at most 1; the layer gave {:?}, the late \
         first attempt {:?}, documents {:?}",
        out.map(|r| r.into_inner().into_output()),
        late.lock()
            .unwrap()
            .take()
            .map(|r| r.map(|r| r.into_output())),
        docs
    );
}

async fn fail_point(client: &Client, app: &str, data: Document) {
    let mut data = data;
    data.insert("appName", app);
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": data,
        })
        .await
        .unwrap();
}

/// Runs `make()` through the layer after the next `update` command answers a write concern
/// error (with the `RetryableWriteError` label when `label`), the write having applied.
async fn upsert_after_write_concern_error(
    name: &str,
    label: bool,
    seed: Vec<Document>,
    request: MongoRequest<Document>,
) -> (Result<MongoOutput<Document>, String>, Vec<Document>) {
    let app = unique(name);
    let client = client(&app).await;
    let coll = unique(name);
    let raw = client.database(DB).collection::<Document>(&coll);
    if !seed.is_empty() {
        raw.insert_many(seed).await.unwrap();
    }
    let mut data = doc! {
        "failCommands": ["update"],
        "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "injected" },
    };
    if label {
        data.insert("errorLabels", vec!["RetryableWriteError"]);
    }
    fail_point(&client, &app, data).await;
    let mut svc = ServiceBuilder::new()
        .layer(ReadYourWritesLayer::new(MongoAdapter::new()).fence(FenceConfig::server_wait()))
        .service(MongoService::new(&client, DB, &coll));
    let session = Session::new();
    let out = call(&mut svc, &session, request)
        .await
        .map(|r| r.into_inner().into_output())
        .map_err(|e| format!("{e:?}"));
    let mut c = raw.find(doc! {}).await.unwrap();
    let mut docs = Vec::new();
    while c.advance().await.unwrap() {
        docs.push(c.deserialize_current().unwrap());
    }
    (out, docs)
}

/// `update_one({key: "k"}, {$inc: {n: 1}}).upsert()` on an empty collection; the
/// server applies it (inserts) and answers a write concern error, with and without the
/// `RetryableWriteError` label (the driver's own retry, then the layer's replay). Expected: one
/// document, n = 1, and no error other than `Ambiguous`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_by_other_field_after_a_write_concern_error_applies_once() {
    if !servers() {
        return;
    }
    for label in [false, true] {
        let (out, docs) = upsert_after_write_concern_error(
            "wce_key",
            label,
            vec![],
            MongoRequest::update_one(doc! { "key": "k" }, doc! { "$inc": { "n": 1 } }).upsert(),
        )
        .await;
        let ok = docs.len() == 1
            && docs[0].get_i32("n") == Ok(1)
            && (out.is_ok() || out.as_ref().is_err_and(|e| e.starts_with("Ambiguous")));
        assert!(ok, "label {label}: got {out:?}, documents {docs:?}");
    }
}

/// as above, by `_id`, for update_one, update_many and replace_one upserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_by_id_after_a_write_concern_error_applies_once() {
    if !servers() {
        return;
    }
    for label in [false, true] {
        for (what, request) in [
            (
                "update_one",
                MongoRequest::update_one(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).upsert(),
            ),
            (
                "update_many",
                MongoRequest::update_many(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } })
                    .upsert(),
            ),
            (
                "replace_one",
                MongoRequest::replace_one(doc! { "_id": "k" }, doc! { "n": 1 }).upsert(),
            ),
        ] {
            let (out, docs) =
                upsert_after_write_concern_error("wce_id", label, vec![], request).await;
            let ok = docs.len() == 1
                && docs[0].get_i32("n") == Ok(1)
                && (out.is_ok() || out.as_ref().is_err_and(|e| e.starts_with("Ambiguous")));
            assert!(ok, "{what} label {label}: got {out:?}, documents {docs:?}");
        }
    }
}

/// two sessions upsert `$inc` on the same `_id` at once, 20 rounds (each round a new
/// key). Expected: the counter equals the number of calls that returned Ok (an error must mean
/// "not applied" unless it is Ambiguous), and one document per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_upserting_one_key_apply_what_they_report() {
    if !servers() {
        return;
    }
    let f = fixture("concurrent").await;
    let mut report = Vec::new();
    for round in 0..20 {
        let key = format!("k{round}");
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut svc = ServiceBuilder::new().layer(f.layer()).service(f.service());
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let session = Session::new();
                call(
                    &mut svc,
                    &session,
                    MongoRequest::update_one(doc! { "_id": key }, doc! { "$inc": { "n": 1 } })
                        .upsert(),
                )
                .await
                .map(|r| r.into_inner().into_output())
                .map_err(|e| format!("{e:?}"))
            }));
        }
        let mut oks = 0;
        let mut outs = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            if o.is_ok() {
                oks += 1;
            }
            outs.push(o);
        }
        let d = f.raw.find_one(doc! { "_id": &key }).await.unwrap().unwrap();
        let n = d.get_i32("n").unwrap();
        if n != oks {
            report.push(format!("{key}: n = {n}, ok calls = {oks}, outs {outs:?}"));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

/// `update_one({_id: "k"}, ..).upsert()` (and `replace_one`) whose first attempt lands
/// after its replay, the document existing. Expected: applied once (the late first attempt meets
/// a duplicate key, nothing inserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_one_upsert_by_id_racing_its_late_first_attempt_applies_once() {
    if !servers() {
        return;
    }
    for replace in [false, true] {
        let f = fixture("one_race").await;
        f.raw.insert_one(doc! { "_id": "k", "n": 0 }).await.unwrap();
        let delayed = DelayFirstWrite {
            inner: f.service(),
            held: Default::default(),
            seen: Default::default(),
            late: Default::default(),
        };
        let late = delayed.late.clone();
        let mut svc = ServiceBuilder::new().layer(f.layer()).service(delayed);
        let session = Session::new();
        let request = if replace {
            MongoRequest::replace_one(doc! { "_id": "k" }, doc! { "n": 1 }).upsert()
        } else {
            MongoRequest::update_one(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).upsert()
        };
        let out = call(&mut svc, &session, request).await;
        let docs = f.all().await;
        assert!(
            docs.len() == 1 && docs[0].get_i32("n") == Ok(1),
            "replace {replace}: replay {:?}, late {:?}, documents {docs:?}",
            out.map(|r| r.into_inner().into_output()),
            late.lock()
                .unwrap()
                .take()
                .map(|r| r.map(|r| r.into_output()))
        );
    }
}

/// `replace_one({_id: "k"}, {_id: "other", v: 1}).upsert()` (a replacement whose `_id`
/// differs from the filter's) with its answer lost after it applied. Expected: at most one
/// document, and an error or a replayed success, never two inserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_upsert_with_a_different_id_is_not_applied_twice() {
    if !servers() {
        return;
    }
    let f = fixture("replace_other_id").await;
    let mut svc = ServiceBuilder::new()
        .layer(f.layer())
        .service(f.lossy(Between::Nothing));
    let session = Session::new();
    let out = call(
        &mut svc,
        &session,
        MongoRequest::replace_one(doc! { "_id": "k" }, doc! { "_id": "other", "v": 1 }).upsert(),
    )
    .await;
    let docs = f.all().await;
    assert!(
        docs.len() <= 1,
        "got {:?}, documents {docs:?}",
        out.map(|r| r.into_inner().into_output())
    );
}

/// `update_one({_id: "k"}, {$setOnInsert: {a: 1}, $inc: {n: 1}, $push: {tags: "t"}})
/// .upsert()` whose answer is lost after it inserted. Expected: replayed, one document, n = 1,
/// one tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_with_set_on_insert_and_push_lost_answer_applies_once() {
    if !servers() {
        return;
    }
    let f = fixture("soi_push").await;
    let mut svc = ServiceBuilder::new()
        .layer(f.layer())
        .service(f.lossy(Between::Nothing));
    let session = Session::new();
    let out = call(
        &mut svc,
        &session,
        MongoRequest::update_one(
            doc! { "_id": "k" },
            doc! { "$setOnInsert": { "a": 1 }, "$inc": { "n": 1 }, "$push": { "tags": "t" } },
        )
        .upsert(),
    )
    .await;
    let docs = f.all().await;
    let replayed = out
        .as_ref()
        .map(|r| r.get_ref().was_replayed())
        .unwrap_or(false);
    assert!(
        replayed
            && docs.len() == 1
            && docs[0].get_i32("n") == Ok(1)
            && docs[0].get_array("tags").map(|a| a.len()) == Ok(1),
        "got {:?}, documents {docs:?}",
        out.map(|r| r.into_inner().into_output())
    );
}

/// an upsert by `_id` whose answer is lost after it inserted, the document then
/// deleted by another session. Expected (documented): `Ambiguous`, nothing inserted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_lost_answer_then_deleted_is_ambiguous_and_not_reinserted() {
    if !servers() {
        return;
    }
    for many in [false, true] {
        let f = fixture("upsert_deleted").await;
        let mut svc = ServiceBuilder::new()
            .layer(f.layer())
            .service(f.lossy(Between::Delete(doc! { "_id": "k" })));
        let session = Session::new();
        let request = if many {
            MongoRequest::update_many(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).upsert()
        } else {
            MongoRequest::update_one(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).upsert()
        };
        let out = call(&mut svc, &session, request).await;
        let docs = f.all().await;
        assert!(
            matches!(out, Err(Error::Ambiguous { .. })) && docs.is_empty(),
            "many {many}: got {:?}, documents {docs:?}",
            out.map(|r| r.into_inner().into_output())
        );
    }
}

/// an upsert whose filter names `ryw_write_ids` (so ryw wraps it in `$and`). Expected
/// (docs: "The filter's equality fields (`_id` above all) make the inserted document"): the
/// inserted document has `_id: "k"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_whose_filter_names_the_write_id_field_keeps_its_id() {
    if !servers() {
        return;
    }
    let f = fixture("and_filter").await;
    let mut svc = ServiceBuilder::new().layer(f.layer()).service(f.service());
    let session = Session::new();
    let out = call(
        &mut svc,
        &session,
        MongoRequest::update_one(
            doc! { "_id": "k", "ryw_write_ids": { "$exists": false } },
            doc! { "$set": { "v": 1 } },
        )
        .upsert(),
    )
    .await;
    let docs = f.all().await;
    assert!(
        docs.len() == 1 && docs[0].get_str("_id") == Ok("k"),
        "got {:?}, documents {docs:?}",
        out.map(|r| r.into_inner().into_output())
    );
}

/// after a write, `find` with sort, skip, limit and a projection leaving out `_id` and
/// `ryw_write_ids`, and `find_one` with sort/skip/projection. Expected: the session's document
/// is there and the read is `Guaranteed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_options_keep_the_guarantee() {
    if !servers() {
        return;
    }
    let f = fixture("find_opts").await;
    let mut svc = ServiceBuilder::new().layer(f.layer()).service(f.service());
    let session = Session::new();
    for i in 0..3 {
        call(
            &mut svc,
            &session,
            MongoRequest::insert_one(doc! { "t": 7, "at": i }),
        )
        .await
        .unwrap();
    }
    let page = call(
        &mut svc,
        &session,
        MongoRequest::find(doc! { "t": 7 })
            .sort(doc! { "at": -1 })
            .skip(1)
            .limit(1)
            .projection(doc! { "_id": 0, "ryw_write_ids": 0 }),
    )
    .await
    .unwrap();
    assert!(
        matches!(page.visibility(), Visibility::Guaranteed(_)),
        "{:?}",
        page.visibility()
    );
    assert_eq!(page.get_ref().documents(), [doc! { "t": 7, "at": 1 }]);
    let one = call(
        &mut svc,
        &session,
        MongoRequest::find_one(doc! { "t": 7 })
            .sort(doc! { "at": -1 })
            .skip(2)
            .projection(doc! { "at": 1, "_id": 0 }),
    )
    .await
    .unwrap();
    assert!(
        matches!(one.visibility(), Visibility::Guaranteed(_)),
        "{:?}",
        one.visibility()
    );
    assert_eq!(one.get_ref().documents(), [doc! { "at": 0 }]);
}

/// options an operation does not take, through the layer. Expected:
/// `MongoError::Invalid`, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_options_send_nothing() {
    if !servers() {
        return;
    }
    let f = fixture("refused").await;
    f.raw.insert_one(doc! { "_id": "k", "n": 0 }).await.unwrap();
    let mut svc = ServiceBuilder::new().layer(f.layer()).service(f.service());
    let session = Session::new();
    let cases: Vec<MongoRequest<Document>> = vec![
        MongoRequest::delete_one(doc! { "_id": "k" }).upsert(),
        MongoRequest::delete_many(doc! {}).sort(doc! { "_id": 1 }),
        MongoRequest::update_one(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).limit(1),
        MongoRequest::update_many(doc! {}, doc! { "$inc": { "n": 1 } })
            .upsert()
            .skip(1),
        MongoRequest::replace_one(doc! { "_id": "k" }, doc! { "n": 5 }).projection(doc! { "n": 1 }),
        MongoRequest::insert_one(doc! { "_id": "j" }).upsert(),
        MongoRequest::find_one_and_update(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } })
            .upsert(),
        MongoRequest::find_one(doc! {}).limit(1),
        MongoRequest::find(doc! {}).upsert(),
        MongoRequest::aggregate(vec![]).sort(doc! { "_id": 1 }),
    ];
    for r in cases {
        let what = format!("{:?}", r.operation());
        let out = call(&mut svc, &session, r).await;
        assert!(
            matches!(
                &out,
                Err(Error::Store {
                    source: MongoError::Invalid(_),
                    ..
                })
            ),
            "{what}: {:?}",
            out.map(|r| r.into_inner().into_output())
        );
    }
    assert_eq!(f.all().await, vec![doc! { "_id": "k", "n": 0 }]);
}

/// outbox encode/decode of upserts keeps the flag; refused options and reads are not
/// deferrable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_keeps_the_upsert_flag_and_refuses_what_it_cannot_keep() {
    if !servers() {
        return;
    }
    for r in [
        MongoRequest::<Document>::update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 1 } })
            .upsert(),
        MongoRequest::update_many(doc! { "k": 1 }, doc! { "$set": { "a": 1 } }).upsert(),
        MongoRequest::replace_one(doc! { "_id": 1 }, doc! { "a": 1 }).upsert(),
        MongoRequest::update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 1 } }),
    ] {
        let mut bytes = Vec::new();
        r.encode(&mut bytes).unwrap();
        let back = MongoRequest::<Document>::decode(&bytes).unwrap();
        assert_eq!(
            format!("{:?}", back.operation()),
            format!("{:?}", r.operation())
        );
    }
    for r in [
        MongoRequest::<Document>::delete_one(doc! { "_id": 1 }).upsert(),
        MongoRequest::update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 1 } }).limit(2),
        MongoRequest::find(doc! {}).limit(2),
    ] {
        let mut bytes = Vec::new();
        assert!(r.encode(&mut bytes).is_err(), "{:?}", r.operation());
    }
}

/// A kept write (`ReadYourWrites::stamp`, as an outbox keeps it) of
/// `update_many({grp: "g"}, {$inc: {n: 1}}).upsert()`, one document matching. Process B, seeing
/// that it may have applied, delivers it as a replay (`StampedWrite::new(stamp, request, true)`
/// with `SessionRequest::from_stamped`); then process A's slow first delivery lands. A replay
/// followed by that first delivery would update the document and insert a second one; not by
/// `_id`, the replay is refused unsent, and the write applies once: one document, n = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_update_many_upsert_delivered_by_two_processes_applies_once() {
    if !servers() {
        return;
    }
    let f = fixture("kept_many").await;
    f.raw
        .insert_one(doc! { "_id": "x", "grp": "g", "n": 0 })
        .await
        .unwrap();
    let svc_a = ServiceBuilder::new().layer(f.layer()).service(f.service());
    let mut svc_b = ServiceBuilder::new().layer(f.layer()).service(f.service());
    let mut svc_a2 = svc_a.clone();
    let session = Session::new();
    let kept = svc_a
        .stamp(&session.request(
            MongoRequest::update_many(doc! { "grp": "g" }, doc! { "$inc": { "n": 1 } }).upsert(),
        ))
        .expect("a write");
    let replay = ryw::StampedWrite::new(kept.stamp(), kept.request.clone(), true);
    let first = ryw::StampedWrite::new(kept.stamp(), kept.request.clone(), false);
    let b = svc_b
        .ready()
        .await
        .unwrap()
        .call(ryw::SessionRequest::from_stamped(Session::new(), replay))
        .await
        .map(|r| r.into_inner().into_output());
    let a = svc_a2
        .ready()
        .await
        .unwrap()
        .call(ryw::SessionRequest::from_stamped(Session::new(), first))
        .await
        .map(|r| r.into_inner().into_output());
    let docs = f.all().await;
    let total: i32 = docs.iter().map(|d| d.get_i32("n").unwrap_or(0)).sum();
    assert!(
        docs.len() == 1 && total == 1,
        "expected one document with n = 1; B (replay) {b:?}, A (late first attempt) {a:?}, documents {docs:?}"
    );
}

/// A kept `update_one({_id: "k"}, {$inc: {n: 1}}).upsert()` (or `replace_one`), the document
/// existing; process B delivers it as a replay first, then process A's slow first delivery lands.
/// The write applies once (by B). A's upsert, whose filter `{_id: k, ryw_write_ids: {$ne: w}}`
/// misses the document already holding `w`, tries to insert `_id: k` and meets a duplicate key:
/// it is reported applied (`Ok`, `was_replayed()`), never as a definite "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_upsert_by_id_delivered_after_its_replay_is_recognised_as_applied() {
    if !servers() {
        return;
    }
    let mut report = Vec::new();
    for replace in [false, true] {
        let f = fixture("kept_one").await;
        f.raw.insert_one(doc! { "_id": "k", "n": 0 }).await.unwrap();
        let mut svc_a = ServiceBuilder::new().layer(f.layer()).service(f.service());
        let mut svc_b = ServiceBuilder::new().layer(f.layer()).service(f.service());
        let session = Session::new();
        let request = if replace {
            MongoRequest::replace_one(doc! { "_id": "k" }, doc! { "n": 1 }).upsert()
        } else {
            MongoRequest::update_one(doc! { "_id": "k" }, doc! { "$inc": { "n": 1 } }).upsert()
        };
        let kept = svc_a.stamp(&session.request(request)).expect("a write");
        let replay = ryw::StampedWrite::new(kept.stamp(), kept.request.clone(), true);
        let first = ryw::StampedWrite::new(kept.stamp(), kept.request.clone(), false);
        let b = svc_b
            .ready()
            .await
            .unwrap()
            .call(ryw::SessionRequest::from_stamped(Session::new(), replay))
            .await
            .map(|r| (r.get_ref().was_replayed(), r.into_inner().into_output()));
        let a = svc_a
            .ready()
            .await
            .unwrap()
            .call(ryw::SessionRequest::from_stamped(Session::new(), first))
            .await;
        let docs = f.all().await;
        let a_ok = match &a {
            Ok(r) => r.get_ref().was_replayed(),
            Err(Error::Ambiguous { .. }) => true,
            Err(Error::Store {
                may_have_applied, ..
            }) => *may_have_applied,
            Err(_) => false,
        };
        let once = docs.len() == 1 && docs[0].get_i32("n") == Ok(1);
        if !(a_ok && once) {
            report.push(format!(
                "replace {replace}: B {b:?}; A {:?}; documents {docs:?}",
                a.map(|r| r.into_inner().into_output())
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}
