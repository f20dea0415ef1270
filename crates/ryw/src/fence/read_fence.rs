//! The requirements one read must meet, and the decisions taken on them: the first strategy,
//! whether a response meets them, the next step after a stale response, the escalation reason
//! and the status a read that met them gets. Re-exported by [`crate::fence`].

use super::strategy::{FenceConfig, FenceDecision, FenceStrategy, FenceSupport, Verification};
use super::visibility::{Escalation, FencePath, Staleness, Visibility};
use crate::clock::HybridTimestamp;
use crate::observed::Observed;
use crate::version::{Requirement, ScopeKey, Version};
use smallvec::SmallVec;
use std::time::Duration;

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
    /// Only the session's writes raise the read's scopes ([`Verification::WritesOnly`]): with
    /// no requirement, the read claims nothing.
    writes_only: bool,
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
            writes_only: false,
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
            writes_only: false,
        }
    }

    /// Fills this (new) fence with what `state` requires of `scopes` at `store`, and its context
    /// there. `verification`: whether a cheap response can show that it meets the fence (see
    /// [`ReadFence::server_side_only`]). Filled in place: the request path moves no fence.
    #[inline]
    pub(crate) fn fill(
        &mut self,
        state: &crate::session::SessionState,
        store: crate::version::StoreId,
        scopes: impl Iterator<Item = ScopeKey>,
        verification: Verification,
    ) {
        // Pushed one by one: `collect` into a `SmallVec` goes through its generic `extend`,
        // which is not inlined (measured: +30 ns per read).
        for scope in scopes {
            self.requirements.push(state.requirement(scope));
        }
        self.context = state.context(store).cloned().map(std::sync::Arc::new);
        self.by_version = verification == Verification::Versions;
        self.writes_only = verification == Verification::WritesOnly;
        self.session_only = state.principal_unavailable();
        self.shared = state.has_principal();
    }

    /// The same fence for a read whose cheap response cannot show that it meets it
    /// ([`Verification::ServerSideOnly`](crate::fence::Verification::ServerSideOnly)): when fenced, the read waits server-side (where the
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
        if self.writes_only && self.is_unfenced() {
            return Visibility::Unscoped;
        }
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
    #[inline]
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

impl Default for ReadFence {
    fn default() -> Self {
        ReadFence::new()
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

    /// A read whose scope only the session's writes raise claims nothing without a requirement,
    /// and is fenced like a strong-path-only read with one.
    #[test]
    fn a_writes_only_read_is_unscoped_without_a_requirement() {
        let writes_only = |version| {
            let (_, mut f) = fence(version);
            f.by_version = false;
            f.writes_only = true;
            f
        };
        assert_eq!(
            writes_only(0).met(FenceStrategy::Verify, 0),
            Visibility::Unscoped
        );
        assert_eq!(
            writes_only(5).met(FenceStrategy::Strong, 0),
            Visibility::Guaranteed(FencePath::Escalated)
        );
        assert!(writes_only(5)
            .check(FenceStrategy::Verify, &Observed::new())
            .is_err());
        assert_eq!(
            fence(0).1.met(FenceStrategy::Verify, 0),
            Visibility::Guaranteed(FencePath::Unfenced)
        );
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
