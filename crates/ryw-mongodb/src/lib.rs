//! MongoDB adapter for [ryw]: causal sessions whose cluster time and operation time travel
//! across processes in the session token.
//!
//! Per request, [`MongoService`] starts a causally consistent `ClientSession`, advances it to the
//! cluster time (the server-signed `$clusterTime` document, kept whole) and the operation time the
//! ryw session carries, so the driver sends `readConcern.afterClusterTime`; after the operation it
//! hands back the session's new `operationTime` and `$clusterTime`, which the layer records. A
//! second process given only the token reads its own writes.
//!
//! Reads and writes use majority read and write concern: causal sessions do not keep their
//! guarantees at `w: 1` or read concern `local` (a write acknowledged by one node can roll back,
//! and a read of local data can see what then rolls back). Reads may go to secondaries (the read
//! preference is configurable, secondary-preferred by default): the fence makes that safe. A read
//! the session has a requirement on always waits on the server for the operation time
//! (`afterClusterTime`), whatever the fence configuration's first strategy, unless it is
//! [`ryw::FenceConfig::strong`] (the primary): a reply's `operationTime` is computed as the reply
//! is built and can be later than the snapshot the read used, so it never verifies a read after
//! the fact ([`ryw::fence::Verification::ServerSideOnly`]). The server wait rests on the node
//! honouring `afterClusterTime` and applying its oplog in order.
//!
//! # Idempotency across processes
//!
//! Within a process the driver retries a retryable write once. Across processes ryw keys writes
//! by their `WriteId`: an inserted document without `_id` gets `_id: "<write id>"` (insert_many:
//! `"<write id>/<index>"`), so a replay meets a duplicate key on its own id and is reported as
//! applied; an update or find-one-and-update appends its write id to the bounded list
//! `ryw_write_ids` of the documents it changes (`$push` with `$slice`, the last
//! [`RECENT_WRITE_IDS`]) and excludes documents whose list already holds it, so a replay changes
//! nothing more, even when other sessions updated the document in between, and is reported as
//! applied only when a document holds that very id. Write ids are unique per write
//! ([`ryw::WriteId`]), so two continuations of one token never take each other's write for their
//! own.
//!
//! What a replay cannot recognise, precisely: a replace starts the list afresh with its own id, so
//! an update whose response was lost, followed by another session's *replace* of the same
//! document, then by the update's retry, applies the update again (it reads as a new update of the
//! replaced document); likewise when [`RECENT_WRITE_IDS`] or more updates reached the document in
//! between. A `delete_one` by `_id` equality is idempotent as it is; one by any other filter
//! (including `{_id: {$in: [..]}}`) is never replayed; a `delete_many` replay deletes documents
//! that came to match its filter in between.
//!
//! # Sessions' records
//!
//! [`MongoRecordStore`] keeps sessions' records ([`ryw::record`]) in a collection: the exact
//! entries a session coarsened out of its token, for the stores with one scope per item or
//! partition that the session also uses.
//!
//! # Example
//!
//! ```no_run
//! use mongodb::bson::doc;
//! use ryw::{FenceConfig, ReadYourWritesLayer, Session};
//! use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run(client: mongodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let adapter = MongoAdapter::new();
//! let mut posts = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(adapter.documents()).fence(FenceConfig::server_wait()))
//!     .service(MongoService::<mongodb::bson::Document>::new(&client, "app", "posts", &adapter));
//!
//! let session = Session::new();
//! let insert = MongoRequest::insert_one(doc! { "title": "hello" });
//! posts.ready().await?.call(session.request(insert)).await?;
//! let find = MongoRequest::find(doc! { "title": "hello" });
//! let read = posts.ready().await?.call(session.request(find)).await?;
//! assert_eq!(read.get_ref().documents().len(), 1);
//! # Ok(()) }
//! ```
//!
//! [ryw]: https://docs.rs/ryw

pub mod error;
pub mod record;
pub mod revocation;
mod service;

#[cfg(feature = "outbox")]
mod outbox;
pub use error::MongoError;
pub use record::MongoRecordStore;
pub use revocation::MongoRevocations;
pub use service::{MongoFuture, MongoService, RECENT_WRITE_IDS};

