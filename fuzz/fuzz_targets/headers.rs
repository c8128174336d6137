//! Request and response header editing, in the order the proxy runs it.
//!
//! The input is a flags byte, then text: a request head (`METHOD TARGET`, then `Name: value`
//! lines), an empty line, and a response head (`STATUS [REASON]`, then header lines). The
//! request is edited as `upstream_request_filter` does (hop-by-hop headers stripped, the
//! headers Portcullis owns removed in any spelling, method overrides stripped, an absolute
//! form's host made the `Host`, request id set, `X-Forwarded-*` set), the response as
//! `response_filter` does, and the result is checked against what was sent.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use pingora_http::{RequestHeader, ResponseHeader};
use portcullis::config::{HeadersWithUnderscores, MethodOverrideHeaders};
use portcullis::headers;

const REQUEST_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "upgrade",
];
const RESPONSE_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "upgrade",
];
/// The proxy's own: set or replaced by it, whatever the client sent.
const SET_BY_PROXY: [&str; 4] = [
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];
const IDENTITY: [&str; 2] = ["x-user", "x-tenant"];

/// Lowercase names listed in `Connection`.
fn listed(map: &HeaderMap) -> Vec<String> {
    map.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn head_lines<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    lines
        .take(32)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim_start()))
        .collect()
}

fn check_request(flags: u8, head: &str) {
    let mut lines = head.split('\n');
    let Some(first) = lines.next() else { return };
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let Ok(mut req) = RequestHeader::build(method, target.as_bytes(), None) else {
        return;
    };
    for (k, v) in head_lines(&mut lines) {
        if req.append_header(k.to_string(), v).is_err() {
            return;
        }
    }
    // Pingora refuses a request with two `Host` headers before any filter runs.
    if req.headers.get_all(HOST).iter().count() > 1 {
        return;
    }
    let before = req.headers.clone();
    let (method, uri, raw_path) = (req.method.clone(), req.uri.clone(), req.raw_path().to_vec());
    let _ = headers::header_bytes(&req);
    let _ = headers::request_host(&req);
    let id = headers::request_id(&req);
    assert!(
        headers::request_id_str(&id).len() == id.len(),
        "request id is not text"
    );

    let upgrade = flags & 1 != 0;
    let tls = flags & 2 != 0;
    let ip = match flags >> 2 & 3 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(flags, 0, 2, 1))),
        _ => Some(IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(flags),
        ))),
    };
    let identity: Vec<HeaderName> = IDENTITY
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
    let underscores = if flags & 16 == 0 {
        HeadersWithUnderscores::Drop
    } else {
        HeadersWithUnderscores::Allow
    };
    let strip_overrides = flags & 32 == 0;
    let overrides = if strip_overrides {
        MethodOverrideHeaders::Strip
    } else {
        MethodOverrideHeaders::Honor
    };
    let owned = headers::OwnedHeaders::new(&identity, underscores, overrides);
    // An absolute-form target's host, as `admit` keeps it.
    let authority = uri
        .authority()
        .filter(|_| !raw_path.starts_with(b"/"))
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    headers::edit_request(&mut req, |parts| {
        let map = &mut parts.headers;
        headers::strip_request_hop_by_hop(map, upgrade);
        owned.strip(map);
        if let Some(authority) = &authority {
            map.insert(HOST, authority.clone());
        }
        map.insert(headers::X_REQUEST_ID, id.clone());
        headers::set_forwarded(parts, ip, tls);
    });

    assert_eq!(req.method, method);
    assert_eq!(req.uri.path_and_query(), uri.path_and_query());
    if raw_path.starts_with(b"/") {
        assert_eq!(req.raw_path(), &raw_path[..], "the request target changed");
    } else if let Some(origin) = uri.path_and_query() {
        // Absolute form goes upstream in origin form.
        assert_eq!(
            req.raw_path(),
            origin.as_str().as_bytes(),
            "not origin form upstream"
        );
    }
    let after = &req.headers;
    for name in &REQUEST_HOP[1..5] {
        assert!(!after.contains_key(*name), "{name} went upstream");
    }
    if upgrade {
        let connection: Vec<_> = after.get_all(CONNECTION).iter().collect();
        assert!(
            connection.is_empty() || connection == ["upgrade"],
            "Connection: {connection:?}"
        );
    } else {
        assert!(!after.contains_key(CONNECTION) && !after.contains_key(UPGRADE));
    }
    for name in IDENTITY {
        assert!(!after.contains_key(name), "a client's {name} went upstream");
    }
    assert_eq!(
        after
            .get_all(headers::X_REQUEST_ID)
            .iter()
            .collect::<Vec<_>>(),
        [&id]
    );
    let proto = if tls { "https" } else { "http" };
    assert_eq!(
        after
            .get_all("x-forwarded-proto")
            .iter()
            .collect::<Vec<_>>(),
        [proto]
    );
    // The Host the route was chosen by is the one the upstream sees.
    match authority.as_ref().or(before.get(HOST)) {
        Some(host) => assert_eq!(
            after.get_all(HOST).iter().collect::<Vec<_>>(),
            [host],
            "Host changed"
        ),
        None => {}
    }
    // No client header Portcullis owns arrives, in any spelling: a name with `_` never names
    // one (with `_` read as `-`: the owned list, the identity headers, `X-Forwarded-*`), and
    // the identity headers, `Forwarded` and `X-Forwarded-*` arrive only as Portcullis set them.
    for name in after.keys() {
        let n = name.as_str();
        let dashed = n.replace('_', "-");
        let owned_name = headers::OWNED.contains(&dashed.as_str())
            || IDENTITY.contains(&dashed.as_str())
            || dashed.starts_with("x-forwarded-");
        if n.contains('_') {
            assert!(
                underscores == HeadersWithUnderscores::Allow,
                "{n} went upstream under drop"
            );
            assert!(!owned_name, "the client's {n} went upstream");
        }
        let proxy_only = IDENTITY.contains(&n) || n == "forwarded" || n.starts_with("x-forwarded-");
        assert!(
            !proxy_only || SET_BY_PROXY.contains(&n),
            "the client's {n} went upstream"
        );
        if strip_overrides {
            assert!(
                !headers::METHOD_OVERRIDE.iter().any(|m| m == name),
                "{n} went upstream under strip"
            );
        }
    }
    assert_eq!(after.get("x-forwarded-host"), after.get(HOST));
    if let Some(ip) = ip {
        let xff = after.get_all("x-forwarded-for").iter().collect::<Vec<_>>();
        assert_eq!(xff.len(), 1, "X-Forwarded-For: {xff:?}");
        let last = xff[0]
            .as_bytes()
            .rsplit(|&b| b == b' ')
            .next()
            .unwrap_or_default();
        assert_eq!(last, ip.to_string().as_bytes(), "X-Forwarded-For: {xff:?}");
    }
    // Every other header arrives as sent, in order.
    let dropped = listed(&before);
    for (name, _) in before.iter() {
        let n = name.as_str();
        let dashed = n.replace('_', "-");
        let removed_spelling = n.contains('_')
            && (underscores == HeadersWithUnderscores::Drop
                || headers::OWNED.contains(&dashed.as_str())
                || IDENTITY.contains(&dashed.as_str())
                || dashed.starts_with("x-forwarded-"));
        if REQUEST_HOP.contains(&n)
            || SET_BY_PROXY.contains(&n)
            || IDENTITY.contains(&n)
            || n == "host"
            || n == "forwarded"
            || n.starts_with("x-forwarded-")
            || (strip_overrides && headers::METHOD_OVERRIDE.iter().any(|m| m == name))
            || removed_spelling
        {
            continue;
        }
        if dropped.iter().any(|d| d == n) {
            continue;
        }
        let sent: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        assert_eq!(sent, got, "{n} changed on the way upstream");
    }
}

