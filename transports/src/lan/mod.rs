//! LAN transport: find other Cairn nodes on the local network and hold TCP links to them.
//!
//! This is an I/O edge: it binds a listener, speaks mDNS (through mdns-sd's own thread) and
//! dials with tokio. It does not authenticate anyone and never reads or writes a byte on a
//! link: every connected stream is handed to the daemon through [`LanEvent::Connected`], and
//! the daemon runs the Noise hop session ([`crate::hop`]) and sync over it, then tells us with
//! [`Lan::link_closed`] when the link ends.
//!
//! Two nodes that find each other would both dial; to get one link instead of two, only the
//! node with the lower instance id dials a discovered peer (the daemon still dedupes by
//! identity after the handshake, e.g. a static peer that is also discovered). Static peers
//! (`--peer host:port`, for networks that block multicast) are always dialed and redialed.
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_transports::lan::LanError> {
//! use cairn_transports::lan::{Backoff, Discovery, Interfaces, Lan, LanConfig, LanEvent};
//!
//! let config = LanConfig {
//!     listen: ([0, 0, 0, 0], 0).into(),
//!     discovery: Discovery::Mdns { interfaces: Interfaces::All },
//!     static_peers: Vec::new(),
//!     max_links: 64,
//!     instance: [7; 8], // draw this at random each run
//!     backoff: Backoff::default(),
//!     fallback_dial: std::time::Duration::from_millis(250),
//! };
//! let (lan, mut events) = Lan::start(config).await?;
//! while let Some(event) = events.recv().await {
//!     if let LanEvent::Connected { stream, remote, .. } = event {
//!         // run the hop session on `stream`; when it ends:
//!         # drop(stream);
//!         lan.link_closed(remote);
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod driver;
pub mod mdns;
mod socket;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

pub use backoff::Backoff;

/// A random number the caller draws per run; it names us on mDNS and orders who dials whom.
/// It must not be derived from the user's identity: it is visible to the whole network.
pub type InstanceId = [u8; 8];

/// How many [`LanEvent`]s may wait for the daemon before the transport pauses.
const EVENT_QUEUE: usize = 64;

/// Which interfaces mDNS may use.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interfaces {
    /// Every interface mdns-sd finds (and ones that appear later).
    All,
    /// 127.0.0.1 only: demos and tests that must not touch a real network.
    LoopbackOnly,
    /// Interfaces by name, e.g. `["wlan0"]`, to keep off VPNs and untrusted networks.
    Named(Vec<String>),
}

/// Whether and how we look for peers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discovery {
    /// Static peers only; nothing is advertised.
    Off,
    /// Advertise and browse `_cairn._tcp.local.` with mDNS on these interfaces.
    Mdns {
        /// Where multicast may go.
        interfaces: Interfaces,
    },
}

/// Everything the LAN transport needs to start.
#[derive(Clone, Debug)]
pub struct LanConfig {
    /// Where to listen; port 0 picks a free one (see [`Lan::local_addr`]).
    pub listen: SocketAddr,
    /// mDNS or none.
    pub discovery: Discovery,
    /// Addresses always dialed, redialed with backoff when the link drops.
    pub static_peers: Vec<SocketAddr>,
    /// Cap on concurrent links, inbound and outbound together, so a crowded or hostile network
    /// cannot exhaust file descriptors or the daemon's memory.
    pub max_links: usize,
    /// This run's random instance id.
    pub instance: InstanceId,
    /// Redial policy per address.
    pub backoff: Backoff,
    /// Of two nodes that discover each other, the lower instance dials at once; the higher
    /// one dials after this long if no link from the other came in (mDNS often tells one
    /// side long before the other). 250 ms is a good default.
    pub fallback_dial: Duration,
}

