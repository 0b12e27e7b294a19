//! Secrets: the in-memory secret type, the redactor, and the backends.
//!
//! A secret value lives in a [`SecretValue`] (zeroized on drop, never shown
//! by Debug or Display). Every fetched value is registered with the
//! [`Redactor`] before anything can print it. Backends sit behind
//! [`SecretBackend`]; to add one, add its raw type in
//! `plan/secret_source.rs` (and its checks in `plan/secret_checks.rs`), a
//! module here, and an arm in [`SecretStore::fetch_one`].
//!
//! Network backends (`vault`, `aws/`) share `http.rs`: per-attempt timeouts,
//! retries with full jitter only on connection errors, 5xx and 429, never
//! past the run's deadline. Credentials they read (Vault tokens, AWS keys)
//! are secrets too: registered with the redactor as soon as they are read.
//! Every fetch is timed into `bootplan_secret_fetch_duration_seconds{backend}`
//! and every failure counted in `bootplan_secret_fetch_errors_total{backend,code}`.

pub mod aws;
pub mod exec;
pub mod files;
pub mod http;
pub mod local;

pub mod vault;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OnceCell;

pub use crate::redact::Redactor;

use crate::error::ErrorCode;
use crate::plan::secret_source::AwsSsmSecret;
use crate::plan::{BackendsConfig, SecretSource};

/// A secret's bytes, wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(zeroize::Zeroizing::new(value))
    }

    /// The value itself. Callers must not log it; outputs pass the redactor.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

/// Why a secret could not be had. Messages never contain the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: {backend} backend not reachable: {detail}")]
    Unreachable {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: {backend} backend rejected the credentials: {detail}")]
    AuthFailed {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: {backend} backend denied access: {detail}")]
    Denied {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: not found in the {backend} backend: {detail}")]
    NotFound {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: cannot write its file {}: {detail}", path.display())]
    FileWrite {
        name: String,
        path: PathBuf,
        detail: String,
    },
}

impl SecretError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SecretError::Unreachable { .. } => ErrorCode::SecretUnreachable,
            SecretError::AuthFailed { .. } => ErrorCode::SecretAuthFailed,
            SecretError::Denied { .. } => ErrorCode::SecretDenied,
            SecretError::NotFound { .. } => ErrorCode::SecretNotFound,
            SecretError::FileWrite { .. } => ErrorCode::FileWriteFailed,
        }
    }
}

/// Fetches each declared secret at most once per run, on first use, and
/// registers every value with the redactor before handing it out.
pub struct SecretStore {
    sources: BTreeMap<String, SecretSource>,
    /// Relative secret file paths are resolved against this (the plan's directory).
    base_dir: std::path::PathBuf,
    /// One cell per secret: a fetch in progress for one secret never holds
    /// up steps that need other secrets (or none).
    cells: std::sync::Mutex<BTreeMap<String, Arc<OnceCell<SecretValue>>>>,
    redactor: Arc<Redactor>,
    backends: BackendsConfig,
    /// Where `to_file` secrets are written.
    files_dir: PathBuf,
    /// The run's deadline: network retries stop before it.
    deadline: Option<tokio::time::Instant>,
    /// The region from the detected facts, for AWS.
    region_hint: Option<String>,
    vault: OnceCell<Result<vault::VaultClient, String>>,
    aws: OnceCell<Result<aws::AwsClient, String>>,
    /// Where warnings go (a value too short to mask, retries).
    reporter: Option<Arc<crate::telemetry::Reporter>>,
    /// Requests in flight per backend.
    limits: std::sync::Mutex<BTreeMap<&'static str, Arc<tokio::sync::Semaphore>>>,
    /// What `vault_pki` names are rendered with (facts and vars).
    scope: Option<crate::plan::refs::TemplateScope>,
    /// The public parts of each `vault_pki` secret's latest certificate.
    certificates: std::sync::Mutex<BTreeMap<String, Certificate>>,
    /// The leases of `refresh: lease` secrets, by secret.
    leases: std::sync::Mutex<Leases>,
    /// The Secrets Manager version id each secret was last read at.
    sm_versions: std::sync::Mutex<BTreeMap<String, String>>,
    /// `DescribeSecret` was denied: refreshes read the value (said once).
    describe_denied: std::sync::atomic::AtomicBool,
}

