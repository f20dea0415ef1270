//! The server half: verify the token on the way in, re-issue it on the way out.
//!
//! See the [crate docs](crate) for an axum example. With hyper alone, wrap the service given to
//! `serve_connection` with `tower::ServiceBuilder::new().layer(ServerSessionLayer::new(..))` and a
//! `hyper_util::service::TowerToHyperService`.

mod exchange;
mod layer;
pub(crate) mod rejection;
mod service;
mod transport;

pub use exchange::TokenStatus;
pub use layer::ServerSessionLayer;
pub use rejection::{BadTokenPolicy, TokenRejection};
pub use service::{ResponseFuture, ServerSession};
#[cfg(test)]
mod testing;
