//! [`LmdbStore`]: the durable store of a real node, on LMDB through heed.
//!
//! LMDB gives us what a store-and-forward carrier needs: one write transaction per engine
//! step that either lands whole or not at all, across power loss and `SIGKILL` (copy-on-write
//! B-trees, no recovery pass on open), and lock-free reads.
//!
//! ## Layout
//!
//! | database     | key                                         | value                     |
//! |--------------|---------------------------------------------|---------------------------|
//! | `items`      | seq BE                                      | id ‖ meta ‖ encoding      |
//! | `expiry`     | expires_at BE ‖ id                          | seq BE                    |
//! | `scopes`     | scope ‖ created BE ‖ id                     | –                         |
//! | `eviction`   | origin rank ‖ priority rank ‖ created BE ‖ id | –                       |
//! | `tombstones` | target id ‖ tombstone id                    | –                         |
//! | `peers`      | peer key                                    | opaque state              |
//! | `partials`   | id                                          | copies ‖ total LE ‖ bytes |
//! | `inbox`      | id                                          | received_at BE ‖ encoding |
//! | `inbox_order`| received_at BE ‖ id                         | –                         |
//! | `meta`       | `schema`, `usage`, `next_seq`               | version; items ‖ bytes; seq |
//! | `encounters` | peer tag                                    | at_secs LE                |
//!
//! Index keys are big-endian so LMDB's byte order is the order the engine asks for. The usage
//! counters and the sequence counter are rewritten in the same transaction as the items they
//! count, so they are exact after any crash, and reading them is O(1) (cached in memory after
//! each commit).
//!
//! ## Why items are keyed by a sequence number
//!
//! Ids are hashes, so an `items` table keyed by id scatters a batch of a thousand received
//! envelopes over a thousand random leaf pages: each commit rewrote and fsynced ~4 MB, and
//! ingest fell from 49k to 24k envelopes/s between 100k and 1M stored items. Each item is
//! instead stored under the next value of a persisted counter (`next_seq`), appended with
//! `MDB_APPEND` at the right edge of the B-tree, so a commit dirties only the pages it fills.
//! Every other table on the ingest path leads its keys with something time-ordered or of low
//! cardinality (expiry time; scope then creation time; eviction rank then creation time), so
//! a batch of recent envelopes lands on a few pages there too. Only `tombstones` leads with a
//! random id (the target's, which is how it is looked up), and only tombstones write to it.
//!
//! The map from id to sequence number lives in RAM, in the [`SeqIndex`] that also serves
//! reconciliation: 16 bytes of recon key plus 8 of sequence number per item. The index keeps
//! one sequence number per 16-byte recon key; every lookup reads the full id stored at the
//! head of the item's value and compares it, so an absent id that shares a recon key with a
//! stored one is never mistaken for it. Items whose recon key is already held by another item
//! (≈2^64 work to make on purpose) sit in a small exact map by full id inside the index.
//!
//! The index is rebuilt on open from the `expiry` table (every item appears there exactly
//! once, with its id in the key and its sequence number as the value: 48 bytes per item, the
//! smallest table to scan), and changed only after a commit succeeded, so it always mirrors
//! committed state. Within a write transaction, ids the batch has already touched are looked
//! up in a per-batch overlay first.
//!
//! One process writes a store: heed refuses to open one environment twice in a process, and
//! the cached usage and recon index assume no other process writes the same directory.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use heed::types::Bytes;
use heed::{
    CommitOrAbort, Database, Env, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn, WithTls,
};

use super::index::{Candidate, SeqIndex};
use super::{
    eviction_rank, recon_key, validate_op, Encounter, InboxEntry, ItemKind, ItemMeta, Origin,
    Partial, PeerTag, ReconFilter, ReconKey, Store, StoreError, StoredItem, Usage, WriteBatch,
    WriteOp, MAX_ENCOUNTERS,
};
use crate::envelope::{ItemId, Priority, ScopeTag};
use crate::time::Timestamp;

/// Version of the on-disk layout above. Opening a store written with another version is
/// refused rather than misread. Version 1 keyed `items` by id; no store of it was deployed,
/// so there is no migration. `encounters` was added within version 2: it is created when
/// missing and an older build ignores it.
const SCHEMA_VERSION: u32 = 2;

const KEY_SCHEMA: &[u8] = b"schema";
const KEY_USAGE: &[u8] = b"usage";
/// The sequence number the next stored item gets (u64 LE).
const KEY_NEXT_SEQ: &[u8] = b"next_seq";

/// Bytes of the id at the head of every `items` value.
const ID_LEN: usize = 32;

type Db = Database<'static, Bytes, Bytes>;

/// How to open an [`LmdbStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmdbConfig {
    /// Bytes of items (sum of [`ItemMeta::len`]) this node agrees to carry. The store does
    /// not enforce it: the engine evicts ([`Store::eviction_order`]) to stay under it.
    pub quota_bytes: u64,
    /// Size of the memory map at first open. It grows by doubling when a commit needs more.
    pub initial_map_bytes: usize,
    /// The map never grows past this; a commit that would need more fails with
    /// [`StoreError::Full`]. Bounds the disk a runaway caller can fill.
    pub max_map_bytes: usize,
}

impl LmdbConfig {
    /// A configuration for a node carrying `quota_bytes` of items: room for the items, their
    /// index entries and B-tree slack (4×), plus 256 MiB for peers, partials and the inbox.
    pub fn with_quota(quota_bytes: u64) -> Self {
        let max = usize::try_from(quota_bytes)
            .unwrap_or(usize::MAX)
            .saturating_mul(4)
            .saturating_add(256 << 20);
        LmdbConfig {
            quota_bytes,
            initial_map_bytes: 16 << 20,
            max_map_bytes: max,
        }
    }
}

impl Default for LmdbConfig {
    /// 256 MiB of items.
    fn default() -> Self {
        Self::with_quota(256 << 20)
    }
}

