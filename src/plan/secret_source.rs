//! Raw types for the `secrets:` and `backends:` sections of a plan.
//!
//! A secret names exactly one backend key; the backend modules under
//! `crate::secrets` know how to fetch each kind. To add a backend: add an
//! optional field here, a module under `src/secrets/`, and a dispatch arm there.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

/// Where one secret comes from: exactly one backend key.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Read the secret from a file (e.g. a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSecret>,
    /// Read the secret from an environment variable of bootplan's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvSecret>,
    /// Read the secret from Vault or OpenBao (settings under `backends.vault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSecret>,
    /// Read the secret from AWS Secrets Manager (settings under `backends.aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secretsmanager: Option<AwsSecretsManagerSecret>,
    /// Read the secret from AWS SSM Parameter Store, decrypted (settings under `backends.aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_ssm: Option<AwsSsmSecret>,
    /// Run a helper command (argv, no shell) that prints the secret on stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecSecret>,
    /// Issue a certificate and key from Vault's or OpenBao's PKI engine
    /// (settings under `backends.vault`). The secret's value is the private
    /// key; the certificate, key and chain are written to their files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_pki: Option<VaultPkiSecret>,
    /// Also write the value to a file (mode 0600 unless `mode` says otherwise,
    /// written atomically) under `backends.files.dir` when the secret is fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_file: Option<SecretFile>,
    /// While bootplan supervises, fetch the secret again this often (a
    /// tenth of it at random either way, so a fleet does not poll in step),
    /// or `lease`: when its lease nears its end, renewing a renewable lease
    /// instead while it can be. A changed value is written again and the
    /// steps that render it run their `on_change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Refresh>,
    /// Who to tell when a refresh wrote new files for this secret (its
    /// `to_file`, or a `vault_pki` certificate): `reload` only; the steps
    /// that render it have their own `on_change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<super::change::RawOnChange>,
}

impl SecretSource {
    /// Every file bootplan writes for this secret: its `to_file`, and a
    /// `vault_pki` certificate's files.
    pub fn files(&self) -> Vec<SecretFile> {
        let mut files: Vec<SecretFile> = self.to_file.iter().cloned().collect();
        if let Some(pki) = &self.vault_pki {
            let public = Some(super::duration::Mode(0o644));
            files.push(SecretFile {
                path: pki.cert_file.clone(),
                mode: public,
            });
            files.push(SecretFile {
                path: pki.key_file.clone(),
                mode: None,
            });
            if let Some(chain) = &pki.chain_file {
                files.push(SecretFile {
                    path: chain.clone(),
                    mode: public,
                });
            }
        }
        files
    }

    /// The backend keys present, for the "exactly one backend" check.
    pub fn backend_names(&self) -> Vec<&'static str> {
        super::present_keys([
            ("file", self.file.is_some()),
            ("env", self.env.is_some()),
            ("vault", self.vault.is_some()),
            ("aws_secretsmanager", self.aws_secretsmanager.is_some()),
            ("aws_ssm", self.aws_ssm.is_some()),
            ("exec", self.exec.is_some()),
            ("vault_pki", self.vault_pki.is_some()),
        ])
    }
}

/// `refresh:` of a secret: an interval, or `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Fetch again this often.
    Every(HumanDuration),
    /// Follow the lease the value came with: renew it at two thirds of its
    /// duration while it is renewable, fetch again when it is not (or the
    /// renewal is refused, or its max TTL is near).
    Lease,
}

impl Refresh {
    /// The interval, for `Every`.
    pub fn every(self) -> Option<std::time::Duration> {
        match self {
            Refresh::Every(every) => Some(every.get()),
            Refresh::Lease => None,
        }
    }
}

