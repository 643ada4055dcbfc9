//! Bounded exponential backoff with jitter.

use std::time::Duration;

/// `initial * multiplier^(attempt-1)`, capped at `max`, with "equal jitter": the delay
/// is drawn from `[d/2, d]` so retries of many messages do not arrive in lockstep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound on any delay (before jitter).
    pub max: Duration,
    /// Growth factor per attempt; values below 1 count as 1.
    pub multiplier: f64,
    /// Whether to draw each delay from `[d/2, d]` instead of using `d`.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// Backoff from `initial` up to `max`, doubling, with jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, ..Self::default() }
    }

    /// The same backoff with exact delays (for tests and predictable schedules).
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The delay before retry number `attempt` (1 = the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = if secs.is_finite() {
            secs.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        let full = Duration::from_secs_f64(capped.max(0.0));
        if self.jitter {
            let half = full / 2;
            half + full.saturating_sub(half).mul_f64(fastrand::f64())
        } else {
            full
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).without_jitter();
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400), "{d:?}");
        }
    }
}
