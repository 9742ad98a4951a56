//! Device sides of KISS firmware, for virtual radios: an RNode ([`RnodeDevice`]) and a plain
//! KISS TNC ([`KissTncDevice`]).
//!
//! A virtual radio has to look like the real thing to the host on the other end of the serial
//! port, or the host code tested against it proves nothing. So [`RnodeDevice`] answers the
//! way the RNode firmware does (markqvist/RNode_Firmware: `Framing.h` for the command bytes,
//! `RNode_Firmware.ino` `serialCallback` for the behaviour, `Utilities.h` `kiss_indicate_*`
//! for the answers), for everything a host needs to find the device, configure the radio and
//! exchange frames:
//!
//! * detect (`0x08 0x73` → `0x08 0x46`), firmware version (`0x50` → major, minor), platform
//!   (`0x48`), MCU (`0x49`) and board (`0x47`): what Reticulum's `RNodeInterface.detect()`
//!   sends in one burst, `FEND 08 73 FEND 50 00 FEND 48 00 FEND 49 00 FEND`;
//! * frequency, bandwidth, TX power, spreading factor, coding rate: each set command is echoed
//!   with the value in force (clamped as the firmware clamps it), and a "query" value (0 for
//!   frequency and bandwidth, 0xFF for the one-byte settings) only echoes. Hosts check every
//!   echo against what they asked for and refuse to go on if one differs;
//! * radio state: on only once frequency, bandwidth, TX power and spreading factor are all
//!   set (the firmware's "radio lock"); the state is echoed either way. Turning on (and
//!   retuning while on) first reports the PHY timing (`0x26`, [`RnodePhy`]), which is how a
//!   host learns the preamble RNode chose;
//! * data: queued while the radio is on and handed to the channel one frame at a time; after
//!   each transmission the device reports `CMD_READY 0x01` so a host that paces itself on
//!   it sends the next. A frame while the radio is off gets `CMD_ERROR 0x02` (TX failed), a
//!   frame past the queue gets `CMD_ERROR 0x04` (queue full);
//! * each frame heard is preceded by its RSSI (`0x23`, `rssi + 157`) and SNR (`0x24`, SNR × 4
//!   as a signed byte), as the firmware writes them;
//! * statistics queries for packets received and sent (`0x21`, `0x22`), airtime locks
//!   (`0x0B`, `0x0C`, echoed, not enforced) and the reset command (`0x55 0xF8`).
//!
//! Commands a host does not need to run a radio (EEPROM, display, Bluetooth, firmware
//! update) are ignored, as the firmware ignores commands it does not know.
//!
//! One deliberate difference: a real RNode prepends a one-byte header to each LoRa packet and
//! splits host frames longer than 254 bytes over two packets (up to 508). Cairn keeps its
//! frames within one LoRa packet, so this device carries up to [`RnodeDeviceConfig::max_frame`]
//! (255) bytes per packet with no header, and refuses longer frames with "TX failed".
//!
//! Both devices are pure: bytes in, bytes out, no clock, no port.

use std::collections::VecDeque;

use crate::kiss::{
    encode, Decoder, Frame, RadioState, RnodeCommand, CMD_DATA, RNODE_CMD_DETECT, RNODE_CMD_ERROR,
    RNODE_CMD_READY, RNODE_DETECT_REQUEST, RNODE_DETECT_RESPONSE,
};
use crate::rnode::{
    RNODE_CMD_BOARD, RNODE_CMD_FW_VERSION, RNODE_CMD_MCU, RNODE_CMD_PLATFORM, RNODE_CMD_RESET,
    RNODE_ERROR_QUEUE_FULL, RNODE_ERROR_TX_FAILED, RNODE_RESET_BYTE, RNODE_RSSI_OFFSET,
    RNODE_STAT_PHY, RNODE_STAT_RSSI, RNODE_STAT_RX, RNODE_STAT_SNR, RNODE_STAT_TX,
};
use crate::{DeviceSide, LoraParams};

/// RNode command: radio lock state (1 while the radio cannot start for want of settings).
pub const RNODE_CMD_RADIO_LOCK: u8 = 0x07;
/// RNode command: the host is going away (payload 0xFF).
pub const RNODE_CMD_LEAVE: u8 = 0x0A;
/// RNode command: short-term airtime limit, u16 big-endian in hundredths of a percent.
pub const RNODE_CMD_ST_ALOCK: u8 = 0x0B;
/// RNode command: long-term airtime limit, u16 big-endian in hundredths of a percent.
pub const RNODE_CMD_LT_ALOCK: u8 = 0x0C;
/// `platform` byte of an ESP32 RNode (Boards.h `PLATFORM_ESP32`).
pub const RNODE_PLATFORM_ESP32: u8 = 0x80;
/// `mcu` byte of an ESP32 RNode (Boards.h `MCU_ESP32`).
pub const RNODE_MCU_ESP32: u8 = 0x81;
/// Board byte of a LilyGO T3 v2.1 (Boards.h `BOARD_LORA32_V2_1`), a common RNode.
pub const RNODE_BOARD_LORA32_V2_1: u8 = 0x37;

