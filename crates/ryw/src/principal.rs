//! One user, every device: the record a principal's sessions share.
//!
//! A session lives in its token. A user who writes from the phone and then reads from the laptop
//! holds two tokens, two sessions, and the laptop's has no fence on the phone's write. A
//! principal's record closes that gap: for an authenticated principal (a user id, a service
//! name), a record in a shared [`RecordStore`] keeps the pointwise maximum of what every session
//! bound to it wrote and read.
//!
//! - **Before a request** of a session bound to the principal, [`PrincipalRecords::enter`] reads
//!   the record strongly and attaches it to the session: every read of the request is fenced on
//!   the session's own requirements and on the record's, so it reflects what the principal's
//!   other sessions wrote before the request began, on any device and any instance.
//! - **After the request**, [`PrincipalRecords::leave`] appends, in one write, what the session
//!   raised beyond the record (its writes and what its reads saw), before the response goes out.
//! - **When the record cannot be had** (the store is down, the record is damaged, or it went
//!   back to an older version than this instance has seen), the session goes on with its own
//!   requirements and its reads are [`Visibility::SessionOnly`](crate::Visibility::SessionOnly),
//!   never plain `Guaranteed`. A failed append loses nothing of the write, which applied: it is
//!   reported ([`Advanced::Failed`]) and counted, and the session's next request appends it
//!   again (every request appends whatever its session holds beyond the record).
//!
//! - **A session that touched more scopes than its token keeps**, without a session record
//!   ([`crate::record`]) that holds them exactly, knows what it requires of the coarsened ones only
//!   by its store's horizon: it appends that horizon, and the principal's other sessions then
//!   require every read of that store to reflect it (on stores with per-item versions, the
//!   strong path). With session records, the exact entries are appended instead.
//! - **Requests of one [`Session`] may overlap**: the record stays attached until the last of them
//!   leaves; each appends what was raised until it left, and one that could not read the record
//!   makes the others session-only too.
//! - **A record older than this instance has seen** (deleted, restored from a backup) is refused,
//!   for the last 500,000 to 1,000,000 principals the instance served.
//!
//! The principal never appears in the store: the record is keyed by a 128-bit keyed fingerprint
//! (HMAC-SHA256 of the principal under a [`SigningKey`], in a domain of its own). Keep that key:
//! another key starts every principal's record afresh.
//!
//! Each request of a bound session costs one strong read of the record, and one append when it
//! raised anything: a cached record would miss what another device wrote since.
//!
//! # Example
//!
//! ```
//! use ryw::principal::{Advanced, Entered, PrincipalRecords};
//! use ryw::record::InMemoryRecordStore;
//! use ryw::signing::SigningKey;
//! use ryw::version::{ScopeKey, StoreId, Version};
//! use ryw::Session;
//! use std::sync::Arc;
//!
//! # tokio_test_block_on(async {
//! let store = Arc::new(InMemoryRecordStore::new());
//! let key = SigningKey::new(1, [7u8; 32]).unwrap();
//! let records = PrincipalRecords::new(store, key);
//! let post = ScopeKey::new(StoreId::new(1), b"posts/1");
//!
//! // The phone's session writes version 12 of the post during a request.
//! let phone = Session::new();
//! records.enter(b"alice", &phone).await;
//! phone.with_state(|s| s.advance(post, Version::new(12)));
//! assert!(matches!(records.leave(b"alice", &phone).await, Advanced::Appended(_)));
//!
//! // The laptop's session, with a token of its own, requires it from its next request on.
//! let laptop = Session::new();
//! assert!(matches!(records.enter(b"alice", &laptop).await, Entered::Fenced { .. }));
//! assert_eq!(laptop.with_state(|s| s.requirement(post).version), Version::new(12));
//! records.leave(b"alice", &laptop).await;
//!
//! // Another principal's session does not.
//! let mallory = Session::new();
//! records.enter(b"mallory", &mallory).await;
//! assert_eq!(mallory.with_state(|s| s.requirement(post).version), Version::ZERO);
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
use crate::record::{RecordError, RecordStore};
use crate::session::{Attached, Session, SessionId, View};
use crate::signing::SigningKey;
use crate::version::{Entry, ScopeKey, Version};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Principals whose latest record version one instance remembers (to refuse a record that went
/// back), per generation: the last 500,000 to 1,000,000 principals it served.
const SEEN_GENERATION: usize = 500_000;

/// What [`PrincipalRecords::enter`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entered {
    /// The record was read (version 0: the principal has none yet) and fences the request.
    Fenced {
        /// The record's version.
        version: u64,
    },
    /// The record store failed: the session's reads are
    /// [`SessionOnly`](crate::Visibility::SessionOnly).
    Unavailable,
    /// The record is damaged, or older than one this instance has seen: not trusted, and the
    /// session's reads are [`SessionOnly`](crate::Visibility::SessionOnly).
    Untrusted,
}

