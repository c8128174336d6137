//! The edge cache of public routes: lookups by result, bytes held, evictions and purges.
//!
//! A cache route's series appear (at zero) at the commit of the generation that has it and
//! go when a generation without it commits; the request path and the cache's own eviction
//! only move them.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

/// `portcullis_cache_lookups_total{route,result}`: requests on a cache route, by what the cache
/// did: `hit`, `miss`, `stale` (served stale while revalidating or on an upstream error),
/// `expired` (an expired entry refetched or revalidated), `bypass` (the request carried
/// credentials or was not a GET or HEAD); every result from zero.
pub const CACHE_LOOKUPS_TOTAL: &str = "portcullis_cache_lookups_total";
/// `portcullis_cache_bytes{route}`: body bytes the route's cache holds now.
pub const CACHE_BYTES: &str = "portcullis_cache_bytes";
/// `portcullis_cache_evictions_total{route}`: objects dropped to stay under `max_bytes`.
pub const CACHE_EVICTIONS_TOTAL: &str = "portcullis_cache_evictions_total";
/// `portcullis_cache_purges_total{route}`: objects removed by `POST /cache/purge`.
pub const CACHE_PURGES_TOTAL: &str = "portcullis_cache_purges_total";

/// What the cache did for a request, as the `result` label says it.
pub const CACHE_RESULTS: [&str; 5] = ["hit", "miss", "stale", "expired", "bypass"];

/// The cache families.
pub struct CacheMetrics {
    lookups: IntCounterVec,
    bytes: IntGaugeVec,
    evictions: IntCounterVec,
    purges: IntCounterVec,
}

/// The process's cache families; the first use registers them.
pub static CACHE_METRICS: LazyLock<CacheMetrics> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register_int_counter_vec!(name, help, labels).expect("register cache metric")
    };
    CacheMetrics {
        lookups: counter(
            CACHE_LOOKUPS_TOTAL,
            "Requests on cache routes, by route and cache result.",
            &["route", "result"],
        ),
        #[allow(clippy::expect_used)]
        bytes: register_int_gauge_vec!(
            CACHE_BYTES,
            "Body bytes held by a route's edge cache.",
            &["route"]
        )
        .expect("register cache bytes"),
        evictions: counter(
            CACHE_EVICTIONS_TOTAL,
            "Objects evicted from a route's edge cache to stay under max_bytes.",
            &["route"],
        ),
        purges: counter(
            CACHE_PURGES_TOTAL,
            "Objects removed from a route's edge cache by POST /cache/purge.",
            &["route"],
        ),
    }
});

/// One cache route's series, made at commit.
pub struct CacheSeries {
    /// Lookups, in the order of [`CACHE_RESULTS`].
    pub lookups: [IntCounter; 5],
    /// See [`CACHE_BYTES`].
    pub bytes: IntGauge,
    /// See [`CACHE_EVICTIONS_TOTAL`].
    pub evictions: IntCounter,
    /// See [`CACHE_PURGES_TOTAL`].
    pub purges: IntCounter,
}

impl CacheMetrics {
    /// Make route `name`'s series exist (at zero, or where they were).
    pub fn register(&self, name: &str) -> CacheSeries {
        CacheSeries {
            lookups: CACHE_RESULTS.map(|r| self.lookups.with_label_values(&[name, r])),
            bytes: self.bytes.with_label_values(&[name]),
            evictions: self.evictions.with_label_values(&[name]),
            purges: self.purges.with_label_values(&[name]),
        }
    }

    /// Drop route `name`'s series.
    pub fn forget(&self, name: &str) {
        for r in CACHE_RESULTS {
            let _ = self.lookups.remove_label_values(&[name, r]);
        }
        let _ = self.bytes.remove_label_values(&[name]);
        let _ = self.evictions.remove_label_values(&[name]);
        let _ = self.purges.remove_label_values(&[name]);
    }
}
