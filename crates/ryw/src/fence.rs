//! Read fences: what a read must reflect, how the store is asked to meet it, and the visibility
//! status every read returns.
//!
//! A [`ReadFence`] lists, for each scope a read touches, the version the read must reflect (the
//! session's high-water mark) and the coarsened store horizon that covers it, if any. The layer
//! meets it with one of three [`FenceStrategy`]s, chosen by [`FenceConfig`] and what the adapter
//! supports ([`FenceSupport`]):
//!
//! - [`FenceStrategy::ServerWait`]: the store waits until it has the version (MongoDB
//!   `afterClusterTime`);
//! - [`FenceStrategy::Strong`]: read strongly (DynamoDB `ConsistentRead`, Scylla
//!   `LOCAL_QUORUM`, a MongoDB primary);
//! - [`FenceStrategy::Verify`]: read cheaply, compare the versions the response carries with the
//!   fence, and on a miss re-read after a short delay, then escalate.
//!
//! The re-reads of a verified read follow a fixed schedule ([`FenceConfig::rereads`] re-reads,
//! [`FenceConfig::reread_delay`] apart), or one learned from how long the store's replicas take
//! to catch up ([`crate::adaptive`]): the layer's default, which starts from the fixed default.
//!
//! Every read ends with a [`Visibility`]: `Guaranteed` (the fence was met, and how), or `Pending`
//! (the budget ran out: the caller has the data, the required and observed versions, and knows a
//! later read converges). With [`StaleReadPolicy::Error`] a stale read is an error instead.
//!
//! # Example: the decision sequence for a verify-first read
//!
//! ```
//! use ryw::fence::{FenceConfig, FenceDecision, FenceStrategy, FenceSupport, ReadFence};
//! use ryw::version::{Requirement, ScopeKey, StoreId, Version};
//! use std::time::Duration;
//!
//! let scope = ScopeKey::new(StoreId::new(1), b"posts/1");
//! let fence = ReadFence::from_requirements([Requirement {
//!     scope,
//!     version: Version::new(9),
//!     horizon: None,
//! }]);
//! let config = FenceConfig::verify_then_escalate(1, Duration::from_millis(5));
//! let support = FenceSupport::new().strong_reads(true);
//!
//! assert_eq!(fence.initial_strategy(&config, support), FenceStrategy::Verify);
//! // The first cheap read was stale: re-read once after a delay, then escalate, then give up.
//! assert_eq!(
//!     fence.after_stale(&config, support, FenceStrategy::Verify, 0),
//!     FenceDecision::Retry { strategy: FenceStrategy::Verify, delay: Duration::from_millis(5) }
//! );
//! assert_eq!(
//!     fence.after_stale(&config, support, FenceStrategy::Verify, 1),
//!     FenceDecision::Retry { strategy: FenceStrategy::Strong, delay: Duration::ZERO }
//! );
//! assert_eq!(
//!     fence.after_stale(&config, support, FenceStrategy::Strong, 1),
//!     FenceDecision::GiveUp
//! );
//! ```

use crate::clock::HybridTimestamp;
pub use crate::observed::Observed;
use crate::version::{Requirement, ScopeKey, Version};
use smallvec::SmallVec;
use std::fmt;
use std::time::Duration;

/// How a fence is applied to a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FenceStrategy {
    /// The store waits until it has the required version.
    ServerWait,
    /// The read goes to the store's strongly consistent path (a read that starts here or is
    /// escalated here reports [`FencePath::Escalated`]).
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
    server_wait: bool,
    strong_reads: bool,
    global_versions: bool,
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

    /// Renamed [`FenceSupport::strong_reads`].
    #[deprecated(note = "renamed `strong_reads`")]
    pub const fn escalate(self, yes: bool) -> Self {
        self.strong_reads(yes)
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
}

/// What the caller gets when a read stays stale after the fence budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleReadPolicy {
    /// Return the data with [`Visibility::Pending`] (the default).
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

impl Default for ReadFence {
    fn default() -> Self {
        ReadFence::new()
    }
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

