//! Handshake payloads: what each side says inside the encrypted part of the Noise messages.
//!
//! Message 1 carries only the protocol version (the initiator's identity waits for message 3,
//! when it can be encrypted to an authenticated responder). Messages 2 and 3 carry
//! `version (1) | max frame (u16 BE) | identity (32) | signature (64)` = 99 bytes; the device
//! key is Noise's own `s`, so it is not repeated. Lengths are exact: a v1 payload with extra
//! bytes is malformed, and extensions come with a new version number.

use super::credential::DeviceCredential;
use super::error::HopError;

/// The hop protocol version this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Payload of handshake message 1.
pub(crate) const HELLO_LEN: usize = 1;
/// Payload of handshake messages 2 and 3.
pub(crate) const IDENTITY_PAYLOAD_LEN: usize = 1 + 2 + 32 + 64;

/// Noise message sizes for `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s` with these payloads:
/// message 1 = e + encrypted hello (psk0 keys the cipher before the first payload).
pub const HANDSHAKE_1_LEN: usize = 32 + HELLO_LEN + 16;
/// Message 2 = e + encrypted s + encrypted identity payload.
pub const HANDSHAKE_2_LEN: usize = 32 + (32 + 16) + IDENTITY_PAYLOAD_LEN + 16;
/// Message 3 = encrypted s + encrypted identity payload.
pub const HANDSHAKE_3_LEN: usize = (32 + 16) + IDENTITY_PAYLOAD_LEN + 16;

/// Checks the hello of message 1.
pub(crate) fn decode_hello(payload: &[u8]) -> Result<(), HopError> {
    match payload {
        [PROTOCOL_VERSION] => Ok(()),
        [v] => Err(HopError::UnsupportedVersion(*v)),
        _ => Err(HopError::Malformed("handshake message 1 payload length")),
    }
}

/// What a peer says about itself in messages 2 and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdentityPayload {
    /// Largest frame the sender accepts (datagram size, or Noise message on a stream).
    pub(crate) max_frame: u16,
    pub(crate) identity: [u8; 32],
    pub(crate) signature: [u8; 64],
}

impl IdentityPayload {
    pub(crate) fn from_credential(credential: &DeviceCredential, max_frame: u16) -> Self {
        Self {
            max_frame,
            identity: credential.identity,
            signature: credential.signature,
        }
    }

    pub(crate) fn encode(&self) -> [u8; IDENTITY_PAYLOAD_LEN] {
        let mut out = [0u8; IDENTITY_PAYLOAD_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1..3].copy_from_slice(&self.max_frame.to_be_bytes());
        out[3..35].copy_from_slice(&self.identity);
        out[35..].copy_from_slice(&self.signature);
        out
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, HopError> {
        let (&version, _) = payload
            .split_first()
            .ok_or(HopError::Malformed("empty identity payload"))?;
        if version != PROTOCOL_VERSION {
            return Err(HopError::UnsupportedVersion(version));
        }
        let bytes: &[u8; IDENTITY_PAYLOAD_LEN] = payload
            .try_into()
            .map_err(|_| HopError::Malformed("identity payload length"))?;
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&bytes[3..35]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[35..]);
        Ok(Self {
            max_frame: u16::from_be_bytes([bytes[1], bytes[2]]),
            identity,
            signature,
        })
    }

    /// The credential this payload claims, with the device key Noise authenticated.
    pub(crate) fn credential(&self, remote_static: [u8; 32]) -> DeviceCredential {
        DeviceCredential {
            identity: self.identity,
            device: remote_static,
            signature: self.signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_payload_round_trip_and_refusals() {
        let p = IdentityPayload {
            max_frame: 200,
            identity: [3; 32],
            signature: [4; 64],
        };
        let bytes = p.encode();
        assert_eq!(&bytes[..3], &[1, 0, 200]);
        assert_eq!(IdentityPayload::decode(&bytes), Ok(p));
        assert!(IdentityPayload::decode(&bytes[..98]).is_err());
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(IdentityPayload::decode(&long).is_err());
        let mut v2 = bytes;
        v2[0] = 2;
        assert_eq!(
            IdentityPayload::decode(&v2),
            Err(HopError::UnsupportedVersion(2))
        );
        assert!(IdentityPayload::decode(&[]).is_err());
        assert_eq!(decode_hello(&[1]), Ok(()));
        assert_eq!(decode_hello(&[9]), Err(HopError::UnsupportedVersion(9)));
        assert!(decode_hello(&[]).is_err());
        assert!(decode_hello(&[1, 1]).is_err());
    }

    #[test]
    fn handshake_fits_a_lora_frame() {
        assert_eq!(HANDSHAKE_1_LEN, 49);
        assert_eq!(HANDSHAKE_2_LEN, 195);
        assert_eq!(HANDSHAKE_3_LEN, 163);
    }
}
