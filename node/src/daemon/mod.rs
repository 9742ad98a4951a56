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
mod radio;
mod shared;
pub mod testbed;

use std::net::SocketAddr;

pub use self::core::Story;
pub use node::{NodeHandle, NodeOptions};
pub use radio::SerialSpec;

use cairn_firmware_bridge::{LoraParams, RadioInfo, RadioKind};

/// What `cairn run` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// Run the LAN transport (on when no transport is named).
    pub lan: bool,
    /// Limit LAN discovery to these interfaces (all usable ones when empty).
    pub interfaces: Vec<String>,
    /// Where to listen for LAN links (default: all addresses, a port the system picks).
    pub listen: Option<SocketAddr>,
    /// Static LAN peers, for networks that block multicast.
    pub peers: Vec<SocketAddr>,
    /// Serial links, `PATH[:BAUD]`.
    pub serial: Vec<String>,
    /// What speaks on each serial link, in order (one kind for all when there is one).
    pub radio: Vec<RadioKind>,
    /// LoRa settings for radios the host configures.
    pub lora: LoraParams,
    /// Bluetooth LE (not available in this build).
    pub ble: bool,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            lan: false,
            interfaces: Vec::new(),
            listen: None,
            peers: Vec::new(),
            serial: Vec::new(),
            radio: Vec::new(),
            lora: LoraParams::sf7(),
            ble: false,
        }
    }
}

impl RunArgs {
    /// Pairs each `--serial` with its `--radio`.
    ///
    /// # Errors
    ///
    /// No `--radio` for a serial link, or counts that do not pair up.
    pub fn serial_specs(&self) -> anyhow::Result<Vec<SerialSpec>> {
        let kinds: Vec<RadioKind> = match (self.serial.len(), self.radio.len()) {
            (_, 0) if !self.serial.is_empty() => anyhow::bail!(
                "say what speaks on the serial port: --radio raw (a direct cable), kiss, rnode or meshtastic"
            ),
            (n, 1) => vec![self.radio[0]; n],
            (n, m) if n == m => self.radio.clone(),
            (n, m) => anyhow::bail!(
                "{n} --serial but {m} --radio: give one --radio for all, or one per --serial in the same order"
            ),
        };
        self.serial
            .iter()
            .zip(kinds)
            .map(|(port, kind)| {
                Ok(SerialSpec {
                    port: port
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--serial {port}: {e}"))?,
                    kind,
                    lora: self.lora,
                })
            })
            .collect()
    }
}

/// `cairn radio info`: opens the port, runs the firmware handshake, and returns what the
/// firmware reported.
///
/// # Errors
///
/// The port cannot be opened, or the device does not answer within `wait`.
pub fn radio_info(
    port: &str,
    kind: RadioKind,
    lora: LoraParams,
    wait: std::time::Duration,
) -> anyhow::Result<RadioInfo> {
    on_port(port, |port| radio::probe(port, kind, lora, wait))
}

/// Runs `task` on the serial port named `port`, in a runtime of its own (one-shot commands).
fn on_port<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    port: &str,
    task: impl FnOnce(cairn_transports::serial::SerialConfig) -> F,
) -> anyhow::Result<T> {
    let parsed = port.parse().map_err(|e| anyhow::anyhow!("{port}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(task(parsed))
}

/// Runs an in-person pairing over the radio or cable on `port` (see
/// [`crate::pair_link`]), with the other device's code already scanned into `pairing`.
///
/// # Errors
///
/// The port cannot be opened, the device does not answer, the pairing fails (a wrong or
/// substituted code), or the other device does not answer within `wait`.
pub fn pair_over_radio(
    port: &str,
    kind: RadioKind,
    lora: LoraParams,
    pairing: &mut crate::contact::Pairing,
    session: [u8; 8],
    wait: std::time::Duration,
) -> anyhow::Result<crate::contact::PairedContact> {
    on_port(port, |port| {
        radio::pair(port, kind, lora, pairing, session, wait)
    })
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(home: &std::path::Path, args: RunArgs) -> anyhow::Result<()> {
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
        match node.local_addr() {
            Some(addr) => tracing::info!(listen = %addr, "cairn is running; Ctrl-C stops it"),
            None => tracing::info!("cairn is running; Ctrl-C stops it"),
        }
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
