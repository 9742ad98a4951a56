//! Direct delivery: a text sent to its recipient in the few bytes only the recipient needs.
//!
//! A sealed envelope carries 29 bytes of seal (receipt lock, format byte, tag) and about 22
//! more of public header. Carriers need all of it. The recipient, when it meets the sender
//! directly, needs almost none of it: the hop session already proved who is talking, and
//! sealing is deterministic, so the recipient can rebuild the exact envelope (same body,
//! same lock, same id) from the plaintext and the keys the two share. On LoRa this is the
//! difference between a message that fits the "length + 32 bytes" budget and one that does
//! not.
//!
//! ## Format (version 1)
//!
//! ```text
//! byte 0     0x10 | NORMAL(1 bit, 0x08) | LAG(1 bit, 0x04) | 00
//! bytes 1-3  created_at_secs, low 24 bits, big-endian
//! byte 4     first byte of the envelope's id: a check that the rebuild is the same envelope
//! bytes 5..  the text (UTF-8), without the plaintext's 2-byte format prefix
//! ```
//!
//! The rest is implied: lifetime and copy budget are the node's defaults
//! ([`MESSAGE_LIFETIME_SECS`], [`COPY_BUDGET`]), the scope tag is the recipient's tag of the
//! sealing day (`period_of(created) − LAG`), priority is High unless NORMAL is set. The
//! recipient places the 24-bit time in the 194-day window centred on its own clock, so
//! clocks up to 97 days apart rebuild correctly (the sync layer accepts up to 24 h of skew
//! anyway). An envelope that does not fit these rules (another lifetime, not a text, not
//! sealed today) simply goes whole.
//!
//! ## Why the recipient can trust it
//!
//! The compact bytes arrive inside a hop session whose peer proved the sender's identity,
//! so they are as authentic as a sealed body. The rebuilt envelope is by construction one
//! the sender's key made. The check byte catches a rebuild that differs from what the sender
//! holds (a clock far off, a different default), with a 1 in 256 chance of missing it; a
//! missed mismatch costs a receipt the sender cannot match (the message stays "relayed" and
//! may arrive a second time by another path), never a wrong or forged text.

use std::collections::HashMap;
use std::sync::RwLock;

use cairn_sync::compact::Compactor;
use cairn_sync::envelope::{Envelope, Item, Priority};

use crate::seal::{period_of, MailboxKey, PairKeys, SealedHeader};

/// How long carriers keep a message: a week, time for a chain of meetings to form.
pub const MESSAGE_LIFETIME_SECS: u32 = 7 * 24 * 3600;

/// Copies of each message in the network (spray and focus).
pub const COPY_BUDGET: u8 = 8;

/// Texts up to this long go first and fit a LoRa frame.
pub const SHORT_TEXT: usize = 160;

/// The first byte of every plaintext: the payload format.
pub const PAYLOAD_V1: u8 = 1;
/// The second: what the payload is.
pub const KIND_TEXT: u8 = 1;

/// Compact format version 1, in the high nibble of the first byte.
const FORMAT_V1: u8 = 0x10;
const NORMAL: u8 = 0x08;
const LAG: u8 = 0x04;
/// Bytes before the text.
pub const DIRECT_HEADER_LEN: usize = 5;

/// What direct delivery needs to know about one contact.
#[derive(Clone, Debug)]
pub struct DirectContact {
    /// The pair's sealing keys.
    pub keys: PairKeys,
    /// The contact's mailbox key (its recipient tags, for messages we send it).
    pub mailbox: MailboxKey,
}

/// The node's [`Compactor`]: compact texts to contacts met directly, and their rebuilding.
#[derive(Debug)]
pub struct Direct {
    own_mailbox: MailboxKey,
    contacts: RwLock<HashMap<[u8; 32], DirectContact>>,
}

impl Direct {
    /// Direct delivery for a node whose own mailbox key is `own_mailbox`.
    #[must_use]
    pub fn new(own_mailbox: MailboxKey) -> Self {
        Self {
            own_mailbox,
            contacts: RwLock::new(HashMap::new()),
        }
    }

