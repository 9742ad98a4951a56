//! LoRa time on air, and the duty-cycle budget that time is spent from.
//!
//! On LoRa every byte costs airtime, and airtime is what runs out: a half-duplex channel
//! shared by every radio in range, and in Europe a legal duty cycle (1% in the 868.0-868.6 MHz
//! sub-band: 36 s of transmission per hour). Pacing, fragmentation and the simulator all need
//! the same two answers, so they live here, pure and exact: how long a frame occupies the
//! channel ([`airtime_us`]), and whether a radio may transmit it now or must wait
//! ([`DutyCycle`]).
//!
//! ```
//! use cairn_firmware_bridge::lora::{airtime_us, DutyCycle, DutyCycleConfig};
//! use cairn_firmware_bridge::LoraParams;
//!
//! // A 200-byte frame at SF7/125 kHz takes 317.696 ms; at SF12 it takes 7.2 s.
//! assert_eq!(airtime_us(&LoraParams::sf7(), 200), 317_696);
//! assert_eq!(airtime_us(&LoraParams::sf12(), 200), 7_217_152);
//!
//! // 1% of an hour is 36 s: four 200-byte SF12 frames fit (28.9 s), a fifth waits an hour.
//! let mut budget = DutyCycle::new(DutyCycleConfig::default());
//! let frame = airtime_us(&LoraParams::sf12(), 200);
//! for _ in 0..4 {
//!     assert_eq!(budget.earliest(0, frame), 0);
//!     budget.record(0, frame);
//! }
//! assert_eq!(budget.earliest(0, frame), 3_600_000);
//! ```

use std::collections::VecDeque;

use crate::LoraParams;

/// Whether the modem must run with low-data-rate optimisation: Semtech requires it when a
/// symbol lasts 16 ms or more (SF11 and SF12 at 125 kHz, SF12 at 250 kHz), because the
/// crystal drifts too far over such long symbols otherwise. It costs payload capacity (two
/// fewer bits per symbol), so [`airtime_us`] must know.
#[must_use]
pub fn low_data_rate_optimize(params: &LoraParams) -> bool {
    // symbol time = 2^SF / BW >= 16 ms  <=>  2^SF * 1000 >= 16 * BW, kept in integers.
    let sf = clamp_spreading_factor(params.spreading_factor);
    (1u64 << sf) * 1000 >= 16 * u64::from(params.bandwidth_hz)
}

/// One symbol's duration in microseconds, rounded up (the length of the unit every LoRa
/// timing is counted in: preamble, CSMA slots, airtime).
#[must_use]
pub fn symbol_time_us(params: &LoraParams) -> u64 {
    if params.bandwidth_hz == 0 {
        return u64::MAX;
    }
    let sf = clamp_spreading_factor(params.spreading_factor);
    ((1u64 << sf) * 1_000_000).div_ceil(u64::from(params.bandwidth_hz))
}

