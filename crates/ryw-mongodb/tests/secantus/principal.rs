//! A principal's record in a MongoDB collection ([`MongoRecordStore`]), against SecantusDB: two
//! devices of one principal, with no token in common, through two instances with their own
//! clients. The second device's read carries `afterClusterTime` at or after the first device's
//! write (SecantusDB does not make reads wait, so the wire is what is asserted; a lagging
//! secondary waits on it under Docker); without the record it carries none. With the record
//! store unreachable, reads say they are guaranteed for their session only.

use crate::{fresh, layer, monitored, uri};
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;
use ryw::principal::{Advanced, Entered, PrincipalRecords};
use ryw::signing::SigningKey;
use ryw::{Session, Visibility};
use ryw_mongodb::{version_of, MongoRecordStore, MongoRequest, MongoService};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

macro_rules! secantus {
    () => {
        match uri() {
            Some(u) => u,
            None => return,
        }
    };
}

fn fingerprint_key() -> SigningKey {
    SigningKey::new(0, [4u8; 32]).unwrap()
}

/// The `readConcern.afterClusterTime` of the last find sent, if any.
fn last_after_cluster_time(seen: &Arc<Mutex<Vec<Document>>>) -> Option<u64> {
    let commands = seen.lock().unwrap();
    let find = commands.iter().rev().find(|c| c.contains_key("find"))?;
    find.get_document("readConcern")
        .ok()?
        .get_timestamp("afterClusterTime")
        .ok()
        .map(|t| version_of(t).get())
}

#[tokio::test]
async fn a_second_device_reads_after_the_first_devices_write() {
    let uri = secantus!();
    let coll = fresh();
    let phone_client = Client::with_uri_str(&uri).await.unwrap();
    let (laptop_client, seen) = monitored(&uri, "ryw-laptop").await;
    let records_coll = format!("{coll}_principals");
    let principals = [
        PrincipalRecords::new(
            Arc::new(MongoRecordStore::new(&phone_client, "ryw", &records_coll)),
            fingerprint_key(),
        ),
        PrincipalRecords::new(
            Arc::new(MongoRecordStore::new(&laptop_client, "ryw", &records_coll)),
            fingerprint_key(),
        ),
    ];
    let phone_svc = layer().layer(MongoService::<Document>::new(&phone_client, "ryw", &coll));
    let laptop_svc = layer().layer(MongoService::<Document>::new(&laptop_client, "ryw", &coll));

    let phone = Session::new();
    assert_eq!(
        principals[0].enter(b"alice", &phone).await,
        Entered::Fenced { version: 0 }
    );
    let wrote = phone_svc
        .clone()
        .oneshot(phone.request(MongoRequest::insert_one(doc! { "post": 1 })))
        .await
        .unwrap();
    let written = version_of(wrote.get_ref().operation_time().unwrap()).get();
    assert_eq!(
        principals[0].leave(b"alice", &phone).await,
        Advanced::Appended(1)
    );

    // The laptop: a session of its own, another client, another instance.
    let laptop = Session::new();
    assert_eq!(
        principals[1].enter(b"alice", &laptop).await,
        Entered::Fenced { version: 1 }
    );
    let read = laptop_svc
        .clone()
        .oneshot(laptop.request(MongoRequest::find(doc! { "post": 1 })))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    assert_eq!(read.get_ref().documents().len(), 1);
    let after = last_after_cluster_time(&seen).expect("afterClusterTime on the wire");
    assert!(after >= written, "{after} < {written}");
    principals[1].leave(b"alice", &laptop).await;

    // Without the record, a third device's read carries no fence at all.
    let tablet = Session::new();
    let read = laptop_svc
        .clone()
        .oneshot(tablet.request(MongoRequest::find(doc! { "post": 1 })))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(ryw::fence::FencePath::Unfenced)
    );
    assert_eq!(last_after_cluster_time(&seen), None);

    // Another principal's session is not fenced by alice's record either.
    let mallory = Session::new();
    principals[1].enter(b"mallory", &mallory).await;
    laptop_svc
        .clone()
        .oneshot(mallory.request(MongoRequest::find(doc! { "post": 1 })))
        .await
        .unwrap();
    assert_eq!(last_after_cluster_time(&seen), None);
    principals[1].leave(b"mallory", &mallory).await;
}

#[tokio::test]
async fn with_the_record_store_unreachable_reads_are_session_only() {
    let uri = secantus!();
    let coll = fresh();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let svc = layer().layer(MongoService::<Document>::new(&client, "ryw", &coll));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = Client::with_options(
        ClientOptions::builder()
            .hosts(vec![ServerAddress::Tcp {
                host: "127.0.0.1".into(),
                port: Some(port),
            }])
            .server_selection_timeout(Duration::from_millis(300))
            .build(),
    )
    .unwrap();
    let records_coll = format!("{coll}_principals");
    let down = PrincipalRecords::new(
        Arc::new(MongoRecordStore::new(&nowhere, "ryw", &records_coll)),
        fingerprint_key(),
    );
    let up = PrincipalRecords::new(
        Arc::new(MongoRecordStore::new(&client, "ryw", &records_coll)),
        fingerprint_key(),
    );

    let phone = Session::new();
    assert_eq!(down.enter(b"alice", &phone).await, Entered::Unavailable);
    svc.clone()
        .oneshot(phone.request(MongoRequest::insert_one(doc! { "post": 2 })))
        .await
        .unwrap();
    assert_eq!(down.leave(b"alice", &phone).await, Advanced::Failed);

    let laptop = Session::new();
    assert_eq!(down.enter(b"alice", &laptop).await, Entered::Unavailable);
    let read = svc
        .clone()
        .oneshot(laptop.request(MongoRequest::find(doc! { "post": 2 })))
        .await
        .unwrap();
    assert!(
        read.visibility().is_session_only(),
        "{:?}",
        read.visibility()
    );
    down.leave(b"alice", &laptop).await;

    // Back: the phone's next request appends the write the record missed.
    let phone = Session::from_encoded(&phone.token().encode().unwrap()).unwrap();
    up.enter(b"alice", &phone).await;
    assert_eq!(up.leave(b"alice", &phone).await, Advanced::Appended(1));
}

/// What the record adds per request against SecantusDB (printed; timings are not asserted).
#[tokio::test]
async fn what_the_principal_record_costs() {
    const N: usize = 40;
    let uri = secantus!();
    let coll = fresh();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let svc = layer().layer(MongoService::<Document>::new(&client, "ryw", &coll));
    let records = PrincipalRecords::new(
        Arc::new(MongoRecordStore::new(
            &client,
            "ryw",
            &format!("{coll}_principals"),
        )),
        fingerprint_key(),
    );
    let (mut enter, mut leave, mut write) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = Session::new().token().encode().unwrap();
    for i in 0..N {
        let session = Session::from_encoded(&token).unwrap();
        let t = Instant::now();
        records.enter(b"alice", &session).await;
        enter.push(t.elapsed());
        let t = Instant::now();
        svc.clone()
            .oneshot(session.request(MongoRequest::insert_one(doc! { "n": i as i64 })))
            .await
            .unwrap();
        write.push(t.elapsed());
        let t = Instant::now();
        assert!(matches!(
            records.leave(b"alice", &session).await,
            Advanced::Appended(_)
        ));
        leave.push(t.elapsed());
        token = session.token().encode().unwrap();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "principal record against SecantusDB, {N} write requests: record read p50 {:?}, append \
         p50 {:?}, the write itself p50 {:?}; store operations per write request: 1 write + 1 \
         record read + 1 record append",
        median(&mut enter),
        median(&mut leave),
        median(&mut write)
    );
}
