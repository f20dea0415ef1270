//! Tokens that can be handed to clients: HMAC-SHA256 signatures with key rotation, expiry,
//! revocation and optional binding to an authenticated principal.
//!
//! A [`TokenAuthority`] issues and verifies tokens. It signs with the current key of its
//! [`KeyRing`] and verifies with the current key and the previous ones, so a rotation logs nobody
//! out: tokens signed with the old key stay valid until that key is retired (or they expire).
//! Every token it issues carries its issue and expiry times; a token can be revoked by session id
//! or by an issued-before epoch through a [`RevocationList`] ([`InMemoryRevocationList`] by
//! default); and a token issued to a principal (a user id, a service name) names it by a keyed
//! fingerprint, so the same token presented by another principal is rejected.
//!
//! Verification decodes the token (bounded, never panics: see [`crate::token`]), then checks the
//! signature in constant time, then the expiry, the revocation list and the principal. Each way a
//! token can be bad is its own [`VerifyError`] variant, with a stable [`VerifyError::code`] for
//! HTTP bodies and metrics. Keys and token contents are never logged.
//!
//! What a signature protects: the token is freshness metadata, not a credential. A forged token
//! could make a client read stale data (versions lowered) or force every read onto the strong path
//! (versions raised); signing closes both, and binding stops one user's token from being replayed by
//! another.
//!
//! # Example
//!
//! ```
//! use ryw::signing::{KeyRing, SigningKey, TokenAuthority, VerifyError};
//! use ryw::{SessionId, SessionState};
//! use std::time::Duration;
//!
//! let authority = TokenAuthority::builder(KeyRing::new(SigningKey::new(1, [7u8; 32])?))
//!     .ttl(Duration::from_secs(24 * 3600))
//!     .build();
//! let state = SessionState::new(SessionId::derive(b"user:7"));
//!
//! // Issued to user 7: valid for user 7 only.
//! let token = authority.issue(&state, Some(b"user:7"))?;
//! assert_eq!(authority.verify(&token, Some(b"user:7"))?.state().id(), state.id());
//! assert!(matches!(authority.verify(&token, Some(b"user:8")), Err(VerifyError::WrongPrincipal)));
//!
//! // Rotation: new tokens are signed with key 2, old ones still verify until key 1 is retired.
//! authority.rotate(SigningKey::new(2, [9u8; 32])?)?;
//! assert!(authority.verify(&token, Some(b"user:7")).is_ok());
//! authority.retire(1);
//! assert!(matches!(
//!     authority.verify(&token, Some(b"user:7")),
//!     Err(VerifyError::UnknownKey { key_id: 1 })
//! ));
//!
//! // Revocation by session id.
//! let token = authority.issue(&state, None)?;
//! let revocations = authority.revocations().expect("built with the default list");
//! revocations.revoke_session(state.id());
//! assert!(authority.verify(&token, None).unwrap_err().is_revoked());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;

use crate::clock::{Clock, SystemClock};
use crate::session::{SessionId, SessionState};
use crate::token::{
    decode_base64, encode_base64, write_body_masked, ScopeMask, SessionToken, TokenError,
    BINDING_LEN, MAX_BYTES, SIGNATURE_LEN,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret a [`SigningKey`] accepts (bytes).
pub const MIN_KEY_LEN: usize = 32;

/// The most previous keys a [`KeyRing`] keeps for verification.
pub const MAX_PREVIOUS_KEYS: usize = 4;

/// Domain separation for principal fingerprints, so a fingerprint is never a valid token tag.
const BINDING_DOMAIN: &[u8] = b"ryw/principal/v1\0";

/// Why a key or a key ring was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret is shorter than [`MIN_KEY_LEN`] bytes.
    #[error("signing key {key_id} is {len} bytes, shorter than the {MIN_KEY_LEN} required")]
    TooShort {
        /// The key's id.
        key_id: u8,
        /// The length given.
        len: usize,
    },
    /// A key with this id is already in the ring.
    #[error("key id {0} is already in the key ring")]
    DuplicateId(u8),
}

