//! The in-memory reconciliation index: the set of [`ReconKey`]s of stored items, and for the
//! LMDB store the sequence number each item is stored under.
//!
//! Reconciliation touches every key of the set on every session, so the keys live in RAM and
//! not behind an LMDB cursor. A carrier may hold a million items on a phone, so the index must
//! stay small: 16 bytes per item for the key alone ([`ReconIndex`], used by the simulator's
//! store), 24 with the item's sequence number ([`SeqIndex`], used by the LMDB store, which
//! keys its items by an increasing sequence number so that a commit appends to the right edge
//! of the B-tree instead of dirtying one random page per item). A plain `HashSet<u128>` costs
//! ~37 bytes per item and a `BTreeSet<u128>` ~27-35, either of which doubles the footprint.
//!
//! The layout ([`ReconMap`]) is a small log-structured merge: sorted, exactly-sized vectors
//! of keys and values, plus two small sorted sets of pending changes (entries added since the
//! last merge, and base keys removed since then). When the pending sets grow past a fraction
//! of the base they are folded into a new base in one linear pass, so each insert or remove
//! costs amortised O(log n) and the pending sets never hold more than ~1/16 of the keys.
//! Iteration is in ascending key order, so two stores holding the same set iterate it
//! identically.

use std::collections::{BTreeMap, BTreeSet};

use super::ReconKey;
use crate::envelope::ItemId;

/// Pending changes below this count never trigger a merge: merging a tiny base often is
/// wasted work.
const MIN_PENDING_BEFORE_MERGE: usize = 1024;

/// The pending sets are merged once they exceed `base.len() / PENDING_FRACTION`.
const PENDING_FRACTION: usize = 16;

/// Minimum keys per non-root node of std's B-tree (B - 1 with B = 6).
const BTREE_MIN_KEYS: usize = 5;

/// Heap bytes of a leaf node of std's `BTreeMap<K, V>`, which std does not expose: a parent
/// pointer, 11 keys, 11 values and two `u16`s, padded to the node's alignment. Internal nodes
/// add 12 child pointers. Used to report the pending sets' size honestly.
fn btree_leaf_bytes<K, V>() -> usize {
    let align = std::mem::align_of::<K>()
        .max(std::mem::align_of::<V>())
        .max(8);
    let unpadded = 8 + 11 * std::mem::size_of::<K>() + 11 * std::mem::size_of::<V>() + 4;
    // The keys array starts at the key alignment after the parent pointer.
    let unpadded = unpadded + (align - 8);
    unpadded.div_ceil(align) * align
}

/// Upper estimate of the heap bytes of a `BTreeMap<K, V>` (or set) of `len` entries.
pub(crate) fn btree_heap_estimate<K, V>(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let leaf = btree_leaf_bytes::<K, V>();
    let internal = leaf + 12 * std::mem::size_of::<usize>();
    let leaves = len.div_ceil(BTREE_MIN_KEYS);
    let internals = leaves.div_ceil(BTREE_MIN_KEYS + 1);
    leaves * leaf + internals * internal
}

/// A map from recon keys to small `Copy` values with a small, honestly reported memory
/// footprint: 16 bytes per key plus `size_of::<V>()` (zero for the set, [`ReconIndex`]).
#[derive(Clone, Debug)]
pub struct ReconMap<V: Copy> {
    /// Sorted, deduplicated; capacity equals length after each merge.
    base_keys: Vec<ReconKey>,
    /// `base_values[i]` belongs to `base_keys[i]`. A separate vector rather than tuples:
    /// `(u128, u64)` is padded to 32 bytes by the alignment of `u128`.
    base_values: Vec<V>,
    /// Entries present in the map whose key is not in `base_keys`.
    added: BTreeMap<ReconKey, V>,
    /// Keys of `base_keys` that are no longer in the map (their values are stale).
    removed: BTreeSet<ReconKey>,
    /// Pending changes below this count never trigger a merge ([`MIN_PENDING_BEFORE_MERGE`];
    /// tests lower it to exercise merging with few keys).
    merge_floor: usize,
}

impl<V: Copy> Default for ReconMap<V> {
    fn default() -> Self {
        ReconMap {
            base_keys: Vec::new(),
            base_values: Vec::new(),
            added: BTreeMap::new(),
            removed: BTreeSet::new(),
            merge_floor: MIN_PENDING_BEFORE_MERGE,
        }
    }
}

