//! Sessions: identity, write sequence, hybrid clock and version vector.
//!
//! A [`Session`] is a cheap, cloneable handle to one logical client's [`SessionState`]. Several
//! requests of one session may run at once: each merges what it observed into the shared state by
//! pointwise maximum, so the state never regresses ("last completed wins" cannot happen). The
//! portable form of the state is a [`SessionToken`](crate::SessionToken): hand it to another
//! process and [`Session::from_token`] there continues the same session.
//!
//! # Example
//!
//! ```
//! use ryw::session::{Session, SessionId};
//!
//! let session = Session::new();
//! let token = session.token().encode()?;
//!
//! // Another app instance, given only the token:
//! let elsewhere = Session::from_encoded(&token)?;
//! assert_eq!(elsewhere.id(), session.id());
//!
//! // A session id derived from a stable client key is the same everywhere:
//! assert_eq!(SessionId::derive(b"user:42"), SessionId::derive(b"user:42"));
//! # Ok::<(), ryw::token::TokenError>(())
//! ```

use crate::clock::HybridTimestamp;
use crate::version::{ScopeKey, StoreId, Version, VersionVector};
use std::fmt;
use std::sync::Arc;

mod attached;
mod handle;
mod id;

pub(crate) use attached::{Attached, View};
pub use handle::Session;
use id::fresh_lane;
pub use id::{SessionId, Stamp, WriteId};

/// The earlier of two start times, 0 meaning unknown.
fn earliest(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The state of one session: its write sequence, hybrid clock and version vector.
///
/// Each value also has a *lane* of its own (see [`WriteId`]): cloning a state, or decoding one
/// from a token, makes a new continuation with a new lane, so the write ids it stamps are its own.
/// The lane is not part of the session's portable state: it is neither encoded nor compared.
#[derive(Debug)]
pub struct SessionState {
    id: SessionId,
    lane: u64,
    /// When the session started (seconds since the Unix epoch; 0: unknown).
    started_at: u64,
    write_seq: u64,
    clock: HybridTimestamp,
    vector: VersionVector,
    contexts: Vec<StoreContext>,
    /// Where the entries coarsened into the vector's horizons are kept exactly (see
    /// [`crate::record`]): `Some(v)` when every one of them is in `overflow` or in the session's
    /// shared record at a version of at least `v`; `None` when some are in neither (a token
    /// without a record, a record write that failed): the horizon rule then applies.
    record: Option<u64>,
    /// The exact entries this process holds beyond the vector: the shared record as loaded, and
    /// what this state coarsened since.
    overflow: Option<Arc<Overflow>>,
    /// The record of the principal this session is bound to, while a request of it runs
    /// ([`crate::principal`]); never carried in a token, a copy or a merge.
    principal: Option<Box<Attached>>,
}

/// Entries a session holds exactly beyond its version vector: its shared record as loaded at
/// `loaded`, plus what it coarsened since (`unflushed`, not yet written to the record).
#[derive(Clone, Debug, Default)]
pub(crate) struct Overflow {
    pub(crate) loaded: u64,
    pub(crate) entries: std::collections::HashMap<ScopeKey, Version>,
    pub(crate) unflushed: Vec<crate::version::Entry>,
}

impl Overflow {
    /// Raises `scope` to `version` (pointwise maximum).
    pub(crate) fn advance(&mut self, scope: ScopeKey, version: Version) -> bool {
        let slot = self.entries.entry(scope).or_insert(Version::ZERO);
        if version > *slot {
            *slot = version;
            true
        } else {
            false
        }
    }

    /// The largest version of `store` held.
    fn max_of(&self, store: StoreId) -> Option<Version> {
        self.entries
            .iter()
            .filter(|(s, _)| s.store() == store)
            .map(|(_, v)| *v)
            .max()
    }
}

/// The largest opaque context a store may keep in a session (bytes).
pub const MAX_CONTEXT_LEN: usize = 160;

/// The most store contexts one session holds.
pub const MAX_CONTEXTS: usize = 2;

/// An opaque piece of store state a session carries, with the version it goes with: MongoDB's
/// server-signed `$clusterTime` document, kept whole. Merging keeps, per store, the context of the
/// largest version.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreContext {
    /// The store.
    pub store: StoreId,
    /// The version the bytes go with (merging keeps the largest).
    pub version: Version,
    /// The bytes, at most [`MAX_CONTEXT_LEN`].
    pub bytes: Arc<[u8]>,
}

