//! The serial API's stream framing: `0x94 0xC3 <length u16 big-endian> <protobuf>`.
//!
//! A USB serial port has no message boundaries, and a Meshtastic device prints its debug log as
//! plain text on the same port until a client starts the API (and again after a reboot). The
//! two magic bytes let a reader find the protobufs in that mix; the length says where each ends.
//! Nothing checks the content (no CRC): a length read from garbage is believed, so the bound on
//! it is what keeps a bad header from swallowing more than one frame's worth of the stream.
//!
//! This is a pure codec like [`crate::kiss`]: [`encode_frame`] adds the header, a [`Decoder`]
//! is fed whatever the port returned ([`Decoder::push`]) and hands out whole protobufs
//! ([`Decoder::next_frame`]).

use std::collections::VecDeque;

/// First magic byte of a frame.
pub const START1: u8 = 0x94;
/// Second magic byte of a frame.
pub const START2: u8 = 0xC3;
/// Magic bytes plus the 2-byte length.
pub const HEADER_LEN: usize = 4;
/// Longest protobuf a frame may carry (`MAX_TO_FROM_RADIO_SIZE` in the firmware and the Python
/// client): both refuse longer lengths, so a longer one can only be corruption.
pub const MAX_PROTOBUF_LEN: usize = 512;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The length is past [`MAX_PROTOBUF_LEN`]. On decode, the header was a false start (or
    /// the line is corrupt) and the decoder looks for the next `0x94 0xC3` right after the
    /// magic bytes, so a real frame hidden in the bad "length" bytes is not lost.
    #[error("Meshtastic frame length {len} is over the {max}-byte limit; resynchronising")]
    TooLong {
        /// The length asked for.
        len: usize,
        /// The limit ([`MAX_PROTOBUF_LEN`]).
        max: usize,
    },
}

/// Frames an encoded protobuf for the serial line.
///
/// # Errors
///
/// [`FramingError::TooLong`] past [`MAX_PROTOBUF_LEN`]: the device would discard it.
pub fn encode_frame(protobuf: &[u8]) -> Result<Vec<u8>, FramingError> {
    let too_long = FramingError::TooLong {
        len: protobuf.len(),
        max: MAX_PROTOBUF_LEN,
    };
    if protobuf.len() > MAX_PROTOBUF_LEN {
        return Err(too_long);
    }
    let len = u16::try_from(protobuf.len()).map_err(|_| too_long)?;
    let mut out = Vec::with_capacity(HEADER_LEN + protobuf.len());
    out.extend_from_slice(&[START1, START2]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(protobuf);
    Ok(out)
}

/// Encodes `message` and frames it.
///
/// # Errors
///
/// [`FramingError::TooLong`] when the encoded message is past [`MAX_PROTOBUF_LEN`].
pub fn encode_message<M: prost::Message>(message: &M) -> Result<Vec<u8>, FramingError> {
    encode_frame(&message.encode_to_vec())
}

/// Where the decoder is within the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for `0x94 0xC3` and a sane length; everything else is log text or noise.
    Hunting,
    /// After a good header: waiting for this many protobuf bytes.
    Body { len: usize },
}

