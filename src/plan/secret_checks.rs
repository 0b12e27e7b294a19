//! Checks of the `secrets:` and `backends:` sections that go beyond "exactly
//! one backend": credentials must be references (never literals in the plan),
//! each backend a secret uses must be configured, secret files must stay
//! inside their directory. Pure functions over the raw types, no I/O.

use indexmap::IndexMap;
use serde_saphyr::Spanned;

use super::secret_source::{
    BackendsConfig, CredentialRef, CredentialSource, NetRetry, SecretSource,
};

/// The environment variables that hold secrets or credentials bootplan
/// uses: `env` secrets, credential references, and AWS's key variables when
/// the plan reads from AWS. Their values are registered with the redactor
/// at start, they are treated like `secrets.*` in templates, and children
/// do not inherit them unless a step's `env:` passes one on.
pub fn secret_env_names(
    secrets: &IndexMap<String, Spanned<SecretSource>>,
    backends: &BackendsConfig,
) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut uses_aws = false;
    for source in secrets.values() {
        let source = &source.value;
        if let Some(env) = &source.env {
            names.insert(env.name.clone());
        }
        uses_aws |= source.aws_secretsmanager.is_some() || source.aws_ssm.is_some();
    }
    if let Some(vault) = &backends.vault {
        let auth = &vault.auth;
        let refs = [
            auth.token.as_ref(),
            auth.approle.as_ref().map(|a| &a.secret_id),
            auth.jwt.as_ref().and_then(|j| j.jwt.as_ref()),
            auth.kubernetes.as_ref().and_then(|j| j.jwt.as_ref()),
        ];
        for r in refs.into_iter().flatten() {
            if let CredentialRef::Ref(CredentialSource {
                env: Some(name), ..
            }) = r
            {
                names.insert(name.clone());
            }
        }
    }
    if uses_aws {
        names.extend(["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"].map(String::from));
    }
    names
}

/// One problem: the field path, the message, and a hint.
pub type Problem = (String, String, Option<String>);

/// Every problem in the secrets and backend settings.
pub fn check(
    secrets: &IndexMap<String, Spanned<SecretSource>>,
    backends: &BackendsConfig,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (name, source) in secrets {
        check_secret(name, &source.value, backends, &mut problems);
    }
    if let Some(vault) = &backends.vault {
        let methods = vault.auth.method_names();
        if methods.len() != 1 {
            problems.push((
                "backends.vault.auth".into(),
                format!(
                    "name exactly one auth method, found {}",
                    if methods.is_empty() {
                        "none".to_string()
                    } else {
                        methods.join(", ")
                    }
                ),
                Some("e.g. `auth: { token: { env: VAULT_TOKEN } }`".into()),
            ));
        }
        let auth = &vault.auth;
        if let Some(token) = &auth.token {
            credential("backends.vault.auth.token", token, false, &mut problems);
        }
        if let Some(approle) = &auth.approle {
            let f = "backends.vault.auth.approle";
            credential(
                &format!("{f}.role_id"),
                &approle.role_id,
                true,
                &mut problems,
            );
            credential(
                &format!("{f}.secret_id"),
                &approle.secret_id,
                false,
                &mut problems,
            );
        }
        for (method, jwt) in [("jwt", &auth.jwt), ("kubernetes", &auth.kubernetes)] {
            let Some(jwt) = jwt else { continue };
            match &jwt.jwt {
                Some(r) => credential(
                    &format!("backends.vault.auth.{method}.jwt"),
                    r,
                    false,
                    &mut problems,
                ),
                None if method == "jwt" => problems.push((
                    "backends.vault.auth.jwt.jwt".into(),
                    "the JWT login needs a `jwt` reference".into(),
                    Some("e.g. `jwt: { file: /run/identity/token }`".into()),
                )),
                None => {}
            }
        }
        let clouds = [
            ("gcp", auth.gcp.as_ref().map(|g| (&g.role, &g.metadata_url))),
            (
                "azure",
                auth.azure.as_ref().map(|a| (&a.role, &a.metadata_url)),
            ),
            ("aws", auth.aws.as_ref().map(|a| (&a.role, &a.sts_url))),
        ];
        for (method, login) in clouds {
            let Some((role, metadata_url)) = login else {
                continue;
            };
            if role.trim().is_empty() {
                problems.push((
                    format!("backends.vault.auth.{method}.role"),
                    "it is empty".into(),
                    None,
                ));
            }
            if let Some(url) = metadata_url {
                check_url(
                    &format!("backends.vault.auth.{method}.metadata_url"),
                    url,
                    &mut problems,
                );
            }
        }
        if let Some(addr) = &vault.address {
            check_url("backends.vault.address", addr, &mut problems);
            if reqwest::Url::parse(addr).is_ok()
                && let Err(message) = crate::http::credential_transport(
                    addr,
                    vault.insecure_http,
                    "the Vault token and login credentials",
                )
            {
                problems.push((
                    "backends.vault.address".into(),
                    message,
                    Some("Vault and OpenBao serve TLS with `tls_cert_file`/`tls_key_file` on the listener".into()),
                ));
            }
        }
        check_concurrency(
            "backends.vault.concurrency",
            vault.concurrency,
            &mut problems,
        );
        check_rate(
            "backends.vault.max_requests_per_second",
            vault.max_requests_per_second,
            &mut problems,
        );
        if vault.ca_only && vault.ca_file.is_none() {
            problems.push((
                "backends.vault.ca_only".into(),
                "`ca_only` needs a `ca_file` to trust".into(),
                None,
            ));
        }
        check_retry("backends.vault.retry", vault.retry.as_ref(), &mut problems);
    }
    if let Some(aws) = &backends.aws {
        let e = &aws.endpoints;
        for (field, url) in [
            ("secretsmanager", &e.secretsmanager),
            ("ssm", &e.ssm),
            ("imds", &e.imds),
            ("sts", &e.sts),
        ] {
            if let Some(url) = url {
                check_url(
                    &format!("backends.aws.endpoints.{field}"),
                    url,
                    &mut problems,
                );
            }
        }
        check_retry("backends.aws.retry", aws.retry.as_ref(), &mut problems);
        check_concurrency("backends.aws.concurrency", aws.concurrency, &mut problems);
        check_rate(
            "backends.aws.max_requests_per_second",
            aws.max_requests_per_second,
            &mut problems,
        );
    }
    problems
}

