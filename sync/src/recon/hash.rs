//! Per-session hashing: salted short ids, the hashes derived from them, and the random
//! walk that maps a short id to the coded symbols it belongs to.
//!
//! Everything here is a pure function of the session [`Salt`] and the input, computed with
//! integer operations and correctly rounded IEEE-754 `f64` arithmetic only (division and
//! `sqrt`; Rust never contracts to fused multiply-add), so both peers compute bit-identical
//! results on any platform.

use siphasher::sip::SipHasher13;

use crate::store::ReconKey;

/// The 128-bit random value that keys one reconciliation session. Chosen by the side that
/// opens the session and sent to the peer in the clear.
///
/// A fresh salt per session makes short-id collisions independent between sessions: items
/// that collide in one session (probability about N²/2⁶⁵) are told apart in the next. It
/// also keeps anyone who writes items into a store *before* the session from crafting ids
/// that collide or that cancel out in the digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Salt(pub [u8; 16]);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Salt(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Salt {
    /// The session's short id of `key`: SipHash-1-3 keyed with the salt over the first 16
    /// bytes of the item id (the key's big-endian bytes). The session layer uses this to
    /// match items that arrive against the short ids it asked for.
    pub fn short_id(&self, key: ReconKey) -> ShortId {
        ShortId(self.hasher().hash(&key.to_be_bytes()))
    }

    fn hasher(&self) -> SipHasher13 {
        let (k0, k1) = split_key(&self.0);
        SipHasher13::new_with_keys(k0, k1)
    }
}

/// A session-salted 64-bit stand-in for an item: what travels on the wire instead of the
/// 32-byte item id. Among a million items a pair collides with probability about 2⁻²⁵ per
/// session, and a collision only delays that item to a later session (see [`Salt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortId(pub u64);

fn split_key(bytes: &[u8; 16]) -> (u64, u64) {
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    k0.copy_from_slice(&bytes[..8]);
    k1.copy_from_slice(&bytes[8..]);
    (u64::from_le_bytes(k0), u64::from_le_bytes(k1))
}

/// Keys derived from the salt, one per purpose, so no hash is reused for two jobs.
#[derive(Clone, Debug)]
pub(crate) struct SessionHashes {
    short: SipHasher13,
    digest: SipHasher13,
    sign_key: u64,
    check_key: u64,
}

/// Labels for the derived keys (domain separation, in Briar's style).
const LABEL_DIGEST: &[u8] = b"cairn.sync.recon/digest";
const LABEL_SIGN: &[u8] = b"cairn.sync.recon/sign";
const LABEL_CHECK: &[u8] = b"cairn.sync.recon/check";

impl SessionHashes {
    pub(crate) fn new(salt: &Salt) -> Self {
        let base = salt.hasher();
        let derive = |label: &[u8], n: u8| {
            let mut input = Vec::with_capacity(label.len() + 1);
            input.extend_from_slice(label);
            input.push(n);
            base.hash(&input)
        };
        Self {
            short: base,
            digest: SipHasher13::new_with_keys(derive(LABEL_DIGEST, 0), derive(LABEL_DIGEST, 1)),
            sign_key: derive(LABEL_SIGN, 0),
            check_key: derive(LABEL_CHECK, 0),
        }
    }

    /// See [`Salt::short_id`].
    #[inline]
    pub(crate) fn short(&self, key: ReconKey) -> u64 {
        self.short.hash(&key.to_be_bytes())
    }

    /// Each item's term in the set digest. A keyed PRF (not just a mixer) because the
    /// digest alone decides "the sets are equal": its sum must not be steerable.
    #[inline]
    pub(crate) fn digest_term(&self, short: u64) -> u64 {
        self.digest.hash(&short.to_le_bytes())
    }

    /// Sixteen independent signs for the tug-of-war sketches, one per bit.
    #[inline]
    pub(crate) fn signs(&self, short: u64) -> u16 {
        mix64(short ^ self.sign_key) as u16
    }

    /// The per-item checksum in coded symbols: tells a pure symbol (one item) from a mixed
    /// one. Short ids are already salted and uniform, so a keyed bijective mixer suffices.
    #[inline]
    pub(crate) fn check(&self, short: u64) -> u32 {
        (mix64(short ^ self.check_key) >> 32) as u32
    }
}

/// The splitmix64 / murmur3 finaliser: a fast bijective mixer with full avalanche.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The indices of the coded symbols one item belongs to, in increasing order: 0, then
/// successive indices with P(item in symbol k) ≈ 1 / (1 + k/2) (the rateless IBLT mapping of
/// Yang et al., SIGCOMM 2024, with α = 1/2).
///
/// With that density, P(next index > j | current index i) ≈ ((i + 1.5) / (j + 1.5))²: the
/// walk draws u ∈ (0, 1] from a splitmix64 stream seeded by the short id and jumps to
/// j = i + ⌈(i + 1.5)·(1/√u − 1)⌉, as the paper's reference implementation does. (The exact
/// density 2/(k+2) would put (i+1)(i+2) where this has (i+1.5)²: a difference of 0.25 that
/// changes each probability by under 2 %, and that both peers share.)
///
/// 1/√u depends on the random stream only, so its division and square root run ahead of
/// the chain i → j (a multiply-add and a rounding), which makes the walk several times
/// faster than solving (j+1)(j+2) > (i+1)(i+2)/u for j; the walk is most of the cost of
/// encoding a million items.
/// An item touches about 2·ln(m) of the first m symbols.
///
/// Determinism: every operation is a correctly rounded IEEE-754 operation on values that
/// do not depend on the platform (integers below 2⁵³ convert exactly, Rust never fuses
/// multiply-adds), so both peers compute bit-identical indices.
#[derive(Clone, Debug)]
pub(crate) struct IndexWalk {
    state: u64,
    index: u64,
}