use mongodb::bson::{Bson, Document, Timestamp};
use mongodb::options::ReadPreference;
use mongodb::ClusterTime;
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, Verification};
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ScopeKey, StoreId, Version, WriteId};
use std::sync::Arc;

/// Packs a BSON timestamp into a ryw version (seconds in the high half, increment in the low).
pub fn version_of(ts: Timestamp) -> Version {
    Version::new((u64::from(ts.time) << 32) | u64::from(ts.increment))
}

/// Unpacks [`version_of`].
pub fn timestamp_of(v: Version) -> Timestamp {
    Timestamp {
        time: (v.get() >> 32) as u32,
        increment: v.get() as u32,
    }
}

/// One MongoDB operation, with typed documents (`T`) as in the driver.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MongoOperation<T> {
    /// `find`.
    Find {
        /// The filter.
        filter: Document,
    },
    /// `find_one`.
    FindOne {
        /// The filter.
        filter: Document,
    },
    /// `aggregate` (a read: pipelines with `$out` or `$merge` are not supported).
    Aggregate {
        /// The pipeline.
        pipeline: Vec<Document>,
    },
    /// `insert_one`.
    InsertOne {
        /// The document.
        document: T,
    },
    /// `insert_many` (unordered, so a replay inserts what is missing).
    InsertMany {
        /// The documents.
        documents: Vec<T>,
    },
    /// `update_one` (an update document with operators).
    UpdateOne {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
    },
    /// `update_many`.
    UpdateMany {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
    },
    /// `replace_one`.
    ReplaceOne {
        /// The filter.
        filter: Document,
        /// The replacement.
        replacement: T,
    },
    /// `delete_one`.
    DeleteOne {
        /// The filter.
        filter: Document,
    },
    /// `delete_many`.
    DeleteMany {
        /// The filter.
        filter: Document,
    },
    /// `find_one_and_update` (returns the document after the update).
    FindOneAndUpdate {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
    },
}

/// A request to [`MongoService`]: the operation plus what the session layer stamped on it.
#[derive(Clone, Debug)]
pub struct MongoRequest<T> {
    pub(crate) operation: MongoOperation<T>,
    pub(crate) write_id: Option<WriteId>,
    pub(crate) after: Option<Timestamp>,
    pub(crate) cluster_time: Option<Arc<[u8]>>,
    pub(crate) primary: bool,
    /// Sent again after an attempt that may have applied.
    pub(crate) replay: bool,
}

impl<T> From<MongoOperation<T>> for MongoRequest<T> {
    fn from(operation: MongoOperation<T>) -> Self {
        MongoRequest {
            operation,
            write_id: None,
            after: None,
            cluster_time: None,
            primary: false,
            replay: false,
        }
    }
}

impl<T> MongoRequest<T> {
    /// `find(filter)`.
    pub fn find(filter: Document) -> Self {
        MongoOperation::Find { filter }.into()
    }
    /// `find_one(filter)`.
    pub fn find_one(filter: Document) -> Self {
        MongoOperation::FindOne { filter }.into()
    }
    /// `aggregate(pipeline)`.
    pub fn aggregate(pipeline: Vec<Document>) -> Self {
        MongoOperation::Aggregate { pipeline }.into()
    }
    /// `insert_one(document)`.
    pub fn insert_one(document: T) -> Self {
        MongoOperation::InsertOne { document }.into()
    }
    /// `insert_many(documents)`.
    pub fn insert_many(documents: Vec<T>) -> Self {
        MongoOperation::InsertMany { documents }.into()
    }
    /// `update_one(filter, update)`.
    pub fn update_one(filter: Document, update: Document) -> Self {
        MongoOperation::UpdateOne { filter, update }.into()
    }
    /// `update_many(filter, update)`.
    pub fn update_many(filter: Document, update: Document) -> Self {
        MongoOperation::UpdateMany { filter, update }.into()
    }
    /// `replace_one(filter, replacement)`.
    pub fn replace_one(filter: Document, replacement: T) -> Self {
        MongoOperation::ReplaceOne {
            filter,
            replacement,
        }
        .into()
    }
    /// `delete_one(filter)`.
    pub fn delete_one(filter: Document) -> Self {
        MongoOperation::DeleteOne { filter }.into()
    }
    /// `delete_many(filter)`.
    pub fn delete_many(filter: Document) -> Self {
        MongoOperation::DeleteMany { filter }.into()
    }
    /// `find_one_and_update(filter, update)`.
    pub fn find_one_and_update(filter: Document, update: Document) -> Self {
        MongoOperation::FindOneAndUpdate { filter, update }.into()
    }

