//! The Pingora `ProxyHttp` implementation: it runs the request through each stage in order.
//! The stages make the decisions (routing, limits, authentication, target choice); this
//! module and [`stages`] (admit and guard) decide only how they meet: which authentication failures the per-IP failure guard
//! counts (not a missing token, nor keys still being fetched), and that a method override on a
//! request other than POST must land on the route of its own method. Each attempt at the
//! upstream (its target and the bytes a consistent-hash pool hashes, its timeouts, its
//! outcome, and whether it is tried again) is [`attempt`]'s and [`retry`]'s.
//!
//! Stages: snapshot the config, guard (header size, path), route, forward with clean headers,
//! pick a target (again after a failure the route retries), log. Refusals go through
//! [`rescue`], the only code that writes an error response.

mod access;
mod attempt;
mod body;
mod browser;
mod cache;
mod cors;
mod edits;
mod limits;
pub mod rescue;
mod retry;
mod spans;
mod stages;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::Error;

use crate::access_log::AccessLog;
use crate::auth::Identity;
use crate::generation::{Generation, Route};
use crate::headers;
use crate::ratelimit::concurrency::Permit;
use crate::ratelimit::Tightest;
use crate::reload::Reloader;
use crate::revocation::Revocations;
pub use rescue::Refusal;

/// The proxy.
pub struct Portcullis {
    reloader: Arc<Reloader>,
    access_log: AccessLog,
    /// The process's revocation list (kept across reloads, shared with the admin endpoint).
    revocations: Arc<Revocations>,
}

impl Portcullis {
    /// A proxy serving whatever config `reloader` holds, refusing what `revocations` holds.
    pub fn new(
        reloader: Arc<Reloader>,
        access_log: AccessLog,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            reloader,
            access_log,
            revocations,
        }
    }
}

/// Requests started and finished (their log line written), across all listeners: one
/// atomic add at each end of a request, as a single in-flight gauge would cost, and the
/// started count also tells the memory housekeeper whether the proxy was quiet.
static STARTED: AtomicU64 = AtomicU64::new(0);
static FINISHED: AtomicU64 = AtomicU64::new(0);

/// Requests between their first byte and their log line, across all listeners.
pub fn in_flight() -> usize {
    // Finished first: a request that ends between the two loads is then still counted.
    let finished = FINISHED.load(Ordering::Relaxed);
    let started = STARTED.load(Ordering::Relaxed);
    usize::try_from(started.saturating_sub(finished)).unwrap_or(usize::MAX)
}

/// Requests started since the process began.
pub fn requests_started() -> u64 {
    STARTED.load(Ordering::Relaxed)
}

