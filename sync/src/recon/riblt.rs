//! Rateless invertible Bloom lookup table over short ids (Yang, Gilad, Alizadeh: "Practical
//! Rateless Set Reconciliation", SIGCOMM 2024).
//!
//! The coder streams coded symbols 0, 1, 2, … of its set; the summarizer subtracts its own
//! symbols for the same indices and peels. About 1.35-1.7 symbols per difference suffice
//! whatever the set sizes, and the stream can always be extended, so a low estimate of the
//! difference costs one more round trip instead of a failed session.

use super::hash::{next_index, IndexWalk, SessionHashes};

/// One coded symbol: what a set of items hashes to at one index of the stream.
///
/// 13 bytes on the wire. `count` is kept modulo 256: the receiver subtracts its own count,
/// and a pure symbol (exactly one item left) has a difference of ±1 whatever the set sizes;
/// the checksum, not the count, guards against mistaking a mixture for a pure symbol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodedSymbol {
    /// XOR of the short ids mapped to this symbol.
    pub sum: u64,
    /// XOR of the items' checksums (a keyed hash of each short id).
    pub check: u32,
    /// Number of items mapped to this symbol, modulo 256.
    pub count: u8,
}

impl CodedSymbol {
    /// Bytes of one symbol on the wire.
    pub const WIRE_LEN: usize = 13;

    #[inline]
    fn add(&mut self, short: u64, check: u32) {
        self.sum ^= short;
        self.check ^= check;
        self.count = self.count.wrapping_add(1);
    }

    #[inline]
    fn is_zero(&self) -> bool {
        self.sum == 0 && self.check == 0 && self.count == 0
    }
}

/// Adds every item of `shorts` to the symbols `start..start + out.len()`.
///
/// One pass over the set; each item walks its indices from 0, which costs about 2·ln(end)
/// steps per item. Re-walking the prefix below `start` keeps the per-session state at the
/// short ids alone, and later batches are rare (the first one is sized to suffice).
///
/// A walk step is a chain of dependent floating-point operations (~40 cycles of latency
/// for ~10 instructions), so [`LANES`] items walk side by side: their chains are
/// independent and the CPU overlaps them. This is most of the cost of a session with a
/// million items.
pub(crate) fn encode_range(
    hashes: &SessionHashes,
    shorts: &[u64],
    start: u64,
    out: &mut [CodedSymbol],
) {
    let end = start + out.len() as u64;
    let mut items = shorts.iter();
    let mut short = [0u64; LANES];
    let mut check = [0u32; LANES];
    let mut state = [0u64; LANES];
    // An index ≥ end marks an idle lane.
    let mut index = [u64::MAX; LANES];
    let mut active = 0usize;
    for lane in 0..LANES {
        if let Some(&s) = items.next() {
            (short[lane], check[lane], state[lane], index[lane]) = (s, hashes.check(s), s, 0);
            active += 1;
        }
    }
    while active > 0 {
        for lane in 0..LANES {
            let i = index[lane];
            if i < end {
                if i >= start {
                    out[(i - start) as usize].add(short[lane], check[lane]);
                }
                index[lane] = next_index(&mut state[lane], i);
            } else if i != u64::MAX {
                // This lane's item is done: take the next one, or go idle.
                match items.next() {
                    Some(&s) => {
                        (short[lane], check[lane], state[lane], index[lane]) =
                            (s, hashes.check(s), s, 0);
                    }
                    None => {
                        index[lane] = u64::MAX;
                        active -= 1;
                    }
                }
            }
        }
    }
}

/// Walks interleaved by [`encode_range`].
const LANES: usize = 8;

/// Which side of the difference a recovered short id lies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// In the coder's set only (the symbol count difference was +1).
    Coder,
    /// In the summarizer's set only (the count difference was -1).
    Summarizer,
}

/// The outcome of feeding a batch to the [`Decoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeStatus {
    /// Every symbol received so far is empty: the recovered ids are the whole difference.
    Complete,
    /// More symbols are needed.
    Incomplete,
    /// Nothing is left to peel, every sum and checksum is zero, but some counts are not:
    /// two items of one set share a short id in this session. More symbols cannot help.
    Collision,
}