impl fmt::Debug for StoreContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes may be a server signature: not logged.
        f.debug_struct("StoreContext")
            .field("store", &self.store)
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Clone for SessionState {
    /// A copy of the state on a new lane: the copy is another continuation of the session.
    fn clone(&self) -> Self {
        SessionState {
            id: self.id,
            lane: fresh_lane(),
            started_at: self.started_at,
            write_seq: self.write_seq,
            clock: self.clock,
            vector: self.vector.clone(),
            contexts: self.contexts.clone(),
            record: self.record,
            overflow: self.overflow.clone(),
            principal: None,
        }
    }
}

impl PartialEq for SessionState {
    /// Equal portable state (the lane is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.started_at == other.started_at
            && self.write_seq == other.write_seq
            && self.clock == other.clock
            && self.vector == other.vector
            && self.contexts == other.contexts
    }
}

impl SessionState {
    /// An empty state for `id`.
    pub fn new(id: SessionId) -> Self {
        SessionState {
            id,
            lane: fresh_lane(),
            started_at: 0,
            write_seq: 0,
            clock: HybridTimestamp::default(),
            vector: VersionVector::default(),
            contexts: Vec::new(),
            record: Some(0),
            overflow: None,
            principal: None,
        }
    }

    /// Rebuilds a state from its parts (used by tokens and session stores). A vector with
    /// horizons has no record: its coarsened entries are known only by their horizons (see
    /// [`SessionState::set_record`]).
    pub fn from_parts(
        id: SessionId,
        write_seq: u64,
        clock: HybridTimestamp,
        vector: VersionVector,
    ) -> Self {
        let record = vector.horizons().next().is_none().then_some(0);
        SessionState {
            id,
            lane: fresh_lane(),
            started_at: 0,
            write_seq,
            clock,
            vector,
            contexts: Vec::new(),
            record,
            overflow: None,
            principal: None,
        }
    }

    /// The version of the session's shared record that holds every entry this state coarsened
    /// (`Some(0)`: nothing was coarsened, or only in this process), or `None` when some coarsened
    /// entry is known only by its store's horizon. See [`crate::record`].
    #[inline]
    pub fn record(&self) -> Option<u64> {
        self.record
    }

    /// Says that every entry coarsened into this state's horizons is in the session's shared
    /// record at version `version` or later (what a token's record section says). Never raises
    /// what a state with no record knows: `None` stays `None` unless the state has no horizon.
    pub fn set_record(&mut self, version: Option<u64>) {
        self.record = version;
    }

    /// Whether this state is bound to a principal whose record could not be had: its reads are
    /// [`crate::Visibility::SessionOnly`] ([`crate::principal`]).
    #[inline]
    pub fn principal_unavailable(&self) -> bool {
        self.principal.as_ref().is_some_and(|p| p.unavailable())
    }

    /// Whether this state is bound to a principal's record for the request under way.
    #[inline]
    pub(crate) fn has_principal(&self) -> bool {
        self.principal.is_some()
    }

    pub(crate) fn principal_mut(&mut self) -> &mut Option<Box<Attached>> {
        &mut self.principal
    }

    /// The store horizons whose coarsened entries this state does not hold exactly: what it
    /// requires of them is known only by the horizon.
    pub(crate) fn uncovered_horizons(&self) -> Vec<crate::version::StoreHorizon> {
        self.vector
            .horizons()
            .filter(|h| !self.exact_beyond_vector(h.store, h.version))
            .collect()
    }

