//! The ScyllaDB mapping of the session concepts.

use crate::error::ScyllaError;
use crate::request::{RequestKind, ScyllaRequest};
use crate::service::ScyllaResponse;
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, WriteStamp};
use ryw::clock::HybridTimestamp;
use ryw::conflict::Conflict;
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::version::{ScopeKey, StoreId, Version};
use scylla::statement::Consistency;
use std::sync::Arc;

/// The store id ScyllaDB scopes use unless configured.
pub const SCYLLA_STORE: StoreId = StoreId::new(3);

/// The ScyllaDB [`StoreAdapter`]:
///
/// - writes carry the session's hybrid clock reading as their timestamp (`USING TIMESTAMP` via
///   the driver's `set_timestamp`), the same on every attempt, at the write consistency
///   (`LOCAL_QUORUM` by default); lightweight transactions keep Scylla's own timestamp;
/// - reads run at the cheap consistency (`LOCAL_ONE` by default); the fence verifies the
///   `WRITETIME` of the tracked column against the session's high-water mark for the partition,
///   and escalates to the strong consistency (`LOCAL_QUORUM`) on a miss;
/// - non-idempotent writes and lightweight transactions are never replayed after an ambiguous
///   failure; `[applied] = false` is a conflict with the current row.
///
/// An escalated read is verified like a cheap one: it is guaranteed when it shows the required
/// write time (or no write time: a deleted row), and stays `Pending` otherwise. The strong level
/// and the write level must overlap (`LOCAL_QUORUM` and `LOCAL_QUORUM`, the defaults) for the
/// escalation to find the write.
///
/// After a lightweight transaction the session requires its own clock reading of the partition,
/// since Scylla assigns the transaction's timestamp from the coordinator's clock: when that clock
/// runs behind the client's, the next read of the partition escalates and may report `Pending`
/// although the transaction applied.
///
/// Use it with [`ryw::FenceConfig::verify_then_escalate`]`(0, ..)` to re-read at the strong
/// level on the first miss, or [`ryw::FenceConfig::escalate`] to read strongly whenever the
/// session has a live fence.
#[derive(Clone, Debug)]
pub struct ScyllaAdapter {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    store: StoreId,
    read: Consistency,
    strong: Consistency,
    write: Consistency,
}

impl Default for ScyllaAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl ScyllaAdapter {
    /// The defaults: store id 3, reads at `LOCAL_ONE`, strong reads and writes at `LOCAL_QUORUM`.
    pub fn new() -> Self {
        ScyllaAdapter {
            config: Arc::new(Config {
                store: SCYLLA_STORE,
                read: Consistency::LocalOne,
                strong: Consistency::LocalQuorum,
                write: Consistency::LocalQuorum,
            }),
        }
    }

    /// The configuration, copied first if a clone shares it: configuring one adapter never
    /// changes another.
    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The store id of this cluster (several clusters in one session need distinct ids).
    pub fn store_id(mut self, store: StoreId) -> Self {
        self.config().store = store;
        self
    }

    /// The consistency of cheap reads (default `LOCAL_ONE`; `ONE` across datacenters).
    pub fn read_consistency(mut self, c: Consistency) -> Self {
        self.config().read = c;
        self
    }

    /// The consistency of escalated reads (default `LOCAL_QUORUM`).
    pub fn strong_consistency(mut self, c: Consistency) -> Self {
        self.config().strong = c;
        self
    }

    /// The consistency of writes (default `LOCAL_QUORUM`).
    pub fn write_consistency(mut self, c: Consistency) -> Self {
        self.config().write = c;
        self
    }

    fn scopes_of<'a>(&'a self, request: &'a ScyllaRequest) -> impl Iterator<Item = ScopeKey> + 'a {
        let store = self.config.store;
        request
            .partitions
            .iter()
            .map(move |p| ScopeKey::new(store, p))
    }
}

impl StoreAdapter for ScyllaAdapter {
    type Request = ScyllaRequest;
    type Response = ScyllaResponse;
    type Error = ScyllaError;

    fn store(&self) -> StoreId {
        self.config.store
    }

    fn operation(&self, request: &ScyllaRequest) -> Operation {
        match request.kind {
            RequestKind::Read { .. } => Operation::Read,
            RequestKind::Write if request.idempotent => Operation::Write(Replay::Safe),
            RequestKind::Write | RequestKind::Conditional => Operation::Write(Replay::Never),
        }
    }

    fn scopes(&self, request: &ScyllaRequest, scopes: &mut Scopes) {
        for scope in self.scopes_of(request) {
            scopes.push(scope);
        }
    }

    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new().strong_reads(true)
    }

    fn stamp_write(&self, request: &mut ScyllaRequest, stamp: &WriteStamp<'_>) {
        request.stamp = Some((stamp.write_id, stamp.timestamp.get()));
        request.consistency = Some(self.config.write);
    }

    fn apply_fence(&self, request: &mut ScyllaRequest, _: &ReadFence, strategy: FenceStrategy) {
        request.consistency = Some(match strategy {
            FenceStrategy::Strong => self.config.strong,
            _ => self.config.read,
        });
    }

    fn observe(&self, request: &ScyllaRequest, response: &ScyllaResponse, observed: &mut Observed) {
        let version = match request.kind {
            // One row's tracked cell shows how far the replica is for that row. Several rows
            // prove nothing of each other: a replica can hold a later row's write and still
            // miss an earlier row's (a dropped mutation awaiting a hint or repair). A read of
            // several rows observes no version, so a requirement on its partition is met only
            // at the strong level (`LOCAL_QUORUM`, which overlaps every acknowledged write).
            RequestKind::Read { .. } if response.rows().is_some_and(|r| r.rows_num() > 1) => None,
            RequestKind::Read { .. } => response.writetime().and_then(|t| u64::try_from(t).ok()),
            // A write is visible from its own timestamp on; a lightweight transaction's
            // timestamp is Scylla's, so the session requires at least its own clock reading,
            // which at worst sends the next read of that partition to the strong level.
            RequestKind::Write | RequestKind::Conditional => request.stamp.map(|(_, t)| t),
        };
        if let Some(v) = version.filter(|v| *v > 0) {
            observed.clock(HybridTimestamp::new(v));
            for scope in self.scopes_of(request) {
                observed.push(scope, Version::new(v));
            }
        }
    }

    fn classify(&self, error: &ScyllaError) -> ErrorClass {
        error.class()
    }

    fn conflict(&self, request: &ScyllaRequest, error: &ScyllaError) -> Option<Conflict> {
        let ScyllaError::NotApplied { current } = error else {
            return None;
        };
        let (write_id, timestamp) = request.stamp?;
        let scope = self.scopes_of(request).next()?;
        // Scylla returns the current row, not its write time: the current version is unknown
        // (0); the row is attached for the resolver (`conflict.current_item::<Row>()`).
        let mut conflict = Conflict::new(
            scope,
            write_id,
            HybridTimestamp::new(timestamp),
            None,
            Version::new(0),
        );
        if let Some(row) = current {
            conflict.item = Some(Arc::new(scylla::value::Row {
                columns: row.columns.clone(),
            }));
        }
        Some(conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuring_a_clone_changes_only_the_clone() {
        // Before: configuring an adapter after cloning it panicked.
        let adapter = ScyllaAdapter::new();
        let other = adapter.clone().store_id(StoreId::new(9));
        assert_eq!(other.store(), StoreId::new(9));
        assert_eq!(adapter.store(), SCYLLA_STORE);
    }
}
