//! The discrete-event core: real [`SyncSession`]s over simulated links in virtual time.
//!
//! ## Model
//!
//! * Every node owns one store and one [`NodePolicy`]; all its sessions share the store.
//! * A contact opens a session pair (lower index = initiator). Each direction of a link is a
//!   serial line of `bytes_per_s`: a frame of L bytes occupies it for L/rate and arrives a
//!   fixed per-frame latency later. The sender's next frame is polled when the line is free,
//!   so latency is pipelined but serialisation is not.
//! * Overlapping contacts of the same pair (Helsinki trams have two radios) are **one link**
//!   whose rate is the fastest radio currently up: a real device would move the session to
//!   the better bearer, not run two syncs of the same store against the same peer.
//! * A lost frame breaks the ordered channel: both sessions are dropped when the gap would be
//!   noticed (the frame's arrival time) and reopened after a back-off if the contact lasts.
//!   The end of a contact cuts everything in flight; partial items stay in the stores.
//! * A node's store changing (a message written, an item received) is announced to its
//!   other open sessions with `notify_store_changed`.
//! * Expiry runs lazily, at most once a minute per node, when a contact starts.
//!
//! ## Determinism
//!
//! Events are ordered by (time in µs, insertion sequence), never by a hash map's order; all
//! randomness comes from [`SimRng`] streams derived from the seed and the link's pair.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use cairn_sync::envelope::{Envelope, ItemId, Priority, ReceiptProof, ScopeTag, MAX_LIFETIME_SECS};
use cairn_sync::policy::{NodePolicy, RoutingPolicy};
use cairn_sync::session::{self, Role, SessionConfig, SyncError, SyncEvent, SyncSession};
use cairn_sync::store::{ItemKind, Store};
use cairn_sync::time::Timestamp;

use super::rng::SimRng;
use super::trace::Trace;

/// Virtual time 0 is this wall-clock instant (2026-01-01T00:00:00Z), so the engine sees
/// plausible Unix timestamps rather than dates in 1970.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Knobs of the link and node model (not of the world: that is the [`Trace`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub seed: u64,
    pub mtu: usize,
    /// Probability that a frame is lost (and the session with it).
    pub loss: f64,
    pub buffer_bytes: u64,
    /// Copy budget of every message (binary spray); 255 is close to epidemic.
    pub copies: u8,
    /// Hand last copies towards the destination ([`RoutingPolicy::focus`]); off is plain
    /// spray-and-wait.
    pub focus: bool,
    /// Propagation plus processing delay of every frame.
    pub frame_latency_ms: u64,
    /// Wait before reopening a session broken by a lost frame.
    pub reconnect_backoff_ms: u64,
    /// Least virtual time between two expiry passes on one node.
    pub expire_every_ms: u64,
    /// The sessions' [`SessionConfig::stall_timeout_ms`]: a round with nothing heard from
    /// the peer for this long is abandoned.
    pub stall_timeout_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            seed: 1,
            mtu: 1024,
            loss: 0.0,
            buffer_bytes: 1 << 30,
            copies: 255,
            focus: true,
            frame_latency_ms: 10,
            reconnect_backoff_ms: 2_000,
            expire_every_ms: 60_000,
            stall_timeout_ms: SessionConfig::new(1024, NodePolicy::default()).stall_timeout_ms,
        }
    }
}

