//! `ScriptedScyllaNode`: one CQL node played by ScyllaDB's own test proxy (`scylla-proxy`) in dry
//! mode. The real driver connects to it; the node answers the handshake, refuses the driver's
//! metadata queries (the driver then runs on placeholder metadata, as it is designed to), and
//! answers the test's statements from a script of [`Reply`] rules, recording every statement
//! frame it receives so the test can assert what went on the wire.
//!
//! The driver reaches the node through a small loopback relay that acknowledges every segment at
//! once (`TCP_QUICKACK`): the proxy writes a frame's header and body in two writes without
//! `TCP_NODELAY`, and without the relay every response waits out the driver's 40 ms delayed ACK.

#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla_cql::frame::protocol_features::ProtocolFeatures;
use scylla_cql::frame::request::RequestV2;
use scylla_proxy::{
    Condition, Node, Proxy, Reaction, RequestFrame, RequestOpcode, RequestReaction, RequestRule,
    ResponseFrame, ResponseOpcode, RunningProxy, TargetShard,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A wall-clock reading for the tests (2027-01-15), so write timestamps are known in advance.
pub(crate) const NOW: u64 = 1_800_000_000_000_000;

/// The wall clock the layer reads: fixed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FixedClock(pub u64);

impl ryw::clock::Clock for FixedClock {
    fn now_micros(&self) -> u64 {
        self.0
    }
}

/// A CQL type id of the protocol (v4), for result columns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CqlType {
    BigInt = 0x0002,
    Boolean = 0x0004,
    Int = 0x0009,
    Text = 0x000D,
}

/// A cell value of a forged row.
#[derive(Clone, Debug)]
pub(crate) enum Cell {
    Null,
    BigInt(i64),
    Int(i32),
    Boolean(bool),
    Text(&'static str),
    String(String),
}

impl Cell {
    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Cell::Null => None,
            Cell::BigInt(v) => Some(v.to_be_bytes().to_vec()),
            Cell::Int(v) => Some(v.to_be_bytes().to_vec()),
            Cell::Boolean(v) => Some(vec![u8::from(*v)]),
            Cell::Text(v) => Some(v.as_bytes().to_vec()),
            Cell::String(v) => Some(v.as_bytes().to_vec()),
        }
    }
}

