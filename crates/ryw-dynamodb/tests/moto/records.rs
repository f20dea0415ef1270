//! Sessions' records in a DynamoDB table ([`DynamoRecordStore`]), against moto: appends merge
//! by pointwise maximum and bump the version atomically, concurrent appends lose nothing, a
//! damaged record is never trusted, and a session that touched more items than its token holds
//! reads them exactly on another instance, or on the strong path when the record store is
//! unreachable.

use crate::support::*;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use aws_sdk_dynamodb::Client;
use ryw::fence::FencePath;
use ryw::record::{
    Flushed, InMemoryRecordStore, Loaded, Record, RecordError, RecordStore, SessionRecords,
};
use ryw::version::{Entry, ScopeKey, StoreId, Version};
use ryw::{FenceConfig, ReadYourWritesLayer, Session, SessionId, Visibility};
use ryw_dynamodb::record::{RecordRefused, DEFAULT_TTL};
use ryw_dynamodb::{DynamoAdapter, DynamoRecordStore, DynamoRequest, DynamoService, TableSchema};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower::{Layer, ServiceExt};

static RECORD_TABLES: AtomicUsize = AtomicUsize::new(0);

/// A record store over a fresh table that the store creates itself.
pub(crate) async fn fresh_store(client: &Client) -> DynamoRecordStore {
    let name = format!(
        "records{}_{}",
        std::process::id(),
        RECORD_TABLES.fetch_add(1, Ordering::Relaxed)
    );
    let store = DynamoRecordStore::new(client.clone(), name);
    store
        .create_table()
        .await
        .expect("create the records table");
    store
}

fn scope(name: &str) -> ScopeKey {
    ScopeKey::new(StoreId::new(2), name.as_bytes())
}

fn entry(name: &str, version: u64) -> Entry {
    Entry {
        scope: scope(name),
        version: Version::new(version),
    }
}