/// Something the daemon should know about.
#[derive(Debug)]
#[non_exhaustive]
pub enum LanEvent {
    /// A TCP link is up; the daemon owns it now and must call [`Lan::link_closed`] with
    /// `remote` when it ends, to free the slot and allow a redial.
    Connected {
        /// The link, with TCP_NODELAY and keepalive set.
        stream: TcpStream,
        /// The peer's address: the one we dialed, or the one the connection came from.
        remote: SocketAddr,
        /// Whether we dialed.
        outbound: bool,
        /// The peer's mDNS instance when we dialed a discovered peer; `None` for inbound links
        /// and static peers. Unauthenticated: a hint for logs, never an identity.
        instance: Option<InstanceId>,
    },
    /// mDNS found a node, or learnt new addresses for it (for logs and status displays).
    Discovered {
        /// Its instance id.
        instance: InstanceId,
        /// Its addresses, in the order we would dial them.
        addrs: Vec<SocketAddr>,
    },
    /// A node withdrew its advertisement.
    Lost {
        /// Its instance id.
        instance: InstanceId,
    },
    /// A dial failed; the address is tried again after `retry_in` if still wanted.
    DialFailed {
        /// The address that did not answer.
        remote: SocketAddr,
        /// What went wrong.
        error: io::ErrorKind,
        /// Backoff before that address is dialed again.
        retry_in: Duration,
    },
}

/// Why the LAN transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    /// The listening socket could not be set up (port taken, address not on this host).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured listening address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// mdns-sd refused to start or to register/browse.
    #[error("mDNS discovery failed to start: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// The configuration cannot work.
    #[error("invalid LAN configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Requests from the handle to the driver task.
#[derive(Debug)]
enum Command {
    LinkClosed(SocketAddr),
    LinkRedundant(SocketAddr),
    Shutdown,
}

/// A running LAN transport. Dropping it stops everything in the background; `shutdown().await`
/// does the same and waits until the listener is closed, the dials are gone and mDNS has
/// withdrawn our advertisement.
#[derive(Debug)]
pub struct Lan {
    local_addr: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    driver: Option<JoinHandle<()>>,
}

impl Lan {
    /// Binds, starts mDNS if asked, and begins dialing static peers.
    ///
    /// # Errors
    /// [`LanError::Listen`] if the port cannot be bound, [`LanError::Mdns`] if mdns-sd fails,
    /// [`LanError::InvalidConfig`] for a zero link cap or a zero/inverted backoff.
    pub async fn start(config: LanConfig) -> Result<(Lan, mpsc::Receiver<LanEvent>), LanError> {
        if config.max_links == 0 {
            return Err(LanError::InvalidConfig("max_links must be at least 1"));
        }
        if config.backoff.initial.is_zero() || config.backoff.initial > config.backoff.max {
            return Err(LanError::InvalidConfig(
                "backoff needs 0 < initial <= max (a zero delay would redial in a busy loop)",
            ));
        }
        let listener = socket::bind_listener(config.listen).map_err(|source| LanError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| LanError::Listen {
            addr: config.listen,
            source,
        })?;
        let mdns = match &config.discovery {
            Discovery::Off => None,
            Discovery::Mdns { interfaces } => Some(mdns::Mdns::start(
                config.instance,
                local_addr.ip(),
                local_addr.port(),
                interfaces,
            )?),
        };
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let driver = driver::Driver::new(&config, listener, mdns, command_rx, event_tx);
        tracing::info!(%local_addr, instance = %mdns::instance_name(&config.instance), "LAN transport listening");
        let handle = tokio::spawn(driver.run());
        Ok((
            Lan {
                local_addr,
                commands: command_tx,
                driver: Some(handle),
            },
            event_rx,
        ))
    }

    /// The address we actually listen on (port 0 resolved).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The daemon's word that the link to `remote` ended: its slot is free, and a dialed peer
    /// is dialed again after its backoff.
    pub fn link_closed(&self, remote: SocketAddr) {
        if self.commands.send(Command::LinkClosed(remote)).is_err() {
            warn!(%remote, "link_closed after the LAN transport stopped");
        }
    }

    /// The link to `remote` ended because another link to the same node (the same identity,
    /// proven by the handshake) is the one kept: like [`Lan::link_closed`], but the node it
    /// was dialed for is not dialed again while it stays discovered, and nothing backs off.
    pub fn link_redundant(&self, remote: SocketAddr) {
        if self.commands.send(Command::LinkRedundant(remote)).is_err() {
            warn!(%remote, "link_redundant after the LAN transport stopped");
        }
    }

    /// Stops listening, dialing and advertising, and waits until all of it is done.
    pub async fn shutdown(mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(driver) = self.driver.take() {
            if let Err(e) = driver.await {
                warn!(error = %e, "LAN driver task ended abnormally");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // The driver also stops when this sender goes; saying so explicitly keeps it obvious.
        // It finishes in the background (listener closed, mDNS goodbye sent).
        let _ = self.commands.send(Command::Shutdown);
    }
}
