//! Keeping session state between requests inside one process.
//!
//! A [`SessionStore`] holds the last known state of each session, so that a request arriving
//! without a token (or with an older one) still starts from everything this instance has seen.
//! [`SessionStore::save`] merges by pointwise maximum, never overwrites: concurrent requests of
//! one session cannot lose each other's progress.
//!
//! [`InMemorySessionStore`] is sharded and compact (about 70 to 100 bytes per session with one
//! scope), bounded by a session count and optionally a time to live. Eviction is generational:
//! each shard keeps a young and an old table; sessions are written to the young one, and when it
//! fills up (or, with a TTL, when it is older than the TTL) the old table is dropped and the young
//! one becomes old. A session used within the last generation is never evicted, a session unused
//! for two generations always is: least-recently-used eviction within a factor of two, with no
//! per-entry bookkeeping.
//!
//! # Example
//!
//! ```
//! use ryw::store::{InMemorySessionStore, SessionStore};
//! use ryw::{Session, SessionId};
//! use std::time::Duration;
//!
//! let store = InMemorySessionStore::new()
//!     .max_sessions(1_000_000)
//!     .ttl(Duration::from_secs(3600));
//!
//! let session = Session::with_id(SessionId::derive(b"user:1"));
//! store.save(&session.snapshot());
//! let loaded = store.load(session.id()).expect("just saved");
//! assert_eq!(loaded.id(), session.id());
//! ```

use crate::clock::HybridTimestamp;
use crate::generations::{Generations, Shards};
use crate::session::{SessionId, SessionState};
use crate::version::{Entry, ScopeKey, StoreHorizon, Version, VersionVector, DEFAULT_SCOPE_CAP};
use std::fmt;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

/// Where sessions live between requests.
///
/// # Example implementation
///
/// ```
/// use ryw::store::SessionStore;
/// use ryw::{SessionId, SessionState};
/// use std::collections::HashMap;
/// use std::sync::Mutex;
///
/// /// An unbounded store, for tests.
/// #[derive(Debug, Default)]
/// struct Unbounded(Mutex<HashMap<SessionId, SessionState>>);
///
/// impl SessionStore for Unbounded {
///     fn load(&self, id: SessionId) -> Option<SessionState> {
///         self.0.lock().unwrap().get(&id).cloned()
///     }
///     fn save(&self, state: &SessionState) {
///         let mut map = self.0.lock().unwrap();
///         match map.get_mut(&state.id()) {
///             Some(existing) => {
///                 existing.merge(state);
///             }
///             None => {
///                 map.insert(state.id(), state.clone());
///             }
///         }
///     }
///     fn remove(&self, id: SessionId) -> bool {
///         self.0.lock().unwrap().remove(&id).is_some()
///     }
/// }
/// ```
pub trait SessionStore: Send + Sync + 'static {
    /// The stored state of `id`, if any (and not expired).
    fn load(&self, id: SessionId) -> Option<SessionState>;

    /// Merges `state` into the stored state of its session (pointwise maximum), or stores it.
    fn save(&self, state: &SessionState);

    /// Forgets `id`. Returns whether it was stored.
    fn remove(&self, id: SessionId) -> bool;

    /// Brings `state` and the stored state of its session together: `state` takes in what the
    /// store holds of it (pointwise maximum), and the store keeps the result. What a request does
    /// when it starts and when it ends, in one call.
    ///
    /// The default loads, merges and saves; [`InMemorySessionStore`] does it under one lock and,
    /// when the stored state is already what `state` says, without building or copying a state.
    ///
    /// Nothing of the version vector is lost. Store contexts (MongoDB's `$clusterTime`) are
    /// bounded at [`MAX_CONTEXTS`](crate::session::MAX_CONTEXTS) per session, first come first
    /// kept, as in [`SessionState::merge`]: a session that met more stores with contexts than that
    /// may keep a different pair here and in the store.
    fn sync(&self, state: &mut SessionState) {
        if let Some(seen) = self.load(state.id()) {
            state.merge(&seen);
        }
        self.save(state);
    }

    /// How many sessions the store holds and has evicted, for telemetry, if it keeps count
    /// (the default: it does not). [`InMemorySessionStore`] does.
    fn stats(&self) -> Option<SessionStoreStats> {
        None
    }
}

