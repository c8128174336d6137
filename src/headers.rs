//! Header hygiene between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1; `Trailer`
//! is end-to-end there and passes, so trailers still work), the headers Portcullis owns (no
//! client may send them, in any spelling), the `X-Forwarded-*` set, the request id, and
//! reading method overrides. Pure functions over header maps; they never decide whether a
//! request is allowed.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, UPGRADE};
use http::request::Parts as ReqParts;
use http::response::Parts as RespParts;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{HeadersWithUnderscores, MethodOverrideHeaders};

// Names as constants: a `&str` name is parsed again on every call, on every request.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The request id header, read from the client when well formed and always sent both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Which attempt of the request this is (1, then 2, ... on retries), for the upstream.
pub const X_PORTCULLIS_ATTEMPTS: HeaderName = HeaderName::from_static("x-portcullis-attempts");

/// The value of [`X_PORTCULLIS_ATTEMPTS`] for attempt `n` (at most 10 are configurable), made
/// without allocating.
pub fn attempt_value(n: u32) -> HeaderValue {
    const VALUES: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    match VALUES.get(n as usize) {
        Some(v) => HeaderValue::from_static(v),
        None => HeaderValue::from(n),
    }
}
/// Headers that ask a backend to take a `POST` as another method (Symfony, Laravel, Rails,
/// ASP.NET): stripped unless `server.method_override_headers` is `honor`.
pub const METHOD_OVERRIDE: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// [`METHOD_OVERRIDE`] values that disagree or are not a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOverride;

/// The method the [`METHOD_OVERRIDE`] headers and `_method` query parameters (see
/// [`override_params`]) ask for, upper-cased as the frameworks that honour them do;
/// `Ok(None)` without any.
///
/// # Errors
/// When the values (all lines of all three names, all parameters) disagree, or one is not a
/// method token.
pub fn override_method(
    headers: &HeaderMap,
    query: &str,
) -> Result<Option<http::Method>, BadOverride> {
    let mut found: Option<http::Method> = None;
    let names = METHOD_OVERRIDE;
    let values = names
        .iter()
        .flat_map(|name| headers.get_all(name))
        .map(|v| v.as_bytes().to_ascii_uppercase())
        .chain(override_params(query).map(|v| form_decode(v).to_ascii_uppercase().into_bytes()));
    for value in values {
        let method = http::Method::from_bytes(&value).map_err(|_| BadOverride)?;
        match &found {
            Some(m) if *m != method => return Err(BadOverride),
            Some(_) => {}
            None => found = Some(method),
        }
    }
    Ok(found)
}

/// The values of the query parameters PHP reads as `_method`, which Laravel (and Symfony
/// with its parameter override on) honour on `POST` as the headers are. PHP decodes a key,
/// drops its leading spaces, turns ` ` and `.` into `_` and reads `_method[x]` as an array
/// under `_method`: `%5Fmethod`, `.method`, `+_method` and `_method[]` are all `_method`.
pub fn override_params(query: &str) -> impl Iterator<Item = &str> {
    query.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Most keys have neither and are not it: no allocation for them.
        if !key.contains("method") && !key.contains('%') {
            return None;
        }
        let key = form_decode(key);
        let key = key.trim_start_matches(' ');
        let key = key.split('[').next().unwrap_or(key);
        (key.len() == 7 && key.starts_with(['_', ' ', '.']) && &key[1..] == "method")
            .then_some(value)
    })
}

/// A query key or value as a form decoder reads it: `+` is a space, escapes decoded once.
fn form_decode(text: &str) -> String {
    crate::routing::decode_once(&text.replace('+', " "))
}

