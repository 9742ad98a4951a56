//! The one place Cairn configures bincode.
//!
//! Every byte Cairn puts on a wire or on disk goes through [`encode`] / [`encode_into`] and
//! comes back through [`decode_exact`] / [`decode_prefix`], so the format is fixed in one
//! spot: bincode 2.0.1 standard configuration (little endian, varint integers) with a byte
//! limit of [`DECODE_LIMIT`] per decoded value.
//!
//! On top of bincode this module adds the rules a hostile peer must not be able to bend:
//!
//! - **Every length and count is bounded before anything is allocated.** Wire types hold
//!   bytes and lists as [`BoundedBytes`] / [`BoundedVec`], whose decoders refuse a length
//!   prefix above their bound before reserving memory; plain `Vec`s are still capped by the
//!   configured byte limit.
//! - **One value, one encoding.** bincode's decoder accepts over-long varints (`5` written as
//!   `0xFB 0x05 0x00`); we refuse them ([`CodecError::NonCanonical`]), because items are
//!   content-addressed by their bytes and two encodings of one message would be two ids.
//! - **Exact framing.** [`decode_exact`] refuses trailing bytes (rustls `Codec::read` does the
//!   same): a message that carries more than it says is a peer bug or an attack.
//!
//! The API is deliberately small; wire modules derive `bincode::Encode` and `bincode::Decode`
//! on their message structs and call these functions.

use bincode::config::{Configuration, LittleEndian, Varint};
use bincode::de::read::Reader;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::write::{SizeWriter, Writer};
use bincode::enc::{Encoder, EncoderImpl};
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Most bytes one decoded value may claim (bincode's own accounting of lengths it is about to
/// allocate). Large enough for any frame Cairn defines (the largest item is ~32 KiB), small
/// enough that a phone survives any length prefix a peer invents.
pub const DECODE_LIMIT: usize = 4 * 1024 * 1024;

/// The single bincode configuration of the project.
type Config = Configuration<LittleEndian, Varint, bincode::config::Limit<DECODE_LIMIT>>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// Marker our bounded decoders put in [`DecodeError::Other`] so that [`CodecError`] can say
/// "a length prefix broke its bound" rather than a generic "invalid".
const BOUND_EXCEEDED: &str = "cairn codec: length or count prefix exceeds its bound";

/// Why bytes could not be decoded (or were refused before decoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended in the middle of a value. On a stream this means "read more"; for a
    /// complete frame it means the peer sent a cut message.
    #[error("input ended before the value was complete")]
    Truncated,
    /// The value ended before the input did.
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes { extra: usize },
    /// The input is longer than any valid encoding of what the caller expects; refused
    /// without looking at it.
    #[error("input of {len} bytes exceeds the {max}-byte maximum")]
    TooLong { len: usize, max: usize },
    /// A length or count prefix is larger than the field allows (or than [`DECODE_LIMIT`]).
    #[error("a length or count prefix exceeds its bound")]
    BoundExceeded,
    /// The value decoded, but these are not its canonical bytes (e.g. an over-long varint).
    #[error("the value is not in its canonical encoding")]
    NonCanonical,
    /// Anything else the bytes got wrong: unknown enum variant, bad varint marker, invalid
    /// field value...
    #[error("invalid encoding: {0}")]
    Invalid(String),
}

impl From<DecodeError> for CodecError {
    fn from(err: DecodeError) -> Self {
        match err {
            DecodeError::UnexpectedEnd { .. } => CodecError::Truncated,
            DecodeError::LimitExceeded => CodecError::BoundExceeded,
            DecodeError::Other(msg) if msg == BOUND_EXCEEDED => CodecError::BoundExceeded,
            DecodeError::Other(msg) => CodecError::Invalid(msg.to_owned()),
            DecodeError::OtherString(msg) => CodecError::Invalid(msg),
            other => CodecError::Invalid(other.to_string()),
        }
    }
}

/// A bincode writer appending to a `Vec`: it never fails, so encoding our types never fails.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`.
///
/// # Panics
///
/// Only if `T`'s `Encode` impl itself returns an error. Writing to a `Vec` never fails and no
/// wire type of this crate has a failing `Encode` (only std types like `RefCell` or `Mutex`
/// do, and those have no place in a message), so this is a programming error, not something
/// input can trigger.
pub fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    let mut encoder = EncoderImpl::new(VecWriter(out), CONFIG);
    if let Err(err) = value.encode(&mut encoder) {
        panic!("cairn codec: Encode impl failed after {start} bytes: {err}");
    }
}

