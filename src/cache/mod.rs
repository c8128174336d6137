//! The edge cache of public routes (`routes[].cache`, `auth: none` only), on pingora-cache.
//!
//! Owns what a cache route stores and when: which requests may use it (GET and HEAD without
//! `Authorization` or `Cookie`), the key (the route's tier, host without port, path and query
//! as sent), which responses are stored (RFC 9111 freshness from `Cache-Control` and
//! `Expires`, `default_ttl` for the heuristically cacheable statuses without either, never
//! one with `Set-Cookie`, `Vary: *`, `no-store` or `private`), the `Vary` variants, and the
//! purges of `POST /cache/purge`. It never stores or serves a response to a request that
//! carried credentials.
//!
//! The storage, eviction dispatch and cache lock are one each for the process (pingora-cache
//! wants them `'static`); each route's bounds live in its [`evict::Tier`], kept across a
//! reload while the route's name and `max_bytes` stay (its other settings apply to what it
//! stores next).

pub mod evict;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use http::header;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_serve_stale_durations, resp_cacheable};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{AuthConfig, Issues, RouteConfig};
use crate::metrics::cache::CACHE_METRICS;
pub use evict::Tier;
use store::Store;

/// The process's cache storage.
pub static STORE: LazyLock<Store> = LazyLock::new(Store::default);
/// The process's eviction manager (forwards to each route's tier).
pub static DISPATCH: evict::Dispatch = evict::Dispatch;
/// How long one fill may hold an object's lock before the requests waiting on it go upstream
/// themselves.
const LOCK_AGE: Duration = Duration::from_secs(30);
static LOCK: LazyLock<CacheLock> = LazyLock::new(|| CacheLock::new(LOCK_AGE));

/// The cache lock: concurrent misses of one object wait for one fill.
pub fn lock() -> &'static CacheKeyLockImpl {
    &*LOCK
}

/// Tier ids; unique in the process, so that a reload's new tier never reads an old one's
/// entries.
static NEXT_TIER: AtomicU64 = AtomicU64::new(1);

/// A route's cache, compiled.
pub struct RouteCache {
    /// Its LRU, index and series (carried across reloads).
    pub tier: Arc<Tier>,
    /// Responses larger than this are not stored.
    pub max_object_bytes: usize,
    /// Freshness of responses without any.
    pub default_ttl: Option<Duration>,
}

/// Compile `rc.cache` (at `path`, the route's path), keeping the tier of `previous` (the
/// serving generation's cache routes) with the same route name and `max_bytes`.
pub fn compile<'a>(
    rc: &RouteConfig,
    path: &str,
    previous: impl IntoIterator<Item = &'a Arc<Tier>>,
    issues: &mut Issues,
) -> Option<RouteCache> {
    let cache = rc.cache.as_ref()?;
    if matches!(rc.auth, Some(AuthConfig::Policy(_))) {
        issues.push(
            format!("{path}.cache"),
            "only an `auth: none` route can have a cache: responses for authenticated \
             requests are never stored",
        );
        return None;
    }
    if cache.max_bytes == 0 {
        issues.push(format!("{path}.cache.max_bytes"), "must be more than 0");
    }
    if cache.max_object_bytes == 0 || cache.max_object_bytes > cache.max_bytes {
        issues.push(
            format!("{path}.cache.max_object_bytes"),
            "must be more than 0 and at most `max_bytes`",
        );
    }
    if cache.default_ttl.is_some_and(|d| d.0.is_zero()) {
        issues.push(
            format!("{path}.cache.default_ttl"),
            "must be more than 0; leave it out to store no response without freshness",
        );
    }
    let key = (rc.name.clone(), cache.max_bytes);
    let tier = crate::carry::kept(previous, &key).unwrap_or_else(|| {
        Arc::new(Tier::new(
            NEXT_TIER.fetch_add(1, Ordering::Relaxed),
            &rc.name,
            cache.max_bytes,
        ))
    });
    Some(RouteCache {
        tier,
        max_object_bytes: cache.max_object_bytes,
        default_ttl: cache.default_ttl.map(|d| d.0),
    })
}

/// The commit step: `new`'s tiers get their series and become reachable; those of `old` that
/// `new` does not keep are emptied and their series dropped.
pub fn commit<'a>(
    old: impl IntoIterator<Item = &'a Arc<Tier>>,
    new: impl IntoIterator<Item = &'a Arc<Tier>> + Clone,
) {
    for gone in old {
        if new.clone().into_iter().any(|t| t.id == gone.id) {
            continue;
        }
        evict::withdraw(gone.id);
        for key in gone.take_all() {
            STORE.remove(&evict::stored_hash(&key));
        }
        // A route whose cache was replaced keeps its series (counters go on).
        if !new.clone().into_iter().any(|t| t.route == gone.route) {
            CACHE_METRICS.forget(&gone.route);
        }
    }
    for tier in new {
        let series = tier
            .series
            .get_or_init(|| CACHE_METRICS.register(&tier.route));
        series
            .bytes
            .set(i64::try_from(tier.bytes()).unwrap_or(i64::MAX));
        evict::publish(tier);
    }
}

