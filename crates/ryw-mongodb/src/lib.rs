//! MongoDB adapter for [ryw]: causal sessions whose cluster time and operation time travel
//! across processes in the session token.
//!
//! Per request, [`MongoService`] starts a causally consistent `ClientSession`, advances it to the
//! cluster time (the server-signed `$clusterTime` document, kept whole) and the operation time the
//! ryw session carries, so the driver sends `readConcern.afterClusterTime`; after the operation it
//! hands back the session's new `operationTime` and `$clusterTime`, which the layer records. A
//! second process given only the token reads its own writes.
//!
//! Reads and writes use majority read and write concern: causal sessions do not keep their
//! guarantees at `w: 1` or read concern `local` (a write acknowledged by one node can roll back,
//! and a read of local data can see what then rolls back). Reads may go to secondaries (the read
//! preference is configurable, secondary-preferred by default): the fence makes that safe. A read
//! the session has a requirement on always waits on the server for the operation time
//! (`afterClusterTime`), whatever the fence configuration's first strategy, unless it is
//! [`ryw::FenceConfig::strong`] (the primary): a reply's `operationTime` is computed as the reply
//! is built and can be later than the snapshot the read used, so it never verifies a read after
//! the fact ([`ryw::fence::Verification::ServerSideOnly`]). The server wait rests on the node
//! honouring `afterClusterTime` and applying its oplog in order.
//!
//! The adapter is given once, to the layer: [`MongoAdapter`] (for [`Document`]s, or
//! [`MongoAdapter::documents`] for a typed collection) attaches its configuration to every request
//! ([`ryw::StoreAdapter::prepare`]), and [`MongoService`] is built from the driver's client, the
//! database and the collection alone. A request sent straight to the service, without the layer,
//! is sent as it is: no session times, no write id, the client's read preference.
//!
//! [`Document`]: mongodb::bson::Document
//!
//! # Idempotency across processes
//!
//! Within a process the driver retries a retryable write once. Across processes ryw keys writes
//! by their `WriteId`: an inserted document without `_id` gets `_id: "<write id>"` (insert_many:
//! `"<write id>/<index>"`), so a replay meets a duplicate key on its own id and is reported as
//! applied; an update or find-one-and-update appends its write id to the bounded list
//! `ryw_write_ids` of the documents it changes (`$push` with `$slice`, the last
//! [`RECENT_WRITE_IDS`]) and excludes documents whose list already holds it, so a replay changes
//! nothing more, even when other sessions updated the document in between, and is reported as
//! applied only when a document holds that very id. Write ids are unique per write
//! ([`ryw::WriteId`]), so two continuations of one token never take each other's write for their
//! own.
//!
//! What a replay cannot recognise, precisely: a replace starts the list afresh with its own id, so
//! an update whose response was lost, followed by another session's *replace* of the same
//! document, then by the update's retry, applies the update again (it reads as a new update of the
//! replaced document); likewise when [`RECENT_WRITE_IDS`] or more updates reached the document in
//! between. A `delete_one` by `_id` equality is idempotent as it is; one by any other filter
//! (including `{_id: {$in: [..]}}`) is never replayed; a `delete_many` replay deletes documents
//! that came to match its filter in between.
//!
//! # Sessions' records
//!
//! [`MongoRecordStore`] keeps sessions' records ([`ryw::record`]) in a collection: the exact
//! entries a session coarsened out of its token, for the stores with one scope per item or
//! partition that the session also uses.
//!
//! # Example
//!
//! ```no_run
//! use mongodb::bson::doc;
//! use ryw::{FenceConfig, ReadYourWritesLayer, Session};
//! use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run(client: mongodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let adapter = MongoAdapter::new();
//! let mut posts = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(adapter).fence(FenceConfig::server_wait()))
//!     .service(MongoService::new(&client, "app", "posts"));
//!
//! let session = Session::new();
//! let insert = MongoRequest::insert_one(doc! { "title": "hello" });
//! posts.ready().await?.call(session.request(insert)).await?;
//! let find = MongoRequest::find(doc! { "title": "hello" });
//! let read = posts.ready().await?.call(session.request(find)).await?;
//! assert_eq!(read.get_ref().documents().len(), 1);
//! # Ok(()) }
//! ```
//!
//! [ryw]: https://docs.rs/ryw
//!
//! The repository's guide goes further: docs/mongodb.md (operations, replays, and the tests that
//! show them).

mod adapter;
pub mod error;
#[cfg(feature = "outbox")]
mod outbox;
pub mod record;
mod request;
pub mod revocation;
mod service;

pub use adapter::{timestamp_of, version_of, MongoAdapter, STORE_ID};
pub use error::MongoError;
pub use record::MongoRecordStore;
pub use request::{
    FindOptions, MongoOperation, MongoOutput, MongoRequest, MongoResponse, RECENT_WRITE_IDS,
};
pub use revocation::MongoRevocations;
pub use service::{MongoFuture, MongoService};
