//! Compiling `request_headers`, `response_headers`, `server_header`, `rewrite`, `redirect`
//! and `redirect_to_https`. Pure: every problem goes to `Issues` with its path.

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};

use super::location::{pieces, Piece};
use super::template::Template;
use super::{Edits, HeaderEdits, Op, Redirect, Rewrite, RouteEdits, ServerHeader};
use crate::auth::identity::Projection;
use crate::config::{Config, HeaderEditsConfig, Issues, RouteConfig};

/// Which way a header goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// Why Portcullis keeps `name` to itself in `direction`, if it does. `identity` are the
/// headers routes forward claims in.
fn owned(name: &HeaderName, direction: Direction, identity: &[HeaderName]) -> Option<&'static str> {
    let text = name.as_str();
    let hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
    ];
    if hop.contains(&text) || text.starts_with("proxy-") {
        return Some("a hop-by-hop or framing header, which Portcullis sets or strips");
    }
    if text == "x-request-id" {
        return Some("Portcullis sets `X-Request-Id` itself");
    }
    match direction {
        Direction::Request => {
            if text == "host" {
                return Some("`Host` is set with `rewrite.host`");
            }
            if text.starts_with("x-forwarded-") || text == "forwarded" {
                return Some("Portcullis sets `X-Forwarded-*` itself and removes `Forwarded`");
            }
            if crate::headers::OWNED.contains(&text) {
                return Some("Portcullis sets or strips it");
            }
            if identity.contains(name) {
                return Some("an identity header (a `forward_claims` target)");
            }
        }
        Direction::Response => {
            if text == "server" {
                return Some("`Server` is set with `server_header`");
            }
            if text == "set-cookie" {
                return Some("`Set-Cookie` carries Portcullis's session cookies");
            }
        }
    }
    None
}

/// Compile one `request_headers` or `response_headers` section at `path` into `ops`.
fn header_ops(
    section: Option<&HeaderEditsConfig>,
    path: &str,
    direction: Direction,
    identity: &[HeaderName],
    projection: &Projection,
    issues: &mut Issues<'_>,
    ops: &mut Vec<Op>,
) {
    let Some(section) = section else { return };
    let name = |raw: &str, at: &str, issues: &mut Issues<'_>| match HeaderName::from_bytes(
        raw.trim().as_bytes(),
    ) {
        Ok(name) => match owned(&name, direction, identity) {
            Some(why) => {
                issues.push(at, format!("`{raw}` cannot be changed here: {why}"));
                None
            }
            None => Some(name),
        },
        Err(_) => {
            issues.push(at, format!("`{raw}` is not a header name"));
            None
        }
    };
    for (i, raw) in section.remove.iter().enumerate() {
        if let Some(n) = name(raw, &format!("{path}.remove[{i}]"), issues) {
            ops.push(Op::Remove(n));
        }
    }
    let slot = |claim: &str| projection.slot(claim);
    for (set, list) in [(true, &section.set), (false, &section.add)] {
        let field = if set { "set" } else { "add" };
        for (raw, value) in list {
            let at = format!("{path}.{field}.{raw}");
            let Some(n) = name(raw, &at, issues) else {
                continue;
            };
            match Template::compile(value, &slot) {
                Ok(t) if set => ops.push(Op::Set(n, t)),
                Ok(t) => ops.push(Op::Add(n, t)),
                Err(e) => issues.push(at, e),
            }
        }
    }
}

/// The top-level part, and the top-level header edits every route starts from.
pub struct Top {
    /// `server_header` and the https redirects.
    pub edits: Edits,
    request: Vec<Op>,
    response: Vec<Op>,
}

