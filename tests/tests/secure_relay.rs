//! The whole security stack at once: two people pair in person, one writes to the other,
//! and a third team member carries the message between them. Every link is a Noise hop
//! session keyed with the team's network key; the message is sealed end to end; the receipt
//! comes back. Outsiders and the carrier are checked for what they could see.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use cairn_node::contact::{DisplayName, Pairing};
use cairn_node::identity::Identity;
use cairn_node::seal::{PairKeys, SealedHeader, PERIOD_SECS};
use cairn_sync::envelope::{Envelope, Item, Priority};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{self, Role as SyncRole, SessionConfig, SyncEvent, SyncSession};
use cairn_sync::store::{MemStore, Store};
use cairn_sync::time::Timestamp;
use cairn_transports::hop::{
    Framing, HopConfig, HopError, HopEvent, HopSession, NetworkKey, Role as HopRole,
};
use rand_chacha_03::rand_core::SeedableRng;
use rand_chacha_03::ChaCha20Rng;

const DAY: u64 = 20_600;
const TEXT: &[u8] = b"water at the east spring is safe to drink";

fn now() -> Timestamp {
    Timestamp::from_secs(DAY * PERIOD_SECS + 7_200)
}

struct Person {
    identity: Identity,
    store: MemStore,
    policy: NodePolicy,
    events: Vec<SyncEvent>,
}

impl Person {
    fn new(seed: u64) -> Person {
        let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed));
        let policy = NodePolicy {
            scopes: identity.mailbox_key().tags_around(DAY),
            ..NodePolicy::default()
        };
        Person {
            identity,
            store: MemStore::new(),
            policy,
            events: Vec::new(),
        }
    }
}

/// Everything that crossed one link, both directions, as the radio saw it.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
}

