//! Rate limits: token buckets per client IP, per user, per route, and on failed token checks;
//! and in-flight caps per upstream pool.
//!
//! A check is one lookup under a shard's read lock and one compare-and-swap on the bucket: no
//! allocation for a key seen before. Buckets live in a [`Store`]: one dropped there is one
//! idle long enough to be full again, so eviction never forgives a client early (only a store
//! at `max_keys` drops buckets before that, the fullest first). Cluster-scoped limits also reconcile with Redis in the
//! background ([`cluster`]); no request ever waits on Redis.

pub mod cluster;
pub mod compile;
pub mod concurrency;
pub mod gcra;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{LimitConfig, LimitScope};
use crate::metrics::METRICS;
use crate::store::Store;
pub use concurrency::Concurrency;
pub use gcra::{Bucket, Shape, Verdict};

/// Which limit of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Per client IP.
    PerIp,
    /// Per user.
    PerUser,
    /// Per route.
    PerRoute,
    /// Failed token checks per client IP.
    AuthFailuresPerIp,
}

impl LimitKind {
    /// Every kind.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::PerIp,
        LimitKind::PerUser,
        LimitKind::PerRoute,
        LimitKind::AuthFailuresPerIp,
    ];

    /// Its name in the config, metrics and `RateLimit` headers.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::PerIp => "per_ip",
            LimitKind::PerUser => "per_user",
            LimitKind::PerRoute => "per_route",
            LimitKind::AuthFailuresPerIp => "auth_failures_per_ip",
        }
    }
}

enum Buckets {
    /// One bucket for the whole route.
    Single(Bucket),
    /// A bucket per key.
    Keyed(Store<Bucket>),
}

/// Cluster bookkeeping of a limiter: keys with admissions Redis has not heard of.
pub(crate) struct ClusterShare {
    pub(crate) dirty: Mutex<Vec<u128>>,
    /// Nodes sharing the limit, last known; 1 until Redis says.
    pub(crate) nodes: AtomicU64,
    /// Whether Redis answered the last sync; when not, the local share applies.
    pub(crate) connected: std::sync::atomic::AtomicBool,
}

/// One limit of one route.
pub struct Limiter {
    /// Which limit.
    pub kind: LimitKind,
    /// The route's name.
    pub route: String,
    /// The config it was built from, to keep its buckets across reloads.
    pub config: LimitConfig,
    shape: Shape,
    buckets: Buckets,
    /// `RateLimit-Policy` item: `"per_ip";q=100;w=2`.
    pub policy_header: String,
    /// Its decision counters (allowed, denied), registered by [`Limiter::register`] or the
    /// first check, never by building it.
    series: std::sync::OnceLock<[prometheus::IntCounter; 2]>,
    pub(crate) cluster: Option<ClusterShare>,
}

/// A limiter's buckets are kept across a reload when its route, kind and bucket settings are.
impl crate::carry::Carry for Limiter {
    type Key = (
        String,
        LimitKind,
        (crate::config::Rate, u64, LimitScope, Option<String>, u64),
    );

