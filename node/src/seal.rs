//! End-to-end sealing of envelope bodies between two contacts.
//!
//! Carriers hold and forward envelopes for days; they must learn only what routing needs (the
//! recipient tag, sizes, times). This module turns a plaintext into an envelope body that only
//! the recipient can open, that proves who sent it, and that a device seized later cannot read.
//!
//! ## Keys
//!
//! * **Pairwise chains.** Pairing gives two contacts a 32-byte root secret. From it, each
//!   direction (A→B, B→A) gets its own chain of daily keys: `k[p+1] = KDF(k[p])`, one step per
//!   [`PERIOD_SECS`]. A key is used for the messages of its day and deleted (zeroized, and
//!   gone from the persisted state) once the day is older than [`KEEP_PERIODS`]: a device
//!   seized next week holds no key for this week, so what it carried or received this week is
//!   unreadable (forward secrecy at day granularity, like Briar's transport keys). The root
//!   itself is never stored. A message that arrives more than `KEEP_PERIODS - 1` days late can
//!   no longer be opened: that is the price of deleting keys, and the window says how late is
//!   tolerated.
//! * **Directions** authenticate the sender: only the two contacts know the A→B chain, and B
//!   never seals with it, so an envelope that opens with it came from A. A third contact cannot
//!   forge A.
//! * **Recipient tags.** The envelope's public scope tag is `H(mailbox key, day)`, where the
//!   mailbox key is the recipient's secret shared with its contacts. A carrier sees one tag per
//!   recipient per day; it cannot link the envelopes of one recipient across days, nor tell
//!   which contact sent one. (Within a day it can group a recipient's envelopes, and when it
//!   meets the recipient, which asks for its tags, it learns whom they were for: delivery
//!   needs that much.)
//!
//! ## Format
//!
//! Body: `header(1) ‖ ChaCha20-Poly1305(plaintext) ‖ tag(16)`, 17 bytes ([`SEAL_OVERHEAD`]);
//! with the envelope's 12-byte receipt lock, which is the nonce, 29 bytes in all. The header
//! byte is the format version (high nibble) and the sealing day modulo 16 (low nibble), which
//! picks the key among the few a recipient keeps. The associated data is the envelope's public
//! header (creation time, lifetime, scope, priority, copy budget), so a carrier cannot alter
//! any of them without the recipient noticing.
//!
//! ## Receipts
//!
//! Carriers purge a delivered envelope when they see its tombstone, so a tombstone must be
//! unforgeable, or anyone could make the network drop any message. The seal derives a
//! 16-byte **receipt proof** from the day key, the header and the plaintext (a keyed BLAKE3);
//! the envelope carries its **lock** (a hash of the proof) in public, and the lock doubles as
//! the AEAD nonce: a synthetic IV, as in SIV mode, so no random nonce, no counter to persist,
//! and nothing extra on the wire. Opening recomputes the proof and checks it against the lock;
//! the recipient then publishes the proof in its tombstone ([`cairn_sync::session::acknowledge`])
//! and every carrier can check it against the lock. Only the two contacts can compute a proof.
//! The price of a deterministic nonce: the same text to the same person with the same header
//! (same second) seals to the same envelope, which the network then treats as one message.

use cairn_sync::envelope::{Envelope, Priority, ReceiptLock, ReceiptProof, ScopeTag};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of one key period: a day, so keys roll over while people sleep and a message can
/// be dated to its day from the header alone.
pub const PERIOD_SECS: u64 = 86_400;

/// Days of incoming keys a recipient keeps: today, the three days before, and tomorrow (for
/// senders whose clock runs ahead). Messages up to three days late still open; older ones
/// cannot, because their keys are gone. Must stay below 16 (the header's day nibble).
pub const KEEP_PERIODS: u64 = 4;

/// Latest day a key may belong to (the year 2^40 / 365 ≈ 3 billion): keeps day arithmetic
/// far from overflow whatever a damaged or hostile state file says.
const MAX_PERIOD: u64 = 1 << 40;

