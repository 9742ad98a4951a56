//! The RNode host and the plain KISS TNC against what a user of a radio cares about: the
//! host configures the radio exactly as asked or says plainly which value the radio refused,
//! a silent port is reported as such, frames heard on air arrive with their signal figures,
//! frames sent are paced by the firmware's flow control, and nothing the device (or noise)
//! says makes the host panic.
//!
//! The device side here is written from RNode_Firmware's source (`serial_callback` in
//! RNode_Firmware.ino and the `kiss_indicate_*` functions in Utilities.h): the bytes it sends
//! are the bytes real firmware sends.

use cairn_firmware_bridge::kiss::{self, Decoder, Frame};
use cairn_firmware_bridge::rnode::{KissTnc, KissTncConfig, RnodeConfig, RnodeHost};
use cairn_firmware_bridge::{BridgeError, BridgeEvent, Firmware, LoraParams, Medium, RadioKind};
use proptest::prelude::*;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("test vectors are hex"))
        .collect()
}

fn events(host: &mut impl Firmware) -> Vec<BridgeEvent> {
    std::iter::from_fn(|| host.poll_event()).collect()
}

fn written(host: &mut impl Firmware) -> String {
    hex(&host.poll_serial().unwrap_or_default())
}

/// An RNode as its firmware answers the serial port, with the clamps real radios apply.
#[derive(Debug)]
struct FirmwareModel {
    decoder: Decoder,
    /// Highest TX power the modem takes (17 on SX127x, 22 on SX1262).
    max_tx_power: u8,
    /// Whether the radio starts when asked (false: locked or unprovisioned).
    radio_starts: bool,
    /// Whether the radio hardware initialises (false: error 0x01).
    radio_initialises: bool,
    frequency: u32,
    bandwidth: u32,
    tx_power: u8,
    spreading_factor: u8,
    coding_rate: u8,
    online: bool,
    /// Data frames the host asked to transmit.
    transmitted: Vec<Vec<u8>>,
}

impl Default for FirmwareModel {
    fn default() -> Self {
        Self {
            decoder: Decoder::default(),
            max_tx_power: 17,
            radio_starts: true,
            radio_initialises: true,
            frequency: 0,
            bandwidth: 0,
            tx_power: 0xFF,
            spreading_factor: 0,
            coding_rate: 5,
            online: false,
            transmitted: Vec::new(),
        }
    }
}

