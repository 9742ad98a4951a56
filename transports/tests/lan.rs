//! LAN transport as the daemon sees it: peers found, one link per pair, bytes through, slots
//! capped, redials backing off, nothing left running after shutdown.
//!
//! Network safety: everything here stays on 127.0.0.1. Listeners bind 127.0.0.1:0 and every
//! mDNS daemon (ours and the test's own browser) is restricted to the IPv4 loopback interface.
//! That is not quite enough: mdns-sd joins the multicast group on every interface before it
//! applies the restriction, so the kernel announces the membership (IGMP/MLD) on the real
//! network. So the tests that start mDNS run in a private network namespace: each re-runs
//! itself under `unshare -n` (see [`in_private_network`]), or is skipped, saying why, when
//! that is not possible (not root). Every test runs under a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_transports::lan::mdns::{instance_name, restrict_interfaces, SERVICE_TYPE};
use cairn_transports::lan::{Backoff, Discovery, InstanceId, Interfaces, Lan, LanConfig, LanEvent};
use mdns_sd::{ServiceDaemon, ServiceEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, Instant};

/// Runs the calling test in a private network namespace where only loopback exists.
///
/// Returns true when the caller is already inside one and should go on. Otherwise re-runs
/// this one test (`name`, as the harness knows it) inside `unshare -n`, asserts that it
/// passed there, and returns false; or, when namespaces are not available, says so and
/// returns false (the test is skipped, not faked).
fn in_private_network(name: &str) -> bool {
    if std::env::var_os("CAIRN_TEST_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("CAIRN_TEST_NETNS", "1")
        .status();
    match status {
        // `unshare` itself failed (exit 1: not root, or no namespaces) or is missing.
        Ok(status) if status.code() == Some(1) => skip(name),
        Err(_) => skip(name),
        // The harness exits 0 when the test passed and 101 when it failed.
        Ok(status) => {
            assert!(
                status.success(),
                "{name} failed in its network namespace: {status}"
            );
            false
        }
    }
}

fn skip(name: &str) -> bool {
    eprintln!(
        "skipped {name}: mDNS tests need a private network namespace (`unshare -n`, as root)"
    );
    false
}

/// Upper bound for any single test.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// mDNS tests share UDP port 5353 on loopback: run them one at a time so one test's nodes do
/// not discover (and dial) another's, and thread counts are exact.
static MDNS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A per-run instance id whose first byte fixes the dial order (seeded from the clock and the
/// process id so two runs of the suite on one host do not collide).
fn instance(first: u8) -> InstanceId {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let mut id = [first; 8];
    id[4..].copy_from_slice(&seed.to_be_bytes());
    id
}

fn config(instance: InstanceId, discovery: Discovery) -> LanConfig {
    LanConfig {
        listen: loopback(),
        discovery,
        static_peers: Vec::new(),
        max_links: 64,
        instance,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        },
        // Long enough that the lower instance always dials first here, so the tests can say
        // which side dials.
        fallback_dial: Duration::from_secs(20),
    }
}

fn mdns_loopback() -> Discovery {
    Discovery::Mdns {
        interfaces: Interfaces::LoopbackOnly,
    }
}

/// The next `Connected` event, skipping discovery and dial-failure notices.
async fn next_connected(
    events: &mut Receiver<LanEvent>,
) -> (TcpStream, SocketAddr, bool, Option<InstanceId>) {
    loop {
        match events.recv().await.expect("LAN transport stopped") {
            LanEvent::Connected {
                stream,
                remote,
                outbound,
                instance,
            } => return (stream, remote, outbound, instance),
            _ => continue,
        }
    }
}

/// A loopback-only mDNS browser of our own, as a third node on the network would be.
fn browser() -> (ServiceDaemon, mdns_sd::Receiver<ServiceEvent>) {
    let daemon = ServiceDaemon::new().unwrap();
    restrict_interfaces(&daemon, &Interfaces::LoopbackOnly).unwrap();
    let browse = daemon.browse(SERVICE_TYPE).unwrap();
    (daemon, browse)
}

async fn stop_browser(daemon: ServiceDaemon) {
    let status = daemon.shutdown().unwrap();
    timeout(Duration::from_secs(2), status.recv_async())
        .await
        .unwrap()
        .unwrap();
}

fn mdns_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "mDNS_daemon")
                .count()
        })
        .unwrap_or(0)
}

