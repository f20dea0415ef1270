//! The outbox's decoders on arbitrary bytes (what a damaged outbox file could hold): an entry,
//! and the simulated store's request encoding. Never a panic; an entry of the current format
//! version that decodes encodes back to the same bytes, and one of an earlier version encodes to
//! the current version's bytes of the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ryw_outbox::entry::Entry;
use ryw_outbox::DurableRequest;
use ryw_sim::SimRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data) {
        let again = entry.encode();
        // Byte 4 is the format version (a decoded entry has one).
        if again[4] == data[4] {
            assert_eq!(again, data, "canonical");
        } else {
            assert_eq!(Entry::decode(&again).as_ref(), Ok(&entry), "rewritten");
        }
        let _ = SimRequest::decode(&entry.request);
    }
    if let Ok(request) = SimRequest::decode(data) {
        let mut again = Vec::new();
        request.encode(&mut again).unwrap();
        assert_eq!(SimRequest::decode(&again).unwrap(), request);
    }
});
