//! Tracing: W3C Trace Context in and out, and OpenTelemetry spans for each sampled request.
//!
//! A request continues the trace of a valid incoming `traceparent` (its sampled flag decides,
//! its `tracestate` passes on) or starts one (sampled by `sample_ratio`). Its spans: the
//! request (SERVER), the token check, a key fetch it waited for, each limit check, and each
//! upstream attempt (CLIENT), whose id goes upstream as the parent in `traceparent`, even
//! when the trace is not sampled. Spans are built only for sampled requests and handed to
//! the bounded queue of [`export::Pipeline`], which drops and counts rather than wait.
//!
//! Never in an attribute: a token, a cookie, an `Authorization` header or a query string.
//! [`compile`] is pure: the queue it may make has no reader until the exporter (a background
//! service) picks the new pipeline up.

pub mod context;
pub mod export;
pub mod notes;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::carry;
use crate::config::{Issues, TracingConfig};
pub use export::{Pipeline, TraceExporter};

/// `tracing:`, compiled.
pub struct Tracing {
    /// Roots whose trace id's low 64 bits fall below this are sampled; `None` samples all.
    below: Option<u64>,
    /// Where spans go; kept across reloads while the endpoint and service name stay.
    pub pipeline: Arc<Pipeline>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("below", &self.below)
            .finish_non_exhaustive()
    }
}

/// Compile `tracing:`; `None` when absent or wrong (each problem pushed to `issues`). The
/// pipeline of `previous` is kept when the endpoint and service name are the same.
pub fn compile(
    config: Option<&TracingConfig>,
    previous: Option<&Tracing>,
    issues: &mut Issues<'_>,
) -> Option<Tracing> {
    let config = config?;
    let before = issues.len();
    let endpoint = match endpoint(&config.otlp_endpoint) {
        Ok(url) => url,
        Err(e) => {
            issues.push("tracing.otlp_endpoint", e);
            String::new()
        }
    };
    let ratio = config.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        issues.push(
            "tracing.sample_ratio",
            format!("must be from 0 to 1, not {ratio}"),
        );
    }
    if config.service_name.trim().is_empty() {
        issues.push("tracing.service_name", "must not be empty");
    }
    if issues.len() > before {
        return None;
    }
    let key = (endpoint, config.service_name.clone());
    let pipeline = carry::kept(previous.map(|p| &p.pipeline), &key)
        .unwrap_or_else(|| Arc::new(Pipeline::new(key.0, key.1)));
    Some(Tracing {
        // Within 2^-53 of the ratio; 1 samples every root.
        below: (ratio < 1.0).then_some((ratio * 18_446_744_073_709_551_616.0) as u64),
        pipeline,
    })
}

/// The URL spans are posted to: `http(s)://host[:port]/path`, `/v1/traces` when no path.
fn endpoint(text: &str) -> Result<String, String> {
    let mut url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_string());
    }
    if url.path() == "/" {
        url.set_path("/v1/traces");
    }
    Ok(url.to_string())
}

impl Tracing {
    /// Whether a new root trace with this id is sampled.
    fn samples(&self, trace_id: u128) -> bool {
        // The low 64 bits: the random part of a W3C trace id.
        self.below.is_none_or(|below| (trace_id as u64) < below)
    }
}

/// One request's place in its trace.
pub struct RequestTrace {
    trace_id: u128,
    /// The request's (SERVER) span.
    span_id: u64,
    /// The caller's span; 0 for a root.
    parent: u64,
    sampled: bool,
    /// The client's `tracestate`, passed on when its trace is continued.
    tracestate: Option<HeaderValue>,
    /// Where spans go and when the request began; only for a sampled request.
    live: Option<(Arc<Pipeline>, SystemTime)>,
    attempt: Option<Attempt>,
}

/// The upstream attempt under way.
struct Attempt {
    span_id: u64,
    start: Option<SystemTime>,
    attributes: Vec<KeyValue>,
    status: Option<u16>,
    error: Option<&'static str>,
}