/// The summarizer's side of the stream: received symbols minus its own, peeled.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Coder's symbols minus ours, with every recovered item already removed.
    diff: Vec<CodedSymbol>,
    recovered: Vec<(u64, Side)>,
}

impl Decoder {
    /// Symbols received so far: the index the next batch must start at.
    pub(crate) fn len(&self) -> u64 {
        self.diff.len() as u64
    }

    pub(crate) fn recovered(&self) -> &[(u64, Side)] {
        &self.recovered
    }

    /// Feeds the coder's symbols for indices `self.len()..self.len() + remote.len()`.
    pub(crate) fn add_batch(
        &mut self,
        hashes: &SessionHashes,
        own_shorts: &[u64],
        remote: &[CodedSymbol],
    ) -> DecodeStatus {
        let start = self.len();
        let mut own = vec![CodedSymbol::default(); remote.len()];
        encode_range(hashes, own_shorts, start, &mut own);
        let end = start + remote.len() as u64;
        for (theirs, ours) in remote.iter().zip(&own) {
            self.diff.push(CodedSymbol {
                sum: theirs.sum ^ ours.sum,
                check: theirs.check ^ ours.check,
                count: theirs.count.wrapping_sub(ours.count),
            });
        }
        // Items recovered from earlier batches were peeled out of earlier symbols only.
        for i in 0..self.recovered.len() {
            let (short, side) = self.recovered[i];
            self.remove(hashes, short, side, start, end, &mut Vec::new());
        }
        let mut queue: Vec<u64> = (0..end).filter(|&i| self.is_pure(hashes, i)).collect();
        while let Some(index) = queue.pop() {
            if !self.is_pure(hashes, index) {
                continue;
            }
            let symbol = self.diff[index as usize];
            let side = if symbol.count == 1 {
                Side::Coder
            } else {
                Side::Summarizer
            };
            self.recovered.push((symbol.sum, side));
            self.remove(hashes, symbol.sum, side, 0, end, &mut queue);
        }
        if self.diff.iter().all(CodedSymbol::is_zero) {
            DecodeStatus::Complete
        } else if self.diff.iter().all(|s| s.sum == 0 && s.check == 0) {
            DecodeStatus::Collision
        } else {
            DecodeStatus::Incomplete
        }
    }

    /// A symbol holding exactly one item: count ±1, checksum of its sum, and the sum's
    /// walk really visits this index (a mixture passes all three with probability ~2⁻³²).
    fn is_pure(&self, hashes: &SessionHashes, index: u64) -> bool {
        let s = &self.diff[index as usize];
        (s.count == 1 || s.count == u8::MAX)
            && s.check == hashes.check(s.sum)
            && IndexWalk::maps_to(s.sum, index)
    }

