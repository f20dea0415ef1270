//! The tower `Service` over the driver's `Session`.

use crate::error::ScyllaError;
use crate::request::{RequestKind, ScyllaRequest, ScyllaStatement};
use ryw::telemetry::{DbCall, Observer};
use scylla::client::session::Session;
use scylla::deserialize::row::ColumnIterator;
use scylla::policies::retry::{DefaultRetryPolicy, RetryPolicy};
use scylla::response::query_result::{QueryResult, QueryRowsResult};
use scylla::response::PagingStateResponse;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, Row};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What a request returned.
#[derive(Debug)]
pub struct ScyllaResponse {
    rows: Option<QueryRowsResult>,
    writetime: Option<i64>,
    consistency: Option<Consistency>,
    paging_state: Option<PagingStateResponse>,
}

impl ScyllaResponse {
    /// The rows, for a statement that returns rows (deserialize them with
    /// `rows.rows::<(..)>()`).
    pub fn rows(&self) -> Option<&QueryRowsResult> {
        self.rows.as_ref()
    }

    /// Takes the rows out.
    pub fn into_rows(self) -> Option<QueryRowsResult> {
        self.rows
    }

    /// For a read: the largest `WRITETIME` of the tracked column in the rows returned
    /// (microseconds), or `None` when no row had the column set.
    pub fn writetime(&self) -> Option<i64> {
        self.writetime
    }

    /// The consistency the statement ran at (`None`: the driver's default), the same on every
    /// attempt of the driver's: [`ScyllaService`] never lets the driver lower it.
    pub fn consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    /// For a page of a paged read ([`ScyllaRequest::page_size`], [`ScyllaRequest::page`]):
    /// whether more pages follow, and the paging state to resume from
    /// ([`ScyllaRequest::next_page`] builds that request). `None` for an unpaged request.
    ///
    /// A page the session layer read again (escalated to the strong consistency) carries the
    /// paging state of the read it returned, never the one of the attempt it discarded.
    pub fn paging_state(&self) -> Option<&PagingStateResponse> {
        self.paging_state.as_ref()
    }

    /// True for a page after which more pages follow.
    pub fn has_more_pages(&self) -> bool {
        matches!(
            self.paging_state,
            Some(PagingStateResponse::HasMorePages { .. })
        )
    }
}

impl ScyllaRequest {
    /// The request for the page after `response` (a response to this paged read): the same
    /// statement, values, scopes and page size, resuming at the paging state `response` carries.
    /// `None` when `response` was the last page, or is not a page.
    pub fn next_page(&self, response: &ScyllaResponse) -> Option<ScyllaRequest> {
        let PagingStateResponse::HasMorePages { state } = response.paging_state()? else {
            return None;
        };
        self.resumed_at(state)
    }
}

/// A tower `Service<ScyllaRequest>` over a shared driver `Session`. Every attempt runs with the
/// consistency and timestamp the request carries, so a retry (the driver's or ryw's) sends the
/// same timestamp.
///
/// Every statement runs under the driver's [`DefaultRetryPolicy`], whatever retry policy the
/// driver session or the statement was given: a policy that lowers the consistency on retry
/// (`DowngradingConsistencyRetryPolicy`) would answer a read the layer sent to `LOCAL_QUORUM` from
/// one lagging replica, or acknowledge a write only one replica holds, and the layer would take
/// either for strong. The session layer retries with its own policy.
///
/// # Clone
///
/// Cheap: the session is shared.
#[derive(Clone)]
pub struct ScyllaService {
    session: Arc<Session>,
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for ScyllaService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaService").finish_non_exhaustive()
    }
}

impl ScyllaService {
    /// A service over `session`.
    pub fn new(session: Arc<Session>) -> Self {
        ScyllaService {
            session,
            observer: None,
        }
    }

