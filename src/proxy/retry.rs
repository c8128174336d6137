//! When a failed attempt is tried again: the route's retry policy, the request's state (its
//! method, whether its body can still be replayed, whether an answer already went out) and the
//! pool's retry budget decide together, here, once per failure.

use std::sync::Arc;

use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::RequestCtx;
use crate::metrics::METRICS;
use crate::upstream::forwarding::Failure;
use crate::upstream::Pool;

/// A request's place in its pool's retry budget, from its first attempt to its end.
pub(super) struct BudgetHold {
    pool: Arc<Pool>,
    retried: bool,
}

impl BudgetHold {
    pub(super) fn new(pool: &Arc<Pool>) -> BudgetHold {
        pool.budget.begin();
        BudgetHold {
            pool: Arc::clone(pool),
            retried: false,
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.pool.budget.end(self.retried);
    }
}

/// What a failure after the connection was made stands for; `None` for one that is not
/// retried whatever the policy (the client's side failed, or the request was refused).
pub(super) fn classify(e: &Error) -> Option<Failure> {
    if *e.esource() != ErrorSource::Upstream {
        return None;
    }
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Failure::Timeout),
        ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::H2Error => Some(Failure::Reset),
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => Some(Failure::ConnectFailure),
        _ => None,
    }
}

/// Whether to try the request again after `failure` of its current attempt. Takes a place in
/// the pool's retry budget and counts the retry when it says yes.
pub(super) fn decide(session: &Session, ctx: &mut RequestCtx, failure: Failure) -> bool {
    let Some(route) = ctx.route() else {
        return false;
    };
    let policy = route.forwarding.retry;
    let pool = Arc::clone(&route.pool);
    let eligible = policy.on.has(failure)
        && ctx.attempts < policy.attempts
        && (!policy.idempotent_only || session.req_header().method.is_idempotent())
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
        && route.forwarding.attempt(ctx.started).is_some()
        // A target that cannot be connected to is not tried twice: only another one may help.
        && (failure != Failure::ConnectFailure
            || ctx
                .members
                .as_ref()
                .is_some_and(|m| m.has_untried(&ctx.tried)));
    if !eligible {
        return false;
    }
    let hold = ctx.budget.get_or_insert_with(|| BudgetHold::new(&pool));
    if !hold.retried {
        if !pool.budget.try_retry(policy.budget_percent) {
            METRICS
                .retry_budget_exhausted
                .with_label_values(&[&pool.name])
                .inc();
            return false;
        }
        hold.retried = true;
    }
    METRICS
        .upstream_retries
        .with_label_values(&[&pool.name, failure.label()])
        .inc();
    true
}
