//! `MongoRequest::bulk_write` against a real MongoDB 8.0 (the first server with the `bulkWrite`
//! command), a single-node replica set started with test commands enabled.
//!
//! `RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker --test mongodb_bulk_write`
//!
//! Six writes of every kind the bulk takes go out in one ordered command and apply once each;
//! then the same writes again on a fresh collection with the `failCommand` fail point answering
//! the first two `bulkWrite` commands with a write concern error after they applied (the driver
//! retries, then the layer replays): still applied once each.

#[cfg(not(feature = "docker"))]
#[test]
fn mongodb_bulk_write_suite() {
    eprintln!("skipped: MongoDB 8.0 bulk_write suite (build with --features docker and set RYW_DOCKER_TESTS=1)");
}

#[cfg(feature = "docker")]
mod docker {
    use mongodb::bson::{doc, Document};
    use mongodb::{Client, Collection};
    use ryw::{FenceConfig, ReadYourWritesLayer, Session};
    use ryw_mongodb::{MongoAdapter, MongoOutput, MongoRequest, MongoService};
    use std::time::Duration;
    use testcontainers_modules::testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{GenericImage, ImageExt};
    use tower::{Layer, ServiceExt};

    fn writes() -> Vec<MongoRequest<Document>> {
        vec![
            MongoRequest::insert_one(doc! { "k": "new", "n": 1 }),
            MongoRequest::insert_one(doc! { "_id": "own", "n": 1 }),
            MongoRequest::update_one(doc! { "_id": "a" }, doc! { "$inc": { "n": 1 } }),
            MongoRequest::update_one(doc! { "_id": "u" }, doc! { "$inc": { "n": 1 } }).upsert(),
            MongoRequest::replace_one(doc! { "_id": "r" }, doc! { "n": 1 }).upsert(),
            MongoRequest::delete_one(doc! { "_id": "gone" }),
        ]
    }

    async fn seeded(c: &Collection<Document>) {
        c.insert_many([doc! { "_id": "a", "n": 0 }, doc! { "_id": "gone" }])
            .await
            .unwrap();
    }

    async fn assert_applied_once(c: &Collection<Document>, context: &str) {
        for filter in [
            doc! { "k": "new" },
            doc! { "_id": "own" },
            doc! { "_id": "a" },
            doc! { "_id": "u" },
            doc! { "_id": "r" },
        ] {
            let mut cursor = c.find(filter.clone()).await.unwrap();
            let mut ns = Vec::new();
            while cursor.advance().await.unwrap() {
                ns.push(cursor.deserialize_current().unwrap().get_i32("n").unwrap());
            }
            assert_eq!(ns, [1], "{context}: {filter}");
        }
        assert_eq!(c.count_documents(doc! { "_id": "gone" }).await.unwrap(), 0);
        assert_eq!(c.count_documents(doc! {}).await.unwrap(), 5, "{context}");
    }

    #[tokio::test]
    async fn mongodb_bulk_write_suite() {
        if !ryw_testcontainers::docker_enabled("MongoDB 8.0 bulk_write suite") {
            return;
        }
        let node = GenericImage::new("mongo", "8.0")
            .with_exposed_port(27017.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Waiting for connections"))
            .with_cmd([
                "--replSet",
                "rs8",
                "--bind_ip_all",
                "--setParameter",
                "enableTestCommands=1",
            ])
            .start()
            .await
            .expect("start mongod 8.0");
        let port = node.get_host_port_ipv4(27017.tcp()).await.unwrap();
        let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        let admin = Client::with_uri_str(&uri).await.unwrap().database("admin");
        admin
            .run_command(doc! { "replSetInitiate": {
                "_id": "rs8",
                "members": [{ "_id": 0, "host": "localhost:27017" }],
            } })
            .await
            .expect("replSetInitiate");
        let mut primary = false;
        for _ in 0..120 {
            primary = admin
                .run_command(doc! { "hello": 1 })
                .await
                .is_ok_and(|h| h.get_bool("isWritablePrimary").unwrap_or(false));
            if primary {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(primary, "the node became primary");

        let layer = ReadYourWritesLayer::new(MongoAdapter::new().documents::<Document>())
            .fence(FenceConfig::server_wait());

        // One ordered command, each write applied once.
        let client = Client::with_uri_str(&uri).await.unwrap();
        let service = MongoService::<Document>::new(&client, "ryw", "bulk");
        seeded(service.collection()).await;
        let out = layer
            .layer(service.clone())
            .oneshot(Session::new().request(MongoRequest::bulk_write(writes())))
            .await
            .expect("bulk_write on MongoDB 8.0");
        match out.get_ref().output() {
            MongoOutput::Bulk(outputs) => assert_eq!(outputs.len(), 6),
            other => panic!("not a bulk output: {other:?}"),
        }
        assert_applied_once(service.collection(), "one command").await;

        // Write concern errors after the command applied: the driver's retry, then the layer's
        // replay, each write resolved alone by its write id.
        let app = "ryw-bulk-wce";
        let client = Client::with_uri_str(format!("{uri}&appName={app}"))
            .await
            .unwrap();
        let service = MongoService::<Document>::new(&client, "ryw", "bulk_wce");
        seeded(service.collection()).await;
        admin
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": { "times": 2 },
                "data": {
                    "failCommands": ["bulkWrite"],
                    "appName": app,
                    "writeConcernError": {
                        "code": 64,
                        "errmsg": "waiting for replication timed out",
                        "errorLabels": ["RetryableWriteError"],
                    },
                },
            })
            .await
            .expect("failCommand (enableTestCommands=1)");
        let _ = layer
            .layer(service.clone())
            .oneshot(Session::new().request(MongoRequest::bulk_write(writes())))
            .await;
        assert_applied_once(service.collection(), "write concern errors").await;
    }
}
