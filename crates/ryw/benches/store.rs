//! Session store: load plus save (lookup and update) at 10k and 1M sessions, on 1 and 2 threads;
//! and bytes per session, counted by a counting allocator.
//!
//! `cargo bench -p ryw --bench store`

// The counting allocator below is the one place that needs `unsafe` (a `GlobalAlloc`).
#![allow(unsafe_code)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ryw::store::{InMemorySessionStore, SessionStore};
use ryw::version::{ScopeKey, StoreId};
use ryw::{SessionId, SessionState, Version};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn id(i: u64) -> SessionId {
    // Random-looking ids, as `SessionId::random` gives.
    SessionId::derive(&i.to_le_bytes())
}

fn state(i: u64, scopes: u64) -> SessionState {
    let mut s = SessionState::new(id(i));
    for k in 0..scopes {
        s.advance(
            ScopeKey::from_hash(StoreId::new(1), i * 31 + k),
            Version::new(100 + k),
        );
    }
    s
}

/// A store that holds `n` sessions without evicting any: generational eviction keeps between
/// half and all of `max_sessions`, so it is sized at twice `n`.
fn filled(n: u64, scopes: u64, max_sessions: usize) -> InMemorySessionStore {
    let store = InMemorySessionStore::new().max_sessions(max_sessions);
    for i in 0..n {
        store.save(&state(i, scopes));
    }
    store
}

fn report_memory() {
    for (n, scopes) in [(1_000_000u64, 1u64), (1_000_000, 4)] {
        let before = LIVE.load(Ordering::Relaxed);
        let store = filled(n, scopes, 2 * n as usize);
        let after = LIVE.load(Ordering::Relaxed);
        let held = store.len();
        println!(
            "bytes per session: {:.1} ({} sessions of {} scope(s) held, {} bytes)",
            (after - before) as f64 / held as f64,
            held,
            scopes,
            after - before
        );
        drop(store);
    }
}

fn lookup_update(store: &InMemorySessionStore, i: u64) {
    let mut s = store.load(id(i)).expect("present");
    s.advance(
        ScopeKey::from_hash(StoreId::new(1), i * 31),
        Version::new(200 + i),
    );
    store.save(black_box(&s));
}

fn bench(c: &mut Criterion) {
    report_memory();
    let mut group = c.benchmark_group("store load+save");
    for n in [10_000u64, 1_000_000] {
        let store = Arc::new(filled(n, 1, 4 * n as usize));
        let mut i = 0u64;
        group.bench_with_input(BenchmarkId::new("1 thread", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                lookup_update(&store, i)
            })
        });
        group.bench_with_input(BenchmarkId::new("2 threads", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..2u64 {
                        let store = &store;
                        scope.spawn(move || {
                            let mut i = t * 104_729 % n;
                            for _ in 0..iters {
                                i = (i + 7919) % n;
                                lookup_update(store, i);
                            }
                        });
                    }
                });
                // Wall time per operation of one thread while the other runs.
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
