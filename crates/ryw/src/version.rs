//! Versions, scopes and the bounded version vector a session keeps.
//!
//! A [`Version`] is a position in one [`ScopeKey`]'s total order (a MongoDB cluster time packed
//! into 64 bits, a Scylla write timestamp, a DynamoDB item version). A [`VersionVector`] holds,
//! per scope, the high-water mark every later read of that scope must reflect. Vectors only move
//! forward: [`VersionVector::advance`] and [`VersionVector::merge`] ignore older values, and two
//! vectors are compared with [`VersionVector::dominates`] (a partial order), never with `Ord`.
//!
//! The vector is bounded. Past its cap, the least recently advanced entries are *coarsened* into
//! a per-store [`StoreHorizon`]: "this session touched some scopes of this store up to version
//! V", so every read of that store must reflect at least V on the scope it reads (or be served
//! by a path that reflects everything: a server wait at V on a store with global versions, or
//! the strong path). A horizon never expires and never goes down: coarsening only makes fences
//! stricter, whatever the lag and however long ago the scope was touched. It is never silent
//! either (the horizon is visible in the vector and in the token).
//!
//! # Example
//!
//! ```
//! use ryw::version::{ScopeKey, StoreId, Version, VersionVector};
//!
//! let store = StoreId::new(1);
//! let post = ScopeKey::new(store, b"posts/42");
//! let mut vector = VersionVector::with_cap(1);
//!
//! vector.advance(post, Version::new(7));
//! vector.advance(post, Version::new(3)); // older: ignored
//! assert_eq!(vector.get(post), Some(Version::new(7)));
//! assert_eq!(vector.requirement(post).version, Version::new(7));
//!
//! // A second scope overflows the cap of 1: the first is coarsened into the store's horizon,
//! // which every later read of the store must meet, for as long as the session lives.
//! vector.advance(ScopeKey::new(store, b"posts/43"), Version::new(9));
//! assert_eq!(vector.get(post), None);
//! assert_eq!(vector.requirement(post).horizon, Some(Version::new(7)));
//! ```

use crate::hash::stable_hash;
use smallvec::SmallVec;
use std::fmt;

/// A position in one scope's total order. Larger is newer.
///
/// `Version::ZERO` means "nothing": an item that does not exist yet, or no requirement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The smallest version: no requirement, or an absent item.
    pub const ZERO: Version = Version(0);

    /// Wraps a raw 64-bit version.
    pub const fn new(raw: u64) -> Self {
        Version(raw)
    }

    /// The raw 64-bit value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Identifies one store (one adapter's deployment) inside a session; tokens may carry sections
/// for up to 256 stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(u8);

impl StoreId {
    /// A store id. Applications that use several stores in one session give each a distinct id.
    pub const fn new(id: u8) -> Self {
        StoreId(id)
    }

    /// The raw id.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// What a version applies to: a store plus a 56-bit stable hash of the scope's name (a MongoDB
/// deployment, a Scylla partition, a DynamoDB item).
///
/// The hash is FNV-1a followed by a 64-bit finalizer: stable across processes, builds and
/// platforms, so tokens stay meaningful wherever they travel. Two scopes that collide (about one
/// chance in 2^56 per pair) share a high-water mark, which only makes fences stricter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeKey(u64);

const HASH_BITS: u32 = 56;
const HASH_MASK: u64 = (1 << HASH_BITS) - 1;

impl ScopeKey {
    /// Hashes `name` into a scope of `store`.
    pub fn new(store: StoreId, name: &[u8]) -> Self {
        Self::from_hash(store, stable_hash(name))
    }

    /// Builds a scope from a precomputed hash; only the low 56 bits are kept.
    pub const fn from_hash(store: StoreId, hash: u64) -> Self {
        ScopeKey(((store.0 as u64) << HASH_BITS) | (hash & HASH_MASK))
    }

    /// The store this scope belongs to.
    pub const fn store(self) -> StoreId {
        StoreId((self.0 >> HASH_BITS) as u8)
    }

    /// The 56-bit hash of the scope's name.
    pub const fn hash56(self) -> u64 {
        self.0 & HASH_MASK
    }

