//! Paged reads: every page is one request through the session layer, fenced by the rules of its
//! scopes, and the paging state is carried from page to page (and kept across a page's re-read).
//!
//! The scripted node plays a partition `u1` of `app.feed (user_id, post_id, body)` as two views:
//! the quorum's, and a lagging replica's (answering `LOCAL_ONE`) that missed the session's write
//! of post 3 yet holds a later write of post 4. Pages are cut by position, as Scylla cuts them:
//! the paging state names the last post returned (and which view returned it), and either view
//! resumes after it.

use crate::scripted_node::{
    Cell, CqlType, FixedClock, Reply, Script, ScriptedScyllaNode, Seen, NOW,
};
use crate::{call, stack, Stack};
use ryw::fence::FencePath;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaResponse, ScyllaService};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::Consistency;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

const NOW_I: i64 = NOW as i64;

/// `(post_id, body, write time)` of the partition as the quorum holds it: the session wrote post
/// 1 (at `NOW`) and post 3 (at `NOW + 1`); someone else wrote post 4 after both.
fn quorum_view() -> Vec<(i32, &'static str, i64)> {
    vec![
        (1, "mine 1", NOW_I),
        (2, "two", NOW_I - 8_000),
        (3, "mine 3", NOW_I + 1),
        (4, "four", NOW_I + 7),
        (5, "five", NOW_I - 2_000),
    ]
}

/// The lagging replica: it holds the session's write of post 1 and the later write of post 4,
/// but missed the session's write of post 3 (it still holds a draft).
fn lagging_view() -> Vec<(i32, &'static str, i64)> {
    vec![
        (1, "mine 1", NOW_I),
        (2, "two", NOW_I - 8_000),
        (3, "draft 3", NOW_I - 6_000),
        (4, "four", NOW_I + 7),
        (5, "five", NOW_I - 2_000),
    ]
}

/// The paging state a view returns after `post`: `after:<post>;by=<view>`.
fn state_after(post: i32, view: &str) -> Vec<u8> {
    format!("after:{post};by={view}").into_bytes()
}

/// The post a paging state resumes after.
fn resumes_after(state: &[u8]) -> i32 {
    let text = std::str::from_utf8(state).expect("a paging state of this script");
    text.strip_prefix("after:")
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("a paging state of this script")
}

/// One page of the partition, as the view the consistency reaches serves it: the rows after the
/// paging state (only `post_id = N` when the statement names one row), at most the page size;
/// a full page says more may follow (Scylla cannot know without reading on, so the last page
/// can be empty).
fn serve(seen: &Seen) -> Reply {
    let (view, name) = match seen.consistency {
        Some(Consistency::LocalOne) => (lagging_view(), "one"),
        _ => (quorum_view(), "quorum"),
    };
    let only = seen
        .text
        .split("post_id = ")
        .nth(1)
        .and_then(|n| n.trim().parse::<i32>().ok());
    let after = seen.paging_state.as_deref().map_or(0, resumes_after);
    let size = seen.page_size.filter(|n| *n > 0).unwrap_or(i32::MAX) as usize;
    let rows: Vec<_> = view
        .into_iter()
        .filter(|(post, _, _)| *post > after && only.is_none_or(|o| o == *post))
        .take(size)
        .collect();
    let paging_state = (rows.len() == size).then(|| state_after(rows[rows.len() - 1].0, name));
    Reply::Page {
        columns: vec![
            ("post_id", CqlType::Int),
            ("body", CqlType::Text),
            ("writetime(body)", CqlType::BigInt),
        ],
        rows: rows
            .into_iter()
            .map(|(post, body, t)| vec![Cell::Int(post), Cell::Text(body), Cell::BigInt(t)])
            .collect(),
        paging_state,
    }
}

fn feed_node_script(extra: Vec<Script>) -> Vec<Script> {
    let mut script = extra;
    script.push(Script::query("INSERT INTO app.feed", vec![Reply::Void]));
    script.push(Script::query(
        "FROM app.feed",
        vec![Reply::Dynamic(Arc::new(serve))],
    ));
    script
}

fn write(post: i32) -> ScyllaRequest {
    ScyllaRequest::write(
        format!(
            "INSERT INTO app.feed (user_id, post_id, body) VALUES ('u1', {post}, 'mine {post}')"
        )
        .as_str(),
        (),
    )
    .row(b"u1", post.to_be_bytes())
}

