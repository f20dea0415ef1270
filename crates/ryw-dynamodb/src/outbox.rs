//! The durable encoding of DynamoDB writes, for `ryw-outbox` (feature `outbox`).
//!
//! PutItem, UpdateItem, DeleteItem and TransactWriteItems are kept with everything the SDK input
//! carries that a write needs (table, item or key, expressions and their names and values, the
//! `Return*` options, the transaction's `ClientRequestToken`) and what the session layer stamped
//! on them (write id, clock, expected versions). A request using the legacy parameters
//! (`Expected`, `ConditionalOperator`, `AttributeUpdates`), or an attribute value of a kind this
//! build does not know, is not deferrable: it keeps its error. Reads are never deferred.
//!
//! ```
//! use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
//! use aws_sdk_dynamodb::types::AttributeValue;
//! use ryw_dynamodb::DynamoRequest;
//! use ryw_outbox::DurableRequest;
//!
//! let write: DynamoRequest = UpdateItemInput::builder()
//!     .table_name("posts")
//!     .key("pk", AttributeValue::S("p1".into()))
//!     .update_expression("SET likes = likes + :one")
//!     .expression_attribute_values(":one", AttributeValue::N("1".into()))
//!     .into();
//! let mut bytes = Vec::new();
//! write.encode(&mut bytes).unwrap();
//! let back = DynamoRequest::decode(&bytes).unwrap();
//! assert_eq!(back.operation(), write.operation());
//! ```

use crate::request::{DynamoOperation, DynamoRequest, DynamoStamp};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, ReturnConsumedCapacity,
    ReturnItemCollectionMetrics, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use ryw::clock::HybridTimestamp;
use ryw::stamp::Stamp;
use ryw::{SessionId, WriteId};
use ryw_outbox::{DecodeError, DurableRequest, NotDeferrable, Reader, Writer};
use std::collections::HashMap;

const FORMAT: u8 = 1;
const MAX_STR: usize = 4 * 1024 * 1024;
const MAX_COUNT: usize = 1 << 20;
/// DynamoDB nests attribute values at most 32 deep.
const MAX_DEPTH: usize = 32;

type Item = HashMap<String, AttributeValue>;

/// Everything one write (or one transaction item) carries.
#[derive(Default)]
struct Fields {
    table: Option<String>,
    item: Option<Item>,
    key: Option<Item>,
    update: Option<String>,
    condition: Option<String>,
    names: Option<HashMap<String, String>>,
    values: Option<Item>,
    return_values: Option<String>,
    return_on_failure: Option<String>,
    return_consumed: Option<String>,
    return_metrics: Option<String>,
}

const PUT: u8 = 1;
const UPDATE: u8 = 2;
const DELETE: u8 = 3;
const CHECK: u8 = 4;
const TRANSACTION: u8 = 5;

fn refuse(reason: &'static str) -> NotDeferrable {
    NotDeferrable { reason }
}

