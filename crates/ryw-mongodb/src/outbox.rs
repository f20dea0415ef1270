//! The durable encoding of MongoDB writes, for `ryw-outbox` (feature `outbox`): a BSON document
//! holding the operation, its filter, update or documents (typed documents through their serde
//! form), and what the session layer stamped on it (write id, `afterClusterTime`, the session's
//! `$clusterTime`).
//!
//! ```
//! use mongodb::bson::{doc, Document};
//! use ryw_mongodb::MongoRequest;
//! use ryw_outbox::DurableRequest;
//!
//! let write: MongoRequest<Document> =
//!     MongoRequest::update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 1 } });
//! let mut bytes = Vec::new();
//! write.encode(&mut bytes).unwrap();
//! let back = MongoRequest::<Document>::decode(&bytes).unwrap();
//! assert_eq!(format!("{back:?}"), format!("{write:?}"));
//! // An upsert stays one.
//! let upsert = MongoRequest::<Document>::replace_one(doc! { "_id": 2 }, doc! { "n": 1 }).upsert();
//! bytes.clear();
//! upsert.encode(&mut bytes).unwrap();
//! let back = MongoRequest::<Document>::decode(&bytes).unwrap();
//! assert_eq!(format!("{back:?}"), format!("{upsert:?}"));
//! // A bulk write keeps each of its writes.
//! let bulk = MongoRequest::<Document>::bulk_write([upsert, write]);
//! bytes.clear();
//! bulk.encode(&mut bytes).unwrap();
//! let back = MongoRequest::<Document>::decode(&bytes).unwrap();
//! assert_eq!(format!("{back:?}"), format!("{bulk:?}"));
//! // Reads are never deferred.
//! assert!(MongoRequest::<Document>::find(doc! {}).encode(&mut Vec::new()).is_err());
//! ```

use crate::request::{bulk_refusal, MongoOperation, MongoRequest};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{self, Binary, Bson, Document, Timestamp};
use ryw::{SessionId, WriteId};
use ryw_outbox::entry::{DecodeError, DurableRequest, NotDeferrable};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

const FORMAT: i32 = 1;

fn bytes(v: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: v.to_vec(),
    })
}

fn not_deferrable(reason: &'static str) -> NotDeferrable {
    NotDeferrable { reason }
}

/// Writes `operation`'s fields into `d` (`op` and its arguments).
fn encode_operation<T: Serialize>(
    operation: &MongoOperation<T>,
    d: &mut Document,
) -> Result<(), NotDeferrable> {
    let typed = |t: &T| bson::to_bson(t).map_err(|_| not_deferrable("document is not BSON"));
    match operation {
        MongoOperation::Find { .. }
        | MongoOperation::FindOne { .. }
        | MongoOperation::Aggregate { .. } => {
            return Err(not_deferrable("a read is never deferred"))
        }
        MongoOperation::InsertOne { document } => {
            d.insert("op", "insert_one");
            d.insert("document", typed(document)?);
        }
        MongoOperation::InsertMany { documents } => {
            d.insert("op", "insert_many");
            let all = documents.iter().map(typed).collect::<Result<Vec<_>, _>>()?;
            d.insert("documents", all);
        }
        MongoOperation::UpdateOne {
            filter,
            update,
            upsert,
        } => {
            d.insert("op", "update_one");
            d.insert("filter", filter.clone());
            d.insert("update", update.clone());
            d.insert("upsert", *upsert);
        }
        MongoOperation::UpdateMany {
            filter,
            update,
            upsert,
        } => {
            d.insert("op", "update_many");
            d.insert("filter", filter.clone());
            d.insert("update", update.clone());
            d.insert("upsert", *upsert);
        }
        MongoOperation::ReplaceOne {
            filter,
            replacement,
            upsert,
        } => {
            d.insert("op", "replace_one");
            d.insert("filter", filter.clone());
            d.insert("replacement", typed(replacement)?);
            d.insert("upsert", *upsert);
        }
        MongoOperation::DeleteOne { filter } => {
            d.insert("op", "delete_one");
            d.insert("filter", filter.clone());
        }
        MongoOperation::DeleteMany { filter } => {
            d.insert("op", "delete_many");
            d.insert("filter", filter.clone());
        }
        MongoOperation::FindOneAndUpdate { filter, update } => {
            d.insert("op", "find_one_and_update");
            d.insert("filter", filter.clone());
            d.insert("update", update.clone());
        }
        MongoOperation::BulkWrite { writes } => {
            if let Some(why) = bulk_refusal(writes) {
                return Err(not_deferrable(why));
            }
            d.insert("op", "bulk_write");
            let mut all = Vec::with_capacity(writes.len());
            for w in writes {
                let mut one = Document::new();
                encode_operation(w, &mut one)?;
                all.push(one);
            }
            d.insert("writes", all);
        }
    }
    Ok(())
}

/// Reads an operation written by [`encode_operation`].
fn decode_operation<T: DeserializeOwned>(d: &Document) -> Result<MongoOperation<T>, DecodeError> {
    decode_one(d, false)
}

