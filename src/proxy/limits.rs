//! A route's rate-limit checks on the request path: a look (`peek`) or a take, the tightest
//! verdict kept for the `RateLimit` headers, and a span for each when the request is traced.

use super::{spans, Refusal, RequestCtx};
use crate::ratelimit::{Limiter, Tightest};

/// Refuse now if `limiter`'s bucket for `key` has nothing left, without taking from it.
pub(super) fn peek(ctx: &mut RequestCtx, limiter: &Limiter, key: u128) -> Result<(), Refusal> {
    let start = spans::clock(ctx);
    let refused = limiter.refuses(key);
    spans::limit(ctx, start, limiter, true, refused.is_none());
    match refused {
        Some(verdict) => {
            Tightest::update(&mut ctx.tightest, limiter.kind, verdict);
            Err(Refusal::RateLimited(verdict.retry_after_secs()))
        }
        None => Ok(()),
    }
}

/// Take a request from `limiter`'s bucket for `key`, keeping the tightest verdict.
pub(super) fn take(ctx: &mut RequestCtx, limiter: &Limiter, key: u128) -> Result<(), Refusal> {
    let start = spans::clock(ctx);
    let verdict = limiter.check(key);
    spans::limit(ctx, start, limiter, false, verdict.allowed);
    Tightest::update(&mut ctx.tightest, limiter.kind, verdict);
    if verdict.allowed {
        Ok(())
    } else {
        Err(Refusal::RateLimited(verdict.retry_after_secs()))
    }
}
