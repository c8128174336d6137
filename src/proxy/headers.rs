//! Header hygiene between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1; `Trailer`
//! is end-to-end there and passes, so trailers still work), the
//! `X-Forwarded-*` set, and the request id. Pure functions over header maps; they never decide
//! whether a request is allowed.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, UPGRADE};
use pingora::http::{RequestHeader, ResponseHeader};

// Names as constants: a `&str` name is parsed again on every call, on every request.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The request id header, read from the client when well formed and always sent both ways.
pub const REQUEST_ID: &str = "x-request-id";
const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Header names listed in `Connection`, lowercase, without `close`, `keep-alive` (removed
/// anyway) and `upgrade`. Allocates only when there is such a name.
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            let plain = ["close", "keep-alive", "upgrade"]
                .iter()
                .any(|t| token.eq_ignore_ascii_case(t));
            if !token.is_empty() && !plain {
                names.push(token.to_ascii_lowercase());
            }
        }
    }
    names
}

/// Remove hop-by-hop headers from a request going upstream. `upgrade` keeps `Upgrade` and
/// `Connection: upgrade` so WebSocket handshakes pass through.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
    if req.headers.contains_key(CONNECTION) {
        for name in connection_listed(&req.headers) {
            req.remove_header(name.as_str());
        }
        req.remove_header(&CONNECTION);
        if upgrade {
            let _ = req.insert_header(CONNECTION, "upgrade");
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &PROXY_AUTHORIZATION] {
        req.remove_header(name);
    }
    req.remove_header(&TE);
    if !upgrade {
        req.remove_header(&UPGRADE);
    }
}

/// Remove hop-by-hop headers from a response going to the client.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if resp.headers.contains_key(CONNECTION) {
        for name in connection_listed(&resp.headers) {
            resp.remove_header(name.as_str());
        }
        if !switching {
            resp.remove_header(&CONNECTION);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &PROXY_AUTHENTICATE] {
        resp.remove_header(name);
    }
    if !switching {
        resp.remove_header(&UPGRADE);
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
pub fn set_forwarded(req: &mut RequestHeader, client_ip: Option<std::net::IpAddr>, tls: bool) {
    use std::io::Write;
    let host: Option<HeaderValue> = match req.headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(h) = &host {
        if !req.headers.contains_key(HOST) {
            let _ = req.insert_header(HOST, h.clone());
        }
    }
    if let Some(ip) = client_ip {
        let mut value = Vec::with_capacity(48);
        for previous in req.headers.get_all(&X_FORWARDED_FOR) {
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
        }
        let _ = write!(value, "{ip}");
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let _ = req.insert_header("x-forwarded-for", v);
        }
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let _ = req.insert_header("x-forwarded-proto", proto);
    match host {
        Some(h) => {
            let _ = req.insert_header("x-forwarded-host", h);
        }
        None => {
            req.remove_header(&X_FORWARDED_HOST);
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

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut r = req(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("x-kept", "yes"),
        ]);
        strip_request_hop_by_hop(&mut r, false);
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
    fn keeps_websocket_upgrade() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_request_hop_by_hop(&mut r, true);
        assert_eq!(r.headers["connection"], "upgrade");
        assert_eq!(r.headers["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_headers() {
        let mut r = req(&[("host", "api.example.com"), ("x-forwarded-for", "10.0.0.1")]);
        set_forwarded(&mut r, Some("192.0.2.7".parse().unwrap()), true);
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(r.headers["x-forwarded-proto"], "https");
        assert_eq!(r.headers["x-forwarded-host"], "api.example.com");
        assert_eq!(r.headers["host"], "api.example.com");
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
