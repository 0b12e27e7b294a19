//! The Vault / OpenBao backend: a small client of our own on reqwest.
//!
//! KV v2 (with versions) and KV v1 reads, PKI certificates issued from a
//! role; login by token (file or env),
//! AppRole (optionally with a response-wrapped secret id, unwrapped through
//! `sys/wrapping/unwrap`), JWT and Kubernetes. The token is a [`SecretValue`]
//! registered with the redactor the moment it is read. A background task
//! renews it each time two thirds of its TTL have passed, so a run that
//! outlives the TTL keeps a valid token; a token found near expiry anyway is
//! renewed (or obtained again by logging in) before use. [`VaultClient::close`]
//! stops the renewal and revokes the token when the plan sets `revoke_on_exit`.
//!
//! For refreshes: a read keeps the lease it came with (renewed through
//! `sys/leases/renew`, revoked through `sys/leases/revoke`) and the KV v2
//! version read, which [`VaultClient::unchanged`] compares with the
//! path's metadata so that an unchanged secret costs one small request.
//!
//! To add an auth method: a field in `plan::secret_source::VaultAuth`, a
//! check in `plan::secret_checks`, and an arm in [`VaultClient::login`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::http::{Failure, Net, Response};
use super::{Redactor, SecretError, SecretValue, local};
use crate::plan::secret_source::{
    CredentialRef, VaultAws, VaultAzure, VaultConfig, VaultGcp, VaultJwt, VaultPkiSecret,
    VaultSecret,
};

const BACKEND: &str = "vault";
/// Tokens with less TTL left than this are not renewed in the background
/// (the max TTL was reached; renewing would spin).
const MIN_RENEWABLE_TTL: Duration = Duration::from_secs(1);
const K8S_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A logged-in (or lazily logging-in) Vault client.
pub struct VaultClient {
    session: Arc<Session>,
    config: VaultConfig,
    base_dir: PathBuf,
    token: Arc<Mutex<Option<Token>>>,
    renewer: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// The machine's AWS credentials, for the `aws` login.
    aws: Option<super::aws::AwsClient>,
    /// Each KV path (with its version) read once per run: every secret
    /// taken from it shares the one answer.
    paths: std::sync::Mutex<std::collections::HashMap<String, PathCell>>,
    /// The KV v2 version last read of each path, for change detection.
    versions: std::sync::Mutex<std::collections::HashMap<String, Version>>,
    /// Each KV v2 path's current version, asked once per refresh cycle.
    current: std::sync::Mutex<std::collections::HashMap<String, VersionCell>>,
    /// The policy does not allow metadata reads: refreshes read the data
    /// (said once).
    metadata_denied: std::sync::atomic::AtomicBool,
    reporter: Option<Arc<crate::telemetry::Reporter>>,
}

/// One KV path's data, once read.
type PathCell = Arc<tokio::sync::OnceCell<Arc<PathRead>>>;
/// One KV v2 path's current version (`None`: not known), once asked.
type VersionCell = Arc<tokio::sync::OnceCell<Option<Version>>>;

/// A KV v2 version: its number and when it was written (numbers start
/// again at 1 when a secret is deleted and written anew, or on another
/// server).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    number: u64,
    created: String,
}

/// What one read of a path gave.
struct PathRead {
    data: Zeroizing<String>,
    /// KV v2: the version read.
    version: Option<Version>,
    lease: Option<Lease>,
}

/// The lease a read came with: a dynamic secret's, or a KV v1 `ttl`.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Empty for a lease that cannot be renewed or revoked (KV v1 `ttl`).
    pub id: String,
    pub duration: Duration,
    pub renewable: bool,
    pub obtained: Instant,
}

/// How a lease renewal went.
pub enum Renewal {
    /// Extended: this long from now.
    Renewed(Duration),
    /// The server will not renew it (gone, revoked, not renewable, denied).
    Refused(String),
}

/// What the client and its renewal task share.
struct Session {
    net: Net,
    address: String,
    namespace: Option<String>,
    redactor: Arc<Redactor>,
}

struct Token {
    value: SecretValue,
    obtained: Instant,
    /// `None`: the token does not expire (root tokens, periodic tokens without TTL).
    ttl: Option<Duration>,
    /// The TTL the token had when it was issued: a renewal that gives much
    /// less means its max TTL is near.
    issued_ttl: Option<Duration>,
    renewable: bool,
}

impl Token {
    /// Whether a renewal left so little of the issued TTL (the max TTL caps
    /// it) that a fresh login is due.
    fn near_max_ttl(&self) -> bool {
        match (self.ttl, self.issued_ttl) {
            (Some(ttl), Some(issued)) => ttl < issued / 3,
            _ => false,
        }
    }

    fn wants_refresh(&self) -> bool {
        self.ttl
            .is_some_and(|ttl| self.obtained.elapsed() >= ttl.mul_f64(2.0 / 3.0))
    }

    fn expired(&self) -> bool {
        self.ttl.is_some_and(|ttl| self.obtained.elapsed() >= ttl)
    }
}

/// The server's address: the plan's, else `$VAULT_ADDR`, then `$BAO_ADDR`.
pub fn address(config: &VaultConfig) -> Result<String, String> {
    config
        .address
        .clone()
        .or_else(|| std::env::var("VAULT_ADDR").ok())
        .or_else(|| std::env::var("BAO_ADDR").ok())
        .ok_or_else(|| "no address: set backends.vault.address or VAULT_ADDR".to_string())
}

