//! Contacts: the codes people exchange, pairing in person, and the contact book.
//!
//! * A [`ContactCode`] is text (`cairn1:` and base32) or a QR code that carries who someone is
//!   (identity key, device key and its signature, a display name) and how to reach them. Its
//!   checksum turns a mistyped code into a clear error instead of a contact with a wrong key.
//! * [`Pairing`] is the in-person key agreement, after Briar's BQP: each screen shows a code
//!   with a commitment to a fresh ephemeral key; after both phones scanned each other they
//!   reveal the keys over whatever link is nearby, check them against the commitments and
//!   confirm with MACs. Someone relaying or substituting messages on that link cannot match a
//!   commitment he did not make, so he is detected. It is a pure state machine: bytes in,
//!   bytes out, no I/O, no clock (the caller times out).
//! * The [`ContactBook`] keeps contacts with how each was verified, in a private file in the
//!   node's home directory, and never lets a verification or a device key change silently.
//!
//! ```
//! use cairn_node::contact::{ContactCode, DisplayName, Pairing};
//! use cairn_node::identity::Identity;
//! # use rand_core_06::SeedableRng;
//! # let mut rng = rand_chacha_03::ChaCha20Rng::seed_from_u64(7);
//! let alice = Identity::generate(&mut rng);
//! let bob = Identity::generate(&mut rng);
//! let name = |n: &str| DisplayName::new(n).unwrap();
//! let mut at_alice = Pairing::start(&alice, name("Alice"), vec![], &mut rng).unwrap();
//! let mut at_bob = Pairing::start(&bob, name("Bob"), vec![], &mut rng).unwrap();
//! // Each phone scans the other's screen (here: the code as text).
//! let alice_code = ContactCode::decode(&at_alice.code().encode()).unwrap();
//! let bob_code = ContactCode::decode(&at_bob.code().encode()).unwrap();
//! at_alice.handle_scanned_code(bob_code).unwrap();
//! at_bob.handle_scanned_code(alice_code).unwrap();
//! // Then they talk over a nearby link until neither has anything left to send.
//! loop {
//!     let mut moved = false;
//!     while let Some(bytes) = at_alice.poll_transmit() { at_bob.handle_message(&bytes).unwrap(); moved = true; }
//!     while let Some(bytes) = at_bob.poll_transmit() { at_alice.handle_message(&bytes).unwrap(); moved = true; }
//!     if !moved { break; }
//! }
//! let bob_at_alice = at_alice.take_paired().unwrap();
//! assert_eq!(bob_at_alice.contact.identity(), bob.public_key());
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use rand_core_06::{CryptoRng, RngCore};
use x25519_dalek::{EphemeralSecret, PublicKey as X25519PublicKey};
use zeroize::Zeroizing;

use crate::at_rest::SealKey;
use crate::identity::{private_file, DevicePublicKey, Identity, IdentityPublicKey};
use crate::seal::{MailboxKey, PairKeys};

/// Longest display name, in UTF-8 bytes: enough for a name, short enough for a QR code.
pub const MAX_DISPLAY_NAME_BYTES: usize = 64;
/// Most reachability hints a code carries.
pub const MAX_HINTS: usize = 4;
/// Longest reachability hint, in bytes.
pub const MAX_HINT_BYTES: usize = 64;
/// Most contacts a book holds: far beyond a person's contacts, small enough that the file
/// stays a few megabytes.
pub const MAX_CONTACTS: usize = 10_000;
/// Name of the contact book inside the node's home directory.
pub const CONTACT_BOOK_FILE_NAME: &str = "contacts.bin";
/// The file whose lock serialises writers of the contact book.
pub const CONTACT_BOOK_LOCK_FILE_NAME: &str = "contacts.lock";

/// The contact code format this build writes and reads. It is part of the prefix
/// (`cairn1:`), so a newer code is recognised as such before anything else is parsed.
pub const CONTACT_CODE_VERSION: u32 = 1;
const CODE_PREFIX: &str = "cairn";
const CODE_CHECKSUM_CONTEXT: &str = "cairn 2026 contact code checksum";
const CODE_CHECKSUM_LEN: usize = 4;
const FLAG_HAS_COMMITMENT: u8 = 0x01;
/// Length of a pairing commitment. 128 bits, like Briar's: a substitute key must match it
/// exactly (a second preimage), and it keeps the QR code small.
pub const COMMITMENT_LEN: usize = 16;
/// flags, identity, device, signature, mailbox key, name length, hint count.
const MIN_CODE_PAYLOAD_LEN: usize = 1 + 32 + 32 + 64 + 32 + 1 + 1;
const MAX_CODE_PAYLOAD_LEN: usize = MIN_CODE_PAYLOAD_LEN
    + COMMITMENT_LEN
    + MAX_DISPLAY_NAME_BYTES
    + MAX_HINTS * (1 + MAX_HINT_BYTES);
const MAX_CODE_BASE32_CHARS: usize = (MAX_CODE_PAYLOAD_LEN + CODE_CHECKSUM_LEN) * 8 / 5 + 1;
/// Longest text `decode` looks at, whitespace and line breaks included.
pub const MAX_CODE_INPUT_BYTES: usize = 4096;

const COMMITMENT_CONTEXT: &str = "cairn 2026 pairing commitment";
const TRANSCRIPT_CONTEXT: &str = "cairn 2026 pairing transcript";
const MASTER_CONTEXT: &str = "cairn 2026 pairing master secret";
const ROOT_CONTEXT: &str = "cairn 2026 pairwise root secret";
const CONFIRM_FIRST_CONTEXT: &str = "cairn 2026 pairing confirmation first";
const CONFIRM_SECOND_CONTEXT: &str = "cairn 2026 pairing confirmation second";
const PAIRING_VERSION: u8 = 1;
const MESSAGE_KEY: u8 = 1;
const MESSAGE_CONFIRM: u8 = 2;
const PAIRING_MESSAGE_LEN: usize = 2 + 32;

const BOOK_MAGIC: &[u8; 8] = b"cairn-cb";
/// Sealed under the identity's storage key ([`crate::at_rest`]).
const BOOK_VERSION: u8 = 3;
/// The last format kept in the clear (checksummed): still read, and sealed at once.
const BOOK_VERSION_CLEAR: u8 = 2;
const BOOK_CHECKSUM_CONTEXT: &str = "cairn 2026 contact book checksum";
const MAX_BOOK_ENTRY_LEN: usize = 32
    + 32
    + 64
    + 32
    + 1
    + 1
    + MAX_DISPLAY_NAME_BYTES
    + 1
    + MAX_HINTS * (1 + MAX_HINT_BYTES)
    + 2
    + MAX_PAIR_KEYS_LEN;
/// Longest persisted [`PairKeys`] state (the outgoing key and the window's incoming keys).
const MAX_PAIR_KEYS_LEN: usize = 2 + 40 * (1 + crate::seal::KEEP_PERIODS as usize + 1);
const MAX_BOOK_FILE_LEN: u64 =
    (8 + 1 + 4 + crate::at_rest::SEAL_OVERHEAD + MAX_CONTACTS * MAX_BOOK_ENTRY_LEN) as u64;