impl RequestTrace {
    /// Continue the trace of the request's `traceparent` (exactly one, valid) or start one.
    pub fn start(tracing: &Tracing, headers: &HeaderMap) -> RequestTrace {
        let mut values = headers.get_all(context::TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(v), None) => context::parse(v.as_bytes()),
            _ => None,
        };
        let (trace_id, parent, sampled, tracestate) = match parent {
            Some(p) => {
                let mut states = headers.get_all(context::TRACESTATE).iter();
                let state = match (states.next(), states.next()) {
                    (Some(v), None) => Some(v.clone()),
                    _ => None,
                };
                (p.trace_id, p.span_id, p.sampled, state)
            }
            None => {
                let id = fastrand::u128(1..);
                (id, 0, tracing.samples(id), None)
            }
        };
        RequestTrace {
            trace_id,
            span_id: fastrand::u64(1..),
            parent,
            sampled,
            tracestate,
            live: sampled.then(|| (Arc::clone(&tracing.pipeline), SystemTime::now())),
            attempt: None,
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The request's own span id.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Whether spans are recorded.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Now, when the request is sampled: the start of a child span.
    pub fn clock(&self) -> Option<SystemTime> {
        self.live.as_ref().map(|_| SystemTime::now())
    }

    /// Record a child of the request's span that began at `start` (from [`Self::clock`]) and
    /// ends at `end` (now when `None`); `attributes` is called only when the request is
    /// sampled.
    pub fn child(
        &self,
        name: &'static str,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        self.child_of(
            self.span_id,
            fastrand::u64(1..),
            name,
            start,
            end,
            attributes,
        );
    }

