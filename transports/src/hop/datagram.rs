//! Datagram framing: explicit-nonce frames, key epochs, and the keys behind them.
//!
//! A datagram is `[type][body]`. Handshake messages use types 1, 2, 3. Transport frames use
//! `0x80 | (epoch mod 128)` followed by the frame counter as 3 bytes little-endian, then the
//! ChaCha20-Poly1305 ciphertext and tag: 4 + 16 = 20 bytes of overhead, leaving 180 bytes of a
//! 200-byte LoRa frame for plaintext. The counter is the Noise nonce under that epoch's key,
//! so the header is authenticated implicitly: a changed counter or epoch selects the wrong
//! nonce or key and the tag fails.
//!
//! Why not snow's `StatelessTransportState`: it holds one key per direction and rekeys in
//! place, but a receiver must still open late frames of the previous epoch and must try the
//! next epoch's key without committing to it until a frame authenticates. So we take the raw
//! split keys and run Noise's ChaChaPoly and REKEY (spec §5.1, §11.3) ourselves; a unit test
//! checks the bytes are identical to snow's stateless transport.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroize;

use super::error::HopError;
use super::replay::ReplayWindow;

/// Type byte of handshake message 1 (initiator's ephemeral key).
pub(crate) const TYPE_HANDSHAKE_1: u8 = 0x01;
/// Type byte of handshake message 2 (responder's keys and credential).
pub(crate) const TYPE_HANDSHAKE_2: u8 = 0x02;
/// Type byte of handshake message 3 (initiator's static key and credential).
pub(crate) const TYPE_HANDSHAKE_3: u8 = 0x03;
/// High bit set: a transport frame; the low 7 bits are the key epoch modulo 128.
pub(crate) const TYPE_TRANSPORT: u8 = 0x80;

/// Bytes before the ciphertext of a transport datagram: type/epoch byte + 24-bit counter.
pub const DATAGRAM_HEADER_LEN: usize = 4;
/// Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Frames per key epoch that fit the 24-bit counter; the sender rekeys before running out.
pub const COUNTERS_PER_EPOCH: u64 = 1 << 24;
/// How many epochs ahead of its own a receiver will look (all frames of a whole epoch may be
/// lost on a radio). Bounded so a forged header costs at most this many key derivations.
pub(crate) const MAX_EPOCH_SKIP: u8 = 3;

/// What the first byte says a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramKind {
    /// Handshake message 1, 2 or 3.
    Handshake(u8),
    /// Transport frame.
    Transport {
        /// Key epoch modulo 128.
        epoch7: u8,
        /// Frame counter within the epoch (Noise nonce).
        counter: u32,
    },
}

/// Splits a datagram into its kind and the Noise message after the header.
pub(crate) fn parse_datagram(datagram: &[u8]) -> Result<(DatagramKind, &[u8]), HopError> {
    let (&first, rest) = datagram
        .split_first()
        .ok_or(HopError::Malformed("empty datagram"))?;
    match first {
        TYPE_HANDSHAKE_1 | TYPE_HANDSHAKE_2 | TYPE_HANDSHAKE_3 => {
            Ok((DatagramKind::Handshake(first), rest))
        }
        t if t & TYPE_TRANSPORT != 0 => {
            if datagram.len() < DATAGRAM_HEADER_LEN + TAG_LEN {
                return Err(HopError::Malformed(
                    "transport datagram shorter than header and tag",
                ));
            }
            let counter =
                u32::from(datagram[1]) | u32::from(datagram[2]) << 8 | u32::from(datagram[3]) << 16;
            Ok((
                DatagramKind::Transport {
                    epoch7: t & 0x7f,
                    counter,
                },
                &datagram[DATAGRAM_HEADER_LEN..],
            ))
        }
        _ => Err(HopError::Malformed("unknown datagram type")),
    }
}

/// Header of a transport datagram.
pub(crate) fn transport_header(epoch: u32, counter: u32) -> [u8; DATAGRAM_HEADER_LEN] {
    let c = counter.to_le_bytes();
    [TYPE_TRANSPORT | (epoch & 0x7f) as u8, c[0], c[1], c[2]]
}

