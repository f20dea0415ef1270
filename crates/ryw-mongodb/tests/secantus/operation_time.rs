//! A `find` of several documents the session wrote in separate writes. The adapter's one scope is
//! the whole deployment, versioned by `operationTime`: a fenced read is `Guaranteed` when the node
//! waited for the session's operation time (`afterClusterTime`) before reading, or read the
//! primary; a reply's own `operationTime` never verifies it. Directly on SecantusDB the read is `Guaranteed` with
//! every document; through [`StaleSecondaryForTests`], the cases show what each path rests on.

use crate::wire_proxy::{Snapshot, StaleSecondaryForTests};
use crate::{fresh, layer, uri};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_mongodb::{version_of, MongoAdapter, MongoRequest, MongoService};
use std::time::Duration;
use tower::{Layer, ServiceExt};

/// A configuration that verifies first: fenced MongoDB reads still wait on the server.
fn verifying() -> ReadYourWritesLayer<MongoAdapter> {
    ReadYourWritesLayer::new(MongoAdapter::new().documents()).fence(
        FenceConfig::verify_then_escalate(1, Duration::from_millis(5)),
    )
}

/// The `n` of each document, sorted.
fn numbers(documents: &[Document]) -> Vec<i32> {
    let mut n: Vec<_> = documents.iter().map(|d| d.get_i32("n").unwrap()).collect();
    n.sort_unstable();
    n
}

/// The session inserts `{batch, n: 1}`, `{batch, n: 2}`, `{batch, n: 3}`, one write each; the
/// operation time of each write.
async fn three_writes(
    client: &Client,
    coll: &str,
    session: &Session,
    batch: &str,
) -> Vec<Timestamp> {
    let svc = layer().layer(MongoService::<Document>::new(client, "ryw", coll));
    let mut times = Vec::new();
    for n in 1..=3 {
        let out = svc
            .clone()
            .oneshot(session.request(MongoRequest::insert_one(doc! { "batch": batch, "n": n })))
            .await
            .unwrap();
        times.push(out.get_ref().operation_time().expect("operationTime"));
    }
    assert!(
        times
            .windows(2)
            .all(|w| version_of(w[0]) < version_of(w[1])),
        "{times:?}"
    );
    times
}

/// A `find` of the session's three documents, in the session's own process and in another one
/// given only the token, through both fences.
#[tokio::test]
async fn a_find_of_the_sessions_documents_is_guaranteed_only_with_all_of_them() {
    let Some(uri) = uri() else { return };
    let client = Client::with_uri_str(&uri).await.unwrap();
    let coll = fresh();
    let session = Session::new();
    three_writes(&client, &coll, &session, "b").await;
    let token = session.token().encode().unwrap();

    let elsewhere = Client::with_uri_str(&uri).await.unwrap();
    for (who, client, session) in [
        ("same process", &client, session.clone()),
        (
            "token only",
            &elsewhere,
            Session::from_encoded(&token).unwrap(),
        ),
    ] {
        for (fence, layer, path) in [
            ("server wait", layer(), FencePath::ServerWait),
            ("verify first", verifying(), FencePath::ServerWait),
        ] {
            let read = layer
                .layer(MongoService::<Document>::new(client, "ryw", &coll))
                .oneshot(session.request(MongoRequest::find(doc! { "batch": "b" })))
                .await
                .unwrap();
            assert_eq!(
                read.visibility(),
                &Visibility::Guaranteed(path),
                "{who}, {fence}"
            );
            assert_eq!(
                numbers(read.get_ref().documents()),
                [1, 2, 3],
                "{who}, {fence}"
            );
        }
    }
}

