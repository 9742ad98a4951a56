//! `PairKeys::from_bytes` (the persisted sealing state) on arbitrary bytes after a selector
//! byte. Never a panic; whatever it accepts re-encodes with `to_bytes` to exactly the same
//! bytes (one state, one encoding) and decodes again, and its incoming keys really are
//! consecutive days (no wrap-around at `u64::MAX`; `pair_keys.dict` helps find that one).
//!
//! Then what the node does with a loaded state: `advance` to a day near the state's own days
//! (the selector picks which and how far, skipped when the gap would take more than a few
//! thousand chain steps), after which the state must still be what `to_bytes`/`from_bytes`
//! can persist and reload (at most `KEEP_PERIODS + 1` consecutive incoming keys), with the
//! outgoing chain at the later of its day and today.
#![no_main]

use cairn_node::seal::{PairKeys, KEEP_PERIODS, MAX_ADVANCE_DAYS};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Chain steps (one BLAKE3 each) an `advance` may take in one run.
const MAX_STEPS: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, state)) = data.split_first() else {
        return;
    };
    let keys = PairKeys::from_bytes(state);
    common::trace(format_args!("from_bytes: {keys:?}"));
    let Ok(keys) = keys else {
        return;
    };
    let bytes = keys.to_bytes();
    assert_eq!(
        bytes, state,
        "an accepted state must re-encode to the same bytes"
    );
    let again = PairKeys::from_bytes(&bytes).expect("a re-encoded state must decode");
    assert_eq!(again.to_bytes(), bytes);

    // version(1) ‖ count(1) ‖ (period(8 LE) ‖ key(32)) × (1 + count): outgoing, then incoming.
    let periods: Vec<u64> = state[2..]
        .chunks_exact(40)
        .map(|c| u64::from_le_bytes(c[..8].try_into().expect("8 bytes")))
        .collect();
    let outgoing = periods[0];
    let oldest_in = periods[1];
    let head = *periods.last().expect("at least one incoming key");
    assert_eq!(keys.today(), outgoing);
    assert!(
        periods[1..]
            .windows(2)
            .all(|w| w[0].checked_add(1) == Some(w[1])),
        "accepted incoming keys that are not consecutive days: {keys:?}"
    );

    let base = match sel & 3 {
        0 => outgoing,
        1 => oldest_in,
        2 => head,
        _ => 20_600,
    };
    let today = base.saturating_add_signed(i64::from(sel >> 2) - 16);
    let steps = today
        .saturating_sub(outgoing)
        .saturating_add(today.saturating_add(1).saturating_sub(head));
    if steps > MAX_STEPS {
        return;
    }
    let mut advanced = keys.clone();
    advanced.advance(today);
    // A clock more than MAX_ADVANCE_DAYS ahead of the keys is treated as broken.
    let expected = outgoing.max(today.min(outgoing.saturating_add(MAX_ADVANCE_DAYS)));
    assert_eq!(
        advanced.today(),
        expected,
        "outgoing chain at the wrong day"
    );
    common::trace(format_args!("advance({today}): {advanced:?}"));
    let saved = advanced.to_bytes();
    let reloaded = PairKeys::from_bytes(&saved).unwrap_or_else(|e| {
        panic!("the state after advance({today}) cannot be reloaded ({e}): {advanced:?}")
    });
    assert_eq!(reloaded.to_bytes(), saved);
    assert!(usize::from(saved[1]) <= KEEP_PERIODS as usize + 1);
});
