//! What goes into the ScyllaDB service: a statement, its bound values, and what the session layer
//! needs to know about it (read or write, the partitions it touches, whether it is idempotent).

use ryw::stamp::Stamp;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use std::fmt;
use std::sync::Arc;

/// Bound values of one statement, shared between the attempts of a request.
pub type Values = Arc<dyn SerializeRow + Send + Sync>;

/// The statement to run.
#[derive(Clone)]
#[non_exhaustive]
pub enum ScyllaStatement {
    /// An unprepared statement (QUERY; the driver prepares it first when it has bound values).
    Query(Statement),
    /// A prepared statement (EXECUTE).
    Prepared(PreparedStatement),
    /// A batch (BATCH), with one set of values per statement.
    Batch(Batch),
}

impl fmt::Debug for ScyllaStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScyllaStatement::Query(s) => f.debug_tuple("Query").field(&s.contents).finish(),
            ScyllaStatement::Prepared(p) => {
                f.debug_tuple("Prepared").field(&p.get_statement()).finish()
            }
            ScyllaStatement::Batch(b) => f
                .debug_struct("Batch")
                .field("statements", &b.statements.len())
                .finish(),
        }
    }
}

impl ScyllaStatement {
    /// The consistency the statement itself carries, if it was set on it.
    pub fn consistency(&self) -> Option<Consistency> {
        match self {
            ScyllaStatement::Query(s) => s.get_consistency(),
            ScyllaStatement::Prepared(p) => p.get_consistency(),
            ScyllaStatement::Batch(b) => b.get_consistency(),
        }
    }
}

impl From<Statement> for ScyllaStatement {
    fn from(s: Statement) -> Self {
        ScyllaStatement::Query(s)
    }
}

impl From<&str> for ScyllaStatement {
    fn from(s: &str) -> Self {
        ScyllaStatement::Query(Statement::new(s))
    }
}

impl From<PreparedStatement> for ScyllaStatement {
    fn from(s: PreparedStatement) -> Self {
        ScyllaStatement::Prepared(s)
    }
}

impl From<Batch> for ScyllaStatement {
    fn from(b: Batch) -> Self {
        ScyllaStatement::Batch(b)
    }
}

/// What a request does, as the session layer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// A read. `track` names the column whose `WRITETIME` the statement selects: the adapter reads
    /// the result column `writetime(<track>)` and compares it with the session's high-water mark.
    Read {
        /// The tracked column.
        track: Arc<str>,
    },
    /// A plain write (INSERT, UPDATE, DELETE, or a batch of them). Its timestamp is the session's
    /// hybrid clock reading, the same on every attempt.
    Write,
    /// A lightweight transaction (`IF ...`). Scylla assigns its timestamp (Paxos); `[applied] =
    /// false` becomes a conflict with the current row.
    Conditional,
}

/// What a request's fence applies to: a whole partition, or one row of it.
///
/// Scylla keeps a write time per cell and does not replicate a partition in order: a replica can
/// hold a later write of one row and miss an earlier write of another. So a write time vouches
/// only for the row it was read from:
///
/// - a [`Row`](ScyllaScope::Row) read (the full primary key) is verified on the cheap path by
///   the row's own write time;
/// - a [`Partition`](ScyllaScope::Partition) read (several rows, or an `IN` over partitions)
///   cannot show that it holds every row the session wrote: when the session has a requirement
///   on the partition, it goes to the strong consistency up front.
///
/// A row write also raises the requirement on its partition (a later partition read must show
/// it); a partition write (a range or partition delete, a batch over rows) raises the
/// requirement on every row read of the partition, which its row's write time then meets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScyllaScope {
    /// A partition, by the partition key's bytes in any stable encoding.
    Partition(Arc<[u8]>),
    /// One row: the partition key's bytes and the clustering key's bytes (empty for a table
    /// whose primary key is its partition key), in any stable encoding, the same for its writes
    /// and its reads.
    Row {
        /// The partition key's bytes.
        partition: Arc<[u8]>,
        /// The clustering key's bytes.
        clustering: Arc<[u8]>,
    },
}

impl ScyllaScope {
    /// The partition the scope lies in.
    pub fn partition(&self) -> &[u8] {
        match self {
            ScyllaScope::Partition(p) | ScyllaScope::Row { partition: p, .. } => p,
        }
    }
}

