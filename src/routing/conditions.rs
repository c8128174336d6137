//! Header and query conditions of a route (`match.headers`, `match.query`): compiled once per
//! config, checked against a request without allocating.
//!
//! The rules, chosen so that a condition means one thing to Portcullis and to the backend:
//! - Header names are case-insensitive (HTTP's rule); values are compared exactly, byte for
//!   byte, case-sensitively. A header sent more than once holds a value condition only when
//!   every one of its values is that value (so that a backend reading the first or the last
//!   sees it too); `{ present: true }` holds when it is there at all, even empty.
//! - Query names and values are compared after decoding, as a form is read (`%XX` is the byte
//!   it stands for, `+` a space), exactly and case-sensitively; a parameter without `=` has the
//!   empty value. A repeated parameter holds only when every occurrence has the value: a
//!   backend may read the first (Go, Python) or the last (PHP, Express `?a=1&a=2` as a list),
//!   and both must see the value that routed the request.

use crate::config::{HeaderMatchConfig, Issues, MatchConfig};

/// What a request offers to conditions: its headers and its raw query (no `?`).
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request headers; `None` for a request known only by host, path and method
    /// (no condition holds then).
    pub headers: Option<&'a http::HeaderMap>,
    /// The query as the client sent it, without the `?`; empty when none.
    pub query: &'a str,
}

impl RequestFacts<'_> {
    /// A request with no headers and no query: only routes without conditions take it.
    pub const NONE: RequestFacts<'static> = RequestFacts {
        headers: None,
        query: "",
    };
}

/// One header condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderCondition {
    /// Every value the header has is this one (and it has one).
    Value(http::HeaderValue),
    /// The header is there.
    Present,
}

/// A route's conditions beyond host, path and method; empty for most routes. Sorted by name,
/// so that two routes with the same conditions compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    headers: Box<[(http::HeaderName, HeaderCondition)]>,
    /// Names and values decoded.
    query: Box<[(Box<str>, Box<str>)]>,
}

impl Conditions {
    /// How many conditions there are: a route with more is tried first.
    pub fn count(&self) -> usize {
        self.headers.len() + self.query.len()
    }

    /// The header names the conditions look at.
    pub fn header_names(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.headers.iter().map(|(name, _)| name)
    }

    /// Whether the request meets every condition (true when there are none).
    pub fn hold(&self, request: &RequestFacts<'_>) -> bool {
        if !self.headers.is_empty() {
            let Some(map) = request.headers else {
                return false;
            };
            for (name, condition) in self.headers.iter() {
                let mut values = map.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return false;
                }
                if let HeaderCondition::Value(want) = condition {
                    if !values.all(|v| v == want) {
                        return false;
                    }
                }
            }
        }
        self.query
            .iter()
            .all(|(name, want)| query_holds(request.query, name, want))
    }
}

/// Whether `name` occurs in `query` and every occurrence has the value `want`.
fn query_holds(query: &str, name: &str, want: &str) -> bool {
    let mut seen = false;
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decoded_eq(n, name) {
            if !decoded_eq(v, want) {
                return false;
            }
            seen = true;
        }
    }
    seen
}

/// Whether `raw` read as a form field (`%XX` decoded, `+` a space) is `want`, byte for byte,
/// without building the decoded string. A `%` that starts no valid escape stands for itself.
fn decoded_eq(raw: &str, want: &str) -> bool {
    let (raw, want) = (raw.as_bytes(), want.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let (byte, step) = match raw[i] {
            b'+' => (b' ', 1),
            b'%' => match escape(raw, i) {
                Some(b) => (b, 3),
                None => (b'%', 1),
            },
            b => (b, 1),
        };
        if want.get(j) != Some(&byte) {
            return false;
        }
        i += step;
        j += 1;
    }
    j == want.len()
}

fn escape(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let (h, l) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
    u8::try_from(h * 16 + l).ok()
}