/// The leases bootplan holds for `refresh: lease` secrets.
#[derive(Default)]
struct Leases {
    by_secret: BTreeMap<String, HeldLease>,
    /// Leases replaced by a fresh read (not renewed any more), by id.
    superseded: std::collections::BTreeSet<String>,
    /// Every lease id obtained, with its end, for revocation on shutdown.
    ends: BTreeMap<String, tokio::time::Instant>,
}

/// One secret's lease and when it is next looked at.
#[derive(Clone)]
struct HeldLease {
    lease: vault::Lease,
    expires: tokio::time::Instant,
    due: tokio::time::Instant,
    /// The last renewal gave less than asked: the max TTL caps the lease,
    /// so at `due` it is replaced, not renewed.
    capped: bool,
}

impl HeldLease {
    fn new(lease: vault::Lease) -> HeldLease {
        let expires = lease.obtained + lease.duration;
        let due = lease.obtained + lease_wait(&lease.id, lease.duration);
        HeldLease {
            lease,
            expires,
            due,
            capped: false,
        }
    }
}

/// When a lease of `duration` is next renewed or replaced: at two thirds
/// of it, a tenth of it either way drawn from the lease id, so secrets
/// sharing a lease are due together and a fleet does not renew in step.
fn lease_wait(id: &str, duration: std::time::Duration) -> std::time::Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    let fraction = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0;
    duration.mul_f64(2.0 / 3.0 + fraction / 10.0)
}

/// The gauge of a secret's end (a lease's, a certificate's), in Unix seconds.
fn expiry_gauge(name: &str, expires: tokio::time::Instant) {
    let left = expires.saturating_duration_since(tokio::time::Instant::now());
    let at = (std::time::SystemTime::now() + left)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(crate::telemetry::metrics::SECRET_EXPIRY, "secret" => name.to_string()).set(at);
}

/// A certificate that goes with a `vault_pki` secret's private key.
struct Certificate {
    pem: String,
    chain: String,
    expires: std::time::SystemTime,
}

/// Requests a network backend has in flight at once unless the plan says.
const DEFAULT_CONCURRENCY: u32 = 8;

