//! Adversarial scenarios for paged reads on the wire (docs/scylla.md, "Paged reads";
//! docs/guarantees.md): an empty page that is not the last, and a page showing a write time
//! pinned far in the future. Each doc comment states the scenario and what the promise requires.
//!
//! Also tried, and covered by `paging.rs` and `adversary.rs`: an untouched partition's page 1 at
//! LOCAL_ONE, pages 2 and 3 at LOCAL_QUORUM each sending the state of the page before; `next_page`
//! after the last page is `None`; the next write stamped after the page's newest write time; a
//! stale row page re-read at LOCAL_QUORUM from the same state; page sizes 0, -1 and i32::MIN and a
//! paged write refused (`InvalidPaging`) with nothing sent; a row write in page 2's range between
//! pages, then two concurrent page-2 reads, both LOCAL_QUORUM; a page retried after a read timeout
//! and an unavailable error keeps its state and consistency.

use super::{call, stack};
use crate::scripted_node::{Cell, CqlType, Reply, Script, ScriptedScyllaNode, Seen, NOW};
use ryw::Session;
use ryw_scylla::ScyllaRequest;
use scylla::statement::Consistency;
use scylla_proxy::RequestOpcode;
use std::sync::Arc;

/// `app.posts (user_id, post_id)`: the columns every page of the tests returns.
fn columns() -> Vec<(&'static str, CqlType)> {
    vec![
        ("post_id", CqlType::Int),
        ("body", CqlType::Text),
        ("writetime(body)", CqlType::BigInt),
    ]
}

fn row(post: i32, body: &'static str, writetime: i64) -> Vec<Cell> {
    vec![Cell::Int(post), Cell::Text(body), Cell::BigInt(writetime)]
}

fn page(rows: Vec<Vec<Cell>>, next: Option<&[u8]>) -> Reply {
    Reply::Page {
        columns: columns(),
        rows,
        paging_state: next.map(<[u8]>::to_vec),
    }
}

/// A node that acknowledges every INSERT/UPDATE and answers every SELECT with `respond`
/// (which sees the consistency and the paging state sent).
async fn node(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> ScriptedScyllaNode {
    ScriptedScyllaNode::start(vec![
        Script::query("INSERT INTO app.posts", vec![Reply::Void]),
        Script::query("UPDATE app.posts", vec![Reply::Void]),
        Script::query("SELECT post_id", vec![Reply::Dynamic(Arc::new(respond))]),
    ])
    .await
}

fn state(seen: &Seen) -> Option<&[u8]> {
    seen.paging_state.as_deref()
}

/// The session writes row (u1, 5), then reads that row, paged (`.row(b"u1", 5).page_size(1)`).
/// The first page comes back empty but not last (Scylla ends a page early, for example at its
/// tombstone limit, and says more pages follow); the row is on page 2. The cheap page is re-read
/// at LOCAL_QUORUM, which is empty and not last too. A page with no row and more to come cannot
/// show the row: it is not `Guaranteed` (an escalated read showing no write time is otherwise
/// taken for a deleted row, and the caller would conclude the row it just wrote is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_that_is_not_the_last_is_not_guaranteed_for_the_row() {
    let mut node = node(|seen| match state(seen) {
        // Page 1, at either consistency: empty, more pages follow.
        None => page(vec![], Some(b"before-row-5")),
        // Page 2: a lagging replica's old copy, the quorum's fresh one.
        Some(_) if seen.consistency == Some(Consistency::LocalOne) => {
            page(vec![row(5, "old", NOW as i64 - 5_000)], None)
        }
        Some(_) => page(vec![row(5, "mine", NOW as i64)], None),
    })
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    let write = ScyllaRequest::write(
        "INSERT INTO app.posts (user_id, post_id, body) VALUES ('u1', 5, 'mine')",
        (),
    )
    .row(b"u1", 5i32.to_be_bytes());
    call(&mut service, &session, write).await.unwrap();

    let read = ScyllaRequest::read(
        "SELECT post_id, body, WRITETIME(body) FROM app.posts WHERE user_id = 'u1' AND post_id = 5",
        (),
    )
    .row(b"u1", 5i32.to_be_bytes())
    .track("body")
    .page_size(1);
    let first = call(&mut service, &session, read.clone()).await.unwrap();
    let seen = node.seen();
    let wire: Vec<_> = seen
        .iter()
        .filter(|s| s.opcode == RequestOpcode::Query && s.text.starts_with("SELECT"))
        .map(|s| (s.consistency, s.paging_state.clone()))
        .collect();
    assert_eq!(
        wire,
        vec![
            (Some(Consistency::LocalOne), None),
            (Some(Consistency::LocalQuorum), None)
        ],
        "page 1 is read cheaply, then re-read at LOCAL_QUORUM from the same (start) state"
    );
    assert_eq!(first.get_ref().rows().map(|r| r.rows_num()), Some(0));
    assert!(first.get_ref().has_more_pages(), "page 1 says more follow");
    assert!(
        !first.visibility().is_guaranteed(),
        "an empty page that is not the last cannot show row (u1, 5) written at {NOW}, yet it is \
         {:?}",
        first.visibility()
    );
    node.stop().await;
}

