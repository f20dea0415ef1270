//! The tower `Service` over `aws_sdk_dynamodb::Client`.

use crate::error::DynamoError;
use crate::expr;
use crate::request::LATE;
use crate::request::{DynamoConfig, DynamoOperation, DynamoOutput, DynamoRequest, DynamoResponse};
use crate::transaction::transact_write_items;
use crate::write::{delete_item, single_item_write, stamped_put, stamped_update};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::batch_get_item::builders::BatchGetItemInputBuilder;
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemInputBuilder;
use aws_sdk_dynamodb::operation::get_item::builders::GetItemInputBuilder;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemInputBuilder;
use aws_sdk_dynamodb::operation::query::builders::QueryInputBuilder;
use aws_sdk_dynamodb::operation::scan::builders::ScanInputBuilder;
use aws_sdk_dynamodb::operation::transact_get_items::builders::TransactGetItemsInputBuilder;
use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError;
use aws_sdk_dynamodb::operation::transact_write_items::builders::TransactWriteItemsInputBuilder;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemInputBuilder;
use aws_sdk_dynamodb::Client;
use ryw::clock::{Clock, SystemClock};
use ryw::telemetry::{DbCall, Observer};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A tower `Service<DynamoRequest>` over the SDK client.
///
/// Requests stamped by the session layer are rewritten before sending: a condition on the version
/// attribute is ANDed with the caller's own, the version, write id and clock attributes are set,
/// and a failed condition returns the old item, from which the service recognises a replay of a
/// write that had already applied. Unstamped requests are sent as they are.
///
/// The service needs no configuration of its own: the session layer attaches its adapter's
/// (table schemas, attribute names) to every request ([`ryw::StoreAdapter::prepare`]), so the
/// adapter is given once, to the layer.
#[derive(Clone)]
pub struct DynamoService {
    client: Client,
    /// The same client without the SDK's own retries, for the writes the session layer
    /// stamped: a lost answer is the layer's to retry, as a replay by write id. An SDK retry
    /// below the layer would resend it as a first attempt, and a version-conditioned write
    /// finding the item deleted meanwhile would create it again.
    stamped_writes: Client,
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl fmt::Debug for DynamoService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoService").finish_non_exhaustive()
    }
}

impl DynamoService {
    /// A service sending through `client`.
    ///
    /// Reads, and writes sent without the session layer, use `client` as it is configured.
    /// Writes the layer stamped go through a copy of it with the SDK's retries turned off: the
    /// layer retries them itself, as replays recognised by their write id.
    pub fn new(client: Client) -> Self {
        let stamped_writes = Client::from_conf(
            client
                .config()
                .to_builder()
                .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
                .build(),
        );
        DynamoService {
            client,
            stamped_writes,
            observer: None,
        }
    }

