//! The session's record: what falls out of the token, kept exactly.
//!
//! A token keeps at most [`crate::version::MAX_SCOPE_CAP`] exact entries; past its cap, the least
//! recently used are coarsened into a per-store horizon, which every later read of that store must
//! then reflect. On stores with per-item versions (DynamoDB items, ScyllaDB rows) a horizon can
//! only be met on the strong path, so a session that touched more items than its cap would read
//! strongly from then on. The record keeps those entries exactly instead:
//!
//! - Entries a session coarsens are written, in one batch per request, to a shared
//!   [`RecordStore`] (a DynamoDB table, a MongoDB collection, or [`InMemoryRecordStore`] for one
//!   process) that merges them by pointwise maximum and bumps the record's version.
//! - The token names that version (its record section). Any instance holding the record at that
//!   version or later fences a read of a coarsened scope on the scope's exact entry.
//! - An instance loads a record it does not hold with a strong read and caches it per session and
//!   version ([`SessionRecords`]): at most one load per session per instance per record version.
//! - Without the record (none named, a load that failed, a record older than the token names, a
//!   write that failed), the horizon rule applies: never weaker, and counted.
//!
//! Within one process a session keeps its coarsened entries exactly with no store at all; the
//! record is what carries them to another instance through the token.
//!
//! # Example
//!
//! ```
//! use ryw::record::{InMemoryRecordStore, SessionRecords};
//! use ryw::version::{ScopeKey, StoreId, Version};
//! use ryw::{Session, SessionToken};
//! use std::sync::Arc;
//!
//! # tokio_test_block_on(async {
//! let store = Arc::new(InMemoryRecordStore::new());
//! let (here, there) = (SessionRecords::new(store.clone()), SessionRecords::new(store));
//!
//! // A session with a cap of 2 writes three items: the first is coarsened.
//! let session = Session::new();
//! session.with_state(|s| {
//!     s.vector_mut().set_cap(2);
//!     for (i, item) in [b"a", b"b", b"c"].iter().enumerate() {
//!         s.advance(ScopeKey::new(StoreId::new(1), *item), Version::new(10 + i as u64));
//!     }
//! });
//! here.flush(&session).await; // one record write for the batch
//! let token = session.token().encode().unwrap();
//!
//! // Another instance, given only the token, loads the record once and fences exactly.
//! let elsewhere = Session::from_encoded(&token).unwrap();
//! there.load(&elsewhere).await;
//! let a = elsewhere.snapshot().requirement(ScopeKey::new(StoreId::new(1), b"a"));
//! assert_eq!((a.version, a.horizon), (Version::new(10), None));
//! let z = elsewhere.snapshot().requirement(ScopeKey::new(StoreId::new(1), b"z"));
//! assert!(z.is_unfenced(), "an item the session never touched is not fenced");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
//! #     }
//! # }
//! ```

use crate::locks::lock;
use crate::session::{Overflow, Session, SessionId};
use crate::version::{Entry, ScopeKey, Version};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A boxed future of a [`RecordStore`].
pub type RecordFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RecordError>> + Send + 'a>>;

/// A session's record as stored: its version and its exact entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Bumped by every [`RecordStore::append`]: the record at version `v` holds every entry of
    /// every append numbered `v` or less.
    pub version: u64,
    /// The entries, one per scope (the largest version appended for it).
    pub entries: Vec<Entry>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record store could not be reached, or failed.
    #[error("record store unavailable: {0}")]
    Unavailable(#[source] crate::error::BoxError),
    /// A stored record does not decode: it is never trusted.
    #[error("record damaged: {0}")]
    Damaged(String),
}

