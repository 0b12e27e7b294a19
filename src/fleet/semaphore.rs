//! Fleet-wide semaphores on etcd leases.
//!
//! A step that takes a slot of semaphore `S` grants itself a lease (the
//! plan's `ttl`), puts `PREFIX S/BOOTSTRAP_ID/STEP` attached to it, and
//! reads the range `PREFIX S/` ordered by creation revision: the first
//! `slots` keys hold a slot, the others queue in the order they came. A
//! queued step watches the prefix for deletions and counts down the keys
//! ahead of it, reading the range again only when fewer than `slots` are
//! left (so a release does not send the whole queue to etcd); without a
//! watch it reads the range every jittered `poll_interval` (±50%, so a
//! fleet does not poll in step). It reports its place, and keeps its lease
//! alive the whole time, queued or holding. It gives the slot
//! back by revoking the lease, which deletes the key — on every path:
//! success, failure, timeout, deadline and signal; a bootplan that dies
//! (SIGKILL, power loss) stops the keep-alive, so its slot is free once
//! the lease expires, within the TTL.
//!
//! etcd requests are retried with full jitter; when they still fail, the
//! step fails with `throttle.unavailable`, or, with `on_unavailable:
//! proceed`, runs without a slot and says so.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::etcd::{EtcdClient, EtcdError};
use crate::plan::limits::{Limits, OnUnavailable, Semaphore};
use crate::telemetry::{EventKind, Level, Reporter};

/// Delay caps between retries of one etcd request (full jitter below).
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// How often a queued step reports its place when it has not changed.
const QUEUE_REPEAT: Duration = Duration::from_secs(5);
/// Tries to give a slot back before leaving it to the lease's expiry.
const RELEASE_ATTEMPTS: u32 = 2;

/// Why a slot could not be taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ThrottleError {
    #[error("etcd is unavailable for semaphore `{semaphore}`: {detail}")]
    Unavailable { semaphore: String, detail: String },
    #[error(
        "timed out after {} waiting for a slot of semaphore `{semaphore}` (position {position})",
        humantime::format_duration(*after)
    )]
    TimedOut {
        semaphore: String,
        position: u32,
        after: Duration,
    },
    #[error("no semaphore `{0}` in `limits.semaphores`")]
    Unknown(String),
    #[error("cancelled while waiting for a slot")]
    Cancelled,
}

/// Who holds a slot, as written in its key's value.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub bootstrap_id: String,
    pub plan: String,
    pub hostname: String,
}

/// What one acquisition asks for.
pub struct Request<'a> {
    pub limits: &'a Limits,
    pub semaphore: &'a Semaphore,
    pub step: &'a str,
    pub holder: &'a Holder,
    /// The run's deadline.
    pub deadline: Option<Instant>,
    /// The step's timeout: when it ends, and how long it is.
    pub limit: Option<(Instant, Duration)>,
}

/// How a throttled step may go on.
pub enum Acquired {
    /// It holds a slot until [`Slot::release`].
    Held(Slot),
    /// etcd was unavailable and the semaphore says `proceed`.
    Unthrottled,
}

/// A held slot (or a place in the queue): the lease and its keep-alive.
pub struct Slot {
    client: Arc<EtcdClient>,
    semaphore: String,
    key: String,
    lease: String,
    stop: CancellationToken,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl Slot {
    /// Gives the slot back: stops the keep-alive and revokes the lease,
    /// which deletes the key. When etcd does not answer, the lease expires
    /// on its own within its TTL.
    pub async fn release(mut self, reporter: &Reporter) {
        self.released = true;
        self.stop.cancel();
        if let Some(task) = self.keepalive.take() {
            let _ = task.await;
        }
        let mut last = None;
        for _ in 0..RELEASE_ATTEMPTS {
            match self.client.revoke(&self.lease).await {
                Ok(()) => {
                    reporter.notice(
                        Level::Debug,
                        format!(
                            "gave back the slot {} of semaphore `{}`",
                            self.key, self.semaphore
                        ),
                    );
                    return;
                }
                Err(err) => last = Some(err),
            }
        }
        if let Some(err) = last {
            reporter.notice(
                Level::Warn,
                format!(
                    "cannot give back the slot of semaphore `{}` ({err}); it is free when its lease expires",
                    self.semaphore
                ),
            );
        }
    }
}

impl Drop for Slot {
    /// A slot dropped without `release` (a panic): revoke in the background
    /// when a runtime is there; the lease's expiry is the last resort.
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let lease = self.lease.clone();
            handle.spawn(async move {
                let _ = client.revoke(&lease).await;
            });
        }
    }
}

