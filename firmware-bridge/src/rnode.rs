//! The host side of RNode firmware ([`RnodeHost`]) and of a plain KISS TNC ([`KissTnc`]).
//!
//! # RNode
//!
//! An RNode is a LoRa radio whose firmware (markqvist/RNode_Firmware) speaks KISS with extra
//! commands. The host owns the radio configuration: RNode keeps none of it across a reboot
//! unless it was put in TNC mode, and opening a USB port reboots most ESP32 boards. So after
//! every [`Firmware::reset`] the host runs the handshake Reticulum's `RNodeInterface` runs:
//!
//! 1. **Detect.** Send `DETECT 0x73` together with requests for the firmware version
//!    (`0x50`), platform (`0x48`), MCU (`0x49`) and board (`0x47`), and repeat them every
//!    [`RnodeConfig::detect_retry_ms`] until the device answers `DETECT 0x46`. A board that
//!    rebooted when the port opened prints a boot banner first and answers a second or two
//!    later; nothing answering within [`RnodeConfig::detect_timeout_ms`] means a wrong port,
//!    baud rate or firmware ([`BridgeError::NoAnswer`]).
//! 2. **Configure**, one value at a time: frequency, bandwidth, TX power, spreading factor,
//!    coding rate, then radio state ON. The firmware answers each command with the value it
//!    actually took, and quietly clamps what its radio cannot do (TX power above 17 dBm on an
//!    SX127x, 22 on an SX1262; spreading factor outside 5-12; coding rate outside 5-8). The
//!    host compares each echo with what it asked: a mismatch stops the handshake with a
//!    [`BridgeError::Device`] naming the parameter, because a radio silently on the wrong
//!    power or spreading factor cannot hear its peers. One value at a time, rather than all
//!    at once as Reticulum does, so that a stale or missing answer is pinned to its command.
//! 3. **Ready.** When the radio reports ON, the driver reports [`BridgeEvent::Ready`] with the
//!    firmware version, the parameters, and what the board said about itself.
//!
//! Then data flows as KISS data frames (command 0x00). Before each received frame the
//! firmware sends the packet's RSSI (`0x23`, dBm + 157) and SNR (`0x24`, signed quarter dB);
//! the driver attaches them to the [`BridgeEvent::Received`] that follows. Other statistics
//! (packet counts, channel load, PHY timing, battery, CSMA) update the details reported by
//! [`BridgeEvent::Info`]. Errors (`0x90`) become warnings, except a radio that failed to
//! initialise, which stops the driver. If the device reports that it rebooted
//! (`0x55 0xF8`, sent at boot by ESP32 and nRF52 firmware) the driver configures it again.
//!
//! **Flow control.** The firmware keeps its own small transmit queue. Older firmware answers
//! every data frame it queued with `READY 0x01` (or error 0x04 when its queue was full);
//! current firmware only answers `READY` when asked. So the driver sends one data frame,
//! then waits for `READY` or, failing that, for the frame's time on air plus
//! [`RnodeConfig::ready_margin_ms`], before it sends the next, and reports
//! [`BridgeEvent::TxReady`] each time it does. That never outruns the radio and never stalls
//! on firmware that stays quiet. Frames wait in a queue of [`RnodeConfig::queue_limit`]
//! meanwhile; a caller that waits for `TxReady` before sending more never fills it.
//!
//! # KISS TNC
//!
//! [`KissTnc`] is the plain KISS case: no handshake, no configuration, data frames on one
//! port. It is ready as soon as it is reset and has no flow control.

use std::collections::VecDeque;

use crate::kiss::{
    self, Decoder, DecoderConfig, Frame, KissCommand, RadioState, RnodeCommand,
    RNODE_CMD_RADIO_STATE, RNODE_DETECT_REQUEST, RNODE_DETECT_RESPONSE,
};
use crate::lora::airtime_us;
use crate::{BridgeError, BridgeEvent, Firmware, LoraParams, Medium, RadioInfo, RadioKind};

/// RNode command: the firmware version, answered as two bytes (major, minor).
pub const RNODE_CMD_FW_VERSION: u8 = 0x50;
/// RNode command: the board model.
pub const RNODE_CMD_BOARD: u8 = 0x47;
/// RNode command: the platform (0x90 AVR, 0x80 ESP32, 0x70 nRF52).
pub const RNODE_CMD_PLATFORM: u8 = 0x48;
/// RNode command: the MCU (0x91 ATmega1284P, 0x92 ATmega2560, 0x81 ESP32, 0x71 nRF52).
pub const RNODE_CMD_MCU: u8 = 0x49;
/// RNode command: reset; the device sends `0x55 0xF8` when it (re)boots.
pub const RNODE_CMD_RESET: u8 = 0x55;
/// The byte that goes with [`RNODE_CMD_RESET`].
pub const RNODE_RESET_BYTE: u8 = 0xF8;