    /// Replaces the contacts (after keys rolled to a new day, or the contact book changed).
    pub fn set_contacts(&self, contacts: impl IntoIterator<Item = ([u8; 32], DirectContact)>) {
        let map = contacts.into_iter().collect();
        *self.contacts.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn contact(&self, peer: &[u8]) -> Option<DirectContact> {
        let peer: [u8; 32] = peer.try_into().ok()?;
        self.contacts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned()
    }

    /// The compact form of a text envelope we sealed today for `contact`.
    fn compact_envelope(contact: &DirectContact, envelope: &Envelope, id0: u8) -> Option<Vec<u8>> {
        if envelope.lifetime_secs != MESSAGE_LIFETIME_SECS || envelope.copy_budget != COPY_BUDGET {
            return None;
        }
        let created = envelope.created_at_secs;
        let lag = (0..=1u64).find(|&lag| {
            period_of(created)
                .checked_sub(lag)
                .is_some_and(|day| contact.mailbox.tag(day) == envelope.scope)
        })?;
        let header = SealedHeader::of(envelope);
        let plaintext = contact
            .keys
            .open_own(&header, &envelope.receipt_lock, &envelope.body)
            .ok()?;
        let text = plaintext.strip_prefix(&[PAYLOAD_V1, KIND_TEXT])?;
        let mut first = FORMAT_V1;
        match envelope.priority {
            Priority::High => {}
            Priority::Normal => first |= NORMAL,
            Priority::Bulk => return None,
        }
        if lag == 1 {
            first |= LAG;
        }
        let mut out = Vec::with_capacity(DIRECT_HEADER_LEN + text.len());
        out.push(first);
        out.extend_from_slice(&(created as u32).to_be_bytes()[1..]);
        out.push(id0);
        out.extend_from_slice(text);
        Some(out)
    }

    /// Rebuilds the envelope `contact` sent us as `data`.
    fn expand_envelope(&self, contact: &DirectContact, data: &[u8], now_secs: u64) -> Option<Item> {
        if data.len() < DIRECT_HEADER_LEN {
            return None;
        }
        let first = data[0];
        if first & 0xF3 != FORMAT_V1 {
            return None;
        }
        let low = u64::from(u32::from_be_bytes([0, data[1], data[2], data[3]]));
        let created = nearest_with_low_bits(now_secs, low);
        let day = period_of(created).checked_sub(u64::from(first & LAG != 0))?;
        let header = SealedHeader {
            created_at_secs: created,
            lifetime_secs: MESSAGE_LIFETIME_SECS,
            scope: self.own_mailbox.tag(day),
            priority: if first & NORMAL != 0 {
                Priority::Normal
            } else {
                Priority::High
            },
            copy_budget: COPY_BUDGET,
        };
        let mut plaintext = Vec::with_capacity(2 + data.len() - DIRECT_HEADER_LEN);
        plaintext.extend_from_slice(&[PAYLOAD_V1, KIND_TEXT]);
        plaintext.extend_from_slice(&data[DIRECT_HEADER_LEN..]);
        let sealed = contact.keys.seal_as_peer(&header, &plaintext, day).ok()?;
        let item = Item::Envelope(header.envelope(sealed));
        (item.id().0[0] == data[4]).then_some(item)
    }
}

/// The time within 2^23 s (97 days) of `now` whose low 24 bits are `low`.
fn nearest_with_low_bits(now: u64, low: u64) -> u64 {
    const SPAN: u64 = 1 << 24;
    let base = now & !(SPAN - 1);
    let candidates = [base.wrapping_sub(SPAN), base, base + SPAN].map(|b| b | low);
    candidates
        .into_iter()
        .filter(|&t| t < u64::MAX / 2)
        .min_by_key(|&t| t.abs_diff(now))
        .unwrap_or(low)
}

impl Compactor for Direct {
    fn compact(&self, peer: &[u8], item: &Item) -> Option<Vec<u8>> {
        let Item::Envelope(envelope) = item else {
            return None;
        };
        let contact = self.contact(peer)?;
        Self::compact_envelope(&contact, envelope, item.id().0[0])
    }

