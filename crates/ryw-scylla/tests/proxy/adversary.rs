//! Attacks on the ScyllaDB adapter's promise (docs/guarantees.md, "What each fence rests on", and
//! docs/scylla.md): a read is `Guaranteed` only if, for every scope it touches, it reflects at least
//! the highest version of that scope the session wrote or read before.
//!
//! The scripted node plays a small replicated cluster (`Cluster` below): three replicas of every
//! partition, cells resolved by write time (last write wins, a tombstone wins a tie), a
//! `LOCAL_ONE` read served by one replica (which may have missed any mutation and hold later
//! ones), a `LOCAL_QUORUM` read merged from two replicas (so it sees every write acknowledged at
//! `LOCAL_QUORUM`). Statements carry their values as literals, so the node parses what it is told
//! (a tiny CQL subset: INSERT, UPDATE, DELETE, SELECT with `WRITETIME(..)`, `IN`, ranges, `IF NOT
//! EXISTS`, BATCH).
//!
//! Each test says what the attack is and what holds under it; where what holds is one of the
//! limitations docs/scylla.md states, the test says so and asserts that behaviour, so that a change
//! to it is seen.

use crate::scripted_node::{
    Cell, CqlType, FixedClock, Reply, Script, ScriptedScyllaNode, Seen, NOW,
};
use ryw::fence::FencePath;
use ryw::{
    FenceConfig, FenceStrategy, ReadYourWritesLayer, Session, SessionRequest, SessionResponse,
    StaleReadPolicy, Visibility,
};
use ryw_scylla::{ScyllaAdapter, ScyllaError, ScyllaRequest, ScyllaResponse, ScyllaStatement};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

// ---------------------------------------------------------------------------------------------
// The cluster model.
// ---------------------------------------------------------------------------------------------

const RF: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Cell writes (None: a cell tombstone); `marker`: an INSERT's row marker.
    Cells {
        table: String,
        pk: String,
        ck: String,
        cells: Vec<(String, Option<String>)>,
        marker: bool,
    },
    DeleteRow {
        table: String,
        pk: String,
        ck: String,
    },
    DeletePartition {
        table: String,
        pk: String,
    },
    /// Rows with `lo <= ck <= hi`.
    DeleteRange {
        table: String,
        pk: String,
        lo: Option<String>,
        hi: Option<String>,
    },
}

#[derive(Clone, Debug)]
struct Mutation {
    ts: i64,
    op: Op,
    on: [bool; RF],
}

#[derive(Debug)]
pub(crate) struct Cluster {
    log: Vec<Mutation>,
    /// The replica `LOCAL_ONE` reads go to.
    one: usize,
    /// The replicas `LOCAL_QUORUM` reads contact.
    quorum: [usize; 2],
    /// Replicas that miss the writes made now (a dropped mutation).
    lagging: Vec<usize>,
    /// The coordinator's clock, for lightweight transactions (Paxos timestamps).
    coordinator_clock: i64,
    /// Every statement text received, with its consistency.
    pub(crate) wire: Vec<(String, Option<Consistency>, Option<i64>)>,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            log: Vec::new(),
            one: 0,
            quorum: [1, 2],
            lagging: Vec::new(),
            coordinator_clock: NOW as i64 - 1_000_000,
            wire: Vec::new(),
        }
    }

    /// A mutation written directly, held only by the replicas in `on` (another client's write in
    /// flight, or one whose coordinator answered with a timeout after one replica took it).
    fn inject(&mut self, ts: i64, statement: &str, on: [bool; RF]) {
        let stmt = parse(statement);
        for op in ops_of(&stmt) {
            self.log.push(Mutation { ts, op, on });
        }
    }

    fn placement(&self) -> [bool; RF] {
        let mut on = [true; RF];
        for &r in &self.lagging {
            on[r] = false;
        }
        on
    }

    fn view(&self, replicas: &[usize]) -> Vec<&Mutation> {
        self.log
            .iter()
            .filter(|m| replicas.iter().any(|&r| m.on[r]))
            .collect()
    }

    fn replicas_for(&self, c: Option<Consistency>) -> Vec<usize> {
        match c {
            Some(Consistency::One) | Some(Consistency::LocalOne) | Some(Consistency::Any) => {
                vec![self.one]
            }
            _ => self.quorum.to_vec(),
        }
    }
}

/// A resolved row: its clustering key and its live cells (value, write time).
#[derive(Clone, Debug)]
struct Row {
    pk: String,
    ck: String,
    cells: Vec<(String, String, i64)>,
}

impl Row {
    fn cell(&self, col: &str) -> Option<(&str, i64)> {
        self.cells
            .iter()
            .find(|(c, _, _)| c == col)
            .map(|(_, v, t)| (v.as_str(), *t))
    }
}

fn resolve(view: &[&Mutation], table: &str, pk: &str) -> Vec<Row> {
    let mut cks: Vec<String> = Vec::new();
    for m in view {
        if let Op::Cells {
            table: t,
            pk: p,
            ck,
            ..
        } = &m.op
        {
            if t == table && p == pk && !cks.contains(ck) {
                cks.push(ck.clone());
            }
        }
    }
    cks.sort();
    let mut rows = Vec::new();
    for ck in cks {
        let mut tomb = i64::MIN;
        for m in view {
            let covers = match &m.op {
                Op::DeletePartition { table: t, pk: p } => t == table && p == pk,
                Op::DeleteRow {
                    table: t,
                    pk: p,
                    ck: c,
                } => t == table && p == pk && *c == ck,
                Op::DeleteRange {
                    table: t,
                    pk: p,
                    lo,
                    hi,
                } => {
                    t == table
                        && p == pk
                        && lo.as_ref().is_none_or(|lo| ck >= *lo)
                        && hi.as_ref().is_none_or(|hi| ck <= *hi)
                }
                Op::Cells { .. } => false,
            };
            if covers {
                tomb = tomb.max(m.ts);
            }
        }
        // Per column: the cell with the largest write time (a tombstone wins a tie, then the
        // larger value, as Scylla resolves it).
        let mut best: Vec<(String, i64, Option<String>)> = Vec::new();
        let mut marker = i64::MIN;
        for m in view {
            if let Op::Cells {
                table: t,
                pk: p,
                ck: c,
                cells,
                marker: mk,
            } = &m.op
            {
                if t != table || p != pk || *c != ck {
                    continue;
                }
                if *mk {
                    marker = marker.max(m.ts);
                }
                for (col, val) in cells {
                    match best.iter_mut().find(|(c, _, _)| c == col) {
                        None => best.push((col.clone(), m.ts, val.clone())),
                        Some(slot) => {
                            let wins = m.ts > slot.1
                                || (m.ts == slot.1
                                    && match (&slot.2, val) {
                                        (Some(_), None) => true,
                                        (Some(a), Some(b)) => b > a,
                                        _ => false,
                                    });
                            if wins {
                                slot.1 = m.ts;
                                slot.2 = val.clone();
                            }
                        }
                    }
                }
            }
        }
        let cells: Vec<(String, String, i64)> = best
            .into_iter()
            .filter(|(_, ts, v)| *ts > tomb && v.is_some())
            .map(|(c, ts, v)| (c, v.unwrap(), ts))
            .collect();
        if !cells.is_empty() || marker > tomb {
            rows.push(Row {
                pk: pk.to_string(),
                ck: ck.clone(),
                cells,
            });
        }
    }
    rows
}

// --- a tiny CQL subset ------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(String),
}