/// Time on air of one LoRa packet carrying `payload_len` bytes, in microseconds (rounded up).
///
/// This is the SX127x formula from Semtech's datasheet (and their "LoRa calculator") for
/// explicit header mode with the payload CRC on, which is how RNode and Meshtastic run:
///
/// ```text
/// T_sym      = 2^SF / BW
/// T_preamble = (n_preamble + 4.25) * T_sym
/// n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16) / (4*(SF - 2*DE))) * CR, 0)
/// T_packet   = T_preamble + n_payload * T_sym
/// ```
///
/// where CR is the coding-rate denominator (5 for 4/5 ... 8 for 4/8) and DE is
/// [`low_data_rate_optimize`]. The computation is done in quarter symbols with integers, so
/// it is exact up to the final rounding.
///
/// Out-of-range parameters are clamped rather than refused, because a time estimate has
/// nothing better to do with them: the spreading factor into 6-12 (SF5/SF6 on SX126x use a
/// slightly different formula; this one is within a few symbols), the coding rate into 5-8.
/// A bandwidth of 0 Hz would never finish a symbol: the answer is then `u64::MAX`.
#[must_use]
pub fn airtime_us(params: &LoraParams, payload_len: usize) -> u64 {
    if params.bandwidth_hz == 0 {
        return u64::MAX;
    }
    let sf = i64::from(clamp_spreading_factor(params.spreading_factor));
    let coding_rate = i64::from(params.coding_rate.clamp(5, 8));
    let low_data_rate = i64::from(low_data_rate_optimize(params));
    let payload_bits = i64::try_from(payload_len)
        .unwrap_or(i64::MAX / 16)
        .min(i64::MAX / 16)
        * 8;

    // Explicit header (IH = 0) and CRC on (16 bits) are fixed: the "+ 28 + 16" terms.
    let numerator = payload_bits - 4 * sf + 28 + 16;
    let denominator = 4 * (sf - 2 * low_data_rate);
    // Both positive here, so this is ceil(numerator / denominator).
    let blocks = if numerator > 0 {
        (numerator + denominator - 1) / denominator
    } else {
        0
    };
    // Every quantity is non-negative from here on, so the conversions cannot fail.
    let payload_symbols = u64::try_from(8 + blocks * coding_rate).unwrap_or(u64::MAX);
    let preamble_quarters = 4 * u64::from(params.preamble_symbols) + 17; // (n + 4.25) * 4
    let quarters = u128::from(preamble_quarters) + 4 * u128::from(payload_symbols);

    // quarters/4 symbols of 2^SF / BW seconds each, in microseconds.
    let sf_shift = u32::try_from(sf).unwrap_or(12);
    let numerator_us = quarters * (1u128 << sf_shift) * 1_000_000;
    let denominator_us = 4 * u128::from(params.bandwidth_hz);
    u64::try_from(numerator_us.div_ceil(denominator_us)).unwrap_or(u64::MAX)
}

fn clamp_spreading_factor(sf: u8) -> u8 {
    sf.clamp(6, 12)
}

/// How much airtime a [`DutyCycle`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyCycleConfig {
    /// Length of the sliding window, in ms (an hour for ETSI EN 300 220).
    pub window_ms: u64,
    /// Airtime allowed within any window, in µs.
    pub max_airtime_us: u64,
    /// Most transmissions remembered individually. Past this, the two oldest records are
    /// merged into one that expires with the younger of them: the budget can only become
    /// stricter than exact, never looser, and memory stays bounded whatever the traffic.
    pub max_records: usize,
}

impl DutyCycleConfig {
    /// Default bound on remembered transmissions: room for an hour of 35 ms frames at 1%
    /// before any merging happens.
    pub const DEFAULT_MAX_RECORDS: usize = 1024;

    /// `permille` thousandths of every `window_ms` (10 for 1%, 1 for 0.1%, 100 for 10%: the
    /// three EU868 sub-band limits).
    #[must_use]
    pub const fn with_permille(permille: u32, window_ms: u64) -> Self {
        Self {
            window_ms,
            // window_ms * 1000 µs/ms * permille / 1000
            max_airtime_us: window_ms.saturating_mul(permille as u64),
            max_records: Self::DEFAULT_MAX_RECORDS,
        }
    }
}

impl Default for DutyCycleConfig {
    /// 1% over one hour: EU868 sub-band g1 (868.0-868.6 MHz), where most LoRa traffic is.
    fn default() -> Self {
        Self::with_permille(10, 3_600_000)
    }
}

/// A duty-cycle budget over a sliding window: "may I transmit a frame of this airtime now,
/// and if not, when?".
///
/// Each transmission is counted, whole, from its start until `window_ms` later. Time is the
/// caller's (`now_ms` passed in), so the same budget runs in real time and in a simulator.
#[derive(Debug, Clone)]
pub struct DutyCycle {
    config: DutyCycleConfig,
    /// `(start_ms, airtime_us)` of past transmissions, oldest first, starts non-decreasing.
    records: VecDeque<(u64, u64)>,
}

impl DutyCycle {
    /// An empty budget.
    #[must_use]
    pub fn new(config: DutyCycleConfig) -> Self {
        Self {
            config,
            records: VecDeque::new(),
        }
    }

    /// The limits this budget enforces.
    #[must_use]
    pub fn config(&self) -> DutyCycleConfig {
        self.config
    }

    /// Airtime counted against the window that ends at `now_ms`, in µs.
    #[must_use]
    pub fn used_us(&self, now_ms: u64) -> u64 {
        self.live(now_ms).map(|&(_, airtime)| airtime).sum()
    }