/// Statistic: packets received, u32 big-endian.
pub const RNODE_STAT_RX: u8 = 0x21;
/// Statistic: packets sent, u32 big-endian.
pub const RNODE_STAT_TX: u8 = 0x22;
/// Statistic: RSSI of the packet that follows, one byte, dBm + [`RNODE_RSSI_OFFSET`].
pub const RNODE_STAT_RSSI: u8 = 0x23;
/// Statistic: SNR of the packet that follows, one signed byte in quarter dB.
pub const RNODE_STAT_SNR: u8 = 0x24;
/// Statistic: airtime and channel load (4 × u16 in 0.01 %), current RSSI, noise floor and
/// interference (each dBm + 157; interference 0xFF when none).
pub const RNODE_STAT_CHANNEL: u8 = 0x25;
/// Statistic: PHY timing: symbol time (µs), symbol rate (/s), preamble (symbols), preamble
/// time (ms), CSMA slot (ms), DIFS (ms), each u16.
pub const RNODE_STAT_PHY: u8 = 0x26;
/// Statistic: battery state (0 unknown, 1 discharging, 2 charging, 3 charged) and percent.
pub const RNODE_STAT_BATTERY: u8 = 0x27;
/// Statistic: CSMA contention window band, minimum and maximum.
pub const RNODE_STAT_CSMA: u8 = 0x28;
/// What RNode adds to an RSSI in dBm to send it as one unsigned byte.
pub const RNODE_RSSI_OFFSET: i16 = 157;

/// RNode error: the radio could not be initialised (fatal: nothing will be sent).
pub const RNODE_ERROR_INIT_RADIO: u8 = 0x01;
/// RNode error: a transmission failed (radio off, or the modem timed out).
pub const RNODE_ERROR_TX_FAILED: u8 = 0x02;
/// RNode error: the EEPROM is locked (a configuration write was refused).
pub const RNODE_ERROR_EEPROM_LOCKED: u8 = 0x03;
/// RNode error: the transmit queue was full and a frame was dropped.
pub const RNODE_ERROR_QUEUE_FULL: u8 = 0x04;
/// RNode error: the device ran low on memory and dropped a received packet.
pub const RNODE_ERROR_MEMORY_LOW: u8 = 0x05;
/// RNode error: the modem did not finish a transmission in time (the firmware reboots).
pub const RNODE_ERROR_MODEM_TIMEOUT: u8 = 0x06;

/// The largest frame RNode firmware carries, split over two LoRa packets.
pub const RNODE_FIRMWARE_MTU: usize = 508;

/// At most this many warnings wait in a driver's event queue; past it, further ones are
/// only counted, so a noisy line cannot grow the queue without bound.
const MAX_PENDING_WARNINGS: usize = 16;
/// Tries per configuration command before the handshake gives up on it.
const ECHO_ATTEMPTS: u8 = 3;
/// Device reboots tolerated between two successful handshakes before giving up.
const MAX_RESTARTS: u32 = 3;

/// Timing and limits for an [`RnodeHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RnodeConfig {
    /// How often the detect request is repeated while the device says nothing.
    pub detect_retry_ms: u64,
    /// How long the device may stay silent after a reset before [`BridgeError::NoAnswer`].
    /// ESP32 boards reboot when the port opens and take 1-2 s to answer.
    pub detect_timeout_ms: u64,
    /// How long to wait for the echo of each configuration command before sending it again
    /// (three tries in all, then [`BridgeError::Device`]).
    pub echo_timeout_ms: u64,
    /// Added to a frame's time on air: how long to wait for `READY` before sending the next
    /// frame anyway (for firmware that does not send it, or lost it).
    pub ready_margin_ms: u64,
    /// Frames [`Firmware::send_frame`] keeps while the device is busy; past it the oldest
    /// waiting frame is dropped with a warning.
    pub queue_limit: usize,
    /// Largest frame [`Firmware::send_frame`] takes. 254 bytes fit one LoRa packet after the
    /// firmware's 1-byte header; up to [`RNODE_FIRMWARE_MTU`] the firmware splits a frame
    /// over two packets.
    pub max_frame: usize,
}

impl Default for RnodeConfig {
    fn default() -> Self {
        Self {
            detect_retry_ms: 500,
            detect_timeout_ms: 5_000,
            echo_timeout_ms: 1_000,
            ready_margin_ms: 500,
            queue_limit: 8,
            // One LoRa packet: the firmware adds its 1-byte header to every packet, so a
            // 255-byte frame would go out as two.
            max_frame: 254,
        }
    }
}

/// One configuration command of the handshake, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Frequency,
    Bandwidth,
    TxPower,
    SpreadingFactor,
    CodingRate,
    RadioOn,
}

impl Step {
    const FIRST: Step = Step::Frequency;

    fn next(self) -> Option<Step> {
        match self {
            Self::Frequency => Some(Self::Bandwidth),
            Self::Bandwidth => Some(Self::TxPower),
            Self::TxPower => Some(Self::SpreadingFactor),
            Self::SpreadingFactor => Some(Self::CodingRate),
            Self::CodingRate => Some(Self::RadioOn),
            Self::RadioOn => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Frequency => "frequency",
            Self::Bandwidth => "bandwidth",
            Self::TxPower => "TX power",
            Self::SpreadingFactor => "spreading factor",
            Self::CodingRate => "coding rate",
            Self::RadioOn => "radio state",
        }
    }