/// Takes a slot: queues for it, reports the place, and returns once held.
/// `cancel` (the run stopping) and the step's limit end the wait; whatever
/// was put in etcd is taken out again before returning.
pub async fn acquire(
    client: Result<Arc<EtcdClient>, EtcdError>,
    req: &Request<'_>,
    reporter: &Arc<Reporter>,
    cancel: &CancellationToken,
) -> Result<Acquired, ThrottleError> {
    let started = Instant::now();
    let name = &req.semaphore.name;
    let result = match client {
        Ok(client) => queue(client, req, reporter, cancel, started).await,
        Err(err) => Err(ThrottleError::Unavailable {
            semaphore: name.clone(),
            detail: err.to_string(),
        }),
    };
    match result {
        Err(ThrottleError::Unavailable { semaphore, detail })
            if req.semaphore.on_unavailable == OnUnavailable::Proceed =>
        {
            reporter.notice(
                Level::Warn,
                format!(
                    "step `{}` runs without a slot of semaphore `{semaphore}` (on_unavailable: proceed): etcd is unavailable: {detail}",
                    req.step
                ),
            );
            reporter.emit(EventKind::SlotAcquired {
                step: req.step.to_string(),
                semaphore: semaphore.clone(),
                waited: started.elapsed(),
                throttled: false,
            });
            Ok(Acquired::Unthrottled)
        }
        Err(err) => Err(err),
        Ok(slot) => {
            reporter.emit(EventKind::SlotAcquired {
                step: req.step.to_string(),
                semaphore: name.clone(),
                waited: started.elapsed(),
                throttled: true,
            });
            Ok(Acquired::Held(slot))
        }
    }
}

/// What stopped a wait.
enum Interrupted {
    Cancelled,
    TimedOut,
}

