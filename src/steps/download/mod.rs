//! `download` steps: fetch content from the first source that gives it,
//! verify its digest while it streams, keep it in the content-addressed
//! cache, then place it — as a file, decompressed, or extracted — with
//! nothing reaching `dest` unless the digest matched.
//!
//! `fetch.rs` the sources (http/https with `Range` resume, `file://`,
//! `data:`) and the retry loop, `cache.rs` the cache under the state
//! directory, `unpack.rs` decompression and extraction into a staging
//! tree beside `dest`.

mod cache;
mod fetch;
mod unpack;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use cache::Cache;

use super::{StepAction, StepContext, StepError, StepInputs};
use crate::error::ErrorCode;
use crate::plan::download::{DownloadSpec, url_file_name};
use crate::telemetry::Level;
use crate::telemetry::metrics as m;

/// Why a download failed. Messages name the URL (never a header value).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "{url}: the content does not match its digest (expected {expected}, got {actual}); the bytes were discarded"
    )]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: larger than max_size ({limit} bytes); the bytes were discarded")]
    TooLarge { url: String, limit: u64 },
    #[error("cannot download {url}: {detail}")]
    Unavailable { url: String, detail: String },
    #[error("refusing {url}: {detail}")]
    Refused { url: String, detail: String },
    #[error("refusing archive member `{member}` of {url}: {reason}; nothing was extracted")]
    ArchiveUnsafe {
        url: String,
        member: String,
        reason: String,
    },
    #[error("{url} is not a valid {format} archive: {detail}; nothing was extracted")]
    ArchiveInvalid {
        url: String,
        format: String,
        detail: String,
    },
    /// The partial file or the cache could not be written.
    #[error("{detail}")]
    Store { detail: String },
    #[error("every source failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllSources(Vec<DownloadError>),
}

impl DownloadError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DownloadError::ChecksumMismatch { .. } => ErrorCode::DownloadChecksumMismatch,
            DownloadError::TooLarge { .. } => ErrorCode::DownloadTooLarge,
            DownloadError::Unavailable { .. } => ErrorCode::DownloadUnavailable,
            DownloadError::Refused { .. } => ErrorCode::DownloadRefused,
            DownloadError::ArchiveUnsafe { .. } => ErrorCode::DownloadArchiveUnsafe,
            DownloadError::ArchiveInvalid { .. } => ErrorCode::DownloadArchiveInvalid,
            DownloadError::Store { .. } => ErrorCode::FileWriteFailed,
            // The gravest of the sources' failures names the whole.
            DownloadError::AllSources(all) => all
                .iter()
                .map(DownloadError::code)
                .max_by_key(|c| severity(*c))
                .unwrap_or(ErrorCode::DownloadUnavailable),
        }
    }

    /// Whether another step attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code(), ErrorCode::DownloadUnavailable)
    }
}

fn severity(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::DownloadChecksumMismatch => 5,
        ErrorCode::DownloadTooLarge => 4,
        ErrorCode::DownloadArchiveUnsafe => 3,
        ErrorCode::DownloadRefused => 2,
        _ => 1,
    }
}

/// What every download step of a run shares: the cache (or a scratch
/// directory when there is no state directory), the run's deadline, and
/// one lock per digest so two steps never fetch the same content at once.
pub struct Downloads {
    cache: Option<Cache>,
    deadline: Option<tokio::time::Instant>,
    scratch: std::sync::OnceLock<Option<tempfile::TempDir>>,
    locks: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Downloads {
    fn default() -> Downloads {
        Downloads {
            cache: None,
            deadline: None,
            scratch: std::sync::OnceLock::new(),
            locks: Mutex::default(),
        }
    }
}

impl Downloads {
    /// Downloads cached under `state_dir/downloads`, at most `max_cache_size` bytes.
    pub fn new(
        state_dir: &Path,
        max_cache_size: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Downloads {
        Downloads {
            cache: Some(Cache::new(state_dir.join("downloads"), max_cache_size)),
            deadline,
            ..Downloads::default()
        }
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Where partial downloads go.
    fn partial_dir(&self) -> Result<PathBuf, DownloadError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.partial_dir());
        }
        let scratch = self.scratch.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("bootplan-dl")
                .tempdir()
                .ok()
        });
        scratch
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .ok_or_else(|| DownloadError::Store {
                detail: "no directory for partial downloads".into(),
            })
    }
}