fn lex(s: &str) -> Vec<Tok> {
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut j = i + 1;
            let mut v = String::new();
            while j < cs.len() && cs[j] != '\'' {
                v.push(cs[j]);
                j += 1;
            }
            out.push(Tok::Str(v));
            i = j + 1;
        } else if c == '<' || c == '>' {
            if i + 1 < cs.len() && cs[i + 1] == '=' {
                out.push(Tok::Punct(format!("{c}=")));
                i += 2;
            } else {
                out.push(Tok::Punct(c.to_string()));
                i += 1;
            }
        } else if "(),=;*".contains(c) {
            out.push(Tok::Punct(c.to_string()));
            i += 1;
        } else {
            let mut w = String::new();
            while i < cs.len() && !cs[i].is_whitespace() && !"(),=;*<>'".contains(cs[i]) {
                w.push(cs[i]);
                i += 1;
            }
            out.push(Tok::Word(w));
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Item {
    Col(String, String),
    WriteTime(String, String),
}

#[derive(Clone, Debug)]
enum CondOp {
    Eq(Option<String>),
    In(Vec<Option<String>>),
    Ge(String),
    Le(String),
}

#[derive(Clone, Debug)]
struct Cond {
    col: String,
    op: CondOp,
}

#[derive(Clone, Debug)]
enum Stmt {
    Select {
        items: Vec<Item>,
        table: String,
        conds: Vec<Cond>,
    },
    Insert {
        table: String,
        cols: Vec<(String, Option<String>)>,
        if_not_exists: bool,
    },
    Update {
        table: String,
        sets: Vec<(String, Option<String>)>,
        conds: Vec<Cond>,
    },
    Delete {
        table: String,
        cols: Vec<String>,
        conds: Vec<Cond>,
    },
}

struct P {
    t: Vec<Tok>,
    i: usize,
}

impl P {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.t.get(self.i), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn peek_p(&self, p: &str) -> bool {
        matches!(self.t.get(self.i), Some(Tok::Punct(x)) if x == p)
    }
    fn kw(&mut self, kw: &str) {
        assert!(
            self.peek_kw(kw),
            "expected {kw} at {:?}",
            self.t.get(self.i)
        );
        self.i += 1;
    }
    fn p(&mut self, p: &str) {
        assert!(self.peek_p(p), "expected {p} at {:?}", self.t.get(self.i));
        self.i += 1;
    }
    fn word(&mut self) -> String {
        match self.t.get(self.i) {
            Some(Tok::Word(w)) => {
                self.i += 1;
                w.clone()
            }
            other => panic!("expected a word, got {other:?}"),
        }
    }
    fn value(&mut self) -> Option<String> {
        match self.t.get(self.i).cloned() {
            Some(Tok::Str(s)) => {
                self.i += 1;
                Some(s)
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => {
                self.i += 1;
                None
            }
            Some(Tok::Word(w)) => {
                self.i += 1;
                Some(w)
            }
            other => panic!("expected a value, got {other:?}"),
        }
    }
    fn conds(&mut self) -> Vec<Cond> {
        let mut out = Vec::new();
        if !self.peek_kw("WHERE") {
            return out;
        }
        self.kw("WHERE");
        loop {
            let col = self.word().to_ascii_lowercase();
            let op = if self.peek_p("=") {
                self.p("=");
                CondOp::Eq(self.value())
            } else if self.peek_p(">=") {
                self.p(">=");
                CondOp::Ge(self.value().unwrap())
            } else if self.peek_p("<=") {
                self.p("<=");
                CondOp::Le(self.value().unwrap())
            } else {
                self.kw("IN");
                self.p("(");
                let mut vs = vec![self.value()];
                while self.peek_p(",") {
                    self.p(",");
                    vs.push(self.value());
                }
                self.p(")");
                CondOp::In(vs)
            };
            out.push(Cond { col, op });
            if self.peek_kw("AND") {
                self.kw("AND");
            } else {
                break;
            }
        }
        out
    }
}

fn parse(text: &str) -> Stmt {
    let mut p = P { t: lex(text), i: 0 };
    if p.peek_kw("SELECT") {
        p.kw("SELECT");
        let mut items = Vec::new();
        loop {
            let w = p.word();
            let item = if w.eq_ignore_ascii_case("WRITETIME") {
                p.p("(");
                let col = p.word().to_ascii_lowercase();
                p.p(")");
                let name = format!("writetime({col})");
                Item::WriteTime(col, name)
            } else {
                let c = w.to_ascii_lowercase();
                Item::Col(c.clone(), c)
            };
            let item = if p.peek_kw("AS") {
                p.kw("AS");
                let alias = p.word().to_ascii_lowercase();
                match item {
                    Item::WriteTime(c, _) => Item::WriteTime(c, alias),
                    Item::Col(c, _) => Item::Col(c, alias),
                }
            } else {
                item
            };
            items.push(item);
            if p.peek_p(",") {
                p.p(",");
            } else {
                break;
            }
        }
        p.kw("FROM");
        let table = p.word();
        let conds = p.conds();
        Stmt::Select {
            items,
            table,
            conds,
        }
    } else if p.peek_kw("INSERT") {
        p.kw("INSERT");
        p.kw("INTO");
        let table = p.word();
        p.p("(");
        let mut names = vec![p.word().to_ascii_lowercase()];
        while p.peek_p(",") {
            p.p(",");
            names.push(p.word().to_ascii_lowercase());
        }
        p.p(")");
        p.kw("VALUES");
        p.p("(");
        let mut vals = vec![p.value()];
        while p.peek_p(",") {
            p.p(",");
            vals.push(p.value());
        }
        p.p(")");
        let if_not_exists = p.peek_kw("IF");
        Stmt::Insert {
            table,
            cols: names.into_iter().zip(vals).collect(),
            if_not_exists,
        }
    } else if p.peek_kw("UPDATE") {
        p.kw("UPDATE");
        let table = p.word();
        p.kw("SET");
        let mut sets = Vec::new();
        loop {
            let c = p.word().to_ascii_lowercase();
            p.p("=");
            sets.push((c, p.value()));
            if p.peek_p(",") {
                p.p(",");
            } else {
                break;
            }
        }
        let conds = p.conds();
        Stmt::Update { table, sets, conds }
    } else {
        p.kw("DELETE");
        let mut cols = Vec::new();
        while !p.peek_kw("FROM") {
            let w = p.word().to_ascii_lowercase();
            cols.push(w);
            if p.peek_p(",") {
                p.p(",");
            }
        }
        p.kw("FROM");
        let table = p.word();
        let conds = p.conds();
        Stmt::Delete { table, cols, conds }
    }
}

fn eq_of(conds: &[Cond], col: &str) -> Option<String> {
    conds
        .iter()
        .find(|c| c.col == col)
        .and_then(|c| match &c.op {
            CondOp::Eq(v) => v.clone(),
            _ => None,
        })
}

/// The mutations a write statement makes.
fn ops_of(stmt: &Stmt) -> Vec<Op> {
    match stmt {
        Stmt::Insert { table, cols, .. } => {
            let get = |n: &str| {
                cols.iter()
                    .find(|(c, _)| c == n)
                    .and_then(|(_, v)| v.clone())
            };
            let pk = get("pk").expect("pk");
            let ck = get("ck").unwrap_or_default();
            let cells = cols
                .iter()
                .filter(|(c, _)| c != "pk" && c != "ck")
                .cloned()
                .collect();
            vec![Op::Cells {
                table: table.clone(),
                pk,
                ck,
                cells,
                marker: true,
            }]
        }
        Stmt::Update { table, sets, conds } => {
            let pk = eq_of(conds, "pk").expect("pk");
            let ck = eq_of(conds, "ck").unwrap_or_default();
            vec![Op::Cells {
                table: table.clone(),
                pk,
                ck,
                cells: sets.clone(),
                marker: false,
            }]
        }
        Stmt::Delete { table, cols, conds } => {
            let pk = eq_of(conds, "pk").expect("pk");
            let ck_eq = conds
                .iter()
                .any(|c| c.col == "ck" && matches!(c.op, CondOp::Eq(_)));
            let lo = conds.iter().find_map(|c| match &c.op {
                CondOp::Ge(v) if c.col == "ck" => Some(v.clone()),
                _ => None,
            });
            let hi = conds.iter().find_map(|c| match &c.op {
                CondOp::Le(v) if c.col == "ck" => Some(v.clone()),
                _ => None,
            });
            if !cols.is_empty() {
                let ck = eq_of(conds, "ck").unwrap_or_default();
                vec![Op::Cells {
                    table: table.clone(),
                    pk,
                    ck,
                    cells: cols.iter().map(|c| (c.clone(), None)).collect(),
                    marker: false,
                }]
            } else if ck_eq {
                vec![Op::DeleteRow {
                    table: table.clone(),
                    pk,
                    ck: eq_of(conds, "ck").unwrap(),
                }]
            } else if lo.is_some() || hi.is_some() {
                vec![Op::DeleteRange {
                    table: table.clone(),
                    pk,
                    lo,
                    hi,
                }]
            } else {
                vec![Op::DeletePartition {
                    table: table.clone(),
                    pk,
                }]
            }
        }
        Stmt::Select { .. } => Vec::new(),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn select(cluster: &Cluster, consistency: Option<Consistency>, stmt: &Stmt) -> Reply {
    let Stmt::Select {
        items,
        table,
        conds,
    } = stmt
    else {
        unreachable!()
    };
    let replicas = cluster.replicas_for(consistency);
    let view = cluster.view(&replicas);
    let pks: Vec<String> = match conds.iter().find(|c| c.col == "pk").map(|c| &c.op) {
        Some(CondOp::Eq(Some(v))) => vec![v.clone()],
        Some(CondOp::In(vs)) => vs.iter().flatten().cloned().collect(),
        other => panic!("unsupported partition restriction {other:?}"),
    };
    let mut rows = Vec::new();
    for pk in &pks {
        for row in resolve(&view, table, pk) {
            let keep = conds.iter().filter(|c| c.col == "ck").all(|c| match &c.op {
                CondOp::Eq(v) => Some(&row.ck) == v.as_ref(),
                CondOp::In(vs) => vs.iter().flatten().any(|v| *v == row.ck),
                CondOp::Ge(v) => row.ck >= *v,
                CondOp::Le(v) => row.ck <= *v,
            });
            if keep {
                rows.push(row);
            }
        }
    }
    let columns = items
        .iter()
        .map(|it| match it {
            Item::Col(_, name) => (leak(name.clone()), CqlType::Text),
            Item::WriteTime(_, name) => (leak(name.clone()), CqlType::BigInt),
        })
        .collect();
    let rows = rows
        .iter()
        .map(|row| {
            items
                .iter()
                .map(|it| match it {
                    Item::Col(c, _) if c == "pk" => Cell::String(row.pk.clone()),
                    Item::Col(c, _) if c == "ck" => Cell::String(row.ck.clone()),
                    Item::Col(c, _) => match row.cell(c) {
                        Some((v, _)) => Cell::String(v.to_string()),
                        None => Cell::Null,
                    },
                    Item::WriteTime(c, _) => match row.cell(c) {
                        Some((_, t)) => Cell::BigInt(t),
                        None => Cell::Null,
                    },
                })
                .collect()
        })
        .collect();
    Reply::Rows { columns, rows }
}

fn respond(cluster: &Mutex<Cluster>, seen: &Seen) -> Reply {
    let mut cluster = cluster.lock().unwrap();
    if !seen.batch.is_empty() {
        let ts = seen
            .timestamp
            .expect("a batch carries the session's timestamp");
        cluster
            .wire
            .push((seen.batch.join("; "), seen.consistency, seen.timestamp));
        let on = cluster.placement();
        for text in &seen.batch {
            for op in ops_of(&parse(text)) {
                cluster.log.push(Mutation { ts, op, on });
            }
        }
        return Reply::Void;
    }
    cluster
        .wire
        .push((seen.text.clone(), seen.consistency, seen.timestamp));
    let stmt = parse(&seen.text);
    match &stmt {
        Stmt::Select { .. } => select(&cluster, seen.consistency, &stmt),
        Stmt::Insert {
            if_not_exists: true,
            table,
            cols,
        } => {
            // A lightweight transaction: Paxos at the coordinator's clock.
            let pk = cols
                .iter()
                .find(|(c, _)| c == "pk")
                .unwrap()
                .1
                .clone()
                .unwrap();
            let ck = cols
                .iter()
                .find(|(c, _)| c == "ck")
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default();
            let quorum = cluster.quorum;
            let exists = resolve(&cluster.view(&quorum), table, &pk)
                .iter()
                .any(|r| r.ck == ck);
            if !exists {
                let ts = cluster.coordinator_clock;
                cluster.coordinator_clock += 1;
                let on = cluster.placement();
                for op in ops_of(&stmt) {
                    cluster.log.push(Mutation { ts, op, on });
                }
            }
            Reply::Rows {
                columns: vec![("[applied]", CqlType::Boolean)],
                rows: vec![vec![Cell::Boolean(!exists)]],
            }
        }
        _ => {
            let ts = seen
                .timestamp
                .expect("a plain write carries the session's timestamp");
            let mut on = cluster.placement();
            if matches!(
                seen.consistency,
                Some(Consistency::One) | Some(Consistency::LocalOne) | Some(Consistency::Any)
            ) {
                // Acknowledged by one replica: the one the coordinator could reach.
                on = [false; RF];
                on[cluster.one] = true;
            }
            for op in ops_of(&stmt) {
                cluster.log.push(Mutation { ts, op, on });
            }
            Reply::Void
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: the scripted node playing the cluster, and services through the session layer.
// ---------------------------------------------------------------------------------------------

type Svc = BoxCloneService<
    SessionRequest<ScyllaRequest>,
    SessionResponse<ScyllaResponse>,
    ryw::Error<ScyllaError>,
>;

struct Rig {
    node: ScriptedScyllaNode,
    cluster: Arc<Mutex<Cluster>>,
    driver: Arc<scylla::client::session::Session>,
}

impl Rig {
    async fn start() -> Rig {
        Self::start_with(Vec::new(), None).await
    }

    /// With `first` ahead of the cluster's rules (forged errors), and the driver's retry policy.
    async fn start_with(
        first: Vec<Script>,
        retry: Option<Arc<dyn scylla::policies::retry::RetryPolicy>>,
    ) -> Rig {
        let cluster = Arc::new(Mutex::new(Cluster::new()));
        let c = cluster.clone();
        let dynamic = Reply::Dynamic(Arc::new(move |seen: &Seen| respond(&c, seen)));
        let mut script = first;
        script.push(Script::query("app.", vec![dynamic.clone()]));
        script.push(Script::batch("app.", vec![dynamic]));
        let node = ScriptedScyllaNode::start(script).await;
        let driver = match retry {
            None => node.session().await,
            Some(policy) => {
                let profile = scylla::client::execution_profile::ExecutionProfile::builder()
                    .retry_policy(policy)
                    .build();
                scylla::client::session_builder::SessionBuilder::new()
                    .known_node_addr(node.addr)
                    .default_execution_profile_handle(profile.into_handle())
                    .build()
                    .await
                    .expect("the driver connects")
            }
        };
        let driver = Arc::new(driver);
        Rig {
            node,
            cluster,
            driver,
        }
    }

    /// An app instance: the session layer over the driver, its wall clock at `now`.
    fn instance(&self, adapter: ScyllaAdapter, fence: FenceConfig, now: u64) -> Svc {
        let layer = ReadYourWritesLayer::new(adapter)
            .fence(fence)
            .clock(FixedClock(now));
        BoxCloneService::new(tower::Layer::layer(
            &layer,
            ryw_scylla::ScyllaService::new(self.driver.clone()),
        ))
    }

    fn service(&self, fence: FenceConfig) -> Svc {
        self.instance(ScyllaAdapter::new(), fence, NOW)
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap()
    }

    /// Reads go to a replica that misses every write from now on (until `catch_up`).
    fn lag(&self, replica: usize) {
        let mut c = self.cluster();
        c.one = replica;
        c.quorum = [(replica + 1) % RF, (replica + 2) % RF];
        c.lagging = vec![replica];
    }

    fn stop_lagging(&self) {
        self.cluster().lagging.clear();
    }

    /// Stops the node.
    async fn stop(self) {
        drop(self.driver);
        self.node.stop().await;
    }
}

type Res = Result<SessionResponse<ScyllaResponse>, ryw::Error<ScyllaError>>;

async fn call(svc: &mut Svc, req: SessionRequest<ScyllaRequest>) -> Res {
    svc.ready().await?.call(req).await
}

fn insert(pk: &str, ck: &str, body: &str) -> ScyllaRequest {
    ScyllaRequest::write(
        format!("INSERT INTO app.t (pk, ck, body) VALUES ('{pk}', '{ck}', '{body}')").as_str(),
        (),
    )
    .row(pk, ck)
}

fn read_row(pk: &str, ck: &str) -> ScyllaRequest {
    ScyllaRequest::read(
        format!("SELECT body, WRITETIME(body) FROM app.t WHERE pk = '{pk}' AND ck = '{ck}'")
            .as_str(),
        (),
    )
    .row(pk, ck)
    .track("body")
}

fn read_partition(pk: &str) -> ScyllaRequest {
    ScyllaRequest::read(
        format!("SELECT ck, body, WRITETIME(body) FROM app.t WHERE pk = '{pk}'").as_str(),
        (),
    )
    .partition(pk)
    .track("body")
}

/// The `body` values of a `SELECT body, WRITETIME(body)` response.
fn bodies(r: &SessionResponse<ScyllaResponse>) -> Vec<Option<String>> {
    r.get_ref()
        .rows()
        .expect("rows")
        .rows::<(Option<String>, Option<i64>)>()
        .expect("typed rows")
        .map(|r| r.expect("a row").0)
        .collect()
}

/// The (ck, body) pairs of a `SELECT ck, body, WRITETIME(body)` response.
fn partition_rows(r: &SessionResponse<ScyllaResponse>) -> Vec<(String, Option<String>)> {
    r.get_ref()
        .rows()
        .expect("rows")
        .rows::<(String, Option<String>, Option<i64>)>()
        .expect("typed rows")
        .map(|r| {
            let (ck, body, _) = r.expect("a row");
            (ck, body)
        })
        .collect()
}

fn describe(r: &Res) -> String {
    match r {
        Ok(r) => format!(
            "Ok({:?}, writetime {:?})",
            r.visibility(),
            r.get_ref().writetime()
        ),
        Err(e) => format!("Err({e})"),
    }
}

fn vet() -> FenceConfig {
    FenceConfig::verify_then_escalate(0, Duration::ZERO)
}

// ---------------------------------------------------------------------------------------------
// Sanity: the model and the rig behave as a cluster should.
// ---------------------------------------------------------------------------------------------

/// The baseline: a write missed by the lagging replica is re-read at LOCAL_QUORUM and the
/// read is `Guaranteed(Escalated)` with the session's value.
#[tokio::test]
async fn baseline_a_missed_write_is_reread_at_quorum() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "v1")))
        .await
        .unwrap();
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    let r = read.unwrap();
    assert_eq!(
        r.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(bodies(&r), vec![Some("v1".to_string())]);
    rig.stop().await;
}

fn update(pk: &str, ck: &str, body: &str) -> ScyllaRequest {
    ScyllaRequest::write(
        format!("UPDATE app.t SET body = '{body}' WHERE pk = '{pk}' AND ck = '{ck}'").as_str(),
        (),
    )
    .row(pk, ck)
}

fn statement_at(text: &str, c: Consistency) -> ScyllaStatement {
    let mut s = Statement::new(text);
    s.set_consistency(c);
    ScyllaStatement::Query(s)
}

// ---------------------------------------------------------------------------------------------
// Attacks.
// ---------------------------------------------------------------------------------------------

/// A row present on the replica with its tracked column null (the row was inserted with
/// `body = null`, a write that does set the tracked column) while the replica misses the session's
/// later `UPDATE ... SET body = 'mine'`: the cheap read shows no write time, and the layer does not
/// take that for "a deleted row" on the cheap path (it escalates).
#[tokio::test]
async fn a_null_tracked_cell_on_a_lagging_replica_is_not_proof() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    let create = ScyllaRequest::write(
        "INSERT INTO app.t (pk, ck, body, other) VALUES ('p', 'r1', null, 'x')",
        (),
    )
    .row("p", "r1");
    call(&mut a, session.request(create)).await.unwrap();
    rig.lag(0);
    call(&mut a, session.request(update("p", "r1", "mine")))
        .await
        .unwrap();
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    eprintln!("null tracked cell: {}", describe(&read));
    let r = read.unwrap();
    if r.visibility().is_guaranteed() {
        assert_eq!(
            bodies(&r),
            vec![Some("mine".to_string())],
            "a Guaranteed read must show the session's write ({:?})",
            r.visibility()
        );
    }
    rig.stop().await;
}

/// A read naming two rows (`.row(p, r1).row(p, r2)`, a clustering `IN`) on a replica that
/// holds the session's later row but misses its earlier one: not verified by the newer row's write
/// time (it goes to `LOCAL_QUORUM`).
#[tokio::test]
async fn a_read_of_two_rows_is_not_verified_by_the_newer_one() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "one")))
        .await
        .unwrap();
    rig.stop_lagging();
    call(&mut a, session.request(insert("p", "r2", "two")))
        .await
        .unwrap();
    let read = ScyllaRequest::read(
        "SELECT body, WRITETIME(body) FROM app.t WHERE pk = 'p' AND ck IN ('r1', 'r2')",
        (),
    )
    .row("p", "r1")
    .row("p", "r2")
    .track("body");
    let read = call(&mut a, session.request(read)).await;
    eprintln!("two rows: {}", describe(&read));
    let r = read.unwrap();
    if r.visibility().is_guaranteed() {
        assert_eq!(bodies(&r).len(), 2, "both rows, {:?}", r.visibility());
    }
    rig.stop().await;
}

