//! The host side: a node driving a stock Meshtastic device through its serial API.

use std::collections::VecDeque;

use prost::Message;

use super::framing::{encode_message, Decoder, START2};
use super::proto::{
    self, from_radio, mesh_packet, routing, to_radio, ChannelRole, FromRadio, LogLevel, MeshPacket,
    ModemPreset, PortNum, RegionCode, Routing, RoutingError, ToRadio,
};
use super::{private_app_data, SplitMix64, BROADCAST, MAX_FRAME, ON_AIR_HEADER_LEN};
use crate::{BridgeError, BridgeEvent, Firmware, Medium, RadioInfo, RadioKind};

/// `want_config_id` values the firmware treats specially (config only, node database only):
/// a random nonce must avoid them or the device would answer a different question.
const SPECIAL_NONCES: [u32; 2] = [69_420, 69_421];

/// Bytes written before each `want_config_id`, as the official clients do: they wake a
/// sleeping device, and if its parser is stuck inside a frame (we joined mid-stream, or a
/// previous client died mid-write) they fill that frame up so it resynchronises on ours.
/// START2 rather than START1 so that they can never begin a header themselves.
const WAKE_BYTES: [u8; 32] = [START2; 32];

/// Warnings are dropped (and counted) once this many events wait unread, so a line full of
/// garbage cannot grow the queue without bound. Received frames are never dropped here.
const MAX_QUEUED_EVENTS: usize = 256;

/// How the host paces its handshake and keep-alives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Seed for the handshake nonce and the packet ids. It must differ between runs (take it
    /// from the OS at the edge): a device silently drops a packet whose id is among the last
    /// 20 it took from a client, and the mesh drops `(sender, id)` pairs it saw recently, so
    /// ids that repeat after a restart would lose frames.
    pub seed: u64,
    /// How long one `want_config_id` may go unanswered. The clock restarts with every message
    /// of the config download, since a device with a full node database takes seconds to send
    /// it over a 115 200 baud line; an ESP32 board that reboots when the port opens needs a
    /// few seconds before it answers at all.
    pub handshake_timeout_ms: u64,
    /// How many `want_config_id` to send before reporting [`BridgeError::NoAnswer`].
    pub handshake_attempts: u32,
    /// Interval between heartbeats once ready. Firmware closes an API connection it has not
    /// heard from for 15 minutes; the official clients send one every 5.
    pub heartbeat_interval_ms: u64,
}

impl HostConfig {
    /// Defaults with the given seed: 5 s per attempt, 4 attempts, a heartbeat every 5 minutes.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self {
            seed,
            handshake_timeout_ms: 5_000,
            handshake_attempts: 4,
            heartbeat_interval_ms: 300_000,
        }
    }
}

/// What the host has seen and skipped, for `cairn radio info` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Cairn frames handed to the device.
    pub frames_sent: u64,
    /// Cairn frames heard and reported as [`BridgeEvent::Received`].
    pub frames_received: u64,
    /// `PRIVATE_APP` packets whose sender is the device itself (our own frames, echoed).
    pub own_packets_ignored: u64,
    /// Packets for other Meshtastic applications (text messages, positions, telemetry...).
    pub other_ports_ignored: u64,
    /// Packets the device could not decrypt (another channel's traffic).
    pub encrypted_ignored: u64,
    /// Frames that did not parse as `FromRadio`.
    pub undecodable: u64,
    /// Headers refused by the framing (length over 512).
    pub framing_errors: u64,
    /// Bytes outside any frame: the device's log text, noise.
    pub skipped_bytes: u64,
    /// Frames the device refused (routing naks, queue errors).
    pub refused_by_device: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Warnings dropped because too many events were waiting.
    pub warnings_dropped: u64,
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before [`Firmware::reset`], after [`MeshtasticHost::disconnect`] or after giving up.
    Idle,
    /// `want_config_id` sent; waiting for `config_complete_id` with our nonce.
    ExpectConfigComplete {
        nonce: u32,
        attempt: u32,
        started_ms: u64,
        deadline_ms: u64,
    },
    /// Configured: frames go out, heartbeats keep the connection.
    Ready { heartbeat_due_ms: u64 },
}

