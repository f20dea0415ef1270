//! What goes to [`DynamoService`](crate::DynamoService) and comes back: the SDK's input
//! builders with what the session layer stamped on them, the tables' key schemas, and the
//! configuration the adapter hands the service.

use aws_sdk_dynamodb::operation::batch_get_item::{
    builders::BatchGetItemInputBuilder, BatchGetItemOutput,
};
use aws_sdk_dynamodb::operation::delete_item::{
    builders::DeleteItemInputBuilder, DeleteItemOutput,
};
use aws_sdk_dynamodb::operation::get_item::{builders::GetItemInputBuilder, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::{builders::PutItemInputBuilder, PutItemOutput};
use aws_sdk_dynamodb::operation::query::{builders::QueryInputBuilder, QueryOutput};
use aws_sdk_dynamodb::operation::scan::{builders::ScanInputBuilder, ScanOutput};
use aws_sdk_dynamodb::operation::transact_get_items::{
    builders::TransactGetItemsInputBuilder, TransactGetItemsOutput,
};
use aws_sdk_dynamodb::operation::transact_write_items::{
    builders::TransactWriteItemsInputBuilder, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{
    builders::UpdateItemInputBuilder, UpdateItemOutput,
};
use ryw::stamp::Stamp;
use ryw::{StoreId, Version, WriteId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The key schema of one table, and the partition attributes of its global secondary indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    pub(crate) table: String,
    pub(crate) partition_key: String,
    pub(crate) sort_key: Option<String>,
    pub(crate) indexes: HashMap<String, String>,
}

impl TableSchema {
    /// A table keyed by `partition_key` alone.
    pub fn new(table: impl Into<String>, partition_key: impl Into<String>) -> Self {
        TableSchema {
            table: table.into(),
            partition_key: partition_key.into(),
            sort_key: None,
            indexes: HashMap::new(),
        }
    }

    /// Adds the sort key.
    pub fn sort_key(mut self, sort_key: impl Into<String>) -> Self {
        self.sort_key = Some(sort_key.into());
        self
    }

    /// Declares a global secondary index and its partition attribute, so that queries on it are
    /// fenced by the writes of PutItem items that carry that attribute. A global index is
    /// updated item by item, in no order, so a query of a partition the session wrote to is
    /// reported `Pending`, never `Guaranteed` (see [Reads](crate#reads) in the crate docs).
    pub fn global_index(
        mut self,
        index: impl Into<String>,
        partition_key: impl Into<String>,
    ) -> Self {
        self.indexes.insert(index.into(), partition_key.into());
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The partition key attribute.
    pub fn partition_key_attribute(&self) -> &str {
        &self.partition_key
    }
}

/// How many recent write ids an item keeps: the write that gives the item version `v` puts its id
/// in the attribute `<write id attribute>_<v % RECENT_WRITE_IDS>`. A retry is recognised as
/// applied when one of them holds its id: as long as fewer than this many updates, and no put of
/// the whole item, reached the item in between.
pub const RECENT_WRITE_IDS: usize = 4;

/// The adapter's store id in session tokens, unless
/// [`DynamoAdapter::store_id`](crate::DynamoAdapter::store_id) sets another: the scopes of every
/// table of one account are told apart by their table names under this one id.
pub const STORE_ID: StoreId = StoreId::new(2);

/// How many times a `BatchGetItem` sends its `UnprocessedKeys` again, by default.
pub(crate) const DEFAULT_BATCH_GET_RETRIES: u32 = 8;

/// The wait before the first resend of `UnprocessedKeys`, by default (doubled for each next one,
/// up to one second).
pub(crate) const DEFAULT_BATCH_GET_BACKOFF: Duration = Duration::from_millis(25);

/// Configuration shared by the adapter and the service.
#[derive(Clone, Debug)]
pub(crate) struct DynamoConfig {
    pub(crate) store: StoreId,
    pub(crate) version_attribute: String,
    pub(crate) write_id_attribute: String,
    pub(crate) clock_attribute: String,
    pub(crate) tables: HashMap<String, TableSchema>,
    /// The store replicates each base-table partition in order
    /// ([`DynamoAdapter::ordered_partitions`](crate::DynamoAdapter::ordered_partitions)).
    pub(crate) ordered_partitions: bool,
    /// How many times a `BatchGetItem` sends its `UnprocessedKeys` again
    /// ([`DynamoAdapter::batch_get_retries`](crate::DynamoAdapter::batch_get_retries)).
    pub(crate) batch_get_retries: u32,
    /// The wait before the first of those, doubled for each next one
    /// ([`DynamoAdapter::batch_get_backoff`](crate::DynamoAdapter::batch_get_backoff)).
    pub(crate) batch_get_backoff: Duration,
}

impl DynamoConfig {
    /// The attribute that holds the id of the write giving an item `version`.
    pub(crate) fn write_id_slot(&self, version: u64) -> String {
        format!(
            "{}_{}",
            self.write_id_attribute,
            version % RECENT_WRITE_IDS as u64
        )
    }
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            store: STORE_ID,
            version_attribute: "ryw_version".into(),
            write_id_attribute: "ryw_write_id".into(),
            clock_attribute: "ryw_clock".into(),
            tables: HashMap::new(),
            ordered_partitions: true,
            batch_get_retries: DEFAULT_BATCH_GET_RETRIES,
            batch_get_backoff: DEFAULT_BATCH_GET_BACKOFF,
        }
    }
}

/// One DynamoDB operation, as the SDK's input builder.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DynamoOperation {
    /// GetItem.
    GetItem(GetItemInputBuilder),
    /// PutItem.
    PutItem(PutItemInputBuilder),
    /// UpdateItem.
    UpdateItem(UpdateItemInputBuilder),
    /// DeleteItem.
    DeleteItem(DeleteItemInputBuilder),
    /// Query (one page; [`Pages`](crate::Pages) follows `LastEvaluatedKey` over all of them).
    Query(QueryInputBuilder),
    /// TransactWriteItems.
    TransactWriteItems(TransactWriteItemsInputBuilder),
    /// BatchGetItem, its `UnprocessedKeys` sent again by the service until none is left (see
    /// [`DynamoAdapter::batch_get_retries`](crate::DynamoAdapter::batch_get_retries)).
    BatchGetItem(BatchGetItemInputBuilder),
    /// TransactGetItems (always strongly consistent).
    TransactGetItems(TransactGetItemsInputBuilder),
    /// Scan (one page; [`Pages`](crate::Pages) follows `LastEvaluatedKey` over all of them).
    Scan(ScanInputBuilder),
}

