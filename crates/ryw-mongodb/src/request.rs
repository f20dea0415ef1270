//! What goes to [`MongoService`](crate::MongoService) and comes back: the operation with what the
//! session layer stamped on it, the output with the session's new times, and the configuration
//! the adapter hands the service with each request.

use mongodb::bson::{Bson, Document, Timestamp};
use mongodb::options::ReadPreference;
use mongodb::ClusterTime;
use ryw::{ScopeKey, StoreId, WriteId};
use std::sync::Arc;

/// How many recent write ids a document keeps (`$push` with `$slice`, in the list
/// `ryw_write_ids`): a retry is recognised as applied as long as fewer updates than this, and no
/// replacement, reached the document since.
pub const RECENT_WRITE_IDS: usize = 8;

/// The field of a document that holds its recent write ids.
pub(crate) const WRITE_ID_FIELD: &str = "ryw_write_ids";

/// The adapter's configuration, which the adapter attaches to every request
/// ([`StoreAdapter::prepare`](ryw::StoreAdapter::prepare)) and the service reads from it.
#[derive(Clone, Debug)]
pub(crate) struct MongoConfig {
    pub(crate) store: StoreId,
    pub(crate) scope: ScopeKey,
    pub(crate) read_preference: ReadPreference,
}

/// One MongoDB operation, with typed documents (`T`) as in the driver.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MongoOperation<T> {
    /// `find`.
    Find {
        /// The filter.
        filter: Document,
        /// Sort, skip, limit and projection.
        options: FindOptions,
    },
    /// `find_one`.
    FindOne {
        /// The filter.
        filter: Document,
        /// Sort, skip and projection (a limit is refused: `find_one` returns one document).
        options: FindOptions,
    },
    /// `aggregate` (a read: pipelines with `$out` or `$merge` are not supported).
    Aggregate {
        /// The pipeline.
        pipeline: Vec<Document>,
    },
    /// `insert_one`.
    InsertOne {
        /// The document.
        document: T,
    },
    /// `insert_many` (unordered, so a replay inserts what is missing).
    InsertMany {
        /// The documents.
        documents: Vec<T>,
    },
    /// `update_one` (an update document with operators).
    UpdateOne {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
        /// Inserts a document when none matches.
        upsert: bool,
    },
    /// `update_many`.
    UpdateMany {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
        /// Inserts a document when none matches.
        upsert: bool,
    },
    /// `replace_one`.
    ReplaceOne {
        /// The filter.
        filter: Document,
        /// The replacement.
        replacement: T,
        /// Inserts the replacement when no document matches.
        upsert: bool,
    },
    /// `delete_one`.
    DeleteOne {
        /// The filter.
        filter: Document,
    },
    /// `delete_many`.
    DeleteMany {
        /// The filter.
        filter: Document,
    },
    /// `find_one_and_update` (returns the document after the update).
    FindOneAndUpdate {
        /// The filter.
        filter: Document,
        /// The update.
        update: Document,
    },
    /// `bulk_write`, ordered: `insert_one`, `update_one`, `update_many`, `replace_one`,
    /// `delete_one` and `delete_many` on this collection, in one command (MongoDB 8.0 and later),
    /// stopping at the first that fails.
    BulkWrite {
        /// The writes, in order.
        writes: Vec<MongoOperation<T>>,
    },
}

/// The options of a `find` or a `find_one`, set through [`MongoRequest::sort`],
/// [`skip`](MongoRequest::skip), [`limit`](MongoRequest::limit) and
/// [`projection`](MongoRequest::projection).
///
/// None of them changes what a read guarantees: MongoDB reads are fenced by the server
/// (`afterClusterTime`, or the primary), not by fields of the documents, so a projection may leave
/// out any field, `ryw_write_ids` included.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FindOptions {
    /// The sort document (`{ "at": -1 }`).
    pub sort: Option<Document>,
    /// Documents skipped.
    pub skip: Option<u64>,
    /// At most this many documents (`find` only).
    pub limit: Option<i64>,
    /// The projection document (`{ "title": 1 }`).
    pub projection: Option<Document>,
}