impl<V: Copy> ReconMap<V> {
    /// Builds the map from entries in any order, in O(n log n): the fast path for loading a
    /// store on open. Where several entries share a key, the first one after sorting by
    /// `(key, value)` is kept and the others are returned, in ascending order.
    pub fn from_entries(mut entries: Vec<(ReconKey, V)>) -> (Self, Vec<(ReconKey, V)>)
    where
        V: Ord,
    {
        entries.sort_unstable();
        let mut base_keys = Vec::with_capacity(entries.len());
        let mut base_values = Vec::with_capacity(entries.len());
        let mut duplicates = Vec::new();
        for (key, value) in entries {
            if base_keys.last() == Some(&key) {
                duplicates.push((key, value));
            } else {
                base_keys.push(key);
                base_values.push(value);
            }
        }
        base_keys.shrink_to_fit();
        base_values.shrink_to_fit();
        let map = ReconMap {
            base_keys,
            base_values,
            ..Self::default()
        };
        (map, duplicates)
    }

    /// Number of keys in the map.
    pub fn len(&self) -> usize {
        self.base_keys.len() - self.removed.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: ReconKey) -> Option<V> {
        match self.base_keys.binary_search(&key) {
            Ok(_) if self.removed.contains(&key) => None,
            Ok(at) => Some(self.base_values[at]),
            Err(_) => self.added.get(&key).copied(),
        }
    }

    pub fn contains(&self, key: ReconKey) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`; returns false if the key was already present (its value is
    /// replaced).
    pub fn insert(&mut self, key: ReconKey, value: V) -> bool {
        let inserted = match self.base_keys.binary_search(&key) {
            Ok(at) => {
                self.base_values[at] = value;
                self.removed.remove(&key)
            }
            Err(_) => self.added.insert(key, value).is_none(),
        };
        self.maybe_merge();
        inserted
    }

    /// Removes `key`; returns its value, or `None` if it was absent.
    pub fn remove(&mut self, key: ReconKey) -> Option<V> {
        let removed = match self.base_keys.binary_search(&key) {
            Ok(at) => self.removed.insert(key).then(|| self.base_values[at]),
            Err(_) => self.added.remove(&key),
        };
        self.maybe_merge();
        removed
    }

    /// All entries, in ascending key order.
    pub fn iter(&self) -> MapIter<'_, V> {
        MapIter {
            base: self
                .base_keys
                .iter()
                .zip(self.base_values.iter())
                .peekable(),
            added: self.added.iter().peekable(),
            removed: self.removed.iter().peekable(),
        }
    }

    /// Heap bytes held, counting allocated capacity rather than length, and an upper
    /// estimate of the B-tree nodes of the pending sets.
    pub fn heap_bytes(&self) -> usize {
        // `Vec<()>` reports a capacity of `usize::MAX`: its elements take no heap.
        let value_bytes = match std::mem::size_of::<V>() {
            0 => 0,
            size => self.base_values.capacity() * size,
        };
        self.base_keys.capacity() * std::mem::size_of::<ReconKey>()
            + value_bytes
            + btree_heap_estimate::<ReconKey, V>(self.added.len())
            + btree_heap_estimate::<ReconKey, ()>(self.removed.len())
    }

    fn maybe_merge(&mut self) {
        let pending = self.added.len() + self.removed.len();
        if pending
            > self
                .merge_floor
                .max(self.base_keys.len() / PENDING_FRACTION)
        {
            self.merge();
        }
    }

    /// Folds the pending sets into new exactly-sized base vectors in one linear pass.
    fn merge(&mut self) {
        let len = self.len();
        let mut keys = Vec::with_capacity(len);
        let mut values = Vec::with_capacity(len);
        for (key, value) in self.iter() {
            keys.push(key);
            values.push(value);
        }
        self.base_keys = keys;
        self.base_values = values;
        self.added.clear();
        self.removed.clear();
    }
}

/// Ascending iterator over a [`ReconMap`]: a merge of the base (minus removed keys) and the
/// added entries, all three sorted, so one pass with no lookups.
#[derive(Debug)]
pub struct MapIter<'a, V> {
    base: std::iter::Peekable<
        std::iter::Zip<std::slice::Iter<'a, ReconKey>, std::slice::Iter<'a, V>>,
    >,
    added: std::iter::Peekable<std::collections::btree_map::Iter<'a, ReconKey, V>>,
    removed: std::iter::Peekable<std::collections::btree_set::Iter<'a, ReconKey>>,
}

impl<V: Copy> Iterator for MapIter<'_, V> {
    type Item = (ReconKey, V);

    fn next(&mut self) -> Option<(ReconKey, V)> {
        loop {
            // `added` and the base are disjoint, so there are never ties between them.
            let take_base = match (self.base.peek(), self.added.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((b, _)), Some((a, _))) => b < a,
            };
            if !take_base {
                return self.added.next().map(|(k, v)| (*k, *v));
            }
            let (&key, &value) = self.base.next()?;
            while self.removed.next_if(|r| **r < key).is_some() {}
            if self.removed.next_if(|r| **r == key).is_some() {
                continue;
            }
            return Some((key, value));
        }
    }
}

/// A set of recon keys with a small, honestly reported memory footprint (16 bytes per key).
#[derive(Clone, Debug, Default)]
pub struct ReconIndex {
    map: ReconMap<()>,
}

impl ReconIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the index from keys in any order (duplicates allowed), in O(n log n) and with
    /// no memory beyond the vector itself: the fast path for loading a store on open.
    pub fn from_keys(keys: Vec<ReconKey>) -> Self {
        let (map, _duplicates) =
            ReconMap::from_entries(keys.into_iter().map(|k| (k, ())).collect());
        ReconIndex { map }
    }

    /// Number of keys in the set.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, key: ReconKey) -> bool {
        self.map.contains(key)
    }

    /// Adds `key`; returns false if it was already present.
    pub fn insert(&mut self, key: ReconKey) -> bool {
        self.map.insert(key, ())
    }

    /// Removes `key`; returns false if it was absent.
    pub fn remove(&mut self, key: ReconKey) -> bool {
        self.map.remove(key).is_some()
    }

    /// All keys, ascending.
    pub fn iter(&self) -> impl Iterator<Item = ReconKey> + '_ {
        self.map.iter().map(|(key, ())| key)
    }

    /// Heap bytes held (see [`ReconMap::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.map.heap_bytes()
    }
}

