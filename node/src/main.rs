//! `cairn`: the command people run.
//!
//! This release ships the store-and-forward core (`cairn-sync`) and its simulator; the daemon,
//! contacts and the LAN transport come next (see README). Until then the command says so
//! rather than pretending.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: an offline-first mesh messenger",
    long_about = "Cairn: an offline-first mesh messenger.\n\n\
        This build contains the sync core and the mesh simulator. Try the simulator:\n\
        \n    cargo run --release -p cairn-tools --bin cairn-sim -- --scenario field-team --seed 1\n\
        \nThe daemon (`cairn run`), contacts and `cairn demo` are not in this build yet."
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "cairn {}: the node daemon is not in this build yet; run `cairn --help`.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
