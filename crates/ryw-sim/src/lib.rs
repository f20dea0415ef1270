//! A simulated replicated store for ryw: one primary with an ordered log and N replicas with
//! configurable lag, applying the log in order or out of order ([`ReplicationOrder`]),
//! partitions, responses lost after the write applied (ambiguous writes) and duplicated
//! deliveries; seeded and deterministic under tokio's paused time; behind a tower `Service` per
//! app instance, with a [`SimAdapter`] offering all three fence strategies.
//!
//! The [`checker`] reads a recorded history and reports every violation of read-your-writes,
//! monotonic reads, monotonic writes and writes-follow-reads, and every duplicated effect of a
//! retried write. [`workload`] drives users across app instances that share nothing but the
//! session token, with or without the session layer.
//!
//! It is a test and demo tool, never a substitute for the real stores in the adapters' tests.
//!
//! # Features
//!
//! - `paused-runtime` (on by default): `workload::run_blocking` and
//!   `workload::run_blocking_observed`, which run a workload on a runtime of their own whose clock
//!   is paused. It turns on tokio's `test-util`, without which tokio cannot pause a clock.
//!   Without the feature, the store and the workloads run in the caller's runtime: paused by the
//!   caller (`#[tokio::test(start_paused = true)]`, which needs `test-util` in the caller's own
//!   build) for simulated time, or in real time.
//!
//! # Example
//!
//! ```
//! use ryw_sim::{SimConfig, SimRequest, SimStore};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let store = SimStore::new(SimConfig::default().seed(1));
//! store.client(0).oneshot(SimRequest::put("k", 5)).await.unwrap();
//! // Straight after the write, the local replica has not caught up.
//! let stale = store.client(0).oneshot(SimRequest::get("k")).await.unwrap();
//! assert_eq!(stale.value(), None);
//! tokio::time::sleep(std::time::Duration::from_secs(2)).await;
//! let fresh = store.client(0).oneshot(SimRequest::get("k")).await.unwrap();
//! assert_eq!(fresh.value(), Some(5));
//! # }
//! ```
//!
//! The repository's guide goes further: docs/testing.md (the simulation suite built on this crate).

mod adapter;
pub mod checker;
pub mod config;
pub mod fault;
mod rng;
mod store;
pub mod workload;

pub use adapter::{SimAdapter, STORE_ID};
pub use config::{LagModel, LatencyModel, Partition, PartitionKind, ReplicationOrder, SimConfig};
pub use rng::SimRng;
pub use store::{
    CurrentVersion, Get, Key, LogEntry, Node, Put, SimClient, SimClock, SimError, SimFuture,
    SimRequest, SimResponse, SimStore, Target, SIM_EPOCH_MICROS,
};
