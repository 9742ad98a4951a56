//! The Meshtastic serial API against what a user of a Meshtastic radio cares about: our bytes
//! are the bytes the official client writes, we read what a device writes (including what we
//! do not model), a frame sent through two radios arrives intact, a radio that never answers
//! is reported, and garbage on the line costs nothing but itself.
//!
//! Golden vectors come from `vectors/meshtastic_vectors.txt`, made by
//! `vectors/meshtastic_vectors.py` with the `meshtastic` Python package.

use std::collections::HashMap;

use cairn_firmware_bridge::meshtastic::framing::{START1, START2};
use cairn_firmware_bridge::meshtastic::proto::{
    self, config, from_radio, mesh_packet, routing, to_radio, ChannelRole, FromRadio, LogLevel,
    MeshPacket, ModemPreset, PortNum, Priority, RegionCode, RoutingError, ToRadio,
    TransportMechanism,
};
use cairn_firmware_bridge::meshtastic::{
    encode_frame, encode_message, long_fast_eu868, on_air_len, Decoder, DeviceConfig, FramingError,
    HostConfig, MeshtasticDevice, MeshtasticHost, BROADCAST, MAX_FRAME, MAX_LORA_PACKET_LEN,
    MAX_PROTOBUF_LEN, UNKNOWN_SENDER,
};
use cairn_firmware_bridge::{
    BridgeError, BridgeEvent, DeviceSide, Firmware, Medium, RadioInfo, RadioKind,
};
use proptest::prelude::*;
use prost::Message;

const NODE: u32 = 0x1A2B_3C4D;
const PEER: u32 = 0x5566_7788;
const NONCE: u32 = 0x1234_ABCD;
const PACKET_ID: u32 = 0x0A0B_0C0D;
const FRAME: &[u8] = b"cairn frame \x94\xc3\x00\x05 inside";

// ---- helpers ----

fn vectors() -> HashMap<&'static str, Vec<u8>> {
    include_str!("vectors/meshtastic_vectors.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, hex) = line.split_once(' ').expect("name and hex");
            (name, unhex(hex))
        })
        .collect()
}

