//! The device side: a virtual Meshtastic radio that answers the serial API like stock firmware.
//!
//! It follows what the firmware's `PhoneAPI` and `MeshService` do, as far as a client can see:
//! the config download in the firmware's order (my info, own node info, metadata, the 8
//! channel slots, config, then `config_complete_id` with the client's nonce), a `QueueStatus`
//! after every packet and every heartbeat, a `TOO_LARGE` routing nak for packets that would not
//! fit a LoRa frame, silent dropping of a packet id the client already used among its last
//! 20, and bounded queues (16 packets to transmit, 32 heard packets waiting for a client).
//! Left out: module config, other nodes, admin messages, acks, and everything on air except
//! `PRIVATE_APP` (the simulated channel carries Cairn frames only).

use std::collections::VecDeque;

use prost::Message;

use super::framing::{encode_message, Decoder};
use super::proto::{
    self, from_radio, mesh_packet, routing, to_radio, ChannelRole, FromRadio, MeshPacket,
    ModemPreset, PortNum, RegionCode, Routing, RoutingError, ToRadio, TransportMechanism,
};
use super::{
    long_fast_eu868, private_app_data, SplitMix64, BROADCAST, MAX_FRAME, MAX_LORA_PACKET_LEN,
    ON_AIR_HEADER_LEN, UNKNOWN_SENDER,
};
use crate::{DeviceSide, LoraParams};

/// The firmware's transmit queue length (`MAX_TX_QUEUE`).
const TX_QUEUE_LEN: usize = 16;
/// Heard packets the firmware keeps for a client that has not read them (`MAX_RX_TOPHONE`).
const TO_PHONE_QUEUE_LEN: usize = 32;
/// Client packet ids the firmware remembers to drop duplicates (`recentToRadioPacketIds`).
const RECENT_IDS_LEN: usize = 20;
/// Channel slots a device has (`MAX_NUM_CHANNELS`); all are sent in the config download.
const CHANNEL_SLOTS: i32 = 8;
/// Nonce asking for the node database only (`SPECIAL_NONCE_ONLY_NODES`).
const NONCE_ONLY_NODES: u32 = 69_421;
/// Firmware error code for a packet the transmit queue could not take (`ERRNO_UNKNOWN`).
const ERRNO_UNKNOWN: i32 = 32;
/// Firmware error code for a disabled radio interface (`ERRNO_DISABLED`).
const ERRNO_DISABLED: i32 = 34;
/// Control messages (config download, queue statuses) waiting for the client; the firmware
/// keeps only the newest queue statuses, and a config download is under 16 messages.
const CONTROL_QUEUE_LEN: usize = 64;

/// Who the virtual device is.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// The device's node number (`MyNodeInfo.my_node_num`).
    pub node_num: u32,
    /// What `DeviceMetadata.firmware_version` says.
    pub firmware_version: String,
    /// The owner's long name.
    pub long_name: String,
    /// The owner's short name (up to 4 characters).
    pub short_name: String,
    /// The sender node number of frames heard on the simulated air. A [`DeviceSide`] is handed
    /// bare frames, so the real sender is not known: [`UNKNOWN_SENDER`] by default. It must
    /// differ from `node_num`, or a host drops the frames as its own.
    pub heard_from: u32,
    /// Radio parameters, or `None` for a factory-fresh device with no LoRa region set, which
    /// does not transmit (and says region `UNSET` in its config).
    pub radio: Option<LoraParams>,
}

impl DeviceConfig {
    /// A device with this node number, firmware `2.5.0-virtual`, names derived from the node
    /// number, frames heard from [`UNKNOWN_SENDER`], and LongFast in the EU868 region
    /// ([`long_fast_eu868`]).
    #[must_use]
    pub fn new(node_num: u32) -> Self {
        let hex = format!("{node_num:08x}");
        Self {
            node_num,
            firmware_version: "2.5.0-virtual".to_owned(),
            long_name: format!("Cairn virtual {}", &hex[4..]),
            short_name: hex[4..].to_owned(),
            // Never our own number, whatever the caller picked.
            heard_from: if node_num == UNKNOWN_SENDER {
                UNKNOWN_SENDER ^ 1
            } else {
                UNKNOWN_SENDER
            },
            radio: Some(long_fast_eu868()),
        }
    }
}

