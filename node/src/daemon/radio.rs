//! Serial bearers: one task per `--serial PATH --radio KIND`.
//!
//! ```text
//!  serial port (serial2 threads) ⇄ Firmware (raw/KISS/RNode/Meshtastic) ⇄ FrameLink
//!        ⇄ one SyncSession per peer in reach, over the shared store
//! ```
//!
//! The task owns the port's byte channel and the three pure state machines; it reads the
//! clock and sleeps until the earliest deadline any of them asked for. A USB radio that is
//! unplugged and plugged back is reopened by the port driver; the firmware handshake runs
//! again, and the link's sessions with peers survive (frames lost meanwhile are resent).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_firmware_bridge::{BridgeEvent, Firmware, LoraParams, Medium, RadioKind};
use cairn_sync::session::SyncSession;
use cairn_sync::time::Timestamp;
use cairn_sync::wire::{CloseReason, MIN_MTU};
use cairn_transports::link::frame::Addr;
use cairn_transports::link::{FrameLink, LinkConfig, LinkEvent};
use cairn_transports::serial::{SerialConfig, SerialEvent, SerialLink};
use rand_core_06::{OsRng, RngCore};
use tokio::sync::{mpsc, watch};

use super::core::Story;
use super::link::{
    forward_events, handle_frame, pump_sync_into, start_sync, take_pushes, MeetingSummary,
};
use super::node::log_meeting;
use super::shared::{now_ms, LinkId, Shared};

/// Largest frame Cairn puts on a radio channel: one LoRa packet on every firmware.
const MAX_RADIO_FRAME: usize = 255;

/// Largest frame on a direct cable.
const MAX_CABLE_FRAME: usize = 1024;

/// Sync frames moved into a peer's stream per pass; the stream splits them into frames.
const SYNC_FRAMES_PER_PASS: usize = 8;

/// First wait before asking a silent device again; doubles up to a minute.
const FIRMWARE_RETRY: Duration = Duration::from_secs(2);
const FIRMWARE_RETRY_MAX: Duration = Duration::from_secs(60);

/// How often the link's figures go to the debug log.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How often a peer that another link to the same person displaced is offered again.
const STANDBY_RETRY_MS: u64 = 10_000;

/// One serial bearer as the command line named it.
#[derive(Debug, Clone)]
pub struct SerialSpec {
    /// Where and how fast.
    pub port: SerialConfig,
    /// Which firmware speaks there.
    pub kind: RadioKind,
    /// Radio parameters, for firmware the host configures (RNode).
    pub lora: LoraParams,
}

impl std::fmt::Display for SerialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.kind, self.port.path.display())
    }
}

/// A peer in reach with a sync session over the link.
struct RadioPeer {
    identity: [u8; 32],
    link_id: LinkId,
    sync: Option<SyncSession>,
    initiator: bool,
    summary: MeetingSummary,
    started: Instant,
    /// Another link to the same person is the one kept: try again at this time.
    standby_until: Option<u64>,
    /// Where this peer's session stands in the store's change log.
    change_cursor: u64,
}

/// The firmware host driver for a kind.
pub fn firmware_for(kind: RadioKind, lora: LoraParams) -> Box<dyn Firmware> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    cairn_firmware_bridge::host(kind, lora, seed)
}

/// Opens the serial port of a bearer: a path that cannot be opened now is an error at once.
///
/// # Errors
///
/// The port cannot be opened (with a hint: not plugged in, no permission).
pub fn open_port(spec: &SerialSpec) -> anyhow::Result<(SerialLink, mpsc::Receiver<SerialEvent>)> {
    Ok(SerialLink::open(spec.port.clone())?)
}

