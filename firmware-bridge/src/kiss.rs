//! KISS framing, and the RNode commands carried in it.
//!
//! KISS is how RNode and most amateur-radio TNCs speak over a serial line: each frame is
//! `FEND, type byte, escaped payload, FEND`, where the type byte is `(port << 4) | command`
//! and the two bytes that would break the framing (FEND, FESC) are escaped inside the
//! payload. A serial line has no message boundaries of its own, so this framing is the only
//! thing that tells a radio where one packet ends. The half-duplex LoRa link that rides on
//! top of it (airtime, channel access, fragmentation) comes later, in its own layer.
//!
//! This module is a pure codec: no serial port, no clock, no threads. [`encode`] turns a
//! [`Frame`] into bytes; a [`Decoder`] is fed whatever bytes the port happened to return
//! ([`Decoder::push`]) and hands out whole frames ([`Decoder::next_frame`]). The decoder is
//! bounded: a frame longer than [`DecoderConfig::max_payload_len`] is refused with a typed
//! error and the decoder resynchronises at the next FEND, so a noisy or hostile line costs at
//! most one frame's worth of memory and never a panic.
//!
//! ```
//! use cairn_firmware_bridge::kiss::{encode, Decoder, Frame, RnodeCommand};
//!
//! let bytes = encode(&RnodeCommand::Frequency(868_100_000).to_frame());
//! assert_eq!(bytes, [0xC0, 0x01, 0x33, 0xBE, 0x27, 0xA0, 0xC0]);
//!
//! let mut decoder = Decoder::default();
//! decoder.push(&bytes[..3]); // the serial port returns bytes in arbitrary pieces
//! assert!(decoder.next_frame().is_none()); // not a whole frame yet: read more
//! decoder.push(&bytes[3..]);
//! let frame = decoder.next_frame().expect("a whole frame").expect("a valid frame");
//! assert_eq!(RnodeCommand::from_frame(&frame), Ok(RnodeCommand::Frequency(868_100_000)));
//! ```

use std::collections::VecDeque;

/// Frame End: starts and ends every frame.
pub const FEND: u8 = 0xC0;
/// Frame Escape: the next byte stands for FEND or FESC inside a payload.
pub const FESC: u8 = 0xDB;
/// Transposed Frame End: `FESC TFEND` is a payload byte 0xC0.
pub const TFEND: u8 = 0xDC;
/// Transposed Frame Escape: `FESC TFESC` is a payload byte 0xDB.
pub const TFESC: u8 = 0xDD;

/// Standard KISS command: a data frame to send or that was received.
pub const CMD_DATA: u8 = 0x00;
/// Standard KISS command: keyup delay, in 10 ms units.
pub const CMD_TXDELAY: u8 = 0x01;
/// Standard KISS command: persistence parameter p of p-persistent CSMA.
pub const CMD_P: u8 = 0x02;
/// Standard KISS command: slot interval, in 10 ms units.
pub const CMD_SLOTTIME: u8 = 0x03;
/// Standard KISS command: time to hold up the TX after the frame (obsolete).
pub const CMD_TXTAIL: u8 = 0x04;
/// Standard KISS command: full duplex on (non-zero) or off.
pub const CMD_FULLDUPLEX: u8 = 0x05;
/// Standard KISS command: hardware-specific settings.
pub const CMD_SETHARDWARE: u8 = 0x06;
/// Standard KISS type byte (the whole byte, not a command nibble): leave KISS mode.
pub const TYPE_RETURN: u8 = 0xFF;

/// RNode command: carrier frequency, u32 Hz big-endian.
pub const RNODE_CMD_FREQUENCY: u8 = 0x01;
/// RNode command: LoRa bandwidth, u32 Hz big-endian.
pub const RNODE_CMD_BANDWIDTH: u8 = 0x02;
/// RNode command: transmit power, u8 dBm.
pub const RNODE_CMD_TXPOWER: u8 = 0x03;
/// RNode command: LoRa spreading factor, u8 (7-12).
pub const RNODE_CMD_SPREADING_FACTOR: u8 = 0x04;
/// RNode command: LoRa coding rate, u8 (5-8, meaning 4/5 to 4/8).
pub const RNODE_CMD_CODING_RATE: u8 = 0x05;
/// RNode command: radio on or off.
pub const RNODE_CMD_RADIO_STATE: u8 = 0x06;
/// RNode command: "are you an RNode?" and its answer.
pub const RNODE_CMD_DETECT: u8 = 0x08;
/// RNode command: the device can take another data frame (flow control).
pub const RNODE_CMD_READY: u8 = 0x0F;
/// First RNode statistics command (0x21 received packets ... 0x29 temperature).
pub const RNODE_CMD_STATISTICS_FIRST: u8 = 0x21;
/// Last RNode statistics command.
pub const RNODE_CMD_STATISTICS_LAST: u8 = 0x29;
/// RNode command: the device reports an error code.
pub const RNODE_CMD_ERROR: u8 = 0x90;

