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
/// `portcullis_upstream_healthy_targets{upstream}`: targets taking traffic, read at scrape.
pub const UPSTREAM_HEALTHY_TARGETS: &str = "portcullis_upstream_healthy_targets";
/// `portcullis_upstream_retries_total{upstream,reason}`: attempts tried again, by what failed.
pub const UPSTREAM_RETRIES_TOTAL: &str = "portcullis_upstream_retries_total";
/// `portcullis_upstream_first_byte_seconds{upstream,target}`: attempt start to response headers.
pub const UPSTREAM_FIRST_BYTE_SECONDS: &str = "portcullis_upstream_first_byte_seconds";
/// `portcullis_upstream_attempt_duration_seconds{upstream,target}`: attempt start to its end.
pub const UPSTREAM_ATTEMPT_DURATION_SECONDS: &str = "portcullis_upstream_attempt_duration_seconds";
/// `portcullis_upstream_responses_total{upstream,target,code}`: answers by status code.
pub const UPSTREAM_RESPONSES_TOTAL: &str = "portcullis_upstream_responses_total";
/// `portcullis_upstream_connections_total{upstream,target,reused}`: connections used, pooled
/// (`reused="true"`) or new.
pub const UPSTREAM_CONNECTIONS_TOTAL: &str = "portcullis_upstream_connections_total";
/// `portcullis_upstream_ejections_total{upstream}`: targets ejected for failing requests.
pub const UPSTREAM_EJECTIONS_TOTAL: &str = "portcullis_upstream_ejections_total";
/// `portcullis_upstream_retry_budget_exhausted_total{upstream}`: retries the budget refused.
pub const UPSTREAM_RETRY_BUDGET_EXHAUSTED_TOTAL: &str =
    "portcullis_upstream_retry_budget_exhausted_total";
/// `portcullis_dns_lookups_total{upstream,name,result}`: lookups of a host-name target,
/// `success` or `failure` (a failure keeps the last good addresses).
pub const DNS_LOOKUPS_TOTAL: &str = "portcullis_dns_lookups_total";
/// `portcullis_dns_addresses{upstream,name}`: addresses a host-name target has now.
pub const DNS_ADDRESSES: &str = "portcullis_dns_addresses";
/// `portcullis_upstream_tls_failures_total{upstream,reason}`: TLS connections to a pool's targets
/// that failed, by reason (`unknown_issuer`, `name_mismatch`, `expired`, `not_yet_valid`,
/// `client_cert_refused`, `other`); pools with `tls:` only, every reason from zero.
pub const UPSTREAM_TLS_FAILURES_TOTAL: &str = "portcullis_upstream_tls_failures_total";
/// `portcullis_config_reloads_total{result}`: reloads, `success` or `failure`.
pub const CONFIG_RELOADS_TOTAL: &str = "portcullis_config_reloads_total";
/// `portcullis_config_generation`: which config is serving; 1 at start, +1 per reload.
pub const CONFIG_GENERATION: &str = "portcullis_config_generation";
/// `portcullis_access_log_dropped_total`: lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "portcullis_access_log_dropped_total";

/// `portcullis_auth_decisions_total{route,result,reason}`: token checks, `allowed` or `denied`.
pub const AUTH_DECISIONS_TOTAL: &str = "portcullis_auth_decisions_total";
/// `portcullis_jwks_fetches_total{issuer,outcome}`: key set fetches, `success` or `error`.
pub const JWKS_FETCHES_TOTAL: &str = "portcullis_jwks_fetches_total";
/// `portcullis_jwks_age_seconds{issuer}`: age of the keys in use.
pub const JWKS_AGE_SECONDS: &str = "portcullis_jwks_age_seconds";
/// `portcullis_jwks_keys{issuer}`: keys in use.
pub const JWKS_KEYS: &str = "portcullis_jwks_keys";
/// `portcullis_jwks_stale{issuer}`: 1 while the last fetch failed and older keys serve.
pub const JWKS_STALE: &str = "portcullis_jwks_stale";
/// `portcullis_token_cache_requests_total{result}`: verified-token cache `hit` or `miss`.
pub const TOKEN_CACHE_REQUESTS_TOTAL: &str = "portcullis_token_cache_requests_total";
/// `portcullis_token_cache_entries`: tokens held in the cache.
pub const TOKEN_CACHE_ENTRIES: &str = "portcullis_token_cache_entries";