impl VaultClient {
    /// Builds the client; no network traffic until the first read.
    pub fn new(
        config: &VaultConfig,
        base_dir: &Path,
        redactor: Arc<Redactor>,
        deadline: Option<Instant>,
        reporter: Option<Arc<crate::telemetry::Reporter>>,
        aws: Option<super::aws::AwsClient>,
    ) -> Result<VaultClient, String> {
        let address = address(config)?;
        let ca = config.ca_file.as_ref().map(|f| base_dir.join(f));
        let client = super::http::client(ca.as_deref(), config.ca_only, false, Some(&address))?;
        let net = Net::new(
            client,
            config.timeout.map(|t| t.get()),
            config.retry.as_ref(),
            deadline,
            "vault",
        )
        .with_reporter(reporter.clone())
        .with_rate_limit(config.max_requests_per_second);
        Ok(VaultClient {
            session: Arc::new(Session {
                net,
                address: address.trim_end_matches('/').to_string(),
                namespace: config.namespace.clone(),
                redactor,
            }),
            config: config.clone(),
            base_dir: base_dir.to_path_buf(),
            token: Arc::new(Mutex::new(None)),
            renewer: std::sync::Mutex::new(None),
            aws,
            paths: std::sync::Mutex::new(std::collections::HashMap::new()),
            versions: std::sync::Mutex::new(std::collections::HashMap::new()),
            current: std::sync::Mutex::new(std::collections::HashMap::new()),
            metadata_denied: std::sync::atomic::AtomicBool::new(false),
            reporter,
        })
    }

    /// Reads one KV secret (and key) for the secret named `name`.
    #[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, path = %spec.path))]
    pub async fn read(
        &self,
        name: &str,
        spec: &VaultSecret,
    ) -> Result<(SecretValue, Option<Lease>), SecretError> {
        let api_path = kv_api_path(spec);
        let cell = self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(format!("{api_path}#kv{}", spec.kv.unwrap_or(2)))
            .or_default()
            .clone();
        // A failed read leaves the cell empty: the next secret tries again.
        let read = cell
            .get_or_try_init(|| async {
                let read = self.read_path(name, spec, &api_path).await?;
                if let Some(version) = read.version.clone() {
                    self.versions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(api_path.clone(), version);
                }
                Ok::<_, SecretError>(Arc::new(read))
            })
            .await?;
        let value = local::select_key(name, BACKEND, &read.data, spec.key.as_deref())?;
        Ok((value, read.lease.clone()))
    }

