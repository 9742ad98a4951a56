//! The contact book file parser, through its public entry point (`ContactBook::open`): the
//! input is written, mode 0600, as `contacts.bin` in a scratch home. The parser itself
//! (`decode_book`) is private.
//!
//! The selector byte (`sel & 3`) picks how the rest becomes a file:
//! 0. the bytes as they are;
//! 1. the bytes and their correct checksum (unkeyed and public), so mutations reach the
//!    entries behind it;
//! 2. `"cairn-cb" ‖ version 2 ‖ bytes ‖ checksum`: the format an earlier version kept in the
//!    clear, which the book still reads (and seals at once), so the entries parser is reached;
//! 3. a genuine sealed book of three contacts (one with sealing keys) with the input applied
//!    as edits (`offset(2) ‖ xor(1)` triples).
//!
//! Checks: never a panic; an edited sealed book never opens; what opens holds at most
//! `MAX_CONTACTS` contacts, each with a valid name, at most `MAX_HINTS` valid hints and
//! sealing keys that load, each found by `get`; an untouched genuine book opens to its
//! contacts. Round trip: removing a contact and adding it back makes the book rewrite its file
//! (sealed), which must reopen to the same contacts and have the length the entries imply
//! (the input's, plus the 8 bytes sealing adds over a clear book's checksum), twice over.
//! Sealing keys: a contact's keys, rolled to a nearby day (`sel >> 3` picks it) and stored
//! back with `set_pair_keys`, must reopen as stored.
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cairn_node::contact::{
    AddOutcome, Contact, ContactBook, ContactCode, DisplayName, ReachabilityHint, Verification,
    CONTACT_BOOK_FILE_NAME, MAX_CONTACTS, MAX_HINTS,
};
use cairn_node::identity::Identity;
use cairn_node::seal::PairKeys;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

use common::BOOK_CHECKSUM_CONTEXT as CHECKSUM;

struct Fixture {
    home: PathBuf,
    own: Identity,
    genuine: Vec<u8>,
    genuine_contacts: Vec<Contact>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let home = common::scratch("book-home");
        let own = common::identity(1);
        let seed = common::scratch("book-seed");
        let mut book = ContactBook::open(&seed, &own).expect("empty book");
        let people = [
            ("Alice", vec!["192.168.1.20:7420"], Verification::VerifiedInPerson),
            ("Zoë 🌲", vec![], Verification::Unverified),
            ("bob", vec!["[fe80::1]:7420", "h:1"], Verification::VerifiedBySafetyCode),
        ];
        for (n, (name, hints, how)) in people.into_iter().enumerate() {
            let person = common::identity(10 + n as u64);
            let hints = hints
                .into_iter()
                .map(|h| ReachabilityHint::new(h).expect("hint"))
                .collect();
            let code = ContactCode::new(&person, DisplayName::new(name).expect("name"), hints)
                .expect("code");
            assert_eq!(
                book.add(Contact::from_code(&code)).expect("add"),
                AddOutcome::Added
            );
            book.mark_verified(&person.public_key(), how)
                .expect("verify");
            if n == 0 {
                let keys = PairKeys::new(&[7; 32], own.public_key().as_bytes(), person.public_key().as_bytes(), 20_600);
                book.set_pair_keys(&person.public_key(), &keys)
                    .expect("store sealing keys");
            }
        }
        let genuine = fs::read(seed.join(CONTACT_BOOK_FILE_NAME)).expect("read the book");
        let genuine_contacts = book.list().into_iter().cloned().collect();
        fs::remove_dir_all(&seed).expect("clean up");
        Fixture {
            home,
            own,
            genuine,
            genuine_contacts,
        }
    })
}

fn contacts(book: &ContactBook) -> Vec<Contact> {
    book.list().into_iter().cloned().collect()
}

/// Makes the book rewrite its file (remove a contact, add it back) and returns the file.
fn rewrite(book: &mut ContactBook, home: &Path) -> Option<Vec<u8>> {
    let victim = book.list().into_iter().next()?.clone();
    let removed = book
        .remove(&victim.identity())
        .expect("remove")
        .expect("the listed contact is there");
    assert_eq!(removed, victim);
    assert_eq!(book.add(removed).expect("add back"), AddOutcome::Added);
    Some(fs::read(home.join(CONTACT_BOOK_FILE_NAME)).expect("read the rewritten book"))
}

