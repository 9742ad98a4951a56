//! Why a hop session refused something or closed.

use thiserror::Error;

/// A credential that does not prove what it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The identity bytes are not a valid Ed25519 public key.
    #[error("identity key is not a valid Ed25519 public key")]
    InvalidIdentityKey,
    /// The identity did not sign this device key (or signed a different one).
    #[error("device key signature does not verify under the identity key")]
    BadSignature,
    /// The secret in [`LocalKeys`](super::LocalKeys) does not belong to the credential's device
    /// key: the handshake would prove a key the credential does not name.
    #[error("device secret does not match the credential's device public key")]
    DeviceKeyMismatch,
}

/// Everything that can go wrong in a [`HopSession`](super::HopSession).
///
/// Errors returned from `send` leave the session as it was; errors carried by
/// [`HopEvent::Closed`](super::HopEvent::Closed) ended it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HopError {
    /// The configuration cannot work (the text says which rule it broke).
    #[error("invalid hop configuration: {0}")]
    InvalidConfig(&'static str),
    /// A datagram MTU too small to carry the largest handshake message. Fragmenting for tiny
    /// link MTUs (BLE's 20-byte writes) is the link layer's job, below this session.
    #[error("datagram MTU {mtu} is too small: the handshake needs {needed} bytes per datagram")]
    MtuTooSmall {
        /// The configured MTU.
        mtu: usize,
        /// The smallest MTU that can carry every handshake message.
        needed: usize,
    },
    /// Our own credential or keys are inconsistent.
    #[error("local credential: {0}")]
    LocalCredential(CredentialError),
    /// The handshake did not finish before the configured deadline.
    #[error("handshake did not complete before the deadline")]
    HandshakeTimeout,
    /// A handshake message failed authentication. The peer most likely uses a different team
    /// network key (or a different framing kind); on a stream it may also have been altered.
    /// On datagrams this is reported at the deadline, after every attempt failed this way.
    #[error("handshake message failed authentication: the peer most likely uses a different network key")]
    HandshakeRejected,
    /// The peer's credential does not bind its identity to the Noise static key it proved.
    #[error("peer credential refused: {0}")]
    PeerCredential(CredentialError),
    /// The peer authenticated as someone other than the identity we were told to expect.
    #[error("peer identity {got:02x?} is not the expected {expected:02x?}")]
    UnexpectedPeer {
        /// The identity the configuration asked for.
        expected: [u8; 32],
        /// The identity the peer proved.
        got: [u8; 32],
    },
    /// The peer speaks a hop protocol version we do not.
    #[error("peer speaks hop protocol version {0}, we speak 1")]
    UnsupportedVersion(u8),
    /// A handshake payload or frame header broke the wire format.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The peer advertised a maximum frame too small to carry any data.
    #[error("peer's maximum frame of {0} bytes cannot carry data")]
    PeerFrameTooSmall(usize),
    /// A stream frame failed authentication: on an ordered reliable stream this means
    /// tampering or a broken link, so the session ends.
    #[error("stream frame failed authentication")]
    StreamAuthFailed,
    /// A stream frame longer than the maximum we announced.
    #[error("stream frame of {len} bytes exceeds our maximum of {max}")]
    StreamFrameTooLarge {
        /// Length announced by the peer.
        len: usize,
        /// Our limit.
        max: usize,
    },
    /// `send` with more plaintext than [`HopSession::max_plaintext`](super::HopSession::max_plaintext).
    #[error("plaintext of {len} bytes exceeds the maximum of {max}")]
    PlaintextTooLarge {
        /// Requested length.
        len: usize,
        /// The session's limit.
        max: usize,
    },
    /// `send` of an empty frame: an empty stream frame is the rekey marker, and an empty frame
    /// carries nothing the sync layer needs.
    #[error("empty frames cannot be sent")]
    EmptyFrame,
    /// `send` before the handshake completed.
    #[error("session is not established yet")]
    NotEstablished,
    /// The session already closed; the reason was reported in `HopEvent::Closed`.
    #[error("session is closed")]
    Closed,
    /// Nonces or key epochs ran out (needs 2^32 rekeys; practically unreachable).
    #[error("key material exhausted; start a new session")]
    KeysExhausted,
    /// The Noise library refused an operation we believed valid (a bug, not peer input).
    #[error("noise internal error: {0}")]
    Internal(&'static str),
}
