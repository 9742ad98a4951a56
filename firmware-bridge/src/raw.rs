//! Cairn's own framing for a direct serial cable: two laptops on an RS-232 or USB-serial
//! cable, or a pseudo-terminal pair in tests. No radio, no firmware: the peer is another Cairn
//! node running the same code.
//!
//! # Wire format
//!
//! ```text
//! FLAG | escaped( VERSION | payload | CRC-32C(VERSION | payload), little-endian ) | FLAG
//! ```
//!
//! * **HDLC-like byte stuffing** (RFC 1662): FLAG 0x7E delimits frames; inside a frame FLAG
//!   and ESC 0x7D are sent as `ESC, byte ^ 0x20`. It is what Reticulum uses on serial lines,
//!   costs about 0.8 % on random data, and lets a receiver that joined mid-stream or lost
//!   bytes to noise find the next frame boundary by looking for one byte value.
//! * **A version byte** ([`CABLE_VERSION`]) starts every frame. A frame that passes the
//!   checksum but carries another version is from a peer speaking a different (newer or older)
//!   cable protocol: that is not noise, and silently dropping every one of its frames would
//!   look like a dead cable. The driver stops with [`BridgeError::Device`] naming both
//!   versions instead, so the user learns to update one of the two nodes. It also lets a
//!   future version add frame types without guessing. One byte per frame is nothing next to
//!   the checksum.
//! * **CRC-32C** (Castagnoli, the iSCSI/ext4 polynomial; `crc::CRC_32_ISCSI`) over the
//!   unescaped version and payload, sent least significant byte first (the bit order of a
//!   reflected CRC, as PPP sends its FCS). A serial cable carries noise exactly when it
//!   matters least to notice it: plugging in, a peer booting and printing a banner, a baud
//!   mismatch. Each such burst becomes a "frame" between two flags; a 16-bit check would wave
//!   one in 65 536 of them through to the layer above, a 32-bit one one in 4 billion. Among
//!   32-bit CRCs, Castagnoli's detects every 5-bit error in frames up to 655 bytes (Hamming
//!   distance 6), where the Ethernet polynomial only reaches 4-bit errors past 371 bytes
//!   (Koopman's tables), at the same cost. Two extra bytes per frame are free on a cable.
//!
//! The decoder is bounded: a frame longer than [`DEFAULT_MAX_FRAME`] (or the configured
//! bound) plus its five bytes of overhead is refused with [`RawError::FrameTooLong`] and the
//! decoder skips to the next FLAG. Every refused frame costs only itself: noise, a flipped
//! byte or a truncated frame is dropped, counted, reported as a [`BridgeEvent::Warning`], and
//! the frames after it come through.
//!
//! ```
//! use cairn_firmware_bridge::raw::{encode, Decoder};
//!
//! let bytes = encode(b"hi");
//! assert_eq!(bytes, [0x7E, 0x01, 0x68, 0x69, 0x14, 0x9F, 0xD9, 0xC1, 0x7E]);
//!
//! let mut decoder = Decoder::new(1024);
//! decoder.push(&bytes[..4]); // the serial port returns bytes in arbitrary pieces
//! assert!(decoder.next_frame().is_none()); // not a whole frame yet: read more
//! decoder.push(&bytes[4..]);
//! assert_eq!(decoder.next_frame(), Some(Ok(b"hi".to_vec())));
//! ```

use std::collections::VecDeque;

use crate::{BridgeError, BridgeEvent, Firmware, Medium, RadioInfo, RadioKind};

/// Delimits frames: starts and ends every frame.
pub const FLAG: u8 = 0x7E;
/// Escape: the next byte, XORed with [`ESCAPE_XOR`], is a FLAG or ESC inside a frame.
pub const ESC: u8 = 0x7D;
/// What an escaped byte is XORed with.
pub const ESCAPE_XOR: u8 = 0x20;

/// The cable protocol version, the first byte of every frame.
pub const CABLE_VERSION: u8 = 0x01;

/// Bytes a frame carries besides its payload, before escaping: the version byte and the
/// 4-byte CRC.
pub const FRAME_OVERHEAD: usize = 1 + CHECKSUM_LEN;

/// Largest payload [`RawCable`] sends and accepts unless configured otherwise. Cairn's hop
/// frames stay well under it; larger frames would only lengthen what one noise burst costs.
pub const DEFAULT_MAX_FRAME: usize = 1024;