/// RSSI as RNode reports it: `rssi + 157`, saturated into a byte (-157 to +98 dBm).
#[must_use]
pub fn rssi_to_byte(rssi_dbm: i16) -> u8 {
    let shifted = rssi_dbm.saturating_add(RNODE_RSSI_OFFSET).clamp(0, 255);
    u8::try_from(shifted).unwrap_or(u8::MAX)
}

/// The RSSI in dBm an RNode's RSSI byte stands for.
#[must_use]
pub fn rssi_from_byte(byte: u8) -> i16 {
    i16::from(byte) - RNODE_RSSI_OFFSET
}

/// SNR as RNode reports it: quarter dB steps in a signed byte (-32 to +31.75 dB), rounded
/// to the nearest step.
#[must_use]
pub fn snr_to_byte(snr_db: f32) -> u8 {
    let quarters = (snr_db * 4.0).round().clamp(-128.0, 127.0);
    // In range after the clamp; NaN (from a NaN SNR) becomes 0 dB.
    (quarters as i8).to_le_bytes()[0]
}

/// The SNR in dB an RNode's SNR byte stands for.
#[must_use]
pub fn snr_from_byte(byte: u8) -> f32 {
    f32::from(i8::from_le_bytes([byte])) * 0.25
}

/// The PHY timing a current RNode firmware derives from its radio settings, and reports to
/// the host (`0x26`) whenever they change while the radio is on (Utilities.h
/// `updateBitrate`, `kiss_indicate_phy_stats`). Hosts take the preamble from it: RNode picks
/// its own, see [`rnode_preamble_symbols`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RnodePhy {
    /// One symbol, µs.
    pub symbol_time_us: u16,
    /// Symbols per second.
    pub symbol_rate: u16,
    /// Preamble length, symbols.
    pub preamble_symbols: u16,
    /// Preamble length, ms (rounded up).
    pub preamble_time_ms: u16,
    /// CSMA slot, ms: twelve symbols, kept within 24-100 ms (6 ms minimum on fast links).
    pub csma_slot_ms: u16,
    /// DIFS, ms: two slots.
    pub difs_ms: u16,
}

impl RnodePhy {
    /// The figures for a radio on `bandwidth_hz`, `spreading_factor`, `coding_rate`.
    #[must_use]
    pub fn new(bandwidth_hz: u32, spreading_factor: u8, coding_rate: u8) -> Self {
        let sf = u32::from(spreading_factor.clamp(6, 12));
        let bw = u64::from(bandwidth_hz.max(1));
        let chips = 1u64 << sf;
        let fast = rnode_bitrate(bandwidth_hz, spreading_factor, coding_rate) > 30_000;
        let preamble_symbols = rnode_preamble_symbols(bandwidth_hz, spreading_factor, coding_rate);
        let symbol_time_ns = chips * 1_000_000_000 / bw;
        let slot_min_ms = if fast { 24 - 18 } else { 24 };
        let mut csma_slot_ms = symbol_time_ns * 12 / 1_000_000; // truncated, as `(int)`
        if csma_slot_ms > 100 {
            csma_slot_ms = 100;
        }
        if csma_slot_ms < 24 {
            csma_slot_ms = slot_min_ms;
        }
        let preamble_time_ms = (u64::from(preamble_symbols) * symbol_time_ns).div_ceil(1_000_000);
        Self {
            symbol_time_us: saturate(symbol_time_ns / 1_000),
            symbol_rate: saturate(bw / chips),
            preamble_symbols,
            preamble_time_ms: saturate(preamble_time_ms),
            csma_slot_ms: saturate(csma_slot_ms),
            difs_ms: saturate(2 * csma_slot_ms),
        }
    }

    /// The `0x26` report's twelve value bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        [
            self.symbol_time_us,
            self.symbol_rate,
            self.preamble_symbols,
            self.preamble_time_ms,
            self.csma_slot_ms,
            self.difs_ms,
        ]
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect()
    }
}

fn saturate(value: u64) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

/// On-air bit rate as RNode computes it: `SF * (4 / CR) * BW / 2^SF` bit/s.
fn rnode_bitrate(bandwidth_hz: u32, spreading_factor: u8, coding_rate: u8) -> u64 {
    let sf = u32::from(spreading_factor.clamp(6, 12));
    let cr = u64::from(coding_rate.clamp(5, 8));
    u64::from(sf) * 4 * u64::from(bandwidth_hz) / (cr * (1u64 << sf))
}

/// The preamble a current RNode firmware (1.7x/1.8x on ESP32 and nRF52) configures: about
/// 24 ms long, never under 18 symbols (6 ms for links over 30 kbit/s). Config.h
/// `LORA_PREAMBLE_TARGET_MS`, `LORA_PREAMBLE_SYMBOLS_MIN`, `LORA_PREAMBLE_FAST_DELTA`;
/// Utilities.h `updateBitrate`. Longer than the 8 symbols most stacks use, so it matters to
/// the airtime of every frame: +16 symbols at SF7, +10 at SF12.
#[must_use]
pub fn rnode_preamble_symbols(bandwidth_hz: u32, spreading_factor: u8, coding_rate: u8) -> u16 {
    const SYMBOLS_MIN: u64 = 18;
    let sf = u32::from(spreading_factor.clamp(6, 12));
    let bw = u64::from(bandwidth_hz);
    let chips = 1u64 << sf;
    let fast = rnode_bitrate(bandwidth_hz, spreading_factor, coding_rate) > 30_000;
    let target_ms: u64 = if fast { 24 - 18 } else { 24 };
    // target_ms / symbol time = target_ms * BW / (1000 * 2^SF) symbols, rounded up.
    let target = (target_ms * bw).div_ceil(1000 * chips);
    u16::try_from(target.max(SYMBOLS_MIN)).unwrap_or(u16::MAX)
}