    /// Renamed [`FenceConfig::strong`].
    #[deprecated(note = "renamed `strong`")]
    pub const fn escalate() -> Self {
        Self::strong()
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

/// The requirements one read must meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadFence {
    requirements: SmallVec<[Requirement; 2]>,
    /// Boxed: few stores carry one, and a small fence keeps every request's future small.
    context: Option<std::sync::Arc<crate::session::StoreContext>>,
    by_version: bool,
    /// The session is bound to a principal whose record could not be had ([`crate::principal`]):
    /// what the fence guarantees holds for the session only.
    session_only: bool,
    /// Some requirement may come from the session's principal's record rather than the session
    /// itself: what a response shows is then recorded even when it only meets the fence.
    shared: bool,
}

impl ReadFence {
    /// A fence with no requirements.
    #[inline]
    pub fn new() -> Self {
        ReadFence {
            requirements: SmallVec::new(),
            context: None,
            by_version: true,
            session_only: false,
            shared: false,
        }
    }

    /// A fence from explicit requirements.
    pub fn from_requirements(reqs: impl IntoIterator<Item = Requirement>) -> Self {
        ReadFence {
            requirements: reqs.into_iter().collect(),
            context: None,
            by_version: true,
            session_only: false,
            shared: false,
        }
    }

    /// What `state` requires of `scopes` at `store`, and its context there. `by_version`: a
    /// cheap response can show that it meets the fence (see [`ReadFence::server_side_only`]).
    #[inline]
    pub(crate) fn of(
        state: &crate::session::SessionState,
        store: crate::version::StoreId,
        scopes: impl Iterator<Item = ScopeKey>,
        by_version: bool,
    ) -> Self {
        ReadFence {
            requirements: scopes.map(|scope| state.requirement(scope)).collect(),
            context: state.context(store).cloned().map(std::sync::Arc::new),
            by_version,
            session_only: state.principal_unavailable(),
            shared: state.has_principal(),
        }
    }

    /// The same fence for a read whose cheap response cannot show that it meets it
    /// ([`Verification::ServerSideOnly`]): when fenced, the read waits server-side (where the
    /// store can) or goes to the strong path up front, and a cheap read is never reported
    /// `Guaranteed`.
    pub fn server_side_only(mut self) -> Self {
        self.by_version = false;
        self
    }

    /// Whether this fence lacks the requirements of the session's principal, whose record could
    /// not be had: a read meeting it is [`Visibility::SessionOnly`], not `Guaranteed`.
    #[inline]
    pub fn session_only(&self) -> bool {
        self.session_only
    }

    /// Whether a cheap read's versions can meet this fence (false after
    /// [`ReadFence::server_side_only`]).
    #[inline]
    pub fn verifiable(&self) -> bool {
        self.by_version
    }

    /// The context the session carries for this store (MongoDB's signed `$clusterTime`), if any.
    #[inline]
    pub fn context(&self) -> Option<&crate::session::StoreContext> {
        self.context.as_deref()
    }

    /// The requirements, one per scope read.
    #[inline]
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True when no requirement constrains the read.
    #[inline]
    pub fn is_unfenced(&self) -> bool {
        self.requirements.iter().all(Requirement::is_unfenced)
    }

    /// True when a store horizon covers one of the scopes.
    #[inline]
    pub fn has_horizon(&self) -> bool {
        self.requirements.iter().any(|r| r.horizon.is_some())
    }

    /// The largest version required (exact or horizon): what a server wait waits for.
    pub fn max_version(&self) -> Version {
        self.requirements
            .iter()
            .map(|r| r.version.max(r.horizon.unwrap_or(Version::ZERO)))
            .max()
            .unwrap_or(Version::ZERO)
    }

    /// The exact requirement on `scope`, if the read touches it.
    #[inline]
    pub fn requirement(&self, scope: ScopeKey) -> Option<&Requirement> {
        self.requirements.iter().find(|r| r.scope == scope)
    }