    /// Removes a recovered item from the symbols in `from..to` it maps to, queueing those
    /// that became pure.
    fn remove(
        &mut self,
        hashes: &SessionHashes,
        short: u64,
        side: Side,
        from: u64,
        to: u64,
        queue: &mut Vec<u64>,
    ) {
        let check = hashes.check(short);
        let mut walk = IndexWalk::new(short);
        let mut index = walk.index();
        while index < from {
            index = walk.advance();
        }
        while index < to {
            let s = &mut self.diff[index as usize];
            s.sum ^= short;
            s.check ^= check;
            s.count = match side {
                Side::Coder => s.count.wrapping_sub(1),
                Side::Summarizer => s.count.wrapping_add(1),
            };
            if (s.count == 1 || s.count == u8::MAX) && s.check == hashes.check(s.sum) {
                queue.push(index);
            }
            index = walk.advance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recon::hash::Salt;
    use std::collections::BTreeSet;

    fn hashes() -> SessionHashes {
        SessionHashes::new(&Salt([7; 16]))
    }

    fn encode(h: &SessionHashes, shorts: &[u64], start: u64, len: usize) -> Vec<CodedSymbol> {
        let mut out = vec![CodedSymbol::default(); len];
        encode_range(h, shorts, start, &mut out);
        out
    }

    #[test]
    fn symbol_zero_holds_every_item() {
        let h = hashes();
        let shorts = [1u64, 2, 4];
        let s = encode(&h, &shorts, 0, 1)[0];
        assert_eq!(s.sum, 7);
        assert_eq!(s.count, 3);
        assert_eq!(s.check, h.check(1) ^ h.check(2) ^ h.check(4));
    }

    /// The straightforward one-item-at-a-time encoder, against which the interleaved one
    /// is checked.
    fn encode_reference(
        h: &SessionHashes,
        shorts: &[u64],
        start: u64,
        len: usize,
    ) -> Vec<CodedSymbol> {
        let mut out = vec![CodedSymbol::default(); len];
        for &x in shorts {
            let mut walk = IndexWalk::new(x);
            let mut i = walk.index();
            while i < start + len as u64 {
                if i >= start {
                    out[(i - start) as usize].add(x, h.check(x));
                }
                i = walk.advance();
            }
        }
        out
    }

    #[test]
    fn interleaved_encoder_matches_the_reference() {
        let h = hashes();
        for n in [0u64, 1, 7, 8, 9, 100, 1001] {
            let shorts: Vec<u64> = (0..n).map(|i| crate::recon::hash::mix64(i + 3)).collect();
            for (start, len) in [(0u64, 1usize), (0, 50), (13, 40), (200, 300)] {
                assert_eq!(
                    encode(&h, &shorts, start, len),
                    encode_reference(&h, &shorts, start, len)
                );
            }
        }
    }

    #[test]
    fn ranges_concatenate_to_the_whole_stream() {
        let h = hashes();
        let shorts: Vec<u64> = (1..500u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let whole = encode(&h, &shorts, 0, 100);
        let mut parts = encode(&h, &shorts, 0, 37);
        parts.extend(encode(&h, &shorts, 37, 63));
        assert_eq!(whole, parts);
    }

    #[test]
    fn one_difference_decodes_from_one_symbol() {
        let h = hashes();
        let coder = [10u64, 20, 30];
        let summarizer = [10u64, 20];
        let mut d = Decoder::default();
        let status = d.add_batch(&h, &summarizer, &encode(&h, &coder, 0, 1));
        assert_eq!(status, DecodeStatus::Complete);
        assert_eq!(d.recovered(), &[(30, Side::Coder)]);
    }

    #[test]
    fn decodes_both_directions_across_batches() {
        let h = hashes();
        let common: Vec<u64> = (0..1000u64)
            .map(|i| crate::recon::hash::mix64(i + 1))
            .collect();
        let mut coder = common.clone();
        let mut summarizer = common;
        let coder_only: BTreeSet<u64> = (0..30u64)
            .map(|i| crate::recon::hash::mix64(i + 5000))
            .collect();
        let summarizer_only: BTreeSet<u64> = (0..20u64)
            .map(|i| crate::recon::hash::mix64(i + 9000))
            .collect();
        coder.extend(&coder_only);
        summarizer.extend(&summarizer_only);

        let mut d = Decoder::default();
        let mut start = 0;
        let mut batch = 8;
        let status = loop {
            let status = d.add_batch(&h, &summarizer, &encode(&h, &coder, start, batch));
            start += batch as u64;
            batch *= 2;
            if status != DecodeStatus::Incomplete {
                break status;
            }
        };
        assert_eq!(status, DecodeStatus::Complete);
        let got_coder: BTreeSet<u64> = d
            .recovered()
            .iter()
            .filter(|r| r.1 == Side::Coder)
            .map(|r| r.0)
            .collect();
        let got_summarizer: BTreeSet<u64> = d
            .recovered()
            .iter()
            .filter(|r| r.1 == Side::Summarizer)
            .map(|r| r.0)
            .collect();
        assert_eq!(got_coder, coder_only);
        assert_eq!(got_summarizer, summarizer_only);
    }

    #[test]
    fn duplicate_short_id_in_one_set_is_reported_not_looped_on() {
        let h = hashes();
        let coder = [1u64, 2];
        let summarizer = [1u64, 2, 99, 99];
        let mut d = Decoder::default();
        let status = d.add_batch(&h, &summarizer, &encode(&h, &coder, 0, 64));
        assert_eq!(status, DecodeStatus::Collision);
    }
}
