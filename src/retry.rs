//! Retries for everyone who retries (step attempts, metadata requests,
//! secret-store calls, registration, reports): exponential growth with full
//! jitter, each delay drawn uniformly from zero to the capped exponential,
//! so a fleet that fails together does not retry together; `Retry-After`
//! is honoured; no attempt starts that could not end before the deadline.
//! [`run`] is the one retry loop; each failed attempt is announced to the
//! caller, who logs and counts it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Everything a retried operation may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The first delay's cap; each next cap doubles, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up once this much time has gone by.
    pub max_elapsed: Option<Duration>,
    /// Never start an attempt that could not end before this.
    pub deadline: Option<Instant>,
    /// How long one attempt may take (checked against the deadline).
    pub attempt_time: Duration,
}

impl Budget {
    /// `attempts` in all, delays capped from `min` up to `max`.
    pub fn new(attempts: u32, min: Duration, max: Duration) -> Budget {
        Budget {
            attempts: attempts.max(1),
            min_backoff: min,
            max_backoff: max,
            max_elapsed: None,
            deadline: None,
            attempt_time: Duration::ZERO,
        }
    }

    /// The delays between the attempts of a budget without time limits:
    /// `attempts - 1` of them.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (1..self.attempts).map(move |retry| backoff(self.min_backoff, self.max_backoff, retry))
    }
}

/// How one attempt went.
#[derive(Debug)]
pub enum Attempt<T, E> {
    Done(T),
    /// Worth trying again: `detail` says what went wrong; `retry_after` is
    /// the server's own wish (HTTP 429/503 `Retry-After`).
    Retry {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Will not get better by trying again.
    Fail(E),
}

impl<T, E> Attempt<T, E> {
    pub fn retry(detail: impl Into<String>) -> Attempt<T, E> {
        Attempt::Retry {
            detail: detail.into(),
            retry_after: None,
        }
    }
}

/// A failed attempt that will be retried, as announced to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Retrying<'a> {
    /// The attempt that failed (1-based), of how many.
    pub attempt: u32,
    pub of: u32,
    /// Why it failed.
    pub detail: &'a str,
    /// The wait before the next attempt.
    pub delay: Duration,
}

impl std::fmt::Display for Retrying<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, attempt {} of {}, retrying in {}",
            self.detail,
            self.attempt,
            self.of,
            humantime::format_duration(Duration::from_millis(self.delay.as_millis() as u64))
        )
    }
}

/// Why [`run`] gave up.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// An attempt failed in a way that retrying cannot mend.
    Fatal(E),
    /// The budget ran out.
    Exhausted(Exhausted),
}

/// A budget that ran out: how far it got and the last attempt's failure.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub attempts: u32,
    pub elapsed: Duration,
    pub last: String,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (gave up after {} attempt(s) in {:.1}s)",
            self.last,
            self.attempts,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs `attempt` (given the attempt number, 1-based) until it is done,
/// fails for good, or the budget runs out. `on_retry` hears of every
/// failed attempt that will be retried, before the wait.
pub async fn run<T, E, F, Fut>(
    budget: &Budget,
    mut on_retry: impl FnMut(&Retrying<'_>),
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let started = Instant::now();
    let mut number = 0;
    loop {
        number += 1;
        let (detail, retry_after) = match attempt(number).await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(err) => return Err(GaveUp::Fatal(err)),
            Attempt::Retry {
                detail,
                retry_after,
            } => (detail, retry_after),
        };
        let delay = backoff(budget.min_backoff, budget.max_backoff, number)
            .max(retry_after.unwrap_or(Duration::ZERO));
        let next_start = Instant::now() + delay;
        let out_of_budget = number >= budget.attempts
            || budget
                .max_elapsed
                .is_some_and(|max| next_start.duration_since(started) > max)
            || budget
                .deadline
                .is_some_and(|d| next_start + budget.attempt_time > d);
        if out_of_budget {
            return Err(GaveUp::Exhausted(Exhausted {
                attempts: number,
                elapsed: started.elapsed(),
                last: detail,
            }));
        }
        on_retry(&Retrying {
            attempt: number,
            of: budget.attempts,
            detail: &detail,
            delay,
        });
        tokio::time::sleep(delay).await;
    }
}

/// The full-jitter delay before retry number `retry` (1-based): uniform in
/// `0..=min(max, min·2^(retry-1))`.
pub fn backoff(min: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    full_jitter(min.saturating_mul(factor).min(max))
}

/// A uniformly random delay in `0..=cap` — or `cap` itself when
/// `BOOTPLAN_RETRY_JITTER=off` (the naive baseline of `bench/fleet`: every
/// client that failed together waits the same and retries together).
pub fn full_jitter(cap: Duration) -> Duration {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var_os("BOOTPLAN_RETRY_JITTER").is_some_and(|v| v == "off")) {
        return cap;
    }
    let cap_ms = cap.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(fastrand::u64(0..=cap_ms))
}

