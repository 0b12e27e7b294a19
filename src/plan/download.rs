//! `download` steps in the plan model: the raw file types, their checks,
//! and the resolved [`DownloadSpec`] the step runs; the top-level
//! `downloads:` block (the cache's size).
//!
//! A download names what it must be: a `sha256` or `sha512` digest is
//! required unless the plan says `insecure_no_digest: true`, which is
//! warned about on every run.

use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{Backoff, HumanDuration, Mode};
use super::refs;
use crate::digest::{Algorithm, Digest};

/// Largest download accepted when `max_size` is not given.
pub const DEFAULT_MAX_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Largest the download cache grows before the least recently used blobs go.
pub const DEFAULT_MAX_CACHE_SIZE: u64 = 4 * 1024 * 1024 * 1024;
const DEFAULT_ATTEMPTS: u32 = 5;
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(500);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// URL schemes a download may name.
pub const SCHEMES: [&str; 5] = ["https://", "http://", "s3://", "file://", "data:"];

/// `download:` step body.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDownload {
    /// Where to fetch from: `https://`, `http://`, `s3://BUCKET/KEY`, `file:///PATH` or a `data:` URL (may use templates).
    pub url: String,
    /// Other URLs with the same content, tried in order after `url` fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// The content's SHA-256, 64 hex digits. One of `sha256` or `sha512` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The content's SHA-512, 128 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    /// Accept content without a digest (no verification, no cache; warned on every run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_digest: bool,
    /// Where the file goes; with `extract`, the directory the members go into.
    /// A path ending in `/` is a directory: the file keeps the URL's name.
    pub dest: String,
    /// Octal permission bits of the file (with `extract`, of every extracted
    /// file). Default `0644`; extracted files keep the archive's (without
    /// set-id bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// `user` or `user:group` of everything written; needs root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Request headers (http and https only; values may use `{{ secrets.NAME }}`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    /// Unpack the download instead of writing it as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<RawExtract>,
    /// Largest download (and largest extracted total) accepted, e.g. `200MiB`. Default `4GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Keep the verified content in the state directory's download cache. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// Requests per source, the first included, before the next mirror is tried. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Backoff between requests to one source, `MIN..MAX`. Default `500ms..30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Limit for one request, connection to last byte. Default: none (the step's timeout and the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<HumanDuration>,
    /// Allow headers that use secrets over plain `http://` to a host other than this machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

/// `download.extract`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExtract {
    /// `tar`, `tar.gz` (`tgz`), `tar.zst`, `tar.xz`, `zip`, or a single
    /// compressed file: `gz`, `zst`, `xz`. Default: from the URL's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ArchiveFormat>,
    /// Leading path components removed from each member's name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub strip_components: u32,
    /// Members to extract (after `strip_components`): a path, a directory
    /// (everything below it), or a pattern with `*`, `?` and `**`. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a download is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ArchiveFormat {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.gz", alias = "tgz")]
    TarGz,
    #[serde(rename = "tar.zst", alias = "tzst")]
    TarZst,
    #[serde(rename = "tar.xz", alias = "txz")]
    TarXz,
    #[serde(rename = "zip")]
    Zip,
    #[serde(rename = "gz")]
    Gz,
    #[serde(rename = "zst")]
    Zst,
    #[serde(rename = "xz")]
    Xz,
}

/// How a stream is decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl ArchiveFormat {
    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::TarXz => "tar.xz",
            ArchiveFormat::Zip => "zip",
            ArchiveFormat::Gz => "gz",
            ArchiveFormat::Zst => "zst",
            ArchiveFormat::Xz => "xz",
        }
    }

    /// The format a file name's ending says, if any.
    pub fn from_file_name(name: &str) -> Option<ArchiveFormat> {
        const ENDINGS: [(&str, ArchiveFormat); 11] = [
            (".tar.gz", ArchiveFormat::TarGz),
            (".tgz", ArchiveFormat::TarGz),
            (".tar.zst", ArchiveFormat::TarZst),
            (".tzst", ArchiveFormat::TarZst),
            (".tar.xz", ArchiveFormat::TarXz),
            (".txz", ArchiveFormat::TarXz),
            (".tar", ArchiveFormat::Tar),
            (".zip", ArchiveFormat::Zip),
            (".gz", ArchiveFormat::Gz),
            (".zst", ArchiveFormat::Zst),
            (".xz", ArchiveFormat::Xz),
        ];
        let name = name.to_ascii_lowercase();
        ENDINGS
            .iter()
            .find(|(ending, _)| name.ends_with(ending))
            .map(|&(_, format)| format)
    }

    /// Whether members are unpacked into a directory (else one file is decompressed).
    pub fn is_archive(self) -> bool {
        matches!(
            self,
            ArchiveFormat::Tar
                | ArchiveFormat::TarGz
                | ArchiveFormat::TarZst
                | ArchiveFormat::TarXz
                | ArchiveFormat::Zip
        )
    }

    pub fn compression(self) -> Compression {
        match self {
            ArchiveFormat::Tar | ArchiveFormat::Zip => Compression::None,
            ArchiveFormat::TarGz | ArchiveFormat::Gz => Compression::Gzip,
            ArchiveFormat::TarZst | ArchiveFormat::Zst => Compression::Zstd,
            ArchiveFormat::TarXz | ArchiveFormat::Xz => Compression::Xz,
        }
    }
}

