//! Contact codes, in-person pairing and the contact book, as people and attackers use them.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cairn_node::contact::{
    AddOutcome, Contact, ContactBook, ContactBookError, ContactCode, ContactCodeError, DisplayName,
    Pairing, PairingError, PairingStatus, QrTheme, ReachabilityHint, Verification,
    CONTACT_BOOK_FILE_NAME, MAX_CODE_INPUT_BYTES,
};
use cairn_node::identity::Identity;
use proptest::prelude::*;
use rand_chacha_03::ChaCha20Rng;
use rand_core_06::SeedableRng;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn name(text: &str) -> DisplayName {
    DisplayName::new(text).unwrap()
}

fn hint(text: &str) -> ReachabilityHint {
    ReachabilityHint::new(text).unwrap()
}

/// A typical pairing code: short name, one LAN hint, a commitment.
fn sample_code() -> ContactCode {
    let alice = Identity::generate(&mut rng(1));
    Pairing::start(
        &alice,
        name("Alice"),
        vec![hint("192.168.1.20:7420")],
        &mut rng(2),
    )
    .unwrap()
    .code()
    .clone()
}

// ---- contact codes ----

#[test]
fn code_round_trips_and_looks_like_a_cairn_code() {
    let code = sample_code();
    let text = code.encode();
    assert!(text.starts_with("cairn1:"), "{text}");
    assert!(text[7..]
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
    let decoded = ContactCode::decode(&text).unwrap();
    assert_eq!(decoded, code);
    assert_eq!(decoded.display_name().as_str(), "Alice");
    assert_eq!(decoded.hints()[0].as_str(), "192.168.1.20:7420");
    assert!(decoded.commitment().is_some());
    assert_eq!(text.parse::<ContactCode>().unwrap(), code);
}

#[test]
fn code_input_ignores_case_whitespace_and_line_breaks() {
    let code = sample_code();
    let text = code.encode();
    assert_eq!(
        ContactCode::decode(&text.to_ascii_uppercase()).unwrap(),
        code
    );
    // As someone might paste it from a message: wrapped, indented, spaced in groups.
    let chunks: Vec<String> = text
        .as_bytes()
        .chunks(7)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let wrapped = format!("  \n{}\r\n\t", chunks.join(" \n  "));
    assert_eq!(ContactCode::decode(&wrapped).unwrap(), code);
    let mixed: String = text
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 3 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    assert_eq!(ContactCode::decode(&mixed).unwrap(), code);
}

#[test]
fn every_single_character_substitution_is_refused() {
    let text = sample_code().encode();
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz234567".chars().collect();
    let mut tried = 0;
    for (i, original) in text.char_indices().skip("cairn1:".len()) {
        for &replacement in &alphabet {
            if replacement == original {
                continue;
            }
            let mut typo = text.clone();
            typo.replace_range(i..i + 1, &replacement.to_string());
            let err = ContactCode::decode(&typo).unwrap_err();
            assert!(
                matches!(
                    err,
                    ContactCodeError::ChecksumMismatch | ContactCodeError::BadLength
                ),
                "position {i}: {err:?}"
            );
            assert!(err.to_string().contains("typo"), "{err}");
            tried += 1;
        }
    }
    assert!(tried > 8_000, "{tried}");
    // Look-alike characters that are not base32 name the character.
    let mut typo = text.clone();
    typo.replace_range(20..21, "0");
    assert_eq!(
        ContactCode::decode(&typo),
        Err(ContactCodeError::InvalidCharacter {
            character: '0',
            position: 21
        })
    );
}

#[test]
fn every_dropped_or_doubled_character_is_refused() {
    let text = sample_code().encode();
    for i in "cairn1:".len()..text.len() {
        let mut dropped = text.clone();
        dropped.remove(i);
        assert!(ContactCode::decode(&dropped).is_err(), "drop {i}");
        let mut doubled = text.clone();
        doubled.insert(i, text.as_bytes()[i] as char);
        assert!(ContactCode::decode(&doubled).is_err(), "double {i}");
    }
}

#[test]
fn wrong_inputs_get_the_right_error() {
    let text = sample_code().encode();
    let body = &text["cairn1:".len()..];
    assert_eq!(
        ContactCode::decode("hello there"),
        Err(ContactCodeError::NotACairnCode)
    );
    assert_eq!(
        ContactCode::decode(""),
        Err(ContactCodeError::NotACairnCode)
    );
    assert_eq!(
        ContactCode::decode(&format!("briar:{body}")),
        Err(ContactCodeError::NotACairnCode)
    );
    assert_eq!(
        ContactCode::decode(&format!("cairn0:{body}")),
        Err(ContactCodeError::NotACairnCode)
    );
    assert_eq!(
        ContactCode::decode(&format!("cairn:{body}")),
        Err(ContactCodeError::NotACairnCode)
    );
    let newer = ContactCode::decode(&format!("cairn2:{body}")).unwrap_err();
    assert_eq!(newer, ContactCodeError::NewerVersion { version: 2 });
    assert!(newer.to_string().contains("newer version"));
    assert_eq!(
        ContactCode::decode(&format!("cairn99999999999:{body}")),
        Err(ContactCodeError::NotACairnCode)
    );
    assert_eq!(
        ContactCode::decode("cairn1:"),
        Err(ContactCodeError::Truncated)
    );
    assert_eq!(
        ContactCode::decode("cairn1:aaaaaaaa"),
        Err(ContactCodeError::Truncated)
    );
    assert_eq!(
        ContactCode::decode(&format!("cairn1:{}", "a".repeat(2000))),
        Err(ContactCodeError::TooLong)
    );
    assert_eq!(
        ContactCode::decode(&" ".repeat(MAX_CODE_INPUT_BYTES + 1)),
        Err(ContactCodeError::TooLong)
    );
    assert!(matches!(
        ContactCode::decode(&format!("cairn1:{}é", &body[..20])),
        Err(ContactCodeError::InvalidCharacter {
            character: 'é', ..
        })
    ));
}

#[test]
fn a_well_checksummed_code_with_bad_contents_is_refused() {
    // What a buggy or hostile encoder could produce: the checksum matches, the contents lie.
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let forge = |mutate: &dyn Fn(&mut Vec<u8>)| {
        let mut payload = vec![0u8];
        payload.extend_from_slice(alice.public_key().as_bytes());
        payload.extend_from_slice(alice.device_public_key().as_bytes());
        payload.extend_from_slice(&alice.device_signature());
        payload.extend_from_slice(&alice.mailbox_key().0);
        payload.extend_from_slice(&[5, b'A', b'l', b'i', b'c', b'e', 0]);
        mutate(&mut payload);
        raw_code(payload)
    };
    assert!(ContactCode::decode(&forge(&|_| {})).is_ok());
    // Bob's device key under Alice's identity: the signature does not cover it.
    let swapped = forge(&|p| p[33..65].copy_from_slice(bob.device_public_key().as_bytes()));
    assert_eq!(
        ContactCode::decode(&swapped),
        Err(ContactCodeError::InvalidDeviceSignature)
    );
    assert!(matches!(
        ContactCode::decode(&forge(&|p| p[0] = 0x80)),
        Err(ContactCodeError::Malformed { .. })
    ));
    assert!(matches!(
        ContactCode::decode(&forge(&|p| p.push(0))),
        Err(ContactCodeError::Malformed { .. })
    ));
    assert!(matches!(
        ContactCode::decode(&forge(&|p| {
            let n = p.len();
            p[n - 7] = 200;
        })),
        Err(ContactCodeError::Malformed { .. })
    ));
    assert!(matches!(
        ContactCode::decode(&forge(&|p| {
            let n = p.len();
            p[n - 6] = b'\n';
        })),
        Err(ContactCodeError::InvalidDisplayName { .. })
    ));
    assert!(matches!(
        ContactCode::decode(&forge(&|p| {
            let n = p.len();
            p[n - 1] = 9;
        })),
        Err(ContactCodeError::TooManyHints { count: 9 })
    ));
}

/// A code with any payload and a valid checksum, as a forger (or a buggy encoder) makes one.
fn raw_code(mut payload: Vec<u8>) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("cairn 2026 contact code checksum");
    hasher.update(&[1]);
    hasher.update(&payload);
    payload.extend_from_slice(&hasher.finalize().as_bytes()[..4]);
    format!("cairn1:{}", base32(&payload))
}

