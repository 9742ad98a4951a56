//! Storage of items for the sync engine: the [`Store`] trait, an LMDB implementation
//! ([`LmdbStore`]) for real nodes and an in-memory one ([`MemStore`]) for the simulator.
//!
//! The engine reads through the trait and writes only through [`Store::commit`], one
//! [`WriteBatch`] per engine step, applied atomically (one LMDB write transaction). A batch
//! that returned `Ok` survives any crash; a batch that returned `Err` left nothing behind.
//! A storage error is fatal to the session that hit it (raft-rs: the node stops), never a
//! panic.

use crate::envelope::{ItemId, Priority, ScopeTag, MAX_ITEM_LEN};
use crate::time::Timestamp;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod index;
mod lmdb;
mod mem;

pub use index::ReconIndex;
pub use lmdb::{LmdbConfig, LmdbStore};
pub use mem::MemStore;

/// Longest peer key [`WriteOp::PutPeerState`] accepts (LMDB keys stop at 511 bytes; a peer's
/// stable key is a 32-byte public key or a hash of one).
pub const MAX_PEER_KEY_LEN: usize = 256;

/// Largest opaque peer state [`WriteOp::PutPeerState`] accepts.
pub const MAX_PEER_STATE_LEN: usize = 1024 * 1024;

/// Most encounters a store remembers; recording one more forgets the least recent. A team
/// has tens to hundreds of members: this keeps every one of them with room to spare, while a
/// peer churning through made-up scopes cannot grow the table without bound.
pub const MAX_ENCOUNTERS: usize = 4096;

/// A peer as the encounter table knows it: 8 bytes of a keyed BLAKE3 hash of its stable
/// key, enough to tell a team's members apart without storing who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerTag(pub [u8; 8]);

impl PeerTag {
    pub fn of(peer_key: &[u8]) -> Self {
        let hash = blake3::derive_key("cairn 2026 encounter peer tag", peer_key);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hash[..8]);
        PeerTag(tag)
    }
}

/// When this node last met a peer (this device's clock). How many peers a node met lately is
/// what routing hands last copies by ([`crate::policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encounter {
    pub peer: PeerTag,
    pub at_secs: u64,
}

/// The first 16 bytes of an [`ItemId`]: what the in-memory reconciliation index keeps per
/// item (16 bytes instead of 32), and what a session salts into short ids.
pub type ReconKey = u128;

/// The reconciliation key of an id: its first 16 bytes, big-endian.
pub fn recon_key(id: &ItemId) -> ReconKey {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id.0[..16]);
    u128::from_be_bytes(b)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Envelope,
    /// A tombstone, with the envelope it purges: the store indexes tombstones by target
    /// ([`Store::tombstone_for`]) without parsing item encodings, so the caller, who decoded
    /// the tombstone, says what it targets.
    Tombstone {
        target: ItemId,
    },
}

/// Who put an item into this store first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Written by this device's user: evicted last.
    Local,
    /// Received from a peer: carried for others, or for us.
    Remote,
}

/// Local, mutable facts about a stored item. Never sent as part of the item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemMeta {
    pub kind: ItemKind,
    /// Tombstones are stored with [`Priority::High`].
    pub priority: Priority,
    /// The envelope's scope, or the tombstone's target scope.
    pub scope: ScopeTag,
    /// The item's own expiry (sender's clock): `created_at + lifetime` for envelopes,
    /// `expires_at` for tombstones. Skew tolerance is applied by the engine, not stored.
    pub expires_at_secs: u64,
    /// Sender's creation time (envelopes) or 0 (tombstones): eviction and transfer order.
    pub created_at_secs: u64,
    /// This device's clock when the item was stored.
    pub stored_at: Timestamp,
    /// Length of the canonical encoding in bytes (what the quota counts).
    pub len: u32,
    /// Copies this node may still hand out, its own included (spray-and-wait). 1 = wait
    /// phase: hand it only to its destination.
    pub copies: u8,
    pub origin: Origin,
}

/// An item as stored: its id, local facts and canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    pub id: ItemId,
    pub meta: ItemMeta,
    pub encoded: Vec<u8>,
}

/// Which items a reconciliation round covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconFilter {
    /// Every stored item (both peers carry for others).
    All,
    /// Only items whose scope is in this list (sorted, deduplicated).
    Scopes(Vec<ScopeTag>),
}

/// A transfer that was cut: the contiguous prefix of the item's encoding received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub id: ItemId,
    /// Copies the sender granted with the first chunk.
    pub copies: u8,
    /// Total encoded length announced by the sender.
    pub total_len: u32,
    pub received: Vec<u8>,
}

/// An envelope that reached its destination on this device, kept until the application
/// takes it ([`WriteOp::AckInbox`]), so a crash between delivery and display loses nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    pub id: ItemId,
    pub received_at: Timestamp,
    pub encoded: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub items: u64,
    /// Sum of [`ItemMeta::len`] over stored items (partials and inbox not included).
    pub bytes: u64,
}

/// One mutation. Applied in order within a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert (or replace) an item and all its index entries.
    PutItem(StoredItem),
    /// Remove an item and its index entries; absent ids are ignored.
    RemoveItem(ItemId),
    /// Change the copies an item may still hand out; absent ids are ignored.
    SetCopies(ItemId, u8),
    /// Per-peer sync state, opaque to the store, keyed by the peer's stable key bytes.
    PutPeerState {
        peer: Vec<u8>,
        state: Vec<u8>,
    },
    PutPartial(Partial),
    RemovePartial(ItemId),
    PutInbox(InboxEntry),
    AckInbox(ItemId),
    /// Remember meeting a peer (replaces an older time; beyond [`MAX_ENCOUNTERS`] the least
    /// recent encounter is forgotten).
    RecordEncounter(Encounter),
}

