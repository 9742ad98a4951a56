//! Two reconcilers against each other in memory: exact differences, round trips, limits,
//! and hostile input.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

/// What one in-memory session cost and produced.
#[derive(Debug)]
struct Run {
    summarizer: Result<ReconOutcome, ReconError>,
    coder: Result<ReconOutcome, ReconError>,
    /// Encoded bytes of every message, both directions.
    bytes: usize,
    /// Direction changes + 1 (S→C, C→S, S→C = 3 flights = 2 round trips).
    flights: usize,
    max_message: usize,
}

impl Run {
    fn round_trips(&self) -> usize {
        self.flights.div_ceil(2)
    }
}

/// Drives a summarizer and a coder to completion, passing every message through its
/// encoding (so sizes and decoding are exercised too).
fn run(salt: Salt, s_keys: Vec<ReconKey>, c_keys: Vec<ReconKey>, max_len: usize) -> Run {
    let mut s = Reconciler::summarizer(salt, s_keys, max_len);
    let mut c = Reconciler::coder(salt, c_keys, max_len);
    let (mut bytes, mut flights, mut max_message) = (0, 0, 0);
    let mut error_s = None;
    let mut error_c = None;
    for _ in 0..1000 {
        let mut moved = false;
        // S → C flight.
        let mut flight = false;
        while let Some(m) = s.poll_message() {
            let encoded = m.to_bytes();
            bytes += encoded.len();
            max_message = max_message.max(encoded.len());
            flight = true;
            let decoded = ReconMessage::from_bytes(&encoded).unwrap();
            assert_eq!(decoded, m);
            if let Err(e) = c.handle_message(decoded) {
                error_c = Some(e);
                break;
            }
        }
        flights += usize::from(flight);
        moved |= flight;
        // C → S flight.
        let mut flight = false;
        while let Some(m) = c.poll_message() {
            let encoded = m.to_bytes();
            bytes += encoded.len();
            max_message = max_message.max(encoded.len());
            flight = true;
            if let Err(e) = s.handle_message(ReconMessage::from_bytes(&encoded).unwrap()) {
                error_s = Some(e);
                break;
            }
        }
        flights += usize::from(flight);
        moved |= flight;
        if !moved || error_s.is_some() || error_c.is_some() {
            break;
        }
    }
    let result = |r: &Reconciler, e: Option<ReconError>| match e {
        Some(e) => Err(e),
        None => r
            .outcome()
            .cloned()
            .ok_or(ReconError::SymbolCapReached { cap: 0 }),
    };
    Run {
        summarizer: result(&s, error_s),
        coder: result(&c, error_c),
        bytes,
        flights,
        max_message,
    }
}

/// Checks both outcomes against the true difference.
fn assert_exact(run: &Run, salt: Salt, s_keys: &[ReconKey], c_keys: &[ReconKey]) {
    let s_set: BTreeSet<_> = s_keys.iter().copied().collect();
    let c_set: BTreeSet<_> = c_keys.iter().copied().collect();
    let s_only: Vec<ReconKey> = s_set.difference(&c_set).copied().collect();
    let c_only: Vec<ReconKey> = c_set.difference(&s_set).copied().collect();
    let mut c_only_short: Vec<ShortId> = c_only.iter().map(|&k| salt.short_id(k)).collect();
    c_only_short.sort_unstable();

    let s_out = run.summarizer.as_ref().expect("summarizer finished");
    let c_out = run.coder.as_ref().expect("coder finished");
    assert_eq!(
        s_out.remote_lacks, s_only,
        "summarizer must send what the coder lacks"
    );
    assert_eq!(
        s_out.local_lacks, c_only_short,
        "summarizer must want what it lacks"
    );
    assert_eq!(
        c_out.remote_lacks, c_only,
        "coder must send what the summarizer wants"
    );
    assert!(c_out.local_lacks.is_empty());
}

fn key(i: u64) -> ReconKey {
    // Spread over the whole 128-bit space like real id prefixes.
    (u128::from(hash::mix64(i)) << 64) | u128::from(hash::mix64(!i))
}

fn keys(range: std::ops::Range<u64>) -> Vec<ReconKey> {
    range.map(key).collect()
}

const SALT: Salt = Salt(*b"cairn-test-salt!");