const CHECKSUM_LEN: usize = 4;

/// CRC-32C (Castagnoli): see the module docs for why this one.
const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// At most this many warnings wait in a driver's event queue; past it, further garbled
/// frames are only counted, so a noisy or hostile line cannot grow the queue without bound.
const MAX_PENDING_WARNINGS: usize = 16;

/// Encodes one payload for the cable: FLAG, escaped version, payload and CRC, FLAG.
#[must_use]
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut digest = CASTAGNOLI.digest();
    digest.update(&[CABLE_VERSION]);
    digest.update(payload);
    let checksum = digest.finalize().to_le_bytes();

    // Worst case every byte doubles; reserve for the common case of few escapes.
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD + 4);
    out.push(FLAG);
    push_escaped(&mut out, CABLE_VERSION);
    for &byte in payload.iter().chain(&checksum) {
        push_escaped(&mut out, byte);
    }
    out.push(FLAG);
    out
}

fn push_escaped(out: &mut Vec<u8>, byte: u8) {
    if byte == FLAG || byte == ESC {
        out.extend_from_slice(&[ESC, byte ^ ESCAPE_XOR]);
    } else {
        out.push(byte);
    }
}

/// Why the decoder refused a frame. Each error costs only that frame: the decoder has already
/// moved on to the next FLAG (or will, as bytes arrive).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// The frame grew past the bound; the rest of it is discarded up to the next FLAG.
    #[error("cable frame longer than {max} payload bytes; discarded up to the next flag")]
    FrameTooLong {
        /// The payload bound that was exceeded.
        max: usize,
    },
    /// Too few bytes between two flags to hold a version byte and a checksum: a fragment of
    /// a frame, or noise.
    #[error("{len}-byte cable frame is too short to hold a version and a checksum")]
    TooShort {
        /// Unescaped bytes between the flags.
        len: usize,
    },
    /// The checksum does not match: bytes were lost, flipped or inserted on the line.
    #[error("cable frame checksum {received:#010x} does not match its content ({computed:#010x}); bytes were lost or garbled on the line")]
    BadChecksum {
        /// The checksum the frame carried.
        received: u32,
        /// The checksum of what arrived.
        computed: u32,
    },
    /// ESC followed by FLAG: the sender aborted the frame (HDLC's abort sequence), or noise.
    #[error("cable frame aborted (escape byte followed by a flag)")]
    Aborted,
    /// The frame is intact but speaks another version of the cable protocol.
    #[error("the peer speaks Cairn cable protocol version {version}, this node speaks version {CABLE_VERSION}")]
    UnknownVersion {
        /// The version byte the frame carried.
        version: u8,
    },
}

/// Where the decoder is within the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first FLAG, or after a frame was refused: skip to the next FLAG. Bytes
    /// before the first FLAG are half a frame we joined late, or whatever the port held.
    Hunting,
    /// After a FLAG: collecting the frame.
    InFrame,
    /// Inside a frame, right after ESC.
    Escaped,
}

/// A streaming cable-frame decoder: push bytes as the serial port returns them, pull whole
/// payloads.
///
/// Input is consumed lazily by [`Decoder::next_frame`], so the decoder's own memory is the
/// bytes pushed and not yet read plus at most one frame of `max_frame + 5` bytes.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
    state: State,
    /// Bytes pushed and not yet examined.
    input: VecDeque<u8>,
    /// The frame being collected, unescaped: version, payload, checksum. Never longer than
    /// `max_frame + FRAME_OVERHEAD`.
    frame: Vec<u8>,
}