/// What [`PrincipalRecords::leave`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Advanced {
    /// The session raised nothing beyond the record (or was not entered).
    NotNeeded,
    /// What the session raised was appended; the record is at this version.
    Appended(u64),
    /// The append failed: the request's writes applied, but the principal's other sessions are
    /// not fenced on them until a later request of this session appends them.
    Failed,
}

/// What [`PrincipalRecords`] did, for telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrincipalStats {
    /// Records read (one per request of a bound session).
    pub loads: u64,
    /// Reads that failed: the request's reads were `SessionOnly`.
    pub load_failures: u64,
    /// Records damaged or gone back to an older version: not trusted.
    pub untrusted: u64,
    /// Appends of what a request raised.
    pub appends: u64,
    /// Appends that failed.
    pub append_failures: u64,
}

/// The 128-bit keyed fingerprint a principal's record is stored under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrincipalId(u128);

impl fmt::Debug for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrincipalId({:032x})", self.0)
    }
}

impl PrincipalId {
    /// The record store key: the fingerprint as a session id, which no session is given (session
    /// ids are random).
    fn record_key(self) -> SessionId {
        SessionId::from_u128(self.0)
    }
}

/// The latest record version seen per principal, in two generations (the older is dropped when
/// the younger fills).
#[derive(Default)]
struct Seen {
    young: HashMap<PrincipalId, u64>,
    old: HashMap<PrincipalId, u64>,
}

impl Seen {
    fn get(&self, id: PrincipalId) -> u64 {
        self.young
            .get(&id)
            .or_else(|| self.old.get(&id))
            .copied()
            .unwrap_or(0)
    }

    fn raise(&mut self, id: PrincipalId, version: u64) {
        let known = self.get(id);
        if self.young.len() >= SEEN_GENERATION && !self.young.contains_key(&id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id, known.max(version));
    }
}

/// One instance's access to principals' records, over a [`RecordStore`] every instance shares;
/// see the [module docs](self).
pub struct PrincipalRecords {
    store: Arc<dyn RecordStore>,
    key: SigningKey,
    /// The latest record version seen per principal: a record older than that is refused.
    seen: Mutex<Seen>,
    loads: AtomicU64,
    load_failures: AtomicU64,
    untrusted: AtomicU64,
    appends: AtomicU64,
    append_failures: AtomicU64,
}