/// Payload of a detect request from the host.
pub const RNODE_DETECT_REQUEST: u8 = 0x73;
/// Payload of a detect response from an RNode.
pub const RNODE_DETECT_RESPONSE: u8 = 0x46;

/// Largest payload a LoRa radio can carry in one frame, with room to spare; the default bound
/// for [`Decoder`]. A LoRa packet is at most 255 bytes, so anything much longer on the serial
/// line is corruption or a peer that is not a radio.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 512;

/// One KISS frame: the type byte and the payload, unescaped.
///
/// The type byte is kept whole rather than split into port and command because RNode uses
/// the full byte as its command (0x21-0x29, 0x90 would otherwise read as ports 2 and 9), and
/// because keeping it raw makes decode-then-encode lossless for every byte value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// `(port << 4) | command` for standard KISS; the whole command for RNode (port 0).
    pub type_byte: u8,
    /// The payload as the radio sent it or will send it, without escapes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame from a type byte and a payload.
    #[must_use]
    pub fn new(type_byte: u8, payload: Vec<u8>) -> Self {
        Self { type_byte, payload }
    }

    /// A standard KISS frame for `command` on `port`. Only the low 4 bits of each are used,
    /// since the type byte has room for nothing more.
    #[must_use]
    pub fn with_port(port: u8, command: u8, payload: Vec<u8>) -> Self {
        Self::new(((port & 0x0F) << 4) | (command & 0x0F), payload)
    }

    /// A data frame on `port` (the packet to put on the air, or one heard on it).
    #[must_use]
    pub fn data(port: u8, payload: Vec<u8>) -> Self {
        Self::with_port(port, CMD_DATA, payload)
    }

    /// The port (high nibble of the type byte), as standard KISS reads it.
    #[must_use]
    pub fn port(&self) -> u8 {
        self.type_byte >> 4
    }

    /// The command as standard KISS reads the type byte.
    #[must_use]
    pub fn kiss_command(&self) -> KissCommand {
        if self.type_byte == TYPE_RETURN {
            return KissCommand::Return;
        }
        match self.type_byte & 0x0F {
            CMD_DATA => KissCommand::Data,
            CMD_TXDELAY => KissCommand::TxDelay,
            CMD_P => KissCommand::Persistence,
            CMD_SLOTTIME => KissCommand::SlotTime,
            CMD_TXTAIL => KissCommand::TxTail,
            CMD_FULLDUPLEX => KissCommand::FullDuplex,
            CMD_SETHARDWARE => KissCommand::SetHardware,
            other => KissCommand::Other(other),
        }
    }
}

/// The command nibble of a standard KISS type byte (KA9Q/K3MC 1987).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KissCommand {
    /// 0x0: a data frame.
    Data,
    /// 0x1: TXDELAY.
    TxDelay,
    /// 0x2: P (persistence).
    Persistence,
    /// 0x3: SLOTTIME.
    SlotTime,
    /// 0x4: TXTAIL.
    TxTail,
    /// 0x5: FULLDUPLEX.
    FullDuplex,
    /// 0x6: SETHARDWARE.
    SetHardware,
    /// Type byte 0xFF: leave KISS mode.
    Return,
    /// Any other command nibble.
    Other(u8),
}

/// Encodes `frame` for the wire: FEND, type byte, escaped payload, FEND.
///
/// The type byte is escaped too if it is FEND or FESC, so that any [`Frame`] round-trips
/// (RNode never sends such a type byte, but nothing else would stop a caller from building
/// one).
#[must_use]
pub fn encode(frame: &Frame) -> Vec<u8> {
    // Worst case every byte doubles; reserving for the common case of few escapes.
    let mut out = Vec::with_capacity(frame.payload.len() + 4);
    out.push(FEND);
    push_escaped(&mut out, frame.type_byte);
    for &byte in &frame.payload {
        push_escaped(&mut out, byte);
    }
    out.push(FEND);
    out
}

