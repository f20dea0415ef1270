//! Attacks on the outbox, written from its promise and public API alone. Each test checks one
//! edge: a request sent twice while deferred applies once; a write made while an earlier one of
//! its session is in flight replays after it; a write answered "deferred" always decodes again;
//! one flipped byte of the file is `OutboxError::Damaged`, never a panic; one damaged entry
//! blocks nothing; `append` never accepts an entry it cannot read back; an altered entry is
//! never replayed as a write nobody made; only one write tries the store in the breaker's
//! half-open state; and a stress run loses and duplicates nothing.
//!
//! `lane_order` and `restart_catch_up` (a third case is in `ryw-mongodb/tests/outbox_order.rs`):
//! writes of two continuations of one session replay in the order they were made, whatever
//! their random lanes, and after a restart that follows a replay the session still knows what
//! the replay taught it, so a read from the client's older token is fenced on its own write.

mod common;

mod clone_duplicates {
    // Promise 1 (never duplicated): ryw promises that clones of one `SessionRequest` are the same
    // write ("a caller retrying after a timeout never turns one write into two"). Through the outbox,
    // a clone deferred `StoreDown`/`Behind` is stamped without recording the stamp on the request, so
    // a second clone (a retry, a hedge) gets a fresh write id and the write applies twice.
    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_twice_while_the_store_is_down_applies_once() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(10),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(60)));
        breaker.failed(); // the store is known to be down
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
            .breaker(breaker.clone())
            .layer(ryw.clone());

        let session = Session::new();
        let request = session.request(SimRequest::put("k", 42));
        // The caller (or a tower Retry / hedge above) sends the same request twice.
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(request.clone())
            .await
            .unwrap();
        let second = svc
            .ready()
            .await
            .unwrap()
            .call(request.clone())
            .await
            .unwrap();
        let (Written::Deferred(a), Written::Deferred(b)) = (first, second) else {
            panic!("both deferred")
        };

        tokio::time::sleep(Duration::from_secs(10)).await;
        let report = tokio::time::timeout(
            Duration::from_secs(600),
            Replayer::new(outbox.clone(), ryw).drain_until_empty(Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap();
        let applied: Vec<_> = store.log().into_iter().filter(|e| e.value == 42).collect();
        assert_eq!(
            applied.len(),
            1,
            "one write applied {} times (report {report:?}): {applied:?}",
            applied.len()
        );
        assert_eq!(
            a.write_id, b.write_id,
            "clones of one request are one write (ryw::SessionRequest docs)"
        );
    }

    /// The same, with the first copy deferred and the second sent after the store came back: the
    /// second is sent as a brand-new write, the replay applies the first, two applications.
    #[tokio::test(start_paused = true)]
    async fn a_request_retried_after_the_outage_applies_once() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(10),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(5)));
        breaker.failed();
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
            .breaker(breaker.clone())
            .layer(ryw.clone());
        let session = Session::new();
        let request = session.request(SimRequest::put("k", 42));
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(request.clone())
            .await
            .unwrap();
        assert!(first.deferred().is_some());
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Replay first, then the caller's retry of the very same request object.
        Replayer::new(outbox.clone(), ryw.clone())
            .drain()
            .await
            .unwrap();
        assert!(outbox.is_empty());
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(request.clone())
            .await
            .unwrap();
        let applied: Vec<_> = store.log().into_iter().filter(|e| e.value == 42).collect();
        assert_eq!(applied.len(), 1, "applied twice: {applied:?}");
    }
}

