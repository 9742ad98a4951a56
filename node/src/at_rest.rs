//! What a node keeps on disk, sealed under a key of its identity.
//!
//! The contact book and the message database hold whom the user knows and what they said.
//! Both are sealed with keys derived from the identity secret ([`StorageKey`]), so they are
//! exactly as safe as the identity file: with a passphrase on the identity (`CAIRN_PASSPHRASE`
//! at `cairn init`), a thief who takes the device without the passphrase learns neither; without
//! one, the files are readable by whoever can read the identity (they are all mode 0600).
//!
//! Each sealed value is `nonce(24) ‖ XChaCha20-Poly1305(key, nonce, aad, plaintext)`, with a
//! fresh random nonce per write (192 bits: no counter to keep, no collision to fear) and the
//! value's place in the file as associated data, so values cannot be swapped around. Nonces come
//! from a ChaCha20 generator per thread, seeded from the OS (as `rand`'s `ThreadRng` does): a
//! system call per message would cost the daemon a tenth of its receiving rate. Cairn never
//! forks, so no two processes share a generator's state.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand_chacha_03::ChaCha20Rng;
use rand_core_06::{OsRng, RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::identity::Identity;

thread_local! {
    static NONCES: std::cell::RefCell<ChaCha20Rng> = std::cell::RefCell::new({
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut_slice());
        ChaCha20Rng::from_seed(*seed)
    });
}

/// Bytes a sealed value adds to its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// The root of every at-rest key of one identity. Derived, never stored.
pub struct StorageKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

impl StorageKey {
    /// The storage key of `identity`: the same on every run, unknown without its secret.
    pub fn of(identity: &Identity) -> Self {
        StorageKey(Zeroizing::new(blake3::derive_key(
            "cairn 2026 storage key",
            identity.secret_seed().as_slice(),
        )))
    }

    /// The key for one purpose (one file or table); purposes never share a key.
    pub(crate) fn subkey(&self, purpose: &'static str) -> SealKey {
        let mut hasher = blake3::Hasher::new_derive_key("cairn 2026 storage subkey");
        hasher.update(self.0.as_slice());
        hasher.update(purpose.as_bytes());
        SealKey(Zeroizing::new(*hasher.finalize().as_bytes()))
    }
}

/// Seals and opens values for one purpose, and names them without revealing them.
pub(crate) struct SealKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// `nonce ‖ ciphertext` of `plaintext`, bound to `aad`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        NONCES.with(|rng| rng.borrow_mut().fill_bytes(&mut nonce));
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()));
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Fails only for a plaintext over 256 GiB; ours are at most a contact book.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of a value [`SealKey::seal`] made with this key and `aad`; `None` for
    /// anything else (another key, another place, a flipped bit, a truncation).
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(24);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()));
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
            .map(Zeroizing::new)
    }

    /// A name for `data` that only holders of this key can compute: an index key that
    /// does not show what it indexes.
    pub(crate) fn name(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, data).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_core_06::SeedableRng;

    fn identity(seed: u64) -> Identity {
        Identity::generate(&mut rand_chacha_03::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let key = StorageKey::of(&identity(1)).subkey("test");
        let sealed = key.seal(b"place 1", b"meet at the ridge");
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 17);
        assert!(!sealed.windows(4).any(|w| w == b"meet"));
        assert_eq!(
            key.open(b"place 1", &sealed).unwrap().as_slice(),
            b"meet at the ridge"
        );
        assert!(key.open(b"place 2", &sealed).is_none());
        let other = StorageKey::of(&identity(2)).subkey("test");
        assert!(other.open(b"place 1", &sealed).is_none());
        let purpose = StorageKey::of(&identity(1)).subkey("another");
        assert!(purpose.open(b"place 1", &sealed).is_none());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(key.open(b"place 1", &flipped).is_none(), "bit in byte {i}");
        }
        assert!(key.open(b"place 1", &sealed[..sealed.len() - 1]).is_none());
        assert!(key.open(b"place 1", &[]).is_none());
        // A fresh nonce each time: the same value never looks the same twice.
        assert_ne!(sealed, key.seal(b"place 1", b"meet at the ridge"));
    }

    #[test]
    fn names_are_stable_per_key_and_differ_across_keys() {
        let a = StorageKey::of(&identity(1)).subkey("names");
        let b = StorageKey::of(&identity(2)).subkey("names");
        assert_eq!(a.name(b"bob"), a.name(b"bob"));
        assert_ne!(a.name(b"bob"), a.name(b"bobby"));
        assert_ne!(a.name(b"bob"), b.name(b"bob"));
        assert_eq!(
            format!("{:?}", StorageKey::of(&identity(1))),
            "StorageKey(..)"
        );
    }
}
