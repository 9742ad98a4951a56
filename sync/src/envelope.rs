//! The units that travel: envelopes and their tombstones (anti-packets).
//!
//! Both are *items*: content-addressed by the hash of their canonical encoding, reconciled
//! between peers as one set, stored in one table. An envelope carries an opaque (later:
//! sealed) body to whoever holds the matching scope tag; a tombstone says "envelope X was
//! delivered, purge it and refuse it until T".
//!
//! # Encoding
//!
//! One canonical byte string per item, so that its id (a hash of those bytes) is the same on
//! every device: a format tag byte ([`ENVELOPE_TAG_V1`] or [`TOMBSTONE_TAG_V1`]), then the
//! fields in declaration order through [`crate::codec`] (varint integers, fixed-size ids and
//! scopes as raw bytes, priority as one byte, body as varint length + bytes). Decoders refuse
//! anything a well-behaved sender cannot produce: unknown tags, out-of-range fields,
//! over-long varints, oversize bodies, truncation and trailing bytes, each as a typed
//! [`ItemError`]. Every byte counts on LoRa (200-byte frames): a 100-byte message encodes in
//! 122 bytes.

use bincode::de::read::Reader;
use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::write::Writer;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

use crate::codec::{self, BoundedBytes, CodecError};
use crate::store::ItemKind;

/// Longest body an envelope may carry. Large enough for a text with attachments' metadata,
/// small enough that a carrier's quota holds thousands and a cut transfer costs little.
pub const MAX_BODY_LEN: usize = 32 * 1024;

/// Longest lifetime a sender may ask for. Carriers need not keep anything longer.
pub const MAX_LIFETIME_SECS: u32 = 90 * 24 * 3600;

/// Most copies a sender may hand out (spray budget). `u8` on the wire.
pub const MAX_COPY_BUDGET: u8 = u8::MAX;

/// Most header bytes an envelope can have: tag 1, `created_at_secs` varint ≤ 9,
/// `lifetime_secs` varint ≤ 5, scope 8, priority 1, copy budget 1, receipt lock 12, body
/// length varint ≤ 3 (`MAX_BODY_LEN` < 2^16). A typical header (2026 timestamp, lifetime
/// over 18 h, body under 251 bytes) is 34 bytes.
pub const MAX_ENVELOPE_HEADER_LEN: usize = 40;

/// Largest encoding of any item: an envelope with a full body and the largest header (a
/// tombstone is at most [`MAX_TOMBSTONE_LEN`] bytes). Tested to be exact.
pub const MAX_ITEM_LEN: usize = MAX_BODY_LEN + MAX_ENVELOPE_HEADER_LEN;

/// Largest encoding of a tombstone: tag 1, target 32, scope 8, `expires_at_secs` varint ≤ 9,
/// receipt proof 16.
pub const MAX_TOMBSTONE_LEN: usize = 66;

/// The secret a recipient reveals, in a tombstone, to prove it got an envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiptProof(pub [u8; 16]);

/// The public commitment to a [`ReceiptProof`] an envelope carries: a carrier purges the
/// envelope only for a tombstone whose proof opens this lock, so nobody but someone who could
/// read the message (its recipient, or its sender) can make the network drop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptLock(pub [u8; 12]);

impl ReceiptProof {
    /// The lock this proof opens: BLAKE3 (derive-key mode) of the proof, truncated. 96 bits:
    /// forging a proof for a given envelope takes 2^96 hashes.
    pub fn lock(&self) -> ReceiptLock {
        let hash = blake3::derive_key("cairn 2026-11 receipt lock", &self.0);
        let mut lock = [0u8; 12];
        lock.copy_from_slice(&hash[..12]);
        ReceiptLock(lock)
    }
}

impl std::fmt::Debug for ReceiptProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiptProof({})", hex_prefix(&self.0))
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + ".."
}

// MAX_ITEM_LEN bounds every kind.
const _: () = assert!(MAX_TOMBSTONE_LEN <= MAX_ITEM_LEN);

/// First byte of an envelope's encoding (format and version in one).
pub const ENVELOPE_TAG_V1: u8 = 0xC1;

/// First byte of a tombstone's encoding.
pub const TOMBSTONE_TAG_V1: u8 = 0xC2;

/// BLAKE3 derive-key context for envelope ids: one context per kind, so an envelope and a
/// tombstone can never share an id even if their bytes did.
const ENVELOPE_ID_CONTEXT: &str = "cairn 2026-11 envelope id v1";

/// BLAKE3 derive-key context for tombstone ids.
const TOMBSTONE_ID_CONTEXT: &str = "cairn 2026-11 tombstone id v2";