/// Why a contact code (or a name or hint for one) was refused. The variants match what the
/// user should do: fix a typo, update Cairn, or ask for a new code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactCodeError {
    #[error("this is not a Cairn contact code (those start with \"cairn1:\")")]
    NotACairnCode,
    #[error(
        "this contact code is from a newer version of Cairn (code format {version}); update \
         Cairn to add this contact"
    )]
    NewerVersion { version: u32 },
    #[error("this is too long to be a Cairn contact code")]
    TooLong,
    #[error(
        "this contact code has a typo: {character:?} (character {position}, not counting \
         spaces) cannot appear in a code"
    )]
    InvalidCharacter { character: char, position: usize },
    #[error("this contact code has a typo: characters are missing or extra")]
    BadLength,
    #[error("this contact code is incomplete: characters are missing")]
    Truncated,
    #[error("this contact code has a typo: checksum mismatch; compare it with the original")]
    ChecksumMismatch,
    #[error("this contact code is damaged ({reason}); ask for a new one")]
    Malformed { reason: &'static str },
    #[error("display name refused: {reason}")]
    InvalidDisplayName { reason: &'static str },
    #[error("reachability hint refused: {reason}")]
    InvalidHint { reason: &'static str },
    #[error("a contact code carries at most {MAX_HINTS} reachability hints, got {count}")]
    TooManyHints { count: usize },
    #[error(
        "this contact code's device key is not signed by its identity key; it may be forged, \
         ask for a new one"
    )]
    InvalidDeviceSignature,
    #[error("this contact code is too long to draw as a QR code")]
    TooLongForQr,
}

/// The name someone chose for themselves, as shown to their contacts.
///
/// Bounded, and free of control and invisible formatting characters: a name is shown next to
/// verification marks, and right-to-left overrides or zero-width characters could make one
/// contact's name pass for another's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn new(name: &str) -> Result<Self, ContactCodeError> {
        let invalid = |reason| Err(ContactCodeError::InvalidDisplayName { reason });
        if name.trim().is_empty() {
            return invalid("it is empty");
        }
        if name.len() > MAX_DISPLAY_NAME_BYTES {
            return invalid("longer than 64 bytes");
        }
        if name.trim() != name {
            return invalid("it starts or ends with spaces");
        }
        if name.chars().any(|c| c.is_control()) {
            return invalid("it contains control characters");
        }
        if name.chars().any(is_invisible_format_char) {
            return invalid("it contains invisible formatting characters");
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Bidirectional overrides and isolates, zero-width characters and the byte order mark.
fn is_invisible_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Where a contact might be reached without the mesh, for example a LAN address
/// `"192.168.1.20:7420"`. Only a hint: the Noise handshake decides who is really there.
///
/// Printable ASCII without spaces, at most [`MAX_HINT_BYTES`] bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReachabilityHint(String);

impl ReachabilityHint {
    pub fn new(hint: &str) -> Result<Self, ContactCodeError> {
        let invalid = |reason| Err(ContactCodeError::InvalidHint { reason });
        if hint.is_empty() {
            return invalid("it is empty");
        }
        if hint.len() > MAX_HINT_BYTES {
            return invalid("longer than 64 bytes");
        }
        if !hint.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid("only printable ASCII without spaces is allowed");
        }
        Ok(Self(hint.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReachabilityHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReachabilityHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// `BLAKE3(derive_key "cairn 2026 pairing commitment", ephemeral public key)`, truncated to
/// [`COMMITMENT_LEN`] bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairingCommitment([u8; COMMITMENT_LEN]);

impl PairingCommitment {
    /// The commitment to an ephemeral X25519 public key.
    pub fn to_ephemeral_key(ephemeral_public: &[u8; 32]) -> Self {
        let hash = blake3::derive_key(COMMITMENT_CONTEXT, ephemeral_public);
        let mut bytes = [0u8; COMMITMENT_LEN];
        bytes.copy_from_slice(&hash[..COMMITMENT_LEN]);
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; COMMITMENT_LEN] {
        &self.0
    }
}

impl fmt::Debug for PairingCommitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCommitment(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str(")")
    }
}

/// Which way round a terminal draws a QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrTheme {
    /// Light text on a dark background (most terminals): modules are drawn inverted, so the
    /// scanner still sees dark modules on a light field.
    DarkTerminal,
    /// Dark text on a light background.
    LightTerminal,
}

/// Everything someone needs to add a person as a contact, as text or a QR code.
///
/// Text form: `cairn1:` then the base32 (RFC 4648, lower case, no padding) of
/// `flags(1) ‖ identity(32) ‖ device(32) ‖ device signature(64) ‖ [commitment(16)] ‖
/// name length(1) ‖ name ‖ hint count(1) ‖ (hint length(1) ‖ hint)* ‖ checksum(4)`, where the
/// checksum is the first four bytes of `BLAKE3(derive_key "cairn 2026 contact code checksum",
/// version(1) ‖ everything before it)`. Decoding ignores case and whitespace.
///
/// A decoded code is checked all the way: the device signature verifies, so the identity
/// really did vouch for the device key inside.
#[derive(Clone, PartialEq, Eq)]
pub struct ContactCode {
    identity: IdentityPublicKey,
    device: DevicePublicKey,
    device_signature: [u8; 64],
    /// The person's mailbox key: contacts tag envelopes for them with it. Whoever holds the
    /// code can recognise those tags, so a code is as private as a phone number.
    mailbox: [u8; 32],
    display_name: DisplayName,
    hints: Vec<ReachabilityHint>,
    commitment: Option<PairingCommitment>,
}

impl fmt::Debug for ContactCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactCode")
            .field("identity", &self.identity)
            .field("device", &self.device)
            .field("display_name", &self.display_name)
            .field("hints", &self.hints)
            .field("commitment", &self.commitment)
            .finish_non_exhaustive()
    }
}

impl ContactCode {
    /// The code for sharing over any channel (no pairing commitment). Contacts added from it
    /// start out unverified.
    pub fn new(
        identity: &Identity,
        display_name: DisplayName,
        hints: Vec<ReachabilityHint>,
    ) -> Result<Self, ContactCodeError> {
        if hints.len() > MAX_HINTS {
            return Err(ContactCodeError::TooManyHints { count: hints.len() });
        }
        Ok(Self {
            identity: identity.public_key(),
            device: identity.device_public_key(),
            device_signature: identity.device_signature(),
            mailbox: identity.mailbox_key().0,
            display_name,
            hints,
            commitment: None,
        })
    }

    pub fn identity(&self) -> IdentityPublicKey {
        self.identity
    }

    pub fn device(&self) -> DevicePublicKey {
        self.device
    }

    pub fn device_signature(&self) -> &[u8; 64] {
        &self.device_signature
    }

    pub fn display_name(&self) -> &DisplayName {
        &self.display_name
    }

    pub fn hints(&self) -> &[ReachabilityHint] {
        &self.hints
    }

    /// The key that makes this person's recipient tags.
    pub fn mailbox_key(&self) -> MailboxKey {
        MailboxKey(self.mailbox)
    }

    /// Present on codes shown by [`Pairing::start`] only.
    pub fn commitment(&self) -> Option<PairingCommitment> {
        self.commitment
    }

    /// The text form, lower case.
    pub fn encode(&self) -> String {
        let mut payload = Vec::with_capacity(MAX_CODE_PAYLOAD_LEN + CODE_CHECKSUM_LEN);
        payload.push(if self.commitment.is_some() {
            FLAG_HAS_COMMITMENT
        } else {
            0
        });
        payload.extend_from_slice(self.identity.as_bytes());
        payload.extend_from_slice(self.device.as_bytes());
        payload.extend_from_slice(&self.device_signature);
        payload.extend_from_slice(&self.mailbox);
        if let Some(commitment) = &self.commitment {
            payload.extend_from_slice(&commitment.0);
        }
        // Lengths were bounded when the name and hints were made (64 bytes, 4 hints).
        push_short_string(&mut payload, self.display_name.as_str());
        payload.push(self.hints.len() as u8);
        for hint in &self.hints {
            push_short_string(&mut payload, hint.as_str());
        }
        let checksum = code_checksum(&payload);
        payload.extend_from_slice(&checksum);
        format!(
            "{CODE_PREFIX}{CONTACT_CODE_VERSION}:{}",
            base32::encode(&payload)
        )
    }

