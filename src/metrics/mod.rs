//! Every Prometheus metric Portcullis exports, named and registered in one place.
//!
//! Metrics live in the default `prometheus` registry, served by the admin endpoint. Labels are
//! bounded by the config (route, upstream, target, method, status code, result); never a
//! client, a user, a token or a path. The names are documented constants in one file per
//! domain; this module holds the registered families ([`METRICS`]) and the rendering.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

pub mod access_log;
mod auth;
pub mod cache;
mod connections;
mod lifecycle;
mod limits;
mod process;
mod requests;
mod sessions;
pub mod tracing;
mod upstream;

pub use auth::*;
pub use connections::*;
pub use lifecycle::*;
pub use limits::*;
pub use requests::*;
pub use sessions::*;
pub use upstream::*;

/// The metrics, registered on first use.
pub struct Metrics {
    /// See [`REQUESTS_TOTAL`].
    pub requests: IntCounterVec,
    /// See [`REQUEST_DURATION_SECONDS`].
    pub request_duration: HistogramVec,
    /// See [`UPSTREAM_TARGET_HEALTHY`].
    pub target_healthy: IntGaugeVec,
    /// See [`UPSTREAM_HEALTHY_TARGETS`].
    pub healthy_targets: IntGaugeVec,
    /// See [`UPSTREAM_RETRIES_TOTAL`].
    pub upstream_retries: IntCounterVec,
    /// See [`UPSTREAM_RETRY_BUDGET_EXHAUSTED_TOTAL`].
    pub retry_budget_exhausted: IntCounterVec,
    /// See [`UPSTREAM_EJECTIONS_TOTAL`].
    pub ejections: IntCounterVec,
    /// See [`UPSTREAM_FIRST_BYTE_SECONDS`].
    pub upstream_first_byte: HistogramVec,
    /// See [`UPSTREAM_ATTEMPT_DURATION_SECONDS`].
    pub upstream_attempt_duration: HistogramVec,
    /// See [`UPSTREAM_RESPONSES_TOTAL`].
    pub upstream_responses: IntCounterVec,
    /// See [`UPSTREAM_CONNECTIONS_TOTAL`].
    pub upstream_connections: IntCounterVec,
    /// See [`DNS_LOOKUPS_TOTAL`].
    pub dns_lookups: IntCounterVec,
    /// See [`DNS_ADDRESSES`].
    pub dns_addresses: IntGaugeVec,
    /// See [`UPSTREAM_TLS_FAILURES_TOTAL`].
    pub upstream_tls_failures: IntCounterVec,
    /// See [`CONFIG_RELOADS_TOTAL`].
    pub reloads: IntCounterVec,
    /// See [`CONFIG_GENERATION`].
    pub generation: IntGauge,
    /// See [`ACCESS_LOG_DROPPED_TOTAL`].
    pub access_log_dropped: IntCounter,
    /// See [`AUTH_DECISIONS_TOTAL`].
    pub auth_decisions: IntCounterVec,
    /// See [`JWKS_FETCHES_TOTAL`].
    pub jwks_fetches: IntCounterVec,
    /// See [`JWKS_AGE_SECONDS`].
    pub jwks_age: IntGaugeVec,
    /// See [`JWKS_KEYS`].
    pub jwks_keys: IntGaugeVec,
    /// See [`JWKS_STALE`].
    pub jwks_stale: IntGaugeVec,
    /// See [`SESSION_INTROSPECTIONS_TOTAL`].
    pub introspections: IntCounterVec,
    /// See [`SESSION_INTROSPECTION_CACHE_REQUESTS_TOTAL`].
    pub introspection_cache: IntCounterVec,
    /// See [`SESSION_INTROSPECTION_CACHE_ENTRIES`].
    pub introspection_cache_entries: IntGaugeVec,
    /// See [`RATELIMIT_DECISIONS_TOTAL`].
    pub ratelimit_decisions: IntCounterVec,
    /// See [`UPSTREAM_CONCURRENCY_LIMIT`].
    pub concurrency_limit: IntGaugeVec,
    /// See [`UPSTREAM_IN_FLIGHT`].
    pub in_flight: IntGaugeVec,
    /// See [`CLUSTER_REDIS_UP`].
    pub cluster_up: IntGauge,
    /// See [`CLUSTER_NODES`].
    pub cluster_nodes: IntGauge,
    /// See [`CLUSTER_SYNC_ERRORS_TOTAL`].
    pub cluster_sync_errors: IntCounter,
    /// Hits of the verified-token cache.
    pub token_cache_hits: IntCounter,
    /// Misses of the verified-token cache.
    pub token_cache_misses: IntCounter,
    /// See [`TOKEN_CACHE_ENTRIES`].
    pub token_cache_entries: IntGauge,
    /// See [`CONNECTIONS_OPEN`], by `listener`.
    pub connections_open: IntGaugeVec,
    /// See [`CONNECTIONS_ACCEPTED_TOTAL`], by `listener`.
    pub connections_accepted: IntCounterVec,
    /// See [`TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS`], by `listener`.
    pub tls_certificate_expiry: IntGaugeVec,
    /// See [`BUILD_INFO`].
    pub build_info: IntGaugeVec,
    /// See [`CONNECTIONS_REFUSED_TOTAL`], by `reason`.
    pub connections_refused: IntCounterVec,
    /// See [`CONNECTIONS_HEADER_TIMEOUTS_TOTAL`].
    pub connections_header_timeouts: IntCounter,
    /// See [`MEMORY_RELEASES_TOTAL`].
    pub memory_releases: IntCounter,
    /// See [`SESSION_REVOCATIONS_TOTAL`], by `kind`.
    pub session_revocations: IntCounterVec,
    /// See [`SESSION_REVOCATION_ENTRIES`].
    pub session_revocation_entries: IntGauge,
    /// See [`SESSION_REVOCATIONS_EVICTED_TOTAL`].
    pub session_revocations_evicted: IntCounter,
    /// See [`SESSION_REVOCATIONS_UNPUBLISHED`].
    pub session_revocations_unpublished: IntGauge,
    /// See [`SESSION_REVOCATION_SYNC_UP`].
    pub session_revocation_sync_up: IntGauge,
    /// See [`SESSION_REVOCATION_SYNC_ERRORS_TOTAL`].
    pub session_revocation_sync_errors: IntCounter,
}