    /// Reports every call to DynamoDB to `observer` ([`Observer::db_call`], with
    /// `db.system.name` `aws.dynamodb`, the operation, the table, `aws.dynamodb.consistent_read`
    /// for reads and the error type of a failure). `ryw-otel` records them as
    /// `db.client.operation.duration`.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(std::sync::Arc::new(observer));
        self
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The future of a [`DynamoService`] call (boxed: the SDK's futures are unnameable).
pub type DynamoFuture = Pin<Box<dyn Future<Output = Result<DynamoResponse, DynamoError>> + Send>>;

impl tower::Service<DynamoRequest> for DynamoService {
    type Response = DynamoResponse;
    type Error = DynamoError;
    type Future = DynamoFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DynamoError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: DynamoRequest) -> DynamoFuture {
        let client = if request.stamp.is_some() {
            self.stamped_writes.clone()
        } else {
            self.client.clone()
        };
        if !DbCall::wanted(self.observer.as_ref()) {
            return Box::pin(async move { send(&client, request).await });
        }
        let (operation, table, consistent) = describe(&request.operation);
        let call = DbCall::new("aws.dynamodb", operation)
            .collection(table)
            .consistent_read(consistent)
            .start(self.observer.clone());
        Box::pin(call.run(
            async move { send(&client, request).await },
            DynamoError::kind,
        ))
    }
}

/// The operation's name, its table and, for a read, whether it is strongly consistent.
fn describe(operation: &DynamoOperation) -> (&'static str, Option<String>, Option<bool>) {
    match operation {
        DynamoOperation::GetItem(b) => (
            "GetItem",
            b.get_table_name().clone(),
            Some(b.is_consistent()),
        ),
        DynamoOperation::Query(b) => ("Query", b.get_table_name().clone(), Some(b.is_consistent())),
        DynamoOperation::PutItem(b) => ("PutItem", b.get_table_name().clone(), None),
        DynamoOperation::UpdateItem(b) => ("UpdateItem", b.get_table_name().clone(), None),
        DynamoOperation::DeleteItem(b) => ("DeleteItem", b.get_table_name().clone(), None),
        DynamoOperation::TransactWriteItems(_) => ("TransactWriteItems", None, None),
        DynamoOperation::BatchGetItem(b) => {
            let tables = b.get_request_items().as_ref();
            let consistent = tables.is_some_and(|t| {
                !t.is_empty() && t.values().all(|k| k.consistent_read == Some(true))
            });
            let table = tables
                .filter(|t| t.len() == 1)
                .and_then(|t| t.keys().next().cloned());
            ("BatchGetItem", table, Some(consistent))
        }
        DynamoOperation::TransactGetItems(_) => ("TransactGetItems", None, Some(true)),
        DynamoOperation::Scan(b) => ("Scan", b.get_table_name().clone(), Some(b.is_consistent())),
    }
}

/// Sends one request: stamped by the session layer, through the function of its operation;
/// otherwise as it is.
async fn send(client: &Client, request: DynamoRequest) -> Result<DynamoResponse, DynamoError> {
    let DynamoRequest {
        operation,
        stamp: write,
        config,
        ..
    } = request;
    // Not through the session layer: sent as it is.
    let Some(config) = config else {
        return send_unchanged(client, operation).await;
    };
    let config = &*config;
    // A write sent late (see `LATE`): the wall clock it was sent at.
    let sent_late = write.as_ref().and_then(|w| {
        let now = SystemClock.now_micros();
        let late = w.replay || w.rebased || now >= w.stamp.timestamp.get().saturating_add(LATE);
        late.then_some(now)
    });
    let mut response = match (operation, write) {
        (DynamoOperation::GetItem(b), _) => read(client, config, b).await,
        (DynamoOperation::Query(b), _) => read(client, config, b).await,
        (DynamoOperation::Scan(b), _) => read(client, config, b).await,
        (DynamoOperation::BatchGetItem(b), _) => batch_get_item(client, config, b).await,
        (DynamoOperation::TransactGetItems(b), _) => transact_get_items(client, config, b).await,
        (DynamoOperation::PutItem(b), Some(write)) => {
            single_item_write(client, config, b, &write, stamped_put).await
        }
        (DynamoOperation::UpdateItem(b), Some(write)) => {
            single_item_write(client, config, b, &write, stamped_update).await
        }
        (DynamoOperation::DeleteItem(b), Some(write)) => {
            delete_item(client, config, b, &write).await
        }
        (DynamoOperation::TransactWriteItems(b), Some(write)) => {
            transact_write_items(client, config, b, &write).await
        }
        // A write the session layer did not stamp: sent as it is.
        (operation, None) => send_unchanged(client, operation).await,
    }?;
    response.sent_late = sent_late;
    Ok(response)
}

/// GetItem or Query (one page), its projection extended with what the fence reads.
async fn read<B: Read>(
    client: &Client,
    config: &DynamoConfig,
    b: B,
) -> Result<DynamoResponse, DynamoError> {
    let consistent = b.is_consistent();
    let output = b.with_ryw_projection(config).send_as_is(client).await?;
    Ok(DynamoResponse::new(output, vec![], consistent))
}

/// Sends a request the session layer did not prepare, as it is.
async fn send_unchanged(
    client: &Client,
    operation: DynamoOperation,
) -> Result<DynamoResponse, DynamoError> {
    let consistent = match &operation {
        DynamoOperation::GetItem(b) => b.is_consistent(),
        DynamoOperation::Query(b) => b.is_consistent(),
        DynamoOperation::Scan(b) => b.is_consistent(),
        DynamoOperation::TransactGetItems(_) => true,
        _ => false,
    };
    let output = match operation {
        DynamoOperation::GetItem(b) => b.send_as_is(client).await,
        DynamoOperation::Query(b) => b.send_as_is(client).await,
        DynamoOperation::PutItem(b) => b.send_as_is(client).await,
        DynamoOperation::UpdateItem(b) => b.send_as_is(client).await,
        DynamoOperation::DeleteItem(b) => b.send_as_is(client).await,
        DynamoOperation::TransactWriteItems(b) => b.send_as_is(client).await,
        DynamoOperation::BatchGetItem(b) => b.send_as_is(client).await,
        DynamoOperation::TransactGetItems(b) => b.send_as_is(client).await,
        DynamoOperation::Scan(b) => b.send_as_is(client).await,
    }?;
    Ok(DynamoResponse::new(output, vec![], consistent))
}

/// The SDK's input builder of an operation.
trait Input: Sized {
    /// Sends the request as it is.
    fn send_as_is(
        self,
        client: &Client,
    ) -> impl Future<Output = Result<DynamoOutput, DynamoError>> + Send;
}

macro_rules! input {
    ($($builder:ty => $variant:ident),* $(,)?) => {$(
        impl Input for $builder {
            async fn send_as_is(self, client: &Client) -> Result<DynamoOutput, DynamoError> {
                let out = self.send_with(client).await.map_err(DynamoError::from_sdk)?;
                Ok(DynamoOutput::$variant(out))
            }
        }
    )*};
}

input! {
    GetItemInputBuilder => GetItem,
    QueryInputBuilder => Query,
    PutItemInputBuilder => PutItem,
    UpdateItemInputBuilder => UpdateItem,
    DeleteItemInputBuilder => DeleteItem,
    TransactWriteItemsInputBuilder => TransactWriteItems,
    BatchGetItemInputBuilder => BatchGetItem,
    TransactGetItemsInputBuilder => TransactGetItems,
    ScanInputBuilder => Scan,
}

/// The builders of reads, which the fence verifies by the items' versions and clocks.
trait Read: Input {
    /// Whether the read is strongly consistent.
    fn is_consistent(&self) -> bool;