/// The bandwidth an SX127x actually runs when asked for `requested_hz`: the next supported
/// one up (the LoRa library's `setSignalBandwidth`), 500 kHz past the top.
#[must_use]
pub fn sx127x_bandwidth(requested_hz: u32) -> u32 {
    const SUPPORTED: [u32; 10] = [
        7_800, 10_400, 15_600, 20_800, 31_250, 41_700, 62_500, 125_000, 250_000, 500_000,
    ];
    SUPPORTED
        .into_iter()
        .find(|&bandwidth| requested_hz <= bandwidth)
        .unwrap_or(500_000)
}

/// Most frames a device keeps for its host before dropping the oldest: a host that stopped
/// reading (or a closed port) costs bounded memory, as a real serial buffer overflows.
const MAX_HOST_FRAMES: usize = 256;

/// How the virtual RNode describes itself and how much it queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RnodeDeviceConfig {
    /// Firmware version reported, major and minor (1.85 = `(1, 85)`; Reticulum requires at
    /// least 1.52).
    pub firmware_version: (u8, u8),
    /// Platform byte reported ([`RNODE_PLATFORM_ESP32`]).
    pub platform: u8,
    /// MCU byte reported ([`RNODE_MCU_ESP32`]).
    pub mcu: u8,
    /// Board byte reported ([`RNODE_BOARD_LORA32_V2_1`]).
    pub board: u8,
    /// Highest transmit power the board takes, dBm; higher requests are clamped (17 on
    /// SX1276 boards).
    pub max_tx_power_dbm: u8,
    /// Largest frame carried in one LoRa packet.
    pub max_frame: usize,
    /// Most frames waiting for the air before [`RNODE_ERROR_QUEUE_FULL`].
    pub max_queued_frames: usize,
}

impl Default for RnodeDeviceConfig {
    /// An ESP32 LilyGO T3 v2.1 running RNode firmware 1.85 (the version in Config.h at the
    /// time of writing).
    fn default() -> Self {
        Self {
            firmware_version: (1, 85),
            platform: RNODE_PLATFORM_ESP32,
            mcu: RNODE_MCU_ESP32,
            board: RNODE_BOARD_LORA32_V2_1,
            max_tx_power_dbm: 17,
            max_frame: 255,
            max_queued_frames: 32,
        }
    }
}

/// The device side of an RNode: see the [module documentation](self) for what it answers.
///
/// Like the firmware with nothing saved in EEPROM, it boots unconfigured with the radio off:
/// the host sets frequency, bandwidth, TX power and spreading factor, then turns it on.
#[derive(Debug, Clone)]
pub struct RnodeDevice {
    config: RnodeDeviceConfig,
    decoder: Decoder,
    /// Encoded frames for the host, oldest first, at most [`MAX_HOST_FRAMES`].
    to_host: VecDeque<Vec<u8>>,
    /// Frames waiting for the air, at most `config.max_queued_frames`.
    queue: VecDeque<Vec<u8>>,
    /// 0 until set, as the firmware's `lora_freq`.
    frequency_hz: u32,
    /// 0 until set.
    bandwidth_hz: u32,
    /// `None` until set (the firmware's 0xFF).
    tx_power_dbm: Option<u8>,
    /// 0 until set.
    spreading_factor: u8,
    /// 5 (4/5) until set.
    coding_rate: u8,
    radio_on: bool,
    short_term_airtime_lock: [u8; 2],
    long_term_airtime_lock: [u8; 2],
    packets_received: u32,
    packets_sent: u32,
    last_rssi: u8,
    last_snr: u8,
}

impl RnodeDevice {
    /// A freshly booted RNode: unconfigured, radio off.
    #[must_use]
    pub fn new(config: RnodeDeviceConfig) -> Self {
        Self {
            config,
            decoder: Decoder::default(),
            to_host: VecDeque::new(),
            queue: VecDeque::new(),
            frequency_hz: 0,
            bandwidth_hz: 0,
            tx_power_dbm: None,
            spreading_factor: 0,
            coding_rate: 5,
            radio_on: false,
            short_term_airtime_lock: [0, 0],
            long_term_airtime_lock: [0, 0],
            packets_received: 0,
            packets_sent: 0,
            last_rssi: 0,
            last_snr: 0x80,
        }
    }

    /// The description this device gives of itself.
    #[must_use]
    pub fn config(&self) -> RnodeDeviceConfig {
        self.config
    }

    /// Whether the radio is on.
    #[must_use]
    pub fn is_radio_on(&self) -> bool {
        self.radio_on
    }