mod concurrent_order {
    // Promise 2: a session's deferred writes apply in the order they were made. W1 of session S is
    // in flight (the store is down, it is retrying); meanwhile the breaker opens (another caller's
    // failure) and S makes W2, which is deferred `StoreDown` at once. W1 is then deferred `Failed`,
    // *behind* W2: the replay applies W2 before W1 although W1 was made first (and has the lower
    // write sequence number), so the store ends with W1's older value.
    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_made_while_an_earlier_one_is_in_flight_is_replayed_before_it() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(60),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(30)));
        let svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
            .breaker(breaker.clone())
            .layer(ryw.clone());

        let s = Session::new();
        let other = Session::new();
        // Another caller's write starts first; S's W1 a moment later. Both retry against the down
        // store; the other one gives up first and opens the breaker.
        let mut svc_other = svc.clone();
        let other_write = tokio::spawn(async move {
            svc_other
                .ready()
                .await
                .unwrap()
                .call(other.request(SimRequest::put("o", 1)))
                .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut svc_w1 = svc.clone();
        let s1 = s.clone();
        let w1 = tokio::spawn(async move {
            svc_w1
                .ready()
                .await
                .unwrap()
                .call(s1.request(SimRequest::put("k", 1)))
                .await
        });
        tokio::time::timeout(Duration::from_secs(120), async {
            while !breaker.is_open() {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        })
        .await
        .expect("the breaker opens");
        assert!(other_write.is_finished());
        assert!(!w1.is_finished(), "W1 still in flight");
        // S's next write, made after W1.
        let mut svc_w2 = svc.clone();
        let w2 = svc_w2
            .ready()
            .await
            .unwrap()
            .call(s.request(SimRequest::put("k", 2)))
            .await
            .unwrap();
        let w1 = w1.await.unwrap().unwrap();
        let (d1, d2) = (*w1.deferred().unwrap(), *w2.deferred().unwrap());
        eprintln!("W1 {d1:?}\nW2 {d2:?}");
        assert!(d1.write_id.seq < d2.write_id.seq, "W1 was made first");

        tokio::time::sleep(Duration::from_secs(60)).await;
        tokio::time::timeout(
            Duration::from_secs(600),
            Replayer::new(outbox.clone(), ryw).drain_until_empty(Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap();
        let log = store.log();
        let pos = |id| {
            log.iter()
                .find(|e| e.write_id == Some(id))
                .unwrap()
                .position
        };
        assert!(
            pos(d1.write_id) < pos(d2.write_id),
            "S's writes applied out of order: W1 at {}, W2 at {}; key k ends as {}",
            pos(d1.write_id),
            pos(d2.write_id),
            log.iter().rfind(|e| &*e.key == "k").unwrap().value
        );
    }
}

mod large_key {
    // Promise 1: a write answered `Deferred` is applied once the store returns. The `sim`
    // feature's `DurableRequest` encoded keys of any length but decoded only keys up to 64 KiB, so
    // a write with a longer key was answered `Deferred` and then could never be replayed: a dead
    // letter ("undecodable request"). Now such a write is refused up front (`NotDeferrable`,
    // keeping its error): `encode` refuses what `decode` would, and the layer checks that what it
    // keeps decodes before it answers.
    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{DurableRequest, Outbox, OutboxConfig, OutboxLayer, OutboxServiceError};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn encode_refuses_what_decode_would() {
        let request = SimRequest::put("k".repeat(64 * 1024 + 1), 1);
        assert!(request.encode(&mut Vec::new()).is_err());
        let request = SimRequest::put("k".repeat(64 * 1024), 1);
        let mut bytes = Vec::new();
        request.encode(&mut bytes).unwrap();
        assert_eq!(SimRequest::decode(&bytes).unwrap(), request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_could_not_be_replayed_is_never_answered_deferred() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(10),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw.clone());
        let key = "k".repeat(64 * 1024 + 1);
        let session = Session::new();
        let refused = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(SimRequest::put(key.as_str(), 7)))
            .await
            .unwrap_err();
        match refused {
            OutboxServiceError::NotDeferrable { cause, .. } => {
                assert!(
                    cause.is_some_and(|c| c.is_transient()),
                    "it keeps its error"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(outbox.is_empty());
    }
}

mod corrupt_file_panics {
    // Promise 5: corrupted outbox file bytes give typed errors, never a panic. One flipped byte of a
    // closed outbox file makes `Outbox::open` (redb underneath) panic instead of returning
    // `OutboxError::Storage`/`Corrupt`.
    use crate::common::TempDir;
    use ryw::clock::HybridTimestamp;
    use ryw::{ScopeKey, Session, StoreId, WriteId};
    use ryw_outbox::entry::Entry;
    use ryw_outbox::{Outbox, OutboxConfig};

    fn entry(session: &Session, seq: u64) -> Entry {
        Entry {
            write_id: WriteId::new(session.id(), 1, seq),
            timestamp: HybridTimestamp::new(seq),
            may_have_applied: false,
            deferred_at: 0,
            scopes: vec![ScopeKey::new(StoreId::new(0), b"k")],
            session: session.token().encode().unwrap(),
            request: vec![9; 50],
        }
    }

    fn build(path: &std::path::Path) -> Vec<u8> {
        let s = Session::new();
        let o = Outbox::open(path, OutboxConfig::default()).unwrap();
        for i in 0..5 {
            o.append(&entry(&s, i)).unwrap();
        }
        let seq = o.append(&entry(&s, 99)).unwrap();
        o.dead_letter(seq, "reason").unwrap();
        o.remove(1).unwrap();
        drop(o);
        std::fs::read(path).unwrap()
    }

    /// Opens the file with one byte flipped; `Err(message)` if that panicked.
    fn open_flipped(
        dir: &std::path::Path,
        orig: &[u8],
        at: usize,
        mask: u8,
    ) -> Result<String, String> {
        let mut bytes = orig.to_vec();
        bytes[at] ^= mask;
        let p = dir.join(format!("flipped-{at}-{mask}"));
        std::fs::write(&p, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| match Outbox::open(&p, OutboxConfig::default()) {
            Ok(o) => format!("opened, pending: {:?}", o.pending().map(|p| p.len())),
            Err(e) => format!("typed error: {e}"),
        });
        r.map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    }

    #[test]
    fn one_flipped_byte_never_makes_open_panic() {
        let dir = TempDir::new();
        let orig = build(&dir.path().join("outbox"));
        // Offsets found by tests/fuzz_file.rs (the layout of this file is deterministic).
        let mut panics = Vec::new();
        for (at, mask) in [(12522, 0x10), (12421, 0xff), (22517, 0x10), (12331, 0x01)] {
            match open_flipped(dir.path(), &orig, at, mask) {
                Ok(outcome) => eprintln!("byte {at} ^ {mask:#x}: {outcome}"),
                Err(panic) => panics.push(format!("byte {at} ^ {mask:#x}: panic `{panic}`")),
            }
        }
        assert!(panics.is_empty(), "Outbox::open panicked: {panics:#?}");
    }
}

mod corrupt_entry {
    // Promise 5: bad input gives typed errors and nothing is dropped silently: an entry that cannot
    // be replayed becomes a dead letter with its reason (crate docs: "An entry that can no longer be
    // replayed safely (..., undecodable, ...) is a dead letter with its reason").
    use crate::common::TempDir;
    use ryw::clock::HybridTimestamp;
    use ryw::{ReadYourWritesLayer, ScopeKey, Session, StoreId, WriteId};
    use ryw_outbox::entry::Entry;
    use ryw_outbox::{DurableRequest, Outbox, OutboxConfig, Replayer};
    use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use tower::Layer;

    fn entry(session: &Session, key: &str, value: u64) -> Entry {
        let mut request = SimRequest::put(key, value);
        if let SimRequest::Put(p) = &mut request {
            p.write_id = Some(WriteId::new(session.id(), 1, 1));
            p.clock = Some(HybridTimestamp::new(1));
        }
        let mut bytes = Vec::new();
        request.encode(&mut bytes).unwrap();
        Entry {
            write_id: WriteId::new(session.id(), 1, 1),
            timestamp: HybridTimestamp::new(1),
            may_have_applied: false,
            deferred_at: ryw::signing::now_secs(),
            scopes: vec![SimAdapter::new().scope(key)],
            session: session.token().encode().unwrap(),
            request: bytes,
        }
    }

    fn flip_all(bytes: &mut [u8], needle: &[u8], offset: usize, mask: u8) -> usize {
        let mut n = 0;
        for i in 0..bytes.len().saturating_sub(needle.len()) {
            if &bytes[i..i + needle.len()] == needle {
                bytes[i + offset] ^= mask;
                n += 1;
            }
        }
        n
    }

    /// One entry of session A is damaged on disk (its format byte flipped). The outbox cannot be
    /// opened at all: session B's perfectly good deferred write can never be replayed, and A's entry
    /// does not become a dead letter.
    #[test]
    fn one_damaged_entry_becomes_a_dead_letter_and_blocks_nothing() {
        let dir = TempDir::new();
        let path = dir.path().join("outbox");
        let (a, b) = (Session::new(), Session::new());
        {
            let o = Outbox::open(&path, OutboxConfig::default()).unwrap();
            o.append(&entry(&a, "a", 1)).unwrap();
            o.append(&entry(&b, "b", 2)).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // A's entry begins with the magic, the format version and A's session id.
        let needle = entry(&a, "a", 1).encode()[..21].to_vec();
        assert!(
            flip_all(&mut bytes, &needle, 4, 0x02) > 0,
            "A's entry found in the file"
        );
        std::fs::write(&path, &bytes).unwrap();

        let outbox = Outbox::open(&path, OutboxConfig::default());
        let outbox = match outbox {
            Ok(o) => o,
            Err(e) => panic!("one damaged entry blocks every queued write: {e}"),
        };
        let pending = outbox.pending().expect("the good entries are listed");
        assert_eq!(pending.len(), 1, "B's entry still queued");
        assert_eq!(
            outbox.dead_letter_count().unwrap(),
            1,
            "A's entry is a dead letter"
        );
    }

    /// `Outbox::append` accepted (durably, `Ok`) an entry its own decoder refuses (more than
    /// `MAX_SCOPES` scopes). From then on `pending()` failed, so the replayer could not drain
    /// anything — including other sessions' good entries. Now `append` refuses it, typed.
    #[tokio::test(start_paused = true)]
    async fn append_refuses_an_entry_it_could_not_read_back() {
        let dir = TempDir::new();
        let path = dir.path().join("outbox");
        let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
        let (a, b) = (Session::new(), Session::new());
        outbox.append(&entry(&a, "a", 1)).unwrap();
        let mut wide = entry(&b, "b", 2);
        wide.scopes = (0..1025u32)
            .map(|i| ScopeKey::new(StoreId::new(0), &i.to_le_bytes()))
            .collect();
        assert!(matches!(
            outbox.append(&wide),
            Err(ryw_outbox::OutboxError::Invalid(_))
        ));

        let store = SimStore::new(SimConfig::default().replicas(1));
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let report = Replayer::new(outbox.clone(), ryw).drain().await;
        assert!(
            report.is_ok(),
            "drain fails: {:?}; A's good write is stuck behind B's entry",
            report.err().map(|e| e.to_string())
        );
        assert_eq!(store.log().len(), 1, "A's write applied");
    }

    /// entry.rs: "a truncated, oversized or altered entry decodes to a typed DecodeError". An entry
    /// altered on disk (one bit of the written value) decodes fine, and the replay writes a value the
    /// caller never wrote.
    #[tokio::test(start_paused = true)]
    async fn an_altered_entry_is_never_replayed_as_a_different_write() {
        let dir = TempDir::new();
        let path = dir.path().join("outbox");
        let a = Session::new();
        let value = 0x4242_4242_4242_4242u64;
        {
            let o = Outbox::open(&path, OutboxConfig::default()).unwrap();
            o.append(&entry(&a, "needle-key", value)).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mut needle = b"needle-key".to_vec();
        needle.extend_from_slice(&value.to_le_bytes());
        assert!(flip_all(&mut bytes, &needle, 10, 0x01) > 0);
        std::fs::write(&path, &bytes).unwrap();

        let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).expect("opens"));
        let store = SimStore::new(SimConfig::default().replicas(1));
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let report = Replayer::new(outbox.clone(), ryw).drain().await.unwrap();
        let log = store.log();
        assert!(
            log.iter().all(|e| e.value == value),
            "replayed a value nobody wrote: {:#x} (report {report:?})",
            log[0].value
        );
    }
}

mod half_open {
    // breaker.rs: "after enough consecutive transient failures the store is taken to be down, and
    // writes are deferred without being sent, until the cool-down passes (one write then tries the
    // store)". After the cool-down every write tries the store, not one: `is_open` answers false to
    // every caller until one of them reports back.
    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{Breaker, DeferReason, Outbox, OutboxConfig, OutboxLayer};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_write_try_the_store() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(600),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(5)));
        breaker.failed();
        assert!(breaker.is_open());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
            .breaker(breaker.clone())
            .layer(ryw);
        let mut tasks = Vec::new();
        for i in 0..5 {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let w = svc
                    .ready()
                    .await
                    .unwrap()
                    .call(Session::new().request(SimRequest::put(format!("k{i}"), i)))
                    .await
                    .unwrap();
                w.deferred().unwrap().reason
            }));
        }
        let mut reasons = Vec::new();
        for t in tasks {
            reasons.push(t.await.unwrap());
        }
        let sent = reasons
            .iter()
            .filter(|r| **r == DeferReason::Failed)
            .count();
        assert_eq!(
            sent, 1,
            "half open: one write tries the store, got {reasons:?}"
        );
    }
}