fn vector(name: &str) -> Vec<u8> {
    vectors()
        .remove(name)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The protobuf inside one framed vector.
fn body(framed: &[u8]) -> &[u8] {
    assert_eq!(&framed[..2], &[START1, START2]);
    let len = usize::from(u16::from_be_bytes([framed[2], framed[3]]));
    assert_eq!(framed.len(), 4 + len, "one whole frame");
    &framed[4..]
}

fn from_radio_vector(name: &str) -> FromRadio {
    FromRadio::decode(body(&vector(name))).expect("a FromRadio")
}

fn to_radio_vector(name: &str) -> ToRadio {
    ToRadio::decode(body(&vector(name))).expect("a ToRadio")
}

fn framed(message: &impl Message) -> Vec<u8> {
    encode_message(message).expect("fits a frame")
}

fn from_radio(variant: from_radio::PayloadVariant) -> FromRadio {
    FromRadio {
        id: 0,
        payload_variant: Some(variant),
    }
}

fn private_app(payload: &[u8]) -> proto::Data {
    proto::Data {
        portnum: PortNum::PrivateApp as i32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, FramingError>> {
    let mut decoder = Decoder::new();
    decoder.push(bytes);
    std::iter::from_fn(|| decoder.next_frame()).collect()
}

/// The one protobuf in `bytes`.
fn single_frame(bytes: &[u8]) -> Vec<u8> {
    let frames = decode_all(bytes);
    let [Ok(frame)] = <[_; 1]>::try_from(frames).expect("one frame") else {
        panic!("a valid frame");
    };
    frame
}

/// Every ToRadio in what a host wrote.
fn to_radios(bytes: &[u8]) -> Vec<ToRadio> {
    decode_all(bytes)
        .into_iter()
        .map(|frame| ToRadio::decode(frame.expect("framed").as_slice()).expect("a ToRadio"))
        .collect()
}

fn drain_serial(host: &mut MeshtasticHost) -> Vec<u8> {
    std::iter::from_fn(|| host.poll_serial())
        .flatten()
        .collect()
}

fn drain_events(host: &mut MeshtasticHost) -> Vec<BridgeEvent> {
    std::iter::from_fn(|| host.poll_event()).collect()
}

fn warnings(events: &[BridgeEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|event| match event {
            BridgeEvent::Warning(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The nonce of the (last) want_config_id a host wrote.
fn written_nonce(bytes: &[u8]) -> u32 {
    to_radios(bytes)
        .into_iter()
        .filter_map(|message| match message.payload_variant {
            Some(to_radio::PayloadVariant::WantConfigId(nonce)) => Some(nonce),
            _ => None,
        })
        .next_back()
        .expect("a want_config_id")
}

/// A host after reset whose device answered with the Python-made config download.
fn host_configured_from_python_bytes() -> (MeshtasticHost, Vec<BridgeEvent>) {
    let mut host = MeshtasticHost::new(1);
    host.reset(0);
    let nonce = written_nonce(&drain_serial(&mut host));
    for name in [
        "from_radio_my_info",
        "from_radio_node_info",
        "from_radio_metadata",
        "from_radio_channel_primary",
        "from_radio_config_device",
        "from_radio_config_lora",
        "from_radio_module_config",
    ] {
        host.handle_serial(10, &vector(name));
    }
    assert!(!host.is_ready(), "not before config_complete_id");
    host.handle_serial(
        10,
        &framed(&from_radio(from_radio::PayloadVariant::ConfigCompleteId(
            nonce,
        ))),
    );
    let events = drain_events(&mut host);
    (host, events)
}

/// One host and its virtual device on an in-memory serial line, with virtual time.
struct Station {
    host: MeshtasticHost,
    device: MeshtasticDevice,
    now_ms: u64,
}

impl Station {
    fn new(seed: u64, node_num: u32) -> Self {
        Self::with_device(seed, DeviceConfig::new(node_num))
    }

    fn with_device(seed: u64, config: DeviceConfig) -> Self {
        Self {
            host: MeshtasticHost::new(seed),
            device: MeshtasticDevice::with_config(config),
            now_ms: 0,
        }
    }

    /// Moves bytes both ways until the line is quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.host.poll_serial() {
                self.device.handle_host(self.now_ms, &bytes);
                moved = true;
            }
            while let Some(bytes) = self.device.poll_host() {
                self.host.handle_serial(self.now_ms, &bytes);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn connect(&mut self) -> RadioInfo {
        self.host.reset(self.now_ms);
        self.pump();
        let events = drain_events(&mut self.host);
        let ready = events.iter().find_map(|event| match event {
            BridgeEvent::Ready(info) => Some(info.clone()),
            _ => None,
        });
        ready.unwrap_or_else(|| panic!("no Ready in {events:?}"))
    }

    fn advance_to(&mut self, now_ms: u64) -> Result<(), BridgeError> {
        self.now_ms = now_ms;
        let result = self.host.handle_timeout(now_ms);
        self.pump();
        result
    }
}

/// Carries whatever `from` puts on air to `to`, as the simulated channel would.
fn air(from: &mut Station, to: &mut Station, rssi_dbm: i16, snr_db: f32) -> usize {
    let mut carried = 0;
    while let Some(frame) = from.device.poll_transmit() {
        to.device.handle_received(&frame, rssi_dbm, snr_db);
        from.device.handle_transmitted();
        carried += 1;
    }
    to.pump();
    carried
}

fn received_frames(events: &[BridgeEvent]) -> Vec<(Vec<u8>, Option<i16>, Option<f32>)> {
    events
        .iter()
        .filter_map(|event| match event {
            BridgeEvent::Received {
                frame,
                rssi_dbm,
                snr_db,
            } => Some((frame.clone(), *rssi_dbm, *snr_db)),
            _ => None,
        })
        .collect()
}

// ---- golden vectors: our encoding is the official client's ----

#[test]
fn golden_to_radio_control_messages() {
    let want_config = ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::WantConfigId(NONCE)),
    };
    assert_eq!(framed(&want_config), vector("to_radio_want_config"));
    assert_eq!(to_radio_vector("to_radio_want_config"), want_config);

    let heartbeat = ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Heartbeat(
            proto::Heartbeat::default(),
        )),
    };
    assert_eq!(framed(&heartbeat), vector("to_radio_heartbeat"));
    assert_eq!(to_radio_vector("to_radio_heartbeat"), heartbeat);

    let disconnect = ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Disconnect(true)),
    };
    assert_eq!(framed(&disconnect), vector("to_radio_disconnect"));
}

fn cairn_packet(id: u32, payload: &[u8]) -> ToRadio {
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Packet(MeshPacket {
            to: BROADCAST,
            channel: 0,
            id,
            hop_limit: 0,
            want_ack: false,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(private_app(payload))),
            ..Default::default()
        })),
    }
}

#[test]
fn golden_to_radio_private_app_packets() {
    assert_eq!(
        framed(&cairn_packet(PACKET_ID, FRAME)),
        vector("to_radio_private_app")
    );
    let max: Vec<u8> = (0..=230u8).collect();
    assert_eq!(max.len(), MAX_FRAME);
    assert_eq!(
        framed(&cairn_packet(0xFFFF_FFFE, &max)),
        vector("to_radio_private_app_max")
    );
    assert_eq!(
        to_radio_vector("to_radio_private_app"),
        cairn_packet(PACKET_ID, FRAME)
    );
}

#[test]
fn golden_host_writes_what_the_official_client_writes() {
    let mut station = Station::new(99, NODE);
    station.connect();
    station.host.send_frame(FRAME).expect("ready");
    let written = drain_serial(&mut station.host);
    let [mut message] = to_radios(&written).try_into().expect("one ToRadio");
    // Our id comes from the seed; the vector's is fixed. Everything else must match.
    let Some(to_radio::PayloadVariant::Packet(packet)) = &mut message.payload_variant else {
        panic!("a packet: {message:?}");
    };
    assert_ne!(
        packet.id, 0,
        "an id of our own, so the device's answers can name it"
    );
    packet.id = PACKET_ID;
    assert_eq!(framed(&message), vector("to_radio_private_app"));
    assert_eq!(written.len(), vector("to_radio_private_app").len());
}

