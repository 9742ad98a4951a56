//! The simulator end to end: real sync sessions over generated and hand-made traces.
//!
//! What a user of the figures relies on: the oracle is right on cases computed by hand; a
//! seed reproduces a run byte for byte; with room and bandwidth to spare the real protocol
//! delivers everything an ideal flood can; messages cross many carriers; and nothing is ever
//! delivered twice.

// Helpers shared by the tests below are not `#[test]` functions, which clippy's
// `allow-unwrap-in-tests` does not cover; a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use cairn_tools::sim::oracle::Oracle;
use cairn_tools::sim::scenario::{ring_distance, Scenario};
use cairn_tools::sim::{self, EngineConfig, EngineOutcome, SimReport, StoreKind, Trace};

fn config(seed: u64) -> EngineConfig {
    EngineConfig {
        seed,
        ..EngineConfig::default()
    }
}

/// Runs and checks the invariants every run must keep, whatever the settings.
fn run_checked(name: &str, trace: &Trace, config: &EngineConfig) -> (SimReport, EngineOutcome) {
    let outcome = sim::simulate(trace, config, StoreKind::Mem).unwrap();
    let report = sim::build_report(name, trace, config, StoreKind::Mem, &outcome);
    assert_eq!(
        report.duplicate_deliveries, 0,
        "{name}: a message was delivered twice"
    );
    assert_eq!(
        report.misdeliveries, 0,
        "{name}: delivered to the wrong node"
    );
    if config.buffer_bytes >= EngineConfig::default().buffer_bytes {
        assert_eq!(
            report.vanished, 0,
            "{name}: a message vanished from the network with buffers to spare"
        );
    }
    // Nobody beats the flood: every delivery the engine made, the oracle made no later.
    let oracle = Oracle::new(trace).deliver_all();
    for (i, got) in outcome.delivered_ms.iter().enumerate() {
        if let Some(t) = got {
            let best = oracle[i].delivered_ms;
            assert!(
                best.is_some_and(|b| b <= *t),
                "{name}: message {i} delivered at {t} ms, oracle says {best:?}"
            );
        }
    }
    (report, outcome)
}

/// 0 meets 1 during [10 s, 20 s], 1 meets 2 during [15 s, 30 s].
const TINY_CONTACTS: &str = "start_s,end_s,node_a,node_b,bytes_per_s\n\
                             10,20,0,1,100\n\
                             15,30,2,1,50\n";
const TINY_MESSAGES: &str = "created_s,msg_id,from,to,size_bytes,ttl_s\n\
                             0,early,0,2,200,3600\n\
                             17,mid,0,2,200,3600\n\
                             19,late,0,2,200,3600\n\
                             0,back,2,0,200,3600\n";

#[test]
fn oracle_matches_hand_computed_arrivals() {
    let trace = Trace::from_csv(TINY_CONTACTS, TINY_MESSAGES).unwrap();
    let oracle = Oracle::new(&trace);
    let at = |name: &str| {
        let m = trace.messages.iter().find(|m| m.name == name).unwrap();
        (oracle.deliver(m).delivered_ms, oracle.arrival_times(m))
    };
    // early: 0→1 from 10 s for 200/100 = 2 s; 1→2 waits for its contact at 15 s, 4 s.
    let (early, nodes) = at("early");
    assert_eq!(early, Some(19_000));
    assert_eq!(nodes[1], Some((12_000, 1)));
    // mid: 0→1 17-19 s, 1→2 19-23 s.
    assert_eq!(at("mid").0, Some(23_000));
    // late: 0→1 would end at 21 s, after that contact closed at 20 s.
    assert_eq!(at("late").0, None);
    // back: 2→1 15-19 s, then 1→0 19-21 s misses the 20 s close.
    let (back, nodes) = at("back");
    assert_eq!(back, None);
    assert_eq!(nodes[1], Some((19_000, 1)));
}

#[test]
fn engine_carries_through_a_relay_on_a_hand_made_trace() {
    // The same shape with radios fast enough for the protocol's round trips.
    let contacts = TINY_CONTACTS
        .replace(",100\n", ",250000\n")
        .replace(",50\n", ",250000\n");
    let trace = Trace::from_csv(&contacts, TINY_MESSAGES).unwrap();
    let (report, outcome) = run_checked("tiny", &trace, &config(1));
    // At 250 kB/s every message fits its windows, `late` and `back` included.
    assert_eq!(report.oracle_delivered, 4, "{report:?}");
    assert_eq!(report.delivered, 4, "{report:?}");
    // `early` waits at the relay for the second contact: it arrives just after 15 s.
    let early = outcome.delivered_ms[0].unwrap();
    assert!((15_000..16_000).contains(&early), "delivered at {early} ms");
    assert_eq!(outcome.delivered_hops[0], 2);
}