/// `portcullis_session_introspections_total{issuer,result}`: RFC 7662 introspections, by
/// outcome: `active`, `inactive` (or active but refused by the issuer's checks), `error` (no
/// endpoint known yet, unreachable, timed out, not 200, not an answer).
pub const SESSION_INTROSPECTIONS_TOTAL: &str = "portcullis_session_introspections_total";
/// `portcullis_session_introspection_cache_requests_total{issuer,result}`: lookups of opaque
/// tokens in the introspection cache, `hit` or `miss`.
pub const SESSION_INTROSPECTION_CACHE_REQUESTS_TOTAL: &str =
    "portcullis_session_introspection_cache_requests_total";
/// `portcullis_session_introspection_cache_entries{issuer}`: answers held.
pub const SESSION_INTROSPECTION_CACHE_ENTRIES: &str =
    "portcullis_session_introspection_cache_entries";

/// `portcullis_ratelimit_decisions_total{route,limit,result}`: limit checks, `allowed` or `denied`.
pub const RATELIMIT_DECISIONS_TOTAL: &str = "portcullis_ratelimit_decisions_total";
/// `portcullis_upstream_concurrency_limit{upstream}`: the in-flight cap now.
pub const UPSTREAM_CONCURRENCY_LIMIT: &str = "portcullis_upstream_concurrency_limit";
/// `portcullis_upstream_in_flight{upstream}`: requests in flight to the pool.
pub const UPSTREAM_IN_FLIGHT: &str = "portcullis_upstream_in_flight";
/// `portcullis_cluster_redis_up`: 1 while Redis answers the limit sync.
pub const CLUSTER_REDIS_UP: &str = "portcullis_cluster_redis_up";
/// `portcullis_cluster_nodes`: nodes sharing the cluster limits, as last seen in Redis.
pub const CLUSTER_NODES: &str = "portcullis_cluster_nodes";
/// `portcullis_cluster_sync_errors_total`: failed syncs with Redis.
pub const CLUSTER_SYNC_ERRORS_TOTAL: &str = "portcullis_cluster_sync_errors_total";

/// `portcullis_connections_open`: client connections open now.
pub const CONNECTIONS_OPEN: &str = "portcullis_connections_open";
/// `portcullis_connections_accepted_total`: client connections admitted.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "portcullis_connections_accepted_total";
/// `portcullis_connections_refused_total{reason}`: connections closed as they arrived, by the
/// limit reached (`max_connections`, `max_connections_per_ip`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "portcullis_connections_refused_total";
/// `portcullis_connections_header_timeouts_total`: connections closed because their request
/// headers were not complete within `server.request_header_timeout`.
pub const CONNECTIONS_HEADER_TIMEOUTS_TOTAL: &str = "portcullis_connections_header_timeouts_total";
/// `portcullis_memory_releases_total`: times freed memory was handed back to the system after
/// connections closed and the proxy went quiet (see `crate::memory`).
pub const MEMORY_RELEASES_TOTAL: &str = "portcullis_memory_releases_total";

/// `portcullis_session_revocations_total{kind}`: revocations made on this node (`POST /revoke`,
/// a session logout), by `kind` (`sub`, `sid`, `jti`); every kind from zero.
pub const SESSION_REVOCATIONS_TOTAL: &str = "portcullis_session_revocations_total";
/// `portcullis_session_revocation_entries`: revocations held now (made here or on other nodes).
pub const SESSION_REVOCATION_ENTRIES: &str = "portcullis_session_revocation_entries";
/// `portcullis_session_revocations_evicted_total`: revocations dropped before
/// `server.revocation_ttl` because the list was at `server.max_revocations`.
pub const SESSION_REVOCATIONS_EVICTED_TOTAL: &str = "portcullis_session_revocations_evicted_total";
/// `portcullis_session_revocations_unpublished`: revocations made here that Redis has not
/// taken yet (it was unreachable).
pub const SESSION_REVOCATIONS_UNPUBLISHED: &str = "portcullis_session_revocations_unpublished";
/// `portcullis_session_revocation_sync_up`: 1 while this node is subscribed to the fleet's
/// revocations in Redis.
pub const SESSION_REVOCATION_SYNC_UP: &str = "portcullis_session_revocation_sync_up";
/// `portcullis_session_revocation_sync_errors_total`: failed attempts to reach Redis for
/// revocations, and subscriptions lost.
pub const SESSION_REVOCATION_SYNC_ERRORS_TOTAL: &str =
    "portcullis_session_revocation_sync_errors_total";

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
    /// See [`CONNECTIONS_OPEN`].
    pub connections_open: IntGauge,
    /// See [`CONNECTIONS_ACCEPTED_TOTAL`].
    pub connections_accepted: IntCounter,
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

