//! Two real sync engines driven against each other in memory (quinn's `Pair`): convergence,
//! cuts at every point, delivery and receipts, hostile frames.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::collections::{BTreeSet, HashMap};

use cairn_sync::envelope::{Envelope, Item, ItemId, Priority, ReceiptProof, ScopeTag, Tombstone};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{self, RefusedBecause, Role, SessionConfig, SyncEvent, SyncSession};
use cairn_sync::store::{
    Encounter, ItemKind, ItemMeta, MemStore, Origin, PeerTag, ReconFilter, Store, StoredItem,
    WriteBatch, WriteOp,
};
use cairn_sync::time::Timestamp;
use proptest::prelude::*;

const T0: u64 = 1_790_000_000; // 2026-09

fn scope(n: u8) -> ScopeTag {
    ScopeTag([n; 8])
}

fn envelope(n: u32, to: u8, body_len: usize) -> Envelope {
    let mut body = vec![0u8; body_len.max(4)];
    body[..4].copy_from_slice(&n.to_le_bytes());
    Envelope {
        created_at_secs: T0 + n as u64,
        lifetime_secs: 7 * 24 * 3600,
        scope: scope(to),
        priority: if body_len <= 200 {
            Priority::High
        } else {
            Priority::Normal
        },
        copy_budget: 8,
        receipt_lock: proof_for(&body).lock(),
        body,
    }
}

/// The receipt proof of a test envelope: derived from its body (a real sender derives it
/// from the message key, so only the recipient can compute it).
fn proof_for(body: &[u8]) -> ReceiptProof {
    let hash = blake3::derive_key("cairn test receipt proof", body);
    let mut proof = [0u8; 16];
    proof.copy_from_slice(&hash[..16]);
    ReceiptProof(proof)
}

/// What a recipient's application does on `Delivered`: take the message, publish the receipt.
fn acknowledge_all(node: &mut Node, session: &mut SyncSession, now: Timestamp) {
    for entry in node.store.inbox(usize::MAX).unwrap() {
        let Item::Envelope(envelope) = Item::decode(&entry.encoded).unwrap() else {
            panic!("inbox holds a tombstone");
        };
        session::acknowledge(&mut node.store, &entry.id, proof_for(&envelope.body), now).unwrap();
        node.taken.push(envelope);
        session.notify_store_changed();
    }
}

struct Node {
    /// The stable key its peers know it by.
    key: Vec<u8>,
    store: MemStore,
    policy: NodePolicy,
    events: Vec<SyncEvent>,
    /// Envelopes the application took from the inbox (and acknowledged).
    taken: Vec<Envelope>,
}

impl Node {
    fn new(own_scope: u8) -> Self {
        Node {
            key: vec![own_scope],
            store: MemStore::new(),
            policy: NodePolicy {
                scopes: vec![scope(own_scope)],
                ..NodePolicy::default()
            },
            events: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// A node that met `peers` other people in the last few minutes.
    fn busy(own_scope: u8, peers: u8) -> Self {
        let mut node = Node::new(own_scope);
        let mut batch = WriteBatch::new();
        for p in 0..peers {
            batch.push(WriteOp::RecordEncounter(Encounter {
                peer: PeerTag::of(&[200, p]),
                at_secs: T0 + 3000 + u64::from(p),
            }));
        }
        node.store.commit(batch).unwrap();
        node
    }

    fn send(&mut self, env: &Envelope, now: Timestamp) -> ItemId {
        session::originate(&mut self.store, &self.policy, env, now).unwrap()
    }

    fn ids(&self) -> BTreeSet<ItemId> {
        let mut keys = Vec::new();
        self.store
            .for_each_recon_key(&ReconFilter::All, &mut |k| keys.push(k))
            .unwrap();
        keys.into_iter()
            .map(|k| self.store.resolve(k).unwrap().unwrap())
            .collect()
    }

    fn delivered(&self) -> Vec<ItemId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Delivered { id } => Some(*id),
                _ => None,
            })
            .collect()
    }
}

/// Outcome of driving a pair.
#[derive(Debug, Default)]
struct Run {
    frames: usize,
    bytes: usize,
    completed: bool,
}

