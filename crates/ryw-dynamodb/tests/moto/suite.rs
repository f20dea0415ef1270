//! The DynamoDB adapter suite, run against moto (`tests/moto/main.rs`) and against DynamoDB
//! Local (`testcontainers/tests/dynamodb_local.rs`). Each case takes a client and makes its own
//! table.
#![allow(dead_code)]

use crate::support::*;
use aws_sdk_dynamodb::operation::{
    delete_item::DeleteItemInput, get_item::GetItemInput, put_item::PutItemInput,
    query::QueryInput, transact_write_items::TransactWriteItemsInput, update_item::UpdateItemInput,
};
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use ryw::conflict::{Conflict, ConflictResolver, Resolution};
use ryw::fence::FencePath;
use ryw::{ReadYourWritesLayer, Session, Version, Visibility};
use ryw_dynamodb::{DynamoAdapter, DynamoError, DynamoRequest, DynamoService, TableSchema};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tower::{Layer, Service, ServiceExt};

fn adapter(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(TableSchema::new(table, "pk").global_index("by_author", "author"))
}

fn put(table: &str, pk: &str, body: &str) -> DynamoRequest {
    PutItemInput::builder()
        .table_name(table)
        .item("pk", s(pk))
        .item("body", s(body))
        .item("author", s("ada"))
        .into()
}

fn get(table: &str, pk: &str) -> DynamoRequest {
    GetItemInput::builder()
        .table_name(table)
        .key("pk", s(pk))
        .into()
}

fn version_of(item: &Item) -> u64 {
    item["ryw_version"].as_n().unwrap().parse().unwrap()
}

/// The write id the item's current version was written by (its recent-write-id slot).
fn writer_of(item: &Item) -> &str {
    let slot = version_of(item) % ryw_dynamodb::RECENT_WRITE_IDS as u64;
    item[&format!("ryw_write_id_{slot}")].as_s().unwrap()
}

pub(crate) async fn writes_carry_version_write_id_and_clock(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let mut svc =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let session = Session::new();

    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "a", "one")))
        .await
        .unwrap();
    let write_id = out.write_id().unwrap();
    let item = peek(&client, &table, "a").await.unwrap();
    let v1 = version_of(&item);
    assert_eq!(writer_of(&item), &write_id.to_string());
    assert!(item["ryw_clock"].as_n().is_ok());
    assert_eq!(out.get_ref().written_version(), Some(Version::new(v1)));

    // An update expects the version the session saw and moves it by one.
    let update = UpdateItemInput::builder()
        .table_name(&table)
        .key("pk", s("a"))
        .update_expression("SET body = :b")
        .expression_attribute_values(":b", s("two"));
    svc.ready()
        .await
        .unwrap()
        .call(session.request(DynamoRequest::from(update)))
        .await
        .unwrap();
    let item = peek(&client, &table, "a").await.unwrap();
    assert_eq!(version_of(&item), v1 + 1);
    assert_eq!(item["body"].as_s().unwrap(), "two");

    // The session's token carries the item's version.
    let scope = adapter
        .item_scope(&table, &[("pk".to_owned(), s("a"))].into())
        .unwrap();
    assert_eq!(
        session.snapshot().vector().get(scope),
        Some(Version::new(v1 + 1))
    );
}

pub(crate) async fn another_instance_with_the_token_reads_its_write_through_escalation(
    client: Client,
) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let layer = ReadYourWritesLayer::new(adapter.clone());
    let mut instance_a = layer.layer(DynamoService::new(client.clone()));
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut instance_b = layer.layer(stale.clone());

    let session = Session::new();
    instance_a
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "p", "hello")))
        .await
        .unwrap();
    let token = session.token().encode().unwrap();

    // Instance B's replica has not seen the item yet, for two eventually consistent reads.
    stale.hold("p", None, 2);
    let elsewhere = Session::from_encoded(&token).unwrap();
    let read = instance_b
        .ready()
        .await
        .unwrap()
        .call(elsewhere.request(get(&table, "p")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(
        read.get_ref().item().unwrap()["body"].as_s().unwrap(),
        "hello"
    );
    assert!(read.get_ref().is_consistent());
    assert_eq!(
        stale.eventual_reads.load(Ordering::Relaxed),
        2,
        "verify, then one re-read"
    );
    assert_eq!(
        stale.consistent_reads.load(Ordering::Relaxed),
        1,
        "then escalation"
    );

    // Without ryw, the same replica serves the missing item.
    stale.hold("p", None, 1);
    let plain = stale.clone().oneshot(get(&table, "p")).await.unwrap();
    assert!(plain.item().is_none());

    // Once the replica has caught up, reads stay on the cheap path.
    let read = instance_b
        .ready()
        .await
        .unwrap()
        .call(elsewhere.request(get(&table, "p")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert!(!read.get_ref().is_consistent());
}

pub(crate) async fn an_older_copy_is_stale_and_an_unseen_item_is_not_fenced(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "x", "v1")))
        .await
        .unwrap();
    let old = peek(&client, &table, "x").await;
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "x", "v2")))
        .await
        .unwrap();

    stale.hold("x", old, 1);
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(get(&table, "x")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::ReRead)
    );
    assert_eq!(read.get_ref().item().unwrap()["body"].as_s().unwrap(), "v2");

    // A session that never saw the item accepts whatever the replica has.
    stale.hold("x", None, 1);
    let fresh = Session::new();
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(fresh.request(get(&table, "x")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
}

pub(crate) async fn a_gsi_query_that_stays_stale_is_pending(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "q1", "by ada")))
        .await
        .unwrap();

    let query = || -> DynamoRequest {
        QueryInput::builder()
            .table_name(&table)
            .index_name("by_author")
            .key_condition_expression("#a = :a")
            .expression_attribute_names("#a", "author")
            .expression_attribute_values(":a", s("ada"))
            .into()
    };
    stale.stale_queries(10);
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(query()))
        .await
        .unwrap();
    let Visibility::Pending(stale_read) = read.visibility() else {
        panic!("expected pending, got {:?}", read.visibility())
    };
    assert_eq!(stale_read.staleness.observed, Some(Version::ZERO));
    assert!(stale_read.staleness.required > Version::ZERO);
    assert_eq!(
        stale.consistent_reads.load(Ordering::Relaxed),
        0,
        "a GSI has no strong reads"
    );

    // Caught up, the index shows the item, but what a global index returns never proves it
    // holds every write of the session (it is updated item by item, in no order): still pending.
    // (See `a_gsi_query_that_shows_a_later_write_but_lacks_an_earlier_one_is_never_guaranteed`.)
    stale.stale_queries(0);
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(query()))
        .await
        .unwrap();
    assert!(read.visibility().is_pending(), "{:?}", read.visibility());
    assert_eq!(read.get_ref().items().len(), 1);
    // A session that wrote nothing to that index partition reads it unfenced.
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(query()))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
}

