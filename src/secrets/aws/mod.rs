//! AWS: Secrets Manager and SSM Parameter Store over their JSON APIs, signed
//! with SigV4 (`aws-sigv4`), without the SDK.
//!
//! Credentials come, in the AWS SDKs' order, from `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, a web identity token
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, through STS), the
//! container credentials endpoint (ECS, EKS Pod Identity), else the
//! instance role through IMDSv2; all but the first are cached and fetched
//! again five minutes before they expire. Every key and token is
//! registered with the redactor when read. Region: `backends.aws.region`,
//! `AWS_REGION`, `AWS_DEFAULT_REGION`, the detected facts, then IMDS.
//! Endpoints: `backends.aws.endpoints`, then the SDK's environment variables.
//!
//! Each service is one module (`secretsmanager.rs`, `ssm.rs`) that builds its
//! request body and maps its answer; [`AwsClient::call`] does the rest.

pub mod imds;
pub mod secretsmanager;
mod sources;
pub mod ssm;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

use super::http::{Failure, Net, Response};
use super::{Redactor, SecretError};
use crate::plan::secret_source::AwsConfig;
use imds::Imds;

/// The `sts:GetCallerIdentity` request an identity proof signs.
pub const CALLER_IDENTITY_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const CALLER_IDENTITY_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
const IMDS_ATTEMPTS: u32 = 3;
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// Instance-role credentials this close to expiry are fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// One AWS JSON-protocol service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    SecretsManager,
    Ssm,
    /// STS, for credentials (web identity) and identity proofs (Vault's `aws` login).
    Sts,
    /// S3 objects, for `download` steps (`s3://BUCKET/KEY`).
    S3,
}

impl Service {
    /// The SigV4 signing name.
    fn signing_name(self) -> &'static str {
        match self {
            Service::SecretsManager => "secretsmanager",
            Service::Ssm => "ssm",
            Service::Sts => "sts",
            Service::S3 => "s3",
        }
    }

    /// The `X-Amz-Target` prefix (STS speaks the query protocol: none).
    fn target_prefix(self) -> &'static str {
        match self {
            Service::SecretsManager => "secretsmanager",
            Service::Ssm => "AmazonSSM",
            Service::Sts => "",
            Service::S3 => "",
        }
    }

    /// The backend name in errors and metric labels.
    pub fn backend(self) -> &'static str {
        match self {
            Service::SecretsManager => "aws_secretsmanager",
            Service::Ssm => "aws_ssm",
            Service::Sts => "aws_sts",
            Service::S3 => "aws_s3",
        }
    }

    fn endpoint_env(self) -> &'static str {
        match self {
            Service::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            Service::Ssm => "AWS_ENDPOINT_URL_SSM",
            Service::Sts => "AWS_ENDPOINT_URL_STS",
            Service::S3 => "AWS_ENDPOINT_URL_S3",
        }
    }
}

/// Everything one AWS request is made of, before signing.
struct Unsigned<'a> {
    endpoint: &'a str,
    target: &'a str,
    body: &'a [u8],
    credentials: &'a Credentials,
    region: &'a str,
    service: Service,
}

pub struct AwsClient {
    net: Net,
    config: AwsConfig,
    region_hint: Option<String>,
    region: OnceCell<String>,
    imds: Imds,
    /// For the container credentials endpoint: link-local, never proxied.
    local_net: Net,
    creds: Mutex<Option<Cached>>,
    redactor: Arc<Redactor>,
}

struct Cached {
    credentials: Credentials,
    /// When to fetch again; `None` for credentials from the environment.
    refresh_at: Option<SystemTime>,
}