/// RFC 4648 base32, lower case, unpadded: an independent encoder for forging test codes.
fn base32(bytes: &[u8]) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits: Vec<bool> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
        .collect();
    while bits.len() % 5 != 0 {
        bits.push(false);
    }
    bits.chunks(5)
        .map(|c| {
            let v = c
                .iter()
                .fold(0usize, |acc, &bit| acc << 1 | usize::from(bit));
            alphabet[v] as char
        })
        .collect()
}

#[test]
fn the_qr_code_is_square_and_fits_a_terminal() {
    // There is no QR decoder among our dependencies, so this checks the drawing, not that a
    // camera reads it back.
    let code = sample_code();
    for theme in [QrTheme::DarkTerminal, QrTheme::LightTerminal] {
        let drawing = code.render_qr(theme).unwrap();
        let lines: Vec<&str> = drawing.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert!(width <= 80, "{width} columns");
        // Two modules per line: a square of `width` modules is `width / 2` lines, rounded up.
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(drawing.contains('█') || drawing.contains('▀') || drawing.contains('▄'));
    }
    let dark = code.render_qr(QrTheme::DarkTerminal).unwrap();
    let light = code.render_qr(QrTheme::LightTerminal).unwrap();
    assert_ne!(dark, light);
}

fn arb_name() -> impl Strategy<Value = DisplayName> {
    "[a-zA-Z0-9 äöüéßçøåЖж漢字🌲-]{1,20}"
        .prop_filter_map("valid name", |s| DisplayName::new(&s).ok())
}