impl<'de> Deserialize<'de> for Refresh {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Refresh;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 30s or 5m, or `lease`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Refresh, E> {
                if v.trim() == "lease" {
                    return Ok(Refresh::Lease);
                }
                super::duration::parse_duration(v)
                    .map(|d| Refresh::Every(HumanDuration(d)))
                    .map_err(|err| E::custom(format!("{err}; or `lease`")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Refresh, E> {
                Err(E::custom(format!(
                    "a bare number `{v}` is ambiguous as a duration: add a unit, such as {v}s or {v}m"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Refresh, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for Refresh {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Refresh::Every(every) => every.serialize(serializer),
            Refresh::Lease => serializer.serialize_str("lease"),
        }
    }
}

impl JsonSchema for Refresh {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Refresh".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let every = generator.subschema_for::<HumanDuration>();
        schemars::json_schema!({
            "description": "An interval (a duration with a unit, such as 30s or 5m), or `lease`.",
            "anyOf": [every, { "type": "string", "const": "lease" }]
        })
    }
}

/// `file:` secret backend.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSecret {
    /// Path of the file holding the secret (trailing newline trimmed).
    pub path: String,
    /// When the file holds a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `env:` secret backend.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSecret {
    /// Name of the environment variable.
    pub name: String,
    /// When the variable holds a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `vault:` secret backend: a KV secret in Vault or OpenBao.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultSecret {
    /// The secret's path. Without `mount`, the full path including the mount
    /// (`secret/web/db`, or the KV v2 API form `secret/data/web/db`); with
    /// `mount`, the path inside it (`web/db`).
    pub path: String,
    /// The secrets engine's mount path (e.g. `secret`, `kv/team-a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The key to take from the secret's data; without it, the whole data
    /// object as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// KV v2 only: the version to read (default: the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The KV engine version: 2 (default) or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<u8>,
}

/// `vault_pki:` secret backend: a certificate issued by a PKI engine role.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultPkiSecret {
    /// The PKI engine's mount path. Default `pki`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The role to issue with.
    pub role: String,
    /// The certificate's common name; may use `{{ facts.* }}` and `{{ vars.* }}`.
    pub common_name: String,
    /// DNS subject alternative names (templated like `common_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_names: Vec<String>,
    /// IP subject alternative names (templated like `common_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_sans: Vec<String>,
    /// The certificate's lifetime (the role's default when absent). It is
    /// issued again at two thirds of its lifetime while bootplan supervises,
    /// unless `refresh` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<HumanDuration>,
    /// Where to write the certificate (PEM, mode 0644): a plain name inside
    /// the secrets directory, or an absolute path.
    pub cert_file: String,
    /// Where to write the private key (PEM, mode 0600).
    pub key_file: String,
    /// Where to write the issuing CA chain (PEM, mode 0644), if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_file: Option<String>,
}

/// `aws_secretsmanager:` secret backend.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSecretsManagerSecret {
    /// The secret's name or ARN.
    pub id: String,
    /// When the secret string is a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The version stage to read (default `AWSCURRENT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    /// A version id to read instead of a stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// `aws_ssm:` secret backend: a Parameter Store parameter, decrypted.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSsmSecret {
    /// The parameter's name (e.g. `/prod/web/db-password`).
    pub name: String,
    /// When the parameter's value is a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `exec:` secret backend: a helper command that prints the secret.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecSecret {
    /// The helper's argv (no shell). Its stdout, without the trailing newline,
    /// is the secret. Exit 69 means "store unreachable", 77 "denied", any
    /// other non-zero status "not found".
    pub command: Vec<String>,
    /// When the output is a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Limit for the helper's run. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// `to_file:` on a secret: where to write its value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    /// File name relative to `backends.files.dir` (no `..`), or an absolute path.
    pub path: String,
    /// Octal permission bits. Default `"0600"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<super::duration::Mode>,
}

/// A credential bootplan reads at run time: exactly one of `file` or `env`.
/// A literal string is accepted by the parser only so that validation can
/// reject it with a clear message: credentials never live in the plan. Any
/// other form (a list, a number, null) is refused by the parser without
/// echoing what was written.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CredentialRef {
    /// Where to read the credential.
    Ref(CredentialSource),
    /// A literal value: rejected by validation (except where documented).
    Literal(String),
}

impl<'de> Deserialize<'de> for CredentialRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CredentialRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a reference `{ file: PATH }` or `{ env: NAME }`")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CredentialRef, E> {
                Ok(CredentialRef::Literal(text.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<CredentialRef, A::Error> {
                CredentialSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(CredentialRef::Ref)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<CredentialRef, A::Error> {
                Err(not_a_reference("a list"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<CredentialRef, E> {
                Err(not_a_reference("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<CredentialRef, E> {
                Err(not_a_reference("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<CredentialRef, E> {
                Err(not_a_reference("a number"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<CredentialRef, E> {
                Err(not_a_reference("a boolean"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<CredentialRef, E> {
                Err(not_a_reference("null"))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<CredentialRef, E> {
                Err(not_a_reference("null"))
            }
        }
        fn not_a_reference<E: serde::de::Error>(found: &str) -> E {
            E::custom(format!(
                "a credential is a reference `{{ file: PATH }}` or `{{ env: NAME }}`, not {found} (what was written is not shown)"
            ))
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Where a credential is read from.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSource {
    /// A file holding the credential (trailing newline trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An environment variable of bootplan's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Settings shared by the secrets of one backend (addresses, auth, CAs).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// Vault / OpenBao connection and login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConfig>,
    /// AWS region, endpoints and network policy (Secrets Manager, SSM, IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsConfig>,
    /// Where secrets with `to_file` are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<SecretFilesConfig>,
}

/// `backends.vault`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Server address, e.g. `https://vault.internal:8200`. Default: `$VAULT_ADDR`, then `$BAO_ADDR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How bootplan logs in.
    pub auth: VaultAuth,
    /// PEM file of the CA that signed the server's certificate, added to the web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Trust only `ca_file`, not the public web roots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ca_only: bool,
    /// Allow the token and login credentials over plain `http://` to a host
    /// other than this machine (warned on every run). Default: refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Revoke bootplan's token when the run ends (not done for `token` auth
    /// unless set: that token belongs to someone else).
    #[serde(default)]
    pub revoke_on_exit: bool,
    /// Limit for one request. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Requests in flight at once (secrets are read in parallel). Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Client-side limit on requests per second to this backend (a token
    /// bucket holding one second's worth), retries included, on top of
    /// the server's own 429/`Retry-After`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
    /// Retries of failed requests (connection errors, timeouts, 5xx, 429 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<NetRetry>,
}

/// `backends.vault.auth`: exactly one method.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultAuth {
    /// A token read from a file or an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<CredentialRef>,
    /// AppRole login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle: Option<VaultAppRole>,
    /// JWT / OIDC login with a token from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<VaultJwt>,
    /// Kubernetes login with the pod's service-account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultJwt>,
    /// GCP login with the instance's identity token from the metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<VaultGcp>,
    /// Azure login with the managed identity's token from the instance metadata service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<VaultAzure>,
    /// AWS login (the `aws` method's `iam` type): a signed
    /// `sts:GetCallerIdentity` request made with the machine's AWS
    /// credentials (the chain of `backends.aws`, IMDSv2 included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<VaultAws>,
}

/// `auth.aws`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultAws {
    /// The Vault role to log in as.
    pub role: String,
    /// Auth mount path. Default `aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Sent, and signed, as `X-Vault-AWS-IAM-Server-ID`, when the auth
    /// method requires one (`iam_server_id_header_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    /// The STS URL the request is signed for; it must be the one the auth
    /// method sends it to. Default `https://sts.amazonaws.com/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_url: Option<String>,
    /// The region the request is signed for. Default `us-east-1` (the
    /// global STS endpoint's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_region: Option<String>,
}

/// `auth.gcp`: the `gcp` auth method's `iam`-free login, with a signed
/// identity token of the instance's service account (audience `vault/ROLE`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultGcp {
    /// The Vault role to log in as.
    pub role: String,
    /// Auth mount path. Default `gcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The service account whose identity is used. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The metadata server. Default `http://metadata.google.internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
}

/// `auth.azure`: the `azure` auth method's login with a managed-identity
/// access token and the VM's identity from the instance metadata service.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultAzure {
    /// The Vault role to log in as.
    pub role: String,
    /// Auth mount path. Default `azure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The token's resource (audience); it must match the auth method's
    /// configured `resource`. Default `https://management.azure.com/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The instance metadata service. Default `http://169.254.169.254`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
}

impl VaultAuth {
    pub fn method_names(&self) -> Vec<&'static str> {
        super::present_keys([
            ("token", self.token.is_some()),
            ("approle", self.approle.is_some()),
            ("jwt", self.jwt.is_some()),
            ("kubernetes", self.kubernetes.is_some()),
            ("gcp", self.gcp.is_some()),
            ("azure", self.azure.is_some()),
            ("aws", self.aws.is_some()),
        ])
    }
}

/// `auth.approle`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultAppRole {
    /// The role id: an identifier, so a literal is allowed here.
    pub role_id: CredentialRef,
    /// The secret id (or, with `wrapped: true`, a response-wrapping token for it).
    pub secret_id: CredentialRef,
    /// The secret id file holds a wrapping token: unwrap it first.
    #[serde(default)]
    pub wrapped: bool,
    /// Auth mount path. Default `approle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

/// `auth.jwt` and `auth.kubernetes`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultJwt {
    /// The Vault role to log in as.
    pub role: String,
    /// The JWT. Default for `kubernetes`:
    /// `{ file: /var/run/secrets/kubernetes.io/serviceaccount/token }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<CredentialRef>,
    /// Auth mount path. Default `jwt` or `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
}

/// `backends.aws`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region. Default: `$AWS_REGION`, `$AWS_DEFAULT_REGION`, the detected facts, then IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint overrides (tests, VPC endpoints, LocalStack-likes).
    #[serde(default)]
    pub endpoints: AwsEndpoints,
    /// Limit for one request. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Requests in flight at once (secrets are read in parallel). Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Client-side limit on requests per second to this backend (a token
    /// bucket holding one second's worth), retries included, on top of
    /// the server's own 429/`Retry-After`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
    /// Retries of failed requests (connection errors, timeouts, 5xx, 429 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<NetRetry>,
}

/// `backends.aws.endpoints`. Each defaults to the matching environment
/// variable (`AWS_ENDPOINT_URL_SECRETS_MANAGER`, `AWS_ENDPOINT_URL_SSM`,
/// then `AWS_ENDPOINT_URL`; `AWS_EC2_METADATA_SERVICE_ENDPOINT`), then to AWS.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretsmanager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    /// S3, for `download` steps with `s3://` URLs (path-style requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<String>,
    /// Instance metadata service (IMDSv2), for credentials and region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<String>,
    /// STS, for web identity credentials (`AssumeRoleWithWebIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts: Option<String>,
}

/// `retry:` of a backend: full jitter, never past the run's deadline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetRetry {
    /// Total attempts, including the first. Default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Backoff range `MIN..MAX`; full jitter. Default `200ms..5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<super::duration::Backoff>,
    /// Give up after this long in total. Default 60s (and always before the run's deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<HumanDuration>,
}

/// `backends.files`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretFilesConfig {
    /// Directory for secret files, relative to the plan file. Default: the
    /// run directory's `secrets/` (i.e. `/run/bootplan/secrets`, a tmpfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}
