//! Sessions' records in a MongoDB collection ([`MongoRecordStore`]), against SecantusDB:
//! appends merge by pointwise maximum (`$max`) and bump the version (`$inc`) in one update,
//! concurrent appends lose nothing, a damaged record is never trusted, and a session that touched
//! more scopes than its token holds reads them exactly on another instance, or on the strong
//! path when the record store is unreachable.
//!
//! The MongoDB adapter versions the whole deployment as one scope, so MongoDB documents alone
//! never overflow a token. The end-to-end case gives the session a second store with one scope
//! per item, ryw-sim's simulated store (store id 7), written and read through its own session
//! layer beside the MongoDB service: what the token coarsens of it is what the record, in
//! SecantusDB, keeps.

use crate::{fresh, layer, uri};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;
use ryw::fence::FencePath;
use ryw::record::{
    Flushed, InMemoryRecordStore, Loaded, Record, RecordError, RecordStore, SessionRecords,
};
use ryw::version::{Entry, ScopeKey, StoreId, Version};
use ryw::{FenceConfig, ReadYourWritesLayer, Session, SessionId, Visibility};
use ryw_mongodb::record::{RecordRefused, DEFAULT_TTL};
use ryw_mongodb::{MongoRecordStore, MongoRequest, MongoService};
use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower::{Layer, ServiceExt};

