//! Reading the binary token: bounded by [`MAX_TOKEN_LEN`], on the stack, and never panicking
//! on untrusted input; every failure is a distinct [`TokenError`].

use super::{
    base64_len, SessionToken, Signature, TokenError, BINDING_LEN, FLAG_BOUND, FLAG_SIGNED,
    FLAG_TIMES, FORMAT_VERSION, FORMAT_VERSION_1, KNOWN_FLAGS, MAX_BYTES, MAX_TOKEN_LEN,
    SECTION_CONTEXT, SECTION_RECORD, SECTION_STORE, SIGNATURE_LEN, STORE_FLAG_HORIZON,
};
use crate::clock::HybridTimestamp;
use crate::session::{SessionId, SessionState, StoreContext, MAX_CONTEXTS, MAX_CONTEXT_LEN};
use crate::version::{ScopeKey, StoreHorizon, StoreId, Version, VersionVector, MAX_SCOPE_CAP};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

impl SessionToken {
    /// Decodes an untrusted token. Never panics; allocation is bounded by [`MAX_TOKEN_LEN`].
    pub fn decode(encoded: &str) -> Result<Self, TokenError> {
        let mut buf = [0u8; MAX_BYTES + 3];
        let n = decode_base64(encoded, &mut buf)?;
        Self::from_bytes(&buf[..n])
    }