fn write_value(w: &mut Writer<'_>, v: &AttributeValue) -> Result<(), NotDeferrable> {
    match v {
        AttributeValue::S(s) => {
            w.u8(0);
            w.str(s);
        }
        AttributeValue::N(n) => {
            w.u8(1);
            w.str(n);
        }
        AttributeValue::B(b) => {
            w.u8(2);
            w.bytes(b.as_ref());
        }
        AttributeValue::Bool(b) => {
            w.u8(3);
            w.u8(u8::from(*b));
        }
        AttributeValue::Null(b) => {
            w.u8(4);
            w.u8(u8::from(*b));
        }
        AttributeValue::Ss(v) => {
            w.u8(5);
            w.len(v.len());
            v.iter().for_each(|s| w.str(s));
        }
        AttributeValue::Ns(v) => {
            w.u8(6);
            w.len(v.len());
            v.iter().for_each(|s| w.str(s));
        }
        AttributeValue::Bs(v) => {
            w.u8(7);
            w.len(v.len());
            v.iter().for_each(|b| w.bytes(b.as_ref()));
        }
        AttributeValue::L(v) => {
            w.u8(8);
            w.len(v.len());
            for x in v {
                write_value(w, x)?;
            }
        }
        AttributeValue::M(m) => {
            w.u8(9);
            write_item(w, m)?;
        }
        _ => {
            return Err(refuse(
                "an attribute value of a kind this build does not know",
            ))
        }
    }
    Ok(())
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<AttributeValue, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Invalid("attribute value nesting"));
    }
    let strings = |r: &mut Reader<'_>| -> Result<Vec<String>, DecodeError> {
        let n = r.len("set", MAX_COUNT)?;
        (0..n)
            .map(|_| r.str("string", MAX_STR).map(str::to_owned))
            .collect()
    };
    Ok(match r.u8()? {
        0 => AttributeValue::S(r.str("string", MAX_STR)?.to_owned()),
        1 => AttributeValue::N(r.str("number", MAX_STR)?.to_owned()),
        2 => AttributeValue::B(Blob::new(r.bytes("binary", MAX_STR)?)),
        3 => AttributeValue::Bool(flag(r)?),
        4 => AttributeValue::Null(flag(r)?),
        5 => AttributeValue::Ss(strings(r)?),
        6 => AttributeValue::Ns(strings(r)?),
        7 => {
            let n = r.len("set", MAX_COUNT)?;
            AttributeValue::Bs(
                (0..n)
                    .map(|_| r.bytes("binary", MAX_STR).map(Blob::new))
                    .collect::<Result<_, _>>()?,
            )
        }
        8 => {
            let n = r.len("list", MAX_COUNT)?;
            AttributeValue::L(
                (0..n)
                    .map(|_| read_value(r, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        9 => AttributeValue::M(read_item(r, depth + 1)?),
        _ => return Err(DecodeError::Invalid("attribute value kind")),
    })
}

fn flag(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid("flag")),
    }
}

fn write_item(w: &mut Writer<'_>, item: &Item) -> Result<(), NotDeferrable> {
    // Sorted: the same item always encodes to the same bytes.
    let mut keys: Vec<&String> = item.keys().collect();
    keys.sort();
    w.len(keys.len());
    for k in keys {
        w.str(k);
        write_value(w, &item[k])?;
    }
    Ok(())
}

fn read_item(r: &mut Reader<'_>, depth: usize) -> Result<Item, DecodeError> {
    let n = r.len("map", MAX_COUNT)?;
    let mut item = HashMap::new();
    for _ in 0..n {
        let k = r.str("attribute name", MAX_STR)?.to_owned();
        item.insert(k, read_value(r, depth)?);
    }
    Ok(item)
}

fn write_str_opt(w: &mut Writer<'_>, v: Option<&str>) {
    match v {
        Some(s) => {
            w.u8(1);
            w.str(s);
        }
        None => w.u8(0),
    }
}

fn read_str_opt(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    Ok(if flag(r)? {
        Some(r.str("string", MAX_STR)?.to_owned())
    } else {
        None
    })
}

fn write_item_opt(w: &mut Writer<'_>, v: Option<&Item>) -> Result<(), NotDeferrable> {
    match v {
        Some(item) => {
            w.u8(1);
            write_item(w, item)
        }
        None => {
            w.u8(0);
            Ok(())
        }
    }
}

fn read_item_opt(r: &mut Reader<'_>) -> Result<Option<Item>, DecodeError> {
    Ok(if flag(r)? {
        Some(read_item(r, 0)?)
    } else {
        None
    })
}

impl Fields {
    fn write(&self, w: &mut Writer<'_>) -> Result<(), NotDeferrable> {
        write_str_opt(w, self.table.as_deref());
        write_item_opt(w, self.item.as_ref())?;
        write_item_opt(w, self.key.as_ref())?;
        write_str_opt(w, self.update.as_deref());
        write_str_opt(w, self.condition.as_deref());
        match &self.names {
            Some(names) => {
                w.u8(1);
                let mut keys: Vec<&String> = names.keys().collect();
                keys.sort();
                w.len(keys.len());
                for k in keys {
                    w.str(k);
                    w.str(&names[k]);
                }
            }
            None => w.u8(0),
        }
        write_item_opt(w, self.values.as_ref())?;
        write_str_opt(w, self.return_values.as_deref());
        write_str_opt(w, self.return_on_failure.as_deref());
        write_str_opt(w, self.return_consumed.as_deref());
        write_str_opt(w, self.return_metrics.as_deref());
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Fields {
            table: read_str_opt(r)?,
            item: read_item_opt(r)?,
            key: read_item_opt(r)?,
            update: read_str_opt(r)?,
            condition: read_str_opt(r)?,
            names: if flag(r)? {
                let n = r.len("names", MAX_COUNT)?;
                let mut names = HashMap::new();
                for _ in 0..n {
                    let k = r.str("name", MAX_STR)?.to_owned();
                    names.insert(k, r.str("name", MAX_STR)?.to_owned());
                }
                Some(names)
            } else {
                None
            },
            values: read_item_opt(r)?,
            return_values: read_str_opt(r)?,
            return_on_failure: read_str_opt(r)?,
            return_consumed: read_str_opt(r)?,
            return_metrics: read_str_opt(r)?,
        })
    }
}

