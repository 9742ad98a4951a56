//! # The hop session: Noise over any link
//!
//! Every link between two Cairn devices (LAN TCP, BLE, a serial cable, a LoRa radio) is
//! secured by one [`HopSession`]: a pure state machine in the style of `quinn-proto`. It never
//! reads a clock (`now` in ms is an argument), never does I/O (bytes go in through
//! [`HopSession::handle_input`] and out through [`HopSession::poll_transmit`]) and never draws
//! OS randomness (a 32-byte seed gives the ephemeral key), so the simulator can replay any run.
//!
//! ```
//! use cairn_transports::hop::*;
//! use ed25519_dalek::SigningKey;
//!
//! let net = NetworkKey::default_network();
//! let alice = LocalKeys::from_identity(&SigningKey::from_bytes(&[1; 32]), [2; 32]);
//! let bob = LocalKeys::from_identity(&SigningKey::from_bytes(&[3; 32]), [4; 32]);
//! let lora = Framing::Datagram { mtu: 200 };
//! let mut a = HopSession::new(HopConfig::new(Role::Initiator, alice, net.clone(), lora), 0, [5; 32])?;
//! let mut b = HopSession::new(HopConfig::new(Role::Responder, bob, net, lora), 0, [6; 32])?;
//! // Shuttle datagrams until both sides are established (no loss here).
//! for _ in 0..3 {
//!     while let Some(d) = a.poll_transmit() { b.handle_input(0, &d); }
//!     while let Some(d) = b.poll_transmit() { a.handle_input(0, &d); }
//! }
//! assert!(a.is_established() && b.is_established());
//! assert_eq!(a.max_plaintext(), 180);
//! a.send(b"hello over LoRa")?;
//! b.handle_input(1, &a.poll_transmit().unwrap());
//! assert!(matches!(b.poll_event(), Some(HopEvent::Established { .. })));
//! assert_eq!(b.poll_event(), Some(HopEvent::Frame(b"hello over LoRa".to_vec())));
//! # Ok::<(), HopError>(())
//! ```
//!
//! ## Who is who
//!
//! A person has a long-term Ed25519 *identity*; each of their devices has an X25519 *static*
//! key, which the identity signs ([`DeviceCredential`]). The Noise handshake proves possession
//! of the static key; the payload carries the identity and its signature, and the session
//! checks that the signature binds that identity to exactly the static key Noise
//! authenticated. A credential signed by someone else, or a valid credential replayed by a
//! device without its static secret, is refused.
//!
//! ## Why `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`
//!
//! * **XX**: devices meet whoever is in radio range or on the LAN; neither knows the other's
//!   device key in advance. Both static keys travel encrypted, and the initiator's only after
//!   the responder authenticated (message 3), so a responder cannot be used to probe who an
//!   initiator is.
//! * **psk0**: the 32-byte team [`NetworkKey`] is mixed in before anything is encrypted. What
//!   an outsider without it (passive listener or active prober) learns: message 1 is an
//!   ephemeral public key (random-looking 32 bytes) plus a 17-byte ciphertext they cannot
//!   read or forge, so a responder with a different key rejects it and never sends message 2;
//!   and even a captured message 2 cannot be decrypted without the key (the ephemeral secret
//!   alone is not enough), so a responder's identity is hidden from everyone outside the
//!   team. Outsiders still see that two devices exchanged 49/195/163-byte messages and then
//!   frames of some length: sizes and timing are not hidden. Users who set no key share the
//!   well-known [`NetworkKey::default_network`], which hides nothing from other Cairn users.
//! * **25519, ChaChaPoly, BLAKE2s**: fast in software on phones and small boards without AES
//!   instructions; BLAKE2s keeps the hash state small.
//! * The prologue is `b"cairn hop v1"` plus a framing byte (1 stream, 2 datagram), so peers
//!   with mismatched framing fail at message 1 instead of misreading frames later.
//!
//! ## Framing
//!
//! [`Framing::Stream`] (TCP): each Noise message goes out as a u16 big-endian length and the
//! message; input may arrive in any chunks. Nonces are implicit (snow's `TransportState`), so
//! any authentication failure means tampering or a broken link: the session closes. Overhead
//! 2 + 16 = 18 bytes per frame; up to 65 519 bytes of plaintext.
//!
//! [`Framing::Datagram`] (LoRa, BLE writes, UDP): one Noise message per datagram, behind a
//! one-byte type. Transport frames carry `0x80 | epoch mod 128` and a 24-bit little-endian
//! counter that is the Noise nonce: 4 + 16 = 20 bytes of overhead, so a 200-byte LoRa frame
//! carries 180 bytes of plaintext. Frames may be lost, reordered or duplicated; a 128-frame
//! sliding replay window accepts each counter at most once. A replayed, corrupt or forged
//! datagram is **dropped and counted** in [`HopStats`], never fatal: on a shared radio channel
//! anyone can transmit, and one bad frame must not cut a link that took minutes of airtime to
//! set up. The same holds for handshake messages on datagrams; if the deadline passes and
//! every handshake message we got failed authentication, the close reason is
//! [`HopError::HandshakeRejected`] (a different network key) rather than a plain timeout.
//! Delivery is at most once and unordered: a sync session that needs an ordered channel runs
//! over an ARQ layer on top.
//!
//! The handshake must fit the smallest datagram: message 2 is 1 + 32 + 48 + 99 + 16 = 196
//! bytes, so the MTU must be at least [`MIN_DATAGRAM_MTU`]. Links with smaller MTUs (BLE's
//! default 20-byte writes) fragment below this session, in the link layer.
//!
//! On datagrams the initiator resends message 1 if no message 2 arrives (first after
//! `handshake_retransmit_ms`, doubling); the responder answers a byte-identical repeat of
//! message 1 with the same message 2 and resends message 2 on its own timer until message 3
//! arrives; an established initiator answers a repeated message 2 with its message 3 until the
//! responder's first frame proves it got it. A message 1 from a different attempt is dropped:
//! the link layer starts a new session when this one times out.
//!
//! ## Rekey
//!
//! Each direction moves to `REKEY(k)` (Noise §11.3, a one-way function) after
//! [`RekeyLimits`] frames or bytes, so a key leaked later does not open earlier traffic. On a
//! stream the sender first sends an empty frame (the rekey marker) under the old key; the
//! stream is ordered, so the receiver switches at the same frame. On datagrams the epoch
//! travels in the header: a receiver tries a newer epoch's key (up to 3 ahead, as whole
//! epochs may be lost) without committing until a frame authenticates, and keeps the previous
//! epoch's key for `previous_epoch_grace_ms` for late frames.
//!
//! ## Limits
//!
//! * No forward secrecy beyond the session: both ephemeral keys die with it, but within a
//!   session rekeying is the only ratchet; sessions should be short-lived (per contact).
//! * Lengths, counts and timing are visible to a listener; there is no padding.
//! * A peer's announced max frame is trusted only to shrink what we send (never below 64).
//! * Datagram counters are 24 bits per epoch; the sender rekeys before they wrap, and 2^32
//!   epochs end the session with [`HopError::KeysExhausted`].
//! * The network key is a group secret: anyone on the team can complete a handshake; what it
//!   does not let them do is pose as another member's identity.

mod credential;
mod datagram;
mod error;
mod payload;
mod replay;
mod rng;
mod session;

pub use credential::{
    device_public_key, DeviceCredential, LocalKeys, NetworkKey, DEFAULT_NETWORK_CONTEXT,
    DEVICE_KEY_CONTEXT,
};
pub use datagram::{COUNTERS_PER_EPOCH, DATAGRAM_HEADER_LEN, TAG_LEN};
pub use error::{CredentialError, HopError};
pub use payload::{HANDSHAKE_1_LEN, HANDSHAKE_2_LEN, HANDSHAKE_3_LEN, PROTOCOL_VERSION};
pub use replay::WINDOW_BITS;
pub use session::{
    Framing, HopConfig, HopEvent, HopSession, HopStats, RekeyLimits, Role, DATAGRAM_OVERHEAD,
    MAX_NOISE_MESSAGE, MIN_DATAGRAM_MTU, MIN_PEER_FRAME, NOISE_PATTERN, PROLOGUE, STREAM_OVERHEAD,
};