/// The durable [`Store`] of a node. See the module docs for the layout.
pub struct LmdbStore {
    env: Env,
    items: Db,
    expiry: Db,
    scopes: Db,
    eviction: Db,
    tombstones: Db,
    peers: Db,
    partials: Db,
    inbox: Db,
    inbox_order: Db,
    meta: Db,
    encounters: Db,
    /// Where each item is stored, by id, and the recon keys (see the module docs).
    seqs: SeqIndex,
    /// Committed usage, mirrored from the `meta` database after each commit.
    usage: Usage,
    /// Committed sequence counter, mirrored from the `meta` database after each commit.
    next_seq: u64,
    config: LmdbConfig,
    path: PathBuf,
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("path", &self.path)
            .field("usage", &self.usage)
            .field("recon_keys", &self.seqs.key_count())
            .field("items", &self.seqs.item_count())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why one attempt at a write transaction failed.
enum AttemptError {
    /// The map is too small for the batch: grow it and try again.
    MapFull,
    /// Another process grew the map: adopt its size and try again.
    MapResized,
    Store(StoreError),
}

impl From<heed::Error> for AttemptError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => AttemptError::MapFull,
            heed::Error::Mdb(MdbError::MapResized) => AttemptError::MapResized,
            other => AttemptError::Store(lmdb_error(other)),
        }
    }
}

impl From<StoreError> for AttemptError {
    fn from(e: StoreError) -> Self {
        AttemptError::Store(e)
    }
}

fn lmdb_error(e: heed::Error) -> StoreError {
    match e {
        heed::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Lmdb(other.to_string()),
    }
}

fn page_size() -> usize {
    // LMDB's map size must be a multiple of the OS page size; 64 KiB covers every platform
    // we run on (4 KiB x86/ARM, 16 KiB Apple silicon, 64 KiB some ARM64 kernels).
    64 * 1024
}

fn round_to_page(bytes: usize) -> usize {
    bytes
        .div_ceil(page_size())
        .saturating_mul(page_size())
        .max(page_size())
}

/// What a committed batch changes in memory: applied only once LMDB said the commit landed.
struct Committed {
    usage: Usage,
    next_seq: u64,
    /// Index changes, in the order the batch made them.
    changes: Vec<SeqChange>,
    /// Where each id the batch touched is now (`None`: removed), so that later ops of the
    /// same batch see earlier ones before the index is updated.
    touched: HashMap<ItemId, Option<u64>>,
}

enum SeqChange {
    Insert(ItemId, u64),
    Remove(ItemId, u64),
}

impl LmdbStore {
    /// Opens (creating if needed) the store in directory `path`, rebuilding the in-memory
    /// recon index. Safe to call after the previous owner was killed mid-commit: LMDB needs
    /// no recovery, and stale reader slots of dead processes are cleared here.
    pub fn open(path: &Path, config: LmdbConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path)?;
        let mut options = EnvOpenOptions::new();
        options
            .map_size(round_to_page(config.initial_map_bytes))
            .max_dbs(16);
        // SAFETY: the memory map is only undefined behaviour if the file is modified behind
        // LMDB's back. Nothing in Cairn writes these files except LMDB, which arbitrates
        // between processes with its lock file, and heed refuses a second `open` of the same
        // environment in this process (`EnvAlreadyOpened`), so we hold its only handle here.
        let env = unsafe { options.open(path) }.map_err(lmdb_error)?;
        // Reader slots of a process that was killed mid-read would pin old pages forever.
        env.clear_stale_readers().map_err(lmdb_error)?;