    /// Parses a code typed, pasted or scanned, with any case and any whitespace.
    ///
    /// Checks happen in the order that gives the most useful error: not a Cairn code at all,
    /// from a newer Cairn, a typo (bad character, bad length or checksum), and only then the
    /// contents (which, with a matching checksum, are wrong only if the sender's software is).
    pub fn decode(text: &str) -> Result<Self, ContactCodeError> {
        if text.len() > MAX_CODE_INPUT_BYTES {
            return Err(ContactCodeError::TooLong);
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let colon = compact.find(':').ok_or(ContactCodeError::NotACairnCode)?;
        let head = compact[..colon].to_ascii_lowercase();
        let version_digits = head
            .strip_prefix(CODE_PREFIX)
            .ok_or(ContactCodeError::NotACairnCode)?;
        if version_digits.is_empty()
            || version_digits.len() > 6
            || !version_digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ContactCodeError::NotACairnCode);
        }
        let version: u32 = version_digits
            .parse()
            .map_err(|_| ContactCodeError::NotACairnCode)?;
        if version > CONTACT_CODE_VERSION {
            return Err(ContactCodeError::NewerVersion { version });
        }
        if version != CONTACT_CODE_VERSION {
            return Err(ContactCodeError::NotACairnCode);
        }
        let body = &compact[colon + 1..];
        if body.len() > MAX_CODE_BASE32_CHARS {
            return Err(ContactCodeError::TooLong);
        }
        let prefix_chars = compact[..=colon].chars().count();
        let bytes = base32::decode(body).map_err(|e| match e {
            base32::DecodeError::InvalidCharacter { character, index } => {
                ContactCodeError::InvalidCharacter {
                    character,
                    position: prefix_chars + index + 1,
                }
            }
            base32::DecodeError::BadLength => ContactCodeError::BadLength,
        })?;
        if bytes.len() < MIN_CODE_PAYLOAD_LEN + CODE_CHECKSUM_LEN {
            return Err(ContactCodeError::Truncated);
        }
        let (payload, checksum) = bytes.split_at(bytes.len() - CODE_CHECKSUM_LEN);
        if code_checksum(payload) != checksum {
            return Err(ContactCodeError::ChecksumMismatch);
        }
        Self::parse_payload(payload)
    }

    fn parse_payload(payload: &[u8]) -> Result<Self, ContactCodeError> {
        let malformed = |reason| ContactCodeError::Malformed { reason };
        let mut reader = Reader::new(payload);
        let flags = reader.u8().ok_or(malformed("truncated"))?;
        if flags & !FLAG_HAS_COMMITMENT != 0 {
            return Err(malformed("unknown flags"));
        }
        let identity = IdentityPublicKey::from_bytes(reader.array().ok_or(malformed("truncated"))?)
            .map_err(|_| malformed("the identity key is not a valid key"))?;
        let device = DevicePublicKey::from_bytes(reader.array().ok_or(malformed("truncated"))?);
        let device_signature: [u8; 64] = reader.array().ok_or(malformed("truncated"))?;
        let mailbox: [u8; 32] = reader.array().ok_or(malformed("truncated"))?;
        let commitment = if flags & FLAG_HAS_COMMITMENT != 0 {
            Some(PairingCommitment(
                reader.array().ok_or(malformed("truncated"))?,
            ))
        } else {
            None
        };
        let name = reader.short_str().ok_or(malformed("bad display name"))?;
        let display_name = DisplayName::new(name)?;
        let hint_count = usize::from(reader.u8().ok_or(malformed("truncated"))?);
        if hint_count > MAX_HINTS {
            return Err(ContactCodeError::TooManyHints { count: hint_count });
        }
        let mut hints = Vec::with_capacity(hint_count);
        for _ in 0..hint_count {
            let hint = reader
                .short_str()
                .ok_or(malformed("bad reachability hint"))?;
            hints.push(ReachabilityHint::new(hint)?);
        }
        if !reader.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        identity
            .verify_device(&device, &device_signature)
            .map_err(|_| ContactCodeError::InvalidDeviceSignature)?;
        Ok(Self {
            identity,
            device,
            device_signature,
            mailbox,
            display_name,
            hints,
            commitment,
        })
    }

    /// Draws the code as a QR code with Unicode half blocks (two rows per line), quiet zone
    /// included. A typical code (a short name, one LAN hint, a commitment) is about 65
    /// columns wide; the largest possible code is wider than 80.
    ///
    /// The QR text is the upper-case form, which QR codes store in their compact
    /// alphanumeric mode; decoding accepts either case.
    pub fn render_qr(&self, theme: QrTheme) -> Result<String, ContactCodeError> {
        use qrcode::render::unicode::Dense1x2;
        let text = self.encode().to_ascii_uppercase();
        let qr = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
            .map_err(|_| ContactCodeError::TooLongForQr)?;
        let (dark, light) = match theme {
            QrTheme::DarkTerminal => (Dense1x2::Light, Dense1x2::Dark),
            QrTheme::LightTerminal => (Dense1x2::Dark, Dense1x2::Light),
        };
        Ok(qr
            .render::<Dense1x2>()
            .dark_color(dark)
            .light_color(light)
            .quiet_zone(true)
            .build())
    }
}

impl fmt::Display for ContactCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for ContactCode {
    type Err = ContactCodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::decode(text)
    }
}

fn code_checksum(payload: &[u8]) -> [u8; CODE_CHECKSUM_LEN] {
    let mut hasher = blake3::Hasher::new_derive_key(CODE_CHECKSUM_CONTEXT);
    // Binds the version from the prefix, so a code cannot be relabelled as another format.
    hasher.update(&[CONTACT_CODE_VERSION as u8]);
    hasher.update(payload);
    let mut out = [0u8; CODE_CHECKSUM_LEN];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CODE_CHECKSUM_LEN]);
    out
}

/// Appends a length byte and the string; callers bound the length to 64 bytes beforehand.
fn push_short_string(out: &mut Vec<u8>, text: &str) {
    debug_assert!(text.len() <= usize::from(u8::MAX));
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// A bounds-checked cursor: every read says `None` instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < len {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    /// A length byte (at most 64) and that many bytes of UTF-8.
    fn short_str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u8()?);
        if len > MAX_DISPLAY_NAME_BYTES.max(MAX_HINT_BYTES) {
            return None;
        }
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// RFC 4648 base32, lower case, no padding; decoding accepts either case and refuses
/// anything that is not the canonical encoding of some bytes (so every text has one meaning,
/// and a typo in the last character cannot hide in unused bits).
mod base32 {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum DecodeError {
        /// `index` counts characters from 0.
        InvalidCharacter {
            character: char,
            index: usize,
        },
        BadLength,
    }

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
        let mut buffer: u16 = 0;
        let mut bits = 0;
        for &byte in bytes {
            buffer = (buffer << 8) | u16::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(char::from(ALPHABET[usize::from((buffer >> bits) & 31)]));
            }
            buffer &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(char::from(
                ALPHABET[usize::from((buffer << (5 - bits)) & 31)],
            ));
        }
        out
    }

    fn value(c: char) -> Option<u16> {
        match c {
            'a'..='z' => Some(c as u16 - 'a' as u16),
            'A'..='Z' => Some(c as u16 - 'A' as u16),
            '2'..='7' => Some(c as u16 - '2' as u16 + 26),
            _ => None,
        }
    }

    pub(super) fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(text.len() * 5 / 8);
        let mut buffer: u16 = 0;
        let mut bits = 0;
        let mut count = 0;
        for (index, character) in text.chars().enumerate() {
            let v = value(character).ok_or(DecodeError::InvalidCharacter { character, index })?;
            buffer = (buffer << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
                buffer &= (1 << bits) - 1;
            }
            count += 1;
        }
        // Lengths 1, 3 and 6 (mod 8) never come out of the encoder, and leftover bits must be 0.
        if matches!(count % 8, 1 | 3 | 6) || buffer != 0 {
            return Err(DecodeError::BadLength);
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc4648_vectors() {
            for (plain, encoded) in [
                ("", ""),
                ("f", "my"),
                ("fo", "mzxq"),
                ("foo", "mzxw6"),
                ("foob", "mzxw6yq"),
                ("fooba", "mzxw6ytb"),
                ("foobar", "mzxw6ytboi"),
            ] {
                assert_eq!(encode(plain.as_bytes()), encoded);
                assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
                assert_eq!(decode(&encoded.to_uppercase()).unwrap(), plain.as_bytes());
            }
        }

        #[test]
        fn non_canonical_trailing_bits_are_refused() {
            assert_eq!(decode("mz"), Err(DecodeError::BadLength));
            assert_eq!(decode("m"), Err(DecodeError::BadLength));
            assert_eq!(
                decode("m1"),
                Err(DecodeError::InvalidCharacter {
                    character: '1',
                    index: 1
                })
            );
        }
    }
}

