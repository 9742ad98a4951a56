//! The hop session state machine: handshake, framing, rekey, timers.

use std::collections::VecDeque;

use snow::params::NoiseParams;
use snow::{HandshakeState, TransportState};
use zeroize::Zeroize;

use super::credential::{DeviceCredential, LocalKeys, NetworkKey};
use super::datagram::{
    parse_datagram, DatagramKind, DatagramReceiver, DatagramSender, DropReason,
    DATAGRAM_HEADER_LEN, TAG_LEN, TYPE_HANDSHAKE_1, TYPE_HANDSHAKE_2, TYPE_HANDSHAKE_3,
};
use super::error::HopError;
use super::payload::{decode_hello, IdentityPayload, HANDSHAKE_2_LEN, PROTOCOL_VERSION};
use super::rng::SeededResolver;

/// The Noise protocol name. XX: neither side needs to know the other's key in advance (a LoRa
/// neighbour may be anyone on the team); psk0: the team network key is mixed in before the
/// first payload, so outsiders learn nothing but one ephemeral key.
pub const NOISE_PATTERN: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Prologue prefix; the framing kind byte follows, so a stream and a datagram peer never
/// complete a handshake with each other by mistake.
pub const PROLOGUE: &[u8] = b"cairn hop v1";
/// Per-frame overhead on a stream: u16 length prefix + tag.
pub const STREAM_OVERHEAD: usize = 2 + TAG_LEN;
/// Per-frame overhead on datagrams: type/epoch + 24-bit counter + tag.
pub const DATAGRAM_OVERHEAD: usize = DATAGRAM_HEADER_LEN + TAG_LEN;
/// Largest Noise message (the spec's limit, and what a u16 length prefix can say).
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// Smallest datagram MTU that carries every handshake message (message 2 plus its type byte).
pub const MIN_DATAGRAM_MTU: usize = 1 + HANDSHAKE_2_LEN;
/// Smallest max-frame a peer may announce: below this a frame could carry almost nothing.
pub const MIN_PEER_FRAME: usize = 64;
/// Upper bound on a handshake message we will read (real ones are ≤ 195 bytes).
const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// Retransmission backoff doubles at most this many times.
const MAX_BACKOFF_SHIFT: u32 = 6;

/// Which side opens the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends message 1 (the side that dialled or first heard a beacon).
    Initiator,
    /// Waits for message 1.
    Responder,
}

/// How Noise messages travel on the link below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An ordered reliable byte stream (TCP, serial with its own ARQ): u16 length-prefixed
    /// messages, implicit nonces, and any authentication failure ends the session.
    Stream,
    /// Datagrams of at most `mtu` bytes that may be lost, reordered or duplicated (LoRa, BLE
    /// writes, UDP): explicit nonces, a replay window, bad frames are dropped and counted.
    Datagram {
        /// Largest datagram the link carries (LoRa: 200). At least [`MIN_DATAGRAM_MTU`].
        mtu: usize,
    },
}

impl Framing {
    /// Bytes a frame costs on the wire beyond its plaintext.
    #[must_use]
    pub fn overhead(self) -> usize {
        match self {
            Framing::Stream => STREAM_OVERHEAD,
            Framing::Datagram { .. } => DATAGRAM_OVERHEAD,
        }
    }

    /// Largest frame (Noise message on a stream, whole datagram otherwise) we accept.
    fn local_max_frame(self) -> usize {
        match self {
            Framing::Stream => MAX_NOISE_MESSAGE,
            Framing::Datagram { mtu } => mtu,
        }
    }

    fn prologue(self) -> [u8; 13] {
        let mut p = [0u8; 13];
        p[..12].copy_from_slice(PROLOGUE);
        p[12] = match self {
            Framing::Stream => 1,
            Framing::Datagram { .. } => 2,
        };
        p
    }
}

/// When to move to a fresh key (per direction). The old key is gone after a rekey, so traffic
/// it protected stays safe if a later key leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyLimits {
    /// Frames sent under one key.
    pub messages: u64,
    /// Plaintext bytes sent under one key.
    pub bytes: u64,
}

