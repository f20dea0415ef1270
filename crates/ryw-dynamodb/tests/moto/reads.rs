//! Every page of a Query, BatchGetItem, TransactGetItems and Scan through the session layer,
//! against moto behind a replica that lags [`LAG`] (`lagging.rs`). Each case first shows, with
//! the SDK's own client through the same proxy, that the lagging reads really are stale, then that
//! the fenced reads hold what the session requires.

use crate::lagging::LaggingReplicaForTests;
use crate::replica::create_partitioned_table;
use crate::support::{client, fresh_table, s, Item};
use aws_sdk_dynamodb::operation::{
    batch_get_item::BatchGetItemInput, delete_item::DeleteItemInput, get_item::GetItemInput,
    put_item::PutItemInput, query::QueryInput, scan::ScanInput,
    transact_get_items::TransactGetItemsInput,
};
use aws_sdk_dynamodb::types::{Get, KeysAndAttributes, TransactGetItem};
use aws_sdk_dynamodb::Client;
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWrites, ReadYourWritesLayer, Session, Visibility};
use ryw_dynamodb::{
    DynamoAdapter, DynamoError, DynamoRequest, DynamoResponse, DynamoService, Pages, TableSchema,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// How far the replica lags: far longer than a fenced read's cheap re-read waits.
const LAG: Duration = Duration::from_millis(600);

type Svc = ReadYourWrites<DynamoService, DynamoAdapter>;

fn layered(client: &Client, adapter: &DynamoAdapter) -> Svc {
    ReadYourWritesLayer::new(adapter.clone())
        .fence(FenceConfig::verify_then_escalate(
            1,
            Duration::from_millis(10),
        ))
        .layer(DynamoService::new(client.clone()))
}

async fn call(
    svc: &mut Svc,
    session: &Session,
    request: impl Into<DynamoRequest>,
) -> ryw::SessionResponse<DynamoResponse> {
    svc.ready()
        .await
        .unwrap()
        .call(session.request(request.into()))
        .await
        .unwrap()
}

fn partitioned_table() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "reads{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn put(table: &str, pk: &str, sk: Option<&str>, body: &str) -> DynamoRequest {
    let mut item = key(pk, sk);
    item.insert("body".to_owned(), s(body));
    PutItemInput::builder()
        .table_name(table)
        .set_item(Some(item))
        .into()
}

fn key(pk: &str, sk: Option<&str>) -> Item {
    [("pk".to_owned(), s(pk))]
        .into_iter()
        .chain(sk.map(|sk| ("sk".to_owned(), s(sk))))
        .collect()
}

fn get(table: &str, pk: &str, sk: Option<&str>) -> DynamoRequest {
    GetItemInput::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .into()
}

fn delete(table: &str, pk: &str, sk: Option<&str>) -> DynamoRequest {
    DeleteItemInput::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .into()
}

fn body(item: &Item) -> &str {
    item["body"].as_s().unwrap()
}

fn sk_and_body(items: &[Item]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| (i["sk"].as_s().unwrap().clone(), body(i).to_owned()))
        .collect()
}

fn query_partition(
    table: &str,
    pk: &str,
) -> aws_sdk_dynamodb::operation::query::builders::QueryInputBuilder {
    QueryInput::builder()
        .table_name(table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s(pk))
}

