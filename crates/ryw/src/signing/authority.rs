//! The token authority: issues and verifies signed tokens, with a verified-token cache.

use super::cache;
use super::keys::*;
use super::now_secs;
use crate::locks::{read, write};
use crate::revocation::{InMemoryRevocationList, PrincipalBinding, Revocation, RevocationList};
use crate::session::SessionState;
use crate::token::{decode_signed, encode_signed, SessionToken, TokenError};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

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
    /// The signature does not match: the token was altered or forged, or signed by another key
    /// with the same id (a key generated anew at a restart, or another instance's).
    #[error(
        "session token signature does not match: altered, or signed by another key with the same \
         id (instances must share their signing keys)"
    )]
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

/// The default capacity of the verified-token cache (tokens).
pub const DEFAULT_VERIFIED_CACHE: usize = 16_384;

/// The default lifetime of an issued token: 7 days.
const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default clock leeway: 60 s.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

impl TokenAuthority {
    /// An authority over `keys` (a [`KeyRing`], or one [`SigningKey`]) with the defaults: tokens
    /// valid for 7 days, 60 s of clock leeway, its own [`InMemoryRevocationList`], a verified-token
    /// cache of [`DEFAULT_VERIFIED_CACHE`] tokens. Configured with consuming setters, before it
    /// is shared:
    ///
    /// ```
    /// use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
    /// use std::time::Duration;
    ///
    /// let keys = KeyRing::new(SigningKey::new(2, [2u8; 32])?)
    ///     .with_previous(SigningKey::new(1, [1u8; 32])?)?;
    /// let authority = TokenAuthority::new(keys)
    ///     .token_ttl(Duration::from_secs(24 * 3600))
    ///     .leeway(Duration::from_secs(10));
    /// assert_eq!(authority.ttl(), Duration::from_secs(24 * 3600));
    /// assert_eq!(authority.key_ids(), [2, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(keys: impl Into<KeyRing>) -> Self {
        let keys = keys.into();
        let in_memory = Arc::new(InMemoryRevocationList::new());
        TokenAuthority {
            current_id: AtomicU8::new(keys.current_id()),
            keys: RwLock::new(keys),
            ring_generation: AtomicU64::new(0),
            ttl: DEFAULT_TTL,
            leeway: DEFAULT_LEEWAY,
            revocations: in_memory.clone(),
            in_memory: Some(in_memory),
            cache: cache::VerifiedCache::new(DEFAULT_VERIFIED_CACHE),
        }
    }

    /// How long an issued token stays valid (default 7 days; read back with
    /// [`TokenAuthority::ttl`]). Every response re-issues the token, so this is the longest a
    /// client may stay idle and keep its session.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Clock skew tolerated between the instance that issued a token and the one verifying it
    /// (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Where revocations are checked (default: the authority's own [`InMemoryRevocationList`],
    /// reachable with [`TokenAuthority::revocations`]; given a list, the authority has none of
    /// its own).
    pub fn revocation_list(mut self, list: Arc<dyn RevocationList>) -> Self {
        self.revocations = list;
        self.in_memory = None;
        self
    }

    /// How many verified tokens to remember (default [`DEFAULT_VERIFIED_CACHE`]; 0 turns the
    /// cache off). The cache is made anew, empty.
    ///
    /// A token is remembered, by its exact text and the principal that presented it, the second
    /// time it verifies (most tokens are presented once: each write answers with a new one; a
    /// client whose session does not change keeps sending the same); presenting it again skips the
    /// signature check and the decoding. Everything that can change meanwhile is still checked on
    /// every verification: expiry, issue time, revocation, and the key ring (a rotation or
    /// retirement empties the cache). Each entry holds the token text and its decoded state, a
    /// few hundred bytes.
    pub fn verified_cache(mut self, capacity: usize) -> Self {
        self.cache = cache::VerifiedCache::new(capacity);
        self
    }

    /// The token lifetime (set with [`TokenAuthority::token_ttl`]).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The authority's own in-memory revocation list, the default one (`None` when it checks a
    /// list given to [`TokenAuthority::revocation_list`]: revoke through that one).
    pub fn revocations(&self) -> Option<&InMemoryRevocationList> {
        self.in_memory.as_deref()
    }

    /// `principal` as the tokens signed by each key of the ring name it: what
    /// [`InMemoryRevocationList::revoke_principal_before`] (or a shared list) takes.
    pub fn principal_bindings(&self, principal: &[u8]) -> Vec<PrincipalBinding> {
        let keys = read(&self.keys);
        keys.all()
            .map(|key| PrincipalBinding {
                key_id: key.id,
                fingerprint: key.binding(principal),
            })
            .collect()
    }

    /// Revokes every session of `principal` that started before `epoch` (seconds since the Unix
    /// epoch), in the authority's own revocation list; returns false when the authority checks a
    /// list given to [`TokenAuthority::revocation_list`] (revoke there, with
    /// [`TokenAuthority::principal_bindings`]).
    pub fn revoke_principal_before(&self, principal: &[u8], epoch: u64) -> bool {
        let Some(list) = self.in_memory.as_deref() else {
            return false;
        };
        list.revoke_principal_before(&self.principal_bindings(principal), epoch);
        true
    }

    /// Makes `key` the signing key; the current one keeps verifying (see [`KeyRing::rotate`]).
    pub fn rotate(&self, key: SigningKey) -> Result<(), KeyError> {
        let mut keys = write(&self.keys);
        keys.rotate(key)?;
        self.current_id.store(keys.current_id(), Ordering::Release);
        self.ring_changed();
        Ok(())
    }

    /// Retires a previous key: tokens it signed stop verifying. Returns whether it was held.
    pub fn retire(&self, key_id: u8) -> bool {
        let mut keys = write(&self.keys);
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
        read(&self.keys).ids()
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
        let keys = read(&self.keys);
        let key = &keys.current;
        let times = (now, now.saturating_add(self.ttl.as_secs()));
        let binding = principal.map(|p| key.binding(p));
        let encoded = encode_signed(
            state,
            times,
            binding.as_ref(),
            &|hash| key.scopes.mask(hash),
            key.id,
            |body| key.tag(body, key.id),
        )?;
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
        let (token, generation) = decode_signed(encoded, |token, body| {
            self.check_signature(token, body, principal)
        })??;
        self.check_live(&token, now)?;
        let token = Arc::new(token);
        if let Some(cache) = &self.cache {
            cache.admit(encoded, principal, generation, &token);
        }
        tracing::trace!(target: "ryw::signing", session = %crate::telemetry::SessionHash::of(token.state().id()), "token verified");
        Ok(token)
    }

    /// Checks the signature and the principal binding of a decoded token; returns it with its
    /// scopes unmasked and the key ring's generation it was checked against.
    fn check_signature(
        &self,
        mut token: SessionToken,
        body: Option<&[u8]>,
        principal: Option<&[u8]>,
    ) -> Result<(SessionToken, u64), VerifyError> {
        let (Some(signature), Some(body)) = (token.signature().copied(), body) else {
            return Err(VerifyError::Unsigned);
        };
        let generation = {
            let keys = read(&self.keys);
            let key = keys.find(signature.key_id).ok_or(VerifyError::UnknownKey {
                key_id: signature.key_id,
            })?;
            if !key.check(body, signature.key_id, &signature.tag) {
                return Err(VerifyError::BadSignature);
            }
            token.map_scopes(|scope| key.scopes.unmask_scope(scope));
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
        Ok((token, generation))
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
        if let (Some(fingerprint), Some(signature)) = (token.binding(), token.signature()) {
            let binding = PrincipalBinding {
                key_id: signature.key_id,
                fingerprint: *fingerprint,
            };
            if let Some(why) = self.revocations.check_principal(binding, started) {
                return Err(VerifyError::Revoked(why));
            }
        }
        Ok(())
    }
}
