//! Where browser sessions meet the proxy: the session endpoints (callback, logout,
//! back-channel logout) answered before routing, the session check of a route that takes
//! one, and the responses Portcullis writes for them.

use std::sync::Arc;

use pingora::proxy::Session;

use super::RequestCtx;
use crate::auth::{AuthError, Identity, Policy};
use crate::headers;
use crate::session::{flow, Client, Outcome, Reply};

/// The largest back-channel logout body read.
const MAX_LOGOUT_BODY: usize = 16 * 1024;

/// Whether the request came over https: a TLS listener, or a trusted proxy in front that
/// says so in `X-Forwarded-Proto`.
fn is_https(session: &Session, ctx: &RequestCtx) -> bool {
    if super::is_tls(session) {
        return true;
    }
    let peer = super::client_ip(session);
    ctx.generation
        .client_ips
        .forwarded_https(peer, session.req_header().headers.get("x-forwarded-proto"))
}

/// Answer a request for one of the session endpoints; `None` when it is for none of them.
/// A verified back-channel logout is handed to `logout`.
pub(super) async fn endpoint(
    session: &mut Session,
    ctx: &mut RequestCtx,
    logout: &(dyn Fn(&crate::session::logout::LogoutOf) + Sync),
) -> Option<Reply> {
    let sessions = Arc::clone(&ctx.generation.sessions);
    if sessions.is_empty() {
        return None;
    }
    let path = session.req_header().uri.path();
    if path == crate::session::logout::BACKCHANNEL_PATH {
        return Some(backchannel(session, ctx, logout).await);
    }
    let https = is_https(session, ctx);
    for client in &sessions.clients {
        if path == client.config.callback_path {
            return Some(client.callback(session.req_header()).await);
        }
        if path == client.config.logout_path {
            return Some(client.logout(session.req_header(), https, logout).await);
        }
    }
    None
}

/// A logout token POSTed by the provider.
async fn backchannel(
    session: &mut Session,
    ctx: &RequestCtx,
    logout: &(dyn Fn(&crate::session::logout::LogoutOf) + Sync),
) -> Reply {
    let not_allowed = || Reply {
        status: http::StatusCode::METHOD_NOT_ALLOWED,
        headers: vec![(http::header::ALLOW, http::HeaderValue::from_static("POST"))],
        body: Vec::new(),
    };
    if session.req_header().method != http::Method::POST {
        return not_allowed();
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_LOGOUT_BODY => {
                body.extend_from_slice(&chunk)
            }
            Ok(None) => break,
            _ => {
                return Reply {
                    status: http::StatusCode::BAD_REQUEST,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
            }
        }
    }
    match crate::session::logout::check_logout_token(&ctx.generation.sessions.clients, &body).await
    {
        Ok(of) => {
            logout(&of);
            crate::session::logout::logged_out()
        }
        Err(reply) => reply,
    }
}

/// The session check of a route that takes `client`'s sessions. A navigation without a
/// session gets the login redirect (kept in `ctx` for the caller to send) and counts as
/// `missing_token`.
pub(super) async fn authenticate(
    client: &Client,
    policy: &Policy,
    session: &Session,
    ctx: &mut RequestCtx,
    revoked: &(dyn Fn(&crate::session::SessionData) -> bool + Sync),
) -> Result<Identity, AuthError> {
    let req = session.req_header();
    match client.authenticate(req, revoked).await {
        Outcome::Pass { live, cookies } => {
            ctx.session_cookies = cookies;
            let identity = live.identity.clone();
            ctx.session = Some(live);
            policy.permits(&identity)?;
            Ok(identity)
        }
        Outcome::None { cookies } => {
            if flow::is_navigation(req) {
                let mut reply = client.login(req, is_https(session, ctx));
                reply
                    .headers
                    .extend(cookies.into_iter().map(|c| (http::header::SET_COOKIE, c)));
                ctx.session_reply = Some(reply);
            }
            Err(AuthError::MissingToken)
        }
        Outcome::Unavailable => Err(AuthError::SessionUnavailable),
    }
}

/// Write `reply` as the whole response, with the request's id (and `Server`, when
/// `server_header` gives one).
pub(super) async fn send(session: &mut Session, reply: Reply, ctx: &RequestCtx) {
    let mut header = super::rescue::bare_header(reply.status.as_u16());
    for (name, value) in reply.headers {
        let _ = header.append_header(name, value);
    }
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
    let _ = header.insert_header(http::header::CONTENT_LENGTH, reply.body.len());
    let _ = header.insert_header(headers::X_REQUEST_ID, ctx.request_id.clone());
    if let Some(server) = ctx.generation.edits.server.own() {
        let _ = header.insert_header(http::header::SERVER, server.clone());
    }
    let body = bytes::Bytes::from(reply.body);
    let result = match session.write_response_header(Box::new(header), false).await {
        Ok(()) => session.write_response_body(Some(body), true).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not send a session response");
    }
}

/// Whether a session was revoked after it was created: by its user (`sub`) or its provider
/// session (`sid`); its creation (the login) counts as its issue time.
pub(super) fn revoked(
    revocations: &crate::revocation::Revocations,
    data: &crate::session::SessionData,
) -> bool {
    revocations.refuses(
        Some(&data.sub),
        data.sid.as_deref(),
        None,
        Some(data.created),
    )
}

/// Revoke what a logout ended, on every node: its provider session (`sid`), or, for a
/// back-channel logout that names only a user, every session and token of that user (`sub`).
pub(super) fn revoke(
    revocations: &crate::revocation::Revocations,
    of: &crate::session::logout::LogoutOf,
) {
    use crate::revocation::Revocation;
    let revocation = match (&of.sid, &of.sub) {
        (Some(sid), _) => Revocation::Sid(sid.clone()),
        (None, Some(sub)) => Revocation::Sub(sub.clone()),
        (None, None) => return,
    };
    if let Err(e) = revocations.revoke(revocation) {
        tracing::warn!(session = %of.session, error = %e, "logout not revoked");
    }
}
