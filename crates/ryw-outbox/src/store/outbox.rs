//! The outbox: a durable, bounded queue of deferred writes in its redb file, with what it holds
//! in memory of the queue and of the sessions whose writes it keeps.

use super::dead_letter::{decode_letter, encode_letter, DeadLetter};
use super::error::{guarded, storage, OutboxError};
use super::file::{create_atomically, create_tables, DEAD, ENTRIES, META, NEXT_SEQ, REPLAYED};
use super::index::Index;
use super::replayed::Replayed;
use crate::entry::{DurableRequest, Entry};
use crate::sync::lock;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use ryw::{ScopeKey, Session, SessionId, WriteId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// A durable, bounded queue of deferred writes; see the [module docs](crate::store).
pub struct Outbox {
    /// `None` only while being dropped (see `Drop`).
    db: Option<Database>,
    config: OutboxConfig,
    index: Mutex<Index>,
    /// Entries queued, readable without the index's lock: the request path asks it first.
    queued: AtomicU64,
    /// The live sessions of this process whose writes are queued: a replay records what it
    /// wrote into them, so their next reads are fenced on it.
    live: Mutex<HashMap<SessionId, Session>>,
    /// Writes of each session on their way to the store through the outbox layer: the replayer
    /// leaves a session alone while one is, so that a write made later never overtakes it.
    in_flight: Mutex<HashMap<SessionId, u32>>,
    /// What replays taught each session (the versions their writes produced), for the session's
    /// next requests through the layer: a continuation rebuilt from a token issued before the
    /// replay (the next HTTP request) would not know them.
    replayed: Mutex<Replayed>,
    /// Some replay was recorded: the request path's check, without the lock.
    any_replayed: std::sync::atomic::AtomicBool,
}

impl Drop for Outbox {
    /// Closes the file. After the embedded store panicked on a damaged file, its own clean-up may
    /// panic too: that is caught here, never the caller's.
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
    }
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

/// A write of a session on its way to the store ([`Outbox::write_started`]); dropping it says
/// the write is settled (applied, deferred, or failed).
#[derive(Debug)]
pub struct WriteInFlight {
    outbox: Arc<Outbox>,
    session: SessionId,
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.outbox.in_flight);
        if let Some(n) = in_flight.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.session);
            }
        }
    }
}