/// The partition's read, two rows a page.
fn feed() -> ScyllaRequest {
    ScyllaRequest::read(
        "SELECT post_id, body, WRITETIME(body) FROM app.feed WHERE user_id = 'u1'",
        (),
    )
    .partition(b"u1")
    .track("body")
    .page_size(2)
}

/// The read of one post, one row a page.
fn post(post: i32) -> ScyllaRequest {
    ScyllaRequest::read(
        format!(
            "SELECT post_id, body, WRITETIME(body) FROM app.feed WHERE user_id = 'u1' AND post_id = {post}"
        )
        .as_str(),
        (),
    )
    .row(b"u1", post.to_be_bytes())
    .track("body")
    .page_size(1)
}

fn page_rows(response: &ScyllaResponse) -> Vec<(i32, String)> {
    response
        .rows()
        .expect("a page has rows")
        .rows::<(i32, String, i64)>()
        .expect("the page's columns")
        .map(|row| row.map(|(post, body, _)| (post, body)).expect("a row"))
        .collect()
}

/// Reads every page of `first` through the stack: the rows in order, and each page's status.
async fn read_all(
    service: &mut Stack,
    session: &Session,
    first: ScyllaRequest,
) -> (Vec<(i32, String)>, Vec<Visibility>) {
    let (mut rows, mut statuses) = (Vec::new(), Vec::new());
    let mut next = Some(first);
    while let Some(request) = next.take() {
        assert!(statuses.len() < 10, "the read never ends: {rows:?}");
        let page = call(service, session, request.clone())
            .await
            .expect("a page");
        rows.extend(page_rows(page.get_ref()));
        statuses.push(page.visibility().clone());
        next = request.next_page(page.get_ref());
    }
    (rows, statuses)
}

fn all_posts_with(post3: &str) -> Vec<(i32, String)> {
    quorum_view()
        .into_iter()
        .map(|(post, body, _)| (post, if post == 3 { post3 } else { body }.to_owned()))
        .collect()
}

/// Once the session wrote to the partition, every page goes to `LOCAL_QUORUM` up front, with
/// the page size and the paging state of the page before it; a page retried after a read
/// timeout resumes from the same state. A session that never wrote there reads its first page at
/// `LOCAL_ONE` and, having now seen the partition, the next ones at `LOCAL_QUORUM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_is_fenced_and_carries_the_paging_state_of_the_page_before() {
    let mut node = ScriptedScyllaNode::start(feed_node_script(vec![
        // The second page of the session's read times out once.
        Script::query(
            "after:2;by=quorum",
            vec![Reply::ReadTimeout, Reply::Dynamic(Arc::new(serve))],
        ),
    ]))
    .await;
    let mut service = stack(&node).await;
    let session = Session::new();
    call(&mut service, &session, write(1)).await.unwrap();
    call(&mut service, &session, write(3)).await.unwrap();
    let _ = node.seen();

    let (rows, statuses) = read_all(&mut service, &session, feed()).await;
    assert_eq!(rows, all_posts_with("mine 3"), "every row once, in order");
    assert_eq!(
        statuses,
        vec![Visibility::Guaranteed(FencePath::Escalated); 3]
    );
    let seen = node.seen();
    let frames: Vec<_> = seen
        .iter()
        .map(|s| (s.consistency, s.page_size, s.paging_state.clone()))
        .collect();
    let quorum = Some(Consistency::LocalQuorum);
    assert_eq!(
        frames,
        vec![
            (quorum, Some(2), None),
            (quorum, Some(2), Some(state_after(2, "quorum"))),
            (quorum, Some(2), Some(state_after(2, "quorum"))),
            (quorum, Some(2), Some(state_after(4, "quorum"))),
        ],
        "{seen:#?}"
    );

    // Another session, which never wrote to the partition nor read it.
    let stranger = Session::new();
    let (rows, statuses) = read_all(&mut service, &stranger, feed()).await;
    assert_eq!(rows, all_posts_with("mine 3"), "every row once, in order");
    assert_eq!(
        statuses,
        vec![
            Visibility::Guaranteed(FencePath::Unfenced),
            Visibility::Guaranteed(FencePath::Escalated),
            Visibility::Guaranteed(FencePath::Escalated),
        ]
    );
    let frames: Vec<_> = node
        .seen()
        .iter()
        .map(|s| (s.consistency, s.paging_state.clone()))
        .collect();
    assert_eq!(
        frames,
        vec![
            (Some(Consistency::LocalOne), None),
            // The lagging replica's paging state resumes at the quorum.
            (quorum, Some(state_after(2, "one"))),
            (quorum, Some(state_after(4, "quorum"))),
        ]
    );
    node.stop().await;
}