/// A write's stamp as a DynamoDB request carries it: the layer's [`Stamp`], the versions the
/// write expects, and whether it is a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DynamoStamp {
    /// The layer's stamp.
    pub(crate) stamp: Stamp,
    /// Expected version per item (one for single-item writes; one per transaction item, `None`
    /// for condition checks).
    pub(crate) expected: Vec<Option<u64>>,
    /// Sent again after an attempt that may have applied ([`ryw::adapter::StoreAdapter::prepare_replay`]).
    pub(crate) replay: bool,
    /// Rebased onto a newer version after a conflict: another write applied after this one was
    /// stamped, and this one applies after it (sent late, see [`LATE`]).
    pub(crate) rebased: bool,
    /// Rebased after a conflict with a delete: a single-item write that creates the item (unless
    /// it is a replay, which never creates: see `Conditions::condition`).
    pub(crate) create: bool,
    /// How many times the write was rebased: a transaction's request token changes with it, as
    /// its conditions do (DynamoDB refuses a token sent again with other parameters).
    pub(crate) rebases: u32,
}

/// How long after its stamp a write is sent before it counts as late (1 ms, in microseconds): a
/// write kept for later or sent again after a backoff. A replay and a rebased write count as late
/// whenever they are sent. Other writes of
/// its partitions may have applied in between with clocks past its stamp, so the session requires
/// of those partitions the clock at which it was sent (see `DynamoAdapter`'s `observe`).
pub(crate) const LATE: u64 = 1_000;

/// A request to [`DynamoService`](crate::DynamoService): an SDK input builder plus what ryw stamped on it.
#[derive(Clone, Debug)]
pub struct DynamoRequest {
    pub(crate) operation: DynamoOperation,
    pub(crate) stamp: Option<DynamoStamp>,
    pub(crate) explicit_version: Option<u64>,
    /// The adapter's configuration, attached by the session layer (`StoreAdapter::prepare`).
    pub(crate) config: Option<Arc<DynamoConfig>>,
}

impl DynamoRequest {
    /// The operation.
    pub fn operation(&self) -> &DynamoOperation {
        &self.operation
    }

    /// Makes a single-item write conditional on `version` (read-modify-write): a conflict is then
    /// always reported to the caller instead of being resolved by the resolver. `Version::ZERO`
    /// means "the item must not exist".
    pub fn expect_version(mut self, version: Version) -> Self {
        self.explicit_version = Some(version.get());
        self
    }

    /// The write id stamped by the session layer, if any.
    pub fn write_id(&self) -> Option<WriteId> {
        self.stamp.as_ref().map(|w| w.stamp.write_id)
    }
}

impl From<DynamoOperation> for DynamoRequest {
    fn from(operation: DynamoOperation) -> Self {
        DynamoRequest {
            operation,
            stamp: None,
            explicit_version: None,
            config: None,
        }
    }
}

macro_rules! from_builder {
    ($($builder:ty => $variant:ident),* $(,)?) => {$(
        impl From<$builder> for DynamoRequest {
            fn from(builder: $builder) -> Self {
                DynamoOperation::$variant(builder).into()
            }
        }
    )*};
}

from_builder! {
    GetItemInputBuilder => GetItem,
    PutItemInputBuilder => PutItem,
    UpdateItemInputBuilder => UpdateItem,
    DeleteItemInputBuilder => DeleteItem,
    QueryInputBuilder => Query,
    TransactWriteItemsInputBuilder => TransactWriteItems,
    BatchGetItemInputBuilder => BatchGetItem,
    TransactGetItemsInputBuilder => TransactGetItems,
    ScanInputBuilder => Scan,
}