/// The content address of an item: BLAKE3 (derive-key mode, one context per kind) of its
/// canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(pub [u8; 32]);

/// Opaque routing tag. A carrier matches it against the scopes peers say they want, without
/// reading the body. Issue 3 makes it rotate; here it is 8 opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeTag(pub [u8; 8]);

/// Transfer order between classes: lower goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    /// Short texts and control messages: go first, fit a LoRa frame.
    High = 0,
    Normal = 1,
    /// Large bodies: last, and first to be evicted among others' items.
    Bulk = 2,
}

/// A message in transit. Its [`ItemId`] is the hash of its encoding, so every field here is
/// immutable once created; what changes hop by hop (copies held) is local metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Sender's clock, whole seconds since the Unix epoch.
    pub created_at_secs: u64,
    /// How long carriers should keep it, from `created_at_secs`.
    pub lifetime_secs: u32,
    pub scope: ScopeTag,
    pub priority: Priority,
    /// How many copies the sender allows in the network (spray budget); 0 means "direct
    /// delivery only" is never useful, so the encoding refuses it.
    pub copy_budget: u8,
    /// Opened by the proof in the recipient's tombstone ([`ReceiptProof::lock`]). Sealed
    /// envelopes use it as their nonce, so it costs nothing extra.
    pub receipt_lock: ReceiptLock,
    /// Opaque bytes, at most [`MAX_BODY_LEN`].
    pub body: Vec<u8>,
}

/// Anti-packet: envelope `target` was delivered; purge it and refuse it until `expires_at_secs`
/// (the envelope's own expiry, after which it would be refused anyway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub target: ItemId,
    /// The target's scope, so that peers who only want some scopes still get the purges
    /// that concern them.
    pub scope: ScopeTag,
    pub expires_at_secs: u64,
    /// Opens the target's [`Envelope::receipt_lock`]: the tombstone is genuine.
    pub proof: ReceiptProof,
}

/// What a store holds and a session reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Envelope(Envelope),
    Tombstone(Tombstone),
}

/// Why bytes are not a valid item (or why an item may not be sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    #[error("empty input: an item starts with a tag byte")]
    Empty,
    #[error("unknown item tag 0x{0:02x}")]
    UnknownTag(u8),
    /// A valid tag, but for the other kind (e.g. a tombstone handed to `Envelope::decode`).
    #[error("expected item tag 0x{expected:02x}, found 0x{found:02x}")]
    WrongKind { expected: u8, found: u8 },
    #[error("priority byte {0} is not 0 (high), 1 (normal) or 2 (bulk)")]
    BadPriority(u8),
    #[error("copy budget 0: an envelope nobody may hold")]
    ZeroCopyBudget,
    #[error("lifetime of {0} s is outside 1..={MAX_LIFETIME_SECS}")]
    BadLifetime(u32),
    #[error("body longer than {MAX_BODY_LEN} bytes")]
    BodyTooLong,
    /// The bytes are not a well-formed encoding at all (truncated, trailing bytes, too long,
    /// over-long varint...).
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A string that is not 64 hex digits, given as an item id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an item id is 64 hex digits")]
pub struct ParseItemIdError;

impl ItemId {
    /// All 32 bytes as 64 lowercase hex digits (for logs, CLIs and test vectors).
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, ParseItemIdError> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return Err(ParseItemIdError);
        }
        let mut id = [0u8; 32];
        for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or(ParseItemIdError)?;
            let low = hex_value(pair[1]).ok_or(ParseItemIdError)?;
            *byte = (high << 4) | low;
        }
        Ok(ItemId(id))
    }
}

/// Eight bytes (16 hex digits) tell ids apart in any log a person will read; the full id is
/// [`ItemId::to_hex`].
impl std::fmt::Debug for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ItemId({})", hex_lower(&self.0[..8]))
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl Priority {
    /// The wire byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The priority a wire byte names, if any.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Priority::High),
            1 => Some(Priority::Normal),
            2 => Some(Priority::Bulk),
            _ => None,
        }
    }
}

// Wire forms of the small value types, so that other messages (reconciliation, transfer) can
// carry them as fields: ids and scopes as raw bytes, priority as one byte.

impl Encode for ItemId {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encoder.writer().write(&self.0)
    }
}