mod stress_holds {
    // Things that held up: many sessions, lost/duplicated responses, crash (reopen) between every
    // pass, drain twice, dead letter retry. Expected to PASS.
    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session, Visibility};
    use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn many_sessions_lossy_network_crash_between_passes() {
        for seed in 0..4u64 {
            let dir = TempDir::new();
            let path = dir.path().join("o");
            let store = SimStore::new(
                SimConfig::default()
                    .seed(seed)
                    .replicas(2)
                    .lost_responses(0.3)
                    .duplicate_deliveries(0.3)
                    .partition(Partition {
                        start: Duration::from_secs(1),
                        end: Duration::from_secs(40),
                        kind: PartitionKind::PrimaryUnreachable,
                    })
                    .partition(Partition {
                        start: Duration::from_secs(45),
                        end: Duration::from_secs(50),
                        kind: PartitionKind::PrimaryUnreachable,
                    }),
            );
            let ryw = ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .layer(store.client(0));
            let sessions: Vec<Session> = (0..6).map(|_| Session::new()).collect();
            let mut deferred: Vec<(usize, ryw::WriteId, u64)> = Vec::new();
            let mut applied_direct = Vec::new();
            {
                let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
                let breaker = Arc::new(Breaker::new(2, Duration::from_secs(3)));
                let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
                    .breaker(breaker)
                    .layer(ryw.clone());
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut v = 1000 * seed;
                for round in 0..5 {
                    for (i, s) in sessions.iter().enumerate() {
                        v += 1;
                        let key = format!("k{}", (i + round) % 4);
                        match svc
                            .ready()
                            .await
                            .unwrap()
                            .call(s.request(SimRequest::put(key.as_str(), v)))
                            .await
                        {
                            Ok(Written::Deferred(d)) => {
                                deferred.push((i, d.write_id, v));
                                let r = svc
                                    .ready()
                                    .await
                                    .unwrap()
                                    .call(s.request(SimRequest::get(key.as_str())))
                                    .await;
                                if let Ok(r) = r {
                                    let r = r.applied().unwrap();
                                    assert!(
                                        matches!(r.visibility(), Visibility::Queued(_)),
                                        "{:?}",
                                        r.visibility()
                                    );
                                }
                            }
                            Ok(Written::Applied(_)) => applied_direct.push(v),
                            Ok(other) => panic!("one request, no copies: {other:?}"),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(40)).await;
            // Crash (reopen) between every pass; drain twice each time.
            for _ in 0..60 {
                let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
                if outbox.is_empty() {
                    break;
                }
                let mut r = Replayer::new(outbox.clone(), ryw.clone());
                let _ = tokio::time::timeout(Duration::from_secs(60), r.drain()).await;
                let _ = tokio::time::timeout(Duration::from_secs(60), r.drain()).await;
                for l in outbox.dead_letters().unwrap() {
                    outbox.retry_dead_letter(l.seq).unwrap();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            store.quiesce().await;
            let outbox = Outbox::open(&path, OutboxConfig::default()).unwrap();
            assert!(outbox.is_empty(), "seed {seed}: left {}", outbox.len());
            let log = store.log();
            let mut last: HashMap<usize, u64> = HashMap::new();
            for (i, id, v) in &deferred {
                let hits: Vec<_> = log.iter().filter(|e| e.write_id == Some(*id)).collect();
                assert_eq!(
                    hits.len(),
                    1,
                    "seed {seed}: {id:?} applied {} times",
                    hits.len()
                );
                assert_eq!(hits[0].value, *v);
                let p = hits[0].position;
                if let Some(prev) = last.insert(*i, p) {
                    assert!(prev < p, "seed {seed}: session {i} out of order");
                }
            }
            let values: Vec<u64> = log.iter().map(|e| e.value).collect();
            let mut dedup = values.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(
                dedup.len(),
                values.len(),
                "seed {seed}: a value applied twice"
            );
            eprintln!(
                "seed {seed}: {} deferred, {} direct, log {}",
                deferred.len(),
                applied_direct.len(),
                log.len()
            );
        }
    }
}

mod fuzz_file {
    // Flip bytes of a closed outbox file and reopen: typed errors, never a panic (promise 5).
    use crate::common::TempDir;
    use ryw::clock::HybridTimestamp;
    use ryw::{ScopeKey, Session, StoreId, WriteId};
    use ryw_outbox::entry::Entry;
    use ryw_outbox::{Outbox, OutboxConfig};

    fn entry(session: &Session, seq: u64) -> Entry {
        Entry {
            write_id: WriteId::new(session.id(), 1, seq),
            timestamp: HybridTimestamp::new(seq),
            may_have_applied: false,
            deferred_at: 0,
            scopes: vec![ScopeKey::new(StoreId::new(0), b"k")],
            session: session.token().encode().unwrap(),
            request: vec![9; 50],
        }
    }

    #[test]
    fn flipping_bytes_of_the_file_never_panics() {
        let dir = TempDir::new();
        let path = dir.path().join("outbox");
        let s = Session::new();
        {
            let o = Outbox::open(&path, OutboxConfig::default()).unwrap();
            for i in 0..5 {
                o.append(&entry(&s, i)).unwrap();
            }
            let seq = o.append(&entry(&s, 99)).unwrap();
            o.dead_letter(seq, "reason").unwrap();
            o.remove(1).unwrap();
        }
        let orig = std::fs::read(&path).unwrap();
        eprintln!("file is {} bytes", orig.len());
        let mut panics = Vec::new();
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        let step = std::env::var("STEP")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1usize);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500);
        let _ = step;
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut hung = Vec::new();
        for k in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % orig.len() as u64) as usize;
            let mask = [0x01u8, 0x80, 0xff, 0x10][k % 4];
            let mut bytes = orig.clone();
            bytes[i] ^= mask;
            if bytes[i] == orig[i] {
                continue;
            }
            let p = dir.path().join(format!("flipped{k}"));
            std::fs::write(&p, &bytes).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let p2 = p.clone();
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| {
                    let o = Outbox::open(&p2, OutboxConfig::default())?;
                    let _ = o.pending()?;
                    let _ = o.dead_letters()?;
                    o.append(&entry(&Session::new(), 7))?;
                    drop(o);
                    let o = Outbox::open(&p2, OutboxConfig::default())?;
                    let _ = o.pending()?;
                    Ok::<_, ryw_outbox::OutboxError>(())
                });
                let _ = tx.send(r.map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                }));
            });
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Err(_) => {
                    hung.push((i, mask));
                    continue;
                }
                Ok(Err(msg)) => panics.push((i, mask, msg)),
                Ok(Ok(Ok(()))) => *outcomes.entry("ok".into()).or_default() += 1,
                Ok(Ok(Err(e))) => {
                    *outcomes
                        .entry(format!("{e}").chars().take(70).collect())
                        .or_default() += 1
                }
            }
            let _ = std::fs::remove_file(&p);
        }
        eprintln!("hung: {hung:?}");
        std::panic::set_hook(prev);
        eprintln!("outcomes: {outcomes:#?}");
        eprintln!(
            "{} panics; first: {:?}",
            panics.len(),
            panics.iter().take(10).collect::<Vec<_>>()
        );
        assert!(
            panics.is_empty(),
            "panics at {:?}",
            panics.iter().take(5).collect::<Vec<_>>()
        );
    }
}