    /// Frames waiting for the air.
    #[must_use]
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// The firmware's radio lock: something the radio needs has not been set.
    fn radio_locked(&self) -> bool {
        self.frequency_hz == 0
            || self.bandwidth_hz == 0
            || self.tx_power_dbm.is_none()
            || self.spreading_factor == 0
    }

    fn queue_full(&self) -> bool {
        self.queue.len() >= self.config.max_queued_frames
    }

    /// The bandwidth reported and used: once the radio runs, the one the chip really uses.
    fn bandwidth_in_force(&self) -> u32 {
        if self.radio_on {
            sx127x_bandwidth(self.bandwidth_hz)
        } else {
            self.bandwidth_hz
        }
    }

    fn reply(&mut self, command: &RnodeCommand) {
        push_bounded(&mut self.to_host, encode(&command.to_frame()));
    }

    fn reply_raw(&mut self, command: u8, payload: Vec<u8>) {
        push_bounded(&mut self.to_host, encode(&Frame::new(command, payload)));
    }

    fn handle_frame(&mut self, frame: &Frame) {
        let Ok(command) = RnodeCommand::from_frame(frame) else {
            // A known command with a value of the wrong size: the firmware waits for the
            // bytes it needs and never acts on a short frame. Ignore it likewise.
            return;
        };
        match command {
            RnodeCommand::Data(frame) => self.handle_data(frame),
            RnodeCommand::Frequency(hz) => {
                if hz != 0 {
                    self.frequency_hz = hz;
                }
                self.reply(&RnodeCommand::Frequency(self.frequency_hz));
            }
            RnodeCommand::Bandwidth(hz) => {
                if hz != 0 {
                    self.bandwidth_hz = hz;
                    self.report_phy_if_on();
                }
                self.reply(&RnodeCommand::Bandwidth(self.bandwidth_in_force()));
            }
            RnodeCommand::TxPower(dbm) => {
                if dbm != 0xFF {
                    self.tx_power_dbm = Some(dbm.min(self.config.max_tx_power_dbm));
                }
                self.reply(&RnodeCommand::TxPower(self.tx_power_dbm.unwrap_or(0xFF)));
            }
            RnodeCommand::SpreadingFactor(sf) => {
                if sf != 0xFF {
                    self.spreading_factor = sf.clamp(6, 12);
                    self.report_phy_if_on();
                }
                self.reply(&RnodeCommand::SpreadingFactor(self.spreading_factor));
            }
            RnodeCommand::CodingRate(cr) => {
                if cr != 0xFF {
                    self.coding_rate = cr.clamp(5, 8);
                    self.report_phy_if_on();
                }
                self.reply(&RnodeCommand::CodingRate(self.coding_rate));
            }
            RnodeCommand::RadioState(RadioState::On) => {
                let was_on = self.radio_on;
                self.radio_on = !self.radio_locked();
                if self.radio_on && !was_on {
                    self.report_phy();
                }
                self.reply_radio_state();
            }
            RnodeCommand::RadioState(RadioState::Off) => {
                self.radio_on = false;
                self.queue.clear();
                self.reply_radio_state();
            }
            RnodeCommand::Detect(RNODE_DETECT_REQUEST) => {
                self.reply(&RnodeCommand::Detect(RNODE_DETECT_RESPONSE));
            }
            RnodeCommand::Ready(_) => {
                let ready = u8::from(!self.queue_full());
                self.reply(&RnodeCommand::Ready(vec![ready]));
            }
            RnodeCommand::Statistics { command, .. } => self.handle_statistics(command),
            RnodeCommand::Other(command, payload) => self.handle_other(command, &payload),
            // Detect with another byte, an error or anything else sent *to* a device: the
            // firmware does nothing with them.
            _ => {}
        }
    }

    fn handle_data(&mut self, frame: Vec<u8>) {
        if frame.is_empty() {
            return; // the firmware's MIN_L: nothing to send
        }
        if !self.radio_on || frame.len() > self.config.max_frame {
            self.reply(&RnodeCommand::Error(RNODE_ERROR_TX_FAILED));
        } else if self.queue_full() {
            self.reply(&RnodeCommand::Error(RNODE_ERROR_QUEUE_FULL));
        } else {
            self.queue.push_back(frame);
        }
    }

    /// The PHY timing in force.
    fn phy(&self) -> RnodePhy {
        RnodePhy::new(
            self.bandwidth_in_force(),
            self.spreading_factor,
            self.coding_rate,
        )
    }

    /// What the firmware reports when the radio starts, and when a setting that changes the
    /// timing arrives while it runs.
    fn report_phy(&mut self) {
        let bytes = self.phy().to_bytes();
        self.reply_raw(RNODE_STAT_PHY, bytes);
    }

    fn report_phy_if_on(&mut self) {
        if self.radio_on {
            self.report_phy();
        }
    }

    fn reply_radio_state(&mut self) {
        let state = if self.radio_on {
            RadioState::On
        } else {
            RadioState::Off
        };
        self.reply(&RnodeCommand::RadioState(state));
    }

    fn handle_statistics(&mut self, command: u8) {
        match command {
            RNODE_STAT_RX => {
                self.reply_raw(command, self.packets_received.to_be_bytes().to_vec());
            }
            RNODE_STAT_TX => self.reply_raw(command, self.packets_sent.to_be_bytes().to_vec()),
            RNODE_STAT_RSSI => self.reply_raw(command, vec![self.last_rssi]),
            _ => {}
        }
    }

