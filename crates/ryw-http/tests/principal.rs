//! One user, every device, over HTTP: two devices of one principal, with no token in common,
//! through two instances over a store whose replica lags. With `PrincipalRecordsLayer`, the second
//! device's read reflects the first device's write; without it, the read is "guaranteed" and
//! misses it. Then the attacks: another principal, forged, replayed and other-principal tokens,
//! an anonymous session logging in; and a record store outage.

#[path = "common/devices.rs"]
mod devices;

use devices::{header, instance, App, Device};
use http::{Method, Response, StatusCode};
use ryw::principal::PrincipalRecords;
use ryw::record::InMemoryRecordStore;
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::Visibility;
use ryw_http::{visibility_header, PRINCIPAL_HEADER, VISIBILITY_HEADER};
use ryw_sim::{LagModel, SimConfig, SimStore};
use std::sync::Arc;
use std::time::Duration;

/// A store whose one replica lags 200 ms: a read right after a write misses it unless fenced.
fn lagging_store() -> SimStore {
    SimStore::new(SimConfig::default().replicas(1).lag(LagModel::new(
        Duration::from_millis(200),
        Duration::from_millis(1),
    )))
}

fn version(response: &Response<String>) -> u64 {
    header(response, "x-version").parse().unwrap()
}

struct Deployment {
    store: SimStore,
    authority: Arc<TokenAuthority>,
    records: Arc<InMemoryRecordStore>,
    a: App,
    b: App,
}