/// One direction's key for one epoch, with Noise's ChaChaPoly nonce layout.
pub(crate) struct EpochCipher {
    key: [u8; 32],
}

impl Drop for EpochCipher {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Noise ChaChaPoly nonce: 32 zero bits, then the 64-bit counter little-endian.
fn noise_nonce(n: u64) -> chacha20poly1305::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    nonce.into()
}

impl EpochCipher {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Appends `ENCRYPT(k, n, "", plaintext)` to `out`.
    pub(crate) fn seal_into(&self, nonce: u64, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let aead = ChaCha20Poly1305::new(&self.key.into());
        let tag = aead
            .encrypt_in_place_detached(&noise_nonce(nonce), &[], &mut out[start..])
            // Only fails past ChaCha20's 256 GiB per-nonce limit; our frames are ≤ 64 KiB.
            .unwrap_or_default();
        out.extend_from_slice(&tag);
    }

    /// `DECRYPT(k, n, "", ciphertext)`, or `None` if it does not authenticate.
    pub(crate) fn open(&self, nonce: u64, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let body_len = ciphertext.len().checked_sub(TAG_LEN)?;
        let (body, tag) = ciphertext.split_at(body_len);
        let mut plain = body.to_vec();
        let aead = ChaCha20Poly1305::new(&self.key.into());
        aead.decrypt_in_place_detached(&noise_nonce(nonce), &[], &mut plain, tag.into())
            .ok()?;
        Some(plain)
    }

    /// Noise `REKEY(k)`: the first 32 bytes of `ENCRYPT(k, 2^64-1, "", zeros(32))`. One-way, so
    /// a later epoch's key does not reveal earlier traffic.
    pub(crate) fn rekeyed(&self) -> Self {
        let mut out = Vec::with_capacity(32 + TAG_LEN);
        self.seal_into(u64::MAX, &[0u8; 32], &mut out);
        let mut key = [0u8; 32];
        key.copy_from_slice(&out[..32]);
        out.zeroize();
        Self { key }
    }
}

/// Sending half: current epoch key and how much it has carried.
pub(crate) struct DatagramSender {
    cipher: EpochCipher,
    epoch: u32,
    next_counter: u64,
    bytes_in_epoch: u64,
}

impl DatagramSender {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: EpochCipher::new(key),
            epoch: 0,
            next_counter: 0,
            bytes_in_epoch: 0,
        }
    }

    /// Encrypts one frame, first moving to the next epoch if this one has carried its limit.
    /// Returns the datagram and whether a rekey happened.
    pub(crate) fn seal(
        &mut self,
        plaintext: &[u8],
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, bool), HopError> {
        let mut rekeyed = false;
        if self.next_counter >= max_messages.min(COUNTERS_PER_EPOCH)
            || self.bytes_in_epoch >= max_bytes
        {
            self.epoch = self.epoch.checked_add(1).ok_or(HopError::KeysExhausted)?;
            self.cipher = self.cipher.rekeyed();
            self.next_counter = 0;
            self.bytes_in_epoch = 0;
            rekeyed = true;
        }
        let counter = u32::try_from(self.next_counter).map_err(|_| HopError::KeysExhausted)?;
        let mut out = Vec::with_capacity(DATAGRAM_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&transport_header(self.epoch, counter));
        self.cipher
            .seal_into(self.next_counter, plaintext, &mut out);
        self.next_counter += 1;
        self.bytes_in_epoch = self.bytes_in_epoch.saturating_add(plaintext.len() as u64);
        Ok((out, rekeyed))
    }
}

/// Why a transport datagram was dropped (never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Counter seen before or older than the replay window.
    Replayed,
    /// Did not authenticate (corrupt, forged, or truncated).
    Corrupt,
    /// An epoch we no longer (or not yet) hold a key for.
    StaleEpoch,
}

struct OldEpoch {
    cipher: EpochCipher,
    window: ReplayWindow,
    expires_at: u64,
}

