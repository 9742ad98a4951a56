//! Time as the protocol cores see it: a number handed in by the caller.
//!
//! Cores never read a clock. The daemon passes wall-clock time, the simulator passes virtual
//! time; both are milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch, as the caller's clock says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded down: the resolution envelopes carry.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    pub const fn saturating_add_millis(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    pub const fn saturating_add_secs(self, secs: u64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1000)))
    }
}