/// One request to [`ScyllaService`](crate::ScyllaService).
///
/// ```
/// use ryw_scylla::ScyllaRequest;
///
/// // A read of one row, verified by the write time of `body`.
/// let read = ScyllaRequest::read(
///     "SELECT body, WRITETIME(body) FROM app.posts WHERE user_id = ? AND post_id = ?",
///     ("u7", 1i32),
/// )
/// .row(b"u7", 1i32.to_be_bytes())
/// .track("body");
///
/// // A write to the same row; an append to a list is not idempotent.
/// let write = ScyllaRequest::write(
///     "UPDATE app.posts SET body = ?, tags = tags + ? WHERE user_id = ? AND post_id = ?",
///     ("hi", vec!["rust"], "u7", 1i32),
/// )
/// .row(b"u7", 1i32.to_be_bytes())
/// .not_idempotent();
///
/// // A read of the whole partition: once the session wrote to it, it reads at LOCAL_QUORUM.
/// let feed = ScyllaRequest::read(
///     "SELECT post_id, body, WRITETIME(body) FROM app.posts WHERE user_id = ?",
///     ("u7",),
/// )
/// .partition(b"u7")
/// .track("body");
/// # let _ = (read, write, feed);
/// ```
#[derive(Clone)]
pub struct ScyllaRequest {
    pub(crate) statement: ScyllaStatement,
    pub(crate) values: Values,
    pub(crate) batch_values: Arc<[Values]>,
    pub(crate) kind: RequestKind,
    pub(crate) scopes: Vec<ScyllaScope>,
    pub(crate) idempotent: bool,
    /// A write's stamp (set once by the layer; every attempt carries it).
    pub(crate) stamp: Option<Stamp>,
    /// The consistency of this attempt (set by the fence for reads, by the adapter for writes).
    pub(crate) consistency: Option<Consistency>,
    /// For a paged read: where the page starts, and its size.
    pub(crate) paging: Option<Paging>,
}

/// One page of a paged read: where it starts and how many rows it asks for.
#[derive(Clone, Debug)]
pub(crate) struct Paging {
    /// The paging state the page resumes from (`PagingState::start()` for the first page).
    pub(crate) state: PagingState,
    /// Rows per page; `None`: the statement's own page size.
    pub(crate) size: Option<i32>,
}

impl fmt::Debug for ScyllaRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bound values may be personal data: not shown.
        f.debug_struct("ScyllaRequest")
            .field("statement", &self.statement)
            .field("kind", &self.kind)
            .field("scopes", &self.scopes.len())
            .field("idempotent", &self.idempotent)
            .field("stamp", &self.stamp)
            .field("consistency", &self.consistency)
            .field("paging", &self.paging)
            .finish_non_exhaustive()
    }
}

impl ScyllaRequest {
    fn new(
        statement: ScyllaStatement,
        values: Values,
        batch_values: Arc<[Values]>,
        kind: RequestKind,
    ) -> Self {
        ScyllaRequest {
            statement,
            values,
            batch_values,
            kind,
            scopes: Vec::new(),
            idempotent: true,
            stamp: None,
            consistency: None,
            paging: None,
        }
    }

    /// A read. Name what it reads with [`ScyllaRequest::row`] (one row, by its full primary
    /// key) or [`ScyllaRequest::partition`] (several rows), and the tracked column with
    /// [`ScyllaRequest::track`] (the statement must select `WRITETIME(<column>)`). A read that
    /// names a scope but no tracked column fails with [`ScyllaError::Untracked`] before anything
    /// is sent.
    ///
    /// [`ScyllaError::Untracked`]: crate::ScyllaError::Untracked
    pub fn read(
        statement: impl Into<ScyllaStatement>,
        values: impl SerializeRow + Send + Sync + 'static,
    ) -> Self {
        Self::new(
            statement.into(),
            Arc::new(values),
            Arc::new([]),
            RequestKind::Read { track: "".into() },
        )
    }

    /// A write: INSERT, UPDATE or DELETE (no `IF`).
    pub fn write(
        statement: impl Into<ScyllaStatement>,
        values: impl SerializeRow + Send + Sync + 'static,
    ) -> Self {
        Self::new(
            statement.into(),
            Arc::new(values),
            Arc::new([]),
            RequestKind::Write,
        )
    }

    /// A lightweight transaction (`INSERT ... IF NOT EXISTS`, `UPDATE ... IF ...`).
    pub fn conditional(
        statement: impl Into<ScyllaStatement>,
        values: impl SerializeRow + Send + Sync + 'static,
    ) -> Self {
        let mut r = Self::new(
            statement.into(),
            Arc::new(values),
            Arc::new([]),
            RequestKind::Conditional,
        );
        r.idempotent = false;
        r
    }

    /// A batch of writes, with one set of values per statement (`()` for none).
    pub fn batch(batch: Batch, values: Vec<Values>) -> Self {
        Self::new(
            ScyllaStatement::Batch(batch),
            Arc::new(()),
            values.into(),
            RequestKind::Write,
        )
    }

    /// Adds a partition the request touches as a whole ([`ScyllaScope::Partition`]): the
    /// partition key's bytes, in any stable encoding (`b"user:7"`). For a read, the partition's
    /// rows (or the partitions of an `IN`); for a write, one that may touch any row of it (a
    /// partition or range delete, a batch over rows). A partition read the session has a
    /// requirement on runs at the strong consistency: name a single row with
    /// [`ScyllaRequest::row`] to keep it on the cheap path.
    pub fn partition(mut self, key: impl AsRef<[u8]>) -> Self {
        self.scopes
            .push(ScyllaScope::Partition(key.as_ref().into()));
        self
    }

