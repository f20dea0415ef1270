//! The ScyllaDB adapter against a real ScyllaDB (developer mode, one shard, 512 MB).
//!
//! `RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker --test scylla`
//!
//! What the scripted-node suite (`crates/ryw-scylla/tests/proxy/`) cannot show: that the server
//! stores the session clock as the cell timestamp (`WRITETIME` equals the stamp), that fenced reads
//! verify against it, and that a lightweight transaction answers `[applied] = false` with the
//! current row. One node cannot serve a stale read; the stale paths are covered on the wire.

#[cfg(not(feature = "docker"))]
#[test]
fn scylla_suite() {
    eprintln!("skipped: ScyllaDB suite (build with --features docker and set RYW_DOCKER_TESTS=1)");
}

#[cfg(feature = "docker")]
mod docker {
    use ryw::fence::FencePath;
    use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
    use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
    use scylla::client::session_builder::SessionBuilder;
    use std::sync::Arc;
    use std::time::Duration;
    use testcontainers_modules::scylladb::ScyllaDB;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::ImageExt;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn scylla_suite() {
        if !ryw_testcontainers::docker_enabled("ScyllaDB suite") {
            return;
        }
        let node = ScyllaDB::default()
            .with_cmd([
                "--smp",
                "1",
                "--memory",
                "512M",
                "--overprovisioned",
                "1",
                "--developer-mode",
                "1",
            ])
            .start()
            .await
            .expect("start ScyllaDB");
        let port = node.get_host_port_ipv4(9042).await.unwrap();
        let host = node.get_host().await.unwrap();
        let driver = SessionBuilder::new()
            .known_node(format!("{host}:{port}"))
            .build()
            .await
            .expect("connect");
        for ddl in [
            "CREATE KEYSPACE IF NOT EXISTS app WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}",
            "CREATE TABLE IF NOT EXISTS app.posts (user_id text, post_id int, body text, PRIMARY KEY (user_id, post_id))",
        ] {
            driver.query_unpaged(ddl, ()).await.expect(ddl);
        }
        let driver = Arc::new(driver);
        let layer = ReadYourWritesLayer::new(ScyllaAdapter::new())
            .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO));
        let service = layer.layer(ScyllaService::new(driver.clone()));

        // Write through ryw; the cell's WRITETIME is the session's clock reading.
        let session = Session::new();
        let write = ScyllaRequest::write(
            "INSERT INTO app.posts (user_id, post_id, body) VALUES (?, ?, ?)",
            ("u1", 1i32, "hello"),
        )
        .partition(b"u1");
        service
            .clone()
            .oneshot(session.request(write))
            .await
            .expect("write");
        let stamped = session.snapshot().clock().get() as i64;
        let (writetime,) = driver
            .query_unpaged(
                "SELECT WRITETIME(body) FROM app.posts WHERE user_id = 'u1' AND post_id = 1",
                (),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<(i64,)>()
            .unwrap();
        assert_eq!(writetime, stamped, "the server stored the session clock");

        // Another instance, given only the token, reads it verified on the cheap path.
        let elsewhere = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
        let read = ScyllaRequest::read(
            "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
            ("u1",),
        )
        .partition(b"u1")
        .track("body");
        let response = service
            .clone()
            .oneshot(elsewhere.request(read))
            .await
            .expect("read");
        assert_eq!(
            response.visibility(),
            &Visibility::Guaranteed(FencePath::Verified)
        );
        let (body,) = response
            .get_ref()
            .rows()
            .unwrap()
            .first_row::<(String, i64)>()
            .map(|(b, _)| (b,))
            .unwrap();
        assert_eq!(body, "hello");

        // A lightweight transaction whose condition fails is a conflict with the current row.
        let lwt = ScyllaRequest::conditional(
            "INSERT INTO app.posts (user_id, post_id, body) VALUES (?, ?, ?) IF NOT EXISTS",
            ("u1", 1i32, "second"),
        )
        .partition(b"u1");
        let error = service
            .clone()
            .oneshot(session.request(lwt))
            .await
            .unwrap_err();
        let ryw::Error::Conflict(conflict) = error else {
            panic!("{error:?}");
        };
        let row = conflict.current_item::<scylla::value::Row>().unwrap();
        assert!(row
            .columns
            .contains(&Some(scylla::value::CqlValue::Text("hello".into()))));
    }
}