fn check_secret(
    name: &str,
    source: &SecretSource,
    backends: &BackendsConfig,
    problems: &mut Vec<Problem>,
) {
    let field = format!("secrets.{name}");
    if let Some(vault) = &source.vault {
        if backends.vault.is_none() {
            problems.push((
                format!("{field}.vault"),
                "a vault secret needs `backends.vault` (address and auth)".into(),
                Some("add `backends: { vault: { address: ..., auth: { token: { env: VAULT_TOKEN } } } }`".into()),
            ));
        }
        if let Some(kv) = vault.kv
            && kv != 1
            && kv != 2
        {
            problems.push((
                format!("{field}.vault.kv"),
                format!("unknown KV engine version {kv}"),
                Some("use 1 or 2".into()),
            ));
        }
        if vault.version.is_some() && vault.kv == Some(1) {
            problems.push((
                format!("{field}.vault.version"),
                "KV v1 secrets have no versions".into(),
                Some("remove `version`, or use `kv: 2`".into()),
            ));
        }
        if vault.path.trim_matches('/').is_empty() {
            problems.push((
                format!("{field}.vault.path"),
                "the path is empty".into(),
                None,
            ));
        }
    }
    if source.refresh == Some(super::secret_source::Refresh::Lease) && source.vault.is_none() {
        problems.push((
            format!("{field}.refresh"),
            "`refresh: lease` follows the lease of a `vault` secret".into(),
            Some("give other secrets an interval, e.g. `refresh: 5m`".into()),
        ));
    }
    if source
        .refresh
        .and_then(super::secret_source::Refresh::every)
        .is_some_and(|r| r < std::time::Duration::from_secs(1))
    {
        problems.push((
            format!("{field}.refresh"),
            "a refresh interval is at least 1s".into(),
            Some("e.g. `refresh: 5m`".into()),
        ));
    }
    if let Some(exec) = &source.exec
        && exec.command.first().is_none_or(|p| p.is_empty())
    {
        problems.push((
            format!("{field}.exec.command"),
            "the helper command is empty".into(),
            Some("e.g. `command: [\"/usr/local/bin/get-secret\", \"db\"]`".into()),
        ));
    }
    if let Some(pki) = &source.vault_pki {
        check_pki(&field, pki, backends, problems);
    }
    if let Some(change) = &source.on_change
        && change.check.is_some()
    {
        problems.push((
            format!("{field}.on_change.check"),
            "a secret's `on_change` has a `reload` only".into(),
            Some("checks belong to the `template` steps that render the secret".into()),
        ));
    }
    if let Some(file) = &source.to_file {
        check_file_name(&format!("{field}.to_file.path"), &file.path, problems);
        if let Some(super::duration::Mode(bits)) = file.mode
            && bits & 0o007 != 0
        {
            problems.push((
                format!("{field}.to_file.mode"),
                format!("mode {bits:04o} makes the secret file readable by every user"),
                Some("use 0600 or 0640".into()),
            ));
        }
    }
}

