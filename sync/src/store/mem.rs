//! [`MemStore`]: the store the simulator runs thousands of nodes on.
//!
//! Same observable behaviour as [`super::LmdbStore`] (the conformance suite runs both), no
//! I/O, and deterministic: only ordered collections, so results never depend on a hasher's
//! random seed and every simulated run is reproducible from its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    eviction_rank, recon_key, validate_op, Encounter, InboxEntry, ItemKind, ItemMeta, Partial,
    PeerTag, ReconFilter, ReconIndex, ReconKey, Store, StoreError, StoredItem, Usage, WriteBatch,
    WriteOp, MAX_ENCOUNTERS,
};
use crate::envelope::{ItemId, ScopeTag};
use crate::time::Timestamp;

/// An in-memory [`Store`]. Commits are atomic (the batch is validated before anything is
/// applied) and, being in memory, last as long as the value.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    items: BTreeMap<ItemId, StoredItem>,
    /// `(expires_at_secs, id)`: [`Store::expired`] walks it from the start.
    expiry: BTreeSet<(u64, ItemId)>,
    /// `(scope, id)`: [`ReconFilter::Scopes`] walks one range per scope.
    scopes: BTreeSet<(ScopeTag, ItemId)>,
    /// `(eviction_rank, id)`: [`Store::eviction_order`] walks it from the start.
    eviction: BTreeSet<((u8, u8, u64), ItemId)>,
    /// `(target, tombstone id)`: several tombstones may target one envelope.
    tombstones: BTreeSet<(ItemId, ItemId)>,
    peers: BTreeMap<Vec<u8>, Vec<u8>>,
    partials: BTreeMap<ItemId, Partial>,
    inbox: BTreeMap<ItemId, InboxEntry>,
    /// `(received_at, id)`: inbox order, oldest first.
    inbox_order: BTreeSet<(Timestamp, ItemId)>,
    recon: ReconIndex,
    usage: Usage,
    encounters: BTreeMap<PeerTag, u64>,
    /// `(Reverse(at_secs), peer)`: most recent first.
    encounter_order: BTreeSet<(Reverse<u64>, PeerTag)>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn put_item(&mut self, item: StoredItem) {
        let id = item.id;
        self.remove_item(&id);
        self.expiry.insert((item.meta.expires_at_secs, id));
        self.scopes.insert((item.meta.scope, id));
        self.eviction.insert((eviction_rank(&item.meta), id));
        if let ItemKind::Tombstone { target } = item.meta.kind {
            self.tombstones.insert((target, id));
        }
        self.usage.items += 1;
        self.usage.bytes += u64::from(item.meta.len);
        self.recon.insert(recon_key(&id));
        self.items.insert(id, item);
    }

    fn remove_item(&mut self, id: &ItemId) {
        let Some(old) = self.items.remove(id) else {
            return;
        };
        self.expiry.remove(&(old.meta.expires_at_secs, *id));
        self.scopes.remove(&(old.meta.scope, *id));
        self.eviction.remove(&(eviction_rank(&old.meta), *id));
        if let ItemKind::Tombstone { target } = old.meta.kind {
            self.tombstones.remove(&(target, *id));
        }
        self.usage.items -= 1;
        self.usage.bytes -= u64::from(old.meta.len);
        // Another item may share the 16-byte prefix; the key stays while one does.
        let key = recon_key(id);
        if self.first_id_with_key(key).is_none() {
            self.recon.remove(key);
        }
    }

    fn first_id_with_key(&self, key: ReconKey) -> Option<ItemId> {
        let mut low = [0u8; 32];
        low[..16].copy_from_slice(&key.to_be_bytes());
        self.items
            .range(ItemId(low)..)
            .next()
            .map(|(id, _)| *id)
            .filter(|id| recon_key(id) == key)
    }

    fn apply(&mut self, op: WriteOp) {
        match op {
            WriteOp::PutItem(item) => self.put_item(item),
            WriteOp::RemoveItem(id) => self.remove_item(&id),
            WriteOp::SetCopies(id, copies) => {
                if let Some(item) = self.items.get_mut(&id) {
                    item.meta.copies = copies;
                }
            }
            WriteOp::PutPeerState { peer, state } => {
                self.peers.insert(peer, state);
            }
            WriteOp::PutPartial(partial) => {
                self.partials.insert(partial.id, partial);
            }
            WriteOp::RemovePartial(id) => {
                self.partials.remove(&id);
            }
            WriteOp::PutInbox(entry) => {
                if let Some(old) = self.inbox.remove(&entry.id) {
                    self.inbox_order.remove(&(old.received_at, old.id));
                }
                self.inbox_order.insert((entry.received_at, entry.id));
                self.inbox.insert(entry.id, entry);
            }
            WriteOp::AckInbox(id) => {
                if let Some(old) = self.inbox.remove(&id) {
                    self.inbox_order.remove(&(old.received_at, id));
                }
            }
            WriteOp::RecordEncounter(e) => {
                if let Some(old) = self.encounters.insert(e.peer, e.at_secs) {
                    self.encounter_order.remove(&(Reverse(old), e.peer));
                }
                self.encounter_order.insert((Reverse(e.at_secs), e.peer));
                if self.encounters.len() > MAX_ENCOUNTERS {
                    if let Some(oldest) = self.encounter_order.pop_last() {
                        self.encounters.remove(&oldest.1);
                    }
                }
            }
        }
    }
}