    /// Earliest time, at or after `now_ms`, when a transmission of `airtime_us` fits in the
    /// budget. `now_ms` itself means "go ahead". `u64::MAX` means never: the frame alone is
    /// longer than the whole budget.
    #[must_use]
    pub fn earliest(&self, now_ms: u64, airtime_us: u64) -> u64 {
        let budget = self.config.max_airtime_us;
        if airtime_us > budget {
            return u64::MAX;
        }
        let used = self.used_us(now_ms);
        let Some(excess) = (used.saturating_add(airtime_us)).checked_sub(budget) else {
            return now_ms;
        };
        if excess == 0 {
            return now_ms;
        }
        // Wait for the oldest records to leave the window until enough has been freed.
        let mut freed = 0u64;
        for &(start, airtime) in self.live(now_ms) {
            freed = freed.saturating_add(airtime);
            if freed >= excess {
                return start.saturating_add(self.config.window_ms).max(now_ms);
            }
        }
        // Unreachable when records are consistent (freeing all of them frees `used`, and
        // `airtime_us <= budget`), but an answer that waits a full window is always safe.
        now_ms.saturating_add(self.config.window_ms)
    }

    /// Counts a transmission of `airtime_us` that started at `now_ms`.
    ///
    /// Times should not go backwards; if one does, it is counted as starting at the latest
    /// time seen so far, which keeps the records ordered and errs on the side of waiting.
    pub fn record(&mut self, now_ms: u64, airtime_us: u64) {
        self.forget_expired(now_ms);
        let start = self
            .records
            .back()
            .map_or(now_ms, |&(last, _)| last.max(now_ms));
        while self.records.len() >= self.config.max_records.max(1) {
            if !self.merge_oldest() {
                break;
            }
        }
        if self.records.len() >= self.config.max_records.max(1) {
            // A budget allowed one record only: fold this one into it.
            if let Some(last) = self.records.back_mut() {
                *last = (start, last.1.saturating_add(airtime_us));
                return;
            }
        }
        self.records.push_back((start, airtime_us));
    }

    /// Records that still count at `now_ms`, oldest first.
    fn live(&self, now_ms: u64) -> impl Iterator<Item = &(u64, u64)> {
        let window = self.config.window_ms;
        self.records
            .iter()
            .filter(move |&&(start, _)| start.saturating_add(window) > now_ms)
    }

    fn forget_expired(&mut self, now_ms: u64) {
        let window = self.config.window_ms;
        while let Some(&(start, _)) = self.records.front() {
            if start.saturating_add(window) > now_ms {
                break;
            }
            self.records.pop_front();
        }
    }

    /// Merges the two oldest records into one that expires with the younger: conservative.
    fn merge_oldest(&mut self) -> bool {
        if self.records.len() < 2 {
            return false;
        }
        let Some((_, first_airtime)) = self.records.pop_front() else {
            return false;
        };
        if let Some(second) = self.records.front_mut() {
            second.1 = second.1.saturating_add(first_airtime);
        }
        true
    }
}

