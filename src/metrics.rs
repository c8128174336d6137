//! Every Prometheus metric Portcullis exports, named and registered in one place.
//!
//! Metrics live in the default `prometheus` registry, served by the admin endpoint. Labels are
//! bounded by the config (route, upstream, target, status class, result); never a client, a
//! user, a token or a path.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// `portcullis_requests_total{route,status_class}`: requests answered. Route `""` when none matched.
pub const REQUESTS_TOTAL: &str = "portcullis_requests_total";
/// `portcullis_request_duration_seconds{route}`: time from request to last byte.
pub const REQUEST_DURATION_SECONDS: &str = "portcullis_request_duration_seconds";
/// `portcullis_upstream_target_healthy{upstream,target}`: 1 healthy, 0 not.
pub const UPSTREAM_TARGET_HEALTHY: &str = "portcullis_upstream_target_healthy";
/// `portcullis_upstream_retries_total{upstream}`: connection failures retried on another target.
pub const UPSTREAM_RETRIES_TOTAL: &str = "portcullis_upstream_retries_total";
/// `portcullis_config_reloads_total{result}`: reloads, `success` or `failure`.
pub const CONFIG_RELOADS_TOTAL: &str = "portcullis_config_reloads_total";
/// `portcullis_config_generation`: which config is serving; 1 at start, +1 per reload.
pub const CONFIG_GENERATION: &str = "portcullis_config_generation";
/// `portcullis_access_log_dropped_total`: lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "portcullis_access_log_dropped_total";

/// The metrics, registered on first use.
pub struct Metrics {
    /// See [`REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// See [`REQUEST_DURATION_SECONDS`].
    pub request_duration: HistogramVec,
    /// See [`UPSTREAM_TARGET_HEALTHY`].
    pub target_healthy: IntGaugeVec,
    /// See [`UPSTREAM_RETRIES_TOTAL`].
    pub upstream_retries: IntCounterVec,
    /// See [`CONFIG_RELOADS_TOTAL`].
    pub reloads: IntCounterVec,
    /// See [`CONFIG_GENERATION`].
    pub generation: IntGauge,
    /// See [`ACCESS_LOG_DROPPED_TOTAL`].
    pub access_log_dropped: IntCounter,
}

/// Status classes used as the `status_class` label, indexed by `status / 100`.
pub const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The status class index of a status code (`0` for no response).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).min(5)
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

impl Metrics {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    fn register() -> Metrics {
        // The process collector gives process_cpu_seconds_total, process_resident_memory_bytes, ...
        #[cfg(target_os = "linux")]
        let _ = prometheus::register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            requests: register_int_counter_vec!(
                REQUESTS_TOTAL,
                "Requests answered, by route and status class.",
                &["route", "status_class"]
            )
            .expect("register requests"),
            request_duration: register_histogram_vec!(
                REQUEST_DURATION_SECONDS,
                "Time from request to the last byte of the response, by route.",
                &["route"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0
                ]
            )
            .expect("register duration"),
            target_healthy: register_int_gauge_vec!(
                UPSTREAM_TARGET_HEALTHY,
                "Whether an upstream target passes its health checks (1) or not (0).",
                &["upstream", "target"]
            )
            .expect("register target health"),
            upstream_retries: register_int_counter_vec!(
                UPSTREAM_RETRIES_TOTAL,
                "Connection failures retried on another target, by upstream.",
                &["upstream"]
            )
            .expect("register retries"),
            reloads: register_int_counter_vec!(
                CONFIG_RELOADS_TOTAL,
                "Config reloads by result (success, failure).",
                &["result"]
            )
            .expect("register reloads"),
            generation: register_int_gauge!(
                CONFIG_GENERATION,
                "Generation of the config now serving: 1 at start, one more per reload."
            )
            .expect("register generation"),
            access_log_dropped: register_int_counter!(
                ACCESS_LOG_DROPPED_TOTAL,
                "Access log lines dropped because the writer fell behind."
            )
            .expect("register access log drops"),
        }
    }
}

/// Per-route counters resolved once when the route is compiled, so the request path does no
/// label lookups.
#[derive(Clone)]
pub struct RouteMetrics {
    requests: [prometheus::IntCounter; 6],
    duration: prometheus::Histogram,
}

impl RouteMetrics {
    /// The counters of route `name` (`""` for requests no route took).
    pub fn new(name: &str) -> RouteMetrics {
        let m = &*METRICS;
        RouteMetrics {
            requests: STATUS_CLASSES.map(|class| m.requests.with_label_values(&[name, class])),
            duration: m.request_duration.with_label_values(&[name]),
        }
    }

    /// Count one request.
    pub fn observe(&self, status: u16, seconds: f64) {
        self.requests[status_class(status)].inc();
        self.duration.observe(seconds);
    }
}

/// Render the default registry in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let _ = &*METRICS;
    let mut out = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if encoder.encode(&prometheus::gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