#[test]
fn same_seed_same_bytes_from_the_command_line() {
    let run = |seed: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
            .args([
                "--scenario",
                "ring",
                "--nodes",
                "6",
                "--hours",
                "1",
                "--seed",
                seed,
            ])
            .args(["--loss", "0.01", "--no-timing"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run("11");
    assert_eq!(first, run("11"));
    assert_ne!(first, run("12"), "another seed should give another run");
    let json: serde_json::Value = serde_json::from_str(&first).unwrap();
    for key in [
        "delivery_ratio",
        "oracle_delivery_ratio",
        "latency_p50_s",
        "latency_p95_s",
        "latency_mean_s",
        "oracle_latency_p50_s",
        "oracle_latency_mean_s",
        "transmissions_per_delivered",
        "bytes_per_delivered",
        "recon_bytes",
        "messages",
        "delivered",
        "contacts",
        "nodes",
        "seed",
        "duplicate_deliveries",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {first}");
    }
    assert!(json.get("runtime_ms").is_none());
}

#[test]
fn cli_explains_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args(["--scenario", "mars", "--seed", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("field-team"));
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args(["--scenario", "ring", "--seed", "1", "--mtu", "20"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MTU 20"));
}

/// With buffers and bandwidth to spare, the real protocol should deliver what the flood
/// delivers. The slack allowed: a meeting costs the protocol a few frame latencies (hello,
/// summary, chunks: ≈ 30-50 ms at 10 ms per frame) before the first item moves, where the
/// oracle moves it at the contact's first instant; a message whose only path uses a contact
/// shorter than that is out of reach. In these scenarios contacts last seconds to hours, so
/// the slack is at most one message in a hundred.
fn assert_matches_oracle(scenario: Scenario, nodes: usize, hours: f64, seed: u64) -> SimReport {
    let trace = scenario.generate(seed, Some(nodes), Some(hours)).unwrap();
    let (report, _) = run_checked(scenario.name(), &trace, &config(seed));
    assert!(report.oracle_delivered > 0, "{report:?}");
    let slack = (report.oracle_delivered / 100).max(1);
    assert!(
        report.delivered + slack >= report.oracle_delivered,
        "{scenario}: delivered {} of the oracle's {}: {report:#?}",
        report.delivered,
        report.oracle_delivered
    );
    report
}

#[test]
fn field_team_delivers_what_the_oracle_does() {
    assert_matches_oracle(Scenario::FieldTeam, 8, 6.0, 3);
}

#[test]
fn random_waypoint_delivers_what_the_oracle_does() {
    assert_matches_oracle(Scenario::RandomWaypoint, 15, 1.0, 4);
}

#[test]
fn ring_carries_messages_across_many_hops() {
    let nodes = 10;
    let report = assert_matches_oracle(Scenario::Ring, nodes, 4.0, 5);
    assert!(report.max_hops >= 5, "{report:?}");
    // And the far messages specifically: every delivered message crossed at least as many
    // contacts as ring positions separate its ends.
    let trace = Scenario::Ring.generate(5, Some(nodes), Some(4.0)).unwrap();
    let (_, outcome) = run_checked("ring", &trace, &config(5));
    let mut far = 0;
    for (i, m) in trace.messages.iter().enumerate() {
        if outcome.delivered_ms[i].is_some() {
            let d = ring_distance(nodes, m.from, m.to) as u32;
            assert!(outcome.delivered_hops[i] >= d, "message {i}");
            far += usize::from(d >= 5);
        }
    }
    assert!(far > 0, "no message between opposite ends was delivered");
}

#[test]
fn lossy_links_still_deliver_once() {
    let trace = Scenario::Ring.generate(8, Some(8), Some(3.0)).unwrap();
    let lossy = EngineConfig {
        loss: 0.05,
        ..config(8)
    };
    let (report, _) = run_checked("ring", &trace, &lossy);
    assert!(report.frames_lost > 0, "{report:?}");
    assert!(report.delivered > report.oracle_delivered / 2, "{report:?}");
}

#[test]
fn small_buffers_and_budgets_cost_delivery_not_correctness() {
    let trace = Scenario::FieldTeam
        .generate(9, Some(10), Some(8.0))
        .unwrap();
    let tight = EngineConfig {
        buffer_bytes: 4_000,
        copies: 2,
        ..config(9)
    };
    let (tight_report, _) = run_checked("field-team", &trace, &tight);
    let (ample_report, _) = run_checked("field-team", &trace, &config(9));
    assert!(tight_report.delivered <= ample_report.delivered);
    assert!(tight_report.envelope_transfers < ample_report.envelope_transfers);
}

#[test]
fn focus_moves_last_copies_without_losing_or_multiplying_them() {
    let trace = Scenario::RandomWaypoint
        .generate(11, Some(20), Some(2.0))
        .unwrap();
    let budget = 4;
    let focus = EngineConfig {
        copies: budget,
        ..config(11)
    };
    let wait = EngineConfig {
        focus: false,
        ..focus.clone()
    };
    let (focus_report, _) = run_checked("random-waypoint", &trace, &focus);
    let (wait_report, _) = run_checked("random-waypoint", &trace, &wait);
    assert!(focus_report.handovers > 0, "{focus_report:?}");
    assert_eq!(wait_report.handovers, 0);
    // The budget, the sender's passive copy, and one custody handover in flight.
    assert!(
        focus_report.copies_peak_max <= u32::from(budget) + 2,
        "{focus_report:?}"
    );
    assert!(focus_report.delivered > 0);
}

#[test]
fn lmdb_store_gives_the_same_run_as_memory() {
    let trace = Scenario::Ring.generate(2, Some(5), Some(1.0)).unwrap();
    let cfg = config(2);
    let mem = sim::run("ring", &trace, &cfg, StoreKind::Mem).unwrap();
    let mut lmdb = sim::run("ring", &trace, &cfg, StoreKind::Lmdb).unwrap();
    assert_eq!(lmdb.config.store, "lmdb");
    lmdb.config.store = "mem";
    assert_eq!(mem, lmdb);
}

/// The shared Helsinki trace, when the checkout has it (CI does, at ../shared): parsing it
/// must reproduce the README's flood figure.
#[test]
fn helsinki_oracle_reproduces_the_published_flood() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/helsinki");
    let (contacts, messages) = (dir.join("contacts.csv"), dir.join("messages_v2.csv"));
    if !contacts.exists() || !messages.exists() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let trace = Trace::from_files(&contacts, &messages).unwrap();
    assert_eq!(
        (trace.nodes, trace.contacts.len(), trace.messages.len()),
        (126, 30_759, 1458)
    );
    let delivered = Oracle::new(&trace)
        .deliver_all()
        .iter()
        .filter(|a| a.delivered_ms.is_some())
        .count();
    assert_eq!(delivered, 1433, "0.983 of 1458");
}

/// On loss-free links with ample room a session has no reason to fail: any error here is a
/// protocol or engine bug (the report names it in `session_error_reasons`).
#[test]
fn sessions_never_fail_on_clean_links() {
    for (scenario, nodes, hours) in [
        (Scenario::FieldTeam, 8, 6.0),
        (Scenario::RandomWaypoint, 15, 1.0),
        (Scenario::Ring, 8, 3.0),
    ] {
        let trace = scenario.generate(6, Some(nodes), Some(hours)).unwrap();
        let (report, _) = run_checked(scenario.name(), &trace, &config(6));
        assert_eq!(
            report.session_errors, 0,
            "{scenario}: {:?}",
            report.session_error_reasons
        );
    }
}

#[test]
fn two_radios_of_one_pair_make_one_link() {
    // A tram pair: the short-range radio from 0 to 100 s, the long-range one from 10 to 50 s.
    let trace = Trace::from_csv(
        "start_s,end_s,node_a,node_b,bytes_per_s\n0,100,0,1,250000\n10,50,1,0,10000000\n",
        "created_s,msg_id,from,to,size_bytes,ttl_s\n20,a,0,1,2000,600\n60,b,1,0,2000,600\n",
    )
    .unwrap();
    let (report, outcome) = run_checked("trams", &trace, &config(1));
    assert_eq!(report.sessions_opened, 1, "{report:?}");
    assert_eq!(report.delivered, 2, "{report:?}");
    // Written mid-contact, each message arrives within a few frame latencies.
    assert!(outcome.delivered_ms[0].unwrap() < 20_100);
    assert!(outcome.delivered_ms[1].unwrap() < 60_100);
}

#[test]
fn a_lost_frame_costs_a_redial_not_the_contact() {
    // One long contact: every break is followed by a reopen after the back-off.
    let trace = Trace::from_csv(
        "start_s,end_s,node_a,node_b,bytes_per_s\n0,3600,0,1,250000\n",
        "created_s,msg_id,from,to,size_bytes,ttl_s\n1,a,0,1,1000,7200\n30,b,1,0,1000,7200\n",
    )
    .unwrap();
    let lossy = EngineConfig {
        loss: 0.3,
        ..config(3)
    };
    let (report, _) = run_checked("lossy pair", &trace, &lossy);
    assert!(report.frames_lost > 0, "{report:?}");
    assert!(report.sessions_opened > 1, "{report:?}");
    assert_eq!(report.delivered, 2, "{report:?}");
}

#[test]
fn same_seed_same_report_with_loss_and_small_buffers() {
    let trace = Scenario::RandomWaypoint
        .generate(21, Some(12), Some(1.0))
        .unwrap();
    let cfg = EngineConfig {
        loss: 0.02,
        buffer_bytes: 20_000,
        copies: 8,
        ..config(21)
    };
    let a = sim::run("rwp", &trace, &cfg, StoreKind::Mem).unwrap();
    let b = sim::run("rwp", &trace, &cfg, StoreKind::Mem).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}
