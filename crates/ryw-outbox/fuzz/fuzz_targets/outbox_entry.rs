//! The outbox's decoders on arbitrary bytes (what a damaged outbox file could hold): an entry,
//! and the simulated store's request encoding. Never a panic; an entry that decodes encodes back
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ryw_outbox::entry::Entry;
use ryw_outbox::DurableRequest;
use ryw_sim::SimRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(entry.encode(), data, "canonical");
        let _ = SimRequest::decode(&entry.request);
    }
    if let Ok(request) = SimRequest::decode(data) {
        let mut again = Vec::new();
        request.encode(&mut again).unwrap();
        assert_eq!(SimRequest::decode(&again).unwrap(), request);
    }
});
