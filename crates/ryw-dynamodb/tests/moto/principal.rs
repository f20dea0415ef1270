//! A principal's record in a DynamoDB table ([`DynamoRecordStore`]), against moto: two devices
//! of one principal, with no token in common, through two instances. The second device's read,
//! from a replica that has not received the first device's write, reflects it; without the
//! record, it is "guaranteed" and misses it. With the record store unreachable, reads say they
//! are guaranteed for their session only, and the write made meanwhile is appended once the
//! store is back.

use crate::records::{fresh_store, get, put, unreachable_client};
use crate::support::*;
use aws_sdk_dynamodb::Client;
use ryw::fence::FencePath;
use ryw::principal::{Advanced, Entered, PrincipalRecords};
use ryw::signing::SigningKey;
use ryw::{ReadYourWritesLayer, Session, Visibility};
use ryw_dynamodb::{DynamoAdapter, DynamoRecordStore, DynamoService, TableSchema};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

fn fingerprint_key() -> SigningKey {
    SigningKey::new(0, [3u8; 32]).unwrap()
}

pub(crate) async fn a_second_device_reads_the_first_devices_write(client: Client) {
    let table = fresh_table(&client).await;
    let store = fresh_store(&client).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let layer = ReadYourWritesLayer::new(adapter);
    // Two instances, each its own client, layer and principals' records over the one table.
    let replicas = [
        StaleReplicaForTests::new(DynamoService::new(client.clone())),
        StaleReplicaForTests::new(DynamoService::new(crate::support::client(
            &endpoint().unwrap(),
        ))),
    ];
    let services = [
        layer.layer(replicas[0].clone()),
        layer.layer(replicas[1].clone()),
    ];
    let principals = [
        PrincipalRecords::new(Arc::new(store.clone()), fingerprint_key()),
        PrincipalRecords::new(
            Arc::new(DynamoRecordStore::new(
                crate::support::client(&endpoint().unwrap()),
                store.table(),
            )),
            fingerprint_key(),
        ),
    ];

    // The phone writes through the first instance.
    let phone = Session::new();
    assert_eq!(
        principals[0].enter(b"alice", &phone).await,
        Entered::Fenced { version: 0 }
    );
    services[0]
        .clone()
        .oneshot(phone.request(put(&table, "post", "from the phone")))
        .await
        .unwrap();
    assert_eq!(
        principals[0].leave(b"alice", &phone).await,
        Advanced::Appended(1)
    );

    // The laptop, a session of its own, reads through the second instance from a replica that
    // has not received the write: fenced by the principal's record, it escalates.
    replicas[1].hold("post", None, 3);
    let laptop = Session::new();
    assert_eq!(
        principals[1].enter(b"alice", &laptop).await,
        Entered::Fenced { version: 1 }
    );
    let read = services[1]
        .clone()
        .oneshot(laptop.request(get(&table, "post")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    assert_eq!(
        read.get_ref().item().expect("the phone's post")["body"]
            .as_s()
            .unwrap(),
        "from the phone"
    );
    assert!(read.get_ref().is_consistent());
    assert_eq!(
        principals[1].leave(b"alice", &laptop).await,
        Advanced::NotNeeded
    );

    // Without the record, a third device misses the write and is told it is guaranteed.
    replicas[1].hold("post", None, 3);
    let tablet = Session::new();
    let read = services[1]
        .clone()
        .oneshot(tablet.request(get(&table, "post")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert!(read.get_ref().item().is_none());

    // Another principal's session is not fenced by alice's record.
    replicas[1].hold("post", None, 3);
    let mallory = Session::new();
    assert_eq!(
        principals[1].enter(b"mallory", &mallory).await,
        Entered::Fenced { version: 0 }
    );
    let read = services[1]
        .clone()
        .oneshot(mallory.request(get(&table, "post")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    principals[1].leave(b"mallory", &mallory).await;
    let stats = principals[1].stats();
    assert_eq!((stats.loads, stats.appends, stats.load_failures), (2, 0, 0));
}

pub(crate) async fn with_the_record_store_unreachable_reads_are_session_only(client: Client) {
    let table = fresh_table(&client).await;
    let store = fresh_store(&client).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let replica = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let service = ReadYourWritesLayer::new(adapter).layer(replica.clone());
    let down = PrincipalRecords::new(
        Arc::new(DynamoRecordStore::new(unreachable_client(), store.table())),
        fingerprint_key(),
    );
    let up = PrincipalRecords::new(Arc::new(store.clone()), fingerprint_key());

    // The phone writes while the record store is unreachable: the write applies, the record is
    // not advanced, and both are said.
    let phone = Session::new();
    assert_eq!(down.enter(b"alice", &phone).await, Entered::Unavailable);
    let wrote = service
        .clone()
        .oneshot(phone.request(put(&table, "post", "during the outage")))
        .await
        .unwrap();
    assert_eq!(
        wrote.visibility(),
        &Visibility::Guaranteed(FencePath::Write)
    );
    assert_eq!(down.leave(b"alice", &phone).await, Advanced::Failed);
    let token = phone.token().encode().unwrap();

    // The laptop, also cut off from the record, reads from a lagging replica: session-only.
    replica.hold("post", None, 3);
    let laptop = Session::new();
    assert_eq!(down.enter(b"alice", &laptop).await, Entered::Unavailable);
    let read = service
        .clone()
        .oneshot(laptop.request(get(&table, "post")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::SessionOnly(FencePath::Unfenced)
    );
    down.leave(b"alice", &laptop).await;
    let stats = down.stats();
    assert_eq!((stats.load_failures, stats.append_failures), (2, 1));

    // The store is back: the phone's next request appends what the record missed; the laptop's
    // next read is fenced on it.
    let phone = Session::from_encoded(&token).unwrap();
    assert_eq!(
        up.enter(b"alice", &phone).await,
        Entered::Fenced { version: 0 }
    );
    assert_eq!(up.leave(b"alice", &phone).await, Advanced::Appended(1));
    replica.hold("post", None, 3);
    let laptop = Session::new();
    up.enter(b"alice", &laptop).await;
    let read = service
        .clone()
        .oneshot(laptop.request(get(&table, "post")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(
        read.get_ref().item().unwrap()["body"].as_s().unwrap(),
        "during the outage"
    );
    up.leave(b"alice", &laptop).await;
}

/// What the record adds per request against moto (printed; timings are not asserted).
pub(crate) async fn what_the_principal_record_costs(client: Client) {
    const N: usize = 40;
    let table = fresh_table(&client).await;
    let store = fresh_store(&client).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let counted = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let service = ReadYourWritesLayer::new(adapter).layer(counted.clone());
    let records = PrincipalRecords::new(Arc::new(store), fingerprint_key());
    let (mut enter, mut leave, mut write) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = Session::new().token().encode().unwrap();
    for i in 0..N {
        let session = Session::from_encoded(&token).unwrap();
        let t = Instant::now();
        records.enter(b"alice", &session).await;
        enter.push(t.elapsed());
        let t = Instant::now();
        service
            .clone()
            .oneshot(session.request(put(&table, &format!("item{i}"), "x")))
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
    let stats = records.stats();
    assert_eq!((stats.loads, stats.appends), (N as u64, N as u64));
    assert_eq!(counted.consistent_reads.load(Ordering::Relaxed), 0);
    println!(
        "principal record against moto, {N} write requests: record read p50 {:?}, append p50 {:?}, \
         the write itself p50 {:?}; store operations per write request: 1 write + 1 record read + \
         1 record append",
        median(&mut enter),
        median(&mut leave),
        median(&mut write)
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
