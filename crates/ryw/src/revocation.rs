//! Revoking tokens: by session id, by the time a session started ("log everyone out"), and by
//! principal ("log this user out everywhere").
//!
//! A [`TokenAuthority`](crate::signing::TokenAuthority) asks its [`RevocationList`] on every
//! verification. [`InMemoryRevocationList`], the default, lives in one process.
//!
//! [`SharedRevocationList`] is a [`RevocationList`] shared by every app instance through a store
//! the application already runs: it answers every verification from memory and keeps that
//! memory in step with a [`RevocationBackend`]: the application's own DynamoDB table
//! (`ryw_dynamodb::DynamoRevocations`) or MongoDB collection (`ryw_mongodb::MongoRevocations`),
//! or anything else that implements the trait. A revocation is written to the backend before
//! [`SharedRevocationList::revoke_session`] returns, so it is durable and visible to every
//! instance at its next refresh; the instance that revoked refuses the session at once.
//!
//! **Propagation delay.** Another instance refuses a revoked session at most
//! `refresh_every` plus one backend round trip after the revocation was recorded, as long as its
//! refresher ([`SharedRevocationList::run_refresher`]) runs.
//!
//! **Outage.** When refreshing fails, the list keeps its last state. Once the last successful
//! refresh is older than `max_staleness`, [`OutagePolicy`] decides: `FailClosed` refuses every
//! token ([`Revocation::Unverifiable`]) until a refresh succeeds, `FailOpen` (the default) goes
//! on answering from the last state, so an outage of the revocation store is not an outage of the
//! application, at the cost of not seeing revocations made meanwhile.
//!
//! # Example
//!
//! ```
//! use ryw::revocation::{
//!     MemoryBackend, OutagePolicy, Revocation, RevocationList, SharedRevocationList,
//! };
//! use ryw::SessionId;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ryw::revocation::BackendError> {
//! let backend = Arc::new(MemoryBackend::default()); // stands for a shared table
//! let a = SharedRevocationList::new(backend.clone());
//! let b = SharedRevocationList::new(backend)
//!     .refresh_every(Duration::from_secs(2))
//!     .on_outage(OutagePolicy::FailClosed, Duration::from_secs(30));
//!
//! let alice = SessionId::random();
//! a.revoke_session(alice).await?;
//! assert_eq!(a.check(alice, 0), Some(Revocation::Session)); // at once where it was revoked
//! assert_eq!(b.check(alice, 0), None); // b has not refreshed yet
//! b.refresh().await?;
//! assert_eq!(b.check(alice, 0), Some(Revocation::Session));
//! # Ok(())
//! # }
//! ```

use crate::clock::now_secs;
use crate::clock::{Clock, SystemClock};
use crate::locks::{lock, read, write};
use crate::session::SessionId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
    /// configured to fail closed ([`OutagePolicy::FailClosed`]): whether the
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
/// use ryw::revocation::{Revocation, RevocationList};
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
/// ([`TokenAuthority::principal_bindings`](crate::signing::TokenAuthority::principal_bindings)).
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
        let mut map = write(&self.sessions);
        map.insert(session, now);
        self.len.store(map.len(), Ordering::Release);
    }

    /// Lifts the revocation of `session`; returns whether it was revoked.
    pub fn restore_session(&self, session: SessionId) -> bool {
        let mut map = write(&self.sessions);
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
    /// ([`TokenAuthority::principal_bindings`](crate::signing::TokenAuthority::principal_bindings), or
    /// [`TokenAuthority::revoke_principal_before`](crate::signing::TokenAuthority::revoke_principal_before)
    /// for the authority's own list). A principal's epoch only moves forward. Sessions the
    /// principal starts afterwards are not affected, and nor is the principal's shared record
    /// ([`crate::principal`]): tokens of revoked sessions never reach it again.
    pub fn revoke_principal_before(&self, bindings: &[PrincipalBinding], epoch: u64) {
        let mut map = write(&self.principals);
        for b in bindings {
            let slot = map.entry(*b).or_insert(0);
            *slot = (*slot).max(epoch);
        }
        self.principals_len.store(map.len(), Ordering::Release);
    }

    /// Drops the session revocations recorded before `cutoff` (seconds since the Unix epoch);
    /// returns how many were dropped. Safe once `cutoff` is at least the token TTL in the past.
    pub fn forget_revoked_before(&self, cutoff: u64) -> usize {
        let mut map = write(&self.sessions);
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
        let mut map = write(&self.sessions);
        *map = sessions;
        self.len.store(map.len(), Ordering::Release);
        self.issued_before.fetch_max(epoch, Ordering::AcqRel);
        drop(map);
        let mut map = write(&self.principals);
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
        let map = read(&self.sessions);
        map.contains_key(&session).then_some(Revocation::Session)
    }

    fn check_principal(&self, binding: PrincipalBinding, started_at: u64) -> Option<Revocation> {
        if self.principals_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = read(&self.principals);
        let epoch = *map.get(&binding)?;
        (started_at < epoch).then_some(Revocation::Principal { epoch })
    }
}