/// Runs one serial bearer until shutdown.
pub async fn run_radio(
    shared: Arc<Shared>,
    spec: SerialSpec,
    (port, mut port_events): (SerialLink, mpsc::Receiver<SerialEvent>),
    name: String,
    stories: Option<mpsc::UnboundedSender<(String, Story)>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let label = spec.to_string();
    let mut firmware = firmware_for(spec.kind, spec.lora);
    let mut link: Option<FrameLink> = None;
    let mut peers: HashMap<Addr, RadioPeer> = HashMap::new();
    let mut changed = shared.subscribe_changes();
    let mut retry_at: Option<Instant> = None;
    let mut retry_wait = FIRMWARE_RETRY;
    let mut announced = false;
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let now = now_ms();
        if Instant::now() >= next_report {
            next_report = Instant::now() + REPORT_EVERY;
            if let Some(l) = link.as_ref() {
                let sessions: Vec<String> = peers
                    .iter()
                    .map(|(a, p)| {
                        format!(
                            "{a}: backlog {} sync {}",
                            l.backlog(*a),
                            p.sync.as_ref().map_or("none".into(), SyncSession::describe)
                        )
                    })
                    .collect();
                tracing::debug!(node = name, radio = label, stats = ?l.stats(), ?sessions, "link status");
            }
        }
        // The firmware's events: readiness, frames heard, warnings.
        while let Some(event) = firmware.poll_event() {
            match event {
                BridgeEvent::Ready(info) => {
                    retry_wait = FIRMWARE_RETRY;
                    if !announced {
                        tracing::info!(node = name, radio = label, firmware = info.firmware, max_frame = info.max_frame, lora = ?info.lora, "radio ready");
                        announced = true;
                    } else {
                        tracing::info!(node = name, radio = label, "radio ready again");
                    }
                    if link.is_none() {
                        match new_link(&shared, firmware.as_ref(), spec.port.baud, now) {
                            Ok(l) => {
                                tracing::info!(node = name, radio = label, addr = %l.addr(), "frame link up");
                                link = Some(l);
                            }
                            Err(error) => {
                                tracing::error!(
                                    node = name,
                                    radio = label,
                                    "cannot run a link on this radio: {error}"
                                );
                            }
                        }
                    }
                }
                BridgeEvent::Received { frame, .. } => {
                    if let Some(l) = link.as_mut() {
                        l.handle_frame(now, &frame);
                    }
                }
                BridgeEvent::Warning(warning) => {
                    tracing::warn!(node = name, radio = label, "{warning}");
                }
                BridgeEvent::TxReady | BridgeEvent::Info(_) => {}
            }
        }
        // A peer's sync session filled its batch: come straight back for more.
        let mut more_now = false;
        if let Some(l) = link.as_mut() {
            handle_link_events(&shared, l, &mut peers, &name, &label, &stories);
            retry_standby(&shared, l, &mut peers, now);
            // Sync output into each peer's stream, a bounded backlog at a time.
            for (&addr, peer) in peers.iter_mut() {
                let Some(sync) = peer.sync.as_mut() else {
                    continue;
                };
                if !l.wants_messages(addr) {
                    continue;
                }
                let mut bytes = 0;
                let result = pump_sync_into(
                    &shared,
                    sync,
                    &mut peer.summary,
                    SYNC_FRAMES_PER_PASS,
                    &mut |frame| {
                        bytes += frame.len() as u64;
                        l.send(addr, frame).map_err(|e| format!("link: {e}"))
                    },
                );
                peer.summary.bytes_sent += bytes;
                match result {
                    Ok(full) => more_now |= full && l.wants_messages(addr),
                    Err(reason) => end_sync(&shared, peer, &reason),
                }
            }
            // Frames the link may send now go to the firmware.
            while firmware.is_ready() {
                let Some(frame) = l.poll_transmit(now) else {
                    break;
                };
                if let Err(error) = firmware.send_frame(&frame) {
                    tracing::warn!(node = name, radio = label, "frame not sent: {error}");
                }
            }
        }
        while let Some(bytes) = firmware.poll_serial() {
            if port.write(bytes).await.is_err() {
                break;
            }
        }
        let deadline = [
            firmware.poll_timeout(),
            link.as_ref().and_then(FrameLink::poll_timeout),
            peers
                .values()
                .filter_map(|p| p.sync.as_ref()?.poll_timeout().map(|t| t.as_millis()))
                .min(),
            peers.values().filter_map(|p| p.standby_until).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            event = port_events.recv() => match event {
                Some(SerialEvent::Opened) => {
                    tracing::info!(node = name, radio = label, "serial port open; talking to the firmware");
                    firmware.reset(now_ms());
                    retry_at = None;
                }
                Some(SerialEvent::Bytes(bytes)) => firmware.handle_serial(now_ms(), &bytes),
                Some(SerialEvent::Closed(reason)) => {
                    tracing::warn!(node = name, radio = label, "serial port lost ({reason}); reopening when it comes back");
                }
                None => break,
            },
            _ = changed.changed() => {
                for peer in peers.values_mut() {
                    if let Some(sync) = peer.sync.as_mut() {
                        take_pushes(&shared, sync);
                        if shared.needs_round(&peer.identity, &mut peer.change_cursor, true) {
                            sync.notify_store_changed();
                        }
                    }
                }
            }
            _ = sleep_until(deadline, retry_at) => {
                let now = now_ms();
                if retry_at.is_some_and(|at| Instant::now() >= at) {
                    retry_at = None;
                    firmware.reset(now);
                }
                if firmware.poll_timeout().is_some_and(|t| now >= t) {
                    if let Err(error) = firmware.handle_timeout(now) {
                        tracing::warn!(node = name, radio = label, "{error}; asking again in {retry_wait:?}");
                        retry_at = Some(Instant::now() + retry_wait);
                        retry_wait = (retry_wait * 2).min(FIRMWARE_RETRY_MAX);
                    }
                }
                if let Some(l) = link.as_mut() {
                    l.handle_timeout(now);
                }
                for peer in peers.values_mut() {
                    if let Some(sync) = peer.sync.as_mut() {
                        if let Err(error) = sync.handle_timeout(Timestamp::from_millis(now)) {
                            end_sync(&shared, peer, &format!("sync: {error}"));
                        }
                    }
                }
            }
            _ = std::future::ready(()), if more_now => {}
            _ = shutdown.changed() => {
                if let Some(l) = link.as_mut() {
                    for (&addr, peer) in peers.iter_mut() {
                        if let Some(sync) = peer.sync.as_mut() {
                            sync.close(CloseReason::Shutdown);
                            let _ = pump_sync_into(&shared, sync, &mut peer.summary, 1, &mut |f| {
                                l.send(addr, f).map_err(|e| e.to_string())
                            });
                        }
                    }
                    let now = now_ms();
                    while firmware.is_ready() {
                        let Some(frame) = l.poll_transmit(now) else { break };
                        let _ = firmware.send_frame(&frame);
                    }
                    while let Some(bytes) = firmware.poll_serial() {
                        let _ = port.write(bytes).await;
                    }
                }
                for (addr, mut peer) in peers.drain() {
                    finish_meeting(&shared, &mut peer, "node shutting down", &name, &label, addr, &stories);
                }
                if let Some(l) = link.as_ref() {
                    let s = l.stats();
                    tracing::info!(
                        node = name,
                        radio = label,
                        frames_sent = s.frames_sent,
                        bytes_sent = s.bytes_sent,
                        airtime_ms = s.airtime_us / 1_000,
                        frames_heard = s.frames_heard,
                        retransmissions = s.arq.retransmissions,
                        duty_cycle_waits = s.duty_cycle_waits,
                        "link closed"
                    );
                }
                break;
            }
        }
    }
    port.shutdown().await;
}

