//! The ScyllaDB mapping of the session concepts.

use crate::error::ScyllaError;
use crate::request::{RequestKind, ScyllaRequest, ScyllaScope};
use crate::service::ScyllaResponse;
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, Verification};
use ryw::clock::HybridTimestamp;
use ryw::conflict::Conflict;
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::version::{ScopeKey, StoreId, Version};
use scylla::statement::Consistency;
use std::sync::Arc;

/// The store id ScyllaDB scopes use unless configured.
pub const STORE_ID: StoreId = StoreId::new(3);

/// The ScyllaDB [`StoreAdapter`]:
///
/// - writes carry the session's hybrid clock reading as their timestamp (`USING TIMESTAMP` via
///   the driver's `set_timestamp`), the same on every attempt, at the write consistency
///   (`LOCAL_QUORUM` by default); lightweight transactions keep Scylla's own timestamp;
/// - every read the layer sends on the cheap path runs at the cheap consistency (`LOCAL_ONE` by
///   default), unless its statement carries a consistency of its own;
/// - a read of one row ([`ScyllaRequest::row`]) is verified by the `WRITETIME` of its tracked
///   column against what the session requires of that row, and re-read at the strong
///   consistency (`LOCAL_QUORUM`) on a miss;
/// - a read of a partition ([`ScyllaRequest::partition`]) cannot be verified (Scylla does not
///   replicate a partition in order, so no row's write time vouches for another row): when the
///   session has a requirement on the partition, it runs at the strong consistency up front;
/// - non-idempotent writes and lightweight transactions are never replayed after an ambiguous
///   failure; `[applied] = false` is a conflict with the current row.
///
/// # What a write time vouches for
///
/// Scylla resolves each cell by its write time (last write wins), so a replica whose cell shows
/// write time `t` holds the write made at `t`, or one after it, of that cell. That is the only
/// store property the fence rests on, and it vouches only for the cell read: the tracked column
/// should be one that every write of the row sets (the only value column, or an `updated_at`).
/// Each scope is credited only with what its own rows show:
///
/// | request | requirements it raises | what its fence checks |
/// |---|---|---|
/// | row write | the row; the partition | |
/// | partition write | the partition; every row read of it | |
/// | row read | the row (its write time); the partition (as seen) | the row's write time against the row and the partition's writes |
/// | partition read | the partition (its newest write time, as seen) | nothing on the cheap path: strong if required |
///
/// A page of a paged read ([`ScyllaRequest::page`]) is a read like any other: a page of one row
/// is verified by the row's write time, a page of a partition runs at the strong consistency
/// once the session has a requirement on the partition (which a first page read cheaply gives
/// it when it shows a write time, so a session's later pages of a partition are strong).
///
/// A partition read records its newest write time as a requirement of the partition (monotonic
/// reads of the partition), but not of the rows it returned, which it cannot tell apart.
///
/// An escalated read is checked like a cheap one: it is guaranteed when it shows the required
/// write time (or no write time: a deleted row), and stays `Pending` otherwise. The strong level
/// and the write level must overlap (`LOCAL_QUORUM` and `LOCAL_QUORUM`, the defaults) for the
/// escalation to find the write.
///
/// After a lightweight transaction the session requires its own clock reading of the scopes it
/// names, since Scylla assigns the transaction's timestamp from the coordinator's clock: when
/// that clock runs behind the client's, the next read escalates and may report `Pending`
/// although the transaction applied.
///
/// Use it with [`ryw::FenceConfig::verify_then_escalate`]`(0, ..)` to re-read at the strong
/// level on the first miss, or [`ryw::FenceConfig::strong`] to read strongly whenever the
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
    /// A write is visible from its own timestamp on; a lightweight transaction's timestamp is
    /// Scylla's, so the session requires at least its own clock reading, which at worst sends
    /// the next read of those scopes to the strong level.
    fn observe_write(&self, request: &ScyllaRequest, observed: &mut Observed) {
        let Some(v) = request.stamp.map(|s| s.timestamp.get()).filter(|t| *t > 0) else {
            return;
        };
        observed.clock(HybridTimestamp::new(v));
        let mut scopes = Scopes::new();
        self.scopes(request, &mut scopes);
        for scope in scopes.iter() {
            observed.push(scope, Version::new(v));
        }
    }

    /// The defaults: store id 3, reads at `LOCAL_ONE`, strong reads and writes at `LOCAL_QUORUM`.
    pub fn new() -> Self {
        ScyllaAdapter {
            config: Arc::new(Config {
                store: STORE_ID,
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

    /// The scopes of the session's state one request scope stands for: what a write raises, or
    /// what a read is fenced by.
    fn scope_keys(&self, scope: &ScyllaScope, write: bool, out: &mut Scopes) {
        let store = self.config.store;
        match (scope, write) {
            (ScyllaScope::Partition(p), true) => {
                out.push(partition_scope(store, p));
                out.push(partition_wide_scope(store, p));
            }
            (ScyllaScope::Partition(p), false) => out.push(partition_scope(store, p)),
            (
                ScyllaScope::Row {
                    partition,
                    clustering,
                },
                true,
            ) => {
                out.push(row_scope(store, partition, clustering));
                out.push(partition_scope(store, partition));
            }
            (
                ScyllaScope::Row {
                    partition,
                    clustering,
                },
                false,
            ) => {
                out.push(row_scope(store, partition, clustering));
                out.push(partition_wide_scope(store, partition));
            }
        }
    }

    /// The one row a read names, when it names exactly one row and nothing else: the only reads
    /// a write time can verify.
    fn single_row<'a>(&self, request: &'a ScyllaRequest) -> Option<(&'a [u8], &'a [u8])> {
        match (&request.kind, request.scopes.as_slice()) {
            (
                RequestKind::Read { .. },
                [ScyllaScope::Row {
                    partition,
                    clustering,
                }],
            ) => Some((partition, clustering)),
            _ => None,
        }
    }
}

/// The scope every write in partition `p` raises: what a partition read must show.
fn partition_scope(store: StoreId, p: &[u8]) -> ScopeKey {
    ScopeKey::new(store, &tagged(b'p', p, &[]))
}

/// The scope partition-wide writes of `p` raise: what every row read of `p` must show.
fn partition_wide_scope(store: StoreId, p: &[u8]) -> ScopeKey {
    ScopeKey::new(store, &tagged(b'w', p, &[]))
}

/// The scope of one row.
fn row_scope(store: StoreId, p: &[u8], c: &[u8]) -> ScopeKey {
    ScopeKey::new(store, &tagged(b'r', p, c))
}

/// `tag`, the partition key's length (4 bytes), the partition key, the clustering key: distinct
/// for distinct scopes whatever bytes the keys hold.
fn tagged(tag: u8, p: &[u8], c: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(5 + p.len() + c.len());
    name.push(tag);
    name.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
    name.extend_from_slice(p);
    name.extend_from_slice(c);
    name
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
        let write = !matches!(request.kind, RequestKind::Read { .. });
        for scope in &request.scopes {
            self.scope_keys(scope, write, scopes);
        }
    }

    fn prepare(&self, request: &mut ScyllaRequest) {
        // Every read the layer sends runs at a level the layer chose: the cheap one unless the
        // statement carries its own (the fence raises it to the strong one when it must).
        if let (RequestKind::Read { .. }, None) = (&request.kind, request.consistency) {
            if request.statement.consistency().is_none() {
                request.consistency = Some(self.config.read);
            }
        }
    }

    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new().strong_reads(true)
    }

    fn verification(&self, request: &ScyllaRequest) -> Verification {
        // A write time vouches only for the row it was read from (see the type's docs).
        match self.single_row(request) {
            Some(_) => Verification::Versions,
            None => Verification::ServerSideOnly,
        }
    }

    fn stamp_write(&self, request: &mut ScyllaRequest, stamp: Stamp, _: &ReadFence) {
        request.stamp = Some(stamp);
        request.consistency = Some(self.config.write);
    }

    fn apply_fence(&self, request: &mut ScyllaRequest, _: &ReadFence, strategy: FenceStrategy) {
        if strategy == FenceStrategy::Strong {
            request.consistency = Some(self.config.strong);
        }
    }

    fn observe(&self, request: &ScyllaRequest, response: &ScyllaResponse, observed: &mut Observed) {
        let store = self.config.store;
        match request.kind {
            RequestKind::Read { .. } => {
                let Some(t) = response
                    .writetime()
                    .and_then(|t| u64::try_from(t).ok())
                    .filter(|t| *t > 0)
                else {
                    // A page of a row read with no row, and more pages to come, cannot show the
                    // row (it may be on a later page): it shows version 0, never "absent", which
                    // the strong path would take for a deleted row.
                    if let (Some((p, c)), true) =
                        (self.single_row(request), response.has_more_pages())
                    {
                        observed.push(row_scope(store, p, c), Version::ZERO);
                    }
                    return;
                };
                let seen = Version::new(t);
                observed.clock(HybridTimestamp::new(t));
                let rows = response.rows().map_or(0, |r| r.rows_num());
                match self.single_row(request) {
                    // One row: its write time is what the replica holds of that row, and meets
                    // the partition-wide writes before it (for this row only: not a requirement
                    // of the partition's other rows).
                    Some((p, c)) if rows <= 1 => {
                        observed.push(row_scope(store, p, c), seen);
                        // On the strong path the partition's writes are all there: a row that
                        // such a write did not touch (outside a range delete) must not hold
                        // the read back.
                        if response.consistency() != Some(self.config.strong) {
                            observed.meets(partition_wide_scope(store, p), seen);
                        }
                        observed.require(partition_scope(store, p), seen);
                    }
                    // Several rows: the newest write time proves nothing of the rows missing,
                    // and cannot be told apart from the others: it is only what the session
                    // has now seen of the partitions read.
                    _ => {
                        for scope in &request.scopes {
                            observed.require(partition_scope(store, scope.partition()), seen);
                        }
                    }
                }
            }
            RequestKind::Write | RequestKind::Conditional => self.observe_write(request, observed),
        }
    }

    fn observe_unresolved(&self, request: &ScyllaRequest, observed: &mut Observed) {
        // What the write gives its scopes if it applied: its own timestamp, as for an answer.
        if matches!(request.kind, RequestKind::Write | RequestKind::Conditional) {
            self.observe_write(request, observed);
        }
    }

    fn classify(&self, error: &ScyllaError) -> ErrorClass {
        error.class()
    }

    fn conflict(&self, request: &ScyllaRequest, error: &ScyllaError) -> Option<Conflict> {
        let ScyllaError::NotApplied { current } = error else {
            return None;
        };
        let stamp = request.stamp?;
        let mut scopes = Scopes::new();
        self.scopes(request, &mut scopes);
        let scope = scopes.iter().next()?;
        // Scylla returns the current row, not its write time: the current version is unknown
        // (0); the row is attached for the resolver (`conflict.current_item::<Row>()`).
        let mut conflict = Conflict::new(
            scope,
            stamp.write_id,
            stamp.timestamp,
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
        assert_eq!(adapter.store(), STORE_ID);
    }
}