    /// The strategy of the first attempt.
    #[inline]
    pub fn initial_strategy(&self, config: &FenceConfig, support: FenceSupport) -> FenceStrategy {
        if self.is_unfenced() {
            return FenceStrategy::Verify;
        }
        if !self.by_version {
            // Only the store can meet it: wait for it there unless told to read strongly.
            if config.initial != FenceStrategy::Strong && support.server_wait {
                return FenceStrategy::ServerWait;
            }
            if support.strong_reads
                && (config.initial == FenceStrategy::Strong || config.escalate_on_stale)
            {
                return FenceStrategy::Strong;
            }
            // No path that can meet it, or none the configuration allows: the read is `Pending`.
            return FenceStrategy::Verify;
        }
        if self.has_horizon() {
            // A cheap read rarely meets a horizon (the largest version of every coarsened scope):
            // go straight to a path that reflects everything when the store has one; otherwise
            // verify against the horizon.
            if config.initial == FenceStrategy::ServerWait
                && support.server_wait
                && support.global_versions
            {
                return FenceStrategy::ServerWait;
            }
            if support.strong_reads {
                return FenceStrategy::Strong;
            }
            return FenceStrategy::Verify;
        }
        if support.supports(config.initial) {
            config.initial
        } else {
            FenceStrategy::Verify
        }
    }

    /// Checks a response's observed versions against the fence after an attempt with `strategy`.
    ///
    /// A response the adapter marked strong ([`Observed::mark_strong`]: served by the strongly
    /// consistent path) is authoritative and meets any fence, even when its version is lower (the
    /// item was deleted and created again). Otherwise, verified reads need an observed version at
    /// least the requirement on every fenced scope, and at least the store horizon where one
    /// covers the scope (the horizon is the largest version among the scopes coarsened into it,
    /// so this is sufficient whatever scope was coarsened); server-wait and escalated reads are
    /// trusted when the adapter observed no version for a scope, and checked when it did. A
    /// verified read of a fence that is [strong-path only](ReadFence::server_side_only) never
    /// meets it.
    #[inline]
    pub fn check(&self, strategy: FenceStrategy, observed: &Observed) -> Result<(), Staleness> {
        if observed.is_strong() {
            return Ok(());
        }
        for r in &self.requirements {
            if r.is_unfenced() {
                continue;
            }
            let seen = observed.get(r.scope);
            let trusted = match strategy {
                FenceStrategy::Verify => false,
                FenceStrategy::ServerWait | FenceStrategy::Strong => true,
            };
            if !trusted && !self.by_version {
                return Err(Staleness {
                    scope: r.scope,
                    required: r.version.max(r.horizon.unwrap_or(Version::ZERO)),
                    observed: seen,
                    horizon: r.horizon.is_some(),
                });
            }
            let ok = match seen {
                Some(v) => v >= r.version && (trusted || r.horizon.is_none_or(|h| v >= h)),
                None => trusted,
            };
            if !ok {
                return Err(Staleness {
                    scope: r.scope,
                    required: r.version.max(r.horizon.unwrap_or(Version::ZERO)),
                    observed: seen,
                    horizon: r.horizon.is_some(),
                });
            }
        }
        Ok(())
    }

    /// The next step after a stale attempt made with `last`, `rereads_done` cheap re-reads in,
    /// on the fixed schedule of `config` (an adaptive fence decides with
    /// [`FenceLearner::after_stale`](crate::adaptive::FenceLearner::after_stale)).
    pub fn after_stale(
        &self,
        config: &FenceConfig,
        support: FenceSupport,
        last: FenceStrategy,
        rereads_done: u32,
    ) -> FenceDecision {
        if last == FenceStrategy::Verify
            && !self.has_horizon()
            && self.by_version
            && rereads_done < config.rereads
        {
            return FenceDecision::Retry {
                strategy: FenceStrategy::Verify,
                delay: config.reread_delay,
            };
        }
        if last != FenceStrategy::Strong && config.escalate_on_stale && support.strong_reads {
            return FenceDecision::Retry {
                strategy: FenceStrategy::Strong,
                delay: Duration::ZERO,
            };
        }
        FenceDecision::GiveUp
    }

