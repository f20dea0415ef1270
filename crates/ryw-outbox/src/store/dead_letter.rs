//! Dead letters: entries that could not be replayed, kept with the reason, and their stored form
//! (the reason's length and text, then the entry's bytes as they were).

use crate::entry::{DecodeError, Entry, Reader};

/// A dead letter: an entry that could not be replayed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence number among the dead letters (its entry's, when it was queued).
    pub seq: u64,
    /// The entry, or why its stored bytes are not one (a damaged entry is kept as it was found).
    pub entry: Result<Entry, DecodeError>,
    /// Why it was not replayed.
    pub reason: String,
}

/// The stored form of the dead letter of the entry `bytes`, with `reason`.
pub(super) fn encode_letter(reason: &str, bytes: &[u8]) -> Vec<u8> {
    let mut letter = Vec::with_capacity(bytes.len() + reason.len() + 4);
    letter.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    letter.extend_from_slice(reason.as_bytes());
    letter.extend_from_slice(bytes);
    letter
}

/// A dead letter's reason and entry (or why its bytes are not one).
pub(super) fn decode_letter(bytes: &[u8]) -> (String, Result<Entry, DecodeError>) {
    let mut r = Reader(bytes);
    let reason = match r.len("reason", 64 * 1024).and_then(|len| r.take(len)) {
        Ok(reason) => String::from_utf8_lossy(reason).into_owned(),
        Err(e) => return ("damaged dead letter".to_owned(), Err(e)),
    };
    (reason, Entry::decode(r.0))
}