/// A reply computed from the statement received (its text, consistency and timestamp).
pub(crate) type Respond = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// What the node answers to a statement.
#[derive(Clone)]
pub(crate) enum Reply {
    /// The reply `respond` computes for the statement (rows or void; not an error).
    Dynamic(Respond),
    /// RESULT Void (a write).
    Void,
    /// RESULT Rows with these columns and rows.
    Rows {
        columns: Vec<(&'static str, CqlType)>,
        rows: Vec<Vec<Cell>>,
    },
    /// RESULT Rows of one page: these columns and rows, and the paging state to resume from
    /// (`None`: the last page).
    Page {
        columns: Vec<(&'static str, CqlType)>,
        rows: Vec<Vec<Cell>>,
        paging_state: Option<Vec<u8>>,
    },
    /// RESULT Prepared for a statement with these bind markers (id `id`).
    Prepared {
        id: &'static [u8],
        markers: Vec<(&'static str, CqlType)>,
    },
    /// An ERROR: a write timeout (a write that may have applied).
    WriteTimeout,
    /// An ERROR: a read timeout.
    ReadTimeout,
    /// An ERROR: not enough replicas alive (nothing was written).
    Unavailable,
    /// An ERROR: a syntax error.
    SyntaxError,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Dynamic(_) => f.write_str("Dynamic"),
            Reply::Void => f.write_str("Void"),
            Reply::Rows { columns, rows } => f
                .debug_struct("Rows")
                .field("columns", columns)
                .field("rows", rows)
                .finish(),
            Reply::Page {
                columns,
                rows,
                paging_state,
            } => f
                .debug_struct("Page")
                .field("columns", columns)
                .field("rows", rows)
                .field("paging_state", paging_state)
                .finish(),
            Reply::Prepared { id, .. } => f.debug_struct("Prepared").field("id", id).finish(),
            Reply::WriteTimeout => f.write_str("WriteTimeout"),
            Reply::ReadTimeout => f.write_str("ReadTimeout"),
            Reply::Unavailable => f.write_str("Unavailable"),
            Reply::SyntaxError => f.write_str("SyntaxError"),
        }
    }
}

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

fn result_body(reply: &Reply) -> Bytes {
    let mut buf = BytesMut::new();
    match reply {
        Reply::Void => buf.put_i32(0x0001),
        Reply::Rows { .. } | Reply::Page { .. } => {
            let (columns, rows, paging_state) = match reply {
                Reply::Rows { columns, rows } => (columns, rows, None),
                Reply::Page {
                    columns,
                    rows,
                    paging_state,
                } => (columns, rows, paging_state.as_deref()),
                _ => unreachable!(),
            };
            buf.put_i32(0x0002);
            // Global table spec, and Has_more_pages with a paging state.
            let flags = if paging_state.is_some() {
                0x0003
            } else {
                0x0001
            };
            buf.put_i32(flags);
            buf.put_i32(columns.len() as i32);
            if let Some(state) = paging_state {
                buf.put_i32(state.len() as i32);
                buf.put_slice(state);
            }
            put_string(&mut buf, "app");
            put_string(&mut buf, "posts");
            for (name, typ) in columns {
                put_string(&mut buf, name);
                buf.put_u16(*typ as u16);
            }
            buf.put_i32(rows.len() as i32);
            for row in rows {
                for cell in row {
                    match cell.bytes() {
                        Some(b) => {
                            buf.put_i32(b.len() as i32);
                            buf.put_slice(&b);
                        }
                        None => buf.put_i32(-1),
                    }
                }
            }
        }
        Reply::Prepared { id, markers } => {
            buf.put_i32(0x0004);
            buf.put_u16(id.len() as u16);
            buf.put_slice(id);
            // Prepared metadata: global table spec, the bind markers, no partition key indexes.
            buf.put_i32(0x0001);
            buf.put_i32(markers.len() as i32);
            buf.put_i32(0);
            put_string(&mut buf, "app");
            put_string(&mut buf, "posts");
            for (name, typ) in markers {
                put_string(&mut buf, name);
                buf.put_u16(*typ as u16);
            }
            // Result metadata: none.
            buf.put_i32(0x0004);
            buf.put_i32(0);
        }
        Reply::WriteTimeout
        | Reply::ReadTimeout
        | Reply::Unavailable
        | Reply::SyntaxError
        | Reply::Dynamic(_) => {
            unreachable!("errors are forged by the proxy; a dynamic reply is computed first")
        }
    }
    buf.freeze()
}

/// A statement frame as the node received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub opcode: RequestOpcode,
    /// The statement text (QUERY), or the prepared id (EXECUTE); empty for BATCH.
    pub text: String,
    pub consistency: Option<Consistency>,
    pub timestamp: Option<i64>,
    /// Statement texts of a BATCH.
    pub batch: Vec<String>,
    /// The page size asked for (QUERY, EXECUTE), if any.
    pub page_size: Option<i32>,
    /// The paging state sent (QUERY, EXECUTE), if any: the page resumes there.
    pub paging_state: Option<Vec<u8>>,
}

fn decode(frame: &RequestFrame) -> Seen {
    let features = ProtocolFeatures::default();
    let mut seen = Seen {
        opcode: frame.opcode,
        text: String::new(),
        consistency: None,
        timestamp: None,
        batch: Vec::new(),
        page_size: None,
        paging_state: None,
    };
    match frame.deserialize(&features) {
        Ok(RequestV2::Query(q)) => {
            seen.text = q.contents.to_string();
            seen.consistency = Some(q.parameters.consistency);
            seen.timestamp = q.parameters.timestamp;
            seen.page_size = q.parameters.page_size;
            seen.paging_state = q
                .parameters
                .paging_state
                .as_bytes_slice()
                .map(|b| b.to_vec());
        }
        Ok(RequestV2::Execute(e)) => {
            seen.text = String::from_utf8_lossy(e.id.as_ref()).into_owned();
            seen.consistency = Some(e.parameters.consistency);
            seen.timestamp = e.parameters.timestamp;
            seen.page_size = e.parameters.page_size;
            seen.paging_state = e
                .parameters
                .paging_state
                .as_bytes_slice()
                .map(|b| b.to_vec());
        }
        Ok(RequestV2::Batch(b)) => {
            seen.consistency = Some(b.consistency);
            seen.timestamp = b.timestamp;
            seen.batch = b
                .statements
                .iter()
                .map(|s| match s {
                    scylla_cql::frame::request::batch::BatchStatement::Query { text } => {
                        text.to_string()
                    }
                    scylla_cql::frame::request::batch::BatchStatement::Prepared { id } => {
                        String::from_utf8_lossy(id).into_owned()
                    }
                })
                .collect();
        }
        _ => {}
    }
    seen
}

