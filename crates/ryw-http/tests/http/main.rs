//! End to end through real HTTP on loopback: two axum instances of the web example's application
//! (`examples/web/app.rs`) that share nothing but the signing key and the store, and a hyper
//! client with [`ClientSessionLayer`].
//!
//! The store is the simulated one, in real time: each instance reads its own replica, which lags
//! the primary by 3 s (long enough that a loaded CI machine never sees it catch up mid-test), so
//! a read through the other instance right after a write is stale unless the session fences it.

// The app has a DynamoDB store behind the root package's `dynamodb` feature, unknown here.
#[allow(unexpected_cfgs)]
#[path = "../../../../examples/web/app.rs"]
mod app;

use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::{ReadYourWritesLayer, Session, SessionToken};
use ryw_http::{
    BadTokenPolicy, ClientSessionLayer, DEFAULT_HEADER, MAX_TOKENS_PER_REQUEST, REJECTED_HEADER,
    RESET_HEADER,
};
use ryw_sim::{LagModel, LatencyModel, SimAdapter, SimConfig, SimStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

const SECRET_1: [u8; 32] = [0x11; 32];
const SECRET_2: [u8; 32] = [0x22; 32];

struct Deployment {
    a: SocketAddr,
    b: SocketAddr,
    /// Instance A's authority (B has its own, with the same keys).
    authority_a: Arc<TokenAuthority>,
    authority_b: Arc<TokenAuthority>,
    store: SimStore,
}

fn authority() -> Arc<TokenAuthority> {
    Arc::new(
        TokenAuthority::new(KeyRing::new(SigningKey::new(1, SECRET_1).unwrap()))
            .token_ttl(Duration::from_secs(600))
            .leeway(Duration::ZERO),
    )
}

async fn deploy(policy: BadTokenPolicy) -> Deployment {
    let store = SimStore::new(
        SimConfig::default()
            .seed(11)
            .replicas(2)
            .lag(LagModel::new(Duration::from_secs(3), Duration::ZERO))
            .latency(LatencyModel {
                replica: Duration::from_millis(1),
                primary: Duration::from_millis(2),
                jitter: Duration::ZERO,
            }),
    );
    let instance = |i: usize, authority: Arc<TokenAuthority>| {
        let service = ServiceBuilder::new()
            .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
            .service(store.client(i));
        app::router(app::sim_posts(service), authority, policy, None)
    };
    let (authority_a, authority_b) = (authority(), authority());
    let a = app::serve(instance(0, authority_a.clone())).await.unwrap();
    let b = app::serve(instance(1, authority_b.clone())).await.unwrap();
    Deployment {
        a,
        b,
        authority_a,
        authority_b,
        store,
    }
}

type Http = Client<HttpConnector, String>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn send<S>(client: &mut S, request: http::Request<String>) -> Reply
where
    S: Service<
        http::Request<String>,
        Response = http::Response<hyper::body::Incoming>,
        Error = hyper_util::client::legacy::Error,
    >,
{
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn put(addr: SocketAddr, id: &str, value: u64) -> http::Request<String> {
    http::Request::put(format!("http://{addr}/posts/{id}"))
        .body(value.to_string())
        .unwrap()
}

fn get(addr: SocketAddr, id: &str) -> http::Request<String> {
    http::Request::get(format!("http://{addr}/posts/{id}"))
        .body(String::new())
        .unwrap()
}

fn with_token(mut request: http::Request<String>, token: &str) -> http::Request<String> {
    request
        .headers_mut()
        .insert(DEFAULT_HEADER, token.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_across_instances() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let session = ClientSessionLayer::new();
    let mut client = ServiceBuilder::new().layer(session.clone()).service(http());

    let wrote = send(&mut client, put(d.a, "1", 41)).await;
    assert_eq!(wrote.status, 200, "{}", wrote.body);
    assert_eq!(session.tokens().len(), 1);

    // Through the other instance, whose replica has not caught up: the fence makes it seen.
    let read = send(&mut client, get(d.b, "1")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(read.body.starts_with("{\"value\":41,"), "{}", read.body);
    assert!(read.body.contains("guaranteed"), "{}", read.body);

    // Control: a client without the token reads the stale replica through the same instance.
    let mut stranger = http();
    let stale = send(&mut stranger, get(d.b, "1")).await;
    assert!(stale.body.starts_with("{\"value\":null,"), "{}", stale.body);

    // The token the client holds was re-issued by B and still carries the write.
    let token = &session.tokens()[0];
    let state = d.authority_a.verify(token, None).unwrap().into_state();
    assert!(state.write_seq() >= 1);
    assert_eq!(state.vector().len(), 1);
    assert!(d.store.log().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_merge_instead_of_last_completed_wins() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let session = ClientSessionLayer::new();
    let client = ServiceBuilder::new().layer(session.clone()).service(http());
    // Establish the session first, then write two posts at once through both instances.
    send(&mut client.clone(), get(d.a, "0")).await;
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (r1, r2) = tokio::join!(
        send(&mut c1, put(d.a, "x", 1)),
        send(&mut c2, put(d.b, "y", 2))
    );
    assert_eq!((r1.status, r2.status), (200, 200));
    // Each response carries only its own write: the client keeps both tokens.
    assert_eq!(session.tokens().len(), 2, "neither token covers the other");

    // The next request sends both; the server merges; one token comes back.
    let mut client = client;
    let x = send(&mut client, get(d.b, "x")).await;
    assert_eq!(session.tokens().len(), 1);
    let y = send(&mut client, get(d.a, "y")).await;
    assert!(x.body.starts_with("{\"value\":1,"), "{}", x.body);
    assert!(y.body.starts_with("{\"value\":2,"), "{}", y.body);
    let state = d
        .authority_b
        .verify(&session.tokens()[0], None)
        .unwrap()
        .into_state();
    assert_eq!(state.vector().len(), 2, "posts x and y");
    // Both writes landed, each once, under two different write ids.
    let log = d.store.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_ne!(log[0].write_id, log[1].write_id);
}

/// Tampers with a token's bytes and re-encodes it.
fn altered(token: &str, at: usize) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = engine.decode(token).unwrap();
    bytes[at] ^= 0x01;
    engine.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_gets_its_status_and_body() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let mut client = http();
    let good = d
        .authority_a
        .issue(&Session::new().snapshot(), Some(b"alice"))
        .unwrap();
    let expired = d
        .authority_a
        .issue_at(
            &Session::new().snapshot(),
            None,
            ryw::signing::now_secs() - 601,
        )
        .unwrap();
    let revoked_session = Session::new();
    let revoked = d
        .authority_a
        .issue(&revoked_session.snapshot(), None)
        .unwrap();
    d.authority_b
        .revocations()
        .unwrap()
        .revoke_session(revoked_session.id());
    let unsigned = SessionToken::new(Session::new().snapshot())
        .encode()
        .unwrap();
    let mut unknown_version = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut bytes = engine.decode(&good).unwrap();
        bytes[0] = 7;
        engine.encode(bytes)
    };
    unknown_version.push_str("");
    let too_many = vec![good.clone(); MAX_TOKENS_PER_REQUEST + 1].join(",");

    let cases: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        // (what, token, user, status, code)
        (
            "tampered",
            altered(&good, 20),
            Some("alice"),
            401,
            "token_bad_signature",
        ),
        ("expired", expired, None, 401, "token_expired"),
        ("revoked", revoked, None, 401, "token_revoked"),
        (
            "another principal's",
            good.clone(),
            Some("mallory"),
            401,
            "token_wrong_principal",
        ),
        (
            "anonymous use of a bound token",
            good.clone(),
            None,
            401,
            "token_wrong_principal",
        ),
        ("unsigned", unsigned, None, 401, "token_unsigned"),
        ("oversized", "A".repeat(2000), None, 400, "token_oversized"),
        (
            "truncated",
            good[..40].to_owned(),
            Some("alice"),
            400,
            "token_truncated",
        ),
        (
            "not base64",
            "not*base64".to_owned(),
            None,
            400,
            "token_not_base64",
        ),
        (
            "unknown format version",
            unknown_version,
            None,
            400,
            "token_unknown_version",
        ),
        (
            "too many tokens",
            too_many,
            Some("alice"),
            400,
            "token_too_many",
        ),
    ];
    for (what, token, user, status, code) in cases {
        let mut request = with_token(get(d.b, "1"), &token);
        if let Some(user) = user {
            request
                .headers_mut()
                .insert("x-user", user.parse().unwrap());
        }
        let reply = send(&mut client, request).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(
            reply
                .body
                .starts_with(&format!("{{\"error\":\"{code}\",\"message\":\"")),
            "{what}: {}",
            reply.body
        );
        assert_eq!(reply.headers[REJECTED_HEADER], code, "{what}");
        assert!(!reply.headers.contains_key(DEFAULT_HEADER), "{what}");
    }

    // The good token, presented by its principal, passes.
    let mut request = with_token(get(d.b, "1"), &good);
    request
        .headers_mut()
        .insert("x-user", "alice".parse().unwrap());
    let reply = send(&mut client, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The re-issued token is still bound to alice.
    let reissued = reply.headers[DEFAULT_HEADER].to_str().unwrap();
    assert!(d.authority_a.verify(reissued, Some(b"alice")).is_ok());
    assert!(d.authority_a.verify(reissued, Some(b"bob")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fresh_policy_serves_the_request_and_says_so() {
    let d = deploy(BadTokenPolicy::StartFresh).await;
    let session = ClientSessionLayer::new();
    let mut client = ServiceBuilder::new().layer(session.clone()).service(http());
    send(&mut client, put(d.a, "1", 5)).await;
    let held = session.tokens()[0].clone();

    let request = with_token(get(d.b, "1"), &altered(&held, 20));
    let reply = send(&mut client, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers[RESET_HEADER], "token_bad_signature");
    let fresh = reply.headers[DEFAULT_HEADER].to_str().unwrap();
    let fresh_id = d.authority_b.verify(fresh, None).unwrap().state().id();
    let old_id = d.authority_b.verify(&held, None).unwrap().state().id();
    assert_ne!(fresh_id, old_id, "a new session");
    // The client dropped what the server refused and kept the fresh token only.
    assert_eq!(session.tokens(), vec![fresh.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_keeps_old_tokens_valid_until_retired() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let mut client = http();
    let old = send(&mut client, put(d.a, "1", 9)).await.headers[DEFAULT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();

    // Both instances rotate to key 2 (in production: one deploy after another).
    for authority in [&d.authority_a, &d.authority_b] {
        authority
            .rotate(SigningKey::new(2, SECRET_2).unwrap())
            .unwrap();
    }
    let reply = send(&mut client, with_token(get(d.b, "1"), &old)).await;
    assert_eq!(reply.status, 200, "old token still valid: {}", reply.body);
    assert!(reply.body.starts_with("{\"value\":9,"), "{}", reply.body);
    let new = reply.headers[DEFAULT_HEADER].to_str().unwrap().to_owned();
    let signed_by = d.authority_b.verify(&new, None).unwrap();
    assert_eq!(
        signed_by.signature().unwrap().key_id,
        2,
        "re-issued with the new key"
    );

    for authority in [&d.authority_a, &d.authority_b] {
        assert!(authority.retire(1));
    }
    let reply = send(&mut client, with_token(get(d.b, "1"), &old)).await;
    assert_eq!(reply.status, 401);
    assert!(reply.body.contains("token_unknown_key"), "{}", reply.body);
    let reply = send(&mut client, with_token(get(d.a, "1"), &new)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn as_user(mut request: http::Request<String>, user: &str) -> http::Request<String> {
    request
        .headers_mut()
        .insert("x-user", user.parse().unwrap());
    request
}

fn token_of(reply: &Reply) -> String {
    reply.headers[DEFAULT_HEADER].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_session_meeting_a_user_moves_to_a_new_id() {
    // Session fixation: mallory plants her anonymous token on alice; alice writes with it. Before,
    // alice continued mallory's session id, and mallory, replaying her own token at the same
    // instance, had alice's state merged back into hers by the instance's session store.
    let d = deploy(BadTokenPolicy::Reject).await;
    let mut client = http();
    let mallory = token_of(&send(&mut client, get(d.a, "welcome")).await);
    let mallory_id = d.authority_a.verify(&mallory, None).unwrap().state().id();

    let alice = send(
        &mut client,
        as_user(
            with_token(put(d.a, "alice-private-7", 7), &mallory),
            "alice",
        ),
    )
    .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let alice_token = token_of(&alice);
    let alice_state = d
        .authority_a
        .verify(&alice_token, Some(b"alice"))
        .unwrap()
        .into_state();
    assert_ne!(
        alice_state.id(),
        mallory_id,
        "the planted id is not continued"
    );
    assert_eq!(alice_state.vector().len(), 1, "alice keeps her fence");

    // Mallory replays her token: nothing of alice's comes back with it.
    let replay = send(&mut client, with_token(get(d.a, "welcome"), &mallory)).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    let mallory_state = d
        .authority_a
        .verify(&token_of(&replay), None)
        .unwrap()
        .into_state();
    assert_eq!(mallory_state.id(), mallory_id);
    assert!(
        !mallory_state.vector().dominates(alice_state.vector()),
        "alice's write is not in mallory's session"
    );
    assert_eq!(mallory_state.write_seq(), 0);

    // A stranger's unbound token sent along with alice's: neither id is continued.
    let stranger = token_of(&send(&mut client, get(d.b, "welcome")).await);
    let mut both = as_user(get(d.a, "alice-private-7"), "alice");
    both.headers_mut()
        .append(DEFAULT_HEADER, stranger.parse().unwrap());
    both.headers_mut()
        .append(DEFAULT_HEADER, alice_token.parse().unwrap());
    let reply = send(&mut client, both).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let merged = d
        .authority_a
        .verify(&token_of(&reply), Some(b"alice"))
        .unwrap()
        .into_state();
    let stranger_id = d.authority_a.verify(&stranger, None).unwrap().state().id();
    assert_ne!(merged.id(), stranger_id);
    assert_ne!(merged.id(), alice_state.id());
    assert!(
        merged.vector().dominates(alice_state.vector()),
        "alice's fence is kept"
    );

    // Alice's own bound token continues her session id.
    let again = send(
        &mut client,
        as_user(
            with_token(get(d.a, "alice-private-7"), &token_of(&reply)),
            "alice",
        ),
    )
    .await;
    let continued = d
        .authority_a
        .verify(&token_of(&again), Some(b"alice"))
        .unwrap()
        .into_state();
    assert_eq!(continued.id(), merged.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_changes_nothing_keeps_its_token_and_a_cached_token_is_still_revocable() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let mut client = http();
    let wrote = send(&mut client, put(d.a, "1", 5)).await;
    assert_eq!(wrote.status, 200, "{}", wrote.body);
    let token = token_of(&wrote);

    // Reads at the instance that wrote: the session learns nothing new, and the token it came
    // with is the one it leaves with (verified once, then from the cache; never re-signed).
    for _ in 0..3 {
        let read = send(&mut client, with_token(get(d.a, "1"), &token)).await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert!(read.body.starts_with("{\"value\":5,"), "{}", read.body);
        assert_eq!(token_of(&read), token, "unchanged session, same token");
    }
    // A write moves it on.
    let wrote = send(&mut client, with_token(put(d.a, "2", 6), &token)).await;
    assert_ne!(token_of(&wrote), token);

    // Revoked at A: the very text A verified (and cached) is refused from then on.
    d.authority_a
        .revocations()
        .unwrap()
        .revoke_session(d.authority_a.verify(&token, None).unwrap().state().id());
    let refused = send(&mut client, with_token(get(d.a, "1"), &token)).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("token_revoked"), "{}", refused.body);
    let refused = send(&mut client, with_token(get(d.a, "1"), &token_of(&wrote))).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_says_whether_it_reflects_the_session_in_a_header() {
    let d = deploy(BadTokenPolicy::Reject).await;
    let session = ClientSessionLayer::new();
    let mut client = ServiceBuilder::new().layer(session.clone()).service(http());
    let wrote = send(&mut client, put(d.a, "v", 7)).await;
    assert_eq!(wrote.status, 200, "{}", wrote.body);

    // Through the other instance, whose replica lags: guaranteed, by the strong path.
    let read = send(&mut client, get(d.b, "v")).await;
    assert_eq!(
        read.headers[ryw_http::VISIBILITY_HEADER],
        "guaranteed; path=escalated",
        "{}",
        read.body
    );
    // A session with nothing to fence reads cheaply, and says so.
    let mut stranger = http();
    let read = send(&mut stranger, get(d.b, "v")).await;
    assert_eq!(
        read.headers[ryw_http::VISIBILITY_HEADER],
        "guaranteed; path=unfenced"
    );
}
