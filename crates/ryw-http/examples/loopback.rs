//! A trivial axum app on loopback, bare and behind [`ServerSessionLayer`], for measuring what the
//! layer costs under load (`crates/ryw-http/benches/loopback.sh` drives it with `wrk`).
//!
//! ```text
//! cargo run --release -p ryw-http --example loopback -- 127.0.0.1:8081 127.0.0.1:8082
//! ```
//!
//! The first address serves the bare app, the second the same app behind the layer. Both answer
//! `GET /` with `ok` and `GET /write` by advancing the session (a write, as far as the token is
//! concerned), and print one line when they listen.

use axum::routing::get;
use axum::{Extension, Router};
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::Session;
use ryw_http::ServerSessionLayer;
use std::sync::Arc;

async fn ok() -> &'static str {
    "ok"
}

async fn write(session: Option<Extension<Session>>) -> &'static str {
    if let Some(Extension(session)) = session {
        session.with_state(|s| s.next_write(ryw::signing::now_secs() * 1_000_000));
    }
    "ok"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bare_addr = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let layered_addr = args.next().unwrap_or_else(|| "127.0.0.1:8082".into());
    let app = || {
        Router::new()
            .route("/", get(ok))
            .route("/write", get(write))
    };

    let authority = Arc::new(TokenAuthority::new(KeyRing::new(SigningKey::new(
        1, [0x5a; 32],
    )?)));
    let layered = app().layer(ServerSessionLayer::new(authority));

    let bare_listener = tokio::net::TcpListener::bind(&bare_addr).await?;
    let layered_listener = tokio::net::TcpListener::bind(&layered_addr).await?;
    println!("bare on {bare_addr}, layered on {layered_addr}");
    let bare = tokio::spawn(async move { axum::serve(bare_listener, app()).await });
    axum::serve(layered_listener, layered).await?;
    bare.await??;
    Ok(())
}