/// Compile the top-level fields: `request_headers`, `response_headers`, `server_header`,
/// and each listener's `redirect_to_https`.
pub fn top(
    config: &Config,
    identity: &[HeaderName],
    projection: &Projection,
    issues: &mut Issues<'_>,
) -> Top {
    let (mut request, mut response) = (Vec::new(), Vec::new());
    let sections = [
        (
            config.request_headers.as_ref(),
            "request_headers",
            Direction::Request,
            &mut request,
        ),
        (
            config.response_headers.as_ref(),
            "response_headers",
            Direction::Response,
            &mut response,
        ),
    ];
    for (section, path, direction, ops) in sections {
        header_ops(section, path, direction, identity, projection, issues, ops);
    }
    let server = match config.server_header.as_deref() {
        None => ServerHeader::Remove,
        Some("upstream") => ServerHeader::Upstream,
        Some(text) => match HeaderValue::from_str(text) {
            Ok(value) if !text.trim().is_empty() => ServerHeader::Set(value),
            _ => {
                issues.push(
                    "server_header",
                    format!(
                        "`{}` is not a header value; leave it out to remove `Server`",
                        text.escape_debug()
                    ),
                );
                ServerHeader::Remove
            }
        },
    };
    let mut https_listeners = Vec::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if !listener.redirect_to_https {
            continue;
        }
        if listener.tls.is_some() {
            issues.push(
                format!("listeners[{i}].redirect_to_https"),
                "a TLS listener already serves https",
            );
        }
        // A bad address is reported by the listener's own check.
        if let Ok(addr) = listener.address.parse::<SocketAddr>() {
            https_listeners.push(addr);
        }
    }
    let tls: Vec<u16> = config
        .listeners
        .iter()
        .filter(|l| l.tls.is_some())
        .filter_map(|l| l.address.parse::<SocketAddr>().ok().map(|a| a.port()))
        .collect();
    let https_port = match tls.as_slice() {
        [port] if *port != 443 => Some(*port),
        _ => None,
    };
    Top {
        edits: Edits {
            server,
            https_listeners,
            https_port,
        },
        request,
        response,
    }
}

/// Whether route `rc` (at `path`) is forwarded upstream: it names an `upstream`, or has a
/// `redirect` and then must not. `false` for a redirect route, and for a route with a
/// mistake reported here.
pub fn forwarded(rc: &RouteConfig, path: &str, issues: &mut Issues<'_>) -> bool {
    match (rc.upstream.is_empty(), rc.redirect.is_some()) {
        (false, false) => true,
        (true, true) => false,
        (true, false) => {
            issues.push(
                format!("{path}.upstream"),
                "a route needs an `upstream` (or a `redirect`, which needs none)",
            );
            false
        }
        (false, true) => {
            issues.push(
                format!("{path}.upstream"),
                "a `redirect` route sends nothing upstream: leave `upstream` out",
            );
            false
        }
    }
}

/// The pool of a redirect route: no target, never used (the redirect is answered before a
/// target is picked), so that every route has a pool.
pub fn no_pool() -> Result<crate::upstream::Pool, String> {
    use crate::upstream::{forwarding, outlier, HashOn, Pool, PoolSettings};
    let settings = PoolSettings {
        balance: crate::config::Balance::default(),
        hash_on: HashOn::ClientIp,
        forwarding: forwarding::Forwarding {
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            timeout: None,
            retry: forwarding::DEFAULT_RETRY,
        },
        outlier: outlier::DEFAULT_OUTLIER,
        dns_refresh: std::time::Duration::from_secs(60),
        protocol: crate::config::Protocol::default(),
    };
    Pool::new("", Vec::new(), settings, None, None)
}