/// The page that holds the session's write of post 3 is stale on the lagging replica, and its
/// newest row (post 4, written later by someone else) is newer than every write of the session:
/// no write time on the page shows that post 3 is missing. Read plainly at `LOCAL_ONE`, the page
/// returns the draft; through the layer, the page goes to `LOCAL_QUORUM` and returns the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_page_never_reaches_the_session() {
    let mut node = ScriptedScyllaNode::start(feed_node_script(vec![])).await;
    let driver = Arc::new(node.session().await);
    let mut service: Stack = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
        )
        .service(ScyllaService::new(driver.clone()));
    let session = Session::new();
    call(&mut service, &session, write(1)).await.unwrap();
    call(&mut service, &session, write(3)).await.unwrap();

    // Without the layer: the second page, at LOCAL_ONE, misses the session's write.
    let mut plain = scylla::statement::Statement::new(
        "SELECT post_id, body, WRITETIME(body) FROM app.feed WHERE user_id = 'u1'",
    );
    plain.set_consistency(Consistency::LocalOne);
    plain.set_page_size(2);
    let (result, _) = driver
        .query_single_page(
            plain,
            (),
            PagingState::new_from_raw_bytes(state_after(2, "one")),
        )
        .await
        .unwrap();
    let stale: Vec<(i32, String, i64)> = result
        .into_rows_result()
        .unwrap()
        .rows::<(i32, String, i64)>()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stale[0].1, "draft 3", "the replica lags");
    assert!(
        stale.iter().map(|r| r.2).max() > Some(NOW_I + 1),
        "its newest row is newer than the session's writes"
    );
    let _ = node.seen();

    // Through the layer, from the same paging state.
    let page = feed().page(PagingState::new_from_raw_bytes(state_after(2, "one")));
    let response = call(&mut service, &session, page).await.unwrap();
    assert_eq!(
        page_rows(response.get_ref()),
        vec![(3, "mine 3".to_owned()), (4, "four".to_owned())]
    );
    assert_eq!(
        response.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    let consistencies: Vec<_> = node.seen().iter().map(|s| s.consistency).collect();
    assert_eq!(consistencies, vec![Some(Consistency::LocalQuorum)]);
    node.stop().await;
}

/// A page of one row is verified by the row's write time: the lagging replica's copy of post 1
/// shows the session's write (one `LOCAL_ONE` read); its copy of post 3 is older than the
/// session's write, so that page is read again at `LOCAL_QUORUM` from the same paging state, and
/// the response, and the next page, carry the quorum's paging state, not the discarded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_row_page_is_reread_from_the_same_paging_state() {
    let mut node = ScriptedScyllaNode::start(feed_node_script(vec![])).await;
    let mut service = stack(&node).await;
    let session = Session::new();
    call(&mut service, &session, write(1)).await.unwrap();
    call(&mut service, &session, write(3)).await.unwrap();
    let _ = node.seen();

    let first = call(&mut service, &session, post(1)).await.unwrap();
    assert_eq!(
        first.visibility(),
        &Visibility::Guaranteed(FencePath::Verified)
    );
    assert_eq!(page_rows(first.get_ref()), vec![(1, "mine 1".to_owned())]);
    let seen = node.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].consistency, Some(Consistency::LocalOne));
    assert_eq!(seen[0].page_size, Some(1));

    let request = post(3);
    let response = call(&mut service, &session, request.clone()).await.unwrap();
    assert_eq!(
        response.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(
        page_rows(response.get_ref()),
        vec![(3, "mine 3".to_owned())]
    );
    let Some(PagingStateResponse::HasMorePages { state }) = response.get_ref().paging_state()
    else {
        panic!("{:?}", response.get_ref().paging_state());
    };
    assert_eq!(
        state.as_bytes_slice().map(|b| b.to_vec()),
        Some(state_after(3, "quorum")),
        "the paging state of the read returned"
    );
    let frames: Vec<_> = node
        .seen()
        .iter()
        .map(|s| (s.consistency, s.paging_state.clone()))
        .collect();
    assert_eq!(
        frames,
        vec![
            (Some(Consistency::LocalOne), None),
            (Some(Consistency::LocalQuorum), None),
        ],
        "the re-read starts where the stale page started"
    );

    // The next page resumes after the quorum's row. It is empty: a cheap empty page cannot show
    // the row, so it too is read again, from the same state.
    let next = request.next_page(response.get_ref()).expect("a next page");
    let last = call(&mut service, &session, next).await.unwrap();
    assert!(page_rows(last.get_ref()).is_empty());
    assert!(!last.get_ref().has_more_pages());
    assert!(request.next_page(last.get_ref()).is_none());
    let frames: Vec<_> = node
        .seen()
        .iter()
        .map(|s| (s.consistency, s.paging_state.clone()))
        .collect();
    assert_eq!(
        frames,
        vec![
            (Some(Consistency::LocalOne), Some(state_after(3, "quorum"))),
            (
                Some(Consistency::LocalQuorum),
                Some(state_after(3, "quorum"))
            ),
        ]
    );
    node.stop().await;
}