    /// Whether a KV v2 secret is known to be unchanged since it was last
    /// read: its metadata's `current_version` is the version read. One
    /// small request per path and refresh cycle, instead of the data.
    /// `false` when that cannot be told (KV v1, a pinned version, nothing
    /// read yet, or a policy without metadata access: said once).
    #[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, path = %spec.path))]
    pub async fn unchanged(&self, name: &str, spec: &VaultSecret) -> Result<bool, SecretError> {
        use std::sync::atomic::Ordering;
        if spec.kv.unwrap_or(2) != 2
            || spec.version.is_some()
            || self.metadata_denied.load(Ordering::Relaxed)
        {
            return Ok(false);
        }
        let api_path = kv_api_path(spec);
        let Some(read) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&api_path)
            .cloned()
        else {
            return Ok(false);
        };
        let Some(metadata_path) = metadata_api_path(&api_path) else {
            return Ok(false);
        };
        let cell = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(metadata_path.clone())
            .or_default()
            .clone();
        let current = cell
            .get_or_try_init(|| self.current_version(name, &metadata_path))
            .await?;
        Ok(current.as_ref() == Some(&read))
    }

    /// A GET of `api_path` with the token secret `name` reads with: the
    /// URL, the token (a 403 is judged by whether it is still valid) and
    /// the answer.
    async fn get_as(
        &self,
        name: &str,
        api_path: &str,
    ) -> Result<(String, SecretValue, Result<Response, Failure>), SecretError> {
        let url = format!("{}/v1/{api_path}", self.session.address);
        let token = self.token(name).await?;
        let result = self
            .session
            .net
            .send(&url, |c| self.session.request(c.get(&url), Some(&token)))
            .await;
        Ok((url, token, result))
    }

    /// `current_version` from a KV v2 path's metadata.
    async fn current_version(
        &self,
        name: &str,
        metadata_path: &str,
    ) -> Result<Option<Version>, SecretError> {
        let (url, token, result) = self.get_as(name, metadata_path).await?;
        let response = match result {
            Ok(response) => response,
            Err(Failure::Status { status: 403, .. }) if self.token_valid(&token).await => {
                if !self
                    .metadata_denied
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                    && let Some(reporter) = &self.reporter
                {
                    reporter.notice(
                        crate::telemetry::Level::Warn,
                        format!(
                            "the Vault policy does not allow reading {url}: refreshed KV v2 secrets are read in full every time (allow `read` on the metadata path to read them only when their version changed)"
                        ),
                    );
                }
                return Ok(None);
            }
            Err(failure) => return Err(read_failure(name, &url, failure)),
        };
        let metadata: MetadataResponse =
            serde_json::from_slice(&response.body).map_err(|err| SecretError::NotFound {
                name: name.into(),
                backend: BACKEND,
                detail: format!("{url}: unexpected answer: {err}"),
            })?;
        let number = metadata.data.current_version;
        Ok(metadata
            .data
            .versions
            .get(&number.to_string())
            .map(|v| Version {
                number,
                created: v.created_time.clone(),
            }))
    }

    /// Renews a lease by its duration as issued (`sys/leases/renew`).
    #[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name))]
    pub async fn renew_lease(&self, name: &str, lease: &Lease) -> Result<Renewal, SecretError> {
        let url = format!("{}/v1/sys/leases/renew", self.session.address);
        let body = serde_json::to_vec(&serde_json::json!({
            "lease_id": lease.id,
            "increment": lease.duration.as_secs().max(1),
        }))
        .unwrap_or_default();
        let token = self.token(name).await?;
        let result = self
            .session
            .net
            .send(&url, |c| {
                self.session
                    .json_request(c.put(&url), Some(&token), body.clone())
            })
            .await;
        match result {
            Ok(response) => {
                let renewed: LeaseResponse =
                    serde_json::from_slice(&response.body).map_err(|err| {
                        SecretError::NotFound {
                            name: name.into(),
                            backend: BACKEND,
                            detail: format!("{url}: unexpected answer: {err}"),
                        }
                    })?;
                Ok(Renewal::Renewed(Duration::from_secs(
                    renewed.lease_duration,
                )))
            }
            Err(Failure::Status { status, message }) if (400..500).contains(&status) => {
                Ok(Renewal::Refused(format!("HTTP {status}: {message}")))
            }
            Err(failure) => Err(read_failure(name, &url, failure)),
        }
    }

    /// Revokes leases (`sys/leases/revoke`), one attempt each; the
    /// messages of those that failed.
    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    pub async fn revoke_leases(&self, ids: &[String]) -> Vec<String> {
        let url = format!("{}/v1/sys/leases/revoke", self.session.address);
        let mut failed = Vec::new();
        let token = match self.token("lease revocation").await {
            Ok(token) => token,
            Err(err) => return vec![err.to_string()],
        };
        let net = self.session.net.single_attempt();
        for id in ids {
            let body =
                serde_json::to_vec(&serde_json::json!({ "lease_id": id })).unwrap_or_default();
            let result = net
                .send(&url, |c| {
                    self.session
                        .json_request(c.put(&url), Some(&token), body.clone())
                })
                .await;
            match result {
                Ok(_) => {}
                Err(Failure::Status { status, message }) => {
                    failed.push(format!("{url} ({id}): HTTP {status}: {message}"));
                }
                Err(Failure::Unreachable(detail)) => failed.push(format!("{id}: {detail}")),
            }
        }
        failed
    }

    /// One KV path's data (the JSON object of its keys).
    async fn read_path(
        &self,
        name: &str,
        spec: &VaultSecret,
        api_path: &str,
    ) -> Result<PathRead, SecretError> {
        let (url, token, result) = self.get_as(name, api_path).await?;
        let response = match result {
            Ok(response) => response,
            Err(Failure::Status {
                status: 403,
                message,
            }) => {
                // Vault says 403 both for "bad token" and "policy denies":
                // ask about the token itself to tell them apart.
                return Err(if self.token_valid(&token).await {
                    err_denied(name, format!("{url}: {message}"))
                } else {
                    SecretError::AuthFailed {
                        name: name.into(),
                        backend: BACKEND,
                        detail: format!("{url}: the token is not valid: {message}"),
                    }
                });
            }
            Err(failure) => return Err(read_failure(name, &url, failure)),
        };
        kv_data(&response, spec.kv.unwrap_or(2)).map_err(|detail| SecretError::NotFound {
            name: name.into(),
            backend: BACKEND,
            detail: format!("{url}: {detail}"),
        })
    }

    /// Issues a certificate and key from a PKI role. `common_name`,
    /// `alt_names` and `ip_sans` come rendered.
    #[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, role = %spec.role))]
    pub async fn issue(
        &self,
        name: &str,
        spec: &VaultPkiSecret,
        names: &PkiNames,
    ) -> Result<Issued, SecretError> {
        let mount = spec.mount.as_deref().unwrap_or("pki").trim_matches('/');
        let url = format!("{}/v1/{mount}/issue/{}", self.session.address, spec.role);
        let body = json_body(
            name,
            &IssueRequest {
                common_name: &names.common_name,
                alt_names: names.alt_names.join(","),
                ip_sans: names.ip_sans.join(","),
                ttl: spec.ttl.map(|t| format!("{}s", t.get().as_secs().max(1))),
            },
        )?;
        let token = self.token(name).await?;
        let response = self
            .session
            .net
            .send(&url, |c| {
                self.session
                    .json_request(c.post(&url), Some(&token), body.to_vec())
            })
            .await
            .map_err(|failure| read_failure(name, &url, failure))?;
        let answer: IssueResponse =
            serde_json::from_slice(&response.body).map_err(|err| SecretError::NotFound {
                name: name.into(),
                backend: BACKEND,
                detail: format!("{url}: unexpected answer: {err}"),
            })?;
        let data = answer.data;
        let chain = if data.ca_chain.is_empty() {
            data.issuing_ca.clone()
        } else {
            data.ca_chain.join("\n")
        };
        Ok(Issued {
            certificate: data.certificate,
            private_key: SecretValue::new(data.private_key),
            chain,
            expires: std::time::UNIX_EPOCH + Duration::from_secs(data.expiration),
        })
    }

    /// Forgets the KV paths read so far (and their current versions): the
    /// next read asks the server.
    pub fn forget_reads(&self) {
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Revokes the token when the plan asks. Best effort: one attempt.
    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    pub async fn close(&self) -> Result<(), String> {
        if let Some(renewer) = self.renewer.lock().ok().and_then(|mut r| r.take()) {
            renewer.abort();
        }
        if !self.config.revoke_on_exit {
            return Ok(());
        }
        let Some(token) = self.token.lock().await.take() else {
            return Ok(());
        };
        let url = format!("{}/v1/auth/token/revoke-self", self.session.address);
        match self
            .session
            .net
            .single_attempt()
            .send(&url, |c| {
                self.session.request(c.post(&url), Some(&token.value))
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Status { status, message }) => {
                Err(format!("{url}: HTTP {status}: {message}"))
            }
            Err(Failure::Unreachable(detail)) => Err(detail),
        }
    }

    /// The current token: logs in on first use, renews or logs in again
    /// when two thirds of its TTL have passed.
    async fn token(&self, name: &str) -> Result<SecretValue, SecretError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_mut() {
            if !token.wants_refresh() {
                return Ok(token.value.clone());
            }
            let can_log_in = self.config.auth.token.is_none();
            if token.renewable
                && !token.expired()
                && let Ok(mut renewed) = self.session.renew(&token.value).await
            {
                renewed.issued_ttl = token.issued_ttl;
                // Near its max TTL a token is replaced before it runs out,
                // so no read ever races its end.
                if !(can_log_in && renewed.near_max_ttl()) {
                    *token = renewed;
                    return Ok(token.value.clone());
                }
                tracing::debug!("vault token near its max TTL: logging in again");
            }
            if !can_log_in && !token.expired() {
                // A handed-in token cannot be obtained again; use it while it lasts.
                return Ok(token.value.clone());
            }
        }
        let fresh = self.login(name).await?;
        let value = fresh.value.clone();
        let renew = fresh.renewable && fresh.ttl.is_some();
        *slot = Some(fresh);
        drop(slot);
        if renew {
            self.start_renewer();
        }
        Ok(value)
    }

    /// Renews the token in the background whenever two thirds of its TTL
    /// have passed, until renewal fails or stops extending it (max TTL).
    fn start_renewer(&self) {
        let (session, slot) = (self.session.clone(), self.token.clone());
        let task = tokio::spawn(async move {
            loop {
                let (value, wait) = {
                    let guard = slot.lock().await;
                    let Some(token) = guard.as_ref() else { return };
                    let Some(ttl) = token.ttl.filter(|t| *t >= MIN_RENEWABLE_TTL) else {
                        return;
                    };
                    let due = token.obtained + ttl.mul_f64(2.0 / 3.0);
                    (
                        token.value.clone(),
                        due.saturating_duration_since(Instant::now()),
                    )
                };
                tokio::time::sleep(wait).await;
                match session.renew(&value).await {
                    Ok(renewed) => {
                        let mut guard = slot.lock().await;
                        match guard.as_mut() {
                            Some(current) if current.value.expose() == value.expose() => {
                                let capped = Token {
                                    issued_ttl: current.issued_ttl,
                                    ..renewed
                                };
                                let near = capped.near_max_ttl();
                                *current = capped;
                                // Near the max TTL: the next read logs in again.
                                if near {
                                    return;
                                }
                            }
                            // Logged in again meanwhile, or closed: this task is done.
                            _ => return,
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "vault token renewal failed");
                        return;
                    }
                }
            }
        });
        if let Ok(mut renewer) = self.renewer.lock()
            && let Some(old) = renewer.replace(task.abort_handle())
        {
            old.abort();
        }
    }

    async fn token_valid(&self, token: &SecretValue) -> bool {
        self.lookup_self(token).await.is_ok()
    }

    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    async fn lookup_self(&self, token: &SecretValue) -> Result<LookupData, Failure> {
        let url = format!("{}/v1/auth/token/lookup-self", self.session.address);
        let response = self
            .session
            .net
            .send(&url, |c| self.session.request(c.get(&url), Some(token)))
            .await?;
        let lookup: LookupResponse = serde_json::from_slice(&response.body)
            .map_err(|err| Failure::Unreachable(format!("{url}: unexpected answer: {err}")))?;
        Ok(lookup.data)
    }

    /// Obtains a token with the configured auth method.
    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    async fn login(&self, name: &str) -> Result<Token, SecretError> {
        let auth = &self.config.auth;
        if let Some(token) = &auth.token {
            let value = self.credential(name, "token", token)?;
            let url = format!("{}/v1/auth/token/lookup-self", self.session.address);
            let data = self
                .lookup_self(&value)
                .await
                .map_err(|f| login_failure(name, &url, f))?;
            let ttl = (data.ttl > 0).then(|| Duration::from_secs(data.ttl));
            return Ok(Token {
                value,
                obtained: Instant::now(),
                ttl,
                issued_ttl: ttl,
                renewable: data.renewable.unwrap_or(false),
            });
        }
        if let Some(approle) = &auth.approle {
            let role_id = self.credential(name, "approle.role_id", &approle.role_id)?;
            let mut secret_id = self.credential(name, "approle.secret_id", &approle.secret_id)?;
            if approle.wrapped {
                secret_id = self.unwrap_secret_id(name, &secret_id).await?;
            }
            let mount = approle.mount.as_deref().unwrap_or("approle");
            let body = json_body(
                name,
                &AppRoleLogin {
                    role_id: role_id.expose(),
                    secret_id: secret_id.expose(),
                },
            )?;
            return self.login_with(name, mount, &body).await;
        }
        for (method, jwt) in [("jwt", &auth.jwt), ("kubernetes", &auth.kubernetes)] {
            if let Some(jwt) = jwt {
                return self.jwt_login(name, method, jwt).await;
            }
        }
        if let Some(gcp) = &auth.gcp {
            return self.gcp_login(name, gcp).await;
        }
        if let Some(azure) = &auth.azure {
            return self.azure_login(name, azure).await;
        }
        if let Some(aws) = &auth.aws {
            return self.aws_login(name, aws).await;
        }
        Err(SecretError::AuthFailed {
            name: name.into(),
            backend: BACKEND,
            detail: "backends.vault.auth names no method".into(),
        })
    }

    async fn jwt_login(
        &self,
        name: &str,
        method: &'static str,
        spec: &VaultJwt,
    ) -> Result<Token, SecretError> {
        let default_ref = CredentialRef::Ref(crate::plan::secret_source::CredentialSource {
            file: Some(K8S_TOKEN.into()),
            env: None,
        });
        let jwt_ref = spec.jwt.as_ref().unwrap_or(&default_ref);
        let jwt = self.credential(name, method, jwt_ref)?;
        let mount = spec.mount.as_deref().unwrap_or(method);
        let body = json_body(
            name,
            &JwtLogin {
                role: &spec.role,
                jwt: jwt.expose(),
            },
        )?;
        self.login_with(name, mount, &body).await
    }

    /// `gcp` login: the instance's identity token for `vault/ROLE`, from
    /// the metadata server.
    async fn gcp_login(&self, name: &str, spec: &VaultGcp) -> Result<Token, SecretError> {
        let base = spec
            .metadata_url
            .as_deref()
            .unwrap_or(GCP_METADATA)
            .trim_end_matches('/');
        let account = spec.service_account.as_deref().unwrap_or("default");
        let audience = format!("vault/{}", spec.role);
        let url = with_query(
            name,
            &format!("{base}/computeMetadata/v1/instance/service-accounts/{account}/identity"),
            &[("audience", &audience), ("format", "full")],
        )?;
        let body = self
            .metadata_get(name, &url, ("Metadata-Flavor", "Google"))
            .await?;
        let jwt = self.identity_token(
            name,
            &url,
            String::from_utf8_lossy(&body).trim().to_string(),
        )?;
        let login = json_body(
            name,
            &JwtLogin {
                role: &spec.role,
                jwt: jwt.expose(),
            },
        )?;
        self.login_with(name, spec.mount.as_deref().unwrap_or("gcp"), &login)
            .await
    }

    /// `azure` login: a managed-identity access token, and the VM's
    /// subscription, resource group and name, from the instance metadata service.
    async fn azure_login(&self, name: &str, spec: &VaultAzure) -> Result<Token, SecretError> {
        let base = spec
            .metadata_url
            .as_deref()
            .unwrap_or(AZURE_IMDS)
            .trim_end_matches('/');
        let resource = spec.resource.as_deref().unwrap_or(AZURE_RESOURCE);
        let token_url = with_query(
            name,
            &format!("{base}/metadata/identity/oauth2/token"),
            &[("api-version", "2018-02-01"), ("resource", resource)],
        )?;
        let answer = self
            .metadata_get(name, &token_url, ("Metadata", "true"))
            .await?;
        let token: AzureToken = serde_json::from_slice(&answer)
            .map_err(|err| metadata_error(name, &token_url, format!("unexpected answer: {err}")))?;
        let jwt = self.identity_token(name, &token_url, token.access_token)?;
        let compute_url = format!("{base}/metadata/instance/compute?api-version=2021-02-01");
        let compute = self
            .metadata_get(name, &compute_url, ("Metadata", "true"))
            .await?;
        let compute: AzureCompute = serde_json::from_slice(&compute).map_err(|err| {
            metadata_error(name, &compute_url, format!("unexpected answer: {err}"))
        })?;
        let login = json_body(
            name,
            &AzureLogin {
                role: &spec.role,
                jwt: jwt.expose(),
                subscription_id: &compute.subscription_id,
                resource_group_name: &compute.resource_group_name,
                vm_name: (compute.vm_scale_set_name.is_empty()).then_some(compute.name.as_str()),
                vmss_name: (!compute.vm_scale_set_name.is_empty())
                    .then_some(compute.vm_scale_set_name.as_str()),
            },
        )?;
        self.login_with(name, spec.mount.as_deref().unwrap_or("azure"), &login)
            .await
    }

    /// `aws` login, `iam` type: a `sts:GetCallerIdentity` request signed
    /// with the machine's AWS credentials, which Vault sends to STS to
    /// learn who is asking.
    async fn aws_login(&self, name: &str, spec: &VaultAws) -> Result<Token, SecretError> {
        let Some(aws) = &self.aws else {
            return Err(metadata_error(name, "aws", "no AWS client".into()));
        };
        let url = spec.sts_url.as_deref().unwrap_or(GLOBAL_STS);
        let region = spec.sts_region.as_deref().unwrap_or("us-east-1");
        let extra: Vec<(&str, &str)> = spec
            .header_value
            .as_deref()
            .map(|v| ("x-vault-aws-iam-server-id", v))
            .into_iter()
            .collect();
        let headers = aws
            .signed_caller_identity(name, url, region, &extra)
            .await?;
        let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (header, value) in &headers {
            by_name
                .entry(header.as_str())
                .or_default()
                .push(value.as_str());
        }
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let headers_json = Zeroizing::new(serde_json::to_vec(&by_name).unwrap_or_default());
        let headers_b64 = Zeroizing::new(b64(&headers_json));
        let login = json_body(
            name,
            &AwsLogin {
                role: &spec.role,
                iam_http_request_method: "POST",
                iam_request_url: b64(url.as_bytes()),
                iam_request_body: b64(super::aws::CALLER_IDENTITY_BODY.as_bytes()),
                iam_request_headers: &headers_b64,
            },
        )?;
        self.login_with(name, spec.mount.as_deref().unwrap_or("aws"), &login)
            .await
    }

    /// One metadata request with its required header; the body.
    async fn metadata_get(
        &self,
        name: &str,
        url: &str,
        header: (&str, &str),
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let response = self
            .session
            .net
            .send(url, |c| c.get(url).header(header.0, header.1))
            .await
            .map_err(|failure| {
                let detail = match failure {
                    Failure::Status { status, message } => format!("HTTP {status}: {message}"),
                    Failure::Unreachable(detail) => detail,
                };
                metadata_error(name, url, detail)
            })?;
        Ok(response.body)
    }

    /// An identity token from a metadata service: a credential, masked from now on.
    fn identity_token(
        &self,
        name: &str,
        url: &str,
        token: String,
    ) -> Result<SecretValue, SecretError> {
        if token.is_empty() {
            return Err(metadata_error(
                name,
                url,
                "the identity token is empty".into(),
            ));
        }
        let token = SecretValue::new(token);
        self.session.redactor.add_secret(token.expose());
        Ok(token)
    }

    async fn login_with(
        &self,
        name: &str,
        mount: &str,
        body: &Zeroizing<Vec<u8>>,
    ) -> Result<Token, SecretError> {
        let url = format!(
            "{}/v1/auth/{}/login",
            self.session.address,
            mount.trim_matches('/')
        );
        let response = self
            .session
            .net
            .send(&url, |c| {
                self.session.json_request(c.post(&url), None, body.to_vec())
            })
            .await
            .map_err(|f| login_failure(name, &url, f))?;
        let auth: AuthResponse =
            serde_json::from_slice(&response.body).map_err(|err| SecretError::AuthFailed {
                name: name.into(),
                backend: BACKEND,
                detail: format!("{url}: the login answer has no token: {err}"),
            })?;
        Ok(self.session.token_from_auth(auth.auth))
    }

    /// Exchanges a response-wrapping token for the secret id it wraps.
    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    async fn unwrap_secret_id(
        &self,
        name: &str,
        wrapping: &SecretValue,
    ) -> Result<SecretValue, SecretError> {
        let url = format!("{}/v1/sys/wrapping/unwrap", self.session.address);
        let response = self
            .session
            .net
            .send(&url, |c| self.session.request(c.post(&url), Some(wrapping)))
            .await
            .map_err(|f| login_failure(name, &url, f))?;
        let unwrapped: UnwrapResponse =
            serde_json::from_slice(&response.body).map_err(|err| SecretError::AuthFailed {
                name: name.into(),
                backend: BACKEND,
                detail: format!("{url}: the unwrapped answer has no secret_id: {err}"),
            })?;
        let value = SecretValue::new(unwrapped.data.secret_id);
        self.session.redactor.add_secret(value.expose());
        Ok(value)
    }

    /// Reads a credential from its file or environment variable and registers it.
    fn credential(
        &self,
        name: &str,
        what: &str,
        r: &CredentialRef,
    ) -> Result<SecretValue, SecretError> {
        let value =
            read_credential(r, &self.base_dir).map_err(|detail| SecretError::AuthFailed {
                name: name.into(),
                backend: BACKEND,
                detail: format!("auth {what}: {detail}"),
            })?;
        self.session.redactor.add_secret(value.expose());
        Ok(value)
    }
}