/// Request headers Portcullis sets or strips, beside the identity headers of the config and
/// every `X-Forwarded-*`: the one list of them. A client header that names one of these with
/// `_` read as `-` (`X_Request_Id`, `proxy_authorization`) never reaches the upstream, whatever
/// `server.headers_with_underscores` says: CGI, WSGI, Rack and PHP read both spellings as the
/// same `HTTP_*` variable (the bug class of CVE-2024-45614). Lowercase, with `-`.
pub const OWNED: &[&str] = &[
    "x-request-id",
    "x-portcullis-attempts",
    // RFC 7239: removed from every request; Portcullis speaks `X-Forwarded-*` only.
    "forwarded",
    // Hop-by-hop and framing: Pingora and Portcullis set or strip them.
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
    "transfer-encoding",
    "content-length",
    // Method overrides.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Every client header name starting with this is Portcullis's: `X-Forwarded-For` (the chain
/// it appends the client to), `-Proto` and `-Host` (it sets them from what it sees), and any
/// other (`X-Forwarded-Port`, `-Prefix`, `-Ssl`), which it removes.
const X_FORWARDED_PREFIX: &str = "x-forwarded-";

/// The client request headers Portcullis owns, compiled once per config: [`Self::strip`]
/// removes them from each request in one pass over its headers.
#[derive(Debug, Clone, Default)]
pub struct OwnedHeaders {
    /// The headers routes forward claims in, as the config spells them.
    identity: Vec<HeaderName>,
    /// [`OWNED`] and the identity headers, lowercase, with `-`: what an underscore spelling
    /// is compared with under `allow`.
    owned: Vec<Box<str>>,
    underscores: HeadersWithUnderscores,
    /// Whether [`METHOD_OVERRIDE`] headers are removed (`strip`) or forwarded (`honor`).
    overrides: MethodOverrideHeaders,
}

impl OwnedHeaders {
    /// The owned set for a config whose routes forward claims in `identity` (names without
    /// `_`, which the config refuses), with its `server.headers_with_underscores` and
    /// `server.method_override_headers`.
    pub fn new(
        identity: &[HeaderName],
        underscores: HeadersWithUnderscores,
        overrides: MethodOverrideHeaders,
    ) -> Self {
        let mut owned: Vec<Box<str>> = OWNED.iter().map(|n| Box::from(*n)).collect();
        for name in identity {
            if !owned.iter().any(|o| **o == *name.as_str()) {
                owned.push(name.as_str().into());
            }
        }
        OwnedHeaders {
            identity: identity.to_vec(),
            owned,
            underscores,
            overrides,
        }
    }

    /// Remove every client header Portcullis owns from a request going upstream: the identity
    /// headers, `Forwarded`, any `X-Forwarded-*` but the three it sets, the method overrides
    /// under `strip`, and the names spelled with `_` (all of them under `drop`; under `allow`,
    /// those naming an owned header).
    /// One pass over the names first: most requests carry none of them.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if !headers.keys().any(|k| self.owns(k)) {
            return;
        }
        let owned: Vec<HeaderName> = headers.keys().filter(|k| self.owns(k)).cloned().collect();
        for name in owned {
            headers.remove(name);
        }
    }

    /// Whether a client may not send `name` (it is removed before the request goes upstream).
    pub fn owns(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        if text.as_bytes().contains(&b'_') {
            return match self.underscores {
                HeadersWithUnderscores::Drop => true,
                HeadersWithUnderscores::Allow => {
                    starts_as(text, X_FORWARDED_PREFIX)
                        || self
                            .owned
                            .iter()
                            .any(|o| text.len() == o.len() && starts_as(text, o))
                }
            };
        }
        if let Some(rest) = text.strip_prefix(X_FORWARDED_PREFIX) {
            return !matches!(rest, "for" | "proto" | "host");
        }
        text == "forwarded"
            || self.identity.contains(name)
            || (self.overrides == MethodOverrideHeaders::Strip && METHOD_OVERRIDE.contains(name))
    }
}

/// Whether `name` starts with `owned` when each `_` in it is read as `-`. Both lowercase.
fn starts_as(name: &str, owned: &str) -> bool {
    name.len() >= owned.len()
        && name
            .bytes()
            .zip(owned.bytes())
            .all(|(n, o)| n == o || (n == b'_' && o == b'-'))
}

/// Header names listed in `Connection`, lowercase, without `close`, `keep-alive` (removed
/// anyway), `upgrade` and `host`. Allocates only when there is such a name.
///
/// `Host` is never removed this way (`Connection: host`, found by the `headers` fuzz
/// target): the route was chosen by it, and an upstream sent none would answer for its
/// default virtual host, perhaps one the route was never meant to reach. Pingora 0.9.1
/// already answers such a request 400 before this runs; this holds without it.
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            let plain = ["close", "keep-alive", "upgrade", "host"]
                .iter()
                .any(|t| token.eq_ignore_ascii_case(t));
            if !token.is_empty() && !plain {
                names.push(token.to_ascii_lowercase());
            }
        }
    }
    names
}

/// Headers we may add to a request or response: room reserved for them up front.
const ROOM: usize = 8;