fn check_response(head: &str) {
    let mut lines = head.split('\n');
    let Some(first) = lines.next() else { return };
    let (code, reason) = match first.split_once(' ') {
        Some((code, reason)) => (code, Some(reason)),
        None => (first, None),
    };
    let Ok(code) = code.parse::<u16>() else {
        return;
    };
    let Ok(mut resp) = ResponseHeader::build(code, None) else {
        return;
    };
    if resp.set_reason_phrase(reason).is_err() {
        return;
    }
    for (k, v) in head_lines(&mut lines) {
        if resp.append_header(k.to_string(), v).is_err() {
            return;
        }
    }
    let before = resp.headers.clone();
    let (status, reason) = (resp.status, resp.get_reason_phrase().map(str::to_owned));
    let id = headers::new_request_id();
    headers::edit_response(&mut resp, |parts| {
        headers::strip_response_hop_by_hop(&mut parts.headers, parts.status);
        parts.headers.insert(headers::X_REQUEST_ID, id.clone());
    });
    assert_eq!(resp.status, status);
    assert_eq!(
        resp.get_reason_phrase().map(str::to_owned),
        reason,
        "the reason phrase changed"
    );
    let after = &resp.headers;
    for name in &RESPONSE_HOP[1..4] {
        assert!(!after.contains_key(*name), "{name} went to the client");
    }
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        assert!(!after.contains_key(CONNECTION) && !after.contains_key(UPGRADE));
    }
    let dropped = listed(&before);
    for (name, _) in before.iter() {
        let n = name.as_str();
        if RESPONSE_HOP.contains(&n) || n == "x-request-id" || dropped.iter().any(|d| d == n) {
            continue;
        }
        let sent: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        assert_eq!(sent, got, "{n} changed on the way to the client");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (request, response) = text.split_once("\n\n").unwrap_or((text, ""));
    check_request(flags, request);
    check_response(response);
});
