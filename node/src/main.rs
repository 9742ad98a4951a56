//! `cairn`: the command people and scripts run. See `cairn --help`, and [`cli`] for the
//! commands.
//!
//! Exit codes: 0 success, 1 error (one `error: ...` line on stderr), 2 usage error (clap).

mod cli;

use std::io;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli::default_log_level(&cli.command));
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`cairn messages | head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` puts the whole cause chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (or `default_level` when it is unset or invalid).
fn init_logging(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Fails only if a subscriber is already set, which cannot happen this early.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
