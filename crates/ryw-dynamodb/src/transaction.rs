//! TransactWriteItems through the session layer: every put, update and delete stamped with ryw's
//! conditions, a `ClientRequestToken` derived from the write id, and a cancellation read for this
//! very write ([`crate::conditions`]).

use crate::conditions::{unresolved, ConditionalInput, Conditions, Expressions};
use crate::error::{Cancellation, CancellationCode, DynamoError};
use crate::expr::Item;
use crate::request::{DynamoConfig, DynamoOutput, DynamoResponse, DynamoStamp};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::builders::TransactWriteItemsInputBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::types::{
    Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// TransactWriteItems: each item stamped with the version the write expects of it, the whole
/// sent under a request token derived from the write id.
pub(crate) async fn transact_write_items(
    client: &Client,
    config: &DynamoConfig,
    mut b: TransactWriteItemsInputBuilder,
    write: &DynamoStamp,
) -> Result<DynamoResponse, DynamoError> {
    let mut items = b.get_transact_items().clone().unwrap_or_default();
    let stamps = items
        .iter_mut()
        .enumerate()
        .map(|(i, item)| stamp_transact_item(config, write, i, item))
        .collect::<Result<Vec<_>, _>>()?;
    if b.get_client_request_token().is_none() {
        b = b.client_request_token(client_request_token(write));
    }
    b = b.set_transact_items(Some(items));
    let written: Vec<Option<u64>> = stamps
        .iter()
        .map(|s| s.as_ref().map(Conditions::next))
        .collect();
    match b.send_with(client).await {
        Ok(out) => Ok(DynamoResponse::new(
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
            canceled(reasons, &stamps, write.replay, written)
        }
        Err(e) => Err(DynamoError::from_sdk(e)),
    }
}

/// Stamps item `i` of a transaction with the version the write expects of it: its conditions,
/// or `None` for an item that writes nothing (a condition check).
fn stamp_transact_item<'a>(
    config: &'a DynamoConfig,
    write: &DynamoStamp,
    i: usize,
    item: &mut TransactWriteItem,
) -> Result<Option<Conditions<'a>>, DynamoError> {
    let table = item
        .put
        .as_ref()
        .map(|p| &p.table_name)
        .or(item.update.as_ref().map(|u| &u.table_name))
        .or(item.delete.as_ref().map(|d| &d.table_name));
    let Some(table) = table else {
        return Ok(None);
    };
    let expected = write.expected.get(i).copied().flatten();
    let stamp = Conditions::new(config, Some(table), write, expected)?;
    if let Some(p) = item.put.as_mut() {
        stamp.stamp_item(&mut p.item);
        stamp.stamp(p, None);
    } else if let Some(u) = item.update.as_mut() {
        let update = std::mem::take(&mut u.update_expression);
        u.update_expression = stamp.stamp(u, Some(Some(update))).unwrap_or_default();
    } else if let Some(d) = item.delete.as_mut() {
        stamp.stamp(d, None);
    } else {
        return Ok(None);
    }
    Ok(Some(stamp))
}

/// The versions the transaction `b` gives its items if it applies (as its response reports
/// them); `None` for a condition check or an item that cannot be stamped.
pub(crate) fn versions_if_applied(
    config: &DynamoConfig,
    b: &TransactWriteItemsInputBuilder,
    write: &DynamoStamp,
) -> Vec<Option<u64>> {
    let mut items = b.get_transact_items().clone().unwrap_or_default();
    items
        .iter_mut()
        .enumerate()
        .map(|(i, item)| {
            stamp_transact_item(config, write, i, item)
                .ok()
                .flatten()
                .map(|s| s.next())
        })
        .collect()
}