/// What the virtual device did with what it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames handed to the channel by [`DeviceSide::poll_transmit`].
    pub frames_transmitted: u64,
    /// Frames heard and queued for the client.
    pub frames_heard: u64,
    /// Client packets on ports other than `PRIVATE_APP` (accepted, not put on air).
    pub other_ports: u64,
    /// Client packets dropped because their id was among the last 20.
    pub duplicate_ids: u64,
    /// Client packets refused as too large for a LoRa frame.
    pub too_large: u64,
    /// Frames lost to a full queue, to the radio being off, or (heard) too large to exist.
    pub dropped: u64,
    /// Frames from the client that did not parse as `ToRadio`.
    pub undecodable: u64,
}

/// A virtual Meshtastic device: a [`DeviceSide`] for tests and the simulator.
///
/// The radio is on whenever [`DeviceConfig::radio`] is set (a configured device transmits
/// without a client), and [`DeviceSide::lora_params`] reports those parameters: LongFast,
/// SF11 / 250 kHz / CR 4/5, by default. Frames the client sends on `PRIVATE_APP` come out of
/// [`DeviceSide::poll_transmit`] one at a time (the next once the channel reported
/// [`DeviceSide::handle_transmitted`]); frames heard go to the client as `PRIVATE_APP` packets
/// from [`DeviceConfig::heard_from`], once it has finished a config download.
#[derive(Debug)]
pub struct MeshtasticDevice {
    config: DeviceConfig,
    decoder: Decoder,
    /// A client finished `want_config_id`: heard packets flow to it.
    client_connected: bool,
    /// Config download, queue statuses, naks: sent before any heard packet.
    control: VecDeque<FromRadio>,
    /// Heard packets waiting for the client.
    to_phone: VecDeque<MeshPacket>,
    /// Frames waiting for the air.
    tx_queue: VecDeque<Vec<u8>>,
    /// A frame handed to the channel and not yet reported transmitted.
    transmitting: bool,
    /// The client's recent packet ids, newest last.
    recent_ids: VecDeque<u32>,
    /// Ids for packets the device makes (heard frames, naks, ids the client left 0).
    ids: SplitMix64,
    /// After a reboot: the boot log line goes out (as text) before the next message.
    boot_text: bool,
    stats: DeviceStats,
}

impl MeshtasticDevice {
    /// A device with [`DeviceConfig::new`]`(node_num)`.
    #[must_use]
    pub fn new(node_num: u32) -> Self {
        Self::with_config(DeviceConfig::new(node_num))
    }

    /// A device with the given identity and radio.
    #[must_use]
    pub fn with_config(config: DeviceConfig) -> Self {
        let ids = SplitMix64(u64::from(config.node_num));
        Self {
            config,
            decoder: Decoder::new(),
            client_connected: false,
            control: VecDeque::new(),
            to_phone: VecDeque::new(),
            tx_queue: VecDeque::new(),
            transmitting: false,
            recent_ids: VecDeque::new(),
            ids,
            boot_text: false,
            stats: DeviceStats::default(),
        }
    }

    /// Who this device is.
    #[must_use]
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Counters of what the device did.
    #[must_use]
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Whether a client has asked for the config (and not disconnected since).
    #[must_use]
    pub fn is_client_connected(&self) -> bool {
        self.client_connected
    }

