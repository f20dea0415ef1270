//! Sessions' records ([`ryw::record`]) in a MongoDB collection of the application's own:
//! [`MongoRecordStore`].

use crate::error::MongoError;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::{
    IndexOptions, ReadConcern, ReadPreference, ReturnDocument, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use ryw::record::{Record, RecordError, RecordFuture, RecordStore};
use ryw::version::{Entry, ScopeKey, Version};
use ryw::SessionId;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a record lives after its last append unless configured otherwise: 30 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Server error codes of an update that cannot apply to the stored document: `TypeMismatch`
/// (`$inc` of a version that is not a number) and `PathNotViable` (`$max` under `entries` that is
/// not a document).
const DAMAGED_CODES: &[i32] = &[14, 28];

/// Why [`MongoRecordStore`] refused an append; it is the source of the
/// [`RecordError::Unavailable`] the append returns, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordRefused {
    /// An entry's version does not fit an Int64.
    #[error("version {0} does not fit a MongoDB Int64")]
    VersionTooLarge(u64),
}

/// A [`RecordStore`] over a MongoDB collection: one document per session, shared by every app
/// instance, holding the exact entries a session coarsened out of its token so that another
/// instance fences reads of those scopes on their exact versions instead of the store's horizon.
///
/// The MongoDB adapter versions a whole deployment as one scope, which a token always has room
/// for: what a record in MongoDB keeps are the scopes of a session's other stores, those with
/// one scope per item or partition (DynamoDB, ScyllaDB), for an application that keeps its
/// sessions' records in the MongoDB deployment it already runs.
///
/// # Collection layout
///
/// ```text
/// {
///   _id: "<the session id, 32 hex digits>",       // SessionId's Display
///   version: Int64,                                // 1 after the first append, one more per append
///   entries: { "<16 hex digits>": Int64, ... },    // ScopeKey::to_bits, lower case -> version
///   expires: DateTime                              // refreshed by every append
/// }
/// ```
///
/// Any collection will do; [`MongoRecordStore::ensure_ttl_index`] creates the TTL index on
/// `expires` so the server deletes records [`MongoRecordStore::ttl`] after their last append
/// (default 30 days).
///
/// # How an append stays atomic
///
/// One `findAndModify` on the filter `{_id, version: {$gte: 1}, entries: {$type: "object"}}`:
/// `$max` on `entries.<scope>` for every entry of the batch, `$inc: {version: 1}`,
/// `$set: {expires}`, returning the new `version`. A session's first append finds no record and
/// inserts it (`version: 1`, the batch as its entries); when another instance's first append
/// inserted it meanwhile (a duplicate key), it updates that one. MongoDB applies an update to one
/// document atomically, so concurrent appends lose nothing, each gets its own version, and the
/// record at version `v` holds every entry of every append numbered `v` or less.
/// Appends use majority write concern; loads read the primary with majority read concern. A load
/// that still misses an acknowledged append (a primary just elected) returns an older version,
/// which the session does not trust: the horizon applies, never a weaker fence.
///
/// Versions are stored as Int64: an entry whose version exceeds `i64::MAX` is refused
/// ([`RecordRefused::VersionTooLarge`]) and the append writes nothing (the session keeps the
/// horizon rule for its coarsened scopes). Item versions, write timestamps and MongoDB cluster
/// times before 2038 all fit.
///
/// # Size
///
/// A document is at most 16 MiB; an entry takes 26 bytes, so a record holds about 600,000. An
/// append the server refuses (the document would grow past the limit) fails, writes nothing,
/// and the session falls back to the horizon rule.
///
/// # Cost
///
/// - An append (one per request that coarsened entries, [`ryw::record::SessionRecords::flush`]):
///   one `findAndModify`, acknowledged by a majority (a session's first: one more, the insert).
/// - A load: one `find` on the primary per session, per app instance, per record version
///   ([`ryw::record::SessionRecords`] caches what it loaded).
///
/// Loads and appends sit on the request path: give the client a server selection timeout to
/// match (`serverSelectionTimeoutMS`; the driver's default is 30 s). An append or load that fails
/// costs a session nothing but the strong path (or a server wait on its store horizon) on its
/// coarsened scopes.
///
/// # Expiry
///
/// A record expires [`MongoRecordStore::ttl`] after its last append (default 30 days; loads do
/// not extend it), once the TTL index exists. A token that names a deleted record is not trusted
/// (the horizon applies), but a new record of the same session counts from version 1 again:
/// choose a TTL longer than a session's token stays usable.
///
/// A stored record that does not decode (`version` or `entries` missing or of another type, a
/// key that is not 16 lower-case hex digits, a negative number) is [`RecordError::Damaged`]:
/// never trusted by a load. An append updates only a document whose `version` is a number of at
/// least 1 and whose `entries` is a document, and never replaces one, so a damaged record never
/// comes to look valid.
///
/// # Example
///
/// ```no_run
/// use ryw::record::SessionRecords;
/// use ryw_mongodb::MongoRecordStore;
/// use std::sync::Arc;
///
/// # async fn run(client: mongodb::Client, session: ryw::Session)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// let store = MongoRecordStore::new(&client, "app", "session_records");
/// store.ensure_ttl_index().await?; // idempotent
/// // One per app instance.
/// let records = SessionRecords::new(Arc::new(store));
///
/// // Per request: the record the session's token names, then the request, then its batch.
/// records.load(&session).await;
/// // ... the request, through `ryw::ReadYourWritesLayer` ...
/// records.flush(&session).await;
/// let token = session.token().encode()?;
/// # let _ = token; Ok(()) }
/// ```
#[derive(Clone)]
pub struct MongoRecordStore {
    collection: Collection<Document>,
    ttl: Duration,
}

