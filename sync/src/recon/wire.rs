//! Reconciliation messages and their encoding.
//!
//! bincode through [`crate::codec`] (varint lengths and counts) for the message shape;
//! hashes, sums and sketches are written as fixed little-endian bytes, because a varint of
//! a uniformly random u64 costs 9 bytes instead of 8.
//!
//! Every field read from the wire is bounded: a message is at most [`MAX_MESSAGE_LEN`]
//! bytes, each list is a [`BoundedVec`] capped at what fits that size, and trailing bytes
//! are refused. Protocol-level bounds (stream caps, counts) are checked by the
//! [`Reconciler`](super::Reconciler) that receives the message.

use bincode::de::{Decode, Decoder};
use bincode::enc::{Encode, Encoder};
use bincode::error::{DecodeError, EncodeError};

use super::hash::ShortId;
use super::riblt::CodedSymbol;
use super::summary::{Summary, SKETCHES};
use super::ReconError;
use crate::codec::{self, BoundedVec};

/// The largest encoded message accepted or produced (a 64 KiB frame).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// The smallest `max_message_len` a [`Reconciler`](super::Reconciler) works with: room for
/// a [`Summary`] and for one symbol or id with its message header.
pub const MIN_MESSAGE_LEN: usize = 64;

/// Most symbols one message can carry.
pub const MAX_SYMBOLS_PER_MESSAGE: usize = MAX_MESSAGE_LEN / CodedSymbol::WIRE_LEN;

/// Most short ids one message can carry.
pub const MAX_IDS_PER_MESSAGE: usize = MAX_MESSAGE_LEN / 8;

/// Symbols of one message, bounded on decode.
pub type SymbolList = BoundedVec<CodedSymbol, MAX_SYMBOLS_PER_MESSAGE>;

/// Short ids of one message, bounded on decode.
pub type ShortIdList = BoundedVec<ShortId, MAX_IDS_PER_MESSAGE>;

/// One message of the reconciliation protocol.
///
/// The summarizer sends `Summary`, then `More` as needed, then `Want`; the coder answers
/// with `Equal`, an `IdList`, or a stream of `Symbols` batches. A batch, id list or want
/// list that does not fit one message is split; its last message has `last: true`.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum ReconMessage {
    /// Summarizer → coder, first: the summarizer's set in ~46 bytes.
    Summary(Summary),
    /// Coder → summarizer: the sets are equal; the session is over.
    Equal,
    /// Coder → summarizer: consecutive coded symbols of the coder's set.
    Symbols {
        /// Stream index of the first symbol in this message; the stream has no gaps.
        start: u64,
        /// The coder's set size, in the first message of the stream only (`start == 0`):
        /// bounds how long the summarizer lets the stream grow.
        coder_count: Option<u64>,
        /// Whether this message ends a batch: the summarizer decodes, then answers.
        last: bool,
        symbols: SymbolList,
    },
    /// Coder → summarizer: all the coder's short ids (cheaper than symbols when the
    /// difference is of the order of the coder's set).
    IdList {
        /// The coder's set size, in the first message of the list only.
        coder_count: Option<u64>,
        last: bool,
        ids: ShortIdList,
    },
    /// Summarizer → coder: not decodable yet; send the next batch.
    More,
    /// Summarizer → coder, last: the short ids the summarizer lacks.
    Want { last: bool, ids: ShortIdList },
}

impl ReconMessage {
    /// The message's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Summary(_) => "Summary",
            Self::Equal => "Equal",
            Self::Symbols { .. } => "Symbols",
            Self::IdList { .. } => "IdList",
            Self::More => "More",
            Self::Want { .. } => "Want",
        }
    }

    /// Encodes the message on its own (the session may instead embed it in its own
    /// message type; the encoding is the same).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }

    /// Decodes one whole message: refuses messages over [`MAX_MESSAGE_LEN`], lists over
    /// their bound, non-canonical encodings and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReconError> {
        Ok(codec::decode_exact(bytes, MAX_MESSAGE_LEN)?)
    }
}

fn read_array<const N: usize, D: Decoder>(decoder: &mut D) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::decode(decoder)
}

impl Encode for CodedSymbol {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.sum.to_le_bytes().encode(encoder)?;
        self.check.to_le_bytes().encode(encoder)?;
        self.count.encode(encoder)
    }
}

impl<Context> Decode<Context> for CodedSymbol {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            sum: u64::from_le_bytes(read_array(decoder)?),
            check: u32::from_le_bytes(read_array(decoder)?),
            count: u8::decode(decoder)?,
        })
    }
}
bincode::impl_borrow_decode!(CodedSymbol);

impl Encode for ShortId {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.to_le_bytes().encode(encoder)
    }
}

impl<Context> Decode<Context> for ShortId {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self(u64::from_le_bytes(read_array(decoder)?)))
    }
}
bincode::impl_borrow_decode!(ShortId);

