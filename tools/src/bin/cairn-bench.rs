//! `cairn-bench`: measurements that print one JSON object each.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cairn-bench",
    about = "Measure Cairn's protocol cores; prints one JSON object"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set reconciliation: our protocol next to negentropy on the same sets.
    Reconcile(cairn_tools::bench::reconcile::Args),
    /// Durable ingest rate and reconciliation-index memory of the LMDB store.
    Store(cairn_tools::bench::store::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Reconcile(args) => cairn_tools::bench::reconcile::run(&args)?,
        Command::Store(args) => cairn_tools::bench::store::run(&args)?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
