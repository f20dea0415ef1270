//! The outbox's embedded store: deferred writes and dead letters in one redb file.
//!
//! [redb](https://www.redb.org) is a crash-safe, copy-on-write B-tree store: every append is one
//! write transaction committed with [`redb::Durability::Immediate`] (fsync) before
//! [`Outbox::append`] returns, so a write answered "deferred" survives a crash of the process or
//! the machine. The queue is bounded by entry count and bytes: past either bound an append is
//! [`OutboxError::Full`] (backpressure), never unbounded disk.
//!
//! Entries are kept in append order (a global sequence number); the replayer drains them in that
//! order, which keeps each session's writes in the order they were made. An entry that can no
//! longer be replayed safely moves, in one transaction, to the dead letters with its reason;
//! the application lists them ([`Outbox::dead_letters`]) and may queue one again
//! ([`Outbox::retry_dead_letter`]).
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
//! assert_eq!(pending, vec![(seq, entry)]);
//! outbox.dead_letter(seq, "the store refused it")?;
//! assert!(outbox.pending()?.is_empty());
//! assert_eq!(outbox.dead_letters()?[0].reason, "the store refused it");
//! # drop(outbox);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use crate::entry::{DecodeError, Entry, Reader};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ryw::{ScopeKey, Session, SessionId, WriteId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

const ENTRIES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("entries");
const DEAD: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("dead_letters");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// The next sequence number: never reused, even after the entries before it are gone.
const NEXT_SEQ: &str = "next_seq";

/// The outbox's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// The most entries queued at once (default 100,000).
    pub max_entries: u64,
    /// The most bytes of entries queued at once (default 256 MiB).
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl OutboxConfig {
    /// Sets the most entries queued at once.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets the most bytes of entries queued at once.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }
}

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
    /// The embedded store failed (disk full, I/O error, a file another process holds open).
    #[error("outbox storage: {0}")]
    Storage(#[from] redb::Error),
    /// A stored entry does not decode.
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

macro_rules! storage {
    ($e:expr) => {
        $e.map_err(|e| OutboxError::Storage(e.into()))
    };
}

/// A dead letter: an entry that could not be replayed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence number among the dead letters (its entry's, when it was queued).
    pub seq: u64,
    /// The entry.
    pub entry: Entry,
    /// Why it was not replayed.
    pub reason: String,
}

/// What the outbox holds in memory of its queue: per session, the queued writes and their scopes
/// (for reads, which must not claim a queued write is visible), and the totals.
#[derive(Default)]
struct Index {
    sessions: HashMap<SessionId, Vec<(u64, WriteId, Vec<ScopeKey>)>>,
    entries: u64,
    bytes: u64,
}

/// A durable, bounded queue of deferred writes; see the [module docs](self).
pub struct Outbox {
    db: Database,
    config: OutboxConfig,
    index: Mutex<Index>,
    /// Entries queued, readable without the index's lock: the request path asks it first.
    queued: AtomicU64,
    /// The live sessions of this process whose writes are queued: a replay records what it
    /// wrote into them, so their next reads are fenced on it.
    live: Mutex<HashMap<SessionId, Session>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.index();
        f.debug_struct("Outbox")
            .field("entries", &index.entries)
            .field("bytes", &index.bytes)
            .field("config", &self.config)
            .finish()
    }
}

