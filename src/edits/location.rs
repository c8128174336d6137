//! Building what a request is sent to: a redirect's `Location` and a rewritten path. The
//! request's parts come in already checked by the routing rules (only RFC 3986 bytes, no dot
//! segment); what is put together here is checked again before it is used.

use http::HeaderValue;

use super::{Redirect, Rewrite};
use crate::routing;

/// A piece of a compiled `redirect.to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Literal(Box<str>),
    /// The request path, in the form routing reads it (runs of `/` merged, so it never
    /// starts with `//`, which a browser would take for another host).
    Path,
    /// The request's query: `?q` (`&q` after a `?` already written), nothing when empty.
    Query {
        after_mark: bool,
    },
}

/// Split a `redirect.to` into pieces at `{path}` and `{query}`.
pub(super) fn pieces(to: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = to;
    let mut mark = false;
    while let Some(at) = rest.find('{') {
        let literal = &rest[..at];
        mark |= literal.contains('?');
        if !literal.is_empty() {
            out.push(Piece::Literal(literal.into()));
        }
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{path}") {
            out.push(Piece::Path);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{query}") {
            out.push(Piece::Query { after_mark: mark });
            mark = true;
            rest = after;
        } else {
            return Err("only `{path}` and `{query}` may appear in braces".into());
        }
    }
    if rest.contains('}') {
        return Err("only `{path}` and `{query}` may appear in braces".into());
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest.into()));
    }
    Ok(out)
}

impl Redirect {
    /// The `Location` for a request with this `path` (checked, as routing reads it) and
    /// `query` (without `?`; empty when none).
    pub fn location(&self, path: &str, query: &str) -> Option<HeaderValue> {
        let mut out = String::with_capacity(64 + path.len() + query.len());
        for piece in &*self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Path if path.starts_with('/') => out.push_str(path),
                Piece::Path => out.push('/'),
                Piece::Query { .. } if query.is_empty() => {}
                Piece::Query { after_mark } => {
                    out.push(if *after_mark { '&' } else { '?' });
                    out.push_str(query);
                }
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// `https://host[:port]{path}{?query}` for a request that came with `host` (its `Host` or
/// the authority of its target) and the target `path` and `query` as the client sent them
/// (already checked by [`routing::request_target`]). `port` replaces the request's.
/// `None` when `host` is not a host name or IP literal: a `Location` is never built from
/// whatever a client put in `Host`.
pub fn https_location(
    host: &str,
    path: &str,
    query: &str,
    port: Option<u16>,
) -> Option<HeaderValue> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let literal = &host[1..end];
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        &host[..=end]
    } else {
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return None;
        }
        name
    };
    let mut out = String::with_capacity(16 + host.len() + path.len() + query.len());
    out.push_str("https://");
    out.push_str(name);
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(if path.starts_with('/') { path } else { "/" });
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    HeaderValue::from_str(&out).ok()
}

/// A rewrite would make a path the routing rules refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRewrite;

/// The path and query to send upstream for a request whose checked `path` (as routing
/// reads it) matched the route of `rewrite`; `None` when the rewrite leaves the path alone.
///
/// # Errors
/// [`BadRewrite`] when the result is not a path the routing rules accept unchanged: a dot
/// segment (`/files..` with `strip_prefix` on `/files` would be `/..`), or one the routing
/// reads differently.
pub fn rewritten_path(
    rewrite: &Rewrite,
    path: &str,
    query: &str,
) -> Result<Option<Box<[u8]>>, BadRewrite> {
    let Some(replacement) = &rewrite.replacement else {
        return Ok(None);
    };
    // `OPTIONS *` names no path to rewrite.
    if path == "*" {
        return Ok(None);
    }
    let rest = path.strip_prefix(&*rewrite.prefix).ok_or(BadRewrite)?;
    let mut out = String::with_capacity(replacement.len() + rest.len() + query.len() + 2);
    out.push_str(replacement);
    match (out.ends_with('/'), rest.strip_prefix('/')) {
        (true, Some(after)) => out.push_str(after),
        _ => {
            if !out.ends_with('/') && !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    match routing::match_path(&out) {
        Ok(read) if *read == *out => {}
        _ => return Err(BadRewrite),
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    Ok(Some(out.into_bytes().into_boxed_slice()))
}

impl Rewrite {
    /// A rewrite of `prefix` (the route's `match.path_prefix`).
    pub(super) fn new(
        prefix: &str,
        replacement: Option<Box<str>>,
        host: Option<HeaderValue>,
    ) -> Rewrite {
        Rewrite {
            prefix: prefix.into(),
            replacement,
            host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(prefix: &str, replacement: &str) -> Rewrite {
        Rewrite::new(prefix, Some(replacement.into()), None)
    }

    fn path(r: &Rewrite, p: &str, q: &str) -> Result<String, BadRewrite> {
        rewritten_path(r, p, q).map(|p| String::from_utf8(p.unwrap().into()).unwrap())
    }

    #[test]
    fn rewrites_keep_the_query_and_one_slash() {
        let strip = rewrite("/api", "");
        assert_eq!(path(&strip, "/api/users", "a=1").unwrap(), "/users?a=1");
        assert_eq!(path(&strip, "/api", "").unwrap(), "/");
        assert_eq!(path(&strip, "/apix", "").unwrap(), "/x");
        let strip_slash = rewrite("/api/", "");
        assert_eq!(path(&strip_slash, "/api/users", "").unwrap(), "/users");
        let new = rewrite("/api", "/v2/");
        assert_eq!(path(&new, "/api/users", "").unwrap(), "/v2/users");
        assert_eq!(path(&new, "/api", "").unwrap(), "/v2/");
        let root = rewrite("/", "/app");
        assert_eq!(path(&root, "/x/y", "q").unwrap(), "/app/x/y?q");
    }

    #[test]
    fn a_rewrite_that_makes_a_dot_segment_is_refused() {
        assert_eq!(
            path(&rewrite("/files", ""), "/files..", ""),
            Err(BadRewrite)
        );
        assert_eq!(
            path(&rewrite("/files", "/new/"), "/files.", ""),
            Err(BadRewrite)
        );
        assert_eq!(path(&rewrite("/files", ""), "/other", ""), Err(BadRewrite));
    }

    #[test]
    fn redirect_locations() {
        let redirect = |to: &str| Redirect {
            status: 302,
            pieces: pieces(to).unwrap().into(),
        };
        let r = redirect("https://new.example{path}{query}");
        assert_eq!(
            r.location("/a/b", "x=1").unwrap(),
            "https://new.example/a/b?x=1"
        );
        assert_eq!(r.location("/a/b", "").unwrap(), "https://new.example/a/b");
        let r = redirect("/landing?from=old{query}");
        assert_eq!(r.location("/x", "q=2").unwrap(), "/landing?from=old&q=2");
        assert_eq!(r.location("/x", "").unwrap(), "/landing?from=old");
        assert!(pieces("/{host}").is_err());
        assert!(pieces("/a}").is_err());
    }

    #[test]
    fn https_locations_check_the_host() {
        let at = |host: &str, port| https_location(host, "/p", "q=1", port);
        assert_eq!(at("app.test:8080", None).unwrap(), "https://app.test/p?q=1");
        assert_eq!(
            at("app.test", Some(8443)).unwrap(),
            "https://app.test:8443/p?q=1"
        );
        assert_eq!(at("[::1]:80", None).unwrap(), "https://[::1]/p?q=1");
        assert!(at("evil.test/x", None).is_none());
        assert!(at("a@evil.test", None).is_none());
        assert!(at("[zz]", None).is_none());
        assert!(at("", None).is_none());
    }
}