/// Compile `match.headers` and `match.query`; every problem goes to `issues` under `path`
/// (the route's, such as `routes[3]`). `None` when there was one.
pub fn compile(m: &MatchConfig, path: &str, issues: &mut Issues<'_>) -> Option<Conditions> {
    let mut ok = true;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (name, condition) in &m.headers {
        let at = format!("{path}.match.headers.{name}");
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            issues.push(at, format!("`{name}` is not a header name"));
            ok = false;
            continue;
        };
        if headers.iter().any(|(h, _)| *h == header) {
            issues.push(at, "the same header twice (names are case-insensitive)");
            ok = false;
            continue;
        }
        let condition = match condition {
            HeaderMatchConfig::Present(true) => HeaderCondition::Present,
            HeaderMatchConfig::Present(false) => {
                issues.push(
                    format!("{at}.present"),
                    "only `present: true` is supported (a route cannot ask for a missing header)",
                );
                ok = false;
                continue;
            }
            HeaderMatchConfig::Value(v) => match http::HeaderValue::from_str(v) {
                Ok(value) => HeaderCondition::Value(value),
                Err(_) => {
                    issues.push(at, "not a value a header can carry");
                    ok = false;
                    continue;
                }
            },
        };
        headers.push((header, condition));
    }
    headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut query = Vec::with_capacity(m.query.len());
    for (name, value) in &m.query {
        if name.is_empty() {
            issues.push(format!("{path}.match.query"), "a parameter needs a name");
            ok = false;
            continue;
        }
        query.push((name.as_str().into(), value.0.as_str().into()));
    }
    // Already sorted: the config's map is ordered by name.
    ok.then(|| Conditions {
        headers: headers.into(),
        query: query.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(yaml: &str) -> Conditions {
        let m: MatchConfig = serde_yaml::from_str(yaml).unwrap();
        let index = crate::config::LineIndex::default();
        let mut issues = Issues::new(&index);
        compile(&m, "routes[0]", &mut issues).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn header_names_ignore_case_values_do_not() {
        let c = conditions("headers: { X-Tenant: Acme, x-beta: { present: true } }");
        let holds = |pairs: &[(&str, &str)]| {
            let map = headers(pairs);
            c.hold(&RequestFacts {
                headers: Some(&map),
                query: "",
            })
        };
        assert!(holds(&[("x-tenant", "Acme"), ("X-BETA", "")]));
        assert!(!holds(&[("x-tenant", "acme"), ("x-beta", "1")]));
        assert!(!holds(&[("x-tenant", "Acme")]));
        assert!(!holds(&[
            ("x-tenant", "Acme"),
            ("x-tenant", "Other"),
            ("x-beta", "1")
        ]));
        assert!(holds(&[
            ("x-tenant", "Acme"),
            ("x-tenant", "Acme"),
            ("x-beta", "1")
        ]));
        assert!(!c.hold(&RequestFacts::NONE));
        assert_eq!(c.count(), 2);
    }

    #[test]
    fn query_values_are_decoded_and_every_occurrence_counts() {
        let c = conditions("query: { v: \"2 beta\", flag: \"\" }");
        let holds = |query: &str| {
            c.hold(&RequestFacts {
                headers: None,
                query,
            })
        };
        assert!(holds("v=2+beta&flag"));
        assert!(holds("flag=&x=1&v=2%20beta"));
        assert!(holds("%76=2%20beta&fl%61g"));
        assert!(!holds("v=2+Beta&flag"));
        assert!(!holds("v=2+beta"));
        assert!(!holds("v=2+beta&flag&v=3"));
        assert!(holds("v=2+beta&flag&v=2+beta"));
        assert!(!holds("v=2+bet&flag"));
        assert!(!holds("v=2+betaa&flag"));
        assert!(!holds(""));
        assert!(decoded_eq("%zz%4", "%zz%4"));
        assert!(decoded_eq("100%", "100%"));
    }

    #[test]
    fn no_conditions_always_hold() {
        assert!(Conditions::default().hold(&RequestFacts::NONE));
        assert_eq!(Conditions::default().count(), 0);
    }
}
