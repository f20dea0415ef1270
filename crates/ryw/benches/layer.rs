//! Layer overhead per request against a bare `service_fn` and a pass-through layer, measured in
//! the same run. The inner service answers at once, so the difference is the layer's own work:
//! session lock, fence computation, stamping, request clone, version recording.
//!
//! `cargo bench -p ryw --bench layer`

mod common;

use common::{drive, inner, session_with_scopes, BenchAdapter, Req};
use criterion::{criterion_group, criterion_main, Criterion};
use ryw::{FenceConfig, ReadYourWritesLayer};
use std::hint::black_box;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The smallest possible middleware: forwards everything.
#[derive(Clone)]
struct PassThrough<S>(S);

impl<S: Service<R>, R> Service<R> for PassThrough<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, r: R) -> S::Future {
        self.0.call(r)
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");
    let read = |k: u64| Req {
        key: k,
        write: false,
        strong: false,
        write_seq: 0,
    };
    let mut k = 0u64;

    let mut bare = inner();
    group.bench_function("bare service_fn", |b| {
        b.iter(|| {
            k = (k + 1) & 7;
            black_box(drive(&mut bare, black_box(read(k))))
        })
    });

    let mut pass = PassThrough(inner());
    group.bench_function("pass-through layer", |b| {
        b.iter(|| {
            k = (k + 1) & 7;
            black_box(drive(&mut pass, black_box(read(k))))
        })
    });

    let layer = ReadYourWritesLayer::new(BenchAdapter);
    for scopes in [0u64, 1, 8] {
        let mut svc = layer.layer(inner());
        let session = session_with_scopes(scopes);
        group.bench_function(format!("ryw read, {scopes}-scope session"), |b| {
            b.iter(|| {
                k = (k + 1) & 7;
                let out = drive(&mut svc, session.request(black_box(read(k))));
                debug_assert!(out.visibility().is_guaranteed());
                black_box(out)
            })
        });
    }

    // The default layer's fence is adaptive; a read that meets its fence never touches the
    // learner, so the fixed schedule costs the same.
    let mut svc = ReadYourWritesLayer::new(BenchAdapter)
        .fence(FenceConfig::default())
        .layer(inner());
    let session = session_with_scopes(8);
    group.bench_function("ryw read, 8-scope session, fixed fence", |b| {
        b.iter(|| {
            k = (k + 1) & 7;
            let out = drive(&mut svc, session.request(black_box(read(k))));
            debug_assert!(out.visibility().is_guaranteed());
            black_box(out)
        })
    });

    let mut svc = layer.layer(inner());
    let session = session_with_scopes(8);
    group.bench_function("ryw write, 8-scope session", |b| {
        b.iter(|| {
            k = (k + 1) & 7;
            let w = Req {
                key: k,
                write: true,
                strong: false,
                write_seq: 0,
            };
            black_box(drive(&mut svc, session.request(black_box(w))))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
