use super::*;
use crate::config::{Dur, LineIndex};

fn config(origins: &[&str]) -> CorsConfig {
    CorsConfig {
        allow_origins: origins.iter().map(|s| s.to_string()).collect(),
        allow_methods: Some(vec!["GET".into(), "put".into()]),
        allow_headers: vec!["X-Custom".into(), "content-type".into()],
        expose_headers: vec!["X-Total".into()],
        allow_credentials: false,
        max_age: Some(Dur(std::time::Duration::from_secs(600))),
    }
}

fn compile(c: &CorsConfig) -> Result<Cors, Vec<String>> {
    let index = LineIndex::new("");
    let mut issues = Issues::new(&index);
    let cors = Cors::compile(c, "routes[0].cors", &mut issues);
    match issues.finish(cors) {
        Ok(c) => Ok(c.unwrap()),
        Err(e) => Err(e.issues().iter().map(|i| i.to_string()).collect()),
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn preflight(cors: &Cors, origin: &str, method: &str, headers: Option<&str>) -> HeaderMap {
    let mut req = HeaderMap::new();
    req.insert(header::ORIGIN, hv(origin));
    req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv(method));
    if let Some(h) = headers {
        req.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, hv(h));
    }
    let mut answer = HeaderMap::new();
    cors.preflight(&req, &mut answer);
    answer
}

fn allowed(origins: &[&str], origin: &str) -> bool {
    compile(&config(origins))
        .unwrap()
        .allow_origin(&hv(origin))
        .is_some()
}

#[test]
fn exact_origins_are_normalised_and_compared_whole() {
    let o = [
        "HTTPS://App.Example.com:443",
        "http://localhost:3000",
        "http://[::1]:8080",
    ];
    assert!(allowed(&o, "https://app.example.com"));
    assert!(allowed(&o, "http://localhost:3000"));
    assert!(allowed(&o, "http://[::1]:8080"));
    for no in [
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.test",
        "https://evil.app.example.com",
        "http://localhost:30000",
        "http://localhost",
        "null",
    ] {
        assert!(!allowed(&o, no), "{no}");
    }
}

#[test]
fn subdomain_patterns_take_subdomains_of_the_same_scheme_and_port_only() {
    let o = ["https://*.example.com", "http://*.dev.test:8080"];
    for yes in [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://A.Example.COM",
        "https://a.example.com:443",
        "http://x.dev.test:8080",
    ] {
        assert!(allowed(&o, yes), "{yes}");
    }
    for no in [
        "https://example.com",
        "http://a.example.com",
        "https://a.example.com:8443",
        "https://aexample.com",
        "https://.example.com",
        "https://a..example.com",
        "https://a.example.com.evil.test",
        "https://evil.test/.example.com",
        "http://x.dev.test",
        "http://dev.test:8080",
    ] {
        assert!(!allowed(&o, no), "{no}");
    }
}