fn arb_hints() -> impl Strategy<Value = Vec<ReachabilityHint>> {
    prop::collection::vec("[!-~]{1,64}", 0..=4)
        .prop_map(|hints| hints.iter().map(|h| hint(h)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_code_round_trips(seed in any::<u64>(), name in arb_name(), hints in arb_hints(),
                            pairing in any::<bool>()) {
        let identity = Identity::generate(&mut rng(seed));
        let code = if pairing {
            Pairing::start(&identity, name, hints, &mut rng(seed ^ 1)).unwrap().code().clone()
        } else {
            ContactCode::new(&identity, name, hints).unwrap()
        };
        let text = code.encode();
        prop_assert_eq!(&ContactCode::decode(&text).unwrap(), &code);
        prop_assert_eq!(&ContactCode::decode(&text.to_uppercase()).unwrap(), &code);
        prop_assert!(code.render_qr(QrTheme::DarkTerminal).is_ok());
    }

    #[test]
    fn garbage_never_panics(text in "\\PC{0,600}") {
        let _ = ContactCode::decode(&text);
        let _ = ContactCode::decode(&format!("cairn1:{text}"));
    }
}

// ---- pairing ----

/// Moves messages between two sides until both are quiet; returns each side's errors.
fn run(a: &mut Pairing, b: &mut Pairing) -> (Vec<PairingError>, Vec<PairingError>) {
    let (mut a_errors, mut b_errors) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(bytes) = a.poll_transmit() {
            b_errors.extend(b.handle_message(&bytes).err());
            moved = true;
        }
        while let Some(bytes) = b.poll_transmit() {
            a_errors.extend(a.handle_message(&bytes).err());
            moved = true;
        }
        if !moved {
            return (a_errors, b_errors);
        }
    }
}

fn start(identity: &Identity, display: &str, seed: u64) -> Pairing {
    Pairing::start(identity, name(display), vec![], &mut rng(seed)).unwrap()
}

/// The code as the other phone's camera reads it: through text, both ways.
fn scan(pairing: &Pairing) -> ContactCode {
    ContactCode::decode(&pairing.code().encode().to_uppercase()).unwrap()
}

#[test]
fn pairing_in_person_yields_verified_contacts_and_one_shared_secret() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    assert_eq!(at_alice.status(), PairingStatus::ExpectScan);
    at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    assert_eq!(run(&mut at_alice, &mut at_bob), (vec![], vec![]));
    assert_eq!(at_alice.status(), PairingStatus::Paired);
    assert_eq!(at_bob.status(), PairingStatus::Paired);

    let bob_at_alice = at_alice.take_paired().unwrap();
    let alice_at_bob = at_bob.take_paired().unwrap();
    assert_eq!(bob_at_alice.contact.identity(), bob.public_key());
    assert_eq!(bob_at_alice.contact.device(), bob.device_public_key());
    assert_eq!(bob_at_alice.contact.display_name().as_str(), "Bob");
    assert_eq!(
        bob_at_alice.contact.verification(),
        Verification::VerifiedInPerson
    );
    assert_eq!(alice_at_bob.contact.identity(), alice.public_key());
    assert_eq!(
        bob_at_alice.root_secret.expose(),
        alice_at_bob.root_secret.expose()
    );
    assert!(
        !format!("{bob_at_alice:?}").contains(&format!("{:?}", bob_at_alice.root_secret.expose()))
    );
    assert!(
        at_alice.take_paired().is_none(),
        "the secret is handed out once"
    );

    // Pairing again gives a fresh secret.
    let mut again_alice = start(&alice, "Alice", 20);
    let mut again_bob = start(&bob, "Bob", 21);
    again_alice.handle_scanned_code(scan(&again_bob)).unwrap();
    again_bob.handle_scanned_code(scan(&again_alice)).unwrap();
    run(&mut again_alice, &mut again_bob);
    assert_ne!(
        again_alice.take_paired().unwrap().root_secret.expose(),
        bob_at_alice.root_secret.expose()
    );
}

#[test]
fn a_peer_that_connects_before_our_scan_is_waited_for() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    // Bob's key reaches Alice before she has scanned his screen.
    let bob_key = at_bob.poll_transmit().unwrap();
    at_alice.handle_message(&bob_key).unwrap();
    assert_eq!(at_alice.status(), PairingStatus::ExpectScan);
    at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
    assert_eq!(run(&mut at_alice, &mut at_bob), (vec![], vec![]));
    assert!(at_alice.take_paired().is_some());
    assert!(at_bob.take_paired().is_some());
}

#[test]
fn a_relay_substituting_ephemeral_keys_is_detected_by_both() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mallory = Identity::generate(&mut rng(3));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    // Mallory sits on the link and swaps each key for one of her own.
    let mut mallory_to_alice = start(&mallory, "Bob", 12);
    let mut mallory_to_bob = start(&mallory, "Alice", 13);
    mallory_to_alice
        .handle_scanned_code(scan(&at_alice))
        .unwrap();
    mallory_to_bob.handle_scanned_code(scan(&at_bob)).unwrap();
    let (_, _) = (at_alice.poll_transmit(), at_bob.poll_transmit());
    let fake_for_alice = mallory_to_alice.poll_transmit().unwrap();
    let fake_for_bob = mallory_to_bob.poll_transmit().unwrap();
    assert_eq!(
        at_alice.handle_message(&fake_for_alice),
        Err(PairingError::CommitmentMismatch)
    );
    assert_eq!(
        at_bob.handle_message(&fake_for_bob),
        Err(PairingError::CommitmentMismatch)
    );
    assert_eq!(at_alice.status(), PairingStatus::Failed);
    assert!(at_alice.take_paired().is_none());
    assert!(at_alice.poll_transmit().is_none());
    // A failed pairing stays failed.
    assert_eq!(
        at_alice.handle_message(&fake_for_alice),
        Err(PairingError::CommitmentMismatch)
    );
}