    /// Why a read whose first attempt goes with `strategy` (from
    /// [`ReadFence::initial_strategy`]) goes to the strong path up front, if it does.
    #[inline]
    pub(crate) fn escalation(
        &self,
        config: &FenceConfig,
        strategy: FenceStrategy,
    ) -> Option<Escalation> {
        match strategy {
            FenceStrategy::Strong if config.initial == FenceStrategy::Strong => {
                Some(Escalation::Configured)
            }
            FenceStrategy::Strong if !self.has_horizon() => Some(Escalation::Unverifiable),
            FenceStrategy::Strong => Some(Escalation::Horizon),
            _ => None,
        }
    }

    /// The status of a read that met the fence with `strategy`, after `rereads` cheap re-reads.
    #[inline]
    pub(crate) fn met(&self, strategy: FenceStrategy, rereads: u32) -> Visibility {
        let path = if self.is_unfenced() {
            FencePath::Unfenced
        } else {
            match strategy {
                FenceStrategy::Verify if rereads == 0 => FencePath::Verified,
                FenceStrategy::Verify => FencePath::ReRead,
                FenceStrategy::ServerWait => FencePath::ServerWait,
                FenceStrategy::Strong => FencePath::Escalated,
            }
        };
        if self.session_only {
            Visibility::SessionOnly(path)
        } else {
            Visibility::Guaranteed(path)
        }
    }

    /// Checks the scopes a cheap read returned beyond those it named up front (the items of a
    /// query): each must still reflect what `session` requires of it, or the read is stale like
    /// any other.
    pub(crate) fn check_beyond(
        &self,
        strategy: FenceStrategy,
        observed: &Observed,
        session: &crate::session::Session,
    ) -> Result<(), Staleness> {
        if observed.is_strong() || strategy != FenceStrategy::Verify {
            return Ok(());
        }
        let mut extra = observed
            .iter()
            .filter(|(scope, _)| self.requirement(*scope).is_none())
            .peekable();
        if extra.peek().is_none() {
            return Ok(());
        }
        let state = session.lock();
        for (scope, seen) in extra {
            let r = state.requirement(scope);
            let required = r.version.max(r.horizon.unwrap_or(Version::ZERO));
            if seen < required {
                return Err(Staleness {
                    scope,
                    required,
                    observed: Some(seen),
                    horizon: r.horizon.is_some() && r.horizon > Some(r.version),
                });
            }
        }
        Ok(())
    }

    /// True when the session already held everything `observed` shows when the read started
    /// (its clock was `clock_at_start`; its state only grows, so it still does): the common
    /// steady-state read then records nothing.
    #[inline]
    pub(crate) fn already_known(
        &self,
        observed: &Observed,
        clock_at_start: HybridTimestamp,
    ) -> bool {
        // A requirement met may be the principal's: the session takes it as its own.
        !self.shared
            && observed.seen_clock().is_none_or(|c| c <= clock_at_start)
            && observed
                .seen_context()
                .is_none_or(|(v, _)| self.context().is_some_and(|c| c.version >= v))
            && observed.iter().all(|(scope, v)| self.knows(scope, v))
            && observed.floors().all(|(scope, v)| self.knows(scope, v))
    }

    /// Whether the session required at least `version` of `scope` when the read started.
    #[inline]
    fn knows(&self, scope: ScopeKey, version: Version) -> bool {
        version == Version::ZERO
            || self
                .requirement(scope)
                .is_some_and(|r| r.version >= version)
    }
}

impl StaleReadPolicy {
    /// What a read that stays behind its fence (`stale`) answers: `Pending` with the stale data,
    /// or, under [`StaleReadPolicy::Error`], the stale read as an error.
    #[inline]
    pub(crate) fn give_up(self, stale: StaleRead) -> Result<Visibility, Box<StaleRead>> {
        match self {
            StaleReadPolicy::Error => Err(Box::new(stale)),
            _ => Ok(Visibility::Pending(Box::new(stale))),
        }
    }
}

/// Why a read went to the store's strong path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Escalation {
    /// Cheap reads stayed behind the fence.
    StaleRead,
    /// A coarsened scope (a store horizon) covered the read, and cheap reads rarely meet one.
    Horizon,
    /// The layer is configured to read strongly up front ([`crate::FenceConfig::strong`]).
    Configured,
    /// A cheap read of these scopes cannot show that it meets the fence
    /// ([`Verification::ServerSideOnly`]: several rows of a partition of a store
    /// that does not replicate a partition in order).
    Unverifiable,
}