impl Encode for Summary {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.count.encode(encoder)?;
        self.digest.to_le_bytes().encode(encoder)?;
        for sketch in &self.sketches {
            sketch.to_le_bytes().encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for Summary {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let count = u64::decode(decoder)?;
        let digest = u64::from_le_bytes(read_array(decoder)?);
        let mut sketches = [0u16; SKETCHES];
        for sketch in &mut sketches {
            *sketch = u16::from_le_bytes(read_array(decoder)?);
        }
        Ok(Self {
            count,
            digest,
            sketches,
        })
    }
}
bincode::impl_borrow_decode!(Summary);

/// How many `item_len`-byte items fit in a message of at most `max_len` bytes whose
/// encoding with no items is `empty_len` bytes (including a one-byte item count).
pub(crate) fn items_per_message(max_len: usize, empty_len: usize, item_len: usize) -> usize {
    let room = max_len.saturating_sub(empty_len);
    let n = room / item_len;
    // bincode's varint: counts up to 250 take one byte, up to 65535 three.
    if n > 250 {
        (room.saturating_sub(2) / item_len).max(250)
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;

    #[test]
    fn summary_golden_vector() {
        let mut sketches = [0u16; SKETCHES];
        for (k, s) in sketches.iter_mut().enumerate() {
            *s = (k as u16).wrapping_mul(0x1111).wrapping_sub(8);
        }
        let msg = ReconMessage::Summary(Summary {
            count: 1_000_000,
            digest: 0x0123_4567_89ab_cdef,
            sketches,
        });
        let bytes = msg.to_bytes();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "00",               // variant Summary
                "fc40420f00",       // count 1_000_000 as varint (0xfc + u32 LE)
                "efcdab8967452301", // digest, u64 LE
                "f8ff0911",         // sketches 0xfff8, 0x1109, ...
                "1a222b333c444d555e666f77",
                "80889199a2aab3bbc4ccd5dde6eef7ff",
            )
        );
        assert_eq!(bytes.len(), 46);
        assert_eq!(msg.encoded_len(), 46);
        assert_eq!(ReconMessage::from_bytes(&bytes).unwrap(), msg);
    }

    #[test]
    fn symbols_golden_vector() {
        let msg = ReconMessage::Symbols {
            start: 300,
            coder_count: None,
            last: true,
            symbols: BoundedVec(vec![
                CodedSymbol {
                    sum: 0x1122_3344_5566_7788,
                    check: 0xdead_beef,
                    count: 1,
                },
                CodedSymbol {
                    sum: 0,
                    check: 0,
                    count: 255,
                },
            ]),
        };
        let bytes = msg.to_bytes();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "02",                         // variant Symbols
                "fb2c01",                     // start 300 (0xfb + u16 LE)
                "00",                         // coder_count None
                "01",                         // last
                "02",                         // two symbols
                "8877665544332211efbeadde01", // sum, check, count
                "000000000000000000000000ff",
            )
        );
        assert_eq!(ReconMessage::from_bytes(&bytes).unwrap(), msg);
    }

    #[test]
    fn truncated_messages_are_errors() {
        let msg = ReconMessage::Want {
            last: true,
            ids: BoundedVec(vec![ShortId(1), ShortId(2)]),
        };
        let bytes = msg.to_bytes();
        for len in 0..bytes.len() {
            assert!(
                ReconMessage::from_bytes(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = ReconMessage::More.to_bytes();
        bytes.push(0);
        assert!(matches!(
            ReconMessage::from_bytes(&bytes),
            Err(ReconError::Malformed(CodecError::TrailingBytes {
                extra: 1
            }))
        ));
    }

    #[test]
    fn oversized_message_is_refused_before_parsing() {
        let bytes = vec![4u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            ReconMessage::from_bytes(&bytes),
            Err(ReconError::Malformed(CodecError::TooLong { .. }))
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // IdList with None, last, and a count of 2^32 - 1 ids in a 10-byte message.
        let bytes = [3u8, 0, 1, 0xfc, 0xff, 0xff, 0xff, 0xff];
        assert!(ReconMessage::from_bytes(&bytes).is_err());
        // Symbols claiming 5000 symbols (fits the limit) with none present.
        let bytes = [2u8, 0, 0, 0, 0xfb, 0x88, 0x13];
        assert!(ReconMessage::from_bytes(&bytes).is_err());
    }

    #[test]
    fn unknown_variant_and_bad_bool_are_errors() {
        assert!(ReconMessage::from_bytes(&[6]).is_err());
        assert!(ReconMessage::from_bytes(&[5, 2, 0]).is_err());
    }

    #[test]
    fn items_per_message_fills_but_never_overflows() {
        for max in [MIN_MESSAGE_LEN, 100, 192, 1000, 4000, MAX_MESSAGE_LEN] {
            for item in [8usize, 13] {
                let empty = ReconMessage::Want {
                    last: true,
                    ids: BoundedVec::default(),
                }
                .encoded_len();
                let n = items_per_message(max, empty, item);
                let full = 1 + 1 + n * item + if n > 250 { 3 } else { 1 };
                assert!(
                    full <= max,
                    "max {max} item {item}: {n} items = {full} bytes"
                );
                assert!(full + item + 2 > max, "max {max} item {item}: room left");
            }
        }
    }
}