/// The SDK's output of one operation.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DynamoOutput {
    /// GetItem.
    GetItem(GetItemOutput),
    /// PutItem.
    PutItem(PutItemOutput),
    /// UpdateItem.
    UpdateItem(UpdateItemOutput),
    /// DeleteItem.
    DeleteItem(DeleteItemOutput),
    /// Query.
    Query(QueryOutput),
    /// TransactWriteItems.
    TransactWriteItems(TransactWriteItemsOutput),
    /// BatchGetItem: the items of every round, with no `UnprocessedKeys` left.
    BatchGetItem(BatchGetItemOutput),
    /// TransactGetItems.
    TransactGetItems(TransactGetItemsOutput),
    /// Scan.
    Scan(ScanOutput),
}

/// A response of [`DynamoService`](crate::DynamoService): the SDK output plus what ryw learned.
#[derive(Clone, Debug)]
pub struct DynamoResponse {
    pub(crate) output: DynamoOutput,
    pub(crate) written: Vec<Option<u64>>,
    /// For a write sent [`LATE`] or more after it was stamped, the wall clock when it was sent.
    pub(crate) sent_late: Option<u64>,
    pub(crate) replayed: bool,
    pub(crate) consistent: bool,
    /// The tables a `BatchGetItem` read strongly, as sent.
    pub(crate) strong_tables: Vec<String>,
}

impl DynamoResponse {
    /// The response to a request sent: `written`, the versions its writes gave their items;
    /// `consistent`, whether it read strongly.
    pub(crate) fn new(output: DynamoOutput, written: Vec<Option<u64>>, consistent: bool) -> Self {
        DynamoResponse {
            output,
            written,
            replayed: false,
            consistent,
            strong_tables: Vec::new(),
            sent_late: None,
        }
    }

    /// The response to a retried write found already applied by an earlier attempt (`output`:
    /// the operation's empty output).
    pub(crate) fn replayed(output: DynamoOutput, written: Vec<Option<u64>>) -> Self {
        DynamoResponse {
            output,
            written,
            replayed: true,
            consistent: false,
            strong_tables: Vec::new(),
            sent_late: None,
        }
    }

    /// The SDK output.
    pub fn output(&self) -> &DynamoOutput {
        &self.output
    }

    /// Takes the SDK output out.
    pub fn into_output(self) -> DynamoOutput {
        self.output
    }

    /// Replaces the SDK output, keeping what ryw learned from the request (for middleware that
    /// rewrites outputs, such as a cache).
    pub fn map_output(mut self, f: impl FnOnce(DynamoOutput) -> DynamoOutput) -> Self {
        self.output = f(self.output);
        self
    }

    /// The item of a GetItem.
    pub fn item(&self) -> Option<&HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        match &self.output {
            DynamoOutput::GetItem(o) => o.item(),
            _ => None,
        }
    }

    /// The items of a Query or Scan page.
    pub fn items(&self) -> &[HashMap<String, aws_sdk_dynamodb::types::AttributeValue>] {
        match &self.output {
            DynamoOutput::Query(o) => o.items(),
            DynamoOutput::Scan(o) => o.items(),
            _ => &[],
        }
    }

    /// The `LastEvaluatedKey` of a Query or Scan page: where the next page starts (`None` after
    /// the last page).
    pub fn last_evaluated_key(
        &self,
    ) -> Option<&HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        match &self.output {
            DynamoOutput::Query(o) => o.last_evaluated_key(),
            DynamoOutput::Scan(o) => o.last_evaluated_key(),
            _ => None,
        }
    }

    /// The items a BatchGetItem returned from `table` (every round's, in no particular order).
    pub fn batch_items(
        &self,
        table: &str,
    ) -> &[HashMap<String, aws_sdk_dynamodb::types::AttributeValue>] {
        match &self.output {
            DynamoOutput::BatchGetItem(o) => o
                .responses()
                .and_then(|r| r.get(table))
                .map_or(&[], Vec::as_slice),
            _ => &[],
        }
    }

    /// The items of a TransactGetItems, in the order of its gets (`None` where an item does not
    /// exist).
    pub fn transact_items(
        &self,
    ) -> Vec<Option<&HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>> {
        match &self.output {
            DynamoOutput::TransactGetItems(o) => o.responses().iter().map(|r| r.item()).collect(),
            _ => Vec::new(),
        }
    }

    /// The version a single-item write gave the item (for a delete: the version that marks the
    /// deletion).
    pub fn written_version(&self) -> Option<Version> {
        self.written.first().copied().flatten().map(Version::new)
    }

    /// True when a retried write found that its earlier attempt had already applied.
    pub fn was_replayed(&self) -> bool {
        self.replayed
    }

    /// True when the read was strongly consistent.
    pub fn is_consistent(&self) -> bool {
        self.consistent
    }
}
