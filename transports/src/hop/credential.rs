//! Who a device is: an Ed25519 identity (the person) vouching for an X25519 device key (what
//! Noise proves possession of).
//!
//! The person's identity key stays the same across their devices; each device has its own
//! Noise static key, so losing one phone does not force a new identity, and a handshake proves
//! "this device, vouched for by this person". The signature is domain-separated (libp2p style)
//! so it can never be replayed as a signature over anything else.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroize;

use super::error::CredentialError;

/// Domain label in front of every device-key signature.
pub const DEVICE_KEY_CONTEXT: &[u8] = b"cairn device key v1";

/// Label for the well-known network key of users who never set one.
pub const DEFAULT_NETWORK_CONTEXT: &str = "cairn 2026 default network";

/// An identity's statement "this X25519 key is one of my devices".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceCredential {
    /// Ed25519 public key of the person.
    pub identity: [u8; 32],
    /// X25519 public key of the device (Noise static key `s`).
    pub device: [u8; 32],
    /// Ed25519 signature by `identity` over [`DeviceCredential::signed_message`].
    pub signature: [u8; 64],
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("identity", &Hex(&self.identity))
            .field("device", &Hex(&self.device))
            .finish_non_exhaustive()
    }
}

struct Hex<'a>(&'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl DeviceCredential {
    /// The exact bytes the identity signs: label, identity, device key. The identity is inside
    /// the signed bytes so a signature cannot be re-attributed to another key.
    #[must_use]
    pub fn signed_message(identity: &[u8; 32], device: &[u8; 32]) -> [u8; 83] {
        let mut msg = [0u8; DEVICE_KEY_CONTEXT.len() + 64];
        msg[..DEVICE_KEY_CONTEXT.len()].copy_from_slice(DEVICE_KEY_CONTEXT);
        msg[DEVICE_KEY_CONTEXT.len()..DEVICE_KEY_CONTEXT.len() + 32].copy_from_slice(identity);
        msg[DEVICE_KEY_CONTEXT.len() + 32..].copy_from_slice(device);
        msg
    }

    /// Signs `device_public` with the identity key. Called by the node's identity module when
    /// it creates or rotates a device key.
    #[must_use]
    pub fn issue(identity: &SigningKey, device_public: [u8; 32]) -> Self {
        let identity_public = identity.verifying_key().to_bytes();
        let signature = identity.sign(&Self::signed_message(&identity_public, &device_public));
        Self {
            identity: identity_public,
            device: device_public,
            signature: signature.to_bytes(),
        }
    }

    /// Checks that `identity` signed `device`. Uses strict verification so a signature
    /// cannot be malleated into a second valid one and small-order keys are refused.
    pub fn verify(&self) -> Result<(), CredentialError> {
        let key = VerifyingKey::from_bytes(&self.identity)
            .map_err(|_| CredentialError::InvalidIdentityKey)?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(
            &Self::signed_message(&self.identity, &self.device),
            &signature,
        )
        .map_err(|_| CredentialError::BadSignature)
    }
}

/// This device's secrets plus its credential: everything a hop session needs to prove who it
/// is. The device secret is wiped from memory when dropped.
#[derive(Clone)]
pub struct LocalKeys {
    /// X25519 secret of the device (Noise static private key).
    pub device_secret: [u8; 32],
    /// The identity's signature over the matching public key.
    pub credential: DeviceCredential,
}

impl LocalKeys {
    /// Pairs a device secret with its credential, checking that they belong together and that
    /// the credential verifies, so a misconfigured node fails here and not at every peer.
    pub fn new(
        device_secret: [u8; 32],
        credential: DeviceCredential,
    ) -> Result<Self, CredentialError> {
        let keys = Self {
            device_secret,
            credential,
        };
        keys.check()?;
        Ok(keys)
    }

    /// Issues a credential for `device_secret` with `identity` (convenience for nodes and tests
    /// that hold both).
    #[must_use]
    pub fn from_identity(identity: &SigningKey, device_secret: [u8; 32]) -> Self {
        let device_public = device_public_key(&device_secret);
        Self {
            device_secret,
            credential: DeviceCredential::issue(identity, device_public),
        }
    }

    /// Verifies the credential and that the secret matches its device key.
    pub fn check(&self) -> Result<(), CredentialError> {
        if device_public_key(&self.device_secret) != self.credential.device {
            return Err(CredentialError::DeviceKeyMismatch);
        }
        self.credential.verify()
    }
}

impl Drop for LocalKeys {
    fn drop(&mut self) {
        self.device_secret.zeroize();
    }
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("device_secret", &"<redacted>")
            .field("credential", &self.credential)
            .finish()
    }
}

/// The X25519 public key of a device secret (clamped as X25519 and Noise require).
#[must_use]
pub fn device_public_key(device_secret: &[u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*device_secret);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// The team network key, used as the Noise PSK: only devices that hold it can complete a
/// handshake or read anything past the first ephemeral key. Wiped from memory on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey(pub [u8; 32]);

impl NetworkKey {
    /// The well-known key of users who set none. It keeps strangers' traffic apart from
    /// nobody: it exists so the protocol has one code path, and a team that cares sets its own.
    #[must_use]
    pub fn default_network() -> Self {
        Self(blake3::derive_key(DEFAULT_NETWORK_CONTEXT, b""))
    }
}

impl Drop for NetworkKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credential_verifies_and_tampering_is_refused() {
        let identity = SigningKey::from_bytes(&[7; 32]);
        let keys = LocalKeys::from_identity(&identity, [9; 32]);
        assert_eq!(keys.check(), Ok(()));

        let mut other_device = keys.credential;
        other_device.device[0] ^= 1;
        assert_eq!(other_device.verify(), Err(CredentialError::BadSignature));

        let impostor = SigningKey::from_bytes(&[8; 32]);
        let mut stolen = keys.credential;
        stolen.identity = impostor.verifying_key().to_bytes();
        assert_eq!(stolen.verify(), Err(CredentialError::BadSignature));

        assert_eq!(
            LocalKeys::new([10; 32], keys.credential).err(),
            Some(CredentialError::DeviceKeyMismatch)
        );
    }

    #[test]
    fn default_network_key_is_pinned() {
        assert_eq!(
            NetworkKey::default_network().0,
            blake3::derive_key("cairn 2026 default network", b"")
        );
    }
}
