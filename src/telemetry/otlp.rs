//! OTLP/HTTP export of finished spans without a thread of its own.
//!
//! [`Queue`] is the tracer's span processor: a finished span is pushed into
//! a bounded in-memory buffer (one short lock, no I/O; beyond [`RETAIN_MAX`]
//! spans it is dropped and counted). A flush turns the buffer into one
//! protobuf `ExportTraceServiceRequest` and POSTs it with the async HTTP
//! client, from whatever tokio runtime is running:
//!
//! - a flush task, spawned on the runtime current when the first span ends
//!   (the run's `current_thread` runtime), wakes every [`FLUSH_INTERVAL`] or
//!   when [`BATCH`] spans wait; it dies with its runtime and is spawned
//!   again on the next runtime a span ends in;
//! - [`Exporter::drain`], at the end of the run on the run's runtime, waits
//!   for a request under way (never sending a batch twice) and sends what is
//!   left, bounded by a timeout;
//! - [`Exporter::final_flush`] reports what is still left, and sends it on
//!   a small runtime of its own (bounded, never waiting on a thread it
//!   started) where no run's runtime drained it (a run that ended before
//!   its steps).
//!
//! Encoded batches stay until the collector accepts them (it may not be up
//! yet: the plan often starts it) and are sent again, in front of the next
//! batch: serialized requests concatenate into one valid request (repeated
//! fields merge). Retained spans are bounded by [`RETAIN_MAX`], oldest batch
//! dropped (and counted) first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use prost::Message;

/// Most spans kept (waiting, or refused and to be sent again).
pub const RETAIN_MAX: usize = 8192;
/// Spans that wake the flush task before its interval is up.
pub const BATCH: usize = 512;
/// How often the flush task sends what is waiting.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The export side: buffer, retained batches, counters. Shared by the span
/// processor, the flush task and the final flush.
#[derive(Debug)]
pub struct Exporter {
    url: String,
    resource: ResourceAttributesWithSchema,
    /// Finished spans not yet encoded.
    waiting: Mutex<Vec<SpanData>>,
    /// Encoded batches the collector has not accepted yet, oldest first.
    unsent: Mutex<Unsent>,
    /// Spans given up on: beyond the bound while waiting or retained.
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
    /// Whether a flush task is alive on some runtime.
    flusher: AtomicBool,
    /// The flush task's client (its pooled connection belongs to the
    /// runtime the task runs on).
    client: Mutex<Option<reqwest::Client>>,
    /// Held while a request is out: one at a time, so the end-of-run flush
    /// waits for the answer to one under way instead of sending it twice.
    sending: tokio::sync::Mutex<()>,
    /// The end-of-run flush ran on the run's runtime, with this outcome.
    drained: Mutex<Option<Result<(), String>>>,
}