/// Where the LMDB store keeps each item: its sequence number, found from its id.
///
/// Each recon key maps to the sequence number of one item with that key (its *holder*). Two
/// ids sharing their first 16 bytes take ~2^64 hashing work to produce on purpose and never
/// happen by chance, but the store must stay correct if they do: every item other than its
/// key's holder sits in `shared`, a map by full id that is empty in practice and costs
/// nothing then. A lookup by id is therefore a *candidate*: when the id is not in `shared`
/// the caller must check the id stored with the item, because an absent id may share its
/// key with a stored one.
#[derive(Clone, Debug, Default)]
pub struct SeqIndex {
    holders: ReconMap<u64>,
    /// Items whose recon key is held by another item, by full id.
    shared: BTreeMap<ItemId, u64>,
}

impl SeqIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the index from `(key, seq)` pairs in any order. `id_of` is asked for the full
    /// id of an item only when its key is shared (so, in practice, never).
    pub fn from_entries<E>(
        entries: Vec<(ReconKey, u64)>,
        mut id_of: impl FnMut(u64) -> Result<ItemId, E>,
    ) -> Result<Self, E> {
        let (holders, duplicates) = ReconMap::from_entries(entries);
        let mut shared = BTreeMap::new();
        for (_, seq) in duplicates {
            shared.insert(id_of(seq)?, seq);
        }
        Ok(SeqIndex { holders, shared })
    }

    /// Number of distinct recon keys.
    pub fn key_count(&self) -> usize {
        self.holders.len()
    }

    /// Number of items.
    pub fn item_count(&self) -> usize {
        self.holders.len() + self.shared.len()
    }

    /// The sequence number `id` is stored under, if it is stored; when `verified` is false
    /// the caller must check the id stored at that sequence number (see the type docs).
    pub fn candidate(&self, id: &ItemId) -> Option<Candidate> {
        if let Some(&seq) = self.shared.get(id) {
            return Some(Candidate {
                seq,
                verified: true,
            });
        }
        self.holders.get(super::recon_key(id)).map(|seq| Candidate {
            seq,
            verified: false,
        })
    }

    /// The sequence number of the item holding `key`, and the ids (ascending) and sequence
    /// numbers of the other items sharing it.
    pub fn by_key(&self, key: ReconKey) -> Option<(u64, impl Iterator<Item = (ItemId, u64)> + '_)> {
        let holder = self.holders.get(key)?;
        Some((holder, self.shared_with(key)))
    }

    fn shared_with(&self, key: ReconKey) -> impl Iterator<Item = (ItemId, u64)> + '_ {
        let mut low = [0u8; 32];
        low[..16].copy_from_slice(&key.to_be_bytes());
        let mut high = [0xffu8; 32];
        high[..16].copy_from_slice(&key.to_be_bytes());
        self.shared
            .range(ItemId(low)..=ItemId(high))
            .map(|(id, seq)| (*id, *seq))
    }

    /// Records that `id` is now stored under `seq`. The id must not be stored already.
    pub fn insert(&mut self, id: &ItemId, seq: u64) {
        let key = super::recon_key(id);
        if self.holders.contains(key) {
            self.shared.insert(*id, seq);
        } else {
            self.holders.insert(key, seq);
        }
    }

    /// Records that the item `id`, stored under `seq`, is gone. If it held its key and
    /// others share the key, the one with the smallest id takes over.
    pub fn remove(&mut self, id: &ItemId, seq: u64) {
        if self.shared.remove(id).is_some() {
            return;
        }
        let key = super::recon_key(id);
        if self.holders.get(key) != Some(seq) {
            return;
        }
        let heir = self.shared_with(key).next();
        match heir {
            Some((heir, heir_seq)) => {
                self.shared.remove(&heir);
                self.holders.insert(key, heir_seq);
            }
            None => {
                self.holders.remove(key);
            }
        }
    }

    /// All recon keys, ascending, each once.
    pub fn keys(&self) -> impl Iterator<Item = ReconKey> + '_ {
        self.holders.iter().map(|(key, _)| key)
    }

    /// Heap bytes held: the holders' map plus an estimate of the shared map's nodes.
    pub fn heap_bytes(&self) -> usize {
        self.holders.heap_bytes() + btree_heap_estimate::<ItemId, u64>(self.shared.len())
    }
}

