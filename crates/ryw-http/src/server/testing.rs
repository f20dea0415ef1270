//! What the server's tests share: a layer with the cookie transport, handlers that echo or
//! advance the session, and the tokens and requests they are called with.

use super::exchange::TokenStatus;
use super::layer::ServerSessionLayer;
use crate::headers::DEFAULT_HEADER;
use http::{Request, Response};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::Session;
use std::sync::Arc;

pub(super) fn layer() -> (ServerSessionLayer, Arc<TokenAuthority>) {
    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
    (
        ServerSessionLayer::new(authority.clone()).cookie("sid"),
        authority,
    )
}

pub(super) async fn echo_session(
    request: Request<String>,
) -> Result<Response<String>, std::convert::Infallible> {
    let session = request.extensions().get::<Session>().unwrap();
    let status = request.extensions().get::<TokenStatus>().unwrap();
    Ok(Response::new(format!("{} {status:?}", session.id())))
}

/// A handler that advances the session by `?advance` (a write), or leaves it alone.
pub(super) async fn maybe_write(
    request: Request<String>,
) -> Result<Response<String>, std::convert::Infallible> {
    let session = request.extensions().get::<Session>().unwrap();
    if request.uri().query() == Some("advance") {
        session.with_state(|s| s.next_write(ryw::signing::now_secs() * 1_000_000));
    }
    Ok(Response::new(String::new()))
}

pub(super) fn header_token<B>(response: &Response<B>) -> String {
    response.headers()[DEFAULT_HEADER]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A token of a new session, issued `secs` ago (so a token re-issued now is another text).
pub(super) fn issued_ago(authority: &TokenAuthority, secs: u64) -> String {
    authority
        .issue_at(
            &Session::new().snapshot(),
            None,
            ryw::signing::now_secs() - secs,
        )
        .unwrap()
}

pub(super) fn call_with(token: Option<&str>, uri: &str) -> Request<String> {
    let mut request = Request::builder().uri(uri);
    if let Some(token) = token {
        request = request.header(DEFAULT_HEADER, token);
    }
    request.body(String::new()).unwrap()
}