/// The case: DynamoDB copies writes to a global index item by item,
/// in no order, so the index can show the session's later write while it still lacks an earlier
/// one; such a query was `Guaranteed(Verified)` without the earlier write.
pub(crate) async fn a_gsi_query_that_shows_a_later_write_but_lacks_an_earlier_one_is_never_guaranteed(
    client: Client,
) {
    let table = fresh_table(&client).await;
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc = ReadYourWritesLayer::new(adapter(&table)).layer(stale.clone());
    let session = Session::new();
    for pk in ["x", "y"] {
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put(&table, pk, "by ada")))
            .await
            .unwrap();
    }
    // The index has y but not yet x.
    let y = peek(&client, &table, "y").await.unwrap();
    stale.hold_queries(vec![y], 10);
    let query: DynamoRequest = QueryInput::builder()
        .table_name(&table)
        .index_name("by_author")
        .key_condition_expression("#a = :a")
        .expression_attribute_names("#a", "author")
        .expression_attribute_values(":a", s("ada"))
        .into();
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(query))
        .await
        .unwrap();
    assert_eq!(read.get_ref().items().len(), 1, "x is missing");
    assert!(
        !read.visibility().is_guaranteed(),
        "{:?}",
        read.visibility()
    );
}

pub(crate) async fn an_ambiguous_write_is_resolved_as_success_and_applied_once(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let lossy = LoseWriteResponsesForTests::new(DynamoService::new(client.clone()), 1);
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(lossy.clone());
    let session = Session::new();

    // A counter: applying twice would show.
    let bump = || -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("c"))
            .update_expression("ADD hits :one")
            .expression_attribute_values(":one", n(1))
            .into()
    };
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .unwrap();
    assert!(
        out.get_ref().was_replayed(),
        "the retry found its own write id on the item"
    );
    assert_eq!(out.attempts(), 2);
    assert_eq!(lossy.calls.load(Ordering::Relaxed), 2);
    let item = peek(&client, &table, "c").await.unwrap();
    assert_eq!(item["hits"].as_n().unwrap(), "1", "applied once");
    assert_eq!(writer_of(&item), &out.write_id().unwrap().to_string());

    // A put too.
    let lossy = LoseWriteResponsesForTests::new(DynamoService::new(client.clone()), 1);
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(lossy);
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    let item = peek(&client, &table, "c").await.unwrap();
    assert_eq!(item["hits"].as_n().unwrap(), "2");
}

#[derive(Debug)]
struct Yield;
impl<R> ConflictResolver<R> for Yield {
    fn resolve(&self, _: &R, _: &Conflict) -> Resolution<R> {
        Resolution::Yield
    }
}

pub(crate) async fn conflicts_go_to_the_resolver_with_both_versions_and_the_item(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let mut lww = ReadYourWritesLayer::new(adapter.clone()).layer(service.clone());
    let mut polite = ReadYourWritesLayer::new(adapter.clone())
        .resolver(Yield)
        .layer(service.clone());

    let alice = Session::new();
    lww.ready()
        .await
        .unwrap()
        .call(alice.request(put(&table, "k", "alice")))
        .await
        .unwrap();
    let v_alice = version_of(&peek(&client, &table, "k").await.unwrap());

    // Bob never saw the item: his write conflicts; with a resolver that yields he is told.
    let bob = Session::new();
    let err = polite
        .ready()
        .await
        .unwrap()
        .call(bob.request(put(&table, "k", "bob")))
        .await
        .unwrap_err();
    let conflict = err.conflict().expect("a conflict");
    assert_eq!(conflict.current, Version::new(v_alice));
    assert_eq!(conflict.expected, Some(Version::ZERO));
    assert!(conflict.current_writer.is_some() && conflict.current_timestamp.is_some());
    let theirs = conflict.current_item::<Item>().unwrap();
    assert_eq!(theirs["body"].as_s().unwrap(), "alice");
    assert_eq!(
        peek(&client, &table, "k").await.unwrap()["body"]
            .as_s()
            .unwrap(),
        "alice"
    );

    // The conflict showed Bob the current version: his next write is based on it.
    let out = polite
        .ready()
        .await
        .unwrap()
        .call(bob.request(put(&table, "k", "bob")))
        .await
        .unwrap();
    assert_eq!(out.attempts(), 1);
    assert_eq!(
        version_of(&peek(&client, &table, "k").await.unwrap()),
        v_alice + 1
    );

    // Last writer wins (the default): Carol, who never saw the item, conflicts, and her later
    // clock wins; the write is rebased onto the current version.
    let carol = Session::new();
    let out = lww
        .ready()
        .await
        .unwrap()
        .call(carol.request(put(&table, "k", "carol")))
        .await
        .unwrap();
    assert_eq!(out.attempts(), 2);
    let item = peek(&client, &table, "k").await.unwrap();
    assert_eq!(item["body"].as_s().unwrap(), "carol");
    assert_eq!(version_of(&item), v_alice + 2);

    // A read-modify-write with an explicit, outdated version is always reported.
    let err = lww
        .ready()
        .await
        .unwrap()
        .call(alice.request(put(&table, "k", "alice again").expect_version(Version::new(v_alice))))
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(
        peek(&client, &table, "k").await.unwrap()["body"]
            .as_s()
            .unwrap(),
        "carol"
    );
}

pub(crate) async fn the_callers_own_condition_failing_is_not_a_conflict(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let mut svc =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "c", "v1")))
        .await
        .unwrap();
    let guarded: DynamoRequest = PutItemInput::builder()
        .table_name(&table)
        .item("pk", s("c"))
        .item("body", s("v2"))
        .condition_expression("body = :expected")
        .expression_attribute_values(":expected", s("something else"))
        .into();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(guarded))
        .await
        .unwrap_err();
    assert!(err.is_store() && !err.is_transient() && !err.is_conflict());
    let store = err.store_error().unwrap();
    assert!(store.is_condition_failed() && !store.is_version_conflict());
}

