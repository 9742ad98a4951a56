//! # cairn-firmware-bridge: radio firmware over serial
//!
//! A Cairn node reaches a LoRa radio (or another laptop, over a cable) through a serial port.
//! What it says on that port depends on the firmware: KISS/RNode, the Meshtastic serial API,
//! or Cairn's own framing for direct cables. This crate holds, for each of them, a **pure**
//! state machine that speaks it: bytes read from the port and `now` go in; bytes to write,
//! frames heard on air, deadlines and events come out. No port, no clock, no threads: the node
//! drives them with a real serial port ([`cairn_transports`]' serial driver), the tests and
//! the simulator with a virtual radio.
//!
//! * [`Firmware`]: the host side, what a node runs for each `--serial PATH --radio KIND`.
//! * [`DeviceSide`]: the device side, what a virtual radio runs to look like real firmware.
//! * [`LoraParams`]: the physical parameters both sides agree on.
//!
//! [`cairn_transports`]: https://example.invalid/cairn

pub mod channel;
pub mod kiss;
pub mod lora;
pub mod meshtastic;
pub mod raw;
pub mod rnode;
pub mod rnode_device;

/// Which firmware protocol speaks on a serial port (`--radio KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RadioKind {
    /// Cairn's own framing, for a direct cable between two devices: no radio at all.
    Raw,
    /// A plain KISS TNC: data frames on port 0, no radio configuration.
    Kiss,
    /// An RNode: KISS plus its radio commands; the host configures the radio.
    Rnode,
    /// A stock Meshtastic device through its serial API, carrying Cairn frames on PRIVATE_APP.
    Meshtastic,
}

impl RadioKind {
    /// The name used on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Kiss => "kiss",
            Self::Rnode => "rnode",
            Self::Meshtastic => "meshtastic",
        }
    }

    /// Every kind, in the order the command line lists them.
    pub const ALL: [RadioKind; 4] = [Self::Raw, Self::Kiss, Self::Rnode, Self::Meshtastic];
}

impl std::str::FromStr for RadioKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                format!("unknown radio kind {s:?}: expected raw, kiss, rnode or meshtastic")
            })
    }
}

impl std::fmt::Display for RadioKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// LoRa physical parameters: what the host asks an RNode to use, what a virtual radio
/// simulates, and what time-on-air is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoraParams {
    /// Carrier frequency in Hz.
    pub frequency_hz: u32,
    /// Bandwidth in Hz (125 000, 250 000, 500 000, ...).
    pub bandwidth_hz: u32,
    /// Spreading factor, 5 to 12.
    pub spreading_factor: u8,
    /// Coding rate denominator, 5 to 8 (4/5 to 4/8).
    pub coding_rate: u8,
    /// Transmit power in dBm.
    pub tx_power_dbm: u8,
    /// Preamble length in symbols (8 on RNode and most LoRa stacks).
    pub preamble_symbols: u16,
}

impl LoraParams {
    /// EU868 g1 at SF7, 125 kHz, CR 4/5, 14 dBm: the fast end of LoRa.
    #[must_use]
    pub const fn sf7() -> Self {
        Self {
            frequency_hz: 868_100_000,
            bandwidth_hz: 125_000,
            spreading_factor: 7,
            coding_rate: 5,
            tx_power_dbm: 14,
            preamble_symbols: 8,
        }
    }

    /// The same channel at SF12: the longest reach and the slowest frames.
    #[must_use]
    pub const fn sf12() -> Self {
        Self {
            spreading_factor: 12,
            ..Self::sf7()
        }
    }
}

impl Default for LoraParams {
    fn default() -> Self {
        Self::sf7()
    }
}

/// What a bearer is physically: it decides how a link paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// A point-to-point cable: full duplex, no airtime, one peer.
    Cable,
    /// A shared half-duplex radio channel with these parameters (known when the host
    /// configured them, as for an RNode; `None` when the firmware chose them, as Meshtastic).
    Radio(Option<LoraParams>),
}

/// What the firmware reported about itself and its radio (`cairn radio info`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RadioInfo {
    /// Firmware name and version as the device reports it.
    pub firmware: String,
    /// Radio parameters in force, when known.
    pub lora: Option<LoraParams>,
    /// Largest frame the device carries in one transmission.
    pub max_frame: usize,
    /// Anything else the firmware reported, as `(name, value)` lines for people.
    pub details: Vec<(String, String)>,
}

/// What a host-side firmware driver reports.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeEvent {
    /// The device answered and is configured: frames can go out now.
    Ready(RadioInfo),
    /// A frame heard on air (or received over the cable), with signal figures when known.
    Received {
        /// The frame, exactly as the peer's host sent it.
        frame: Vec<u8>,
        /// Received signal strength in dBm, when the firmware reports it.
        rssi_dbm: Option<i16>,
        /// Signal-to-noise ratio in dB, when the firmware reports it.
        snr_db: Option<f32>,
    },
    /// The device can take another frame (flow control, where the firmware has it).
    TxReady,
    /// Updated figures (statistics, battery, channel load) read back from the device.
    Info(RadioInfo),
    /// Something a person may want in the log: a garbled frame skipped, a firmware error.
    Warning(String),
}

