//! The DynamoDB adapter against a real DynamoDB emulator: moto's server, started by
//! `tests/run-all.sh` (`RYW_DYNAMODB_ENDPOINT`). Without it every test prints that it skipped.
//!
//! moto never serves a stale read and ignores `ClientRequestToken`: staleness is injected by the
//! test-only `StaleReplicaForTests` layer (escalated reads always reach moto), and token
//! idempotency is tested against DynamoDB Local in `testcontainers/`. A replica that applied a
//! partition's writes out of order is played by an HTTP proxy in front of moto
//! (`OutOfOrderReplicaForTests`, in `replica.rs`; the cases in `out_of_order.rs`).

mod http_relay;
mod lagging;
mod out_of_order;
mod principal;
mod reads;
mod records;
mod replica;
mod suite;
mod support;

use support::{client, endpoint};

macro_rules! against_moto {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(endpoint) = endpoint() else { return };
            suite::$case(client(&endpoint)).await;
        }
    )*};
}

against_moto!(
    writes_carry_version_write_id_and_clock,
    another_instance_with_the_token_reads_its_write_through_escalation,
    an_older_copy_is_stale_and_an_unseen_item_is_not_fenced,
    a_gsi_query_that_stays_stale_is_pending,
    an_update_that_sets_an_index_key_fences_that_index_partition,
    an_ambiguous_write_is_resolved_as_success_and_applied_once,
    conflicts_go_to_the_resolver_with_both_versions_and_the_item,
    the_callers_own_condition_failing_is_not_a_conflict,
    transactions_stamp_every_item_and_report_cancellation_reasons,
    a_lost_transaction_response_is_recognised_by_write_id,
    delete_then_read_and_recreate,
    errors_are_typed,
    two_continuations_of_one_token_lose_no_acknowledged_write,
    a_retry_after_another_sessions_update_applies_once,
    a_read_of_an_undeclared_table_is_unscoped_never_guaranteed,
    a_retry_after_another_sessions_delete_is_ambiguous_never_reapplied,
    a_copy_that_finds_the_item_deleted_after_its_clone_applied_never_creates_it,
    a_write_over_an_item_another_session_deleted_goes_to_the_resolver,
    versions_keep_growing_across_delete_and_re_create,
    a_conditional_delete_of_a_gone_item_is_never_a_replay,
    a_query_after_the_sessions_own_delete_does_not_show_the_item,
    an_exhausted_item_version_is_a_typed_error_not_a_panic,
    a_replayed_transaction_is_applied_only_if_an_item_shows_it,
    a_query_never_shows_an_item_older_than_the_session_read,
    revocation_is_shared_by_every_instance,
    a_write_timed_out_by_middleware_is_replayed_never_duplicated,
    the_service_takes_its_configuration_from_the_layer,
    a_clone_sent_after_its_write_was_recorded_applies_once,
    a_gsi_query_that_shows_a_later_write_but_lacks_an_earlier_one_is_never_guaranteed,
    db_client_operation_duration_is_recorded_per_call,
);

/// Cases that start their own proxy in front of moto: they take its endpoint.
macro_rules! against_moto_through_a_proxy {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(endpoint) = endpoint() else { return };
            out_of_order::$case(&endpoint).await;
        }
    )*};
}

against_moto_through_a_proxy!(
    an_unordered_partition_query_is_never_guaranteed_without_the_sessions_item,
    an_out_of_order_view_meets_the_fence_of_an_ordered_partition_without_the_sessions_item,
    a_gsi_query_of_an_out_of_order_view_is_pending_without_a_consistent_read,
    a_writer_whose_clock_runs_ahead_meets_the_partition_fence_without_the_sessions_item,
);

/// Sessions' records in a moto table (`records.rs`).
macro_rules! records_against_moto {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(endpoint) = endpoint() else { return };
            records::$case(client(&endpoint)).await;
        }
    )*};
}

records_against_moto!(
    a_record_merges_appends_by_pointwise_maximum_and_counts_them,
    concurrent_appends_of_two_instances_lose_nothing,
    a_damaged_record_is_never_trusted_nor_overwritten,
    a_session_of_200_items_reads_them_exactly_on_another_instance,
);

/// Principals' records in a moto table (`principal.rs`).
macro_rules! principals_against_moto {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(endpoint) = endpoint() else { return };
            principal::$case(client(&endpoint)).await;
        }
    )*};
}

principals_against_moto!(
    a_second_device_reads_the_first_devices_write,
    with_the_record_store_unreachable_reads_are_session_only,
    what_the_principal_record_costs,
);

/// Every page of a Query, BatchGetItem, TransactGetItems and Scan through a replica that lags
/// behind moto (`reads.rs`, `lagging.rs`).
macro_rules! reads_against_a_lagging_replica {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let Some(endpoint) = endpoint() else { return };
            reads::$case(&endpoint).await;
        }
    )*};
}

reads_against_a_lagging_replica!(
    every_page_of_a_query_holds_the_sessions_writes_under_lag,
    a_batch_get_holds_the_sessions_writes_item_by_item_under_lag,
    unprocessed_keys_are_sent_again_within_a_budget,
    transact_get_items_is_strong_and_advances_the_session,
    a_scan_holds_the_sessions_writes_and_claims_nothing_otherwise,
    a_query_after_reading_an_item_holds_that_item_under_lag,
    a_write_delivered_after_a_later_write_is_held_by_a_guaranteed_query,
);