        let wtxn = env.write_txn().map_err(lmdb_error)?;
        let dbs: [Db; 11] = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let mut create =
                    |name: &str| opener.create_database::<Bytes, Bytes>(wtxn, Some(name));
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit([
                    create("items")?,
                    create("expiry")?,
                    create("scopes")?,
                    create("eviction")?,
                    create("tombstones")?,
                    create("peers")?,
                    create("partials")?,
                    create("inbox")?,
                    create("inbox_order")?,
                    create("meta")?,
                    create("encounters")?,
                ]))
            })
            .map_err(lmdb_error)?
            .commit()
            .ok_or_else(|| StoreError::Lmdb("could not create the databases".into()))?;
        let [items, expiry, scopes, eviction, tombstones, peers, partials, inbox, inbox_order, meta, encounters] =
            dbs;

        let mut store = LmdbStore {
            env,
            items,
            expiry,
            scopes,
            eviction,
            tombstones,
            peers,
            partials,
            inbox,
            inbox_order,
            meta,
            encounters,
            seqs: SeqIndex::new(),
            usage: Usage::default(),
            next_seq: 0,
            config,
            path: path.to_path_buf(),
        };
        store.init_schema()?;
        store.load()?;
        Ok(store)
    }

    /// The configuration the store was opened with (the engine reads the quota from here).
    pub fn config(&self) -> &LmdbConfig {
        &self.config
    }

    pub fn quota_bytes(&self) -> u64 {
        self.config.quota_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current size of the memory map (the most the data file can grow to before the next
    /// resize).
    pub fn map_bytes(&self) -> usize {
        self.env.info().map_size
    }

    /// Size of the data file on disk.
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.env.real_disk_size().map_err(lmdb_error)
    }

    /// Writes the schema version on a new store, refuses a store of another version.
    fn init_schema(&mut self) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn().map_err(lmdb_error)?;
        let version = self
            .meta
            .get(&rtxn, KEY_SCHEMA)
            .map_err(lmdb_error)?
            .map(<[u8]>::to_vec);
        drop(rtxn);
        match version {
            Some(v) => {
                let v = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| StoreError::Corrupt("schema version is not 4 bytes".into()))?;
                if v != SCHEMA_VERSION {
                    return Err(StoreError::Corrupt(format!(
                        "the store in {} has schema version {v} but this build reads only \
                         version {SCHEMA_VERSION}; no migration exists, move the directory \
                         aside to start an empty store",
                        self.path.display()
                    )));
                }
                Ok(())
            }
            None => {
                let mut wtxn = self.env.write_txn().map_err(lmdb_error)?;
                self.meta
                    .put(&mut wtxn, KEY_SCHEMA, &SCHEMA_VERSION.to_le_bytes())
                    .map_err(lmdb_error)?;
                self.meta
                    .put(&mut wtxn, KEY_USAGE, &encode_usage(Usage::default()))
                    .map_err(lmdb_error)?;
                self.meta
                    .put(&mut wtxn, KEY_NEXT_SEQ, &0u64.to_le_bytes())
                    .map_err(lmdb_error)?;
                wtxn.commit().map_err(lmdb_error)
            }
        }
    }

    /// Reads the counters and rebuilds the sequence index from the expiry index.
    fn load(&mut self) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn().map_err(lmdb_error)?;
        let usage = match self.meta.get(&rtxn, KEY_USAGE).map_err(lmdb_error)? {
            Some(bytes) => decode_usage(bytes)?,
            None => return Err(StoreError::Corrupt("usage counters are missing".into())),
        };
        let next_seq = match self.meta.get(&rtxn, KEY_NEXT_SEQ).map_err(lmdb_error)? {
            Some(bytes) => <[u8; 8]>::try_from(bytes)
                .map(u64::from_le_bytes)
                .map_err(|_| StoreError::Corrupt("sequence counter is not 8 bytes".into()))?,
            None => return Err(StoreError::Corrupt("sequence counter is missing".into())),
        };
        // Appending relies on every stored sequence number being below the counter.
        if let Some((last, _)) = self.items.last(&rtxn).map_err(lmdb_error)? {
            if decode_seq(last)? >= next_seq {
                return Err(StoreError::Corrupt(
                    "an item is stored at or past the sequence counter".into(),
                ));
            }
        }
        // Bounded by the expiry table, not by the counter read from disk.
        let capacity = usize::try_from(usage.items).unwrap_or(0).min(1 << 24);
        let mut entries = Vec::with_capacity(capacity);
        for entry in self.expiry.iter(&rtxn).map_err(lmdb_error)? {
            let (key, value) = entry.map_err(lmdb_error)?;
            let id = key
                .get(8..40)
                .filter(|_| key.len() == 40)
                .ok_or_else(|| StoreError::Corrupt("expiry key is not 40 bytes".into()))?;
            entries.push((recon_key(&id_from_slice(id)?), decode_seq(value)?));
        }
        if entries.len() as u64 != usage.items {
            return Err(StoreError::Corrupt(format!(
                "usage counts {} items but the expiry index holds {}",
                usage.items,
                entries.len()
            )));
        }
        // Only items whose recon key another item holds need their full id read here.
        let seqs = SeqIndex::from_entries(entries, |seq| {
            let value = self
                .items
                .get(&rtxn, &seq.to_be_bytes())
                .map_err(lmdb_error)?
                .ok_or_else(|| StoreError::Corrupt("expiry index names a missing item".into()))?;
            split_id(value).map(|(id, _)| id)
        })?;
        drop(rtxn);
        self.seqs = seqs;
        self.usage = usage;
        self.next_seq = next_seq;
        Ok(())
    }

    /// Grows the map by doubling, up to [`LmdbConfig::max_map_bytes`].
    fn grow_map(&mut self) -> Result<(), StoreError> {
        let current = self.env.info().map_size;
        let max = round_to_page(self.config.max_map_bytes);
        if current >= max {
            return Err(StoreError::Full);
        }
        let new_size = round_to_page(current.saturating_mul(2)).min(max);
        tracing::debug!(current, new_size, "growing the LMDB map");
        // SAFETY: LMDB allows changing the map size only while this process has no active
        // transaction on the environment. We hold `&mut self`, so no `&self` read method is
        // running (each one ends its read transaction before returning), the write
        // transaction of the failed attempt has been dropped (aborted) before we got here,
        // and heed's single-open rule means no other handle to this environment exists in
        // this process.
        unsafe { self.env.resize(new_size) }.map_err(lmdb_error)
    }

    /// Adopts a map size another process set.
    fn adopt_map_size(&mut self) -> Result<(), StoreError> {
        // SAFETY: as in `grow_map`: no transaction of this process is active. Size 0 asks
        // LMDB to use the size currently recorded in the environment.
        unsafe { self.env.resize(0) }.map_err(lmdb_error)
    }

    /// One attempt at applying `batch` in a single write transaction.
    fn attempt(&self, batch: &WriteBatch) -> Result<Committed, AttemptError> {
        let mut wtxn = self.env.write_txn()?;
        let mut committed = Committed {
            usage: self.usage,
            next_seq: self.next_seq,
            changes: Vec::new(),
            touched: HashMap::new(),
        };
        let mut buf = Vec::new();
        for op in &batch.ops {
            // Validated here, mid-transaction, on purpose: a refused op drops (aborts) a
            // transaction that already holds the earlier ops, so atomicity is exercised.
            validate_op(op)?;
            self.apply(&mut wtxn, op, &mut committed, &mut buf)?;
        }
        if committed.usage != self.usage {
            self.meta
                .put(&mut wtxn, KEY_USAGE, &encode_usage(committed.usage))?;
        }
        if committed.next_seq != self.next_seq {
            self.meta
                .put(&mut wtxn, KEY_NEXT_SEQ, &committed.next_seq.to_le_bytes())?;
        }
        wtxn.commit()?;
        Ok(committed)
    }

    fn apply(
        &self,
        wtxn: &mut RwTxn<'_>,
        op: &WriteOp,
        c: &mut Committed,
        buf: &mut Vec<u8>,
    ) -> Result<(), AttemptError> {
        match op {
            WriteOp::PutItem(item) => {
                // A replace first drops the old entries; the item gets a new sequence number
                // (so it moves to the right edge, like any new item).
                self.remove_item(wtxn, &item.id, c)?;
                let seq = c.next_seq;
                c.next_seq = seq
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Corrupt("sequence counter overflow".into()))?;
                buf.clear();
                buf.extend_from_slice(&item.id.0);
                encode_meta(&item.meta, buf);
                buf.extend_from_slice(&item.encoded);
                // Every stored sequence number is below the counter (checked on open), so
                // this is the largest key and LMDB can skip the search and fill pages whole.
                self.items
                    .put_with_flags(wtxn, PutFlags::APPEND, &seq.to_be_bytes(), buf)?;
                self.put_index_entries(wtxn, &item.id, &item.meta, seq)?;
                c.usage.items += 1;
                c.usage.bytes += u64::from(item.meta.len);
                c.changes.push(SeqChange::Insert(item.id, seq));
                c.touched.insert(item.id, Some(seq));
            }
            WriteOp::RemoveItem(id) => {
                self.remove_item(wtxn, id, c)?;
            }
            WriteOp::SetCopies(id, copies) => {
                let Some((seq, value)) = self.find(wtxn, Some(&c.touched), id)? else {
                    return Ok(());
                };
                decode_meta(value)?;
                buf.clear();
                buf.extend_from_slice(&id.0);
                buf.extend_from_slice(value);
                buf[ID_LEN + META_COPIES] = *copies;
                self.items.put(wtxn, &seq.to_be_bytes(), buf)?;
            }
            WriteOp::PutPeerState { peer, state } => self.peers.put(wtxn, peer, state)?,
            WriteOp::PutPartial(p) => {
                buf.clear();
                buf.push(p.copies);
                buf.extend_from_slice(&p.total_len.to_le_bytes());
                buf.extend_from_slice(&p.received);
                self.partials.put(wtxn, &p.id.0, buf)?;
            }
            WriteOp::RemovePartial(id) => {
                self.partials.delete(wtxn, &id.0)?;
            }
            WriteOp::PutInbox(entry) => {
                self.ack_inbox(wtxn, &entry.id)?;
                let received = entry.received_at.as_millis().to_be_bytes();
                buf.clear();
                buf.extend_from_slice(&received);
                buf.extend_from_slice(&entry.encoded);
                self.inbox.put(wtxn, &entry.id.0, buf)?;
                self.inbox_order
                    .put(wtxn, &cat(&received, &entry.id.0), &[])?;
            }
            WriteOp::AckInbox(id) => self.ack_inbox(wtxn, id)?,
            WriteOp::RecordEncounter(e) => {
                self.encounters
                    .put(wtxn, &e.peer.0, &e.at_secs.to_le_bytes())?;
                if self.encounters.len(wtxn)? > MAX_ENCOUNTERS as u64 {
                    // Rare (a table this full means churn): one scan finds the least recent,
                    // which is the last in `encounters()` order, as in the memory store.
                    let mut oldest: Option<Encounter> = None;
                    for entry in self.encounters.iter(wtxn)? {
                        let (peer, at) = entry?;
                        let e = decode_encounter(peer, at)?;
                        let key = |e: &Encounter| (std::cmp::Reverse(e.at_secs), e.peer);
                        if oldest.is_none_or(|o| key(&e) > key(&o)) {
                            oldest = Some(e);
                        }
                    }
                    if let Some(o) = oldest {
                        self.encounters.delete(wtxn, &o.peer.0)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn ack_inbox(&self, wtxn: &mut RwTxn<'_>, id: &ItemId) -> Result<(), AttemptError> {
        let Some(value) = self.inbox.get(wtxn, &id.0)? else {
            return Ok(());
        };
        let received = value
            .get(..8)
            .ok_or_else(|| StoreError::Corrupt("inbox entry shorter than 8 bytes".into()))?;
        let order_key = cat(received, &id.0);
        self.inbox_order.delete(wtxn, &order_key)?;
        self.inbox.delete(wtxn, &id.0)?;
        Ok(())
    }

    fn put_index_entries(
        &self,
        wtxn: &mut RwTxn<'_>,
        id: &ItemId,
        meta: &ItemMeta,
        seq: u64,
    ) -> Result<(), AttemptError> {
        self.expiry
            .put(wtxn, &expiry_key(meta, id), &seq.to_be_bytes())?;
        self.scopes.put(wtxn, &scope_key(meta, id), &[])?;
        self.eviction.put(wtxn, &eviction_key(meta, id), &[])?;
        if let ItemKind::Tombstone { target } = meta.kind {
            self.tombstones.put(wtxn, &cat(&target.0, &id.0), &[])?;
        }
        Ok(())
    }

    /// Removes an item and its index entries; returns whether it was there.
    fn remove_item(
        &self,
        wtxn: &mut RwTxn<'_>,
        id: &ItemId,
        c: &mut Committed,
    ) -> Result<bool, AttemptError> {
        let Some((seq, value)) = self.find(wtxn, Some(&c.touched), id)? else {
            return Ok(false);
        };
        let meta = decode_meta(value)?.0;
        self.items.delete(wtxn, &seq.to_be_bytes())?;
        self.expiry.delete(wtxn, &expiry_key(&meta, id))?;
        self.scopes.delete(wtxn, &scope_key(&meta, id))?;
        self.eviction.delete(wtxn, &eviction_key(&meta, id))?;
        if let ItemKind::Tombstone { target } = meta.kind {
            self.tombstones.delete(wtxn, &cat(&target.0, &id.0))?;
        }
        c.usage.items = c.usage.items.checked_sub(1).ok_or_else(|| {
            StoreError::Corrupt("usage counts fewer items than are stored".into())
        })?;
        c.usage.bytes = c
            .usage
            .bytes
            .checked_sub(u64::from(meta.len))
            .ok_or_else(|| {
                StoreError::Corrupt("usage counts fewer bytes than are stored".into())
            })?;
        c.changes.push(SeqChange::Remove(*id, seq));
        c.touched.insert(*id, None);
        Ok(true)
    }

    /// The sequence number and value (after the id) of the item `id`, as `txn` sees it.
    /// `touched` is the running batch's overlay when `txn` is its write transaction: the
    /// in-memory index reflects only committed batches.
    fn find<'t>(
        &self,
        txn: &'t RoTxn<'_>,
        touched: Option<&HashMap<ItemId, Option<u64>>>,
        id: &ItemId,
    ) -> Result<Option<(u64, &'t [u8])>, StoreError> {
        let candidate = match touched.and_then(|t| t.get(id)) {
            Some(Some(seq)) => Candidate {
                seq: *seq,
                verified: true,
            },
            Some(None) => return Ok(None),
            None => match self.seqs.candidate(id) {
                Some(candidate) => candidate,
                None => return Ok(None),
            },
        };
        let value = self
            .items
            .get(txn, &candidate.seq.to_be_bytes())
            .map_err(lmdb_error)?;
        let found = match value {
            Some(value) => {
                let (stored_id, rest) = split_id(value)?;
                (stored_id == *id).then_some((candidate.seq, rest))
            }
            // The key's holder was removed earlier in this batch.
            None => None,
        };
        if found.is_none() && candidate.verified {
            return Err(StoreError::Corrupt(
                "the sequence index names an item that is not stored".into(),
            ));
        }
        Ok(found)
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithTls>, StoreError> {
        self.env.read_txn().map_err(lmdb_error)
    }

    /// Ids from the start of an index whose keys end in a 32-byte id.
    fn ids_from_index(
        &self,
        db: &Db,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<ItemId>, StoreError> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::new();
        for entry in db.iter(&rtxn).map_err(lmdb_error)? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(lmdb_error)?;
            if !keep(key) {
                break;
            }
            out.push(trailing_id(key)?);
        }
        Ok(out)
    }
}

impl Store for LmdbStore {
    fn contains(&self, id: &ItemId) -> Result<bool, StoreError> {
        if self.seqs.candidate(id).is_none() {
            return Ok(false);
        }
        let rtxn = self.read_txn()?;
        Ok(self.find(&rtxn, None, id)?.is_some())
    }

    fn meta(&self, id: &ItemId) -> Result<Option<ItemMeta>, StoreError> {
        let rtxn = self.read_txn()?;
        match self.find(&rtxn, None, id)? {
            Some((_, value)) => Ok(Some(decode_meta(value)?.0)),
            None => Ok(None),
        }
    }

    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        let rtxn = self.read_txn()?;
        match self.find(&rtxn, None, id)? {
            Some((_, value)) => {
                let (meta, encoded) = decode_meta(value)?;
                Ok(Some(StoredItem {
                    id: *id,
                    meta,
                    encoded: encoded.to_vec(),
                }))
            }
            None => Ok(None),
        }
    }

    fn tombstone_for(&self, target: &ItemId) -> Result<Option<ItemId>, StoreError> {
        let rtxn = self.read_txn()?;
        let mut iter = self
            .tombstones
            .prefix_iter(&rtxn, &target.0)
            .map_err(lmdb_error)?;
        match iter.next() {
            Some(entry) => Ok(Some(trailing_id(entry.map_err(lmdb_error)?.0)?)),
            None => Ok(None),
        }
    }

    fn for_each_recon_key(
        &self,
        filter: &ReconFilter,
        f: &mut dyn FnMut(ReconKey),
    ) -> Result<(), StoreError> {
        match filter {
            ReconFilter::All => self.seqs.keys().for_each(f),
            ReconFilter::Scopes(scopes) => {
                let rtxn = self.read_txn()?;
                for scope in scopes {
                    for entry in self
                        .scopes
                        .prefix_iter(&rtxn, &scope.0)
                        .map_err(lmdb_error)?
                    {
                        let (key, _) = entry.map_err(lmdb_error)?;
                        f(recon_key(&trailing_id(key)?));
                    }
                }
            }
        }
        Ok(())
    }

    /// The smallest id with this recon key, as [`super::MemStore`] answers.
    fn resolve(&self, key: ReconKey) -> Result<Option<ItemId>, StoreError> {
        let Some((holder, mut others)) = self.seqs.by_key(key) else {
            return Ok(None);
        };
        let rtxn = self.read_txn()?;
        let value = self
            .items
            .get(&rtxn, &holder.to_be_bytes())
            .map_err(lmdb_error)?
            .ok_or_else(|| {
                StoreError::Corrupt("the sequence index names an item that is not stored".into())
            })?;
        let holder_id = split_id(value)?.0;
        // `others` is ascending, so its first id is its smallest.
        Ok(Some(match others.next() {
            Some((other, _)) => holder_id.min(other),
            None => holder_id,
        }))
    }

    fn expired(&self, now_secs: u64, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        self.ids_from_index(&self.expiry, limit, |key| {
            key.get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .is_some_and(|b| u64::from_be_bytes(b) < now_secs)
        })
    }

    fn eviction_order(&self, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        self.ids_from_index(&self.eviction, limit, |_| true)
    }

    fn usage(&self) -> Result<Usage, StoreError> {
        Ok(self.usage)
    }

    fn peer_state(&self, peer: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if peer.is_empty() || peer.len() > super::MAX_PEER_KEY_LEN {
            return Ok(None);
        }
        let rtxn = self.read_txn()?;
        Ok(self
            .peers
            .get(&rtxn, peer)
            .map_err(lmdb_error)?
            .map(<[u8]>::to_vec))
    }

    fn partial(&self, id: &ItemId) -> Result<Option<Partial>, StoreError> {
        let rtxn = self.read_txn()?;
        match self.partials.get(&rtxn, &id.0).map_err(lmdb_error)? {
            Some(value) => Ok(Some(decode_partial(id, value)?)),
            None => Ok(None),
        }
    }

    fn partial_ids(&self, limit: usize) -> Result<Vec<ItemId>, StoreError> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::new();
        for entry in self.partials.iter(&rtxn).map_err(lmdb_error)?.take(limit) {
            out.push(id_from_slice(entry.map_err(lmdb_error)?.0)?);
        }
        Ok(out)
    }

    fn inbox(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let rtxn = self.read_txn()?;
        let mut out = Vec::new();
        for entry in self
            .inbox_order
            .iter(&rtxn)
            .map_err(lmdb_error)?
            .take(limit)
        {
            let id = trailing_id(entry.map_err(lmdb_error)?.0)?;
            let value = self
                .inbox
                .get(&rtxn, &id.0)
                .map_err(lmdb_error)?
                .ok_or_else(|| StoreError::Corrupt("inbox order names a missing entry".into()))?;
            let (received, encoded) = split_be_u64(value)
                .ok_or_else(|| StoreError::Corrupt("inbox entry shorter than 8 bytes".into()))?;
            out.push(InboxEntry {
                id,
                received_at: Timestamp::from_millis(received),
                encoded: encoded.to_vec(),
            });
        }
        Ok(out)
    }

    fn encounters(&self, limit: usize) -> Result<Vec<Encounter>, StoreError> {
        let rtxn = self.read_txn()?;
        let mut all = Vec::new();
        for entry in self.encounters.iter(&rtxn).map_err(lmdb_error)? {
            let (peer, at) = entry.map_err(lmdb_error)?;
            all.push(decode_encounter(peer, at)?);
        }
        all.sort_by_key(|e| (std::cmp::Reverse(e.at_secs), e.peer));
        all.truncate(limit);
        Ok(all)
    }

    fn last_encounter(&self, peer: &PeerTag) -> Result<Option<u64>, StoreError> {
        let rtxn = self.read_txn()?;
        match self.encounters.get(&rtxn, &peer.0).map_err(lmdb_error)? {
            Some(at) => Ok(Some(decode_encounter(&peer.0, at)?.at_secs)),
            None => Ok(None),
        }
    }

    fn inbox_entry(&self, id: &ItemId) -> Result<Option<InboxEntry>, StoreError> {
        let rtxn = self.read_txn()?;
        let Some(value) = self.inbox.get(&rtxn, &id.0).map_err(lmdb_error)? else {
            return Ok(None);
        };
        let (received, encoded) = split_be_u64(value)
            .ok_or_else(|| StoreError::Corrupt("inbox entry shorter than 8 bytes".into()))?;
        Ok(Some(InboxEntry {
            id: *id,
            received_at: Timestamp::from_millis(received),
            encoded: encoded.to_vec(),
        }))
    }

    fn recon_index_bytes(&self) -> usize {
        self.seqs.heap_bytes()
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        loop {
            match self.attempt(&batch) {
                Ok(committed) => {
                    self.usage = committed.usage;
                    self.next_seq = committed.next_seq;
                    for change in committed.changes {
                        match change {
                            SeqChange::Insert(id, seq) => self.seqs.insert(&id, seq),
                            SeqChange::Remove(id, seq) => self.seqs.remove(&id, seq),
                        }
                    }
                    return Ok(());
                }
                Err(AttemptError::MapFull) => self.grow_map()?,
                Err(AttemptError::MapResized) => self.adopt_map_size()?,
                Err(AttemptError::Store(e)) => return Err(e),
            }
        }
    }
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

fn expiry_key(meta: &ItemMeta, id: &ItemId) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&meta.expires_at_secs.to_be_bytes());
    key[8..].copy_from_slice(&id.0);
    key
}