/// A size in bytes: a number, or a number and a unit (`512KiB`, `200MB`, `4GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses `4GiB`, `200MB`, `1048576`, `64 KiB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid size `{text}`: write a number and a unit, such as 200MiB or 4GiB")
    })?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as 200MiB or 4GiB")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size in bytes: a number, or a number and a unit such as 200MiB or 4GiB.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKMGT]i?B|B)?\\s*$" }
            ]
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// The top-level `downloads:` block.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDownloads {
    /// Largest the download cache (in the state directory) may grow; least
    /// recently used content goes first. Default `4GiB`.
    #[serde(default)]
    pub max_cache_size: Option<ByteSize>,
}

/// The resolved `downloads:` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadSettings {
    pub max_cache_size: u64,
}

impl Default for DownloadSettings {
    fn default() -> DownloadSettings {
        DownloadSettings {
            max_cache_size: DEFAULT_MAX_CACHE_SIZE,
        }
    }
}

impl DownloadSettings {
    pub fn resolve(raw: Option<&RawDownloads>) -> DownloadSettings {
        DownloadSettings {
            max_cache_size: raw
                .and_then(|r| r.max_cache_size)
                .map_or(DEFAULT_MAX_CACHE_SIZE, |s| s.0),
        }
    }
}

/// A validated download.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadSpec {
    pub url: String,
    pub mirrors: Vec<String>,
    /// `None` only with `insecure_no_digest: true`.
    pub digest: Option<Digest>,
    pub dest: String,
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub headers: IndexMap<String, String>,
    pub extract: Option<ExtractSpec>,
    pub max_size: u64,
    pub cache: bool,
    pub attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub attempt_timeout: Option<Duration>,
    pub insecure_http: bool,
}

/// A validated `extract:`.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractSpec {
    pub format: ArchiveFormat,
    pub strip_components: u32,
    pub include: Vec<String>,
}