    /// Reports every request to the cluster to `observer` ([`Observer::db_call`], with
    /// `db.system.name` `cassandra` (ScyllaDB speaks CQL), the statement's command (`SELECT`,
    /// `INSERT`, ..., or `BATCH`), `cassandra.consistency.level` and the error type of a
    /// failure). `ryw-otel` records them as `db.client.operation.duration`.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The driver session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<ScyllaResponse, ScyllaError>> + Send>>;

impl tower::Service<ScyllaRequest> for ScyllaService {
    type Response = ScyllaResponse;
    type Error = ScyllaError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ScyllaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ScyllaRequest) -> BoxFuture {
        if let RequestKind::Read { track } = &request.kind {
            if track.is_empty() && !request.scopes.is_empty() {
                return Box::pin(std::future::ready(Err(ScyllaError::Untracked)));
            }
        }
        if let Err(error) = check_paging(&request) {
            return Box::pin(std::future::ready(Err(error)));
        }
        if let Some(clock) = request.stamp.map(|s| s.timestamp.get()) {
            if matches!(request.kind, RequestKind::Write) && i64::try_from(clock).is_err() {
                return Box::pin(std::future::ready(Err(ScyllaError::ClockExhausted {
                    clock,
                })));
            }
        }
        let session = self.session.clone();
        if !DbCall::wanted(self.observer.as_ref()) {
            return Box::pin(async move { execute(&session, request).await });
        }
        let call = DbCall::new("cassandra", command(&request.statement))
            .consistency_level(request.consistency.map(consistency_name))
            .start(self.observer.clone());
        Box::pin(call.run(
            async move { execute(&session, request).await },
            ScyllaError::kind,
        ))
    }
}

/// A paged request must be a read of one statement with a positive page size (the driver
/// panics on any other).
fn check_paging(request: &ScyllaRequest) -> Result<(), ScyllaError> {
    let Some(paging) = &request.paging else {
        return Ok(());
    };
    if !matches!(request.kind, RequestKind::Read { .. }) {
        return Err(ScyllaError::InvalidPaging {
            reason: "only a read can be paged",
        });
    }
    if matches!(request.statement, ScyllaStatement::Batch(_)) {
        return Err(ScyllaError::InvalidPaging {
            reason: "a batch cannot be paged",
        });
    }
    if paging.size.is_some_and(|rows| rows <= 0) {
        return Err(ScyllaError::InvalidPaging {
            reason: "the page size must be positive",
        });
    }
    Ok(())
}

/// The statement's CQL command (its first word, upper-cased: `SELECT`, `INSERT`, ...), or
/// `BATCH`.
fn command(statement: &ScyllaStatement) -> &'static str {
    let text = match statement {
        ScyllaStatement::Query(s) => s.contents.as_str(),
        ScyllaStatement::Prepared(p) => p.get_statement(),
        ScyllaStatement::Batch(_) => return "BATCH",
    };
    let word = text.split_whitespace().next().unwrap_or("");
    ["SELECT", "INSERT", "UPDATE", "DELETE"]
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(word))
        .unwrap_or("OTHER")
}

/// The consistency level as the conventions write it (`local_quorum`).
fn consistency_name(level: Consistency) -> &'static str {
    match level {
        Consistency::Any => "any",
        Consistency::One => "one",
        Consistency::Two => "two",
        Consistency::Three => "three",
        Consistency::Quorum => "quorum",
        Consistency::All => "all",
        Consistency::LocalQuorum => "local_quorum",
        Consistency::EachQuorum => "each_quorum",
        Consistency::LocalOne => "local_one",
        Consistency::Serial => "serial",
        Consistency::LocalSerial => "local_serial",
    }
}

/// The driver's retry policy for every statement: retries at the same consistency, never lower.
fn retry_policy() -> Arc<dyn RetryPolicy> {
    static POLICY: std::sync::OnceLock<Arc<dyn RetryPolicy>> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| Arc::new(DefaultRetryPolicy::new()))
        .clone()
}

macro_rules! configure {
    ($statement:expr, $request:expr) => {{
        let s = &mut $statement;
        if let Some(c) = $request.consistency {
            s.set_consistency(c);
        }
        s.set_timestamp($request.timestamp());
        s.set_is_idempotent($request.idempotent);
        s.set_retry_policy(Some(retry_policy()));
    }};
}

