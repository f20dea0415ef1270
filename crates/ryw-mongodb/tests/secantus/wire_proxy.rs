//! TEST ONLY. A MongoDB wire proxy in front of SecantusDB that plays a secondary whose `find`
//! answers come from a snapshot taken before the session's last write.
//!
//! SecantusDB is a single node: every read sees every acknowledged write. Through
//! [`StaleSecondaryForTests`] (the driver connects with `directConnection=true`), every message goes
//! to SecantusDB and back unchanged, except the reply to a `find` of the watched collection sent
//! with a secondary read preference (the layer's cheap read): the documents the snapshot lacks are
//! taken out of its first batch, and its `operationTime` is either set to the snapshot's time (a
//! reply that tells how far its snapshot is) or left as the node reported it, at or after the
//! session's write (a reply whose `operationTime` is later than its snapshot). A `find` sent to the
//! primary (the escalated read) is answered unchanged.

use mongodb::bson::{Bson, Document, Timestamp};
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const OP_MSG: i32 = 2013;

/// What the stale secondary's snapshot lacks, and the `operationTime` it reports.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// Documents whose `field` equals `value` are not in the snapshot.
    pub(crate) field: String,
    /// See `field`.
    pub(crate) value: Bson,
    /// `Some(t)`: the reply reports `t` (the snapshot's own time); `None`: the reply keeps the
    /// `operationTime` the node reported.
    pub(crate) operation_time: Option<Timestamp>,
    /// A `find` that carries `readConcern.afterClusterTime` is answered by the node as it is (a
    /// MongoDB node waits until its snapshot holds that time); `false`: the snapshot answers it
    /// too, as a node that ignored it would.
    pub(crate) honours_after_cluster_time: bool,
}

/// The proxy. Stops accepting connections when dropped.
pub(crate) struct StaleSecondaryForTests {
    /// The address to give the driver (`mongodb://<addr>/?directConnection=true`).
    pub(crate) addr: String,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    /// `find` replies answered from the stale snapshot.
    pub(crate) stale_finds: Arc<AtomicUsize>,
    /// `find` commands of the watched collection sent to the primary.
    pub(crate) primary_finds: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for StaleSecondaryForTests {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ids of the requests whose replies are answered from the snapshot.
type Noted = Arc<Mutex<HashSet<i32>>>;

#[derive(Clone)]
struct Shared {
    target: String,
    collection: String,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    stale: Arc<AtomicUsize>,
    primary: Arc<AtomicUsize>,
}

impl StaleSecondaryForTests {
    /// Proxies the server at `target` (`host:port`), watching `find`s of `collection`.
    pub(crate) async fn start(target: &str, collection: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Shared {
            target: target.to_owned(),
            collection: collection.to_owned(),
            snapshot: Arc::default(),
            stale: Arc::default(),
            primary: Arc::default(),
        };
        let (snapshot, stale_finds, primary_finds) = (
            shared.snapshot.clone(),
            shared.stale.clone(),
            shared.primary.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = relay(client, shared).await;
                });
            }
        });
        StaleSecondaryForTests {
            addr,
            snapshot,
            stale_finds,
            primary_finds,
            task,
        }
    }

    /// Secondary reads are answered from `snapshot` from now on (`None`: unchanged).
    pub(crate) fn serve(&self, snapshot: Option<Snapshot>) {
        *self.snapshot.lock().unwrap() = snapshot;
    }

    /// `find`s so far: (answered from the stale snapshot, sent to the primary).
    pub(crate) fn finds(&self) -> (usize, usize) {
        (
            self.stale_finds.load(Ordering::SeqCst),
            self.primary_finds.load(Ordering::SeqCst),
        )
    }
}

async fn relay(client: TcpStream, shared: Shared) -> io::Result<()> {
    let server = TcpStream::connect(&shared.target).await?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let noted = Noted::default();
    let requests = requests(client_read, server_write, shared.clone(), noted.clone());
    let replies = replies(server_read, client_write, shared, noted);
    tokio::select! {
        r = requests => r,
        r = replies => r,
    }
}