    fn command(self, params: &LoraParams) -> RnodeCommand {
        match self {
            Self::Frequency => RnodeCommand::Frequency(params.frequency_hz),
            Self::Bandwidth => RnodeCommand::Bandwidth(params.bandwidth_hz),
            Self::TxPower => RnodeCommand::TxPower(params.tx_power_dbm),
            Self::SpreadingFactor => RnodeCommand::SpreadingFactor(params.spreading_factor),
            Self::CodingRate => RnodeCommand::CodingRate(params.coding_rate),
            Self::RadioOn => RnodeCommand::RadioState(RadioState::On),
        }
    }
}

/// What the value the device echoed says about a step.
enum Echo {
    /// Not an answer to this step.
    Unrelated,
    /// The value asked for.
    Confirmed,
    /// Another value: the device could not take ours.
    Refused(String),
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not reset yet.
    Idle,
    /// Waiting for `DETECT 0x46`.
    ExpectDetect { since_ms: u64, retry_at_ms: u64 },
    /// Waiting for the echo of one configuration command.
    ExpectEcho {
        step: Step,
        attempts: u8,
        deadline_ms: u64,
    },
    /// Configured; data flows.
    Ready,
    /// Stopped by an error; waits for a reset.
    Failed,
}

/// Warnings and events shared by both drivers here.
#[derive(Debug, Default)]
struct EventQueue {
    events: VecDeque<BridgeEvent>,
    /// Warnings in `events` not yet polled.
    pending_warnings: usize,
    /// Warnings dropped because too many were pending.
    unreported: u64,
}

impl EventQueue {
    fn push(&mut self, event: BridgeEvent) {
        self.events.push_back(event);
    }

    fn warn(&mut self, mut text: String) {
        if self.pending_warnings >= MAX_PENDING_WARNINGS {
            self.unreported = self.unreported.saturating_add(1);
            return;
        }
        if self.unreported > 0 {
            text.push_str(&format!(
                " ({} more warnings were not reported one by one)",
                self.unreported
            ));
            self.unreported = 0;
        }
        self.pending_warnings += 1;
        self.events.push_back(BridgeEvent::Warning(text));
    }

    fn pop(&mut self) -> Option<BridgeEvent> {
        let event = self.events.pop_front()?;
        if let BridgeEvent::Warning(_) = event {
            self.pending_warnings = self.pending_warnings.saturating_sub(1);
        }
        Some(event)
    }

    fn clear(&mut self) {
        self.events.clear();
        self.pending_warnings = 0;
        self.unreported = 0;
    }
}

/// The host side of RNode firmware ([`RadioKind::Rnode`]): configures the radio after every
/// reset, then carries frames with signal figures and paces them by the firmware's flow
/// control. See the [module docs](self) for the handshake.
#[derive(Debug)]
pub struct RnodeHost {
    /// The parameters the caller asked for.
    asked: LoraParams,
    /// The parameters in force: those asked for, with the preamble the firmware reports.
    params: LoraParams,
    config: RnodeConfig,
    decoder: Decoder,
    phase: Phase,
    /// Bytes for the port, already encoded and concatenated.
    outgoing: Vec<u8>,
    events: EventQueue,
    /// Why the driver stopped; returned by the next `handle_timeout`.
    failure: Option<BridgeError>,
    /// The latest `now` the caller gave: `send_frame` has no clock of its own.
    last_now_ms: u64,
    firmware_version: Option<(u8, u8)>,
    /// `(name, value)` lines for people, in the order first seen.
    details: Vec<(String, String)>,
    /// Signal figures of the packet the device is about to hand over.
    last_rssi_dbm: Option<i16>,
    last_snr_db: Option<f32>,
    /// Frames waiting for the device to take them.
    queue: VecDeque<Vec<u8>>,
    /// A data frame was sent and the device has not said `READY` since; the next one goes at
    /// this time at the latest.
    in_flight_until_ms: Option<u64>,
    /// Device reboots since the last successful handshake.
    restarts: u32,
    dropped_frames: u64,
}

impl RnodeHost {
    /// A driver that will configure the RNode with `params`; call [`Firmware::reset`] once
    /// the port is open.
    #[must_use]
    pub fn new(params: LoraParams, config: RnodeConfig) -> Self {
        Self {
            asked: params,
            params,
            config,
            decoder: Decoder::new(DecoderConfig {
                // Room for the firmware's split-packet MTU and its longest reports.
                max_payload_len: 1024,
            }),
            phase: Phase::Idle,
            outgoing: Vec::new(),
            events: EventQueue::default(),
            failure: None,
            last_now_ms: 0,
            firmware_version: None,
            details: Vec::new(),
            last_rssi_dbm: None,
            last_snr_db: None,
            queue: VecDeque::new(),
            in_flight_until_ms: None,
            restarts: 0,
            dropped_frames: 0,
        }
    }

    /// The radio parameters: those asked for, with the preamble the firmware reported once
    /// it did (RNode picks its preamble itself).
    #[must_use]
    pub fn params(&self) -> LoraParams {
        self.params
    }

