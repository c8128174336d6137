//! The route table: host, longest path prefix, method.
//!
//! Built once per config and then only read. A lookup probes a hash map once per distinct
//! prefix length, so its cost depends on the shape of the prefixes, not on how many routes
//! there are, and it never allocates. It does not know what a route does; it hands back the
//! route's index.

use std::collections::HashMap;

/// A set of HTTP methods as a bit mask; an empty mask means every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods(u16);

const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

impl Methods {
    /// Every method.
    pub const ANY: Methods = Methods(0);

    /// Parse method names (case-insensitive).
    ///
    /// # Errors
    /// The first name that is not a standard method.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Methods, String> {
        let mut mask = 0u16;
        for name in names {
            let name = name.as_ref();
            let bit = METHOD_NAMES
                .iter()
                .position(|m| m.eq_ignore_ascii_case(name))
                .ok_or_else(|| format!("unknown method `{name}`"))?;
            mask |= 1 << bit;
        }
        Ok(Methods(mask))
    }

    /// Whether `method` is in the set.
    pub fn allows(self, method: &http::Method) -> bool {
        if self.0 == 0 {
            return true;
        }
        let bit = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::POST => 2,
            http::Method::PUT => 3,
            http::Method::DELETE => 4,
            http::Method::PATCH => 5,
            http::Method::OPTIONS => 6,
            http::Method::TRACE => 7,
            http::Method::CONNECT => 8,
            _ => return false,
        };
        self.0 & (1 << bit) != 0
    }

    fn overlaps(self, other: Methods) -> bool {
        self.0 == 0 || other.0 == 0 || self.0 & other.0 != 0
    }
}

/// Longest-prefix lookup over paths: prefixes in a hash map, probed from the longest length
/// that fits the path down to the shortest. A lookup costs one probe per distinct prefix
/// length (a handful in real configs, one when all prefixes have the same shape), not one
/// per route and not one pointer chase per byte, so 10,000 routes cost what 1 does.
#[derive(Default)]
struct PathTable {
    by_prefix: HashMap<Box<str>, Vec<(Methods, usize)>, ahash::RandomState>,
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
}

impl PathTable {
    fn insert(&mut self, prefix: &str, methods: Methods, route: usize) -> Result<(), usize> {
        let entries = self.by_prefix.entry(prefix.into()).or_default();
        if let Some(&(_, other)) = entries.iter().find(|(m, _)| m.overlaps(methods)) {
            return Err(other);
        }
        entries.push((methods, route));
        if let Err(at) = self.lengths.binary_search_by(|l| prefix.len().cmp(l)) {
            self.lengths.insert(at, prefix.len());
        }
        Ok(())
    }

    fn lookup(&self, path: &str, method: &http::Method) -> Option<usize> {
        for &len in &self.lengths {
            // `None` past the end, or inside a UTF-8 sequence, which no prefix ends in.
            let Some(candidate) = path.get(..len) else {
                continue;
            };
            if let Some(entries) = self.by_prefix.get(candidate) {
                if let Some(&(_, r)) = entries.iter().find(|(m, _)| m.allows(method)) {
                    return Some(r);
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
    /// `(i, j)`: route `i` takes exactly the requests route `j` already takes.
    pub fn build<'a>(
        matches: impl IntoIterator<Item = &'a RouteMatch>,
    ) -> Result<RouteTable, Vec<(usize, usize)>> {
        let mut table = RouteTable::default();
        let mut clashes = Vec::new();
        for (i, m) in matches.into_iter().enumerate() {
            let trie = match m.host.as_deref() {
                None => &mut table.any_host,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.into()).or_default(),
                    None => table.exact.entry(h.into()).or_default(),
                },
            };
            if let Err(j) = trie.insert(&m.path_prefix, m.methods, i) {
                clashes.push((i, j));
            }
        }
        if clashes.is_empty() {
            Ok(table)
        } else {
            Err(clashes)
        }
    }

    /// The route for a request. `host` must be lowercase and without a port.
    ///
    /// An exact host is tried first, then the longest wildcard suffix, then routes with no
    /// host; within each, the longest prefix that allows the method wins.
    pub fn lookup(&self, host: &str, path: &str, method: &http::Method) -> Option<usize> {
        if !host.is_empty() {
            if let Some(trie) = self.exact.get(host) {
                if let Some(r) = trie.lookup(path, method) {
                    return Some(r);
                }
            }
            if !self.wildcard.is_empty() {
                // `*.example.com` takes `a.example.com` and `a.b.example.com`; the longest
                // suffix wins.
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    rest = &rest[dot + 1..];
                    if let Some(trie) = self.wildcard.get(rest) {
                        if let Some(r) = trie.lookup(path, method) {
                            return Some(r);
                        }
                    }
                }
            }
        }
        self.any_host.lookup(path, method)
    }
}

