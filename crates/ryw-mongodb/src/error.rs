//! Errors of the MongoDB service, classified for the retry policy.

use mongodb::error::{ErrorKind, WriteFailure};
use ryw::adapter::ErrorClass;

/// Server error codes that mean "not applied, try another node or later" (a primary stepping
/// down, a node shutting down, a host unreachable).
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 134,
];

/// An error from [`crate::MongoService`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MongoError {
    /// A unique index rejected the write (code 11000) and it was not this write's own earlier
    /// attempt.
    #[error("duplicate key: {message}")]
    DuplicateKey {
        /// The server's message.
        message: String,
    },
    /// The server refused the command.
    #[error("command failed with code {code} ({name}): {message}")]
    Command {
        /// The error code.
        code: i32,
        /// The code name.
        name: String,
        /// The message.
        message: String,
        /// The error labels (`RetryableWriteError`, `TransientTransactionError`...).
        labels: Vec<String>,
    },
    /// The write applied but its write concern was not satisfied in time.
    #[error("write concern error {code}: {message}")]
    WriteConcern {
        /// The code.
        code: i32,
        /// The message.
        message: String,
    },
    /// The network failed or no server could be selected: the request may have applied.
    #[error("network: {0}")]
    Network(String),
    /// The request or a document is invalid (the driver refused it, or (de)serialization failed).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Anything else the driver reported.
    #[error("{0}")]
    Other(String),
    /// A replay (after an attempt that may have applied) found no trace of its write and could
    /// not tell whether the earlier attempt applied (its document may have been deleted or
    /// changed since), so it applied nothing. The session layer reports `ryw::Error::Ambiguous`.
    #[error("replay not resolved: {0}")]
    Unresolved(String),
    /// Tower middleware between the session layer and this service failed (a timeout elapsed,
    /// load shedding refused the request): see [`ryw::error::MiddlewareError`].
    #[error(transparent)]
    Middleware(#[from] ryw::error::MiddlewareError),
}

impl From<ryw::error::BoxError> for MongoError {
    /// This crate's own error comes back unchanged; anything else tower middleware raised
    /// becomes [`MongoError::Middleware`].
    fn from(error: ryw::error::BoxError) -> Self {
        ryw::error::MiddlewareError::unbox::<MongoError>(error).unwrap_or_else(Into::into)
    }
}

impl MongoError {
    /// A short, stable name of the kind of error (`duplicate_key`, `network`, ...), for metrics
    /// (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            MongoError::DuplicateKey { .. } => "duplicate_key",
            MongoError::Command { .. } => "command",
            MongoError::WriteConcern { .. } => "write_concern",
            MongoError::Network(_) => "network",
            MongoError::Invalid(_) => "invalid",
            MongoError::Other(_) => "other",
            MongoError::Unresolved(_) => "unresolved",
            MongoError::Middleware(_) => "middleware",
        }
    }

    /// True for a duplicate key.
    pub fn is_duplicate_key(&self) -> bool {
        matches!(self, MongoError::DuplicateKey { .. })
    }

    /// True for network failures and unreachable servers.
    pub fn is_network(&self) -> bool {
        matches!(self, MongoError::Network(_))
    }

    /// True for invalid requests.
    pub fn is_invalid(&self) -> bool {
        matches!(self, MongoError::Invalid(_))
    }

    /// True when the error carries `label`.
    pub fn has_label(&self, label: &str) -> bool {
        matches!(self, MongoError::Command { labels, .. } if labels.iter().any(|l| l == label))
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    /// How the session layer treats the error.
    pub fn class(&self) -> ErrorClass {
        match self {
            MongoError::Network(_) => ErrorClass::AMBIGUOUS,
            MongoError::Command { code, labels, .. } => {
                if labels
                    .iter()
                    .any(|l| l == "RetryableWriteError" || l == "TransientTransactionError")
                {
                    ErrorClass::AMBIGUOUS
                } else if RETRYABLE_CODES.contains(code) {
                    ErrorClass::RETRYABLE
                } else {
                    ErrorClass::Permanent
                }
            }
            MongoError::WriteConcern { .. } => ErrorClass::AMBIGUOUS,
            MongoError::Unresolved(_) => ErrorClass::Unresolved,
            MongoError::Middleware(m) => m.class(),
            _ => ErrorClass::Permanent,
        }
    }

    pub(crate) fn from_driver(error: mongodb::error::Error) -> Self {
        let labels: Vec<String> = error.labels().iter().cloned().collect();
        match *error.kind {
            ErrorKind::Command(c) => MongoError::Command {
                code: c.code,
                name: c.code_name,
                message: c.message,
                labels,
            },
            ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => {
                MongoError::DuplicateKey { message: w.message }
            }
            ErrorKind::Write(WriteFailure::WriteError(w)) => MongoError::Command {
                code: w.code,
                name: w.code_name.unwrap_or_default(),
                message: w.message,
                labels,
            },
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => MongoError::WriteConcern {
                code: w.code,
                message: w.message,
            },
            ErrorKind::Io(e) => MongoError::Network(e.to_string()),
            ErrorKind::ServerSelection { message, .. }
            | ErrorKind::ConnectionPoolCleared { message, .. } => MongoError::Network(message),
            ErrorKind::InvalidArgument { message, .. } => MongoError::Invalid(message),
            ErrorKind::BsonDeserialization(e) => MongoError::Invalid(e.to_string()),
            ErrorKind::BsonSerialization(e) => MongoError::Invalid(e.to_string()),
            other => MongoError::Other(format!("{other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let stepdown = MongoError::Command {
            code: 10107,
            name: "NotWritablePrimary".into(),
            message: String::new(),
            labels: vec![],
        };
        assert_eq!(stepdown.class(), ErrorClass::RETRYABLE);
        let labelled = MongoError::Command {
            code: 1,
            name: String::new(),
            message: String::new(),
            labels: vec!["RetryableWriteError".into()],
        };
        assert!(labelled.has_label("RetryableWriteError") && labelled.is_transient());
        assert_eq!(
            MongoError::Network("reset".into()).class(),
            ErrorClass::AMBIGUOUS
        );
        assert_eq!(
            MongoError::Invalid("x".into()).class(),
            ErrorClass::Permanent
        );
        assert!(!MongoError::DuplicateKey {
            message: String::new()
        }
        .is_transient());
    }
}