    /// The firmware version `(major, minor)`, once the device reported it.
    #[must_use]
    pub fn firmware_version(&self) -> Option<(u8, u8)> {
        self.firmware_version
    }

    /// What the driver knows about the device now, as [`BridgeEvent::Ready`] and
    /// [`BridgeEvent::Info`] report it.
    #[must_use]
    pub fn info(&self) -> RadioInfo {
        let firmware = match self.firmware_version {
            Some((major, minor)) => format!("RNode {major}.{minor:02}"),
            None => "RNode (version not reported)".to_owned(),
        };
        RadioInfo {
            firmware,
            lora: Some(self.params),
            max_frame: self.config.max_frame,
            details: self.details.clone(),
        }
    }

    /// Frames dropped: queued past [`RnodeConfig::queue_limit`], or dropped by the device.
    #[must_use]
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }

    fn write(&mut self, command: &RnodeCommand) {
        self.outgoing
            .extend_from_slice(&kiss::encode(&command.to_frame()));
    }

    fn write_frame(&mut self, frame: &Frame) {
        self.outgoing.extend_from_slice(&kiss::encode(frame));
    }

    fn write_detect(&mut self) {
        self.write(&RnodeCommand::Detect(RNODE_DETECT_REQUEST));
        for command in [
            RNODE_CMD_FW_VERSION,
            RNODE_CMD_PLATFORM,
            RNODE_CMD_MCU,
            RNODE_CMD_BOARD,
        ] {
            self.write_frame(&Frame::new(command, vec![0x00]));
        }
    }

    /// Starts the handshake over, keeping queued frames (after a device reboot) or not
    /// (after a reset by the caller, which clears them first).
    fn start_handshake(&mut self, now_ms: u64) {
        self.phase = Phase::ExpectDetect {
            since_ms: now_ms,
            retry_at_ms: now_ms.saturating_add(self.config.detect_retry_ms),
        };
        self.in_flight_until_ms = None;
        self.last_rssi_dbm = None;
        self.last_snr_db = None;
        self.write_detect();
    }

    fn start_step(&mut self, now_ms: u64, step: Step) {
        self.phase = Phase::ExpectEcho {
            step,
            attempts: 1,
            deadline_ms: now_ms.saturating_add(self.config.echo_timeout_ms),
        };
        self.write(&step.command(&self.params));
    }

    fn fail(&mut self, error: BridgeError) {
        self.phase = Phase::Failed;
        self.in_flight_until_ms = None;
        if self.failure.is_none() {
            self.failure = Some(error);
        }
    }

    fn set_detail(&mut self, name: &str, value: String) {
        match self.details.iter_mut().find(|(key, _)| key == name) {
            Some(entry) => entry.1 = value,
            None => self.details.push((name.to_owned(), value)),
        }
    }

    /// Compares an echo with what `step` asked for.
    fn check_echo(&self, step: Step, command: &RnodeCommand) -> Echo {
        let params = &self.params;
        let (asked, got, unit) = match (step, command) {
            (Step::Frequency, RnodeCommand::Frequency(hz)) => {
                (u64::from(params.frequency_hz), u64::from(*hz), " Hz")
            }
            (Step::Bandwidth, RnodeCommand::Bandwidth(hz)) => {
                (u64::from(params.bandwidth_hz), u64::from(*hz), " Hz")
            }
            (Step::TxPower, RnodeCommand::TxPower(dbm)) => {
                (u64::from(params.tx_power_dbm), u64::from(*dbm), " dBm")
            }
            (Step::SpreadingFactor, RnodeCommand::SpreadingFactor(sf)) => {
                (u64::from(params.spreading_factor), u64::from(*sf), "")
            }
            (Step::CodingRate, RnodeCommand::CodingRate(cr)) => {
                (u64::from(params.coding_rate), u64::from(*cr), "")
            }
            (Step::RadioOn, RnodeCommand::RadioState(RadioState::On)) => return Echo::Confirmed,
            (Step::RadioOn, RnodeCommand::RadioState(RadioState::Off)) => {
                return Echo::Refused(
                    "the RNode did not turn its radio on: it refused the radio parameters, or \
                     the device is not provisioned (run rnodeconf on it)"
                        .to_owned(),
                )
            }
            _ => return Echo::Unrelated,
        };
        if asked == got {
            Echo::Confirmed
        } else {
            Echo::Refused(format!(
                "the RNode set its {} to {got}{unit} when asked for {asked}{unit}: this radio \
                 does not support that value; choose one it does",
                step.name()
            ))
        }
    }

    fn handle_frame(&mut self, now_ms: u64, frame: &Frame) {
        let command = match RnodeCommand::from_frame(frame) {
            Ok(command) => command,
            Err(error) => {
                self.events
                    .warn(format!("ignored a malformed frame from the RNode: {error}"));
                return;
            }
        };
        match command {
            RnodeCommand::Data(payload) => self.handle_data(payload),
            RnodeCommand::Ready(payload) => self.handle_ready(&payload),
            RnodeCommand::Statistics { command, value } => self.handle_statistic(command, &value),
            RnodeCommand::Error(code) => self.handle_device_error(code),
            RnodeCommand::Detect(RNODE_DETECT_RESPONSE) => {
                if let Phase::ExpectDetect { .. } = self.phase {
                    self.start_step(now_ms, Step::FIRST);
                }
            }
            RnodeCommand::Other(RNODE_CMD_RESET, payload) if payload == [RNODE_RESET_BYTE] => {
                self.handle_device_restart(now_ms);
            }
            RnodeCommand::Other(RNODE_CMD_FW_VERSION, payload) => {
                if let [major, minor] = payload[..] {
                    self.firmware_version = Some((major, minor));
                }
            }
            RnodeCommand::Other(RNODE_CMD_PLATFORM, payload) => {
                if let [code] = payload[..] {
                    self.set_detail("platform", platform_name(code));
                }
            }
            RnodeCommand::Other(RNODE_CMD_MCU, payload) => {
                if let [code] = payload[..] {
                    self.set_detail("mcu", mcu_name(code));
                }
            }
            RnodeCommand::Other(RNODE_CMD_BOARD, payload) => {
                if let [code] = payload[..] {
                    self.set_detail("board", format!("{code:#04x}"));
                }
            }
            echo @ (RnodeCommand::Frequency(_)
            | RnodeCommand::Bandwidth(_)
            | RnodeCommand::TxPower(_)
            | RnodeCommand::SpreadingFactor(_)
            | RnodeCommand::CodingRate(_)
            | RnodeCommand::RadioState(_)) => self.handle_echo(now_ms, &echo),
            // Anything else (ROM, hashes, display, ...) answers questions we did not ask.
            _ => {}
        }
    }

    fn handle_echo(&mut self, now_ms: u64, echo: &RnodeCommand) {
        match self.phase {
            Phase::ExpectEcho { step, .. } => match self.check_echo(step, echo) {
                Echo::Unrelated => {}
                Echo::Refused(text) => self.fail(BridgeError::Device(text)),
                Echo::Confirmed => match step.next() {
                    Some(next) => self.start_step(now_ms, next),
                    None => {
                        self.phase = Phase::Ready;
                        self.restarts = 0;
                        self.events.push(BridgeEvent::Ready(self.info()));
                        self.transmit_next();
                    }
                },
            },
            Phase::Ready if *echo == RnodeCommand::RadioState(RadioState::Off) => {
                self.fail(BridgeError::Device(
                    "the RNode turned its radio off (another program on the port, or a \
                     radio fault); reset to configure it again"
                        .to_owned(),
                ));
            }
            // Ready: the firmware reports radio state ON twice when it starts the radio, and
            // answers our radio-state questions; nothing to do. Otherwise: not asked.
            _ => {}
        }
    }

    fn handle_data(&mut self, payload: Vec<u8>) {
        let rssi_dbm = self.last_rssi_dbm.take();
        let snr_db = self.last_snr_db.take();
        // Before the handshake the device may still hand over packets it heard under an old
        // configuration: they are not ours to deliver.
        if self.phase != Phase::Ready || payload.is_empty() {
            return;
        }
        self.events.push(BridgeEvent::Received {
            frame: payload,
            rssi_dbm,
            snr_db,
        });
    }

    fn handle_ready(&mut self, payload: &[u8]) {
        // `READY 0x00` is the firmware saying its queue is full: keep waiting.
        if payload == [0x00] || self.phase != Phase::Ready {
            return;
        }
        if self.in_flight_until_ms.take().is_some() {
            self.transmit_next();
            self.events.push(BridgeEvent::TxReady);
        }
    }

    fn handle_statistic(&mut self, command: u8, value: &[u8]) {
        match (command, value) {
            (RNODE_STAT_RSSI, &[byte]) => {
                self.last_rssi_dbm = Some(i16::from(byte) - RNODE_RSSI_OFFSET);
                return;
            }
            (RNODE_STAT_SNR, &[byte]) => {
                self.last_snr_db = Some(f32::from(i8::from_ne_bytes([byte])) / 4.0);
                return;
            }
            _ => {}
        }
        let mut updated = Vec::new();
        match (command, value) {
            (RNODE_STAT_RX, &[a, b, c, d]) => {
                updated.push((
                    "packets received",
                    u32::from_be_bytes([a, b, c, d]).to_string(),
                ));
            }
            (RNODE_STAT_TX, &[a, b, c, d]) => {
                updated.push(("packets sent", u32::from_be_bytes([a, b, c, d]).to_string()));
            }
            (RNODE_STAT_CHANNEL, &[a0, a1, l0, l1, c0, c1, d0, d1, rssi, noise, interference]) => {
                let percent = |hi: u8, lo: u8| {
                    let hundredths = u16::from_be_bytes([hi, lo]);
                    format!("{}.{:02} %", hundredths / 100, hundredths % 100)
                };
                updated.push(("airtime (short term)", percent(a0, a1)));
                updated.push(("airtime (long term)", percent(l0, l1)));
                updated.push(("channel load (short term)", percent(c0, c1)));
                updated.push(("channel load (long term)", percent(d0, d1)));
                updated.push(("current RSSI", dbm(rssi)));
                updated.push(("noise floor", dbm(noise)));
                updated.push((
                    "interference",
                    if interference == 0xFF {
                        "none".to_owned()
                    } else {
                        dbm(interference)
                    },
                ));
            }
            (RNODE_STAT_PHY, &[st0, st1, sr0, sr1, pr0, pr1, pt0, pt1, cs0, cs1, df0, df1]) => {
                let symbol_us = u16::from_be_bytes([st0, st1]);
                let preamble = u16::from_be_bytes([pr0, pr1]);
                updated.push((
                    "symbol time",
                    format!("{}.{:03} ms", symbol_us / 1000, symbol_us % 1000),
                ));
                updated.push((
                    "symbol rate",
                    format!("{} symbols/s", u16::from_be_bytes([sr0, sr1])),
                ));
                updated.push(("preamble", format!("{preamble} symbols")));
                updated.push((
                    "preamble time",
                    format!("{} ms", u16::from_be_bytes([pt0, pt1])),
                ));
                updated.push((
                    "CSMA slot",
                    format!("{} ms", u16::from_be_bytes([cs0, cs1])),
                ));
                updated.push(("DIFS", format!("{} ms", u16::from_be_bytes([df0, df1]))));
                if preamble > 0 {
                    self.params.preamble_symbols = preamble;
                }
            }
            (RNODE_STAT_BATTERY, &[state, percent]) => {
                let state = match state {
                    0x01 => "discharging",
                    0x02 => "charging",
                    0x03 => "charged",
                    _ => "state unknown",
                };
                updated.push(("battery", format!("{percent} %, {state}")));
            }
            (RNODE_STAT_CSMA, &[band, min, max]) => {
                updated.push((
                    "CSMA contention window",
                    format!("band {band}, {min}-{max} slots"),
                ));
            }
            _ => {
                let hex: Vec<String> = value.iter().map(|byte| format!("{byte:02x}")).collect();
                let name = format!("statistic {command:#04x}");
                self.set_detail(&name, hex.join(" "));
                self.report_info();
                return;
            }
        }
        for (name, value) in updated {
            self.set_detail(name, value);
        }
        self.report_info();
    }

    fn report_info(&mut self) {
        if self.phase == Phase::Ready {
            self.events.push(BridgeEvent::Info(self.info()));
        }
    }

    fn handle_device_error(&mut self, code: u8) {
        match code {
            RNODE_ERROR_INIT_RADIO => {
                self.fail(BridgeError::Device(
                    "the RNode could not initialise its radio (error 0x01): check the \
                     antenna connection and that the parameters suit this board"
                        .to_owned(),
                ));
            }
            RNODE_ERROR_TX_FAILED => {
                self.events.warn(
                    "the RNode failed to transmit a frame (error 0x02); asking whether its \
                     radio is still on"
                        .to_owned(),
                );
                // A radio that went off answers OFF, which stops the driver; one that is
                // still on answers ON, which is ignored.
                if self.phase == Phase::Ready {
                    self.write_frame(&Frame::new(RNODE_CMD_RADIO_STATE, vec![0xFF]));
                }
            }
            RNODE_ERROR_QUEUE_FULL => {
                self.dropped_frames = self.dropped_frames.saturating_add(1);
                self.events.warn(
                    "the RNode's transmit queue was full and it dropped a frame (error 0x04)"
                        .to_owned(),
                );
            }
            RNODE_ERROR_MEMORY_LOW => self.events.warn(
                "the RNode ran low on memory and dropped a received packet (error 0x05)".to_owned(),
            ),
            RNODE_ERROR_MODEM_TIMEOUT => self.events.warn(
                "the RNode's modem timed out while transmitting (error 0x06); the firmware \
                 restarts itself"
                    .to_owned(),
            ),
            RNODE_ERROR_EEPROM_LOCKED => self.events.warn(
                "the RNode refused a configuration write: EEPROM locked (error 0x03)".to_owned(),
            ),
            other => self
                .events
                .warn(format!("the RNode reported error {other:#04x}")),
        }
    }

    fn handle_device_restart(&mut self, now_ms: u64) {
        match self.phase {
            // The boot message of a board that rebooted when the port opened: expected.
            Phase::ExpectDetect { .. } | Phase::Idle | Phase::Failed => {}
            Phase::ExpectEcho { .. } | Phase::Ready => {
                self.restarts = self.restarts.saturating_add(1);
                if self.restarts > MAX_RESTARTS {
                    self.fail(BridgeError::Device(format!(
                        "the RNode restarted {} times before it could be configured: check its \
                         power supply and firmware",
                        self.restarts
                    )));
                    return;
                }
                self.events.warn(
                    "the RNode restarted and lost its radio configuration; configuring it again"
                        .to_owned(),
                );
                // Queued frames stay queued and go out once it is Ready again.
                self.start_handshake(now_ms);
            }
        }
    }

    /// Sends the next queued frame if the device is not busy with one.
    fn transmit_next(&mut self) {
        if self.phase != Phase::Ready || self.in_flight_until_ms.is_some() {
            return;
        }
        let Some(frame) = self.queue.pop_front() else {
            return;
        };
        // The firmware adds a 1-byte header on air. Rounded up to whole milliseconds.
        let airtime = airtime_us(&self.params, frame.len().saturating_add(1)).div_ceil(1000);
        self.in_flight_until_ms = Some(
            self.last_now_ms
                .saturating_add(airtime)
                .saturating_add(self.config.ready_margin_ms),
        );
        self.write(&RnodeCommand::Data(frame));
    }
}

