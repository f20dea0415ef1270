//! The retry budget's cost per request: ryw's `RetryBudget` against tower's `TpsBudget`, on one
//! thread and on two threads depositing at once (every request deposits).
//!
//!     cargo bench -p ryw --bench budget

use criterion::{criterion_group, criterion_main, Criterion};
use ryw::retry::RetryBudget;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tower::retry::budget::{Budget, TpsBudget};

/// Deposits `iters` times on each of `threads` threads at once; the time per deposit.
fn contended<B: Budget + Send + Sync + 'static>(
    budget: Arc<B>,
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (budget, barrier) = (budget.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    budget.deposit();
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a bench thread panicked"))
        .max()
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget");
    let ryw = Arc::new(RetryBudget::default());
    // tower's default shape: 10 s window, 10 retries per second, 20%.
    let tps = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    group.bench_function("ryw RetryBudget deposit", |b| {
        b.iter(|| black_box(&*ryw).deposit())
    });
    group.bench_function("tower TpsBudget deposit", |b| {
        b.iter(|| black_box(&*tps).deposit())
    });
    group.bench_function("ryw RetryBudget deposit, 2 threads", |b| {
        b.iter_custom(|iters| contended(ryw.clone(), 2, iters))
    });
    group.bench_function("tower TpsBudget deposit, 2 threads", |b| {
        b.iter_custom(|iters| contended(tps.clone(), 2, iters))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