impl Escalation {
    /// A short, stable name, for metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Escalation::StaleRead => "stale_read",
            Escalation::Horizon => "horizon",
            Escalation::Configured => "configured",
            Escalation::Unverifiable => "unverifiable",
        }
    }
}

/// Why one attempt did not meet its fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// The scope that was behind.
    pub scope: ScopeKey,
    /// The version required.
    pub required: Version,
    /// The version the response carried, if any.
    pub observed: Option<Version>,
    /// A store horizon (not an exact entry) required the fence.
    pub horizon: bool,
}

/// A read that stayed stale after the fence budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleRead {
    /// What was behind on the last attempt.
    pub staleness: Staleness,
    /// Attempts made, including the first.
    pub attempts: u32,
    /// The strategy of the last attempt.
    pub last_strategy: FenceStrategy,
}

impl fmt::Display for StaleRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.staleness;
        write!(
            f,
            "read of {:?} stayed stale after {} attempts: required {}, observed {}",
            s.scope,
            self.attempts,
            s.required,
            match s.observed {
                Some(v) => v.to_string(),
                None => "no version".to_owned(),
            }
        )
    }
}

/// How a read that met its fence met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FencePath {
    /// The session had no requirement on the scopes read.
    Unfenced,
    /// The first cheap read was verified.
    Verified,
    /// A cheap re-read, after a delay, was verified.
    ReRead,
    /// The store waited for the version.
    ServerWait,
    /// The read was escalated to the strong path.
    Escalated,
    /// A write: it is visible to the session from now on.
    Write,
}

impl FencePath {
    /// A short, stable name (`unfenced`, `verified`, `reread`, `server_wait`, `escalated`,
    /// `write`), for metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            FencePath::Unfenced => "unfenced",
            FencePath::Verified => "verified",
            FencePath::ReRead => "reread",
            FencePath::ServerWait => "server_wait",
            FencePath::Escalated => "escalated",
            FencePath::Write => "write",
        }
    }
}

/// The visibility status of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Visibility {
    /// The response reflects everything the session requires.
    Guaranteed(FencePath),
    /// The response may be behind the session; a later read converges.
    Pending(Box<StaleRead>),
    /// The adapter named no scope for this read, so the layer could not fence it and does not
    /// know whether it reflects the session: a configuration gap (a Scylla read without
    /// `.row()` or `.partition()`, a DynamoDB table whose schema was not declared), never a
    /// success. With [`StaleReadPolicy::Error`] such a read is [`crate::Error::Unscoped`]
    /// instead. A write that names no scope applied, but raises no requirement: later reads are
    /// not fenced on it, and it is answered `Unscoped` too.
    Unscoped,
    /// A write of this session to a scope the read names is queued in an outbox (`ryw-outbox`:
    /// the store was down when it was made) and not yet applied: the response cannot show it. A
    /// later read, after the outbox replays the write, converges.
    Queued(crate::session::WriteId),
    /// The response reflects everything this session requires (as [`Visibility::Guaranteed`],
    /// and how), but not necessarily what the other sessions of its principal wrote or read:
    /// the session is bound to a principal whose shared record could not be read or was damaged
    /// ([`crate::principal`]). Never given when the principal's record was applied.
    SessionOnly(FencePath),
}

impl Visibility {
    /// True for [`Visibility::Guaranteed`].
    #[inline]
    pub fn is_guaranteed(&self) -> bool {
        matches!(self, Visibility::Guaranteed(_))
    }

    /// True for [`Visibility::Pending`].
    #[inline]
    pub fn is_pending(&self) -> bool {
        matches!(self, Visibility::Pending(_))
    }

    /// True for [`Visibility::Unscoped`].
    #[inline]
    pub fn is_unscoped(&self) -> bool {
        matches!(self, Visibility::Unscoped)
    }

    /// True for [`Visibility::Queued`].
    #[inline]
    pub fn is_queued(&self) -> bool {
        matches!(self, Visibility::Queued(_))
    }