impl Session {
    /// [`Session::request`] with a JSON body.
    fn json_request(
        &self,
        builder: reqwest::RequestBuilder,
        token: Option<&SecretValue>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.request(builder, token)
            .header("Content-Type", "application/json")
            .body(body)
    }

    fn request(
        &self,
        builder: reqwest::RequestBuilder,
        token: Option<&SecretValue>,
    ) -> reqwest::RequestBuilder {
        let mut builder = builder.header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            builder = builder.header("X-Vault-Namespace", ns);
        }
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(token.expose())
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("invalid"));
            value.set_sensitive(true);
            builder = builder.header("X-Vault-Token", value);
        }
        builder
    }

    #[tracing::instrument(skip_all, fields(backend = BACKEND))]
    async fn renew(&self, token: &SecretValue) -> Result<Token, String> {
        let url = format!("{}/v1/auth/token/renew-self", self.address);
        let response = self
            .net
            .send(&url, |c| self.json_request(c.post(&url), Some(token), "{}"))
            .await
            .map_err(|f| format!("{f:?}"))?;
        let auth: AuthResponse = serde_json::from_slice(&response.body)
            .map_err(|err| format!("{url}: unexpected answer: {err}"))?;
        let token = self.token_from_auth(auth.auth);
        tracing::debug!("vault token renewed");
        Ok(token)
    }

    fn token_from_auth(&self, auth: AuthData) -> Token {
        let value = SecretValue::new(auth.client_token);
        self.redactor.add_secret(value.expose());
        let ttl = (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration));
        Token {
            value,
            obtained: Instant::now(),
            ttl,
            issued_ttl: ttl,
            renewable: auth.renewable,
        }
    }
}

