//! # Frame links: hop sessions over cables and shared radio channels
//!
//! A LAN link is a TCP stream to one peer. Everything else Cairn speaks over (a serial cable,
//! a LoRa channel that everyone in range shares, BLE writes later) moves *frames*: small,
//! lossy, and for radios heard by everyone nearby. [`FrameLink`] is the one layer that turns
//! any such bearer into secure, ordered message streams with each peer in reach, so the same
//! sync session runs over all of them:
//!
//! ```text
//!  sync session ─messages─▶ Arq (ordered, reliable) ─▶ HopSession (Noise, datagrams) ─┐
//!        (one per peer)                                                               │
//!  FrameLink: addresses, beacons, handshakes, pacing, duty cycle ◀────────────────────┘
//!        │  frames ≤ max_frame
//!  firmware driver (raw cable, KISS, RNode, Meshtastic) ─▶ serial port ─▶ radio
//! ```
//!
//! * **Discovery.** A node announces itself with a 5-byte beacon ([`frame`]); on hearing an
//!   unknown peer, the one with the lower address starts a Noise handshake (three frames:
//!   53, 200 and 167 bytes); the higher one answers with its own beacon so it is heard too,
//!   and starts the handshake itself if the lower one does not.
//! * **Sessions.** One [`HopSession`] (datagram framing) per peer, with an [`arq::Arq`]
//!   stream inside it. Sessions are not tied to a connection: they last as long as the peer
//!   answers, so a peer that walks out of range and back costs no new handshake unless a
//!   send failed meanwhile ([`arq::ArqError::PeerGone`] ends the session).
//! * **Pacing.** On a radio the link never transmits while its own last frame is still on
//!   air, waits a random slot after hearing anyone (so two nodes that heard the same frame do
//!   not answer at once), and keeps within the duty cycle ([`LinkConfig::duty_cycle`]): a
//!   frame that would exceed it waits. Acknowledgements and handshakes go before data.
//! * **Idle means silent.** No keepalives: an idle radio link sends a beacon every
//!   [`LinkConfig::beacon_interval_ms`] and nothing else. A cable sends beacons only while it
//!   has no peer.
//!
//! Pure: `now` (ms) and a seed come in; frames, deadlines and events come out.

pub mod arq;
pub mod frame;

use std::collections::{BTreeMap, VecDeque};

use cairn_firmware_bridge::lora::{self, DutyCycle, DutyCycleConfig};
use cairn_firmware_bridge::{LoraParams, Medium};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::hop::{
    DeviceCredential, Framing, HopConfig, HopError, HopEvent, HopSession, LocalKeys, NetworkKey,
    Role, DATAGRAM_OVERHEAD, MIN_DATAGRAM_MTU,
};
use arq::{Arq, ArqConfig, ArqError, ArqStats};
use frame::{Addr, LinkFrame, HANDSHAKE_OVERHEAD, TRANSPORT_OVERHEAD};

/// Smallest frame a link can run on: a hop handshake message 2 plus the link's addresses.
pub const MIN_LINK_FRAME: usize = MIN_DATAGRAM_MTU + HANDSHAKE_OVERHEAD;

/// Bytes on air around a message's ARQ payload in a transport frame: link 2 + hop 20 + ARQ 2.
pub const FRAME_OVERHEAD: usize = TRANSPORT_OVERHEAD + DATAGRAM_OVERHEAD + arq::ARQ_HEADER_LEN;

/// What a peer on the link is called.
pub type PeerAddr = Addr;

/// Settings of one frame link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Our device keys.
    pub local: LocalKeys,
    /// The team's network key.
    pub network_key: NetworkKey,
    /// What the bearer is.
    pub medium: Medium,
    /// Largest frame the bearer carries, at least [`MIN_LINK_FRAME`].
    pub max_frame: usize,
    /// A cable's line rate in bits per second (the baud rate; 10 bits per byte with 8N1).
    /// The link paces its frames to it rather than pile them up in the port's buffers.
    /// `None`: unknown or unlimited.
    pub cable_bps: Option<u32>,
    /// Airtime we may use per window (EU868 g1: 1% of an hour). `None`: no limit (cables).
    pub duty_cycle: Option<DutyCycleConfig>,
    /// How often an idle radio announces itself.
    pub beacon_interval_ms: u64,
    /// Most peers at once; beacons from more are ignored until one goes.
    pub max_peers: usize,
}

/// LoRa parameters assumed when the firmware picks its own: Meshtastic's LongFast preset,
/// its default (a team that changed the preset paces more cautiously or less than it
/// could; airtime is only an estimate there).
pub const ASSUMED_FIRMWARE_PARAMS: LoraParams =
    cairn_firmware_bridge::meshtastic::long_fast_eu868();

