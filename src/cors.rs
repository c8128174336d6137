//! CORS at the edge: a route's `cors:` compiled at reload into the rules and the ready header
//! values, the answer to a preflight, and the headers of an actual response.
//!
//! Rules (the Fetch standard's, as Envoy's and Kong's CORS filters apply them):
//! - An origin is allowed when it equals an exact entry (compared without case; entries are
//!   normalised at reload: lowercase scheme and host, no default port), when it is a
//!   subdomain (one label or more, never the domain itself) of a `scheme://*.domain[:port]`
//!   entry with the same scheme and port, or when the list is `*`.
//! - A preflight is allowed when its origin is, its `Access-Control-Request-Method` is in
//!   `allow_methods`, and every name in its `Access-Control-Request-Headers` is in
//!   `allow_headers`. The answer then echoes the origin (`*` for a `*` list), lists the
//!   allowed methods and echoes the requested headers. Otherwise the answer carries no CORS
//!   header at all, and the browser refuses the request.
//! - An actual response carries `Access-Control-Allow-Origin` (and `-Allow-Credentials`,
//!   `-Expose-Headers`) for an allowed origin only, and `Vary: Origin` always; the upstream's
//!   own `Access-Control-*` headers are removed first, so the route's rules are the only ones.
//!
//! Nothing here allocates per request beyond cloning a request header's value to echo it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{CorsConfig, Issues};

/// The response headers of CORS: the upstream's are removed on routes with `cors:`.
const RESPONSE_HEADERS: [HeaderName; 7] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    HeaderName::from_static("access-control-allow-private-network"),
];

/// What a preflight's answer varies on.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// Methods allowed when `allow_methods` is absent: those a browser never preflights anyway.
const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// One entry of `allow_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `scheme://host[:port]`, normalised.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `suffix` starts with `.`; `port` is `None` for the
    /// scheme's default.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// `allow_methods` or `allow_headers`: a list, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    Any,
    /// Uppercase methods, or lowercase header names.
    Listed(Vec<String>),
}

/// A route's `cors:`, compiled.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `None`: `*`.
    origins: Option<Vec<OriginRule>>,
    methods: Names,
    /// `Access-Control-Allow-Methods` for a listed set.
    methods_value: HeaderValue,
    headers: Names,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// The default port of a scheme that has one.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A host name's labels: letters, digits, `-` and `_`, none empty.
fn is_domain(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Split `host[:port]`; an IPv6 literal keeps its brackets. `None`: a port that is not one.
fn split_port(rest: &str) -> Option<(&str, Option<u16>)> {
    let colon = if rest.starts_with('[') {
        let end = rest.find(']')?;
        match &rest[end + 1..] {
            "" => None,
            p if p.starts_with(':') => Some(end + 1),
            _ => return None,
        }
    } else {
        rest.rfind(':')
    };
    match colon {
        Some(at) => {
            let port = &rest[at + 1..];
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((&rest[..at], Some(port.parse().ok()?)))
        }
        None => Some((rest, None)),
    }
}

/// Parse one `allow_origins` entry (not `*`).
fn origin_rule(entry: &str) -> Result<OriginRule, String> {
    let bad = |why: &str| format!("`{entry}` is not an origin: {why}");
    let (scheme, rest) = entry
        .split_once("://")
        .ok_or_else(|| bad("write `scheme://host[:port]`, such as `https://app.example.com`"))?;
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(bad("the scheme is not one"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad(
            "an origin has no path, query or user (a browser sends `https://host`, without a \
             trailing `/`)",
        ));
    }
    let (host, port) =
        split_port(rest).ok_or_else(|| bad("the port is not a number up to 65535"))?;
    let host = host.to_ascii_lowercase();
    let port = port.filter(|p| Some(*p) != default_port(&scheme));
    let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
    if let Some(domain) = host.strip_prefix("*.") {
        if !is_domain(domain) {
            return Err(bad("`*.` must be followed by a domain name"));
        }
        return Ok(OriginRule::Subdomains {
            scheme,
            suffix: format!(".{domain}"),
            port,
        });
    }
    let literal = host.starts_with('[') && host.ends_with(']');
    if host.contains('*') {
        return Err(bad(
            "`*` may only stand for whole labels at the front: `https://*.example.com`",
        ));
    }
    if !literal && !is_domain(&host) {
        return Err(bad("the host is not a name or an address"));
    }
    Ok(OriginRule::Exact(format!("{scheme}://{host}{port_text}")))
}

impl OriginRule {
    fn allows(&self, origin: &str) -> bool {
        match self {
            OriginRule::Exact(exact) => exact.eq_ignore_ascii_case(origin),
            OriginRule::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let Some((their_scheme, rest)) = origin.split_once("://") else {
                    return false;
                };
                if !their_scheme.eq_ignore_ascii_case(scheme) {
                    return false;
                }
                let Some((host, their_port)) = split_port(rest) else {
                    return false;
                };
                let their_port = their_port.filter(|p| Some(*p) != default_port(scheme));
                if their_port != *port || host.len() <= suffix.len() {
                    return false;
                }
                let (labels, tail) = host.split_at(host.len() - suffix.len());
                tail.eq_ignore_ascii_case(suffix) && is_domain(labels)
            }
        }
    }
}