/// A problem with a download step, for the validator to report.
pub struct Problem {
    pub warning: bool,
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Checks `raw` (the step at `field`) and resolves it; problems are
/// returned beside it (a spec is returned only when there are no errors).
pub fn resolve(field: &str, raw: &RawDownload) -> (Option<DownloadSpec>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut error = |at: &str, message: String, hint: Option<&str>| {
        problems.push(Problem {
            warning: false,
            field: format!("{field}.download{at}"),
            message,
            hint: hint.map(str::to_string),
        })
    };
    for (at, url) in std::iter::once((String::from(".url"), &raw.url)).chain(
        raw.mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| (format!(".mirrors[{i}]"), m)),
    ) {
        if !SCHEMES.iter().any(|s| url.starts_with(s)) && !starts_with_template(url) {
            error(
                &at,
                format!("`{url}` is not a URL bootplan can download from"),
                Some("use https://, http://, s3://BUCKET/KEY, file:///PATH or a data: URL"),
            );
        }
    }
    if raw.dest.trim().is_empty() {
        error(".dest", "the destination is empty".into(), None);
    }
    let digest = match (&raw.sha256, &raw.sha512) {
        (Some(_), Some(_)) => {
            error(
                "",
                "give one digest: `sha256` or `sha512`, not both".into(),
                None,
            );
            None
        }
        (Some(hex), None) => parse_digest(Algorithm::Sha256, hex, ".sha256", &mut error),
        (None, Some(hex)) => parse_digest(Algorithm::Sha512, hex, ".sha512", &mut error),
        (None, None) => None,
    };
    let has_digest = raw.sha256.is_some() || raw.sha512.is_some();
    match (has_digest, raw.insecure_no_digest) {
        (false, false) => error(
            "",
            "a download needs a digest: `sha256` (or `sha512`) of the content".into(),
            Some(
                "compute it with `sha256sum FILE`; `insecure_no_digest: true` accepts unverified content",
            ),
        ),
        (true, true) => error(
            ".insecure_no_digest",
            "`insecure_no_digest: true` contradicts the digest given".into(),
            Some("remove `insecure_no_digest`"),
        ),
        _ => {}
    }
    if raw.attempts == Some(0) {
        error(
            ".attempts",
            "attempts must be at least 1".into(),
            Some("attempts counts the first request too"),
        );
    }
    if raw.attempt_timeout.is_some_and(|t| t.get().is_zero()) {
        error(
            ".attempt_timeout",
            "attempt_timeout must be more than zero".into(),
            None,
        );
    }
    if raw.max_size.is_some_and(|s| s.0 == 0) {
        error(".max_size", "max_size must be more than zero".into(), None);
    }
    for name in raw.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            error(
                ".headers",
                format!("`{}` is not an HTTP header name", name.escape_debug()),
                Some("header names are letters, digits and `-`, e.g. `Authorization`"),
            );
        }
    }
    let extract = raw
        .extract
        .as_ref()
        .and_then(|x| resolve_extract(x, &raw.url, &mut error));
    if raw.insecure_no_digest && raw.cache == Some(true) {
        error(
            ".cache",
            "content without a digest cannot be cached: the cache is keyed by digest".into(),
            Some("give `sha256`, or remove `cache: true`"),
        );
    }
    if raw.insecure_no_digest {
        problems.push(Problem {
            warning: true,
            field: format!("{field}.download.insecure_no_digest"),
            message: "the download is not verified: whoever controls the server or the network path decides what is written".into(),
            hint: Some("add `sha256: <hex>` of the expected content".into()),
        });
    }
    if problems.iter().any(|p| !p.warning) {
        return (None, problems);
    }
    let spec = DownloadSpec {
        url: raw.url.clone(),
        mirrors: raw.mirrors.clone(),
        digest,
        dest: raw.dest.clone(),
        mode: raw.mode.map(|m| m.0),
        owner: raw.owner.clone(),
        headers: raw.headers.clone(),
        extract,
        max_size: raw.max_size.map_or(DEFAULT_MAX_SIZE, |s| s.0),
        cache: raw.cache.unwrap_or(true) && !raw.insecure_no_digest,
        attempts: raw.attempts.unwrap_or(DEFAULT_ATTEMPTS),
        min_backoff: raw.backoff.map_or(DEFAULT_MIN_BACKOFF, |b| b.min),
        max_backoff: raw.backoff.map_or(DEFAULT_MAX_BACKOFF, |b| b.max),
        attempt_timeout: raw.attempt_timeout.map(|t| t.get()),
        insecure_http: raw.insecure_http,
    };
    (Some(spec), problems)
}

fn starts_with_template(text: &str) -> bool {
    text.trim_start().starts_with("{{")
}

fn parse_digest(
    algorithm: Algorithm,
    hex: &str,
    at: &str,
    error: &mut impl FnMut(&str, String, Option<&str>),
) -> Option<Digest> {
    match Digest::parse(algorithm, hex) {
        Ok(digest) => Some(digest),
        Err(err) => {
            error(
                at,
                err.to_string(),
                Some("copy the digest from the publisher, or compute it with `sha256sum FILE`"),
            );
            None
        }
    }
}

/// Checks that every `include` pattern names a path inside the archive.
fn check_includes(raw: &RawExtract, error: &mut impl FnMut(&str, String, Option<&str>)) -> bool {
    let mut ok = true;
    for (i, pattern) in raw.include.iter().enumerate() {
        let bad = pattern.is_empty()
            || pattern.starts_with('/')
            || pattern.split('/').any(|c| c == "..")
            || pattern.contains('\0');
        if bad {
            error(
                &format!(".extract.include[{i}]"),
                format!(
                    "`{}` is not a member path inside the archive",
                    pattern.escape_debug()
                ),
                Some(
                    "write paths relative to the archive's root (after strip_components), without `..`",
                ),
            );
            ok = false;
        }
    }
    ok
}