fn legacy() -> NotDeferrable {
    refuse("the legacy Expected, ConditionalOperator or AttributeUpdates parameters")
}

/// The fields every transaction item has, read from it (`$condition`: its condition, optional
/// but for a condition check).
macro_rules! item_common {
    ($x:expr, $condition:expr) => {
        Fields {
            table: Some($x.table_name().to_owned()),
            condition: $condition,
            names: $x.expression_attribute_names().cloned(),
            values: $x.expression_attribute_values().cloned(),
            return_on_failure: $x
                .return_values_on_condition_check_failure()
                .map(|v| v.as_str().to_owned()),
            ..Fields::default()
        }
    };
}

/// The fields of a transaction item and its kind.
fn item_fields(item: &TransactWriteItem) -> Result<(u8, Fields), NotDeferrable> {
    let optional = |c: Option<&str>| c.map(str::to_owned);
    if let Some(p) = item.put() {
        let f = Fields {
            item: Some(p.item().clone()),
            ..item_common!(p, optional(p.condition_expression()))
        };
        return Ok((PUT, f));
    }
    if let Some(u) = item.update() {
        let f = Fields {
            key: Some(u.key().clone()),
            update: Some(u.update_expression().to_owned()),
            ..item_common!(u, optional(u.condition_expression()))
        };
        return Ok((UPDATE, f));
    }
    if let Some(d) = item.delete() {
        let f = Fields {
            key: Some(d.key().clone()),
            ..item_common!(d, optional(d.condition_expression()))
        };
        return Ok((DELETE, f));
    }
    if let Some(c) = item.condition_check() {
        let f = Fields {
            key: Some(c.key().clone()),
            ..item_common!(c, Some(c.condition_expression().to_owned()))
        };
        return Ok((CHECK, f));
    }
    Err(refuse("an empty transaction item"))
}

fn built<T, E>(r: Result<T, E>) -> Result<T, DecodeError> {
    r.map_err(|_| DecodeError::Invalid("transaction item"))
}

fn transaction_item(kind: u8, f: Fields) -> Result<TransactWriteItem, DecodeError> {
    let on_failure = f
        .return_on_failure
        .as_deref()
        .map(ReturnValuesOnConditionCheckFailure::from);
    // Sets the fields every transaction item has on its builder, and builds it.
    macro_rules! build {
        ($builder:expr) => {
            built(
                $builder
                    .set_table_name(f.table)
                    .set_condition_expression(f.condition)
                    .set_expression_attribute_names(f.names)
                    .set_expression_attribute_values(f.values)
                    .set_return_values_on_condition_check_failure(on_failure)
                    .build(),
            )?
        };
    }
    let item = match kind {
        PUT => TransactWriteItem::builder().put(build!(Put::builder().set_item(f.item))),
        UPDATE => TransactWriteItem::builder().update(build!(Update::builder()
            .set_key(f.key)
            .set_update_expression(f.update))),
        DELETE => TransactWriteItem::builder().delete(build!(Delete::builder().set_key(f.key))),
        CHECK => TransactWriteItem::builder()
            .condition_check(build!(ConditionCheck::builder().set_key(f.key))),
        _ => return Err(DecodeError::Invalid("transaction item kind")),
    };
    Ok(item.build())
}

