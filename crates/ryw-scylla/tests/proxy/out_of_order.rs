//! Replicas that do not apply a partition's mutations in order, as Scylla's do: a `LOCAL_ONE`
//! replica that misses the session's write yet holds a later one, scripted apart from the
//! `LOCAL_QUORUM` view of the latest data. A read is `Guaranteed` only when it shows the very
//! rows the session wrote; otherwise it is escalated (or `Pending`).
//!
//! The table is `app.kv (pk text, ck int, v text, PRIMARY KEY (pk, ck))`.

use super::{call, stack};
use crate::scripted_node::{
    Cell, CqlType, FixedClock, Reply, Respond, Script, ScriptedScyllaNode, Seen, NOW,
};
use proptest::prelude::*;
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_scylla::{ScyllaAdapter, ScyllaError, ScyllaRequest, ScyllaService, ScyllaStatement};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::Consistency;
use scylla_proxy::RequestOpcode;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

const T: i64 = NOW as i64;

/// Rows `(pk, ck, v, writetime(v))`.
fn kv_rows(rows: &[(&'static str, i32, &'static str, i64)]) -> Reply {
    Reply::Rows {
        columns: vec![
            ("pk", CqlType::Text),
            ("ck", CqlType::Int),
            ("v", CqlType::Text),
            ("writetime(v)", CqlType::BigInt),
        ],
        rows: rows
            .iter()
            .map(|(pk, ck, v, t)| {
                vec![
                    Cell::Text(pk),
                    Cell::Int(*ck),
                    Cell::Text(v),
                    Cell::BigInt(*t),
                ]
            })
            .collect(),
    }
}

fn insert(ck: i32, v: &str) -> String {
    format!("INSERT INTO app.kv (pk, ck, v) VALUES ('r7d', {ck}, '{v}')")
}

const PARTITION: &str = "SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = 'r7d'";

fn partition_read() -> ScyllaRequest {
    ScyllaRequest::read(PARTITION, ())
        .partition(b"r7d")
        .track("v")
}

fn values(read: &ryw::SessionResponse<ryw_scylla::ScyllaResponse>) -> Vec<(i32, String, i64)> {
    read.get_ref()
        .rows()
        .expect("rows")
        .rows::<(String, i32, String, i64)>()
        .expect("typed rows")
        .map(|r| {
            let (_, ck, v, t) = r.expect("a row");
            (ck, v, t)
        })
        .collect()
}

fn consistencies(node: &mut ScriptedScyllaNode, opcode: RequestOpcode) -> Vec<Consistency> {
    node.seen()
        .into_iter()
        .filter(|s| s.opcode == opcode && !s.text.starts_with("INSERT"))
        .filter_map(|s| s.consistency)
        .collect()
}

/// The session writes `('r7d', 1, 'mine')` at T; another client writes `('r7d', 2, 'theirs')` at
/// T + 10, which the `LOCAL_ONE` replica has, while it misses the session's row. A read of the
/// partition must not be verified by the other row's write time.
async fn partition_read_with_the_session_row_missing(config: FenceConfig) {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.kv", vec![Reply::Void]),
        Script::query_at(
            "WHERE pk = 'r7d'",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 2, "theirs", T + 10)])],
        ),
        Script::query_at(
            "WHERE pk = 'r7d'",
            Consistency::LocalQuorum,
            vec![kv_rows(&[
                ("r7d", 1, "mine", T),
                ("r7d", 2, "theirs", T + 10),
            ])],
        ),
    ])
    .await;
    let driver = node.session().await;
    let mut service = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(config),
        )
        .service(ScyllaService::new(Arc::new(driver)));
    let session = Session::new();
    // Written with `.partition()`, as a write that may touch any row.
    let write = ScyllaRequest::write(insert(1, "mine").as_str(), ()).partition(b"r7d");
    call(&mut service, &session, write).await.unwrap();
    let read = call(&mut service, &session, partition_read())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated),
        "{:?}",
        values(&read)
    );
    assert!(values(&read).contains(&(1, "mine".into(), T)));
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalQuorum],
        "one read, at LOCAL_QUORUM up front"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_read_missing_the_session_row_is_not_verified_by_a_later_row() {
    partition_read_with_the_session_row_missing(FenceConfig::verify_then_escalate(
        0,
        Duration::ZERO,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_the_default_fence_config() {
    partition_read_with_the_session_row_missing(FenceConfig::default()).await;
}

/// Both rows are the session's own; the replica holds the later one and misses the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_read_missing_the_session_earlier_row_is_escalated() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.kv", vec![Reply::Void]),
        Script::query_at(
            "WHERE pk = 'r7d'",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 2, "second", T + 1)])],
        ),
        Script::query_at(
            "WHERE pk = 'r7d'",
            Consistency::LocalQuorum,
            vec![kv_rows(&[
                ("r7d", 1, "first", T),
                ("r7d", 2, "second", T + 1),
            ])],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    for (ck, v) in [(1, "first"), (2, "second")] {
        let write = ScyllaRequest::write(insert(ck, v).as_str(), ()).partition(b"r7d");
        call(&mut service, &session, write).await.unwrap();
    }
    let read = call(&mut service, &session, partition_read())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(values(&read).len(), 2);
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalQuorum]
    );
    node.stop().await;
}