const GCP_METADATA: &str = "http://metadata.google.internal";
const GLOBAL_STS: &str = "https://sts.amazonaws.com/";

#[derive(Serialize)]
struct AwsLogin<'a> {
    role: &'a str,
    iam_http_request_method: &'a str,
    iam_request_url: String,
    iam_request_body: String,
    /// Holds the signature and the session token.
    iam_request_headers: &'a str,
}
const AZURE_IMDS: &str = "http://169.254.169.254";
const AZURE_RESOURCE: &str = "https://management.azure.com/";

/// `url` with `pairs` as its query, each value encoded.
fn with_query(name: &str, url: &str, pairs: &[(&str, &str)]) -> Result<String, SecretError> {
    let mut parsed = reqwest::Url::parse(url)
        .map_err(|err| metadata_error(name, url, format!("not a URL: {err}")))?;
    parsed.query_pairs_mut().extend_pairs(pairs);
    Ok(parsed.into())
}

fn metadata_error(name: &str, url: &str, detail: String) -> SecretError {
    SecretError::AuthFailed {
        name: name.into(),
        backend: BACKEND,
        detail: format!("no identity from the metadata service {url}: {detail}"),
    }
}

#[derive(Deserialize)]
struct AzureToken {
    access_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureCompute {
    subscription_id: String,
    resource_group_name: String,
    name: String,
    #[serde(default)]
    vm_scale_set_name: String,
}

#[derive(Serialize)]
struct AzureLogin<'a> {
    role: &'a str,
    jwt: &'a str,
    subscription_id: &'a str,
    resource_group_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmss_name: Option<&'a str>,
}

