//! Per-address redial backoff: a pure table, time passed in.
//!
//! Kept free of clocks and sockets so the doubling, the cap and the reset rule can be tested
//! with exact numbers; the driver feeds it `now` from tokio's clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long to wait before dialing an address again after it failed.
///
/// The delay doubles with every consecutive failure of the same address, from `initial` up to
/// `max`, so a peer that has gone away costs a handful of connection attempts per minute rather
/// than a busy loop, while one that blinked is tried again almost at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Upper bound on the delay, however many failures came before.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (`failures >= 1`).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// A link shorter than this counts as a failure when it closes: a peer that accepts TCP and
/// then drops us at once (wrong network, refused handshake) must not be redialed in a tight
/// loop just because each connect "succeeded".
pub(crate) const STABLE_LINK: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct AddressState {
    failures: u32,
    not_before: Option<Instant>,
}

/// Backoff state for every address we dial.
#[derive(Debug)]
pub(crate) struct BackoffTable {
    policy: Backoff,
    addresses: HashMap<SocketAddr, AddressState>,
}

impl BackoffTable {
    pub(crate) fn new(policy: Backoff) -> Self {
        Self {
            policy,
            addresses: HashMap::new(),
        }
    }

    /// When `addr` may be dialed again (`None`: now).
    pub(crate) fn not_before(&self, addr: SocketAddr) -> Option<Instant> {
        self.addresses.get(&addr).and_then(|s| s.not_before)
    }

    /// A connection attempt to `addr` failed; returns the delay before the next one.
    pub(crate) fn handle_failure(&mut self, addr: SocketAddr, now: Instant) -> Duration {
        let state = self.addresses.entry(addr).or_default();
        state.failures = state.failures.saturating_add(1);
        let delay = self.policy.delay(state.failures);
        state.not_before = Some(now + delay);
        delay
    }

    /// A connection to `addr` was established: it may be dialed again at once if it drops, but
    /// the failure count is kept until the link proves stable (see [`Self::handle_closed`]).
    pub(crate) fn handle_connected(&mut self, addr: SocketAddr) {
        if let Some(state) = self.addresses.get_mut(&addr) {
            state.not_before = None;
        }
    }

    /// A link to `addr` that lived `lived` has closed; returns the delay before redialing.
    ///
    /// A stable link resets the count (the peer was healthy, a drop is news, retry soon); a
    /// short one counts as a failure so a flapping peer backs off like an unreachable one.
    pub(crate) fn handle_closed(
        &mut self,
        addr: SocketAddr,
        lived: Duration,
        now: Instant,
    ) -> Duration {
        if lived >= STABLE_LINK {
            self.addresses.remove(&addr);
            let delay = self.policy.initial;
            self.addresses.insert(
                addr,
                AddressState {
                    failures: 0,
                    not_before: Some(now + delay),
                },
            );
            delay
        } else {
            self.handle_failure(addr, now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4000))
    }

    #[test]
    fn doubles_per_failure_and_caps() {
        let policy = Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        };
        let delays: Vec<u64> = (1..=10)
            .map(|n| policy.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn table_counts_failures_per_address() {
        let mut table = BackoffTable::new(Backoff::default());
        let now = Instant::now();
        let other = SocketAddr::from(([127, 0, 0, 1], 4001));
        assert_eq!(
            table.handle_failure(addr(), now),
            Duration::from_millis(250)
        );
        assert_eq!(
            table.handle_failure(addr(), now),
            Duration::from_millis(500)
        );
        assert_eq!(table.handle_failure(other, now), Duration::from_millis(250));
        assert_eq!(
            table.not_before(addr()),
            Some(now + Duration::from_millis(500))
        );
        table.handle_connected(addr());
        assert_eq!(table.not_before(addr()), None);
    }

    #[test]
    fn short_links_back_off_stable_links_reset() {
        let mut table = BackoffTable::new(Backoff::default());
        let now = Instant::now();
        table.handle_failure(addr(), now);
        table.handle_connected(addr());
        // Dropped after one second: counts as a second failure.
        let flap = table.handle_closed(addr(), Duration::from_secs(1), now);
        assert_eq!(flap, Duration::from_millis(500));
        table.handle_connected(addr());
        // Held for a minute: back to the initial delay, count cleared.
        let stable = table.handle_closed(addr(), Duration::from_secs(60), now);
        assert_eq!(stable, Duration::from_millis(250));
        assert_eq!(
            table.handle_failure(addr(), now),
            Duration::from_millis(250)
        );
    }
}