fn new_link(
    shared: &Shared,
    firmware: &dyn Firmware,
    baud: u32,
    now: u64,
) -> Result<FrameLink, String> {
    let cap = match firmware.medium() {
        Medium::Cable => MAX_CABLE_FRAME,
        Medium::Radio(_) => MAX_RADIO_FRAME,
    };
    let mut config = LinkConfig::new(
        shared.hop_keys.clone(),
        shared.network_key.clone(),
        firmware.medium(),
        firmware.max_frame().min(cap),
    );
    if firmware.medium() == Medium::Cable {
        config.cable_bps = Some(baud);
    }
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    FrameLink::new(config, now, seed).map_err(|e| e.to_string())
}

fn handle_link_events(
    shared: &Shared,
    link: &mut FrameLink,
    peers: &mut HashMap<Addr, RadioPeer>,
    name: &str,
    label: &str,
    stories: &Option<mpsc::UnboundedSender<(String, Story)>>,
) {
    while let Some(event) = link.poll_event() {
        match event {
            LinkEvent::PeerUp {
                addr,
                peer,
                initiator,
            } => {
                if let Some(mut old) = peers.remove(&addr) {
                    finish_meeting(
                        shared,
                        &mut old,
                        "replaced by a new session",
                        name,
                        label,
                        addr,
                        stories,
                    );
                }
                let mut radio_peer = RadioPeer {
                    identity: peer.identity,
                    link_id: shared.new_link_id(),
                    sync: None,
                    initiator,
                    summary: MeetingSummary {
                        peer: Some(peer.identity),
                        ..MeetingSummary::default()
                    },
                    started: Instant::now(),
                    standby_until: None,
                    change_cursor: 0,
                };
                try_start(shared, link, addr, &mut radio_peer, now_ms());
                tracing::debug!(node = name, radio = label, %addr, "peer in reach");
                peers.insert(addr, radio_peer);
            }
            LinkEvent::Message { addr, message } => {
                let Some(peer) = peers.get_mut(&addr) else {
                    continue;
                };
                let Some(sync) = peer.sync.as_mut() else {
                    continue;
                };
                peer.summary.bytes_received += message.len() as u64;
                if let Err(reason) = handle_frame(shared, sync, &message, &mut peer.summary) {
                    end_sync(shared, peer, &reason);
                }
            }
            LinkEvent::PeerDown { addr, reason } => {
                if let Some(mut peer) = peers.remove(&addr) {
                    finish_meeting(shared, &mut peer, &reason, name, label, addr, stories);
                }
            }
        }
    }
}

