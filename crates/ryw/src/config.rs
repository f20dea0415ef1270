//! The configuration every request of a layer shares.

use crate::adapter::StoreAdapter;
use crate::adaptive::FenceLearner;
use crate::clock::Clock;
use crate::conflict::ConflictResolver;
use crate::fence::{FenceConfig, FenceSupport};
use crate::telemetry::Observer;
use std::fmt;
use std::sync::Arc;

/// Configuration shared by every request of a layer.
pub(crate) struct LayerConfig<A: StoreAdapter, P> {
    pub(crate) adapter: A,
    /// The retry policy prototype: cloned into a request only when it fails.
    pub(crate) policy: P,
    pub(crate) support: FenceSupport,
    pub(crate) fence: FenceConfig,
    /// What the layer learns of its store's catch-up, when the fence is adaptive: touched only by
    /// reads that missed their fence.
    pub(crate) learner: Option<Arc<FenceLearner>>,
    pub(crate) resolver: Arc<dyn ConflictResolver<A::Request>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) conflict_retries: u32,
    /// Hears of every request, retry, fence miss and conflict, when installed.
    pub(crate) observer: Option<Arc<dyn Observer>>,
}

impl<A: StoreAdapter, P: Clone> Clone for LayerConfig<A, P> {
    fn clone(&self) -> Self {
        LayerConfig {
            adapter: self.adapter.clone(),
            policy: self.policy.clone(),
            support: self.support,
            fence: self.fence.clone(),
            learner: self.learner.clone(),
            resolver: self.resolver.clone(),
            clock: self.clock.clone(),
            conflict_retries: self.conflict_retries,
            observer: self.observer.clone(),
        }
    }
}

impl<A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug for LayerConfig<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerConfig")
            .field("adapter", &self.adapter)
            .field("policy", &self.policy)
            .field("fence", &self.fence)
            .field("learner", &self.learner)
            .field("resolver", &self.resolver)
            .field("clock", &self.clock)
            .field("conflict_retries", &self.conflict_retries)
            .field("observer", &self.observer)
            .finish()
    }
}
