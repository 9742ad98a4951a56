//! # cairn-sim: a deterministic discrete-event mesh simulator
//!
//! Runs the *real* sync engine ([`cairn_sync::session::SyncSession`] over
//! [`cairn_sync::store::MemStore`] or `LmdbStore`) for every node of a contact trace, in
//! virtual time, and compares what it delivers with what an ideal flood could
//! ([`oracle`]). The same seed gives the same report byte for byte, so a change to the
//! protocol shows up as a diff in numbers, not as noise.
//!
//! ```no_run
//! use cairn_tools::sim::{self, scenario::Scenario, EngineConfig, StoreKind};
//!
//! let trace = Scenario::Ring.generate(7, Some(10), Some(3.0))?;
//! let config = EngineConfig { seed: 7, ..EngineConfig::default() };
//! let report = sim::run("ring", &trace, &config, StoreKind::Mem)?;
//! assert_eq!(report.duplicate_deliveries, 0);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Layout: [`trace`] (inputs and their validation), [`scenario`] (built-in worlds),
//! [`oracle`] (the earliest-arrival bound), [`engine`] (the event loop around the sessions),
//! [`report`] (the JSON figures), [`rng`] (seeded streams).

pub mod engine;
pub mod oracle;
pub mod replay;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod trace;

use std::str::FromStr;

use cairn_sync::store::{LmdbConfig, LmdbStore, MemStore, Store, StoreError};
use cairn_sync::wire::{MAX_MTU, MIN_MTU};

pub use engine::{EngineConfig, EngineError, EngineOutcome};
pub use report::{ReportConfig, SimReport};
pub use trace::Trace;

use oracle::Oracle;
use report::{latency_summary, ratio};

/// Which store implementation the nodes run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In memory: fast, what scenario sweeps use.
    Mem,
    /// LMDB in a temporary directory per node: the production store, durable commits and all.
    Lmdb,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Mem => "mem",
            StoreKind::Lmdb => "lmdb",
        }
    }
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mem" => Ok(StoreKind::Mem),
            "lmdb" => Ok(StoreKind::Lmdb),
            other => Err(format!("unknown store {other:?}; choose mem or lmdb")),
        }
    }
}

/// Why a run failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot create the LMDB stores: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create a temporary directory for the LMDB stores: {0}")]
    TempDir(#[from] std::io::Error),
    #[error("loss must be a probability in [0, 1), got {0}")]
    Loss(f64),
    #[error("MTU {0} outside the sync protocol's {MIN_MTU}..={MAX_MTU} bytes")]
    Mtu(usize),
}

/// Runs the engine on `trace` and the oracle next to it; the report has no `runtime_ms`
/// (the caller times the run if it wants to).
pub fn run(
    scenario: &str,
    trace: &Trace,
    config: &EngineConfig,
    store: StoreKind,
) -> Result<SimReport, SimError> {
    let outcome = simulate(trace, config, store)?;
    Ok(build_report(scenario, trace, config, store, &outcome))
}

/// Runs the engine only: per-message outcomes and counters, for callers (tests, sweeps)
/// that look closer than the report does.
pub fn simulate(
    trace: &Trace,
    config: &EngineConfig,
    store: StoreKind,
) -> Result<EngineOutcome, SimError> {
    if !(0.0..1.0).contains(&config.loss) {
        return Err(SimError::Loss(config.loss));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&config.mtu) {
        return Err(SimError::Mtu(config.mtu));
    }
    match store {
        StoreKind::Mem => {
            let stores = (0..trace.nodes).map(|_| MemStore::new()).collect();
            run_engine(trace, config, stores)
        }
        StoreKind::Lmdb => {
            // Kept alive until the run is over; removed on drop.
            let dir = tempfile::tempdir()?;
            let stores = (0..trace.nodes)
                .map(|i| {
                    let path = dir.path().join(format!("node-{i}"));
                    std::fs::create_dir_all(&path)?;
                    Ok(LmdbStore::open(
                        &path,
                        LmdbConfig::with_quota(config.buffer_bytes),
                    )?)
                })
                .collect::<Result<Vec<_>, SimError>>()?;
            run_engine(trace, config, stores)
        }
    }
}