/// The session reads one page of partition u9 holding another client's row written `USING
/// TIMESTAMP` i64::MAX - 1 (a "pin this row" trick, or a buggy client); its hybrid clock adopts
/// that write time (writes-follow-reads). It then writes row (u1, 1) twice. Writes carry the
/// session's clock, monotonic per session: the first goes out at i64::MAX, after the pinned row;
/// the second has no later CQL timestamp and is refused (`ScyllaError::ClockExhausted`, nothing
/// sent), never sent with the same timestamp as the first (Scylla would then keep the larger
/// value of the two, possibly the earlier write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_showing_a_far_future_write_time_does_not_make_two_writes_share_a_timestamp() {
    const PINNED: i64 = i64::MAX - 1;
    let mut node = node(|seen| {
        if seen.text.contains("'u9'") {
            page(vec![row(1, "pinned", PINNED)], None)
        } else {
            // Partition u1 at the quorum: both writes of the session carry i64::MAX; Scylla
            // keeps the larger value of a tie.
            page(vec![row(1, "zzz", i64::MAX)], None)
        }
    })
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();

    let other = ScyllaRequest::read(
        "SELECT post_id, body, WRITETIME(body) FROM app.posts WHERE user_id = 'u9'",
        (),
    )
    .partition(b"u9")
    .track("body")
    .page_size(100);
    let seen_page = call(&mut service, &session, other).await.unwrap();
    assert!(seen_page.visibility().is_guaranteed());

    // The first write is ordered after the pinned row (i64::MAX); the second has no timestamp
    // left: refused with a typed error, nothing sent, rather than sharing i64::MAX.
    let mut outcomes = Vec::new();
    for body in ["zzz", "aaa"] {
        let write = ScyllaRequest::write(
            format!("UPDATE app.posts SET body = '{body}' WHERE user_id = 'u1' AND post_id = 1")
                .as_str(),
            (),
        )
        .row(b"u1", 1i32.to_be_bytes());
        outcomes.push(call(&mut service, &session, write).await);
    }
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let refused = outcomes[1].as_ref().unwrap_err();
    assert!(
        matches!(
            refused.store_error(),
            Some(ryw_scylla::ScyllaError::ClockExhausted { .. })
        ) && !refused.may_have_applied(),
        "{refused}"
    );
    let writes: Vec<Option<i64>> = node
        .seen()
        .iter()
        .filter(|s| s.text.starts_with("UPDATE"))
        .map(|s| s.timestamp)
        .collect();
    assert_eq!(
        writes,
        [Some(i64::MAX)],
        "one write sent, after the pinned row"
    );
    node.stop().await;
}