#[derive(Debug, Default)]
struct Unsent {
    batches: VecDeque<Batch>,
    spans: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Batch {
    seq: u64,
    body: Vec<u8>,
    spans: usize,
}

/// What the final flush left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// Spans still retained (the collector did not take them).
    pub unsent: usize,
    /// Spans dropped beyond [`RETAIN_MAX`] during the run.
    pub dropped: u64,
    /// Why the last attempt failed, if it did.
    pub reason: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exporter {
    pub fn new(url: String, resource: &Resource) -> Arc<Exporter> {
        Arc::new(Exporter {
            url,
            resource: resource.into(),
            waiting: Mutex::new(Vec::new()),
            unsent: Mutex::new(Unsent::default()),
            dropped: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            flusher: AtomicBool::new(false),
            client: Mutex::new(None),
            sending: tokio::sync::Mutex::new(()),
            drained: Mutex::new(None),
        })
    }

    /// Where the spans go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Buffers one finished span: O(1), never blocks on I/O.
    fn push(&self, span: SpanData) {
        let len = {
            let mut waiting = lock(&self.waiting);
            if waiting.len() >= RETAIN_MAX {
                drop(waiting);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            waiting.push(span);
            waiting.len()
        };
        if len == BATCH {
            self.wake.notify_one();
        }
    }

    /// Encodes the waiting spans into a retained batch (dropping the oldest
    /// batches beyond the bound) and returns every retained batch as one
    /// request body, with the newest batch's sequence number.
    fn take_body(&self) -> Option<(Vec<u8>, u64)> {
        let spans = std::mem::take(&mut *lock(&self.waiting));
        let mut unsent = lock(&self.unsent);
        if !spans.is_empty() {
            let count = spans.len();
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(spans, &self.resource),
            };
            let seq = unsent.next_seq;
            unsent.next_seq += 1;
            unsent.spans += count;
            unsent.batches.push_back(Batch {
                seq,
                body: request.encode_to_vec(),
                spans: count,
            });
            while unsent.spans > RETAIN_MAX && unsent.batches.len() > 1 {
                let oldest = unsent.batches.pop_front().expect("more than one batch");
                unsent.spans -= oldest.spans;
                self.dropped
                    .fetch_add(oldest.spans as u64, Ordering::Relaxed);
            }
        }
        let last = unsent.batches.back()?.seq;
        let size = unsent.batches.iter().map(|b| b.body.len()).sum();
        let mut body = Vec::with_capacity(size);
        for batch in &unsent.batches {
            body.extend_from_slice(&batch.body);
        }
        Some((body, last))
    }

    /// The collector took every batch up to `last`.
    fn accepted(&self, last: u64) {
        let mut unsent = lock(&self.unsent);
        while unsent.batches.front().is_some_and(|b| b.seq <= last) {
            let batch = unsent.batches.pop_front().expect("a front batch");
            unsent.spans -= batch.spans;
        }
    }

    /// Sends everything waiting or retained in one request, after any
    /// request under way. A refusal or a failure keeps it for the next flush.
    async fn flush(&self, client: &reqwest::Client) -> Result<(), String> {
        let _turn = self.sending.lock().await;
        self.send(client).await
    }

    async fn send(&self, client: &reqwest::Client) -> Result<(), String> {
        let Some((body, last)) = self.take_body() else {
            return Ok(());
        };
        let response = client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| crate::http::describe_error(&e))?;
        let status = response.status();
        // Read the (small) answer so the connection can be reused.
        let _ = response.bytes().await;
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        self.accepted(last);
        Ok(())
    }

    fn client(&self, pooled: bool) -> Result<reqwest::Client, String> {
        let mut builder = crate::http::client_builder()
            .timeout(EXPORT_TIMEOUT)
            .no_proxy();
        if !pooled {
            builder = builder.pool_max_idle_per_host(0);
        }
        if crate::http::needs_no_roots(&self.url) {
            builder = builder.tls_certs_only([]);
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// Starts the flush task on the current runtime unless one is alive.
    fn ensure_flusher(self: &Arc<Self>) {
        if self.flusher.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let alive = FlusherAlive(self.clone());
        runtime.spawn(async move {
            let exporter = alive.0.clone();
            let _alive = alive;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                    () = exporter.wake.notified() => {}
                }
                // A failure keeps the spans; the final flush reports it.
                if let Ok(client) = exporter.pooled_client() {
                    let _ = exporter.flush(&client).await;
                }
            }
        });
    }

    fn pooled_client(&self) -> Result<reqwest::Client, String> {
        let mut slot = lock(&self.client);
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        Ok(slot.insert(self.client(true)?).clone())
    }

    /// The end-of-run flush on the run's own runtime (where the flush task's
    /// connection is): waits for a request under way, then sends the rest,
    /// all within `timeout`. [`Exporter::final_flush`] then only reports.
    pub async fn drain(&self, timeout: Duration) {
        let outcome = tokio::time::timeout(timeout, async {
            let client = self.pooled_client()?;
            self.flush(&client).await
        })
        .await
        .unwrap_or_else(|_| Err(not_flushed(timeout)));
        *lock(&self.drained) = Some(outcome);
    }

