//! Write conflicts and their resolution.
//!
//! When a conditional write loses to another writer, the adapter describes it as a [`Conflict`]:
//! the scope, this write's id and clock, the version it expected, the version (and, when the
//! store returned it, the writer and clock) that is there now, and the current item. A
//! [`ConflictResolver`] decides: keep this write (the layer rebases it onto the current version
//! and sends it again under the same [`WriteId`]), yield to the other writer (the caller gets
//! [`crate::Error::Conflict`]), or send a merged request.
//!
//! The default, [`LastWriterWins`], compares hybrid clocks with a deterministic tie-break on the
//! write id, so every process resolves the same conflict the same way.
//!
//! # Example: a resolver hook
//!
//! ```
//! use ryw::conflict::{Conflict, ConflictResolver, LastWriterWins, Resolution};
//!
//! /// Never overwrite; let the caller re-read and decide.
//! #[derive(Debug)]
//! struct FirstWriterWins;
//!
//! impl<R> ConflictResolver<R> for FirstWriterWins {
//!     fn resolve(&self, _request: &R, _conflict: &Conflict) -> Resolution<R> {
//!         Resolution::Yield
//!     }
//! }
//! # let _ = LastWriterWins;
//! ```

use crate::clock::HybridTimestamp;
use crate::session::WriteId;
use crate::version::{ScopeKey, Version};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A conditional write that lost to another writer.
#[derive(Clone)]
pub struct Conflict {
    /// The scope written.
    pub scope: ScopeKey,
    /// This write.
    pub write_id: WriteId,
    /// This write's hybrid clock reading.
    pub timestamp: HybridTimestamp,
    /// The version this write expected to replace, if it was conditional on one.
    pub expected: Option<Version>,
    /// The version there now.
    pub current: Version,
    /// The clock of the write there now, when the store keeps it.
    pub current_timestamp: Option<HybridTimestamp>,
    /// The writer of the version there now, when the store keeps it.
    pub current_writer: Option<WriteId>,
    /// The current item, in the adapter's own type; see [`Conflict::current_item`].
    pub item: Option<Arc<dyn Any + Send + Sync>>,
    /// The item is gone: another writer deleted it since the session saw it (`current` is then
    /// [`Version::ZERO`]). Overwriting it creates it again.
    pub gone: bool,
}

impl Conflict {
    /// A conflict with no clock, writer or item for the current version.
    pub fn new(
        scope: ScopeKey,
        write_id: WriteId,
        timestamp: HybridTimestamp,
        expected: Option<Version>,
        current: Version,
    ) -> Self {
        Conflict {
            scope,
            write_id,
            timestamp,
            expected,
            current,
            current_timestamp: None,
            current_writer: None,
            item: None,
            gone: false,
        }
    }

    /// The current item, if the adapter attached one of type `T`.
    pub fn current_item<T: Any>(&self) -> Option<&T> {
        self.item.as_deref()?.downcast_ref()
    }
}

impl fmt::Debug for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conflict")
            .field("scope", &self.scope)
            .field("write_id", &self.write_id)
            .field("timestamp", &self.timestamp)
            .field("expected", &self.expected)
            .field("current", &self.current)
            .field("current_timestamp", &self.current_timestamp)
            .field("current_writer", &self.current_writer)
            .field("has_item", &self.item.is_some())
            .field("gone", &self.gone)
            .finish()
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = self
            .expected
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        if self.gone {
            return write!(
                f,
                "write {} to {:?} expected {expected} but found the item deleted",
                self.write_id, self.scope
            );
        }
        write!(
            f,
            "write {} to {:?} expected {expected} but found {}",
            self.write_id, self.scope, self.current
        )
    }
}

/// What to do about a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution<R> {
    /// Keep this write: rebase it onto the current version and send it again.
    Overwrite,
    /// Keep the other writer's version: the caller gets [`crate::Error::Conflict`].
    Yield,
    /// Send this merged request instead (rebased onto the current version, same write id).
    Merge(R),
}

/// Decides conflicts. Implement it to merge application values.
pub trait ConflictResolver<R>: Send + Sync + fmt::Debug + 'static {
    /// Resolves `conflict` for `request`.
    fn resolve(&self, request: &R, conflict: &Conflict) -> Resolution<R>;
}

/// Last writer wins on the hybrid clock, ties broken by write id; unknown current writers win
/// (a write never overwrites what it cannot order itself after). An item another writer deleted
/// is created again, as the store's own write would do: a delete leaves no clock to order
/// against. (A resolver that yields when [`Conflict::gone`] reports it to the caller instead.)
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriterWins;

impl LastWriterWins {
    /// True when this write orders after the current one, or the item is gone.
    pub fn mine_wins(conflict: &Conflict) -> bool {
        if conflict.gone {
            return true;
        }
        match (conflict.current_timestamp, conflict.current_writer) {
            (Some(ts), Some(writer)) => (conflict.timestamp, conflict.write_id) > (ts, writer),
            (Some(ts), None) => conflict.timestamp > ts,
            _ => false,
        }
    }
}

impl<R> ConflictResolver<R> for LastWriterWins {
    fn resolve(&self, _request: &R, conflict: &Conflict) -> Resolution<R> {
        if Self::mine_wins(conflict) {
            Resolution::Overwrite
        } else {
            Resolution::Yield
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;
    use crate::version::StoreId;

    fn conflict(mine: u64, theirs: Option<u64>, their_session: u128) -> Conflict {
        let mut c = Conflict::new(
            ScopeKey::new(StoreId::new(0), b"k"),
            WriteId::new(SessionId::from_u128(5), 0, 1),
            HybridTimestamp::new(mine),
            Some(Version::new(1)),
            Version::new(2),
        );
        c.current_timestamp = theirs.map(HybridTimestamp::new);
        c.current_writer = Some(WriteId::new(SessionId::from_u128(their_session), 0, 9));
        c
    }

    #[test]
    fn last_writer_wins_with_deterministic_tie_break() {
        assert!(LastWriterWins::mine_wins(&conflict(10, Some(9), 1)));
        assert!(!LastWriterWins::mine_wins(&conflict(9, Some(10), 1)));
        // Same clock: the larger write id wins, the same way in every process.
        assert!(LastWriterWins::mine_wins(&conflict(10, Some(10), 4)));
        assert!(!LastWriterWins::mine_wins(&conflict(10, Some(10), 6)));
        assert!(!LastWriterWins::mine_wins(&conflict(10, None, 1)));
        let r: Resolution<()> = LastWriterWins.resolve(&(), &conflict(10, Some(9), 1));
        assert_eq!(r, Resolution::Overwrite);
        let mut c = conflict(1, None, 1);
        c.item = Some(Arc::new(String::from("theirs")));
        assert_eq!(
            c.current_item::<String>().map(String::as_str),
            Some("theirs")
        );
        assert!(c.current_item::<u32>().is_none());
    }

    #[test]
    fn an_item_deleted_by_another_writer_is_created_again_by_last_writer_wins() {
        // Even against a writer that would win were the item there.
        let mut c = conflict(1, Some(9), 1);
        c.gone = true;
        c.current = Version::ZERO;
        let r: Resolution<()> = LastWriterWins.resolve(&(), &c);
        assert_eq!(r, Resolution::Overwrite);
        assert!(c.to_string().ends_with("but found the item deleted"), "{c}");
    }
}