/// Counters and per-message outcomes of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineOutcome {
    /// Per message (trace order): when its destination got it, in virtual ms.
    pub delivered_ms: Vec<Option<u64>>,
    /// Per message: contacts crossed by the copy that was delivered (0 when undelivered).
    pub delivered_hops: Vec<u32>,
    pub duplicate_deliveries: u64,
    pub misdeliveries: u64,
    /// Envelope sends completed (last chunk left the sender), all hops.
    pub envelope_transfers: u64,
    pub tombstone_transfers: u64,
    /// Last copies handed on with custody (focus phase).
    pub handovers: u64,
    /// Per message: most nodes holding a copy at one instant before it was delivered (or
    /// ever, if it never was); the sender counts.
    pub peak_copies: Vec<u32>,
    pub items_refused: u64,
    /// Refusals by reason (`Tombstoned`, `Expired`, ...).
    pub items_refused_reasons: BTreeMap<String, u64>,
    pub receipts_for_own: u64,
    pub recon_bytes: u64,
    /// Reconciliation rounds completed (counted once per side).
    pub rounds: u64,
    pub bytes_on_air: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub sessions_opened: u64,
    pub session_errors: u64,
    /// Session errors by message (ordered map, so the report stays deterministic).
    pub session_error_reasons: BTreeMap<String, u64>,
    pub items_expired: u64,
    /// Messages the sender's own store refused (its quota is full of its own messages, or
    /// smaller than the message).
    pub originate_failures: u64,
    /// Messages still undelivered and unexpired at the end that no node holds any more:
    /// evicted from full buffers, or lost by a bug (with ample buffers this must be 0).
    pub vanished: u64,
}

/// Why a run could not be carried out (as opposed to a session failing, which is counted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("message {name}: {reason}")]
    BadMessage { name: String, reason: String },
    #[error("session setup failed: {0}")]
    Session(#[from] SyncError),
    #[error("the trace names {0} nodes but {1} stores were given")]
    StoreCount(usize, usize),
}

/// The scope tag node `index` receives on: derived, not random, so that every run and every
/// tool agrees on it.
pub fn node_scope(index: usize) -> ScopeTag {
    let hash = blake3::derive_key("cairn-sim 2026 node scope", &(index as u64).to_le_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&hash[..8]);
    ScopeTag(tag)
}

/// The policy every simulated node runs with.
pub fn node_policy(index: usize, config: &EngineConfig) -> NodePolicy {
    NodePolicy {
        carries_for_others: true,
        scopes: vec![node_scope(index)],
        routing: RoutingPolicy {
            max_copies_accepted: config.copies.max(1),
            focus: config.focus,
        },
        quota_bytes: config.buffer_bytes,
        clock_skew_tolerance_secs: 0,
    }
}

/// The envelope of message `index`: its body starts with the index (so ids are unique even
/// for identical traces rows) and is `size_bytes` long (at least 8).
pub fn message_envelope(index: usize, trace: &Trace, copies: u8) -> Result<Envelope, EngineError> {
    let m = &trace.messages[index];
    let bad = |reason: String| EngineError::BadMessage {
        name: m.name.clone(),
        reason,
    };
    let lifetime_secs = u32::try_from(m.ttl_s)
        .ok()
        .filter(|t| *t <= MAX_LIFETIME_SECS)
        .ok_or_else(|| bad(format!("ttl {} s above the protocol's limit", m.ttl_s)))?;
    let size = usize::try_from(m.size_bytes)
        .map_err(|_| bad("size does not fit in memory".into()))?
        .max(8);
    let mut body = vec![0u8; size];
    body[..8].copy_from_slice(&(index as u64).to_be_bytes());
    let envelope = Envelope {
        created_at_secs: (EPOCH_MS + m.created_ms) / 1000,
        lifetime_secs,
        scope: node_scope(m.to),
        priority: Priority::Normal,
        copy_budget: copies.max(1),
        receipt_lock: message_proof(index).lock(),
        body,
    };
    envelope.validate().map_err(|e| bad(e.to_string()))?;
    Ok(envelope)
}

/// The receipt proof of message `index`. A real recipient derives it from the message key;
/// simulated bodies are not sealed, so it is derived from the index (deterministic, and
/// unknown to no simulated node: the simulator does not model forgers).
pub fn message_proof(index: usize) -> ReceiptProof {
    let hash = blake3::derive_key(
        "cairn-sim 2026 receipt proof",
        &(index as u64).to_le_bytes(),
    );
    let mut proof = [0u8; 16];
    proof.copy_from_slice(&hash[..16]);
    ReceiptProof(proof)
}