pub struct DownloadAction<'a> {
    pub spec: &'a DownloadSpec,
}

/// A download's sources and settings after rendering.
pub(crate) struct Rendered {
    pub step: String,
    pub sources: Vec<String>,
    pub headers: reqwest::header::HeaderMap,
    pub dest: PathBuf,
}

impl StepAction for DownloadAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let spec = self.spec;
        let rendered = render(spec, inputs, ctx)?;
        let started = Instant::now();
        let result = tokio::select! {
            result = download(spec, &rendered, ctx) => result,
            () = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        metrics::histogram!(m::DOWNLOAD_DURATION, "step" => rendered.step.clone())
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Renders the URLs, headers and destination.
fn render(
    spec: &DownloadSpec,
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
) -> Result<Rendered, StepError> {
    let mut sources = vec![inputs.render(&spec.url, "download.url", ctx)?];
    for (i, mirror) in spec.mirrors.iter().enumerate() {
        sources.push(inputs.render(mirror, &format!("download.mirrors[{i}]"), ctx)?);
    }
    let uses_secrets = crate::plan::download::headers_use_secrets(spec);
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &spec.headers {
        let value = inputs.render(value, &format!("download.headers.{name}"), ctx)?;
        let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) else {
            return Err(StepError::Render {
                what: format!("download.headers.{name}"),
                message: "not a valid HTTP header value".into(),
            });
        };
        value.set_sensitive(uses_secrets);
        headers.insert(name, value);
    }
    if uses_secrets {
        for url in sources.iter().filter(|u| u.starts_with("http://")) {
            match crate::http::credential_transport(url, spec.insecure_http, "headers with secrets")
            {
                Ok(Some(warning)) => ctx.reporter.notice(Level::Warn, warning),
                Ok(None) => {}
                Err(detail) => {
                    return Err(DownloadError::Refused {
                        url: url.clone(),
                        detail,
                    }
                    .into());
                }
            }
        }
    }
    let archive = spec.extract.as_ref().is_some_and(|x| x.format.is_archive());
    let mut dest = inputs.path(&spec.dest, "download.dest", ctx)?;
    if spec.dest.ends_with('/') && !archive {
        // A file into a directory: the URL's name (less the compression
        // suffix when it is decompressed).
        let mut name = url_file_name(&sources[0]);
        if spec.extract.is_some() {
            for suffix in [".gz", ".zst", ".xz"] {
                if let Some(stripped) = name.strip_suffix(suffix) {
                    name = stripped;
                    break;
                }
            }
        }
        if name.is_empty() || name == "." || name == ".." || sources[0].starts_with("data:") {
            return Err(StepError::UnsafePath {
                what: "download.dest".into(),
                message: format!(
                    "the URL names no file to put in {}: give dest a file name",
                    dest.display()
                ),
            });
        }
        dest.push(name);
    }
    Ok(Rendered {
        step: inputs.step.name.clone(),
        sources,
        headers,
        dest,
    })
}