    /// The packed 64-bit form (store in the top byte).
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// Rebuilds a scope from [`ScopeKey::to_bits`].
    pub const fn from_bits(bits: u64) -> Self {
        ScopeKey(bits)
    }

    /// The scope's text form: its packed bits as 16 lower-case hex digits (how record stores key
    /// a session's entries).
    ///
    /// ```
    /// use ryw::{ScopeKey, StoreId};
    ///
    /// let scope = ScopeKey::new(StoreId::new(2), b"posts/1");
    /// assert_eq!(ScopeKey::parse_hex(&scope.to_hex()), Some(scope));
    /// assert_eq!(ScopeKey::parse_hex("not a scope"), None);
    /// ```
    pub fn to_hex(self) -> String {
        format!("{:016x}", self.0)
    }

    /// A scope from [`ScopeKey::to_hex`]: exactly 16 lower-case hex digits, else `None`.
    pub fn parse_hex(text: &str) -> Option<Self> {
        let canonical = text.len() == 16
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        canonical
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(ScopeKey)
    }
}

impl fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeKey({}:{:014x})", self.store().0, self.hash56())
    }
}

/// Coarsened state for one store: entries evicted from the vector, summarised.
///
/// Every later read of the store must reflect at least `version` on the scope it reads, or be
/// served by a path that reflects everything (see [`crate::fence::ReadFence::check`]). A horizon
/// does not expire: replication lag has no upper bound a session could rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHorizon {
    /// The store.
    pub store: StoreId,
    /// The largest version among the evicted entries.
    pub version: Version,
}

/// One exact entry of a [`VersionVector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The scope.
    pub scope: ScopeKey,
    /// Its high-water mark.
    pub version: Version,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    entry: Entry,
    touched: u32,
}

/// The default number of exact entries a vector keeps before coarsening.
pub const DEFAULT_SCOPE_CAP: usize = 32;

/// The largest cap a vector accepts: beyond it a token could not stay under its size cap.
pub const MAX_SCOPE_CAP: usize = 48;

/// The requirement a read of one scope must meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The scope read.
    pub scope: ScopeKey,
    /// The exact high-water mark (`Version::ZERO` when the session has none for this scope).
    pub version: Version,
    /// The store horizon covering this scope, if the session coarsened entries of its store: the
    /// read must then reflect at least this version too.
    pub horizon: Option<Version>,
}

impl Requirement {
    /// True when the read needs no fence at all.
    #[inline]
    pub fn is_unfenced(&self) -> bool {
        self.version == Version::ZERO && self.horizon.is_none()
    }
}

/// Per-scope high-water marks with a cap, coarsening into per-store horizons.
#[derive(Clone, Debug)]
pub struct VersionVector {
    slots: SmallVec<[Slot; 4]>,
    horizons: SmallVec<[StoreHorizon; 1]>,
    cap: u16,
    tick: u32,
    /// Entries coarsened since a [`crate::SessionState`] last took them (for its record), at
    /// most [`MAX_EVICTED`]; `evicted_lost` when more were.
    evicted: Vec<Entry>,
    evicted_lost: bool,
}

/// The most coarsened entries a vector keeps for its session's record between two operations of
/// the session; past it, the session's record no longer covers its horizons.
pub(crate) const MAX_EVICTED: usize = 4096;

impl Default for VersionVector {
    fn default() -> Self {
        Self::with_cap(DEFAULT_SCOPE_CAP)
    }
}

impl PartialEq for VersionVector {
    fn eq(&self, other: &Self) -> bool {
        if self.slots.len() != other.slots.len() || self.horizons.len() != other.horizons.len() {
            return false;
        }
        // A clone compared with its original has its entries in the same order: no sorting.
        if self
            .slots
            .iter()
            .zip(&other.slots)
            .all(|(a, b)| a.entry == b.entry)
            && self.horizons == other.horizons
        {
            return true;
        }
        let mut a: SmallVec<[Entry; 8]> = self.entries().collect();
        let mut b: SmallVec<[Entry; 8]> = other.entries().collect();
        a.sort_by_key(|e| e.scope);
        b.sort_by_key(|e| e.scope);
        let mut ha = self.horizons.clone();
        let mut hb = other.horizons.clone();
        ha.sort_by_key(|h| h.store);
        hb.sort_by_key(|h| h.store);
        a == b && ha == hb
    }
}