impl FirmwareModel {
    fn answer(&mut self, from_host: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.decoder.push(from_host);
        while let Some(Ok(frame)) = self.decoder.next_frame() {
            let reply = |command: u8, value: Vec<u8>| kiss::encode(&Frame::new(command, value));
            let byte = frame.payload.first().copied().unwrap_or(0);
            let word = |payload: &[u8]| -> u32 {
                payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match frame.type_byte {
                0x00 => self.transmitted.push(frame.payload.clone()),
                0x01 => {
                    self.frequency = word(&frame.payload);
                    out.extend(reply(0x01, self.frequency.to_be_bytes().to_vec()));
                }
                0x02 => {
                    self.bandwidth = word(&frame.payload);
                    out.extend(reply(0x02, self.bandwidth.to_be_bytes().to_vec()));
                }
                0x03 => {
                    if byte != 0xFF {
                        self.tx_power = byte.min(self.max_tx_power);
                    }
                    out.extend(reply(0x03, vec![self.tx_power]));
                }
                0x04 => {
                    if byte != 0xFF {
                        self.spreading_factor = byte.clamp(5, 12);
                    }
                    out.extend(reply(0x04, vec![self.spreading_factor]));
                }
                0x05 => {
                    if byte != 0xFF {
                        self.coding_rate = byte.clamp(5, 8);
                    }
                    out.extend(reply(0x05, vec![self.coding_rate]));
                }
                0x06 => {
                    if byte == 0x01 {
                        // startRadio(): reports its state itself, then serial_callback again.
                        if !self.radio_initialises {
                            out.extend(reply(0x90, vec![0x01]));
                        } else if self.radio_starts {
                            self.online = true;
                            out.extend(reply(0x06, vec![0x01]));
                        } else {
                            out.extend(reply(0x06, vec![0x00]));
                        }
                    } else if byte == 0x00 {
                        self.online = false;
                    }
                    out.extend(reply(0x06, vec![u8::from(self.online)]));
                }
                0x08 if byte == 0x73 => out.extend(reply(0x08, vec![0x46])),
                0x50 => out.extend(reply(0x50, vec![0x01, 0x52])),
                0x48 => out.extend(reply(0x48, vec![0x80])),
                0x49 => out.extend(reply(0x49, vec![0x81])),
                0x47 => out.extend(reply(0x47, vec![0x3A])),
                _ => {}
            }
        }
        out
    }
}

/// Runs host and device against each other until neither has anything to say.
fn converse(host: &mut RnodeHost, device: &mut FirmwareModel, now_ms: u64) {
    for _ in 0..64 {
        let Some(bytes) = host.poll_serial() else {
            return;
        };
        let answer = device.answer(&bytes);
        host.handle_serial(now_ms, &answer);
    }
    panic!("host and device never went quiet");
}

fn ready_host(params: LoraParams, config: RnodeConfig) -> (RnodeHost, FirmwareModel) {
    let mut host = RnodeHost::new(params, config);
    let mut device = FirmwareModel::default();
    host.reset(0);
    converse(&mut host, &mut device, 10);
    assert!(host.is_ready(), "{:?}", events(&mut host));
    let events = events(&mut host);
    assert!(
        matches!(events.as_slice(), [BridgeEvent::Ready(_)]),
        "{events:?}"
    );
    (host, device)
}

fn expect_failure(host: &mut RnodeHost) -> BridgeError {
    let due = host.poll_timeout().expect("a failure is due");
    match host.handle_timeout(due) {
        Err(error) => error,
        Ok(()) => panic!("expected the handshake to fail"),
    }
}

// ---- the handshake, byte for byte ----

#[test]
fn golden_handshake_bytes() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    assert_eq!(host.kind(), RadioKind::Rnode);
    assert_eq!(host.medium(), Medium::Radio(Some(LoraParams::sf7())));
    assert!(!host.is_ready());
    host.reset(0);
    // DETECT 0x73, then firmware version, platform, MCU and board requests.
    assert_eq!(
        written(&mut host),
        "c0 08 73 c0 c0 50 00 c0 c0 48 00 c0 c0 49 00 c0 c0 47 00 c0"
    );

    // The firmware answers each in turn (kiss_indicate_detect, _version 1.82, _platform
    // ESP32, _mcu ESP32, _board).
    host.handle_serial(
        20,
        &unhex("c0 08 46 c0 c0 50 01 52 c0 c0 48 80 c0 c0 49 81 c0 c0 47 3a c0"),
    );
    // Frequency 868.1 MHz = 0x33BE27A0.
    assert_eq!(written(&mut host), "c0 01 33 be 27 a0 c0");
    host.handle_serial(21, &unhex("c0 01 33 be 27 a0 c0"));
    // Bandwidth 125 kHz = 0x0001E848.
    assert_eq!(written(&mut host), "c0 02 00 01 e8 48 c0");
    host.handle_serial(22, &unhex("c0 02 00 01 e8 48 c0"));
    assert_eq!(written(&mut host), "c0 03 0e c0", "TX power 14 dBm");
    host.handle_serial(23, &unhex("c0 03 0e c0"));
    assert_eq!(written(&mut host), "c0 04 07 c0", "spreading factor 7");
    host.handle_serial(24, &unhex("c0 04 07 c0"));
    assert_eq!(written(&mut host), "c0 05 05 c0", "coding rate 4/5");
    host.handle_serial(25, &unhex("c0 05 05 c0"));
    assert_eq!(written(&mut host), "c0 06 01 c0", "radio on");
    assert!(!host.is_ready());
    // startRadio() reports the state, and serial_callback reports it again.
    host.handle_serial(26, &unhex("c0 06 01 c0 c0 06 01 c0"));
    assert!(host.is_ready());
    assert_eq!(host.poll_serial(), None);

