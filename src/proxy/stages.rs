//! The stages a request passes before it is forwarded: [`Portcullis::admit`] (header size,
//! the request target, IP lists, `redirect_to_https`, the route lookup with its header and
//! query conditions, the route's IP lists and body limit) and [`Portcullis::guard`] (per-IP
//! limit, failure guard, token or session check, per-user and per-route limits, the pool's
//! in-flight cap). Split from `mod.rs`, which says how the stages meet Pingora's hooks.

use std::sync::Arc;

use pingora::proxy::Session;

use super::{body, browser, cors, edits, limits, spans, Portcullis, Refusal, RequestCtx};
use crate::auth::AuthError;
use crate::config::MethodOverrideHeaders;
use crate::headers;
use crate::routing;
use limits::{peek, take};

impl Portcullis {
    /// Guard and route a request; `Err` is the refusal to send.
    pub(super) fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let req = session.req_header();
        if headers::header_bytes(req) > ctx.generation.max_request_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }
        // The target as the client sent it: `uri` has already lost what it could not hold.
        let target =
            routing::request_target(req.raw_path(), &req.method).map_err(|_| Refusal::BadPath)?;
        let raw_host = match target.authority {
            // RFC 9112 section 3.2.2: the target's host is the one asked for. Pingora refuses
            // a `Host` that differs; checked again here, where the routing depends on it.
            Some(authority) => {
                let host = headers::request_host(req);
                if !host.is_empty() && !host.eq_ignore_ascii_case(authority) {
                    return Err(Refusal::BadRequest);
                }
                ctx.authority = http::HeaderValue::from_str(authority).ok();
                authority
            }
            None => headers::request_host(req),
        };
        // RFC 9112 section 3.2: an HTTP/1.1 request without Host gets 400.
        if raw_host.is_empty() && req.version == http::Version::HTTP_11 {
            return Err(Refusal::BadRequest);
        }
        if edits::to_https(session, ctx, raw_host, &target)? {
            return Ok(());
        }
        let host = routing::host_key(raw_host);
        let table = &ctx.generation.table;
        if let Some(route) =
            cors::preflight_route(ctx, table, &host, target.path, target.query, req)
        {
            ctx.route = Some(route);
            ctx.preflight = true;
            return cors::route_ips(ctx);
        }
        let overridden = match ctx.generation.method_override {
            MethodOverrideHeaders::Strip => {
                // A query parameter cannot be stripped as a header is: refused instead.
                if req.method == http::Method::POST
                    && headers::override_params(target.query).next().is_some()
                {
                    return Err(Refusal::BadRequest);
                }
                None
            }
            MethodOverrideHeaders::Honor => headers::override_method(&req.headers, target.query)
                .map_err(|_| Refusal::BadRequest)?,
        };
        let method = overridden.as_ref().unwrap_or(&req.method);
        let facts = routing::RequestFacts {
            headers: Some(&req.headers),
            query: target.query,
        };
        let route = table
            .route_request(&host, target.path, method, &facts)
            .map_err(|_| Refusal::BadPath)?;
        if method != req.method && req.method != http::Method::POST {
            // Frameworks honour an override on POST only: on another method the backend may
            // take the request as either, so both must land on the same route.
            let own = table
                .route_request(&host, target.path, &req.method, &facts)
                .map_err(|_| Refusal::BadPath)?;
            if own != route {
                return Err(Refusal::BadRequest);
            }
        }
        ctx.route = Some(route.ok_or(Refusal::NoRoute)?);
        cors::route_ips(ctx)?;
        body::check_length(req, ctx.route().and_then(|r| r.max_body_bytes))
    }

    /// The route's stages after matching, in order: per-IP limit, failure guard and a look at
    /// the per-route limit (before any crypto), token check, per-user and per-route limits,
    /// the pool's in-flight cap.
    pub(super) async fn guard(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let generation = Arc::clone(&ctx.generation);
        let Some(route) = ctx.route.and_then(|i| generation.routes.get(i)) else {
            return Ok(());
        };
        let limits = &route.limits;
        let ip_key = ctx.client_ip.map(|ip| generation.client_ips.key(ip));
        if let (Some(limiter), Some(key)) = (&limits.per_ip, ip_key) {
            take(ctx, limiter, key)?;
        }
        if let (Some(guard), Some(key)) = (&limits.auth_failures_per_ip, ip_key) {
            peek(ctx, guard, key)?;
        }
        if let Some(policy) = &route.policy {
            // A route with nothing left would refuse after the token check: skip the check.
            // Only a look: a request that then fails authentication takes nothing from it.
            if let Some(limiter) = &limits.per_route {
                peek(ctx, limiter, 0)?;
            }
            let req = session.req_header();
            let start = spans::clock(ctx);
            let check = async {
                match &route.session {
                    // A bearer token, where the route also takes those, goes the token way.
                    Some(client)
                        if policy.issuers.is_empty()
                            || crate::auth::token::extract(req, &policy.sources).is_err() =>
                    {
                        // A session of a revoked user or provider session, created before the
                        // revocation, is ended.
                        let revoked = |data: &_| browser::revoked(&self.revocations, data);
                        crate::trace::notes::note_check("session");
                        browser::authenticate(client, policy, session, ctx, &revoked).await
                    }
                    _ => {
                        generation
                            .auth
                            .authenticate(policy, req, &self.revocations)
                            .await
                    }
                }
            };
            let (result, notes) = match start {
                Some(_) => crate::trace::notes::noting(check).await,
                None => (check.await, Default::default()),
            };
            spans::token_check(ctx, start, notes, &result);
            route
                .metrics
                .auth_decision(result.as_ref().err().map(|e| e.reason()));
            match result {
                Ok(identity) => ctx.identity = Some(identity),
                Err(e) => {
                    // Only a client's own failure counts: not the provider's.
                    let failed = !matches!(
                        e,
                        AuthError::MissingToken
                            | AuthError::KeysUnavailable
                            | AuthError::SessionUnavailable
                            | AuthError::IntrospectionUnavailable
                    );
                    if let (true, Some(guard), Some(key)) =
                        (failed, &limits.auth_failures_per_ip, ip_key)
                    {
                        guard.check(key);
                    }
                    return Err(Refusal::from(e));
                }
            }
        }
        if let (Some((limiter, slot)), Some(identity)) = (&limits.per_user, &ctx.identity) {
            // A token without the claim shares one bucket with every such token.
            let key = identity.claim(*slot).map_or(0, |v| limiter.user_key(v));
            take(ctx, limiter, key)?;
        }
        if let Some(limiter) = &limits.per_route {
            take(ctx, limiter, 0)?;
        }
        if let Some(cap) = &route.pool.concurrency {
            let start = spans::clock(ctx);
            ctx.permit = cap.try_acquire();
            spans::concurrency(ctx, start, ctx.permit.is_some());
            ctx.permit.as_ref().ok_or(Refusal::Overloaded)?;
        }
        Ok(())
    }
}
