//! Adversarial tests of `PrincipalRecordsLayer` over HTTP: devices of one principal on two
//! instances that share a simulated store (replica lag 10 s, so a read that is not fenced misses
//! a recent write), token keys, a principal record store and a fingerprint key: outages beyond the
//! token's cap, logins after anonymous writes, concurrent devices and tokens used twice.

#[path = "common/devices.rs"]
mod devices;

use devices::{header, instance, App, Device};
use http::{Method, Response, StatusCode};
use ryw::principal::PrincipalRecords;
use ryw::record::InMemoryRecordStore;
use ryw::signing::{SigningKey, TokenAuthority};
use ryw_http::{PRINCIPAL_HEADER, VISIBILITY_HEADER};
use ryw_sim::{LagModel, SimConfig, SimStore};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};

fn slow_store() -> SimStore {
    SimStore::new(SimConfig::default().replicas(1).lag(LagModel::new(
        Duration::from_secs(10),
        Duration::from_millis(1),
    )))
}

fn version(response: &Response<String>) -> u64 {
    header(response, "x-version").parse().unwrap_or(0)
}

/// The promise on one read response: `guaranteed` means it reflects `wrote`.
#[track_caller]
fn assert_guarantee_holds(what: &str, read: &Response<String>, wrote: u64) {
    let vis = header(read, VISIBILITY_HEADER);
    if vis.starts_with("guaranteed") {
        assert!(
            version(read) >= wrote,
            "{what}: `{vis}` at version {} but the principal wrote version {wrote} in a request \
             whose record append succeeded ({})",
            version(read),
            header(read, PRINCIPAL_HEADER)
        );
    }
}

struct Deployment {
    records: Arc<InMemoryRecordStore>,
    a: App,
    b: App,
}

fn deployment(store: &SimStore) -> Deployment {
    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32]).unwrap()));
    let records = Arc::new(InMemoryRecordStore::new());
    let principals = || {
        Arc::new(PrincipalRecords::new(
            records.clone(),
            SigningKey::new(0, [7u8; 32]).unwrap(),
        ))
    };
    Deployment {
        a: instance(store, authority.clone(), Some(principals())),
        b: instance(store, authority.clone(), Some(principals())),
        records,
    }
}

/// Baseline on the slow store: the laptop on instance B reads the phone's write made on A.
#[tokio::test(start_paused = true)]
async fn baseline_second_device_reflects_the_write() {
    let store = slow_store();
    let mut d = deployment(&store);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    let wrote = phone.send(&mut d.a, Method::PUT, "post").await;
    let read = laptop.send(&mut d.b, Method::GET, "post").await;
    assert_guarantee_holds("laptop", &read, version(&wrote));
    assert!(header(&read, VISIBILITY_HEADER).starts_with("guaranteed"));
}

/// The record store is down while the phone writes 34 items (each response says
/// `advanced=no`). The store recovers; the phone's next request (on instance B, which never
/// served it) says `advanced=N`. Every write of the outage must now fence the laptop.
#[tokio::test(start_paused = true)]
async fn writes_of_an_outage_beyond_the_token_cap_reach_the_record_after_recovery() {
    let store = slow_store();
    let mut d = deployment(&store);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    d.records.set_unavailable(true);
    let mut wrote = Vec::new();
    for i in 0..34 {
        let key = format!("item{i}");
        let r = phone.send(&mut d.a, Method::PUT, &key).await;
        assert_eq!(
            header(&r, PRINCIPAL_HEADER),
            "record=unavailable; advanced=no"
        );
        wrote.push((key, version(&r)));
    }
    d.records.set_unavailable(false);
    let again = phone.send(&mut d.b, Method::GET, "item33").await;
    assert!(
        header(&again, PRINCIPAL_HEADER).contains("advanced="),
        "{}",
        header(&again, PRINCIPAL_HEADER)
    );
    let mut missed = Vec::new();
    for (key, w) in &wrote {
        let read = laptop.send(&mut d.b, Method::GET, key).await;
        if header(&read, VISIBILITY_HEADER).starts_with("guaranteed") && version(&read) < *w {
            missed.push(format!("{key}: {}", header(&read, VISIBILITY_HEADER)));
        }
    }
    assert!(
        missed.is_empty(),
        "after the phone's request appended what it held, the laptop's guaranteed reads missed \
         writes of the outage: {missed:?}"
    );
}