    let events = events(&mut host);
    let [BridgeEvent::Ready(info)] = events.as_slice() else {
        panic!("expected exactly Ready, got {events:?}");
    };
    assert_eq!(info.firmware, "RNode 1.82");
    assert_eq!(info.lora, Some(LoraParams::sf7()));
    assert_eq!(info.max_frame, 254);
    assert!(info
        .details
        .contains(&("platform".to_owned(), "ESP32".to_owned())));
    assert!(info
        .details
        .contains(&("mcu".to_owned(), "ESP32".to_owned())));
    assert!(info
        .details
        .contains(&("board".to_owned(), "0x3a".to_owned())));
    assert_eq!(host.firmware_version(), Some((1, 82)));
}

#[test]
fn boot_banner_and_reset_notice_before_the_answer_are_harmless() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    let mut device = FirmwareModel::default();
    host.reset(0);
    // An ESP32 that rebooted when the port opened: ROM banner, then kiss_indicate_reset().
    host.handle_serial(
        300,
        b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13\r\n",
    );
    host.handle_serial(900, &unhex("c0 55 f8 c0"));
    assert!(!host.is_ready());
    converse(&mut host, &mut device, 1000);
    assert!(host.is_ready());
    assert_eq!(device.frequency, 868_100_000);
    assert_eq!(device.bandwidth, 125_000);
    assert_eq!(device.tx_power, 14);
    assert_eq!(device.spreading_factor, 7);
    assert_eq!(device.coding_rate, 5);
    assert!(device.online);
}

#[test]
fn a_silent_port_is_retried_then_reported() {
    let config = RnodeConfig::default();
    let mut host = RnodeHost::new(LoraParams::sf7(), config);
    host.reset(1_000);
    let burst = written(&mut host);
    assert_eq!(host.poll_timeout(), Some(1_500));
    assert_eq!(host.handle_timeout(1_500), Ok(()));
    assert_eq!(written(&mut host), burst, "the detect burst is repeated");
    let mut now = 1_500;
    loop {
        let due = host.poll_timeout().expect("waiting for an answer");
        assert!(due > now, "deadlines move forward");
        now = due;
        match host.handle_timeout(now) {
            Ok(()) => assert_eq!(written(&mut host), burst),
            Err(error) => {
                assert_eq!(
                    error,
                    BridgeError::NoAnswer {
                        kind: RadioKind::Rnode,
                        waited_ms: config.detect_timeout_ms
                    }
                );
                assert!(error.to_string().contains("wrong port"), "{error}");
                break;
            }
        }
    }
    assert_eq!(now, 6_000);
    assert_eq!(host.poll_timeout(), None);
    assert_eq!(host.send_frame(b"x"), Err(BridgeError::NotReady));
}

#[test]
fn tx_power_the_radio_cannot_do_is_refused_by_name() {
    let params = LoraParams {
        tx_power_dbm: 20,
        ..LoraParams::sf7()
    };
    let mut host = RnodeHost::new(params, RnodeConfig::default());
    let mut device = FirmwareModel::default(); // an SX127x: 17 dBm at most
    host.reset(0);
    converse(&mut host, &mut device, 5);
    assert!(!host.is_ready());
    let BridgeError::Device(text) = expect_failure(&mut host) else {
        panic!("expected a device error");
    };
    assert!(text.contains("TX power"), "{text}");
    assert!(text.contains("17 dBm"), "{text}");
    assert!(text.contains("20 dBm"), "{text}");
    assert!(
        !device.online,
        "the radio must not be turned on with the wrong power"
    );
}

#[test]
fn spreading_factor_out_of_range_is_refused_by_name() {
    let params = LoraParams {
        spreading_factor: 13,
        ..LoraParams::sf7()
    };
    let mut host = RnodeHost::new(params, RnodeConfig::default());
    let mut device = FirmwareModel::default();
    host.reset(0);
    converse(&mut host, &mut device, 5);
    let BridgeError::Device(text) = expect_failure(&mut host) else {
        panic!("expected a device error");
    };
    assert!(text.contains("spreading factor to 12"), "{text}");
    assert!(text.contains("asked for 13"), "{text}");
}

