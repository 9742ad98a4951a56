//! The task behind a [`super::Lan`]: accepts, dials, follows mDNS and the daemon's reports.
//!
//! One task owns all the state, so there are no locks: every input (an accepted connection, a
//! finished dial, an mDNS event, a command, a backoff timer) wakes the same loop, which then
//! starts whatever dials became due. Nothing here sleeps on a polling timer; discovery reaches
//! a dial in one loop turn.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::BackoffTable;
use super::mdns::{instance_name, merge_addresses, Mdns, MdnsEvent};
use super::{socket, Command, InstanceId, LanConfig, LanEvent};

/// How long one TCP connect may take before we try the next address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after an accept error (e.g. out of file descriptors) so it cannot spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Something we keep a link to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Static(SocketAddr),
    Instance(InstanceId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetState {
    /// Should be dialed as soon as a link slot is free.
    Due,
    /// A dial task is running.
    Dialing,
    /// Linked through this remote address.
    Linked(SocketAddr),
    /// Backing off until then.
    Waiting(Instant),
}

#[derive(Debug)]
struct Link {
    target: Option<Target>,
    since: Instant,
}

/// What a dial task reports back.
#[derive(Debug)]
struct DialOutcome {
    target: Target,
    connected: Option<(TcpStream, SocketAddr)>,
    failures: Vec<(SocketAddr, io::Error)>,
}

/// Why the loop woke up.
enum Wake {
    Command(Option<Command>),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Mdns(Option<MdnsEvent>),
    Dialed(Result<DialOutcome, tokio::task::JoinError>),
    Timer,
}

#[derive(Debug)]
pub(crate) struct Driver {
    instance: InstanceId,
    max_links: usize,
    fallback_dial: Duration,
    listener: TcpListener,
    mdns: Option<Mdns>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<LanEvent>,
    backoff: BackoffTable,
    /// Discovered nodes and their addresses in dial order.
    peers: HashMap<InstanceId, Vec<SocketAddr>>,
    targets: HashMap<Target, TargetState>,
    links: HashMap<SocketAddr, Link>,
    dials: JoinSet<DialOutcome>,
}

impl Driver {
    pub(crate) fn new(
        config: &LanConfig,
        listener: TcpListener,
        mdns: Option<Mdns>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<LanEvent>,
    ) -> Self {
        let targets = config
            .static_peers
            .iter()
            .map(|addr| (Target::Static(*addr), TargetState::Due))
            .collect();
        Self {
            instance: config.instance,
            max_links: config.max_links,
            fallback_dial: config.fallback_dial,
            listener,
            mdns,
            commands,
            events,
            backoff: BackoffTable::new(config.backoff),
            peers: HashMap::new(),
            targets,
            links: HashMap::new(),
            dials: JoinSet::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.start_due_dials();
            let timer = self.next_timer();
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                accepted = self.listener.accept() => Wake::Accepted(accepted),
                event = next_mdns(&mut self.mdns) => Wake::Mdns(event),
                Some(outcome) = self.dials.join_next(), if !self.dials.is_empty() => Wake::Dialed(outcome),
                () = sleep_until(timer) => Wake::Timer,
            };
            let keep_going = match wake {
                Wake::Command(Some(Command::LinkClosed(remote))) => {
                    self.handle_link_closed(remote);
                    true
                }
                Wake::Command(Some(Command::LinkRedundant(remote))) => {
                    self.handle_link_redundant(remote);
                    true
                }
                Wake::Command(None | Some(Command::Shutdown)) => false,
                Wake::Accepted(accepted) => self.handle_accepted(accepted).await,
                Wake::Mdns(event) => self.handle_mdns(event).await,
                Wake::Dialed(outcome) => self.handle_dialed(outcome).await,
                Wake::Timer => true,
            };
            if !keep_going {
                break;
            }
        }
        self.stop().await;
    }

    async fn stop(self) {
        let Driver {
            listener,
            mdns,
            mut dials,
            links,
            ..
        } = self;
        drop(listener);
        dials.shutdown().await;
        if let Some(mdns) = mdns {
            mdns.stop().await;
        }
        info!(open_links = links.len(), "LAN transport stopped");
    }

    /// Sends an event to the daemon; `false` if it stopped listening (then so do we).
    async fn emit(&self, event: LanEvent) -> bool {
        if self.events.send(event).await.is_err() {
            info!("LAN event receiver dropped; stopping the LAN transport");
            return false;
        }
        true
    }

    fn in_flight(&self) -> usize {
        self.links.len() + self.dials.len()
    }

    fn start_due_dials(&mut self) {
        let now = Instant::now();
        let due: Vec<Target> = self
            .targets
            .iter()
            .filter(|(_, state)| match state {
                TargetState::Due => true,
                TargetState::Waiting(at) => *at <= now,
                TargetState::Dialing | TargetState::Linked(_) => false,
            })
            .map(|(target, _)| *target)
            .collect();
        for target in due {
            if self.already_linked_inbound(target) {
                // The peer dialed us first (the higher instance's fallback, or the lower's
                // dial): an inbound link from one of its addresses is up. Matched by IP, since
                // an inbound link does not say which instance it is; on a network where
                // several nodes share an address this can skip a dial the daemon would have
                // found useful, never make a duplicate.
                self.targets.remove(&target);
                continue;
            }
            if self.in_flight() >= self.max_links {
                // Wait for a slot without a timer: a closing link or a finished dial wakes us.
                self.targets.insert(target, TargetState::Due);
                continue;
            }
            let candidates = self.candidates(target, now);
            match candidates {
                Ok(addrs) => {
                    self.targets.insert(target, TargetState::Dialing);
                    debug!(?target, ?addrs, "dialing");
                    self.dials.spawn(dial(target, addrs));
                }
                Err(Some(until)) => {
                    self.targets.insert(target, TargetState::Waiting(until));
                }
                Err(None) => {
                    self.targets.remove(&target);
                }
            }
        }
    }

    /// Addresses to try now, in order; or when the first one comes off backoff; or `None`
    /// when the target has no addresses at all (a lost peer).
    fn candidates(&self, target: Target, now: Instant) -> Result<Vec<SocketAddr>, Option<Instant>> {
        let all: &[SocketAddr] = match &target {
            Target::Static(addr) => std::slice::from_ref(addr),
            Target::Instance(instance) => match self.peers.get(instance) {
                Some(addrs) => addrs,
                None => return Err(None),
            },
        };
        let ready: Vec<SocketAddr> = all
            .iter()
            .filter(|addr| {
                self.backoff
                    .not_before(**addr)
                    .is_none_or(|t| Instant::from_std(t) <= now)
            })
            .copied()
            .collect();
        if !ready.is_empty() {
            return Ok(ready);
        }
        let earliest = all
            .iter()
            .filter_map(|addr| self.backoff.not_before(*addr))
            .min()
            .map(Instant::from_std);
        Err(earliest)
    }

    /// Whether `target` is a discovered node that already dialed us: an inbound link from one
    /// of its addresses is up.
    fn already_linked_inbound(&self, target: Target) -> bool {
        let Target::Instance(instance) = target else {
            return false;
        };
        let Some(addrs) = self.peers.get(&instance) else {
            return false;
        };
        self.links.iter().any(|(remote, link)| {
            link.target.is_none() && addrs.iter().any(|a| a.ip() == remote.ip())
        })
    }

    fn next_timer(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|state| match state {
                TargetState::Waiting(at) => Some(*at),
                _ => None,
            })
            .min()
    }

    /// A link the daemon found to duplicate another one to the same node. A discovered node
    /// stops being dialed (the other link is up); a static peer is redialed as usual.
    fn handle_link_redundant(&mut self, remote: SocketAddr) {
        let target = self.links.get(&remote).and_then(|l| l.target);
        match target {
            Some(Target::Instance(instance)) => {
                self.links.remove(&remote);
                debug!(peer = %instance_name(&instance), %remote, "duplicate link closed; not redialing");
                self.targets.remove(&Target::Instance(instance));
            }
            _ => self.handle_link_closed(remote),
        }
    }

    fn handle_link_closed(&mut self, remote: SocketAddr) {
        let Some(link) = self.links.remove(&remote) else {
            debug!(%remote, "link_closed for an unknown link");
            return;
        };
        let now = Instant::now();
        let lived = now.duration_since(link.since);
        debug!(%remote, ?lived, open_links = self.links.len(), "link closed");
        let Some(target) = link.target else { return };
        if self.targets.get(&target) != Some(&TargetState::Linked(remote)) {
            return;
        }
        let still_wanted = match target {
            Target::Static(_) => true,
            Target::Instance(instance) => self.peers.contains_key(&instance),
        };
        if !still_wanted {
            self.targets.remove(&target);
            return;
        }
        let delay = self.backoff.handle_closed(remote, lived, now.into_std());
        info!(%remote, ?delay, "link to a dialed peer closed; redialing after backoff");
        self.targets
            .insert(target, TargetState::Waiting(now + delay));
    }

    async fn handle_accepted(&mut self, accepted: io::Result<(TcpStream, SocketAddr)>) -> bool {
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                return true;
            }
        };
        if self.links.len() >= self.max_links {
            warn!(%remote, max_links = self.max_links, "refusing inbound connection: link cap reached");
            drop(stream);
            return true;
        }
        if let Err(e) = socket::configure_link(&stream) {
            debug!(%remote, error = %e, "dropping inbound connection: socket options failed");
            return true;
        }
        info!(%remote, "inbound link");
        self.links.insert(
            remote,
            Link {
                target: None,
                since: Instant::now(),
            },
        );
        self.emit(LanEvent::Connected {
            stream,
            remote,
            outbound: false,
            instance: None,
        })
        .await
    }

    async fn handle_mdns(&mut self, event: Option<MdnsEvent>) -> bool {
        match event {
            None => {
                // mdns-sd's thread is gone; keep serving static peers and inbound links.
                self.mdns = None;
                true
            }
            Some(MdnsEvent::Resolved { instance, addrs }) => {
                let known = self.peers.entry(instance).or_default();
                if !merge_addresses(known, addrs) {
                    return true;
                }
                let addrs = known.clone();
                let we_dial = self.instance < instance;
                info!(peer = %instance_name(&instance), ?addrs, we_dial, "discovered");
                // The lower instance dials at once. The higher one dials too if nothing came
                // of that shortly: mDNS often tells one side long before the other, and a
                // node that only waits would sit a second idle next to its peer. A duplicate
                // is closed by the daemon, which then tells us not to redial
                // (`Lan::link_redundant`).
                let first_dial = if we_dial {
                    TargetState::Due
                } else {
                    TargetState::Waiting(Instant::now() + self.fallback_dial)
                };
                self.targets
                    .entry(Target::Instance(instance))
                    .or_insert(first_dial);
                self.emit(LanEvent::Discovered { instance, addrs }).await
            }
            Some(MdnsEvent::Removed { instance }) => {
                if self.peers.remove(&instance).is_none() {
                    return true;
                }
                info!(peer = %instance_name(&instance), "lost");
                let target = Target::Instance(instance);
                if matches!(
                    self.targets.get(&target),
                    Some(TargetState::Due | TargetState::Waiting(_))
                ) {
                    self.targets.remove(&target);
                }
                self.emit(LanEvent::Lost { instance }).await
            }
        }
    }

    async fn handle_dialed(
        &mut self,
        outcome: Result<DialOutcome, tokio::task::JoinError>,
    ) -> bool {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                // Only a panic gets here (we never abort dials while running); the target stays
                // `Dialing` and is not retried, which is logged loudly.
                warn!(error = %e, "dial task failed");
                return true;
            }
        };
        let now = Instant::now();
        let DialOutcome {
            target,
            connected,
            failures,
        } = outcome;
        let mut retry_at: Option<Instant> = None;
        for (remote, error) in failures {
            let retry_in = self.backoff.handle_failure(remote, now.into_std());
            debug!(%remote, %error, ?retry_in, "dial failed");
            let at = now + retry_in;
            retry_at = Some(retry_at.map_or(at, |t| t.min(at)));
            if !self
                .emit(LanEvent::DialFailed {
                    remote,
                    error: error.kind(),
                    retry_in,
                })
                .await
            {
                return false;
            }
        }
        let still_wanted = match target {
            Target::Static(_) => true,
            Target::Instance(instance) => self.peers.contains_key(&instance),
        };
        let Some((stream, remote)) = connected else {
            if still_wanted {
                let state = retry_at.map_or(TargetState::Due, TargetState::Waiting);
                self.targets.insert(target, state);
            } else {
                self.targets.remove(&target);
            }
            return true;
        };
        self.backoff.handle_connected(remote);
        if self.links.len() >= self.max_links {
            info!(%remote, "closing fresh outbound link: link cap reached meanwhile");
            self.targets.insert(target, TargetState::Due);
            return true;
        }
        info!(%remote, "outbound link");
        self.targets.insert(target, TargetState::Linked(remote));
        self.links.insert(
            remote,
            Link {
                target: Some(target),
                since: now,
            },
        );
        let instance = match target {
            Target::Instance(instance) => Some(instance),
            Target::Static(_) => None,
        };
        self.emit(LanEvent::Connected {
            stream,
            remote,
            outbound: true,
            instance,
        })
        .await
    }
}

/// Tries `addrs` in order until one answers.
async fn dial(target: Target, addrs: Vec<SocketAddr>) -> DialOutcome {
    let mut failures = Vec::new();
    for addr in addrs {
        match socket::connect(addr, CONNECT_TIMEOUT).await {
            Ok(stream) => {
                return DialOutcome {
                    target,
                    connected: Some((stream, addr)),
                    failures,
                }
            }
            Err(e) => failures.push((addr, e)),
        }
    }
    DialOutcome {
        target,
        connected: None,
        failures,
    }
}

async fn next_mdns(mdns: &mut Option<Mdns>) -> Option<MdnsEvent> {
    match mdns {
        Some(mdns) => mdns.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
