//! The route table: host, longest path prefix, method.
//!
//! Built once per config and then only read. A lookup probes a hash map once per distinct
//! prefix length, so its cost depends on the shape of the prefixes, not on how many routes
//! there are, and it never allocates. It does not know what a route does; it hands back the
//! route's index.
//!
//! It also decides which request targets may be routed at all: bytes RFC 3986 allows, an
//! accepted form, and a path every common backend reading of which lands on the same route
//! (those readings allocate, and are made only for paths holding `%`, `;` or `\`).

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

    /// The names of the methods in the set (none for every method).
    pub fn names(self) -> Vec<&'static str> {
        METHOD_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
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

impl RouteTable {
    /// Check a request path and route it: [`match_path`], then [`RouteTable::lookup`],
    /// and for a path with `%`, `;` or `\` the same lookup for each common backend reading
    /// of it, which must all give the same answer. A clean path costs a scan for those bytes
    /// and nothing else.
    ///
    /// # Errors
    /// [`BadPath`] when the path must not be routed, [`BadPath::Ambiguous`] when a reading
    /// lands on another route (or on one where the path itself lands on none).
    pub fn route(
        &self,
        host: &str,
        path: &str,
        method: &http::Method,
    ) -> Result<Option<usize>, BadPath> {
        let canonical = match_path(path)?;
        let route = self.lookup(host, &canonical, method);
        if path.bytes().any(|b| matches!(b, b'%' | b';' | b'\\')) {
            for reading in readings(path, &canonical)? {
                if self.lookup(host, &reading, method) != route {
                    return Err(BadPath::Ambiguous);
                }
            }
        }
        Ok(route)
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

/// Why a request target is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// Neither origin form (`/...`), nor absolute form with an `http` or `https` scheme and
    /// a host, nor `*` on `OPTIONS`.
    NotAbsolute,
    /// A byte RFC 3986 does not allow in a request target: controls, space, `"` `<` `>` `\`
    /// `^` `` ` `` `{` `|` `}` or anything above ASCII. Backends read them differently
    /// (`\` is `/` to Windows servers and many frameworks), so routing on them is a guess.
    IllegalByte,
    /// A `.` or `..` segment, raw, percent-encoded or left when a backend drops `;`
    /// parameters (`..;`): it could make a path that matched one route mean another path to
    /// the upstream.
    DotSegment,
    /// `%2F` or `%5C`: one segment to the proxy, two to the many servers that decode them
    /// before splitting the path, so the route would not be the one the upstream serves.
    EncodedSeparator,
    /// A percent-encoded control character (`%00`-`%1F`, `%7F`): a C backend ends the path
    /// at `%00`, and none is a path anyone means.
    EncodedControl,
    /// A reading common among backends (decoded once, `;` parameters dropped) lands on
    /// another route than the path does here.
    Ambiguous,
}

/// Bytes a request target may hold as the client sent them (RFC 3986 §2: unreserved,
/// reserved and `%`). `[` and `]` are reserved for IPv6 hosts but stay allowed: clients send
/// them raw in queries (`a[]=1`), and no server reads them as a separator.
static TARGET_BYTE: [bool; 256] = target_bytes();

const fn target_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = true;
        b += 1;
    }
    let illegal = b"\"<>\\^`{|}";
    let mut i = 0;
    while i < illegal.len() {
        table[illegal[i] as usize] = false;
        i += 1;
    }
    table
}

/// A request target, checked and split for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target (`http://app.test:8080/x` gives
    /// `app.test:8080`); `None` for origin form.
    pub authority: Option<&'a str>,
    /// The path, without the query: `/`-rooted, or `*` for `OPTIONS *`.
    pub path: &'a str,
    /// The query, without the `?`; empty when there is none.
    pub query: &'a str,
}