/// A request to [`MongoService`](crate::MongoService): the operation plus what the session layer
/// stamped on it.
///
/// Options follow the constructor:
///
/// ```
/// use mongodb::bson::{doc, Document};
/// use ryw_mongodb::MongoRequest;
///
/// // The 20 newest posts of a thread, titles only.
/// let page = MongoRequest::<Document>::find(doc! { "thread": 7 })
///     .sort(doc! { "at": -1 })
///     .limit(20)
///     .projection(doc! { "title": 1 });
/// // Counts a visit, creating the counter the first time.
/// let visit = MongoRequest::<Document>::update_one(doc! { "_id": "home" }, doc! { "$inc": { "n": 1 } })
///     .upsert();
/// ```
///
/// An option the operation does not take (a limit on an update, an upsert on a delete) is refused
/// when the request is sent: [`MongoError::Invalid`](crate::MongoError::Invalid), nothing sent.
#[derive(Clone, Debug)]
pub struct MongoRequest<T> {
    pub(crate) operation: MongoOperation<T>,
    /// An option the operation does not take, refused when sent.
    pub(crate) refused: Option<&'static str>,
    pub(crate) write_id: Option<WriteId>,
    pub(crate) after: Option<Timestamp>,
    pub(crate) cluster_time: Option<Arc<[u8]>>,
    pub(crate) primary: bool,
    /// Sent again after an attempt that may have applied.
    pub(crate) replay: bool,
    /// The adapter's configuration, attached by the session layer
    /// ([`StoreAdapter::prepare`](ryw::StoreAdapter::prepare)); `None` for a request that did
    /// not go through it, which is sent as it is.
    pub(crate) config: Option<Arc<MongoConfig>>,
}

impl<T> From<MongoOperation<T>> for MongoRequest<T> {
    fn from(operation: MongoOperation<T>) -> Self {
        MongoRequest {
            operation,
            refused: None,
            write_id: None,
            after: None,
            cluster_time: None,
            primary: false,
            replay: false,
            config: None,
        }
    }
}

impl<T> MongoRequest<T> {
    /// `find(filter)`; options: [`sort`](Self::sort), [`skip`](Self::skip),
    /// [`limit`](Self::limit), [`projection`](Self::projection).
    pub fn find(filter: Document) -> Self {
        MongoOperation::Find {
            filter,
            options: FindOptions::default(),
        }
        .into()
    }
    /// `find_one(filter)`; options: [`sort`](Self::sort), [`skip`](Self::skip),
    /// [`projection`](Self::projection).
    pub fn find_one(filter: Document) -> Self {
        MongoOperation::FindOne {
            filter,
            options: FindOptions::default(),
        }
        .into()
    }
    /// `aggregate(pipeline)`.
    pub fn aggregate(pipeline: Vec<Document>) -> Self {
        MongoOperation::Aggregate { pipeline }.into()
    }
    /// `insert_one(document)`.
    pub fn insert_one(document: T) -> Self {
        MongoOperation::InsertOne { document }.into()
    }
    /// `insert_many(documents)`.
    pub fn insert_many(documents: Vec<T>) -> Self {
        MongoOperation::InsertMany { documents }.into()
    }
    /// `update_one(filter, update)`; [`upsert`](Self::upsert) inserts a document when none
    /// matches.
    pub fn update_one(filter: Document, update: Document) -> Self {
        MongoOperation::UpdateOne {
            filter,
            update,
            upsert: false,
        }
        .into()
    }
    /// `update_many(filter, update)`; [`upsert`](Self::upsert) inserts a document when none
    /// matches.
    pub fn update_many(filter: Document, update: Document) -> Self {
        MongoOperation::UpdateMany {
            filter,
            update,
            upsert: false,
        }
        .into()
    }
    /// `replace_one(filter, replacement)`; [`upsert`](Self::upsert) inserts the replacement when
    /// no document matches.
    pub fn replace_one(filter: Document, replacement: T) -> Self {
        MongoOperation::ReplaceOne {
            filter,
            replacement,
            upsert: false,
        }
        .into()
    }
    /// `delete_one(filter)`.
    pub fn delete_one(filter: Document) -> Self {
        MongoOperation::DeleteOne { filter }.into()
    }
    /// `delete_many(filter)`.
    pub fn delete_many(filter: Document) -> Self {
        MongoOperation::DeleteMany { filter }.into()
    }
    /// `find_one_and_update(filter, update)`.
    pub fn find_one_and_update(filter: Document, update: Document) -> Self {
        MongoOperation::FindOneAndUpdate { filter, update }.into()
    }
    /// `bulk_write(writes)`: the writes in one ordered `bulkWrite` command (MongoDB 8.0 and
    /// later), each applied once as if sent alone, its result at its index in
    /// [`MongoOutput::Bulk`].
    ///
    /// It takes `insert_one`, `update_one`, `update_many`, `replace_one`, `delete_one` and
    /// `delete_many` requests (with their upserts); any other is refused when sent
    /// ([`MongoError::Invalid`](crate::MongoError::Invalid), nothing sent). A write that fails
    /// stops the rest: when it is the first, the error is its own and nothing applied; after
    /// writes that applied, it is [`MongoError::Unresolved`](crate::MongoError::Unresolved)
    /// (the layer's `Error::Ambiguous`), naming the write that failed. A replay after a lost
    /// answer resolves each write as its own replay would, one command each. A `delete_one`
    /// whose filter is not by `_id` makes the whole bulk unreplayable, as alone.
    pub fn bulk_write(writes: impl IntoIterator<Item = MongoRequest<T>>) -> Self {
        let mut refused = None;
        let writes: Vec<_> = writes
            .into_iter()
            .map(|w| {
                refused = refused.or(w.refused);
                w.operation
            })
            .collect();
        refused = refused.or(bulk_refusal(&writes));
        let mut request: Self = MongoOperation::BulkWrite { writes }.into();
        request.refused = refused;
        request
    }