/// What happens at an instant of virtual time.
#[derive(Debug)]
enum Event {
    Originate {
        message: usize,
    },
    ContactUp {
        contact: usize,
    },
    ContactDown {
        contact: usize,
    },
    /// A frame reaches the far end of direction `dir` (0: a→b, 1: b→a).
    FrameArrives {
        link: usize,
        epoch: u64,
        dir: usize,
        frame: Vec<u8>,
    },
    /// The sender's line in direction `dir` finished serialising its last frame.
    LineFree {
        link: usize,
        epoch: u64,
        dir: usize,
    },
    /// A lost frame's gap is noticed: the session pair is torn down.
    Break {
        link: usize,
        epoch: u64,
    },
    Reopen {
        link: usize,
        epoch: u64,
    },
    Timer {
        link: usize,
        epoch: u64,
        side: usize,
    },
}

/// The pair of sessions of an open link.
#[derive(Debug)]
struct LinkSessions {
    sides: [SyncSession; 2],
    /// Until when each direction's line is busy (µs).
    busy_until_us: [u64; 2],
    /// A direction whose frame was lost sends nothing more in this session.
    doomed: [bool; 2],
    /// The timer instant (µs) last scheduled per side, so stale timer events are ignored.
    timer_us: [Option<u64>; 2],
}

#[derive(Debug)]
struct Link {
    nodes: [usize; 2],
    /// Contacts of this pair currently up, with their rates.
    up: Vec<(usize, u64)>,
    rate: u64,
    /// Bumped whenever the session pair is replaced or dropped: events carry the epoch they
    /// were scheduled under and are ignored if it moved on.
    epoch: u64,
    sessions: Option<LinkSessions>,
    /// One stream per direction, derived from the seed and the pair.
    loss_rng: [SimRng; 2],
    opened: u64,
}

#[derive(Debug)]
struct Node<S> {
    store: S,
    policy: NodePolicy,
    /// Links with an open session pair, ordered so notification order is deterministic.
    open_links: BTreeSet<usize>,
    last_expire_ms: Option<u64>,
}

/// One simulation run over a trace.
#[derive(Debug)]
pub struct Engine<'t, S> {
    trace: &'t Trace,
    config: EngineConfig,
    nodes: Vec<Node<S>>,
    links: Vec<Link>,
    /// Which link each contact belongs to.
    contact_link: Vec<usize>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Event payloads by slot; the heap orders (time, seq, slot).
    slots: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    seq: u64,
    now_us: u64,
    message_of: HashMap<ItemId, usize>,
    /// The envelope id of each message, once originated.
    message_ids: Vec<Option<ItemId>>,
    /// Hop count of the first copy each node got, per message; only for messages in flight.
    hops: HashMap<(usize, usize), u32>,
    /// Nodes that held a copy of each message when last looked at (some may have dropped
    /// it since: receipts and evictions are not announced, so the set is re-checked against
    /// the stores whenever it grows).
    holders: HashMap<usize, BTreeSet<usize>>,
    out: EngineOutcome,
}

impl<'t, S: Store> Engine<'t, S> {
    /// Prepares a run; `stores[i]` becomes node `i`'s store (empty stores expected).
    pub fn new(
        trace: &'t Trace,
        config: EngineConfig,
        stores: Vec<S>,
    ) -> Result<Self, EngineError> {
        if stores.len() != trace.nodes {
            return Err(EngineError::StoreCount(trace.nodes, stores.len()));
        }
        let nodes = stores
            .into_iter()
            .enumerate()
            .map(|(i, store)| Node {
                store,
                policy: node_policy(i, &config),
                open_links: BTreeSet::new(),
                last_expire_ms: None,
            })
            .collect();
        let mut links = Vec::new();
        let mut link_of_pair = HashMap::new();
        let mut contact_link = Vec::with_capacity(trace.contacts.len());
        for c in &trace.contacts {
            let id = *link_of_pair.entry((c.a, c.b)).or_insert_with(|| {
                links.push(Link {
                    nodes: [c.a, c.b],
                    up: Vec::new(),
                    rate: 0,
                    epoch: 0,
                    sessions: None,
                    loss_rng: [
                        SimRng::derive(config.seed, "link-loss", &[c.a as u64, c.b as u64, 0]),
                        SimRng::derive(config.seed, "link-loss", &[c.a as u64, c.b as u64, 1]),
                    ],
                    opened: 0,
                });
                links.len() - 1
            });
            contact_link.push(id);
        }
        let mut engine = Engine {
            trace,
            config,
            nodes,
            links,
            contact_link,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            now_us: 0,
            message_of: HashMap::new(),
            message_ids: vec![None; trace.messages.len()],
            holders: HashMap::new(),
            hops: HashMap::new(),
            out: EngineOutcome {
                delivered_ms: vec![None; trace.messages.len()],
                peak_copies: vec![0; trace.messages.len()],
                delivered_hops: vec![0; trace.messages.len()],
                ..EngineOutcome::default()
            },
        };
        // Insertion order settles ties at one instant: messages written at T are in the
        // store before a contact starting at T, and a contact ending at T closes before one
        // starting at T opens (a fresh session, as a real reconnect would be).
        for (i, m) in trace.messages.iter().enumerate() {
            engine.schedule(m.created_ms * 1000, Event::Originate { message: i });
        }
        for (i, c) in trace.contacts.iter().enumerate() {
            engine.schedule(c.end_ms * 1000, Event::ContactDown { contact: i });
        }
        for (i, c) in trace.contacts.iter().enumerate() {
            engine.schedule(c.start_ms * 1000, Event::ContactUp { contact: i });
        }
        Ok(engine)
    }