/// Indices at or beyond this are never produced or requested: every stream is capped far
/// below it. A walk that jumps past it stays there.
pub(crate) const INDEX_LIMIT: u64 = 1 << 40;

const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

impl IndexWalk {
    #[inline]
    pub(crate) fn new(short: u64) -> Self {
        Self {
            state: short,
            index: 0,
        }
    }

    /// The symbol index the walk is at.
    #[inline]
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    /// Moves to the next symbol index of this item and returns it. Saturates at
    /// [`INDEX_LIMIT`].
    #[inline]
    pub(crate) fn advance(&mut self) -> u64 {
        self.index = next_index(&mut self.state, self.index);
        self.index
    }

    /// Whether `short` belongs to symbol `index`.
    pub(crate) fn maps_to(short: u64, index: u64) -> bool {
        let mut walk = Self::new(short);
        let mut at = walk.index();
        while at < index {
            at = walk.advance();
        }
        at == index
    }
}

/// One step of [`IndexWalk`] on its raw state: the next index after `index`. A free
/// function so that encoders can interleave several walks.
#[inline(always)]
pub(crate) fn next_index(state: &mut u64, index: u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    // r ∈ [1, 2^53] exactly; u = r / 2^53 ∈ (0, 1]; v = 1/√u ≥ 1.
    let r = ((mix64(*state) >> 11) + 1) as i64 as f64;
    let v = (TWO_POW_53 / r).sqrt();
    // x ≥ 0; clamped so the conversions below are exact (x < 2^53) and in range. Indices
    // stay below 2^40, so i64 conversions (native on x86-64, unlike u64) are exact.
    let x = ((index as i64 as f64 + 1.5) * (v - 1.0)).min(INDEX_LIMIT as f64);
    // ⌈x⌉ by truncation and compare: `f64::ceil` is a libm call on baseline x86-64.
    let truncated = x as i64;
    let step = truncated as u64 + u64::from((truncated as f64) < x);
    (index + step.max(1)).min(INDEX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_is_siphash13_of_the_id_prefix() {
        // Reference: SipHash-1-3 with k0 = k1 = 0 over the 16 bytes 00..0f, computed
        // independently of this module's helpers.
        let salt = Salt([0; 16]);
        let key = u128::from_be_bytes(core::array::from_fn(|i| i as u8));
        let expected =
            SipHasher13::new_with_keys(0, 0).hash(&core::array::from_fn::<u8, 16, _>(|i| i as u8));
        assert_eq!(salt.short_id(key), ShortId(expected));
        // A different salt gives a different short id.
        assert_ne!(Salt([1; 16]).short_id(key), salt.short_id(key));
    }

    #[test]
    fn walk_starts_at_zero_and_strictly_increases() {
        for seed in 0..200u64 {
            let mut w = IndexWalk::new(mix64(seed));
            assert_eq!(w.index(), 0);
            let mut prev = 0;
            for _ in 0..40 {
                let next = w.advance();
                assert!(next > prev);
                prev = next;
            }
        }
    }

    #[test]
    fn walk_density_matches_the_rateless_mapping() {
        // P(item in symbol k) = 1 - ((k + 0.5) / (k + 1.5))^2 ≈ 2 / (k + 2).
        const ITEMS: u64 = 200_000;
        let mut hits = [0u64; 64];
        for seed in 0..ITEMS {
            let mut w = IndexWalk::new(mix64(seed ^ 0xabcdef));
            while w.index() < 64 {
                hits[w.index() as usize] += 1;
                w.advance();
            }
        }
        for (k, &h) in hits.iter().enumerate() {
            let k = k as f64;
            let p = if k == 0.0 {
                1.0
            } else {
                1.0 - ((k + 0.5) / (k + 1.5)).powi(2)
            };
            let expected = ITEMS as f64 * p;
            let sd = expected.sqrt();
            assert!(
                (h as f64 - expected).abs() < 5.0 * sd + 1.0,
                "symbol {k}: {h} hits, expected {expected:.0}"
            );
        }
    }

    #[test]
    fn maps_to_agrees_with_the_walk() {
        let short = 0x0123_4567_89ab_cdef;
        let mut w = IndexWalk::new(short);
        let mut members = vec![0u64];
        while w.index() < 500 {
            members.push(w.advance());
        }
        for k in 0..500 {
            assert_eq!(
                IndexWalk::maps_to(short, k),
                members.contains(&k),
                "index {k}"
            );
        }
    }
}