    /// Inserts a document when the filter matches none (`update_one`, `update_many`,
    /// `replace_one`): the filter's equality fields and the update's result, or the replacement
    /// (with the filter's `_id`). The inserted `_id` is in [`MongoOutput::Updated`]'s `upserted`.
    ///
    /// Applied once like every write. With a filter by `_id` equality, a replay after a lost
    /// answer finds the document by the write id it carries; a replay that finds neither that
    /// document nor any the filter matches reports
    /// [`MongoError::Unresolved`](crate::MongoError::Unresolved) (the layer's `Error::Ambiguous`)
    /// and inserts nothing: the first attempt may have inserted a document that another session
    /// deleted since. With any other filter the upsert is never replayed (a first attempt
    /// arriving after its replay would insert a second document): an ambiguous failure is the
    /// layer's `Error::Ambiguous`.
    pub fn upsert(mut self) -> Self {
        match &mut self.operation {
            MongoOperation::UpdateOne { upsert, .. }
            | MongoOperation::UpdateMany { upsert, .. }
            | MongoOperation::ReplaceOne { upsert, .. } => *upsert = true,
            _ => self.refuse("upsert applies to update_one, update_many and replace_one"),
        }
        self
    }

    /// Sorts the documents of a `find` or `find_one` (`doc! { "at": -1 }`).
    pub fn sort(mut self, sort: Document) -> Self {
        match self.find_options() {
            Some(o) => o.sort = Some(sort),
            None => self.refuse("sort applies to find and find_one"),
        }
        self
    }

    /// Skips this many documents of a `find` or `find_one`.
    pub fn skip(mut self, skip: u64) -> Self {
        match self.find_options() {
            Some(o) => o.skip = Some(skip),
            None => self.refuse("skip applies to find and find_one"),
        }
        self
    }

    /// Returns at most this many documents of a `find` (a negative limit is MongoDB's: one batch
    /// of at most that many).
    pub fn limit(mut self, limit: i64) -> Self {
        match &mut self.operation {
            MongoOperation::Find { options, .. } => options.limit = Some(limit),
            _ => self.refuse("limit applies to find"),
        }
        self
    }

    /// Returns only these fields of a `find` or `find_one` (`doc! { "title": 1 }`). Reads stay
    /// fenced: the fence does not read fields of the documents.
    pub fn projection(mut self, projection: Document) -> Self {
        match self.find_options() {
            Some(o) => o.projection = Some(projection),
            None => self.refuse("projection applies to find and find_one"),
        }
        self
    }

    fn find_options(&mut self) -> Option<&mut FindOptions> {
        match &mut self.operation {
            MongoOperation::Find { options, .. } | MongoOperation::FindOne { options, .. } => {
                Some(options)
            }
            _ => None,
        }
    }

    fn refuse(&mut self, why: &'static str) {
        self.refused.get_or_insert(why);
    }

