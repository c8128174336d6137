//! The tracing exporter's series: spans the bounded queue dropped, spans and batches exported.
//!
//! Registered by the commit of the first generation with `tracing:` (all three present at
//! zero from then on, and kept when a reload removes the section); the request path only
//! increments them.

use std::sync::LazyLock;

use prometheus::{register_int_counter, register_int_counter_vec, IntCounter};

/// `portcullis_tracing_spans_dropped_total`: spans dropped because the export queue was full.
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "portcullis_tracing_spans_dropped_total";
/// `portcullis_tracing_spans_exported_total`: spans the receiver accepted.
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "portcullis_tracing_spans_exported_total";
/// `portcullis_tracing_exports_total{result}`: export requests, `success` or `failure`.
pub const TRACING_EXPORTS_TOTAL: &str = "portcullis_tracing_exports_total";

/// The tracing series.
pub struct TracingMetrics {
    /// Spans dropped at a full queue.
    pub dropped: IntCounter,
    /// Spans exported.
    pub exported: IntCounter,
    /// Export requests that succeeded.
    pub exports_ok: IntCounter,
    /// Export requests that failed (receiver down, slow past the timeout, refused).
    pub exports_failed: IntCounter,
}

/// The process's tracing series; the first use registers them.
pub static TRACING_METRICS: LazyLock<TracingMetrics> = LazyLock::new(TracingMetrics::register);

impl TracingMetrics {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    fn register() -> TracingMetrics {
        let exports = register_int_counter_vec!(
            TRACING_EXPORTS_TOTAL,
            "OTLP export requests, by result (success, failure).",
            &["result"]
        )
        .expect("register tracing exports");
        TracingMetrics {
            dropped: register_int_counter!(
                TRACING_SPANS_DROPPED_TOTAL,
                "Spans dropped because the export queue was full."
            )
            .expect("register dropped spans"),
            exported: register_int_counter!(
                TRACING_SPANS_EXPORTED_TOTAL,
                "Spans the OTLP receiver accepted."
            )
            .expect("register exported spans"),
            exports_ok: exports.with_label_values(&["success"]),
            exports_failed: exports.with_label_values(&["failure"]),
        }
    }
}

/// Make the series appear (at zero): the commit step of a generation with `tracing:`.
pub fn register() {
    LazyLock::force(&TRACING_METRICS);
}