/// The encoding of `value`. See [`encode_into`] for the (programming-error-only) panic.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(value));
    encode_into(value, &mut out);
    out
}

/// How many bytes [`encode`] would produce, without allocating.
pub fn encoded_len<T: Encode>(value: &T) -> usize {
    let mut encoder = EncoderImpl::new(SizeWriter::default(), CONFIG);
    // A size count cannot fail; a failing `Encode` impl is caught by `encode_into`.
    let _ = value.encode(&mut encoder);
    encoder.into_writer().bytes_written
}

/// Decodes exactly one `T` occupying all of `bytes`.
///
/// Refuses, in this order: input longer than `max_len` (before decoding anything), bytes
/// that do not decode, trailing bytes, and non-canonical encodings.
pub fn decode_exact<T: Decode<()> + Encode>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    if bytes.len() > max_len {
        return Err(CodecError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (value, used) = decode_prefix::<T>(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Decodes one `T` from the start of `bytes` and says how many bytes it took, so that a
/// caller can read several values packed into one frame. Refuses non-canonical encodings.
pub fn decode_prefix<T: Decode<()> + Encode>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    let (value, used) = bincode::decode_from_slice::<T, _>(bytes, CONFIG)?;
    // Every non-canonical form bincode accepts (over-long varints) is strictly longer than
    // the canonical one, so equal lengths mean identical bytes.
    if encoded_len(&value) != used {
        return Err(CodecError::NonCanonical);
    }
    Ok((value, used))
}

/// Largest chunk a bounded decoder reserves ahead of the bytes actually arriving: a peer
/// that announces a large (but in-bound) length and then stops costs us at most this much.
const PREALLOC_BYTES: usize = 16 * 1024;

/// Reads a length or count prefix and checks it against `max` before anyone allocates.
fn decode_bounded_len<D: Decoder>(decoder: &mut D, max: usize) -> Result<usize, DecodeError> {
    let len = u64::decode(decoder)?;
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(DecodeError::Other(BOUND_EXCEEDED)),
    }
}

/// Reads exactly `len` bytes, growing the buffer only as bytes actually arrive.
fn read_bytes<D: Decoder>(decoder: &mut D, len: usize) -> Result<Vec<u8>, DecodeError> {
    decoder.claim_bytes_read(len)?;
    let reader = decoder.reader();
    if let Some(slice) = reader.peek_read(len) {
        let out = slice.to_vec();
        reader.consume(len);
        return Ok(out);
    }
    let mut out = Vec::with_capacity(len.min(PREALLOC_BYTES));
    let mut chunk = [0u8; 4096];
    while out.len() < len {
        let n = (len - out.len()).min(chunk.len());
        reader.read(&mut chunk[..n])?;
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// A byte string of at most `MAX` bytes, for use as a field of a wire struct.
///
/// Encodes exactly like a `Vec<u8>` (varint length, then the bytes). Its decoder refuses a
/// length above `MAX` before allocating anything, so a 4 GiB length prefix costs nothing.
/// Encoding does not check the bound (the field is public); a sender that builds an
/// oversize value produces bytes every receiver refuses. Use [`BoundedBytes::new`] to check.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedBytes<const MAX: usize>(pub Vec<u8>);

impl<const MAX: usize> BoundedBytes<MAX> {
    /// Wraps `bytes` if they fit the bound.
    pub fn new(bytes: Vec<u8>) -> Result<Self, CodecError> {
        if bytes.len() > MAX {
            return Err(CodecError::TooLong {
                len: bytes.len(),
                max: MAX,
            });
        }
        Ok(Self(bytes))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl<const MAX: usize> Encode for BoundedBytes<MAX> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.0.len() as u64).encode(encoder)?;
        encoder.writer().write(&self.0)
    }
}

impl<Context, const MAX: usize> Decode<Context> for BoundedBytes<MAX> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_bounded_len(decoder, MAX)?;
        Ok(Self(read_bytes(decoder, len)?))
    }
}

impl<'de, Context, const MAX: usize> BorrowDecode<'de, Context> for BoundedBytes<MAX> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

