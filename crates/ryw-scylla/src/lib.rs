//! ScyllaDB (and Cassandra) for [`ryw`]: session clocks as write timestamps, pinned across
//! retries, and cheap reads verified by `WRITETIME`.
//!
//! The driver draws a fresh client timestamp for every attempt of a statement unless one is
//! set, so a retried write can land twice with two timestamps, or reorder behind a later write of
//! the same session. Here every write carries the session's hybrid logical clock reading (after
//! every version the session has written or read) through `set_timestamp`, and the same reading
//! on every attempt, the driver's and ryw's. Reads run at `LOCAL_ONE` and select the `WRITETIME`
//! of a tracked column. A read of one row ([`ScyllaRequest::row`]) is re-read at `LOCAL_QUORUM`
//! when that is older than what the session requires of the row. Scylla does not replicate a
//! partition in order, so no row's write time vouches for another: a read of a partition
//! ([`ScyllaRequest::partition`]) the session has written or read runs at `LOCAL_QUORUM` up
//! front. [`ScyllaScope`] and [`ScyllaAdapter`] say what each scope is credited with.
//!
//! - [`ScyllaRequest`]: a statement (unprepared, prepared or batch), its values, and what it does.
//! - [`ScyllaService`]: the tower `Service` over the driver's `Session`.
//! - [`ScyllaAdapter`]: the [`StoreAdapter`](ryw::StoreAdapter) for
//!   [`ReadYourWritesLayer`](ryw::ReadYourWritesLayer).
//! - [`ScyllaError`]: typed errors with `is_*()` helpers and the retry classification.
//!
//! # Example
//!
//! [`ryw::Session`] (one user's read-your-writes session) and the driver's
//! `scylla::client::session::Session` (the connection pool) share a name; import the driver's
//! under another one, such as `ScyllaSession`, where both are used.
//!
//! ```no_run
//! use ryw::{FenceConfig, ReadYourWritesLayer, Session};
//! use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
//! use scylla::client::session::Session as ScyllaSession;
//! use scylla::client::session_builder::SessionBuilder;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let driver: ScyllaSession = SessionBuilder::new().known_node("127.0.0.1:9042").build().await?;
//! let mut posts = ServiceBuilder::new()
//!     .layer(
//!         ReadYourWritesLayer::new(ScyllaAdapter::new())
//!             .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
//!     )
//!     .service(ScyllaService::new(Arc::new(driver)));
//!
//! let session = Session::new();
//! let write = ScyllaRequest::write(
//!     "INSERT INTO app.posts (user_id, body) VALUES (?, ?)",
//!     ("u7", "hello"),
//! )
//! .row(b"u7", b"");
//! posts.ready().await?.call(session.request(write)).await?;
//!
//! let read = ScyllaRequest::read(
//!     "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
//!     ("u7",),
//! )
//! .row(b"u7", b"")
//! .track("body");
//! let response = posts.ready().await?.call(session.request(read)).await?;
//! assert!(response.visibility().is_guaranteed());
//! # Ok(())
//! # }
//! ```
//!
//! # Paged reads
//!
//! A read given a page size ([`ScyllaRequest::page_size`]) fetches one page; its response
//! carries the driver's paging state ([`ScyllaResponse::paging_state`]), and
//! [`ScyllaRequest::next_page`] builds the request for the page after it. Each page is one
//! request through the session layer, fenced by the rules of its scopes: a page of a partition
//! the session has written or read runs at `LOCAL_QUORUM` up front, a page of one row is
//! verified by the row's write time. A page read again (escalated, or retried) resumes from the
//! same paging state, and returns the paging state of the read it kept, so no row is skipped or
//! returned twice; Scylla's paging state is a position in the result, valid at any consistency
//! and through any coordinator (see [`ScyllaRequest::page`]).
//!
//! ```no_run
//! # use ryw::{FenceConfig, ReadYourWritesLayer, Session};
//! # use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
//! # use scylla::client::session_builder::SessionBuilder;
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use tower::{Service, ServiceBuilder, ServiceExt};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let driver = SessionBuilder::new().known_node("127.0.0.1:9042").build().await?;
//! # let mut posts = ServiceBuilder::new()
//! #     .layer(
//! #         ReadYourWritesLayer::new(ScyllaAdapter::new())
//! #             .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
//! #     )
//! #     .service(ScyllaService::new(Arc::new(driver)));
//! # let session = Session::new();
//! let feed = ScyllaRequest::read(
//!     "SELECT post_id, body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
//!     ("u7",),
//! )
//! .partition(b"u7")
//! .track("body")
//! .page_size(100);
//!
//! let mut next = Some(feed.clone());
//! while let Some(page) = next.take() {
//!     let response = posts.ready().await?.call(session.request(page)).await?;
//!     assert!(response.visibility().is_guaranteed());
//!     for row in response.get_ref().rows().unwrap().rows::<(i32, String, i64)>()? {
//!         let (post_id, body, _) = row?;
//!         println!("{post_id}: {body}");
//!     }
//!     next = feed.next_page(response.get_ref());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The repository's guide goes further: docs/scylla.md (row and partition scopes, paged reads,
//! limitations, and the tests that show them).

mod adapter;
mod error;
#[cfg(feature = "outbox")]
mod outbox;
mod request;
mod service;

pub use adapter::{ScyllaAdapter, STORE_ID};
pub use error::ScyllaError;
pub use request::{RequestKind, ScyllaRequest, ScyllaScope, ScyllaStatement, Values};
pub use service::{ScyllaResponse, ScyllaService};