/// Starts the sync session with a peer in reach, unless another link to the same person is
/// the one kept (then the peer waits on standby and is offered again later).
fn try_start(shared: &Shared, link: &FrameLink, addr: Addr, peer: &mut RadioPeer, now: u64) {
    let Some(credential) = link.peers().find(|(a, _)| *a == addr).map(|(_, c)| *c) else {
        return;
    };
    let mtu = link.frame_payload().max(MIN_MTU);
    // An hour on a radio: a round at SF12 may wait that long for the duty cycle.
    let stall_ms = match link.config().medium {
        Medium::Cable => 60_000,
        Medium::Radio(_) => 60 * 60_000,
    };
    match start_sync(
        shared,
        peer.link_id,
        &credential,
        peer.initiator,
        mtu,
        stall_ms,
        true,
    ) {
        Ok(session) => {
            // Round 0 covers every change before this instant.
            peer.change_cursor = shared.change_cursor();
            peer.sync = Some(session);
            peer.standby_until = None;
        }
        Err(_) => peer.standby_until = Some(now + STANDBY_RETRY_MS),
    }
}

fn retry_standby(
    shared: &Shared,
    link: &FrameLink,
    peers: &mut HashMap<Addr, RadioPeer>,
    now: u64,
) {
    for (&addr, peer) in peers.iter_mut() {
        if peer.standby_until.is_some_and(|t| now >= t) {
            try_start(shared, link, addr, peer, now);
        }
        // A newer link to the same person replaced this one: stand by.
        if peer.sync.is_some() && !shared.is_current(&peer.identity, peer.link_id) {
            end_sync(shared, peer, "another link to the same peer is kept");
            peer.link_id = shared.new_link_id();
            peer.standby_until = Some(now + STANDBY_RETRY_MS);
        }
    }
}

