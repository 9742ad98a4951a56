//! Direct delivery's rebuild of a compact text ([`cairn_node::direct`]) on arbitrary bytes
//! from an authenticated contact: never a panic. Whatever rebuilds must be an envelope whose
//! id starts with the check byte, and, when it was sealed on the sender's today (the only day
//! the sender can make compact forms for), its compact form must be the input again.
#![no_main]

use cairn_node::direct::{Direct, DirectContact};
use cairn_node::seal::{MailboxKey, PairKeys};
use cairn_sync::compact::Compactor;
use cairn_sync::envelope::Item;
use libfuzzer_sys::fuzz_target;

const DAY: u64 = 20_600;
const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

fn sides() -> (Direct, Direct) {
    let root = [9u8; 32];
    let alice = Direct::new(MailboxKey([3; 32]));
    let bob = Direct::new(MailboxKey([4; 32]));
    alice.set_contacts([(
        B,
        DirectContact {
            keys: PairKeys::new(&root, &A, &B, DAY),
            mailbox: MailboxKey([4; 32]),
        },
    )]);
    bob.set_contacts([(
        A,
        DirectContact {
            keys: PairKeys::new(&root, &B, &A, DAY),
            mailbox: MailboxKey([3; 32]),
        },
    )]);
    (alice, bob)
}

fuzz_target!(|data: &[u8]| {
    let (alice, bob) = sides();
    let now = DAY * 86_400 + 7_200;
    if let Some(item) = bob.expand(&A, data, now) {
        let Item::Envelope(envelope) = &item else {
            panic!("rebuilt a tombstone");
        };
        assert_eq!(item.id().0[0], data[4]);
        if envelope.body[0] & 0x0f == (DAY % 16) as u8 {
            assert_eq!(alice.compact(&B, &item).as_deref(), Some(data));
        }
    }
    // Nobody else's compact bytes rebuild.
    assert!(bob.expand(&[7; 32], data, now).is_none());
});