/// Scope, then creation time: a peer streams envelopes roughly in time order, so within each
/// scope new entries land at the end of the range and a commit dirties a few pages instead
/// of one page per item (an id-ordered key would scatter every insert).
fn scope_key(meta: &ItemMeta, id: &ItemId) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..8].copy_from_slice(&meta.scope.0);
    key[8..16].copy_from_slice(&meta.created_at_secs.to_be_bytes());
    key[16..].copy_from_slice(&id.0);
    key
}

fn eviction_key(meta: &ItemMeta, id: &ItemId) -> [u8; 42] {
    let (origin, priority, created) = eviction_rank(meta);
    let mut key = [0u8; 42];
    key[0] = origin;
    key[1] = priority;
    key[2..10].copy_from_slice(&created.to_be_bytes());
    key[10..].copy_from_slice(&id.0);
    key
}

fn id_from_slice(bytes: &[u8]) -> Result<ItemId, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(ItemId)
        .map_err(|_| StoreError::Corrupt(format!("item id of {} bytes", bytes.len())))
}

/// The id at the end of an index key.
fn trailing_id(key: &[u8]) -> Result<ItemId, StoreError> {
    match key.len().checked_sub(32) {
        Some(start) => id_from_slice(&key[start..]),
        None => Err(StoreError::Corrupt(format!(
            "index key of {} bytes",
            key.len()
        ))),
    }
}