/// A partition read whose statement carries its own consistency (`ONE`) after the session
/// wrote the partition: the layer sends it at `LOCAL_QUORUM` anyway.
#[tokio::test]
async fn a_partition_read_with_its_own_consistency_one() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "mine")))
        .await
        .unwrap();
    let read = ScyllaRequest::read(
        statement_at(
            "SELECT ck, body, WRITETIME(body) FROM app.t WHERE pk = 'p'",
            Consistency::One,
        ),
        (),
    )
    .partition("p")
    .track("body");
    let read = call(&mut a, session.request(read)).await;
    eprintln!(
        "partition read at ONE: {} wire {:?}",
        describe(&read),
        rig.cluster().wire.last()
    );
    let r = read.unwrap();
    if r.visibility().is_guaranteed() {
        assert_eq!(
            partition_rows(&r),
            vec![("r1".to_string(), Some("mine".to_string()))],
            "{:?}",
            r.visibility()
        );
    }
    rig.stop().await;
}

/// A row read whose statement carries its own consistency (`LOCAL_ONE`): the replica misses
/// the row the session inserted (zero rows), and the re-read is sent at `LOCAL_QUORUM`, not at the
/// statement's own level.
#[tokio::test]
async fn a_row_read_with_its_own_consistency_one() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "mine")))
        .await
        .unwrap();
    let read = ScyllaRequest::read(
        statement_at(
            "SELECT body, WRITETIME(body) FROM app.t WHERE pk = 'p' AND ck = 'r1'",
            Consistency::LocalOne,
        ),
        (),
    )
    .row("p", "r1")
    .track("body");
    let read = call(&mut a, session.request(read)).await;
    eprintln!(
        "row read at LOCAL_ONE: {} wire {:?}",
        describe(&read),
        rig.cluster().wire
    );
    let r = read.unwrap();
    if r.visibility().is_guaranteed() {
        assert_eq!(
            bodies(&r),
            vec![Some("mine".to_string())],
            "{:?}",
            r.visibility()
        );
    }
    rig.stop().await;
}