fn run_engine<S: Store>(
    trace: &Trace,
    config: &EngineConfig,
    stores: Vec<S>,
) -> Result<EngineOutcome, SimError> {
    let engine = engine::Engine::new(trace, config.clone(), stores)?;
    let (outcome, _stores) = engine.run()?;
    Ok(outcome)
}

/// Puts the engine's outcome next to the oracle's.
pub fn build_report(
    scenario: &str,
    trace: &Trace,
    config: &EngineConfig,
    store: StoreKind,
    out: &EngineOutcome,
) -> SimReport {
    let oracle = Oracle::new(trace).deliver_all();
    let latencies: Vec<u64> = trace
        .messages
        .iter()
        .zip(&out.delivered_ms)
        .filter_map(|(m, d)| d.map(|t| t.saturating_sub(m.created_ms)))
        .collect();
    let oracle_latencies: Vec<u64> = trace
        .messages
        .iter()
        .zip(&oracle)
        .filter_map(|(m, o)| o.delivered_ms.map(|t| t.saturating_sub(m.created_ms)))
        .collect();
    let (p50, p95, mean) = latency_summary(&latencies);
    let (op50, op95, omean) = latency_summary(&oracle_latencies);
    let messages = trace.messages.len();
    let delivered = latencies.len();
    SimReport {
        scenario: scenario.to_owned(),
        seed: config.seed,
        nodes: trace.nodes,
        contacts: trace.contacts.len(),
        messages,
        delivered,
        delivery_ratio: ratio(delivered as f64, messages as f64),
        oracle_delivered: oracle_latencies.len(),
        oracle_delivery_ratio: ratio(oracle_latencies.len() as f64, messages as f64),
        latency_p50_s: p50,
        latency_p95_s: p95,
        latency_mean_s: mean,
        oracle_latency_p50_s: op50,
        oracle_latency_p95_s: op95,
        oracle_latency_mean_s: omean,
        max_hops: out.delivered_hops.iter().copied().max().unwrap_or(0),
        oracle_max_hops: oracle.iter().map(|o| o.hops).max().unwrap_or(0),
        transmissions_per_delivered: ratio(out.envelope_transfers as f64, delivered as f64),
        bytes_per_delivered: ratio(out.bytes_on_air as f64, delivered as f64),
        recon_bytes: out.recon_bytes,
        rounds: out.rounds,
        bytes_on_air: out.bytes_on_air,
        frames: out.frames,
        frames_lost: out.frames_lost,
        envelope_transfers: out.envelope_transfers,
        tombstone_transfers: out.tombstone_transfers,
        copies_peak_mean: ratio(
            out.peak_copies.iter().map(|&c| f64::from(c)).sum(),
            messages as f64,
        ),
        copies_peak_max: out.peak_copies.iter().copied().max().unwrap_or(0),
        handovers: out.handovers,
        items_refused: out.items_refused,
        items_refused_reasons: out.items_refused_reasons.clone(),
        receipts_for_own: out.receipts_for_own,
        sessions_opened: out.sessions_opened,
        session_errors: out.session_errors,
        session_error_reasons: out.session_error_reasons.clone(),
        duplicate_deliveries: out.duplicate_deliveries,
        misdeliveries: out.misdeliveries,
        items_expired: out.items_expired,
        originate_failures: out.originate_failures,
        vanished: out.vanished,
        config: ReportConfig {
            mtu: config.mtu,
            loss_ppm: (config.loss * 1e6).round() as u64,
            buffer_bytes: config.buffer_bytes,
            copies: config.copies,
            routing: if config.focus {
                "spray-and-focus"
            } else {
                "spray-and-wait"
            },
            store: store.name(),
            frame_latency_ms: config.frame_latency_ms,
            reconnect_backoff_ms: config.reconnect_backoff_ms,
            stall_timeout_ms: config.stall_timeout_ms,
        },
        runtime_ms: None,
    }
}