/// `WHERE pk IN ('a', 'b')`: the one row returned, from `b`, vouches for neither partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_read_credits_no_partition_with_another_partition_row() {
    const IN: &str = "SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk IN ('a', 'b')";
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.kv", vec![Reply::Void]),
        Script::query_at(
            "IN ('a', 'b')",
            Consistency::LocalOne,
            vec![kv_rows(&[("b", 1, "bee", T + 1)])],
        ),
        Script::query_at(
            "IN ('a', 'b')",
            Consistency::LocalQuorum,
            vec![kv_rows(&[("a", 1, "ay", T), ("b", 1, "bee", T + 1)])],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let a = ScyllaRequest::write("INSERT INTO app.kv (pk, ck, v) VALUES ('a', 1, 'ay')", ())
        .partition(b"a");
    let b = ScyllaRequest::write("INSERT INTO app.kv (pk, ck, v) VALUES ('b', 1, 'bee')", ())
        .partition(b"b");
    call(&mut service, &session, a).await.unwrap();
    call(&mut service, &session, b).await.unwrap();
    let read = ScyllaRequest::read(IN, ())
        .partition(b"a")
        .partition(b"b")
        .track("v");
    let read = call(&mut service, &session, read).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(values(&read).len(), 2, "partition a's row is there");
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalQuorum]
    );
    node.stop().await;
}

/// Row scopes: a read of one row is verified by that row's write time alone. The session's row
/// missing on the replica escalates; a row the session never wrote stays on the cheap path even
/// though the session wrote its neighbour; a row present on the replica is verified cheaply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_read_is_verified_by_its_own_row_only() {
    let row = |ck: i32| {
        ScyllaRequest::read(
            format!("SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = 'r7d' AND ck = {ck}")
                .as_str(),
            (),
        )
        .row(b"r7d", ck.to_be_bytes())
        .track("v")
    };
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.kv", vec![Reply::Void]),
        // Row 1 (the session's): missing on the replica at first, then there.
        Script::query_at(
            "AND ck = 1",
            Consistency::LocalOne,
            vec![kv_rows(&[]), kv_rows(&[("r7d", 1, "mine", T)])],
        ),
        Script::query_at(
            "AND ck = 1",
            Consistency::LocalQuorum,
            vec![kv_rows(&[("r7d", 1, "mine", T)])],
        ),
        // Row 2 (another client's, later): on the replica.
        Script::query_at(
            "AND ck = 2",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 2, "theirs", T + 10)])],
        ),
        Script::query_at(
            "WHERE pk = 'r7d'",
            Consistency::LocalQuorum,
            vec![kv_rows(&[
                ("r7d", 1, "mine", T),
                ("r7d", 2, "theirs", T + 10),
            ])],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let write =
        ScyllaRequest::write(insert(1, "mine").as_str(), ()).row(b"r7d", 1i32.to_be_bytes());
    call(&mut service, &session, write).await.unwrap();
    node.seen();

    let read = call(&mut service, &session, row(1)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(values(&read), [(1, "mine".into(), T)]);
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalOne, Consistency::LocalQuorum]
    );

    let read = call(&mut service, &session, row(2)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalOne]
    );

    let read = call(&mut service, &session, row(1)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalOne]
    );

    // A partition read after the row write: the session's row must be shown, so it is strong.
    let read = call(&mut service, &session, partition_read())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalQuorum]
    );
    node.stop().await;
}