fn dbm(offset_byte: u8) -> String {
    format!("{} dBm", i16::from(offset_byte) - RNODE_RSSI_OFFSET)
}

fn platform_name(code: u8) -> String {
    match code {
        0x90 => "AVR".to_owned(),
        0x80 => "ESP32".to_owned(),
        0x70 => "nRF52".to_owned(),
        other => format!("{other:#04x}"),
    }
}

fn mcu_name(code: u8) -> String {
    match code {
        0x91 => "ATmega1284P".to_owned(),
        0x92 => "ATmega2560".to_owned(),
        0x81 => "ESP32".to_owned(),
        0x71 => "nRF52".to_owned(),
        other => format!("{other:#04x}"),
    }
}

impl Firmware for RnodeHost {
    fn kind(&self) -> RadioKind {
        RadioKind::Rnode
    }

    fn medium(&self) -> Medium {
        Medium::Radio(Some(self.params))
    }

    fn reset(&mut self, now_ms: u64) {
        self.last_now_ms = now_ms;
        self.decoder.reset();
        self.outgoing.clear();
        self.events.clear();
        self.failure = None;
        self.queue.clear();
        self.restarts = 0;
        // The port was reopened: it may be another device, so forget what this one said.
        self.params = self.asked;
        self.firmware_version = None;
        self.details.clear();
        self.start_handshake(now_ms);
    }

