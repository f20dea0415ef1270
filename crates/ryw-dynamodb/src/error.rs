//! Errors of the DynamoDB service, classified for the retry policy.

use crate::expr::Item;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::CancellationReason;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use ryw::adapter::{Applied, ErrorClass};

/// The error underneath a [`DynamoError`], as the SDK reported it (shared, so the error stays
/// `Clone`).
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A conditional write whose condition failed.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionFailure {
    /// The item as it is now (DynamoDB returns it with `ReturnValuesOnConditionCheckFailure`).
    pub item: Option<Item>,
    /// The version ryw's condition expected.
    pub expected: Option<u64>,
    /// True when the version differed (another writer won); false when the version matched and
    /// the caller's own condition failed.
    pub version_conflict: bool,
}

/// An error from [`crate::DynamoService`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DynamoError {
    /// A conditional write failed (`ConditionalCheckFailedException`).
    #[error("condition check failed{}", if .0.version_conflict { " (version conflict)" } else { "" })]
    ConditionFailed(Box<ConditionFailure>),
    /// A transaction was canceled; one reason per item, in request order.
    #[error("transaction canceled: {}", reasons_text(.reasons))]
    TransactionCanceled {
        /// The cancellation reasons.
        reasons: Vec<Cancellation>,
        /// Items whose reason is a version conflict with another writer.
        version_conflicts: Vec<usize>,
    },
    /// Throttled (`ProvisionedThroughputExceededException`, `ThrottlingException`,
    /// `RequestLimitExceeded`) or a transaction in progress: nothing applied.
    #[error("throttled: {code}: {message}")]
    Throttled {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The request is invalid (`ValidationException`, or the SDK refused to build it).
    #[error("invalid request: {message}")]
    Validation {
        /// The message.
        message: String,
        /// The SDK's error, when it refused to build the request.
        #[source]
        source: Option<Source>,
    },
    /// The table or index does not exist.
    #[error("resource not found: {message}")]
    ResourceNotFound {
        /// The message.
        message: String,
    },
    /// The service answered with another error; 5xx are transient.
    #[error("service error {status} {code}: {message}")]
    Service {
        /// The HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// No answer in time, or the connection failed after the request may have been sent.
    #[error("no response: {message}")]
    NoResponse {
        /// What happened.
        message: String,
        /// The SDK's error, kept whole.
        #[source]
        source: Option<Source>,
    },
    /// The request never left the client: the SDK's connector refused it itself (a user error,
    /// such as an endpoint it cannot use). A failed or closed connection is
    /// [`DynamoError::NoResponse`]: the request may have reached DynamoDB.
    #[error("request not sent: {message}")]
    NotSent {
        /// What happened.
        message: String,
        /// The SDK's error, kept whole.
        #[source]
        source: Option<Source>,
    },
    /// A write through the session layer names a table the adapter has no key schema for.
    #[error("table {0:?} has no key schema in the ryw DynamoDB adapter configuration")]
    UnknownTable(String),
    /// A replay (after an attempt that may have applied) found the item gone: whether the earlier
    /// attempt applied before someone deleted the item cannot be told, so the write was not sent
    /// again. The session layer reports it as `ryw::Error::Ambiguous`.
    #[error("replay not resolved: {0}")]
    Unresolved(String),
    /// A `BatchGetItem` still had `UnprocessedKeys` after the service had sent them again as many
    /// times as [`DynamoAdapter::batch_get_retries`](crate::DynamoAdapter::batch_get_retries)
    /// allows (DynamoDB keeps keys back when it is throttled or the response is too large).
    /// Nothing was applied, so the session layer's retry policy may send the whole batch again.
    #[error("{remaining} keys of a BatchGetItem still unprocessed after {rounds} rounds")]
    UnprocessedKeys {
        /// How many keys were left.
        remaining: usize,
        /// The rounds sent (the first request and every resend).
        rounds: u32,
        /// The keys left, per table, as DynamoDB returned them: a request of its own can send
        /// them again.
        keys: std::collections::HashMap<String, aws_sdk_dynamodb::types::KeysAndAttributes>,
    },
    /// Tower middleware between the session layer and this service failed (a timeout elapsed,
    /// load shedding refused the request): see [`ryw::error::MiddlewareError`].
    #[error(transparent)]
    Middleware(#[from] ryw::error::MiddlewareError),
}

impl From<ryw::error::BoxError> for DynamoError {
    /// This crate's own error comes back unchanged; anything else tower middleware raised
    /// becomes [`DynamoError::Middleware`].
    fn from(error: ryw::error::BoxError) -> Self {
        ryw::error::MiddlewareError::unbox::<DynamoError>(error).unwrap_or_else(Into::into)
    }
}

fn reasons_text(reasons: &[Cancellation]) -> String {
    reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why DynamoDB canceled a transaction, for one of its items (its `CancellationReasons` come in
/// item order).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Cancellation {
    /// The reason.
    pub code: CancellationCode,
    /// DynamoDB's message, if any.
    pub message: Option<String>,
    /// The item as it is now, for a failed condition (ryw asks for it with
    /// `ReturnValuesOnConditionCheckFailure`).
    pub item: Option<Item>,
}

impl From<CancellationReason> for Cancellation {
    fn from(reason: CancellationReason) -> Self {
        Cancellation {
            code: CancellationCode::parse(reason.code()),
            message: reason.message,
            item: reason.item,
        }
    }
}

/// The code of a [`Cancellation`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancellationCode {
    /// This item did not cause the cancellation (`None`).
    NotCanceled,
    /// Its condition did not hold (`ConditionalCheckFailed`).
    ConditionalCheckFailed,
    /// Its item collection is full (`ItemCollectionSizeLimitExceeded`).
    ItemCollectionSizeLimitExceeded,
    /// Another transaction or write was in progress on it (`TransactionConflict`).
    TransactionConflict,
    /// The table's provisioned throughput was exceeded (`ProvisionedThroughputExceeded`).
    ProvisionedThroughputExceeded,
    /// Throttled (`ThrottlingError`).
    ThrottlingError,
    /// The item's request is invalid (`ValidationError`).
    ValidationError,
    /// A code this version does not know, as DynamoDB sent it.
    Other(String),
}

impl CancellationCode {
    /// The code DynamoDB sent (`None` or absent: [`CancellationCode::NotCanceled`]).
    pub fn parse(code: Option<&str>) -> Self {
        match code {
            None | Some("None") => CancellationCode::NotCanceled,
            Some("ConditionalCheckFailed") => CancellationCode::ConditionalCheckFailed,
            Some("ItemCollectionSizeLimitExceeded") => {
                CancellationCode::ItemCollectionSizeLimitExceeded
            }
            Some("TransactionConflict") => CancellationCode::TransactionConflict,
            Some("ProvisionedThroughputExceeded") => {
                CancellationCode::ProvisionedThroughputExceeded
            }
            Some("ThrottlingError") => CancellationCode::ThrottlingError,
            Some("ValidationError") => CancellationCode::ValidationError,
            Some(other) => CancellationCode::Other(other.to_owned()),
        }
    }

    /// The code as DynamoDB spells it.
    pub fn as_str(&self) -> &str {
        match self {
            CancellationCode::NotCanceled => "None",
            CancellationCode::ConditionalCheckFailed => "ConditionalCheckFailed",
            CancellationCode::ItemCollectionSizeLimitExceeded => "ItemCollectionSizeLimitExceeded",
            CancellationCode::TransactionConflict => "TransactionConflict",
            CancellationCode::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
            CancellationCode::ThrottlingError => "ThrottlingError",
            CancellationCode::ValidationError => "ValidationError",
            CancellationCode::Other(code) => code,
        }
    }

    /// Retrying the transaction may succeed: nothing applied, and the cause is passing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CancellationCode::TransactionConflict
                | CancellationCode::ThrottlingError
                | CancellationCode::ProvisionedThroughputExceeded
        )
    }
}