/// What the config download told us about the device.
#[derive(Debug, Clone, Default)]
struct DeviceFacts {
    node_num: Option<u32>,
    pio_env: String,
    firmware_version: Option<String>,
    hw_model: Option<i32>,
    long_name: String,
    short_name: String,
    lora: Option<proto::LoRaConfig>,
    primary_channel: Option<proto::ChannelSettings>,
}

/// The host side of the Meshtastic serial API: a [`Firmware`] for `--radio meshtastic`.
///
/// [`Firmware::reset`] sends `want_config_id` with a nonce and waits for the device's config
/// download to end with that nonce, noting the device's node number, firmware version and
/// LoRa settings on the way ([`BridgeEvent::Ready`]). It retries a few times
/// ([`HostConfig`]) and then reports [`BridgeError::NoAnswer`]. Once ready, each frame goes out
/// as a broadcast `PRIVATE_APP` packet with `hop_limit` 0 and no ack; `PRIVATE_APP` packets
/// heard from other nodes come back as [`BridgeEvent::Received`]; everything else the device
/// sends is noted or counted ([`HostStats`]) and dropped. If the device reboots, the handshake
/// starts again by itself.
#[derive(Debug)]
pub struct MeshtasticHost {
    config: HostConfig,
    rng: SplitMix64,
    state: State,
    decoder: Decoder,
    to_serial: VecDeque<Vec<u8>>,
    events: VecDeque<BridgeEvent>,
    next_packet_id: u32,
    facts: DeviceFacts,
    stats: HostStats,
}