pub(crate) async fn transactions_stamp_every_item_and_report_cancellation_reasons(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let session = Session::new();
    let tx_put = |pk: &str| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .item("pk", s(pk))
                    .item("body", s("tx"))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let tx = TransactWriteItemsInput::builder()
        .transact_items(tx_put("t1"))
        .transact_items(tx_put("t2"));
    let mut svc =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(DynamoRequest::from(tx)))
        .await
        .unwrap();
    let write_id = out.write_id().unwrap().to_string();
    for pk in ["t1", "t2"] {
        let item = peek(&client, &table, pk).await.unwrap();
        assert_eq!(writer_of(&item), &write_id);
    }

    // A condition check that fails: canceled, with one reason per item.
    let check = TransactWriteItem::builder()
        .condition_check(
            ConditionCheck::builder()
                .table_name(&table)
                .key("pk", s("t1"))
                .condition_expression("body = :nope")
                .expression_attribute_values(":nope", s("nope"))
                .build()
                .unwrap(),
        )
        .build();
    let tx = TransactWriteItemsInput::builder()
        .transact_items(check)
        .transact_items(tx_put("t3"));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(DynamoRequest::from(tx)))
        .await
        .unwrap_err();
    let Some(DynamoError::TransactionCanceled { reasons, .. }) = err.store_error() else {
        panic!("{err:?}")
    };
    let codes: Vec<_> = reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["ConditionalCheckFailed", "None"]);
    assert!(peek(&client, &table, "t3").await.is_none());
}

pub(crate) async fn delete_then_read_and_recreate(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "d", "v1")))
        .await
        .unwrap();
    let before = peek(&client, &table, "d").await;
    let del: DynamoRequest = DeleteItemInput::builder()
        .table_name(&table)
        .key("pk", s("d"))
        .into();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(del))
        .await
        .unwrap();
    assert!(peek(&client, &table, "d").await.is_none());

    // A replica that still has the item is stale for this session; the strong read is not.
    stale.hold("d", before, 5);
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(get(&table, "d")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert!(read.get_ref().item().is_none());

    // Writing it again works, with a version above the deletion.
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "d", "v2")))
        .await
        .unwrap();
    assert_eq!(
        peek(&client, &table, "d").await.unwrap()["body"]
            .as_s()
            .unwrap(),
        "v2"
    );
}

pub(crate) async fn errors_are_typed(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let mut svc =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let session = Session::new();

    let missing = get("no_such_table", "a");
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(missing))
        .await
        .unwrap_err();
    assert!(
        err.store_error().unwrap().is_resource_not_found(),
        "{err:?}"
    );

    let bad_key: DynamoRequest = GetItemInput::builder()
        .table_name(&table)
        .key("nope", s("a"))
        .into();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(bad_key))
        .await
        .unwrap_err();
    assert!(err.store_error().unwrap().is_validation(), "{err:?}");
    assert_eq!(
        err.store_error().unwrap().class(),
        ryw::adapter::ErrorClass::Permanent
    );
    // The SDK's own error is kept as the source, not flattened into a string.
    let source = std::error::Error::source(err.store_error().unwrap()).expect("the SDK error");
    assert!(!source.to_string().is_empty());

    // No server: the error says so in words, with the SDK's error underneath.
    let unreachable = client
        .config()
        .to_builder()
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let down = DynamoService::new(aws_sdk_dynamodb::Client::from_conf(unreachable));
    let err = down.oneshot(get(&table, "a")).await.unwrap_err();
    assert!(
        matches!(
            err,
            DynamoError::NoResponse {
                source: Some(_),
                ..
            } | DynamoError::NotSent {
                source: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("DispatchFailure {"), "{err}");

    let unknown = put("not_configured", "a", "x");
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(unknown))
        .await
        .unwrap_err();
    assert!(
        matches!(err.store_error(), Some(DynamoError::UnknownTable(t)) if t == "not_configured")
    );
}

/// moto ignores `ClientRequestToken`: the replay meets its own conditions, and the write ids
/// on the items show the transaction had committed. (DynamoDB Local answers the replay itself;
/// see testcontainers/.)
pub(crate) async fn a_lost_transaction_response_is_recognised_by_write_id(client: Client) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let session = Session::new();
    let tx_put = |pk: &str| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .item("pk", s(pk))
                    .item("body", s("tx"))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let bump = TransactWriteItem::builder()
        .update(
            Update::builder()
                .table_name(&table)
                .key("pk", s("t1"))
                .update_expression("ADD hits :one")
                .expression_attribute_values(":one", n(1))
                .build()
                .unwrap(),
        )
        .build();
    let lossy = LoseWriteResponsesForTests::new(DynamoService::new(client.clone()), 1);
    let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(lossy);
    let tx = TransactWriteItemsInput::builder()
        .transact_items(bump)
        .transact_items(tx_put("t4"));
    let out = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(DynamoRequest::from(tx)))
        .await
        .unwrap();
    assert!(out.get_ref().was_replayed());
    assert_eq!(
        peek(&client, &table, "t1").await.unwrap()["hits"]
            .as_n()
            .unwrap(),
        "1"
    );
}