/// Drives sessions between `a` (initiator) and `b` until both are idle, `max_frames` frames
/// have moved (a cut), or something fails. Frames alternate direction as a half-duplex link
/// would; the channel is ordered and lossless.
fn drive(a: &mut Node, b: &mut Node, mtu: usize, now: Timestamp, max_frames: usize) -> Run {
    let (mut sa, mut sb) = sessions(a, b, mtu);
    let mut run = Run::default();
    loop {
        let mut moved = false;
        for dir in 0..2 {
            if run.frames >= max_frames {
                return run;
            }
            let (from, to, sf, st) = if dir == 0 {
                (&mut *a, &mut *b, &mut sa, &mut sb)
            } else {
                (&mut *b, &mut *a, &mut sb, &mut sa)
            };
            if let Some(frame) = sf.poll_transmit(now, &mut from.store).unwrap() {
                assert!(frame.len() <= mtu, "frame of {} > mtu {mtu}", frame.len());
                run.frames += 1;
                run.bytes += frame.len();
                st.handle_frame(now, &frame, &mut to.store).unwrap();
                moved = true;
            }
            while let Some(e) = sf.poll_event() {
                from.events.push(e);
            }
            while let Some(e) = st.poll_event() {
                to.events.push(e);
            }
            acknowledge_all(to, st, now);
        }
        if !moved {
            run.completed = sa.is_idle() && sb.is_idle();
            return run;
        }
        assert!(run.frames < 1_000_000, "sync does not terminate");
    }
}

fn now() -> Timestamp {
    Timestamp::from_secs(T0 + 3600)
}

#[test]
fn equal_stores_finish_in_one_round_trip() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    for n in 0..50 {
        let e = envelope(n, 9, 100);
        a.send(&e, now());
        b.send(&e, now());
    }
    let run = drive(&mut a, &mut b, 65536, now(), usize::MAX);
    assert!(run.completed);
    // Hello + summary one way, hello + "equal" the other.
    assert_eq!(run.frames, 2);
    assert_eq!(a.ids(), b.ids());
}

#[test]
fn carriers_converge_to_the_union() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    for n in 0..300 {
        let e = envelope(n, 9, 50 + (n as usize * 37) % 3000);
        if n % 3 != 0 {
            a.send(&e, now());
        }
        if n % 3 != 1 {
            b.send(&e, now());
        }
    }
    let union: BTreeSet<_> = a.ids().union(&b.ids()).copied().collect();
    let run = drive(&mut a, &mut b, 1400, now(), usize::MAX);
    assert!(run.completed);
    assert_eq!(a.ids(), union);
    assert_eq!(b.ids(), union);
}

#[test]
fn message_reaches_recipient_through_a_carrier_and_the_receipt_comes_back() {
    let mut alice = Node::new(1);
    let mut carrier = Node::new(2);
    let mut bob = Node::new(3);
    let msg = envelope(7, 3, 120);
    let id = alice.send(&msg, now());

    drive(&mut alice, &mut carrier, 200, now(), usize::MAX);
    assert!(carrier.ids().contains(&id), "carrier took a copy");
    drive(&mut carrier, &mut bob, 200, now(), usize::MAX);
    assert_eq!(bob.delivered(), vec![id], "delivered exactly once");
    assert_eq!(bob.taken, vec![msg], "the application got the message");
    assert!(bob.store.inbox(10).unwrap().is_empty());
    assert!(
        !carrier.ids().contains(&id),
        "the receipt purged the carrier's copy"
    );

    drive(&mut carrier, &mut alice, 200, now(), usize::MAX);
    assert!(alice.events.contains(&SyncEvent::ReceiptForOwn { id }));
    assert!(
        !alice.ids().contains(&id),
        "sender forgets a delivered message"
    );

    // Meeting Bob again changes nothing: no second delivery.
    drive(&mut carrier, &mut bob, 200, now(), usize::MAX);
    drive(&mut alice, &mut bob, 200, now(), usize::MAX);
    assert_eq!(bob.delivered(), vec![id]);
}

