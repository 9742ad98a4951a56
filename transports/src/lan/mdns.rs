//! mDNS-SD advertisement and browsing for `_cairn._tcp.local.`.
//!
//! What we put on the air is deliberately poor: the instance name is the hex of a number the
//! caller draws at random each run, the host name is derived from the same number, and the
//! only TXT entry is the protocol version. Anyone on the network learns "a Cairn node listens
//! on this port", and nothing about who runs it or which team it belongs to; identities are
//! proven later, inside the Noise session.
//!
//! mdns-sd runs its own thread; we talk to it through its channels, whose receivers are async.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, info, trace, warn};

use super::{InstanceId, Interfaces};

/// The DNS-SD service type every Cairn node advertises and browses.
pub const SERVICE_TYPE: &str = "_cairn._tcp.local.";
/// TXT key and value naming the LAN discovery protocol version; the only TXT entry we send.
pub const TXT_VERSION_KEY: &str = "v";
/// See [`TXT_VERSION_KEY`].
pub const TXT_VERSION_VALUE: &str = "1";

/// How long shutdown waits for mdns-sd to send goodbyes and stop its thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The DNS-SD instance name for an instance id: 16 lowercase hex digits.
#[must_use]
pub fn instance_name(instance: &InstanceId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(16);
    for byte in instance {
        name.push(char::from(DIGITS[usize::from(byte >> 4)]));
        name.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    name
}

/// Parses `"<16 hex digits>._cairn._tcp.local."` back into an instance id. Anything else on the
/// service type (another implementation, a hand-made advertisement) is not ours to dial.
#[must_use]
pub fn parse_instance(fullname: &str) -> Option<InstanceId> {
    let name = fullname.strip_suffix(SERVICE_TYPE)?.strip_suffix('.')?;
    // from_str_radix alone would accept a leading '+'.
    if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut instance = [0u8; 8];
    for (i, byte) in instance.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(instance)
}

/// Dial preference: IPv6 link-local first (stable on a LAN, survives DHCP changes), then IPv4,
/// then routable IPv6.
fn preference(addr: &SocketAddr) -> u8 {
    match addr.ip() {
        IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80 => 0,
        IpAddr::V4(_) => 1,
        IpAddr::V6(_) => 2,
    }
}

/// Socket addresses for one resolution, keeping the scope id that link-local IPv6 needs.
fn socket_addrs(addresses: &HashSet<ScopedIp>, port: u16, loopback_only: bool) -> Vec<SocketAddr> {
    addresses
        .iter()
        .filter_map(|scoped| {
            let addr = match scoped {
                ScopedIp::V6(v6) => {
                    SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, v6.scope_id().index))
                }
                other => SocketAddr::new(other.to_ip_addr(), port),
            };
            // A loopback address heard over a real network names the *listener's* host, not
            // ours: dialing it would reach whatever listens on our own loopback.
            let keep = if loopback_only {
                addr.ip().is_loopback() && addr.is_ipv4()
            } else {
                let ip = addr.ip();
                !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast()
            };
            keep.then_some(addr)
        })
        .collect()
}

/// Merges a new resolution of an instance into what we knew of it and orders the result for
/// dialing. A node is often resolved twice (first with only its link-local IPv6 address, then
/// with IPv4 as well), so addresses accumulate; a changed port means the node restarted with
/// the same instance id and the old addresses are stale.
pub(crate) fn merge_addresses(known: &mut Vec<SocketAddr>, new: Vec<SocketAddr>) -> bool {
    let before = known.clone();
    if let Some(first) = new.first() {
        known.retain(|old| old.port() == first.port());
    }
    for addr in new {
        if !known.contains(&addr) {
            known.push(addr);
        }
    }
    known.sort_by_key(|addr| (preference(addr), *addr));
    *known != before
}

/// What browsing told us about another node.
#[derive(Debug)]
pub(crate) enum MdnsEvent {
    Resolved {
        instance: InstanceId,
        addrs: Vec<SocketAddr>,
    },
    Removed {
        instance: InstanceId,
    },
}

/// Failure to start mDNS; the caller wraps it in `LanError`.
pub(crate) type MdnsError = mdns_sd::Error;

/// Our advertisement and browse, alive until [`Mdns::stop`] or drop.
pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    own: InstanceId,
    fullname: String,
    loopback_only: bool,
    browse: mdns_sd::Receiver<ServiceEvent>,
    monitor: mdns_sd::Receiver<DaemonEvent>,
    monitor_open: bool,
    stopped: bool,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("fullname", &self.fullname)
            .finish()
    }
}