/// Same outage, fewer items than the token's cap: nothing is lost (holds).
#[tokio::test(start_paused = true)]
async fn writes_of_an_outage_within_the_token_cap_reach_the_record_after_recovery() {
    let store = slow_store();
    let mut d = deployment(&store);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    d.records.set_unavailable(true);
    let mut wrote = Vec::new();
    for i in 0..5 {
        let key = format!("item{i}");
        let r = phone.send(&mut d.a, Method::PUT, &key).await;
        wrote.push((key, version(&r)));
    }
    d.records.set_unavailable(false);
    phone.send(&mut d.b, Method::GET, "item0").await;
    for (key, w) in &wrote {
        let read = laptop.send(&mut d.b, Method::GET, key).await;
        assert_guarantee_holds(key, &read, *w);
    }
}

/// An anonymous browser writes 34 items, then logs in as alice (on instance B). The login
/// request is bound to alice and its append succeeds; the enter code says a session "that
/// logged in with what it did before" goes with the append. Does every anonymous write fence
/// alice's laptop? (Beyond the bulleted promise: the writes were made anonymously.)
#[tokio::test(start_paused = true)]
async fn an_anonymous_session_that_logs_in_brings_all_it_wrote() {
    let store = slow_store();
    let mut d = deployment(&store);
    let mut browser = Device::anonymous();
    let mut wrote = Vec::new();
    for i in 0..34 {
        let key = format!("cart{i}");
        let r = browser.send(&mut d.a, Method::PUT, &key).await;
        assert!(header(&r, PRINCIPAL_HEADER).is_empty());
        wrote.push((key, version(&r)));
    }
    browser.user = Some("alice");
    let login = browser.send(&mut d.b, Method::GET, "cart33").await;
    assert_eq!(header(&login, "x-status"), "Cycled");
    assert!(header(&login, PRINCIPAL_HEADER).contains("advanced="));
    let mut laptop = Device::of("alice");
    let mut missed = Vec::new();
    for (key, w) in &wrote {
        let read = laptop.send(&mut d.a, Method::GET, key).await;
        if header(&read, VISIBILITY_HEADER).starts_with("guaranteed") && version(&read) < *w {
            missed.push(key.clone());
        }
    }
    assert!(
        missed.is_empty(),
        "writes the browser made before logging in were not carried to alice's record: {missed:?}"
    );
}

/// One token on two devices at once (copied), two requests in flight together on one instance,
/// each writes; a third device sees both.
#[tokio::test(start_paused = true)]
async fn one_token_on_two_devices_at_once() {
    let store = slow_store();
    let mut d = deployment(&store);
    let mut phone = Device::of("alice");
    phone.send(&mut d.a, Method::PUT, "seed").await;
    let tablet = Device {
        user: Some("alice"),
        token: phone.token.clone(),
    };
    let (mut s1, mut s2) = (d.a.clone(), d.a.clone());
    let (r1, r2) = tokio::join!(
        async {
            s1.ready()
                .await
                .unwrap()
                .call(phone.request(Method::PUT, "p"))
                .await
                .unwrap()
        },
        async {
            s2.ready()
                .await
                .unwrap()
                .call(tablet.request(Method::PUT, "t"))
                .await
                .unwrap()
        },
    );
    assert!(header(&r1, PRINCIPAL_HEADER).contains("advanced="));
    assert!(header(&r2, PRINCIPAL_HEADER).contains("advanced="));
    let mut laptop = Device::of("alice");
    let read = laptop.send(&mut d.b, Method::GET, "p").await;
    assert_guarantee_holds("p", &read, version(&r1));
    let read = laptop.send(&mut d.b, Method::GET, "t").await;
    assert_guarantee_holds("t", &read, version(&r2));
}