#[test]
fn a_cut_at_every_point_resumes_without_loss_or_duplicates() {
    // Bodies span several 200-byte frames, so cuts land inside items too.
    let build = || {
        let mut a = Node::new(1);
        let mut b = Node::new(2);
        for n in 0..12 {
            let e = envelope(
                n,
                if n % 4 == 0 { 2 } else { 9 },
                [60, 700, 2500][n as usize % 3],
            );
            if n % 2 == 0 {
                a.send(&e, now());
            } else {
                b.send(&e, now());
            }
        }
        (a, b)
    };
    let (mut a, mut b) = build();
    let full = drive(&mut a, &mut b, 200, now(), usize::MAX);
    assert!(full.completed);
    let expected_a = a.ids();
    let expected_b = b.ids();
    let expected_delivered: BTreeSet<_> = b.delivered().into_iter().collect();
    assert!(!expected_delivered.is_empty());

    for cut in 0..full.frames {
        let (mut a, mut b) = build();
        drive(&mut a, &mut b, 200, now(), cut);
        let resumed = drive(&mut a, &mut b, 200, now(), usize::MAX);
        assert!(resumed.completed, "cut at {cut}: did not finish");
        assert_eq!(a.ids(), expected_a, "cut at {cut}");
        assert_eq!(b.ids(), expected_b, "cut at {cut}");
        let delivered = b.delivered();
        let unique: BTreeSet<_> = delivered.iter().copied().collect();
        assert_eq!(
            unique.len(),
            delivered.len(),
            "cut at {cut}: duplicate delivery"
        );
        assert_eq!(unique, expected_delivered, "cut at {cut}");
        assert!(
            resumed.bytes <= full.bytes + 400,
            "cut at {cut}: resuming resent what had arrived ({} > {})",
            resumed.bytes,
            full.bytes
        );
    }
}

#[test]
fn a_non_carrier_gets_only_its_own_scopes() {
    let mut relay = Node::new(1);
    let mut phone = Node::new(2);
    phone.policy.carries_for_others = false;
    let mine = relay.send(&envelope(1, 2, 80), now());
    let others = relay.send(&envelope(2, 5, 80), now());
    drive(&mut relay, &mut phone, 512, now(), usize::MAX);
    assert_eq!(phone.delivered(), vec![mine]);
    assert!(!phone.ids().contains(&others));
}

#[test]
fn expired_and_future_items_are_refused_but_skewed_clocks_are_tolerated() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let mut old = envelope(1, 9, 80);
    old.created_at_secs = T0 - 10 * 24 * 3600; // expired 3 days ago
    let mut skewed = envelope(2, 9, 80);
    skewed.created_at_secs = now().as_secs() + 12 * 3600; // sender's clock 12 h ahead
    let mut future = envelope(3, 9, 80);
    future.created_at_secs = now().as_secs() + 3 * 24 * 3600;
    for e in [&old, &skewed, &future] {
        a.send(e, now());
    }
    drive(&mut a, &mut b, 4096, now(), usize::MAX);
    let got = b.ids();
    assert!(got.contains(&skewed.id()), "12 h of skew is tolerated");
    assert!(!got.contains(&old.id()));
    assert!(!got.contains(&future.id()));
}

#[test]
fn spray_and_wait_hands_out_half_the_copies() {
    let plain = |n| {
        let mut node = Node::new(n);
        node.policy.routing.focus = false;
        node
    };
    let (mut a, mut b, mut c, mut d, mut e) = (plain(1), plain(2), plain(3), plain(4), plain(5));
    let id = a.send(&envelope(1, 9, 80), now());
    drive(&mut a, &mut b, 4096, now(), usize::MAX);
    assert_eq!(a.store.meta(&id).unwrap().unwrap().copies, 4);
    assert_eq!(b.store.meta(&id).unwrap().unwrap().copies, 4);
    // b holds 4: c gets 2, then d gets 1 of c's 2; c, left with one, waits.
    drive(&mut b, &mut c, 4096, now(), usize::MAX);
    assert_eq!(c.store.meta(&id).unwrap().unwrap().copies, 2);
    drive(&mut c, &mut d, 4096, now(), usize::MAX);
    assert_eq!(c.store.meta(&id).unwrap().unwrap().copies, 1);
    assert_eq!(d.store.meta(&id).unwrap().unwrap().copies, 1);
    drive(&mut c, &mut e, 4096, now(), usize::MAX);
    assert!(!e.ids().contains(&id), "a node with one copy keeps it");
    // ...until it meets the destination.
    let mut dest = Node::new(9);
    drive(&mut c, &mut dest, 4096, now(), usize::MAX);
    assert_eq!(dest.delivered(), vec![id]);
}