/// Normalise a `Host` value for lookup: no port, lowercase. Borrowed when already clean.
pub fn host_key(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Why a request path is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// Not starting with `/` (origin form).
    NotAbsolute,
    /// A `.` or `..` segment, raw or percent-encoded: it could make a path that matched one
    /// route mean another path to the upstream.
    DotSegment,
    /// `%2F` or `%5C`: one segment to the proxy, two to the many servers that decode them
    /// before splitting the path, so the route would not be the one the upstream serves.
    EncodedSeparator,
}

/// Check a request path and give the form used for matching, which is how upstream servers
/// read it: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2, so `/%61dmin`
/// is `/admin`) and runs of `/` merged into one. Borrowed when already clean.
///
/// # Errors
/// [`BadPath`] for paths that must not be routed.
pub fn match_path(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return if path == "*" {
            Ok(std::borrow::Cow::Borrowed(path))
        } else {
            Err(BadPath::NotAbsolute)
        };
    }
    let path = if path.contains('%') {
        decode_unreserved(path)?
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    for segment in path.split('/') {
        if is_dot_segment(segment) {
            return Err(BadPath::DotSegment);
        }
    }
    if !path.contains("//") {
        return Ok(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Decode `%XX` where it stands for an unreserved character; keep every other escape as
/// written; refuse encoded path separators.
fn decode_unreserved(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(b'/' | b'\\') => return Err(BadPath::EncodedSeparator),
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(c));
                changed = true;
                i += 3;
            }
            _ => {
                // Not an escape of an unreserved character: copy up to the next `%`.
                // Searched in bytes: `i + 1` may fall inside a multi-byte character.
                let next = bytes[i + 1..]
                    .iter()
                    .position(|&b| b == b'%')
                    .map_or(bytes.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(path)
    })
}

fn is_dot_segment(segment: &str) -> bool {
    // `.`, `..`, and their percent-encoded spellings (`%2e`, `.%2E`, ...).
    let mut dots = 0;
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            i += 1;
        } else if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1] == b'2'
            && (bytes[i + 2] == b'e' || bytes[i + 2] == b'E')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn m(host: Option<&str>, prefix: &str, methods: &[&str]) -> RouteMatch {
        RouteMatch {
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            methods: Methods::parse(methods).unwrap(),
        }
    }

    #[test]
    fn longest_prefix_then_method_then_host_precedence() {
        let routes = [
            m(None, "/", &[]),
            m(None, "/v1/orders", &["GET", "POST"]),
            m(None, "/v1", &[]),
            m(Some("api.example.com"), "/docs", &[]),
            m(Some("*.example.com"), "/docs", &[]),
            m(Some("*.b.example.com"), "/docs", &[]),
        ];
        let t = RouteTable::build(&routes).unwrap();
        assert_eq!(t.lookup("", "/v1/orders/7", &Method::GET), Some(1));
        assert_eq!(t.lookup("", "/v1/orders/7", &Method::DELETE), Some(2));
        assert_eq!(t.lookup("", "/other", &Method::GET), Some(0));
        assert_eq!(
            t.lookup("api.example.com", "/docs/x", &Method::GET),
            Some(3)
        );
        assert_eq!(
            t.lookup("www.example.com", "/docs/x", &Method::GET),
            Some(4)
        );
        assert_eq!(t.lookup("a.b.example.com", "/docs", &Method::GET), Some(5));
        assert_eq!(t.lookup("example.com", "/docs", &Method::GET), Some(0));
        // A host whose routes do not take the path falls through to host-less routes.
        assert_eq!(t.lookup("api.example.com", "/v1", &Method::GET), Some(2));
    }

    #[test]
    fn many_lengths_and_multibyte_prefixes() {
        let routes: Vec<RouteMatch> = (0..500)
            .map(|i| m(None, &format!("/svc{i}/items"), &[]))
            .chain([m(None, "/caf\u{e9}", &[]), m(None, "/", &["GET"])])
            .collect();
        let t = RouteTable::build(&routes).unwrap();
        assert_eq!(t.lookup("", "/svc42/items/7", &Method::GET), Some(42));
        assert_eq!(t.lookup("", "/svc499/items", &Method::GET), Some(499));
        assert_eq!(t.lookup("", "/svc4/item", &Method::GET), Some(501));
        assert_eq!(t.lookup("", "/caf\u{e9}/menu", &Method::GET), Some(500));
        // A cut inside the multi-byte character matches nothing at that length.
        assert_eq!(t.lookup("", "/caf\u{e8}", &Method::GET), Some(501));
        assert_eq!(t.lookup("", "/svc42/items", &Method::POST), Some(42));
        assert_eq!(t.lookup("", "/other", &Method::POST), None);
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::build(&[m(None, "/a", &["GET"])]).unwrap();
        assert_eq!(t.lookup("", "/b", &Method::GET), None);
        assert_eq!(t.lookup("", "/a", &Method::POST), None);
        assert_eq!(RouteTable::default().lookup("x", "/", &Method::GET), None);
    }

    #[test]
    fn duplicate_routes_are_reported() {
        let routes = [
            m(None, "/a", &["GET"]),
            m(None, "/a", &["POST"]),
            m(None, "/a", &[]),
        ];
        assert_eq!(RouteTable::build(&routes).err(), Some(vec![(2, 0)]));
    }

    #[test]
    fn host_keys() {
        assert_eq!(host_key("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_key("[::1]:80"), "[::1]");
        assert_eq!(host_key("example.com."), "example.com");
    }

    #[test]
    fn paths() {
        assert_eq!(match_path("/a/b").unwrap(), "/a/b");
        assert_eq!(match_path("//a///b").unwrap(), "/a/b");
        assert_eq!(match_path("/a/../b"), Err(BadPath::DotSegment));
        assert_eq!(match_path("/a/%2e%2E/b"), Err(BadPath::DotSegment));
        assert_eq!(match_path("/a/./b"), Err(BadPath::DotSegment));
        assert_eq!(match_path("/a/.."), Err(BadPath::DotSegment));
        assert_eq!(match_path("/a/...b").unwrap(), "/a/...b");
        assert_eq!(match_path("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(match_path("http://x/"), Err(BadPath::NotAbsolute));
        assert_eq!(match_path("/v1/%6Frders").unwrap(), "/v1/orders");
        assert_eq!(
            match_path("/%41%7e%2D%5f/%20%25x%").unwrap(),
            "/A~-_/%20%25x%"
        );
        assert_eq!(match_path("/a/%252e%252e").unwrap(), "/a/%252e%252e");
        assert_eq!(match_path("/a%2Fb"), Err(BadPath::EncodedSeparator));
        assert_eq!(match_path("/a%5cb"), Err(BadPath::EncodedSeparator));
        assert_eq!(match_path("/%2F%2Fa"), Err(BadPath::EncodedSeparator));
        assert_eq!(match_path("/é%41é/%e9").unwrap(), "/éAé/%e9");
    }
}
