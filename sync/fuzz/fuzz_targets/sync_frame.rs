//! `wire::decode_frame` on arbitrary bytes (every sync message, reconciliation messages
//! included): never a panic; whatever decodes re-encodes to the same bytes.
#![no_main]

use cairn_sync::wire::{decode_frame, encode_into, MAX_MTU};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = decode_frame(data, MAX_MTU) {
        let mut again = Vec::new();
        for m in &messages {
            encode_into(m, &mut again);
        }
        assert_eq!(again, data, "an accepted frame must re-encode to the same bytes");
    }
});