impl SecretStore {
    pub fn new(
        sources: impl IntoIterator<Item = (String, SecretSource)>,
        base_dir: std::path::PathBuf,
        redactor: Arc<Redactor>,
    ) -> SecretStore {
        SecretStore {
            sources: sources.into_iter().collect(),
            files_dir: base_dir.join("secrets"),
            base_dir,
            cells: std::sync::Mutex::new(BTreeMap::new()),
            redactor,
            backends: BackendsConfig::default(),
            deadline: None,
            region_hint: None,
            vault: OnceCell::new(),
            aws: OnceCell::new(),
            reporter: None,
            limits: std::sync::Mutex::new(BTreeMap::new()),
            scope: None,
            certificates: std::sync::Mutex::new(BTreeMap::new()),
            leases: std::sync::Mutex::new(Leases::default()),
            sm_versions: std::sync::Mutex::new(BTreeMap::new()),
            describe_denied: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// What `vault_pki` names (`common_name: "{{ facts.hostname }}.svc"`) are rendered with.
    pub fn with_scope(mut self, scope: crate::plan::refs::TemplateScope) -> SecretStore {
        self.scope = Some(scope);
        self
    }

    /// Where the store's warnings go.
    pub fn with_reporter(mut self, reporter: Arc<crate::telemetry::Reporter>) -> SecretStore {
        self.reporter = Some(reporter);
        self
    }

    fn warn(&self, message: String) {
        if let Some(reporter) = &self.reporter {
            reporter.notice(crate::telemetry::Level::Warn, message);
        }
    }

    /// The plan's backend settings (Vault address and auth, AWS region, ...).
    pub fn with_backends(mut self, backends: BackendsConfig) -> SecretStore {
        self.backends = backends;
        self
    }

    /// Where secrets with `to_file` are written.
    pub fn with_files_dir(mut self, dir: PathBuf) -> SecretStore {
        self.files_dir = dir;
        self
    }

    /// The run's deadline; no network attempt starts that could not end before it.
    pub fn with_deadline(mut self, deadline: Instant) -> SecretStore {
        self.deadline = Some(tokio::time::Instant::from_std(deadline));
        self
    }

    /// A region detected from the machine's facts, used when none is configured.
    pub fn with_region_hint(mut self, region: Option<String>) -> SecretStore {
        self.region_hint = region;
        self
    }

    /// Removes the `to_file` secret files of this plan (when the app that
    /// read them has stopped). Returns how many there were.
    pub fn remove_files(&self) -> Result<usize, crate::fsutil::FsError> {
        files::remove(&self.file_paths())
    }

    /// Where the declared secret files will be written.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.sources
            .values()
            .flat_map(SecretSource::files)
            .map(|spec| files::path_for(&self.files_dir, &spec))
            .collect()
    }

    /// The values of `names`, fetching those not fetched yet. SSM parameters
    /// needed together are fetched in one `GetParameters` call.
    pub async fn resolve(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, SecretValue>, SecretError> {
        self.prefetch_ssm(names).await?;
        // All of them at once (each backend bounds its own requests in
        // flight); the first failure ends the wait for the others.
        let values = futures_util::future::try_join_all(names.iter().map(|name| async move {
            // Concurrent steps asking for the same secret wait for one fetch;
            // a failed fetch leaves the cell empty, so a later step tries again.
            let cell = self.cell(name);
            let value = cell
                .get_or_try_init(|| async {
                    let value = self.fetch_measured(name).await?;
                    self.store(name, &value)?;
                    Ok::<_, SecretError>(value)
                })
                .await?;
            Ok::<_, SecretError>((name.clone(), value.clone()))
        }))
        .await?;
        Ok(values.into_iter().collect())
    }

    /// The permit to send one more request to `backend`: at most its
    /// `concurrency` (default 8) are in flight at once.
    async fn in_flight(&self, backend: &'static str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let limit = match backend {
            "vault" => self.backends.vault.as_ref().and_then(|v| v.concurrency),
            "aws_secretsmanager" | "aws_ssm" => {
                self.backends.aws.as_ref().and_then(|a| a.concurrency)
            }
            "exec" => Some(DEFAULT_CONCURRENCY),
            // Local reads need no bound.
            _ => return None,
        };
        let semaphore = self
            .limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(backend)
            .or_insert_with(|| {
                let permits = limit.unwrap_or(DEFAULT_CONCURRENCY).max(1) as usize;
                Arc::new(tokio::sync::Semaphore::new(permits))
            })
            .clone();
        semaphore.acquire_owned().await.ok()
    }

    /// Fetches `name` again, past the run's cache. `Ok(true)` when the value
    /// changed: the new one is registered with the redactor (which keeps
    /// masking the old), written to its file, and what later resolves give.
    pub async fn refresh(&self, name: &str) -> Result<bool, SecretError> {
        let source = self.sources.get(name);
        match source.and_then(|s| s.refresh) {
            Some(crate::plan::secret_source::Refresh::Lease) => {
                match self.lease_needs_read(name).await {
                    Ok(false) => return Ok(false),
                    Ok(true) => {}
                    Err(err) => {
                        self.retry_lease_later(name);
                        return Err(err);
                    }
                }
                let result = self.read_again(name).await;
                if result.is_err() {
                    self.retry_lease_later(name);
                }
                return result;
            }
            Some(crate::plan::secret_source::Refresh::Every(_)) => {
                // KV v2: the version tells whether the data is worth a read.
                if let Some(spec) = source.and_then(|s| s.vault.as_ref())
                    && self.cell(name).initialized()
                    && self.vault_client(name).await?.unchanged(name, spec).await?
                {
                    return Ok(false);
                }
                // Secrets Manager: the version id the stage points at.
                if let Some(spec) = source.and_then(|s| s.aws_secretsmanager.as_ref())
                    && self.cell(name).initialized()
                    && self.sm_unchanged(name, spec).await?
                {
                    return Ok(false);
                }
            }
            None => {}
        }
        self.read_again(name).await
    }

    /// Whether a Secrets Manager secret's stage still points at the
    /// version last read (`DescribeSecret`). `false` when that cannot be
    /// told; a denied `DescribeSecret` is said once, and the value read
    /// from then on.
    async fn sm_unchanged(
        &self,
        name: &str,
        spec: &crate::plan::secret_source::AwsSecretsManagerSecret,
    ) -> Result<bool, SecretError> {
        use std::sync::atomic::Ordering;
        let read = self
            .sm_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let Some(read) = read else { return Ok(false) };
        if self.describe_denied.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let client = self.aws_client(name, "aws_secretsmanager").await?;
        match aws::secretsmanager::current_version(client, name, spec).await {
            Ok(current) => Ok(current.as_deref() == Some(read.as_str())),
            Err(SecretError::Denied { detail, .. }) => {
                if !self.describe_denied.swap(true, Ordering::Relaxed) {
                    self.warn(format!(
                        "Secrets Manager denied DescribeSecret ({detail}): refreshed secrets are read in full every time (allow secretsmanager:DescribeSecret to read them only when their version changed)"
                    ));
                }
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Whether a `refresh: lease` secret must be read again now: its
    /// lease cannot be renewed, the renewal was refused, or it is near its
    /// max TTL. A lease renewed here is good until its next due time.
    async fn lease_needs_read(&self, name: &str) -> Result<bool, SecretError> {
        let now = tokio::time::Instant::now();
        let held = {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let Some(held) = leases.by_secret.get(name).cloned() else {
                return Ok(true);
            };
            if leases.superseded.contains(&held.lease.id) {
                return Ok(true);
            }
            held
        };
        // Renewed already in this cycle for a secret sharing the lease.
        if held.due > now {
            return Ok(false);
        }
        if !held.lease.renewable || held.expires <= now {
            return Ok(true);
        }
        let near_max = || {
            self.note(
                crate::telemetry::Level::Info,
                format!("the lease of secret `{name}` is near its max TTL: reading it again"),
            );
            Ok(true)
        };
        if held.capped {
            return near_max();
        }
        let client = self.vault_client(name).await?;
        match client.renew_lease(name, &held.lease).await? {
            vault::Renewal::Renewed(ttl) if ttl >= held.lease.duration / 3 => {
                // Less than asked for: the max TTL is reached at its end.
                let capped = ttl < held.lease.duration;
                let expires = now + ttl;
                let due = now + lease_wait(&held.lease.id, ttl);
                let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                leases.ends.insert(held.lease.id.clone(), expires);
                let sharing: Vec<String> = leases
                    .by_secret
                    .iter()
                    .filter(|(_, h)| h.lease.id == held.lease.id)
                    .map(|(n, _)| n.clone())
                    .collect();
                for secret in sharing {
                    if let Some(h) = leases.by_secret.get_mut(&secret) {
                        h.expires = expires;
                        h.due = due;
                        h.capped = capped;
                    }
                    expiry_gauge(&secret, expires);
                }
                tracing::debug!(secret = name, "lease renewed");
                Ok(false)
            }
            vault::Renewal::Renewed(_) => near_max(),
            vault::Renewal::Refused(why) => {
                self.note(
                    crate::telemetry::Level::Info,
                    format!(
                        "the lease of secret `{name}` was not renewed ({why}): reading it again"
                    ),
                );
                Ok(true)
            }
        }
    }

    /// After a failed renewal or read, the lease is looked at again a
    /// tenth of its duration later (at least 1 s).
    fn retry_lease_later(&self, name: &str) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = leases.by_secret.get_mut(name) {
            held.due = tokio::time::Instant::now()
                + (held.lease.duration / 10).max(std::time::Duration::from_secs(1));
        }
    }

    /// Records the lease a `refresh: lease` secret's value came with; a
    /// new lease supersedes the one held before.
    fn note_lease(&self, name: &str, lease: Option<vault::Lease>) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lease) = lease else {
            leases.by_secret.remove(name);
            drop(leases);
            self.warn(format!(
                "secret `{name}` has `refresh: lease` but its value came without a lease: it is not refreshed"
            ));
            return;
        };
        if let Some(old) = leases.by_secret.get(name) {
            if old.lease.id == lease.id && !lease.id.is_empty() {
                return;
            }
            let old = old.lease.id.clone();
            leases.superseded.insert(old);
        }
        let held = HeldLease::new(lease);
        expiry_gauge(name, held.expires);
        if !held.lease.id.is_empty() {
            leases.ends.insert(held.lease.id.clone(), held.expires);
        }
        leases.by_secret.insert(name.to_string(), held);
    }

    /// When a `refresh: lease` secret is next looked at.
    pub fn refresh_at(&self, name: &str) -> Option<tokio::time::Instant> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.by_secret.get(name).map(|h| h.due)
    }