impl fmt::Debug for MongoRecordStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoRecordStore")
            .field("collection", &self.collection.namespace())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn unavailable(e: impl Into<ryw::error::BoxError>) -> RecordError {
    RecordError::Unavailable(e.into())
}

fn failed(e: mongodb::error::Error) -> RecordError {
    classify(MongoError::from_driver(e))
}

fn classify(e: MongoError) -> RecordError {
    match e {
        MongoError::Command { code, message, .. } if DAMAGED_CODES.contains(&code) => {
            RecordError::Damaged(format!("mongodb record: {message}"))
        }
        other => unavailable(other),
    }
}

impl MongoRecordStore {
    /// Records kept in `database.collection`.
    pub fn new(client: &Client, database: &str, collection: &str) -> Self {
        Self::with_collection(client.database(database).collection(collection))
    }

    /// Records kept in `collection` (whatever its own concerns: every operation sets majority
    /// concerns, and loads the primary).
    pub fn with_collection(collection: Collection<Document>) -> Self {
        MongoRecordStore {
            collection,
            ttl: DEFAULT_TTL,
        }
    }

    /// How long a record lives after its last append (default [`DEFAULT_TTL`]), with the TTL
    /// index of [`MongoRecordStore::ensure_ttl_index`]. Longer than a session's token stays
    /// usable: see the [expiry](MongoRecordStore#expiry).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The collection.
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// Creates the TTL index on `expires` (idempotent).
    pub async fn ensure_ttl_index(&self) -> Result<(), RecordError> {
        let index = IndexModel::builder()
            .keys(doc! { "expires": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.collection.create_index(index).await.map_err(failed)?;
        Ok(())
    }

    fn expires(&self) -> DateTime {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl);
        DateTime::from_millis(i64::try_from(at.as_millis()).unwrap_or(i64::MAX))
    }

    async fn append_batch(&self, session: SessionId, batch: &[Entry]) -> Result<u64, RecordError> {
        let highest = highest(batch)?;
        let expires = self.expires();
        let id = session.to_string();
        // Only a record with a valid version and entries is updated.
        let filter = doc! {
            "_id": &id,
            "version": { "$gte": 1_i64 },
            "entries": { "$type": "object" },
        };
        let update = update(&highest, expires);
        for _ in 0..3 {
            let updated = self
                .collection
                .find_one_and_update(filter.clone(), update.clone())
                .return_document(ReturnDocument::After)
                .projection(doc! { "version": 1 })
                .write_concern(WriteConcern::majority())
                .await
                .map_err(failed)?;
            if let Some(after) = updated {
                return version(&after);
            }
            // No record: the session's first append inserts it at version 1.
            let record = doc! {
                "_id": &id,
                "version": 1_i64,
                "entries": highest
                    .iter()
                    .map(|(scope, v)| (scope.clone(), Bson::Int64(*v)))
                    .collect::<Document>(),
                "expires": expires,
            };
            let inserted = self
                .collection
                .insert_one(record)
                .write_concern(WriteConcern::majority())
                .await
                .map_err(MongoError::from_driver);
            match inserted {
                Ok(_) => return Ok(1),
                // Another instance's first append inserted it meanwhile: update that one.
                Err(e) if duplicate_key(&e) => continue,
                Err(e) => return Err(classify(e)),
            }
        }
        // The update never matches and the insert always meets a duplicate key: a document of
        // that id that is no record. It is left as it is.
        Err(damaged("a document of the session is not a record"))
    }
}

/// The largest version of each scope of a batch, by the scope's 16 hex digits, as Int64.
fn highest(batch: &[Entry]) -> Result<BTreeMap<String, i64>, RecordError> {
    let mut highest = BTreeMap::new();
    for e in batch {
        let v = i64::try_from(e.version.get())
            .map_err(|_| unavailable(RecordRefused::VersionTooLarge(e.version.get())))?;
        let slot = highest.entry(e.scope.to_hex()).or_insert(v);
        *slot = (*slot).max(v);
    }
    Ok(highest)
}

/// The update of one append to an existing record.
fn update(highest: &BTreeMap<String, i64>, expires: DateTime) -> Document {
    let mut update = doc! {
        "$inc": { "version": 1_i64 },
        "$set": { "expires": expires },
    };
    if !highest.is_empty() {
        let max: Document = highest
            .iter()
            .map(|(scope, v)| (format!("entries.{scope}"), Bson::Int64(*v)))
            .collect();
        update.insert("$max", max);
    }
    update
}

/// A duplicate key, as `findAndModify` reports it (a command error) or a write reports it.
fn duplicate_key(e: &MongoError) -> bool {
    e.is_duplicate_key() || matches!(e, MongoError::Command { code: 11000, .. })
}

fn damaged(what: &str) -> RecordError {
    RecordError::Damaged(format!("mongodb record: {what}"))
}

/// A non-negative integer (Int64, or Int32 as another writer may store a small one).
fn non_negative(value: &Bson) -> Option<u64> {
    match value {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn version(doc: &Document) -> Result<u64, RecordError> {
    doc.get("version")
        .ok_or_else(|| damaged("no version"))
        .and_then(|v| non_negative(v).ok_or_else(|| damaged("the version is not an integer")))
        .and_then(|v| {
            (v > 0)
                .then_some(v)
                .ok_or_else(|| damaged("the version is not positive"))
        })
}

/// A stored record, or [`RecordError::Damaged`].
fn decode(doc: &Document) -> Result<Record, RecordError> {
    let version = version(doc)?;
    let entries = match doc.get("entries") {
        Some(Bson::Document(entries)) => entries,
        Some(_) => return Err(damaged("the entries are not a document")),
        None => return Err(damaged("no entries")),
    };
    let entries = entries
        .iter()
        .map(|(key, value)| {
            let scope =
                ScopeKey::parse_hex(key).ok_or_else(|| damaged("an entry's key is not a scope"))?;
            let version = non_negative(value)
                .ok_or_else(|| damaged("an entry's version is not a non-negative integer"))?;
            Ok(Entry {
                scope,
                version: Version::new(version),
            })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(Record { version, entries })
}

impl RecordStore for MongoRecordStore {
    fn append<'a>(&'a self, session: SessionId, entries: &'a [Entry]) -> RecordFuture<'a, u64> {
        Box::pin(self.append_batch(session, entries))
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<Record>> {
        Box::pin(async move {
            let found = self
                .collection
                .find_one(doc! { "_id": session.to_string() })
                .projection(doc! { "version": 1, "entries": 1 })
                .read_concern(ReadConcern::majority())
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .await
                .map_err(failed)?;
            found.as_ref().map(decode).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::StoreId;

    #[test]
    fn an_append_is_one_update_of_max_inc_and_set() {
        let expires = DateTime::from_millis(1_000);
        let scope = ScopeKey::new(StoreId::new(2), b"k");
        let batch = [
            Entry {
                scope,
                version: Version::new(5),
            },
            Entry {
                scope,
                version: Version::new(9),
            },
        ];
        let appended = update(&highest(&batch).unwrap(), expires);
        assert_eq!(
            appended.get_document("$max").unwrap(),
            &doc! { format!("entries.{:016x}", scope.to_bits()): 9_i64 }
        );
        assert_eq!(
            appended.get_document("$inc").unwrap(),
            &doc! { "version": 1_i64 }
        );
        assert_eq!(
            appended.get_document("$set").unwrap(),
            &doc! { "expires": expires }
        );
        let empty = update(&highest(&[]).unwrap(), expires);
        assert!(!empty.contains_key("$max"));
        let too_large = [Entry {
            scope,
            version: Version::new(u64::MAX),
        }];
        assert!(matches!(
            highest(&too_large),
            Err(RecordError::Unavailable(_))
        ));
    }

    #[test]
    fn anything_that_does_not_decode_is_damaged() {
        let key = format!("{:016x}", ScopeKey::new(StoreId::new(2), b"k").to_bits());
        let good = doc! { "version": 2_i64, "entries": { &key: 7_i64 } };
        let record = decode(&good).unwrap();
        assert_eq!(record.version, 2);
        assert_eq!(record.entries[0].version, Version::new(7));
        let cases = [
            doc! { "entries": { &key: 7_i64 } },
            doc! { "version": "2", "entries": { &key: 7_i64 } },
            doc! { "version": 0_i64, "entries": { &key: 7_i64 } },
            doc! { "version": -3_i64, "entries": { &key: 7_i64 } },
            doc! { "version": 2.0, "entries": { &key: 7_i64 } },
            doc! { "version": 2_i64 },
            doc! { "version": 2_i64, "entries": "garbage" },
            doc! { "version": 2_i64, "entries": { "zz": 7_i64 } },
            doc! { "version": 2_i64, "entries": { key.to_uppercase(): 7_i64 } },
            doc! { "version": 2_i64, "entries": { &key: -7_i64 } },
            doc! { "version": 2_i64, "entries": { &key: "7" } },
        ];
        for case in cases {
            assert!(
                matches!(decode(&case), Err(RecordError::Damaged(_))),
                "{case:?}"
            );
        }
    }
}