#[test]
fn a_substituted_code_never_gets_the_attacker_recorded_as_the_victim() {
    // Mallory gets Alice to scan Mallory's code instead of Bob's (a sticker over Bob's
    // screen, say), and relays between them.
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mallory = Identity::generate(&mut rng(3));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    let mut mallory_as_bob = start(&mallory, "Bob", 12);
    at_alice.handle_scanned_code(scan(&mallory_as_bob)).unwrap();
    mallory_as_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();

    // Alice <-> Mallory runs honestly; Mallory forwards what she can to Bob.
    let alice_key = at_alice.poll_transmit().unwrap();
    mallory_as_bob.handle_message(&alice_key).unwrap();
    at_bob.handle_message(&alice_key).unwrap(); // the real key matches Bob's scan
    let mallory_key = mallory_as_bob.poll_transmit().unwrap();
    at_alice.handle_message(&mallory_key).unwrap();
    let alice_confirm = at_alice.poll_transmit().unwrap();
    mallory_as_bob.handle_message(&alice_confirm).unwrap();
    let mallory_confirm = mallory_as_bob.poll_transmit().unwrap();
    at_alice.handle_message(&mallory_confirm).unwrap();
    // Bob cannot be satisfied: Mallory has neither Alice's ephemeral secret nor the keys.
    assert_eq!(
        at_bob.handle_message(&alice_confirm),
        Err(PairingError::ConfirmationMismatch)
    );
    assert!(at_bob.take_paired().is_none());
    // Alice did pair, but with the identity she scanned: Mallory's, not Bob's.
    let paired = at_alice.take_paired().unwrap();
    assert_eq!(paired.contact.identity(), mallory.public_key());
    assert_ne!(paired.contact.identity(), bob.public_key());
}

#[test]
fn a_tampered_code_fails_on_both_phones() {
    // Mallory edits Bob's screen to show her identity next to Bob's commitment, so that
    // Bob's real key still matches what Alice scanned.
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mallory = Identity::generate(&mut rng(3));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    let mut payload = vec![1u8];
    payload.extend_from_slice(mallory.public_key().as_bytes());
    payload.extend_from_slice(mallory.device_public_key().as_bytes());
    payload.extend_from_slice(&mallory.device_signature());
    payload.extend_from_slice(&mallory.mailbox_key().0);
    payload.extend_from_slice(at_bob.code().commitment().unwrap().as_bytes());
    payload.extend_from_slice(&[3, b'B', b'o', b'b', 0]);
    let tampered = ContactCode::decode(&raw_code(payload)).unwrap();
    at_alice.handle_scanned_code(tampered).unwrap();
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    // The keys match the commitments on both sides...
    let alice_key = at_alice.poll_transmit().unwrap();
    let bob_key = at_bob.poll_transmit().unwrap();
    at_alice.handle_message(&bob_key).unwrap();
    at_bob.handle_message(&alice_key).unwrap();
    // ...but the two phones hashed different identities, so neither confirmation verifies.
    let alice_confirm = at_alice.poll_transmit().unwrap();
    let bob_confirm = at_bob.poll_transmit().unwrap();
    assert_eq!(
        at_alice.handle_message(&bob_confirm),
        Err(PairingError::ConfirmationMismatch)
    );
    assert_eq!(
        at_bob.handle_message(&alice_confirm),
        Err(PairingError::ConfirmationMismatch)
    );
    assert!(at_alice.take_paired().is_none());
    assert!(at_bob.take_paired().is_none());
}

#[test]
fn a_code_from_an_abandoned_pairing_does_not_match() {
    // Bob restarted pairing (new ephemeral key) after Alice scanned his screen.
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let first_bob = start(&bob, "Bob", 11);
    let mut second_bob = start(&bob, "Bob", 12);
    assert_ne!(
        first_bob.code().commitment(),
        second_bob.code().commitment()
    );
    at_alice.handle_scanned_code(scan(&first_bob)).unwrap();
    second_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    let (alice_errors, bob_errors) = run(&mut at_alice, &mut second_bob);
    // Bob's confirmation arrives after the mismatch and gets the same answer.
    assert!(!alice_errors.is_empty());
    assert!(alice_errors
        .iter()
        .all(|e| *e == PairingError::CommitmentMismatch));
    assert!(bob_errors.is_empty());
    assert_ne!(second_bob.status(), PairingStatus::Paired);
    assert!(at_alice.take_paired().is_none());
}

#[test]
fn replayed_and_reflected_confirmations_fail() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    // An earlier pairing between the same two people; an attacker kept Bob's confirmation.
    let mut old_alice = start(&alice, "Alice", 10);
    let mut old_bob = start(&bob, "Bob", 11);
    old_alice.handle_scanned_code(scan(&old_bob)).unwrap();
    old_bob.handle_scanned_code(scan(&old_alice)).unwrap();
    old_alice
        .handle_message(&old_bob.poll_transmit().unwrap())
        .unwrap();
    old_bob
        .handle_message(&old_alice.poll_transmit().unwrap())
        .unwrap();
    let old_bob_confirm = old_bob.poll_transmit().unwrap();

    let fresh = |seed_a, seed_b| {
        let mut a = start(&alice, "Alice", seed_a);
        let mut b = start(&bob, "Bob", seed_b);
        a.handle_scanned_code(scan(&b)).unwrap();
        b.handle_scanned_code(scan(&a)).unwrap();
        a.handle_message(&b.poll_transmit().unwrap()).unwrap();
        (a, b)
    };

    let (mut at_alice, _at_bob) = fresh(20, 21);
    let _alice_key = at_alice.poll_transmit().unwrap();
    assert_eq!(
        at_alice.handle_message(&old_bob_confirm),
        Err(PairingError::ConfirmationMismatch)
    );

    // Alice's own confirmation sent back to her.
    let (mut at_alice, _at_bob) = fresh(30, 31);
    let _alice_key = at_alice.poll_transmit().unwrap();
    let own_confirm = at_alice.poll_transmit().unwrap();
    assert_eq!(
        at_alice.handle_message(&own_confirm),
        Err(PairingError::ConfirmationMismatch)
    );

    // A duplicate after success is refused but does not undo the pairing.
    let (mut at_alice, mut at_bob) = fresh(40, 41);
    at_bob
        .handle_message(&at_alice.poll_transmit().unwrap())
        .unwrap();
    let alice_confirm = at_alice.poll_transmit().unwrap();
    let bob_confirm = at_bob.poll_transmit().unwrap();
    at_alice.handle_message(&bob_confirm).unwrap();
    at_bob.handle_message(&alice_confirm).unwrap();
    assert!(at_alice.handle_message(&bob_confirm).is_err());
    assert_eq!(at_alice.status(), PairingStatus::Paired);
    assert!(at_alice.take_paired().is_some());
}