impl LinkConfig {
    /// Defaults for a bearer: radios get a 1% duty cycle over an hour and a beacon interval
    /// that spends at most 5% of that budget on beacons (60 s at SF7, 30 min at SF12);
    /// cables get neither limit and a beacon every 2 s until a peer answers.
    #[must_use]
    pub fn new(
        local: LocalKeys,
        network_key: NetworkKey,
        medium: Medium,
        max_frame: usize,
    ) -> Self {
        let (duty_cycle, beacon_interval_ms) = match medium {
            Medium::Cable => (None, 2_000),
            Medium::Radio(params) => {
                let params = params.unwrap_or(ASSUMED_FIRMWARE_PARAMS);
                let beacon_us = lora::airtime_us(&params, frame::BEACON_LEN);
                // beacon / interval ≤ 5% × 1%  ⇒  interval ≥ beacon × 2000.
                let interval = (beacon_us * 2_000 / 1_000).clamp(30_000, 30 * 60_000);
                // 90% of the legal 1%: a firmware that listens before talking may put a
                // frame on air seconds later than we hand it over (at SF12 the difference
                // reached 5% of the budget in the benchmark).
                let legal = DutyCycleConfig::default();
                let budget = DutyCycleConfig {
                    max_airtime_us: legal.max_airtime_us / 100 * 90,
                    ..legal
                };
                (Some(budget), interval)
            }
        };
        Self {
            local,
            network_key,
            medium,
            max_frame,
            cable_bps: None,
            duty_cycle,
            beacon_interval_ms,
            max_peers: 16,
        }
    }

    fn params(&self) -> Option<LoraParams> {
        match self.medium {
            Medium::Cable => None,
            Medium::Radio(params) => Some(params.unwrap_or(ASSUMED_FIRMWARE_PARAMS)),
        }
    }

    /// Time on air (or on the line) of a frame of `len` bytes, in µs; 0 on a cable of
    /// unknown rate. The cable figure counts the framing's worst case roughly: start, stop
    /// and 10% for escapes and the checksum.
    #[must_use]
    pub fn airtime_us(&self, len: usize) -> u64 {
        match (self.params(), self.cable_bps) {
            (Some(p), _) => lora::airtime_us(&p, len),
            (None, Some(bps)) if bps > 0 => (len as u64 + 8) * 11 * 1_000_000 / u64::from(bps),
            (None, _) => 0,
        }
    }

    /// The hop session's datagram MTU on this link.
    fn hop_mtu(&self) -> usize {
        self.max_frame - TRANSPORT_OVERHEAD
    }
}

/// Why a link could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The bearer's frames cannot carry a handshake.
    #[error("{0}-byte frames are too small for a Cairn link (at least {MIN_LINK_FRAME})")]
    FrameTooSmall(usize),
    /// No established session with that peer.
    #[error("no session with peer {0}")]
    NoSuchPeer(Addr),
    /// The stream refused the message.
    #[error(transparent)]
    Arq(#[from] ArqError),
}

/// What the link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A peer proved who it is; messages can flow. `initiator` is whether we started the
    /// handshake (exactly one side of a pair did): it picks the sync roles.
    PeerUp {
        /// Its link address.
        addr: Addr,
        /// Its credential.
        peer: DeviceCredential,
        /// Whether we were the handshake initiator.
        initiator: bool,
    },
    /// A message from a peer, in order.
    Message {
        /// From whom.
        addr: Addr,
        /// The message.
        message: Vec<u8>,
    },
    /// A session ended: the peer stopped answering, its handshake failed, or a newer session
    /// with the same address replaced it. A `PeerUp` of the same address may follow.
    PeerDown {
        /// Whose.
        addr: Addr,
        /// Why, for the log.
        reason: String,
    },
}

/// Counters for diagnostics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames we transmitted.
    pub frames_sent: u64,
    /// Bytes we transmitted (frames as handed to the bearer).
    pub bytes_sent: u64,
    /// Our time on air, µs.
    pub airtime_us: u64,
    /// Beacons we sent.
    pub beacons_sent: u64,
    /// Frames heard.
    pub frames_heard: u64,
    /// Frames that were not well-formed link frames, or from another network.
    pub frames_ignored: u64,
    /// Handshakes started or answered.
    pub handshakes: u64,
    /// Times a frame waited for the duty cycle.
    pub duty_cycle_waits: u64,
    /// Times we drew a new address because another node used ours.
    pub address_changes: u64,
    /// Beacons with our own address heard while we had sessions (kept our address).
    pub address_clashes_ignored: u64,
    /// Message 1s dropped as replays of one heard from another address.
    pub replayed_openings: u64,
    /// ARQ counters summed over sessions that ended, plus the live ones at the time of asking.
    pub arq: ArqStats,
}

