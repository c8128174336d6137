//! Where CORS and the IP lists meet the proxy: the route a preflight is for, its answer
//! (written here, before any per-IP limit, token work or upstream), and the CORS headers of
//! an actual response. The rules are [`crate::cors`]'s and [`crate::ip_lists`]'s.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::{Refusal, RequestCtx};
use crate::headers;
use crate::routing::RouteTable;

/// The client may pass the top-level `allow_ips` / `deny_ips`.
pub(super) fn top_level_ips(ctx: &RequestCtx) -> Result<(), Refusal> {
    match ctx.generation.ip_rules.permits(ctx.client_ip) {
        true => Ok(()),
        false => Err(Refusal::IpDenied),
    }
}

/// The client may pass its route's `allow_ips` / `deny_ips`.
pub(super) fn route_ips(ctx: &RequestCtx) -> Result<(), Refusal> {
    match ctx
        .route()
        .is_none_or(|r| r.ip_rules.permits(ctx.client_ip))
    {
        true => Ok(()),
        false => Err(Refusal::IpDenied),
    }
}

/// The route with `cors:` a CORS preflight is for: the one that takes the method the
/// preflight asks for (so a route need not take `OPTIONS`), else the one that takes the
/// `OPTIONS` request itself. `None`: not a preflight, or for no route with `cors:` (it is then
/// routed and forwarded as any `OPTIONS` request). Header and query conditions are checked on
/// the preflight as it is (`query` without the `?`).
pub(super) fn preflight_route(
    ctx: &RequestCtx,
    table: &RouteTable,
    host: &str,
    path: &str,
    query: &str,
    req: &pingora::http::RequestHeader,
) -> Option<usize> {
    let asked = crate::cors::preflight_method(&req.method, &req.headers)?;
    let facts = crate::routing::RequestFacts {
        headers: Some(&req.headers),
        query,
    };
    let with_cors = |method: &http::Method| {
        let route = table.route_request(host, path, method, &facts);
        route.ok().flatten().filter(|&i| {
            ctx.generation
                .routes
                .get(i)
                .is_some_and(|r| r.cors.is_some())
        })
    };
    with_cors(&asked).or_else(|| with_cors(&req.method))
}

/// Answer a preflight on its route: 204 with the route's CORS headers, or with none when it
/// is not allowed (the browser then refuses the request it was asking for).
pub(super) async fn answer_preflight(session: &mut Session, ctx: &RequestCtx) {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::NO_CONTENT;
    if let Some(cors) = ctx.route().and_then(|r| r.cors.as_ref()) {
        cors.preflight(&session.req_header().headers, &mut parts.headers);
    }
    parts
        .headers
        .insert(headers::X_REQUEST_ID, ctx.request_id.clone());
    if let Some(server) = ctx.generation.edits.server.own() {
        parts.headers.insert(http::header::SERVER, server.clone());
    }
    let answer = ResponseHeader::from(parts);
    if !session.is_body_empty() {
        // A preflight has no body; one that came with one is answered without reading it,
        // so the connection cannot carry another request.
        session.set_keepalive(None);
    }
    if let Err(e) = session.write_response_header(Box::new(answer), true).await {
        tracing::debug!(error = %e, "could not send a preflight answer");
    }
}

/// The route's CORS headers on an actual response, in place of the upstream's.
pub(super) fn respond(session: &Session, response: &mut ResponseHeader, ctx: &RequestCtx) {
    if let Some(cors) = ctx.route().and_then(|r| r.cors.as_ref()) {
        let origin = session.req_header().headers.get(http::header::ORIGIN);
        headers::edit_response(response, |parts| cors.respond(origin, &mut parts.headers));
    }
}

/// What a refusal on a route with `cors:` needs to carry its CORS headers.
pub(super) fn for_refusal<'a>(
    session: &Session,
    ctx: &'a RequestCtx,
) -> Option<(&'a crate::cors::Cors, Option<http::HeaderValue>)> {
    let cors = ctx.route()?.cors.as_ref()?;
    Some((
        cors,
        session
            .req_header()
            .headers
            .get(http::header::ORIGIN)
            .cloned(),
    ))
}
