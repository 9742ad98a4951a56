//! The sync session: what two peers say to each other over one secured, ordered link.
//!
//! A pure state machine in the manner of `quinn-proto`: frames and `now` go in through
//! [`SyncSession::handle_frame`], frames come out of [`SyncSession::poll_transmit`], events out
//! of [`SyncSession::poll_event`]. It never reads a clock, spawns or touches a socket; the
//! only side effect is the store passed into each call, written through exactly one
//! [`WriteBatch`] per call, and events become visible only after that commit succeeded.
//!
//! ## A meeting
//!
//! 1. Both sides send [`Hello`]: protocol version, whether they carry for others, the scopes
//!    they want, how many peers they met lately (routing hands copies to busier carriers).
//!    The initiator's hello also opens round 0 (a salt and a ~50-byte summary).
//! 2. Reconciliation ([`crate::recon`]) over the items both sides want: one round trip when
//!    nothing differs, a few hundred bytes of coded symbols when a hundred items differ.
//! 3. Transfer: the side that decoded the difference asks for what it lacks (`Want`) and
//!    pushes what the other lacks; the other side answers the want. Tombstones first, then
//!    envelopes by priority; every complete item is committed as it arrives, and an item cut
//!    mid-way is kept as a partial and resumed at the next meeting ([`Message::Resume`]).
//! 4. Both say `Done`; the round is over. A later change to either store (a new message, an
//!    item from another peer) starts another round while the link lasts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{BoundedBytes, BoundedVec, CodecError};
use crate::compact::Compactor;
use crate::envelope::{Item, ItemError, ItemId, ReceiptProof, ScopeTag, Tombstone, MAX_ITEM_LEN};
use crate::policy::{self, NodePolicy, PeerWants, Sociability, ACTIVITY_WINDOW_SECS};
use crate::recon::{ReconError, ReconMessage, Reconciler, Salt, ShortId};
use crate::store::{
    recon_key, Encounter, InboxEntry, ItemKind, ItemMeta, Origin, Partial, PeerTag, ReconFilter,
    ReconKey, Store, StoreError, StoredItem, WriteBatch, WriteOp,
};
use crate::time::Timestamp;
use crate::wire::{
    self, Chunk, CloseReason, Hello, Message, Open, CHUNK_OVERHEAD_MAX, MAX_MTU, MIN_MTU,
    PROTOCOL_VERSION,
};

/// Transfers a receiver keeps open at once; a peer opening more is misbehaving.
const MAX_INCOMING: usize = 256;

/// Partial transfers considered for resumption in one round.
const MAX_RESUMABLE: usize = 256;

/// Most recent encounters looked at when counting a node's [`Sociability`]; a node meeting
/// more people than this in an hour is simply very busy.
const MAX_ACTIVITY: usize = 1024;

/// Items waiting to be pushed outside a round; more are left to reconciliation.
const MAX_PUSH_QUEUE: usize = 4096;

/// Items handed over with custody and not yet confirmed, per session; the peer cannot make
/// this grow, since only our own sends add to it.
const MAX_AWAITING_CUSTODY: usize = 4096;

/// Items a session remembers having sent (16 bytes each); past this, a refused item may be
/// offered again.
const MAX_REMEMBERED_SENDS: usize = 1 << 16;

/// Eviction candidates fetched per attempt to make room.
const EVICTION_BATCH: usize = 64;

/// Session settings. `policy` is the node's; `mtu` is the link's.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest frame this session sends or accepts, [`MIN_MTU`]..=[`MAX_MTU`].
    pub mtu: usize,
    pub policy: NodePolicy,
    /// A round in progress with nothing heard from the peer for this long is abandoned.
    /// Links that are slow by nature (LoRa at SF12) need minutes.
    pub stall_timeout_ms: u64,
    /// Rebuilds items from compact forms and makes them ([`crate::compact`]); pushed items
    /// go whole without one.
    pub compactor: Option<Arc<dyn Compactor>>,
}

impl SessionConfig {
    pub fn new(mtu: usize, policy: NodePolicy) -> Self {
        SessionConfig {
            mtu,
            policy,
            stall_timeout_ms: 60_000,
            compactor: None,
        }
    }
}

