//! A request through ryw against moto, and the raw SDK call, in the same run.
//!
//! `RYW_DYNAMODB_ENDPOINT=http://127.0.0.1:PORT cargo bench -p ryw-dynamodb --bench moto`
//! (`tests/servers.sh` shows how to start moto). Without the variable it prints that it skipped.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use criterion::{criterion_group, criterion_main, Criterion};
use ryw::{ReadYourWritesLayer, Session};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn bench(c: &mut Criterion) {
    let Ok(endpoint) = std::env::var("RYW_DYNAMODB_ENDPOINT") else {
        eprintln!("skipped: RYW_DYNAMODB_ENDPOINT is not set");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
            .build(),
    );
    let table = format!("bench_{}", std::process::id());
    rt.block_on(async {
        client
            .create_table()
            .table_name(&table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let layer = ReadYourWritesLayer::new(adapter.clone());
    let service = DynamoService::new(client.clone());
    let session = Session::new();
    let put = || -> PutItemInput {
        PutItemInput::builder()
            .table_name(&table)
            .item("pk", s("item"))
            .item("body", s("hello"))
            .build()
            .unwrap()
    };
    let get = || {
        GetItemInput::builder()
            .table_name(&table)
            .key("pk", s("item"))
    };
    // The session has written the item: its reads are fenced (and verified).
    rt.block_on(
        layer.layer(service.clone()).oneshot(
            session.request(DynamoRequest::from(
                PutItemInput::builder()
                    .table_name(&table)
                    .item("pk", s("item"))
                    .item("body", s("hello")),
            )),
        ),
    )
    .unwrap();

    let mut group = c.benchmark_group("dynamodb on moto");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("GetItem, raw SDK", |b| {
        b.iter(|| rt.block_on(get().send_with(&client)).unwrap())
    });
    group.bench_function("GetItem, through ryw (fenced, verified)", |b| {
        b.iter(|| {
            rt.block_on(
                layer
                    .layer(service.clone())
                    .oneshot(session.request(DynamoRequest::from(get()))),
            )
            .unwrap()
        })
    });
    group.bench_function("PutItem, raw SDK", |b| {
        b.iter(|| {
            let p = put();
            rt.block_on(
                client
                    .put_item()
                    .table_name(p.table_name.unwrap())
                    .set_item(p.item)
                    .send(),
            )
            .unwrap()
        })
    });
    group.bench_function("PutItem, through ryw (conditional, stamped)", |b| {
        b.iter(|| {
            let req = DynamoRequest::from(
                PutItemInput::builder()
                    .table_name(&table)
                    .item("pk", s("item"))
                    .item("body", s("hello")),
            );
            rt.block_on(layer.layer(service.clone()).oneshot(session.request(req)))
                .unwrap()
        })
    });
    group.finish();
    rt.block_on(client.delete_table().table_name(&table).send())
        .unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
