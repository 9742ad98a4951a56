//! What a run measured, as one JSON object.
//!
//! Field order is fixed and every value is computed from integers in virtual time, so the
//! same seed prints the same bytes; only `runtime_ms` (wall clock) differs between runs and
//! is left out with `--no-timing`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The figures of one run. `*_per_delivered` divide by delivered messages (0 when none).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// Scenario name, or `trace` for CSV files.
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    pub contacts: usize,
    pub messages: usize,
    pub delivered: usize,
    pub delivery_ratio: f64,
    pub oracle_delivered: usize,
    pub oracle_delivery_ratio: f64,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub latency_mean_s: f64,
    pub oracle_latency_p50_s: f64,
    pub oracle_latency_p95_s: f64,
    pub oracle_latency_mean_s: f64,
    /// Most contacts any delivered message crossed (counted along the copy that arrived first).
    pub max_hops: u32,
    pub oracle_max_hops: u32,
    /// Envelope transfers completed, every hop, per delivered message.
    pub transmissions_per_delivered: f64,
    /// Every byte put on the air (frames of all kinds, lost ones too) per delivered message.
    pub bytes_per_delivered: f64,
    /// Reconciliation bytes sent (both directions of every session).
    pub recon_bytes: u64,
    /// Reconciliation rounds completed, counted once per side.
    pub rounds: u64,
    pub bytes_on_air: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub envelope_transfers: u64,
    pub tombstone_transfers: u64,
    /// Most copies of one message held at one instant before its delivery (the sender's
    /// included), averaged over messages: what routing costs in buffer space across the
    /// team. Epidemic routing reaches most of the nodes; spray bounds it by the budget.
    pub copies_peak_mean: f64,
    pub copies_peak_max: u32,
    /// Last copies handed on with custody (focus phase).
    pub handovers: u64,
    /// Items a receiver refused (already tombstoned, expired, no room): airtime spent for
    /// nothing, the protocol's waste to drive down.
    pub items_refused: u64,
    pub items_refused_reasons: BTreeMap<String, u64>,
    pub receipts_for_own: u64,
    pub sessions_opened: u64,
    /// Sessions that ended on a protocol or storage error (should be 0).
    pub session_errors: u64,
    /// Those errors by message: where to look when `session_errors` is not 0.
    pub session_error_reasons: BTreeMap<String, u64>,
    /// A second `Delivered` for an already delivered message: a bug if ever non-zero.
    pub duplicate_deliveries: u64,
    /// `Delivered` at a node that is not the message's destination: a bug if non-zero.
    pub misdeliveries: u64,
    pub items_expired: u64,
    /// Messages that never entered the network: the sender's own store refused them.
    pub originate_failures: u64,
    /// Undelivered, unexpired messages no node holds any more (evicted; with ample buffers,
    /// a bug).
    pub vanished: u64,
    pub config: ReportConfig,
    /// Wall-clock time of the run; absent with `--no-timing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_ms: Option<u64>,
}

/// The knobs the run used, echoed so a figure can be reproduced from its JSON alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportConfig {
    pub mtu: usize,
    /// Loss probability in parts per million (kept integral so the echo is exact).
    pub loss_ppm: u64,
    pub buffer_bytes: u64,
    pub copies: u8,
    /// `spray-and-focus` or `spray-and-wait`.
    pub routing: &'static str,
    pub store: &'static str,
    pub frame_latency_ms: u64,
    pub reconnect_backoff_ms: u64,
    pub stall_timeout_ms: u64,
}

/// Summary of a latency sample in seconds: (p50, p95, mean), zeros when empty.
///
/// Percentiles are nearest-rank (the smallest sample with at least p·n samples at or below
/// it), so they are always an observed latency.
pub fn latency_summary(latencies_ms: &[u64]) -> (f64, f64, f64) {
    if latencies_ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut sorted = latencies_ms.to_vec();
    sorted.sort_unstable();
    let rank = |p: f64| {
        let k = (p * sorted.len() as f64).ceil() as usize;
        sorted[k.clamp(1, sorted.len()) - 1]
    };
    let sum: u128 = sorted.iter().map(|&x| u128::from(x)).sum();
    let mean_ms = sum as f64 / sorted.len() as f64;
    (
        ms_to_s(rank(0.50)),
        ms_to_s(rank(0.95)),
        round_ms(mean_ms) / 1000.0,
    )
}

/// Ratio rounded to 6 decimals (0 when the denominator is 0) so the JSON stays readable.
pub fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        (num / den * 1e6).round() / 1e6
    }
}

fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn round_ms(ms: f64) -> f64 {
    ms.round()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let (p50, p95, mean) = latency_summary(&[4000, 1000, 3000, 2000]);
        assert_eq!(p50, 2.0);
        assert_eq!(p95, 4.0);
        assert_eq!(mean, 2.5);
        assert_eq!(latency_summary(&[]), (0.0, 0.0, 0.0));
        assert_eq!(ratio(1.0, 3.0), 0.333333);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