/// Two devices alternate on two instances, each reading what the other just wrote: every read is
/// guaranteed and reflects the completed write.
#[tokio::test(start_paused = true)]
async fn two_devices_interleaving_across_instances() {
    let store = slow_store();
    let mut d = deployment(&store);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    for round in 0..5 {
        let key = format!("k{round}");
        let (writer, reader, wa, rb) = if round % 2 == 0 {
            (&mut phone, &mut laptop, &mut d.a, &mut d.b)
        } else {
            (&mut laptop, &mut phone, &mut d.b, &mut d.a)
        };
        let w = writer.send(wa, Method::PUT, &key).await;
        let r = reader.send(rb, Method::GET, &key).await;
        assert_guarantee_holds(&key, &r, version(&w));
        assert!(header(&r, VISIBILITY_HEADER).starts_with("guaranteed"));
    }
}

/// The empty principal is a principal: its token is refused to an anonymous request and to
/// alice, and its record is its own.
#[tokio::test(start_paused = true)]
async fn the_empty_principal_is_bound_and_isolated() {
    let store = slow_store();
    let mut d = deployment(&store);
    let mut empty = Device::of("");
    let wrote = empty.send(&mut d.a, Method::PUT, "e").await;
    assert!(
        header(&wrote, PRINCIPAL_HEADER).contains("advanced="),
        "the empty principal is not bound: {:?}",
        header(&wrote, PRINCIPAL_HEADER)
    );
    let mut anonymous = Device {
        user: None,
        token: empty.token.clone(),
    };
    let refused = anonymous.send(&mut d.b, Method::GET, "e").await;
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let mut alice = Device {
        user: Some("alice"),
        token: empty.token.clone(),
    };
    let refused = alice.send(&mut d.b, Method::GET, "e").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // Alice's own record does not require the empty principal's write.
    let mut alice = Device::of("alice");
    let read = alice.send(&mut d.b, Method::GET, "e").await;
    assert_eq!(header(&read, PRINCIPAL_HEADER), "record=0");
    assert_eq!(
        header(&read, VISIBILITY_HEADER),
        "guaranteed; path=unfenced"
    );
}

/// A token issued to alice carries nothing of alice's record to a request without it, and a
/// new anonymous session that logs in as bob does not reach alice's record.
#[tokio::test(start_paused = true)]
async fn logging_in_as_another_principal_reaches_only_that_record() {
    let store = slow_store();
    let mut d = deployment(&store);
    let mut alice = Device::of("alice");
    alice.send(&mut d.a, Method::PUT, "secret").await;
    let mut browser = Device::anonymous();
    browser.send(&mut d.a, Method::GET, "x").await;
    browser.user = Some("bob");
    let read = browser.send(&mut d.b, Method::GET, "secret").await;
    assert_eq!(header(&read, "x-status"), "Cycled");
    assert_eq!(header(&read, PRINCIPAL_HEADER), "record=0");
    assert_eq!(
        header(&read, VISIBILITY_HEADER),
        "guaranteed; path=unfenced"
    );
    assert!(!format!("{:?}", d.records).contains("alice"));
    assert!(!format!("{:?}", d.records).contains("bob"));
}

/// An anonymous session that logs in gets a new session id, even through a cookie-less token
/// merge of two anonymous tokens.
#[tokio::test(start_paused = true)]
async fn login_with_two_anonymous_tokens_cycles_the_id() {
    let store = slow_store();
    let mut d = deployment(&store);
    let (mut tab1, mut tab2) = (Device::anonymous(), Device::anonymous());
    let a = tab1.send(&mut d.a, Method::PUT, "x").await;
    let b = tab2.send(&mut d.a, Method::PUT, "y").await;
    let ids = [
        header(&a, "x-session").to_owned(),
        header(&b, "x-session").to_owned(),
    ];
    let both = format!(
        "{}, {}",
        tab1.token.clone().unwrap(),
        tab2.token.clone().unwrap()
    );
    let mut login = Device {
        user: Some("alice"),
        token: Some(both),
    };
    let read = login.send(&mut d.b, Method::GET, "x").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "x-status"), "Cycled");
    assert!(!ids.contains(&header(&read, "x-session").to_owned()));
    // And alice's other device is fenced on both anonymous writes, carried by the login.
    let mut laptop = Device::of("alice");
    let rx = laptop.send(&mut d.a, Method::GET, "x").await;
    let ry = laptop.send(&mut d.a, Method::GET, "y").await;
    assert_guarantee_holds("x", &rx, version(&a));
    assert_guarantee_holds("y", &ry, version(&b));
}