    fn handle_serial(&mut self, now_ms: u64, bytes: &[u8]) {
        self.last_now_ms = now_ms;
        if matches!(self.phase, Phase::Idle | Phase::Failed) {
            return;
        }
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            match result {
                Ok(frame) => self.handle_frame(now_ms, &frame),
                Err(error) => self
                    .events
                    .warn(format!("dropped a garbled frame from the RNode: {error}")),
            }
            if self.phase == Phase::Failed {
                self.decoder.reset();
                return;
            }
        }
    }

    fn poll_serial(&mut self) -> Option<Vec<u8>> {
        if self.outgoing.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outgoing))
        }
    }

    fn send_frame(&mut self, frame: &[u8]) -> Result<(), BridgeError> {
        if self.phase != Phase::Ready {
            return Err(BridgeError::NotReady);
        }
        if frame.len() > self.config.max_frame {
            return Err(BridgeError::FrameTooLarge {
                len: frame.len(),
                max: self.config.max_frame,
            });
        }
        if self.queue.len() >= self.config.queue_limit.max(1) {
            self.queue.pop_front();
            self.dropped_frames = self.dropped_frames.saturating_add(1);
            self.events.warn(format!(
                "the RNode is busy and {} frames are already waiting; dropped the oldest \
                 (wait for TxReady before sending more)",
                self.config.queue_limit
            ));
        }
        self.queue.push_back(frame.to_vec());
        self.transmit_next();
        Ok(())
    }

    fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop()
    }

    fn poll_timeout(&self) -> Option<u64> {
        if self.failure.is_some() {
            return Some(self.last_now_ms);
        }
        match self.phase {
            Phase::ExpectDetect {
                since_ms,
                retry_at_ms,
            } => Some(retry_at_ms.min(since_ms.saturating_add(self.config.detect_timeout_ms))),
            Phase::ExpectEcho { deadline_ms, .. } => Some(deadline_ms),
            Phase::Ready => self.in_flight_until_ms,
            Phase::Idle | Phase::Failed => None,
        }
    }

    fn handle_timeout(&mut self, now_ms: u64) -> Result<(), BridgeError> {
        self.last_now_ms = now_ms;
        if let Some(error) = self.failure.take() {
            self.phase = Phase::Failed;
            return Err(error);
        }
        match self.phase {
            Phase::ExpectDetect {
                since_ms,
                retry_at_ms,
            } => {
                let waited_ms = now_ms.saturating_sub(since_ms);
                if waited_ms >= self.config.detect_timeout_ms {
                    self.phase = Phase::Failed;
                    return Err(BridgeError::NoAnswer {
                        kind: RadioKind::Rnode,
                        waited_ms,
                    });
                }
                if now_ms >= retry_at_ms {
                    self.write_detect();
                    self.phase = Phase::ExpectDetect {
                        since_ms,
                        retry_at_ms: now_ms.saturating_add(self.config.detect_retry_ms.max(1)),
                    };
                }
            }
            Phase::ExpectEcho {
                step,
                attempts,
                deadline_ms,
            } => {
                if now_ms >= deadline_ms {
                    if attempts >= ECHO_ATTEMPTS {
                        self.phase = Phase::Failed;
                        return Err(BridgeError::Device(format!(
                            "the RNode answered detect but did not confirm its {} after {} \
                             tries of {} ms: old or incompatible firmware?",
                            step.name(),
                            attempts,
                            self.config.echo_timeout_ms
                        )));
                    }
                    self.phase = Phase::ExpectEcho {
                        step,
                        attempts: attempts + 1,
                        deadline_ms: now_ms.saturating_add(self.config.echo_timeout_ms.max(1)),
                    };
                    self.write(&step.command(&self.params));
                }
            }
            Phase::Ready => {
                if self.in_flight_until_ms.is_some_and(|until| now_ms >= until) {
                    // No READY from the firmware: its frame has had time to go out.
                    self.in_flight_until_ms = None;
                    self.transmit_next();
                    self.events.push(BridgeEvent::TxReady);
                }
            }
            Phase::Idle | Phase::Failed => {}
        }
        Ok(())
    }

    fn max_frame(&self) -> usize {
        self.config.max_frame
    }

    fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
}