#[derive(Debug)]
struct Peer {
    hop: HopSession,
    initiator: bool,
    /// Set once established.
    arq: Option<Arq>,
    /// A newer handshake with the same address, replacing this session once it completes.
    successor: Option<Box<Peer>>,
    /// When we last heard a frame from this peer.
    last_heard: u64,
    /// When we last answered a repeat of its message 1 (each repeat would queue another
    /// copy of message 2).
    answered_at: Option<u64>,
    /// The message 1 a responder session answers (a hash): a repeat of it is fed to the
    /// same session, a different one (the peer started over) replaces it.
    opening: Option<[u8; 16]>,
}

impl Peer {
    fn new(hop: HopSession, initiator: bool, now: u64) -> Self {
        Self {
            hop,
            initiator,
            arq: None,
            successor: None,
            last_heard: now,
            answered_at: None,
            opening: None,
        }
    }
}

/// A session whose peer has been silent this long may give its slot to a newcomer when
/// every slot is taken (a peer that walked away says nothing: idle links are silent).
pub const IDLE_SLOT_MS: u64 = 10 * 60_000;

/// Message 1s remembered to recognise one replayed from another address.
const RECENT_OPENINGS: usize = 64;

/// What identifies a message 1: a hash of its bytes.
fn opening_key(datagram: &[u8]) -> [u8; 16] {
    let mut key = [0u8; 16];
    key.copy_from_slice(&blake3::hash(datagram).as_bytes()[..16]);
    key
}

/// A frame link: every peer reachable over one bearer.
#[derive(Debug)]
pub struct FrameLink {
    config: LinkConfig,
    addr: Addr,
    net: u16,
    rng: ChaCha8Rng,
    peers: BTreeMap<Addr, Peer>,
    /// Hashes of recent message 1s and the address each came from: the same opening from
    /// another address is a replay (a genuine one, recorded off the air).
    openings: VecDeque<([u8; 16], Addr)>,
    /// Peers we heard beacons from but have no session with: when we first heard them.
    heard: BTreeMap<Addr, u64>,
    events: VecDeque<LinkEvent>,
    /// A frame taken from a session, waiting for the channel or the duty cycle.
    staged: Option<Vec<u8>>,
    /// The staged frame carries data (not only an acknowledgement, a handshake or a beacon).
    staged_data: bool,
    next_beacon: u64,
    /// Our own transmission is on air until then.
    busy_until: u64,
    /// Someone else just transmitted: wait until then (a random slot) before we do.
    quiet_until: u64,
    /// Our airtime inside the duty-cycle window.
    duty: Option<DutyCycle>,
    /// `poll_transmit` was refused by the channel or the duty cycle until then.
    wake_at: Option<u64>,
    /// Streams' data waits for the duty cycle until then.
    data_wake_at: Option<u64>,
    /// Round-robin position among peers for data.
    turn: Option<Addr>,
    stats: LinkStats,
    ended_arq: ArqStats,
}