#[test]
fn scanning_mistakes_are_refused_and_can_be_retried() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let at_bob = start(&bob, "Bob", 11);
    let plain = ContactCode::new(&bob, name("Bob"), vec![]).unwrap();
    assert_eq!(
        at_alice.handle_scanned_code(plain),
        Err(PairingError::NotAPairingCode)
    );
    assert_eq!(
        at_alice.handle_scanned_code(scan(&at_alice)),
        Err(PairingError::PairingWithYourself)
    );
    let other_alice_device = start(&alice, "Alice", 12);
    assert_eq!(
        at_alice.handle_scanned_code(scan(&other_alice_device)),
        Err(PairingError::PairingWithYourself)
    );
    assert_eq!(at_alice.status(), PairingStatus::ExpectScan);
    at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
    assert_eq!(
        at_alice.handle_scanned_code(scan(&at_bob)),
        Err(PairingError::AlreadyScanned)
    );
}

#[test]
fn malformed_and_out_of_order_messages_end_the_pairing() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    for bad in [
        vec![],
        vec![1],
        vec![1, 1, 0],
        [vec![2, 1], vec![0; 32]].concat(),
        [vec![1, 9], vec![0; 32]].concat(),
        [vec![1, 1], vec![0; 33]].concat(),
        [vec![1, 2], vec![0; 32]].concat(), // a confirmation before any key
    ] {
        let mut at_alice = start(&alice, "Alice", 10);
        let at_bob = start(&bob, "Bob", 11);
        at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
        assert!(at_alice.handle_message(&bad).is_err(), "{bad:?}");
        assert_eq!(at_alice.status(), PairingStatus::Failed);
    }
}

// ---- contact book ----

fn pair(a: &Identity, b: &Identity, seed: u64) -> (Contact, Contact) {
    let mut at_a = start(a, "A", seed);
    let mut at_b = start(b, "B", seed + 1);
    at_a.handle_scanned_code(scan(&at_b)).unwrap();
    at_b.handle_scanned_code(scan(&at_a)).unwrap();
    run(&mut at_a, &mut at_b);
    (
        at_a.take_paired().unwrap().contact,
        at_b.take_paired().unwrap().contact,
    )
}

fn code_contact(identity: &Identity, display: &str, hints: &[&str]) -> Contact {
    let hints = hints.iter().map(|h| hint(h)).collect();
    Contact::from_code(&ContactCode::new(identity, name(display), hints).unwrap())
}

#[test]
fn the_book_persists_privately_across_restarts() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let carol = Identity::generate(&mut rng(3));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    assert!(book.is_empty());
    assert_eq!(
        book.add(code_contact(&bob, "Bob", &["10.0.0.2:7420"]))
            .unwrap(),
        AddOutcome::Added
    );
    assert_eq!(
        book.add(code_contact(&carol, "carol", &[])).unwrap(),
        AddOutcome::Added
    );
    let path = home.path().join(CONTACT_BOOK_FILE_NAME);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let reopened = ContactBook::open(home.path(), &me).unwrap();
    let names: Vec<&str> = reopened
        .list()
        .iter()
        .map(|c| c.display_name().as_str())
        .collect();
    assert_eq!(names, ["Bob", "carol"]);
    let bob_entry = reopened.get(&bob.public_key()).unwrap();
    assert_eq!(bob_entry.hints()[0].as_str(), "10.0.0.2:7420");
    assert_eq!(bob_entry.verification(), Verification::Unverified);
    assert_eq!(bob_entry.device(), bob.device_public_key());
    bob.public_key()
        .verify_device(&bob_entry.device(), bob_entry.device_signature())
        .unwrap();

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = ContactBook::open(home.path(), &me).unwrap_err();
    assert!(matches!(err, ContactBookError::InsecurePermissions { .. }));
    assert!(err.to_string().contains("chmod 600"));
}

#[test]
fn you_cannot_add_yourself() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    assert!(matches!(
        book.add(code_contact(&me, "Me", &[])),
        Err(ContactBookError::AddingYourself)
    ));
    assert!(!home.path().join(CONTACT_BOOK_FILE_NAME).exists());
}