#[test]
fn golden_host_handshake_bytes() {
    let mut host = MeshtasticHost::new(5);
    host.reset(0);
    let written = drain_serial(&mut host);
    // 32 wake bytes (START2, never a frame start), then want_config_id.
    assert_eq!(&written[..32], &[START2; 32]);
    let nonce = written_nonce(&written);
    let expected = framed(&ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::WantConfigId(nonce)),
    });
    assert_eq!(&written[32..], expected.as_slice());
}

#[test]
fn golden_from_radio_config_download() {
    let my_info = from_radio_vector("from_radio_my_info");
    let expected = FromRadio {
        id: 1,
        payload_variant: Some(from_radio::PayloadVariant::MyInfo(proto::MyNodeInfo {
            my_node_num: NODE,
            reboot_count: 7,
            min_app_version: 30_200,
            pio_env: "heltec-v3".to_owned(),
            nodedb_count: 12,
            device_id: Vec::new(),
        })),
    };
    assert_eq!(my_info, expected);
    assert_eq!(framed(&expected), vector("from_radio_my_info"));

    let metadata = FromRadio {
        id: 2,
        payload_variant: Some(from_radio::PayloadVariant::Metadata(
            proto::DeviceMetadata {
                firmware_version: "2.5.6.d55c08d".to_owned(),
                device_state_version: 23,
                can_shutdown: true,
                has_wifi: true,
                has_bluetooth: true,
                hw_model: 43, // HELTEC_V3
                has_pkc: true,
                ..Default::default()
            },
        )),
    };
    assert_eq!(from_radio_vector("from_radio_metadata"), metadata);
    assert_eq!(framed(&metadata), vector("from_radio_metadata"));

    let node_info = from_radio(from_radio::PayloadVariant::NodeInfo(proto::NodeInfo {
        num: NODE,
        user: Some(proto::User {
            id: "!1a2b3c4d".to_owned(),
            long_name: "Meshtastic 3c4d".to_owned(),
            short_name: "3c4d".to_owned(),
            hw_model: 43,
            ..Default::default()
        }),
        last_heard: 1_700_000_000,
        is_favorite: true,
        ..Default::default()
    }));
    assert_eq!(from_radio_vector("from_radio_node_info"), node_info);
    assert_eq!(framed(&node_info), vector("from_radio_node_info"));

    let channel = from_radio(from_radio::PayloadVariant::Channel(proto::Channel {
        index: 0,
        settings: Some(proto::ChannelSettings {
            psk: vec![1],
            ..Default::default()
        }),
        role: ChannelRole::Primary as i32,
    }));
    assert_eq!(from_radio_vector("from_radio_channel_primary"), channel);
    assert_eq!(framed(&channel), vector("from_radio_channel_primary"));

    let lora = from_radio(from_radio::PayloadVariant::Config(proto::Config {
        payload_variant: Some(config::PayloadVariant::Lora(proto::LoRaConfig {
            use_preset: true,
            modem_preset: ModemPreset::LongFast as i32,
            region: RegionCode::Eu868 as i32,
            hop_limit: 3,
            tx_enabled: true,
            tx_power: 27,
            config_ok_to_mqtt: true,
            ..Default::default()
        })),
    }));
    assert_eq!(from_radio_vector("from_radio_config_lora"), lora);
    assert_eq!(framed(&lora), vector("from_radio_config_lora"));

    let complete = FromRadio {
        id: 42,
        payload_variant: Some(from_radio::PayloadVariant::ConfigCompleteId(NONCE)),
    };
    assert_eq!(from_radio_vector("from_radio_config_complete"), complete);
    assert_eq!(framed(&complete), vector("from_radio_config_complete"));
}

#[test]
fn golden_what_we_do_not_model_decodes_as_nothing() {
    // A config section we do not model: the Config is there, its content is not.
    assert_eq!(
        from_radio_vector("from_radio_config_device"),
        from_radio(from_radio::PayloadVariant::Config(proto::Config {
            payload_variant: None
        }))
    );
    // A FromRadio kind we do not model.
    assert_eq!(
        from_radio_vector("from_radio_module_config"),
        FromRadio {
            id: 0,
            payload_variant: None
        }
    );
    // Unknown MeshPacket fields are skipped; the known ones are intact.
    let Some(from_radio::PayloadVariant::Packet(packet)) =
        from_radio_vector("from_radio_private_app_unknown_fields").payload_variant
    else {
        panic!("a packet");
    };
    assert_eq!(packet.from, PEER);
    assert_eq!(packet.id, 0xDEAD_BEF0);
    assert_eq!(packet.rx_snr, -7.5);
    assert_eq!(packet.rx_rssi, -120);
    assert_eq!(
        packet.payload_variant,
        Some(mesh_packet::PayloadVariant::Decoded(proto::Data {
            dest: 0x0102_0304,
            reply_id: 9,
            emoji: 1,
            ..private_app(b"x")
        }))
    );
}

