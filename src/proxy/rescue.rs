//! The one place that turns a refusal into an HTTP response.
//!
//! Every module that refuses a request names a [`Refusal`]; only this module chooses the
//! status, the headers and the JSON body. Bodies say what happened in general terms and never
//! echo what the client sent (beyond the request id we validated or made).
//!
//! A gRPC call (`content-type: application/grpc`, `application/grpc+proto`, ...) is refused
//! the way gRPC clients read, as Envoy does: HTTP 200, `content-type: application/grpc` and
//! the refusal as `grpc-status` and `grpc-message` in a response of headers only
//! ("Trailers-Only"), the gRPC status derived from the refusal's HTTP status by
//! [`grpc_status`].

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::headers;

/// Why Portcullis answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The request line or headers are malformed.
    BadRequest,
    /// The request target is not one to route: a byte RFC 3986 does not allow, a dot
    /// segment, an encoded separator or control, a form other than origin or `http(s)`
    /// absolute form, or a path a common backend reading puts on another route.
    BadPath,
    /// Request line and headers exceed `server.max_request_header_bytes`.
    HeadersTooLarge,
    /// No route takes the request.
    NoRoute,
    /// The route's pool has no healthy target.
    NoHealthyTarget,
    /// The route's pool has no target at all yet: none of its host names has resolved (503).
    NoTargetYet,
    /// Connecting to the upstream failed (after retries).
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The TLS connection to the upstream failed: its certificate was refused (issuer, name,
    /// dates) or it refused ours.
    UpstreamTls,
    /// The upstream broke the exchange (closed or reset it before answering).
    UpstreamError,
    /// The upstream answered something that is not a valid HTTP response: not HTTP at all,
    /// a header too large, conflicting `Content-Length` values (RFC 9112 section 6.3).
    UpstreamInvalidResponse,
    /// Something inside the proxy failed.
    Internal,
    /// The route needs a token and the request has none (401 without an error code).
    MissingToken,
    /// Malformed credentials (400 `invalid_request`).
    InvalidCredentials,
    /// The token is not valid (401 `invalid_token`), with a reason safe to show.
    InvalidToken(crate::auth::TokenFault),
    /// The token lacks a required scope (403 `insufficient_scope`).
    InsufficientScope,
    /// The token's claims do not satisfy the route (403).
    ClaimsMismatch,
    /// The issuer's keys have not arrived yet (503).
    KeysUnavailable,
    /// A browser session cannot be served now: its store (Redis) or the provider is away
    /// and nothing held in the process can stand in (503).
    SessionUnavailable,
    /// An opaque token could not be introspected: the issuer's introspection endpoint is
    /// unknown, down, slow or broken (503; never a pass, never a 401).
    IntrospectionUnavailable,
    /// A rate limit refused it (429); seconds until a request would pass.
    RateLimited(u64),
    /// The upstream pool is at its in-flight cap (503).
    Overloaded,
    /// The route's `rewrite` would make a path the routing rules refuse (a dot segment).
    BadRewrite,
    /// The client address is refused by `deny_ips` or not in `allow_ips` (403).
    IpDenied,
    /// The request body is larger than the route's `max_body_bytes` (413): by its
    /// `Content-Length`, or counted as it arrived.
    BodyTooLarge,
}

impl Refusal {
    /// Every kind of refusal, one of each (the payload of those with one is an example).
    pub const ALL: [Refusal; 25] = [
        Refusal::BadRequest,
        Refusal::BadPath,
        Refusal::HeadersTooLarge,
        Refusal::NoRoute,
        Refusal::NoHealthyTarget,
        Refusal::NoTargetYet,
        Refusal::UpstreamUnreachable,
        Refusal::UpstreamTimeout,
        Refusal::UpstreamTls,
        Refusal::UpstreamError,
        Refusal::UpstreamInvalidResponse,
        Refusal::Internal,
        Refusal::MissingToken,
        Refusal::InvalidCredentials,
        Refusal::InvalidToken(crate::auth::TokenFault::Expired),
        Refusal::InsufficientScope,
        Refusal::ClaimsMismatch,
        Refusal::KeysUnavailable,
        Refusal::SessionUnavailable,
        Refusal::IntrospectionUnavailable,
        Refusal::RateLimited(1),
        Refusal::Overloaded,
        Refusal::BadRewrite,
        Refusal::IpDenied,
        Refusal::BodyTooLarge,
    ];

