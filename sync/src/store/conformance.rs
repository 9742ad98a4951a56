//! The behaviour every [`Store`] must show, as a suite any implementation can run:
//! `conformance::run_all(|| make_a_fresh_store())` panics on the first deviation.
//!
//! Both [`super::MemStore`] (which the simulator trusts to stand in for a real node) and
//! [`super::LmdbStore`] run it, so a scenario that passes in simulation means the same on a
//! device. Items here carry arbitrary bytes: a store never parses encodings.

// A test suite: a failed expectation is meant to panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use super::{
    recon_key, InboxEntry, ItemKind, ItemMeta, Origin, Partial, ReconFilter, ReconKey, Store,
    StoreError, StoredItem, Usage, WriteBatch, WriteOp,
};
use crate::envelope::{ItemId, Priority, ScopeTag};
use crate::time::Timestamp;

/// A test id: BLAKE3 of the seed, so ids spread over the key space like real ones.
pub fn id(seed: u8) -> ItemId {
    ItemId(*blake3::hash(&[seed]).as_bytes())
}

/// An envelope item with id [`id`]`(seed)`, Normal priority, scope 0, received from a peer,
/// expiring at `1000 + seed`, created at `seed`.
pub fn item(seed: u8, encoded: &[u8]) -> StoredItem {
    StoredItem {
        id: id(seed),
        meta: ItemMeta {
            kind: ItemKind::Envelope,
            priority: Priority::Normal,
            scope: ScopeTag([0; 8]),
            expires_at_secs: 1000 + u64::from(seed),
            created_at_secs: u64::from(seed),
            stored_at: Timestamp::from_secs(u64::from(seed)),
            len: u32::try_from(encoded.len()).unwrap_or(u32::MAX),
            copies: 1,
            origin: Origin::Remote,
        },
        encoded: encoded.to_vec(),
    }
}

fn commit<S: Store>(store: &mut S, ops: Vec<WriteOp>) {
    store.commit(WriteBatch { ops }).expect("commit");
}

fn recon_keys<S: Store>(store: &S, filter: &ReconFilter) -> Vec<ReconKey> {
    let mut keys = Vec::new();
    store
        .for_each_recon_key(filter, &mut |k| keys.push(k))
        .expect("for_each_recon_key");
    keys.sort_unstable();
    keys
}

/// Everything a caller can observe about stored items, in a canonical order. Two stores
/// that went through the same commits must produce equal snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub items: Vec<StoredItem>,
    pub usage: Usage,
    pub recon_keys: Vec<ReconKey>,
    pub expiry_order: Vec<ItemId>,
    pub eviction_order: Vec<ItemId>,
    pub tombstones: Vec<(ItemId, Option<ItemId>)>,
    pub scope_keys: Vec<(ScopeTag, Vec<ReconKey>)>,
    pub peers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub partials: Vec<Partial>,
    pub inbox: Vec<InboxEntry>,
}