/// One revocation as a backend keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationEntry {
    /// Every token of `session`; recorded at `at` (seconds since the Unix epoch).
    Session {
        /// The session.
        session: SessionId,
        /// When it was revoked.
        at: u64,
    },
    /// Every session started before `epoch` (seconds since the Unix epoch).
    StartedBefore {
        /// The epoch.
        epoch: u64,
    },
    /// Every session of a principal (as tokens signed by one key name it) started before
    /// `epoch`.
    Principal {
        /// The principal under one signing key.
        binding: PrincipalBinding,
        /// The epoch.
        epoch: u64,
    },
}

impl RevocationEntry {
    /// The key a backend stores the entry under: `session#<32 hex>`, or `epoch` (one entry).
    pub fn key(&self) -> String {
        match self {
            RevocationEntry::Session { session, .. } => format!("session#{session}"),
            RevocationEntry::StartedBefore { .. } => "epoch".to_owned(),
            RevocationEntry::Principal { binding, .. } => {
                let mut key = format!("principal#{:02x}", binding.key_id);
                for b in binding.fingerprint {
                    key.push_str(&format!("{b:02x}"));
                }
                key
            }
        }
    }

    /// The time the backend stores with the entry: when the session was revoked, or the epoch.
    pub fn at(&self) -> u64 {
        match *self {
            RevocationEntry::Session { at, .. } => at,
            RevocationEntry::StartedBefore { epoch } | RevocationEntry::Principal { epoch, .. } => {
                epoch
            }
        }
    }

    /// The entry a backend stored under `key` with the time `at` ([`RevocationEntry::key`],
    /// [`RevocationEntry::at`]); `None` for a key that is neither.
    pub fn from_key(key: &str, at: u64) -> Option<Self> {
        if key == "epoch" {
            return Some(RevocationEntry::StartedBefore { epoch: at });
        }
        if let Some(hex) = key.strip_prefix("principal#") {
            if hex.len() != 18 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let byte = |i: usize| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok();
            let mut fingerprint = [0u8; 8];
            for (i, b) in fingerprint.iter_mut().enumerate() {
                *b = byte(i + 1)?;
            }
            return Some(RevocationEntry::Principal {
                binding: PrincipalBinding {
                    key_id: byte(0)?,
                    fingerprint,
                },
                epoch: at,
            });
        }
        let hex = key.strip_prefix("session#")?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bits = u128::from_str_radix(hex, 16).ok()?;
        Some(RevocationEntry::Session {
            session: SessionId::from_u128(bits),
            at,
        })
    }
}

/// A backend failed (unreachable, refused, malformed data): its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("revocation backend: {0}")]
pub struct BackendError(pub String);