/// Every `FenceConfig` the public API offers (default, `verify_then_escalate`, `strong`,
/// `server_wait`, `StaleReadPolicy::Error`, and two built from the public fields that never
/// escalate), against a partition read and a row read after a row write the replica missed, with
/// another client's later row on that replica: no `Guaranteed` read lacks the session's row.
#[tokio::test]
async fn partition_reads_under_every_fence_config() {
    let configs = [
        ("default", FenceConfig::default()),
        ("vte(0)", vet()),
        (
            "vte(2, 1ms)",
            FenceConfig::verify_then_escalate(2, Duration::from_millis(1)),
        ),
        ("strong", FenceConfig::strong()),
        ("server_wait", FenceConfig::server_wait()),
        (
            "error",
            FenceConfig::default().stale_reads(StaleReadPolicy::Error),
        ),
        (
            "no escalation",
            FenceConfig {
                initial: FenceStrategy::Verify,
                rereads: 1,
                reread_delay: Duration::ZERO,
                escalate_on_stale: false,
                stale_reads: StaleReadPolicy::Pending,
            },
        ),
        (
            "server wait, no escalation",
            FenceConfig {
                initial: FenceStrategy::ServerWait,
                rereads: 0,
                reread_delay: Duration::ZERO,
                escalate_on_stale: false,
                stale_reads: StaleReadPolicy::Pending,
            },
        ),
    ];
    let rig = Rig::start().await;
    let mut bad = Vec::new();
    for (i, (name, config)) in configs.into_iter().enumerate() {
        let mut a = rig.service(config);
        let session = Session::new();
        let pk = format!("cfg{i}");
        // Another session's later row is on the lagging replica; the session's is not.
        rig.lag(0);
        call(&mut a, session.request(insert(&pk, "r1", "mine")))
            .await
            .unwrap();
        rig.stop_lagging();
        let mut other = rig.instance(ScyllaAdapter::new(), vet(), NOW + 1_000_000);
        call(
            &mut other,
            Session::new().request(insert(&pk, "r2", "theirs")),
        )
        .await
        .unwrap();
        let read = call(&mut a, session.request(read_partition(&pk))).await;
        let row_read = call(&mut a, session.request(read_row(&pk, "r1"))).await;
        eprintln!(
            "{name}: partition {} / row {}",
            describe(&read),
            describe(&row_read)
        );
        if let Ok(r) = &read {
            if r.visibility().is_guaranteed()
                && !partition_rows(r).contains(&("r1".to_string(), Some("mine".to_string())))
            {
                bad.push(format!(
                    "{name}: partition {:?} {:?}",
                    r.visibility(),
                    partition_rows(r)
                ));
            }
        }
        if let Ok(r) = &row_read {
            if r.visibility().is_guaranteed() && bodies(r) != vec![Some("mine".to_string())] {
                bad.push(format!("{name}: row {:?} {:?}", r.visibility(), bodies(r)));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "guaranteed reads missing the session's write: {bad:#?}"
    );
    rig.stop().await;
}

/// A stated limitation (docs/scylla.md: "writes in flight"): monotonic reads cover writes
/// acknowledged at the write consistency. The session reads row `r1` on a replica holding
/// another client's write still in flight (`'new'` at T5, on one replica only; the quorum has
/// `'old'` at T1). Its next listing of the partition goes to `LOCAL_QUORUM`, which does not hold
/// the in-flight write yet, and is `Guaranteed(Escalated)` with `'old'`. (A row read in the same
/// position is `Pending`: `monotonic_reads_a_row_seen_then_older`.)
#[tokio::test]
async fn monotonic_reads_row_then_partition_with_a_write_in_flight() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
        let t1 = NOW as i64 - 10_000_000;
        c.inject(
            t1,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'old')",
            [true; RF],
        );
        // In flight: on replica 0 only.
        c.inject(
            NOW as i64 - 5_000_000,
            "UPDATE app.t SET body = 'new' WHERE pk = 'p' AND ck = 'r1'",
            [true, false, false],
        );
    }
    let first = call(&mut a, session.request(read_row("p", "r1")))
        .await
        .unwrap();
    assert_eq!(bodies(&first), vec![Some("new".to_string())]);
    assert_eq!(
        first.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    let read = call(&mut a, session.request(read_partition("p"))).await;
    eprintln!("partition after row: {}", describe(&read));
    let r = read.unwrap();
    assert_eq!(
        r.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(
        partition_rows(&r),
        vec![("r1".to_string(), Some("old".to_string()))],
        "the quorum does not hold the write in flight yet"
    );
    rig.stop().await;
}

/// A stated limitation (docs/scylla.md: "writes in flight"). The session reads a row that exists
/// only on the replica it asked (another client's insert, still in flight: the quorum does not
/// hold it). The next read goes to a replica without it, is escalated, and the quorum has no such
/// row either: no write time, as for a deleted row, so it is `Guaranteed(Escalated)` without the
/// row. Compare `monotonic_reads_a_row_seen_then_older`: the same with an older write time is
/// `Pending`.
#[tokio::test]
async fn monotonic_reads_a_row_seen_then_gone() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
        c.inject(
            NOW as i64 - 5_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r9', 'seen')",
            [true, false, false],
        );
    }
    let first = call(&mut a, session.request(read_row("p", "r9")))
        .await
        .unwrap();
    assert_eq!(bodies(&first), vec![Some("seen".to_string())]);
    rig.cluster().one = 1;
    let read = call(&mut a, session.request(read_row("p", "r9"))).await;
    eprintln!("row seen then gone: {}", describe(&read));
    let r = read.unwrap();
    assert_eq!(
        r.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert!(bodies(&r).is_empty(), "the quorum has no such row yet");
    rig.stop().await;
}