impl VersionVector {
    /// An empty vector that keeps at most `cap` exact entries (clamped to `1..=MAX_SCOPE_CAP`).
    pub fn with_cap(cap: usize) -> Self {
        VersionVector {
            slots: SmallVec::new(),
            horizons: SmallVec::new(),
            cap: cap.clamp(1, MAX_SCOPE_CAP) as u16,
            tick: 0,
            evicted: Vec::new(),
            evicted_lost: false,
        }
    }

    /// The cap on exact entries.
    #[inline]
    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Sets the cap to `cap`, or to the current number of entries if larger (never evicts).
    pub(crate) fn set_cap_at_least_len(&mut self, cap: usize) {
        self.cap = cap.max(self.slots.len()).clamp(1, MAX_SCOPE_CAP) as u16;
    }

    /// Renames every exact entry's scope with `f` (a bijection: a token's scope mask).
    pub(crate) fn map_scopes(&mut self, f: impl Fn(ScopeKey) -> ScopeKey) {
        for slot in &mut self.slots {
            slot.entry.scope = f(slot.entry.scope);
        }
    }

    /// Sets the cap (clamped to `1..=MAX_SCOPE_CAP`), coarsening the least recently advanced
    /// entries if the vector holds more.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.clamp(1, MAX_SCOPE_CAP) as u16;
        self.enforce_cap(self.cap as usize);
    }

    /// Number of exact entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the vector has neither entries nor horizons.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.horizons.is_empty()
    }

    /// The exact entries, in no particular order.
    #[inline]
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slots.iter().map(|s| s.entry)
    }

    /// The store horizons, in no particular order.
    #[inline]
    pub fn horizons(&self) -> impl Iterator<Item = StoreHorizon> + '_ {
        self.horizons.iter().copied()
    }

    /// The exact high-water mark of `scope`, if the vector has one.
    #[inline]
    pub fn get(&self, scope: ScopeKey) -> Option<Version> {
        self.slots
            .iter()
            .find(|s| s.entry.scope == scope)
            .map(|s| s.entry.version)
    }

    /// The horizon of `store`, if any.
    pub fn horizon(&self, store: StoreId) -> Option<StoreHorizon> {
        self.horizons.iter().find(|h| h.store == store).copied()
    }

    /// Whether any store's horizon is raised (some entry was coarsened).
    #[inline]
    pub(crate) fn has_horizons(&self) -> bool {
        !self.horizons.is_empty()
    }

    /// The requirement a read of `scope` must meet.
    #[inline]
    pub fn requirement(&self, scope: ScopeKey) -> Requirement {
        let version = self.get(scope).unwrap_or(Version::ZERO);
        let horizon = if self.horizons.is_empty() {
            None
        } else {
            self.horizon(scope.store()).map(|h| h.version)
        };
        Requirement {
            scope,
            version,
            horizon,
        }
    }

    /// Raises the high-water mark of `scope` to `version`; older values are ignored, and so is a
    /// new entry its store's horizon already implies. Returns true when the vector changed. May
    /// coarsen the least recently advanced entry when full.
    pub fn advance(&mut self, scope: ScopeKey, version: Version) -> bool {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        if let Some(slot) = self.slots.iter_mut().find(|s| s.entry.scope == scope) {
            slot.touched = tick;
            if version > slot.entry.version {
                slot.entry.version = version;
                return true;
            }
            return false;
        }
        if version == Version::ZERO
            || self
                .horizon(scope.store())
                .is_some_and(|h| h.version >= version)
        {
            return false;
        }
        self.slots.push(Slot {
            entry: Entry { scope, version },
            touched: tick,
        });
        self.enforce_cap(self.cap as usize);
        true
    }

    /// Raises `scope` to `version` if the vector holds it (`None` when it does not).
    #[inline]
    pub(crate) fn advance_present(&mut self, scope: ScopeKey, version: Version) -> Option<bool> {
        let slot = self.slots.iter_mut().find(|s| s.entry.scope == scope)?;
        self.tick = self.tick.wrapping_add(1);
        slot.touched = self.tick;
        if version > slot.entry.version {
            slot.entry.version = version;
            return Some(true);
        }
        Some(false)
    }

    /// Raises `scope` to `version` as an exact entry even when its store's horizon implies it
    /// (a session with a record keeps every version exactly); may coarsen another entry.
    pub(crate) fn advance_exact(&mut self, scope: ScopeKey, version: Version) -> bool {
        if version == Version::ZERO {
            return false;
        }
        if self.get(scope).is_some() {
            return self.advance(scope, version);
        }
        self.tick = self.tick.wrapping_add(1);
        self.slots.push(Slot {
            entry: Entry { scope, version },
            touched: self.tick,
        });
        self.enforce_cap(self.cap as usize);
        true
    }

    /// The entries coarsened since the last call, and whether more were than could be kept.
    pub(crate) fn take_evicted(&mut self) -> (Vec<Entry>, bool) {
        let lost = std::mem::replace(&mut self.evicted_lost, false);
        (std::mem::take(&mut self.evicted), lost)
    }

    /// The version of `scope` among the entries coarsened and not yet taken.
    pub(crate) fn evicted_get(&self, scope: ScopeKey) -> Option<Version> {
        self.evicted
            .iter()
            .filter(|e| e.scope == scope)
            .map(|e| e.version)
            .max()
    }

    /// The entries coarsened and not yet taken.
    pub(crate) fn evicted_get_all(&self) -> Vec<Entry> {
        self.evicted.clone()
    }

    /// Whether coarsened entries were lost (more than [`MAX_EVICTED`] between two takes).
    pub(crate) fn evicted_lost(&self) -> bool {
        self.evicted_lost
    }

    /// Whether entries were coarsened and not yet taken (or lost).
    #[inline]
    pub(crate) fn has_evicted(&self) -> bool {
        !self.evicted.is_empty() || self.evicted_lost
    }

    /// The largest version of `store` among the entries coarsened and not yet taken.
    pub(crate) fn evicted_max(&self, store: StoreId) -> Option<Version> {
        self.evicted
            .iter()
            .filter(|e| e.scope.store() == store)
            .map(|e| e.version)
            .max()
    }

    /// Raises the horizon of `horizon.store` to at least `horizon.version`.
    pub fn raise_horizon(&mut self, horizon: StoreHorizon) {
        if horizon.version == Version::ZERO {
            return;
        }
        if let Some(h) = self.horizons.iter_mut().find(|h| h.store == horizon.store) {
            h.version = h.version.max(horizon.version);
        } else {
            self.horizons.push(horizon);
        }
    }

    /// Pointwise maximum with `other`. Never moves any requirement backwards.
    pub fn merge(&mut self, other: &VersionVector) {
        for h in other.horizons() {
            self.raise_horizon(h);
        }
        for e in other.entries() {
            self.advance(e.scope, e.version);
        }
    }

    /// Coarsens the least recently advanced entries until at most `cap` remain.
    pub fn enforce_cap(&mut self, cap: usize) {
        while self.slots.len() > cap {
            let (idx, _) = self
                .slots
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| self.tick.wrapping_sub(s.touched))
                .expect("non-empty");
            let evicted = self.slots.swap_remove(idx).entry;
            tracing::debug!(target: "ryw::session", store = evicted.scope.store().0, "scope coarsened into store horizon");
            if self.evicted.len() < MAX_EVICTED {
                self.evicted.push(evicted);
            } else {
                self.evicted_lost = true;
            }
            self.raise_horizon(StoreHorizon {
                store: evicted.scope.store(),
                version: evicted.version,
            });
        }
    }

    /// True when every requirement of `other` is implied by `self`: each exact entry of `other`
    /// is at most the matching entry of `self` (or covered by a horizon of `self` at least as
    /// large), and each horizon of `other` is covered by a horizon of `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        let entries_ok = other.entries().all(|e| {
            self.get(e.scope).is_some_and(|v| v >= e.version)
                || self
                    .horizon(e.scope.store())
                    .is_some_and(|h| h.version >= e.version)
        });
        let horizons_ok = other.horizons().all(|o| {
            self.horizon(o.store)
                .is_some_and(|h| h.version >= o.version)
        });
        entries_ok && horizons_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(n: u64) -> ScopeKey {
        ScopeKey::from_hash(StoreId::new(1), n)
    }

    #[test]
    fn equality_ignores_order_and_recency() {
        let mut a = VersionVector::default();
        let mut b = VersionVector::default();
        a.advance(scope(1), Version::new(5));
        a.advance(scope(2), Version::new(7));
        b.advance(scope(2), Version::new(7));
        b.advance(scope(1), Version::new(5));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        b.advance(scope(1), Version::new(6));
        assert_ne!(a, b);
        a.advance(scope(3), Version::new(1));
        assert_ne!(a, b);
        let mut c = a.clone();
        c.raise_horizon(StoreHorizon {
            store: StoreId::new(1),
            version: Version::new(1),
        });
        assert_ne!(a, c);
    }

    #[test]
    fn scope_hash_is_stable() {
        // Pinned: tokens from other processes and builds depend on this value.
        assert_eq!(stable_hash(b""), 17280346270528514342);
        let k = ScopeKey::new(StoreId::new(3), b"users/1");
        assert_eq!(k.store(), StoreId::new(3));
        assert_eq!(ScopeKey::from_bits(k.to_bits()), k);
        assert_ne!(k, ScopeKey::new(StoreId::new(3), b"users/2"));
        assert_ne!(k, ScopeKey::new(StoreId::new(4), b"users/1"));
    }

    #[test]
    fn scope_keys_are_pinned() {
        // Pinned: signed tokens and stored records carry these bits, so the hash of a scope's
        // name may never change.
        let pinned: [(u8, &[u8], u64); 5] = [
            (0, b"", 0x00d0_1f60_ba99_2926),
            (1, b"posts/42", 0x01e2_6fbb_596c_413a),
            (3, b"users/1", 0x03b3_9397_1fcd_2993),
            (7, b"tenant-9/orders/2024-11-30/0001", 0x07b4_2cb7_cfb8_f2aa),
            (
                255,
                "scope with spaces and \u{fc}nic\u{f6}de".as_bytes(),
                0xff1b_64bf_817c_cb93,
            ),
        ];
        for (store, name, bits) in pinned {
            let key = ScopeKey::new(StoreId::new(store), name);
            assert_eq!(key.to_bits(), bits, "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn advance_never_moves_back() {
        let mut v = VersionVector::with_cap(4);
        assert!(v.advance(scope(1), Version::new(5)));
        assert!(!v.advance(scope(1), Version::new(4)));
        assert_eq!(v.get(scope(1)), Some(Version::new(5)));
        assert!(!v.advance(scope(2), Version::ZERO));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn eviction_coarsens_least_recently_advanced() {
        let mut v = VersionVector::with_cap(2);
        v.advance(scope(1), Version::new(10));
        v.advance(scope(2), Version::new(20));
        v.advance(scope(1), Version::new(11)); // touch 1: 2 is now the oldest
        v.advance(scope(3), Version::new(5));
        assert_eq!(v.len(), 2);
        assert_eq!(v.get(scope(2)), None);
        let h = v.horizon(StoreId::new(1)).unwrap();
        assert_eq!(h.version, Version::new(20));
        let r = v.requirement(scope(2));
        assert_eq!(r.horizon, Some(Version::new(20)));
        // The horizon never expires, and a lower exact entry never lowers the requirement.
        assert!(!v.advance(scope(2), Version::new(7)));
        assert_eq!(v.requirement(scope(2)).horizon, Some(Version::new(20)));
        assert_eq!(v.requirement(scope(9)).horizon, Some(Version::new(20)));
    }

    #[test]
    fn dominance_is_partial() {
        let mut a = VersionVector::with_cap(4);
        let mut b = VersionVector::with_cap(4);
        a.advance(scope(1), Version::new(2));
        b.advance(scope(2), Version::new(2));
        assert!(!a.dominates(&b) && !b.dominates(&a));
        a.merge(&b);
        assert!(a.dominates(&b));
    }
}