/// An HMAC-SHA256 key with a one-byte id, written into every token it signs.
///
/// The secret is absorbed into the HMAC state at construction and not kept otherwise; `Debug`
/// shows the id only.
#[derive(Clone)]
pub struct SigningKey {
    id: u8,
    mac: HmacSha256,
    scopes: ScopeMask,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A key from a secret of at least [`MIN_KEY_LEN`] random bytes.
    pub fn new(id: u8, secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                key_id: id,
                len: secret.len(),
            });
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::TooShort {
            key_id: id,
            len: secret.len(),
        })?;
        // The scope mask's key, derived from the secret in its own domain.
        let mut derive = mac.clone();
        derive.update(b"ryw:scope-mask");
        let k = derive.finalize().into_bytes();
        let word = |i: usize| u64::from_le_bytes(k[i..i + 8].try_into().expect("8 bytes"));
        let scopes = ScopeMask::new(word(0), word(8));
        Ok(SigningKey { id, mac, scopes })
    }

    /// A key with a fresh random secret (from the operating system), for tests and single-process
    /// deployments.
    pub fn generate(id: u8) -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        SigningKey::new(id, secret).expect("32 bytes is long enough")
    }

    /// The key's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The MAC state over a token body and the key id that follows it.
    fn mac_of(&self, body: &[u8], key_id: u8) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.update(&[key_id]);
        mac
    }

    fn tag(&self, body: &[u8], key_id: u8) -> [u8; 32] {
        self.mac_of(body, key_id).finalize().into_bytes().into()
    }

    /// Constant-time comparison.
    fn check(&self, body: &[u8], key_id: u8, tag: &[u8; 32]) -> bool {
        self.mac_of(body, key_id).verify_slice(tag).is_ok()
    }

    fn binding(&self, principal: &[u8]) -> [u8; BINDING_LEN] {
        let mut mac = self.mac.clone();
        mac.update(BINDING_DOMAIN);
        mac.update(principal);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; BINDING_LEN];
        out.copy_from_slice(&full[..BINDING_LEN]);
        out
    }
}

/// The keys a [`TokenAuthority`] signs and verifies with: one current key and up to
/// [`MAX_PREVIOUS_KEYS`] previous ones, which verify but never sign.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: SigningKey,
    previous: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring with one key.
    pub fn new(current: SigningKey) -> Self {
        KeyRing {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds a key that verifies but does not sign (a key another instance still signs with, or
    /// the one rotated out before a restart).
    pub fn with_previous(mut self, key: SigningKey) -> Result<Self, KeyError> {
        if self.find(key.id).is_some() {
            return Err(KeyError::DuplicateId(key.id));
        }
        self.previous.insert(0, key);
        self.previous.truncate(MAX_PREVIOUS_KEYS);
        Ok(self)
    }

    /// Makes `key` the signing key; the current key moves to the previous keys (the oldest
    /// previous key beyond [`MAX_PREVIOUS_KEYS`] is dropped).
    pub fn rotate(&mut self, key: SigningKey) -> Result<(), KeyError> {
        if self.find(key.id).is_some() {
            return Err(KeyError::DuplicateId(key.id));
        }
        let old = std::mem::replace(&mut self.current, key);
        self.previous.insert(0, old);
        self.previous.truncate(MAX_PREVIOUS_KEYS);
        Ok(())
    }

    /// Removes a previous key: tokens it signed no longer verify. The current key cannot be
    /// retired (rotate first); returns whether a key was removed.
    pub fn retire(&mut self, key_id: u8) -> bool {
        let before = self.previous.len();
        self.previous.retain(|k| k.id != key_id);
        self.previous.len() != before
    }

    /// The id of the signing key.
    pub fn current_id(&self) -> u8 {
        self.current.id
    }

    /// The ids of every key that verifies, the current one first.
    pub fn ids(&self) -> Vec<u8> {
        std::iter::once(self.current.id)
            .chain(self.previous.iter().map(|k| k.id))
            .collect()
    }

    fn find(&self, key_id: u8) -> Option<&SigningKey> {
        if self.current.id == key_id {
            return Some(&self.current);
        }
        self.previous.iter().find(|k| k.id == key_id)
    }
}

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

    /// Drops the session revocations recorded before `cutoff` (seconds since the Unix epoch);
    /// returns how many were dropped. Safe once `cutoff` is at least the token TTL in the past.
    pub fn forget_revoked_before(&self, cutoff: u64) -> usize {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, at| *at >= cutoff);
        self.len.store(map.len(), Ordering::Release);
        before - map.len()
    }

    /// Replaces the whole list (a refresh from a shared store): exactly `sessions` revoked, and
    /// the epoch raised to at least `epoch`.
    pub(crate) fn replace(&self, sessions: HashMap<SessionId, u64>, epoch: u64) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        *map = sessions;
        self.len.store(map.len(), Ordering::Release);
        self.issued_before.fetch_max(epoch, Ordering::AcqRel);
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
}

