//! The opening message: set size, a digest for the equal-sets fast path, and tug-of-war
//! sketches that estimate the size of the difference.
//!
//! Tug-of-war (Alon, Matias, Szegedy): sketch k is the sum of ±1 over the set, the sign a
//! hash bit of the item. Items in both sets cancel in the difference of two sketches, which
//! is then a sum of d independent ±1: its square has expectation d. Sixteen of them average
//! to an estimate whose error is roughly a χ²₁₆/16 factor (±35 %), in 32 bytes whatever the
//! set sizes. [`first_batch_len`] sizes the first symbol batch with that error in mind.

use super::hash::SessionHashes;
use super::riblt::CodedSymbol;

/// Number of tug-of-war sketches in a [`Summary`].
pub const SKETCHES: usize = 16;

/// What the summarizer sends first. About 46 bytes on the wire for a million items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Number of items in the summarizer's set.
    pub count: u64,
    /// Wrapping sum of a keyed hash of every short id: equal count and digest means equal
    /// sets (but for a 2⁻⁶⁴ chance), which ends the session in one round trip.
    pub digest: u64,
    /// Tug-of-war sketches, each a wrapping sum of ±1 modulo 2¹⁶.
    pub sketches: [u16; SKETCHES],
}

impl Summary {
    pub(crate) fn of(hashes: &SessionHashes, shorts: &[u64]) -> Self {
        let mut digest = 0u64;
        // Count the +1 signs per sketch; the sketch is then plus - minus = 2·plus - n.
        let mut plus = [0u64; SKETCHES];
        for &short in shorts {
            digest = digest.wrapping_add(hashes.digest_term(short));
            let signs = hashes.signs(short);
            for (k, p) in plus.iter_mut().enumerate() {
                *p += u64::from((signs >> k) & 1);
            }
        }
        let n = shorts.len() as u64;
        let sketches = plus.map(|p| (2 * p).wrapping_sub(n) as u16);
        Self {
            count: n,
            digest,
            sketches,
        }
    }

    /// Whether the two sets are (almost surely) equal.
    pub(crate) fn matches(&self, other: &Summary) -> bool {
        self.count == other.count && self.digest == other.digest
    }

    /// Estimated |A Δ B| between the sets behind two summaries, clamped to what the counts
    /// allow: at least |count difference| (and at least 1, as the digests differ), at most
    /// the sum of the counts.
    pub(crate) fn estimate_difference(&self, other: &Summary) -> u64 {
        let sum_of_squares: f64 = self
            .sketches
            .iter()
            .zip(&other.sketches)
            .map(|(a, b)| {
                let d = f64::from(a.wrapping_sub(*b) as i16);
                d * d
            })
            .sum();
        let raw = (sum_of_squares / SKETCHES as f64).round() as u64;
        let low = self.count.abs_diff(other.count).max(1);
        let high = self.count.saturating_add(other.count).max(low);
        raw.clamp(low, high)
    }
}

/// Symbols in the first batch for an estimated difference `d_hat`.
///
/// Rateless IBLT decoding needs about 1.35-1.7 symbols per difference (more, relatively,
/// for small d), and the true d exceeds 1.72·d̂ about 10 % of the time (the χ²₁₆ tail). The
/// constants were calibrated by simulation (the `calibrate_first_batch` test) so that about
/// 90 % of sessions decode from the first batch and ~0.1 % need a third. A miss costs one
/// `More` round trip and a batch twice as long as everything sent so far.
///
/// d̂ = 1 gets 3 symbols: it almost always means d = 1 (every sketch differs by ±1),
/// which symbol 0 alone decodes; the other two cover the rare d = 2 behind the same
/// estimate. One differing item (one new message since the peers last met) is the
/// commonest session of all.
pub(crate) fn first_batch_len(d_hat: u64) -> u64 {
    if d_hat <= 1 {
        return 3;
    }
    let d = d_hat as f64;
    (2.2 * d + 3.0 * d.sqrt() + 1.0).ceil() as u64
}

/// Symbols in a batch that follows `More`, when `sent` symbols have gone out: tripling the
/// stream makes a third batch very rare (see [`first_batch_len`]).
pub(crate) fn next_batch_len(sent: u64) -> u64 {
    sent.saturating_mul(2).max(16)
}

/// Whether the coder should send its whole id list instead of symbols: when the list is
/// no bigger than the first batch would be (one side nearly empty, or a difference of the
/// order of the set). The id list never needs a `More`.
pub(crate) fn prefer_id_list(coder_count: u64, first_batch: u64) -> bool {
    coder_count.saturating_mul(8) <= first_batch.saturating_mul(CodedSymbol::WIRE_LEN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recon::hash::{mix64, Salt};

    fn shorts(range: std::ops::Range<u64>) -> Vec<u64> {
        range.map(|i| mix64(i.wrapping_mul(31) + 17)).collect()
    }

    #[test]
    fn equal_sets_match_and_different_sets_do_not() {
        let h = SessionHashes::new(&Salt([3; 16]));
        let a = Summary::of(&h, &shorts(0..1000));
        let mut reordered = shorts(0..1000);
        reordered.reverse();
        assert!(a.matches(&Summary::of(&h, &reordered)));
        // Same count, one item swapped.
        let mut swapped = shorts(0..999);
        swapped.push(mix64(123_456_789));
        assert!(!a.matches(&Summary::of(&h, &swapped)));
    }

    #[test]
    fn empty_set_has_zero_sketches() {
        let h = SessionHashes::new(&Salt([3; 16]));
        let s = Summary::of(&h, &[]);
        assert_eq!(
            s,
            Summary {
                count: 0,
                digest: 0,
                sketches: [0; SKETCHES]
            }
        );
    }

    #[test]
    fn one_difference_is_estimated_exactly() {
        let h = SessionHashes::new(&Salt([3; 16]));
        let a = Summary::of(&h, &shorts(0..500));
        let b = Summary::of(&h, &shorts(0..501));
        assert_eq!(a.estimate_difference(&b), 1);
    }

    #[test]
    fn estimate_is_unbiased_within_its_spread() {
        // Average the estimate over many salts for d = 200: within a few percent of 200.
        let mut total = 0u64;
        const TRIALS: u64 = 300;
        for t in 0..TRIALS {
            let mut salt = [0u8; 16];
            salt[..8].copy_from_slice(&t.to_le_bytes());
            let h = SessionHashes::new(&Salt(salt));
            let a = Summary::of(&h, &shorts(0..1100));
            let b = Summary::of(&h, &shorts(100..1200));
            total += a.estimate_difference(&b);
        }
        let mean = total as f64 / TRIALS as f64;
        assert!((mean - 200.0).abs() < 200.0 * 0.08, "mean estimate {mean}");
    }
}
