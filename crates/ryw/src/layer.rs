//! The layer: configuration, and the service it builds.

use crate::adapter::StoreAdapter;
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
/// Built from an adapter with [`ReadYourWritesLayer::new`]; defaults: [`FenceConfig::default`]
/// (verify, one re-read after 10 ms, then escalate), [`RetryPolicy::new`], [`LastWriterWins`],
/// the system clock, two conflict rounds.
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
        ReadYourWritesLayer {
            config: Arc::new(LayerConfig {
                support: adapter.fence_support(),
                adapter,
                policy,
                fence: FenceConfig::default(),
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

    /// How reads are fenced.
    pub fn fence(mut self, config: FenceConfig) -> Self {
        self.config_mut().fence = config;
        self
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
                resolver: s.resolver,
                clock: s.clock,
                conflict_retries: s.conflict_retries,
                observer: s.observer,
            }),
        }
    }

    /// The fence configuration.
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