pub(crate) async fn two_continuations_of_one_token_lose_no_acknowledged_write(client: Client) {
    // The reproduction: a token continued twice at once (two instances, a lost response, a second
    // tab), both writing the same items with every write operation. Before write ids had lanes,
    // the second continuation stamped the first one's ids, and its writes were reported as
    // replays ("the old item carries my write id"): acknowledged, never applied.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let instance_a =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let instance_b =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let bump = |who: &str| -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("doc"))
            .update_expression(
                "ADD hits :one SET #log = list_append(if_not_exists(#log, :none), :me)",
            )
            .expression_attribute_names("#log", "log")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":none", AttributeValue::L(vec![]))
            .expression_attribute_values(":me", AttributeValue::L(vec![s(who)]))
            .into()
    };
    let tx = |who: &str| -> DynamoRequest {
        TransactWriteItemsInput::builder()
            .transact_items(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&table)
                            .key("pk", s("doc"))
                            .update_expression("ADD tx :one")
                            .expression_attribute_values(":one", n(1))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&table)
                            .item("pk", s(&format!("tx-{who}")))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .into()
    };
    let (mut hits, mut txs, mut log) = (0, 0, Vec::new());
    let mut puts = Vec::new();
    for round in 0..5 {
        let origin = Session::new();
        instance_a
            .clone()
            .oneshot(origin.request(put(&table, "doc", "origin")))
            .await
            .unwrap();
        hits = 0;
        txs = 0;
        log.clear();
        let token = origin.token().encode().unwrap();
        // The two continuations alternate request by request (moto does not serialise
        // concurrent conditional updates of one item, so true parallelism would test moto): each
        // stamps its writes from the same token, as concurrent instances do.
        let (sa, sb) = (
            Session::from_encoded(&token).unwrap(),
            Session::from_encoded(&token).unwrap(),
        );
        let (wa, wb) = (format!("a{round}"), format!("b{round}"));
        let mut a = (wa.clone(), Vec::new());
        let mut b = (wb.clone(), Vec::new());
        for (ra, rb) in [
            (bump(&wa), bump(&wb)),
            (tx(&wa), tx(&wb)),
            (put(&table, "shared", &wa), put(&table, "shared", &wb)),
        ] {
            a.1.push(instance_a.clone().oneshot(sa.request(ra)).await);
            b.1.push(instance_b.clone().oneshot(sb.request(rb)).await);
        }
        for (who, outs) in [a, b] {
            for out in outs.iter().flatten() {
                assert!(
                    !out.get_ref().was_replayed(),
                    "{who}: a first attempt reported as a replay"
                );
            }
            if outs[0].is_ok() {
                hits += 1;
                log.push(who.clone());
            }
            if outs[1].is_ok() {
                txs += 1;
                assert!(
                    peek(&client, &table, &format!("tx-{who}")).await.is_some(),
                    "{who}"
                );
            }
            if outs[2].is_ok() {
                puts.push(who.clone());
            }
            // Whatever did not apply was reported, never acknowledged.
            for e in outs.iter().filter_map(|o| o.as_ref().err()) {
                assert!(e.is_conflict(), "{who}: {e:?}");
            }
        }
        let doc = peek(&client, &table, "doc").await.unwrap();
        assert_eq!(
            doc["hits"].as_n().unwrap(),
            &hits.to_string(),
            "round {round}"
        );
        assert_eq!(doc["tx"].as_n().unwrap(), &txs.to_string(), "round {round}");
        let mut seen: Vec<String> = doc["log"]
            .as_l()
            .unwrap()
            .iter()
            .map(|v| v.as_s().unwrap().clone())
            .collect();
        seen.sort();
        log.sort();
        assert_eq!(seen, log, "round {round}");
        let shared = peek(&client, &table, "shared").await.unwrap();
        assert!(puts.contains(shared["body"].as_s().unwrap()));
    }
    assert!(hits > 0 && txs > 0);
}