impl FrameLink {
    /// A link with a random address from `seed`; the first beacon goes out after a random
    /// delay of up to 2 s so that nodes switched on together do not collide.
    ///
    /// # Errors
    ///
    /// [`LinkError::FrameTooSmall`] when the bearer cannot carry a handshake.
    pub fn new(config: LinkConfig, now: u64, seed: [u8; 32]) -> Result<Self, LinkError> {
        if config.max_frame < MIN_LINK_FRAME {
            return Err(LinkError::FrameTooSmall(config.max_frame));
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        let addr = loop {
            let a = Addr(rng.next_u32() as u16);
            if a.is_valid() {
                break a;
            }
        };
        let tag = blake3::derive_key("cairn 2026-11 link network tag", &config.network_key.0);
        let next_beacon = now + rng.next_u64() % 2_000;
        let duty_cycle = config.duty_cycle;
        Ok(Self {
            addr,
            net: u16::from_be_bytes([tag[0], tag[1]]),
            rng,
            config,
            peers: BTreeMap::new(),
            heard: BTreeMap::new(),
            openings: VecDeque::new(),
            events: VecDeque::new(),
            staged: None,
            staged_data: false,
            next_beacon,
            busy_until: 0,
            quiet_until: 0,
            duty: duty_cycle.map(DutyCycle::new),
            wake_at: None,
            data_wake_at: None,
            turn: None,
            stats: LinkStats::default(),
            ended_arq: ArqStats::default(),
        })
    }

    /// Our address on this link.
    #[must_use]
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> LinkStats {
        let mut stats = self.stats;
        let mut arq = self.ended_arq;
        for peer in self.peers.values() {
            if let Some(live) = peer.arq.as_ref() {
                arq.add(&live.stats());
            }
        }
        stats.arq = arq;
        stats
    }

    /// Largest message payload per frame: what a sync session's MTU should be to fill
    /// frames without splitting (it may be larger; the stream splits where needed).
    #[must_use]
    pub fn frame_payload(&self) -> usize {
        self.config.max_frame - FRAME_OVERHEAD
    }

    /// Peers with an established session.
    pub fn peers(&self) -> impl Iterator<Item = (Addr, &DeviceCredential)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.arq.is_some())
            .filter_map(|(a, p)| p.hop.peer().map(|c| (*a, c)))
    }

    /// Queues a message for an established peer.
    ///
    /// # Errors
    ///
    /// No session with `addr`, or a message too long for the stream.
    pub fn send(&mut self, addr: Addr, message: &[u8]) -> Result<(), LinkError> {
        let arq = self
            .peers
            .get_mut(&addr)
            .and_then(|p| p.arq.as_mut())
            .ok_or(LinkError::NoSuchPeer(addr))?;
        arq.send(message)?;
        Ok(())
    }

    /// Message bytes queued for `addr` that are not in a frame yet (the caller stops feeding
    /// a peer's sync session past a bound).
    #[must_use]
    pub fn backlog(&self, addr: Addr) -> usize {
        self.peers
            .get(&addr)
            .and_then(|p| p.arq.as_ref())
            .map_or(0, Arq::backlog)
    }

    /// Whether `addr`'s stream wants more messages now: less than a window of frames waits,
    /// so the next burst can be full (on a radio, a burst ends in one acknowledgement).
    #[must_use]
    pub fn wants_messages(&self, addr: Addr) -> bool {
        self.peers
            .get(&addr)
            .and_then(|p| p.arq.as_ref())
            .is_some_and(|arq| arq.backlog() < arq.config().window * self.frame_payload())
    }

    /// Ends the session with a peer (the node keeps another link to the same person).
    pub fn close_peer(&mut self, addr: Addr, reason: &str) {
        if let Some(peer) = self.peers.remove(&addr) {
            self.retire(addr, peer, reason.to_string());
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn retire(&mut self, addr: Addr, peer: Peer, reason: String) {
        if let Some(arq) = &peer.arq {
            self.ended_arq.add(&arq.stats());
            self.events.push_back(LinkEvent::PeerDown { addr, reason });
        }
    }

    fn new_session(&mut self, now: u64, role: Role) -> Result<HopSession, HopError> {
        let mut config = HopConfig::new(
            role,
            self.config.local.clone(),
            self.config.network_key.clone(),
            Framing::Datagram {
                mtu: self.config.hop_mtu(),
            },
        );
        // Each session its own retransmission interval: two nodes that started at the same
        // instant (hearing the same beacon) must not repeat in step and collide every time.
        let base = self.handshake_retransmit_ms();
        config.handshake_retransmit_ms = base + self.rng.next_u64() % (base / 2 + 1);
        config.handshake_timeout_ms = match self.config.params() {
            Some(_) => (base * 10).max(120_000),
            None => 30_000,
        };
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        self.stats.handshakes += 1;
        HopSession::new(config, now, seed)
    }

    fn arq_config(&self) -> ArqConfig {
        let max_frame = self.config.max_frame - TRANSPORT_OVERHEAD - DATAGRAM_OVERHEAD;
        match self.config.params() {
            None if self.config.cable_bps.is_some() => {
                // A whole window on the line, the answer, and slack.
                let frame_ms = self.config.airtime_us(self.config.max_frame) / 1_000;
                let fast = ArqConfig::fast(max_frame);
                ArqConfig {
                    ack_delay_ms: frame_ms * 2 + fast.ack_delay_ms,
                    rto_ms: (frame_ms * (fast.window as u64 + 2) * 2).max(fast.rto_ms),
                    max_rto_ms: (frame_ms * 64).max(fast.max_rto_ms),
                    ..fast
                }
            }
            None => ArqConfig::fast(max_frame),
            Some(params) => ArqConfig::radio(
                max_frame,
                lora::airtime_us(&params, self.config.max_frame) / 1_000,
            ),
        }
    }

    /// Starts a handshake with `addr` as initiator.
    fn initiate(&mut self, now: u64, addr: Addr) {
        if self.peers.len() >= self.config.max_peers {
            self.free_idle_slot(now);
        }
        if self.peers.len() >= self.config.max_peers {
            return;
        }
        if let Ok(hop) = self.new_session(now, Role::Initiator) {
            self.heard.remove(&addr);
            self.peers.insert(addr, Peer::new(hop, true, now));
        }
    }

    /// One frame from the bearer.
    pub fn handle_frame(&mut self, now: u64, bytes: &[u8]) {
        self.stats.frames_heard += 1;
        if self.config.params().is_some() {
            // Let whoever else heard this speak first, or not at the same instant as us: a
            // random wait of up to one largest frame, so that two answers to the same frame
            // usually do not overlap where they meet.
            let slot = self.config.airtime_us(frame::BEACON_LEN + FRAME_OVERHEAD) / 1_000 + 20;
            let wait = self.rng.next_u64() % ((slot * 3).max(self.frame_ms()) + 1);
            self.quiet_until = self.quiet_until.max(now + wait);
        }
        let Ok(frame) = LinkFrame::parse(bytes) else {
            self.stats.frames_ignored += 1;
            return;
        };
        match frame {
            LinkFrame::Beacon { src, net } => {
                if net != self.net {
                    self.stats.frames_ignored += 1;
                    return;
                }
                if src == self.addr {
                    // Someone else drew our address, or repeats it to cut our sessions
                    // (beacons are not authenticated). A node with sessions keeps its
                    // address: the newcomer, which has none, is the one that moves.
                    if self.peers.values().all(|p| p.arq.is_none()) {
                        self.redraw_address(now);
                    } else {
                        self.stats.address_clashes_ignored += 1;
                    }
                    return;
                }
                self.heard_beacon(now, src);
            }
            LinkFrame::Handshake { dst, src, datagram } => {
                if dst != self.addr {
                    return;
                }
                self.handshake_frame(now, src, &datagram);
            }
            LinkFrame::Transport { src, datagram } => {
                if let Some(peer) = self.peers.get_mut(&src) {
                    let before = peer.hop.stats().frames_received;
                    peer.hop.handle_input(now, &datagram);
                    if peer.hop.stats().frames_received > before {
                        peer.last_heard = now;
                    }
                    self.drain_peer(now, src);
                }
            }
        }
    }

    /// Takes a new address after hearing ours from another node. Peers know us by address,
    /// so every session ends (the node's sync sessions with them close) and is built again
    /// under the new one; a beacon goes out at once.
    fn redraw_address(&mut self, now: u64) {
        let old = self.addr;
        self.addr = loop {
            let a = Addr(self.rng.next_u32() as u16);
            if a.is_valid() && a != old {
                break a;
            }
        };
        self.stats.address_changes += 1;
        let peers = std::mem::take(&mut self.peers);
        for (addr, peer) in peers {
            self.retire(
                addr,
                peer,
                "our link address changed (another node had it)".into(),
            );
        }
        self.heard.clear();
        self.next_beacon = now;
    }

    fn heard_beacon(&mut self, now: u64, src: Addr) {
        if self.peers.contains_key(&src) || self.heard.contains_key(&src) {
            return;
        }
        // Everyone who heard this beacon may react to it: spread the reactions over a few
        // frame times so they do not collide where they meet.
        let spread = self.frame_ms() * 2 + 1;
        let due = if self.addr < src {
            // The lower address starts the handshake.
            now + self.rng.next_u64() % spread
        } else {
            // The higher one makes sure the lower hears it (once per stranger), and starts
            // itself if no handshake came by then (our beacon or its message 1 was lost).
            self.next_beacon = self.next_beacon.min(now + self.rng.next_u64() % spread);
            now + 4 * spread + self.rng.next_u64() % spread + 500
        };
        self.heard.insert(src, due);
        // Bounded: strangers' beacons cannot grow this without limit.
        while self.heard.len() > 4 * self.config.max_peers {
            self.heard.pop_first();
        }
    }

    /// Airtime of a largest frame in ms (0 on a cable of unknown rate).
    fn frame_ms(&self) -> u64 {
        self.config.airtime_us(self.config.max_frame) / 1_000
    }

    /// Handshakes due with peers whose beacons we heard. On a radio one handshake of ours
    /// runs at a time: two peers answering our message 1s at once would collide at us.
    fn start_due_handshakes(&mut self, now: u64) {
        let due: Vec<Addr> = self
            .heard
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            if self.peers.contains_key(&addr) {
                self.heard.remove(&addr);
                continue;
            }
            let busy = self.config.params().is_some()
                && self.peers.values().any(|p| p.initiator && p.arq.is_none());
            if busy {
                let later = now + self.frame_ms() * 3 + 1;
                self.heard.insert(addr, later);
                continue;
            }
            self.initiate(now, addr);
            // Slots full: forget it; its next beacon tries again.
            self.heard.remove(&addr);
        }
    }

    fn handshake_frame(&mut self, now: u64, src: Addr, datagram: &[u8]) {
        let is_first = datagram.first() == Some(&1);
        let lower = self.addr < src;
        let opening = is_first.then(|| opening_key(datagram));
        if let Some(key) = opening {
            if self.replayed_opening(key, src) {
                self.stats.replayed_openings += 1;
                return;
            }
        }
        if is_first && !self.peers.contains_key(&src) && self.peers.len() >= self.config.max_peers {
            self.free_idle_slot(now);
        }
        enum Action {
            Feed,
            Replace,
            Succeed,
            Answer,
            Drop,
        }
        let action = match self.peers.get(&src) {
            // Messages 2 and 3 (and repeats) of a handshake in progress, or a repeated
            // message 1 of a replacement already underway.
            Some(peer) if !is_first || peer.successor.is_some() => Action::Feed,
            // A repeat of the message 1 our pending responder session answers (our message 2
            // was lost): the session answers it again. A different one: the peer started
            // over, and the new handshake replaces the unfinished one.
            Some(peer) if !peer.initiator && peer.arq.is_none() => {
                if peer.opening == opening {
                    Action::Feed
                } else {
                    Action::Replace
                }
            }
            // Both started at once: the lower address keeps the initiator role.
            Some(peer) if peer.initiator && peer.arq.is_none() => {
                if lower {
                    Action::Drop
                } else {
                    Action::Replace
                }
            }
            // A message 1 from a peer we have a session with: it lost its side. Run the new
            // handshake next to the old session and switch when it completes, so a replayed
            // message 1 cannot cut a working session.
            Some(_) => Action::Succeed,
            None if is_first && self.peers.len() < self.config.max_peers => Action::Answer,
            None => Action::Drop,
        };
        match action {
            Action::Drop => return,
            Action::Feed => {
                let retransmit = self.handshake_retransmit_ms();
                if let Some(peer) = self.peers.get_mut(&src) {
                    let target = match peer.successor.as_deref_mut() {
                        Some(next) if is_first || !next.initiator => next,
                        _ => peer,
                    };
                    if is_first {
                        // A lost message 2 is worth sending again, once per retransmission
                        // interval: not once per repeat heard (they would pile up while
                        // the channel makes us wait).
                        if target
                            .answered_at
                            .is_some_and(|at| now < at + retransmit / 2)
                        {
                            return;
                        }
                        target.answered_at = Some(now);
                    }
                    target.hop.handle_input(now, datagram);
                }
            }
            Action::Replace | Action::Succeed | Action::Answer => {
                let Ok(mut hop) = self.new_session(now, Role::Responder) else {
                    return;
                };
                hop.handle_input(now, datagram);
                let stats = hop.stats();
                if stats.handshake_rejected > 0 || stats.dropped_malformed > 0 || hop.is_closed() {
                    // Not from anyone holding the network key: keep no session (nor replace
                    // one) for it, or a few forged frames would fill `max_peers` for the
                    // handshake timeout.
                    return;
                }
                let mut fresh = Peer::new(hop, false, now);
                fresh.answered_at = Some(now);
                fresh.opening = opening;
                self.heard.remove(&src);
                match (action, self.peers.get_mut(&src)) {
                    (Action::Succeed, Some(peer)) => peer.successor = Some(Box::new(fresh)),
                    _ => {
                        self.peers.insert(src, fresh);
                    }
                }
            }
        }
        self.drain_peer(now, src);
    }

    /// Whether this message 1 was heard lately from another address: a genuine opening
    /// recorded off the air and replayed to fill our peer slots.
    fn replayed_opening(&mut self, key: [u8; 16], src: Addr) -> bool {
        if let Some(&(_, from)) = self.openings.iter().find(|(k, _)| *k == key) {
            return from != src;
        }
        if self.openings.len() >= RECENT_OPENINGS {
            self.openings.pop_front();
        }
        self.openings.push_back((key, src));
        false
    }

    /// Every slot is taken and someone new calls: the session silent longest gives way if
    /// it has been silent for [`IDLE_SLOT_MS`], and an unfinished handshake gives way first.
    fn free_idle_slot(&mut self, now: u64) {
        let victim = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_heard) >= IDLE_SLOT_MS || p.arq.is_none())
            .min_by_key(|(_, p)| (p.arq.is_some(), p.last_heard))
            .map(|(a, _)| *a);
        if let Some(addr) = victim {
            if let Some(peer) = self.peers.remove(&addr) {
                self.retire(addr, peer, "silent, and its slot was needed".into());
            }
        }
    }

    /// Least wait before a handshake message is sent again: on a radio, long enough for
    /// the whole exchange (three largest frames on air, twice).
    fn handshake_retransmit_ms(&self) -> u64 {
        match self.config.params() {
            Some(_) => (3 * self.frame_ms() * 2).max(5_000),
            None => 1_000,
        }
    }

    /// Moves a peer's hop events into its ARQ and out as link events.
    fn drain_peer(&mut self, now: u64, addr: Addr) {
        let arq_config = self.arq_config();
        // The handshake settled on the smaller of the two ends' frames: cut ours to it.
        let jitter_seed = self.rng.next_u64() | 1;
        let stream_config = |hop: &HopSession| ArqConfig {
            max_frame: arq_config.max_frame.min(hop.max_plaintext()),
            jitter_seed,
            ..arq_config
        };
        let own_device = self.config.local.credential.device;
        let mut ended: Option<String> = None;
        let mut up = None;
        let mut messages = Vec::new();
        let mut peer_more = false;
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        // A successor that completed replaces the session; one that failed is dropped.
        let mut replaced = None;
        if let Some(next) = peer.successor.as_deref_mut() {
            let mut ourselves = false;
            while let Some(event) = next.hop.poll_event() {
                if let HopEvent::Established { peer: credential } = event {
                    ourselves = credential.device == own_device;
                    replaced = (!ourselves).then_some(credential);
                }
            }
            if next.hop.is_closed() || ourselves {
                peer.successor = None;
            }
        }
        if let Some(credential) = replaced {
            if let Some(next) = peer.successor.take() {
                let old = std::mem::replace(peer, *next);
                peer.arq = Some(Arq::new(stream_config(&peer.hop)));
                let initiator = peer.initiator;
                self.retire(addr, old, "the peer started a new session".into());
                self.events.push_back(LinkEvent::PeerUp {
                    addr,
                    peer: credential,
                    initiator,
                });
            }
        }
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        while let Some(event) = peer.hop.poll_event() {
            match event {
                HopEvent::Established { peer: credential } => {
                    if credential.device == own_device {
                        // Our own handshake frames played back to us with the addresses
                        // rewritten: our initiator met our responder.
                        ended = Some("the peer is this device (our own frames replayed)".into());
                        break;
                    }
                    peer.arq = Some(Arq::new(stream_config(&peer.hop)));
                    up = Some(credential);
                }
                HopEvent::Frame(frame) => {
                    let Some(arq) = peer.arq.as_mut() else {
                        continue;
                    };
                    peer_more |= frame.first().is_some_and(|b| b & 0xC0 == 0xC0);
                    if let Err(error) = arq.handle_frame(now, &frame) {
                        ended = Some(error.to_string());
                        break;
                    }
                    messages.extend(std::iter::from_fn(|| arq.poll_message()));
                }
                HopEvent::Closed(error) => {
                    ended = Some(error.to_string());
                    break;
                }
            }
        }
        let initiator = peer.initiator;
        if let Some(credential) = up {
            self.events.push_back(LinkEvent::PeerUp {
                addr,
                peer: credential,
                initiator,
            });
        }
        for message in messages {
            self.events.push_back(LinkEvent::Message { addr, message });
        }
        if peer_more && self.config.params().is_some() {
            // The peer's burst goes on: keep the channel clear for it.
            let frame_ms = self.config.airtime_us(self.config.max_frame) / 1_000;
            self.quiet_until = self.quiet_until.max(now + frame_ms + 50);
        }
        if let Some(reason) = ended {
            if let Some(peer) = self.peers.remove(&addr) {
                // A handshake that failed never announced the peer: `retire` says nothing.
                self.retire(addr, peer, reason);
            }
        }
    }

    /// When [`FrameLink::handle_timeout`] or [`FrameLink::poll_transmit`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        // Beacons and stream frames go only once the channel is ours: reporting them due
        // before then would wake the caller again and again for nothing.
        let free = self.channel_free_at();
        let mut next = Some(self.beacon_due_at().max(free));
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: u64| n.min(t)));
            }
        };
        for peer in self.peers.values() {
            consider(peer.hop.poll_timeout());
            consider(
                peer.arq
                    .as_ref()
                    .and_then(Arq::poll_timeout)
                    .map(|t| t.max(free)),
            );
            if let Some(next) = &peer.successor {
                consider(next.hop.poll_timeout());
            }
        }
        consider(self.wake_at);
        consider(self.data_wake_at.map(|at| at.max(self.channel_free_at())));
        consider(self.heard.values().min().copied());
        next
    }

    fn beacon_due_at(&self) -> u64 {
        if self.config.medium == Medium::Cable && !self.peers.is_empty() {
            u64::MAX
        } else {
            self.next_beacon
        }
    }

    /// Earliest instant the channel lets us start a frame.
    fn channel_free_at(&self) -> u64 {
        self.busy_until.max(self.quiet_until)
    }

    /// Timers: handshake retransmissions and deadlines, ARQ retransmissions and
    /// acknowledgements.
    pub fn handle_timeout(&mut self, now: u64) {
        self.start_due_handshakes(now);
        let addrs: Vec<Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            let mut failed = None;
            if let Some(peer) = self.peers.get_mut(&addr) {
                if peer.hop.poll_timeout().is_some_and(|t| now >= t) {
                    peer.hop.handle_timeout(now);
                }
                if let Some(next) = peer.successor.as_deref_mut() {
                    if next.hop.poll_timeout().is_some_and(|t| now >= t) {
                        next.hop.handle_timeout(now);
                    }
                    if next.hop.is_closed() {
                        peer.successor = None;
                    }
                }
                if let Some(arq) = peer.arq.as_mut() {
                    if let Err(error) = arq.handle_timeout(now) {
                        failed = Some(error.to_string());
                    }
                }
            }
            if let Some(reason) = failed {
                if let Some(peer) = self.peers.remove(&addr) {
                    self.retire(addr, peer, reason);
                }
            } else {
                self.drain_peer(now, addr);
            }
        }
    }

    /// The next frame to hand to the bearer now, if the channel and the duty cycle allow.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Vec<u8>> {
        self.wake_at = None;
        if now < self.channel_free_at() {
            // Whatever is waiting goes once the channel is ours.
            self.wake_at = Some(self.channel_free_at());
            return None;
        }
        if self.staged.is_none() {
            self.staged = self.next_frame(now);
        }
        let frame = self.staged.take()?;
        let airtime_us = self.config.airtime_us(frame.len());
        if let Some(duty) = self.duty.as_mut() {
            // Data leaves a tenth of the budget to acknowledgements and handshakes: a peer
            // whose data used it all must still be able to say "got it", or the other end
            // takes it for gone and both lose the session.
            let reserve = if self.staged_data {
                duty.config().max_airtime_us / 10
            } else {
                0
            };
            let at = duty.earliest(now, airtime_us + reserve);
            if at > now {
                self.stats.duty_cycle_waits += 1;
                self.busy_until = at;
                self.wake_at = Some(at);
                self.staged = Some(frame);
                return None;
            }
            duty.record(now, airtime_us);
        }
        self.busy_until = now + airtime_us.div_ceil(1_000);
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += frame.len() as u64;
        self.stats.airtime_us += airtime_us;
        Some(frame)
    }

    /// Picks what goes next: a due beacon, handshake messages, then acknowledgements and data
    /// from the peers in turn.
    fn next_frame(&mut self, now: u64) -> Option<Vec<u8>> {
        self.staged_data = false;
        self.data_wake_at = None;
        // Hop output first (handshakes, their repeats, frames already sealed).
        let addrs: Vec<Addr> = self.peers.keys().copied().collect();
        for &addr in &addrs {
            let peer = self.peers.get_mut(&addr)?;
            let successor = peer
                .successor
                .as_deref_mut()
                .and_then(|n| n.hop.poll_transmit());
            if let Some(datagram) = successor.or_else(|| peer.hop.poll_transmit()) {
                return Some(self.wrap(addr, datagram));
            }
        }
        if now >= self.beacon_due_at() {
            // Right after start, a lost beacon would cost a whole interval: the second and
            // third come after 10 s and 30 s (5 bytes each), then the regular interval.
            let interval = match self.stats.beacons_sent {
                0 => 10_000,
                1 => 30_000,
                _ => self.config.beacon_interval_ms,
            }
            .min(self.config.beacon_interval_ms);
            let jitter = interval / 5;
            self.next_beacon = now + interval - jitter + self.rng.next_u64() % (2 * jitter + 1);
            self.stats.beacons_sent += 1;
            return Some(
                LinkFrame::Beacon {
                    src: self.addr,
                    net: self.net,
                }
                .encode(),
            );
        }
        // Then the ARQ streams, starting after the peer served last.
        let start = self
            .turn
            .and_then(|t| addrs.iter().position(|&a| a > t))
            .unwrap_or(0);
        for i in 0..addrs.len() {
            let addr = addrs[(start + i) % addrs.len()];
            let peer = self.peers.get_mut(&addr)?;
            let Some(arq) = peer.arq.as_mut() else {
                continue;
            };
            // Data is taken from a stream only when the duty cycle has room for it and the
            // reserve: a data frame taken and then held would hold up every acknowledgement
            // behind it.
            let data_allowed = match (&self.duty, arq.next_data_len()) {
                (Some(duty), Some(len)) => {
                    let airtime = self
                        .config
                        .airtime_us(len + TRANSPORT_OVERHEAD + DATAGRAM_OVERHEAD);
                    let at = duty.earliest(now, airtime + duty.config().max_airtime_us / 10);
                    if at > now {
                        self.stats.duty_cycle_waits += 1;
                        self.data_wake_at = Some(self.data_wake_at.map_or(at, |w| w.min(at)));
                    }
                    at <= now
                }
                _ => true,
            };
            let polled = if data_allowed {
                arq.poll_transmit(now)
            } else {
                arq.poll_ack(now)
            };
            let Some(frame) = polled else {
                continue;
            };
            self.staged_data = frame.first().is_some_and(|b0| b0 & arq::DATA != 0);
            if peer.hop.send(&frame).is_err() {
                continue;
            }
            self.turn = Some(addr);
            if let Some(datagram) = peer.hop.poll_transmit() {
                return Some(self.wrap(addr, datagram));
            }
        }
        None
    }

    fn wrap(&self, addr: Addr, datagram: Vec<u8>) -> Vec<u8> {
        if matches!(datagram.first(), Some(1..=3)) {
            LinkFrame::Handshake {
                dst: addr,
                src: self.addr,
                datagram,
            }
            .encode()
        } else {
            LinkFrame::Transport {
                src: self.addr,
                datagram,
            }
            .encode()
        }
    }
}

#[cfg(test)]
mod tests;