/// One wire message: its header fields and the rest.
struct Message {
    request_id: i32,
    response_to: i32,
    op_code: i32,
    rest: Vec<u8>,
}

async fn read_message(from: &mut OwnedReadHalf) -> io::Result<Message> {
    let mut header = [0u8; 16];
    from.read_exact(&mut header).await?;
    let field = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let length = usize::try_from(field(0)).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut rest = vec![0u8; length.saturating_sub(16)];
    from.read_exact(&mut rest).await?;
    Ok(Message {
        request_id: field(4),
        response_to: field(8),
        op_code: field(12),
        rest,
    })
}

async fn write_message(to: &mut OwnedWriteHalf, message: &Message) -> io::Result<()> {
    let length = i32::try_from(16 + message.rest.len()).map_err(|_| io::ErrorKind::InvalidData)?;
    let mut bytes = Vec::with_capacity(16 + message.rest.len());
    for field in [
        length,
        message.request_id,
        message.response_to,
        message.op_code,
    ] {
        bytes.extend_from_slice(&field.to_le_bytes());
    }
    bytes.extend_from_slice(&message.rest);
    to.write_all(&bytes).await
}

/// The body (section of kind 0) of an OP_MSG, if it is the only section.
fn body_of(message: &Message) -> Option<Document> {
    if message.op_code != OP_MSG || message.rest.len() < 5 || message.rest[4] != 0 {
        return None;
    }
    let flags = u32::from_le_bytes(message.rest[..4].try_into().unwrap());
    let end = message.rest.len() - if flags & 1 == 1 { 4 } else { 0 };
    let mut sections = &message.rest[5..end];
    let body = Document::from_reader(&mut sections).ok()?;
    sections.is_empty().then_some(body)
}

/// Client to server: forwards every message, noting the secondary `find`s of the collection.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Shared,
    noted: Noted,
) -> io::Result<()> {
    loop {
        let message = read_message(&mut from).await?;
        if let Some(body) = body_of(&message) {
            if body.get_str("find") == Ok(shared.collection.as_str()) {
                let mode = body
                    .get_document("$readPreference")
                    .and_then(|p| p.get_str("mode"))
                    .unwrap_or("primary");
                let to_primary = matches!(mode, "primary" | "primaryPreferred");
                let waits = body
                    .get_document("readConcern")
                    .is_ok_and(|r| r.get_timestamp("afterClusterTime").is_ok());
                if to_primary {
                    shared.primary.fetch_add(1, Ordering::SeqCst);
                } else if let Some(snapshot) = shared.snapshot.lock().unwrap().as_ref() {
                    if !(waits && snapshot.honours_after_cluster_time) {
                        noted.lock().unwrap().insert(message.request_id);
                    }
                }
            }
        }
        write_message(&mut to, &message).await?;
    }
}

/// Server to client: forwards every message, answering the noted `find`s from the snapshot.
async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Shared,
    noted: Noted,
) -> io::Result<()> {
    loop {
        let mut message = read_message(&mut from).await?;
        let stale = noted.lock().unwrap().remove(&message.response_to);
        let snapshot = shared.snapshot.lock().unwrap().clone();
        if let (true, Some(snapshot), Some(mut body)) = (stale, snapshot, body_of(&message)) {
            if let Ok(cursor) = body.get_document_mut("cursor") {
                if let Ok(batch) = cursor.get_array_mut("firstBatch") {
                    batch.retain(|d| {
                        d.as_document()
                            .and_then(|d| d.get(&snapshot.field))
                            .is_none_or(|v| *v != snapshot.value)
                    });
                }
            }
            if let Some(t) = snapshot.operation_time {
                body.insert("operationTime", Bson::Timestamp(t));
            }
            let mut rest = vec![0u8, 0, 0, 0, 0];
            body.to_writer(&mut rest)
                .map_err(|_| io::ErrorKind::InvalidData)?;
            message.rest = rest;
            shared.stale.fetch_add(1, Ordering::SeqCst);
        }
        write_message(&mut to, &message).await?;
    }
}
