//! Number keys spelled two ways, a batch's unprocessed keys, and the SDK's own retries.

use super::*;
use aws_sdk_dynamodb::operation::get_item::GetItemInput;

fn numbered(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(TableSchema::new(table, "pk"))
}

/// DynamoDB compares numbers by value: `1` and `1.0` name the same item (moto too, checked
/// below). The session writes the item keyed `1`, then reads it back keyed `1.0` from a copy
/// that lacks the write. The fence knows a number key by its value (`expr::canonical_number`),
/// so the read is fenced on the item the session wrote and comes back with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_key_spelled_otherwise_is_fenced_as_the_same_item() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("numget");
    lag.create_table(&table, ScalarAttributeType::N, None).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = PutItemInput::builder()
        .table_name(&table)
        .item("pk", n("1"))
        .item("body", s("written"));
    call(&mut db, session.request(DynamoRequest::from(put))).await;

    let strong = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", n("1.0"))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(
        strong.item.is_some(),
        "the store reads key 1.0 as the item 1"
    );

    let get = GetItemInput::builder()
        .table_name(&table)
        .key("pk", n("1.0"));
    let read = call(&mut db, session.request(DynamoRequest::from(get))).await;
    assert!(
        !read.visibility().is_guaranteed() || read.get_ref().item().is_some(),
        "a Guaranteed GetItem lacks the item the session wrote: {:?}, item {:?}",
        read.visibility(),
        read.get_ref().item()
    );
}

/// The same for a query of the partition: `pk = :p` with `:p` = `1.0` reads the partition the
/// session wrote as `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_partition_spelled_otherwise_is_fenced_as_the_same_partition() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("numquery");
    lag.create_table(&table, ScalarAttributeType::N, None).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = PutItemInput::builder()
        .table_name(&table)
        .item("pk", n("1"))
        .item("body", s("written"));
    call(&mut db, session.request(DynamoRequest::from(put))).await;

    let query = QueryInput::builder()
        .table_name(&table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", n("1.0"));
    let read = call(&mut db, session.request(DynamoRequest::from(query))).await;
    assert!(
        !read.visibility().is_guaranteed() || !read.get_ref().items().is_empty(),
        "a Guaranteed query lacks the item the session wrote: {:?}",
        read.visibility()
    );
}

/// `BatchGetItem` answers at most 16 MB and hands back the rest as `UnprocessedKeys`; moto lists
/// only the `Keys` there, not the table's `ConsistentRead`. The fence escalated the table (the
/// session wrote an item of it) and the first round was strong; the service resends the
/// unprocessed keys with each table's settings as asked (consistency, projection), so the resent
/// round is strong too and the lagging copy never answers for the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_keys_of_an_escalated_table_are_resent_strongly() {
    use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
    use aws_sdk_dynamodb::types::KeysAndAttributes;

    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("bigbatch");
    lag.create_table(&table, ScalarAttributeType::S, None).await;
    let mut db = ServiceBuilder::new()
        .layer(ReadYourWritesLayer::new(numbered(&table)).fence(ryw::FenceConfig::strong()))
        .service(DynamoService::new(lag.proxied.clone()));
    let session = Session::new();

    // 43 items of 395 kB each, in both regions (another writer's, long replicated): 42 fit in
    // the 16 MB of one answer.
    let blob = "x".repeat(395_000);
    let big: Vec<String> = (0..43).map(|i| format!("big{i:02}")).collect();
    for k in &big {
        for c in [&lag.primary, &lag.copy] {
            c.put_item()
                .table_name(&table)
                .item("pk", s(k))
                .item("blob", s(&blob))
                .send()
                .await
                .unwrap();
        }
    }
    // The session's item, as big: written, replicated, written again (the copy lags).
    for body in ["first", "second"] {
        let put = PutItemInput::builder()
            .table_name(&table)
            .item("pk", s("mine"))
            .item("body", s(body))
            .item("blob", s(&blob));
        call(&mut db, session.request(DynamoRequest::from(put))).await;
        if body == "first" {
            lag.copy_item(&table, [("pk".to_owned(), s("mine"))].into())
                .await;
        }
    }

    let keys: Vec<HashMap<String, AttributeValue>> = big
        .iter()
        .map(String::as_str)
        .chain(["mine"])
        .map(|k| [("pk".to_owned(), s(k))].into())
        .collect();
    let batch = BatchGetItemInput::builder().request_items(
        &table,
        KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .build()
            .unwrap(),
    );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    let items = read.get_ref().batch_items(&table);
    assert_eq!(items.len(), 44, "every item came back");
    let mine = items
        .iter()
        .find(|i| i.get("pk") == Some(&s("mine")))
        .and_then(|i| i.get("body"))
        .cloned();
    assert!(
        !read.visibility().is_guaranteed() || mine == Some(s("second")),
        "a Guaranteed BatchGetItem returns the session's item older than its last write: \
         {:?}, body {mine:?}, routes {:?}",
        read.visibility(),
        lag.routes()
    );
}

/// At most once, with a client whose SDK retries are on: the session writes an item it has
/// seen; that PutItem applies but its answer is lost (HTTP 500), and meanwhile another writer
/// deletes the item. Were the SDK to send the same request again below the layer, its version
/// condition would fail on the absent item and the write would be created again. The service
/// sends stamped writes without the SDK's retries: the layer retries, as a replay, which finds
/// the item gone and does not create it again; the item stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_retried_by_the_layer_not_the_sdk() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("sdkretry");
    lag.create_table(&table, ScalarAttributeType::S, None).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = |marker: &str| {
        DynamoRequest::from(
            PutItemInput::builder()
                .table_name(&table)
                .item("pk", s("k"))
                .item("marker", s(marker)),
        )
    };
    call(&mut db, session.request(put("first"))).await;

    let marker = format!("lose-{table}");
    lag.gate.lose_answer.lock().unwrap().push(marker.clone());
    let answer = db
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&marker)))
        .await;
    assert!(
        lag.gate.lose_answer.lock().unwrap().is_empty(),
        "the first delivery lost its answer"
    );
    let write_id = answer
        .as_ref()
        .ok()
        .and_then(|r| r.write_id())
        .map(|w| w.to_string());
    let now = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", s("k"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item;
    assert!(
        now.is_none(),
        "the write applied again after the delete that followed it (answer {:?}, write id \
         {write_id:?}): item {now:?}",
        answer.as_ref().map(|r| r.visibility().clone())
    );
}
