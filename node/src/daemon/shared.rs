//! What the node's tasks share: the sync store, the list of live links, and the channels
//! that tie the link tasks to the core task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_sync::envelope::ItemId;
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::SyncEvent;
use cairn_sync::store::LmdbStore;
use cairn_transports::hop::{LocalKeys, NetworkKey};
use tokio::sync::{mpsc, watch};

use crate::direct::Direct;

/// Milliseconds since the Unix epoch: the daemon is where the clock is read.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub type LinkId = u64;

/// What link tasks tell the core.
#[derive(Debug)]
pub enum NodeEvent {
    Sync(SyncEvent),
    LinkUp { peer: [u8; 32] },
    LinkDown { peer: [u8; 32] },
}

#[derive(Clone, Debug)]
pub struct LiveLink {
    pub id: LinkId,
    /// Whether the peer with the lower identity key dialed this connection: of two
    /// connections between the same pair, both sides keep the one where this is true.
    pub dialed_by_lower: bool,
}

pub struct Shared {
    store: Mutex<LmdbStore>,
    changes: watch::Sender<u64>,
    events: mpsc::UnboundedSender<NodeEvent>,
    links: Mutex<HashMap<[u8; 32], LiveLink>>,
    policy: RwLock<NodePolicy>,
    next_link: AtomicU64,
    pub own_identity: [u8; 32],
    pub hop_keys: LocalKeys,
    pub network_key: NetworkKey,
    pub peers_seen: Mutex<std::collections::BTreeSet<[u8; 32]>>,
    /// Direct delivery to contacts we meet ([`crate::direct`]), shared by every session.
    pub direct: Arc<Direct>,
    /// Items to push to a peer as soon as a session with it can
    /// ([`cairn_sync::session::SyncSession::push`]).
    pushes: Mutex<HashMap<[u8; 32], Vec<ItemId>>>,
    changes_log: Mutex<ChangeLog>,
}

/// Pushes waiting per peer; past this the oldest are left to reconciliation.
const MAX_PUSHES_PER_PEER: usize = 1024;

/// Changes remembered for links that have not looked yet; a link further behind runs a
/// round, as for any change it cannot judge.
const MAX_CHANGES: usize = 4096;

/// One change to the store, and which peer already has it: a round with that peer would
/// find nothing new, so links to it skip the round (on LoRa a round costs minutes of
/// airtime). Every other peer's link runs one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The item came from this peer.
    pub from: Option<[u8; 32]>,
    /// The item was pushed to this peer directly ([`Shared::push_to`]).
    pub pushed_to: Option<[u8; 32]>,
}

impl Change {
    fn concerns(&self, peer: &[u8; 32], pushes: bool) -> bool {
        self.from.as_ref() != Some(peer) && (!pushes || self.pushed_to.as_ref() != Some(peer))
    }
}

/// Recent changes, numbered.
#[derive(Debug, Default)]
struct ChangeLog {
    /// Number of the next change.
    next: u64,
    records: std::collections::VecDeque<Change>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        store: LmdbStore,
        policy: NodePolicy,
        own_identity: [u8; 32],
        hop_keys: LocalKeys,
        network_key: NetworkKey,
        direct: Direct,
    ) -> (Arc<Shared>, mpsc::UnboundedReceiver<NodeEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let (changes, _) = watch::channel(0);
        let shared = Shared {
            store: Mutex::new(store),
            changes,
            events,
            links: Mutex::new(HashMap::new()),
            policy: RwLock::new(policy),
            next_link: AtomicU64::new(1),
            own_identity,
            hop_keys,
            network_key,
            peers_seen: Mutex::new(Default::default()),
            direct: Arc::new(direct),
            pushes: Mutex::new(HashMap::new()),
            changes_log: Mutex::new(ChangeLog::default()),
        };
        (Arc::new(shared), receiver)
    }

    /// The sync store, for one engine step. A panic elsewhere while holding it cannot leave
    /// it half-written (LMDB transactions are all or nothing), so a poisoned lock is reused.
    pub fn lock_store(&self) -> MutexGuard<'_, LmdbStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new_link_id(&self) -> LinkId {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records changes to the store and wakes every link to judge them.
    pub fn changed(&self, changes: impl IntoIterator<Item = Change>) {
        {
            let mut log = self.changes_log.lock().unwrap_or_else(|p| p.into_inner());
            for change in changes {
                log.next += 1;
                log.records.push_back(change);
                if log.records.len() > MAX_CHANGES {
                    log.records.pop_front();
                }
            }
        }
        self.wake();
    }

    /// Wakes every link without a change (one may have been replaced).
    pub fn wake(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Where the change log stands: a session starting now covers everything before.
    pub fn change_cursor(&self) -> u64 {
        self.changes_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
    }

    /// Whether the changes since `cursor` need a round with `peer`; moves the cursor.
    /// `pushes`: whether this link sends what is pushed to its peer (frame links do; a LAN
    /// link leaves it to its rounds).
    pub fn needs_round(&self, peer: &[u8; 32], cursor: &mut u64, pushes: bool) -> bool {
        let log = self.changes_log.lock().unwrap_or_else(|p| p.into_inner());
        let first = log.next - log.records.len() as u64;
        let since = std::mem::replace(cursor, log.next);
        if since < first {
            return true;
        }
        log.records
            .iter()
            .skip((since - first) as usize)
            .any(|c| c.concerns(peer, pushes))
    }

    /// Queues `id` to be pushed to `peer` by whichever link reaches it (now or later).
    /// Returns false when the queue is full: then only reconciliation will carry it, and
    /// the change must be logged as one the peer does not have.
    pub fn push_to(&self, peer: [u8; 32], id: ItemId) -> bool {
        let mut pushes = self.pushes.lock().unwrap_or_else(|p| p.into_inner());
        let queue = pushes.entry(peer).or_default();
        if queue.len() >= MAX_PUSHES_PER_PEER {
            return false;
        }
        queue.push(id);
        true
    }

    /// The pushes waiting for `peer`, handed to its session.
    pub fn take_pushes(&self, peer: &[u8; 32]) -> Vec<ItemId> {
        self.pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer)
            .unwrap_or_default()
    }

    pub fn report(&self, event: SyncEvent) {
        let _ = self.events.send(NodeEvent::Sync(event));
    }

    pub fn policy(&self) -> NodePolicy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_policy(&self, policy: NodePolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// Registers a link to `peer`; false if another link to it is the one to keep.
    pub fn link_up(&self, peer: [u8; 32], id: LinkId, outbound: bool) -> bool {
        let we_are_lower = self.own_identity < peer;
        let dialed_by_lower = outbound == we_are_lower;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = links.get(&peer) {
            if existing.dialed_by_lower || !dialed_by_lower {
                return false;
            }
            // The existing link loses: it checks `is_current` whenever it wakes, and the
            // change notification below wakes it.
        }
        links.insert(
            peer,
            LiveLink {
                id,
                dialed_by_lower,
            },
        );
        drop(links);
        self.peers_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
        let _ = self.events.send(NodeEvent::LinkUp { peer });
        self.wake();
        true
    }

    /// Whether link `id` is still the one kept for `peer`.
    pub fn is_current(&self, peer: &[u8; 32], id: LinkId) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .is_some_and(|l| l.id == id)
    }

    pub fn link_down(&self, peer: &[u8; 32], id: LinkId) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(peer).is_some_and(|l| l.id == id) {
            links.remove(peer);
            let _ = self.events.send(NodeEvent::LinkDown { peer: *peer });
        }
    }

    pub fn links_up(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