    /// The operation.
    pub fn operation(&self) -> &MongoOperation<T> {
        &self.operation
    }

    /// The write id stamped by the session layer.
    pub fn write_id(&self) -> Option<WriteId> {
        self.write_id
    }

    /// The operation time the read waits for (`afterClusterTime`), if fenced by server wait.
    pub fn after_cluster_time(&self) -> Option<Timestamp> {
        self.after
    }
}

impl<T> MongoOperation<T> {
    /// The command's name (`find`, `insert_one`, ...), as `db.operation.name`.
    pub fn name(&self) -> &'static str {
        match self {
            MongoOperation::Find { .. } => "find",
            MongoOperation::FindOne { .. } => "find_one",
            MongoOperation::Aggregate { .. } => "aggregate",
            MongoOperation::InsertOne { .. } => "insert_one",
            MongoOperation::InsertMany { .. } => "insert_many",
            MongoOperation::UpdateOne { .. } => "update_one",
            MongoOperation::UpdateMany { .. } => "update_many",
            MongoOperation::ReplaceOne { .. } => "replace_one",
            MongoOperation::DeleteOne { .. } => "delete_one",
            MongoOperation::DeleteMany { .. } => "delete_many",
            MongoOperation::FindOneAndUpdate { .. } => "find_one_and_update",
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MongoOutput<T> {
    /// `find` (all batches).
    Documents(Vec<T>),
    /// `find_one`, `find_one_and_update`.
    Document(Option<T>),
    /// `aggregate`.
    Aggregated(Vec<Document>),
    /// `insert_one`, `insert_many`: the ids.
    Inserted(Vec<Bson>),
    /// Updates and replaces.
    Updated {
        /// Documents matched.
        matched: u64,
        /// Documents modified.
        modified: u64,
    },
    /// Deletes.
    Deleted(u64),
}

/// A response of [`MongoService`]: the output plus the session's new times.
#[derive(Clone, Debug)]
pub struct MongoResponse<T> {
    pub(crate) output: MongoOutput<T>,
    pub(crate) operation_time: Option<Timestamp>,
    pub(crate) cluster_time: Option<ClusterTime>,
    pub(crate) replayed: bool,
}

impl<T> MongoResponse<T> {
    /// The output.
    pub fn output(&self) -> &MongoOutput<T> {
        &self.output
    }

    /// Takes the output out.
    pub fn into_output(self) -> MongoOutput<T> {
        self.output
    }

    /// The documents of a `find` (empty for other operations).
    pub fn documents(&self) -> &[T] {
        match &self.output {
            MongoOutput::Documents(d) => d,
            _ => &[],
        }
    }

    /// The operation time the server reported.
    pub fn operation_time(&self) -> Option<Timestamp> {
        self.operation_time
    }

    /// The cluster time the server reported (signed).
    pub fn cluster_time(&self) -> Option<&ClusterTime> {
        self.cluster_time.as_ref()
    }

    /// True when a replayed write found that its earlier attempt had applied.
    pub fn was_replayed(&self) -> bool {
        self.replayed
    }
}

#[derive(Clone, Debug)]
pub(crate) struct MongoConfig {
    pub(crate) store: StoreId,
    pub(crate) scope: ScopeKey,
    pub(crate) read_preference: ReadPreference,
    pub(crate) write_id_field: String,
}

/// Maps the session concepts onto MongoDB: the whole deployment is one scope (cluster time is
/// global), versioned by operation time; the signed `$clusterTime` is the session's store
/// context. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MongoAdapter {
    pub(crate) config: Arc<MongoConfig>,
}

impl Default for MongoAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl MongoAdapter {
    /// Store id 1, reads secondary-preferred, recent write ids in `ryw_write_ids`.
    pub fn new() -> Self {
        let store = StoreId::new(1);
        MongoAdapter {
            config: Arc::new(MongoConfig {
                store,
                scope: Self::deployment_scope(store),
                read_preference: ReadPreference::SecondaryPreferred {
                    options: Default::default(),
                },
                write_id_field: "ryw_write_ids".into(),
            }),
        }
    }