    fn expand(&self, peer: &[u8], data: &[u8], now_secs: u64) -> Option<Item> {
        let contact = self.contact(peer)?;
        self.expand_envelope(&contact, data, now_secs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DAY: u64 = 20_600;

    fn pair() -> (Direct, Direct, [u8; 32], [u8; 32]) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let root = [9u8; 32];
        let (mail_a, mail_b) = (MailboxKey([3; 32]), MailboxKey([4; 32]));
        let alice = Direct::new(mail_a.clone());
        let bob = Direct::new(mail_b.clone());
        alice.set_contacts([(
            b,
            DirectContact {
                keys: PairKeys::new(&root, &a, &b, DAY),
                mailbox: mail_b,
            },
        )]);
        bob.set_contacts([(
            a,
            DirectContact {
                keys: PairKeys::new(&root, &b, &a, DAY),
                mailbox: mail_a,
            },
        )]);
        (alice, bob, a, b)
    }

    fn sealed_text(
        alice: &Direct,
        bob_id: &[u8; 32],
        created: u64,
        text: &str,
        priority: Priority,
    ) -> Item {
        let contact = alice.contact(bob_id).unwrap();
        let header = SealedHeader {
            created_at_secs: created,
            lifetime_secs: MESSAGE_LIFETIME_SECS,
            scope: contact.mailbox.tag(contact.keys.today()),
            priority,
            copy_budget: COPY_BUDGET,
        };
        let mut plaintext = vec![PAYLOAD_V1, KIND_TEXT];
        plaintext.extend_from_slice(text.as_bytes());
        Item::Envelope(header.envelope(contact.keys.seal(&header, &plaintext).unwrap()))
    }

    #[test]
    fn the_recipient_rebuilds_the_exact_envelope_from_five_bytes_and_the_text() {
        let (alice, bob, a, b) = pair();
        let created = DAY * 86_400 + 3_600;
        let text = "meet at the north cairn at dusk";
        for priority in [Priority::High, Priority::Normal] {
            let item = sealed_text(&alice, &b, created, text, priority);
            let compact = alice.compact(&b, &item).unwrap();
            assert_eq!(compact.len(), DIRECT_HEADER_LEN + text.len());
            // Bob's clock is a day and a half off either way: still the same envelope.
            for skew in [-129_600i64, 0, 129_600] {
                let now = (created as i64 + skew) as u64;
                assert_eq!(bob.expand(&a, &compact, now), Some(item.clone()));
            }
        }
    }

    #[test]
    fn only_the_recipient_and_only_from_the_sender() {
        let (alice, bob, a, b) = pair();
        let created = DAY * 86_400 + 60;
        let item = sealed_text(&alice, &b, created, "for bob", Priority::High);
        let compact = alice.compact(&b, &item).unwrap();
        // Nobody compacts for a peer who is not the recipient, or for an unknown peer.
        assert_eq!(alice.compact(&[7; 32], &item), None);
        // Bob refuses it from anyone but Alice; Alice cannot rebuild her own as a recipient.
        assert_eq!(bob.expand(&[7; 32], &compact, created), None);
        assert_eq!(bob.expand(&b, &compact, created), None);
        assert_eq!(alice.expand(&b, &compact, created), None);
        // A changed text or time rebuilds a different envelope, and the check refuses most.
        let mut refused = 0;
        for i in 0..64u8 {
            let mut altered = compact.clone();
            altered[3] = altered[3].wrapping_add(i + 1);
            refused += u32::from(bob.expand(&a, &altered, created).is_none());
        }
        assert!(refused >= 56, "{refused} of 64 altered times refused");
        // Truncated and unknown formats are refused, never a panic.
        for len in 0..DIRECT_HEADER_LEN {
            assert_eq!(bob.expand(&a, &compact[..len], created), None);
        }
        let mut other = compact.clone();
        other[0] = 0x20;
        assert_eq!(bob.expand(&a, &other, created), None);
    }

    #[test]
    fn the_time_window_is_centred_on_the_clock() {
        let now = 1_780_000_000;
        for t in [now, now - 1, now + 1, now - 8_000_000, now + 8_000_000] {
            assert_eq!(nearest_with_low_bits(now, t & 0xFF_FFFF), t);
        }
    }
}
