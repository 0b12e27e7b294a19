//! Where every HTTP client starts: the rustls crypto provider (ring, no C
//! toolchain) is installed once, and each client says it is bootplan. Callers
//! add what is theirs: timeouts, `no_proxy` for link-local and loopback
//! services, private CAs, redirect policy.

use std::sync::Once;

pub const USER_AGENT: &str = concat!("bootplan/", env!("CARGO_PKG_VERSION"));

fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An async client builder with the crypto provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().user_agent(USER_AGENT)
}

/// A blocking client builder (for exporters on their own threads).
pub fn blocking_client_builder() -> reqwest::blocking::ClientBuilder {
    install_crypto_provider();
    reqwest::blocking::Client::builder().user_agent(USER_AGENT)
}

/// Whether a client talks to `url` only, and it is plain `http://`: it
/// then needs no trust roots. Reading the system's (a file per CA) costs
/// milliseconds of a short run; a client built without them still refuses
/// every TLS peer, so an https redirect fails instead of going unverified.
pub fn needs_no_roots(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// Adds a plan's CA bundle to a client's trust roots: beside the public
/// web roots, or, with `only`, as the only root.
pub fn with_ca_file(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&std::path::Path>,
    only: bool,
) -> Result<reqwest::ClientBuilder, String> {
    let Some(path) = ca_file else {
        return Ok(builder);
    };
    let pem = std::fs::read(path)
        .map_err(|err| format!("cannot read CA file {}: {err}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|err| format!("CA file {} is not PEM: {err}", path.display()))?;
    Ok(if only {
        builder.tls_certs_only(certs)
    } else {
        builder.tls_certs_merge(certs)
    })
}

/// Whether credentials may go to `url`: over `https://`, or over plain
/// `http://` to this machine (loopback). Anything else needs the plan's
/// explicit `insecure_http: true`, and then returns a warning to log.
/// `what` names the credential ("the Vault token").
pub fn credential_transport(
    url: &str,
    insecure_http: bool,
    what: &str,
) -> Result<Option<String>, String> {
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
    if parsed.scheme() != "http" || is_loopback(&parsed) {
        return Ok(None);
    }
    let host = parsed.host_str().unwrap_or("");
    if insecure_http {
        Ok(Some(format!(
            "sending {what} over plain http to {host}: anyone on the network path can read it (insecure_http: true)"
        )))
    } else {
        Err(format!(
            "refusing to send {what} over plain http to {host}: use https://, or set `insecure_http: true` to accept the risk"
        ))
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// A request error for messages: the kind of failure and its root cause,
/// e.g. "cannot connect: Connection refused" (reqwest's own text stops at
/// "error sending request"). The URL is left to the caller, who names it.
pub fn describe_error(err: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = err;
    while let Some(inner) = root.source() {
        root = inner;
    }
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    format!("{kind}: {root}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_over_https_or_to_this_machine_only() {
        for ok in [
            "https://vault.internal:8200",
            "http://127.0.0.1:8200",
            "http://127.9.9.9:8200",
            "http://[::1]:8200",
            "http://localhost:8200",
        ] {
            assert_eq!(
                credential_transport(ok, false, "the token"),
                Ok(None),
                "{ok}"
            );
        }
        let err = credential_transport("http://10.1.2.3:8200", false, "the token").unwrap_err();
        assert!(
            err.contains("refusing to send the token over plain http to 10.1.2.3"),
            "{err}"
        );
        let warning = credential_transport("http://vault.internal:8200", true, "the token")
            .unwrap()
            .unwrap();
        assert!(warning.contains("insecure_http: true"), "{warning}");
    }
}