impl<Context> Decode<Context> for ItemId {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decoder.claim_bytes_read(32)?;
        let mut id = [0u8; 32];
        decoder.reader().read(&mut id)?;
        Ok(ItemId(id))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ItemId {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

impl Encode for ScopeTag {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encoder.writer().write(&self.0)
    }
}

impl<Context> Decode<Context> for ScopeTag {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decoder.claim_bytes_read(8)?;
        let mut tag = [0u8; 8];
        decoder.reader().read(&mut tag)?;
        Ok(ScopeTag(tag))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ScopeTag {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

impl Encode for ReceiptLock {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encoder.writer().write(&self.0)
    }
}

impl<Context> Decode<Context> for ReceiptLock {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decoder.claim_bytes_read(12)?;
        let mut lock = [0u8; 12];
        decoder.reader().read(&mut lock)?;
        Ok(ReceiptLock(lock))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ReceiptLock {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

impl Encode for ReceiptProof {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encoder.writer().write(&self.0)
    }
}

impl<Context> Decode<Context> for ReceiptProof {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decoder.claim_bytes_read(16)?;
        let mut proof = [0u8; 16];
        decoder.reader().read(&mut proof)?;
        Ok(ReceiptProof(proof))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ReceiptProof {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

impl Encode for Priority {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_u8().encode(encoder)
    }
}

impl<Context> Decode<Context> for Priority {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let byte = u8::decode(decoder)?;
        Priority::from_u8(byte).ok_or(DecodeError::Other("priority byte is not 0, 1 or 2"))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for Priority {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Decode::decode(decoder)
    }
}

/// An envelope's fields after the tag, as sent. Encoding borrows the body (no copy).
#[derive(Encode)]
struct EnvelopeFieldsRef<'a> {
    created_at_secs: u64,
    lifetime_secs: u32,
    scope: ScopeTag,
    priority: u8,
    copy_budget: u8,
    receipt_lock: ReceiptLock,
    body: &'a [u8],
}

/// An envelope's fields after the tag, as received: priority still a raw byte so that a bad
/// one is a typed error, body bounded before allocation. Encodes exactly like
/// [`EnvelopeFieldsRef`] (a `&[u8]` and a `BoundedBytes` both are varint length + bytes).
#[derive(Encode, Decode)]
struct EnvelopeFields {
    created_at_secs: u64,
    lifetime_secs: u32,
    scope: ScopeTag,
    priority: u8,
    copy_budget: u8,
    receipt_lock: ReceiptLock,
    body: BoundedBytes<MAX_BODY_LEN>,
}

#[derive(Encode, Decode)]
struct TombstoneFields {
    target: ItemId,
    scope: ScopeTag,
    expires_at_secs: u64,
    proof: ReceiptProof,
}

/// Checks the tag and overall length shared by both kinds' decoders; returns the bytes after
/// the tag.
fn split_tag(bytes: &[u8], expected: u8, max_len: usize) -> Result<&[u8], ItemError> {
    let (&tag, rest) = bytes.split_first().ok_or(ItemError::Empty)?;
    if tag != expected {
        return Err(match tag {
            ENVELOPE_TAG_V1 | TOMBSTONE_TAG_V1 => ItemError::WrongKind {
                expected,
                found: tag,
            },
            _ => ItemError::UnknownTag(tag),
        });
    }
    if bytes.len() > max_len {
        return Err(CodecError::TooLong {
            len: bytes.len(),
            max: max_len,
        }
        .into());
    }
    Ok(rest)
}

impl Envelope {
    /// The canonical encoding: what is stored, sent and hashed into the id.
    ///
    /// Does not check the field rules (the fields are public); an envelope that breaks them
    /// encodes to bytes every peer refuses. Check new envelopes with [`Envelope::validate`]
    /// before storing them.
    pub fn encode(&self) -> Vec<u8> {
        let fields = EnvelopeFieldsRef {
            created_at_secs: self.created_at_secs,
            lifetime_secs: self.lifetime_secs,
            scope: self.scope,
            priority: self.priority.as_u8(),
            copy_budget: self.copy_budget,
            receipt_lock: self.receipt_lock,
            body: &self.body,
        };
        let mut out = Vec::with_capacity(MAX_ENVELOPE_HEADER_LEN + self.body.len());
        out.push(ENVELOPE_TAG_V1);
        codec::encode_into(&fields, &mut out);
        out
    }

    /// Parses a canonical envelope encoding, refusing anything [`Envelope::encode`] of a
    /// valid envelope could not have produced.
    pub fn decode(bytes: &[u8]) -> Result<Self, ItemError> {
        let rest = split_tag(bytes, ENVELOPE_TAG_V1, MAX_ITEM_LEN)?;
        let fields: EnvelopeFields =
            codec::decode_exact(rest, MAX_ITEM_LEN - 1).map_err(|err| match err {
                // The body is the only bounded field.
                CodecError::BoundExceeded => ItemError::BodyTooLong,
                other => ItemError::Codec(other),
            })?;
        let priority =
            Priority::from_u8(fields.priority).ok_or(ItemError::BadPriority(fields.priority))?;
        let envelope = Envelope {
            created_at_secs: fields.created_at_secs,
            lifetime_secs: fields.lifetime_secs,
            scope: fields.scope,
            priority,
            copy_budget: fields.copy_budget,
            receipt_lock: fields.receipt_lock,
            body: fields.body.into_inner(),
        };
        envelope.validate()?;
        Ok(envelope)
    }