fn push_escaped(out: &mut Vec<u8>, byte: u8) {
    match byte {
        FEND => out.extend_from_slice(&[FESC, TFEND]),
        FESC => out.extend_from_slice(&[FESC, TFESC]),
        other => out.push(other),
    }
}

/// Why the decoder refused a frame. Each error costs only that frame: the decoder has
/// already skipped to the next FEND (or will, as bytes arrive) and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KissError {
    /// The frame's payload grew past the configured bound; the rest of it is discarded.
    #[error("KISS frame payload longer than {max} bytes; discarded up to the next FEND")]
    FrameTooLong {
        /// The bound that was exceeded ([`DecoderConfig::max_payload_len`]).
        max: usize,
    },
    /// FESC was followed by something other than TFEND or TFESC.
    #[error("KISS escape byte 0xDB followed by {byte:#04x}, not 0xDC or 0xDD; frame discarded")]
    BadEscape {
        /// The byte that followed FESC.
        byte: u8,
    },
}

/// Limits for a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Longest payload (unescaped, not counting the type byte) the decoder accepts. It is
    /// also the most frame memory the decoder ever holds.
    pub max_payload_len: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        }
    }
}

/// Where the decoder is within the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first FEND, or after an error: ignore everything up to the next FEND.
    /// Bytes before the first FEND are whatever the device printed at boot, or half a frame
    /// we joined late, so they cannot be trusted as a frame.
    Hunting,
    /// After a FEND: collecting the type byte and payload.
    InFrame,
    /// Inside a frame, right after FESC.
    Escaped,
}

/// A streaming KISS decoder: push bytes as the serial port returns them, pull whole frames.
///
/// Input is consumed lazily by [`Decoder::next_frame`], so the decoder's own memory is the
/// bytes pushed and not yet read, plus at most one frame of `max_payload_len + 1` bytes.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: DecoderConfig,
    state: State,
    /// Bytes pushed and not yet examined.
    input: VecDeque<u8>,
    /// The frame being collected: type byte then payload, unescaped. Its length never
    /// exceeds `max_payload_len + 1`.
    frame: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

impl Decoder {
    /// A decoder with the given limits, waiting for its first FEND.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            state: State::Hunting,
            input: VecDeque::new(),
            frame: Vec::new(),
        }
    }

    /// The limits this decoder was built with.
    #[must_use]
    pub fn config(&self) -> DecoderConfig {
        self.config
    }

    /// Hands the decoder bytes read from the line, in whatever pieces they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Forgets any partial frame and unread input, and waits for the next FEND, as after the
    /// serial port was reopened.
    pub fn reset(&mut self) {
        self.state = State::Hunting;
        self.input.clear();
        self.frame.clear();
    }

    /// The next whole frame, or the error that ended a frame; `None` means the pushed bytes
    /// hold no complete frame yet (push more), not that anything went wrong.
    ///
    /// Empty frames (FEND FEND, which senders use as padding and to flush the line) are
    /// skipped.
    #[must_use]
    pub fn next_frame(&mut self) -> Option<Result<Frame, KissError>> {
        while let Some(byte) = self.input.pop_front() {
            match self.state {
                State::Hunting => {
                    if byte == FEND {
                        self.start_frame();
                    }
                }
                State::InFrame => match byte {
                    FEND => {
                        if let Some((&type_byte, payload)) = self.frame.split_first() {
                            let frame = Frame::new(type_byte, payload.to_vec());
                            self.start_frame();
                            return Some(Ok(frame));
                        }
                        // FEND FEND: an empty frame, nothing to hand out.
                    }
                    FESC => self.state = State::Escaped,
                    other => {
                        if let Err(error) = self.collect(other) {
                            return Some(Err(error));
                        }
                    }
                },
                State::Escaped => {
                    let unescaped = match byte {
                        TFEND => FEND,
                        TFESC => FESC,
                        other => {
                            // A FEND here still begins the next frame: the sender may have
                            // been cut off mid-escape, and its next frame is good.
                            if other == FEND {
                                self.start_frame();
                            } else {
                                self.discard_frame();
                            }
                            return Some(Err(KissError::BadEscape { byte: other }));
                        }
                    };
                    self.state = State::InFrame;
                    if let Err(error) = self.collect(unescaped) {
                        return Some(Err(error));
                    }
                }
            }
        }
        None
    }

    fn start_frame(&mut self) {
        self.frame.clear();
        self.state = State::InFrame;
    }

    fn discard_frame(&mut self) {
        self.frame.clear();
        self.state = State::Hunting;
    }

    /// Appends one unescaped byte to the frame, or refuses the frame if that would take it
    /// past the bound (the type byte is the `+ 1`).
    fn collect(&mut self, byte: u8) -> Result<(), KissError> {
        if self.frame.len() > self.config.max_payload_len {
            self.discard_frame();
            return Err(KissError::FrameTooLong {
                max: self.config.max_payload_len,
            });
        }
        if self.frame.len() == self.frame.capacity() {
            // Grow by hand rather than let Vec double, so capacity never passes the bound.
            let limit = self.config.max_payload_len.saturating_add(1);
            let target = self.frame.len().saturating_mul(2).max(64).min(limit);
            self.frame.reserve_exact(target - self.frame.len());
        }
        self.frame.push(byte);
        Ok(())
    }
}

