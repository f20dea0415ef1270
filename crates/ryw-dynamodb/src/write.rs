//! Single-item writes through the session layer: PutItem, UpdateItem and DeleteItem, sent with
//! ryw's conditions, and a failed condition read for this very write
//! ([`crate::conditions`]).

use crate::conditions::{unresolved, ConditionalInput, Conditions, Expressions, Failed};
use crate::error::DynamoError;
use crate::expr::Item;
use crate::request::{DynamoConfig, DynamoOperation, DynamoOutput, DynamoResponse, DynamoStamp};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemInputBuilder;
use aws_sdk_dynamodb::operation::delete_item::{DeleteItemError, DeleteItemOutput};
use aws_sdk_dynamodb::operation::put_item::builders::PutItemInputBuilder;
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemInputBuilder;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use std::collections::HashMap;
use std::future::Future;

/// PutItem or UpdateItem: sent as `stamped` makes the request for a stamp, and the failed
/// condition's old item read for this very write. An item found gone though the session had seen
/// it is a conflict ([`Conditions::gone`]): the layer's resolver decides whether the write
/// creates it again, and the layer, which knows whether another copy of the write may have
/// applied, sends it (`DynamoStamp::create`).
pub(crate) async fn single_item_write<B: ItemWrite>(
    client: &Client,
    config: &DynamoConfig,
    b: B,
    write: &DynamoStamp,
    stamped: fn(&B, &Conditions<'_>) -> B,
) -> Result<DynamoResponse, DynamoError> {
    let stamp = Conditions::single(config, b.table(), write)?;
    let old = match stamped(&b, &stamp).send(client).await? {
        Sent::Applied(out) => {
            return Ok(DynamoResponse::new(*out, vec![Some(stamp.next())], false))
        }
        Sent::ConditionFailed(old) => old,
    };
    match stamp.after_failed_condition(old) {
        Failed::Landed(version) => Ok(DynamoResponse::replayed(B::empty(), vec![version])),
        Failed::Failure(e) => Err(e),
        Failed::Absent if stamp.replay => Err(unresolved(B::WHAT)),
        Failed::Absent if stamp.create || stamp.expected == 0 => Err(stamp.failure(None)),
        // Deleted since the session saw it.
        Failed::Absent => Err(stamp.gone()),
    }
}

/// The versions the stamped write `operation` gives its items if it applies, as its response
/// would report them (a delete: the version that marks the deletion).
pub(crate) fn versions_if_applied(
    config: &DynamoConfig,
    operation: &DynamoOperation,
    write: &DynamoStamp,
) -> Vec<Option<u64>> {
    let single = |table: &Option<String>| Conditions::single(config, table.as_ref(), write).ok();
    match operation {
        DynamoOperation::PutItem(b) => vec![single(b.get_table_name()).map(|s| s.next())],
        DynamoOperation::UpdateItem(b) => vec![single(b.get_table_name()).map(|s| s.next())],
        DynamoOperation::DeleteItem(b) => {
            vec![single(b.get_table_name()).map(|s| s.creating().next())]
        }
        DynamoOperation::TransactWriteItems(b) => {
            crate::transaction::versions_if_applied(config, b, write)
        }
        _ => Vec::new(),
    }
}

/// PutItem as `stamp` makes it: the item carries its version, write id and clock.
pub(crate) fn stamped_put(b: &PutItemInputBuilder, stamp: &Conditions<'_>) -> PutItemInputBuilder {
    let mut item = b.get_item().clone().unwrap_or_default();
    stamp.stamp_item(&mut item);
    let mut sent = b.clone().set_item(Some(item));
    stamp.stamp(&mut sent, None);
    sent
}

/// UpdateItem as `stamp` makes it: ryw's SET clause is added to its update expression.
pub(crate) fn stamped_update(
    b: &UpdateItemInputBuilder,
    stamp: &Conditions<'_>,
) -> UpdateItemInputBuilder {
    let mut sent = b.clone();
    let update = stamp.stamp(&mut sent, Some(b.get_update_expression().clone()));
    sent.set_update_expression(update)
}

/// DeleteItem on ryw's condition. An item found absent is deleted as the caller wrote it, and
/// the version that marks the deletion is reported all the same.
pub(crate) async fn delete_item(
    client: &Client,
    config: &DynamoConfig,
    b: DeleteItemInputBuilder,
    write: &DynamoStamp,
) -> Result<DynamoResponse, DynamoError> {
    let stamp = Conditions::single(config, b.table(), write)?;
    let mut sent = b.clone();
    stamp.stamp(&mut sent, None);
    // The version that marks the deletion: later reads of an older copy are stale.
    let marker = stamp.next();
    let old = match sent.send(client).await? {
        Sent::Applied(out) => return Ok(DynamoResponse::new(*out, vec![Some(marker)], false)),
        Sent::ConditionFailed(old) => old,
    };
    match stamp.after_failed_condition(old) {
        Failed::Landed(version) => Ok(DynamoResponse::replayed(
            DeleteItemInputBuilder::empty(),
            vec![version],
        )),
        Failed::Failure(e) => Err(e),
        Failed::Absent if stamp.replay && b.get_condition_expression().is_some() => {
            // Whether the caller's condition held for the delete that removed it: unknown.
            Err(unresolved("conditional delete"))
        }
        Failed::Absent => {
            // Nothing to delete (gone before, or removed by this delete's first attempt at a
            // replay). Sent as the caller wrote it, while the item is still absent: DynamoDB's
            // own answer to the caller's condition, never a replay claimed, and never a delete
            // of an item another writer created since.
            let marker = vec![Some(stamp.creating().next())];
            let mut absent = b.clone();
            stamp.while_absent(&mut absent);
            match absent.send(client).await? {
                Sent::Applied(out) => Ok(DynamoResponse::new(*out, marker, false)),
                // Created again by another writer: not the item this delete was for, which is
                // gone.
                Sent::ConditionFailed(Some(_)) => Ok(DynamoResponse::new(
                    DeleteItemInputBuilder::empty(),
                    marker,
                    false,
                )),
                // Still absent: the caller's own condition failed.
                Sent::ConditionFailed(None) => Err(stamp.failure(None)),
            }
        }
    }
}

/// What sending one stamped single-item write gave.
pub(crate) enum Sent {
    /// It applied.
    Applied(Box<DynamoOutput>),
    /// A condition failed; the item as it is now, if any.
    ConditionFailed(Option<Item>),
}

/// Awaits a conditional item write: its output (as `output` makes it a [`DynamoOutput`]), or the
/// item its failed condition returned; any other failure is the error.
async fn conditional<O, E>(
    sent: impl Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    output: impl FnOnce(O) -> DynamoOutput,
) -> Result<Sent, DynamoError>
where
    E: ConditionCheck + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match sent.await {
        Ok(out) => Ok(Sent::Applied(Box::new(output(out)))),
        Err(SdkError::ServiceError(e)) if e.err().is_condition_failed() => {
            Ok(Sent::ConditionFailed(e.into_err().into_item()))
        }
        Err(e) => Err(DynamoError::from_sdk(e)),
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

/// The builders of single-item writes, sent alike (and stamped alike: [`ConditionalInput`]).
pub(crate) trait ItemWrite: Send {
    /// The write, as a replay left unresolved names it.
    const WHAT: &'static str;

    /// The table written.
    fn table(&self) -> Option<&String>;

    /// Sends the write: its output, or the item its failed condition returned.
    fn send(self, client: &Client) -> impl Future<Output = Result<Sent, DynamoError>> + Send;

    /// The output reported for a replay found already applied.
    fn empty() -> DynamoOutput;
}

macro_rules! item_write {
    ($($builder:ty => $variant:ident($output:ty), $what:literal);* $(;)?) => {$(
        impl ItemWrite for $builder {
            const WHAT: &'static str = $what;

            fn table(&self) -> Option<&String> {
                self.get_table_name().as_ref()
            }

            async fn send(self, client: &Client) -> Result<Sent, DynamoError> {
                conditional(self.send_with(client), DynamoOutput::$variant).await
            }

            fn empty() -> DynamoOutput {
                DynamoOutput::$variant(<$output>::builder().build())
            }
        }

        impl ConditionalInput for $builder {
            fn caller_expressions(&self) -> Expressions {
                Expressions {
                    condition: self.get_condition_expression().clone(),
                    names: self.get_expression_attribute_names().clone(),
                    values: self.get_expression_attribute_values().clone(),
                }
            }

            fn set_stamped(
                &mut self,
                condition: String,
                names: HashMap<String, String>,
                values: Option<Item>,
            ) {
                *self = std::mem::take(self)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(values)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
            }
        }
    )*};
}

item_write! {
    PutItemInputBuilder => PutItem(PutItemOutput), "put";
    UpdateItemInputBuilder => UpdateItem(UpdateItemOutput), "update";
    DeleteItemInputBuilder => DeleteItem(DeleteItemOutput), "delete";
}