/// A boxed future of a backend call.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// Where revocations are shared: a store every instance reaches.
pub trait RevocationBackend: fmt::Debug + Send + Sync + 'static {
    /// Records `entry` durably (an epoch only moves forward). `expires_at`: when the entry no
    /// longer matters (seconds since the Unix epoch; every token it could refuse has expired),
    /// for the store's own expiry (a TTL attribute, a TTL index).
    fn record(&self, entry: RevocationEntry, expires_at: u64) -> BackendFuture<'_, ()>;

    /// Every entry still in force at `now` (seconds since the Unix epoch).
    fn load(&self, now: u64) -> BackendFuture<'_, Vec<RevocationEntry>>;
}

/// What [`SharedRevocationList`] answers once it could not refresh for longer than its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Go on answering from the last state (the default).
    #[default]
    FailOpen,
    /// Refuse every token as [`Revocation::Unverifiable`] until a refresh succeeds.
    FailClosed,
}

/// A [`RevocationList`] shared through a [`RevocationBackend`]; see the [module docs](self).
pub struct SharedRevocationList {
    local: InMemoryRevocationList,
    backend: Arc<dyn RevocationBackend>,
    clock: Arc<dyn Clock>,
    refresh_every: Duration,
    max_staleness: Duration,
    policy: OutagePolicy,
    token_ttl: Duration,
    leeway: Duration,
    /// Microseconds (of `clock`) of the last successful refresh; 0 before the first.
    refreshed_at: AtomicU64,
    created_at: u64,
    /// Revocations this instance recorded since its last refresh began (kept across it).
    own: Mutex<Vec<RevocationEntry>>,
}

impl fmt::Debug for SharedRevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRevocationList")
            .field("backend", &self.backend)
            .field("refresh_every", &self.refresh_every)
            .field("max_staleness", &self.max_staleness)
            .field("policy", &self.policy)
            .field("revoked_sessions", &self.local.len())
            .finish()
    }
}

impl SharedRevocationList {
    /// A list over `backend`, with the defaults: refreshed every 5 s, failing open after 60 s
    /// without a refresh, entries kept for tokens of 7 days with 60 s of leeway, the system
    /// clock. Configured with consuming setters, before it is shared. It starts empty and
    /// unrefreshed: call [`SharedRevocationList::refresh`] (or run the refresher) before serving.
    pub fn new(backend: Arc<dyn RevocationBackend>) -> Self {
        let clock = SystemClock;
        SharedRevocationList {
            local: InMemoryRevocationList::new(),
            backend,
            created_at: clock.now_micros(),
            clock: Arc::new(clock),
            refresh_every: Duration::from_secs(5),
            max_staleness: Duration::from_secs(60),
            policy: OutagePolicy::FailOpen,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(60),
            refreshed_at: AtomicU64::new(0),
            own: Mutex::new(Vec::new()),
        }
    }

    /// How often the refresher reloads the backend (default 5 s): the propagation delay.
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// What to answer once no refresh succeeded for `max_staleness` (default: fail open, 60 s).
    pub fn on_outage(mut self, policy: OutagePolicy, max_staleness: Duration) -> Self {
        self.policy = policy;
        self.max_staleness = max_staleness;
        self
    }

    /// The authority's token TTL and clock leeway (default 7 days and 60 s): an entry is kept
    /// in the backend until no token it could refuse can still be valid anywhere: the TTL plus
    /// the leeway plus the staleness bound and the refresh interval (a lagging instance may have
    /// re-issued a token of the session until it saw the entry).
    pub fn token_ttl(mut self, ttl: Duration, leeway: Duration) -> Self {
        self.token_ttl = ttl;
        self.leeway = leeway;
        self
    }