/// As `monotonic_reads_a_row_seen_then_gone`, but the quorum holds an older
/// version of the row instead of none: the layer reports it `Pending`.
#[tokio::test]
async fn monotonic_reads_a_row_seen_then_older() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
        c.inject(
            NOW as i64 - 9_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r9', 'old')",
            [true; RF],
        );
        c.inject(
            NOW as i64 - 5_000_000,
            "UPDATE app.t SET body = 'seen' WHERE pk = 'p' AND ck = 'r9'",
            [true, false, false],
        );
    }
    let first = call(&mut a, session.request(read_row("p", "r9")))
        .await
        .unwrap();
    assert_eq!(bodies(&first), vec![Some("seen".to_string())]);
    rig.cluster().one = 1;
    let read = call(&mut a, session.request(read_row("p", "r9"))).await;
    eprintln!("row seen then older: {}", describe(&read));
    let r = read.unwrap();
    assert!(!r.visibility().is_guaranteed() || bodies(&r) == vec![Some("seen".to_string())]);
    rig.stop().await;
}

/// A stated limitation (docs/scylla.md: "lightweight transactions"): do not mix lightweight
/// transactions and plain writes on one row. A transaction (`INSERT ... IF NOT EXISTS`), then a
/// plain write of the same row by the same session. The coordinator's clock runs 1 ms ahead of the
/// app's, so the transaction's timestamp (NOW + 1000) is later than the session's next write
/// (NOW + 1): the store itself keeps the transaction's `'first'`, at the quorum too, and the read
/// showing it is `Guaranteed(Verified)`.
#[tokio::test]
async fn a_plain_write_after_a_lightweight_transaction_is_lost() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.cluster().coordinator_clock = NOW as i64 + 1_000;
    let lwt = ScyllaRequest::conditional(
        "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'first') IF NOT EXISTS",
        (),
    )
    .row("p", "r1");
    let w = call(&mut a, session.request(lwt)).await;
    eprintln!("lwt: {:?}", w.as_ref().map(|w| w.visibility().clone()));
    w.unwrap();
    call(&mut a, session.request(update("p", "r1", "second")))
        .await
        .unwrap();
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    eprintln!(
        "after lwt + write: {} wire {:?}",
        describe(&read),
        rig.cluster().wire
    );
    let r = read.unwrap();
    assert_eq!(r.visibility(), &Visibility::Guaranteed(FencePath::Verified));
    assert_eq!(bodies(&r), vec![Some("first".to_string())]);
    let quorum = {
        let c = rig.cluster();
        let view = c.view(&c.quorum);
        resolve(&view, "app.t", "p")
    };
    eprintln!("the quorum holds {quorum:?}");
    rig.stop().await;
}

/// Writes-follow-reads across instances: the session reads what a writer whose clock runs
/// 1 s ahead wrote (through a row read, or a partition read), continues on another instance whose
/// clock runs 2 s behind from the token, and writes the same row: its write is stamped after what it
/// read, and its next read shows it.
#[tokio::test]
async fn writes_follow_reads_of_a_clock_ahead_writer_across_instances() {
    let rig = Rig::start().await;
    let mut bad = Vec::new();
    for (case, via_partition) in [("row", false), ("partition", true)] {
        let pk = format!("wfr-{case}");
        let mut ahead = rig.instance(ScyllaAdapter::new(), vet(), NOW + 1_000_000);
        call(
            &mut ahead,
            Session::new().request(insert(&pk, "r1", "theirs")),
        )
        .await
        .unwrap();
        let mut a = rig.service(vet());
        let session = Session::new();
        if via_partition {
            call(&mut a, session.request(read_partition(&pk)))
                .await
                .unwrap();
        } else {
            call(&mut a, session.request(read_row(&pk, "r1")))
                .await
                .unwrap();
        }
        let token = session.token().encode().unwrap();
        let elsewhere = Session::from_encoded(&token).unwrap();
        let mut b = rig.instance(ScyllaAdapter::new(), vet(), NOW - 2_000_000);
        call(&mut b, elsewhere.request(update(&pk, "r1", "mine")))
            .await
            .unwrap();
        let read = call(&mut b, elsewhere.request(read_row(&pk, "r1"))).await;
        eprintln!("wfr via {case}: {}", describe(&read));
        let r = read.unwrap();
        if r.visibility().is_guaranteed() && bodies(&r) != vec![Some("mine".to_string())] {
            bad.push(format!("{case}: {:?} {:?}", r.visibility(), bodies(&r)));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    rig.stop().await;
}

/// A session continued on another instance (clock 5 s behind) from its encoded token: a row
/// write then a partition read there, and a partition delete then a row read there, against a
/// replica that missed the session's writes and holds another client's later ones.
#[tokio::test]
async fn a_session_continued_from_its_token() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let mut b = rig.instance(ScyllaAdapter::new(), vet(), NOW - 5_000_000);
    let mut ahead = rig.instance(ScyllaAdapter::new(), vet(), NOW + 1_000_000);
    let session = Session::new();
    // The row the session will see deleted exists everywhere.
    call(&mut a, Session::new().request(insert("q", "r1", "old")))
        .await
        .unwrap();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "mine")))
        .await
        .unwrap();
    let delete = ScyllaRequest::write("DELETE FROM app.t WHERE pk = 'q'", ()).partition("q");
    call(&mut a, session.request(delete)).await.unwrap();
    rig.stop_lagging();
    call(
        &mut ahead,
        Session::new().request(insert("p", "r2", "theirs")),
    )
    .await
    .unwrap();
    let elsewhere = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
    let partition = call(&mut b, elsewhere.request(read_partition("p"))).await;
    let row = call(&mut b, elsewhere.request(read_row("q", "r1"))).await;
    eprintln!(
        "continued: partition {} / row {}",
        describe(&partition),
        describe(&row)
    );
    let p = partition.unwrap();
    if p.visibility().is_guaranteed() {
        assert!(partition_rows(&p).contains(&("r1".to_string(), Some("mine".to_string()))));
    }
    let r = row.unwrap();
    if r.visibility().is_guaranteed() {
        assert!(
            bodies(&r).is_empty(),
            "the session deleted q: {:?}",
            bodies(&r)
        );
    }
    rig.stop().await;
}

/// Past the vector's cap (32 scopes, a row write raises two), the session's early writes are
/// coarsened into the store horizon. A partition read and a row read of a partition whose
/// requirement was coarsened, on a replica holding a later row of another client but missing the
/// session's, in the same session and in a continuation from the token.
#[tokio::test]
async fn a_coarsened_partition_is_still_fenced() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "mine")))
        .await
        .unwrap();
    rig.stop_lagging();
    for i in 0..40 {
        let pk = format!("filler{i}");
        call(&mut a, session.request(insert(&pk, "r", "x")))
            .await
            .unwrap();
    }
    let horizon = session.snapshot().vector().horizon(ryw_scylla::STORE_ID);
    eprintln!(
        "horizon: {horizon:?}, {} exact scopes",
        session.snapshot().vector().len()
    );
    let mut ahead = rig.instance(ScyllaAdapter::new(), vet(), NOW + 1_000_000);
    call(
        &mut ahead,
        Session::new().request(insert("p", "r2", "theirs")),
    )
    .await
    .unwrap();
    // A continuation from the token too.
    let elsewhere = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
    for (who, s) in [("same", &session), ("token", &elsewhere)] {
        let read = call(&mut a, s.request(read_partition("p"))).await;
        eprintln!("coarsened partition ({who}): {}", describe(&read));
        let r = read.unwrap();
        if r.visibility().is_guaranteed() {
            assert!(
                partition_rows(&r).contains(&("r1".to_string(), Some("mine".to_string()))),
                "{who}: {:?} {:?}",
                r.visibility(),
                partition_rows(&r)
            );
        }
        let read = call(&mut a, s.request(read_row("p", "r1"))).await;
        eprintln!("coarsened row ({who}): {}", describe(&read));
        let r = read.unwrap();
        if r.visibility().is_guaranteed() {
            assert_eq!(bodies(&r), vec![Some("mine".to_string())]);
        }
    }
    rig.stop().await;
}