async fn download(
    spec: &DownloadSpec,
    rendered: &Rendered,
    ctx: &StepContext,
) -> Result<(), StepError> {
    let downloads = &ctx.downloads;
    let step = rendered.step.as_str();
    if spec.digest.is_none() {
        ctx.reporter.notice(
            Level::Warn,
            format!(
                "step {step}: downloading {} without a digest (insecure_no_digest: true): the content is not verified",
                rendered.sources[0]
            ),
        );
    }
    let key = match &spec.digest {
        Some(d) => format!("{}-{}", d.algorithm.name(), d.hex()),
        None => format!(
            "nodigest-{}",
            crate::digest::Digest::of(crate::digest::Algorithm::Sha256, step.as_bytes()).hex()
        ),
    };
    let lock = downloads.lock_for(&key);
    let _held = lock.lock().await;
    let cache = downloads.cache.as_ref().filter(|_| spec.cache);
    let cached = match (&spec.digest, cache) {
        (Some(digest), Some(cache)) => cache.lookup(digest),
        _ => None,
    };
    let blob: Blob = match cached {
        Some(path) => {
            metrics::counter!(m::DOWNLOAD_CACHE_HITS, "step" => step.to_string()).increment(1);
            if let Some(digest) = &spec.digest {
                ctx.reporter.notice(
                    Level::Info,
                    format!("step {step}: {digest} is in the download cache; nothing fetched"),
                );
            }
            Blob {
                path,
                remove: false,
            }
        }
        None => {
            if spec.digest.is_some() && cache.is_some() {
                metrics::counter!(m::DOWNLOAD_CACHE_MISSES, "step" => step.to_string())
                    .increment(1);
            }
            let partial_path = downloads.partial_dir()?.join(&key);
            // Only what enters the cache must be durable on its own: a
            // placed file is made durable where it is placed.
            let durable = spec.digest.is_some() && cache.is_some();
            let fetched = fetch::fetch_all(
                spec,
                rendered,
                &partial_path,
                downloads.deadline,
                durable,
                ctx,
            )
            .await?;
            match (&spec.digest, cache) {
                (Some(digest), Some(cache)) => Blob {
                    path: cache.insert(&fetched, digest)?,
                    remove: false,
                },
                _ => Blob {
                    path: fetched,
                    remove: true,
                },
            }
        }
    };
    let placed = place(spec, rendered, &blob.path).await;
    if let (Some(_), Some(cache)) = (&spec.digest, cache) {
        cache.evict(&blob.path);
    }
    placed
}

/// Verified content on disk: a cache blob, or a partial file removed after use.
struct Blob {
    path: PathBuf,
    remove: bool,
}

impl Drop for Blob {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Puts verified content at `dest`: copied, decompressed or extracted.
async fn place(spec: &DownloadSpec, rendered: &Rendered, blob: &Path) -> Result<(), StepError> {
    let owner = spec
        .owner
        .as_deref()
        .map(|o| super::file::resolve_owner(&rendered.dest, o))
        .transpose()?;
    let spec = spec.clone();
    let url = rendered.sources[0].clone();
    let dest = rendered.dest.clone();
    let blob = blob.to_path_buf();
    // Placing is blocking file work: off the runtime's thread.
    tokio::task::spawn_blocking(move || unpack::place(&spec, &url, &blob, &dest, owner))
        .await
        .map_err(|e| StepError::Internal(format!("placing a download panicked: {e}")))?
}

/// Announces progress every few seconds while bytes arrive.
pub(crate) struct Progress<'a> {
    ctx: &'a StepContext,
    step: &'a str,
    url: String,
    total: Option<u64>,
    started: Instant,
    next: Instant,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl<'a> Progress<'a> {
    pub fn new(ctx: &'a StepContext, step: &'a str, url: &str, total: Option<u64>) -> Progress<'a> {
        let now = Instant::now();
        Progress {
            ctx,
            step,
            url: url.to_string(),
            total,
            started: now,
            next: now + PROGRESS_EVERY,
        }
    }

    pub fn update(&mut self, bytes: u64) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + PROGRESS_EVERY;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let mut message = format!(
            "step {}: {} of {} at {}/s",
            self.step,
            human_bytes(bytes),
            self.total.map_or("?".to_string(), human_bytes),
            human_bytes(rate as u64)
        );
        if let Some(total) = self.total.filter(|_| rate > 0.0) {
            let eta = total.saturating_sub(bytes) as f64 / rate;
            message.push_str(&format!(", {eta:.0}s left"));
        }
        message.push_str(&format!(" ({})", self.url));
        self.ctx.reporter.notice(Level::Info, message);
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