/// Splits an `items` value into the id at its head and the rest.
fn split_id(value: &[u8]) -> Result<(ItemId, &[u8]), StoreError> {
    let (id, rest) = value
        .split_first_chunk::<ID_LEN>()
        .ok_or_else(|| StoreError::Corrupt("item value shorter than its id".into()))?;
    Ok((ItemId(*id), rest))
}

/// A big-endian sequence number (an `items` key or an `expiry` value).
fn decode_seq(bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("sequence number of {} bytes", bytes.len())))
}

fn split_be_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

fn decode_encounter(peer: &[u8], at: &[u8]) -> Result<Encounter, StoreError> {
    let peer: [u8; 8] = peer
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("encounter key of {} bytes", peer.len())))?;
    let at: [u8; 8] = at
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("encounter time of {} bytes", at.len())))?;
    Ok(Encounter {
        peer: PeerTag(peer),
        at_secs: u64::from_le_bytes(at),
    })
}

fn encode_usage(usage: Usage) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&usage.items.to_le_bytes());
    out[8..].copy_from_slice(&usage.bytes.to_le_bytes());
    out
}

fn decode_usage(bytes: &[u8]) -> Result<Usage, StoreError> {
    let bytes = <[u8; 16]>::try_from(bytes)
        .map_err(|_| StoreError::Corrupt("usage counters are not 16 bytes".into()))?;
    let (items, bytes) = bytes.split_at(8);
    let le = |b: &[u8]| {
        <[u8; 8]>::try_from(b)
            .map(u64::from_le_bytes)
            .unwrap_or_default()
    };
    Ok(Usage {
        items: le(items),
        bytes: le(bytes),
    })
}

