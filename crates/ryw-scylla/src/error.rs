//! Errors of the ScyllaDB service, classified for the session layer's retry policy.

use ryw::adapter::ErrorClass;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::value::Row;

/// Why a ScyllaDB request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScyllaError {
    /// The driver failed to execute the request (the server's error is in it, see
    /// [`ScyllaError::db_error`]).
    #[error(transparent)]
    Execution(Box<ExecutionError>),
    /// A lightweight transaction was not applied (`[applied] = false`): its condition did not
    /// hold. The current row, as Scylla returned it, without the `[applied]` column.
    #[error("lightweight transaction not applied: its condition did not hold")]
    NotApplied {
        /// The current row (columns in the order of the result, `[applied]` removed), if any.
        current: Option<Row>,
    },
    /// A configuration error: a read that names a scope ([`ScyllaRequest::row`],
    /// [`ScyllaRequest::partition`]) but no tracked column ([`ScyllaRequest::track`]). Nothing
    /// was sent. Every scoped read needs a tracked column: without a write time the layer could
    /// never tell what the read reflects.
    ///
    /// [`ScyllaRequest::row`]: crate::ScyllaRequest::row
    /// [`ScyllaRequest::partition`]: crate::ScyllaRequest::partition
    /// [`ScyllaRequest::track`]: crate::ScyllaRequest::track
    #[error("configuration: a read names a scope but no tracked column (`.track(column)`)")]
    Untracked,
    /// A configuration error: the read tracks `column` but its statement does not select
    /// `WRITETIME(column)` (the result has no `writetime(column)` column; an alias such as
    /// `WRITETIME(column) AS wt` renames it, and is not recognised).
    #[error(
        "configuration: the read tracks `{column}` but its result has no `writetime({column})` \
         column (select `WRITETIME({column})` without an alias)"
    )]
    TrackedColumnNotSelected {
        /// The tracked column.
        column: String,
    },
    /// A configuration error: a paged request that cannot be sent (a write or a batch given a
    /// paging state, a page size that is not positive). Nothing was sent.
    #[error("configuration: {reason}")]
    InvalidPaging {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The session's clock is past CQL's largest write timestamp (`i64::MAX` microseconds): it
    /// read a row written with a timestamp near it (a row pinned far in the future), and a write
    /// ordered after it has no timestamp left. Nothing was sent: two writes sharing the largest
    /// timestamp would not be ordered.
    #[error("the session's clock ({clock}) is past the largest CQL write timestamp")]
    ClockExhausted {
        /// The session's clock reading, in microseconds.
        clock: u64,
    },
    /// The result did not have the shape the request declared (a conditional write without
    /// `[applied]`, a write time that is not 64 bits, a row that could not be read).
    #[error("unexpected result: {0}")]
    Result(String),
    /// Tower middleware between the session layer and this service failed (a timeout elapsed,
    /// load shedding refused the request): see [`ryw::error::MiddlewareError`].
    #[error(transparent)]
    Middleware(#[from] ryw::error::MiddlewareError),
}

impl From<ryw::error::BoxError> for ScyllaError {
    /// This crate's own error comes back unchanged; anything else tower middleware raised
    /// becomes [`ScyllaError::Middleware`].
    fn from(error: ryw::error::BoxError) -> Self {
        ryw::error::MiddlewareError::unbox::<ScyllaError>(error).unwrap_or_else(Into::into)
    }
}

impl From<ExecutionError> for ScyllaError {
    fn from(e: ExecutionError) -> Self {
        ScyllaError::Execution(Box::new(e))
    }
}

impl ScyllaError {
    /// A short, stable name of the kind of error, for metrics (`error.type`): the server's error
    /// (`write_timeout`, `unavailable`, ...), a client-side one (`request_timeout`,
    /// `connection`), `not_applied`, `result` or `middleware`.
    pub fn kind(&self) -> &'static str {
        if let Some(db) = self.db_error() {
            return match db {
                DbError::WriteTimeout { .. } => "write_timeout",
                DbError::ReadTimeout { .. } => "read_timeout",
                DbError::Unavailable { .. } => "unavailable",
                DbError::Overloaded => "overloaded",
                DbError::SyntaxError => "syntax_error",
                DbError::Invalid => "invalid",
                _ => "server_error",
            };
        }
        match self {
            ScyllaError::Execution(e) => match &**e {
                ExecutionError::RequestTimeout(_) => "request_timeout",
                _ => "connection",
            },
            ScyllaError::NotApplied { .. } => "not_applied",
            ScyllaError::Untracked
            | ScyllaError::TrackedColumnNotSelected { .. }
            | ScyllaError::InvalidPaging { .. } => "configuration",
            ScyllaError::ClockExhausted { .. } => "clock_exhausted",
            ScyllaError::Result(_) => "result",
            ScyllaError::Middleware(_) => "middleware",
        }
    }

    /// The driver's error, when the driver failed.
    pub fn execution_error(&self) -> Option<&ExecutionError> {
        match self {
            ScyllaError::Execution(e) => Some(e),
            _ => None,
        }
    }

    /// The server's error, when the server answered with one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self.execution_error()? {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, _)) => Some(e),
            _ => None,
        }
    }

    /// The coordinator timed out waiting for replicas to acknowledge a write: it may have
    /// applied.
    pub fn is_write_timeout(&self) -> bool {
        matches!(
            self.db_error(),
            Some(DbError::WriteTimeout { .. } | DbError::WriteFailure { .. })
        )
    }

    /// A read, or the client itself, timed out.
    pub fn is_timeout(&self) -> bool {
        self.is_write_timeout()
            || matches!(self.db_error(), Some(DbError::ReadTimeout { .. }))
            || matches!(
                self.execution_error(),
                Some(ExecutionError::RequestTimeout(_))
            )
    }

    /// Not enough replicas were alive for the consistency level: nothing was written.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.db_error(), Some(DbError::Unavailable { .. }))
    }

    /// The node was overloaded, bootstrapping or rate limiting: nothing was done.
    pub fn is_overloaded(&self) -> bool {
        matches!(
            self.db_error(),
            Some(DbError::Overloaded | DbError::IsBootstrapping | DbError::RateLimitReached { .. })
        )
    }

    /// A configuration error of the request ([`ScyllaError::Untracked`],
    /// [`ScyllaError::TrackedColumnNotSelected`], [`ScyllaError::InvalidPaging`]): permanent,
    /// nothing to retry.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ScyllaError::Untracked
                | ScyllaError::TrackedColumnNotSelected { .. }
                | ScyllaError::InvalidPaging { .. }
        )
    }

    /// A lightweight transaction's condition did not hold.
    pub fn is_not_applied(&self) -> bool {
        matches!(self, ScyllaError::NotApplied { .. })
    }

    /// How the session layer treats the error: unavailable, overloaded and read timeouts are
    /// retried (nothing was written); write timeouts, server errors and broken connections are
    /// ambiguous (retried only with the same timestamp, and only for idempotent writes); a failed
    /// condition is a conflict; everything else (syntax, invalid, unauthorized...) is permanent.
    pub fn class(&self) -> ErrorClass {
        if self.is_not_applied() {
            return ErrorClass::Conflict;
        }
        if let ScyllaError::Middleware(m) = self {
            return m.class();
        }
        if let Some(db) = self.db_error() {
            return match db {
                DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. }
                | DbError::ReadTimeout { .. }
                | DbError::ReadFailure { .. } => ErrorClass::RETRYABLE,
                DbError::WriteTimeout { .. }
                | DbError::WriteFailure { .. }
                | DbError::ServerError => ErrorClass::AMBIGUOUS,
                _ => ErrorClass::Permanent,
            };
        }
        match self.execution_error() {
            Some(ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan) => {
                ErrorClass::RETRYABLE
            }
            Some(
                ExecutionError::RequestTimeout(_)
                | ExecutionError::LastAttemptError(
                    RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::UnableToAllocStreamId,
                ),
            ) => ErrorClass::AMBIGUOUS,
            _ => ErrorClass::Permanent,
        }
    }
}
