//! `tracing:`, where spans go: an OTLP/HTTP receiver, the share of new traces sampled and the
//! service name the spans carry. Absent, no span is made and `traceparent` passes untouched.

use serde::Deserialize;

/// `tracing: { otlp_endpoint, sample_ratio, service_name }`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/HTTP receiver (protobuf), `http://` or `https://`. A URL with no path (or
    /// `/`) gets the standard `/v1/traces`; any other path is used as written.
    pub otlp_endpoint: String,
    /// The share of traces started here (no sampled `traceparent` came) that are recorded,
    /// from 0 to 1. An incoming `traceparent`'s sampled flag decides for its trace.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
    /// `service.name` of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "portcullis".to_string()
}
