//! A running node: its stores, its LAN transport, its link tasks and its core task.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_sync::store::{LmdbConfig, LmdbStore, Store};
use cairn_transports::lan::{Backoff, Discovery, Interfaces, Lan, LanConfig, LanEvent};
use rand_core_06::{OsRng, RngCore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::core::{Core, Story};
use super::link::{run_link, MeetingSummary};
use super::radio::{open_port, run_radio, SerialSpec};
use super::shared::{now_ms, Shared};
use super::RunArgs;
use crate::app::AppDb;
use crate::identity::Identity;

/// How often the core looks for queued messages (`cairn send` runs in another process),
/// contacts added and a new day. A read transaction that finds nothing costs microseconds;
/// this tick is most of a lightly loaded message's latency.
const TICK: Duration = Duration::from_millis(20);

/// Most link events the core handles in one batch.
const EVENT_BATCH: usize = 4096;

/// How long the higher of two nodes that found each other waits for the other to dial.
const FALLBACK_DIAL: Duration = Duration::from_millis(250);

/// Most LAN links at once.
const MAX_LINKS: usize = 64;

/// How often the status file is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Everything needed to start a node.
#[derive(Debug)]
pub struct NodeOptions {
    pub home: PathBuf,
    pub listen: SocketAddr,
    pub interfaces: Interfaces,
    pub discovery: bool,
    pub peers: Vec<SocketAddr>,
    /// Run the LAN transport.
    pub lan: bool,
    /// Serial bearers (cables and radios).
    pub serial: Vec<SerialSpec>,
    /// Where the demo listens to what happens (the daemon logs it instead).
    pub stories: Option<mpsc::UnboundedSender<(String, Story)>>,
}

impl NodeOptions {
    pub fn from_run_args(home: &Path, args: &RunArgs) -> anyhow::Result<NodeOptions> {
        let interfaces = if args.interfaces.is_empty() {
            Interfaces::All
        } else if args.interfaces.iter().all(|i| i == "lo") {
            Interfaces::LoopbackOnly
        } else {
            Interfaces::Named(args.interfaces.clone())
        };
        Ok(NodeOptions {
            home: home.to_path_buf(),
            listen: args
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            interfaces,
            discovery: true,
            peers: args.peers.clone(),
            lan: args.lan,
            serial: args.serial_specs()?,
            stories: None,
        })
    }
}

/// A running node; [`NodeHandle::shutdown`] stops it cleanly.
#[derive(Debug)]
pub struct NodeHandle {
    local_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    lan: Option<Arc<Lan>>,
}

impl NodeHandle {
    pub async fn start(options: NodeOptions) -> anyhow::Result<NodeHandle> {
        let home = options.home.clone();
        let config = crate::home::Home::at(&home)
            .load_config()
            .with_context(|| format!("reading the configuration in {}", home.display()))?;
        let passphrase = std::env::var("CAIRN_PASSPHRASE").ok();
        let identity = Identity::load(&home, passphrase.as_deref())
            .with_context(|| format!("unlocking the identity in {}", home.display()))?;
        let store = LmdbStore::open(&home.join("store"), LmdbConfig::default())
            .with_context(|| format!("opening the message store in {}", home.display()))?;
        let app = AppDb::open(&home, &identity).context("opening the message database")?;
        let today = crate::seal::period_of(now_ms() / 1000);
        let (shared, events) = Shared::new(
            store,
            Core::policy_for(&identity, today),
            *identity.public_key().as_bytes(),
            identity.hop_keys()?,
            config.network_key(),
            crate::direct::Direct::new(identity.mailbox_key()),
        );
        let name = config.display_name.clone();
        let core = Core::new(&home, identity, name.clone(), shared.clone(), app)?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![];
        let (lan, local_addr) = if options.lan {
            let mut instance = [0u8; 8];
            OsRng.fill_bytes(&mut instance);
            let lan_config = LanConfig {
                listen: options.listen,
                discovery: if options.discovery {
                    Discovery::Mdns {
                        interfaces: options.interfaces.clone(),
                    }
                } else {
                    Discovery::Off
                },
                static_peers: options.peers.clone(),
                max_links: MAX_LINKS,
                instance,
                backoff: Backoff::default(),
                fallback_dial: FALLBACK_DIAL,
            };
            let (lan, lan_events) = Lan::start(lan_config)
                .await
                .context("starting the LAN transport")?;
            let local_addr = lan.local_addr();
            let lan = Arc::new(lan);
            tasks.push(tokio::spawn(accept_links(
                shared.clone(),
                lan.clone(),
                lan_events,
                shutdown_rx.clone(),
                name.clone(),
                options.stories.clone(),
            )));
            (Some(lan), Some(local_addr))
        } else {
            (None, None)
        };
        for spec in options.serial {
            let port = open_port(&spec)?;
            tracing::info!(node = name, "serial link: {spec}");
            tasks.push(tokio::spawn(run_radio(
                shared.clone(),
                spec,
                port,
                name.clone(),
                options.stories.clone(),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(core_loop(
            core,
            events,
            shutdown_rx,
            options.stories,
        )));
        Ok(NodeHandle {
            local_addr,
            shutdown,
            tasks,
            lan,
        })
    }

    /// Where the LAN transport listens (`None` when the node runs without the LAN).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Closes every link politely, stops the tasks and the LAN transport.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some(lan) = self.lan.take() {
            // The link tasks are gone, so this is the last reference; if one lingers past
            // its timeout, dropping the handle stops the transport all the same.
            if let Ok(lan) = Arc::try_unwrap(lan) {
                lan.shutdown().await;
            }
        }
        Ok(())
    }
}

async fn accept_links(
    shared: Arc<Shared>,
    lan: Arc<Lan>,
    mut events: mpsc::Receiver<LanEvent>,
    mut shutdown: watch::Receiver<bool>,
    name: String,
    stories: Option<mpsc::UnboundedSender<(String, Story)>>,
) {
    let mut links = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    LanEvent::Connected { stream, remote, outbound, .. } => {
                        let shared = shared.clone();
                        let shutdown = shutdown.clone();
                        let lan = lan.clone();
                        let name = name.clone();
                        let stories = stories.clone();
                        links.spawn(async move {
                            let started = std::time::Instant::now();
                            let summary =
                                run_link(shared, stream, remote, outbound, shutdown).await;
                            if summary.redundant {
                                lan.link_redundant(remote);
                            } else {
                                lan.link_closed(remote);
                            }
                            let took = started.elapsed();
                            log_meeting(&name, &remote, &summary, took);
                            if let Some(tx) = stories {
                                let _ = tx.send((name, Story::Meeting {
                                    peer: summary.peer,
                                    items_sent: summary.items_sent,
                                    items_received: summary.items_received,
                                    bytes_sent: summary.bytes_sent,
                                    bytes_received: summary.bytes_received,
                                    millis: took.as_millis() as u64,
                                    ended_by: summary.ended_by,
                                }));
                            }
                        });
                    }
                    LanEvent::Discovered { addrs, .. } => {
                        tracing::debug!(node = name, ?addrs, "discovered a node");
                        if let Some(tx) = &stories {
                            let _ = tx.send((name.clone(), Story::Discovered { addrs }));
                        }
                    }
                    LanEvent::DialFailed { remote, error, retry_in } => {
                        tracing::debug!(node = name, %remote, ?error, ?retry_in, "dial failed");
                    }
                    _ => {}
                }
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Links see the same shutdown signal; give them a moment to say goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while links.join_next().await.is_some() {}
    })
    .await;
}