#[test]
fn golden_from_radio_packets() {
    let heard = from_radio(from_radio::PayloadVariant::Packet(MeshPacket {
        from: PEER,
        to: BROADCAST,
        id: 0xDEAD_BEEF,
        rx_time: 1_700_000_123,
        rx_snr: 6.25,
        rx_rssi: -97,
        payload_variant: Some(mesh_packet::PayloadVariant::Decoded(proto::Data {
            bitfield: Some(0),
            ..private_app(FRAME)
        })),
        transport_mechanism: TransportMechanism::Lora as i32,
        relay_node: 0x88,
        ..Default::default()
    }));
    assert_eq!(from_radio_vector("from_radio_private_app"), heard);
    assert_eq!(framed(&heard), vector("from_radio_private_app"));

    let encrypted = from_radio(from_radio::PayloadVariant::Packet(MeshPacket {
        from: PEER,
        to: BROADCAST,
        id: 0xDEAD_BEF2,
        channel: 8,
        payload_variant: Some(mesh_packet::PayloadVariant::Encrypted(vec![
            0x8f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78,
        ])),
        ..Default::default()
    }));
    assert_eq!(framed(&encrypted), vector("from_radio_encrypted"));

    let nak = from_radio(from_radio::PayloadVariant::Packet(MeshPacket {
        from: NODE,
        to: NODE,
        id: 0x00C0_FFEE,
        priority: Priority::Ack as i32,
        payload_variant: Some(mesh_packet::PayloadVariant::Decoded(proto::Data {
            portnum: PortNum::RoutingApp as i32,
            payload: proto::Routing {
                variant: Some(routing::Variant::ErrorReason(RoutingError::TooLarge as i32)),
            }
            .encode_to_vec(),
            request_id: PACKET_ID,
            ..Default::default()
        })),
        ..Default::default()
    }));
    assert_eq!(framed(&nak), vector("from_radio_routing_nak"));

    let queue_status = from_radio(from_radio::PayloadVariant::QueueStatus(
        proto::QueueStatus {
            res: 0,
            free: 15,
            maxlen: 16,
            mesh_packet_id: PACKET_ID,
        },
    ));
    assert_eq!(framed(&queue_status), vector("from_radio_queue_status"));

    let log = from_radio(from_radio::PayloadVariant::LogRecord(proto::LogRecord {
        message: "Radio TX failed".to_owned(),
        time: 1_700_000_200,
        source: "RadioIf".to_owned(),
        level: LogLevel::Error as i32,
    }));
    assert_eq!(framed(&log), vector("from_radio_log_record"));

    let notification = from_radio(from_radio::PayloadVariant::ClientNotification(
        proto::ClientNotification {
            reply_id: Some(PACKET_ID),
            time: 0,
            level: LogLevel::Warning as i32,
            message: "Duty cycle limit exceeded. You can send again in 5 mins".to_owned(),
        },
    ));
    assert_eq!(
        framed(&notification),
        vector("from_radio_client_notification")
    );

    let rebooted = from_radio(from_radio::PayloadVariant::Rebooted(true));
    assert_eq!(framed(&rebooted), vector("from_radio_rebooted"));
}

#[test]
fn golden_on_air_size_matches_the_firmware_encoding() {
    for (size, name) in [(231, "data_on_air_231"), (232, "data_on_air_232")] {
        let data = proto::Data {
            bitfield: Some(0),
            ..private_app(&vec![0; size])
        };
        let python = vector(name);
        assert_eq!(data.encode_to_vec(), python);
        assert_eq!(on_air_len(size), 16 + python.len());
    }
    assert!(on_air_len(MAX_FRAME) <= MAX_LORA_PACKET_LEN);
    assert!(on_air_len(MAX_FRAME + 1) > MAX_LORA_PACKET_LEN);
}

// ---- the host reading what a real device writes ----