/// Why a firmware driver gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The device never answered the handshake: wrong port, wrong baud rate, wrong firmware.
    #[error("the device on this port did not answer as {kind} firmware within {waited_ms} ms (wrong port, baud rate or --radio?)")]
    NoAnswer {
        /// The firmware we expected.
        kind: RadioKind,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The device refused what we asked (an RNode error code, a Meshtastic rejection).
    #[error("the device reported an error: {0}")]
    Device(String),
    /// A frame larger than the device carries.
    #[error("a {len}-byte frame is larger than the {max}-byte frames this radio carries")]
    FrameTooLarge {
        /// Bytes asked to send.
        len: usize,
        /// Most the device takes.
        max: usize,
    },
    /// Not configured yet: [`BridgeEvent::Ready`] has not been reported.
    #[error("the radio is not ready yet")]
    NotReady,
}

/// The host side of a firmware protocol: a pure state machine per serial port.
///
/// The caller owns the port and the clock. It writes what [`Firmware::poll_serial`] returns,
/// feeds what it reads to [`Firmware::handle_serial`], calls [`Firmware::handle_timeout`] at
/// [`Firmware::poll_timeout`], and takes events from [`Firmware::poll_event`]. After the port
/// was reopened (a USB radio unplugged and back), it calls [`Firmware::reset`] and the driver
/// starts its handshake again.
pub trait Firmware: Send + std::fmt::Debug {
    /// Which protocol this is.
    fn kind(&self) -> RadioKind;
    /// What the bearer is, for pacing.
    fn medium(&self) -> Medium;
    /// Starts (or restarts, after the port was reopened) the handshake with the device.
    fn reset(&mut self, now_ms: u64);
    /// Bytes read from the serial port, in whatever pieces the port returned them.
    fn handle_serial(&mut self, now_ms: u64, bytes: &[u8]);
    /// Bytes to write to the serial port next.
    fn poll_serial(&mut self) -> Option<Vec<u8>>;
    /// Queues one frame for transmission (on air, or over the cable).
    ///
    /// # Errors
    ///
    /// [`BridgeError::NotReady`] before the handshake finished;
    /// [`BridgeError::FrameTooLarge`] past [`Firmware::max_frame`].
    fn send_frame(&mut self, frame: &[u8]) -> Result<(), BridgeError>;
    /// The next event.
    fn poll_event(&mut self) -> Option<BridgeEvent>;
    /// When [`Firmware::handle_timeout`] wants to be called, in ms.
    fn poll_timeout(&self) -> Option<u64>;
    /// Retries and deadlines.
    ///
    /// # Errors
    ///
    /// The device did not answer in time, or refused the configuration.
    fn handle_timeout(&mut self, now_ms: u64) -> Result<(), BridgeError>;
    /// Largest frame [`Firmware::send_frame`] takes.
    fn max_frame(&self) -> usize;
    /// Whether the handshake finished and frames can go out.
    fn is_ready(&self) -> bool;
}

/// The device side of a firmware protocol, as a virtual radio runs it: it reads what a host
/// writes to the serial port, answers like the firmware would, and hands frames to the
/// simulated channel.
pub trait DeviceSide: Send + std::fmt::Debug {
    /// Bytes the host wrote to the serial port.
    fn handle_host(&mut self, now_ms: u64, bytes: &[u8]);
    /// Bytes the device writes back to the host.
    fn poll_host(&mut self) -> Option<Vec<u8>>;
    /// A frame the host asked to transmit, once the radio is on.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// A frame the radio heard on air.
    fn handle_received(&mut self, frame: &[u8], rssi_dbm: i16, snr_db: f32);
    /// The transmission the channel took from [`DeviceSide::poll_transmit`] finished.
    fn handle_transmitted(&mut self);
    /// Radio parameters in force, or `None` while the radio is off.
    fn lora_params(&self) -> Option<LoraParams>;
    /// Largest frame the device puts on air.
    fn max_frame(&self) -> usize;
}

/// The host-side driver for `kind`: what `cairn run --serial PATH --radio KIND` runs on the
/// port. `lora` configures radios whose host sets the parameters (RNode); the others keep
/// their own. `seed` feeds whatever a driver must draw (Meshtastic's `want_config_id`).
#[must_use]
pub fn host(kind: RadioKind, lora: LoraParams, seed: [u8; 32]) -> Box<dyn Firmware> {
    match kind {
        RadioKind::Raw => Box::new(raw::RawCable::new(raw::RawCableConfig::default())),
        RadioKind::Kiss => Box::new(rnode::KissTnc::new(rnode::KissTncConfig::default())),
        RadioKind::Rnode => Box::new(rnode::RnodeHost::new(lora, rnode::RnodeConfig::default())),
        RadioKind::Meshtastic => {
            let mut word = [0u8; 8];
            word.copy_from_slice(&seed[..8]);
            Box::new(meshtastic::MeshtasticHost::new(u64::from_le_bytes(word)))
        }
    }
}