/// Takes a [`Snapshot`], probing `ids`, `peers` and `scopes` for the keyed lookups, and checks
/// the store's internal agreement on the way: the recon index, the expiry and eviction
/// indexes and the usage counters all describe exactly the stored items.
pub fn snapshot<S: Store>(
    store: &S,
    ids: &[ItemId],
    peers: &[Vec<u8>],
    scopes: &[ScopeTag],
) -> Snapshot {
    let recon = recon_keys(store, &ReconFilter::All);
    let eviction_order = store.eviction_order(usize::MAX).expect("eviction_order");
    let expiry_order = store.expired(u64::MAX, usize::MAX).expect("expired");
    let mut items: Vec<StoredItem> = eviction_order
        .iter()
        .map(|id| {
            store
                .get(id)
                .expect("get")
                .expect("an indexed item is stored")
        })
        .collect();
    items.sort_by_key(|item| item.id);

    let item_keys: BTreeSet<ReconKey> = items.iter().map(|i| recon_key(&i.id)).collect();
    assert_eq!(
        recon,
        item_keys.iter().copied().collect::<Vec<_>>(),
        "recon index = items"
    );
    for key in &recon {
        let id = store
            .resolve(*key)
            .expect("resolve")
            .expect("every recon key resolves");
        assert_eq!(recon_key(&id), *key);
    }
    let by_expiry: BTreeSet<ItemId> = items
        .iter()
        .filter(|i| i.meta.expires_at_secs < u64::MAX)
        .map(|i| i.id)
        .collect();
    assert_eq!(
        expiry_order.iter().copied().collect::<BTreeSet<_>>(),
        by_expiry
    );
    let usage = store.usage().expect("usage");
    assert_eq!(
        usage,
        Usage {
            items: items.len() as u64,
            bytes: items.iter().map(|i| u64::from(i.meta.len)).sum(),
        },
        "usage counters = sum over items"
    );
    for id in ids {
        assert_eq!(
            store.contains(id).expect("contains"),
            items.iter().any(|i| i.id == *id)
        );
    }

    let partial_ids = store.partial_ids(usize::MAX).expect("partial_ids");
    let partials = partial_ids
        .iter()
        .map(|id| {
            store
                .partial(id)
                .expect("partial")
                .expect("listed partial exists")
        })
        .collect();
    Snapshot {
        items,
        usage,
        recon_keys: recon,
        expiry_order,
        eviction_order,
        tombstones: ids
            .iter()
            .map(|t| (*t, store.tombstone_for(t).expect("tombstone_for")))
            .collect(),
        scope_keys: scopes
            .iter()
            .map(|s| (*s, recon_keys(store, &ReconFilter::Scopes(vec![*s]))))
            .collect(),
        peers: peers
            .iter()
            .map(|p| (p.clone(), store.peer_state(p).expect("peer_state")))
            .collect(),
        partials,
        inbox: store.inbox(usize::MAX).expect("inbox"),
    }
}

/// Runs every check, each on a fresh store from `make`.
pub fn run_all<S: Store>(mut make: impl FnMut() -> S) {
    put_get_remove(&mut make());
    replace_moves_every_index_entry(&mut make());
    expired_is_strict_earliest_first_and_limited(&mut make());
    eviction_order_is_others_then_low_priority_then_oldest(&mut make());
    recon_keys_filter_by_scope_and_resolve(&mut make());
    a_shared_recon_prefix_survives_removing_one_item(&mut make());
    tombstones_are_found_by_target(&mut make());
    set_copies_changes_only_copies(&mut make());
    usage_is_exact_after_puts_replaces_and_removes(&mut make());
    peer_state_round_trips(&mut make());
    partials_round_trip(&mut make());
    inbox_is_oldest_first_until_acked(&mut make());
    a_refused_batch_leaves_nothing(&mut make());
    encounters_are_most_recent_first_and_bounded(&mut make());
}

pub fn put_get_remove<S: Store>(store: &mut S) {
    let a = item(1, b"hello");
    assert_eq!(store.get(&a.id).unwrap(), None);
    commit(store, vec![WriteOp::PutItem(a.clone())]);
    assert!(store.contains(&a.id).unwrap());
    assert_eq!(store.meta(&a.id).unwrap(), Some(a.meta.clone()));
    assert_eq!(store.get(&a.id).unwrap(), Some(a.clone()));
    commit(
        store,
        vec![WriteOp::RemoveItem(a.id), WriteOp::RemoveItem(id(99))],
    );
    assert!(!store.contains(&a.id).unwrap());
    assert_eq!(store.meta(&a.id).unwrap(), None);
    assert_eq!(store.usage().unwrap(), Usage::default());
    assert_eq!(recon_keys(store, &ReconFilter::All), Vec::<ReconKey>::new());
    // An empty batch is a no-op, not an error.
    store.commit(WriteBatch::new()).unwrap();
}

pub fn replace_moves_every_index_entry<S: Store>(store: &mut S) {
    let mut a = item(1, b"first");
    a.meta.scope = ScopeTag([1; 8]);
    a.meta.expires_at_secs = 10;
    commit(store, vec![WriteOp::PutItem(a.clone())]);
    let mut b = a.clone();
    b.meta.scope = ScopeTag([2; 8]);
    b.meta.expires_at_secs = 20;
    b.meta.priority = Priority::High;
    b.encoded = b"second, longer".to_vec();
    b.meta.len = b.encoded.len() as u32;
    commit(store, vec![WriteOp::PutItem(b.clone())]);
    assert_eq!(store.get(&a.id).unwrap(), Some(b.clone()));
    assert_eq!(store.expired(15, 10).unwrap(), vec![]);
    assert_eq!(store.expired(21, 10).unwrap(), vec![a.id]);
    assert_eq!(
        recon_keys(store, &ReconFilter::Scopes(vec![ScopeTag([1; 8])])),
        vec![]
    );
    assert_eq!(
        recon_keys(store, &ReconFilter::Scopes(vec![ScopeTag([2; 8])])),
        vec![recon_key(&a.id)]
    );
    assert_eq!(store.eviction_order(10).unwrap(), vec![a.id]);
    assert_eq!(
        store.usage().unwrap(),
        Usage {
            items: 1,
            bytes: b.encoded.len() as u64
        }
    );
}