/// A list of at most `MAX` elements, for use as a field of a wire struct.
///
/// Encodes exactly like a `Vec<T>` (varint count, then the elements). Its decoder refuses a
/// count above `MAX` before allocating, and reserves memory only in step with elements that
/// actually decode. Like [`BoundedBytes`], encoding does not check the bound.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedVec<T, const MAX: usize>(pub Vec<T>);

impl<T, const MAX: usize> Default for BoundedVec<T, MAX> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const MAX: usize> BoundedVec<T, MAX> {
    /// Wraps `items` if there are at most `MAX` of them.
    pub fn new(items: Vec<T>) -> Result<Self, CodecError> {
        if items.len() > MAX {
            return Err(CodecError::TooLong {
                len: items.len(),
                max: MAX,
            });
        }
        Ok(Self(items))
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

impl<T: Encode, const MAX: usize> Encode for BoundedVec<T, MAX> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.0.len() as u64).encode(encoder)?;
        for item in &self.0 {
            item.encode(encoder)?;
        }
        Ok(())
    }
}

/// Initial capacity for `count` elements of `T`: all of them if that is small, otherwise
/// [`PREALLOC_BYTES`] worth, growing as elements actually decode.
fn initial_capacity<T>(count: usize) -> usize {
    count.min(PREALLOC_BYTES / core::mem::size_of::<T>().max(1))
}

impl<Context, T: Decode<Context>, const MAX: usize> Decode<Context> for BoundedVec<T, MAX> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let count = decode_bounded_len(decoder, MAX)?;
        decoder.claim_container_read::<T>(count)?;
        let mut items = Vec::with_capacity(initial_capacity::<T>(count));
        for _ in 0..count {
            // bincode's accounting: the container claimed every element up front, and each
            // element claims its own bytes again as it decodes.
            decoder.unclaim_bytes_read(core::mem::size_of::<T>());
            items.push(T::decode(decoder)?);
        }
        Ok(Self(items))
    }
}