/// `a` sends a message with two copies to a quiet carrier `b`, which is left with one.
fn carrier_with_last_copy() -> (Node, Node, ItemId) {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let mut env = envelope(1, 9, 80);
    env.copy_budget = 2;
    let id = a.send(&env, now());
    drive(&mut a, &mut b, 4096, now(), usize::MAX);
    assert_eq!(b.store.meta(&id).unwrap().unwrap().copies, 1);
    (a, b, id)
}

#[test]
fn focus_moves_a_last_copy_to_a_busier_carrier_and_drops_it_only_on_custody() {
    let (_a, mut b, id) = carrier_with_last_copy();
    // A peer about as quiet as b does not get it.
    let mut quiet = Node::busy(3, 1);
    drive(&mut b, &mut quiet, 4096, now(), usize::MAX);
    assert!(!quiet.ids().contains(&id));
    // A busy one does: the copy moves, it does not multiply.
    let mut busy = Node::busy(4, 12);
    let run = drive(&mut b, &mut busy, 4096, now(), usize::MAX);
    assert!(run.completed);
    assert_eq!(busy.store.meta(&id).unwrap().unwrap().copies, 1);
    assert!(!b.ids().contains(&id), "the carrier let go of the copy");
    assert!(b
        .events
        .iter()
        .any(|e| matches!(e, SyncEvent::HandedOver { id: x } if *x == id)));
    // The busy node, with the last copy, still delivers it.
    let mut dest = Node::new(9);
    drive(&mut busy, &mut dest, 4096, now(), usize::MAX);
    assert_eq!(dest.delivered(), vec![id]);
}

#[test]
fn a_handover_cut_at_any_point_never_loses_the_copy() {
    let mut cut_between_store_and_custody = false;
    for max_frames in 1.. {
        let (_a, mut b, id) = carrier_with_last_copy();
        let mut busy = Node::busy(4, 12);
        let run = drive(&mut b, &mut busy, 200, now(), max_frames);
        let at_b = b.ids().contains(&id);
        let at_busy = busy.ids().contains(&id);
        assert!(at_b || at_busy, "copy lost after {max_frames} frames");
        if at_b && at_busy {
            cut_between_store_and_custody = true;
        }
        if run.completed {
            assert!(!at_b && at_busy);
            break;
        }
    }
    assert!(
        cut_between_store_and_custody,
        "some cut falls after the copy was stored and before custody came back"
    );
}

#[test]
fn a_carrier_that_cannot_store_a_handover_leaves_the_copy_where_it_was() {
    let (_a, mut b, id) = carrier_with_last_copy();
    let mut full = Node::busy(4, 12);
    full.policy.quota_bytes = 64; // smaller than the envelope
    drive(&mut b, &mut full, 4096, now(), usize::MAX);
    assert!(full.events.iter().any(|e| matches!(
        e,
        SyncEvent::ItemRefused { id: x, reason: RefusedBecause::NoRoom } if *x == id
    )));
    assert!(!full.ids().contains(&id));
    assert_eq!(b.store.meta(&id).unwrap().unwrap().copies, 1);
}

/// A fresh initiator/responder pair of sessions between `a` and `b`.
fn sessions(a: &Node, b: &Node, mtu: usize) -> (SyncSession, SyncSession) {
    let sa = SyncSession::new(
        SessionConfig::new(mtu, a.policy.clone()),
        Role::Initiator,
        b.key.clone(),
        1,
        now(),
    )
    .unwrap();
    let sb = SyncSession::new(
        SessionConfig::new(mtu, b.policy.clone()),
        Role::Responder,
        a.key.clone(),
        2,
        now(),
    )
    .unwrap();
    (sa, sb)
}

/// Two nodes holding 10 envelopes each, none in common: the sync that frame tests record.
fn recorded_nodes() -> (Node, Node) {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    for n in 0..20 {
        let e = envelope(n, 9, 300);
        if n % 2 == 0 {
            a.send(&e, now());
        } else {
            b.send(&e, now());
        }
    }
    (a, b)
}