/// A partition-wide write (a partition delete) fences every row read of the partition: a row's
/// write time meets it only when the row was written after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_delete_fences_every_row_read_and_a_later_row_meets_it() {
    let row = |ck: i32| {
        ScyllaRequest::read(
            format!("SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = 'r7d' AND ck = {ck}")
                .as_str(),
            (),
        )
        .row(b"r7d", ck.to_be_bytes())
        .track("v")
    };
    let mut node = ScriptedScyllaNode::start(vec![
        Script::query("DELETE FROM app.kv", vec![Reply::Void]),
        // The replica misses the delete: it still shows row 1 from before it.
        Script::query_at(
            "AND ck = 1",
            Consistency::LocalOne,
            vec![
                kv_rows(&[("r7d", 1, "old", T - 5)]),
                // Later, written again by another client after the delete.
                kv_rows(&[("r7d", 1, "again", T + 5)]),
            ],
        ),
        Script::query_at("AND ck = 1", Consistency::LocalQuorum, vec![kv_rows(&[])]),
        // Row 2 was written again by another client after the delete, and the replica has it.
        Script::query_at(
            "AND ck = 2",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 2, "new", T + 10)])],
        ),
    ])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let delete = ScyllaRequest::write("DELETE FROM app.kv WHERE pk = 'r7d'", ()).partition(b"r7d");
    call(&mut service, &session, delete).await.unwrap();
    node.seen();

    let read = call(&mut service, &session, row(1)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert!(values(&read).is_empty(), "the deleted row is gone");
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [Consistency::LocalOne, Consistency::LocalQuorum]
    );

    let read = call(&mut service, &session, row(2)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    // Meeting the delete with row 2's write time (T + 10) did not make it a requirement of
    // row 1: row 1 written again at T + 5 meets the delete (T) on the cheap path.
    let read = call(&mut service, &session, row(1)).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert_eq!(values(&read), [(1, "again".into(), T + 5)]);
    node.stop().await;
}

/// Prepared statements (EXECUTE) and a batch: the same rules. A batch of two rows, then a
/// prepared partition read, which goes to `LOCAL_QUORUM` up front; a prepared read of a row the
/// replica misses is escalated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_reads_and_batches_follow_the_same_rules() {
    let mut node = ScriptedScyllaNode::start(vec![
        Script::batch("INSERT INTO app.kv", vec![Reply::Void]),
        Script::prepare(
            "WHERE pk = ? AND ck = ?",
            Reply::Prepared {
                id: b"ryw-kv-row",
                markers: vec![("pk", CqlType::Text), ("ck", CqlType::Int)],
            },
        ),
        Script::prepare(
            "WHERE pk = ?",
            Reply::Prepared {
                id: b"ryw-kv-partition",
                markers: vec![("pk", CqlType::Text)],
            },
        ),
        Script::execute_at(
            "ryw-kv-row",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 1, "one", T - 50)])],
        ),
        Script::execute_at(
            "ryw-kv-row",
            Consistency::LocalQuorum,
            vec![kv_rows(&[("r7d", 1, "one", T)])],
        ),
        Script::execute_at(
            "ryw-kv-partition",
            Consistency::LocalOne,
            vec![kv_rows(&[("r7d", 2, "two", T)])],
        ),
        Script::execute_at(
            "ryw-kv-partition",
            Consistency::LocalQuorum,
            vec![kv_rows(&[("r7d", 1, "one", T), ("r7d", 2, "two", T)])],
        ),
    ])
    .await;
    let driver = Arc::new(node.session().await);
    let by_row = driver
        .prepare("SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = ? AND ck = ?")
        .await
        .unwrap();
    let by_partition = driver
        .prepare("SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = ?")
        .await
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
        )
        .service(ScyllaService::new(driver));
    let session = Session::new();
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement(insert(1, "one").as_str());
    batch.append_statement(insert(2, "two").as_str());
    let write = ScyllaRequest::batch(batch, vec![Arc::new(()), Arc::new(())])
        .row(b"r7d", 1i32.to_be_bytes())
        .row(b"r7d", 2i32.to_be_bytes());
    call(&mut service, &session, write).await.unwrap();
    node.seen();

    let read = ScyllaRequest::read(ScyllaStatement::Prepared(by_partition), ("r7d",))
        .partition(b"r7d")
        .track("v");
    let read = call(&mut service, &session, read).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(values(&read).len(), 2);
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Execute),
        [Consistency::LocalQuorum]
    );

    let read = ScyllaRequest::read(ScyllaStatement::Prepared(by_row), ("r7d", 1i32))
        .row(b"r7d", 1i32.to_be_bytes())
        .track("v");
    let read = call(&mut service, &session, read).await.unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(values(&read), [(1, "one".into(), T)]);
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Execute),
        [Consistency::LocalOne, Consistency::LocalQuorum]
    );
    node.stop().await;
}

