//! Shared setup: fixed keys so crashes reproduce.

use cairn_transports::hop::*;
use ed25519_dalek::SigningKey;

pub fn config(role: Role, n: u8, framing: Framing) -> HopConfig {
    let keys = LocalKeys::from_identity(&SigningKey::from_bytes(&[n; 32]), [n + 100; 32]);
    let mut c = HopConfig::new(role, keys, NetworkKey::default_network(), framing);
    c.rekey = RekeyLimits {
        messages: 3,
        bytes: 300,
    };
    c.handshake_retransmit_ms = 100;
    c
}

pub fn framing(selector: u8) -> Framing {
    if selector & 1 == 0 {
        Framing::Stream
    } else {
        Framing::Datagram {
            mtu: 200 + usize::from(selector >> 1),
        }
    }
}

#[allow(dead_code)]
/// Drains outputs and checks the invariants a caller relies on.
pub fn drain(s: &mut HopSession) {
    while let Some(t) = s.poll_transmit() {
        assert!(!t.is_empty());
    }
    while let Some(e) = s.poll_event() {
        if let HopEvent::Frame(f) = e {
            assert!(f.len() <= s.max_plaintext().max(65519));
        }
    }
}