pub(crate) async fn a_retry_after_another_sessions_update_applies_once(client: Client) {
    // The response of an update is lost after it applied; another session updates the item; the
    // retry must recognise its own write among the item's recent write ids (before, the item kept
    // only the last writer's id, and the retry was reported as a conflict).
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let other = ReadYourWritesLayer::new(adapter.clone()).layer(service.clone());
    let bump = |by: i64| -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("c"))
            .update_expression("ADD hits :by")
            .expression_attribute_values(":by", n(by))
            .into()
    };
    let session = Session::new();
    ReadYourWritesLayer::new(adapter.clone())
        .layer(service.clone())
        .oneshot(session.request(bump(1)))
        .await
        .unwrap();
    let interleave = {
        let other = other.clone();
        let bump = bump(100);
        move || {
            let other = other.clone();
            let bump = bump.clone();
            Box::pin(async move {
                other
                    .oneshot(Session::new().request(bump))
                    .await
                    .expect("the other session's update");
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }
    };
    let lossy = InterleaveThenLoseForTests::new(service.clone(), interleave);
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(lossy.clone());
    for round in 0..2 {
        lossy.armed.store(1, Ordering::Relaxed);
        let out = svc.clone().oneshot(session.request(bump(1))).await.unwrap();
        assert!(
            out.get_ref().was_replayed(),
            "round {round}: recognised as applied"
        );
        assert_eq!(out.attempts(), 2);
    }
    let item = peek(&client, &table, "c").await.unwrap();
    assert_eq!(
        item["hits"].as_n().unwrap(),
        "203",
        "each update applied once"
    );
}

pub(crate) async fn a_read_of_an_undeclared_table_is_unscoped_never_guaranteed(client: Client) {
    // The adapter knows no key schema for this table, so it cannot name the item's scope: the
    // read is sent as it is and reported unscoped (before: `Guaranteed(Unfenced)`).
    let table = fresh_table(&client).await;
    let declared = adapter(&table);
    let undeclared = DynamoAdapter::new();
    let session = Session::new();
    ReadYourWritesLayer::new(declared.clone())
        .layer(DynamoService::new(client.clone()))
        .oneshot(session.request(put(&table, "u", "v1")))
        .await
        .unwrap();
    let read = ReadYourWritesLayer::new(undeclared.clone())
        .layer(DynamoService::new(client.clone()))
        .oneshot(session.request(get(&table, "u")))
        .await
        .unwrap();
    assert_eq!(read.visibility(), &Visibility::Unscoped);
    assert!(!read.visibility().is_guaranteed());
    let strict = ReadYourWritesLayer::new(undeclared.clone())
        .layer(DynamoService::new(client.clone()))
        .oneshot(
            session
                .request(get(&table, "u"))
                .stale_reads(ryw::fence::StaleReadPolicy::Error),
        )
        .await;
    assert!(strict.unwrap_err().is_unscoped());
}

fn delete(table: &str, pk: &str) -> DynamoRequest {
    DeleteItemInput::builder()
        .table_name(table)
        .key("pk", s(pk))
        .into()
}

/// Another session reads `pk` and deletes it.
async fn deleted_by_another_session(
    client: &Client,
    adapter: &DynamoAdapter,
    table: &str,
    pk: &str,
) {
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let other = Session::new();
    svc.clone()
        .oneshot(other.request(get(table, pk)))
        .await
        .unwrap();
    svc.oneshot(other.request(delete(table, pk))).await.unwrap();
    assert!(peek(client, table, pk).await.is_none());
}

pub(crate) async fn a_retry_after_another_sessions_delete_is_ambiguous_never_reapplied(
    client: Client,
) {
    // The case: the update applied, its response was lost, another session
    // deleted the item, and the retry re-created it (the delete undone, the update applied twice).
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let session = Session::new();
    ReadYourWritesLayer::new(adapter.clone())
        .layer(service.clone())
        .oneshot(session.request(put(&table, "x", "a1")))
        .await
        .unwrap();
    let interleave = {
        let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
        move || {
            let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
            Box::pin(
                async move { deleted_by_another_session(&client, &adapter, &table, "x").await },
            ) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }
    };
    let lossy = InterleaveThenLoseForTests::new(service.clone(), interleave);
    lossy.armed.store(1, Ordering::Relaxed);
    let bump: DynamoRequest = UpdateItemInput::builder()
        .table_name(&table)
        .key("pk", s("x"))
        .update_expression("ADD hits :one")
        .expression_attribute_values(":one", n(1))
        .into();
    let err = ReadYourWritesLayer::new(adapter.clone())
        .layer(lossy)
        .oneshot(session.request(bump))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert!(
        matches!(err.store_error(), Some(DynamoError::Unresolved(_))),
        "{err:?}"
    );
    assert!(
        peek(&client, &table, "x").await.is_none(),
        "the delete stands"
    );
}

pub(crate) async fn versions_keep_growing_across_delete_and_re_create(client: Client) {
    // The case: a session that saw version v re-created a deleted item at
    // v + 1, below the version another session's copy had in between; a replica holding that copy
    // then passed verification: `Guaranteed` without the session's own write.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let a = Session::new();
    let first = svc
        .clone()
        .oneshot(a.request(put(&table, "x", "a1")))
        .await
        .unwrap();
    deleted_by_another_session(&client, &adapter, &table, "x").await;
    let c = Session::new();
    let theirs = svc
        .clone()
        .oneshot(c.request(put(&table, "x", "c1")))
        .await
        .unwrap();
    let their_copy = peek(&client, &table, "x").await;
    svc.clone()
        .oneshot(c.request(delete(&table, "x")))
        .await
        .unwrap();
    let again = svc
        .clone()
        .oneshot(a.request(put(&table, "x", "a2")))
        .await
        .unwrap();
    let (v1, vc, v2) = (
        first.get_ref().written_version().unwrap(),
        theirs.get_ref().written_version().unwrap(),
        again.get_ref().written_version().unwrap(),
    );
    assert!(v2 > vc && v2 > v1, "{v1:?} {vc:?} {v2:?}");
    stale.hold("x", their_copy, 1);
    let read = svc
        .clone()
        .oneshot(a.request(get(&table, "x")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(read.get_ref().item().unwrap()["body"].as_s().unwrap(), "a2");
}

pub(crate) async fn a_conditional_delete_of_a_gone_item_is_never_a_replay(client: Client) {
    // The case: the first attempt of a conditional delete, finding the
    // item gone, was reported as a successful replay, and the caller's condition never checked.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let a = Session::new();
    svc.clone()
        .oneshot(a.request(put(&table, "x", "a1")))
        .await
        .unwrap();
    deleted_by_another_session(&client, &adapter, &table, "x").await;
    let mine: DynamoRequest = DeleteItemInput::builder()
        .table_name(&table)
        .key("pk", s("x"))
        .condition_expression("body = :mine")
        .expression_attribute_values(":mine", s("a1"))
        .into();
    let err = svc.clone().oneshot(a.request(mine)).await.unwrap_err();
    assert!(!err.is_conflict(), "{err}");
    assert!(
        matches!(err.store_error(), Some(DynamoError::ConditionFailed(c)) if !c.version_conflict),
        "{err:?}"
    );
    // Without a condition: nothing to delete, success, and no replay claimed.
    let out = svc
        .clone()
        .oneshot(a.request(delete(&table, "x")))
        .await
        .unwrap();
    assert!(!out.get_ref().was_replayed());
}

pub(crate) async fn a_query_after_the_sessions_own_delete_does_not_show_the_item(client: Client) {
    // The case: a delete advanced no partition scope, so a lagging
    // replica's query still listing the deleted item was `Guaranteed(Verified)`.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let a = Session::new();
    svc.clone()
        .oneshot(a.request(put(&table, "q", "mine")))
        .await
        .unwrap();
    let old = peek(&client, &table, "q").await.unwrap();
    svc.clone()
        .oneshot(a.request(delete(&table, "q")))
        .await
        .unwrap();
    stale.hold_queries(vec![old], 1);
    let query: DynamoRequest = QueryInput::builder()
        .table_name(&table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s("q"))
        .into();
    let read = svc.clone().oneshot(a.request(query)).await.unwrap();
    assert!(
        read.get_ref().items().is_empty(),
        "{:?}: {:?}",
        read.visibility(),
        read.get_ref().items()
    );
    assert!(read.visibility().is_guaranteed());
}

pub(crate) async fn an_exhausted_item_version_is_a_typed_error_not_a_panic(client: Client) {
    // The case: an item at version u64::MAX (a hostile unsigned token can
    // write one) made the next writer that had read it overflow `expected + 1` and panic.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    client
        .put_item()
        .table_name(&table)
        .item("pk", s("max"))
        .item("ryw_version", AttributeValue::N(u64::MAX.to_string()))
        .send()
        .await
        .unwrap();
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let honest = Session::new();
    svc.clone()
        .oneshot(honest.request(get(&table, "max")))
        .await
        .unwrap();
    let err = svc
        .clone()
        .oneshot(honest.request(put(&table, "max", "hi")))
        .await
        .unwrap_err();
    assert!(
        matches!(err.store_error(), Some(DynamoError::Validation { .. })),
        "{err:?}"
    );
}

/// A transaction updating `x` and deleting `y`.
fn update_x_delete_y(table: &str) -> DynamoRequest {
    TransactWriteItemsInput::builder()
        .transact_items(
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(table)
                        .key("pk", s("x"))
                        .update_expression("SET n = :one")
                        .expression_attribute_values(":one", n(1))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .transact_items(
            TransactWriteItem::builder()
                .delete(
                    aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(table)
                        .key("pk", s("y"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .into()
}

pub(crate) async fn a_replayed_transaction_is_applied_only_if_an_item_shows_it(client: Client) {
    // The case: a transaction whose first attempt never reached the
    // store was reported applied at its replay because its delete target had vanished meanwhile
    // (another session deleted it); and a transaction that did land, whose item was deleted
    // since, was a permanent error instead of an ambiguous one.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let a = Session::new();
    let plain = ReadYourWritesLayer::new(adapter.clone()).layer(service.clone());
    for pk in ["x", "y"] {
        plain
            .clone()
            .oneshot(a.request(put(&table, pk, "a")))
            .await
            .unwrap();
    }
    let deleting = |pk: &'static str| {
        let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
        move || {
            let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
            Box::pin(async move { deleted_by_another_session(&client, &adapter, &table, pk).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }
    };
    // Never sent; y deleted by someone else; the replay must not claim it applied.
    let mut dropping = InterleaveThenLoseForTests::new(service.clone(), deleting("y"));
    dropping.drop_before_sending = true;
    dropping.armed.store(1, Ordering::Relaxed);
    let err = ReadYourWritesLayer::new(adapter.clone())
        .layer(dropping)
        .oneshot(a.request(update_x_delete_y(&table)))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err:?}");
    let x = peek(&client, &table, "x").await.unwrap();
    assert!(!x.contains_key("n"), "the transaction never ran: {x:?}");

    // Landed, then x deleted by someone else: ambiguous, never re-applied.
    plain
        .clone()
        .oneshot(a.request(put(&table, "y", "a")))
        .await
        .unwrap();
    let lossy = InterleaveThenLoseForTests::new(service.clone(), deleting("x"));
    lossy.armed.store(1, Ordering::Relaxed);
    let only_x: DynamoRequest = TransactWriteItemsInput::builder()
        .transact_items(
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&table)
                        .key("pk", s("x"))
                        .update_expression("SET n = :one")
                        .expression_attribute_values(":one", n(1))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .into();
    let err = ReadYourWritesLayer::new(adapter.clone())
        .layer(lossy)
        .oneshot(a.request(only_x))
        .await
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err:?}");
    assert!(
        peek(&client, &table, "x").await.is_none(),
        "the delete stands"
    );
}

pub(crate) async fn a_query_never_shows_an_item_older_than_the_session_read(client: Client) {
    // The case: the session read version 2 of an item; a query of
    // its partition on a lagging replica returned version 1, `Guaranteed(Unfenced)`, because only
    // the partition (never queried before) was fenced.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let svc = ReadYourWritesLayer::new(adapter.clone()).layer(stale.clone());
    let writer = Session::new();
    svc.clone()
        .oneshot(writer.request(put(&table, "p1", "v1")))
        .await
        .unwrap();
    let v1 = peek(&client, &table, "p1").await.unwrap();
    svc.clone()
        .oneshot(writer.request(put(&table, "p1", "v2")))
        .await
        .unwrap();
    let reader = Session::new();
    let read = svc
        .clone()
        .oneshot(reader.request(get(&table, "p1")))
        .await
        .unwrap();
    assert_eq!(read.get_ref().item().unwrap()["body"].as_s().unwrap(), "v2");
    stale.hold_queries(vec![v1], 1);
    let query: DynamoRequest = QueryInput::builder()
        .table_name(&table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s("p1"))
        .into();
    let read = svc.clone().oneshot(reader.request(query)).await.unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(
        read.get_ref().items()[0]["body"].as_s().unwrap(),
        "v2",
        "{:?}",
        read.visibility()
    );
}

pub(crate) async fn revocation_is_shared_by_every_instance(client: Client) {
    // Two instances that share nothing but the signing key and the application's own table.
    use ryw::revocation::{OutagePolicy, SharedRevocationList};
    use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let table = format!("{}_revocations", fresh_table(&client).await);
    let backend_a = Arc::new(ryw_dynamodb::DynamoRevocations::new(client.clone(), &table));
    backend_a.create_table().await.unwrap();
    let backend_b = Arc::new(ryw_dynamodb::DynamoRevocations::new(client.clone(), &table));
    let every = Duration::from_millis(300);
    let list = |backend| {
        Arc::new(
            SharedRevocationList::new(backend)
                .refresh_every(every)
                .token_ttl(Duration::from_secs(3600), Duration::from_secs(60)),
        )
    };
    let (list_a, list_b) = (list(backend_a.clone()), list(backend_b.clone()));
    list_a.refresh().await.unwrap();
    list_b.refresh().await.unwrap();
    let authority = |list: Arc<SharedRevocationList>| {
        TokenAuthority::new(KeyRing::new(SigningKey::new(1, [5u8; 32]).unwrap()))
            .token_ttl(Duration::from_secs(3600))
            .revocation_list(list)
    };
    let (a, b) = (authority(list_a.clone()), authority(list_b.clone()));
    let refresher = tokio::spawn(list_b.clone().run_refresher());

    // Revoked at A: refused at B within one refresh interval (plus a round trip).
    let victim = Session::new();
    let token = a.issue(&victim.snapshot(), None).unwrap();
    assert!(b.verify(&token, None).is_ok());
    list_a.revoke_session(victim.id()).await.unwrap();
    assert!(
        a.verify(&token, None).unwrap_err().is_revoked(),
        "at once at A"
    );
    let revoked_at = Instant::now();
    while b.verify(&token, None).is_ok() {
        assert!(
            revoked_at.elapsed() < every + Duration::from_secs(2),
            "B still accepts a session revoked {:?} ago",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation reached B after {:?}", revoked_at.elapsed());

    // An epoch survives a refresh anywhere: a token refreshed at B after the session started is
    // still refused once every session started before the epoch is revoked.
    let old = Session::new();
    let first = a.issue(&old.snapshot(), None).unwrap();
    let started = b.verify(&first, None).unwrap().state().started_at();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let refreshed = b
        .issue(b.verify(&first, None).unwrap().state(), None)
        .unwrap();
    list_a.revoke_started_before(started + 1).await.unwrap();
    list_b.refresh().await.unwrap();
    assert!(b.verify(&refreshed, None).unwrap_err().is_revoked());
    assert!(a.verify(&refreshed, None).unwrap_err().is_revoked());
    refresher.abort();

    // The store down: fail closed refuses every token past the bound, fail open goes on.
    let unreachable = aws_sdk_dynamodb::Client::from_conf(
        client
            .config()
            .to_builder()
            .endpoint_url("http://127.0.0.1:9")
            .build(),
    );
    let down = Arc::new(ryw_dynamodb::DynamoRevocations::new(unreachable, &table));
    let closed = Arc::new(
        SharedRevocationList::new(down.clone()).on_outage(OutagePolicy::FailClosed, Duration::ZERO),
    );
    let open =
        Arc::new(SharedRevocationList::new(down).on_outage(OutagePolicy::FailOpen, Duration::ZERO));
    assert!(closed.refresh().await.is_err());
    assert!(closed.revoke_session(Session::new().id()).await.is_err());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = a.issue(&Session::new().snapshot(), None).unwrap();
    let err = authority(closed).verify(&fresh, None).unwrap_err();
    assert_eq!(
        err,
        ryw::signing::VerifyError::Revoked(ryw::signing::Revocation::Unverifiable)
    );
    assert!(authority(open).verify(&fresh, None).is_ok());
}

/// A tower `TimeoutLayer` under the session layer: the first write's response is held back
/// after moto applied it, the timeout fires, and the layer replays the write under its write id.
pub(crate) async fn a_write_timed_out_by_middleware_is_replayed_never_duplicated(client: Client) {
    use ryw::error::MiddlewareError;
    use ryw::retry::{Backoff, RetryPolicy};
    use std::time::Duration;

    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let bump = || -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("c"))
            .update_expression("ADD hits :one")
            .expression_attribute_values(":one", n(1))
            .into()
    };
    let layered = |retries: u32| {
        tower::ServiceBuilder::new()
            .layer(
                ReadYourWritesLayer::new(adapter.clone()).retry(
                    RetryPolicy::new()
                        .max_retries(retries)
                        .backoff(Backoff::new(
                            Duration::from_millis(1),
                            Duration::from_millis(5),
                        )),
                ),
            )
            .timeout(Duration::from_millis(300))
            .layer(ryw_sim::fault::HoldResponses::first(
                1,
                Duration::from_secs(2),
            ))
            .service(DynamoService::new(client.clone()))
    };
    let session = Session::new();

    let out = layered(3)
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .expect("replayed, not failed");
    assert!(
        out.get_ref().was_replayed(),
        "the replay found its own write id"
    );
    assert_eq!(out.attempts(), 2);
    let item = peek(&client, &table, "c").await.unwrap();
    assert_eq!(item["hits"].as_n().unwrap(), "1", "applied once");
    assert_eq!(writer_of(&item), &out.write_id().unwrap().to_string());

    // With no retry left, the timeout is a typed, transient error, and the write applied once.
    let err = layered(0)
        .ready()
        .await
        .unwrap()
        .call(session.request(bump()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        matches!(
            err.store_error(),
            Some(DynamoError::Middleware(MiddlewareError::TimedOut))
        ),
        "{err:?}"
    );
    let item = peek(&client, &table, "c").await.unwrap();
    assert_eq!(item["hits"].as_n().unwrap(), "2");
}

/// The service is built from the client alone: the layer attaches its adapter's configuration to
/// every request. A request sent straight to the service, without the layer, goes out unchanged.
pub(crate) async fn the_service_takes_its_configuration_from_the_layer(client: Client) {
    let table = fresh_table(&client).await;
    let mut bare = DynamoService::new(client.clone());
    bare.ready()
        .await
        .unwrap()
        .call(put(&table, "plain", "hi"))
        .await
        .unwrap();
    let item = peek(&client, &table, "plain").await.unwrap();
    let mut names: Vec<_> = item.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["author", "body", "pk"],
        "no ryw attribute without the layer"
    );

    // The same service under the layer: stamped with the layer's adapter configuration.
    let mut layered = ReadYourWritesLayer::new(adapter(&table)).layer(bare);
    let out = layered
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(put(&table, "stamped", "hi")))
        .await
        .unwrap();
    let item = peek(&client, &table, "stamped").await.unwrap();
    assert_eq!(writer_of(&item), &out.write_id().unwrap().to_string());
}

/// The case: a clone of an increment sent after the session had
/// recorded the increment (its own success, or a read after a timeout above the layer) was
/// stamped again, conditioned on the version the increment itself produced, and applied twice.
pub(crate) async fn a_clone_sent_after_its_write_was_recorded_applies_once(client: Client) {
    use std::time::Duration;

    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let bump = || -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("c"))
            .update_expression("ADD hits :one")
            .expression_attribute_values(":one", n(1))
            .into()
    };
    let hits = || async {
        peek(&client, &table, "c").await.unwrap()["hits"]
            .as_n()
            .unwrap()
            .clone()
    };
    let mut svc =
        ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client.clone()));
    let session = Session::new();

    // A clone sent after the original succeeded.
    let original = session.request(bump());
    let clone = original.clone();
    let first = svc.ready().await.unwrap().call(original).await.unwrap();
    assert!(!first.get_ref().was_replayed());
    let again = svc.ready().await.unwrap().call(clone).await.unwrap();
    assert!(
        again.get_ref().was_replayed(),
        "recognised as the same write"
    );
    assert_eq!(again.write_id(), first.write_id());
    assert_eq!(hits().await, "1", "applied once");

    // A timeout above the layer fires after the write applied; the session reads the item (and
    // so records the write); the caller retries a clone.
    let mut timed = tower::ServiceBuilder::new()
        .timeout(Duration::from_millis(300))
        .layer(ReadYourWritesLayer::new(adapter.clone()))
        .layer(ryw_sim::fault::HoldResponses::first(
            1,
            Duration::from_secs(2),
        ))
        .service(DynamoService::new(client.clone()));
    let original = session.request(bump());
    let clone = original.clone();
    let err = timed
        .ready()
        .await
        .unwrap()
        .call(original)
        .await
        .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(get(&table, "c")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(hits().await, "2");
    let again = svc.ready().await.unwrap().call(clone).await.unwrap();
    assert!(
        again.get_ref().was_replayed(),
        "recognised as the same write"
    );
    assert_eq!(hits().await, "2", "applied once");
}

/// The service reports every DynamoDB call: `db.client.operation.duration` with the semantic
/// conventions' attributes, read back through the OpenTelemetry SDK's in-memory exporter on a
/// local provider.
pub(crate) async fn db_client_operation_duration_is_recorded_per_call(client: Client) {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let table = fresh_table(&client).await;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let observer = std::sync::Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
    let mut svc = ReadYourWritesLayer::new(adapter(&table))
        .observer(observer.clone())
        .layer(DynamoService::new(client.clone()).observer(observer));
    let session = Session::new();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "m", "hi")))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(session.request(get(&table, "m")))
        .await
        .unwrap();
    let missing: DynamoRequest = GetItemInput::builder()
        .table_name("no_such_table")
        .key("pk", s("m"))
        .into();
    assert!(svc
        .ready()
        .await
        .unwrap()
        .call(session.request(missing))
        .await
        .is_err());

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().unwrap();
    let seen: Vec<(String, u64)> =
        ryw_otel::testing::data_points(metrics, "db.client.operation.duration")
            .into_iter()
            .map(|(attrs, count)| (attrs.join(" "), count))
            .collect();
    let expected = [
        (
            "aws.dynamodb.consistent_read=false db.collection.name=no_such_table db.operation.name=GetItem db.system.name=aws.dynamodb error.type=resource_not_found"
                .to_owned(),
            1,
        ),
        (
            format!("aws.dynamodb.consistent_read=false db.collection.name={table} db.operation.name=GetItem db.system.name=aws.dynamodb"),
            1,
        ),
        (
            format!("db.collection.name={table} db.operation.name=PutItem db.system.name=aws.dynamodb"),
            1,
        ),
    ];
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(seen, expected);
}

