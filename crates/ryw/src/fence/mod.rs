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

mod read_fence;
mod strategy;
mod visibility;

pub use crate::observed::Observed;
pub use read_fence::ReadFence;
pub use strategy::{
    FenceConfig, FenceDecision, FenceStrategy, FenceSupport, StaleReadPolicy, Verification,
};
pub use visibility::{Escalation, FencePath, StaleRead, Staleness, Visibility};