/// Settings for a [`KissTnc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KissTncConfig {
    /// The KISS port data frames go out on and are taken from (0 on single-port TNCs).
    pub port: u8,
    /// Largest frame [`Firmware::send_frame`] takes.
    pub max_frame: usize,
    /// The radio's parameters when the user knows them (the TNC is configured elsewhere);
    /// `None` when not: the medium is then a radio of unknown speed.
    pub lora: Option<LoraParams>,
}

impl Default for KissTncConfig {
    fn default() -> Self {
        Self {
            port: 0,
            max_frame: 255,
            lora: None,
        }
    }
}

/// A plain KISS TNC ([`RadioKind::Kiss`]): data frames on one port, nothing to configure.
///
/// Ready as soon as it is reset: KISS has no handshake, so there is no way to tell whether
/// anything is listening. It has no flow control and never reports [`BridgeEvent::TxReady`];
/// frames on other ports and KISS commands from the TNC are ignored.
#[derive(Debug)]
pub struct KissTnc {
    config: KissTncConfig,
    decoder: Decoder,
    ready: bool,
    outgoing: Vec<u8>,
    events: EventQueue,
}

impl Default for KissTnc {
    fn default() -> Self {
        Self::new(KissTncConfig::default())
    }
}

impl KissTnc {
    /// A TNC driver; call [`Firmware::reset`] once the port is open.
    #[must_use]
    pub fn new(config: KissTncConfig) -> Self {
        Self {
            config,
            decoder: Decoder::new(DecoderConfig {
                max_payload_len: config.max_frame.max(kiss::DEFAULT_MAX_PAYLOAD_LEN),
            }),
            ready: false,
            outgoing: Vec::new(),
            events: EventQueue::default(),
        }
    }

