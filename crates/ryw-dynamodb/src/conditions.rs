//! The conditions ryw puts on an item write, and what the old item returned by a failed
//! condition says about that write.
//!
//! Every item write through the session layer is conditional on the item's version attribute:
//! the version the session last saw (expect v, write v + 1), or no version at all for an item the
//! session never saw (it is created at the writer's hybrid clock, so versions keep growing across
//! delete and re-create). The write sets the item's version and clock, and puts its write id in
//! one of the item's recent write ids: the write that gives the item version `v` writes
//! `<write id attribute>_<v % RECENT_WRITE_IDS>`, so the item holds the ids of its last
//! [`RECENT_WRITE_IDS`] writes. Each write asks for the old item when its condition fails
//! (`ReturnValuesOnConditionCheckFailure`).
//!
//! # Recognising a replayed write
//!
//! A write sent again after an attempt that may have applied (its response was lost) carries the
//! same write id and expects the same version. If the earlier attempt applied, the version has
//! moved on and the condition fails; the old item then tells what happened
//! ([`Conditions::after_failed_condition`]):
//!
//! - [`Failed::Landed`]: one of the item's recent write ids is this write's
//!   ([`Conditions::shows_this_write`]): the earlier attempt applied, and the write is reported
//!   done (replayed), at the version the item shows. Later writes do not hide it as long as fewer
//!   than [`RECENT_WRITE_IDS`] of them reached the item and none put the whole item anew.
//! - [`Failed::Absent`]: no item came back. At a replay, whether the earlier attempt applied
//!   before the item was deleted cannot be told: the write is unresolved ([`unresolved`]), never
//!   sent again (but a delete without a condition of the caller's, which is sent as the caller
//!   wrote it). On a first attempt, a put or an update of an item the session had seen found it
//!   deleted since: a version conflict with no current item ([`Conditions::gone`]), for the
//!   layer's resolver. A resolver that keeps the write has it sent again creating the item
//!   ([`Conditions::creating`]), unless another attempt or copy of the write may have applied:
//!   the layer then sends it as a replay, which never creates. One that expected no item met the
//!   caller's own condition failing; a delete finds nothing to delete and is sent as the caller
//!   wrote it.
//! - [`Failed::Failure`]: the item holds this write's id nowhere ([`Conditions::failure`]). Its
//!   version differs from the expected one: another writer won, a version conflict for the
//!   resolver; or the version is the expected one: the caller's own condition failed.
//!
//! A canceled transaction reads each item's old item the same way: one item that shows the write
//! proves that the whole transaction committed on an earlier attempt; an item gone at a replay,
//! with none showing the write, leaves it unresolved.

use crate::error::{ConditionFailure, DynamoError};
use crate::expr::{self, Item};
use crate::request::{DynamoConfig, DynamoStamp, TableSchema, RECENT_WRITE_IDS};
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// The values ryw's expressions use for one item write.
pub(crate) struct Conditions<'a> {
    config: &'a DynamoConfig,
    write_id: String,
    clock: u64,
    /// The version the session last saw (0: none).
    pub(crate) expected: u64,
    /// The table's partition key attribute (`attribute_exists` of it: the item exists).
    key: &'a str,
    /// Sent again after an attempt that may have applied.
    pub(crate) replay: bool,
    /// Create the item (it was found absent though the session had seen it).
    pub(crate) create: bool,
}

/// What a failed condition's old item says about this write.
pub(crate) enum Failed {
    /// The item shows this very write: an earlier attempt landed (the version it shows).
    Landed(Option<u64>),
    /// The item is absent.
    Absent,
    /// Another version, or the caller's own condition.
    Failure(DynamoError),
}