/// Partition `p` holds a, c, e and f (written by another session, long replicated); then the
/// session adds b and d and deletes f, and at once reads the partition two items a page through a
/// replica that has none of that yet. No item the replica returns is older than the session saw
/// it: only the partition's fence (the newest writer's clock among a page's items) shows that b,
/// d and the deletion are missing.
pub(crate) async fn every_page_of_a_query_holds_the_sessions_writes_under_lag(moto: &str) {
    let direct = client(moto);
    let table = partitioned_table();
    create_partitioned_table(&direct, &table).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk").sort_key("sk"));
    let mut before = layered(&direct, &adapter);
    let other = Session::new();
    for sk in ["a", "c", "e", "f"] {
        call(&mut before, &other, put(&table, "p", Some(sk), "old")).await;
    }
    let proxy = LaggingReplicaForTests::start(moto, &[&table], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let session = Session::new();
    // Read-modify-write: the session reads what it then deletes.
    call(&mut svc, &session, get(&table, "p", Some("f"))).await;
    call(&mut svc, &session, put(&table, "p", Some("b"), "new")).await;
    call(&mut svc, &session, put(&table, "p", Some("d"), "new")).await;
    call(&mut svc, &session, delete(&table, "p", Some("f"))).await;
    let expected: Vec<(String, String)> = [
        ("a", "old"),
        ("b", "new"),
        ("c", "old"),
        ("d", "new"),
        ("e", "old"),
    ]
    .iter()
    .map(|(k, b)| (k.to_string(), b.to_string()))
    .collect();

    // Without the fence: the SDK's own pages through the lagging replica miss the session's
    // writes.
    let mut raw = Vec::new();
    let mut start = None;
    loop {
        let page = query_partition(&table, "p")
            .limit(2)
            .set_exclusive_start_key(start)
            .send_with(&via)
            .await
            .unwrap();
        raw.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    assert_ne!(
        sk_and_body(&raw),
        expected,
        "the replica lags: raw pages are stale"
    );

    // Through the layer: every page holds the session's writes, each item once, in order.
    let (eventual_before, strong_before) = proxy.reads();
    let request = session.request(DynamoRequest::from(query_partition(&table, "p").limit(2)));
    let all = Pages::new(&mut svc, request)
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(sk_and_body(all.items()), expected);
    assert!(all.is_guaranteed(), "{:?}", all.visibilities());
    assert!(
        all.pages() >= 3,
        "Limit is the page size: {} pages",
        all.pages()
    );
    let (eventual, strong) = proxy.reads();
    // The first page: tried on the replica, re-read there once, then read strongly; the pages
    // after it are read strongly up front.
    assert_eq!(eventual - eventual_before, 2, "cheap attempts");
    assert_eq!(strong - strong_before, all.pages(), "strong attempts");

    // From an ExclusiveStartKey: the items after it, and only those.
    let request = session.request(DynamoRequest::from(
        query_partition(&table, "p")
            .limit(2)
            .set_exclusive_start_key(Some(key("p", Some("b")))),
    ));
    let rest = Pages::new(&mut svc, request)
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(sk_and_body(rest.items()), expected[2..].to_vec());
    assert!(rest.is_guaranteed());

    // Paging anything but a Query or a Scan is a typed error.
    let not_pages = Pages::new(&mut svc, session.request(get(&table, "p", Some("a"))));
    assert!(matches!(not_pages, Err(DynamoError::Validation { .. })));
}

fn batch(keys: &[(&str, Vec<Item>)]) -> DynamoRequest {
    let mut b = BatchGetItemInput::builder();
    for (table, keys) in keys {
        b = b.request_items(
            *table,
            KeysAndAttributes::builder()
                .set_keys(Some(keys.clone()))
                .build()
                .unwrap(),
        );
    }
    b.into()
}

fn by_pk(items: &[Item]) -> HashMap<String, String> {
    items
        .iter()
        .map(|i| (i["pk"].as_s().unwrap().clone(), body(i).to_owned()))
        .collect()
}

/// x1 and x2 in one table, y1 in another (long replicated); the session changes x1, deletes x2
/// and creates x3, then reads all four in one BatchGetItem through the lagging replica.
pub(crate) async fn a_batch_get_holds_the_sessions_writes_item_by_item_under_lag(moto: &str) {
    let direct = client(moto);
    let (t1, t2) = (fresh_table(&direct).await, fresh_table(&direct).await);
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&t1, "pk"))
        .table(TableSchema::new(&t2, "pk"));
    let mut before = layered(&direct, &adapter);
    let other = Session::new();
    call(&mut before, &other, put(&t1, "x1", None, "old")).await;
    call(&mut before, &other, put(&t1, "x2", None, "old")).await;
    call(&mut before, &other, put(&t2, "y1", None, "old")).await;
    let proxy = LaggingReplicaForTests::start(moto, &[&t1, &t2], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let session = Session::new();
    call(&mut svc, &session, get(&t1, "x1", None)).await;
    call(&mut svc, &session, get(&t1, "x2", None)).await;
    call(&mut svc, &session, put(&t1, "x1", None, "new")).await;
    call(&mut svc, &session, delete(&t1, "x2", None)).await;
    call(&mut svc, &session, put(&t1, "x3", None, "new")).await;
    let keys = [
        (
            t1.as_str(),
            vec![key("x1", None), key("x2", None), key("x3", None)],
        ),
        (t2.as_str(), vec![key("y1", None)]),
    ];
    let expected: HashMap<String, String> = [("x1", "new"), ("x3", "new")]
        .iter()
        .map(|(k, b)| (k.to_string(), b.to_string()))
        .collect();

    // Without the fence: the replica still has x1 as it was and x2, and not x3.
    let raw = match batch(&keys).operation() {
        ryw_dynamodb::DynamoOperation::BatchGetItem(b) => b.clone().send_with(&via).await.unwrap(),
        _ => unreachable!(),
    };
    let raw_t1 = raw.responses.as_ref().unwrap()[&t1].clone();
    assert_ne!(
        by_pk(&raw_t1),
        expected,
        "the replica lags: the raw batch is stale"
    );

    // Through the layer.
    let out = call(&mut svc, &session, batch(&keys)).await;
    assert!(out.visibility().is_guaranteed(), "{:?}", out.visibility());
    assert_eq!(by_pk(out.get_ref().batch_items(&t1)), expected);
    assert_eq!(by_pk(out.get_ref().batch_items(&t2))["y1"], "old");
    // Escalated per table: only the table the session wrote was read strongly.
    assert_eq!(
        proxy.batch_strong_tables().last().unwrap(),
        &vec![t1.clone()],
        "{:?}",
        proxy.batch_strong_tables()
    );
    assert!(!out.get_ref().is_consistent());

    // A session whose only write is a new item: no item the replica returns is older than the
    // session saw it; only the new item's absence shows that the replica lags.
    let creator = Session::new();
    call(&mut svc, &creator, put(&t1, "x4", None, "new")).await;
    let keys = [(t1.as_str(), vec![key("x1", None), key("x4", None)])];
    let out = call(&mut svc, &creator, batch(&keys)).await;
    assert!(out.visibility().is_guaranteed(), "{:?}", out.visibility());
    assert_eq!(by_pk(out.get_ref().batch_items(&t1))["x4"], "new");
}

/// The replica keeps keys back (`UnprocessedKeys`): the service sends them again until none is
/// left, and a batch whose keys stay unprocessed past the budget fails with a typed error.
pub(crate) async fn unprocessed_keys_are_sent_again_within_a_budget(moto: &str) {
    let direct = client(moto);
    let table = fresh_table(&direct).await;
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&table, "pk"))
        .batch_get_backoff(Duration::from_millis(1));
    let mut before = layered(&direct, &adapter);
    let other = Session::new();
    for pk in ["k1", "k2", "k3"] {
        call(&mut before, &other, put(&table, pk, None, "v")).await;
    }
    let proxy = LaggingReplicaForTests::start(moto, &[&table], Duration::ZERO).await;
    let via = client(&proxy.url);
    let keys = [(
        table.as_str(),
        vec![key("k1", None), key("k2", None), key("k3", None)],
    )];

    // Without the service's resends, a held-back key is simply missing.
    proxy.hold_back_batch_keys(1);
    let raw = match batch(&keys).operation() {
        ryw_dynamodb::DynamoOperation::BatchGetItem(b) => b.clone().send_with(&via).await.unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(raw.responses.unwrap()[&table].len(), 2);
    assert_eq!(raw.unprocessed_keys.unwrap()[&table].keys.len(), 1);

    // Two rounds in a row keep a key back: the third has the last one.
    proxy.hold_back_batch_keys(2);
    let mut svc = layered(&via, &adapter);
    let out = call(&mut svc, &Session::new(), batch(&keys)).await;
    assert_eq!(out.get_ref().batch_items(&table).len(), 3);
    assert_eq!(out.attempts(), 1, "resent within one attempt of the layer");

    // Past the budget: a typed error naming the keys left.
    proxy.hold_back_batch_keys(usize::MAX);
    let mut svc = layered(&via, &adapter.clone().batch_get_retries(1));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(batch(&keys)))
        .await
        .unwrap_err();
    match err {
        ryw::Error::Store {
            source:
                DynamoError::UnprocessedKeys {
                    remaining, rounds, ..
                },
            ..
        } => {
            assert_eq!(remaining, 1);
            assert_eq!(rounds, 2);
        }
        other => panic!("expected unprocessed keys, got {other:?}"),
    }
    proxy.hold_back_batch_keys(0);
}

