//! `Pairing::handle_message` fed by a hostile link. Alice and Bob (fixed identities; the
//! ephemeral keys seeded by the first byte, so both commitment orders occur) start pairings,
//! and Alice scans Bob's genuine code (unless `sel & 1`: then the link may talk before the
//! scan, which the input can still do later). The rest of the input is a script of link events,
//! one byte each (`op % 8`, some followed by their bytes):
//! 0. Alice scans Bob's code; 1. Bob's next message reaches Alice;
//! 2. Bob scans Alice's code; 3. Alice's next message reaches Bob;
//! 4. `len(1) ‖ bytes`: arbitrary bytes reach Alice;
//! 5. `kind(1) ‖ body(32)`: a well-formed message with an arbitrary body reaches Alice;
//! 6. `index(1)`: any message seen on the link so far (either side's, replayed or
//!    reflected) reaches Alice; 7. `bit(1)`: Bob's next message, with one bit flipped, reaches Alice.
//!
//! Checks, on Alice: never a panic; her status only moves forward, and `Failed` and `Paired`
//! are final; an error leaves her failed (or, once paired, paired) and then every message gets
//! the same error and nothing more is sent; she sends at most her key then her confirmation,
//! each 34 bytes; she reaches `Paired` only after Bob's own confirmation reached her, and the
//! contact she gets is Bob (identity, device, verified in person), with the same root secret as
//! Bob's when Bob paired too.
#![no_main]

use std::sync::OnceLock;

use cairn_node::contact::{
    ContactCode, DisplayName, Pairing, PairingError, PairingStatus, Verification,
};
use cairn_node::identity::Identity;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn people() -> &'static (Identity, Identity) {
    static PEOPLE: OnceLock<(Identity, Identity)> = OnceLock::new();
    PEOPLE.get_or_init(|| (common::identity(1), common::identity(2)))
}

fn rank(status: PairingStatus) -> u8 {
    match status {
        PairingStatus::ExpectScan => 0,
        PairingStatus::ExpectKey => 1,
        PairingStatus::ExpectConfirmation => 2,
        PairingStatus::Paired => 3,
        PairingStatus::Failed => 4,
    }
}

struct Link {
    alice: Pairing,
    bob: Pairing,
    alice_code: ContactCode,
    bob_code: ContactCode,
    /// Everything each side sent, in order, and how much of it was delivered.
    from_alice: Vec<Vec<u8>>,
    from_bob: Vec<Vec<u8>>,
    to_bob_next: usize,
    to_alice_next: usize,
    /// Every message Alice handled.
    reached_alice: Vec<Vec<u8>>,
    alice_error: Option<PairingError>,
}

impl Link {
    fn pump(&mut self) {
        while let Some(m) = self.alice.poll_transmit() {
            assert!(self.alice_error.is_none(), "Alice sent after failing");
            assert_eq!(m.len(), 34, "a pairing message is 34 bytes");
            assert_eq!(m[0], 1, "pairing version");
            assert_eq!(
                m[1],
                self.from_alice.len() as u8 + 1,
                "Alice sends her key, then her confirmation, then nothing"
            );
            self.from_alice.push(m);
        }
        while let Some(m) = self.bob.poll_transmit() {
            self.from_bob.push(m);
        }
    }

    fn to_alice(&mut self, message: &[u8]) {
        let before = self.alice.status();
        let result = self.alice.handle_message(message);
        self.reached_alice.push(message.to_vec());
        let after = self.alice.status();
        match &self.alice_error {
            Some(error) => {
                assert_eq!(result.as_ref(), Err(error), "a failed pairing changed its error");
                assert_eq!(after, PairingStatus::Failed);
            }
            None => match result {
                Ok(()) => assert!(
                    matches!(
                        after,
                        PairingStatus::ExpectScan
                            | PairingStatus::ExpectConfirmation
                            | PairingStatus::Paired
                    ),
                    "{after:?} after an accepted message"
                ),
                Err(error) if before == PairingStatus::Paired => {
                    assert_eq!(after, PairingStatus::Paired, "a late message undid the pairing");
                    assert!(matches!(error, PairingError::UnexpectedMessage { .. }));
                }
                Err(error) => {
                    assert_eq!(after, PairingStatus::Failed, "an error that did not fail");
                    self.alice_error = Some(error);
                }
            },
        }
        assert!(rank(after) >= rank(before), "status went back: {before:?} -> {after:?}");
    }

