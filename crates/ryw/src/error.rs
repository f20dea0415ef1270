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
        /// Whether an attempt of this write (or of a clone of the request) may have applied: one
        /// failed in a way that may have applied (a timeout, a lost connection) and no later
        /// answer showed it had not. Always false for a read.
        may_have_applied: bool,
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
    /// This request, or a clone of it, was already sent and may have applied, and the write may
    /// not be replayed ([`crate::adapter::Replay::Never`]): it was not sent again. Middleware
    /// above the layer that re-sends requests (a `tower::retry::Retry`, a hedge) gets this
    /// instead of a duplicate write.
    AlreadySent {
        /// The write.
        write_id: WriteId,
    },
    /// The adapter named no scope for a read and the caller asked for strict reads
    /// ([`crate::fence::StaleReadPolicy::Error`]): the layer cannot tell whether the data reflects
    /// the session. A configuration gap; see [`crate::Visibility::Unscoped`].
    Unscoped,
}

impl<E> Error<E> {
    /// The same error with the store's error mapped by `f`: for an application that serves
    /// several stores and answers their errors with one type (for example
    /// `ryw_http::RywError<Box<dyn std::error::Error + Send + Sync>>`).
    ///
    /// ```
    /// let error: ryw::Error<std::io::Error> = ryw::Error::NotReady(std::io::ErrorKind::TimedOut.into());
    /// let boxed: ryw::Error<String> = error.map_store(|e| e.to_string());
    /// assert!(matches!(boxed, ryw::Error::NotReady(s) if s == "timed out"));
    /// ```
    pub fn map_store<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Error::Store {
                source,
                attempts,
                transient,
                may_have_applied,
            } => Error::Store {
                source: f(source),
                attempts,
                transient,
                may_have_applied,
            },
            Error::Ambiguous { write_id, source } => Error::Ambiguous {
                write_id,
                source: f(source),
            },
            Error::Conflict(c) => Error::Conflict(c),
            Error::StaleRead(s) => Error::StaleRead(s),
            Error::NotReady(e) => Error::NotReady(f(e)),
            Error::AlreadySent { write_id } => Error::AlreadySent { write_id },
            Error::Unscoped => Error::Unscoped,
        }
    }

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

    /// True for an ambiguous, unreplayable write ([`Error::Ambiguous`], or
    /// [`Error::AlreadySent`]: whether it applied is not known).
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Ambiguous { .. } | Error::AlreadySent { .. })
    }

    /// Whether the write may have applied despite the error: [`Error::Ambiguous`],
    /// [`Error::AlreadySent`], and [`Error::Store`] after an attempt that may have applied. False
    /// means it definitely did not: nothing was sent ([`Error::NotReady`]), every attempt was
    /// refused before applying, or it lost a conflict ([`Error::Conflict`]: the other version
    /// was kept). Reads never apply anything.
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::Ambiguous { .. } | Error::AlreadySent { .. } => true,
            Error::Store {
                may_have_applied, ..
            } => *may_have_applied,
            _ => false,
        }
    }

    /// The write id, for a write whose outcome is not known.
    pub fn write_id(&self) -> Option<WriteId> {
        match self {
            Error::Ambiguous { write_id, .. } | Error::AlreadySent { write_id } => Some(*write_id),
            _ => None,
        }
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
            Error::AlreadySent { write_id } => write!(
                f,
                "write {write_id} was already sent and may have applied; it cannot be replayed, \
                 so it was not sent again"
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

/// The error type of tower middleware (`tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A middleware error, shared so that the errors carrying it stay `Clone`.
pub type SharedError = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A failure raised by tower middleware between the session layer and the store service (a
/// `tower::timeout::TimeoutLayer`, a `tower::load_shed::LoadShedLayer`, ...) rather than by the
/// store.
///
/// Such middleware answers with a [`BoxError`]; the session layer accepts any inner service whose
/// error converts into the adapter's error type, and every adapter's error type converts from
/// `BoxError` with [`MiddlewareError::unbox`]: the store's own error comes back unchanged, and
/// anything else becomes a `MiddlewareError` inside it, classified by
/// [`MiddlewareError::class`]. So a timed-out write is handled like any write whose response was
/// lost: replayed under its original [`WriteId`] when the store recognises replays, reported
/// [`Error::Ambiguous`] when it does not, never sent as a new write.
///
/// # Example
///
/// ```
/// use ryw::adapter::ErrorClass;
/// use ryw::error::{BoxError, MiddlewareError};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("store said no")]
/// struct StoreError;
///
/// // The store's own error passes through.
/// let boxed: BoxError = Box::new(StoreError);
/// assert!(MiddlewareError::unbox::<StoreError>(boxed).is_ok());
///
/// // A timeout is a lost response: the write may have applied.
/// let boxed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// let error = MiddlewareError::unbox::<StoreError>(boxed).unwrap_err();
/// assert_eq!(error.class(), ErrorClass::AMBIGUOUS);
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MiddlewareError {
    /// A timeout elapsed before the store answered: the store may have applied the request.
    #[error("the store did not answer in time (a middleware timeout elapsed)")]
    TimedOut,
    /// Middleware refused the request before it was sent (load shedding).
    #[error("middleware refused the request before it was sent: {0}")]
    NotSent(#[source] SharedError),
    /// Any other middleware failure. Nothing is known of whether the request reached the store,
    /// so it is treated as possibly applied.
    #[error("middleware failed: {0}")]
    Other(#[source] SharedError),
}

impl MiddlewareError {
    /// Unboxes a middleware error: the store's own error `E` comes back as `Ok`, anything else as
    /// a `MiddlewareError`.
    pub fn unbox<E: std::error::Error + 'static>(error: BoxError) -> Result<E, MiddlewareError> {
        let error = match error.downcast::<E>() {
            Ok(own) => return Ok(*own),
            Err(error) => error,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            return Err(MiddlewareError::TimedOut);
        }
        if error.is::<tower::load_shed::error::Overloaded>() {
            return Err(MiddlewareError::NotSent(error.into()));
        }
        Err(MiddlewareError::Other(error.into()))
    }

    /// How the layer treats it: a refusal before sending is retryable; a timeout or an unknown
    /// failure may have applied ([`crate::adapter::ErrorClass::AMBIGUOUS`]).
    pub fn class(&self) -> crate::adapter::ErrorClass {
        match self {
            MiddlewareError::NotSent(_) => crate::adapter::ErrorClass::RETRYABLE,
            MiddlewareError::TimedOut | MiddlewareError::Other(_) => {
                crate::adapter::ErrorClass::AMBIGUOUS
            }
        }
    }
}
