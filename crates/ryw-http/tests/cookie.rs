//! The session cookie: what a malformed `Cookie` header gets, and the attributes of the
//! `Set-Cookie` the server layer writes.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::Session;
use ryw_http::{SameSite, ServerSessionLayer, TokenStatus, REJECTED_HEADER};
use std::convert::Infallible;
use std::sync::Arc;
use tower::{service_fn, Layer, ServiceExt};

fn authority() -> Arc<TokenAuthority> {
    Arc::new(TokenAuthority::new(SigningKey::new(1, [7u8; 32]).unwrap()))
}

/// Serves one request with these `Cookie` headers through `layer`; the body is the session's
/// [`TokenStatus`].
async fn serve(layer: &ServerSessionLayer, cookies: &[&[u8]]) -> Response<String> {
    let service = layer.layer(service_fn(|request: Request<String>| async move {
        let status = request.extensions().get::<TokenStatus>().unwrap().clone();
        Ok::<_, Infallible>(Response::new(format!("{status:?}")))
    }));
    let mut request = Request::new(String::new());
    for cookie in cookies {
        let value = HeaderValue::from_bytes(cookie).unwrap();
        request.headers_mut().append(COOKIE, value);
    }
    service.oneshot(request).await.unwrap()
}

/// What a request's cookies got.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Served in a new session: no token was read.
    New,
    /// Served in the session of the token read.
    Continued,
    /// Refused (400), the cookie cleared.
    Refused,
}

fn outcome(response: &Response<String>) -> Outcome {
    if response.status() == StatusCode::BAD_REQUEST {
        let cleared = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            cleared.starts_with("sid=;") && cleared.contains("Max-Age=0"),
            "{cleared}"
        );
        assert_eq!(response.headers()[REJECTED_HEADER], "token_not_base64");
        return Outcome::Refused;
    }
    assert_eq!(response.status(), StatusCode::OK);
    match response.body().as_str() {
        "New" => Outcome::New,
        "Continued" => Outcome::Continued,
        other => panic!("unexpected status {other}"),
    }
}

#[tokio::test]
async fn a_malformed_cookie_header_is_no_token_or_is_refused() {
    let authority = authority();
    let layer = ServerSessionLayer::new(authority.clone()).cookie("sid");
    let token = authority.issue(&Session::new().snapshot(), None).unwrap();
    let good = format!("sid={token}");
    let quoted = format!("sid=\"{token}\"");
    let empty_first = format!("sid=; sid={token}");
    let garbage_first = format!("sid=garbage; sid={token}");
    let good_first = format!("sid={token}; sid=garbage");
    let not_ascii = format!("sid={token}\u{e9}");
    let spaced = format!(" sid = {token} ");
    use Outcome::*;
    let cases: [(&[&[u8]], Outcome); 23] = [
        // Empty and blank.
        (&[b""], New),
        (&[b"   "], New),
        (&[b";;;"], New),
        (&[b"sid="], New),
        (&[b"sid=\"\""], New),
        // Garbage: no pair of that name.
        (&[b"sid"], New),
        (&[b"=sid"], New),
        (&[b"==="], New),
        (&[b"%%%; ;=; sid; ;"], New),
        (&[b"SID=x; sidx=y; xsid=z"], New),
        // A pair of that name that is not a token.
        (&[b"sid=garbage"], Refused),
        (&[b"theme=dark; sid=#!$%"], Refused),
        // Duplicated names: the first one counts, even empty.
        (&[empty_first.as_bytes()], New),
        (&[garbage_first.as_bytes()], Refused),
        (&[good_first.as_bytes()], Continued),
        (&[b"theme=dark", good.as_bytes()], Continued),
        (&[b"sid=garbage", good.as_bytes()], Refused),
        // Not visible ASCII: the whole header is skipped, and the others are still read.
        (&[b"sid=\xff\xfe"], New),
        (&[not_ascii.as_bytes()], New),
        (&[b"\xff=\xff", good.as_bytes()], Continued),
        // Well formed.
        (&[good.as_bytes()], Continued),
        (&[quoted.as_bytes()], Continued),
        // Whitespace around the `=` belongs to neither the name nor the value.
        (&[spaced.as_bytes()], Continued),
    ];
    for (cookies, expected) in cases {
        let response = serve(&layer, cookies).await;
        let shown: Vec<_> = cookies.iter().map(|c| String::from_utf8_lossy(c)).collect();
        assert_eq!(outcome(&response), expected, "{shown:?}");
    }
}

