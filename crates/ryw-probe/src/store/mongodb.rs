//! MongoDB: plain majority writes and `secondaryPreferred` reads for the probe, and the same
//! through ryw's MongoDB adapter. Documents are `{_id: key, v: n}`.

use super::{ProbeStore, RywRead};
use crate::error::ProbeError;
use mongodb::bson::{doc, Document};
use mongodb::options::{ReadPreference, SelectionCriteria, WriteConcern};
use mongodb::{Client, Collection};
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use std::time::Duration;
use tower::{Layer, ServiceExt};

pub(crate) struct Mongo {
    client: Client,
    database: String,
    collection: String,
    instances: Vec<ReadYourWrites<MongoService<Document>, MongoAdapter>>,
}

fn failed(e: mongodb::error::Error) -> ProbeError {
    use mongodb::error::ErrorKind;
    let text = e.to_string();
    match *e.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => ProbeError::Unreachable(text),
        ErrorKind::Authentication { .. } => ProbeError::Permission(text),
        ErrorKind::Command(ref c) if c.code == 13 || c.code == 18 => ProbeError::Permission(text),
        _ => ProbeError::Store(text),
    }
}

fn layered(e: ryw::Error<ryw_mongodb::MongoError>) -> ProbeError {
    let text = e.to_string();
    if text.contains("server selection") || text.contains("Server selection") {
        ProbeError::Unreachable(text)
    } else {
        ProbeError::Store(text)
    }
}

impl Mongo {
    pub(crate) async fn connect(
        uri: &str,
        namespace: &str,
        instances: usize,
    ) -> Result<Self, ProbeError> {
        let Some((database, collection)) = namespace.split_once('.') else {
            return Err(ProbeError::Usage(format!(
                "--collection must be database.collection, not {namespace:?}"
            )));
        };
        let mut options = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(|e| ProbeError::Usage(format!("--uri: {e}")))?;
        options.server_selection_timeout = Some(Duration::from_secs(5));
        let client = Client::with_options(options).map_err(failed)?;
        let adapter = MongoAdapter::new();
        let instances = (0..instances.max(1))
            .map(|_| {
                ReadYourWritesLayer::new(adapter.clone())
                    .layer(MongoService::new(&client, database, collection))
            })
            .collect();
        Ok(Mongo {
            client,
            database: database.to_owned(),
            collection: collection.to_owned(),
            instances,
        })
    }

    fn coll(&self) -> Collection<Document> {
        self.client
            .database(&self.database)
            .collection(&self.collection)
    }

    fn instance(&self, i: usize) -> ReadYourWrites<MongoService<Document>, MongoAdapter> {
        self.instances[i % self.instances.len()].clone()
    }
}

impl ProbeStore for Mongo {
    fn describe(&self) -> String {
        format!("MongoDB collection {}.{}", self.database, self.collection)
    }

    async fn prepare(&mut self, create: bool, force: bool) -> Result<(), ProbeError> {
        let db = self.client.database(&self.database);
        let names = db.list_collection_names().await.map_err(failed)?;
        if !names.contains(&self.collection) {
            if !create {
                return Err(ProbeError::Missing(format!(
                    "collection {}.{}",
                    self.database, self.collection
                )));
            }
            db.create_collection(&self.collection)
                .await
                .map_err(failed)?;
            return Ok(());
        }
        if !force
            && self
                .coll()
                .find_one(doc! {})
                .await
                .map_err(failed)?
                .is_some()
        {
            return Err(ProbeError::NotEmpty(format!(
                "collection {}.{}",
                self.database, self.collection
            )));
        }
        Ok(())
    }

    async fn write(&self, key: &str, value: u64) -> Result<(), ProbeError> {
        self.coll()
            .replace_one(doc! { "_id": key }, doc! { "_id": key, "v": value as i64 })
            .upsert(true)
            .write_concern(WriteConcern::majority())
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn read_cheap(&self, key: &str) -> Result<Option<u64>, ProbeError> {
        let found = self
            .coll()
            .find_one(doc! { "_id": key })
            .selection_criteria(SelectionCriteria::ReadPreference(
                ReadPreference::SecondaryPreferred {
                    options: Default::default(),
                },
            ))
            .await
            .map_err(failed)?;
        Ok(found.and_then(|d| d.get_i64("v").ok()).map(|v| v as u64))
    }

    async fn ryw_write(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
        value: u64,
    ) -> Result<(), ProbeError> {
        let request =
            MongoRequest::replace_one(doc! { "_id": key }, doc! { "_id": key, "v": value as i64 })
                .upsert();
        self.instance(instance)
            .oneshot(session.request(request))
            .await
            .map_err(layered)?;
        Ok(())
    }

    async fn ryw_read(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
    ) -> Result<RywRead, ProbeError> {
        let r = self
            .instance(instance)
            .oneshot(session.request(MongoRequest::find_one(doc! { "_id": key })))
            .await
            .map_err(layered)?;
        let value = match r.get_ref().output() {
            ryw_mongodb::MongoOutput::Document(Some(d)) => d.get_i64("v").ok().map(|v| v as u64),
            _ => None,
        };
        Ok(RywRead {
            value,
            visibility: r.visibility().clone(),
        })
    }

    async fn cleanup(&self, keys: &[String]) -> Result<(), ProbeError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.coll()
            .delete_many(doc! { "_id": { "$in": keys } })
            .await
            .map_err(failed)?;
        Ok(())
    }
}
