//! A sealed message crosses a carrier's real LMDB store: the recipient reads it, and the
//! carrier's files hold no trace of the text.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use cairn_node::seal::{MailboxKey, PairKeys, SealedHeader, PERIOD_SECS};
use cairn_sync::envelope::{Item, Priority};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{self, Role, SessionConfig, SyncSession};
use cairn_sync::store::{LmdbConfig, LmdbStore, MemStore, Store};
use cairn_sync::time::Timestamp;

const DAY: u64 = 20_600;
const SECRET: &str = "the cache is under the third cairn past the ford";

fn now() -> Timestamp {
    Timestamp::from_secs(DAY * PERIOD_SECS + 600)
}

/// Runs one sync between two stores until both sessions are idle.
fn sync<A: Store, B: Store>(a: &mut A, a_policy: &NodePolicy, b: &mut B, b_policy: &NodePolicy) {
    let mut sa = SyncSession::new(
        SessionConfig::new(1024, a_policy.clone()),
        Role::Initiator,
        b"b".to_vec(),
        1,
        now(),
    )
    .unwrap();
    let mut sb = SyncSession::new(
        SessionConfig::new(1024, b_policy.clone()),
        Role::Responder,
        b"a".to_vec(),
        2,
        now(),
    )
    .unwrap();
    for _ in 0..10_000 {
        let mut moved = false;
        if let Some(frame) = sa.poll_transmit(now(), a).unwrap() {
            sb.handle_frame(now(), &frame, b).unwrap();
            moved = true;
        }
        if let Some(frame) = sb.poll_transmit(now(), b).unwrap() {
            sa.handle_frame(now(), &frame, a).unwrap();
            moved = true;
        }
        if !moved {
            assert!(sa.is_idle() && sb.is_idle());
            return;
        }
    }
    panic!("sync did not finish");
}

#[test]
fn a_carrier_stores_and_forwards_a_message_it_cannot_read() {
    let (alice_id, bob_id) = ([0xA1; 32], [0xB0; 32]);
    let root = [0x42; 32];
    let alice_keys = PairKeys::new(&root, &alice_id, &bob_id, DAY);
    let bob_keys = PairKeys::new(&root, &bob_id, &alice_id, DAY);
    let bob_mailbox = MailboxKey([0x5b; 32]);

    // Alice writes to Bob.
    let header = SealedHeader {
        created_at_secs: now().as_secs(),
        lifetime_secs: 7 * 86_400,
        scope: bob_mailbox.tag(DAY),
        priority: Priority::High,
        copy_budget: 8,
    };
    let sealed = alice_keys.seal(&header, SECRET.as_bytes()).unwrap();
    let body = sealed.body.clone();
    let envelope = header.envelope(sealed);
    let alice_policy = NodePolicy::default();
    let mut alice = MemStore::new();
    session::originate(&mut alice, &alice_policy, &envelope, now()).unwrap();

    // Carol carries it on disk, then meets Bob.
    let dir = tempfile::tempdir().unwrap();
    let carol_policy = NodePolicy::default();
    {
        let mut carol = LmdbStore::open(dir.path(), LmdbConfig::default()).unwrap();
        sync(&mut alice, &alice_policy, &mut carol, &carol_policy);
        assert_eq!(carol.usage().unwrap().items, 1);
        // On disk: the sealed body is there (so the search means something), the text not.
        assert!(
            contains(&raw_files(dir.path()), &body[1..33]),
            "the carrier never stored the envelope"
        );
        assert_no_plaintext(dir.path());
        let bob_policy = NodePolicy {
            scopes: bob_mailbox.tags_around(DAY),
            ..NodePolicy::default()
        };
        let mut bob = MemStore::new();
        sync(&mut carol, &carol_policy, &mut bob, &bob_policy);

        // Bob reads it, and publishes the receipt with the proof only he could compute.
        let inbox = bob.inbox(10).unwrap();
        assert_eq!(inbox.len(), 1);
        let Item::Envelope(got) = Item::decode(&inbox[0].encoded).unwrap() else {
            panic!("not an envelope");
        };
        let opened = bob_keys
            .open(&SealedHeader::of(&got), &got.receipt_lock, &got.body)
            .unwrap();
        assert_eq!(opened.plaintext, SECRET.as_bytes());
        session::acknowledge(&mut bob, &inbox[0].id, opened.proof, now()).unwrap();

        // The receipt travels back through Carol, purging her copy, to Alice.
        sync(&mut carol, &carol_policy, &mut bob, &bob_policy);
        assert_eq!(carol.usage().unwrap().items, 1, "only the receipt is left");
        assert!(!carol.contains(&got.id()).unwrap());
        sync(&mut alice, &alice_policy, &mut carol, &carol_policy);
        assert!(
            !alice.contains(&got.id()).unwrap(),
            "Alice knows it arrived"
        );
    }

    // And after all that, still no trace of the text in Carol's files.
    assert_no_plaintext(dir.path());
}

/// Reads every file of an LMDB environment.
fn raw_files(dir: &std::path::Path) -> Vec<u8> {
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        raw.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    raw
}

fn contains(raw: &[u8], needle: &[u8]) -> bool {
    raw.windows(needle.len()).any(|w| w == needle)
}

/// The text, or any word of it, is nowhere in the files.
fn assert_no_plaintext(dir: &std::path::Path) {
    let raw = raw_files(dir);
    assert!(!contains(&raw, SECRET.as_bytes()));
    for word in SECRET.split(' ').filter(|w| w.len() >= 5) {
        assert!(
            !contains(&raw, word.as_bytes()),
            "found {word:?} in the carrier's files"
        );
    }
}
