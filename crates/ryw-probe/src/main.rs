//! The `ryw-probe` command; see the library docs.

use clap::Parser;
use ryw_probe::cli::{Cli, Command, StoreKind};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sim = match &cli.command {
        Command::Lag { store, .. }
        | Command::Check { store, .. }
        | Command::Recommend { store, .. } => store.store == StoreKind::Sim,
    };
    // The simulated store runs in simulated time: a run of minutes takes a second.
    let runtime = if sim {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ryw-probe: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        match ryw_probe::run(cli, interrupted).await {
            Ok(done) => {
                print!("{}", done.summary);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ryw-probe: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}
