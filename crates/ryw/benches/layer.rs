//! Layer overhead per request against a bare `service_fn` and a pass-through layer, measured in
//! the same run. The inner service answers at once, so the difference is the layer's own work:
//! session lock, fence computation, stamping, request clone, version recording.
//!
//! `cargo bench -p ryw --bench layer`

mod common;

use common::{BenchAdapter, Req, Resp};
use criterion::{criterion_group, criterion_main, Criterion};
use ryw::version::ScopeKey;
use ryw::{ReadYourWritesLayer, Session, Version};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
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

fn drive<S: Service<R>, R>(svc: &mut S, req: R) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(r)) => r,
        _ => panic!("not ready"),
    }
}

fn inner() -> impl Service<
    Req,
    Response = Resp,
    Error = Infallible,
    Future = std::future::Ready<Result<Resp, Infallible>>,
> + Clone {
    tower::service_fn(|r: Req| {
        std::future::ready(Ok(Resp {
            version: 1_000 + r.key,
        }))
    })
}

fn session_with_scopes(n: u64) -> Session {
    let s = Session::new();
    s.with_state(|st| {
        for k in 0..n {
            st.advance(ScopeKey::from_hash(common::STORE, k), Version::new(900 + k));
        }
    });
    s
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