/// Liveness after coarsening: a row nobody wrote lately (write time before the horizon) is
/// read at `LOCAL_QUORUM` and is `Guaranteed(Escalated)`, not `Pending` for good.
#[tokio::test]
async fn after_coarsening_an_old_row_still_converges() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    rig.cluster().inject(
        NOW as i64 - 3_600_000_000,
        "INSERT INTO app.t (pk, ck, body) VALUES ('old', 'r', 'ancient')",
        [true; RF],
    );
    let session = Session::new();
    for i in 0..40 {
        let pk = format!("filler{i}");
        call(&mut a, session.request(insert(&pk, "r", "x")))
            .await
            .unwrap();
    }
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let read = call(&mut a, session.request(read_row("old", "r"))).await;
        outcomes.push(describe(&read));
    }
    let partition = call(&mut a, session.request(read_partition("old"))).await;
    outcomes.push(describe(&partition));
    eprintln!("old row after coarsening: {outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.contains("Guaranteed")),
        "{outcomes:#?}"
    );
    rig.stop().await;
}

/// Liveness. A range delete (`.partition(p)`, as the docs
/// say for "a partition or range delete") raises the requirement of every row read of the
/// partition, including rows outside the range, whose write times never reach it. A `LOCAL_QUORUM`
/// read of such a row is as fresh as the store gets, yet it is `Pending`, and stays so on every
/// later read (with `StaleReadPolicy::Error`, an error on every read) until someone rewrites the
/// row. The status contract says a `Pending` read is one where "a later read converges".
#[tokio::test]
async fn a_range_delete_leaves_rows_outside_the_range_pending_for_good() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    call(&mut a, session.request(insert("p", "a1", "kept")))
        .await
        .unwrap();
    let range = ScyllaRequest::write(
        "DELETE FROM app.t WHERE pk = 'p' AND ck >= 'r5' AND ck <= 'r9'",
        (),
    )
    .partition("p");
    call(&mut a, session.request(range)).await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let read = call(&mut a, session.request(read_row("p", "a1"))).await;
        outcomes.push(describe(&read));
    }
    let strict = call(
        &mut a,
        session
            .request(read_row("p", "a1"))
            .stale_reads(StaleReadPolicy::Error),
    )
    .await;
    outcomes.push(describe(&strict));
    eprintln!("row outside a range delete: {outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.contains("Guaranteed")),
        "{outcomes:#?}"
    );
    rig.stop().await;
}

/// Two tables keyed the same way (`app.t` and `app.u`, both by user id). Scopes carry no table:
/// docs/scylla.md says to name the table in the key bytes when tables share keys. Named so
/// (`t/u7`, `u/u7`), writing the user's post does not hold back reads of the user's profile.
#[tokio::test]
async fn tables_sharing_keys_are_told_apart_by_the_key_bytes() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    rig.cluster().inject(
        NOW as i64 - 60_000_000,
        "INSERT INTO app.u (pk, ck, body) VALUES ('u7', '', 'profile')",
        [true; RF],
    );
    let session = Session::new();
    let post = ScyllaRequest::write(
        "INSERT INTO app.t (pk, ck, body) VALUES ('u7', '', 'hi')",
        (),
    )
    .row("t/u7", "");
    call(&mut a, session.request(post)).await.unwrap();
    let profile = || {
        ScyllaRequest::read(
            "SELECT body, WRITETIME(body) FROM app.u WHERE pk = 'u7' AND ck = ''",
            (),
        )
        .row("u/u7", "")
        .track("body")
    };
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(describe(&call(&mut a, session.request(profile())).await));
    }
    eprintln!("profile after a post: {outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.contains("Guaranteed")),
        "{outcomes:#?}"
    );
    rig.stop().await;
}

/// A write that names no scope (no `.row()`, no `.partition()`) raises no requirement, so a
/// later scoped read of its row is not fenced on it: the write is answered `Unscoped`, as a read
/// with the same gap is, never `Guaranteed`.
#[tokio::test]
async fn a_write_without_a_scope() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    let write = ScyllaRequest::write(
        "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'mine')",
        (),
    );
    let w = call(&mut a, session.request(write)).await;
    eprintln!(
        "unscoped write: {:?}",
        w.as_ref()
            .map(|w| w.visibility().clone())
            .map_err(|e| e.to_string())
    );
    assert_eq!(w.unwrap().visibility(), &Visibility::Unscoped);
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    eprintln!("read after it: {}", describe(&read));
    rig.stop().await;
}

/// The tracked column's write time selected under an alias (`WRITETIME(body) AS wt`): a
/// configuration error (`TrackedColumnNotSelected`, whose message says an alias is not
/// recognised), never a guarantee.
#[tokio::test]
async fn an_aliased_writetime_column() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    call(&mut a, session.request(insert("p", "r1", "old")))
        .await
        .unwrap();
    rig.lag(0);
    call(&mut a, session.request(update("p", "r1", "mine")))
        .await
        .unwrap();
    let read = ScyllaRequest::read(
        "SELECT body, WRITETIME(body) AS wt FROM app.t WHERE pk = 'p' AND ck = 'r1'",
        (),
    )
    .row("p", "r1")
    .track("body");
    let read = call(&mut a, session.request(read)).await;
    eprintln!("aliased: {}", describe(&read));
    if let Ok(r) = read {
        assert!(
            !r.visibility().is_guaranteed() || bodies(&r) == vec![Some("mine".to_string())],
            "{:?} {:?}",
            r.visibility(),
            bodies(&r)
        );
    }
    rig.stop().await;
}

/// A stated limitation (docs/scylla.md: "equal timestamps"). Two sessions write one row with
/// the same timestamp: both read the row a writer whose clock runs 50 ms ahead left at W, so both
/// stamp their writes W + 1. Scylla breaks the tie by value: the session's `'z'` wins at the
/// quorum. The replica the session reads missed its write and holds the other session's `'a'` at
/// the same write time, which a write time cannot tell apart: `Guaranteed(Verified)` with `'a'`.
#[tokio::test]
async fn two_sessions_stamp_the_same_timestamp() {
    let rig = Rig::start().await;
    let mut ahead = rig.instance(ScyllaAdapter::new(), vet(), NOW + 50_000);
    call(&mut ahead, Session::new().request(insert("p", "hot", "w")))
        .await
        .unwrap();
    let mut a = rig.service(vet());
    let mut b = rig.service(vet());
    let alice = Session::new();
    let bob = Session::new();
    call(&mut a, alice.request(read_row("p", "hot")))
        .await
        .unwrap();
    call(&mut b, bob.request(read_row("p", "hot")))
        .await
        .unwrap();
    rig.lag(0);
    call(&mut a, alice.request(update("p", "hot", "z")))
        .await
        .unwrap();
    rig.stop_lagging();
    call(&mut b, bob.request(update("p", "hot", "a")))
        .await
        .unwrap();
    let stamps: Vec<_> = rig
        .cluster()
        .wire
        .iter()
        .filter(|w| w.0.starts_with("UPDATE"))
        .map(|w| w.2)
        .collect();
    let read = call(&mut a, alice.request(read_row("p", "hot"))).await;
    let quorum = {
        let c = rig.cluster();
        let view = c.view(&c.quorum);
        resolve(&view, "app.t", "p")
    };
    eprintln!(
        "same stamp {stamps:?}: alice reads {} ; the quorum holds {quorum:?}",
        describe(&read)
    );
    let r = read.unwrap();
    assert_eq!(stamps.len(), 2);
    assert_eq!(stamps[0], stamps[1], "one timestamp for both writes");
    assert_eq!(r.visibility(), &Visibility::Guaranteed(FencePath::Verified));
    assert_eq!(bodies(&r), vec![Some("a".to_string())]);
    rig.stop().await;
}