    fn note(&self, level: crate::telemetry::Level, message: String) {
        if let Some(reporter) = &self.reporter {
            reporter.notice(level, message);
        }
    }

    /// Reads `name` from its store again; see [`Self::refresh`].
    async fn read_again(&self, name: &str) -> Result<bool, SecretError> {
        let fresh = self.fetch_measured(name).await?;
        let old = self.cell(name).get().cloned();
        if old.is_some_and(|old| old.expose() == fresh.expose()) {
            return Ok(false);
        }
        self.store(name, &fresh)?;
        let cell = Arc::new(OnceCell::new_with(Some(fresh)));
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), cell);
        Ok(true)
    }

    /// Forgets the reads shared within the run (a Vault KV path read once
    /// for all its keys), so a refresh sees the store's current values.
    pub fn forget_shared_reads(&self) {
        if let Some(Ok(client)) = self.vault.get() {
            client.forget_reads();
        }
    }

    /// Whether the store must stay open after the app is ready: some
    /// secret is refreshed while bootplan supervises.
    pub fn refreshes(&self) -> bool {
        self.sources
            .values()
            .any(|s| s.refresh.is_some() || s.vault_pki.is_some())
    }

    /// The secrets that are refreshed, with their intervals: `refresh:`,
    /// else for a certificate two thirds of its lifetime.
    pub fn refresh_intervals(&self) -> Vec<(String, std::time::Duration)> {
        self.sources
            .keys()
            .filter_map(|name| Some((name.clone(), self.refresh_interval(name)?)))
            .collect()
    }

    /// How long until `name` is fetched again (see [`Self::refresh_intervals`]).
    pub fn refresh_interval(&self, name: &str) -> Option<std::time::Duration> {
        let source = self.sources.get(name)?;
        match source.refresh {
            Some(crate::plan::secret_source::Refresh::Every(every)) => return Some(every.get()),
            Some(crate::plan::secret_source::Refresh::Lease) => {
                let due = self.refresh_at(name)?;
                return Some(due.saturating_duration_since(tokio::time::Instant::now()));
            }
            None => {}
        }
        source.vault_pki.as_ref()?;
        let certificates = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let lifetime = match certificates.get(name) {
            Some(cert) => cert
                .expires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
            None => source.vault_pki.as_ref()?.ttl?.get(),
        };
        Some(
            lifetime
                .mul_f64(2.0 / 3.0)
                .max(std::time::Duration::from_secs(1)),
        )
    }

    fn cell(&self, name: &str) -> Arc<OnceCell<SecretValue>> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(name.to_string()).or_default().clone()
    }

    /// Ends the store's sessions: when the plan asks (`revoke_on_exit`),
    /// revokes the leases held for `refresh: lease` secrets that have not
    /// ended yet, then the Vault token. Returns a message for the log when
    /// that failed.
    pub async fn close(&self) -> Option<String> {
        let Some(Ok(client)) = self.vault.get() else {
            return None;
        };
        let revoke = self
            .backends
            .vault
            .as_ref()
            .is_some_and(|v| v.revoke_on_exit);
        let held: Vec<String> = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let ends = std::mem::take(&mut leases.ends);
            leases.by_secret.clear();
            ends.into_iter()
                .filter(|(_, end)| *end > now)
                .map(|(id, _)| id)
                .collect()
        };
        let mut problems = Vec::new();
        if revoke && !held.is_empty() {
            let failed = client.revoke_leases(&held).await;
            if !failed.is_empty() {
                problems.push(format!(
                    "could not revoke {} lease(s): {}",
                    failed.len(),
                    failed.join("; ")
                ));
            }
        }
        if let Err(err) = client.close().await {
            problems.push(format!("could not revoke the Vault token: {err}"));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Registers a fresh value with the redactor and writes its file, if any.
    fn store(&self, name: &str, value: &SecretValue) -> Result<(), SecretError> {
        if self.redactor.add_secret(value.expose()) == crate::redact::Registered::TooShort {
            self.warn(format!(
                "secret `{name}` is shorter than {} characters: it cannot be masked and will show wherever it is printed",
                crate::redact::MIN_SECRET_LEN
            ));
        }
        let Some(source) = self.sources.get(name) else {
            return Ok(());
        };
        if let Some(spec) = &source.to_file {
            files::write(name, &self.files_dir, spec, value)?;
        }
        if let Some(pki) = &source.vault_pki {
            self.write_certificate(name, pki, value)?;
        }
        Ok(())
    }

    /// Writes a `vault_pki` secret's key, certificate and chain: the key
    /// first, so that a reader never finds a certificate newer than its key.
    fn write_certificate(
        &self,
        name: &str,
        pki: &crate::plan::secret_source::VaultPkiSecret,
        key: &SecretValue,
    ) -> Result<(), SecretError> {
        let certificates = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cert) = certificates.get(name) else {
            return Ok(());
        };
        let file = |path: &str, mode: Option<u32>| crate::plan::secret_source::SecretFile {
            path: path.to_string(),
            mode: mode.map(crate::plan::duration::Mode),
        };
        files::write(name, &self.files_dir, &file(&pki.key_file, None), key)?;
        let mut pem = cert.pem.clone();
        pem.push('\n');
        files::write_bytes(
            name,
            &self.files_dir,
            &file(&pki.cert_file, Some(0o644)),
            pem.as_bytes(),
        )?;
        if let Some(chain) = &pki.chain_file {
            let mut text = cert.chain.clone();
            text.push('\n');
            files::write_bytes(
                name,
                &self.files_dir,
                &file(chain, Some(0o644)),
                text.as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Issues a `vault_pki` certificate: the private key is the secret's
    /// value; the certificate is kept for [`Self::write_certificate`].
    async fn issue(
        &self,
        name: &str,
        spec: &crate::plan::secret_source::VaultPkiSecret,
    ) -> Result<SecretValue, SecretError> {
        let render = |text: &str| -> Result<String, SecretError> {
            let context = match &self.scope {
                Some(scope) => scope.context(minijinja::Value::from(())),
                None => minijinja::Value::from(()),
            };
            crate::template::render_text(text, context).map_err(|err| SecretError::NotFound {
                name: name.into(),
                backend: "vault_pki",
                detail: format!("cannot render `{text}`: {err}"),
            })
        };
        let names = vault::PkiNames {
            common_name: render(&spec.common_name)?,
            alt_names: spec
                .alt_names
                .iter()
                .map(|n| render(n))
                .collect::<Result<_, _>>()?,
            ip_sans: spec
                .ip_sans
                .iter()
                .map(|n| render(n))
                .collect::<Result<_, _>>()?,
        };
        let issued = self
            .vault_client(name)
            .await?
            .issue(name, spec, &names)
            .await?;
        let expires = issued
            .expires
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(crate::telemetry::metrics::SECRET_EXPIRY, "secret" => name.to_string())
            .set(expires);
        self.certificates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.to_string(),
                Certificate {
                    pem: issued.certificate,
                    chain: issued.chain,
                    expires: issued.expires,
                },
            );
        Ok(issued.private_key)
    }

    /// Fetches the not-yet-fetched SSM parameters among `names` in batches.
    /// A parameter another step fetches at the same moment may be fetched
    /// twice; the first value stored wins (they are the same parameter).
    async fn prefetch_ssm(&self, names: &[String]) -> Result<(), SecretError> {
        let wanted: Vec<(&str, &AwsSsmSecret)> = names
            .iter()
            .filter(|n| !self.cell(n).initialized())
            .filter_map(|n| {
                let spec = self.sources.get(n)?.aws_ssm.as_ref()?;
                Some((n.as_str(), spec))
            })
            .collect();
        if wanted.len() < 2 {
            return Ok(());
        }
        for chunk in wanted.chunks(aws::ssm::BATCH) {
            let started = Instant::now();
            let result = match self.aws_client(chunk[0].0, "aws_ssm").await {
                Ok(client) => aws::ssm::fetch_many(client, chunk).await,
                Err(err) => Err(err),
            };
            record("aws_ssm", started, result.as_ref().err());
            for ((name, _), value) in chunk.iter().zip(result?) {
                let cell = self.cell(name);
                if !cell.initialized() {
                    self.store(name, &value)?;
                    let _ = cell.set(value);
                }
            }
        }
        Ok(())
    }

    async fn fetch_measured(&self, name: &str) -> Result<SecretValue, SecretError> {
        let backend = self
            .sources
            .get(name)
            .and_then(|s| s.backend_names().first().copied())
            .unwrap_or("plan");
        let _permit = self.in_flight(backend).await;
        let started = Instant::now();
        let result = self.fetch_one(name).await;
        record(backend, started, result.as_ref().err());
        result
    }

    async fn fetch_one(&self, name: &str) -> Result<SecretValue, SecretError> {
        let Some(source) = self.sources.get(name) else {
            return Err(SecretError::NotFound {
                name: name.to_string(),
                backend: "plan",
                detail: "not declared under `secrets:`".into(),
            });
        };
        if let Some(file) = &source.file {
            return local::fetch_file(name, file, &self.base_dir);
        }
        if let Some(env) = &source.env {
            return local::fetch_env(name, env);
        }
        if let Some(spec) = &source.vault {
            let (value, lease) = self.vault_client(name).await?.read(name, spec).await?;
            if source.refresh == Some(crate::plan::secret_source::Refresh::Lease) {
                self.note_lease(name, lease);
            } else if let Some(lease) = lease {
                expiry_gauge(name, lease.obtained + lease.duration);
            }
            return Ok(value);
        }
        if let Some(spec) = &source.aws_secretsmanager {
            let client = self.aws_client(name, "aws_secretsmanager").await?;
            let (value, version) = aws::secretsmanager::fetch(client, name, spec).await?;
            let mut versions = self.sm_versions.lock().unwrap_or_else(|p| p.into_inner());
            match version {
                Some(version) => versions.insert(name.to_string(), version),
                None => versions.remove(name),
            };
            return Ok(value);
        }
        if let Some(spec) = &source.aws_ssm {
            let client = self.aws_client(name, "aws_ssm").await?;
            return aws::ssm::fetch(client, name, spec).await;
        }
        if let Some(spec) = &source.exec {
            return exec::fetch(name, spec, &self.base_dir).await;
        }
        if let Some(spec) = &source.vault_pki {
            return self.issue(name, spec).await;
        }
        Err(SecretError::NotFound {
            name: name.to_string(),
            backend: "plan",
            detail: "no backend configured".into(),
        })
    }

    async fn vault_client(&self, name: &str) -> Result<&vault::VaultClient, SecretError> {
        let client = self
            .vault
            .get_or_init(|| async {
                let config = self
                    .backends
                    .vault
                    .as_ref()
                    .ok_or("backends.vault is not configured")?;
                let warning = crate::http::credential_transport(
                    &vault::address(config)?,
                    config.insecure_http,
                    "the Vault token and login credentials",
                )?;
                if let Some(warning) = warning {
                    self.warn(warning);
                }
                // The `aws` login signs with the machine's AWS credentials.
                let aws = match config.auth.aws {
                    Some(_) => Some(aws::AwsClient::new(
                        &self.backends.aws.clone().unwrap_or_default(),
                        self.region_hint.clone(),
                        self.redactor.clone(),
                        self.deadline,
                        self.reporter.clone(),
                    )?),
                    None => None,
                };
                vault::VaultClient::new(
                    config,
                    &self.base_dir,
                    self.redactor.clone(),
                    self.deadline,
                    self.reporter.clone(),
                    aws,
                )
            })
            .await;
        client.as_ref().map_err(|detail| SecretError::Unreachable {
            name: name.into(),
            backend: "vault",
            detail: detail.clone(),
        })
    }

    /// A signed GET of an S3 object (`download` steps), with the AWS
    /// backend's credentials and region.
    pub async fn s3_get(
        &self,
        url: &str,
        bucket: &str,
        key: &str,
        range_from: Option<u64>,
    ) -> Result<reqwest::RequestBuilder, SecretError> {
        self.aws_client(url, "aws_s3")
            .await?
            .s3_get(url, bucket, key, range_from)
            .await
    }

    async fn aws_client(
        &self,
        name: &str,
        backend: &'static str,
    ) -> Result<&aws::AwsClient, SecretError> {
        let client = self
            .aws
            .get_or_init(|| async {
                let config = self.backends.aws.clone().unwrap_or_default();
                aws::AwsClient::new(
                    &config,
                    self.region_hint.clone(),
                    self.redactor.clone(),
                    self.deadline,
                    self.reporter.clone(),
                )
            })
            .await;
        client.as_ref().map_err(|detail| SecretError::Unreachable {
            name: name.into(),
            backend,
            detail: detail.clone(),
        })
    }
}

/// Records a fetch's latency, and its error code when it failed.
fn record(backend: &'static str, started: Instant, error: Option<&SecretError>) {
    metrics::histogram!("bootplan_secret_fetch_duration_seconds", "backend" => backend)
        .record(started.elapsed().as_secs_f64());
    if let Some(err) = error {
        metrics::counter!(
            "bootplan_secret_fetch_errors_total",
            "backend" => backend,
            "code" => err.code().as_str()
        )
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_is_due_near_two_thirds_the_same_for_every_secret_sharing_it() {
        let duration = Duration::from_secs(300);
        for id in ["database/creds/app/a", "database/creds/app/b", ""] {
            let wait = lease_wait(id, duration);
            assert!(wait >= Duration::from_secs(170) && wait <= Duration::from_secs(230));
            assert_eq!(wait, lease_wait(id, duration));
        }
    }
}
