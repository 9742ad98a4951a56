//! `cairn-sim`: run Cairn's real sync engine over a contact trace in virtual time and print
//! one JSON object comparing it with an ideal flood.
//!
//! ```text
//! cairn-sim --scenario ring --seed 1 --json
//! cairn-sim --contacts contacts.csv --messages messages.csv --seed 1 --copies 8 --json
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;

use cairn_tools::sim::{self, scenario::Scenario, EngineConfig, StoreKind, Trace};

#[derive(Parser, Debug)]
#[command(
    name = "cairn-sim",
    about = "Deterministic mesh simulation of Cairn's sync engine; prints one JSON object"
)]
struct Cli {
    /// Built-in world: field-team, random-waypoint or ring.
    #[arg(long, conflicts_with_all = ["contacts", "messages"])]
    scenario: Option<String>,
    /// Contact trace CSV: start_s,end_s,node_a,node_b,bytes_per_s (with a header row).
    #[arg(long, requires = "messages")]
    contacts: Option<PathBuf>,
    /// Message trace CSV: created_s,msg_id,from,to,size_bytes,ttl_s (with a header row).
    #[arg(long, requires = "contacts")]
    messages: Option<PathBuf>,
    /// Seed of every random choice (scenario generation, losses, session salts).
    #[arg(long)]
    seed: u64,
    /// Pretty-print the JSON (default: one line).
    #[arg(long)]
    json: bool,
    /// Largest frame on the links, bytes.
    #[arg(long, default_value_t = 1024)]
    mtu: usize,
    /// Probability that a frame is lost (the session then breaks and is redialled).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Every node's buffer quota, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    buffer_bytes: u64,
    /// Copy budget of each message (binary spray-and-wait; 255 is close to epidemic).
    #[arg(long, default_value_t = 255, value_parser = clap::value_parser!(u8).range(1..))]
    copies: u8,
    /// Plain spray-and-wait: a last copy waits for its destination instead of moving
    /// towards it.
    #[arg(long)]
    no_focus: bool,
    /// Store implementation: mem or lmdb (one LMDB environment per node in a temp dir).
    #[arg(long, default_value = "mem")]
    store: String,
    /// Number of nodes of a built-in scenario.
    #[arg(long)]
    nodes: Option<usize>,
    /// Length of a built-in scenario, hours.
    #[arg(long)]
    hours: Option<f64>,
    /// Latency added to every frame, milliseconds.
    #[arg(long, default_value_t = 10)]
    frame_latency_ms: u64,
    /// Wait before redialling after a broken session, milliseconds.
    #[arg(long, default_value_t = 2000)]
    reconnect_backoff_ms: u64,
    /// Abandon a sync round after this long without hearing from the peer, milliseconds.
    #[arg(long, default_value_t = EngineConfig::default().stall_timeout_ms)]
    stall_timeout_ms: u64,
    /// Leave out `runtime_ms`, so that two runs with the same seed print identical bytes.
    #[arg(long)]
    no_timing: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let store: StoreKind = cli.store.parse().map_err(anyhow::Error::msg)?;
    if !(0.0..1.0).contains(&cli.loss) {
        bail!("--loss must be a probability in [0, 1), got {}", cli.loss);
    }
    let (name, trace) = match (&cli.scenario, &cli.contacts, &cli.messages) {
        (Some(name), None, None) => {
            let scenario: Scenario = name.parse()?;
            let trace = scenario
                .generate(cli.seed, cli.nodes, cli.hours)
                .with_context(|| format!("generating scenario {name}"))?;
            (scenario.name().to_owned(), trace)
        }
        (None, Some(contacts), Some(messages)) => {
            if cli.nodes.is_some() || cli.hours.is_some() {
                bail!("--nodes and --hours only apply to --scenario; a trace fixes both");
            }
            let trace = Trace::from_files(contacts, messages)
                .context("reading the trace (expected CSV files with a header row; see --help)")?;
            ("trace".to_owned(), trace)
        }
        _ => bail!("give either --scenario NAME or both --contacts FILE and --messages FILE"),
    };
    let config = EngineConfig {
        seed: cli.seed,
        mtu: cli.mtu,
        loss: cli.loss,
        buffer_bytes: cli.buffer_bytes,
        copies: cli.copies,
        focus: !cli.no_focus,
        frame_latency_ms: cli.frame_latency_ms,
        reconnect_backoff_ms: cli.reconnect_backoff_ms,
        stall_timeout_ms: cli.stall_timeout_ms,
        ..EngineConfig::default()
    };
    let mut report = sim::run(&name, &trace, &config, store).context("simulation failed")?;
    if !cli.no_timing {
        report.runtime_ms = Some(started.elapsed().as_millis() as u64);
    }
    let text = if cli.json {
        serde_json::to_string_pretty(&report)?
    } else {
        serde_json::to_string(&report)?
    };
    // A closed pipe (`| head`) is an error to report, not a panic.
    writeln!(std::io::stdout().lock(), "{text}").context("writing the report to stdout")?;
    Ok(())
}
