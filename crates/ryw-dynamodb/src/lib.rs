//! DynamoDB adapter for [ryw]: conditional writes that carry their write id, eventually
//! consistent reads fenced by item version, ambiguous retries resolved by checking whether the
//! write landed.
//!
//! - [`DynamoService`] is a tower `Service<DynamoRequest>` over `aws_sdk_dynamodb::Client` for
//!   GetItem, PutItem, UpdateItem, DeleteItem, Query and TransactWriteItems. Requests are the
//!   SDK's own input builders ([`DynamoRequest::from`] a `GetItemInputBuilder`, ...), so the API
//!   is the one you know.
//! - [`DynamoAdapter`] maps the session concepts: an item is a scope and its version attribute
//!   its version; a query's scope is its partition, versioned by the writers' hybrid clocks.
//!
//! # Writes
//!
//! Through the session layer every write is conditional on the item's version attribute
//! (optimistic concurrency: expect v, write v + 1; a new item starts at the writer's hybrid
//! clock, so versions keep growing across delete and re-create), and records its `WriteId` and
//! clock on the item. The expected version is the session's high-water mark for the item, or the
//! one the caller sets with [`DynamoRequest::expect_version`]. Retries reuse the write id; when a
//! retry meets `ConditionalCheckFailed`, the old item (asked for with
//! `ReturnValuesOnConditionCheckFailure`) tells whether the earlier attempt landed: if it carries
//! this write's id, the write succeeded; otherwise it is a conflict, handed to the resolver with
//! both versions and the current item. Transactions derive their `ClientRequestToken` from the
//! write id. An item overwritten by another writer between the lost response and the retry is
//! reported as a conflict (the write applied, then was superseded).
//!
//! # Reads
//!
//! Eventually consistent by default. The fence verifies the item's version against the session's
//! high-water mark and, on a miss, re-reads with `ConsistentRead` (escalating up front is
//! [`ryw::FenceConfig::escalate`]). A consistent read is authoritative. A query is fenced on its
//! partition: the newest writer's clock among the items of a base-table partition shows how far
//! the copy read is, because DynamoDB replicates each partition in order. On a store that does
//! not (a DynamoDB-compatible store such as ScyllaDB Alternator), declare it with
//! [`DynamoAdapter::ordered_partitions`]: a partition the session wrote to is then met only by a
//! `ConsistentRead` query. Queries on a global secondary index cannot read strongly, and an index
//! is not updated in order: a query of an index partition the session wrote to is reported
//! `Pending`, never `Guaranteed`.
//!
//! # Sessions' records
//!
//! Every item is a scope, so a session that touched more items than its token holds (32 by
//! default) has the oldest coarsened into a store horizon, which only the strong path meets.
//! [`DynamoRecordStore`] keeps those entries exactly in a table shared by every app instance
//! ([`ryw::record`]): another instance then fences reads of those items on their own versions,
//! on the eventually consistent path.
//!
//! # Example
//!
//! ```no_run
//! use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
//! use aws_sdk_dynamodb::types::AttributeValue;
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let adapter = DynamoAdapter::new().table(TableSchema::new("posts", "pk"));
//! let mut posts = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(adapter.clone()))
//!     .service(DynamoService::new(client));
//!
//! let session = Session::new();
//! let put = PutItemInput::builder()
//!     .table_name("posts")
//!     .item("pk", AttributeValue::S("post#1".into()))
//!     .item("body", AttributeValue::S("hello".into()));
//! posts.ready().await?.call(session.request(DynamoRequest::from(put))).await?;
//!
//! let get = GetItemInput::builder()
//!     .table_name("posts")
//!     .key("pk", AttributeValue::S("post#1".into()));
//! let read = posts.ready().await?.call(session.request(DynamoRequest::from(get))).await?;
//! assert!(read.visibility().is_guaranteed());
//! # Ok(()) }
//! ```
//!
//! [ryw]: https://docs.rs/ryw

mod adapter;
pub mod error;
mod expr;
#[cfg(feature = "outbox")]
mod outbox;
pub mod record;
pub mod revocation;
mod service;