/// A client-side rate limit: a token bucket refilled at `rate` tokens a
/// second, holding at most `burst` (one second's worth, at least one).
/// Each request takes a token first; when none is left it waits its turn
/// (a reservation: waiters are served in the order they came, no polling).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens (negative: reserved by waiters) as of the instant.
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// The lowest rate accepted: one request every 100 s.
    pub const MIN_RATE: f64 = 0.01;

    pub fn new(rate: f64) -> TokenBucket {
        let rate = if rate.is_finite() {
            rate.max(Self::MIN_RATE)
        } else {
            Self::MIN_RATE
        };
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: std::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token, waiting until one is there.
    pub async fn take(&self) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, at) = *state;
            let refilled =
                (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
            let left = refilled - 1.0;
            *state = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The counter of retried dependency requests.
pub const RETRIES_METRIC: &str = "bootplan_dependency_retries_total";

/// Counts a retry of a dependency (`vault`, `aws`, `metadata`, `etcd`,
/// `report`) in `bootplan_dependency_retries_total`.
pub fn count(dependency: &'static str) {
    metrics::counter!(RETRIES_METRIC, "dependency" => dependency).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// The caps the delays are drawn under, from many draws: the largest
    /// draw per retry approaches its cap and never passes it.
    #[test]
    fn delays_are_jittered_under_a_cap_that_doubles_then_stops() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(400));
        for (retry, cap) in [(1, 100), (2, 200), (3, 400), (4, 400), (30, 400)] {
            let draws: Vec<u64> = (0..400)
                .map(|_| backoff(min, max, retry).as_millis() as u64)
                .collect();
            let top = *draws.iter().max().unwrap();
            assert!(top <= cap, "retry {retry}: {top}ms above the cap {cap}ms");
            assert!(
                top >= cap * 3 / 4,
                "retry {retry}: never near the cap {cap}ms ({top}ms)"
            );
            let low = *draws.iter().min().unwrap();
            assert!(
                low <= cap / 4,
                "retry {retry}: no jitter down to zero ({low}ms)"
            );
        }
    }

    #[test]
    fn a_budget_of_n_attempts_has_n_minus_one_delays() {
        let budget = Budget::new(6, Duration::from_millis(1), Duration::from_millis(2));
        assert_eq!(budget.delays().count(), 5);
        assert_eq!(
            Budget::new(1, Duration::ZERO, Duration::ZERO)
                .delays()
                .count(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_until_done_and_announces_each_failure() {
        let budget = Budget::new(5, Duration::from_millis(10), Duration::from_millis(40));
        let tries = AtomicU32::new(0);
        let mut heard = Vec::new();
        let result: Result<u32, GaveUp<String>> = run(
            &budget,
            |r| heard.push((r.attempt, r.of, r.detail.to_string())),
            |n| {
                tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Attempt::retry(format!("refused {n}"))
                    } else {
                        Attempt::Done(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(
            heard,
            [
                (1, 5, "refused 1".to_string()),
                (2, 5, "refused 2".to_string())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_the_budget_a_fatal_error_or_the_deadline() {
        let budget = Budget::new(3, Duration::from_millis(10), Duration::from_millis(10));
        let gave_up: Result<(), GaveUp<String>> =
            run(&budget, |_| {}, |_| async { Attempt::retry("down") }).await;
        match gave_up {
            Err(GaveUp::Exhausted(e)) => assert_eq!((e.attempts, e.last.as_str()), (3, "down")),
            other => panic!("{other:?}"),
        }
        let fatal: Result<(), GaveUp<&str>> =
            run(&budget, |_| {}, |_| async { Attempt::Fail("denied") }).await;
        assert!(matches!(fatal, Err(GaveUp::Fatal("denied"))));
        // No attempt starts that could not end before the deadline.
        let mut short = Budget::new(100, Duration::from_secs(1), Duration::from_secs(1));
        short.deadline = Some(Instant::now() + Duration::from_millis(500));
        short.attempt_time = Duration::from_millis(100);
        let deadline = short.deadline.unwrap();
        let starts = std::sync::Mutex::new(Vec::new());
        let _: Result<(), GaveUp<String>> = run(
            &short,
            |_| {},
            |_| {
                starts.lock().unwrap().push(Instant::now());
                async { Attempt::retry("down") }
            },
        )
        .await;
        // Full jitter makes the number of attempts vary; what must hold is
        // that each one had its whole attempt time before the deadline.
        let starts = starts.into_inner().unwrap();
        assert!(!starts.is_empty());
        for start in &starts {
            assert!(
                *start + short.attempt_time <= deadline,
                "an attempt began too late"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_bucket_lets_a_burst_through_then_keeps_the_rate() {
        let bucket = TokenBucket::new(4.0);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..12 {
            bucket.take().await;
            at.push(start.elapsed());
        }
        // One second's worth at once, then one every 250ms.
        assert!(at[..4].iter().all(|d| d.is_zero()), "{at:?}");
        assert_eq!(at[4], Duration::from_millis(250));
        assert_eq!(at[11], Duration::from_secs(2));
        // A slow rate still starts with one token.
        let slow = TokenBucket::new(0.5);
        let start = Instant::now();
        slow.take().await;
        slow.take().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_servers_retry_after_is_honoured() {
        let budget = Budget::new(2, Duration::from_millis(1), Duration::from_millis(1));
        let mut delays = Vec::new();
        let _: Result<(), GaveUp<String>> = run(
            &budget,
            |r| delays.push(r.delay),
            |n| async move {
                if n == 1 {
                    Attempt::Retry {
                        detail: "HTTP 429".into(),
                        retry_after: Some(Duration::from_secs(3)),
                    }
                } else {
                    Attempt::Done(())
                }
            },
        )
        .await;
        assert_eq!(delays, [Duration::from_secs(3)]);
    }
}