/// The proxy, and a client that reaches SecantusDB only through it.
async fn through_a_stale_secondary(uri: &str, coll: &str) -> (StaleSecondaryForTests, Client) {
    let target = uri
        .trim_start_matches("mongodb://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_owned();
    let proxy = StaleSecondaryForTests::start(&target, coll).await;
    let client = Client::with_uri_str(format!("mongodb://{}/?directConnection=true", proxy.addr))
        .await
        .unwrap();
    (proxy, client)
}

/// A secondary whose snapshot predates the session's third write, its reply telling its older
/// time, and which honours `afterClusterTime` as a MongoDB node does. A fenced read waits on the
/// server whatever the fence configuration's first strategy: it is `Guaranteed(ServerWait)` with
/// every document, and the stale snapshot never answers it.
#[tokio::test]
async fn a_fenced_find_waits_on_the_server_and_gets_every_document() {
    let Some(uri) = uri() else { return };
    let coll = fresh();
    let (proxy, client) = through_a_stale_secondary(&uri, &coll).await;
    let session = Session::new();
    let times = three_writes(&client, &coll, &session, "s").await;
    proxy.serve(Some(Snapshot {
        field: "n".into(),
        value: Bson::Int32(3),
        operation_time: Some(times[1]),
        honours_after_cluster_time: true,
    }));

    let read = verifying()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .oneshot(session.request(MongoRequest::find(doc! { "batch": "s" })))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::ServerWait)
    );
    assert_eq!(numbers(read.get_ref().documents()), [1, 2, 3]);
    assert_eq!(proxy.finds(), (0, 0), "no stale answer, no primary read");
    // A session with no requirement reads the secondary as it is.
    let read = verifying()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .oneshot(Session::new().request(MongoRequest::find(doc! { "batch": "s" })))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert_eq!(proxy.finds(), (1, 0));
}

/// A reply's `operationTime` never verifies a read. A MongoDB node reports its majority commit
/// point (its last applied optime for other read concerns) when it builds the reply, which can
/// have passed the session's write after the read took an older snapshot, and a `find` of several
/// batches reports the latest. So a fenced read always waits on the server
/// (`Verification::ServerSideOnly`): a secondary that lacks the third document but reports a
/// later `operationTime`, and honours `afterClusterTime`, answers with all three. (Verified by
/// that `operationTime`, the read was `Guaranteed(Verified)` with two.)
///
/// The server wait rests on the node honouring `afterClusterTime`: reading at a snapshot that
/// holds every oplog entry up to it. A reply that does not, even one whose `operationTime` tells
/// its older snapshot, is `Guaranteed(ServerWait)`: the driver's session keeps the later of the
/// `afterClusterTime` it sent and the reply's `operationTime`, so the older time never reaches the
/// adapter.
#[tokio::test]
async fn a_reply_that_overstates_its_snapshot_never_verifies_a_read() {
    let Some(uri) = uri() else { return };
    let coll = fresh();
    let (proxy, client) = through_a_stale_secondary(&uri, &coll).await;
    let session = Session::new();
    let times = three_writes(&client, &coll, &session, "o").await;
    let find = || session.request(MongoRequest::find(doc! { "batch": "o" }));

    // The node's (later) operationTime kept on a stale answer to a read without a wait.
    proxy.serve(Some(Snapshot {
        field: "n".into(),
        value: Bson::Int32(3),
        operation_time: None,
        honours_after_cluster_time: true,
    }));
    let read = verifying()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .oneshot(find())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::ServerWait)
    );
    assert_eq!(numbers(read.get_ref().documents()), [1, 2, 3]);
    assert_eq!(proxy.finds(), (0, 0));

    // Server wait, a node that ignored afterClusterTime and tells its older snapshot.
    proxy.serve(Some(Snapshot {
        field: "n".into(),
        value: Bson::Int32(3),
        operation_time: Some(times[1]),
        honours_after_cluster_time: false,
    }));
    let read = layer()
        .layer(MongoService::<Document>::new(&client, "ryw", &coll))
        .oneshot(find())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::ServerWait)
    );
    assert_eq!(numbers(read.get_ref().documents()), [1, 2]);
    assert!(
        version_of(read.get_ref().operation_time().unwrap()) >= version_of(times[2]),
        "the afterClusterTime sent, not the reply's operationTime"
    );
    assert_eq!(proxy.finds(), (1, 0));
}