fn frames_of_a_sync(mtu: usize) -> Vec<(u8, Vec<u8>)> {
    let (mut a, mut b) = recorded_nodes();
    let (mut sa, mut sb) = sessions(&a, &b, mtu);
    let mut frames = Vec::new();
    loop {
        let mut moved = false;
        if let Some(f) = sa.poll_transmit(now(), &mut a.store).unwrap() {
            sb.handle_frame(now(), &f, &mut b.store).unwrap();
            frames.push((0, f));
            moved = true;
        }
        if let Some(f) = sb.poll_transmit(now(), &mut b.store).unwrap() {
            sa.handle_frame(now(), &f, &mut a.store).unwrap();
            frames.push((1, f));
            moved = true;
        }
        if !moved {
            return frames;
        }
    }
}

/// Replays a (possibly mangled) frame sequence into fresh engines. Must never panic; returns
/// whether every frame was accepted, and checks that nothing foreign entered the stores.
fn replay(frames: &[(u8, Vec<u8>)], mtu: usize) -> bool {
    let legit: BTreeSet<ItemId> = (0..20).map(|n| envelope(n, 9, 300).id()).collect();
    let (mut a, mut b) = recorded_nodes();
    let (mut sa, mut sb) = sessions(&a, &b, mtu);
    // Let the initiator emit its hello so its state matches the recording.
    let _ = sa.poll_transmit(now(), &mut a.store);
    let mut ok = true;
    for (dir, f) in frames {
        let r = if *dir == 0 {
            sb.handle_frame(now(), f, &mut b.store)
        } else {
            sa.handle_frame(now(), f, &mut a.store)
        };
        if r.is_err() {
            ok = false;
            break;
        }
    }
    for node in [&a, &b] {
        for id in node.ids() {
            let item = node.store.get(&id).unwrap().unwrap();
            if item.meta.kind == ItemKind::Envelope {
                assert!(legit.contains(&id), "a forged envelope entered a store");
            }
        }
    }
    ok
}

#[test]
fn truncated_and_oversized_frames_are_refused() {
    let frames = frames_of_a_sync(256);
    assert!(frames.len() > 4);
    for i in 0..frames.len() {
        let (dir, f) = &frames[i];
        for cut in [1, f.len() / 2, f.len() - 1] {
            if cut == 0 || cut >= f.len() {
                continue;
            }
            let mut mangled = frames[..i].to_vec();
            mangled.push((*dir, f[..cut].to_vec()));
            // A cut frame either fails to decode or, if it ends on a message boundary, is
            // accepted as fewer messages; it never panics or stores garbage.
            replay(&mangled, 256);
        }
        let mut oversized = frames[..i].to_vec();
        oversized.push((*dir, vec![0u8; 257]));
        assert!(!replay(&oversized, 256), "frame over the MTU accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_two_stores_converge(
        a_only in prop::collection::btree_set(0u32..5000, 0..60),
        b_only in prop::collection::btree_set(5000u32..10000, 0..60),
        shared in prop::collection::btree_set(10000u32..15000, 0..200),
        mtu in prop::sample::select(vec![128usize, 200, 256, 517, 1400, 16384, 65536]),
    ) {
        let mut a = Node::new(1);
        let mut b = Node::new(2);
        for &n in a_only.iter().chain(&shared) {
            a.send(&envelope(n, 9, 40 + (n as usize % 700)), now());
        }
        for &n in b_only.iter().chain(&shared) {
            b.send(&envelope(n, 9, 40 + (n as usize % 700)), now());
        }
        let union: BTreeSet<_> = a.ids().union(&b.ids()).copied().collect();
        let run = drive(&mut a, &mut b, mtu, now(), usize::MAX);
        prop_assert!(run.completed);
        prop_assert_eq!(a.ids(), union.clone());
        prop_assert_eq!(b.ids(), union);
    }

    #[test]
    fn mangled_frames_never_panic(
        idx in 0usize..1000,
        pos in 0usize..1000,
        byte in any::<u8>(),
        swap in any::<bool>(),
    ) {
        let frames = frames_of_a_sync(200);
        let i = idx % frames.len();
        let mut mangled = frames.clone();
        if swap && i + 1 < frames.len() {
            mangled.swap(i, i + 1);
        } else {
            let f = &mut mangled[i].1;
            let p = pos % f.len();
            f[p] ^= byte.max(1);
        }
        replay(&mangled, 200);
    }
}

#[test]
fn counts_are_per_id_not_per_frame() {
    // Sanity for the harness itself: events name each delivered id once.
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let ids: Vec<_> = (0..5).map(|n| a.send(&envelope(n, 2, 90), now())).collect();
    drive(&mut a, &mut b, 200, now(), usize::MAX);
    let mut seen: HashMap<ItemId, usize> = HashMap::new();
    for id in b.delivered() {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), ids.len());
    assert!(seen.values().all(|&n| n == 1));
}