impl Store for MemStore {
    fn contains(&self, id: &ItemId) -> Result<bool, StoreError> {
        Ok(self.items.contains_key(id))
    }

    fn meta(&self, id: &ItemId) -> Result<Option<ItemMeta>, StoreError> {
        Ok(self.items.get(id).map(|item| item.meta.clone()))
    }

    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        Ok(self.items.get(id).cloned())
    }

    fn tombstone_for(&self, target: &ItemId) -> Result<Option<ItemId>, StoreError> {
        Ok(self
            .tombstones
            .range((*target, ItemId([0; 32]))..)
            .next()
            .filter(|(t, _)| t == target)
            .map(|(_, tombstone)| *tombstone))
    }

    fn for_each_recon_key(
        &self,
        filter: &ReconFilter,
        f: &mut dyn FnMut(ReconKey),
    ) -> Result<(), StoreError> {
        match filter {
            ReconFilter::All => self.recon.iter().for_each(f),
            ReconFilter::Scopes(scopes) => {
                for scope in scopes {
                    self.scopes
                        .range((*scope, ItemId([0; 32]))..=(*scope, ItemId([0xff; 32])))
                        .for_each(|(_, id)| f(recon_key(id)));
                }
            }
        }
        Ok(())
    }

    fn resolve(&self, key: ReconKey) -> Result<Option<ItemId>, StoreError> {
        Ok(self.first_id_with_key(key))
    }

    fn expired(&self, now_secs: u64, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        Ok(self
            .expiry
            .iter()
            .take_while(|(expires_at, _)| *expires_at < now_secs)
            .take(limit)
            .map(|(_, id)| *id)
            .collect())
    }

    fn eviction_order(&self, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        Ok(self
            .eviction
            .iter()
            .take(limit)
            .map(|(_, id)| *id)
            .collect())
    }

    fn usage(&self) -> Result<Usage, StoreError> {
        Ok(self.usage)
    }

    fn peer_state(&self, peer: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.peers.get(peer).cloned())
    }

    fn partial(&self, id: &ItemId) -> Result<Option<Partial>, StoreError> {
        Ok(self.partials.get(id).cloned())
    }

    fn partial_ids(&self, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        Ok(self.partials.keys().take(limit).copied().collect())
    }

    fn inbox(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        Ok(self
            .inbox_order
            .iter()
            .take(limit)
            .filter_map(|(_, id)| self.inbox.get(id).cloned())
            .collect())
    }

    fn encounters(&self, limit: usize) -> Result<Vec<Encounter>, StoreError> {
        Ok(self
            .encounter_order
            .iter()
            .take(limit)
            .map(|&(Reverse(at_secs), peer)| Encounter { peer, at_secs })
            .collect())
    }

    fn last_encounter(&self, peer: &PeerTag) -> Result<Option<u64>, StoreError> {
        Ok(self.encounters.get(peer).copied())
    }

    fn inbox_entry(&self, id: &ItemId) -> Result<Option<InboxEntry>, StoreError> {
        Ok(self.inbox.get(id).cloned())
    }

    fn recon_index_bytes(&self) -> usize {
        self.recon.heap_bytes()
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        // Validate everything first: applying cannot fail, so the batch is all-or-nothing.
        batch.ops.iter().try_for_each(validate_op)?;
        for op in batch.ops {
            self.apply(op);
        }
        Ok(())
    }
}