/// Most days one [`PairKeys::advance`] rolls forward. A clock more than ten years ahead of
/// the keys is broken; following it would cost millions of hash steps.
pub const MAX_ADVANCE_DAYS: u64 = 3_650;

/// Bytes sealing adds to a body: header and authentication tag. The nonce is the envelope's
/// receipt lock ([`RECEIPT_LOCK_LEN`] more bytes, in the envelope header).
pub const SEAL_OVERHEAD: usize = 1 + TAG_LEN;

/// The envelope's receipt lock, which sealing uses as its nonce.
pub const RECEIPT_LOCK_LEN: usize = 12;

const TAG_LEN: usize = 16;

// The budget: a 200-byte text must still fit a LoRa frame.
const _: () = assert!(SEAL_OVERHEAD + RECEIPT_LOCK_LEN <= 32);
const FORMAT_V1: u8 = 0x1;

/// The day a Unix time falls in.
pub fn period_of(unix_secs: u64) -> u64 {
    unix_secs / PERIOD_SECS
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    #[error("sealed body of {0} bytes is shorter than the {SEAL_OVERHEAD}-byte overhead")]
    TooShort(usize),
    #[error("sealed with format version {0}, which this build does not know")]
    UnknownVersion(u8),
    /// The day's key was deleted (the message is older than the window) or is not yet
    /// derivable (its day is more than one ahead).
    #[error(
        "no key for that day any more: the message is older than the {KEEP_PERIODS}-day window"
    )]
    KeyExpired,
    /// Wrong key, wrong sender, or bytes changed on the way: indistinguishable by design.
    #[error("the message does not open with this contact's key (not from them, or altered)")]
    Forged,
    #[error("the plaintext is too large to seal ({0} bytes)")]
    TooLarge(usize),
    #[error("pair key state is corrupt: {0}")]
    Corrupt(&'static str),
}

/// A recipient's mailbox key: shared with its contacts, it makes the recipient tags.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MailboxKey(pub [u8; 32]);

impl std::fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailboxKey(..)")
    }
}

impl MailboxKey {
    /// The scope tag envelopes to this mailbox carry on day `period`.
    pub fn tag(&self, period: u64) -> ScopeTag {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"cairn 2026 recipient tag");
        hasher.update(&period.to_le_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        ScopeTag(tag)
    }

    /// The tags to ask peers for around day `period`: every day whose messages can still be
    /// opened, and tomorrow's.
    pub fn tags_around(&self, period: u64) -> Vec<ScopeTag> {
        window(period).map(|p| self.tag(p)).collect()
    }
}

/// Days whose incoming keys are kept when today is `period`, oldest first.
fn window(period: u64) -> impl Iterator<Item = u64> {
    period.saturating_sub(KEEP_PERIODS - 1)..=period.saturating_add(1)
}

/// The public envelope fields a seal binds (everything but the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    pub created_at_secs: u64,
    pub lifetime_secs: u32,
    pub scope: ScopeTag,
    pub priority: Priority,
    pub copy_budget: u8,
}

impl SealedHeader {
    /// The public fields of `envelope` that its seal binds.
    pub fn of(envelope: &Envelope) -> Self {
        SealedHeader {
            created_at_secs: envelope.created_at_secs,
            lifetime_secs: envelope.lifetime_secs,
            scope: envelope.scope,
            priority: envelope.priority,
            copy_budget: envelope.copy_budget,
        }
    }

    /// The envelope that carries `sealed` under this header.
    pub fn envelope(&self, sealed: Sealed) -> Envelope {
        Envelope {
            created_at_secs: self.created_at_secs,
            lifetime_secs: self.lifetime_secs,
            scope: self.scope,
            priority: self.priority,
            copy_budget: self.copy_budget,
            receipt_lock: sealed.receipt_lock,
            body: sealed.body,
        }
    }

    fn associated_data(&self) -> [u8; 23] {
        let mut ad = [0u8; 23];
        ad[..8].copy_from_slice(&self.created_at_secs.to_le_bytes());
        ad[8..12].copy_from_slice(&self.lifetime_secs.to_le_bytes());
        ad[12..20].copy_from_slice(&self.scope.0);
        ad[20] = self.priority.as_u8();
        ad[21] = self.copy_budget;
        ad[22] = FORMAT_V1;
        ad
    }
}