/// The names a certificate is issued for, rendered from the plan.
pub struct PkiNames {
    pub common_name: String,
    pub alt_names: Vec<String>,
    pub ip_sans: Vec<String>,
}

/// A certificate just issued.
pub struct Issued {
    pub certificate: String,
    pub private_key: SecretValue,
    /// The issuing CA chain, PEM.
    pub chain: String,
    pub expires: std::time::SystemTime,
}

#[derive(Serialize)]
struct IssueRequest<'a> {
    common_name: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    alt_names: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    ip_sans: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

#[derive(Deserialize)]
struct IssueResponse {
    data: IssueData,
}

#[derive(Deserialize)]
struct IssueData {
    certificate: String,
    #[serde(default)]
    issuing_ca: String,
    #[serde(default)]
    ca_chain: Vec<String>,
    private_key: String,
    expiration: u64,
}

/// Reads a credential reference: a file (trimmed) or an environment variable.
/// Literals are rejected by validation; one that got here is used as given
/// (only identifiers such as an AppRole role id are allowed to be literal).
pub fn read_credential(r: &CredentialRef, base_dir: &Path) -> Result<SecretValue, String> {
    match r {
        CredentialRef::Literal(text) => Ok(SecretValue::new(text.clone())),
        CredentialRef::Ref(source) => {
            if let Some(file) = &source.file {
                let path = base_dir.join(file);
                let text = Zeroizing::new(
                    std::fs::read_to_string(&path)
                        .map_err(|err| format!("cannot read {}: {err}", path.display()))?,
                );
                Ok(SecretValue::new(text.trim().to_string()))
            } else if let Some(var) = &source.env {
                let value = std::env::var(var)
                    .map_err(|_| format!("environment variable {var} is not set"))?;
                Ok(SecretValue::new(value.trim().to_string()))
            } else {
                Err("names neither `file` nor `env`".into())
            }
        }
    }
}