pub fn expired_is_strict_earliest_first_and_limited<S: Store>(store: &mut S) {
    let ops = [(1u8, 50u64), (2, 10), (3, 30), (4, 30), (5, 70)]
        .iter()
        .map(|&(seed, expires)| {
            let mut it = item(seed, &[seed]);
            it.meta.expires_at_secs = expires;
            WriteOp::PutItem(it)
        })
        .collect();
    commit(store, ops);
    let mut at_30 = vec![id(3), id(4)];
    at_30.sort();
    let mut expected = vec![id(2)];
    expected.extend(&at_30);
    expected.push(id(1));
    // Strictly before `now`: the item expiring at 70 stays at now = 70.
    assert_eq!(store.expired(70, 100).unwrap(), expected);
    assert_eq!(store.expired(30, 100).unwrap(), vec![id(2)]);
    assert_eq!(store.expired(10, 100).unwrap(), vec![]);
    assert_eq!(store.expired(1000, 2).unwrap(), expected[..2].to_vec());
    assert_eq!(store.expired(1000, 0).unwrap(), vec![]);
}

pub fn eviction_order_is_others_then_low_priority_then_oldest<S: Store>(store: &mut S) {
    let spec = [
        // (seed, origin, priority, created_at)
        (1u8, Origin::Local, Priority::Bulk, 1u64),
        (2, Origin::Remote, Priority::High, 1),
        (3, Origin::Remote, Priority::Bulk, 50),
        (4, Origin::Remote, Priority::Bulk, 5),
        (5, Origin::Remote, Priority::Normal, 2),
        (6, Origin::Local, Priority::High, 0),
        (7, Origin::Local, Priority::Normal, 9),
    ];
    let ops = spec
        .iter()
        .map(|&(seed, origin, priority, created)| {
            let mut it = item(seed, b"x");
            it.meta.origin = origin;
            it.meta.priority = priority;
            it.meta.created_at_secs = created;
            WriteOp::PutItem(it)
        })
        .collect();
    commit(store, ops);
    let expected: Vec<ItemId> = [4, 3, 5, 2, 1, 7, 6].iter().map(|&s| id(s)).collect();
    assert_eq!(store.eviction_order(100).unwrap(), expected);
    assert_eq!(store.eviction_order(3).unwrap(), expected[..3].to_vec());
    // Changing copies does not move an item in eviction order.
    commit(store, vec![WriteOp::SetCopies(id(4), 7)]);
    assert_eq!(store.eviction_order(100).unwrap(), expected);
}

pub fn recon_keys_filter_by_scope_and_resolve<S: Store>(store: &mut S) {
    let mut ops = Vec::new();
    for seed in 0..12u8 {
        let mut it = item(seed, &[seed; 3]);
        it.meta.scope = ScopeTag([seed % 3; 8]);
        ops.push(WriteOp::PutItem(it));
    }
    commit(store, ops);
    let all: Vec<ReconKey> = {
        let mut keys: Vec<_> = (0..12).map(|s| recon_key(&id(s))).collect();
        keys.sort_unstable();
        keys
    };
    assert_eq!(recon_keys(store, &ReconFilter::All), all);
    let scoped = |wanted: &[u8]| {
        let mut keys: Vec<_> = (0..12u8)
            .filter(|s| wanted.contains(&(s % 3)))
            .map(|s| recon_key(&id(s)))
            .collect();
        keys.sort_unstable();
        keys
    };
    assert_eq!(
        recon_keys(store, &ReconFilter::Scopes(vec![ScopeTag([1; 8])])),
        scoped(&[1])
    );
    assert_eq!(
        recon_keys(
            store,
            &ReconFilter::Scopes(vec![ScopeTag([0; 8]), ScopeTag([2; 8])])
        ),
        scoped(&[0, 2])
    );
    assert_eq!(
        recon_keys(store, &ReconFilter::Scopes(vec![ScopeTag([9; 8])])),
        vec![]
    );
    for seed in 0..12 {
        assert_eq!(store.resolve(recon_key(&id(seed))).unwrap(), Some(id(seed)));
    }
    assert_eq!(store.resolve(recon_key(&id(200))).unwrap(), None);
    assert!(store.recon_index_bytes() >= 12 * 16);
}