/// One direction's key for one day.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct DayKey {
    #[zeroize(skip)]
    period: u64,
    key: [u8; 32],
}

impl DayKey {
    /// The next day's key; this one should be dropped (zeroized) once no longer needed.
    fn next(&self) -> DayKey {
        DayKey {
            period: self.period.saturating_add(1).min(MAX_PERIOD),
            key: blake3::derive_key("cairn 2026 pair chain step", &self.key),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let mut key = blake3::derive_key("cairn 2026 pair message key", &self.key);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        key.zeroize();
        cipher
    }

    /// The receipt proof of a message: a PRF of the header and plaintext under this day's key.
    fn proof(&self, ad: &[u8], plaintext: &[u8]) -> ReceiptProof {
        let mut key = blake3::derive_key("cairn 2026 pair receipt key", &self.key);
        let mut hasher = blake3::Hasher::new_keyed(&key);
        key.zeroize();
        hasher.update(&(ad.len() as u64).to_le_bytes());
        hasher.update(ad);
        hasher.update(plaintext);
        let mut proof = [0u8; 16];
        proof.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        ReceiptProof(proof)
    }
}

/// A sealed message: the envelope's lock and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub receipt_lock: ReceiptLock,
    pub body: Vec<u8>,
}

/// An opened message and the proof its recipient publishes once it has taken it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub plaintext: Vec<u8>,
    pub proof: ReceiptProof,
}

