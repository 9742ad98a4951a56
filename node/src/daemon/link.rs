//! One link: a byte stream carrying a Noise hop session, carrying a sync session.
//!
//! The task owns the socket and both pure state machines; the sync store is shared with the
//! node's other links behind a mutex, held only for one engine step at a time (never across
//! an await). What the sync session reports goes to the node's core task, which owns the
//! application side (sealing, opening, the message database).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_sync::session::{Role as SyncRole, SessionConfig, SyncEvent, SyncSession};
use cairn_sync::time::Timestamp;
use cairn_transports::hop::{
    DeviceCredential, Framing, HopConfig, HopEvent, HopSession, Role as HopRole,
};
use rand_core_06::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::shared::{now_ms, Change, LinkId, Shared};

/// Frames one pump moves from the sync session into the hop session before the bytes are
/// written out: bounds memory when a peer lacks a hundred thousand messages.
const FRAMES_PER_PUMP: usize = 64;

/// A round on a LAN link with nothing heard for this long is abandoned.
const STREAM_STALL_MS: u64 = 60_000;

/// Why a second link to a peer we are already linked to is closed.
pub(super) const ALREADY_LINKED: &str = "already linked to this peer";

/// What one meeting exchanged, for the one log line it gets.
#[derive(Clone, Debug, Default)]
pub struct MeetingSummary {
    pub peer: Option<[u8; 32]>,
    pub items_sent: u64,
    pub items_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rounds: u64,
    pub ended_by: String,
    /// Ended because another link to the same peer is the one kept.
    pub redundant: bool,
}

/// Why the loop stopped.
enum Stop {
    Closed(String),
}