/// Edit a request through its own parts (headers, URI) and give it back without the
/// header-case map Pingora keeps beside the headers.
///
/// Pingora keeps each header name's original case in a second map that must stay in step
/// with the headers: every insert through it parses the name again and grows both maps, which
/// are sized to exactly what the client sent, so a request with two headers grows each map on
/// every header added (ten growths a request, the largest single cost of proxying it). Here
/// the headers are moved out, not copied, get room for what the proxy adds once, and are
/// edited through [`http::HeaderMap`]. Header names then go upstream in their canonical case
/// (`Host`, `X-Forwarded-For`; others lowercase), as Envoy and HAProxy send them.
pub fn edit_request<R>(req: &mut RequestHeader, edit: impl FnOnce(&mut ReqParts) -> R) -> R {
    // What the parts cannot carry: an origin-form target that does not round-trip through
    // the URI (bytes that are not UTF-8), and the HTTP/2 end-of-stream flag. An absolute-form
    // target is not kept: it goes upstream in origin form, the path and query the URI holds
    // (RFC 9112 section 3.2.1), and its host as `Host`.
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    let raw = (req.raw_path().starts_with(b"/") && from_uri != Some(req.raw_path()))
        .then(|| req.raw_path().to_vec());
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = ReqParts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(ROOM);
    let out = edit(&mut parts);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        // It parsed once already; should it not again, the URI's form stands.
        let _ = req.set_raw_path(&raw);
    }
    if let Some(end) = end_stream {
        req.set_send_end_stream(end);
    }
    out
}

/// [`edit_request`] for a response going to the client.
pub fn edit_response<R>(resp: &mut ResponseHeader, edit: impl FnOnce(&mut RespParts) -> R) -> R {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = RespParts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(ROOM);
    let out = edit(&mut parts);
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = reason {
        let _ = resp.set_reason_phrase(Some(&reason));
    }
    out
}

/// Hop-by-hop request headers, beside those `Connection` names.
const HOP_BY_HOP_REQUEST: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHORIZATION,
    TE,
    UPGRADE,
];
/// Hop-by-hop response headers, beside those `Connection` names.
const HOP_BY_HOP_RESPONSE: [HeaderName; 5] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    UPGRADE,
];

/// Remove hop-by-hop headers from a request going upstream. `upgrade` keeps `Upgrade` and
/// `Connection: upgrade` so WebSocket handshakes pass through.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !headers.keys().any(|k| HOP_BY_HOP_REQUEST.contains(k)) {
        return;
    }
    for name in connection_listed(headers) {
        headers.remove(name.as_str());
    }
    let had_connection = headers.remove(CONNECTION).is_some();
    for name in &HOP_BY_HOP_REQUEST[1..5] {
        headers.remove(name);
    }
    if upgrade {
        if had_connection {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether a request's `TE` lists `trailers` (RFC 9110 section 10.1.4), as every gRPC call's
/// does.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    })
}

/// Remove hop-by-hop headers from a response going to the client.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, status: http::StatusCode) {
    if !headers.keys().any(|k| HOP_BY_HOP_RESPONSE.contains(k)) {
        return;
    }
    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in connection_listed(headers) {
        headers.remove(name.as_str());
    }
    if !switching {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    for name in &HOP_BY_HOP_RESPONSE[1..4] {
        headers.remove(name);
    }
}

/// The host the client asked for: `Host`, or the `:authority` of an HTTP/2 request.
pub fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Set `X-Forwarded-For` (appending the client), `X-Forwarded-Proto` and `X-Forwarded-Host`,
/// and make sure `Host` is the one the client sent. Values are built without going through
/// strings: this runs on every request.
pub fn set_forwarded(req: &mut ReqParts, client_ip: Option<std::net::IpAddr>, tls: bool) {
    let headers = &mut req.headers;
    let host: Option<HeaderValue> = match headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let host = req
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(h) = &host {
                headers.insert(HOST, h.clone());
            }
            host
        }
    };
    if let Some(ip) = client_ip {
        let mut value = Vec::with_capacity(48);
        for previous in headers.get_all(&X_FORWARDED_FOR) {
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
        }
        push_ip(&mut value, ip);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO, proto);
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Append `ip` in its usual text form. IPv4, the common case, without the formatting
/// machinery (a third of the cost of `X-Forwarded-For` went there).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    use std::io::Write;
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The client's request id if it is one we can pass on safely, else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        let safe = !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
        if safe {
            return v.clone();
        }
    }
    new_request_id()
}

