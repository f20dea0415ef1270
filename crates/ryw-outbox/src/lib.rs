//! Graceful degradation for ryw: when the store is down, writes are kept durably and replayed
//! exactly once.
//!
//! (Crate documentation in progress: see the README's "When the store is down".)

pub mod entry;
#[cfg(feature = "sim")]
mod sim;
pub mod store;

pub use entry::{DurableRequest, NotDeferrable};
pub use store::{DeadLetter, Outbox, OutboxConfig, OutboxError};
