//! Query fences under a replica that holds a later write of a partition and lacks an earlier
//! write of the session ([`OutOfOrderReplicaForTests`]). In most cases the session wrote `x`,
//! another session then wrote `y` in the same partition (and the same partition of the global
//! index `by_author`), and the replica holds `y` but not `x`: AWS DynamoDB never serves that view
//! of a base-table partition (it replicates each partition in order); a store such as ScyllaDB
//! Alternator can, and DynamoDB can for a global index. In the last case the replica is an
//! in-order prefix, and the writers' clocks disagree with the order the partition applied their
//! writes in.

use crate::replica::{
    apply_to_replica, create_partitioned_table, primary_item, OutOfOrderReplicaForTests,
};
use crate::support::{client, s, Item};
use aws_sdk_dynamodb::operation::{put_item::PutItemInput, query::QueryInput};
use aws_sdk_dynamodb::Client;
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Version, Visibility};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Layer, ServiceExt};

static TABLES: AtomicUsize = AtomicUsize::new(0);

/// The primary table, its replica (`y` applied, `x` not), and the proxy that serves eventually
/// consistent queries from the replica.
struct OutOfOrder {
    table: String,
    direct: Client,
    proxy: OutOfOrderReplicaForTests,
    session: Session,
    x: Item,
    y: Item,
}

fn adapter(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(
        TableSchema::new(table, "pk")
            .sort_key("sk")
            .global_index("by_author", "author"),
    )
}

fn put(table: &str, sk: &str) -> DynamoRequest {
    PutItemInput::builder()
        .table_name(table)
        .item("pk", s("p"))
        .item("sk", s(sk))
        .item("author", s("ada"))
        .into()
}

/// The query of partition `p` of the table.
fn partition_query(table: &str) -> DynamoRequest {
    QueryInput::builder()
        .table_name(table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s("p"))
        .into()
}

/// The query of partition `ada` of the global index `by_author`.
fn index_query(table: &str) -> DynamoRequest {
    QueryInput::builder()
        .table_name(table)
        .index_name("by_author")
        .key_condition_expression("#a = :a")
        .expression_attribute_names("#a", "author")
        .expression_attribute_values(":a", s("ada"))
        .into()
}

fn sort_keys(items: &[Item]) -> Vec<&str> {
    let mut keys: Vec<_> = items
        .iter()
        .map(|i| i["sk"].as_s().unwrap().as_str())
        .collect();
    keys.sort_unstable();
    keys
}

fn clock(item: &Item) -> u64 {
    item["ryw_clock"].as_n().unwrap().parse().unwrap()
}

/// A fresh primary table, its replica (empty) and the proxy in front of moto.
async fn tables(endpoint: &str) -> (String, Client, OutOfOrderReplicaForTests) {
    let direct = client(endpoint);
    let n = TABLES.fetch_add(1, Ordering::Relaxed);
    let table = format!("ooo{}_{n}", std::process::id());
    let replica = format!("{table}_replica");
    create_partitioned_table(&direct, &table).await;
    create_partitioned_table(&direct, &replica).await;
    let proxy = OutOfOrderReplicaForTests::start(endpoint, &table, &replica).await;
    (table, direct, proxy)
}

/// The session writes `x`, another session then writes `y`, both through the session layer;
/// the replica applies `y` only.
async fn out_of_order(endpoint: &str) -> OutOfOrder {
    let (table, direct, proxy) = tables(endpoint).await;
    let writer =
        ReadYourWritesLayer::new(adapter(&table)).layer(DynamoService::new(direct.clone()));
    let session = Session::new();
    writer
        .clone()
        .oneshot(session.request(put(&table, "x")))
        .await
        .unwrap();
    writer
        .oneshot(Session::new().request(put(&table, "y")))
        .await
        .unwrap();
    let x = primary_item(&direct, &table, "p", "x").await;
    let y = primary_item(&direct, &table, "p", "y").await;
    assert!(clock(&y) > clock(&x), "y is the later write");
    apply_to_replica(&direct, &format!("{table}_replica"), y.clone()).await;
    OutOfOrder {
        table,
        direct,
        proxy,
        session,
        x,
        y,
    }
}