#[test]
fn an_allowed_preflight_gets_every_header_and_echoes_what_it_asked() {
    let mut c = config(&["https://app.example.com"]);
    c.allow_credentials = true;
    let cors = compile(&c).unwrap();
    let a = preflight(
        &cors,
        "https://app.example.com",
        "PUT",
        Some("x-custom, Content-Type"),
    );
    assert_eq!(a["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(a["access-control-allow-methods"], "GET, PUT");
    assert_eq!(a["access-control-allow-headers"], "x-custom, Content-Type");
    assert_eq!(a["access-control-allow-credentials"], "true");
    assert_eq!(a["access-control-max-age"], "600");
    assert_eq!(a["vary"], PREFLIGHT_VARY);
}

#[test]
fn a_refused_preflight_gets_no_cors_header() {
    let cors = compile(&config(&["https://app.example.com"])).unwrap();
    for (origin, method, headers) in [
        ("https://other.example.com", "PUT", None),
        ("https://app.example.com", "DELETE", None),
        ("https://app.example.com", "PUT", Some("x-custom, x-other")),
    ] {
        let a = preflight(&cors, origin, method, headers);
        assert_eq!(a.len(), 1, "{origin} {method} {headers:?}: {a:?}");
        assert_eq!(a["vary"], PREFLIGHT_VARY);
    }
}

#[test]
fn wildcards_answer_a_star_or_echo() {
    let mut c = config(&["*"]);
    c.allow_methods = Some(vec!["*".into()]);
    c.allow_headers = vec!["*".into()];
    let cors = compile(&c).unwrap();
    let a = preflight(&cors, "https://any.test", "PATCH", Some("x-a"));
    assert_eq!(a["access-control-allow-origin"], "*");
    assert_eq!(a["access-control-allow-methods"], "PATCH");
    assert_eq!(a["access-control-allow-headers"], "x-a");
    // `*` does not cover Authorization.
    let a = preflight(&cors, "https://any.test", "GET", Some("authorization"));
    assert!(a.get("access-control-allow-origin").is_none());
}

#[test]
fn actual_responses_replace_the_upstreams_headers_and_always_vary() {
    let cors = compile(&config(&["https://app.example.com"])).unwrap();
    let upstream = || {
        let mut m = HeaderMap::new();
        m.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, hv("*"));
        m.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, hv("true"));
        m.insert(header::VARY, hv("Accept-Encoding"));
        m
    };
    let mut r = upstream();
    cors.respond(Some(&hv("https://app.example.com")), &mut r);
    assert_eq!(r["access-control-allow-origin"], "https://app.example.com");
    assert!(r.get("access-control-allow-credentials").is_none());
    assert_eq!(r["access-control-expose-headers"], "x-total");
    let vary: Vec<_> = r.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    for origin in [Some(hv("https://evil.test")), None] {
        let mut r = upstream();
        cors.respond(origin.as_ref(), &mut r);
        assert!(r.get("access-control-allow-origin").is_none());
        assert!(r.get("access-control-allow-credentials").is_none());
        assert_eq!(r.get_all("vary").iter().count(), 2);
    }
    let mut r = HeaderMap::new();
    r.insert(header::VARY, hv("origin, accept"));
    cors.respond(None, &mut r);
    assert_eq!(r.get_all("vary").iter().count(), 1);
}

#[test]
fn config_errors_name_their_field() {
    let mut c = config(&["*"]);
    c.allow_credentials = true;
    let e = compile(&c).unwrap_err();
    assert!(
        e.len() == 1 && e[0].contains("routes[0].cors.allow_credentials"),
        "{e:?}"
    );

    let mut c = config(&[
        "https://ok.test",
        "https://app.test/",
        "app.test",
        "https://a*.test",
        "https://ok.test:99999",
        "*",
    ]);
    c.allow_methods = Some(vec!["GET".into(), "G T".into()]);
    c.allow_headers = vec!["x ok".into()];
    let e = compile(&c).unwrap_err();
    for at in [
        "allow_origins[1]",
        "allow_origins[2]",
        "allow_origins[3]",
        "allow_origins[4]",
        "allow_origins[5]",
        "allow_methods[1]",
        "allow_headers[0]",
    ] {
        assert!(
            e.iter()
                .any(|i| i.contains(&format!("routes[0].cors.{at}"))),
            "{at}: {e:?}"
        );
    }
    assert_eq!(e.len(), 7, "{e:?}");
    assert!(compile(&config(&[])).is_err());
    let mut c = config(&["https://ok.test"]);
    c.allow_methods = Some(Vec::new());
    assert!(compile(&c).unwrap_err()[0].contains("routes[0].cors.allow_methods"));
    // Credentials with a subdomain pattern: allowed, the exact origin is echoed.
    let mut c = config(&["https://*.example.com"]);
    c.allow_credentials = true;
    let cors = compile(&c).unwrap();
    let a = preflight(&cors, "https://a.example.com", "GET", None);
    assert_eq!(a["access-control-allow-origin"], "https://a.example.com");
}
