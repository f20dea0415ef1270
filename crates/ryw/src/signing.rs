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
//! let authority = TokenAuthority::new(KeyRing::new(SigningKey::new(1, [7u8; 32])?))
//!     .token_ttl(Duration::from_secs(24 * 3600));
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

mod authority;
mod cache;
mod keys;
mod mask;
#[cfg(test)]
mod tests;

pub use authority::{TokenAuthority, VerifyError, DEFAULT_VERIFIED_CACHE};
pub use keys::{KeyError, KeyRing, SigningKey, MAX_PREVIOUS_KEYS, MIN_KEY_LEN};
// The revocation types the authority's API names, also where its users have always found them.
pub use crate::revocation::{InMemoryRevocationList, PrincipalBinding, Revocation, RevocationList};

pub use crate::clock::now_secs;
