//! One attempt to reach the upstream, from picking its target to its outcome: the peer and
//! its timeouts, what a failure or an answer tells outlier detection and the target's series,
//! and (through [`super::retry`]) whether the request is tried again. The `ProxyHttp` hooks in
//! [`super`] call these and decide nothing of it themselves.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::{retry, Refusal, RequestCtx};
use crate::upstream::forwarding::Failure;
use crate::upstream::tls::TlsFailure;
use crate::upstream::{HashOn, Target};

/// Past the route's `timeout` the request ends: 504 when nothing was sent yet, else the
/// connections are cut (the upstream one is never reused).
pub(super) fn request_deadline(ctx: &mut RequestCtx) -> pingora::Result<()> {
    let passed = ctx
        .route()
        .and_then(|r| r.forwarding.left(ctx.started))
        .is_some_and(|left| left.is_zero());
    if passed {
        ctx.refusal = Some(Refusal::UpstreamTimeout);
        return Err(Error::explain(ErrorType::ReadTimedout, "request timeout"));
    }
    Ok(())
}

/// The target of the current attempt, `i` in the pool's members the request uses.
fn attempt_target(ctx: &RequestCtx, i: usize) -> Option<&Target> {
    ctx.members
        .as_ref()
        .and_then(|m| m.targets.get(i))
        .map(|t| &**t)
}

/// Tell the pool how an attempt on its target `i` went (outlier detection).
fn outcome(ctx: &RequestCtx, i: usize, ok: bool) {
    if let (Some(route), Some(target)) = (ctx.route(), attempt_target(ctx, i)) {
        route.pool.outcome(target, ok);
    }
}

/// The attempt on target `i` ended: its duration, and its span.
pub(super) fn attempt_ended(ctx: &mut RequestCtx, i: usize) {
    if let Some(trace) = &mut ctx.trace {
        trace.end_attempt();
    }
    let Some(started) = ctx.attempt_started.take() else {
        return;
    };
    let took = started.elapsed();
    ctx.upstream_time = Some(took);
    if let Some(target) = attempt_target(ctx, i) {
        target.series().ended(took);
    }
}

/// The TLS failure `e` is, on a route whose pool has `tls:`; with `record`, counted and
/// logged (once per failed connection: the caller that meets it first).
pub(super) fn tls_failure(ctx: &RequestCtx, e: &Error, record: bool) -> Option<TlsFailure> {
    let pool = &ctx.route()?.pool;
    pool.tls.as_ref()?;
    let failure = TlsFailure::of(e)?;
    if record {
        let target = ctx.target.or(ctx.tried.last().copied());
        let target = target.and_then(|i| attempt_target(ctx, i));
        failure.record(&pool.name, target.map_or("", |t| t.label.as_str()), e);
    }
    Some(failure)
}

/// Pick the target of the next attempt and the peer that reaches it: the pool's balance
/// over its members (a snapshot taken at the first attempt) with its hash key (the client
/// address or a header), a target not tried yet where one is left, the attempt's timeouts,
/// TLS and protocol.
pub(super) fn peer(session: &Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
    let Some(route) = ctx.route() else {
        ctx.refusal = Some(Refusal::Internal);
        return Err(Error::explain(ErrorType::HTTPStatus(500), "no route"));
    };
    let pool = Arc::clone(&route.pool);
    let mut ip_key = [0u8; 16];
    let key: &[u8] = match &pool.settings.hash_on {
        _ if pool.settings.balance != crate::config::Balance::ConsistentHash => b"",
        HashOn::ClientIp => match ctx.client_ip {
            Some(IpAddr::V4(ip)) => {
                ip_key[..4].copy_from_slice(&ip.octets());
                &ip_key[..4]
            }
            Some(IpAddr::V6(ip)) => {
                ip_key = ip.octets();
                &ip_key
            }
            None => b"",
        },
        HashOn::Header(name) => session
            .req_header()
            .headers
            .get(name)
            .map(|v| v.as_bytes())
            .unwrap_or(b""),
    };
    // Read before the pick, which borrows `ctx` for its snapshot of the pool's members.
    let attempt = route.forwarding.attempt(ctx.started);
    // A retry goes to a target not tried yet where one is left, else to the same again.
    let members = ctx.members.get_or_insert_with(|| pool.members());
    let picked = members
        .select(key, &ctx.tried)
        .or_else(|| (!ctx.tried.is_empty()).then(|| members.select(key, &[]))?);
    let Some(i) = picked else {
        let refusal = if members.targets.is_empty() {
            Refusal::NoTargetYet
        } else if ctx.tried.is_empty() {
            Refusal::NoHealthyTarget
        } else {
            Refusal::UpstreamUnreachable
        };
        ctx.refusal = Some(refusal);
        return Err(Error::explain(
            ErrorType::HTTPStatus(refusal.status()),
            refusal.code(),
        ));
    };
    let Some(target) = members.targets.get(i) else {
        ctx.refusal = Some(Refusal::Internal);
        return Err(Error::explain(ErrorType::HTTPStatus(500), "no target"));
    };
    let mut peer = match &pool.tls {
        // The name a certificate is checked for comes from the target as written.
        Some(tls) => tls.peer(target.addr, &target.written),
        None => HttpPeer::new(target.addr, false, String::new()),
    };
    let Some((connect, read)) = attempt else {
        ctx.refusal = Some(Refusal::UpstreamTimeout);
        return Err(Error::explain(ErrorType::ReadTimedout, "request timeout"));
    };
    super::spans::attempt(
        &mut ctx.trace,
        session,
        &pool.name,
        target,
        pool.tls.is_some(),
        ctx.attempts + 1,
    );
    ctx.target = Some(i);
    ctx.attempts += 1;
    ctx.attempt_started = Some(Instant::now());
    ctx.upstream_status = None;
    if ctx.budget.is_none() {
        ctx.budget = Some(retry::BudgetHold::new(&pool));
    }
    peer.options.connection_timeout = Some(connect);
    peer.options.read_timeout = Some(read);
    peer.options.write_timeout = Some(read);
    pool.settings.apply_protocol(&mut peer.options);
    Ok(Box::new(peer))
}

