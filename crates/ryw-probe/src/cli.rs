//! The command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Measures how stale a store's replicas are, and what ryw costs there while keeping its promise.
#[derive(Debug, Parser)]
#[command(name = "ryw-probe", version)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// t-visibility: how often a cheap read sees a write made t milliseconds earlier.
    Lag {
        /// The store.
        #[command(flatten)]
        store: StoreArgs,
        /// The probe.
        #[command(flatten)]
        lag: LagArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Runs a seeded multi-session workload raw and through ryw, and judges both histories.
    Check {
        /// The store.
        #[command(flatten)]
        store: StoreArgs,
        /// The workload.
        #[command(flatten)]
        check: CheckArgs,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Measures t-visibility, then prints the fence configuration for this store.
    Recommend {
        /// The store.
        #[command(flatten)]
        store: StoreArgs,
        /// The probe.
        #[command(flatten)]
        lag: LagArgs,
        /// How long a read may wait to stay on the cheap path (ms).
        #[arg(long, default_value_t = 10)]
        budget: u64,
        /// Output.
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The embedded simulated store, in simulated time: no setup.
    Sim,
    /// DynamoDB (or an emulator): credentials and region from the default chain.
    Dynamodb,
    /// MongoDB.
    Mongodb,
    /// ScyllaDB (or Cassandra).
    Scylla,
}

/// Where the probe writes, and how carefully.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// The store.
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// sim: the replica's constant lag (ms).
    #[arg(long, default_value_t = 50)]
    pub sim_lag: u64,
    /// sim: a random extra lag, exponential with this mean (ms).
    #[arg(long, default_value_t = 0)]
    pub sim_lag_tail: u64,
    /// dynamodb: the table (partition key `pk`, a string); scylla: `keyspace.table`
    /// (`pk text PRIMARY KEY, v bigint`).
    #[arg(long)]
    pub table: Option<String>,
    /// scylla: `HOST:PORT[,HOST:PORT...]`.
    #[arg(long)]
    pub nodes: Option<String>,
    /// dynamodb: the endpoint (an emulator, a VPC endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// mongodb: the connection string.
    #[arg(long)]
    pub uri: Option<String>,
    /// mongodb: `database.collection`.
    #[arg(long)]
    pub collection: Option<String>,
    /// Create the table or collection when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Write into a table or collection that holds other data.
    #[arg(long)]
    pub force: bool,
    /// The most store operations per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Stop after this many seconds (results so far are kept, marked partial).
    #[arg(long, default_value_t = 300)]
    pub max_duration: u64,
    /// Print what would be done, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The prefix of every key the probe writes.
    #[arg(long, default_value = "ryw-probe")]
    pub prefix: String,
    /// The workload's seed.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
}

/// The t-visibility probe.
#[derive(Clone, Debug, Args)]
pub struct LagArgs {
    /// Probe writes.
    #[arg(long, default_value_t = 50)]
    pub writes: usize,
    /// Delays after each write at which it is read back (ms, comma-separated; default 0 to 2 s).
    #[arg(long, value_delimiter = ',')]
    pub delays: Option<Vec<u64>>,
    /// Probe writes in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// The check workload.
#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    /// Sessions (simulated users).
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Operations per session.
    #[arg(long, default_value_t = 30)]
    pub ops: usize,
    /// Simulated app instances; requests of a session go to a random one, sharing only its token.
    #[arg(long, default_value_t = 2)]
    pub instances: usize,
}

/// Where results go.
#[derive(Clone, Debug, Default, Args)]
pub struct OutputArgs {
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with its plots.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl LagArgs {
    /// The delays, sorted, deduplicated: the given ones, or 0 to 2 s.
    pub fn delays_ms(&self) -> Vec<u64> {
        let mut d = self.delays.clone().unwrap_or_else(|| {
            vec![
                0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000,
            ]
        });
        d.sort_unstable();
        d.dedup();
        d
    }
}