impl Conditions<'_> {
    /// The stamp of `write` on an item of `table` (which must have a declared schema) that the
    /// session last saw at version `expected`.
    pub(crate) fn new<'a>(
        config: &'a DynamoConfig,
        table: Option<&String>,
        write: &DynamoStamp,
        expected: Option<u64>,
    ) -> Result<Conditions<'a>, DynamoError> {
        let schema = check_table(config, table)?;
        let expected = expected.unwrap_or(0);
        if expected == u64::MAX || write.stamp.timestamp.get() == u64::MAX {
            // Only a hostile token or item can get here; wrapping would move versions backwards.
            return Err(DynamoError::Validation {
                message: "item version or session clock exhausted (u64::MAX)".into(),
                source: None,
            });
        }
        Ok(Conditions {
            config,
            write_id: write.stamp.write_id.to_string(),
            clock: write.stamp.timestamp.get(),
            expected,
            key: schema.partition_key_attribute(),
            replay: write.replay,
            create: false,
        })
    }

    /// The stamp of a single-item write to `table` (which must have a declared schema).
    pub(crate) fn single<'a>(
        config: &'a DynamoConfig,
        table: Option<&String>,
        write: &DynamoStamp,
    ) -> Result<Conditions<'a>, DynamoError> {
        let stamp = Conditions::new(
            config,
            table,
            write,
            write.expected.first().copied().flatten(),
        )?;
        Ok(if write.create {
            stamp.creating()
        } else {
            stamp
        })
    }

    /// The same write, creating the item: it was found absent (deleted since the session saw
    /// it), and the conflict resolver kept the write.
    pub(crate) fn creating(&self) -> Self {
        Conditions {
            config: self.config,
            write_id: self.write_id.clone(),
            create: true,
            ..*self
        }
    }

    /// The version this write gives the item: expected + 1 while the item lives; when the item is
    /// created (never seen by the session, or found absent), the writer's clock, and past
    /// anything the session saw, so versions keep growing across delete and re-create.
    pub(crate) fn next(&self) -> u64 {
        if self.expected == 0 || self.create {
            self.clock.max(self.expected + 1)
        } else {
            self.expected + 1
        }
    }

    /// The condition: the version is the expected one, or the item exists without a version
    /// (written without ryw); when creating, the item has no version. A replay never creates: an
    /// item absent at a replay may have been written by an earlier attempt, or by another copy
    /// of the write, and deleted since.
    fn condition(&self, caller: Option<String>) -> String {
        let exists_unversioned = "(attribute_not_exists(#ryw_v) AND attribute_exists(#ryw_k))";
        let ours = if self.expected == 0 || self.create {
            if self.replay {
                exists_unversioned.to_owned()
            } else {
                expr::version_condition(0).to_owned()
            }
        } else {
            format!(
                "{} OR {exists_unversioned}",
                expr::version_condition(self.expected)
            )
        };
        expr::and_condition(caller, &ours)
    }

    fn names(
        &self,
        caller: Option<HashMap<String, String>>,
        expressions: &[Option<&str>],
    ) -> HashMap<String, String> {
        let mut names = expr::with_names(caller, self.config);
        names.insert(expr::NAME_WRITE.into(), self.slot());
        names.insert(expr::NAME_KEY.into(), self.key.to_owned());
        expr::prune_names(&mut names, expressions);
        names
    }

    /// The attribute this write's id goes to (one of the item's recent write ids).
    fn slot(&self) -> String {
        self.config.write_id_slot(self.next())
    }

    fn values(
        &self,
        caller: Option<HashMap<String, AttributeValue>>,
        expressions: &[Option<&str>],
    ) -> Option<HashMap<String, AttributeValue>> {
        let mut values = caller.unwrap_or_default();
        let ours = [
            (
                expr::VALUE_EXPECTED,
                AttributeValue::N(self.expected.to_string()),
            ),
            (expr::VALUE_NEXT, AttributeValue::N(self.next().to_string())),
            (expr::VALUE_WRITE, AttributeValue::S(self.write_id.clone())),
            (expr::VALUE_CLOCK, AttributeValue::N(self.clock.to_string())),
        ];
        for (k, v) in ours {
            if expressions.iter().flatten().any(|e| e.contains(k)) {
                values.insert(k.to_owned(), v);
            }
        }
        (!values.is_empty()).then_some(values)
    }

    pub(crate) fn stamp_item(&self, item: &mut Item) {
        let c = self.config;
        item.insert(
            c.version_attribute.clone(),
            AttributeValue::N(self.next().to_string()),
        );
        item.insert(self.slot(), AttributeValue::S(self.write_id.clone()));
        item.insert(
            c.clock_attribute.clone(),
            AttributeValue::N(self.clock.to_string()),
        );
    }

    /// The one stamping path of every conditional item write (put, update and delete, alone or
    /// in a transaction): ryw's condition ANDed with the caller's, the update expression
    /// extended (`update`: `Some` for updates only, with the caller's expression if any), and
    /// the names and values both use.
    fn stamped(&self, caller: Expressions, update: Option<Option<String>>) -> ConditionalWrite {
        let update = update.map(|caller| self.update_expression(caller));
        let condition = self.condition(caller.condition);
        let exprs = [update.as_deref(), Some(condition.as_str())];
        ConditionalWrite {
            names: self.names(caller.names, &exprs),
            values: self.values(caller.values, &exprs),
            condition,
            update,
        }
    }

    /// Makes `input` (a delete of an item found absent) apply only while the item is still
    /// absent, with the caller's own condition, asking for the old item when that fails: it
    /// deletes nothing another writer created since, and DynamoDB still judges the caller's
    /// condition.
    pub(crate) fn while_absent(&self, input: &mut impl ConditionalInput) {
        let caller = input.caller_expressions();
        let condition = expr::and_condition(caller.condition, "attribute_not_exists(#ryw_k)");
        let mut names = expr::with_names(caller.names, self.config);
        names.insert(expr::NAME_KEY.into(), self.key.to_owned());
        expr::prune_names(&mut names, &[Some(condition.as_str())]);
        input.set_stamped(condition, names, caller.values);
    }

    /// Stamps `input` ([`Conditions::stamped`]), asking for the old item when the condition
    /// fails; returns the update expression to send (`update`: as for `stamped`).
    pub(crate) fn stamp(
        &self,
        input: &mut impl ConditionalInput,
        update: Option<Option<String>>,
    ) -> Option<String> {
        let stamped = self.stamped(input.caller_expressions(), update);
        input.set_stamped(stamped.condition, stamped.names, stamped.values);
        stamped.update
    }

    fn update_expression(&self, caller: Option<String>) -> String {
        expr::add_set_assignments(
            caller,
            "#ryw_v = :ryw_next, #ryw_w = :ryw_wid, #ryw_c = :ryw_clock",
        )
    }

    /// Whether an old item shows this very write: one of its recent write ids is this write's,
    /// whatever was written since.
    pub(crate) fn shows_this_write(&self, item: &Item) -> bool {
        (0..RECENT_WRITE_IDS as u64).any(|slot| {
            expr::string(item, &self.config.write_id_slot(slot)) == Some(&self.write_id)
        })
    }

    /// After `ConditionalCheckFailed` of a single-item write.
    pub(crate) fn after_failed_condition(&self, item: Option<Item>) -> Failed {
        match item {
            Some(item) if self.shows_this_write(&item) => {
                tracing::debug!(target: "ryw::dynamodb", "retried write had already applied");
                Failed::Landed(expr::number(&item, &self.config.version_attribute))
            }
            Some(item) => Failed::Failure(self.failure(Some(item))),
            None => Failed::Absent,
        }
    }

    /// A first attempt found the item deleted since the session saw it: a version conflict with
    /// no current item, for the conflict resolver ([`ryw::conflict::Conflict::gone`]).
    pub(crate) fn gone(&self) -> DynamoError {
        DynamoError::ConditionFailed(Box::new(ConditionFailure {
            item: None,
            expected: Some(self.expected),
            version_conflict: true,
        }))
    }

    pub(crate) fn failure(&self, item: Option<Item>) -> DynamoError {
        let current = item
            .as_ref()
            .and_then(|i| expr::number(i, &self.config.version_attribute));
        // The version condition holds when the version matches or is absent: if it held, the
        // caller's own condition is what failed.
        let version_held = current.is_none() || current == Some(self.expected);
        DynamoError::ConditionFailed(Box::new(ConditionFailure {
            item,
            expected: Some(self.expected),
            version_conflict: !version_held,
        }))
    }
}