pub use adapter::{DynamoAdapter, DynamoAdapterBuilder};
pub use error::{Cancellation, CancellationCode, DynamoError};
pub use record::DynamoRecordStore;
pub use revocation::DynamoRevocations;
pub use service::{DynamoFuture, DynamoService};

use aws_sdk_dynamodb::operation::delete_item::{
    builders::DeleteItemInputBuilder, DeleteItemOutput,
};
use aws_sdk_dynamodb::operation::get_item::{builders::GetItemInputBuilder, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::{builders::PutItemInputBuilder, PutItemOutput};
use aws_sdk_dynamodb::operation::query::{builders::QueryInputBuilder, QueryOutput};
use aws_sdk_dynamodb::operation::transact_write_items::{
    builders::TransactWriteItemsInputBuilder, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{
    builders::UpdateItemInputBuilder, UpdateItemOutput,
};
use ryw::clock::HybridTimestamp;
use ryw::{StoreId, Version, WriteId};
use std::collections::HashMap;
use std::sync::Arc;

/// The key schema of one table, and the partition attributes of its global secondary indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    table: String,
    partition_key: String,
    sort_key: Option<String>,
    indexes: HashMap<String, String>,
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
    /// reported `Pending`, never `Guaranteed` (see the crate README).
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
pub const RECENT_WRITE_IDS: u64 = 4;

/// Configuration shared by the adapter and the service.
#[derive(Clone, Debug)]
pub(crate) struct DynamoConfig {
    pub(crate) store: StoreId,
    pub(crate) version_attribute: String,
    pub(crate) write_id_attribute: String,
    pub(crate) clock_attribute: String,
    pub(crate) tables: HashMap<String, TableSchema>,
    /// The store replicates each base-table partition in order
    /// ([`DynamoAdapter::ordered_partitions`]).
    pub(crate) ordered_partitions: bool,
}

impl DynamoConfig {
    /// The attribute that holds the id of the write giving an item `version`.
    pub(crate) fn write_id_slot(&self, version: u64) -> String {
        format!("{}_{}", self.write_id_attribute, version % RECENT_WRITE_IDS)
    }
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            store: StoreId::new(2),
            version_attribute: "ryw_version".into(),
            write_id_attribute: "ryw_write_id".into(),
            clock_attribute: "ryw_clock".into(),
            tables: HashMap::new(),
            ordered_partitions: true,
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
    /// Query (one page).
    Query(QueryInputBuilder),
    /// TransactWriteItems.
    TransactWriteItems(TransactWriteItemsInputBuilder),
}

/// What the session layer stamped on a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WriteMeta {
    pub(crate) write_id: WriteId,
    pub(crate) clock: HybridTimestamp,
    /// Expected version per item (one for single-item writes; one per transaction item, `None`
    /// for condition checks).
    pub(crate) expected: Vec<Option<u64>>,
    /// Sent again after an attempt that may have applied ([`ryw::adapter::StoreAdapter::prepare_replay`]).
    pub(crate) replay: bool,
}

/// A request to [`DynamoService`]: an SDK input builder plus what ryw stamped on it.
#[derive(Clone, Debug)]
pub struct DynamoRequest {
    pub(crate) operation: DynamoOperation,
    pub(crate) write: Option<WriteMeta>,
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
        self.write.as_ref().map(|w| w.write_id)
    }
}

impl From<DynamoOperation> for DynamoRequest {
    fn from(operation: DynamoOperation) -> Self {
        DynamoRequest {
            operation,
            write: None,
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
}

/// A response of [`DynamoService`]: the SDK output plus what ryw learned.
#[derive(Clone, Debug)]
pub struct DynamoResponse {
    output: DynamoOutput,
    pub(crate) written: Vec<Option<u64>>,
    pub(crate) replayed: bool,
    pub(crate) consistent: bool,
}

impl DynamoResponse {
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

    /// The items of a Query page.
    pub fn items(&self) -> &[HashMap<String, aws_sdk_dynamodb::types::AttributeValue>] {
        match &self.output {
            DynamoOutput::Query(o) => o.items(),
            _ => &[],
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
