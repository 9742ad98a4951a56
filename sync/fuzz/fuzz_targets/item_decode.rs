//! `Item::decode` on arbitrary bytes: it must never panic, and whatever it accepts must be
//! the canonical encoding of what it returns (one item, one byte string, one id).
#![no_main]

use cairn_sync::envelope::Item;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        let encoded = item.encode();
        assert_eq!(
            encoded, data,
            "an accepted item must re-encode to the same bytes"
        );
        let again = Item::decode(&encoded).expect("a re-encoded item must decode");
        assert_eq!(
            again.id(),
            item.id(),
            "an item's id must not depend on the decode"
        );
    }
});