#[test]
fn host_becomes_ready_on_a_python_made_config_download() {
    let (host, events) = host_configured_from_python_bytes();
    assert!(host.is_ready());
    assert_eq!(host.node_num(), Some(NODE));
    let [BridgeEvent::Ready(info)] = events.as_slice() else {
        panic!("exactly one Ready: {events:?}");
    };
    assert_eq!(info.firmware, "Meshtastic 2.5.6.d55c08d");
    assert_eq!(info.lora, None, "the firmware chose the parameters");
    assert_eq!(info.max_frame, MAX_FRAME);
    let detail = |name: &str| {
        info.details
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(detail("node"), Some("!1a2b3c4d"));
    assert_eq!(detail("name"), Some("Meshtastic 3c4d (3c4d)"));
    assert_eq!(detail("board"), Some("heltec-v3"));
    assert_eq!(detail("region"), Some("Eu868"));
    assert_eq!(detail("modem preset"), Some("LongFast"));
    assert_eq!(detail("transmit"), Some("on"));
    assert_eq!(
        detail("channel"),
        Some("(preset name), a well-known default key")
    );
    assert!(detail("on-air overhead").is_some());
    assert_eq!(host.medium(), Medium::Radio(None));
    assert_eq!(host.kind(), RadioKind::Meshtastic);
}

#[test]
fn host_reports_private_app_frames_and_skips_the_rest() {
    let (mut host, _) = host_configured_from_python_bytes();
    for name in [
        "from_radio_private_app",
        "from_radio_text_message",
        "from_radio_encrypted",
        "from_radio_own_private_app",
        "from_radio_private_app_unknown_fields",
    ] {
        host.handle_serial(20, &vector(name));
    }
    let events = drain_events(&mut host);
    assert_eq!(
        received_frames(&events),
        vec![
            (FRAME.to_vec(), Some(-97), Some(6.25)),
            (b"x".to_vec(), Some(-120), Some(-7.5)),
        ]
    );
    assert_eq!(events.len(), 2, "nothing else: {events:?}");
    let stats = host.stats();
    assert_eq!(stats.frames_received, 2);
    assert_eq!(stats.other_ports_ignored, 1);
    assert_eq!(stats.encrypted_ignored, 1);
    assert_eq!(stats.own_packets_ignored, 1);
}

#[test]
fn host_warns_about_what_the_device_refused_or_complained_about() {
    let (mut host, _) = host_configured_from_python_bytes();
    host.handle_serial(20, &vector("from_radio_routing_nak"));
    host.handle_serial(20, &vector("from_radio_log_record"));
    host.handle_serial(20, &vector("from_radio_client_notification"));
    host.handle_serial(20, &vector("from_radio_queue_status"));
    let events = drain_events(&mut host);
    let warnings = warnings(&events);
    assert_eq!(warnings.len(), 3, "{events:?}");
    assert!(warnings[0].contains("0x0a0b0c0d") && warnings[0].contains("TooLarge"));
    assert!(warnings[1].contains("Radio TX failed"));
    assert!(warnings[2].contains("Duty cycle limit exceeded"));
    assert_eq!(events.last(), Some(&BridgeEvent::TxReady));
    assert_eq!(host.stats().refused_by_device, 1);
}

#[test]
fn host_configures_again_after_the_device_rebooted() {
    let (mut host, _) = host_configured_from_python_bytes();
    drain_serial(&mut host);
    host.handle_serial(30, b"INFO  | 00:00:01 Booting\r\n");
    host.handle_serial(30, &vector("from_radio_rebooted"));
    assert!(!host.is_ready());
    assert_eq!(host.send_frame(b"x"), Err(BridgeError::NotReady));
    let written = drain_serial(&mut host);
    let nonce = written_nonce(&written);
    host.handle_serial(
        31,
        &framed(&from_radio(from_radio::PayloadVariant::ConfigCompleteId(
            nonce,
        ))),
    );
    assert!(host.is_ready());
    let events = drain_events(&mut host);
    assert!(warnings(&events)[0].contains("rebooted"));
    assert!(matches!(events.last(), Some(BridgeEvent::Ready(_))));
}

#[test]
fn host_ignores_a_config_complete_for_another_nonce() {
    let mut host = MeshtasticHost::new(3);
    host.reset(0);
    let nonce = written_nonce(&drain_serial(&mut host));
    host.handle_serial(
        1,
        &framed(&from_radio(from_radio::PayloadVariant::ConfigCompleteId(
            nonce.wrapping_add(1),
        ))),
    );
    assert!(!host.is_ready());
    assert_eq!(host.poll_event(), None);
}

// ---- framing: garbage, resynchronisation, bounds ----

#[test]
fn decoder_finds_frames_between_log_text_and_noise() {
    let mut line = b"DEBUG | ??:??:?? 2 [Router] Rx: 0x94 is not a header\r\n".to_vec();
    line.extend(vector("from_radio_my_info"));
    line.extend([0x94, 0x00, 0xC3, 0xFF, 0x94]);
    line.extend(vector("from_radio_private_app"));
    line.extend(b"trailing text");
    let frames: Vec<_> = decode_all(&line).into_iter().collect();
    assert_eq!(
        frames,
        vec![
            Ok(body(&vector("from_radio_my_info")).to_vec()),
            Ok(body(&vector("from_radio_private_app")).to_vec()),
        ]
    );
}

#[test]
fn decoder_refuses_an_oversize_length_and_keeps_the_next_frame() {
    let mut line = vec![START1, START2, 0x02, 0x01]; // 513
    line.extend([0xAA; 40]);
    line.extend(vector("from_radio_config_complete"));
    assert_eq!(
        decode_all(&line),
        vec![
            Err(FramingError::TooLong {
                len: 513,
                max: MAX_PROTOBUF_LEN
            }),
            Ok(body(&vector("from_radio_config_complete")).to_vec()),
        ]
    );
    let mut line = vec![START1, START2, 0xFF, 0xFF];
    line.extend(vector("from_radio_rebooted"));
    assert_eq!(decode_all(&line).len(), 2);
}

#[test]
fn decoder_memory_does_not_follow_garbage() {
    let mut decoder = Decoder::new();
    for _ in 0..1_000 {
        decoder.push(&[0x41; 1_000]);
        assert_eq!(decoder.next_frame(), None);
    }
    assert_eq!(decoder.skipped_bytes(), 1_000_000);
    decoder.push(&vector("from_radio_rebooted"));
    assert_eq!(
        decoder.next_frame(),
        Some(Ok(body(&vector("from_radio_rebooted")).to_vec()))
    );
}

#[test]
fn host_survives_a_garbled_line_and_reads_the_next_frame() {
    let (mut host, _) = host_configured_from_python_bytes();
    let mut line = vec![START1, START2, 0x00, 0x03, 0xFF, 0xFF, 0xFF]; // not a protobuf
    line.extend([START1, START2, 0x7F, 0xFF]); // length 32767
    line.extend(vector("from_radio_private_app"));
    host.handle_serial(40, &line);
    let events = drain_events(&mut host);
    assert_eq!(warnings(&events).len(), 2, "{events:?}");
    assert_eq!(received_frames(&events).len(), 1);
    assert_eq!(host.stats().undecodable, 1);
    assert_eq!(host.stats().framing_errors, 1);
}

// ---- host and virtual device end to end ----

#[test]
fn host_and_device_handshake() {
    let mut station = Station::new(11, NODE);
    assert!(!station.host.is_ready());
    assert_eq!(
        station.host.send_frame(b"early"),
        Err(BridgeError::NotReady)
    );
    let info = station.connect();
    assert!(station.host.is_ready());
    assert!(station.device.is_client_connected());
    assert_eq!(info.firmware, "Meshtastic 2.5.0-virtual");
    assert_eq!(info.max_frame, MAX_FRAME);
    assert_eq!(info.lora, None);
    assert_eq!(station.host.node_num(), Some(NODE));
    assert_eq!(station.device.lora_params(), Some(long_fast_eu868()));
    assert_eq!(station.device.max_frame(), MAX_FRAME);
    let params = long_fast_eu868();
    assert_eq!(
        (
            params.spreading_factor,
            params.bandwidth_hz,
            params.coding_rate
        ),
        (11, 250_000, 5)
    );
}

#[test]
fn frames_cross_between_two_stations_intact() {
    let mut alice = Station::new(21, 0xA11C_E000);
    let mut bob = Station::new(22, 0x0B0B_0000);
    alice.connect();
    bob.connect();

    let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 7) as u8).collect();
    for frame in [FRAME.to_vec(), Vec::new(), big.clone()] {
        alice
            .host
            .send_frame(&frame)
            .expect("ready and small enough");
        alice.pump();
        assert_eq!(air(&mut alice, &mut bob, -91, 7.5), 1);
        let events = drain_events(&mut bob.host);
        assert_eq!(
            received_frames(&events),
            vec![(frame.clone(), Some(-91), Some(7.5))]
        );
    }
    bob.host.send_frame(b"and back").expect("ready");
    bob.pump();
    assert_eq!(air(&mut bob, &mut alice, -120, -12.25), 1);
    let events = drain_events(&mut alice.host);
    assert_eq!(
        received_frames(&events),
        vec![(b"and back".to_vec(), Some(-120), Some(-12.25))]
    );
    assert_eq!(alice.host.stats().frames_sent, 3);
    assert_eq!(bob.host.stats().frames_received, 3);
}