    /// Simulates a reboot: queues, the client session and the serial parser are lost, the
    /// device prints a boot line as text and then sends `FromRadio.rebooted`, as the firmware
    /// does on its serial port.
    pub fn reboot(&mut self) {
        self.decoder.reset();
        self.client_connected = false;
        self.control.clear();
        self.to_phone.clear();
        self.tx_queue.clear();
        self.transmitting = false;
        self.recent_ids.clear();
        self.boot_text = true;
        self.push_control(FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::Rebooted(true)),
            ..Default::default()
        });
    }

    /// The next message for the client: control first, then heard packets once it is connected.
    fn next_message(&mut self) -> Option<FromRadio> {
        if let Some(message) = self.control.pop_front() {
            return Some(message);
        }
        if !self.client_connected {
            return None;
        }
        let packet = self.to_phone.pop_front()?;
        Some(FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::Packet(packet)),
            ..Default::default()
        })
    }

    fn push_control(&mut self, message: FromRadio) {
        if self.control.len() >= CONTROL_QUEUE_LEN {
            self.control.pop_front();
        }
        self.control.push_back(message);
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.ids.next_u32();
            if id != 0 {
                return id;
            }
        }
    }

    fn handle_to_radio(&mut self, message: ToRadio) {
        use to_radio::PayloadVariant as V;
        match message.payload_variant {
            Some(V::WantConfigId(nonce)) => self.start_config(nonce),
            Some(V::Packet(packet)) => self.handle_client_packet(packet),
            Some(V::Disconnect(_)) => {
                self.client_connected = false;
                self.control.clear();
            }
            // Nonce 1 asks for a node-info broadcast, which this device does not make.
            Some(V::Heartbeat(heartbeat)) if heartbeat.nonce != 1 => {
                self.push_queue_status(0, 0);
            }
            Some(V::Heartbeat(_)) | None => {}
        }
    }

    /// The config download, in the firmware's order. A new `want_config_id` restarts it.
    fn start_config(&mut self, nonce: u32) {
        use from_radio::PayloadVariant as V;
        self.control.clear();
        self.client_connected = true;
        let mut messages = Vec::new();
        if nonce != NONCE_ONLY_NODES {
            messages.push(V::MyInfo(self.my_info()));
        }
        messages.push(V::NodeInfo(self.own_node_info()));
        if nonce != NONCE_ONLY_NODES {
            messages.push(V::Metadata(self.metadata()));
            messages.extend((0..CHANNEL_SLOTS).map(|index| V::Channel(channel_slot(index))));
            messages.push(V::Config(self.lora_config()));
        }
        messages.push(V::ConfigCompleteId(nonce));
        for variant in messages {
            self.push_control(FromRadio {
                payload_variant: Some(variant),
                ..Default::default()
            });
        }
    }

    fn my_info(&self) -> proto::MyNodeInfo {
        proto::MyNodeInfo {
            my_node_num: self.config.node_num,
            min_app_version: 30_200,
            pio_env: "cairn-virtual".to_owned(),
            nodedb_count: 1,
            ..Default::default()
        }
    }

    fn own_node_info(&self) -> proto::NodeInfo {
        proto::NodeInfo {
            num: self.config.node_num,
            user: Some(proto::User {
                id: format!("!{:08x}", self.config.node_num),
                long_name: self.config.long_name.clone(),
                short_name: self.config.short_name.clone(),
                hw_model: proto::HW_MODEL_PORTDUINO,
                ..Default::default()
            }),
            is_favorite: true,
            ..Default::default()
        }
    }

    fn metadata(&self) -> proto::DeviceMetadata {
        proto::DeviceMetadata {
            firmware_version: self.config.firmware_version.clone(),
            device_state_version: 24,
            hw_model: proto::HW_MODEL_PORTDUINO,
            ..Default::default()
        }
    }

    fn lora_config(&self) -> proto::Config {
        let mut lora = proto::LoRaConfig {
            use_preset: true,
            modem_preset: ModemPreset::LongFast as i32,
            region: RegionCode::Unset as i32,
            hop_limit: 3,
            tx_enabled: true,
            ..Default::default()
        };
        if let Some(radio) = self.config.radio {
            lora.region = RegionCode::Eu868 as i32;
            lora.tx_power = i32::from(radio.tx_power_dbm);
            if radio != long_fast_eu868() {
                lora.use_preset = false;
                lora.bandwidth = radio.bandwidth_hz / 1000;
                lora.spread_factor = u32::from(radio.spreading_factor);
                lora.coding_rate = u32::from(radio.coding_rate);
            }
        }
        proto::Config {
            payload_variant: Some(proto::config::PayloadVariant::Lora(lora)),
        }
    }

    fn handle_client_packet(&mut self, packet: MeshPacket) {
        if packet.id != 0 {
            if self.recent_ids.contains(&packet.id) {
                self.stats.duplicate_ids = self.stats.duplicate_ids.saturating_add(1);
                return;
            }
            if self.recent_ids.len() >= RECENT_IDS_LEN {
                self.recent_ids.pop_front();
            }
            self.recent_ids.push_back(packet.id);
        }
        let id = if packet.id == 0 {
            self.fresh_id()
        } else {
            packet.id
        };
        let Some(mesh_packet::PayloadVariant::Decoded(data)) = packet.payload_variant else {
            // A client-encrypted packet: the firmware would relay it; the simulated air only
            // carries Cairn frames.
            self.stats.other_ports = self.stats.other_ports.saturating_add(1);
            self.push_queue_status(0, id);
            return;
        };
        if data.portnum != PortNum::PrivateApp as i32 {
            self.stats.other_ports = self.stats.other_ports.saturating_add(1);
            self.push_queue_status(0, id);
            return;
        }
        // What the firmware puts on air: the client's Data plus the bitfield it adds.
        let mut on_air = data;
        on_air.bitfield = Some(on_air.bitfield.unwrap_or(0));
        if ON_AIR_HEADER_LEN + on_air.encoded_len() > MAX_LORA_PACKET_LEN {
            self.stats.too_large = self.stats.too_large.saturating_add(1);
            self.push_queue_status(RoutingError::TooLarge as i32, id);
            self.push_routing_nak(RoutingError::TooLarge, id);
            return;
        }
        if self.config.radio.is_none() {
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            self.push_queue_status(ERRNO_DISABLED, id);
            return;
        }
        if self.tx_queue.len() >= TX_QUEUE_LEN {
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            self.push_queue_status(ERRNO_UNKNOWN, id);
            return;
        }
        self.tx_queue.push_back(on_air.payload);
        self.push_queue_status(0, id);
    }

    fn push_queue_status(&mut self, res: i32, mesh_packet_id: u32) {
        let free = TX_QUEUE_LEN.saturating_sub(self.tx_queue.len());
        let status = proto::QueueStatus {
            res,
            free: u32::try_from(free).unwrap_or(0),
            maxlen: TX_QUEUE_LEN as u32,
            mesh_packet_id,
        };
        self.push_control(FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::QueueStatus(status)),
            ..Default::default()
        });
    }

    /// The routing nak the firmware sends its client for a packet it could not send: from and
    /// to the device itself, answering the packet's id.
    fn push_routing_nak(&mut self, error: RoutingError, request_id: u32) {
        let routing = Routing {
            variant: Some(routing::Variant::ErrorReason(error as i32)),
        };
        let packet = MeshPacket {
            from: self.config.node_num,
            to: self.config.node_num,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(proto::Data {
                portnum: PortNum::RoutingApp as i32,
                payload: routing.encode_to_vec(),
                request_id,
                ..Default::default()
            })),
            id: self.fresh_id(),
            priority: proto::Priority::Ack as i32,
            ..Default::default()
        };
        self.push_control(FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::Packet(packet)),
            ..Default::default()
        });
    }
}