/// Every read the layer sends on the cheap path runs at `LOCAL_ONE`, with the driver's default
/// consistency left unchanged (`LOCAL_QUORUM`), fenced or not; a statement's own consistency is
/// kept. A scoped read without a tracked column is a typed configuration error, sent nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfenced_reads_run_at_the_cheap_level_and_untracked_reads_are_refused() {
    let mut node = ScriptedScyllaNode::start(vec![Script::query(
        "WHERE pk = 'r7d'",
        vec![kv_rows(&[("r7d", 1, "x", T)])],
    )])
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    // Nothing to fence (the session never wrote or read the partition).
    let read = call(&mut service, &session, partition_read())
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    // A read without a scope is unscoped, and still runs at the cheap level.
    let unscoped = ScyllaRequest::read(PARTITION, ()).track("v");
    let read = call(&mut service, &Session::new(), unscoped).await.unwrap();
    assert_eq!(read.visibility(), &Visibility::Unscoped);
    // A statement that carries its own consistency keeps it.
    let mut own = scylla::statement::Statement::new(PARTITION);
    own.set_consistency(Consistency::One);
    let read = ScyllaRequest::read(own, ()).partition(b"r7d").track("v");
    call(&mut service, &Session::new(), read).await.unwrap();
    assert_eq!(
        consistencies(&mut node, RequestOpcode::Query),
        [
            Consistency::LocalOne,
            Consistency::LocalOne,
            Consistency::One
        ]
    );

    let untracked = ScyllaRequest::read(PARTITION, ()).row(b"r7d", 1i32.to_be_bytes());
    let error = call(&mut service, &session, untracked).await.unwrap_err();
    let source = error.store_error().expect("a store error");
    assert!(matches!(source, ScyllaError::Untracked), "{error:?}");
    assert!(source.is_configuration());
    assert_eq!(source.class(), ryw::adapter::ErrorClass::Permanent);
    assert!(node.seen().is_empty(), "nothing was sent");

    let wrong = ScyllaRequest::read(PARTITION, ())
        .partition(b"r7d")
        .track("body");
    let error = call(&mut service, &Session::new(), wrong)
        .await
        .unwrap_err();
    let source = error.store_error().expect("a store error");
    assert!(
        matches!(source, ScyllaError::TrackedColumnNotSelected { column } if column == "body"),
        "{error:?}"
    );
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A property: two writers into one partition, a replica that drops or delays each mutation
// independently, and the session's reads of rows and of the partition. No `Guaranteed` read
// misses a row the session wrote.

/// One partition's cells: `ck -> (v, write time)`, last write wins per cell.
#[derive(Clone, Debug, Default)]
struct Cells(BTreeMap<i32, (String, i64)>);

impl Cells {
    fn apply(&mut self, ck: i32, v: &str, t: i64) {
        let cell = self
            .0
            .entry(ck)
            .or_insert_with(|| (String::new(), i64::MIN));
        if t >= cell.1 {
            *cell = (v.to_owned(), t);
        }
    }
}

/// The cluster the scripted node plays: the quorum's view (every acknowledged mutation) and one
/// replica's, which gets each mutation now, later, or not at all.
#[derive(Default)]
struct Cluster {
    quorum: Cells,
    replica: Cells,
    /// Mutations on their way to the replica: (operations left before delivery, ck, v, t).
    in_flight: Vec<(u8, i32, String, i64)>,
    /// What happens to each next session mutation on the replica (0 = now, 255 = never, n =
    /// after n operations); popped from the front.
    fates: Vec<u8>,
}