/// How sure the user is that a contact's identity key is really theirs.
///
/// Ordered from weakest to strongest; a contact's state only ever rises on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Verification {
    /// Added from a code that came over some channel (a message, an e-mail): whoever
    /// controlled the channel could have swapped the key.
    Unverified,
    /// The user read the safety code with the contact (e.g. on a call) and they matched.
    VerifiedBySafetyCode,
    /// The phones paired in person: the strongest check Cairn has.
    VerifiedInPerson,
}

impl Verification {
    fn to_byte(self) -> u8 {
        match self {
            Verification::Unverified => 0,
            Verification::VerifiedBySafetyCode => 1,
            Verification::VerifiedInPerson => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Verification::Unverified),
            1 => Some(Verification::VerifiedBySafetyCode),
            2 => Some(Verification::VerifiedInPerson),
            _ => None,
        }
    }
}

/// Someone this node knows: their identity, the device key their identity signed, how to
/// reach them and how they were verified.
///
/// Built only from a decoded [`ContactCode`] or a successful [`Pairing`], so the device
/// signature has always been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    identity: IdentityPublicKey,
    device: DevicePublicKey,
    device_signature: [u8; 64],
    mailbox: [u8; 32],
    display_name: DisplayName,
    hints: Vec<ReachabilityHint>,
    verification: Verification,
    /// The sealing keys shared with this contact ([`PairKeys::to_bytes`]), once there are
    /// any: set after pairing, rolled forward (and old keys deleted) as days pass.
    pair_keys: Option<SecretBytes>,
}

/// Secret bytes: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
struct SecretBytes(Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl Contact {
    /// A contact from a code that came over some channel: unverified until the user checks
    /// the safety code or pairs in person.
    pub fn from_code(code: &ContactCode) -> Self {
        Self::with_verification(code, Verification::Unverified)
    }

    fn with_verification(code: &ContactCode, verification: Verification) -> Self {
        Self {
            identity: code.identity,
            device: code.device,
            device_signature: code.device_signature,
            mailbox: code.mailbox,
            display_name: code.display_name.clone(),
            hints: code.hints.clone(),
            verification,
            pair_keys: None,
        }
    }

    pub fn identity(&self) -> IdentityPublicKey {
        self.identity
    }

    pub fn device(&self) -> DevicePublicKey {
        self.device
    }

    pub fn device_signature(&self) -> &[u8; 64] {
        &self.device_signature
    }

    pub fn display_name(&self) -> &DisplayName {
        &self.display_name
    }

    pub fn hints(&self) -> &[ReachabilityHint] {
        &self.hints
    }

    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// The key to tag envelopes for this contact with.
    pub fn mailbox_key(&self) -> MailboxKey {
        MailboxKey(self.mailbox)
    }

    /// A pairwise root for a contact added from a code, without meeting: X25519 of the two
    /// devices' static keys, hashed with both identities. It lets two people who never met
    /// write to each other, **without forward secrecy until they pair in person**: whoever
    /// later steals either device's key can recompute it, and with it every chain key. Pairing
    /// in person replaces it with a root from ephemeral keys. `None` if the peer's device key
    /// is a low-order point (no shared secret).
    pub fn static_root(&self, own: &Identity) -> Option<PairwiseRootSecret> {
        let secret = x25519_dalek::StaticSecret::from(*own.device_static_secret());
        let shared = secret.diffie_hellman(&X25519PublicKey::from(*self.device.as_bytes()));
        if !shared.was_contributory() {
            return None;
        }
        let (first, second) = {
            let (a, b) = (own.public_key(), self.identity);
            if a.as_bytes() <= b.as_bytes() {
                (a, b)
            } else {
                (b, a)
            }
        };
        let mut material = Zeroizing::new([0u8; 96]);
        material[..32].copy_from_slice(shared.as_bytes());
        material[32..64].copy_from_slice(first.as_bytes());
        material[64..].copy_from_slice(second.as_bytes());
        Some(PairwiseRootSecret(Zeroizing::new(blake3::derive_key(
            "cairn 2026 static pairwise root",
            &material[..],
        ))))
    }

    /// The sealing keys shared with this contact, if any yet.
    pub fn pair_keys(&self) -> Option<PairKeys> {
        self.pair_keys
            .as_ref()
            .and_then(|b| PairKeys::from_bytes(&b.0).ok())
    }
}

/// The 32-byte secret two contacts share after pairing in person, from which the sealing
/// layer derives its keys. Wiped on drop, never shown by `Debug`.
pub struct PairwiseRootSecret(Zeroizing<[u8; 32]>);

impl PairwiseRootSecret {
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PairwiseRootSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairwiseRootSecret(<hidden>)")
    }
}

/// What a successful pairing yields.
#[derive(Debug)]
pub struct PairedContact {
    /// The peer, [`Verification::VerifiedInPerson`].
    pub contact: Contact,
    pub root_secret: PairwiseRootSecret,
}

/// Why pairing failed. Any failure ends the pairing: start again with fresh codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    #[error("this code is not a pairing code; scan the code on the other phone's pairing screen")]
    NotAPairingCode,
    #[error("that is your own code; scan the other phone's screen")]
    PairingWithYourself,
    #[error("a code was already scanned for this pairing")]
    AlreadyScanned,
    #[error(
        "the other device's key does not match the code you scanned: someone may be \
         interfering, or the other phone restarted pairing; start again"
    )]
    CommitmentMismatch,
    #[error(
        "key confirmation failed: the two phones did not agree on the same keys; someone may be \
         interfering; start again"
    )]
    ConfirmationMismatch,
    #[error("the other device sent a key that would make the shared secret predictable")]
    WeakKey,
    #[error("malformed pairing message: {reason}")]
    Malformed { reason: &'static str },
    #[error("pairing message out of order: {reason}")]
    UnexpectedMessage { reason: &'static str },
}

/// Where a [`Pairing`] stands, for the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingStatus {
    /// Showing our code; waiting for the user to scan the other phone's.
    ExpectScan,
    /// Waiting for the other device's ephemeral key.
    ExpectKey,
    /// Waiting for the other device's confirmation.
    ExpectConfirmation,
    /// Done: [`Pairing::take_paired`] has the result (until taken).
    Paired,
    Failed,
}

enum PairingState {
    /// The peer may connect before our user has scanned its code; its key waits here.
    ExpectScan {
        early_key: Option<[u8; 32]>,
    },
    ExpectKey,
    ExpectConfirmation {
        expected: blake3::Hash,
        root: Zeroizing<[u8; 32]>,
    },
    Paired,
    Failed(PairingError),
}