    /// True for [`Visibility::SessionOnly`].
    #[inline]
    pub fn is_session_only(&self) -> bool {
        matches!(self, Visibility::SessionOnly(_))
    }

    /// True when the response reflects everything its session requires: [`Visibility::Guaranteed`]
    /// or [`Visibility::SessionOnly`].
    #[inline]
    pub fn meets_session(&self) -> bool {
        matches!(self, Visibility::Guaranteed(_) | Visibility::SessionOnly(_))
    }

    /// The path of a guaranteed response (also of a [`Visibility::SessionOnly`] one).
    #[inline]
    pub fn path(&self) -> Option<FencePath> {
        match self {
            Visibility::Guaranteed(p) | Visibility::SessionOnly(p) => Some(*p),
            Visibility::Pending(_) | Visibility::Unscoped | Visibility::Queued(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::StoreId;

    fn fence(version: u64) -> (ScopeKey, ReadFence) {
        let scope = ScopeKey::new(StoreId::new(1), b"partition");
        let fence = ReadFence::from_requirements([Requirement {
            scope,
            version: Version::new(version),
            horizon: None,
        }]);
        (scope, fence)
    }

    #[test]
    fn a_server_side_only_fence_is_never_met_by_a_cheap_read() {
        let (scope, fence) = fence(9);
        let fence = fence.server_side_only();
        let config = FenceConfig::verify_then_escalate(3, Duration::from_millis(5));
        let support = FenceSupport::new().strong_reads(true);
        assert_eq!(
            fence.initial_strategy(&config, support),
            FenceStrategy::Strong
        );
        let mut observed = Observed::new();
        observed.push(scope, Version::new(100));
        assert!(fence.check(FenceStrategy::Verify, &observed).is_err());
        assert!(fence.check(FenceStrategy::Strong, &observed).is_ok());
        // No cheap re-read: escalate, or give up when the store has no strong path.
        assert_eq!(
            fence.after_stale(&config, support, FenceStrategy::Verify, 0),
            FenceDecision::Retry {
                strategy: FenceStrategy::Strong,
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            fence.after_stale(&config, FenceSupport::new(), FenceStrategy::Verify, 0),
            FenceDecision::GiveUp
        );
        // A store that can wait server-side waits; a configuration that never escalates gets a
        // cheap read, which stays pending.
        let waits = FenceSupport::new().strong_reads(true).server_wait(true);
        assert_eq!(
            fence.initial_strategy(&config, waits),
            FenceStrategy::ServerWait
        );
        assert_eq!(
            fence.initial_strategy(&FenceConfig::strong(), waits),
            FenceStrategy::Strong
        );
        let mut never = config.clone();
        never.escalate_on_stale = false;
        assert_eq!(
            fence.initial_strategy(&never, support),
            FenceStrategy::Verify
        );
        // Unfenced, it stays cheap.
        let (_, unfenced) = super::tests::fence(0);
        let unfenced = unfenced.server_side_only();
        assert_eq!(
            unfenced.initial_strategy(&config, support),
            FenceStrategy::Verify
        );
        assert!(unfenced
            .check(FenceStrategy::Verify, &Observed::new())
            .is_ok());
    }

    #[test]
    fn a_floor_is_recorded_but_proves_nothing_and_meets_proves_but_is_not_recorded() {
        let (scope, fence) = fence(9);
        let mut observed = Observed::new();
        observed.require(scope, Version::new(50));
        assert_eq!(observed.get(scope), None);
        assert!(fence.check(FenceStrategy::Verify, &observed).is_err());
        assert_eq!(
            observed.floors().collect::<Vec<_>>(),
            [(scope, Version::new(50))]
        );

        let mut observed = Observed::new();
        observed.meets(scope, Version::new(9));
        assert!(fence.check(FenceStrategy::Verify, &observed).is_ok());
        assert_eq!(observed.iter().count(), 0);
        assert_eq!(observed.floors().count(), 0);
        observed.push(scope, Version::new(4));
        assert_eq!(
            observed.get(scope),
            Some(Version::new(9)),
            "the larger of both"
        );
    }
}