/// Check a request target as the client sent it (path and query; Pingora's
/// `RequestHeader::raw_path`) and split off the path to route on.
///
/// Accepted: origin form (`/x?q`), absolute form with an `http` or `https` scheme and a
/// host without user info (RFC 9112 §3.2.2; `http://app.test` is the path `/`), and `*` on
/// `OPTIONS`. Every byte must be one RFC 3986 allows.
///
/// # Errors
/// [`BadPath::IllegalByte`] or [`BadPath::NotAbsolute`].
pub fn request_target<'a>(raw: &'a [u8], method: &http::Method) -> Result<Target<'a>, BadPath> {
    if !raw.iter().all(|&b| TARGET_BYTE[usize::from(b)]) {
        return Err(BadPath::IllegalByte);
    }
    // Only ASCII is left, which is UTF-8.
    let raw = std::str::from_utf8(raw).map_err(|_| BadPath::IllegalByte)?;
    let split = |authority, pq: &'a str| {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        Target {
            authority,
            path: if path.is_empty() { "/" } else { path },
            query,
        }
    };
    if raw.starts_with('/') {
        return Ok(split(None, raw));
    }
    if raw == "*" && method == http::Method::OPTIONS {
        return Ok(split(None, raw));
    }
    let (scheme, rest) = raw.split_once("://").ok_or(BadPath::NotAbsolute)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(BadPath::NotAbsolute);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(BadPath::NotAbsolute);
    }
    Ok(split(Some(authority), path_and_query))
}

/// Check a request path and give the form used for matching, which is how upstream servers
/// read it: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2, so `/%61dmin`
/// is `/admin`) and runs of `/` merged into one. Borrowed when already clean.
///
/// This alone does not make a path safe to route: [`RouteTable::route`] also checks that
/// the other common readings of a path with `%` or `;` land on the same route.
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
    Ok(std::borrow::Cow::Owned(merge_slashes(&path)))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte `%XX` at `i` stands for, if it is a well-formed escape.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(b'%'), Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
        _ => None,
    }
}