/// A conditional item write as [`Conditions::stamped`] rewrote it.
struct ConditionalWrite {
    condition: String,
    update: Option<String>,
    names: HashMap<String, String>,
    values: Option<HashMap<String, AttributeValue>>,
}

/// The caller's condition of an item write, and the attribute names and values of its
/// expressions.
pub(crate) struct Expressions {
    pub(crate) condition: Option<String>,
    pub(crate) names: Option<HashMap<String, String>>,
    pub(crate) values: Option<HashMap<String, AttributeValue>>,
}

/// The input of an item write that ryw makes conditional: a single-item write's builder, or a
/// put, update or delete of a transaction.
pub(crate) trait ConditionalInput {
    /// The caller's condition, names and values.
    fn caller_expressions(&self) -> Expressions;

    /// Sets the condition, names and values as stamped, and asks for the old item when the
    /// condition fails.
    fn set_stamped(
        &mut self,
        condition: String,
        names: HashMap<String, String>,
        values: Option<HashMap<String, AttributeValue>>,
    );
}

/// A replay that found the item gone ([`Failed::Absent`]): `what` could not be resolved.
pub(crate) fn unresolved(what: &str) -> DynamoError {
    DynamoError::Unresolved(format!(
        "{what}: the item is gone; an earlier attempt may have applied before it was deleted"
    ))
}