impl fmt::Debug for PrincipalRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalRecords")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PrincipalRecords {
    /// Principals' records in `store`, keyed by fingerprints under `key` (keep it: another key
    /// starts every record afresh). The store may be the one that keeps sessions' records.
    pub fn new(store: Arc<dyn RecordStore>, key: SigningKey) -> Self {
        PrincipalRecords {
            store,
            key,
            seen: Mutex::new(Seen::default()),
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            untrusted: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
        }
    }

    /// The fingerprint `principal`'s record is stored under.
    pub fn id_of(&self, principal: &[u8]) -> PrincipalId {
        PrincipalId(self.key.record_fingerprint(principal))
    }

    /// What this instance did so far.
    pub fn stats(&self) -> PrincipalStats {
        PrincipalStats {
            loads: self.loads.load(Ordering::Relaxed),
            load_failures: self.load_failures.load(Ordering::Relaxed),
            untrusted: self.untrusted.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            append_failures: self.append_failures.load(Ordering::Relaxed),
        }
    }

    /// Before a request of `session`, which is bound to `principal`: reads the principal's
    /// record strongly and fences the session's reads on it until [`PrincipalRecords::leave`].
    /// When the record cannot be had, the session's reads are
    /// [`SessionOnly`](crate::Visibility::SessionOnly).
    pub async fn enter(&self, principal: &[u8], session: &Session) -> Entered {
        let id = self.id_of(principal);
        self.loads.fetch_add(1, Ordering::Relaxed);
        // What this instance had seen when the read began: an append of its own that lands
        // meanwhile does not make the record read look older than it is.
        let floor = lock(&self.seen).get(id);
        let (view, entered) = match self.store.load(id.record_key()).await {
            Ok(record) => {
                let version = record.as_ref().map_or(0, |r| r.version);
                if version < floor {
                    self.untrusted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "ryw::principal", "a principal's record is older than one this instance has seen: not trusted");
                    (None, Entered::Untrusted)
                } else {
                    lock(&self.seen).raise(id, version);
                    (
                        Some(Arc::new(View::of(
                            record.map(|r| r.entries).unwrap_or_default(),
                        ))),
                        Entered::Fenced { version },
                    )
                }
            }
            Err(RecordError::Damaged(why)) => {
                self.untrusted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::principal", %why, "a principal's record is damaged: not trusted");
                (None, Entered::Untrusted)
            }
            Err(e) => {
                self.load_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::principal", error = %e, "a principal's record could not be read");
                (None, Entered::Unavailable)
            }
        };
        session.with_state(|state| {
            let held: Vec<(ScopeKey, Version)> = state.exact_entries().collect();
            let horizons = state.uncovered_horizons();
            let attached = Attached::enter(state.principal_mut(), view);
            // What the session holds beyond the record (an append that failed, a session that
            // logged in with what it did before) goes with this request's append: its exact
            // entries, and the horizons of stores whose coarsened entries it does not hold
            // exactly (every scope of such a store must then reflect the horizon).
            for (scope, version) in held {
                attached.raise(scope, version);
            }
            for h in horizons {
                attached.raise_horizon(h.store, h.version);
            }
        });
        entered
    }

    /// After a request of `session` (entered with [`PrincipalRecords::enter`]), before its
    /// response goes out: appends what the session raised beyond the principal's record, in one
    /// write, and ends the fence on the record once no request of the session is under way.
    pub async fn leave(&self, principal: &[u8], session: &Session) -> Advanced {
        let Some(delta) = session.with_state(|s| Attached::leave(s.principal_mut())) else {
            return Advanced::NotNeeded;
        };
        if delta.is_empty() {
            return Advanced::NotNeeded;
        }
        let mut batch: Vec<Entry> = delta
            .iter()
            .map(|(scope, version)| Entry {
                scope: *scope,
                version: *version,
            })
            .collect();
        batch.sort_unstable_by_key(|e| e.scope);
        let id = self.id_of(principal);
        match self.store.append(id.record_key(), &batch).await {
            Ok(version) => {
                self.appends.fetch_add(1, Ordering::Relaxed);
                lock(&self.seen).raise(id, version);
                Advanced::Appended(version)
            }
            Err(e) => {
                self.append_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "ryw::principal", error = %e, "a principal's record could not be advanced");
                // A request of the session still under way appends it with its own.
                session.with_state(|s| {
                    if let Some(attached) = s.principal_mut().as_mut() {
                        for (scope, version) in delta {
                            attached.raise(scope, version);
                        }
                    }
                });
                Advanced::Failed
            }
        }
    }
}