/// What a [`SessionStore`] holds, for telemetry ([`SessionStore::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStoreStats {
    /// Sessions held now.
    pub live: u64,
    /// Sessions evicted so far (never counting those removed on purpose).
    pub evictions: u64,
}

impl SessionStoreStats {
    /// Stats of `live` sessions held and `evictions` so far.
    pub fn new(live: u64, evictions: u64) -> Self {
        SessionStoreStats { live, evictions }
    }
}

/// One session, compactly: 48 bytes inline, plus a heap block only for sessions with more than
/// one scope or a store horizon.
struct Record {
    write_seq: u64,
    clock: u64,
    last_used: u32,
    data: Data,
}

enum Data {
    Empty,
    One(u64, u64),
    Many(Box<Spill>),
}

struct Spill {
    entries: Box<[Entry]>,
    horizons: Box<[StoreHorizon]>,
    contexts: Box<[crate::session::StoreContext]>,
    cap: u16,
    /// The session's record ([`crate::record`]) and what this process holds of it.
    record: Option<u64>,
    overflow: Option<std::sync::Arc<crate::session::Overflow>>,
}

/// Whether a stored record and a state name the same record and hold the same overflow.
fn same_record(spill: &Spill, state: &SessionState) -> bool {
    spill.record == state.record()
        && match (&spill.overflow, state.overflow()) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
}

impl Record {
    /// Whether merging this record into `state` leaves `state` as it is (a conservative answer:
    /// `false` only costs the slow path).
    fn dominated_by(&self, state: &SessionState) -> bool {
        if self.write_seq > state.write_seq() || self.clock > state.clock().get() {
            return false;
        }
        let v = state.vector();
        // What `VersionVector::advance` does with an entry: nothing when the exact entry is at
        // least as large, or when there is none and the store's horizon implies it.
        let implied = |scope: ScopeKey, version: Version| match v.get(scope) {
            Some(held) => held >= version,
            None => v
                .horizon(scope.store())
                .is_some_and(|h| h.version >= version),
        };
        match &self.data {
            Data::Empty => true,
            Data::One(scope, version) => {
                implied(ScopeKey::from_bits(*scope), Version::new(*version))
            }
            Data::Many(spill) => {
                same_record(spill, state)
                    && spill.entries.iter().all(|e| implied(e.scope, e.version))
                    && spill.horizons.iter().all(|h| {
                        v.horizon(h.store)
                            .is_some_and(|held| held.version >= h.version)
                    })
                    && spill.contexts.iter().all(|c| {
                        state
                            .context(c.store)
                            .is_some_and(|held| held.version >= c.version)
                    })
            }
        }
    }

    /// Whether this record says exactly what `state` says (its start time aside, which records do
    /// not keep).
    fn same_as(&self, state: &SessionState) -> bool {
        let v = state.vector();
        if self.write_seq != state.write_seq() || self.clock != state.clock().get() {
            return false;
        }
        match &self.data {
            Data::Empty => {
                v.is_empty() && v.horizons().next().is_none() && state.contexts().is_empty()
            }
            Data::One(scope, version) => {
                v.len() == 1
                    && v.horizons().next().is_none()
                    && state.contexts().is_empty()
                    && v.get(ScopeKey::from_bits(*scope)) == Some(Version::new(*version))
            }
            Data::Many(spill) => {
                same_record(spill, state)
                    && spill.entries.len() == v.len()
                    && spill
                        .entries
                        .iter()
                        .all(|e| v.get(e.scope) == Some(e.version))
                    && spill.horizons.len() == v.horizons().count()
                    && spill
                        .horizons
                        .iter()
                        .all(|h| v.horizon(h.store) == Some(*h))
                    && spill.contexts.len() == state.contexts().len()
                    && spill
                        .contexts
                        .iter()
                        .all(|c| state.context(c.store) == Some(c))
            }
        }
    }

    fn from_state(state: &SessionState, now: u32) -> Self {
        let vector = state.vector();
        let data = if vector.is_empty() && state.contexts().is_empty() {
            Data::Empty
        } else if vector.len() == 1
            && state.contexts().is_empty()
            && vector.horizons().next().is_none()
            && vector.cap() == DEFAULT_SCOPE_CAP
            && state.overflow().is_none()
            && state.record() == Some(0)
        {
            let e = vector.entries().next().expect("one entry");
            Data::One(e.scope.to_bits(), e.version.get())
        } else {
            Data::Many(Box::new(Spill {
                entries: vector.entries().collect(),
                horizons: vector.horizons().collect(),
                contexts: state.contexts().into(),
                cap: vector.cap() as u16,
                record: state.record(),
                overflow: state.overflow().cloned(),
            }))
        };
        Record {
            write_seq: state.write_seq(),
            clock: state.clock().get(),
            last_used: now,
            data,
        }
    }