    fn carry_key(&self) -> Self::Key {
        (self.route.clone(), self.kind, self.config.bucket_settings())
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("kind", &self.kind)
            .field("route", &self.route)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// Build a limiter for `route`.
    pub fn new(route: &str, kind: LimitKind, config: &LimitConfig) -> Limiter {
        let per_ns = u64::try_from(config.rate.per.as_nanos()).unwrap_or(u64::MAX);
        let shape = Shape {
            emission_ns: (per_ns / config.rate.count.max(1)).max(1),
            burst: config.burst.max(1),
        };
        let buckets = if kind == LimitKind::PerRoute {
            Buckets::Single(Bucket::default())
        } else {
            // A bucket's deadline is the instant it is full again; the store sweeps out
            // such buckets once a second.
            Buckets::Keyed(Store::new(config.max_keys, SWEEP_EVERY_NS))
        };
        let window = Duration::from_nanos(shape.tolerance_ns()).as_secs_f64();
        let policy_header = format!(
            "\"{}\";q={};w={}",
            kind.name(),
            shape.burst,
            window.ceil().max(1.0) as u64
        );
        Limiter {
            kind,
            route: route.to_string(),
            config: config.clone(),
            shape,
            buckets,
            policy_header,
            series: std::sync::OnceLock::new(),
            cluster: (config.scope == LimitScope::Cluster).then(|| ClusterShare {
                dirty: Mutex::new(Vec::new()),
                nodes: AtomicU64::new(1),
                connected: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Drop the decision series of limit `kind` of `route`: the commit step of a reload that
    /// removed that limit (or the route).
    pub fn forget(route: &str, kind: LimitKind) {
        for result in ["allowed", "denied"] {
            let _ = METRICS
                .ratelimit_decisions
                .remove_label_values(&[route, kind.name(), result]);
        }
    }

    /// Make its series exist (at zero when new): the commit step of a reload.
    pub fn register(&self) {
        let _ = self.series();
    }

    fn series(&self) -> &[prometheus::IntCounter; 2] {
        self.series.get_or_init(|| {
            let m = &METRICS.ratelimit_decisions;
            ["allowed", "denied"].map(|r| m.with_label_values(&[&self.route, self.kind.name(), r]))
        })
    }

    /// The bucket shape in force: the whole limit, or this node's share while the cluster
    /// cannot be reached.
    pub fn shape(&self) -> Shape {
        match &self.cluster {
            Some(c) if !c.connected.load(Ordering::Relaxed) => {
                let nodes = c.nodes.load(Ordering::Relaxed).max(1);
                Shape {
                    emission_ns: self.shape.emission_ns.saturating_mul(nodes),
                    burst: (self.shape.burst / nodes).max(1),
                }
            }
            _ => self.shape,
        }
    }

    /// The full shape, whatever the cluster state.
    pub fn configured_shape(&self) -> Shape {
        self.shape
    }

    /// Take one request for `key`.
    pub fn check(&self, key: u128) -> Verdict {
        let shape = self.shape();
        let now = gcra::now_ns();
        let take = |bucket: &Bucket| {
            let verdict = bucket.check(shape, now);
            // The first admission since the last sync puts the key on the list to report.
            let report = verdict.allowed
                && self.cluster.is_some()
                && bucket.pending.fetch_add(1, Ordering::Relaxed) == 0;
            (verdict, report)
        };
        let (verdict, report) = match &self.buckets {
            Buckets::Single(b) => take(b),
            Buckets::Keyed(store) => store.get_or_insert(key, now, Bucket::default, take),
        };
        if verdict.allowed {
            self.series()[0].inc();
        } else {
            self.series()[1].inc();
        }
        if let (true, Some(c)) = (report, &self.cluster) {
            c.dirty.lock().unwrap_or_else(|p| p.into_inner()).push(key);
        }
        verdict
    }

    /// Apply `f` to the bucket of `key`, if there is one.
    pub(crate) fn with_bucket<R>(&self, key: u128, f: impl FnOnce(&Bucket) -> R) -> Option<R> {
        match &self.buckets {
            Buckets::Single(b) => Some(f(b)),
            Buckets::Keyed(store) => store.get(key, f),
        }
    }

    /// For a failure guard: refuse now if `key` has nothing left, without taking anything.
    pub fn refuses(&self, key: u128) -> Option<Verdict> {
        let shape = self.shape();
        let wait = self.with_bucket(key, |b| b.is_empty(shape, gcra::now_ns()))??;
        self.series()[1].inc();
        Some(Verdict {
            allowed: false,
            remaining: 0,
            retry_after_ns: wait,
            reset_ns: shape.tolerance_ns(),
        })
    }

    /// The bucket key of a user name (a claim value) for this limit.
    ///
    /// A cluster-wide limit needs the same key on every node, which the per-process keyed
    /// hash of [`user_key`] cannot give (each node would sync its own Redis key for the same
    /// user, and the limit would not be shared). It takes the first 128 bits of SHA-256
    /// instead: stable everywhere, and still no one can aim two users at one bucket.
    pub fn user_key(&self, value: &str) -> u128 {
        if self.cluster.is_none() {
            return user_key(value);
        }
        ring::digest::digest(&ring::digest::SHA256, value.as_bytes())
            .as_ref()
            .iter()
            .take(16)
            .fold(0, |key, byte| (key << 8) | u128::from(*byte))
    }

    /// Keys held, after a sweep of the shards due one (buckets full again are dropped by
    /// their shard's sweep, on insert or here).
    pub fn key_count(&self) -> u64 {
        match &self.buckets {
            Buckets::Single(_) => 1,
            Buckets::Keyed(store) => {
                store.sweep_due(gcra::now_ns());
                store.len() as u64
            }
        }
    }
}

/// How often a store of buckets is swept for full ones (as inserts come).
const SWEEP_EVERY_NS: u64 = 1_000_000_000;

static USER_HASH: std::sync::LazyLock<(ahash::RandomState, ahash::RandomState)> =
    std::sync::LazyLock::new(|| (ahash::RandomState::new(), ahash::RandomState::new()));

/// The bucket key of a user name (a claim value): a keyed 128-bit hash, so no claim text is
/// held and no client can aim two users at one bucket. The key differs from process to
/// process: cluster-wide limits use [`Limiter::user_key`].
pub fn user_key(value: &str) -> u128 {
    let (a, b) = &*USER_HASH;
    (u128::from(a.hash_one(value)) << 64) | u128::from(b.hash_one(value))
}

/// The limits of one route.
#[derive(Debug, Default)]
pub struct RouteLimits {
    /// Per client IP, before authentication.
    pub per_ip: Option<Arc<Limiter>>,
    /// Per user, with the projection slot of the user claim.
    pub per_user: Option<(Arc<Limiter>, usize)>,
    /// For the whole route.
    pub per_route: Option<Arc<Limiter>>,
    /// Failed token checks per client IP.
    pub auth_failures_per_ip: Option<Arc<Limiter>>,
    /// `RateLimit-Policy` for the route's limits that send headers, joined; made once with
    /// the route, not per response.
    pub policy_header: Option<http::HeaderValue>,
    /// Whether allowed responses carry the headers.
    pub headers_on_success: bool,
}

impl RouteLimits {
    /// Every limiter of the route.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Limiter>> {
        self.per_ip
            .iter()
            .chain(self.per_user.iter().map(|(l, _)| l))
            .chain(self.per_route.iter())
            .chain(self.auth_failures_per_ip.iter())
    }
}

/// The tightest verdict of a request so far, for the `RateLimit` header.
#[derive(Debug, Clone, Copy)]
pub struct Tightest {
    /// Which limit.
    pub kind: LimitKind,
    /// Its verdict.
    pub verdict: Verdict,
}

impl Tightest {
    /// Keep the verdict with fewer requests left.
    pub fn update(current: &mut Option<Tightest>, kind: LimitKind, verdict: Verdict) {
        let tighter = match current {
            None => true,
            Some(t) => !verdict.allowed || verdict.remaining < t.verdict.remaining,
        };
        if tighter {
            *current = Some(Tightest { kind, verdict });
        }
    }

    /// The `RateLimit` header value (draft-ietf-httpapi-ratelimit-headers):
    /// `"per_ip";r=0;t=2`.
    pub fn header(&self) -> String {
        let reset = Duration::from_nanos(self.verdict.reset_ns)
            .as_secs_f64()
            .ceil() as u64;
        format!(
            "\"{}\";r={};t={}",
            self.kind.name(),
            self.verdict.remaining,
            reset
        )
    }

    /// Seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        (Duration::from_nanos(self.verdict.retry_after_ns)
            .as_secs_f64()
            .ceil() as u64)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn config(count: u64, burst: u64) -> LimitConfig {
        LimitConfig {
            rate: Rate {
                count,
                per: Duration::from_secs(1),
            },
            burst,
            scope: LimitScope::Local,
            headers: false,
            claim: None,
            max_keys: 1000,
        }
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let l = Limiter::new("test-keys", LimitKind::PerIp, &config(1, 2));
        assert!(l.check(1).allowed);
        assert!(l.check(1).allowed);
        assert!(!l.check(1).allowed);
        assert!(l.check(2).allowed);
        assert_eq!(l.key_count(), 2);
        assert_eq!(l.policy_header, "\"per_ip\";q=2;w=2");
    }

    #[test]
    fn a_full_store_keeps_the_newest_key() {
        let mut c = config(1, 2);
        c.max_keys = 2;
        let l = Limiter::new("test-full", LimitKind::PerIp, &c);
        for key in [1, 2, 1, 2, 3] {
            l.check(key);
        }
        for _ in 0..3 {
            l.check(3);
            // Let the store make room: the newcomer stays, the bucket nearest full goes.
            assert!(l.key_count() <= 2);
            assert!(!l.check(3).allowed, "key 3 got a fresh bucket");
        }
    }

    #[test]
    fn cluster_user_keys_are_the_same_on_every_node() {
        let mut c = config(1, 2);
        let local = Limiter::new("test-user-local", LimitKind::PerUser, &c);
        c.scope = LimitScope::Cluster;
        let cluster = Limiter::new("test-user-cluster", LimitKind::PerUser, &c);
        // A constant, so another process computes it too: SHA-256("alice"), first 16 bytes.
        assert_eq!(
            cluster.user_key("alice"),
            0x2bd806c97f0e00af1a1fc3328fa763a9
        );
        assert_ne!(cluster.user_key("alice"), cluster.user_key("bob"));
        assert_eq!(local.user_key("alice"), user_key("alice"));
    }

    #[test]
    fn failure_guard_only_peeks() {
        let l = Limiter::new("test-guard", LimitKind::AuthFailuresPerIp, &config(1, 1));
        assert!(l.refuses(7).is_none());
        assert!(l.check(7).allowed);
        let v = l.refuses(7).unwrap();
        assert!(!v.allowed);
        assert!(v.retry_after_ns > 0);
    }

    #[test]
    fn tightest_and_headers() {
        let mut t = None;
        let v = |remaining, allowed| Verdict {
            allowed,
            remaining,
            retry_after_ns: if allowed { 0 } else { 1_500_000_000 },
            reset_ns: 2_000_000_000,
        };
        Tightest::update(&mut t, LimitKind::PerIp, v(5, true));
        Tightest::update(&mut t, LimitKind::PerUser, v(2, true));
        Tightest::update(&mut t, LimitKind::PerRoute, v(9, true));
        assert_eq!(t.unwrap().header(), "\"per_user\";r=2;t=2");
        Tightest::update(&mut t, LimitKind::PerRoute, v(0, false));
        assert_eq!(t.unwrap().retry_after_secs(), 2);
    }
}