#[test]
fn a_full_buffer_evicts_expired_then_others_but_keeps_our_own() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    b.policy.quota_bytes = 4000;
    b.policy.clock_skew_tolerance_secs = 0;
    let own = b.send(&envelope(1000, 7, 500), now());
    let mut stale = envelope(1001, 7, 500);
    stale.created_at_secs = T0 - 8 * 24 * 3600; // a week-long lifetime, over a day ago
    let stale = b.send(&stale, now());
    // Forty 400-byte envelopes arrive, many per frame: eviction runs repeatedly inside one
    // engine step.
    for n in 0..40 {
        a.send(&envelope(n, 9, 400), now());
    }
    let run = drive(&mut a, &mut b, 65536, now(), usize::MAX);
    assert!(run.completed);
    assert!(b.store.usage().unwrap().bytes <= 4000);
    let held = b.ids();
    assert!(held.contains(&own), "our own undelivered message survives");
    assert!(!held.contains(&stale), "the expired item went first");
    assert!(held.len() >= 6, "the buffer is used, not emptied");
    // A second meeting after the first was committed: newer carried items now displace
    // the oldest committed ones rather than being refused.
    let mut c = Node::new(3);
    for n in 100..104 {
        c.send(&envelope(n, 9, 400), now());
    }
    drive(&mut c, &mut b, 65536, now(), usize::MAX);
    let held = b.ids();
    assert!(held.contains(&own));
    assert!(b.store.usage().unwrap().bytes <= 4000);
    assert!(
        (100..104).all(|n| held.contains(&envelope(n, 9, 400).id())),
        "the newest carried envelopes are kept"
    );
    assert!(
        !held.contains(&envelope(0, 9, 400).id()),
        "the oldest carried envelope was evicted"
    );
}

/// A tombstone for `target` with a proof that does not open its lock, planted in `node`'s
/// store as if it had been received.
fn plant_forged_receipt(node: &mut Node, target: &Envelope) -> ItemId {
    let forged = Tombstone::for_envelope(target, ReceiptProof([0xEE; 16]));
    assert!(!forged.opens(target));
    let item = Item::Tombstone(forged);
    let encoded = item.encode();
    let id = item.id();
    let mut batch = WriteBatch::new();
    batch.push(WriteOp::PutItem(StoredItem {
        id,
        meta: ItemMeta {
            kind: item.kind(),
            priority: Priority::High,
            scope: target.scope,
            expires_at_secs: target.expires_at_secs(),
            created_at_secs: 0,
            stored_at: now(),
            len: encoded.len() as u32,
            copies: 1,
            origin: Origin::Remote,
        },
        encoded,
    }));
    node.store.commit(batch).unwrap();
    id
}

#[test]
fn a_forged_receipt_cannot_purge_a_message() {
    let mut alice = Node::new(1);
    let mut carrier = Node::new(2);
    let msg = envelope(3, 9, 80);
    let id = alice.send(&msg, now());
    drive(&mut alice, &mut carrier, 512, now(), usize::MAX);
    assert!(carrier.ids().contains(&id));

    // Mallory, who cannot read the message, tells the carrier it was delivered.
    let mut mallory = Node::new(6);
    plant_forged_receipt(&mut mallory, &msg);
    drive(&mut mallory, &mut carrier, 512, now(), usize::MAX);
    assert!(carrier.ids().contains(&id), "the carrier kept the message");
    assert!(carrier.events.iter().any(|e| matches!(
        e,
        SyncEvent::ItemRefused {
            reason: RefusedBecause::ForgedReceipt,
            ..
        }
    )));
    // And the message still reaches Bob, whose genuine receipt does purge it.
    let mut bob = Node::new(9);
    drive(&mut carrier, &mut bob, 512, now(), usize::MAX);
    assert_eq!(bob.taken, vec![msg]);
    assert!(!carrier.ids().contains(&id));
}