#[test]
fn equal_sets_take_one_round_trip_under_64_bytes() {
    let set = keys(0..5000);
    let r = run(SALT, set.clone(), set.clone(), 200 - 8);
    assert_exact(&r, SALT, &set, &set);
    assert_eq!(r.round_trips(), 1);
    assert!(r.bytes <= 64, "{} bytes", r.bytes);
}

#[test]
fn two_empty_sets_are_equal() {
    let r = run(SALT, vec![], vec![], 192);
    assert_exact(&r, SALT, &[], &[]);
    assert_eq!(r.round_trips(), 1);
}

#[test]
fn one_missing_item_each_way() {
    let base = keys(0..1000);
    let mut s = base.clone();
    s.push(key(5000));
    let mut c = base;
    c.push(key(6000));
    let r = run(SALT, s.clone(), c.clone(), 192);
    assert_exact(&r, SALT, &s, &c);
    assert_eq!(r.round_trips(), 2);
}

#[test]
fn empty_summarizer_gets_everything_from_an_id_list() {
    let c = keys(0..3000);
    let r = run(SALT, vec![], c.clone(), 192);
    assert_exact(&r, SALT, &[], &c);
    assert!(r.max_message <= 192);
    // The coder's ids one way, the same ids wanted back: 16 bytes per item plus headers.
    assert!(r.bytes < 2 * 3000 * 8 * 11 / 10, "{} bytes", r.bytes);
}

#[test]
fn empty_coder_learns_it_lacks_nothing_it_can_name() {
    let s = keys(0..3000);
    let r = run(SALT, s.clone(), vec![], 192);
    assert_exact(&r, SALT, &s, &[]);
    assert!(r.bytes < 200, "{} bytes", r.bytes);
}

#[test]
fn disjoint_sets_reconcile() {
    let s = keys(0..700);
    let c = keys(700..1500);
    let r = run(SALT, s.clone(), c.clone(), 65536);
    assert_exact(&r, SALT, &s, &c);
}

#[test]
fn every_message_fits_a_lora_frame() {
    let s = keys(0..4000);
    let c = keys(300..4300);
    let r = run(SALT, s.clone(), c.clone(), 200 - 8);
    assert_exact(&r, SALT, &s, &c);
    assert!(r.max_message <= 192);
}

#[test]
fn tiny_max_message_len_is_raised_to_the_minimum() {
    let s = keys(0..100);
    let c = keys(50..150);
    let r = run(SALT, s.clone(), c.clone(), 10);
    assert_exact(&r, SALT, &s, &c);
    assert!(r.max_message <= MIN_MESSAGE_LEN);
}

#[test]
fn short_id_collision_within_one_set_is_a_typed_error() {
    // The same key twice in the summarizer's set behaves like two items sharing a short id.
    let mut s = keys(0..100);
    s.push(key(999));
    s.push(key(999));
    let c = keys(0..100);
    let r = run(SALT, s, c, 65536);
    assert!(
        matches!(r.summarizer, Err(ReconError::ShortIdCollision)),
        "{:?}",
        r.summarizer
    );
}

// ---- hostile or broken peers ----

fn summary_of(keys: Vec<ReconKey>) -> ReconMessage {
    let mut s = Reconciler::summarizer(SALT, keys, 65536);
    s.poll_message().unwrap()
}

#[test]
fn message_in_the_wrong_state_is_refused_and_fails_the_session() {
    let mut c = Reconciler::coder(SALT, keys(0..10), 192);
    let err = c.handle_message(ReconMessage::More).unwrap_err();
    assert!(matches!(
        err,
        ReconError::UnexpectedMessage { got: "More", .. }
    ));
    assert!(c.has_failed());
    // Even a valid Summary is refused afterwards.
    assert!(c.handle_message(summary_of(keys(0..10))).is_err());
    assert!(c.poll_message().is_none());
}

#[test]
fn coder_refuses_wants_for_items_it_does_not_have() {
    let mut c = Reconciler::coder(SALT, keys(0..10), 192);
    c.handle_message(summary_of(keys(0..11))).unwrap();
    while c.poll_message().is_some() {}
    let bogus = ReconMessage::Want {
        last: true,
        ids: BoundedVec(vec![ShortId(42)]),
    };
    assert!(matches!(
        c.handle_message(bogus),
        Err(ReconError::UnknownWant(42))
    ));
}

