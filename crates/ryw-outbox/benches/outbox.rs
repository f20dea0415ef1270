//! What the outbox costs: a request through the outbox layer when the store is up (against the
//! session layer alone, measured in the same run), a durable append, and a replayed entry.
//!
//! `cargo bench -p ryw-outbox --bench outbox`

#[path = "../../ryw/benches/common/mod.rs"]
mod common;

use common::{drive, inner, session_with_scopes, BenchAdapter, Req};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ryw::ReadYourWritesLayer;
use ryw_outbox::entry::{DecodeError, Entry};
use ryw_outbox::{DurableRequest, NotDeferrable, Outbox, OutboxConfig, OutboxLayer, Replayer};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower::Layer;

impl DurableRequest for Req {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), NotDeferrable> {
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&self.write_seq.to_le_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| DecodeError::Truncated)?;
        let (key, seq) = bytes.split_at(8);
        Ok(Req {
            key: u64::from_le_bytes(key.try_into().map_err(|_| DecodeError::Truncated)?),
            write: true,
            strong: false,
            write_seq: u64::from_le_bytes(seq.try_into().map_err(|_| DecodeError::Truncated)?),
        })
    }
}

/// Polls a future whose every step is ready.
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("not ready"),
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ryw-outbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn entry(session: &ryw::Session, seq: u64) -> Entry {
    let mut request = Vec::new();
    Req {
        key: seq & 7,
        write: true,
        strong: false,
        write_seq: seq,
    }
    .encode(&mut request)
    .unwrap();
    Entry {
        write_id: ryw::WriteId::new(session.id(), 1, seq),
        timestamp: ryw::clock::HybridTimestamp::new(seq),
        may_have_applied: true,
        deferred_at: ryw::signing::now_secs(),
        scopes: vec![ryw::ScopeKey::from_hash(common::STORE, seq & 7)],
        session: session.token().encode().unwrap(),
        request,
    }
}

fn bench(c: &mut Criterion) {
    let outbox = Arc::new(Outbox::open(temp("happy.redb"), OutboxConfig::default()).unwrap());
    let mut group = c.benchmark_group("outbox");
    let mut k = 0u64;
    for write in [false, true] {
        let what = if write { "write" } else { "read" };
        let session = session_with_scopes(1);
        let mut ryw = ReadYourWritesLayer::new(BenchAdapter).layer(inner());
        group.bench_function(format!("{what}, session layer alone"), |b| {
            b.iter(|| {
                k = (k + 1) & 7;
                let request = Req {
                    key: k,
                    write,
                    strong: false,
                    write_seq: 0,
                };
                black_box(drive(&mut ryw, session.request(black_box(request))))
            })
        });
        let mut both = OutboxLayer::new(outbox.clone(), BenchAdapter)
            .layer(ReadYourWritesLayer::new(BenchAdapter).layer(inner()));
        group.bench_function(format!("{what}, outbox layer, store up"), |b| {
            b.iter(|| {
                k = (k + 1) & 7;
                let request = Req {
                    key: k,
                    write,
                    strong: false,
                    write_seq: 0,
                };
                black_box(drive(&mut both, session.request(black_box(request))))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("outbox durable");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    let appends = Outbox::open(temp("append.redb"), OutboxConfig::default()).unwrap();
    let session = ryw::Session::new();
    let mut seq = 0;
    group.bench_function("append, durable", |b| {
        b.iter(|| {
            seq += 1;
            black_box(appends.append(&entry(&session, seq)).unwrap())
        })
    });
    drop(appends);
    let replays = Arc::new(Outbox::open(temp("replay.redb"), OutboxConfig::default()).unwrap());
    let mut replayer = Replayer::new(
        replays.clone(),
        ReadYourWritesLayer::new(BenchAdapter).layer(inner()),
    );
    group.bench_function("replay one entry (apply, remove durably)", |b| {
        b.iter_batched(
            || {
                seq += 1;
                replays.append(&entry(&session, seq)).unwrap();
            },
            |()| black_box(now(replayer.drain()).unwrap()),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let _ = std::fs::remove_dir_all(temp("x").parent().unwrap());
}

criterion_group!(benches, bench);
criterion_main!(benches);