macro_rules! secantus {
    () => {
        match uri() {
            Some(u) => u,
            None => return,
        }
    };
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

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The stored document, read straight from the server.
async fn raw(store: &MongoRecordStore, session: SessionId) -> Option<Document> {
    store
        .collection()
        .find_one(doc! { "_id": session.to_string() })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_record_merges_appends_by_pointwise_maximum_and_counts_them() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let store = MongoRecordStore::new(&client, "ryw", &fresh());
    store.ensure_ttl_index().await.unwrap();
    store.ensure_ttl_index().await.unwrap();
    let mut indexes = store.collection().list_indexes().await.unwrap();
    let mut ttl = None;
    while indexes.advance().await.unwrap() {
        let index = indexes.deserialize_current().unwrap();
        if index.keys == doc! { "expires": 1 } {
            ttl = index.options.and_then(|o| o.expire_after);
        }
    }
    assert_eq!(ttl, Some(Duration::ZERO), "a TTL index on expires");

    let session = SessionId::random();
    assert!(
        store.load(session).await.unwrap().is_none(),
        "no record yet"
    );

    let before = now_millis();
    let v1 = store
        .append(session, &[entry("a", 5), entry("b", 7), entry("a", 6)])
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let stored = raw(&store, session).await.unwrap();
    assert_eq!(stored.get("version"), Some(&Bson::Int64(1)));
    let key = format!("{:016x}", scope("a").to_bits());
    assert_eq!(
        stored.get_document("entries").unwrap().get(&key),
        Some(&Bson::Int64(6))
    );
    let first_expiry = stored.get_datetime("expires").unwrap().timestamp_millis();
    let ttl_millis = DEFAULT_TTL.as_millis() as i64;
    assert!(first_expiry >= before + ttl_millis);
    assert!(first_expiry <= now_millis() + ttl_millis);

    tokio::time::sleep(Duration::from_millis(20)).await;
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
    let stored = raw(&store, session).await.unwrap();
    assert!(
        stored.get_datetime("expires").unwrap().timestamp_millis() > first_expiry,
        "every append refreshes the expiry"
    );

    // An empty batch still counts as an append, on a new record too.
    assert_eq!(store.append(session, &[]).await.unwrap(), 3);
    let other = SessionId::random();
    assert_eq!(store.append(other, &[]).await.unwrap(), 1);
    let empty = store.load(other).await.unwrap().unwrap();
    assert_eq!((empty.version, empty.entries.len()), (1, 0));

    // A version MongoDB cannot store as an Int64 is refused, and nothing is written.
    let err = store
        .append(session, &[entry("d", u64::MAX)])
        .await
        .expect_err("too large");
    let RecordError::Unavailable(source) = err else {
        panic!("{err:?}")
    };
    assert!(matches!(
        source.downcast_ref::<RecordRefused>(),
        Some(RecordRefused::VersionTooLarge(u64::MAX))
    ));
    let record = store.load(session).await.unwrap().unwrap();
    assert_eq!((record.version, record.entries.len()), (3, 3));
    let largest = store
        .append(session, &[entry("d", i64::MAX as u64)])
        .await
        .unwrap();
    assert_eq!(largest, 4);
    assert_eq!(
        entries(&store.load(session).await.unwrap().unwrap())[&scope("d")],
        Version::new(i64::MAX as u64)
    );
}

#[tokio::test]
async fn concurrent_appends_of_two_instances_lose_nothing() {
    let uri = secantus!();
    let coll = fresh();
    let session = SessionId::random();
    // Two app instances, each with its own client, appending to one session's record at once
    // (the first appends of both race to create it): disjoint scopes, and one scope both raise.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let client = Client::with_uri_str(&uri).await.unwrap();
        instances.push(MongoRecordStore::new(&client, "ryw", &coll));
    }
    let run = move |n: u64, store: MongoRecordStore| async move {
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
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    let (va, vb) = tokio::join!(tokio::spawn(run(0, a.clone())), tokio::spawn(run(1, b)));
    let mut all: Vec<u64> = va.unwrap().into_iter().chain(vb.unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "one version per append");

    let record = a.load(session).await.unwrap().unwrap();
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

#[tokio::test]
async fn a_damaged_record_is_never_trusted() {
    let uri = secantus!();
    let client = Client::with_uri_str(&uri).await.unwrap();
    let store = MongoRecordStore::new(&client, "ryw", &fresh());
    let records = SessionRecords::new(Arc::new(store.clone()));
    let key = format!("{:016x}", scope("a").to_bits());
    let garbage = [
        doc! { "version": 2_i64, "entries": "garbage" },
        doc! { "version": "two", "entries": {} },
        doc! { "entries": { &key: 4_i64 } },
        doc! { "version": 2_i64, "entries": { "zz": 4_i64 } },
        doc! { "version": 2_i64, "entries": { &key: "4" } },
        doc! { "version": 2_i64, "entries": { &key: -4_i64 } },
    ];
    let cases = garbage.len() as u64;
    for (n, fields) in garbage.into_iter().enumerate() {
        let session = SessionId::random();
        let mut stored = doc! { "_id": session.to_string() };
        stored.extend(fields);
        store.collection().insert_one(stored).await.unwrap();

        let err = store.load(session).await.expect_err("damaged");
        assert!(matches!(err, RecordError::Damaged(_)), "{n}: {err:?}");
        // An append never makes it look valid: refused when the document is no record (no
        // valid version or entries), or the entries stay damaged.
        let before = raw(&store, session).await;
        match store.append(session, &[entry("b", 1)]).await {
            Err(RecordError::Damaged(_)) => {
                assert!(n < 3, "{n}");
                assert_eq!(raw(&store, session).await, before, "{n}: left as it is");
            }
            other => {
                assert!(n >= 3, "{n}: {other:?}");
                assert_eq!(other.unwrap(), 3);
            }
        }
        let err = store.load(session).await.expect_err("still damaged");
        assert!(matches!(err, RecordError::Damaged(_)), "{n}: {err:?}");

        // A session whose token names the record (version 1, written here to another store)
        // does not trust what it finds.
        let named = Session::with_id(session);
        named.with_state(|s| {
            s.vector_mut().set_cap(1);
            s.advance(scope("x"), Version::new(3));
            s.advance(scope("y"), Version::new(4));
        });
        let memory = SessionRecords::new(Arc::new(InMemoryRecordStore::new()));
        assert_eq!(memory.flush(&named).await, Flushed::Written(1));
        let elsewhere = Session::from_encoded(&named.token().encode().unwrap()).unwrap();
        assert_eq!(elsewhere.snapshot().record(), Some(1));
        assert_eq!(records.load(&elsewhere).await, Loaded::Untrusted, "{n}");
    }
    assert_eq!(records.stats().untrusted, cases);
    assert_eq!(records.stats().failures, 0);
}

/// A client of a MongoDB address where nothing listens (a port just released), that gives up
/// selecting a server after 300 ms.
fn unreachable_client() -> Client {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: Some(port),
        }])
        .server_selection_timeout(Duration::from_millis(300))
        .build();
    Client::with_options(options).unwrap()
}

