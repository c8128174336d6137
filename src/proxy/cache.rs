//! The proxy's side of the edge cache: pingora's cache hooks, each handing over to
//! [`crate::cache`], and what the client and the log see of it (`X-Cache`, the lookup
//! counts, the access line's `cache` field).
//!
//! The cache phase runs after `request_filter`, so every refusal (IP lists, limits) comes
//! first; a request that carried credentials never enables it.

use pingora::cache::{CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::RequestCtx;
use crate::cache;

/// What the cache did for a request; the order of `CACHE_RESULTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Hit = 0,
    Miss = 1,
    Stale = 2,
    Expired = 3,
    Bypass = 4,
}

impl Outcome {
    /// The access line's `cache` field and the metric's `result`.
    pub(super) fn label(self) -> &'static str {
        crate::metrics::cache::CACHE_RESULTS[self as usize]
    }

    /// The `X-Cache` value: a request not served from the cache is a `MISS`.
    fn header(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Stale => "STALE",
            Outcome::Expired => "EXPIRED",
            Outcome::Miss | Outcome::Bypass => "MISS",
        }
    }
}

/// `request_cache_filter`: use the route's cache, if it has one and the request may.
pub(super) fn enable(session: &mut Session, ctx: &mut RequestCtx) {
    let Some(route_cache) = ctx.route().and_then(|r| r.cache.as_ref()) else {
        return;
    };
    if !cache::eligible(session.req_header()) {
        ctx.cache = Some(Outcome::Bypass);
        return;
    }
    let max_object_bytes = route_cache.max_object_bytes;
    session.cache.enable(
        &*cache::STORE,
        Some(&cache::DISPATCH),
        None,
        Some(cache::lock()),
        None,
    );
    session.cache.set_max_file_size_bytes(max_object_bytes);
    ctx.cache = Some(Outcome::Miss);
}

/// `cache_key_callback`.
pub(super) fn key(session: &Session, ctx: &RequestCtx) -> pingora::Result<CacheKey> {
    match ctx.route().and_then(|r| r.cache.as_ref()) {
        Some(c) => Ok(cache::key(&c.tier, session.req_header())),
        None => Error::e_explain(ErrorType::InternalError, "cache on a route without one"),
    }
}

/// `response_cache_filter`.
pub(super) fn cacheable(resp: &ResponseHeader, ctx: &RequestCtx) -> RespCacheable {
    match ctx.route().and_then(|r| r.cache.as_ref()) {
        Some(c) => cache::cacheable(c, resp),
        None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
    }
}

/// `cache_vary_filter`.
pub(super) fn variance(
    meta: &CacheMeta,
    req: &RequestHeader,
) -> Option<pingora::cache::key::HashBinary> {
    cache::variance(meta, req)
}

/// `should_serve_stale`: while revalidating (`error` is `None`) whenever the stored
/// response's `stale-while-revalidate` allows, which pingora-cache checked; on an error
/// whenever it is not the client's (its `stale-if-error` checked the same way).
pub(super) fn serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| e.esource() != &ErrorSource::Downstream)
}

/// `response_filter`, last: `X-Cache` on a cache route's response.
pub(super) fn mark(session: &Session, response: &mut ResponseHeader, ctx: &mut RequestCtx) {
    let Some(outcome) = ctx.cache else { return };
    let outcome = match (outcome, session.cache.phase()) {
        (Outcome::Bypass, _) => Outcome::Bypass,
        (_, CachePhase::Hit) => Outcome::Hit,
        (_, CachePhase::Stale | CachePhase::StaleUpdating) => Outcome::Stale,
        (_, CachePhase::Expired | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_)) => {
            Outcome::Expired
        }
        _ => Outcome::Miss,
    };
    ctx.cache = Some(outcome);
    let _ = response.insert_header("x-cache", outcome.header());
}

/// `logging`: count the lookup.
pub(super) fn count(ctx: &RequestCtx) {
    if let (Some(outcome), Some(series)) = (
        ctx.cache,
        ctx.route()
            .and_then(|r| r.cache.as_ref())
            .and_then(|c| c.tier.series.get()),
    ) {
        series.lookups[outcome as usize].inc();
    }
}