impl Cluster {
    fn mutate(&mut self, ck: i32, v: &str, t: i64, fate: u8) {
        self.quorum.apply(ck, v, t);
        match fate {
            0 => self.replica.apply(ck, v, t),
            255 => {}
            n => self.in_flight.push((n, ck, v.to_owned(), t)),
        }
    }

    /// One operation passes: delayed mutations move closer to the replica.
    fn tick(&mut self) {
        let mut left = Vec::new();
        for (n, ck, v, t) in std::mem::take(&mut self.in_flight) {
            if n <= 1 {
                self.replica.apply(ck, &v, t);
            } else {
                left.push((n - 1, ck, v, t));
            }
        }
        self.in_flight = left;
    }
}

fn parse_insert(text: &str) -> Option<(i32, String)> {
    // INSERT INTO app.kv (pk, ck, v) VALUES ('p', {ck}, '{v}')
    let values = text.split("VALUES (").nth(1)?;
    let mut parts = values.trim_end_matches(')').split(", ");
    let _pk = parts.next()?;
    let ck = parts.next()?.parse().ok()?;
    let v = parts.next()?.trim_matches('\'').to_owned();
    Some((ck, v))
}

fn respond(cluster: Arc<Mutex<Cluster>>) -> (Respond, Respond) {
    let writes = cluster.clone();
    let on_insert: Respond = Arc::new(move |seen: &Seen| {
        let mut c = writes.lock().unwrap();
        if let (Some((ck, v)), Some(t)) = (parse_insert(&seen.text), seen.timestamp) {
            let fate = if c.fates.is_empty() {
                0
            } else {
                c.fates.remove(0)
            };
            c.mutate(ck, &v, t, fate);
        }
        Reply::Void
    });
    let on_select: Respond = Arc::new(move |seen: &Seen| {
        let c = cluster.lock().unwrap();
        let view = match seen.consistency {
            Some(Consistency::LocalOne) => &c.replica,
            _ => &c.quorum,
        };
        let only: Option<i32> = seen
            .text
            .split("AND ck = ")
            .nth(1)
            .and_then(|ck| ck.trim().parse().ok());
        Reply::Rows {
            columns: vec![
                ("pk", CqlType::Text),
                ("ck", CqlType::Int),
                ("v", CqlType::Text),
                ("writetime(v)", CqlType::BigInt),
            ],
            rows: view
                .0
                .iter()
                .filter(|(ck, _)| only.is_none_or(|o| o == **ck))
                .map(|(ck, (v, t))| {
                    vec![
                        Cell::Text("p"),
                        Cell::Int(*ck),
                        Cell::String(v.clone()),
                        Cell::BigInt(*t),
                    ]
                })
                .collect(),
        }
    });
    (on_insert, on_select)
}

#[derive(Clone, Debug)]
enum Op {
    /// The session writes row `ck`, scoped as a row or as the partition.
    SessionWrite { ck: i32, as_row: bool, fate: u8 },
    /// Another client writes row `ck`, `skew` µs after the session's clock (may be negative).
    OtherWrite { ck: i32, skew: i64, fate: u8 },
    /// The session reads row `ck`, or the whole partition.
    Read { ck: Option<i32> },
}

fn fate() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 2 => Just(255u8), 2 => 1u8..4]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0i32..4, any::<bool>(), fate()).prop_map(|(ck, as_row, fate)| Op::SessionWrite {
            ck,
            as_row,
            fate
        }),
        (0i32..4, -20i64..40, fate()).prop_map(|(ck, skew, fate)| Op::OtherWrite {
            ck,
            skew,
            fate
        }),
        prop::option::of(0i32..4).prop_map(|ck| Op::Read { ck }),
    ]
}