pub fn a_shared_recon_prefix_survives_removing_one_item<S: Store>(store: &mut S) {
    let a = item(1, b"a");
    let mut b = item(2, b"b");
    b.id.0[..16].copy_from_slice(&a.id.0[..16]);
    commit(
        store,
        vec![WriteOp::PutItem(a.clone()), WriteOp::PutItem(b.clone())],
    );
    assert_eq!(recon_keys(store, &ReconFilter::All), vec![recon_key(&a.id)]);
    commit(store, vec![WriteOp::RemoveItem(a.id)]);
    assert_eq!(recon_keys(store, &ReconFilter::All), vec![recon_key(&b.id)]);
    assert_eq!(store.resolve(recon_key(&b.id)).unwrap(), Some(b.id));
    commit(store, vec![WriteOp::RemoveItem(b.id)]);
    assert_eq!(recon_keys(store, &ReconFilter::All), vec![]);
}

pub fn tombstones_are_found_by_target<S: Store>(store: &mut S) {
    let target = item(1, b"message");
    let tombstone = |seed: u8| {
        let mut t = item(seed, b"tomb");
        t.meta.kind = ItemKind::Tombstone { target: target.id };
        t.meta.priority = Priority::High;
        t
    };
    let (t1, t2) = (tombstone(2), tombstone(3));
    let first = t1.id.min(t2.id);
    commit(
        store,
        vec![
            WriteOp::PutItem(target.clone()),
            WriteOp::PutItem(t1.clone()),
        ],
    );
    assert_eq!(store.tombstone_for(&target.id).unwrap(), Some(t1.id));
    assert_eq!(store.tombstone_for(&t1.id).unwrap(), None);
    assert_eq!(
        store.meta(&t1.id).unwrap().map(|m| m.kind),
        Some(t1.meta.kind)
    );
    commit(store, vec![WriteOp::PutItem(t2.clone())]);
    assert_eq!(store.tombstone_for(&target.id).unwrap(), Some(first));
    commit(store, vec![WriteOp::RemoveItem(first)]);
    assert_eq!(
        store.tombstone_for(&target.id).unwrap(),
        Some(t1.id.max(t2.id))
    );
    commit(
        store,
        vec![WriteOp::RemoveItem(t1.id), WriteOp::RemoveItem(t2.id)],
    );
    assert_eq!(store.tombstone_for(&target.id).unwrap(), None);
    // Replacing a tombstone with an envelope of the same id drops the target entry.
    commit(store, vec![WriteOp::PutItem(t1.clone())]);
    let mut as_envelope = t1.clone();
    as_envelope.meta.kind = ItemKind::Envelope;
    commit(store, vec![WriteOp::PutItem(as_envelope)]);
    assert_eq!(store.tombstone_for(&target.id).unwrap(), None);
}

pub fn set_copies_changes_only_copies<S: Store>(store: &mut S) {
    let a = item(1, b"spray me");
    commit(store, vec![WriteOp::PutItem(a.clone())]);
    let usage = store.usage().unwrap();
    commit(
        store,
        vec![WriteOp::SetCopies(a.id, 8), WriteOp::SetCopies(id(50), 3)],
    );
    let mut expected = a.clone();
    expected.meta.copies = 8;
    assert_eq!(store.get(&a.id).unwrap(), Some(expected));
    assert!(!store.contains(&id(50)).unwrap());
    assert_eq!(store.usage().unwrap(), usage);
}