/// Another session changes z; this session's TransactGetItems shows the change (it is always
/// strong), and what it saw fences the session's next cheap read of z.
pub(crate) async fn transact_get_items_is_strong_and_advances_the_session(moto: &str) {
    let direct = client(moto);
    let table = fresh_table(&direct).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let mut before = layered(&direct, &adapter);
    call(&mut before, &Session::new(), put(&table, "z", None, "v1")).await;
    let proxy = LaggingReplicaForTests::start(moto, &[&table], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let writer = Session::new();
    call(&mut svc, &writer, get(&table, "z", None)).await;
    call(&mut svc, &writer, put(&table, "z", None, "v2")).await;

    // Without the fence: the replica still serves v1.
    let raw = via
        .get_item()
        .table_name(&table)
        .key("pk", s("z"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(raw.item.as_ref().unwrap()), "v1", "the replica lags");

    let reader = Session::new();
    let transact = TransactGetItemsInput::builder().transact_items(
        TransactGetItem::builder()
            .get(
                Get::builder()
                    .table_name(&table)
                    .key("pk", s("z"))
                    .build()
                    .unwrap(),
            )
            .build(),
    );
    let out = call(&mut svc, &reader, transact).await;
    assert!(out.get_ref().is_consistent());
    assert_eq!(
        out.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert_eq!(body(out.get_ref().transact_items()[0].unwrap()), "v2");

    // The session saw v2: its cheap read of z must not go back to v1.
    let again = call(&mut svc, &reader, get(&table, "z", None)).await;
    assert!(
        again.visibility().is_guaranteed(),
        "{:?}",
        again.visibility()
    );
    assert_eq!(body(again.get_ref().item().unwrap()), "v2");
}

fn scan(table: &str) -> aws_sdk_dynamodb::operation::scan::builders::ScanInputBuilder {
    ScanInput::builder().table_name(table)
}

fn pks(items: &[Item]) -> Vec<String> {
    let mut pks: Vec<String> = items
        .iter()
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect();
    pks.sort();
    pks
}

/// s1 and s2 are long replicated; the session writes s3. Its scan holds s3 (read strongly); a
/// session that never wrote the table is told its scan claims nothing (`Unscoped`), and indeed
/// its page from the lagging replica lacks s3, even after it read s3.
pub(crate) async fn a_scan_holds_the_sessions_writes_and_claims_nothing_otherwise(moto: &str) {
    let direct = client(moto);
    let table = fresh_table(&direct).await;
    let untouched = fresh_table(&direct).await;
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&table, "pk"))
        .table(TableSchema::new(&untouched, "pk"));
    let mut before = layered(&direct, &adapter);
    let other = Session::new();
    call(&mut before, &other, put(&table, "s1", None, "old")).await;
    call(&mut before, &other, put(&table, "s2", None, "old")).await;
    let proxy = LaggingReplicaForTests::start(moto, &[&table, &untouched], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let session = Session::new();
    call(&mut svc, &session, put(&table, "s3", None, "new")).await;
    let all = vec!["s1".to_owned(), "s2".into(), "s3".into()];

    // Without the fence: the replica's scan lacks s3.
    let raw = scan(&table).send_with(&via).await.unwrap();
    assert_eq!(
        pks(raw.items()),
        vec!["s1".to_owned(), "s2".into()],
        "the replica lags"
    );

    // The session wrote the table: its scan is read strongly and holds s3.
    let out = call(&mut svc, &session, scan(&table)).await;
    assert_eq!(pks(out.get_ref().items()), all);
    assert_eq!(
        out.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert!(out.get_ref().is_consistent());
    // Every page of it, one item a page.
    let request = session.request(DynamoRequest::from(scan(&table).limit(1)));
    let pages = Pages::new(&mut svc, request)
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(pks(pages.items()), all);
    assert!(pages.is_guaranteed());
    assert!(pages.pages() >= 3);

    // A table the session never wrote: the scan claims nothing.
    let out = call(&mut svc, &session, scan(&untouched)).await;
    assert_eq!(out.visibility(), &Visibility::Unscoped);

    // A session that only read s3: its scan comes from the lagging replica, lacks s3, and says
    // so by claiming nothing.
    let reader = Session::new();
    let strong = GetItemInput::builder()
        .table_name(&table)
        .key("pk", s("s3"))
        .consistent_read(true);
    assert!(call(&mut svc, &reader, strong)
        .await
        .get_ref()
        .item()
        .is_some());
    let out = call(&mut svc, &reader, scan(&table)).await;
    assert_eq!(out.visibility(), &Visibility::Unscoped);
    assert_eq!(
        pks(out.get_ref().items()),
        vec!["s1".to_owned(), "s2".into()]
    );
}

/// Monotonic reads from an item to its partition: the session reads an item another session just
/// wrote (strongly, or in a transaction), then queries the item's partition through a replica that
/// lacks it. The query must not be `Guaranteed` without the item: reading the item raises what the
/// session requires of its partition (the item's writer's clock), which the replica's page does not
/// meet, so the page is read again and then strongly. For a table with a sort key, and for one
/// keyed by its partition key alone (where the partition is the item).
pub(crate) async fn a_query_after_reading_an_item_holds_that_item_under_lag(moto: &str) {
    let direct = client(moto);
    let composite = partitioned_table();
    create_partitioned_table(&direct, &composite).await;
    let simple = fresh_table(&direct).await;
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&composite, "pk").sort_key("sk"))
        .table(TableSchema::new(&simple, "pk"));
    let mut before = layered(&direct, &adapter);
    call(
        &mut before,
        &Session::new(),
        put(&composite, "p", Some("a"), "old"),
    )
    .await;
    let proxy = LaggingReplicaForTests::start(moto, &[&composite, &simple], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let writer = Session::new();
    call(&mut svc, &writer, put(&composite, "p", Some("b"), "new")).await;
    call(&mut svc, &writer, put(&simple, "q", None, "new")).await;

    fn strong_get(table: &str, pk: &str, sk: Option<&str>) -> DynamoRequest {
        DynamoRequest::from(
            GetItemInput::builder()
                .table_name(table)
                .set_key(Some(key(pk, sk)))
                .consistent_read(true),
        )
    }
    fn transact_get(table: &str, pk: &str, sk: Option<&str>) -> DynamoRequest {
        DynamoRequest::from(
            TransactGetItemsInput::builder().transact_items(
                TransactGetItem::builder()
                    .get(
                        Get::builder()
                            .table_name(table)
                            .set_key(Some(key(pk, sk)))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ),
        )
    }
    type Read = fn(&str, &str, Option<&str>) -> DynamoRequest;
    let reads: [(&str, Read); 2] = [("GetItem", strong_get), ("TransactGetItems", transact_get)];
    for (case, read) in reads {
        let reader = Session::new();
        let seen = call(&mut svc, &reader, read(&composite, "p", Some("b"))).await;
        assert!(seen.visibility().is_guaranteed(), "{case}");
        // The replica still lacks b: a raw query shows only a.
        let raw = query_partition(&composite, "p")
            .send_with(&via)
            .await
            .unwrap();
        assert_eq!(
            sk_and_body(raw.items()),
            [("a".into(), "old".into())],
            "the replica lags"
        );
        let out = call(&mut svc, &reader, query_partition(&composite, "p")).await;
        assert!(
            out.visibility().is_guaranteed(),
            "{case}: {:?}",
            out.visibility()
        );
        assert_eq!(
            sk_and_body(out.get_ref().items()),
            [("a".into(), "old".into()), ("b".into(), "new".into())],
            "{case}: the query holds the item the session read ({:?})",
            out.visibility()
        );

        let reader = Session::new();
        call(&mut svc, &reader, read(&simple, "q", None)).await;
        let out = call(&mut svc, &reader, query_partition(&simple, "q")).await;
        assert_eq!(
            out.get_ref().items().len(),
            1,
            "{case}: the partition is the item the session read ({:?})",
            out.visibility()
        );
        assert!(out.visibility().is_guaranteed(), "{case}");
    }
}

/// A write that applies long after it was stamped: a write kept for later
/// (`ReadYourWrites::stamp`) is delivered after a later write of its partition, by another
/// session, has applied and reached the replica. The replica then holds the later write, whose
/// writer's clock is past the kept write's stamp, but not the kept write. The session's query of
/// the partition must not be `Guaranteed` without its write: the kept write carries, and the
/// session requires, the clock at which it was sent, not the one at which it was stamped.
pub(crate) async fn a_write_delivered_after_a_later_write_is_held_by_a_guaranteed_query(
    moto: &str,
) {
    let direct = client(moto);
    let table = partitioned_table();
    create_partitioned_table(&direct, &table).await;
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk").sort_key("sk"));
    let proxy = LaggingReplicaForTests::start(moto, &[&table], LAG).await;
    let via = client(&proxy.url);
    let mut svc = layered(&via, &adapter);
    let session = Session::new();
    let kept = svc
        .stamp(&session.request(put(&table, "p", Some("kept"), "mine")))
        .expect("a write");
    tokio::time::sleep(Duration::from_millis(5)).await;
    call(
        &mut svc,
        &Session::new(),
        put(&table, "p", Some("later"), "theirs"),
    )
    .await;
    tokio::time::sleep(LAG + Duration::from_millis(300)).await;
    svc.ready()
        .await
        .unwrap()
        .call(ryw::SessionRequest::from_stamped(session.clone(), kept))
        .await
        .unwrap();
    let raw = query_partition(&table, "p").send_with(&via).await.unwrap();
    assert_eq!(
        sk_and_body(raw.items()),
        [("later".into(), "theirs".into())],
        "the replica holds the later write only"
    );
    let out = call(&mut svc, &session, query_partition(&table, "p")).await;
    assert_eq!(
        sk_and_body(out.get_ref().items()),
        [
            ("kept".into(), "mine".into()),
            ("later".into(), "theirs".into())
        ],
        "{:?}",
        out.visibility()
    );
    assert!(out.visibility().is_guaranteed(), "{:?}", out.visibility());
}