/// 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A request id as text (ids are ASCII by construction).
pub fn request_id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Bytes of the request line and headers, as the client sent them (close enough to compare
/// against a limit: HTTP/2 adds no framing to it).
pub fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x?a=1", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn parts(headers: &[(&str, &str)]) -> ReqParts {
        ReqParts::from(req(headers))
    }

    #[test]
    fn editing_keeps_the_request_and_drops_the_case_map() {
        let mut r = RequestHeader::build("GET", b"http://h.example/x?a=1", None).unwrap();
        r.append_header("X-Custom-Case", "1").unwrap();
        assert!(r.has_case());
        edit_request(&mut r, |p| {
            p.headers
                .insert(X_REQUEST_ID, HeaderValue::from_static("id"));
        });
        assert!(!r.has_case());
        assert_eq!(r.raw_path(), b"/x?a=1", "origin form upstream");
        assert_eq!(r.headers["x-custom-case"], "1");
        assert_eq!(r.headers["x-request-id"], "id");
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        assert!(wire.windows(13).any(|w| w == b"x-request-id:"));

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        resp.append_header("Server", "up").unwrap();
        edit_response(&mut resp, |p| p.headers.remove(http::header::SERVER));
        assert!(!resp.has_case());
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert!(resp.headers.is_empty());
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut r = parts(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("x-kept", "yes"),
        ]);
        strip_request_hop_by_hop(&mut r.headers, false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(!r.headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(r.headers["x-kept"], "yes");
    }

    #[test]
    fn trailers_in_te() {
        for (te, yes) in [
            ("trailers", true),
            ("Trailers", true),
            ("gzip, trailers", true),
            ("trailers;q=1, deflate", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            assert_eq!(accepts_trailers(&parts(&[("te", te)]).headers), yes, "{te}");
        }
        assert!(!accepts_trailers(&parts(&[]).headers));
    }

    /// Method overrides are owned under `strip` and the client's to send under `honor`;
    /// their `_` spellings are owned either way (under `allow`).
    #[test]
    fn method_overrides_are_stripped_unless_honoured() {
        for (overrides, kept) in [
            (MethodOverrideHeaders::Strip, false),
            (MethodOverrideHeaders::Honor, true),
        ] {
            let owned = OwnedHeaders::new(&[], HeadersWithUnderscores::Allow, overrides);
            let mut r = parts(&[
                ("host", "h"),
                ("x-http-method-override", "DELETE"),
                ("x-http-method", "DELETE"),
                ("x-method-override", "DELETE"),
                ("x_http_method_override", "DELETE"),
            ]);
            owned.strip(&mut r.headers);
            for name in &METHOD_OVERRIDE {
                assert_eq!(
                    r.headers.contains_key(name),
                    kept,
                    "{name} under {overrides:?}"
                );
            }
            assert!(!r.headers.contains_key("x_http_method_override"));
            assert_eq!(r.headers["host"], "h");
        }
    }

    fn owned(underscores: HeadersWithUnderscores) -> OwnedHeaders {
        OwnedHeaders::new(
            &[
                HeaderName::from_static("x-user-id"),
                HeaderName::from_static("x-tenant"),
            ],
            underscores,
            MethodOverrideHeaders::Strip,
        )
    }

    /// Headers a client sends that name what Portcullis owns, in every spelling a CGI-style
    /// server reads as the same variable.
    const FORGED: [&str; 17] = [
        "x-user-id",
        "x_user_id",
        "X_User-Id",
        "x-tenant",
        "X_TENANT",
        "x_request_id",
        "x_forwarded_for",
        "x-forwarded_proto",
        "x_forwarded_host",
        "x-forwarded-port",
        "x_forwarded_prefix",
        "forwarded",
        "proxy_authorization",
        "keep_alive",
        "transfer_encoding",
        "content_length",
        "x_http_method_override",
    ];

    #[test]
    fn owned_headers_never_pass_in_any_spelling() {
        for mode in [HeadersWithUnderscores::Drop, HeadersWithUnderscores::Allow] {
            let mut sent: Vec<(&str, &str)> = FORGED.iter().map(|n| (*n, "mallory")).collect();
            sent.extend([
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "h"),
                ("x-request-id", "id-1"),
                ("x-kept", "1"),
                ("x_plain_underscore", "1"),
            ]);
            let mut r = parts(&sent);
            owned(mode).strip(&mut r.headers);
            for name in FORGED {
                assert!(
                    !r.headers.contains_key(name.to_ascii_lowercase().as_str()),
                    "{name} passed under {mode:?}"
                );
            }
            // Those Portcullis reads or replaces itself stay for it to do so.
            for name in [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id",
                "x-kept",
            ] {
                assert!(
                    r.headers.contains_key(name),
                    "{name} removed under {mode:?}"
                );
            }
            let plain = r.headers.contains_key("x_plain_underscore");
            assert_eq!(plain, mode == HeadersWithUnderscores::Allow, "{mode:?}");
        }
    }

    #[test]
    fn owned_headers_leave_a_clean_request_alone() {
        let mut r = parts(&[("host", "h"), ("accept", "*/*"), ("x-user-idx", "1")]);
        let before = r.headers.clone();
        owned(HeadersWithUnderscores::Drop).strip(&mut r.headers);
        assert_eq!(r.headers, before);
        // Close spellings that are other names pass under `allow`.
        let mut r = parts(&[("x_user_idx", "1"), ("x_user", "1"), ("x_forwarded", "1")]);
        owned(HeadersWithUnderscores::Allow).strip(&mut r.headers);
        assert_eq!(r.headers.len(), 3, "{:?}", r.headers);
    }

    #[test]
    fn connection_cannot_remove_host() {
        // The input the `headers` fuzz target found: the upstream got no `Host` at all.
        let mut r = parts(&[("host", "a.example"), ("connection", "host, x-gone")]);
        r.headers.insert("x-gone", HeaderValue::from_static("1"));
        strip_request_hop_by_hop(&mut r.headers, false);
        set_forwarded(&mut r, None, false);
        assert_eq!(r.headers["host"], "a.example");
        assert_eq!(r.headers["x-forwarded-host"], "a.example");
        assert!(!r.headers.contains_key("x-gone"));
    }

    #[test]
    fn keeps_websocket_upgrade() {
        let mut r = parts(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_request_hop_by_hop(&mut r.headers, true);
        assert_eq!(r.headers["connection"], "upgrade");
        assert_eq!(r.headers["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_headers() {
        let mut r = parts(&[("host", "api.example.com"), ("x-forwarded-for", "10.0.0.1")]);
        set_forwarded(&mut r, Some("192.0.2.7".parse().unwrap()), true);
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert_eq!(r.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(r.headers["host"], "api.example.com");
    }

    #[test]
    fn ip_text() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "9.99.100.1",
            "2001:db8::7",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
    }

    #[test]
    fn method_overrides() {
        let map = |pairs: &[(&str, &str)]| parts(pairs).headers;
        assert_eq!(override_method(&map(&[]), "a=1&method=x"), Ok(None));
        assert_eq!(
            override_method(&map(&[("x-http-method", "delete")]), ""),
            Ok(Some(http::Method::DELETE))
        );
        for query in [
            "_method=DELETE",
            "a=1&%5Fmethod=delete",
            "+.method=DEL%45TE",
            ".method=delete&b",
            "_method[]=delete",
            "%20%20_m%65thod=Delete",
        ] {
            assert_eq!(
                override_method(&map(&[]), query),
                Ok(Some(http::Method::DELETE)),
                "{query}"
            );
            assert_eq!(override_params(query).count(), 1, "{query}");
        }
        assert_eq!(override_params("a_method=1&_methods=2&method=3").count(), 0);
        assert_eq!(
            override_method(&map(&[("x-http-method", "PUT")]), "_method=delete"),
            Err(BadOverride)
        );
        assert_eq!(
            override_method(
                &map(&[
                    ("x-http-method-override", "PATCH"),
                    ("x-method-override", "patch"),
                    ("x-method-override", "Patch"),
                ]),
                ""
            ),
            Ok(Some(http::Method::PATCH))
        );
        for bad in [
            &[
                ("x-http-method-override", "PUT"),
                ("x-http-method", "DELETE"),
            ][..],
            &[("x-method-override", "PUT"), ("x-method-override", "GET")],
            &[("x-http-method", "")],
            &[("x-http-method", "DE LETE")],
            &[("x-http-method", "(GET)")],
        ] {
            assert_eq!(override_method(&map(bad), ""), Err(BadOverride), "{bad:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(&req(&[("x-request-id", "abc-123")])), "abc-123");
        let made = request_id(&req(&[("x-request-id", "bad id\"")]));
        assert_eq!(made.len(), 32);
        assert!(request_id_str(&made).bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_request_id(), new_request_id());
    }
}