/// Ends the sync session (the frame link to the peer stays, for a later session).
fn end_sync(shared: &Shared, peer: &mut RadioPeer, reason: &str) {
    if let Some(mut sync) = peer.sync.take() {
        forward_events(shared, &mut sync, &mut peer.summary);
        // Pushes that did not go out wait for the next session with this peer.
        for id in sync.take_unsent_pushes() {
            // A full queue leaves it to the next session's first round.
            let _ = shared.push_to(peer.identity, id);
        }
        shared.link_down(&peer.identity, peer.link_id);
        tracing::debug!(reason, "sync session over a frame link ended");
        peer.standby_until = Some(now_ms() + STANDBY_RETRY_MS);
    }
}

fn finish_meeting(
    shared: &Shared,
    peer: &mut RadioPeer,
    reason: &str,
    name: &str,
    label: &str,
    addr: Addr,
    stories: &Option<mpsc::UnboundedSender<(String, Story)>>,
) {
    end_sync(shared, peer, reason);
    peer.summary.ended_by = reason.to_string();
    let took = peer.started.elapsed();
    let remote = format!("{label} #{addr}");
    log_meeting(name, &remote, &peer.summary, took);
    if let Some(tx) = stories {
        let s = &peer.summary;
        let _ = tx.send((
            name.to_string(),
            Story::Meeting {
                peer: s.peer,
                items_sent: s.items_sent,
                items_received: s.items_received,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
                millis: took.as_millis() as u64,
                ended_by: s.ended_by.clone(),
            },
        ));
    }
}