fn decode_partial(id: &ItemId, value: &[u8]) -> Result<Partial, StoreError> {
    let corrupt = || StoreError::Corrupt("partial record shorter than 5 bytes".into());
    let (&copies, rest) = value.split_first().ok_or_else(corrupt)?;
    let (total, received) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    Ok(Partial {
        id: *id,
        copies,
        total_len: u32::from_le_bytes(*total),
        received: received.to_vec(),
    })
}

// Item meta, a fixed little-endian layout:
//   0 format (1) | 1 kind (0 envelope, 1 tombstone) | 2 priority | 3 origin (0 local,
//   1 remote) | 4 copies | 5..13 scope | 13..21 expires_at | 21..29 created_at |
//   29..37 stored_at ms | 37..41 len | tombstones only: 41..73 target
const META_FORMAT: u8 = 1;
const META_COPIES: usize = 4;
const META_LEN: usize = 41;
const META_TOMBSTONE_LEN: usize = META_LEN + 32;

fn encode_meta(meta: &ItemMeta, out: &mut Vec<u8>) {
    out.push(META_FORMAT);
    out.push(match meta.kind {
        ItemKind::Envelope => 0,
        ItemKind::Tombstone { .. } => 1,
    });
    out.push(meta.priority as u8);
    out.push(match meta.origin {
        Origin::Local => 0,
        Origin::Remote => 1,
    });
    out.push(meta.copies);
    out.extend_from_slice(&meta.scope.0);
    out.extend_from_slice(&meta.expires_at_secs.to_le_bytes());
    out.extend_from_slice(&meta.created_at_secs.to_le_bytes());
    out.extend_from_slice(&meta.stored_at.as_millis().to_le_bytes());
    out.extend_from_slice(&meta.len.to_le_bytes());
    if let ItemKind::Tombstone { target } = meta.kind {
        out.extend_from_slice(&target.0);
    }
}