/// An UpdateItem that sets a global index's key attribute (`SET author = :a`, or through an
/// attribute name) writes the item into that index partition, as a PutItem of the attribute
/// does: a query of the partition is then fenced there (`Pending`, a global index having no strong
/// reads) instead of `Guaranteed(Unfenced)` without the item.
pub(crate) async fn an_update_that_sets_an_index_key_fences_that_index_partition(client: Client) {
    let table = fresh_table(&client).await;
    let stale = StaleReplicaForTests::new(DynamoService::new(client.clone()));
    let mut svc = ReadYourWritesLayer::new(adapter(&table)).layer(stale.clone());
    let cases = [
        ("plain", "SET author = :a, body = :b", None),
        ("named", "SET body = :b, #a = :a", Some("#a")),
        ("spaced", "set  #a=:a", Some("#a")),
    ];
    for (case, expression, name) in cases {
        let session = Session::new();
        let author = format!("author-{case}");
        let mut update = UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s(case))
            .update_expression(expression)
            .expression_attribute_values(":a", s(&author));
        if expression.contains(":b") {
            update = update.expression_attribute_values(":b", s("hi"));
        }
        if let Some(name) = name {
            update = update.expression_attribute_names(name, "author");
        }
        svc.ready()
            .await
            .unwrap()
            .call(session.request(DynamoRequest::from(update)))
            .await
            .unwrap();
        stale.stale_queries(10);
        let query: DynamoRequest = QueryInput::builder()
            .table_name(&table)
            .index_name("by_author")
            .key_condition_expression("author = :a")
            .expression_attribute_values(":a", s(&author))
            .into();
        let read = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(query))
            .await
            .unwrap();
        assert!(read.get_ref().items().is_empty(), "{case}: the index lags");
        assert!(
            read.visibility().is_pending(),
            "{case}: {:?}",
            read.visibility()
        );
        stale.stale_queries(0);
    }
}