    /// Adds one row the request touches ([`ScyllaScope::Row`]): the partition key's bytes and
    /// the clustering key's bytes (empty when the table has no clustering columns), in any stable
    /// encoding, the same for the row's writes and reads. A read of one row is verified on the
    /// cheap path by the row's own write time.
    pub fn row(mut self, partition: impl AsRef<[u8]>, clustering: impl AsRef<[u8]>) -> Self {
        self.scopes.push(ScyllaScope::Row {
            partition: partition.as_ref().into(),
            clustering: clustering.as_ref().into(),
        });
        self
    }

    /// The scopes named so far.
    pub fn scopes(&self) -> &[ScyllaScope] {
        &self.scopes
    }

    /// For a read: the column whose `WRITETIME` the statement selects.
    pub fn track(mut self, column: &str) -> Self {
        if let RequestKind::Read { track } = &mut self.kind {
            *track = column.into();
        }
        self
    }

    /// Marks a write as not idempotent (counters, list appends): it is never retried after a
    /// failure that may have applied, by the driver or by ryw.
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// What the request does.
    pub fn kind(&self) -> &RequestKind {
        &self.kind
    }

    /// The timestamp (microseconds) every attempt of this write carries, once stamped. `None` for
    /// reads, unstamped writes and lightweight transactions (Scylla assigns theirs).
    pub fn timestamp(&self) -> Option<i64> {
        match self.kind {
            // CQL timestamps are signed: a clock past i64::MAX is clamped rather than wrapped
            // into the past (`ScyllaService` refuses such a write: `ScyllaError::ClockExhausted`).
            RequestKind::Write => self
                .stamp
                .map(|s| i64::try_from(s.timestamp.get()).unwrap_or(i64::MAX)),
            _ => None,
        }
    }

    /// The consistency this attempt runs at, once the layer has chosen it.
    pub fn consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    /// Makes a read paged: it fetches one page, of at most `rows` rows, and its response carries
    /// the paging state to resume from ([`ScyllaResponse::paging_state`]). The read starts at the
    /// first page unless [`ScyllaRequest::page`] says otherwise. `rows` must be positive: a read
    /// with another page size fails with [`ScyllaError::InvalidPaging`] before anything is sent.
    ///
    /// Each page is one request through the session layer, fenced like any other read of its
    /// scopes: see [`ScyllaRequest::page`].
    ///
    /// [`ScyllaResponse::paging_state`]: crate::ScyllaResponse::paging_state
    /// [`ScyllaError::InvalidPaging`]: crate::ScyllaError::InvalidPaging
    pub fn page_size(mut self, rows: i32) -> Self {
        let paging = self.paging.get_or_insert_with(|| Paging {
            state: PagingState::start(),
            size: None,
        });
        paging.size = Some(rows);
        self
    }

    /// Makes a read paged and resumes it at `state`: the paging state a page of the same
    /// statement, with the same values, returned (`PagingState::start()` for the first page). The
    /// page size is the one set with [`ScyllaRequest::page_size`], or else the statement's own
    /// (5000 rows unless set on it). [`ScyllaRequest::next_page`] builds the next page's request
    /// from a response.
    ///
    /// Each page is one request through the session layer, fenced by the same rules as an
    /// unpaged read of its scopes: a page of a partition the session has written or read runs at
    /// the strong consistency up front; a page of one row is verified by the row's write time
    /// and re-read at the strong consistency when it is older than the session's write. A page
    /// read again (escalated, or retried after an error) resumes from the same paging state as
    /// the first attempt, and the response carries the paging state of the attempt returned, so
    /// no row is skipped or returned twice. Scylla's paging state records the position the page
    /// ended at (the last partition and clustering key, and the rows left under a `LIMIT`) and
    /// hints for its own caches, not the replicas' data or the consistency: a page may resume at
    /// another consistency than the page before it, through any coordinator.
    ///
    /// A page's guarantee covers the rows after its paging state: a write made after an earlier
    /// page passed its row shows in a new read, not in the later pages of this one.
    pub fn page(mut self, state: PagingState) -> Self {
        match &mut self.paging {
            Some(paging) => paging.state = state,
            None => {
                self.paging = Some(Paging { state, size: None });
            }
        }
        self
    }

    /// The paging state this read resumes from, for a paged read.
    pub fn paging_state(&self) -> Option<&PagingState> {
        self.paging.as_ref().map(|p| &p.state)
    }

    /// This paged read resuming at `state`: the same statement, values, scopes and page size
    /// (`None` when this is not a paged read). [`ScyllaRequest::next_page`] gives it from a
    /// response.
    pub(crate) fn resumed_at(&self, state: &PagingState) -> Option<ScyllaRequest> {
        let paging = self.paging.as_ref()?;
        Some(ScyllaRequest {
            statement: self.statement.clone(),
            values: self.values.clone(),
            batch_values: self.batch_values.clone(),
            kind: self.kind.clone(),
            scopes: self.scopes.clone(),
            idempotent: self.idempotent,
            stamp: None,
            consistency: None,
            paging: Some(Paging {
                state: state.clone(),
                size: paging.size,
            }),
        })
    }
}