/// Decodes an `items` value into its meta and the canonical encoding after it.
fn decode_meta(value: &[u8]) -> Result<(ItemMeta, &[u8]), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("item meta: {what}"));
    let head = value.get(..META_LEN).ok_or_else(|| corrupt("too short"))?;
    if head[0] != META_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (kind, body_start) = match head[1] {
        0 => (ItemKind::Envelope, META_LEN),
        1 => {
            let target = value
                .get(META_LEN..META_TOMBSTONE_LEN)
                .ok_or_else(|| corrupt("too short"))?;
            (
                ItemKind::Tombstone {
                    target: id_from_slice(target)?,
                },
                META_TOMBSTONE_LEN,
            )
        }
        _ => return Err(corrupt("unknown kind")),
    };
    let priority = match head[2] {
        0 => Priority::High,
        1 => Priority::Normal,
        2 => Priority::Bulk,
        _ => return Err(corrupt("unknown priority")),
    };
    let origin = match head[3] {
        0 => Origin::Local,
        1 => Origin::Remote,
        _ => return Err(corrupt("unknown origin")),
    };
    let mut scope = [0u8; 8];
    scope.copy_from_slice(&head[5..13]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[37..41]);
    let meta = ItemMeta {
        kind,
        priority,
        scope: ScopeTag(scope),
        expires_at_secs: le64(13),
        created_at_secs: le64(21),
        stored_at: Timestamp::from_millis(le64(29)),
        len: u32::from_le_bytes(len),
        copies: head[META_COPIES],
        origin,
    };
    let encoded = &value[body_start..];
    if encoded.len() != meta.len as usize {
        return Err(corrupt("length does not match the stored encoding"));
    }
    Ok((meta, encoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn open_temp() -> (tempfile::TempDir, LmdbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn conformance_suite() {
        let mut dirs = Vec::new();
        conformance::run_all(|| {
            let (dir, store) = open_temp();
            dirs.push(dir);
            store
        });
    }

    #[test]
    fn meta_round_trips_for_both_kinds() {
        for kind in [
            ItemKind::Envelope,
            ItemKind::Tombstone {
                target: ItemId([7; 32]),
            },
        ] {
            let meta = ItemMeta {
                kind,
                priority: Priority::Bulk,
                scope: ScopeTag([1, 2, 3, 4, 5, 6, 7, 8]),
                expires_at_secs: 0x0102_0304_0506_0708,
                created_at_secs: 42,
                stored_at: Timestamp::from_millis(1_700_000_000_123),
                len: 3,
                copies: 9,
                origin: Origin::Remote,
            };
            let mut buf = Vec::new();
            encode_meta(&meta, &mut buf);
            buf.extend_from_slice(b"abc");
            let (decoded, encoded) = decode_meta(&buf).unwrap();
            assert_eq!(decoded, meta);
            assert_eq!(encoded, b"abc");
            // Every truncation is a typed error, never a panic.
            for cut in 0..buf.len() {
                assert!(decode_meta(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn reopen_keeps_items_usage_and_recon_keys() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<_> = (0..50u8).map(|i| conformance::item(i, &[i; 20])).collect();
        {
            let mut store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
            let mut batch = WriteBatch::new();
            items
                .iter()
                .cloned()
                .for_each(|item| batch.push(WriteOp::PutItem(item)));
            store.commit(batch).unwrap();
        }
        let store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        assert_eq!(
            store.usage().unwrap(),
            Usage {
                items: 50,
                bytes: 50 * 20
            }
        );
        for item in &items {
            assert_eq!(store.get(&item.id).unwrap().as_ref(), Some(item));
        }
        let mut keys = Vec::new();
        store
            .for_each_recon_key(&ReconFilter::All, &mut |k| keys.push(k))
            .unwrap();
        let mut expected: Vec<_> = items.iter().map(|i| recon_key(&i.id)).collect();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    /// Two ids sharing their 16-byte recon key, and a third, absent one sharing it too.
    fn shared_key_items() -> (StoredItem, StoredItem, ItemId) {
        let a = conformance::item(1, b"first");
        let mut b = conformance::item(2, b"second");
        b.id.0[..16].copy_from_slice(&a.id.0[..16]);
        let mut absent = a.id;
        absent.0[31] ^= 0x55;
        (a, b, absent)
    }

    #[test]
    fn ids_sharing_a_recon_key_stay_distinct_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, absent) = shared_key_items();
        let mut batch = WriteBatch::new();
        batch.push(WriteOp::PutItem(a.clone()));
        batch.push(WriteOp::PutItem(b.clone()));
        {
            let mut store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
            store.commit(batch).unwrap();
            assert!(!store.contains(&absent).unwrap());
        }
        let mut store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        assert_eq!(store.get(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(store.get(&b.id).unwrap(), Some(b.clone()));
        // An id the store never saw is not mistaken for one that shares its prefix.
        assert!(!store.contains(&absent).unwrap());
        assert_eq!(store.get(&absent).unwrap(), None);
        assert_eq!(store.meta(&absent).unwrap(), None);
        assert_eq!(
            store.resolve(recon_key(&a.id)).unwrap(),
            Some(a.id.min(b.id))
        );

        // Removing whichever item holds the key leaves the other one reachable.
        store
            .commit(WriteBatch {
                ops: vec![WriteOp::RemoveItem(a.id), WriteOp::SetCopies(b.id, 9)],
            })
            .unwrap();
        assert!(!store.contains(&a.id).unwrap());
        assert_eq!(store.meta(&b.id).unwrap().map(|m| m.copies), Some(9));
        assert_eq!(store.resolve(recon_key(&b.id)).unwrap(), Some(b.id));
        drop(store);
        let store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        assert_eq!(store.meta(&b.id).unwrap().map(|m| m.copies), Some(9));
        assert_eq!(store.usage().unwrap().items, 1);
    }

    #[test]
    fn later_ops_of_a_batch_see_earlier_ones() {
        let (dir, mut store) = open_temp();
        let (a, b, _) = shared_key_items();
        let mut replaced = a.clone();
        replaced.encoded = b"replaced".to_vec();
        replaced.meta.len = 8;
        store
            .commit(WriteBatch {
                ops: vec![
                    WriteOp::PutItem(a.clone()),
                    WriteOp::SetCopies(a.id, 3),
                    WriteOp::PutItem(b.clone()),
                    WriteOp::RemoveItem(a.id),
                    WriteOp::PutItem(replaced.clone()),
                    WriteOp::RemoveItem(b.id),
                ],
            })
            .unwrap();
        assert_eq!(store.get(&replaced.id).unwrap(), Some(replaced.clone()));
        assert!(!store.contains(&b.id).unwrap());
        assert_eq!(store.usage().unwrap(), Usage { items: 1, bytes: 8 });
        drop(store);
        let store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        assert_eq!(store.get(&replaced.id).unwrap(), Some(replaced));
    }

    #[test]
    fn a_store_of_another_schema_version_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
            let mut wtxn = store.env.write_txn().unwrap();
            store
                .meta
                .put(&mut wtxn, KEY_SCHEMA, &1u32.to_le_bytes())
                .unwrap();
            wtxn.commit().unwrap();
        }
        let err = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("schema version 1") && message.contains("reads only version 2"),
            "{message}"
        );
    }

    #[test]
    fn a_tiny_map_grows_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let config = LmdbConfig {
            initial_map_bytes: 64 * 1024,
            ..LmdbConfig::default()
        };
        let mut store = LmdbStore::open(dir.path(), config).unwrap();
        let before = store.map_bytes();
        for round in 0..8u8 {
            let mut batch = WriteBatch::new();
            for i in 0..50u8 {
                let mut item = conformance::item(i, &vec![round; 4000]);
                item.id.0[1] = round;
                batch.push(WriteOp::PutItem(item));
            }
            store.commit(batch).unwrap();
        }
        assert!(store.map_bytes() > before);
        assert_eq!(store.usage().unwrap().items, 400);
    }

    #[test]
    fn a_capped_map_refuses_with_full_and_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let config = LmdbConfig {
            quota_bytes: 1 << 20,
            initial_map_bytes: 256 * 1024,
            max_map_bytes: 1 << 20,
        };
        let mut store = LmdbStore::open(dir.path(), config).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..200u8 {
            batch.push(WriteOp::PutItem(conformance::item(i, &[i; 30_000])));
        }
        assert!(matches!(store.commit(batch), Err(StoreError::Full)));
        assert_eq!(store.usage().unwrap(), Usage::default());
        let small = conformance::item(1, b"still works");
        store
            .commit(WriteBatch {
                ops: vec![WriteOp::PutItem(small.clone())],
            })
            .unwrap();
        assert_eq!(store.get(&small.id).unwrap(), Some(small));
    }
}
