//! Errors returned by the session layer.
//!
//! [`Error`] wraps the store's own error type `E` (no boxing, no downcasting): callers decide with
//! the `is_*()` helpers and get the store error back with [`Error::store_error`].

use crate::conflict::Conflict;
use crate::fence::StaleRead;
use crate::session::WriteId;
use std::fmt;

/// An error from [`crate::ReadYourWrites`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The store failed and retrying could not help (a permanent error, or transient errors that
    /// outlasted the retry budget).
    Store {
        /// The last error.
        source: E,
        /// Attempts made, including the first.
        attempts: u32,
        /// Whether the adapter classified the last error as transient.
        transient: bool,
    },
    /// A write that may not be replayed failed in a way that may have applied: the caller must
    /// check before writing again.
    Ambiguous {
        /// The write.
        write_id: WriteId,
        /// The error.
        source: E,
    },
    /// A conditional write lost to another writer and the resolver kept the other version.
    Conflict(Box<Conflict>),
    /// A read stayed stale and the caller asked for strict reads
    /// ([`crate::fence::StaleReadPolicy::Error`]).
    StaleRead(Box<StaleRead>),
    /// The inner service failed in `poll_ready`.
    NotReady(E),
    /// The adapter named no scope for a read and the caller asked for strict reads
    /// ([`crate::fence::StaleReadPolicy::Error`]): the layer cannot tell whether the data reflects
    /// the session. A configuration gap; see [`crate::Visibility::Unscoped`].
    Unscoped,
}

impl<E> Error<E> {
    /// True for store failures (permanent or after retries).
    pub fn is_store(&self) -> bool {
        matches!(self, Error::Store { .. })
    }

    /// True when the last store error was transient (retries were exhausted).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Store {
                transient: true,
                ..
            }
        )
    }

    /// True for an ambiguous, unreplayable write.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Ambiguous { .. })
    }

    /// True for a lost conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// True for a strict read that stayed stale.
    pub fn is_stale_read(&self) -> bool {
        matches!(self, Error::StaleRead(_))
    }

    /// True for a strict read the adapter named no scope for.
    pub fn is_unscoped(&self) -> bool {
        matches!(self, Error::Unscoped)
    }

    /// The store's error, when there is one.
    pub fn store_error(&self) -> Option<&E> {
        match self {
            Error::Store { source, .. }
            | Error::Ambiguous { source, .. }
            | Error::NotReady(source) => Some(source),
            _ => None,
        }
    }

    /// The conflict, for [`Error::Conflict`].
    pub fn conflict(&self) -> Option<&Conflict> {
        match self {
            Error::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// The stale read, for [`Error::StaleRead`].
    pub fn stale_read(&self) -> Option<&StaleRead> {
        match self {
            Error::StaleRead(s) => Some(s),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Store {
                source, attempts, ..
            } => write!(f, "store error after {attempts} attempt(s): {source}"),
            Error::Ambiguous { write_id, source } => write!(
                f,
                "write {write_id} may or may not have applied and cannot be replayed: {source}"
            ),
            Error::Conflict(c) => write!(f, "write conflict: {c}"),
            Error::StaleRead(s) => write!(f, "stale read: {s}"),
            Error::NotReady(e) => write!(f, "inner service not ready: {e}"),
            Error::Unscoped => write!(
                f,
                "the adapter named no scope for this read, so it cannot be fenced (check the \
                 adapter's configuration)"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.store_error().map(|e| e as _)
    }
}