impl MeshtasticHost {
    /// A host with default timing; see [`HostConfig::seed`] for what the seed must be.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self::with_config(HostConfig::new(seed))
    }

    /// A host with the given timing. Idle until [`Firmware::reset`].
    #[must_use]
    pub fn with_config(config: HostConfig) -> Self {
        let mut rng = SplitMix64(config.seed);
        let next_packet_id = rng.next_u32();
        Self {
            config,
            rng,
            state: State::Idle,
            decoder: Decoder::new(),
            to_serial: VecDeque::new(),
            events: VecDeque::new(),
            next_packet_id,
            facts: DeviceFacts::default(),
            stats: HostStats::default(),
        }
    }

    /// The timing this host was built with.
    #[must_use]
    pub fn config(&self) -> HostConfig {
        self.config
    }

    /// The device's node number, once its config download reported it.
    #[must_use]
    pub fn node_num(&self) -> Option<u32> {
        self.facts.node_num
    }

    /// Counters of what was sent, received and skipped.
    #[must_use]
    pub fn stats(&self) -> HostStats {
        HostStats {
            skipped_bytes: self.decoder.skipped_bytes(),
            ..self.stats
        }
    }

    /// Tells the device we are going away (`ToRadio.disconnect`), so it stops queueing packets
    /// for us, and goes idle. Write what [`Firmware::poll_serial`] returns before closing the
    /// port; [`Firmware::reset`] starts over.
    pub fn disconnect(&mut self) {
        if self.state != State::Idle {
            self.queue(&ToRadio {
                payload_variant: Some(to_radio::PayloadVariant::Disconnect(true)),
            });
        }
        self.state = State::Idle;
    }

    fn start_handshake(&mut self, now_ms: u64) {
        let nonce = self.fresh_nonce();
        self.facts = DeviceFacts::default();
        self.state = State::ExpectConfigComplete {
            nonce,
            attempt: 1,
            started_ms: now_ms,
            deadline_ms: now_ms.saturating_add(self.config.handshake_timeout_ms),
        };
        self.send_want_config(nonce);
    }

    fn send_want_config(&mut self, nonce: u32) {
        let message = ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::WantConfigId(nonce)),
        };
        let mut bytes = WAKE_BYTES.to_vec();
        // A 6-byte protobuf always fits a frame.
        if let Ok(frame) = encode_message(&message) {
            bytes.extend(frame);
        }
        self.to_serial.push_back(bytes);
    }

    fn fresh_nonce(&mut self) -> u32 {
        loop {
            let nonce = self.rng.next_u32();
            if nonce != 0 && !SPECIAL_NONCES.contains(&nonce) {
                return nonce;
            }
        }
    }

    fn take_packet_id(&mut self) -> u32 {
        // Id 0 asks the device to pick one; we want ours, to match its answers.
        if self.next_packet_id == 0 {
            self.next_packet_id = 1;
        }
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.wrapping_add(1);
        id
    }

    fn queue(&mut self, message: &ToRadio) {
        match encode_message(message) {
            Ok(bytes) => self.to_serial.push_back(bytes),
            // Only a packet past 512 bytes could fail, and send_frame refuses those first.
            Err(error) => self.warn(format!("could not frame a ToRadio message: {error}")),
        }
    }

    fn warn(&mut self, message: String) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.stats.warnings_dropped = self.stats.warnings_dropped.saturating_add(1);
        } else {
            self.events.push_back(BridgeEvent::Warning(message));
        }
    }

    fn handle_from_radio(&mut self, now_ms: u64, message: FromRadio) {
        use from_radio::PayloadVariant as V;
        if let State::ExpectConfigComplete {
            ref mut deadline_ms,
            ..
        } = self.state
        {
            // The device is talking: give the rest of its download a full timeout.
            *deadline_ms =
                (*deadline_ms).max(now_ms.saturating_add(self.config.handshake_timeout_ms));
        }
        let Some(variant) = message.payload_variant else {
            // A FromRadio kind we do not model (module config, file info, ...).
            return;
        };
        match variant {
            V::MyInfo(info) => {
                self.facts.node_num = Some(info.my_node_num);
                self.facts.pio_env = info.pio_env;
            }
            V::Metadata(metadata) => {
                self.facts.firmware_version = Some(metadata.firmware_version);
                self.facts.hw_model = Some(metadata.hw_model);
            }
            V::NodeInfo(node) => {
                if Some(node.num) == self.facts.node_num {
                    if let Some(user) = node.user {
                        self.facts.long_name = user.long_name;
                        self.facts.short_name = user.short_name;
                    }
                }
            }
            V::Config(config) => {
                if let Some(proto::config::PayloadVariant::Lora(lora)) = config.payload_variant {
                    self.facts.lora = Some(lora);
                }
            }
            V::Channel(channel) => {
                if channel.role == ChannelRole::Primary as i32 {
                    self.facts.primary_channel = channel.settings;
                }
            }
            V::ConfigCompleteId(id) => {
                if matches!(self.state, State::ExpectConfigComplete { nonce, .. } if nonce == id) {
                    self.become_ready(now_ms);
                }
                // Otherwise the answer to an earlier handshake (or another client's): ignore.
            }
            V::Rebooted(_) => {
                if self.state != State::Idle {
                    self.warn("the Meshtastic device rebooted; configuring it again".to_owned());
                    self.start_handshake(now_ms);
                }
            }
            V::LogRecord(record) => {
                if record.level >= LogLevel::Warning as i32 {
                    self.warn(format!("Meshtastic device log: {}", record.message));
                }
            }
            V::ClientNotification(notification) => {
                self.warn(format!("Meshtastic device: {}", notification.message));
            }
            V::QueueStatus(status) => self.handle_queue_status(&status),
            V::Packet(packet) => self.handle_packet(packet),
        }
    }

    fn handle_queue_status(&mut self, status: &proto::QueueStatus) {
        if status.res != 0 {
            self.stats.refused_by_device = self.stats.refused_by_device.saturating_add(1);
            self.warn(format!(
                "the Meshtastic device did not queue packet {:#010x} (error {}); the frame is lost",
                status.mesh_packet_id, status.res
            ));
        } else if status.free > 0 && matches!(self.state, State::Ready { .. }) {
            self.events.push_back(BridgeEvent::TxReady);
        }
    }

    fn handle_packet(&mut self, packet: MeshPacket) {
        let Some(mesh_packet::PayloadVariant::Decoded(data)) = packet.payload_variant else {
            // Encrypted: traffic on a channel the device has no key for.
            self.stats.encrypted_ignored = self.stats.encrypted_ignored.saturating_add(1);
            return;
        };
        let from_device = Some(packet.from) == self.facts.node_num;
        if from_device && data.portnum == PortNum::RoutingApp as i32 {
            self.handle_routing(data.request_id, &data.payload);
            return;
        }
        if data.portnum != PortNum::PrivateApp as i32 {
            self.stats.other_ports_ignored = self.stats.other_ports_ignored.saturating_add(1);
            return;
        }
        if from_device {
            self.stats.own_packets_ignored = self.stats.own_packets_ignored.saturating_add(1);
            return;
        }
        self.stats.frames_received = self.stats.frames_received.saturating_add(1);
        // rx_rssi 0 is protobuf's "not set": the packet did not come off the radio (MQTT, a
        // simulator); a real reception is never exactly 0 dBm. SNR 0 is a real value, so it is
        // only treated as unknown when RSSI is.
        let rssi_dbm = match packet.rx_rssi {
            0 => None,
            rssi => i16::try_from(rssi).ok(),
        };
        let snr_db = (packet.rx_rssi != 0 || packet.rx_snr != 0.0).then_some(packet.rx_snr);
        self.events.push_back(BridgeEvent::Received {
            frame: data.payload,
            rssi_dbm,
            snr_db,
        });
    }

    /// A routing answer from the device itself: an ack (ignored) or a nak for one of ours.
    fn handle_routing(&mut self, request_id: u32, payload: &[u8]) {
        let Ok(Routing {
            variant: Some(routing::Variant::ErrorReason(reason)),
        }) = Routing::decode(payload)
        else {
            return;
        };
        if reason == RoutingError::None as i32 {
            return;
        }
        self.stats.refused_by_device = self.stats.refused_by_device.saturating_add(1);
        let reason = RoutingError::try_from(reason)
            .map_or_else(|_| format!("error {reason}"), |error| format!("{error:?}"));
        self.warn(format!(
            "the Meshtastic device refused packet {request_id:#010x}: {reason}"
        ));
    }

    fn become_ready(&mut self, now_ms: u64) {
        self.state = State::Ready {
            heartbeat_due_ms: now_ms.saturating_add(self.config.heartbeat_interval_ms),
        };
        if let Some(lora) = &self.facts.lora {
            if lora.region == RegionCode::Unset as i32 {
                self.warn(
                    "the Meshtastic device has no LoRa region set, so it will not transmit: set \
                     one with the Meshtastic app or `meshtastic --set lora.region ...`"
                        .to_owned(),
                );
            } else if !lora.tx_enabled {
                self.warn(
                    "the Meshtastic device has transmitting disabled (lora.tx_enabled = false): \
                     frames will not go on air"
                        .to_owned(),
                );
            }
        }
        let info = self.radio_info();
        self.events.push_back(BridgeEvent::Ready(info));
    }

    fn radio_info(&self) -> RadioInfo {
        let facts = &self.facts;
        let firmware = match &facts.firmware_version {
            Some(version) => format!("Meshtastic {version}"),
            None => "Meshtastic (version not reported)".to_owned(),
        };
        let mut details = Vec::new();
        let mut add = |name: &str, value: String| details.push((name.to_owned(), value));
        if let Some(num) = facts.node_num {
            add("node", format!("!{num:08x}"));
        }
        if !facts.long_name.is_empty() || !facts.short_name.is_empty() {
            add(
                "name",
                format!("{} ({})", facts.long_name, facts.short_name),
            );
        }
        if !facts.pio_env.is_empty() {
            add("board", facts.pio_env.clone());
        }
        if let Some(model) = facts.hw_model {
            add("hardware model", model.to_string());
        }
        if let Some(lora) = &facts.lora {
            let region = RegionCode::try_from(lora.region)
                .map_or_else(|_| lora.region.to_string(), |region| format!("{region:?}"));
            add("region", region);
            if lora.use_preset {
                let preset = ModemPreset::try_from(lora.modem_preset).map_or_else(
                    |_| lora.modem_preset.to_string(),
                    |preset| format!("{preset:?}"),
                );
                add("modem preset", preset);
            } else {
                add(
                    "modem",
                    format!(
                        "SF{}, {} kHz, CR 4/{}",
                        lora.spread_factor, lora.bandwidth, lora.coding_rate
                    ),
                );
            }
            add(
                "transmit",
                if lora.tx_enabled { "on" } else { "off" }.to_owned(),
            );
        }
        if let Some(channel) = &facts.primary_channel {
            let name = if channel.name.is_empty() {
                "(preset name)"
            } else {
                channel.name.as_str()
            };
            let key = match channel.psk.as_slice() {
                [] => "no encryption",
                [_] => "a well-known default key",
                _ => "a private key",
            };
            add("channel", format!("{name}, {key}"));
        }
        add(
            "on-air overhead",
            format!(
                "{ON_AIR_HEADER_LEN}-byte header + 7 or 8 bytes of Data per frame; \
                 AES-CTR channel encryption adds nothing"
            ),
        );
        RadioInfo {
            firmware,
            lora: None,
            max_frame: MAX_FRAME,
            details,
        }
    }
}