    fn to_state(&self, id: SessionId) -> SessionState {
        let contexts = match &self.data {
            Data::Many(spill) => &spill.contexts[..],
            _ => &[],
        };
        let vector = match &self.data {
            Data::Empty => VersionVector::default(),
            Data::One(scope, version) => {
                let mut v = VersionVector::default();
                v.advance(ScopeKey::from_bits(*scope), Version::new(*version));
                v
            }
            Data::Many(spill) => {
                let mut v = VersionVector::with_cap(spill.cap as usize);
                for e in spill.entries.iter() {
                    v.advance(e.scope, e.version);
                }
                for h in spill.horizons.iter() {
                    v.raise_horizon(*h);
                }
                v
            }
        };
        let mut state =
            SessionState::from_parts(id, self.write_seq, HybridTimestamp::new(self.clock), vector);
        for c in contexts {
            state.advance_context(c.clone());
        }
        if let Data::Many(spill) = &self.data {
            state.set_record(spill.record);
            state.set_overflow(spill.overflow.clone());
        }
        state
    }
}

struct Shard {
    /// Session ids are random or derived through a mixing hash: their bits are already uniform.
    sessions: Generations<SessionId, Record>,
    young_since: u32,
    /// Sessions dropped when their generation was cleared.
    evicted: u64,
}

impl Shard {
    fn new() -> Self {
        Shard {
            sessions: Generations::default(),
            young_since: 0,
            evicted: 0,
        }
    }
}

/// The default bound of an [`InMemorySessionStore`]: one million sessions.
const DEFAULT_MAX_SESSIONS: usize = 1_000_000;

/// The default number of shards of an [`InMemorySessionStore`].
const DEFAULT_SHARDS: usize = 16;

/// How many sessions one generation of one shard holds, for `max_sessions` over `shards`: the
/// largest table capacity hashbrown reaches without growing past it (7/8 of a power of two), at
/// most half a shard's share and at least 7. Rotating exactly there keeps tables full instead of
/// half empty.
fn generation_cap(max_sessions: usize, shards: usize) -> usize {
    let per_generation = (max_sessions / shards / 2).max(7);
    let mut buckets = 8usize;
    while (buckets * 2) / 8 * 7 <= per_generation {
        buckets *= 2;
    }
    buckets / 8 * 7
}

/// A sharded, bounded, in-memory [`SessionStore`]. See the [module docs](self).
pub struct InMemorySessionStore {
    shards: Shards<Shard>,
    /// The bound asked for ([`InMemorySessionStore::max_sessions`]), kept to size the
    /// generations again when the shards change.
    max_sessions: usize,
    generation_cap: usize,
    ttl_secs: Option<u32>,
    epoch: Instant,
}

impl fmt::Debug for InMemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySessionStore")
            .field("shards", &self.shards.count())
            .field("capacity", &self.capacity())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl Default for InMemorySessionStore {
    /// One million sessions, no TTL ([`InMemorySessionStore::new`]).
    fn default() -> Self {
        Self::new()
    }
}

impl InMemorySessionStore {
    /// An empty store with the defaults: at most one million sessions, no TTL, 16 shards.
    /// Configured with consuming setters, before it is shared. Tables grow as sessions arrive;
    /// nothing but the shards' locks is allocated up front.
    pub fn new() -> Self {
        InMemorySessionStore {
            shards: Shards::new(DEFAULT_SHARDS, Shard::new),
            max_sessions: DEFAULT_MAX_SESSIONS,
            generation_cap: generation_cap(DEFAULT_MAX_SESSIONS, DEFAULT_SHARDS),
            ttl_secs: None,
            epoch: Instant::now(),
        }
    }