/// One side of an in-person pairing (after Briar's BQP), as a pure state machine.
///
/// 1. [`Pairing::start`] makes a fresh ephemeral X25519 key and a code committing to it;
///    the screen shows [`Pairing::code`].
/// 2. The user scans the other phone: [`Pairing::handle_scanned_code`].
/// 3. Bytes from the nearby link go to [`Pairing::handle_message`]; bytes for it come from
///    [`Pairing::poll_transmit`]. The messages are `version(1) ‖ type(1) ‖ 32 bytes`:
///    the ephemeral public key (type 1), then a confirmation MAC (type 2).
/// 4. Each side checks the peer's key against the commitment in the code it scanned, then
///    derives `master = KDF(X25519(ephemerals) ‖ transcript)`, where the transcript holds
///    both sides' identity, device key, commitment and ephemeral key, ordered by commitment.
///    The side whose commitment sorts first confirms with one key, the other side with
///    another, so a confirmation reflected back or replayed from another pairing fails.
/// 5. [`Pairing::take_paired`] gives the contact, verified in person, and the pairwise root
///    secret. Keep sending until `poll_transmit` is empty: the peer needs our confirmation.
///
/// Why it resists an attacker on the link: each commitment reached the other phone through
/// the camera, before any key was revealed, so a key the attacker substitutes cannot match it.
/// If he substitutes a whole code (his own shown instead of the peer's), the phone that
/// scanned it pairs with *his* identity (and shows his name and fingerprint), while the other
/// phone's confirmation fails, because he cannot compute what it expects.
pub struct Pairing {
    own_code: ContactCode,
    ephemeral: Option<EphemeralSecret>,
    ephemeral_public: [u8; 32],
    peer_code: Option<ContactCode>,
    state: PairingState,
    outbox: VecDeque<Vec<u8>>,
    paired: Option<PairedContact>,
}

impl fmt::Debug for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pairing")
            .field("own_code", &self.own_code)
            .field("peer_code", &self.peer_code)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Pairing {
    /// Starts a pairing: a fresh ephemeral key, and the code to show that commits to it.
    pub fn start(
        identity: &Identity,
        display_name: DisplayName,
        hints: Vec<ReachabilityHint>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, ContactCodeError> {
        let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
        let ephemeral_public = X25519PublicKey::from(&ephemeral).to_bytes();
        let mut own_code = ContactCode::new(identity, display_name, hints)?;
        own_code.commitment = Some(PairingCommitment::to_ephemeral_key(&ephemeral_public));
        Ok(Self {
            own_code,
            ephemeral: Some(ephemeral),
            ephemeral_public,
            peer_code: None,
            state: PairingState::ExpectScan { early_key: None },
            outbox: VecDeque::new(),
            paired: None,
        })
    }

    /// The code to show on screen (as a QR code) for the other phone to scan.
    pub fn code(&self) -> &ContactCode {
        &self.own_code
    }

    #[must_use]
    pub fn status(&self) -> PairingStatus {
        match &self.state {
            PairingState::ExpectScan { .. } => PairingStatus::ExpectScan,
            PairingState::ExpectKey => PairingStatus::ExpectKey,
            PairingState::ExpectConfirmation { .. } => PairingStatus::ExpectConfirmation,
            PairingState::Paired => PairingStatus::Paired,
            PairingState::Failed(_) => PairingStatus::Failed,
        }
    }

    /// The user scanned the other phone's code. Queues our ephemeral key for sending.
    pub fn handle_scanned_code(&mut self, code: ContactCode) -> Result<(), PairingError> {
        let early_key = match &mut self.state {
            PairingState::ExpectScan { early_key } => early_key.take(),
            PairingState::Failed(error) => return Err(error.clone()),
            _ => return Err(PairingError::AlreadyScanned),
        };
        // These two are the user's mistakes, not an attack: let them scan again.
        let Some(commitment) = code.commitment else {
            self.state = PairingState::ExpectScan { early_key };
            return Err(PairingError::NotAPairingCode);
        };
        if code.identity == self.own_code.identity || Some(commitment) == self.own_code.commitment {
            self.state = PairingState::ExpectScan { early_key };
            return Err(PairingError::PairingWithYourself);
        }
        self.peer_code = Some(code);
        self.outbox
            .push_back(pairing_message(MESSAGE_KEY, &self.ephemeral_public));
        self.state = PairingState::ExpectKey;
        match early_key {
            Some(key) => self.fail_on_error(|p| p.accept_peer_key(key)),
            None => Ok(()),
        }
    }

    /// A message from the other device arrived on the link.
    pub fn handle_message(&mut self, bytes: &[u8]) -> Result<(), PairingError> {
        if let PairingState::Failed(error) = &self.state {
            return Err(error.clone());
        }
        if let PairingState::Paired = self.state {
            // A duplicate after success changes nothing and must not undo the pairing.
            return Err(PairingError::UnexpectedMessage {
                reason: "the pairing is already complete",
            });
        }
        self.fail_on_error(|p| p.step(bytes))
    }

    /// The next message to send to the other device, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The result once [`PairingStatus::Paired`] (once: the secret is moved out).
    pub fn take_paired(&mut self) -> Option<PairedContact> {
        self.paired.take()
    }

    fn fail_on_error(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), PairingError>,
    ) -> Result<(), PairingError> {
        let result = f(self);
        if let Err(error) = &result {
            self.state = PairingState::Failed(error.clone());
            self.outbox.clear();
            self.ephemeral = None;
        }
        result
    }

    fn step(&mut self, bytes: &[u8]) -> Result<(), PairingError> {
        if bytes.len() != PAIRING_MESSAGE_LEN {
            return Err(PairingError::Malformed {
                reason: "wrong length",
            });
        }
        if bytes[0] != PAIRING_VERSION {
            return Err(PairingError::Malformed {
                reason: "unknown pairing protocol version",
            });
        }
        let mut body = [0u8; 32];
        body.copy_from_slice(&bytes[2..]);
        match (bytes[1], &mut self.state) {
            (MESSAGE_KEY, PairingState::ExpectScan { early_key }) => {
                if early_key.is_some() {
                    return Err(PairingError::UnexpectedMessage {
                        reason: "a second ephemeral key",
                    });
                }
                *early_key = Some(body);
                Ok(())
            }
            (MESSAGE_KEY, PairingState::ExpectKey) => self.accept_peer_key(body),
            (MESSAGE_KEY, _) => Err(PairingError::UnexpectedMessage {
                reason: "a second ephemeral key",
            }),
            (MESSAGE_CONFIRM, PairingState::ExpectConfirmation { .. }) => self.accept_confirm(body),
            (MESSAGE_CONFIRM, _) => Err(PairingError::UnexpectedMessage {
                reason: "a confirmation before the keys were exchanged",
            }),
            _ => Err(PairingError::Malformed {
                reason: "unknown message type",
            }),
        }
    }

    fn accept_peer_key(&mut self, peer_ephemeral: [u8; 32]) -> Result<(), PairingError> {
        let (Some(peer), Some(own_commitment)) = (&self.peer_code, self.own_code.commitment) else {
            return Err(PairingError::UnexpectedMessage {
                reason: "a key before the code was scanned",
            });
        };
        let peer_commitment = peer.commitment.ok_or(PairingError::NotAPairingCode)?;
        if PairingCommitment::to_ephemeral_key(&peer_ephemeral) != peer_commitment {
            return Err(PairingError::CommitmentMismatch);
        }
        let ephemeral = self
            .ephemeral
            .take()
            .ok_or(PairingError::UnexpectedMessage {
                reason: "a second ephemeral key",
            })?;
        let shared = ephemeral.diffie_hellman(&X25519PublicKey::from(peer_ephemeral));
        if !shared.was_contributory() {
            return Err(PairingError::WeakKey);
        }

        let own_side = TranscriptSide {
            identity: self.own_code.identity,
            device: self.own_code.device,
            mailbox: self.own_code.mailbox,
            commitment: own_commitment,
            ephemeral: self.ephemeral_public,
        };
        let peer_side = TranscriptSide {
            identity: peer.identity,
            device: peer.device,
            mailbox: peer.mailbox,
            commitment: peer_commitment,
            ephemeral: peer_ephemeral,
        };
        // Distinct commitments were checked at scan time; the order is the same on both sides.
        let we_are_first = own_commitment < peer_commitment;
        let (first, second) = if we_are_first {
            (&own_side, &peer_side)
        } else {
            (&peer_side, &own_side)
        };
        let mut transcript = blake3::Hasher::new_derive_key(TRANSCRIPT_CONTEXT);
        first.hash_into(&mut transcript);
        second.hash_into(&mut transcript);
        let transcript = transcript.finalize();

        let mut master_input = Zeroizing::new([0u8; 64]);
        master_input[..32].copy_from_slice(shared.as_bytes());
        master_input[32..].copy_from_slice(transcript.as_bytes());
        let master = Zeroizing::new(blake3::derive_key(MASTER_CONTEXT, master_input.as_slice()));
        let root = Zeroizing::new(blake3::derive_key(ROOT_CONTEXT, master.as_slice()));
        let confirm_first =
            Zeroizing::new(blake3::derive_key(CONFIRM_FIRST_CONTEXT, master.as_slice()));
        let confirm_second = Zeroizing::new(blake3::derive_key(
            CONFIRM_SECOND_CONTEXT,
            master.as_slice(),
        ));
        let (own_key, peer_key) = if we_are_first {
            (&confirm_first, &confirm_second)
        } else {
            (&confirm_second, &confirm_first)
        };
        let own_mac = blake3::keyed_hash(own_key, transcript.as_bytes());
        let expected = blake3::keyed_hash(peer_key, transcript.as_bytes());
        self.outbox
            .push_back(pairing_message(MESSAGE_CONFIRM, own_mac.as_bytes()));
        self.state = PairingState::ExpectConfirmation { expected, root };
        Ok(())
    }

    fn accept_confirm(&mut self, mac: [u8; 32]) -> Result<(), PairingError> {
        let state = std::mem::replace(&mut self.state, PairingState::Paired);
        let PairingState::ExpectConfirmation { expected, root } = state else {
            return Err(PairingError::UnexpectedMessage {
                reason: "a confirmation before the keys were exchanged",
            });
        };
        // `blake3::Hash` compares in constant time.
        if blake3::Hash::from(mac) != expected {
            return Err(PairingError::ConfirmationMismatch);
        }
        let Some(peer) = &self.peer_code else {
            return Err(PairingError::UnexpectedMessage {
                reason: "a confirmation before the code was scanned",
            });
        };
        self.paired = Some(PairedContact {
            contact: Contact::with_verification(peer, Verification::VerifiedInPerson),
            root_secret: PairwiseRootSecret(root),
        });
        Ok(())
    }
}