/// Chain steps (one BLAKE3 each) one `advance` may take in one run.
const MAX_STEPS: u64 = 4096;

/// Rolls the first contact's sealing keys to a nearby day and stores them back, as the node
/// does every day: the book must reopen with exactly those keys.
fn roll_keys(book: &mut ContactBook, home: &Path, own: &Identity, sel: u8) {
    let Some((identity, mut keys)) = book
        .list()
        .into_iter()
        .find_map(|c| Some((c.identity(), c.pair_keys()?)))
    else {
        return;
    };
    // version(1) ‖ count(1) ‖ (period(8 LE) ‖ key(32))*: outgoing first, incoming head last.
    let state = keys.to_bytes();
    let period = |i: usize| u64::from_le_bytes(state[2 + 40 * i..][..8].try_into().expect("8"));
    let (outgoing, head) = (period(0), period(usize::from(state[1])));
    let today = outgoing.saturating_add_signed(i64::from(sel >> 3) - 8);
    let steps = today
        .saturating_sub(outgoing)
        .saturating_add(today.saturating_add(1).saturating_sub(head));
    if steps > MAX_STEPS {
        return;
    }
    keys.advance(today);
    book.set_pair_keys(&identity, &keys).expect("store sealing keys");
    let reopened = ContactBook::open(home, own).unwrap_or_else(|e| {
        panic!("the book cannot be reopened after storing keys advanced to day {today}: {e}")
    });
    let stored = reopened
        .get(&identity)
        .and_then(|c| c.pair_keys())
        .expect("the stored keys are there");
    assert_eq!(stored.to_bytes(), keys.to_bytes(), "the book changed the sealing keys");
    assert_eq!(contacts(&reopened), contacts(book));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let file = match sel & 3 {
        0 => rest.to_vec(),
        1 => common::with_file_checksum(CHECKSUM, rest),
        2 => {
            let mut content = b"cairn-cb\x02".to_vec();
            content.extend_from_slice(rest);
            common::with_file_checksum(CHECKSUM, &content)
        }
        _ => {
            let mut file = f.genuine.clone();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
                file[at] ^= edit[2];
            }
            file
        }
    };
    let path = f.home.join(CONTACT_BOOK_FILE_NAME);
    common::write_private(&path, &file);

    let opened = ContactBook::open(&f.home, &f.own);
    common::trace(format_args!("open: {:?}", opened.as_ref().map(|b| b.len())));
    if sel & 3 == 3 && file != f.genuine {
        assert!(opened.is_err(), "an edited sealed book opened");
    }
    let Ok(mut book) = opened else {
        assert_ne!(file, f.genuine, "the genuine book must open");
        return;
    };
    let opened = contacts(&book);
    if file == f.genuine {
        assert_eq!(opened, f.genuine_contacts, "the genuine book opened to other contacts");
    }
    assert!(book.len() <= MAX_CONTACTS);
    assert_eq!(opened.len(), book.len());
    for c in &opened {
        DisplayName::new(c.display_name().as_str()).expect("a loaded name must be valid");
        assert!(c.hints().len() <= MAX_HINTS);
        for hint in c.hints() {
            ReachabilityHint::new(hint.as_str()).expect("a loaded hint must be valid");
        }
        assert_eq!(book.get(&c.identity()), Some(c));
        if let Some(keys) = c.pair_keys() {
            assert!(keys.to_bytes().len() < 256, "sealing keys too long for the book");
        }
    }

    let Some(rewritten) = rewrite(&mut book, &f.home) else {
        return;
    };
    assert_eq!(contacts(&book), opened, "remove and add back changed the book");
    let mut reopened = ContactBook::open(&f.home, &f.own).expect("a rewritten book must open");
    assert_eq!(contacts(&reopened), opened, "the rewritten book reopens to other contacts");
    // A book read in the clear (version 2) ends in a 32-byte checksum; a sealed one carries a
    // 24-byte nonce and a 16-byte tag instead.
    let sealing = if file[8] == 2 { 8 } else { 0 };
    assert_eq!(
        rewritten.len(),
        file.len() + sealing,
        "the same contacts re-encode to a different length"
    );
    let again = rewrite(&mut reopened, &f.home).expect("still has the contact");
    assert_eq!(again.len(), rewritten.len(), "the book's encoding changed length");
    assert_ne!(again, rewritten, "a fresh nonce for every write");
    roll_keys(&mut reopened, &f.home, &f.own, sel);
});