/// A page size that is not positive, and a paged write, are configuration errors: nothing is
/// sent (the driver would panic on such a page size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paging_is_a_typed_error_and_nothing_is_sent() {
    let mut node = ScriptedScyllaNode::start(feed_node_script(vec![])).await;
    let mut service = stack(&node).await;
    let session = Session::new();
    for request in [
        feed().page_size(0),
        feed().page_size(-3),
        write(1).page(PagingState::start()),
    ] {
        let error = call(&mut service, &session, request).await.unwrap_err();
        let source = error.store_error().expect("the store's error");
        assert!(source.is_configuration(), "{source:?}");
        assert!(
            matches!(source, ryw_scylla::ScyllaError::InvalidPaging { .. }),
            "{source:?}"
        );
    }
    assert!(node.seen().is_empty(), "nothing was sent");
    node.stop().await;
}

/// A prepared statement pages through EXECUTE frames the same way: each frame carries the page
/// size and the paging state of the page before, at the consistency the page's fence chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_read_pages_through_execute_frames() {
    let mut node = ScriptedScyllaNode::start(feed_node_script(vec![
        Script::prepare(
            "SELECT post_id, body",
            Reply::Prepared {
                id: b"ryw-feed-page",
                markers: vec![("user_id", CqlType::Text)],
            },
        ),
        Script::execute("ryw-feed-page", vec![Reply::Dynamic(Arc::new(serve))]),
    ]))
    .await;
    let driver = Arc::new(node.session().await);
    let prepared = driver
        .prepare("SELECT post_id, body, WRITETIME(body) FROM app.feed WHERE user_id = ?")
        .await
        .unwrap();
    let mut service: Stack = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(ScyllaAdapter::new())
                .clock(FixedClock(NOW))
                .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO)),
        )
        .service(ScyllaService::new(driver));
    let session = Session::new();
    call(&mut service, &session, write(3)).await.unwrap();
    let _ = node.seen();

    let feed = ScyllaRequest::read(prepared, ("u1",))
        .partition(b"u1")
        .track("body")
        .page_size(3);
    let (rows, statuses) = read_all(&mut service, &session, feed).await;
    assert_eq!(rows, all_posts_with("mine 3"), "every row once, in order");
    assert_eq!(
        statuses,
        vec![Visibility::Guaranteed(FencePath::Escalated); 2]
    );
    let frames: Vec<_> = node
        .seen()
        .iter()
        .map(|s| (s.opcode, s.consistency, s.page_size, s.paging_state.clone()))
        .collect();
    let execute = scylla_proxy::RequestOpcode::Execute;
    let quorum = Some(Consistency::LocalQuorum);
    assert_eq!(
        frames,
        vec![
            (execute, quorum, Some(3), None),
            (execute, quorum, Some(3), Some(state_after(3, "quorum"))),
        ]
    );
    node.stop().await;
}