pub(crate) async fn a_copy_that_finds_the_item_deleted_after_its_clone_applied_never_creates_it(
    client: Client,
) {
    // The case: a write of an item the session saw goes out as two copies (a hedge). The first
    // copy is delayed in the network; the second applies; another session deletes the item; the
    // first copy then finds the item gone. Creating it again would apply the write twice and
    // undo the delete.
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let plain = ReadYourWritesLayer::new(adapter.clone()).layer(service.clone());
    let session = Session::new();
    plain
        .clone()
        .oneshot(session.request(put(&table, "x", "a1")))
        .await
        .unwrap();

    let hedge: Arc<Mutex<Option<ryw::SessionRequest<DynamoRequest>>>> = Default::default();
    let hedged: Arc<Mutex<Option<bool>>> = Default::default();
    let interleave = {
        let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
        let (hedge, hedged, plain) = (hedge.clone(), hedged.clone(), plain.clone());
        move || {
            let (client, adapter, table) = (client.clone(), adapter.clone(), table.clone());
            let (hedge, hedged, plain) = (hedge.clone(), hedged.clone(), plain.clone());
            Box::pin(async move {
                let copy = hedge.lock().unwrap().take().expect("the hedge");
                let applied = plain.oneshot(copy).await.is_ok();
                *hedged.lock().unwrap() = Some(applied);
                deleted_by_another_session(&client, &adapter, &table, "x").await;
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }
    };
    let delayed = InterleaveBeforeSendingForTests::new(service.clone(), interleave);
    delayed.armed.store(1, Ordering::Relaxed);
    let original = session.request(put(&table, "x", "a2"));
    *hedge.lock().unwrap() = Some(original.clone());
    let answer = ReadYourWritesLayer::new(adapter.clone())
        .layer(delayed)
        .oneshot(original)
        .await;
    assert_eq!(*hedged.lock().unwrap(), Some(true), "the hedge applied");
    assert!(
        peek(&client, &table, "x").await.is_none(),
        "the delete stands (the delayed copy answered {:?})",
        answer.as_ref().map(|r| r.visibility().clone())
    );
    let err = answer.unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
}

pub(crate) async fn a_write_over_an_item_another_session_deleted_goes_to_the_resolver(
    client: Client,
) {
    let table = fresh_table(&client).await;
    let adapter = adapter(&table);
    let service = DynamoService::new(client.clone());
    let lww = ReadYourWritesLayer::new(adapter.clone()).layer(service.clone());
    let polite = ReadYourWritesLayer::new(adapter.clone())
        .resolver(Yield)
        .layer(service.clone());
    let session = Session::new();
    let first = lww
        .clone()
        .oneshot(session.request(put(&table, "x", "a1")))
        .await
        .unwrap();
    let seen = first.get_ref().written_version().unwrap();
    deleted_by_another_session(&client, &adapter, &table, "x").await;

    // A resolver that yields is told the item is gone, and the delete stands.
    let err = polite
        .oneshot(session.request(put(&table, "x", "a2")))
        .await
        .unwrap_err();
    let conflict = err.conflict().expect("a conflict");
    assert!(conflict.gone, "{conflict:?}");
    assert_eq!(conflict.current, Version::ZERO);
    assert_eq!(conflict.expected, Some(seen));
    assert!(
        peek(&client, &table, "x").await.is_none(),
        "the delete stands"
    );

    // Last writer wins (the default) creates it again, at a version past the one it saw.
    let again = lww
        .oneshot(session.request(put(&table, "x", "a3")))
        .await
        .unwrap();
    assert!(again.get_ref().written_version().unwrap() > seen);
    let now = peek(&client, &table, "x").await.expect("created again");
    assert_eq!(now["body"].as_s().unwrap(), "a3");
}