fn entries(record: &Record) -> BTreeMap<ScopeKey, Version> {
    let map: BTreeMap<_, _> = record
        .entries
        .iter()
        .map(|e| (e.scope, e.version))
        .collect();
    assert_eq!(map.len(), record.entries.len(), "one entry per scope");
    map
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The stored item, read straight from moto.
async fn raw(client: &Client, store: &DynamoRecordStore, session: SessionId) -> Option<Item> {
    client
        .get_item()
        .table_name(store.table())
        .key("session", s(&session.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

fn expires_at(item: &Item) -> u64 {
    item["expires_at"].as_n().unwrap().parse().unwrap()
}

pub(crate) async fn a_record_merges_appends_by_pointwise_maximum_and_counts_them(client: Client) {
    let store = fresh_store(&client).await;
    let ttl = client
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    let session = SessionId::random();
    assert!(
        store.load(session).await.unwrap().is_none(),
        "no record yet"
    );

    let before = now_secs();
    let v1 = store
        .append(session, &[entry("a", 5), entry("b", 7), entry("a", 6)])
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let item = raw(&client, &store, session).await.unwrap();
    assert_eq!(item["version"].as_n().unwrap(), "1");
    let stored = item["entries"].as_m().unwrap();
    assert_eq!(
        stored[&format!("{:016x}", scope("a").to_bits())]
            .as_n()
            .unwrap(),
        "6"
    );
    let first_expiry = expires_at(&item);
    assert!(first_expiry >= before + DEFAULT_TTL.as_secs());
    assert!(first_expiry <= now_secs() + DEFAULT_TTL.as_secs());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v2 = store
        .append(session, &[entry("a", 3), entry("c", 2), entry("b", 9)])
        .await
        .unwrap();
    assert_eq!(v2, 2);
    let record = store.load(session).await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    assert_eq!(
        entries(&record),
        BTreeMap::from([
            (scope("a"), Version::new(6)),
            (scope("b"), Version::new(9)),
            (scope("c"), Version::new(2)),
        ]),
        "pointwise maximum: a stays at 6"
    );
    let item = raw(&client, &store, session).await.unwrap();
    assert!(
        expires_at(&item) > first_expiry,
        "every append refreshes the TTL"
    );

    // An empty batch still counts as an append.
    assert_eq!(store.append(session, &[]).await.unwrap(), 3);
    assert_eq!(store.load(session).await.unwrap().unwrap().version, 3);
    // Another session's record is its own.
    let other = SessionId::random();
    assert_eq!(store.append(other, &[entry("a", 1)]).await.unwrap(), 1);
    assert_eq!(
        entries(&store.load(session).await.unwrap().unwrap())[&scope("a")],
        Version::new(6)
    );

    // A record at its maximum refuses what would take it past, and keeps what it holds.
    let small = DynamoRecordStore::new(client.clone(), store.table()).max_entries(3);
    let err = small
        .append(session, &[entry("d", 1)])
        .await
        .expect_err("four entries");
    let RecordError::Unavailable(source) = err else {
        panic!("{err:?}")
    };
    assert!(matches!(
        source.downcast_ref::<RecordRefused>(),
        Some(RecordRefused::TooManyEntries { entries: 4, max: 3 })
    ));
    let record = store.load(session).await.unwrap().unwrap();
    assert_eq!((record.version, record.entries.len()), (3, 3));
    // Raising an entry it holds is no growth.
    assert_eq!(small.append(session, &[entry("c", 40)]).await.unwrap(), 4);

    // Another partition key name.
    let named = DynamoRecordStore::new(client.clone(), format!("{}_sid", store.table()))
        .key_attribute("sid");
    named.create_table().await.unwrap();
    assert_eq!(named.append(session, &[entry("z", 9)]).await.unwrap(), 1);
    let item = client
        .get_item()
        .table_name(named.table())
        .key("sid", s(&session.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("keyed by sid");
    assert_eq!(item["version"].as_n().unwrap(), "1");
}

pub(crate) async fn concurrent_appends_of_two_instances_lose_nothing(client: Client) {
    let store = fresh_store(&client).await;
    let session = SessionId::random();
    // Two app instances, each with its own client, appending to one session's record at once:
    // disjoint scopes, and one scope both raise.
    let instances = [
        DynamoRecordStore::new(client.clone(), store.table()),
        DynamoRecordStore::new(crate::support::client(&endpoint().unwrap()), store.table()),
    ];
    let run = move |n: u64, store: DynamoRecordStore| async move {
        let mut versions = Vec::new();
        for i in 0..50u64 {
            let batch = [
                entry(&format!("{n}/{i}"), 1000 + i),
                entry("shared", 2 * i + n),
            ];
            let v = store.append(session, &batch).await.expect("append");
            // Read strongly, the record reflects the acknowledged append.
            let record = store.load(session).await.unwrap().unwrap();
            assert!(record.version >= v);
            let held = entries(&record);
            assert!(held[&scope(&format!("{n}/{i}"))] >= Version::new(1000 + i));
            assert!(held[&scope("shared")] >= Version::new(2 * i + n));
            versions.push(v);
        }
        versions
    };
    let [a, b] = instances;
    let (va, vb) = tokio::join!(tokio::spawn(run(0, a)), tokio::spawn(run(1, b)),);
    let mut all: Vec<u64> = va.unwrap().into_iter().chain(vb.unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "one version per append");

    let record = store.load(session).await.unwrap().unwrap();
    assert_eq!(record.version, 100);
    let held = entries(&record);
    assert_eq!(held.len(), 101);
    for n in 0..2u64 {
        for i in 0..50u64 {
            assert_eq!(held[&scope(&format!("{n}/{i}"))], Version::new(1000 + i));
        }
    }
    assert_eq!(held[&scope("shared")], Version::new(99));
}

pub(crate) async fn a_damaged_record_is_never_trusted_nor_overwritten(client: Client) {
    let store = fresh_store(&client).await;
    let records = SessionRecords::new(Arc::new(store.clone()));
    let good_key = format!("{:016x}", scope("a").to_bits());
    let garbage: Vec<Vec<(&str, AttributeValue)>> = vec![
        vec![("version", n(2)), ("entries", s("garbage"))],
        vec![
            ("version", s("two")),
            ("entries", AttributeValue::M(HashMap::new())),
        ],
        vec![(
            "entries",
            AttributeValue::M([(good_key.clone(), n(4))].into()),
        )],
        vec![
            ("version", n(2)),
            (
                "entries",
                AttributeValue::M([("zz".to_owned(), n(4))].into()),
            ),
        ],
        vec![
            ("version", n(2)),
            (
                "entries",
                AttributeValue::M([(good_key.clone(), s("4"))].into()),
            ),
        ],
    ];
    for attributes in garbage {
        let session = SessionId::random();
        let mut put = client
            .put_item()
            .table_name(store.table())
            .item("session", s(&session.to_string()));
        for (name, value) in attributes {
            put = put.item(name, value);
        }
        put.send().await.unwrap();
        let before = raw(&client, &store, session).await;

        let err = store.load(session).await.expect_err("damaged");
        assert!(matches!(err, RecordError::Damaged(_)), "{err:?}");
        let err = store
            .append(session, &[entry("b", 1)])
            .await
            .expect_err("an append never overwrites a damaged record");
        assert!(matches!(err, RecordError::Damaged(_)), "{err:?}");
        assert_eq!(raw(&client, &store, session).await, before);

        // A session whose token names the record (version 1, written here to another store)
        // does not trust what it finds.
        let named = Session::with_id(session);
        named.with_state(|s| {
            s.vector_mut().set_cap(1);
            s.advance(scope("x"), Version::new(3));
            s.advance(scope("y"), Version::new(4));
        });
        let elsewhere_store = SessionRecords::new(Arc::new(InMemoryRecordStore::new()));
        assert_eq!(elsewhere_store.flush(&named).await, Flushed::Written(1));
        let elsewhere = Session::from_encoded(&named.token().encode().unwrap()).unwrap();
        assert_eq!(elsewhere.snapshot().record(), Some(1));
        assert_eq!(records.load(&elsewhere).await, Loaded::Untrusted);
    }
    assert_eq!(records.stats().untrusted, 5);
    assert_eq!(records.stats().failures, 0);
}

pub(crate) fn put(table: &str, pk: &str, body: &str) -> DynamoRequest {
    PutItemInput::builder()
        .table_name(table)
        .item("pk", s(pk))
        .item("body", s(body))
        .into()
}

pub(crate) fn get(table: &str, pk: &str) -> DynamoRequest {
    GetItemInput::builder()
        .table_name(table)
        .key("pk", s(pk))
        .into()
}

/// A client of a DynamoDB endpoint where nothing listens (a port just released), without
/// retries, so that each call fails at once.
pub(crate) fn unreachable_client() -> Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "ryw-tests"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

pub(crate) async fn a_session_of_200_items_reads_them_exactly_on_another_instance(client: Client) {
    const ITEMS: usize = 200;
    // A put is fenced on three scopes, its item, its partition and its table (which every write
    // to the table shares): a token of the default cap (32 entries) holds 15 items' writes, and
    // every later write coarsens the two oldest scopes.
    const HELD: usize = (ryw::version::DEFAULT_SCOPE_CAP - 1) / 2;
    const APPENDS: u64 = (ITEMS - HELD) as u64;
    let table = fresh_table(&client).await;
    let store = fresh_store(&client).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let item_scope = |i: usize| {
        adapter
            .item_scope(&table, &[("pk".to_owned(), s(&format!("item{i}")))].into())
            .unwrap()
    };
    // Two app instances: each its own layer, its own client and its own records over the one
    // records table. The test layer in front of each counts eventually consistent and
    // consistent reads (it serves what moto serves).
    let layer = ReadYourWritesLayer::new(adapter.clone()).fence(FenceConfig::default());
    let counted = [
        StaleReplicaForTests::new(DynamoService::new(client.clone())),
        StaleReplicaForTests::new(DynamoService::new(crate::support::client(
            &endpoint().unwrap(),
        ))),
    ];
    let services = [
        layer.layer(counted[0].clone()),
        layer.layer(counted[1].clone()),
    ];
    let records = [
        SessionRecords::new(Arc::new(store.clone())),
        SessionRecords::new(Arc::new(DynamoRecordStore::new(
            crate::support::client(&endpoint().unwrap()),
            store.table(),
        ))),
    ];

    // The session writes 200 items, one request each, alternating instances; between requests
    // it travels as its encoded token only.
    let mut token = Session::new().token().encode().unwrap();
    let mut named: [HashSet<u64>; 2] = Default::default();
    let mut written = Vec::with_capacity(ITEMS);
    for i in 0..ITEMS {
        let at = i % 2;
        let session = Session::from_encoded(&token).unwrap();
        if let Some(v) = session.snapshot().record().filter(|v| *v > 0) {
            named[at].insert(v);
        }
        let loaded = records[at].load(&session).await;
        assert_ne!(loaded, Loaded::Failed);
        assert_ne!(loaded, Loaded::Untrusted);
        let out = services[at]
            .clone()
            .oneshot(session.request(put(&table, &format!("item{i}"), &format!("body {i}"))))
            .await
            .unwrap();
        written.push(out.get_ref().written_version().unwrap());
        let flushed = records[at].flush(&session).await;
        if i < HELD {
            assert_eq!(flushed, Flushed::NotNeeded, "{i}: the token holds it all");
        } else {
            assert!(matches!(flushed, Flushed::Written(_)), "{i}: {flushed:?}");
        }
        token = session.token().encode().unwrap();
    }
    let last = Session::from_encoded(&token).unwrap().snapshot();
    assert_eq!(
        last.record(),
        Some(APPENDS),
        "one append per request that coarsened"
    );
    assert!(last.vector().horizons().next().is_some());
    for (at, r) in records.iter().enumerate() {
        let stats = r.stats();
        assert!(
            stats.loads <= named[at].len() as u64,
            "instance {at}: {} loads for {} record versions",
            stats.loads,
            named[at].len()
        );
        assert_eq!((stats.failures, stats.untrusted), (0, 0));
        // The appends alternate between the instances.
        let share = if at == HELD % 2 {
            APPENDS.div_ceil(2)
        } else {
            APPENDS / 2
        };
        assert_eq!(stats.writes, share);
    }

    // The first instance reads early items, each request continued from the last token: fenced
    // exactly on the items' own versions, verified on the eventually consistent path.
    let reader = 0;
    let loads_before = records[reader].stats().loads;
    let consistent_before = counted[reader].consistent_reads.load(Ordering::Relaxed);
    for (i, &version) in written.iter().enumerate().take(40) {
        let session = Session::from_encoded(&token).unwrap();
        records[reader].load(&session).await;
        let required = session.snapshot().requirement(item_scope(i));
        assert_eq!(
            (required.version, required.horizon),
            (version, None),
            "item{i}: its exact version"
        );
        let read = services[reader]
            .clone()
            .oneshot(session.request(get(&table, &format!("item{i}"))))
            .await
            .unwrap();
        assert_eq!(
            read.visibility(),
            &Visibility::Guaranteed(FencePath::Verified),
            "item{i}"
        );
        assert!(!read.get_ref().is_consistent());
        assert_eq!(
            read.get_ref().item().unwrap()["body"].as_s().unwrap(),
            &format!("body {i}")
        );
        assert_eq!(records[reader].flush(&session).await, Flushed::NotNeeded);
        token = session.token().encode().unwrap();
    }
    assert_eq!(
        counted[reader].consistent_reads.load(Ordering::Relaxed),
        consistent_before,
        "no read was escalated"
    );
    assert_eq!(
        records[reader].stats().loads,
        loads_before + 1,
        "the record version the token names, loaded once"
    );

    // A third instance whose record store is unreachable: the load fails, the horizon applies,
    // and the reads go to the strong path, still guaranteed. The first read brings its item
    // back into the token, coarsening another entry, whose batch cannot be written either: from
    // then on the token names no record at all.
    let outage = SessionRecords::new(Arc::new(DynamoRecordStore::new(
        unreachable_client(),
        store.table(),
    )));
    let counted_c = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let service_c = layer.layer(counted_c.clone());
    for i in 0..10 {
        let session = Session::from_encoded(&token).unwrap();
        let (loaded, flushed) = if i == 0 {
            (Loaded::Failed, Flushed::Failed)
        } else {
            (Loaded::NotNeeded, Flushed::NotNeeded)
        };
        assert_eq!(outage.load(&session).await, loaded, "item{i}");
        let required = session.snapshot().requirement(item_scope(i));
        assert!(required.horizon.is_some(), "item{i}: only the horizon");
        let read = service_c
            .clone()
            .oneshot(session.request(get(&table, &format!("item{i}"))))
            .await
            .unwrap();
        assert_eq!(
            read.visibility(),
            &Visibility::Guaranteed(FencePath::Escalated),
            "item{i}"
        );
        assert!(read.get_ref().is_consistent());
        assert_eq!(
            read.get_ref().item().unwrap()["body"].as_s().unwrap(),
            &format!("body {i}")
        );
        assert_eq!(outage.flush(&session).await, flushed, "item{i}");
        token = session.token().encode().unwrap();
        assert_eq!(
            Session::from_encoded(&token).unwrap().snapshot().record(),
            None
        );
    }
    assert_eq!(counted_c.eventual_reads.load(Ordering::Relaxed), 0);
    assert_eq!(counted_c.consistent_reads.load(Ordering::Relaxed), 10);
    let stats = outage.stats();
    assert_eq!((stats.loads, stats.writes, stats.failures), (1, 0, 2));
}
