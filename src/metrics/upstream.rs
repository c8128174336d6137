//! Upstream pools: target health, attempts, answers, retries, DNS, TLS and the in-flight cap.

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
/// `portcullis_upstream_concurrency_limit{upstream}`: the in-flight cap now.
pub const UPSTREAM_CONCURRENCY_LIMIT: &str = "portcullis_upstream_concurrency_limit";
/// `portcullis_upstream_in_flight{upstream}`: requests in flight to the pool.
pub const UPSTREAM_IN_FLIGHT: &str = "portcullis_upstream_in_flight";
