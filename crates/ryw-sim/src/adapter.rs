//! The [`StoreAdapter`] of the simulated store: all three fence strategies.

use crate::store::{Node, SimError, SimRequest, SimResponse, Target};
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter};
use ryw::conflict::Conflict;
use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ScopeKey, StoreId};

/// Maps the session concepts onto the simulated store.
///
/// - scope: one key; version: the log position of the key's last write (store-wide order);
/// - server wait: `min_version` on the replica, which answers once it has applied every log entry
///   up to that position (whatever order entries reach it in, so a wait on a store horizon is
///   sound); escalate: read the primary; verify: compare the key's version (a replica serves the
///   newest write of a key it holds);
/// - writes carry their `WriteId` (the store skips a write whose id already applied, so replays are
///   safe) and the session's hybrid clock;
/// - a failed conditional write is a conflict with the current version, clock and writer.
#[derive(Clone, Debug)]
pub struct SimAdapter {
    store: StoreId,
}

/// The store id the simulated store's scopes use unless configured.
pub const STORE_ID: StoreId = StoreId::new(0);

impl Default for SimAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl SimAdapter {
    /// The adapter for [`STORE_ID`].
    pub const fn new() -> Self {
        SimAdapter { store: STORE_ID }
    }

    /// Uses another store id (for sessions spanning several stores). The same name on every
    /// adapter.
    pub const fn store_id(mut self, store: StoreId) -> Self {
        self.store = store;
        self
    }

    /// The scope of `key`.
    pub fn scope(&self, key: &str) -> ScopeKey {
        ScopeKey::new(self.store, key.as_bytes())
    }
}

impl StoreAdapter for SimAdapter {
    type Request = SimRequest;
    type Response = SimResponse;
    type Error = SimError;

    fn store(&self) -> StoreId {
        self.store
    }

    fn operation(&self, request: &SimRequest) -> Operation {
        match request {
            SimRequest::Get(_) => Operation::Read,
            SimRequest::Put(_) => Operation::Write(Replay::Safe),
        }
    }

    fn scopes(&self, request: &SimRequest, scopes: &mut Scopes) {
        scopes.push(self.scope(request.key()));
    }

    fn fence_support(&self) -> FenceSupport {
        FenceSupport::new()
            .server_wait(true)
            .strong_reads(true)
            .global_versions(true)
    }

    fn stamp_write(&self, request: &mut SimRequest, stamp: Stamp, _: &ReadFence) {
        if let SimRequest::Put(put) = request {
            put.write_id = Some(stamp.write_id);
            put.clock = Some(stamp.timestamp);
        }
    }

    fn apply_fence(&self, request: &mut SimRequest, fence: &ReadFence, strategy: FenceStrategy) {
        if let SimRequest::Get(get) = request {
            match strategy {
                FenceStrategy::ServerWait => get.min_version = Some(fence.max_version()),
                FenceStrategy::Strong => get.target = Target::Primary,
                _ => {}
            }
        }
    }

    fn observe(&self, request: &SimRequest, response: &SimResponse, observed: &mut Observed) {
        observed.push(self.scope(request.key()), response.version);
        if let Some(clock) = response.clock {
            observed.clock(clock);
        }
        if response.served_by == Node::Primary {
            observed.mark_strong();
        }
    }

    fn classify(&self, error: &SimError) -> ErrorClass {
        match error {
            SimError::Unavailable => ErrorClass::RETRYABLE,
            SimError::Timeout => ErrorClass::AMBIGUOUS,
            SimError::ConditionFailed(_) => ErrorClass::Conflict,
        }
    }

    fn conflict(&self, request: &SimRequest, error: &SimError) -> Option<Conflict> {
        let (SimRequest::Put(put), SimError::ConditionFailed(current)) = (request, error) else {
            return None;
        };
        let mut conflict = Conflict::new(
            self.scope(&put.key),
            put.write_id?,
            put.clock?,
            put.if_version,
            current.version,
        );
        conflict.current_timestamp = current.clock;
        conflict.current_writer = current.writer;
        conflict.item = current.value.map(|v| std::sync::Arc::new(v) as _);
        Some(conflict)
    }

    fn rebase(&self, request: &mut SimRequest, conflict: &Conflict) -> bool {
        match request {
            SimRequest::Put(put) => {
                put.if_version = Some(conflict.current);
                true
            }
            SimRequest::Get(_) => false,
        }
    }
}