/// Radio state an RNode reports or is told to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RadioState {
    /// 0x00: radio off, nothing sent or heard.
    Off,
    /// 0x01: radio on with the configured parameters.
    On,
}

/// An RNode command: a KISS frame on port 0 whose type byte RNode reads as a command.
///
/// Values are big-endian, as the RNode firmware writes them. The same frame can be sent by
/// the host (to set a value) and by the device (to report the value it took), so one type
/// serves both directions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RnodeCommand {
    /// 0x00: a packet to transmit, or one received.
    Data(Vec<u8>),
    /// 0x01: carrier frequency in Hz.
    Frequency(u32),
    /// 0x02: LoRa bandwidth in Hz.
    Bandwidth(u32),
    /// 0x03: transmit power in dBm.
    TxPower(u8),
    /// 0x04: LoRa spreading factor.
    SpreadingFactor(u8),
    /// 0x05: LoRa coding rate (5-8 for 4/5-4/8).
    CodingRate(u8),
    /// 0x06: radio on or off.
    RadioState(RadioState),
    /// 0x08: [`RNODE_DETECT_REQUEST`] from the host, [`RNODE_DETECT_RESPONSE`] from a device.
    Detect(u8),
    /// 0x0F: the device can take another data frame; the payload is kept as sent.
    Ready(Vec<u8>),
    /// 0x21-0x29: a statistic (received/sent counts, RSSI, SNR, channel time, physical
    /// parameters, battery, CSMA, temperature); the raw value is kept until a caller needs
    /// one of them typed.
    Statistics {
        /// The statistics command, 0x21 to 0x29.
        command: u8,
        /// The value as sent.
        value: Vec<u8>,
    },
    /// 0x90: the device reports an error code.
    Error(u8),
    /// Any other command (firmware version, board, ROM, ...), kept as sent.
    Other(u8, Vec<u8>),
}

/// Why a KISS frame is not the RNode command its type byte names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RnodeError {
    /// The command's value has a fixed size and the payload is not that size.
    #[error("RNode command {command:#04x} needs a {expected}-byte value, got {actual} bytes")]
    WrongValueLength {
        /// The command byte.
        command: u8,
        /// Bytes the command's value takes.
        expected: usize,
        /// Bytes the payload had.
        actual: usize,
    },
    /// The radio state byte is neither off (0x00) nor on (0x01).
    #[error("RNode radio state {0:#04x} is neither off (0x00) nor on (0x01)")]
    UnknownRadioState(u8),
}

impl RnodeCommand {
    /// The command byte (the whole KISS type byte, port 0).
    #[must_use]
    pub fn command_byte(&self) -> u8 {
        match self {
            Self::Data(_) => CMD_DATA,
            Self::Frequency(_) => RNODE_CMD_FREQUENCY,
            Self::Bandwidth(_) => RNODE_CMD_BANDWIDTH,
            Self::TxPower(_) => RNODE_CMD_TXPOWER,
            Self::SpreadingFactor(_) => RNODE_CMD_SPREADING_FACTOR,
            Self::CodingRate(_) => RNODE_CMD_CODING_RATE,
            Self::RadioState(_) => RNODE_CMD_RADIO_STATE,
            Self::Detect(_) => RNODE_CMD_DETECT,
            Self::Ready(_) => RNODE_CMD_READY,
            Self::Statistics { command, .. } => *command,
            Self::Error(_) => RNODE_CMD_ERROR,
            Self::Other(command, _) => *command,
        }
    }

