//! A small etcd v3 client over the JSON gateway (`/v3/kv/put`,
//! `/v3/kv/range`, `/v3/kv/deleterange`, `/v3/lease/grant`,
//! `/v3/lease/keepalive`, `/v3/lease/revoke`, `/v3/auth/authenticate`;
//! keys and values base64), shared by registration and the fleet-wide
//! semaphores.
//!
//! Endpoints are tried in order on each request (failover). `https://`
//! endpoints trust the plan's `ca_file`; user/password auth gets a token
//! that is renewed when etcd rejects it. Every error names the URL.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::secrets::SecretValue;

/// Why an etcd request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
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
}

impl EtcdError {
    /// Whether trying again (later, or on another endpoint) could help:
    /// etcd not answering, or answering with a server error.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } => true,
            EtcdError::Status { status, .. } => *status == 429 || *status >= 500,
            EtcdError::Protocol { .. } | EtcdError::Client(_) => false,
        }
    }
}

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    pub endpoints: &'a [String],
    pub ca_file: Option<&'a Path>,
    pub ca_only: bool,
    /// Limit for each request.
    pub timeout: Duration,
}

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

/// An etcd v3 client over the JSON gateway.
pub struct EtcdClient {
    http: reqwest::Client,
    /// For watches: a connect timeout, no limit on the whole (long-lived) answer.
    watch_http: reqwest::Client,
    timeout: Duration,
    endpoints: Vec<String>,
    credentials: Option<(String, SecretValue)>,
    token: Mutex<Option<SecretValue>>,
}

impl EtcdClient {
    pub fn new(
        conn: &Connection<'_>,
        credentials: Option<(String, SecretValue)>,
    ) -> Result<EtcdClient, EtcdError> {
        let builder = crate::http::client_builder()
            .timeout(conn.timeout)
            .no_proxy();
        let http = crate::http::with_ca_file(builder, conn.ca_file, conn.ca_only)
            .map_err(EtcdError::Client)?
            .build()
            .map_err(|e| EtcdError::Client(e.to_string()))?;
        let builder = crate::http::client_builder()
            .connect_timeout(conn.timeout)
            .no_proxy();
        let watch_http = crate::http::with_ca_file(builder, conn.ca_file, conn.ca_only)
            .map_err(EtcdError::Client)?
            .build()
            .map_err(|e| EtcdError::Client(e.to_string()))?;
        Ok(EtcdClient {
            http,
            watch_http,
            timeout: conn.timeout,
            endpoints: conn.endpoints.to_vec(),
            credentials,
            token: Mutex::new(None),
        })
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    #[tracing::instrument(skip_all, fields(path = path))]
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        if self.credentials.is_some() && self.token.lock().await.is_none() {
            self.authenticate().await?;
        }
        match self.call_once(path, body).await {
            // An expired or revoked auth token: get a new one, once.
            Err(EtcdError::Status { status: 401, .. }) if self.credentials.is_some() => {
                self.authenticate().await?;
                self.call_once(path, body).await
            }
            other => other,
        }
    }

    #[tracing::instrument(skip_all, fields(path = path, endpoint = tracing::field::Empty, status = tracing::field::Empty))]
    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
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
                return Err(EtcdError::Status {
                    endpoint: endpoint.clone(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    body: text.chars().take(300).collect(),
                });
            }
            // keepalive streams: the first JSON object is the answer.
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
            return serde_json::from_str(first).map_err(|e| EtcdError::Protocol {
                path: format!("{endpoint}{path}"),
                message: e.to_string(),
            });
        }
        Err(EtcdError::Unreachable {
            path: path.to_string(),
            last,
        })
    }

    #[tracing::instrument(skip_all, fields(user = self.credentials.as_ref().map(|c| c.0.as_str())))]
    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().await = None;
        let body = json!({ "name": name, "password": password.expose() });
        let answer = self.call_once("/v3/auth/authenticate", &body).await?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| EtcdError::Protocol {
                path: "/v3/auth/authenticate".into(),
                message: "no token in the answer".into(),
            })?;
        *self.token.lock().await = Some(SecretValue::new(token.to_string()));
        Ok(())
    }

    /// Grants a lease; returns its id (a decimal string, as etcd sends it).
    #[tracing::instrument(skip_all, fields(ttl_s = ttl.as_secs()))]
    pub async fn grant(&self, ttl: Duration) -> Result<String, EtcdError> {
        let answer = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs() }))
            .await?;
        answer["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| EtcdError::Protocol {
                path: "/v3/lease/grant".into(),
                message: "no lease ID in the answer".into(),
            })
    }

    #[tracing::instrument(skip_all, fields(key = key, lease = lease))]
    pub async fn put(&self, key: &str, value: &[u8], lease: &str) -> Result<(), EtcdError> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease });
        self.call("/v3/kv/put", &body).await.map(drop)
    }

    /// Every key under `prefix`, oldest first (by creation revision);
    /// with `keys_only`, values are left out (empty).
    #[tracing::instrument(skip_all, fields(prefix = prefix))]
    pub async fn range_prefix(
        &self,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        let body = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
            "keys_only": keys_only,
        });
        let answer = self.call("/v3/kv/range", &body).await?;
        let protocol = |message: &str| EtcdError::Protocol {
            path: "/v3/kv/range".into(),
            message: message.to_string(),
        };
        let Some(kvs) = answer.get("kvs") else {
            return Ok(Vec::new());
        };
        let kvs = kvs
            .as_array()
            .ok_or_else(|| protocol("`kvs` is not a list"))?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let key = kv["key"]
                .as_str()
                .and_then(|k| B64.decode(k).ok())
                .and_then(|k| String::from_utf8(k).ok())
                .ok_or_else(|| protocol("a key is not base64 text"))?;
            let value = match kv.get("value").and_then(Value::as_str) {
                Some(v) => B64
                    .decode(v)
                    .map_err(|_| protocol("a value is not base64"))?,
                None => Vec::new(),
            };
            out.push(KeyValue {
                key,
                value,
                create_revision: int(&kv["create_revision"]),
                lease: int(&kv["lease"]),
            });
        }
        // The answer is sorted already; ties cannot happen, but be sure.
        out.sort_by_key(|kv| kv.create_revision);
        Ok(out)
    }

    /// Refreshes the lease; returns the TTL left (0 when the lease is gone).
    #[tracing::instrument(skip_all, fields(lease = lease))]
    pub async fn keepalive(&self, lease: &str) -> Result<i64, EtcdError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": lease }))
            .await?;
        Ok(int(&answer["result"]["TTL"]))
    }

    #[tracing::instrument(skip_all, fields(lease = lease))]
    pub async fn revoke(&self, lease: &str) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease }))
            .await
            .map(drop)
    }

    #[tracing::instrument(skip_all, fields(key = key))]
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))
            .await
            .map(drop)
    }
}