pub fn usage_is_exact_after_puts_replaces_and_removes<S: Store>(store: &mut S) {
    let mut ops = Vec::new();
    for seed in 0..20u8 {
        ops.push(WriteOp::PutItem(item(
            seed,
            &vec![seed; usize::from(seed) * 3],
        )));
    }
    commit(store, ops);
    assert_eq!(
        store.usage().unwrap(),
        Usage {
            items: 20,
            bytes: (0..20u64).map(|s| s * 3).sum()
        }
    );
    commit(
        store,
        vec![
            WriteOp::PutItem(item(3, &[0; 100])),
            WriteOp::RemoveItem(id(4)),
            WriteOp::RemoveItem(id(4)),
            WriteOp::PutItem(item(4, &[0; 7])),
            WriteOp::RemoveItem(id(5)),
            WriteOp::RemoveItem(id(77)),
        ],
    );
    let ids: Vec<ItemId> = (0..20).map(id).collect();
    let snap = snapshot(store, &ids, &[], &[]);
    assert_eq!(snap.usage.items, 19);
    assert_eq!(
        snap.usage.bytes,
        (0..20u64).map(|s| s * 3).sum::<u64>() - 9 + 100 - 12 + 7 - 15
    );
}

pub fn peer_state_round_trips<S: Store>(store: &mut S) {
    let peer = b"peer-a".to_vec();
    assert_eq!(store.peer_state(&peer).unwrap(), None);
    commit(
        store,
        vec![WriteOp::PutPeerState {
            peer: peer.clone(),
            state: b"one".to_vec(),
        }],
    );
    assert_eq!(store.peer_state(&peer).unwrap(), Some(b"one".to_vec()));
    commit(
        store,
        vec![WriteOp::PutPeerState {
            peer: peer.clone(),
            state: Vec::new(),
        }],
    );
    assert_eq!(store.peer_state(&peer).unwrap(), Some(Vec::new()));
    assert_eq!(store.peer_state(b"peer-b").unwrap(), None);
    assert_eq!(store.peer_state(b"").unwrap(), None);
}

pub fn partials_round_trip<S: Store>(store: &mut S) {
    let partial = |seed: u8| Partial {
        id: id(seed),
        copies: seed,
        total_len: 100,
        received: vec![seed; usize::from(seed)],
    };
    commit(
        store,
        vec![
            WriteOp::PutPartial(partial(1)),
            WriteOp::PutPartial(partial(2)),
            WriteOp::PutPartial(partial(3)),
        ],
    );
    assert_eq!(store.partial(&id(2)).unwrap(), Some(partial(2)));
    let mut all = vec![id(1), id(2), id(3)];
    all.sort();
    assert_eq!(store.partial_ids(10).unwrap(), all);
    assert_eq!(store.partial_ids(2).unwrap().len(), 2);
    let mut grown = partial(2);
    grown.received.extend_from_slice(&[9; 40]);
    commit(
        store,
        vec![
            WriteOp::PutPartial(grown.clone()),
            WriteOp::RemovePartial(id(1)),
        ],
    );
    assert_eq!(store.partial(&id(2)).unwrap(), Some(grown));
    assert_eq!(store.partial(&id(1)).unwrap(), None);
    // Partials are not items: they count for nothing in usage or reconciliation.
    assert_eq!(store.usage().unwrap(), Usage::default());
    assert!(!store.contains(&id(2)).unwrap());
}

pub fn inbox_is_oldest_first_until_acked<S: Store>(store: &mut S) {
    let entry = |seed: u8, at: u64| InboxEntry {
        id: id(seed),
        received_at: Timestamp::from_millis(at),
        encoded: vec![seed; 4],
    };
    commit(
        store,
        vec![
            WriteOp::PutInbox(entry(1, 300)),
            WriteOp::PutInbox(entry(2, 100)),
            WriteOp::PutInbox(entry(3, 200)),
        ],
    );
    assert_eq!(
        store.inbox(10).unwrap(),
        vec![entry(2, 100), entry(3, 200), entry(1, 300)]
    );
    assert_eq!(store.inbox(1).unwrap(), vec![entry(2, 100)]);
    commit(
        store,
        vec![WriteOp::AckInbox(id(2)), WriteOp::AckInbox(id(9))],
    );
    assert_eq!(store.inbox(10).unwrap(), vec![entry(3, 200), entry(1, 300)]);
    assert_eq!(store.inbox_entry(&id(3)).unwrap(), Some(entry(3, 200)));
    assert!(store.in_inbox(&id(1)).unwrap());
    assert_eq!(store.inbox_entry(&id(2)).unwrap(), None);
    // Delivered again later: one entry, at its new place.
    commit(store, vec![WriteOp::PutInbox(entry(3, 400))]);
    assert_eq!(store.inbox(10).unwrap(), vec![entry(1, 300), entry(3, 400)]);
}

