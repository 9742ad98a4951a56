//! A snow resolver whose randomness comes from the caller's seed.
//!
//! snow draws the ephemeral key from `CryptoResolver::resolve_rng`. The default resolver would
//! read the OS RNG, which would make the session impure and its transcripts irreproducible;
//! here the caller passes a 32-byte seed (from the OS RNG at the edge, from a fixed value in
//! tests and the simulator) and everything else is snow's default primitives.

use rand_chacha_03::rand_core::{RngCore, SeedableRng};
use rand_chacha_03::ChaCha20Rng;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroize;

/// Label that separates the handshake's RNG stream from any other use of the same seed.
const RNG_CONTEXT: &str = "cairn hop ephemeral rng v1";

/// snow's default primitives with a seeded ChaCha20 RNG.
pub(crate) struct SeededResolver {
    seed: [u8; 32],
}

impl SeededResolver {
    pub(crate) fn new(seed: &[u8; 32]) -> Self {
        Self {
            seed: blake3::derive_key(RNG_CONTEXT, seed),
        }
    }
}

impl Drop for SeededResolver {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}
