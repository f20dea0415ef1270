//! The adapter trait: what the layer needs to know about one store.
//!
//! A [`StoreAdapter`] tells the layer whether a request reads or writes, which scopes it touches,
//! how a fence is applied, how a write is stamped, which versions a response carries, which errors
//! are transient, and whether a request may be replayed. The layer decides *when* to fence, retry
//! and report; the adapter decides *how* on its store.
//!
//! # Example implementation
//!
//! A key-value store whose reads can go to the leader and whose responses carry the item version:
//!
//! ```
//! use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter};
//! use ryw::fence::{FenceStrategy, FenceSupport, ReadFence};
//! use ryw::stamp::Stamp;
//! use ryw::version::{ScopeKey, StoreId, Version};
//!
//! #[derive(Clone, Debug)]
//! enum KvRequest {
//!     Get { key: String, leader: bool },
//!     Put { key: String, value: String, idempotency_key: Option<String> },
//! }
//!
//! #[derive(Debug)]
//! struct KvResponse { version: u64 }
//!
//! #[derive(Debug)]
//! enum KvError { Timeout, Invalid }
//!
//! #[derive(Clone, Debug)]
//! struct KvAdapter;
//!
//! const STORE: StoreId = StoreId::new(1);
//!
//! impl StoreAdapter for KvAdapter {
//!     type Request = KvRequest;
//!     type Response = KvResponse;
//!     type Error = KvError;
//!
//!     fn store(&self) -> StoreId { STORE }
//!
//!     fn operation(&self, request: &KvRequest) -> Operation {
//!         match request {
//!             KvRequest::Get { .. } => Operation::Read,
//!             KvRequest::Put { .. } => Operation::Write(Replay::Safe),
//!         }
//!     }
//!
//!     fn scopes(&self, request: &KvRequest, scopes: &mut Scopes) {
//!         let (KvRequest::Get { key, .. } | KvRequest::Put { key, .. }) = request;
//!         scopes.push(ScopeKey::new(STORE, key.as_bytes()));
//!     }
//!
//!     fn fence_support(&self) -> FenceSupport {
//!         FenceSupport::new().strong_reads(true)
//!     }
//!
//!     fn stamp_write(&self, request: &mut KvRequest, stamp: Stamp, _: &ReadFence) {
//!         if let KvRequest::Put { idempotency_key, .. } = request {
//!             *idempotency_key = Some(stamp.write_id.to_string());
//!         }
//!     }
//!
//!     fn apply_fence(&self, request: &mut KvRequest, _: &ReadFence, strategy: FenceStrategy) {
//!         if let KvRequest::Get { leader, .. } = request {
//!             *leader = strategy == FenceStrategy::Strong;
//!         }
//!     }
//!
//!     fn observe(&self, request: &KvRequest, response: &KvResponse, observed: &mut Observed) {
//!         let (KvRequest::Get { key, .. } | KvRequest::Put { key, .. }) = request;
//!         observed.push(ScopeKey::new(STORE, key.as_bytes()), Version::new(response.version));
//!     }
//!
//!     fn classify(&self, error: &KvError) -> ErrorClass {
//!         match error {
//!             KvError::Timeout => ErrorClass::AMBIGUOUS,
//!             KvError::Invalid => ErrorClass::Permanent,
//!         }
//!     }
//! }
//! ```

use crate::conflict::Conflict;
use crate::fence::{FenceStrategy, FenceSupport, ReadFence};
pub use crate::fence::{Observed, Verification};
use crate::session::Stamp;
use crate::version::{ScopeKey, StoreId};
use smallvec::SmallVec;

/// Whether a request reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A read: fenced, verified, replayable.
    Read,
    /// A write, with whether it may be replayed after an ambiguous failure.
    Write(Replay),
}

impl Operation {
    /// `read` or `write`, for metric attributes and span fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write(_) => "write",
        }
    }
}

/// Whether a write may be sent again after an attempt whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Replay {
    /// The store recognises a replay by its [`WriteId`](crate::session::WriteId) (or the write is idempotent): replaying
    /// cannot duplicate its effect.
    Safe,
    /// The write is not idempotent (a counter, a list append): after an ambiguous failure it is
    /// reported as [`crate::Error::Ambiguous`], never sent again. Failures known not to have
    /// applied are still retried.
    Never,
}

/// Whether a failed attempt may have applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Applied {
    /// The store did not apply the request (throttled, unavailable before sending).
    No,
    /// Unknown: a timeout or a connection lost after sending.
    Unknown,
}

/// How the layer treats an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Worth retrying with backoff.
    Transient(Applied),
    /// A conditional write lost to another writer: see [`StoreAdapter::conflict`].
    Conflict,
    /// A replay could not tell whether an earlier attempt of this write applied, and was not
    /// applied (for example, the item it wrote has been deleted since): the layer reports
    /// [`crate::Error::Ambiguous`] and never sends the write again.
    Unresolved,
    /// Retrying cannot help (validation, authorization, a missing table...).
    Permanent,
}

impl ErrorClass {
    /// Transient, known not to have applied.
    pub const RETRYABLE: ErrorClass = ErrorClass::Transient(Applied::No);
    /// Transient, may have applied.
    pub const AMBIGUOUS: ErrorClass = ErrorClass::Transient(Applied::Unknown);