/// A rule of the script: statements whose frame body contains `marker` (case-sensitive), with
/// opcode `opcode`, get `replies` in turn (the last one repeats).
#[derive(Clone, Debug)]
pub(crate) struct Script {
    pub opcode: RequestOpcode,
    pub marker: &'static str,
    pub replies: Vec<Reply>,
    /// Only statements sent at this consistency (then `marker` must be the end of the QUERY
    /// text, or the whole EXECUTE id: the consistency follows it in the frame).
    pub consistency: Option<Consistency>,
}

/// The protocol's code of a consistency level.
fn consistency_code(c: Consistency) -> u16 {
    match c {
        Consistency::Any => 0x0000,
        Consistency::One => 0x0001,
        Consistency::Two => 0x0002,
        Consistency::Three => 0x0003,
        Consistency::Quorum => 0x0004,
        Consistency::All => 0x0005,
        Consistency::LocalQuorum => 0x0006,
        Consistency::EachQuorum => 0x0007,
        Consistency::Serial => 0x0008,
        Consistency::LocalSerial => 0x0009,
        Consistency::LocalOne => 0x000A,
    }
}

impl Script {
    pub(crate) fn query(marker: &'static str, replies: Vec<Reply>) -> Self {
        Script {
            opcode: RequestOpcode::Query,
            marker,
            replies,
            consistency: None,
        }
    }

    /// QUERY frames whose text ends with `suffix`, sent at `consistency`: a replica's view (a
    /// lagging `LOCAL_ONE` copy) apart from the quorum's (`LOCAL_QUORUM`).
    pub(crate) fn query_at(
        suffix: &'static str,
        consistency: Consistency,
        replies: Vec<Reply>,
    ) -> Self {
        Script {
            opcode: RequestOpcode::Query,
            marker: suffix,
            replies,
            consistency: Some(consistency),
        }
    }

    /// EXECUTE frames of prepared statement `id`, sent at `consistency`.
    pub(crate) fn execute_at(
        id: &'static str,
        consistency: Consistency,
        replies: Vec<Reply>,
    ) -> Self {
        Script {
            opcode: RequestOpcode::Execute,
            marker: id,
            replies,
            consistency: Some(consistency),
        }
    }
    pub(crate) fn prepare(marker: &'static str, reply: Reply) -> Self {
        Script {
            opcode: RequestOpcode::Prepare,
            marker,
            replies: vec![reply],
            consistency: None,
        }
    }
    pub(crate) fn execute(id: &'static str, replies: Vec<Reply>) -> Self {
        Script {
            opcode: RequestOpcode::Execute,
            marker: id,
            replies,
            consistency: None,
        }
    }
    pub(crate) fn batch(marker: &'static str, replies: Vec<Reply>) -> Self {
        Script {
            opcode: RequestOpcode::Batch,
            marker,
            replies,
            consistency: None,
        }
    }
}

/// Forwards every connection on `listener` to `upstream`, acknowledging the upstream's segments
/// at once.
async fn relay(listener: TcpListener, upstream: SocketAddr) {
    while let Ok((down, _)) = listener.accept().await {
        let Ok(up) = TcpStream::connect(upstream).await else {
            continue;
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (mut down_read, mut down_write) = down.into_split();
        let (mut up_read, mut up_write) = up.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
            let _ = up_write.shutdown().await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match up_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = up_read.as_ref().set_quickack(true);
                if down_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = down_write.shutdown().await;
        });
    }
}

/// One scripted node and the driver session connected to it.
pub(crate) struct ScriptedScyllaNode {
    /// Where the driver connects (the relay in front of the node).
    pub addr: SocketAddr,
    proxy: Option<RunningProxy>,
    seen: mpsc::UnboundedReceiver<(RequestFrame, Option<TargetShard>)>,
}

