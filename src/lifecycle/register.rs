//! Registration in etcd through its v3 JSON gateway (`/v3/kv/put`,
//! `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`,
//! `/v3/kv/deleterange`, `/v3/auth/authenticate`; keys and values base64).
//!
//! The key is attached to a lease kept alive every TTL/3 while bootplan
//! supervises. On shutdown or failure the key is deleted and the lease
//! revoked; if bootplan dies, the lease expires within its TTL, so no stale
//! entry outlives the instance. A lease found expired (after a long pause)
//! is granted again and the key put again.
//!
//! Endpoints are tried in order on each request (failover). `https://`
//! endpoints trust the plan's `ca_file`; user/password auth gets a token
//! that is renewed when etcd rejects it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
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
    #[error("etcd request {path} failed on every endpoint: {last}")]
    Unreachable { path: String, last: String },
    #[error("etcd {endpoint}{path} answered HTTP {status}: {body}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("etcd {path} answered unexpectedly: {message}")]
    Protocol { path: String, message: String },
    #[error("cannot set up the etcd client: {0}")]
    Client(String),
    #[error("cannot render register.etcd.{what}: {message}")]
    Render { what: String, message: String },
}

impl RegisterError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::RegisterFailed
    }
}

/// A small etcd v3 client over the JSON gateway.
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    credentials: Option<(String, SecretValue)>,
    token: Mutex<Option<SecretValue>>,
}

impl EtcdClient {
    pub fn new(
        spec: &EtcdSpec,
        credentials: Option<(String, SecretValue)>,
    ) -> Result<EtcdClient, RegisterError> {
        let builder = crate::http::client_builder()
            .timeout(spec.timeout)
            .no_proxy();
        let http = crate::http::with_ca_file(builder, spec.ca_file.as_deref(), spec.ca_only)
            .map_err(RegisterError::Client)?
            .build()
            .map_err(|e| RegisterError::Client(e.to_string()))?;
        Ok(EtcdClient {
            http,
            endpoints: spec.endpoints.clone(),
            credentials,
            token: Mutex::new(None),
        })
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    #[tracing::instrument(skip_all, fields(path = path))]
    async fn call(&self, path: &str, body: &Value) -> Result<Value, RegisterError> {
        if self.credentials.is_some() && self.token.lock().await.is_none() {
            self.authenticate().await?;
        }
        match self.call_once(path, body).await {
            // An expired or revoked auth token: get a new one, once.
            Err(RegisterError::Status { status: 401, .. }) if self.credentials.is_some() => {
                self.authenticate().await?;
                self.call_once(path, body).await
            }
            other => other,
        }
    }

    #[tracing::instrument(skip_all, fields(path = path, endpoint = tracing::field::Empty, status = tracing::field::Empty))]
    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, RegisterError> {
        let token = self
            .token
            .lock()
            .await
            .as_ref()
            .map(|t| t.expose().to_string());
        let mut last = String::from("no endpoints");
        for endpoint in &self.endpoints {
            tracing::Span::current().record("endpoint", endpoint.as_str());
            let mut request = self.http.post(format!("{endpoint}{path}")).json(body);
            if let Some(token) = &token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let resp = match request.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    last = format!("{endpoint}: {}", crate::http::describe_error(&e));
                    continue;
                }
            };
            let status = resp.status();
            tracing::Span::current().record("status", status.as_u16());
            let text = resp.text().await.unwrap_or_default();
            if status.is_server_error() {
                last = format!("{endpoint}: HTTP {status}");
                continue;
            }
            if !status.is_success() {
                return Err(RegisterError::Status {
                    endpoint: endpoint.clone(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                });
            }
            // keepalive streams: the first JSON object is the answer.
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
            return serde_json::from_str(first).map_err(|e| RegisterError::Protocol {
                path: path.to_string(),
                message: e.to_string(),
            });
        }
        Err(RegisterError::Unreachable {
            path: path.to_string(),
            last,
        })
    }

    #[tracing::instrument(skip_all, fields(user = self.credentials.as_ref().map(|c| c.0.as_str())))]
    async fn authenticate(&self) -> Result<(), RegisterError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().await = None;
        let body = json!({ "name": name, "password": password.expose() });
        let answer = self.call_once("/v3/auth/authenticate", &body).await?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| RegisterError::Protocol {
                path: "/v3/auth/authenticate".into(),
                message: "no token in the answer".into(),
            })?;
        *self.token.lock().await = Some(SecretValue::new(token.to_string()));
        Ok(())
    }

    /// Grants a lease; returns its id (a decimal string, as etcd sends it).
    #[tracing::instrument(skip_all, fields(ttl_s = ttl.as_secs()))]
    pub async fn grant(&self, ttl: Duration) -> Result<String, RegisterError> {
        let answer = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs() }))
            .await?;
        answer["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| RegisterError::Protocol {
                path: "/v3/lease/grant".into(),
                message: "no lease ID in the answer".into(),
            })
    }

    #[tracing::instrument(skip_all, fields(key = key, lease = lease))]
    pub async fn put(&self, key: &str, value: &[u8], lease: &str) -> Result<(), RegisterError> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease });
        self.call("/v3/kv/put", &body).await.map(drop)
    }

    /// Refreshes the lease; returns the TTL left (0 when the lease is gone).
    #[tracing::instrument(skip_all, fields(lease = lease))]
    pub async fn keepalive(&self, lease: &str) -> Result<i64, RegisterError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": lease }))
            .await?;
        let result = &answer["result"];
        Ok(match &result["TTL"] {
            Value::String(s) => s.parse().unwrap_or(0),
            Value::Number(n) => n.as_i64().unwrap_or(0),
            _ => 0,
        })
    }

    #[tracing::instrument(skip_all, fields(lease = lease))]
    pub async fn revoke(&self, lease: &str) -> Result<(), RegisterError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease }))
            .await
            .map(drop)
    }

    #[tracing::instrument(skip_all, fields(key = key))]
    pub async fn delete(&self, key: &str) -> Result<(), RegisterError> {
        self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))
            .await
            .map(drop)
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
    let client = Arc::new(EtcdClient::new(spec, credentials)?);

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
            .unwrap_or(RegisterError::Client(exhausted.to_string())),
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
        return Err(err);
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