    /// True for transient errors.
    #[inline]
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorClass::Transient(_))
    }

    /// A short, stable name (`retryable`, `ambiguous`, `permanent`, `conflict`, `unresolved`),
    /// for metric attributes and span fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient(Applied::No) => "retryable",
            ErrorClass::Transient(_) => "ambiguous",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Unresolved => "unresolved",
        }
    }
}

/// The scopes a request touches (inline for up to two).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(SmallVec<[ScopeKey; 2]>);

impl Scopes {
    /// No scopes.
    #[inline]
    pub fn new() -> Self {
        Scopes(SmallVec::new())
    }

    /// Adds a scope (duplicates are ignored).
    #[inline]
    pub fn push(&mut self, scope: ScopeKey) {
        if !self.0.contains(&scope) {
            self.0.push(scope);
        }
    }

    /// The scopes.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = ScopeKey> + '_ {
        self.0.iter().copied()
    }

    /// Number of scopes.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One store's mapping of the session concepts. See the [module docs](self) for an example.
///
/// # Clone
///
/// The adapter is cloned into every request's future; keep it cheap (configuration behind an
/// `Arc`).
pub trait StoreAdapter: Clone + Send + Sync + 'static {
    /// The store operation (the inner service's request).
    type Request: Clone;
    /// The inner service's response.
    type Response;
    /// The inner service's error.
    type Error;

    /// The store this adapter serves.
    fn store(&self) -> StoreId;

    /// Prepares every request before anything else looks at it: an adapter whose store service
    /// needs the adapter's configuration (table schemas, attribute names) attaches it here, so
    /// the service is built from the driver's client alone and the two can never disagree. The
    /// default does nothing.
    fn prepare(&self, request: &mut Self::Request) {
        let _ = request;
    }

    /// Whether `request` reads or writes, and whether a write may be replayed.
    fn operation(&self, request: &Self::Request) -> Operation;

    /// The scopes `request` touches.
    fn scopes(&self, request: &Self::Request, scopes: &mut Scopes);

    /// Which fence strategies the store offers.
    fn fence_support(&self) -> FenceSupport;

    /// Writes the write's [`Stamp`] (its [`WriteId`](crate::session::WriteId) and timestamp) into it, with `fence`: what
    /// the session has seen of the written scopes (for writes-follow-reads). Called once per
    /// write; every later attempt and copy sends the stamped request ([`crate::stamp`]).
    fn stamp_write(&self, request: &mut Self::Request, stamp: Stamp, fence: &ReadFence);

    /// Marks a write that is sent again after an attempt that may have applied (a timeout, a
    /// lost response), before every such replay. Stores that can tell a replay from a first
    /// attempt use it to never apply blindly: check for the write's id first, refuse to
    /// re-create an item that has vanished since, and so on (classifying what they cannot
    /// resolve as [`ErrorClass::Unresolved`]). The default does nothing.
    fn prepare_replay(&self, request: &mut Self::Request) {
        let _ = request;
    }

    /// Whether a cheap response to the read `request` can show that it meets its fence. The
    /// default, [`Verification::Versions`], trusts [`StoreAdapter::observe`]: return
    /// [`Verification::ServerSideOnly`] for a read whose response cannot show everything the
    /// session requires of its scopes (several rows of a partition on a store that does not
    /// replicate a partition in order). Such a read, when the session has a requirement on its
    /// scopes, waits server-side or goes to the strong path up front, and is never `Guaranteed`
    /// from a cheap read.
    fn verification(&self, request: &Self::Request) -> Verification {
        let _ = request;
        Verification::Versions
    }

    /// Applies `fence` to a read with `strategy` (set a wait version, route to the strong path, or
    /// ask for versions to verify). Called on a fresh copy of the read for every attempt.
    fn apply_fence(&self, request: &mut Self::Request, fence: &ReadFence, strategy: FenceStrategy);

    /// Records the versions `response` reflects.
    fn observe(&self, request: &Self::Request, response: &Self::Response, observed: &mut Observed);

    /// Records what the write `request` gives its scopes if it applied, when it failed in a way
    /// that may have applied ([`crate::Error::Ambiguous`], or [`crate::Error::Store`] with
    /// `may_have_applied`): the session's next reads of those scopes then show the write, or go
    /// to the strong path, which shows whether it applied. The default records nothing (a read
    /// may then be `Guaranteed` without a write whose outcome its caller was not told).
    fn observe_unresolved(&self, request: &Self::Request, observed: &mut Observed) {
        let _ = (request, observed);
    }

    /// Classifies an error for the retry policy.
    fn classify(&self, error: &Self::Error) -> ErrorClass;

    /// Conflict metadata for an error classified [`ErrorClass::Conflict`].
    fn conflict(&self, request: &Self::Request, error: &Self::Error) -> Option<Conflict> {
        let _ = (request, error);
        None
    }

    /// Rewrites a write so that it applies over the conflict's current version (for a resolver
    /// that keeps this write). Returns false when the store cannot (the conflict is then
    /// reported).
    fn rebase(&self, request: &mut Self::Request, conflict: &Conflict) -> bool {
        let _ = (request, conflict);
        false
    }
}
