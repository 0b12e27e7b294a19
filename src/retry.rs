//! Backoff for everyone who retries (step attempts, metadata requests,
//! secret-store calls, reports): exponential growth with full jitter, each
//! delay drawn uniformly from zero to the capped exponential, so a fleet that
//! fails together does not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::plan::RetryPolicy;

/// The delays between attempts of `policy`: `attempts - 1` of them.
pub fn delays(policy: &RetryPolicy) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(policy.min_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .with_max_times(policy.attempts.saturating_sub(1) as usize)
        .build()
        .map(full_jitter)
}

/// The full-jitter delay before retry number `attempt` (1-based): uniform in
/// `0..=min(max, min·2^(attempt-1))`.
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    full_jitter(min.saturating_mul(factor).min(max))
}

/// A uniformly random delay in `0..=cap`.
pub fn full_jitter(cap: Duration) -> Duration {
    let cap_ms = cap.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(fastrand::u64(0..=cap_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_attempts_minus_one_delays_within_caps() {
        let policy = RetryPolicy {
            attempts: 6,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        };
        let all: Vec<Duration> = delays(&policy).collect();
        assert_eq!(all.len(), 5);
        for (n, d) in all.iter().enumerate() {
            let cap = (100u64 << n).min(400);
            assert!(
                d.as_millis() as u64 <= cap,
                "delay {n} = {d:?} above cap {cap}ms"
            );
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(100));
        for attempt in 1..40 {
            let cap = (10u64 << (attempt - 1).min(20)).min(100);
            assert!(backoff(min, max, attempt).as_millis() as u64 <= cap);
        }
    }

    #[test]
    fn single_attempt_has_no_delays() {
        assert_eq!(delays(&RetryPolicy::NONE).count(), 0);
    }
}
