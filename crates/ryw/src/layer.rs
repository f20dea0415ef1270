//! The layer: configuration, and the service it builds.

use crate::adapter::StoreAdapter;
use crate::adaptive::{AdaptiveFence, FenceLearner};
use crate::clock::{Clock, SystemClock};
use crate::config::LayerConfig;
use crate::conflict::{ConflictResolver, LastWriterWins};
use crate::fence::FenceConfig;
use crate::retry::RetryPolicy;
use crate::service::ReadYourWrites;
use std::fmt;
use std::sync::Arc;
use tower::Layer;

/// Applies [`ReadYourWrites`] to a store service. See the [crate docs](crate) for an example.
///
/// Built from an adapter with [`ReadYourWritesLayer::new`]; defaults: an adaptive fence
/// ([`AdaptiveFence::default`]: verify, and after a miss re-read once the store's learned
/// catch-up time says it is worth it, never waiting more than 10 ms, else escalate; until it has
/// learned, one re-read after 10 ms as [`FenceConfig::default`]), [`RetryPolicy::new`],
/// [`LastWriterWins`], the system clock, two conflict rounds.
pub struct ReadYourWritesLayer<A: StoreAdapter, P = RetryPolicy> {
    config: Arc<LayerConfig<A, P>>,
}

impl<A: StoreAdapter, P> Clone for ReadYourWritesLayer<A, P> {
    fn clone(&self) -> Self {
        ReadYourWritesLayer {
            config: self.config.clone(),
        }
    }
}

impl<A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug for ReadYourWritesLayer<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadYourWritesLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<A: StoreAdapter> ReadYourWritesLayer<A> {
    /// A layer for `adapter` with the default configuration.
    pub fn new(adapter: A) -> Self {
        let policy = RetryPolicy::new();
        let adaptive = AdaptiveFence::default();
        ReadYourWritesLayer {
            config: Arc::new(LayerConfig {
                support: adapter.fence_support(),
                adapter,
                policy,
                fence: adaptive.base.clone(),
                learner: Some(Arc::new(FenceLearner::new(adaptive))),
                resolver: Arc::new(LastWriterWins),
                clock: Arc::new(SystemClock),
                conflict_retries: 2,
                observer: None,
            }),
        }
    }
}

impl<A: StoreAdapter, P: Clone> ReadYourWritesLayer<A, P> {
    fn config_mut(&mut self) -> &mut LayerConfig<A, P> {
        Arc::make_mut(&mut self.config)
    }

    /// How reads are fenced, with the fixed re-read schedule `config` names: every stale read is
    /// re-read `config.rereads` times, `config.reread_delay` apart, whatever the store does.
    /// Replaces an adaptive fence ([`ReadYourWritesLayer::adaptive_fence`], the default).
    pub fn fence(mut self, config: FenceConfig) -> Self {
        let layer = self.config_mut();
        layer.fence = config;
        layer.learner = None;
        self
    }

    /// How reads are fenced, with a re-read schedule learned from the store's catch-up time
    /// ([`crate::adaptive`]): `config.base` sets the first strategy, escalation and stale-read
    /// policy. What is learned starts afresh, and is shared by every clone of this layer and
    /// every service it builds.
    pub fn adaptive_fence(mut self, config: AdaptiveFence) -> Self {
        let layer = self.config_mut();
        layer.fence = config.base.clone();
        layer.learner = Some(Arc::new(FenceLearner::new(config)));
        self
    }

    /// What the adaptive fence has learned so far, if the fence is adaptive.
    pub fn fence_learner(&self) -> Option<&FenceLearner> {
        self.config.learner.as_deref()
    }

    /// The conflict resolver (default [`LastWriterWins`]).
    pub fn resolver(mut self, resolver: impl ConflictResolver<A::Request>) -> Self {
        self.config_mut().resolver = Arc::new(resolver);
        self
    }

    /// The time source (default the system clock; simulations pass a virtual one).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config_mut().clock = Arc::new(clock);
        self
    }

    /// Installs an [`Observer`](crate::telemetry::Observer) that hears of every request, retry,
    /// fence miss and conflict (`ryw-otel` turns them into OpenTelemetry metrics). None by
    /// default; without one the layer does no telemetry work.
    pub fn observer(mut self, observer: impl crate::telemetry::Observer) -> Self {
        self.config_mut().observer = Some(Arc::new(observer));
        self
    }

    /// How many times one write may be rebased onto a newer version before its conflict is
    /// reported.
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.config_mut().conflict_retries = n;
        self
    }

    /// The retry policy (any `tower::retry::Policy` over the adapter's types).
    pub fn retry<Q>(self, policy: Q) -> ReadYourWritesLayer<A, Q> {
        let s = Arc::unwrap_or_clone(self.config);
        ReadYourWritesLayer {
            config: Arc::new(LayerConfig {
                adapter: s.adapter,
                policy,
                support: s.support,
                fence: s.fence,
                learner: s.learner,
                resolver: s.resolver,
                clock: s.clock,
                conflict_retries: s.conflict_retries,
                observer: s.observer,
            }),
        }
    }

    /// The fence configuration (of an adaptive fence: its base).
    pub fn fence_config(&self) -> &FenceConfig {
        &self.config.fence
    }

    /// The adapter.
    pub fn adapter(&self) -> &A {
        &self.config.adapter
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &P {
        &self.config.policy
    }
}

impl<S, A: StoreAdapter, P> Layer<S> for ReadYourWritesLayer<A, P> {
    type Service = ReadYourWrites<S, A, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadYourWrites::from_parts(inner, self.config.clone())
    }
}