/// The schema declared for `table`.
fn check_table<'a>(
    config: &'a DynamoConfig,
    table: Option<&String>,
) -> Result<&'a TableSchema, DynamoError> {
    match table.and_then(|t| config.tables.get(t)) {
        Some(schema) => Ok(schema),
        None => Err(DynamoError::UnknownTable(
            table.cloned().unwrap_or_default(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::clock::HybridTimestamp;
    use ryw::stamp::Stamp;
    use ryw::{SessionId, WriteId};

    /// An attribute's size as DynamoDB bills it (the developer guide's "Item sizes and
    /// formats"): the name's UTF-8 bytes plus, for a string, its UTF-8 bytes, and for a number,
    /// one byte per two significant digits plus one.
    fn billed(name: &str, value: &AttributeValue) -> usize {
        name.len()
            + match value {
                AttributeValue::S(s) => s.len(),
                AttributeValue::N(n) => {
                    let digits = n.trim_start_matches('0').trim_end_matches('0').len();
                    digits.div_ceil(2) + 1
                }
                other => panic!("not an attribute ryw writes: {other:?}"),
            }
    }

    fn billed_size(item: &Item) -> usize {
        item.iter().map(|(name, value)| billed(name, value)).sum()
    }

    /// What ryw's attributes add to an item, with a clock of 16 significant digits (microseconds
    /// since 1970, as the hybrid clock reads them) and write ids whose sequence number has one
    /// digit (a session's first nine writes). docs/cost.md quotes these numbers.
    #[test]
    fn what_the_stamp_adds_to_an_item() {
        let mut config = DynamoConfig::default();
        config
            .tables
            .insert("t".into(), TableSchema::new("t", "pk"));
        let write = |seq: u64, expected: Option<u64>| DynamoStamp {
            stamp: Stamp::new(
                WriteId::new(SessionId::derive(b"cost"), 0x5eed, seq),
                HybridTimestamp::new(1_767_225_600_123_457 + seq),
            ),
            expected: vec![expected],
            replay: false,
            rebased: false,
            create: false,
            rebases: 0,
        };
        let table = "t".to_owned();

        // A put of a new item: its version (the clock), one write id, the clock.
        let first = write(1, None);
        let stamp = Conditions::single(&config, Some(&table), &first).unwrap();
        let mut item = Item::new();
        stamp.stamp_item(&mut item);
        let write_id = first.stamp.write_id.to_string();
        assert_eq!(
            write_id.len(),
            51,
            "32 + 1 + 16 + 1 hex and dashes, one digit"
        );
        let sizes: std::collections::BTreeMap<&str, usize> = item
            .iter()
            .map(|(name, value)| (name.as_str(), billed(name, value)))
            .collect();
        let slot = config.write_id_slot(stamp.next());
        assert_eq!(
            sizes,
            [
                ("ryw_clock", 9 + 9),
                ("ryw_version", 11 + 9),
                (slot.as_str(), 14 + 51),
            ]
            .into()
        );
        assert_eq!(billed_size(&item), 103);

        // Updates move the version by one and fill the other write-id slots: after four writes
        // the item holds four ids (a put of the whole item starts again from one).
        let mut version = stamp.next();
        for seq in 2..=4 {
            let w = write(seq, Some(version));
            let stamp = Conditions::single(&config, Some(&table), &w).unwrap();
            assert_eq!(stamp.next(), version + 1);
            stamp.stamp_item(&mut item);
            version = stamp.next();
        }
        assert_eq!(item.len(), 2 + RECENT_WRITE_IDS);
        assert_eq!(billed_size(&item), 20 + 18 + 4 * 65);
    }

    #[test]
    fn a_write_rebased_to_create_its_item_creates_it_only_on_a_first_attempt() {
        let mut config = DynamoConfig::default();
        config
            .tables
            .insert("t".into(), TableSchema::new("t", "pk"));
        let table = "t".to_owned();
        let write = |replay: bool| DynamoStamp {
            stamp: Stamp::new(
                WriteId::new(SessionId::derive(b"gone"), 1, 1),
                HybridTimestamp::new(1_000),
            ),
            expected: vec![Some(5_000)],
            replay,
            rebased: true,
            create: true,
            rebases: 1,
        };
        let first = Conditions::single(&config, Some(&table), &write(false)).unwrap();
        assert_eq!(first.condition(None), "attribute_not_exists(#ryw_v)");
        // Past the version the session saw, though the clock is behind it.
        assert_eq!(first.next(), 5_001);
        // Another copy of the write may have applied before the delete: only recognised.
        let replay = Conditions::single(&config, Some(&table), &write(true)).unwrap();
        assert_eq!(
            replay.condition(None),
            "(attribute_not_exists(#ryw_v) AND attribute_exists(#ryw_k))"
        );
    }
}