/// Buckets of every latency histogram, in seconds: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

impl Metrics {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    fn register() -> Metrics {
        // process_cpu_seconds_total, process_resident_memory_bytes, ...
        let _ = prometheus::register(Box::new(process::ProcessCollector::new()));
        let cache = register_int_counter_vec!(
            TOKEN_CACHE_REQUESTS_TOTAL,
            "Lookups in the verified-token cache, by result (hit, miss).",
            &["result"]
        )
        .expect("register token cache");
        let refused = register_int_counter_vec!(
            CONNECTIONS_REFUSED_TOTAL,
            "Client connections closed as they arrived, by the limit reached.",
            &["reason"]
        )
        .expect("register connections refused");
        let revocations = register_int_counter_vec!(
            SESSION_REVOCATIONS_TOTAL,
            "Revocations made on this node, by kind (sub, sid, jti).",
            &["kind"]
        )
        .expect("register session revocations");
        for kind in ["sub", "sid", "jti"] {
            revocations.with_label_values(&[kind]);
        }
        Metrics {
            requests: register_int_counter_vec!(
                REQUESTS_TOTAL,
                "Requests answered, by route, method and status code (0: no response sent).",
                &["route", "method", "code"]
            )
            .expect("register requests"),
            request_duration: register_histogram_vec!(
                REQUEST_DURATION_SECONDS,
                "Time from request to the last byte of the response, by route and method.",
                &["route", "method"],
                LATENCY_BUCKETS.to_vec()
            )
            .expect("register duration"),
            target_healthy: register_int_gauge_vec!(
                UPSTREAM_TARGET_HEALTHY,
                "Whether an upstream target passes its health checks (1) or not (0).",
                &["upstream", "target"]
            )
            .expect("register target health"),
            healthy_targets: register_int_gauge_vec!(
                UPSTREAM_HEALTHY_TARGETS,
                "Targets of an upstream that take traffic now.",
                &["upstream"]
            )
            .expect("register healthy targets"),
            upstream_retries: register_int_counter_vec!(
                UPSTREAM_RETRIES_TOTAL,
                "Attempts tried again, by upstream and what failed.",
                &["upstream", "reason"]
            )
            .expect("register retries"),
            retry_budget_exhausted: register_int_counter_vec!(
                UPSTREAM_RETRY_BUDGET_EXHAUSTED_TOTAL,
                "Retries not made because the pool's retry budget was spent.",
                &["upstream"]
            )
            .expect("register retry budget"),
            ejections: register_int_counter_vec!(
                UPSTREAM_EJECTIONS_TOTAL,
                "Targets ejected for failing requests in a row (outlier detection).",
                &["upstream"]
            )
            .expect("register ejections"),
            upstream_first_byte: register_histogram_vec!(
                UPSTREAM_FIRST_BYTE_SECONDS,
                "Time from the start of an attempt (connecting included) to the target's response headers.",
                &["upstream", "target"],
                LATENCY_BUCKETS.to_vec()
            )
            .expect("register first byte"),
            upstream_attempt_duration: register_histogram_vec!(
                UPSTREAM_ATTEMPT_DURATION_SECONDS,
                "Time from the start of an attempt to its end (the last byte, or its failure).",
                &["upstream", "target"],
                LATENCY_BUCKETS.to_vec()
            )
            .expect("register attempt duration"),
            upstream_responses: register_int_counter_vec!(
                UPSTREAM_RESPONSES_TOTAL,
                "Answers from targets, by status code.",
                &["upstream", "target", "code"]
            )
            .expect("register upstream responses"),
            upstream_connections: register_int_counter_vec!(
                UPSTREAM_CONNECTIONS_TOTAL,
                "Connections to targets used by attempts, pooled (reused=true) or new.",
                &["upstream", "target", "reused"]
            )
            .expect("register upstream connections"),
            dns_lookups: register_int_counter_vec!(
                DNS_LOOKUPS_TOTAL,
                "Lookups of host-name targets, by upstream, name and result (success, failure).",
                &["upstream", "name", "result"]
            )
            .expect("register dns lookups"),
            dns_addresses: register_int_gauge_vec!(
                DNS_ADDRESSES,
                "Addresses a host-name target resolves to now, by upstream and name.",
                &["upstream", "name"]
            )
            .expect("register dns addresses"),
            upstream_tls_failures: register_int_counter_vec!(
                UPSTREAM_TLS_FAILURES_TOTAL,
                "TLS connections to upstream targets that failed, by upstream and reason.",
                &["upstream", "reason"]
            )
            .expect("register upstream tls failures"),
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
            auth_decisions: register_int_counter_vec!(
                AUTH_DECISIONS_TOTAL,
                "Token checks by route, result (allowed, denied) and reason.",
                &["route", "result", "reason"]
            )
            .expect("register auth decisions"),
            jwks_fetches: register_int_counter_vec!(
                JWKS_FETCHES_TOTAL,
                "Key set fetches by issuer and result (success, error).",
                &["issuer", "result"]
            )
            .expect("register jwks fetches"),
            jwks_age: register_int_gauge_vec!(
                JWKS_AGE_SECONDS,
                "Seconds since the keys in use were fetched, by issuer.",
                &["issuer"]
            )
            .expect("register jwks age"),
            jwks_keys: register_int_gauge_vec!(JWKS_KEYS, "Keys in use, by issuer.", &["issuer"])
                .expect("register jwks keys"),
            jwks_stale: register_int_gauge_vec!(
                JWKS_STALE,
                "1 while the last key set fetch failed and older keys keep serving.",
                &["issuer"]
            )
            .expect("register jwks stale"),
            introspections: register_int_counter_vec!(
                SESSION_INTROSPECTIONS_TOTAL,
                "Token introspection calls by issuer and answer (active, inactive, error).",
                &["issuer", "result"]
            )
            .expect("register introspections"),
            introspection_cache: register_int_counter_vec!(
                SESSION_INTROSPECTION_CACHE_REQUESTS_TOTAL,
                "Lookups of opaque tokens in the introspection cache, by issuer and result (hit, miss).",
                &["issuer", "result"]
            )
            .expect("register introspection cache"),
            introspection_cache_entries: register_int_gauge_vec!(
                SESSION_INTROSPECTION_CACHE_ENTRIES,
                "Introspection answers held in the cache, by issuer.",
                &["issuer"]
            )
            .expect("register introspection cache entries"),
            ratelimit_decisions: register_int_counter_vec!(
                RATELIMIT_DECISIONS_TOTAL,
                "Rate limit checks by route, limit and result (allowed, denied).",
                &["route", "limit", "result"]
            )
            .expect("register ratelimit decisions"),
            concurrency_limit: register_int_gauge_vec!(
                UPSTREAM_CONCURRENCY_LIMIT,
                "The in-flight cap of an upstream pool now.",
                &["upstream"]
            )
            .expect("register concurrency limit"),
            in_flight: register_int_gauge_vec!(
                UPSTREAM_IN_FLIGHT,
                "Requests in flight to an upstream pool.",
                &["upstream"]
            )
            .expect("register in flight"),
            cluster_up: register_int_gauge!(
                CLUSTER_REDIS_UP,
                "1 while Redis answers the limit sync."
            )
            .expect("register cluster up"),
            cluster_nodes: register_int_gauge!(
                CLUSTER_NODES,
                "Nodes sharing the cluster limits, as last seen in Redis."
            )
            .expect("register cluster nodes"),
            cluster_sync_errors: register_int_counter!(
                CLUSTER_SYNC_ERRORS_TOTAL,
                "Failed limit syncs with Redis."
            )
            .expect("register cluster sync errors"),
            token_cache_hits: cache.with_label_values(&["hit"]),
            token_cache_misses: cache.with_label_values(&["miss"]),
            token_cache_entries: register_int_gauge!(
                TOKEN_CACHE_ENTRIES,
                "Verified tokens held in the cache."
            )
            .expect("register token cache entries"),
            connections_open: register_int_gauge_vec!(
                CONNECTIONS_OPEN,
                "Client connections open now, by listener.",
                &["listener"]
            )
            .expect("register connections open"),
            connections_accepted: register_int_counter_vec!(
                CONNECTIONS_ACCEPTED_TOTAL,
                "Client connections admitted, by listener.",
                &["listener"]
            )
            .expect("register connections accepted"),
            tls_certificate_expiry: register_int_gauge_vec!(
                TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
                "When the certificate a TLS listener serves expires (its notAfter), in Unix seconds.",
                &["listener"]
            )
            .expect("register certificate expiry"),
            build_info: build_info(),
            connections_refused: refused,
            connections_header_timeouts: register_int_counter!(
                CONNECTIONS_HEADER_TIMEOUTS_TOTAL,
                "Client connections closed because their request headers took longer than \
                 server.request_header_timeout."
            )
            .expect("register connection header timeouts"),
            memory_releases: register_int_counter!(
                MEMORY_RELEASES_TOTAL,
                "Times freed memory was handed back to the system after connections closed and \
                 the proxy went quiet."
            )
            .expect("register memory releases"),
            session_revocations: revocations,
            session_revocation_entries: register_int_gauge!(
                SESSION_REVOCATION_ENTRIES,
                "Revocations held now, made on this node or on others."
            )
            .expect("register revocation entries"),
            session_revocations_evicted: register_int_counter!(
                SESSION_REVOCATIONS_EVICTED_TOTAL,
                "Revocations dropped before server.revocation_ttl because the list was at \
                 server.max_revocations."
            )
            .expect("register revocations evicted"),
            session_revocations_unpublished: register_int_gauge!(
                SESSION_REVOCATIONS_UNPUBLISHED,
                "Revocations made on this node that Redis has not taken yet."
            )
            .expect("register revocations unpublished"),
            session_revocation_sync_up: register_int_gauge!(
                SESSION_REVOCATION_SYNC_UP,
                "1 while this node is subscribed to the fleet's revocations in Redis."
            )
            .expect("register revocation sync up"),
            session_revocation_sync_errors: register_int_counter!(
                SESSION_REVOCATION_SYNC_ERRORS_TOTAL,
                "Failed attempts to reach Redis for revocations, and subscriptions lost."
            )
            .expect("register revocation sync errors"),
        }
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
