//! The tower `Service` over `aws_sdk_dynamodb::Client`.

use crate::conditions::{check_table, unresolved, Conditions, Failed};
use crate::error::{Cancellation, CancellationCode, DynamoError};
use crate::expr::{self, Item};
use crate::request::{
    DynamoConfig, DynamoOperation, DynamoOutput, DynamoRequest, DynamoResponse, DynamoStamp,
};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::{DeleteItemError, DeleteItemOutput};
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
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
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl fmt::Debug for DynamoService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoService").finish_non_exhaustive()
    }
}

impl DynamoService {
    /// A service sending through `client`.
    pub fn new(client: Client) -> Self {
        DynamoService {
            client,
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
        let client = self.client.clone();
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
            Some(b.get_consistent_read().unwrap_or(false)),
        ),
        DynamoOperation::Query(b) => (
            "Query",
            b.get_table_name().clone(),
            Some(b.get_consistent_read().unwrap_or(false)),
        ),
        DynamoOperation::PutItem(b) => ("PutItem", b.get_table_name().clone(), None),
        DynamoOperation::UpdateItem(b) => ("UpdateItem", b.get_table_name().clone(), None),
        DynamoOperation::DeleteItem(b) => ("DeleteItem", b.get_table_name().clone(), None),
        DynamoOperation::TransactWriteItems(_) => ("TransactWriteItems", None, None),
    }
}

fn response(output: DynamoOutput, written: Vec<Option<u64>>, consistent: bool) -> DynamoResponse {
    DynamoResponse {
        output,
        written,
        replayed: false,
        consistent,
    }
}

/// The SDK errors of conditional item writes, which carry the item when the condition failed.
trait ConditionCheck {
    fn is_condition_failed(&self) -> bool;
    /// The item a failed condition returned (`None` for any other error).
    fn into_item(self) -> Option<Item>;
}

macro_rules! condition_check {
    ($($error:ident),* $(,)?) => {$(
        impl ConditionCheck for $error {
            fn is_condition_failed(&self) -> bool {
                matches!(self, $error::ConditionalCheckFailedException(_))
            }
            fn into_item(self) -> Option<Item> {
                match self {
                    $error::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                }
            }
        }
    )*};
}

condition_check!(PutItemError, UpdateItemError, DeleteItemError);

/// Awaits a conditional item write: its output, or (as `Err`) the item its failed condition
/// returned; any other failure is the error.
async fn conditional<O, E>(
    sent: impl Future<Output = Result<O, SdkError<E, HttpResponse>>>,
) -> Result<Result<O, Option<Item>>, DynamoError>
where
    E: ConditionCheck + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match sent.await {
        Ok(out) => Ok(Ok(out)),
        Err(SdkError::ServiceError(e)) if e.err().is_condition_failed() => {
            Ok(Err(e.into_err().into_item()))
        }
        Err(e) => Err(DynamoError::from_sdk(e)),
    }
}

/// What sending one stamped single-item write gave.
enum Sent {
    /// It applied.
    Applied(Box<DynamoOutput>),
    /// A condition failed; the item as it is now, if any.
    ConditionFailed(Option<Item>),
}