    /// The operation.
    pub fn operation(&self) -> &MongoOperation<T> {
        &self.operation
    }

    /// The write id stamped by the session layer.
    pub fn write_id(&self) -> Option<WriteId> {
        self.write_id
    }

    /// The operation time the read waits for (`afterClusterTime`), if fenced by server wait.
    pub fn after_cluster_time(&self) -> Option<Timestamp> {
        self.after
    }
}

impl<T> MongoOperation<T> {
    /// The command's name (`find`, `insert_one`, ...), as `db.operation.name`.
    pub fn name(&self) -> &'static str {
        match self {
            MongoOperation::Find { .. } => "find",
            MongoOperation::FindOne { .. } => "find_one",
            MongoOperation::Aggregate { .. } => "aggregate",
            MongoOperation::InsertOne { .. } => "insert_one",
            MongoOperation::InsertMany { .. } => "insert_many",
            MongoOperation::UpdateOne { .. } => "update_one",
            MongoOperation::UpdateMany { .. } => "update_many",
            MongoOperation::ReplaceOne { .. } => "replace_one",
            MongoOperation::DeleteOne { .. } => "delete_one",
            MongoOperation::DeleteMany { .. } => "delete_many",
            MongoOperation::FindOneAndUpdate { .. } => "find_one_and_update",
            MongoOperation::BulkWrite { .. } => "bulk_write",
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MongoOutput<T> {
    /// `find` (all batches).
    Documents(Vec<T>),
    /// `find_one`, `find_one_and_update`.
    Document(Option<T>),
    /// `aggregate`.
    Aggregated(Vec<Document>),
    /// `insert_one`, `insert_many`: the ids.
    Inserted(Vec<Bson>),
    /// Updates and replaces.
    #[non_exhaustive]
    Updated {
        /// Documents matched.
        matched: u64,
        /// Documents modified.
        modified: u64,
        /// The `_id` of the document an upsert inserted (`None` when it matched one, and for a
        /// replay that found its first attempt's document: whether that attempt inserted or
        /// updated it is not known).
        upserted: Option<Bson>,
    },
    /// Deletes.
    Deleted(u64),
    /// `bulk_write`: each write's output, in order.
    Bulk(Vec<MongoOutput<T>>),
}

/// A response of [`MongoService`](crate::MongoService): the output plus the session's new times.
#[derive(Clone, Debug)]
pub struct MongoResponse<T> {
    pub(crate) output: MongoOutput<T>,
    pub(crate) operation_time: Option<Timestamp>,
    pub(crate) cluster_time: Option<ClusterTime>,
    pub(crate) replayed: bool,
}

impl<T> MongoResponse<T> {
    /// The output.
    pub fn output(&self) -> &MongoOutput<T> {
        &self.output
    }

    /// Takes the output out.
    pub fn into_output(self) -> MongoOutput<T> {
        self.output
    }

    /// The documents a read returned: every one of a `find`, the one of a `find_one` or a
    /// `find_one_and_update` (none when nothing matched), none for other operations.
    pub fn documents(&self) -> &[T] {
        match &self.output {
            MongoOutput::Documents(d) => d,
            MongoOutput::Document(Some(d)) => std::slice::from_ref(d),
            _ => &[],
        }
    }

    /// The operation time the server reported.
    pub fn operation_time(&self) -> Option<Timestamp> {
        self.operation_time
    }

    /// The cluster time the server reported (signed).
    pub fn cluster_time(&self) -> Option<&ClusterTime> {
        self.cluster_time.as_ref()
    }

    /// True when a replayed write found that its earlier attempt had applied.
    pub fn was_replayed(&self) -> bool {
        self.replayed
    }
}

/// Why a `bulk_write` of `writes` is refused: it takes `insert_one`, `update_one`,
/// `update_many`, `replace_one`, `delete_one` and `delete_many`.
pub(crate) fn bulk_refusal<T>(writes: &[MongoOperation<T>]) -> Option<&'static str> {
    let takes = |w: &MongoOperation<T>| {
        matches!(
            w,
            MongoOperation::InsertOne { .. }
                | MongoOperation::UpdateOne { .. }
                | MongoOperation::UpdateMany { .. }
                | MongoOperation::ReplaceOne { .. }
                | MongoOperation::DeleteOne { .. }
                | MongoOperation::DeleteMany { .. }
        )
    };
    (!writes.iter().all(takes)).then_some(
        "bulk_write takes insert_one, update_one, update_many, replace_one, delete_one and \
         delete_many",
    )
}

/// Whether `filter` names one document by `_id` equality (`{_id: 7}`, `{_id: {a: 1}}`), not by an
/// operator that may match several (`{_id: {$in: [..]}}`, `{_id: {$gt: ..}}`). Only such a
/// filter lets a replay tell the document its first attempt changed from another.
pub(crate) fn names_one_by_id(filter: &Document) -> bool {
    match filter.get("_id") {
        Some(Bson::Document(d)) => !d.keys().any(|k| k.starts_with('$')),
        // A regular expression matches every `_id` it fits; an array (which no `_id` can be) is
        // not taken for one either.
        Some(Bson::RegularExpression(_) | Bson::Array(_)) => false,
        Some(_) => true,
        None => false,
    }
}

/// Whether `operation` is an upsert whose filter does not name one document by `_id`: its first
/// attempt, arriving late after a replay, would insert a second document (the replay's document
/// holds the write id, so the first attempt's "not yet" filter matches nothing), so it is never
/// replayed.
pub(crate) fn upserts_by_other_than_id<T>(operation: &MongoOperation<T>) -> bool {
    match operation {
        MongoOperation::UpdateOne {
            filter,
            upsert: true,
            ..
        }
        | MongoOperation::UpdateMany {
            filter,
            upsert: true,
            ..
        }
        | MongoOperation::ReplaceOne {
            filter,
            upsert: true,
            ..
        } => !names_one_by_id(filter),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId};
    use ryw::SessionId;

    fn response(output: MongoOutput<Document>) -> MongoResponse<Document> {
        MongoResponse {
            output,
            operation_time: None,
            cluster_time: None,
            replayed: false,
        }
    }

    #[test]
    fn documents_gives_what_a_find_or_a_find_one_returned() {
        let a = doc! { "_id": "a" };
        let b = doc! { "_id": "b" };
        let found = response(MongoOutput::Documents(vec![a.clone(), b.clone()]));
        assert_eq!(found.documents(), [a.clone(), b]);
        assert_eq!(
            response(MongoOutput::Document(Some(a.clone()))).documents(),
            [a]
        );
        assert!(response(MongoOutput::Document(None)).documents().is_empty());
        assert!(response(MongoOutput::Deleted(1)).documents().is_empty());
    }

    /// The BSON bytes `document` takes inside another document (without the 5 bytes of an
    /// empty document's length and terminator).
    fn bson_bytes(document: Document) -> usize {
        let mut bytes = Vec::new();
        document.to_writer(&mut bytes).unwrap();
        bytes.len() - 5
    }

    /// What ryw's write ids add to a document, for write ids whose sequence number has one digit
    /// (a session's first nine writes; each further digit adds a byte per id). docs/cost.md
    /// quotes these numbers.
    #[test]
    fn what_the_write_ids_add_to_a_document() {
        let ids: Vec<String> = (1..=RECENT_WRITE_IDS as u64)
            .map(|seq| WriteId::new(SessionId::derive(b"cost"), 0x5eed, seq).to_string())
            .collect();
        assert!(ids.iter().all(|id| id.len() == 51));
        // The list after one update (or a replace, or an insert with the caller's own `_id`),
        // and once full: 20 bytes for the field and the array, 59 per id.
        assert_eq!(bson_bytes(doc! { WRITE_ID_FIELD: &ids[..1] }), 20 + 59);
        assert_eq!(
            bson_bytes(doc! { WRITE_ID_FIELD: &ids }),
            20 + 59 * RECENT_WRITE_IDS
        );
        assert_eq!(RECENT_WRITE_IDS, 8);
        // An insert without `_id`: the write id is the `_id`, a string, where the driver would
        // have made a 12-byte ObjectId.
        assert_eq!(bson_bytes(doc! { "_id": &ids[0] }), 61);
        assert_eq!(bson_bytes(doc! { "_id": ObjectId::new() }), 17);
        // In insert_many, `<write id>/<i>`.
        assert_eq!(bson_bytes(doc! { "_id": format!("{}/0", ids[0]) }), 63);
    }
}