#[test]
fn a_radio_that_stays_off_is_an_error() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    let mut device = FirmwareModel {
        radio_starts: false,
        ..FirmwareModel::default()
    };
    host.reset(0);
    converse(&mut host, &mut device, 5);
    let BridgeError::Device(text) = expect_failure(&mut host) else {
        panic!("expected a device error");
    };
    assert!(text.contains("did not turn its radio on"), "{text}");
}

#[test]
fn a_radio_that_fails_to_initialise_is_an_error() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    let mut device = FirmwareModel {
        radio_initialises: false,
        ..FirmwareModel::default()
    };
    host.reset(0);
    converse(&mut host, &mut device, 5);
    let BridgeError::Device(text) = expect_failure(&mut host) else {
        panic!("expected a device error");
    };
    assert!(text.contains("0x01"), "{text}");
}

#[test]
fn an_unconfirmed_value_is_resent_then_reported_by_name() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    host.reset(0);
    host.poll_serial();
    host.handle_serial(10, &unhex("c0 08 46 c0"));
    let frequency = written(&mut host);
    assert_eq!(frequency, "c0 01 33 be 27 a0 c0");
    assert_eq!(host.poll_timeout(), Some(1_010));
    assert_eq!(host.handle_timeout(1_010), Ok(()));
    assert_eq!(written(&mut host), frequency, "sent again");
    assert_eq!(host.handle_timeout(2_010), Ok(()));
    assert_eq!(written(&mut host), frequency, "and a third time");
    let Err(BridgeError::Device(text)) = host.handle_timeout(3_010) else {
        panic!("expected a device error");
    };
    assert!(text.contains("frequency"), "{text}");
}

#[test]
fn stale_answers_to_other_commands_do_not_confuse_the_handshake() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    host.reset(0);
    host.poll_serial();
    host.handle_serial(10, &unhex("c0 08 46 c0"));
    assert_eq!(written(&mut host), "c0 01 33 be 27 a0 c0");
    // A spreading factor from an earlier session arrives while the frequency is awaited.
    host.handle_serial(11, &unhex("c0 04 0c c0 c0 01 33 be 27 a0 c0"));
    assert_eq!(written(&mut host), "c0 02 00 01 e8 48 c0");
    assert_eq!(host.poll_timeout(), Some(1_011));
}

// ---- data ----

#[test]
fn received_frames_carry_the_signal_figures_sent_before_them() {
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    // RSSI byte 0x5B = 91 - 157 = -66 dBm; SNR 0xF6 = -10 quarter dB = -2.5 dB.
    host.handle_serial(
        100,
        &unhex("c0 23 5b c0 c0 24 f6 c0 c0 00 48 69 db dc c0 c0 00 21 c0"),
    );
    assert_eq!(
        events(&mut host),
        vec![
            BridgeEvent::Received {
                frame: vec![0x48, 0x69, 0xC0],
                rssi_dbm: Some(-66),
                snr_db: Some(-2.5),
            },
            // Figures belong to one packet only.
            BridgeEvent::Received {
                frame: vec![0x21],
                rssi_dbm: None,
                snr_db: None,
            },
        ]
    );
}

#[test]
fn frames_wait_for_ready_from_the_firmware() {
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    host.handle_serial(100, &[]);
    host.send_frame(b"one").expect("ready");
    host.send_frame(b"two").expect("ready");
    assert_eq!(
        written(&mut host),
        "c0 00 6f 6e 65 c0",
        "only the first goes"
    );
    // READY 0x00 is "queue full": keep waiting.
    host.handle_serial(110, &unhex("c0 0f 00 c0"));
    assert_eq!(host.poll_serial(), None);
    host.handle_serial(120, &unhex("c0 0f 01 c0"));
    assert_eq!(written(&mut host), "c0 00 74 77 6f c0");
    assert_eq!(events(&mut host), vec![BridgeEvent::TxReady]);
}