pub fn a_refused_batch_leaves_nothing<S: Store>(store: &mut S) {
    let kept = item(1, b"kept");
    commit(store, vec![WriteOp::PutItem(kept.clone())]);
    let before = snapshot(
        store,
        &[kept.id, id(2), id(3)],
        &[b"p".to_vec()],
        &[ScopeTag([0; 8])],
    );

    let mut lying = item(3, b"three bytes?");
    lying.meta.len = 3;
    let batch = WriteBatch {
        ops: vec![
            WriteOp::PutItem(item(2, b"two")),
            WriteOp::RemoveItem(kept.id),
            WriteOp::PutPeerState {
                peer: b"p".to_vec(),
                state: b"s".to_vec(),
            },
            WriteOp::PutInbox(InboxEntry {
                id: id(2),
                received_at: Timestamp::ZERO,
                encoded: Vec::new(),
            }),
            WriteOp::PutItem(lying),
        ],
    };
    assert!(matches!(
        store.commit(batch),
        Err(StoreError::InvalidWrite(_))
    ));
    let after = snapshot(
        store,
        &[kept.id, id(2), id(3)],
        &[b"p".to_vec()],
        &[ScopeTag([0; 8])],
    );
    assert_eq!(after, before, "a refused batch changed the store");

    let empty_peer = WriteBatch {
        ops: vec![
            WriteOp::PutItem(item(2, b"two")),
            WriteOp::PutPeerState {
                peer: Vec::new(),
                state: Vec::new(),
            },
        ],
    };
    assert!(matches!(
        store.commit(empty_peer),
        Err(StoreError::InvalidWrite(_))
    ));
    assert!(!store.contains(&id(2)).unwrap());
    // The store still takes good batches afterwards.
    commit(store, vec![WriteOp::PutItem(item(2, b"two"))]);
    assert!(store.contains(&id(2)).unwrap());
}