/// Where sessions' records live, shared by every instance: a table or collection the
/// application already runs (`ryw-dynamodb`, `ryw-mongodb`), or [`InMemoryRecordStore`].
///
/// # Example implementation
///
/// See [`InMemoryRecordStore`]'s source: a map behind a mutex.
pub trait RecordStore: Send + Sync + 'static {
    /// Merges `entries` into the record of `session` by pointwise maximum and bumps its version,
    /// atomically (concurrent appends of two instances lose nothing); returns the new version.
    fn append<'a>(&'a self, session: SessionId, entries: &'a [Entry]) -> RecordFuture<'a, u64>;

    /// The record of `session`, read strongly (it reflects every append acknowledged before),
    /// or `None` when it has none.
    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<Record>>;
}

/// A [`RecordStore`] in this process's memory: for one instance, tests and the simulator. Not
/// shared between processes.
#[derive(Debug, Default)]
pub struct InMemoryRecordStore {
    records: Mutex<HashMap<SessionId, Stored>>,
    /// While set, every call fails [`RecordError::Unavailable`] (an outage, for tests).
    down: std::sync::atomic::AtomicBool,
}

/// One session's record in memory: its version and entries.
type Stored = (u64, HashMap<ScopeKey, Version>);

impl InMemoryRecordStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryRecordStore::default()
    }

    /// Makes every call fail [`RecordError::Unavailable`] (`true`) or work again.
    pub fn set_unavailable(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    fn check(&self) -> Result<(), RecordError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RecordError::Unavailable("the record store is down".into()));
        }
        Ok(())
    }
}

impl RecordStore for InMemoryRecordStore {
    fn append<'a>(&'a self, session: SessionId, entries: &'a [Entry]) -> RecordFuture<'a, u64> {
        Box::pin(async move {
            self.check()?;
            let mut records = lock(&self.records);
            let (version, held) = records.entry(session).or_default();
            for e in entries {
                let slot = held.entry(e.scope).or_insert(Version::ZERO);
                *slot = (*slot).max(e.version);
            }
            *version += 1;
            Ok(*version)
        })
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<Record>> {
        Box::pin(async move {
            self.check()?;
            Ok(lock(&self.records)
                .get(&session)
                .map(|(version, held)| Record {
                    version: *version,
                    entries: held
                        .iter()
                        .map(|(scope, version)| Entry {
                            scope: *scope,
                            version: *version,
                        })
                        .collect(),
                }))
        })
    }
}

/// What [`SessionRecords`] did, for telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordStats {
    /// Records read from the store.
    pub loads: u64,
    /// Records found in this instance's cache at the version the token names.
    pub cache_hits: u64,
    /// Batches of coarsened entries written.
    pub writes: u64,
    /// Loads or writes that failed: the sessions concerned fell back to the horizon rule.
    pub failures: u64,
    /// Records older than the token names, or damaged: never trusted.
    pub untrusted: u64,
}

/// What [`SessionRecords::load`] did for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loaded {
    /// The session needs no record (it coarsened nothing, or names none), or holds it already.
    NotNeeded,
    /// This instance's cache held the record at the version the session names.
    Cached,
    /// The record was read from the store.
    Loaded,
    /// The store failed: the horizon rule applies.
    Failed,
    /// The store's record is older than the session names, or damaged: not trusted.
    Untrusted,
}

/// What [`SessionRecords::flush`] did for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flushed {
    /// Nothing was coarsened since the last write.
    NotNeeded,
    /// The batch was written; the session's token names the new version.
    Written(u64),
    /// The write failed: the session's token names no record (the horizon rule applies).
    Failed,
}

/// One instance's access to the sessions' records: loads what a session's token names (once per
/// session and version, then from a cache), and writes what a session coarsened, one batch per
/// call. Call [`SessionRecords::load`] before a session's requests and
/// [`SessionRecords::flush`] before encoding its token.
pub struct SessionRecords {
    store: Arc<dyn RecordStore>,
    cache: Mutex<Cache>,
    loads: AtomicU64,
    cache_hits: AtomicU64,
    writes: AtomicU64,
    failures: AtomicU64,
    untrusted: AtomicU64,
}