/// Why a token was not accepted. Each way a token can be bad is its own variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token could not be decoded: empty, oversized, not base64, truncated, an unknown format
    /// version, flags or section, or malformed.
    #[error(transparent)]
    Decode(#[from] TokenError),
    /// The token carries no signature.
    #[error("session token is not signed")]
    Unsigned,
    /// The token was signed with a key the ring does not hold (retired, or never known).
    #[error("session token was signed with unknown key {key_id}")]
    UnknownKey {
        /// The key id the token names.
        key_id: u8,
    },
    /// The signature does not match: the token was altered, or forged.
    #[error("session token signature does not match (tampered)")]
    BadSignature,
    /// The token carries no issue and expiry times (every token an authority issues has them).
    #[error("session token carries no expiry")]
    MissingExpiry,
    /// The token expired.
    #[error("session token expired at {expired_at}")]
    Expired {
        /// When it expired (seconds since the Unix epoch).
        expired_at: u64,
    },
    /// The token says it was issued later than now plus the clock leeway (as JWT's `nbf`): a
    /// clock far off, or a token minted to outlive its revocation.
    #[error("session token issued at {issued_at}, in the future")]
    NotYetValid {
        /// When it says it was issued (seconds since the Unix epoch).
        issued_at: u64,
    },
    /// The token was revoked.
    #[error("session token was revoked ({0:?})")]
    Revoked(Revocation),
    /// The token was issued to another principal (or to one, and none was presented).
    #[error("session token was issued to another principal")]
    WrongPrincipal,
}

impl VerifyError {
    /// A stable, snake_case name for the error, for response bodies and metrics
    /// (`token_expired`, `token_bad_signature`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Decode(e) => match e {
                TokenError::Empty => "token_empty",
                TokenError::Oversized { .. } => "token_oversized",
                TokenError::NotBase64 => "token_not_base64",
                TokenError::Truncated { .. } => "token_truncated",
                TokenError::UnknownVersion(_) => "token_unknown_version",
                TokenError::UnknownFlags(_) => "token_unknown_flags",
                TokenError::UnknownSection(_) => "token_unknown_section",
                TokenError::TooManyScopes { .. } => "token_too_many_scopes",
                _ => "token_malformed",
            },
            VerifyError::Unsigned => "token_unsigned",
            VerifyError::UnknownKey { .. } => "token_unknown_key",
            VerifyError::BadSignature => "token_bad_signature",
            VerifyError::MissingExpiry => "token_missing_expiry",
            VerifyError::Expired { .. } => "token_expired",
            VerifyError::NotYetValid { .. } => "token_not_yet_valid",
            VerifyError::Revoked(_) => "token_revoked",
            VerifyError::WrongPrincipal => "token_wrong_principal",
        }
    }

    /// True when the token could not be decoded at all (its bytes are not a token).
    pub fn is_malformed(&self) -> bool {
        matches!(self, VerifyError::Decode(_))
    }

    /// True when the token's signature failed or names an unknown key, or the token is unsigned.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            VerifyError::Unsigned | VerifyError::UnknownKey { .. } | VerifyError::BadSignature
        )
    }

    /// True when the token expired.
    pub fn is_expired(&self) -> bool {
        matches!(self, VerifyError::Expired { .. })
    }

    /// True when the token was revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, VerifyError::Revoked(_))
    }

    /// True when the token belongs to another principal.
    pub fn is_wrong_principal(&self) -> bool {
        matches!(self, VerifyError::WrongPrincipal)
    }
}