#[test]
fn re_adding_updates_details_but_never_downgrades_verification() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let (bob_in_person, _) = pair(&me, &bob, 10);
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(book.add(bob_in_person.clone()).unwrap(), AddOutcome::Added);
    assert_eq!(book.add(bob_in_person).unwrap(), AddOutcome::Unchanged);

    // A forwarded code with a new name and hint: details change, verification stays.
    assert_eq!(
        book.add(code_contact(&bob, "Robert", &["10.0.0.9:7420"]))
            .unwrap(),
        AddOutcome::Updated
    );
    let entry = book.get(&bob.public_key()).unwrap();
    assert_eq!(entry.display_name().as_str(), "Robert");
    assert_eq!(entry.verification(), Verification::VerifiedInPerson);
    assert_eq!(
        book.mark_verified(&bob.public_key(), Verification::VerifiedBySafetyCode)
            .unwrap(),
        Verification::VerifiedInPerson
    );
    let reopened = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(
        reopened.get(&bob.public_key()).unwrap().verification(),
        Verification::VerifiedInPerson
    );
}

#[test]
fn verification_by_safety_code_is_recorded_and_can_be_raised_in_person() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    let _ = book.add(code_contact(&bob, "B", &[])).unwrap();
    assert_eq!(
        book.mark_verified(&bob.public_key(), Verification::VerifiedBySafetyCode)
            .unwrap(),
        Verification::VerifiedBySafetyCode
    );
    assert_eq!(
        book.mark_verified(&bob.public_key(), Verification::Unverified)
            .unwrap(),
        Verification::VerifiedBySafetyCode
    );
    let (bob_in_person, _) = pair(&me, &bob, 10);
    assert_eq!(book.add(bob_in_person).unwrap(), AddOutcome::Updated);
    assert_eq!(
        book.get(&bob.public_key()).unwrap().verification(),
        Verification::VerifiedInPerson
    );
    let stranger = Identity::generate(&mut rng(3));
    assert!(matches!(
        book.mark_verified(&stranger.public_key(), Verification::VerifiedBySafetyCode),
        Err(ContactBookError::UnknownContact)
    ));
}

#[test]
fn a_changed_device_key_is_reported_not_accepted() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let mut bob = Identity::generate(&mut rng(2));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    let _ = book.add(code_contact(&bob, "Bob", &[])).unwrap();
    book.mark_verified(&bob.public_key(), Verification::VerifiedBySafetyCode)
        .unwrap();
    let old_device = bob.device_public_key();
    bob.regenerate_device_key(&mut rng(3));
    let new_contact = code_contact(&bob, "Bob (new phone)", &[]);
    assert_eq!(
        book.add(new_contact.clone()).unwrap(),
        AddOutcome::DeviceKeyChanged {
            known: old_device,
            offered: bob.device_public_key()
        }
    );
    let reopened = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(
        reopened.get(&bob.public_key()).unwrap().device(),
        old_device
    );
    assert_eq!(
        reopened
            .get(&bob.public_key())
            .unwrap()
            .display_name()
            .as_str(),
        "Bob"
    );

    // The user confirms the new phone: the key changes, the verification of Bob stays.
    book.accept_device_change(new_contact).unwrap();
    let entry = book.get(&bob.public_key()).unwrap();
    assert_eq!(entry.device(), bob.device_public_key());
    assert_eq!(entry.verification(), Verification::VerifiedBySafetyCode);
}

#[test]
fn removing_a_contact_is_persisted() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    let _ = book.add(code_contact(&bob, "Bob", &[])).unwrap();
    assert!(book.remove(&bob.public_key()).unwrap().is_some());
    assert!(book.remove(&bob.public_key()).unwrap().is_none());
    let reopened = ContactBook::open(home.path(), &me).unwrap();
    assert!(reopened.get(&bob.public_key()).is_none());
    assert_eq!(reopened.len(), 0);
}

#[test]
fn a_damaged_book_is_refused_not_half_read() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    for seed in 2..5 {
        let other = Identity::generate(&mut rng(seed));
        let _ = book.add(code_contact(&other, "X", &["h:1"])).unwrap();
    }
    let path = home.path().join(CONTACT_BOOK_FILE_NAME);
    let original = fs::read(&path).unwrap();
    for i in 0..original.len() {
        let mut damaged = original.clone();
        damaged[i] ^= 0x04;
        fs::write(&path, &damaged).unwrap();
        assert!(ContactBook::open(home.path(), &me).is_err(), "byte {i}");
    }
    for len in [0, 8, 9, 13, original.len() - 1] {
        fs::write(&path, &original[..len]).unwrap();
        assert!(ContactBook::open(home.path(), &me).is_err());
    }
    let mut newer = original.clone();
    newer[8] = 4;
    fs::write(&path, &newer).unwrap();
    assert!(matches!(
        ContactBook::open(home.path(), &me),
        Err(ContactBookError::UnsupportedVersion { version: 4, .. })
    ));
    fs::write(&path, &original).unwrap();
    assert_eq!(ContactBook::open(home.path(), &me).unwrap().len(), 3);
}