/// Which end of the link this is. Exactly one side is the initiator; it opens every round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// What happened, reported after the store committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// An item from this peer is now in the store.
    ItemStored {
        id: ItemId,
        kind: ItemKind,
        bytes: usize,
    },
    /// An envelope for one of our scopes arrived; it is in the store's inbox until the
    /// application takes it and calls [`acknowledge`], which publishes the receipt.
    Delivered { id: ItemId },
    /// The tombstone of one of our own envelopes arrived, and its proof opens the envelope's
    /// lock: its recipient has it.
    ReceiptForOwn { id: ItemId },
    /// An item was refused (expired, from the future, tombstoned, or no room).
    ItemRefused { id: ItemId, reason: RefusedBecause },
    /// The last chunk of an item left for the peer.
    ItemSent { id: ItemId, bytes: usize },
    /// The peer confirmed it stored an item we gave copies of (a carrier now holds it).
    PeerStored { id: ItemId },
    /// The peer took custody of an item we handed over; our copy is gone.
    HandedOver { id: ItemId },
    /// Both sides are done with a reconciliation round.
    RoundComplete {
        /// Reconciliation bytes this side sent in the round (summary, symbols, wants).
        recon_bytes_sent: u64,
        items_sent: u32,
        items_received: u32,
    },
    /// The peer closed the session.
    PeerClosed { reason: CloseReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedBecause {
    Expired,
    FromTheFuture,
    Tombstoned,
    NoRoom,
    /// A tombstone whose proof does not open its envelope's lock: someone tried to make the
    /// network drop a message they cannot read.
    ForgedReceipt,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("frame or message does not decode: {0}")]
    Codec(#[from] CodecError),
    #[error("peer sent an invalid item: {0}")]
    Item(#[from] ItemError),
    #[error("reconciliation failed: {0}")]
    Recon(#[from] ReconError),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("peer speaks sync protocol version {0}, we speak {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("peer broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("peer was silent for too long")]
    TimedOut,
    #[error("the session is closed")]
    Closed,
    #[error("MTU {0} outside the supported {MIN_MTU}..={MAX_MTU}")]
    BadMtu(usize),
    #[error("no such envelope in the inbox")]
    NotInInbox,
    #[error("the receipt proof does not open the envelope's lock")]
    WrongProof,
}

/// Stores a local envelope (this device's user wrote it). Returns its id; storing the same
/// envelope twice is harmless.
pub fn originate<S: Store>(
    store: &mut S,
    policy: &NodePolicy,
    envelope: &crate::envelope::Envelope,
    now: Timestamp,
) -> Result<ItemId, SyncError> {
    let ids = originate_all(store, policy, std::slice::from_ref(envelope), now)?;
    ids.into_iter()
        .next()
        .ok_or(SyncError::Store(StoreError::Full))
}

/// Stores several local envelopes in one write transaction (one fsync for a batch the user
/// queued while offline, instead of one each). All or nothing: if the quota cannot take
/// them all, none is stored.
pub fn originate_all<S: Store>(
    store: &mut S,
    policy: &NodePolicy,
    envelopes: &[crate::envelope::Envelope],
    now: Timestamp,
) -> Result<Vec<ItemId>, SyncError> {
    let mut step = Step::default();
    let mut ids = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let item = Item::Envelope(envelope.clone());
        let encoded = item.encode();
        let id = item.id();
        ids.push(id);
        if step.contains(store, &id)? {
            continue;
        }
        let meta = ItemMeta {
            kind: ItemKind::Envelope,
            priority: item.priority(),
            scope: item.scope(),
            expires_at_secs: item.expires_at_secs(),
            created_at_secs: item.created_at_secs(),
            stored_at: now,
            len: encoded.len() as u32,
            copies: policy::accepted_copies(policy, envelope.copy_budget, Origin::Local),
            origin: Origin::Local,
        };
        if !step.make_room(store, policy, now, meta.len as u64, true)? {
            return Err(SyncError::Store(StoreError::Full));
        }
        step.put(StoredItem { id, meta, encoded });
    }
    if !step.batch.is_empty() {
        store.commit(step.batch)?;
    }
    Ok(ids)
}

/// Removes items past their expiry (plus the skew tolerance). One commit; returns how many.
/// The application has taken delivered envelope `id` out of the inbox (and stored it where
/// it keeps messages): drop it from the inbox and publish its receipt, a tombstone carrying
/// `proof`, so carriers purge their copies and the sender learns it arrived. Only whoever
/// opened the envelope can compute the proof; a wrong one is refused here rather than sent
/// out to be refused by everyone. Tell open sessions afterwards (`notify_store_changed`).
pub fn acknowledge<S: Store>(
    store: &mut S,
    id: &ItemId,
    proof: ReceiptProof,
    now: Timestamp,
) -> Result<ItemId, SyncError> {
    acknowledge_all(store, &[(*id, proof)], now)?
        .into_iter()
        .next()
        .unwrap_or(Err(SyncError::NotInInbox))
}

/// [`acknowledge`] for many envelopes in one write transaction. Each gets its own result (a
/// wrong proof refuses that one, not the batch); the outer error is a storage failure, and
/// then nothing was written.
#[allow(clippy::type_complexity)]
pub fn acknowledge_all<S: Store>(
    store: &mut S,
    acks: &[(ItemId, ReceiptProof)],
    now: Timestamp,
) -> Result<Vec<Result<ItemId, SyncError>>, SyncError> {
    let mut batch = WriteBatch::new();
    let mut results = Vec::with_capacity(acks.len());
    for (id, proof) in acks {
        let Some(entry) = store.inbox_entry(id)? else {
            results.push(Err(SyncError::NotInInbox));
            continue;
        };
        let Ok(Item::Envelope(envelope)) = Item::decode(&entry.encoded) else {
            results.push(Err(SyncError::NotInInbox));
            continue;
        };
        let tombstone = Tombstone::for_envelope(&envelope, *proof);
        if !tombstone.opens(&envelope) {
            results.push(Err(SyncError::WrongProof));
            continue;
        }
        let item = Item::Tombstone(tombstone);
        let encoded = item.encode();
        let tomb_id = item.id();
        batch.push(WriteOp::AckInbox(*id));
        if !store.contains(&tomb_id)? {
            batch.push(WriteOp::PutItem(StoredItem {
                id: tomb_id,
                meta: meta_for(&item, now, encoded.len(), 1, Origin::Local),
                encoded,
            }));
        }
        results.push(Ok(tomb_id));
    }
    if !batch.is_empty() {
        store.commit(batch)?;
    }
    Ok(results)
}

pub fn expire<S: Store>(
    store: &mut S,
    policy: &NodePolicy,
    now: Timestamp,
) -> Result<usize, SyncError> {
    let cutoff = now
        .as_secs()
        .saturating_sub(policy.clock_skew_tolerance_secs);
    let mut removed = 0;
    loop {
        let ids = store.expired(cutoff, 4096)?;
        if ids.is_empty() {
            return Ok(removed);
        }
        let mut batch = WriteBatch::new();
        removed += ids.len();
        for id in ids {
            batch.push(WriteOp::RemoveItem(id));
        }
        store.commit(batch)?;
    }
}

/// The stored item `id`, unless this step removed it (or added it: an item added in this
/// step is checked by whoever added it).
fn step_item<S: Store>(
    store: &S,
    step: &Step,
    id: &ItemId,
) -> Result<Option<StoredItem>, StoreError> {
    if step.removed.contains(id) {
        return Ok(None);
    }
    store.get(id)
}

/// The tombstone stored for envelope `id`, decoded, unless this step removed it.
fn stored_tombstone<S: Store>(
    store: &S,
    step: &Step,
    id: &ItemId,
) -> Result<Option<Tombstone>, SyncError> {
    let Some(item) = step_item(store, step, &Tombstone::id_for(id))? else {
        return Ok(None);
    };
    match Item::decode(&item.encoded)? {
        Item::Tombstone(t) => Ok(Some(t)),
        Item::Envelope(_) => Err(SyncError::Store(StoreError::Corrupt(
            "an envelope stored under a tombstone id".into(),
        ))),
    }
}

/// The writes and events of one engine step, and what the step already decided, so two
/// items in one frame see each other.
#[derive(Default)]
struct Step {
    batch: WriteBatch,
    events: Vec<SyncEvent>,
    added: HashSet<ItemId>,
    removed: HashSet<ItemId>,
    usage_delta: i64,
}

impl Step {
    fn contains<S: Store>(&self, store: &S, id: &ItemId) -> Result<bool, StoreError> {
        if self.added.contains(id) {
            return Ok(true);
        }
        if self.removed.contains(id) {
            return Ok(false);
        }
        store.contains(id)
    }

    fn remove<S: Store>(&mut self, store: &S, id: ItemId) -> Result<Option<ItemMeta>, StoreError> {
        if self.removed.contains(&id) {
            return Ok(None);
        }
        let meta = store.meta(&id)?;
        if let Some(meta) = &meta {
            self.usage_delta -= meta.len as i64;
        }
        self.added.remove(&id);
        self.removed.insert(id);
        self.batch.push(WriteOp::RemoveItem(id));
        Ok(meta)
    }

    fn put(&mut self, item: StoredItem) {
        self.usage_delta += item.meta.len as i64;
        self.removed.remove(&item.id);
        self.added.insert(item.id);
        self.batch.push(WriteOp::PutItem(item));
    }

    /// Frees room for `len` more bytes: expired items first, then others' items in the
    /// store's eviction order (lowest priority, then oldest). This device's own items go only
    /// to make room for another of its own (`for_local`). Returns whether it fits.
    fn make_room<S: Store>(
        &mut self,
        store: &S,
        policy: &NodePolicy,
        now: Timestamp,
        len: u64,
        for_local: bool,
    ) -> Result<bool, StoreError> {
        let fits = |s: &Step| -> Result<bool, StoreError> {
            let used = (store.usage()?.bytes as i64 + s.usage_delta).max(0) as u64;
            Ok(used.saturating_add(len) <= policy.quota_bytes)
        };
        if len > policy.quota_bytes {
            return Ok(false);
        }
        if fits(self)? {
            return Ok(true);
        }
        let cutoff = now
            .as_secs()
            .saturating_sub(policy.clock_skew_tolerance_secs);
        for id in store.expired(cutoff, EVICTION_BATCH)? {
            self.remove(store, id)?;
            if fits(self)? {
                return Ok(true);
            }
        }
        // Candidates already seen; the store's order does not change within a step (our
        // removals are not committed yet), so each fetch continues where the last stopped.
        let mut seen = 0;
        loop {
            let wanted = seen + EVICTION_BATCH;
            let candidates = store.eviction_order(wanted)?;
            let exhausted = candidates.len() < wanted;
            for id in candidates.iter().skip(seen) {
                if self.removed.contains(id) || self.added.contains(id) {
                    continue;
                }
                let Some(meta) = store.meta(id)? else {
                    continue;
                };
                if meta.origin == Origin::Local && !for_local {
                    // Own undelivered messages are the last thing we give up, and never for
                    // someone else's.
                    return Ok(false);
                }
                self.remove(store, *id)?;
                if fits(self)? {
                    return Ok(true);
                }
            }
            seen = candidates.len();
            if exhausted {
                return fits(self);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's hello.
    AwaitHello,
    Active,
    Closed,
}

/// An item queued for sending in the current round.
#[derive(Debug)]
struct Outgoing {
    id: ItemId,
    short: ShortId,
    grant: u8,
    keep: u8,
    /// Copies we held when the item was queued: `keep` differs only when spraying.
    held: u8,
    /// Custody moves with the item (focus phase): drop ours when the peer confirms.
    release: bool,
    /// Bytes already sent (or skipped on the peer's [`Message::Resume`]).
    offset: u32,
    started: bool,
    encoded: Option<Vec<u8>>,
}

impl Outgoing {
    /// Whether the peer must confirm it stored the item before our copies change: when we
    /// give it copies out of our budget, or hand it our copy.
    fn needs_confirmation(&self) -> bool {
        self.release || self.keep != self.held
    }
}

/// What a confirmation from the peer ([`Message::Custody`]) settles.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Copies that leave our budget.
    grant: u8,
    /// We handed over our copy: drop it.
    release: bool,
}

/// Send order: tombstones, then envelopes for the peer itself, then envelopes it carries on;
/// within each, by priority, then oldest first; the id breaks ties deterministically.
type SendKey = (u8, u64, ItemId);

/// A complete item off the wire, before it is checked.
struct Received {
    encoded: Vec<u8>,
    copies: u8,
    custody: bool,
    claimed_id: Option<ItemId>,
}

/// A transfer being received.
#[derive(Debug)]
struct Incoming {
    id: Option<ItemId>,
    total_len: u32,
    copies: u8,
    custody: bool,
    received: Vec<u8>,
}

#[derive(Debug)]
struct Round {
    salt: Salt,
    recon: Reconciler,
    /// Nothing differs: the round ends without transfers or `Done`.
    equal: bool,
    outcome_handled: bool,
    sent_done: bool,
    peer_done: bool,
    recon_bytes_sent: u64,
    items_sent: u32,
    items_received: u32,
}

impl Round {
    fn new(salt: Salt, recon: Reconciler) -> Self {
        Round {
            salt,
            recon,
            equal: false,
            outcome_handled: false,
            sent_done: false,
            peer_done: false,
            recon_bytes_sent: 0,
            items_sent: 0,
            items_received: 0,
        }
    }
}

/// One side of a sync session with one peer.
#[derive(Debug)]
pub struct SyncSession {
    config: SessionConfig,
    role: Role,
    peer_key: Vec<u8>,
    rng: ChaCha8Rng,
    phase: Phase,
    hello_sent: bool,
    /// The filter the initiator's round 0 assumed (its own wants only).
    assumed_filter: Option<ReconFilter>,
    peer: Option<PeerWants>,
    /// The peer's [`Hello::activity`].
    peer_activity: u32,
    /// What the current round's transfers were planned with.
    sociability: Sociability,
    /// Items we sent with custody; the peer's [`Message::Custody`] lets us drop them.
    awaiting_custody: HashMap<ItemId, Pending>,
    /// Confirmations still owed from an earlier session with this peer (a link that broke
    /// after the peer stored an item but before its confirmation arrived): the next
    /// reconciliation shows whether the peer holds the item.
    owed_from_before: HashSet<ItemId>,
    /// `awaiting_custody` changed since it was last saved in the peer's state.
    pending_dirty: bool,
    /// Items sent whole to this peer in this session. One the peer still lacks in a later
    /// round was refused (no room, expired for it): offering it again every round would
    /// spend the link on refusals.
    sent: HashSet<ReconKey>,
    /// Envelopes the peer sent us forged receipts for: it holds a false tombstone, so it must
    /// get the envelope (which proves the tombstone false) rather than be skipped.
    forged_receipts: HashSet<ItemId>,
    round: Option<Round>,
    /// Items to push whole, outside any round ([`SyncSession::push`]).
    push_queue: VecDeque<ItemId>,
    /// Compact items from the peer that did not rebuild (left to reconciliation).
    compact_refused: u64,
    store_changed: bool,
    peer_wants_resync: bool,
    control: VecDeque<Message>,
    send_queue: BTreeMap<SendKey, Outgoing>,
    incoming: HashMap<ShortId, Incoming>,
    events: VecDeque<SyncEvent>,
    last_heard: Timestamp,
}

impl SyncSession {
    pub fn new(
        config: SessionConfig,
        role: Role,
        peer_key: Vec<u8>,
        seed: u64,
        now: Timestamp,
    ) -> Result<Self, SyncError> {
        if !(MIN_MTU..=MAX_MTU).contains(&config.mtu) {
            return Err(SyncError::BadMtu(config.mtu));
        }
        Ok(SyncSession {
            config,
            role,
            peer_key,
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::AwaitHello,
            hello_sent: false,
            assumed_filter: None,
            peer: None,
            peer_activity: 0,
            sociability: Sociability::default(),
            awaiting_custody: HashMap::new(),
            owed_from_before: HashSet::new(),
            pending_dirty: false,
            sent: HashSet::new(),
            forged_receipts: HashSet::new(),
            round: None,
            push_queue: VecDeque::new(),
            compact_refused: 0,
            store_changed: false,
            peer_wants_resync: false,
            control: VecDeque::new(),
            send_queue: BTreeMap::new(),
            incoming: HashMap::new(),
            events: VecDeque::new(),
            last_heard: now,
        })
    }

    /// One line on where the session stands, for logs and diagnostics.
    pub fn describe(&self) -> String {
        let round = match &self.round {
            None => "no round".to_string(),
            Some(r) => format!(
                "round(equal={}, outcome={}, handled={}, sent_done={}, peer_done={}, failed={})",
                r.equal,
                r.recon.outcome().is_some(),
                r.outcome_handled,
                r.sent_done,
                r.peer_done,
                r.recon.has_failed()
            ),
        };
        format!(
            "{:?} {:?} {round}, {} control queued, {} items queued, {} incoming, changed={}, resync={}",
            self.role,
            self.phase,
            self.control.len(),
            self.send_queue.len(),
            self.incoming.len(),
            self.store_changed,
            self.peer_wants_resync
        )
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn peer_key(&self) -> &[u8] {
        &self.peer_key
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The peer's declared wants, once its hello arrived.
    pub fn peer_wants(&self) -> Option<&PeerWants> {
        self.peer.as_ref()
    }

    /// Round finished and nothing queued: the link may idle.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Active
            && self.round.is_none()
            && self.control.is_empty()
            && self.send_queue.is_empty()
            && self.push_queue.is_empty()
            && !self.store_changed
            && !self.peer_wants_resync
    }

    /// Sends `id` to the peer whole, as soon as the session is up, without waiting for a
    /// reconciliation round: for items the peer is known to want and lack, such as a new
    /// message to the peer itself or the receipt of a message the peer sent. In the compact
    /// form when the [`SessionConfig::compactor`] has one. An item that no longer exists,
    /// or does not fit one frame, is skipped (reconciliation finds it as before).
    pub fn push(&mut self, id: ItemId) {
        if self.push_queue.contains(&id) {
            return;
        }
        if self.push_queue.len() < MAX_PUSH_QUEUE {
            self.push_queue.push_back(id);
        } else {
            // Too many at once: reconciliation finds what did not fit.
            self.store_changed = true;
        }
    }

    /// Takes back the pushes not sent yet (the session is ending; another may send them).
    pub fn take_unsent_pushes(&mut self) -> Vec<ItemId> {
        self.push_queue.drain(..).collect()
    }

    /// Compact items from the peer that did not rebuild, so far.
    pub fn compact_refused(&self) -> u64 {
        self.compact_refused
    }

    /// The store changed outside this session: run another round when this one is over.
    pub fn notify_store_changed(&mut self) {
        self.store_changed = true;
    }

    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should be called, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.phase {
            Phase::Closed => None,
            Phase::AwaitHello => Some(self.stall_deadline()),
            Phase::Active if self.round.is_some() => Some(self.stall_deadline()),
            Phase::Active => None,
        }
    }

    fn stall_deadline(&self) -> Timestamp {
        self.last_heard
            .saturating_add_millis(self.config.stall_timeout_ms)
    }

    /// Gives up on a peer that went silent mid-round. The session is closed afterwards.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), SyncError> {
        if let Some(deadline) = self.poll_timeout() {
            if now >= deadline {
                self.phase = Phase::Closed;
                return Err(SyncError::TimedOut);
            }
        }
        Ok(())
    }

    /// Closes the session politely; the next transmit carries the reason.
    pub fn close(&mut self, reason: CloseReason) {
        if self.phase != Phase::Closed {
            self.control.push_back(Message::Close(reason));
        }
    }

    /// One incoming frame. On error the session is closed (a `Close` is queued for the peer
    /// where that makes sense) and nothing from this frame was committed.
    pub fn handle_frame<S: Store>(
        &mut self,
        now: Timestamp,
        frame: &[u8],
        store: &mut S,
    ) -> Result<(), SyncError> {
        if self.phase == Phase::Closed {
            return Err(SyncError::Closed);
        }
        self.last_heard = now;
        let result = self.handle_frame_inner(now, frame, store);
        if let Err(err) = &result {
            let reason = match err {
                SyncError::Version(_) => Some(CloseReason::Version),
                SyncError::Store(_) => Some(CloseReason::Storage),
                SyncError::Closed => None,
                _ => Some(CloseReason::Protocol),
            };
            if let Some(reason) = reason {
                self.control.clear();
                self.control.push_back(Message::Close(reason));
            }
            self.send_queue.clear();
            self.round = None;
            self.phase = Phase::Closed;
        }
        result
    }

    fn handle_frame_inner<S: Store>(
        &mut self,
        now: Timestamp,
        frame: &[u8],
        store: &mut S,
    ) -> Result<(), SyncError> {
        let messages = wire::decode_frame(frame, self.config.mtu)?;
        let mut step = Step::default();
        for message in messages {
            self.handle_message(now, message, store, &mut step)?;
        }
        self.save_pending(&mut step);
        if !step.batch.is_empty() {
            store.commit(step.batch)?;
        }
        // Only now, after the commit, may anyone hear of what happened.
        self.events.extend(step.events);
        self.after_progress(now, store)?;
        Ok(())
    }

    fn handle_message<S: Store>(
        &mut self,
        now: Timestamp,
        message: Message,
        store: &mut S,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        match message {
            Message::Hello(hello) => self.handle_hello(now, hello, store, step),
            _ if self.phase == Phase::AwaitHello => {
                Err(SyncError::Protocol("message before hello"))
            }
            Message::Open(open) => self.handle_open(open, store),
            Message::Recon(msg) => self.handle_recon(msg, store),
            Message::Chunk(chunk) => self.handle_chunk(now, chunk, store, step),
            Message::Resume { short, offset } => {
                let short = ShortId(u64::from_le_bytes(short));
                if let Some(out) = self.send_queue.values_mut().find(|o| o.short == short) {
                    let total = store.meta(&out.id)?.map(|m| m.len);
                    if total.is_some_and(|total| offset >= total) {
                        // A receiver holding the whole item would have finished it.
                        return Err(SyncError::Protocol("resume beyond the item's end"));
                    }
                    if offset > out.offset {
                        out.offset = offset;
                    }
                }
                Ok(())
            }
            Message::Done => {
                let round = self
                    .round
                    .as_mut()
                    .ok_or(SyncError::Protocol("done outside a round"))?;
                if round.peer_done {
                    return Err(SyncError::Protocol("done twice"));
                }
                round.peer_done = true;
                Ok(())
            }
            Message::Resync => {
                if self.role != Role::Initiator {
                    return Err(SyncError::Protocol("resync sent to the responder"));
                }
                self.peer_wants_resync = true;
                Ok(())
            }
            Message::Close(reason) => {
                step.events.push(SyncEvent::PeerClosed { reason });
                self.phase = Phase::Closed;
                Ok(())
            }
            Message::Custody { id } => {
                let Some(pending) = self.awaiting_custody.remove(&id) else {
                    return Err(SyncError::Protocol("custody of an item not handed over"));
                };
                self.pending_dirty = true;
                if self.owed_from_before.remove(&id) {
                    // A confirmation from an earlier session cannot come on this link.
                    return Err(SyncError::Protocol("custody of an item not handed over"));
                }
                // Only now, with the item safe at the peer, do the copies we gave it leave
                // our budget: a link that fails between send and store costs nothing.
                self.confirm(store, step, id, pending)
            }
            Message::Push(data) => self.accept_pushed(now, data.into_inner(), store, step),
            Message::Compact(data) => {
                let rebuilt = self
                    .config
                    .compactor
                    .as_ref()
                    .and_then(|c| c.expand(&self.peer_key, data.as_slice(), now.as_secs()));
                match rebuilt {
                    Some(item) => self.accept_pushed(now, item.encode(), store, step),
                    None => {
                        // Not rebuilt here: a round finds the item and asks for it whole.
                        self.compact_refused += 1;
                        self.store_changed = true;
                        Ok(())
                    }
                }
            }
        }
    }

    /// A whole item the peer pushed: stored like the last chunk of a transfer, with one copy
    /// (it may deliver it, not spread it) and no custody.
    fn accept_pushed<S: Store>(
        &mut self,
        now: Timestamp,
        encoded: Vec<u8>,
        store: &mut S,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        let received = Received {
            encoded,
            copies: 1,
            custody: false,
            claimed_id: None,
        };
        let counted = self.round.as_ref().map(|r| r.items_received);
        self.accept_item(now, received, store, step)?;
        // Not part of the round's transfer: keep its count to the round's own items.
        if let (Some(round), Some(count)) = (self.round.as_mut(), counted) {
            round.items_received = count;
        }
        Ok(())
    }

    fn own_wants(&self) -> PeerWants {
        let mut scopes = self.config.policy.scopes.clone();
        scopes.sort();
        scopes.dedup();
        PeerWants {
            carries_for_others: self.config.policy.carries_for_others,
            scopes,
        }
    }

    fn handle_hello<S: Store>(
        &mut self,
        now: Timestamp,
        hello: Hello,
        store: &mut S,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        if self.phase != Phase::AwaitHello {
            return Err(SyncError::Protocol("second hello"));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(SyncError::Version(hello.version));
        }
        if let Some(state) = store.peer_state(&self.peer_key)? {
            for (id, pending) in decode_pending(&state) {
                self.owed_from_before.insert(id);
                self.awaiting_custody.insert(id, pending);
            }
        }
        let mut scopes = hello.scopes.into_inner();
        step.batch.push(WriteOp::RecordEncounter(Encounter {
            peer: PeerTag::of(&self.peer_key),
            at_secs: now.as_secs(),
        }));
        self.peer_activity = u32::from(hello.activity);
        scopes.sort();
        scopes.dedup();
        let peer = PeerWants {
            carries_for_others: hello.carries_for_others,
            scopes,
        };
        self.peer = Some(peer);
        self.phase = Phase::Active;
        let filter = self.filter();
        match self.role {
            Role::Responder => {
                if !self.hello_sent {
                    self.queue_hello(now, None, store)?;
                }
                match hello.open {
                    // The initiator guessed the filter right: answer its round.
                    Some(open) if own_filter(&self.peer_or_default()) == filter => {
                        self.handle_open(open, store)?;
                    }
                    // Otherwise the initiator will see our hello and open another round.
                    _ => {}
                }
            }
            Role::Initiator => {
                if hello.open.is_some() {
                    return Err(SyncError::Protocol("responder opened a round"));
                }
                if self.assumed_filter.as_ref() != Some(&filter) {
                    self.round = None;
                    self.open_round(store)?;
                }
            }
        }
        Ok(())
    }

    /// Distinct peers we met in the last hour, other than this session's.
    fn own_activity<S: Store>(&self, now: Timestamp, store: &S) -> Result<u32, SyncError> {
        let this_peer = PeerTag::of(&self.peer_key);
        let since = now.as_secs().saturating_sub(ACTIVITY_WINDOW_SECS);
        Ok(store
            .encounters(MAX_ACTIVITY)?
            .iter()
            .take_while(|e| e.at_secs >= since)
            .filter(|e| e.peer != this_peer)
            .count() as u32)
    }

    fn peer_or_default(&self) -> PeerWants {
        self.peer.clone().unwrap_or_default()
    }

    /// Items both sides want: everything when both carry for others, otherwise the scopes
    /// the non-carrying side wants.
    fn filter(&self) -> ReconFilter {
        let own = self.own_wants();
        let peer = self.peer_or_default();
        combine_filters(&own, &peer)
    }

    fn keys<S: Store>(store: &S, filter: &ReconFilter) -> Result<Vec<ReconKey>, StoreError> {
        let mut keys = Vec::new();
        store.for_each_recon_key(filter, &mut |k| keys.push(k))?;
        Ok(keys)
    }

    fn recon_budget(&self) -> usize {
        // Room left for a recon message inside a frame, after the message tag (and, for the
        // first one, the hello/open wrapper: salt and tags).
        self.config.mtu.saturating_sub(32)
    }

    fn new_salt(&mut self) -> Salt {
        let mut salt = [0u8; 16];
        self.rng.fill_bytes(&mut salt);
        Salt(salt)
    }

    /// Queues our hello; the initiator's opens round 0 on the guess that the peer carries
    /// what we carry.
    fn queue_hello<S: Store>(
        &mut self,
        now: Timestamp,
        open: Option<Open>,
        store: &S,
    ) -> Result<(), SyncError> {
        let own = self.own_wants();
        let activity = self.own_activity(now, store)?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            carries_for_others: own.carries_for_others,
            scopes: BoundedVec::new(own.scopes).map_err(SyncError::Codec)?,
            activity: u16::try_from(activity).unwrap_or(u16::MAX),
            open,
        };
        self.control.push_back(Message::Hello(hello));
        self.hello_sent = true;
        Ok(())
    }

    fn start_round<S: Store>(
        &mut self,
        store: &S,
        filter: &ReconFilter,
    ) -> Result<Open, SyncError> {
        let salt = self.new_salt();
        let keys = Self::keys(store, filter)?;
        let mut recon = Reconciler::summarizer(salt, keys, self.recon_budget());
        let summary = recon
            .poll_message()
            .ok_or(SyncError::Protocol("reconciler produced no summary"))?;
        let summary_len = wire::Message::Recon(summary.clone()).encoded_len() as u64;
        let mut round = Round::new(salt, recon);
        round.recon_bytes_sent = summary_len;
        self.round = Some(round);
        Ok(Open {
            salt: salt.0,
            summary,
        })
    }

    fn open_round<S: Store>(&mut self, store: &S) -> Result<(), SyncError> {
        let filter = self.filter();
        let open = self.start_round(store, &filter)?;
        self.store_changed = false;
        self.peer_wants_resync = false;
        self.control.push_back(Message::Open(open));
        Ok(())
    }

    fn handle_open<S: Store>(&mut self, open: Open, store: &S) -> Result<(), SyncError> {
        if self.role != Role::Responder {
            return Err(SyncError::Protocol("only the initiator opens rounds"));
        }
        if self.round.is_some() {
            return Err(SyncError::Protocol("round opened while one is running"));
        }
        let salt = Salt(open.salt);
        let filter = self.filter();
        let keys = Self::keys(store, &filter)?;
        let mut recon = Reconciler::coder(salt, keys, self.recon_budget());
        recon.handle_message(open.summary)?;
        self.round = Some(Round::new(salt, recon));
        // A change noticed before this round began is covered by it.
        self.store_changed = false;
        Ok(())
    }

    fn handle_recon<S: Store>(&mut self, msg: ReconMessage, _store: &S) -> Result<(), SyncError> {
        let round = self
            .round
            .as_mut()
            .ok_or(SyncError::Protocol("reconciliation outside a round"))?;
        if matches!(msg, ReconMessage::Equal) {
            round.equal = true;
        }
        round.recon.handle_message(msg)?;
        Ok(())
    }

    fn handle_chunk<S: Store>(
        &mut self,
        now: Timestamp,
        chunk: Chunk,
        store: &mut S,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        if self.round.is_none() {
            return Err(SyncError::Protocol("chunk outside a round"));
        }
        let short = ShortId(u64::from_le_bytes(chunk.short));
        let data = chunk.data.into_inner();
        let end = chunk.offset as u64 + data.len() as u64;
        if chunk.total_len as usize > MAX_ITEM_LEN || end > chunk.total_len as u64 {
            return Err(SyncError::Protocol("chunk beyond the item's length"));
        }
        if chunk.total_len == 0 {
            return Err(SyncError::Protocol("empty item"));
        }
        // The common case: a whole item in one chunk.
        if chunk.offset == 0 && data.len() == chunk.total_len as usize {
            self.incoming.remove(&short);
            let item = Received {
                encoded: data,
                copies: chunk.copies,
                custody: chunk.custody,
                claimed_id: chunk.id,
            };
            return self.accept_item(now, item, store, step);
        }
        if !self.incoming.contains_key(&short) {
            if self.incoming.len() >= MAX_INCOMING {
                return Err(SyncError::Protocol("too many transfers at once"));
            }
            let mut incoming = Incoming {
                id: chunk.id,
                total_len: chunk.total_len,
                copies: chunk.copies,
                custody: chunk.custody,
                received: Vec::new(),
            };
            if let Some(id) = chunk.id {
                if let Some(partial) = store.partial(&id)? {
                    if partial.total_len == chunk.total_len
                        && partial.received.len() > chunk.offset as usize
                    {
                        incoming.received = partial.received;
                        self.control.push_back(Message::Resume {
                            short: chunk.short,
                            offset: incoming.received.len() as u32,
                        });
                    }
                }
            }
            self.incoming.insert(short, incoming);
        }
        let Some(incoming) = self.incoming.get_mut(&short) else {
            return Ok(());
        };
        if incoming.total_len != chunk.total_len {
            return Err(SyncError::Protocol(
                "chunk length disagrees with its transfer",
            ));
        }
        if incoming.id.is_none() {
            incoming.id = chunk.id;
        }
        incoming.custody = chunk.custody;
        let have = incoming.received.len() as u64;
        if (chunk.offset as u64) <= have && end > have {
            let skip = (have - chunk.offset as u64) as usize;
            incoming.received.extend_from_slice(&data[skip..]);
        }
        if incoming.received.len() == incoming.total_len as usize {
            let done = self.incoming.remove(&short);
            if let Some(done) = done {
                if let Some(id) = done.id {
                    step.batch.push(WriteOp::RemovePartial(id));
                }
                let item = Received {
                    encoded: done.received,
                    copies: done.copies,
                    custody: done.custody,
                    claimed_id: done.id,
                };
                self.accept_item(now, item, store, step)?;
            }
        } else if let Some(id) = incoming.id {
            step.batch.push(WriteOp::PutPartial(Partial {
                id,
                copies: incoming.copies,
                total_len: incoming.total_len,
                received: incoming.received.clone(),
            }));
        }
        Ok(())
    }

    /// Validates a complete item and decides what it means for this node.
    fn accept_item<S: Store>(
        &mut self,
        now: Timestamp,
        received: Received,
        store: &mut S,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        let Received {
            encoded,
            copies,
            custody,
            claimed_id,
        } = received;
        let item = Item::decode(&encoded)?;
        let id = item.id();
        if claimed_id.is_some_and(|claimed| claimed != id) {
            return Err(SyncError::Protocol("item does not match its announced id"));
        }
        if let Some(round) = self.round.as_mut() {
            round.items_received += 1;
        }
        if custody && !matches!(item, Item::Envelope(_)) {
            return Err(SyncError::Protocol("custody of a receipt"));
        }
        // The sender may drop its copy once this step has committed the item here (or found
        // it here, or delivered): queued now, the answer leaves only after the commit, and a
        // failed commit clears it with the session. A refused item is not answered, so the
        // sender keeps its copy.
        if custody {
            self.control.push_back(Message::Custody { id });
        }
        let policy = &self.config.policy;
        let now_secs = now.as_secs();
        if step.contains(store, &id)? {
            return Ok(());
        }
        let control = &mut self.control;
        let mut refuse = |step: &mut Step, reason| {
            // Already delivered is as good as stored; anything else is not here at all.
            if custody && reason != RefusedBecause::Tombstoned {
                let withdrawn = control.pop_back();
                debug_assert_eq!(withdrawn, Some(Message::Custody { id }));
            }
            step.events.push(SyncEvent::ItemRefused { id, reason });
            Ok(())
        };
        if policy.is_expired(item.expires_at_secs(), now_secs) {
            return refuse(step, RefusedBecause::Expired);
        }
        if policy.is_from_future(item.created_at_secs(), now_secs) {
            return refuse(step, RefusedBecause::FromTheFuture);
        }
        if let Item::Envelope(envelope) = &item {
            if let Some(receipt) = stored_tombstone(store, step, &id)? {
                if receipt.opens(envelope) {
                    return refuse(step, RefusedBecause::Tombstoned);
                }
                // A forged receipt someone passed us before we could check it: the envelope
                // proves it false.
                step.remove(store, receipt.id())?;
                step.events.push(SyncEvent::ItemRefused {
                    id: receipt.id(),
                    reason: RefusedBecause::ForgedReceipt,
                });
            }
        }
        let bytes = encoded.len();
        match item {
            Item::Envelope(ref envelope) if policy.is_destination(&envelope.scope) => {
                if store.in_inbox(&id)? {
                    // Delivered already; the application has not acknowledged it yet.
                    return Ok(());
                }
                // Ours: into the inbox. The receipt follows when the application has taken it
                // ([`acknowledge`]): only it can compute the proof.
                step.batch.push(WriteOp::PutInbox(InboxEntry {
                    id,
                    received_at: now,
                    encoded,
                }));
                step.events.push(SyncEvent::Delivered { id });
            }
            Item::Tombstone(ref tombstone) => {
                if let Some(target) = step_item(store, step, &tombstone.target)? {
                    let genuine = match Item::decode(&target.encoded) {
                        Ok(Item::Envelope(envelope)) => tombstone.opens(&envelope),
                        _ => false,
                    };
                    if !genuine {
                        // Only someone who can read the envelope can make it disappear. The
                        // peer believes the forgery: another round sends it the envelope.
                        if self.forged_receipts.len() < MAX_AWAITING_CUSTODY {
                            self.forged_receipts.insert(tombstone.target);
                            self.store_changed = true;
                        }
                        return refuse(step, RefusedBecause::ForgedReceipt);
                    }
                    step.remove(store, tombstone.target)?;
                    if target.meta.origin == Origin::Local {
                        step.events.push(SyncEvent::ReceiptForOwn {
                            id: tombstone.target,
                        });
                    }
                }
                step.batch.push(WriteOp::RemovePartial(tombstone.target));
                step.put(StoredItem {
                    id,
                    meta: meta_for(&item, now, bytes, 1, Origin::Remote),
                    encoded,
                });
                step.events.push(SyncEvent::ItemStored {
                    id,
                    kind: ItemKind::Tombstone {
                        target: tombstone.target,
                    },
                    bytes,
                });
            }
            Item::Envelope(_) => {
                if !step.make_room(store, policy, now, bytes as u64, false)? {
                    return refuse(step, RefusedBecause::NoRoom);
                }
                let copies = policy::accepted_copies(policy, copies, Origin::Remote);
                step.put(StoredItem {
                    id,
                    meta: meta_for(&item, now, bytes, copies, Origin::Remote),
                    encoded,
                });
                step.events.push(SyncEvent::ItemStored {
                    id,
                    kind: ItemKind::Envelope,
                    bytes,
                });
            }
        }
        Ok(())
    }

    /// Moves the round forward after input: collects reconciliation output, turns a finished
    /// reconciliation into transfers, finishes rounds and opens new ones.
    fn after_progress<S: Store>(&mut self, now: Timestamp, store: &mut S) -> Result<(), SyncError> {
        if self.phase != Phase::Active {
            return Ok(());
        }
        if let Some(round) = self.round.as_mut() {
            while let Some(msg) = round.recon.poll_message() {
                if matches!(msg, ReconMessage::Equal) {
                    round.equal = true;
                }
                let m = Message::Recon(msg);
                round.recon_bytes_sent += m.encoded_len() as u64;
                self.control.push_back(m);
            }
        }
        let ready = self
            .round
            .as_ref()
            .is_some_and(|r| !r.outcome_handled && r.recon.outcome().is_some());
        if ready {
            self.plan_transfers(now, store)?;
        }
        self.maybe_finish_round(store)
    }

    /// Reconciliation is over: queue what the peer lacks and our policy lets it have, and
    /// offer to resume transfers a cut meeting left half done.
    fn plan_transfers<S: Store>(&mut self, now: Timestamp, store: &mut S) -> Result<(), SyncError> {
        self.settle_owed(store)?;
        let store: &S = store;
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        round.outcome_handled = true;
        let Some(outcome) = round.recon.outcome() else {
            return Ok(());
        };
        let peer = self.peer.clone().unwrap_or_default();
        let salt = round.salt;
        let remote_lacks: Vec<ReconKey> = outcome.remote_lacks.clone();
        let local_lacks: HashSet<ShortId> = outcome.local_lacks.iter().copied().collect();
        let sociability = Sociability {
            own: self.own_activity(now, store)?,
            peer: self.peer_activity,
        };
        self.sociability = sociability;
        for key in remote_lacks {
            if self.sent.contains(&key) {
                continue;
            }
            let Some(id) = store.resolve(key)? else {
                continue;
            };
            let Some(meta) = store.meta(&id)? else {
                continue;
            };
            let Some(handover) =
                policy::handover(&meta, &peer, &self.config.policy.routing, sociability)
            else {
                continue;
            };
            if handover.release && self.awaiting_custody.len() >= MAX_AWAITING_CUSTODY {
                // Hand it over next time rather than track more at once.
                continue;
            }
            if self.awaiting_custody.contains_key(&id) {
                // Sent in this session and not yet confirmed: the peer will have it.
                continue;
            }
            if meta.kind == ItemKind::Envelope && !local_lacks.is_empty() {
                // The peer may hold this envelope's receipt (we lack it, so it is among the
                // short ids we asked for): sending the envelope would only be refused.
                let receipt = Tombstone::id_for(&id);
                if local_lacks.contains(&salt.short_id(recon_key(&receipt)))
                    && !self.forged_receipts.contains(&id)
                {
                    continue;
                }
            }
            // Receipts first (small, and each purges copies), then what ends here, then what
            // the peer carries on: a short meeting with a destination must not be spent
            // spraying other messages at it.
            let class = match meta.kind {
                ItemKind::Tombstone { .. } => 0,
                ItemKind::Envelope if peer.is_destination(&meta.scope) => 1 + meta.priority as u8,
                ItemKind::Envelope => 4 + meta.priority as u8,
            };
            self.send_queue.insert(
                (class, meta.created_at_secs, id),
                Outgoing {
                    id,
                    short: salt.short_id(key),
                    grant: handover.grant,
                    keep: handover.keep,
                    held: meta.copies,
                    release: handover.release,
                    offset: 0,
                    started: false,
                    encoded: None,
                },
            );
        }
        if !local_lacks.is_empty() {
            for id in store.partial_ids(MAX_RESUMABLE)? {
                let short = salt.short_id(recon_key(&id));
                if !local_lacks.contains(&short) {
                    continue;
                }
                if let Some(partial) = store.partial(&id)? {
                    let offset = partial.received.len() as u32;
                    self.incoming.insert(
                        short,
                        Incoming {
                            id: Some(id),
                            total_len: partial.total_len,
                            copies: partial.copies,
                            custody: false,
                            received: partial.received,
                        },
                    );
                    self.control.push_back(Message::Resume {
                        short: short.0.to_le_bytes(),
                        offset,
                    });
                }
            }
        }
        Ok(())
    }

    /// Confirmations owed from an earlier session: an item the peer holds now (it is not
    /// among what it lacks) was stored, so its copies leave our budget; one it lacks was not,
    /// and will be sent again. Only when both sides reconciled everything (both carry for
    /// others): under a scope filter, "not lacking" proves nothing. One commit, after which
    /// the events go out.
    fn settle_owed<S: Store>(&mut self, store: &mut S) -> Result<(), SyncError> {
        if self.owed_from_before.is_empty() || self.filter() != ReconFilter::All {
            return Ok(());
        }
        let Some(outcome) = self.round.as_ref().and_then(|r| r.recon.outcome()) else {
            return Ok(());
        };
        let lacks: HashSet<ReconKey> = outcome.remote_lacks.iter().copied().collect();
        let mut step = Step::default();
        for id in std::mem::take(&mut self.owed_from_before) {
            let Some(pending) = self.awaiting_custody.remove(&id) else {
                continue;
            };
            self.pending_dirty = true;
            if lacks.contains(&recon_key(&id)) {
                continue;
            }
            self.confirm(store, &mut step, id, pending)?;
        }
        self.save_pending(&mut step);
        if !step.batch.is_empty() {
            store.commit(step.batch)?;
        }
        self.events.extend(step.events);
        Ok(())
    }

    /// The peer stored `id`: the copies we gave it leave our budget, or our copy goes.
    fn confirm<S: Store>(
        &mut self,
        store: &S,
        step: &mut Step,
        id: ItemId,
        pending: Pending,
    ) -> Result<(), SyncError> {
        if let Some(meta) = store.meta(&id)? {
            if pending.release {
                // Ours unless something changed it since (another session made it ours to
                // spray again).
                if meta.copies <= 1 {
                    step.remove(store, id)?;
                    step.events.push(SyncEvent::HandedOver { id });
                }
            } else {
                let left = meta.copies.saturating_sub(pending.grant);
                step.batch.push(WriteOp::SetCopies(id, left));
            }
        }
        step.events.push(SyncEvent::PeerStored { id });
        Ok(())
    }

    /// Saves what the peer still owes us confirmations for in its state, so a broken link
    /// does not forget them.
    fn save_pending(&mut self, step: &mut Step) {
        if !self.pending_dirty || self.peer_key.is_empty() {
            return;
        }
        self.pending_dirty = false;
        step.batch.push(WriteOp::PutPeerState {
            peer: self.peer_key.clone(),
            state: encode_pending(&self.awaiting_custody),
        });
    }

    fn maybe_finish_round<S: Store>(&mut self, store: &mut S) -> Result<(), SyncError> {
        let Some(round) = self.round.as_mut() else {
            return self.maybe_start_round(store);
        };
        if !round.outcome_handled {
            return Ok(());
        }
        if !round.equal {
            if !round.sent_done && self.send_queue.is_empty() {
                round.sent_done = true;
                self.control.push_back(Message::Done);
            }
            if !(round.sent_done && round.peer_done) {
                return Ok(());
            }
        }
        let event = SyncEvent::RoundComplete {
            recon_bytes_sent: round.recon_bytes_sent,
            items_sent: round.items_sent,
            items_received: round.items_received,
        };
        self.events.push_back(event);
        self.round = None;
        self.incoming.clear();
        self.maybe_start_round(store)
    }

    fn maybe_start_round<S: Store>(&mut self, store: &mut S) -> Result<(), SyncError> {
        if self.phase != Phase::Active || self.round.is_some() {
            return Ok(());
        }
        match self.role {
            Role::Initiator if self.store_changed || self.peer_wants_resync => {
                self.open_round(store)
            }
            Role::Responder if self.store_changed => {
                self.store_changed = false;
                self.control.push_back(Message::Resync);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The next frame to send, if any. May commit (copies handed out with an item).
    pub fn poll_transmit<S: Store>(
        &mut self,
        now: Timestamp,
        store: &mut S,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        if self.phase == Phase::Closed {
            // A queued Close still goes out.
            return Ok(self.control.pop_front().map(|m| single_message_frame(&m)));
        }
        if self.role == Role::Initiator && !self.hello_sent {
            let own = own_filter(&self.own_wants());
            let open = self.start_round(store, &own)?;
            self.assumed_filter = Some(own);
            self.queue_hello(now, Some(open), store)?;
        }
        if self.phase == Phase::Active {
            let had_round = self.round.is_some();
            self.maybe_finish_round(store)?;
            if !had_round && self.round.is_some() {
                // A round opened after an idle spell: the peer owes us nothing older.
                self.last_heard = now;
            }
        }
        let mtu = self.config.mtu;
        let mut frame = Vec::with_capacity(mtu.min(4096));
        // Control first: hello, reconciliation, resumes, done.
        while let Some(msg) = self.control.front() {
            if frame.len() + msg.encoded_len() > mtu {
                break;
            }
            if let Some(msg) = self.control.pop_front() {
                let is_done = matches!(msg, Message::Done);
                wire::encode_into(&msg, &mut frame);
                if is_done {
                    // Nothing may follow our Done in this round.
                    return Ok(Some(frame));
                }
            }
        }
        if !self.control.is_empty() && frame.is_empty() {
            return Err(SyncError::Protocol("control message larger than the MTU"));
        }
        let mut step = Step::default();
        if self.control.is_empty() && self.phase == Phase::Active {
            self.fill_pushes(store, &mut frame, &mut step)?;
        }
        if self.control.is_empty() {
            self.fill_chunks(store, &mut frame, &mut step)?;
        }
        self.save_pending(&mut step);
        if !step.batch.is_empty() {
            store.commit(step.batch)?;
        }
        self.events.extend(step.events);
        // A finished send queue may complete the round: Done goes in the next frame.
        if self.phase == Phase::Active && self.round.is_some() {
            self.maybe_finish_round(store)?;
        }
        if frame.is_empty() {
            return Ok(self.control.pop_front().map(|m| single_message_frame(&m)));
        }
        Ok(Some(frame))
    }

    /// Pushed items, compact where the compactor makes them so, while they fit the frame.
    fn fill_pushes<S: Store>(
        &mut self,
        store: &S,
        frame: &mut Vec<u8>,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        while let Some(&id) = self.push_queue.front() {
            let Some(stored) = store.get(&id)? else {
                self.push_queue.pop_front();
                continue;
            };
            let compact = match (&self.config.compactor, Item::decode(&stored.encoded)) {
                (Some(c), Ok(item)) => c.compact(&self.peer_key, &item),
                _ => None,
            };
            let message = match compact {
                Some(data) => Message::Compact(BoundedBytes::new(data).map_err(SyncError::Codec)?),
                None => Message::Push(
                    BoundedBytes::new(stored.encoded.clone()).map_err(SyncError::Codec)?,
                ),
            };
            let len = message.encoded_len();
            if frame.len() + len > self.config.mtu {
                if frame.is_empty() {
                    // Larger than a frame: reconciliation sends it in chunks.
                    self.push_queue.pop_front();
                    self.store_changed = true;
                    continue;
                }
                return Ok(());
            }
            self.push_queue.pop_front();
            wire::encode_into(&message, frame);
            step.events.push(SyncEvent::ItemSent {
                id,
                bytes: stored.encoded.len(),
            });
        }
        Ok(())
    }

    fn fill_chunks<S: Store>(
        &mut self,
        store: &S,
        frame: &mut Vec<u8>,
        step: &mut Step,
    ) -> Result<(), SyncError> {
        let mtu = self.config.mtu;
        loop {
            let room = mtu.saturating_sub(frame.len());
            if room <= CHUNK_OVERHEAD_MAX {
                return Ok(());
            }
            let Some(mut entry) = self.send_queue.first_entry() else {
                return Ok(());
            };
            let out = entry.get_mut();
            if out.encoded.is_none() {
                let Some(item) = store.get(&out.id)? else {
                    // Purged (a tombstone arrived) or evicted since it was queued.
                    entry.remove();
                    continue;
                };
                if item.meta.copies != out.held {
                    // Another session handed copies out since this was planned: split what
                    // is left now, so two meetings at once cannot spend the budget twice.
                    let peer = self.peer.clone().unwrap_or_default();
                    let routing = &self.config.policy.routing;
                    match policy::handover(&item.meta, &peer, routing, self.sociability) {
                        Some(h) => {
                            out.grant = h.grant;
                            out.keep = h.keep;
                            out.release = h.release;
                            out.held = item.meta.copies;
                        }
                        None => {
                            entry.remove();
                            continue;
                        }
                    }
                }
                out.encoded = Some(item.encoded);
            }
            let Some(encoded) = out.encoded.as_ref() else {
                entry.remove();
                continue;
            };
            let total = encoded.len();
            let offset = (out.offset as usize).min(total);
            let mut chunk = Chunk {
                short: out.short.0.to_le_bytes(),
                copies: out.grant,
                // Ask for confirmation whenever copies change hands: the budget moves only
                // once the peer has stored the item.
                custody: out.needs_confirmation(),
                total_len: total as u32,
                offset: offset as u32,
                id: None,
                data: BoundedBytes::default(),
            };
            // The header as it will be encoded, plus the data's own length prefix (a varint
            // of at most 3 bytes for anything up to the MTU).
            let header = Message::Chunk(chunk.clone()).encoded_len() + 2;
            let whole_fits = offset == 0 && header + total <= room;
            if !whole_fits && !out.started {
                // A transfer that spans frames names the item, so a cut can be resumed.
                chunk.id = Some(out.id);
            }
            let header = Message::Chunk(chunk.clone()).encoded_len() + 2;
            if room <= header {
                return Ok(());
            }
            let take = (room - header).min(total - offset);
            chunk.data = BoundedBytes::new(encoded[offset..offset + take].to_vec())
                .map_err(SyncError::Codec)?;
            out.started = true;
            wire::encode_into(&Message::Chunk(chunk), frame);
            out.offset = (offset + take) as u32;
            if out.offset as usize >= total {
                let id = out.id;
                if out.needs_confirmation() {
                    self.pending_dirty = true;
                    self.owed_from_before.remove(&id);
                    self.awaiting_custody.insert(
                        id,
                        Pending {
                            grant: out.held.saturating_sub(out.keep),
                            release: out.release,
                        },
                    );
                }
                if self.sent.len() < MAX_REMEMBERED_SENDS {
                    self.sent.insert(recon_key(&id));
                }
                entry.remove();
                step.events.push(SyncEvent::ItemSent { id, bytes: total });
                if let Some(round) = self.round.as_mut() {
                    round.items_sent += 1;
                }
            } else {
                return Ok(());
            }
        }
    }
}

/// Pending confirmations as saved in the peer's state: version 1, then per item its id, the
/// copies it carried away and whether custody moved.
fn encode_pending(pending: &HashMap<ItemId, Pending>) -> Vec<u8> {
    let mut ids: Vec<(&ItemId, &Pending)> = pending.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    let mut out = Vec::with_capacity(1 + ids.len() * 34);
    out.push(1);
    for (id, p) in ids {
        out.extend_from_slice(&id.0);
        out.push(p.grant);
        out.push(u8::from(p.release));
    }
    out
}

/// The inverse of [`encode_pending`]; anything malformed (another version, a torn value)
/// reads as nothing owed, which only means a status stays "queued" a little longer.
fn decode_pending(bytes: &[u8]) -> Vec<(ItemId, Pending)> {
    let Some((&1, rest)) = bytes.split_first() else {
        return Vec::new();
    };
    if rest.len() % 34 != 0 || rest.len() / 34 > MAX_AWAITING_CUSTODY {
        return Vec::new();
    }
    rest.chunks_exact(34)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&c[..32]);
            (
                ItemId(id),
                Pending {
                    grant: c[32],
                    release: c[33] != 0,
                },
            )
        })
        .collect()
}

fn single_message_frame(message: &Message) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_into(message, &mut frame);
    frame
}

/// The filter a side would use if its peer carried everything.
fn own_filter(own: &PeerWants) -> ReconFilter {
    if own.carries_for_others {
        ReconFilter::All
    } else {
        ReconFilter::Scopes(own.scopes.clone())
    }
}

/// Items both sides want. Both sides compute this from the two hellos and get the same.
pub fn combine_filters(a: &PeerWants, b: &PeerWants) -> ReconFilter {
    match (a.carries_for_others, b.carries_for_others) {
        (true, true) => ReconFilter::All,
        (true, false) => ReconFilter::Scopes(b.scopes.clone()),
        (false, true) => ReconFilter::Scopes(a.scopes.clone()),
        (false, false) => ReconFilter::Scopes(
            a.scopes
                .iter()
                .filter(|s| b.scopes.binary_search(s).is_ok())
                .copied()
                .collect::<Vec<ScopeTag>>(),
        ),
    }
}

fn meta_for(item: &Item, now: Timestamp, len: usize, copies: u8, origin: Origin) -> ItemMeta {
    ItemMeta {
        kind: item.kind(),
        priority: item.priority(),
        scope: item.scope(),
        expires_at_secs: item.expires_at_secs(),
        created_at_secs: item.created_at_secs(),
        stored_at: now,
        len: len as u32,
        copies,
        origin,
    }
}