async fn sleep_until(deadline_ms: Option<u64>, retry_at: Option<Instant>) {
    let by_deadline = deadline_ms.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
    let by_retry = retry_at.map(|at| at.saturating_duration_since(Instant::now()));
    match [by_deadline, by_retry].into_iter().flatten().min() {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// `cairn radio info`: the firmware handshake alone, and what the device said.
pub(super) async fn probe(
    port: SerialConfig,
    kind: RadioKind,
    lora: LoraParams,
    wait: Duration,
) -> anyhow::Result<cairn_firmware_bridge::RadioInfo> {
    let path = port.path.display().to_string();
    let (serial, mut events) = SerialLink::open(port)?;
    let mut firmware = firmware_for(kind, lora);
    let give_up = tokio::time::Instant::now() + wait;
    let mut opened = false;
    let mut last_problem = None;
    let result = loop {
        while let Some(bytes) = firmware.poll_serial() {
            serial.write(bytes).await?;
        }
        let mut ready = None;
        while let Some(event) = firmware.poll_event() {
            match event {
                BridgeEvent::Ready(info) => ready = Some(info),
                BridgeEvent::Warning(w) => last_problem = Some(w),
                _ => {}
            }
        }
        if let Some(info) = ready {
            break Ok(info);
        }
        let deadline = firmware.poll_timeout();
        tokio::select! {
            event = events.recv() => match event {
                Some(SerialEvent::Opened) => {
                    opened = true;
                    firmware.reset(now_ms());
                }
                Some(SerialEvent::Bytes(bytes)) => firmware.handle_serial(now_ms(), &bytes),
                Some(SerialEvent::Closed(reason)) => last_problem = Some(reason.to_string()),
                None => break Err(anyhow::anyhow!("the serial port driver stopped")),
            },
            _ = sleep_until(deadline, None) => {
                if let Err(error) = firmware.handle_timeout(now_ms()) {
                    break Err(anyhow::anyhow!("{path}: {error}"));
                }
            }
            _ = tokio::time::sleep_until(give_up) => {
                let why = if opened {
                    format!("the device did not answer as {kind} firmware within {wait:?} (wrong --radio or baud rate?)")
                } else {
                    format!("could not open the port within {wait:?}")
                };
                break Err(match last_problem {
                    Some(problem) => anyhow::anyhow!("{path}: {why}; last problem: {problem}"),
                    None => anyhow::anyhow!("{path}: {why}"),
                });
            }
        }
    };
    serial.shutdown().await;
    result
}

/// Runs an in-person pairing over the radio (or cable) on `port`: the firmware handshake, then
/// the pairing's messages over [`crate::pair_link::PairLink`] until both sides have them all.
/// `session` names this pairing on a shared channel. Gives up after `wait`.
pub(super) async fn pair(
    port: SerialConfig,
    kind: RadioKind,
    lora: LoraParams,
    pairing: &mut crate::contact::Pairing,
    session: [u8; 8],
    wait: Duration,
) -> anyhow::Result<crate::contact::PairedContact> {
    use crate::pair_link::{PairLink, FRAME_HEADER_LEN, MAX_MESSAGE_LEN};
    let path = port.path.display().to_string();
    let (serial, mut events) = SerialLink::open(port)?;
    let mut firmware = firmware_for(kind, lora);
    // Resend after three times a frame's airtime and a second more: a pairing frame's echo
    // and its answer fit in that even at SF12. Cables need little.
    let retry_ms = match firmware.medium() {
        Medium::Cable => 500,
        Medium::Radio(params) => {
            let params = params.unwrap_or(cairn_firmware_bridge::meshtastic::long_fast_eu868());
            let frame = FRAME_HEADER_LEN + MAX_MESSAGE_LEN;
            3 * cairn_firmware_bridge::lora::airtime_us(&params, frame) / 1000 + 1000
        }
    };
    let mut link = PairLink::new(session, retry_ms, OsRng.next_u64());
    let give_up = tokio::time::Instant::now() + wait;
    let mut ready = false;
    // The result, and until when to keep answering resends: our last acknowledgement may be
    // lost, and the other side then asks again.
    let mut paired = None;
    let result = loop {
        while let Some(message) = pairing.poll_transmit() {
            link.send(message);
        }
        if paired.is_none() {
            paired = pairing
                .take_paired()
                .map(|done| (done, now_ms() + 2 * retry_ms));
        }
        if ready {
            while let Some(frame) = link.poll_frame(now_ms()) {
                // A frame the device cannot take now is resent like a lost one.
                if firmware.send_frame(&frame).is_err() {
                    break;
                }
            }
        }
        while let Some(bytes) = firmware.poll_serial() {
            serial.write(bytes).await?;
        }
        if let Some((done, until)) = paired.take() {
            if link.all_acknowledged() || now_ms() >= until {
                break Ok(done);
            }
            paired = Some((done, until));
        }
        let mut failed = None;
        while let Some(event) = firmware.poll_event() {
            match event {
                BridgeEvent::Ready(_) => ready = true,
                BridgeEvent::Received { frame, .. } => {
                    if let Ok(Some(message)) = link.handle_frame(&frame) {
                        if let Err(error) = pairing.handle_message(&message) {
                            failed = Some(error);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(error) = failed {
            break Err(error.into());
        }
        let linger_until = paired.as_ref().map(|(_, until)| *until);
        let deadline = [firmware.poll_timeout(), link.poll_timeout(), linger_until]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            event = events.recv() => match event {
                Some(SerialEvent::Opened) => firmware.reset(now_ms()),
                Some(SerialEvent::Bytes(bytes)) => firmware.handle_serial(now_ms(), &bytes),
                Some(SerialEvent::Closed(_)) => ready = false,
                None => break Err(anyhow::anyhow!("the serial port driver stopped")),
            },
            _ = sleep_until(deadline, None) => {
                if let Err(error) = firmware.handle_timeout(now_ms()) {
                    break Err(anyhow::anyhow!("{path}: {error}"));
                }
            }
            _ = tokio::time::sleep_until(give_up) => {
                break Err(if ready {
                    anyhow::anyhow!("the other device did not answer over the radio within {wait:?}: is it pairing with you, on the same channel?")
                } else {
                    anyhow::anyhow!("{path}: the radio did not get ready within {wait:?} (wrong --radio or baud rate?)")
                });
            }
        }
    };
    serial.shutdown().await;
    result
}