#[tokio::test]
async fn a_session_of_200_documents_and_items_reads_them_exactly_on_another_instance() {
    const WRITES: usize = 200;
    let uri = secantus!();
    let coll = fresh();
    let records_coll = format!("{coll}_records");
    let clients = [
        Client::with_uri_str(&uri).await.unwrap(),
        Client::with_uri_str(&uri).await.unwrap(),
    ];
    // Two app instances: each its own clients, its own layers and its own records over the one
    // records collection.
    let mongo = [
        layer().layer(MongoService::<Document>::new(&clients[0], "ryw", &coll)),
        layer().layer(MongoService::<Document>::new(&clients[1], "ryw", &coll)),
    ];
    let sim = SimStore::new(SimConfig::default().seed(11));
    let items = SimAdapter::new().store_id(StoreId::new(7));
    let sim_layer = ReadYourWritesLayer::new(items.clone())
        .fence(FenceConfig::default())
        .clock(sim.clock());
    let sims = [
        sim_layer.layer(sim.client(0)),
        sim_layer.layer(sim.client(1)),
    ];
    let store = MongoRecordStore::new(&clients[0], "ryw", &records_coll);
    store.ensure_ttl_index().await.unwrap();
    let records = [
        SessionRecords::new(Arc::new(store.clone())),
        SessionRecords::new(Arc::new(MongoRecordStore::new(
            &clients[1],
            "ryw",
            &records_coll,
        ))),
    ];

    // Each request writes one document and one item, alternating instances; between requests
    // the session travels as its encoded token only.
    let mut token = Session::new().token().encode().unwrap();
    let mut named: [HashSet<u64>; 2] = Default::default();
    let mut written = Vec::with_capacity(WRITES);
    let mut appends = 0u64;
    for i in 0..WRITES {
        let at = i % 2;
        let session = Session::from_encoded(&token).unwrap();
        if let Some(v) = session.snapshot().record().filter(|v| *v > 0) {
            named[at].insert(v);
        }
        let loaded = records[at].load(&session).await;
        assert_ne!(loaded, Loaded::Failed);
        assert_ne!(loaded, Loaded::Untrusted);
        mongo[at]
            .clone()
            .oneshot(session.request(MongoRequest::insert_one(
                doc! { "_id": format!("doc{i}"), "n": i as i64 },
            )))
            .await
            .unwrap();
        let out = sims[at]
            .clone()
            .oneshot(session.request(SimRequest::put(format!("item{i}"), i as u64)))
            .await
            .unwrap();
        written.push(out.get_ref().version);
        match records[at].flush(&session).await {
            Flushed::Written(v) => {
                appends += 1;
                assert_eq!(v, appends, "{i}");
            }
            Flushed::NotNeeded => assert_eq!(appends, 0, "{i}: nothing coarsened yet"),
            other => panic!("{i}: {other:?}"),
        }
        token = session.token().encode().unwrap();
    }
    // The deployment's scope is raised by every request and stays in the token; the oldest
    // items are coarsened, one per request once the token is full.
    assert_eq!(
        appends,
        (WRITES - (ryw::version::DEFAULT_SCOPE_CAP - 1)) as u64
    );
    let last = Session::from_encoded(&token).unwrap().snapshot();
    assert_eq!(last.record(), Some(appends));
    assert_eq!(
        store.load(last.id()).await.unwrap().unwrap().version,
        appends
    );
    for (at, r) in records.iter().enumerate() {
        let stats = r.stats();
        assert!(
            stats.loads <= named[at].len() as u64,
            "instance {at}: {} loads for {} record versions",
            stats.loads,
            named[at].len()
        );
        assert_eq!((stats.failures, stats.untrusted), (0, 0));
        assert!(stats.writes >= appends / 2, "instance {at}");
    }
    assert_eq!(
        records[0].stats().writes + records[1].stats().writes,
        appends
    );

    // The first instance reads early documents and items, each request continued from the last
    // token: MongoDB reads wait on the server, as always; the items are fenced exactly on their
    // own versions and verified on the cheap path.
    let reader = 0;
    let loads_before = records[reader].stats().loads;
    for (i, &version) in written.iter().enumerate().take(40) {
        let session = Session::from_encoded(&token).unwrap();
        records[reader].load(&session).await;
        let required = session
            .snapshot()
            .requirement(items.scope(&format!("item{i}")));
        assert_eq!(
            (required.version, required.horizon),
            (version, None),
            "item{i}: its exact version"
        );
        let read = mongo[reader]
            .clone()
            .oneshot(session.request(MongoRequest::find(doc! { "_id": format!("doc{i}") })))
            .await
            .unwrap();
        assert!(read.visibility().is_guaranteed(), "doc{i}");
        assert_eq!(read.get_ref().documents().len(), 1);
        let read = sims[reader]
            .clone()
            .oneshot(session.request(SimRequest::get(format!("item{i}"))))
            .await
            .unwrap();
        assert_eq!(
            read.visibility(),
            &Visibility::Guaranteed(FencePath::Verified),
            "item{i}"
        );
        assert_eq!(read.get_ref().value, Some(i as u64));
        assert_eq!(records[reader].flush(&session).await, Flushed::NotNeeded);
        token = session.token().encode().unwrap();
    }
    assert!(
        records[reader].stats().loads <= loads_before + 1,
        "the record version the token names, loaded at most once"
    );

    // A third instance whose record store is unreachable: the load fails, the horizon applies,
    // and the item reads go to the strong path, still guaranteed. The first read brings its item
    // back into the token, coarsening another, whose batch cannot be written either: from then
    // on the token names no record at all.
    let outage = SessionRecords::new(Arc::new(MongoRecordStore::new(
        &unreachable_client(),
        "ryw",
        &records_coll,
    )));
    let mongo_c = layer().layer(MongoService::<Document>::new(&clients[0], "ryw", &coll));
    let sim_c = sim_layer.layer(sim.client(2));
    for i in 0..10 {
        let session = Session::from_encoded(&token).unwrap();
        let (loaded, flushed) = if i == 0 {
            (Loaded::Failed, Flushed::Failed)
        } else {
            (Loaded::NotNeeded, Flushed::NotNeeded)
        };
        assert_eq!(outage.load(&session).await, loaded, "item{i}");
        let required = session
            .snapshot()
            .requirement(items.scope(&format!("item{i}")));
        assert!(required.horizon.is_some(), "item{i}: only the horizon");
        let read = mongo_c
            .clone()
            .oneshot(session.request(MongoRequest::find(doc! { "_id": format!("doc{i}") })))
            .await
            .unwrap();
        assert!(read.visibility().is_guaranteed(), "doc{i}");
        let read = sim_c
            .clone()
            .oneshot(session.request(SimRequest::get(format!("item{i}"))))
            .await
            .unwrap();
        assert_eq!(
            read.visibility(),
            &Visibility::Guaranteed(FencePath::Escalated),
            "item{i}"
        );
        assert_eq!(read.get_ref().value, Some(i as u64));
        assert_eq!(outage.flush(&session).await, flushed, "item{i}");
        token = session.token().encode().unwrap();
        assert_eq!(
            Session::from_encoded(&token).unwrap().snapshot().record(),
            None
        );
    }
    let stats = outage.stats();
    assert_eq!((stats.loads, stats.writes, stats.failures), (1, 0, 2));
}
