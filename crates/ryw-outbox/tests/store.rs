//! The outbox's store on disk: bounds, order, reopening, dead letters.

mod common;

use common::TempDir;
use ryw::clock::HybridTimestamp;
use ryw::{ScopeKey, SessionId, StoreId, WriteId};
use ryw_outbox::entry::Entry;
use ryw_outbox::{Outbox, OutboxConfig, OutboxError};

fn entry(session: u128, seq: u64, scope: &str, size: usize) -> Entry {
    Entry {
        write_id: WriteId::new(SessionId::from_u128(session), 1, seq),
        timestamp: HybridTimestamp::new(seq),
        may_have_applied: false,
        deferred_at: 0,
        scopes: vec![ScopeKey::new(StoreId::new(0), scope.as_bytes())],
        session: String::new(),
        request: vec![0; size],
    }
}

#[test]
fn the_queue_is_bounded_by_entries_and_bytes() {
    let dir = TempDir::new();
    let outbox =
        Outbox::open(dir.path().join("o"), OutboxConfig::default().max_entries(3)).unwrap();
    for i in 1..=3 {
        outbox.append(&entry(1, i, "k", 10)).unwrap();
    }
    assert!(matches!(
        outbox.append(&entry(1, 4, "k", 10)),
        Err(OutboxError::Full { entries: 3, .. })
    ));
    assert_eq!(outbox.len(), 3, "a refused append keeps nothing");
    drop(outbox);

    let outbox = Outbox::open(
        dir.path().join("b"),
        OutboxConfig::default().max_bytes(1000),
    )
    .unwrap();
    outbox.append(&entry(1, 1, "k", 500)).unwrap();
    assert!(matches!(
        outbox.append(&entry(1, 2, "k", 500)),
        Err(OutboxError::Full { entries: 1, .. })
    ));
    let seq = outbox.pending().unwrap()[0].0;
    assert!(outbox.remove(seq).unwrap());
    outbox.append(&entry(1, 2, "k", 500)).unwrap();
}

#[test]
fn reopening_finds_the_queue_in_order_and_never_reuses_a_number() {
    let dir = TempDir::new();
    let path = dir.path().join("o");
    let seqs: Vec<u64> = {
        let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
        (1..=5)
            .map(|i| outbox.append(&entry(u128::from(i % 2), i, "k", 8)).unwrap())
            .collect()
    };
    let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
    let pending = outbox.pending().unwrap();
    assert_eq!(pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    assert_eq!(
        pending
            .iter()
            .map(|(_, e)| e.write_id.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(outbox.remove(seqs[4]).unwrap());
    assert!(!outbox.remove(seqs[4]).unwrap());
    let next = outbox.append(&entry(0, 6, "k", 8)).unwrap();
    assert!(next > seqs[4], "numbers only grow");
    drop(outbox);
    let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
    assert_eq!(outbox.len(), 5);
    assert!(outbox.append(&entry(0, 7, "k", 8)).unwrap() > next);
}

#[test]
fn queued_writes_are_found_by_session_and_scope_until_they_leave() {
    let dir = TempDir::new();
    let outbox = Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap();
    let a = outbox.append(&entry(1, 1, "x", 8)).unwrap();
    let b = outbox.append(&entry(1, 2, "y", 8)).unwrap();
    let x = [ScopeKey::new(StoreId::new(0), b"x")];
    let z = [ScopeKey::new(StoreId::new(0), b"z")];
    let one = SessionId::from_u128(1);
    assert_eq!(outbox.queued_write(one, &x).map(|w| w.seq), Some(1));
    assert_eq!(outbox.queued_write(one, &z), None);
    assert_eq!(outbox.queued_write(SessionId::from_u128(2), &x), None);
    assert!(outbox.has_queued(one));
    outbox.remove(a).unwrap();
    assert_eq!(outbox.queued_write(one, &x), None);
    outbox.dead_letter(b, "gone").unwrap();
    assert!(!outbox.has_queued(one));
    assert!(outbox.is_empty());
    assert_eq!(outbox.dead_letter_count().unwrap(), 1);
    assert!(matches!(
        outbox.dead_letter(b, "again"),
        Err(OutboxError::NotFound(_))
    ));

    // A dead letter queued again is a queued write again, and no longer a dead letter.
    let letters = outbox.dead_letters().unwrap();
    assert_eq!(letters[0].reason, "gone");
    let again = outbox.retry_dead_letter(letters[0].seq).unwrap();
    assert!(again > b);
    assert_eq!(outbox.dead_letter_count().unwrap(), 0);
    assert!(outbox.has_queued(one));
}

#[test]
fn an_outbox_held_open_cannot_be_opened_again() {
    let dir = TempDir::new();
    let path = dir.path().join("o");
    let _held = Outbox::open(&path, OutboxConfig::default()).unwrap();
    assert!(matches!(
        Outbox::open(&path, OutboxConfig::default()),
        Err(OutboxError::Storage(_))
    ));
}

#[test]
fn a_file_never_initialised_is_recreated_and_a_damaged_one_is_never_discarded() {
    let dir = TempDir::new();
    // What a crash while the file was first created in place leaves: zeros, or nothing.
    for (name, len) in [("zeros", 73_728usize), ("empty", 0)] {
        let path = dir.path().join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let outbox = Outbox::open(&path, OutboxConfig::default()).expect("recreated");
        outbox.append(&entry(1, 1, "k", 8)).unwrap();
        drop(outbox);
        let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
        assert_eq!(outbox.len(), 1, "{name}: a real outbox now");
    }
    // A file with anything else in it may hold queued writes: refused, and left as it was.
    let path = dir.path().join("damaged");
    let mut bytes = vec![0u8; 73_728];
    bytes[40_000] = 7;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Outbox::open(&path, OutboxConfig::default()),
        Err(OutboxError::Storage(_) | OutboxError::Damaged(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "never discarded");
    // No temporary is left beside the outboxes.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("creating")), "{names:?}");
}