#[test]
fn coder_refuses_more_wants_than_items() {
    let mut c = Reconciler::coder(SALT, keys(0..2), 192);
    c.handle_message(summary_of(keys(0..3))).unwrap();
    while c.poll_message().is_some() {}
    let ids = BoundedVec(vec![ShortId(1), ShortId(2), ShortId(3)]);
    assert!(matches!(
        c.handle_message(ReconMessage::Want { last: false, ids }),
        Err(ReconError::TooManyWants { got: 3, have: 2 })
    ));
}

#[test]
fn summarizer_refuses_gaps_missing_counts_and_endless_streams() {
    let symbols = |n: usize| {
        BoundedVec(vec![
            CodedSymbol {
                sum: 1,
                check: 2,
                count: 3
            };
            n
        ])
    };
    // First message without the coder's count.
    let mut s = Reconciler::summarizer(SALT, keys(0..10), 192);
    let err = s
        .handle_message(ReconMessage::Symbols {
            start: 0,
            coder_count: None,
            last: false,
            symbols: symbols(1),
        })
        .unwrap_err();
    assert!(matches!(err, ReconError::MisplacedCount));

    // A gap in the stream.
    let mut s = Reconciler::summarizer(SALT, keys(0..10), 192);
    s.handle_message(ReconMessage::Symbols {
        start: 0,
        coder_count: Some(10),
        last: false,
        symbols: symbols(3),
    })
    .unwrap();
    let err = s
        .handle_message(ReconMessage::Symbols {
            start: 5,
            coder_count: None,
            last: false,
            symbols: symbols(3),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        ReconError::OutOfOrder {
            expected: 3,
            got: 5
        }
    ));

    // A stream that never decodes hits the cap 2·(10 + 10) + 64 = 104.
    let mut s = Reconciler::summarizer(SALT, keys(0..10), 65536);
    let err = s
        .handle_message(ReconMessage::Symbols {
            start: 0,
            coder_count: Some(10),
            last: true,
            symbols: symbols(105),
        })
        .unwrap_err();
    assert!(matches!(err, ReconError::SymbolCapReached { cap: 104 }));

    // A claimed set beyond any real store.
    let mut s = Reconciler::summarizer(SALT, keys(0..10), 65536);
    let err = s
        .handle_message(ReconMessage::IdList {
            coder_count: Some(u64::MAX),
            last: true,
            ids: BoundedVec::default(),
        })
        .unwrap_err();
    assert!(matches!(err, ReconError::PeerSetTooLarge { .. }));
}

#[test]
fn summarizer_refuses_id_lists_longer_or_shorter_than_announced() {
    let ids = |n: u64| BoundedVec((0..n).map(ShortId).collect());
    let mut s = Reconciler::summarizer(SALT, keys(0..10), 65536);
    let err = s
        .handle_message(ReconMessage::IdList {
            coder_count: Some(2),
            last: false,
            ids: ids(3),
        })
        .unwrap_err();
    assert!(matches!(err, ReconError::IdListTooLong { announced: 2 }));

    let mut s = Reconciler::summarizer(SALT, keys(0..10), 65536);
    let err = s
        .handle_message(ReconMessage::IdList {
            coder_count: Some(5),
            last: true,
            ids: ids(3),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        ReconError::IdListTooShort {
            got: 3,
            announced: 5
        }
    ));
}

