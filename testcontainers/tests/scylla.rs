//! The ScyllaDB adapter against a real ScyllaDB (developer mode, one shard, 512 MB).
//!
//! `RYW_DOCKER_TESTS=1 cargo test -p ryw-testcontainers --features docker --test scylla`
//!
//! What the scripted-node suite (`crates/ryw-scylla/tests/proxy/`) cannot show: that the server
//! stores the session clock as the cell timestamp (`WRITETIME` equals the stamp), that fenced reads
//! verify against it, that a lightweight transaction answers `[applied] = false` with the
//! current row, and that a partition paged through the layer returns every row once, also when a
//! page resumes at `LOCAL_QUORUM` from the paging state of a `LOCAL_ONE` page.
//! `scylla_three_nodes` adds a three-node cluster (replication factor 3) with one
//! node paused while the session writes: reads coordinated by that node at `LOCAL_ONE` may miss
//! the write, and through ryw they never do.

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

    use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn node_args(seeds: &str) -> Vec<String> {
        [
            "--smp",
            "1",
            "--memory",
            "750M",
            "--overprovisioned",
            "1",
            "--developer-mode",
            "1",
            "--seeds",
            seeds,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[tokio::test]
    async fn scylla_three_nodes() {
        if !ryw_testcontainers::docker_enabled("ScyllaDB three-node suite") {
            return;
        }
        let network = format!("ryw-scylla-{}", std::process::id());
        let seed = format!("{network}-0");
        // Nodes join one at a time, as Scylla requires.
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = ScyllaDB::default()
                .with_network(&network)
                .with_container_name(format!("{network}-{i}"))
                .with_cmd(node_args(&seed))
                .start()
                .await
                .expect("start a ScyllaDB node");
            nodes.push(node);
        }
        // The driver learns the nodes' network addresses; map them to the published ports.
        let mut translate: HashMap<SocketAddr, SocketAddr> = HashMap::new();
        let mut published = Vec::new();
        for node in &nodes {
            let inside = SocketAddr::new(node.get_bridge_ip_address().await.unwrap(), 9042);
            let host = node.get_host().await.unwrap().to_string();
            let port = node.get_host_port_ipv4(9042).await.unwrap();
            let outside = tokio::net::lookup_host((host.as_str(), port))
                .await
                .unwrap()
                .next()
                .unwrap();
            translate.insert(inside, outside);
            published.push(outside);
        }
        let connect = |pinned: Option<SocketAddr>| {
            let translate = translate.clone();
            let first = published[0];
            async move {
                let mut builder = SessionBuilder::new()
                    .known_node_addr(first)
                    .address_translator(Arc::new(translate));
                if let Some(addr) = pinned {
                    let profile = scylla::client::execution_profile::ExecutionProfile::builder()
                        .load_balancing_policy(SingleTargetLoadBalancingPolicy::new(
                            NodeIdentifier::NodeAddress(addr),
                            None,
                        ))
                        .build();
                    builder = builder.default_execution_profile_handle(profile.into_handle());
                }
                builder.build().await.expect("connect")
            }
        };
        let admin = connect(None).await;
        for _ in 0..60 {
            admin.refresh_metadata().await.ok();
            if admin.get_cluster_state().get_nodes_info().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(admin.get_cluster_state().get_nodes_info().len(), 3);
        for ddl in [
            "CREATE KEYSPACE IF NOT EXISTS app WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}",
            "CREATE TABLE IF NOT EXISTS app.posts (user_id text PRIMARY KEY, body text)",
        ] {
            admin.query_unpaged(ddl, ()).await.expect(ddl);
        }
        let writer = ReadYourWritesLayer::new(ScyllaAdapter::new())
            .layer(ScyllaService::new(Arc::new(admin)));
        // Reads coordinated by the third node only.
        let lagging = Arc::new(connect(Some(published[2])).await);
        let reader = ReadYourWritesLayer::new(ScyllaAdapter::new())
            .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO))
            .layer(ScyllaService::new(lagging.clone()));

        let mut plain_stale = 0;
        let rounds = 20;
        for round in 0..rounds {
            let session = Session::new();
            let user = format!("u{round}");
            let body = format!("post {round}");
            nodes[2].pause().await.expect("pause the third node");
            let write = ScyllaRequest::write(
                "INSERT INTO app.posts (user_id, body) VALUES (?, ?)",
                (user.clone(), body.clone()),
            )
            .row(user.as_bytes(), b"");
            writer
                .clone()
                .oneshot(session.request(write))
                .await
                .expect("a quorum write with one node paused");
            nodes[2].unpause().await.expect("unpause the third node");

            let mut plain =
                scylla::statement::Statement::new("SELECT body FROM app.posts WHERE user_id = ?");
            plain.set_consistency(scylla::statement::Consistency::LocalOne);
            let seen = lagging
                .query_unpaged(plain, (&user,))
                .await
                .ok()
                .and_then(|r| r.into_rows_result().ok())
                .and_then(|r| r.maybe_first_row::<(String,)>().ok().flatten());
            if seen.map(|(b,)| b) != Some(body.clone()) {
                plain_stale += 1;
            }

            let elsewhere = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
            let read = ScyllaRequest::read(
                "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
                (user.clone(),),
            )
            .row(user.as_bytes(), b"")
            .track("body");
            let response = reader
                .clone()
                .oneshot(elsewhere.request(read))
                .await
                .expect("read");
            assert!(
                response.visibility().is_guaranteed(),
                "{:?}",
                response.visibility()
            );
            let (got, _) = response
                .get_ref()
                .rows()
                .unwrap()
                .first_row::<(String, i64)>()
                .unwrap();
            assert_eq!(got, body, "ryw reads its write through the lagging node");
        }
        eprintln!(
            "three nodes: {plain_stale} of {rounds} plain LOCAL_ONE reads through the paused node missed the write; ryw missed none"
        );
    }

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
        .row(b"u1", 1i32.to_be_bytes());
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
            "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = ? AND post_id = ?",
            ("u1", 1i32),
        )
        .row(b"u1", 1i32.to_be_bytes())
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
        .row(b"u1", 1i32.to_be_bytes());
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

        // A partition of seven posts, written through ryw, read back three rows a page: every
        // page at LOCAL_QUORUM (the session wrote the partition), guaranteed, carrying the paging
        // state of the page before; every post once, in clustering order.
        let writer = Session::new();
        for post in 1..=7i32 {
            let write = ScyllaRequest::write(
                "INSERT INTO app.posts (user_id, post_id, body) VALUES (?, ?, ?)",
                ("pager", post, format!("post {post}")),
            )
            .row(b"pager", post.to_be_bytes());
            service
                .clone()
                .oneshot(writer.request(write))
                .await
                .expect("write");
        }
        let feed = ScyllaRequest::read(
            "SELECT post_id, body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
            ("pager",),
        )
        .partition(b"pager")
        .track("body")
        .page_size(3);
        let read_all = |session: Session| {
            let service = service.clone();
            let feed = feed.clone();
            async move {
                let (mut posts, mut consistencies) = (Vec::new(), Vec::new());
                let mut next = Some(feed.clone());
                while let Some(page) = next.take() {
                    assert!(consistencies.len() < 10, "the read never ends: {posts:?}");
                    let response = service
                        .clone()
                        .oneshot(session.request(page))
                        .await
                        .expect("a page");
                    assert!(
                        response.visibility().is_guaranteed(),
                        "{:?}",
                        response.visibility()
                    );
                    consistencies.push(response.get_ref().consistency());
                    for row in response
                        .get_ref()
                        .rows()
                        .unwrap()
                        .rows::<(i32, String, i64)>()
                        .unwrap()
                    {
                        let (post, body, _) = row.unwrap();
                        assert_eq!(body, format!("post {post}"));
                        posts.push(post);
                    }
                    next = feed.next_page(response.get_ref());
                }
                (posts, consistencies)
            }
        };
        let (posts, consistencies) = read_all(writer).await;
        assert_eq!(
            posts,
            (1..=7).collect::<Vec<_>>(),
            "every post once, in order"
        );
        assert!(consistencies.len() >= 3, "{consistencies:?}");
        assert!(consistencies
            .iter()
            .all(|c| *c == Some(scylla::statement::Consistency::LocalQuorum)));

        // A session that never touched the partition: its first page is cheap, the next ones
        // (the partition now seen) strong, resuming from the cheap page's paging state.
        let (posts, consistencies) = read_all(Session::new()).await;
        assert_eq!(
            posts,
            (1..=7).collect::<Vec<_>>(),
            "every post once, in order"
        );
        assert_eq!(
            consistencies[0],
            Some(scylla::statement::Consistency::LocalOne)
        );
        assert!(consistencies[1..]
            .iter()
            .all(|c| *c == Some(scylla::statement::Consistency::LocalQuorum)));
    }
}