/// Liveness: an unfenced read over two partitions (`pk IN ('p', 'q')`, `.partition(p)
/// .partition(q)`) where `p` holds a newer row than `q`; a later read of `q` alone (strong) and of
/// its row (cheap) is `Guaranteed`, not held to `p`'s write time.
#[tokio::test]
async fn an_in_over_partitions_credits_each_partition_its_own() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    {
        let mut c = rig.cluster();
        c.inject(
            NOW as i64 - 60_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('q', 'r1', 'q-old')",
            [true; RF],
        );
        c.inject(
            NOW as i64 - 1_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'p-new')",
            [true; RF],
        );
    }
    let session = Session::new();
    let both = ScyllaRequest::read(
        "SELECT ck, body, WRITETIME(body) FROM app.t WHERE pk IN ('p', 'q')",
        (),
    )
    .partition("p")
    .partition("q")
    .track("body");
    let first = call(&mut a, session.request(both)).await;
    let q = call(&mut a, session.request(read_partition("q"))).await;
    let q_row = call(&mut a, session.request(read_row("q", "r1"))).await;
    eprintln!(
        "IN: {} / q: {} / q row: {}",
        describe(&first),
        describe(&q),
        describe(&q_row)
    );
    assert!(q.unwrap().visibility().is_guaranteed());
    assert!(q_row.unwrap().visibility().is_guaranteed());
    rig.stop().await;
}

/// Liveness: an unfenced read naming two rows (`.row(p, r1).row(p, r2)`) where `r2` is
/// newer; a later read of `r1` alone is not held to `r2`'s write time.
#[tokio::test]
async fn a_read_of_two_rows_credits_each_row_its_own() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    {
        let mut c = rig.cluster();
        c.inject(
            NOW as i64 - 60_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'older')",
            [true; RF],
        );
        c.inject(
            NOW as i64 - 1_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r2', 'newer')",
            [true; RF],
        );
    }
    let session = Session::new();
    let both = ScyllaRequest::read(
        "SELECT body, WRITETIME(body) FROM app.t WHERE pk = 'p' AND ck IN ('r1', 'r2')",
        (),
    )
    .row("p", "r1")
    .row("p", "r2")
    .track("body");
    let first = call(&mut a, session.request(both)).await;
    let r1 = call(&mut a, session.request(read_row("p", "r1"))).await;
    eprintln!("two rows: {} / r1: {}", describe(&first), describe(&r1));
    assert!(r1.unwrap().visibility().is_guaranteed());
    rig.stop().await;
}

/// Liveness. A batch over two rows of a partition, named
/// `.partition(p)` as the docs say for "a batch over rows". A third row of the partition, untouched
/// by the batch, read at `LOCAL_QUORUM`, is `Pending` on every read until someone rewrites it.
#[tokio::test]
async fn a_batch_over_rows_leaves_the_other_rows_pending_for_good() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    rig.cluster().inject(
        NOW as i64 - 60_000_000,
        "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r3', 'untouched')",
        [true; RF],
    );
    let session = Session::new();
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement("INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'one')");
    batch.append_statement("INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r2', 'two')");
    let write = ScyllaRequest::batch(batch, vec![Arc::new(()), Arc::new(())]).partition("p");
    call(&mut a, session.request(write)).await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(describe(
            &call(&mut a, session.request(read_row("p", "r3"))).await,
        ));
    }
    eprintln!("untouched row after a batch: {outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.contains("Guaranteed")),
        "{outcomes:#?}"
    );
    rig.stop().await;
}

/// Rows written by tools with explicit `USING TIMESTAMP` (0, -1, `i64::MIN + 1`,
/// `i64::MAX - 1`): nothing panics, and the session's next write of such a row is stamped past it
/// and shows. (After reading `i64::MAX - 1`, the session's next write goes out at `i64::MAX`, and
/// a write after it is refused, `ScyllaError::ClockExhausted`: see `paging_adversary.rs`.)
#[tokio::test]
async fn hostile_write_times() {
    let rig = Rig::start().await;
    let mut bad = Vec::new();
    for (i, ts) in [0i64, -1, i64::MIN + 1, i64::MAX - 1]
        .into_iter()
        .enumerate()
    {
        let pk = format!("h{i}");
        rig.cluster().inject(
            ts,
            format!("INSERT INTO app.t (pk, ck, body) VALUES ('{pk}', 'r', 'tool')").as_str(),
            [true; RF],
        );
        let mut a = rig.service(vet());
        let session = Session::new();
        let first = call(&mut a, session.request(read_row(&pk, "r"))).await;
        let w = call(&mut a, session.request(update(&pk, "r", "mine"))).await;
        let stamp = rig.cluster().wire.last().and_then(|w| w.2);
        let read = call(&mut a, session.request(read_row(&pk, "r"))).await;
        eprintln!(
            "write time {ts}: first {} / write {:?} stamped {stamp:?} / read {}",
            describe(&first),
            w.as_ref().map(|_| ()).map_err(|e| e.to_string()),
            describe(&read)
        );
        if let Ok(r) = &read {
            if w.is_ok()
                && r.visibility().is_guaranteed()
                && bodies(r) != vec![Some("mine".to_string())]
            {
                bad.push(format!("{ts}: {:?} {:?}", r.visibility(), bodies(r)));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    rig.stop().await;
}

/// Liveness: the session deletes one row of a partition (`.row(p, r1)`), or another client
/// deletes the row the session wrote; listing the partition afterwards is `Guaranteed(Escalated)`,
/// not `Pending` (strong partition reads are accepted as they come).
#[tokio::test]
async fn listing_a_partition_after_a_row_delete() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let mut outcomes = Vec::new();
    for (case, own_delete) in [("own delete", true), ("their delete", false)] {
        let pk = format!("list-{case}").replace(' ', "-");
        rig.cluster().inject(
            NOW as i64 - 60_000_000,
            format!("INSERT INTO app.t (pk, ck, body) VALUES ('{pk}', 'r2', 'older')").as_str(),
            [true; RF],
        );
        let session = Session::new();
        call(&mut a, session.request(insert(&pk, "r1", "mine")))
            .await
            .unwrap();
        let delete = format!("DELETE FROM app.t WHERE pk = '{pk}' AND ck = 'r1'");
        if own_delete {
            let d = ScyllaRequest::write(delete.as_str(), ()).row(pk.as_str(), "r1");
            call(&mut a, session.request(d)).await.unwrap();
        } else {
            let mut other = rig.instance(ScyllaAdapter::new(), vet(), NOW + 1_000_000);
            let d = ScyllaRequest::write(delete.as_str(), ()).row(pk.as_str(), "r1");
            call(&mut other, Session::new().request(d)).await.unwrap();
        }
        for _ in 0..2 {
            let read = call(&mut a, session.request(read_partition(&pk))).await;
            outcomes.push(format!("{case}: {}", describe(&read)));
        }
    }
    eprintln!("{outcomes:#?}");
    assert!(
        outcomes.iter().all(|o| o.contains("Guaranteed")),
        "{outcomes:#?}"
    );
    rig.stop().await;
}

/// A stated limitation (docs/scylla.md: "writes in flight"). The session's first listing is
/// unfenced at `LOCAL_ONE` and shows `r1 = 'new'` (T5, another client's write still in flight,
/// on that replica only). The second listing goes to `LOCAL_QUORUM` up front, which does not hold
/// the write in flight yet: `Guaranteed(Escalated)` with `r1 = 'old'`.
#[tokio::test]
async fn monotonic_reads_partition_then_partition_with_a_write_in_flight() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
        c.inject(
            NOW as i64 - 10_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'old')",
            [true; RF],
        );
        c.inject(
            NOW as i64 - 5_000_000,
            "UPDATE app.t SET body = 'new' WHERE pk = 'p' AND ck = 'r1'",
            [true, false, false],
        );
    }
    let first = call(&mut a, session.request(read_partition("p")))
        .await
        .unwrap();
    assert_eq!(
        partition_rows(&first),
        vec![("r1".to_string(), Some("new".to_string()))]
    );
    assert_eq!(
        first.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    let read = call(&mut a, session.request(read_partition("p"))).await;
    eprintln!("partition after partition: {}", describe(&read));
    let r = read.unwrap();
    assert_eq!(
        r.visibility(),
        &Visibility::Guaranteed(FencePath::Escalated)
    );
    assert_eq!(
        partition_rows(&r),
        vec![("r1".to_string(), Some("old".to_string()))]
    );
    rig.stop().await;
}

/// Scope collisions: a partition key and a row with an empty clustering key of the
/// same bytes, and two rows whose (partition, clustering) byte concatenations coincide
/// (`("ab", "c")` and `("a", "bc")`). A write of one must not fence reads of the other beyond what
/// the documented partition/row relation says, and must fence what it says.
#[tokio::test]
async fn scope_collisions() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    {
        let mut c = rig.cluster();
        c.inject(
            NOW as i64 - 60_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('a', 'bc', 'theirs')",
            [true; RF],
        );
        c.inject(
            NOW as i64 - 60_000_000,
            "INSERT INTO app.t (pk, ck, body) VALUES ('x', '', 'old')",
            [true; RF],
        );
    }
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("ab", "c", "mine")))
        .await
        .unwrap();
    // A partition-wide delete of the single-row partition `x`, missed by the replica.
    let delete = ScyllaRequest::write("DELETE FROM app.t WHERE pk = 'x'", ()).partition("x");
    call(&mut a, session.request(delete)).await.unwrap();
    let other = call(&mut a, session.request(read_row("a", "bc")))
        .await
        .unwrap();
    assert_eq!(
        other.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
    let x = call(&mut a, session.request(read_row("x", "")))
        .await
        .unwrap();
    eprintln!(
        "x after its partition delete: {:?} {:?}",
        x.visibility(),
        bodies(&x)
    );
    assert!(!x.visibility().is_guaranteed() || bodies(&x).is_empty());
    let ab = call(&mut a, session.request(read_partition("ab")))
        .await
        .unwrap();
    assert!(
        !ab.visibility().is_guaranteed()
            || partition_rows(&ab) == vec![("c".to_string(), Some("mine".to_string()))]
    );
    rig.stop().await;
}