/// The attributes of the `Set-Cookie` of a new session's first response through `layer`: what
/// follows the `sid=token` pair (whose token verifies).
async fn first_cookie(authority: &TokenAuthority, layer: &ServerSessionLayer) -> String {
    let response = serve(layer, &[]).await;
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    let (pair, attributes) = set_cookie.split_once("; ").unwrap();
    let token = pair.strip_prefix("sid=").unwrap();
    assert!(authority.verify(token, None).is_ok(), "{set_cookie}");
    attributes.to_owned()
}

#[tokio::test]
async fn each_cookie_option_shows_in_set_cookie() {
    let authority = authority();
    let ttl = authority.ttl().as_secs();
    let layer = || ServerSessionLayer::new(authority.clone());
    let cases = [
        (
            "defaults",
            layer().cookie("sid"),
            format!("HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age={ttl}"),
        ),
        (
            "domain",
            layer().cookie("sid").cookie_domain("example.com"),
            format!("HttpOnly; SameSite=Lax; Secure; Path=/; Domain=example.com; Max-Age={ttl}"),
        ),
        (
            "path",
            layer().cookie("sid").cookie_path("/app"),
            format!("HttpOnly; SameSite=Lax; Secure; Path=/app; Max-Age={ttl}"),
        ),
        (
            "strict",
            layer().cookie("sid").cookie_same_site(SameSite::Strict),
            format!("HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age={ttl}"),
        ),
        (
            "same site none",
            layer().cookie("sid").cookie_same_site(SameSite::None),
            format!("HttpOnly; SameSite=None; Secure; Path=/; Max-Age={ttl}"),
        ),
        (
            "not secure",
            layer().cookie("sid").cookie_secure(false),
            format!("HttpOnly; SameSite=Lax; Path=/; Max-Age={ttl}"),
        ),
        (
            "insecure_cookie",
            layer().cookie("sid").insecure_cookie(),
            format!("HttpOnly; SameSite=Lax; Path=/; Max-Age={ttl}"),
        ),
        (
            "secure again",
            layer().cookie("sid").insecure_cookie().cookie_secure(true),
            format!("HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age={ttl}"),
        ),
        (
            "options before the name",
            layer()
                .cookie_path("/app")
                .cookie_domain("example.com")
                .cookie_same_site(SameSite::Strict)
                .insecure_cookie()
                .cookie("sid"),
            format!("HttpOnly; SameSite=Strict; Path=/app; Domain=example.com; Max-Age={ttl}"),
        ),
    ];
    for (name, layer, expected) in cases {
        assert_eq!(first_cookie(&authority, &layer).await, expected, "{name}");
    }
    // Without the cookie transport, the options set no cookie.
    let response = serve(&layer().cookie_domain("example.com"), &[]).await;
    assert!(response.headers().get(SET_COOKIE).is_none());
}

#[tokio::test]
async fn a_refused_cookie_is_cleared_with_the_same_domain_and_path() {
    // A browser deletes a cookie only with a `Set-Cookie` of the same name, domain and path.
    let layer = ServerSessionLayer::new(authority())
        .cookie("sid")
        .cookie_domain("example.com")
        .cookie_path("/app");
    let response = serve(&layer, &[b"sid=garbage"]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()[SET_COOKIE],
        "sid=; HttpOnly; SameSite=Lax; Secure; Path=/app; Domain=example.com; Max-Age=0"
    );
}
