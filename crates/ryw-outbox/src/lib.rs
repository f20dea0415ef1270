//! Graceful degradation for ryw: when the store is down, writes are kept durably and replayed
//! exactly once.
//!
//! [`OutboxLayer`] sits above [`ryw::ReadYourWritesLayer`]. A write that may be replayed
//! ([`ryw::adapter::Replay::Safe`]) and that
//!
//! - fails with a transient error past its retry budget (or the store cannot be reached),
//! - or is made while the [`Breaker`] says the store is down,
//! - or is made while an earlier write of its session is queued (so that the session's writes
//!   apply in the order they were made),
//!
//! is appended, stamped (its [`ryw::WriteId`], its timestamp, the session's state, the store
//! request in its [`DurableRequest`] encoding), to an [`Outbox`]: a redb file, each append
//! durable (fsync) before the caller hears [`Written::Deferred`]. Never a silent success: a
//! deferred write is not applied yet, and the answer says so. A write that may not be replayed
//! ([`ryw::adapter::Replay::Never`]) is never deferred and keeps its error. A full outbox refuses
//! with [`OutboxServiceError::Outbox`] (backpressure).
//!
//! Reads of a session with a queued write to a scope they read are [`ryw::Visibility::Queued`],
//! never `Guaranteed`: the store cannot show the write yet.
//!
//! [`Replayer`] drains the outbox through the session layer when the store answers again, in
//! append order, each write under its own id and timestamp and as a replay: an entry sent twice
//! (a crash between its apply and its removal) applies once. An entry that can no longer be
//! replayed safely (older than the store's idempotency window, undecodable, refused for good) is
//! a dead letter with its reason ([`Outbox::dead_letters`], [`Outbox::retry_dead_letter`]).
//!
//! # Example
//!
//! ```
//! use ryw::{ReadYourWritesLayer, Session, Visibility};
//! use ryw_outbox::{Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
//! use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("ryw-outbox-lib-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! // A store whose primary is unreachable for its first 10 seconds.
//! let store = SimStore::new(SimConfig::default().partition(Partition {
//!     start: Duration::ZERO,
//!     end: Duration::from_secs(10),
//!     kind: PartitionKind::PrimaryUnreachable,
//! }));
//! let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default())?);
//! let ryw = ReadYourWritesLayer::new(SimAdapter::new())
//!     .clock(store.clock())
//!     .layer(store.client(0));
//! let mut service = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw.clone());
//!
//! let session = Session::new();
//! let written = service.ready().await?.call(session.request(SimRequest::put("k", 1))).await?;
//! let Written::Deferred(deferred) = written else { panic!("the store is down") };
//! let read = service.ready().await?.call(session.request(SimRequest::get("k"))).await?;
//! assert_eq!(read.applied().unwrap().visibility(), &Visibility::Queued(deferred.write_id));
//!
//! // The store comes back; the replayer applies the write, once.
//! tokio::time::sleep(Duration::from_secs(10)).await;
//! let report = Replayer::new(outbox.clone(), ryw).drain().await?;
//! assert_eq!(report.applied, 1);
//! let read = service.ready().await?.call(session.request(SimRequest::get("k"))).await?;
//! let read = read.applied().unwrap();
//! assert!(read.visibility().is_guaranteed());
//! assert_eq!(read.get_ref().value(), Some(1));
//! # drop(service); drop(outbox);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # What it cannot promise
//!
//! - An outbox is one file of one process. If the instance dies for good, its queued writes wait
//!   until a process opens the file again (the same instance restarted, or another given the
//!   file); run one replayer per file. Writes that other instances make meanwhile for the same
//!   sessions are not ordered after them.
//! - A deferred write's version reaches other instances only after its replay, through a token
//!   issued after it (or a shared session store). Until then, another instance reading the
//!   scope does not know of the write and cannot say `Queued`.
//! - A dead letter queued again ([`Outbox::retry_dead_letter`]) goes to the end of the queue,
//!   after the session's later writes.
//!
//! The repository's guide goes further: docs/outbox.md (what is deferred, replay, dead letters, and
//! the outage and crash tests).

mod breaker;
pub mod entry;
mod layer;
mod replay;
#[cfg(feature = "sim")]
mod sim;
pub mod store;
mod sync;

pub use breaker::Breaker;
pub use entry::{DecodeError, DurableRequest, NotDeferrable, Reader, Writer};
pub use layer::{
    DeferReason, Deferred, OutboxLayer, OutboxService, OutboxServiceError, StampForLater, Written,
};
pub use replay::{ReplayReport, Replayer};
pub use store::{DeadLetter, Outbox, OutboxConfig, OutboxError};
