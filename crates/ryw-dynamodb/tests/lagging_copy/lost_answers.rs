//! Reads over the lagging copy, and writes whose answers are lost.

use super::*;

/// The proxy sends eventually consistent reads to the copy, which holds only what was synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lagging_copy_lags() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("sanity");
    lag.create_table(&table, ScalarAttributeType::S, None).await;
    lag.proxied
        .put_item()
        .table_name(&table)
        .item("pk", s("a"))
        .send()
        .await
        .unwrap();
    let cheap = lag
        .proxied
        .get_item()
        .table_name(&table)
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert!(
        cheap.item.is_none(),
        "the copy lacks the write until synced"
    );
    lag.sync(&table, &["pk"]).await;
    let cheap = lag
        .proxied
        .get_item()
        .table_name(&table)
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert!(cheap.item.is_some());
    assert!(lag.routes().contains(&Route::Copy("GetItem".into())));
}

fn adapter(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(TableSchema::new(table, "pk").sort_key("sk"))
}

fn put(table: &str, pk: &str, sk: &str) -> DynamoRequest {
    PutItemInput::builder()
        .table_name(table)
        .item("pk", s(pk))
        .item("sk", s(sk))
        .into()
}

fn query(table: &str, pk: &str) -> DynamoRequest {
    QueryInput::builder()
        .table_name(table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s(pk))
        .into()
}

/// Attacks that held: a batch across two tables, one holding the session's write and one not
/// (only that table read strongly), a batch after a delete the copy lacks, a scan of a written
/// and of an unwritten table, and `Limit` 1 pages of a partition whose copy lacks the session's
/// writes in the middle of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_batches_scans_and_pages_over_a_lagging_copy() {
    use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
    use aws_sdk_dynamodb::operation::scan::ScanInput;
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let a = unique("heldA");
    let b = unique("heldB");
    lag.create_table(&a, ScalarAttributeType::S, Some("sk"))
        .await;
    lag.create_table(&b, ScalarAttributeType::S, Some("sk"))
        .await;
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&a, "pk").sort_key("sk"))
        .table(TableSchema::new(&b, "pk").sort_key("sk"));
    let mut db = layer(&lag, adapter);
    let other = Session::new();
    let session = Session::new();
    for sk in ["1", "3", "5"] {
        call(&mut db, other.request(put(&a, "p", sk))).await;
        call(&mut db, other.request(put(&b, "p", sk))).await;
    }
    lag.sync(&a, &["pk", "sk"]).await;
    lag.sync(&b, &["pk", "sk"]).await;
    call(&mut db, session.request(put(&a, "p", "2"))).await;
    call(&mut db, session.request(put(&a, "p", "4"))).await;

    let key = |sk: &str| -> HashMap<String, AttributeValue> {
        [("pk".to_owned(), s("p")), ("sk".to_owned(), s(sk))].into()
    };
    let batch = BatchGetItemInput::builder()
        .request_items(
            &a,
            KeysAndAttributes::builder()
                .keys(key("2"))
                .keys(key("4"))
                .build()
                .unwrap(),
        )
        .request_items(
            &b,
            KeysAndAttributes::builder()
                .keys(key("1"))
                .keys(key("2"))
                .build()
                .unwrap(),
        );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    assert_eq!(keys_of(read.get_ref().batch_items(&a), "sk"), ["2", "4"]);
    assert_eq!(keys_of(read.get_ref().batch_items(&b), "sk"), ["1"]);
    assert!(lag
        .routes()
        .contains(&Route::Primary(format!("BatchGetItem [{a:?}]"))));

    // Limit 1 pages of the partition: the copy lacks 2 and 4.
    let q = match query(&a, "p").operation().clone() {
        ryw_dynamodb::DynamoOperation::Query(q) => DynamoRequest::from(q.limit(1)),
        _ => unreachable!(),
    };
    let all = Pages::new(&mut db, session.request(q.clone()))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(all.is_guaranteed(), "{:?}", all.visibilities());
    let mut got: Vec<String> = all
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(got, ["1", "2", "3", "4", "5"]);

    // A delete the copy lacks.
    let delete = DeleteItemInput::builder()
        .table_name(&a)
        .key("pk", s("p"))
        .key("sk", s("3"));
    call(&mut db, session.request(DynamoRequest::from(delete))).await;
    lag.sync(&a, &["pk", "sk"]).await;
    let delete = DeleteItemInput::builder()
        .table_name(&a)
        .key("pk", s("p"))
        .key("sk", s("5"));
    call(&mut db, session.request(DynamoRequest::from(delete))).await;
    let batch = BatchGetItemInput::builder().request_items(
        &a,
        KeysAndAttributes::builder().keys(key("5")).build().unwrap(),
    );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    assert!(read.visibility().is_guaranteed());
    assert!(read.get_ref().batch_items(&a).is_empty());
    let all = Pages::new(&mut db, session.request(q))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(all.is_guaranteed());
    got = all
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(got, ["1", "2", "4"]);

    // Scans.
    let scan = ScanInput::builder().table_name(&a);
    let read = call(&mut db, session.request(DynamoRequest::from(scan))).await;
    assert!(read.visibility().is_guaranteed());
    assert_eq!(keys_of(read.get_ref().items(), "sk"), ["1", "2", "4"]);
    let scan = ScanInput::builder().table_name(&b);
    let read = call(&mut db, session.request(DynamoRequest::from(scan))).await;
    assert_eq!(read.visibility(), &Visibility::Unscoped);
}

/// A write whose every answer is lost after moto applied it (the connection closes before the
/// response): the caller must not be told `Error::Store { may_have_applied: false }`, which
/// says that neither the write nor any copy of it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answers_are_lost_may_have_applied() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("lost");
    lag.create_table(&table, ScalarAttributeType::S, Some("sk"))
        .await;
    let mut db = layer(&lag, adapter(&table));
    let session = Session::new();
    lag.gate
        .drop_puts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let result = db
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "p", "x")))
        .await;
    lag.gate
        .drop_puts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let now = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", s("p"))
        .key("sk", s("x"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item;
    assert!(now.is_some(), "moto applied the write");
    let attempts = lag
        .routes()
        .iter()
        .filter(|r| **r == Route::Primary("PutItem (answer lost)".into()))
        .count();
    match &result {
        Err(ryw::Error::Store {
            may_have_applied: false,
            source,
            ..
        }) => panic!(
            "the write applied, yet it is reported unapplied after {attempts} attempts: {source:?}"
        ),
        other => eprintln!("answered {other:?}"),
    }
}