struct TranscriptSide {
    identity: IdentityPublicKey,
    device: DevicePublicKey,
    mailbox: [u8; 32],
    commitment: PairingCommitment,
    ephemeral: [u8; 32],
}

impl TranscriptSide {
    fn hash_into(&self, hasher: &mut blake3::Hasher) {
        hasher.update(self.identity.as_bytes());
        hasher.update(self.device.as_bytes());
        hasher.update(&self.mailbox);
        hasher.update(&self.commitment.0);
        hasher.update(&self.ephemeral);
    }
}

fn pairing_message(kind: u8, body: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PAIRING_MESSAGE_LEN);
    message.push(PAIRING_VERSION);
    message.push(kind);
    message.extend_from_slice(body);
    message
}

/// Why the contact book refused an operation or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactBookError {
    #[error("could not access {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} can be read by other users (mode {mode:03o}); run `chmod 600 {}` and try again",
        .path.display(), .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{} is not a Cairn contact book", .path.display())]
    NotAContactBook { path: PathBuf },
    #[error(
        "{} was written by a newer version of Cairn (contact book format {version}); update \
         Cairn",
        .path.display()
    )]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("{} is corrupt ({reason}); restore it from a backup", .path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error(
        "{} cannot be opened with this identity: it belongs to another identity, or it is \
         damaged",
        .path.display()
    )]
    Sealed { path: PathBuf },
    #[error("that is your own contact code; share it with others instead of adding it")]
    AddingYourself,
    #[error("the contact book is full ({MAX_CONTACTS} contacts)")]
    Full,
    #[error("no such contact")]
    UnknownContact,
}

/// What [`ContactBook::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum AddOutcome {
    Added,
    /// Known already: name, hints or verification were updated (verification only upwards).
    Updated,
    /// Known already, nothing new.
    Unchanged,
    /// Known already with another device key. Nothing was changed: the user must be told
    /// (a new phone, or someone who got hold of the identity key) and decide, through
    /// [`ContactBook::accept_device_change`].
    DeviceKeyChanged {
        known: DevicePublicKey,
        offered: DevicePublicKey,
    },
}

/// The contacts of this node, persisted in `contacts.bin` in the node's home directory.
///
/// Every change is written to disk before it is visible (atomically, mode 0600), so a crash
/// loses nothing that was reported done. The daemon and `cairn` commands each hold a book on
/// the same file: a change takes the lock file `contacts.lock`, applies itself to the book as
/// it is on disk *now* (not to this copy, which may be stale), writes, and only then lets go,
/// so no writer ever overwrites another's change. Readers need no lock: the file is replaced
/// whole, by a rename.
///
/// The file is sealed under the identity's storage key ([`crate::at_rest`]): whoever cannot
/// unlock the identity cannot read whom it knows.
///
/// Format v3: `"cairn-cb" ‖ version(1) ‖ sealed(count(u32 LE) ‖ entries)`, sealed with the
/// book's key and `"cairn-cb" ‖ version` as associated data; an entry is `identity(32) ‖
/// device(32) ‖ signature(64) ‖ mailbox(32) ‖ verification(1) ‖ name length(1) ‖ name ‖ hint
/// count(1) ‖ (length(1) ‖ hint)* ‖ keys length(u16 LE) ‖ sealing keys`. Version 2 held the
/// same entries in the clear, followed by a checksum; a v2 book is sealed as soon as it is
/// opened. Device signatures are checked when a contact is added, not again at load: the file
/// is sealed, and loading stays fast.
#[derive(Debug)]
pub struct ContactBook {
    path: PathBuf,
    home: PathBuf,
    own_identity: IdentityPublicKey,
    key: SealKey,
    contacts: Contacts,
}

type Contacts = BTreeMap<IdentityPublicKey, Contact>;

/// What a change made of the contacts it was given.
enum Change<R> {
    /// Write them and answer `R`.
    Write(R),
    /// Nothing changed: answer `R`, write nothing.
    Keep(R),
}

impl ContactBook {
    /// Opens the book of `identity` in `home` (an empty one if there is no file yet). The
    /// identity can never be its own contact.
    pub fn open(home: &Path, identity: &Identity) -> Result<Self, ContactBookError> {
        let path = home.join(CONTACT_BOOK_FILE_NAME);
        let key = identity.storage_key().subkey("contact book");
        let own_identity = identity.public_key();
        let (contacts, in_the_clear) = read_book(&path, &key, &own_identity)?;
        let mut book = Self {
            path,
            home: home.to_path_buf(),
            own_identity,
            key,
            contacts,
        };
        if in_the_clear {
            // Written by an earlier version: seal it now rather than at the next change.
            book.update(|_| Ok(Change::Write(())))?;
        }
        Ok(book)
    }

    pub fn len(&self) -> usize {
        self.contacts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
    }