    /// The read with the version and clock attributes added to its projection, if it has one.
    fn with_ryw_projection(self, config: &DynamoConfig) -> Self;
}

macro_rules! read {
    ($($builder:ty),* $(,)?) => {$(
        impl Read for $builder {
            fn is_consistent(&self) -> bool {
                self.get_consistent_read().unwrap_or(false)
            }

            fn with_ryw_projection(self, config: &DynamoConfig) -> Self {
                let (p, n) = with_ryw_projection(
                    self.get_projection_expression().clone(),
                    self.get_expression_attribute_names().clone(),
                    config,
                );
                self.set_projection_expression(p)
                    .set_expression_attribute_names(n)
            }
        }
    )*};
}

read!(GetItemInputBuilder, QueryInputBuilder, ScanInputBuilder);

/// BatchGetItem: each table's projection extended with what the fence reads (the version, the
/// clock and the key, by which a returned item is matched to the key asked for), then its
/// `UnprocessedKeys` sent again, after a doubling wait, until none is left or the budget
/// ([`DynamoConfig::batch_get_retries`]) is spent. The response holds every round's items.
async fn batch_get_item(
    client: &Client,
    config: &DynamoConfig,
    b: BatchGetItemInputBuilder,
) -> Result<DynamoResponse, DynamoError> {
    let mut tables = b.get_request_items().clone().unwrap_or_default();
    for (table, keys) in tables.iter_mut() {
        let key_attributes: Vec<&str> = config
            .tables
            .get(table)
            .map(|s| {
                std::iter::once(s.partition_key.as_str())
                    .chain(s.sort_key.as_deref())
                    .collect()
            })
            .unwrap_or_default();
        let (p, n) = with_ryw_projection_and_keys(
            keys.projection_expression.take(),
            keys.expression_attribute_names.take(),
            &key_attributes,
            config,
        );
        keys.projection_expression = p;
        keys.expression_attribute_names = n;
    }
    let mut strong_tables: Vec<String> = tables
        .iter()
        .filter(|(_, k)| k.consistent_read == Some(true))
        .map(|(t, _)| t.clone())
        .collect();
    strong_tables.sort();
    let consistent = !tables.is_empty() && strong_tables.len() == tables.len();

    let mut responses: HashMap<String, Vec<expr::Item>> = HashMap::new();
    let mut capacity = Vec::new();
    // Each table's settings as asked (consistency, projection, names): unprocessed keys are sent
    // again with them, whatever the server echoes back with the keys.
    let settings = tables.clone();
    let mut pending = tables;
    let mut rounds = 0u32;
    let mut wait = config.batch_get_backoff;
    loop {
        rounds += 1;
        let out = b
            .clone()
            .set_request_items(Some(pending))
            .send_with(client)
            .await
            .map_err(DynamoError::from_sdk)?;
        for (table, items) in out.responses.unwrap_or_default() {
            responses.entry(table).or_default().extend(items);
        }
        capacity.extend(out.consumed_capacity.unwrap_or_default());
        let left: HashMap<_, _> = out
            .unprocessed_keys
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, k)| !k.keys.is_empty())
            .collect();
        if left.is_empty() {
            break;
        }
        if rounds > config.batch_get_retries {
            return Err(DynamoError::UnprocessedKeys {
                remaining: left.values().map(|k| k.keys.len()).sum(),
                rounds,
                keys: left,
            });
        }
        tracing::debug!(
            target: "ryw::dynamodb",
            keys = left.values().map(|k| k.keys.len()).sum::<usize>(),
            "BatchGetItem: unprocessed keys sent again"
        );
        match client.config().sleep_impl() {
            Some(sleep) => aws_sdk_dynamodb::config::AsyncSleep::sleep(&sleep, wait).await,
            None => tokio::time::sleep(wait).await,
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(1));
        pending = left
            .into_iter()
            .map(|(table, echoed)| match settings.get(&table) {
                Some(asked) => {
                    let mut again = asked.clone();
                    again.keys = echoed.keys;
                    (table, again)
                }
                None => (table, echoed),
            })
            .collect();
    }
    let output = BatchGetItemOutput::builder()
        .set_responses(Some(responses))
        .set_consumed_capacity((!capacity.is_empty()).then_some(capacity))
        .build();
    let mut response = DynamoResponse::new(DynamoOutput::BatchGetItem(output), vec![], consistent);
    response.strong_tables = strong_tables;
    Ok(response)
}