/// Everything a [`HopSession`] is told at birth.
#[derive(Debug, Clone)]
pub struct HopConfig {
    /// Initiator or responder.
    pub role: Role,
    /// Our device secret and credential.
    pub local: LocalKeys,
    /// Team network key (Noise PSK).
    pub network_key: NetworkKey,
    /// Stream or datagram.
    pub framing: Framing,
    /// The handshake must finish within this many ms of `new`.
    pub handshake_timeout_ms: u64,
    /// Datagrams only: first retransmission of an unanswered handshake message after this many
    /// ms, doubling each time. Pick it above the link's round trip (LoRa SF12: seconds).
    pub handshake_retransmit_ms: u64,
    /// When to rekey.
    pub rekey: RekeyLimits,
    /// Datagrams only: how long the previous epoch's receive key stays usable for late frames.
    pub previous_epoch_grace_ms: u64,
    /// If set, the peer must prove this identity or the session closes.
    pub expected_peer: Option<[u8; 32]>,
}

impl HopConfig {
    /// A configuration with defaults for the framing: streams get a 10 s handshake deadline
    /// and rekey every 2^20 frames or 1 GiB; datagrams get 120 s (LoRa round trips take
    /// seconds), a 15 s first retransmission, rekey every 10 000 frames or 1 MiB, and 60 s of
    /// grace for late frames of the previous epoch.
    #[must_use]
    pub fn new(role: Role, local: LocalKeys, network_key: NetworkKey, framing: Framing) -> Self {
        let (handshake_timeout_ms, handshake_retransmit_ms, rekey, previous_epoch_grace_ms) =
            match framing {
                Framing::Stream => (
                    10_000,
                    10_000,
                    RekeyLimits {
                        messages: 1 << 20,
                        bytes: 1 << 30,
                    },
                    0,
                ),
                Framing::Datagram { .. } => (
                    120_000,
                    15_000,
                    RekeyLimits {
                        messages: 10_000,
                        bytes: 1 << 20,
                    },
                    60_000,
                ),
            };
        Self {
            role,
            local,
            network_key,
            framing,
            handshake_timeout_ms,
            handshake_retransmit_ms,
            rekey,
            previous_epoch_grace_ms,
            expected_peer: None,
        }
    }

    fn validate(&self) -> Result<(), HopError> {
        if let Framing::Datagram { mtu } = self.framing {
            if mtu < MIN_DATAGRAM_MTU {
                return Err(HopError::MtuTooSmall {
                    mtu,
                    needed: MIN_DATAGRAM_MTU,
                });
            }
            if mtu > MAX_NOISE_MESSAGE {
                return Err(HopError::InvalidConfig("datagram mtu above 65535"));
            }
            if self.handshake_retransmit_ms == 0 {
                return Err(HopError::InvalidConfig("handshake_retransmit_ms is 0"));
            }
        }
        if self.handshake_timeout_ms == 0 {
            return Err(HopError::InvalidConfig("handshake_timeout_ms is 0"));
        }
        if self.rekey.messages == 0 || self.rekey.bytes == 0 {
            return Err(HopError::InvalidConfig("rekey limits must be at least 1"));
        }
        self.local.check().map_err(HopError::LocalCredential)
    }
}

/// What the session tells the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HopEvent {
    /// Handshake done; the peer proved this credential. Frames may be sent now.
    Established {
        /// Who the peer is: identity, device key, and the identity's signature.
        peer: DeviceCredential,
    },
    /// One authenticated plaintext frame from the peer.
    Frame(Vec<u8>),
    /// The session ended; no further events or transmits follow.
    Closed(HopError),
}

/// Counters for diagnostics: what was sent, what was refused and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HopStats {
    /// Transport frames sent (excluding stream rekey markers).
    pub frames_sent: u64,
    /// Transport frames delivered as `HopEvent::Frame`.
    pub frames_received: u64,
    /// Datagrams dropped as duplicates or older than the replay window.
    pub dropped_replayed: u64,
    /// Datagrams dropped because they did not authenticate (corrupt, forged, truncated).
    pub dropped_corrupt: u64,
    /// Datagrams dropped for a malformed header or size above our MTU.
    pub dropped_malformed: u64,
    /// Datagrams for a key epoch we no longer (or not yet) hold.
    pub dropped_stale_epoch: u64,
    /// Datagrams that arrived in the wrong phase (transport before the handshake finished,
    /// stray handshake messages afterwards).
    pub dropped_unexpected: u64,
    /// Handshake messages that failed authentication (wrong network key or forged).
    pub handshake_rejected: u64,
    /// Handshake messages we sent again (timer or peer's duplicate).
    pub handshake_retransmits: u64,
    /// Times we moved our sending key forward.
    pub rekeys_sent: u64,
    /// Epochs our receiving key moved forward.
    pub rekeys_received: u64,
}

