//! Revoking tokens by session id or by issue time, and the in-memory revocation list.

use super::now_secs;
use crate::session::SessionId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

/// Why a token was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revocation {
    /// The session id was revoked.
    Session,
    /// The token was issued before the revocation epoch (seconds since the Unix epoch).
    IssuedBefore {
        /// The epoch.
        epoch: u64,
    },
    /// Every session of the token's principal that started before the epoch (seconds since the
    /// Unix epoch) was revoked ([`InMemoryRevocationList::revoke_principal_before`]).
    Principal {
        /// The epoch.
        epoch: u64,
    },
    /// The shared revocation list could not be refreshed for longer than its bound and is
    /// configured to fail closed ([`crate::revocation::OutagePolicy::FailClosed`]): whether the
    /// token was revoked is unknown.
    Unverifiable,
}

/// Where revocations are kept: by session id, and an issued-before epoch that revokes every token
/// issued earlier ("log everyone out").
///
/// Checked on every verification, so an implementation should answer from memory; a shared
/// implementation (Redis, a table) can cache and refresh in the background.
///
/// # Example
///
/// A list that revokes nothing but the tokens issued before a fixed deploy time:
///
/// ```
/// use ryw::signing::{Revocation, RevocationList};
/// use ryw::SessionId;
///
/// #[derive(Debug)]
/// struct IssuedAfterDeploy(u64);
///
/// impl RevocationList for IssuedAfterDeploy {
///     fn check(&self, _session: SessionId, issued_at: u64) -> Option<Revocation> {
///         (issued_at < self.0).then_some(Revocation::IssuedBefore { epoch: self.0 })
///     }
/// }
/// assert!(IssuedAfterDeploy(100).check(SessionId::from_u128(1), 99).is_some());
/// ```
pub trait RevocationList: fmt::Debug + Send + Sync + 'static {
    /// Whether a token of `session` issued at `issued_at` (seconds since the Unix epoch) is
    /// revoked, and why.
    fn check(&self, session: SessionId, issued_at: u64) -> Option<Revocation>;

    /// Whether a token bound to a principal (`binding`: its fingerprint under the key that signed
    /// the token) of a session that started at `started_at` is revoked, and why. The default
    /// revokes nothing by principal.
    fn check_principal(&self, binding: PrincipalBinding, started_at: u64) -> Option<Revocation> {
        let _ = (binding, started_at);
        None
    }
}

/// A principal as a signed token names it: the id of the key that signed the token and the
/// principal's 8-byte keyed fingerprint under that key
/// ([`TokenAuthority::principal_bindings`](super::TokenAuthority::principal_bindings)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrincipalBinding {
    /// The signing key's id.
    pub key_id: u8,
    /// The fingerprint.
    pub fingerprint: [u8; 8],
}

/// The default [`RevocationList`]: a map of revoked session ids and an issued-before epoch, in
/// memory. An empty list costs one atomic load per verification.
///
/// Entries are kept until [`InMemoryRevocationList::forget_revoked_before`] drops them; once every
/// token a revoked session could hold has expired (the authority's TTL after the revocation), the
/// entry is no longer needed, because tokens are only re-issued from verified ones.
#[derive(Debug, Default)]
pub struct InMemoryRevocationList {
    sessions: RwLock<HashMap<SessionId, u64>>,
    len: AtomicUsize,
    issued_before: AtomicU64,
    /// Principals whose sessions started before an epoch are revoked.
    principals: RwLock<HashMap<PrincipalBinding, u64>>,
    principals_len: AtomicUsize,
}

impl InMemoryRevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes every token of `session`, now and later.
    pub fn revoke_session(&self, session: SessionId) {
        self.revoke_session_at(session, now_secs());
    }

    /// Revokes every token of `session`, recording the revocation at `now` (seconds since the Unix
    /// epoch) for [`InMemoryRevocationList::forget_revoked_before`].
    pub fn revoke_session_at(&self, session: SessionId, now: u64) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        map.insert(session, now);
        self.len.store(map.len(), Ordering::Release);
    }

    /// Lifts the revocation of `session`; returns whether it was revoked.
    pub fn restore_session(&self, session: SessionId) -> bool {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let removed = map.remove(&session).is_some();
        self.len.store(map.len(), Ordering::Release);
        removed
    }

    /// Revokes every token issued before `epoch` (seconds since the Unix epoch). The epoch only
    /// moves forward.
    pub fn revoke_issued_before(&self, epoch: u64) {
        self.issued_before.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Revokes every session of a principal that started before `epoch` (seconds since the Unix
    /// epoch): "log this user out everywhere". `bindings` name the principal under every key
    /// that may have signed its tokens
    /// ([`TokenAuthority::principal_bindings`](super::TokenAuthority::principal_bindings), or
    /// [`TokenAuthority::revoke_principal_before`](super::TokenAuthority::revoke_principal_before)
    /// for the authority's own list). A principal's epoch only moves forward. Sessions the
    /// principal starts afterwards are not affected, and nor is the principal's shared record
    /// ([`crate::principal`]): tokens of revoked sessions never reach it again.
    pub fn revoke_principal_before(&self, bindings: &[PrincipalBinding], epoch: u64) {
        let mut map = self.principals.write().unwrap_or_else(|e| e.into_inner());
        for b in bindings {
            let slot = map.entry(*b).or_insert(0);
            *slot = (*slot).max(epoch);
        }
        self.principals_len.store(map.len(), Ordering::Release);
    }

    /// Drops the session revocations recorded before `cutoff` (seconds since the Unix epoch);
    /// returns how many were dropped. Safe once `cutoff` is at least the token TTL in the past.
    pub fn forget_revoked_before(&self, cutoff: u64) -> usize {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, at| *at >= cutoff);
        self.len.store(map.len(), Ordering::Release);
        before - map.len()
    }

    /// Replaces the whole list (a refresh from a shared store): exactly `sessions` and
    /// `principals` revoked, and the epoch raised to at least `epoch`.
    pub(crate) fn replace(
        &self,
        sessions: HashMap<SessionId, u64>,
        epoch: u64,
        principals: HashMap<PrincipalBinding, u64>,
    ) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        *map = sessions;
        self.len.store(map.len(), Ordering::Release);
        self.issued_before.fetch_max(epoch, Ordering::AcqRel);
        drop(map);
        let mut map = self.principals.write().unwrap_or_else(|e| e.into_inner());
        *map = principals;
        self.principals_len.store(map.len(), Ordering::Release);
    }

    /// How many sessions are revoked.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when no session is revoked (an issued-before epoch may still be set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RevocationList for InMemoryRevocationList {
    fn check(&self, session: SessionId, issued_at: u64) -> Option<Revocation> {
        let epoch = self.issued_before.load(Ordering::Acquire);
        if issued_at < epoch {
            return Some(Revocation::IssuedBefore { epoch });
        }
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.contains_key(&session).then_some(Revocation::Session)
    }

    fn check_principal(&self, binding: PrincipalBinding, started_at: u64) -> Option<Revocation> {
        if self.principals_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.principals.read().unwrap_or_else(|e| e.into_inner());
        let epoch = *map.get(&binding)?;
        (started_at < epoch).then_some(Revocation::Principal { epoch })
    }
}