/// Waits until exactly `n` mDNS daemon threads run (threads name themselves a moment after
/// they start, and finish a moment after confirming shutdown), failing after two seconds.
async fn wait_for_mdns_threads(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while mdns_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} mDNS threads, expected {n}",
            mdns_threads()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_nodes_discover_each_other_and_link_once() {
    if !in_private_network("two_nodes_discover_each_other_and_link_once") {
        return;
    }
    let _serial = MDNS_LOCK.lock().await;
    timeout(TEST_LIMIT, async {
        let (a_id, b_id) = (instance(0x10), instance(0x20));
        let started = Instant::now();
        let (a, mut a_events) = Lan::start(config(a_id, mdns_loopback())).await.unwrap();
        let (b, mut b_events) = Lan::start(config(b_id, mdns_loopback())).await.unwrap();

        // A has the lower instance, so A dials and B accepts.
        let mut discovered_at = None;
        let (mut a_stream, a_remote, a_instance) = loop {
            match a_events.recv().await.unwrap() {
                LanEvent::Discovered { instance, addrs } if instance == b_id => {
                    assert!(addrs.iter().all(|addr| addr.ip().is_loopback()), "{addrs:?}");
                    discovered_at.get_or_insert_with(Instant::now);
                }
                LanEvent::Connected {
                    stream,
                    remote,
                    outbound: true,
                    instance: Some(instance),
                } if instance == b_id => break (stream, remote, instance),
                _ => {}
            }
        };
        let connected_at = Instant::now();
        let discovered_at = discovered_at.expect("A saw B before dialing it");
        println!(
            "loopback mDNS: start-to-connected {:?}, discovered-to-connected {:?}",
            connected_at - started,
            connected_at - discovered_at
        );
        assert_eq!(a_instance, b_id);
        assert_eq!(a_remote, b.local_addr());

        let a_local = a_stream.local_addr().unwrap();
        let (mut b_stream, b_remote) = loop {
            let (stream, remote, outbound, instance) = next_connected(&mut b_events).await;
            assert!(
                !(outbound && instance == Some(a_id)),
                "B must not dial A: A has the lower instance"
            );
            if remote == a_local {
                break (stream, remote);
            }
        };
        assert_eq!(b_remote, a_local);

        a_stream.write_all(b"first words over the LAN").await.unwrap();
        let mut buf = [0u8; 24];
        b_stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first words over the LAN");

        // Let repeated resolutions and announcements come in: still exactly one link.
        let quiet = Instant::now() + Duration::from_millis(1500);
        loop {
            tokio::select! {
                event = a_events.recv() => if let Some(LanEvent::Connected { remote, instance, .. }) = event {
                    assert!(remote != b.local_addr() && instance != Some(b_id), "second link A->B");
                },
                event = b_events.recv() => if let Some(LanEvent::Connected { remote, outbound, instance, .. }) = event {
                    assert!(!(outbound && instance == Some(a_id)), "B dialed A");
                    assert_ne!(remote, a_local);
                },
                () = tokio::time::sleep_until(quiet) => break,
            }
        }
        a.shutdown().await;
        b.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn static_peer_redials_after_drop_and_backs_off_when_gone() {
    timeout(TEST_LIMIT, async {
        let (b, mut b_events) = Lan::start(config(instance(2), Discovery::Off))
            .await
            .unwrap();
        let mut a_config = config(instance(1), Discovery::Off);
        a_config.static_peers = vec![b.local_addr()];
        let (a, mut a_events) = Lan::start(a_config).await.unwrap();

        let (mut a_stream, remote, outbound, peer_instance) = next_connected(&mut a_events).await;
        assert_eq!(
            (remote, outbound, peer_instance),
            (b.local_addr(), true, None)
        );
        let (b_stream, b_remote, b_outbound, _) = next_connected(&mut b_events).await;
        assert!(!b_outbound);
        // Both ends come with the link options: no Nagle delay, keepalive probes after 10 s.
        for stream in [&a_stream, &b_stream] {
            let socket = socket2::SockRef::from(stream);
            assert!(socket.tcp_nodelay().unwrap());
            assert!(socket.keepalive().unwrap());
            assert_eq!(
                socket.tcp_keepalive_time().unwrap(),
                Duration::from_secs(10)
            );
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        }

        // B ends the link; A's daemon sees EOF and reports it; A dials again after backoff.
        drop(b_stream);
        b.link_closed(b_remote);
        let mut buf = [0u8; 1];
        assert_eq!(a_stream.read(&mut buf).await.unwrap(), 0);
        let closed_at = Instant::now();
        a.link_closed(remote);
        let (a_stream2, remote2, _, _) = next_connected(&mut a_events).await;
        let redial_gap = closed_at.elapsed();
        assert_eq!(remote2, b.local_addr());
        assert!(
            redial_gap >= Duration::from_millis(95),
            "redialed after {redial_gap:?}"
        );
        println!("static peer redialed {redial_gap:?} after the link closed");

        // B goes away for good: A keeps trying with growing gaps, capped at the maximum.
        b.shutdown().await;
        drop(a_stream2);
        a.link_closed(remote2);
        let mut failures = Vec::new();
        while failures.len() < 5 {
            if let Some(LanEvent::DialFailed {
                remote, retry_in, ..
            }) = a_events.recv().await
            {
                assert_eq!(remote, remote2);
                failures.push((Instant::now(), retry_in));
            }
        }
        let retries: Vec<u128> = failures.iter().map(|(_, r)| r.as_millis()).collect();
        assert_eq!(
            retries,
            [400, 800, 800, 800, 800],
            "doubling from the short-lived link, then capped"
        );
        let gaps: Vec<Duration> = failures.windows(2).map(|w| w[1].0 - w[0].0).collect();
        println!("retry_in {retries:?}, observed gaps {gaps:?}");
        for (gap, (_, promised)) in gaps.iter().zip(&failures) {
            // Never earlier than promised (1 ms slack for timer rounding); generous above.
            assert!(
                *gap + Duration::from_millis(1) >= *promised,
                "{gap:?} < {promised:?}"
            );
            assert!(
                *gap < *promised + Duration::from_millis(700),
                "{gap:?} vs {promised:?}"
            );
        }
        a.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn max_links_caps_inbound_connections() {
    timeout(TEST_LIMIT, async {
        let mut b_config = config(instance(3), Discovery::Off);
        b_config.max_links = 2;
        let (b, mut b_events) = Lan::start(b_config).await.unwrap();

        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(b.local_addr()).await.unwrap());
            accepted.push(next_connected(&mut b_events).await);
        }
        // Two more knock: both are closed by B without a Connected event.
        for _ in 0..2 {
            let mut extra = TcpStream::connect(b.local_addr()).await.unwrap();
            let mut buf = [0u8; 1];
            let read = timeout(Duration::from_secs(5), extra.read(&mut buf))
                .await
                .unwrap();
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "extra link was kept: {read:?}"
            );
        }
        assert!(b_events.try_recv().is_err(), "no Connected beyond the cap");

        // The daemon reports one link gone: the slot is free again.
        let (_, freed, _, _) = accepted.remove(0);
        b.link_closed(freed);
        let _late = TcpStream::connect(b.local_addr()).await.unwrap();
        let (_, remote, outbound, _) = next_connected(&mut b_events).await;
        assert!(!outbound);
        assert_ne!(remote, freed);
        b.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn advertisement_carries_only_version_and_random_instance() {
    if !in_private_network("advertisement_carries_only_version_and_random_instance") {
        return;
    }
    let _serial = MDNS_LOCK.lock().await;
    timeout(TEST_LIMIT, async {
        let (daemon, browse) = browser();
        let id = instance(0x30);
        let (a, _a_events) = Lan::start(config(id, mdns_loopback())).await.unwrap();
        let name = instance_name(&id);
        let service = loop {
            if let ServiceEvent::ServiceResolved(service) = browse.recv_async().await.unwrap() {
                if service.fullname.starts_with(&name) {
                    break service;
                }
            }
        };
        assert_eq!(service.fullname, format!("{name}.{SERVICE_TYPE}"));
        assert_eq!(service.host, format!("{name}.local."));
        assert_eq!(service.port, a.local_addr().port());
        let txt: Vec<(String, String)> = service
            .txt_properties
            .iter()
            .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
            .collect();
        assert_eq!(txt, [("v".to_owned(), "1".to_owned())]);
        let addrs: HashSet<_> = service.addresses.iter().map(|a| a.to_ip_addr()).collect();
        assert_eq!(
            addrs,
            HashSet::from([std::net::IpAddr::from([127, 0, 0, 1])])
        );
        a.shutdown().await;
        stop_browser(daemon).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn shutdown_stops_listener_dials_and_mdns() {
    if !in_private_network("shutdown_stops_listener_dials_and_mdns") {
        return;
    }
    let _serial = MDNS_LOCK.lock().await;
    timeout(TEST_LIMIT, async {
        let (daemon, browse) = browser();
        // Only the browser's thread: every other mDNS test stopped its daemons under the lock.
        wait_for_mdns_threads(1).await;

        // A node busy with everything: advertising, browsing, and redialing a dead static peer.
        let dead = {
            let probe = std::net::TcpListener::bind(loopback()).unwrap();
            probe.local_addr().unwrap()
        };
        let id = instance(0x40);
        let mut a_config = config(id, mdns_loopback());
        a_config.static_peers = vec![dead];
        let (a, mut a_events) = Lan::start(a_config).await.unwrap();
        let addr = a.local_addr();
        wait_for_mdns_threads(2).await;
        let name = instance_name(&id);
        loop {
            if let ServiceEvent::ServiceResolved(s) = browse.recv_async().await.unwrap() {
                if s.fullname.starts_with(&name) {
                    break;
                }
            }
        }

        a.shutdown().await;

        // The listener is closed.
        assert!(
            nothing_listens(addr).await,
            "listener still open after shutdown"
        );
        // Every task that could emit events is gone (the driver and its dials hold the senders).
        while let Some(event) = a_events.recv().await {
            assert!(!matches!(event, LanEvent::Connected { .. }));
        }
        // mDNS said goodbye and its thread ended.
        loop {
            if let ServiceEvent::ServiceRemoved(_, fullname) = browse.recv_async().await.unwrap() {
                if fullname.starts_with(&name) {
                    break;
                }
            }
        }
        wait_for_mdns_threads(1).await;
        stop_browser(daemon).await;
    })
    .await
    .expect("test timed out");
}

/// Whether a connection to `addr` is refused. A connection to a closed port in the ephemeral
/// range can, rarely, succeed with itself (TCP simultaneous open: the kernel picked `addr` as
/// the source port): that one found no listener either.
async fn nothing_listens(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Err(_) => true,
        Ok(stream) => stream.local_addr().ok() == stream.peer_addr().ok(),
    }
}

#[tokio::test]
async fn dropping_the_handle_stops_it_too() {
    timeout(TEST_LIMIT, async {
        let (a, mut a_events) = Lan::start(config(instance(5), Discovery::Off))
            .await
            .unwrap();
        let addr = a.local_addr();
        drop(a);
        while a_events.recv().await.is_some() {}
        assert!(
            nothing_listens(addr).await,
            "listener still open after drop"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn bad_configs_are_refused() {
    let mut zero = config(instance(6), Discovery::Off);
    zero.max_links = 0;
    assert!(Lan::start(zero).await.is_err());
    let mut inverted = config(instance(6), Discovery::Off);
    inverted.backoff = Backoff {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(1),
    };
    assert!(Lan::start(inverted).await.is_err());
}