/// A sequence number [`SeqIndex::candidate`] found for an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub seq: u64,
    /// True when the index knows the full id; false when it matched only the recon key.
    pub verified: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A cheap, deterministic spread of keys (splitmix64 in both halves).
    fn key(i: u64) -> ReconKey {
        fn mix(mut z: u64) -> u64 {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        (u128::from(mix(i)) << 64) | u128::from(mix(i ^ 0xdead_beef))
    }

    #[test]
    fn a_million_inserts_stay_small_and_sorted() {
        let mut index = ReconIndex::new();
        let n = 200_000u64;
        for i in 0..n {
            assert!(index.insert(key(i)));
        }
        assert_eq!(index.len(), n as usize);
        // Pending sets are at most 1/16 of the base: ≤ 16 + 42/16 ≈ 18.6 bytes per key.
        let per_key = index.heap_bytes() as f64 / n as f64;
        assert!(per_key <= 19.0, "{per_key} bytes per key");
        let keys: Vec<_> = index.iter().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys.len(), n as usize);
    }

    #[test]
    fn remove_then_reinsert_of_a_base_key() {
        let mut index = ReconIndex::from_keys(vec![3, 1, 2, 2]);
        assert_eq!(index.len(), 3);
        assert!(index.remove(2));
        assert!(!index.remove(2));
        assert!(!index.contains(2));
        assert_eq!(index.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert!(index.insert(2));
        assert!(!index.insert(2));
        assert_eq!(index.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8),
        Remove(u8),
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(
            initial in proptest::collection::vec(any::<u8>(), 0..64),
            merge_floor in 0usize..8,
            ops in proptest::collection::vec(
                prop_oneof![any::<u8>().prop_map(Op::Insert), any::<u8>().prop_map(Op::Remove)],
                0..4000,
            ),
        ) {
            let mut index = ReconIndex::from_keys(initial.iter().map(|&k| u128::from(k)).collect());
            index.map.merge_floor = merge_floor;
            let mut model: BTreeSet<u128> = initial.iter().map(|&k| u128::from(k)).collect();
            for op in ops {
                match op {
                    Op::Insert(k) => prop_assert_eq!(index.insert(k.into()), model.insert(k.into())),
                    Op::Remove(k) => prop_assert_eq!(index.remove(k.into()), model.remove(&u128::from(k))),
                }
                prop_assert_eq!(index.len(), model.len());
            }
            prop_assert_eq!(index.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            for k in 0..=255u8 {
                prop_assert_eq!(index.contains(k.into()), model.contains(&u128::from(k)));
            }
        }
    }
    #[test]
    fn a_seq_index_of_many_items_stays_under_32_bytes_per_item() {
        let mut index = SeqIndex::new();
        let n = 200_000u64;
        for seq in 0..n {
            let k = key(seq).to_be_bytes();
            let mut id = [0u8; 32];
            id[..16].copy_from_slice(&k);
            index.insert(&ItemId(id), seq);
        }
        assert_eq!(index.item_count(), n as usize);
        // 24 bytes per entry in the base, plus at most 1/16 pending at ~57 bytes each.
        let per_item = index.heap_bytes() as f64 / n as f64;
        assert!(per_item <= 28.0, "{per_item} bytes per item");
        let reloaded = SeqIndex::from_entries(index.holders.iter().collect(), |_| Err(())).unwrap();
        assert_eq!(reloaded.heap_bytes(), 24 * n as usize);
    }

    fn id_with(prefix: u8, tail: u8) -> ItemId {
        let mut id = [prefix; 32];
        id[31] = tail;
        ItemId(id)
    }

    #[test]
    fn ids_sharing_a_recon_key_are_each_found_and_the_key_outlives_all_but_one() {
        let (a, b, c) = (id_with(1, 9), id_with(1, 3), id_with(1, 5));
        let key = super::super::recon_key(&a);
        let mut index = SeqIndex::new();
        index.insert(&a, 10);
        index.insert(&b, 11);
        index.insert(&c, 12);
        assert_eq!(index.keys().collect::<Vec<_>>(), vec![key]);
        assert_eq!(index.item_count(), 3);
        // The holder is only a candidate (an absent id with the same key maps there too);
        // ids in the shared map are exact.
        assert_eq!(
            index.candidate(&a),
            Some(Candidate {
                seq: 10,
                verified: false
            })
        );
        assert_eq!(
            index.candidate(&id_with(1, 0)),
            Some(Candidate {
                seq: 10,
                verified: false
            })
        );
        assert_eq!(
            index.candidate(&b),
            Some(Candidate {
                seq: 11,
                verified: true
            })
        );
        assert_eq!(index.candidate(&id_with(2, 0)), None);
        let (holder, others) = index.by_key(key).unwrap();
        assert_eq!(holder, 10);
        assert_eq!(others.collect::<Vec<_>>(), vec![(b, 11), (c, 12)]);

        // Removing the holder hands the key to the smallest remaining id.
        index.remove(&a, 10);
        assert_eq!(
            index.candidate(&b),
            Some(Candidate {
                seq: 11,
                verified: false
            })
        );
        assert_eq!(index.keys().collect::<Vec<_>>(), vec![key]);
        index.remove(&c, 12);
        index.remove(&b, 11);
        assert_eq!(index.keys().count(), 0);
        assert_eq!(index.item_count(), 0);
    }

    #[test]
    fn loading_puts_extra_items_of_a_shared_key_aside() {
        let (a, b) = (id_with(4, 1), id_with(4, 2));
        let key = super::super::recon_key(&a);
        let index = SeqIndex::from_entries(vec![(7, 1), (key, 3), (key, 2)], |seq| {
            Ok::<_, ()>(if seq == 3 { b } else { a })
        })
        .unwrap();
        assert_eq!(index.key_count(), 2);
        assert_eq!(index.item_count(), 3);
        assert_eq!(
            index.candidate(&b),
            Some(Candidate {
                seq: 3,
                verified: true
            })
        );
        assert_eq!(
            index.candidate(&a),
            Some(Candidate {
                seq: 2,
                verified: false
            })
        );
    }

    proptest! {
        #[test]
        fn a_recon_map_behaves_like_a_btreemap(
            merge_floor in 0usize..8,
            ops in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u64>()), 0..4000),
        ) {
            let mut map = ReconMap {
                merge_floor,
                ..ReconMap::default()
            };
            let mut model = BTreeMap::new();
            for (insert, k, v) in ops {
                let k = u128::from(k);
                if insert {
                    prop_assert_eq!(map.insert(k, v), model.insert(k, v).is_none());
                } else {
                    prop_assert_eq!(map.remove(k), model.remove(&k));
                }
                prop_assert_eq!(map.len(), model.len());
            }
            prop_assert_eq!(map.iter().collect::<Vec<_>>(), model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            for k in 0..=255u128 {
                prop_assert_eq!(map.get(k), model.get(&k).copied());
            }
        }
    }
}
