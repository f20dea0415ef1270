//! The [`StoreAdapter`] for MongoDB.

use crate::error::MongoError;
use crate::request::{
    names_one_by_id, upserts_by_other_than_id, MongoConfig, MongoOperation, MongoRequest,
    MongoResponse,
};
use mongodb::bson::{Document, Timestamp};
use mongodb::options::ReadPreference;
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, Verification};
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ScopeKey, StoreId, Version};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// The store id MongoDB scopes use unless configured ([`MongoAdapter::store_id`]): the
/// deployment's id in session tokens, and the store of its context (the signed `$clusterTime`).
pub const STORE_ID: StoreId = StoreId::new(1);

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

/// Maps the session concepts onto MongoDB: the whole deployment is one scope (cluster time is
/// global), versioned by operation time; the signed `$clusterTime` is the session's store
/// context. See the [crate docs](crate).
///
/// `T` is the collection's document type, as in [`MongoService<T>`](crate::MongoService):
/// [`MongoAdapter::new`] is the adapter for [`Document`]s, and
/// [`documents`](MongoAdapter::documents) gives the same adapter for another type
/// (`MongoAdapter::new().documents::<Post>()`). The adapter is given once, to the layer: it
/// attaches its configuration to every request ([`StoreAdapter::prepare`]), which the service
/// reads. Cheap to clone (the configuration is shared).
pub struct MongoAdapter<T = Document> {
    pub(crate) config: Arc<MongoConfig>,
    _documents: PhantomData<fn() -> T>,
}

impl<T> Clone for MongoAdapter<T> {
    fn clone(&self) -> Self {
        self.documents()
    }
}

impl<T> fmt::Debug for MongoAdapter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoAdapter")
            .field("config", &self.config)
            .finish()
    }
}

impl Default for MongoAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl MongoAdapter {
    /// The adapter for [`Document`]s: store id [`STORE_ID`], reads secondary-preferred, recent
    /// write ids in `ryw_write_ids`.
    pub fn new() -> Self {
        MongoAdapter {
            config: Arc::new(MongoConfig {
                store: STORE_ID,
                scope: deployment_scope(STORE_ID),
                read_preference: ReadPreference::SecondaryPreferred {
                    options: Default::default(),
                },
            }),
            _documents: PhantomData,
        }
    }
}

/// The scope of the whole deployment of `store`.
fn deployment_scope(store: StoreId) -> ScopeKey {
    ScopeKey::new(store, b"mongodb:deployment")
}

impl<T> MongoAdapter<T> {
    /// The same adapter (the same configuration) for a collection of `U`.
    pub fn documents<U>(&self) -> MongoAdapter<U> {
        MongoAdapter {
            config: self.config.clone(),
            _documents: PhantomData,
        }
    }

    /// The configuration, copied first if a clone shares it: configuring one adapter never
    /// changes another.
    fn config(&mut self) -> &mut MongoConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Another store id (a second deployment in one session; default [`STORE_ID`]). The same
    /// name on every adapter.
    pub fn store_id(mut self, store: StoreId) -> Self {
        let config = self.config();
        config.store = store;
        config.scope = deployment_scope(store);
        self
    }

    /// Where cheap reads go (default secondary-preferred; escalation reads the primary).
    pub fn read_preference(mut self, read_preference: ReadPreference) -> Self {
        self.config().read_preference = read_preference;
        self
    }

    /// The deployment's scope.
    pub fn scope(&self) -> ScopeKey {
        self.config.scope
    }
}

impl<T: Clone + Send + Sync + 'static> StoreAdapter for MongoAdapter<T> {
    type Request = MongoRequest<T>;
    type Response = MongoResponse<T>;
    type Error = MongoError;

    fn store(&self) -> StoreId {
        self.config.store
    }

    fn prepare(&self, request: &mut MongoRequest<T>) {
        request.config = Some(self.config.clone());
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
            // An upsert not by `_id`: a late first attempt after a replay would insert again.
            ref op if upserts_by_other_than_id(op) => Operation::Write(Replay::Never),
            MongoOperation::BulkWrite { ref writes }
                if writes.iter().any(|w| {
                    upserts_by_other_than_id(w)
                        || matches!(w, MongoOperation::DeleteOne { filter } if !names_one_by_id(filter))
                }) =>
            {
                Operation::Write(Replay::Never)
            }
            _ => Operation::Write(Replay::Safe),
        }
    }

    fn prepare_replay(&self, request: &mut MongoRequest<T>) {
        request.replay = true;
    }

    fn scopes(&self, _request: &MongoRequest<T>, scopes: &mut Scopes) {
        scopes.push(self.config.scope);
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
            observed.push(self.config.scope, version_of(ts));
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn only_an_id_equality_names_one_document() {
        assert!(names_one_by_id(&doc! { "_id": 7 }));
        assert!(names_one_by_id(&doc! { "_id": { "a": 1 }, "k": 2 }));
        assert!(!names_one_by_id(&doc! { "_id": { "$in": [1, 2] } }));
        assert!(!names_one_by_id(&doc! { "_id": { "$gt": 1 }, "k": 2 }));
        assert!(!names_one_by_id(&doc! { "k": 2 }));
        let delete = |filter| MongoRequest::<Document>::delete_one(filter);
        let adapter = MongoAdapter::new().documents::<Document>();
        assert_eq!(
            adapter.operation(&delete(doc! { "_id": { "$in": [1, 2] } })),
            Operation::Write(Replay::Never)
        );
        assert_eq!(
            adapter.operation(&delete(doc! { "_id": 1 })),
            Operation::Write(Replay::Safe)
        );
        // A bulk write is replayable when each of its writes is.
        let bulk = |filter| {
            MongoRequest::<Document>::bulk_write([
                MongoRequest::insert_one(doc! {}),
                MongoRequest::delete_one(filter),
            ])
        };
        assert_eq!(
            adapter.operation(&bulk(doc! { "k": 1 })),
            Operation::Write(Replay::Never)
        );
        assert_eq!(
            adapter.operation(&bulk(doc! { "_id": 1 })),
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