/// Issues and verifies signed session tokens. Shared (`Arc`) between every request of a process;
/// rotation and retirement apply to all of them at once.
pub struct TokenAuthority {
    keys: RwLock<KeyRing>,
    /// Moves on at every rotation and retirement, so the cache never answers for an old ring.
    ring_generation: AtomicU64,
    /// The signing key's id, readable without the ring's lock.
    current_id: AtomicU8,
    ttl: Duration,
    leeway: Duration,
    revocations: Arc<dyn RevocationList>,
    in_memory: Option<Arc<InMemoryRevocationList>>,
    cache: Option<cache::VerifiedCache>,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("keys", &self.key_ids())
            .field("ttl", &self.ttl)
            .field("leeway", &self.leeway)
            .field("verified_cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenAuthority`].
#[derive(Debug)]
pub struct TokenAuthorityBuilder {
    keys: KeyRing,
    ttl: Duration,
    leeway: Duration,
    revocations: Option<Arc<dyn RevocationList>>,
    cache_capacity: usize,
}

/// The default capacity of the verified-token cache (tokens).
pub const DEFAULT_VERIFIED_CACHE: usize = 16_384;

impl TokenAuthorityBuilder {
    /// How long an issued token stays valid (default 7 days). Every response re-issues the token,
    /// so this is the longest a client may stay idle and keep its session.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Clock skew tolerated between the instance that issued a token and the one verifying it
    /// (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Where revocations are checked (default: a fresh [`InMemoryRevocationList`], reachable with
    /// [`TokenAuthority::revocations`]).
    pub fn revocations(mut self, list: Arc<dyn RevocationList>) -> Self {
        self.revocations = Some(list);
        self
    }

    /// How many verified tokens to remember (default [`DEFAULT_VERIFIED_CACHE`]; 0 turns the
    /// cache off).
    ///
    /// A token is remembered, by its exact text and the principal that presented it, the second
    /// time it verifies (most tokens are presented once: each write answers with a new one; a
    /// client whose session does not change keeps sending the same); presenting it again skips the
    /// signature check and the decoding. Everything that can change meanwhile is still checked on
    /// every verification: expiry, issue time, revocation, and the key ring (a rotation or
    /// retirement empties the cache). Each entry holds the token text and its decoded state, a
    /// few hundred bytes.
    pub fn verified_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The authority.
    pub fn build(self) -> TokenAuthority {
        let (revocations, in_memory) = match self.revocations {
            Some(list) => (list, None),
            None => {
                let list = Arc::new(InMemoryRevocationList::new());
                (list.clone() as Arc<dyn RevocationList>, Some(list))
            }
        };
        TokenAuthority {
            current_id: AtomicU8::new(self.keys.current_id()),
            keys: RwLock::new(self.keys),
            ring_generation: AtomicU64::new(0),
            ttl: self.ttl,
            leeway: self.leeway,
            revocations,
            in_memory,
            cache: cache::VerifiedCache::new(self.cache_capacity),
        }
    }
}

impl TokenAuthority {
    /// Starts building an authority over `keys`.
    pub fn builder(keys: KeyRing) -> TokenAuthorityBuilder {
        TokenAuthorityBuilder {
            keys,
            ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(60),
            revocations: None,
            cache_capacity: DEFAULT_VERIFIED_CACHE,
        }
    }

    /// An authority with one key and the defaults.
    pub fn new(key: SigningKey) -> Self {
        Self::builder(KeyRing::new(key)).build()
    }

    /// The token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The in-memory revocation list, when the authority was built with the default one (`None`
    /// when it checks a list given to [`TokenAuthorityBuilder::revocations`]: revoke through
    /// that one).
    pub fn revocations(&self) -> Option<&InMemoryRevocationList> {
        self.in_memory.as_deref()
    }

    /// Makes `key` the signing key; the current one keeps verifying (see [`KeyRing::rotate`]).
    pub fn rotate(&self, key: SigningKey) -> Result<(), KeyError> {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.rotate(key)?;
        self.current_id.store(keys.current_id(), Ordering::Release);
        self.ring_changed();
        Ok(())
    }

    /// Retires a previous key: tokens it signed stop verifying. Returns whether it was held.
    pub fn retire(&self, key_id: u8) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let retired = keys.retire(key_id);
        if retired {
            self.ring_changed();
        }
        retired
    }

    /// Called with the key ring write-locked: no verification is between reading the ring and
    /// caching what it read, so nothing verified under the old ring is answered from the cache.
    fn ring_changed(&self) {
        self.ring_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// A number that moves on at every rotation and retirement: a caller that keeps a verified
    /// token (to answer with it again, say) and sees this number change meanwhile must not rely
    /// on the token still verifying. Read it before verifying.
    pub fn key_ring_generation(&self) -> u64 {
        self.ring_generation.load(Ordering::Acquire)
    }

    /// The id of the key new tokens are signed with.
    pub fn current_key_id(&self) -> u8 {
        self.current_id.load(Ordering::Acquire)
    }

    /// The ids of the keys that verify, the signing key first.
    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).ids()
    }