impl DynamoError {
    /// A short, stable name of the kind of error (`condition_failed`, `throttled`, ...), for
    /// metrics (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            DynamoError::ConditionFailed(_) => "condition_failed",
            DynamoError::TransactionCanceled { .. } => "transaction_canceled",
            DynamoError::Throttled { .. } => "throttled",
            DynamoError::Validation { .. } => "validation",
            DynamoError::ResourceNotFound { .. } => "resource_not_found",
            DynamoError::Service { .. } => "service",
            DynamoError::NoResponse { .. } => "no_response",
            DynamoError::NotSent { .. } => "not_sent",
            DynamoError::UnknownTable(_) => "unknown_table",
            DynamoError::Unresolved(_) => "unresolved",
            DynamoError::UnprocessedKeys { .. } => "unprocessed_keys",
            DynamoError::Middleware(_) => "middleware",
        }
    }

    /// True for a failed condition (a version conflict or the caller's own condition).
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, DynamoError::ConditionFailed(_))
    }

    /// True for a canceled transaction.
    pub fn is_transaction_canceled(&self) -> bool {
        matches!(self, DynamoError::TransactionCanceled { .. })
    }

    /// True when another writer won (a version conflict, single item or in a transaction).
    pub fn is_version_conflict(&self) -> bool {
        match self {
            DynamoError::ConditionFailed(c) => c.version_conflict,
            DynamoError::TransactionCanceled {
                version_conflicts, ..
            } => !version_conflicts.is_empty(),
            _ => false,
        }
    }

    /// True for throttling.
    pub fn is_throttled(&self) -> bool {
        matches!(self, DynamoError::Throttled { .. })
    }

    /// True for a `BatchGetItem` whose keys were not all processed within its budget.
    pub fn is_unprocessed_keys(&self) -> bool {
        matches!(self, DynamoError::UnprocessedKeys { .. })
    }

    /// True for validation errors.
    pub fn is_validation(&self) -> bool {
        matches!(self, DynamoError::Validation { .. })
    }

    /// True for a missing table or index.
    pub fn is_resource_not_found(&self) -> bool {
        matches!(self, DynamoError::ResourceNotFound { .. })
    }

    /// True when the request may have applied without the client knowing.
    pub fn is_ambiguous(&self) -> bool {
        self.class() == ErrorClass::Transient(Applied::Unknown)
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    /// How the session layer treats the error.
    pub fn class(&self) -> ErrorClass {
        match self {
            DynamoError::ConditionFailed(c) if c.version_conflict => ErrorClass::Conflict,
            DynamoError::TransactionCanceled {
                reasons,
                version_conflicts,
            } => {
                if !version_conflicts.is_empty() {
                    ErrorClass::Conflict
                } else if reasons.iter().any(|r| r.code.is_transient()) {
                    ErrorClass::RETRYABLE
                } else {
                    ErrorClass::Permanent
                }
            }
            DynamoError::Throttled { .. }
            | DynamoError::NotSent { .. }
            | DynamoError::UnprocessedKeys { .. } => ErrorClass::RETRYABLE,
            DynamoError::Service { status, .. } if *status >= 500 => ErrorClass::AMBIGUOUS,
            DynamoError::NoResponse { .. } => ErrorClass::AMBIGUOUS,
            DynamoError::Unresolved(_) => ErrorClass::Unresolved,
            DynamoError::Middleware(m) => m.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Maps any SDK error by its code and status.
    pub(crate) fn from_sdk<E>(error: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // The message is the error and its causes in words; the error itself is kept as the
        // source.
        fn whole<E>(e: SdkError<E, HttpResponse>) -> (String, Option<Source>)
        where
            E: std::error::Error + Send + Sync + 'static,
        {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                // Error chains often repeat the same words one level down.
                if !message.ends_with(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                cause = c.source();
            }
            (message, Some(std::sync::Arc::new(e)))
        }
        match error {
            e @ SdkError::ConstructionFailure(_) => {
                let (message, source) = whole(e);
                DynamoError::Validation { message, source }
            }
            e @ (SdkError::TimeoutError(_) | SdkError::ResponseError(_)) => {
                let (message, source) = whole(e);
                DynamoError::NoResponse { message, source }
            }
            SdkError::DispatchFailure(d) => {
                // Only a failure the client raised itself (a user error: a bad endpoint, say) shows
                // that nothing left; a connection closed mid-answer (hyper's
                // `IncompleteMessage`, kind "other") may follow a write that applied.
                let may_have_been_sent = !d.is_user();
                let (message, source) = whole(SdkError::<E, HttpResponse>::DispatchFailure(d));
                if may_have_been_sent {
                    DynamoError::NoResponse { message, source }
                } else {
                    DynamoError::NotSent { message, source }
                }
            }
            SdkError::ServiceError(e) => {
                let status = e.raw().status().as_u16();
                let err = e.into_err();
                let mapped = Self::from_code(
                    status,
                    err.code().unwrap_or("Unknown"),
                    err.message().unwrap_or(""),
                );
                match mapped {
                    DynamoError::Validation { message, .. } => DynamoError::Validation {
                        message,
                        source: Some(std::sync::Arc::new(err)),
                    },
                    other => other,
                }
            }
            other => {
                let (message, source) = whole(other);
                DynamoError::NoResponse { message, source }
            }
        }
    }

    fn from_code(status: u16, code: &str, message: &str) -> Self {
        let message = message.to_owned();
        match code {
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TransactionInProgressException" => DynamoError::Throttled {
                code: code.to_owned(),
                message,
            },
            "ValidationException" | "SerializationException" => DynamoError::Validation {
                message,
                source: None,
            },
            "ResourceNotFoundException" => DynamoError::ResourceNotFound { message },
            // The caller's own condition (ryw's conditions are handled where they are sent).
            "ConditionalCheckFailedException" => {
                DynamoError::ConditionFailed(Box::new(ConditionFailure {
                    item: None,
                    expected: None,
                    version_conflict: false,
                }))
            }
            _ => DynamoError::Service {
                status,
                code: code.to_owned(),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let throttled =
            DynamoError::from_code(400, "ProvisionedThroughputExceededException", "slow down");
        assert!(throttled.is_throttled() && throttled.is_transient() && !throttled.is_ambiguous());
        let invalid = DynamoError::from_code(400, "ValidationException", "bad");
        assert!(invalid.is_validation() && !invalid.is_transient());
        let internal = DynamoError::from_code(500, "InternalServerError", "oops");
        assert!(internal.is_transient() && internal.is_ambiguous());
        assert!(
            DynamoError::from_code(400, "ResourceNotFoundException", "").is_resource_not_found()
        );
        let own_condition = DynamoError::ConditionFailed(Box::new(ConditionFailure {
            item: None,
            expected: Some(1),
            version_conflict: false,
        }));
        assert_eq!(own_condition.class(), ErrorClass::Permanent);
        let conflict = DynamoError::TransactionCanceled {
            reasons: vec![CancellationReason::builder()
                .code("TransactionConflict")
                .build()
                .into()],
            version_conflicts: vec![],
        };
        assert_eq!(conflict.class(), ErrorClass::RETRYABLE);
    }
}