/// Datagram handshake bookkeeping: what to resend and when.
struct Retransmit {
    /// The datagram we may need to send again (message 1 or 2).
    datagram: Vec<u8>,
    at: u64,
    count: u32,
}

struct Handshake {
    noise: HandshakeState,
    deadline: u64,
    /// Responder: the message 1 we answered, so a duplicate gets message 2 again.
    answered: Option<Vec<u8>>,
    retransmit: Option<Retransmit>,
    /// Some handshake message failed authentication.
    rejected: bool,
    /// Some handshake message was read successfully.
    advanced: bool,
}

struct StreamTransport {
    noise: TransportState,
    sent_in_epoch: u64,
    bytes_in_epoch: u64,
}

struct DatagramTransport {
    tx: DatagramSender,
    rx: DatagramReceiver,
    /// Initiator only, until the responder proves it is established: message 2 as received
    /// and message 3 as sent. A repeated message 2 means our message 3 was lost.
    echo: Option<(Vec<u8>, Vec<u8>)>,
}

enum Phase {
    Handshake(Box<Handshake>),
    Stream(Box<StreamTransport>),
    Datagram(Box<DatagramTransport>),
    Closed,
}

/// A Noise-secured hop over one link: a pure state machine (no clock, no I/O, no OS
/// randomness). Feed it bytes with [`handle_input`](Self::handle_input) and timer expiries with
/// [`handle_timeout`](Self::handle_timeout); drain [`poll_transmit`](Self::poll_transmit) to the
/// link and [`poll_event`](Self::poll_event) to the layer above.
pub struct HopSession {
    config: HopConfig,
    phase: Phase,
    /// Stream framing: bytes received but not yet a whole message.
    inbuf: Vec<u8>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<HopEvent>,
    peer: Option<DeviceCredential>,
    peer_max_frame: usize,
    handshake_hash: Option<[u8; 32]>,
    stats: HopStats,
}

impl std::fmt::Debug for HopSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Handshake(_) => "handshake",
            Phase::Stream(_) | Phase::Datagram(_) => "established",
            Phase::Closed => "closed",
        };
        f.debug_struct("HopSession")
            .field("role", &self.config.role)
            .field("framing", &self.config.framing)
            .field("phase", &phase)
            .field("peer", &self.peer)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn noise_err(_: snow::Error) -> HopError {
    HopError::Internal("snow refused a local operation")
}

impl HopSession {
    /// Starts a session. The initiator queues message 1 at once. `rng_seed` supplies the
    /// ephemeral key: use fresh OS randomness per session in production; the same seed and
    /// inputs always give the same bytes.
    pub fn new(config: HopConfig, now: u64, rng_seed: [u8; 32]) -> Result<Self, HopError> {
        config.validate()?;
        let params: NoiseParams = NOISE_PATTERN.parse().map_err(noise_err)?;
        let prologue = config.framing.prologue();
        let builder =
            snow::Builder::with_resolver(params, Box::new(SeededResolver::new(&rng_seed)))
                .prologue(&prologue)
                .and_then(|b| b.psk(0, &config.network_key.0))
                .and_then(|b| b.local_private_key(&config.local.device_secret))
                .map_err(noise_err)?;
        let noise = match config.role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .map_err(noise_err)?;
        let handshake = Handshake {
            noise,
            deadline: now.saturating_add(config.handshake_timeout_ms),
            answered: None,
            retransmit: None,
            rejected: false,
            advanced: false,
        };
        let peer_max_frame = config.framing.local_max_frame();
        let mut session = Self {
            config,
            phase: Phase::Handshake(Box::new(handshake)),
            inbuf: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            peer: None,
            peer_max_frame,
            handshake_hash: None,
            stats: HopStats::default(),
        };
        if session.config.role == Role::Initiator {
            let Phase::Handshake(hs) = &mut session.phase else {
                return Err(HopError::Internal("new session not in handshake"));
            };
            let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
            let n = hs
                .noise
                .write_message(&[PROTOCOL_VERSION], &mut buf)
                .map_err(noise_err)?;
            let wire = frame_handshake(session.config.framing, TYPE_HANDSHAKE_1, &buf[..n]);
            if let Framing::Datagram { .. } = session.config.framing {
                hs.retransmit = Some(Retransmit {
                    datagram: wire.clone(),
                    at: now.saturating_add(session.config.handshake_retransmit_ms),
                    count: 0,
                });
            }
            session.transmits.push_back(wire);
        }
        Ok(session)
    }

