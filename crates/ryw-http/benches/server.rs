//! What [`ServerSessionLayer`] adds to a request, next to the cost of one HMAC-SHA256 over a
//! 4-scope token measured in the same run.
//!
//! `cargo bench -p ryw-http --bench server && python3 crates/ryw-http/benches/ratios.py`
//!
//! Every case calls the same trivial handler; `bare handler` calls it without the layer. The
//! token is a 4-scope session token in the request header, as a returning client sends it:
//!
//! - `continue unchanged`: the request leaves the session as it found it (a read that learns
//!   nothing new). The token verified before is answered from the cache and sent back as it came.
//! - `continue unchanged, no cache`: the same with the verified-token cache off: one verification.
//! - `advance`: the handler writes (the session's write sequence moves on), so a new token is
//!   signed; the client sends the token of the previous response, as a client does.
//! - `advance, no cache`: the same with the cache off: one verification and one signature.
//! - `new session`: no token; a session is created and its first token signed.

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response};
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::version::{ScopeKey, StoreId};
use ryw::{Session, SessionId, SessionState, Version};
use ryw_http::{ServerSessionLayer, DEFAULT_HEADER};
use sha2::Sha256;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tower::{service_fn, Layer, Service};

fn state(scopes: u64) -> SessionState {
    let mut s = SessionState::new(SessionId::random());
    for i in 0..scopes {
        s.advance(
            ScopeKey::new(StoreId::new(1), format!("partition/{i}").as_bytes()),
            Version::new(1_764_000_000_000_000 + i * 3_517),
        );
    }
    s
}

/// Polls a future that never waits (every service here is ready at once).
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the benchmarked services never wait"),
    }
}

async fn handler(request: Request<String>) -> Result<Response<String>, Infallible> {
    if request.uri().path() == "/write" {
        if let Some(session) = request.extensions().get::<Session>() {
            session.with_state(|s| s.next_write(1_764_000_000_000_000));
        }
    }
    Ok(Response::new(String::new()))
}

fn request(path: &str, token: Option<&str>) -> Request<String> {
    let mut builder = Request::builder().uri(path);
    if let Some(token) = token {
        builder = builder.header(DEFAULT_HEADER, token);
    }
    builder.body(String::new()).unwrap()
}

fn authority(cache: usize) -> Arc<TokenAuthority> {
    Arc::new(
        TokenAuthority::new(KeyRing::new(SigningKey::new(1, [0x5a; 32]).unwrap()))
            .verified_cache(cache),
    )
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("server");

    // The unit: one HMAC-SHA256 over the signed bytes of a 4-scope token, from a keyed state
    // prepared once (as the authority keeps it).
    let s = state(4);
    let token = authority(0).issue(&s, None).unwrap();
    let bytes = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap()
    };
    let signed = &bytes[..bytes.len() - 32];
    println!(
        "4-scope token: {} characters, {} signed bytes",
        token.len(),
        signed.len()
    );
    let keyed = Hmac::<Sha256>::new_from_slice(&[0x5a; 32]).unwrap();
    group.bench_function("one HMAC-SHA256 over a 4-scope token", |b| {
        b.iter(|| {
            let mut mac = keyed.clone();
            mac.update(black_box(signed));
            black_box(mac.finalize().into_bytes())
        })
    });

    let mut bare = service_fn(handler);
    group.bench_function("bare handler", |b| {
        b.iter(|| now(bare.call(black_box(request("/", Some(&token))))).unwrap())
    });

    for (name, cache) in [("", 16_384), (", no cache", 0)] {
        let authority = authority(cache);
        let mut served = ServerSessionLayer::new(authority.clone()).layer(service_fn(handler));
        let token = authority.issue(&s, None).unwrap();
        // Once, as the request that brought this token would have verified it.
        authority.verify(&token, None).unwrap();
        group.bench_function(format!("continue unchanged{name}"), |b| {
            b.iter(|| {
                let response = now(served.call(request("/", Some(&token)))).unwrap();
                debug_assert_eq!(response.headers()[DEFAULT_HEADER], token.as_str());
                black_box(response)
            })
        });

        let mut latest = token.clone();
        group.bench_function(format!("advance{name}"), |b| {
            b.iter(|| {
                let response = now(served.call(request("/write", Some(&latest)))).unwrap();
                latest = response.headers()[DEFAULT_HEADER]
                    .to_str()
                    .unwrap()
                    .to_owned();
                black_box(response)
            })
        });
    }

    let authority = authority(16_384);
    let mut served = ServerSessionLayer::new(authority).layer(service_fn(handler));
    group.bench_function("new session", |b| {
        b.iter(|| black_box(now(served.call(request("/", None))).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