/// `ordered_partitions(false)`: the replica's answer (`y` without `x`) is never `Guaranteed`. A
/// query of a partition the session wrote to goes to a `ConsistentRead` query up front, which the
/// primary answers with `x`; a fence that may not escalate reads the replica, `Pending`. A session that wrote nothing to the partition reads the
/// replica unfenced.
pub(crate) async fn an_unordered_partition_query_is_never_guaranteed_without_the_sessions_item(
    endpoint: &str,
) {
    let ooo = out_of_order(endpoint).await;
    let through_proxy = DynamoService::new(client(&ooo.proxy.url));
    let unordered = adapter(&ooo.table).ordered_partitions(false);

    // The replica answers without x; a consistent read is needed, and shows x.
    let read = ReadYourWritesLayer::new(unordered.clone())
        .layer(through_proxy.clone())
        .oneshot(ooo.session.request(partition_query(&ooo.table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert!(read.get_ref().is_consistent());
    assert_eq!(sort_keys(read.get_ref().items()), ["x", "y"]);
    assert_eq!(
        ooo.proxy.queries(),
        (0, 1),
        "one ConsistentRead up front, no cheap read"
    );

    // The fence not allowed to escalate: the replica's answer is returned `Pending`.
    let no_escalation = FenceConfig {
        escalate_on_stale: false,
        ..FenceConfig::verify_then_escalate(1, Duration::from_millis(5))
    };
    let read = ReadYourWritesLayer::new(unordered.clone())
        .fence(no_escalation)
        .layer(through_proxy.clone())
        .oneshot(ooo.session.request(partition_query(&ooo.table)))
        .await
        .unwrap();
    assert_eq!(sort_keys(read.get_ref().items()), ["y"], "x is missing");
    let Visibility::Pending(stale) = read.visibility() else {
        panic!("expected pending, got {:?}", read.visibility())
    };
    assert_eq!(stale.staleness.observed, Some(Version::ZERO));
    assert_eq!(
        stale.staleness.required,
        Version::new(clock(&ooo.y)),
        "what the session requires of the partition: the newest write it has seen there, y, \
         which the strong query before showed it"
    );
    assert_eq!(
        ooo.proxy.queries(),
        (1, 1),
        "one cheap read, no re-read, no ConsistentRead"
    );

    // Once the replica has applied x too, its answer is complete, but nothing in it can show
    // that: the query still costs a ConsistentRead.
    apply_to_replica(
        &ooo.direct,
        &format!("{}_replica", ooo.table),
        ooo.x.clone(),
    )
    .await;
    let read = ReadYourWritesLayer::new(unordered.clone())
        .layer(through_proxy.clone())
        .oneshot(ooo.session.request(partition_query(&ooo.table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(ooo.proxy.queries(), (1, 2));

    // A session that wrote nothing to the partition is not fenced there.
    let read = ReadYourWritesLayer::new(unordered)
        .layer(through_proxy)
        .oneshot(Session::new().request(partition_query(&ooo.table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert_eq!(ooo.proxy.queries(), (2, 2));
}

/// The default, `ordered_partitions(true)` (AWS DynamoDB), on a store that breaks the property:
/// `y`'s clock, at least the session's write of `x`, is credited to the whole partition, so the
/// first cheap answer, without `x`, meets the fence: `Guaranteed(Verified)`, no re-read, no
/// `ConsistentRead`. The fence rests on the store replicating each partition in order.
pub(crate) async fn an_out_of_order_view_meets_the_fence_of_an_ordered_partition_without_the_sessions_item(
    endpoint: &str,
) {
    let ooo = out_of_order(endpoint).await;
    let read = ReadYourWritesLayer::new(adapter(&ooo.table))
        .layer(DynamoService::new(client(&ooo.proxy.url)))
        .oneshot(ooo.session.request(partition_query(&ooo.table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert!(!read.get_ref().is_consistent());
    assert_eq!(
        sort_keys(read.get_ref().items()),
        ["y"],
        "guaranteed without the session's x"
    );
    assert_eq!(ooo.proxy.queries(), (1, 0));
    assert_eq!(read.get_ref().items()[0], ooo.y);
}

/// A global index query of the same out-of-order view (the index partition holds `y`, not `x`),
/// with either setting: no version is credited to an index partition, the index has no strong
/// reads, so the read is `Pending` with what the index holds, and no `ConsistentRead` is sent.
pub(crate) async fn a_gsi_query_of_an_out_of_order_view_is_pending_without_a_consistent_read(
    endpoint: &str,
) {
    let ooo = out_of_order(endpoint).await;
    for ordered in [true, false] {
        let before = ooo.proxy.queries();
        let read = ReadYourWritesLayer::new(adapter(&ooo.table).ordered_partitions(ordered))
            .layer(DynamoService::new(client(&ooo.proxy.url)))
            .oneshot(ooo.session.request(index_query(&ooo.table)))
            .await
            .unwrap();
        assert_eq!(sort_keys(read.get_ref().items()), ["y"], "x is missing");
        let Visibility::Pending(stale) = read.visibility() else {
            panic!(
                "ordered_partitions({ordered}): expected pending, got {:?}",
                read.visibility()
            )
        };
        assert_eq!(stale.staleness.observed, Some(Version::ZERO));
        let after = ooo.proxy.queries();
        assert_eq!(after.1, before.1, "no ConsistentRead on a global index");
        assert!(after.0 > before.0);
    }
}

/// A wall clock a minute ahead of the system's.
#[derive(Debug)]
struct AMinuteAhead;

impl ryw::clock::Clock for AMinuteAhead {
    fn now_micros(&self) -> u64 {
        ryw::clock::SystemClock.now_micros() + 60_000_000
    }
}

/// The partition fence also rests on clocks: a write the partition applied before the session's
/// must carry an earlier clock. Another writer whose clock runs ahead writes `y`; the session then
/// writes `x`; the replica has applied the partition's writes in order but not yet `x` (it holds
/// `y` alone), and `y`'s clock is later than `x`'s. With the default the cheap answer, without
/// `x`, is `Guaranteed(Verified)`; with `ordered_partitions(false)` it goes to a `ConsistentRead`.
pub(crate) async fn a_writer_whose_clock_runs_ahead_meets_the_partition_fence_without_the_sessions_item(
    endpoint: &str,
) {
    use ryw::clock::Clock;

    let (table, direct, proxy) = tables(endpoint).await;
    let service = DynamoService::new(direct.clone());
    ReadYourWritesLayer::new(adapter(&table))
        .clock(AMinuteAhead)
        .layer(service.clone())
        .oneshot(Session::new().request(put(&table, "y")))
        .await
        .unwrap();
    let session = Session::new();
    ReadYourWritesLayer::new(adapter(&table))
        .layer(service)
        .oneshot(session.request(put(&table, "x")))
        .await
        .unwrap();
    let x = primary_item(&direct, &table, "p", "x").await;
    let y = primary_item(&direct, &table, "p", "y").await;
    assert!(clock(&x) <= ryw::clock::SystemClock.now_micros());
    assert!(
        clock(&y) > clock(&x),
        "y, applied first, carries the later clock"
    );
    apply_to_replica(&direct, &format!("{table}_replica"), y).await;

    let through_proxy = DynamoService::new(client(&proxy.url));
    let read = ReadYourWritesLayer::new(adapter(&table))
        .layer(through_proxy.clone())
        .oneshot(session.request(partition_query(&table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert_eq!(
        sort_keys(read.get_ref().items()),
        ["y"],
        "guaranteed without the session's x"
    );
    assert_eq!(proxy.queries(), (1, 0));

    let read = ReadYourWritesLayer::new(adapter(&table).ordered_partitions(false))
        .layer(through_proxy)
        .oneshot(session.request(partition_query(&table)))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(sort_keys(read.get_ref().items()), ["x", "y"]);
    assert_eq!(proxy.queries(), (1, 1), "straight to ConsistentRead");
}
