//! What goes wrong with the outbox itself, and how the embedded store's failures and panics become
//! an [`OutboxError`].

use crate::entry::DecodeError;

/// What went wrong with the outbox itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The queue is at its bound: the write is not kept (backpressure).
    #[error("outbox full: {entries} entries, {bytes} bytes queued")]
    Full {
        /// Entries queued.
        entries: u64,
        /// Bytes queued.
        bytes: u64,
    },
    /// The entry is beyond the bounds an entry can be read back with: not kept.
    #[error("outbox entry refused: {0}")]
    Invalid(DecodeError),
    /// The embedded store failed (disk full, I/O error, a damaged file, a file another process
    /// holds open).
    #[error("outbox storage: {0}")]
    Storage(#[from] redb::Error),
    /// The file is so damaged that the embedded store could not go on (it panicked; the panic
    /// was caught).
    #[error("outbox file damaged: {0}")]
    Damaged(String),
    /// A stored dead letter does not decode.
    #[error("outbox entry {seq}: {error}")]
    Corrupt {
        /// The entry's sequence number.
        seq: u64,
        /// Why.
        error: DecodeError,
    },
    /// No entry has this sequence number.
    #[error("no outbox entry {0}")]
    NotFound(u64),
}

/// `$e` with its embedded store error as an [`OutboxError::Storage`].
macro_rules! storage {
    ($e:expr) => {
        $e.map_err(|e| OutboxError::Storage(e.into()))
    };
}
pub(super) use storage;

/// Runs `f`, turning a panic inside the embedded store (a damaged file can make it panic) into
/// [`OutboxError::Damaged`].
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, OutboxError>) -> Result<T, OutboxError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(OutboxError::Damaged(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the embedded store panicked".to_owned()),
        )),
    }
}