impl Default for DutyCycle {
    fn default() -> Self {
        Self::new(DutyCycleConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(spreading_factor: u8, bandwidth_hz: u32, preamble_symbols: u16) -> LoraParams {
        LoraParams {
            spreading_factor,
            bandwidth_hz,
            preamble_symbols,
            ..LoraParams::sf7()
        }
    }

    // Every expected value below is worked by hand from the formula in `airtime_us`'s doc
    // (CR 4/5, explicit header, CRC on), the way Semtech's LoRa calculator computes it.

    #[test]
    fn two_hundred_bytes_at_sf7_is_318_ms() {
        // T_sym = 128 / 125 kHz = 1.024 ms; preamble 12.25 sym = 12.544 ms.
        // ceil((1600 - 28 + 44) / 28) = ceil(57.71) = 58; 58 * 5 + 8 = 298 sym = 305.152 ms.
        // Total 317.696 ms: the field notes' 318 ms.
        assert_eq!(airtime_us(&LoraParams::sf7(), 200), 317_696);
    }

    #[test]
    fn two_hundred_bytes_at_sf9_is_one_second() {
        // T_sym = 512 / 125 kHz = 4.096 ms; preamble 12.25 sym = 50.176 ms.
        // ceil((1600 - 36 + 44) / 36) = ceil(44.67) = 45; 45 * 5 + 8 = 233 sym = 954.368 ms.
        // Total 1004.544 ms: the field notes' 1.0 s.
        assert_eq!(airtime_us(&params(9, 125_000, 8), 200), 1_004_544);
    }

    #[test]
    fn two_hundred_bytes_at_sf12_is_seven_point_two_seconds() {
        // T_sym = 4096 / 125 kHz = 32.768 ms >= 16 ms, so DE = 1.
        // Preamble 12.25 sym = 401.408 ms.
        // ceil((1600 - 48 + 44) / (4 * 10)) = ceil(39.9) = 40; 40 * 5 + 8 = 208 sym
        // = 6815.744 ms. Total 7217.152 ms: the field notes' 7.2 s.
        assert!(low_data_rate_optimize(&LoraParams::sf12()));
        assert_eq!(airtime_us(&LoraParams::sf12(), 200), 7_217_152);
    }

    #[test]
    fn meshtastic_long_fast_is_one_point_seven_five_seconds() {
        // LongFast: SF11, 250 kHz, CR 4/5 and Meshtastic's 16-symbol preamble.
        // T_sym = 2048 / 250 kHz = 8.192 ms < 16 ms, so DE = 0.
        // Preamble 20.25 sym = 165.888 ms.
        // ceil((1600 - 44 + 44) / 44) = ceil(36.36) = 37; 37 * 5 + 8 = 193 sym = 1581.056 ms.
        // Total 1746.944 ms: the field notes' 1.75 s.
        let long_fast = params(11, 250_000, 16);
        assert!(!low_data_rate_optimize(&long_fast));
        assert_eq!(airtime_us(&long_fast, 200), 1_746_944);
    }

    #[test]
    fn low_data_rate_optimisation_starts_at_sixteen_ms_symbols() {
        assert!(!low_data_rate_optimize(&params(10, 125_000, 8))); // 8.192 ms
        assert!(low_data_rate_optimize(&params(11, 125_000, 8))); // 16.384 ms
        assert!(!low_data_rate_optimize(&params(11, 250_000, 8))); // 8.192 ms
        assert!(low_data_rate_optimize(&params(12, 250_000, 8))); // 16.384 ms
        assert!(low_data_rate_optimize(&params(10, 62_500, 8))); // 16.384 ms
    }

    #[test]
    fn tiny_frames_cost_the_minimum_eight_payload_symbols() {
        // SF12, 1 byte: 8 - 48 + 44 = 4 > 0, ceil(4 / 40) = 1, 1 * 5 + 8 = 13 sym.
        // 25.25 sym * 32.768 ms = 827.392 ms.
        assert_eq!(airtime_us(&LoraParams::sf12(), 1), 827_392);
        // SF12, 0 bytes: the numerator is negative, only the 8 fixed symbols remain:
        // 20.25 sym * 32.768 ms = 663.552 ms.
        assert_eq!(airtime_us(&LoraParams::sf12(), 0), 663_552);
    }

    #[test]
    fn sf7_step_is_one_block_of_five_symbols_per_three_and_a_half_bytes() {
        // SF7/125: 10 bytes: ceil((80 - 28 + 44) / 28) = ceil(3.43) = 4 -> 28 sym;
        // 40.25 sym * 1.024 ms = 41.216 ms.
        assert_eq!(airtime_us(&LoraParams::sf7(), 10), 41_216);
        // 255 bytes (the largest LoRa payload): ceil((2040 - 28 + 44) / 28) = 74 -> 378 sym;
        // 390.25 sym * 1.024 ms = 399.616 ms.
        assert_eq!(airtime_us(&LoraParams::sf7(), 255), 399_616);
    }

    #[test]
    fn odd_bandwidths_round_up_to_the_microsecond() {
        // 41.7 kHz, SF7, 10 bytes: 40.25 sym * 128 / 41 700 Hz = 123.549... ms.
        assert_eq!(airtime_us(&params(7, 41_700, 8), 10), 123_550);
    }

    #[test]
    fn nonsense_parameters_give_an_answer_not_a_panic() {
        assert_eq!(airtime_us(&params(7, 0, 8), 10), u64::MAX);
        assert_eq!(symbol_time_us(&params(7, 0, 8)), u64::MAX);
        // Spreading factor 0 and 200 are clamped to 6 and 12.
        assert_eq!(
            airtime_us(&params(200, 125_000, 8), 10),
            airtime_us(&params(12, 125_000, 8), 10)
        );
        assert!(airtime_us(&params(0, 125_000, 8), 10) > 0);
        assert!(airtime_us(&LoraParams::sf12(), usize::MAX) > 0);
    }

    #[test]
    fn symbol_times() {
        assert_eq!(symbol_time_us(&LoraParams::sf7()), 1_024);
        assert_eq!(symbol_time_us(&LoraParams::sf12()), 32_768);
    }

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn one_percent_is_thirty_six_seconds_an_hour() {
        let config = DutyCycleConfig::default();
        assert_eq!(config.window_ms, HOUR_MS);
        assert_eq!(config.max_airtime_us, 36_000_000);
        assert_eq!(
            DutyCycleConfig::with_permille(1, HOUR_MS).max_airtime_us,
            3_600_000
        );
    }

    #[test]
    fn one_hundred_and_thirteen_sf7_frames_fit_in_an_hour() {
        // The field notes: 36 s / 317.696 ms = 113.3 frames.
        let frame = airtime_us(&LoraParams::sf7(), 200);
        let mut budget = DutyCycle::default();
        let mut now = 0;
        for sent in 0..113 {
            assert_eq!(budget.earliest(now, frame), now, "frame {sent} should fit");
            budget.record(now, frame);
            now += 1_000;
        }
        // The 114th must wait until the first one leaves the window.
        assert_eq!(budget.earliest(now, frame), HOUR_MS);
        // And after that it fits.
        assert_eq!(budget.earliest(HOUR_MS, frame), HOUR_MS);
    }

    #[test]
    fn waiting_frees_just_enough_of_the_oldest_airtime() {
        let config = DutyCycleConfig {
            window_ms: 1_000,
            max_airtime_us: 100_000, // 10% of a second
            max_records: 16,
        };
        let mut budget = DutyCycle::new(config);
        budget.record(0, 40_000);
        budget.record(100, 40_000);
        budget.record(200, 20_000);
        assert_eq!(budget.used_us(300), 100_000);
        // 30 ms more needs the first record (40 ms) gone: at 1000 ms.
        assert_eq!(budget.earliest(300, 30_000), 1_000);
        // 50 ms more needs the first two gone: at 1100 ms.
        assert_eq!(budget.earliest(300, 50_000), 1_100);
        // Longer than the whole budget: never.
        assert_eq!(budget.earliest(300, 100_001), u64::MAX);
        // Once the window has passed, everything is free again.
        assert_eq!(budget.used_us(1_200), 0);
        assert_eq!(budget.earliest(1_200, 100_000), 1_200);
    }

    #[test]
    fn memory_is_bounded_and_merging_only_makes_the_budget_stricter() {
        let config = DutyCycleConfig {
            window_ms: 10_000,
            max_airtime_us: 1_000_000,
            max_records: 8,
        };
        let mut merged = DutyCycle::new(config);
        let mut exact = DutyCycle::new(DutyCycleConfig {
            max_records: 10_000,
            ..config
        });
        for i in 0..1_000 {
            let now = i * 10;
            merged.record(now, 500);
            exact.record(now, 500);
            assert!(merged.records.len() <= 8);
            for probe in [now, now + 5_000, now + 9_999, now + 10_001] {
                assert!(merged.used_us(probe) >= exact.used_us(probe));
                assert!(merged.earliest(probe, 200_000) >= exact.earliest(probe, 200_000));
            }
        }
    }

    #[test]
    fn time_going_backwards_is_counted_conservatively() {
        let mut budget = DutyCycle::new(DutyCycleConfig {
            window_ms: 1_000,
            max_airtime_us: 100_000,
            max_records: 16,
        });
        budget.record(500, 60_000);
        budget.record(100, 60_000); // counted as starting at 500
        assert_eq!(budget.used_us(1_499), 120_000);
        assert_eq!(budget.used_us(1_500), 0);
    }
}