fn check_pki(
    field: &str,
    pki: &super::secret_source::VaultPkiSecret,
    backends: &BackendsConfig,
    problems: &mut Vec<Problem>,
) {
    if backends.vault.is_none() {
        problems.push((
            format!("{field}.vault_pki"),
            "a vault_pki secret needs `backends.vault` (address and auth)".into(),
            Some("add `backends: { vault: { address: ..., auth: { token: { env: VAULT_TOKEN } } } }`".into()),
        ));
    }
    for (key, value) in [("role", &pki.role), ("common_name", &pki.common_name)] {
        if value.trim().is_empty() {
            problems.push((
                format!("{field}.vault_pki.{key}"),
                "it is empty".into(),
                None,
            ));
        }
    }
    let files = [
        ("cert_file", Some(&pki.cert_file)),
        ("key_file", Some(&pki.key_file)),
        ("chain_file", pki.chain_file.as_ref()),
    ];
    for (key, path) in files {
        if let Some(path) = path {
            check_file_name(&format!("{field}.vault_pki.{key}"), path, problems);
        }
    }
}

/// A secret's file: a plain name inside the secrets directory, or an
/// absolute path, never with `..`.
fn check_file_name(field: &str, name: &str, problems: &mut Vec<Problem>) {
    let path = std::path::Path::new(name);
    if name.is_empty()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        problems.push((
            field.into(),
            format!("`{name}` is not a file name inside the secrets directory"),
            Some("use a plain name such as `db-password`, or an absolute path".into()),
        ));
    }
}

/// A credential must come from a file or the environment. `literal_ok` is
/// for identifiers that are not secret (an AppRole role id).
fn credential(field: &str, r: &CredentialRef, literal_ok: bool, problems: &mut Vec<Problem>) {
    match r {
        CredentialRef::Literal(_) if literal_ok => {}
        CredentialRef::Literal(_) => problems.push((
            field.into(),
            "a credential is written inline in the plan; plans are not secret".into(),
            Some(
                "reference it instead: `{ file: /run/keys/vault-token }` or `{ env: VAULT_TOKEN }`"
                    .into(),
            ),
        )),
        CredentialRef::Ref(CredentialSource { file, env }) => {
            if file.is_some() == env.is_some() {
                problems.push((
                    field.into(),
                    "name exactly one of `file` or `env`".into(),
                    None,
                ));
            }
        }
    }
}

fn check_url(field: &str, url: &str, problems: &mut Vec<Problem>) {
    if reqwest::Url::parse(url).is_err()
        || !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.push((
            field.into(),
            format!("`{url}` is not an http(s) URL"),
            Some("e.g. `https://vault.internal:8200`".into()),
        ));
    }
}

fn check_concurrency(field: &str, concurrency: Option<u32>, problems: &mut Vec<Problem>) {
    if concurrency == Some(0) {
        problems.push((
            field.into(),
            "at least one request must be allowed in flight".into(),
            Some("e.g. `concurrency: 8` (the default)".into()),
        ));
    }
}

fn check_rate(field: &str, rate: Option<f64>, problems: &mut Vec<Problem>) {
    if let Some(rate) = rate
        && !(crate::retry::TokenBucket::MIN_RATE..=1e6).contains(&rate)
    {
        problems.push((
            field.into(),
            format!("{rate} requests per second is not a rate bootplan can keep (0.01 to 1000000)"),
            Some("e.g. `max_requests_per_second: 20`".into()),
        ));
    }
}

fn check_retry(field: &str, retry: Option<&NetRetry>, problems: &mut Vec<Problem>) {
    let Some(retry) = retry else { return };
    if retry.attempts == Some(0) {
        problems.push((
            format!("{field}.attempts"),
            "attempts counts the first try too; it must be at least 1".into(),
            None,
        ));
    }
}