mod lane_order {
    //! Promise 2: a session's deferred writes apply in the order they were made. The replayer sorts a
    //! session's entries by (lane, seq); the lane is random per continuation (every HTTP request
    //! rebuilds the session from its token), so writes made through two continuations of one session
    //! replay in the order of their random lanes, not the order they were made.

    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn writes_of_two_continuations_of_one_session_replay_in_the_order_made() {
        let dir = TempDir::new();
        let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
            start: Duration::ZERO,
            end: Duration::from_secs(10),
            kind: PartitionKind::PrimaryUnreachable,
        }));
        let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(60)));
        breaker.failed(); // the store is known to be down
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
            .breaker(breaker.clone())
            .layer(ryw.clone());

        // HTTP request 1: continue the session from its token, write k = 1.
        let token0 = Session::new().token().encode().unwrap();
        let c1 = Session::from_encoded(&token0).unwrap();
        let w1 = svc
            .ready()
            .await
            .unwrap()
            .call(c1.request(SimRequest::put("k", 1)))
            .await
            .unwrap();
        let Written::Deferred(d1) = w1 else {
            panic!("deferred")
        };
        let token1 = c1.token().encode().unwrap();

        // HTTP request 2, made after request 1 answered: continue from the token it returned.
        // (Lanes are random; pick a continuation whose lane happens to sort below the first one's,
        // which half of all continuations do.)
        let c2 = loop {
            let c = Session::from_encoded(&token1).unwrap();
            if c.with_state(|s| s.lane()) < d1.write_id.lane {
                break c;
            }
        };
        let w2 = svc
            .ready()
            .await
            .unwrap()
            .call(c2.request(SimRequest::put("k", 2)))
            .await
            .unwrap();
        let Written::Deferred(d2) = w2 else {
            panic!("deferred")
        };
        assert!(d2.write_id.lane < d1.write_id.lane);
        assert!(d1.write_id.seq < d2.write_id.seq, "{d1:?} {d2:?}");

        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::time::timeout(
            Duration::from_secs(600),
            Replayer::new(outbox.clone(), ryw).drain_until_empty(Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap();
        let log = store.log();
        let pos = |id| {
            log.iter()
                .find(|e| e.write_id == Some(id))
                .unwrap()
                .position
        };
        assert!(
            pos(d1.write_id) < pos(d2.write_id),
            "the session's writes applied out of order: k=1 at {}, k=2 at {}; k ends as {}",
            pos(d1.write_id),
            pos(d2.write_id),
            log.iter().rfind(|e| &*e.key == "k").unwrap().value
        );
    }
}

