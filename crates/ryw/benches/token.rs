//! Token encode and decode, unsigned for 1-, 4- and 16-scope sessions; signed (sign + encode,
//! decode + verify with a bound principal and the default revocation list) for 4 scopes.
//!
//! `cargo bench -p ryw --bench token`

use criterion::{criterion_group, criterion_main, Criterion};
use ryw::clock::HybridTimestamp;
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::version::{ScopeKey, StoreId};
use ryw::{SessionId, SessionState, SessionToken, Version};
use std::hint::black_box;

fn state(scopes: u64) -> SessionState {
    // Scylla-like versions: microsecond timestamps a few milliseconds apart.
    let mut s = SessionState::new(SessionId::random());
    for i in 0..scopes {
        s.advance(
            ScopeKey::new(StoreId::new(1), format!("partition/{i}").as_bytes()),
            Version::new(1_764_000_000_000_000 + i * 3_517),
        );
    }
    let v = s.vector().clone();
    SessionState::from_parts(s.id(), 12, HybridTimestamp::new(1_764_000_000_100_000), v)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("token");
    for scopes in [1u64, 4, 16] {
        let token = SessionToken::new(state(scopes));
        let encoded = token.encode().unwrap();
        println!("{scopes}-scope token: {} characters", encoded.len());
        group.bench_function(format!("encode {scopes} scopes"), |b| {
            b.iter(|| black_box(black_box(&token).encode().unwrap()))
        });
        group.bench_function(format!("decode {scopes} scopes"), |b| {
            b.iter(|| black_box(SessionToken::decode(black_box(&encoded)).unwrap()))
        });
    }
    let authority = TokenAuthority::new(
        KeyRing::new(SigningKey::new(2, [0x5a; 32]).unwrap())
            .with_previous(SigningKey::new(1, [0xa5; 32]).unwrap())
            .unwrap(),
    );
    let s = state(4);
    let signed = authority.issue(&s, None).unwrap();
    let bound = authority.issue(&s, Some(b"user:1234")).unwrap();
    println!(
        "4-scope signed token: {} characters ({} bound to a principal)",
        signed.len(),
        bound.len()
    );
    group.bench_function("sign+encode 4 scopes", |b| {
        b.iter(|| black_box(authority.issue(black_box(&s), None).unwrap()))
    });
    group.bench_function("decode+verify 4 scopes", |b| {
        b.iter(|| black_box(authority.verify(black_box(&signed), None).unwrap()))
    });
    group.bench_function("sign+encode 4 scopes bound", |b| {
        b.iter(|| black_box(authority.issue(black_box(&s), Some(b"user:1234")).unwrap()))
    });
    group.bench_function("decode+verify 4 scopes bound", |b| {
        b.iter(|| {
            black_box(
                authority
                    .verify(black_box(&bound), Some(b"user:1234"))
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