/// Two instances sharing the store, the token keys and (when `with_records`) the principals'
/// record store and fingerprint key.
fn deployment(with_records: bool) -> Deployment {
    let store = lagging_store();
    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32]).unwrap()));
    let records = Arc::new(InMemoryRecordStore::new());
    let principals = || {
        with_records.then(|| {
            Arc::new(PrincipalRecords::new(
                records.clone(),
                SigningKey::new(0, [7u8; 32]).unwrap(),
            ))
        })
    };
    Deployment {
        a: instance(&store, authority.clone(), principals()),
        b: instance(&store, authority.clone(), principals()),
        authority,
        store,
        records,
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_device_reads_what_the_first_wrote() {
    let mut d = deployment(true);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    let wrote = phone.send(&mut d.a, Method::PUT, "post").await;
    assert_eq!(header(&wrote, PRINCIPAL_HEADER), "record=0; advanced=1");
    let read = laptop.send(&mut d.b, Method::GET, "post").await;
    assert!(
        version(&read) > 0,
        "the laptop's read missed the phone's write"
    );
    assert!(
        header(&read, VISIBILITY_HEADER).starts_with("guaranteed"),
        "{}",
        header(&read, VISIBILITY_HEADER)
    );
    assert!(header(&read, PRINCIPAL_HEADER).starts_with("record=1"));
    assert_ne!(phone.token, laptop.token);
}

#[tokio::test(start_paused = true)]
async fn without_the_principal_record_the_second_device_misses_the_write() {
    let mut d = deployment(false);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    phone.send(&mut d.a, Method::PUT, "post").await;
    let read = laptop.send(&mut d.b, Method::GET, "post").await;
    assert_eq!(version(&read), 0);
    assert_eq!(
        header(&read, VISIBILITY_HEADER),
        "guaranteed; path=unfenced"
    );
}

#[tokio::test(start_paused = true)]
async fn another_principal_never_reflects_reveals_or_advances_the_record() {
    let mut d = deployment(true);
    let (mut alice, mut mallory) = (Device::of("alice"), Device::of("mallory"));
    alice.send(&mut d.a, Method::PUT, "alice-post").await;
    // Mallory's read of alice's item is not fenced by alice's record: it is unfenced.
    let read = mallory.send(&mut d.b, Method::GET, "alice-post").await;
    assert_eq!(
        header(&read, VISIBILITY_HEADER),
        "guaranteed; path=unfenced"
    );
    assert_eq!(header(&read, PRINCIPAL_HEADER), "record=0");
    // Mallory's write goes to her record only.
    let wrote = mallory.send(&mut d.b, Method::PUT, "mallory-post").await;
    assert_eq!(header(&wrote, PRINCIPAL_HEADER), "record=0; advanced=1");
    let mut laptop = Device::of("alice");
    let read = laptop.send(&mut d.a, Method::GET, "mallory-post").await;
    assert_eq!(
        header(&read, VISIBILITY_HEADER),
        "guaranteed; path=unfenced"
    );
    assert_eq!(header(&read, PRINCIPAL_HEADER), "record=1");
    // The records are keyed by fingerprints: nothing names "alice".
    assert!(!format!("{:?}", d.records).contains("alice"));
}

#[tokio::test(start_paused = true)]
async fn foreign_forged_and_replayed_tokens_do_not_reach_the_record() {
    let mut d = deployment(true);
    let mut alice = Device::of("alice");
    alice.send(&mut d.a, Method::PUT, "post").await;
    let token = alice.token.clone().unwrap();

    // Alice's token presented by mallory: refused, no handler runs.
    let mut thief = Device {
        user: Some("mallory"),
        token: Some(token.clone()),
    };
    let refused = thief.send(&mut d.b, Method::GET, "post").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // Presented anonymously: refused too.
    let mut anonymous = Device {
        user: None,
        token: Some(token.clone()),
    };
    let refused = anonymous.send(&mut d.b, Method::GET, "post").await;
    assert!(refused.status().is_client_error());
    // A forged token (one character of the signature changed): refused.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mut forger = Device {
        user: Some("mallory"),
        token: Some(forged),
    };
    let refused = forger.send(&mut d.b, Method::GET, "post").await;
    assert!(refused.status().is_client_error());
    assert!(header(&refused, PRINCIPAL_HEADER).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_anonymous_session_that_logs_in_gets_a_new_id_and_the_principal_record() {
    let mut d = deployment(true);
    let mut phone = Device::of("alice");
    phone.send(&mut d.a, Method::PUT, "post").await;

    let mut browser = Device {
        user: None,
        token: None,
    };
    let first = browser.send(&mut d.b, Method::GET, "other").await;
    assert!(header(&first, PRINCIPAL_HEADER).is_empty(), "anonymous");
    let before = header(&first, "x-session").to_owned();
    browser.user = Some("alice");
    let read = browser.send(&mut d.b, Method::GET, "post").await;
    assert_eq!(header(&read, "x-status"), "Cycled");
    assert_ne!(header(&read, "x-session"), before);
    assert!(
        version(&read) > 0,
        "the logged-in session missed alice's write"
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_store_outage_is_visible_loses_nothing_and_recovers() {
    let mut d = deployment(true);
    let (mut phone, mut laptop) = (Device::of("alice"), Device::of("alice"));
    phone.send(&mut d.a, Method::PUT, "first").await;

    d.records.set_unavailable(true);
    // Reads are session-only; a write applies and says the record was not advanced.
    let read = laptop.send(&mut d.b, Method::GET, "first").await;
    assert_eq!(header(&read, PRINCIPAL_HEADER), "record=unavailable");
    assert!(
        header(&read, VISIBILITY_HEADER).starts_with("session-only"),
        "{}",
        header(&read, VISIBILITY_HEADER)
    );
    let wrote = phone.send(&mut d.a, Method::PUT, "second").await;
    assert_eq!(
        header(&wrote, PRINCIPAL_HEADER),
        "record=unavailable; advanced=no"
    );
    assert!(header(&wrote, VISIBILITY_HEADER).starts_with("guaranteed; path=write"));

    // The store comes back: the phone's next request appends what the record missed, and the
    // laptop then reads the write made during the outage.
    d.records.set_unavailable(false);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let again = phone.send(&mut d.a, Method::GET, "first").await;
    assert!(header(&again, PRINCIPAL_HEADER).contains("advanced="));
    let read = laptop.send(&mut d.b, Method::GET, "second").await;
    assert!(
        version(&read) > 0,
        "the write made during the outage was lost to the laptop"
    );
    assert!(header(&read, VISIBILITY_HEADER).starts_with("guaranteed"));
    let _ = &d.store;
}

/// Revoking every session of alice that started before now ends their tokens' use, and so the
/// record's use through them; a session alice starts afterwards is fenced by the record again.
#[tokio::test(start_paused = true)]
async fn revoking_a_principal_ends_its_earlier_sessions_use_of_the_record() {
    let mut d = deployment(true);
    let mut phone = Device::of("alice");
    phone.send(&mut d.a, Method::PUT, "post").await;
    // Token times are whole seconds: the revocation is a second after the session started.
    std::thread::sleep(Duration::from_millis(1_100));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(d.authority.revoke_principal_before(b"alice", now));
    let refused = phone.send(&mut d.b, Method::GET, "post").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header(&refused, PRINCIPAL_HEADER).is_empty(),
        "no record for a revoked token"
    );
    // Alice signs in again on the phone: a new session, fenced by the record.
    phone.token = None;
    let read = phone.send(&mut d.b, Method::GET, "post").await;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(version(&read) > 0);
    assert!(header(&read, PRINCIPAL_HEADER).starts_with("record=1"));
}

#[test]
fn the_session_only_status_has_its_own_header_value() {
    let v = visibility_header(&Visibility::SessionOnly(ryw::fence::FencePath::Verified));
    assert_eq!(v, "session-only; path=verified");
}