    /// At most this many sessions are kept (default one million; rounded down to fill the
    /// shards' tables; at least 16 per shard).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self.generation_cap = generation_cap(n, self.shards.count());
        self
    }

    /// Sessions unused for this long are gone: loads return `None` from then on, and their
    /// memory is reclaimed within a second TTL (default: no TTL, sessions go only when evicted to
    /// make room).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl_secs = Some(ttl.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
        self
    }

    /// Number of shards (default 16; rounded up to a power of two). The shards are made anew,
    /// empty.
    pub fn shards(mut self, n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        self.shards = Shards::new(n, Shard::new);
        self.generation_cap = generation_cap(self.max_sessions, n);
        self
    }

    /// The most sessions the store holds at once.
    pub fn capacity(&self) -> usize {
        self.generation_cap * 2 * self.shards.count()
    }

    /// Sessions currently held (including expired ones not yet reclaimed).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.sessions.len()).sum()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions evicted so far: dropped, unused, when their generation was cleared to make room
    /// (or, with a TTL, when it aged out). Forgotten sessions ([`SessionStore::remove`]) are not
    /// counted.
    pub fn evictions(&self) -> u64 {
        self.shards.iter().map(|s| s.evicted).sum()
    }

    /// Seconds since the store was made; only a TTL needs them (without one, the clock is not
    /// read at all).
    fn now(&self) -> u32 {
        if self.ttl_secs.is_none() {
            return 0;
        }
        self.epoch.elapsed().as_secs().min(u64::from(u32::MAX)) as u32
    }

    fn shard(&self, id: SessionId) -> MutexGuard<'_, Shard> {
        let h = crate::hash::fold128(id.as_u128());
        self.shards.lock((h >> 40) as usize)
    }

    fn expired(&self, record: &Record, now: u32) -> bool {
        self.ttl_secs
            .is_some_and(|ttl| now.saturating_sub(record.last_used) >= ttl)
    }

    fn rotate_if_needed(&self, shard: &mut Shard, now: u32) {
        let aged = self
            .ttl_secs
            .is_some_and(|ttl| now.saturating_sub(shard.young_since) >= ttl);
        if shard.sessions.young_len() >= self.generation_cap || aged {
            shard.evicted += shard.sessions.turn_over() as u64;
            shard.young_since = now;
        }
    }
}

impl SessionStore for InMemorySessionStore {
    fn load(&self, id: SessionId) -> Option<SessionState> {
        let now = self.now();
        let mut shard = self.shard(id);
        if let Some(r) = shard.sessions.young_mut(&id) {
            if self.expired(r, now) {
                shard.sessions.remove_young(&id);
                return None;
            }
            r.last_used = now;
            return Some(r.to_state(id));
        }
        let mut r = shard.sessions.take_old(&id)?;
        if self.expired(&r, now) {
            return None;
        }
        r.last_used = now;
        let state = r.to_state(id);
        self.rotate_if_needed(&mut shard, now);
        shard.sessions.insert_young(id, r);
        Some(state)
    }

    fn save(&self, state: &SessionState) {
        let now = self.now();
        let id = state.id();
        let mut shard = self.shard(id);
        if let Some(r) = shard.sessions.young_mut(&id) {
            if !self.expired(r, now) {
                let mut merged = r.to_state(id);
                merged.merge(state);
                *r = Record::from_state(&merged, now);
            } else {
                *r = Record::from_state(state, now);
            }
            return;
        }
        let record = match shard.sessions.take_old(&id) {
            Some(old) if !self.expired(&old, now) => {
                let mut merged = old.to_state(id);
                merged.merge(state);
                Record::from_state(&merged, now)
            }
            _ => Record::from_state(state, now),
        };
        self.rotate_if_needed(&mut shard, now);
        shard.sessions.insert_young(id, record);
    }

    fn remove(&self, id: SessionId) -> bool {
        let mut shard = self.shard(id);
        shard.sessions.remove(&id)
    }

    fn stats(&self) -> Option<SessionStoreStats> {
        let (mut live, mut evictions) = (0, 0);
        for shard in self.shards.iter() {
            live += shard.sessions.len() as u64;
            evictions += shard.evicted;
        }
        Some(SessionStoreStats { live, evictions })
    }