    /// The rules every envelope on the wire obeys: copy budget ≥ 1, lifetime in
    /// `1..=MAX_LIFETIME_SECS`, body ≤ [`MAX_BODY_LEN`].
    pub fn validate(&self) -> Result<(), ItemError> {
        if self.copy_budget == 0 {
            return Err(ItemError::ZeroCopyBudget);
        }
        if self.lifetime_secs == 0 || self.lifetime_secs > MAX_LIFETIME_SECS {
            return Err(ItemError::BadLifetime(self.lifetime_secs));
        }
        if self.body.len() > MAX_BODY_LEN {
            return Err(ItemError::BodyTooLong);
        }
        Ok(())
    }

    /// BLAKE3 of the canonical encoding, in the envelope id context.
    pub fn id(&self) -> ItemId {
        ItemId(blake3::derive_key(ENVELOPE_ID_CONTEXT, &self.encode()))
    }

    /// When carriers may drop it (sender's clock): `created_at + lifetime`, saturating so
    /// that a wild timestamp means "far future", never a wrap to the past.
    pub fn expires_at_secs(&self) -> u64 {
        self.created_at_secs
            .saturating_add(u64::from(self.lifetime_secs))
    }
}

impl Tombstone {
    /// The anti-packet that purges `envelope`, living exactly as long as the envelope could.
    /// `proof` must open the envelope's lock ([`Tombstone::opens`]) or carriers refuse it.
    pub fn for_envelope(envelope: &Envelope, proof: ReceiptProof) -> Tombstone {
        Tombstone {
            target: envelope.id(),
            scope: envelope.scope,
            expires_at_secs: envelope.expires_at_secs(),
            proof,
        }
    }

    /// Whether this tombstone is a genuine receipt for `envelope`.
    pub fn opens(&self, envelope: &Envelope) -> bool {
        self.target == envelope.id() && self.proof.lock() == envelope.receipt_lock
    }

    /// The canonical encoding: what is stored, sent and hashed into the id.
    pub fn encode(&self) -> Vec<u8> {
        let fields = TombstoneFields {
            target: self.target,
            scope: self.scope,
            expires_at_secs: self.expires_at_secs,
            proof: self.proof,
        };
        let mut out = Vec::with_capacity(MAX_TOMBSTONE_LEN);
        out.push(TOMBSTONE_TAG_V1);
        codec::encode_into(&fields, &mut out);
        out
    }

    /// Parses a canonical tombstone encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ItemError> {
        let rest = split_tag(bytes, TOMBSTONE_TAG_V1, MAX_TOMBSTONE_LEN)?;
        let fields: TombstoneFields = codec::decode_exact(rest, MAX_TOMBSTONE_LEN - 1)?;
        Ok(Tombstone {
            target: fields.target,
            scope: fields.scope,
            expires_at_secs: fields.expires_at_secs,
            proof: fields.proof,
        })
    }

    /// BLAKE3 of the target's id, in the tombstone id context.
    ///
    /// A tombstone's id depends on its target alone: there is one receipt per envelope, so a
    /// peer can tell from an envelope's id alone which tombstone would purge it (the session
    /// skips sending envelopes whose receipt the peer holds), and a forged receipt cannot
    /// live next to the real one as a second item.
    pub fn id(&self) -> ItemId {
        Tombstone::id_for(&self.target)
    }

    /// The id of the tombstone that targets `envelope`.
    pub fn id_for(envelope: &ItemId) -> ItemId {
        ItemId(blake3::derive_key(TOMBSTONE_ID_CONTEXT, &envelope.0))
    }

    pub fn expires_at_secs(&self) -> u64 {
        self.expires_at_secs
    }
}

impl Item {
    /// The canonical encoding (its first byte says the kind).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Item::Envelope(envelope) => envelope.encode(),
            Item::Tombstone(tombstone) => tombstone.encode(),
        }
    }

