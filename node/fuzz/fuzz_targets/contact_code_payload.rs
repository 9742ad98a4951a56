//! `ContactCode::decode` past the checksum: the input (after a selector byte) is a code's
//! payload; the harness appends the right checksum and writes `cairn1:` and the base32, so
//! the fuzzer works on the payload parser instead of on the checksum. When the selector asks,
//! the identity key is replaced by a fixed one that signs whatever device key the input holds,
//! so that codes also get past the signature check and their round-trip is exercised.
//!
//! Checks: never a panic; `decode` and `parse` agree; case and whitespace do not change the
//! result; an accepted payload is the one canonical encoding of its code (`encode()` gives back
//! exactly the text built here), and everything `common::check_code` asks of a decoded code.
#![no_main]

use cairn_node::identity::{device_signature_message, DevicePublicKey, IdentityPublicKey};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let mut payload = payload.to_vec();
    // flags(1) ‖ identity(32) ‖ device(32) ‖ signature(64) ‖ ...
    if sel & 1 != 0 && payload.len() >= 129 {
        let key = SigningKey::from_bytes(&[(sel >> 4) + 1; 32]);
        let identity = IdentityPublicKey::from_bytes(key.verifying_key().to_bytes())
            .expect("a dalek key is a valid point");
        let mut device = [0u8; 32];
        device.copy_from_slice(&payload[33..65]);
        let message = device_signature_message(&identity, &DevicePublicKey::from_bytes(device));
        payload[1..33].copy_from_slice(identity.as_bytes());
        payload[65..129].copy_from_slice(&key.sign(&message).to_bytes());
    }
    let canonical = common::code_text(&payload);
    let decoded = common::check_code_text(&canonical);

    // The decoder ignores case and whitespace: the same code (or the same refusal, up to the
    // position a typo is reported at, which counts characters without spaces) either way.
    let mut mangled = String::new();
    for (i, c) in canonical.chars().enumerate() {
        if sel & 2 != 0 && i % 4 == 0 {
            mangled.push(if i % 8 == 0 { ' ' } else { '\n' });
        }
        mangled.push(if sel & 4 != 0 { c.to_ascii_uppercase() } else { c });
    }
    let other = common::check_code_text(&mangled);
    assert_eq!(decoded, other, "case or whitespace changed the decoded code");

    if let Some(code) = decoded {
        assert_eq!(
            code.encode(),
            canonical,
            "an accepted payload must be the canonical encoding of its code"
        );
    }
});