/// Connecting for the attempt failed: record it and decide whether to try again.
pub(super) fn connect_failed(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    tls_failure(ctx, &e, true);
    if let Some(trace) = &mut ctx.trace {
        trace.attempt_failed(e.etype().as_str());
    }
    if let Some(i) = ctx.target.take() {
        outcome(ctx, i, false);
        attempt_ended(ctx, i);
        ctx.tried.push(i);
    }
    e.set_retry(retry::decide(session, ctx, Failure::ConnectFailure));
    e
}

/// The attempt failed after its connection was made (or its answer is being retried):
/// record it and decide whether to try again.
pub(super) fn broke(session: &Session, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    // A refusal of our client certificate may come after the handshake (TLS 1.3): the
    // first read fails; it is a TLS failure all the same.
    let refused_cert = tls_failure(ctx, &e, true).is_some();
    if let (Some(trace), false) = (&mut ctx.trace, ctx.retrying_status) {
        trace.attempt_failed(e.etype().as_str());
    }
    // A retry for the upstream's status was decided (and the outcome recorded) when its
    // answer arrived.
    if let Some(i) = ctx.target {
        attempt_ended(ctx, i);
    }
    let again = std::mem::take(&mut ctx.retrying_status) || {
        let failure = retry::classify(&e);
        if let (Some(_), Some(i)) = (failure, ctx.target) {
            outcome(ctx, i, false);
        }
        // A target that refused our client certificate would refuse it again, and so
        // would the others, which get the same one.
        !refused_cert && failure.is_some_and(|f| retry::decide(session, ctx, f))
    };
    if let Some(i) = ctx.target.take().filter(|_| again) {
        ctx.tried.push(i);
    }
    e.set_retry(again);
    e
}

/// The attempt has its connection, pooled or new.
pub(super) fn connected(ctx: &RequestCtx, reused: bool) {
    if let Some(target) = ctx.target.and_then(|i| attempt_target(ctx, i)) {
        target.series().connected(reused);
    }
}

/// The target answered with `status`: record it, and end the attempt here when the route
/// retries that status (the answer is then not sent on).
pub(super) fn answered(
    session: &Session,
    ctx: &mut RequestCtx,
    status: u16,
) -> pingora::Result<()> {
    ctx.upstream_status = Some(status);
    if let Some(trace) = &mut ctx.trace {
        trace.attempt_answered(status);
    }
    if let Some(i) = ctx.target {
        outcome(ctx, i, status < 500);
        if let (Some(started), Some(target)) = (ctx.attempt_started, attempt_target(ctx, i)) {
            target.series().answered(status, started.elapsed());
        }
    }
    if let Some(failure) = Failure::of_status(status) {
        if retry::decide(session, ctx, failure) {
            // Not sent on: the attempt ends here and the next one starts.
            ctx.retrying_status = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "retried on another attempt",
            ));
        }
    }
    Ok(())
}
