//! Request body limits (`max_body_bytes`): a `Content-Length` over the route's limit is refused
//! in `admit`, before any token work or upstream connection; a body without one (chunked, or
//! HTTP/2 without the header) is counted as it streams through `request_body_filter` and cut
//! at the limit.
//!
//! What cutting does, in Pingora 0.9.1 (`proxy_h1.rs` / `proxy_h2.rs`): the request head is
//! written upstream as soon as the connection is made, before the first body byte is read, so
//! a counted body always has an upstream connection open. The chunk that crosses the limit is
//! not forwarded; the error returned from the filter ends the exchange, Pingora drops that
//! upstream connection unfinished (never back to the pool), and `fail_to_proxy` answers 413
//! when the upstream has not answered yet, or cuts the client's connection when it has. A
//! replayed retry buffer passes the filter again, so the count starts over at each attempt.
//! This module never writes a response itself (`rescue` does).

use pingora::{Error, ErrorType};

use super::{Refusal, RequestCtx};

/// Refuse a request whose `Content-Length` is over `limit` (`None`: no limit).
pub(super) fn check_length(req: &http::request::Parts, limit: Option<u64>) -> Result<(), Refusal> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) if n > limit => Err(Refusal::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Count a piece of the body; past the route's limit, refuse and keep the piece back.
pub(super) fn count(ctx: &mut RequestCtx, body: &mut Option<bytes::Bytes>) -> pingora::Result<()> {
    let Some(limit) = ctx.route().and_then(|r| r.max_body_bytes) else {
        return Ok(());
    };
    let len = body.as_ref().map_or(0, |b| b.len() as u64);
    ctx.body_bytes = ctx.body_bytes.saturating_add(len);
    if ctx.body_bytes > limit {
        *body = None;
        ctx.refusal = Some(Refusal::BodyTooLarge);
        return Err(Error::explain(
            ErrorType::HTTPStatus(413),
            "request body over max_body_bytes",
        ));
    }
    Ok(())
}
