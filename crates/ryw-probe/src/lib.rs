//! `ryw-probe`: how stale are this store's replicas, and what would ryw cost here while keeping
//! its promise?
//!
//! Three subcommands, on the embedded simulated store (`--store sim`, no setup), DynamoDB,
//! MongoDB or ScyllaDB:
//!
//! - `lag` writes probe items and reads each back on the cheap path at a set of delays: the
//!   t-visibility curve (the share of cheap reads that saw a write made t ms earlier) and
//!   quantiles of how long writes stayed invisible.
//! - `check` runs a seeded workload of several sessions, whose requests go to several simulated
//!   app instances sharing only the session token, twice: raw, and through ryw. Both histories
//!   are judged by `ryw_sim::checker`: violations of each, ryw's strong reads against the reads
//!   that were really stale, and read latency.
//! - `recommend` measures t-visibility and prints the fence configuration for the store, from
//!   the adaptive fence's own estimator.
//!
//! Each writes a terminal summary, and on request JSON (`--json`) and a self-contained HTML
//! report with its plots as inline SVG (`--report`). It writes only under `--prefix` in the
//! table or collection named, creates it only with `--create`, refuses one that holds other data
//! unless `--force`, is bounded by `--rate` and `--max-duration`, removes its items at the end,
//! and with `--dry-run` only says what it would do. Results gathered before an error or Ctrl-C are
//! kept in the JSON and the report, marked partial.
//!
//! ```text
//! cargo run -p ryw-probe -- lag --store sim --sim-lag 50 --json lag.json --report lag.html
//! cargo run -p ryw-probe -- check --store dynamodb --table probe --create
//! ```
//!
//! The library runs a parsed command line:
//!
//! ```
//! use clap::Parser;
//! use ryw_probe::cli::Cli;
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//!
//! let cli = Cli::parse_from(["ryw-probe", "lag", "--store", "sim", "--sim-lag", "30",
//!     "--writes", "20", "--delays", "0,10,20,40,80", "--quiet"]);
//! let rt = tokio::runtime::Builder::new_current_thread()
//!     .enable_time()
//!     .start_paused(true)
//!     .build()
//!     .unwrap();
//! let done = rt.block_on(ryw_probe::run(cli, Arc::new(AtomicBool::new(false)))).unwrap();
//! let curve = &done.json["t_visibility"];
//! assert_eq!(curve[0]["p_visible"], 0.0); // nothing is visible at once
//! assert_eq!(curve[4]["p_visible"], 1.0); // everything after 80 ms
//! ```
//!
//! The repository's guide goes further: docs/probe.md (the commands, the stores, exit codes and
//! sample output).

pub mod check;
pub mod cli;
pub mod error;
pub mod lag;
mod pace;
pub mod recommend;
mod report;
mod store;

use cli::{CheckArgs, Cli, Command, LagArgs, OutputArgs, StoreArgs, StoreKind};
pub use error::{ProbeError, Stop};
use pace::Pace;
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::ProbeStore;

/// What a run produced.
#[derive(Debug)]
pub struct Done {
    /// The terminal summary.
    pub summary: String,
    /// The JSON document (also written to `--json`).
    pub json: serde_json::Value,
}

enum Job {
    Lag(LagArgs),
    Check(CheckArgs),
    Recommend(LagArgs, u64),
}

/// Runs `cli`; `interrupted` is set by Ctrl-C. On an error after results were gathered, they are
/// written (marked partial) before the error is returned.
pub async fn run(cli: Cli, interrupted: Arc<AtomicBool>) -> Result<Done, ProbeError> {
    let (store, job, output) = match cli.command {
        Command::Lag { store, lag, output } => (store, Job::Lag(lag), output),
        Command::Check {
            store,
            check,
            output,
        } => (store, Job::Check(check), output),
        Command::Recommend {
            store,
            lag,
            budget,
            output,
        } => (store, Job::Recommend(lag, budget), output),
    };
    let instances = match &job {
        Job::Check(c) => c.instances.max(1),
        _ => 1,
    };
    validate(&store, &job)?;
    match store.store {
        StoreKind::Sim => {
            let mut s = store::sim::Sim::new(
                Duration::from_millis(store.sim_lag),
                Duration::from_millis(store.sim_lag_tail),
                store.seed,
                instances,
            );
            execute(&mut s, &store, job, &output, interrupted).await
        }
        StoreKind::Dynamodb => {
            let table = store
                .table
                .clone()
                .ok_or_else(|| ProbeError::Usage("--store dynamodb needs --table NAME".into()))?;
            let mut s =
                store::dynamodb::Dynamo::connect(table, store.endpoint_url.clone(), instances)
                    .await?;
            execute(&mut s, &store, job, &output, interrupted).await
        }
        StoreKind::Mongodb => {
            let (Some(uri), Some(collection)) = (&store.uri, &store.collection) else {
                return Err(ProbeError::Usage(
                    "--store mongodb needs --uri URI and --collection db.coll".into(),
                ));
            };
            let mut s = store::mongodb::Mongo::connect(uri, collection, instances).await?;
            execute(&mut s, &store, job, &output, interrupted).await
        }
        StoreKind::Scylla => {
            let (Some(nodes), Some(table)) = (&store.nodes, &store.table) else {
                return Err(ProbeError::Usage(
                    "--store scylla needs --nodes HOST:PORT,... and --table keyspace.table".into(),
                ));
            };
            let mut s = store::scylla::Scylla::connect(nodes, table, instances).await?;
            execute(&mut s, &store, job, &output, interrupted).await
        }
    }
}