impl EtcdClient {
    /// Opens a watch on every key under `prefix` (`/v3/watch`, a stream of
    /// JSON lines) on the first endpoint that confirms it within the
    /// request timeout. Events after the confirmation are all seen.
    #[tracing::instrument(skip_all, fields(prefix = prefix))]
    pub async fn watch_prefix(&self, prefix: &str) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
        }});
        let token = self
            .token
            .lock()
            .await
            .as_ref()
            .map(|t| t.expose().to_string());
        let path = "/v3/watch";
        let mut last = String::from("no endpoints");
        for endpoint in &self.endpoints {
            let mut request = self
                .watch_http
                .post(format!("{endpoint}{path}"))
                .json(&body);
            if let Some(token) = &token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let opened = tokio::time::timeout(self.timeout, async {
                let resp = request
                    .send()
                    .await
                    .map_err(|e| format!("{endpoint}: {}", crate::http::describe_error(&e)))?;
                if !resp.status().is_success() {
                    return Err(format!("{endpoint}: HTTP {}", resp.status()));
                }
                let mut watch = Watch {
                    resp,
                    buf: Vec::new(),
                    endpoint: endpoint.clone(),
                };
                match watch.next_message().await {
                    Ok(m) if m["result"]["created"] == true => Ok(watch),
                    Ok(m) => Err(format!("{endpoint}: the watch was not created: {m}")),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
            match opened {
                Ok(Ok(watch)) => return Ok(watch),
                Ok(Err(why)) => last = why,
                Err(_) => last = format!("{endpoint}: no answer within {:?}", self.timeout),
            }
        }
        Err(EtcdError::Unreachable {
            path: path.to_string(),
            last,
        })
    }
}

/// An open watch.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
    endpoint: String,
}

impl Watch {
    /// The next message of the stream.
    async fn next_message(&mut self) -> Result<Value, EtcdError> {
        let broken = |message: String| EtcdError::Protocol {
            path: format!("{}/v3/watch", self.endpoint),
            message,
        };
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map_err(|e| broken(e.to_string()));
            }
            // One message is small; a peer that never ends a line is not etcd.
            if self.buf.len() > 1 << 20 {
                return Err(broken("a message over 1 MiB".into()));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => return Err(broken("the watch ended".into())),
                Err(e) => return Err(broken(crate::http::describe_error(&e))),
            }
        }
    }

    /// The keys deleted in the next batch of events that deletes any.
    pub async fn deleted(&mut self) -> Result<Vec<String>, EtcdError> {
        loop {
            let message = self.next_message().await?;
            let result = &message["result"];
            if result["canceled"] == true {
                return Err(EtcdError::Protocol {
                    path: format!("{}/v3/watch", self.endpoint),
                    message: format!("the watch was cancelled: {}", result["cancel_reason"]),
                });
            }
            let keys: Vec<String> = result["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["type"] == "DELETE")
                .filter_map(|e| B64.decode(e["kv"]["key"].as_str()?).ok())
                .filter_map(|k| String::from_utf8(k).ok())
                .collect();
            if !keys.is_empty() {
                return Ok(keys);
            }
        }
    }
}

/// etcd sends 64-bit integers as strings in JSON.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with
/// its last byte below 0xff incremented (etcd's `WithPrefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&json!(null)), 0);
    }
}