#[test]
fn device_puts_one_frame_on_air_at_a_time_and_the_host_hears_tx_ready() {
    let mut station = Station::new(31, NODE);
    station.connect();
    for i in 0..3u8 {
        station.host.send_frame(&[i]).expect("ready");
    }
    station.pump();
    let events = drain_events(&mut station.host);
    assert_eq!(
        events,
        vec![BridgeEvent::TxReady; 3],
        "a queue status per frame"
    );
    assert_eq!(station.device.poll_transmit(), Some(vec![0]));
    assert_eq!(station.device.poll_transmit(), None, "still on air");
    station.device.handle_transmitted();
    assert_eq!(station.device.poll_transmit(), Some(vec![1]));
    station.device.handle_transmitted();
    assert_eq!(station.device.poll_transmit(), Some(vec![2]));
}

#[test]
fn host_refuses_frames_larger_than_a_current_device_sends() {
    let mut station = Station::new(41, NODE);
    station.connect();
    assert_eq!(station.host.max_frame(), MAX_FRAME);
    assert_eq!(
        station.host.send_frame(&[0; MAX_FRAME + 1]),
        Err(BridgeError::FrameTooLarge {
            len: MAX_FRAME + 1,
            max: MAX_FRAME
        })
    );
    assert!(station.host.poll_serial().is_none());
}

#[test]
fn device_naks_what_would_not_fit_and_the_host_says_so() {
    // A client that trusts DATA_PAYLOAD_LEN (233), as Meshtastic's own clients do.
    let mut station = Station::new(42, NODE);
    station.connect();
    station
        .device
        .handle_host(0, &framed(&cairn_packet(PACKET_ID, &[0; 233])));
    station.pump();
    assert_eq!(station.device.poll_transmit(), None);
    assert_eq!(station.device.stats().too_large, 1);
    let events = drain_events(&mut station.host);
    let warnings = warnings(&events);
    assert_eq!(
        warnings.len(),
        2,
        "queue status error and routing nak: {events:?}"
    );
    assert!(warnings.iter().all(|text| text.contains("0x0a0b0c0d")));
    assert_eq!(station.host.stats().refused_by_device, 2);
}

#[test]
fn device_drops_a_packet_id_it_took_recently() {
    let mut device = MeshtasticDevice::new(NODE);
    let packet = framed(&cairn_packet(PACKET_ID, b"once"));
    device.handle_host(0, &packet);
    device.handle_host(0, &packet);
    assert_eq!(device.poll_transmit(), Some(b"once".to_vec()));
    device.handle_transmitted();
    assert_eq!(device.poll_transmit(), None);
    assert_eq!(device.stats().duplicate_ids, 1);
}

