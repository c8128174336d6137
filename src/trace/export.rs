//! Getting spans out: a bounded queue per pipeline that the request path fills without ever
//! waiting (a full queue drops the span and counts it), and the [`TraceExporter`] background
//! service that drains it in batches to the OTLP/HTTP receiver (protobuf) with
//! `opentelemetry-otlp`'s exporter. A dead or slow receiver costs spans, never request time.
//!
//! The SDK's own `BatchSpanProcessor` is not used: it does not say how many spans it dropped,
//! and it owns a thread per provider, where a reload may change the endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::carry::Carry;
use crate::metrics::tracing::TRACING_METRICS;

/// Spans that may wait for the exporter; past this they are dropped.
pub const QUEUE: usize = 2048;
/// Spans in one export request at most.
pub const BATCH: usize = 512;
/// How long a batch that is not full waits for more spans.
const LINGER: Duration = Duration::from_millis(200);
/// One export request's limit, retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest receiver answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A receiver's queue: where the requests of every generation with the same `tracing:`
/// endpoint and service name put their spans.
pub struct Pipeline {
    endpoint: String,
    service_name: String,
    tx: mpsc::Sender<SpanData>,
    /// Taken by the exporter when it starts on this pipeline.
    rx: Mutex<Option<mpsc::Receiver<SpanData>>>,
}

impl Pipeline {
    /// An empty queue for spans to `endpoint` as `service_name`. Nothing reads it yet.
    pub fn new(endpoint: String, service_name: String) -> Pipeline {
        let (tx, rx) = mpsc::channel(QUEUE);
        Pipeline {
            endpoint,
            service_name,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Where the spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Their `service.name`.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Queue `span`, or drop and count it when the queue is full (or no longer read).
    pub fn push(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            TRACING_METRICS.dropped.inc();
        }
    }
}

impl Carry for Pipeline {
    type Key = (String, String);

    fn carry_key(&self) -> Self::Key {
        (self.endpoint.clone(), self.service_name.clone())
    }
}

/// The background service that exports the serving generation's pipeline.
pub struct TraceExporter {
    pipeline: Arc<ArcSwapOption<Pipeline>>,
}

impl TraceExporter {
    /// Export whatever pipeline `pipeline` holds (none while `tracing:` is absent).
    pub fn new(pipeline: Arc<ArcSwapOption<Pipeline>>) -> TraceExporter {
        TraceExporter { pipeline }
    }
}

/// The pipeline being exported, with its queue's reader and its exporter.
struct Running {
    pipeline: Arc<Pipeline>,
    rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
}

impl Running {
    /// Start on `pipeline`; `None` when no exporter can be made (its queue then stays for a
    /// later try) or its queue is read already.
    fn start(pipeline: Arc<Pipeline>) -> Option<Running> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .ok()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Http(client))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(pipeline.endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build();
        let mut exporter = match exporter {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(endpoint = %pipeline.endpoint, error = %e, "tracing exporter not made");
                return None;
            }
        };
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(pipeline.service_name.clone())
                .build(),
        );
        let rx = pipeline.rx.lock().ok()?.take()?;
        Some(Running {
            pipeline,
            rx,
            exporter,
        })
    }

    /// Take up to [`BATCH`] spans: wait for one (at most `wait`), then linger for more.
    async fn batch(&mut self, wait: Duration) -> Vec<SpanData> {
        let mut batch = Vec::with_capacity(BATCH);
        let _ = tokio::time::timeout(wait, self.rx.recv_many(&mut batch, BATCH)).await;
        if !batch.is_empty() && batch.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        batch
    }

    /// Send `batch` and count the result.
    async fn export(&self, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        match self.exporter.export(batch).await {
            Ok(()) => {
                TRACING_METRICS.exports_ok.inc();
                TRACING_METRICS.exported.inc_by(n);
            }
            Err(e) => {
                TRACING_METRICS.exports_failed.inc();
                tracing::debug!(endpoint = %self.pipeline.endpoint, error = %e, "span export failed");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for TraceExporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut running: Option<Running> = None;
        loop {
            let want = self.pipeline.load_full();
            let same = match (&want, &running) {
                (Some(w), Some(r)) => Arc::ptr_eq(w, &r.pipeline),
                (None, None) => true,
                _ => false,
            };
            if !same {
                // What the old receiver's queue still holds goes out once, on its own.
                if let Some(mut old) = running.take() {
                    tokio::spawn(async move {
                        let batch = old.batch(Duration::ZERO).await;
                        if !batch.is_empty() {
                            old.export(batch).await;
                        }
                    });
                }
                running = want.and_then(Running::start);
            }
            let Some(r) = running.as_mut() else {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let batch = tokio::select! {
                _ = shutdown.changed() => {
                    let batch = r.batch(Duration::ZERO).await;
                    if !batch.is_empty() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), r.export(batch)).await;
                    }
                    return;
                }
                batch = r.batch(Duration::from_secs(1)) => batch,
            };
            if !batch.is_empty() {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = r.export(batch) => {}
                }
            }
        }
    }
}

/// `opentelemetry-http`'s client trait over the reqwest client already in the tree (rustls
/// on ring), rather than a second reqwest major version with its own TLS stack.
#[derive(Debug)]
struct Http(reqwest::Client);

#[async_trait]
impl opentelemetry_http::HttpClient for Http {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err("the receiver's answer is too large".into());
            }
            answer.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(Bytes::from(answer));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}