/// The keys one contact pair uses, seen from one side: the outgoing chain at today and the
/// incoming keys of the window. Persist it with [`PairKeys::to_bytes`] after every
/// [`PairKeys::advance`], so deleted keys are gone from disk too.
#[derive(Clone)]
pub struct PairKeys {
    outgoing: DayKey,
    /// Incoming keys of the window, oldest first, ending with tomorrow's (the chain head).
    incoming: Vec<DayKey>,
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKeys")
            .field("outgoing_period", &self.outgoing.period)
            .field(
                "incoming_periods",
                &self.incoming.iter().map(|k| k.period).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Opens `body` (after its format byte) under one day's key of a direction and checks the
/// receipt lock.
fn open_with(
    key: &DayKey,
    header: &SealedHeader,
    receipt_lock: &ReceiptLock,
    body: &[u8],
) -> Result<Opened, SealError> {
    let ad = header.associated_data();
    let plaintext = key
        .cipher()
        .decrypt(
            Nonce::from_slice(&receipt_lock.0),
            Payload {
                msg: &body[1..],
                aad: &ad,
            },
        )
        .map_err(|_| SealError::Forged)?;
    let proof = key.proof(&ad, &plaintext);
    if proof.lock() != *receipt_lock {
        return Err(SealError::Forged);
    }
    Ok(Opened { plaintext, proof })
}

/// Seals under one day's key of a direction (the sender's outgoing key).
fn seal_with(key: &DayKey, header: &SealedHeader, plaintext: &[u8]) -> Result<Sealed, SealError> {
    if plaintext.len() > cairn_sync::envelope::MAX_BODY_LEN - SEAL_OVERHEAD {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let ad = header.associated_data();
    let receipt_lock = key.proof(&ad, plaintext).lock();
    let ciphertext = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&receipt_lock.0),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .map_err(|_| SealError::TooLarge(plaintext.len()))?;
    let mut body = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    body.push((FORMAT_V1 << 4) | (key.period % 16) as u8);
    body.extend_from_slice(&ciphertext);
    Ok(Sealed { receipt_lock, body })
}

/// The first key of the `from → to` chain, for day `period`.
fn direction_key(root: &[u8; 32], from: &[u8; 32], to: &[u8; 32], period: u64) -> DayKey {
    let mut material = [0u8; 32 + 32 + 32 + 8];
    material[..32].copy_from_slice(root);
    material[32..64].copy_from_slice(from);
    material[64..96].copy_from_slice(to);
    material[96..].copy_from_slice(&period.to_le_bytes());
    let key = blake3::derive_key("cairn 2026 pair direction", &material);
    material.zeroize();
    DayKey { period, key }
}

impl PairKeys {
    /// Keys from a pairing's root secret, starting on day `period` (the day of pairing).
    /// `own` and `peer` are the two identity public keys. The caller should drop the root
    /// afterwards: everything later is derived from the chains, never from it.
    pub fn new(root: &[u8; 32], own: &[u8; 32], peer: &[u8; 32], period: u64) -> PairKeys {
        let outgoing = direction_key(root, own, peer, period);
        let first_in = direction_key(root, peer, own, period);
        let mut keys = PairKeys {
            outgoing,
            incoming: vec![first_in],
        };
        keys.advance(period);
        keys
    }

    /// Rolls the chains forward to day `today`, deleting every key older than the window.
    /// Never goes back: a clock set into the past keeps today's keys.
    pub fn advance(&mut self, today: u64) {
        let today = today.min(self.outgoing.period.saturating_add(MAX_ADVANCE_DAYS));
        let today = today.min(MAX_PERIOD - 1);
        while self.outgoing.period < today {
            self.outgoing = self.outgoing.next();
        }
        let newest = today.saturating_add(1);
        let oldest = today.saturating_sub(KEEP_PERIODS - 1);
        // Roll the incoming chain to tomorrow, dropping what falls out of the window as we go
        // (one key at a time, never a vector of every day skipped).
        while let Some(head) = self.incoming.last() {
            if head.period >= newest {
                break;
            }
            let next = head.next();
            self.incoming.push(next);
            let keep_from = self
                .incoming
                .iter()
                .take(self.incoming.len() - 1)
                .take_while(|k| k.period < oldest)
                .count();
            self.incoming.drain(..keep_from);
        }
        // Keep at least the head, so the chain can still be rolled forward.
        let drop = self
            .incoming
            .iter()
            .take(self.incoming.len().saturating_sub(1))
            .take_while(|k| k.period < oldest)
            .count();
        self.incoming.drain(..drop);
    }

    /// Day the outgoing chain is at.
    pub fn today(&self) -> u64 {
        self.outgoing.period
    }

    /// Seals `plaintext` for the peer under today's outgoing key. Deterministic: no
    /// randomness, the nonce is synthetic (see the module docs).
    pub fn seal(&self, header: &SealedHeader, plaintext: &[u8]) -> Result<Sealed, SealError> {
        seal_with(&self.outgoing, header, plaintext)
    }

    /// Opens a body sealed by the peer, and checks its lock. The day comes from the header
    /// nibble, matched against the window of kept keys.
    pub fn open(
        &self,
        header: &SealedHeader,
        receipt_lock: &ReceiptLock,
        body: &[u8],
    ) -> Result<Opened, SealError> {
        if body.len() < SEAL_OVERHEAD {
            return Err(SealError::TooShort(body.len()));
        }
        let version = body[0] >> 4;
        if version != FORMAT_V1 {
            return Err(SealError::UnknownVersion(version));
        }
        let nibble = u64::from(body[0] & 0x0f);
        let key = self
            .incoming
            .iter()
            .find(|k| k.period % 16 == nibble)
            .ok_or(SealError::KeyExpired)?;
        // Only the sender's own key could have produced a ciphertext whose lock then fails,
        // so that is a sender breaking the format, not a carrier.
        open_with(key, header, receipt_lock, body)
    }

    /// Opens a body this side sealed for the peer today (the outgoing key of other days is
    /// gone), for sending it again in another form ([`crate::direct`]).
    ///
    /// # Errors
    ///
    /// Not sealed today, or not by this side.
    pub fn open_own(
        &self,
        header: &SealedHeader,
        receipt_lock: &ReceiptLock,
        body: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if body.len() < SEAL_OVERHEAD {
            return Err(SealError::TooShort(body.len()));
        }
        if body[0] != (FORMAT_V1 << 4) | (self.outgoing.period % 16) as u8 {
            return Err(SealError::KeyExpired);
        }
        open_with(&self.outgoing, header, receipt_lock, body).map(|opened| opened.plaintext)
    }

    /// Seals `plaintext` exactly as the peer would have on day `period` with its outgoing
    /// key (our incoming key of that day): the same body and lock, byte for byte, because
    /// sealing is deterministic. This is how a recipient rebuilds an envelope the sender
    /// sent it in compact form ([`crate::direct`]).
    ///
    /// # Errors
    ///
    /// No incoming key for that day (outside the window), or a plaintext too large.
    pub fn seal_as_peer(
        &self,
        header: &SealedHeader,
        plaintext: &[u8],
        period: u64,
    ) -> Result<Sealed, SealError> {
        let key = self
            .incoming
            .iter()
            .find(|k| k.period == period)
            .ok_or(SealError::KeyExpired)?;
        seal_with(key, header, plaintext)
    }

    /// The state to persist: today's outgoing key and the window's incoming keys. Keys deleted
    /// by [`PairKeys::advance`] are not in it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 40 * (1 + self.incoming.len()));
        out.push(FORMAT_V1);
        out.push(self.incoming.len() as u8);
        for key in std::iter::once(&self.outgoing).chain(&self.incoming) {
            out.extend_from_slice(&key.period.to_le_bytes());
            out.extend_from_slice(&key.key);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PairKeys, SealError> {
        let (&version, rest) = bytes.split_first().ok_or(SealError::Corrupt("empty"))?;
        if version != FORMAT_V1 {
            return Err(SealError::UnknownVersion(version));
        }
        let (&count, rest) = rest.split_first().ok_or(SealError::Corrupt("no count"))?;
        let count = usize::from(count);
        if count == 0 || count > KEEP_PERIODS as usize + 1 {
            return Err(SealError::Corrupt("incoming key count out of range"));
        }
        if rest.len() != 40 * (count + 1) {
            return Err(SealError::Corrupt("length does not match the key count"));
        }
        let mut keys = rest.chunks_exact(40).map(|c| {
            let mut period = [0u8; 8];
            period.copy_from_slice(&c[..8]);
            let mut key = [0u8; 32];
            key.copy_from_slice(&c[8..]);
            DayKey {
                period: u64::from_le_bytes(period),
                key,
            }
        });
        let outgoing = keys.next().ok_or(SealError::Corrupt("no outgoing key"))?;
        let incoming: Vec<DayKey> = keys.collect();
        if std::iter::once(&outgoing)
            .chain(&incoming)
            .any(|k| k.period >= MAX_PERIOD)
        {
            return Err(SealError::Corrupt("a key's day is out of range"));
        }
        if incoming
            .windows(2)
            .any(|w| w[0].period.checked_add(1) != Some(w[1].period))
        {
            return Err(SealError::Corrupt("incoming keys are not consecutive days"));
        }
        Ok(PairKeys { outgoing, incoming })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: [u8; 32] = [0xA1; 32];
    const BOB: [u8; 32] = [0xB0; 32];
    const CAROL: [u8; 32] = [0xC4; 32];
    const DAY: u64 = 20_600;

    fn pair(root: u8) -> (PairKeys, PairKeys) {
        let root = [root; 32];
        (
            PairKeys::new(&root, &ALICE, &BOB, DAY),
            PairKeys::new(&root, &BOB, &ALICE, DAY),
        )
    }

    fn header(day: u64) -> SealedHeader {
        SealedHeader {
            created_at_secs: day * PERIOD_SECS + 3_600,
            lifetime_secs: 7 * 86_400,
            scope: MailboxKey([7; 32]).tag(day),
            priority: Priority::High,
            copy_budget: 8,
        }
    }

    fn open(keys: &PairKeys, day: u64, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        keys.open(&header(day), &sealed.receipt_lock, &sealed.body)
            .map(|o| o.plaintext)
    }

    #[test]
    fn a_message_opens_only_for_its_recipient_and_costs_29_bytes() {
        let (alice, bob) = pair(1);
        let text = b"meet at the north cairn at dusk";
        let sealed = alice.seal(&header(DAY), text).unwrap();
        assert_eq!(sealed.body.len(), text.len() + SEAL_OVERHEAD);
        assert_eq!(open(&bob, DAY, &sealed).unwrap(), text);
        // Alice's own incoming chain is Bob→Alice: her message does not open as one from Bob.
        assert_eq!(open(&alice, DAY, &sealed), Err(SealError::Forged));
        assert!(
            !sealed.body.windows(8).any(|w| w == &text[..8]),
            "plaintext visible"
        );
    }

    #[test]
    fn the_receipt_proof_opens_the_lock_and_only_the_pair_can_make_it() {
        let (alice, bob) = pair(1);
        let sealed = alice.seal(&header(DAY), b"ping").unwrap();
        let opened = bob
            .open(&header(DAY), &sealed.receipt_lock, &sealed.body)
            .unwrap();
        assert_eq!(opened.proof.lock(), sealed.receipt_lock);
        // Someone with other keys computes another proof for the same text.
        let (mallory, _) = pair(2);
        let other = mallory.seal(&header(DAY), b"ping").unwrap();
        assert_ne!(other.receipt_lock, sealed.receipt_lock);
        // A lock swapped for another message's does not open.
        let swapped = Sealed {
            receipt_lock: other.receipt_lock,
            ..sealed.clone()
        };
        assert_eq!(open(&bob, DAY, &swapped), Err(SealError::Forged));
    }

    #[test]
    fn another_contact_cannot_forge_the_sender() {
        let (_, bob) = pair(1);
        // Carol shares a different root with Bob; she claims to be Alice.
        let carol_as_alice = PairKeys::new(&[2; 32], &ALICE, &BOB, DAY);
        let sealed = carol_as_alice.seal(&header(DAY), b"x").unwrap();
        assert_eq!(open(&bob, DAY, &sealed), Err(SealError::Forged));
        let carol = PairKeys::new(&[2; 32], &CAROL, &BOB, DAY);
        let sealed = carol.seal(&header(DAY), b"x").unwrap();
        assert_eq!(open(&bob, DAY, &sealed), Err(SealError::Forged));
    }

    #[test]
    fn every_flipped_bit_and_every_header_change_is_detected() {
        let (alice, bob) = pair(1);
        let sealed = alice.seal(&header(DAY), b"hello bob").unwrap();
        for i in 0..sealed.body.len() * 8 {
            let mut bad = sealed.clone();
            bad.body[i / 8] ^= 1 << (i % 8);
            assert!(open(&bob, DAY, &bad).is_err(), "body bit {i}");
        }
        for i in 0..RECEIPT_LOCK_LEN * 8 {
            let mut bad = sealed.clone();
            bad.receipt_lock.0[i / 8] ^= 1 << (i % 8);
            assert!(open(&bob, DAY, &bad).is_err(), "lock bit {i}");
        }
        let changed = [
            SealedHeader {
                lifetime_secs: 90 * 86_400,
                ..header(DAY)
            },
            SealedHeader {
                created_at_secs: 1,
                ..header(DAY)
            },
            SealedHeader {
                priority: Priority::Bulk,
                ..header(DAY)
            },
            SealedHeader {
                copy_budget: 255,
                ..header(DAY)
            },
            SealedHeader {
                scope: ScopeTag([0; 8]),
                ..header(DAY)
            },
        ];
        for h in changed {
            assert_eq!(
                bob.open(&h, &sealed.receipt_lock, &sealed.body),
                Err(SealError::Forged),
                "{h:?}"
            );
        }
        assert_eq!(
            bob.open(&header(DAY), &sealed.receipt_lock, &sealed.body[..10]),
            Err(SealError::TooShort(10))
        );
    }

    #[test]
    fn late_messages_open_within_the_window_and_old_keys_are_really_gone() {
        let (mut alice, mut bob) = pair(1);
        let monday = alice.seal(&header(DAY), b"monday").unwrap();
        let monday_key = bob.incoming[0].key;
        // Three days later the message still opens.
        bob.advance(DAY + 3);
        assert_eq!(open(&bob, DAY, &monday).unwrap(), b"monday");
        // Four days later its key is gone: not in memory, not in what is persisted.
        bob.advance(DAY + 4);
        assert_eq!(open(&bob, DAY, &monday), Err(SealError::KeyExpired));
        let saved = bob.to_bytes();
        assert!(!saved.windows(32).any(|w| w == monday_key));
        let restored = PairKeys::from_bytes(&saved).unwrap();
        assert_eq!(open(&restored, DAY, &monday), Err(SealError::KeyExpired));
        // Meanwhile Alice moved on too, and her new messages open.
        alice.advance(DAY + 4);
        let friday = alice.seal(&header(DAY + 4), b"friday").unwrap();
        assert_eq!(open(&restored, DAY + 4, &friday).unwrap(), b"friday");
    }

    #[test]
    fn a_sender_one_day_ahead_is_still_read() {
        let (mut alice, bob) = pair(1);
        alice.advance(DAY + 1);
        let sealed = alice.seal(&header(DAY + 1), b"from tomorrow").unwrap();
        assert_eq!(open(&bob, DAY + 1, &sealed).unwrap(), b"from tomorrow");
    }

    #[test]
    fn recipient_tags_rotate_daily_and_differ_between_recipients() {
        let bob = MailboxKey([7; 32]);
        let carol = MailboxKey([8; 32]);
        assert_ne!(bob.tag(DAY), bob.tag(DAY + 1));
        assert_ne!(bob.tag(DAY), carol.tag(DAY));
        let asked = bob.tags_around(DAY);
        assert_eq!(asked.len(), KEEP_PERIODS as usize + 1);
        assert!(asked.contains(&bob.tag(DAY - 3)) && asked.contains(&bob.tag(DAY + 1)));
        assert!(!asked.contains(&bob.tag(DAY - 4)));
    }

    /// Found by the `pair_keys` fuzz target: days that wrap past `u64::MAX` passed the
    /// consecutive-days check, and the keys then grew past what can be saved.
    #[test]
    fn wrapping_or_absurd_days_are_refused_and_a_wild_clock_is_bounded() {
        let mut bytes = vec![FORMAT_V1, 2];
        for period in [7_864_400u64, u64::MAX, 0] {
            bytes.extend_from_slice(&period.to_le_bytes());
            bytes.extend_from_slice(&[9; 32]);
        }
        assert!(PairKeys::from_bytes(&bytes).is_err());
        let (mut alice, _) = pair(4);
        alice.advance(u64::MAX);
        assert_eq!(alice.today(), DAY + MAX_ADVANCE_DAYS);
        assert!(alice.incoming.len() <= KEEP_PERIODS as usize + 1);
        let back = PairKeys::from_bytes(&alice.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), alice.to_bytes());
    }

    #[test]
    fn persisted_state_round_trips_and_corruption_is_refused() {
        let (alice, bob) = pair(3);
        let sealed = alice.seal(&header(DAY), b"saved").unwrap();
        let bytes = bob.to_bytes();
        let back = PairKeys::from_bytes(&bytes).unwrap();
        assert_eq!(open(&back, DAY, &sealed).unwrap(), b"saved");
        assert!(PairKeys::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(PairKeys::from_bytes(&[]).is_err());
        let mut bad = bytes.clone();
        bad[1] = 200;
        assert!(PairKeys::from_bytes(&bad).is_err());
    }

    /// Golden vector: fixed root, identities, day and text give these bytes, so the format
    /// cannot drift silently. Checked against an independent Python implementation (blake3
    /// and `cryptography`'s ChaCha20Poly1305) when it was written.
    #[test]
    fn golden_seal_vector() {
        let (alice, _) = pair(9);
        let sealed = alice.seal(&header(DAY), b"hi").unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            (hex(&sealed.receipt_lock.0), hex(&sealed.body)),
            (
                String::from("15bb093593ba1f3af8a97e84"),
                String::from("18318e3ec56db5a8961d512c207b60c234b750")
            )
        );
    }
}