/// Channel slot `index`: the primary channel with the preset's name and the well-known
/// default key (`psk` = `[1]`), the other 7 disabled.
fn channel_slot(index: i32) -> proto::Channel {
    let primary = index == 0;
    proto::Channel {
        index,
        settings: Some(proto::ChannelSettings {
            psk: if primary { vec![1] } else { Vec::new() },
            ..Default::default()
        }),
        role: if primary {
            ChannelRole::Primary as i32
        } else {
            ChannelRole::Disabled as i32
        },
    }
}

impl DeviceSide for MeshtasticDevice {
    fn handle_host(&mut self, _now_ms: u64, bytes: &[u8]) {
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            // Like the firmware: a refused header or a malformed ToRadio is skipped.
            let Ok(frame) = result else { continue };
            match ToRadio::decode(frame.as_slice()) {
                Ok(message) => self.handle_to_radio(message),
                Err(_) => self.stats.undecodable = self.stats.undecodable.saturating_add(1),
            }
        }
    }

    fn poll_host(&mut self) -> Option<Vec<u8>> {
        let mut bytes = if std::mem::take(&mut self.boot_text) {
            b"INFO  | ??:??:?? 0 Booting Meshtastic (virtual)\r\n".to_vec()
        } else {
            Vec::new()
        };
        while let Some(message) = self.next_message() {
            // Every message we build is far under the 512-byte frame limit; skip one that is not.
            if let Ok(frame) = encode_message(&message) {
                bytes.extend(frame);
                break;
            }
        }
        (!bytes.is_empty()).then_some(bytes)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmitting || self.config.radio.is_none() {
            return None;
        }
        let frame = self.tx_queue.pop_front()?;
        self.transmitting = true;
        self.stats.frames_transmitted = self.stats.frames_transmitted.saturating_add(1);
        Some(frame)
    }

    fn handle_received(&mut self, frame: &[u8], rssi_dbm: i16, snr_db: f32) {
        if self.config.radio.is_none() || super::on_air_len(frame.len()) > MAX_LORA_PACKET_LEN {
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            return;
        }
        if self.to_phone.len() >= TO_PHONE_QUEUE_LEN {
            // The firmware drops the new packet (it only evicts old ones for text messages).
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            return;
        }
        let packet = MeshPacket {
            from: self.config.heard_from,
            to: BROADCAST,
            channel: 0,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(private_app_data(
                frame.to_vec(),
                Some(0),
            ))),
            id: self.fresh_id(),
            rx_snr: snr_db,
            rx_rssi: i32::from(rssi_dbm),
            transport_mechanism: TransportMechanism::Lora as i32,
            ..Default::default()
        };
        self.to_phone.push_back(packet);
        self.stats.frames_heard = self.stats.frames_heard.saturating_add(1);
    }

    fn handle_transmitted(&mut self) {
        self.transmitting = false;
    }

    fn lora_params(&self) -> Option<LoraParams> {
        self.config.radio
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }
}
