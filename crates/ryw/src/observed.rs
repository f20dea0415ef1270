//! What a store response shows: the versions it reflects, and what little else some stores
//! carry (a clock reading, a store context, floors). Adapters fill an [`Observed`] in
//! [`crate::adapter::StoreAdapter::observe`]; the layer checks it against the read's fence and
//! records it in the session.
//!
//! # Example
//!
//! ```
//! use ryw::adapter::Observed;
//! use ryw::version::{ScopeKey, StoreId, Version};
//!
//! let scope = ScopeKey::new(StoreId::new(1), b"posts/1");
//! let mut observed = Observed::new();
//! observed.push(scope, Version::new(3));
//! observed.push(scope, Version::new(2)); // a scope recorded twice keeps the larger version
//! assert_eq!(observed.get(scope), Some(Version::new(3)));
//! ```

use crate::clock::HybridTimestamp;
use crate::version::{ScopeKey, Version};
use smallvec::SmallVec;

/// What few responses carry beyond their versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extras {
    /// Requirements to record that prove nothing of this response.
    floors: Vec<(ScopeKey, Version)>,
    /// Versions this response meets that are not requirements to record.
    meets: Vec<(ScopeKey, Version)>,
    /// An opaque store context, with the version it goes with.
    context: Option<(Version, std::sync::Arc<[u8]>)>,
}

/// Versions (and optionally a clock reading) a response carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    versions: SmallVec<[(ScopeKey, Version); 2]>,
    /// Floors, versions met and a store context (most responses have none: kept out of line,
    /// so that dropping an `Observed` is one check; an `Arc`, whose drop is inlined).
    extras: Option<std::sync::Arc<Extras>>,
    clock: Option<HybridTimestamp>,
    strong: bool,
}

impl Observed {
    /// Nothing observed.
    #[inline]
    pub fn new() -> Self {
        Observed::default()
    }

    /// Records that the response reflects `scope` at `version` (use `Version::ZERO` for an item
    /// that does not exist). A scope recorded twice keeps the larger version.
    #[inline]
    pub fn push(&mut self, scope: ScopeKey, version: Version) {
        if let Some(slot) = self.versions.iter_mut().find(|(s, _)| *s == scope) {
            slot.1 = slot.1.max(version);
        } else {
            self.versions.push((scope, version));
        }
    }

    /// Raises what the session requires of `scope` to `version` from now on, without claiming
    /// that this response reflects it: the newest write time among the rows of a partition read
    /// is something the session has seen (so later reads of the partition must show it:
    /// monotonic reads), but on a store that does not replicate a partition in order it shows
    /// nothing of the rows the response lacks. The fence check ignores it.
    pub fn require(&mut self, scope: ScopeKey, version: Version) {
        upsert(
            &mut std::sync::Arc::make_mut(self.extras.get_or_insert_default()).floors,
            scope,
            version,
        );
    }

    /// Records that this response reflects `scope` up to `version` for this read's fence,
    /// without making `version` a requirement of the session: a row's write time shows that the
    /// row reflects a partition-wide write made before it (a partition delete), but must not
    /// become a requirement on the partition's other rows.
    pub fn meets(&mut self, scope: ScopeKey, version: Version) {
        upsert(
            &mut std::sync::Arc::make_mut(self.extras.get_or_insert_default()).meets,
            scope,
            version,
        );
    }

    /// Records a timestamp the session's hybrid clock must move past (a Scylla write time, a
    /// cluster time).
    #[inline]
    pub fn clock(&mut self, seen: HybridTimestamp) {
        self.clock = Some(self.clock.map_or(seen, |c| c.max(seen)));
    }

    /// Marks the response as served by the strongly consistent path: it reflects every write
    /// acknowledged before it was served, so it meets any fence (including store horizons).
    #[inline]
    pub fn mark_strong(&mut self) {
        self.strong = true;
    }

    /// Records an opaque store context the session must carry (MongoDB's signed
    /// `$clusterTime`), with the version it goes with; the session keeps the newest.
    pub fn context(&mut self, version: Version, bytes: impl Into<std::sync::Arc<[u8]>>) {
        let slot = &mut std::sync::Arc::make_mut(self.extras.get_or_insert_default()).context;
        if slot.as_ref().is_none_or(|(v, _)| version > *v) {
            *slot = Some((version, bytes.into()));
        }
    }

    /// The store context recorded, if any.
    #[inline]
    pub fn seen_context(&self) -> Option<(Version, &[u8])> {
        self.extras
            .as_deref()?
            .context
            .as_ref()
            .map(|(v, b)| (*v, &**b))
    }

    pub(crate) fn context_shared(&self) -> Option<(Version, std::sync::Arc<[u8]>)> {
        self.extras.as_deref()?.context.clone()
    }

    /// The version this response reflects of `scope` (what [`Observed::push`] and
    /// [`Observed::meets`] recorded), what a fence is checked against.
    #[inline]
    pub fn get(&self, scope: ScopeKey) -> Option<Version> {
        let find =
            |list: &[(ScopeKey, Version)]| list.iter().find(|(s, _)| *s == scope).map(|(_, v)| *v);
        let pushed = find(&self.versions);
        match &self.extras {
            Some(extras) if !extras.meets.is_empty() => pushed.max(find(&extras.meets)),
            _ => pushed,
        }
    }

    /// The versions the response reflects and the session records ([`Observed::push`]).
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (ScopeKey, Version)> + '_ {
        self.versions.iter().copied()
    }

    /// The requirements recorded with [`Observed::require`], which prove nothing of this
    /// response.
    #[inline]
    pub fn floors(&self) -> impl Iterator<Item = (ScopeKey, Version)> + '_ {
        self.extras
            .as_deref()
            .map_or(&[][..], |e| &e.floors[..])
            .iter()
            .copied()
    }

    /// The clock reading, if any.
    #[inline]
    pub fn seen_clock(&self) -> Option<HybridTimestamp> {
        self.clock
    }

    /// Whether the response came from the strong path.
    #[inline]
    pub fn is_strong(&self) -> bool {
        self.strong
    }
}

fn upsert(list: &mut Vec<(ScopeKey, Version)>, scope: ScopeKey, version: Version) {
    if let Some(slot) = list.iter_mut().find(|(s, _)| *s == scope) {
        slot.1 = slot.1.max(version);
    } else {
        list.push((scope, version));
    }
}
