use crate::adapter::StoreAdapter;
use crate::clock::{Clock, SystemClock};
use crate::conflict::{ConflictResolver, LastWriterWins};
use crate::fence::{FenceConfig, FenceSupport};
use crate::retry::RetryPolicy;
use crate::ReadYourWrites;
use std::fmt;
use std::sync::Arc;
use tower::Layer;

/// Configuration shared by every request of a layer.
pub(crate) struct LayerConfig<A: StoreAdapter, P> {
    pub(crate) adapter: A,
    /// The retry policy prototype: cloned into a request only when it fails.
    pub(crate) policy: P,
    pub(crate) support: FenceSupport,
    pub(crate) fence: FenceConfig,
    pub(crate) resolver: Arc<dyn ConflictResolver<A::Request>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) conflict_retries: u32,
}

impl<A: StoreAdapter, P: Clone> Clone for LayerConfig<A, P> {
    fn clone(&self) -> Self {
        LayerConfig {
            adapter: self.adapter.clone(),
            policy: self.policy.clone(),
            support: self.support,
            fence: self.fence.clone(),
            resolver: self.resolver.clone(),
            clock: self.clock.clone(),
            conflict_retries: self.conflict_retries,
        }
    }
}

impl<A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug for LayerConfig<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerConfig")
            .field("adapter", &self.adapter)
            .field("policy", &self.policy)
            .field("fence", &self.fence)
            .field("resolver", &self.resolver)
            .field("clock", &self.clock)
            .field("conflict_retries", &self.conflict_retries)
            .finish()
    }
}

/// Applies [`ReadYourWrites`] to a store service. See the [crate docs](crate) for an example.
///
/// Built from an adapter with [`ReadYourWritesLayer::new`]; defaults: [`FenceConfig::default`]
/// (verify, one re-read after 10 ms, then escalate), [`RetryPolicy::new`], [`LastWriterWins`],
/// the system clock, two conflict rounds.
pub struct ReadYourWritesLayer<A: StoreAdapter, P = RetryPolicy<A>> {
    shared: Arc<LayerConfig<A, P>>,
}

impl<A: StoreAdapter, P> Clone for ReadYourWritesLayer<A, P> {
    fn clone(&self) -> Self {
        ReadYourWritesLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug for ReadYourWritesLayer<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadYourWritesLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<A: StoreAdapter> ReadYourWritesLayer<A> {
    /// A layer for `adapter` with the default configuration.
    pub fn new(adapter: A) -> Self {
        let policy = RetryPolicy::new(adapter.clone());
        ReadYourWritesLayer {
            shared: Arc::new(LayerConfig {
                support: adapter.fence_support(),
                adapter,
                policy,
                fence: FenceConfig::default(),
                resolver: Arc::new(LastWriterWins),
                clock: Arc::new(SystemClock),
                conflict_retries: 2,
            }),
        }
    }
}

impl<A: StoreAdapter, P: Clone> ReadYourWritesLayer<A, P> {
    fn shared_mut(&mut self) -> &mut LayerConfig<A, P> {
        Arc::make_mut(&mut self.shared)
    }

    /// How reads are fenced.
    pub fn fence(mut self, config: FenceConfig) -> Self {
        self.shared_mut().fence = config;
        self
    }

    /// The conflict resolver (default [`LastWriterWins`]).
    pub fn resolver(mut self, resolver: impl ConflictResolver<A::Request>) -> Self {
        self.shared_mut().resolver = Arc::new(resolver);
        self
    }

    /// The time source (default the system clock; simulations pass a virtual one).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.shared_mut().clock = Arc::new(clock);
        self
    }

    /// How many times one write may be rebased onto a newer version before its conflict is
    /// reported.
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.shared_mut().conflict_retries = n;
        self
    }

    /// The retry policy (any `tower::retry::Policy` over the adapter's types).
    pub fn retry<Q>(self, policy: Q) -> ReadYourWritesLayer<A, Q> {
        let s = Arc::unwrap_or_clone(self.shared);
        ReadYourWritesLayer {
            shared: Arc::new(LayerConfig {
                adapter: s.adapter,
                policy,
                support: s.support,
                fence: s.fence,
                resolver: s.resolver,
                clock: s.clock,
                conflict_retries: s.conflict_retries,
            }),
        }
    }

    /// The fence configuration.
    pub fn fence_config(&self) -> &FenceConfig {
        &self.shared.fence
    }

    /// The adapter.
    pub fn adapter(&self) -> &A {
        &self.shared.adapter
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &P {
        &self.shared.policy
    }
}

impl<S, A: StoreAdapter, P> Layer<S> for ReadYourWritesLayer<A, P> {
    type Service = ReadYourWrites<S, A, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadYourWrites::from_parts(inner, self.shared.clone())
    }
}