/// Mutations to apply atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, op: WriteOp) {
        self.ops.push(op);
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("LMDB error: {0}")]
    Lmdb(String),
    #[error("the store is full and nothing can be evicted")]
    Full,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The batch broke an invariant of the store (an item whose `meta.len` is not its
    /// encoding's length, an oversized value, ...). The whole batch was refused: a bug in
    /// the caller, never caused by a peer's bytes alone.
    #[error("invalid write refused: {0}")]
    InvalidWrite(String),
}

/// What the sync engine needs from storage. Reads see only committed state.
pub trait Store {
    fn contains(&self, id: &ItemId) -> Result<bool, StoreError>;
    fn meta(&self, id: &ItemId) -> Result<Option<ItemMeta>, StoreError>;
    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError>;
    /// The tombstone item that purges `target`, if this store holds one.
    fn tombstone_for(&self, target: &ItemId) -> Result<Option<ItemId>, StoreError>;
    /// Calls `f` with the recon key of every item the filter admits, in no set order.
    fn for_each_recon_key(
        &self,
        filter: &ReconFilter,
        f: &mut dyn FnMut(ReconKey),
    ) -> Result<(), StoreError>;
    /// The full id of the stored item whose recon key is `key`.
    fn resolve(&self, key: ReconKey) -> Result<Option<ItemId>, StoreError>;
    /// Up to `limit` items whose `expires_at_secs < now_secs`, earliest first.
    fn expired(&self, now_secs: u64, limit: usize) -> Result<Vec<ItemId>, StoreError>;
    /// Up to `limit` items in the order the buffer policy evicts them: others' items before
    /// this device's own; among those, lower priority first, then oldest `created_at` first.
    fn eviction_order(&self, limit: usize) -> Result<Vec<ItemId>, StoreError>;
    fn usage(&self) -> Result<Usage, StoreError>;
    fn peer_state(&self, peer: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn partial(&self, id: &ItemId) -> Result<Option<Partial>, StoreError>;
    /// Up to `limit` ids of partial transfers.
    fn partial_ids(&self, limit: usize) -> Result<Vec<ItemId>, StoreError>;
    /// Up to `limit` inbox entries, oldest first.
    fn inbox(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError>;
    /// The inbox entry of envelope `id`, if it was delivered and not yet acknowledged.
    fn inbox_entry(&self, id: &ItemId) -> Result<Option<InboxEntry>, StoreError>;
    fn in_inbox(&self, id: &ItemId) -> Result<bool, StoreError> {
        Ok(self.inbox_entry(id)?.is_some())
    }
    /// Up to `limit` encounters, most recent first (ties: lower tag first).
    fn encounters(&self, limit: usize) -> Result<Vec<Encounter>, StoreError>;
    /// When this node last met `peer`.
    fn last_encounter(&self, peer: &PeerTag) -> Result<Option<u64>, StoreError>;
    /// Heap bytes held by the in-memory reconciliation index (for the benchmark).
    fn recon_index_bytes(&self) -> usize;
    /// Applies the batch atomically and durably.
    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError>;
}

/// Checks the invariants every store enforces on a write, so that both stores refuse exactly
/// the same batches.
pub(crate) fn validate_op(op: &WriteOp) -> Result<(), StoreError> {
    let invalid = |what: String| Err(StoreError::InvalidWrite(what));
    match op {
        WriteOp::PutItem(item) => {
            if item.encoded.len() > MAX_ITEM_LEN {
                return invalid(format!(
                    "item of {} bytes exceeds {MAX_ITEM_LEN}",
                    item.encoded.len()
                ));
            }
            if item.encoded.len() != item.meta.len as usize {
                return invalid(format!(
                    "item meta says {} bytes but its encoding has {}",
                    item.meta.len,
                    item.encoded.len()
                ));
            }
        }
        WriteOp::PutPeerState { peer, state } => {
            if peer.is_empty() || peer.len() > MAX_PEER_KEY_LEN {
                return invalid(format!(
                    "peer key of {} bytes (must be 1..={MAX_PEER_KEY_LEN})",
                    peer.len()
                ));
            }
            if state.len() > MAX_PEER_STATE_LEN {
                return invalid(format!("peer state of {} bytes", state.len()));
            }
        }
        WriteOp::PutPartial(p) => {
            if p.total_len as usize > MAX_ITEM_LEN || p.received.len() > p.total_len as usize {
                return invalid(format!(
                    "partial of {} of {} bytes",
                    p.received.len(),
                    p.total_len
                ));
            }
        }
        WriteOp::PutInbox(e) => {
            if e.encoded.len() > MAX_ITEM_LEN {
                return invalid(format!("inbox entry of {} bytes", e.encoded.len()));
            }
        }
        WriteOp::RemoveItem(_)
        | WriteOp::SetCopies(..)
        | WriteOp::RemovePartial(_)
        | WriteOp::AckInbox(_)
        | WriteOp::RecordEncounter(_) => {}
    }
    Ok(())
}

/// The eviction-order sort key of an item, shared by both stores so they agree exactly:
/// others' items (rank 0) before ours (rank 1); then Bulk (0) before Normal (1) before High
/// (2); then oldest `created_at`; the id breaks ties.
pub(crate) fn eviction_rank(meta: &ItemMeta) -> (u8, u8, u64) {
    let origin = match meta.origin {
        Origin::Remote => 0,
        Origin::Local => 1,
    };
    let priority = match meta.priority {
        Priority::Bulk => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    };
    (origin, priority, meta.created_at_secs)
}
