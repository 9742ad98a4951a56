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
    /// Two real nodes on loopback: messages per second, latency, time to first delivery.
    Lan(cairn_tools::bench::lan::Args),
    /// Two radios on a virtual LoRa channel: bytes and airtime per message, throughput
    /// within the duty cycle, session setup cost.
    Radio(cairn_tools::bench::radio::Args),
    /// The queuer child of `lan` (queues Alice's messages beside her running node).
    #[command(hide = true)]
    LanQueue(cairn_tools::bench::lan::QueueArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Reconcile(args) => cairn_tools::bench::reconcile::run(&args)?,
        Command::Store(args) => cairn_tools::bench::store::run(&args)?,
        Command::Lan(args) => cairn_tools::bench::lan::run(&args)?,
        Command::Radio(args) => cairn_tools::bench::radio::run(&args)?,
        Command::LanQueue(args) => {
            // One line, read by the parent.
            println!(
                "{}",
                serde_json::to_string(&cairn_tools::bench::lan::queue(&args)?)?
            );
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