    fn info(&self) -> RadioInfo {
        RadioInfo {
            firmware: "KISS TNC".to_owned(),
            lora: self.config.lora,
            max_frame: self.config.max_frame,
            details: vec![("port".to_owned(), self.config.port.to_string())],
        }
    }
}

impl Firmware for KissTnc {
    fn kind(&self) -> RadioKind {
        RadioKind::Kiss
    }

    fn medium(&self) -> Medium {
        Medium::Radio(self.config.lora)
    }

    fn reset(&mut self, _now_ms: u64) {
        self.decoder.reset();
        self.outgoing.clear();
        self.events.clear();
        self.ready = true;
        self.events.push(BridgeEvent::Ready(self.info()));
    }

    fn handle_serial(&mut self, _now_ms: u64, bytes: &[u8]) {
        if !self.ready {
            return;
        }
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            match result {
                Ok(frame) => {
                    if frame.kiss_command() == KissCommand::Data
                        && frame.port() == self.config.port
                        && !frame.payload.is_empty()
                    {
                        self.events.push(BridgeEvent::Received {
                            frame: frame.payload,
                            rssi_dbm: None,
                            snr_db: None,
                        });
                    }
                }
                Err(error) => self.events.warn(format!(
                    "dropped a garbled frame from the KISS TNC: {error}"
                )),
            }
        }
    }

    fn poll_serial(&mut self) -> Option<Vec<u8>> {
        if self.outgoing.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outgoing))
        }
    }

    fn send_frame(&mut self, frame: &[u8]) -> Result<(), BridgeError> {
        if !self.ready {
            return Err(BridgeError::NotReady);
        }
        if frame.len() > self.config.max_frame {
            return Err(BridgeError::FrameTooLarge {
                len: frame.len(),
                max: self.config.max_frame,
            });
        }
        self.outgoing.extend_from_slice(&kiss::encode(&Frame::data(
            self.config.port,
            frame.to_vec(),
        )));
        Ok(())
    }

    fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop()
    }

    fn poll_timeout(&self) -> Option<u64> {
        None
    }

    fn handle_timeout(&mut self, _now_ms: u64) -> Result<(), BridgeError> {
        Ok(())
    }

    fn max_frame(&self) -> usize {
        self.config.max_frame
    }

    fn is_ready(&self) -> bool {
        self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_steps_run_in_reticulum_order() {
        let mut step = Some(Step::FIRST);
        let mut names = Vec::new();
        while let Some(current) = step {
            names.push(current.name());
            step = current.next();
        }
        assert_eq!(
            names,
            [
                "frequency",
                "bandwidth",
                "TX power",
                "spreading factor",
                "coding rate",
                "radio state"
            ]
        );
    }
}
