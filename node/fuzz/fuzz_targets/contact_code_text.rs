//! `ContactCode::decode` and `FromStr` on arbitrary text: the input as UTF-8 when it is one,
//! and always through `String::from_utf8_lossy`, so arbitrary bytes reach the decoder too.
//! Never a panic; `decode` and `parse` agree; an accepted code has valid contents (name,
//! hints, a verifying device signature) and a canonical text form that decodes, in either
//! case, to the same code and re-encodes to the same text. Nothing is allocated in proportion
//! to the input beyond `MAX_CODE_INPUT_BYTES` (run with `-max_len` above 4096 to check).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        common::check_code_text(text);
    }
    common::check_code_text(&String::from_utf8_lossy(data));
});
