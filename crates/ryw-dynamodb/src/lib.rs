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
//! [`ryw::FenceConfig::strong`]). A consistent read is authoritative. A query is fenced on its
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
mod conditions;
pub mod error;
mod expr;
#[cfg(feature = "outbox")]
mod outbox;
pub mod pages;
pub mod record;
mod request;
pub mod revocation;
mod service;
mod transaction;
mod write;

pub use adapter::DynamoAdapter;
pub use error::{Cancellation, CancellationCode, DynamoError};
pub use pages::{AllPages, Pages};
pub use record::DynamoRecordStore;
pub use request::{
    DynamoOperation, DynamoOutput, DynamoRequest, DynamoResponse, TableSchema, RECENT_WRITE_IDS,
    STORE_ID,
};
pub use revocation::DynamoRevocations;
pub use service::{DynamoFuture, DynamoService};