impl Firmware for MeshtasticHost {
    fn kind(&self) -> RadioKind {
        RadioKind::Meshtastic
    }

    /// A radio whose parameters the firmware chose: the host does not set them (the config
    /// download reports the preset and region, in [`RadioInfo::details`]).
    fn medium(&self) -> Medium {
        Medium::Radio(None)
    }

    fn reset(&mut self, now_ms: u64) {
        self.decoder.reset();
        // Writes meant for the port before it was reopened are stale.
        self.to_serial.clear();
        self.start_handshake(now_ms);
    }

    fn handle_serial(&mut self, now_ms: u64, bytes: &[u8]) {
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            match result {
                Ok(frame) => match FromRadio::decode(frame.as_slice()) {
                    Ok(message) => self.handle_from_radio(now_ms, message),
                    Err(error) => {
                        self.stats.undecodable = self.stats.undecodable.saturating_add(1);
                        self.warn(format!(
                            "skipped a {}-byte message from the Meshtastic device that is not a \
                             FromRadio: {error}",
                            frame.len()
                        ));
                    }
                },
                Err(error) => {
                    self.stats.framing_errors = self.stats.framing_errors.saturating_add(1);
                    self.warn(format!("garbled data from the Meshtastic device: {error}"));
                }
            }
        }
    }

    fn poll_serial(&mut self) -> Option<Vec<u8>> {
        self.to_serial.pop_front()
    }

    /// Sends `frame` as `MeshPacket { to: broadcast, hop_limit: 0, want_ack: false, channel: 0,
    /// id: next id, decoded: Data { portnum: PRIVATE_APP, payload: frame } }`.
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), BridgeError> {
        if !self.is_ready() {
            return Err(BridgeError::NotReady);
        }
        if frame.len() > MAX_FRAME {
            return Err(BridgeError::FrameTooLarge {
                len: frame.len(),
                max: MAX_FRAME,
            });
        }
        let packet = MeshPacket {
            to: BROADCAST,
            channel: 0,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(private_app_data(
                frame.to_vec(),
                None,
            ))),
            id: self.take_packet_id(),
            hop_limit: 0,
            want_ack: false,
            ..Default::default()
        };
        self.queue(&ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(packet)),
        });
        self.stats.frames_sent = self.stats.frames_sent.saturating_add(1);
        Ok(())
    }

    fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Idle => None,
            State::ExpectConfigComplete { deadline_ms, .. } => Some(deadline_ms),
            State::Ready { heartbeat_due_ms } => Some(heartbeat_due_ms),
        }
    }

    fn handle_timeout(&mut self, now_ms: u64) -> Result<(), BridgeError> {
        match self.state {
            State::Idle => {}
            State::ExpectConfigComplete {
                nonce,
                attempt,
                started_ms,
                deadline_ms,
            } => {
                if now_ms < deadline_ms {
                    return Ok(());
                }
                if attempt >= self.config.handshake_attempts {
                    self.state = State::Idle;
                    return Err(BridgeError::NoAnswer {
                        kind: RadioKind::Meshtastic,
                        waited_ms: now_ms.saturating_sub(started_ms),
                    });
                }
                self.state = State::ExpectConfigComplete {
                    nonce,
                    attempt: attempt.saturating_add(1),
                    started_ms,
                    deadline_ms: now_ms.saturating_add(self.config.handshake_timeout_ms),
                };
                // Same nonce: a late answer to an earlier attempt completes the handshake too.
                self.send_want_config(nonce);
            }
            State::Ready { heartbeat_due_ms } => {
                if now_ms < heartbeat_due_ms {
                    return Ok(());
                }
                self.queue(&ToRadio {
                    payload_variant: Some(to_radio::PayloadVariant::Heartbeat(
                        proto::Heartbeat::default(),
                    )),
                });
                self.stats.heartbeats_sent = self.stats.heartbeats_sent.saturating_add(1);
                self.state = State::Ready {
                    heartbeat_due_ms: now_ms.saturating_add(self.config.heartbeat_interval_ms),
                };
            }
        }
        Ok(())
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }
}
