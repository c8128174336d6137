//! Where a route's edits meet the proxy: the listener's https redirect (in `admit`), the
//! route's redirect and rewrite (decided between `admit` and `guard`), the redirect answer,
//! the request headers and path sent upstream, and the response headers sent back. What
//! each edit means is [`crate::edits`]'s.

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::{Refusal, RequestCtx};
use crate::edits::template::Vars;
use crate::headers;
use crate::routing::Target;

/// The address the request's connection arrived at.
fn local_addr(session: &Session) -> Option<std::net::SocketAddr> {
    session
        .digest()
        .and_then(|d| d.socket_digest.as_ref())
        .and_then(|s| s.local_addr())
        .and_then(|a| a.as_inet())
        .copied()
}

/// On a listener with `redirect_to_https: true`, plan the 308 to the same host and path on
/// https; `Ok(true)` when planned (the request is then answered without a route).
///
/// # Errors
/// [`Refusal::BadRequest`] when `host` is not a host a `Location` can be built from.
pub(super) fn to_https(
    session: &Session,
    ctx: &mut RequestCtx,
    host: &str,
    target: &Target<'_>,
) -> Result<bool, Refusal> {
    let edits = &ctx.generation.edits;
    if !edits.redirects_to_https(local_addr(session)) {
        return Ok(false);
    }
    let location =
        crate::edits::https_location(host, target.path, target.query, edits.https_port())
            .ok_or(Refusal::BadRequest)?;
    ctx.edits.redirect = Some((308, location));
    Ok(true)
}

/// After `admit`: the route's redirect, or the path its `rewrite` sends upstream.
///
/// # Errors
/// [`Refusal::BadRewrite`] when the rewrite would make a path the routing rules refuse;
/// [`Refusal::BadPath`] should the path no longer read as it did when routed.
pub(super) fn plan(session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    if ctx.edits.redirect.is_some() {
        return Ok(());
    }
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let edits = &route.edits;
    if edits.redirect.is_none() && edits.rewrite.is_none() {
        return Ok(());
    }
    let req = session.req_header();
    let target = crate::routing::request_target(req.raw_path(), &req.method)
        .map_err(|_| Refusal::BadPath)?;
    let path = crate::routing::match_path(target.path).map_err(|_| Refusal::BadPath)?;
    if let Some(redirect) = &edits.redirect {
        let location = redirect
            .location(&path, target.query)
            .ok_or(Refusal::BadRequest)?;
        ctx.edits.redirect = Some((redirect.status, location));
        return Ok(());
    }
    if let Some(rewrite) = &edits.rewrite {
        let path = crate::edits::rewritten_path(rewrite, &path, target.query)
            .map_err(|_| Refusal::BadRewrite)?;
        ctx.edits.path = path;
    }
    Ok(())
}

/// Answer the planned redirect, if there is one: `true` when it was answered.
pub(super) async fn answer(session: &mut Session, ctx: &mut RequestCtx) -> bool {
    let Some((status, location)) = ctx.edits.redirect.take() else {
        return false;
    };
    let mut header = super::rescue::bare_header(status);
    let _ = header.insert_header(http::header::LOCATION, location);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, 0);
    let _ = header.insert_header(headers::X_REQUEST_ID, ctx.request_id.clone());
    if let Some(server) = ctx.generation.edits.server.own() {
        let _ = header.insert_header(http::header::SERVER, server.clone());
    }
    if let Err(e) = session.write_response_header(Box::new(header), true).await {
        tracing::debug!(error = %e, "could not send a redirect");
    }
    true
}

/// The route's request header edits, on the headers going upstream (after Portcullis's
/// own), and `rewrite.host`.
pub(super) fn request_headers(map: &mut http::HeaderMap, ctx: &RequestCtx) {
    let Some(route) = ctx.route() else { return };
    let edits = &route.edits;
    if !edits.request.is_empty() {
        let vars = Vars {
            client_ip: ctx.client_ip,
            request_id: &ctx.request_id,
            route: &route.name,
            identity: ctx.identity.as_ref(),
        };
        edits.request.apply(map, &vars);
    }
    if let Some(host) = edits.rewrite.as_ref().and_then(|r| r.host.as_ref()) {
        map.insert(http::header::HOST, host.clone());
    }
}

/// The rewritten path and query, in place of the client's (the same on every attempt).
pub(super) fn request_path(upstream: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some(path) = &ctx.edits.path {
        upstream.set_raw_path(path)?;
    }
    Ok(())
}

/// `server_header`, then the route's response header edits, on a response from upstream.
pub(super) fn response_headers(map: &mut http::HeaderMap, ctx: &RequestCtx) {
    ctx.generation.edits.server.apply(map);
    let Some(route) = ctx.route() else { return };
    if route.edits.response.is_empty() {
        return;
    }
    let vars = Vars {
        client_ip: ctx.client_ip,
        request_id: &ctx.request_id,
        route: &route.name,
        identity: ctx.identity.as_ref(),
    };
    route.edits.response.apply(map, &vars);
}
