//! `ryw-probe` against SecantusDB (`RYW_MONGODB_URI`, started by `tests/run-all.sh`): a
//! single-node replica set, so every cheap read sees every write, and neither run of `check`
//! breaks a session guarantee. Without the server every test says it skipped.

use serde_json::Value;
use std::process::Output;

fn uri() -> Option<String> {
    match std::env::var("RYW_MONGODB_URI") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_MONGODB_URI is not"
            );
            eprintln!(
                "skipped: RYW_MONGODB_URI is not set (bash tests/run-all.sh starts SecantusDB)"
            );
            None
        }
    }
}

fn probe(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ryw-probe"))
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ryw-probe-secantus-{}-{name}", std::process::id()))
}

fn doc(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn one_node_shows_every_write_at_once_and_both_runs_hold() {
    let Some(uri) = uri() else { return };
    let coll = format!("ryw.probe{}", std::process::id());
    let out = temp("lag.json");
    let run = probe(&[
        "lag",
        "--store",
        "mongodb",
        "--uri",
        &uri,
        "--collection",
        &coll,
        "--create",
        "--writes",
        "10",
        "--delays",
        "0,5,20,100",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for point in doc(&out)["t_visibility"].as_array().unwrap() {
        assert_eq!(point["p_visible"], 1.0, "{point}");
        assert_eq!(point["samples"], 10);
    }
    let out = temp("check.json");
    let run = probe(&[
        "check",
        "--store",
        "mongodb",
        "--uri",
        &uri,
        "--collection",
        &coll,
        "--sessions",
        "4",
        "--ops",
        "15",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let d = doc(&out);
    assert_eq!(d["raw"]["violations"], 0, "{d}");
    assert_eq!(d["ryw"]["violations"], 0, "{d}");
    assert!(d["ryw"]["reads"].as_u64().unwrap() > 0);
}

#[test]
fn a_missing_collection_and_a_bad_namespace_are_refused() {
    let Some(uri) = uri() else { return };
    let run = probe(&[
        "lag",
        "--store",
        "mongodb",
        "--uri",
        &uri,
        "--collection",
        &format!("ryw.absent{}", std::process::id()),
    ]);
    assert_eq!(run.status.code(), Some(6));
    let run = probe(&[
        "lag",
        "--store",
        "mongodb",
        "--uri",
        &uri,
        "--collection",
        "nodot",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = probe(&[
        "lag",
        "--store",
        "mongodb",
        "--uri",
        &format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500"),
        "--collection",
        "ryw.x",
    ]);
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