/// A canceled transaction, read for this very write: one item that shows the write proves that
/// an earlier attempt committed; a replay that finds an item gone is unresolved; otherwise the
/// cancellation, with the items whose version another writer changed.
fn canceled(
    reasons: Vec<Cancellation>,
    stamps: &[Option<Conditions<'_>>],
    replay: bool,
    written: Vec<Option<u64>>,
) -> Result<DynamoResponse, DynamoError> {
    let mut shows_this_write = false;
    let mut absent = false;
    let mut version_conflicts = Vec::new();
    for (i, reason) in reasons.iter().enumerate() {
        if reason.code != CancellationCode::ConditionalCheckFailed {
            continue;
        }
        let Some(stamp) = stamps.get(i).and_then(|s| s.as_ref()) else {
            continue;
        };
        match reason.item.as_ref() {
            Some(item) if stamp.shows_this_write(item) => shows_this_write = true,
            Some(item) => {
                if let DynamoError::ConditionFailed(f) = stamp.failure(Some(item.clone())) {
                    if f.version_conflict {
                        version_conflicts.push(i);
                    }
                }
            }
            None => absent = true,
        }
    }
    if shows_this_write {
        // A transaction applies whole: one item holding its write id proves it committed on an
        // earlier attempt, whatever happened to the others since.
        tracing::debug!(target: "ryw::dynamodb", "retried transaction had already applied");
        return Ok(DynamoResponse::replayed(
            DynamoOutput::TransactWriteItems(TransactWriteItemsOutput::builder().build()),
            written,
        ));
    }
    if absent && replay {
        // An item is gone and none shows this write: whether an earlier attempt committed before
        // the item was deleted cannot be told.
        return Err(unresolved("transaction"));
    }
    Err(DynamoError::TransactionCanceled {
        reasons,
        version_conflicts,
    })
}

fn client_request_token(write: &DynamoStamp) -> String {
    // 32 hex characters (DynamoDB takes at most 36): a 128-bit digest of the whole write id, so
    // two different writes (two lanes of one session) never share a request token; moved by
    // each rebase, whose conditions differ (the same token with other parameters is refused).
    let digest = write.stamp.write_id.digest128();
    format!("{:032x}", digest.wrapping_add(u128::from(write.rebases)))
}

/// The puts, updates and deletes of a transaction: their expressions are read and set alike.
macro_rules! conditional_input {
    ($($item:ty),* $(,)?) => {$(
        impl ConditionalInput for $item {
            fn caller_expressions(&self) -> Expressions {
                Expressions {
                    condition: self.condition_expression.clone(),
                    names: self.expression_attribute_names.clone(),
                    values: self.expression_attribute_values.clone(),
                }
            }

            fn set_stamped(
                &mut self,
                condition: String,
                names: HashMap<String, String>,
                values: Option<Item>,
            ) {
                self.condition_expression = Some(condition);
                self.expression_attribute_names = Some(names);
                self.expression_attribute_values = values;
                self.return_values_on_condition_check_failure =
                    Some(ReturnValuesOnConditionCheckFailure::AllOld);
            }
        }
    )*};
}

conditional_input!(Put, Update, Delete);

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::clock::HybridTimestamp;
    use ryw::stamp::Stamp;
    use ryw::{SessionId, WriteId};

    #[test]
    fn a_rebased_transaction_is_sent_under_another_request_token() {
        let write = |rebases: u32, replay: bool| DynamoStamp {
            stamp: Stamp::new(
                WriteId::new(SessionId::derive(b"token"), 1, 7),
                HybridTimestamp::new(1_000),
            ),
            expected: vec![Some(3)],
            replay,
            rebased: rebases > 0,
            create: false,
            rebases,
        };
        let first = client_request_token(&write(0, false));
        assert_eq!(first.len(), 32);
        // A replay is the same request: the same token.
        assert_eq!(client_request_token(&write(0, true)), first);
        // A rebase changes the conditions: another token, the same for its replays.
        let rebased = client_request_token(&write(1, false));
        assert_ne!(rebased, first);
        assert_eq!(client_request_token(&write(1, true)), rebased);
        assert_ne!(client_request_token(&write(2, false)), rebased);
    }
}