impl AwsClient {
    pub fn new(
        config: &AwsConfig,
        region_hint: Option<String>,
        redactor: Arc<Redactor>,
        deadline: Option<Instant>,
        reporter: Option<Arc<crate::telemetry::Reporter>>,
    ) -> Result<AwsClient, String> {
        let timeout = config.timeout.map(|t| t.get());
        let net = Net::new(
            super::http::client(None, false, false, None)?,
            timeout,
            config.retry.as_ref(),
            deadline,
            "aws",
        )
        .with_reporter(reporter.clone())
        .with_rate_limit(config.max_requests_per_second);
        let imds_base = config
            .endpoints
            .imds
            .clone()
            .or_else(|| std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").ok())
            .unwrap_or_else(|| imds::DEFAULT_ENDPOINT.to_string());
        let mut imds_net = Net::new(
            super::http::client(None, false, true, Some(&imds_base))?,
            timeout,
            config.retry.as_ref(),
            deadline,
            "aws instance metadata",
        )
        .with_reporter(reporter);
        // The metadata service answers in milliseconds or not at all (off
        // EC2): do not spend the secret store's retry budget on it.
        imds_net.budget.attempts = imds_net.budget.attempts.min(IMDS_ATTEMPTS);
        imds_net.timeout = imds_net.timeout.min(IMDS_TIMEOUT);
        imds_net.budget.attempt_time = imds_net.timeout;
        // The container endpoint may be https (a full URI): trust roots kept.
        let local_net = Net {
            client: super::http::client(None, false, true, None)?,
            ..imds_net.clone()
        };
        Ok(AwsClient {
            net,
            config: config.clone(),
            region_hint,
            region: OnceCell::new(),
            imds: Imds::new(imds_net, &imds_base, redactor.clone()),
            local_net,
            creds: Mutex::new(None),
            redactor,
        })
    }

    /// Calls `Operation` of `service` with a JSON body and returns the answer.
    /// `name` is the secret the call is for (for messages).
    #[tracing::instrument(skip_all, fields(backend = service.backend(), operation))]
    pub async fn call(
        &self,
        name: &str,
        service: Service,
        operation: &str,
        body: &[u8],
    ) -> Result<Response, SecretError> {
        let region = self.region(name, service).await?;
        let endpoint = self.endpoint(service, &region);
        let credentials = self.credentials(name, service).await?;
        let target = format!("{}.{operation}", service.target_prefix());
        let unsigned = Unsigned {
            endpoint: &endpoint,
            target: &target,
            body,
            credentials: &credentials,
            region: &region,
            service,
        };
        // Sign once up front so a request that cannot be signed (a malformed
        // endpoint) is an error, never an unsigned request on the wire.
        let _checked =
            self.signed(&self.net.client, &unsigned)
                .map_err(|err| SecretError::Unreachable {
                    name: name.into(),
                    backend: service.backend(),
                    detail: format!("{endpoint}: cannot sign the request: {err}"),
                })?;
        let result = self
            .net
            .send(&endpoint, |c| match self.signed(c, &unsigned) {
                Ok(request) => request,
                // Signed fine a moment ago: unreachable in practice. Sent as is,
                // AWS answers 4xx and the caller reports it.
                Err(_) => c.post(endpoint.as_str()),
            })
            .await;
        result.map_err(|failure| map_failure(name, service, &endpoint, failure))
    }

    /// The headers of a SigV4-signed `sts:GetCallerIdentity` POST to `url`
    /// (body [`CALLER_IDENTITY_BODY`]), `extra` headers signed too: a proof
    /// of identity that a verifier (Vault's `aws` method) sends to STS itself.
    pub async fn signed_caller_identity(
        &self,
        name: &str,
        url: &str,
        region: &str,
        extra: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, SecretError> {
        let credentials = self.credentials(name, Service::Sts).await?;
        let unsignable = |detail: String| SecretError::AuthFailed {
            name: name.into(),
            backend: Service::Sts.backend(),
            detail: format!("{url}: cannot sign GetCallerIdentity: {detail}"),
        };
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(String::from))
            .ok_or_else(|| unsignable("not a URL with a host".into()))?;
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), host),
            ("content-type".into(), CALLER_IDENTITY_TYPE.into()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(Service::Sts.signing_name())
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsignable(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(CALLER_IDENTITY_BODY.as_bytes()),
        )
        .map_err(|e| unsignable(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| unsignable(e.to_string()))?
            .into_parts();
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(headers)
    }

    /// A GET of the S3 object `key` in `bucket` (path-style, under the S3
    /// endpoint), signed now with the same credentials and region as the
    /// secrets; `range_from` asks for the bytes from that offset on. Each
    /// attempt needs a new one: the signature carries the time.
    pub async fn s3_get(
        &self,
        name: &str,
        bucket: &str,
        key: &str,
        range_from: Option<u64>,
    ) -> Result<reqwest::RequestBuilder, SecretError> {
        let service = Service::S3;
        let region = self.region(name, service).await?;
        let credentials = self.credentials(name, service).await?;
        let endpoint = self.endpoint(service, &region);
        let url = format!(
            "{}/{}/{}",
            endpoint.trim_end_matches('/'),
            bucket,
            key.split('/')
                .map(|segment| {
                    segment
                        .bytes()
                        .map(|b| match b {
                            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                                (b as char).to_string()
                            }
                            other => format!("%{other:02X}"),
                        })
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join("/")
        );
        let range = range_from.map(|from| format!("bytes={from}-"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(range) = &range {
            headers.push(("range", range.as_str()));
        }
        let fail = |detail: String| SecretError::Unreachable {
            name: name.into(),
            backend: service.backend(),
            detail: format!("{url}: cannot sign the request: {detail}"),
        };
        let identity = credentials.into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name(service.signing_name())
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| fail(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| fail(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| fail(e.to_string()))?
            .into_parts();
        let mut builder = self.net.client.get(&url);
        for (name, value) in headers.into_iter().chain(instructions.headers()) {
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| fail(format!("header {name} is not valid")))?;
            if name.eq_ignore_ascii_case("x-amz-security-token")
                || name.eq_ignore_ascii_case("authorization")
            {
                value.set_sensitive(true);
            }
            builder = builder.header(name, value);
        }
        Ok(builder)
    }

    /// The region the chain resolves (configured, environment, facts, IMDS),
    /// for callers outside the secret backends (the platform signals).
    pub async fn resolved_region(&self, name: &str) -> Result<String, SecretError> {
        self.region(name, Service::Sts).await
    }

    /// The headers of a SigV4-signed form POST of `body` (AWS's query
    /// protocol) to `url`, for the service signed as `signing_name`, with
    /// this client's credentials: for callers outside the secret backends
    /// (the platform signals). Each attempt needs new ones: the signature
    /// carries the time.
    pub async fn signed_form_post(
        &self,
        name: &str,
        signing_name: &str,
        url: &str,
        region: &str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, SecretError> {
        let credentials = self.credentials(name, Service::Sts).await?;
        let unsignable = |detail: String| SecretError::Unreachable {
            name: name.into(),
            backend: Service::Sts.backend(),
            detail: format!("{url}: cannot sign the request: {detail}"),
        };
        let mut headers: Vec<(String, String)> = vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        )];
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(signing_name)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsignable(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| unsignable(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| unsignable(e.to_string()))?
            .into_parts();
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(headers)
    }

    /// The request for one attempt, signed now (SigV4 signatures carry the time).
    fn signed(
        &self,
        client: &reqwest::Client,
        request: &Unsigned<'_>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", request.target),
        ];
        let identity = request.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(request.region)
            .name(request.service.signing_name())
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable = SignableRequest::new(
            "POST",
            request.endpoint,
            headers.into_iter(),
            SignableBody::Bytes(request.body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let mut builder = client.post(request.endpoint).body(request.body.to_vec());
        for (name, value) in headers.into_iter().chain(instructions.headers()) {
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("header {name} is not valid"))?;
            if name.eq_ignore_ascii_case("x-amz-security-token") {
                value.set_sensitive(true);
            }
            builder = builder.header(name, value);
        }
        Ok(builder)
    }

    fn endpoint(&self, service: Service, region: &str) -> String {
        self.configured_endpoint(service).unwrap_or_else(|| {
            format!("https://{}.{region}.amazonaws.com/", service.signing_name())
        })
    }

    /// The plan's endpoint for `service`, else the SDKs' environment variables.
    fn configured_endpoint(&self, service: Service) -> Option<String> {
        let configured = match service {
            Service::SecretsManager => self.config.endpoints.secretsmanager.clone(),
            Service::Ssm => self.config.endpoints.ssm.clone(),
            Service::Sts => self.config.endpoints.sts.clone(),
            Service::S3 => self.config.endpoints.s3.clone(),
        };
        configured
            .or_else(|| std::env::var(service.endpoint_env()).ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
    }

    async fn region(&self, name: &str, service: Service) -> Result<String, SecretError> {
        let found = self
            .region
            .get_or_try_init(|| async {
                let configured = self
                    .config
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .or_else(|| self.region_hint.clone())
                    .filter(|r| !r.is_empty());
                if let Some(region) = configured {
                    return Ok(region);
                }
                self.imds
                    .get("meta-data/placement/region")
                    .await
                    .map(|r| r.trim().to_string())
            })
            .await;
        found.cloned().map_err(|failure| SecretError::Unreachable {
            name: name.into(),
            backend: service.backend(),
            detail: format!(
                "no region configured (backends.aws.region, AWS_REGION) and none from instance metadata: {}",
                describe(&failure)
            ),
        })
    }

    /// The credentials to sign with, refreshed from IMDS when near expiry.
    async fn credentials(&self, name: &str, service: Service) -> Result<Credentials, SecretError> {
        let mut slot = self.creds.lock().await;
        if let Some(cached) = slot.as_ref() {
            let fresh = cached.refresh_at.is_none_or(|at| SystemTime::now() < at);
            if fresh {
                return Ok(cached.credentials.clone());
            }
        }
        let cached = match from_env() {
            Some(credentials) => Cached {
                credentials,
                refresh_at: None,
            },
            None => self
                .obtain(name, service)
                .await
                .map_err(|(source, failure)| {
                    let detail =
                        format!("no AWS credentials from {source}: {}", describe(&failure));
                    match failure {
                        Failure::Unreachable(_) => SecretError::Unreachable {
                            name: name.into(),
                            backend: service.backend(),
                            detail,
                        },
                        Failure::Status { .. } => SecretError::AuthFailed {
                            name: name.into(),
                            backend: service.backend(),
                            detail,
                        },
                    }
                })?,
        };
        self.redactor
            .add_secret(cached.credentials.secret_access_key());
        if let Some(token) = cached.credentials.session_token() {
            self.redactor.add_secret(token);
        }
        let credentials = cached.credentials.clone();
        *slot = Some(cached);
        Ok(credentials)
    }

    /// Credentials from the first source the environment names, after
    /// the environment's own keys: web identity, the container endpoint,
    /// the instance role. The error names the source.
    async fn obtain(
        &self,
        name: &str,
        service: Service,
    ) -> Result<Cached, (&'static str, Failure)> {
        let obtained = if let Some(identity) = sources::WebIdentity::from_env() {
            let endpoint = self.sts_endpoint(name, service).await.map_err(|e| {
                (
                    "the web identity token",
                    Failure::Unreachable(e.to_string()),
                )
            })?;
            identity
                .obtain(&self.net, &endpoint)
                .await
                .map_err(|f| ("the web identity token", f))?
        } else if let Some(container) =
            sources::Container::from_env().map_err(|f| ("the container endpoint", f))?
        {
            container
                .obtain(&self.local_net)
                .await
                .map_err(|f| ("the container endpoint", f))?
        } else {
            return self
                .instance_role()
                .await
                .map_err(|f| ("the environment or the instance role", f));
        };
        for token in &obtained.tokens {
            self.redactor.add_secret(token.expose());
        }
        let refresh_at = obtained
            .expires
            .map(|e| e.checked_sub(REFRESH_BEFORE).unwrap_or(e));
        Ok(Cached {
            credentials: obtained.credentials,
            refresh_at: Some(refresh_at.unwrap_or_else(|| SystemTime::now() + REFRESH_BEFORE)),
        })
    }

    /// STS, for `AssumeRoleWithWebIdentity`: `backends.aws.endpoints.sts`,
    /// `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, else the regional endpoint.
    async fn sts_endpoint(&self, name: &str, service: Service) -> Result<String, SecretError> {
        if let Some(endpoint) = self.configured_endpoint(Service::Sts) {
            return Ok(endpoint);
        }
        let region = self.region(name, service).await?;
        Ok(self.endpoint(Service::Sts, &region))
    }

    #[tracing::instrument(skip_all, fields(backend = "imds"))]
    async fn instance_role(&self) -> Result<Cached, Failure> {
        let base = "meta-data/iam/security-credentials/";
        let roles = self.imds.get(base).await?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| Failure::Status {
                status: 404,
                message: "the instance has no IAM role".into(),
            })?
            .to_string();
        let doc = self.imds.get(&format!("{base}{role}")).await?;
        let parsed: ImdsCredentials = serde_json::from_str(&doc).map_err(|err| {
            Failure::Unreachable(format!(
                "instance-role credentials are not the expected JSON: {err}"
            ))
        })?;
        if parsed.code.as_deref().is_some_and(|c| c != "Success") {
            return Err(Failure::Status {
                status: 403,
                message: format!(
                    "instance-role credentials: code {}",
                    parsed.code.unwrap_or_default()
                ),
            });
        }
        let expires = parsed
            .expiration
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
        let refresh_at = expires.map(|e| e.checked_sub(REFRESH_BEFORE).unwrap_or(e));
        Ok(Cached {
            credentials: Credentials::new(
                parsed.access_key_id,
                parsed.secret_access_key,
                parsed.token,
                expires,
                "imds",
            ),
            // Credentials without an expiry are still fetched again now and then.
            refresh_at: Some(refresh_at.unwrap_or_else(|| SystemTime::now() + REFRESH_BEFORE)),
        })
    }
}

fn from_env() -> Option<Credentials> {
    let key = std::env::var("AWS_ACCESS_KEY_ID")
        .ok()
        .filter(|k| !k.is_empty())?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
    let token = std::env::var("AWS_SESSION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    Some(Credentials::new(key, secret, token, None, "environment"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImdsCredentials {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// AWS error bodies: `{"__type": "...#ResourceNotFoundException", "message": "..."}`.
#[derive(Deserialize, Default)]
struct AwsErrorBody {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(alias = "Message", default)]
    message: String,
}

fn map_failure(name: &str, service: Service, endpoint: &str, failure: Failure) -> SecretError {
    let backend = service.backend();
    let name = name.to_string();
    let (status, text) = match failure {
        Failure::Unreachable(detail) => {
            return SecretError::Unreachable {
                name,
                backend,
                detail,
            };
        }
        Failure::Status { status, message } => (status, message),
    };
    let body: AwsErrorBody = serde_json::from_str(&text).unwrap_or_default();
    let kind = body.kind.rsplit('#').next().unwrap_or_default().to_string();
    let detail = format!("{endpoint}: HTTP {status} {kind}: {}", body.message);
    classify(&kind, status, name, backend, detail)
}

fn classify(
    kind: &str,
    status: u16,
    name: String,
    backend: &'static str,
    detail: String,
) -> SecretError {
    const AUTH: &[&str] = &[
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
        "SignatureDoesNotMatch",
    ];
    const DENIED: &[&str] = &[
        "AccessDeniedException",
        "DecryptionFailure",
        "KMSAccessDeniedException",
    ];
    if AUTH.contains(&kind) || status == 401 {
        SecretError::AuthFailed {
            name,
            backend,
            detail,
        }
    } else if DENIED.contains(&kind) || status == 403 {
        SecretError::Denied {
            name,
            backend,
            detail,
        }
    } else {
        // ResourceNotFoundException, ParameterNotFound, ParameterVersionNotFound,
        // InvalidRequestException (e.g. scheduled for deletion), ...
        SecretError::NotFound {
            name,
            backend,
            detail,
        }
    }
}

fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Unreachable(detail) => detail.clone(),
        Failure::Status { status, message } => format!("HTTP {status}: {message}"),
    }
}
