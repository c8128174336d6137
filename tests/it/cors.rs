//! CORS at the edge: in a real browser (headless Chromium) a page on one origin makes
//! cross-origin `fetch` calls to the proxy on another (allowed, refused, with credentials,
//! preflighted on a route with a token), and over plain HTTP each header rule, the upstream's
//! own CORS headers replaced, preflights counted and logged, and the config errors of
//! `portcullis check`.

use std::time::Duration;

use portcullis::auth::tools::mint;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::chromium::Page;
use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, EC256, ISS};
use crate::support::server::Server;
use crate::support::{client, eventually, pool, Proxy, Upstream, BIN};

/// A server of one blank HTML page: the origin the browser's scripts run on.
async fn page_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start(listener, "page server", |mut stream| async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let page = "<!doctype html><title>page</title><p>page";
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            )
            .await;
    })
}

/// Everything one test needs: the upstream, a key server, the proxy, and the origin of the
/// page that is allowed (`page`) and of one that is not (`other`).
struct Setup {
    up: Upstream,
    _jwks: JwksServer,
    proxy: Proxy,
    page: Server,
    other: Server,
}

fn origin(server: &Server) -> String {
    format!("http://{}", server.addr())
}

/// Routes (each `auth: none` but `secure`):
/// - `api` (`/api`, methods GET, PUT and DELETE only): the page's origin, GET and PUT, `X-Custom`,
///   `X-Request-Id` exposed, 10 minutes;
/// - `creds` / `nocreds`: the page's origin with and without credentials;
/// - `secure` (`/secure`): a token of `corp`, the page's origin, PUT, `Authorization`;
/// - `subs` (`/subs`): `https://*.example.test` with credentials; `any` (`/any`): `*`;
/// - `plain` (`/plain`): no `cors:`.
async fn setup() -> Setup {
    let up = Upstream::start("up").await;
    let jwks = JwksServer::start(key_set(&[(EC256, "ec256")])).await;
    let (page, other) = (page_server().await, page_server().await);
    let allowed = origin(&page);
    let route = |name: &str, prefix: &str, extra: &str| {
        format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: up\n    auth: none\n{extra}"
        )
    };
    let config = format!(
        "issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\n\
         upstreams:\n{}routes:\n\
         \x20 - name: api\n    match: {{ path_prefix: /api, methods: [GET, PUT, DELETE] }}\n    upstream: up\n    auth: none\n\
         \x20   cors:\n      allow_origins: [\"{allowed}\"]\n      allow_methods: [GET, PUT]\n      allow_headers: [X-Custom]\n      expose_headers: [X-Request-Id]\n      max_age: 10m\n\
         {}{}\
         \x20 - name: secure\n    match: {{ path_prefix: /secure }}\n    upstream: up\n    auth: {{ issuers: [corp] }}\n\
         \x20   cors: {{ allow_origins: [\"{allowed}\"], allow_methods: [PUT], allow_headers: [authorization, x-custom] }}\n\
         {}{}{}",
        jwks.jwks_url(),
        pool("up", &[up.addr().to_string()], &[]),
        route("creds", "/creds", &format!("    cors: {{ allow_origins: [\"{allowed}\"], allow_credentials: true }}\n")),
        route("nocreds", "/nocreds", &format!("    cors: {{ allow_origins: [\"{allowed}\"] }}\n")),
        route("subs", "/subs", "    cors: { allow_origins: [\"https://*.example.test\"], allow_credentials: true, expose_headers: [x-upstream] }\n"),
        route("any", "/any", "    cors: { allow_origins: [\"*\"], allow_methods: [\"*\"], allow_headers: [\"*\"] }\n"),
        route("plain", "/plain", ""),
    );
    let proxy = Proxy::start(&config).await;
    Setup {
        up,
        _jwks: jwks,
        proxy,
        page,
        other,
    }
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "a", "iat": now, "exp": now + 600});
    mint(EC256, &claims.to_string(), None, Some("ec256")).unwrap()
}

/// Open `server`'s page in a fresh browser and wait until it is on that origin.
async fn open(server: &Server) -> Page {
    let want = origin(server);
    let mut page = Page::open(&format!("{want}/"));
    eventually("the page to load", Duration::from_secs(20), || {
        let at = page.eval("location.origin");
        let want = want.clone();
        async move {
            (at == want.as_str())
                .then_some(())
                .ok_or(format!("at {at}"))
        }
    })
    .await;
    page
}

