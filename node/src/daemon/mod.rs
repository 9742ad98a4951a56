//! The daemon (`cairn run`) and the demo (`cairn demo`): the edge where tokio drives the LAN
//! transport, the hop sessions and the sync engine over this node's stores.
//!
//! ```text
//!   LAN (mDNS + TCP) ──stream──▶ link task: HopSession ─frames─▶ SyncSession ─┐
//!                                          (one per peer)                     │ store mutex,
//!   core task: seal queued messages, open deliveries, receipts, statuses ◀───┘ one step at a time
//! ```

mod core;
mod demo;
mod link;
mod node;
mod shared;
pub mod testbed;

use std::net::SocketAddr;

pub use self::core::Story;
pub use node::{NodeHandle, NodeOptions};

/// What `cairn run` was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunArgs {
    /// Run the LAN transport (on when no transport is named).
    pub lan: bool,
    /// Limit LAN discovery to these interfaces (all usable ones when empty).
    pub interfaces: Vec<String>,
    /// Where to listen for LAN links (default: all addresses, a port the system picks).
    pub listen: Option<SocketAddr>,
    /// Static LAN peers, for networks that block multicast.
    pub peers: Vec<SocketAddr>,
    /// Serial links, `PATH[:BAUD]` (issue 5).
    pub serial: Vec<String>,
    /// Radio firmware kind on the serial links (issue 5).
    pub radio: Option<String>,
    /// Bluetooth LE (not available in this build).
    pub ble: bool,
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(home: &std::path::Path, args: RunArgs) -> anyhow::Result<()> {
    if !args.serial.is_empty() || args.radio.is_some() {
        anyhow::bail!("serial and radio links are not in this build yet (issue 5); use the LAN");
    }
    if args.ble {
        anyhow::bail!(
            "Bluetooth LE is not in this build: this machine has no Bluetooth to test it on"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let options = NodeOptions::from_run_args(home, &args)?;
        let node = NodeHandle::start(options).await?;
        tracing::info!(listen = %node.local_addr(), "cairn is running; Ctrl-C stops it");
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub use demo::demo;