#[test]
fn no_guaranteed_read_misses_a_row_the_session_wrote() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let (on_insert, on_select) = respond(cluster.clone());
    let (node, driver) = runtime.block_on(async {
        let node = ScriptedScyllaNode::start(vec![
            Script::query("INSERT INTO app.kv", vec![Reply::Dynamic(on_insert)]),
            Script::query("FROM app.kv", vec![Reply::Dynamic(on_select)]),
        ])
        .await;
        let driver = Arc::new(node.session().await);
        (node, driver)
    });
    let cases: u32 = std::env::var("RYW_SCYLLA_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let guaranteed = Arc::new(Mutex::new((0usize, 0usize)));
    let tally = guaranteed.clone();
    let result = runner.run(
        &(prop::collection::vec(op(), 1..24), any::<bool>()),
        |(ops, default_config)| {
            *cluster.lock().unwrap() = Cluster::default();
            let config = if default_config {
                FenceConfig::default()
            } else {
                FenceConfig::verify_then_escalate(0, Duration::ZERO)
            };
            let mut service = ServiceBuilder::new()
                .layer(ReadYourWritesLayer::new(ScyllaAdapter::new()).fence(config))
                .service(ScyllaService::new(driver.clone()));
            let session = Session::new();
            // What the session wrote and was told was applied: ck -> its write time.
            let mut mine: BTreeMap<i32, i64> = BTreeMap::new();
            let mut n = 0u32;
            for op in ops {
                cluster.lock().unwrap().tick();
                match op {
                    Op::SessionWrite { ck, as_row, fate } => {
                        n += 1;
                        let text = format!(
                            "INSERT INTO app.kv (pk, ck, v) VALUES ('p', {ck}, 's{n}')"
                        );
                        let write = ScyllaRequest::write(text.as_str(), ());
                        let write = if as_row {
                            write.row(b"p", ck.to_be_bytes())
                        } else {
                            write.partition(b"p")
                        };
                        cluster.lock().unwrap().fates.push(fate);
                        let done = runtime
                            .block_on(call_on(&mut service, &session, write))
                            .expect("the write is acknowledged");
                        let _ = done;
                        let t = session.snapshot().clock().get() as i64;
                        mine.insert(ck, t);
                    }
                    Op::OtherWrite { ck, skew, fate } => {
                        n += 1;
                        let t = session.snapshot().clock().get() as i64 + skew;
                        cluster
                            .lock()
                            .unwrap()
                            .mutate(ck, &format!("o{n}"), t, fate);
                    }
                    Op::Read { ck } => {
                        let request = match ck {
                            Some(ck) => ScyllaRequest::read(
                                format!(
                                    "SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = 'p' AND ck = {ck}"
                                )
                                .as_str(),
                                (),
                            )
                            .row(b"p", ck.to_be_bytes()),
                            None => ScyllaRequest::read(
                                "SELECT pk, ck, v, WRITETIME(v) FROM app.kv WHERE pk = 'p'",
                                (),
                            )
                            .partition(b"p"),
                        }
                        .track("v");
                        let read = runtime
                            .block_on(call_on(&mut service, &session, request))
                            .expect("the read answers");
                        if !read.visibility().is_guaranteed() {
                            continue;
                        }
                        tally.lock().unwrap().0 += 1;
                        let shown: BTreeMap<i32, i64> = values(&read)
                            .into_iter()
                            .map(|(ck, _, t)| (ck, t))
                            .collect();
                        for (row, t) in &mine {
                            if ck.is_some_and(|ck| ck != *row) {
                                continue;
                            }
                            let seen = shown.get(row).copied();
                            prop_assert!(
                                seen.is_some_and(|s| s >= *t),
                                "a {:?} read of {:?} missed the session's row {} (written at {}): \
                                 it showed {:?}",
                                read.visibility(),
                                ck,
                                row,
                                t,
                                shown
                            );
                        }
                    }
                }
            }
            Ok(())
        },
    );
    runtime.block_on(node.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
    let (guaranteed, _) = *guaranteed.lock().unwrap();
    println!("{cases} histories, {guaranteed} guaranteed reads checked");
    assert!(guaranteed > cases as usize, "the property checked reads");
}

async fn call_on(
    service: &mut ryw::ReadYourWrites<ScyllaService, ScyllaAdapter>,
    session: &Session,
    request: ScyllaRequest,
) -> Result<ryw::SessionResponse<ryw_scylla::ScyllaResponse>, ryw::Error<ScyllaError>> {
    service
        .ready()
        .await
        .expect("ready")
        .call(session.request(request))
        .await
}
