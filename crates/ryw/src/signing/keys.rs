//! Signing keys and the key ring: the current key signs, previous keys still verify.

use super::mask::ScopeMask;
use crate::token::BINDING_LEN;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret a [`SigningKey`] accepts (bytes).
pub const MIN_KEY_LEN: usize = 32;

/// The most previous keys a [`KeyRing`] keeps for verification.
pub const MAX_PREVIOUS_KEYS: usize = 4;

/// Domain separation for principal fingerprints, so a fingerprint is never a valid token tag.
const BINDING_DOMAIN: &[u8] = b"ryw/principal/v1\0";

/// Domain separation for the keys of principals' records.
const RECORD_DOMAIN: &[u8] = b"ryw/principal-record/v1\0";

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
    pub(super) id: u8,
    pub(super) mac: HmacSha256,
    pub(super) scopes: ScopeMask,
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

    pub(super) fn tag(&self, body: &[u8], key_id: u8) -> [u8; 32] {
        self.mac_of(body, key_id).finalize().into_bytes().into()
    }

    /// Constant-time comparison.
    pub(super) fn check(&self, body: &[u8], key_id: u8, tag: &[u8; 32]) -> bool {
        self.mac_of(body, key_id).verify_slice(tag).is_ok()
    }

    /// The 128-bit keyed fingerprint of `principal` its shared record is kept under
    /// ([`crate::principal`]), in a domain of its own.
    pub(crate) fn record_fingerprint(&self, principal: &[u8]) -> u128 {
        let mut mac = self.mac.clone();
        mac.update(RECORD_DOMAIN);
        mac.update(principal);
        let full = mac.finalize().into_bytes();
        u128::from_le_bytes(full[..16].try_into().expect("16 bytes"))
    }

    pub(super) fn binding(&self, principal: &[u8]) -> [u8; BINDING_LEN] {
        let mut mac = self.mac.clone();
        mac.update(BINDING_DOMAIN);
        mac.update(principal);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; BINDING_LEN];
        out.copy_from_slice(&full[..BINDING_LEN]);
        out
    }
}

/// The keys a [`TokenAuthority`](super::TokenAuthority) signs and verifies with: one current key and up to
/// [`MAX_PREVIOUS_KEYS`] previous ones, which verify but never sign.
#[derive(Clone, Debug)]
pub struct KeyRing {
    pub(super) current: SigningKey,
    previous: Vec<SigningKey>,
}

impl From<SigningKey> for KeyRing {
    /// A ring with one key ([`KeyRing::new`]).
    fn from(current: SigningKey) -> Self {
        KeyRing::new(current)
    }
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

    /// The current key and the previous ones.
    pub(super) fn all(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    pub(super) fn find(&self, key_id: u8) -> Option<&SigningKey> {
        if self.current.id == key_id {
            return Some(&self.current);
        }
        self.previous.iter().find(|k| k.id == key_id)
    }
}