/// Counts a request as in flight for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        STARTED.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        FINISHED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-request state.
pub struct RequestCtx {
    _in_flight: InFlight,
    /// The config snapshot this request uses from start to end.
    generation: Arc<Generation>,
    route: Option<usize>,
    started: Instant,
    /// Sent upstream and back to the client; made once, cloned by reference count.
    request_id: http::HeaderValue,
    /// The pool's members, as the first pick of a target saw them: every attempt and the
    /// log line use this one snapshot.
    members: Option<Arc<crate::upstream::Members>>,
    /// The target now in use, as an index into `members`.
    target: Option<usize>,
    /// Targets that failed to connect for this request.
    tried: Vec<usize>,
    refusal: Option<Refusal>,
    /// The refusal went out in gRPC form (HTTP 200 with `grpc-status`).
    grpc_refused: bool,
    /// Who the verified token says the client is, on routes with a policy.
    identity: Option<Identity>,
    /// The client address (behind trusted proxies).
    client_ip: Option<IpAddr>,
    /// The host of an absolute-form target, sent upstream as `Host`.
    authority: Option<http::HeaderValue>,
    /// The rate limit closest to refusing, for the `RateLimit` header.
    tightest: Option<Tightest>,
    /// A place in the upstream pool's in-flight cap.
    permit: Option<Permit>,
    /// Attempts made to reach the upstream (1 for the first).
    attempts: u32,
    /// A place in the pool's retry budget, from the first attempt on.
    budget: Option<retry::BudgetHold>,
    /// The upstream status the current attempt is being retried for.
    retrying_status: bool,
    /// When the current attempt started (its target chosen).
    attempt_started: Option<Instant>,
    /// What the last attempt's target answered, and how long that attempt took (the log).
    upstream_status: Option<u16>,
    upstream_time: Option<std::time::Duration>,
    /// The browser session, on a route that took one.
    session: Option<Arc<crate::session::Live>>,
    /// `Set-Cookie` values for the response (a refreshed session).
    session_cookies: Vec<http::HeaderValue>,
    /// A response of the session flow to send in place of a refusal (the login redirect).
    session_reply: Option<crate::session::Reply>,
    /// Its place in a trace, with `tracing:` configured.
    trace: Option<crate::trace::RequestTrace>,
    /// The redirect to answer, or the path a rewrite sends upstream.
    edits: crate::edits::Planned,
    /// A CORS preflight on a route with `cors:`, answered by Portcullis.
    preflight: bool,
    /// What the edge cache did, on a cache route.
    cache: Option<cache::Outcome>,
    /// Request body bytes seen in the current attempt (for `max_body_bytes`).
    body_bytes: u64,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.generation.routes.get(i))
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = RequestCtx;

    /// None. Pingora's default adds its response-compression module, disabled, and every
    /// request then builds and consults its context for nothing (1.4% of a proxied
    /// request's instructions): Portcullis forwards bodies as the upstream sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Pingora calls this as soon as a request's headers are read, in the connection's task.
    fn new_ctx(&self) -> RequestCtx {
        crate::connections::headers_received();
        RequestCtx {
            _in_flight: InFlight::start(),
            generation: self.reloader.current(),
            route: None,
            started: Instant::now(),
            request_id: http::HeaderValue::from_static(""),
            members: None,
            target: None,
            tried: Vec::new(),
            refusal: None,
            grpc_refused: false,
            identity: None,
            client_ip: None,
            authority: None,
            tightest: None,
            permit: None,
            attempts: 0,
            budget: None,
            retrying_status: false,
            attempt_started: None,
            upstream_status: None,
            upstream_time: None,
            session: None,
            session_cookies: Vec::new(),
            session_reply: None,
            trace: None,
            edits: crate::edits::Planned::default(),
            preflight: false,
            cache: None,
            body_bytes: 0,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.request_id = headers::request_id(session.req_header());
        if let Some(tracing) = &ctx.generation.tracing {
            ctx.trace = Some(crate::trace::RequestTrace::start(
                tracing,
                &session.req_header().headers,
            ));
        }
        ctx.client_ip = ctx.generation.client_ips.resolve(
            client_ip(session),
            session
                .req_header()
                .headers
                .get_all("x-forwarded-for")
                .iter(),
        );
        // A logout (the user's, or a verified back-channel one) is revoked on every node.
        let logout = |of: &_| browser::revoke(&self.revocations, of);
        // The top-level IP lists come first: a refused client reaches nothing, not even the
        // session endpoints, and learns nothing about the routes.
        let ips = cors::top_level_ips(ctx);
        if ips.is_ok() {
            if let Some(reply) = browser::endpoint(session, ctx, &logout).await {
                browser::send(session, reply, ctx).await;
                return Ok(true);
            }
        }
        let result = match ips.and_then(|()| self.admit(session, ctx)) {
            Ok(()) if ctx.preflight => {
                cors::answer_preflight(session, ctx).await;
                return Ok(true);
            }
            Ok(()) => match edits::plan(session, ctx) {
                Ok(()) if edits::answer(session, ctx).await => return Ok(true),
                Ok(()) => self.guard(session, ctx).await,
                Err(refusal) => Err(refusal),
            },
            Err(refusal) => Err(refusal),
        };
        match result {
            Ok(()) => Ok(false),
            Err(refusal) => {
                ctx.refusal = Some(refusal);
                if let Some(reply) = ctx.session_reply.take() {
                    browser::send(session, reply, ctx).await;
                    return Ok(true);
                }
                let route = ctx.route();
                let reply = rescue::Reply {
                    request_id: headers::request_id_str(&ctx.request_id),
                    scope: route
                        .and_then(|r| r.policy.as_ref())
                        .map_or("", |p| p.scope_text.as_str()),
                    rate_limit: match (route, &ctx.tightest) {
                        (Some(r), Some(t)) if matches!(refusal, Refusal::RateLimited(_)) => {
                            Some((r.limits.policy_header.as_ref(), t.header()))
                        }
                        _ => None,
                    },
                    set_cookies: &ctx.session_cookies,
                    server: ctx.generation.edits.server.own(),
                    cors: cors::for_refusal(session, ctx),
                };
                ctx.grpc_refused = rescue::send(session, refusal, &reply, true).await;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        cache::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<pingora::cache::CacheKey> {
        cache::key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<pingora::cache::RespCacheable> {
        Ok(cache::cacheable(resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        cache::serve_stale(error)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // A retry replays the body from its start through `request_body_filter`.
        ctx.body_bytes = 0;
        attempt::peer(session, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::connect_failed(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        attempt::broke(session, ctx, e)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        attempt::connected(ctx, reused);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        attempt::answered(session, ctx, upstream_response.status.as_u16())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        attempt::request_deadline(ctx)?;
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        body::count(ctx, body)?;
        attempt::request_deadline(ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (ip, tls) = (client_ip(session), is_tls(session));
        let upgrade = session.is_upgrade_req();
        // `TE: trailers` is the one hop-by-hop header HTTP/2 keeps (RFC 9113 section
        // 8.2.2): gRPC servers require it. Kept towards HTTP/2 targets, as Envoy does.
        let h2 = ctx
            .route()
            .is_some_and(|r| r.pool.settings.protocol != crate::config::Protocol::Http1);
        let trailers = h2 && headers::accepts_trailers(&upstream.headers);
        headers::edit_request(upstream, |parts| {
            let map = &mut parts.headers;
            headers::strip_request_hop_by_hop(map, upgrade);
            if trailers {
                map.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
            }
            // No client may send an identity header of its own, on any route, nor any other
            // header Portcullis owns (method overrides under `strip`), in any spelling.
            ctx.generation.owned_headers.strip(map);
            if let Some(authority) = &ctx.authority {
                map.insert(http::header::HOST, authority.clone());
            }
            if let (Some(identity), Some(policy)) =
                (&ctx.identity, ctx.route().and_then(|r| r.policy.as_ref()))
            {
                for (slot, header) in &policy.forward {
                    if let Some(value) = identity.claim_header(*slot) {
                        map.insert(header.clone(), value);
                    }
                }
                if policy.strip_authorization {
                    map.remove(http::header::AUTHORIZATION);
                }
                if let (true, Some(bearer)) = (
                    policy.forward_access_token,
                    ctx.session.as_ref().and_then(|s| s.bearer.as_ref()),
                ) {
                    map.insert(http::header::AUTHORIZATION, bearer.clone());
                }
            }
            // The session's cookies are Portcullis's, never the upstream's.
            ctx.generation.sessions.strip_cookies(map);
            map.insert(headers::X_REQUEST_ID, ctx.request_id.clone());
            if let Some(trace) = &ctx.trace {
                trace.propagate(map);
            }
            map.insert(
                headers::X_PORTCULLIS_ATTEMPTS,
                headers::attempt_value(ctx.attempts),
            );
            headers::set_forwarded(parts, ip, tls);
            edits::request_headers(&mut parts.headers, ctx);
        });
        edits::request_path(upstream, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        headers::edit_response(response, |parts| {
            let map = &mut parts.headers;
            headers::strip_response_hop_by_hop(map, parts.status);
            map.insert(headers::X_REQUEST_ID, ctx.request_id.clone());
            for cookie in ctx.session_cookies.drain(..) {
                map.append(http::header::SET_COOKIE, cookie);
            }
            if let (Some(route), Some(t)) = (ctx.route(), &ctx.tightest) {
                if route.limits.headers_on_success {
                    if let Some(policy) = &route.limits.policy_header {
                        map.insert(headers::RATELIMIT_POLICY, policy.clone());
                    }
                    if let Ok(now) = http::HeaderValue::from_str(&t.header()) {
                        map.insert(headers::RATELIMIT, now);
                    }
                }
            }
            edits::response_headers(map, ctx);
        });
        cors::respond(session, response, ctx);
        cache::mark(session, response, ctx);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let refusal = ctx
            .refusal
            .unwrap_or_else(|| match attempt::tls_failure(ctx, e, false) {
                Some(_) => Refusal::UpstreamTls,
                None => rescue::from_error(e),
            });
        ctx.refusal = Some(refusal);
        let client_gone = rescue::client_gone(e);
        let code = if let Some(sent) = session.response_written() {
            // Headers already went out: the status stands; the connection is cut.
            sent.status.as_u16()
        } else if client_gone {
            0
        } else {
            if ctx.request_id.is_empty() {
                ctx.request_id = headers::new_request_id();
            }
            let reply = rescue::Reply {
                request_id: headers::request_id_str(&ctx.request_id),
                set_cookies: &ctx.session_cookies,
                server: ctx.generation.edits.server.own(),
                cors: cors::for_refusal(session, ctx),
                ..Default::default()
            };
            ctx.grpc_refused = rescue::send(session, refusal, &reply, false).await;
            if ctx.grpc_refused {
                200
            } else {
                refusal.status()
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let Some(i) = ctx.target {
            attempt::attempt_ended(ctx, i);
        }
        spans::finish(session, ctx, status, e);
        // A refused gRPC call went out as 200: the metrics count it by its refusal's status,
        // so that refusals never pass for successes. (The access log keeps the status sent,
        // beside the refusal's reason.)
        let observed = match ctx.refusal {
            Some(refusal) if ctx.grpc_refused => refusal.status(),
            _ => status,
        };
        let elapsed = ctx.started.elapsed();
        if let Some(permit) = ctx.permit.take() {
            // Only answers from the upstream tell the adaptive cap about its latency.
            permit.finish(e.is_none() && (100..500).contains(&observed));
        }
        let route = ctx.route();
        let method = &session.req_header().method;
        match route {
            Some(r) => r.metrics.observe(method, observed, elapsed.as_secs_f64()),
            None => ctx
                .generation
                .unmatched
                .observe(method, observed, elapsed.as_secs_f64()),
        }
        cache::count(ctx);
        if self.access_log.enabled() {
            access::write(&self.access_log, session, ctx, status, elapsed);
        }
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        // Pingora's default includes the query string, which may carry a token.
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}