    /// All contacts, by display name (case-insensitively), then by key.
    pub fn list(&self) -> Vec<&Contact> {
        let mut all: Vec<&Contact> = self.contacts.values().collect();
        all.sort_by_cached_key(|c| (c.display_name.as_str().to_lowercase(), c.identity));
        all
    }

    pub fn get(&self, identity: &IdentityPublicKey) -> Option<&Contact> {
        self.contacts.get(identity)
    }

    /// Adds a contact, or updates a known one's name and hints.
    ///
    /// Verification never goes down: re-adding an in-person-verified contact from a code
    /// forwarded over chat keeps it verified. A different device key for a known identity is
    /// reported and not applied (see [`AddOutcome::DeviceKeyChanged`]).
    pub fn add(&mut self, contact: Contact) -> Result<AddOutcome, ContactBookError> {
        if contact.identity == self.own_identity {
            return Err(ContactBookError::AddingYourself);
        }
        self.update(|contacts| match contacts.get_mut(&contact.identity) {
            None => {
                if contacts.len() >= MAX_CONTACTS {
                    return Err(ContactBookError::Full);
                }
                contacts.insert(contact.identity, contact);
                Ok(Change::Write(AddOutcome::Added))
            }
            Some(known) if known.device != contact.device => {
                Ok(Change::Keep(AddOutcome::DeviceKeyChanged {
                    known: known.device,
                    offered: contact.device,
                }))
            }
            Some(known) => {
                let merged = Contact {
                    verification: known.verification.max(contact.verification),
                    pair_keys: contact.pair_keys.or_else(|| known.pair_keys.clone()),
                    ..contact
                };
                if *known == merged {
                    return Ok(Change::Keep(AddOutcome::Unchanged));
                }
                *known = merged;
                Ok(Change::Write(AddOutcome::Updated))
            }
        })
    }

    /// Accepts a new device key for a known identity after the user agreed. The verification
    /// stays: it is of the identity key, and that key signed the new device key.
    pub fn accept_device_change(&mut self, contact: Contact) -> Result<(), ContactBookError> {
        self.update(|contacts| {
            let known = contacts
                .get_mut(&contact.identity)
                .ok_or(ContactBookError::UnknownContact)?;
            // A new device: keys shared with the old one stay valid (they belong to the pair
            // of identities, not to a device).
            *known = Contact {
                verification: known.verification.max(contact.verification),
                pair_keys: contact.pair_keys.or_else(|| known.pair_keys.clone()),
                ..contact
            };
            Ok(Change::Write(()))
        })
    }

    /// Stores the sealing keys shared with a contact (after pairing).
    pub fn set_pair_keys(
        &mut self,
        identity: &IdentityPublicKey,
        keys: &PairKeys,
    ) -> Result<(), ContactBookError> {
        self.update(|contacts| {
            let known = contacts
                .get_mut(identity)
                .ok_or(ContactBookError::UnknownContact)?;
            known.pair_keys = Some(SecretBytes(Zeroizing::new(keys.to_bytes())));
            Ok(Change::Write(()))
        })
    }

    /// Rolls every contact's sealing keys forward to day `today` ([`PairKeys::advance`]) and
    /// writes them, so that the keys it deletes are gone from disk too. The keys advanced are
    /// the ones on disk, so a pairing another process just recorded is rolled, not undone.
    pub fn advance_pair_keys(&mut self, today: u64) -> Result<(), ContactBookError> {
        self.update(|contacts| {
            let mut changed = false;
            for contact in contacts.values_mut() {
                let Some(mut keys) = contact.pair_keys() else {
                    continue;
                };
                keys.advance(today);
                let bytes = SecretBytes(Zeroizing::new(keys.to_bytes()));
                if contact.pair_keys.as_ref() != Some(&bytes) {
                    contact.pair_keys = Some(bytes);
                    changed = true;
                }
            }
            Ok(if changed {
                Change::Write(())
            } else {
                Change::Keep(())
            })
        })
    }

    /// Records that the user verified a contact; returns the resulting state (which is the
    /// stronger of the old one and `how`).
    pub fn mark_verified(
        &mut self,
        identity: &IdentityPublicKey,
        how: Verification,
    ) -> Result<Verification, ContactBookError> {
        self.update(|contacts| {
            let known = contacts
                .get_mut(identity)
                .ok_or(ContactBookError::UnknownContact)?;
            let result = known.verification.max(how);
            if result == known.verification {
                return Ok(Change::Keep(result));
            }
            known.verification = result;
            Ok(Change::Write(result))
        })
    }

    /// Removes a contact, returning it if it was there.
    pub fn remove(
        &mut self,
        identity: &IdentityPublicKey,
    ) -> Result<Option<Contact>, ContactBookError> {
        self.update(|contacts| {
            Ok(match contacts.remove(identity) {
                Some(removed) => Change::Write(Some(removed)),
                None => Change::Keep(None),
            })
        })
    }

    /// Applies `change` to the book as it is on disk, under the lock, and writes the result.
    /// On success this copy becomes what the file now holds (other writers' changes
    /// included); a failed change or write leaves the file as it was.
    fn update<R>(
        &mut self,
        change: impl FnOnce(&mut Contacts) -> Result<Change<R>, ContactBookError>,
    ) -> Result<R, ContactBookError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContactBookError::Io { path, source }
        };
        private_file::create_home(&self.home).map_err(io_error(&self.home))?;
        let lock_path = self.home.join(CONTACT_BOOK_LOCK_FILE_NAME);
        let _lock = private_file::lock_exclusive(&lock_path).map_err(io_error(&lock_path))?;
        let (mut contacts, in_the_clear) = read_book(&self.path, &self.key, &self.own_identity)?;
        let answer = match change(&mut contacts)? {
            Change::Keep(answer) if !in_the_clear => answer,
            Change::Keep(answer) | Change::Write(answer) => {
                let bytes = encode_book(&self.key, &contacts);
                private_file::write_atomically(&self.path, &bytes, private_file::Replace::Allow)
                    .map_err(io_error(&self.path))?;
                answer
            }
        };
        self.contacts = contacts;
        Ok(answer)
    }
}

/// The contacts in the book file at `path` (none if there is no file yet), and whether the
/// file is of the format kept in the clear.
fn read_book(
    path: &Path,
    key: &SealKey,
    own_identity: &IdentityPublicKey,
) -> Result<(Contacts, bool), ContactBookError> {
    let path = path.to_path_buf();
    let (contacts, in_the_clear) = match private_file::read(&path, MAX_BOOK_FILE_LEN) {
        Ok(bytes) => decode_book(&path, key, &bytes)?,
        Err(private_file::ReadError::NotFound) => (BTreeMap::new(), false),
        Err(private_file::ReadError::InsecurePermissions { mode }) => {
            return Err(ContactBookError::InsecurePermissions { path, mode })
        }
        Err(private_file::ReadError::TooLarge | private_file::ReadError::NotARegularFile) => {
            return Err(ContactBookError::NotAContactBook { path })
        }
        Err(private_file::ReadError::Io(source)) => {
            return Err(ContactBookError::Io { path, source })
        }
    };
    if contacts.contains_key(own_identity) {
        // `add` refuses yourself; a book that holds you was edited behind our back.
        return Err(ContactBookError::Corrupt {
            path,
            reason: "the book lists its own owner as a contact",
        });
    }
    Ok((contacts, in_the_clear))
}

fn encode_book(key: &SealKey, contacts: &Contacts) -> Vec<u8> {
    let mut out = Vec::with_capacity(BOOK_MAGIC.len() + 1 + crate::at_rest::SEAL_OVERHEAD);
    out.extend_from_slice(BOOK_MAGIC);
    out.push(BOOK_VERSION);
    let sealed = key.seal(&out, &encode_entries(contacts));
    out.extend_from_slice(&sealed);
    out
}