#[test]
fn frames_go_out_anyway_when_the_firmware_never_says_ready() {
    let (mut host, mut device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    host.handle_serial(1_000, &[]);
    host.send_frame(&[0x55; 100]).expect("ready");
    host.send_frame(b"next").expect("ready");
    let first = host.poll_serial().expect("the first frame");
    device.answer(&first);
    assert_eq!(device.transmitted, vec![vec![0x55; 100]]);
    // 101 bytes on air at SF7/125 kHz take about 190 ms, plus the 500 ms margin.
    let due = host.poll_timeout().expect("a flow-control deadline");
    assert!((1_600..=1_800).contains(&due), "{due}");
    assert_eq!(host.handle_timeout(due - 1), Ok(()));
    assert_eq!(host.poll_serial(), None);
    assert_eq!(host.handle_timeout(due), Ok(()));
    assert_eq!(events(&mut host), vec![BridgeEvent::TxReady]);
    device.answer(&host.poll_serial().expect("the second frame"));
    assert_eq!(device.transmitted[1], b"next");
}

#[test]
fn an_overfull_queue_drops_the_oldest_frame_with_a_warning() {
    let config = RnodeConfig {
        queue_limit: 2,
        ..RnodeConfig::default()
    };
    let (mut host, _device) = ready_host(LoraParams::sf7(), config);
    for frame in [b"a", b"b", b"c", b"d"] {
        host.send_frame(frame).expect("ready");
    }
    // "a" went to the device at once; "b" was dropped to make room for "d".
    assert_eq!(host.dropped_frames(), 1);
    let events = events(&mut host);
    assert!(
        matches!(events.as_slice(), [BridgeEvent::Warning(text)] if text.contains("dropped the oldest")),
        "{events:?}"
    );
    host.poll_serial();
    host.handle_serial(5, &unhex("c0 0f 01 c0"));
    assert_eq!(written(&mut host), "c0 00 63 c0");
}

#[test]
fn sending_before_ready_or_too_much_is_refused() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    assert_eq!(host.send_frame(b"x"), Err(BridgeError::NotReady));
    host.reset(0);
    assert_eq!(host.send_frame(b"x"), Err(BridgeError::NotReady));
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    // One LoRa packet after the firmware's 1-byte header.
    assert_eq!(host.max_frame(), 254);
    assert_eq!(
        host.send_frame(&[0; 255]),
        Err(BridgeError::FrameTooLarge { len: 255, max: 254 })
    );
    assert_eq!(host.send_frame(&[0; 254]), Ok(()));
}

#[test]
fn data_heard_before_the_handshake_is_not_delivered() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    host.reset(0);
    host.handle_serial(5, &unhex("c0 23 5b c0 c0 00 41 c0"));
    assert_eq!(events(&mut host), vec![]);
}

// ---- statistics, errors, restarts ----