fn validate(store: &StoreArgs, job: &Job) -> Result<(), ProbeError> {
    if store.rate.is_nan() || store.rate <= 0.0 {
        return Err(ProbeError::Usage("--rate must be above 0".into()));
    }
    if store.prefix.is_empty() || store.prefix.len() > 200 {
        return Err(ProbeError::Usage(
            "--prefix must be 1 to 200 characters".into(),
        ));
    }
    match job {
        Job::Lag(l) | Job::Recommend(l, _) => {
            if l.writes == 0 {
                return Err(ProbeError::Usage("--writes must be at least 1".into()));
            }
            if l.delays_ms().iter().any(|&d| d > 600_000) {
                return Err(ProbeError::Usage("--delays are at most 600000 ms".into()));
            }
        }
        Job::Check(c) => {
            if c.sessions == 0 || c.ops == 0 {
                return Err(ProbeError::Usage(
                    "--sessions and --ops must be at least 1".into(),
                ));
            }
        }
    }
    Ok(())
}

fn progress(len: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn execute<S: ProbeStore>(
    store: &mut S,
    args: &StoreArgs,
    job: Job,
    output: &OutputArgs,
    interrupted: Arc<AtomicBool>,
) -> Result<Done, ProbeError> {
    let run_id = format!("{:08x}", ryw::SessionId::random().as_u128() as u32);
    let prefix = format!("{}/{run_id}", args.prefix);
    if args.dry_run {
        let what = match &job {
            Job::Lag(l) | Job::Recommend(l, _) => format!(
                "write {} probe items under {prefix}/lag/, reading each back at {:?} ms",
                l.writes,
                l.delays_ms()
            ),
            Job::Check(c) => format!(
                "run {} sessions of {} operations under {prefix}/raw/ and {prefix}/ryw/ through {} \
                 instances",
                c.sessions, c.ops, c.instances
            ),
        };
        let summary = format!(
            "dry run: would {what} in {}, at most {} operations/s for at most {} s, {}, then delete \
             every item written; nothing was done\n",
            store.describe(),
            args.rate,
            args.max_duration,
            if args.create {
                "creating the table or collection if it is missing"
            } else {
                "without creating anything"
            }
        );
        return Ok(Done {
            summary,
            json: json!({ "dry_run": true }),
        });
    }
    store.prepare(args.create, args.force).await?;
    let pace = Pace::new(
        args.rate,
        Duration::from_secs(args.max_duration),
        interrupted,
    );
    let mut doc = json!({ "store": store.describe() });
    let mut summary = format!("{}\n", store.describe());
    let (failure, lag, check, recommendation, written) = match job {
        Job::Lag(ref l) | Job::Recommend(ref l, _) => {
            let keys: Vec<String> = (0..l.writes).map(|i| format!("{prefix}/lag/{i}")).collect();
            let bar = progress(keys.len() as u64, output.quiet);
            bar.set_message("probe writes");
            let written = Mutex::new(Vec::new());
            let (result, failure) = lag::run(
                store,
                &keys,
                &l.delays_ms(),
                l.concurrency,
                &pace,
                &bar,
                &written,
            )
            .await;
            bar.finish_and_clear();
            let recommendation = match job {
                Job::Recommend(_, budget) => {
                    Some(recommend::recommend(&result, Duration::from_millis(budget)))
                }
                _ => None,
            };
            (
                failure,
                Some(result),
                None,
                recommendation,
                written.into_inner().unwrap(),
            )
        }
        Job::Check(ref c) => {
            let bar = progress((2 * c.sessions * c.ops) as u64, output.quiet);
            bar.set_message("operations");
            let written = Mutex::new(Vec::new());
            let workload = check::Workload {
                sessions: c.sessions,
                ops: c.ops,
                instances: c.instances.max(1),
                seed: args.seed,
            };
            let (result, failure) =
                check::run(store, &prefix, workload, &pace, &bar, &written).await;
            bar.finish_and_clear();
            let mut keys = written.into_inner().unwrap();
            keys.sort();
            keys.dedup();
            (failure, None, Some(result), None, keys)
        }
    };
    // The probe's items go, whatever happened (a stop or an error ends the run, not the cleanup).
    if let Err(e) = store.cleanup(&written).await {
        summary.push_str(&format!(
            "warning: could not remove every probe item under {prefix}/: {e}\n"
        ));
    }
    let partial = failure.as_ref().map(|e| e.to_string());
    doc["partial"] = json!(partial.is_some());
    if let Some(why) = &partial {
        doc["partial_reason"] = json!(why);
        summary.push_str(&format!("partial results: {why}\n"));
    }
    if let Some(l) = &lag {
        doc["t_visibility"] = serde_json::to_value(&l.t_visibility).unwrap_or_default();
        doc["staleness"] = serde_json::to_value(&l.staleness).unwrap_or_default();
        summary.push_str("delay (ms)   p(visible)   samples\n");
        for p in &l.t_visibility {
            summary.push_str(&format!(
                "{:>10}   {:>10.3}   {:>7}\n",
                p.delay_ms, p.p_visible, p.samples
            ));
        }
        let ms = |v: Option<u64>| v.map_or("later".to_owned(), |v| format!("{v} ms"));
        summary.push_str(&format!(
            "time to visibility: p50 {}, p90 {}, p99 {}; {} of {} writes unseen at the longest delay\n",
            ms(l.staleness.p50_ms),
            ms(l.staleness.p90_ms),
            ms(l.staleness.p99_ms),
            l.staleness.unseen,
            l.time_to_visibility_ms.len()
        ));
    }
    if let Some(r) = &recommendation {
        doc["recommendation"] = serde_json::to_value(r).unwrap_or_default();
        summary.push_str(&match r.delay_ms {
            Some(d) => format!(
                "recommendation: re-read once after {d} ms, then escalate (about {:.0}% of stale \
                 reads caught up by then; budget {} ms)\n",
                100.0 * r.p_caught_up.unwrap_or(0.0),
                r.budget_ms
            ),
            None => format!(
                "recommendation: escalate at once: within the {} ms budget a re-read would meet \
                 the fence for only {:.0}% of stale reads\n",
                r.budget_ms,
                100.0 * r.p_caught_up.unwrap_or(0.0)
            ),
        });
        summary.push_str(&format!("  {}\n", r.code));
    }
    if let Some(c) = &check {
        doc["raw"] = serde_json::to_value(&c.raw).unwrap_or_default();
        doc["ryw"] = serde_json::to_value(&c.ryw).unwrap_or_default();
        let share = |n: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                100.0 * n as f64 / d as f64
            }
        };
        summary.push_str(&format!(
            "raw: {} violations; {} of {} reads stale ({:.1}%); read p50 {:.2} ms, p99 {:.2} ms\n\
             ryw: {} violations; {} of {} reads on the strong path ({:.1}%), {} pending; read p50 \
             {:.2} ms, p99 {:.2} ms\n",
            c.raw.violations,
            c.raw.stale_reads,
            c.raw.reads,
            share(c.raw.stale_reads, c.raw.reads),
            c.raw.p50_ms,
            c.raw.p99_ms,
            c.ryw.violations,
            c.ryw.strong_reads,
            c.ryw.reads,
            share(c.ryw.strong_reads, c.ryw.reads),
            c.ryw.pending,
            c.ryw.p50_ms,
            c.ryw.p99_ms
        ));
    }
    if let Some(path) = &output.json {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(path, text + "\n")
            .map_err(|e| ProbeError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &output.report {
        let page = report::html(
            "ryw-probe report",
            &store.describe(),
            partial.as_deref(),
            lag.as_ref(),
            check.as_ref(),
            recommendation.as_ref(),
        );
        std::fs::write(path, page)
            .map_err(|e| ProbeError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    match failure {
        Some(e) => {
            eprint!("{summary}");
            Err(e)
        }
        None => Ok(Done { summary, json: doc }),
    }
}