    /// The time source (default the system clock); the staleness bound counts from its time
    /// now.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.created_at = clock.now_micros();
        self.clock = Arc::new(clock);
        self
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_micros() / 1_000_000
    }

    /// How long after it was made an entry may still refuse a valid token.
    fn keep(&self) -> u64 {
        (self.token_ttl + self.leeway + self.max_staleness + self.refresh_every).as_secs()
    }

    /// Revokes every token of `session`, everywhere: recorded in the backend (an error if it
    /// cannot be), then refused here at once and by every instance after its next refresh.
    pub async fn revoke_session(&self, session: SessionId) -> Result<(), BackendError> {
        let at = self.now_secs();
        let entry = RevocationEntry::Session { session, at };
        self.backend
            .record(entry, at.saturating_add(self.keep()))
            .await?;
        self.apply(entry);
        Ok(())
    }

    /// Revokes every session started before `epoch` (seconds since the Unix epoch), everywhere.
    pub async fn revoke_started_before(&self, epoch: u64) -> Result<(), BackendError> {
        let entry = RevocationEntry::StartedBefore { epoch };
        let expires = epoch.max(self.now_secs()).saturating_add(self.keep());
        self.backend.record(entry, expires).await?;
        self.apply(entry);
        Ok(())
    }

    /// Revokes every session of a principal started before `epoch`, everywhere: `bindings`
    /// name it under each signing key
    /// ([`TokenAuthority::principal_bindings`](crate::signing::TokenAuthority::principal_bindings)).
    pub async fn revoke_principal_before(
        &self,
        bindings: &[PrincipalBinding],
        epoch: u64,
    ) -> Result<(), BackendError> {
        let expires = epoch.max(self.now_secs()).saturating_add(self.keep());
        for &binding in bindings {
            let entry = RevocationEntry::Principal { binding, epoch };
            self.backend.record(entry, expires).await?;
            self.apply(entry);
        }
        Ok(())
    }

    fn apply(&self, entry: RevocationEntry) {
        // Kept for the next refresh first, so a refresh running now cannot wipe it.
        lock(&self.own).push(entry);
        match entry {
            RevocationEntry::Session { session, at } => self.local.revoke_session_at(session, at),
            RevocationEntry::StartedBefore { epoch } => self.local.revoke_issued_before(epoch),
            RevocationEntry::Principal { binding, epoch } => {
                self.local.revoke_principal_before(&[binding], epoch)
            }
        }
    }

    /// Reloads every entry from the backend. On failure the list keeps its last state (see
    /// [`OutagePolicy`]).
    pub async fn refresh(&self) -> Result<(), BackendError> {
        let started = self.clock.now_micros();
        let pending: Vec<RevocationEntry> = lock(&self.own).clone();
        let entries = self.backend.load(self.now_secs()).await.inspect_err(|e| {
            tracing::warn!(target: "ryw::revocation", error = %e, "revocation refresh failed");
        })?;
        let mut sessions = HashMap::new();
        let mut principals = HashMap::new();
        let mut epoch = 0;
        // What this instance revoked is kept even if the backend's read does not show it yet
        // (including what it revoked while the read was on its way).
        let mut own = lock(&self.own);
        for entry in entries.iter().chain(own.iter()) {
            match *entry {
                RevocationEntry::Session { session, at } => {
                    sessions.insert(session, at);
                }
                RevocationEntry::StartedBefore { epoch: e } => epoch = epoch.max(e),
                RevocationEntry::Principal { binding, epoch: e } => {
                    let slot = principals.entry(binding).or_insert(0);
                    *slot = e.max(*slot);
                }
            }
        }
        self.local.replace(sessions, epoch, principals);
        own.retain(|e| !pending.contains(e));
        drop(own);
        self.refreshed_at
            .fetch_max(started.max(1), Ordering::AcqRel);
        Ok(())
    }

    /// Refreshes every `refresh_every`, forever: spawn it on the application's runtime
    /// (`tokio::spawn(list.clone().run_refresher())`). Failures are logged and retried at the next
    /// tick.
    pub async fn run_refresher(self: Arc<Self>) {
        loop {
            let _ = self.refresh().await;
            tokio::time::sleep(self.refresh_every).await;
        }
    }

    /// True when no refresh succeeded within `max_staleness` (counting from creation).
    pub fn is_stale(&self) -> bool {
        let last = match self.refreshed_at.load(Ordering::Acquire) {
            0 => self.created_at,
            t => t,
        };
        self.clock.now_micros().saturating_sub(last) > self.max_staleness.as_micros() as u64
    }
}