    fn sync(&self, state: &mut SessionState) {
        let now = self.now();
        let id = state.id();
        let mut shard = self.shard(id);
        if let Some(r) = shard.sessions.young_mut(&id) {
            if self.expired(r, now) {
                *r = Record::from_state(state, now);
            } else if r.dominated_by(state) {
                // Nothing to take in; store the state only if it says more.
                if r.same_as(state) {
                    r.last_used = now;
                } else {
                    *r = Record::from_state(state, now);
                }
            } else {
                // As load, merge, save: each side takes in the other (a bounded set of store
                // contexts keeps its own first, so the two may differ when it overflows).
                let mut stored = r.to_state(id);
                state.merge(&stored);
                stored.merge(state);
                *r = Record::from_state(&stored, now);
            }
            return;
        }
        let record = match shard.sessions.take_old(&id) {
            Some(old) if !self.expired(&old, now) && !old.dominated_by(state) => {
                let mut stored = old.to_state(id);
                state.merge(&stored);
                stored.merge(state);
                Record::from_state(&stored, now)
            }
            _ => Record::from_state(state, now),
        };
        self.rotate_if_needed(&mut shard, now);
        shard.sessions.insert_young(id, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::StoreId;

    fn state(id: u128, versions: &[(u64, u64)]) -> SessionState {
        let mut s = SessionState::new(SessionId::from_u128(id));
        for &(scope, v) in versions {
            s.advance(ScopeKey::from_hash(StoreId::new(1), scope), Version::new(v));
        }
        s
    }

    #[test]
    fn record_is_compact() {
        assert_eq!(std::mem::size_of::<Record>(), 48);
        assert_eq!(std::mem::size_of::<(SessionId, Record)>(), 64);
    }

    #[test]
    fn save_merges_and_round_trips() {
        let store = InMemorySessionStore::default();
        let a = state(1, &[(1, 5)]);
        store.save(&a);
        assert_eq!(store.load(a.id()).unwrap(), a);
        store.save(&state(1, &[(1, 3), (2, 7)]));
        let got = store.load(a.id()).unwrap();
        let s1 = ScopeKey::from_hash(StoreId::new(1), 1);
        let s2 = ScopeKey::from_hash(StoreId::new(1), 2);
        assert_eq!(got.vector().get(s1), Some(Version::new(5)));
        assert_eq!(got.vector().get(s2), Some(Version::new(7)));
        let mut with_ctx = state(1, &[]);
        with_ctx.advance_context(crate::session::StoreContext {
            store: StoreId::new(4),
            version: Version::new(3),
            bytes: vec![1, 2, 3].into(),
        });
        store.save(&with_ctx);
        let got = store.load(a.id()).unwrap();
        assert_eq!(&*got.context(StoreId::new(4)).unwrap().bytes, &[1, 2, 3]);
        assert_eq!(got.vector().get(s2), Some(Version::new(7)));
        assert!(store.remove(a.id()));
        assert!(store.load(a.id()).is_none());
        assert!(!store.remove(a.id()));
    }

    #[test]
    fn two_loads_of_one_session_are_two_continuations() {
        // Two instances load the same stored session and each write: different write ids.
        let store = InMemorySessionStore::default();
        let mut s = state(9, &[(1, 5)]);
        s.next_write(1);
        store.save(&s);
        let (mut a, mut b) = (store.load(s.id()).unwrap(), store.load(s.id()).unwrap());
        let (wa, wb) = (a.next_write(2).0, b.next_write(2).0);
        assert_eq!((wa.seq, wb.seq), (2, 2));
        assert_ne!(wa, wb);
    }

    #[test]
    fn bounded_with_generational_eviction() {
        let store = InMemorySessionStore::new().max_sessions(64).shards(1);
        let cap = store.capacity();
        assert!(cap <= 64, "{cap}");
        // Keep session 0 hot while many others pass through.
        for i in 1..1000u128 {
            store.save(&state(i, &[(1, 1)]));
            assert!(store.load(SessionId::from_u128(0)).is_none() || i > 0);
            store.save(&state(0, &[(1, i as u64)]));
            assert!(store.len() <= cap);
        }
        assert!(store.load(SessionId::from_u128(0)).is_some());
        assert!(store.load(SessionId::from_u128(1)).is_none());
    }

    #[test]
    fn stats_count_live_sessions_and_every_eviction() {
        let store = InMemorySessionStore::new().max_sessions(64).shards(1);
        for i in 0..1000u128 {
            store.save(&state(i, &[(1, 1)]));
        }
        assert!(store.remove(SessionId::from_u128(999)));
        let stats = store.stats().unwrap();
        assert_eq!(stats.live, store.len() as u64);
        // Every session saved is held, evicted, or the one removed on purpose.
        assert_eq!(stats.live + stats.evictions + 1, 1000, "{stats:?}");
        assert_eq!(stats.evictions, store.evictions());
    }
}