/// A header value made of `items` joined with `, `. The items are validated methods or header
/// names (tokens), so the value is always valid; an empty one stands in for the impossible.
fn joined(items: &[String]) -> HeaderValue {
    HeaderValue::from_str(&items.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Cors {
    /// Compile `c`, written at `at` (`routes[2].cors`); `None` after pushing every issue.
    pub fn compile(c: &CorsConfig, at: &str, issues: &mut Issues<'_>) -> Option<Cors> {
        let before = issues.len();
        let mut origins = Vec::with_capacity(c.allow_origins.len());
        let mut any = false;
        if c.allow_origins.is_empty() {
            issues.push(
                format!("{at}.allow_origins"),
                "list at least one origin (or `*` for any)",
            );
        }
        for (i, entry) in c.allow_origins.iter().enumerate() {
            let entry = entry.trim();
            if entry == "*" {
                any = true;
                if c.allow_origins.len() > 1 {
                    issues.push(
                        format!("{at}.allow_origins[{i}]"),
                        "`*` allows every origin: it must be the only entry",
                    );
                }
                continue;
            }
            match origin_rule(entry) {
                Ok(rule) => origins.push(rule),
                Err(e) => issues.push(format!("{at}.allow_origins[{i}]"), e),
            }
        }
        if any && c.allow_credentials {
            issues.push(
                format!("{at}.allow_credentials"),
                "cannot be true with `*` in allow_origins: browsers refuse credentials from a \
                 wildcard; list the origins (`https://*.example.com` is allowed)",
            );
        }
        let methods = match &c.allow_methods {
            None => Names::Listed(DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()),
            Some(list) if list.is_empty() => {
                issues.push(
                    format!("{at}.allow_methods"),
                    "list at least one method, or leave it out for GET, HEAD and POST",
                );
                Names::Any
            }
            Some(list) => names(list, &format!("{at}.allow_methods"), issues, |m| {
                http::Method::from_bytes(m.as_bytes())
                    .ok()
                    .map(|_| m.to_ascii_uppercase())
            }),
        };
        let header_name = |h: &str| {
            HeaderName::from_bytes(h.as_bytes())
                .ok()
                .map(|n| n.as_str().to_string())
        };
        let headers = names(
            &c.allow_headers,
            &format!("{at}.allow_headers"),
            issues,
            header_name,
        );
        let expose = names(
            &c.expose_headers,
            &format!("{at}.expose_headers"),
            issues,
            header_name,
        );
        if expose == Names::Any && c.allow_credentials {
            issues.push(
                format!("{at}.expose_headers"),
                "`*` cannot be used with allow_credentials (browsers read it as a header \
                 named `*`): list the headers",
            );
        }
        let max_age = c.max_age.map(|d| HeaderValue::from(d.0.as_secs()));
        if issues.len() > before {
            return None;
        }
        let methods_value = match &methods {
            Names::Listed(list) => joined(list),
            Names::Any => HeaderValue::from_static("*"),
        };
        let expose = match expose {
            Names::Any => Some(HeaderValue::from_static("*")),
            Names::Listed(list) if list.is_empty() => None,
            Names::Listed(list) => Some(joined(&list)),
        };
        Some(Cors {
            origins: (!any).then_some(origins),
            methods,
            methods_value,
            headers,
            expose,
            credentials: c.allow_credentials,
            max_age,
        })
    }

    /// The value of `Access-Control-Allow-Origin` for a request from `origin`; `None` when the
    /// origin is not allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(rules) => {
                let text = origin.to_str().ok()?;
                rules.iter().any(|r| r.allows(text)).then(|| origin.clone())
            }
        }
    }

    /// Whether a preflight may ask for `method`.
    fn allows_method(&self, method: &[u8]) -> bool {
        match &self.methods {
            Names::Any => true,
            Names::Listed(list) => list
                .iter()
                .any(|m| m.as_bytes().eq_ignore_ascii_case(method)),
        }
    }

    /// Whether a preflight may ask for every header in `requested` (a comma-separated list).
    fn allows_headers(&self, requested: &str) -> bool {
        requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| match &self.headers {
                // As the Fetch standard reads `*`: every name but `Authorization`.
                Names::Any => !h.eq_ignore_ascii_case("authorization"),
                Names::Listed(list) => list.iter().any(|l| l.eq_ignore_ascii_case(h)),
            })
    }

    /// The CORS headers of the answer to a preflight with these request headers: nothing but
    /// `Vary` when it is not allowed.
    pub fn preflight(&self, request: &HeaderMap, answer: &mut HeaderMap) {
        answer.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        let Some(origin) = request
            .get(header::ORIGIN)
            .and_then(|o| self.allow_origin(o))
        else {
            return;
        };
        let Some(method) = request.get(header::ACCESS_CONTROL_REQUEST_METHOD) else {
            return;
        };
        if !self.allows_method(method.as_bytes()) {
            return;
        }
        let mut asked = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter();
        let requested = match (asked.next(), asked.next()) {
            (None, _) => None,
            (Some(one), None) => match one.to_str() {
                Ok(text) if self.allows_headers(text) => Some(one),
                _ => return,
            },
            // Browsers send one; several are a client of another kind.
            (Some(_), Some(_)) => return,
        };
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        let methods = match self.methods {
            Names::Any => method.clone(),
            Names::Listed(_) => self.methods_value.clone(),
        };
        answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        if let Some(requested) = requested.filter(|r| !r.is_empty()) {
            answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        if self.credentials {
            answer.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = &self.max_age {
            answer.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
    }

    /// Put the route's CORS headers on a response from the upstream to a request with
    /// `origin` (or none), in place of the upstream's own.
    pub fn respond(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        for name in &RESPONSE_HEADERS {
            response.remove(name);
        }
        add_vary_origin(response);
        let Some(allowed) = origin.and_then(|o| self.allow_origin(o)) else {
            return;
        };
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Add `Origin` to `Vary`, unless it is there already or `Vary: *` says it all.
fn add_vary_origin(response: &mut HeaderMap) {
    let present = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*" || v.trim().eq_ignore_ascii_case("origin"));
    if !present {
        response.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Parse a list of names, each by `parse` (`None`: not a name), or `*` alone.
fn names(
    list: &[String],
    at: &str,
    issues: &mut Issues<'_>,
    parse: impl Fn(&str) -> Option<String>,
) -> Names {
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let entry = entry.trim();
        if entry == "*" {
            if list.len() > 1 {
                issues.push(format!("{at}[{i}]"), "`*` must be the only entry");
            }
            return Names::Any;
        }
        match parse(entry) {
            Some(name) if !out.contains(&name) => out.push(name),
            Some(_) => {}
            None => issues.push(
                format!("{at}[{i}]"),
                format!("`{entry}` is not a valid name"),
            ),
        }
    }
    Names::Listed(out)
}

/// The method a CORS preflight asks for: the request is `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method` (a valid method); `None` for any other request.
pub fn preflight_method(method: &http::Method, headers: &HeaderMap) -> Option<http::Method> {
    if method != http::Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    http::Method::from_bytes(asked.as_bytes()).ok()
}

#[cfg(test)]
mod tests;
