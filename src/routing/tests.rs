//! Unit tests of the route table, request targets and conditions.

use super::*;
use http::Method;

fn m(host: Option<&str>, prefix: &str, methods: &[&str]) -> RouteMatch {
    RouteMatch {
        host: host.map(str::to_string),
        path_prefix: prefix.to_string(),
        methods: Methods::parse(methods).unwrap(),
        conditions: Conditions::default(),
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

/// A route with conditions, from the `match:` YAML of its conditions.
fn with(prefix: &str, methods: &[&str], conditions: &str) -> RouteMatch {
    let config: crate::config::MatchConfig = serde_yaml::from_str(conditions).unwrap();
    let index = crate::config::LineIndex::default();
    let mut issues = crate::config::Issues::new(&index);
    RouteMatch {
        conditions: conditions::compile(&config, "routes[0]", &mut issues).unwrap(),
        ..m(None, prefix, methods)
    }
}

#[test]
fn conditions_go_first_more_of_them_first_then_config_order() {
    let routes = [
        m(None, "/api", &[]),
        with("/api", &[], "headers: { x-tenant: a }"),
        with(
            "/api",
            &[],
            "headers: { x-tenant: a, x-beta: { present: true } }",
        ),
        with("/api", &[], "query: { v: \"2\" }"),
        with("/api/x", &["POST"], "query: { v: \"2\" }"),
    ];
    let t = RouteTable::build(&routes).unwrap();
    let mut h = http::HeaderMap::new();
    let route = |h: &http::HeaderMap, query: &str, method: &Method| {
        t.route_request(
            "",
            "/api/x",
            method,
            &RequestFacts {
                headers: Some(h),
                query,
            },
        )
        .unwrap()
    };
    assert_eq!(route(&h, "", &Method::GET), Some(0));
    assert_eq!(t.lookup("", "/api/x", &Method::GET), Some(0));
    h.insert("x-tenant", http::HeaderValue::from_static("a"));
    assert_eq!(route(&h, "", &Method::GET), Some(1));
    h.insert("x-beta", http::HeaderValue::from_static(""));
    assert_eq!(route(&h, "", &Method::GET), Some(2));
    // One condition each: config order decides.
    h.remove("x-beta");
    assert_eq!(route(&h, "v=2", &Method::GET), Some(1));
    // The longer prefix wins before conditions count.
    assert_eq!(route(&h, "v=2", &Method::POST), Some(4));
    assert_eq!(route(&http::HeaderMap::new(), "v=2", &Method::GET), Some(3));
    // Failing conditions fall through to shorter prefixes.
    assert_eq!(
        route(&http::HeaderMap::new(), "v=3", &Method::POST),
        Some(0)
    );
}

#[test]
fn routes_no_request_can_tell_apart_are_reported() {
    let routes = [
        with("/a", &["GET"], "headers: { X-A: \"1\" }"),
        with("/a", &[], "headers: { x-a: \"1\" }"),
        with("/a", &["POST"], "headers: { x-a: \"2\" }"),
        with(
            "/a",
            &["POST"],
            "{ headers: { x-a: \"1\" }, query: { b: c } }",
        ),
        with(
            "/a",
            &["POST"],
            "{ query: { b: c }, headers: { x-a: \"1\" } }",
        ),
        m(None, "/a", &[]),
    ];
    assert_eq!(RouteTable::build(&routes).err(), Some(vec![(1, 0), (4, 3)]));
}