    /// [`Self::child`] with its own id `span_id`, under `parent` (the request's span or one
    /// of its children).
    pub fn child_of(
        &self,
        parent: u64,
        span_id: u64,
        name: &'static str,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        let (Some((pipeline, _)), Some(start)) = (&self.live, start) else {
            return;
        };
        let end = end.unwrap_or_else(SystemTime::now);
        pipeline.push(self.span(
            span_id,
            parent,
            SpanKind::Internal,
            name.into(),
            (start, end),
            attributes(),
            Status::Unset,
        ));
    }

    /// An upstream attempt starts; `attributes` is called only when the request is sampled.
    pub fn start_attempt(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        self.end_attempt();
        let sampled = self.live.is_some();
        self.attempt = Some(Attempt {
            span_id: fastrand::u64(1..),
            start: sampled.then(SystemTime::now),
            attributes: if sampled { attributes() } else { Vec::new() },
            status: None,
            error: None,
        });
    }

    /// The attempt under way got an answer with `status`.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(a) = &mut self.attempt {
            a.status = Some(status);
        }
    }

    /// The attempt under way failed with `error` (a short, fixed name).
    pub fn attempt_failed(&mut self, error: &'static str) {
        if let Some(a) = &mut self.attempt {
            a.error.get_or_insert(error);
        }
    }

    /// The attempt under way ended: its span is recorded.
    pub fn end_attempt(&mut self) {
        let Some(mut a) = self.attempt.take() else {
            return;
        };
        let (Some((pipeline, _)), Some(start)) = (&self.live, a.start) else {
            return;
        };
        if let Some(status) = a.status {
            a.attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        let error: Option<Cow<'static, str>> = match (a.error, a.status) {
            (Some(e), _) => Some(e.into()),
            (None, Some(s)) if s >= 400 => Some(s.to_string().into()),
            _ => None,
        };
        let status = match error {
            Some(e) => {
                a.attributes.push(KeyValue::new("error.type", e.clone()));
                Status::Error { description: e }
            }
            None => Status::Unset,
        };
        let name = a
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "http.request.method")
            .map(|kv| kv.value.as_str().into_owned())
            .filter(|m| m != "_OTHER")
            .map_or(Cow::Borrowed("HTTP"), Cow::Owned);
        pipeline.push(self.span(
            a.span_id,
            self.span_id,
            SpanKind::Client,
            name,
            (start, SystemTime::now()),
            a.attributes,
            status,
        ));
    }

    /// Put this trace's context on a request going upstream: `traceparent` with the
    /// attempt's span as parent (the request's when no attempt is under way), the client's
    /// `tracestate` when its trace goes on, and no other value of either.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        let parent = self.attempt.as_ref().map_or(self.span_id, |a| a.span_id);
        headers.insert(
            context::TRACEPARENT,
            context::format(self.trace_id, parent, self.sampled),
        );
        match &self.tracestate {
            Some(state) => {
                headers.insert(context::TRACESTATE, state.clone());
            }
            None => {
                headers.remove(context::TRACESTATE);
            }
        }
    }

    /// The request ended: record its span, named `name`, failed with `error` when it did.
    pub fn finish(
        &mut self,
        name: Cow<'static, str>,
        mut attributes: Vec<KeyValue>,
        error: Option<Cow<'static, str>>,
    ) {
        self.end_attempt();
        let Some((pipeline, start)) = &self.live else {
            return;
        };
        let status = match error {
            Some(e) => {
                attributes.push(KeyValue::new("error.type", e.clone()));
                Status::Error { description: e }
            }
            None => Status::Unset,
        };
        pipeline.push(self.span(
            self.span_id,
            self.parent,
            SpanKind::Server,
            name,
            (*start, SystemTime::now()),
            attributes,
            status,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        span_id: u64,
        parent: u64,
        kind: SpanKind,
        name: Cow<'static, str>,
        (start_time, end_time): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(self.trace_id),
                SpanId::from(span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(parent),
            // Only the request's span has a parent in another process.
            parent_span_is_remote: matches!(kind, SpanKind::Server) && parent != 0,
            span_kind: kind,
            name,
            start_time,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope(),
        }
    }
}

/// The instrumentation scope of every span: Portcullis and its version.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("portcullis")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, LineIndex};

    fn compiled(yaml: &str, previous: Option<&Tracing>) -> Result<Option<Tracing>, Vec<String>> {
        let config = Config::from_yaml(yaml).unwrap();
        let index = LineIndex::new(yaml);
        let mut issues = Issues::new(&index);
        let t = compile(config.tracing.as_ref(), previous, &mut issues);
        issues
            .finish(t)
            .map_err(|e| e.issues().iter().map(|i| i.to_string()).collect())
    }

    #[test]
    fn validates_and_defaults() {
        assert!(compiled("", None).unwrap().is_none());
        let t = compiled(
            "tracing: { otlp_endpoint: \"http://127.0.0.1:4318\" }",
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.pipeline.endpoint(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.pipeline.service_name(), "portcullis");
        assert!(t.samples(u128::MAX), "the default ratio samples every root");
        let errs = compiled(
            "tracing: { otlp_endpoint: \"ftp://x\", sample_ratio: 1.5, service_name: \"\" }",
            None,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("tracing.otlp_endpoint"), "{errs:?}");
        assert!(errs[1].contains("tracing.sample_ratio"), "{errs:?}");
        assert!(errs[2].contains("tracing.service_name"), "{errs:?}");
        assert!(compiled("tracing: { otlp_endpoint: \"nothing\" }", None).is_err());
    }

    #[test]
    fn reload_keeps_the_pipeline_while_endpoint_and_name_stay() {
        let a = compiled(
            "tracing: { otlp_endpoint: \"http://127.0.0.1:4318/v1/traces\", sample_ratio: 1 }",
            None,
        )
        .unwrap()
        .unwrap();
        let b = compiled(
            "tracing: { otlp_endpoint: \"http://127.0.0.1:4318/v1/traces\", sample_ratio: 0 }",
            Some(&a),
        )
        .unwrap()
        .unwrap();
        assert!(Arc::ptr_eq(&a.pipeline, &b.pipeline));
        assert!(!b.samples(1), "the new ratio applies at once");
        let c = compiled(
            "tracing: { otlp_endpoint: \"http://127.0.0.1:4319\" }",
            Some(&b),
        )
        .unwrap()
        .unwrap();
        assert!(!Arc::ptr_eq(&b.pipeline, &c.pipeline));
    }

    #[test]
    fn ratio_samples_roots_by_their_trace_id() {
        let t = compiled(
            "tracing: { otlp_endpoint: \"http://127.0.0.1:4318\", sample_ratio: 0.25 }",
            None,
        )
        .unwrap()
        .unwrap();
        assert!(t.samples(0x1));
        assert!(!t.samples(u128::from(u64::MAX)));
        let sampled = (0..4000).filter(|_| t.samples(fastrand::u128(1..))).count();
        assert!((700..1300).contains(&sampled), "{sampled}");
    }
}
