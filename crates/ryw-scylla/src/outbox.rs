//! ScyllaDB writes and `ryw-outbox` (feature `outbox`): not deferrable.
//!
//! A ScyllaDB request binds its values as the driver's `SerializeRow` trait objects, which
//! serialize only against the column types of a prepared statement and cannot be read back into a
//! request: there is no durable encoding to keep. Behind an `OutboxLayer`, a ScyllaDB write that
//! fails past its retries keeps its error, wrapped as `OutboxServiceError::NotDeferrable` with the
//! error as its cause; reads pass through as usual. Writes made while the breaker is open are
//! refused the same way (not sent).
//!
//! ```
//! use ryw_outbox::DurableRequest;
//! use ryw_scylla::ScyllaRequest;
//!
//! let write = ScyllaRequest::write("INSERT INTO ks.t (pk, v) VALUES (?, ?)", (1i32, 2i32));
//! let refused = write.encode(&mut Vec::new()).unwrap_err();
//! assert!(refused.reason.contains("ScyllaDB"));
//! ```

use crate::request::ScyllaRequest;
use ryw_outbox::{DecodeError, DurableRequest, NotDeferrable};

impl DurableRequest for ScyllaRequest {
    fn encode(&self, _out: &mut Vec<u8>) -> Result<(), NotDeferrable> {
        Err(NotDeferrable {
            reason: "ScyllaDB requests are not deferrable: the driver's bound values cannot be \
                     read back into a request",
        })
    }

    fn decode(_bytes: &[u8]) -> Result<Self, DecodeError> {
        Err(DecodeError::Format)
    }
}
