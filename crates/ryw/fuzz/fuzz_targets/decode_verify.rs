//! Decoding and verifying untrusted session tokens never panics, and whatever decodes survives a
//! sign/verify round trip.
//!
//! `bash crates/ryw/fuzz/run.sh 60`

#![no_main]

use libfuzzer_sys::fuzz_target;
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::SessionToken;
use std::sync::OnceLock;

const NOW: u64 = 1_790_000_000;

fn authority() -> &'static TokenAuthority {
    static AUTHORITY: OnceLock<TokenAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        TokenAuthority::new(
            KeyRing::new(SigningKey::new(2, [0x5a; 32]).unwrap())
                .with_previous(SigningKey::new(1, [0xa5; 32]).unwrap())
                .unwrap(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let authority = authority();
    // The binary form, as after base64.
    if let Ok(token) = SessionToken::from_bytes(data) {
        // Whatever decodes re-encodes, and a token the authority signs for it verifies, carrying
        // at least what it decoded (encoding may coarsen, never weaken).
        let reissued = authority
            .issue_at(token.state(), Some(b"fuzz"), NOW)
            .expect("a decoded state always re-encodes");
        let back = authority
            .verify_at(&reissued, Some(b"fuzz"), NOW)
            .expect("a token just issued verifies");
        assert!(back.state().vector().dominates(token.state().vector()));
        assert_eq!(back.state().id(), token.state().id());
        assert!(authority.verify_at(&reissued, Some(b"other"), NOW).is_err());
    }
    // The text form, as it arrives in a header.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SessionToken::decode(text);
        let _ = authority.verify_at(text, None, NOW);
        let _ = authority.verify_at(text, Some(b"fuzz"), NOW);
    }
});
