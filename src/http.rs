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