    fn deployment_scope(store: StoreId) -> ScopeKey {
        ScopeKey::new(store, b"mongodb:deployment")
    }

    /// The configuration, copied first if a clone shares it: configuring one adapter never
    /// changes another.
    fn config(&mut self) -> &mut MongoConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Another store id (a second deployment in one session; default 1). The same name on every
    /// adapter.
    pub fn store_id(mut self, store: StoreId) -> Self {
        let config = self.config();
        config.store = store;
        config.scope = Self::deployment_scope(store);
        self
    }

    /// Where cheap reads go (default secondary-preferred; escalation reads the primary).
    pub fn read_preference(mut self, read_preference: ReadPreference) -> Self {
        self.config().read_preference = read_preference;
        self
    }

    /// The former constructor: `MongoAdapter::new().store_id(store).read_preference(..)`.
    #[deprecated(note = "use `MongoAdapter::new().store_id(..).read_preference(..)`")]
    pub fn with_store(store: StoreId, read_preference: ReadPreference) -> Self {
        Self::new().store_id(store).read_preference(read_preference)
    }

    /// The deployment's scope.
    pub fn scope(&self) -> ScopeKey {
        self.config.scope
    }
}

impl<T: Clone + Send + Sync + 'static> StoreAdapter for MongoAdapterFor<T> {
    type Request = MongoRequest<T>;
    type Response = MongoResponse<T>;
    type Error = MongoError;

    fn store(&self) -> StoreId {
        self.adapter.config.store
    }

    fn operation(&self, request: &MongoRequest<T>) -> Operation {
        match request.operation {
            MongoOperation::Find { .. }
            | MongoOperation::FindOne { .. }
            | MongoOperation::Aggregate { .. } => Operation::Read,
            // A deleted document keeps no write id: a replay of `delete_one` is recognisable only
            // when its filter names one document by `_id`; otherwise a replay could delete a
            // second document, so an ambiguous failure is reported, not replayed.
            MongoOperation::DeleteOne { ref filter } if !names_one_by_id(filter) => {
                Operation::Write(Replay::Never)
            }
            _ => Operation::Write(Replay::Safe),
        }
    }

    fn prepare_replay(&self, request: &mut MongoRequest<T>) {
        request.replay = true;
    }

    fn scopes(&self, _request: &MongoRequest<T>, scopes: &mut Scopes) {
        scopes.push(self.adapter.config.scope);
    }

    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new()
            .server_wait(true)
            .strong_reads(true)
            .global_versions(true)
    }

    fn verification(&self, _request: &MongoRequest<T>) -> Verification {
        // A reply's `operationTime` is computed as the reply is built (the majority commit point
        // for majority reads), which can be later than the snapshot the read used: it cannot show
        // that the read reflects a write. Only the server can: `afterClusterTime` (or the
        // primary).
        Verification::ServerSideOnly
    }

    fn stamp_write(&self, request: &mut MongoRequest<T>, stamp: Stamp, fence: &ReadFence) {
        request.write_id = Some(stamp.write_id);
        // Writes follow reads: the write's session gossips the cluster time the session has seen.
        request.cluster_time = fence.context().map(|c| c.bytes.clone());
        let v = fence.max_version();
        request.after = (v > Version::ZERO).then(|| timestamp_of(v));
    }

    fn apply_fence(
        &self,
        request: &mut MongoRequest<T>,
        fence: &ReadFence,
        strategy: FenceStrategy,
    ) {
        request.cluster_time = fence.context().map(|c| c.bytes.clone());
        match strategy {
            FenceStrategy::ServerWait => request.after = Some(timestamp_of(fence.max_version())),
            FenceStrategy::Strong => {
                request.primary = true;
                request.after = Some(timestamp_of(fence.max_version()));
            }
            _ => {}
        }
    }

    fn observe(
        &self,
        _request: &MongoRequest<T>,
        response: &MongoResponse<T>,
        observed: &mut Observed,
    ) {
        if let Some(ts) = response.operation_time {
            observed.push(self.adapter.config.scope, version_of(ts));
        }
        if let Some(ct) = &response.cluster_time {
            if let Ok(doc) = mongodb::bson::to_document(ct) {
                let version = doc
                    .get_timestamp("clusterTime")
                    .map(version_of)
                    .unwrap_or(Version::ZERO);
                let mut bytes = Vec::new();
                if doc.to_writer(&mut bytes).is_ok() {
                    observed.context(version, bytes);
                }
            }
        }
    }

    fn classify(&self, error: &MongoError) -> ErrorClass {
        error.class()
    }
}