/// Runs `fut` unless the run stops or the step's limit passes first.
async fn bounded<T>(
    fut: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
    limit: Option<Instant>,
) -> Result<T, Interrupted> {
    let expired = async {
        match limit {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        value = fut => Ok(value),
        () = cancel.cancelled() => Err(Interrupted::Cancelled),
        () = expired => Err(Interrupted::TimedOut),
    }
}

async fn queue(
    client: Arc<EtcdClient>,
    req: &Request<'_>,
    reporter: &Arc<Reporter>,
    cancel: &CancellationToken,
    started: Instant,
) -> Result<Slot, ThrottleError> {
    let sem = req.semaphore;
    let dir = format!("{}{}/", req.limits.prefix, sem.name);
    let key = format!("{dir}{}/{}", req.holder.bootstrap_id, req.step);
    let value = serde_json::to_vec(&json!({
        "bootstrap_id": req.holder.bootstrap_id,
        "plan": req.holder.plan,
        "step": req.step,
        "hostname": req.holder.hostname,
        "since": crate::telemetry::timestamp(std::time::SystemTime::now()),
    }))
    .unwrap_or_default();
    let limit_at = req.limit.map(|(at, _)| at);
    let mut position = 0;
    let interrupted = |why: Interrupted, position: u32| match why {
        Interrupted::Cancelled => ThrottleError::Cancelled,
        Interrupted::TimedOut => ThrottleError::TimedOut {
            semaphore: sem.name.clone(),
            position,
            after: req.limit.map_or(started.elapsed(), |(_, d)| d),
        },
    };
    let call = Caller { req, reporter };
    // A lease and the key on it; again if the lease is lost while queued.
    'enter: loop {
        let lease = bounded(
            call.retrying("lease/grant", || client.grant(req.limits.ttl)),
            cancel,
            limit_at,
        )
        .await
        .map_err(|why| interrupted(why, position))??;
        let stop = CancellationToken::new();
        let keepalive = tokio::spawn(keep_alive(
            client.clone(),
            lease.clone(),
            req.limits.ttl,
            stop.clone(),
            reporter.clone(),
            format!("step `{}` (semaphore `{}`)", req.step, sem.name),
        ));
        let slot = Slot {
            client: client.clone(),
            semaphore: sem.name.clone(),
            key: key.clone(),
            lease,
            stop,
            keepalive: Some(keepalive),
            released: false,
        };
        // From here on every way out releases `slot`.
        let put = bounded(
            call.retrying("kv/put", || client.put(&key, &value, &slot.lease)),
            cancel,
            limit_at,
        )
        .await;
        match put {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                slot.release(reporter).await;
                return Err(err);
            }
            Err(why) => {
                slot.release(reporter).await;
                return Err(interrupted(why, position));
            }
        }
        // Deletions under the semaphore, seen as they happen: the queue
        // moves without polling. Opened before the first read of the range,
        // so no deletion after that read is missed. Without it (an old
        // gateway, a proxy that buffers), polling alone.
        let mut watch = match bounded(client.watch_prefix(&dir), cancel, limit_at).await {
            Ok(Ok(watch)) => Some(watch),
            Ok(Err(err)) => {
                reporter.notice(
                    Level::Debug,
                    format!(
                        "no etcd watch for semaphore `{}` ({err}); polling",
                        sem.name
                    ),
                );
                None
            }
            Err(why) => {
                slot.release(reporter).await;
                return Err(interrupted(why, position));
            }
        };
        let mut reported_at: Option<Instant> = None;
        loop {
            let range = bounded(
                call.retrying("kv/range", || client.range_prefix(&dir, true)),
                cancel,
                limit_at,
            )
            .await;
            let holders = match range {
                Ok(Ok(kvs)) => kvs,
                Ok(Err(err)) => {
                    slot.release(reporter).await;
                    return Err(err);
                }
                Err(why) => {
                    slot.release(reporter).await;
                    return Err(interrupted(why, position));
                }
            };
            let Some(index) = holders.iter().position(|kv| kv.key == key) else {
                // The lease expired under us (a long pause): queue again.
                reporter.notice(
                    Level::Warn,
                    format!(
                        "the queue place of step `{}` for semaphore `{}` was lost (its lease expired); queueing again",
                        req.step, sem.name
                    ),
                );
                slot.release(reporter).await;
                continue 'enter;
            };
            let slots = sem.slots as usize;
            if index < slots {
                return Ok(slot);
            }
            // Keys ahead only ever leave: a newcomer is created after us.
            let mut ahead: std::collections::HashSet<String> =
                holders[..index].iter().map(|kv| kv.key.clone()).collect();
            let mut report = |position: &mut u32, ahead: usize| {
                let now_position = (ahead - slots + 1) as u32;
                let repeat = reported_at.is_none_or(|at| at.elapsed() >= QUEUE_REPEAT);
                if now_position != *position || repeat {
                    *position = now_position;
                    reported_at = Some(Instant::now());
                    reporter.emit(EventKind::Queued {
                        step: req.step.to_string(),
                        semaphore: sem.name.clone(),
                        position: now_position,
                        slots: sem.slots,
                        elapsed: started.elapsed(),
                    });
                }
            };
            report(&mut position, ahead.len());
            // With a watch the range is read again only when the keys ahead
            // are fewer than the slots (or as a rare check); without one,
            // every jittered poll interval.
            let every = match watch {
                Some(_) => req.limits.poll_interval * 10,
                None => req.limits.poll_interval,
            };
            let poll_at = Instant::now() + jittered(every);
            let wait = async {
                loop {
                    let deleted = async {
                        match watch.as_mut() {
                            Some(w) => w.deleted().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep_until(poll_at) => return,
                        () = tokio::time::sleep(QUEUE_REPEAT) => report(&mut position, ahead.len()),
                        gone = deleted => match gone {
                            Ok(keys) => {
                                if keys.contains(&key) {
                                    return;
                                }
                                for k in &keys {
                                    ahead.remove(k);
                                }
                                if ahead.len() < slots {
                                    return;
                                }
                                report(&mut position, ahead.len());
                            }
                            Err(_) => {
                                watch = None;
                                return;
                            }
                        },
                    }
                }
            };
            if let Err(why) = bounded(wait, cancel, limit_at).await {
                slot.release(reporter).await;
                return Err(interrupted(why, position));
            }
        }
    }
}