/// Receiving half: current epoch key and window, and the previous epoch for late frames.
pub(crate) struct DatagramReceiver {
    cipher: EpochCipher,
    epoch: u32,
    window: ReplayWindow,
    previous: Option<OldEpoch>,
}

/// An accepted frame and how many epochs the receiver advanced to open it.
pub(crate) struct Opened {
    pub(crate) plaintext: Vec<u8>,
    pub(crate) epochs_advanced: u8,
}

impl DatagramReceiver {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: EpochCipher::new(key),
            epoch: 0,
            window: ReplayWindow::default(),
            previous: None,
        }
    }

    /// When the previous epoch's key will be forgotten, if one is held.
    pub(crate) fn previous_expiry(&self) -> Option<u64> {
        self.previous.as_ref().map(|p| p.expires_at)
    }

    /// Forgets the previous epoch's key once its grace period is over.
    pub(crate) fn expire(&mut self, now: u64) {
        if self.previous.as_ref().is_some_and(|p| now >= p.expires_at) {
            self.previous = None;
        }
    }

    /// Authenticates and decrypts one transport frame.
    pub(crate) fn open(
        &mut self,
        now: u64,
        epoch7: u8,
        counter: u32,
        ciphertext: &[u8],
        grace_ms: u64,
    ) -> Result<Opened, DropReason> {
        self.expire(now);
        let delta = epoch7.wrapping_sub((self.epoch & 0x7f) as u8) & 0x7f;
        match delta {
            0 => {
                let plaintext =
                    open_in_window(&self.cipher, &mut self.window, counter, ciphertext)?;
                Ok(Opened {
                    plaintext,
                    epochs_advanced: 0,
                })
            }
            0x7f => {
                let old = self.previous.as_mut().ok_or(DropReason::StaleEpoch)?;
                let plaintext = open_in_window(&old.cipher, &mut old.window, counter, ciphertext)?;
                Ok(Opened {
                    plaintext,
                    epochs_advanced: 0,
                })
            }
            d if d <= MAX_EPOCH_SKIP => {
                let new_epoch = self
                    .epoch
                    .checked_add(u32::from(d))
                    .ok_or(DropReason::StaleEpoch)?;
                // Derive the candidate keys without committing: a forged frame must not move us.
                let mut before = self.cipher.rekeyed();
                for _ in 1..d {
                    before = before.rekeyed();
                }
                // `before` is now the key of new_epoch; keep the one before it for late frames.
                let candidate = before;
                let plaintext = candidate
                    .open(u64::from(counter), ciphertext)
                    .ok_or(DropReason::Corrupt)?;
                let mut window = ReplayWindow::default();
                window.mark(counter);
                let old_cipher = std::mem::replace(&mut self.cipher, candidate);
                let old_window = std::mem::replace(&mut self.window, window);
                self.previous = Some(if d == 1 {
                    OldEpoch {
                        cipher: old_cipher,
                        window: old_window,
                        expires_at: now.saturating_add(grace_ms),
                    }
                } else {
                    // Skipped epochs: the one just before the new epoch is the likeliest to
                    // still have frames in flight.
                    let mut k = old_cipher.rekeyed();
                    for _ in 2..d {
                        k = k.rekeyed();
                    }
                    OldEpoch {
                        cipher: k,
                        window: ReplayWindow::default(),
                        expires_at: now.saturating_add(grace_ms),
                    }
                });
                self.epoch = new_epoch;
                Ok(Opened {
                    plaintext,
                    epochs_advanced: d,
                })
            }
            _ => Err(DropReason::StaleEpoch),
        }
    }
}