impl Outbox {
    /// Opens the outbox at `path`, creating it if needed, and reads its queue back (after a
    /// crash, everything appended before it is there). One process at a time: redb refuses a
    /// file another process holds open ([`OutboxError::Storage`]).
    pub fn open(path: impl AsRef<Path>, config: OutboxConfig) -> Result<Self, OutboxError> {
        let db = storage!(Database::create(path))?;
        // Create the tables, so that reads of an empty outbox find them.
        let txn = storage!(db.begin_write())?;
        storage!(txn.open_table(ENTRIES))?;
        storage!(txn.open_table(DEAD))?;
        storage!(txn.open_table(META))?;
        storage!(txn.commit())?;
        let outbox = Outbox {
            db,
            config,
            index: Mutex::new(Index::default()),
            queued: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        };
        let mut index = Index::default();
        for (seq, entry, bytes) in outbox.scan()? {
            index.add(seq, &entry, bytes);
        }
        outbox.queued.store(index.entries, Ordering::Release);
        *outbox.index() = index;
        Ok(outbox)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Every queued entry with its size, in order.
    fn scan(&self) -> Result<Vec<(u64, Entry, u64)>, OutboxError> {
        let txn = storage!(self.db.begin_read())?;
        let table = storage!(txn.open_table(ENTRIES))?;
        let mut out = Vec::new();
        for item in storage!(table.iter())? {
            let (seq, bytes) = storage!(item)?;
            let (seq, bytes) = (seq.value(), bytes.value());
            let entry =
                Entry::decode(bytes).map_err(|error| OutboxError::Corrupt { seq, error })?;
            out.push((seq, entry, bytes.len() as u64));
        }
        Ok(out)
    }

    /// Appends `entry`, durably: when this returns `Ok`, the entry survives a crash. Returns its
    /// sequence number. [`OutboxError::Full`] at the bounds.
    pub fn append(&self, entry: &Entry) -> Result<u64, OutboxError> {
        let bytes = entry.encode();
        let size = bytes.len() as u64;
        // Appends are serialized (one redb write transaction at a time); the index lock is held
        // across the commit so that the bound is checked against what is really queued.
        let mut index = self.index();
        if index.entries + 1 > self.config.max_entries || index.bytes + size > self.config.max_bytes
        {
            return Err(OutboxError::Full {
                entries: index.entries,
                bytes: index.bytes,
            });
        }
        let txn = storage!(self.db.begin_write())?;
        let seq = {
            let mut meta = storage!(txn.open_table(META))?;
            let seq = storage!(meta.get(NEXT_SEQ))?.map_or(1, |v| v.value());
            storage!(meta.insert(NEXT_SEQ, seq + 1))?;
            let mut table = storage!(txn.open_table(ENTRIES))?;
            storage!(table.insert(seq, bytes.as_slice()))?;
            seq
        };
        storage!(txn.commit())?;
        index.add(seq, entry, size);
        self.queued.store(index.entries, Ordering::Release);
        Ok(seq)
    }

    /// [`Outbox::append`], remembering `session` (the live session of this process the write
    /// belongs to) for the replay.
    pub fn append_live(&self, entry: &Entry, session: &Session) -> Result<u64, OutboxError> {
        let seq = self.append(entry)?;
        lock(&self.live).insert(session.id(), session.clone());
        Ok(seq)
    }

    /// The live session `id` of this process, if a write of it was deferred here and is queued.
    pub fn live_session(&self, id: SessionId) -> Option<Session> {
        lock(&self.live).get(&id).cloned()
    }

    /// Forgets the live session of `id` once it has nothing queued.
    fn release(&self, id: SessionId, index: &Index) {
        if !index.sessions.contains_key(&id) {
            lock(&self.live).remove(&id);
        }
    }

    /// Every queued entry, in the order it was appended.
    pub fn pending(&self) -> Result<Vec<(u64, Entry)>, OutboxError> {
        Ok(self.scan()?.into_iter().map(|(s, e, _)| (s, e)).collect())
    }

    /// Forgets the entry `seq` (its write applied). Returns whether it was queued.
    pub fn remove(&self, seq: u64) -> Result<bool, OutboxError> {
        let mut index = self.index();
        let txn = storage!(self.db.begin_write())?;
        let removed = {
            let mut table = storage!(txn.open_table(ENTRIES))?;
            let removed = storage!(table.remove(seq))?.map(|v| v.value().to_vec());
            removed
        };
        storage!(txn.commit())?;
        if let Some(bytes) = &removed {
            if let Some(session) = index.forget(seq, bytes) {
                self.release(session, &index);
            }
            self.queued.store(index.entries, Ordering::Release);
        }
        Ok(removed.is_some())
    }

    /// Moves the entry `seq` to the dead letters with `reason`, in one transaction.
    pub fn dead_letter(&self, seq: u64, reason: &str) -> Result<(), OutboxError> {
        let mut index = self.index();
        let txn = storage!(self.db.begin_write())?;
        let bytes = {
            let mut table = storage!(txn.open_table(ENTRIES))?;
            let bytes = storage!(table.remove(seq))?
                .map(|v| v.value().to_vec())
                .ok_or(OutboxError::NotFound(seq))?;
            let mut dead = storage!(txn.open_table(DEAD))?;
            let mut letter = Vec::with_capacity(bytes.len() + reason.len() + 4);
            letter.extend_from_slice(&(reason.len() as u32).to_le_bytes());
            letter.extend_from_slice(reason.as_bytes());
            letter.extend_from_slice(&bytes);
            storage!(dead.insert(seq, letter.as_slice()))?;
            bytes
        };
        storage!(txn.commit())?;
        if let Some(session) = index.forget(seq, &bytes) {
            self.release(session, &index);
        }
        self.queued.store(index.entries, Ordering::Release);
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        let txn = storage!(self.db.begin_read())?;
        let table = storage!(txn.open_table(DEAD))?;
        let mut out = Vec::new();
        for item in storage!(table.iter())? {
            let (seq, bytes) = storage!(item)?;
            let seq = seq.value();
            let (reason, entry) = decode_letter(bytes.value())
                .map_err(|error| OutboxError::Corrupt { seq, error })?;
            out.push(DeadLetter { seq, entry, reason });
        }
        Ok(out)
    }

    /// Queues the dead letter `seq` again, at the end of the queue (so after writes made since:
    /// its session's order is the application's to judge). Returns its new sequence number.
    pub fn retry_dead_letter(&self, seq: u64) -> Result<u64, OutboxError> {
        let letter = {
            let txn = storage!(self.db.begin_read())?;
            let table = storage!(txn.open_table(DEAD))?;
            let letter = storage!(table.get(seq))?.map(|v| v.value().to_vec());
            letter.ok_or(OutboxError::NotFound(seq))?
        };
        let (_, entry) =
            decode_letter(&letter).map_err(|error| OutboxError::Corrupt { seq, error })?;
        let new_seq = self.append(&entry)?;
        let txn = storage!(self.db.begin_write())?;
        {
            let mut table = storage!(txn.open_table(DEAD))?;
            storage!(table.remove(seq))?;
        }
        storage!(txn.commit())?;
        Ok(new_seq)
    }

    /// The latest queued write of `session` to any of `scopes`, if one is queued.
    pub fn queued_write(&self, session: SessionId, scopes: &[ScopeKey]) -> Option<WriteId> {
        if self.is_empty() {
            return None;
        }
        let index = self.index();
        let queued = index.sessions.get(&session)?;
        queued
            .iter()
            .rev()
            .find(|(_, _, written)| written.iter().any(|s| scopes.contains(s)))
            .map(|(_, id, _)| *id)
    }

    /// True when `session` has a write queued: its later writes queue behind it.
    pub fn has_queued(&self, session: SessionId) -> bool {
        !self.is_empty() && self.index().sessions.contains_key(&session)
    }

    /// Entries queued.
    pub fn len(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of entries queued.
    pub fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// Dead letters kept.
    pub fn dead_letter_count(&self) -> Result<u64, OutboxError> {
        let txn = storage!(self.db.begin_read())?;
        let table = storage!(txn.open_table(DEAD))?;
        storage!(table.len())
    }
}

impl Index {
    fn add(&mut self, seq: u64, entry: &Entry, bytes: u64) {
        self.sessions
            .entry(entry.write_id.session)
            .or_default()
            .push((seq, entry.write_id, entry.scopes.clone()));
        self.entries += 1;
        self.bytes += bytes;
    }

    /// Forgets the entry `seq`; returns its session.
    fn forget(&mut self, seq: u64, bytes: &[u8]) -> Option<SessionId> {
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes.len() as u64);
        let session = Entry::decode(bytes).ok()?.write_id.session;
        if let Some(queued) = self.sessions.get_mut(&session) {
            queued.retain(|(s, _, _)| *s != seq);
            if queued.is_empty() {
                self.sessions.remove(&session);
            }
        }
        Some(session)
    }
}

fn decode_letter(bytes: &[u8]) -> Result<(String, Entry), DecodeError> {
    let mut r = Reader(bytes);
    let len = r.len("reason", 64 * 1024)?;
    let reason = String::from_utf8_lossy(r.take(len)?).into_owned();
    Ok((reason, Entry::decode(r.0)?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