/// [`decode_operation`]; `nested` for a write of a `bulk_write`.
fn decode_one<T: DeserializeOwned>(
    d: &Document,
    nested: bool,
) -> Result<MongoOperation<T>, DecodeError> {
    let doc = |k: &'static str| {
        d.get_document(k)
            .cloned()
            .map_err(|_| DecodeError::Invalid(k))
    };
    let typed =
        |b: &Bson| bson::from_bson::<T>(b.clone()).map_err(|_| DecodeError::Invalid("document"));
    let get = |k: &'static str| d.get(k).ok_or(DecodeError::Invalid(k));
    // A flag absent from an entry is false (entries written before it existed).
    let flag = |k: &'static str| match d.get(k) {
        None => Ok(false),
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(_) => Err(DecodeError::Invalid(k)),
    };
    Ok(
        match d.get_str("op").map_err(|_| DecodeError::Invalid("op"))? {
            "insert_one" => MongoOperation::InsertOne {
                document: typed(get("document")?)?,
            },
            "insert_many" => MongoOperation::InsertMany {
                documents: d
                    .get_array("documents")
                    .map_err(|_| DecodeError::Invalid("documents"))?
                    .iter()
                    .map(typed)
                    .collect::<Result<_, _>>()?,
            },
            "update_one" => MongoOperation::UpdateOne {
                filter: doc("filter")?,
                update: doc("update")?,
                upsert: flag("upsert")?,
            },
            "update_many" => MongoOperation::UpdateMany {
                filter: doc("filter")?,
                update: doc("update")?,
                upsert: flag("upsert")?,
            },
            "replace_one" => MongoOperation::ReplaceOne {
                filter: doc("filter")?,
                replacement: typed(get("replacement")?)?,
                upsert: flag("upsert")?,
            },
            "delete_one" => MongoOperation::DeleteOne {
                filter: doc("filter")?,
            },
            "delete_many" => MongoOperation::DeleteMany {
                filter: doc("filter")?,
            },
            "find_one_and_update" => MongoOperation::FindOneAndUpdate {
                filter: doc("filter")?,
                update: doc("update")?,
            },
            "bulk_write" if !nested => {
                let writes: Vec<MongoOperation<T>> = d
                    .get_array("writes")
                    .map_err(|_| DecodeError::Invalid("writes"))?
                    .iter()
                    .map(|w| match w {
                        Bson::Document(w) => decode_one(w, true),
                        _ => Err(DecodeError::Invalid("writes")),
                    })
                    .collect::<Result<_, _>>()?;
                if bulk_refusal(&writes).is_some() {
                    return Err(DecodeError::Invalid("writes"));
                }
                MongoOperation::BulkWrite { writes }
            }
            _ => return Err(DecodeError::Invalid("op")),
        },
    )
}

impl<T: Serialize + DeserializeOwned> DurableRequest for MongoRequest<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), NotDeferrable> {
        if let Some(why) = self.refused {
            return Err(not_deferrable(why));
        }
        let mut d = Document::new();
        d.insert("format", FORMAT);
        encode_operation(&self.operation, &mut d)?;
        if let Some(id) = self.write_id {
            let mut w = Document::new();
            w.insert("session", bytes(&id.session.as_u128().to_le_bytes()));
            w.insert("lane", id.lane as i64);
            w.insert("seq", id.seq as i64);
            d.insert("write_id", w);
        }
        if let Some(after) = self.after {
            d.insert("after", Bson::Timestamp(after));
        }
        if let Some(ct) = &self.cluster_time {
            d.insert("cluster_time", bytes(ct));
        }
        d.insert("primary", self.primary);
        d.insert("replay", self.replay);
        d.to_writer(out)
            .map_err(|_| not_deferrable("request is not BSON"))
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let d = Document::from_reader(bytes).map_err(|_| DecodeError::Format)?;
        if d.get_i32("format") != Ok(FORMAT) {
            return Err(DecodeError::Format);
        }
        let operation = decode_operation(&d)?;
        let binary = |b: &Bson| match b {
            Bson::Binary(b) => Ok(b.bytes.clone()),
            _ => Err(DecodeError::Invalid("binary")),
        };
        let write_id = match d.get_document("write_id") {
            Ok(w) => {
                let session: [u8; 16] =
                    binary(w.get("session").ok_or(DecodeError::Invalid("write id"))?)?
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("write id"))?;
                let lane = w
                    .get_i64("lane")
                    .map_err(|_| DecodeError::Invalid("write id"))?;
                let seq = w
                    .get_i64("seq")
                    .map_err(|_| DecodeError::Invalid("write id"))?;
                Some(WriteId::new(
                    SessionId::from_u128(u128::from_le_bytes(session)),
                    lane as u64,
                    seq as u64,
                ))
            }
            Err(_) => None,
        };
        let after = match d.get("after") {
            Some(Bson::Timestamp(t)) => Some(Timestamp {
                time: t.time,
                increment: t.increment,
            }),
            Some(_) => return Err(DecodeError::Invalid("after")),
            None => None,
        };
        let cluster_time = match d.get("cluster_time") {
            Some(b) => Some(Arc::<[u8]>::from(binary(b)?)),
            None => None,
        };
        Ok(MongoRequest {
            operation,
            refused: None,
            write_id,
            after,
            cluster_time,
            primary: d.get_bool("primary").unwrap_or(false),
            replay: d.get_bool("replay").unwrap_or(false),
            config: None,
        })
    }
}