/// The fields every single-item write has, read from its SDK input builder.
macro_rules! common_fields {
    ($b:expr) => {
        Fields {
            table: $b.get_table_name().clone(),
            condition: $b.get_condition_expression().clone(),
            names: $b.get_expression_attribute_names().clone(),
            values: $b.get_expression_attribute_values().clone(),
            return_values: $b
                .get_return_values()
                .as_ref()
                .map(|v| v.as_str().to_owned()),
            return_on_failure: $b
                .get_return_values_on_condition_check_failure()
                .as_ref()
                .map(|v| v.as_str().to_owned()),
            return_consumed: $b
                .get_return_consumed_capacity()
                .as_ref()
                .map(|v| v.as_str().to_owned()),
            return_metrics: $b
                .get_return_item_collection_metrics()
                .as_ref()
                .map(|v| v.as_str().to_owned()),
            ..Fields::default()
        }
    };
}

/// Sets the fields every single-item write has on its SDK input builder.
macro_rules! with_common_fields {
    ($builder:expr, $f:expr) => {
        $builder
            .set_table_name($f.table)
            .set_condition_expression($f.condition)
            .set_expression_attribute_names($f.names)
            .set_expression_attribute_values($f.values)
            .set_return_values($f.return_values.as_deref().map(ReturnValue::from))
            .set_return_values_on_condition_check_failure(
                $f.return_on_failure
                    .as_deref()
                    .map(ReturnValuesOnConditionCheckFailure::from),
            )
            .set_return_consumed_capacity(
                $f.return_consumed
                    .as_deref()
                    .map(ReturnConsumedCapacity::from),
            )
            .set_return_item_collection_metrics(
                $f.return_metrics
                    .as_deref()
                    .map(ReturnItemCollectionMetrics::from),
            )
    };
}