#[test]
fn corrupted_symbols_fail_cleanly_or_still_reconcile_exactly() {
    // Flip bytes in the coder's symbols: the summarizer may need more symbols, fail with a
    // typed error, or (when the flip hit an unused bit) finish; it never panics, and a
    // finished outcome is never wrong about keys it names.
    let s_keys = keys(0..500);
    let c_keys = keys(20..520);
    for flip in 0..40usize {
        let mut s = Reconciler::summarizer(SALT, s_keys.clone(), 192);
        let mut c = Reconciler::coder(SALT, c_keys.clone(), 192);
        c.handle_message(s.poll_message().unwrap()).unwrap();
        let mut n = 0;
        let mut failed = false;
        while let Some(m) = c.poll_message() {
            let mut bytes = m.to_bytes();
            if n == flip % 3 {
                let at = 7 + (flip * 13) % (bytes.len() - 7);
                bytes[at] ^= 1 << (flip % 8);
            }
            n += 1;
            match ReconMessage::from_bytes(&bytes).and_then(|m| s.handle_message(m)) {
                Ok(()) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if let (false, Some(out)) = (failed, s.outcome()) {
            let c_set: BTreeSet<_> = c_keys.iter().collect();
            assert!(out.remote_lacks.iter().all(|k| !c_set.contains(k)));
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut state = 1u64;
    for len in 0..400usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = hash::mix64(state);
                state as u8
            })
            .collect();
        for mut r in [
            Reconciler::coder(SALT, keys(0..50), 192),
            Reconciler::summarizer(SALT, keys(0..50), 192),
        ] {
            let _ = r.poll_message();
            if let Ok(m) = ReconMessage::from_bytes(&bytes) {
                let _ = r.handle_message(m);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sets_reconcile_to_exactly_the_true_difference(
        common in 0u64..2000,
        s_only in 0u64..300,
        c_only in 0u64..300,
        mtu in 200usize..=65536,
        salt in any::<[u8; 16]>(),
        offset in any::<u32>(),
    ) {
        let base = u64::from(offset) << 20;
        let common_keys = keys(base..base + common);
        let mut s = common_keys.clone();
        s.extend(keys(base + common..base + common + s_only));
        let mut c = common_keys;
        c.extend(keys(base + 5000..base + 5000 + c_only));
        let salt = Salt(salt);
        let r = run(salt, s.clone(), c.clone(), mtu - 8);
        assert_exact(&r, salt, &s, &c);
        prop_assert!(r.max_message <= mtu - 8);
        if s_only + c_only == 0 {
            prop_assert_eq!(r.round_trips(), 1);
        }
    }

    #[test]
    fn equal_random_sets_take_one_round_trip(
        n in 0u64..2000,
        mtu in 200usize..=65536,
        salt in any::<[u8; 16]>(),
    ) {
        let set = keys(0..n);
        let salt = Salt(salt);
        let r = run(salt, set.clone(), set.clone(), mtu - 8);
        assert_exact(&r, salt, &set, &set);
        prop_assert_eq!(r.round_trips(), 1);
        prop_assert!(r.bytes <= 64 - 2 * 2, "{} bytes", r.bytes);
    }

    #[test]
    fn random_sparse_sets_reconcile(
        s in proptest::collection::btree_set(0u64..3000, 0..2000),
        c in proptest::collection::btree_set(0u64..3000, 0..2000),
        mtu in 200usize..=65536,
    ) {
        let s: Vec<ReconKey> = s.into_iter().map(key).collect();
        let c: Vec<ReconKey> = c.into_iter().map(key).collect();
        let r = run(SALT, s.clone(), c.clone(), mtu - 8);
        assert_exact(&r, SALT, &s, &c);
    }
}

/// Calibration of the first-batch size (not a check; run with
/// `cargo test --release -p cairn-sync --lib calibrate -- --ignored --nocapture`):
/// for each d, the fraction of sessions that decode from the first batch and the mean
/// bytes per difference.
#[test]
#[ignore]
fn calibrate_first_batch() {
    for &d in &[1u64, 2, 3, 5, 10, 30, 100, 300, 1000, 3000] {
        let trials = if d >= 1000 { 100 } else { 400 };
        let mut rts = [0usize; 6];
        let mut bytes = 0usize;
        for t in 0..trials {
            let mut salt = [0u8; 16];
            salt[..8].copy_from_slice(&(t as u64 * 7919 + d).to_le_bytes());
            let salt = Salt(salt);
            let n = 5000u64.max(3 * d);
            let common = keys(0..n);
            let mut s = common.clone();
            let mut c = common;
            s.extend(keys(1 << 40..(1 << 40) + d / 2));
            c.extend(keys(1 << 41..(1 << 41) + (d - d / 2)));
            let r = run(salt, s.clone(), c.clone(), 65536 - 8);
            assert_exact(&r, salt, &s, &c);
            rts[r.round_trips().min(5)] += 1;
            bytes += r.bytes;
        }
        println!(
            "d={d:5}: round trips {:?}, {:.1} bytes/diff",
            &rts[1..],
            bytes as f64 / (trials as f64 * d as f64)
        );
    }
}
