//! The MongoDB adapter against a real three-member replica set with a lagging secondary.
//!
//! `RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker --test mongodb_replica_set`
//!
//! Three `mongo` containers on a private Docker network form `rs0`; the test talks to the primary
//! and to one secondary by direct connections. It locks the secondary (`fsyncLock`), so it stops
//! applying the oplog, then writes through ryw on the primary: a plain secondary read misses the
//! write, while the same read through ryw, given only the token, waits on the secondary
//! (`afterClusterTime`) and returns the write once the secondary is unlocked.

#[cfg(not(feature = "docker"))]
#[test]
fn mongodb_replica_set_suite() {
    eprintln!("skipped: MongoDB replica set suite (build with --features docker and set RYW_DOCKER_TESTS=1)");
}

#[cfg(feature = "docker")]
mod docker {
    use mongodb::bson::{doc, Document};
    use mongodb::Client;
    use ryw::fence::FencePath;
    use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
    use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
    use std::time::Duration;
    use testcontainers_modules::testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{GenericImage, ImageExt};
    use tower::{Layer, ServiceExt};

    async fn wait_until<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..120 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn mongodb_replica_set_suite() {
        if !ryw_testcontainers::docker_enabled("MongoDB replica set suite") {
            return;
        }
        let network = format!("ryw-rs-{}", std::process::id());
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = GenericImage::new("mongo", "7.0")
                .with_exposed_port(27017.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Waiting for connections"))
                .with_network(&network)
                .with_container_name(format!("{network}-m{i}"))
                .with_cmd(["--replSet", "rs0", "--bind_ip_all"])
                .start()
                .await
                .expect("start mongod");
            nodes.push(node);
        }
        let mut uris = Vec::new();
        for node in &nodes {
            let port = node.get_host_port_ipv4(27017.tcp()).await.unwrap();
            uris.push(format!("mongodb://127.0.0.1:{port}/?directConnection=true"));
        }
        let primary = Client::with_uri_str(&uris[0]).await.unwrap();
        let members: Vec<Document> = (0..3)
            .map(|i| {
                doc! {
                    "_id": i,
                    "host": format!("{network}-m{i}:27017"),
                    "priority": if i == 0 { 2 } else { 0 },
                }
            })
            .collect();
        primary
            .database("admin")
            .run_command(doc! { "replSetInitiate": { "_id": "rs0", "members": members } })
            .await
            .expect("replSetInitiate");
        wait_until("a primary", || async {
            primary
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                .is_ok_and(|h| h.get_bool("isWritablePrimary").unwrap_or(false))
        })
        .await;
        let secondary =
            Client::with_uri_str(format!("{}&readPreference=secondaryPreferred", uris[1]))
                .await
                .unwrap();
        wait_until("the secondary", || async {
            secondary
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                .is_ok_and(|h| h.get_bool("secondary").unwrap_or(false))
        })
        .await;

        let adapter = MongoAdapter::new();
        let layer = ReadYourWritesLayer::new(adapter.documents::<Document>())
            .fence(FenceConfig::server_wait());
        let on_primary = MongoService::<Document>::new(&primary, "ryw", "posts");
        let on_secondary = MongoService::<Document>::new(&secondary, "ryw", "posts");

        // Warm up: the collection exists everywhere.
        let warm = Session::new();
        layer
            .layer(on_primary.clone())
            .oneshot(warm.request(MongoRequest::insert_one(doc! { "warm": true })))
            .await
            .unwrap();
        let token = warm.token().encode().unwrap();
        let read = layer
            .layer(on_secondary.clone())
            .oneshot(
                Session::from_encoded(&token)
                    .unwrap()
                    .request(MongoRequest::find(doc! { "warm": true })),
            )
            .await
            .unwrap();
        assert_eq!(read.get_ref().documents().len(), 1);

        // The secondary stops applying the oplog.
        secondary
            .database("admin")
            .run_command(doc! { "fsyncLock": 1 })
            .await
            .expect("fsyncLock");
        let session = Session::new();
        layer
            .layer(on_primary.clone())
            .oneshot(session.request(MongoRequest::insert_one(doc! { "post": "hello" })))
            .await
            .unwrap();
        let token = session.token().encode().unwrap();

        // Without ryw, the lagging secondary does not have the write.
        let plain = on_secondary
            .clone()
            .oneshot(MongoRequest::find(doc! { "post": "hello" }))
            .await
            .unwrap();
        assert!(
            plain.documents().is_empty(),
            "the secondary was expected to lag"
        );

        // Through ryw, given only the token, the secondary waits for the write.
        let elsewhere = Session::from_encoded(&token).unwrap();
        let read = tokio::spawn(
            layer
                .layer(on_secondary.clone())
                .oneshot(elsewhere.request(MongoRequest::find(doc! { "post": "hello" }))),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !read.is_finished(),
            "the read waits while the secondary lags"
        );
        secondary
            .database("admin")
            .run_command(doc! { "fsyncUnlock": 1 })
            .await
            .expect("fsyncUnlock");
        let read = read.await.unwrap().unwrap();
        assert_eq!(read.get_ref().documents().len(), 1);
        assert_eq!(
            read.visibility(),
            &Visibility::Guaranteed(FencePath::ServerWait)
        );
    }
}
