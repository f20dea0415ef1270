//! DynamoDB adapter for [ryw]: conditional writes that carry their write id, eventually
//! consistent reads fenced by item version, ambiguous retries resolved by checking whether the
//! write landed.
//!
//! - [`DynamoService`] is a tower `Service<DynamoRequest>` over `aws_sdk_dynamodb::Client` for
//!   GetItem, BatchGetItem, TransactGetItems, Query, Scan, PutItem, UpdateItem, DeleteItem and
//!   TransactWriteItems. Requests are the SDK's own input builders ([`DynamoRequest::from`] a
//!   `GetItemInputBuilder`, ...), so the API is the one you know. [`Pages`] reads every page of a
//!   Query or Scan, each page through the session layer.
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
//! write id (changed by each rebase). A retry whose write id the item no longer shows (it was
//! superseded, or never landed) is `ryw::Error::Ambiguous`, never rebased and applied again.
//!
//! # Reads
//!
//! Eventually consistent by default. The fence verifies the item's version against the session's
//! high-water mark and, on a miss, re-reads with `ConsistentRead` (escalating up front is
//! [`ryw::FenceConfig::strong`]). A consistent read is authoritative. A query is fenced on its
//! partition: the newest writer's clock among the items of a base-table partition shows how far
//! the copy read is, because DynamoDB replicates each partition in order. What the session
//! requires of a partition is the newest writer's clock of any item it wrote or read there (by
//! `GetItem`, a batch, a transaction, a query or a scan), so a query never goes back behind an
//! item the session has seen. On a store that does not replicate in order (a DynamoDB-compatible
//! store such as ScyllaDB Alternator), declare it with [`DynamoAdapter::ordered_partitions`]: a
//! partition the session wrote to, or read an item of, is then met only by a `ConsistentRead`
//! query. Queries on a global secondary index cannot read strongly, and an index
//! is not updated in order: a query of an index partition the session wrote to is reported
//! `Pending`, never `Guaranteed`.
//!
//! A query of several pages ([`Pages`]) fences each page so: a stale page is read again with
//! the same `ExclusiveStartKey` (then strongly), and the next page starts after the page kept,
//! so no item is returned twice or skipped ([`pages`] tells what each page guarantees).
//!
//! `BatchGetItem` is fenced item by item, as many `GetItem`s: each returned item by its version,
//! each key with no item as an absent item (version 0, so an item the session wrote and a
//! lagging copy lacks, or still has after the session deleted it, makes the batch stale). On
//! escalation, only the tables holding an item the session requires something of are read with
//! `ConsistentRead`. The service sends `UnprocessedKeys` again, waiting
//! [`DynamoAdapter::batch_get_backoff`] and doubling, up to
//! [`DynamoAdapter::batch_get_retries`] times, then fails with [`DynamoError::UnprocessedKeys`];
//! the items come back with the key attributes added to a projection, so that each can be
//! matched to its key.
//!
//! `TransactGetItems` is always strongly consistent: it is reported so
//! ([`DynamoResponse::is_consistent`]) and meets any fence at once, and the versions it read
//! advance the session like any read's.
//!
//! # Scan
//!
//! A `Scan` reads every partition of a table, and no page shows which items it lacks (DynamoDB
//! replicates each partition on its own, so no clock among a page's items vouches for another
//! partition). Every write through the session layer therefore also raises the scope of its whole
//! table ([`DynamoAdapter::table_scope`]) to its clock, and a scan is fenced on that scope alone
//! ([`ryw::fence::Verification::WritesOnly`]):
//!
//! - a scan of a table the session wrote goes to `ConsistentRead` up front and is
//!   `Guaranteed(Escalated)`: every page holds every write the session made to the table (a
//!   scan of a global secondary index, which has no strong reads, is `Pending`);
//! - a scan of a table the session did not write is `Unscoped`: it claims nothing, not even
//!   about items the session only read (an eventually consistent page may lack an item the
//!   session saw elsewhere). The items it does return are still checked against what the session
//!   saw of each, and a returned item older than that makes the scan stale (re-read, escalated).
//!
//! The table scope costs one entry of the session's token per table written.
//!
//! ```no_run
//! use aws_sdk_dynamodb::operation::{
//!     batch_get_item::BatchGetItemInput, put_item::PutItemInput, scan::ScanInput,
//!     transact_get_items::TransactGetItemsInput,
//! };
//! use aws_sdk_dynamodb::types::{AttributeValue, Get, KeysAndAttributes, TransactGetItem};
//! use ryw::{ReadYourWritesLayer, Session, Visibility};
//! use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let adapter = DynamoAdapter::new()
//!     .table(TableSchema::new("posts", "pk"))
//!     .table(TableSchema::new("users", "pk"));
//! let mut db = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(adapter))
//!     .service(DynamoService::new(client));
//! let session = Session::new();
//! let pk = |v: &str| AttributeValue::S(v.into());
//! let put = PutItemInput::builder().table_name("posts").item("pk", pk("post#1"));
//! db.ready().await?.call(session.request(DynamoRequest::from(put))).await?;
//!
//! // Fenced item by item; the posts table is escalated alone if a replica lags.
//! let batch = BatchGetItemInput::builder()
//!     .request_items("posts", KeysAndAttributes::builder().keys([("pk".to_owned(), pk("post#1"))].into()).build()?)
//!     .request_items("users", KeysAndAttributes::builder().keys([("pk".to_owned(), pk("ada"))].into()).build()?);
//! let read = db.ready().await?.call(session.request(DynamoRequest::from(batch))).await?;
//! assert!(read.visibility().is_guaranteed());
//! assert_eq!(read.get_ref().batch_items("posts").len(), 1);
//!
//! // Always strong.
//! let get = Get::builder().table_name("posts").key("pk", pk("post#1")).build()?;
//! let transact = TransactGetItemsInput::builder()
//!     .transact_items(TransactGetItem::builder().get(get).build());
//! let read = db.ready().await?.call(session.request(DynamoRequest::from(transact))).await?;
//! assert!(read.get_ref().is_consistent());
//!
//! // The session wrote `posts`: read strongly. It never wrote `users`: `Unscoped`.
//! let scan = ScanInput::builder().table_name("posts");
//! let read = db.ready().await?.call(session.request(DynamoRequest::from(scan))).await?;
//! assert!(read.visibility().is_guaranteed());
//! let scan = ScanInput::builder().table_name("users");
//! let read = db.ready().await?.call(session.request(DynamoRequest::from(scan))).await?;
//! assert_eq!(read.visibility(), &Visibility::Unscoped);
//! # Ok(()) }
//! ```
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
//!
//! The repository's guide goes further: docs/dynamodb.md (operations, what each guarantees, and the
//! tests that show it).

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