/// TransactGetItems, each get's projection extended with the version and clock attributes.
/// Always strongly consistent.
async fn transact_get_items(
    client: &Client,
    config: &DynamoConfig,
    b: TransactGetItemsInputBuilder,
) -> Result<DynamoResponse, DynamoError> {
    let mut items = b.get_transact_items().clone().unwrap_or_default();
    for get in items.iter_mut().filter_map(|i| i.get.as_mut()) {
        let (p, n) = with_ryw_projection(
            get.projection_expression.take(),
            get.expression_attribute_names.take(),
            config,
        );
        get.projection_expression = p;
        get.expression_attribute_names = n;
    }
    match b.set_transact_items(Some(items)).send_with(client).await {
        Ok(out) => Ok(DynamoResponse::new(
            DynamoOutput::TransactGetItems(out),
            vec![],
            true,
        )),
        // Another transaction in progress on an item, or throttling: nothing to resolve for a
        // read, and retried when its reasons are passing.
        Err(SdkError::ServiceError(e))
            if matches!(
                e.err(),
                TransactGetItemsError::TransactionCanceledException(_)
            ) =>
        {
            let reasons = match e.into_err() {
                TransactGetItemsError::TransactionCanceledException(c) => c
                    .cancellation_reasons
                    .unwrap_or_default()
                    .into_iter()
                    .map(crate::error::Cancellation::from)
                    .collect(),
                _ => Vec::new(),
            };
            Err(DynamoError::TransactionCanceled {
                reasons,
                version_conflicts: Vec::new(),
            })
        }
        Err(e) => Err(DynamoError::from_sdk(e)),
    }
}

/// A projection (if there is one) with the version and clock attributes and every attribute of
/// `keys` it does not name already (a path named twice is refused by DynamoDB).
fn with_ryw_projection_and_keys(
    projection: Option<String>,
    names: Option<HashMap<String, String>>,
    keys: &[&str],
    config: &DynamoConfig,
) -> (Option<String>, Option<HashMap<String, String>>) {
    let (projection, names) = with_ryw_projection(projection, names, config);
    let Some(mut p) = projection else {
        return (None, names);
    };
    let mut names = names.unwrap_or_default();
    let named: Vec<String> = p
        .split(',')
        .map(|path| {
            let top = path.trim().split(['.', '[']).next().unwrap_or("");
            names.get(top).cloned().unwrap_or_else(|| top.to_owned())
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if !named.iter().any(|n| n == key) {
            let placeholder = format!("#ryw_key{i}");
            p.push_str(&format!(", {placeholder}"));
            names.insert(placeholder, (*key).to_owned());
        }
    }
    (Some(p), Some(names))
}

fn with_ryw_projection(
    projection: Option<String>,
    names: Option<HashMap<String, String>>,
    config: &DynamoConfig,
) -> (Option<String>, Option<HashMap<String, String>>) {
    match projection {
        Some(p) if !p.trim().is_empty() => {
            let p = format!("{p}, #ryw_v, #ryw_c");
            let mut names = expr::with_names(names, config);
            expr::prune_names(&mut names, &[Some(&p)]);
            (Some(p), Some(names))
        }
        other => (other, names),
    }
}