    fn alice_scans(&mut self) {
        let before = self.alice.status();
        let result = self.alice.handle_scanned_code(self.bob_code.clone());
        if result.is_err() && self.alice.status() == PairingStatus::Failed {
            // Accepting an early key can fail the pairing; so can scanning after failing.
            let error = result.clone().expect_err("checked");
            if let Some(known) = &self.alice_error {
                assert_eq!(&error, known);
            }
            self.alice_error = Some(error);
        }
        assert!(rank(self.alice.status()) >= rank(before));
    }
}

/// The next `n` bytes of the script, or `None` (and the script ends) when there are fewer.
fn take<'a>(script: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if script.len() < n {
        *script = &[];
        return None;
    }
    let (head, tail) = script.split_at(n);
    *script = tail;
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut script)) = data.split_first() else {
        return;
    };
    let (alice_id, bob_id) = people();
    let name = |n: &str| DisplayName::new(n).expect("name");
    let seed = u64::from(sel >> 1);
    let alice = Pairing::start(alice_id, name("Alice"), vec![], &mut common::rng(seed))
        .expect("start");
    let bob = Pairing::start(bob_id, name("Bob"), vec![], &mut common::rng(1000 + seed))
        .expect("start");
    let mut link = Link {
        alice_code: alice.code().clone(),
        bob_code: bob.code().clone(),
        alice,
        bob,
        from_alice: Vec::new(),
        from_bob: Vec::new(),
        to_bob_next: 0,
        to_alice_next: 0,
        reached_alice: Vec::new(),
        alice_error: None,
    };
    if sel & 1 == 0 {
        link.alice_scans();
        assert_eq!(link.alice.status(), PairingStatus::ExpectKey);
    }
    link.pump();

    while let Some(op) = take(&mut script, 1) {
        match op[0] % 8 {
            0 => link.alice_scans(),
            1 => {
                if let Some(m) = link.from_bob.get(link.to_alice_next).cloned() {
                    link.to_alice_next += 1;
                    link.to_alice(&m);
                }
            }
            2 => {
                let _ = link.bob.handle_scanned_code(link.alice_code.clone());
            }
            3 => {
                if let Some(m) = link.from_alice.get(link.to_bob_next).cloned() {
                    link.to_bob_next += 1;
                    let _ = link.bob.handle_message(&m);
                }
            }
            4 => {
                let Some(len) = take(&mut script, 1) else { break };
                let Some(bytes) = take(&mut script, usize::from(len[0] % 64)) else {
                    break;
                };
                link.to_alice(bytes);
            }
            5 => {
                let Some(body) = take(&mut script, 33) else { break };
                let mut m = vec![1];
                m.extend_from_slice(body);
                link.to_alice(&m);
            }
            6 => {
                let Some(index) = take(&mut script, 1) else { break };
                let seen: Vec<&Vec<u8>> = link.from_alice.iter().chain(&link.from_bob).collect();
                if !seen.is_empty() {
                    let m = seen[usize::from(index[0]) % seen.len()].clone();
                    link.to_alice(&m);
                }
            }
            _ => {
                let Some(bit) = take(&mut script, 1) else { break };
                if let Some(mut m) = link.from_bob.get(link.to_alice_next).cloned() {
                    link.to_alice_next += 1;
                    let bit = usize::from(bit[0]) % (m.len() * 8);
                    m[bit / 8] ^= 1 << (bit % 8);
                    link.to_alice(&m);
                }
            }
        }
        link.pump();
        if link.alice_error.is_some() {
            assert!(link.alice.poll_transmit().is_none(), "a failed pairing still sends");
        }
    }

    common::trace(format_args!(
        "Alice {:?} ({:?}), Bob {:?}",
        link.alice.status(),
        link.alice_error,
        link.bob.status()
    ));
    if link.alice.status() == PairingStatus::Paired {
        let bob_confirmation = link
            .from_bob
            .iter()
            .find(|m| m[1] == 2)
            .expect("Alice paired, yet Bob never confirmed");
        assert!(
            link.reached_alice.contains(bob_confirmation),
            "Alice paired without Bob's confirmation"
        );
        let paired = link.alice.take_paired().expect("the result of a pairing");
        assert!(link.alice.take_paired().is_none(), "the result is given once");
        assert_eq!(paired.contact.identity(), bob_id.public_key());
        assert_eq!(paired.contact.device(), bob_id.device_public_key());
        assert_eq!(paired.contact.verification(), Verification::VerifiedInPerson);
        if let Some(bob_paired) = link.bob.take_paired() {
            assert_eq!(
                paired.root_secret.expose(),
                bob_paired.root_secret.expose(),
                "the two sides derived different root secrets"
            );
        }
    } else {
        assert!(link.alice.take_paired().is_none(), "a result without pairing");
    }
});
