//! Seeded workloads: users spread over app instances that share nothing but the session token,
//! run against the simulated store in one of four [`Mode`]s, recorded as a
//! [`History`](crate::checker::History).
//!
//! # Example
//!
//! ```
//! use ryw_sim::workload::{run_blocking, Mode, Scenario};
//!
//! let scenario = Scenario::random(42);
//! let with_layer = run_blocking(&scenario, &Mode::ryw());
//! assert_eq!(with_layer.check.violations.len(), 0);
//! ```

mod mode;
mod record_store;
mod report;
mod run;
mod scenario;
mod user;

pub use mode::Mode;
pub use report::RunReport;
pub use run::{run, run_observed};
#[cfg(feature = "paused-runtime")]
pub use run::{run_blocking, run_blocking_observed};
pub use scenario::Scenario;
