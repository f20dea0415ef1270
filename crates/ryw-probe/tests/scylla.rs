//! `ryw-probe` against a scripted CQL node (ScyllaDB's own test proxy, `scylla-proxy`, in dry
//! mode, as ryw-scylla's tests use it): the node answers `LOCAL_ONE` reads as a replica that
//! receives each write L ms after it was made, and `LOCAL_QUORUM` reads with the write at once.
//! The scripted stale answers appear in the probe's curve, and `check` finds raw violations and
//! none through ryw.

#[path = "../../ryw-scylla/tests/proxy/scripted_node.rs"]
mod scripted_node;

use scripted_node::{Cell, CqlType, Reply, Script, ScriptedScyllaNode};
use scylla::statement::Consistency;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What each key's last write was: when, its value and its write timestamp.
type Written = Arc<Mutex<HashMap<String, (Instant, i64, i64)>>>;

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

fn row(v: i64, ts: i64) -> Reply {
    Reply::Rows {
        columns: vec![("v", CqlType::BigInt), ("writetime(v)", CqlType::BigInt)],
        rows: vec![vec![Cell::BigInt(v), Cell::BigInt(ts)]],
    }
}

fn no_rows() -> Reply {
    Reply::Rows {
        columns: vec![("v", CqlType::BigInt), ("writetime(v)", CqlType::BigInt)],
        rows: vec![],
    }
}

async fn node(lag: Duration) -> ScriptedScyllaNode {
    let written: Written = Arc::default();
    let w = written.clone();
    let write = Reply::Dynamic(Arc::new(move |seen| {
        let key = between(&seen.text, "VALUES ('", "'")
            .unwrap_or_default()
            .to_owned();
        let value = between(&seen.text, "', ", ")")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ts = seen.timestamp.unwrap_or(0);
        w.lock().unwrap().insert(key, (Instant::now(), value, ts));
        Reply::Void
    }));
    let read = |replica_lag: Duration| {
        let w = written.clone();
        Reply::Dynamic(Arc::new(move |seen| {
            let key = between(&seen.text, "pk = '", "'").unwrap_or_default();
            match w.lock().unwrap().get(key) {
                Some((at, v, ts)) if at.elapsed() >= replica_lag => row(*v, *ts),
                _ => no_rows(),
            }
        }))
    };
    ScriptedScyllaNode::start(vec![
        Script::query(
            "/* ryw-probe check */",
            vec![Reply::Rows {
                columns: vec![("pk", CqlType::Text)],
                rows: vec![],
            }],
        ),
        Script::query("/* ryw-probe write */", vec![write]),
        Script::query_at(
            "/* ryw-probe read */",
            Consistency::LocalOne,
            vec![read(lag)],
        ),
        Script::query_at(
            "/* ryw-probe read */",
            Consistency::LocalQuorum,
            vec![read(Duration::ZERO)],
        ),
        Script::query("/* ryw-probe cleanup */", vec![Reply::Void]),
    ])
    .await
}

async fn probe(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ryw-probe"))
            .args(&args)
            .arg("--quiet")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ryw-probe-scylla-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_stale_replicas_appear_in_the_curve_and_check_holds_through_ryw() {
    let node = node(Duration::from_millis(200)).await;
    let nodes = node.addr.to_string();
    let out = temp("lag.json");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(
            [
                "--store",
                "scylla",
                "--nodes",
                &nodes,
                "--table",
                "app.probe",
            ]
            .map(String::from),
        );
        v
    };
    let run = probe(args(&[
        "lag",
        "--writes",
        "6",
        "--delays",
        "0,30,60,400,600",
        "--json",
        out.to_str().unwrap(),
    ]))
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for point in doc["t_visibility"].as_array().unwrap() {
        let (d, p) = (
            point["delay_ms"].as_u64().unwrap(),
            point["p_visible"].as_f64().unwrap(),
        );
        if d <= 60 {
            assert_eq!(p, 0.0, "a stale answer at {d} ms should show");
        } else {
            assert_eq!(p, 1.0, "at {d} ms the replica has it");
        }
    }
    let out = temp("check.json");
    let run = probe(args(&[
        "check",
        "--sessions",
        "3",
        "--ops",
        "12",
        "--json",
        out.to_str().unwrap(),
    ]))
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(doc["raw"]["violations"].as_u64().unwrap() > 0, "{doc}");
    assert_eq!(doc["ryw"]["violations"], 0, "{doc}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_table_name_and_an_unreachable_node_are_refused() {
    let run = probe(
        [
            "lag",
            "--store",
            "scylla",
            "--nodes",
            "127.0.0.1:1",
            "--table",
            "no-dots",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(run.status.code(), Some(2));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = probe(
        [
            "lag",
            "--store",
            "scylla",
            "--nodes",
            &format!("127.0.0.1:{port}"),
            "--table",
            "app.probe",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