#[test]
fn a_forged_receipt_received_before_its_message_gives_way_to_it() {
    let mut alice = Node::new(1);
    let msg = envelope(4, 9, 80);
    let id = alice.send(&msg, now());
    // The carrier got the forged receipt first, when it could not check it.
    let mut carrier = Node::new(2);
    let forged = plant_forged_receipt(&mut carrier, &msg);
    drive(&mut alice, &mut carrier, 512, now(), usize::MAX);
    assert!(
        carrier.ids().contains(&id),
        "the message proved the receipt false"
    );
    assert!(!carrier.ids().contains(&forged));
    let mut bob = Node::new(9);
    drive(&mut carrier, &mut bob, 512, now(), usize::MAX);
    assert_eq!(bob.delivered(), vec![id]);
}

#[test]
fn acknowledging_with_the_wrong_proof_publishes_nothing() {
    let mut alice = Node::new(1);
    let msg = envelope(5, 9, 80);
    let id = alice.send(&msg, now());
    let mut bob = Node::new(9);
    let (mut sa, mut sb) = sessions(&alice, &bob, 512);
    // Drive by hand so the application does not acknowledge.
    for _ in 0..100 {
        if let Some(f) = sa.poll_transmit(now(), &mut alice.store).unwrap() {
            sb.handle_frame(now(), &f, &mut bob.store).unwrap();
        }
        if let Some(f) = sb.poll_transmit(now(), &mut bob.store).unwrap() {
            sa.handle_frame(now(), &f, &mut alice.store).unwrap();
        }
    }
    assert!(bob.store.in_inbox(&id).unwrap());
    let wrong = session::acknowledge(&mut bob.store, &id, ReceiptProof([1; 16]), now());
    assert!(matches!(wrong, Err(session::SyncError::WrongProof)));
    assert!(
        bob.store.in_inbox(&id).unwrap(),
        "still waiting for the application"
    );
    assert_eq!(bob.store.usage().unwrap().items, 0, "no receipt went out");
    let receipt = session::acknowledge(&mut bob.store, &id, proof_for(&msg.body), now()).unwrap();
    assert!(bob.store.contains(&receipt).unwrap());
    assert!(!bob.store.in_inbox(&id).unwrap());
}

/// A compactor for tests: both ends share a list of items, and an item travels as its
/// index in it.
#[derive(Debug)]
struct ListCompactor(Vec<Item>);

impl cairn_sync::compact::Compactor for ListCompactor {
    fn compact(&self, _peer: &[u8], item: &Item) -> Option<Vec<u8>> {
        self.0
            .iter()
            .position(|i| i == item)
            .map(|i| vec![0xC0, i as u8])
    }

    fn expand(&self, _peer: &[u8], data: &[u8], _now_secs: u64) -> Option<Item> {
        match data {
            [0xC0, i] => self.0.get(usize::from(*i)).cloned(),
            _ => None,
        }
    }
}

/// Drives an established pair until both are idle; returns the frames (direction, bytes).
fn idle_pair(
    a: &mut Node,
    b: &mut Node,
    sa: &mut SyncSession,
    sb: &mut SyncSession,
) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    for _ in 0..10_000 {
        let mut moved = false;
        if let Some(f) = sa.poll_transmit(now(), &mut a.store).unwrap() {
            sb.handle_frame(now(), &f, &mut b.store).unwrap();
            frames.push((0, f));
            moved = true;
        }
        if let Some(f) = sb.poll_transmit(now(), &mut b.store).unwrap() {
            sa.handle_frame(now(), &f, &mut a.store).unwrap();
            frames.push((1, f));
            moved = true;
        }
        a.events.extend(std::iter::from_fn(|| sa.poll_event()));
        b.events.extend(std::iter::from_fn(|| sb.poll_event()));
        if !moved {
            return frames;
        }
    }
    panic!("the pair never went idle");
}