/// A streaming decoder for the serial API: push bytes as the port returns them, pull whole
/// protobufs (not yet parsed: the caller knows whether it expects `ToRadio` or `FromRadio`).
///
/// Input is consumed lazily by [`Decoder::next_frame`]. Once it has returned `None`, the
/// decoder holds at most [`MAX_PROTOBUF_LEN`] - 1 unread bytes (a frame not yet complete) or 3
/// (the start of a header), whatever was pushed: text and noise are dropped as they are read.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Bytes pushed and not yet examined or consumed.
    input: VecDeque<u8>,
    /// Bytes dropped while hunting for a header: the device's log text, line noise. Kept as a
    /// figure for `cairn radio info`, since a large count means the wrong port or baud rate.
    skipped: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder hunting for its first header.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: State::Hunting,
            input: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Hands the decoder bytes read from the line, in whatever pieces they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Forgets any partial frame and unread input, as after the port was reopened.
    pub fn reset(&mut self) {
        self.state = State::Hunting;
        self.input.clear();
    }

    /// Bytes skipped so far because they were not inside a frame.
    #[must_use]
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// The next whole protobuf (possibly empty: a zero-length frame is valid), or the error
    /// that refused a header; `None` means no complete frame yet (push more), not a failure.
    #[must_use]
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        loop {
            match self.state {
                State::Hunting => {
                    self.skip_to_start1();
                    match self.input.get(1).copied() {
                        None => return None,
                        Some(START2) => {}
                        Some(_) => {
                            // 0x94 alone is not a header; the next byte may start one.
                            self.drop_front(1);
                            continue;
                        }
                    }
                    let (Some(high), Some(low)) =
                        (self.input.get(2).copied(), self.input.get(3).copied())
                    else {
                        return None;
                    };
                    let len = usize::from(u16::from_be_bytes([high, low]));
                    if len > MAX_PROTOBUF_LEN {
                        // Drop only the magic bytes: the next header may begin inside the
                        // length we just refused.
                        self.drop_front(2);
                        return Some(Err(FramingError::TooLong {
                            len,
                            max: MAX_PROTOBUF_LEN,
                        }));
                    }
                    self.input.drain(..HEADER_LEN);
                    self.state = State::Body { len };
                }
                State::Body { len } => {
                    if self.input.len() < len {
                        return None;
                    }
                    let frame: Vec<u8> = self.input.drain(..len).collect();
                    self.state = State::Hunting;
                    return Some(Ok(frame));
                }
            }
        }
    }

    fn skip_to_start1(&mut self) {
        let garbage = self
            .input
            .iter()
            .position(|&byte| byte == START1)
            .unwrap_or(self.input.len());
        self.drop_front(garbage);
    }

    fn drop_front(&mut self, count: usize) {
        let count = count.min(self.input.len());
        self.input.drain(..count);
        self.skipped = self.skipped.saturating_add(count as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_split_anywhere_decodes_once() {
        let bytes = encode_frame(&[0x18, 0x2A]).expect("short frame");
        assert_eq!(bytes, [0x94, 0xC3, 0x00, 0x02, 0x18, 0x2A]);
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::new();
            decoder.push(&bytes[..split]);
            let mut frames: Vec<_> = std::iter::from_fn(|| decoder.next_frame()).collect();
            decoder.push(&bytes[split..]);
            frames.extend(std::iter::from_fn(|| decoder.next_frame()));
            assert_eq!(frames, vec![Ok(vec![0x18, 0x2A])], "split at {split}");
        }
    }

    #[test]
    fn log_text_before_a_frame_is_skipped_and_counted() {
        let mut decoder = Decoder::new();
        decoder.push(b"INFO  | 12:00:01 boot\r\n");
        decoder.push(&encode_frame(b"").expect("empty frame"));
        assert_eq!(decoder.next_frame(), Some(Ok(vec![])));
        assert_eq!(decoder.skipped_bytes(), 23);
    }

    #[test]
    fn refused_length_resynchronises_inside_the_length_bytes() {
        // 0x94 0xC3 then "length" 0x94 0xC3 (37 955): the refused length is itself the start
        // of a real header.
        let mut decoder = Decoder::new();
        decoder.push(&[0x94, 0xC3, 0x94, 0xC3, 0x00, 0x01, 0x08]);
        assert_eq!(
            decoder.next_frame(),
            Some(Err(FramingError::TooLong {
                len: 0x94C3,
                max: MAX_PROTOBUF_LEN
            }))
        );
        assert_eq!(decoder.next_frame(), Some(Ok(vec![0x08])));
        assert_eq!(decoder.next_frame(), None);
    }

    #[test]
    fn encoding_refuses_what_the_device_would_discard() {
        assert!(encode_frame(&[0; MAX_PROTOBUF_LEN]).is_ok());
        assert_eq!(
            encode_frame(&[0; MAX_PROTOBUF_LEN + 1]),
            Err(FramingError::TooLong {
                len: MAX_PROTOBUF_LEN + 1,
                max: MAX_PROTOBUF_LEN
            })
        );
    }
}