#[test]
fn statistics_become_info_for_people() {
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    // Channel stats: airtime 1.25 % / 0.50 %, load 3.00 % / 2.00 %, RSSI -120, noise floor
    // -115, no interference.
    host.handle_serial(50, &unhex("c0 25 00 7d 00 32 01 2c 00 c8 25 2a ff c0"));
    // Battery 87 %, discharging; packets received 1234.
    host.handle_serial(51, &unhex("c0 27 01 57 c0 c0 21 00 00 04 d2 c0"));
    // PHY: symbol 1024 us, 976 symbols/s, preamble 18 symbols / 19 ms, slot 24 ms, DIFS 58.
    host.handle_serial(52, &unhex("c0 26 04 00 03 d0 00 12 00 13 00 18 00 3a c0"));
    let events = events(&mut host);
    assert_eq!(events.len(), 4, "{events:?}");
    let Some(BridgeEvent::Info(info)) = events.last() else {
        panic!("expected Info, got {events:?}");
    };
    let detail = |name: &str| {
        info.details
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(detail("airtime (short term)").as_deref(), Some("1.25 %"));
    assert_eq!(
        detail("channel load (long term)").as_deref(),
        Some("2.00 %")
    );
    assert_eq!(detail("current RSSI").as_deref(), Some("-120 dBm"));
    assert_eq!(detail("noise floor").as_deref(), Some("-115 dBm"));
    assert_eq!(detail("interference").as_deref(), Some("none"));
    assert_eq!(detail("battery").as_deref(), Some("87 %, discharging"));
    assert_eq!(detail("packets received").as_deref(), Some("1234"));
    assert_eq!(detail("symbol time").as_deref(), Some("1.024 ms"));
    assert_eq!(detail("preamble").as_deref(), Some("18 symbols"));
    // The firmware chooses the preamble; the host now paces by it.
    assert_eq!(info.lora.map(|lora| lora.preamble_symbols), Some(18));
    assert_eq!(host.params().preamble_symbols, 18);
}

#[test]
fn firmware_errors_are_warnings_unless_the_radio_is_gone() {
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    host.handle_serial(50, &unhex("c0 90 04 c0 c0 90 05 c0 c0 90 2a c0"));
    let events = events(&mut host);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|event| matches!(event, BridgeEvent::Warning(_))));
    assert!(host.is_ready());
    assert_eq!(host.poll_timeout(), None);

    // TX failed: the host asks whether the radio is still on ...
    host.handle_serial(60, &unhex("c0 90 02 c0"));
    assert_eq!(written(&mut host), "c0 06 ff c0");
    // ... it is: nothing changes.
    host.handle_serial(61, &unhex("c0 06 01 c0"));
    assert!(host.is_ready());
    // Another failure, and this time the radio is off: the driver stops.
    host.handle_serial(70, &unhex("c0 90 02 c0"));
    host.poll_serial();
    host.handle_serial(71, &unhex("c0 06 00 c0"));
    assert!(!host.is_ready());
    let BridgeError::Device(text) = expect_failure(&mut host) else {
        panic!("expected a device error");
    };
    assert!(text.contains("radio off"), "{text}");
}

#[test]
fn a_device_that_reboots_is_configured_again_and_keeps_the_queue() {
    let (mut host, mut device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    host.send_frame(b"first").expect("ready");
    device.answer(&host.poll_serial().expect("first frame"));
    host.send_frame(b"queued").expect("ready");
    assert_eq!(host.poll_serial(), None, "waits for READY");
    // The modem timed out and the firmware rebooted itself; it lost its configuration.
    let mut device = FirmwareModel::default();
    host.handle_serial(100, &unhex("c0 90 06 c0 c0 90 02 c0 c0 55 f8 c0"));
    assert!(!host.is_ready());
    assert_eq!(host.send_frame(b"meanwhile"), Err(BridgeError::NotReady));
    converse(&mut host, &mut device, 110);
    assert!(host.is_ready());
    assert!(device.online);
    assert_eq!(device.transmitted, vec![b"queued".to_vec()]);
    let events = events(&mut host);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, BridgeEvent::Warning(text) if text.contains("restarted"))),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(BridgeEvent::Ready(_))),
        "{events:?}"
    );
}

#[test]
fn reset_after_a_failure_starts_over() {
    let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
    host.reset(0);
    let mut now = 0;
    while let Some(due) = host.poll_timeout() {
        now = due;
        if host.handle_timeout(now).is_err() {
            break;
        }
    }
    host.poll_serial();
    host.reset(now);
    let mut device = FirmwareModel::default();
    converse(&mut host, &mut device, now + 10);
    assert!(host.is_ready());
}

// ---- the KISS TNC ----