mod restart_catch_up {
    //! Promise 3 across a crash: after the replay, the session's reads — also from a continuation
    //! rebuilt from a token issued before the replay — see the write. What the replay taught the
    //! session (`Outbox::catch_up`) lives only in memory: restart the process after the replay (drop
    //! everything, reopen the same file) and the client's next request, carrying the token it was
    //! given with its "deferred" answer, reads a lagging replica, misses its own write, and is told
    //! `Visibility::Guaranteed`.

    use crate::common::TempDir;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
    use ryw_sim::{
        LagModel, Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore,
    };
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_restart_after_the_replay_forgets_what_the_session_wrote() {
        let dir = TempDir::new();
        let path = dir.path().join("o");
        let store = SimStore::new(
            SimConfig::default()
                .replicas(1)
                .lag(LagModel::new(Duration::from_secs(3600), Duration::ZERO))
                .partition(Partition {
                    start: Duration::ZERO,
                    end: Duration::from_secs(10),
                    kind: PartitionKind::PrimaryUnreachable,
                }),
        );

        // Process A: the write is deferred; the client gets its token with the 202.
        let token = {
            let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
            let ryw = ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .layer(store.client(0));
            let breaker = Arc::new(Breaker::new(1, Duration::from_secs(60)));
            breaker.failed();
            let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
                .breaker(breaker.clone())
                .layer(ryw.clone());
            let session = Session::from_encoded(&Session::new().token().encode().unwrap()).unwrap();
            let out = svc
                .ready()
                .await
                .unwrap()
                .call(session.request(SimRequest::put("k", 7)))
                .await
                .unwrap();
            assert!(matches!(out, Written::Deferred(_)));
            let token = session.token().encode().unwrap();
            // The store returns; A's replayer applies the write, then A crashes.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let report = Replayer::new(outbox.clone(), ryw)
                .breaker(breaker)
                .drain()
                .await
                .unwrap();
            assert_eq!(report.applied, 1);
            token
        };
        assert_eq!(store.log().iter().filter(|e| e.value == 7).count(), 1);

        // Process A restarted on the same file; the client's next request carries its token.
        let outbox = Arc::new(Outbox::open(&path, OutboxConfig::default()).unwrap());
        let ryw = ReadYourWritesLayer::new(SimAdapter::new())
            .clock(store.clock())
            .layer(store.client(0));
        let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw);
        let session = Session::from_encoded(&token).unwrap();
        let read = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(SimRequest::get("k")))
            .await
            .unwrap()
            .applied()
            .unwrap();
        let value = read.get_ref().value();
        eprintln!("visibility {:?}, value {value:?}", read.visibility());
        assert!(
        !(read.visibility().is_guaranteed() && value != Some(7)),
        "the session's own replayed write is missing from a read answered Guaranteed (value {value:?})"
    );
    }
}