async fn execute(session: &Session, request: ScyllaRequest) -> Result<ScyllaResponse, ScyllaError> {
    let values: &(dyn SerializeRow + Send + Sync) = &*request.values;
    let mut paging_state = None;
    let result: QueryResult = match (&request.statement, &request.paging) {
        (ScyllaStatement::Query(s), None) => {
            let mut s = s.clone();
            configure!(s, request);
            session.query_unpaged(s, values).await?
        }
        (ScyllaStatement::Prepared(p), None) => {
            let mut p = p.clone();
            configure!(p, request);
            session.execute_unpaged(&p, values).await?
        }
        // One page, resuming at the request's paging state: a read the layer sends again
        // (escalated or retried) sends the same state.
        (ScyllaStatement::Query(s), Some(paging)) => {
            let mut s = s.clone();
            configure!(s, request);
            if let Some(rows) = paging.size {
                s.set_page_size(rows);
            }
            let (result, next) = session
                .query_single_page(s, values, paging.state.clone())
                .await?;
            paging_state = Some(next);
            result
        }
        (ScyllaStatement::Prepared(p), Some(paging)) => {
            let mut p = p.clone();
            configure!(p, request);
            if let Some(rows) = paging.size {
                p.set_page_size(rows);
            }
            let (result, next) = session
                .execute_single_page(&p, values, paging.state.clone())
                .await?;
            paging_state = Some(next);
            result
        }
        (ScyllaStatement::Batch(b), _) => {
            let mut b = b.clone();
            configure!(b, request);
            let values: Vec<&(dyn SerializeRow + Send + Sync)> =
                request.batch_values.iter().map(|v| &**v).collect();
            session.batch(&b, values).await?
        }
    };
    match &request.kind {
        RequestKind::Write => Ok(ScyllaResponse {
            rows: result.into_rows_result().ok(),
            writetime: None,
            consistency: request.consistency,
            paging_state: None,
        }),
        RequestKind::Read { track } => {
            let rows = result
                .into_rows_result()
                .map_err(|e| ScyllaError::Result(format!("a read returned no rows result: {e}")))?;
            let writetime = if track.is_empty() {
                None
            } else {
                max_writetime(&rows, track)?
            };
            Ok(ScyllaResponse {
                rows: Some(rows),
                writetime,
                consistency: request.consistency,
                paging_state,
            })
        }
        RequestKind::Conditional => {
            let rows = result.into_rows_result().map_err(|e| {
                ScyllaError::Result(format!("a conditional write returned no rows: {e}"))
            })?;
            let (applied, current) = applied(&rows)?;
            if applied {
                Ok(ScyllaResponse {
                    rows: Some(rows),
                    writetime: None,
                    consistency: request.consistency,
                    paging_state: None,
                })
            } else {
                Err(ScyllaError::NotApplied { current })
            }
        }
    }
}

fn max_writetime(rows: &QueryRowsResult, track: &str) -> Result<Option<i64>, ScyllaError> {
    let name = format!("writetime({track})");
    let Some((index, _)) = rows.column_specs().get_by_name(&name) else {
        return Err(ScyllaError::TrackedColumnNotSelected {
            column: track.to_owned(),
        });
    };
    // Raw columns: only the write time is decoded, nothing is allocated per row.
    let iter = rows
        .rows::<ColumnIterator<'_, '_>>()
        .map_err(|e| ScyllaError::Result(format!("rows could not be read: {e}")))?;
    let mut max: Option<i64> = None;
    for row in iter {
        let row = row.map_err(|e| ScyllaError::Result(format!("a row could not be read: {e}")))?;
        for column in row {
            let column =
                column.map_err(|e| ScyllaError::Result(format!("a row could not be read: {e}")))?;
            if column.index != index {
                continue;
            }
            if let Some(slice) = column.slice {
                let bytes: [u8; 8] = slice.as_slice().try_into().map_err(|_| {
                    ScyllaError::Result(format!("`{name}` is not a 64-bit write time"))
                })?;
                let t = i64::from_be_bytes(bytes);
                max = Some(max.map_or(t, |m| m.max(t)));
            }
            break;
        }
    }
    Ok(max)
}

fn applied(rows: &QueryRowsResult) -> Result<(bool, Option<Row>), ScyllaError> {
    let Some((index, _)) = rows.column_specs().get_by_name("[applied]") else {
        return Err(ScyllaError::Result(
            "a conditional write returned no `[applied]` column".into(),
        ));
    };
    let mut iter = rows
        .rows::<Row>()
        .map_err(|e| ScyllaError::Result(format!("rows could not be read: {e}")))?;
    let Some(row) = iter.next() else {
        return Err(ScyllaError::Result(
            "a conditional write returned no row".into(),
        ));
    };
    let mut row = row.map_err(|e| ScyllaError::Result(format!("a row could not be read: {e}")))?;
    let applied = matches!(row.columns.get(index), Some(Some(CqlValue::Boolean(true))));
    if index < row.columns.len() {
        row.columns.remove(index);
    }
    let current = (!row.columns.iter().all(Option::is_none)).then_some(row);
    Ok((applied, current))
}