/// Status classes used as the `status_class` label, indexed by `status / 100`.
pub const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The status class index of a status code (`0` for no response).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).min(5)
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
        // The process collector gives process_cpu_seconds_total, process_resident_memory_bytes, ...
        #[cfg(target_os = "linux")]
        let _ = prometheus::register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
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
                "Requests answered, by route and status class.",
                &["route", "status_class"]
            )
            .expect("register requests"),
            request_duration: register_histogram_vec!(
                REQUEST_DURATION_SECONDS,
                "Time from request to the last byte of the response, by route.",
                &["route"],
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
                "Key set fetches by issuer and outcome (success, error).",
                &["issuer", "outcome"]
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
            connections_open: register_int_gauge!(CONNECTIONS_OPEN, "Client connections open now.")
                .expect("register connections open"),
            connections_accepted: register_int_counter!(
                CONNECTIONS_ACCEPTED_TOTAL,
                "Client connections admitted."
            )
            .expect("register connections accepted"),
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

/// Per-route counters, resolved once so the request path does no label lookups.
///
/// Making one registers nothing: the series appear when the generation that holds the route
/// is committed ([`RouteMetrics::register`]) or at the route's first request, whichever
/// comes first, so a compile that is then refused leaves `/metrics` as it was.
pub struct RouteMetrics {
    name: String,
    authenticated: bool,
    series: std::sync::OnceLock<RouteSeries>,
}

struct RouteSeries {
    requests: [prometheus::IntCounter; 6],
    duration: prometheus::Histogram,
    /// Only for routes with a policy, so `auth: none` routes export no auth series.
    auth_allowed: Option<prometheus::IntCounter>,
}

impl RouteMetrics {
    /// The counters of route `name` (`""` for requests no route took); `authenticated` when
    /// the route checks tokens. Registers nothing yet.
    pub fn new(name: &str, authenticated: bool) -> RouteMetrics {
        RouteMetrics {
            name: name.to_string(),
            authenticated,
            series: std::sync::OnceLock::new(),
        }
    }

    /// Make the series exist (at zero when new).
    pub fn register(&self) {
        let _ = self.series();
    }

    fn series(&self) -> &RouteSeries {
        self.series.get_or_init(|| {
            let (m, name) = (&*METRICS, self.name.as_str());
            RouteSeries {
                requests: STATUS_CLASSES.map(|class| m.requests.with_label_values(&[name, class])),
                duration: m.request_duration.with_label_values(&[name]),
                auth_allowed: self
                    .authenticated
                    .then(|| m.auth_decisions.with_label_values(&[name, "allowed", "ok"])),
            }
        })
    }

    /// Count one token check: allowed, or denied for `reason`.
    pub fn auth_decision(&self, denied: Option<&str>) {
        match denied {
            None => {
                if let Some(c) = &self.series().auth_allowed {
                    c.inc();
                }
            }
            Some(reason) => METRICS
                .auth_decisions
                .with_label_values(&[&self.name, "denied", reason])
                .inc(),
        }
    }

    /// Count one request.
    pub fn observe(&self, status: u16, seconds: f64) {
        let series = self.series();
        series.requests[status_class(status)].inc();
        series.duration.observe(seconds);
    }
}

/// Drop the token-check series of route `name`: it was removed, or no longer checks tokens.
pub fn forget_auth_decisions<'a>(name: &str, reasons: impl IntoIterator<Item = &'a str>) {
    let m = &*METRICS;
    let _ = m
        .auth_decisions
        .remove_label_values(&[name, "allowed", "ok"]);
    for reason in reasons {
        let _ = m
            .auth_decisions
            .remove_label_values(&[name, "denied", reason]);
    }
}