    /// The exact entries this state holds: the vector's and those kept beyond it.
    pub(crate) fn exact_entries(&self) -> impl Iterator<Item = (ScopeKey, Version)> + '_ {
        self.vector.entries().map(|e| (e.scope, e.version)).chain(
            self.overflow
                .iter()
                .flat_map(|o| o.entries.iter().map(|(s, v)| (*s, *v))),
        )
    }

    /// The number of exact entries this process holds beyond the version vector.
    pub fn overflow_len(&self) -> usize {
        self.overflow.as_ref().map_or(0, |o| o.entries.len())
    }

    /// The number of entries coarsened (or raised beyond the vector) and not yet written to the
    /// shared record: while it is not zero, this state's token names no record.
    pub fn unflushed_len(&self) -> usize {
        self.unflushed().len() + usize::from(self.vector.has_evicted())
    }

    /// Entries coarsened and not yet written to the shared record.
    pub(crate) fn unflushed(&self) -> &[crate::version::Entry] {
        self.overflow.as_ref().map_or(&[], |o| &o.unflushed)
    }

    pub(crate) fn overflow(&self) -> Option<&Arc<Overflow>> {
        self.overflow.as_ref()
    }

    pub(crate) fn set_overflow(&mut self, overflow: Option<Arc<Overflow>>) {
        self.overflow = overflow;
    }

    /// Whether the entries coarsened into `store`'s horizon are all held exactly: the record
    /// as loaded is at least the version the state names, and what is held reaches the horizon.
    fn exact_beyond_vector(&self, store: StoreId, horizon: Version) -> bool {
        let Some(record) = self.record else {
            return false;
        };
        let held = self.overflow.as_deref();
        if held.map_or(0, |o| o.loaded) < record {
            return false;
        }
        let max = held
            .and_then(|o| o.max_of(store))
            .max(self.vector.evicted_max(store));
        max.is_some_and(|m| m >= horizon)
    }

    /// What a read of `scope` must reflect: the exact entry of the vector, and beyond it the
    /// exact entry this process holds of a coarsened scope when every coarsened entry of its
    /// store is held ([`crate::record`]); otherwise the store's horizon as well.
    #[inline]
    pub fn requirement(&self, scope: ScopeKey) -> crate::version::Requirement {
        if !self.vector.has_horizons() && self.principal.is_none() {
            return self.vector.requirement(scope);
        }
        let mut r = self.requirement_beyond(scope);
        if let Some(principal) = &self.principal {
            r.version = r.version.max(principal.get(scope));
            if let Some(h) = principal.horizon(scope.store()) {
                r.horizon = Some(r.horizon.map_or(h, |mine| mine.max(h)));
            }
        }
        r
    }

    /// `requirement` for a scope its store's horizon covers: exact when the state holds it.
    #[cold]
    #[inline(never)]
    fn requirement_beyond(&self, scope: ScopeKey) -> crate::version::Requirement {
        let mut r = self.vector.requirement(scope);
        let Some(horizon) = r.horizon else {
            return r;
        };
        if self.exact_beyond_vector(scope.store(), horizon) {
            let held = self
                .overflow
                .as_deref()
                .and_then(|o| o.entries.get(&scope).copied())
                .max(self.vector.evicted_get(scope));
            r.version = r.version.max(held.unwrap_or(Version::ZERO));
            r.horizon = None;
        }
        r
    }

    /// Takes in a record loaded at `record.loaded` (from the store or an instance's cache).
    pub(crate) fn adopt_record(&mut self, record: &Arc<Overflow>) {
        self.take_evicted();
        // What is held must be in the record the state names: name at least the version held
        // (a later record holds everything an earlier one does).
        if let Some(r) = self.record {
            self.record = Some(r.max(record.loaded));
        }
        match self.overflow.as_mut() {
            None if record.unflushed.is_empty() => self.overflow = Some(record.clone()),
            None => {
                self.overflow = Some(Arc::new(Overflow {
                    loaded: record.loaded,
                    entries: record.entries.clone(),
                    unflushed: Vec::new(),
                }))
            }
            Some(mine) => {
                let mine = Arc::make_mut(mine);
                mine.loaded = mine.loaded.max(record.loaded);
                for (scope, version) in &record.entries {
                    mine.advance(*scope, *version);
                }
            }
        }
    }

    /// Records that `batch` (the first entries of what was unflushed) is in the shared record at
    /// `version`; `before` is the version held when the batch was taken. Returns what this
    /// process now holds of the record when it is exactly the record at `version` plus local
    /// entries (no other instance appended in between), for the instance's cache.
    pub(crate) fn flushed(
        &mut self,
        batch: &[crate::version::Entry],
        version: u64,
        before: u64,
    ) -> Option<Arc<Overflow>> {
        if let Some(r) = self.record {
            self.record = Some(r.max(version));
        }
        let overflow = Arc::make_mut(self.overflow.as_mut()?);
        if overflow.unflushed.starts_with(batch) {
            overflow.unflushed.drain(..batch.len());
        }
        if overflow.loaded == before && before + 1 == version {
            overflow.loaded = version;
            // Exactly the record at `version` when nothing is left to write: what an instance
            // may hand to another continuation of the session.
            if overflow.unflushed.is_empty() {
                return self.overflow.clone();
            }
        }
        None
    }

    /// Moves what the vector coarsened into the overflow (when the state keeps a record).
    #[inline]
    fn take_evicted(&mut self) {
        if self.vector.has_evicted() {
            self.keep_evicted();
        }
    }

    /// `take_evicted` when entries were coarsened.
    #[cold]
    #[inline(never)]
    fn keep_evicted(&mut self) {
        let (evicted, lost) = self.vector.take_evicted();
        if lost || self.record.is_none() {
            self.record = None;
            return;
        }
        let overflow = Arc::make_mut(self.overflow.get_or_insert_with(Default::default));
        for e in evicted {
            // Held already at that version: it is in the record the state names, or waiting
            // to be written.
            if overflow.advance(e.scope, e.version) {
                overflow.unflushed.push(e);
            }
        }
        if overflow.unflushed.len() > crate::version::MAX_EVICTED {
            // Too much to write at once: the record no longer covers the horizons.
            overflow.unflushed.clear();
            self.record = None;
        }
    }

    /// When the session started, in seconds since the Unix epoch (0 when unknown): the issue time
    /// of its first signed token, carried unchanged through every re-issue. Revocation by epoch
    /// compares against it, so refreshing a token never launders an older session.
    #[inline]
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// Records when the session started; an earlier known start is kept.
    pub fn set_started_at(&mut self, secs: u64) {
        self.started_at = earliest(self.started_at, secs);
    }

    /// The lane of this continuation (see [`WriteId`]).
    #[inline]
    pub fn lane(&self) -> u64 {
        self.lane
    }

    /// The context a store keeps in this session, if any.
    #[inline]
    pub fn context(&self, store: StoreId) -> Option<&StoreContext> {
        if self.contexts.is_empty() {
            return None;
        }
        self.contexts.iter().find(|c| c.store == store)
    }

    /// All store contexts.
    pub fn contexts(&self) -> &[StoreContext] {
        &self.contexts
    }

    /// Keeps `context` if its store has none yet or an older one. Contexts longer than
    /// [`MAX_CONTEXT_LEN`], or a third store, are refused (returns false).
    pub fn advance_context(&mut self, context: StoreContext) -> bool {
        if context.bytes.len() > MAX_CONTEXT_LEN {
            return false;
        }
        let len = self.contexts.len();
        match self.contexts.iter_mut().find(|c| c.store == context.store) {
            Some(c) if context.version > c.version => {
                *c = context;
                true
            }
            Some(_) => false,
            None if len < MAX_CONTEXTS => {
                self.contexts.push(context);
                true
            }
            None => false,
        }
    }

    /// The session id.
    #[inline]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The sequence number of the last write stamped.
    #[inline]
    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    /// The hybrid clock's last reading.
    #[inline]
    pub fn clock(&self) -> HybridTimestamp {
        self.clock
    }

    /// The version vector.
    #[inline]
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// The version vector, mutably (versions still only move forward).
    pub fn vector_mut(&mut self) -> &mut VersionVector {
        &mut self.vector
    }

    /// Stamps a new write: the next [`WriteId`] and a clock reading after every timestamp seen.
    ///
    /// The id is unique (see [`WriteId`]). When the sequence is exhausted (a state decoded from
    /// an absurd unsigned token), the state moves to a new lane instead of overflowing or
    /// repeating an id.
    #[inline]
    pub fn next_write(&mut self, now_micros: u64) -> (WriteId, HybridTimestamp) {
        if self.write_seq == u64::MAX {
            self.lane = fresh_lane();
        } else {
            self.write_seq += 1;
        }
        self.clock = self.clock.next(now_micros);
        (WriteId::new(self.id, self.lane, self.write_seq), self.clock)
    }

    /// Moves the hybrid clock to at least `seen`.
    #[inline]
    pub fn observe_clock(&mut self, seen: HybridTimestamp) {
        self.clock.observe(seen);
    }

    /// Raises the high-water mark of `scope`. A state that keeps a record keeps the version
    /// exactly even below its store's horizon (the scope comes back into the vector).
    #[inline]
    pub fn advance(&mut self, scope: ScopeKey, version: Version) -> bool {
        if let Some(principal) = &mut self.principal {
            principal.raise(scope, version);
        }
        // A scope the vector holds is raised there, record or not, and nothing is coarsened.
        if let Some(changed) = self.vector.advance_present(scope, version) {
            return changed;
        }
        self.advance_absent(scope, version)
    }

    /// `advance` of a scope the vector does not hold.
    #[inline(never)]
    fn advance_absent(&mut self, scope: ScopeKey, version: Version) -> bool {
        let changed = if self.record.is_some() {
            self.raise_exact(scope, version)
        } else {
            self.vector.advance(scope, version)
        };
        self.take_evicted();
        changed
    }

    /// Raises `scope` where the state holds it exactly: in the vector, or, for a coarsened scope,
    /// beyond it (the raise then goes to the record with the next write); a scope held nowhere
    /// enters the vector.
    fn raise_exact(&mut self, scope: ScopeKey, version: Version) -> bool {
        if version == Version::ZERO {
            return false;
        }
        if let Some(changed) = self.vector.advance_present(scope, version) {
            return changed;
        }
        let held = self
            .overflow
            .as_deref()
            .and_then(|o| o.entries.get(&scope).copied())
            .max(self.vector.evicted_get(scope));
        match held {
            Some(held) if held >= version => false,
            Some(_) => {
                let overflow = Arc::make_mut(self.overflow.get_or_insert_with(Default::default));
                overflow.advance(scope, version);
                overflow
                    .unflushed
                    .push(crate::version::Entry { scope, version });
                // The horizon still covers every version held beyond the vector: a token that
                // names no record falls back to it.
                self.vector.raise_horizon(crate::version::StoreHorizon {
                    store: scope.store(),
                    version,
                });
                true
            }
            None => self.vector.advance_exact(scope, version),
        }
    }

    /// Pointwise maximum with another state of the same session. States of other sessions are
    /// ignored (returns false). This state keeps its own lane.
    pub fn merge(&mut self, other: &SessionState) -> bool {
        if other.id != self.id {
            return false;
        }
        self.absorb(other);
        true
    }

    /// Takes in what another state has observed, whichever session it belongs to: the version
    /// vector, the clock and the store contexts (the write sequence too, when it is the same
    /// session). Used when a client presents tokens of two sessions at once (two concurrent first
    /// requests that each started one): the fences become stricter, never weaker, and write ids
    /// stay unique because the sequence of another session is not taken.
    pub fn absorb(&mut self, other: &SessionState) {
        if other.id == self.id {
            self.write_seq = self.write_seq.max(other.write_seq);
        }
        // A state is as old as the oldest it took in: an epoch revocation that covers any of them
        // covers it too (a session cycled to a new id is never laundered).
        self.started_at = earliest(self.started_at, other.started_at);
        self.clock.observe(other.clock);
        self.take_evicted();
        // The merged coarsened entries are held exactly only if both sides' are.
        self.record = self.record_with(other);
        if self.record.is_some() {
            for h in other.vector.horizons() {
                self.vector.raise_horizon(h);
            }
            for e in other.vector.entries() {
                self.raise_exact(e.scope, e.version);
            }
            if let Some(theirs) = other.overflow.as_deref() {
                let mine = Arc::make_mut(self.overflow.get_or_insert_with(Default::default));
                // What `other` still has to write is written by this state, unless this state
                // holds it already (in the record, or waiting to be written).
                for e in &theirs.unflushed {
                    if mine.entries.get(&e.scope).is_none_or(|v| *v < e.version) {
                        mine.unflushed.push(*e);
                    }
                }
                mine.loaded = mine.loaded.max(theirs.loaded);
                for (scope, version) in &theirs.entries {
                    mine.advance(*scope, *version);
                }
                let loaded = mine.loaded;
                self.record = self.record.map(|r| r.max(loaded));
            }
            let (evicted, lost) = (other.vector.evicted_get_all(), other.vector.evicted_lost());
            if lost {
                self.record = None;
            } else if !evicted.is_empty() {
                let mine = Arc::make_mut(self.overflow.get_or_insert_with(Default::default));
                for e in evicted {
                    if mine.advance(e.scope, e.version) {
                        mine.unflushed.push(e);
                    }
                }
            }
        } else {
            self.vector.merge(&other.vector);
        }
        self.take_evicted();
        for c in &other.contexts {
            self.advance_context(c.clone());
        }
    }

    /// The record a state would name after absorbing `other`.
    fn record_with(&self, other: &SessionState) -> Option<u64> {
        match (self.record, other.record) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        }
    }

    /// Whether every read requires at least as much of `self` as of `other`, beyond what the
    /// vectors say: where `self` knows a store's coarsened entries exactly and `other` does not,
    /// `other` requires the horizon of every scope, which `self` does not; where both do, `self`
    /// requires each entry `other` holds.
    fn requires_what_beyond_vector(&self, other: &SessionState) -> bool {
        other.vector.horizons().all(|h| {
            let Some(mine) = self.vector.horizon(h.store) else {
                return false;
            };
            if !self.exact_beyond_vector(h.store, mine.version) {
                return true;
            }
            if !other.exact_beyond_vector(h.store, h.version) {
                return false;
            }
            let theirs = other.overflow.as_deref();
            theirs
                .into_iter()
                .flat_map(|o| o.entries.iter().map(|(s, v)| (*s, *v)))
                .chain(
                    other
                        .vector
                        .evicted_get_all()
                        .into_iter()
                        .map(|e| (e.scope, e.version)),
                )
                .filter(|(s, _)| s.store() == h.store)
                .all(|(s, v)| self.requirement(s).version >= v)
        })
    }

    /// True when absorbing `other` ([`SessionState::absorb`]) would make no fence stricter: `self`
    /// dominates `other`, comparing write sequences only within one session.
    pub fn covers(&self, other: &SessionState) -> bool {
        self.record_with(other) == self.record
            && other.unflushed().is_empty()
            && self.vector.dominates(&other.vector)
            && self.requires_what_beyond_vector(other)
            && self.clock >= other.clock
            && (self.id != other.id || self.write_seq >= other.write_seq)
            && other.contexts.iter().all(|o| {
                self.context(o.store)
                    .is_some_and(|c| c.version >= o.version)
            })
    }

    /// True when `self` implies everything `other` requires.
    pub fn dominates(&self, other: &SessionState) -> bool {
        self.requires_what_beyond_vector(other)
            && self.write_seq >= other.write_seq
            && self.clock >= other.clock
            && self.vector.dominates(&other.vector)
            && other.contexts.iter().all(|o| {
                self.context(o.store)
                    .is_some_and(|c| c.version >= o.version)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_distinct_across_threads_and_blocks() {
        // Each thread crosses block boundaries (65,536 lanes a block).
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..150_000)
                        .map(|_| SessionState::new(SessionId::from_u128(1)).lane())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a lane was drawn twice");
    }
    use crate::version::StoreId;

    #[test]
    fn write_ids_are_sequential_and_clock_monotonic() {
        let mut s = SessionState::new(SessionId::from_u128(7));
        let (w1, t1) = s.next_write(100);
        let (w2, t2) = s.next_write(50);
        assert_eq!((w1.seq, w2.seq), (1, 2));
        assert!(t2 > t1);
        assert_eq!(w1.lane, w2.lane);
        assert_eq!(WriteId::parse(&w2.to_string()), Some(w2));
        assert_eq!(WriteId::parse("xyz-1"), None);
        assert_eq!(WriteId::parse(&format!("{}-x", w2.session)), None);
        assert_eq!(
            WriteId::parse(&format!("{}-{:016x}-+1", w2.session, w2.lane)),
            None
        );
        let short_lane = &format!("{:016x}", w2.lane)[1..];
        assert_eq!(
            WriteId::parse(&format!("{}-{short_lane}-1", w2.session)),
            None
        );
    }

    #[test]
    fn merge_ignores_other_sessions_and_never_regresses() {
        let scope = ScopeKey::new(StoreId::new(0), b"k");
        let mut a = SessionState::new(SessionId::from_u128(1));
        a.advance(scope, Version::new(9));
        let mut b = SessionState::new(SessionId::from_u128(1));
        b.advance(scope, Version::new(3));
        b.next_write(10);
        assert!(a.merge(&b));
        assert_eq!(a.vector().get(scope), Some(Version::new(9)));
        assert_eq!(a.write_seq(), 1);
        let other = SessionState::new(SessionId::from_u128(2));
        assert!(!a.merge(&other));
    }

    #[test]
    fn an_exhausted_write_sequence_saturates_instead_of_panicking() {
        let mut s = SessionState::from_parts(
            SessionId::from_u128(1),
            u64::MAX,
            HybridTimestamp::new(u64::MAX),
            VersionVector::default(),
        );
        let (a, t) = s.next_write(5);
        let (b, _) = s.next_write(6);
        assert_eq!((a.seq, b.seq), (u64::MAX, u64::MAX));
        assert_ne!(a, b, "an exhausted sequence moves to a new lane");
        assert_eq!(t.get(), u64::MAX);
    }

    #[test]
    fn derived_ids_differ_per_key() {
        assert_ne!(SessionId::derive(b"a"), SessionId::derive(b"b"));
        assert_ne!(SessionId::random(), SessionId::random());
    }

    #[test]
    fn two_continuations_of_one_token_never_share_a_write_id() {
        // The reproduction: one token, continued twice (two instances, two tabs, a lost response
        // and a retry), each continuation writes. Before lanes, both stamped `seq + 1`.
        let original = Session::new();
        original.with_state(|s| s.next_write(1));
        let token = original.token().encode().unwrap();
        let a = Session::from_encoded(&token).unwrap();
        let b = Session::from_encoded(&token).unwrap();
        let ids: Vec<WriteId> = (0..3)
            .flat_map(|i| {
                [
                    a.with_state(|s| s.next_write(10 + i).0),
                    b.with_state(|s| s.next_write(10 + i).0),
                ]
            })
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        // Merged back, each side keeps its lane and its sequence only grows.
        a.merge(&b.snapshot());
        let next = a.with_state(|s| s.next_write(20).0);
        assert!(!ids.contains(&next));
        assert!(next.seq > 4);
    }

    #[test]
    fn clones_and_decoded_states_are_new_lanes() {
        let s = SessionState::new(SessionId::from_u128(3));
        let c = s.clone();
        assert_eq!(s, c, "the lane is not portable state");
        assert_ne!(s.lane(), c.lane());
        let lanes: std::collections::HashSet<u64> = (0..10_000).map(|_| s.clone().lane()).collect();
        assert_eq!(lanes.len(), 10_000);
    }
}