/// `every` ±50%, uniformly.
fn jittered(every: Duration) -> Duration {
    let ms = every.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(fastrand::u64(ms / 2..=ms + ms / 2))
}

/// Makes etcd requests with retries.
struct Caller<'a> {
    req: &'a Request<'a>,
    reporter: &'a Reporter,
}

impl Caller<'_> {
    /// `op` retried with full jitter while etcd's failure is transient,
    /// within the plan's `attempts` and the run's deadline.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ThrottleError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let sem = &self.req.semaphore.name;
        let mut budget =
            crate::retry::Budget::new(self.req.limits.attempts, RETRY_BACKOFF.0, RETRY_BACKOFF.1);
        budget.deadline = self.req.deadline;
        budget.attempt_time = self.req.limits.timeout;
        let announce = |retrying: &crate::retry::Retrying<'_>| {
            crate::retry::count("etcd");
            self.reporter.notice(
                Level::Warn,
                format!(
                    "etcd {what} for semaphore `{sem}` (step `{}`) failed: {retrying}",
                    self.req.step
                ),
            );
        };
        let result = crate::retry::run(&budget, announce, |_| {
            let fut = op();
            async move {
                match fut.await {
                    Ok(value) => crate::retry::Attempt::Done(value),
                    Err(err) if err.is_transient() => crate::retry::Attempt::retry(err.to_string()),
                    Err(err) => crate::retry::Attempt::Fail(err),
                }
            }
        })
        .await;
        result.map_err(|gave_up| ThrottleError::Unavailable {
            semaphore: sem.clone(),
            detail: match gave_up {
                crate::retry::GaveUp::Fatal(err) => err.to_string(),
                crate::retry::GaveUp::Exhausted(exhausted) => exhausted.to_string(),
            },
        })
    }
}

/// Keeps the lease alive every TTL/3 until `stop`. A lease found gone is
/// left to the queue loop (which sees its key missing and queues again);
/// once the slot is held it is reported, and the step goes on.
async fn keep_alive(
    client: Arc<EtcdClient>,
    lease: String,
    ttl: Duration,
    stop: CancellationToken,
    reporter: Arc<Reporter>,
    whose: String,
) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let kept = tokio::select! {
            kept = client.keepalive(&lease) => kept,
            () = stop.cancelled() => return,
        };
        match kept {
            Ok(left) if left > 0 => {}
            Ok(_) => reporter.notice(
                Level::Warn,
                format!(
                    "the etcd lease of {whose} expired: the slot may be taken by another machine"
                ),
            ),
            Err(err) => reporter.notice(
                Level::Warn,
                format!("keeping the etcd lease of {whose} alive failed: {err}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_is_jittered_around_its_value() {
        let every = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..500).map(|_| jittered(every)).collect();
        assert!(draws.iter().all(|d| *d >= every / 2 && *d <= every * 3 / 2));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(700)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(1300)));
    }
}