/// The table of whom this node met: a later meeting replaces an earlier one, the listing is
/// most recent first, and a flood of new scopes forgets the least recent rather than growing.
pub fn encounters_are_most_recent_first_and_bounded<S: Store>(store: &mut S) {
    use crate::store::{Encounter, PeerTag, MAX_ENCOUNTERS};
    let scope = |n: u32| {
        let mut s = [0u8; 8];
        s[..4].copy_from_slice(&n.to_be_bytes());
        PeerTag(s)
    };
    let met = |n: u32, at_secs: u64| {
        WriteOp::RecordEncounter(Encounter {
            peer: scope(n),
            at_secs,
        })
    };
    assert_eq!(store.last_encounter(&scope(1)).unwrap(), None);
    commit(store, vec![met(1, 100), met(2, 300), met(3, 200)]);
    commit(store, vec![met(1, 400)]);
    let listed: Vec<(PeerTag, u64)> = store
        .encounters(10)
        .unwrap()
        .iter()
        .map(|e| (e.peer, e.at_secs))
        .collect();
    assert_eq!(
        listed,
        vec![(scope(1), 400), (scope(2), 300), (scope(3), 200)]
    );
    assert_eq!(store.encounters(1).unwrap().len(), 1);
    assert_eq!(store.last_encounter(&scope(1)).unwrap(), Some(400));

    // Fill past the bound with newer encounters: the oldest ones go first.
    let ops: Vec<WriteOp> = (10..10 + MAX_ENCOUNTERS as u32)
        .map(|n| met(n, 1_000 + u64::from(n)))
        .collect();
    commit(store, ops);
    let all = store.encounters(usize::MAX).unwrap();
    assert_eq!(all.len(), MAX_ENCOUNTERS);
    assert_eq!(store.last_encounter(&scope(2)).unwrap(), None);
    assert_eq!(store.last_encounter(&scope(10)).unwrap(), Some(1_010));
    assert_eq!(all[0].at_secs, 1_000 + 9 + MAX_ENCOUNTERS as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LmdbConfig, LmdbStore, MemStore};
    use proptest::prelude::*;

    #[test]
    fn mem_store_conforms() {
        run_all(MemStore::new);
    }

    const SEEDS: u8 = 10;

    /// Seeds 0..SEEDS map to ids; seed SEEDS is an id sharing seed 0's recon key.
    fn test_id(seed: u8) -> ItemId {
        if seed == SEEDS {
            let mut collide = id(0);
            collide.0[31] ^= 0xff;
            collide
        } else {
            id(seed)
        }
    }

    fn arb_item() -> impl Strategy<Value = StoredItem> {
        (
            0..=SEEDS,
            proptest::collection::vec(any::<u8>(), 0..40),
            0u8..4,
            0u8..3,
            0u64..20,
            0u64..20,
            any::<bool>(),
            prop_oneof![Just(None), (0..=SEEDS).prop_map(Some)],
        )
            .prop_map(
                |(seed, body, scope, prio, expires, created, local, target)| {
                    let mut it = item(seed, &body);
                    it.id = test_id(seed);
                    it.meta.scope = ScopeTag([scope; 8]);
                    it.meta.priority =
                        [Priority::High, Priority::Normal, Priority::Bulk][usize::from(prio)];
                    it.meta.expires_at_secs = expires;
                    it.meta.created_at_secs = created;
                    it.meta.origin = if local { Origin::Local } else { Origin::Remote };
                    if let Some(t) = target {
                        it.meta.kind = ItemKind::Tombstone { target: test_id(t) };
                    }
                    it
                },
            )
    }

    fn arb_op() -> impl Strategy<Value = WriteOp> {
        let seed = 0..=SEEDS;
        prop_oneof![
            4 => arb_item().prop_map(WriteOp::PutItem),
            2 => seed.clone().prop_map(|s| WriteOp::RemoveItem(test_id(s))),
            1 => (seed.clone(), any::<u8>()).prop_map(|(s, c)| WriteOp::SetCopies(test_id(s), c)),
            1 => (0u8..3, proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(p, state)| WriteOp::PutPeerState { peer: vec![p; 3], state }),
            1 => (seed.clone(), 0u8..20).prop_map(|(s, n)| WriteOp::PutPartial(Partial {
                id: test_id(s), copies: n, total_len: 20, received: vec![n; usize::from(n)],
            })),
            1 => seed.clone().prop_map(|s| WriteOp::RemovePartial(test_id(s))),
            1 => (seed.clone(), 0u64..5).prop_map(|(s, at)| WriteOp::PutInbox(InboxEntry {
                id: test_id(s), received_at: Timestamp::from_millis(at), encoded: vec![s],
            })),
            1 => seed.prop_map(|s| WriteOp::AckInbox(test_id(s))),
            // Refused: the whole batch it is in must leave no trace in either store.
            1 => Just(WriteOp::PutPeerState { peer: Vec::new(), state: Vec::new() }),
        ]
    }

    fn probe(store: &impl Store) -> Snapshot {
        let ids: Vec<ItemId> = (0..=SEEDS).map(test_id).collect();
        let peers: Vec<Vec<u8>> = (0u8..3).map(|p| vec![p; 3]).collect();
        let scopes: Vec<ScopeTag> = (0u8..4).map(|s| ScopeTag([s; 8])).collect();
        snapshot(store, &ids, &peers, &scopes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The simulator's store and the device's store agree on every observable after
        /// any sequence of batches, including across a reopen of the LMDB store.
        #[test]
        fn mem_and_lmdb_stores_agree(
            batches in proptest::collection::vec(proptest::collection::vec(arb_op(), 1..8), 1..10),
            reopen_after in 0usize..10,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut lmdb = Some(LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap());
            let mut mem = MemStore::new();
            for (i, ops) in batches.into_iter().enumerate() {
                let batch = WriteBatch { ops };
                let from_mem = mem.commit(batch.clone()).map_err(|e| e.to_string());
                let store = lmdb.as_mut().unwrap();
                let from_lmdb = store.commit(batch).map_err(|e| e.to_string());
                prop_assert_eq!(from_mem, from_lmdb);
                if i == reopen_after {
                    drop(lmdb.take());
                    lmdb = Some(LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap());
                }
                prop_assert_eq!(probe(&mem), probe(lmdb.as_ref().unwrap()));
            }
        }
    }
}