/// Decode `%XX` where it stands for an unreserved character; keep every other escape as
/// written; refuse encoded path separators and controls.
fn decode_unreserved(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(b'/' | b'\\') => return Err(BadPath::EncodedSeparator),
            Some(c) if c < 0x20 || c == 0x7f => return Err(BadPath::EncodedControl),
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

/// Every well-formed `%XX` decoded, once, as a server that decodes the path before using
/// it does. Bytes that are not UTF-8 afterwards become U+FFFD: such a path matches no
/// prefix that the original did not.
pub(crate) fn decode_once(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(c) => {
                out.push(c);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each segment without its `;` parameters, as Tomcat, Jetty and Spring read it:
/// `/a;x=1/..;/b` is `/a/../b`.
fn drop_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    out
}

/// The other ways common backends read a path that holds `%` or `;`, beside the
/// canonical form [`match_path`] gives: decoded once, `;` parameters dropped before or
/// after decoding, and, for a decoding server that splits the query off afterwards, cut at
/// a decoded `?` or `#`. Each with `\` read as `/` and runs of `/` merged.
///
/// # Errors
/// [`BadPath::DotSegment`] when a reading has a `.` or `..` segment: the backend would
/// resolve it, and a path that means a different path there is not routed.
fn readings(path: &str, canonical: &str) -> Result<Vec<String>, BadPath> {
    let decoded = decode_once(path);
    let mut decoded = vec![
        drop_params(&decoded),
        decode_once(&drop_params(path)),
        decoded,
    ];
    let cut: Vec<String> = decoded
        .iter()
        .filter_map(|r| r.find(['?', '#']).map(|at| r[..at].to_string()))
        .collect();
    decoded.extend(cut);
    decoded.push(drop_params(canonical));
    decoded
        .into_iter()
        .map(|reading| {
            let reading = if reading.contains('\\') {
                reading.replace('\\', "/")
            } else {
                reading
            };
            if reading.split('/').any(|s| s == "." || s == "..") {
                return Err(BadPath::DotSegment);
            }
            Ok(merge_slashes(&reading))
        })
        .collect()
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

/// Compile a route's `match:`: host (exact or `*.domain`), path prefix and methods.
pub fn compile_match(
    rc: &crate::config::RouteConfig,
    path: &str,
    issues: &mut crate::config::Issues<'_>,
) -> Option<RouteMatch> {
    let mut ok = true;
    let host = match rc.matcher.host.as_deref() {
        None => None,
        Some(h) => {
            let lower = h.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && !bare.contains(':')
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                issues.push(
                    format!("{path}.match.host"),
                    format!("`{h}` is not a host name or `*.domain` pattern"),
                );
                ok = false;
            }
            Some(lower)
        }
    };
    let prefix = rc.matcher.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/') {
        issues.push(format!("{path}.match.path_prefix"), "must start with `/`");
        ok = false;
    }
    let methods = match rc.matcher.methods.as_deref() {
        None => Methods::ANY,
        Some([]) => {
            issues.push(
                format!("{path}.match.methods"),
                "leave it out to allow every method",
            );
            ok = false;
            Methods::ANY
        }
        Some(list) => Methods::parse(list).unwrap_or_else(|e| {
            issues.push(format!("{path}.match.methods"), e);
            ok = false;
            Methods::ANY
        }),
    };
    ok.then_some(RouteMatch {
        host,
        path_prefix: prefix,
        methods,
    })
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
        assert_eq!(match_path("/a%00b"), Err(BadPath::EncodedControl));
        assert_eq!(match_path("/a%7Fb"), Err(BadPath::EncodedControl));
        assert_eq!(match_path("/a%0ab"), Err(BadPath::EncodedControl));
        assert_eq!(match_path("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn request_targets() {
        let get = &Method::GET;
        fn t(raw: &str) -> Result<Target<'_>, BadPath> {
            request_target(raw.as_bytes(), &Method::GET)
        }
        assert_eq!(
            t("/a/b?x=1&y=%20"),
            Ok(Target {
                authority: None,
                path: "/a/b",
                query: "x=1&y=%20"
            })
        );
        assert_eq!(t("/a?b[]=1").map(|t| t.path), Ok("/a"));
        assert_eq!(t("/a;x=1/b").map(|t| t.path), Ok("/a;x=1/b"));
        for bad in [
            &b"/public\\..\\private"[..],
            b"/public/..\\private",
            b"/a?q=\\",
            b"/a b",
            b"/a\tb",
            b"/a\x00",
            b"/a\x7f",
            b"/a\"b",
            b"/a<b",
            b"/a>b",
            b"/a{b",
            b"/a}b",
            b"/a|b",
            b"/a^b",
            b"/a`b",
            b"/caf\xc3\xa9",
            b"/a\xff",
            b"/?q=<script>",
        ] {
            assert_eq!(
                request_target(bad, get),
                Err(BadPath::IllegalByte),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            t("http://App.test:8080/x/y?q=1"),
            Ok(Target {
                authority: Some("App.test:8080"),
                path: "/x/y",
                query: "q=1"
            })
        );
        assert_eq!(
            t("HTTPS://app.test?q"),
            Ok(Target {
                authority: Some("app.test"),
                path: "/",
                query: "q"
            })
        );
        assert_eq!(t("http://app.test").map(|t| t.path), Ok("/"));
        for bad in [
            "ftp://app.test/x",
            "ws://app.test/x",
            "http:///x",
            "http://user@app.test/x",
            "http:app.test/x",
            "app.test:80",
            "*",
            "x",
            "",
        ] {
            assert_eq!(t(bad), Err(BadPath::NotAbsolute), "{bad}");
        }
        assert_eq!(
            request_target(b"*", &Method::OPTIONS).map(|t| t.path),
            Ok("*")
        );
    }

    fn guarded() -> RouteTable {
        RouteTable::build(&[
            m(None, "/", &[]),
            m(None, "/admin", &[]),
            m(None, "/public", &[]),
            m(None, "/private", &[]),
            m(None, "/a:b", &[]),
        ])
        .unwrap()
    }

    #[test]
    fn readings_that_land_elsewhere_are_refused() {
        let t = guarded();
        let route = |p: &str| t.route("", p, &Method::GET);
        // Tomcat and Jetty drop `;x`, and then resolve the `..` they leave.
        assert_eq!(route("/;x/admin"), Err(BadPath::Ambiguous));
        assert_eq!(route("/public/..;/private"), Err(BadPath::DotSegment));
        assert_eq!(route("/public/.;x/private"), Err(BadPath::DotSegment));
        assert_eq!(route("/public/%2e%2e;/private"), Err(BadPath::DotSegment));
        // Decoded once: `%3B` is a `;`, `%3F` ends the path, `%3A` is `:`.
        assert_eq!(route("/%3Bx/admin"), Err(BadPath::Ambiguous));
        assert_eq!(route("/admin%3F/../x"), Err(BadPath::DotSegment));
        assert_eq!(route("/adm%3Fin"), Ok(Some(0)));
        assert_eq!(route("/a%3Ab"), Err(BadPath::Ambiguous));
        // Readings that stay on the route pass.
        assert_eq!(route("/admin;jsessionid=1/x"), Ok(Some(1)));
        assert_eq!(route("/public/a%20b;v=2?x"), Ok(Some(2)));
        assert_eq!(route("/public/%252e%252e/private"), Ok(Some(2)));
        assert_eq!(route("/%61dmin"), Ok(Some(1)));
        assert_eq!(route("/x;y/z"), Ok(Some(0)));
        assert_eq!(route("/private/a%3Bb"), Ok(Some(3)));
    }

    /// How backends read a path, written apart from the code under test: decoded (only
    /// unreserved characters, which RFC 3986 makes the same path, or every escape, once),
    /// `;` parameters dropped before or after decoding or not at all, `\` as `/` or not, the
    /// path cut at a decoded `?` or `#` or not; then dot segments resolved and runs of `/`
    /// merged (RFC 3986 §5.2.4).
    mod backend {
        fn decode(path: &str, all: bool) -> String {
            let b = path.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                let byte = (b[i] == b'%' && i + 2 < b.len())
                    .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
                    .flatten()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|&c| all || c.is_ascii_alphanumeric() || b"-._~".contains(&c));
                match byte {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        fn drop_params(path: &str) -> String {
            let segments: Vec<&str> = path
                .split('/')
                .map(|s| s.find(';').map_or(s, |at| &s[..at]))
                .collect();
            segments.join("/")
        }

        fn resolve(path: &str) -> String {
            let mut stack: Vec<&str> = Vec::new();
            let segments: Vec<&str> = path.split('/').collect();
            for s in &segments {
                match *s {
                    "" | "." => {}
                    ".." => {
                        stack.pop();
                    }
                    s => stack.push(s),
                }
            }
            let mut out = format!("/{}", stack.join("/"));
            let last = segments.last().copied().unwrap_or("");
            if !stack.is_empty() && matches!(last, "" | "." | "..") {
                out.push('/');
            }
            out
        }

        pub fn readings(path: &str) -> Vec<String> {
            let mut all = Vec::new();
            for full in [false, true] {
                for params in 0..3 {
                    for backslash in [false, true] {
                        for cut in [false, true] {
                            let mut p = path.to_string();
                            if params == 1 {
                                p = drop_params(&p);
                            }
                            p = decode(&p, full);
                            if params == 2 {
                                p = drop_params(&p);
                            }
                            if backslash {
                                p = p.replace('\\', "/");
                            }
                            if let (true, Some(at)) = (cut, p.find(['?', '#'])) {
                                p.truncate(at);
                            }
                            all.push(resolve(&p));
                        }
                    }
                }
            }
            all.sort();
            all.dedup();
            all
        }
    }

    /// Paths built from the pieces that make readings differ, with mutations on top.
    fn tricky_path(rng: &mut fastrand::Rng) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "admin",
            "Admin",
            "ADMIN",
            "private",
            "public",
            "open",
            "a:b",
            "a",
            "x",
            "",
            ".",
            "..",
            "%2e",
            "%2E",
            ".%2e",
            "%2e%2E",
            "%252e",
            "%252e%252e",
            ";",
            ";x",
            "..;",
            ".;v=1",
            "a;b=c",
            "%3B",
            "%3bx",
            "%3B..",
            "ad%6Din",
            "%61dmin",
            "%2561dmin",
            "%25",
            "%",
            "%2",
            "%zz",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "%3F",
            "%3f",
            "%23",
            "%20",
            "%3A",
            "pri%76ate",
            "priv%2561te",
            "\\",
            "..\\",
            "\\..",
            "%00",
            "\u{e9}",
            "%C3%A9",
            "adm;in",
            "admin;",
            "%3Badmin",
            "publ%69c",
        ];
        const SEPARATORS: &[&str] = &["/", "/", "/", "//", "\\", "/;p/", "%2F", "/./", "/../"];
        let mut path = String::from("/");
        for i in 0..rng.usize(1..5) {
            if i > 0 {
                path.push_str(SEPARATORS[rng.usize(..SEPARATORS.len())]);
            }
            path.push_str(WORDS[rng.usize(..WORDS.len())]);
        }
        if rng.bool() && path.len() > 1 {
            // Percent-encode one character, in upper or lower case hex.
            let at = rng.usize(1..path.len());
            let c = path.get(at..).and_then(|rest| rest.chars().next());
            if let Some(c) = c.filter(char::is_ascii) {
                let hex = format!("%{:02X}", c as u8);
                let hex = if rng.bool() { hex.to_lowercase() } else { hex };
                path.replace_range(at..at + 1, &hex);
            }
        }
        if rng.u8(..4) == 0 {
            let at = rng.usize(1..=path.len());
            if path.is_char_boundary(at) {
                path.insert_str(at, [";", "%", "\\", "%2e", "/", ";.."][rng.usize(..6)]);
            }
        }
        if rng.bool() {
            path.push_str(["?q=1", "?a=/../admin", "?x=%2e;y"][rng.usize(..3)]);
        }
        path.into_bytes()
    }

    /// Paths as a property: whatever Portcullis routes, every backend reading of the path
    /// lands on that same route (and so under the same policy); all else is refused.
    #[test]
    fn every_routed_path_means_the_same_route_to_backends() {
        let routes = [
            (m(None, "/", &[]), "open"),
            (m(None, "/admin", &[]), "protected"),
            (m(None, "/public", &[]), "open"),
            (m(None, "/public/admin", &[]), "protected"),
            (m(None, "/private", &[]), "protected"),
            (m(None, "/a:b", &[]), "protected"),
            (m(None, "/x/open", &[]), "open"),
        ];
        let table = RouteTable::build(routes.iter().map(|(r, _)| r)).unwrap();
        let policy = |r: Option<usize>| r.map_or("none", |i| routes[i].1);
        let mut rng = fastrand::Rng::with_seed(13);
        let (mut routed, mut refused) = (0, 0);
        let quoted = [
            &b"/public\\..\\private"[..],
            b"/public/..\\private",
            b"/public/..;/private",
            b"/;x/admin",
        ];
        let cases: Vec<Vec<u8>> = quoted
            .iter()
            .map(|q| q.to_vec())
            .chain((0..4000).map(|_| tricky_path(&mut rng)))
            .collect();
        for raw in &cases {
            let shown = String::from_utf8_lossy(raw);
            let Ok(target) = request_target(raw, &Method::GET) else {
                refused += 1;
                continue;
            };
            let Ok(route) = table.route("", target.path, &Method::GET) else {
                refused += 1;
                continue;
            };
            routed += 1;
            for reading in backend::readings(target.path) {
                let theirs = table.lookup("", &reading, &Method::GET);
                assert_eq!(
                    theirs,
                    route,
                    "{shown} is routed to {route:?} ({}) but a backend reads {reading} \
                     ({theirs:?}, {})",
                    policy(route),
                    policy(theirs)
                );
            }
        }
        for quoted in quoted {
            assert!(
                request_target(quoted, &Method::GET)
                    .and_then(|t| table.route("", t.path, &Method::GET))
                    .is_err(),
                "{}",
                String::from_utf8_lossy(quoted)
            );
        }
        // Both sides are exercised: a rule that refused everything would pass above.
        assert!(routed > cases.len() / 5, "{routed} routed");
        assert!(refused > cases.len() / 5, "{refused} refused");

        // Clean paths always pass, to the route their bytes match.
        for _ in 0..1000 {
            let mut path = String::new();
            for _ in 0..rng.usize(1..5) {
                path.push('/');
                let words = [
                    "admin", "public", "private", "x", "open", "a:b", "v1", "Z-9_~",
                ];
                path.push_str(words[rng.usize(..words.len())]);
            }
            let route = table.route("", &path, &Method::GET);
            assert_eq!(route, Ok(table.lookup("", &path, &Method::GET)), "{path}");
        }
    }
}