    /// Parses either kind, dispatching on the tag byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, ItemError> {
        match bytes.first() {
            None => Err(ItemError::Empty),
            Some(&ENVELOPE_TAG_V1) => Envelope::decode(bytes).map(Item::Envelope),
            Some(&TOMBSTONE_TAG_V1) => Tombstone::decode(bytes).map(Item::Tombstone),
            Some(&tag) => Err(ItemError::UnknownTag(tag)),
        }
    }

    pub fn id(&self) -> ItemId {
        match self {
            Item::Envelope(envelope) => envelope.id(),
            Item::Tombstone(tombstone) => tombstone.id(),
        }
    }

    /// The kind as the store indexes it; a tombstone's kind names the envelope it purges.
    pub fn kind(&self) -> ItemKind {
        match self {
            Item::Envelope(_) => ItemKind::Envelope,
            Item::Tombstone(tombstone) => ItemKind::Tombstone {
                target: tombstone.target,
            },
        }
    }

    /// The envelope's scope, or the scope of the tombstone's target.
    pub fn scope(&self) -> ScopeTag {
        match self {
            Item::Envelope(envelope) => envelope.scope,
            Item::Tombstone(tombstone) => tombstone.scope,
        }
    }

    /// Tombstones are [`Priority::High`]: a purge that travels late lets the envelope
    /// waste buffers and airtime meanwhile.
    pub fn priority(&self) -> Priority {
        match self {
            Item::Envelope(envelope) => envelope.priority,
            Item::Tombstone(_) => Priority::High,
        }
    }

    pub fn expires_at_secs(&self) -> u64 {
        match self {
            Item::Envelope(envelope) => envelope.expires_at_secs(),
            Item::Tombstone(tombstone) => tombstone.expires_at_secs,
        }
    }

    /// The sender's creation time; 0 for tombstones, which carry none.
    pub fn created_at_secs(&self) -> u64 {
        match self {
            Item::Envelope(envelope) => envelope.created_at_secs,
            Item::Tombstone(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn golden_envelope() -> Envelope {
        Envelope {
            created_at_secs: 1_790_000_000,
            lifetime_secs: 7 * 24 * 3600,
            scope: ScopeTag([1, 2, 3, 4, 5, 6, 7, 8]),
            priority: Priority::Normal,
            copy_budget: 8,
            receipt_lock: golden_proof().lock(),
            body: b"hello, cairn".to_vec(),
        }
    }

    fn golden_proof() -> ReceiptProof {
        ReceiptProof([0x5C; 16])
    }

    fn golden_tombstone() -> Tombstone {
        Tombstone {
            target: ItemId([0xAB; 32]),
            scope: ScopeTag([1, 2, 3, 4, 5, 6, 7, 8]),
            expires_at_secs: 1_790_604_800,
            proof: golden_proof(),
        }
    }

    /// An envelope encoding (golden header, body "hi") with the priority, copy budget and
    /// lifetime bytes given: builds envelopes no valid sender could.
    fn with_fields(priority: u8, copy_budget: u8, lifetime: [u8; 5]) -> Vec<u8> {
        let mut bytes = vec![ENVELOPE_TAG_V1, 0xFC, 0x80, 0x3B, 0xB1, 0x6A];
        bytes.extend_from_slice(&lifetime);
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, priority, copy_budget]);
        bytes.extend_from_slice(&[0x11; 12]);
        bytes.extend_from_slice(&[2, b'h', b'i']);
        bytes
    }

    const LIFETIME_7D: [u8; 5] = [0xFC, 0x80, 0x3A, 0x09, 0x00];

    #[test]
    fn golden_envelope_vector() {
        // c1 | created 0xFC+u32 LE | lifetime 0xFC+u32 LE | scope | prio 01 | budget 08 |
        // receipt lock (12) | body len 0c | "hello, cairn"
        let envelope = golden_envelope();
        let bytes = envelope.encode();
        assert_eq!(
            hex::encode(&bytes),
            "c1fc803bb16afc803a090001020304050607080108\
             201c5fe4d48260acd6e29af4\
             0c68656c6c6f2c20636169726e"
        );
        assert_eq!(
            envelope.id().to_hex(),
            "04fc1bccf6aebdbac8f2f62316ea5df37743413a0ba38b718f705aed7530572d"
        );
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        assert_eq!(Item::decode(&bytes).unwrap(), Item::Envelope(envelope));
    }

    #[test]
    fn golden_tombstone_vector() {
        let tombstone = golden_tombstone();
        let bytes = tombstone.encode();
        assert_eq!(
            hex::encode(&bytes),
            "c2abababababababababababababababababababababababababababababababab\
             0102030405060708fc0076ba6a5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c"
        );
        assert_eq!(
            tombstone.id().to_hex(),
            "d032e4a1028f9e3fb7fcfb79668a3900ae845d00e34462ecc267139dcac2c288"
        );
        assert_eq!(Tombstone::decode(&bytes).unwrap(), tombstone);
        assert_eq!(Item::decode(&bytes).unwrap(), Item::Tombstone(tombstone));
    }

    #[test]
    fn ids_are_domain_separated_by_kind() {
        let envelope = golden_envelope();
        let bytes = envelope.encode();
        assert_eq!(
            envelope.id().0,
            blake3::derive_key("cairn 2026-11 envelope id v1", &bytes)
        );
        assert_ne!(
            envelope.id().0,
            blake3::derive_key("cairn 2026-11 tombstone id v1", &bytes)
        );
    }

    #[test]
    fn tombstone_for_envelope_targets_it_until_its_expiry() {
        let envelope = golden_envelope();
        let tombstone = Tombstone::for_envelope(&envelope, golden_proof());
        assert_eq!(tombstone.target, envelope.id());
        assert!(tombstone.opens(&envelope));
        let forged = Tombstone::for_envelope(&envelope, ReceiptProof([0x5D; 16]));
        assert!(!forged.opens(&envelope));
        let other = Envelope {
            body: b"other".to_vec(),
            ..golden_envelope()
        };
        assert!(
            !tombstone.opens(&other),
            "a proof opens its own envelope only"
        );
        assert_eq!(tombstone.id(), forged.id(), "one receipt id per envelope");
        assert_eq!(tombstone.id(), Tombstone::id_for(&envelope.id()));
        assert_eq!(tombstone.scope, envelope.scope);
        assert_eq!(tombstone.expires_at_secs, 1_790_000_000 + 604_800);
    }

    #[test]
    fn a_100_byte_message_fits_a_lora_frame_with_room() {
        let envelope = Envelope {
            body: vec![0x5A; 100],
            ..golden_envelope()
        };
        let len = envelope.encode().len();
        assert_eq!(len, 134, "header is 34 bytes");
        // A 200-byte LoRa frame less the hop session's 21 bytes and a chunk's 14.
        assert!(len <= 165);
    }

    #[test]
    fn max_item_len_is_the_largest_valid_encoding() {
        let largest = Envelope {
            created_at_secs: u64::MAX,
            lifetime_secs: MAX_LIFETIME_SECS,
            scope: ScopeTag([0xFF; 8]),
            priority: Priority::Bulk,
            copy_budget: MAX_COPY_BUDGET,
            receipt_lock: ReceiptLock([0xFF; 12]),
            body: vec![0xFF; MAX_BODY_LEN],
        };
        let bytes = largest.encode();
        assert_eq!(bytes.len(), MAX_ITEM_LEN);
        assert_eq!(Envelope::decode(&bytes).unwrap(), largest);

        let tombstone = Tombstone {
            expires_at_secs: u64::MAX,
            ..golden_tombstone()
        };
        let bytes = tombstone.encode();
        assert_eq!(bytes.len(), MAX_TOMBSTONE_LEN);
        assert_eq!(Tombstone::decode(&bytes).unwrap(), tombstone);
    }

    #[test]
    fn every_truncation_is_refused() {
        for bytes in [golden_envelope().encode(), golden_tombstone().encode()] {
            assert_eq!(Item::decode(&[]), Err(ItemError::Empty));
            for cut in 1..bytes.len() {
                assert_eq!(
                    Item::decode(&bytes[..cut]),
                    Err(ItemError::Codec(CodecError::Truncated)),
                    "cut at {cut} of {}",
                    hex::encode(&bytes)
                );
            }
        }
    }

    #[test]
    fn every_byte_flip_is_refused_or_is_another_canonical_item() {
        for original in [golden_envelope().encode(), golden_tombstone().encode()] {
            let original_id = Item::decode(&original).unwrap().id();
            for position in 0..original.len() {
                for mask in [0x01u8, 0x80, 0xFF] {
                    let mut bytes = original.clone();
                    bytes[position] ^= mask;
                    if let Ok(item) = Item::decode(&bytes) {
                        // Flipped body/scope/target bytes give another valid item: it must
                        // round-trip exactly and have its own id.
                        assert_eq!(item.encode(), bytes);
                        // A tombstone is named by its target alone.
                        let same_target = matches!(
                            (&item, Item::decode(&original)),
                            (Item::Tombstone(a), Ok(Item::Tombstone(b))) if a.target == b.target
                        );
                        assert_eq!(item.id() == original_id, same_target);
                    }
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for mut bytes in [golden_envelope().encode(), golden_tombstone().encode()] {
            bytes.push(0);
            assert_eq!(
                Item::decode(&bytes),
                Err(ItemError::Codec(CodecError::TrailingBytes { extra: 1 }))
            );
        }
    }

    #[test]
    fn a_4_gib_body_length_is_refused_without_allocating() {
        let mut bytes = golden_envelope().encode();
        let header = bytes.len() - 12 - 1;
        bytes.truncate(header);
        bytes.extend_from_slice(&[0xFC, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(Envelope::decode(&bytes), Err(ItemError::BodyTooLong));
        bytes.truncate(header);
        bytes.extend_from_slice(&[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(Envelope::decode(&bytes), Err(ItemError::BodyTooLong));
    }

    #[test]
    fn oversize_bodies_and_inputs_are_refused() {
        // A body one byte over the limit, really present: the bound refuses it.
        let too_big = Envelope {
            body: vec![0; MAX_BODY_LEN + 1],
            ..golden_envelope()
        };
        assert_eq!(too_big.validate(), Err(ItemError::BodyTooLong));
        assert_eq!(
            Envelope::decode(&too_big.encode()),
            Err(ItemError::BodyTooLong)
        );
        // Input longer than any item is refused before decoding.
        let mut huge = vec![ENVELOPE_TAG_V1];
        huge.resize(MAX_ITEM_LEN + 1, 0);
        assert_eq!(
            Item::decode(&huge),
            Err(ItemError::Codec(CodecError::TooLong {
                len: MAX_ITEM_LEN + 1,
                max: MAX_ITEM_LEN
            }))
        );
        let mut long_tombstone = golden_tombstone().encode();
        long_tombstone.resize(MAX_TOMBSTONE_LEN + 1, 0);
        assert!(matches!(
            Item::decode(&long_tombstone),
            Err(ItemError::Codec(CodecError::TooLong { .. }))
        ));
    }

    #[test]
    fn field_rules_are_enforced() {
        let valid = with_fields(2, 1, LIFETIME_7D);
        assert_eq!(Envelope::decode(&valid).unwrap().priority, Priority::Bulk);
        assert_eq!(
            Envelope::decode(&with_fields(3, 1, LIFETIME_7D)),
            Err(ItemError::BadPriority(3))
        );
        assert_eq!(
            Envelope::decode(&with_fields(0, 0, LIFETIME_7D)),
            Err(ItemError::ZeroCopyBudget)
        );
        // Lifetime 0 is a one-byte varint: the canonical form of this test vector is shorter,
        // so build it from the struct instead.
        let zero_lifetime = Envelope {
            lifetime_secs: 0,
            ..golden_envelope()
        };
        assert_eq!(
            Envelope::decode(&zero_lifetime.encode()),
            Err(ItemError::BadLifetime(0))
        );
        let too_long_lived = Envelope {
            lifetime_secs: MAX_LIFETIME_SECS + 1,
            ..golden_envelope()
        };
        assert_eq!(
            Envelope::decode(&too_long_lived.encode()),
            Err(ItemError::BadLifetime(MAX_LIFETIME_SECS + 1))
        );
        assert_eq!(
            Envelope {
                copy_budget: 0,
                ..golden_envelope()
            }
            .validate(),
            Err(ItemError::ZeroCopyBudget)
        );
    }

    #[test]
    fn overlong_varints_are_refused() {
        // created_at written as 0xFD + u64 instead of 0xFC + u32: same value, other bytes,
        // would be another id.
        let mut bytes = vec![ENVELOPE_TAG_V1, 0xFD, 0x80, 0x3B, 0xB1, 0x6A, 0, 0, 0, 0];
        bytes.extend_from_slice(&golden_envelope().encode()[6..]);
        assert_eq!(
            Envelope::decode(&bytes),
            Err(ItemError::Codec(CodecError::NonCanonical))
        );
    }

    #[test]
    fn tags_are_checked() {
        let envelope = golden_envelope().encode();
        let tombstone = golden_tombstone().encode();
        assert_eq!(
            Envelope::decode(&tombstone),
            Err(ItemError::WrongKind {
                expected: ENVELOPE_TAG_V1,
                found: TOMBSTONE_TAG_V1
            })
        );
        assert_eq!(
            Tombstone::decode(&envelope),
            Err(ItemError::WrongKind {
                expected: TOMBSTONE_TAG_V1,
                found: ENVELOPE_TAG_V1
            })
        );
        let mut unknown = envelope.clone();
        unknown[0] = 0xC3;
        assert_eq!(Item::decode(&unknown), Err(ItemError::UnknownTag(0xC3)));
        assert_eq!(Envelope::decode(&unknown), Err(ItemError::UnknownTag(0xC3)));
    }

    #[test]
    fn item_accessors() {
        let envelope = golden_envelope();
        let item = Item::Envelope(envelope.clone());
        assert_eq!(item.kind(), ItemKind::Envelope);
        assert_eq!(item.priority(), Priority::Normal);
        assert_eq!(item.created_at_secs(), 1_790_000_000);
        assert_eq!(item.expires_at_secs(), 1_790_604_800);
        assert_eq!(item.id(), envelope.id());

        let item = Item::Tombstone(Tombstone::for_envelope(&envelope, golden_proof()));
        assert_eq!(
            item.kind(),
            ItemKind::Tombstone {
                target: envelope.id()
            }
        );
        assert_eq!(item.priority(), Priority::High);
        assert_eq!(item.created_at_secs(), 0);
        assert_eq!(item.expires_at_secs(), 1_790_604_800);
        assert_eq!(item.scope(), envelope.scope);
    }

    #[test]
    fn expiry_saturates_instead_of_wrapping() {
        let envelope = Envelope {
            created_at_secs: u64::MAX - 5,
            ..golden_envelope()
        };
        assert_eq!(envelope.expires_at_secs(), u64::MAX);
    }

    #[test]
    fn item_id_hex() {
        let id = golden_envelope().id();
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(ItemId::from_hex(&text), Ok(id));
        assert_eq!(ItemId::from_hex(&text.to_uppercase()), Ok(id));
        assert_eq!(format!("{id:?}"), format!("ItemId({})", &text[..16]));
        assert_eq!(ItemId::from_hex(&text[..63]), Err(ParseItemIdError));
        assert_eq!(
            ItemId::from_hex(&format!("{}g", &text[..63])),
            Err(ParseItemIdError)
        );
        assert_eq!(
            ItemId::from_hex("é".repeat(32).as_str()),
            Err(ParseItemIdError)
        );
    }

    #[test]
    fn value_types_have_fixed_wire_forms() {
        #[derive(Debug, PartialEq, Encode, Decode)]
        struct Offer {
            id: ItemId,
            scope: ScopeTag,
            priority: Priority,
        }
        let offer = Offer {
            id: ItemId([7; 32]),
            scope: ScopeTag([9; 8]),
            priority: Priority::Bulk,
        };
        let bytes = codec::encode(&offer);
        assert_eq!(bytes.len(), 32 + 8 + 1);
        assert_eq!(codec::decode_exact::<Offer>(&bytes, 41).unwrap(), offer);
        let mut bad = bytes.clone();
        bad[40] = 3;
        assert!(matches!(
            codec::decode_exact::<Offer>(&bad, 41),
            Err(CodecError::Invalid(_))
        ));
    }

    fn envelope_strategy() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            1..=MAX_LIFETIME_SECS,
            any::<[u8; 8]>(),
            0u8..3,
            1u8..=MAX_COPY_BUDGET,
            any::<[u8; 12]>(),
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(created, lifetime, scope, priority, budget, lock, body)| {
                Envelope {
                    created_at_secs: created,
                    lifetime_secs: lifetime,
                    scope: ScopeTag(scope),
                    priority: Priority::from_u8(priority).unwrap(),
                    copy_budget: budget,
                    receipt_lock: ReceiptLock(lock),
                    body,
                }
            })
    }

    proptest! {
        #[test]
        fn envelopes_round_trip_with_stable_ids(envelope in envelope_strategy()) {
            let bytes = envelope.encode();
            prop_assert!(bytes.len() <= MAX_ITEM_LEN);
            prop_assert!(bytes.len() <= envelope.body.len() + MAX_ENVELOPE_HEADER_LEN);
            let decoded = Envelope::decode(&bytes).unwrap();
            prop_assert_eq!(decoded.id(), envelope.id());
            prop_assert_eq!(decoded.encode(), bytes);
            prop_assert_eq!(&decoded, &envelope);
            let item = Item::decode(&envelope.encode()).unwrap();
            prop_assert_eq!(item.id(), envelope.id());
        }

        #[test]
        fn tombstones_round_trip_with_stable_ids(
            target in any::<[u8; 32]>(), scope in any::<[u8; 8]>(), expires in any::<u64>(),
            proof in any::<[u8; 16]>()
        ) {
            let tombstone = Tombstone {
                target: ItemId(target),
                scope: ScopeTag(scope),
                expires_at_secs: expires,
                proof: ReceiptProof(proof),
            };
            let bytes = tombstone.encode();
            prop_assert!(bytes.len() <= MAX_TOMBSTONE_LEN);
            let decoded = Tombstone::decode(&bytes).unwrap();
            prop_assert_eq!(decoded.id(), tombstone.id());
            prop_assert_eq!(decoded, tombstone);
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_canonical(
            tag in prop_oneof![Just(ENVELOPE_TAG_V1), Just(TOMBSTONE_TAG_V1), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&rest);
            if let Ok(item) = Item::decode(&bytes) {
                prop_assert_eq!(item.encode(), bytes);
            }
        }
    }
}