#[test]
fn a_pushed_message_reaches_its_recipient_in_one_frame_without_a_round() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let (mut sa, mut sb) = sessions(&a, &b, 200);
    idle_pair(&mut a, &mut b, &mut sa, &mut sb);
    // A new message for B, pushed and *not* announced as a store change.
    let id = a.send(&envelope(1, 2, 100), now());
    sa.push(id);
    let frames = idle_pair(&mut a, &mut b, &mut sa, &mut sb);
    assert_eq!(frames.len(), 1, "one frame, no reconciliation: {frames:?}");
    assert_eq!(b.delivered(), vec![id]);
    // The receipt goes back the same way.
    let entry = b.store.inbox(1).unwrap().remove(0);
    let Item::Envelope(env) = Item::decode(&entry.encoded).unwrap() else {
        panic!()
    };
    let receipt = session::acknowledge(&mut b.store, &id, proof_for(&env.body), now()).unwrap();
    sb.push(receipt);
    let frames = idle_pair(&mut a, &mut b, &mut sa, &mut sb);
    assert_eq!(frames.len(), 1);
    assert!(a.events.contains(&SyncEvent::ReceiptForOwn { id }));
    assert!(
        !a.store.contains(&id).unwrap(),
        "the receipt purged the sender's copy"
    );
}

#[test]
fn compact_items_are_rebuilt_and_checked_like_any_other() {
    let mut a = Node::new(1);
    let mut b = Node::new(2);
    let fresh = envelope(1, 2, 100);
    let list = std::sync::Arc::new(ListCompactor(vec![Item::Envelope(fresh.clone())]));
    let config = |node: &Node| SessionConfig {
        compactor: Some(list.clone()),
        ..SessionConfig::new(200, node.policy.clone())
    };
    let mut sa = SyncSession::new(config(&a), Role::Initiator, b.key.clone(), 1, now()).unwrap();
    let mut sb = SyncSession::new(config(&b), Role::Responder, a.key.clone(), 2, now()).unwrap();
    idle_pair(&mut a, &mut b, &mut sa, &mut sb);
    let id = a.send(&fresh, now());
    sa.push(id);
    let frames = idle_pair(&mut a, &mut b, &mut sa, &mut sb);
    // The frame holds the compact message: tag, length, two bytes.
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1.len(), 4, "{:?}", frames[0].1);
    assert_eq!(b.delivered(), vec![id]);
    // Bytes that do not rebuild are not an error: the item comes the long way.
    let mut frame = Vec::new();
    let bogus = cairn_sync::codec::BoundedBytes::new(vec![0xC0, 9]).unwrap();
    cairn_sync::wire::encode_into(&cairn_sync::wire::Message::Compact(bogus), &mut frame);
    let before = b.ids();
    sb.handle_frame(now(), &frame, &mut b.store).unwrap();
    assert_eq!(sb.compact_refused(), 1);
    assert_eq!(b.ids(), before);
    // A rebuilt item is checked like any other: one that expired long ago is refused.
    let stale = Envelope {
        created_at_secs: T0 - 60 * 24 * 3600,
        ..envelope(2, 2, 100)
    };
    let list = ListCompactor(vec![Item::Envelope(stale)]);
    let mut sc = SyncSession::new(
        SessionConfig {
            compactor: Some(std::sync::Arc::new(list)),
            ..SessionConfig::new(200, b.policy.clone())
        },
        Role::Responder,
        a.key.clone(),
        3,
        now(),
    )
    .unwrap();
    let mut hello_a = SyncSession::new(
        SessionConfig::new(200, a.policy.clone()),
        Role::Initiator,
        b.key.clone(),
        4,
        now(),
    )
    .unwrap();
    let first = hello_a.poll_transmit(now(), &mut a.store).unwrap().unwrap();
    sc.handle_frame(now(), &first, &mut b.store).unwrap();
    let mut frame = Vec::new();
    let data = cairn_sync::codec::BoundedBytes::new(vec![0xC0, 0]).unwrap();
    cairn_sync::wire::encode_into(&cairn_sync::wire::Message::Compact(data), &mut frame);
    sc.handle_frame(now(), &frame, &mut b.store).unwrap();
    let refused: Vec<_> = std::iter::from_fn(|| sc.poll_event())
        .filter(|e| {
            matches!(
                e,
                SyncEvent::ItemRefused {
                    reason: RefusedBecause::Expired,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refused.len(), 1);
}