/// Whether `req` may be served from and stored in the cache: GET or HEAD, with no
/// credentials (`Authorization`, or any `Cookie`: a session cookie, or one the upstream
/// reads).
pub fn eligible(req: &RequestHeader) -> bool {
    matches!(req.method, http::Method::GET | http::Method::HEAD)
        && !req.headers.contains_key(header::AUTHORIZATION)
        && !req.headers.contains_key(header::COOKIE)
}

/// The key of `req` in `tier`: the tier, the host (lowercase, without port) and the path
/// with its query as sent.
pub fn key(tier: &Tier, req: &RequestHeader) -> CacheKey {
    let host = req
        .uri
        .host()
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let text = format!(
        "{:x} {}{}",
        tier.id,
        host_part(host),
        String::from_utf8_lossy(req.raw_path())
    );
    CacheKey::new(text.clone(), text)
}

/// A host lowercased, without its port or final dot.
fn host_part(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// No freshness from defaults: `default_ttl` is applied by [`cacheable`] itself.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Statuses RFC 9110 (section 15.1) calls heuristically cacheable, which `default_ttl` may
/// make fresh (206 left out: ranges are never asked upstream).
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether and how long `resp` may be stored.
pub fn cacheable(cache: &RouteCache, resp: &ResponseHeader) -> RespCacheable {
    if resp.headers.contains_key(header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    if resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|n| n.trim_ascii() == b"*")
    }) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    let decided = resp_cacheable(cc.as_ref(), resp.clone(), false, &NO_DEFAULTS);
    match (decided, cache.default_ttl) {
        (RespCacheable::Uncacheable(_), Some(ttl))
            if cc
                .as_ref()
                .is_none_or(|c| c.is_cacheable() != Cacheable::No)
                && HEURISTIC.contains(&resp.status.as_u16()) =>
        {
            let now = SystemTime::now();
            let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &NO_DEFAULTS);
            let mut header = resp.clone();
            if let Some(cc) = &cc {
                cc.strip_private_headers(&mut header);
            }
            RespCacheable::Cacheable(CacheMeta::new(now + ttl, now, swr, sie, header))
        }
        (decided, _) => decided,
    }
}

/// The variant of `req` for the stored response `meta`: the values of the request headers
/// its `Vary` names; `None` when it names none.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<pingora::cache::key::HashBinary> {
    let mut builder = VarianceBuilder::new();
    for value in meta.headers().get_all(header::VARY) {
        let Ok(names) = value.to_str() else { continue };
        for name in names.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            let value = req
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            builder.add_owned_name_value(name, value);
        }
    }
    builder.finalize()
}

/// What a purge asks for: `url` alone, or everything under it.
pub struct Purge<'a> {
    /// `http://host/path?query` or `https://...`.
    pub url: &'a str,
    /// Every URL that starts with `url`.
    pub prefix: bool,
}

/// The URL as the cache keys it (host lowercased, no port, no scheme); `None` when it is not
/// an `http://` or `https://` URL.
pub fn purge_key(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    Some(format!("{}{}", host_part(host), path))
}

/// Remove what `purge` names from `tiers`; the objects removed.
pub fn purge<'a>(tiers: impl IntoIterator<Item = &'a Arc<Tier>>, purge: &Purge<'_>) -> usize {
    let Some(url) = purge_key(purge.url) else {
        return 0;
    };
    let mut removed = 0;
    for tier in tiers {
        let keys = tier.take(&url, purge.prefix);
        let mut n = 0;
        for key in &keys {
            if STORE.remove(&evict::stored_hash(key)) {
                n += 1;
            }
        }
        if let Some(series) = tier.series.get() {
            series.purges.inc_by(n);
        }
        removed += n as usize;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_urls_are_keyed_as_requests_are() {
        assert_eq!(
            purge_key("http://WWW.Example.com:8080/static/a.css?v=1").as_deref(),
            Some("www.example.com/static/a.css?v=1")
        );
        assert_eq!(
            purge_key("https://www.example.com.").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(purge_key("/static/a.css"), None);
        assert_eq!(purge_key("http:///x"), None);
        assert_eq!(host_part("[::1]:8080"), "[::1]");
    }

    fn route_cache(default_ttl: Option<u64>) -> RouteCache {
        RouteCache {
            tier: Arc::new(Tier::new(0, "t", 1000)),
            max_object_bytes: 100,
            default_ttl: default_ttl.map(Duration::from_secs),
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn default_ttl_only_without_freshness_and_for_heuristic_statuses() {
        let with = route_cache(Some(60));
        let without = route_cache(None);
        let stored = |c: &RouteCache, r: &ResponseHeader| cacheable(c, r).is_cacheable();
        assert!(stored(&with, &response(200, &[])));
        assert!(!stored(&without, &response(200, &[])));
        assert!(!stored(&with, &response(500, &[])));
        assert!(!stored(
            &with,
            &response(200, &[("cache-control", "no-store")])
        ));
        assert!(!stored(
            &with,
            &response(200, &[("cache-control", "private")])
        ));
        assert!(!stored(&with, &response(200, &[("set-cookie", "a=b")])));
        assert!(!stored(&with, &response(200, &[("vary", "accept, *")])));
        assert!(stored(
            &without,
            &response(500, &[("cache-control", "max-age=5")])
        ));
    }
}
