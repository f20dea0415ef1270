//! Read-your-writes, monotonic reads, monotonic writes and writes-follow-reads for distributed
//! NoSQL stores, as [tower] middleware.
//!
//! An application reads from replicas (or with eventual consistency) for speed and cost; its users
//! must still see what they just wrote, across app instances. ryw gives every logical client a
//! [`Session`]: a write sequence, a hybrid clock and a bounded version vector of the high-water
//! marks its reads must reflect. [`ReadYourWrites`] wraps a store service and, per request:
//!
//! - stamps writes with a [`WriteId`] (the idempotency key, reused by every retry) and a hybrid
//!   clock reading;
//! - fences reads: the store waits for the version, the read is escalated, or a cheap read is
//!   verified and re-read on a miss ([`fence`]), when the store's catch-up time says a re-read is
//!   worth it ([`adaptive`]);
//! - records the versions every response shows, so the session only moves forward;
//! - retries transient failures with backoff, jitter and a budget, replaying a write only when the
//!   store can recognise the replay ([`retry`]);
//! - hands lost conditional writes to a resolver ([`conflict`]);
//! - and returns a [`Visibility`] with every response: guaranteed, or pending with the required and
//!   observed versions (or a typed stale-read error, if asked).
//!
//! The session travels as a compact [`SessionToken`] (for 4 scopes about 100 base64url characters
//! unsigned, 159 signed; capped at 1 KiB), so a second app instance given only the token continues
//! the session.
//! Before a token goes to a client, [`signing`] signs it (HMAC-SHA256 with key rotation, expiry,
//! revocation, principal binding); the `ryw-http` crate carries it in a header or cookie.
//!
//! What is store-specific lives in a [`StoreAdapter`]; adapters exist for MongoDB, ScyllaDB and
//! DynamoDB in their own crates, and `ryw-sim` has a simulated replicated store.
//!
//! # Example
//!
//! ```
//! use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SimStore::new(SimConfig::default().seed(7));
//! let mut service = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
//!     .service(store.client(0));
//!
//! let session = Session::new();
//! service.ready().await?.call(session.request(SimRequest::put("posts/1", 1))).await?;
//!
//! // The replica near this instance lags; the fence makes the read see the write anyway.
//! let read = service.ready().await?.call(session.request(SimRequest::get("posts/1"))).await?;
//! assert!(read.visibility().is_guaranteed());
//! assert_eq!(read.get_ref().value(), Some(1));
//!
//! // Another instance, given only the token, continues the session. A token that goes to a
//! // client is signed (`ryw-http` does this in a header or cookie); the instances share the key.
//! let authority = TokenAuthority::new(KeyRing::new(SigningKey::generate(1)));
//! let token = authority.issue(session.token().state(), None)?;
//! let elsewhere = Session::from_token(&authority.verify(&token, None)?);
//! let mut other = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
//!     .service(store.client(1));
//! let read = other.ready().await?.call(elsewhere.request(SimRequest::get("posts/1"))).await?;
//! assert_eq!(read.get_ref().value(), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees and the status contract
//!
//! For every read whose [`Visibility`] is `Guaranteed`, and for every scope the read touches, the
//! response reflects at least the highest version of that scope the session has written or read
//! before the read started (read-your-writes and monotonic reads). Writes are stamped with a
//! sequence and a hybrid clock after everything the session has seen (monotonic writes and
//! writes-follow-reads where the store orders by client time or conditions on versions). A write is
//! only replayed under its original [`WriteId`]. A `Pending` read carries the data, the version it
//! needed and the version it saw; nothing is reported as guaranteed that was not verified, waited
//! for, or read on the strong path.
//!
//! [tower]: https://docs.rs/tower
//!
//! The repository's guide goes further: docs/guarantees.md (the status contract and what each fence
//! rests on), docs/fence.md and docs/benchmarks.md.

pub mod adapter;
pub mod adaptive;
pub mod clock;
mod config;
pub mod conflict;
pub mod error;
pub mod fence;
pub mod future;
mod generations;
mod hash;
mod instrument;
mod layer;
mod locks;
mod observed;
pub mod principal;
pub mod record;
pub mod request;
pub mod retry;
pub mod revocation;
mod service;
pub mod session;
pub mod signing;
pub mod stamp;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod version;

pub use adapter::StoreAdapter;
pub use adaptive::AdaptiveFence;
pub use error::Error;
pub use fence::{FenceConfig, FenceStrategy, StaleReadPolicy, Visibility};
pub use layer::ReadYourWritesLayer;
pub use request::{SessionRequest, SessionResponse};
pub use service::ReadYourWrites;
pub use session::{Session, SessionId, SessionState, WriteId};
pub use stamp::StampedWrite;
pub use store::{InMemorySessionStore, SessionStore, SessionStoreStats};
pub use token::{SessionToken, TokenError};
pub use version::{ScopeKey, StoreId, Version, VersionVector};