    fn handle_other(&mut self, command: u8, payload: &[u8]) {
        match command {
            RNODE_CMD_FW_VERSION => {
                let (major, minor) = self.config.firmware_version;
                self.reply_raw(command, vec![major, minor]);
            }
            RNODE_CMD_PLATFORM => self.reply_raw(command, vec![self.config.platform]),
            RNODE_CMD_MCU => self.reply_raw(command, vec![self.config.mcu]),
            RNODE_CMD_BOARD => self.reply_raw(command, vec![self.config.board]),
            RNODE_CMD_RADIO_LOCK => {
                self.reply_raw(command, vec![u8::from(self.radio_locked())]);
            }
            RNODE_CMD_ST_ALOCK | RNODE_CMD_LT_ALOCK => {
                if let Ok(value) = <[u8; 2]>::try_from(payload) {
                    if command == RNODE_CMD_ST_ALOCK {
                        self.short_term_airtime_lock = value;
                    } else {
                        self.long_term_airtime_lock = value;
                    }
                    self.reply_raw(command, value.to_vec());
                }
            }
            RNODE_CMD_RESET if payload == [RNODE_RESET_BYTE] => {
                // What was already written to the host stays written.
                let to_host = std::mem::take(&mut self.to_host);
                *self = Self::new(self.config);
                self.to_host = to_host;
                // What the firmware writes when it boots.
                self.reply_raw(RNODE_CMD_RESET, vec![RNODE_RESET_BYTE]);
            }
            // RNODE_CMD_LEAVE and everything else: nothing to answer.
            _ => {}
        }
    }
}

impl Default for RnodeDevice {
    fn default() -> Self {
        Self::new(RnodeDeviceConfig::default())
    }
}

impl DeviceSide for RnodeDevice {
    fn handle_host(&mut self, _now_ms: u64, bytes: &[u8]) {
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            // A garbled frame costs only itself, as on the firmware's parser.
            if let Ok(frame) = result {
                self.handle_frame(&frame);
            }
        }
    }

    fn poll_host(&mut self) -> Option<Vec<u8>> {
        self.to_host.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if !self.radio_on {
            return None;
        }
        let frame = self.queue.pop_front()?;
        self.packets_sent = self.packets_sent.wrapping_add(1);
        Some(frame)
    }

    fn handle_received(&mut self, frame: &[u8], rssi_dbm: i16, snr_db: f32) {
        if !self.radio_on {
            return;
        }
        self.packets_received = self.packets_received.wrapping_add(1);
        self.last_rssi = rssi_to_byte(rssi_dbm);
        self.last_snr = snr_to_byte(snr_db);
        self.reply_raw(RNODE_STAT_RSSI, vec![self.last_rssi]);
        self.reply_raw(RNODE_STAT_SNR, vec![self.last_snr]);
        self.reply(&RnodeCommand::Data(frame.to_vec()));
    }

    fn handle_transmitted(&mut self) {
        self.reply(&RnodeCommand::Ready(vec![0x01]));
    }

    fn lora_params(&self) -> Option<LoraParams> {
        if !self.radio_on {
            return None;
        }
        let bandwidth_hz = self.bandwidth_in_force();
        Some(LoraParams {
            frequency_hz: self.frequency_hz,
            bandwidth_hz,
            spreading_factor: self.spreading_factor,
            coding_rate: self.coding_rate,
            tx_power_dbm: self.tx_power_dbm.unwrap_or(0),
            preamble_symbols: self.phy().preamble_symbols,
        })
    }

    fn max_frame(&self) -> usize {
        self.config.max_frame
    }
}

/// The device side of a plain KISS TNC: data frames on port 0 in both directions, nothing
/// else. Its radio is always on with fixed parameters (a TNC is configured out of band),
/// it has no flow control and reports no signal figures. KISS parameter commands (TXDELAY,
/// persistence, slot time...) are accepted and ignored: they tune AFSK keying, not LoRa.
#[derive(Debug, Clone)]
pub struct KissTncDevice {
    params: LoraParams,
    max_frame: usize,
    max_queued_frames: usize,
    decoder: Decoder,
    to_host: VecDeque<Vec<u8>>,
    queue: VecDeque<Vec<u8>>,
}

impl KissTncDevice {
    /// A TNC on `params`, carrying frames of up to 255 bytes and queueing up to 32. Frames
    /// past either bound are dropped, as a TNC with a full buffer drops them.
    #[must_use]
    pub fn new(params: LoraParams) -> Self {
        Self {
            params,
            max_frame: 255,
            max_queued_frames: 32,
            decoder: Decoder::default(),
            to_host: VecDeque::new(),
            queue: VecDeque::new(),
        }
    }
}

