//! A responder session fed arbitrary frames (the input split at 0xFF bytes)
//! against a store with a few items: never a panic, never a hang, and nothing that is not
//! a valid item enters the store.
#![no_main]

use cairn_sync::envelope::{Envelope, Priority, ScopeTag, ReceiptProof};
use cairn_sync::policy::NodePolicy;
use cairn_sync::session::{originate, Role, SessionConfig, SyncSession};
use cairn_sync::store::{MemStore, Store};
use cairn_sync::time::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp::from_secs(1_790_000_000);
    let policy = NodePolicy {
        scopes: vec![ScopeTag([2; 8])],
        ..NodePolicy::default()
    };
    let mut store = MemStore::new();
    for n in 0..3u8 {
        let e = Envelope {
            created_at_secs: 1_790_000_000,
            lifetime_secs: 3600,
            scope: ScopeTag([n; 8]),
            priority: Priority::High,
            copy_budget: 4,
            receipt_lock: ReceiptProof([n; 16]).lock(),
            body: vec![n; 40],
        };
        let _ = originate(&mut store, &policy, &e, now);
    }
    let Ok(mut session) = SyncSession::new(
        SessionConfig::new(512, policy),
        Role::Responder,
        vec![1],
        7,
        now,
    ) else {
        return;
    };
    for frame in data.split(|&b| b == 0xFF) {
        if session.handle_frame(now, frame, &mut store).is_err() {
            break;
        }
        for _ in 0..64 {
            match session.poll_transmit(now, &mut store) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        while session.poll_event().is_some() {}
    }
    let usage = store.usage().expect("memory store");
    assert!(usage.items <= 3 + 64, "store grew beyond what the frames could carry");
});