fn forge(reply: Reply) -> RequestReaction {
    match reply {
        Reply::WriteTimeout => RequestReaction::forge().write_timeout(),
        Reply::ReadTimeout => RequestReaction::forge().read_timeout(),
        Reply::Unavailable => RequestReaction::forge().unavailable(),
        Reply::SyntaxError => RequestReaction::forge().syntax_error(),
        Reply::Dynamic(respond) => {
            RequestReaction::forge_response(Arc::new(move |frame: RequestFrame| {
                let body = result_body(&respond(&decode(&frame)));
                ResponseFrame::new(frame.params.for_response(), ResponseOpcode::Result, body)
            }))
        }
        other => {
            let body = result_body(&other);
            RequestReaction::forge_response(Arc::new(move |frame: RequestFrame| {
                ResponseFrame::new(
                    frame.params.for_response(),
                    ResponseOpcode::Result,
                    body.clone(),
                )
            }))
        }
    }
}

impl ScriptedScyllaNode {
    /// Starts the node on a fresh loopback address, with `script` for the test's statements.
    pub(crate) async fn start(script: Vec<Script>) -> Self {
        let addr = SocketAddr::new(scylla_proxy::get_exclusive_local_address(), 9042);
        let (tx, seen) = mpsc::unbounded_channel();
        let mut rules = vec![
            RequestRule(
                Condition::RequestOpcode(RequestOpcode::Options),
                RequestReaction::forge_response(Arc::new(|frame: RequestFrame| {
                    ResponseFrame::forged_supported(frame.params, &HashMap::new()).unwrap()
                })),
            ),
            RequestRule(
                Condition::RequestOpcode(RequestOpcode::Startup)
                    .or(Condition::RequestOpcode(RequestOpcode::Register)),
                RequestReaction::forge_response(Arc::new(|frame: RequestFrame| {
                    ResponseFrame::forged_ready(frame.params)
                })),
            ),
        ];
        for s in script {
            let mut marker = s.marker.as_bytes().to_vec();
            if let Some(c) = s.consistency {
                marker.extend_from_slice(&consistency_code(c).to_be_bytes());
            }
            let condition = Condition::RequestOpcode(s.opcode)
                .and(Condition::BodyContainsCaseSensitive(marker.into()));
            let n = s.replies.len();
            for (i, reply) in s.replies.into_iter().enumerate() {
                // Each reply but the last answers once; the last one answers from then on.
                let condition = if i + 1 < n {
                    condition.clone().and(Condition::TrueForLimitedTimes(1))
                } else {
                    condition.clone()
                };
                let reaction = forge(reply);
                let reaction = if s.opcode == RequestOpcode::Prepare {
                    reaction
                } else {
                    reaction.with_feedback_when_performed(tx.clone())
                };
                rules.push(RequestRule(condition, reaction));
            }
        }
        // Everything else (the driver's metadata queries): a server error.
        rules.push(RequestRule(
            Condition::RequestOpcode(RequestOpcode::Query)
                .or(Condition::RequestOpcode(RequestOpcode::Prepare))
                .or(Condition::RequestOpcode(RequestOpcode::Execute))
                .or(Condition::RequestOpcode(RequestOpcode::Batch)),
            RequestReaction::forge().server_error(),
        ));
        let proxy = Proxy::builder()
            .with_node(
                Node::builder()
                    .proxy_address(addr)
                    .request_rules(rules)
                    .build_dry_mode(),
            )
            .build()
            .run()
            .await
            .expect("the scripted node starts");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the relay binds");
        let relay_addr = listener.local_addr().expect("the relay's address");
        tokio::spawn(relay(listener, addr));
        ScriptedScyllaNode {
            addr: relay_addr,
            proxy: Some(proxy),
            seen,
        }
    }

    /// A driver session connected to the node.
    pub(crate) async fn session(&self) -> Session {
        SessionBuilder::new()
            .known_node_addr(self.addr)
            .build()
            .await
            .expect("the driver connects to the scripted node")
    }

    /// The statement frames answered by the script so far, in order.
    pub(crate) fn seen(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok((frame, _)) = self.seen.try_recv() {
            out.push(decode(&frame));
        }
        out
    }

    /// Stops the node.
    pub(crate) async fn stop(mut self) {
        if let Some(p) = self.proxy.take() {
            let _ = p.finish().await;
        }
    }
}