impl DurableRequest for DynamoRequest {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), NotDeferrable> {
        let mut w = Writer(out);
        w.u8(FORMAT);
        match &self.operation {
            DynamoOperation::GetItem(_)
            | DynamoOperation::Query(_)
            | DynamoOperation::BatchGetItem(_)
            | DynamoOperation::TransactGetItems(_)
            | DynamoOperation::Scan(_) => return Err(refuse("a read is never deferred")),
            DynamoOperation::PutItem(b) => {
                if b.get_expected().is_some() || b.get_conditional_operator().is_some() {
                    return Err(legacy());
                }
                w.u8(PUT);
                Fields {
                    item: b.get_item().clone(),
                    ..common_fields!(b)
                }
                .write(&mut w)?;
            }
            DynamoOperation::UpdateItem(b) => {
                if b.get_expected().is_some()
                    || b.get_conditional_operator().is_some()
                    || b.get_attribute_updates().is_some()
                {
                    return Err(legacy());
                }
                w.u8(UPDATE);
                Fields {
                    key: b.get_key().clone(),
                    update: b.get_update_expression().clone(),
                    ..common_fields!(b)
                }
                .write(&mut w)?;
            }
            DynamoOperation::DeleteItem(b) => {
                if b.get_expected().is_some() || b.get_conditional_operator().is_some() {
                    return Err(legacy());
                }
                w.u8(DELETE);
                Fields {
                    key: b.get_key().clone(),
                    ..common_fields!(b)
                }
                .write(&mut w)?;
            }
            DynamoOperation::TransactWriteItems(b) => {
                w.u8(TRANSACTION);
                let items = b.get_transact_items().as_deref().unwrap_or_default();
                w.len(items.len());
                for item in items {
                    let (kind, fields) = item_fields(item)?;
                    w.u8(kind);
                    fields.write(&mut w)?;
                }
                write_str_opt(&mut w, b.get_client_request_token().as_deref());
                write_str_opt(
                    &mut w,
                    b.get_return_consumed_capacity()
                        .as_ref()
                        .map(ReturnConsumedCapacity::as_str),
                );
                write_str_opt(
                    &mut w,
                    b.get_return_item_collection_metrics()
                        .as_ref()
                        .map(ReturnItemCollectionMetrics::as_str),
                );
            }
        }
        match &self.stamp {
            Some(meta) => {
                w.u8(1);
                w.bytes(&meta.stamp.write_id.session.as_u128().to_le_bytes());
                w.u64(meta.stamp.write_id.lane);
                w.u64(meta.stamp.write_id.seq);
                w.u64(meta.stamp.timestamp.get());
                w.len(meta.expected.len());
                for e in &meta.expected {
                    match e {
                        Some(v) => {
                            w.u8(1);
                            w.u64(*v);
                        }
                        None => w.u8(0),
                    }
                }
                w.u8(u8::from(meta.replay));
            }
            None => w.u8(0),
        }
        match self.explicit_version {
            Some(v) => {
                w.u8(1);
                w.u64(v);
            }
            None => w.u8(0),
        }
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT {
            return Err(DecodeError::Format);
        }
        let operation = match r.u8()? {
            PUT => {
                let f = Fields::read(&mut r)?;
                DynamoOperation::PutItem(with_common_fields!(
                    PutItemInput::builder().set_item(f.item),
                    f
                ))
            }
            UPDATE => {
                let f = Fields::read(&mut r)?;
                DynamoOperation::UpdateItem(with_common_fields!(
                    UpdateItemInput::builder()
                        .set_key(f.key)
                        .set_update_expression(f.update),
                    f
                ))
            }
            DELETE => {
                let f = Fields::read(&mut r)?;
                DynamoOperation::DeleteItem(with_common_fields!(
                    DeleteItemInput::builder().set_key(f.key),
                    f
                ))
            }
            TRANSACTION => {
                let n = r.len("transaction", 100)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = r.u8()?;
                    items.push(transaction_item(kind, Fields::read(&mut r)?)?);
                }
                let token = read_str_opt(&mut r)?;
                let consumed = read_str_opt(&mut r)?;
                let metrics = read_str_opt(&mut r)?;
                DynamoOperation::TransactWriteItems(
                    TransactWriteItemsInput::builder()
                        .set_transact_items(Some(items))
                        .set_client_request_token(token)
                        .set_return_consumed_capacity(
                            consumed.as_deref().map(ReturnConsumedCapacity::from),
                        )
                        .set_return_item_collection_metrics(
                            metrics.as_deref().map(ReturnItemCollectionMetrics::from),
                        ),
                )
            }
            _ => return Err(DecodeError::Invalid("operation")),
        };
        let write = if flag(&mut r)? {
            let session: [u8; 16] = r
                .bytes("write id", 16)?
                .try_into()
                .map_err(|_| DecodeError::Invalid("write id"))?;
            let write_id = WriteId::new(
                SessionId::from_u128(u128::from_le_bytes(session)),
                r.u64()?,
                r.u64()?,
            );
            let clock = HybridTimestamp::new(r.u64()?);
            let n = r.len("expected versions", 100)?;
            let mut expected = Vec::with_capacity(n);
            for _ in 0..n {
                expected.push(if flag(&mut r)? { Some(r.u64()?) } else { None });
            }
            Some(DynamoStamp {
                stamp: Stamp::new(write_id, clock),
                expected,
                replay: flag(&mut r)?,
                rebased: false,
                create: false,
                rebases: 0,
            })
        } else {
            None
        };
        let explicit_version = if flag(&mut r)? { Some(r.u64()?) } else { None };
        if !r.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(DynamoRequest {
            operation,
            stamp: write,
            explicit_version,
            config: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::get_item::GetItemInput;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn nested() -> AttributeValue {
        AttributeValue::M(HashMap::from([
            ("n".to_owned(), AttributeValue::N("12.5".into())),
            ("b".to_owned(), AttributeValue::B(Blob::new(vec![0, 255]))),
            ("t".to_owned(), AttributeValue::Bool(true)),
            ("z".to_owned(), AttributeValue::Null(true)),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            ("ns".to_owned(), AttributeValue::Ns(vec!["1".into()])),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(vec![1])]),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![s("x"), AttributeValue::L(vec![])]),
            ),
        ]))
    }

    fn stamped(operation: DynamoOperation) -> DynamoRequest {
        DynamoRequest {
            operation,
            stamp: Some(DynamoStamp {
                stamp: Stamp::new(
                    WriteId::new(SessionId::from_u128(7 << 64 | 9), 3, 11),
                    HybridTimestamp::new(1_800_000_000_000_000),
                ),
                expected: vec![Some(4), None],
                replay: true,
                rebased: false,
                create: false,
                rebases: 0,
            }),
            explicit_version: Some(2),
            config: None,
        }
    }

    fn round_trip(request: &DynamoRequest) -> DynamoRequest {
        let mut bytes = Vec::new();
        request.encode(&mut bytes).unwrap();
        let back = DynamoRequest::decode(&bytes).unwrap();
        assert_eq!(back.operation, request.operation);
        assert_eq!(back.stamp, request.stamp);
        assert_eq!(back.explicit_version, request.explicit_version);
        for n in 0..bytes.len() {
            assert!(DynamoRequest::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        back
    }

    #[test]
    fn every_write_round_trips_with_its_stamp() {
        round_trip(&stamped(DynamoOperation::PutItem(
            PutItemInput::builder()
                .table_name("t")
                .item("pk", s("a"))
                .item("doc", nested())
                .condition_expression("attribute_not_exists(#p)")
                .expression_attribute_names("#p", "pk")
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .return_consumed_capacity(ReturnConsumedCapacity::Total),
        )));
        round_trip(&stamped(DynamoOperation::UpdateItem(
            UpdateItemInput::builder()
                .table_name("t")
                .key("pk", s("a"))
                .update_expression("SET v = :v")
                .expression_attribute_values(":v", nested())
                .return_item_collection_metrics(ReturnItemCollectionMetrics::Size),
        )));
        round_trip(&stamped(DynamoOperation::DeleteItem(
            DeleteItemInput::builder().table_name("t").key("pk", s("a")),
        )));
        let items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name("t")
                        .item("pk", s("1"))
                        .build()
                        .unwrap(),
                )
                .build(),
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name("t")
                        .key("pk", s("2"))
                        .update_expression("SET a = :a")
                        .expression_attribute_values(":a", s("x"))
                        .build()
                        .unwrap(),
                )
                .build(),
            TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name("t")
                        .key("pk", s("3"))
                        .build()
                        .unwrap(),
                )
                .build(),
            TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name("t")
                        .key("pk", s("4"))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .unwrap(),
                )
                .build(),
        ];
        round_trip(&stamped(DynamoOperation::TransactWriteItems(
            TransactWriteItemsInput::builder()
                .set_transact_items(Some(items))
                .client_request_token("token-1"),
        )));
        // Unstamped, too.
        let mut plain = stamped(DynamoOperation::DeleteItem(
            DeleteItemInput::builder().table_name("t").key("pk", s("a")),
        ));
        plain.stamp = None;
        plain.explicit_version = None;
        round_trip(&plain);
    }

    #[test]
    fn reads_and_legacy_parameters_are_not_deferrable() {
        let read: DynamoRequest = GetItemInput::builder().table_name("t").into();
        assert!(read.encode(&mut Vec::new()).is_err());
        let legacy = stamped(DynamoOperation::PutItem(
            PutItemInput::builder()
                .table_name("t")
                .conditional_operator(aws_sdk_dynamodb::types::ConditionalOperator::And),
        ));
        assert!(legacy.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn hostile_bytes_are_typed_errors() {
        // Nesting past DynamoDB's 32 levels.
        let mut bytes = vec![FORMAT, PUT, 0, 1];
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(b'a');
        for _ in 0..40 {
            bytes.push(8);
            bytes.extend_from_slice(&1u32.to_le_bytes());
        }
        assert!(DynamoRequest::decode(&bytes).is_err());
        // A claimed length of 4 GB.
        let mut bytes = vec![FORMAT, PUT, 1];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            DynamoRequest::decode(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
        for b in 0..=255u8 {
            let _ = DynamoRequest::decode(&[FORMAT, b, b, b, b]);
        }
    }
}