/// The HTTP API path of a KV read, after `/v1/`.
fn kv_api_path(spec: &VaultSecret) -> String {
    let path = spec.path.trim_matches('/');
    let kv2 = spec.kv.unwrap_or(2) == 2;
    let full = match &spec.mount {
        Some(mount) if kv2 => format!("{}/data/{path}", mount.trim_matches('/')),
        Some(mount) => format!("{}/{path}", mount.trim_matches('/')),
        // Already in API form (`secret/data/web/db`), or KV v1.
        None if !kv2 || path.contains("/data/") => path.to_string(),
        // `secret/web/db`: the first segment is the mount.
        None => match path.split_once('/') {
            Some((mount, rest)) => format!("{mount}/data/{rest}"),
            None => path.to_string(),
        },
    };
    match spec.version {
        Some(version) if kv2 => format!("{full}?version={version}"),
        _ => full,
    }
}

/// The secret's data object, as JSON text (kept in a zeroized buffer),
/// with the KV v2 version and the lease the answer came with.
fn kv_data(response: &Response, kv: u8) -> Result<PathRead, String> {
    let outer: DataEnvelope<'_> = serde_json::from_slice(&response.body)
        .map_err(|err| format!("unexpected answer (HTTP {}): {err}", response.status))?;
    let lease = (outer.lease_duration > 0).then(|| Lease {
        id: outer.lease_id.clone(),
        duration: Duration::from_secs(outer.lease_duration),
        renewable: outer.renewable && !outer.lease_id.is_empty(),
        obtained: Instant::now(),
    });
    let data = outer.data.ok_or("the answer has no data")?;
    if kv == 1 {
        return Ok(PathRead {
            data: Zeroizing::new(data.get().to_string()),
            version: None,
            lease,
        });
    }
    let inner: DataEnvelope<'_> =
        serde_json::from_str(data.get()).map_err(|err| format!("not a KV v2 answer: {err}"))?;
    let version = inner.metadata.map(|m| Version {
        number: m.version,
        created: m.created_time,
    });
    match inner.data {
        Some(data) if data.get() != "null" => Ok(PathRead {
            data: Zeroizing::new(data.get().to_string()),
            version,
            lease,
        }),
        _ => Err("this version has no data (deleted or destroyed)".into()),
    }
}