    /// Status, code and message, defined together: the status sent, the stable
    /// machine-readable code (also the access log's `reason`), and what the body says.
    fn meaning(self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::BadRequest => (400, "bad_request", "the request is malformed"),
            Refusal::BadPath => (400, "bad_path", "the request path is not allowed"),
            Refusal::HeadersTooLarge => (
                431,
                "headers_too_large",
                "the request headers are too large",
            ),
            Refusal::NoRoute => (404, "no_route", "no route matches this request"),
            Refusal::NoHealthyTarget => (
                502,
                "no_healthy_upstream",
                "the upstream has no healthy target",
            ),
            Refusal::NoTargetYet => (
                503,
                "no_healthy_target",
                "the upstream has no target yet: its host names have not resolved",
            ),
            Refusal::UpstreamUnreachable => (
                502,
                "upstream_unreachable",
                "the upstream could not be reached",
            ),
            Refusal::UpstreamTimeout => (
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            Refusal::UpstreamTls => (
                502,
                "upstream_tls",
                "the TLS connection to the upstream failed",
            ),
            Refusal::UpstreamError => (502, "upstream_error", "the upstream failed to answer"),
            Refusal::UpstreamInvalidResponse => (
                502,
                "upstream_invalid_response",
                "the upstream sent an invalid response",
            ),
            Refusal::Internal => (500, "internal_error", "internal error"),
            Refusal::MissingToken => (401, "unauthorized", "a bearer token is required"),
            Refusal::InvalidCredentials => {
                (400, "invalid_request", "the credentials are malformed")
            }
            Refusal::InvalidToken(fault) => (401, "invalid_token", fault.message()),
            Refusal::InsufficientScope => (
                403,
                "insufficient_scope",
                "the token lacks a required scope",
            ),
            Refusal::ClaimsMismatch => (
                403,
                "forbidden",
                "the token does not grant access to this route",
            ),
            Refusal::KeysUnavailable => (
                503,
                "keys_unavailable",
                "the identity provider's keys are not available yet",
            ),
            Refusal::SessionUnavailable => (
                503,
                "session_unavailable",
                "the session cannot be served right now",
            ),
            Refusal::IntrospectionUnavailable => (
                503,
                "introspection_unavailable",
                "the identity provider could not check the token",
            ),
            Refusal::RateLimited(_) => (429, "rate_limited", "too many requests"),
            Refusal::Overloaded => (503, "overloaded", "the upstream is at capacity"),
            Refusal::BadRewrite => (
                400,
                "bad_rewrite",
                "the request path cannot be rewritten for this route",
            ),
            Refusal::IpDenied => (
                403,
                "ip_denied",
                "requests from this address are not allowed",
            ),
            Refusal::BodyTooLarge => (413, "body_too_large", "the request body is too large"),
        }
    }

    /// The status code sent.
    pub fn status(self) -> u16 {
        self.meaning().0
    }