/// `count ‖ entries`: what the file holds, sealed. Wiped after use (it holds sealing keys).
fn encode_entries(contacts: &Contacts) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(4 + contacts.len() * 400));
    // At most MAX_CONTACTS, enforced by `add`.
    out.extend_from_slice(&(contacts.len() as u32).to_le_bytes());
    for contact in contacts.values() {
        out.extend_from_slice(contact.identity.as_bytes());
        out.extend_from_slice(contact.device.as_bytes());
        out.extend_from_slice(&contact.device_signature);
        out.extend_from_slice(&contact.mailbox);
        out.push(contact.verification.to_byte());
        push_short_string(&mut out, contact.display_name.as_str());
        out.push(contact.hints.len() as u8);
        for hint in &contact.hints {
            push_short_string(&mut out, hint.as_str());
        }
        match &contact.pair_keys {
            // At most MAX_PAIR_KEYS_LEN bytes (checked on decode and by PairKeys itself).
            Some(keys) => {
                out.extend_from_slice(
                    &(keys.0.len().min(usize::from(u16::MAX)) as u16).to_le_bytes(),
                );
                out.extend_from_slice(&keys.0);
            }
            None => out.extend_from_slice(&0u16.to_le_bytes()),
        }
    }
    out
}

fn decode_book(
    path: &Path,
    key: &SealKey,
    bytes: &[u8],
) -> Result<(Contacts, bool), ContactBookError> {
    let corrupt = |reason| ContactBookError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < BOOK_MAGIC.len() || &bytes[..BOOK_MAGIC.len()] != BOOK_MAGIC {
        return Err(ContactBookError::NotAContactBook {
            path: path.to_path_buf(),
        });
    }
    let header_len = BOOK_MAGIC.len() + 1;
    let version = *bytes.get(BOOK_MAGIC.len()).ok_or(corrupt("truncated"))?;
    if version > BOOK_VERSION {
        return Err(ContactBookError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    if version == BOOK_VERSION {
        let (header, sealed) = bytes.split_at(header_len);
        let entries = key.open(header, sealed).ok_or(ContactBookError::Sealed {
            path: path.to_path_buf(),
        })?;
        return Ok((decode_entries(path, &entries)?, false));
    }
    if version != BOOK_VERSION_CLEAR {
        return Err(corrupt("unknown format version"));
    }
    let Some(content_len) = bytes.len().checked_sub(32) else {
        return Err(corrupt("truncated"));
    };
    if content_len < header_len + 4 {
        return Err(corrupt("truncated"));
    }
    let (content, checksum) = bytes.split_at(content_len);
    if blake3::derive_key(BOOK_CHECKSUM_CONTEXT, content) != checksum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok((decode_entries(path, &content[header_len..])?, true))
}

/// Parses `count ‖ entries`.
fn decode_entries(path: &Path, bytes: &[u8]) -> Result<Contacts, ContactBookError> {
    let corrupt = |reason| ContactBookError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = Reader::new(bytes);
    let count = reader.u32().ok_or(corrupt("truncated"))? as usize;
    if count > MAX_CONTACTS {
        return Err(corrupt("more contacts than a book may hold"));
    }
    let mut contacts = BTreeMap::new();
    for _ in 0..count {
        let identity = IdentityPublicKey::from_bytes(reader.array().ok_or(corrupt("truncated"))?)
            .map_err(|_| corrupt("an identity key is not a valid key"))?;
        let device = DevicePublicKey::from_bytes(reader.array().ok_or(corrupt("truncated"))?);
        let device_signature = reader.array().ok_or(corrupt("truncated"))?;
        let mailbox = reader.array().ok_or(corrupt("truncated"))?;
        let verification = Verification::from_byte(reader.u8().ok_or(corrupt("truncated"))?)
            .ok_or(corrupt("unknown verification state"))?;
        let name = reader.short_str().ok_or(corrupt("bad display name"))?;
        let display_name = DisplayName::new(name).map_err(|_| corrupt("bad display name"))?;
        let hint_count = usize::from(reader.u8().ok_or(corrupt("truncated"))?);
        if hint_count > MAX_HINTS {
            return Err(corrupt("too many hints"));
        }
        let mut hints = Vec::with_capacity(hint_count);
        for _ in 0..hint_count {
            let hint = reader.short_str().ok_or(corrupt("bad hint"))?;
            hints.push(ReachabilityHint::new(hint).map_err(|_| corrupt("bad hint"))?);
        }
        let len_bytes: [u8; 2] = reader.array().ok_or(corrupt("truncated"))?;
        let keys_len = usize::from(u16::from_le_bytes(len_bytes));
        if keys_len > MAX_PAIR_KEYS_LEN {
            return Err(corrupt("sealing keys too long"));
        }
        let pair_keys = if keys_len == 0 {
            None
        } else {
            let bytes = reader.take(keys_len).ok_or(corrupt("truncated"))?;
            PairKeys::from_bytes(bytes).map_err(|_| corrupt("bad sealing keys"))?;
            Some(SecretBytes(Zeroizing::new(bytes.to_vec())))
        };
        let contact = Contact {
            identity,
            device,
            device_signature,
            mailbox,
            display_name,
            hints,
            verification,
            pair_keys,
        };
        if contacts.insert(identity, contact).is_some() {
            return Err(corrupt("a contact appears twice"));
        }
    }
    if !reader.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(contacts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core_06::SeedableRng;

    fn rng(seed: u64) -> rand_chacha_03::ChaCha20Rng {
        rand_chacha_03::ChaCha20Rng::seed_from_u64(seed)
    }

    #[test]
    fn display_name_rules() {
        assert!(DisplayName::new("Alice").is_ok());
        assert!(DisplayName::new("Zoë 🌲").is_ok());
        assert!(DisplayName::new(&"a".repeat(64)).is_ok());
        assert!(DisplayName::new(&"a".repeat(65)).is_err());
        assert!(DisplayName::new("").is_err());
        assert!(DisplayName::new("   ").is_err());
        assert!(DisplayName::new(" Alice").is_err());
        assert!(DisplayName::new("Al\nice").is_err());
        assert!(DisplayName::new("Al\u{7}ice").is_err());
        assert!(DisplayName::new("Alice\u{202E}boB").is_err());
        assert!(DisplayName::new("Al\u{200B}ice").is_err());
    }

    #[test]
    fn hint_rules() {
        assert!(ReachabilityHint::new("192.168.1.20:7420").is_ok());
        assert!(ReachabilityHint::new("[fe80::1]:7420").is_ok());
        assert!(ReachabilityHint::new("").is_err());
        assert!(ReachabilityHint::new("a b").is_err());
        assert!(ReachabilityHint::new(&"a".repeat(65)).is_err());
        assert!(ReachabilityHint::new("é").is_err());
    }

    #[test]
    fn pairing_message_layout() {
        let message = pairing_message(MESSAGE_KEY, &[9; 32]);
        assert_eq!(message.len(), 34);
        assert_eq!(&message[..2], &[1, 1]);
    }

    #[test]
    fn secrets_are_hidden_from_debug() {
        let secret = PairwiseRootSecret(Zeroizing::new([0xab; 32]));
        assert!(!format!("{secret:?}").contains("ab"));
        let identity = Identity::generate(&mut rng(1));
        let pairing = Pairing::start(
            &identity,
            DisplayName::new("A").unwrap(),
            vec![],
            &mut rng(2),
        )
        .unwrap();
        assert!(format!("{pairing:?}").contains("ExpectScan"));
    }

    #[test]
    fn too_many_hints_refused_when_building_a_code() {
        let identity = Identity::generate(&mut rng(3));
        let hints = vec![ReachabilityHint::new("h:1").unwrap(); 5];
        assert_eq!(
            ContactCode::new(&identity, DisplayName::new("A").unwrap(), hints),
            Err(ContactCodeError::TooManyHints { count: 5 })
        );
    }
}