    /// Decodes the binary form (after base64). Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.is_empty() {
            return Err(TokenError::Empty);
        }
        if bytes.len() > MAX_BYTES {
            return Err(TokenError::Oversized {
                len: base64_len(bytes.len()),
                max: MAX_TOKEN_LEN,
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        let format = r.u8("format version")?;
        if format != FORMAT_VERSION && format != FORMAT_VERSION_1 {
            return Err(TokenError::UnknownVersion(format));
        }
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(TokenError::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        let id = SessionId::from_bytes(r.array::<16>("session id")?);
        let write_seq = r.varint("write sequence")?;
        let clock = HybridTimestamp::new(r.varint("clock")?);
        let (issued_at, expires_at, started_at) = if flags & FLAG_TIMES != 0 {
            let issued = r.varint("issued at")?;
            let expires = r.varint("expires at")?;
            let started = if format == FORMAT_VERSION_1 {
                0
            } else {
                issued
                    .checked_sub(r.varint("session age")?)
                    .ok_or(TokenError::Malformed("session started before the epoch"))?
            };
            (Some(issued), Some(expires), started)
        } else {
            (None, None, 0)
        };
        let binding = if flags & FLAG_BOUND != 0 {
            Some(r.array::<BINDING_LEN>("principal binding")?)
        } else {
            None
        };
        let sections = r.varint("section count")?;
        // Each section takes at least two bytes: a count larger than that is a lie.
        if sections > (r.remaining() / 2) as u64 {
            return Err(TokenError::Truncated { field: "sections" });
        }
        let mut vector = VersionVector::with_cap(MAX_SCOPE_CAP);
        let mut seen_stores = [false; 256];
        let mut contexts: Vec<StoreContext> = Vec::new();
        let mut record: Option<u64> = None;
        let mut scopes = 0usize;
        for _ in 0..sections {
            let kind = r.u8("section kind")?;
            let len = r.varint("section length")?;
            if len > r.remaining() as u64 {
                return Err(TokenError::Truncated { field: "section" });
            }
            let payload = r.take(len as usize, "section")?;
            if kind == SECTION_RECORD {
                let mut s = Reader {
                    bytes: payload,
                    pos: 0,
                };
                let version = s.varint("record version")?;
                if version == 0 {
                    return Err(TokenError::Malformed("zero record version"));
                }
                if s.remaining() != 0 {
                    return Err(TokenError::Malformed("trailing bytes in section"));
                }
                if record.replace(version).is_some() {
                    return Err(TokenError::Malformed("duplicate record section"));
                }
                continue;
            }
            if kind == SECTION_CONTEXT {
                let mut s = Reader {
                    bytes: payload,
                    pos: 0,
                };
                let store = StoreId::new(s.u8("context store")?);
                let version = Version::new(s.varint("context version")?);
                let bytes = &payload[s.pos..];
                if bytes.len() > MAX_CONTEXT_LEN {
                    return Err(TokenError::Malformed("store context too long"));
                }
                if contexts.iter().any(|c: &StoreContext| c.store == store) {
                    return Err(TokenError::Malformed("duplicate store context"));
                }
                if contexts.len() == MAX_CONTEXTS {
                    return Err(TokenError::Malformed("too many store contexts"));
                }
                contexts.push(StoreContext {
                    store,
                    version,
                    bytes: bytes.into(),
                });
                continue;
            }
            if kind != SECTION_STORE {
                return Err(TokenError::UnknownSection(kind));
            }
            let mut s = Reader {
                bytes: payload,
                pos: 0,
            };
            let store = StoreId::new(s.u8("store id")?);
            if std::mem::replace(&mut seen_stores[store.get() as usize], true) {
                return Err(TokenError::Malformed("duplicate store section"));
            }
            let sflags = s.u8("store flags")?;
            if sflags & !STORE_FLAG_HORIZON != 0 {
                return Err(TokenError::Malformed("unknown store flags"));
            }
            let horizon = if sflags & STORE_FLAG_HORIZON != 0 {
                let version = Version::new(s.varint("horizon version")?);
                if version == Version::ZERO {
                    return Err(TokenError::Malformed("zero horizon"));
                }
                if let FORMAT_VERSION_1 = format {
                    s.varint("horizon time")?;
                }
                Some(StoreHorizon { store, version })
            } else {
                None
            };
            let count = s.varint("entry count")?;
            if count > (s.remaining() / 8) as u64 {
                return Err(TokenError::Truncated { field: "entries" });
            }
            scopes += count as usize;
            if scopes > MAX_SCOPE_CAP {
                return Err(TokenError::TooManyScopes {
                    count: scopes,
                    max: MAX_SCOPE_CAP,
                });
            }
            let mut version = 0u64;
            for _ in 0..count {
                let raw = s.array::<7>("scope")?;
                let mut wide = [0u8; 8];
                wide[..7].copy_from_slice(&raw);
                let scope = ScopeKey::from_hash(store, u64::from_le_bytes(wide));
                let delta = s.varint("version")?;
                version = version
                    .checked_add(delta)
                    .ok_or(TokenError::Malformed("version overflow"))?;
                if version == 0 {
                    return Err(TokenError::Malformed("zero version"));
                }
                if vector.get(scope).is_some() {
                    return Err(TokenError::Malformed("duplicate scope"));
                }
                vector.advance(scope, Version::new(version));
            }
            // After the entries: entries below the horizon are kept as they were encoded.
            if let Some(h) = horizon {
                vector.raise_horizon(h);
            }
            if s.remaining() != 0 {
                return Err(TokenError::Malformed("trailing bytes in section"));
            }
        }
        let signature = if flags & FLAG_SIGNED != 0 {
            let key_id = r.u8("key id")?;
            let tag = r.array::<32>("signature")?;
            Some(Signature { key_id, tag })
        } else {
            None
        };
        if r.remaining() != 0 {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        vector.set_cap_at_least_len(crate::version::DEFAULT_SCOPE_CAP);
        let mut state = SessionState::from_parts(id, write_seq, clock, vector);
        if record.is_some() {
            state.set_record(record);
        }
        state.set_started_at(started_at);
        for c in contexts {
            state.advance_context(c);
        }
        Ok(SessionToken {
            state,
            issued_at,
            expires_at,
            binding,
            signature,
        })
    }
}

/// Checks the length of an untrusted token and decodes its base64 into `buf`, returning the
/// number of bytes. Never allocates.
fn decode_base64(encoded: &str, buf: &mut [u8; MAX_BYTES + 3]) -> Result<usize, TokenError> {
    if encoded.is_empty() {
        return Err(TokenError::Empty);
    }
    if encoded.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Oversized {
            len: encoded.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    URL_SAFE_NO_PAD
        .decode_slice(encoded.as_bytes(), buf)
        .map_err(|_| TokenError::NotBase64)
}

/// Decodes an untrusted token (bounded, on the stack) and hands `check` the token and, when it
/// is signed, the bytes its signature covers.
pub(crate) fn decode_signed<R>(
    encoded: &str,
    check: impl FnOnce(SessionToken, Option<&[u8]>) -> R,
) -> Result<R, TokenError> {
    let mut buf = [0u8; MAX_BYTES + 3];
    let n = decode_base64(encoded, &mut buf)?;
    let bytes = &buf[..n];
    let token = SessionToken::from_bytes(bytes)?;
    // A decoded signed token is at least its header plus the signature.
    let body = token
        .signature()
        .is_some()
        .then(|| &bytes[..n - SIGNATURE_LEN]);
    Ok(check(token, body))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, TokenError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(TokenError::Truncated { field })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TokenError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(TokenError::Truncated { field })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], TokenError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, TokenError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(field)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(TokenError::Malformed("varint overflow"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(TokenError::Malformed("non-minimal varint"));
                }
                return Ok(v);
            }
        }
        Err(TokenError::Malformed("varint overflow"))
    }
}
