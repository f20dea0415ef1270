//! Graceful degradation for ryw: when the store is down, writes are kept durably and replayed
//! exactly once.
//!
//! (Crate documentation in progress: see the README's "When the store is down".)

mod breaker;
pub mod entry;
mod layer;
mod replay;
#[cfg(feature = "sim")]
mod sim;
pub mod store;

pub use breaker::Breaker;
pub use entry::{DurableRequest, NotDeferrable};
pub use layer::{
    DeferReason, Deferred, OutboxLayer, OutboxService, OutboxServiceError, StampWrites, Written,
};
pub use replay::{ReplayReport, Replayer};
pub use store::{DeadLetter, Outbox, OutboxConfig, OutboxError};