/// One link between two people: a hop session each, carrying a sync session each.
/// Returns what went over the air, or the hop error that ended it.
fn meet(
    a: &mut Person,
    b: &mut Person,
    network_a: &NetworkKey,
    network_b: &NetworkKey,
    mtu: usize,
) -> Result<Wire, HopError> {
    let t = now().as_millis();
    let hop = |p: &Person, role, network: &NetworkKey, seed: u8| {
        let config = HopConfig::new(
            role,
            p.identity.hop_keys().unwrap(),
            network.clone(),
            Framing::Stream,
        );
        HopSession::new(config, t, [seed; 32]).unwrap()
    };
    let mut hops = [
        hop(a, HopRole::Initiator, network_a, 1),
        hop(b, HopRole::Responder, network_b, 2),
    ];
    let mut syncs: [Option<SyncSession>; 2] = [None, None];
    let mut wire = Wire::default();
    let people = [a, b];
    for _round in 0..100_000 {
        let mut moved = false;
        for side in 0..2 {
            let other = 1 - side;
            // Sync frames down into the hop session once it is up.
            if let Some(sync) = syncs[side].as_mut() {
                while let Some(frame) = sync.poll_transmit(now(), &mut people[side].store).unwrap()
                {
                    hops[side].send(&frame).unwrap();
                }
            }
            // Hop bytes across the link.
            while let Some(bytes) = hops[side].poll_transmit() {
                wire.bytes.extend_from_slice(&bytes);
                hops[other].handle_input(t, &bytes);
                moved = true;
            }
            // Hop events on the far side.
            while let Some(event) = hops[other].poll_event() {
                match event {
                    HopEvent::Established { peer } => {
                        let me = &people[other];
                        let role = if other == 0 {
                            SyncRole::Initiator
                        } else {
                            SyncRole::Responder
                        };
                        let sync_mtu = hops[other].max_plaintext().min(mtu);
                        syncs[other] = Some(
                            SyncSession::new(
                                SessionConfig::new(sync_mtu, me.policy.clone()),
                                role,
                                peer.identity.to_vec(),
                                other as u64 + 10,
                                now(),
                            )
                            .unwrap(),
                        );
                        moved = true;
                    }
                    HopEvent::Frame(frame) => {
                        let sync = syncs[other].as_mut().unwrap();
                        sync.handle_frame(now(), &frame, &mut people[other].store)
                            .unwrap();
                        moved = true;
                    }
                    HopEvent::Closed(error) => return Err(error),
                    other => panic!("unexpected hop event {other:?}"),
                }
            }
            if let Some(sync) = syncs[other].as_mut() {
                while let Some(event) = sync.poll_event() {
                    people[other].events.push(event);
                }
            }
        }
        let idle = syncs
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s.is_idle()));
        if !moved && idle {
            return Ok(wire);
        }
        if !moved && syncs.iter().any(Option::is_none) {
            // A handshake that cannot finish: the hop layer's deadline ends it.
            for hop in hops.iter_mut() {
                hop.handle_timeout(t + 3_600_000);
                if let Some(HopEvent::Closed(error)) = hop.poll_event() {
                    return Err(error);
                }
            }
            panic!("stuck without a deadline");
        }
    }
    panic!("the meeting never settled");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sealed_message_crosses_a_carrier_over_noise_links_and_the_receipt_returns() {
    let team = NetworkKey([0x7e; 32]);
    let mut alice = Person::new(1);
    let mut bob = Person::new(2);
    let mut carol = Person::new(3);

    // Alice and Bob pair in person: each scans the other's code, the phones talk.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut pa = Pairing::start(
        &alice.identity,
        DisplayName::new("Alice").unwrap(),
        vec![],
        &mut rng,
    )
    .unwrap();
    let mut pb = Pairing::start(
        &bob.identity,
        DisplayName::new("Bob").unwrap(),
        vec![],
        &mut rng,
    )
    .unwrap();
    let (code_a, code_b) = (pa.code().clone(), pb.code().clone());
    pa.handle_scanned_code(code_b).unwrap();
    pb.handle_scanned_code(code_a).unwrap();
    for _ in 0..8 {
        while let Some(m) = pa.poll_transmit() {
            pb.handle_message(&m).unwrap();
        }
        while let Some(m) = pb.poll_transmit() {
            pa.handle_message(&m).unwrap();
        }
    }
    let paired_a = pa.take_paired().unwrap();
    let paired_b = pb.take_paired().unwrap();
    let (id_a, id_b) = (
        *alice.identity.public_key().as_bytes(),
        *bob.identity.public_key().as_bytes(),
    );
    let alice_keys = PairKeys::new(paired_a.root_secret.expose(), &id_a, &id_b, DAY);
    let bob_keys = PairKeys::new(paired_b.root_secret.expose(), &id_b, &id_a, DAY);

    // Alice writes to Bob's mailbox.
    let header = SealedHeader {
        created_at_secs: now().as_secs(),
        lifetime_secs: 3 * 86_400,
        scope: bob.identity.mailbox_key().tag(DAY),
        priority: Priority::High,
        copy_budget: 4,
    };
    let sealed = alice_keys.seal(&header, TEXT).unwrap();
    let envelope = header.envelope(sealed);
    let id = session::originate(&mut alice.store, &alice.policy, &envelope, now()).unwrap();

    // Alice meets Carol over a LoRa-sized link; Carol meets Bob later on the LAN.
    let air = meet(&mut alice, &mut carol, &team, &team, 180).unwrap();
    assert!(carol.store.contains(&id).unwrap(), "Carol carries it");
    let lan = meet(&mut carol, &mut bob, &team, &team, 16 * 1024).unwrap();

    // Bob opens it; Carol, who carried it, never could.
    let inbox = bob.store.inbox(10).unwrap();
    assert_eq!(inbox.len(), 1);
    let Item::Envelope(got) = Item::decode(&inbox[0].encoded).unwrap() else {
        panic!("not an envelope");
    };
    let opened = bob_keys
        .open(&header, &got.receipt_lock, &got.body)
        .unwrap();
    assert_eq!(opened.plaintext, TEXT);
    session::acknowledge(&mut bob.store, &id, opened.proof, now()).unwrap();

    // The receipt goes back the same way and purges every copy.
    meet(&mut carol, &mut bob, &team, &team, 16 * 1024).unwrap();
    assert!(
        !carol.store.contains(&id).unwrap(),
        "Carol's copy is purged"
    );
    meet(&mut alice, &mut carol, &team, &team, 180).unwrap();
    assert!(alice.events.contains(&SyncEvent::ReceiptForOwn { id }));

    // What a listener on either link saw: no text, and not who the sender and recipient
    // are (their identity keys never cross a link they are not on, and travel encrypted on
    // the links they are on).
    for wire in [&air, &lan] {
        assert!(!contains(&wire.bytes, TEXT));
        assert!(!contains(&wire.bytes, &TEXT[..12]));
        for identity in [&id_a, &id_b, carol.identity.public_key().as_bytes()] {
            assert!(!contains(&wire.bytes, identity), "an identity key in clear");
        }
    }
}

#[test]
fn a_device_outside_the_team_cannot_sync_or_learn_who_answered() {
    let team = NetworkKey([0x7e; 32]);
    let outsider_net = NetworkKey([0x13; 32]);
    let mut carol = Person::new(3);
    let mut mallory = Person::new(66);
    let msg = Envelope {
        created_at_secs: now().as_secs(),
        lifetime_secs: 86_400,
        scope: carol.identity.mailbox_key().tag(DAY),
        priority: Priority::Normal,
        copy_budget: 2,
        receipt_lock: cairn_sync::envelope::ReceiptProof([5; 16]).lock(),
        body: vec![1; 40],
    };
    let id = session::originate(&mut carol.store, &carol.policy, &msg, now()).unwrap();

    let refused = meet(&mut mallory, &mut carol, &outsider_net, &team, 16 * 1024);
    assert!(
        matches!(refused, Err(HopError::HandshakeRejected)),
        "the handshake must fail on the network key: {:?}",
        refused.err()
    );
    assert!(!mallory.store.contains(&id).unwrap(), "nothing was synced");
    assert_eq!(mallory.store.usage().unwrap().items, 0);
    assert!(mallory.events.is_empty() && carol.events.is_empty());
}