/// A stamped put or update: sent with `stamp`, the failed condition's old item read for this very
/// write, and, when the item is found gone though the session had seen it (on a first attempt),
/// sent once more creating it. `send` builds and sends the request for a stamp; `empty` is the
/// output reported for a replay found already applied.
async fn single_item_write<F, Fut>(
    mut stamp: Conditions<'_>,
    what: &str,
    send: F,
    empty: impl Fn() -> DynamoOutput,
) -> Result<DynamoResponse, DynamoError>
where
    F: Fn(&Conditions<'_>) -> Fut,
    Fut: std::future::Future<Output = Result<Sent, DynamoError>>,
{
    loop {
        let old = match send(&stamp).await? {
            Sent::Applied(out) => return Ok(response(*out, vec![Some(stamp.next())], false)),
            Sent::ConditionFailed(old) => old,
        };
        match stamp.after_failed_condition(old) {
            Failed::Landed(version) => return Ok(replayed(empty(), vec![version])),
            Failed::Failure(e) => return Err(e),
            Failed::Absent if stamp.replay => return Err(unresolved(what)),
            Failed::Absent if stamp.create || stamp.expected == 0 => {
                return Err(stamp.failure(None))
            }
            // Deleted since the session saw it: create it, at a version past both.
            Failed::Absent => stamp = stamp.creating(),
        }
    }
}

fn client_request_token(write: &DynamoStamp) -> String {
    // 32 hex characters (DynamoDB takes at most 36): a 128-bit digest of the whole write id, so
    // two different writes (two lanes of one session) never share a request token.
    format!("{:032x}", write.stamp.write_id.digest128())
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
    match operation {
        DynamoOperation::GetItem(mut b) => {
            let (p, n) = with_ryw_projection(
                b.get_projection_expression().clone(),
                b.get_expression_attribute_names().clone(),
                config,
            );
            b = b
                .set_projection_expression(p)
                .set_expression_attribute_names(n);
            let consistent = b.get_consistent_read().unwrap_or(false);
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            Ok(response(DynamoOutput::GetItem(out), vec![], consistent))
        }
        DynamoOperation::Query(mut b) => {
            let (p, n) = with_ryw_projection(
                b.get_projection_expression().clone(),
                b.get_expression_attribute_names().clone(),
                config,
            );
            b = b
                .set_projection_expression(p)
                .set_expression_attribute_names(n);
            let consistent = b.get_consistent_read().unwrap_or(false);
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            Ok(response(DynamoOutput::Query(out), vec![], consistent))
        }
        DynamoOperation::PutItem(b) => {
            let Some(write) = write else {
                return send_unchanged(client, DynamoOperation::PutItem(b)).await;
            };
            let stamp = Conditions::single(config, b.get_table_name().as_ref(), &write)?;
            let send = |stamp: &Conditions<'_>| {
                let s = stamp.stamped(
                    b.get_condition_expression().clone(),
                    None,
                    b.get_expression_attribute_names().clone(),
                    b.get_expression_attribute_values().clone(),
                );
                let mut item = b.get_item().clone().unwrap_or_default();
                stamp.stamp_item(&mut item);
                let sent = b
                    .clone()
                    .set_item(Some(item))
                    .condition_expression(s.condition)
                    .set_expression_attribute_names(Some(s.names))
                    .set_expression_attribute_values(s.values)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                async move {
                    Ok(match conditional(sent.send_with(client)).await? {
                        Ok(out) => Sent::Applied(Box::new(DynamoOutput::PutItem(out))),
                        Err(item) => Sent::ConditionFailed(item),
                    })
                }
            };
            single_item_write(stamp, "put", send, || {
                DynamoOutput::PutItem(PutItemOutput::builder().build())
            })
            .await
        }
        DynamoOperation::UpdateItem(b) => {
            let Some(write) = write else {
                return send_unchanged(client, DynamoOperation::UpdateItem(b)).await;
            };
            let stamp = Conditions::single(config, b.get_table_name().as_ref(), &write)?;
            let send = |stamp: &Conditions<'_>| {
                let s = stamp.stamped(
                    b.get_condition_expression().clone(),
                    Some(b.get_update_expression().clone()),
                    b.get_expression_attribute_names().clone(),
                    b.get_expression_attribute_values().clone(),
                );
                let sent = b
                    .clone()
                    .set_update_expression(s.update)
                    .condition_expression(s.condition)
                    .set_expression_attribute_names(Some(s.names))
                    .set_expression_attribute_values(s.values)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                async move {
                    Ok(match conditional(sent.send_with(client)).await? {
                        Ok(out) => Sent::Applied(Box::new(DynamoOutput::UpdateItem(out))),
                        Err(item) => Sent::ConditionFailed(item),
                    })
                }
            };
            single_item_write(stamp, "update", send, || {
                DynamoOutput::UpdateItem(UpdateItemOutput::builder().build())
            })
            .await
        }
        DynamoOperation::DeleteItem(b) => {
            let Some(write) = write else {
                return send_unchanged(client, DynamoOperation::DeleteItem(b)).await;
            };
            let stamp = Conditions::single(config, b.get_table_name().as_ref(), &write)?;
            let s = stamp.stamped(
                b.get_condition_expression().clone(),
                None,
                b.get_expression_attribute_names().clone(),
                b.get_expression_attribute_values().clone(),
            );
            let sent = b
                .clone()
                .condition_expression(s.condition)
                .set_expression_attribute_names(Some(s.names))
                .set_expression_attribute_values(s.values)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            // The version that marks the deletion: later reads of an older copy are stale.
            let marker = stamp.next();
            let old = match conditional(sent.send_with(client)).await? {
                Ok(out) => {
                    return Ok(response(
                        DynamoOutput::DeleteItem(out),
                        vec![Some(marker)],
                        false,
                    ))
                }
                Err(item) => item,
            };
            match stamp.after_failed_condition(old) {
                Failed::Landed(version) => Ok(replayed(
                    DynamoOutput::DeleteItem(DeleteItemOutput::builder().build()),
                    vec![version],
                )),
                Failed::Failure(e) => Err(e),
                Failed::Absent if stamp.replay && b.get_condition_expression().is_some() => {
                    // Whether the caller's condition held for the delete that removed it: unknown.
                    Err(unresolved("conditional delete"))
                }
                Failed::Absent => {
                    // Nothing to delete (gone before, or removed by this delete's first attempt at
                    // a replay). Sent as the caller wrote it: DynamoDB's own answer, never a
                    // replay claimed.
                    let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
                    Ok(response(
                        DynamoOutput::DeleteItem(out),
                        vec![Some(stamp.creating().next())],
                        false,
                    ))
                }
            }
        }
        DynamoOperation::TransactWriteItems(mut b) => {
            let Some(write) = write else {
                return send_unchanged(client, DynamoOperation::TransactWriteItems(b)).await;
            };
            let mut items = b.get_transact_items().clone().unwrap_or_default();
            let mut stamps = Vec::with_capacity(items.len());
            for (i, ti) in items.iter_mut().enumerate() {
                let expected = write.expected.get(i).copied().flatten();
                let table = ti
                    .put
                    .as_ref()
                    .map(|p| &p.table_name)
                    .or(ti.update.as_ref().map(|u| &u.table_name))
                    .or(ti.delete.as_ref().map(|d| &d.table_name));
                let Some(table) = table else {
                    stamps.push(None);
                    continue;
                };
                let schema = check_table(config, Some(table))?;
                let stamp = Conditions::new(config, schema, &write, expected)?;
                if let Some(p) = ti.put.as_mut() {
                    stamp.stamp_item(&mut p.item);
                    let s = stamp.stamped(
                        p.condition_expression.take(),
                        None,
                        p.expression_attribute_names.take(),
                        p.expression_attribute_values.take(),
                    );
                    p.condition_expression = Some(s.condition);
                    p.expression_attribute_names = Some(s.names);
                    p.expression_attribute_values = s.values;
                    p.return_values_on_condition_check_failure =
                        Some(ReturnValuesOnConditionCheckFailure::AllOld);
                    stamps.push(Some((stamp, false)));
                } else if let Some(u) = ti.update.as_mut() {
                    let s = stamp.stamped(
                        u.condition_expression.take(),
                        Some(Some(std::mem::take(&mut u.update_expression))),
                        u.expression_attribute_names.take(),
                        u.expression_attribute_values.take(),
                    );
                    u.update_expression = s.update.unwrap_or_default();
                    u.condition_expression = Some(s.condition);
                    u.expression_attribute_names = Some(s.names);
                    u.expression_attribute_values = s.values;
                    u.return_values_on_condition_check_failure =
                        Some(ReturnValuesOnConditionCheckFailure::AllOld);
                    stamps.push(Some((stamp, false)));
                } else if let Some(d) = ti.delete.as_mut() {
                    let s = stamp.stamped(
                        d.condition_expression.take(),
                        None,
                        d.expression_attribute_names.take(),
                        d.expression_attribute_values.take(),
                    );
                    d.condition_expression = Some(s.condition);
                    d.expression_attribute_names = Some(s.names);
                    d.expression_attribute_values = s.values;
                    d.return_values_on_condition_check_failure =
                        Some(ReturnValuesOnConditionCheckFailure::AllOld);
                    stamps.push(Some((stamp, true)));
                } else {
                    stamps.push(None);
                }
            }
            if b.get_client_request_token().is_none() {
                b = b.client_request_token(client_request_token(&write));
            }
            b = b.set_transact_items(Some(items));
            let written: Vec<Option<u64>> = stamps
                .iter()
                .map(|s| s.as_ref().map(|(s, _)| s.next()))
                .collect();
            match b.send_with(client).await {
                Ok(out) => Ok(response(
                    DynamoOutput::TransactWriteItems(out),
                    written,
                    false,
                )),
                Err(SdkError::ServiceError(e))
                    if matches!(
                        e.err(),
                        TransactWriteItemsError::TransactionCanceledException(_)
                    ) =>
                {
                    let reasons: Vec<Cancellation> = match e.into_err() {
                        TransactWriteItemsError::TransactionCanceledException(c) => c
                            .cancellation_reasons
                            .unwrap_or_default()
                            .into_iter()
                            .map(Cancellation::from)
                            .collect(),
                        _ => Vec::new(),
                    };
                    let mut shows_this_write = false;
                    let mut absent = false;
                    let mut version_conflicts = Vec::new();
                    for (i, reason) in reasons.iter().enumerate() {
                        if reason.code != CancellationCode::ConditionalCheckFailed {
                            continue;
                        }
                        let Some((stamp, _)) = stamps.get(i).and_then(|s| s.as_ref()) else {
                            continue;
                        };
                        match reason.item.as_ref() {
                            Some(item) if stamp.shows_this_write(item) => shows_this_write = true,
                            Some(item) => {
                                if let DynamoError::ConditionFailed(f) =
                                    stamp.failure(Some(item.clone()))
                                {
                                    if f.version_conflict {
                                        version_conflicts.push(i);
                                    }
                                }
                            }
                            None => absent = true,
                        }
                    }
                    if shows_this_write {
                        // A transaction applies whole: one item holding its write id proves it
                        // committed on an earlier attempt, whatever happened to the others since.
                        tracing::debug!(target: "ryw::dynamodb", "retried transaction had already applied");
                        return Ok(replayed(
                            DynamoOutput::TransactWriteItems(
                                TransactWriteItemsOutput::builder().build(),
                            ),
                            written,
                        ));
                    }
                    if absent && write.replay {
                        // An item is gone and none shows this write: whether an earlier attempt
                        // committed before the item was deleted cannot be told.
                        return Err(unresolved("transaction"));
                    }
                    Err(DynamoError::TransactionCanceled {
                        reasons,
                        version_conflicts,
                    })
                }
                Err(e) => Err(DynamoError::from_sdk(e)),
            }
        }
    }
}

/// Sends a request the session layer did not prepare, as it is.
async fn send_unchanged(
    client: &Client,
    operation: DynamoOperation,
) -> Result<DynamoResponse, DynamoError> {
    let (output, consistent) = match operation {
        DynamoOperation::GetItem(b) => {
            let consistent = b.get_consistent_read().unwrap_or(false);
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::GetItem(out), consistent)
        }
        DynamoOperation::Query(b) => {
            let consistent = b.get_consistent_read().unwrap_or(false);
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::Query(out), consistent)
        }
        DynamoOperation::PutItem(b) => {
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::PutItem(out), false)
        }
        DynamoOperation::UpdateItem(b) => {
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::UpdateItem(out), false)
        }
        DynamoOperation::DeleteItem(b) => {
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::DeleteItem(out), false)
        }
        DynamoOperation::TransactWriteItems(b) => {
            let out = b.send_with(client).await.map_err(DynamoError::from_sdk)?;
            (DynamoOutput::TransactWriteItems(out), false)
        }
    };
    Ok(response(output, vec![], consistent))
}

fn replayed(output: DynamoOutput, written: Vec<Option<u64>>) -> DynamoResponse {
    DynamoResponse {
        output,
        written,
        replayed: true,
        consistent: false,
    }
}
