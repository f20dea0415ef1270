//! The DynamoDB adapter suite against DynamoDB Local (`amazon/dynamodb-local`), plus what moto
//! cannot show: `ClientRequestToken` idempotency of a replayed transaction.
//!
//! `RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker --test dynamodb_local`

#[cfg(not(feature = "docker"))]
#[test]
fn dynamodb_local_suite() {
    eprintln!(
        "skipped: DynamoDB Local suite (build with --features docker and set RYW_DOCKER_TESTS=1)"
    );
}

#[cfg(feature = "docker")]
#[path = "../../crates/ryw-dynamodb/tests/moto/suite.rs"]
mod suite;
#[cfg(feature = "docker")]
#[path = "../../crates/ryw-dynamodb/tests/moto/support.rs"]
mod support;

#[cfg(feature = "docker")]
mod docker {
    use crate::support::{client, fresh_table, n, peek, s, LoseWriteResponsesForTests};
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
    use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
    use aws_sdk_dynamodb::Client;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
    use testcontainers_modules::dynamodb_local::DynamoDb;
    use testcontainers_modules::testcontainers::core::IntoContainerPort;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use tower::{Layer, Service, ServiceExt};

    async fn client_request_token_makes_a_replayed_transaction_idempotent(client: Client) {
        let table = fresh_table(&client).await;
        let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
        let lossy = LoseWriteResponsesForTests::new(DynamoService::new(client.clone()), 1);
        let mut svc = ReadYourWritesLayer::new(adapter.clone()).layer(lossy);
        let bump = TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&table)
                    .key("pk", s("tok"))
                    .update_expression("ADD hits :one")
                    .expression_attribute_values(":one", n(1))
                    .build()
                    .unwrap(),
            )
            .build();
        let tx = TransactWriteItemsInput::builder().transact_items(bump);
        let session = Session::new();
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(DynamoRequest::from(tx)))
            .await
            .unwrap();
        // DynamoDB itself recognised the replay by its token: no condition failed.
        assert!(!out.get_ref().was_replayed());
        assert_eq!(out.attempts(), 2);
        assert_eq!(
            peek(&client, &table, "tok").await.unwrap()["hits"]
                .as_n()
                .unwrap(),
            "1"
        );
    }

    #[tokio::test]
    async fn dynamodb_local_suite() {
        if !ryw_testcontainers::docker_enabled("DynamoDB Local suite") {
            return;
        }
        let node = DynamoDb::default()
            .start()
            .await
            .expect("start DynamoDB Local");
        let host = node.get_host().await.unwrap();
        let port = node.get_host_port_ipv4(8000.tcp()).await.unwrap();
        let endpoint = format!("http://{host}:{port}");
        let c = || client(&endpoint);
        crate::suite::writes_carry_version_write_id_and_clock(c()).await;
        crate::suite::another_instance_with_the_token_reads_its_write_through_escalation(c()).await;
        crate::suite::an_older_copy_is_stale_and_an_unseen_item_is_not_fenced(c()).await;
        crate::suite::a_gsi_query_that_stays_stale_is_pending(c()).await;
        crate::suite::an_ambiguous_write_is_resolved_as_success_and_applied_once(c()).await;
        crate::suite::conflicts_go_to_the_resolver_with_both_versions_and_the_item(c()).await;
        crate::suite::the_callers_own_condition_failing_is_not_a_conflict(c()).await;
        crate::suite::transactions_stamp_every_item_and_report_cancellation_reasons(c()).await;
        crate::suite::delete_then_read_and_recreate(c()).await;
        crate::suite::errors_are_typed(c()).await;
        crate::suite::two_continuations_of_one_token_lose_no_acknowledged_write(c()).await;
        crate::suite::a_retry_after_another_sessions_update_applies_once(c()).await;
        crate::suite::a_read_of_an_undeclared_table_is_unscoped_never_guaranteed(c()).await;
        crate::suite::a_retry_after_another_sessions_delete_is_ambiguous_never_reapplied(c()).await;
        crate::suite::versions_keep_growing_across_delete_and_re_create(c()).await;
        crate::suite::a_conditional_delete_of_a_gone_item_is_never_a_replay(c()).await;
        crate::suite::a_query_after_the_sessions_own_delete_does_not_show_the_item(c()).await;
        crate::suite::an_exhausted_item_version_is_a_typed_error_not_a_panic(c()).await;
        crate::suite::a_replayed_transaction_is_applied_only_if_an_item_shows_it(c()).await;
        crate::suite::a_query_never_shows_an_item_older_than_the_session_read(c()).await;
        crate::suite::revocation_is_shared_by_every_instance(c()).await;
        client_request_token_makes_a_replayed_transaction_idempotent(c()).await;
    }
}