impl DeviceSide for KissTncDevice {
    fn handle_host(&mut self, _now_ms: u64, bytes: &[u8]) {
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            let Ok(frame) = result else { continue };
            if frame.type_byte == CMD_DATA
                && !frame.payload.is_empty()
                && frame.payload.len() <= self.max_frame
                && self.queue.len() < self.max_queued_frames
            {
                self.queue.push_back(frame.payload);
            }
        }
    }

    fn poll_host(&mut self) -> Option<Vec<u8>> {
        self.to_host.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front()
    }

    fn handle_received(&mut self, frame: &[u8], _rssi_dbm: i16, _snr_db: f32) {
        push_bounded(&mut self.to_host, encode(&Frame::data(0, frame.to_vec())));
    }

    fn handle_transmitted(&mut self) {}

    fn lora_params(&self) -> Option<LoraParams> {
        Some(self.params)
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }
}

fn push_bounded(queue: &mut VecDeque<Vec<u8>>, bytes: Vec<u8>) {
    if queue.len() >= MAX_HOST_FRAMES {
        queue.pop_front();
    }
    queue.push_back(bytes);
}

// The command bytes this module relies on from kiss.rs, checked against Framing.h.
const _: () = assert!(RNODE_CMD_DETECT == 0x08 && RNODE_CMD_READY == 0x0F);
const _: () = assert!(RNODE_CMD_ERROR == 0x90);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kiss::{FEND, RNODE_CMD_FREQUENCY};

    /// Everything the device wrote to the host, decoded.
    fn answers(device: &mut impl DeviceSide) -> Vec<Frame> {
        let mut decoder = Decoder::default();
        while let Some(bytes) = device.poll_host() {
            decoder.push(&bytes);
        }
        std::iter::from_fn(|| decoder.next_frame())
            .map(|frame| frame.unwrap())
            .collect()
    }

    fn send(device: &mut impl DeviceSide, commands: &[RnodeCommand]) {
        let bytes: Vec<u8> = commands
            .iter()
            .flat_map(|command| encode(&command.to_frame()))
            .collect();
        device.handle_host(0, &bytes);
    }

    fn configure(device: &mut RnodeDevice) {
        send(
            device,
            &[
                RnodeCommand::Frequency(868_100_000),
                RnodeCommand::Bandwidth(125_000),
                RnodeCommand::TxPower(14),
                RnodeCommand::SpreadingFactor(7),
                RnodeCommand::CodingRate(5),
                RnodeCommand::RadioState(RadioState::On),
            ],
        );
    }

    #[test]
    fn answers_reticulums_detect_burst_byte_for_byte() {
        // RNodeInterface.detect(): frames share their FENDs.
        let burst = [
            FEND, 0x08, 0x73, FEND, 0x50, 0x00, FEND, 0x48, 0x00, FEND, 0x49, 0x00, FEND,
        ];
        let mut device = RnodeDevice::default();
        device.handle_host(0, &burst);
        let mut bytes = Vec::new();
        while let Some(chunk) = device.poll_host() {
            bytes.extend(chunk);
        }
        assert_eq!(
            bytes,
            [
                FEND, 0x08, 0x46, FEND, // detect response
                FEND, 0x50, 0x01, 0x55, FEND, // firmware 1.85
                FEND, 0x48, 0x80, FEND, // ESP32 platform
                FEND, 0x49, 0x81, FEND, // ESP32 MCU
            ]
        );
    }

    #[test]
    fn echoes_every_setting_and_turns_the_radio_on() {
        let mut device = RnodeDevice::default();
        assert_eq!(device.lora_params(), None);
        configure(&mut device);
        let expected: Vec<Frame> = [
            RnodeCommand::Frequency(868_100_000),
            RnodeCommand::Bandwidth(125_000),
            RnodeCommand::TxPower(14),
            RnodeCommand::SpreadingFactor(7),
            RnodeCommand::CodingRate(5),
        ]
        .iter()
        .map(RnodeCommand::to_frame)
        .chain([
            // Symbol 1024 µs, 976 symbols/s, preamble 24 symbols = 25 ms, slot 24 ms,
            // DIFS 48 ms.
            Frame::new(
                RNODE_STAT_PHY,
                vec![0x04, 0x00, 0x03, 0xD0, 0, 24, 0, 25, 0, 24, 0, 48],
            ),
            RnodeCommand::RadioState(RadioState::On).to_frame(),
        ])
        .collect();
        assert_eq!(answers(&mut device), expected);
        assert_eq!(
            device.lora_params(),
            Some(LoraParams {
                preamble_symbols: 24,
                ..LoraParams::sf7()
            })
        );
    }

    #[test]
    fn the_radio_stays_off_until_it_has_what_it_needs() {
        let mut device = RnodeDevice::default();
        send(
            &mut device,
            &[
                RnodeCommand::Frequency(868_100_000),
                RnodeCommand::RadioState(RadioState::On),
                RnodeCommand::Other(RNODE_CMD_RADIO_LOCK, vec![0xFF]),
            ],
        );
        let frames = answers(&mut device);
        assert_eq!(
            frames[1],
            RnodeCommand::RadioState(RadioState::Off).to_frame()
        );
        assert_eq!(frames[2], Frame::new(RNODE_CMD_RADIO_LOCK, vec![1]));
        assert!(!device.is_radio_on());
    }

    #[test]
    fn values_are_clamped_like_the_firmware_and_queries_only_echo() {
        let mut device = RnodeDevice::default();
        send(
            &mut device,
            &[
                RnodeCommand::TxPower(30),
                RnodeCommand::SpreadingFactor(4),
                RnodeCommand::CodingRate(9),
                RnodeCommand::Frequency(0),
                RnodeCommand::SpreadingFactor(0xFF),
                RnodeCommand::Bandwidth(100_000),
            ],
        );
        assert_eq!(
            answers(&mut device),
            vec![
                RnodeCommand::TxPower(17).to_frame(),
                RnodeCommand::SpreadingFactor(6).to_frame(),
                RnodeCommand::CodingRate(8).to_frame(),
                RnodeCommand::Frequency(0).to_frame(),
                RnodeCommand::SpreadingFactor(6).to_frame(),
                // Reported as asked while the radio is off...
                RnodeCommand::Bandwidth(100_000).to_frame(),
            ]
        );
        send(
            &mut device,
            &[
                RnodeCommand::Frequency(868_100_000),
                RnodeCommand::RadioState(RadioState::On),
                RnodeCommand::Bandwidth(0),
            ],
        );
        // ...and as the chip runs it once on: the next SX127x step up.
        assert_eq!(
            answers(&mut device).last(),
            Some(&RnodeCommand::Bandwidth(125_000).to_frame())
        );
        assert_eq!(device.lora_params().map(|p| p.bandwidth_hz), Some(125_000));
    }

    #[test]
    fn frames_flow_only_while_the_radio_is_on() {
        let mut device = RnodeDevice::default();
        send(&mut device, &[RnodeCommand::Data(b"too early".to_vec())]);
        assert_eq!(
            answers(&mut device),
            vec![RnodeCommand::Error(RNODE_ERROR_TX_FAILED).to_frame()]
        );
        assert_eq!(device.poll_transmit(), None);

        configure(&mut device);
        let _ = answers(&mut device);
        send(
            &mut device,
            &[
                RnodeCommand::Data(vec![FEND, 1, 2]),
                RnodeCommand::Data(b"second".to_vec()),
            ],
        );
        assert_eq!(device.poll_transmit(), Some(vec![FEND, 1, 2]));
        device.handle_transmitted();
        assert_eq!(
            answers(&mut device),
            vec![RnodeCommand::Ready(vec![1]).to_frame()]
        );
        assert_eq!(device.poll_transmit(), Some(b"second".to_vec()));
        assert_eq!(device.poll_transmit(), None);
    }

    #[test]
    fn a_full_queue_and_an_oversized_frame_are_refused() {
        let mut device = RnodeDevice::new(RnodeDeviceConfig {
            max_queued_frames: 2,
            ..RnodeDeviceConfig::default()
        });
        configure(&mut device);
        let _ = answers(&mut device);
        send(
            &mut device,
            &[
                RnodeCommand::Data(vec![1]),
                RnodeCommand::Data(vec![2]),
                RnodeCommand::Data(vec![3]),
                RnodeCommand::Data(vec![0; 256]),
                RnodeCommand::Ready(vec![0xFF]),
            ],
        );
        assert_eq!(
            answers(&mut device),
            vec![
                RnodeCommand::Error(RNODE_ERROR_QUEUE_FULL).to_frame(),
                RnodeCommand::Error(RNODE_ERROR_TX_FAILED).to_frame(),
                RnodeCommand::Ready(vec![0]).to_frame(),
            ]
        );
        assert_eq!(device.queued_frames(), 2);
    }

    #[test]
    fn a_heard_frame_comes_with_rssi_and_snr_in_rnode_encoding() {
        let mut device = RnodeDevice::default();
        device.handle_received(b"ignored while off", -90, 7.5);
        assert!(answers(&mut device).is_empty());
        configure(&mut device);
        let _ = answers(&mut device);
        device.handle_received(&[0xC0, 0xDB], -90, -7.25);
        let bytes: Vec<u8> = std::iter::from_fn(|| device.poll_host())
            .flatten()
            .collect();
        assert_eq!(
            bytes,
            [
                FEND, 0x23, 67, FEND, // -90 + 157
                FEND, 0x24, 0xE3, FEND, // -7.25 * 4 = -29 = 0xE3
                FEND, 0x00, 0xDB, 0xDC, 0xDB, 0xDD, FEND, // the frame, escaped
            ]
        );
        send(
            &mut device,
            &[RnodeCommand::Statistics {
                command: RNODE_STAT_RX,
                value: vec![],
            }],
        );
        assert_eq!(
            answers(&mut device),
            vec![Frame::new(RNODE_STAT_RX, vec![0, 0, 0, 1])]
        );
    }

    #[test]
    fn signal_encodings_round_trip_and_saturate() {
        assert_eq!(rssi_to_byte(-157), 0);
        assert_eq!(rssi_to_byte(-200), 0);
        assert_eq!(rssi_to_byte(100), 255);
        assert_eq!(rssi_from_byte(rssi_to_byte(-120)), -120);
        assert_eq!(snr_to_byte(7.5), 30);
        assert_eq!(snr_from_byte(snr_to_byte(-12.25)), -12.25);
        assert_eq!(snr_from_byte(snr_to_byte(-100.0)), -32.0);
        assert_eq!(snr_from_byte(snr_to_byte(100.0)), 31.75);
        assert_eq!(snr_to_byte(f32::NAN), 0);
    }

    #[test]
    fn rnode_preambles_follow_the_firmware() {
        // SF7/125: 24 ms / 1.024 ms = 23.4 -> 24 symbols.
        assert_eq!(rnode_preamble_symbols(125_000, 7, 5), 24);
        // SF12/125: 24 ms is under one 32.8 ms symbol -> the 18-symbol minimum.
        assert_eq!(rnode_preamble_symbols(125_000, 12, 5), 18);
        // SF7/500 runs at 21.9 kbit/s (not "fast"): 24 ms / 0.256 ms = 93.75 -> 94.
        assert_eq!(rnode_preamble_symbols(500_000, 7, 5), 94);
        // SF6/500 at 37.5 kbit/s is "fast": 6 ms / 0.128 ms = 46.9 -> 47.
        assert_eq!(rnode_preamble_symbols(500_000, 6, 5), 47);
    }

    #[test]
    fn phy_figures_follow_the_firmware() {
        // SF12/125: symbol 32.768 ms -> slot 12 * 32.768 = 393 ms, capped at 100 ms.
        assert_eq!(
            RnodePhy::new(125_000, 12, 5),
            RnodePhy {
                symbol_time_us: 32_768,
                symbol_rate: 30,
                preamble_symbols: 18,
                preamble_time_ms: 590, // 18 * 32.768 = 589.8
                csma_slot_ms: 100,
                difs_ms: 200,
            }
        );
        // SF6/500 is a fast link: slot 12 * 0.128 = 1.5 ms -> the fast minimum of 6 ms.
        let fast = RnodePhy::new(500_000, 6, 5);
        assert_eq!((fast.csma_slot_ms, fast.difs_ms), (6, 12));
    }

    #[test]
    fn retuning_a_running_radio_reports_the_new_timing() {
        let mut device = RnodeDevice::default();
        configure(&mut device);
        let _ = answers(&mut device);
        send(&mut device, &[RnodeCommand::SpreadingFactor(12)]);
        assert_eq!(
            answers(&mut device),
            vec![
                Frame::new(RNODE_STAT_PHY, RnodePhy::new(125_000, 12, 5).to_bytes()),
                RnodeCommand::SpreadingFactor(12).to_frame(),
            ]
        );
        assert_eq!(device.lora_params().map(|p| p.preamble_symbols), Some(18));
    }

    #[test]
    fn airtime_locks_are_echoed_and_reset_reboots() {
        let mut device = RnodeDevice::default();
        configure(&mut device);
        send(
            &mut device,
            &[
                RnodeCommand::Other(RNODE_CMD_ST_ALOCK, vec![0x03, 0xE8]),
                RnodeCommand::Other(RNODE_CMD_RESET, vec![RNODE_RESET_BYTE]),
            ],
        );
        let frames = answers(&mut device);
        let tail = &frames[frames.len() - 2..];
        assert_eq!(tail[0], Frame::new(RNODE_CMD_ST_ALOCK, vec![0x03, 0xE8]));
        assert_eq!(tail[1], Frame::new(RNODE_CMD_RESET, vec![RNODE_RESET_BYTE]));
        assert!(!device.is_radio_on());
    }

    #[test]
    fn garbage_and_short_values_are_ignored() {
        let mut device = RnodeDevice::default();
        device.handle_host(0, b"\xC0\x01\x00\x01\xC0 noise \xDB\x00\xC0\xC0\x99\xC0");
        assert!(answers(&mut device).is_empty());
        // A frequency frame needs four value bytes.
        device.handle_host(0, &[FEND, RNODE_CMD_FREQUENCY, 1, 2, 3, FEND]);
        assert!(answers(&mut device).is_empty());
    }

    #[test]
    fn kiss_tnc_carries_data_frames_only() {
        let mut device = KissTncDevice::new(LoraParams::sf12());
        assert_eq!(device.lora_params(), Some(LoraParams::sf12()));
        let mut bytes = encode(&Frame::with_port(0, 0x01, vec![50])); // TXDELAY: ignored
        bytes.extend(encode(&Frame::data(0, b"one".to_vec())));
        bytes.extend(encode(&Frame::data(1, b"port one".to_vec()))); // not port 0
        device.handle_host(0, &bytes);
        assert_eq!(device.poll_transmit(), Some(b"one".to_vec()));
        assert_eq!(device.poll_transmit(), None);
        device.handle_transmitted();
        assert!(answers(&mut device).is_empty());
        device.handle_received(b"heard", -100, 2.0);
        assert_eq!(
            answers(&mut device),
            vec![Frame::data(0, b"heard".to_vec())]
        );
    }

    #[test]
    fn output_for_a_host_that_never_reads_is_bounded() {
        let mut device = KissTncDevice::new(LoraParams::sf7());
        for i in 0..1_000u32 {
            device.handle_received(&i.to_be_bytes(), -90, 5.0);
        }
        let frames = answers(&mut device);
        assert_eq!(frames.len(), MAX_HOST_FRAMES);
        assert_eq!(frames[0], Frame::data(0, 744u32.to_be_bytes().to_vec()));
    }
}
