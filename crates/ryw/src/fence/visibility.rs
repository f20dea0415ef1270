//! What the layer says of a response: its [`Visibility`] (how a read met its fence, or why it
//! did not), and why a read went to the strong path ([`Escalation`]). Re-exported by
//! [`crate::fence`].
//!
//! # Example
//!
//! ```
//! use ryw::fence::{FencePath, Visibility};
//!
//! let read = Visibility::Guaranteed(FencePath::ReRead);
//! assert!(read.is_guaranteed());
//! assert_eq!(read.path(), Some(FencePath::ReRead));
//! assert_eq!(FencePath::ReRead.as_str(), "reread");
//! ```

use super::strategy::{FenceStrategy, StaleReadPolicy};
use crate::version::{ScopeKey, Version};
use std::fmt;

/// Why a read went to the store's strong path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Escalation {
    /// Cheap reads stayed behind the fence.
    StaleRead,
    /// A coarsened scope (a store horizon) covered the read, and cheap reads rarely meet one.
    Horizon,
    /// The layer is configured to read strongly up front ([`crate::FenceConfig::strong`]).
    Configured,
    /// A cheap read of these scopes cannot show that it meets the fence
    /// ([`Verification::ServerSideOnly`](crate::fence::Verification::ServerSideOnly): several rows of a partition of a store
    /// that does not replicate a partition in order).
    Unverifiable,
}

impl Escalation {
    /// A short, stable name, for metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Escalation::StaleRead => "stale_read",
            Escalation::Horizon => "horizon",
            Escalation::Configured => "configured",
            Escalation::Unverifiable => "unverifiable",
        }
    }
}

/// Why one attempt did not meet its fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// The scope that was behind.
    pub scope: ScopeKey,
    /// The version required.
    pub required: Version,
    /// The version the response carried, if any.
    pub observed: Option<Version>,
    /// A store horizon (not an exact entry) required the fence.
    pub horizon: bool,
}

/// A read that stayed stale after the fence budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleRead {
    /// What was behind on the last attempt.
    pub staleness: Staleness,
    /// Attempts made, including the first.
    pub attempts: u32,
    /// The strategy of the last attempt.
    pub last_strategy: FenceStrategy,
}

impl fmt::Display for StaleRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.staleness;
        write!(
            f,
            "read of {:?} stayed stale after {} attempts: required {}, observed {}",
            s.scope,
            self.attempts,
            s.required,
            match s.observed {
                Some(v) => v.to_string(),
                None => "no version".to_owned(),
            }
        )
    }
}

/// How a read that met its fence met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FencePath {
    /// The session had no requirement on the scopes read.
    Unfenced,
    /// The first cheap read was verified.
    Verified,
    /// A cheap re-read, after a delay, was verified.
    ReRead,
    /// The store waited for the version.
    ServerWait,
    /// The read was escalated to the strong path.
    Escalated,
    /// A write: it is visible to the session from now on.
    Write,
}

impl FencePath {
    /// A short, stable name (`unfenced`, `verified`, `reread`, `server_wait`, `escalated`,
    /// `write`), for metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            FencePath::Unfenced => "unfenced",
            FencePath::Verified => "verified",
            FencePath::ReRead => "reread",
            FencePath::ServerWait => "server_wait",
            FencePath::Escalated => "escalated",
            FencePath::Write => "write",
        }
    }
}

/// The visibility status of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Visibility {
    /// The response reflects everything the session requires.
    Guaranteed(FencePath),
    /// The response may be behind the session; a later read converges.
    Pending(Box<StaleRead>),
    /// The adapter named no scope for this read, so the layer could not fence it and does not
    /// know whether it reflects the session: a configuration gap (a Scylla read without
    /// `.row()` or `.partition()`, a DynamoDB table whose schema was not declared), never a
    /// success. With [`StaleReadPolicy::Error`] such a read is [`crate::Error::Unscoped`]
    /// instead. A write that names no scope applied, but raises no requirement: later reads are
    /// not fenced on it, and it is answered `Unscoped` too.
    Unscoped,
    /// A write of this session to a scope the read names is queued in an outbox (`ryw-outbox`:
    /// the store was down when it was made) and not yet applied: the response cannot show it. A
    /// later read, after the outbox replays the write, converges.
    Queued(crate::session::WriteId),
    /// The response reflects everything this session requires (as [`Visibility::Guaranteed`],
    /// and how), but not necessarily what the other sessions of its principal wrote or read:
    /// the session is bound to a principal whose shared record could not be read or was damaged
    /// ([`crate::principal`]). Never given when the principal's record was applied.
    SessionOnly(FencePath),
}

impl Visibility {
    /// True for [`Visibility::Guaranteed`].
    #[inline]
    pub fn is_guaranteed(&self) -> bool {
        matches!(self, Visibility::Guaranteed(_))
    }

    /// True for [`Visibility::Pending`].
    #[inline]
    pub fn is_pending(&self) -> bool {
        matches!(self, Visibility::Pending(_))
    }

    /// True for [`Visibility::Unscoped`].
    #[inline]
    pub fn is_unscoped(&self) -> bool {
        matches!(self, Visibility::Unscoped)
    }

    /// True for [`Visibility::Queued`].
    #[inline]
    pub fn is_queued(&self) -> bool {
        matches!(self, Visibility::Queued(_))
    }

    /// True for [`Visibility::SessionOnly`].
    #[inline]
    pub fn is_session_only(&self) -> bool {
        matches!(self, Visibility::SessionOnly(_))
    }

    /// True when the response reflects everything its session requires: [`Visibility::Guaranteed`]
    /// or [`Visibility::SessionOnly`].
    #[inline]
    pub fn meets_session(&self) -> bool {
        matches!(self, Visibility::Guaranteed(_) | Visibility::SessionOnly(_))
    }

    /// The path of a guaranteed response (also of a [`Visibility::SessionOnly`] one).
    #[inline]
    pub fn path(&self) -> Option<FencePath> {
        match self {
            Visibility::Guaranteed(p) | Visibility::SessionOnly(p) => Some(*p),
            Visibility::Pending(_) | Visibility::Unscoped | Visibility::Queued(_) => None,
        }
    }
}

impl StaleReadPolicy {
    /// What a read that stays behind its fence (`stale`) answers: `Pending` with the stale data,
    /// or, under [`StaleReadPolicy::Error`], the stale read as an error.
    #[inline]
    pub(crate) fn give_up(self, stale: StaleRead) -> Result<Visibility, Box<StaleRead>> {
        match self {
            StaleReadPolicy::Error => Err(Box::new(stale)),
            _ => Ok(Visibility::Pending(Box::new(stale))),
        }
    }
}
