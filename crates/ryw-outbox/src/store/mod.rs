//! The outbox's embedded store: deferred writes and dead letters in one redb file.
//!
//! [redb](https://www.redb.org) is a crash-safe, copy-on-write B-tree store: every append is one
//! write transaction committed with [`redb::Durability::Immediate`] (fsync) before
//! [`Outbox::append`] returns, so a write answered "deferred" survives a crash of the process or
//! the machine. The queue is bounded by entry count and bytes: past either bound an append is
//! [`OutboxError::Full`] (backpressure), never unbounded disk.
//!
//! Entries are kept in append order (a global sequence number); the replayer drains them in that
//! order, each session's in the order its writes were made (their write sequence numbers). An entry that can no
//! longer be replayed safely moves, in one transaction, to the dead letters with its reason;
//! the application lists them ([`Outbox::dead_letters`]) and may queue one again
//! ([`Outbox::retry_dead_letter`]). An entry found damaged (its checksum does not match) is a
//! dead letter too, kept as its bytes: it never blocks the others. A file so damaged that the
//! embedded store itself fails (or panics) gives [`OutboxError::Damaged`] or
//! [`OutboxError::Storage`], never a panic of the caller.
//!
//! ```
//! use ryw::clock::HybridTimestamp;
//! use ryw::{Session, WriteId};
//! use ryw_outbox::entry::Entry;
//! use ryw_outbox::{Outbox, OutboxConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("ryw-outbox-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("outbox.redb");
//! let session = Session::new();
//! let entry = Entry {
//!     write_id: WriteId::new(session.id(), 1, 1),
//!     timestamp: HybridTimestamp::new(1),
//!     may_have_applied: false,
//!     deferred_at: 0,
//!     scopes: vec![],
//!     session: session.token().encode()?,
//!     request: vec![1, 2, 3],
//! };
//! let seq = {
//!     let outbox = Outbox::open(&path, OutboxConfig::default())?;
//!     outbox.append(&entry)?
//! };
//! // Another process (or this one, restarted) finds it.
//! let outbox = Outbox::open(&path, OutboxConfig::default())?;
//! let pending = outbox.pending()?;
//! assert_eq!(pending, vec![(seq, entry.clone())]);
//! outbox.dead_letter(seq, "the store refused it")?;
//! assert!(outbox.pending()?.is_empty());
//! let letters = outbox.dead_letters()?;
//! assert_eq!(letters[0].reason, "the store refused it");
//! assert_eq!(letters[0].entry.as_ref().unwrap(), &entry);
//! # drop(outbox);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

mod dead_letter;
mod error;
mod file;
mod index;
mod outbox;
mod replayed;

pub use dead_letter::DeadLetter;
pub use error::OutboxError;
pub use outbox::{Outbox, OutboxConfig, WriteInFlight};
pub use replayed::REPLAYED_SESSIONS;