/// Drop the series of a route that a reload removed, so dashboards do not show it forever:
/// `auth_reasons` are the denial reasons and `limits` the limit names its series may carry.
pub fn forget_route<'a>(
    name: &str,
    auth_reasons: impl IntoIterator<Item = &'a str>,
    limits: &[&str],
) {
    let m = &*METRICS;
    for class in STATUS_CLASSES {
        let _ = m.requests.remove_label_values(&[name, class]);
    }
    let _ = m.request_duration.remove_label_values(&[name]);
    forget_auth_decisions(name, auth_reasons);
    for limit in limits {
        for result in ["allowed", "denied"] {
            let _ = m
                .ratelimit_decisions
                .remove_label_values(&[name, limit, result]);
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

/// `portcullis_session_logins_total{session,result}`: logins finished at the callback:
/// `success`, `denied` (the provider said no), `invalid` (state, code or ID token refused),
/// `error` (the provider could not be reached).
pub const SESSION_LOGINS_TOTAL: &str = "portcullis_session_logins_total";
/// `portcullis_session_refreshes_total{session,result}`: sessions refreshed: `success` (a
/// refresh token redeemed), `shared` (the result of another request's or node's redemption),
/// `invalid_grant` (the provider ended the session), `error` (unreachable, refused).
pub const SESSION_REFRESHES_TOTAL: &str = "portcullis_session_refreshes_total";
/// `portcullis_session_logouts_total{session,kind}`: sessions ended: `user` (the logout
/// path), `backchannel` (the provider's logout token), `expired` (idle or absolute timeout).
pub const SESSION_LOGOUTS_TOTAL: &str = "portcullis_session_logouts_total";
/// `portcullis_session_cache_requests_total{session,result}`: the in-process session cache,
/// `hit` or `miss` (a miss opens the cookie or reads Redis).
pub const SESSION_CACHE_REQUESTS_TOTAL: &str = "portcullis_session_cache_requests_total";
/// `portcullis_session_provider_calls_total{session,call,result}`: calls to the provider
/// (`token`, `refresh`, `revocation`), `success` or `error`; each has `provider_timeout`.
pub const SESSION_PROVIDER_CALLS_TOTAL: &str = "portcullis_session_provider_calls_total";

/// The browser-session metrics (registered with the others, kept apart for their labels).
pub struct SessionMetrics {
    /// See [`SESSION_LOGINS_TOTAL`].
    pub logins: IntCounterVec,
    /// See [`SESSION_REFRESHES_TOTAL`].
    pub refreshes: IntCounterVec,
    /// See [`SESSION_LOGOUTS_TOTAL`].
    pub logouts: IntCounterVec,
    /// See [`SESSION_CACHE_REQUESTS_TOTAL`].
    pub cache: IntCounterVec,
    /// See [`SESSION_PROVIDER_CALLS_TOTAL`].
    pub provider_calls: IntCounterVec,
}

/// Label values of each session family but the provider calls, every one present from zero.
const SESSION_LABELS: [&[&str]; 4] = [
    &["success", "denied", "invalid", "error"],
    &["success", "shared", "invalid_grant", "error"],
    &["user", "backchannel", "expired"],
    &["hit", "miss"],
];
/// The provider calls counted.
const SESSION_CALLS: [&str; 3] = ["token", "refresh", "revocation"];

/// The browser-session metrics.
pub static SESSION_METRICS: LazyLock<SessionMetrics> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register_int_counter_vec!(name, help, labels).expect("register session metric")
    };
    SessionMetrics {
        logins: counter(
            SESSION_LOGINS_TOTAL,
            "Logins finished at the callback, by session and result.",
            &["session", "result"],
        ),
        refreshes: counter(
            SESSION_REFRESHES_TOTAL,
            "Session refreshes, by session and result.",
            &["session", "result"],
        ),
        logouts: counter(
            SESSION_LOGOUTS_TOTAL,
            "Sessions ended, by session and kind.",
            &["session", "kind"],
        ),
        cache: counter(
            SESSION_CACHE_REQUESTS_TOTAL,
            "Lookups in the in-process session cache, by session and result.",
            &["session", "result"],
        ),
        provider_calls: counter(
            SESSION_PROVIDER_CALLS_TOTAL,
            "Calls to the identity provider, by session, call and result.",
            &["session", "call", "result"],
        ),
    }
});

impl SessionMetrics {
    fn families(&self) -> [&IntCounterVec; 4] {
        [&self.logins, &self.refreshes, &self.logouts, &self.cache]
    }

    /// Make every series of session client `name` exist, at zero.
    pub fn register(&self, name: &str) {
        for (family, values) in self.families().into_iter().zip(SESSION_LABELS) {
            for value in values {
                family.with_label_values(&[name, value]);
            }
        }
        for call in SESSION_CALLS {
            for result in ["success", "error"] {
                self.provider_calls.with_label_values(&[name, call, result]);
            }
        }
    }

    /// Drop every series of session client `name`.
    pub fn forget(&self, name: &str) {
        for (family, values) in self.families().into_iter().zip(SESSION_LABELS) {
            for value in values {
                let _ = family.remove_label_values(&[name, value]);
            }
        }
        for call in SESSION_CALLS {
            for result in ["success", "error"] {
                let _ = self
                    .provider_calls
                    .remove_label_values(&[name, call, result]);
            }
        }
    }

    /// Count one event of session client `name` in `family`.
    pub fn count(family: &IntCounterVec, name: &str, value: &str) {
        family.with_label_values(&[name, value]).inc();
    }
}
