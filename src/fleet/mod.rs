//! Fleet safety: what keeps a fleet that starts together from knocking
//! over what it shares. [`etcd`] is the v3 JSON-gateway client (also used
//! by registration); [`semaphore`] the fleet-wide slots a `throttle:` step
//! takes; [`Fleet`] holds the run's limits and its start splay.
//!
//! Sits beside `process`, `secrets` and `facts`: it uses the plan model,
//! telemetry and the utilities, and `steps` and the engine use it.

pub mod etcd;
pub mod semaphore;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::limits::{Limits, StartSplay};
use crate::telemetry::{EventKind, Reporter};

pub use semaphore::{Acquired, ThrottleError};

/// The run's fleet settings: its semaphores (and the etcd client for them,
/// made on first use) and its start splay (taken at most once).
#[derive(Default)]
pub struct Fleet {
    limits: Option<Limits>,
    splay: Option<StartSplay>,
    splay_taken: tokio::sync::OnceCell<bool>,
    client: OnceLock<Result<Arc<etcd::EtcdClient>, etcd::EtcdError>>,
    /// Who holds a slot: written into its key, for operators.
    holder: semaphore::Holder,
    /// The run's deadline: no etcd retry starts that could not end before it.
    deadline: Option<Instant>,
}

impl Fleet {
    pub fn new(
        limits: Option<Limits>,
        splay: Option<StartSplay>,
        holder: semaphore::Holder,
        deadline: Option<Instant>,
    ) -> Fleet {
        Fleet {
            limits,
            splay,
            splay_taken: tokio::sync::OnceCell::new(),
            client: OnceLock::new(),
            holder,
            deadline,
        }
    }

    /// Waits out the start splay, the first time any step asks (the others
    /// wait for the same delay to end). `false` when `cancel` fired first.
    pub async fn splay(&self, reporter: &Reporter, cancel: &CancellationToken) -> bool {
        let Some(splay) = self.splay else {
            return true;
        };
        let wait = self.splay_taken.get_or_init(|| async {
            let delay = splay.draw();
            reporter.emit(EventKind::StartSplay { delay });
            tokio::select! {
                () = tokio::time::sleep(delay) => true,
                () = cancel.cancelled() => false,
            }
        });
        tokio::select! {
            done = wait => *done,
            () = cancel.cancelled() => false,
        }
    }

    /// Takes a slot of semaphore `name` for `step`; see [`semaphore::acquire`].
    /// The queue is a span of its own (`throttle`), its etcd calls its children.
    #[tracing::instrument(name = "throttle", skip_all, fields(semaphore = name))]
    pub async fn acquire(
        &self,
        name: &str,
        step: &str,
        reporter: &Arc<Reporter>,
        cancel: &CancellationToken,
        limit: Option<(Instant, Duration)>,
    ) -> Result<Acquired, ThrottleError> {
        let Some(limits) = &self.limits else {
            return Err(ThrottleError::Unknown(name.to_string()));
        };
        let Some(sem) = limits.semaphores.get(name) else {
            return Err(ThrottleError::Unknown(name.to_string()));
        };
        let client = self
            .client
            .get_or_init(|| {
                let conn = etcd::Connection {
                    endpoints: &limits.endpoints,
                    ca_file: limits.ca_file.as_deref(),
                    ca_only: limits.ca_only,
                    timeout: limits.timeout,
                };
                etcd::EtcdClient::new(&conn, None).map(Arc::new)
            })
            .clone();
        let request = semaphore::Request {
            limits,
            semaphore: sem,
            step,
            holder: &self.holder,
            deadline: self.deadline,
            limit,
        };
        semaphore::acquire(client, &request, reporter, cancel).await
    }
}
