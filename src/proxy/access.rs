//! The request's access line, from what the request's context gathered: read once in the
//! `logging` hook and handed to [`crate::access_log`], which formats it into the thread's
//! buffer. No header value reaches it but `Host` and `User-Agent`, and no claim the config does
//! not list.

use std::time::Duration;

use pingora::proxy::Session;

use super::RequestCtx;
use crate::access_log::{self, AccessLog, AccessRecord, Claims};
use crate::auth::Identity;
use crate::headers;

/// The claims `access_log.claims` lists, read from the request's identity.
struct Listed<'a> {
    names: &'a [(Box<str>, usize)],
    identity: &'a Identity,
}

impl Claims for Listed<'_> {
    fn each(&self, f: &mut dyn FnMut(&str, Option<&str>)) {
        for (name, slot) in self.names {
            f(name, self.identity.claim(*slot));
        }
    }
}

/// Write the request's line.
pub(super) fn write(
    log: &AccessLog,
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    elapsed: Duration,
) {
    let req = session.req_header();
    let route = ctx.route();
    let upstream = ctx.members.as_ref().and_then(|m| {
        ctx.target
            .or(ctx.tried.last().copied())
            .and_then(|i| m.targets.get(i))
    });
    let names = &ctx.generation.auth.log_claims;
    let listed = match &ctx.identity {
        Some(identity) if !names.is_empty() => Some(Listed { names, identity }),
        _ => None,
    };
    let tls_version = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|ssl| access_log::tls_version_name(&ssl.version));
    let mut trace_id = [0; 32];
    log.write(&AccessRecord {
        request_id: headers::request_id_str(&ctx.request_id),
        trace_id: ctx
            .trace
            .as_ref()
            .map(|t| crate::trace::context::trace_id_hex(t.trace_id(), &mut trace_id)),
        client: ctx.client_ip,
        host: headers::request_host(req),
        protocol: access_log::protocol_name(req.version),
        tls_version,
        route: route.map(|r| r.name.as_str()).unwrap_or(""),
        method: req.method.as_str(),
        // The path only: a query string may carry tokens.
        path: req.uri.path(),
        status,
        upstream: upstream.map(|t| t.label.as_str()),
        upstream_status: ctx.upstream_status,
        upstream_time: ctx.upstream_time,
        duration: elapsed,
        bytes_sent: session.body_bytes_sent(),
        bytes_received: session.body_bytes_read(),
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .map(|v| v.as_bytes()),
        claims: listed.as_ref().map(|l| l as &dyn Claims),
        reason: ctx.refusal.map(|r| r.code()),
        cache: ctx.cache.map(super::cache::Outcome::label),
    });
}