    /// Feeds bytes from the link: any chunk of the stream, or exactly one datagram.
    pub fn handle_input(&mut self, now: u64, bytes: &[u8]) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        match self.config.framing {
            Framing::Stream => self.handle_stream_bytes(bytes),
            Framing::Datagram { mtu } => {
                if bytes.len() > mtu {
                    self.stats.dropped_malformed += 1;
                } else {
                    self.handle_datagram(now, bytes);
                }
            }
        }
    }

    /// Next bytes for the link: a chunk to write to the stream, or one whole datagram.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Next event for the layer above.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<HopEvent> {
        self.events.pop_front()
    }

    /// Encrypts one frame for the peer. Only once established; at most
    /// [`max_plaintext`](Self::max_plaintext) bytes, and not empty.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), HopError> {
        let max = self.max_plaintext();
        let rekey = self.config.rekey;
        let wire = match &mut self.phase {
            Phase::Closed => return Err(HopError::Closed),
            Phase::Handshake(_) => return Err(HopError::NotEstablished),
            _ if plaintext.is_empty() => return Err(HopError::EmptyFrame),
            _ if plaintext.len() > max => {
                return Err(HopError::PlaintextTooLarge {
                    len: plaintext.len(),
                    max,
                })
            }
            Phase::Stream(t) => {
                if t.sent_in_epoch >= rekey.messages || t.bytes_in_epoch >= rekey.bytes {
                    // The empty frame tells the receiver to rekey after reading it: streams are
                    // ordered, so both sides switch at the same frame.
                    let marker = stream_seal(&mut t.noise, &[])?;
                    self.transmits.push_back(marker);
                    t.noise.rekey_outgoing();
                    t.sent_in_epoch = 0;
                    t.bytes_in_epoch = 0;
                    self.stats.rekeys_sent += 1;
                }
                let wire = stream_seal(&mut t.noise, plaintext)?;
                t.sent_in_epoch += 1;
                t.bytes_in_epoch = t.bytes_in_epoch.saturating_add(plaintext.len() as u64);
                wire
            }
            Phase::Datagram(t) => {
                let (wire, rekeyed) = t.tx.seal(plaintext, rekey.messages, rekey.bytes)?;
                if rekeyed {
                    self.stats.rekeys_sent += 1;
                }
                wire
            }
        };
        self.stats.frames_sent += 1;
        self.transmits.push_back(wire);
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.phase {
            Phase::Handshake(hs) => Some(
                hs.retransmit
                    .as_ref()
                    .map_or(hs.deadline, |r| r.at.min(hs.deadline)),
            ),
            Phase::Datagram(t) => t.rx.previous_expiry(),
            Phase::Stream(_) | Phase::Closed => None,
        }
    }

    /// Runs the timers due at `now`: handshake deadline, handshake retransmission, and
    /// forgetting the previous epoch's key.
    pub fn handle_timeout(&mut self, now: u64) {
        match &mut self.phase {
            Phase::Handshake(hs) => {
                if now >= hs.deadline {
                    let reason = if hs.rejected && !hs.advanced {
                        HopError::HandshakeRejected
                    } else {
                        HopError::HandshakeTimeout
                    };
                    self.close(reason);
                    return;
                }
                if let Some(r) = &mut hs.retransmit {
                    if now >= r.at {
                        r.count += 1;
                        let backoff = self
                            .config
                            .handshake_retransmit_ms
                            .saturating_mul(1 << r.count.min(MAX_BACKOFF_SHIFT));
                        r.at = now.saturating_add(backoff);
                        self.transmits.push_back(r.datagram.clone());
                        self.stats.handshake_retransmits += 1;
                    }
                }
            }
            Phase::Datagram(t) => t.rx.expire(now),
            Phase::Stream(_) | Phase::Closed => {}
        }
    }

    /// Largest plaintext `send` accepts: the MTU to give the sync session above. Before the
    /// handshake it reflects only our own framing; afterwards also the peer's announced limit.
    #[must_use]
    pub fn max_plaintext(&self) -> usize {
        let frame = self
            .config
            .framing
            .local_max_frame()
            .min(self.peer_max_frame);
        match self.config.framing {
            Framing::Stream => frame.saturating_sub(TAG_LEN),
            Framing::Datagram { .. } => frame.saturating_sub(DATAGRAM_OVERHEAD),
        }
    }

    /// Wire bytes each frame costs beyond its plaintext.
    #[must_use]
    pub fn overhead(&self) -> usize {
        self.config.framing.overhead()
    }

    /// True once the handshake completed and until the session closes.
    #[must_use]
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Stream(_) | Phase::Datagram(_))
    }

    /// True once the session ended (the reason was the last event).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The peer's verified credential, once established.
    #[must_use]
    pub fn peer(&self) -> Option<&DeviceCredential> {
        self.peer.as_ref()
    }

    /// The Noise handshake hash, once established: both sides hold the same value, so it can
    /// bind a higher-level check (e.g. comparing codes in person) to this very session.
    #[must_use]
    pub fn handshake_hash(&self) -> Option<[u8; 32]> {
        self.handshake_hash
    }

    /// Counters of what was sent and dropped.
    #[must_use]
    pub fn stats(&self) -> HopStats {
        self.stats
    }

    fn close(&mut self, reason: HopError) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.phase = Phase::Closed;
        self.transmits.clear();
        self.inbuf.clear();
        self.events.push_back(HopEvent::Closed(reason));
    }

    // ---- stream framing ----

    fn handle_stream_bytes(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
        let mut consumed = 0;
        loop {
            let rest = &self.inbuf[consumed..];
            let Some((len_bytes, body)) = rest.split_first_chunk::<2>() else {
                break;
            };
            let len = usize::from(u16::from_be_bytes(*len_bytes));
            if len == 0 {
                self.close(HopError::Malformed("zero-length stream frame"));
                return;
            }
            if matches!(self.phase, Phase::Handshake(_)) && len > MAX_HANDSHAKE_MESSAGE {
                self.close(HopError::Malformed("handshake message too long"));
                return;
            }
            if body.len() < len {
                break;
            }
            let message = body[..len].to_vec();
            consumed += 2 + len;
            if let Err(e) = self.handle_stream_message(&message) {
                self.close(e);
                return;
            }
        }
        self.inbuf.drain(..consumed);
    }

    fn handle_stream_message(&mut self, message: &[u8]) -> Result<(), HopError> {
        match &mut self.phase {
            Phase::Handshake(_) => self.handle_handshake_message(0, message, 0).map(|_| ()),
            Phase::Stream(t) => {
                let mut plain = vec![0u8; message.len()];
                let n = t
                    .noise
                    .read_message(message, &mut plain)
                    .map_err(|_| HopError::StreamAuthFailed)?;
                plain.truncate(n);
                if plain.is_empty() {
                    t.noise.rekey_incoming();
                    self.stats.rekeys_received += 1;
                } else {
                    self.stats.frames_received += 1;
                    self.events.push_back(HopEvent::Frame(plain));
                }
                Ok(())
            }
            Phase::Datagram(_) | Phase::Closed => Ok(()),
        }
    }

    // ---- datagram framing ----

    fn handle_datagram(&mut self, now: u64, datagram: &[u8]) {
        let Ok((kind, body)) = parse_datagram(datagram) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        match kind {
            DatagramKind::Handshake(ty) => {
                if let Err(e) = self.handle_handshake_datagram(now, ty, datagram, body) {
                    self.close(e);
                }
            }
            DatagramKind::Transport { epoch7, counter } => {
                let grace = self.config.previous_epoch_grace_ms;
                let Phase::Datagram(t) = &mut self.phase else {
                    self.stats.dropped_unexpected += 1;
                    return;
                };
                match t.rx.open(now, epoch7, counter, body, grace) {
                    Ok(opened) => {
                        // An authenticated frame from the responder: it has our message 3.
                        t.echo = None;
                        self.stats.rekeys_received += u64::from(opened.epochs_advanced);
                        self.stats.frames_received += 1;
                        self.events.push_back(HopEvent::Frame(opened.plaintext));
                    }
                    Err(DropReason::Replayed) => self.stats.dropped_replayed += 1,
                    Err(DropReason::Corrupt) => self.stats.dropped_corrupt += 1,
                    Err(DropReason::StaleEpoch) => self.stats.dropped_stale_epoch += 1,
                }
            }
        }
    }

    fn handle_handshake_datagram(
        &mut self,
        now: u64,
        ty: u8,
        datagram: &[u8],
        body: &[u8],
    ) -> Result<(), HopError> {
        let resend = match &mut self.phase {
            Phase::Handshake(hs) => {
                let expected = match (self.config.role, hs.answered.is_some()) {
                    (Role::Initiator, _) => TYPE_HANDSHAKE_2,
                    (Role::Responder, false) => TYPE_HANDSHAKE_1,
                    (Role::Responder, true) => TYPE_HANDSHAKE_3,
                };
                if ty == expected {
                    None
                } else if ty == TYPE_HANDSHAKE_1 && hs.answered.as_deref() == Some(datagram) {
                    // Our message 2 was lost: answer the repeated message 1 again.
                    Some(hs.retransmit.as_ref().map(|r| r.datagram.clone()))
                } else {
                    Some(None)
                }
            }
            Phase::Datagram(t) => {
                match &t.echo {
                    Some((msg2, msg3)) if ty == TYPE_HANDSHAKE_2 && msg2.as_slice() == datagram => {
                        // The responder repeats message 2: our message 3 did not arrive.
                        self.transmits.push_back(msg3.clone());
                        self.stats.handshake_retransmits += 1;
                    }
                    _ => self.stats.dropped_unexpected += 1,
                }
                return Ok(());
            }
            Phase::Stream(_) | Phase::Closed => return Ok(()),
        };
        match resend {
            Some(Some(wire)) => {
                self.transmits.push_back(wire);
                self.stats.handshake_retransmits += 1;
                return Ok(());
            }
            Some(None) => {
                self.stats.dropped_unexpected += 1;
                return Ok(());
            }
            None => {}
        }
        let answered = (ty == TYPE_HANDSHAKE_1).then(|| datagram.to_vec());
        let sent = self.handle_handshake_message(now, body, ty)?;
        if let (Phase::Handshake(hs), Some(sent)) = (&mut self.phase, sent) {
            hs.answered = answered;
            hs.retransmit = Some(Retransmit {
                datagram: sent,
                at: now.saturating_add(self.config.handshake_retransmit_ms),
                count: 0,
            });
        }
        Ok(())
    }

    // ---- handshake ----

    /// Reads one handshake message (type byte already stripped). Returns the datagram we sent
    /// in reply if the handshake continues (the responder's message 2). Datagram framing drops
    /// messages that fail authentication (anyone can transmit on a radio channel); a stream
    /// closes. `ty` is 0 on streams.
    fn handle_handshake_message(
        &mut self,
        _now: u64,
        message: &[u8],
        ty: u8,
    ) -> Result<Option<Vec<u8>>, HopError> {
        let framing = self.config.framing;
        let Phase::Handshake(hs) = &mut self.phase else {
            return Ok(None);
        };
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return match framing {
                Framing::Stream => Err(HopError::Malformed("handshake message too long")),
                Framing::Datagram { .. } => {
                    self.stats.dropped_malformed += 1;
                    Ok(None)
                }
            };
        }
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = match hs.noise.read_message(message, &mut payload) {
            Ok(n) => n,
            Err(_) => {
                self.stats.handshake_rejected += 1;
                hs.rejected = true;
                return match framing {
                    Framing::Stream => Err(HopError::HandshakeRejected),
                    Framing::Datagram { .. } => Ok(None),
                };
            }
        };
        hs.advanced = true;
        let payload = &payload[..n];
        let local_max = u16::try_from(framing.local_max_frame()).unwrap_or(u16::MAX);
        let our_identity =
            IdentityPayload::from_credential(&self.config.local.credential, local_max).encode();
        let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];

        if !hs.noise.is_handshake_finished() && self.config.role == Role::Responder {
            // Message 1 read: answer with message 2 (our identity, encrypted to e and psk).
            decode_hello(payload)?;
            let len = hs
                .noise
                .write_message(&our_identity, &mut out)
                .map_err(noise_err)?;
            let wire = frame_handshake(framing, TYPE_HANDSHAKE_2, &out[..len]);
            self.transmits.push_back(wire.clone());
            return Ok(Some(wire));
        }

        // Message 2 (initiator) or 3 (responder): the peer's static key is now authenticated.
        let claimed = IdentityPayload::decode(payload)?;
        let remote: [u8; 32] = hs
            .noise
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or(HopError::Internal("no remote static key after XX message"))?;
        let peer = claimed.credential(remote);
        peer.verify().map_err(HopError::PeerCredential)?;
        if let Some(expected) = self.config.expected_peer {
            if expected != peer.identity {
                return Err(HopError::UnexpectedPeer {
                    expected,
                    got: peer.identity,
                });
            }
        }
        let peer_max = usize::from(claimed.max_frame);
        if peer_max < MIN_PEER_FRAME {
            return Err(HopError::PeerFrameTooSmall(peer_max));
        }

        let mut msg3 = None;
        if self.config.role == Role::Initiator {
            let len = hs
                .noise
                .write_message(&our_identity, &mut out)
                .map_err(noise_err)?;
            let wire = frame_handshake(framing, TYPE_HANDSHAKE_3, &out[..len]);
            self.transmits.push_back(wire.clone());
            msg3 = Some(wire);
        }
        if !hs.noise.is_handshake_finished() {
            return Err(HopError::Internal("handshake not finished after message 3"));
        }

        let Phase::Handshake(hs) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return Err(HopError::Internal("phase changed during handshake"));
        };
        let mut hs = *hs;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(
            hs.noise
                .get_handshake_hash()
                .get(..32)
                .unwrap_or(&[0u8; 32]),
        );
        self.phase = match framing {
            Framing::Stream => Phase::Stream(Box::new(StreamTransport {
                noise: hs.noise.into_transport_mode().map_err(noise_err)?,
                sent_in_epoch: 0,
                bytes_in_epoch: 0,
            })),
            Framing::Datagram { .. } => {
                let (mut k1, mut k2) = hs.noise.dangerously_get_raw_split();
                let (send, recv) = match self.config.role {
                    Role::Initiator => (k1, k2),
                    Role::Responder => (k2, k1),
                };
                k1.zeroize();
                k2.zeroize();
                let echo = match (self.config.role, msg3) {
                    (Role::Initiator, Some(m3)) if ty == TYPE_HANDSHAKE_2 => {
                        let mut m2 = vec![TYPE_HANDSHAKE_2];
                        m2.extend_from_slice(message);
                        Some((m2, m3))
                    }
                    _ => None,
                };
                Phase::Datagram(Box::new(DatagramTransport {
                    tx: DatagramSender::new(send),
                    rx: DatagramReceiver::new(recv),
                    echo,
                }))
            }
        };
        self.peer = Some(peer);
        self.peer_max_frame = peer_max;
        self.handshake_hash = Some(hash);
        self.events.push_back(HopEvent::Established { peer });
        Ok(None)
    }
}

/// Puts a handshake message on the wire: length prefix on a stream, type byte on datagrams.
fn frame_handshake(framing: Framing, ty: u8, message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + 2);
    match framing {
        Framing::Stream => wire.extend_from_slice(&(message.len() as u16).to_be_bytes()),
        Framing::Datagram { .. } => wire.push(ty),
    }
    wire.extend_from_slice(message);
    wire
}

/// Encrypts one stream frame with its length prefix.
fn stream_seal(noise: &mut TransportState, plaintext: &[u8]) -> Result<Vec<u8>, HopError> {
    let mut wire = vec![0u8; 2 + plaintext.len() + TAG_LEN];
    let n = noise
        .write_message(plaintext, &mut wire[2..])
        .map_err(noise_err)?;
    let len = u16::try_from(n).map_err(|_| HopError::Internal("stream frame above 65535"))?;
    wire[..2].copy_from_slice(&len.to_be_bytes());
    wire.truncate(2 + n);
    Ok(wire)
}