    /// The KISS frame that carries this command.
    #[must_use]
    pub fn to_frame(&self) -> Frame {
        let payload = match self {
            Self::Data(bytes) | Self::Ready(bytes) => bytes.clone(),
            Self::Statistics { value, .. } => value.clone(),
            Self::Other(_, bytes) => bytes.clone(),
            Self::Frequency(hz) | Self::Bandwidth(hz) => hz.to_be_bytes().to_vec(),
            Self::TxPower(value)
            | Self::SpreadingFactor(value)
            | Self::CodingRate(value)
            | Self::Detect(value)
            | Self::Error(value) => vec![*value],
            Self::RadioState(RadioState::Off) => vec![0x00],
            Self::RadioState(RadioState::On) => vec![0x01],
        };
        Frame::new(self.command_byte(), payload)
    }

    /// Reads a KISS frame as an RNode command.
    ///
    /// # Errors
    ///
    /// A known command whose value has the wrong size, or a radio state that is neither on
    /// nor off. Unknown commands are not errors: they come back as [`RnodeCommand::Other`].
    pub fn from_frame(frame: &Frame) -> Result<Self, RnodeError> {
        let command = frame.type_byte;
        let payload = frame.payload.as_slice();
        Ok(match command {
            CMD_DATA => Self::Data(payload.to_vec()),
            RNODE_CMD_FREQUENCY => Self::Frequency(u32::from_be_bytes(fixed(command, payload)?)),
            RNODE_CMD_BANDWIDTH => Self::Bandwidth(u32::from_be_bytes(fixed(command, payload)?)),
            RNODE_CMD_TXPOWER => Self::TxPower(single(command, payload)?),
            RNODE_CMD_SPREADING_FACTOR => Self::SpreadingFactor(single(command, payload)?),
            RNODE_CMD_CODING_RATE => Self::CodingRate(single(command, payload)?),
            RNODE_CMD_RADIO_STATE => match single(command, payload)? {
                0x00 => Self::RadioState(RadioState::Off),
                0x01 => Self::RadioState(RadioState::On),
                other => return Err(RnodeError::UnknownRadioState(other)),
            },
            RNODE_CMD_DETECT => Self::Detect(single(command, payload)?),
            RNODE_CMD_READY => Self::Ready(payload.to_vec()),
            RNODE_CMD_STATISTICS_FIRST..=RNODE_CMD_STATISTICS_LAST => Self::Statistics {
                command,
                value: payload.to_vec(),
            },
            RNODE_CMD_ERROR => Self::Error(single(command, payload)?),
            other => Self::Other(other, payload.to_vec()),
        })
    }
}

fn fixed<const N: usize>(command: u8, payload: &[u8]) -> Result<[u8; N], RnodeError> {
    payload
        .try_into()
        .map_err(|_| RnodeError::WrongValueLength {
            command,
            expected: N,
            actual: payload.len(),
        })
}

fn single(command: u8, payload: &[u8]) -> Result<u8, RnodeError> {
    fixed::<1>(command, payload).map(|[byte]| byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, KissError>> {
        let mut decoder = Decoder::default();
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    #[test]
    fn data_frame_with_fend_and_fesc_inside_is_escaped() {
        let frame = Frame::data(0, vec![0x01, FEND, 0x02, FESC, 0x03]);
        let bytes = encode(&frame);
        assert_eq!(
            bytes,
            [0xC0, 0x00, 0x01, 0xDB, 0xDC, 0x02, 0xDB, 0xDD, 0x03, 0xC0]
        );
        assert_eq!(decode_all(&bytes), vec![Ok(frame)]);
    }

    #[test]
    fn bytes_before_the_first_fend_are_ignored() {
        let mut bytes = b"boot banner\r\n".to_vec();
        bytes.extend(encode(&Frame::data(0, b"hi".to_vec())));
        assert_eq!(decode_all(&bytes), vec![Ok(Frame::data(0, b"hi".to_vec()))]);
    }

    #[test]
    fn an_unfinished_frame_is_not_yet_a_frame() {
        let mut decoder = Decoder::default();
        decoder.push(&[FEND, 0x00, 0x41, FESC]);
        assert_eq!(decoder.next_frame(), None);
        decoder.push(&[TFEND, FEND]);
        assert_eq!(
            decoder.next_frame(),
            Some(Ok(Frame::data(0, vec![0x41, FEND])))
        );
        assert_eq!(decoder.next_frame(), None);
    }
}