/// Runs a link until the peer goes away, the session fails, or the node shuts down.
pub async fn run_link(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    outbound: bool,
    mut shutdown: watch::Receiver<bool>,
) -> MeetingSummary {
    let link = shared.new_link_id();
    tracing::debug!(%remote, outbound, link, "link open; Noise handshake starting");
    let mut summary = MeetingSummary::default();
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let role = if outbound {
        HopRole::Initiator
    } else {
        HopRole::Responder
    };
    let config = HopConfig::new(
        role,
        shared.hop_keys.clone(),
        shared.network_key.clone(),
        Framing::Stream,
    );
    let mut hop = match HopSession::new(config, now_ms(), seed) {
        Ok(hop) => hop,
        Err(error) => {
            summary.ended_by = format!("hop session setup failed: {error}");
            return summary;
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    let mut changed = shared.subscribe_changes();
    let mut change_cursor = shared.change_cursor();
    let mut sync: Option<SyncSession> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let stop = 'main: loop {
        // Everything the state machines want to say goes out before we wait again, a
        // bounded batch at a time.
        let mut more = false;
        if let Some(s) = sync.as_mut() {
            match pump_sync(&shared, s, &mut hop, &mut summary) {
                Ok(full_batch) => more = full_batch,
                Err(reason) => break Stop::Closed(reason),
            }
        }
        while let Some(bytes) = hop.poll_transmit() {
            summary.bytes_sent += bytes.len() as u64;
            if let Err(error) = writer.write_all(&bytes).await {
                break 'main Stop::Closed(format!("write failed: {error}"));
            }
        }
        if hop.is_closed() {
            break Stop::Closed("hop session closed".into());
        }
        let deadline = next_deadline(&hop, sync.as_ref());
        tokio::select! {
            // Input first, so a peer's messages are read between our batches; then, if the
            // sync session has more to send, straight back to sending (nothing else would
            // wake us: a long transfer stalled after its first batch without this).
            biased;
            read = reader.read(&mut buf) => match read {
                Ok(0) => break Stop::Closed("peer closed the connection".into()),
                Ok(n) => {
                    summary.bytes_received += n as u64;
                    hop.handle_input(now_ms(), &buf[..n]);
                }
                Err(error) => break Stop::Closed(format!("read failed: {error}")),
            },
            _ = changed.changed() => {
                if let Some(s) = sync.as_mut() {
                    // On the LAN every change goes through a round (they cost milliseconds and
                    // keep bulk transfers in large frames); pushes are for frame links.
                    if summary
                        .peer
                        .is_some_and(|p| shared.needs_round(&p, &mut change_cursor, false))
                    {
                        s.notify_store_changed();
                    }
                }
            }
            _ = sleep_until_ms(deadline) => {
                let now = now_ms();
                hop.handle_timeout(now);
                if let Some(s) = sync.as_mut() {
                    if let Err(error) = s.handle_timeout(Timestamp::from_millis(now)) {
                        break Stop::Closed(format!("sync: {error}"));
                    }
                }
            }
            _ = std::future::ready(()), if more => {}
            _ = shutdown.changed() => {
                if let Some(s) = sync.as_mut() {
                    s.close(cairn_sync::wire::CloseReason::Shutdown);
                    let _ = pump_sync(&shared, s, &mut hop, &mut summary);
                }
                while let Some(bytes) = hop.poll_transmit() {
                    let _ = writer.write_all(&bytes).await;
                }
                break Stop::Closed("node shutting down".into());
            }
        }
        if summary
            .peer
            .is_some_and(|peer| !shared.is_current(&peer, link))
        {
            summary.redundant = true;
            break Stop::Closed("a newer link to the same peer replaced this one".into());
        }
        // Hop events: the handshake result and sync frames.
        let mut failed = None;
        while let Some(event) = hop.poll_event() {
            match event {
                HopEvent::Established { peer } => {
                    // A sync frame must fit in one hop frame (65,519 bytes on a stream).
                    let mtu = hop.max_plaintext().min(cairn_sync::wire::MAX_MTU);
                    match start_sync(&shared, link, &peer, outbound, mtu, STREAM_STALL_MS, false) {
                        Ok(session) => {
                            // Round 0 covers every change before this instant.
                            change_cursor = shared.change_cursor();
                            summary.peer = Some(peer.identity);
                            sync = Some(session);
                        }
                        Err(reason) => {
                            summary.redundant = reason == ALREADY_LINKED;
                            failed = Some(reason);
                        }
                    }
                }
                HopEvent::Frame(frame) => {
                    let Some(s) = sync.as_mut() else {
                        failed = Some("sync frame before the handshake finished".into());
                        break;
                    };
                    if let Err(reason) = handle_frame(&shared, s, &frame, &mut summary) {
                        failed = Some(reason);
                        break;
                    }
                }
                HopEvent::Closed(error) => {
                    failed = Some(format!("hop: {error}"));
                    break;
                }
                _ => {}
            }
        }
        if let Some(reason) = failed {
            // Say why to the peer where the state machines have something to send.
            if let Some(s) = sync.as_mut() {
                let _ = pump_sync(&shared, s, &mut hop, &mut summary);
            }
            while let Some(bytes) = hop.poll_transmit() {
                let _ = writer.write_all(&bytes).await;
            }
            break Stop::Closed(reason);
        }
    };
    let Stop::Closed(reason) = stop;
    if let Some(peer) = summary.peer {
        shared.link_down(&peer, link);
        // Pushes that did not go out wait for the next session with this peer.
        if let Some(s) = sync.as_mut() {
            for id in s.take_unsent_pushes() {
                // A full queue leaves it to the next session's first round.
                let _ = shared.push_to(peer, id);
            }
        }
    }
    summary.ended_by = reason;
    summary
}

fn next_deadline(hop: &HopSession, sync: Option<&SyncSession>) -> Option<u64> {
    let sync_deadline = sync
        .and_then(SyncSession::poll_timeout)
        .map(|t| t.as_millis());
    match (hop.poll_timeout(), sync_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_ms(deadline: Option<u64>) {
    match deadline {
        Some(at) => {
            let wait = at.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

/// The peer proved who it is: register the link (one per peer) and start syncing.
pub(super) fn start_sync(
    shared: &Shared,
    link: LinkId,
    peer: &DeviceCredential,
    outbound: bool,
    mtu: usize,
    stall_timeout_ms: u64,
    direct: bool,
) -> Result<SyncSession, String> {
    if peer.identity == shared.own_identity {
        return Err("connected to ourselves".into());
    }
    if !shared.link_up(peer.identity, link, outbound) {
        return Err(ALREADY_LINKED.into());
    }
    let role = if outbound {
        SyncRole::Initiator
    } else {
        SyncRole::Responder
    };
    let config = SessionConfig {
        stall_timeout_ms,
        compactor: direct.then(|| shared.direct.clone() as Arc<dyn cairn_sync::compact::Compactor>),
        ..SessionConfig::new(mtu, shared.policy())
    };
    let mut session = SyncSession::new(
        config,
        role,
        peer.identity.to_vec(),
        OsRng.next_u64(),
        Timestamp::from_millis(now_ms()),
    )
    .map_err(|e| format!("sync session: {e}"))?;
    if direct {
        take_pushes(shared, &mut session);
    }
    Ok(session)
}

/// Hands the items waiting to be pushed to this session's peer to the session.
pub(super) fn take_pushes(shared: &Shared, session: &mut SyncSession) {
    let Ok(peer) = <[u8; 32]>::try_from(session.peer_key()) else {
        return;
    };
    for id in shared.take_pushes(&peer) {
        session.push(id);
    }
}

/// Moves sync frames into the hop session, a bounded batch at a time. Returns whether the
/// batch was full (the session may have more to send right away).
fn pump_sync(
    shared: &Shared,
    sync: &mut SyncSession,
    hop: &mut HopSession,
    summary: &mut MeetingSummary,
) -> Result<bool, String> {
    pump_sync_into(shared, sync, summary, FRAMES_PER_PUMP, &mut |frame| {
        hop.send(frame).map_err(|e| format!("hop: {e}"))
    })
}

/// Moves up to `max_frames` sync frames into `send`. Returns whether it moved all of them
/// (the session may have more to send right away).
pub(super) fn pump_sync_into(
    shared: &Shared,
    sync: &mut SyncSession,
    summary: &mut MeetingSummary,
    max_frames: usize,
    send: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<bool, String> {
    let now = Timestamp::from_millis(now_ms());
    let mut full = true;
    for _ in 0..max_frames {
        let frame = {
            let mut store = shared.lock_store();
            sync.poll_transmit(now, &mut *store)
        };
        match frame {
            Ok(Some(frame)) => send(&frame)?,
            Ok(None) => {
                full = false;
                break;
            }
            Err(error) => return Err(format!("sync: {error}")),
        }
    }
    forward_events(shared, sync, summary);
    Ok(full)
}

pub(super) fn handle_frame(
    shared: &Shared,
    sync: &mut SyncSession,
    frame: &[u8],
    summary: &mut MeetingSummary,
) -> Result<(), String> {
    let result = {
        let mut store = shared.lock_store();
        sync.handle_frame(Timestamp::from_millis(now_ms()), frame, &mut *store)
    };
    // What was committed happened even if the frame then failed.
    forward_events(shared, sync, summary);
    result.map_err(|e| format!("sync: {e}"))
}

pub(super) fn forward_events(
    shared: &Shared,
    sync: &mut SyncSession,
    summary: &mut MeetingSummary,
) {
    // Items from this peer are news to every other peer, not to this one; a delivery or a
    // copy handed over changes nothing another round would find.
    let from = <[u8; 32]>::try_from(sync.peer_key()).ok();
    let mut stored = 0;
    let mut wake = false;
    while let Some(event) = sync.poll_event() {
        match &event {
            SyncEvent::ItemSent { .. } => summary.items_sent += 1,
            SyncEvent::ItemStored { .. } => {
                summary.items_received += 1;
                stored += 1;
            }
            SyncEvent::Delivered { .. } => {
                summary.items_received += 1;
                wake = true;
            }
            SyncEvent::RoundComplete { .. } => summary.rounds += 1,
            SyncEvent::HandedOver { .. } => wake = true,
            _ => {}
        }
        shared.report(event);
    }
    if stored > 0 {
        shared.changed(std::iter::repeat_n(
            Change {
                from,
                pushed_to: None,
            },
            stored,
        ));
    } else if wake {
        shared.wake();
    }
}