#[test]
fn host_ids_do_not_repeat_so_the_device_drops_none() {
    let mut station = Station::new(43, NODE);
    station.connect();
    for i in 0..100u8 {
        station.host.send_frame(&[i]).expect("ready");
        station.pump();
        assert_eq!(station.device.poll_transmit(), Some(vec![i]));
        station.device.handle_transmitted();
    }
    assert_eq!(station.device.stats().duplicate_ids, 0);
    // Another host with another seed starts elsewhere in the id space.
    let ids = |seed| {
        let mut station = Station::new(seed, NODE);
        station.connect();
        station.host.send_frame(b"x").expect("ready");
        match to_radios(&drain_serial(&mut station.host))[0].payload_variant {
            Some(to_radio::PayloadVariant::Packet(ref packet)) => packet.id,
            _ => panic!("a packet"),
        }
    };
    assert_ne!(ids(1), ids(2));
}

#[test]
fn host_reports_no_answer_after_its_retries() {
    let mut host = MeshtasticHost::new(51);
    host.reset(1_000);
    let mut want_configs = to_radios(&drain_serial(&mut host)).len();
    let mut result = Ok(());
    while let Some(deadline) = host.poll_timeout() {
        result = host.handle_timeout(deadline);
        want_configs += to_radios(&drain_serial(&mut host)).len();
        if result.is_err() {
            break;
        }
    }
    let config = HostConfig::new(51);
    assert_eq!(
        result,
        Err(BridgeError::NoAnswer {
            kind: RadioKind::Meshtastic,
            waited_ms: config.handshake_timeout_ms * u64::from(config.handshake_attempts),
        })
    );
    assert_eq!(want_configs, config.handshake_attempts as usize);
    assert_eq!(host.poll_timeout(), None, "gave up: no more deadlines");
    assert!(!host.is_ready());
}

#[test]
fn a_late_answer_to_an_earlier_attempt_still_completes_the_handshake() {
    let mut station = Station::new(52, NODE);
    station.host.reset(0);
    let first = drain_serial(&mut station.host); // lost: the device was still booting
    let deadline = station.host.poll_timeout().expect("a deadline");
    station
        .host
        .handle_timeout(deadline)
        .expect("a retry, not yet a failure");
    let second = drain_serial(&mut station.host);
    assert_eq!(written_nonce(&first), written_nonce(&second), "same nonce");
    station.device.handle_host(deadline, &first);
    station.pump();
    assert!(station.host.is_ready());
}

#[test]
fn a_slow_config_download_is_not_cut_off() {
    let mut station = Station::new(53, NODE);
    station.host.reset(0);
    let request = drain_serial(&mut station.host);
    station.device.handle_host(0, &request);
    // The device sends one message every 4 s: slower in total than one attempt's 5 s.
    let mut now = 0;
    while let Some(bytes) = station.device.poll_host() {
        now += 4_000;
        station.host.handle_timeout(now).expect("still talking");
        station.host.handle_serial(now, &bytes);
    }
    assert!(station.host.is_ready());
    let retries = to_radios(&drain_serial(&mut station.host));
    assert!(
        retries.is_empty(),
        "no retry while the download flowed: {retries:?}"
    );
}

#[test]
fn host_sends_heartbeats_every_five_minutes() {
    let mut station = Station::new(61, NODE);
    station.connect();
    let start = station.now_ms;
    assert_eq!(station.host.poll_timeout(), Some(start + 300_000));
    station.advance_to(start + 299_999).expect("nothing due");
    assert_eq!(station.host.stats().heartbeats_sent, 0);
    station
        .host
        .handle_timeout(start + 300_000)
        .expect("heartbeat");
    let written = drain_serial(&mut station.host);
    assert_eq!(written, vector("to_radio_heartbeat"));
    station.device.handle_host(start + 300_000, &written);
    station.pump();
    // The device answers a heartbeat with its queue status.
    assert_eq!(drain_events(&mut station.host), vec![BridgeEvent::TxReady]);
    assert_eq!(station.host.poll_timeout(), Some(start + 600_000));
    assert!(station.host.is_ready());
}

#[test]
fn device_reboot_is_followed_by_a_new_handshake() {
    let mut station = Station::new(62, NODE);
    station.connect();
    station.device.reboot();
    assert!(!station.device.is_client_connected());
    station.pump();
    assert!(station.host.is_ready(), "configured again");
    assert!(station.device.is_client_connected());
    let events = drain_events(&mut station.host);
    assert!(warnings(&events)[0].contains("rebooted"));
    assert!(matches!(events.last(), Some(BridgeEvent::Ready(_))));
    assert!(station.host.stats().skipped_bytes > 0, "the boot text");
}

#[test]
fn frames_heard_before_a_client_connected_wait_for_it() {
    let mut station = Station::new(63, NODE);
    for i in 0..40u8 {
        station.device.handle_received(&[i], -100, 1.0);
    }
    assert_eq!(station.device.poll_host(), None, "no client yet");
    station.host.reset(0);
    station.pump();
    let events = drain_events(&mut station.host);
    assert!(matches!(events[0], BridgeEvent::Ready(_)));
    let frames = received_frames(&events);
    assert_eq!(frames.len(), 32, "the firmware's queue holds 32");
    assert_eq!(frames[0].0, vec![0]);
    assert_eq!(station.device.stats().dropped, 8);
}

