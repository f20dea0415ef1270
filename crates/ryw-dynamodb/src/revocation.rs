//! Session revocation shared through a DynamoDB table of the application's own.
//!
//! [`DynamoRevocations`] is a [`RevocationBackend`] for [`ryw::revocation::SharedRevocationList`]:
//! one item per revoked session (`id = "session#<32 hex>"`) and one for the epoch (`id =
//! "epoch"`), each with the number attribute `at` and the number attribute `expires_at`, which
//! can be the table's TTL attribute (DynamoDB deletes expired items within a few days; `load`
//! skips them before that). The table needs a string partition key named `id`;
//! [`DynamoRevocations::create_table`] makes one.
//!
//! ```no_run
//! use ryw::revocation::{OutagePolicy, SharedRevocationList};
//! use ryw_dynamodb::DynamoRevocations;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(DynamoRevocations::new(client, "app_revocations"));
//! let list = Arc::new(
//!     SharedRevocationList::new(backend)
//!         .refresh_every(Duration::from_secs(5))
//!         .on_outage(OutagePolicy::FailOpen, Duration::from_secs(60)),
//! );
//! list.refresh().await?;
//! tokio::spawn(list.clone().run_refresher());
//! // TokenAuthority::new(keys).revocation_list(list.clone())
//! # Ok(()) }
//! ```

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use ryw::revocation::{BackendError, BackendFuture, RevocationBackend, RevocationEntry};
use std::fmt;

/// A [`RevocationBackend`] over a DynamoDB table; see the [module docs](self).
#[derive(Clone)]
pub struct DynamoRevocations {
    client: Client,
    table: String,
}

impl fmt::Debug for DynamoRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoRevocations")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn failed(e: impl fmt::Debug) -> BackendError {
    BackendError(format!("dynamodb: {e:?}"))
}

fn number(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

impl DynamoRevocations {
    /// Revocations kept in `table` (partition key `id`, a string).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRevocations {
            client,
            table: table.into(),
        }
    }

    /// Creates the table (on-demand capacity, partition key `id`). Enable TTL on `expires_at`
    /// with `UpdateTimeToLive` if the account allows it.
    pub async fn create_table(&self) -> Result<(), BackendError> {
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(failed)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(failed)?,
            )
            .send()
            .await
            .map_err(failed)?;
        Ok(())
    }
}

impl RevocationBackend for DynamoRevocations {
    fn record(&self, entry: RevocationEntry, expires_at: u64) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let (id, at) = (entry.key(), entry.at());
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("id", AttributeValue::S(id))
                .item("at", AttributeValue::N(at.to_string()))
                .item("expires_at", AttributeValue::N(expires_at.to_string()));
            // The epoch only moves forward, whoever writes it.
            let put = match entry {
                RevocationEntry::StartedBefore { .. } | RevocationEntry::Principal { .. } => put
                    .condition_expression("attribute_not_exists(#at) OR #at < :at")
                    .expression_attribute_names("#at", "at")
                    .expression_attribute_values(":at", AttributeValue::N(at.to_string())),
                _ => put,
            };
            match put.send().await {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Ok(()) // a later epoch is already there
                }
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn load(&self, now: u64) -> BackendFuture<'_, Vec<RevocationEntry>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut start = None;
            loop {
                let page = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(failed)?;
                for item in page.items() {
                    if number(item, "expires_at").is_some_and(|e| e <= now) {
                        continue;
                    }
                    let (Some(id), Some(at)) = (
                        item.get("id").and_then(|v| v.as_s().ok()),
                        number(item, "at"),
                    ) else {
                        continue;
                    };
                    out.extend(RevocationEntry::from_key(id, at));
                }
                match page.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => break,
                }
            }
            Ok(out)
        })
    }
}