/// One line per meeting: who, over what, what moved, and why it ended.
pub(super) fn log_meeting(
    name: &str,
    remote: &dyn std::fmt::Display,
    s: &MeetingSummary,
    took: Duration,
) {
    if s.ended_by.contains("storage failed") {
        // Worth more than an info line: the disk is full or failing. Nothing committed is
        // lost and the peer keeps what we could not take; the link is retried.
        tracing::error!(
            node = name,
            %remote,
            "could not store what a peer sent (is the disk full?): {}; nothing stored is \
             lost, and the peer keeps what we could not take",
            s.ended_by
        );
    }
    let peer = s
        .peer
        .map(|p| hex_prefix(&p))
        .unwrap_or_else(|| "(no handshake)".into());
    tracing::info!(
        node = name,
        %remote,
        peer,
        sent_items = s.items_sent,
        received_items = s.items_received,
        bytes_out = s.bytes_sent,
        bytes_in = s.bytes_received,
        rounds = s.rounds,
        secs = format!("{:.2}", took.as_secs_f64()),
        "meeting ended: {}",
        s.ended_by
    );
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

async fn core_loop(
    mut core: Core,
    mut events: mpsc::UnboundedReceiver<super::shared::NodeEvent>,
    mut shutdown: watch::Receiver<bool>,
    stories: Option<mpsc::UnboundedSender<(String, Story)>>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told = Vec::new();
    loop {
        let result = tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    // Take whatever else is waiting too: handled as one batch.
                    let mut batch = vec![event];
                    while batch.len() < EVENT_BATCH {
                        match events.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    core.handle_all(batch, &mut told)
                }
                None => break,
            },
            _ = tick.tick() => core.tick(&mut told),
            _ = status.tick() => write_status(&core),
            _ = shutdown.changed() => break,
        };
        if let Err(error) = result {
            // A full disk or a damaged file: say so and keep serving the links.
            tracing::error!(node = core.name, "{error:#}");
        }
        for story in told.drain(..) {
            tracing::info!(node = core.name, "{story:?}");
            if let Some(tx) = &stories {
                let _ = tx.send((core.name.clone(), story));
            }
        }
    }
    let _ = std::fs::remove_file(crate::home::Home::at(&core.home).status_path());
}

/// `status.json` in the home, for `cairn status`: rewritten every second.
fn write_status(core: &Core) -> anyhow::Result<()> {
    let usage = core.shared.lock_store().usage()?;
    let peers_seen = core.shared.peers_seen.lock().map(|p| p.len()).unwrap_or(0);
    let status = crate::home::DaemonStatus {
        pid: std::process::id(),
        updated_at: now_ms() / 1000,
        peers_seen: peers_seen as u64,
        links_up: core.shared.links_up() as u64,
        store_items: usage.items,
        store_bytes: usage.bytes,
        carried: core.carried()?,
    };
    crate::home::Home::at(&core.home).write_status(&status)?;
    Ok(())
}