fn open_in_window(
    cipher: &EpochCipher,
    window: &mut ReplayWindow,
    counter: u32,
    ciphertext: &[u8],
) -> Result<Vec<u8>, DropReason> {
    if !window.check(counter) {
        return Err(DropReason::Replayed);
    }
    let plaintext = cipher
        .open(u64::from(counter), ciphertext)
        .ok_or(DropReason::Corrupt)?;
    window.mark(counter);
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bounds() {
        let h = transport_header(130, 0x00ab_cdef);
        assert_eq!(h, [0x82, 0xef, 0xcd, 0xab]);
        let mut d = h.to_vec();
        d.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(
            parse_datagram(&d).map(|(k, _)| k),
            Ok(DatagramKind::Transport {
                epoch7: 2,
                counter: 0x00ab_cdef
            })
        );
        assert!(parse_datagram(&d[..DATAGRAM_HEADER_LEN + TAG_LEN - 1]).is_err());
        assert!(parse_datagram(&[]).is_err());
        assert!(parse_datagram(&[0x00, 1, 2]).is_err());
        assert!(parse_datagram(&[0x04]).is_err());
        assert_eq!(
            parse_datagram(&[0x02]).map(|(k, _)| k),
            Ok(DatagramKind::Handshake(2))
        );
    }

    #[test]
    fn receiver_follows_epochs_and_keeps_previous_briefly() {
        let mut tx = DatagramSender::new([1; 32]);
        let mut rx = DatagramReceiver::new([1; 32]);
        let mut frames = Vec::new();
        for i in 0..9u8 {
            let (d, _) = tx.seal(&[i], 3, u64::MAX).unwrap();
            frames.push(d);
        }
        // Epochs 0,0,0,1,1,1,2,2,2. Deliver an epoch-1 frame first, then a late epoch-0 one.
        let open = |rx: &mut DatagramReceiver, d: &[u8], now| {
            let (DatagramKind::Transport { epoch7, counter }, body) = parse_datagram(d).unwrap()
            else {
                panic!("not transport")
            };
            rx.open(now, epoch7, counter, body, 1000)
                .map(|o| o.plaintext)
        };
        assert_eq!(open(&mut rx, &frames[4], 0), Ok(vec![4]));
        assert_eq!(open(&mut rx, &frames[1], 10), Ok(vec![1]));
        assert_eq!(open(&mut rx, &frames[1], 10), Err(DropReason::Replayed));
        // Skip all of epoch 2 except its last frame; epoch-0 key is gone after the jump.
        assert_eq!(open(&mut rx, &frames[8], 20), Ok(vec![8]));
        assert_eq!(open(&mut rx, &frames[0], 20), Err(DropReason::StaleEpoch));
        assert_eq!(open(&mut rx, &frames[5], 20), Ok(vec![5]));
        // After the grace period the previous epoch is forgotten.
        assert_eq!(open(&mut rx, &frames[3], 5000), Err(DropReason::StaleEpoch));
        let mut bad = frames[7].clone();
        bad[6] ^= 1;
        assert_eq!(open(&mut rx, &bad, 5000), Err(DropReason::Corrupt));
        assert_eq!(open(&mut rx, &frames[7], 5000), Ok(vec![7]));
    }

    /// Our datagram cipher must be Noise's: compare with snow's stateless transport, before and
    /// after a rekey.
    #[test]
    fn matches_snow_stateless_transport() {
        let params: snow::params::NoiseParams =
            "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let mut i = snow::Builder::new(params.clone())
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params).build_responder().unwrap();
        let mut buf = [0u8; 256];
        let mut out = [0u8; 256];
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut out).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut out).unwrap();
        let (k1, _k2) = i.dangerously_get_raw_split();
        let mut snow_tx = i.into_stateless_transport_mode().unwrap();

        let ours = EpochCipher::new(k1);
        let mut mine = Vec::new();
        ours.seal_into(42, b"hello radio", &mut mine);
        let n = snow_tx.write_message(42, b"hello radio", &mut buf).unwrap();
        assert_eq!(mine, &buf[..n]);

        snow_tx.rekey_outgoing();
        let next = ours.rekeyed();
        let mut mine = Vec::new();
        next.seal_into(7, b"after rekey", &mut mine);
        let n = snow_tx.write_message(7, b"after rekey", &mut buf).unwrap();
        assert_eq!(mine, &buf[..n]);
    }
}
