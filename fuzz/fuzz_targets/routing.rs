//! Path normalisation and route lookup.
//!
//! The input is text, one item a line: `route HOST PREFIX [METHOD,...]` adds a route (`-`
//! for any host, `*.suffix` for a wildcard), any other line is a request `METHOD HOST PATH`.
//! Each request's host goes through `host_key`, its target through `request_target` and its
//! path through `match_path` and `RouteTable::route`, as the proxy does, and the table's
//! answer is compared with a plain scan of the routes.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use portcullis::routing::{
    host_key, match_path, request_target, BadPath, Methods, RouteMatch, RouteTable,
};

/// The route a brute-force scan picks: an exact host first, then the longest wildcard
/// suffix, then any host; within each, the longest prefix allowing the method.
fn scan(routes: &[RouteMatch], host: &str, path: &str, method: &http::Method) -> Option<usize> {
    let longest = |pick: &dyn Fn(&RouteMatch) -> Option<usize>| {
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path_prefix) && r.methods.allows(method))
            .filter_map(|(i, r)| pick(r).map(|rank| ((rank, r.path_prefix.len()), i)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, i)| i)
    };
    if !host.is_empty() {
        if let Some(r) = longest(&|r| {
            let exact = r.host.as_deref().filter(|h| !h.starts_with("*."));
            (exact == Some(host)).then_some(0)
        }) {
            return Some(r);
        }
        let wildcard = |r: &RouteMatch| {
            let suffix = r.host.as_deref()?.strip_prefix("*.")?;
            let at = host.len().checked_sub(suffix.len() + 1)?;
            (host.ends_with(suffix) && host.as_bytes()[at] == b'.').then_some(suffix.len())
        };
        if let Some(r) = longest(&wildcard) {
            return Some(r);
        }
    }
    longest(&|r| r.host.is_none().then_some(0))
}

/// A plain re-statement of `match_path`'s rules.
fn normalise(path: &str) -> Result<String, BadPath> {
    if !path.starts_with('/') {
        return if path == "*" {
            Ok(path.into())
        } else {
            Err(BadPath::NotAbsolute)
        };
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |at: usize| b.get(at).and_then(|&c| (c as char).to_digit(16));
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                let c = (h * 16 + l) as u8;
                if c == b'/' || c == b'\\' {
                    return Err(BadPath::EncodedSeparator);
                }
                if c < 0x20 || c == 0x7f {
                    return Err(BadPath::EncodedControl);
                }
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8(decoded).expect("only ASCII was decoded");
    for segment in decoded.split('/') {
        let dots = segment.replace("%2e", ".").replace("%2E", ".");
        if dots == "." || dots == ".." {
            return Err(BadPath::DotSegment);
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut routes = Vec::new();
    let mut requests = Vec::new();
    for line in text.lines().take(64) {
        let mut words = line.split(' ');
        if line.starts_with("route ") {
            words.next();
            let (Some(host), Some(prefix)) = (words.next(), words.next()) else {
                continue;
            };
            let methods: Vec<&str> = words
                .next()
                .map(|m| m.split(',').collect())
                .unwrap_or_default();
            let Ok(methods) = Methods::parse(&methods) else {
                continue;
            };
            routes.push(RouteMatch {
                host: (host != "-").then(|| host.to_ascii_lowercase()),
                path_prefix: prefix.to_string(),
                methods,
                conditions: Default::default(),
            });
        } else if let (Some(method), Some(host), Some(path)) =
            (words.next(), words.next(), words.next())
        {
            requests.push((method, host, path));
        }
    }

    let table = RouteTable::build(&routes);
    for (method, raw_host, raw_target) in requests {
        let host = host_key(raw_host);
        assert!(
            !host.bytes().any(|b| b.is_ascii_uppercase()),
            "host key {host:?} not lowercase"
        );
        if let Cow::Borrowed(h) = &host {
            assert!(raw_host.starts_with(h), "borrowed host key is not a prefix");
        }

        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        // As the proxy does: the raw target is checked byte by byte, then its path routed.
        let target = request_target(raw_target.as_bytes(), &method);
        let legal = raw_target
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
        let Ok(target) = target else {
            continue;
        };
        assert!(legal, "request_target took {raw_target:?}");
        let raw_path = target.path;

        let path = match_path(raw_path);
        assert_eq!(
            path.as_deref().map_err(|e| *e),
            normalise(raw_path).as_deref().map_err(|e| *e),
            "match_path({raw_path:?})"
        );
        let Ok(path) = path else { continue };
        assert!(path == "*" || (path.starts_with('/') && !path.contains("//")));

        if let Ok(table) = &table {
            let found = table.lookup(&host, &path, &method);
            assert_eq!(
                found,
                scan(&routes, &host, &path, &method),
                "lookup of {method} {host} {path}"
            );
            // Routing the path as sent gives the lookup's answer, or refuses it.
            if let Ok(routed) = table.route(&host, raw_path, &method) {
                assert_eq!(routed, found, "route of {method} {host} {raw_path}");
            }
        }
    }
});