    /// Sends what is left, within `timeout`, on a runtime of its own (or, if
    /// called inside a runtime, on a thread of its own); it returns at the
    /// timeout whatever the collector does.
    pub fn final_flush(self: &Arc<Self>, timeout: Duration) -> Undelivered {
        // After a failed drain the collector had its chance; after a good
        // one only spans that ended since (a report's calls) are left.
        if let Some(Err(reason)) = lock(&self.drained).take() {
            return self.undelivered(Some(reason));
        }
        if self.undelivered(None).unsent == 0 {
            return self.undelivered(None);
        }
        let exporter = self.clone();
        let work = move || -> Option<String> {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return Some(format!("cannot start the flush runtime: {e}")),
            };
            let result = runtime.block_on(async {
                // A connection of its own: a pooled one belongs to the run's
                // runtime, which nothing drives any more.
                let client = exporter.client(false)?;
                // A request under way on a runtime nothing drives any more
                // never ends: send without waiting for it.
                let _turn = exporter.sending.try_lock();
                tokio::time::timeout(timeout, exporter.send(&client))
                    .await
                    .unwrap_or_else(|_| Err(not_flushed(timeout)))
            });
            // Never wait for a blocking task (a name lookup) to end.
            runtime.shutdown_background();
            result.err()
        };
        let reason = if tokio::runtime::Handle::try_current().is_ok() {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("bootplan-trace-flush".into())
                .spawn(move || {
                    let _ = tx.send(work());
                });
            match spawned {
                Err(e) => Some(format!("cannot start the flush thread: {e}")),
                Ok(_) => rx
                    .recv_timeout(timeout + Duration::from_millis(100))
                    .unwrap_or_else(|_| Some(not_flushed(timeout))),
            }
        } else {
            work()
        };
        self.undelivered(reason)
    }

    fn undelivered(&self, reason: Option<String>) -> Undelivered {
        Undelivered {
            unsent: lock(&self.unsent).spans + lock(&self.waiting).len(),
            dropped: self.dropped.load(Ordering::Relaxed),
            reason,
        }
    }
}

fn not_flushed(timeout: Duration) -> String {
    format!(
        "spans not flushed within {}",
        humantime::format_duration(timeout)
    )
}

/// Marks the flush task dead when its runtime drops it.
struct FlusherAlive(Arc<Exporter>);

impl Drop for FlusherAlive {
    fn drop(&mut self) {
        self.0.flusher.store(false, Ordering::Release);
    }
}

/// The span processor: finished spans into the exporter's buffer.
#[derive(Debug)]
pub struct Queue(pub Arc<Exporter>);

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.push(span);
        self.0.ensure_flusher();
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// The final flush is [`Exporter::final_flush`], bounded by the caller.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    fn pipeline(url: &str) -> (Arc<Exporter>, SdkTracerProvider) {
        let resource = Resource::builder().with_service_name("t").build();
        let exporter = Exporter::new(url.to_string(), &resource);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queue(exporter.clone()))
            .with_resource(resource)
            .build();
        (exporter, provider)
    }

    #[test]
    fn spans_beyond_the_bound_are_dropped_and_counted() {
        // Port 9 on loopback: nothing listens, every export fails fast.
        let (exporter, provider) = pipeline("http://127.0.0.1:9/v1/traces");
        let tracer = provider.tracer("t");
        for _ in 0..RETAIN_MAX + 5 {
            tracer.start("s").end();
        }
        assert_eq!(exporter.dropped.load(Ordering::Relaxed), 5);
        let left = exporter.final_flush(Duration::from_secs(2));
        assert_eq!(left.unsent, RETAIN_MAX, "{left:?}");
        assert_eq!(left.dropped, 5);
        assert!(left.reason.is_some());
        // A second batch pushes the oldest retained one out.
        for _ in 0..10 {
            tracer.start("s").end();
        }
        let left = exporter.final_flush(Duration::from_secs(2));
        assert_eq!(left.unsent, 10, "{left:?}");
        assert_eq!(left.dropped, 5 + RETAIN_MAX as u64);
    }

    #[test]
    fn retained_batches_concatenate_into_one_request() {
        let (exporter, provider) = pipeline("http://127.0.0.1:9/v1/traces");
        let tracer = provider.tracer("t");
        tracer.start("first").end();
        let (one, _) = exporter.take_body().unwrap();
        tracer.start("second").end();
        let (both, last) = exporter.take_body().unwrap();
        assert_eq!(&both[..one.len()], &one[..]);
        let request = ExportTraceServiceRequest::decode(both.as_slice()).unwrap();
        let names: Vec<String> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names, ["first", "second"]);
        exporter.accepted(last);
        assert!(exporter.take_body().is_none());
        assert_eq!(lock(&exporter.unsent).spans, 0);
    }
}