/// [`MongoAdapter`] for documents of type `T` (what [`ryw::ReadYourWritesLayer`] takes for a
/// `MongoService<T>`): `MongoAdapter::new().documents::<Post>()`.
#[derive(Debug)]
pub struct MongoAdapterFor<T> {
    adapter: MongoAdapter,
    _documents: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for MongoAdapterFor<T> {
    fn clone(&self) -> Self {
        MongoAdapterFor {
            adapter: self.adapter.clone(),
            _documents: std::marker::PhantomData,
        }
    }
}

impl MongoAdapter {
    /// The adapter for a collection of `T`.
    pub fn documents<T>(&self) -> MongoAdapterFor<T> {
        MongoAdapterFor {
            adapter: self.clone(),
            _documents: std::marker::PhantomData,
        }
    }
}

impl<T> MongoAdapterFor<T> {
    /// The untyped adapter.
    pub fn adapter(&self) -> &MongoAdapter {
        &self.adapter
    }
}

pub(crate) fn cluster_time_from(bytes: &[u8]) -> Option<ClusterTime> {
    let doc = Document::from_reader(bytes).ok()?;
    mongodb::bson::from_document(doc).ok()
}

/// Whether `filter` names one document by `_id` equality (`{_id: 7}`, `{_id: {a: 1}}`), not by an
/// operator that may match several (`{_id: {$in: [..]}}`, `{_id: {$gt: ..}}`). Only such a
/// filter lets a replay tell the document its first attempt changed from another.
pub(crate) fn names_one_by_id(filter: &mongodb::bson::Document) -> bool {
    match filter.get("_id") {
        Some(mongodb::bson::Bson::Document(d)) => !d.keys().any(|k| k.starts_with('$')),
        Some(_) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_id_equality_names_one_document() {
        use mongodb::bson::doc;
        assert!(names_one_by_id(&doc! { "_id": 7 }));
        assert!(names_one_by_id(&doc! { "_id": { "a": 1 }, "k": 2 }));
        assert!(!names_one_by_id(&doc! { "_id": { "$in": [1, 2] } }));
        assert!(!names_one_by_id(&doc! { "_id": { "$gt": 1 }, "k": 2 }));
        assert!(!names_one_by_id(&doc! { "k": 2 }));
        let delete = |filter| MongoRequest::<mongodb::bson::Document>::delete_one(filter);
        let adapter = MongoAdapter::new().documents::<mongodb::bson::Document>();
        assert_eq!(
            adapter.operation(&delete(doc! { "_id": { "$in": [1, 2] } })),
            Operation::Write(Replay::Never)
        );
        assert_eq!(
            adapter.operation(&delete(doc! { "_id": 1 })),
            Operation::Write(Replay::Safe)
        );
    }

    #[test]
    fn every_adapter_is_configured_the_same_way_and_a_clone_stays_as_it_was() {
        let adapter = MongoAdapter::new();
        let other = adapter
            .clone()
            .store_id(StoreId::new(7))
            .read_preference(ReadPreference::Primary);
        assert_eq!(other.config.store, StoreId::new(7));
        assert_eq!(
            other.scope(),
            ScopeKey::new(StoreId::new(7), b"mongodb:deployment")
        );
        assert_eq!(adapter.config.store, StoreId::new(1));
        assert!(matches!(
            adapter.config.read_preference,
            ReadPreference::SecondaryPreferred { .. }
        ));
        assert!(matches!(
            other.config.read_preference,
            ReadPreference::Primary
        ));
    }
}