/// The metadata path of a KV v2 data path (`secret/data/a` → `secret/metadata/a`).
fn metadata_api_path(api_path: &str) -> Option<String> {
    let (mount, rest) = api_path.split_once("/data/")?;
    Some(format!("{mount}/metadata/{rest}"))
}

fn json_body(name: &str, value: &impl Serialize) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    serde_json::to_vec(value)
        .map(Zeroizing::new)
        .map_err(|err| SecretError::AuthFailed {
            name: name.into(),
            backend: BACKEND,
            detail: format!("cannot encode the login request: {err}"),
        })
}

fn err_denied(name: &str, detail: String) -> SecretError {
    SecretError::Denied {
        name: name.into(),
        backend: BACKEND,
        detail,
    }
}

fn read_failure(name: &str, url: &str, failure: Failure) -> SecretError {
    let backend = BACKEND;
    let name = name.to_string();
    match failure {
        Failure::Unreachable(detail) => SecretError::Unreachable {
            name,
            backend,
            detail,
        },
        Failure::Status {
            status: 401,
            message,
        } => SecretError::AuthFailed {
            name,
            backend,
            detail: format!("{url}: HTTP 401: {message}"),
        },
        Failure::Status {
            status: 403,
            message,
        } => SecretError::Denied {
            name,
            backend,
            detail: format!("{url}: HTTP 403: {message}"),
        },
        Failure::Status { status, message } => SecretError::NotFound {
            name,
            backend,
            detail: format!("{url}: HTTP {status}: {message}"),
        },
    }
}

fn login_failure(name: &str, url: &str, failure: Failure) -> SecretError {
    match failure {
        Failure::Unreachable(detail) => SecretError::Unreachable {
            name: name.into(),
            backend: BACKEND,
            detail,
        },
        Failure::Status { status, message } => SecretError::AuthFailed {
            name: name.into(),
            backend: BACKEND,
            detail: format!("{url}: HTTP {status}: {message}"),
        },
    }
}

#[derive(Deserialize)]
struct DataEnvelope<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    /// KV v2's inner envelope: the version read.
    #[serde(default)]
    metadata: Option<VersionMetadata>,
}

#[derive(Deserialize)]
struct VersionMetadata {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    created_time: String,
}

#[derive(Deserialize)]
struct MetadataResponse {
    data: MetadataData,
}

#[derive(Deserialize)]
struct MetadataData {
    current_version: u64,
    #[serde(default)]
    versions: std::collections::HashMap<String, VersionCreated>,
}

#[derive(Deserialize)]
struct VersionCreated {
    #[serde(default)]
    created_time: String,
}

#[derive(Deserialize)]
struct LeaseResponse {
    #[serde(default)]
    lease_duration: u64,
}

#[derive(Deserialize)]
struct AuthResponse {
    auth: AuthData,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupResponse {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: Option<bool>,
}

#[derive(Deserialize)]
struct UnwrapResponse {
    data: UnwrapData,
}

#[derive(Deserialize)]
struct UnwrapData {
    secret_id: String,
}

#[derive(Serialize)]
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Serialize)]
struct JwtLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, mount: Option<&str>, kv: Option<u8>, version: Option<u64>) -> VaultSecret {
        VaultSecret {
            path: path.into(),
            mount: mount.map(str::to_string),
            key: None,
            version,
            kv,
        }
    }

    #[test]
    fn metadata_paths() {
        assert_eq!(
            metadata_api_path("secret/data/web/db").as_deref(),
            Some("secret/metadata/web/db")
        );
        assert_eq!(
            metadata_api_path("kv/team/data/a/data/b").as_deref(),
            Some("kv/team/metadata/a/data/b")
        );
        assert_eq!(metadata_api_path("kv1/web"), None);
    }

    #[test]
    fn kv_paths() {
        assert_eq!(
            kv_api_path(&spec("secret/web/db", None, None, None)),
            "secret/data/web/db"
        );
        assert_eq!(
            kv_api_path(&spec("secret/data/web/db", None, None, Some(2))),
            "secret/data/web/db?version=2"
        );
        assert_eq!(
            kv_api_path(&spec("web/db", Some("kv/team"), None, None)),
            "kv/team/data/web/db"
        );
        assert_eq!(
            kv_api_path(&spec("kv1/web", None, Some(1), None)),
            "kv1/web"
        );
        assert_eq!(
            kv_api_path(&spec("web", Some("kv1"), Some(1), None)),
            "kv1/web"
        );
    }
}