    /// A stable machine-readable code, also used as the log `reason`.
    pub fn code(self) -> &'static str {
        self.meaning().1
    }

    fn message(self) -> &'static str {
        self.meaning().2
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 section 3), for refusals that have one.
    /// `scope` is the route's required scopes.
    fn challenge(self, scope: &str) -> Option<String> {
        const REALM: &str = "Bearer realm=\"portcullis\"";
        match self {
            Refusal::MissingToken => Some(REALM.to_string()),
            Refusal::InvalidCredentials => Some(format!(
                "{REALM}, error=\"invalid_request\", error_description=\"{}\"",
                self.message()
            )),
            Refusal::InvalidToken(fault) => Some(format!(
                "{REALM}, error=\"invalid_token\", error_description=\"{}\"",
                fault.message()
            )),
            Refusal::InsufficientScope => Some(format!(
                "{REALM}, error=\"insufficient_scope\", error_description=\"{}\", scope=\"{scope}\"",
                self.message()
            )),
            Refusal::ClaimsMismatch => Some(format!(
                "{REALM}, error=\"insufficient_scope\", error_description=\"{}\"",
                self.message()
            )),
            _ => None,
        }
    }

    /// The response header and body for this refusal.
    pub fn response(self, reply: &Reply<'_>) -> (ResponseHeader, Bytes) {
        let (request_id, scope) = (reply.request_id, reply.scope);
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.message(),
            "request_id": request_id,
        });
        if self == Refusal::InsufficientScope {
            body["scope"] = scope.into();
        }
        let body = Bytes::from(body.to_string());
        let mut header = ResponseHeader::build_no_case(self.status(), Some(4))
            .unwrap_or_else(|_| bare_header(self.status()));
        // Header names and values here are constants or validated ids: these inserts cannot
        // fail, and a failure would only drop a header.
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len());
        self.common_headers(&mut header, reply);
        (header, body)
    }

    /// The gRPC status a refused call gets: see [`grpc_status`].
    pub fn grpc_status(self) -> GrpcStatus {
        grpc_status(self.status())
    }

    /// The response to a refused gRPC call: HTTP 200 with `grpc-status` and `grpc-message`,
    /// headers only (gRPC's "Trailers-Only"), beside the same `X-Request-Id`, challenge,
    /// `Retry-After` and `RateLimit` headers as [`Self::response`]. `http1`: the client
    /// speaks HTTP/1.1, whose framing then needs `content-length: 0`.
    pub fn grpc_response(self, reply: &Reply<'_>, http1: bool) -> ResponseHeader {
        let mut header =
            ResponseHeader::build_no_case(200, Some(8)).unwrap_or_else(|_| bare_header(200));
        let _ = header.insert_header("content-type", "application/grpc");
        let _ = header.insert_header("grpc-status", u16::from(self.grpc_status().code()));
        let _ = header.insert_header("grpc-message", grpc_message(self.message()));
        if http1 {
            let _ = header.insert_header("content-length", 0);
        }
        self.common_headers(&mut header, reply);
        header
    }

    /// The headers every refusal carries, whatever its form.
    fn common_headers(self, header: &mut ResponseHeader, reply: &Reply<'_>) {
        let (request_id, scope) = (reply.request_id, reply.scope);
        let _ = header.insert_header("cache-control", "no-store");
        if let Some(server) = reply.server {
            let _ = header.insert_header(http::header::SERVER, server.clone());
        }
        for cookie in reply.set_cookies {
            let _ = header.append_header(http::header::SET_COOKIE, cookie.clone());
        }
        if !request_id.is_empty() {
            let _ = header.insert_header(headers::X_REQUEST_ID, request_id);
        }
        if let Some(challenge) = self.challenge(scope) {
            let _ = header.insert_header("www-authenticate", challenge);
        }
        match self {
            Refusal::KeysUnavailable
            | Refusal::SessionUnavailable
            | Refusal::IntrospectionUnavailable
            | Refusal::Overloaded => {
                let _ = header.insert_header("retry-after", "1");
            }
            Refusal::RateLimited(secs) => {
                let _ = header.insert_header("retry-after", secs.max(1));
            }
            _ => {}
        }
        if let Some((policy, state)) = &reply.rate_limit {
            if let Some(policy) = policy {
                let _ = header.insert_header(headers::RATELIMIT_POLICY, (*policy).clone());
            }
            let _ = header.insert_header(headers::RATELIMIT, state.as_str());
        }
        if let Some((cors, origin)) = &reply.cors {
            headers::edit_response(header, |parts| {
                cors.respond(origin.as_ref(), &mut parts.headers)
            });
        }
    }
}

/// A gRPC status code (the `grpc-status` trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcStatus {
    /// 2: an HTTP status with no closer meaning.
    Unknown,
    /// 7: the caller may not do this.
    PermissionDenied,
    /// 8: a rate limit.
    ResourceExhausted,
    /// 12: nothing serves this method.
    Unimplemented,
    /// 13: a malformed request.
    Internal,
    /// 14: the service cannot be reached now; clients may retry.
    Unavailable,
    /// 16: no valid credentials.
    Unauthenticated,
}

impl GrpcStatus {
    /// The number sent as `grpc-status`.
    pub fn code(self) -> u8 {
        match self {
            GrpcStatus::Unknown => 2,
            GrpcStatus::PermissionDenied => 7,
            GrpcStatus::ResourceExhausted => 8,
            GrpcStatus::Unimplemented => 12,
            GrpcStatus::Internal => 13,
            GrpcStatus::Unavailable => 14,
            GrpcStatus::Unauthenticated => 16,
        }
    }
}