/// `fetch(url, init)` from the page: `{ ok, status, body, exposed }` or `{ ok: false, error }`
/// when the browser refuses it.
fn fetch(page: &mut Page, url: &str, init: &str) -> Value {
    page.eval_await(&format!(
        "(async () => {{ try {{ const r = await fetch({url:?}, {init}); \
         return {{ ok: true, status: r.status, body: await r.text(), exposed: r.headers.get('x-request-id') }}; }} \
         catch (e) {{ return {{ ok: false, error: String(e) }}; }} }})()"
    ))
}

fn methods_seen(up: &Upstream) -> Vec<String> {
    up.received().iter().map(|e| e.method.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_an_allowed_origin_gets_through_and_another_is_refused() {
    let s = setup().await;
    let url = |path: &str| s.proxy.url(path);
    let mut page = open(&s.page).await;

    // Preflighted (PUT with a custom header): the route takes no OPTIONS, the edge answers.
    let put = fetch(
        &mut page,
        &url("/api/items"),
        "{ method: 'PUT', headers: { 'X-Custom': 'yes' }, body: 'x' }",
    );
    assert_eq!(put["ok"], true, "{put}");
    assert_eq!(put["status"], 200, "{put}");
    let echo: Value = serde_json::from_str(put["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["method"], "PUT");
    // Exposed: the script may read it.
    assert!(
        put["exposed"].as_str().is_some_and(|v| !v.is_empty()),
        "{put}"
    );
    // Simple (no preflight).
    let get = fetch(&mut page, &url("/api/items"), "{}");
    assert_eq!(
        (get["ok"].clone(), get["status"].clone()),
        (json!(true), json!(200)),
        "{get}"
    );

    // Credentials: allowed where the route says so, refused by the browser where not.
    let with = fetch(&mut page, &url("/creds/x"), "{ credentials: 'include' }");
    assert_eq!(with["ok"], true, "{with}");
    let without = fetch(&mut page, &url("/nocreds/x"), "{ credentials: 'include' }");
    assert_eq!(without["ok"], false, "{without}");
    // The same route without credentials is fine.
    let plain = fetch(&mut page, &url("/nocreds/x"), "{}");
    assert_eq!(plain["ok"], true, "{plain}");

    // A token route: the preflight is answered without a token, the PUT carries one.
    let secure = fetch(
        &mut page,
        &url("/secure/x"),
        &format!(
            "{{ method: 'PUT', headers: {{ 'Authorization': 'Bearer {}', 'X-Custom': '1' }} }}",
            token()
        ),
    );
    assert_eq!(secure["ok"], true, "{secure}");
    assert_eq!(secure["status"], 200, "{secure}");
    // Without the token: the page can read the refusal (it carries the route's CORS headers).
    let refused = fetch(
        &mut page,
        &url("/secure/x"),
        "{ method: 'PUT', headers: { 'X-Custom': '1' } }",
    );
    assert_eq!(refused["ok"], true, "{refused}");
    assert_eq!(refused["status"], 401, "{refused}");
    drop(page);

    let seen = methods_seen(&s.up);
    assert!(!seen.iter().any(|m| m == "OPTIONS"), "{seen:?}");
    let hits = s.up.hits();

    // Another origin: the preflighted request never leaves the browser, and the simple one's
    // answer cannot be read.
    let mut other = open(&s.other).await;
    let put = fetch(
        &mut other,
        &url("/api/items"),
        "{ method: 'PUT', headers: { 'X-Custom': 'yes' } }",
    );
    assert_eq!(put["ok"], false, "{put}");
    assert_eq!(s.up.hits(), hits, "the refused PUT reached the upstream");
    let get = fetch(&mut other, &url("/api/items"), "{}");
    assert_eq!(get["ok"], false, "{get}");
    let seen = methods_seen(&s.up);
    assert!(!seen.iter().any(|m| m == "OPTIONS"), "{seen:?}");

    // Only the token route's two PUTs were token checks, never a preflight (the browser may
    // have kept the first preflight's answer for the second PUT, or asked again).
    let metrics = s.proxy.metrics().await;
    assert_eq!(
        metrics.sum("portcullis_auth_decisions_total", &[("route", "secure")]),
        2.0
    );
    let preflights = metrics
        .get(
            "portcullis_requests_total",
            &[("route", "secure"), ("method", "OPTIONS"), ("code", "204")],
        )
        .unwrap_or(0.0);
    assert!(preflights >= 1.0, "{preflights}");
}

/// A preflight sent by hand: the answer's status and headers.
async fn preflight(
    proxy: &Proxy,
    path: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::Response {
    let mut req = client()
        .request(reqwest::Method::OPTIONS, proxy.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(h) = headers {
        req = req.header("access-control-request-headers", h);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    let values: Vec<_> = resp
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn cors_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_by_hand_each_rule() {
    let s = setup().await;
    let page = origin(&s.page);
    let p = &s.proxy;

    let ok = preflight(p, "/api/x", &page, "PUT", Some("x-custom")).await;
    assert_eq!(ok.status(), 204);
    assert_eq!(header(&ok, "access-control-allow-origin").unwrap(), page);
    assert_eq!(
        header(&ok, "access-control-allow-methods").unwrap(),
        "GET, PUT"
    );
    assert_eq!(
        header(&ok, "access-control-allow-headers").unwrap(),
        "x-custom"
    );
    assert_eq!(header(&ok, "access-control-max-age").unwrap(), "600");
    assert!(header(&ok, "access-control-allow-credentials").is_none());
    assert_eq!(
        header(&ok, "vary").unwrap(),
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    let id = header(&ok, "x-request-id").unwrap();
    assert!(!id.is_empty());
    assert!(ok.bytes().await.unwrap().is_empty());

    // Refused: another origin, a method or a header not allowed. No CORS header at all.
    for (origin, method, headers) in [
        (origin(&s.other), "PUT", None),
        (page.clone(), "PUT", Some("x-custom, x-other")),
        (page.replace("127.0.0.1", "localhost"), "PUT", None),
        (page.clone(), "DELETE", None),
    ] {
        let no = preflight(p, "/api/x", &origin, method, headers).await;
        assert_eq!(no.status(), 204, "{origin} {method}");
        assert!(cors_headers(&no).is_empty(), "{origin} {method}: {no:?}");
        assert!(header(&no, "vary").unwrap().contains("Origin"));
    }
    // A method no route takes at that path: routed as the OPTIONS request it is (`api`
    // takes none), so 404, and no CORS header either.
    let no = preflight(p, "/api/x", &page, "PATCH", None).await;
    assert_eq!(no.status(), 404);
    assert!(cors_headers(&no).is_empty());
    // Credentials.
    let creds = preflight(p, "/creds/x", &page, "POST", None).await;
    assert_eq!(
        header(&creds, "access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(header(&creds, "access-control-allow-origin").unwrap(), page);
    // Subdomains, with credentials: the exact origin comes back; the apex and http do not.
    let sub = preflight(p, "/subs/x", "https://a.b.example.test", "GET", None).await;
    assert_eq!(
        header(&sub, "access-control-allow-origin").unwrap(),
        "https://a.b.example.test"
    );
    for not in [
        "https://example.test",
        "http://a.example.test",
        "https://a.example.test:8443",
    ] {
        let no = preflight(p, "/subs/x", not, "GET", None).await;
        assert!(cors_headers(&no).is_empty(), "{not}");
    }
    // `*`: any origin, any method, the headers asked for (not Authorization).
    let any = preflight(p, "/any/x", "https://x.test", "PATCH", Some("x-a, x-b")).await;
    assert_eq!(header(&any, "access-control-allow-origin").unwrap(), "*");
    assert_eq!(
        header(&any, "access-control-allow-methods").unwrap(),
        "PATCH"
    );
    assert_eq!(
        header(&any, "access-control-allow-headers").unwrap(),
        "x-a, x-b"
    );
    let auth = preflight(p, "/any/x", "https://x.test", "GET", Some("authorization")).await;
    assert!(cors_headers(&auth).is_empty());
    // A token route: answered without a token (not 401).
    let secure = preflight(p, "/secure/x", &page, "PUT", Some("authorization")).await;
    assert_eq!(secure.status(), 204);
    assert_eq!(
        header(&secure, "access-control-allow-origin").unwrap(),
        page
    );

    // Not a preflight: an OPTIONS without Origin goes by ordinary routing (`api` takes no
    // OPTIONS), and a route without `cors:` forwards its preflights.
    let bare = client()
        .request(reqwest::Method::OPTIONS, p.url("/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 404);
    assert!(methods_seen(&s.up).is_empty(), "{:?}", methods_seen(&s.up));
    let forwarded = preflight(p, "/plain/x", &page, "PUT", None).await;
    assert_eq!(forwarded.status(), 200);
    assert_eq!(methods_seen(&s.up), ["OPTIONS"]);

    // Counted and logged like other answers.
    p.wait_metric(
        "portcullis_requests_total",
        &[("route", "api"), ("method", "OPTIONS"), ("code", "204")],
        5.0,
    )
    .await;
    let lines = p
        .wait_access_until("the preflight's line", |lines| {
            lines.iter().any(|l| l["request_id"] == id.as_str())
        })
        .await;
    let line = lines
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"));
    assert_eq!(line["status"], 204, "{line}");
    assert_eq!(line["route"], "api", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_responses_carry_the_routes_headers_in_place_of_the_upstreams() {
    let s = setup().await;
    let page = origin(&s.page);
    let get = |path: &str, origin: Option<&str>| {
        let mut req = client()
            .get(s.proxy.url(path))
            .header("x-want-cors-headers", "1")
            .header("vary", "x");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let ok = get("/api/x", Some(&page)).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(header(&ok, "access-control-allow-origin").unwrap(), page);
    assert_eq!(
        header(&ok, "access-control-expose-headers").unwrap(),
        "x-request-id"
    );
    assert!(header(&ok, "access-control-allow-credentials").is_none());
    assert_eq!(header(&ok, "vary").unwrap(), "Origin");
    // Another origin, or none: no CORS header (not even the upstream's), but Vary: Origin.
    for origin in [Some(origin(&s.other)), None] {
        let no = get("/api/x", origin.as_deref()).await.unwrap();
        assert!(cors_headers(&no).is_empty(), "{origin:?}: {no:?}");
        assert_eq!(header(&no, "vary").unwrap(), "Origin", "{origin:?}");
    }
    // Subdomains with credentials.
    let sub = get("/subs/x", Some("https://app.example.test"))
        .await
        .unwrap();
    assert_eq!(
        header(&sub, "access-control-allow-origin").unwrap(),
        "https://app.example.test"
    );
    assert_eq!(
        header(&sub, "access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(
        header(&sub, "access-control-expose-headers").unwrap(),
        "x-upstream"
    );
    let any = get("/any/x", Some("https://x.test")).await.unwrap();
    assert_eq!(header(&any, "access-control-allow-origin").unwrap(), "*");
    // A refusal Portcullis writes on such a route carries them too.
    let refused = client()
        .get(s.proxy.url("/secure/x"))
        .header("origin", &page)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").unwrap(),
        page
    );
    assert_eq!(header(&refused, "vary").unwrap(), "Origin");
    // A route without `cors:` passes the upstream's own.
    let plain = get("/plain/x", Some("https://x.test")).await.unwrap();
    assert_eq!(header(&plain, "access-control-allow-origin").unwrap(), "*");
    assert_eq!(
        header(&plain, "access-control-allow-credentials").unwrap(),
        "true"
    );
    assert!(header(&plain, "vary").is_none());
}

#[test]
fn check_names_each_cors_and_ip_list_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: \"127.0.0.1:8080\"\n\
         allow_ips: [10.0.0.0/8, nope]\n\
         upstreams:\n  - name: up\n    targets: [\"127.0.0.1:9000\"]\n\
         routes:\n\
         \x20 - name: a\n    match: { path_prefix: /a }\n    upstream: up\n\
         \x20   cors: { allow_origins: [\"*\"], allow_credentials: true }\n\
         \x20 - name: b\n    match: { path_prefix: /b }\n    upstream: up\n\
         \x20   deny_ips: [\"::1\", 10.1.2.3/8]\n\
         \x20   cors:\n      allow_origins: [\"https://ok.test\", \"https://app.test/\", \"https://a*.test\"]\n      allow_methods: [\"G T\"]\n      expose_headers: [\"*\"]\n      allow_credentials: true\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for (at, line) in [
        ("allow_ips[1]", 3),
        ("routes[0].cors.allow_credentials", 11),
        ("routes[1].deny_ips[1]", 15),
        ("routes[1].cors.allow_origins[1]", 17),
        ("routes[1].cors.allow_origins[2]", 17),
        ("routes[1].cors.allow_methods[0]", 18),
        ("routes[1].cors.expose_headers", 19),
    ] {
        assert!(
            text.contains(&format!("line {line}: {at}")),
            "`line {line}: {at}` not in:\n{text}"
        );
    }
}
