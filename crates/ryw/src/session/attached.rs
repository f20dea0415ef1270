//! A session's attachment to its principal's record while requests of it run
//! ([`crate::principal`]): the record as last read, and what the session raised beyond it.

use crate::version::{Entry, ScopeKey, StoreId, Version};
use std::collections::HashMap;
use std::sync::Arc;

/// The scope under which a principal's record keeps a store's horizon: what a session required of
/// every scope of the store it held only coarsened (one that touched more scopes than its token
/// keeps, without a session record).
pub(crate) fn horizon_scope(store: StoreId) -> ScopeKey {
    ScopeKey::new(store, b"\0ryw:principal-horizon")
}

/// A principal's record as the requests of a bound session under way hold it.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The record as last read; `None` when a request under way could not have it.
    view: Option<Arc<View>>,
    /// What the session raised beyond the record, to append.
    delta: HashMap<ScopeKey, Version>,
    /// Requests of the session entered and not yet left.
    entered: u32,
}

/// The principal's record as one read of it showed it.
#[derive(Debug, Default)]
pub(crate) struct View {
    entries: HashMap<ScopeKey, Version>,
    horizons: HashMap<StoreId, Version>,
}

impl View {
    /// The view of a record holding `entries`.
    pub(crate) fn of(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut view = View::default();
        for e in entries {
            // One entry per scope is what a store keeps; should it answer two, the larger holds.
            let slot = view.entries.entry(e.scope).or_insert(Version::ZERO);
            *slot = (*slot).max(e.version);
            if e.scope == horizon_scope(e.scope.store()) {
                let h = view
                    .horizons
                    .entry(e.scope.store())
                    .or_insert(Version::ZERO);
                *h = (*h).max(e.version);
            }
        }
        view
    }
}

impl Attached {
    /// What the principal's record requires of `scope` exactly.
    #[inline]
    pub(crate) fn get(&self, scope: ScopeKey) -> Version {
        self.view
            .as_ref()
            .and_then(|v| v.entries.get(&scope).copied())
            .unwrap_or(Version::ZERO)
    }

    /// The horizon the principal's record holds for `store`: every scope of it must reflect it.
    #[inline]
    pub(crate) fn horizon(&self, store: StoreId) -> Option<Version> {
        self.view.as_ref()?.horizons.get(&store).copied()
    }

    /// Notes that the session now requires `version` of `scope`.
    pub(crate) fn raise(&mut self, scope: ScopeKey, version: Version) {
        if version > self.get(scope) {
            let slot = self.delta.entry(scope).or_insert(Version::ZERO);
            *slot = (*slot).max(version);
        }
    }

    /// A request of the session enters with `view` (`None`: the record could not be had): the
    /// session is attached to the record, or, when another of its requests is under way, the
    /// newer view holds (both become session-only if either could not read it).
    pub(crate) fn enter(
        slot: &mut Option<Box<Attached>>,
        view: Option<Arc<View>>,
    ) -> &mut Attached {
        match slot {
            Some(attached) => {
                attached.entered += 1;
                attached.view = match (&attached.view, view) {
                    (Some(_), Some(new)) => Some(new),
                    _ => None,
                };
                attached
            }
            None => slot.insert(Box::new(Attached {
                view,
                delta: HashMap::new(),
                entered: 1,
            })),
        }
    }

    /// A request of the session leaves: what the session raised beyond the record, to append,
    /// and the session is detached once no request of it is under way. `None` when it was not
    /// attached.
    pub(crate) fn leave(slot: &mut Option<Box<Attached>>) -> Option<HashMap<ScopeKey, Version>> {
        let attached = slot.as_mut()?;
        let delta = std::mem::take(&mut attached.delta);
        attached.entered = attached.entered.saturating_sub(1);
        if attached.entered == 0 {
            *slot = None;
        }
        Some(delta)
    }

    /// Notes that the session now requires `version` of every scope of `store` (a horizon).
    pub(crate) fn raise_horizon(&mut self, store: StoreId, version: Version) {
        self.raise(horizon_scope(store), version);
    }

    /// The record could not be had.
    #[inline]
    pub(crate) fn unavailable(&self) -> bool {
        self.view.is_none()
    }
}