/// Pins the contact code format and the pairing key schedule: codes printed or shared today
/// must decode in every later version, and two versions must derive the same secret.
#[test]
fn golden_vectors() {
    assert_eq!(
        sample_code().encode(),
        "cairn1:afdyxdsqpyf3fmmmb6paqjdwt2cwfuin7gv6fz3urfxyfnfuibjgmcnic42ch2yoetqz6swyps4sxmai3\
         sm2lvzcxku2h6wt5meljhz2ro2nr54gnyi6lwydveuk4d7gvr435xhvqid5f6zbsclhlbz2tbreqsawgzbyihmkt\
         mlne6g3zxjcrmlir7o6v522nccmaeswqlw4acegqqkpws5l4wgs7zzpk3nklkryxlyujclkxpepatbflm22sopiq\
         mubs6qkshyojyugat2wwds6wvhakqlmnfrwkairge4telrrgy4c4mjogiydunzugiykw74iaa"
    );
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    at_alice.handle_scanned_code(at_bob.code().clone()).unwrap();
    at_bob.handle_scanned_code(at_alice.code().clone()).unwrap();
    let alice_key = at_alice.poll_transmit().unwrap();
    at_alice
        .handle_message(&at_bob.poll_transmit().unwrap())
        .unwrap();
    at_bob.handle_message(&alice_key).unwrap();
    let alice_confirm = at_alice.poll_transmit().unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&alice_confirm),
        "0102c6a234c0e3acb1d6c85bde1487a1f8bd3dffd4b159fb30756b96febc99f6eaa5"
    );
    at_alice
        .handle_message(&at_bob.poll_transmit().unwrap())
        .unwrap();
    assert_eq!(
        hex(at_alice.take_paired().unwrap().root_secret.expose()),
        "661ed65dc76cf728935b8f068fc62bec04ea19c18e964356e4c15af098c898c9"
    );
}

#[test]
fn a_paired_contact_keeps_its_sealing_keys_and_mailbox_across_restarts() {
    use cairn_node::seal::{PairKeys, SealedHeader};
    use cairn_sync::envelope::Priority;
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut at_alice = start(&alice, "Alice", 10);
    let mut at_bob = start(&bob, "Bob", 11);
    at_alice.handle_scanned_code(scan(&at_bob)).unwrap();
    at_bob.handle_scanned_code(scan(&at_alice)).unwrap();
    run(&mut at_alice, &mut at_bob);
    let paired = at_alice.take_paired().unwrap();
    // The code carried Bob's mailbox key: Alice can tag envelopes for him.
    assert_eq!(
        paired.contact.mailbox_key().tag(7),
        bob.mailbox_key().tag(7)
    );

    let home = tempfile::tempdir().unwrap();
    let day = 20_600;
    let keys = PairKeys::new(
        paired.root_secret.expose(),
        alice.public_key().as_bytes(),
        bob.public_key().as_bytes(),
        day,
    );
    {
        let mut book = ContactBook::open(home.path(), &alice).unwrap();
        assert_eq!(book.add(paired.contact.clone()).unwrap(), AddOutcome::Added);
        book.set_pair_keys(&bob.public_key(), &keys).unwrap();
        // Re-adding from a code (no keys in it) keeps the keys.
        let readded = book
            .add(Contact::from_code(
                &ContactCode::new(&bob, DisplayName::new("Bobby").unwrap(), vec![]).unwrap(),
            ))
            .unwrap();
        assert_eq!(readded, AddOutcome::Updated);
    }
    let book = ContactBook::open(home.path(), &alice).unwrap();
    let contact = book.get(&bob.public_key()).unwrap();
    assert_eq!(contact.display_name().as_str(), "Bobby");
    assert_eq!(contact.verification(), Verification::VerifiedInPerson);
    let restored = contact.pair_keys().expect("keys survive a restart");
    assert_eq!(restored.to_bytes(), keys.to_bytes());
    // The restored keys still seal for Bob (he opens with the mirror-image keys).
    let header = SealedHeader {
        created_at_secs: day * 86_400,
        lifetime_secs: 3_600,
        scope: contact.mailbox_key().tag(day),
        priority: Priority::Normal,
        copy_budget: 2,
    };
    let sealed = restored.seal(&header, b"still here").unwrap();
    let at_bob_keys = PairKeys::new(
        paired.root_secret.expose(),
        bob.public_key().as_bytes(),
        alice.public_key().as_bytes(),
        day,
    );
    let opened = at_bob_keys
        .open(&header, &sealed.receipt_lock, &sealed.body)
        .unwrap();
    assert_eq!(opened.plaintext, b"still here");
    // Secrets never show up in debug output.
    let shown = format!("{contact:?}");
    assert!(shown.contains("pair_keys: Some(<secret>)"), "{shown}");
}

#[test]
fn contacts_added_by_code_share_a_static_root_that_only_they_can_compute() {
    let alice = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let carol = Identity::generate(&mut rng(3));
    let code = |who: &Identity, name: &str| {
        Contact::from_code(&ContactCode::new(who, DisplayName::new(name).unwrap(), vec![]).unwrap())
    };
    let at_alice = code(&bob, "Bob").static_root(&alice).unwrap();
    let at_bob = code(&alice, "Alice").static_root(&bob).unwrap();
    assert_eq!(at_alice.expose(), at_bob.expose());
    // Carol, holding both codes, cannot compute it.
    let carol_guess = code(&bob, "Bob").static_root(&carol).unwrap();
    assert_ne!(carol_guess.expose(), at_alice.expose());
}