#[test]
fn a_device_without_a_region_is_off_and_the_host_says_so() {
    let mut station = Station::with_device(
        71,
        DeviceConfig {
            radio: None,
            ..DeviceConfig::new(NODE)
        },
    );
    station.host.reset(0);
    station.pump();
    assert!(station.host.is_ready());
    let events = drain_events(&mut station.host);
    assert!(warnings(&events)[0].contains("no LoRa region"));
    assert_eq!(station.device.lora_params(), None);
    station.host.send_frame(b"lost").expect("ready");
    station.pump();
    assert_eq!(station.device.poll_transmit(), None);
    let events = drain_events(&mut station.host);
    assert_eq!(warnings(&events).len(), 1, "{events:?}");
}

#[test]
fn heard_frames_name_the_configured_sender() {
    let mut station = Station::with_device(
        72,
        DeviceConfig {
            heard_from: PEER,
            ..DeviceConfig::new(NODE)
        },
    );
    station.connect();
    station.device.handle_received(b"hi", -60, 9.0);
    let bytes = station.device.poll_host().expect("a packet for the client");
    let frame = single_frame(&bytes);
    let Some(from_radio::PayloadVariant::Packet(packet)) = FromRadio::decode(frame.as_slice())
        .expect("FromRadio")
        .payload_variant
    else {
        panic!("a packet");
    };
    assert_eq!((packet.from, packet.to), (PEER, BROADCAST));
    assert_eq!((packet.rx_rssi, packet.rx_snr), (-60, 9.0));
    assert_eq!(DeviceConfig::new(NODE).heard_from, UNKNOWN_SENDER);
    assert_ne!(DeviceConfig::new(UNKNOWN_SENDER).heard_from, UNKNOWN_SENDER);
}

#[test]
fn host_disconnect_tells_the_device() {
    let mut station = Station::new(73, NODE);
    station.connect();
    station.host.disconnect();
    assert!(!station.host.is_ready());
    assert_eq!(station.host.poll_timeout(), None);
    let written = drain_serial(&mut station.host);
    assert_eq!(written, vector("to_radio_disconnect"));
    station.device.handle_host(0, &written);
    assert!(!station.device.is_client_connected());
}

// ---- properties ----

fn split_at_cuts(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(bytes[start..cut].to_vec());
        start = cut;
    }
    chunks.push(bytes[start..].to_vec());
    chunks
}

proptest! {
    #[test]
    fn random_bytes_never_panic_and_frames_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut decoder = Decoder::new();
        let mut host = MeshtasticHost::new(1);
        host.reset(0);
        let mut device = MeshtasticDevice::new(NODE);
        for chunk in split_at_cuts(&bytes, &cuts) {
            decoder.push(&chunk);
            while let Some(result) = decoder.next_frame() {
                if let Ok(frame) = result {
                    prop_assert!(frame.len() <= MAX_PROTOBUF_LEN);
                }
            }
            host.handle_serial(0, &chunk);
            device.handle_host(0, &chunk);
        }
        while host.poll_event().is_some() {}
        while device.poll_host().is_some() {}
        let _ = host.handle_timeout(u64::MAX);
    }

    #[test]
    fn any_protobuf_round_trips_through_the_framing_after_text(
        frames in prop::collection::vec(
            prop::collection::vec(any::<u8>(), 0..=MAX_PROTOBUF_LEN),
            0..6,
        ),
        text in "[ -~\r\n]{0,80}",
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut line = text.into_bytes();
        for frame in &frames {
            line.extend(encode_frame(frame).expect("within the limit"));
        }
        let mut decoder = Decoder::new();
        let mut decoded = Vec::new();
        for chunk in split_at_cuts(&line, &cuts) {
            decoder.push(&chunk);
            decoded.extend(std::iter::from_fn(|| decoder.next_frame()));
        }
        let expected: Vec<_> = frames.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn any_frame_crosses_host_device_air_device_host(
        frame in prop::collection::vec(any::<u8>(), 0..=MAX_FRAME),
        rssi in -140i16..-20,
        snr in -20.0f32..15.0,
        seed in any::<u64>(),
    ) {
        // RSSI is never 0 on a real reception (0 means "not from the radio").
        let mut alice = Station::new(seed, 0xA11C_E000);
        let mut bob = Station::new(seed.wrapping_add(1), 0x0B0B_0000);
        alice.connect();
        bob.connect();
        alice.host.send_frame(&frame).expect("ready and small enough");
        alice.pump();
        prop_assert_eq!(air(&mut alice, &mut bob, rssi, snr), 1);
        let events = drain_events(&mut bob.host);
        prop_assert_eq!(received_frames(&events), vec![(frame, Some(rssi), Some(snr))]);
    }

    #[test]
    fn any_heard_packet_round_trips_through_from_radio(
        from in any::<u32>(),
        id in any::<u32>(),
        rx_rssi in any::<i32>(),
        rx_snr in any::<f32>().prop_filter("NaN is not equal to itself", |snr| !snr.is_nan()),
        payload in prop::collection::vec(any::<u8>(), 0..=MAX_FRAME),
        bitfield in proptest::option::of(any::<u32>()),
    ) {
        let message = from_radio(from_radio::PayloadVariant::Packet(MeshPacket {
            from,
            to: BROADCAST,
            id,
            rx_rssi,
            rx_snr,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(proto::Data {
                bitfield,
                ..private_app(&payload)
            })),
            ..Default::default()
        }));
        let bytes = framed(&message);
        let frame = single_frame(&bytes);
        prop_assert_eq!(FromRadio::decode(frame.as_slice()).expect("decodes"), message);
    }
}
