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

use crate::entry::{DecodeError, DurableRequest, Entry, Reader};
use crate::sync::lock;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use ryw::{ScopeKey, Session, SessionId, SessionState, WriteId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const ENTRIES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("entries");
const DEAD: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("dead_letters");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// What replays taught each session (its state as an unsigned session token), kept with the
/// removal of the entry replayed, so that a restart remembers it.
const REPLAYED: TableDefinition<'static, u128, &[u8]> = TableDefinition::new("replayed");
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

macro_rules! storage {
    ($e:expr) => {
        $e.map_err(|e| OutboxError::Storage(e.into()))
    };
}

/// Runs `f`, turning a panic inside the embedded store (a damaged file can make it panic) into
/// [`OutboxError::Damaged`].
fn guarded<T>(f: impl FnOnce() -> Result<T, OutboxError>) -> Result<T, OutboxError> {
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

/// Gives `path` an initialised outbox file if it has none, so that a crash at any instant leaves
/// either no file, or an initialised one, at `path`: the file is created and initialised under a
/// temporary name beside it, synced, linked into place (never over a file another process put
/// there first), and the directory synced. A file at `path` that was never initialised (empty,
/// or all zero bytes: a crash while an earlier version created it in place) holds nothing and is
/// replaced the same way; any other file is left as it is, however damaged, for the store to
/// open or refuse.
fn create_atomically(path: &Path) -> Result<(), OutboxError> {
    let io = |e: std::io::Error| OutboxError::Storage(redb::Error::Io(e));
    let replace = match std::fs::File::open(path) {
        Ok(file) => {
            if !never_initialised(file).map_err(io)? {
                return Ok(());
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(e)),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "outbox".to_owned());
    remove_stale_temporaries(&dir, &name);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temporary = dir.join(format!("{name}{CREATING}{}.{nanos}", std::process::id()));
    let placed = (|| {
        {
            let db = storage!(Database::create(&temporary))?;
            let txn = storage!(db.begin_write())?;
            storage!(txn.open_table(ENTRIES))?;
            storage!(txn.open_table(DEAD))?;
            storage!(txn.open_table(META))?;
            storage!(txn.open_table(REPLAYED))?;
            storage!(txn.commit())?;
        }
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        if replace {
            std::fs::rename(&temporary, path).map_err(io)?;
        } else {
            if let Err(e) = std::fs::hard_link(&temporary, path) {
                // Another process created it first: theirs is the outbox.
                if !path.exists() {
                    return Err(io(e));
                }
            }
        }
        sync_dir(&dir).map_err(io)
    })();
    let _ = std::fs::remove_file(&temporary);
    placed
}

/// The suffix of the temporary name an outbox file is created under.
const CREATING: &str = ".ryw-creating.";

/// Whether `file` holds nothing: empty, or zero bytes throughout (an initialised file starts
/// with the store's magic number, so only the first block is read for one).
fn never_initialised(mut file: std::fs::File) -> std::io::Result<bool> {
    use std::io::Read;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(true);
        }
        if block[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// Removes temporaries left by a crash during creation (older than a minute: a creation in
/// progress elsewhere is left alone).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}{CREATING}");
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Makes a new name in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A dead letter: an entry that could not be replayed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence number among the dead letters (its entry's, when it was queued).
    pub seq: u64,
    /// The entry, or why its stored bytes are not one (a damaged entry is kept as it was found).
    pub entry: Result<Entry, DecodeError>,
    /// Why it was not replayed.
    pub reason: String,
}

/// One queued write, as the index knows it.
struct Queued {
    seq: u64,
    write_id: WriteId,
    scopes: Vec<ScopeKey>,
    bytes: u64,
}

/// What the outbox holds in memory of its queue: per session, the queued writes and their scopes
/// (for reads, which must not claim a queued write is visible), and the totals.
#[derive(Default)]
struct Index {
    sessions: HashMap<SessionId, Vec<Queued>>,
    entries: u64,
    bytes: u64,
}

/// A durable, bounded queue of deferred writes; see the [module docs](self).
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

/// Sessions' states after replays of their writes, oldest first, at most `cap` of them.
#[derive(Default)]
struct Replayed {
    states: HashMap<SessionId, SessionState>,
    order: std::collections::VecDeque<SessionId>,
}

/// How many sessions' replayed states are kept for their next requests.
pub const REPLAYED_SESSIONS: usize = 100_000;

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
            // Create the tables, so that reads of an empty outbox find them.
            let txn = storage!(db.begin_write())?;
            storage!(txn.open_table(ENTRIES))?;
            storage!(txn.open_table(DEAD))?;
            storage!(txn.open_table(META))?;
            storage!(txn.open_table(REPLAYED))?;
            storage!(txn.commit())?;
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
            // A record that does not decode teaches nothing; it is replaced at the next replay.
            let Some(state) = std::str::from_utf8(token.value())
                .ok()
                .and_then(|t| Session::from_encoded(t).ok())
                .map(|s| s.snapshot())
            else {
                continue;
            };
            replayed.order.push_back(state.id());
            replayed.states.insert(state.id(), state);
        }
        if !replayed.states.is_empty() {
            self.any_replayed.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Forgets the entry `seq`, whose write a replay through `session` applied, and keeps what
    /// the replay taught the session (its state now) for the session's next requests
    /// ([`Outbox::catch_up`]), in one transaction: a restart remembers it. The oldest of more
    /// than [`REPLAYED_SESSIONS`] sessions are forgotten. Returns whether the entry was queued.
    pub fn remove_replayed(&self, seq: u64, session: &Session) -> Result<bool, OutboxError> {
        let id = session.id();
        let mut state = session.snapshot();
        let mut replayed = lock(&self.replayed);
        if let Some(seen) = replayed.states.get(&id) {
            state.merge(seen);
        }
        let token = Session::from_state(state.clone())
            .token()
            .encode()
            .map_err(|e| OutboxError::Damaged(format!("session state not encodable: {e}")))?;
        let known = replayed.states.contains_key(&id);
        let evicted: Vec<SessionId> = if known {
            Vec::new()
        } else {
            let over = (replayed.order.len() + 1).saturating_sub(REPLAYED_SESSIONS);
            replayed.order.iter().take(over).copied().collect()
        };
        guarded(|| {
            let mut index = self.index();
            let txn = storage!(self.db()?.begin_write())?;
            let removed = {
                let mut table = storage!(txn.open_table(ENTRIES))?;
                let removed = storage!(table.remove(seq))?.is_some();
                let mut taught = storage!(txn.open_table(REPLAYED))?;
                storage!(taught.insert(id.as_u128(), token.as_bytes()))?;
                for old in &evicted {
                    storage!(taught.remove(old.as_u128()))?;
                }
                removed
            };
            storage!(txn.commit())?;
            if removed {
                self.forget(&mut index, seq);
            }
            Ok(removed)
        })
        .inspect(|_| {
            for old in &evicted {
                replayed.states.remove(old);
            }
            replayed.order.retain(|s| !evicted.contains(s));
            if !known {
                replayed.order.push_back(id);
            }
            replayed.states.insert(id, state);
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
        if let Some(state) = replayed.states.get(&session.id()) {
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
        guarded(|| {
            let mut index = self.index();
            let txn = storage!(self.db()?.begin_write())?;
            let removed = {
                let mut table = storage!(txn.open_table(ENTRIES))?;
                let removed = storage!(table.remove(seq))?.is_some();
                removed
            };
            storage!(txn.commit())?;
            if removed {
                self.forget(&mut index, seq);
            }
            Ok(removed)
        })
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
                let mut letter = Vec::with_capacity(bytes.len() + reason.len() + 4);
                letter.extend_from_slice(&(reason.len() as u32).to_le_bytes());
                letter.extend_from_slice(reason.as_bytes());
                letter.extend_from_slice(&bytes);
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

impl Index {
    fn add(&mut self, seq: u64, entry: &Entry, bytes: u64) {
        self.sessions
            .entry(entry.write_id.session)
            .or_default()
            .push(Queued {
                seq,
                write_id: entry.write_id,
                scopes: entry.scopes.clone(),
                bytes,
            });
        self.entries += 1;
        self.bytes += bytes;
    }

    /// Forgets the entry `seq` if it is indexed; returns its session.
    fn forget(&mut self, seq: u64) -> Option<SessionId> {
        let (&session, queued) = self
            .sessions
            .iter_mut()
            .find(|(_, q)| q.iter().any(|q| q.seq == seq))?;
        let at = queued.iter().position(|q| q.seq == seq)?;
        let gone = queued.remove(at);
        if queued.is_empty() {
            self.sessions.remove(&session);
        }
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(gone.bytes);
        Some(session)
    }
}

/// A dead letter's reason and entry (or why its bytes are not one).
fn decode_letter(bytes: &[u8]) -> (String, Result<Entry, DecodeError>) {
    let mut r = Reader(bytes);
    let reason = match r.len("reason", 64 * 1024).and_then(|len| r.take(len)) {
        Ok(reason) => String::from_utf8_lossy(reason).into_owned(),
        Err(e) => return ("damaged dead letter".to_owned(), Err(e)),
    };
    (reason, Entry::decode(r.0))
}