impl Decoder {
    /// A decoder that accepts payloads of up to `max_frame` bytes, waiting for its first FLAG.
    #[must_use]
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame,
            state: State::Hunting,
            input: VecDeque::new(),
            frame: Vec::new(),
        }
    }

    /// The largest payload this decoder accepts.
    #[must_use]
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Hands the decoder bytes read from the line, in whatever pieces they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Forgets any partial frame and unread input and waits for the next FLAG, as after the
    /// serial port was reopened.
    pub fn reset(&mut self) {
        self.state = State::Hunting;
        self.input.clear();
        self.frame.clear();
    }

    /// The next whole payload, or the error that ended a frame; `None` means the pushed bytes
    /// hold no complete frame yet (push more), not that anything went wrong.
    ///
    /// Empty frames (two flags in a row, as between back-to-back frames) are skipped.
    #[must_use]
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, RawError>> {
        while let Some(byte) = self.input.pop_front() {
            match self.state {
                State::Hunting => {
                    if byte == FLAG {
                        self.start_frame();
                    }
                }
                State::InFrame => match byte {
                    FLAG => {
                        if self.frame.is_empty() {
                            continue;
                        }
                        let result = check_frame(&self.frame);
                        self.start_frame();
                        return Some(result);
                    }
                    ESC => self.state = State::Escaped,
                    other => {
                        if let Err(error) = self.collect(other) {
                            return Some(Err(error));
                        }
                    }
                },
                State::Escaped => {
                    if byte == FLAG {
                        // The flag still begins the next frame: only this one is lost.
                        self.start_frame();
                        return Some(Err(RawError::Aborted));
                    }
                    self.state = State::InFrame;
                    if let Err(error) = self.collect(byte ^ ESCAPE_XOR) {
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

    /// Appends one unescaped byte, or refuses the frame if that would take it past the bound.
    fn collect(&mut self, byte: u8) -> Result<(), RawError> {
        let limit = self.max_frame.saturating_add(FRAME_OVERHEAD);
        if self.frame.len() >= limit {
            self.frame.clear();
            self.state = State::Hunting;
            return Err(RawError::FrameTooLong {
                max: self.max_frame,
            });
        }
        if self.frame.len() == self.frame.capacity() {
            // Grow by hand rather than let Vec double, so capacity never passes the bound.
            let target = self.frame.len().saturating_mul(2).max(64).min(limit);
            self.frame.reserve_exact(target - self.frame.len());
        }
        self.frame.push(byte);
        Ok(())
    }
}

/// Checks an unescaped frame (version, payload, checksum) and returns its payload.
fn check_frame(frame: &[u8]) -> Result<Vec<u8>, RawError> {
    if frame.len() < FRAME_OVERHEAD {
        return Err(RawError::TooShort { len: frame.len() });
    }
    let (content, checksum) = frame.split_at(frame.len() - CHECKSUM_LEN);
    let mut received = [0u8; CHECKSUM_LEN];
    received.copy_from_slice(checksum);
    let received = u32::from_le_bytes(received);
    let computed = CASTAGNOLI.checksum(content);
    if received != computed {
        return Err(RawError::BadChecksum { received, computed });
    }
    match content.split_first() {
        Some((&CABLE_VERSION, payload)) => Ok(payload.to_vec()),
        Some((&version, _)) => Err(RawError::UnknownVersion { version }),
        // Unreachable: `content` holds at least the version byte. Treated as noise anyway.
        None => Err(RawError::TooShort { len: frame.len() }),
    }
}

/// Settings for a [`RawCable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCableConfig {
    /// Largest payload sent or accepted. Both ends should agree; a peer's larger frames are
    /// refused as [`RawError::FrameTooLong`].
    pub max_frame: usize,
}

impl Default for RawCableConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// The host side of a direct serial cable to another Cairn node ([`RadioKind::Raw`]).
///
/// There is nothing to configure and no device to ask: it is ready as soon as it is
/// [reset](Firmware::reset). It has no flow control either (a cable is full duplex and the
/// UART paces the bytes), so it never reports [`BridgeEvent::TxReady`].
#[derive(Debug)]
pub struct RawCable {
    config: RawCableConfig,
    decoder: Decoder,
    ready: bool,
    /// Encoded frames not yet handed to the port, already concatenated.
    outgoing: Vec<u8>,
    events: VecDeque<BridgeEvent>,
    /// Warnings in `events` not yet polled, to bound them.
    pending_warnings: usize,
    /// Garbled frames dropped without a warning because too many were pending.
    unreported: u64,
    /// Why the link stopped; returned by the next `handle_timeout`.
    failure: Option<BridgeError>,
    /// The latest `now` the caller gave, for `poll_timeout` when a failure is pending.
    last_now_ms: u64,
    dropped_frames: u64,
}

impl Default for RawCable {
    fn default() -> Self {
        Self::new(RawCableConfig::default())
    }
}

impl RawCable {
    /// A cable driver; call [`Firmware::reset`] once the port is open.
    #[must_use]
    pub fn new(config: RawCableConfig) -> Self {
        Self {
            config,
            decoder: Decoder::new(config.max_frame),
            ready: false,
            outgoing: Vec::new(),
            events: VecDeque::new(),
            pending_warnings: 0,
            unreported: 0,
            failure: None,
            last_now_ms: 0,
            dropped_frames: 0,
        }
    }

    /// Garbled or oversized frames dropped since this driver was created.
    #[must_use]
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }

    fn info(&self) -> RadioInfo {
        RadioInfo {
            firmware: format!("Cairn cable framing v{CABLE_VERSION}"),
            lora: None,
            max_frame: self.config.max_frame,
            details: vec![(
                "framing".to_owned(),
                "HDLC-like byte stuffing, CRC-32C".to_owned(),
            )],
        }
    }

    fn handle_error(&mut self, error: RawError) {
        if let RawError::UnknownVersion { .. } = error {
            // Not noise: an intact frame from a peer we cannot talk to. Stop loudly.
            self.ready = false;
            self.failure = Some(BridgeError::Device(format!(
                "{error}: run the same Cairn version on both ends of the cable"
            )));
            return;
        }
        self.dropped_frames = self.dropped_frames.saturating_add(1);
        if self.pending_warnings >= MAX_PENDING_WARNINGS {
            self.unreported = self.unreported.saturating_add(1);
            return;
        }
        let mut text = format!(
            "dropped a garbled cable frame ({error}); {} dropped so far",
            self.dropped_frames
        );
        if self.dropped_frames == 1 {
            text.push_str(
                "; if this keeps happening, check that the other end runs --radio raw at the same baud rate",
            );
        }
        if self.unreported > 0 {
            text.push_str(&format!(
                "; {} more were not reported one by one",
                self.unreported
            ));
            self.unreported = 0;
        }
        self.pending_warnings += 1;
        self.events.push_back(BridgeEvent::Warning(text));
    }
}

impl Firmware for RawCable {
    fn kind(&self) -> RadioKind {
        RadioKind::Raw
    }

    fn medium(&self) -> Medium {
        Medium::Cable
    }

    fn reset(&mut self, now_ms: u64) {
        self.last_now_ms = now_ms;
        self.decoder.reset();
        self.outgoing.clear();
        self.events.clear();
        self.pending_warnings = 0;
        self.unreported = 0;
        self.failure = None;
        self.ready = true;
        self.events.push_back(BridgeEvent::Ready(self.info()));
    }

    fn handle_serial(&mut self, now_ms: u64, bytes: &[u8]) {
        self.last_now_ms = now_ms;
        if !self.ready {
            return;
        }
        self.decoder.push(bytes);
        while let Some(result) = self.decoder.next_frame() {
            match result {
                Ok(frame) => self.events.push_back(BridgeEvent::Received {
                    frame,
                    rssi_dbm: None,
                    snr_db: None,
                }),
                Err(error) => {
                    self.handle_error(error);
                    if !self.ready {
                        self.decoder.reset();
                        return;
                    }
                }
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
        self.outgoing.extend_from_slice(&encode(frame));
        Ok(())
    }

    fn poll_event(&mut self) -> Option<BridgeEvent> {
        let event = self.events.pop_front()?;
        if let BridgeEvent::Warning(_) = event {
            self.pending_warnings = self.pending_warnings.saturating_sub(1);
        }
        Some(event)
    }

    fn poll_timeout(&self) -> Option<u64> {
        // No deadlines of its own; only a failure waiting to be reported.
        self.failure.as_ref().map(|_| self.last_now_ms)
    }

    fn handle_timeout(&mut self, now_ms: u64) -> Result<(), BridgeError> {
        self.last_now_ms = now_ms;
        match self.failure.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
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

    fn decode_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, RawError>> {
        let mut decoder = Decoder::new(DEFAULT_MAX_FRAME);
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    #[test]
    fn crc32c_check_value() {
        // The catalogue check value: CRC-32C of "123456789".
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn flag_and_escape_inside_are_stuffed() {
        let bytes = encode(&[FLAG, ESC]);
        assert_eq!(&bytes[..6], &[FLAG, CABLE_VERSION, ESC, 0x5E, ESC, 0x5D]);
        assert_eq!(decode_all(&bytes), vec![Ok(vec![FLAG, ESC])]);
    }

    #[test]
    fn escape_then_flag_aborts_only_that_frame() {
        let mut bytes = vec![FLAG, CABLE_VERSION, 0x41, ESC];
        bytes.extend(encode(b"next"));
        assert_eq!(
            decode_all(&bytes),
            vec![Err(RawError::Aborted), Ok(b"next".to_vec())]
        );
    }
}
