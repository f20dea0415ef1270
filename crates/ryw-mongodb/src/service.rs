//! The tower `Service` over one collection.

use crate::error::MongoError;
use crate::request::{
    bulk_refusal, names_one_by_id, MongoOperation, MongoOutput, MongoRequest, MongoResponse,
    RECENT_WRITE_IDS, WRITE_ID_FIELD,
};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{
    Acknowledgment, CollectionOptions, DeleteManyModel, DeleteOneModel, InsertOneModel,
    ReadConcern, ReadPreference, ReplaceOneModel, ReturnDocument, SelectionCriteria,
    UpdateManyModel, UpdateOneModel, WriteConcern, WriteModel,
};
use mongodb::{Client, ClientSession, ClusterTime, Collection, Namespace};
use ryw::telemetry::{DbCall, Observer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A tower `Service<MongoRequest<T>>` over one collection of `T` (by default BSON
/// [`Document`]s), with majority read and write concern.
///
/// Every call runs in its own causally consistent `ClientSession`, advanced to the times the
/// request carries; the response carries the session's times afterwards.
///
/// The service needs no configuration of its own: the session layer attaches its adapter's (the
/// read preference of cheap reads) to every request ([`ryw::StoreAdapter::prepare`]), so the
/// adapter is given once, to the layer. A request that did not go through the layer carries no
/// configuration and is sent as it is: the operation alone, in a session of its own that nothing
/// advances, with the collection's majority read and write concern and the client's read
/// preference (the driver's default is the primary). No write id is added to what it writes, and
/// the stamps a decoded outbox entry carries (write id, times, replay mark) are not used: such an
/// entry is sent through the layer.
pub struct MongoService<T: Send + Sync = Document> {
    client: Client,
    collection: Collection<T>,
    observer: Option<Arc<dyn Observer>>,
}

impl<T: Send + Sync> Clone for MongoService<T> {
    fn clone(&self) -> Self {
        MongoService {
            client: self.client.clone(),
            collection: self.collection.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<T: Send + Sync> fmt::Debug for MongoService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoService")
            .field("collection", &self.collection.namespace())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync> MongoService<T> {
    /// The service for `database.collection`, sending through `client`.
    pub fn new(client: &Client, database: &str, collection: &str) -> Self {
        let options = CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .build();
        MongoService {
            client: client.clone(),
            collection: client
                .database(database)
                .collection_with_options(collection, options),
            observer: None,
        }
    }

    /// Reports every call to MongoDB to `observer` ([`Observer::db_call`], with
    /// `db.system.name` `mongodb`, the command, the collection, the database and the error type of
    /// a failure). `ryw-otel` records them as `db.client.operation.duration`.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The collection (majority read and write concern, the client's read preference).
    pub fn collection(&self) -> &Collection<T> {
        &self.collection
    }
}

/// The future of a [`MongoService`] call (boxed: the driver's futures are unnameable).
pub type MongoFuture<T> =
    Pin<Box<dyn Future<Output = Result<MongoResponse<T>, MongoError>> + Send>>;

impl<T> tower::Service<MongoRequest<T>> for MongoService<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
{
    type Response = MongoResponse<T>;
    type Error = MongoError;
    type Future = MongoFuture<T>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), MongoError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: MongoRequest<T>) -> MongoFuture<T> {
        let this = self.clone();
        if !DbCall::wanted(self.observer.as_ref()) {
            return Box::pin(async move { this.send(request).await });
        }
        let namespace = this.collection.namespace();
        let call = DbCall::new("mongodb", request.operation().name())
            .collection(Some(namespace.coll))
            .namespace(Some(namespace.db))
            .start(self.observer.clone());
        Box::pin(call.run(async move { this.send(request).await }, MongoError::kind))
    }
}

/// The signed `$clusterTime` document a request carries, as the driver's type.
fn cluster_time_from(bytes: &[u8]) -> Option<ClusterTime> {
    let doc = Document::from_reader(bytes).ok()?;
    mongodb::bson::from_document(doc).ok()
}

fn driver(e: mongodb::error::Error) -> MongoError {
    MongoError::from_driver(e)
}

/// Every batch of a cursor, read within `session`.
async fn drain<D>(
    cursor: &mut mongodb::SessionCursor<D>,
    session: &mut ClientSession,
) -> Result<Vec<D>, MongoError>
where
    D: DeserializeOwned + Send + Sync + Unpin,
{
    let mut docs = Vec::new();
    while let Some(doc) = cursor.next(session).await {
        docs.push(doc.map_err(driver)?);
    }
    Ok(docs)
}

fn to_doc<T: Serialize>(value: &T) -> Result<Document, MongoError> {
    mongodb::bson::to_document(value).map_err(|e| MongoError::Invalid(e.to_string()))
}

/// `filter AND the document does not carry this write id yet`. The condition joins the filter's
/// own fields, so that an upsert still takes its equality fields (`_id` above all) from them;
/// `$and` only when the filter already names the write-id field.
fn not_yet(mut filter: Document, field: &str, write_id: &str) -> Document {
    if filter.contains_key(field) {
        return doc! { "$and": [filter, { field: { "$ne": write_id } }] };
    }
    filter.insert(field, doc! { "$ne": write_id });
    filter
}

/// Stamps a document to insert with `write_id`: as its `_id` when it has none (then only this
/// write can have inserted a document with that `_id`: `true`), or, next to the caller's own
/// `_id`, in the write-id field, as an update would leave it, so that a replay can tell its own
/// insert (`false`).
fn stamp_insert(doc: &mut Document, write_id: &str) -> Result<bool, MongoError> {
    if !doc.contains_key("_id") {
        doc.insert("_id", write_id);
        return Ok(true);
    }
    if doc.contains_key(WRITE_ID_FIELD) {
        return Err(MongoError::Invalid(format!(
            "the document must not hold `{WRITE_ID_FIELD}`: ryw keeps its write ids there"
        )));
    }
    doc.insert(WRITE_ID_FIELD, vec![write_id]);
    Ok(false)
}

/// Stamps a replacement with `write_id` (a replacement starts the document's list of write ids
/// afresh) and returns the filter that skips a document already holding it.
fn stamp_replacement(doc: &mut Document, filter: Document, write_id: &str) -> Document {
    doc.insert(WRITE_ID_FIELD, vec![write_id]);
    not_yet(filter, WRITE_ID_FIELD, write_id)
}

/// The `$slice` that keeps the last [`RECENT_WRITE_IDS`] of a document's write ids (a BSON int32).
const KEEP_RECENT: i32 = -(RECENT_WRITE_IDS as i32);

/// Appends `write_id` to the document's bounded list of recent write ids, in the `$push` of an
/// update document.
fn push_write_id(
    mut update: Document,
    field: &str,
    write_id: &str,
) -> Result<Document, MongoError> {
    if !update.keys().all(|k| k.starts_with('$')) {
        return Err(MongoError::Invalid(
            "an update document must use update operators ($set, $inc...)".into(),
        ));
    }
    let entry = doc! { "$each": [write_id], "$slice": KEEP_RECENT };
    match update.get_mut("$push") {
        Some(Bson::Document(push)) => {
            if push.contains_key(field) {
                return Err(MongoError::Invalid(format!(
                    "the update must not $push to `{field}`: ryw keeps its write ids there"
                )));
            }
            push.insert(field, entry);
        }
        Some(_) => return Err(MongoError::Invalid("$push must be a document".into())),
        None => {
            update.insert("$push", doc! { field: entry });
        }
    }
    Ok(update)
}

impl<T> MongoService<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
{
    async fn send(&self, request: MongoRequest<T>) -> Result<MongoResponse<T>, MongoError> {
        if let Some(why) = request.refused {
            return Err(MongoError::Invalid(why.into()));
        }
        let mut session = self.client.start_session().await.map_err(driver)?;
        let (output, replayed) = match request.config {
            // Not through the session layer: sent as it is.
            None => {
                self.run(&mut session, request.operation, None, None, false)
                    .await?
            }
            Some(config) => {
                if let Some(ct) = request.cluster_time.as_deref().and_then(cluster_time_from) {
                    session.advance_cluster_time(&ct);
                }
                if let Some(ts) = request.after {
                    session.advance_operation_time(ts);
                }
                let read_preference = if request.primary {
                    ReadPreference::Primary
                } else {
                    config.read_preference.clone()
                };
                let criteria = SelectionCriteria::ReadPreference(read_preference);
                let write_id = request.write_id.map(|w| w.to_string());
                self.run(
                    &mut session,
                    request.operation,
                    Some(criteria),
                    write_id,
                    request.replay,
                )
                .await?
            }
        };
        Ok(MongoResponse {
            output,
            operation_time: session.operation_time(),
            cluster_time: session.cluster_time().cloned(),
            replayed,
        })
    }

    async fn already_applied(
        &self,
        session: &mut ClientSession,
        write_id: &str,
    ) -> Result<bool, MongoError> {
        Ok(self.applied_document(session, write_id).await?.is_some())
    }

    /// A document that holds `write_id` among its recent write ids, read on the primary.
    async fn applied_document(
        &self,
        session: &mut ClientSession,
        write_id: &str,
    ) -> Result<Option<T>, MongoError> {
        self.collection
            .find_one(doc! { WRITE_ID_FIELD: write_id })
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .session(&mut *session)
            .await
            .map_err(driver)
    }

    /// The result of an update or replace, or, when it failed on a duplicate key and a document
    /// already holds `write_id`, the answer of a write applied by another attempt (`Err`): an
    /// upsert whose filter skips the document its write id is on tries to insert it again, and
    /// meets its `_id`.
    async fn upserted_already(
        &self,
        session: &mut ClientSession,
        result: mongodb::error::Result<mongodb::results::UpdateResult>,
        write_id: &Option<String>,
    ) -> Result<Result<mongodb::results::UpdateResult, (MongoOutput<T>, bool)>, MongoError> {
        let e = match result {
            Ok(r) => return Ok(Ok(r)),
            Err(e) => MongoError::from_driver(e),
        };
        match (&e, write_id) {
            (MongoError::DuplicateKey { .. }, Some(w))
                if self.already_applied(session, w).await? =>
            {
                tracing::debug!(target: "ryw::mongodb", "upsert met the document its write applied");
                let output = MongoOutput::Updated {
                    matched: 1,
                    modified: 1,
                    upserted: None,
                };
                Ok(Err((output, true)))
            }
            _ => Err(e),
        }
    }

    /// The writes of a `bulk_write` in one ordered command, each stamped with `<write id>/<i>`.
    async fn bulk(
        &self,
        session: &mut ClientSession,
        writes: Vec<MongoOperation<T>>,
        write_id: Option<&str>,
    ) -> Result<MongoOutput<T>, MongoError> {
        if writes.is_empty() {
            return Ok(MongoOutput::Bulk(Vec::new()));
        }
        let namespace = self.collection.namespace();
        let models = writes
            .into_iter()
            .enumerate()
            .map(|(i, op)| {
                let sub = write_id.map(|w| format!("{w}/{i}"));
                model(&namespace, op, sub.as_deref())
            })
            .collect::<Result<Vec<WriteModel>, MongoError>>()?;
        let n = models.len();
        let r = self
            .client
            .bulk_write(models)
            .ordered(true)
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .verbose_results()
            .session(&mut *session)
            .await
            .map_err(bulk_error)?;
        let outputs = (0..n)
            .map(|i| {
                if let Some(x) = r.insert_results.get(&i) {
                    Ok(MongoOutput::Inserted(vec![x.inserted_id.clone()]))
                } else if let Some(u) = r.update_results.get(&i) {
                    Ok(MongoOutput::Updated {
                        // An upsert inserts only when nothing matched (some servers count the
                        // inserted document in `n`).
                        matched: if u.upserted_id.is_some() {
                            0
                        } else {
                            u.matched_count
                        },
                        modified: u.modified_count,
                        upserted: u.upserted_id.clone(),
                    })
                } else if let Some(d) = r.delete_results.get(&i) {
                    Ok(MongoOutput::Deleted(d.deleted_count))
                } else {
                    Err(MongoError::Unresolved(format!(
                        "bulk_write applied, but the server returned no result for write {i}"
                    )))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(MongoOutput::Bulk(outputs))
    }

    async fn run(
        &self,
        session: &mut ClientSession,
        operation: MongoOperation<T>,
        criteria: Option<SelectionCriteria>,
        write_id: Option<String>,
        replay: bool,
    ) -> Result<(MongoOutput<T>, bool), MongoError> {
        let field = WRITE_ID_FIELD;
        let coll = &self.collection;
        // A replay of a single-document write first looks for its own write id: with a filter that
        // matches several documents, the "not yet" filter alone would let the replay change a
        // second one.
        if let (true, Some(w)) = (replay, &write_id) {
            // Some(whether the filter names the document by `_id`) for single-document writes.
            let single_by_id = match &operation {
                MongoOperation::UpdateOne { filter, .. }
                | MongoOperation::ReplaceOne { filter, .. }
                | MongoOperation::FindOneAndUpdate { filter, .. } => Some(names_one_by_id(filter)),
                _ => None,
            };
            if let Some(by_id) = single_by_id {
                if let Some(done) = self.applied_document(session, w).await? {
                    tracing::debug!(target: "ryw::mongodb", "replayed write had already applied");
                    let output = match operation {
                        MongoOperation::FindOneAndUpdate { .. } => {
                            MongoOutput::Document(Some(done))
                        }
                        _ => MongoOutput::Updated {
                            matched: 1,
                            modified: 1,
                            upserted: None,
                        },
                    };
                    return Ok((output, true));
                }
                if !by_id {
                    // No document holds the id: either the first attempt never applied, or the
                    // document it changed was deleted or replaced since. With a filter other
                    // documents may match, applying now could change a second one.
                    return Err(MongoError::Unresolved(
                        "no document holds this write's id, and the filter is not by _id".into(),
                    ));
                }
            }
        }
        Ok(match operation {
            MongoOperation::Find { filter, options } => {
                let mut cursor = coll
                    .find(filter)
                    .optional(criteria, |a, c| a.selection_criteria(c))
                    .optional(options.sort, |a, s| a.sort(s))
                    .optional(options.skip, |a, s| a.skip(s))
                    .optional(options.limit, |a, l| a.limit(l))
                    .optional(options.projection, |a, p| a.projection(p))
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                (
                    MongoOutput::Documents(drain(&mut cursor, session).await?),
                    false,
                )
            }
            MongoOperation::FindOne { filter, options } => {
                let found = coll
                    .find_one(filter)
                    .optional(criteria, |a, c| a.selection_criteria(c))
                    .optional(options.sort, |a, s| a.sort(s))
                    .optional(options.skip, |a, s| a.skip(s))
                    .optional(options.projection, |a, p| a.projection(p))
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                (MongoOutput::Document(found), false)
            }
            MongoOperation::Aggregate { pipeline } => {
                let mut cursor = coll
                    .aggregate(pipeline)
                    .optional(criteria, |a, c| a.selection_criteria(c))
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                (
                    MongoOutput::Aggregated(drain(&mut cursor, session).await?),
                    false,
                )
            }
            MongoOperation::InsertOne { document } => {
                let mut doc = to_doc(&document)?;
                let ours = match &write_id {
                    Some(w) => stamp_insert(&mut doc, w)?,
                    None => false,
                };
                let raw = coll.clone_with_type::<Document>();
                match raw.insert_one(doc.clone()).session(&mut *session).await {
                    Ok(r) => (MongoOutput::Inserted(vec![r.inserted_id]), false),
                    Err(e) => match MongoError::from_driver(e) {
                        // The caller's own `_id` at a replay: the first attempt if the document
                        // there still carries this write id, or someone else's.
                        MongoError::DuplicateKey { message } if replay && !ours => {
                            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
                            let w = write_id.as_deref().unwrap_or_default();
                            let mine = raw
                                .find_one(doc! { "_id": id.clone(), field: w })
                                .session(&mut *session)
                                .await
                                .map_err(driver)?;
                            if mine.is_some() {
                                tracing::debug!(target: "ryw::mongodb", "replayed insert had already applied");
                                (MongoOutput::Inserted(vec![id]), true)
                            } else {
                                return Err(MongoError::Unresolved(format!(
                                    "duplicate key at a replay of an insert with its own _id, \
                                     and the document there is not this write's: {message}"
                                )));
                            }
                        }
                        // Only this write can have inserted a document with its own id.
                        MongoError::DuplicateKey { .. } if ours => (
                            MongoOutput::Inserted(vec![doc
                                .get("_id")
                                .cloned()
                                .unwrap_or(Bson::Null)]),
                            true,
                        ),
                        other => return Err(other),
                    },
                }
            }
            MongoOperation::InsertMany { documents } => {
                let mut docs = Vec::with_capacity(documents.len());
                let mut ours = true;
                for (i, d) in documents.iter().enumerate() {
                    let mut doc = to_doc(d)?;
                    match (&write_id, doc.contains_key("_id")) {
                        (Some(w), false) => {
                            doc.insert("_id", format!("{w}/{i}"));
                        }
                        _ => ours = false,
                    }
                    docs.push(doc);
                }
                let ids: Vec<Bson> = docs
                    .iter()
                    .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                    .collect();
                let raw = coll.clone_with_type::<Document>();
                match raw
                    .insert_many(docs)
                    .ordered(false)
                    .session(&mut *session)
                    .await
                {
                    Ok(_) => (MongoOutput::Inserted(ids), false),
                    Err(e) => {
                        let only_own_duplicates = ours
                            && matches!(&*e.kind, mongodb::error::ErrorKind::InsertMany(m)
                                if m.write_concern_error.is_none()
                                    && m.write_errors.as_ref().is_some_and(|w| w.iter().all(|w| w.code == 11000)));
                        if only_own_duplicates {
                            (MongoOutput::Inserted(ids), true)
                        } else {
                            return Err(driver(e));
                        }
                    }
                }
            }
            op @ (MongoOperation::UpdateOne { .. } | MongoOperation::UpdateMany { .. }) => {
                let (many, filter, update, upsert) = match op {
                    MongoOperation::UpdateMany {
                        filter,
                        update,
                        upsert,
                    } => (true, filter, update, upsert),
                    MongoOperation::UpdateOne {
                        filter,
                        update,
                        upsert,
                    } => (false, filter, update, upsert),
                    _ => unreachable!("matched above"),
                };
                // A replayed upsert never inserts: see `upsert_at_replay`.
                let upsert_now = upsert && !(replay && write_id.is_some());
                let (filter, update) = stamp_update(filter, update, write_id.as_deref())?;
                let r = if many {
                    coll.update_many(filter, update)
                        .upsert(upsert_now)
                        .session(&mut *session)
                        .await
                } else {
                    coll.update_one(filter, update)
                        .upsert(upsert_now)
                        .session(&mut *session)
                        .await
                };
                let r = match self.upserted_already(session, r, &write_id).await? {
                    Ok(r) => r,
                    Err(done) => return Ok(done),
                };
                // Nothing matched and nothing inserted: an earlier attempt may have applied.
                let replayed = match &write_id {
                    Some(w) if r.matched_count == 0 && r.upserted_id.is_none() => {
                        self.already_applied(session, w).await?
                    }
                    _ => false,
                };
                if upsert && replay && r.matched_count == 0 && !replayed {
                    return Err(upsert_at_replay());
                }
                (
                    MongoOutput::Updated {
                        matched: r.matched_count,
                        modified: r.modified_count,
                        upserted: r.upserted_id,
                    },
                    replayed,
                )
            }
            MongoOperation::ReplaceOne {
                filter,
                replacement,
                upsert,
            } => {
                let mut doc = to_doc(&replacement)?;
                let filter = match &write_id {
                    Some(w) => stamp_replacement(&mut doc, filter, w),
                    None => filter,
                };
                let upsert_now = upsert && !(replay && write_id.is_some());
                let raw = coll.clone_with_type::<Document>();
                let r = raw
                    .replace_one(filter, doc)
                    .upsert(upsert_now)
                    .session(&mut *session)
                    .await;
                let r = match self.upserted_already(session, r, &write_id).await? {
                    Ok(r) => r,
                    Err(done) => return Ok(done),
                };
                // Nothing matched and nothing inserted: an earlier attempt may have applied.
                let replayed = match &write_id {
                    Some(w) if r.matched_count == 0 && r.upserted_id.is_none() => {
                        self.already_applied(session, w).await?
                    }
                    _ => false,
                };
                if upsert && replay && r.matched_count == 0 && !replayed {
                    return Err(upsert_at_replay());
                }
                (
                    MongoOutput::Updated {
                        matched: r.matched_count,
                        modified: r.modified_count,
                        upserted: r.upserted_id,
                    },
                    replayed,
                )
            }
            MongoOperation::DeleteOne { filter } => {
                let only_id = filter.len() == 1 && names_one_by_id(&filter);
                let r = coll
                    .delete_one(filter)
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                if replay && r.deleted_count == 0 && !only_id {
                    // Gone: deleted by the first attempt, or by someone else, and whether the
                    // caller's other conditions held for that delete is unknown. (By `_id` alone
                    // the document is gone either way: nothing is claimed, `Deleted(0)`.)
                    return Err(MongoError::Unresolved(
                        "the document to delete is gone at a replay".into(),
                    ));
                }
                (MongoOutput::Deleted(r.deleted_count), false)
            }
            MongoOperation::DeleteMany { filter } => {
                let r = coll
                    .delete_many(filter)
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                (MongoOutput::Deleted(r.deleted_count), false)
            }
            MongoOperation::BulkWrite { writes } if bulk_refusal(&writes).is_some() => {
                return Err(MongoError::Invalid(
                    bulk_refusal(&writes).unwrap_or_default().into(),
                ));
            }
            MongoOperation::BulkWrite { writes } => match (&write_id, replay) {
                // A replay resolves each write as its own replay would, in order.
                (Some(w), true) => {
                    let mut outputs = Vec::with_capacity(writes.len());
                    let mut replayed = false;
                    for (i, op) in writes.into_iter().enumerate() {
                        let one =
                            Box::pin(self.run(session, op, None, Some(format!("{w}/{i}")), true));
                        match one.await {
                            Ok((output, r)) => {
                                replayed |= r;
                                outputs.push(output);
                            }
                            Err(e) => return Err(stopped_at(i, e)),
                        }
                    }
                    (MongoOutput::Bulk(outputs), replayed)
                }
                _ => (
                    self.bulk(session, writes, write_id.as_deref()).await?,
                    false,
                ),
            },
            MongoOperation::FindOneAndUpdate { filter, update } => {
                let (filter_w, update) = stamp_update(filter, update, write_id.as_deref())?;
                let found = coll
                    .find_one_and_update(filter_w, update)
                    .return_document(ReturnDocument::After)
                    .session(&mut *session)
                    .await
                    .map_err(driver)?;
                match (found, &write_id) {
                    (Some(d), _) => (MongoOutput::Document(Some(d)), false),
                    (None, Some(w)) => {
                        // A replay: return the document this write already updated.
                        let done = coll
                            .find_one(doc! { field: w.as_str() })
                            .selection_criteria(SelectionCriteria::ReadPreference(
                                ReadPreference::Primary,
                            ))
                            .session(&mut *session)
                            .await
                            .map_err(driver)?;
                        let replayed = done.is_some();
                        (MongoOutput::Document(done), replayed)
                    }
                    (None, None) => (MongoOutput::Document(None), false),
                }
            }
        })
    }
}

/// One write of a `bulk_write` as the driver's model, stamped with `write_id` (`<write id>/<i>`)
/// as the same write sent alone would be.
fn model<T: Serialize>(
    namespace: &Namespace,
    operation: MongoOperation<T>,
    write_id: Option<&str>,
) -> Result<WriteModel, MongoError> {
    let ns = namespace.clone();
    Ok(match operation {
        MongoOperation::InsertOne { document } => {
            let mut doc = to_doc(&document)?;
            if let Some(w) = write_id {
                stamp_insert(&mut doc, w)?;
            }
            InsertOneModel::builder()
                .namespace(ns)
                .document(doc)
                .build()
                .into()
        }
        MongoOperation::UpdateOne {
            filter,
            update,
            upsert,
        } => {
            let (filter, update) = stamp_update(filter, update, write_id)?;
            let m = UpdateOneModel::builder().namespace(ns).filter(filter);
            m.update(update).upsert(upsert).build().into()
        }
        MongoOperation::UpdateMany {
            filter,
            update,
            upsert,
        } => {
            let (filter, update) = stamp_update(filter, update, write_id)?;
            let m = UpdateManyModel::builder().namespace(ns).filter(filter);
            m.update(update).upsert(upsert).build().into()
        }
        MongoOperation::ReplaceOne {
            filter,
            replacement,
            upsert,
        } => {
            let mut doc = to_doc(&replacement)?;
            let filter = match write_id {
                Some(w) => stamp_replacement(&mut doc, filter, w),
                None => filter,
            };
            let m = ReplaceOneModel::builder().namespace(ns).filter(filter);
            m.replacement(doc).upsert(upsert).build().into()
        }
        MongoOperation::DeleteOne { filter } => DeleteOneModel::builder()
            .namespace(ns)
            .filter(filter)
            .build()
            .into(),
        MongoOperation::DeleteMany { filter } => DeleteManyModel::builder()
            .namespace(ns)
            .filter(filter)
            .build()
            .into(),
        other => {
            return Err(MongoError::Invalid(format!(
                "bulk_write does not take {}",
                other.name()
            )))
        }
    })
}

/// An update's filter and update document, stamped with `write_id` when there is one.
fn stamp_update(
    filter: Document,
    update: Document,
    write_id: Option<&str>,
) -> Result<(Document, Document), MongoError> {
    Ok(match write_id {
        Some(w) => (
            not_yet(filter, WRITE_ID_FIELD, w),
            push_write_id(update, WRITE_ID_FIELD, w)?,
        ),
        None => (filter, update),
    })
}

/// The error of an ordered `bulk_write`. A write error at the first write: its own error, nothing
/// applied. At a later write: the writes before it applied, so the bulk is `Unresolved` (never
/// replayed as a whole: the same write would fail again). Otherwise the failure of the command
/// itself (a lost connection, a write concern error), which the layer retries as a replay.
fn bulk_error(e: mongodb::error::Error) -> MongoError {
    let ErrorKind::BulkWrite(b) = &*e.kind else {
        return MongoError::from_driver(e);
    };
    if let Some((&k, w)) = b.write_errors.iter().min_by_key(|(k, _)| **k) {
        let own = if w.code == 11000 {
            MongoError::DuplicateKey {
                message: w.message.clone(),
            }
        } else {
            MongoError::Command {
                code: w.code,
                name: w.code_name.clone().unwrap_or_default(),
                message: w.message.clone(),
                labels: Vec::new(),
            }
        };
        return stopped_at(k, own);
    }
    let source = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<mongodb::error::Error>())
        .cloned();
    if let Some(source) = source {
        return MongoError::from_driver(source);
    }
    match b.write_concern_errors.first() {
        Some(w) => MongoError::WriteConcern {
            code: w.code,
            message: w.message.clone(),
        },
        None => MongoError::Other(format!("bulk_write failed: {b:?}")),
    }
}

/// The error of write `i` of an ordered `bulk_write`: as it is for the first write, or when
/// retrying may help (the layer replays the bulk, and each write applied is recognised);
/// otherwise the writes before it applied and it will fail again: `Unresolved`.
fn stopped_at(i: usize, error: MongoError) -> MongoError {
    if i == 0 || error.is_transient() || matches!(error, MongoError::Unresolved(_)) {
        return error;
    }
    MongoError::Unresolved(format!(
        "bulk_write stopped at write {i}, after writes 0 to {} applied: {error}",
        i - 1
    ))
}

/// A replayed upsert that found neither its write id nor a document its filter matches. Its first
/// attempt either never applied, or inserted a document another session has deleted since:
/// inserting now could apply the write twice, so nothing is inserted.
fn upsert_at_replay() -> MongoError {
    MongoError::Unresolved(
        "a replayed upsert found neither its write id nor a document to update: \
         its first attempt may have inserted a document deleted since"
            .into(),
    )
}

/// Applies a builder step only when a value is present.
trait Optional: Sized {
    fn optional<V>(self, value: Option<V>, f: impl FnOnce(Self, V) -> Self) -> Self {
        match value {
            Some(v) => f(self, v),
            None => self,
        }
    }
}

impl<A> Optional for A {}