    /// Issues a signed token for `state`, valid for the TTL from now and, when `principal` is
    /// given, only for that principal.
    pub fn issue(
        &self,
        state: &SessionState,
        principal: Option<&[u8]>,
    ) -> Result<String, TokenError> {
        self.issue_at(state, principal, now_secs())
    }

    /// [`TokenAuthority::issue`] at a given time (seconds since the Unix epoch).
    pub fn issue_at(
        &self,
        state: &SessionState,
        principal: Option<&[u8]>,
        now: u64,
    ) -> Result<String, TokenError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = &keys.current;
        let times = (now, now.saturating_add(self.ttl.as_secs()));
        let binding = principal.map(|p| key.binding(p));
        let mut bytes = Vec::with_capacity(160);
        write_body_masked(
            &mut bytes,
            state,
            Some(times),
            binding.as_ref(),
            true,
            Some(&key.scopes),
        )?;
        let tag = key.tag(&bytes, key.id);
        bytes.push(key.id);
        bytes.extend_from_slice(&tag);
        let encoded = encode_base64(&bytes)?;
        drop(keys);
        Ok(encoded)
    }

    /// Verifies an untrusted token presented by `principal` (`None` for an anonymous caller) and
    /// returns it. See the module docs for the checks, in order.
    pub fn verify(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
    ) -> Result<SessionToken, VerifyError> {
        self.verify_at(encoded, principal, now_secs())
    }

    /// [`TokenAuthority::verify`] at a given time (seconds since the Unix epoch).
    pub fn verify_at(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
        now: u64,
    ) -> Result<SessionToken, VerifyError> {
        self.verify_shared_at(encoded, principal, now)
            .map(Arc::unwrap_or_clone)
    }

    /// [`TokenAuthority::verify_at`], answering with the token as the verified-token cache holds
    /// it (no copy). For a caller that only looks at the token, or keeps it to compare with later.
    /// Two calls may return the same token; a state cloned out of it to continue the session gets
    /// a lane of its own (see [`WriteId`](crate::WriteId)), as every clone does.
    pub fn verify_shared_at(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
        now: u64,
    ) -> Result<Arc<SessionToken>, VerifyError> {
        if let Some(cache) = &self.cache {
            if let Some((generation, token)) = cache.get(encoded, principal) {
                if generation == self.ring_generation.load(Ordering::Acquire) {
                    self.check_live(&token, now)?;
                    return Ok(token);
                }
            }
        }
        let mut buf = [0u8; MAX_BYTES + 3];
        let n = decode_base64(encoded, &mut buf)?;
        let bytes = &buf[..n];
        let mut token = SessionToken::from_bytes(bytes)?;
        let Some(signature) = token.signature() else {
            return Err(VerifyError::Unsigned);
        };
        // A decoded signed token is at least its header plus the signature.
        let body = &bytes[..n - SIGNATURE_LEN];
        let generation = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let key = keys.find(signature.key_id).ok_or(VerifyError::UnknownKey {
                key_id: signature.key_id,
            })?;
            if !key.check(body, signature.key_id, &signature.tag) {
                return Err(VerifyError::BadSignature);
            }
            token.unmask_scopes(&key.scopes);
            match (token.binding(), principal) {
                (None, _) => {}
                (Some(_), None) => return Err(VerifyError::WrongPrincipal),
                (Some(bound), Some(p)) => {
                    if !bool::from(key.binding(p).ct_eq(bound)) {
                        return Err(VerifyError::WrongPrincipal);
                    }
                }
            }
            self.ring_generation.load(Ordering::Acquire)
        };
        self.check_live(&token, now)?;
        let token = Arc::new(token);
        if let Some(cache) = &self.cache {
            cache.admit(encoded, principal, generation, &token);
        }
        tracing::trace!(target: "ryw::signing", session = %token.state().id(), "token verified");
        Ok(token)
    }

    /// What can change after a token's signature checked out: its times against `now`, and the
    /// revocation list.
    fn check_live(&self, token: &SessionToken, now: u64) -> Result<(), VerifyError> {
        let (issued_at, expires_at) = token.times().ok_or(VerifyError::MissingExpiry)?;
        if now >= expires_at.saturating_add(self.leeway.as_secs()) {
            return Err(VerifyError::Expired {
                expired_at: expires_at,
            });
        }
        if issued_at > now.saturating_add(self.leeway.as_secs()) {
            return Err(VerifyError::NotYetValid { issued_at });
        }
        // The session's start, carried through every re-issue: a refresh never launders a
        // session an epoch revoked. (Version 1 tokens carry none: their issue time.)
        let started = match token.state().started_at() {
            0 => issued_at,
            started => started.min(issued_at),
        };
        if let Some(why) = self.revocations.check(token.state().id(), started) {
            return Err(VerifyError::Revoked(why));
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch, by the system clock.
pub fn now_secs() -> u64 {
    SystemClock.now_micros() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Signature;
    use crate::version::{ScopeKey, StoreId, Version};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const NOW: u64 = 1_790_000_000;

    fn state(scopes: u64) -> SessionState {
        let mut s = SessionState::new(SessionId::from_u128(0xfeed));
        s.next_write(1_790_000_000_000_000);
        for i in 0..scopes {
            s.advance(
                ScopeKey::new(StoreId::new(1), format!("k{i}").as_bytes()),
                Version::new(1_790_000_000_000_000 + i * 997),
            );
        }
        s
    }

    fn authority() -> TokenAuthority {
        TokenAuthority::builder(KeyRing::new(SigningKey::new(1, [1u8; 32]).unwrap()))
            .ttl(Duration::from_secs(3600))
            .leeway(Duration::from_secs(10))
            .build()
    }

    #[test]
    fn round_trip_and_sizes() {
        let a = authority();
        let s = state(4);
        let t = a.issue_at(&s, None, NOW).unwrap();
        assert!(t.len() <= 160, "{} chars", t.len());
        let back = a.verify_at(&t, None, NOW + 5).unwrap();
        let mut started = s.clone();
        started.set_started_at(NOW);
        assert_eq!(
            back.state(),
            &started,
            "the first signed token starts the session"
        );
        assert_eq!(back.times(), Some((NOW, NOW + 3600)));
        assert_eq!(back.signature().unwrap().key_id, 1);
    }

    #[test]
    fn every_altered_byte_is_rejected() {
        let a = authority();
        let t = a.issue_at(&state(3), Some(b"alice"), NOW).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut v = bytes.clone();
                v[i] ^= bit;
                let e = a
                    .verify_at(&URL_SAFE_NO_PAD.encode(&v), Some(b"alice"), NOW)
                    .unwrap_err();
                // Structural damage is a decode error; anything that still parses fails the
                // signature (or names a key that is not held).
                assert!(e.is_malformed() || e.is_untrusted(), "byte {i}: {e:?}");
            }
        }
        for cut in 1..bytes.len() {
            let e = a
                .verify_at(&URL_SAFE_NO_PAD.encode(&bytes[..cut]), None, NOW)
                .unwrap_err();
            assert!(e.is_malformed() || e.is_untrusted(), "cut {cut}: {e:?}");
        }
    }

    #[test]
    fn a_signed_token_does_not_reveal_which_keys_its_session_touched() {
        let a = authority();
        let mut s = SessionState::new(SessionId::from_u128(3));
        let secret = ScopeKey::new(StoreId::new(1), b"posts/alice-private-7");
        s.advance(secret, Version::new(5));
        let t = a.issue_at(&s, None, NOW).unwrap();
        // Without the key: decodable, but the dictionary guess finds nothing.
        let seen = SessionToken::decode(&t).unwrap();
        assert_eq!(seen.state().vector().len(), 1);
        assert_eq!(seen.state().vector().get(secret), None);
        // With it: the scope is back.
        let verified = a.verify_at(&t, None, NOW).unwrap();
        assert_eq!(verified.state().vector().get(secret), Some(Version::new(5)));
        // Across a rotation, a token signed by the old key still unmasks with the old key.
        a.rotate(SigningKey::new(2, [2u8; 32]).unwrap()).unwrap();
        let again = a.verify_at(&t, None, NOW).unwrap();
        assert_eq!(again.state().vector().get(secret), Some(Version::new(5)));
        let t2 = a.issue_at(again.state(), None, NOW).unwrap();
        assert_eq!(
            a.verify_at(&t2, None, NOW)
                .unwrap()
                .state()
                .vector()
                .get(secret),
            Some(Version::new(5))
        );
    }

    #[test]
    fn an_epoch_revocation_survives_a_refresh() {
        // Before, the epoch was compared with the token's issue time, and one refresh (a
        // re-issue from the verified state, at any instance) laundered an older session.
        let list = Arc::new(InMemoryRevocationList::new());
        let a = TokenAuthority::builder(KeyRing::new(SigningKey::new(1, [1u8; 32]).unwrap()))
            .ttl(Duration::from_secs(3600))
            .leeway(Duration::from_secs(10))
            .revocations(list.clone())
            .build();
        let t = a.issue_at(&state(2), None, NOW).unwrap();
        let refreshed = a
            .issue_at(
                a.verify_at(&t, None, NOW + 100).unwrap().state(),
                None,
                NOW + 200,
            )
            .unwrap();
        let again = a
            .issue_at(
                a.verify_at(&refreshed, None, NOW + 250).unwrap().state(),
                None,
                NOW + 300,
            )
            .unwrap();
        let token = a.verify_at(&again, None, NOW + 301).unwrap();
        assert_eq!(
            token.state().started_at(),
            NOW,
            "carried through every re-issue"
        );
        assert_eq!(token.times().unwrap().0, NOW + 300);
        list.revoke_issued_before(NOW + 150);
        for t in [&t, &refreshed, &again] {
            assert!(a.verify_at(t, None, NOW + 310).unwrap_err().is_revoked());
        }
        // A session started after the epoch is not affected.
        let fresh = a.issue_at(&state(1), None, NOW + 160).unwrap();
        assert!(a.verify_at(&fresh, None, NOW + 310).is_ok());
    }

    #[test]
    fn typed_errors() {
        let a = authority();
        let s = state(2);
        let t = a.issue_at(&s, None, NOW).unwrap();
        assert_eq!(
            a.verify_at(&t, None, NOW + 3600 + 10),
            Err(VerifyError::Expired {
                expired_at: NOW + 3600
            })
        );
        assert!(a.verify_at(&t, None, NOW + 3600 + 9).is_ok(), "leeway");
        // Issued in the future beyond the leeway (as JWT's `nbf`).
        assert!(a.verify_at(&t, None, NOW - 10).is_ok(), "leeway");
        let e = a.verify_at(&t, None, NOW - 11).unwrap_err();
        assert_eq!(e, VerifyError::NotYetValid { issued_at: NOW });
        assert_eq!(e.code(), "token_not_yet_valid");
        let unsigned = SessionToken::new(s.clone()).encode().unwrap();
        assert_eq!(
            a.verify_at(&unsigned, None, NOW),
            Err(VerifyError::Unsigned)
        );
        let forged = SessionToken::new(s.clone())
            .with_times(NOW, NOW + 10)
            .with_signature(Signature {
                key_id: 1,
                tag: [0; 32],
            })
            .encode()
            .unwrap();
        assert_eq!(
            a.verify_at(&forged, None, NOW),
            Err(VerifyError::BadSignature)
        );
        let other = TokenAuthority::new(SigningKey::new(1, [2u8; 32]).unwrap());
        assert_eq!(
            other.verify_at(&t, None, NOW),
            Err(VerifyError::BadSignature),
            "same key id, another secret"
        );
        let codes = [
            a.verify_at("", None, NOW).unwrap_err().code(),
            a.verify_at(&"A".repeat(5000), None, NOW)
                .unwrap_err()
                .code(),
            a.verify_at("!!", None, NOW).unwrap_err().code(),
            a.verify_at(&t[..20], None, NOW).unwrap_err().code(),
        ];
        assert_eq!(
            codes,
            [
                "token_empty",
                "token_oversized",
                "token_not_base64",
                "token_truncated"
            ]
        );
        let mut v = URL_SAFE_NO_PAD.decode(&t).unwrap();
        v[0] = 9;
        assert_eq!(
            a.verify_at(&URL_SAFE_NO_PAD.encode(&v), None, NOW),
            Err(VerifyError::Decode(TokenError::UnknownVersion(9)))
        );
    }

    #[test]
    fn binding_rejects_other_principals() {
        let a = authority();
        let t = a.issue_at(&state(1), Some(b"alice"), NOW).unwrap();
        assert!(a.verify_at(&t, Some(b"alice"), NOW).is_ok());
        assert_eq!(
            a.verify_at(&t, Some(b"bob"), NOW),
            Err(VerifyError::WrongPrincipal)
        );
        assert_eq!(a.verify_at(&t, None, NOW), Err(VerifyError::WrongPrincipal));
        // An unbound token may be presented by anyone.
        let t = a.issue_at(&state(1), None, NOW).unwrap();
        assert!(a.verify_at(&t, Some(b"bob"), NOW).is_ok());
    }

    #[test]
    fn rotation_keeps_old_tokens_until_retired() {
        let a = authority();
        let old = a.issue_at(&state(1), None, NOW).unwrap();
        a.rotate(SigningKey::new(2, [3u8; 32]).unwrap()).unwrap();
        assert_eq!(
            a.rotate(SigningKey::new(1, [4u8; 32]).unwrap()),
            Err(KeyError::DuplicateId(1))
        );
        let new = a.issue_at(&state(1), None, NOW).unwrap();
        assert_eq!(
            a.verify_at(&new, None, NOW)
                .unwrap()
                .signature()
                .unwrap()
                .key_id,
            2
        );
        assert!(a.verify_at(&old, None, NOW).is_ok());
        assert!(a.retire(1));
        assert!(!a.retire(2), "the signing key cannot be retired");
        assert_eq!(
            a.verify_at(&old, None, NOW),
            Err(VerifyError::UnknownKey { key_id: 1 })
        );
        assert!(a.verify_at(&new, None, NOW).is_ok());
        assert_eq!(a.key_ids(), vec![2]);
    }

    #[test]
    fn revocation_by_session_and_epoch() {
        let a = authority();
        let s = state(1);
        let t = a.issue_at(&s, None, NOW).unwrap();
        a.revocations().unwrap().revoke_session_at(s.id(), NOW);
        assert_eq!(
            a.verify_at(&t, None, NOW),
            Err(VerifyError::Revoked(Revocation::Session))
        );
        assert!(a.revocations().unwrap().restore_session(s.id()));
        assert!(a.verify_at(&t, None, NOW).is_ok());
        a.revocations().unwrap().revoke_issued_before(NOW + 1);
        assert_eq!(
            a.verify_at(&t, None, NOW),
            Err(VerifyError::Revoked(Revocation::IssuedBefore {
                epoch: NOW + 1
            }))
        );
        let later = a.issue_at(&s, None, NOW + 1).unwrap();
        assert!(a.verify_at(&later, None, NOW + 1).is_ok());
        a.revocations()
            .unwrap()
            .revoke_session_at(SessionId::from_u128(9), NOW);
        assert_eq!(a.revocations().unwrap().forget_revoked_before(NOW + 1), 1);
        assert!(a.revocations().unwrap().is_empty());
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert_eq!(
            SigningKey::new(3, [0u8; 16]).unwrap_err(),
            KeyError::TooShort { key_id: 3, len: 16 }
        );
        let a = authority();
        let shown = format!("{a:?} {:?}", SigningKey::new(5, [0xAB; 32]).unwrap());
        assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }
}