/// The gRPC status for an HTTP status: Envoy's `Grpc::Utility::httpToGrpcStatus` (gRPC's
/// `http-grpc-status-mapping.md`), except that 429 is `RESOURCE_EXHAUSTED` rather than
/// `UNAVAILABLE`, as Envoy's rate limit filters send it (`rate_limited_as_resource_exhausted`):
/// a client should back off, not fail over.
pub fn grpc_status(http: u16) -> GrpcStatus {
    match http {
        400 => GrpcStatus::Internal,
        401 => GrpcStatus::Unauthenticated,
        403 => GrpcStatus::PermissionDenied,
        404 => GrpcStatus::Unimplemented,
        // As a gRPC server answers a message over its size limit.
        413 => GrpcStatus::ResourceExhausted,
        429 => GrpcStatus::ResourceExhausted,
        502..=504 => GrpcStatus::Unavailable,
        _ => GrpcStatus::Unknown,
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether the request is a gRPC call: `content-type` `application/grpc`, or that followed by
/// `+format` (`application/grpc+proto`) or parameters. gRPC-Web (`application/grpc-web`) is
/// not: its clients read errors from the body.
pub fn is_grpc(req: &pingora::http::RequestHeader) -> bool {
    let Some(value) = req.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let v = value.as_bytes();
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// A header built without validation, for a status we know is valid.
pub(super) fn bare_header(status: u16) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    ResponseHeader::from(parts)
}

/// What a refusal's response says besides its kind.
#[derive(Debug, Default)]
pub struct Reply<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The route's required scopes, for 403 `insufficient_scope`.
    pub scope: &'a str,
    /// `RateLimit-Policy` and `RateLimit` values.
    pub rate_limit: Option<(Option<&'a http::HeaderValue>, String)>,
    /// `Set-Cookie` values of a browser session refreshed on the way (they must reach the
    /// browser whatever the answer, or it would come back with a redeemed refresh token).
    pub set_cookies: &'a [http::HeaderValue],
    /// `Server`, when `server_header` gives one.
    pub server: Option<&'a http::HeaderValue>,
    /// The route's `cors:` and the request's `Origin`: a page on an allowed origin may read
    /// the refusal.
    pub cors: Option<(&'a crate::cors::Cors, Option<http::HeaderValue>)>,
}

/// Send `refusal` as the whole response: JSON, or for a gRPC call ([`is_grpc`]) the gRPC
/// form. Returns whether it was the gRPC form (sent with HTTP status 200).
///
/// A refusal before proxying of a request that has no body keeps the connection open: a client refused
/// by a limit or a policy does not have to reconnect (and redo TLS) for its next request.
/// Anything else closes it, as Pingora does for its own errors.
pub async fn send(
    session: &mut Session,
    refusal: Refusal,
    reply: &Reply<'_>,
    before_proxying: bool,
) -> bool {
    if is_grpc(session.req_header()) {
        send_grpc(session, refusal, reply, before_proxying).await;
        return true;
    }
    let (header, body) = refusal.response(reply);
    let result =
        if before_proxying && session.response_written().is_none() && session.is_body_empty() {
            match session.write_response_header(Box::new(header), false).await {
                Ok(()) => session.write_response_body(Some(body), true).await,
                Err(e) => Err(e),
            }
        } else {
            session.write_error_response(header, body).await
        };
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not send refusal to client");
    }
    false
}

/// [`send`] for a gRPC call: the headers, with end of stream.
async fn send_grpc(
    session: &mut Session,
    refusal: Refusal,
    reply: &Reply<'_>,
    before_proxying: bool,
) {
    if !(before_proxying && session.response_written().is_none() && session.is_body_empty()) {
        session.set_keepalive(None);
    }
    // Headers already sent (the upstream's): the call can only be cut.
    if session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
    {
        return;
    }
    let header = refusal.grpc_response(reply, !session.is_http2());
    // Pingora's proxy session writes a header without ending the stream, and ends it later
    // with an empty DATA frame, which gRPC clients take as a broken call: the downstream
    // session's task interface ends the stream on the header itself. (No downstream module
    // is skipped: Portcullis installs none.)
    let header = pingora::protocols::http::HttpTask::Header(Box::new(header), true);
    if let Err(e) = session
        .as_downstream_mut()
        .response_duplex_vec(vec![header])
        .await
    {
        tracing::debug!(error = %e, "could not send refusal to client");
    }
}

impl From<crate::auth::AuthError> for Refusal {
    fn from(e: crate::auth::AuthError) -> Refusal {
        use crate::auth::AuthError;
        match e {
            AuthError::MissingToken => Refusal::MissingToken,
            AuthError::InvalidRequest => Refusal::InvalidCredentials,
            AuthError::InvalidToken(why) => Refusal::InvalidToken(why),
            AuthError::InsufficientScope => Refusal::InsufficientScope,
            AuthError::ClaimsMismatch => Refusal::ClaimsMismatch,
            AuthError::KeysUnavailable => Refusal::KeysUnavailable,
            AuthError::SessionUnavailable => Refusal::SessionUnavailable,
            AuthError::IntrospectionUnavailable => Refusal::IntrospectionUnavailable,
        }
    }
}

/// Map a Pingora error at the end of a failed request to a refusal, by the side it came from
/// first and its kind second: the same `InvalidHTTPHeader` is a client's malformed request
/// (400) when it comes from downstream and an upstream's malformed response (502) when it
/// comes from upstream.
///
/// - `Upstream`: a failed TLS handshake is `upstream_tls` (502), other connect failures
///   `upstream_unreachable` (502), read and write timeouts
///   `upstream_timeout` (504), a response that does not parse or frame (not HTTP, a header
///   over Pingora's 1 MiB, two `Content-Length` values, bad HTTP/2) `upstream_invalid_response`
///   (502), anything else (closed, reset) `upstream_error` (502).
/// - `Downstream`: `bad_request` (400); [`client_gone`] says when no answer is sent at all.
/// - `Internal`: `internal_error` (500).
/// - `Unset`: Pingora leaves unmarked the errors of writing to the client (as the client's
///   I/O errors, so [`client_gone`]) and those of our own hooks (500).
///
/// An `HTTPStatus(n)` error is one this proxy or Pingora chose the status of: it keeps it.
pub fn from_error(e: &pingora::Error) -> Refusal {
    use pingora::{ErrorSource, ErrorType};
    if let ErrorType::HTTPStatus(status) = e.etype() {
        return match status {
            502 => Refusal::UpstreamUnreachable,
            504 => Refusal::UpstreamTimeout,
            400..=499 => Refusal::BadRequest,
            _ => Refusal::Internal,
        };
    }
    match e.esource() {
        ErrorSource::Upstream => match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::BindError
            | ErrorType::SocketError
            | ErrorType::TLSWantX509Lookup
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::HandshakeError => Refusal::UpstreamUnreachable,
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => Refusal::UpstreamTls,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Refusal::UpstreamTimeout,
            ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2
            | ErrorType::H2Downgrade => Refusal::UpstreamInvalidResponse,
            _ => Refusal::UpstreamError,
        },
        ErrorSource::Downstream => Refusal::BadRequest,
        ErrorSource::Unset if client_io(e.etype()) => Refusal::BadRequest,
        ErrorSource::Internal | ErrorSource::Unset => Refusal::Internal,
    }
}

/// Whether `e` says the client's connection broke, so that no answer can reach it.
pub fn client_gone(e: &pingora::Error) -> bool {
    matches!(
        e.esource(),
        pingora::ErrorSource::Downstream | pingora::ErrorSource::Unset
    ) && client_io(e.etype())
}

/// I/O failures that, left unmarked by Pingora, come from writing the response to the client
/// (`write_response_tasks` does not mark its errors; every upstream I/O error is marked).
fn client_io(etype: &pingora::ErrorType) -> bool {
    use pingora::ErrorType;
    matches!(
        etype,
        ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ConnectionClosed
            | ErrorType::WriteTimedout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorSource, ErrorType};

    /// Every error type Pingora has, with what it means coming from the upstream.
    /// (`HTTPStatus` keeps its status: see below.)
    const UPSTREAM: [(ErrorType, Refusal); 31] = [
        (ErrorType::ConnectTimedout, Refusal::UpstreamUnreachable),
        (ErrorType::ConnectRefused, Refusal::UpstreamUnreachable),
        (ErrorType::ConnectNoRoute, Refusal::UpstreamUnreachable),
        (ErrorType::TLSWantX509Lookup, Refusal::UpstreamUnreachable),
        (ErrorType::TLSHandshakeFailure, Refusal::UpstreamTls),
        (
            ErrorType::TLSHandshakeTimedout,
            Refusal::UpstreamUnreachable,
        ),
        (ErrorType::InvalidCert, Refusal::UpstreamTls),
        (ErrorType::HandshakeError, Refusal::UpstreamUnreachable),
        (ErrorType::ConnectError, Refusal::UpstreamUnreachable),
        (ErrorType::BindError, Refusal::UpstreamUnreachable),
        (ErrorType::AcceptError, Refusal::UpstreamError),
        (ErrorType::SocketError, Refusal::UpstreamUnreachable),
        (ErrorType::ConnectProxyFailure, Refusal::UpstreamUnreachable),
        (
            ErrorType::InvalidHTTPHeader,
            Refusal::UpstreamInvalidResponse,
        ),
        (ErrorType::H1Error, Refusal::UpstreamInvalidResponse),
        (ErrorType::H2Error, Refusal::UpstreamInvalidResponse),
        (ErrorType::H2Downgrade, Refusal::UpstreamInvalidResponse),
        (ErrorType::InvalidH2, Refusal::UpstreamInvalidResponse),
        (ErrorType::ReadError, Refusal::UpstreamError),
        (ErrorType::WriteError, Refusal::UpstreamError),
        (ErrorType::ReadTimedout, Refusal::UpstreamTimeout),
        (ErrorType::WriteTimedout, Refusal::UpstreamTimeout),
        (ErrorType::ConnectionClosed, Refusal::UpstreamError),
        (ErrorType::FileOpenError, Refusal::UpstreamError),
        (ErrorType::FileCreateError, Refusal::UpstreamError),
        (ErrorType::FileReadError, Refusal::UpstreamError),
        (ErrorType::FileWriteError, Refusal::UpstreamError),
        (ErrorType::InternalError, Refusal::UpstreamError),
        (ErrorType::UnknownError, Refusal::UpstreamError),
        (ErrorType::Custom("custom"), Refusal::UpstreamError),
        (ErrorType::CustomCode("custom", 7), Refusal::UpstreamError),
    ];

    /// Error types that, unmarked, are the client's connection failing.
    const CLIENT_IO: [ErrorType; 4] = [
        ErrorType::ReadError,
        ErrorType::WriteError,
        ErrorType::ConnectionClosed,
        ErrorType::WriteTimedout,
    ];

    fn error(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::explain(etype, "test");
        e.esource = source;
        e
    }

    #[test]
    fn every_error_type_from_every_side() {
        let sources = [
            ErrorSource::Upstream,
            ErrorSource::Downstream,
            ErrorSource::Internal,
            ErrorSource::Unset,
        ];
        for (etype, upstream) in UPSTREAM {
            for source in sources.clone() {
                let e = error(etype.clone(), source.clone());
                let client_io = CLIENT_IO.contains(&etype);
                let want = match source {
                    ErrorSource::Upstream => upstream,
                    ErrorSource::Downstream => Refusal::BadRequest,
                    ErrorSource::Unset if client_io => Refusal::BadRequest,
                    ErrorSource::Internal | ErrorSource::Unset => Refusal::Internal,
                };
                assert_eq!(from_error(&e), want, "{etype:?} from {source:?}");
                let gone =
                    client_io && matches!(source, ErrorSource::Downstream | ErrorSource::Unset);
                assert_eq!(client_gone(&e), gone, "{etype:?} from {source:?}");
            }
        }
        // The cases the penetration test found, and their statuses.
        let invalid = error(ErrorType::InvalidHTTPHeader, ErrorSource::Upstream);
        assert_eq!(from_error(&invalid).status(), 502);
        assert_eq!(from_error(&invalid).code(), "upstream_invalid_response");
        let timeout = error(ErrorType::ReadTimedout, ErrorSource::Upstream);
        assert_eq!(from_error(&timeout).status(), 504);
        let malformed = error(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream);
        assert_eq!(from_error(&malformed).status(), 400);
        // A client that sends bytes after its request: Pingora calls it a ConnectError.
        let extra = error(ErrorType::ConnectError, ErrorSource::Downstream);
        assert_eq!(from_error(&extra).status(), 400);
    }

    #[test]
    fn a_chosen_status_is_kept_whatever_the_side() {
        for source in [
            ErrorSource::Upstream,
            ErrorSource::Downstream,
            ErrorSource::Unset,
        ] {
            for (status, want) in [
                (502, Refusal::UpstreamUnreachable),
                (504, Refusal::UpstreamTimeout),
                (400, Refusal::BadRequest),
                (413, Refusal::BadRequest),
                (500, Refusal::Internal),
            ] {
                let e = error(ErrorType::HTTPStatus(status), source.clone());
                assert_eq!(from_error(&e), want, "{status} from {source:?}");
            }
        }
    }

    #[test]
    fn upstream_refusals_are_5xx_with_their_codes() {
        for (refusal, status, code) in [
            (Refusal::UpstreamError, 502, "upstream_error"),
            (
                Refusal::UpstreamInvalidResponse,
                502,
                "upstream_invalid_response",
            ),
            (Refusal::UpstreamTimeout, 504, "upstream_timeout"),
            (Refusal::UpstreamUnreachable, 502, "upstream_unreachable"),
            (Refusal::UpstreamTls, 502, "upstream_tls"),
        ] {
            assert_eq!(refusal.status(), status);
            assert_eq!(refusal.code(), code);
            let (header, body) = refusal.response(&Reply::default());
            assert_eq!(header.status.as_u16(), status);
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], code);
        }
    }

    /// Every refusal of a gRPC call: HTTP 200, headers only, the gRPC status of its HTTP
    /// status (an exhaustive match: a new variant does not compile until listed), the message
    /// as `grpc-message`, and the headers of the JSON form beside them.
    #[test]
    fn every_refusal_has_its_grpc_status() {
        let expected = |r: Refusal| -> u8 {
            match r {
                Refusal::BadRequest
                | Refusal::BadPath
                | Refusal::InvalidCredentials
                | Refusal::BadRewrite => 13,
                Refusal::HeadersTooLarge | Refusal::Internal => 2,
                Refusal::NoRoute => 12,
                Refusal::NoHealthyTarget
                | Refusal::NoTargetYet
                | Refusal::UpstreamUnreachable
                | Refusal::UpstreamTimeout
                | Refusal::UpstreamError
                | Refusal::UpstreamInvalidResponse
                | Refusal::UpstreamTls
                | Refusal::KeysUnavailable
                | Refusal::SessionUnavailable
                | Refusal::IntrospectionUnavailable
                | Refusal::Overloaded => 14,
                Refusal::MissingToken | Refusal::InvalidToken(_) => 16,
                Refusal::InsufficientScope | Refusal::ClaimsMismatch | Refusal::IpDenied => 7,
                Refusal::RateLimited(_) | Refusal::BodyTooLarge => 8,
            }
        };
        let reply = Reply {
            request_id: "abc",
            scope: "orders:write",
            rate_limit: None,
            set_cookies: &[],
            server: None,
            cors: None,
        };
        for r in Refusal::ALL {
            assert_eq!(r.grpc_status().code(), expected(r), "{r:?}");
            let (json, _) = r.response(&reply);
            for http1 in [false, true] {
                let header = r.grpc_response(&reply, http1);
                let h = &header.headers;
                assert_eq!(header.status.as_u16(), 200, "{r:?}");
                assert_eq!(h["content-type"], "application/grpc");
                assert_eq!(h["grpc-status"], expected(r).to_string().as_str());
                assert_eq!(h["grpc-message"], r.message(), "{r:?}");
                assert_eq!(h.get("content-length").is_some(), http1, "{r:?}");
                for name in ["x-request-id", "www-authenticate", "retry-after"] {
                    assert_eq!(h.get(name), json.headers.get(name), "{r:?} {name}");
                }
            }
        }
        assert_eq!(grpc_status(500), GrpcStatus::Unknown);
        assert_eq!(grpc_status(431), GrpcStatus::Unknown);
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("plain text"), "plain text");
        assert_eq!(grpc_message("100% sure\n"), "100%25 sure%0A");
        assert_eq!(grpc_message("caf\u{e9}"), "caf%C3%A9");
    }

    #[test]
    fn grpc_calls_by_content_type() {
        let with = |ct: Option<&str>| {
            let mut req = pingora::http::RequestHeader::build("POST", b"/a.B/C", None).unwrap();
            if let Some(ct) = ct {
                req.insert_header("content-type", ct).unwrap();
            }
            is_grpc(&req)
        };
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(with(Some(ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "application/gr",
        ] {
            assert!(!with(Some(ct)), "{ct}");
        }
        assert!(!with(None));
    }

    /// Every refusal: the status, code and message it sends, from the variant and nothing
    /// else. The expectation is an exhaustive match: a new variant does not compile until it
    /// is listed here (and in [`Refusal::ALL`], whose length is checked against it).
    #[test]
    fn every_refusal_has_its_status_code_and_message() {
        use crate::auth::TokenFault;
        let expected = |r: Refusal| -> (u16, &str) {
            match r {
                Refusal::BadRequest => (400, "bad_request"),
                Refusal::BadPath => (400, "bad_path"),
                Refusal::HeadersTooLarge => (431, "headers_too_large"),
                Refusal::NoRoute => (404, "no_route"),
                Refusal::NoHealthyTarget => (502, "no_healthy_upstream"),
                Refusal::NoTargetYet => (503, "no_healthy_target"),
                Refusal::UpstreamUnreachable => (502, "upstream_unreachable"),
                Refusal::UpstreamTimeout => (504, "upstream_timeout"),
                Refusal::UpstreamTls => (502, "upstream_tls"),
                Refusal::UpstreamError => (502, "upstream_error"),
                Refusal::UpstreamInvalidResponse => (502, "upstream_invalid_response"),
                Refusal::Internal => (500, "internal_error"),
                Refusal::MissingToken => (401, "unauthorized"),
                Refusal::InvalidCredentials => (400, "invalid_request"),
                Refusal::InvalidToken(_) => (401, "invalid_token"),
                Refusal::InsufficientScope => (403, "insufficient_scope"),
                Refusal::ClaimsMismatch => (403, "forbidden"),
                Refusal::KeysUnavailable => (503, "keys_unavailable"),
                Refusal::SessionUnavailable => (503, "session_unavailable"),
                Refusal::IntrospectionUnavailable => (503, "introspection_unavailable"),
                Refusal::RateLimited(_) => (429, "rate_limited"),
                Refusal::Overloaded => (503, "overloaded"),
                Refusal::BadRewrite => (400, "bad_rewrite"),
                Refusal::IpDenied => (403, "ip_denied"),
                Refusal::BodyTooLarge => (413, "body_too_large"),
            }
        };
        let mut codes = std::collections::HashSet::new();
        for r in Refusal::ALL {
            let (status, code) = expected(r);
            assert_eq!((r.status(), r.code()), (status, code), "{r:?}");
            assert!(codes.insert(code), "{code} twice in Refusal::ALL");
            let (header, body) = r.response(&Reply::default());
            assert_eq!(header.status.as_u16(), status, "{r:?}");
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], code, "{r:?}");
            assert_eq!(body["message"], r.message(), "{r:?}");
            assert!(!r.message().is_empty());
        }
        // Each variant once: the set of codes is as large as the exhaustive match above.
        assert_eq!(codes.len(), Refusal::ALL.len());

        // Token faults: each its own label (the metric reason) and message, sent as the
        // body's message and the challenge's error_description.
        let mut labels = std::collections::HashSet::new();
        for &fault in TokenFault::ALL {
            let label = fault.label();
            assert!(
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
            assert!(labels.insert(label), "{label} twice");
            assert_eq!(crate::auth::AuthError::InvalidToken(fault).reason(), label);
            let r = Refusal::from(crate::auth::AuthError::InvalidToken(fault));
            assert_eq!(r, Refusal::InvalidToken(fault));
            let (header, body) = r.response(&Reply::default());
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["message"], fault.message());
            let challenge = header.headers["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.ends_with(&format!("error_description=\"{}\"", fault.message())),
                "{challenge}"
            );
        }
        let reasons: Vec<_> = crate::auth::AuthError::reasons().collect();
        for label in &labels {
            assert!(
                reasons.contains(label),
                "{label} not among AuthError::reasons()"
            );
        }
    }
}
