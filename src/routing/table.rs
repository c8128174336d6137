//! The route table: host, longest path prefix, then method and conditions.
//!
//! Built once per config and then only read. A lookup probes a hash map once per distinct
//! prefix length, so its cost depends on the shape of the prefixes, not on how many routes
//! there are, and it never allocates (conditions are checked in place). It does not know what
//! a route does; it hands back the route's index.

use std::collections::HashMap;

use super::conditions::{Conditions, RequestFacts};
use super::target::{match_path, readings, BadPath};
use super::Methods;

/// A route at one prefix.
struct Entry {
    methods: Methods,
    conditions: Conditions,
    route: usize,
}

/// Longest-prefix lookup over paths: prefixes in a hash map, probed from the longest length
/// that fits the path down to the shortest. A lookup costs one probe per distinct prefix
/// length (a handful in real configs, one when all prefixes have the same shape), not one
/// per route and not one pointer chase per byte, so 10,000 routes cost what 1 does.
#[derive(Default)]
struct PathTable {
    /// At each prefix, its routes in the order they are tried: more conditions first, then
    /// config order.
    by_prefix: HashMap<Box<str>, Vec<Entry>, ahash::RandomState>,
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
}

impl PathTable {
    fn insert(&mut self, m: &RouteMatch, route: usize) -> Result<(), usize> {
        let prefix = m.path_prefix.as_str();
        let entries = self.by_prefix.entry(prefix.into()).or_default();
        // Two routes no request can tell apart: overlapping methods, the same conditions.
        if let Some(other) = entries
            .iter()
            .find(|e| e.methods.overlaps(m.methods) && e.conditions == m.conditions)
        {
            return Err(other.route);
        }
        // Routes arrive in config order: after every entry with as many conditions or more.
        let count = m.conditions.count();
        let at = entries
            .iter()
            .position(|e| e.conditions.count() < count)
            .unwrap_or(entries.len());
        entries.insert(
            at,
            Entry {
                methods: m.methods,
                conditions: m.conditions.clone(),
                route,
            },
        );
        if let Err(at) = self.lengths.binary_search_by(|l| prefix.len().cmp(l)) {
            self.lengths.insert(at, prefix.len());
        }
        Ok(())
    }

    fn lookup(
        &self,
        path: &str,
        method: &http::Method,
        request: &RequestFacts<'_>,
    ) -> Option<usize> {
        for &len in &self.lengths {
            // `None` past the end, or inside a UTF-8 sequence, which no prefix ends in.
            let Some(candidate) = path.get(..len) else {
                continue;
            };
            if let Some(entries) = self.by_prefix.get(candidate) {
                if let Some(e) = entries
                    .iter()
                    .find(|e| e.methods.allows(method) && e.conditions.hold(request))
                {
                    return Some(e.route);
                }
            }
        }
        None
    }
}

/// How a route matches requests.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Exact host, `*.suffix`, or `None` for any host. Lowercase.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Methods.
    pub methods: Methods,
    /// Header and query conditions (`match.headers`, `match.query`); empty for none.
    pub conditions: Conditions,
}

/// All routes, compiled for lookup.
#[derive(Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, PathTable, ahash::RandomState>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, PathTable, ahash::RandomState>,
    any_host: PathTable,
}

impl RouteTable {
    /// Build a table; routes are identified by their position in `matches`.
    ///
    /// # Errors
    /// `(i, j)`: route `i` takes exactly the requests route `j` already takes (same host and
    /// prefix, overlapping methods, the same conditions).
    pub fn build<'a>(
        matches: impl IntoIterator<Item = &'a RouteMatch>,
    ) -> Result<RouteTable, Vec<(usize, usize)>> {
        let mut table = RouteTable::default();
        let mut clashes = Vec::new();
        for (i, m) in matches.into_iter().enumerate() {
            let paths = match m.host.as_deref() {
                None => &mut table.any_host,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.into()).or_default(),
                    None => table.exact.entry(h.into()).or_default(),
                },
            };
            if let Err(j) = paths.insert(m, i) {
                clashes.push((i, j));
            }
        }
        if clashes.is_empty() {
            Ok(table)
        } else {
            Err(clashes)
        }
    }

    /// The route for a request known by host, path and method alone (no headers, no query:
    /// routes with conditions never take it). `host` must be lowercase and without a port.
    pub fn lookup(&self, host: &str, path: &str, method: &http::Method) -> Option<usize> {
        self.lookup_request(host, path, method, &RequestFacts::NONE)
    }

    /// The route for a request. `host` must be lowercase and without a port.
    ///
    /// An exact host is tried first, then the longest wildcard suffix, then routes with no
    /// host; within each, the longest prefix with a route that allows the method and whose
    /// conditions hold wins; at one prefix, routes with more conditions are tried first, then
    /// in config order.
    pub fn lookup_request(
        &self,
        host: &str,
        path: &str,
        method: &http::Method,
        request: &RequestFacts<'_>,
    ) -> Option<usize> {
        if !host.is_empty() {
            if let Some(paths) = self.exact.get(host) {
                if let Some(r) = paths.lookup(path, method, request) {
                    return Some(r);
                }
            }
            if !self.wildcard.is_empty() {
                // `*.example.com` takes `a.example.com` and `a.b.example.com`; the longest
                // suffix wins.
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(paths) = self.wildcard.get(rest) {
                        if let Some(r) = paths.lookup(path, method, request) {
                            return Some(r);
                        }
                    }
                }
            }
        }
        self.any_host.lookup(path, method, request)
    }

    /// [`RouteTable::route_request`] for a request without headers or query.
    ///
    /// # Errors
    /// As [`RouteTable::route_request`].
    pub fn route(
        &self,
        host: &str,
        path: &str,
        method: &http::Method,
    ) -> Result<Option<usize>, BadPath> {
        self.route_request(host, path, method, &RequestFacts::NONE)
    }

    /// Check a request path and route it: [`match_path`], then
    /// [`RouteTable::lookup_request`], and for a path with `%`, `;` or `\` the same lookup for
    /// each common backend reading of it, which must all give the same answer. A clean path
    /// costs a scan for those bytes and nothing else.
    ///
    /// # Errors
    /// [`BadPath`] when the path must not be routed, [`BadPath::Ambiguous`] when a reading
    /// lands on another route (or on one where the path itself lands on none).
    pub fn route_request(
        &self,
        host: &str,
        path: &str,
        method: &http::Method,
        request: &RequestFacts<'_>,
    ) -> Result<Option<usize>, BadPath> {
        let canonical = match_path(path)?;
        let route = self.lookup_request(host, &canonical, method, request);
        if path.bytes().any(|b| matches!(b, b'%' | b';' | b'\\')) {
            for reading in readings(path, &canonical)? {
                if self.lookup_request(host, &reading, method, request) != route {
                    return Err(BadPath::Ambiguous);
                }
            }
        }
        Ok(route)
    }
}