/// Restricts a daemon to the chosen interfaces. mdns-sd enables everything by default and
/// applies selections in order, so "disable all, then enable these" leaves exactly these. The
/// commands are queued before any browse or register, so nothing is sent elsewhere.
pub fn restrict_interfaces(
    daemon: &ServiceDaemon,
    interfaces: &Interfaces,
) -> Result<(), MdnsError> {
    match interfaces {
        Interfaces::All => Ok(()),
        Interfaces::LoopbackOnly => {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(IfKind::LoopbackV4)
        }
        Interfaces::Named(names) => {
            daemon.disable_interface(IfKind::All)?;
            let kinds: Vec<IfKind> = names.iter().map(|n| IfKind::Name(n.clone())).collect();
            daemon.enable_interface(kinds)
        }
    }
}

impl Mdns {
    /// Starts the daemon on `interfaces`, advertises `instance` on `port` and browses for peers.
    ///
    /// `listen_ip` decides which addresses we advertise: a specific listening address is the
    /// only one that can be reached; an unspecified one lets mdns-sd publish each interface's
    /// own addresses (and follow them as they change).
    pub(crate) fn start(
        instance: InstanceId,
        listen_ip: IpAddr,
        port: u16,
        interfaces: &Interfaces,
    ) -> Result<Self, MdnsError> {
        let daemon = ServiceDaemon::new()?;
        let result = Self::advertise_and_browse(&daemon, instance, listen_ip, port, interfaces);
        match result {
            Ok((fullname, browse, monitor)) => Ok(Self {
                daemon,
                own: instance,
                fullname,
                loopback_only: matches!(interfaces, Interfaces::LoopbackOnly),
                browse,
                monitor,
                monitor_open: true,
                stopped: false,
            }),
            Err(e) => {
                // Do not leave the daemon thread behind when setup fails halfway.
                let _status = daemon.shutdown();
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn advertise_and_browse(
        daemon: &ServiceDaemon,
        instance: InstanceId,
        listen_ip: IpAddr,
        port: u16,
        interfaces: &Interfaces,
    ) -> Result<
        (
            String,
            mdns_sd::Receiver<ServiceEvent>,
            mdns_sd::Receiver<DaemonEvent>,
        ),
        MdnsError,
    > {
        restrict_interfaces(daemon, interfaces)?;
        let monitor = daemon.monitor()?;
        let name = instance_name(&instance);
        let host = format!("{name}.local.");
        let txt = [(TXT_VERSION_KEY, TXT_VERSION_VALUE)];
        let mut info = match (interfaces, listen_ip.is_unspecified()) {
            (Interfaces::LoopbackOnly, true) => ServiceInfo::new(
                SERVICE_TYPE,
                &name,
                &host,
                IpAddr::from([127, 0, 0, 1]),
                port,
                &txt[..],
            )?,
            (_, false) => ServiceInfo::new(SERVICE_TYPE, &name, &host, listen_ip, port, &txt[..])?,
            (_, true) => {
                ServiceInfo::new(SERVICE_TYPE, &name, &host, "", port, &txt[..])?.enable_addr_auto()
            }
        };
        // The instance name is 64 random bits, so a name conflict is not a real risk; skipping
        // the probe saves ~0.8 s before peers can see us.
        info.set_requires_probe(false);
        if matches!(interfaces, Interfaces::LoopbackOnly) {
            info.set_interfaces(vec![IfKind::LoopbackV4]);
        }
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        let browse = daemon.browse(SERVICE_TYPE)?;
        info!(service = %fullname, port, "advertising on mDNS");
        Ok((fullname, browse, monitor))
    }

    /// The next resolution or removal of another node. Never returns `None` while the daemon
    /// runs; `None` means mdns-sd's thread is gone (logged), and discovery is over.
    pub(crate) async fn next(&mut self) -> Option<MdnsEvent> {
        loop {
            tokio::select! {
                event = self.browse.recv_async() => {
                    let Ok(event) = event else {
                        warn!("mDNS browse ended; discovery stopped");
                        return None;
                    };
                    if let Some(event) = self.translate(event) {
                        return Some(event);
                    }
                }
                event = self.monitor.recv_async(), if self.monitor_open => match event {
                    Ok(DaemonEvent::Error(e)) => warn!(error = %e, "mDNS daemon error"),
                    Ok(other) => trace!(event = ?other, "mDNS daemon event"),
                    // The monitor closing alone is not fatal: browse results still arrive.
                    Err(_) => self.monitor_open = false,
                },
            }
        }
    }

    fn translate(&self, event: ServiceEvent) -> Option<MdnsEvent> {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(instance) = parse_instance(&service.fullname) else {
                    debug!(name = %service.fullname, "ignoring service with a foreign instance name");
                    return None;
                };
                if instance == self.own {
                    return None;
                }
                let version = service.txt_properties.get_property_val_str(TXT_VERSION_KEY);
                if version != Some(TXT_VERSION_VALUE) {
                    debug!(name = %service.fullname, ?version, "ignoring peer with another LAN protocol version");
                    return None;
                }
                let addrs = socket_addrs(&service.addresses, service.port, self.loopback_only);
                if addrs.is_empty() {
                    trace!(name = %service.fullname, "resolved without usable addresses yet");
                    return None;
                }
                Some(MdnsEvent::Resolved { instance, addrs })
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let instance = parse_instance(&fullname)?;
                (instance != self.own).then_some(MdnsEvent::Removed { instance })
            }
            other => {
                trace!(event = ?other, "mDNS browse event");
                None
            }
        }
    }

    /// Withdraws our advertisement (peers drop us at once instead of waiting out the TTL) and
    /// stops mdns-sd's thread, waiting a bounded time for each.
    pub(crate) async fn stop(mut self) {
        self.stopped = true;
        match self.daemon.unregister(&self.fullname) {
            Ok(status) => {
                let _ = tokio::time::timeout(STOP_TIMEOUT, status.recv_async()).await;
            }
            Err(e) => debug!(error = %e, "mDNS unregister failed"),
        }
        match self.daemon.shutdown() {
            Ok(status) => match tokio::time::timeout(STOP_TIMEOUT, status.recv_async()).await {
                Ok(Ok(status)) => debug!(?status, "mDNS daemon stopped"),
                _ => warn!("mDNS daemon did not confirm shutdown in time"),
            },
            Err(e) => debug!(error = %e, "mDNS daemon already gone"),
        }
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        if !self.stopped {
            // Dropped without a graceful stop (runtime shutting down): at least end the thread.
            let _status = self.daemon.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_name_round_trips() {
        let id = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let name = instance_name(&id);
        assert_eq!(name, "0123456789abcdef");
        assert_eq!(parse_instance(&format!("{name}.{SERVICE_TYPE}")), Some(id));
    }

    #[test]
    fn foreign_names_are_refused() {
        for name in [
            "laptop._cairn._tcp.local.",
            "0123456789abcde._cairn._tcp.local.",
            "0123456789abcdeg._cairn._tcp.local.",
            "0123456789abcdef._other._tcp.local.",
            "+123456789abcdef._cairn._tcp.local.",
            "é123456789abcde._cairn._tcp.local.",
        ] {
            assert_eq!(parse_instance(name), None, "{name}");
        }
    }

    #[test]
    fn loopback_only_keeps_loopback_and_lan_drops_it() {
        let heard: HashSet<ScopedIp> = ["127.0.0.1", "192.0.2.7", "::1", "0.0.0.0"]
            .iter()
            .map(|ip| ScopedIp::from(ip.parse::<IpAddr>().unwrap()))
            .collect();
        let lo = socket_addrs(&heard, 4000, true);
        assert_eq!(lo, vec!["127.0.0.1:4000".parse::<SocketAddr>().unwrap()]);
        let lan = socket_addrs(&heard, 4000, false);
        assert_eq!(lan, vec!["192.0.2.7:4000".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn merge_accumulates_and_orders_link_local_first() {
        let v4: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let ll = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 4000, 0, 2));
        let ula: SocketAddr = "[fd00::7]:4000".parse().unwrap();
        let mut known = Vec::new();
        assert!(merge_addresses(&mut known, vec![ula]));
        assert!(merge_addresses(&mut known, vec![v4, ll]));
        assert_eq!(known, vec![ll, v4, ula]);
        assert!(!merge_addresses(&mut known, vec![v4]));
        // A new port means a restart: old addresses go.
        let moved: SocketAddr = "192.0.2.7:4001".parse().unwrap();
        assert!(merge_addresses(&mut known, vec![moved]));
        assert_eq!(known, vec![moved]);
    }
}