#[test]
fn a_stale_book_never_overwrites_another_writers_change() {
    // The daemon holds a book for hours; `cairn contact add` writes the same file meanwhile.
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let carol = Identity::generate(&mut rng(3));
    let mut daemon = ContactBook::open(home.path(), &me).unwrap();
    let mut command = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(
        command.add(code_contact(&bob, "Bob", &[])).unwrap(),
        AddOutcome::Added
    );
    // The daemon's copy has not seen Bob, yet its own change keeps him.
    assert!(daemon.get(&bob.public_key()).is_none());
    assert_eq!(
        daemon.add(code_contact(&carol, "Carol", &[])).unwrap(),
        AddOutcome::Added
    );
    assert_eq!(
        daemon.len(),
        2,
        "a change brings the writer's copy up to date"
    );
    // And the command's next change keeps Carol, and sees Bob as already there.
    assert_eq!(
        command.add(code_contact(&bob, "Bob", &[])).unwrap(),
        AddOutcome::Unchanged
    );
    assert!(command.get(&carol.public_key()).is_some());
    let on_disk = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(on_disk.len(), 2);
    // A removal by one is not undone by the other's later, unrelated change.
    assert!(command.remove(&bob.public_key()).unwrap().is_some());
    daemon
        .mark_verified(&carol.public_key(), Verification::VerifiedBySafetyCode)
        .unwrap();
    let on_disk = ContactBook::open(home.path(), &me).unwrap();
    assert!(on_disk.get(&bob.public_key()).is_none());
    assert_eq!(
        on_disk.get(&carol.public_key()).unwrap().verification(),
        Verification::VerifiedBySafetyCode
    );
}

#[test]
fn the_daily_key_roll_keeps_a_pairing_recorded_meanwhile() {
    use cairn_node::seal::PairKeys;
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let day = 20_600;
    let mut daemon = ContactBook::open(home.path(), &me).unwrap();
    // `cairn pair` records Bob and the keys of the pairing while the daemon runs.
    let keys = PairKeys::new(
        &[7; 32],
        me.public_key().as_bytes(),
        bob.public_key().as_bytes(),
        day,
    );
    let mut command = ContactBook::open(home.path(), &me).unwrap();
    let _added = command.add(code_contact(&bob, "Bob", &[])).unwrap();
    command.set_pair_keys(&bob.public_key(), &keys).unwrap();
    // At midnight the daemon rolls the keys of the book on disk, Bob's included.
    daemon.advance_pair_keys(day + 1).unwrap();
    let mut expected = keys.clone();
    expected.advance(day + 1);
    let on_disk = ContactBook::open(home.path(), &me).unwrap();
    let rolled = on_disk.get(&bob.public_key()).unwrap().pair_keys().unwrap();
    assert_eq!(rolled.to_bytes(), expected.to_bytes());
    assert_ne!(
        rolled.to_bytes(),
        keys.to_bytes(),
        "yesterday's keys are gone from disk"
    );
}

#[test]
fn concurrent_writers_lose_no_contact() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let home = home.path().to_path_buf();
            std::thread::spawn(move || {
                // The same identity in each writer (the daemon and commands each load it).
                let me = Identity::generate(&mut rng(1));
                let mut book = ContactBook::open(&home, &me).unwrap();
                for i in 0..15u64 {
                    let peer = Identity::generate(&mut rng(100 + w * 100 + i));
                    let name = format!("w{w} c{i}");
                    assert_eq!(
                        book.add(code_contact(&peer, &name, &[])).unwrap(),
                        AddOutcome::Added
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let book = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(book.len(), 60);
}

#[test]
fn the_book_is_sealed_to_its_identity() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let mut book = ContactBook::open(home.path(), &me).unwrap();
    let _added = book
        .add(code_contact(&bob, "Bartholomew", &["10.0.0.2:7420"]))
        .unwrap();
    let bytes = fs::read(home.path().join(CONTACT_BOOK_FILE_NAME)).unwrap();
    for secret in [
        &b"Bartholomew"[..],
        b"10.0.0.2:7420",
        bob.public_key().as_bytes(),
        bob.device_public_key().as_bytes(),
    ] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
    }
    // Another identity (a book copied to another home, say) cannot read it.
    let thief = Identity::generate(&mut rng(3));
    let err = ContactBook::open(home.path(), &thief).unwrap_err();
    assert!(matches!(err, ContactBookError::Sealed { .. }), "{err}");
    assert!(err.to_string().contains("another identity"));
    assert_eq!(ContactBook::open(home.path(), &me).unwrap().len(), 1);
}

/// A book an earlier version wrote (format 2, in the clear) is read, and sealed at once.
#[test]
fn a_book_in_the_clear_is_sealed_when_opened() {
    let home = tempfile::tempdir().unwrap();
    let me = Identity::generate(&mut rng(1));
    let bob = Identity::generate(&mut rng(2));
    let contact = code_contact(&bob, "Bob", &["h:1"]);
    let mut clear = b"cairn-cb\x02".to_vec();
    clear.extend_from_slice(&1u32.to_le_bytes());
    clear.extend_from_slice(contact.identity().as_bytes());
    clear.extend_from_slice(contact.device().as_bytes());
    clear.extend_from_slice(contact.device_signature());
    clear.extend_from_slice(&contact.mailbox_key().0);
    clear.push(0); // unverified
    clear.push(3);
    clear.extend_from_slice(b"Bob");
    clear.push(1);
    clear.push(3);
    clear.extend_from_slice(b"h:1");
    clear.extend_from_slice(&0u16.to_le_bytes()); // no sealing keys
    let checksum = blake3::derive_key("cairn 2026 contact book checksum", &clear);
    clear.extend_from_slice(&checksum);
    let path = home.path().join(CONTACT_BOOK_FILE_NAME);
    fs::write(&path, &clear).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    let book = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(book.get(&bob.public_key()), Some(&contact));
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes[8], 3, "rewritten in the sealed format");
    assert!(!bytes.windows(3).any(|w| w == b"h:1"));
    assert!(!bytes.windows(32).any(|w| w == bob.public_key().as_bytes()));
    let reopened = ContactBook::open(home.path(), &me).unwrap();
    assert_eq!(reopened.get(&bob.public_key()), Some(&contact));
}