/// Compile a route's `request_headers`, `response_headers`, `rewrite` and `redirect`
/// (`path` is `routes[i]`, `prefix` its compiled `match.path_prefix`).
pub fn route(
    rc: &RouteConfig,
    path: &str,
    prefix: &str,
    top: &Top,
    identity: &[HeaderName],
    projection: &Projection,
    issues: &mut Issues<'_>,
) -> RouteEdits {
    let mut request = top.request.clone();
    let mut response = top.response.clone();
    let sections = [
        (
            rc.request_headers.as_ref(),
            "request_headers",
            Direction::Request,
            &mut request,
        ),
        (
            rc.response_headers.as_ref(),
            "response_headers",
            Direction::Response,
            &mut response,
        ),
    ];
    for (section, field, direction, ops) in sections {
        let at = format!("{path}.{field}");
        header_ops(section, &at, direction, identity, projection, issues, ops);
    }
    let rewrite = rc.rewrite.as_ref().and_then(|rw| {
        let at = format!("{path}.rewrite");
        let replacement = match (rw.strip_prefix, rw.prefix.as_deref()) {
            (true, Some(_)) => {
                issues.push(at.clone(), "give `strip_prefix` or `prefix`, not both");
                return None;
            }
            (true, None) => Some("".into()),
            (false, Some(new)) => {
                let clean = new.starts_with('/')
                    && !new.contains(['?', '#'])
                    && crate::routing::request_target(new.as_bytes(), &http::Method::GET).is_ok()
                    && crate::routing::match_path(new).is_ok_and(|read| *read == *new);
                if !clean {
                    issues.push(
                        format!("{at}.prefix"),
                        format!(
                            "`{new}` is not a clean path: it must start with `/` and have no \
                             dot segment, `//`, `%`-escape of an unreserved character, `?` or `#`"
                        ),
                    );
                    return None;
                }
                Some(new.into())
            }
            (false, None) => None,
        };
        let host = match rw.host.as_deref() {
            None => None,
            Some(h) if super::https_location(h, "/", "", None).is_some() => {
                HeaderValue::from_str(h).ok()
            }
            Some(h) => {
                issues.push(format!("{at}.host"), format!("`{h}` is not a host name"));
                return None;
            }
        };
        if replacement.is_none() && host.is_none() {
            issues.push(at, "give `strip_prefix`, `prefix` or `host`");
            return None;
        }
        Some(Rewrite::new(prefix, replacement, host))
    });
    let redirect = rc.redirect.as_ref().and_then(|r| {
        let at = format!("{path}.redirect");
        if !matches!(r.status, 301 | 302 | 307 | 308) {
            issues.push(format!("{at}.status"), "must be 301, 302, 307 or 308");
        }
        if matches!(rc.auth, Some(crate::config::AuthConfig::Policy(_))) {
            issues.push(
                format!("{path}.auth"),
                "a redirect is answered before authentication: leave `auth` out",
            );
        }
        if rc.rewrite.is_some() {
            issues.push(
                format!("{path}.rewrite"),
                "a redirect route sends nothing upstream to rewrite",
            );
        }
        let to = r.to.as_str();
        let absolute = ["http://", "https://"].iter().any(|scheme| {
            to.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && to.len() > scheme.len()
                && !to[scheme.len()..].starts_with(['/', '{', '?', '#'])
        });
        let relative = to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\");
        if !(absolute || relative) {
            issues.push(
                format!("{at}.to"),
                format!("`{to}` is neither an `http(s)://` URL with a host nor a path starting with one `/`"),
            );
            return None;
        }
        let pieces = match pieces(to) {
            Ok(p) => p,
            Err(e) => {
                issues.push(format!("{at}.to"), e);
                return None;
            }
        };
        let literal_ok = pieces.iter().all(|p| match p {
            Piece::Literal(text) => {
                HeaderValue::from_str(text).is_ok() && !text.contains(' ')
            }
            _ => true,
        });
        if !literal_ok {
            issues.push(
                format!("{at}.to"),
                format!("`{to}` holds a space, a control character or non-ASCII"),
            );
            return None;
        }
        Some(Redirect {
            status: r.status,
            pieces: pieces.into(),
        })
    });
    RouteEdits {
        request: HeaderEdits {
            ops: request.into(),
        },
        response: HeaderEdits {
            ops: response.into(),
        },
        rewrite,
        redirect,
    }
}

#[cfg(test)]
mod tests {
    use crate::generation::Generation;

    const ROUTE: &str =
        "upstreams:\n  - name: u\n    targets: [\"127.0.0.1:9\"]\nroutes:\n  - name: r\n    upstream: u\n";

    fn tls_listener(dir: &std::path::Path, port: u16) -> String {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        format!(
            "  - address: \"127.0.0.1:{port}\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n",
            cert.display(),
            key.display()
        )
    }

    /// The https redirect names the one TLS listener's port when it is not 443, and no
    /// port otherwise (none, two, or 443); a TLS listener cannot redirect to https.
    #[test]
    fn https_redirect_port() {
        let dir = tempfile::tempdir().unwrap();
        let plain = "  - { address: \"127.0.0.1:8080\", redirect_to_https: true }\n";
        let port = |tls: &[u16]| {
            let listeners: String = tls.iter().map(|p| tls_listener(dir.path(), *p)).collect();
            let text = format!("listeners:\n{plain}{listeners}{ROUTE}");
            let g = Generation::from_yaml(&text).unwrap();
            assert!(g
                .edits
                .redirects_to_https(Some("127.0.0.1:8080".parse().unwrap())));
            assert!(!g
                .edits
                .redirects_to_https(Some("127.0.0.1:8081".parse().unwrap())));
            g.edits.https_port()
        };
        assert_eq!(port(&[]), None);
        assert_eq!(port(&[8443]), Some(8443));
        assert_eq!(port(&[443]), None);
        assert_eq!(port(&[8443, 9443]), None);
        let text = format!(
            "listeners:\n{}    redirect_to_https: true\n{ROUTE}",
            tls_listener(dir.path(), 8443)
        );
        let err = Generation::from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.contains("listeners[0].redirect_to_https: a TLS listener already serves https"),
            "{err}"
        );
    }
}
