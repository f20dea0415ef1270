//! Session revocation shared through a MongoDB collection of the application's own.
//!
//! [`MongoRevocations`] is a [`RevocationBackend`] for [`ryw::revocation::SharedRevocationList`]:
//! one document per revoked session (`_id: "session#<32 hex>"`) and one for the epoch (`_id:
//! "epoch"`, raised with `$max`), each with `at` (seconds since the Unix epoch) and `expires` (a
//! date). [`MongoRevocations::ensure_ttl_index`] creates the TTL index on `expires`, so the server
//! deletes entries that no longer matter; `load` skips them before it does. Writes use majority
//! write concern and reads the primary with majority read concern.
//!
//! ```no_run
//! use ryw::revocation::SharedRevocationList;
//! use ryw_mongodb::MongoRevocations;
//! use std::sync::Arc;
//!
//! # async fn run(client: mongodb::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let backend = MongoRevocations::new(&client, "app", "revocations");
//! backend.ensure_ttl_index().await?;
//! let list = Arc::new(SharedRevocationList::new(Arc::new(backend)));
//! list.refresh().await?;
//! tokio::spawn(list.clone().run_refresher());
//! # Ok(()) }
//! ```

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{
    Acknowledgment, CollectionOptions, IndexOptions, ReadConcern, ReadPreference,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use ryw::revocation::{BackendError, BackendFuture, RevocationBackend, RevocationEntry};
use std::fmt;
use std::time::Duration;

/// A [`RevocationBackend`] over a MongoDB collection; see the [module docs](self).
#[derive(Clone)]
pub struct MongoRevocations {
    collection: Collection<Document>,
}

impl fmt::Debug for MongoRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoRevocations")
            .field("collection", &self.collection.namespace())
            .finish()
    }
}

fn failed(e: impl fmt::Display) -> BackendError {
    BackendError(format!("mongodb: {e}"))
}

fn date(secs: u64) -> DateTime {
    DateTime::from_millis(i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX))
}

impl MongoRevocations {
    /// Revocations kept in `database.collection`.
    pub fn new(client: &Client, database: &str, collection: &str) -> Self {
        let options = CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .build();
        MongoRevocations {
            collection: client
                .database(database)
                .collection_with_options(collection, options),
        }
    }

    /// Creates the TTL index on `expires` (idempotent).
    pub async fn ensure_ttl_index(&self) -> Result<(), BackendError> {
        let index = IndexModel::builder()
            .keys(doc! { "expires": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.collection.create_index(index).await.map_err(failed)?;
        Ok(())
    }
}

impl RevocationBackend for MongoRevocations {
    fn record(&self, entry: RevocationEntry, expires_at: u64) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let at = i64::try_from(entry.at()).unwrap_or(i64::MAX);
            let (filter, update) = match entry {
                // The epoch only moves forward, whoever writes it.
                RevocationEntry::StartedBefore { .. } | RevocationEntry::Principal { .. } => (
                    doc! { "_id": entry.key() },
                    doc! { "$max": { "at": at, "expires": date(expires_at) } },
                ),
                _ => (
                    doc! { "_id": entry.key() },
                    doc! { "$set": { "at": at, "expires": date(expires_at) } },
                ),
            };
            self.collection
                .update_one(filter, update)
                .upsert(true)
                .await
                .map_err(failed)?;
            Ok(())
        })
    }

    fn load(&self, now: u64) -> BackendFuture<'_, Vec<RevocationEntry>> {
        Box::pin(async move {
            let mut cursor = self
                .collection
                .find(doc! { "expires": { "$gt": date(now) } })
                .await
                .map_err(failed)?;
            let mut out = Vec::new();
            while cursor.advance().await.map_err(failed)? {
                let d = cursor.deserialize_current().map_err(failed)?;
                let (Ok(id), Ok(at)) = (d.get_str("_id"), d.get_i64("at")) else {
                    continue;
                };
                out.extend(RevocationEntry::from_key(
                    id,
                    u64::try_from(at).unwrap_or(0),
                ));
            }
            Ok(out)
        })
    }
}