    /// Runs until the last contact ends (nothing can move afterwards) and returns what
    /// happened, along with the stores for inspection.
    pub fn run(mut self) -> Result<(EngineOutcome, Vec<S>), EngineError> {
        let horizon_us = self.trace.horizon_ms() * 1000;
        while let Some(Reverse((time_us, _seq, slot))) = self.queue.pop() {
            let Some(event) = self.slots[slot].take() else {
                continue;
            };
            self.free_slots.push(slot);
            if time_us > horizon_us && !matches!(event, Event::Originate { .. }) {
                continue;
            }
            self.now_us = time_us;
            self.handle(event)?;
        }
        self.count_vanished(horizon_us / 1000);
        let stores = self.nodes.into_iter().map(|n| n.store).collect();
        Ok((self.out, stores))
    }

    fn schedule(&mut self, time_us: u64, event: Event) {
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                self.slots.len() - 1
            }
        };
        self.queue.push(Reverse((time_us, self.seq, slot)));
        self.seq += 1;
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_millis(EPOCH_MS + self.now_us / 1000)
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    fn handle(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::Originate { message } => self.originate(message)?,
            Event::ContactUp { contact } => self.contact_up(contact),
            Event::ContactDown { contact } => self.contact_down(contact),
            Event::FrameArrives {
                link,
                epoch,
                dir,
                frame,
            } => {
                if self.links[link].epoch == epoch {
                    self.frame_arrives(link, dir, &frame);
                }
            }
            Event::LineFree { link, epoch, dir } => {
                if self.links[link].epoch == epoch {
                    self.pump(link, dir);
                }
            }
            Event::Break { link, epoch } => {
                if self.links[link].epoch == epoch {
                    self.close_link(link);
                    let at = self.now_us + self.config.reconnect_backoff_ms * 1000;
                    let epoch = self.links[link].epoch;
                    self.schedule(at, Event::Reopen { link, epoch });
                }
            }
            Event::Reopen { link, epoch } => {
                let l = &self.links[link];
                if l.epoch == epoch && l.sessions.is_none() && !l.up.is_empty() {
                    self.open_link(link);
                }
            }
            Event::Timer { link, epoch, side } => {
                if self.links[link].epoch == epoch {
                    self.timer(link, side);
                }
            }
        }
        Ok(())
    }

    fn originate(&mut self, message: usize) -> Result<(), EngineError> {
        let m = &self.trace.messages[message];
        let envelope = message_envelope(message, self.trace, self.config.copies)?;
        let now = self.now();
        let node = &mut self.nodes[m.from];
        match session::originate(&mut node.store, &node.policy, &envelope, now) {
            Ok(id) => {
                self.message_of.insert(id, message);
                self.message_ids[message] = Some(id);
                self.hops.insert((m.from, message), 0);
                self.count_holder(message, m.from);
                self.store_changed(m.from, None);
            }
            Err(_) => self.out.originate_failures += 1,
        }
        Ok(())
    }

    fn contact_up(&mut self, contact: usize) {
        let c = &self.trace.contacts[contact];
        let link = self.contact_link[contact];
        let l = &mut self.links[link];
        l.up.push((contact, c.bytes_per_s));
        l.rate = l.up.iter().map(|u| u.1).max().unwrap_or(c.bytes_per_s);
        if l.sessions.is_none() {
            for node in [c.a, c.b] {
                self.maybe_expire(node);
            }
            self.open_link(link);
        }
    }

    fn contact_down(&mut self, contact: usize) {
        let link = self.contact_link[contact];
        let l = &mut self.links[link];
        l.up.retain(|u| u.0 != contact);
        if l.up.is_empty() {
            self.close_link(link);
            // Invalidate any pending reopen as well.
            self.links[link].epoch += 1;
        } else {
            l.rate = l.up.iter().map(|u| u.1).max().unwrap_or(l.rate);
        }
    }

    fn maybe_expire(&mut self, node: usize) {
        let now_ms = self.now_ms();
        let now = self.now();
        let every = self.config.expire_every_ms;
        let n = &mut self.nodes[node];
        if n.last_expire_ms.is_some_and(|t| now_ms < t + every) {
            return;
        }
        n.last_expire_ms = Some(now_ms);
        match session::expire(&mut n.store, &n.policy, now) {
            Ok(count) => self.out.items_expired += count as u64,
            Err(error) => self.count_error(&error),
        }
    }

    fn open_link(&mut self, link: usize) {
        let now = self.now();
        let [a, b] = self.links[link].nodes;
        let opened = self.links[link].opened;
        let mut seeds = SimRng::derive(self.config.seed, "session", &[a as u64, b as u64, opened]);
        let mut make = |me: usize, peer: usize, role: Role| {
            let config = SessionConfig {
                stall_timeout_ms: self.config.stall_timeout_ms,
                ..SessionConfig::new(self.config.mtu, self.nodes[me].policy.clone())
            };
            SyncSession::new(
                config,
                role,
                (peer as u64).to_be_bytes().to_vec(),
                seeds.next_u64(),
                now,
            )
        };
        let (sa, sb) = match (make(a, b, Role::Initiator), make(b, a, Role::Responder)) {
            (Ok(sa), Ok(sb)) => (sa, sb),
            (Err(error), _) | (_, Err(error)) => {
                self.count_error(&error);
                return;
            }
        };
        let l = &mut self.links[link];
        l.epoch += 1;
        l.opened += 1;
        l.sessions = Some(LinkSessions {
            sides: [sa, sb],
            busy_until_us: [self.now_us; 2],
            doomed: [false; 2],
            timer_us: [None; 2],
        });
        self.out.sessions_opened += 1;
        self.nodes[a].open_links.insert(link);
        self.nodes[b].open_links.insert(link);
        self.pump(link, 0);
        self.pump(link, 1);
    }

    fn close_link(&mut self, link: usize) {
        let l = &mut self.links[link];
        if l.sessions.take().is_some() {
            l.epoch += 1;
            let [a, b] = l.nodes;
            self.nodes[a].open_links.remove(&link);
            self.nodes[b].open_links.remove(&link);
        }
    }

    /// Sends the next frame in direction `dir` if the line is free and the sender has one.
    fn pump(&mut self, link: usize, dir: usize) {
        let now = self.now();
        let now_us = self.now_us;
        let l = &mut self.links[link];
        let rate = l.rate.max(1);
        let epoch = l.epoch;
        let node = l.nodes[dir];
        let Some(s) = l.sessions.as_mut() else {
            return;
        };
        if s.busy_until_us[dir] > now_us || s.doomed[dir] {
            return;
        }
        let result = s.sides[dir].poll_transmit(now, &mut self.nodes[node].store);
        let frame = match result {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.drain(link, dir);
                self.arm_timer(link, dir);
                return;
            }
            Err(error) => {
                self.session_failed(link, &error);
                return;
            }
        };
        let len = frame.len() as u64;
        let tx_us = (len * 1_000_000).div_ceil(rate);
        let done_us = now_us + tx_us;
        s.busy_until_us[dir] = done_us;
        let lost = l.loss_rng[dir].chance(self.config.loss);
        if lost {
            s.doomed[dir] = true;
        }
        self.out.frames += 1;
        self.out.bytes_on_air += len;
        let arrive_us = done_us + self.config.frame_latency_ms * 1000;
        self.schedule(done_us, Event::LineFree { link, epoch, dir });
        if lost {
            self.out.frames_lost += 1;
            self.schedule(arrive_us, Event::Break { link, epoch });
        } else {
            self.schedule(
                arrive_us,
                Event::FrameArrives {
                    link,
                    epoch,
                    dir,
                    frame,
                },
            );
        }
        self.drain(link, dir);
        self.arm_timer(link, dir);
    }

    fn frame_arrives(&mut self, link: usize, dir: usize, frame: &[u8]) {
        let now = self.now();
        let receiver = 1 - dir;
        let l = &mut self.links[link];
        let node = l.nodes[receiver];
        let Some(s) = l.sessions.as_mut() else {
            return;
        };
        let result = s.sides[receiver].handle_frame(now, frame, &mut self.nodes[node].store);
        // Events first: what was committed happened even if the frame then failed.
        self.drain(link, receiver);
        if let Err(error) = result {
            self.session_failed(link, &error);
            return;
        }
        self.pump(link, 0);
        self.pump(link, 1);
        self.arm_timer(link, receiver);
    }

    fn timer(&mut self, link: usize, side: usize) {
        let now = self.now();
        let now_us = self.now_us;
        let Some(s) = self.links[link].sessions.as_mut() else {
            return;
        };
        if s.timer_us[side] != Some(now_us) {
            return;
        }
        s.timer_us[side] = None;
        if let Err(error) = s.sides[side].handle_timeout(now) {
            self.session_failed(link, &error);
            return;
        }
        self.pump(link, side);
        self.arm_timer(link, side);
    }

    fn arm_timer(&mut self, link: usize, side: usize) {
        let epoch = self.links[link].epoch;
        let Some(s) = self.links[link].sessions.as_mut() else {
            return;
        };
        let Some(at) = s.sides[side].poll_timeout() else {
            s.timer_us[side] = None;
            return;
        };
        let at_us = at
            .as_millis()
            .saturating_sub(EPOCH_MS)
            .saturating_mul(1000)
            .max(self.now_us);
        if s.timer_us[side] == Some(at_us) {
            return;
        }
        s.timer_us[side] = Some(at_us);
        self.schedule(at_us, Event::Timer { link, epoch, side });
    }

    /// A session ended on an error: count it and drop the pair; a real node would redial
    /// while the peer is in range, so reopen after the back-off.
    fn session_failed(&mut self, link: usize, error: &SyncError) {
        self.count_error(error);
        self.close_link(link);
        let at = self.now_us + self.config.reconnect_backoff_ms * 1000;
        let epoch = self.links[link].epoch;
        self.schedule(at, Event::Reopen { link, epoch });
    }

    fn count_error(&mut self, error: &SyncError) {
        self.out.session_errors += 1;
        *self
            .out
            .session_error_reasons
            .entry(error.to_string())
            .or_insert(0) += 1;
    }

    /// Collects the events of one side and acts on them.
    fn drain(&mut self, link: usize, side: usize) {
        let node = self.links[link].nodes[side];
        let peer = self.links[link].nodes[1 - side];
        let mut changed = false;
        while let Some(event) = self.links[link]
            .sessions
            .as_mut()
            .and_then(|s| s.sides[side].poll_event())
        {
            match event {
                SyncEvent::ItemStored { id, kind, .. } => {
                    changed = true;
                    if matches!(kind, ItemKind::Envelope) {
                        self.record_hop(id, node, peer);
                        if let Some(&message) = self.message_of.get(&id) {
                            self.count_holder(message, node);
                        }
                    }
                }
                SyncEvent::Delivered { id } => {
                    changed = true;
                    self.delivered(id, node, peer);
                    // The application takes it at once and publishes the receipt.
                    self.acknowledge(node, id);
                    if let Some(s) = self.links[link].sessions.as_mut() {
                        s.sides[side].notify_store_changed();
                    }
                }
                SyncEvent::ReceiptForOwn { .. } => {
                    changed = true;
                    self.out.receipts_for_own += 1;
                }
                SyncEvent::ItemRefused { reason, .. } => {
                    self.out.items_refused += 1;
                    *self
                        .out
                        .items_refused_reasons
                        .entry(format!("{reason:?}"))
                        .or_insert(0) += 1;
                }
                SyncEvent::ItemSent { id, .. } => {
                    if self.message_of.contains_key(&id) {
                        self.out.envelope_transfers += 1;
                    } else {
                        self.out.tombstone_transfers += 1;
                    }
                }
                SyncEvent::HandedOver { .. } => self.out.handovers += 1,
                SyncEvent::RoundComplete {
                    recon_bytes_sent, ..
                } => {
                    self.out.recon_bytes += recon_bytes_sent;
                    self.out.rounds += 1;
                }
                _ => {}
            }
        }
        if changed {
            self.store_changed(node, Some(link));
        }
    }

    fn count_vanished(&mut self, horizon_ms: u64) {
        for (message, id) in self.message_ids.iter().enumerate() {
            let Some(id) = id else { continue };
            let expired = self.trace.messages[message].expires_ms() <= horizon_ms;
            if self.out.delivered_ms[message].is_some() || expired {
                continue;
            }
            let held = self
                .nodes
                .iter()
                .any(|n| n.store.contains(id).unwrap_or(false));
            if !held {
                self.out.vanished += 1;
            }
        }
    }

    /// `node` now holds a copy of `message`: update the message's peak of simultaneous
    /// copies, until it is delivered.
    fn count_holder(&mut self, message: usize, node: usize) {
        if self.out.delivered_ms[message].is_some() {
            self.holders.remove(&message);
            return;
        }
        let Some(id) = self.message_ids[message] else {
            return;
        };
        let holders = self.holders.entry(message).or_default();
        let nodes = &self.nodes;
        holders.retain(|&n| nodes[n].store.contains(&id).unwrap_or(false));
        holders.insert(node);
        let peak = &mut self.out.peak_copies[message];
        *peak = (*peak).max(holders.len() as u32);
    }

    fn record_hop(&mut self, id: ItemId, node: usize, peer: usize) {
        if let Some(&message) = self.message_of.get(&id) {
            let from = self.hops.get(&(peer, message)).copied().unwrap_or(0);
            self.hops.entry((node, message)).or_insert(from + 1);
        }
    }

    fn acknowledge(&mut self, node: usize, id: ItemId) {
        let Some(&message) = self.message_of.get(&id) else {
            return;
        };
        let now = self.now();
        if session::acknowledge(
            &mut self.nodes[node].store,
            &id,
            message_proof(message),
            now,
        )
        .is_err()
        {
            self.out.session_errors += 1;
            *self
                .out
                .session_error_reasons
                .entry("acknowledge failed".into())
                .or_insert(0) += 1;
        }
    }

    fn delivered(&mut self, id: ItemId, node: usize, peer: usize) {
        let Some(&message) = self.message_of.get(&id) else {
            self.out.misdeliveries += 1;
            return;
        };
        if self.trace.messages[message].to != node {
            self.out.misdeliveries += 1;
            return;
        }
        if self.out.delivered_ms[message].is_some() {
            self.out.duplicate_deliveries += 1;
            return;
        }
        self.out.delivered_ms[message] = Some(self.now_ms());
        let from = self.hops.get(&(peer, message)).copied().unwrap_or(0);
        self.out.delivered_hops[message] = from + 1;
    }

    /// Tells `node`'s other open sessions that its store changed, and lets them send.
    fn store_changed(&mut self, node: usize, except: Option<usize>) {
        let links: Vec<usize> = self.nodes[node]
            .open_links
            .iter()
            .copied()
            .filter(|l| Some(*l) != except)
            .collect();
        for link in links {
            let l = &mut self.links[link];
            let side = if l.nodes[0] == node { 0 } else { 1 };
            if let Some(s) = l.sessions.as_mut() {
                s.sides[side].notify_store_changed();
            }
            self.pump(link, side);
        }
    }
}
