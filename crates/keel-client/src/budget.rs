//! The retry budget shared by the calls of a client: each call deposits, each retry
//! withdraws, so retries stay a fraction of the traffic (plus a small floor) and a
//! struggling upstream is not hit with a retry storm.
//!
//! A thin wrapper over tower's [`TpsBudget`] (Finagle's design), which panics on
//! out-of-range parameters; [`RetryBudget::new`] clamps them instead.

use std::fmt;
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

/// See the module docs. Share one budget per upstream (the client holds it in an `Arc`).
pub struct RetryBudget {
    inner: TpsBudget,
    ttl: Duration,
    min_per_sec: u32,
    ratio: f32,
}

impl RetryBudget {
    /// Allows retries of `ratio` of the calls deposited over the last `ttl` (clamped
    /// to 1..=60 s), plus `min_per_sec` retries per second whatever the traffic.
    /// `ratio` 0.2 = one retry per five calls; it is clamped to 0..=1000.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1000.0) };
        let min_per_sec = min_per_sec.min(1_000_000);
        Self { inner: TpsBudget::new(ttl, min_per_sec, ratio), ttl, min_per_sec, ratio }
    }

    /// Records a call (not a retry).
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl Default for RetryBudget {
    /// Finagle's defaults: 20 % of the calls over 10 s, at least 10 retries a second.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("ratio", &self.ratio)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_deposits_without_floor() {
        let budget = RetryBudget::new(Duration::from_secs(60), 0, 0.5);
        assert!(!budget.withdraw(), "nothing deposited yet");
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..10).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(Duration::from_secs(60), 1, 0.0);
        // One a second over a 60 s window.
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 60);
    }

    #[test]
    fn out_of_range_parameters_are_clamped() {
        let budget = RetryBudget::new(Duration::ZERO, 0, f32::NAN);
        budget.deposit();
        assert!(!budget.withdraw());
        let _ = RetryBudget::new(Duration::from_secs(3600), u32::MAX, 1e9);
    }
}
