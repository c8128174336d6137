//! The request's spans, from what the proxy knows: the request's own attributes (HTTP
//! semantic conventions), the token check and the key fetch it waited for, each limit check,
//! and each upstream attempt's. Everything here runs only for a sampled request (or not at
//! all with `tracing:` absent); nothing here reads a header value but `Host`: no token,
//! cookie, `Authorization` or query string reaches an attribute.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use pingora::proxy::Session;
use pingora::Error;

use super::RequestCtx;
use crate::auth::{AuthError, Identity};
use crate::headers;
use crate::ratelimit::Limiter;
use crate::trace::notes::Notes;
use crate::upstream::Target;

/// Now, for a sampled request: the start of a span.
pub(super) fn clock(ctx: &RequestCtx) -> Option<SystemTime> {
    ctx.trace.as_ref().and_then(|t| t.clock())
}

/// A limit check that began at `start`: `peek` only looked.
pub(super) fn limit(
    ctx: &RequestCtx,
    start: Option<SystemTime>,
    limiter: &Limiter,
    peek: bool,
    allowed: bool,
) {
    if let Some(trace) = &ctx.trace {
        trace.child("portcullis.rate_limit", start, None, || {
            vec![
                KeyValue::new("portcullis.limit.kind", limiter.kind.name()),
                KeyValue::new("portcullis.limit.peek", peek),
                KeyValue::new(
                    "portcullis.limit.result",
                    if allowed { "allowed" } else { "refused" },
                ),
            ]
        });
    }
}

/// The pool's in-flight cap was asked for a place at `start`.
pub(super) fn concurrency(ctx: &RequestCtx, start: Option<SystemTime>, allowed: bool) {
    if let Some(trace) = &ctx.trace {
        trace.child("portcullis.concurrency_limit", start, None, || {
            vec![KeyValue::new(
                "portcullis.limit.result",
                if allowed { "allowed" } else { "refused" },
            )]
        });
    }
}

/// The token check that began at `start` ended with `result`; `notes` says how it went.
pub(super) fn token_check(
    ctx: &RequestCtx,
    start: Option<SystemTime>,
    notes: Notes,
    result: &Result<Identity, AuthError>,
) {
    let (Some(trace), Some(start)) = (&ctx.trace, start) else {
        return;
    };
    let end = SystemTime::now();
    let id = fastrand::u64(1..);
    if let Some(fetch) = notes.key_fetch {
        trace.child_of(
            id,
            fastrand::u64(1..),
            "portcullis.key_fetch",
            Some(fetch.start),
            Some(fetch.end),
            || {
                vec![
                    KeyValue::new("portcullis.issuer", fetch.issuer),
                    KeyValue::new("portcullis.key_fetch.completed", fetch.fetched),
                ]
            },
        );
    }
    trace.child_of(
        trace.span_id(),
        id,
        "portcullis.token_check",
        Some(start),
        Some(end),
        || {
            let mut attributes = vec![KeyValue::new("portcullis.auth.result", auth_result(result))];
            if let Some(check) = notes.check {
                attributes.push(KeyValue::new("portcullis.auth.check", check));
            }
            attributes
        },
    );
}

fn auth_result(result: &Result<Identity, AuthError>) -> &'static str {
    match result {
        Ok(_) => "allowed",
        Err(e) => e.reason(),
    }
}

/// An upstream attempt on `target` starts.
pub(super) fn attempt(
    trace: &mut Option<crate::trace::RequestTrace>,
    session: &Session,
    pool: &str,
    target: &Target,
    tls: bool,
    attempt: u32,
) {
    let Some(trace) = trace else { return };
    trace.start_attempt(|| {
        let mut attributes = vec![
            KeyValue::new(
                "http.request.method",
                known_method(&session.req_header().method),
            ),
            KeyValue::new("server.address", target.addr.ip().to_string()),
            KeyValue::new("server.port", i64::from(target.addr.port())),
            KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
            KeyValue::new("portcullis.upstream", pool.to_string()),
            KeyValue::new("portcullis.upstream.target", target.label.clone()),
        ];
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        attributes
    });
}

/// The request ended with `status` (0: none sent): its span.
pub(super) fn finish(session: &Session, ctx: &mut RequestCtx, status: u16, e: Option<&Error>) {
    let Some(trace) = ctx.trace.as_ref() else {
        return;
    };
    if !trace.sampled() {
        return;
    }
    let req = session.req_header();
    let route = ctx.route().map(|r| r.name.clone());
    let method = known_method(&req.method);
    let name: Cow<'static, str> = match (&route, method) {
        (Some(r), "_OTHER") => format!("HTTP {r}").into(),
        (Some(r), _) => format!("{method} {r}").into(),
        (None, "_OTHER") => "HTTP".into(),
        (None, _) => method.into(),
    };
    let host = headers::request_host(req);
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.path", req.uri.path().to_string()),
        KeyValue::new(
            "url.scheme",
            if super::is_tls(session) {
                "https"
            } else {
                "http"
            },
        ),
        KeyValue::new("server.address", host.to_string()),
        KeyValue::new(
            "network.protocol.version",
            match req.version {
                http::Version::HTTP_10 => "1.0",
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_3 => "3",
                _ => "1.1",
            },
        ),
        KeyValue::new(
            "portcullis.request_id",
            headers::request_id_str(&ctx.request_id).to_string(),
        ),
    ];
    if method == "_OTHER" {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            req.method.as_str().to_string(),
        ));
    }
    if let Some(port) = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
    {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(ip) = ctx.client_ip {
        attributes.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route));
    }
    if status != 0 {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if let Some(refusal) = ctx.refusal {
        attributes.push(KeyValue::new("portcullis.refusal", refusal.code()));
    }
    if ctx.route().is_some_and(|r| r.policy.is_some()) {
        let result = match (&ctx.identity, ctx.refusal) {
            (Some(_), _) => "allowed",
            (None, Some(refusal)) => refusal.code(),
            (None, None) => "none",
        };
        attributes.push(KeyValue::new("portcullis.auth.result", result));
    }
    // Server spans fail on 5xx only (a 4xx is the client's); no answer at all fails too.
    let error: Option<Cow<'static, str>> = match (status, ctx.refusal, e) {
        (500.., Some(refusal), _) => Some(refusal.code().into()),
        (500.., None, _) => Some(status.to_string().into()),
        (0, _, Some(e)) => Some(e.etype().as_str().into()),
        (0, _, None) => Some("no_response".into()),
        _ => None,
    };
    if let Some(trace) = ctx.trace.as_mut() {
        trace.finish(name, attributes, error);
    }
}

/// The method as the HTTP conventions name it: one of the standard methods, or `_OTHER`.
fn known_method(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}