#[test]
fn kiss_tnc_is_ready_at_reset_and_carries_data_on_its_port() {
    let mut tnc = KissTnc::new(KissTncConfig {
        port: 1,
        ..KissTncConfig::default()
    });
    assert_eq!(tnc.kind(), RadioKind::Kiss);
    assert_eq!(tnc.medium(), Medium::Radio(None));
    assert_eq!(tnc.send_frame(b"x"), Err(BridgeError::NotReady));
    tnc.reset(0);
    assert!(tnc.is_ready());
    let events_now = events(&mut tnc);
    let [BridgeEvent::Ready(info)] = events_now.as_slice() else {
        panic!("expected Ready, got {events_now:?}");
    };
    assert_eq!(info.firmware, "KISS TNC");
    assert_eq!(info.max_frame, 255);

    tnc.send_frame(&[0x41, 0xC0]).expect("ready");
    assert_eq!(written(&mut tnc), "c0 10 41 db dc c0");
    assert_eq!(
        tnc.send_frame(&[0; 256]),
        Err(BridgeError::FrameTooLarge { len: 256, max: 255 })
    );

    // Port 1 data arrives; port 0 data, a TXDELAY and a bad escape do not.
    tnc.handle_serial(
        5,
        &unhex("c0 00 58 c0 c0 10 48 69 c0 c0 11 32 c0 c0 10 db 00 c0 c0 10 21 c0"),
    );
    let events_now = events(&mut tnc);
    assert_eq!(
        events_now.len(),
        3,
        "two frames and one warning: {events_now:?}"
    );
    assert_eq!(
        events_now[0],
        BridgeEvent::Received {
            frame: b"Hi".to_vec(),
            rssi_dbm: None,
            snr_db: None
        }
    );
    assert!(matches!(&events_now[1], BridgeEvent::Warning(_)));
    assert_eq!(
        events_now[2],
        BridgeEvent::Received {
            frame: b"!".to_vec(),
            rssi_dbm: None,
            snr_db: None
        }
    );
    assert_eq!(tnc.poll_timeout(), None);
}

#[test]
fn kiss_tnc_medium_can_name_known_parameters() {
    let tnc = KissTnc::new(KissTncConfig {
        lora: Some(LoraParams::sf12()),
        ..KissTncConfig::default()
    });
    assert_eq!(tnc.medium(), Medium::Radio(Some(LoraParams::sf12())));
}

// ---- properties ----

proptest! {
    #[test]
    fn nothing_the_device_says_makes_the_host_panic(
        chunks in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![
                    Just(0xC0u8), Just(0xDB), Just(0x08), Just(0x46), Just(0x00),
                    Just(0x0F), Just(0x90), Just(0x55), Just(0xF8), any::<u8>()
                ],
                0..64
            ),
            0..32
        ),
        steps in prop::collection::vec(0u64..2_000, 32),
        ready_first in any::<bool>(),
    ) {
        let (mut host, _) = if ready_first {
            ready_host(LoraParams::sf7(), RnodeConfig::default())
        } else {
            let mut host = RnodeHost::new(LoraParams::sf7(), RnodeConfig::default());
            host.reset(0);
            (host, FirmwareModel::default())
        };
        let mut now = 10;
        for (chunk, step) in chunks.iter().zip(steps.iter().cycle()) {
            now += step;
            host.handle_serial(now, chunk);
            let _ = host.send_frame(chunk);
            if let Some(due) = host.poll_timeout() {
                prop_assert!(due <= now + 10_000, "deadline {due} too far from {now}");
                if due <= now {
                    let _ = host.handle_timeout(now);
                }
            }
            while host.poll_serial().is_some() {}
            let pending = events(&mut host);
            prop_assert!(pending.len() <= chunk.len() + 20, "{} events", pending.len());
        }
    }

    #[test]
    fn any_frame_sent_reaches_the_radio_intact(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=254), 1..6),
    ) {
        let (mut host, mut device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
        for frame in &frames {
            host.send_frame(frame).expect("ready");
            device.answer(&host.poll_serial().expect("a frame goes out"));
            host.handle_serial(20, &kiss::encode(&Frame::new(0x0F, vec![0x01])));
        }
        prop_assert_eq!(device.transmitted, frames);
    }
}

#[test]
fn reset_forgets_what_the_previous_device_said() {
    let (mut host, _device) = ready_host(LoraParams::sf7(), RnodeConfig::default());
    host.handle_serial(52, &unhex("c0 26 04 00 03 d0 00 12 00 13 00 18 00 3a c0"));
    assert_eq!(host.params().preamble_symbols, 18);
    // The port is reopened: perhaps another device is on it now.
    host.reset(100);
    assert_eq!(host.params(), LoraParams::sf7());
    assert_eq!(host.firmware_version(), None);
    assert!(host.info().details.is_empty());
    assert_eq!(host.medium(), Medium::Radio(Some(LoraParams::sf7())));
}
