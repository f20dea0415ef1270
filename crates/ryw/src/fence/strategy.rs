//! How a fence is applied: the strategies, what a store supports, the layer's fence
//! configuration, and the next step after a stale read. Re-exported by [`crate::fence`].

use std::time::Duration;

/// How a fence is applied to a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FenceStrategy {
    /// The store waits until it has the required version.
    ServerWait,
    /// The read goes to the store's strongly consistent path (a read that starts here or is
    /// escalated here reports [`FencePath::Escalated`](crate::fence::FencePath::Escalated)).
    Strong,
    /// The read is cheap; the layer verifies the versions it returns.
    Verify,
}

impl FenceStrategy {
    /// A short, stable name (`verify`, `server_wait`, `strong`), for metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceStrategy::ServerWait => "server_wait",
            FenceStrategy::Strong => "strong",
            FenceStrategy::Verify => "verify",
        }
    }
}

/// Which strategies an adapter's store offers (verification is always possible).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FenceSupport {
    pub(super) server_wait: bool,
    pub(super) strong_reads: bool,
    pub(super) global_versions: bool,
}

impl FenceSupport {
    /// Verification only.
    pub const fn new() -> Self {
        FenceSupport {
            server_wait: false,
            strong_reads: false,
            global_versions: false,
        }
    }

    /// The store can wait for a version server-side.
    pub const fn server_wait(mut self, yes: bool) -> Self {
        self.server_wait = yes;
        self
    }

    /// The store can serve a strongly consistent read ([`FenceStrategy::Strong`]).
    pub const fn strong_reads(mut self, yes: bool) -> Self {
        self.strong_reads = yes;
        self
    }

    /// Versions are positions in one store-wide order (a cluster time, an oplog position), so a
    /// server wait on a store horizon's version is sound.
    pub const fn global_versions(mut self, yes: bool) -> Self {
        self.global_versions = yes;
        self
    }

    /// Whether `strategy` is offered.
    #[inline]
    pub const fn supports(self, strategy: FenceStrategy) -> bool {
        match strategy {
            FenceStrategy::ServerWait => self.server_wait,
            FenceStrategy::Strong => self.strong_reads,
            FenceStrategy::Verify => true,
        }
    }

    /// Whether versions are store-wide.
    pub const fn has_global_versions(self) -> bool {
        self.global_versions
    }
}

/// Whether a cheap read's response can show that it meets its fence
/// ([`crate::StoreAdapter::verification`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verification {
    /// The versions the response carries show what it reflects of every scope it names (one
    /// item's version, a position in a store-wide order).
    #[default]
    Versions,
    /// Nothing in the response can show that it reflects every write the session requires (a
    /// read of several rows of a partition on a store that does not replicate a partition in
    /// order: a missing row leaves no trace; a MongoDB reply whose `operationTime` may be later
    /// than the snapshot it read). When the session has a requirement on its scopes, the store
    /// must meet it: the read waits server-side where the store can
    /// ([`FenceStrategy::ServerWait`]), or goes to the strong path, up front; a cheap read is
    /// never `Guaranteed`.
    ServerSideOnly,
    /// As [`Verification::ServerSideOnly`], for a read whose scope only the session's writes
    /// raise (a DynamoDB `Scan`, fenced on its table: nothing the session reads says which items
    /// a page lacks). With no requirement on its scopes, such a read claims nothing and is
    /// [`Visibility::Unscoped`](crate::fence::Visibility::Unscoped), never
    /// `Guaranteed(Unfenced)`.
    WritesOnly,
}

/// What the caller gets when a read stays stale after the fence budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleReadPolicy {
    /// Return the data with [`Visibility::Pending`](crate::fence::Visibility::Pending) (the default).
    #[default]
    Pending,
    /// Fail with [`crate::Error::StaleRead`].
    Error,
}

/// How the layer fences reads, with a fixed re-read schedule
/// ([`ReadYourWritesLayer::fence`](crate::ReadYourWritesLayer::fence)); the base of an adaptive
/// fence ([`FenceConfig::adaptive`]), whose schedule it is until the learner is warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceConfig {
    /// The strategy of the first attempt (falls back to `Verify` when unsupported).
    pub initial: FenceStrategy,
    /// Cheap re-reads after a stale verified read, before escalating.
    pub rereads: u32,
    /// Delay before each cheap re-read (the replica usually catches up within it).
    pub reread_delay: Duration,
    /// Escalate when cheap reads stay stale (if the store can).
    pub escalate_on_stale: bool,
    /// What a read that stays stale returns.
    pub stale_reads: StaleReadPolicy,
}

impl Default for FenceConfig {
    /// Verify first, one re-read after 10 ms, then escalate; stale reads are `Pending`. (The
    /// layer's default fence is adaptive, [`AdaptiveFence::default`](crate::AdaptiveFence), which
    /// follows this schedule until it has learned the store's catch-up time.)
    fn default() -> Self {
        Self::verify_then_escalate(1, Duration::from_millis(10))
    }
}

impl FenceConfig {
    /// Cheap reads verified by version; `rereads` cheap retries `delay` apart, then escalation.
    pub const fn verify_then_escalate(rereads: u32, delay: Duration) -> Self {
        FenceConfig {
            initial: FenceStrategy::Verify,
            rereads,
            reread_delay: delay,
            escalate_on_stale: true,
            stale_reads: StaleReadPolicy::Pending,
        }
    }

    /// Let the store wait for the version (falls back to verification when unsupported).
    pub const fn server_wait() -> Self {
        FenceConfig {
            initial: FenceStrategy::ServerWait,
            rereads: 0,
            reread_delay: Duration::ZERO,
            escalate_on_stale: true,
            stale_reads: StaleReadPolicy::Pending,
        }
    }

    /// Every fenced read goes to the strong path up front.
    pub const fn strong() -> Self {
        FenceConfig {
            initial: FenceStrategy::Strong,
            rereads: 0,
            reread_delay: Duration::ZERO,
            escalate_on_stale: true,
            stale_reads: StaleReadPolicy::Pending,
        }
    }

    /// Sets what a read that stays stale returns.
    pub const fn stale_reads(mut self, policy: StaleReadPolicy) -> Self {
        self.stale_reads = policy;
        self
    }
}

/// The next step after a stale attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceDecision {
    /// Read again with `strategy` after `delay`.
    Retry {
        /// The strategy of the next attempt.
        strategy: FenceStrategy,
        /// How long to wait first.
        delay: Duration,
    },
    /// The budget is spent: report the read as pending (or fail, per [`StaleReadPolicy`]).
    GiveUp,
}
