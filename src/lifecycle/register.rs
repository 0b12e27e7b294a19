//! Registration in etcd through its v3 JSON gateway (the client is
//! [`crate::fleet::etcd`], shared with the fleet-wide semaphores).
//!
//! The key is attached to a lease kept alive every TTL/3 while bootplan
//! supervises. On shutdown or failure the key is deleted and the lease
//! revoked; if bootplan dies, the lease expires within its TTL, so no stale
//! entry outlives the instance. A lease found expired (after a long pause)
//! is granted again and the key put again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
use crate::fleet::etcd::{Connection, EtcdClient, EtcdError};
use crate::plan::lifecycle::EtcdSpec;
use crate::secrets::SecretValue;
use crate::steps::StepContext;
use crate::telemetry::Level;

/// Tries for the initial registration before giving up.
const REGISTER_ATTEMPTS: u32 = 3;
/// Delay caps between registration attempts (full jitter below each).
const REGISTER_BACKOFF: (Duration, Duration) = (Duration::from_millis(300), Duration::from_secs(2));

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot render register.etcd.{what}: {message}")]
    Render { what: String, message: String },
}

impl RegisterError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::RegisterFailed
    }
}

/// A live registration: the key, its lease, and the keep-alive task.
pub struct Registration {
    client: Arc<EtcdClient>,
    key: String,
    lease: Arc<std::sync::Mutex<String>>,
    stop: CancellationToken,
    keepalive: tokio::task::JoinHandle<()>,
}

/// Renders the spec, registers the instance and starts the keep-alive.
pub async fn register(
    spec: &EtcdSpec,
    plan_name: &str,
    ctx: &StepContext,
) -> Result<Registration, RegisterError> {
    let secrets =
        ctx.secrets
            .resolve(&spec.secret_refs)
            .await
            .map_err(|e| RegisterError::Render {
                what: "secrets".into(),
                message: e.to_string(),
            })?;
    let render = |text: &str, what: &str| {
        crate::steps::render(text, what, ctx, Some(&secrets)).map_err(|e| RegisterError::Render {
            what: what.to_string(),
            message: e.to_string(),
        })
    };
    let key = render(&spec.key, "key")?;
    let address = match &spec.address {
        Some(a) => render(a, "address")?,
        None => ctx
            .facts
            .local_ipv4
            .clone()
            .unwrap_or_else(|| ctx.facts.hostname.clone()),
    };
    let credentials = match (&spec.username, &spec.password) {
        (Some(user), Some(password)) => Some((
            user.clone(),
            SecretValue::new(render(password, "password")?),
        )),
        _ => None,
    };
    let value = serde_json::to_vec(&json!({
        "bootstrap_id": ctx.bootstrap_id,
        "plan": plan_name,
        "address": address,
        "port": spec.port,
        "facts": ctx.facts,
        "registered_at": crate::telemetry::timestamp(std::time::SystemTime::now()),
    }))
    .unwrap_or_default();
    let conn = Connection {
        endpoints: &spec.endpoints,
        ca_file: spec.ca_file.as_deref(),
        ca_only: spec.ca_only,
        timeout: spec.timeout,
    };
    let client = Arc::new(EtcdClient::new(&conn, credentials)?);

    let (min, max) = REGISTER_BACKOFF;
    let budget = crate::retry::Budget::new(REGISTER_ATTEMPTS, min, max);
    let announce = |retrying: &crate::retry::Retrying<'_>| {
        crate::retry::count("etcd");
        ctx.reporter.notice(
            Level::Warn,
            format!("registering {key} in etcd failed: {retrying}"),
        );
    };
    // The last failure, to report as it is when the attempts run out.
    let last = std::sync::Mutex::new(None);
    let registered = crate::retry::run(&budget, announce, |_| async {
        match put_with_lease(&client, &key, &value, spec.ttl).await {
            Ok(lease) => crate::retry::Attempt::<_, RegisterError>::Done(lease),
            Err(err) => {
                let detail = err.to_string();
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                crate::retry::Attempt::retry(detail)
            }
        }
    })
    .await;
    let lease = registered.map_err(|gave_up| match gave_up {
        crate::retry::GaveUp::Fatal(err) => err,
        crate::retry::GaveUp::Exhausted(exhausted) => last
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(RegisterError::Etcd(EtcdError::Client(
                exhausted.to_string(),
            ))),
    })?;
    let lease = Arc::new(std::sync::Mutex::new(lease));
    let stop = CancellationToken::new();
    let keepalive = tokio::spawn(keep_alive(
        client.clone(),
        key.clone(),
        value,
        lease.clone(),
        spec.ttl,
        stop.clone(),
        ctx.reporter.clone(),
    ));
    ctx.reporter.notice(
        Level::Info,
        format!(
            "registered in etcd as {key} (lease TTL {}s)",
            spec.ttl.as_secs()
        ),
    );
    Ok(Registration {
        client,
        key,
        lease,
        stop,
        keepalive,
    })
}

async fn put_with_lease(
    client: &EtcdClient,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<String, RegisterError> {
    let lease = client.grant(ttl).await?;
    if let Err(err) = client.put(key, value, &lease).await {
        let _ = client.revoke(&lease).await;
        return Err(err.into());
    }
    Ok(lease)
}

async fn keep_alive(
    client: Arc<EtcdClient>,
    key: String,
    value: Vec<u8>,
    lease: Arc<std::sync::Mutex<String>>,
    ttl: Duration,
    stop: CancellationToken,
    reporter: Arc<crate::telemetry::Reporter>,
) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let id = lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match client.keepalive(&id).await {
            Ok(left) if left > 0 => {}
            Ok(_) => {
                reporter.notice(
                    Level::Warn,
                    format!("etcd lease for {key} expired; registering again"),
                );
                match put_with_lease(&client, &key, &value, ttl).await {
                    Ok(new) => *lease.lock().unwrap_or_else(|p| p.into_inner()) = new,
                    Err(err) => {
                        reporter.notice(Level::Warn, format!("cannot register again: {err}"))
                    }
                }
            }
            Err(err) => reporter.notice(Level::Warn, format!("etcd keep-alive failed: {err}")),
        }
    }
}

impl Registration {
    /// Stops the keep-alive, deletes the key and revokes the lease.
    pub async fn deregister(self, reporter: &crate::telemetry::Reporter) {
        self.stop.cancel();
        let _ = self.keepalive.await;
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let deleted = self.client.delete(&self.key).await;
        let revoked = self.client.revoke(&lease).await;
        match deleted.and(revoked) {
            Ok(()) => reporter.notice(Level::Info, format!("deregistered {} from etcd", self.key)),
            Err(err) => reporter.notice(
                Level::Warn,
                format!(
                    "deregistering {} failed (the lease will expire): {err}",
                    self.key
                ),
            ),
        }
    }
}