/// Records by session, two generations (the older is dropped when the younger fills).
#[derive(Default)]
struct Cache {
    young: HashMap<SessionId, Arc<Overflow>>,
    old: HashMap<SessionId, Arc<Overflow>>,
    capacity: usize,
}

impl Cache {
    fn get(&mut self, id: SessionId) -> Option<Arc<Overflow>> {
        if let Some(o) = self.young.get(&id) {
            return Some(o.clone());
        }
        let o = self.old.remove(&id)?;
        self.put(id, o.clone());
        Some(o)
    }

    fn put(&mut self, id: SessionId, overflow: Arc<Overflow>) {
        if self.young.len() >= self.capacity && !self.young.contains_key(&id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id, overflow);
    }
}

impl fmt::Debug for SessionRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecords")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SessionRecords {
    /// Records in `store`, with a cache of up to 100,000 sessions.
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Self::with_cache(store, 100_000)
    }

    /// Records in `store`, caching up to about `sessions` sessions' records.
    pub fn with_cache(store: Arc<dyn RecordStore>, sessions: usize) -> Self {
        SessionRecords {
            store,
            cache: Mutex::new(Cache {
                capacity: (sessions / 2).max(1),
                ..Cache::default()
            }),
            loads: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            untrusted: AtomicU64::new(0),
        }
    }

    /// What this instance did so far.
    pub fn stats(&self) -> RecordStats {
        RecordStats {
            loads: self.loads.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            untrusted: self.untrusted.load(Ordering::Relaxed),
        }
    }

    /// Gives `session` the record its state names, from this instance's cache or, once per
    /// version, from the store. A session that names no record, or already holds it, is left as
    /// it is; when the record cannot be had, the session keeps the horizon rule.
    pub async fn load(&self, session: &Session) -> Loaded {
        let (id, wanted, held) = session.with_state(|s| {
            let held = s.overflow().map_or(0, |o| o.loaded);
            (s.id(), s.record(), held)
        });
        let Some(wanted) = wanted.filter(|w| *w > held) else {
            return Loaded::NotNeeded;
        };
        if let Some(cached) = lock(&self.cache).get(id).filter(|o| o.loaded >= wanted) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            session.with_state(|s| s.adopt_record(&cached));
            return Loaded::Cached;
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let record = match self.store.load(id).await {
            Ok(Some(record)) if record.version >= wanted => record,
            Ok(_) | Err(RecordError::Damaged(_)) => {
                self.untrusted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::record", "a session's record is older than its token names, or damaged: not trusted");
                return Loaded::Untrusted;
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::record", error = %e, "a session's record could not be loaded");
                return Loaded::Failed;
            }
        };
        let overflow = Arc::new(Overflow {
            loaded: record.version,
            entries: record
                .entries
                .iter()
                .map(|e| (e.scope, e.version))
                .collect(),
            unflushed: Vec::new(),
        });
        lock(&self.cache).put(id, overflow.clone());
        session.with_state(|s| s.adopt_record(&overflow));
        Loaded::Loaded
    }

    /// Writes what `session` coarsened since its last write, as one batch, so that its next
    /// token names a record holding it. On failure the entries stay held in this process, but
    /// the token names no record until a later write succeeds.
    pub async fn flush(&self, session: &Session) -> Flushed {
        let (id, batch, before) = session.with_state(|s| {
            (
                s.id(),
                s.unflushed().to_vec(),
                s.overflow().map_or(0, |o| o.loaded),
            )
        });
        if batch.is_empty() {
            return Flushed::NotNeeded;
        }
        match self.store.append(id, &batch).await {
            Ok(version) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                let held = session.with_state(|s| s.flushed(&batch, version, before));
                if let Some(held) = held {
                    lock(&self.cache).put(id, held);
                }
                Flushed::Written(version)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::record", error = %e, "a session's record could not be written");
                Flushed::Failed
            }
        }
    }
}