impl Outbox {
    /// Opens the outbox at `path`, creating it if needed, and reads its queue back (after a
    /// crash, everything appended before it is there). Entries found damaged become dead
    /// letters. One process at a time: redb refuses a file another process holds open
    /// ([`OutboxError::Storage`]).
    pub fn open(path: impl AsRef<Path>, config: OutboxConfig) -> Result<Self, OutboxError> {
        let path = path.as_ref();
        guarded(|| {
            create_atomically(path)?;
            let db = storage!(Database::open(path))?;
            create_tables(&db)?;
            let outbox = Outbox {
                db: Some(db),
                config,
                index: Mutex::new(Index::default()),
                queued: AtomicU64::new(0),
                live: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                replayed: Mutex::new(Replayed::default()),
                any_replayed: std::sync::atomic::AtomicBool::new(false),
            };
            let mut index = Index::default();
            // Guarded on its own: a panic must not unwind through the outbox's drop.
            for (seq, entry, bytes) in guarded(|| outbox.scan())? {
                index.add(seq, &entry, bytes);
            }
            outbox.queued.store(index.entries, Ordering::Release);
            *outbox.index() = index;
            guarded(|| outbox.load_replayed())?;
            Ok(outbox)
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn db(&self) -> Result<&Database, OutboxError> {
        self.db
            .as_ref()
            .ok_or_else(|| OutboxError::Damaged("the outbox is closed".to_owned()))
    }

    /// Every queued entry with its size, in order. Entries that do not decode move to the dead
    /// letters, as they were found.
    fn scan(&self) -> Result<Vec<(u64, Entry, u64)>, OutboxError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        {
            let txn = storage!(self.db()?.begin_read())?;
            let table = storage!(txn.open_table(ENTRIES))?;
            for item in storage!(table.iter())? {
                let (seq, bytes) = storage!(item)?;
                let (seq, bytes) = (seq.value(), bytes.value());
                match Entry::decode(bytes) {
                    Ok(entry) => good.push((seq, entry, bytes.len() as u64)),
                    Err(error) => bad.push((seq, error)),
                }
            }
        }
        for (seq, error) in bad {
            tracing::warn!(target: "ryw::outbox", seq, %error, "damaged entry dead-lettered");
            self.dead_letter(seq, &format!("undecodable: {error}"))?;
        }
        Ok(good)
    }

    /// Appends `entry`, durably: when this returns `Ok`, the entry survives a crash. Returns its
    /// sequence number. [`OutboxError::Full`] at the bounds, [`OutboxError::Invalid`] for an
    /// entry beyond what could be read back.
    pub fn append(&self, entry: &Entry) -> Result<u64, OutboxError> {
        entry.check().map_err(OutboxError::Invalid)?;
        let bytes = entry.encode();
        guarded(|| {
            // Appends are serialized (one redb write transaction at a time); the index lock is
            // held across the commit so that the bound is checked against what is really queued.
            let mut index = self.index();
            let seq = self.insert(&mut index, &bytes, None)?;
            index.add(seq, entry, bytes.len() as u64);
            self.queued.store(index.entries, Ordering::Release);
            Ok(seq)
        })
    }

    /// Inserts `bytes` at the next sequence number, in one transaction that also removes the
    /// dead letter `from_dead` if given. The caller holds the index.
    fn insert(
        &self,
        index: &mut Index,
        bytes: &[u8],
        from_dead: Option<u64>,
    ) -> Result<u64, OutboxError> {
        let size = bytes.len() as u64;
        if index.entries + 1 > self.config.max_entries || index.bytes + size > self.config.max_bytes
        {
            return Err(OutboxError::Full {
                entries: index.entries,
                bytes: index.bytes,
            });
        }
        let txn = storage!(self.db()?.begin_write())?;
        let seq = {
            let mut meta = storage!(txn.open_table(META))?;
            let seq = storage!(meta.get(NEXT_SEQ))?.map_or(1, |v| v.value());
            storage!(meta.insert(NEXT_SEQ, seq + 1))?;
            let mut table = storage!(txn.open_table(ENTRIES))?;
            storage!(table.insert(seq, bytes))?;
            if let Some(dead) = from_dead {
                let mut letters = storage!(txn.open_table(DEAD))?;
                storage!(letters.remove(dead))?;
            }
            seq
        };
        storage!(txn.commit())?;
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

    /// Says that a write of `session` is on its way to the store, until the returned guard is
    /// dropped: the replayer leaves the session's queued writes alone meanwhile.
    pub fn write_started(self: &Arc<Self>, session: SessionId) -> WriteInFlight {
        *lock(&self.in_flight).entry(session).or_insert(0) += 1;
        WriteInFlight {
            outbox: self.clone(),
            session,
        }
    }

    /// True while a write of `session` is on its way to the store ([`Outbox::write_started`]).
    pub fn in_flight(&self, session: SessionId) -> bool {
        lock(&self.in_flight).contains_key(&session)
    }

    /// Reads back what replays taught sessions before a restart.
    fn load_replayed(&self) -> Result<(), OutboxError> {
        let txn = storage!(self.db()?.begin_read())?;
        let table = storage!(txn.open_table(REPLAYED))?;
        let mut replayed = lock(&self.replayed);
        for item in storage!(table.iter())? {
            let (_, token) = storage!(item)?;
            replayed.restore(token.value());
        }
        if !replayed.is_empty() {
            self.any_replayed.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Forgets the entry `seq`, whose write a replay through `session` applied, and keeps what
    /// the replay taught the session (its state now) for the session's next requests
    /// ([`Outbox::catch_up`]), in one transaction: a restart remembers it. The oldest of more
    /// than [`REPLAYED_SESSIONS`](crate::store::REPLAYED_SESSIONS) sessions are forgotten.
    /// Returns whether the entry was queued.
    pub fn remove_replayed(&self, seq: u64, session: &Session) -> Result<bool, OutboxError> {
        let state = session.snapshot();
        let mut replayed = lock(&self.replayed);
        let lesson = replayed.lesson(session.id(), state)?;
        guarded(|| {
            self.remove_with(seq, |txn| {
                let mut taught = storage!(txn.open_table(REPLAYED))?;
                storage!(taught.insert(lesson.id.as_u128(), lesson.token.as_bytes()))?;
                for old in &lesson.evicted {
                    storage!(taught.remove(old.as_u128()))?;
                }
                Ok(())
            })
        })
        .inspect(|_| {
            replayed.learn(lesson);
            self.any_replayed.store(true, Ordering::Release);
        })
    }

    /// The latest queued write of `session`, if any.
    pub fn latest_queued(&self, session: SessionId) -> Option<WriteId> {
        if self.is_empty() {
            return None;
        }
        let index = self.index();
        index.sessions.get(&session)?.last().map(|q| q.write_id)
    }

    /// Brings `session` up to date with what replays of its writes taught it: a continuation
    /// rebuilt from a token issued before the replay learns the versions the replay produced, so
    /// its reads are fenced on them. The outbox layer calls it for every request.
    pub fn catch_up(&self, session: &Session) {
        if !self.any_replayed.load(Ordering::Acquire) {
            return;
        }
        let replayed = lock(&self.replayed);
        if let Some(state) = replayed.get(session.id()) {
            session.merge(state);
        }
    }

    /// Forgets the live session of `id` once it has nothing queued.
    fn release(&self, id: SessionId, index: &Index) {
        if !index.sessions.contains_key(&id) {
            lock(&self.live).remove(&id);
        }
    }

    /// Every queued entry, in the order it was appended (entries found damaged move to the dead
    /// letters).
    pub fn pending(&self) -> Result<Vec<(u64, Entry)>, OutboxError> {
        guarded(|| Ok(self.scan()?.into_iter().map(|(s, e, _)| (s, e)).collect()))
    }

    /// Forgets the entry `seq` (its write applied). Returns whether it was queued.
    pub fn remove(&self, seq: u64) -> Result<bool, OutboxError> {
        guarded(|| self.remove_with(seq, |_| Ok(())))
    }

    /// Removes the entry `seq` in one transaction with what `also` writes, and forgets it.
    /// Returns whether it was queued.
    fn remove_with(
        &self,
        seq: u64,
        also: impl FnOnce(&WriteTransaction) -> Result<(), OutboxError>,
    ) -> Result<bool, OutboxError> {
        let mut index = self.index();
        let txn = storage!(self.db()?.begin_write())?;
        let removed = {
            let mut table = storage!(txn.open_table(ENTRIES))?;
            let removed = storage!(table.remove(seq))?.is_some();
            removed
        };
        also(&txn)?;
        storage!(txn.commit())?;
        if removed {
            self.forget(&mut index, seq);
        }
        Ok(removed)
    }

    fn forget(&self, index: &mut Index, seq: u64) {
        if let Some(session) = index.forget(seq) {
            self.release(session, index);
        }
        self.queued.store(index.entries, Ordering::Release);
    }

    /// Records, durably, that the entry `seq` is about to be sent: from now on it may have
    /// applied, and any later attempt of it (after a crash) goes as a replay. The replayer calls
    /// it before it first sends an entry that was never sent.
    pub fn mark_sent(&self, seq: u64, entry: &Entry) -> Result<(), OutboxError> {
        if entry.may_have_applied {
            return Ok(());
        }
        let marked = Entry {
            may_have_applied: true,
            ..entry.clone()
        };
        let bytes = marked.encode();
        guarded(|| {
            let _index = self.index();
            let txn = storage!(self.db()?.begin_write())?;
            {
                let mut table = storage!(txn.open_table(ENTRIES))?;
                if storage!(table.get(seq))?.is_none() {
                    return Err(OutboxError::NotFound(seq));
                }
                storage!(table.insert(seq, bytes.as_slice()))?;
            }
            storage!(txn.commit())?;
            Ok(())
        })
    }

    /// Moves the entry `seq` to the dead letters with `reason`, in one transaction.
    pub fn dead_letter(&self, seq: u64, reason: &str) -> Result<(), OutboxError> {
        guarded(|| {
            let mut index = self.index();
            let txn = storage!(self.db()?.begin_write())?;
            {
                let mut table = storage!(txn.open_table(ENTRIES))?;
                let bytes = storage!(table.remove(seq))?
                    .map(|v| v.value().to_vec())
                    .ok_or(OutboxError::NotFound(seq))?;
                let mut dead = storage!(txn.open_table(DEAD))?;
                let letter = encode_letter(reason, &bytes);
                storage!(dead.insert(seq, letter.as_slice()))?;
            }
            storage!(txn.commit())?;
            self.forget(&mut index, seq);
            Ok(())
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        guarded(|| {
            let txn = storage!(self.db()?.begin_read())?;
            let table = storage!(txn.open_table(DEAD))?;
            let mut out = Vec::new();
            for item in storage!(table.iter())? {
                let (seq, bytes) = storage!(item)?;
                let (reason, entry) = decode_letter(bytes.value());
                out.push(DeadLetter {
                    seq: seq.value(),
                    entry,
                    reason,
                });
            }
            Ok(out)
        })
    }

    /// Queues the dead letter `seq` again, at the end of the queue (so after writes made since:
    /// its session's order is the application's to judge), in one transaction. Returns its new
    /// sequence number. A damaged dead letter cannot be queued ([`OutboxError::Corrupt`]).
    pub fn retry_dead_letter(&self, seq: u64) -> Result<u64, OutboxError> {
        guarded(|| {
            let letter = {
                let txn = storage!(self.db()?.begin_read())?;
                let table = storage!(txn.open_table(DEAD))?;
                let letter = storage!(table.get(seq))?.map(|v| v.value().to_vec());
                letter.ok_or(OutboxError::NotFound(seq))?
            };
            let entry = decode_letter(&letter)
                .1
                .map_err(|error| OutboxError::Corrupt { seq, error })?;
            let bytes = entry.encode();
            let mut index = self.index();
            let new_seq = self.insert(&mut index, &bytes, Some(seq))?;
            index.add(new_seq, &entry, bytes.len() as u64);
            self.queued.store(index.entries, Ordering::Release);
            Ok(new_seq)
        })
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
            .find(|q| q.scopes.iter().any(|s| scopes.contains(s)))
            .map(|q| q.write_id)
    }

    /// The queued writes of `session` to any of `scopes`, oldest first, with their store
    /// requests: what a read cannot show yet ([`ryw::Visibility::Queued`]), for a caller that
    /// wants to show it anyway (a UI showing "saving…" with the value).
    pub fn queued_requests<R: DurableRequest>(
        &self,
        session: SessionId,
        scopes: &[ScopeKey],
    ) -> Result<Vec<(WriteId, R)>, OutboxError> {
        let seqs: Vec<u64> = match self.index().sessions.get(&session) {
            Some(queued) => queued
                .iter()
                .filter(|q| q.scopes.iter().any(|s| scopes.contains(s)))
                .map(|q| q.seq)
                .collect(),
            None => return Ok(Vec::new()),
        };
        guarded(|| {
            let txn = storage!(self.db()?.begin_read())?;
            let table = storage!(txn.open_table(ENTRIES))?;
            let mut out = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let Some(bytes) = storage!(table.get(seq))? else {
                    continue; // Replayed meanwhile.
                };
                let corrupt = |error| OutboxError::Corrupt { seq, error };
                let entry = Entry::decode(bytes.value()).map_err(corrupt)?;
                out.push((entry.write_id, R::decode(&entry.request).map_err(corrupt)?));
            }
            Ok(out)
        })
    }

    /// The sequence number of the queued entry of `write_id`, if it is queued.
    pub fn queued_seq(&self, write_id: WriteId) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let index = self.index();
        index
            .sessions
            .get(&write_id.session)?
            .iter()
            .find(|q| q.write_id == write_id)
            .map(|q| q.seq)
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
        guarded(|| {
            let txn = storage!(self.db()?.begin_read())?;
            let table = storage!(txn.open_table(DEAD))?;
            storage!(table.len())
        })
    }
}