impl RevocationList for SharedRevocationList {
    fn check(&self, session: SessionId, started_at: u64) -> Option<Revocation> {
        if self.policy == OutagePolicy::FailClosed && self.is_stale() {
            return Some(Revocation::Unverifiable);
        }
        self.local.check(session, started_at)
    }

    fn check_principal(&self, binding: PrincipalBinding, started_at: u64) -> Option<Revocation> {
        if self.policy == OutagePolicy::FailClosed && self.is_stale() {
            return Some(Revocation::Unverifiable);
        }
        self.local.check_principal(binding, started_at)
    }
}

/// A [`RevocationBackend`] in this process's memory: for tests and single-instance deployments
/// (it shares nothing across processes).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    entries: Mutex<Vec<(RevocationEntry, u64)>>,
}

impl RevocationBackend for MemoryBackend {
    fn record(&self, entry: RevocationEntry, expires_at: u64) -> BackendFuture<'_, ()> {
        lock(&self.entries).push((entry, expires_at));
        Box::pin(async { Ok(()) })
    }

    fn load(&self, now: u64) -> BackendFuture<'_, Vec<RevocationEntry>> {
        let entries = lock(&self.entries)
            .iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(e, _)| *e)
            .collect();
        Box::pin(async move { Ok(entries) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default)]
    struct ManualClock(Arc<AtomicU64>);

    impl Clock for ManualClock {
        fn now_micros(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl ManualClock {
        fn set_secs(&self, secs: u64) {
            self.0.store(secs * 1_000_000, Ordering::Relaxed);
        }
    }

    /// Fails every call while `down` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryBackend,
        down: std::sync::atomic::AtomicBool,
    }

    impl RevocationBackend for Flaky {
        fn record(&self, entry: RevocationEntry, expires_at: u64) -> BackendFuture<'_, ()> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(async { Err(BackendError("connection refused".into())) });
            }
            self.inner.record(entry, expires_at)
        }
        fn load(&self, now: u64) -> BackendFuture<'_, Vec<RevocationEntry>> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(async { Err(BackendError("connection refused".into())) });
            }
            self.inner.load(now)
        }
    }

    fn list(
        backend: Arc<Flaky>,
        clock: &ManualClock,
        policy: OutagePolicy,
    ) -> SharedRevocationList {
        SharedRevocationList::new(backend)
            .clock(clock.clone())
            .on_outage(policy, Duration::from_secs(30))
            .token_ttl(Duration::from_secs(3600), Duration::from_secs(10))
            .refresh_every(Duration::from_secs(5))
    }

    /// Two instances' lists over one (flaky) backend, with the clock at 1,000 s.
    fn two_instances(
        a: OutagePolicy,
        b: OutagePolicy,
    ) -> (
        ManualClock,
        Arc<Flaky>,
        SharedRevocationList,
        SharedRevocationList,
    ) {
        let clock = ManualClock::default();
        clock.set_secs(1_000);
        let backend = Arc::new(Flaky::default());
        let a = list(backend.clone(), &clock, a);
        let b = list(backend.clone(), &clock, b);
        (clock, backend, a, b)
    }

    #[test]
    fn entries_round_trip_through_their_key_and_odd_keys_are_skipped() {
        for e in [
            RevocationEntry::Session {
                session: SessionId::random(),
                at: 7,
            },
            RevocationEntry::StartedBefore { epoch: 9 },
            RevocationEntry::Principal {
                binding: PrincipalBinding {
                    key_id: 200,
                    fingerprint: [1, 2, 3, 4, 250, 6, 7, 8],
                },
                epoch: 11,
            },
        ] {
            assert_eq!(RevocationEntry::from_key(&e.key(), e.at()), Some(e));
        }
        for odd in [
            "",
            "session#",
            "session#xyz",
            "session#00",
            "epochs",
            "session#+0000000000000000000000000000000",
            "principal#",
            "principal#01020304050607080",
            "principal#0102030405060708090a",
            "principal#zz0203040506070809",
        ] {
            assert_eq!(RevocationEntry::from_key(odd, 1), None, "{odd:?}");
        }
    }

    #[tokio::test]
    async fn revocations_reach_other_instances_at_their_refresh() {
        let (clock, _, a, b) = two_instances(OutagePolicy::FailOpen, OutagePolicy::FailOpen);
        let s = SessionId::from_u128(7);
        a.revoke_session(s).await.unwrap();
        assert_eq!(a.check(s, 900), Some(Revocation::Session));
        assert_eq!(b.check(s, 900), None);
        b.refresh().await.unwrap();
        assert_eq!(b.check(s, 900), Some(Revocation::Session));
        a.revoke_started_before(950).await.unwrap();
        b.refresh().await.unwrap();
        assert!(b.check(SessionId::from_u128(8), 949).is_some());
        assert!(b.check(SessionId::from_u128(8), 950).is_none());
        // A refresh of `a` keeps what it revoked, and entries expire with the token TTL.
        a.refresh().await.unwrap();
        assert_eq!(a.check(s, 960), Some(Revocation::Session));
        // Kept for the TTL plus the leeway, the staleness bound and the refresh interval.
        clock.set_secs(1_000 + 3_600 + 10 + 30 + 5 - 1);
        b.refresh().await.unwrap();
        assert_eq!(
            b.check(s, 960),
            Some(Revocation::Session),
            "a token may still be valid"
        );
        clock.set_secs(1_000 + 3_600 + 10 + 30 + 5 + 1);
        b.refresh().await.unwrap();
        assert_eq!(b.check(s, 960), None, "expired from the backend");
    }

    #[tokio::test]
    async fn a_principal_revoked_on_one_instance_is_revoked_on_the_others_at_their_refresh() {
        let (_, _, a, b) = two_instances(OutagePolicy::FailOpen, OutagePolicy::FailOpen);
        let alice = PrincipalBinding {
            key_id: 1,
            fingerprint: [9; 8],
        };
        let bob = PrincipalBinding {
            key_id: 1,
            fingerprint: [8; 8],
        };
        a.revoke_principal_before(&[alice], 990).await.unwrap();
        assert!(a.check_principal(alice, 980).is_some());
        assert!(b.check_principal(alice, 980).is_none());
        b.refresh().await.unwrap();
        assert_eq!(
            b.check_principal(alice, 980),
            Some(Revocation::Principal { epoch: 990 })
        );
        assert!(
            b.check_principal(alice, 990).is_none(),
            "started at the epoch"
        );
        assert!(b.check_principal(bob, 980).is_none());
        a.refresh().await.unwrap();
        assert!(a.check_principal(alice, 980).is_some());
    }

    #[tokio::test]
    async fn an_outage_fails_open_or_closed_as_configured() {
        let (clock, backend, open, closed) =
            two_instances(OutagePolicy::FailOpen, OutagePolicy::FailClosed);
        let s = SessionId::from_u128(9);
        open.refresh().await.unwrap();
        closed.refresh().await.unwrap();
        backend.down.store(true, Ordering::Relaxed);
        // A revocation that cannot be recorded is an error, and nothing is half done.
        assert!(open.revoke_session(s).await.is_err());
        assert_eq!(open.check(s, 900), None);
        // Within the bound both answer from memory.
        clock.set_secs(1_030);
        assert!(open.refresh().await.is_err() && closed.refresh().await.is_err());
        assert_eq!(closed.check(s, 900), None);
        // Past it: closed refuses everything, open goes on.
        clock.set_secs(1_031);
        assert_eq!(closed.check(s, 900), Some(Revocation::Unverifiable));
        assert_eq!(open.check(s, 900), None);
        // Back up: one refresh and closed serves again.
        backend.down.store(false, Ordering::Relaxed);
        closed.refresh().await.unwrap();
        assert_eq!(closed.check(s, 900), None);
    }
}