impl<'de, Context, T: BorrowDecode<'de, Context>, const MAX: usize> BorrowDecode<'de, Context>
    for BoundedVec<T, MAX>
{
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        let count = decode_bounded_len(decoder, MAX)?;
        decoder.claim_container_read::<T>(count)?;
        let mut items = Vec::with_capacity(initial_capacity::<T>(count));
        for _ in 0..count {
            decoder.unclaim_bytes_read(core::mem::size_of::<T>());
            items.push(T::borrow_decode(decoder)?);
        }
        Ok(Self(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    struct Frame {
        kind: u8,
        seq: u64,
        payload: BoundedBytes<16>,
        ids: BoundedVec<u32, 4>,
    }

    fn frame() -> Frame {
        Frame {
            kind: 7,
            seq: 300,
            payload: BoundedBytes::new(b"hello".to_vec()).unwrap(),
            ids: BoundedVec::new(vec![1, 70_000]).unwrap(),
        }
    }

    #[test]
    fn golden_frame_bytes() {
        // kind u8 raw; seq 300 = 0xFB + u16 LE; payload len 5 + bytes; 2 ids: 1, 70000 =
        // 0xFC + u32 LE.
        let bytes = encode(&frame());
        assert_eq!(hex::encode(&bytes), "07fb2c010568656c6c6f0201fc70110100");
        assert_eq!(encoded_len(&frame()), bytes.len());
        assert_eq!(decode_exact::<Frame>(&bytes, 64).unwrap(), frame());
    }

    #[test]
    fn bounded_types_encode_like_vecs() {
        let bytes = BoundedBytes::<8>::new(vec![1, 2, 3]).unwrap();
        assert_eq!(encode(&bytes), encode(&vec![1u8, 2, 3]));
        let list = BoundedVec::<u64, 8>::new(vec![1, 1 << 40]).unwrap();
        assert_eq!(encode(&list), encode(&vec![1u64, 1 << 40]));
    }

    #[test]
    fn constructors_check_bounds() {
        assert_eq!(
            BoundedBytes::<2>::new(vec![0; 3]),
            Err(CodecError::TooLong { len: 3, max: 2 })
        );
        assert!(BoundedVec::<u8, 2>::new(vec![0; 2]).is_ok());
    }

    #[test]
    fn refuses_input_longer_than_max_before_decoding() {
        let bytes = encode(&frame());
        assert_eq!(
            decode_exact::<Frame>(&bytes, bytes.len() - 1),
            Err(CodecError::TooLong {
                len: bytes.len(),
                max: bytes.len() - 1
            })
        );
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&frame());
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_exact::<Frame>(&bytes, 64),
            Err(CodecError::TrailingBytes { extra: 2 })
        );
    }

    #[test]
    fn every_truncation_is_truncated() {
        let bytes = encode(&frame());
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_exact::<Frame>(&bytes[..cut], 64),
                Err(CodecError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_overlong_varints() {
        // seq = 5 written as 0xFB 0x05 0x00 instead of 0x05.
        let bytes = hex::decode("07fb05000568656c6c6f0201fc70110100").unwrap();
        assert_eq!(
            decode_exact::<Frame>(&bytes, 64),
            Err(CodecError::NonCanonical)
        );
    }

    #[test]
    fn length_prefix_over_bound_is_refused() {
        // payload claims 17 bytes (bound 16) and the 17 bytes are really there.
        let mut bytes = vec![7, 1, 17];
        bytes.extend_from_slice(&[0xAA; 17]);
        bytes.push(0);
        assert_eq!(
            decode_exact::<Frame>(&bytes, 64),
            Err(CodecError::BoundExceeded)
        );
        // 5 ids (bound 4).
        let bytes = [7, 1, 0, 5, 1, 2, 3, 4, 5];
        assert_eq!(
            decode_exact::<Frame>(&bytes, 64),
            Err(CodecError::BoundExceeded)
        );
    }

    #[test]
    fn four_gib_length_prefix_does_not_allocate() {
        // 0xFC + u32 LE 0xFFFF_FFFF: a 4 GiB body. Bounded types refuse it outright; a plain
        // Vec<u8> is stopped by the configured byte limit before its allocation.
        let bytes = [0xFC, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            decode_exact::<BoundedBytes<1024>>(&bytes, 64),
            Err(CodecError::BoundExceeded)
        );
        assert_eq!(
            decode_exact::<Vec<u8>>(&bytes, 64),
            Err(CodecError::BoundExceeded)
        );
        let huge_count = [0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            decode_exact::<Vec<u64>>(&huge_count, 64),
            Err(CodecError::BoundExceeded)
        );
        assert_eq!(
            decode_exact::<BoundedVec<u64, 1_000_000>>(&huge_count, 64),
            Err(CodecError::BoundExceeded)
        );
    }

    #[test]
    fn in_bound_length_with_missing_bytes_is_truncated() {
        // Claims 1000 bytes (bound allows it) but sends 3.
        let bytes = [0xFB, 0xE8, 0x03, 1, 2, 3];
        assert_eq!(
            decode_exact::<BoundedBytes<4096>>(&bytes, 64),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn prefix_decoding_reads_packed_values() {
        let mut packed = encode(&frame());
        let first_len = packed.len();
        let mut second = frame();
        second.seq = 1;
        encode_into(&second, &mut packed);
        let (a, used_a) = decode_prefix::<Frame>(&packed).unwrap();
        let (b, used_b) = decode_prefix::<Frame>(&packed[used_a..]).unwrap();
        assert_eq!((a, used_a), (frame(), first_len));
        assert_eq!(b, second);
        assert_eq!(used_a + used_b, packed.len());
    }

    #[test]
    fn unknown_enum_variant_is_invalid() {
        #[derive(Debug, PartialEq, Encode, Decode)]
        enum Kind {
            A,
            B,
        }
        assert_eq!(decode_exact::<Kind>(&[1], 1).unwrap(), Kind::B);
        assert!(matches!(
            decode_exact::<Kind>(&[2], 1),
            Err(CodecError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(kind: u8, seq: u64,
                      payload in proptest::collection::vec(any::<u8>(), 0..=16),
                      ids in proptest::collection::vec(any::<u32>(), 0..=4)) {
            let value = Frame {
                kind,
                seq,
                payload: BoundedBytes(payload),
                ids: BoundedVec(ids),
            };
            let bytes = encode(&value);
            prop_assert_eq!(bytes.len(), encoded_len(&value));
            prop_assert_eq!(decode_exact::<Frame>(&bytes, bytes.len()).unwrap(), value);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(value) = decode_exact::<Frame>(&bytes, 64) {
                prop_assert_eq!(encode(&value), bytes);
            }
        }
    }
}