/// Concurrent requests on one session: 12 writes of distinct rows at once through
/// clones of one service, missed by the replica the reads go to, then 12 reads at once, and a
/// continuation from the token made while the writes were in flight, merged afterwards.
#[tokio::test]
async fn concurrent_requests_on_one_session() {
    let rig = Rig::start().await;
    let svc = rig.service(vet());
    let session = Session::new();
    let early = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
    rig.lag(0);
    let writes = (0..12).map(|i| {
        let mut s = svc.clone();
        let req = session.request(insert("c", &format!("r{i:02}"), &format!("v{i}")));
        async move { call(&mut s, req).await }
    });
    for w in futures_join(writes).await {
        w.unwrap();
    }
    let reads = (0..12).map(|i| {
        let mut s = svc.clone();
        let req = session.request(read_row("c", &format!("r{i:02}")));
        async move { (i, call(&mut s, req).await) }
    });
    for (i, r) in futures_join(reads).await {
        let r = r.unwrap();
        assert!(r.visibility().is_guaranteed());
        assert_eq!(bodies(&r), vec![Some(format!("v{i}"))]);
    }
    // The early continuation learns the writes by merging the session's state.
    early.merge(&session.snapshot());
    let mut s = svc.clone();
    let p = call(&mut s, early.request(read_partition("c")))
        .await
        .unwrap();
    assert!(!p.visibility().is_guaranteed() || partition_rows(&p).len() == 12);
    rig.stop().await;
}

/// Runs futures concurrently as tasks (no extra dependency).
async fn futures_join<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The driver session configured with `DowngradingConsistencyRetryPolicy`, a standard option of
/// the `scylla` driver, which retries an `Unavailable` read at `ONE`. `ScyllaService` runs every
/// statement under the driver's default policy, so the layer's strong read is never answered by
/// one lagging replica: with the quorum unavailable, the row read is `Pending` and the partition
/// read fails `Unavailable`, and no frame goes out below the level the layer chose.
#[tokio::test]
async fn a_downgrading_driver_policy_never_lowers_a_strong_read() {
    let rig = Rig::start_with(
        vec![
            Script::query_at(
                "ck = 'r1'",
                Consistency::LocalQuorum,
                vec![Reply::Unavailable],
            ),
            Script::query_at(
                "pk = 'p'",
                Consistency::LocalQuorum,
                vec![Reply::Unavailable],
            ),
        ],
        Some(Arc::new(
            scylla::policies::retry::DowngradingConsistencyRetryPolicy::new(),
        )),
    )
    .await;
    let mut rig = rig;
    let mut a = rig.service(vet());
    let session = Session::new();
    rig.lag(0);
    call(&mut a, session.request(insert("p", "r1", "mine")))
        .await
        .unwrap();
    let row = call(&mut a, session.request(read_row("p", "r1"))).await;
    let partition = call(&mut a, session.request(read_partition("p"))).await;
    // Every frame the node answered, the forged `Unavailable` ones included.
    let wire: Vec<_> = rig
        .node
        .seen()
        .into_iter()
        .map(|w| (w.text, w.consistency))
        .collect();
    eprintln!(
        "downgraded: row {} / partition {} / wire {wire:#?}",
        describe(&row),
        describe(&partition)
    );
    assert!(
        wire.iter()
            .all(|(_, c)| matches!(c, Some(Consistency::LocalOne | Consistency::LocalQuorum))),
        "{wire:#?}"
    );
    assert!(row.unwrap().visibility().is_pending());
    let error = partition.unwrap_err();
    assert!(
        error.store_error().is_some_and(ScyllaError::is_unavailable),
        "{error:?}"
    );
    rig.stop().await;
}

/// The same driver policy: a write the layer sends at `LOCAL_QUORUM` is answered
/// `Unavailable`. The driver would retry it at `ONE` (one replica would hold it, and the session
/// would count it as a quorum write); under `ScyllaService` it is never sent below
/// `LOCAL_QUORUM`, and fails `Unavailable` (nothing applied).
#[tokio::test]
async fn a_downgrading_driver_policy_never_lowers_a_write() {
    let rig = Rig::start_with(
        vec![Script::query_at(
            "'r1', 'mine')",
            Consistency::LocalQuorum,
            vec![Reply::Unavailable],
        )],
        Some(Arc::new(
            scylla::policies::retry::DowngradingConsistencyRetryPolicy::new(),
        )),
    )
    .await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
    }
    let w = call(&mut a, session.request(insert("p", "r1", "mine"))).await;
    eprintln!(
        "write: {:?}",
        w.as_ref()
            .map(|w| w.visibility().clone())
            .map_err(|e| e.to_string())
    );
    {
        // The next reads reach other replicas.
        let mut c = rig.cluster();
        c.one = 1;
        c.quorum = [1, 2];
    }
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    let wire: Vec<_> = rig
        .cluster()
        .wire
        .iter()
        .map(|w| (w.0.clone(), w.1))
        .collect();
    eprintln!("read: {} / wire {wire:#?}", describe(&read));
    let error = w.unwrap_err();
    assert!(
        error.store_error().is_some_and(ScyllaError::is_unavailable),
        "{error:?}"
    );
    assert!(!error.may_have_applied());
    assert!(
        wire.iter()
            .all(|(text, c)| !text.starts_with("INSERT") || *c == Some(Consistency::LocalQuorum)),
        "{wire:#?}"
    );
    rig.stop().await;
}

/// A write whose statement carries its own consistency (`ONE`) is sent at `LOCAL_QUORUM`
/// all the same, so the quorum the session counts on holds it.
#[tokio::test]
async fn a_write_with_its_own_consistency_one() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
    }
    let write = ScyllaRequest::write(
        statement_at(
            "INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'mine')",
            Consistency::One,
        ),
        (),
    )
    .row("p", "r1");
    call(&mut a, session.request(write)).await.unwrap();
    rig.cluster().one = 1;
    let read = call(&mut a, session.request(read_row("p", "r1"))).await;
    eprintln!(
        "own-consistency write: {} wire {:?}",
        describe(&read),
        rig.cluster().wire
    );
    let r = read.unwrap();
    assert!(
        !r.visibility().is_guaranteed() || bodies(&r) == vec![Some("mine".to_string())],
        "{:?} {:?}",
        r.visibility(),
        bodies(&r)
    );
    rig.stop().await;
}

/// A batch across two partitions (`.row(p, r1).row(q, r1)`), which Scylla does not make
/// visible atomically: the replica the reads go to holds `q`'s mutation and misses `p`'s. The
/// row read of `p` and the listing of `p` must not be `Guaranteed` without it.
#[tokio::test]
async fn a_batch_across_partitions_seen_half_applied() {
    let rig = Rig::start().await;
    let mut a = rig.service(vet());
    let session = Session::new();
    {
        let mut c = rig.cluster();
        c.one = 0;
        c.quorum = [1, 2];
    }
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement("INSERT INTO app.t (pk, ck, body) VALUES ('p', 'r1', 'mine-p')");
    batch.append_statement("INSERT INTO app.t (pk, ck, body) VALUES ('q', 'r1', 'mine-q')");
    let write = ScyllaRequest::batch(batch, vec![Arc::new(()), Arc::new(())])
        .row("p", "r1")
        .row("q", "r1");
    call(&mut a, session.request(write)).await.unwrap();
    {
        // Replica 0 has q's half only.
        let mut c = rig.cluster();
        for m in c.log.iter_mut() {
            if matches!(&m.op, Op::Cells { pk, .. } if pk == "p") {
                m.on[0] = false;
            }
        }
    }
    let q = call(&mut a, session.request(read_row("q", "r1")))
        .await
        .unwrap();
    assert_eq!(q.visibility(), &Visibility::Guaranteed(FencePath::Verified));
    let p = call(&mut a, session.request(read_row("p", "r1")))
        .await
        .unwrap();
    assert!(p.visibility().is_guaranteed());
    assert_eq!(bodies(&p), vec![Some("mine-p".to_string())]);
    let listing = call(&mut a, session.request(read_partition("p")))
        .await
        .unwrap();
    assert!(listing.visibility().is_guaranteed());
    assert_eq!(
        partition_rows(&listing),
        vec![("r1".to_string(), Some("mine-p".to_string()))]
    );
    rig.stop().await;
}