fn resolve_extract(
    raw: &RawExtract,
    url: &str,
    error: &mut impl FnMut(&str, String, Option<&str>),
) -> Option<ExtractSpec> {
    let format = match raw.format {
        Some(format) => format,
        None => match ArchiveFormat::from_file_name(url_file_name(url)) {
            Some(format) => format,
            None => {
                error(
                    ".extract.format",
                    format!("the archive format cannot be told from `{url}`"),
                    Some("give `format:` tar, tar.gz, tar.zst, tar.xz, zip, gz, zst or xz"),
                );
                check_includes(raw, error);
                return None;
            }
        },
    };
    let mut ok = check_includes(raw, error);
    if !format.is_archive() && (raw.strip_components > 0 || !raw.include.is_empty()) {
        error(
            ".extract",
            format!(
                "`{}` is one compressed file: `strip_components` and `include` apply to archives",
                format.name()
            ),
            None,
        );
        ok = false;
    }
    ok.then(|| ExtractSpec {
        format,
        strip_components: raw.strip_components,
        include: raw.include.clone(),
    })
}

/// The last path segment of a URL, without query or fragment.
pub fn url_file_name(url: &str) -> &str {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    url.rsplit('/').next().unwrap_or(url)
}

/// The template texts of a download (for reference checks), by field.
pub fn texts<'a>(field: &str, spec: &'a DownloadSpec) -> Vec<(String, &'a str)> {
    let mut texts = vec![
        (format!("{field}.download.url"), spec.url.as_str()),
        (format!("{field}.download.dest"), spec.dest.as_str()),
    ];
    for mirror in &spec.mirrors {
        texts.push((format!("{field}.download.mirrors"), mirror.as_str()));
    }
    for (name, value) in &spec.headers {
        texts.push((format!("{field}.download.headers.{name}"), value.as_str()));
    }
    texts
}

/// Whether any header of `spec` reads a secret (they may not travel over
/// plain http to another machine).
pub fn headers_use_secrets(spec: &DownloadSpec) -> bool {
    spec.headers.values().any(|value| {
        refs::references(value).is_ok_and(|found| found.iter().any(|r| r.root == "secrets"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawDownload {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("200MB").unwrap(), 200_000_000);
        assert_eq!(parse_size("64 KiB").unwrap(), 65536);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("4 GB of it").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
    }

    #[test]
    fn a_digest_is_required_unless_insecure_no_digest_is_written() {
        let (spec, problems) = resolve("steps.x", &raw("{ url: 'https://h/a.bin', dest: /tmp/a }"));
        assert!(spec.is_none());
        assert!(
            problems[0].message.contains("needs a digest"),
            "{}",
            problems[0].message
        );
        let (spec, problems) = resolve(
            "steps.x",
            &raw("{ url: 'https://h/a.bin', dest: /tmp/a, insecure_no_digest: true }"),
        );
        let spec = spec.unwrap();
        assert!(spec.digest.is_none() && !spec.cache);
        assert!(problems.iter().all(|p| p.warning) && problems.len() == 1);
        let (spec, _) = resolve(
            "steps.x",
            &raw(&format!(
                "{{ url: 'https://h/a.bin', dest: /tmp/a, sha256: '{}' }}",
                SHA.to_uppercase()
            )),
        );
        assert_eq!(spec.unwrap().digest.unwrap().hex(), SHA);
    }

    #[test]
    fn the_format_comes_from_the_url_and_include_stays_inside() {
        let (spec, _) = resolve(
            "steps.x",
            &raw(&format!(
                "{{ url: 'https://h/n-1.2.tar.gz?x=1', dest: /opt/n/, sha256: {SHA}, extract: {{ strip_components: 1, include: [bin] }} }}"
            )),
        );
        assert_eq!(spec.unwrap().extract.unwrap().format, ArchiveFormat::TarGz);
        let (spec, problems) = resolve(
            "steps.x",
            &raw(&format!(
                "{{ url: 'https://h/blob', dest: /opt/n/, sha256: {SHA}, extract: {{ include: ['../etc'] }} }}"
            )),
        );
        assert!(spec.is_none());
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(
            fields.contains(&"steps.x.download.extract.format"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"steps.x.download.extract.include[0]"),
            "{fields:?}"
        );
    }
}
